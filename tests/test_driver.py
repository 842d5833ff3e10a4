"""The run skeleton (lib/driver.py) with a command made in memory: what a dry run, a refusal, a declined
question, clusters that sit the run out and the run's end do, in the order a user sees them."""
from __future__ import annotations

import io
import sys

import pytest
import typer
from rich.console import Console

from lib.config import Cluster
from lib.driver import Parts, Run, SitOut, drive, rows_of, sit_out
from lib.errors import Cancelled, ConfigError
from lib.executor import Executor, Outcome, Phase, Step
from lib.kube import Observed, Tools
from lib.reporter import Reporter
from lib.runlog import LOG_DIR
from lib.runner import Command
from lib.state import STATE_DIR
from tests.recording import RecordingRunner

CLUSTERS = [Cluster(context="east", network="n1", name="east"), Cluster(context="west", network="n2", name="west")]


def _reporter() -> tuple[Reporter, io.StringIO]:
    out = io.StringIO()
    console = Console(file=out, width=120, highlight=False, soft_wrap=True)
    return Reporter(console=console, err_console=console), out


class InMemoryCommand:
    """A command that changes clusters, in memory: each cluster runs one kubectl call; what the driver
    calls is written down in ``events``."""

    def __init__(self, run: Run, *, refusal=None, question: str | None = None, sitting_out=(),
                 interrupt: bool = False, idle: bool = False):
        self.run, self.refusal, self.question, self.idle = run, refusal, question, idle
        self.sitting_out, self.interrupt = list(sitting_out), interrupt
        self.events: list[str] = []
        self.outcome: Outcome | None = None

    def parts(self) -> Parts:
        return Parts(show=self.show, nothing=self.nothing if self.idle else None, refusal=self.refusal,
                     ask=self.ask if self.question else None,
                     begin=lambda: self.events.append("begin"), rows=rows_of(CLUSTERS), sit_outs=self.sit_outs,
                     execute=self.execute, record=self.record, report=lambda outcome: self.events.append("report"),
                     after=self.after)

    def show(self) -> int:
        self.events.append("show")
        self.run.reporter.info("the plan")
        return 0

    def nothing(self) -> int:
        self.events.append("nothing")
        self.run.reporter.info("nothing to change")
        return 0

    def ask(self) -> None:
        self.events.append("ask")
        self.run.confirm(self.question)

    def sit_outs(self) -> list[SitOut]:
        self.events.append("sit_outs" + (" (log open)" if self._logs() else ""))
        return [sit_out(Tools(), cluster, Observed(reachable=False, error="connection refused"), "then run it again")
                for cluster in CLUSTERS if cluster.context in self.sitting_out]

    def execute(self, executor: Executor) -> Outcome:
        self.events.append("execute")
        first, second = Phase("first"), Phase("second")
        for cluster in CLUSTERS:
            first.add(cluster.context, Step("label", commands=[
                Command(("kubectl", "--context", cluster.context, "label", "ns", "default", "x=y"),
                        context=cluster.context)]))
            # A Ctrl-C arriving while the first phase runs: the second does not start.
            first.add(cluster.context, Step("wait", action=lambda ctx: executor.interrupt() if self.interrupt else None))
            second.add(cluster.context, Step("annotate", commands=[
                Command(("kubectl", "--context", cluster.context, "annotate", "ns", "default", "x=y"),
                        context=cluster.context)]))
        return executor.run_phases([first, second])

    def record(self, outcome: Outcome) -> None:
        self.events.append("record")
        self.outcome = outcome

    def after(self, code: int, outcome: Outcome) -> int:
        self.events.append(f"after {code}")
        return code

    def _logs(self) -> list:
        folder = self.run.workdir / STATE_DIR / LOG_DIR
        return sorted(folder.iterdir()) if folder.is_dir() else []


