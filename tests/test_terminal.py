"""setup-mesh at a terminal: the live progress table, and the confirmation prompt answered with no, Ctrl-C
or Ctrl-D. Each runs ./setup_mesh.py on a pseudo-terminal, as a user types it."""
from __future__ import annotations

import re
import sys

import pytest

from tests.meshkit import FAST_KEYS, ROOT, make_mesh
from tests.terminal import CTRL_C, CTRL_D, Terminal, plain

NETS = {"cluster1": "network1", "cluster2": "network2"}
HIDE_CURSOR, SHOW_CURSOR = "\x1b[?25l", "\x1b[?25h"


@pytest.fixture
def mesh(sandbox_factory, tmp_path):
    return make_mesh(sandbox_factory(list(NETS)), tmp_path / "ws", NETS)


def at_terminal(mesh, *args: str) -> Terminal:
    env = dict(mesh.sandbox.env, **FAST_KEYS)
    return Terminal([sys.executable, str(ROOT / "setup_mesh.py"), *args, "--workdir", str(mesh.workdir)], env)


def dumps(mesh) -> dict[str, str]:
    return {ctx: mesh.sandbox.dump(ctx) for ctx in mesh.sandbox.contexts}


def test_apply_draws_a_live_table_and_leaves_the_terminal_clean(mesh):
    term = at_terminal(mesh, "apply", "-y")
    assert term.wait() == mesh.applied_code(), plain(term.output)
    out = term.output
    # A live table, redrawn in place (cursor up, erase line), not a log of timestamped lines.
    assert out.count("\x1b[1A") + out.count("\x1b[2K") > 4, "the table is redrawn in place"
    assert "install Istio" in plain(out), "rows show the step each cluster is on"
    assert " cluster1: install Istio ..." not in plain(out), "no plain progress lines on a terminal"
    # It ends cleanly: the cursor hidden for the live table is shown again, and the summary is last.
    assert out.rfind(SHOW_CURSOR) > out.rfind(HIDE_CURSOR) >= 0
    results = mesh.results(plain(out[out.rfind(SHOW_CURSOR):]))
    assert sorted(results) == sorted(NETS) and all(r.startswith("installed") for r in results.values()), results
    assert "apply finished" in plain(out)


def test_status_at_a_terminal(mesh):
    mesh.apply()
    term = at_terminal(mesh, "status")
    code = term.wait()
    text = plain(term.output)
    assert code == 1, text  # the sandbox's API servers are loopback addresses: remote_secret_local
    assert "unhealthy: 1 problem in 2 of 2 clusters" in text and "set api_server:" in text
    assert term.output.count(HIDE_CURSOR) == term.output.count(SHOW_CURSOR)


@pytest.mark.parametrize("answer,code,message", [
    (b"n\r", 1, "cancelled at the prompt; nothing was changed"),
    (b"\r", 1, "cancelled at the prompt; nothing was changed"),  # the default is no
    (CTRL_C, 130, "error: interrupted"),
    (CTRL_D, 130, "error: interrupted"),
], ids=["no", "enter", "ctrl-c", "ctrl-d"])
def test_teardown_prompt_declined_changes_nothing(mesh, answer, code, message):
    mesh.apply()
    before, files = dumps(mesh), sorted(p.name for p in mesh.workdir.rglob("*"))
    term = at_terminal(mesh, "teardown")
    term.expect("Remove setup-mesh's Istio, its secrets and istio-system from cluster1, cluster2? [y/N]:")
    term.answer(answer)
    assert term.wait() == code, plain(term.output)
    text = plain(term.output)
    assert message in text and "Traceback" not in text
    assert dumps(mesh) == before, "a declined teardown touches no cluster"
    assert sorted(p.name for p in mesh.workdir.rglob("*")) == files, "and writes no file (not even a run log)"


def test_apply_asks_before_removing_a_cluster_and_goes_ahead_on_yes(mesh):
    mesh.apply()
    mesh.write_topology({"cluster1": "network1"})
    term = at_terminal(mesh, "apply")
    term.expect("Remove the cluster and the remote secrets listed above? [y/N]:")
    assert "cluster2" in plain(term.output), "what would be removed is named before the question"
    term.send(b"y\r")
    assert term.wait() == 0, plain(term.output)
    assert mesh.get("cluster2", "namespace", "istio-system", check=False) is None
    assert mesh.remote_secrets("cluster1") == {}


