"""verify's judgment of a network's east-west gateways (lib/gateway_causes.py) when the network has several: which
gateways a cause names, and when one working gateway clears the network."""
from __future__ import annotations

from pathlib import Path

from lib.config import Cluster, Topology
from lib.gateway_causes import gateway_causes
from lib.mesh import mesh_model
from lib.causes import Findings
from lib.statusreport import ClusterStatus, MeshStatus, Problem


def _found(problems: dict[str, str], unread: tuple[str, ...] = (), clusters=None) -> Findings:
    """status's report as verify reads it (lib/causes.Findings): one problem per cluster of ``problems``;
    ``unread``: clusters status could not read."""
    return Findings(MeshStatus("mesh1", None, [
        ClusterStatus(c, reachable=c.name not in unread,
                      problems=[Problem(problems[c.name], f"{c.name}: {problems[c.name]}", f"fix {c.name}'s gateway")]
                      if c.name in problems else [])
        for c in clusters or CLUSTERS]))


class _Hints:
    namespace, revision = "verify", None
    apply = "`setup_mesh.py apply`"

    def __init__(self, ambient: bool = False):
        self.ambient = ambient

    def kubectl(self, cluster: Cluster, *args: str) -> str:
        return " ".join(["kubectl", "--context", cluster.context, *args])


# c1 on n1; c2 and c3 primaries on n2; c4 a remote of c1 on n2 (its own gateway, configured by c1's istiod);
# c5 a remote of c2 on n2 (no gateway of its own).
CLUSTERS = (Cluster("c1", "n1", "c1"), Cluster("c2", "n2", "c2"), Cluster("c3", "n2", "c3"),
            Cluster("c4", "n2", "c4", primary="c1"), Cluster("c5", "n2", "c5", primary="c2"))


def _causes(found: Findings, dst: str, exposes: dict[str, bool | None] | None = None, clusters=CLUSTERS,
            ambient: bool = False) -> list:
    topology = Topology("mesh1", clusters, Path("topology.yaml"))
    by_context = {c.context: c for c in clusters}
    return gateway_causes(by_context["c1"], by_context[dst], mesh_model(topology), found,
                          exposes or {}, _Hints(ambient))


def test_a_network_whose_every_gateway_lacks_an_address_names_each_of_them():
    found = _found({"c2": "gateway_pending", "c3": "gateway_missing", "c4": "gateway_not_programmed"})
    (cause,) = _causes(found, "c3")
    assert cause.code == "gateway_no_address"
    assert cause.message.startswith("c2's and c3's and c4's east-west gateway has no address")
    assert cause.message.endswith("can send to n2")  # c3 has a gateway of its own
    assert cause.status_problems == (("c2", "gateway_pending"), ("c3", "gateway_missing"), ("c4", "gateway_not_programmed"))
    assert cause.hint == "fix c2's gateway; fix c3's gateway; fix c4's gateway"
    # A cluster without a gateway of its own is said to have none.
    assert _causes(found, "c5")[0].message.endswith("can send to n2 (c5 has no gateway of its own)")
    # A cluster status could not read is not blamed, nor its gateway counted.
    (cause,) = _causes(_found({"c3": "gateway_pending", "c4": "gateway_pending"}, unread=("c2",)), "c3")
    assert cause.message.startswith("c3's and c4's east-west gateway") and len(cause.status_problems) == 2


def test_one_gateway_with_an_address_clears_the_network_unless_no_plane_that_configures_one_exposes_the_services():
    # c2 has no address: it is not a way in, and its istiod's Gateway does not matter.
    found = _found({"c2": "gateway_pending"})
    (cause,) = _causes(found, "c3", {"c1": False, "c2": True, "c3": False})
    assert cause.code == "cross_network_gateway_missing"
    # The planes of the gateways that have an address: c3's own, and c1's for its remote c4.
    assert cause.message.startswith("c3 and c1 has no Gateway exposing *.local on port 15443")
    assert "so the east-west gateways it configures on n2 (c3's, c4's) take no traffic" in cause.message
    assert cause.hint == "`setup_mesh.py apply`"
    # Either plane exposing the services, or one not read, clears the network.
    assert _causes(found, "c3", {"c1": True, "c2": False, "c3": False}) == []
    assert _causes(found, "c3", {"c1": False, "c2": False, "c3": True}) == []
    assert _causes(found, "c3", {"c1": False, "c2": False}) == []
    # One gateway on the network, the answering cluster's own: it is told so.
    alone = (Cluster("c1", "n1", "c1"), Cluster("c3", "n2", "c3"))
    (cause,) = _causes(_found({}), "c3", {"c1": True, "c3": False}, clusters=alone)
    assert cause.message == ("c3 has no Gateway exposing *.local on port 15443 (cross-network-gateway), so its "
                             "east-west gateway takes no traffic from other networks")


AMBIENT = (Cluster("c1", "n1", "c1"), Cluster("c2", "n2", "c2"), Cluster("c3", "n2", "c3"))


def test_ambient_one_programmed_gateway_clears_the_network_and_otherwise_each_is_named():
    assert _causes(_found({"c2": "gateway_not_programmed"}), "c3", clusters=AMBIENT, ambient=True) == []
    assert _causes(_found({"c3": "gateway_missing"}), "c3", clusters=AMBIENT, ambient=True) == []

    (cause,) = _causes(_found({"c2": "gateway_missing", "c3": "gateway_sidecar_mode"}), "c3", clusters=AMBIENT,
                       ambient=True)
    assert cause.code == "eastwest_gateway_missing"
    assert cause.message.startswith("c2's and c3's east-west Gateway (istio-eastwestgateway, class istio-east-west)")
    assert cause.status_problems == (("c2", "gateway_missing"), ("c3", "gateway_sidecar_mode"))
    assert ("(what is there: `kubectl --context c2 get gateways.gateway.networking.k8s.io -n istio-system`; "
            "`kubectl --context c3 get gateways.gateway.networking.k8s.io -n istio-system`)") in cause.hint

    # One missing and one not programmed: the network's gateways are there but not programmed.
    (cause,) = _causes(_found({"c2": "gateway_missing", "c3": "gateway_not_programmed"}), "c3", clusters=AMBIENT,
                       ambient=True)
    assert cause.code == "eastwest_gateway_not_programmed"
    assert cause.message.startswith("c2's and c3's east-west Gateway has no address in its status")
    assert cause.status_problems == (("c2", "gateway_missing"), ("c3", "gateway_not_programmed"))
    assert "`kubectl --context c2 get gateways.gateway.networking.k8s.io istio-eastwestgateway -n istio-system " \
           "-o yaml`; `kubectl --context c3 get" in cause.hint
    # Either way the hint ends with where the calling cluster's ztunnel shows what it was given.
    assert cause.hint.endswith("`istioctl ztunnel-config services --context c1` shows the endpoints c1's ztunnel has "
                               "for helloworld.verify, `istioctl ztunnel-config workloads --context c1` the workloads "
                               "(those of n2 appear only behind a network gateway)")
