"""An ambient mesh on the sandbox: three clusters on two networks built from an ambient base.yaml, a no-op
re-apply, switching to sidecar mode and back, and the Gateway API CRDs a cluster already has."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tests.meshkit import applied_mesh, make_mesh

# The tests share one mesh built for this module: under -n they run on one worker, which builds it once.
pytestmark = pytest.mark.xdist_group("test_ambient_mesh")

THREE = {"cluster1": "network1", "cluster2": "network1", "cluster3": "network2"}
CRDS = Path(__file__).parent / "gateway-api" / "standard-v1.4.0.yaml"
EW = "istio-eastwestgateway"
NS = "istio-system"


def set_profile(mesh, profile: str) -> None:
    path = mesh.workdir / "base.yaml"
    path.write_text(path.read_text().replace("profile: default", f"profile: {profile}")
                    .replace("profile: ambient", f"profile: {profile}"))


APPLY = ("--gateway-api-crds", str(CRDS), "--gateway-timeout", "30")


def apply(mesh, *args, ok: bool = True):
    return mesh.apply(*APPLY, *args, ok=ok)


def istiod_env(mesh, ctx: str) -> dict:
    deployment = mesh.get(ctx, "deployment", "istiod", "-n", NS)
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e.get("value") for e in container.get("env") or []}


def assert_ambient(mesh) -> None:
    """What Istio's ambient multicluster guide leaves in every cluster."""
    for ctx, network in THREE.items():
        crd = mesh.get(ctx, "crd", "gateways.gateway.networking.k8s.io")
        assert crd["metadata"]["annotations"]["gateway.networking.k8s.io/bundle-version"] == "v1.4.0"
        assert "kubectl.kubernetes.io/last-applied-configuration" not in crd["metadata"]["annotations"]
        assert {d["metadata"]["name"] for d in mesh.get(ctx, "daemonsets", "-n", NS)["items"]} == \
            {"ztunnel", "istio-cni-node"}
        env = istiod_env(mesh, ctx)
        assert env["AMBIENT_ENABLE_MULTI_NETWORK"] == "true" and env["PILOT_ENABLE_AMBIENT"] == "true"
        gateway = mesh.get(ctx, "gateways.gateway.networking.k8s.io", EW, "-n", NS)
        assert gateway["spec"]["gatewayClassName"] == "istio-east-west"
        assert gateway["metadata"]["labels"]["topology.istio.io/network"] == network
        conditions = {c["type"]: c["status"] for c in gateway["status"]["conditions"]}
        assert conditions["Programmed"] == "True"
        service = mesh.get(ctx, "service", EW, "-n", NS)
        assert service["metadata"]["labels"].get("gateway.istio.io/managed") == "istio.io-eastwest-controller"
        assert gateway["status"]["addresses"][0]["value"] == service["status"]["loadBalancer"]["ingress"][0]["ip"]
        # no sidecar-mode gateway: neither its IstioOperator's objects nor the cross-network Gateway
        assert mesh.get(ctx, "gateways.networking.istio.io", "-n", NS)["items"] == []
        assert sorted(mesh.remote_secrets(ctx)) == sorted(c for c in THREE if c != ctx)


def assert_sidecar(mesh) -> None:
    for ctx in THREE:
        assert mesh.get(ctx, "daemonsets", "-n", NS)["items"] == []
        assert "AMBIENT_ENABLE_MULTI_NETWORK" not in istiod_env(mesh, ctx)
        assert mesh.get(ctx, "gateways.gateway.networking.k8s.io", "-n", NS)["items"] == []
        service = mesh.get(ctx, "service", EW, "-n", NS)
        assert service["metadata"]["labels"]["operator.istio.io/component"] == "IngressGateways"
        assert "gateway.istio.io/managed" not in service["metadata"]["labels"]
        assert [g["metadata"]["name"] for g in mesh.get(ctx, "gateways.networking.istio.io", "-n", NS)["items"]] == \
            ["cross-network-gateway"]


@pytest.fixture(scope="module")
def ambient_mesh(tmp_path_factory):
    """A three-cluster, two-network ambient mesh built by apply, shared by the tests below (in order)."""
    with applied_mesh(tmp_path_factory.mktemp("ambient3"), THREE, lb_delay=0.5, profile="ambient",
                      apply_args=APPLY) as built:
        yield built


