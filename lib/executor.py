"""Runs a plan: phases in order, clusters in parallel inside a phase, each cluster's steps in order.

A cluster whose step fails stops there and sits out the later phases; the other clusters go on.
Ctrl-C stops starting new steps, ends the running commands and still reports what was done.
"""
from __future__ import annotations

import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .errors import CommandFailed, MeshError
from .fsutil import write_atomic
from .reporter import Reporter
from .runner import Command, Runner


@dataclass
class Step:
    """One unit of work on one cluster. ``commands`` are what a dry-run shows and, with no
    ``action``, what runs; ``files`` are written (atomically) before the commands."""

    title: str
    commands: list[Command] = field(default_factory=list)
    files: list[tuple[Path, str]] = field(default_factory=list)
    action: Callable[["RunContext"], None] | None = None
    note: str = ""


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


RERUN_HINT = "run the same command again: it picks up where this one stopped"


class Interrupted(MeshError):
    def __init__(self) -> None:
        super().__init__("interrupted before this step finished", hint=RERUN_HINT)


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
        for phase in phases:
            if self.cancelled.is_set():
                break
            self.run_phase(phase)
        return self.outcome

    def run_phase(self, phase: Phase) -> None:
        work = {c: s for c, s in phase.steps.items() if s and c not in self.outcome.failures}
        if not work:
            return
        pool = ThreadPoolExecutor(max_workers=min(self.parallel, len(work)), thread_name_prefix="cluster")
        futures: dict[Future, str] = {pool.submit(self._run_cluster, c, s): c for c, s in work.items()}
        pending = set(futures)
        try:
            while pending:
                # A short timeout keeps the main thread responsive to Ctrl-C.
                _, pending = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
        except KeyboardInterrupt:
            self.interrupt()
            pool.shutdown(wait=True, cancel_futures=True)
            for future, cluster in futures.items():
                if future.cancelled() and cluster not in self.outcome.failures:
                    self.outcome.failures[cluster] = Interrupted()
                    self.reporter.finish_cluster(cluster, False, f"{phase.name}: interrupted")
            return
        pool.shutdown(wait=True)

    def fail_before_start(self, cluster: str, step: str, exc: MeshError) -> None:
        """Mark a cluster failed before the run (e.g. unreachable), so it sits out every phase."""
        self._fail(cluster, Step(step), exc, 0.0)

    def interrupt(self) -> None:
        self.outcome.interrupted = True
        self.cancelled.set()
        stop = getattr(self.runner, "terminate_all", None)
        if stop:
            stop()

    def _run_cluster(self, cluster: str, steps: list[Step]) -> None:
        ctx = RunContext(self.runner, self.reporter, cluster, self.shared, self.lock, self.cancelled)
        for step in steps:
            if self.cancelled.is_set():
                self._fail(cluster, step, Interrupted(), 0.0)
                return
            self.reporter.step(cluster, step.title)
            start = time.monotonic()
            try:
                for path, content in step.files:
                    write_atomic(path, content)
                if step.action:
                    step.action(ctx)
                else:
                    for command in step.commands:
                        ctx.run(command)
            except MeshError as exc:
                if self.cancelled.is_set() and isinstance(exc, CommandFailed):
                    exc = Interrupted()
                self._fail(cluster, step, exc, time.monotonic() - start)
                return
            except Exception as exc:  # a bug must not take the other clusters down with it
                self._fail(cluster, step, MeshError(f"unexpected error: {exc!r}",
                                                    hint="re-run with --debug and report this"),
                           time.monotonic() - start)
                return
            self.reporter.step_done(cluster, step.title, True, time.monotonic() - start)
            self.outcome.done_steps.setdefault(cluster, []).append(step.title)

    def _fail(self, cluster: str, step: Step, exc: MeshError, seconds: float) -> None:
        exc.step = step.title  # type: ignore[attr-defined]
        with self.lock:
            self.outcome.failures[cluster] = exc
        self.reporter.step_done(cluster, step.title, False, seconds, detail=exc.message.splitlines()[0])
