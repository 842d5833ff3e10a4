"""rotate-certs --root: the move to a new root in three stages, one per run, without downtime."""
from __future__ import annotations

import dataclasses
import datetime as dt
from dataclasses import dataclass
from pathlib import Path

from . import certs, invocation, carotation
from .cluster import KubeClient
from .driver import Parts, Run, SitOut, drive, rows_of, sit_out
from .planview import print_plan
from .config import MULTIROOT_ENV, Cluster
from .errors import ConfigError, MeshError
from .executor import Executor, Outcome, Phase
from .kube import Observed, Tools, gateway_addresses
from .overlay import control_plane_istiod
from .desired import desired_state
from .plan import RECORD_TITLE, ApplyPlan
from .release import Release
from .workspace import Workspace, find_tools, load_workspace, pinned_release
from .reporter import Reporter
from .runner import ShRunner
from .wrapping import fit
from . import rootstages as stages


def rotate_root(workdir: Path, *, kubeconfig: str | None, istio_dir: str | None, min_wait: dt.timedelta, dry_run: bool,
                parallel: int, timeout: float, runner: ShRunner, reporter: Reporter, yes: bool = False) -> int:
    """One stage of the move to a new root per run; see carotation.decide for when a stage may start."""
    run = Run("rotate-certs", workdir, runner, reporter, parallel, dry_run, yes, title="rotate-certs --root")
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

    log = run.open_log()  # before the reads, so that they are logged
    observed, move, now = _read_and_decide(run, ws, tools, transition, root_info.fingerprint, wait)
    # A remote's install names its primary's gateway address: with the one it has now, its state is
    # the one apply recorded (and the move's istiod setting concerns primaries only).
    addresses = gateway_addresses(observed)
    final = desired_state(topology, ws.base, addresses)
    mv = _Move(run, ws, tools, observed, final)

    if move.kind == "complete":
        return _complete_behind(mv, move)
    former = stages.foreign_start(topology.clusters, observed, workdir, log) if move.kind == "start" else None
    if move.kind == "start" and former is None and ws.contexts_resolved:  # a dry run refuses as the run would
        stages.require_in_step(topology.clusters, observed, workdir, log, again, tools)
    if move.kind == "wait":
        _report_wait(transition, move, wait, now, again, reporter)
        run.close_log()
        return 0

    planned = _planned_stage(move, transition, root_info.fingerprint, now, former)
    targets = [c for c in topology.clusters if c.context in move.behind]
    desired = desired_state(topology, ws.base, addresses, transition=planned)
    current = desired_state(topology, ws.base, addresses, transition=transition) if transition else final
    waiting = stages.left_alone(targets, observed, desired, current, planned, again)
    phase = _stage_phase(mv, targets, desired, release, variables, planned, waiting)
    start = stages.Start(workdir, former, certs.root_ca_command(release or _NO_RELEASE, new_dir, _root_vars(root_info, now)))

    stage = _Stage(mv, move, planned, phase, targets, waiting, desired, start, _completion_text(workdir, planned),
                   wait, again)
    return drive(run, stage.parts())


def _root_vars(root_info: certs.CertInfo, now: dt.datetime) -> dict[str, str]:
    """The new root's name and organisation, as the Makefile takes them."""
    org = root_info.organization
    return {"ROOTCA_CN": carotation.next_root_name(root_info.common_name, now), **({"ROOTCA_ORG": org} if org else {})}


@dataclass
class _Move:
    """What every part of one rotate-certs --root run works with."""
    run: Run
    ws: Workspace
    tools: Tools
    observed: dict[str, Observed]
    final: dict  # each cluster's desired state once the move is complete

    def completion(self, clusters: list[Cluster]) -> Phase:
        return stages.completion_phase(clusters, self.final, self.observed, self.tools, self.ws.workdir)

    def observed_if_read(self) -> dict[str, Observed] | None:
        return self.observed if self.ws.contexts_resolved else None

    def record(self, clusters: list[Cluster], outcome: Outcome, desired: dict) -> None:
        """The clusters whose install was recorded in the run have the state ``desired`` gives them."""
        for cluster in clusters:
            if RECORD_TITLE in outcome.done_steps.get(cluster.context, []):
                d = desired[cluster.context]
                self.ws.state.record(cluster, d.fingerprint, serves_remotes=d.member.exposes_istiod)


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


