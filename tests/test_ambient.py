"""Ambient mode's pure parts: the istiod switch, the east-west Gateway, its status, the Gateway API CRD
choice, and base.yaml's reserved ambient values."""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from lib import ambient, gatewayapi
from lib.config import AMBIENT, SIDECAR, data_plane_mode, load_base
from lib.errors import ConfigError

RELEASE = Path(__file__).parent / "sandbox" / "release_template"
AMBIENT_BASE = "apiVersion: install.istio.io/v1alpha1\nkind: IstioOperator\nspec:\n  profile: ambient\n"


def test_the_profile_decides_the_data_plane_mode():
    assert data_plane_mode({"spec": {"profile": "ambient"}}) == AMBIENT
    assert data_plane_mode({"spec": {"profile": "default"}}) == SIDECAR
    assert data_plane_mode({"spec": None}) == SIDECAR
    assert data_plane_mode({}) == SIDECAR


def test_the_multi_network_switch_is_added_to_istiods_env_and_keeps_base_yamls_entries():
    base = {"spec": {"profile": "ambient", "components": {"pilot": {"k8s": {
        "env": [{"name": "PILOT_TRACE_SAMPLING", "value": "5"}], "resources": {"requests": {"cpu": "1"}}}}}}}
    operator = ambient.with_multi_network_switch(base)
    k8s = operator["spec"]["components"]["pilot"]["k8s"]
    assert k8s["env"] == [{"name": "PILOT_TRACE_SAMPLING", "value": "5"},
                          {"name": "AMBIENT_ENABLE_MULTI_NETWORK", "value": "true"}]
    assert k8s["resources"] == {"requests": {"cpu": "1"}}
    assert base["spec"]["components"]["pilot"]["k8s"]["env"] == [{"name": "PILOT_TRACE_SAMPLING", "value": "5"}]
    # applying it twice gives the same overlay (a re-derived plan is stable)
    assert ambient.with_multi_network_switch(operator) == operator
    bare = ambient.with_multi_network_switch({"spec": {"profile": "ambient"}})
    assert bare["spec"]["components"] == {"pilot": {"k8s": {"env": [
        {"name": "AMBIENT_ENABLE_MULTI_NETWORK", "value": "true"}]}}}


def test_the_east_west_gateway_is_what_the_release_sample_prints():
    script = RELEASE / "samples" / "multicluster" / "gen-eastwest-gateway.sh"
    printed = yaml.safe_load(subprocess.run(["bash", str(script), "--network", "net2", "--ambient"],
                                            capture_output=True, text=True, check=True).stdout)
    assert ambient.east_west_gateway("net2", {"spec": {"profile": "ambient"}}) == printed


def test_the_east_west_gateway_names_the_revision_base_yaml_installs():
    gateway = ambient.east_west_gateway("net1", {"spec": {"profile": "ambient", "revision": "1-29-0"}})
    assert gateway["metadata"]["labels"] == {"topology.istio.io/network": "net1", "istio.io/rev": "1-29-0"}
    gateway = ambient.east_west_gateway("net1", {"spec": {"revision": "default"}})
    assert "istio.io/rev" not in gateway["metadata"]["labels"]


@pytest.mark.parametrize("status,expected", [
    (None, ambient.GatewayStatus(None, False, "NoController", "no istiod has taken the Gateway up yet")),
    ({"conditions": [{"type": "Accepted", "status": "True"},
                     {"type": "Programmed", "status": "False", "reason": "AddressNotAssigned", "message": "pending"}]},
     ambient.GatewayStatus(None, False, "AddressNotAssigned", "pending")),
    ({"addresses": [{"type": "IPAddress", "value": "198.51.100.7"}],
      "conditions": [{"type": "Programmed", "status": "True", "reason": "Programmed", "message": "ok"}]},
     ambient.GatewayStatus("198.51.100.7", True, "Programmed", "ok")),
    ({"addresses": [{"type": "Hostname", "value": "ew.example.com"}],
      "conditions": [{"type": "Programmed", "status": "True", "reason": "Programmed"}]},
     ambient.GatewayStatus("ew.example.com", True, "Programmed", None)),
])
def test_gateway_status_is_read_from_addresses_and_the_programmed_condition(status, expected):
    gateway = {"kind": "Gateway", "metadata": {"name": "istio-eastwestgateway"}}
    if status is not None:
        gateway["status"] = status
    assert ambient.gateway_status(gateway) == expected


# --- Gateway API CRDs ---------------------------------------------------------------------------

