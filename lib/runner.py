"""The one place that starts programs. Nothing else in setup-mesh imports ``sh``.

A command's stdout is handed back to the caller only: it is never printed or logged, since some
(a remote secret, a read of secrets) carry credentials.

A :class:`Command` is plain data; a runner turns it into a :class:`Result`. ``ShRunner`` runs it for
real. Every run is reported to the listeners (the run log, the reporter) with secrets already removed.
"""
from __future__ import annotations

import os
import shlex
import signal
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Mapping, Protocol

from .errors import CommandFailed, Interrupted, ToolMissing
from .redact import redact

STDERR_TAIL_LINES = 12

INSTALL_HINTS = {
    "kubectl": "install kubectl (https://kubernetes.io/docs/tasks/tools/) and put it on PATH",
    "istioctl": "download an Istio release (curl -L https://istio.io/downloadIstio | sh -) and put its bin/ on PATH",
    "make": "install GNU make (e.g. apt-get install make)",
    "openssl": "install openssl (e.g. apt-get install openssl)",
}


@dataclass(frozen=True)
class Command:
    """A program to run: argv plus where and how. Never a shell string."""

    argv: tuple[str, ...]
    context: str | None = None  # the kube context the command acts on, for reports
    stdin: str | None = None  # may carry secrets: never printed or logged unless stdin_shown
    stdin_shown: bool = False  # the stdin holds no secret and may be printed (dry-run heredocs)
    env: Mapping[str, str] = field(default_factory=dict)  # added to the inherited environment
    cwd: str | None = None
    timeout: float | None = None
    check: bool = True  # raise CommandFailed on a non-zero exit

    def __post_init__(self):
        object.__setattr__(self, "argv", tuple(str(a) for a in self.argv))

    @property
    def program(self) -> str:
        return self.argv[0]

    def pasteable(self, with_stdin: bool = False) -> str:
        """The command as a line a user can paste into a POSIX shell.

        With ``with_stdin`` a printable stdin is added as a heredoc; a secret one is only named.
        """
        parts = []
        if self.cwd:
            parts.append(f"cd {shlex.quote(self.cwd)} &&")
        parts.extend(f"{k}={shlex.quote(v)}" for k, v in sorted(self.env.items()))
        parts.append(shlex.join(self.argv))
        line = " ".join(parts)
        if self.stdin is not None:
            if with_stdin and self.stdin_shown:
                line += " <<'EOF'\n" + self.stdin.rstrip("\n") + "\nEOF"
            else:
                line += " < " + ("MANIFEST" if self.stdin_shown else "SECRET-MANIFEST")
        return line


@dataclass
class Result:
    command: Command
    exit_code: int
    stdout: str
    stderr: str
    duration: float
    timed_out: bool = False

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.timed_out

    def stderr_tail(self, lines: int = STDERR_TAIL_LINES) -> str:
        return redact("\n".join(self.stderr.strip().splitlines()[-lines:]))


Listener = Callable[[Result], None]


class Runner(Protocol):
    def run(self, command: Command) -> Result: ...


class _Base:
    def __init__(self) -> None:
        self.listeners: list[Listener] = []
        self._lock = threading.Lock()

    def _finish(self, result: Result) -> Result:
        for listener in list(self.listeners):
            listener(result)
        cmd = result.command
        if cmd.check and not result.ok:
            raise CommandFailed(cmd, None if result.timed_out else result.exit_code,
                                result.stderr_tail(), timed_out=result.timed_out)
        return result


def _in_child() -> None:
    """Runs in the forked child, just before the program replaces it."""
    # Files a tool writes for us (keys from make/openssl) are private from the first byte.
    os.umask(0o077)
    # Until exec the child is a copy of setup-mesh, and sh catches Exception only there: a Ctrl-C in that
    # window would raise KeyboardInterrupt past it, and the copy would run our code on in place of the
    # program (the run then waits for it forever). SIGINT is held from before the fork; a Ctrl-C that came
    # meanwhile now ends the child as the program would have ended, and later ones reach the program.
    if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


