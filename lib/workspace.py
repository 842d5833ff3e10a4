"""The workspace as every command loads it, the tools found on this machine, and the parallel reads of
the clusters' current state that apply, teardown, status, verify and rotate-certs share."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from .config import BASE_FILE, TOPOLOGY_FILE, Cluster, Topology, check_data_plane, load_base, load_topology
from .kubeconfig import resolve_contexts
from .errors import CommandFailed, ConfigError, MeshError
from .executor import RunContext, Unread, read_clusters
from .gatewayapi import parse_crd_annotations
from .invocation import prep_hint
from .kube import Observed, Tools, parse_inspect
from .istiousage import IstioUsage, is_missing_category, others_in_istio_system, parse_istio_usage
from .names import ISTIO_NAMESPACE, ZTUNNEL_DAEMONSET, made_by_setup_mesh
from .release import Release, find_istioctl
from .reporter import Reporter
from .runner import ShRunner
from .state import State

INSPECT_TIMEOUT = 30.0  # the longest one read of a cluster may take; --timeout shortens it, never lengthens it


def read_timeout(tools: Tools) -> float:
    """What one read may take: ``--timeout`` ("any one command") bounds reads too, a short one most of all, as a
    user gives it to learn quickly that a cluster does not answer."""
    return min(INSPECT_TIMEOUT, tools.timeout)


@dataclass
class Workspace:
    workdir: Path
    topology: Topology
    base: dict
    state: State
    notes: list[str]
    contexts_resolved: bool = True
    # lenient: why the contexts could not be resolved (what the same command without --dry-run refuses with)
    context_error: ConfigError | None = None


def load_workspace(workdir: Path, kubeconfig: str | None, lenient: bool, note_contexts: bool = True) -> Workspace:
    """Validate the inputs. ``lenient`` (dry-run) turns facts about this machine into notes (``note_contexts``:
    also contexts missing from the kubeconfig; else the caller reports ``context_error`` itself)."""
    if not workdir.is_dir():
        raise ConfigError(f"workdir {workdir} does not exist", hint=prep_hint())
    topology = load_topology(workdir / TOPOLOGY_FILE)
    loaded_base = load_base(workdir / BASE_FILE)
    check_data_plane(topology, loaded_base)
    base = loaded_base.operator
    notes: list[str] = []
    resolved, error = True, None
    try:
        topology = resolve_contexts(topology, kubeconfig)
    except ConfigError as exc:
        if not lenient:
            raise
        resolved, error = False, exc
        if note_contexts:
            notes.append(f"{exc.message} (current state cannot be read)")
    return Workspace(workdir, topology, base, State.load(workdir), notes, resolved, error)


def find_tools(istio_dir: str | None, runner: ShRunner, lenient: bool, notes: list[str], timeout: float,
               pinned: Release | None = None) -> Tools:
    """kubectl and istioctl; ``pinned``: the release topology.yaml pins, whose istioctl wins over PATH's (it installs
    its own version)."""
    istioctl = str(pinned.istioctl) if pinned else find_istioctl(istio_dir)
    if not istioctl:
        if not lenient:
            raise ConfigError("istioctl was not found on PATH or in --istio-dir/ISTIO_DIR",
                              hint="download an Istio release (curl -L https://istio.io/downloadIstio | sh -) and put its bin/ on PATH")
        notes.append("istioctl is not on PATH: the plan names it as `istioctl`")
    if not lenient:
        runner.require("kubectl")
    return Tools(kubectl="kubectl", istioctl=istioctl or "istioctl", timeout=timeout)


def pinned_release(topology: Topology, workdir: Path, istio_dir: str | None) -> Release | None:
    """For commands that fetch nothing (status, verify, teardown, rotate-certs): the mesh's pinned release,
    --istio-dir's when it is that version, else the one an apply fetched into the workspace."""
    from .fetch import cached_release, checked_istio_dir

    versions = topology.istio_versions
    if not versions:
        return None
    if istio_dir:
        return checked_istio_dir(istio_dir, versions, str(topology.path))
    return cached_release(workdir, topology.istio_version or versions[0])


