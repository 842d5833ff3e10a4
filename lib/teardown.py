"""teardown: removes what setup-mesh installed, asks first, and keeps or purges the workspace's keys."""
from __future__ import annotations

import shutil
from pathlib import Path

from . import certs, carotation, invocation
from .cluster import KubeClient
from .config import BASE_FILE, TOPOLOGY_FILE, Cluster, Topology, load_base, load_topology, resolve_contexts
from .errors import ConfigError, MeshError
from .executor import Executor, Outcome, Phase
from .kube import IstioUsage
from .overlay import our_operators
from .plan import ApplyPlan, teardown_plan
from .planview import print_plan
from .release import Release
from .reporter import Reporter
from .runner import ShRunner
from .state import State
from .workspace import find_tools, pinned_release
from .commands import confirm, describe_kept, finish_run, open_log, sit_out, uninstall_for


def _our_operators(workdir: Path) -> frozenset[str]:
    """What setup-mesh installed, by the workspace's base.yaml (teardown runs without it too)."""
    base_path = workdir / BASE_FILE
    return our_operators(load_base(base_path).operator if base_path.exists() else {})


def teardown(workdir: Path, *, kubeconfig: str | None, istio_dir: str | None, yes: bool, purge_certs: bool,
             parallel: int, timeout: float, runner: ShRunner, reporter: Reporter, dry_run: bool = False,
             remove_crds: bool = False) -> int:
    if not workdir.is_dir():
        raise ConfigError(f"workdir {workdir} does not exist", hint="pass the --workdir that apply used")
    state = State.load(workdir)
    clusters, pinned = _clusters_to_tear_down(workdir, kubeconfig, istio_dir, state)
    tools = find_tools(istio_dir, runner, False, [], timeout, pinned=pinned)
    ours = _our_operators(workdir)

    # Read first: what is there decides whether to ask at all, and what the question names.
    quiet = Reporter(quiet=True, err_console=reporter.err)
    client = KubeClient(tools, runner, quiet, parallel)
    observed = client.read_state(clusters)
    present = [c for c in clusters if (seen := observed.get(c.context)) and seen.reachable
               and (seen.namespace or seen.istiod_service)]
    usage = client.istio_usage(present, ours) if present else {}
    uninstall = {ctx: uninstall_for(workdir, ours, found, observed.get(ctx), remove_crds) for ctx, found in usage.items()
                 if isinstance(found, IstioUsage)}
    # A cluster whose Istio users could not be read is not touched: it fails, and is reported.
    phase = teardown_plan(tools, clusters, observed, uninstall)
    unreachable = {c.context: observed[c.context] for c in clusters
                   if c.context in observed and not observed[c.context].reachable}
    unread = {ctx: found for ctx, found in usage.items() if isinstance(found, MeshError)}
    kept = [line for context, how in uninstall.items() if (line := describe_kept(context, how))]
    if dry_run:
        _show_plan(workdir, state, clusters, phase, observed, kept, purge_certs, reporter)
        return 0
    if not phase and not unreachable and not unread:
        for cluster in clusters:
            state.forget(cluster.context)
        state.save(state.mesh_id)
        reporter.success("nothing to remove: no cluster holds what setup-mesh creates")
        _purge_or_keep_certs(workdir, purge_certs, reporter)
        return 0
    for line in kept:
        reporter.info(line)
    if phase:
        confirm(f"Remove setup-mesh's Istio, its secrets and istio-system from {', '.join(phase.steps)}?", yes,
                reporter)

    log = open_log(workdir, "teardown", runner)
    reporter.start_progress([(c.context, c.network) for c in clusters])
    executor = Executor(runner, reporter, parallel)
    for context, seen in unreachable.items():
        sit_out(executor, tools, next(c for c in clusters if c.context == context), seen, "then run teardown again")
    for context, failed in unread.items():
        executor.fail_before_start(context, "read who else uses Istio", failed)
    outcome = executor.run_phases([phase])
    reporter.stop_progress()
    _forget_removed(state, clusters, phase, outcome, reporter)
    code = finish_run("teardown", outcome, log, reporter)
    if outcome.ok:
        _purge_or_keep_certs(workdir, purge_certs, reporter)
    return code


