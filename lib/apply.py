"""apply: from the workspace and what the clusters hold to a plan, its confirmation, its run and the summary."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from . import applywarnings, carotation, fetch, upgrade, upgradeplan
from .cluster import KubeClient
from .config import AMBIENT, Cluster, Topology, data_plane_mode, select_clusters, ztunnel_namespace
from .errors import ConfigError, MeshError
from .executor import RERUN_HINT, Outcome
from .installnamespaces import missing_namespaces_refusal
from .installsteps import istio_objects_read_in
from .gatewayapi import CrdSource, choose_source
from .kube import Observed, Tools, gateway_addresses
from .overlay import our_operators
from .desired import desired_state
from .assess import loopback_peers
from .mesh import mesh_model
from .plan import RECORD_TITLE, ApplyPlan, Removal, Uninstall, build_apply_plan
from .planview import other_root_consequence, print_plan
from .release import Release, find_release
from .reporter import Reporter
from .runner import ShRunner
from .statusrevisions import read_revisions
from .workspace import Workspace, find_tools, load_workspace
from .commands import certs_prerequisites, describe_kept, intermediates_refusal, other_roots_refusal, uninstalls_for
from .driver import Parts, Run, SitOut, check_access, drive, rows_of, sit_out


def apply(workdir: Path, *, kubeconfig: str | None, istio_dir: str | None, dry_run: bool, yes: bool,
          parallel: int, gateway_timeout: float, timeout: float, runner: ShRunner, reporter: Reporter,
          contexts: list[str] = (), gateway_api_crds: str | None = None, replace_foreign_ca: bool = False,
          istio_mirror: str | None = None, restart_workloads: bool = False, upgrade_parallel: int = 1) -> int:
    run = Run("apply", workdir, runner, reporter, parallel, dry_run, yes)
    if not dry_run:
        carotation.resume_finish(workdir)  # a root transition's last rename, if a run was cut short there
    # A dry run shows the plan for clusters that hold nothing yet, then fails as apply would.
    ws = load_workspace(workdir, kubeconfig, lenient=dry_run, note_contexts=False)
    topology = ws.topology
    chosen = select_clusters(topology, list(contexts))
    only = {c.context for c in chosen} if contexts else None
    transition = carotation.load_transition(workdir)
    releases, istio_dir, tools = _releases_and_tools(ws, istio_dir, istio_mirror, dry_run, timeout, runner, reporter)
    release, intermediate_vars = certs_prerequisites(ws, istio_dir, runner, dry_run, transition=transition)
    ambient = data_plane_mode(ws.base) == AMBIENT
    istio_version = _istio_version(istio_dir, ws) if ambient else None
    crd_source = _gateway_api_source(gateway_api_crds, istio_version, ws, dry_run) if ambient else None
    applywarnings.single_network_ambient(topology, ambient, reporter)
    unreachable_api = loopback_problem(topology, data_plane_mode(ws.base))
    removed, removed_clusters = _removed_clusters(ws, only)

    run.open_log()  # before the reads, so that they are logged
    if not dry_run:
        run.start_progress(rows_of(chosen))
    # A dry run's output is the plan alone (no progress); with --context the others are read too, without a row.
    read_reporter = run.reader if only is None else run.quiet
    readable = ws.contexts_resolved
    client = KubeClient(tools, runner, read_reporter, parallel)
    observed = _read_clusters(client, ws, removed_clusters, ambient) if readable else {}
    applywarnings.after_reads(topology, observed, only, ambient, istio_version, reporter)
    # Remotes are pointed at their primary's east-west gateway: at the address it has now, when it has one.
    addresses = gateway_addresses(observed)
    desired = desired_state(topology, ws.base, addresses, transition=transition)
    uninstall = _uninstall_leaving(client, ws, removed_clusters, observed)
    unreadable, unreachable, orphaned = _sitting_out(topology, chosen, observed)
    if not dry_run:  # (its plan says it)
        applywarnings.left_out_unread(unreadable - set(unreachable), observed, reporter)
    # A canary upgrade's state, read and checked against Istio's skew rules before any cluster is touched.
    upgrading = _read_upgrade(topology, observed, tools, runner, read_reporter, parallel, only, ambient) \
        if readable else None
    plan = build_apply_plan(topology=topology, desired=desired,
                            observed={c.context: observed.get(c.context) for c in topology.clusters},
                            skip=unreadable | set(orphaned),
                            only=only,
                            removed=removed, removed_observed=observed, workdir=workdir, tools=tools,
                            release=release, intermediate_vars=intermediate_vars, gateway_timeout=gateway_timeout,
                            gateway_api=crd_source, uninstall=uninstall, transition=transition,
                            served=ws.state.serving_remotes(),
                            revisions=upgradeplan.install_revisions(topology, upgrading[0], observed) if upgrading else None)
    if upgrading:  # what is left of a canary upgrade to the pinned versions
        _add_upgrade(plan, *upgrading, releases, desired, tools, workdir, ws.notes, restart_workloads, upgrade_parallel, only)
    refusal = (intermediates_refusal(ws, transition) or other_roots_refusal(plan.other_roots, replace_foreign_ca)
               or missing_namespaces_refusal(plan.phases, {ctx: d.operator for ctx, d in desired.items()}, observed,
                                             tools, {c.context: c for c in topology.clusters}))
    return drive(run, _Applying(run, ws, plan, desired, chosen, tools, uninstall, unreachable, orphaned, refusal,
                                unreachable_api, observed if readable else None, replace_foreign_ca).parts())


@dataclass
class _Applying:
    """One apply's parts of the run (lib/driver.py)."""
    run: Run
    ws: Workspace
    plan: ApplyPlan
    desired: dict
    chosen: list[Cluster]
    tools: Tools
    uninstall: dict[str, Uninstall]
    unreachable: dict[str, Observed]
    orphaned: dict[str, str]  # chosen remotes whose primary could not be read -> that primary
    refusal: ConfigError | None  # another root's cacerts, not to be replaced unasked
    unreachable_api: MeshError | None  # peers would be told loopback addresses: the mesh cannot work
    shown: dict[str, Observed] | None  # what the dry run's plan shows as read
    replace: bool  # --replace-foreign-ca

    def parts(self) -> Parts:
        run, plan, reporter = self.run, self.plan, self.run.reporter
        return Parts(
            show=lambda: _show_dry_run(plan, self.ws, self.shown, self.refusal, self.unreachable_api, self.replace,
                                       reporter, sitting_out=set(self.unreachable)),
            refusal=self.refusal, ask=lambda: _before_changes(run, plan, self.uninstall), rows=rows_of(self.chosen),
            sit_outs=lambda: _sit_outs(plan, self.ws.topology, self.tools, self.unreachable, self.orphaned,
                                       self.ws.state.path),
            execute=lambda executor: executor.run_plan(plan.phases),
            # A remote's state as installed: with the address its primary's gateway got during the run.
            record=lambda outcome: _record_state(self.ws, plan, {**self.desired, **run.executor.shared.get("desired", {})},
                                                 outcome, self.chosen),
            report=lambda outcome: _report_done(self.chosen, plan, outcome, reporter),
            after=lambda code, outcome: _not_working(self.unreachable_api, code, reporter))


