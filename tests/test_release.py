"""Finding the Istio release the way a user has it installed."""
import pytest

from lib.errors import ConfigError
from lib.release import Release, find_istioctl, find_release


def _release(path):
    (path / "tools" / "certs").mkdir(parents=True)
    (path / "tools" / "certs" / "Makefile.selfsigned.mk").write_text("")
    (path / "bin").mkdir()
    (path / "bin" / "istioctl").write_text("#!/bin/sh\n")
    (path / "bin" / "istioctl").chmod(0o755)
    return path


def test_istio_dir_wins_over_path_and_workdir(tmp_path, monkeypatch):
    chosen = _release(tmp_path / "chosen")
    on_path = _release(tmp_path / "onpath")
    monkeypatch.setenv("PATH", str(on_path / "bin"))
    assert find_release(str(chosen), tmp_path).root == chosen


def test_release_of_istioctl_on_path_through_symlinks(tmp_path, monkeypatch):
    release = _release(tmp_path / "istio-1.29.0")
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "istioctl").symlink_to(release / "bin" / "istioctl")
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    assert find_release(None, tmp_path / "elsewhere").root == release


def test_newest_istio_folder_in_the_workdir(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    for version in ("1.9.0", "1.28.2", "1.28.10"):
        _release(tmp_path / f"istio-{version}")
    assert find_release(None, tmp_path).root.name == "istio-1.28.10"


def test_nothing_found_lists_where_it_looked(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    (tmp_path / "istio-broken").mkdir()
    with pytest.raises(ConfigError) as info:
        find_release(None, tmp_path)
    assert "istioctl on PATH: not found" in info.value.message
    assert "istio-broken lack tools/certs/Makefile.selfsigned.mk" in info.value.message


def test_istioctl_from_the_release_when_not_on_path(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    release = _release(tmp_path / "istio-1.29.0")
    assert find_istioctl(str(release)) == str(release / "bin" / "istioctl")
    assert find_istioctl(None) is None


def test_a_releases_version_comes_from_its_manifest_else_its_folder_name(tmp_path):
    release = tmp_path / "my-istio"
    release.mkdir()
    (release / "manifest.yaml").write_text("dependencies: {}\nversion: 1.30.3\ndocker: docker.io/istio\n")
    assert Release(release).version == "1.30.3"
    assert Release(tmp_path / "istio-1.29.0").version == "1.29.0"
    assert Release(tmp_path / "elsewhere").version is None
