"""Finding the Istio release (for its certs Makefile) and istioctl, as a user has them installed."""
from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from .errors import ConfigError

CERTS_MAKEFILE = Path("tools/certs/Makefile.selfsigned.mk")
GET_ISTIO = ("download a release with `curl -L https://istio.io/downloadIstio | sh -` "
             "(or a tarball from https://github.com/istio/istio/releases), then pass --istio-dir or set ISTIO_DIR")


@dataclass(frozen=True)
class Release:
    root: Path

    @property
    def certs_makefile(self) -> Path:
        return self.root / CERTS_MAKEFILE

    @property
    def istioctl(self) -> Path:
        return self.root / "bin" / "istioctl"

    @property
    def version(self) -> str | None:
        """The release's version: manifest.yaml's ``version:`` (every release tarball has it), else the
        folder's name (istio-X.Y.Z)."""
        try:
            for line in (self.root / "manifest.yaml").read_text().splitlines():
                match = re.fullmatch(r"version:\s*[\"']?([0-9][^\"'\s]*)[\"']?\s*", line)
                if match:
                    return match.group(1)
        except OSError:
            pass
        match = re.fullmatch(r"istio-([0-9]+\.[0-9]+\.[0-9]+.*)", self.root.name)
        return match.group(1) if match else None


def _version_key(path: Path) -> tuple:
    return tuple(int(x) if x.isdigit() else -1 for x in re.split(r"[.-]", path.name.removeprefix("istio-")))


def find_release(istio_dir: str | None, workdir: Path) -> Release:
    """--istio-dir/ISTIO_DIR, else the release holding istioctl on PATH, else an istio-* folder in the workdir."""
    looked: list[str] = []
    if istio_dir:
        root = Path(istio_dir).expanduser().resolve()
        if (root / CERTS_MAKEFILE).is_file():
            return Release(root)
        raise ConfigError(f"{root} (from --istio-dir/ISTIO_DIR) is not an Istio release: {CERTS_MAKEFILE} is missing",
                          hint="point --istio-dir at an unpacked istio-X.Y.Z folder; " + GET_ISTIO)
    on_path = shutil.which("istioctl")
    if on_path:
        root = Path(on_path).resolve().parent.parent
        if (root / CERTS_MAKEFILE).is_file():
            return Release(root)
        looked.append(f"{root} (the release holding istioctl {on_path}): no {CERTS_MAKEFILE}")
    else:
        looked.append("istioctl on PATH: not found")
    candidates = sorted((p for p in workdir.glob("istio-*") if p.is_dir()), key=_version_key, reverse=True)
    for root in candidates:
        if (root / CERTS_MAKEFILE).is_file():
            return Release(root.resolve())
    looked.append(f"istio-* folders in {workdir}: " + (", ".join(p.name for p in candidates) + f" lack {CERTS_MAKEFILE}" if candidates else "none"))
    raise ConfigError("no Istio release found. Looked at:\n" + "\n".join(f"  - {w}" for w in looked), hint=GET_ISTIO)


def find_istioctl(istio_dir: str | None) -> str | None:
    """istioctl from PATH, else from the release named by --istio-dir/ISTIO_DIR."""
    on_path = shutil.which("istioctl")
    if on_path:
        return on_path
    if istio_dir:
        candidate = Path(istio_dir).expanduser() / "bin" / "istioctl"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate.resolve())
    return None
