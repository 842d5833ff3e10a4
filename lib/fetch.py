"""Fetching a pinned Istio release: download its archive and .sha256, verify, unpack into the workspace once.

Istio publishes every release on GitHub as ``istio-<v>-<os>-<arch>.tar.gz`` beside ``<same>.sha256``, a line
``<hex> <file name>`` (istio/release-builder pkg/build/archive.go and pkg/util/files.go), and the archive holds one
folder, ``istio-<v>/``. Istio's own download script checks no checksum; here nothing is unpacked until the
archive's sha256 matches, and the unpacked folder appears in the workspace only complete (unpacked aside, then
renamed), so an interrupted or refused fetch leaves nothing a later run could mistake for a release.
"""
from __future__ import annotations

import hashlib
import os
import platform
import re
import shutil
import tarfile
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterator
from urllib.parse import urlparse

from .errors import ConfigError, MeshError
from .release import CERTS_MAKEFILE, Release, find_release
from .reporter import Reporter
from .versions import end_of_life_note

GITHUB_RELEASES = "https://github.com/istio/istio/releases/download"
MIRROR_ENV = "SETUP_MESH_ISTIO_MIRROR"
RELEASES_FOLDER = "istio"  # <workspace>/istio/istio-<v>/
CHUNK = 256 * 1024
# A download and an unpacking in progress: hidden names ending so, with the fetching process's id in them.
PARTIAL, ASIDE = ".part", ".unpacking"
HTTP_TIMEOUT = 60.0


class FetchError(MeshError):
    """A release could not be fetched or was refused; nothing was unpacked and no cluster touched."""


def platform_suffix(system: str | None = None, machine: str | None = None) -> str:
    """The archive suffix for this machine, as Istio's download script chooses it
    (release/downloadIstioCandidate.sh): Darwin is `osx` (`osx-arm64` on Apple silicon), else
    linux-<amd64|arm64|armv7>."""
    system = system or platform.system()
    machine = (machine or platform.machine()).lower()
    if machine in ("x86_64", "amd64"):
        arch = "amd64"
    elif machine in ("aarch64", "arm64") or machine.startswith("armv8"):
        arch = "arm64"
    elif machine.startswith("armv"):
        arch = "armv7"
    else:
        raise ConfigError(f"Istio publishes no release for this machine's architecture ({machine})",
                          hint="unpack a release by hand and pass it with --istio-dir")
    if system == "Darwin":
        return "osx-arm64" if arch == "arm64" else "osx"
    return f"linux-{arch}"


def archive_name(version: str, suffix: str | None = None) -> str:
    return f"istio-{version}-{suffix or platform_suffix()}.tar.gz"


def releases_dir(workdir: Path) -> Path:
    return workdir / RELEASES_FOLDER


def cached_release(workdir: Path, version: str) -> Release | None:
    """The release unpacked in the workspace by an earlier fetch, if there is one."""
    root = releases_dir(workdir) / f"istio-{version}"
    return Release(root.resolve()) if (root / CERTS_MAKEFILE).is_file() else None


# --- where archives come from ---------------------------------------------------------------------

