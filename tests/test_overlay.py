"""Per-cluster IstioOperators: base.yaml's content unchanged plus the reserved values, checked against golden files."""
from pathlib import Path

import yaml

from lib.config import load_base, load_topology
from lib.overlay import cluster_operator, cross_network_gateway, eastwest_operator
from lib.desired import desired_state
from lib.yamlfile import dump
from tests import goldens

ROOT = Path(__file__).resolve().parent.parent

BASE = """\
apiVersion: install.istio.io/v1alpha1
kind: IstioOperator
spec:
  revision: canary
  tag: 1.29.0
  meshConfig:
    accessLogFile: /dev/stdout
    defaultConfig:
      proxyMetadata:
        ISTIO_META_DNS_CAPTURE: "true"
  values:
    global:
      logging:
        level: default:debug
      multiCluster:
        enabled: true
  components:
    ingressGateways:
    - name: istio-ingressgateway
      enabled: false
"""


def _inputs(tmp_path):
    (tmp_path / "base.yaml").write_text(BASE)
    return load_base(tmp_path / "base.yaml").operator, load_topology(ROOT / "topology.yaml")


def test_overlay_keeps_base_and_sets_reserved_values(tmp_path):
    base, topology = _inputs(tmp_path)
    cluster3 = topology.by_context("cluster3")
    operator = cluster_operator(base, topology, cluster3)
    goldens.check("overlay-cluster3.yaml", dump(operator))
    g = operator["spec"]["values"]["global"]
    assert (g["meshID"], g["multiCluster"]["clusterName"], g["network"]) == ("mesh1", "cluster3", "network2")
    assert g["multiCluster"]["enabled"] is True and g["logging"] == {"level": "default:debug"}
    assert base["spec"]["values"]["global"] == yaml.safe_load(BASE)["spec"]["values"]["global"], "base must not be mutated"


def test_eastwest_gateway_matches_istio_sample_shape(tmp_path):
    base, topology = _inputs(tmp_path)
    operator = eastwest_operator(base, topology.by_context("cluster3"))
    goldens.check("eastwest-network2.yaml", dump(operator))
    gateway = operator["spec"]["components"]["ingressGateways"][0]
    assert gateway["label"]["topology.istio.io/network"] == "network2"
    assert [p["port"] for p in gateway["k8s"]["service"]["ports"]] == [15021, 15443, 15012, 15017]
    assert operator["spec"]["revision"] == "canary", "the gateway must follow the control plane's revision"


def test_cross_network_gateway():
    goldens.check("cross-network-gateway.yaml", dump(cross_network_gateway()))


def test_fingerprint_changes_only_with_what_is_installed(tmp_path):
    base, topology = _inputs(tmp_path)
    first = desired_state(topology, base)
    again = desired_state(topology, base)
    assert {k: v.fingerprint for k, v in first.items()} == {k: v.fingerprint for k, v in again.items()}
    base["spec"]["meshConfig"]["accessLogFile"] = ""
    changed = desired_state(topology, base)
    assert all(changed[k].fingerprint != first[k].fingerprint for k in first)


def test_single_network_mesh_has_no_gateway(tmp_path):
    base, _ = _inputs(tmp_path)
    (tmp_path / "topology.yaml").write_text("mesh_id: m\ncontexts:\n  a:\n    network: n\n  b:\n    network: n\n")
    desired = desired_state(load_topology(tmp_path / "topology.yaml"), base)
    assert all(d.eastwest is None and d.gateway is None for d in desired.values())


def test_control_plane_operator_has_a_stable_name_unless_base_names_it(tmp_path):
    # istioctl prunes by the IstioOperator's name: unnamed, it would prune the east-west gateway's objects.
    base, topology = _inputs(tmp_path)
    operators = [cluster_operator(base, topology, c) for c in topology.clusters]
    assert [op["metadata"]["name"] for op in operators] == ["setup-mesh"] * len(operators)
    assert list(operators[0])[:3] == ["apiVersion", "kind", "metadata"]
    base["metadata"] = {"name": "mine", "namespace": "istio-system"}
    named = cluster_operator(base, topology, topology.clusters[0])
    assert named["metadata"] == {"name": "mine", "namespace": "istio-system"}
    eastwest = eastwest_operator(base, topology.clusters[0])
    assert eastwest["metadata"]["name"] != named["metadata"]["name"]


def test_eastwest_gateway_follows_a_revision_set_in_values(tmp_path):
    base, topology = _inputs(tmp_path)
    cluster = topology.clusters[0]
    del base["spec"]["revision"]
    assert "revision" not in eastwest_operator(base, cluster)["spec"]
    base["spec"]["values"]["revision"] = "blue"
    assert eastwest_operator(base, cluster)["spec"]["revision"] == "blue"
    base["spec"]["revision"] = "canary"  # istioctl merges the user's values last: values.revision wins
    assert eastwest_operator(base, cluster)["spec"]["revision"] == "blue"


def test_a_root_transition_adds_the_multiroot_env_to_istiod_and_keeps_base_env(tmp_path):
    from lib.carotation import Transition

    (tmp_path / "base.yaml").write_text(BASE.replace("  values:\n", "  values:\n    pilot:\n      env:\n        PILOT_X: '1'\n"))
    base, topology = load_base(tmp_path / "base.yaml").operator, load_topology(ROOT / "topology.yaml")
    plain = desired_state(topology, base)
    during = desired_state(topology, base, transition=Transition(1, "old", "new", "2026-11-29T08:00:00Z"))
    for ctx in plain:
        assert plain[ctx].operator["spec"]["values"]["pilot"]["env"] == {"PILOT_X": "1"}
        assert during[ctx].operator["spec"]["values"]["pilot"]["env"] == {"PILOT_X": "1", "ISTIO_MULTIROOT_MESH": "true"}
        assert during[ctx].fingerprint != plain[ctx].fingerprint, "the change is installed, then recorded"
    assert "ISTIO_MULTIROOT_MESH" not in str(base), "base.yaml's data is not modified"
