"""`python -m tests.sandbox up/down` leaves running clusters behind, usable through DIR/env, and stops them all."""
from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tests.sandbox import Sandbox, _process_alive

ROOT = Path(__file__).resolve().parent.parent


def sandbox_cli(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "tests.sandbox", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)
    if check and proc.returncode != 0:
        raise AssertionError(f"sandbox CLI {args} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def env_from_file(env_file: Path) -> dict[str, str]:
    """What `source DIR/env` does, read without a shell: `export NAME=VALUE` lines, "$PATH" expanded."""
    env = dict(os.environ)
    for line in env_file.read_text().splitlines():
        if not line.startswith("export "):
            continue
        name, _, value = line[len("export "):].partition("=")
        words = shlex.split(value.replace('"$PATH"', shlex.quote(env.get("PATH", ""))))
        assert len(words) == 1, line
        env[name] = words[0]
    return env


@pytest.fixture
def cli_dir(tmp_path):
    directory = tmp_path / "mesh"
    yield directory
    if (directory / "sandbox.json").exists():  # never leave emulators behind, even when a test fails
        Sandbox.load(directory).down()


def test_up_env_down(cli_dir, kubectl_bin):
    up = sandbox_cli("up", "--clusters", "2", "--dir", str(cli_dir))
    assert f"source {cli_dir}/env" in up.stdout and "cluster1" in up.stdout and "cluster2" in up.stdout
    state = json.loads((cli_dir / "sandbox.json").read_text())
    # the addresses peers' control planes use: printed and written for topology.yaml, never loopback
    api_servers = json.loads((cli_dir / "api_servers.json").read_text())
    assert api_servers == {c: f"https://{c}.sandbox.test:6443" for c in ("cluster1", "cluster2")}
    assert all(url in up.stdout for url in api_servers.values())
    hosts = json.loads((cli_dir / "hosts.json").read_text())
    assert hosts == {f"{c}.sandbox.test": state["clusters"][c]["port"] for c in ("cluster1", "cluster2")}
    pids = [state["clusters"][c]["pid"] for c in ("cluster1", "cluster2")]
    assert all(_process_alive(pid) for pid in pids), "emulators must outlive the `up` command"

    env = env_from_file(cli_dir / "env")
    assert env["KUBECONFIG"] == str(cli_dir / "kubeconfig")
    assert env["PATH"].split(os.pathsep)[0] == str(cli_dir / "bin")
    kubectl = Path(env["PATH"].split(os.pathsep)[0]) / "kubectl"
    assert kubectl.resolve() == kubectl_bin
    for ctx in ("cluster1", "cluster2"):
        got = subprocess.run(["kubectl", "--context", ctx, "get", "namespace", "kube-system", "-o", "name"],
                             env=env, capture_output=True, text=True, timeout=60)
        assert got.returncode == 0, got.stderr
        assert got.stdout.strip() == "namespace/kube-system"
    current = subprocess.run(["kubectl", "config", "current-context"], env=env, capture_output=True, text=True)
    assert current.stdout.strip() == "cluster1"
    istioctl = Path(env["ISTIO_DIR"]) / "bin" / "istioctl"
    assert env["PATH"].split(os.pathsep)[1] == str(istioctl.parent), "the stand-in istioctl is on PATH"
    version = subprocess.run(["istioctl", "version", "--remote=false"], env=env, capture_output=True, text=True,
                             timeout=60)
    assert version.returncode == 0 and version.stdout.strip() == "client version: 1.30.3", version.stderr

    again = sandbox_cli("up", "--clusters", "2", "--dir", str(cli_dir), check=False)
    assert again.returncode == 1 and "already running" in again.stderr

    status = sandbox_cli("status", "--dir", str(cli_dir))
    assert status.stdout.count("running") == 2

    down = sandbox_cli("down", "--dir", str(cli_dir))
    assert "stopped 2 emulated cluster(s)" in down.stdout
    assert not any(_process_alive(pid) for pid in pids)
    second = sandbox_cli("down", "--dir", str(cli_dir))
    assert "nothing to stop" in second.stdout
    refused = subprocess.run(["kubectl", "--context", "cluster1", "get", "ns"], env=env, capture_output=True,
                             text=True, timeout=60)
    assert refused.returncode == 1 and "was refused" in refused.stderr


def test_named_contexts_and_lb_delay(cli_dir):
    sandbox_cli("up", "--contexts", "east,west", "--dir", str(cli_dir), "--lb-delay", "east=never,west=0")
    sandbox = Sandbox.load(cli_dir)
    assert sandbox.contexts == ["east", "west"]
    assert sandbox._state["clusters"]["east"]["lb_delay"] is None
    sandbox_cli("down", "--dir", str(cli_dir))
    assert sandbox.running_contexts() == []


def test_down_without_a_sandbox_and_help(tmp_path):
    assert "nothing to stop" in sandbox_cli("down", "--dir", str(tmp_path / "none")).stdout
    helptext = sandbox_cli("--help").stdout
    assert "up" in helptext and "down" in helptext
    assert "--lb-delay" in sandbox_cli("up", "--help").stdout
    bad = sandbox_cli("up", "--dir", str(tmp_path / "x"), check=False)
    assert bad.returncode == 2 and "one of the arguments --contexts --clusters is required" in bad.stderr