@dataclass(frozen=True)
class Source:
    """GitHub's releases, or a mirror: an http(s) server or a local folder holding the same file names."""

    location: str  # a URL prefix (without the version for GitHub) or a folder
    origin: str  # what chose it, for messages: "--istio-mirror", MIRROR_ENV, or "Istio's GitHub releases"
    is_folder: bool = False
    is_github: bool = False

    def where(self, version: str, name: str) -> str:
        if self.is_folder:
            return str(Path(self.location) / name)
        if self.is_github:
            return f"{self.location}/{version}/{name}"
        return f"{self.location.rstrip('/')}/{name}"

    @contextmanager
    def open(self, version: str, name: str, timeout: float) -> Iterator[tuple[BinaryIO, int | None]]:
        """The file's bytes and, when known, its size."""
        where = self.where(version, name)
        if self.is_folder:
            try:
                handle = open(where, "rb")
            except FileNotFoundError:
                raise FetchError(f"{name} is not in the mirror folder {self.location} (from {self.origin})",
                                 hint=self.hint(version, name)) from None
            except OSError as exc:
                raise FetchError(f"cannot read {where}: {exc.strerror}", hint=self.hint(version, name)) from None
            with handle:
                yield handle, os.fstat(handle.fileno()).st_size
            return
        import urllib.error  # here: it loads http, ssl and email, a tenth of every command's start-up
        import urllib.request

        request = urllib.request.Request(where, headers={"User-Agent": "setup-mesh"})
        try:
            response = urllib.request.urlopen(request, timeout=timeout)  # noqa: S310 - http(s) only, checked above
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                raise FetchError(f"{where} was not found (HTTP 404)",
                                 hint=f"check that Istio {version} exists and is published for this machine "
                                      f"({name}); " + self.hint(version, name)) from None
            raise FetchError(f"{where} answered HTTP {exc.code} {exc.reason}", hint=self.hint(version, name)) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise FetchError(f"cannot reach {urlparse(where).netloc} for {name} ({self.origin}): {reason}",
                             hint=self.hint(version, name)) from None
        with response:
            length = response.headers.get("Content-Length")
            yield response, int(length) if length and length.isdigit() else None

    def hint(self, version: str, name: str) -> str:
        """How to get the release another way, for every failure to fetch it."""
        return (f"without access to {'GitHub' if self.is_github else 'it'}, point --istio-mirror (or {MIRROR_ENV}) "
                f"at an internal http(s) server or a folder holding {name} and {name}.sha256, or pass an unpacked "
                f"istio-{version} with --istio-dir")


def choose_source(mirror: str | None) -> Source:
    """--istio-mirror, else SETUP_MESH_ISTIO_MIRROR, else Istio's GitHub releases."""
    origin = "--istio-mirror"
    if not mirror:
        mirror, origin = os.environ.get(MIRROR_ENV) or None, MIRROR_ENV
    if not mirror:
        return Source(GITHUB_RELEASES, "Istio's GitHub releases", is_github=True)
    parsed = urlparse(mirror)
    if parsed.scheme in ("http", "https") and parsed.netloc:
        return Source(mirror, origin)
    if parsed.scheme == "file":
        return Source(parsed.path, origin, is_folder=True)
    if parsed.scheme and len(parsed.scheme) > 1:  # (a Windows drive letter is no scheme)
        raise ConfigError(f"{origin} {mirror}: setup-mesh reads releases over http(s) or from a folder, not {parsed.scheme}:",
                          hint="give an http:// or https:// URL, or the path of a folder holding the release archives")
    folder = Path(mirror).expanduser()
    if not folder.is_dir():
        raise ConfigError(f"{origin} {mirror}: no such folder",
                          hint="give the folder holding istio-<version>-<os>-<arch>.tar.gz and its .sha256, or an "
                               "http(s) URL")
    return Source(str(folder.resolve()), origin, is_folder=True)


# --- fetch, verify, unpack --------------------------------------------------------------------------

