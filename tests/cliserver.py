"""Runs ``python setup_mesh.py ARGS`` for the end-to-end tests without starting an interpreter each time.

The end-to-end tests run the CLI thousands of times, and most of each run's CPU went to Python's start
and the imports (about 0.3 s, on 2 cores, against a few hundredths for the run's own work). A server
process per test process imports setup_mesh.py's modules once; each run is a child forked from it,
which takes the run's argv, environment, working folder and stdin/stdout/stderr (pipes, as
``subprocess.run(capture_output=True)`` gives) and then executes setup_mesh.py as ``__main__``, as the
interpreter does for ``python setup_mesh.py``. The code under test is the same file, run the same way,
in a process of its own; what the children share is the modules the server imported and the server's
string hash seed. The child ends as an interpreter ends: it waits for non-daemon threads, runs the
exit handlers, flushes, and exits with SystemExit's code (1 and a traceback for an uncaught exception).

Tests of what happens before setup_mesh.py runs (an installed command, a terminal, Ctrl-C) start
processes of their own. ``SETUP_MESH_TESTS_SUBPROCESS=1`` makes every run a plain subprocess.
"""
from __future__ import annotations

import atexit
import json
import os
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PLAIN_ENV = "SETUP_MESH_TESTS_SUBPROCESS"
_MESSAGE_MAX = 1 << 20


def run(argv: list[str], *, env: dict, cwd: Path | str, input: str = "", timeout: float) -> subprocess.CompletedProcess:
    """``subprocess.run(argv, env=, cwd=, input=, timeout=, capture_output=True, text=True)`` for
    ``argv = [sys.executable, <setup_mesh.py>, ...]``: the same result, from a forked child."""
    if os.environ.get(PLAIN_ENV) or not _is_cli(argv):
        return _plain(argv, env, cwd, input, timeout)
    server = _server()
    if server is None:
        return _plain(argv, env, cwd, input, timeout)
    return server.run(argv, env, cwd, input, timeout)


def _is_cli(argv: list[str]) -> bool:
    return len(argv) >= 2 and argv[0] == sys.executable and Path(argv[1]).name == "setup_mesh.py"


def _plain(argv, env, cwd, input, timeout) -> subprocess.CompletedProcess:
    return subprocess.run(argv, env=env, cwd=cwd, input=input, timeout=timeout, capture_output=True, text=True)


# --- the test side -----------------------------------------------------------------------------------

class _Server:
    def __init__(self) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.sock = ours
        self.lock = threading.Lock()
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "import sys; from tests.cliserver import serve; serve(int(sys.argv[1]))",
             str(theirs.fileno())],
            pass_fds=[theirs.fileno()], cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            start_new_session=True)
        theirs.close()
        atexit.register(self.close)

    def close(self) -> None:
        stop_server(self.sock, self.proc)

    def run(self, argv, env, cwd, input, timeout) -> subprocess.CompletedProcess:
        child_in, feed = os.pipe()
        out, child_out = os.pipe()
        err, child_err = os.pipe()
        status, child_status = os.pipe()
        request = json.dumps({"argv": [str(a) for a in argv[1:]], "env": dict(env), "cwd": str(cwd)}).encode()
        try:
            with self.lock:
                socket.send_fds(self.sock, [request], [child_in, child_out, child_err, child_status])
        except OSError:
            # The server is gone (setup_mesh.py failed to import in it, say): a plain run shows why.
            for fd in (feed, out, err, status):
                os.close(fd)
            return _plain(argv, env, cwd, input, timeout)
        finally:
            for fd in (child_in, child_out, child_err, child_status):
                os.close(fd)
        writer = threading.Thread(target=_feed, args=(feed, (input or "").encode()), daemon=True)
        writer.start()
        return _collect(argv, out, err, status, timeout)


def _feed(fd: int, data: bytes) -> None:
    try:
        os.write(fd, data) if data else None
    except BrokenPipeError:
        pass
    finally:
        os.close(fd)


def _collect(argv, out: int, err: int, status: int, timeout: float) -> subprocess.CompletedProcess:
    """Reads the child's output and its status pipe (its pid, then its exit code) until all three close."""
    chunks: dict[int, list[bytes]] = {out: [], err: [], status: []}
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as sel:
        for fd in chunks:
            sel.register(fd, selectors.EVENT_READ)
        while sel.get_map():
            left = deadline - time.monotonic()
            if left <= 0:
                _kill(b"".join(chunks[status]))
                for key in list(sel.get_map().values()):
                    sel.unregister(key.fd)
                    os.close(key.fd)
                raise subprocess.TimeoutExpired(argv, timeout, b"".join(chunks[out]).decode(errors="replace"),
                                                b"".join(chunks[err]).decode(errors="replace"))
            for key, _ in sel.select(left):
                data = os.read(key.fd, 65536)
                if data:
                    chunks[key.fd].append(data)
                else:
                    sel.unregister(key.fd)
                    os.close(key.fd)
    lines = b"".join(chunks[status]).decode().split()
    # No exit code: the child was killed by a signal before it could write one.
    code = int(lines[1]) if len(lines) > 1 else -signal.SIGKILL
    return subprocess.CompletedProcess(argv, code, b"".join(chunks[out]).decode(errors="replace"),
                                       b"".join(chunks[err]).decode(errors="replace"))


