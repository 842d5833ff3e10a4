"""rotate-certs --root: the move to a new root in three stages, one per run, without downtime."""
from __future__ import annotations

import dataclasses
import datetime as dt
from dataclasses import dataclass
from pathlib import Path

from . import certs, invocation, carotation
from .cluster import KubeClient
from .commands import confirm_plan, finish_run, open_log, sit_out
from .planview import print_plan
from .config import MULTIROOT_ENV, Cluster
from .errors import ConfigError, MeshError
from .executor import Executor, Phase
from .kube import Observed, Tools, gateway_addresses
from .overlay import control_plane_istiod
from .desired import desired_state
from .plan import RECORD_TITLE, ApplyPlan
from .release import Release
from .workspace import Workspace, find_tools, load_workspace, pinned_release
from .reporter import Reporter
from .runlog import RunLog
from .runner import ShRunner
from .wrapping import fit
from . import rootstages as stages


def rotate_root(workdir: Path, *, kubeconfig: str | None, istio_dir: str | None, min_wait: dt.timedelta, dry_run: bool,
                parallel: int, timeout: float, runner: ShRunner, reporter: Reporter, yes: bool = False) -> int:
    """One stage of the move to a new root per run; see carotation.decide for when a stage may start."""
    wait = min_wait
    again = _again_command(min_wait)
    if not dry_run:
        carotation.resume_finish(workdir)
    ws = load_workspace(workdir, kubeconfig, lenient=dry_run)
    topology = ws.topology
    new_dir = carotation.next_dir(workdir)
    root_info = _workspace_root(certs.certs_dir(workdir))
    transition = carotation.load_transition(workdir)
    pinned = pinned_release(ws.topology, workdir, istio_dir)
    istio_dir = str(pinned.root) if pinned else istio_dir  # its certs Makefile too
    tools = find_tools(istio_dir, runner, dry_run, ws.notes, timeout, pinned=pinned)
    release = _makefile_release(istio_dir, ws, dry_run, runner)
    variables = {"INTERMEDIATE_ORG": root_info.organization} if root_info.organization else {}

    log = None if dry_run else open_log(workdir, "rotate-certs", runner)
    observed, move, now = _read_and_decide(ws, tools, transition, root_info.fingerprint, wait, dry_run, log,
                                           runner, reporter, parallel)
    # A remote's install names its primary's gateway address: with the one it has now, its state is
    # the one apply recorded (and the move's istiod setting concerns primaries only).
    addresses = gateway_addresses(observed)
    final = desired_state(topology, ws.base, addresses)
    run = _Run(ws, tools, observed, final, runner, reporter, parallel, log, dry_run)

    if move.kind == "complete":
        return _complete_behind(run, move, yes)
    former = stages.foreign_start(topology.clusters, observed, workdir, log) if move.kind == "start" else None
    if move.kind == "start" and former is None and not dry_run:
        stages.require_in_step(topology.clusters, observed, workdir, log, again)
    if move.kind == "wait":
        _report_wait(transition, move, wait, now, again, reporter)
        if log:
            log.close()
        return 0

    planned = _planned_stage(move, transition, root_info.fingerprint, now, former)
    targets = [c for c in topology.clusters if c.context in move.behind]
    desired = desired_state(topology, ws.base, addresses, transition=planned)
    phase, not_set_up = _stage_phase(run, targets, desired, release, variables, planned)
    start = stages.Start(workdir, former, certs.root_ca_command(release or _NO_RELEASE, new_dir, _root_vars(root_info, now)))

    completes = _completion_text(workdir, planned)
    if dry_run:
        _show_stage_plan(run, move, planned, phase, start, completes)
        return 0

    reporter.info(fit(reporter.console, _move_text(move, planned)))
    if phase or move.kind == "finish":
        _ask_for_stage(move, planned, phase, topology, yes, reporter, log, completes, start)
    if move.kind == "start":
        start.run(planned, runner, reporter)
    if move.kind in ("start", "advance"):
        carotation.save_transition(workdir, planned)  # the workspace leads; the clusters follow
    return _run_stage(run, move, planned, phase, targets, not_set_up, desired, wait, again)


def _root_vars(root_info: certs.CertInfo, now: dt.datetime) -> dict[str, str]:
    """The new root's name and organisation, as the Makefile takes them."""
    org = root_info.organization
    return {"ROOTCA_CN": carotation.next_root_name(root_info.common_name, now), **({"ROOTCA_ORG": org} if org else {})}


@dataclass
class _Run:
    """What every part of one rotate-certs --root run works with."""
    ws: Workspace
    tools: Tools
    observed: dict[str, Observed]
    final: dict  # each cluster's desired state once the move is complete
    runner: ShRunner
    reporter: Reporter
    parallel: int
    log: RunLog | None
    dry_run: bool

    def completion(self, clusters: list[Cluster]) -> Phase:
        return stages.completion_phase(clusters, self.final, self.observed, self.tools, self.ws.workdir)

    def observed_if_read(self) -> dict[str, Observed] | None:
        return self.observed if self.ws.contexts_resolved else None


