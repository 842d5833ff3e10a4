"""The mesh model: each cluster's role, control plane and duties, from topology.yaml alone."""
from pathlib import Path

from lib.config import Cluster, Topology
from lib.desired import desired_state
from lib.mesh import Role, mesh_model

BASE = {"apiVersion": "install.istio.io/v1alpha1", "kind": "IstioOperator", "spec": {}}


def _topology(*clusters):
    return Topology("mesh1", tuple(clusters), Path("topology.yaml"))


def test_clusters_without_a_primary_are_primaries_holding_every_peer_secret():
    mesh = mesh_model(_topology(Cluster("a", "n1", "a"), Cluster("b", "n1", "b"), Cluster("c", "n2", "c")))
    assert [m.role for m in mesh.members] == [Role.PRIMARY] * 3
    a = mesh.member("a")
    assert a.control_plane == "a" and a.remotes == () and a.data_plane == "sidecar"
    assert a.holds_secrets_of == ("b", "c")
    # Two networks: every primary runs an east-west gateway that carries service traffic, none exposes istiod.
    assert all(m.eastwest and m.exposes_services and not m.exposes_istiod for m in mesh.members)


def test_one_network_of_primaries_needs_no_gateway():
    mesh = mesh_model(_topology(Cluster("a", "n1", "a"), Cluster("b", "n1", "b")))
    assert not any(m.eastwest or m.exposes_services for m in mesh.members)


def test_desired_state_is_the_composition_of_the_parts():
    desired = desired_state(_topology(Cluster("a", "n1", "a"), Cluster("c", "n2", "c")), BASE)
    c = desired["c"]
    assert c.operator["spec"]["values"]["global"] == {"meshID": "mesh1", "multiCluster": {"clusterName": "c"},
                                                      "network": "n2"}
    assert c.eastwest["metadata"]["name"] == "eastwest"
    assert [u.title for u in c.istio_objects] == ["expose services (Gateway cross-network-gateway)"]
    assert c.namespace_manifest()["metadata"] == {"name": "istio-system",
                                                  "labels": {"topology.istio.io/network": "n2"}}
