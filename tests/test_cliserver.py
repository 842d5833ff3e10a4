"""The forked runs the end-to-end tests use give what ``subprocess.run`` gives for the same command."""
from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from tests import cliserver

SCRIPT = r'''
import atexit, os, sys, threading, time

what = sys.argv[1]
if what == "exit":
    print("to stdout"); print("to stderr", file=sys.stderr); sys.exit(int(sys.argv[2]))
if what == "message":
    sys.exit("a message instead of a code")
if what == "raise":
    raise RuntimeError("boom")
if what == "where":
    print(os.getcwd(), os.environ.get("ONLY_HERE"), sys.argv[0] == __file__, sys.path[0] == os.path.dirname(__file__),
          __name__, sys.stdin.isatty(), sys.stdout.isatty())
if what == "stdin":
    print(sys.stdin.read().upper(), end="")
if what == "late":  # a non-daemon thread and an exit handler, both waited for
    atexit.register(lambda: print("exit handler"))
    threading.Thread(target=lambda: (time.sleep(0.3), print("thread done"))).start()
if what == "child":  # a process the run starts inherits its stdout
    import subprocess
    subprocess.run([sys.executable, "-c", "print('grandchild')"], check=True)
if what == "sleep":
    open("pid", "w").write(str(os.getpid()))
    time.sleep(60)
'''


@pytest.fixture()
def script(tmp_path):
    path = tmp_path / "bin" / "setup_mesh.py"
    path.parent.mkdir()
    path.write_text(SCRIPT)
    return path


def _both(script, *args, input="", env=None, cwd=None):
    argv = [sys.executable, str(script), *args]
    env = {**os.environ, **(env or {})}
    cwd = cwd or script.parent
    forked = cliserver.run(argv, env=env, cwd=cwd, input=input, timeout=30)
    plain = subprocess.run(argv, env=env, cwd=cwd, input=input, timeout=30, capture_output=True, text=True)
    return forked, plain


@pytest.mark.parametrize("args", [("exit", "0"), ("exit", "3"), ("exit", "300"), ("message",), ("stdin",),
                                  ("late",), ("child",)])
def test_a_forked_run_ends_as_a_new_interpreter_does(script, args):
    forked, plain = _both(script, *args, input="read me")
    assert (forked.returncode, forked.stdout, forked.stderr) == (plain.returncode, plain.stdout, plain.stderr)
    assert forked.args == plain.args


def test_an_uncaught_exception_prints_its_traceback_and_exits_1(script):
    forked, plain = _both(script, "raise")
    assert forked.returncode == plain.returncode == 1
    assert forked.stderr.splitlines()[-1] == plain.stderr.splitlines()[-1] == "RuntimeError: boom"
    assert forked.stderr.startswith("Traceback (most recent call last):")


def test_a_forked_run_takes_the_runs_folder_environment_and_script(script, tmp_path):
    forked, plain = _both(script, "where", env={"ONLY_HERE": "yes"}, cwd=tmp_path)
    assert forked.stdout == plain.stdout == f"{tmp_path} yes True True __main__ False False\n"
    assert "ONLY_HERE" not in os.environ


def test_a_run_past_its_timeout_is_killed_and_raises_as_subprocess_does(script):
    started = time.monotonic()
    with pytest.raises(subprocess.TimeoutExpired):
        cliserver.run([sys.executable, str(script), "sleep"], env=dict(os.environ), cwd=script.parent, timeout=1)
    assert time.monotonic() - started < 10
    pid = int((script.parent / "pid").read_text())
    for _ in range(100):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    else:
        pytest.fail(f"the timed-out run (pid {pid}) still runs")


def test_a_server_that_cannot_start_gives_way_to_a_plain_run(script, monkeypatch):
    """setup_mesh.py failing to import kills the server: the run still happens, and shows why it fails."""
    server = cliserver._Server()
    server.proc.kill()
    server.proc.wait()
    monkeypatch.setattr(cliserver, "_server", lambda: server)
    forked, plain = _both(script, "exit", "3")
    assert (forked.returncode, forked.stdout) == (plain.returncode, plain.stdout) == (3, "to stdout\n")


def test_a_server_that_has_gone_is_not_started_again(monkeypatch):
    monkeypatch.setattr(cliserver, "_state", {})
    server = cliserver._server()
    assert server is not None and cliserver._server() is server
    server.proc.kill()
    server.proc.wait()
    assert cliserver._server() is None, "its runs are plain subprocesses from then on"
    server.sock.close()
