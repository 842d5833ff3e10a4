"""The command line itself: version, help text, environment names, prompts and exit codes."""
import os
import pty
import re
import select
import subprocess
import sys
from pathlib import Path

import pytest

from tests.meshkit import make_mesh

ROOT = Path(__file__).resolve().parent.parent
COMMANDS = ["prep-mesh", "apply", "status", "teardown", "rotate-certs"]


def cli(*args: str, env: dict | None = None, cwd=None):
    return subprocess.run([sys.executable, str(ROOT / "setup_mesh.py"), *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, cwd=cwd, timeout=60)


def on_terminal(argv: list[str], env: dict, answer: str, timeout: float = 120) -> tuple[int, str]:
    """Run with stdin/stdout on a pseudo-terminal, answer the first prompt, return (exit code, output)."""
    leader, follower = pty.openpty()
    proc = subprocess.Popen(argv, stdin=follower, stdout=follower, stderr=follower, env=env, close_fds=True)
    os.close(follower)
    output, answered = b"", False
    while True:
        ready, _, _ = select.select([leader], [], [], timeout)
        if not ready:
            proc.kill()
            raise AssertionError(f"no output for {timeout}s:\n{output.decode(errors='replace')}")
        try:
            chunk = os.read(leader, 4096)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        output += chunk
        if not answered and b"[y/N]" in output:
            os.write(leader, answer.encode() + b"\n")
            answered = True
    os.close(leader)
    return proc.wait(timeout=timeout), output.decode(errors="replace")


def test_version():
    result = cli("--version")
    assert result.returncode == 0
    assert re.fullmatch(r"setup-mesh \d+\.\d+\.\d+\n", result.stdout)


@pytest.mark.parametrize("command", COMMANDS)
def test_help_placeholders_are_words_a_user_understands(command):
    text = cli(command, "--help").stdout
    assert "--workdir DIR" in text
    assert not re.search(r"(-\w|--[\w-]+),? <[^>]+>", text), text  # no <list[str]>, <float range>, <path>


def test_one_meaning_per_flag_name():
    """--timeout bounds each command wherever it appears; status's wait has its own name."""
    for command in ("apply", "teardown", "rotate-certs"):
        assert "--timeout SECONDS" in cli(command, "--help").stdout
    status_help = cli("status", "--help").stdout
    assert "--wait-timeout SECONDS" in status_help and "--timeout " not in status_help
    assert "--add-context NAME[=NETWORK]" in cli("prep-mesh", "--help").stdout


def test_unknown_context_is_bad_input_with_a_guess(tmp_path):
    (tmp_path / "topology.yaml").write_text("mesh_id: m\ncontexts:\n  cluster1:\n    network: n1\n")
    (tmp_path / "base.yaml").write_text("apiVersion: install.istio.io/v1alpha1\nkind: IstioOperator\nspec: {}\n")
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text("apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster: {server: 'https://10.0.0.1'}\n"
                          "users:\n- name: u\n  user: {}\ncontexts:\n- name: cluster1\n  context: {cluster: c, user: u}\n")
    result = cli("status", "--context", "clustr1", "--workdir", str(tmp_path), env={"KUBECONFIG": str(kubeconfig)})
    assert result.returncode == 2, result.stderr
    assert "--context clustr1: not in" in result.stderr and "did you mean 'cluster1'?" in result.stderr
    assert "Traceback" not in result.stderr


def test_no_at_the_prompt_is_a_cancellation_not_bad_input(sandbox_factory, tmp_path):
    mesh = make_mesh(sandbox_factory(["cluster1", "cluster2"]), tmp_path / "ws",
                     {"cluster1": "network1", "cluster2": "network1"})
    mesh.apply()
    env = {**mesh.env, "COLUMNS": "100"}
    code, output = on_terminal([sys.executable, str(ROOT / "setup_mesh.py"), "teardown", "--workdir",
                                str(mesh.workdir)], env, "n")
    assert code == 1, output
    assert "cancelled" in output and "nothing was changed" in output
    assert mesh.get("cluster1", "namespace", "istio-system", check=False) is not None


@pytest.mark.parametrize("args,message", [
    (["--root", "--min-wait", "soon"], "'soon' is not a duration"),
    (["--root", "--min-wait", "-1h"], "'-1h' is negative"),
    (["--root", "--min-wait", "inf"], "longer than a root lives"),
    (["--min-wait", "0"], "--min-wait without --root"),
    (["--root", "--context", "cluster1"], "a new root is introduced to every cluster at once"),
])
def test_rotate_certs_options_that_do_not_go_together_are_refused_before_anything_is_read(tmp_path, args, message):
    result = cli("rotate-certs", *args, "--workdir", str(tmp_path))
    assert result.returncode == 2, result.stdout + result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr
    assert list(tmp_path.iterdir()) == []
