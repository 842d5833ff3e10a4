"""Golden checks: UPDATE_GOLDEN rewrites a golden file on a developer's machine, and is refused under CI."""
import pytest

from tests import goldens


@pytest.fixture
def golden_dir(tmp_path, monkeypatch):
    monkeypatch.setattr(goldens, "GOLDEN", tmp_path)
    (tmp_path / "plan.txt").write_text("what the code printed last time\n")
    return tmp_path


def test_under_ci_update_golden_is_refused_and_the_file_is_left_as_it_was(golden_dir, monkeypatch):
    monkeypatch.setenv("CI", "true")
    monkeypatch.setenv("UPDATE_GOLDEN", "1")
    with pytest.raises(AssertionError, match="UPDATE_GOLDEN is refused under CI"):
        goldens.check("plan.txt", "what the code prints now\n")
    assert (golden_dir / "plan.txt").read_text() == "what the code printed last time\n"
    # Even output equal to the golden file fails: the run asked for a rewrite CI must not do.
    with pytest.raises(AssertionError, match="refused under CI"):
        goldens.check("plan.txt", "what the code printed last time\n")
    assert not (golden_dir / "new.txt").exists()
    with pytest.raises(AssertionError, match="refused under CI"):
        goldens.check("new.txt", "a golden file nobody reviewed\n")
    assert not (golden_dir / "new.txt").exists()


def test_under_ci_a_changed_output_fails_the_check(golden_dir, monkeypatch):
    monkeypatch.setenv("CI", "true")
    monkeypatch.delenv("UPDATE_GOLDEN", raising=False)
    with pytest.raises(AssertionError, match="output differs"):
        goldens.check("plan.txt", "what the code prints now\n")
    goldens.check("plan.txt", "what the code printed last time\n")


def test_on_a_developers_machine_update_golden_rewrites_the_file(golden_dir, monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.setenv("UPDATE_GOLDEN", "1")
    goldens.check("plan.txt", "what the code prints now\n")
    assert (golden_dir / "plan.txt").read_text() == "what the code prints now\n"
