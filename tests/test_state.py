"""The recorded state: what apply last installed, rewritten only when something changed."""
from lib.config import Cluster
from lib.state import State


def test_unchanged_record_keeps_its_time_and_the_file_is_not_rewritten(tmp_path):
    cluster = Cluster("ctx", "n1", "c1")
    state = State.load(tmp_path)
    state.record(cluster, "fp1")
    state.save("m")
    first = state.path.read_text()
    mtime = state.path.stat().st_mtime_ns

    again = State.load(tmp_path)
    again.record(cluster, "fp1")
    again.save("m")
    assert again.path.read_text() == first and again.path.stat().st_mtime_ns == mtime

    again.record(cluster, "fp2")
    again.save("m")
    assert '"fingerprint": "fp2"' in again.path.read_text()
    assert oct(again.path.stat().st_mode & 0o777) == "0o600"


def test_forgotten_clusters_leave_the_state(tmp_path):
    state = State.load(tmp_path)
    state.record(Cluster("a", "n", "a"), "x")
    state.record(Cluster("b", "n", "b"), None)
    state.forget("a")
    state.save("m")
    assert list(State.load(tmp_path).clusters) == ["b"]


def test_a_primary_serving_remotes_is_recorded_so_until_recorded_again_without(tmp_path):
    primary, remote = Cluster("a", "n1", "alpha"), Cluster("b", "n1", "beta", primary="a")
    state = State.load(tmp_path)
    state.record(primary, "fp1", serves_remotes=True)
    state.record(remote, "fp1")
    state.save("m")
    assert State.load(tmp_path).serving_remotes() == {"alpha"}
    # The remote turned primary, same fingerprint or not: what no longer holds is not kept.
    again = State.load(tmp_path)
    again.record(primary, "fp1")
    again.record(Cluster("b", "n1", "beta"), "fp1")
    again.save("m")
    assert again.serving_remotes() == frozenset()
    assert "primary" not in State.load(tmp_path).clusters["b"]
