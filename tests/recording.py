"""A runner for unit tests: records commands instead of running them, with scripted answers."""
from __future__ import annotations

from typing import Callable

from lib.runner import Command, Result, _Base

Responder = Callable[[Command], "tuple[int, str, str] | None"]


class RecordingRunner(_Base):
    """Records commands; ``responder`` may answer (exit code, stdout, stderr), else (0, "", "").

    Results go through the same listeners and failure handling as the real runner's.
    """

    def __init__(self, responder: Responder | None = None) -> None:
        super().__init__()
        self.commands: list[Command] = []
        self.responder = responder

    def which(self, program: str) -> str | None:
        return program

    def require(self, program: str) -> str:
        return program

    def run(self, command: Command) -> Result:
        with self._lock:
            self.commands.append(command)
        answer = self.responder(command) if self.responder else None
        code, out, err = answer if answer is not None else (0, "", "")
        return self._finish(Result(command, code, out, err, 0.0))

    def lines(self) -> list[str]:
        return [c.pasteable() for c in self.commands]
