"""The one subprocess seam: argv only, pasteable lines, failures that carry the command and stderr."""
import os
import signal
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from lib.errors import CommandFailed, Interrupted, ToolMissing
from lib.runner import Command, ShRunner
from tests.recording import RecordingRunner

ROOT = Path(__file__).resolve().parents[1]


def test_pasteable_quotes_every_argument():
    cmd = Command(("kubectl", "--context", "my ctx; rm -rf /", "get", "ns"), cwd="/tmp/a b", env={"X": "1 2"})
    assert cmd.pasteable() == "cd '/tmp/a b' && X='1 2' kubectl --context 'my ctx; rm -rf /' get ns"


def test_secret_stdin_is_never_shown():
    cmd = Command(("kubectl", "apply", "-f", "-"), stdin="data: c2VjcmV0")
    assert "c2VjcmV0" not in cmd.pasteable(with_stdin=True)
    shown = Command(("kubectl", "apply", "-f", "-"), stdin="kind: Gateway", stdin_shown=True)
    assert shown.pasteable(with_stdin=True).endswith("<<'EOF'\nkind: Gateway\nEOF")


def test_arguments_with_shell_metacharacters_reach_the_program_unchanged(tmp_path):
    weird = "a b;$(touch pwned)`x`'\""
    result = ShRunner().run(Command(("printf", "%s", weird), cwd=str(tmp_path)))
    assert result.stdout == weird
    assert not (tmp_path / "pwned").exists()


def test_failure_carries_command_exit_code_and_stderr_tail():
    runner = ShRunner()
    seen = []
    runner.listeners.append(seen.append)
    with pytest.raises(CommandFailed) as info:
        runner.run(Command(("sh", "-c", "echo first >&2; echo last >&2; exit 3")))
    assert info.value.exit_code_of_command == 3
    assert info.value.stderr_tail == "first\nlast"
    assert "sh -c" in info.value.message
    assert seen[0].exit_code == 3 and seen[0].duration >= 0


def test_a_failure_says_each_line_of_the_programs_error_once():
    # kubectl repeats a refused connection once per kind of a read; a blank line between parts is kept.
    refused = "The connection to the server 10.0.0.1:6443 was refused - did you specify the right host or port?"
    script = f"for i in 1 2 3; do echo '{refused}' >&2; done; echo >&2; echo other >&2; echo >&2; echo last >&2; exit 1"
    with pytest.raises(CommandFailed) as info:
        ShRunner().run(Command(("sh", "-c", script)))
    assert info.value.message.endswith(f":\n{refused}\n\nother\n\nlast")
    assert info.value.stderr_tail.count(refused) == 3, "what the program said is kept as it said it"


def test_timeout_is_reported_as_such():
    with pytest.raises(CommandFailed) as info:
        ShRunner().run(Command(("sleep", "5"), timeout=0.3))
    assert info.value.timed_out
    assert "timed out after 0.3s" in info.value.message


def test_a_command_with_a_timeout_ends_when_its_program_does():
    # sh's own _timeout noticed a program's end on a 0.1 s tick: every kubectl call of a run lasted up to
    # 100 ms longer than kubectl did, ten quick commands at least a second. 0.8 s stays under that floor and
    # leaves room for a loaded machine (2 cores under 6 busy processes: 0.14 to 0.32 s for the ten).
    runner = ShRunner()
    durations = []
    runner.listeners.append(lambda result: durations.append(result.duration))
    before = set(threading.enumerate())
    for _ in range(10):
        runner.run(Command(("true",), timeout=60))
    assert sum(durations) < 0.8, f"ten runs of `true` took {sum(durations):.2f}s"
    # and no timer outlives its command: one left would send SIGKILL to whatever holds that pid by then
    # (a cancelled timer's thread ends at once; the timeouts here are a minute)
    for timer in [t for t in set(threading.enumerate()) - before if isinstance(t, threading.Timer)]:
        timer.join(1.0)
        assert not timer.is_alive()


def test_a_deadline_that_comes_after_the_program_was_reaped_kills_nothing():
    # Its pid may belong to another program by then. (The runner cancels the deadline when the program ends;
    # this is the moment between the two.)
    from types import SimpleNamespace

    from lib.runner import _Deadline

    killed = []
    reaped = SimpleNamespace(process=SimpleNamespace(exit_code=0), kill=lambda: killed.append("reaped"))
    running = SimpleNamespace(process=SimpleNamespace(exit_code=None), kill=lambda: killed.append("running"))
    deadlines = [_Deadline(reaped, 0.01), _Deadline(running, 0.01)]
    for deadline in deadlines:
        deadline._timer.join(1.0)
    assert killed == ["running"]
    assert [d.fired for d in deadlines] == [False, True]


