"""Run setup-mesh on a pseudo-terminal (the standard library's pty), as a user at a terminal does.

The child is a session leader with the pty as its controlling terminal, so the bytes a user's keys send
(Ctrl-C is 0x03, Ctrl-D is 0x04 at the start of a line) reach it through the terminal's line discipline:
Ctrl-C becomes SIGINT for the whole foreground process group, Ctrl-D an end of file.
"""
from __future__ import annotations

import errno
import fcntl
import os
import pty
import re
import select
import struct
import termios
import time

CTRL_C = b"\x03"
CTRL_D = b"\x04"
_ESCAPES = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07|\r")


def plain(text: str) -> str:
    """The text without terminal escape sequences (colours, cursor moves) and carriage returns."""
    return _ESCAPES.sub("", text)


# The read system call's number, for /proc/<pid>/syscall.
_READ_SYSCALL = {"x86_64": "0", "aarch64": "63"}


def wait_until_reading(pid: int, timeout: float = 60) -> None:
    """Until ``pid`` sleeps in a read of its standard input. A SIGINT that lands after CPython's last check
    for signals and before its read() starts is only acted on when that read returns (the next line typed):
    a Ctrl-C sent the instant a question is printed can hit that window on a loaded machine, which no person
    typing does. Where /proc says nothing of system calls, half a second stands in."""
    number = _READ_SYSCALL.get(os.uname().machine)
    path = f"/proc/{pid}/syscall"
    if number is None or not os.path.exists(path):
        time.sleep(0.5)
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            fields = open(path).read().split()
        except OSError:  # gone already, or not ours to read
            return
        if fields[:2] == [number, "0x0"]:
            return
        time.sleep(0.05)


class Terminal:
    def __init__(self, argv: list[str], env: dict[str, str], cwd: str | None = None, cols: int = 140, rows: int = 40):
        env = dict(env, TERM="xterm-256color")
        env.pop("COLUMNS", None)
        env.pop("LINES", None)
        env.pop("NO_COLOR", None)
        pid, fd = pty.fork()
        if pid == 0:  # the child: size the terminal before anything reads it, then become the program
            try:
                fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
                if cwd:
                    os.chdir(cwd)
                os.execve(argv[0], argv, env)
            finally:
                os._exit(127)
        self.pid, self.fd = pid, fd
        self.raw = b""
        self.exit_code: int | None = None

    @property
    def output(self) -> str:
        return self.raw.decode("utf-8", "replace")

    def _read(self, timeout: float) -> bool:
        """Read what is there within ``timeout``; False once the terminal is closed."""
        ready, _, _ = select.select([self.fd], [], [], timeout)
        if not ready:
            return True
        try:
            chunk = os.read(self.fd, 65536)
        except OSError as exc:
            if exc.errno == errno.EIO:  # the child side closed: everything has been read
                return False
            raise
        if not chunk:
            return False
        self.raw += chunk
        return True

    def expect(self, pattern: str, timeout: float = 60) -> None:
        """Wait until ``pattern`` (plain text, escapes removed) has been printed."""
        deadline = time.monotonic() + timeout
        while pattern not in plain(self.output):
            if time.monotonic() > deadline or not self._read(min(0.2, max(0.0, deadline - time.monotonic()))):
                if pattern in plain(self.output):
                    return
                raise AssertionError(f"{pattern!r} not printed within {timeout}s; the terminal shows:\n"
                                     f"{plain(self.output)}")

    def send(self, data: bytes) -> None:
        os.write(self.fd, data)

    def answer(self, data: bytes) -> None:
        """Typed once the program waits for the answer to its question, as a person does."""
        wait_until_reading(self.pid)
        self.send(data)

    def wait(self, timeout: float = 120) -> int:
        """Read to the end and return the exit code (128+N for a signal, as a shell shows it)."""
        deadline = time.monotonic() + timeout
        while self._read(0.2):
            if time.monotonic() > deadline:
                os.kill(self.pid, 9)
                raise AssertionError(f"still running after {timeout}s; the terminal shows:\n{plain(self.output)}")
        _, status = os.waitpid(self.pid, 0)
        os.close(self.fd)
        self.exit_code = os.waitstatus_to_exitcode(status)
        if self.exit_code < 0:
            self.exit_code = 128 - self.exit_code
        return self.exit_code
