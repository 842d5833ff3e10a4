"""Runs the stand-in istioctl without starting an interpreter and importing its modules on every call.

The suite calls istioctl thousands of times, and most of each call's CPU went to the imports the stand-in
needs (http.client, ssl, PyYAML: about 50 ms of each call's 60 to 75 on a 2-core machine). A server per
test process imports them once. bin/istioctl, a launcher run with ``python -S``, then connects to the
server named by ``ISTIOCTL_STANDIN_SERVER`` (a Unix socket), sends its argv, environment, working folder
and the path of the stand-in's module, and passes its own stdin, stdout and stderr. The server forks a
child that takes them and runs the module as the launcher would have run it: its code is run in the
child, with the launcher's environment already set, so what the module reads at its start it reads
from the caller. The child writes its exit status back; the launcher exits with it, or is killed by the
signal that killed the child. When the launcher goes (killed on a timeout or an interrupt, as the
runner of setup-mesh kills what it started), the server kills the child.

Without the variable, or with no server listening, the launcher runs the module itself, as it always did
(a sandbox used by hand, the benchmark). The call log, the calls' effects and their output are the same
either way: the code is the same file, run in a process of its own.
"""
from __future__ import annotations

import _imp
import atexit
import hashlib
import marshal
import os
import selectors
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

ENV = "ISTIOCTL_STANDIN_SERVER"
_MESSAGE_MAX = 1 << 20
ROOT = Path(__file__).resolve().parent.parent.parent


# --- the test side -------------------------------------------------------------------------------------

_started: dict[str, object] = {}


def start() -> str | None:
    """Starts this test process's server (once) and names it in os.environ, which every sandbox's
    environment copies; returns its address, or None when it could not start."""
    if "address" in _started:
        return _started["address"]  # type: ignore[return-value]
    folder = tempfile.mkdtemp(prefix="istioctl-")
    address = os.path.join(folder, "s")
    ours, theirs = socket.socketpair()  # its end closing (this process gone) stops the server
    try:
        proc = subprocess.Popen(
            [sys.executable, "-c", "import sys; from tests.sandbox.standinserver import serve; "
                                   "serve(sys.argv[1], int(sys.argv[2]))", address, str(theirs.fileno())],
            pass_fds=[theirs.fileno()], cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            start_new_session=True)
    except OSError:
        _started["address"] = None
        return None
    finally:
        theirs.close()
    ready = ours.recv(16)  # "ok" once it listens; nothing if it died first
    if ready != b"ok":
        _started["address"] = None
        return None

    def stop() -> None:
        from tests.cliserver import stop_server

        stop_server(ours, proc)
        for name in (address, folder):
            try:
                os.rmdir(name) if name == folder else os.unlink(name)
            except OSError:
                pass

    atexit.register(stop)
    os.environ[ENV] = address
    _started["address"] = address
    return address


# --- the server side -----------------------------------------------------------------------------------

def serve(address: str, parent_fd: int) -> None:
    """Listens at ``address`` until the test process goes; a child per call."""
    parent = socket.socket(fileno=parent_fd)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    listener.bind(address)
    listener.listen(64)
    os.close(os.pidfd_open(os.getpid()))  # AttributeError or OSError where there are no pidfds: no server
    _preload()
    parent.sendall(b"ok")
    codes: dict[tuple, object] = {}
    with selectors.DefaultSelector() as sel:
        sel.register(parent, selectors.EVENT_READ)
        sel.register(listener, selectors.EVENT_READ)
        while True:
            for key, _ in sel.select():
                if key.fileobj is parent:
                    for call in list(sel.get_map().values()):
                        if isinstance(call.data, _Call):
                            call.data.end(sel)
                    return
                if key.fileobj is listener:
                    _accept(listener, sel, codes)
                else:
                    key.data.end(sel)


