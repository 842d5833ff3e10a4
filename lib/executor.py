"""Runs a plan: each cluster's steps in order, clusters in parallel wherever dependencies allow.

A step may wait for a step of another cluster (``Step.after``). A cluster whose step fails stops there;
a step that requires it makes its own cluster sit the run out, with that reason; the others go on.
Ctrl-C stops starting new steps, ends the running commands and still reports what was done.
"""
from __future__ import annotations

import signal
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from .errors import RERUN_HINT, CommandFailed, Interrupted, MeshError
from .fsutil import write_atomic
from .reporter import Reporter
from .runner import Command, Runner

if TYPE_CHECKING:
    from .config import Cluster


@dataclass(frozen=True)
class After:
    """A dependency on another cluster's step, named by its key. ``required``: the step cannot run
    unless that one succeeded; otherwise it only waits for that one to end, whatever the outcome.
    A dependency on a step the plan does not hold is met (there is nothing to wait for)."""

    cluster: str
    key: str
    required: bool = True


@dataclass
class Step:
    """One unit of work on one cluster. ``commands`` are what a dry-run shows and, with no
    ``action``, what runs; ``files`` are written (atomically) before the commands, or, with ``prepare``,
    what it returns when the step starts (files that depend on what earlier steps found; ``files`` is then
    what a dry run shows). ``key`` names the step for dependencies (default: its title); ``after`` lists
    the steps of other clusters it waits for.
    ``done`` is what the cluster's result says once the step ran ("installed"; empty for bookkeeping);
    an action may return a more exact one. ``change`` is the step's line in a plan, diff-like
    ("+ Istio", "~ ...", "- ..."), with ``details`` under it; "" marks bookkeeping (shown with the
    commands only), None shows the title."""

    title: str
    commands: list[Command] = field(default_factory=list)
    files: list[tuple[Path, str]] = field(default_factory=list)
    action: Callable[["RunContext"], str | None] | None = None
    note: str = ""
    done: str = ""
    change: str | None = None
    details: list[str] = field(default_factory=list)
    key: str = ""
    after: list[After] = field(default_factory=list)
    prepare: Callable[["RunContext"], list[tuple[Path, str]]] | None = None

    def __post_init__(self) -> None:
        self.key = self.key or self.title


@dataclass
class Phase:
    name: str
    steps: dict[str, list[Step]] = field(default_factory=dict)  # cluster key -> steps

    def add(self, cluster: str, step: Step) -> None:
        self.steps.setdefault(cluster, []).append(step)

    def __bool__(self) -> bool:
        return any(self.steps.values())


@dataclass
class RunContext:
    runner: Runner
    reporter: Reporter
    cluster: str
    shared: dict
    lock: threading.Lock
    cancelled: threading.Event

    def run(self, command: Command):
        if self.cancelled.is_set():
            raise Interrupted()
        return self.runner.run(command)


@dataclass
class Outcome:
    failures: dict[str, MeshError] = field(default_factory=dict)
    done_steps: dict[str, list[str]] = field(default_factory=dict)
    interrupted: bool = False

    @property
    def ok(self) -> bool:
        return not self.failures and not self.interrupted