@pytest.mark.parametrize("istio,expected", [("1.29.0", "v1.4.0"), ("1.28.2", "v1.4.0"), ("1.30.3", "v1.5.1"),
                                            ("1.28.6", "v1.4.0"), ("1.28.7", "v1.4.1"), ("1.28.10", "v1.4.1"),
                                            ("1.29.2", "v1.4.0"), ("1.29.3", "v1.4.1"), ("1.29.6", "v1.4.1"),
                                            ("1.31.0-rc.0", "v1.6.0"), ("1.20.0", None), (None, None), ("dev", None)])
def test_the_gateway_api_release_istio_expects(istio, expected):
    assert gatewayapi.expected_version(istio) == expected


def test_the_default_source_is_the_standard_channel_of_the_expected_release():
    source = gatewayapi.choose_source(None, "1.30.3")
    assert source.location == ("https://github.com/kubernetes-sigs/gateway-api/releases/download/v1.5.1/"
                               "standard-install.yaml")
    assert source.version == "v1.5.1" and source.is_url


def test_an_istio_release_of_unknown_expectations_needs_the_option():
    with pytest.raises(ConfigError) as info:
        gatewayapi.choose_source(None, "1.40.0")
    assert "1.40.0" in info.value.message and "--gateway-api-crds" in info.value.hint


def test_a_crd_file_given_is_read_for_its_version(tmp_path):
    crds = Path(__file__).parent / "gateway-api" / "standard-v1.4.0.yaml"
    source = gatewayapi.choose_source(str(crds), "1.40.0")
    assert (source.location, source.version, source.is_url) == (str(crds.resolve()), "v1.4.0", False)
    url = gatewayapi.choose_source("https://example.com/gw/v1.3.0/standard-install.yaml", None)
    assert url.version == "v1.3.0" and url.is_url
    with pytest.raises(ConfigError) as info:
        gatewayapi.choose_source(str(tmp_path / "missing.yaml"), "1.29.0")
    assert "no such file" in info.value.message


def test_what_a_cluster_holds_is_read_from_the_crds_annotations():
    assert gatewayapi.parse_crd_annotations("") == gatewayapi.ClusterCrds(installed=False)
    held = gatewayapi.parse_crd_annotations(
        '{"gateway.networking.k8s.io/bundle-version":"v1.2.1","gateway.networking.k8s.io/channel":"experimental"}')
    assert held == gatewayapi.ClusterCrds(True, "v1.2.1", "experimental")
    assert gatewayapi.parse_crd_annotations("{}") == gatewayapi.ClusterCrds(True, None, None)


def test_older_crds_are_reported_and_left_alone():
    assert gatewayapi.older_than_needed(gatewayapi.ClusterCrds(False), "v1.4.0") is None
    assert gatewayapi.older_than_needed(gatewayapi.ClusterCrds(True, "v1.4.0"), "v1.4.0") is None
    assert gatewayapi.older_than_needed(gatewayapi.ClusterCrds(True, "v1.5.1"), "v1.4.0") is None
    note = gatewayapi.older_than_needed(gatewayapi.ClusterCrds(True, "v1.2.1"), "v1.4.0")
    assert "v1.2.1, older than the v1.4.0" in note and "left as they are" in note
    assert "no gateway.networking.k8s.io/bundle-version" in gatewayapi.older_than_needed(
        gatewayapi.ClusterCrds(True, None), "v1.4.0")


# --- base.yaml ----------------------------------------------------------------------------------

def test_base_yaml_cannot_set_the_ambient_switch_in_istiods_values(tmp_path):
    path = tmp_path / "base.yaml"
    path.write_text(AMBIENT_BASE + "  values:\n    pilot:\n      env:\n        AMBIENT_ENABLE_MULTI_NETWORK: 'true'\n")
    with pytest.raises(ConfigError) as info:
        load_base(path)
    assert f"{path}:8: spec.values.pilot.env.AMBIENT_ENABLE_MULTI_NETWORK is set by setup-mesh" in info.value.message
    assert f"spec.profile ambient ({path}:4)" in info.value.message
    assert "ambient mesh" in info.value.hint


def test_base_yaml_cannot_set_the_ambient_switch_in_istiods_k8s_env(tmp_path):
    path = tmp_path / "base.yaml"
    path.write_text(AMBIENT_BASE + "  components:\n    pilot:\n      k8s:\n        env:\n"
                                   "        - name: PILOT_TRACE_SAMPLING\n          value: '5'\n"
                                   "        - name: AMBIENT_ENABLE_MULTI_NETWORK\n          value: 'false'\n")
    with pytest.raises(ConfigError) as info:
        load_base(path)
    assert (f"{path}:11: spec.components.pilot.k8s.env[1] (AMBIENT_ENABLE_MULTI_NETWORK) is set by setup-mesh"
            in info.value.message)


