"""A stand-in unpacked Istio release for tests.

`materialize_release(dest, version=...)` lays out ``dest/istio-<version>/`` the way an unpacked
release tarball looks (bin/istioctl, tools/certs, samples/multicluster, manifests/profiles,
manifest.yaml). bin/istioctl is a Python program that drives the emulated clusters; its
shebang is pointed at the interpreter that runs the tests, so it finds the same packages.
Every istioctl invocation is recorded in ``dest/istioctl-calls.jsonl`` (see
release_template/README-standin.md). `archive_release` packs it as Istio publishes a release:
``istio-<version>-linux-amd64.tar.gz`` and its ``.sha256``.

The version is the one istioctl reports and installs (image tags); what differs between the
versions setup-mesh supports is decided from it where Istio decides it: the ``remote-clusters``
table (bin/istioctl) and which root bundles istiod takes (istiodca.py, from the istiod image tag).
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import sys
import sysconfig
import tarfile
from pathlib import Path

from tests.sandbox import standinserver

VERSION = "1.30.3"  # the default: the newest stable release (1.29 reached its end of life on 2026-10-15)
SUPPORTED_MINORS = ((1, 28), (1, 29), (1, 30), (1, 31))
ARCHIVE_SUFFIX = "-linux-amd64.tar.gz"

TEMPLATE = Path(__file__).resolve().parent / "release_template"

# Files of the template that only document the stand-in itself; not part of a release.
_NOT_COPIED = {"README-standin.md"}
STANDIN_MODULE = "_istioctl_standin"  # bin/<this>.py: the stand-in's program, which bin/istioctl runs
_LAUNCHER = f"""import os
import sys

HERE = os.path.dirname(os.path.realpath(__file__))


def served():
    # The test process's stand-in server (tests/sandbox/standinserver.py) runs the call in a child of its
    # own, with this process's argv, environment, folder, stdin, stdout and stderr; None: run it here.
    address = os.environ.get("{standinserver.ENV}") if {{served!r}} else None
    if not address:
        return None
    import _socket
    import marshal
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_SEQPACKET)
    request = marshal.dumps((os.path.join(HERE, "{STANDIN_MODULE}.py"), sys.argv[1:], dict(os.environ), os.getcwd()))
    fds = b"".join(fd.to_bytes(4, sys.byteorder) for fd in (0, 1, 2))
    try:
        sock.connect(address)
        sock.sendmsg([request], [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, fds)])
    except OSError:
        sock.close()
        return None
    import _signal
    _signal.signal(_signal.SIGINT, _signal.SIG_DFL)  # an interrupt ends this process, and so the call
    answer = sock.recv(64).decode().split()
    if not answer or answer[0] == "signal":  # the call was killed: so is this process
        os.kill(os.getpid(), int(answer[1]) if answer else 9)
    return int(answer[0])


status = served()
if status is not None:
    sys.exit(status)
sys.path.insert(0, HERE)
sys.path.extend(p for p in {{site_dirs!r}} if p not in sys.path)
from {STANDIN_MODULE} import main  # noqa: E402