def fetch_release(version: str, workdir: Path, source: Source, reporter: Reporter,
                  timeout: float = HTTP_TIMEOUT, suffix: str | None = None) -> Release:
    """The release ``version`` unpacked in the workspace: the earlier fetch's, else downloaded now."""
    found = cached_release(workdir, version)
    if found:
        return found
    name = archive_name(version, suffix)
    expected = _expected_digest(source, version, name, timeout)
    folder = releases_dir(workdir)
    made = [p for p in (folder, *folder.parents) if not p.exists()]  # deepest first
    folder.mkdir(parents=True, exist_ok=True)
    _remove_leftovers(folder)
    reporter.info(f"fetching Istio {version}: {source.where(version, name)}")
    handle, partial = tempfile.mkstemp(prefix=f".{name}.{os.getpid()}.", suffix=PARTIAL, dir=folder)
    try:
        with os.fdopen(handle, "wb") as out:
            digest = _download(source, version, name, out, reporter, timeout)
        if digest != expected:
            raise FetchError(f"{name} from {source.where(version, name)} does not match its .sha256 (expected "
                             f"{expected}, got {digest}): refused, nothing was unpacked",
                             hint="the download is damaged or the mirror holds another file under that name; run again, "
                                  f"or check the mirror's copy against Istio's GitHub release of {version}")
        root = _unpack(Path(partial), name, version, folder)
    finally:
        Path(partial).unlink(missing_ok=True)
        for path in made:  # a refused first fetch leaves the workspace as it was
            if path.is_dir() and not any(path.iterdir()):
                path.rmdir()
    reporter.info(f"verified sha256 of {name}; unpacked into {root}")
    return Release(root.resolve())


def _remove_leftovers(folder: Path) -> None:
    """What a fetch killed mid-way left (a partial download, a half-unpacked folder): removed, unless the process
    that made it is still running (another run fetching at the same time)."""
    for path in folder.glob(".*"):
        match = re.fullmatch(rf"\..+\.(\d+)\.[^.]+({re.escape(PARTIAL)}|{re.escape(ASIDE)})", path.name)
        if not match or _running(int(match.group(1))):
            continue
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _expected_digest(source: Source, version: str, name: str, timeout: float) -> str:
    """The hex digest the .sha256 names for ``name`` (`<hex> <name>`, `<hex>  <name>` or `<hex> *<name>`)."""
    with source.open(version, name + ".sha256", timeout) as (stream, _):
        text = stream.read(4096).decode("utf-8", "replace")
    match = re.match(r"\s*([0-9a-fA-F]{64})(?:\s+\*?(\S+))?\s*$", text)
    if not match or (match.group(2) and os.path.basename(match.group(2)) != name):
        raise FetchError(f"{source.where(version, name + '.sha256')} is not the checksum of {name}: {text.strip()[:120]!r}",
                         hint="the file should read `<sha256 hex> " + name + "`; check the mirror's copy")
    return match.group(1).lower()


def _download(source: Source, version: str, name: str, out: BinaryIO, reporter: Reporter, timeout: float) -> str:
    digest = hashlib.sha256()
    with source.open(version, name, timeout) as (stream, size):
        with reporter.transfer(f"downloading {name}", size) as advance:
            while True:
                try:
                    chunk = stream.read(CHUNK)
                except OSError as exc:
                    raise FetchError(f"the download of {name} broke off ({source.origin}): {exc}",
                                     hint=source.hint(version, name)) from None
                if not chunk:
                    break
                digest.update(chunk)
                out.write(chunk)
                advance(len(chunk))
    return digest.hexdigest()


def _unpack(archive: Path, name: str, version: str, folder: Path) -> Path:
    """Unpack aside, check it is the release, then rename it into place (a concurrent fetch may win)."""
    target = folder / f"istio-{version}"
    aside = Path(tempfile.mkdtemp(prefix=f".istio-{version}.{os.getpid()}.", suffix=ASIDE, dir=folder))
    try:
        try:
            with tarfile.open(archive, "r:gz") as tar:
                _check_members(tar, aside)
                if hasattr(tarfile, "data_filter"):
                    tar.extractall(aside, filter="data")
                else:  # Pythons without extraction filters: the members were checked above
                    tar.extractall(aside)  # noqa: S202
        except (tarfile.TarError, OSError, EOFError) as exc:
            raise FetchError(f"cannot unpack {name}: {exc}",
                             hint="the archive matched its checksum but is not a readable release; check the mirror's copy") from None
        unpacked = aside / f"istio-{version}"
        if not (unpacked / CERTS_MAKEFILE).is_file():
            raise FetchError(f"the archive of Istio {version} holds no istio-{version}/{CERTS_MAKEFILE}",
                             hint="it is not an Istio release archive; check the mirror's copy")
        try:
            os.rename(unpacked, target)
        except OSError:
            if not (target / CERTS_MAKEFILE).is_file():
                raise
        return target
    finally:
        shutil.rmtree(aside, ignore_errors=True)


