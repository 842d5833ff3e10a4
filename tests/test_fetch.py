"""Fetching the pinned Istio release: download, sha256, unpack once, reuse; refusals that leave nothing behind.

Releases are the stand-in's (tests/sandbox/release.py) served from a loopback HTTP server or a folder."""
from __future__ import annotations

import hashlib
import io
import tarfile
from pathlib import Path

import pytest
from rich.console import Console

from lib import fetch
from lib.config import load_topology
from lib.errors import ConfigError, MeshError
from lib.reporter import Reporter
from tests.meshkit import workdir_snapshot
from tests.releaseserver import ClosedPort, publish, serving_a_copy

ARCHIVE = "istio-{}-linux-amd64.tar.gz"


@pytest.fixture(scope="module")
def published(tmp_path_factory) -> Path:
    """A mirror folder holding the stand-in 1.30.3 and 1.31.0 as Istio publishes them."""
    folder = tmp_path_factory.mktemp("published")
    for version in ("1.30.3", "1.31.0"):
        publish(folder, version)
    return folder


@pytest.fixture
def mirror(published, tmp_path):
    with serving_a_copy(published, tmp_path) as server:
        yield server


def _quiet() -> Reporter:
    return Reporter(quiet=True)


def _fetch(version, workdir, source):
    return fetch.fetch_release(version, workdir, source, _quiet(), suffix="linux-amd64")


def test_a_release_is_fetched_verified_unpacked_once_and_reused(mirror, tmp_path):
    workdir = tmp_path / "ws"
    source = fetch.choose_source(mirror.url)
    release = _fetch("1.31.0", workdir, source)
    assert release.root == (workdir / "istio" / "istio-1.31.0").resolve()
    assert release.version == "1.31.0" and release.certs_makefile.is_file() and release.istioctl.is_file()
    assert mirror.requests == [f"/{ARCHIVE.format('1.31.0')}.sha256", f"/{ARCHIVE.format('1.31.0')}"]
    # Only the release is left: no archive, no partial download, no folder unpacked aside.
    assert sorted(p.name for p in (workdir / "istio").iterdir()) == ["istio-1.31.0"]
    again = _fetch("1.31.0", workdir, source)
    assert again.root == release.root
    assert len(mirror.requests) == 2, "the second run must reuse the unpacked release"


def test_a_bad_checksum_is_refused_and_nothing_is_unpacked(mirror, tmp_path):
    checksum = mirror.folder / (ARCHIVE.format("1.31.0") + ".sha256")
    checksum.write_text(f"{hashlib.sha256(b'another file').hexdigest()} {ARCHIVE.format('1.31.0')}\n")
    workdir = tmp_path / "ws"
    workdir.mkdir()
    with pytest.raises(MeshError) as info:
        _fetch("1.31.0", workdir, fetch.choose_source(mirror.url))
    assert "does not match its .sha256" in info.value.message and "nothing was unpacked" in info.value.message
    assert list(workdir.iterdir()) == [], "a refused fetch leaves the workspace as it was"
    assert mirror.downloads() == [f"/{ARCHIVE.format('1.31.0')}"]


def test_a_checksum_of_another_file_is_refused(mirror, tmp_path):
    checksum = mirror.folder / (ARCHIVE.format("1.31.0") + ".sha256")
    digest = checksum.read_text().split()[0]
    checksum.write_text(f"{digest} {ARCHIVE.format('1.30.3')}\n")
    with pytest.raises(MeshError) as info:
        _fetch("1.31.0", tmp_path / "ws", fetch.choose_source(mirror.url))
    assert "is not the checksum of" in info.value.message
    assert mirror.downloads() == [] and not (tmp_path / "ws").exists()


def test_an_unreachable_mirror_is_refused_naming_the_mirror_option(tmp_path):
    with ClosedPort() as url:
        with pytest.raises(MeshError) as info:
            _fetch("1.31.0", tmp_path / "ws", fetch.choose_source(url))
    assert f"cannot reach {url.removeprefix('http://')}" in info.value.message
    assert "--istio-mirror" in info.value.hint and fetch.MIRROR_ENV in info.value.hint
    assert not (tmp_path / "ws").exists()


def test_a_version_the_mirror_lacks_names_the_url(mirror, tmp_path):
    with pytest.raises(MeshError) as info:
        _fetch("1.29.6", tmp_path / "ws", fetch.choose_source(mirror.url))
    assert info.value.message == f"{mirror.url}/{ARCHIVE.format('1.29.6')}.sha256 was not found (HTTP 404)"
    assert "Istio 1.29.6" in info.value.hint


