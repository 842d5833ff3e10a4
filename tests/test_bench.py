"""The benchmark still runs end to end: its figures are only worth printing if every apply in it succeeds
(it times nothing here and asserts no speed)."""
from __future__ import annotations

import json
import subprocess
import sys

from tests.meshkit import ROOT


def test_the_smallest_benchmark_applies_adds_a_cluster_and_reports_its_figures(tmp_path):
    out = tmp_path / "bench.json"
    done = subprocess.run([sys.executable, "-m", "tests.bench", "--sizes", "2", "--keys", "2048", "--json", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (row,) = json.loads(out.read_text())["results"]
    assert row["processes"] > 0 and row["add_one_processes"] > 0
    assert {"parallel_s", "serial_s", "noop_s", "add_one_s"} <= row.keys()
    # What the critical path is made of: each cluster's cacerts and import, also when --parallel 1 runs
    # a cluster's export before the next cluster's cacerts.
    for run in ("parallel_commands", "serial_commands"):
        assert [row[run][kind]["count"] for kind in ("cacerts", "import", "export")] == [2, 2, 2], run
    # Adding a third cluster: only it gets cacerts; each of the three imports secrets (the two others
    # import the new one's, it imports theirs).
    added = row["add_one_commands"]
    assert [added[kind]["count"] for kind in ("cacerts", "import", "export")] == [1, 3, 1]