def test_stdin_is_passed_and_files_written_by_tools_are_private(tmp_path):
    ShRunner().run(Command(("sh", "-c", "cat > out.txt"), stdin="hello", cwd=str(tmp_path)))
    path = tmp_path / "out.txt"
    assert path.read_text() == "hello"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


def test_missing_program_is_a_tool_missing_error():
    with pytest.raises(ToolMissing) as info:
        ShRunner().run(Command(("istioctl-does-not-exist", "version")))
    assert "not found on PATH" in info.value.message


def test_recording_runner_records_and_scripts_answers():
    runner = RecordingRunner(lambda c: (1, "", "boom") if "fail" in c.argv else None)
    runner.run(Command(("kubectl", "get", "ns")))
    with pytest.raises(CommandFailed):
        runner.run(Command(("kubectl", "fail")))
    assert runner.lines() == ["kubectl get ns", "kubectl fail"]


def test_after_ctrl_c_no_command_starts(tmp_path):
    runner = ShRunner()
    runner.terminate_all()
    with pytest.raises(Interrupted) as info:
        runner.run(Command(("touch", str(tmp_path / "ran")), check=False))
    assert not (tmp_path / "ran").exists()
    assert info.value.message == f"interrupted before `touch {tmp_path / 'ran'}` started"


def test_after_ctrl_c_the_runs_own_clean_up_may_run_commands_again(tmp_path):
    runner = ShRunner()
    runner.terminate_all()
    runner.resume()  # verify deletes the namespace it made, also after Ctrl-C
    assert runner.run(Command(("touch", str(tmp_path / "ran")), check=False)).ok
    assert (tmp_path / "ran").exists()


class _CtrlCWhileStarting(ShRunner):
    """Ctrl-C lands between the program's start and the runner's record of it (a thread of the executor
    starts a command while the main thread ends the running ones)."""

    def _start(self, program, command, kwargs):
        proc = super()._start(program, command, kwargs)
        self.terminate_all()
        return proc


def test_a_command_started_while_ctrl_c_ends_the_others_is_ended_too():
    # It came after the terminal's SIGINT: left alone, the run would wait the whole 60 s for it.
    result = _CtrlCWhileStarting().run(Command(("sleep", "60"), check=False))
    assert result.exit_code == -signal.SIGTERM


def test_ctrl_c_in_the_thread_that_waits_ends_the_command(monkeypatch):
    import sh

    waited = []

    def interrupted_wait(self, *args, **kwargs):
        waited.append(self)
        raise KeyboardInterrupt

    monkeypatch.setattr(sh.RunningCommand, "wait", interrupted_wait)
    with pytest.raises(KeyboardInterrupt):
        ShRunner().run(Command(("sleep", "60")))
    monkeypatch.undo()
    (proc,) = waited
    try:
        proc.wait()  # without the runner's end of it: 60 s, then exit code 0
    except sh.ErrorReturnCode:  # sh 2.0 raises for a SIGTERM exit whatever codes were allowed
        pass
    assert proc.exit_code == -signal.SIGTERM


# Run in a process of its own: without the guard, the forked copy of the process would run on.
_CTRL_C_BEFORE_EXEC = """
import os, signal, sys, threading
from lib import runner
from lib.runner import Command, ShRunner

in_child = runner._in_child

def ctrl_c_between_fork_and_exec():
    os.kill(os.getpid(), signal.SIGINT)  # the terminal's SIGINT reaches the whole process group
    in_child()

runner._in_child = ctrl_c_between_fork_and_exec
seen = []

def step():  # as the executor's threads run commands
    try:
        result = ShRunner().run(Command(("true",), check=False))
        seen.append((result.exit_code, result.stdout))
    except BaseException as exc:
        seen.append(type(exc).__name__)

thread = threading.Thread(target=step)
thread.start()
thread.join()
print(seen)
"""


def test_ctrl_c_between_fork_and_exec_ends_the_command_not_a_copy_of_setup_mesh():
    # Left to Python's handler, the SIGINT raised KeyboardInterrupt in the forked child, past sh's
    # `except Exception`: the copy ran our code on in place of the program (apply then hung on it).
    done = subprocess.run([sys.executable, "-c", _CTRL_C_BEFORE_EXEC], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert done.stdout.splitlines() == [str([(-signal.SIGINT, "")])], done.stdout + done.stderr