def _workspace_root(cert_dir: Path) -> certs.CertInfo:
    if not ((cert_dir / certs.ROOT_CERT).is_file() and (cert_dir / certs.ROOT_KEY).is_file()):
        raise ConfigError(f"the mesh's root CA is missing ({cert_dir / certs.ROOT_CERT})",
                          hint="restore certs/ from a backup: the clusters trust that root, and a new one is "
                               "introduced only next to it")
    return _read_root(cert_dir / certs.ROOT_CERT)


def _completion_text(workdir: Path, planned: carotation.Transition) -> str:
    """What completing the move does, as the plan and the question name it."""
    if planned.foreign_start:
        return (f"the clusters' former root is dropped (its certificates kept in "
                f"{carotation.backup_dir(workdir, planned.backup_name)}) and istiod drops {MULTIROOT_ENV} "
                f"(reinstalled with apply's overlay)")
    return (f"certs/ becomes the new root (the old one kept in "
            f"{carotation.backup_dir(workdir, planned.backup_name)}) and istiod drops {MULTIROOT_ENV} "
            f"(reinstalled with apply's overlay)")


def _again_command(min_wait: dt.timedelta) -> str:
    """The next run's command carries a --min-wait the user chose, or the pasted hint would refuse for a day."""
    return invocation.command("rotate-certs", "--root", *(
        ["--min-wait", carotation.format_duration(min_wait)] if min_wait != carotation.WORKLOAD_CERT_LIFETIME else []))


def _makefile_release(istio_dir: str | None, ws: Workspace, dry_run: bool, runner: ShRunner) -> Release | None:
    """The Istio release whose certs Makefile makes the new root and intermediates, and make and openssl."""
    from .release import find_release

    try:
        release = find_release(istio_dir, ws.workdir)
    except ConfigError:
        if not dry_run:
            raise
        release = None
        ws.notes.append("no Istio release found: the plan names the Makefile as <istio>/tools/certs/Makefile.selfsigned.mk")
    if not dry_run:
        for tool in ("make", "openssl"):
            runner.require(tool)
    return release


def _read_and_decide(ws: Workspace, tools: Tools, transition: carotation.Transition | None, current_root: str,
                     wait: dt.timedelta, dry_run: bool, log: RunLog | None, runner: ShRunner, reporter: Reporter,
                     parallel: int) -> tuple[dict[str, Observed], carotation.Move, dt.datetime]:
    """What the clusters hold, the move it allows, and the moment it was decided at; a stage counts only
    once every istiod took it."""
    read_reporter = Reporter(quiet=True, err_console=reporter.err) if dry_run else reporter
    if not dry_run:  # the reads show on the live table, as apply's do
        reporter.start_progress([(c.context, c.network) for c in ws.topology.clusters])
    try:
        client = KubeClient(tools, runner, read_reporter, parallel)
        observed = client.read_state(ws.topology.clusters) if ws.contexts_resolved else {}
        now = carotation.utc_now()
        views = stages.cluster_views(ws.topology.clusters, observed, ws.workdir, transition, current_root)
        move = carotation.decide(transition, views, now, wait)
        if move.kind in ("wait", "advance", "finish"):
            stages.require_istiod_took(ws.topology.clusters, observed, tools, client, transition, log,
                                       control_plane_istiod(ws.base))
    finally:
        reporter.stop_progress()
    return observed, move, now


def _complete_behind(run: _Run, move: carotation.Move, yes: bool) -> int:
    """An earlier run made the new root the workspace's but did not reach every istiod afterwards."""
    topology, reporter = run.ws.topology, run.reporter
    targets = [c for c in topology.clusters if c.context in move.behind]
    reporter.info(f"the move to the root in certs/ is complete in the workspace; finishing it in "
                  f"{', '.join(move.behind)} (no new transition is started)")
    phase = run.completion(targets)
    if run.dry_run:
        print_plan(ApplyPlan([phase]), topology, run.observed_if_read(), run.ws.notes, reporter,
                   title="rotate-certs --root plan", command=("rotate-certs", "--root"))
        return 0
    confirm_plan(ApplyPlan([phase]), topology, f"Complete the move to the new root in {', '.join(move.behind)}?",
                 yes, reporter, title="rotate-certs --root", command=("rotate-certs", "--root"), log=run.log)
    executor = Executor(run.runner, reporter, run.parallel)
    reporter.start_progress([(c.context, c.network) for c in targets])
    outcome = executor.run_phases([phase])
    reporter.stop_progress()
    for cluster in targets:
        if RECORD_TITLE in outcome.done_steps.get(cluster.context, []):
            run.ws.state.record(cluster, run.final[cluster.context].fingerprint)
        if cluster.context not in outcome.failures:
            reporter.finish_cluster(cluster.context, True, "new root")
    run.ws.state.save(topology.mesh_id)
    return finish_run("rotate-certs --root", outcome, run.log, reporter)


