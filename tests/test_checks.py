"""The registry of named checks: what status can report is registered, and documented as registered."""
from __future__ import annotations

import re
from pathlib import Path

from lib.checks import CHECKS, MESH

ROOT = Path(__file__).resolve().parent.parent


def _documented() -> dict[str, tuple[str, str]]:
    """docs/status-json.md's table of problem codes: id -> (severity, where)."""
    rows = re.findall(r"^\| `([a-z_]+)` \| (error|warning) \| (top level|cluster) \|",
                      (ROOT / "docs" / "status-json.md").read_text(), re.M)
    return {code: (severity, where) for code, severity, where in rows}


def test_every_registered_check_is_documented_with_its_severity_and_scope():
    documented = _documented()
    registered = {c.id: (c.severity, "top level" if c.scope == MESH else "cluster") for c in CHECKS.values()}
    assert registered == documented


def test_every_problem_status_reports_is_a_registered_check():
    source = "\n".join(p.read_text() for p in sorted((ROOT / "lib").glob("status*.py")))  # status's modules
    codes = set(re.findall(r'Problem\(\s*"([a-z_]+)"', source))
    assert len(codes) > 30, "the scan finds status's problems"
    assert codes - set(CHECKS) == set()
    # built from istiod's word for a peer: remote_cluster_<state>
    states = {c.removeprefix("remote_cluster_") for c in CHECKS if c.startswith("remote_cluster_")}
    assert {"timeout", "syncing", "closed", "not_loaded"} <= states


def test_a_warning_in_status_is_a_warning_in_the_registry():
    source = "\n".join(p.read_text() for p in sorted((ROOT / "lib").glob("status*.py")))  # status's modules
    warned = set(re.findall(r'Problem\(\s*"([a-z_]+)"[^()]*(?:\([^()]*\)[^()]*)*severity=WARNING', source))
    assert warned and all(CHECKS[code].severity == "warning" for code in warned), warned