def test_ctrl_c_while_applying_stops_everything_and_the_next_run_converges(mesh):
    env_latency = {"ISTIOCTL_STANDIN_LATENCY": "install=3"}
    term = Terminal([sys.executable, str(ROOT / "setup_mesh.py"), "apply", "-y", "--workdir", str(mesh.workdir)],
                    dict(mesh.sandbox.env, **FAST_KEYS, **env_latency))
    term.expect("install Istio")
    term.send(CTRL_C)
    assert term.wait(timeout=60) == 130, plain(term.output)
    out = term.output
    assert "apply interrupted" in plain(out) and "Traceback" not in plain(out)
    assert out.rfind(SHOW_CURSOR) > out.rfind(HIDE_CURSOR), "the cursor is shown again"
    assert "run log:" in plain(out)
    mesh.apply()
    assert sorted(mesh.remote_secrets("cluster2")) == ["cluster1"]


def _cacerts(mesh) -> dict[str, dict]:
    return {ctx: mesh.get(ctx, "secret", "cacerts", "-n", "istio-system")["data"] for ctx in NETS}


# A progress line as printed where there is no terminal: "12:34:56 cluster1: read current state ...".
_READ_LINE = re.compile(r"\d\d:\d\d:\d\d cluster\d: read ")


def test_rotate_certs_shows_its_plan_and_asks_no_changes_nothing_yes_goes_ahead(mesh):
    mesh.apply()
    before = _cacerts(mesh)
    question = "Re-issue the intermediate CAs of cluster1, cluster2 and update their cacerts? [y/N]:"
    term = at_terminal(mesh, "rotate-certs")
    term.expect(question)
    text = plain(term.output)
    assert "cluster1 (network1, primary): change" in text and "+ intermediate CA (certs/cluster2/)" in text
    assert not _READ_LINE.search(text), "the reads show on the live table, not as log lines"
    term.send(b"n\r")
    assert term.wait() == 1, plain(term.output)
    assert "cancelled at the prompt; nothing was changed" in plain(term.output)
    assert _cacerts(mesh) == before, "cacerts untouched"
    assert not (mesh.workdir / "backups").exists() and not (mesh.workdir / ".setup-mesh" / "rotation.json").exists()

    term = at_terminal(mesh, "rotate-certs")
    term.expect(question)
    term.send(b"y\r")
    assert term.wait() == 0, plain(term.output)
    assert "rotate-certs finished" in plain(term.output)
    after = _cacerts(mesh)
    assert all(after[ctx]["ca-cert.pem"] != before[ctx]["ca-cert.pem"] for ctx in NETS), "re-issued everywhere"


def test_rotate_certs_root_reads_on_the_live_table_then_asks_before_it_makes_a_root(mesh):
    mesh.apply()
    before = _cacerts(mesh)
    term = at_terminal(mesh, "rotate-certs", "--root")
    term.expect("Make a new root CA and bring cluster1, cluster2 to stage 1 of 3? [y/N]:")
    out = term.output
    asked = out.rfind("Make a new root CA")
    assert 0 <= out.find(HIDE_CURSOR) < asked, "the live table is drawn while the clusters are read"
    assert not _READ_LINE.search(plain(out)), "no timestamped progress lines on a terminal"
    assert "~ secret cacerts: root-cert.pem trusts the old and the new root" in plain(out)
    term.send(b"n\r")
    assert term.wait() == 1, plain(term.output)
    assert _cacerts(mesh) == before and not (mesh.workdir / "certs-next").exists()