def _planned_stage(move: carotation.Move, transition: carotation.Transition | None, current_root: str,
                   now: dt.datetime, former: stages.Former | None) -> carotation.Transition:
    """The stage this run brings the clusters to (from the clusters' root, ``former``, to the workspace's)."""
    if move.kind == "start" and former is not None:
        return carotation.Transition(1, former.fingerprint, current_root, carotation.iso(now), foreign_start=True)
    if move.kind == "start":
        return carotation.Transition(1, current_root, "", carotation.iso(now))
    if move.kind == "advance":
        return dataclasses.replace(transition, stage=move.stage)
    return transition


def _stage_phase(run: _Run, targets: list[Cluster], desired: dict, release: Release | None,
                 variables: dict[str, str], planned: carotation.Transition) -> tuple[Phase, list[Cluster]]:
    """The targets' steps to the planned stage, and the targets apply has not set up yet."""
    ws = run.ws
    deployment = control_plane_istiod(ws.base)
    issuer = carotation.issuing_dir(ws.workdir, planned)
    phase = Phase(f"stage {planned.stage} of {carotation.LAST_STAGE}: {carotation.STAGES[planned.stage]}")
    # A cluster apply has not set up yet (added to topology.yaml meanwhile) is apply's to set up: it
    # gets the stage's certificates there, and its gateway and secrets, which this command does not make.
    not_set_up = [c for c in targets if (run.observed.get(c.context) or Observed()).applied is None]
    for cluster in not_set_up:
        ws.notes.append(f"{cluster.context} is not set up yet: apply sets it up with the certificates of stage "
                        f"{planned.stage}")
    for cluster in targets:
        if cluster not in not_set_up:
            stages.add_stage_steps(phase, cluster, run.observed.get(cluster.context) or Observed(),
                                   desired[cluster.context], run.tools, ws.workdir, issuer, release, variables, planned,
                                   deployment)
    return phase, not_set_up


def _show_stage_plan(run: _Run, move: carotation.Move, planned: carotation.Transition, phase: Phase, start: stages.Start,
                     completes: str) -> None:
    reporter = run.reporter
    reporter.info(_move_text(move, planned))
    if move.kind == "start":
        reporter.info(start.plan_text())
    plan = ApplyPlan([phase] if move.kind != "finish" else [])
    print_plan(plan, run.ws.topology, run.observed_if_read(), run.ws.notes, reporter,
               title="rotate-certs --root plan", command=("rotate-certs", "--root"),
               nothing="no cluster changes in this stage" if move.kind != "finish" else f"then {completes}")
    if planned.stage == carotation.LAST_STAGE and move.kind != "finish":
        reporter.info(f"once stage {planned.stage} is in place in every cluster, the same run completes the move: "
                      f"{completes}")


def _run_stage(run: _Run, move: carotation.Move, planned: carotation.Transition, phase: Phase,
               targets: list[Cluster], not_set_up: list[Cluster], desired: dict, wait: dt.timedelta,
               again: str) -> int:
    """The stage's steps, then, after the last stage, the move completed: the workspace first, then istiod."""
    ws, reporter, topology = run.ws, run.reporter, run.ws.topology
    executor = Executor(run.runner, reporter, run.parallel)
    if targets or move.unreachable:
        reporter.start_progress([(c.context, c.network) for c in topology.clusters
                                 if c.context in move.behind or c.context in move.unreachable])
    for context in move.unreachable:
        sit_out(executor, run.tools, topology.by_context(context), run.observed[context], f"then run `{again}`")
    for cluster in not_set_up:
        executor.fail_before_start(cluster.context, f"stage {planned.stage}", MeshError(
            "not set up by apply yet: the move to a new root changes clusters that are part of the mesh",
            hint=f"run `{invocation.command('apply')}` (it gives the cluster the certificates of stage "
                 f"{planned.stage}), then `{again}`"))
    outcome = executor.run_phases([phase])
    certs.secure_tree(carotation.next_dir(ws.workdir))
    for cluster in targets:
        if RECORD_TITLE in outcome.done_steps.get(cluster.context, []):
            ws.state.record(cluster, desired[cluster.context].fingerprint)

    complete = outcome.ok and planned.stage == carotation.LAST_STAGE
    if complete:
        # The workspace first: a run cut short after this finds the clusters' records of the move and
        # finishes it there (the "complete" move above) instead of starting a new one.
        backup = carotation.finish_transition(ws.workdir, planned)
        outcome = executor.run_phases([run.completion(topology.clusters)])
        for cluster in topology.clusters:
            if RECORD_TITLE in outcome.done_steps.get(cluster.context, []):
                ws.state.record(cluster, run.final[cluster.context].fingerprint)
    reporter.stop_progress()
    ws.state.save(topology.mesh_id)
    for cluster in topology.clusters:
        if cluster.context not in outcome.failures and (cluster in targets or complete):
            reporter.finish_cluster(cluster.context, True, f"stage {planned.stage}" if not complete else "new root")
    _report_stage(planned, outcome.ok, backup if complete else None, wait, again, reporter)
    return finish_run("rotate-certs --root", outcome, run.log, reporter)


