"""Golden files: expected outputs kept in tests/golden/. UPDATE_GOLDEN=1 rewrites them (review the diff)."""
import os
from pathlib import Path

GOLDEN = Path(__file__).parent / "golden"


def check(name: str, actual: str) -> None:
    path = GOLDEN / name
    if os.environ.get("UPDATE_GOLDEN") == "1":
        path.write_text(actual)
    assert path.exists(), f"golden file {path} is missing: run with UPDATE_GOLDEN=1 once and review it"
    assert actual == path.read_text(), f"output differs from {path} (UPDATE_GOLDEN=1 rewrites it)"
