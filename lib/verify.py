"""verify: prove that traffic crosses the mesh, and name what breaks it where it does not.

The command: read what status reads (one reading, one judgment), read what only traffic needs besides
(the cross-network Gateway, where a remote's istiod Service leads, whether the namespace exists), deploy
and call (lib/traffic.py), explain every pair that does not answer (lib/diagnosis.py) and show it
(lib/verifyview.py, or one JSON document). Everything created is deleted at the end, also after a
failure or Ctrl-C, unless --keep.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import invocation
from .causes import VerifyResult
from .config import AMBIENT, Cluster, Topology, data_plane_mode
from .diagnosis import Facts, judge
from .errors import ConfigError, MeshError
from .executor import Executor, RunContext, Step
from .kube import Observed, Tools
from .mesh import Mesh, mesh_model
from .names import ISTIO_NAMESPACE, istiod_name
from .overlay import control_plane_revision
from .reporter import Reporter
from .status import collect
from .statusinputs import status_workspace
from .statusreport import Hints
from .traffic import (CREATED_BY, CREATOR, DEFAULT_CURL_TAG, DEFAULT_HELLOWORLD_TAG, DEFAULT_NAMESPACE, ClusterRun,
                      Images, call_step, cleanup, cleanup_command, deploy_step, manifests, mesh_label_text, phase,
                      wait_step)
from .verifyview import print_dry_run, render
from .workspace import find_tools, load_workspace, pinned_release
from .yamlcheck import is_dns1123_label


DEFAULT_READY_TIMEOUT = 180.0


@dataclass
class Options:
    namespace: str = DEFAULT_NAMESPACE
    images: Images = field(default_factory=lambda: Images.from_options(None, DEFAULT_HELLOWORLD_TAG, DEFAULT_CURL_TAG))
    ready_timeout: float = DEFAULT_READY_TIMEOUT
    keep: bool = False
    dry_run: bool = False
    output: str = "table"
    parallel: int = 8


class VerifyHints:
    """What a cause's hint names: status's commands, verify's namespace, the mesh's revision and mode."""

    def __init__(self, status_hints: Any, namespace: str, revision: str | None, ambient: bool = False):
        self._h = status_hints
        self.namespace = namespace
        self.revision = revision
        self.ambient = ambient
        self.apply = status_hints.apply
        self.status = invocation.command("status")

    def kubectl(self, cluster: Cluster, *args: str) -> str:
        return self._h.kubectl(cluster, *args)


# --- what verify reads besides status's reading ------------------------------------------------------

def gateways_command(tools: Tools, cluster: Cluster):
    return tools.kubectl_cmd(cluster, "get", "gateways.networking.istio.io", "-n", ISTIO_NAMESPACE, "-o", "json",
                             check=False, timeout=30)


def istiod_endpoints_command(tools: Tools, cluster: Cluster, revision: str | None):
    """Where a remote's istiod Service leads: its EndpointSlice, which the remote profile points at the
    address of its primary's east-west gateway."""
    return tools.kubectl_cmd(cluster, "get", "endpointslices.discovery.k8s.io", "-n", ISTIO_NAMESPACE, "-l",
                             f"kubernetes.io/service-name={istiod_name(revision)}", "-o", "json", check=False,
                             timeout=30)


def namespace_command(tools: Tools, cluster: Cluster, namespace: str):
    return tools.kubectl_cmd(cluster, "get", "namespace", namespace, "--ignore-not-found", "-o", "json", timeout=30)


def endpoint_address(slices_json: str) -> str | None:
    for item in json.loads(slices_json or "{}").get("items") or []:
        for endpoint in item.get("endpoints") or []:
            if endpoint.get("addresses"):
                return endpoint["addresses"][0]
    return None


def exposes_local(gateways_json: str) -> bool:
    return gateways_expose_local(json.loads(gateways_json or "{}").get("items") or [])


def gateways_expose_local(gateways: list[dict]) -> bool:
    for gw in gateways:
        for server in (gw.get("spec") or {}).get("servers") or []:
            if (server.get("port") or {}).get("number") == 15443 and "*.local" in (server.get("hosts") or []):
                return True
    return False


def reads_gateways(mesh: Mesh, cluster: Cluster, ambient: bool) -> bool:
    """The cross-network Gateway is read where an istiod reads it: on primaries (a remote's east-west
    gateway is configured from its primary's istio-system), and not in an ambient mesh, whose east-west
    gateway is a Gateway API Gateway (status reads that one). It is judged only between networks: one
    network, no read."""
    return mesh.multi_network and not ambient and mesh.member(cluster.context).is_primary


def _parsed(result, parse):
    """``parse(stdout)`` of a read that worked; None when it failed or did not parse (nothing is known)."""
    try:
        return parse(result.stdout) if result.ok else None
    except ValueError:
        return None