def _report_wait(transition: carotation.Transition, move: carotation.Move, wait: dt.timedelta, now: dt.datetime,
                 again: str, reporter: Reporter) -> None:
    since = move.ready_at - wait
    reporter.info(f"stage {transition.stage} of {carotation.LAST_STAGE} ({carotation.STAGES[transition.stage]}) "
                  f"is in place in every cluster since {carotation.iso(since)}")
    reporter.notice(f"stage {transition.stage + 1} ({carotation.STAGES[transition.stage + 1]}) can start at "
                    f"{carotation.iso(move.ready_at)} (in {carotation.describe_wait(move.ready_at - now)}), when "
                    f"every workload has renewed its certificate: run `{again}` then "
                    f"(with --min-wait 0 if every workload has been restarted since)")


def _report_stage(planned: carotation.Transition, ok: bool, backup: Path | None, wait: dt.timedelta, again: str,
                  reporter: Reporter) -> None:
    """Where the move stands after this run: complete (``backup`` holds the old root), or what comes next."""
    if backup is not None and planned.foreign_start:
        reporter.info(f"the mesh runs on this workspace's root (certs/); the clusters' former root certificate is "
                      f"kept in {backup}")
    elif backup is not None:
        reporter.info(f"the mesh runs on the new root: certs/ holds it; the old root, its key and intermediates "
                      f"are kept in {backup}")
    elif ok:
        when = f" in {carotation.describe_wait(wait)} or later" if wait else ""
        reporter.info(f"stage {planned.stage} of {carotation.LAST_STAGE} is in place in every cluster; run "
                      f"`{again}`{when} for stage {planned.stage + 1} ({carotation.STAGES[planned.stage + 1]})")
    else:
        reporter.info(f"stage {planned.stage} is not in place everywhere yet: run `{again}` "
                      f"(it finishes this stage and goes no further)")


_NO_RELEASE = Release(Path("<istio>"))


def _ask_for_stage(move: carotation.Move, planned: carotation.Transition, phase: Phase, topology, yes: bool,
                   reporter: Reporter, log, completes: str, start: stages.Start) -> None:
    """A stage changes every cluster's cacerts (stage 1 reinstalls istiod first): the plan, then the question."""
    if move.kind == "start":
        reporter.info(start.question_text())
    then = (f"once stage {planned.stage} is in place in every cluster, the same run completes the move: {completes}"
            if planned.stage == carotation.LAST_STAGE and move.kind != "finish" else "")
    confirm_plan(ApplyPlan([phase] if move.kind != "finish" else []), topology, _stage_question(move, planned, phase),
                 yes, reporter, title="rotate-certs --root", command=("rotate-certs", "--root"), log=log,
                 nothing=f"then {completes}", then=then)


def _stage_question(move: carotation.Move, planned: carotation.Transition, phase: Phase) -> str:
    if move.kind == "finish":
        return "Complete the move to the new root in every cluster?"
    names = ", ".join(phase.steps)
    first = "Make a new root CA and bring" if move.kind == "start" and not planned.foreign_start else "Bring"
    then = " and complete the move to the new root" if planned.stage == carotation.LAST_STAGE else ""
    return f"{first} {names} to stage {planned.stage} of {carotation.LAST_STAGE}{then}?"


def _read_root(path: Path) -> certs.CertInfo:
    try:
        return certs.read_cert(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read the mesh's root CA {path}: {exc}",
                          hint="restore certs/ from a backup of the workspace") from None


def _move_text(move: carotation.Move, planned: carotation.Transition) -> str:
    stage = f"stage {planned.stage} of {carotation.LAST_STAGE} ({carotation.STAGES[planned.stage]})"
    return {
        "start": (f"starting the move from the clusters' root to this workspace's: {stage}" if planned.foreign_start
                  else f"starting the move to a new root: {stage}"),
        "advance": f"moving on to {stage}",
        "converge": f"bringing {', '.join(move.behind) or 'no reachable cluster'} to {stage}",
        "finish": f"every cluster is at {stage}: completing the transition",
    }[move.kind]

