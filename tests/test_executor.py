"""The executor: clusters in parallel, steps in order, dependencies between clusters, failures kept to their cluster."""
import threading
import time

from lib.errors import MeshError
from lib.executor import After, Executor, Interrupted, Phase, Step
from lib.reporter import Reporter
from lib.runner import Command
from tests.recording import RecordingRunner


def _quiet():
    return Reporter(quiet=True)


def test_clusters_run_in_parallel_up_to_the_bound():
    running, peak, lock = [0], [0], threading.Lock()
    # Each step goes on only once three run at the same time: two waves of three, whatever the machine's load.
    together = threading.Barrier(3, timeout=60)

    def work(ctx):
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        together.wait()
        with lock:
            running[0] -= 1

    phase = Phase("p")
    for i in range(6):
        phase.add(f"c{i}", Step("work", action=work))
    outcome = Executor(RecordingRunner(), _quiet(), parallel=3).run_phases([phase])
    assert outcome.ok, outcome.failures
    assert peak[0] == 3


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


def test_a_step_waits_for_the_step_of_another_cluster_it_depends_on():
    order = []
    others_ran = threading.Event()

    def slow(ctx):
        # The primary works until the remote has prepared and the other cluster installed (they run meanwhile).
        others_ran.wait(timeout=60)
        order.append(("primary", "exposed"))

    def record(name):
        def action(ctx):
            order.append((ctx.cluster, name))
            if {("remote", "prepare"), ("other", "install")} <= set(order):
                others_ran.set()
        return action

    phase = Phase("p")
    phase.add("primary", Step("expose istiod", action=slow))
    phase.add("remote", Step("prepare", action=record("prepare")))
    phase.add("remote", Step("install", action=record("install"), after=[After("primary", "expose istiod")]))
    phase.add("other", Step("install", action=record("install")))
    outcome = Executor(RecordingRunner(), _quiet(), parallel=3).run_plan([phase])
    assert outcome.ok
    # The remote prepares and the unrelated cluster installs while the primary works; the remote installs after.
    assert order.index(("primary", "exposed")) < order.index(("remote", "install"))
    assert order.index(("remote", "prepare")) < order.index(("primary", "exposed"))
    assert order.index(("other", "install")) < order.index(("primary", "exposed"))


def test_a_failed_dependency_makes_the_dependent_sit_out_with_that_reason():
    def fail(ctx):
        raise MeshError("gateway has no address")

    ran = []
    phase = Phase("p")
    phase.add("primary", Step("expose istiod", action=fail))
    phase.add("remote", Step("install", action=lambda ctx: ran.append("remote"),
                             after=[After("primary", "expose istiod")]))
    phase.add("peer", Step("import", action=lambda ctx: ran.append("peer"),
                           after=[After("primary", "expose istiod", required=False)]))
    outcome = Executor(RecordingRunner(), _quiet(), parallel=3).run_plan([phase])
    assert ran == ["peer"], "an optional dependency waits for the step to end, whatever its outcome"
    failure = outcome.failures["remote"]
    assert failure.step == "install" and "primary" in failure.message and "expose istiod" in failure.message
    assert outcome.failures["primary"].message == "gateway has no address"


def test_a_dependency_on_a_step_the_plan_lacks_is_met():
    phase = Phase("p")
    phase.add("remote", Step("install", action=lambda ctx: None, after=[After("primary", "expose istiod")]))
    outcome = Executor(RecordingRunner(), _quiet(), parallel=1).run_plan([phase])
    assert outcome.ok and outcome.done_steps == {"remote": ["install"]}


def test_run_plan_does_not_hold_clusters_at_phase_boundaries():
    # run_phases ends a phase everywhere before the next; run_plan lets a fast cluster run ahead.
    order, said = [], {"fast one": threading.Event(), "fast two": threading.Event()}

    def phases(slow_waits_for: str) -> list[Phase]:
        def say(what):
            return lambda ctx: (order.append(what), said[what].set() if what in said else None)

        first, second = Phase("first"), Phase("second")
        first.add("slow", Step("one", action=lambda ctx: (said[slow_waits_for].wait(timeout=60),
                                                          order.append("slow one"))))
        first.add("fast", Step("one", action=say("fast one")))
        second.add("fast", Step("two", action=say("fast two")))
        return [first, second]

    # The slow cluster ends its step only once the fast one has done both of its: run_plan lets it.
    Executor(RecordingRunner(), _quiet(), parallel=2).run_plan(phases(slow_waits_for="fast two"))
    assert order == ["fast one", "fast two", "slow one"]
    order.clear()
    for event in said.values():
        event.clear()
    Executor(RecordingRunner(), _quiet(), parallel=2).run_phases(phases(slow_waits_for="fast one"))
    assert order == ["fast one", "slow one", "fast two"]


def test_a_cluster_that_runs_nothing_says_truly_what_it_waits_for():
    """Done, waiting for a named cluster's step, or queued behind --parallel: never a vague 'waiting'."""
    seen = {}
    reporter = _quiet()
    want = {"remote": "waiting for primary (install)", "other": "done here"}

    def slow(ctx):
        # meanwhile the executor tells the reporter what the others wait for
        seen.update(_rows_once(reporter, want))

    phase = Phase("p")
    phase.add("primary", Step("install", action=slow))
    phase.add("remote", Step("install remote", action=lambda ctx: None, after=[After("primary", "install")]))
    phase.add("other", Step("quick", action=lambda ctx: None))
    reporter.start_progress([("primary", "n1"), ("remote", "n1"), ("other", "n2")])
    Executor(RecordingRunner(), reporter, parallel=3).run_phases([phase])
    assert seen == {"remote": "waiting for primary (install)", "other": "done here"}