@dataclass
class Extra:
    """What verify read besides status: per cluster name."""

    exposes_local: dict[str, bool | None] = field(default_factory=dict)
    istiod_addresses: dict[str, str | None] = field(default_factory=dict)
    not_ours: list[str] = field(default_factory=list)  # contexts whose namespace of that name verify did not create


def _made_by_verify(labels: dict[str, str]) -> bool:
    """A namespace verify may use and delete: one it labelled when it made it."""
    return labels.get(CREATED_BY) == CREATOR


def _already_read(mesh: Mesh, observed: dict[str, Observed], namespace: str, ambient: bool) -> Extra:
    """What status's read of each cluster shows verify: a namespace of that name verify did not make, and
    whether a Gateway of istio-system exposes the services (where the Istio objects were listed)."""
    extra = Extra()
    for cluster in mesh.topology.clusters:
        seen = observed.get(cluster.context) or Observed()
        labels = seen.namespace_labels
        if labels is not None and namespace in labels and not _made_by_verify(labels[namespace]):
            extra.not_ours.append(cluster.context)
        if seen.istio_gateways is not None and reads_gateways(mesh, cluster, ambient):
            extra.exposes_local[cluster.name] = gateways_expose_local(seen.istio_gateways)
    return extra


def read_extra(mesh: Mesh, tools: Tools, runner, options: Options, reporter: Reporter, ambient: bool,
               revisions: dict[str, str | None], observed: dict[str, Observed] | None = None) -> Extra:
    """The cross-network Gateways (see reads_gateways), on a remote where its istiod Service leads (that of
    the revision serving it, ``revisions``: per context, as status read it), and whether the namespace exists
    already (and was made by verify). What status's read (``observed``) listed is taken from it: its
    namespaces, and istio-system's Gateways where it listed Istio's objects; the rest is read."""
    observed = observed or {}
    extra = _already_read(mesh, observed, options.namespace, ambient)

    def step_for(cluster: Cluster) -> Step:
        seen = observed.get(cluster.context) or Observed()
        namespace = namespace_command(tools, cluster, options.namespace) if seen.namespace_labels is None else None
        gateway = (gateways_command(tools, cluster)
                   if reads_gateways(mesh, cluster, ambient) and seen.istio_gateways is None else None)
        endpoints = (istiod_endpoints_command(tools, cluster, revisions.get(cluster.context))
                     if mesh.member(cluster.context).is_remote else None)

        def action(ctx: RunContext) -> None:
            out = ctx.run(namespace).stdout.strip() if namespace is not None else ""
            if out and not _made_by_verify((json.loads(out).get("metadata") or {}).get("labels") or {}):
                extra.not_ours.append(cluster.context)
            if endpoints is not None:
                extra.istiod_addresses[cluster.name] = _parsed(ctx.run(endpoints), endpoint_address)
            if gateway is not None:  # fails without Istio's CRDs: then nothing is known
                extra.exposes_local[cluster.name] = _parsed(ctx.run(gateway), exposes_local)

        commands = [c for c in (namespace, endpoints, gateway) if c is not None]
        return Step("read namespace and gateways", commands=commands, action=action)

    steps = {c.context: step_for(c) for c in mesh.topology.clusters}
    left = Topology(mesh.topology.mesh_id, tuple(c for c in mesh.topology.clusters if steps[c.context].commands),
                    mesh.topology.path)
    if not left.clusters:
        return extra
    executor = Executor(runner, reporter, options.parallel)
    executor.run_phase(phase("read namespace and gateways", left, lambda c: steps[c.context]))
    if executor.outcome.interrupted:
        raise KeyboardInterrupt
    if executor.outcome.failures:
        context, exc = next(iter(executor.outcome.failures.items()))
        raise MeshError(f"{context}: {exc.message}")
    return extra


def reads_text(mesh: Mesh, namespace: str, revision: str | None, ambient: bool) -> str:
    """What read_extra reads, for the dry run."""
    text = f"whether namespace {namespace} exists (status's read lists the namespaces)"
    if not ambient and mesh.multi_network:
        text += (f"; the Gateways of {ISTIO_NAMESPACE} on primaries (status's read lists them where setup-mesh "
                 f"applied Istio objects; elsewhere $ kubectl get gateways.networking.istio.io -n {ISTIO_NAMESPACE} "
                 f"-o json)")
    if any(m.is_remote for m in mesh.members):
        text += (f"; on remotes: $ kubectl get endpointslices.discovery.k8s.io -n {ISTIO_NAMESPACE} -l "
                 f"kubernetes.io/service-name={istiod_name(revision)} -o json")
    return text


