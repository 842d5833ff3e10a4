"""Warnings, errors and hints on a terminal: wrapped at word boundaries, never inside a command."""
import io
import re

from rich.console import Console

from lib.errors import MeshError
from lib.reporter import Reporter
from lib.wrapping import wrap_prose

WARNING = ("context 'cluster1' names the API server https://127.0.0.1:39043, which other clusters cannot "
           "reach; set api_server: for it in topology.yaml, then run `setup-mesh apply --workdir mesh` again")
HINT = "run `setup-mesh rotate-certs --root --min-wait 0 --workdir /srv/meshes/production-eu-west` for stage 3"


def _terminal(width):
    out, err = io.StringIO(), io.StringIO()
    console = dict(width=width, force_terminal=True, color_system=None, highlight=False, soft_wrap=True)
    return Reporter(console=Console(file=out, **console), err_console=Console(file=err, **console)), out, err


def _commands(text: str) -> list[str]:
    return re.findall(r"`[^`\n]*`", text)


def test_a_warning_at_80_columns_breaks_between_words():
    reporter, _, err = _terminal(80)
    reporter.warn(WARNING)
    assert err.getvalue().splitlines() == [
        "warning: context 'cluster1' names the API server https://127.0.0.1:39043, which",
        "  other clusters cannot reach; set api_server: for it in topology.yaml, then run",
        "  `setup-mesh apply --workdir mesh` again",
    ]


def test_the_same_warning_at_160_columns_breaks_before_the_command():
    reporter, _, err = _terminal(160)
    reporter.warn(WARNING)
    assert err.getvalue().splitlines() == [
        "warning: context 'cluster1' names the API server https://127.0.0.1:39043, which other clusters cannot "
        "reach; set api_server: for it in topology.yaml, then run",
        "  `setup-mesh apply --workdir mesh` again",
    ]


def test_an_error_and_its_hint_at_80_columns_keep_every_command_whole():
    reporter, _, err = _terminal(80)
    reporter.error(MeshError("the next stage of the move to a new root may start at 2026-12-04 10:00 UTC, "
                             "once every cluster has held stage 2 for 24h", hint=HINT))
    lines = err.getvalue().splitlines()
    assert lines == [
        "error: the next stage of the move to a new root may start at 2026-12-04 10:00",
        "  UTC, once every cluster has held stage 2 for 24h",
        "hint: run",
        "  `setup-mesh rotate-certs --root --min-wait 0 --workdir /srv/meshes/production-eu-west`",
        "  for stage 3",
    ]
    assert _commands(err.getvalue()) == _commands(HINT)  # the command is on one line, whole


def test_off_a_terminal_nothing_is_wrapped_for_logs_and_grep():
    out, err = io.StringIO(), io.StringIO()
    off = dict(width=80, soft_wrap=True)  # as the Reporter makes its own consoles
    reporter = Reporter(console=Console(file=out, **off), err_console=Console(file=err, **off))
    reporter.warn(WARNING)
    assert err.getvalue() == f"warning: {WARNING}\n"


def test_listed_items_keep_their_indent_and_no_line_is_wider_than_the_terminal():
    text = ("base.yaml sets values that setup-mesh owns:\n"
            "  base.yaml:7: spec.values.global.meshID is set by setup-mesh from topology.yaml mesh_id\n"
            "  base.yaml:9: spec.values.global.network is set by setup-mesh from topology.yaml "
            "contexts.<context>.network")
    lines = wrap_prose(text, 80, first_prefix="error: ")
    assert lines[1].startswith("  base.yaml:7: ") and lines[2].startswith("    ")
    assert all(len(line) <= 80 for line in lines)
    assert " ".join(" ".join(lines).split()) == " ".join(f"error: {text}".split())  # no word lost or split


def test_a_setup_mesh_command_without_backticks_is_not_split_either():
    hint = ("the primary cluster1 lacks the remote's secret: ./setup_mesh.py apply --workdir /srv/mesh --context "
            "cluster1 creates it again, and status shows why")
    lines = wrap_prose(hint, 60, first_prefix="hint: ")
    assert lines[1] == "  ./setup_mesh.py apply --workdir /srv/mesh --context cluster1", lines
    assert all(len(line) <= 60 for line in lines if "setup_mesh.py" not in line)


def test_a_confirmation_question_at_80_columns_is_wrapped_with_room_for_the_answer(monkeypatch):
    import sys

    import typer

    from lib.driver import confirm

    asked = []
    monkeypatch.setattr(sys.stdin, "isatty", lambda: True)
    monkeypatch.setattr(typer, "confirm", lambda text, default: asked.append(text) or True)
    question = ("Re-issue the intermediate CAs of cluster-eu-west-1, cluster-eu-west-2, cluster-us-east-1 and "
                "update their cacerts?")
    reporter, _, _ = _terminal(80)
    confirm(question, False, reporter)
    assert asked[0].splitlines() == [
        "Re-issue the intermediate CAs of cluster-eu-west-1, cluster-eu-west-2,",
        "cluster-us-east-1 and update their cacerts?",
    ]
    assert all(len(line) + len(" [y/N]: ") <= 80 for line in asked[0].splitlines())
    reporter, _, _ = _terminal(160)
    confirm(question, False, reporter)
    assert asked[1] == question
