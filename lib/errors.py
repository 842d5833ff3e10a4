"""The error types every command reports; the CLI turns them into one message and an exit code."""
from __future__ import annotations


class MeshError(Exception):
    """A failure the user can act on. ``hint`` says how to fix it."""

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


RERUN_HINT = "run the same command again: it picks up where this one stopped"


class Interrupted(MeshError):
    """Ctrl-C: the step, or the command, stopped before it finished (or before it started)."""

    def __init__(self, message: str = "interrupted before this step finished") -> None:
        super().__init__(message, hint=RERUN_HINT)


class ConfigError(MeshError):
    """Bad input or usage, found before any cluster is touched (exit 2)."""

    exit_code = 2


class Cancelled(MeshError):
    """The user answered no at a confirmation: a cancellation (exit 1), not bad input."""


class ToolMissing(ConfigError):
    """A required program (kubectl, istioctl, make, openssl) is not on PATH."""


class CommandFailed(MeshError):
    """A subprocess exited non-zero or ran out of time."""

    def __init__(self, command, exit_code: int | None, stderr_tail: str, timed_out: bool = False):
        self.command = command
        self.exit_code_of_command = exit_code
        self.stderr_tail = stderr_tail
        self.timed_out = timed_out
        if timed_out:
            what = f"timed out after {command.timeout:g}s"
        else:
            what = f"exited with code {exit_code}"
        message = f"`{command.pasteable()}` {what}"
        if stderr_tail:
            message += ":\n" + _distinct_lines(stderr_tail)
        super().__init__(message)


def _distinct_lines(text: str) -> str:
    """Each line once: kubectl repeats an error per resource type of a read (a refused connection: seven
    times for seven kinds)."""
    seen: set[str] = set()
    kept = []
    for line in text.split("\n"):
        if line.strip() and line in seen:
            continue
        seen.add(line)
        kept.append(line)
    return "\n".join(kept)
