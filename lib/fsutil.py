"""File writes that never leave a half-written file behind, and reads of files that may be missing."""
from __future__ import annotations

import fcntl
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from .errors import ConfigError


def write_atomic(path: Path, data: str | bytes, mode: int = 0o644) -> None:
    """Write to a temporary file in the same folder, then rename it over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = data.encode() if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(raw)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise



def read_if_present(path: Path) -> bytes | None:
    """The file's bytes, or None when it cannot be read (missing, a folder, no permission)."""
    try:
        return path.read_bytes()
    except OSError:
        return None


@contextmanager
def workspace_lock(workdir: Path) -> Iterator[None]:
    """Held while a run changes a workspace and its clusters: a second run on the same workspace is refused
    instead of breaking the first (each would make certificates and change clusters the other is changing).
    flock on the folder itself: released when the run ends or its process dies, and never left behind."""
    if not workdir.is_dir():
        yield  # the command says what is missing
        return
    fd = os.open(workdir, os.O_RDONLY)  # not inherited by the tools the run starts
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ConfigError(f"another setup-mesh run (apply, teardown or rotate-certs) is changing the workspace "
                              f"{workdir} and its clusters", hint="wait for it to finish, then run this command "
                              "again (a dry run and status work meanwhile)") from None
        yield
    finally:
        os.close(fd)
