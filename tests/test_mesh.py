"""The mesh model: each cluster's role, control plane and duties, from topology.yaml alone."""
from pathlib import Path

import pytest
import yaml

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


ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "tests" / "sandbox" / "release_template" / "samples" / "multicluster"


def _two_primaries_with_a_remote_each():
    return _topology(Cluster("p1", "n1", "p1"), Cluster("r1", "n1", "r1", primary="p1"),
                     Cluster("p2", "n2", "p2"), Cluster("r2", "n2", "r2", primary="p2"))


def test_a_remote_is_run_by_its_primary_and_holds_no_secret():
    mesh = mesh_model(_two_primaries_with_a_remote_each())
    r1, p1 = mesh.member("r1"), mesh.member("p1")
    assert (r1.role, r1.control_plane, r1.holds_secrets_of) == (Role.REMOTE, "p1", ())
    assert not r1.eastwest, "on its primary's network a remote needs no gateway of its own"
    assert (p1.role, p1.remotes, p1.exposes_istiod, p1.eastwest) == (Role.PRIMARY, ("r1",), True, True)
    assert p1.holds_secrets_of == ("r1", "p2", "r2")
    remote_elsewhere = mesh_model(_topology(Cluster("p", "n1", "p"), Cluster("r", "n2", "r", primary="p")))
    assert remote_elsewhere.member("r").eastwest and not remote_elsewhere.member("r").exposes_services


def test_one_network_primary_with_a_remote_gets_a_gateway_for_istiod_only():
    mesh = mesh_model(_topology(Cluster("p", "n1", "p"), Cluster("r", "n1", "r", primary="p")))
    p = mesh.member("p")
    assert p.eastwest and p.exposes_istiod and not p.exposes_services


def test_remote_and_primary_operators_carry_what_the_guide_prescribes():
    topology = _topology(Cluster("cluster1", "network1", "cluster1"),
                         Cluster("cluster2", "network2", "cluster2", primary="cluster1"))
    desired = desired_state(topology, BASE, {"cluster1": "203.0.113.5"})
    primary, remote = desired["cluster1"], desired["cluster2"]
    assert primary.operator["spec"]["values"]["global"]["externalIstiod"] is True
    spec = remote.operator["spec"]
    assert spec["profile"] == "remote"
    assert spec["values"]["global"] == {"meshID": "mesh1", "multiCluster": {"clusterName": "cluster2"},
                                        "network": "network2", "remotePilotAddress": "203.0.113.5"}
    assert spec["values"]["istiodRemote"] == {"injectionPath": "/inject/cluster/cluster2/net/network2"}
    assert remote.namespace_manifest()["metadata"]["annotations"] == {
        "topology.istio.io/controlPlaneClusters": "cluster1"}
    assert remote.awaits_address_of is None and remote.istio_objects == []


def test_a_remote_without_its_primary_address_waits_for_it():
    topology = _topology(Cluster("cluster1", "network1", "cluster1"),
                         Cluster("cluster2", "network1", "cluster2", primary="cluster1"))
    pending = desired_state(topology, BASE)["cluster2"]
    assert pending.awaits_address_of == "cluster1"
    known = pending.with_addresses({"cluster1": "198.51.100.9"})
    assert known.awaits_address_of is None
    assert known.operator["spec"]["values"]["global"]["remotePilotAddress"] == "198.51.100.9"
    assert known.fingerprint != pending.fingerprint


@pytest.mark.parametrize("revision,sample", [(None, "expose-istiod.yaml"), ("canary", "expose-istiod-rev.yaml.tmpl")])
def test_istiod_is_exposed_as_the_release_samples_do(revision, sample):
    base = {**BASE, "spec": {"revision": revision} if revision else {}}
    topology = _topology(Cluster("p", "n1", "p"), Cluster("r", "n1", "r", primary="p"))
    unit, = [u for u in desired_state(topology, base)["p"].istio_objects if u.purpose == "expose istiod"]
    text = (SAMPLES / sample).read_text().replace("{{.Revision}}", revision or "")
    expected = [doc for doc in yaml.safe_load_all(text) if doc]
    for ours, theirs in zip(unit.objects, expected, strict=True):
        assert (ours["kind"], ours["metadata"]["name"]) == (theirs["kind"], theirs["metadata"]["name"])
        assert ours["spec"] == theirs["spec"]
        assert ours["metadata"]["namespace"] == "istio-system"
