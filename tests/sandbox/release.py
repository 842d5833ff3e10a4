"""A stand-in unpacked Istio release for tests.

`materialize_release(dest)` lays out ``dest/istio-<VERSION>/`` the way an unpacked
release tarball looks (bin/istioctl, tools/certs, samples/multicluster, manifests/profiles,
manifest.yaml). bin/istioctl is a Python program that drives the emulated clusters; its
shebang is pointed at the interpreter that runs the tests, so it finds the same packages.
Every istioctl invocation is recorded in ``dest/istioctl-calls.jsonl`` (see
release_template/README-standin.md).

The release's bin/istioctl is a small launcher (``LAUNCHER``): it runs the template's program
(release_template/bin/istioctl, a few thousand lines) as a module, so that Python compiles it once
into the template's ``bin/__pycache__`` instead of at every call, with ``__file__`` set to the
release's own bin/istioctl (the program finds its release, and records its calls, from there).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

VERSION = "1.29.0"

TEMPLATE = Path(__file__).resolve().parent / "release_template"

# Files of the template that only document the stand-in itself; not part of a release.
_NOT_COPIED = {"README-standin.md"}

_EXECUTABLES = ("bin/istioctl", "samples/multicluster/gen-eastwest-gateway.sh")

LAUNCHER = '''#!{python}
"""istioctl {version} stand-in: runs {source} with this file as its __file__."""
import importlib.machinery
import importlib.util
import os
import sys

_loader = importlib.machinery.SourceFileLoader("istioctl_standin", {source!r})  # byte-compiled once, cached
_module = importlib.util.module_from_spec(importlib.util.spec_from_loader(_loader.name, _loader))
_module.__file__ = os.path.abspath(__file__)
sys.modules[_loader.name] = _module
_loader.exec_module(_module)
sys.exit(_module.main(sys.argv[1:]))
'''


def release_dir(dest_parent: Path) -> Path:
    return Path(dest_parent) / f"istio-{VERSION}"


def calls_file(dest_parent: Path) -> Path:
    """Where bin/istioctl of a release under dest_parent records its invocations."""
    return Path(dest_parent) / "istioctl-calls.jsonl"


def materialize_release(dest_parent: Path, python: str = sys.executable) -> Path:
    """Copy the template to dest_parent/istio-<VERSION>/ and return that folder.

    Idempotent: running it again refreshes the files (and the istioctl shebang) in place.
    """
    dest = release_dir(dest_parent)
    dest.mkdir(parents=True, exist_ok=True)
    for src in sorted(TEMPLATE.rglob("*")):
        rel = src.relative_to(TEMPLATE)
        if rel.as_posix() in _NOT_COPIED or "__pycache__" in rel.parts:
            continue
        target = dest / rel
        if src.is_dir():
            target.mkdir(parents=True, exist_ok=True)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        if rel.as_posix() == "bin/istioctl":
            _write_if_changed(target, LAUNCHER.format(python=python, version=VERSION, source=str(src)))
        else:
            _write_if_changed(target, src.read_text())
    for rel in _EXECUTABLES:
        path = dest / rel
        path.chmod(path.stat().st_mode | 0o111)
    return dest


def _write_if_changed(path: Path, text: str) -> None:
    if path.exists() and path.read_text() == text:
        return
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    mode = path.stat().st_mode if path.exists() else 0o644
    os.chmod(tmp, mode & 0o7777)
    os.replace(tmp, path)