def inspect_clusters(clusters: list[Cluster], tools: Tools, runner, reporter: Reporter, parallel: int,
                     title: str = "read current state", ambient: bool = False,
                     ztunnel_namespace: str = ISTIO_NAMESPACE, istio_objects_in: frozenset[str] = frozenset(),
                     published_roots: bool = False) -> dict[str, Observed]:
    """One read per cluster, in parallel. An unreachable cluster is an Observed with an error.
    ``ambient``: also the Gateway CRD, read first, and where it exists the one read lists istio-system's
    Gateway API Gateways (the east-west one); and ztunnel's DaemonSet when the profile puts it in
    ``ztunnel_namespace`` instead of istio-system.
    ``istio_objects_in``: the clusters whose read also lists the Istio objects in istio-system (those the
    workspace installed Istio in: elsewhere Istio's CRDs are likely absent, which fails such a read).
    ``published_roots``: the same read also lists istio-system's ConfigMaps, for the root bundle istiod
    publishes (one kubectl fewer than a read of its own)."""
    timeout = read_timeout(tools)

    def read(ctx: RunContext, cluster: Cluster) -> Observed:
        try:
            # Ambient: the Gateway CRD first, so that where it is installed the one read lists the Gateways too.
            crds = parse_crd_annotations(ctx.run(tools.gateway_api_crds(cluster, timeout)).stdout) if ambient else None
            seen = _inspect(ctx, tools, cluster, timeout, cluster.name in istio_objects_in, published_roots,
                            gateway_api=bool(crds and crds.installed))
            if ambient:
                seen.gateway_api = crds
                if ztunnel_namespace != ISTIO_NAMESPACE:
                    found = json.loads(ctx.run(tools.ztunnel(cluster, ztunnel_namespace, timeout)).stdout or "null")
                    if found:
                        seen.daemonsets[ZTUNNEL_DAEMONSET] = found
            return seen
        except MeshError as exc:
            raise Unread(exc.message, Observed(reachable=False, error=exc.message)) from exc
        except ValueError as exc:
            error = f"unreadable answer from kubectl: {exc}"
            raise Unread(error, Observed(reachable=False, error=error)) from None

    return read_clusters(clusters, runner, reporter, parallel, title, read)


def _inspect(ctx: RunContext, tools: Tools, cluster: Cluster, timeout: float, istio_objects: bool,
             published_roots: bool, gateway_api: bool = False) -> Observed:
    """The one read, narrowed when a kind it lists cannot be: without Istio's objects where no Istio CRD is
    installed (none of them exists), without ConfigMaps where the user may not list them (the roots
    istiod publishes stay unread: status says so, as it does when a read of their own fails)."""
    while True:
        try:
            command = tools.inspect(cluster, timeout, istio_objects, published_roots, gateway_api)
            return parse_inspect(ctx.run(command).stdout, istio_objects, published_roots)
        except CommandFailed as exc:
            if exc.timed_out:
                raise
            if istio_objects and is_missing_category(exc.stderr_tail):
                istio_objects = False
            elif published_roots and _configmaps_forbidden(exc.stderr_tail):
                published_roots = False
            else:
                raise


def _configmaps_forbidden(stderr: str) -> bool:
    # The API server's 403 for a list the user's role does not allow (kubectl prints its message).
    return "configmaps is forbidden" in stderr


def read_istio_usage(clusters: list[Cluster], tools: Tools, runner, reporter: Reporter, parallel: int,
                     ours: frozenset[str]) -> dict[str, IstioUsage | MeshError]:
    """Which Istio resources and control planes others made in each cluster (what keeps Istio's CRDs)."""
    timeout = read_timeout(tools)

    def read(ctx: RunContext, cluster: Cluster) -> IstioUsage | MeshError:
        try:
            resources = ctx.run(tools.istio_resources(cluster, timeout))
            if not resources.ok and not is_missing_category(resources.stderr):
                raise MeshError(f"cannot list Istio resources: {resources.stderr_tail()}")
            deployments = ctx.run(tools.istio_deployments(cluster, timeout))
            tag = ctx.run(tools.default_tag_webhook(cluster, timeout))
            usage = parse_istio_usage(resources.stdout if resources.ok else None, deployments.stdout, ours,
                                      made_by_setup_mesh, tag.stdout)
            usage.namespace_objects = others_in_istio_system(ctx.run(tools.istio_system_objects(cluster, timeout)).stdout)
            return usage
        except MeshError as exc:
            raise Unread(exc.message, exc) from exc
        except ValueError as exc:
            error = MeshError(f"unreadable answer from kubectl: {exc}")
            raise Unread(error.message, error) from None

    return read_clusters(clusters, runner, reporter, parallel, "read who else uses Istio", read)