def test_other_istiod_env_in_an_ambient_base_is_the_users(tmp_path):
    path = tmp_path / "base.yaml"
    path.write_text(AMBIENT_BASE + "  components:\n    pilot:\n      k8s:\n        env:\n"
                                   "        - name: PILOT_TRACE_SAMPLING\n          value: '5'\n")
    assert load_base(path).operator["spec"]["components"]["pilot"]["k8s"]["env"][0]["name"] == "PILOT_TRACE_SAMPLING"


# --- status --------------------------------------------------------------------------------------

def _ambient_status(tmp_path, root, change):
    from dataclasses import replace

    from lib.gatewayapi import ClusterCrds
    from lib.statusjudge import evaluate
    from tests.test_status import NOW, _healthy, _topology, _ws

    topology = _topology(tmp_path)
    observed, istiod = _healthy(topology, root)
    for seen in observed.values():
        seen.eastwest_made_by = "gateway"
        seen.gateway_api = ClusterCrds(True, "v1.4.0", "standard")
        seen.eastwest_gateway = {"kind": "Gateway", "status": {
            "addresses": [{"type": "IPAddress", "value": "198.51.100.9"}],
            "conditions": [{"type": "Programmed", "status": "True", "reason": "Programmed"}]}}
        seen.daemonsets["ztunnel"] = {"kind": "DaemonSet", "status": {"desiredNumberScheduled": 1, "numberReady": 1}}
    change(observed)
    ws = replace(_ws(tmp_path, topology, root), data_plane=AMBIENT)
    return evaluate(ws, observed, istiod, now=NOW)


def _problems(status, context):
    return {p.code: p for c in status.clusters if c.cluster.context == context for p in c.problems}


def test_status_of_a_healthy_ambient_mesh_reports_the_gateways_address_and_programmed(tmp_path):
    from tests.test_status import _ca

    status = _ambient_status(tmp_path, _ca("Root CA"), lambda observed: None)
    assert status.healthy, [p.message for c in status.clusters for p in c.problems]
    doc = status.to_json()["clusters"][0]
    assert doc["gateway"] == {"required": True, "address": "198.51.100.9", "programmed": True}
    assert doc["gateway_api_crds"] == "v1.4.0" and doc["ztunnel"] == {"ready": 1, "desired": 1}


def test_status_of_an_ambient_mesh_names_what_keeps_the_gateway_from_working(tmp_path):
    from lib.gatewayapi import ClusterCrds
    from tests.test_status import _ca

    def change(observed):
        observed["c1"].gateway_api = ClusterCrds(False)
        observed["c1"].eastwest_gateway = None
        observed["c2"].eastwest_gateway["status"] = {"conditions": [
            {"type": "Programmed", "status": "False", "reason": "AddressNotAssigned", "message": "address pending"}]}
        observed["c3"].eastwest_made_by = "operator"
        observed["c3"].gateway_api = ClusterCrds(True, "v1.1.0", "standard")

    status = _ambient_status(tmp_path, _ca("Root CA"), change)
    c1, c2, c3 = (_problems(status, c) for c in ("c1", "c2", "c3"))
    assert "gateway_api_crds_missing" in c1 and "gateway_missing" not in c1  # one cause, named once
    assert "AddressNotAssigned (address pending)" in c2["gateway_not_programmed"].message
    assert "gateways.gateway.networking.k8s.io istio-eastwestgateway" in c2["gateway_not_programmed"].hint
    assert "gateway_sidecar_mode" in c3
    assert c3["gateway_api_crds_old"].severity == "warning" and "v1.1.0" in c3["gateway_api_crds_old"].message
    docs = {c["context"]: c for c in status.to_json()["clusters"]}
    assert docs["c1"]["gateway_api_crds"] == "missing"
    assert docs["c2"]["gateway"]["programmed"] is False


# --- shapes Istio does not support ----------------------------------------------------------------