def _read_and_decide(run: Run, ws: Workspace, tools: Tools, transition: carotation.Transition | None,
                     current_root: str, wait: dt.timedelta) -> tuple[dict[str, Observed], carotation.Move, dt.datetime]:
    """What the clusters hold, the move it allows, and the moment it was decided at; a stage counts only
    once every istiod took it."""
    if not run.dry_run:  # the reads show on the live table, as apply's do
        run.start_progress(rows_of(ws.topology.clusters))
    try:
        client = KubeClient(tools, run.runner, run.reader, run.parallel)
        observed = client.read_state(ws.topology.clusters) if ws.contexts_resolved else {}
        now = carotation.utc_now()
        views = stages.cluster_views(ws.topology.clusters, observed, ws.workdir, transition, current_root)
        move = carotation.decide(transition, views, now, wait)
        if move.kind in ("wait", "advance", "finish"):
            stages.require_istiod_took(ws.topology.clusters, observed, tools, client, transition, run.log,
                                       control_plane_istiod(ws.base))
    finally:
        run.stop_progress()
    return observed, move, now


def _complete_behind(mv: _Move, move: carotation.Move) -> int:
    """An earlier run made the new root the workspace's but did not reach every istiod afterwards."""
    topology, run = mv.ws.topology, mv.run
    targets = [c for c in topology.clusters if c.context in move.behind]
    run.reporter.info(f"the move to the root in certs/ is complete in the workspace; finishing it in "
                      f"{', '.join(move.behind)} (no new transition is started)")
    phase = mv.completion(targets)

    def show() -> int:
        print_plan(ApplyPlan([phase]), topology, mv.observed_if_read(), mv.ws.notes, run.reporter,
                   title="rotate-certs --root plan", command=("rotate-certs", "--root"))
        return 0

    def record(outcome: Outcome) -> None:
        mv.record(targets, outcome, mv.final)
        mv.ws.state.save(topology.mesh_id)

    def report(outcome: Outcome) -> None:
        for cluster in targets:
            if cluster.context not in outcome.failures:
                run.reporter.finish_cluster(cluster.context, True, "new root")

    def ask() -> None:
        run.confirm_plan(ApplyPlan([phase]), topology, f"Complete the move to the new root in {', '.join(move.behind)}?",
                         title="rotate-certs --root", command=("rotate-certs", "--root"))

    return drive(run, Parts(show=show, ask=ask, rows=rows_of(targets),
                            execute=lambda executor: executor.run_phases([phase]), record=record, report=report))


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


def _stage_phase(mv: _Move, targets: list[Cluster], desired: dict, release: Release | None,
                 variables: dict[str, str], planned: carotation.Transition, waiting: dict[str, MeshError]) -> Phase:
    """The targets' steps to the planned stage, but for those left to apply (``waiting``)."""
    ws = mv.ws
    deployment = control_plane_istiod(ws.base)
    issuer = carotation.issuing_dir(ws.workdir, planned)
    phase = Phase(f"stage {planned.stage} of {carotation.LAST_STAGE}: {carotation.STAGES[planned.stage]}")
    for cluster in targets:
        if cluster.context not in waiting and (mv.observed.get(cluster.context) or Observed()).reachable:
            stages.add_stage_steps(phase, cluster, mv.observed.get(cluster.context) or Observed(),
                                   desired[cluster.context], mv.tools, ws.workdir, issuer, release, variables, planned,
                                   deployment)
    return phase