def _releases_and_tools(ws: Workspace, istio_dir: str | None, istio_mirror: str | None, dry_run: bool, timeout: float,
                        runner: ShRunner, reporter: Reporter) -> tuple[dict, str | None, Tools]:
    """The pinned releases, fetched and verified before any cluster is touched; the Istio folder in use, and
    the tools. A dry run's plan names the istioctl apply will fetch, not another one on PATH."""
    releases = fetch.pinned_releases(ws.topology, ws.workdir, istio_dir, istio_mirror, reporter, dry_run, ws.notes)
    pinned = fetch.mesh_release(ws.topology, releases)
    istio_dir = str(pinned.root) if pinned else istio_dir
    tools = find_tools(istio_dir, runner, dry_run, ws.notes, timeout,
                       pinned=pinned or fetch.planned_release(ws.topology, ws.workdir))
    return releases, istio_dir, tools


def _show_dry_run(plan: ApplyPlan, ws: Workspace, observed: dict[str, Observed] | None, refusal: ConfigError | None,
                  unreachable_api: MeshError | None, replace_foreign_ca: bool, reporter: Reporter,
                  sitting_out: set[str]) -> int:
    """The plan, then what apply itself would stop at, in its order (``sitting_out``: the clusters it could not
    read, which the dry run names after it)."""
    reporter.stop_progress()
    print_plan(plan, ws.topology, observed, ws.notes, reporter, replace_other_roots=replace_foreign_ca,
               sitting_out=sitting_out)
    for failure in (ws.context_error, refusal):
        if failure is not None:
            raise failure
    return _not_working(unreachable_api, 0, reporter)