def test_ambient_with_remote_clusters_is_refused_before_any_cluster_is_touched(tmp_path):
    from lib.config import Cluster, Topology, check_data_plane

    path = tmp_path / "base.yaml"
    path.write_text(AMBIENT_BASE)
    base = load_base(path)
    clusters = (Cluster("east", "n1", "east"), Cluster("west", "n2", "west", primary="east"))
    topology = Topology("mesh1", clusters, tmp_path / "topology.yaml")
    with pytest.raises(ConfigError) as info:
        check_data_plane(topology, base)
    assert f"{path}:4: profile ambient does not support remote clusters" in info.value.message
    assert "west (primary: east)" in info.value.message and "multi-primary" in info.value.hint
    path.write_text(AMBIENT_BASE.replace("ambient", "default"))
    check_data_plane(topology, load_base(path))  # sidecar mode supports them
    path.write_text(AMBIENT_BASE)
    check_data_plane(Topology("mesh1", clusters[:1], tmp_path / "topology.yaml"), load_base(path))


# --- verify ----------------------------------------------------------------------------------------

def test_verify_in_an_ambient_mesh_enables_its_namespace_for_ambient_and_makes_helloworld_global():
    from lib.config import Cluster
    from lib.traffic import Images, manifests

    cluster = Cluster("c1", "n1", "c1")
    images = Images("registry.example/helloworld:1.0", "registry.example/curl:8")
    namespace, service = manifests("check", cluster, None, images, ambient=True)[:2]
    assert namespace["metadata"]["labels"]["istio.io/dataplane-mode"] == "ambient"
    assert "istio-injection" not in namespace["metadata"]["labels"]
    assert service["metadata"]["labels"]["istio.io/global"] == "true"
    sidecar_namespace, sidecar_service = manifests("check", cluster, None, images)[:2]
    assert sidecar_namespace["metadata"]["labels"]["istio-injection"] == "enabled"
    assert "istio.io/global" not in sidecar_service["metadata"]["labels"]


def test_the_switch_to_ambient_says_the_sidecar_mode_gateway_was_replaced_not_removed(tmp_path):
    # The cluster's result line lists what its steps did: the ambient Gateway follows this removal.
    from lib.config import Cluster, Topology
    from lib.desired import desired_state
    from lib.gatewaysteps import remove_sidecar_gateway_step
    from lib.kube import Observed, Tools

    topology = Topology("m", (Cluster("c1", "n1", "c1"), Cluster("c2", "n2", "c2")), tmp_path / "topology.yaml")
    d = desired_state(topology, {"apiVersion": "install.istio.io/v1alpha1", "kind": "IstioOperator",
                                 "spec": {"profile": "ambient"}})["c1"]
    step = remove_sidecar_gateway_step(Tools(), tmp_path, d, Observed(reachable=True, eastwest_exists=True))
    assert step.done == "sidecar-mode east-west gateway replaced by the ambient one"
    assert step.title == "remove the sidecar-mode east-west gateway (ambient now)"


@pytest.mark.parametrize("only, mode, named", [
    ({"c1"}, "sidecar", "c2, c4"),  # c3 was never applied, c5 could not be read, c6 runs sidecar already
    ({"c1", "c2", "c4"}, "sidecar", None),  # every cluster on the other data plane moves
    (None, "sidecar", None),  # without --context the run moves them all
    ({"c1"}, "ambient", "c6"),
])
def test_context_leaving_out_clusters_on_the_other_data_plane_is_warned_of(tmp_path, only, mode, named):
    import io

    from rich.console import Console

    from lib.applywarnings import after_reads
    from lib.config import Cluster, Topology
    from lib.kube import Observed
    from lib.names import DATA_PLANE_ANNOTATION
    from lib.reporter import Reporter

    clusters = tuple(Cluster(f"c{i}", "n1" if i < 4 else "n2", f"c{i}") for i in range(1, 7))
    ambient = {"applied": "fp", "annotations": {DATA_PLANE_ANNOTATION: "ambient"}}
    observed = {"c1": Observed(reachable=True, **ambient), "c2": Observed(reachable=True, **ambient),
                "c3": Observed(reachable=True), "c4": Observed(reachable=True, **ambient),
                "c5": Observed(reachable=False, error="refused"), "c6": Observed(reachable=True, applied="fp")}
    err = io.StringIO()
    reporter = Reporter(console=Console(file=io.StringIO(), width=400), err_console=Console(file=err, width=400))
    after_reads(Topology("m", clusters, tmp_path / "topology.yaml"), observed, only, mode == "ambient", None, reporter)
    if named is None:
        assert "--context leaves out" not in err.getvalue()
    else:
        other = "ambient" if mode == "sidecar" else "sidecar"
        assert f"base.yaml sets the {mode} data plane, and --context leaves out {named}, which run" in err.getvalue()
        assert f"the {other} one: the mesh runs both until apply moves" in err.getvalue()
