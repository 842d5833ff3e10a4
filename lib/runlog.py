"""The run log: every command of an apply or teardown, with secrets removed, kept in the workdir."""
from __future__ import annotations

import datetime as dt
import os
import threading
from pathlib import Path

from .redact import redact
from .runner import Result
from .state import STATE_DIR

LOG_DIR = "logs"


class RunLog:
    def __init__(self, path: Path):
        self.path = path
        self._lock = threading.Lock()
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self._file = os.fdopen(fd, "a", encoding="utf-8")

    @classmethod
    def create(cls, workdir: Path, command: str) -> "RunLog":
        stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S-%f")
        return cls(workdir / STATE_DIR / LOG_DIR / f"{command}-{stamp}.log")

    def record(self, result: Result) -> None:
        command = result.command
        state = "timeout" if result.timed_out else f"exit={result.exit_code}"
        lines = [f"{dt.datetime.now().isoformat(timespec='seconds')} [{command.context or '-'}] {state} "
                 f"{result.duration:.2f}s {redact(command.pasteable())}"]
        tail = result.stderr_tail()
        if tail:
            lines.extend(f"    stderr: {line}" for line in tail.splitlines())
        with self._lock:
            self._file.write("\n".join(lines) + "\n")
            self._file.flush()

    def close(self) -> None:
        with self._lock:
            self._file.close()
