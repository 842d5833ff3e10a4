"""Everything setup-mesh prints goes through one Reporter (rich).

On a terminal, progress is a live table with a row per cluster; otherwise (CI logs, pipes) it is
plain timestamped lines. Text is redacted before it is printed.
"""
from __future__ import annotations

import datetime as dt
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterator

from rich.console import Console, Group
from rich.live import Live
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from .errors import CommandFailed, MeshError
from .redact import redact
from .runner import Result
from .wrapping import fit


@dataclass
class ClusterRow:
    name: str
    network: str = ""
    step: str = "waiting"
    started: float = field(default_factory=time.monotonic)
    step_started: float = field(default_factory=time.monotonic)
    finished: float | None = None
    ok: bool | None = None  # None while running
    idle: bool = False  # done with its steps in this phase, waiting for the others
    detail: str = ""  # an explicit result, or what failed
    interrupted: bool = False
    done: list[str] = field(default_factory=list)  # what its finished steps did, in order

    @property
    def elapsed(self) -> float:
        return (self.finished or time.monotonic()) - self.started

    @property
    def result(self) -> str:
        """What was done to the cluster, in words: unchanged only when nothing that changes it ran."""
        did = ", ".join(dict.fromkeys(d for d in self.done if d))
        if self.ok is None:
            return "not finished" + (f" ({did})" if did else "")
        if not self.ok:
            what = "interrupted" if self.interrupted else "failed"
            return f"{what}: {self.detail}" + (f" (done: {did})" if did else "")
        return self.detail or did or "unchanged"