def _sit_outs(plan: ApplyPlan, topology: Topology, tools: Tools, unreachable: dict[str, Observed],
              orphaned: dict[str, str], state_path: Path) -> list[SitOut]:
    """Removed clusters it cannot reach are named; the clusters that sit this run out are reported as failed
    before they start."""
    found = []
    for gone in plan.removals:
        if not gone.reachable:
            # Its peers stop trusting it in this run; what setup-mesh installed there stays, and so does the
            # cluster in the recorded state, so that the next apply removes it once the cluster answers.
            found.append(SitOut(gone.context, "remove from the mesh", MeshError(
                f"cannot reach the removed context {gone.context!r}: setup-mesh's Istio, cacerts and istio-system "
                f"stay there (its peers no longer hold its secret)",
                hint=f"check access with `{check_access(tools, gone.cluster)}`, then run apply again: it removes them once the cluster "
                     f"answers; if the cluster no longer exists, delete its entry from "
                     f"{state_path}")))
    for context, seen in unreachable.items():
        # A primary leaves the mesh only once its remotes have another primary (apply refuses it before).
        remotes = [c.context for c in topology.clusters if c.primary == context]
        then = (f"or give its remotes ({', '.join(remotes)}) another primary, then remove it from {topology.path}"
                if remotes else f"or remove the context from {topology.path}")
        found.append(sit_out(tools, topology.by_context(context), seen, then))
    for context, primary in orphaned.items():
        found.append(SitOut(context, "wait for its primary", MeshError(
            f"sits this run out: its primary {primary} could not be read",
            hint=f"make {primary} reachable, then {RERUN_HINT}")))
    return found


def _read_clusters(client: KubeClient, ws: Workspace, removed: list[Cluster], ambient: bool) -> dict[str, Observed]:
    """Every cluster of the topology and those removed from it, once each."""
    return client.read_state(list(ws.topology.clusters) + removed, ambient=ambient,
                             ztunnel_namespace=ztunnel_namespace(ws.base),
                             istio_objects_in=istio_objects_read_in(ws.workdir, mesh_model(ws.topology, data_plane_mode(ws.base))))


def _removed_clusters(ws: Workspace, only: set[str] | None) -> tuple[list[Removal], list[Cluster]]:
    """The clusters apply recorded that topology.yaml no longer names. With --context, they wait for an
    apply of the whole mesh."""
    in_topology = {c.context for c in ws.topology.clusters}
    removed = [Removal(ctx, entry.get("cluster_name", ctx), entry.get("kubeconfig"), False, entry.get("primary"))
               for ctx, entry in ws.state.clusters.items() if ctx not in in_topology and only is None]
    removed_clusters = [r.cluster for r in removed]
    return removed, removed_clusters


def _uninstall_leaving(client: KubeClient, ws: Workspace, removed_clusters: list[Cluster],
                       observed: dict[str, Observed]) -> dict[str, Uninstall]:
    """Clusters leaving the mesh are uninstalled; Istio's CRDs there stay if others use Istio."""
    leaving = [c for c in removed_clusters if (seen := observed.get(c.context)) and seen.reachable]
    ours = our_operators(ws.base)
    usage = client.istio_usage(leaving, ours) if leaving else {}
    return uninstalls_for(ws.workdir, ours, usage, observed)