def test_an_ambient_base_builds_an_ambient_mesh_across_two_networks(ambient_mesh):
    mesh, result = ambient_mesh
    assert_ambient(mesh)
    # the east-west gateway is istiod's to deploy: istioctl installed only the control planes
    assert all((c["merged"] or {}).get("spec", {}).get("profile") == "ambient" for c in mesh.installs())
    assert len(mesh.installs()) == len(THREE)
    overlay = yaml.safe_load((mesh.workdir / "overlays" / "cluster3.yaml").read_text())
    assert overlay["spec"]["components"]["pilot"]["k8s"]["env"] == [
        {"name": "AMBIENT_ENABLE_MULTI_NETWORK", "value": "true"}]
    assert not (mesh.workdir / "overlays" / "cluster3-eastwest.yaml").exists()
    status = mesh.run("status", "-o", "json")
    assert status.returncode == 0, status.stdout + status.stderr
    for cluster in json.loads(status.stdout)["clusters"]:
        assert cluster["gateway"]["programmed"] is True and cluster["gateway_api_crds"] == "v1.4.0"
    # teardown would leave the CRDs apply installed, and says so before it asks
    dry = mesh.run("teardown", "--dry-run")
    assert dry.returncode == 0, dry.stdout + dry.stderr
    for ctx in THREE:
        assert f"{ctx}: keeps the Gateway API CRDs (gateway.networking.k8s.io)" in dry.stdout


def test_a_no_op_reapply_of_an_ambient_mesh_installs_nothing(ambient_mesh):
    mesh, _ = ambient_mesh
    installs = len(mesh.installs())
    before = {ctx: len(mesh.sandbox.requests(ctx)) for ctx in THREE}
    result = apply(mesh)
    assert len(mesh.installs()) == installs
    for ctx in THREE:
        writes = [r for r in mesh.sandbox.requests(ctx)[before[ctx]:] if r["method"] not in ("GET", "HEAD")]
        assert writes == [], f"{ctx} got writes on a no-op re-run: {writes}"
    assert "unchanged" in result.stdout


def test_switching_to_sidecar_mode_asks_first_then_replaces_gateways_and_profile(ambient_mesh):
    mesh, _ = ambient_mesh
    set_profile(mesh, "default")
    plan = mesh.run("apply", "--dry-run", "--gateway-api-crds", str(CRDS))
    assert plan.returncode == mesh.applied_code(), plan.stderr
    assert "cluster3 replaces (apply asks first): the ambient Gateway istio-eastwestgateway is replaced" in plan.stdout
    assert "--context leaves out" not in plan.stderr
    # One cluster alone would leave the mesh on two data planes: said, naming the clusters left behind.
    one = mesh.run("apply", "--dry-run", "--context", "cluster3", "--gateway-api-crds", str(CRDS))
    assert "warning: base.yaml sets the sidecar data plane, and --context leaves out cluster1, cluster2, which run " \
           "the ambient one: the mesh runs both until apply moves them too" in " ".join(one.stderr.split()), one.stderr
    refused = mesh.run("apply", "--gateway-api-crds", str(CRDS))  # no terminal, no -y
    assert refused.returncode == 2 and "needs confirmation" in refused.stdout + refused.stderr
    assert mesh.get("cluster1", "daemonsets", "-n", NS)["items"], "nothing may change before the answer"

    mesh.apply_checked(*APPLY)
    assert_sidecar(mesh)
    again = apply(mesh)
    assert "unchanged" in again.stdout and "replaces" not in again.stdout


def test_switching_back_to_ambient_converges(ambient_mesh):
    mesh, _ = ambient_mesh
    set_profile(mesh, "ambient")
    mesh.apply_checked(*APPLY)
    assert_ambient(mesh)
    # the sidecar-mode gateway's IstioOperator objects are gone, not only the Service's name
    for ctx in THREE:
        assert mesh.get(ctx, "deployments", "-n", NS, "-l", "operator.istio.io/component=IngressGateways")["items"] == []