class Executor:
    def __init__(self, runner: Runner, reporter: Reporter, parallel: int):
        self.runner = runner
        self.reporter = reporter
        self.parallel = max(1, parallel)
        self.shared: dict = {}
        self.lock = threading.Lock()
        self.cancelled = threading.Event()
        self.outcome = Outcome()

    def run_phases(self, phases: list[Phase]) -> Outcome:
        """Phases one after the other: every cluster ends a phase before any starts the next."""
        for phase in phases:
            if self.cancelled.is_set():
                break
            self.run_phase(phase)
        return self.outcome

    def run_phase(self, phase: Phase) -> None:
        if any(phase.steps.values()):
            self.reporter.phase(phase.name)
        self.run_steps(phase.steps, phase.name)

    def run_plan(self, phases: list[Phase]) -> Outcome:
        """Phases as one graph: each cluster's steps in phase order, and no wait between clusters other
        than the steps' own dependencies."""
        chains: dict[str, list[Step]] = {}
        for phase in phases:
            for cluster, steps in phase.steps.items():
                chains.setdefault(cluster, []).extend(steps)
        if any(chains.values()):  # the live table's header names what runs now, not the last read
            self.reporter.phase(" → ".join(phase.name for phase in phases if phase))
        self.run_steps(chains, "run")
        return self.outcome

    def run_steps(self, chains: dict[str, list[Step]], name: str) -> None:
        """Each cluster's chain in order, at most ``parallel`` steps at once, a step starting as soon as its
        cluster's previous step and its dependencies allow."""
        chains = {c: list(s) for c, s in chains.items() if s and c not in self.outcome.failures}
        if not chains:
            return
        planned = {(c, s.key) for c, steps in chains.items() for s in steps}
        done: set[tuple[str, str]] = set()
        position = {c: 0 for c in chains}
        running: dict[Future, str] = {}
        pool = ThreadPoolExecutor(max_workers=min(self.parallel, len(chains)), thread_name_prefix="cluster")

        def ended(cluster: str, key: str) -> bool:
            """That step will not run (any more): it is done, its cluster stopped, or the plan lacks it."""
            return (cluster, key) in done or (cluster, key) not in planned or cluster in self.outcome.failures

        def schedule() -> None:
            for cluster, steps in chains.items():
                if len(running) >= self.parallel:
                    return
                if cluster in running.values() or cluster in self.outcome.failures or position[cluster] >= len(steps):
                    continue
                step = steps[position[cluster]]
                if not all(ended(a.cluster, a.key) for a in step.after):
                    continue
                a = _first_blocking(step, planned, done)
                if a is not None:
                    self._fail(cluster, step, MeshError(
                        f"sits this run out: it needs {a.cluster} to {a.key}, which did not happen",
                        hint=f"fix {a.cluster} first (see its failure), then {RERUN_HINT}"), 0.0)
                    continue
                running[pool.submit(self._run_step, cluster, step)] = cluster

        try:
            schedule()
            while running:
                # A short timeout keeps the main thread responsive to Ctrl-C.
                finished, _ = wait(list(running), timeout=0.2, return_when=FIRST_COMPLETED)
                _record_finished(finished, running, chains, position, done)
                if self.cancelled.is_set():
                    continue
                schedule()
                self._report_idle(chains, position, running, ended)
            self._fail_stuck(chains, position)
        except KeyboardInterrupt:
            self._stop_interrupted(chains, position, running, pool)
            return
        pool.shutdown(wait=True)

    def _report_idle(self, chains: dict[str, list[Step]], position: dict[str, int], running: dict[Future, str],
                     ended: Callable[[str, str], bool]) -> None:
        """The live table's line of each cluster that runs nothing now."""
        for cluster, steps in chains.items():
            if cluster not in running.values() and cluster not in self.outcome.failures:
                self.reporter.idle(cluster, self._waiting_for(steps, position[cluster], ended))

    def _fail_stuck(self, chains: dict[str, list[Step]], position: dict[str, int]) -> None:
        """Clusters with steps left once nothing runs: only a plan whose dependencies form a cycle gets here."""
        stuck = [c for c, steps in chains.items() if position[c] < len(steps) and c not in self.outcome.failures]
        for cluster in stuck:
            self._fail(cluster, chains[cluster][position[cluster]], MeshError(
                "internal error: this step waits for a step that waits for it",
                hint="re-run with --debug and report this"), 0.0)

    def _stop_interrupted(self, chains: dict[str, list[Step]], position: dict[str, int],
                          running: dict[Future, str], pool: ThreadPoolExecutor) -> None:
        """Ctrl-C: no step starts any more; each cluster with steps left says which one did not start."""
        self.interrupt()
        pool.shutdown(wait=True, cancel_futures=True)
        for future, cluster in running.items():  # a step that ran to its end counts as done
            if not future.cancelled() and future.result():
                position[cluster] += 1
        for cluster, steps in chains.items():
            if cluster not in self.outcome.failures and position[cluster] < len(steps):
                # Before its first step, or between two: name the step that did not start.
                where = "it started" if position[cluster] == 0 else steps[position[cluster]].title
                self.outcome.failures[cluster] = Interrupted(f"interrupted before {where}")
                self.reporter.finish_cluster(cluster, False, f"interrupted before {where}", interrupted=True)

    def _waiting_for(self, steps: list[Step], position: int, ended: Callable[[str, str], bool]) -> str:
        """What a cluster that runs nothing now waits for, in words true of it."""
        if position >= len(steps):
            return "done here"
        pending = [a for a in steps[position].after if not ended(a.cluster, a.key)]
        if pending:
            return f"waiting for {pending[0].cluster} ({pending[0].key})"
        return f"queued (--parallel {self.parallel})"

    def fail_before_start(self, cluster: str, step: str, exc: MeshError) -> None:
        """Mark a cluster failed before the run (e.g. unreachable), so it sits out every phase."""
        self._fail(cluster, Step(step), exc, 0.0)

    def interrupt(self) -> None:
        self.outcome.interrupted = True
        self.cancelled.set()
        stop = getattr(self.runner, "terminate_all", None)
        if stop:
            stop()

    def _run_step(self, cluster: str, step: Step) -> bool:
        ctx = RunContext(self.runner, self.reporter, cluster, self.shared, self.lock, self.cancelled)
        if self.cancelled.is_set():
            self._fail(cluster, step, Interrupted(), 0.0)
            return False
        self.reporter.step(cluster, step.title)
        start = time.monotonic()
        done = step.done
        try:
            for path, content in (step.prepare(ctx) if step.prepare else step.files):
                write_atomic(path, content)
            if step.action:
                done = step.action(ctx) or done
            else:
                for command in step.commands:
                    ctx.run(command)
        except MeshError as exc:
            if isinstance(exc, CommandFailed) and (self.cancelled.is_set() or _ended_by_ctrl_c(exc)):
                exc = Interrupted()
            self._fail(cluster, step, exc, time.monotonic() - start)
            return False
        except Exception as exc:  # a bug must not take the other clusters down with it
            self._fail(cluster, step, MeshError(f"unexpected error: {exc!r}",
                                                hint="re-run with --debug and report this"),
                       time.monotonic() - start)
            return False
        self.reporter.step_done(cluster, step.title, True, time.monotonic() - start, done=done)
        with self.lock:
            self.outcome.done_steps.setdefault(cluster, []).append(step.title)
        return True

    def _fail(self, cluster: str, step: Step, exc: MeshError, seconds: float) -> None:
        exc.step = step.title  # type: ignore[attr-defined]
        with self.lock:
            self.outcome.failures[cluster] = exc
        self.reporter.step_done(cluster, step.title, False, seconds, detail=exc.message.splitlines()[0],
                                interrupted=isinstance(exc, Interrupted))