class ShRunner(_Base):
    """Runs commands for real through ``sh``."""

    def __init__(self, path: str | None = None) -> None:
        super().__init__()
        self.path = path
        self._running: dict[int, object] = {}
        self._stopped = False  # Ctrl-C: no command starts any more, and one starting now is ended

    def which(self, program: str) -> str | None:
        import sh

        try:
            return str(sh.Command(program, search_paths=self.path.split(os.pathsep) if self.path else None))
        except sh.CommandNotFound:
            return None

    def require(self, program: str) -> str:
        found = self.which(program)
        if not found:
            raise ToolMissing(f"{program} was not found on PATH", hint=INSTALL_HINTS.get(program))
        return found

    def run(self, command: Command) -> Result:
        import sh

        try:
            program = sh.Command(command.program)
        except sh.CommandNotFound:
            raise ToolMissing(f"{command.program} was not found on PATH",
                              hint=INSTALL_HINTS.get(os.path.basename(command.program)))
        env = dict(os.environ)
        env.update(command.env)
        kwargs = dict(
            _env=env,
            _cwd=command.cwd,
            _tty_out=False,
            _tty_in=False,
            _ok_code=list(range(-64, 256)),  # signals show as negative codes
            _bg_exc=False,
            _preexec_fn=_in_child,
            _decode_errors="replace",
            _truncate_exc=False,
        )
        if command.stdin is not None:
            kwargs["_in"] = command.stdin
        with self._lock:
            if self._stopped:
                raise Interrupted(f"interrupted before `{command.pasteable()}` started")
        start = time.monotonic()
        proc = self._start_recorded(program, command, kwargs)
        deadline = _Deadline(proc, command.timeout)
        try:
            proc.wait()
            exit_code, out, err = proc.exit_code, proc.stdout, proc.stderr
        except sh.ErrorReturnCode as exc:  # sh 2.0 raises for SIGTERM and the like even when the code is allowed
            exit_code, out, err = exc.exit_code, proc.stdout, proc.stderr
        except BaseException:  # Ctrl-C while this thread waits for it: the program must not outlive the run
            _terminate(proc)
            raise
        finally:
            deadline.cancel()
            with self._lock:
                self._running.pop(id(proc), None)
        duration = time.monotonic() - start
        # A program that ended on its own as the deadline came (exit 0) did not time out.
        timed_out = deadline.fired and exit_code != 0
        result = Result(command, exit_code, _text(out), _text(err), duration, timed_out)
        return self._finish(result)

    def _start_recorded(self, program, command: Command, kwargs: dict):
        """The program started, with SIGINT held while it forks (the fork copies that: see _in_child), and
        recorded, so that a Ctrl-C ends it."""
        held = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            proc = self._start(program, command, kwargs)
            with self._lock:
                # A Ctrl-C that came while the program was starting found nothing to end, and the terminal's
                # SIGINT came before the program was there: end it now, or the run waits for all it does.
                late = self._stopped
                self._running[id(proc)] = proc
        finally:
            # A Ctrl-C held meanwhile is raised here (in the main thread): the program is recorded by then,
            # and the run's Ctrl-C handling ends it.
            signal.pthread_sigmask(signal.SIG_SETMASK, held)
        if late:
            _terminate(proc)
        return proc

    def _start(self, program, command: Command, kwargs: dict):
        return program(*command.argv[1:], _bg=True, **kwargs)

    def terminate_all(self) -> None:
        """Ends every running command and starts no other (Ctrl-C): the next run repairs what they left half
        done. The signal goes to each program we started; make passes it on to the openssl it runs."""
        with self._lock:
            self._stopped = True
            running = list(self._running.values())
        for proc in running:
            _terminate(proc)

    def resume(self) -> None:
        """After Ctrl-C ended what ran: the run's own clean-up (verify's namespace) may start commands
        again, or it would leave behind what it made."""
        with self._lock:
            self._stopped = False


class _Deadline:
    """Kills a program still running ``seconds`` after it started (SIGKILL, as sh's ``_timeout`` does).

    Not sh's ``_timeout``: its watcher thread looks for the program's end once every 0.1 s, and the run
    waits for that thread, so each command with a timeout lasted up to 100 ms longer than its program.
    """

    def __init__(self, proc, seconds: float | None) -> None:
        self.fired = False
        self._lock = threading.Lock()
        self._over = False
        self._timer = None
        if seconds is not None:
            self._timer = threading.Timer(seconds, self._expire, args=(proc,))
            self._timer.daemon = True
            self._timer.start()

    def _expire(self, proc) -> None:
        with self._lock:
            # Over, or reaped already (its pid may be another program's by now): nothing to kill.
            if self._over or proc.process.exit_code is not None:
                return
            self.fired = True
        try:
            proc.kill()
        except Exception:  # it ended meanwhile
            pass

    def cancel(self) -> None:
        with self._lock:
            self._over = True
        if self._timer is not None:
            self._timer.cancel()


def _terminate(proc) -> None:
    try:
        proc.terminate()
    except Exception:  # already gone
        pass


def _text(data) -> str:
    if isinstance(data, bytes):
        return data.decode("utf-8", "replace")
    return data or ""