def _sitting_out(topology: Topology, chosen: list[Cluster], observed: dict[str, Observed]
                 ) -> tuple[set[str], dict[str, Observed], dict[str, str]]:
    """An unreachable cluster sits this run out (and is reported), and so do the remotes of an unreachable
    primary; the others go ahead. Returns the unreadable clusters, the chosen ones of them, and the
    chosen remotes whose primary is unreadable (with that primary)."""
    unreadable = {c.context for c in topology.clusters if c.context in observed and not observed[c.context].reachable}
    unreachable = {c.context: observed[c.context] for c in chosen if c.context in unreadable}
    orphaned = {c.context: c.primary for c in chosen if c.primary in unreadable and c.context not in unreadable}
    return unreadable, unreachable, orphaned


def _before_changes(run: Run, plan: ApplyPlan, uninstall: dict[str, Uninstall]) -> None:
    """What apply says and asks before it changes anything (another root having been refused, nothing
    touched, unless asked to replace it): other roots replaced as asked; the deletions listed and confirmed."""
    reporter = run.reporter
    for context, finding in plan.other_roots.items():
        reporter.info(f"{context}: {finding.describe()}: {other_root_consequence(True)}")

    if plan.deletes_anything:
        run.stop_progress()
        _describe_deletions(plan, reporter)
        for context, how in uninstall.items():
            if (kept := describe_kept(context, how)):
                reporter.info(kept)
        run.confirm(deletion_question(plan))


def _report_done(chosen: list[Cluster], plan: ApplyPlan, outcome: Outcome, reporter: Reporter) -> None:
    for cluster in chosen:
        if cluster.context not in outcome.failures:
            reporter.finish_cluster(cluster.context, True)
    for gone in plan.removals:
        if gone.context not in outcome.failures:
            reporter.finish_cluster(gone.context, True, "removed" if gone.reachable else "removed (unreachable)")


def _read_upgrade(topology: Topology, observed: dict, tools: Tools, runner: ShRunner, reporter: Reporter,
                  parallel: int, only: set[str] | None, ambient: bool):
    """(clusters' revisions, pinned targets) when versions are pinned and some cluster runs Istio; refuses
    what Istio's skew rules, or setup-mesh, do not allow, before any cluster is touched."""
    targets = upgradeplan.targets_of(topology)
    if not targets:
        return None
    members = [c for c in topology.clusters if (seen := observed.get(c.context)) is not None and seen.reachable]
    revisions = read_revisions(members, observed, tools, runner, reporter, parallel)
    # Every cluster's state, also with --context: a primary keeps an old revision its remotes still use.
    states = upgradeplan.upgrade_states(topology, observed, revisions)
    if not states:  # a fresh mesh: installed at its pinned versions by the ordinary install
        return None
    joining = upgradeplan.joining_refusal(topology, states, observed, targets, only)
    if joining is not None:
        raise joining
    if any(only is None or s.context in only for s in states):  # else nothing chosen moves: a joining remote's run
        refusals = upgrade.preflight(topology, revisions, targets)
        if refusals:
            raise upgrade.refusal_error(refusals)
        refusal = upgradeplan.unsupported_refusal([s for s in states if only is None or s.context in only], targets,
                                                  ambient)
        if refusal is not None:
            raise refusal
    return states, targets


def _add_upgrade(plan: ApplyPlan, states: list, targets: dict[str, str], releases: dict, desired: dict, tools: Tools,
                 workdir: Path, notes: list[str], restart_workloads: bool, parallel: int, only: set[str] | None) -> None:
    """The canary upgrade's steps (lib/upgradeplan.py) as one more phase of ``plan``, for the clusters of
    ``only`` (None: all)."""
    fetched = {v: releases.get(v) or Release(fetch.releases_dir(workdir).resolve() / f"istio-{v}") for v in targets.values()}
    # ``parallel`` primaries at a time (one unless --parallel was given), each with its remotes: a failure
    # stops the upgrade with the later waves untouched.
    phase = upgradeplan.upgrade_phase(states, targets, desired, fetched, tools, workdir, parallel, restart_workloads,
                                      only)
    if phase:
        plan.phases.insert(2, phase)
        plan.unchanged = [c for c in plan.unchanged if c not in phase.steps]
    notes.extend(upgradeplan.waiting_removals(states, targets, only))


