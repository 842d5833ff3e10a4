"""The executor: phases in order, clusters in parallel within a phase, failures kept to their cluster."""
import threading
import time

from lib.errors import MeshError
from lib.executor import Executor, Phase, Step
from lib.reporter import Reporter
from lib.runner import Command
from tests.recording import RecordingRunner


def _quiet():
    return Reporter(quiet=True)


def test_clusters_run_in_parallel_up_to_the_bound():
    running, peak, lock = [0], [0], threading.Lock()

    def work(ctx):
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        time.sleep(0.1)
        with lock:
            running[0] -= 1

    phase = Phase("p")
    for i in range(6):
        phase.add(f"c{i}", Step("work", action=work))
    start = time.monotonic()
    Executor(RecordingRunner(), _quiet(), parallel=3).run_phases([phase])
    assert peak[0] == 3
    assert time.monotonic() - start < 0.5  # two waves of 0.1 s, not six


def test_a_failure_stops_that_cluster_only_and_it_sits_out_later_phases():
    runner = RecordingRunner(lambda c: (1, "", "no route to host") if c.context == "bad" else None)
    first, second = Phase("first"), Phase("second")
    for ctx in ("good", "bad"):
        first.add(ctx, Step("one", commands=[Command(("kubectl", "get", "ns"), context=ctx)]))
        first.add(ctx, Step("two", commands=[Command(("kubectl", "apply"), context=ctx)]))
        second.add(ctx, Step("three", commands=[Command(("istioctl", "install"), context=ctx)]))
    outcome = Executor(runner, _quiet(), parallel=2).run_phases([first, second])
    assert [(c.context, c.argv[0]) for c in runner.commands if c.context == "bad"] == [("bad", "kubectl")]
    assert outcome.done_steps["good"] == ["one", "two", "three"]
    failure = outcome.failures["bad"]
    assert failure.step == "one" and "no route to host" in failure.message and "kubectl get ns" in failure.message
    assert not outcome.ok


def test_an_unexpected_error_is_contained():
    phase = Phase("p")
    phase.add("a", Step("boom", action=lambda ctx: 1 / 0))
    phase.add("b", Step("fine", action=lambda ctx: None))
    outcome = Executor(RecordingRunner(), _quiet(), parallel=2).run_phases([phase])
    assert "ZeroDivisionError" in outcome.failures["a"].message
    assert outcome.done_steps["b"] == ["fine"]


def test_steps_share_results_between_phases():
    def export(ctx):
        with ctx.lock:
            ctx.shared.setdefault("secrets", {})[ctx.cluster] = f"secret-of-{ctx.cluster}"

    seen = {}

    def import_(ctx):
        seen[ctx.cluster] = sorted(v for k, v in ctx.shared["secrets"].items() if k != ctx.cluster)

    export_phase, import_phase = Phase("export"), Phase("import")
    for ctx in ("a", "b", "c"):
        export_phase.add(ctx, Step("export", action=export))
        import_phase.add(ctx, Step("import", action=import_))
    Executor(RecordingRunner(), _quiet(), parallel=3).run_phases([export_phase, import_phase])
    assert seen == {"a": ["secret-of-b", "secret-of-c"], "b": ["secret-of-a", "secret-of-c"],
                    "c": ["secret-of-a", "secret-of-b"]}


def test_failing_before_start_keeps_a_cluster_out():
    phase = Phase("p")
    phase.add("gone", Step("x", action=lambda ctx: None))
    executor = Executor(RecordingRunner(), _quiet(), parallel=1)
    executor.fail_before_start("gone", "read current state", MeshError("cannot read"))
    outcome = executor.run_phases([phase])
    assert "gone" not in outcome.done_steps and outcome.failures["gone"].step == "read current state"