ROOT_PLAN_160 = [
    "starting the move to a new root: stage 1 of 3 (trust both roots, keep the old intermediate)",
    "first a new root CA is made in certs-next/",
    "rotate-certs --root: mesh mesh1, 2 clusters on network1, network2",
    "",
    "cluster1 (network1, primary): change",
    "  ~ Istio (overlays/cluster1.yaml)",
    "      + spec.values.pilot.env.ISTIO_MULTIROOT_MESH: \"true\"",
    "  ~ secret cacerts: root-cert.pem trusts the old and the new root, same intermediate (certs/cluster1/)",
    "  · confirm istiod runs on the stage's roots",
    "",
    "cluster2 (network2, primary): change",
    "  ~ Istio (overlays/cluster2.yaml)",
    "      + spec.values.pilot.env.ISTIO_MULTIROOT_MESH: \"true\"",
    "  ~ secret cacerts: root-cert.pem trusts the old and the new root, same intermediate (certs/cluster2/)",
    "  · confirm istiod runs on the stage's roots",
    "",
    "Plan: 2 change.",
    "Make a new root CA and bring cluster1, cluster2 to stage 1 of 3? [y/N]:",
]
ROOT_PLAN_80 = [
    "starting the move to a new root: stage 1 of 3 (trust both roots, keep the old",
    "  intermediate)",
    *ROOT_PLAN_160[1:7],
    "  ~ secret cacerts: root-cert.pem trusts the old and the new root, same",
    "      intermediate (certs/cluster1/)",
    *ROOT_PLAN_160[8:13],
    "  ~ secret cacerts: root-cert.pem trusts the old and the new root, same",
    "      intermediate (certs/cluster2/)",
    *ROOT_PLAN_160[14:],
]


@pytest.mark.parametrize("cols,expected", [(80, ROOT_PLAN_80), (160, ROOT_PLAN_160)])
def test_rotate_certs_root_shows_its_plan_and_question_wrapped_at_words(mesh, cols, expected):
    mesh.apply()
    term = Terminal([sys.executable, str(ROOT / "setup_mesh.py"), "rotate-certs", "--root", "--workdir",
                     str(mesh.workdir)], dict(mesh.sandbox.env, **FAST_KEYS), cols=cols)
    term.expect("[y/N]:")
    text = plain(term.output)
    shown = text[text.index("starting the move"):]
    # The command that shows every command is one piece, however long its paths: on the line after its
    # label when the line would be too long, else on the same line.
    command = f"{ROOT / 'setup_mesh.py'} rotate-certs --root --dry-run -v --workdir {mesh.workdir}"
    label = "Every command and manifest:"
    assert f"{label}\n    {command}\n" in shown or f"{label} {command}\n" in shown, shown
    kept = [line.rstrip() for line in shown.splitlines() if label not in line and command not in line]
    assert kept == expected, shown
    assert all(len(line) <= cols for line in kept)
    term.send(b"n\r")
    assert term.wait() == 1, plain(term.output)


def test_a_dry_run_plan_at_80_columns_is_wrapped_at_words_and_keeps_its_command_whole(sandbox_factory, tmp_path):
    """The dry run's plan on a narrow terminal, with context names as long as a cloud's: no line runs over
    the width (the terminal would break words inside names), and the command that shows every command
    stays one piece."""
    nets = {"acme-platform-prod-europe-west1-mesh-east": "network1",
            "acme-platform-prod-europe-west4-mesh-west": "network2"}
    mesh = make_mesh(sandbox_factory(list(nets)), tmp_path / "ws", nets)
    term = Terminal([sys.executable, str(ROOT / "setup_mesh.py"), "apply", "--dry-run", "--workdir",
                     str(mesh.workdir)], dict(mesh.sandbox.env, **FAST_KEYS), cols=80)
    term.wait()
    text = plain(term.output)
    assert "Plan (dry run, changes nothing)" in text, text
    plan = text[text.index("Plan (dry run, changes nothing)"):]
    command = f"{ROOT / 'setup_mesh.py'} apply --dry-run -v --workdir {mesh.workdir}"
    assert command in plan, plan
    assert "secret cacerts" in plan and "mesh-west" in plan, plan
    # Only a word longer than the terminal (a test's temporary path) may run over: it has nowhere to break.
    over = [line for line in plan.splitlines() if len(line.rstrip()) > 80 and command not in line
            and " " in line.strip()]
    assert over == [], over
