"""What the user reads: timestamped lines off a terminal, a summary table, nothing secret."""
import io
import re

from rich.console import Console

from lib.errors import CommandFailed, ConfigError
from lib.reporter import Reporter
from lib.runner import Command, Result


def _reporter(**kwargs):
    out, err = io.StringIO(), io.StringIO()
    reporter = Reporter(console=Console(file=out, width=200), err_console=Console(file=err, width=200), **kwargs)
    return reporter, out, err


def test_progress_is_plain_timestamped_lines_off_a_terminal():
    reporter, out, _ = _reporter()
    reporter.start_progress([("c1", "n1")])
    reporter.step("c1", "install Istio")
    reporter.step_done("c1", "install Istio", True, 2.04)
    reporter.stop_progress()
    lines = out.getvalue().splitlines()
    assert re.fullmatch(r"\d\d:\d\d:\d\d c1: install Istio \.\.\.", lines[0])
    assert re.fullmatch(r"\d\d:\d\d:\d\d c1: install Istio: ok \(2\.0s\)", lines[1])


def test_summary_names_cluster_step_command_and_stderr():
    reporter, out, _ = _reporter()
    reporter.start_progress([("c1", "n1"), ("c2", "n2")])
    failure = CommandFailed(Command(("istioctl", "install", "-y", "--context", "c2")), 1, "Error: boom")
    failure.step = "install Istio"
    reporter.step_done("c2", "install Istio", False, 1.0, "boom")
    reporter.finish_cluster("c1", True)
    reporter.summary("apply failed", {"c2": failure}, "/w/.setup-mesh/logs/apply.log")
    text = out.getvalue()
    assert "c2: install Istio: `istioctl install -y --context c2` exited with code 1" in text
    assert "Error: boom" in text and "run log: /w/.setup-mesh/logs/apply.log" in text
    assert re.search(r"c1\s+│\s+n1\s+│\s+ok", text)


def test_errors_go_to_stderr_with_their_hint_and_secrets_are_removed():
    reporter, out, err = _reporter()
    reporter.error(ConfigError("bad token: abc123", hint="fix it"))
    reporter.info("-----BEGIN RSA PRIVATE KEY-----\nMIIE\n-----END RSA PRIVATE KEY-----")
    assert err.getvalue() == "error: bad token: [redacted]\nhint: fix it\n"
    assert "MIIE" not in out.getvalue()


def test_verbose_prints_each_command_quiet_prints_no_progress():
    reporter, out, _ = _reporter(verbose=True)
    reporter.command(Result(Command(("kubectl", "get", "ns"), context="c1"), 0, "", "", 0.25))
    assert "$ [c1] kubectl get ns  (exit 0, 0.25s)" in out.getvalue()
    quiet, qout, _ = _reporter(quiet=True)
    quiet.step("c1", "install Istio")
    quiet.command(Result(Command(("kubectl",)), 0, "", "", 0.1))
    assert qout.getvalue() == ""
