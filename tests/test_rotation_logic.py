"""The pure decisions of the certificates' lifecycle."""
import datetime as dt

from lib.lifecycle import Intermediate, Rotation, needs_reissue, select_for_rotation

NOW = dt.datetime(2026, 11, 29, 8, 0, tzinfo=dt.timezone.utc)


def inter(name, fp, days):
    return Intermediate(name, fp, None if days is None else NOW + dt.timedelta(days=days, hours=1))


def test_expiring_within_picks_the_intermediates_that_expire_soon_and_those_missing():
    local = {"a": inter("a", "f1", 10), "b": inter("b", "f2", 400), "c": inter("c", None, None)}
    assert select_for_rotation(local, None, NOW) == ["a", "b", "c"]
    assert select_for_rotation(local, 30, NOW) == ["a", "c"]
    assert select_for_rotation(local, 10, NOW) == ["a", "c"]
    assert select_for_rotation(local, 9, NOW) == ["c"]


def test_an_intermediate_is_reissued_once_per_rotation():
    rotation = Rotation("2026-11-29T08:00:00Z", {"a": "old", "b": None})
    assert needs_reissue(rotation, "a", inter("a", "old", 5))
    assert not needs_reissue(rotation, "a", inter("a", "new", 3650)), "already re-issued by an earlier run"
    assert needs_reissue(rotation, "a", inter("a", None, None)), "moved to the backup, not made yet"
    assert needs_reissue(rotation, "b", inter("b", None, None))
    assert not needs_reissue(rotation, "b", inter("b", "made", 3650))
    assert not needs_reissue(rotation, "c", inter("c", "x", 1)), "not part of this rotation"
    assert rotation.backup_name == "20261129T080000Z-intermediates"
