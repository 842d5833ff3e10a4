"""What the user reads: timestamped lines off a terminal, a summary table, nothing secret."""
import io
import re

from rich.console import Console

from lib.errors import CommandFailed, ConfigError
from lib.reporter import Reporter
from lib.runner import Command, Result


def _reporter(width=200, **kwargs):
    out, err = io.StringIO(), io.StringIO()
    reporter = Reporter(console=Console(file=out, width=width), err_console=Console(file=err, width=width), **kwargs)
    return reporter, out, err


def _finished_run(width, interrupted=False):
    """Four clusters: one added (installed, its peers' secrets imported), three that each took its secret."""
    reporter, out, err = _reporter(width)
    reporter.start_progress([("cluster1", "network1"), ("cluster2", "network1"), ("cluster3", "network2"),
                             ("cluster4", "network2")])
    reporter.warn("context 'cluster1' names the API server https://127.0.0.1:39043, which other clusters cannot reach")
    for ctx in ("cluster1", "cluster2", "cluster3"):
        reporter.step_done(ctx, "import cluster4's secret", True, 0.4, done="1 secret imported")
    reporter.step_done("cluster4", "install Istio", True, 2.0, done="installed")
    if interrupted:
        reporter.step_done("cluster4", "import 3 peers' secrets", False, 0.2, "interrupted", interrupted=True)
    else:
        reporter.step_done("cluster4", "import 3 peers' secrets", True, 0.3, done="3 secrets imported")
    for ctx in ("cluster1", "cluster2", "cluster3", "cluster4"):
        reporter.finish_cluster(ctx, True)
    for row in reporter.rows.values():  # fixed times for an exact comparison
        row.started, row.finished = 0.0, 9.25
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
    assert re.search(r"c1\s+n1\s+unchanged", text)
    assert re.search(r"c2\s+n2\s+failed: install Istio\s", text), "the step that failed, said once"


SUMMARY_160 = """\
apply finished (1 warning)
cluster   network   result                         time
cluster1  network1  1 secret imported              9.2s
cluster2  network1  1 secret imported              9.2s
cluster3  network2  1 secret imported              9.2s
cluster4  network2  installed, 3 secrets imported  9.2s
warning: context 'cluster1' names the API server https://127.0.0.1:39043, which other clusters cannot reach
"""

SUMMARY_80 = """\
apply finished (1 warning)
cluster   result                         time
cluster1  1 secret imported              9.2s
cluster2  1 secret imported              9.2s
cluster3  1 secret imported              9.2s
cluster4  installed, 3 secrets imported  9.2s
warning: context 'cluster1' names the API server https://127.0.0.1:39043, which 
other clusters cannot reach
"""


def test_summary_says_what_was_done_to_each_cluster_at_160_columns():
    reporter, out, _ = _finished_run(160)
    out.truncate(0), out.seek(0)
    reporter.summary("apply finished", {}, None)
    assert out.getvalue() == SUMMARY_160


def test_summary_fits_80_columns_by_dropping_the_network_column():
    reporter, out, _ = _finished_run(80)
    out.truncate(0), out.seek(0)
    reporter.summary("apply finished", {}, None)
    assert out.getvalue() == SUMMARY_80
    assert max(len(line) for line in out.getvalue().splitlines()) <= 80


def test_an_interrupted_step_reads_as_interrupted_with_what_was_done_before():
    reporter, out, _ = _finished_run(160, interrupted=True)
    row = reporter.rows["cluster4"]
    assert row.result == "interrupted: import 3 peers' secrets (done: installed)"
    assert reporter.rows["cluster1"].result == "1 secret imported"


def test_quiet_still_prints_the_result():
    reporter, out, _ = _reporter(quiet=True)
    reporter.start_progress([("c1", "n1")])
    reporter.step_done("c1", "install Istio", True, 1.0, done="installed")
    reporter.finish_cluster("c1", True)
    reporter.summary("apply finished", {}, None)
    assert re.search(r"c1\s+n1\s+installed", out.getvalue())


def test_quiet_prints_each_warning_once_and_still_counts_it():
    reporter, out, err = _reporter(quiet=True)
    reporter.start_progress([("c1", "n1")])
    reporter.warn("the root CA expires in 12 days")
    reporter.finish_cluster("c1", True)
    reporter.summary("apply finished", {}, None)
    both = out.getvalue() + err.getvalue()
    assert both.count("the root CA expires in 12 days") == 1
    assert "apply finished (1 warning)" in out.getvalue()


def test_live_table_shows_the_phase_per_step_time_and_who_waits_for_peers():
    reporter, _, _ = _reporter(80)
    reporter.start_progress([("cluster1", "network1"), ("cluster2", "network1")])
    reporter.phase("set up, install, export remote secret", "1/2")
    reporter.step("cluster1", "install Istio")
    reporter.step("cluster2", "install Istio")
    reporter.step_done("cluster2", "install Istio", True, 1.0, done="installed")
    reporter.idle("cluster2", "waiting for cluster1 (install Istio)")
    reporter.rows["cluster1"].step_started -= 3.0
    text = io.StringIO()
    Console(file=text, width=80).print(reporter._table())
    lines = text.getvalue().splitlines()
    assert lines[0].strip() == "phase 1/2: set up, install, export remote secret"
    assert re.fullmatch(r"cluster1\s+install Istio\s+3\.\ds\s+…\s*", lines[2].strip())
    assert re.fullmatch(r"cluster2\s+waiting for cluster1 \(install Istio\)\s+…", lines[3].strip())


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


def test_a_download_on_a_terminal_shows_a_transient_bar_and_off_a_terminal_nothing():
    out, err = io.StringIO(), io.StringIO()
    reporter = Reporter(console=Console(file=out, width=100, force_terminal=True),
                        err_console=Console(file=err, width=100, force_terminal=True))
    with reporter.transfer("istio-1.30.3-linux-amd64.tar.gz", total=2048) as advance:
        advance(1024)
        advance(1024)
    assert "istio-1.30.3-linux-amd64.tar.gz" in err.getvalue()
    assert "2.0/2.0 kB" in err.getvalue()
    assert out.getvalue() == ""

    plain, plain_out, plain_err = _reporter()
    with plain.transfer("istio-1.30.3-linux-amd64.tar.gz", total=2048) as advance:
        advance(2048)
    assert plain_out.getvalue() == plain_err.getvalue() == ""