def test_a_local_folder_is_a_mirror(published, tmp_path, monkeypatch):
    monkeypatch.setenv(fetch.MIRROR_ENV, str(published))
    source = fetch.choose_source(None)
    assert source.is_folder and source.origin == fetch.MIRROR_ENV
    release = _fetch("1.30.3", tmp_path / "ws", source)
    assert release.version == "1.30.3" and release.certs_makefile.is_file()
    # file:// names a folder too
    assert fetch.choose_source(published.as_uri()).is_folder


def test_a_mirror_folder_without_the_release_names_the_option(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(MeshError) as info:
        _fetch("1.31.0", tmp_path / "ws", fetch.choose_source(str(tmp_path / "empty")))
    assert "is not in the mirror folder" in info.value.message and "(from --istio-mirror)" in info.value.message
    with pytest.raises(ConfigError) as missing:
        fetch.choose_source(str(tmp_path / "nowhere"))
    assert missing.value.message == f"--istio-mirror {tmp_path / 'nowhere'}: no such folder"


def test_without_a_mirror_releases_come_from_istios_github(monkeypatch):
    monkeypatch.delenv(fetch.MIRROR_ENV, raising=False)
    source = fetch.choose_source(None)
    assert source.where("1.30.3", ARCHIVE.format("1.30.3")) == (
        "https://github.com/istio/istio/releases/download/1.30.3/istio-1.30.3-linux-amd64.tar.gz")


def test_the_option_wins_over_the_environment(published, tmp_path, monkeypatch):
    monkeypatch.setenv(fetch.MIRROR_ENV, str(tmp_path / "elsewhere"))
    assert fetch.choose_source(str(published)).location == str(published.resolve())


@pytest.mark.parametrize("system,machine,suffix", [
    ("Linux", "x86_64", "linux-amd64"), ("Linux", "aarch64", "linux-arm64"), ("Linux", "armv7l", "linux-armv7"),
    ("Darwin", "x86_64", "osx"), ("Darwin", "arm64", "osx-arm64")])
def test_the_archive_for_this_machine(system, machine, suffix):
    assert fetch.platform_suffix(system, machine) == suffix


def _archive_with(folder: Path, version: str, members: dict[str, bytes | str]) -> None:
    """An archive named like a release, holding ``members`` (name -> bytes, or "->target" for a symlink), with
    a matching .sha256: only the unpacking can refuse it."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, content in members.items():
            info = tarfile.TarInfo(name)
            if isinstance(content, str):
                info.type, info.linkname = tarfile.SYMTYPE, content.removeprefix("->")
                tar.addfile(info)
            else:
                info.size = len(content)
                tar.addfile(info, io.BytesIO(content))
    name = ARCHIVE.format(version)
    (folder / name).write_bytes(buffer.getvalue())
    (folder / f"{name}.sha256").write_text(f"{hashlib.sha256(buffer.getvalue()).hexdigest()} {name}\n")


@pytest.mark.parametrize("members", [
    {"istio-1.31.0/tools/certs/Makefile.selfsigned.mk": b"", "istio-1.31.0/../../escaped": b"x"},
    {"istio-1.31.0/tools/certs/Makefile.selfsigned.mk": b"", "istio-1.31.0/link": "->../../..",
     "istio-1.31.0/link/escaped": b"x"},
])
def test_an_archive_writing_outside_its_folder_is_refused(tmp_path, members):
    (tmp_path / "mirror").mkdir()
    _archive_with(tmp_path / "mirror", "1.31.0", members)
    workdir = tmp_path / "deep" / "er" / "ws"
    workdir.mkdir(parents=True)
    with pytest.raises(MeshError) as info:
        _fetch("1.31.0", workdir, fetch.choose_source(str(tmp_path / "mirror")))
    assert "would be written outside its folder: refused" in info.value.message
    assert not list(tmp_path.rglob("escaped")) and list(workdir.iterdir()) == []


def test_an_archive_that_is_no_release_is_refused(tmp_path):
    (tmp_path / "mirror").mkdir()
    _archive_with(tmp_path / "mirror", "1.31.0", {"something/else": b"x"})
    with pytest.raises(MeshError) as info:
        _fetch("1.31.0", tmp_path / "ws", fetch.choose_source(str(tmp_path / "mirror")))
    assert "holds no istio-1.31.0/tools/certs/Makefile.selfsigned.mk" in info.value.message
    assert not (tmp_path / "ws").exists()


# --- what a workspace pins --------------------------------------------------------------------------

def _topology(tmp_path, text):
    (tmp_path / "ws").mkdir(exist_ok=True)
    path = tmp_path / "ws" / "topology.yaml"
    path.write_text(text)
    return load_topology(path)


def test_every_pinned_version_is_fetched_a_context_override_too(mirror, tmp_path, monkeypatch):
    monkeypatch.setattr(fetch, "platform_suffix", lambda *a: "linux-amd64")
    topology = _topology(tmp_path, "mesh_id: m\nistio_version: 1.30.3\ncontexts:\n  c1:\n    network: n1\n"
                                   "  c2:\n    network: n1\n    istio_version: 1.31.0\n")
    releases = fetch.pinned_releases(topology, tmp_path / "ws", None, mirror.url, _quiet(), False, [])
    assert {v: r.version for v, r in releases.items()} == {"1.30.3": "1.30.3", "1.31.0": "1.31.0"}
    assert fetch.mesh_release(topology, releases).version == "1.30.3"


def test_a_dry_run_fetches_nothing_and_says_what_apply_would(mirror, tmp_path, monkeypatch):
    monkeypatch.setattr(fetch, "platform_suffix", lambda *a: "linux-amd64")
    topology = _topology(tmp_path, "mesh_id: m\nistio_version: 1.31.0\ncontexts:\n  c1:\n    network: n1\n")
    notes: list[str] = []
    assert fetch.pinned_releases(topology, tmp_path / "ws", None, mirror.url, _quiet(), True, notes) == {}
    assert notes == [f"Istio 1.31.0 is not in {tmp_path / 'ws' / 'istio'} yet: apply fetches "
                     f"{mirror.url}/{ARCHIVE.format('1.31.0')} and checks its sha256"]
    assert mirror.requests == [] and not (tmp_path / "ws" / "istio").exists()


def test_istio_dir_wins_when_it_holds_the_pinned_version(published, tmp_path):
    from tests.sandbox.release import materialize_release

    given = materialize_release(tmp_path / "given", version="1.31.0")
    topology = _topology(tmp_path, "mesh_id: m\nistio_version: 1.31.0\ncontexts:\n  c1:\n    network: n1\n")
    releases = fetch.pinned_releases(topology, tmp_path / "ws", str(given), None, _quiet(), False, [])
    assert releases["1.31.0"].root == given.resolve() and not (tmp_path / "ws" / "istio").exists()


def test_istio_dir_of_another_version_is_refused(tmp_path):
    from tests.sandbox.release import materialize_release

    given = materialize_release(tmp_path / "given", version="1.30.3")
    topology = _topology(tmp_path, "mesh_id: m\nistio_version: 1.31.0\ncontexts:\n  c1:\n    network: n1\n")
    before = workdir_snapshot(tmp_path / "ws")
    with pytest.raises(ConfigError) as info:
        fetch.pinned_releases(topology, tmp_path / "ws", str(given), None, _quiet(), False, [])
    assert info.value.message == (f"--istio-dir/ISTIO_DIR {given.resolve()} holds Istio 1.30.3, but "
                                  f"{topology.path} pins 1.31.0")
    assert "istio-1.31.0" in info.value.hint and info.value.exit_code == 2
    assert workdir_snapshot(tmp_path / "ws") == before


def test_a_download_shows_progress_on_a_terminal(published, tmp_path):
    err = io.StringIO()
    reporter = Reporter(console=Console(file=io.StringIO()), err_console=Console(file=err, force_terminal=True,
                                                                                 width=120))
    fetch.fetch_release("1.31.0", tmp_path / "ws", fetch.choose_source(str(published)), reporter,
                        suffix="linux-amd64")
    assert f"downloading {ARCHIVE.format('1.31.0')}" in err.getvalue()
    size = (published / ARCHIVE.format("1.31.0")).stat().st_size
    done = f"{size / 1000:.1f}/{size / 1000:.1f} kB"  # the bar's byte count at the end: every byte counted
    assert done in err.getvalue(), err.getvalue()


def test_off_a_terminal_a_fetch_is_two_plain_lines(published, tmp_path, capsys):
    workdir = tmp_path / "ws"
    fetch.fetch_release("1.31.0", workdir, fetch.choose_source(str(published)), Reporter(), suffix="linux-amd64")
    out, err = capsys.readouterr()
    assert out.splitlines() == [f"fetching Istio 1.31.0: {published / ARCHIVE.format('1.31.0')}",
                                f"verified sha256 of {ARCHIVE.format('1.31.0')}; unpacked into "
                                f"{workdir / 'istio' / 'istio-1.31.0'}"]
    assert err == ""


def test_a_pinned_release_past_its_end_of_life_is_warned_about(tmp_path, monkeypatch):
    from tests.sandbox.release import materialize_release

    given = materialize_release(tmp_path / "given", version="1.29.6")
    topology = _topology(tmp_path, "mesh_id: m\nistio_version: 1.29.6\ncontexts:\n  c1:\n    network: n1\n")
    reporter = Reporter(quiet=True, err_console=Console(file=io.StringIO()))
    fetch.pinned_releases(topology, tmp_path / "ws", str(given), None, reporter, False, [])
    assert reporter.warnings == [f"{topology.path}: Istio 1.29 reached its end of life on 2026-10-15 and gets no "
                                 f"more security fixes: move the mesh to a release Istio still supports"]
    current = _topology(tmp_path, "mesh_id: m\nistio_version: 1.30.3\ncontexts:\n  c1:\n    network: n1\n")
    reporter.warnings.clear()
    fetch.pinned_releases(current, tmp_path / "ws", str(materialize_release(tmp_path / "g2")), None, reporter,
                          False, [])
    assert reporter.warnings == []


def test_the_sandbox_publishes_a_release_as_istio_does_and_it_fetches(tmp_path):
    import subprocess
    import sys

    root = Path(__file__).resolve().parent.parent
    out = tmp_path / "releases"
    made = subprocess.run([sys.executable, "-m", "tests.sandbox", "release", "--version", "1.29.6", "--out", str(out)],
                          cwd=root, capture_output=True, text=True, timeout=120)
    assert made.returncode == 0, made.stderr
    name = ARCHIVE.format("1.29.6")
    assert sorted(p.name for p in out.iterdir()) == ["istio-1.29.6", name, f"{name}.sha256"]
    digest = hashlib.sha256((out / name).read_bytes()).hexdigest()
    assert (out / f"{name}.sha256").read_text() == f"{digest} {name}\n"
    with tarfile.open(out / name) as tar:
        assert {m.name.split("/")[0] for m in tar.getmembers()} == {"istio-1.29.6"}
    release = _fetch("1.29.6", tmp_path / "ws", fetch.choose_source(str(out)))
    assert release.version == "1.29.6" and release.istioctl.is_file()
    refused = subprocess.run([sys.executable, "-m", "tests.sandbox", "release", "--version", "1.27.0", "--out",
                              str(tmp_path / "old")], cwd=root, capture_output=True, text=True, timeout=120)
    assert refused.returncode != 0 and not (tmp_path / "old" / ARCHIVE.format("1.27.0")).exists()


def test_a_mirror_of_another_scheme_is_refused_as_bad_input():
    with pytest.raises(ConfigError) as info:
        fetch.choose_source("ftp://mirror.example/istio")
    assert info.value.message == ("--istio-mirror ftp://mirror.example/istio: setup-mesh reads releases over http(s) "
                                  "or from a folder, not ftp:")
    assert "http:// or https:// URL" in info.value.hint


def test_an_archive_that_is_not_gzip_is_refused_by_name(tmp_path):
    (tmp_path / "mirror").mkdir()
    name = ARCHIVE.format("1.31.0")
    (tmp_path / "mirror" / name).write_bytes(b"not a tarball")
    (tmp_path / "mirror" / f"{name}.sha256").write_text(f"{hashlib.sha256(b'not a tarball').hexdigest()}  {name}\n")
    with pytest.raises(MeshError) as info:
        _fetch("1.31.0", tmp_path / "ws", fetch.choose_source(str(tmp_path / "mirror")))
    assert info.value.message.startswith(f"cannot unpack {name}: ")
    assert not (tmp_path / "ws").exists()


def test_what_a_killed_fetch_left_is_removed_by_the_next_and_a_running_ones_is_kept(published, tmp_path):
    import os

    folder = tmp_path / "ws" / "istio"
    folder.mkdir(parents=True)
    dead = 4194305  # above Linux's largest process id: no process has it
    name = ARCHIVE.format("1.31.0")
    (folder / f".{name}.{dead}.k3j9x.part").write_bytes(b"half a download")
    (folder / f".istio-1.31.0.{dead}.a8f2q.unpacking" / "istio-1.31.0").mkdir(parents=True)
    alive = folder / f".{name}.{os.getpid()}.zz91p.part"
    alive.write_bytes(b"another run's download")
    _fetch("1.31.0", tmp_path / "ws", fetch.choose_source(str(published)))
    assert sorted(p.name for p in folder.iterdir()) == [alive.name, "istio-1.31.0"]
