"""teardown: removes what setup-mesh installed, asks first, and keeps or purges the workspace's keys."""
from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from . import certs, carotation, invocation
from .cluster import KubeClient
from .config import BASE_FILE, TOPOLOGY_FILE, Cluster, Topology, load_base, load_topology
from .kubeconfig import resolve_contexts
from .errors import ConfigError, MeshError
from .executor import Outcome, Phase
from .kube import Tools
from .overlay import our_operators
from .plan import ApplyPlan, teardown_plan
from .uninstallsteps import holds_setup_mesh
from .planview import print_plan
from .release import Release
from .reporter import Reporter
from .runner import ShRunner
from .state import State
from .workspace import find_tools, pinned_release
from .commands import describe_kept, uninstalls_for
from .driver import Parts, Run, SitOut, drive, rows_of, sit_out


def _our_operators(workdir: Path) -> frozenset[str]:
    """What setup-mesh installed, by the workspace's base.yaml (teardown runs without it too)."""
    base_path = workdir / BASE_FILE
    return our_operators(load_base(base_path).operator if base_path.exists() else {})


def teardown(workdir: Path, *, kubeconfig: str | None, istio_dir: str | None, yes: bool, purge_certs: bool,
             parallel: int, timeout: float, runner: ShRunner, reporter: Reporter, dry_run: bool = False,
             remove_crds: bool = False) -> int:
    run = Run("teardown", workdir, runner, reporter, parallel, dry_run, yes)
    if not workdir.is_dir():
        raise ConfigError(f"workdir {workdir} does not exist", hint="pass the --workdir that apply used")
    state = State.load(workdir)
    clusters, pinned = _clusters_to_tear_down(workdir, kubeconfig, istio_dir, state)
    tools = find_tools(istio_dir, runner, False, [], timeout, pinned=pinned)
    ours = _our_operators(workdir)

    # Read first: what is there decides whether to ask at all, and what the question names.
    client = KubeClient(tools, runner, run.quiet, parallel)
    observed = client.read_state(clusters)
    # A cluster holding nothing of setup-mesh's (a kept istio-system with others' objects in it) is done; one
    # apply recorded is taken as holding what its istio-system holds (earlier versions left fewer marks).
    present = [c for c in clusters if (seen := observed.get(c.context)) and seen.reachable
               and (holds_setup_mesh(seen, ours) or seen.namespace_terminating
                    or (seen.namespace and state.has(c.context)))]
    usage = client.istio_usage(present, ours) if present else {}
    uninstall = uninstalls_for(workdir, ours, usage, observed, remove_crds)
    # A cluster whose Istio users could not be read is not touched: it fails, and is reported.
    phase = teardown_plan(tools, clusters, observed, uninstall)
    unreachable = {c.context: observed[c.context] for c in clusters
                   if c.context in observed and not observed[c.context].reachable}
    unread = {ctx: found for ctx, found in usage.items() if isinstance(found, MeshError)}
    kept = [line for context, how in uninstall.items() if (line := describe_kept(context, how))]
    torn = _Teardown(run, state, clusters, phase, observed, unreachable, unread, kept, tools, purge_certs)
    return drive(run, torn.parts())


@dataclass
class _Teardown:
    """One teardown's parts of the run (lib/driver.py)."""
    run: Run
    state: State
    clusters: list[Cluster]
    phase: Phase
    observed: dict
    unreachable: dict
    unread: dict[str, MeshError]
    kept: list[str]
    tools: Tools
    purge_certs: bool

    def parts(self) -> Parts:
        idle = not self.phase and not self.unreachable and not self.unread
        return Parts(show=self.show, nothing=self.nothing_to_remove if idle else None, ask=self.ask,
                     rows=rows_of(self.clusters), sit_outs=self.sit_outs,
                     execute=lambda executor: executor.run_phases([self.phase]), record=self.record,
                     report=self.report, after=self.after)

    def nothing_to_remove(self) -> int:
        for cluster in self.clusters:
            self.state.forget(cluster.context)
        self.state.save(self.state.mesh_id)
        self.run.reporter.success("nothing to remove: no cluster holds what setup-mesh creates")
        _purge_or_keep_certs(self.run.workdir, self.purge_certs, self.run.reporter)
        return 0

    def show(self) -> int:
        _show_plan(self.run.workdir, self.state, self.clusters, self.phase, self.observed, self.kept,
                   self.purge_certs, self.run.reporter, sitting_out=set(self.unreachable))
        return 0

    def ask(self) -> None:
        """What is kept, and the question; the log is opened once confirmed, so a declined teardown leaves none."""
        for line in self.kept:
            self.run.reporter.info(line)
        if self.phase:
            self.run.confirm(f"Remove setup-mesh's Istio, its secrets and istio-system from {', '.join(self.phase.steps)}?")

    def sit_outs(self) -> list[SitOut]:
        return [*(sit_out(self.tools, next(c for c in self.clusters if c.context == context), seen,
                          "then run teardown again") for context, seen in self.unreachable.items()),
                *(SitOut(context, "read who else uses Istio", failed) for context, failed in self.unread.items())]

    def record(self, outcome: Outcome) -> None:
        """Clusters torn down (or holding nothing) leave the recorded state; failed ones stay for the next run."""
        for cluster in self.clusters:
            if cluster.context not in outcome.failures:
                self.state.forget(cluster.context)
        self.state.save(self.state.mesh_id)

    def report(self, outcome: Outcome) -> None:
        for cluster in self.clusters:
            if cluster.context not in outcome.failures:
                self.run.reporter.finish_cluster(cluster.context, True,
                                                 "" if cluster.context in self.phase.steps else "nothing to remove")

    def after(self, code: int, outcome: Outcome) -> int:
        """The keys go (--purge-certs) or stay once every cluster is torn down."""
        if outcome.ok:
            _purge_or_keep_certs(self.run.workdir, self.purge_certs, self.run.reporter)
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
               purge_certs: bool, reporter: Reporter, sitting_out: set[str]) -> None:
    """The dry run: what each cluster loses, what is kept and why, and what happens to the keys."""
    view = Topology(state.mesh_id or "(unrecorded)", tuple(clusters), workdir / TOPOLOGY_FILE)
    print_plan(ApplyPlan([phase], actions={ctx: "remove" for ctx in phase.steps}), view, observed, [],
               reporter, title="Teardown plan", nothing="nothing to remove: no cluster holds what setup-mesh "
               "creates", command="teardown", sitting_out=sitting_out)
    for line in kept:
        reporter.info(line)
    for folder, what in _cert_folders(workdir):
        reporter.info(f"{folder.name}/ is " + ("deleted (--purge-certs)" if purge_certs else
                                             f"kept ({what}; --purge-certs deletes it)"))


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