# --- the command -------------------------------------------------------------------------------------

def run_verify(workdir: Path, *, kubeconfig: str | None, istio_dir: str | None, options: Options, timeout: float,
               runner, reporter: Reporter) -> int:
    _check_namespace(options.namespace)
    loaded = load_workspace(workdir, kubeconfig, lenient=options.dry_run)
    topology = loaded.topology
    tools = find_tools(istio_dir, runner, options.dry_run, loaded.notes, timeout,
                       pinned=pinned_release(loaded.topology, workdir, istio_dir))
    revision = control_plane_revision(loaded.base)
    ambient = data_plane_mode(loaded.base) == AMBIENT
    mesh = mesh_model(topology, data_plane_mode(loaded.base))
    plan = {c.context: manifests(options.namespace, c, revision, options.images, ambient) for c in topology.clusters}
    if options.dry_run:
        print_dry_run(mesh, tools, plan, options, mesh_label_text(revision, ambient),
                      reads_text(mesh, options.namespace, revision, ambient), loaded.notes, reporter)
        return 0

    hints = VerifyHints(Hints(workdir, topology), options.namespace, revision, ambient)
    quiet = Reporter(console=reporter.console, err_console=reporter.err, quiet=True)
    status = collect(status_workspace(workdir, loaded), tools, runner, quiet, options.parallel)
    unreachable = [c for c in status.clusters if not c.reachable]
    if unreachable:
        names = ", ".join(c.cluster.context for c in unreachable)
        raise MeshError(f"cannot read {names}: verify needs every cluster of the mesh",
                        hint=f"{hints.status} says more; or remove the context from {topology.path}")
    with reporter.activity(f"read what verify needs besides ({len(topology.clusters)} cluster(s)) ..."):
        # After a canary upgrade a remote's istiod Service is its revision's, not base.yaml's.
        serving = {c.cluster.context: c.serving_revision for c in status.clusters}
        extra = read_extra(mesh, tools, runner, options, quiet, ambient, serving, status.observed)
    if extra.not_ours:
        raise ConfigError(f"namespace {options.namespace} already exists in {', '.join(extra.not_ours)} and was not "
                          f"created by verify (no {CREATED_BY}={CREATOR} label): verify deletes its namespace when "
                          f"done, so it will not use that one", hint="pass another name with --namespace")
    runs = _probe(mesh, tools, runner, options, plan, reporter, quiet)
    pairs, problems = judge(topology, runs, Facts(status, extra.exposes_local, mesh, extra.istiod_addresses), hints)
    result = VerifyResult(topology.mesh_id, options.namespace, [c.name for c in topology.clusters], pairs, problems,
                          options.keep)
    _show(result, options, tools, topology, reporter)
    return 0 if result.ok else 1


def _check_namespace(namespace: str) -> None:
    if not is_dns1123_label(namespace):
        raise ConfigError(f"--namespace {namespace!r} is not a valid namespace name",
                          hint="use lower-case letters, digits and '-' (at most 63), e.g. setup-mesh-verify")


def _show(result: VerifyResult, options: Options, tools: Tools, topology, reporter: Reporter) -> None:
    if options.output == "json":
        reporter.console.out(json.dumps(result.to_json(), indent=2), highlight=False)
        return
    kept = [cleanup_command(tools, c, options.namespace).pasteable() for c in topology.clusters]
    render(result, reporter.console, kept if options.keep else None)


def _probe(mesh: Mesh, tools: Tools, runner, options: Options, plan: dict[str, list[dict]], reporter: Reporter,
           quiet: Reporter) -> dict[str, ClusterRun]:
    """Deploy, wait for the pods, call; then clean up (unless --keep), whatever happened."""
    topology = mesh.topology
    runs = {c.context: ClusterRun() for c in topology.clusters}
    progress = options.output != "json"
    if progress:
        reporter.start_progress([(c.context, c.network) for c in topology.clusters])
    executor = Executor(runner, reporter if progress else quiet, options.parallel)
    namespace = options.namespace
    try:
        executor.run_phases([
            phase("deploy", topology, lambda c: deploy_step(tools, c, plan[c.context], runs[c.context])),
            phase("wait for pods", topology,
                  lambda c: wait_step(tools, c, namespace, options.ready_timeout, runs[c.context])),
            phase("call helloworld", topology, lambda c: call_step(tools, c, namespace, topology, runs[c.context])),
        ])
    finally:
        reporter.stop_progress()
        if not options.keep:
            cleanup(topology, tools, runner, namespace, options.parallel, runs, reporter)
    if executor.outcome.interrupted:
        raise KeyboardInterrupt
    for context, exc in executor.outcome.failures.items():
        runs[context].error = runs[context].error or exc.message.splitlines()[0]
    return runs
