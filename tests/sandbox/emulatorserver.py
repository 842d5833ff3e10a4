"""Starts emulated API servers (apiserver.py) as children forked from one process that has imported it.

The suite starts an emulator about 460 times, and most of each start's CPU went to Python's start and
apiserver.py's imports (about 65 ms of CPU on a 2-core machine; the emulator's own start is a few). A
server per test process imports them once; each emulator is a child forked from it that takes the
arguments, environment, working folder and stdin/stdout/stderr that ``subprocess.Popen`` would have given
it, starts a session of its own (as ``start_new_session=True`` does), and runs apiserver.py's ``main``
as run_apiserver.py runs it. The emulator is the same code, in a process of its own: what the children
share is the imported modules and the server's string hash seed (no emulator draws from ``random``).

The child writes its pid, then its exit status, to a pipe the test process holds: ``Forked`` reads it to
answer what Sandbox asks of a ``Popen`` (poll, wait, returncode, terminate, kill). Without a server (a
sandbox started by hand, the benchmark), Sandbox starts each emulator as a process of its own.

Run as a script (``python -S emulatorserver.py FD``), this file is the server: its folder is then
``sys.path[0]``, as for run_apiserver.py, so apiserver.py is imported under the same name.
"""
from __future__ import annotations

import atexit
import json
import os
import select
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent


# --- the test side -------------------------------------------------------------------------------------

_started: dict[str, object] = {}
_lock = threading.Lock()


def start() -> bool:
    """Starts this test process's server (once); False when it could not start."""
    with _lock:
        if "sock" in _started:
            return _started["sock"] is not None
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            proc = subprocess.Popen([sys.executable, "-S", str(Path(__file__).resolve()), str(theirs.fileno())],
                                    pass_fds=[theirs.fileno()], cwd=ROOT, stdin=subprocess.DEVNULL,
                                    stdout=subprocess.DEVNULL, start_new_session=True)
        except OSError:
            ours.close()
            _started["sock"] = None
            return False
        finally:
            theirs.close()
        if ours.recv(16) != b"ok":  # nothing: it died importing apiserver.py (a plain start shows why)
            ours.close()
            proc.wait()
            _started["sock"] = None
            return False

        from tests.cliserver import stop_server

        atexit.register(stop_server, ours, proc)
        _started["sock"] = ours
        return True


def spawn(argv: list[str], stdout, stderr) -> "Forked | None":
    """``subprocess.Popen(argv, stdin=DEVNULL, stdout=stdout, stderr=stderr, start_new_session=True,
    close_fds=True)`` for ``argv = [python, -S, run_apiserver.py, ARGS...]``, forked by this process's
    server; None when there is none (the caller starts the process itself)."""
    sock = _started.get("sock")
    if sock is None:
        return None
    status, child_status = os.pipe()
    request = json.dumps({"argv": [str(a) for a in argv[3:]], "env": dict(os.environ), "cwd": os.getcwd()}).encode()
    devnull = os.open(os.devnull, os.O_RDONLY)
    try:
        with _lock:
            socket.send_fds(sock, [request], [devnull, stdout.fileno(), stderr.fileno(), child_status])
    except OSError:
        os.close(status)
        return None
    finally:
        os.close(devnull)
        os.close(child_status)
    try:
        return Forked(status)
    except OSError:  # the server went before its child started
        os.close(status)
        return None


class Forked:
    """What Sandbox uses of a ``subprocess.Popen``, for an emulator the server forked: its pid, and its exit
    status once it ended (a negative signal number when a signal killed it, as Popen reports)."""

    def __init__(self, status_fd: int) -> None:
        self._status = status_fd
        self._read = b""
        while b"\n" not in self._read:
            chunk = os.read(status_fd, 64)
            if not chunk:
                raise OSError("the emulator server's child ended before it started")
            self._read += chunk
        self.pid = int(self._read.split(b"\n", 1)[0])
        self.returncode: int | None = None

    def poll(self) -> int | None:
        return self.wait(0) if self.returncode is None and self._ended(0) else self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None:
            if not self._ended(timeout):
                raise subprocess.TimeoutExpired(["emulator", str(self.pid)], timeout)
            lines = self._read.split()
            # No status: a signal ended the child before it could write one (SIGKILL, say).
            self.returncode = int(lines[1]) if len(lines) > 1 else -signal.SIGKILL
            os.close(self._status)
        return self.returncode

    def _ended(self, timeout: float | None) -> bool:
        """Reads the status pipe until it closes (the child is gone) or ``timeout`` passes."""
        while True:
            ready, _, _ = select.select([self._status], [], [], timeout)
            if not ready:
                return False
            chunk = os.read(self._status, 64)
            if not chunk:
                return True
            self._read += chunk

    def send_signal(self, signum: int) -> None:
        if self.returncode is None:
            try:
                os.kill(self.pid, signum)
            except ProcessLookupError:
                pass

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def __del__(self) -> None:
        if self.returncode is None:
            try:
                os.close(self._status)
            except OSError:
                pass


# --- the server side -----------------------------------------------------------------------------------

def serve(fd: int) -> None:
    """Imports apiserver.py, then forks a child per request until the test process goes."""
    sock = socket.socket(fileno=fd)
    sys.path.append(str(ROOT))
    import apiserver  # noqa: F401 - loaded once for every child
    import encodings.idna  # noqa: F401 - loaded by socket.getfqdn, which each emulator's server_bind calls
    from tests.cliserver import run_as_interpreter, serve_forks  # noqa: F401 - the children end as interpreters do

    sock.sendall(b"ok")
    serve_forks(sock, lambda request, fds: _child(sock, request, fds))


def _child(sock: socket.socket, request: dict, fds: list[int]) -> None:
    """One emulator: never returns."""
    import apiserver
    from tests.cliserver import run_as_interpreter, take_request

    code = 1
    status = fds[3]
    try:
        take_request(sock, request, fds, session=True)
        sys.argv = [str(HERE / "run_apiserver.py"), *request["argv"]]
        code = run_as_interpreter(lambda: sys.exit(apiserver.main(sys.argv[1:])))
    finally:
        try:
            os.write(status, f"{code}\n".encode())
        finally:
            os._exit(code)


if __name__ == "__main__":
    serve(int(sys.argv[1]))