def _ended_by_ctrl_c(exc: CommandFailed) -> bool:
    """The terminal's SIGINT ended the command (kubectl, istioctl and make die of it): the user pressed Ctrl-C,
    which the main thread may not have seen yet when this thread sees the command fail."""
    return exc.exit_code_of_command == -signal.SIGINT


class Unread(MeshError):
    """A read that failed: its step is reported failed (not ok), and ``value`` stands for the cluster in what
    the reads return (e.g. an Observed carrying the error)."""

    def __init__(self, message: str, value: object):
        super().__init__(message)
        self.value = value


def read_clusters(clusters: list[Cluster], runner, reporter: Reporter, parallel: int, title: str,
                  read: Callable[[RunContext, Cluster], object]) -> dict[str, object]:
    """``read`` on every cluster, in parallel: context -> what it returned (a failed read: its Unread's value)."""
    def step_for(cluster: Cluster) -> Step:
        def action(ctx: RunContext) -> None:
            try:
                value = read(ctx, cluster)
            except Unread as exc:
                keep(ctx, exc.value)
                if isinstance(exc.__cause__, CommandFailed):
                    raise exc.__cause__ from None  # the step tells a Ctrl-C from a failure by how kubectl ended
                raise
            keep(ctx, value)

        def keep(ctx: RunContext, value: object) -> None:
            with ctx.lock:
                ctx.shared.setdefault("read", {})[cluster.context] = value

        return Step(title, action=action)

    phase = Phase(title)
    for cluster in clusters:
        phase.add(cluster.context, step_for(cluster))
    executor = Executor(runner, reporter, parallel)
    plural = "s" * (len(clusters) != 1)
    with reporter.activity(f"{title} ({len(clusters)} cluster{plural}, {min(parallel, len(clusters))} at a time) ..."):
        executor.run_phase(phase)
    if executor.outcome.interrupted:
        raise KeyboardInterrupt
    return executor.shared.get("read", {})


def _first_blocking(step: Step, planned: set[tuple[str, str]], done: set[tuple[str, str]]):
    """The first step this one requires that was planned and did not happen (None: nothing blocks it)."""
    blocked = [a for a in step.after if a.required and (a.cluster, a.key) in planned
               and (a.cluster, a.key) not in done]
    return blocked[0] if blocked else None


def _record_finished(finished, running: dict[Future, str], chains: dict[str, list[Step]], position: dict[str, int],
                     done: set[tuple[str, str]]) -> None:
    """Steps that ended: a successful one is done, and its cluster moves on to its next step."""
    for future in finished:
        cluster = running.pop(future)
        step = chains[cluster][position[cluster]]
        if future.result():
            done.add((cluster, step.key))
            position[cluster] += 1