class Reporter:
    def __init__(self, console: Console | None = None, err_console: Console | None = None,
                 quiet: bool = False, verbose: bool = False):
        self.console = console or Console(highlight=False, soft_wrap=True)
        self.err = err_console or Console(stderr=True, highlight=False, soft_wrap=True)
        self.quiet = quiet
        self.verbose = verbose
        self.rows: dict[str, ClusterRow] = {}
        self.warnings: list[str] = []
        self.phase_text = ""
        self._lock = threading.Lock()
        self._live: Live | None = None

    # --- plain messages -------------------------------------------------------------------
    def _print(self, text: str, style: str | None = None, stderr: bool = False) -> None:
        text = escape(redact(text))
        with self._lock:
            target = self.err if stderr else (self._live.console if self._live else self.console)
            target.print(text, style=style)

    def info(self, text: str) -> None:
        if not self.quiet:
            self._print(text)

    def notice(self, text: str) -> None:
        """Printed also with -q: the result of a run that has nothing to do yet, and why."""
        self._print(text)

    def success(self, text: str) -> None:
        if not self.quiet:
            self._print(text, style="green")

    def warn(self, text: str) -> None:
        """Printed at once, counted in the summary, and repeated after its table."""
        with self._lock:
            if text not in self.warnings:
                self.warnings.append(text)
        self._print(fit(self.err, text, "warning: "), style="yellow", stderr=True)

    def error(self, exc: MeshError) -> None:
        text = fit(self.err, exc.message, "error: ")
        if exc.hint:
            text += "\n" + fit(self.err, exc.hint, "hint: ")
        with self._lock:
            self.err.print(escape(redact(text)), style="red")

    @contextmanager
    def activity(self, text: str) -> Iterator[None]:
        """A wait with no live table on screen: on a terminal, a transient spinner on stderr naming what it
        waits for (gone once the wait ends, so it never mixes with the output, JSON included)."""
        if self._live is not None or not self.err.is_terminal:
            yield
            return
        with self.err.status(escape(text), spinner="dots"):
            yield

    @contextmanager
    def transfer(self, text: str, total: int | None) -> Iterator[Callable[[int], None]]:
        """A download: on a terminal, a transient progress bar on stderr (bytes, speed, time left; a spinner
        when the size is unknown); elsewhere nothing. Yields ``advance(bytes)``."""
        if self._live is not None or not self.err.is_terminal or self.quiet:
            yield lambda _n: None
            return
        # Imported here: only a download on a terminal shows a bar, and rich.progress is a tenth of start-up.
        from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn,
                                   TransferSpeedColumn)

        columns = [TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                   TimeRemainingColumn()]
        with Progress(*columns, console=self.err, transient=True) as progress:
            task = progress.add_task(escape(text), total=total)
            yield lambda n: progress.advance(task, n)

    def command(self, result: Result) -> None:
        """With -v, each finished command: pasteable argv, exit code, time."""
        if not self.verbose:
            return
        state = "timed out" if result.timed_out else f"exit {result.exit_code}"
        where = f"[{result.command.context}] " if result.command.context else ""
        self._print(f"  $ {where}{result.command.pasteable()}  ({state}, {result.duration:.2f}s)", style="dim")

    # --- per-cluster progress -------------------------------------------------------------
    def start_progress(self, clusters: list[tuple[str, str]]) -> None:
        """The rows are these clusters: a run that read every cluster and then works on a few shows those."""
        self.rows = {name: ClusterRow(name, network) for name, network in clusters}
        if self.console.is_terminal and not self.quiet:
            self._live = Live(self._table(), console=self.console, refresh_per_second=8, transient=True,
                              get_renderable=self._table)
            self._live.start()

    def stop_progress(self) -> None:
        if self._live:
            self._live.stop()
            self._live = None

    def phase(self, name: str, position: str = "") -> None:
        """A phase starts; clusters with nothing to do in it say so instead of showing a stale step."""
        with self._lock:
            self.phase_text = f"phase {position}: {name}" if position else name
            for row in self.rows.values():
                if row.ok is None:
                    row.step, row.idle = "—", True
        if not self._live and not self.quiet and position:
            self._print(f"{dt.datetime.now():%H:%M:%S} {self.phase_text}")

    def step(self, cluster: str, step: str) -> None:
        with self._lock:
            row = self.rows.setdefault(cluster, ClusterRow(cluster))
            row.step, row.idle, row.step_started = step, False, time.monotonic()
        if not self._live and not self.quiet:
            self._line(cluster, f"{step} ...")

    def step_done(self, cluster: str, step: str, ok: bool, seconds: float, detail: str = "", done: str = "",
                  interrupted: bool = False) -> None:
        if not self._live and not self.quiet and (ok or not self._failed_at(cluster, step)):
            mark = "ok" if ok else ("interrupted" if interrupted else "FAILED")
            self._line(cluster, f"{step}: {mark} ({seconds:.1f}s){' - ' + detail if detail else ''}")
        if ok:
            with self._lock:
                self.rows.setdefault(cluster, ClusterRow(cluster)).done.append(done)
        else:
            self.finish_cluster(cluster, False, step, interrupted=interrupted)

    def _failed_at(self, cluster: str, step: str) -> bool:
        """The cluster's row already failed at this step (a failed read, then the cluster sitting the run out
        for it): said once."""
        with self._lock:
            row = self.rows.get(cluster)
            return row is not None and row.ok is False and row.detail == step

    def idle(self, cluster: str, why: str) -> None:
        """The cluster runs no step now: ``why`` says what it waits for (or that it is done here)."""
        with self._lock:
            row = self.rows.setdefault(cluster, ClusterRow(cluster))
            if row.ok is None and (not row.idle or row.step != why):
                row.step, row.idle, row.step_started = why, True, time.monotonic()

    def finish_cluster(self, cluster: str, ok: bool, detail: str = "", interrupted: bool = False) -> None:
        """``detail``: for a failure, the step that failed; for a success, a result that replaces the
        list of what was done (e.g. "removed")."""
        with self._lock:
            row = self.rows.setdefault(cluster, ClusterRow(cluster))
            if row.finished is None or (row.ok and not ok):
                row.finished = time.monotonic()
                row.ok = ok
                row.detail = detail
                row.interrupted = interrupted
                row.step = "done" if ok else row.step

    def _line(self, cluster: str, text: str) -> None:
        stamp = dt.datetime.now().strftime("%H:%M:%S")
        self._print(f"{stamp} {cluster}: {text}")

    def _table(self) -> Group:
        """The live view: the phase, where each cluster is, and how long its current step has taken."""
        table = Table(box=None, show_header=True, header_style="bold", pad_edge=False)
        table.add_column("cluster", no_wrap=True)
        if self.console.width >= 100:
            table.add_column("network", no_wrap=True)
        table.add_column("step", no_wrap=True, overflow="ellipsis", ratio=1)
        table.add_column("time", justify="right", no_wrap=True)
        table.add_column("", no_wrap=True)
        now = time.monotonic()
        for row in self.rows.values():
            if row.ok is None:
                mark = "…"
                step = f"[dim]{escape(row.step)}[/]" if row.idle else escape(row.step)
                spent = "" if row.idle else f"{now - row.step_started:.1f}s"
            else:
                mark = "[green]✓[/]" if row.ok else ("[yellow]■[/]" if row.interrupted else "[red]✗[/]")
                step = escape(row.result)
                spent = f"{row.elapsed:.1f}s"
            cells = [escape(row.name)] + ([escape(row.network)] if self.console.width >= 100 else [])
            table.add_row(*cells, step, spent, mark)
        return Group(Text(self.phase_text, style="bold", no_wrap=True, overflow="ellipsis"), table)

    # --- end of a run ---------------------------------------------------------------------
    def summary(self, title: str, failures: dict[str, CommandFailed | MeshError], log_path: str | None) -> None:
        """The result table (also with -q), what failed with its hint, and the warnings again (not with
        -q, which printed each once): a run that status would call unhealthy does not end in plain green."""
        counts = f"{len(self.warnings)} warning{'s' * (len(self.warnings) != 1)}" if self.warnings else ""
        style = "red" if failures else ("yellow" if self.warnings else "green")
        heading = f"[{style}]{escape(title)}[/]" + (f" ({counts})" if counts else "")
        wide = self.console.width >= 100
        table = Table(box=None, header_style="bold", pad_edge=False)
        table.add_column("cluster", no_wrap=True)
        if wide:
            table.add_column("network", no_wrap=True)
        table.add_column("result", ratio=1)  # words: it may wrap between them, never inside one
        table.add_column("time", justify="right", no_wrap=True)
        for row in self.rows.values():
            if row.ok is None:
                result = f"[yellow]{escape(row.result)}[/]"
            elif row.ok:
                result = f"[green]{escape(row.result)}[/]"
            else:
                result = f"[{'yellow' if row.interrupted else 'red'}]{escape(row.result)}[/]"
            cells = [escape(row.name)] + ([escape(row.network)] if wide else [])
            table.add_row(*cells, result, f"{row.elapsed:.1f}s")
        with self._lock:
            self.console.print(heading)
            self.console.print(table)
        for cluster, exc in failures.items():
            step = getattr(exc, "step", None)
            self._print(fit(self.console, exc.message, f"{cluster}: {step + ': ' if step else ''}"),
                        style="red")
            if exc.hint:
                self._print(fit(self.console, exc.hint, "  hint: "))
        if not self.quiet:  # -q: each warning was printed once, when it was given
            for text in self.warnings:
                self._print(fit(self.console, text, "warning: "), style="yellow")
        if failures and log_path:
            self._print(f"run log: {log_path}")