def _run(tmp_path, **kwargs) -> tuple[Run, RecordingRunner, io.StringIO]:
    reporter, out = _reporter()
    runner = RecordingRunner()
    return Run("mesh-change", tmp_path, runner, reporter, parallel=1, **kwargs), runner, out


def test_a_run_goes_through_the_parts_in_order_and_logs_what_it_ran(tmp_path):
    run, runner, out = _run(tmp_path, yes=True)
    command = InMemoryCommand(run, question="Change the clusters?")
    assert drive(run, command.parts()) == 0
    assert command.events == ["ask", "begin", "sit_outs (log open)", "execute", "record", "report", "after 0"]
    assert [c.argv[3] for c in runner.commands] == ["label", "label", "annotate", "annotate"]
    (log,) = command._logs()
    assert log.name.startswith("mesh-change-")
    assert log.read_text().count("kubectl --context") == 4
    assert "mesh-change finished" in out.getvalue()


def test_a_dry_run_shows_the_plan_and_changes_nothing(tmp_path):
    run, runner, out = _run(tmp_path, dry_run=True, yes=True)
    run.open_log()  # a command opens its log before its reads; a dry run's is none
    command = InMemoryCommand(run, question="Change the clusters?")
    assert drive(run, command.parts()) == 0
    assert command.events == ["show", "sit_outs"]
    assert runner.commands == [] and not (tmp_path / STATE_DIR).exists() and run.log is None
    assert out.getvalue() == "the plan\n"


def test_a_dry_run_names_the_clusters_that_would_sit_the_run_out_and_fails_as_the_run_would(tmp_path):
    run, runner, out = _run(tmp_path, dry_run=True, yes=True)
    command = InMemoryCommand(run, sitting_out=["west"])
    assert drive(run, command.parts()) == 1
    assert runner.commands == [] and not (tmp_path / STATE_DIR).exists()
    text = out.getvalue()
    assert text.startswith("the plan\n")
    assert "error: west would sit this run out: read current state: cannot read the cluster: connection refused" in text
    assert "hint: check access with `kubectl --context west get namespace istio-system`, then run it again" in text
    assert "east" not in text


def test_a_run_with_nothing_to_change_says_so_and_asks_runs_and_logs_nothing(tmp_path):
    run, runner, out = _run(tmp_path)  # no -y, no terminal: a question would refuse the run
    command = InMemoryCommand(run, question="Change the clusters?", idle=True)
    assert drive(run, command.parts()) == 0
    assert command.events == ["nothing"] and runner.commands == [] and not (tmp_path / STATE_DIR).exists()
    assert out.getvalue() == "nothing to change\n"
    # Its dry run shows the plan, as every dry run does.
    run, _, out = _run(tmp_path, dry_run=True)
    command = InMemoryCommand(run, question="Change the clusters?", idle=True)
    assert drive(run, command.parts()) == 0 and command.events == ["show", "sit_outs"]


def test_a_refusal_stops_the_run_before_the_log_is_opened_and_before_any_step(tmp_path):
    refusal = ConfigError("another root's cacerts would be replaced", hint="run it from the other workspace")
    run, runner, out = _run(tmp_path, yes=True)
    command = InMemoryCommand(run, refusal=refusal, question="Change the clusters?")
    with pytest.raises(ConfigError) as raised:
        drive(run, command.parts())
    assert raised.value is refusal
    assert command.events == [] and runner.commands == []
    assert not (tmp_path / STATE_DIR).exists() and run.log is None


def test_a_declined_confirmation_changes_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(sys.stdin, "isatty", lambda: True)
    asked = []
    monkeypatch.setattr(typer, "confirm", lambda text, default: asked.append(text) or False)
    run, runner, _ = _run(tmp_path)
    command = InMemoryCommand(run, question="Change the clusters?")
    with pytest.raises(Cancelled):
        drive(run, command.parts())
    assert asked == ["Change the clusters?"]
    assert command.events == ["ask"] and runner.commands == [] and not (tmp_path / STATE_DIR).exists()