def test_unsupported_or_alpha_shapes_are_named_before_any_cluster_is_touched(sandbox_factory, tmp_path):
    sandbox = sandbox_factory(["east", "west"])
    mesh = make_mesh(sandbox, tmp_path / "ws", {"east": "net1", "west": "net1"})
    set_profile(mesh, "ambient")
    base = mesh.workdir / "base.yaml"
    good = base.read_text()
    base.write_text(good + "  values:\n    pilot:\n      env:\n        AMBIENT_ENABLE_MULTI_NETWORK: 'false'\n")
    refused = mesh.run("apply", "-y", "--gateway-api-crds", str(CRDS))
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert "AMBIENT_ENABLE_MULTI_NETWORK is set by setup-mesh" in refused.stdout + refused.stderr
    assert "Traceback" not in refused.stderr
    assert all(r["method"] in ("GET", "HEAD") for ctx in ("east", "west") for r in sandbox.requests(ctx))

    base.write_text(good)
    plan = mesh.run("apply", "--dry-run", "--gateway-api-crds", str(CRDS))
    assert plan.returncode == mesh.applied_code(), plan.stderr
    assert "alpha in Istio" in plan.stdout + plan.stderr
    assert "+ Gateway API CRDs (v1.4.0)" in plan.stdout
    assert "istio-east-west" not in plan.stdout  # one network: no east-west gateway
    # One cluster is not multicluster at all: nothing alpha about it.
    mesh.write_topology({"east": "net1"})
    alone = mesh.run("apply", "--dry-run", "--gateway-api-crds", str(CRDS))
    assert alone.returncode == mesh.applied_code(), alone.stderr
    assert "alpha in Istio" not in alone.stdout + alone.stderr and "Plan:" in alone.stdout


def test_istios_ambient_profile_file_taken_as_base_yaml_builds_an_ambient_mesh(tmp_path):
    # Istio's manifests/profiles/ambient.yaml names ambient in the charts' profile (values.profile) and
    # enables istio-cni and ztunnel; spec.profile stays default. istiod runs ambient's defaults all the same.
    by_values = ("default\n  components:\n    cni:\n      enabled: true\n    ztunnel:\n      enabled: true\n"
                 "  values:\n    profile: ambient")
    two = {"cluster1": "network1", "cluster2": "network2"}
    with applied_mesh(tmp_path, two, lb_delay=0.5, profile=by_values, apply_args=APPLY) as (mesh, _):
        for ctx in two:
            assert mesh.get(ctx, "daemonset", "ztunnel", "-n", NS)
            gateway = mesh.get(ctx, "gateways.gateway.networking.k8s.io", EW, "-n", NS)
            assert gateway["spec"]["gatewayClassName"] == "istio-east-west"
            assert istiod_env(mesh, ctx)["AMBIENT_ENABLE_MULTI_NETWORK"] == "true"
            assert mesh.get(ctx, "gateways.networking.istio.io", "cross-network-gateway", "-n", NS,
                            check=False) is None, "a sidecar mesh's Gateway in an ambient mesh"
        status = mesh.run("status")
        assert status.returncode == 0, status.stdout + status.stderr
        plan = mesh.run("apply", "--dry-run", *APPLY)
        assert plan.returncode == 0 and "unchanged: cluster1, cluster2" in plan.stdout, plan.stdout + plan.stderr


def test_istios_openshift_ambient_profile_builds_an_ambient_mesh_with_ztunnel_where_it_puts_it(tmp_path):
    # Istio's openshift-ambient profile is ambient too, with istio-cni and ztunnel in kube-system.
    two = {"cluster1": "network1", "cluster2": "network2"}
    with applied_mesh(tmp_path, two, lb_delay=0.5, profile="openshift-ambient", apply_args=APPLY) as (mesh, _):
        for ctx in two:
            assert mesh.get(ctx, "daemonset", "ztunnel", "-n", "kube-system")
            gateway = mesh.get(ctx, "gateways.gateway.networking.k8s.io", EW, "-n", NS)
            assert gateway["spec"]["gatewayClassName"] == "istio-east-west"
        status = mesh.run("status", "-o", "json")
        assert status.returncode == 0, status.stdout + status.stderr
        for cluster in json.loads(status.stdout)["clusters"]:
            assert cluster["ztunnel"] is not None and cluster["ztunnel"]["ready"] == cluster["ztunnel"]["desired"]