def _clusters_to_tear_down(workdir: Path, kubeconfig: str | None, istio_dir: str | None,
                           state: State) -> tuple[list[Cluster], Release | None]:
    """The clusters of topology.yaml and those only the recorded state still knows, and the pinned release."""
    clusters: list[Cluster] = []
    topology_path = workdir / TOPOLOGY_FILE
    pinned: Release | None = None
    if topology_path.exists():
        topology = resolve_contexts(load_topology(topology_path), kubeconfig)
        clusters.extend(topology.clusters)
        pinned = pinned_release(topology, workdir, istio_dir)
    elif not state.clusters:
        raise ConfigError(f"nothing to tear down: no {TOPOLOGY_FILE} and no recorded state in {workdir}",
                          hint="pass the --workdir that apply used")
    known = {c.context for c in clusters}
    for context, entry in state.clusters.items():
        if context not in known:
            clusters.append(Cluster(context=context, network=entry.get("network", ""),
                                    name=entry.get("cluster_name", context), kubeconfig=entry.get("kubeconfig"),
                                    primary=entry.get("primary")))
    return clusters, pinned


def _show_plan(workdir: Path, state: State, clusters: list[Cluster], phase: Phase, observed: dict, kept: list[str],
               purge_certs: bool, reporter: Reporter) -> None:
    """The dry run: what each cluster loses, what is kept and why, and what happens to the keys."""
    view = Topology(state.mesh_id or "(unrecorded)", tuple(clusters), workdir / TOPOLOGY_FILE)
    print_plan(ApplyPlan([phase], actions={ctx: "remove" for ctx in phase.steps}), view, observed, [],
               reporter, title="Teardown plan", nothing="nothing to remove: no cluster holds what setup-mesh "
               "creates", command="teardown")
    for line in kept:
        reporter.info(line)
    for folder, what in _cert_folders(workdir):
        reporter.info(f"{folder.name}/ is " + ("deleted (--purge-certs)" if purge_certs else
                                             f"kept ({what}; --purge-certs deletes it)"))


def _forget_removed(state: State, clusters: list[Cluster], phase: Phase, outcome: Outcome, reporter: Reporter) -> None:
    """Clusters torn down (or holding nothing) leave the recorded state; failed ones stay for the next run."""
    for cluster in clusters:
        if cluster.context not in outcome.failures:
            state.forget(cluster.context)
            reporter.finish_cluster(cluster.context, True, "" if cluster.context in phase.steps else "nothing to remove")
    state.save(state.mesh_id)


def _cert_folders(workdir: Path) -> list[tuple[Path, str]]:
    """The workspace's folders of certificates, with what they hold: certs/, and during a move to a new root
    certs-next/ (keys) or certs-former/ (the clusters' former root, public certificates only)."""
    folders = [(certs.certs_dir(workdir), "the root CA and intermediates"),
               (carotation.next_dir(workdir), "the new root CA of a move to a new root, and its intermediates"),
               (carotation.former_dir(workdir), "the clusters' former root of a move to this workspace's root")]
    return [(folder, what) for folder, what in folders if folder.exists()]


def _purge_or_keep_certs(workdir: Path, purge: bool, reporter: Reporter) -> None:
    """Both folders go, or both stay: a move to a new root needs the old root and the new one."""
    for folder, what in _cert_folders(workdir):
        if purge:
            shutil.rmtree(folder, ignore_errors=True)
            reporter.info(f"deleted {folder}")
        else:
            reporter.info(f"kept {folder.name}/ ({what}): a new apply reuses them; "
                          f"`{invocation.command('teardown', '--purge-certs')}` deletes them")
