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
    """--timeout bounds each command, -q and -v mean the same wherever they appear; status's wait has
    its own name."""
    for command in ("apply", "teardown", "rotate-certs", "status", "verify"):
        text = cli(command, "--help").stdout
        assert "--timeout SECONDS" in text and "-q, --quiet" in text and "-v, --verbose" in text, command
    assert "--wait-timeout SECONDS" in cli("status", "--help").stdout
    assert "--add-context NAME[=NETWORK]" in cli("prep-mesh", "--help").stdout


@pytest.mark.parametrize("args,message", [
    (["apply", "--bogus"], "No such option: --bogus"),
    (["status", "-o", "xml"], "Invalid value for '--output' / '-o': use table or json"),
    (["frobnicate"], "No such command 'frobnicate'."),
])
def test_usage_errors_read_like_every_other_error(args, message):
    """One spelling for errors: ``error: ...`` then a hint, exit 2, never click's ``Error:`` block."""
    result = cli(*args)
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert any(line.startswith(f"error: {message}") for line in lines), result.stderr
    assert lines[-1].startswith("hint: `") and lines[-1].endswith("--help` lists what it takes"), result.stderr
    assert "Error:" not in result.stderr and "Traceback" not in result.stderr


def test_status_quiet_prints_the_problems_and_the_verdict_without_the_tables(tmp_path):
    (tmp_path / "topology.yaml").write_text("mesh_id: m\ncontexts:\n  cluster1:\n    network: n1\n")
    (tmp_path / "base.yaml").write_text("apiVersion: install.istio.io/v1alpha1\nkind: IstioOperator\nspec: {}\n")
    kubeconfig = tmp_path / "kubeconfig"  # a cluster at an address nothing listens on
    kubeconfig.write_text("apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster: {server: 'https://127.0.0.1:9'}\n"
                          "users:\n- name: u\n  user: {}\ncontexts:\n- name: cluster1\n  context: {cluster: c, user: u}\n")
    env = {"KUBECONFIG": str(kubeconfig), "COLUMNS": "120", "ISTIO_DIR": str(tmp_path / "none"),
           "PATH": f"{ROOT / 'tests' / 'sandbox' / 'release_template' / 'bin'}{os.pathsep}{os.environ['PATH']}"}
    full = cli("status", "--workdir", str(tmp_path), "--timeout", "5", env=env)
    quiet = cli("status", "-q", "--workdir", str(tmp_path), "--timeout", "5", env=env)
    assert full.returncode == quiet.returncode == 1, full.stdout + full.stderr
    def header(out):
        return [line for line in out.splitlines() if "network" in line and "cacerts" in line]

    assert header(full.stdout) and not header(quiet.stdout), quiet.stdout
    assert quiet.stdout.splitlines()[-1] == full.stdout.splitlines()[-1]
    assert quiet.stdout.splitlines()[-1].startswith("unhealthy: "), quiet.stdout
    assert [line for line in full.stdout.splitlines() if line.startswith("✗")] == \
        [line for line in quiet.stdout.splitlines() if line.startswith("✗")]


def test_shell_completion_for_bash_zsh_and_fish(tmp_path):
    """The installed command completes its commands and options; `--install-completion` and
    `--show-completion` are offered (the shells' own completion scripts call back with these variables)."""
    assert "--install-completion" in cli("--help").stdout and "--show-completion" in cli("--help").stdout
    program = tmp_path / "setup-mesh"  # as pip installs it: the entry point under its own name
    program.write_text(f"#!{sys.executable}\nimport sys\nsys.path.insert(0, {str(ROOT)!r})\n"
                       "import setup_mesh\nsetup_mesh.main()\n")
    program.chmod(0o755)

    def complete(**env):
        return subprocess.run([str(program)], capture_output=True, text=True, timeout=60,
                              env={**os.environ, **env}).stdout

    assert complete(_SETUP_MESH_COMPLETE="complete_bash", COMP_WORDS="setup-mesh ap", COMP_CWORD="1").split() == ["apply"]
    assert "rotate-certs" in complete(_SETUP_MESH_COMPLETE="complete_zsh", _TYPER_COMPLETE_ARGS="setup-mesh rot")
    assert complete(_SETUP_MESH_COMPLETE="complete_fish", _TYPER_COMPLETE_ARGS="setup-mesh status --out",
                    _TYPER_COMPLETE_FISH_ACTION="get-args").startswith("--output\t")


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


@pytest.mark.parametrize("args, parallel, upgrade_parallel, restart", [
    ([], 8, 1, False),  # an upgrade moves one primary at a time unless asked otherwise
    (["-p", "3", "--restart-workloads"], 3, 3, True),
])
def test_apply_passes_parallel_to_an_upgrade_only_when_given(monkeypatch, args, parallel, upgrade_parallel, restart):
    from typer.testing import CliRunner

    import setup_mesh

    seen = {}
    monkeypatch.setattr(setup_mesh.apply_command, "apply", lambda workdir, **kwargs: seen.update(kwargs) or 0)
    result = CliRunner().invoke(setup_mesh.app, ["apply", *args])
    assert result.exit_code == 0, result.output
    assert (seen["parallel"], seen["upgrade_parallel"], seen["restart_workloads"]) == (parallel, upgrade_parallel,
                                                                                       restart)


def test_ctrl_c_while_the_program_loads_exits_130_without_a_traceback():
    # The SIGINT arrives as setup_mesh.py imports its first library (most of a second on a busy machine).
    script = ("import builtins, os, runpy, signal, sys\n"
              "load = builtins.__import__\n"
              "def interrupting(name, *args, **kwargs):\n"
              "    if name == 'typer':\n"
              "        os.kill(os.getpid(), signal.SIGINT)\n"
              "    return load(name, *args, **kwargs)\n"
              "builtins.__import__ = interrupting\n"
              "sys.argv = [sys.argv[1], '--help']\n"
              "runpy.run_path(sys.argv[0], run_name='__main__')\n")
    result = subprocess.run([sys.executable, "-c", script, str(ROOT / "setup_mesh.py")], capture_output=True,
                            text=True, timeout=60)
    assert (result.returncode, result.stderr, result.stdout) == (130, "error: interrupted\n", "")


def test_bad_arguments_are_refused_with_what_where_and_how_before_anything_is_touched(tmp_path):
    """A --workdir that is a file, a --namespace Kubernetes would refuse, a teardown with nothing to go
    by: exit 2, the value named, a hint, no traceback, nothing written."""
    a_file = tmp_path / "notes.txt"
    a_file.write_text("mine\n")
    empty = tmp_path / "empty"
    empty.mkdir()
    cases = [
        (["prep-mesh", "--workdir", str(a_file), "--add-context", "c1"],
         f"error: workdir {a_file} is not a folder", "hint: pass --workdir with a folder path"),
        (["verify", "--workdir", str(empty), "--namespace", "Setup_Mesh"],
         "error: --namespace 'Setup_Mesh' is not a valid namespace name",
         "hint: use lower-case letters, digits and '-' (at most 63), e.g. setup-mesh-verify"),
        (["teardown", "--workdir", str(empty), "-y"],
         f"error: nothing to tear down: no topology.yaml and no recorded state in {empty}",
         "hint: pass the --workdir that apply used"),
    ]
    for args, message, hint in cases:
        result = cli(*args, cwd=tmp_path)
        assert result.returncode == 2, (args, result.stdout, result.stderr)
        lines = result.stderr.splitlines()
        assert message in lines and hint in lines, (args, result.stderr)
        assert "Traceback" not in result.stderr
    assert a_file.read_text() == "mine\n" and list(empty.iterdir()) == []