@dataclass
class _Stage:
    """One stage's parts of the run (lib/driver.py): its steps, then, after the last stage, the move
    completed: the workspace first, then istiod."""
    mv: _Move
    move: carotation.Move
    planned: carotation.Transition
    phase: Phase
    targets: list[Cluster]
    waiting: dict[str, MeshError]  # targets left to apply, with why
    desired: dict
    start: stages.Start
    completes: str  # what completing the move does
    wait: dt.timedelta
    again: str
    complete: bool = False  # the move completed in this run
    backup: Path | None = None  # then: where the old root is kept

    def parts(self) -> Parts:
        move, clusters = self.move, self.mv.ws.topology.clusters
        rows = rows_of([c for c in clusters if c.context in move.behind or c.context in move.unreachable]) \
            if self.targets or move.unreachable else None
        return Parts(show=self.show, ask=self.ask, begin=self.begin, rows=rows, sit_outs=self.sit_outs,
                     execute=self.execute, record=self.record, report=self.report)

    def show(self) -> int:
        move, planned, reporter = self.move, self.planned, self.mv.run.reporter
        reporter.info(_move_text(move, planned))
        if move.kind == "start":
            reporter.info(self.start.plan_text())
        plan = ApplyPlan([self.phase] if move.kind != "finish" else [])
        print_plan(plan, self.mv.ws.topology, self.mv.observed_if_read(), self.mv.ws.notes, reporter,
                   title="rotate-certs --root plan", command=("rotate-certs", "--root"),
                   nothing="no cluster changes in this stage" if move.kind != "finish" else f"then {self.completes}",
                   sitting_out=self.move.unreachable)
        if planned.stage == carotation.LAST_STAGE and move.kind != "finish":
            reporter.info(f"once stage {planned.stage} is in place in every cluster, the same run completes the "
                          f"move: {self.completes}")
        return 0

    def ask(self) -> None:
        reporter = self.mv.run.reporter
        reporter.info(fit(reporter.console, _move_text(self.move, self.planned)))
        if self.phase or self.move.kind == "finish":
            _ask_for_stage(self.mv.run, self.move, self.planned, self.phase, self.mv.ws.topology, self.completes,
                           self.start)

    def begin(self) -> None:
        """A new root made, and the stage recorded: the workspace leads; the clusters follow."""
        run = self.mv.run
        if self.move.kind == "start":
            self.start.run(self.planned, run.runner, run.reporter)
        if self.move.kind in ("start", "advance"):
            carotation.save_transition(run.workdir, self.planned)

    def sit_outs(self) -> list[SitOut]:
        topology = self.mv.ws.topology
        found = [sit_out(self.mv.tools, topology.by_context(context), self.mv.observed[context],
                         f"then run `{self.again}`") for context in self.move.unreachable]
        found.extend(SitOut(context, f"stage {self.planned.stage}", why) for context, why in self.waiting.items())
        return found

    def execute(self, executor: Executor) -> Outcome:
        workdir = self.mv.ws.workdir
        outcome = executor.run_phases([self.phase])
        certs.secure_tree(carotation.next_dir(workdir))
        if outcome.ok and self.planned.stage == carotation.LAST_STAGE:
            # The workspace first: a run cut short after this finds the clusters' records of the move and
            # finishes it there (the "complete" move) instead of starting a new one.
            self.complete = True
            self.backup = carotation.finish_transition(workdir, self.planned)
            outcome = executor.run_phases([self.mv.completion(self.mv.ws.topology.clusters)])
        return outcome

    def record(self, outcome: Outcome) -> None:
        """The stage's installs, then (the outcome holds every phase's steps) the completion's."""
        self.mv.record(self.targets, outcome, self.desired)
        if self.complete:
            self.mv.record(list(self.mv.ws.topology.clusters), outcome, self.mv.final)
        self.mv.ws.state.save(self.mv.ws.topology.mesh_id)

    def report(self, outcome: Outcome) -> None:
        complete = self.complete
        for cluster in self.mv.ws.topology.clusters:
            if cluster.context not in outcome.failures and (cluster in self.targets or complete):
                self.mv.run.reporter.finish_cluster(cluster.context, True,
                                                    f"stage {self.planned.stage}" if not complete else "new root")
        _report_stage(self.planned, outcome.ok, self.backup, self.wait, self.again, self.mv.run.reporter)


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


def _ask_for_stage(run: Run, move: carotation.Move, planned: carotation.Transition, phase: Phase, topology,
                   completes: str, start: stages.Start) -> None:
    """A stage changes every cluster's cacerts (stage 1 reinstalls istiod first): the plan, then the question."""
    if move.kind == "start":
        run.reporter.info(start.question_text())
    then = (f"once stage {planned.stage} is in place in every cluster, the same run completes the move: {completes}"
            if planned.stage == carotation.LAST_STAGE and move.kind != "finish" else "")
    run.confirm_plan(ApplyPlan([phase] if move.kind != "finish" else []), topology,
                     _stage_question(move, planned, phase), title="rotate-certs --root",
                     command=("rotate-certs", "--root"), nothing=f"then {completes}", then=then)


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