def test_a_cluster_behind_the_parallel_bound_says_it_is_queued():
    seen = {}
    reporter = _quiet()

    def slow(ctx):
        seen.update(_rows_once(reporter, {"second": "queued (--parallel 1)"}))

    phase = Phase("p")
    phase.add("first", Step("work", action=slow))
    phase.add("second", Step("work", action=lambda ctx: None))
    reporter.start_progress([("first", "n1"), ("second", "n1")])
    Executor(RecordingRunner(), reporter, parallel=1).run_phases([phase])
    assert seen == {"second": "queued (--parallel 1)"}


def _rows_once(reporter: Reporter, want: dict[str, str], timeout: float = 60) -> dict[str, str]:
    """The progress rows of ``want``'s clusters once they say what ``want`` says (or what they say at the
    timeout): the executor updates them from its own thread."""
    deadline = time.monotonic() + timeout
    while True:
        rows = {c: reporter.rows[c].step for c in want}
        if rows == want or time.monotonic() > deadline:
            return rows
        time.sleep(0.01)


def test_ctrl_c_names_for_each_cluster_the_step_that_did_not_start():
    """A cluster between two steps was not 'interrupted before it started', and one that never started
    was not 'interrupted before this step finished'."""
    import os
    import signal

    reporter = _quiet()
    reporter.start_progress([("c1", "n1"), ("c2", "n1")])

    def press_ctrl_c(ctx):
        # Once the executor waits for its steps (it has said what c2 waits for), as it does most of a run.
        _rows_once(reporter, {"c2": "waiting for c1 (install Istio)"})
        os.kill(os.getpid(), signal.SIGINT)  # reaches the executor's main thread as KeyboardInterrupt
        assert ctx.cancelled.wait(timeout=60), "the executor saw the Ctrl-C"  # the step ends after it

    phase = Phase("p")
    phase.add("c1", Step("make intermediate CA", action=press_ctrl_c))
    phase.add("c1", Step("install Istio", action=lambda ctx: None))
    phase.add("c2", Step("import secrets", action=lambda ctx: None, after=[After("c1", "install Istio")]))
    outcome = Executor(RecordingRunner(), reporter, parallel=2).run_phases([phase])
    assert outcome.interrupted
    assert {c: f.message for c, f in outcome.failures.items()} == {
        "c1": "interrupted before install Istio", "c2": "interrupted before it started"}


def test_a_command_the_terminal_s_ctrl_c_ended_is_an_interruption_not_a_failure():
    """The terminal's SIGINT reaches make, kubectl and istioctl with setup-mesh: a thread can see its command
    die of it before the main thread has seen the Ctrl-C. That cluster was interrupted; it did not fail."""
    runner = RecordingRunner(lambda c: (-2, "", "") if c.context == "c1" else None)
    phase = Phase("p")
    phase.add("c1", Step("make intermediate CA", commands=[Command(("make", "c1-cacerts"), context="c1")]))
    phase.add("c1", Step("install Istio", commands=[Command(("istioctl", "install"), context="c1")]))
    reporter = _quiet()
    reporter.start_progress([("c1", "n1")])
    outcome = Executor(runner, reporter, parallel=1).run_phases([phase])
    failure = outcome.failures["c1"]
    assert isinstance(failure, Interrupted) and failure.message == "interrupted before this step finished"
    assert reporter.rows["c1"].interrupted and [c.argv[0] for c in runner.commands] == ["make"]
    # Any other end of a command is a failure, with its exit code
    runner.responder = lambda c: (2, "", "make: *** [c1-cacerts] Error 2")
    failed = Executor(runner, _quiet(), parallel=1).run_phases([phase]).failures["c1"]
    assert not isinstance(failed, Interrupted) and "exited with code 2" in failed.message


def test_a_failed_read_keeps_its_value_and_is_reported_failed_once_not_ok():
    import io

    from rich.console import Console

    from lib.config import Cluster
    from lib.executor import Unread, read_clusters

    out = io.StringIO()
    reporter = Reporter(console=Console(file=out, width=200), err_console=Console(file=out, width=200))

    def read(ctx, cluster):
        if cluster.context == "down":
            raise Unread("connection refused", {"reachable": False})
        return {"reachable": True}

    clusters = [Cluster("up", "n1", "up"), Cluster("down", "n1", "down")]
    found = read_clusters(clusters, RecordingRunner(), reporter, 2, "read current state", read)
    assert found == {"up": {"reachable": True}, "down": {"reachable": False}}
    lines = out.getvalue().splitlines()
    assert any(line.endswith("down: read current state: FAILED (0.0s) - connection refused") for line in lines), lines
    assert not any("down: read current state: ok" in line for line in lines)
    # The cluster then sits the run out for that read: said once.
    reporter.step_done("down", "read current state", False, 0.0, detail="cannot read the cluster")
    assert sum("down: read current state: FAILED" in line for line in out.getvalue().splitlines()) == 1


def test_a_read_ended_by_ctrl_c_is_reported_interrupted_not_failed():
    import io
    import signal

    from rich.console import Console

    from lib.config import Cluster
    from lib.errors import CommandFailed
    from lib.executor import Unread, read_clusters

    out = io.StringIO()
    reporter = Reporter(console=Console(file=out, width=200), err_console=Console(file=out, width=200))

    def read(ctx, cluster):
        killed = CommandFailed(Command(("kubectl", "get", "ns"), context=cluster.context), -signal.SIGINT, "")
        raise Unread(killed.message, {"reachable": False}) from killed

    found = read_clusters([Cluster("c1", "n1", "c1")], RecordingRunner(), reporter, 1, "read current state", read)
    assert found == {"c1": {"reachable": False}}
    assert "c1: read current state: interrupted" in out.getvalue(), out.getvalue()