def test_a_question_without_a_terminal_and_without_yes_is_refused_before_anything_changes(tmp_path, monkeypatch):
    monkeypatch.setattr(sys.stdin, "isatty", lambda: False)
    run, runner, _ = _run(tmp_path)
    command = InMemoryCommand(run, question="Change the clusters?")
    with pytest.raises(ConfigError, match="needs confirmation, and there is no terminal"):
        drive(run, command.parts())
    assert command.events == ["ask"] and runner.commands == []


def test_clusters_that_sit_the_run_out_are_reported_failed_and_the_others_run(tmp_path):
    run, runner, out = _run(tmp_path, yes=True)
    command = InMemoryCommand(run, sitting_out=["west"])
    assert drive(run, command.parts()) == 1
    assert [c.context for c in runner.commands] == ["east", "east"]
    assert set(command.outcome.failures) == {"west"}
    assert command.outcome.done_steps["east"] == ["label", "wait", "annotate"]
    text = out.getvalue()
    assert "mesh-change failed" in text
    assert "west: read current state: cannot read the cluster: connection refused" in text
    assert "check access with `kubectl --context west get namespace istio-system`, then run it again" in text
    assert run.reporter.rows["west"].ok is False and run.reporter.rows["east"].ok is not False


def test_the_exit_code_is_0_when_all_went_well_1_on_a_failure_and_130_when_interrupted(tmp_path):
    run, _, out = _run(tmp_path / "ok", yes=True)
    assert drive(run, InMemoryCommand(run).parts()) == 0
    assert "mesh-change finished" in out.getvalue()

    run, _, out = _run(tmp_path / "failed", yes=True)
    assert drive(run, InMemoryCommand(run, sitting_out=["east"]).parts()) == 1
    assert "mesh-change failed" in out.getvalue()

    run, runner, out = _run(tmp_path / "interrupted", yes=True)
    command = InMemoryCommand(run, interrupt=True)
    assert drive(run, command.parts()) == 130
    assert command.events[-1] == "after 130"
    assert "mesh-change interrupted" in out.getvalue()
    assert "annotate" not in [c.argv[3] for c in runner.commands]


def test_the_summary_names_the_title_and_the_log_the_command(tmp_path):
    run, _, out = _run(tmp_path, yes=True, title="mesh-change --deep")
    assert drive(run, InMemoryCommand(run, sitting_out=["west"]).parts()) == 1
    assert "mesh-change --deep failed" in out.getvalue()
    (log,) = (tmp_path / STATE_DIR / LOG_DIR).iterdir()
    assert log.name.startswith("mesh-change-") and f"run log: {log}" in out.getvalue()


def test_a_log_opened_before_the_reads_is_the_run_s_log(tmp_path):
    run, runner, _ = _run(tmp_path, yes=True)
    log = run.open_log()
    runner.run(Command(("kubectl", "--context", "east", "get", "ns"), context="east"))  # a read
    drive(run, InMemoryCommand(run).parts())
    assert run.log is log and [p.name for p in (tmp_path / STATE_DIR / LOG_DIR).iterdir()] == [log.path.name]
    assert log.path.read_text().count("kubectl --context") == 5


def test_a_confirmation_starts_the_progress_rows_again_and_without_one_the_reads_rows_stay(tmp_path, monkeypatch):
    started = []
    run, _, _ = _run(tmp_path, yes=True)
    monkeypatch.setattr(run.reporter, "start_progress", lambda rows: started.append(rows))
    run.start_progress([("east", "n1")])  # the reads' table
    drive(run, InMemoryCommand(run).parts())
    assert started == [[("east", "n1")]]

    started.clear()
    run, _, _ = _run(tmp_path, yes=True)
    monkeypatch.setattr(run.reporter, "start_progress", lambda rows: started.append(rows))
    run.start_progress([("east", "n1")])
    drive(run, InMemoryCommand(run, question="Change the clusters?").parts())
    assert started == [[("east", "n1")], rows_of(CLUSTERS)]
