"""Golden files: expected outputs kept in tests/golden/. UPDATE_GOLDEN=1 rewrites them (review the diff);
under CI (CI=true) it is refused, so a golden check can never pass there by rewriting its own expectation."""
import os
from pathlib import Path

GOLDEN = Path(__file__).parent / "golden"


def _under_ci() -> bool:
    # CI services set CI=true; a few set CI=1.
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def check(name: str, actual: str) -> None:
    path = GOLDEN / name
    if os.environ.get("UPDATE_GOLDEN"):
        if _under_ci():
            raise AssertionError(f"UPDATE_GOLDEN is refused under CI (CI={os.environ['CI']}): golden file {path} "
                                 "is checked, never rewritten; run with UPDATE_GOLDEN=1 locally and commit the diff")
        if os.environ["UPDATE_GOLDEN"] == "1":
            path.write_text(actual)
    assert path.exists(), f"golden file {path} is missing: run with UPDATE_GOLDEN=1 once and review it"
    assert actual == path.read_text(), f"output differs from {path} (UPDATE_GOLDEN=1 rewrites it)"