def _kill(status: bytes) -> None:
    lines = status.decode().split()
    if lines:
        try:
            os.kill(int(lines[0]), signal.SIGKILL)
        except ProcessLookupError:
            pass


_state: dict[str, _Server | None] = {}
_start_lock = threading.Lock()


def _server() -> _Server | None:
    """This test process's server, started on first use; None once it could not start or has gone (its
    runs are then plain subprocesses: a server that died importing setup_mesh.py would die again)."""
    with _start_lock:
        if "server" not in _state:
            try:
                _state["server"] = _Server()
            except OSError:
                _state["server"] = None
        server = _state["server"]
        if server is not None and server.proc.poll() is not None:
            _state["server"] = server = None
        return server


# --- the server side ---------------------------------------------------------------------------------

def serve(fd: int) -> None:
    """Imports the CLI's modules, then forks a child per request until the test process goes."""
    sock = socket.socket(fileno=fd)
    sys.path[0] = str(ROOT)  # as for `python setup_mesh.py`: the script's folder first
    import setup_mesh  # noqa: F401 - setup_mesh.py's imports, loaded once for every child
    # What a run imports as it goes, imported once here (about 55 ms of CPU a run otherwise): lib/ beyond
    # what setup_mesh.py imports at its start (cryptography with it; lib/ reads nothing at import), and the
    # runner's sh (with asyncio and ssl), which the runner imports on its first command.
    import importlib
    import pkgutil

    for found in pkgutil.iter_modules([str(ROOT / "lib")]):
        importlib.import_module(f"lib.{found.name}")
    for module in ("cryptography.hazmat.primitives.serialization", "rich._emoji_codes"):  # loaded on use
        importlib.import_module(module)
    from lib.runner import ShRunner

    ShRunner().which("true")
    serve_forks(sock, lambda request, fds: _child(sock, request, fds))


def serve_forks(sock: socket.socket, child) -> None:
    """Forks ``child(request, fds)`` for each request (JSON, with stdin, stdout, stderr and a status pipe)
    until the test process goes; the kernel reaps the children."""
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    while True:
        try:
            message, fds, _, _ = socket.recv_fds(sock, _MESSAGE_MAX, 4)
        except OSError:
            return
        if not message:
            return
        if os.fork() == 0:
            child(json.loads(message), fds)
        for received in fds:
            os.close(received)


def take_request(sock: socket.socket, request: dict, fds: list[int], session: bool = False) -> None:
    """In a forked child, what a new process would have been given: stdin, stdout and stderr (``fds``), its pid
    written to the status pipe (``fds[3]``), the request's folder and environment; ``session``: a session of
    its own (``start_new_session=True``)."""
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    sock.close()
    if session:
        os.setsid()
    for target, fd in enumerate(fds[:3]):
        os.dup2(fd, target)
        os.close(fd)
    os.set_inheritable(fds[3], False)
    os.write(fds[3], f"{os.getpid()}\n".encode())
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])


def stop_server(sock: socket.socket, proc: subprocess.Popen) -> None:
    """Closes the test process's end of a server's socket, which ends the server, and waits for it."""
    sock.close()
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        proc.kill()


def _child(sock: socket.socket, request: dict, fds: list[int]) -> None:
    """One run: never returns."""
    code = 1
    status = fds[3]
    try:
        take_request(sock, request, fds)
        sys.argv = list(request["argv"])
        sys.path[0] = str(Path(sys.argv[0]).resolve().parent)
        code = _run_script(sys.argv[0])
    finally:
        try:
            os.write(status, f"{code}\n".encode())
        finally:
            os._exit(code)


def _run_script(path: str) -> int:
    """``python path``: run it as __main__, then end as the interpreter ends."""
    import runpy

    return run_as_interpreter(lambda: runpy.run_path(path, run_name="__main__"))


def run_as_interpreter(program) -> int:
    """Runs ``program()`` and ends as the interpreter ends a script: its exit status (SystemExit's code, 1 and
    a traceback for an uncaught exception), non-daemon threads and exit handlers waited for, output flushed."""
    import traceback

    try:
        program()
        code = 0
    except SystemExit as exc:
        code = _exit_code(exc.code)
    except BaseException:  # noqa: BLE001 - printed as the interpreter prints an uncaught exception
        traceback.print_exc()
        code = 1
    try:
        # As Py_FinalizeEx (Python/pylifecycle.c) does: wait for non-daemon threads, then the exit handlers.
        threading._shutdown()  # type: ignore[attr-defined]
        atexit._run_exitfuncs()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
    return code


def _exit_code(value) -> int:
    """SystemExit's code as the interpreter turns it into an exit status (CPython's Python/pythonrun.c,
    handle_system_exit: None is 0, an int is kept, anything else is printed and is 1; the kernel keeps the
    low 8 bits)."""
    if value is None:
        return 0
    if isinstance(value, int):
        return value & 0xFF
    print(value, file=sys.stderr)
    return 1