sys.exit(main(sys.argv[1:]))
"""


def _launcher(python: str) -> str:
    """bin/istioctl: the stand-in module run by ``python``. Run by the tests' own interpreter, it starts without
    the site module (-S), whose processing of the installed packages' .pth files (an editable install's
    finder, say) costs more CPU than the stand-in's own start, and is given the package folders it imports
    from (PyYAML) instead."""
    if python != sys.executable:
        return f"#!{python}\n" + _LAUNCHER.format(site_dirs=(), served=False)
    paths = sysconfig.get_paths()
    return f"#!{python} -S\n" + _LAUNCHER.format(site_dirs=tuple(dict.fromkeys((paths["purelib"], paths["platlib"]))),
                                                 served=True)

# Files that name the release's version (the template is written at VERSION).
_VERSIONED = {"bin/istioctl", "manifest.yaml"}

_EXECUTABLES = ("bin/istioctl", "samples/multicluster/gen-eastwest-gateway.sh")

def check_version(version: str) -> str:
    """X.Y.Z (or X.Y.Z-rc.N, -beta.N, -alpha.N) of a supported minor; ValueError otherwise."""
    match = re.fullmatch(r"(\d+)\.(\d+)\.(\d+)(-(alpha|beta|rc)\.\d+)?", version or "")
    if not match:
        raise ValueError(f"{version!r} is not an Istio version (X.Y.Z, e.g. {VERSION})")
    if (int(match.group(1)), int(match.group(2))) not in SUPPORTED_MINORS:
        known = ", ".join(f"{a}.{b}.x" for a, b in SUPPORTED_MINORS)
        raise ValueError(f"the stand-in release is made at {known}, not {version}")
    return version


def release_dir(dest_parent: Path, version: str = VERSION) -> Path:
    return Path(dest_parent) / f"istio-{version}"


def calls_file(dest_parent: Path) -> Path:
    """Where bin/istioctl of a release under dest_parent records its invocations."""
    return Path(dest_parent) / "istioctl-calls.jsonl"


def materialize_release(dest_parent: Path, python: str = sys.executable, version: str = VERSION) -> Path:
    """Copy the template to dest_parent/istio-<version>/ and return that folder.

    Idempotent: running it again refreshes the files (and the istioctl shebang) in place.
    """
    version = check_version(version)
    dest = release_dir(dest_parent, version)
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
            # The program as a module beside a small launcher: Python caches an imported module's bytecode
            # (bin/__pycache__/), while a script is compiled again on every call.
            text = src.read_text()
            first, _, rest = text.partition("\n")
            if first.startswith("#!"):
                text = rest
            _write_if_changed(target.with_name(STANDIN_MODULE + ".py"), _at_version(text, version))
            _write_if_changed(target, _launcher(python))
        else:
            _write_if_changed(target, _at_version(src.read_text(), version) if rel.as_posix() in _VERSIONED else src.read_text())
    for rel in _EXECUTABLES:
        path = dest / rel
        path.chmod(path.stat().st_mode | 0o111)
    return dest


def _at_version(text: str, version: str) -> str:
    """The template's text as release ``version`` has it: istioctl's built-in version, the manifest's
    version and release branches."""
    minor = ".".join(version.split(".")[:2])
    text = re.sub(r'(?m)^VERSION = "[^"]*"', f'VERSION = "{version}"', text)
    text = re.sub(r"(?m)^version: .*$", f"version: {version}", text)
    return re.sub(r"branch: release-\d+\.\d+", f"branch: release-{minor}", text)


def archive_release(dest_parent: Path, version: str = VERSION, python: str = sys.executable) -> tuple[Path, Path]:
    """dest_parent/istio-<version>/ packed as istio-<version>-linux-amd64.tar.gz (one top folder,
    istio-<version>/, as the published archives) and its .sha256: "<hex> <name>", the line Istio's
    release-builder writes (pkg/util/files.go CreateSha); `sha256sum -c` accepts it."""
    folder = materialize_release(dest_parent, python=python, version=version)
    archive = Path(dest_parent) / f"istio-{version}{ARCHIVE_SUFFIX}"
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for path in sorted([folder, *folder.rglob("*")]):
            if "__pycache__" in path.parts:
                continue
            info = tar.gettarinfo(str(path), arcname=path.relative_to(folder.parent).as_posix())
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            if info.isfile():
                with open(path, "rb") as fh:
                    tar.addfile(info, fh)
            else:
                tar.addfile(info)
    archive.write_bytes(buffer.getvalue())
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    checksum = archive.with_name(archive.name + ".sha256")
    checksum.write_text(f"{digest} {archive.name}\n")
    return archive, checksum


def _write_if_changed(path: Path, text: str) -> None:
    if path.exists() and path.read_text() == text:
        return
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    mode = path.stat().st_mode if path.exists() else 0o644
    os.chmod(tmp, mode & 0o7777)
    os.replace(tmp, path)
