"""The run skeleton of the commands that change clusters (apply, teardown, rotate-certs).

A ``Run`` carries what one run works with (workspace folder, runner, reporter, the run log once opened);
``drive`` takes the parts a command gives (``Parts``) through one sequence: a dry run shows its plan and
stops there; a run with nothing to change says so and stops; otherwise a refusal stops the run before
anything is touched, the confirmation is asked, the run log is opened (unless the command opened it
before its reads, so that they are logged), progress rows start, clusters that sit this run out are
reported failed, the phases run, what is now true is recorded, each cluster's result is reported, and
the summary gives the exit code. The driver never asks which command it runs: where commands differ,
they give different parts."""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import typer

from .config import Cluster, Topology
from .errors import Cancelled, ConfigError, MeshError
from .executor import Executor, Outcome
from .kube import Observed, Tools
from .names import ISTIO_NAMESPACE
from .plan import ApplyPlan
from .planview import print_changes
from .reporter import Reporter
from .runlog import RunLog
from .runner import ShRunner
from .wrapping import wrap_prose

Rows = list[tuple[str, str]]  # the progress table's rows: (context, network)


def rows_of(clusters: list[Cluster]) -> Rows:
    return [(c.context, c.network) for c in clusters]


@dataclass
class Run:
    """One run of a command: ``command`` names its run log, and its summary ("apply finished") unless
    ``title`` names that ("rotate-certs --root finished", logged as rotate-certs). The program as invoked,
    which hints name, is lib/invocation.py's, set once by the CLI."""
    command: str
    workdir: Path
    runner: ShRunner
    reporter: Reporter
    parallel: int
    dry_run: bool = False
    yes: bool = False
    title: str = ""
    log: RunLog | None = None
    executor: Executor | None = None  # once the run executes; its shared results are the command's to read
    showing_progress: bool = False
    _quiet: Reporter | None = field(default=None, repr=False)

    @property
    def quiet(self) -> Reporter:
        """A reporter that shows nothing on the way: reads whose progress has no row, and a dry run's, whose
        output is the plan alone."""
        if self._quiet is None:
            self._quiet = Reporter(quiet=True, err_console=self.reporter.err)
        return self._quiet

    @property
    def reader(self) -> Reporter:
        """Whom the reads report to: the progress rows, or nobody in a dry run."""
        return self.quiet if self.dry_run else self.reporter

    def open_log(self) -> RunLog | None:
        """The run log, from here on every command the runner runs; a dry run writes nothing, not even a log."""
        if self.dry_run:
            return None
        if self.log is None:
            self.log = RunLog.create(self.workdir, self.command)
            self.runner.listeners.append(self.log.record)
        return self.log

    def close_log(self) -> None:
        if self.log is not None:
            self.log.close()

    def start_progress(self, rows: Rows) -> None:
        """The live table, also before the reads (they show on it) when a command starts it that early."""
        self.reporter.start_progress(rows)
        self.showing_progress = True

    def stop_progress(self) -> None:
        self.reporter.stop_progress()
        self.showing_progress = False

    def confirm(self, question: str) -> None:
        """Asked with the table stopped, so that the driver starts it again for the run."""
        self.stop_progress()
        confirm(question, self.yes, self.reporter)

    def confirm_plan(self, plan: ApplyPlan, topology: Topology, question: str, *, title: str,
                     command: str | tuple[str, ...], nothing: str = "", then: str = "") -> None:
        """What the run will change, per cluster as its dry run shows it (``then``: what follows), and the
        question: -y goes ahead, no terminal without -y refuses."""
        self.stop_progress()
        print_changes(plan, topology, self.reporter, title, command, nothing=nothing)
        if then:
            self.reporter.info(then)
        self.confirm(question)


@dataclass(frozen=True)
class SitOut:
    """A cluster that sits the run out (unreachable, or its primary is): reported failed before the phases
    start, and by a dry run after its plan, whose exit code then says the run would fail."""
    context: str
    step: str  # what it could not do, as its progress row names it
    error: MeshError


def _no_sit_outs() -> list[SitOut]:
    return []


def _nothing_to_begin() -> None:
    return None


def _nothing_to_record(outcome: Outcome) -> None:
    return None


def _code_as_is(code: int, outcome: Outcome) -> int:
    return code