# apply (and its dry run) did what it was asked, but the mesh as configured cannot work (README: exit codes).
EXIT_NOT_WORKING = 3


def loopback_problem(topology: Topology, data_plane: str) -> MeshError | None:
    """The one line apply ends with when peers would be told to reach clusters at loopback addresses."""
    peers = loopback_peers(mesh_model(topology, data_plane))
    if not peers:
        return None
    where = ", ".join(f"{m.context} ({m.cluster.remote_server})" for m in peers)
    return MeshError(f"the mesh cannot work: other clusters would reach {where} at a loopback address; set "
                     f"api_server: for {'them' if len(peers) > 1 else 'it'} in {topology.path} (an address the "
                     f"other clusters reach), then run apply again")


def _not_working(problem: MeshError | None, code: int, reporter: Reporter) -> int:
    """The last line and the exit code never claim a mesh that status would call broken."""
    if problem is None:
        return code
    reporter.error(problem)
    return code or EXIT_NOT_WORKING


def _istio_version(istio_dir: str | None, ws: Workspace) -> str | None:
    """The version of the Istio release in use (the one holding istioctl), when one is found."""
    try:
        return find_release(istio_dir, ws.workdir).version
    except ConfigError:
        return None


def _gateway_api_source(option: str | None, istio_version: str | None, ws: Workspace, dry_run: bool) -> CrdSource | None:
    """Where clusters of an ambient mesh that lack the Gateway API CRDs get them: --gateway-api-crds, else
    the standard channel of the release the Istio release in use expects."""
    try:
        return choose_source(option, istio_version)
    except ConfigError as exc:
        if not dry_run:
            raise
        ws.notes.append(f"{exc.message}: {exc.hint}")
        return None


def _record_state(ws: Workspace, plan: ApplyPlan, desired: dict, outcome: Outcome, worked_on: list[Cluster]) -> None:
    """Record what is now true, even after a partial failure, so the next run repairs only the rest."""
    for cluster in worked_on:
        failed = cluster.context in outcome.failures
        setup_done = RECORD_TITLE in outcome.done_steps.get(cluster.context, [])
        if setup_done or (cluster.context in plan.unchanged and not failed):
            d = desired[cluster.context]
            ws.state.record(cluster, d.fingerprint, serves_remotes=d.member.exposes_istiod)
        elif cluster.context not in plan.unchanged and not ws.state.has(cluster.context):
            ws.state.record(cluster, None)  # touched: teardown must know it even if set-up failed
    for gone in plan.removals:
        if gone.context not in outcome.failures:
            ws.state.forget(gone.context)
    ws.state.save(ws.topology.mesh_id)


def deletion_question(plan: ApplyPlan) -> str:
    """The confirmation names what is listed above it, and only that."""
    if any(plan.replacements.values()):
        return "Replace or remove what is listed above?"
    things = [what for what, present in (("the clusters" if len(plan.removals) > 1 else "the cluster", plan.removals),
                                         ("the remote secrets", any(plan.prunes.values()))) if present]
    return f"Remove {' and '.join(things) or 'what is'} listed above?"


def _describe_deletions(plan: ApplyPlan, reporter: Reporter) -> None:
    for gone in plan.removals:
        what = "uninstall Istio and delete istio-system" if gone.reachable else "unreachable: only its secrets are removed"
        reporter.info(f"cluster {gone.cluster_name} (context {gone.context}) left topology.yaml: {what}")
    for context, names in plan.prunes.items():
        reporter.info(f"{context}: delete remote secrets it no longer needs (of clusters no longer in the mesh, "
                      f"or held by a remote): {', '.join(names)}")
    for context, what in plan.replacements.items():
        for line in what:
            reporter.info(f"{context} replaces: {line}")