def _check_members(tar: tarfile.TarFile, dest: Path) -> None:
    """Every member lands inside ``dest``: no absolute paths, no `..`, no links pointing out, no devices."""
    base = os.path.realpath(dest)
    for member in tar.getmembers():
        path = os.path.realpath(os.path.join(base, member.name))
        bad = os.path.isabs(member.name) or os.path.commonpath([base, path]) != base
        if member.issym() or member.islnk():
            link = member.linkname if member.islnk() else os.path.join(os.path.dirname(member.name), member.linkname)
            target = os.path.realpath(os.path.join(base, link))
            bad = bad or os.path.isabs(member.linkname) or os.path.commonpath([base, target]) != base
        elif not (member.isfile() or member.isdir()):
            bad = True
        if bad:
            raise FetchError(f"the release archive holds {member.name!r}, which would be written outside its folder: "
                             f"refused, nothing was unpacked",
                             hint="an Istio release archive holds only istio-<version>/...; check where the mirror's copy "
                                  "comes from")


# --- the releases a workspace pins ------------------------------------------------------------------

def pinned_releases(topology, workdir: Path, istio_dir: str | None, mirror: str | None, reporter: Reporter,
                    dry_run: bool, notes: list[str]) -> dict[str, Release]:
    """Each release topology.yaml pins, by version: --istio-dir's when it is one of them (checked), the others
    from the workspace or fetched now. A dry run fetches nothing: it notes what apply would fetch."""
    versions = topology.istio_versions
    if not versions:
        return {}
    for version in versions:
        note = end_of_life_note(version)
        if note:
            reporter.warn(f"{topology.path}: {note}")
    releases: dict[str, Release] = {}
    if istio_dir:
        given = checked_istio_dir(istio_dir, versions, str(topology.path))
        releases[given.version] = given
    missing = [v for v in versions if v not in releases]
    source = choose_source(mirror) if missing else None
    for version in missing:
        found = cached_release(workdir, version)
        if found:
            releases[version] = found
        elif dry_run:
            notes.append(f"Istio {version} is not in {releases_dir(workdir)} yet: apply fetches "
                         f"{source.where(version, archive_name(version))} and checks its sha256")
        else:
            releases[version] = fetch_release(version, workdir, source, reporter)
    return releases


def checked_istio_dir(istio_dir: str, versions: list[str], pinned_in: str) -> Release:
    """--istio-dir's release, refused unless it is a pinned version (a release of another version would install
    that version)."""

    given = find_release(istio_dir, Path("."))
    if given.version not in versions:
        pinned = " and ".join(versions)
        raise ConfigError(f"--istio-dir/ISTIO_DIR {given.root} holds Istio {given.version or 'of unknown version'}, "
                          f"but {pinned_in} pins {pinned}",
                          hint=f"point --istio-dir at an unpacked istio-{versions[0]}, or leave --istio-dir and ISTIO_DIR "
                               f"unset so that setup-mesh fetches the pinned release, or change istio_version")
    return given


def planned_release(topology, workdir: Path) -> Release | None:
    """Where the mesh's pinned release will be once fetched (for a dry run's plan), if one is pinned."""
    versions = topology.istio_versions
    return Release(releases_dir(workdir).resolve() / f"istio-{topology.istio_version or versions[0]}") if versions else None


def mesh_release(topology, releases: dict[str, Release]) -> Release | None:
    """The release of the mesh's own version (the top-level istio_version, else the first pinned): its certs
    Makefile makes the intermediates and its istioctl drives clusters that pin nothing else."""
    versions = topology.istio_versions
    if not versions:
        return None
    return releases.get(topology.istio_version or versions[0])