@dataclass
class Parts:
    """What a command gives the driver.

    ``show``: the dry run's output, returning its exit code (it may raise what the run would stop at);
    ``nothing``: what a run that has nothing to change does instead, returning its exit code (no question,
    no run log, no progress), None when it has something to change; ``refusal``: raised before anything
    is touched; ``ask``: what is said and asked before any change (it raises when declined), None to go
    ahead unasked; ``begin``: what the workspace records once confirmed, before any cluster changes, so
    that a run cut short is resumed; ``rows``: the progress rows the run shows (None: the table as it is,
    or none); ``sit_outs``: the clusters that sit the run out, failed before the phases start; ``execute``: the phases;
    ``record``: what is now true, also after a failure; ``report``: each cluster's result; ``after``: what
    follows the summary, from its exit code to the run's."""
    show: Callable[[], int]
    execute: Callable[[Executor], Outcome]
    nothing: Callable[[], int] | None = None
    rows: Rows | None = None
    refusal: MeshError | None = None
    ask: Callable[[], None] | None = None
    begin: Callable[[], None] = _nothing_to_begin
    sit_outs: Callable[[], list[SitOut]] = _no_sit_outs
    record: Callable[[Outcome], None] = _nothing_to_record
    report: Callable[[Outcome], None] = _nothing_to_record
    after: Callable[[int, Outcome], int] = _code_as_is


def drive(run: Run, parts: Parts) -> int:
    """show (dry run) -> nothing to change -> refuse -> confirm -> open the log -> begin -> progress ->
    sit-outs -> phases -> record -> report -> summary and exit code."""
    if run.dry_run:
        return _dry_run(run, parts)
    if parts.nothing is not None:
        return parts.nothing()
    _before_changes(run, parts)
    run.open_log()
    parts.begin()
    # A confirmation stops the table; a command that showed it during its reads keeps it otherwise.
    if parts.rows is not None and not run.showing_progress:
        run.start_progress(parts.rows)
    run.executor = Executor(run.runner, run.reporter, run.parallel)
    for out in parts.sit_outs():
        run.executor.fail_before_start(out.context, out.step, out.error)
    outcome = parts.execute(run.executor)
    run.stop_progress()
    parts.record(outcome)
    parts.report(outcome)
    return parts.after(finish_run(run.title or run.command, outcome, run.log, run.reporter), outcome)


def _dry_run(run: Run, parts: Parts) -> int:
    """The plan, then the clusters that would sit the run out, each with its hint: the run would fail for
    them (exit 1), so the dry run does too."""
    code = parts.show()
    sitting_out = parts.sit_outs()
    for out in sitting_out:
        run.reporter.error(MeshError(f"{out.context} would sit this run out: {out.step}: {out.error.message}",
                                     hint=out.error.hint))
    return 1 if sitting_out else code  # as a run's exit code: a failure comes first


def _before_changes(run: Run, parts: Parts) -> None:
    """The refusal, then the question; either stops the run with nothing changed, and the log closed."""
    try:
        if parts.refusal is not None:
            run.stop_progress()
            raise parts.refusal
        if parts.ask is not None:
            parts.ask()
    except BaseException:
        run.close_log()
        raise


def confirm(question: str, yes: bool, reporter: Reporter) -> None:
    if yes:
        return
    if not sys.stdin.isatty():
        raise ConfigError(f"{question} needs confirmation, and there is no terminal to ask on",
                          hint="re-run with -y to confirm")
    reporter.stop_progress()
    # On a terminal the question is wrapped at words, leaving room for typer's " [y/N]: ".
    prompt = "\n".join(wrap_prose(question, reporter.console.width - len(" [y/N]: "), indent="")) \
        if reporter.console.is_terminal else question
    if not typer.confirm(prompt, default=False):
        raise Cancelled("cancelled at the prompt; nothing was changed")


def check_access(tools: Tools, cluster: Cluster) -> str:
    """The pasteable command that shows whether a cluster can be read."""
    return tools.kubectl_cmd(cluster, "get", "namespace", ISTIO_NAMESPACE).pasteable()


def sit_out(tools: Tools, cluster: Cluster, seen: Observed, then: str) -> SitOut:
    """A cluster that could not be read is reported with the command to check it, and does nothing."""
    return SitOut(cluster.context, "read current state", MeshError(
        f"cannot read the cluster: {seen.error}", hint=f"check access with `{check_access(tools, cluster)}`, {then}"))


def finish_run(name: str, outcome: Outcome, log: RunLog, reporter: Reporter) -> int:
    """The summary table, then the exit code: 0 all done, 1 something failed, 130 interrupted."""
    title = f"{name} interrupted" if outcome.interrupted else (f"{name} finished" if outcome.ok else f"{name} failed")
    reporter.summary(title, outcome.failures, str(log.path))
    log.close()
    if outcome.interrupted:
        return 130
    return 0 if outcome.ok else 1