def _preload() -> None:
    """What the stand-in imports (its module's own imports, loaded once here for every child)."""
    # encodings.idna: what socket.getaddrinfo loads to encode a host name, at each call's first request.
    for name in ("base64", "copy", "csv", "encodings.idna", "errno", "fcntl", "hashlib", "http.client", "json",
                 "random", "re", "ssl", "tempfile", "time", "urllib.error", "urllib.parse", "urllib.request", "uuid",
                 "yaml", "subprocess", "shutil", "traceback", "types"):
        try:
            __import__(name)
        except ImportError:
            pass


class _Call:
    """A launcher's connection and the child running its call. Either ending ends the call: the launcher
    gone (killed on a timeout, say) kills the child, as the process would have died; the child ended
    tells the launcher how (its status, or the signal that killed it)."""

    def __init__(self, conn: socket.socket, pid: int) -> None:
        self.conn, self.pid, self.pidfd = conn, pid, os.pidfd_open(pid)
        self.ended = False

    def end(self, sel: selectors.BaseSelector) -> None:
        if self.ended:  # both its ends seen in one select
            return
        self.ended = True
        sel.unregister(self.conn)
        sel.unregister(self.pidfd)
        done, status = os.waitpid(self.pid, os.WNOHANG)  # the child stays a zombie until waited for: no pid reuse
        if not done:
            os.kill(self.pid, signal.SIGKILL)
            done, status = os.waitpid(self.pid, 0)
        if os.WIFSIGNALED(status):
            try:
                self.conn.send(f"signal {os.WTERMSIG(status)}".encode())
            except OSError:
                pass
        self.conn.close()
        os.close(self.pidfd)


def _accept(listener: socket.socket, sel: selectors.BaseSelector, codes: dict) -> None:
    conn, _ = listener.accept()
    try:
        message, fds, _, _ = socket.recv_fds(conn, _MESSAGE_MAX, 3)
        module, argv, env, cwd = marshal.loads(message)
        code = _code(module, codes)
    except (OSError, ValueError, EOFError, TypeError, SyntaxError):
        conn.close()
        return
    pid = os.fork()
    if pid == 0:
        _child(conn, fds, module, code, argv, env, cwd)
    for fd in fds:
        os.close(fd)
    call = _Call(conn, pid)
    sel.register(conn, selectors.EVENT_READ, call)
    sel.register(call.pidfd, selectors.EVENT_READ, call)


def _code(module: str, codes: dict):
    """The module's code object, compiled once per text: every sandbox holds a copy of its own (the same
    text for a version), and compiling its 3,400 lines took about 30 ms of CPU at each new copy. A copy
    at another path gets the code compiled for the first with its own file name, as an import that loads
    bytecode does (importlib's _fix_co_filename), so a traceback names the file that ran."""
    stat = os.stat(module)
    key = (module, stat.st_mtime_ns, stat.st_size)
    if key not in codes:
        with open(module, "rb") as fh:
            source = fh.read()
        digest = hashlib.sha256(source).digest()
        if digest not in codes:
            codes[digest] = marshal.dumps(compile(source, module, "exec", dont_inherit=True))
        code = marshal.loads(codes[digest])
        _imp._fix_co_filename(code, module)
        codes[key] = code
    return codes[key]


def _child(conn: socket.socket, fds: list[int], module: str, code, argv: list, env: dict, cwd: str) -> None:
    """One call: never returns. Writes its exit status to the launcher."""
    status = 1
    try:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
            os.close(fd)
        os.chdir(cwd)
        os.environ.clear()
        os.environ.update(env)
        sys.argv = [os.path.join(os.path.dirname(module), "istioctl"), *argv]
        status = _run(module, code, argv)
    finally:
        try:
            conn.send(str(status).encode())
        finally:
            os._exit(status)


def _run(module: str, code, argv: list) -> int:
    """The launcher's ``sys.exit(main(argv))``, ended as the interpreter ends a script."""
    import types

    from tests.cliserver import run_as_interpreter

    namespace = types.ModuleType("_istioctl_standin")
    namespace.__file__ = module
    sys.modules["_istioctl_standin"] = namespace

    def program() -> None:
        exec(code, namespace.__dict__)
        sys.exit(namespace.main(argv))

    return run_as_interpreter(program)
