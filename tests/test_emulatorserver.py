"""An emulator forked by the test process's server (tests/sandbox/emulatorserver.py) is the process a plain start
gives: the same cluster, its own session and the caller's folder, and the exit status and stop
that Sandbox reads from a ``subprocess.Popen``."""
from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from tests.sandbox import KubectlFailed, Sandbox, _is_our_emulator, _process_alive, emulatorserver


@pytest.fixture
def served() -> None:
    assert emulatorserver.start(), "the emulator server did not start"


def _cmdline(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")


def _kube_system(sb: Sandbox, ctx: str) -> dict:
    return sb.get_json(ctx, "namespace", "kube-system")["metadata"]


def test_a_forked_emulator_serves_the_cluster_a_plain_one_does(served, tmp_path: Path, monkeypatch) -> None:
    with Sandbox.up(tmp_path / "forked", ["c1"]) as forked:
        pid = forked.pid("c1")
        assert _cmdline(pid)[2].endswith("emulatorserver.py")  # a child of the server, not a new interpreter
        assert os.getsid(pid) == pid  # a session of its own: a Ctrl-C to the tests' process group misses it
        assert os.readlink(f"/proc/{pid}/fd/0") == os.devnull
        assert os.readlink(f"/proc/{pid}/cwd") == os.getcwd()
        seen_forked = _kube_system(forked, "c1")
        forked.kubectl("c1", "create", "namespace", "app")
        assert forked.get_json("c1", "namespace", "app")["metadata"]["name"] == "app"
    monkeypatch.setattr(emulatorserver, "spawn", lambda *args: None)
    with Sandbox.up(tmp_path / "plain", ["c1"]) as plain:
        assert _cmdline(plain.pid("c1"))[2].endswith("run_apiserver.py")
        seen_plain = _kube_system(plain, "c1")
    assert seen_forked["uid"] == seen_plain["uid"]  # seeded by the cluster's name, in both


def test_stopping_a_forked_emulator_reports_its_exit_as_popen_does(served, tmp_path: Path) -> None:
    with Sandbox.up(tmp_path / "s", ["c1", "c2"]) as sb:
        first, second = sb._procs["c1"], sb._procs["c2"]
        assert isinstance(first, emulatorserver.Forked) and first.poll() is None and first.returncode is None
        sb.stop_cluster("c1")  # SIGTERM: the emulator stops and exits 0, as a plain one does
        assert first.returncode == 0 and not _process_alive(first.pid)
        with pytest.raises(KubectlFailed, match="connection refused"):
            sb.kubectl("c1", "get", "namespaces")
        os.kill(second.pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while second.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert second.returncode == -signal.SIGKILL
        sb.start_cluster("c1")
        assert _kube_system(sb, "c1")["name"] == "kube-system"


def test_another_handle_stops_forked_emulators_and_nothing_else(served, tmp_path: Path) -> None:
    with Sandbox.up(tmp_path / "s", ["c1", "c2"]) as sb:  # stopped at the end even when an assertion fails first
        pids = [sb.pid("c1"), sb.pid("c2")]
        server = int(Path(f"/proc/{pids[0]}/stat").read_text().rsplit(")", 1)[1].split()[1])  # its parent
        state_dir = tmp_path / "s" / "clusters" / "c1"
        # The server has the same command line as its children, but another output file: a recycled pid is refused.
        assert _cmdline(server)[2].endswith("emulatorserver.py")
        assert not _is_our_emulator(server, "c1", state_dir)
        assert _is_our_emulator(pids[0], "c1", state_dir) and not _is_our_emulator(pids[1], "c1", state_dir)
        assert sorted(Sandbox.load(tmp_path / "s").down()) == ["c1", "c2"]
        assert not any(_process_alive(pid) for pid in pids)
        assert _process_alive(server)
