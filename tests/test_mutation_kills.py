"""Decisions the mutation run (README: "How we know the tests bite") showed no fast test pinned down,
each as a user would feel it. docs/mutation-report.md lists the mutants these kill."""
from __future__ import annotations

from lib.mesh import mesh_model
from lib.config import Cluster, Topology


def test_a_remote_is_configured_by_its_primary_and_the_primary_holds_its_secret(tmp_path):
    clusters = (Cluster("c1", "n1", "c1"), Cluster("c2", "n2", "c2", primary="c1"), Cluster("c3", "n2", "c3"))
    mesh = mesh_model(Topology("m", clusters, tmp_path / "topology.yaml"))
    remote, primary, other = mesh.member("c2"), mesh.member("c1"), mesh.member("c3")
    assert remote.is_remote and not primary.is_remote and primary.is_primary
    assert mesh.control_plane_of(remote) is primary and mesh.control_plane_of(other) is other
    assert primary.exposes_istiod and not other.exposes_istiod and not remote.exposes_istiod
    assert "c2" in primary.holds_secrets_of and not remote.holds_secrets_of
