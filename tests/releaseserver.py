"""A loopback HTTP server standing in for Istio's GitHub releases or an internal mirror.

It serves the files of one folder (``python -m tests.sandbox release --out DIR`` writes them: the stand-in
release's ``istio-<v>-linux-amd64.tar.gz`` and ``.sha256``), answers 404 for anything else as GitHub does,
and records every path asked for, so that a test can tell a download from a reuse. It listens on
127.0.0.1 only: no test reaches anything else.
"""
from __future__ import annotations

import shutil
import socket
import threading
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from tests.sandbox import release as standin


class ReleaseServer:
    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.requests: list[str] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server's name
                server.requests.append(self.path)
                path = (server.folder / self.path.lstrip("/")).resolve()
                if server.folder.resolve() not in path.parents or not path.is_file():
                    self.send_error(404, "Not Found")
                    return
                body = path.read_bytes()
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):  # quiet: the tests read self.requests instead
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def downloads(self, suffix: str = ".tar.gz") -> list[str]:
        return [p for p in self.requests if p.endswith(suffix)]

    def __enter__(self) -> "ReleaseServer":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join()


@contextmanager
def serving_a_copy(published: Path, where: Path):
    """A private copy of a published folder (a test may damage it), served over loopback HTTP."""
    folder = where / "mirror"
    shutil.copytree(published, folder)
    with ReleaseServer(folder) as server:
        yield server


def publish(folder: Path, version: str) -> Path:
    """Make the stand-in release ``version`` and leave only what Istio publishes in ``folder``: the archive and
    its .sha256 (the unpacked copy is removed, so nothing can use it by accident)."""
    archive, _ = standin.archive_release(folder, version=version)
    shutil.rmtree(standin.release_dir(folder, version))
    return archive


class ClosedPort:
    """A loopback port nothing listens on, held (bound, never listening) so that no other process takes it: a
    connection to it is refused at once, as to a mirror that is down."""

    def __enter__(self) -> str:
        self._socket = socket.socket()
        self._socket.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{self._socket.getsockname()[1]}"

    def __exit__(self, *exc) -> None:
        self._socket.close()
