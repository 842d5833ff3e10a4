"""The stand-in istioctl run by the test process's server (tests/sandbox/standinserver.py) answers as the
process it stands for: the same output and exit status, the caller's environment and folder, and it dies
with its launcher and its launcher with it."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import types
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.sandbox import standinserver
from tests.sandbox.release import calls_file, materialize_release


@pytest.fixture
def istioctl(tmp_path: Path) -> Path:
    assert standinserver.start(), "the stand-in server did not start"
    return materialize_release(tmp_path) / "bin" / "istioctl"


def _env(served: bool, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != standinserver.ENV and not k.startswith("ISTIOCTL_STANDIN_")}
    if served:
        env[standinserver.ENV] = os.environ[standinserver.ENV]
    return {**env, **extra}


def _calls(istioctl: Path) -> list[dict]:
    path = calls_file(istioctl.parent.parent.parent)
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _await(predicate, what: str, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = predicate()
        if found:
            return found
        time.sleep(0.05)
    pytest.fail(f"no {what} within {timeout:g}s")


@pytest.mark.parametrize("args", [["version", "--remote=false"], ["install", "--help"], ["bogus"],
                                  ["install", "--no-such-flag"], ["create-remote-secret", "--context"]])
def test_a_served_call_answers_as_a_plain_call_does(istioctl: Path, args: list[str]) -> None:
    plain = subprocess.run([str(istioctl), *args], env=_env(False), capture_output=True, text=True, timeout=30)
    served = subprocess.run([str(istioctl), *args], env=_env(True), capture_output=True, text=True, timeout=30)
    assert (served.returncode, served.stdout, served.stderr) == (plain.returncode, plain.stdout, plain.stderr)
    assert plain.stdout or plain.stderr
    # The plain call ran in the launcher's own process, the served one in a child of the server.
    plain_call, served_call = _calls(istioctl)[-2:]
    assert plain_call["argv"] == served_call["argv"] == ["istioctl", *args]
    assert plain_call["pid"] != served_call["pid"]


def test_a_served_call_reads_the_callers_environment_and_folder(istioctl: Path, tmp_path: Path) -> None:
    folder = tmp_path / "elsewhere"
    folder.mkdir()
    (folder / "kc").write_text("apiVersion: v1\nkind: Config\ncurrent-context: here\nclusters: []\nusers: []\n"
                               "contexts: [{name: here, context: {cluster: c, user: u}}]\n")
    # A relative KUBECONFIG: found only from the caller's folder.
    result = subprocess.run([str(istioctl), "version", "--remote=false"], env=_env(True, KUBECONFIG="kc"),
                            cwd=folder, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    call = _calls(istioctl)[-1]
    assert (call["kubeconfig"], call["context"]) == ("kc", "here")


@contextmanager
def _call_under_way(istioctl: Path):
    """A served call that takes a minute (injected latency): (its launcher, the pid of the child running it)."""
    launcher = subprocess.Popen([str(istioctl), "version", "--remote=false"],
                                env=_env(True, ISTIOCTL_STANDIN_LATENCY="version=60"),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield launcher, _await(lambda: next((c["pid"] for c in _calls(istioctl)), None), "call in the log")
    finally:
        launcher.kill()
        launcher.wait()


def test_the_call_dies_with_its_launcher(istioctl: Path) -> None:
    with _call_under_way(istioctl) as (launcher, pid):
        assert pid != launcher.pid
        launcher.kill()  # as a runner's timeout kills what it started
        _await(lambda: not _alive(pid), "end of the call after its launcher was killed")


def test_the_launcher_dies_of_the_signal_that_killed_its_call(istioctl: Path) -> None:
    with _call_under_way(istioctl) as (launcher, pid):
        os.kill(pid, signal.SIGTERM)
        assert launcher.wait(10) == -signal.SIGTERM


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_copies_of_one_release_share_a_compilation_under_their_own_file_names(tmp_path: Path) -> None:
    """Every sandbox holds its own copy of the stand-in: the server compiles a text once, and each copy's code
    names that copy (a traceback names the file that ran); another version's text is compiled apart."""
    first, second, older = (materialize_release(tmp_path / name, version=version) / "bin" / "_istioctl_standin.py"
                            for name, version in (("a", "1.30.3"), ("b", "1.30.3"), ("c", "1.29.0")))
    codes: dict = {}
    compiled = [standinserver._code(str(path), codes) for path in (first, second, older)]

    def files(code: types.CodeType) -> set[str]:
        nested = [c for c in code.co_consts if isinstance(c, types.CodeType)]
        return {code.co_filename}.union(*(files(c) for c in nested))

    assert [files(code) for code in compiled] == [{str(first)}, {str(second)}, {str(older)}]
    assert len([key for key in codes if isinstance(key, bytes)]) == 2  # two texts, each compiled once
    versions = []
    for code in compiled:
        namespace: dict = {"__name__": "_istioctl_standin", "__file__": code.co_filename}
        exec(code, namespace)
        versions.append(namespace["VERSION"])
    assert versions == ["1.30.3", "1.30.3", "1.29.0"]
    assert standinserver._code(str(second), codes) is compiled[1]  # the same file as it stands: the same code
