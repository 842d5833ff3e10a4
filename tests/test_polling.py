"""SETUP_MESH_POLL_INTERVAL: one setting for every wait, read in lib/polling.py; refused at start when bad."""
from __future__ import annotations

import subprocess
import sys

import pytest

from lib import polling
from lib.errors import ConfigError
from tests.meshkit import ROOT
from tests.sandbox import apiserver


def test_each_wait_keeps_its_default_unless_the_interval_is_set(monkeypatch):
    monkeypatch.delenv(polling.ENV, raising=False)
    assert (polling.interval(1.0), polling.interval(2.0)) == (1.0, 2.0)
    monkeypatch.setenv(polling.ENV, "0.25")
    assert (polling.interval(1.0), polling.interval(2.0)) == (0.25, 0.25)
    polling.check()


@pytest.mark.parametrize("value", ["soon", "0", "-1", "nan", "inf", "7200"])
def test_a_bad_interval_is_refused(monkeypatch, value):
    monkeypatch.setenv(polling.ENV, value)
    with pytest.raises(ConfigError, match=polling.ENV):
        polling.check()


def test_the_cli_refuses_a_bad_interval_before_anything_else(tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "setup_mesh.py"), "apply", "--workdir", str(tmp_path)],
                            env={"PATH": "/usr/bin:/bin", polling.ENV: "soon"}, capture_output=True, text=True,
                            timeout=60, stdin=subprocess.DEVNULL)
    assert result.returncode == 2
    assert f"{polling.ENV}='soon' is not a number of seconds" in result.stderr and "hint:" in result.stderr
    assert "Traceback" not in result.stderr
    assert list(tmp_path.iterdir()) == [], "nothing was written"


def test_the_emulators_mesh_retry_follows_the_interval(monkeypatch):
    monkeypatch.delenv(apiserver.POLL_ENV, raising=False)
    assert apiserver._mesh_retry() == apiserver.MESH_RETRY == 1.0
    monkeypatch.setenv(apiserver.POLL_ENV, "0.2")
    assert apiserver._mesh_retry() == 0.2
