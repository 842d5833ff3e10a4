"""Istio's version rules for moving a mesh (lib/skew.py): pure, no cluster."""

from __future__ import annotations

import pytest

from lib.skew import (ClusterVersions, Version, check_targets, parse_version, proxy_skew, revision_name)


def rules(*clusters):
    return [(r.context, r.rule) for r in check_targets(clusters)]


def test_versions_are_read_as_istio_and_kubernetes_print_them():
    assert parse_version("1.31.0") == Version(1, 31, 0)
    assert parse_version("v1.33.4") == Version(1, 33, 4)
    assert parse_version("1.31.0-rc.0") == Version(1, 31, 0, "rc.0")
    assert parse_version("latest") is None


def test_a_revision_is_named_by_its_release_with_dashes():
    assert revision_name("1.31.0") == "1-31-0"
    assert revision_name("1.31.0-rc.0") == "1-31-0-rc-0"


def test_a_canary_may_skip_one_minor_but_not_two():
    assert rules(ClusterVersions("c1", "1.31.2", control_planes=("1.30.3",))) == []
    assert rules(ClusterVersions("c1", "1.31.2", control_planes=("1.29.6",))) == []
    refused = check_targets([ClusterVersions("c1", "1.31.0", control_planes=("1.28.4",))])
    assert [(r.context, r.rule) for r in refused] == [("c1", "skew_skips_minor")]
    assert "1.28.4 -> 1.31.0 skips 2 minor versions (1.29, 1.30)" in refused[0].message
    assert "1.30.x" in refused[0].hint


def test_no_downgrade_across_minors_but_a_patch_may_go_back():
    assert rules(ClusterVersions("c1", "1.30.1", control_planes=("1.30.3",))) == []
    refused = check_targets([ClusterVersions("c2", "1.30.3", control_planes=("1.31.0",))])
    assert [(r.context, r.rule) for r in refused] == [("c2", "skew_downgrade")]
    assert "c2" in refused[0].message and "1.31.x" in refused[0].hint


def test_every_control_plane_of_a_cluster_counts():
    """Mid-upgrade a cluster runs two revisions: the oldest decides how far the next move goes."""
    assert rules(ClusterVersions("c1", "1.31.0", control_planes=("1.31.0", "1.28.4"))) == [("c1", "skew_skips_minor")]


def test_proxies_never_newer_than_their_control_plane():
    assert rules(ClusterVersions("c1", "1.31.0", control_planes=("1.31.0",), proxies=("1.30.3", "1.31.0"))) == []
    refused = check_targets([ClusterVersions("c1", "1.30.3", control_planes=("1.30.3",), proxies=("1.31.0",))])
    assert [r.rule for r in refused] == ["skew_proxies_ahead"]
    assert "1.31.0" in refused[0].hint


def test_a_remote_moves_with_its_primary():
    primary = ClusterVersions("p1", "1.31.0", control_planes=("1.30.3",))
    assert rules(primary, ClusterVersions("r1", "1.31.0", primary="p1")) == []
    assert rules(primary, ClusterVersions("r1", "1.30.3", primary="p1")) == [("r1", "skew_remote_apart")]


@pytest.mark.parametrize("kubernetes, target, ok", [
    ("v1.33.4", "1.31.0", True), ("v1.32.0", "1.30.3", True), ("v1.36.1", "1.30.3", True),
    ("v1.31.9", "1.30.3", False), ("v1.37.0", "1.31.0", False), ("v1.31.9", "1.29.6", True),
])
def test_kubernetes_within_the_target_releases_supported_range(kubernetes, target, ok):
    found = check_targets([ClusterVersions("c1", target, kubernetes=kubernetes)])
    assert [r.rule for r in found] == ([] if ok else ["skew_kubernetes_unsupported"])
    if not ok:
        assert kubernetes.lstrip("v") in found[0].message and "c1" in found[0].message


def test_a_version_that_is_not_a_release_is_refused():
    assert rules(ClusterVersions("c1", "1.31")) == []  # 1.31 reads as 1.31.0
    assert rules(ClusterVersions("c1", "latest")) == [("c1", "skew_version_invalid")]


def test_proxy_skew_per_revision():
    planes = {"default": "1.30.3", "1-31-0": "1.31.0", "old": "1.28.1"}
    found = proxy_skew(planes, {("default", "1.30.3"): 4, ("default", "1.29.6"): 1, ("1-31-0", "1.29.6"): 2,
                                ("default", "1.31.0"): 3, ("gone", "1.20.0"): 9})
    assert [(s.revision, s.proxy_version, s.proxies, s.ahead) for s in found] == [
        ("1-31-0", "1.29.6", 2, False), ("default", "1.31.0", 3, True)]
