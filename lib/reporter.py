"""Everything setup-mesh prints goes through one Reporter (rich).

On a terminal, progress is a live table with a row per cluster; otherwise (CI logs, pipes) it is
plain timestamped lines. Text is redacted before it is printed.
"""
from __future__ import annotations

import datetime as dt
import threading
import time
from dataclasses import dataclass, field

from rich.console import Console
from rich.live import Live
from rich.markup import escape
from rich.table import Table

from .errors import CommandFailed, MeshError
from .redact import redact
from .runner import Result


@dataclass
class ClusterRow:
    name: str
    network: str = ""
    step: str = "waiting"
    started: float = field(default_factory=time.monotonic)
    finished: float | None = None
    ok: bool | None = None  # None while running
    detail: str = ""

    @property
    def elapsed(self) -> float:
        return (self.finished or time.monotonic()) - self.started


class Reporter:
    def __init__(self, console: Console | None = None, err_console: Console | None = None,
                 quiet: bool = False, verbose: bool = False):
        self.console = console or Console(highlight=False, soft_wrap=True)
        self.err = err_console or Console(stderr=True, highlight=False, soft_wrap=True)
        self.quiet = quiet
        self.verbose = verbose
        self.rows: dict[str, ClusterRow] = {}
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

    def success(self, text: str) -> None:
        if not self.quiet:
            self._print(text, style="green")

    def warn(self, text: str) -> None:
        self._print(f"warning: {text}", style="yellow", stderr=True)

    def error(self, exc: MeshError) -> None:
        text = f"error: {exc.message}"
        if exc.hint:
            text += f"\nhint: {exc.hint}"
        with self._lock:
            self.err.print(escape(redact(text)), style="red")

    def command(self, result: Result) -> None:
        """With -v, each finished command: pasteable argv, exit code, time."""
        if not self.verbose:
            return
        state = "timed out" if result.timed_out else f"exit {result.exit_code}"
        where = f"[{result.command.context}] " if result.command.context else ""
        self._print(f"  $ {where}{result.command.pasteable()}  ({state}, {result.duration:.2f}s)", style="dim")

    # --- per-cluster progress -------------------------------------------------------------
    def start_progress(self, clusters: list[tuple[str, str]]) -> None:
        for name, network in clusters:
            self.rows[name] = ClusterRow(name, network)
        if self.console.is_terminal and not self.quiet:
            self._live = Live(self._table(), console=self.console, refresh_per_second=8, transient=True,
                              get_renderable=self._table)
            self._live.start()

    def stop_progress(self) -> None:
        if self._live:
            self._live.stop()
            self._live = None

    def step(self, cluster: str, step: str) -> None:
        with self._lock:
            row = self.rows.setdefault(cluster, ClusterRow(cluster))
            row.step = step
        if not self._live and not self.quiet:
            self._line(cluster, f"{step} ...")

    def step_done(self, cluster: str, step: str, ok: bool, seconds: float, detail: str = "") -> None:
        if not self._live and not self.quiet:
            mark = "ok" if ok else "FAILED"
            self._line(cluster, f"{step}: {mark} ({seconds:.1f}s){' - ' + detail if detail else ''}")
        if not ok:
            self.finish_cluster(cluster, False, f"{step} failed")

    def finish_cluster(self, cluster: str, ok: bool, detail: str = "") -> None:
        with self._lock:
            row = self.rows.setdefault(cluster, ClusterRow(cluster))
            if row.finished is None or (row.ok and not ok):
                row.finished = time.monotonic()
                row.ok = ok
                row.detail = detail
                row.step = "done" if ok else row.step

    def _line(self, cluster: str, text: str) -> None:
        stamp = dt.datetime.now().strftime("%H:%M:%S")
        self._print(f"{stamp} {cluster}: {text}")

    def _table(self) -> Table:
        table = Table(box=None, show_header=True, header_style="bold")
        table.add_column("cluster")
        table.add_column("network")
        table.add_column("step")
        table.add_column("elapsed", justify="right")
        table.add_column("")
        for row in self.rows.values():
            mark = "…" if row.ok is None else ("[green]✓[/]" if row.ok else "[red]✗[/]")
            table.add_row(escape(row.name), escape(row.network), escape(row.step), f"{row.elapsed:.1f}s", mark)
        return table

    # --- end of a run ---------------------------------------------------------------------
    def summary(self, title: str, failures: dict[str, CommandFailed | MeshError], log_path: str | None) -> None:
        table = Table(title=title, header_style="bold")
        table.add_column("cluster")
        table.add_column("network")
        table.add_column("result")
        table.add_column("time", justify="right")
        for row in self.rows.values():
            if row.ok is None:
                result = "[yellow]not finished[/]"
            elif row.ok:
                result = "[green]ok[/]" + (f" ({escape(row.detail)})" if row.detail else "")
            else:
                result = f"[red]failed[/]: {escape(row.detail)}"
            table.add_row(escape(row.name), escape(row.network), result, f"{row.elapsed:.1f}s")
        with self._lock:
            if not self.quiet or failures:
                self.console.print(table)
        for cluster, exc in failures.items():
            step = getattr(exc, "step", None)
            self._print(f"{cluster}: {step + ': ' if step else ''}{exc.message}", style="red")
            if exc.hint:
                self._print(f"  hint: {exc.hint}")
        if failures and log_path:
            self._print(f"run log: {log_path}")
