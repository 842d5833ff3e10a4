"""The sandbox in ambient mode: the istioctl stand-in's ambient profile, Gateway API kinds served once their
CRDs are installed, and istiod's east-west gateway controller (tests/sandbox/gatewaycontroller.py)."""
from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest
import yaml

CRDS = Path(__file__).parent / "gateway-api" / "standard-v1.4.0.yaml"
EW = "istio-eastwestgateway"
NS = "istio-system"


def ambient_iop(cluster: str, network: str, multi_network: bool = True, revision: str | None = None) -> dict:
    spec: dict = {"profile": "ambient",
                  "values": {"global": {"meshID": "mesh1", "multiCluster": {"clusterName": cluster},
                                        "network": network}}}
    if multi_network:
        spec["components"] = {"pilot": {"k8s": {"env": [{"name": "AMBIENT_ENABLE_MULTI_NETWORK", "value": "true"}]}}}
    if revision:
        spec["revision"] = revision
    return {"apiVersion": "install.istio.io/v1alpha1", "kind": "IstioOperator",
            "metadata": {"name": "control-plane"}, "spec": spec}


def east_west_gateway(sb, network: str, labels: dict | None = None) -> dict:
    """What the release's gen-eastwest-gateway.sh --ambient prints, with extra labels."""
    script = Path(sb.istio_dir) / "samples/multicluster/gen-eastwest-gateway.sh"
    gateway = yaml.safe_load(subprocess.run(["bash", str(script), "--ambient", "--network", network],
                                            capture_output=True, text=True, check=True).stdout)
    gateway["metadata"]["labels"].update(labels or {})
    return gateway


def install(sb, ctx: str, iop: dict, tmp_path: Path) -> subprocess.CompletedProcess:
    path = tmp_path / f"{ctx}-{iop['spec'].get('revision', 'default')}.yaml"
    path.write_text(yaml.safe_dump(iop))
    proc = subprocess.run([str(Path(sb.istio_dir) / "bin" / "istioctl"), "install", "-y", "-f", str(path),
                           "--context", ctx], env=sb.env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc


def env_of(deployment: dict, container: str) -> dict:
    for c in deployment["spec"]["template"]["spec"]["containers"]:
        if c["name"] == container:
            return {e["name"]: e.get("value") for e in c.get("env") or []}
    raise AssertionError(f"no container {container}")


def wait_for(predicate, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.1)


def get_or_none(sb, ctx: str, *args: str):
    proc = sb.kubectl(ctx, "get", *args, "-o", "json", check=False)
    return yaml.safe_load(proc.stdout) if proc.returncode == 0 else None


@pytest.fixture
def sb(sandbox_factory):
    return sandbox_factory(["c1"], lb_delay=0.3)


def test_ambient_profile_installs_ztunnel_and_cni_and_turns_ambient_on_in_istiod(sb, tmp_path):
    proc = install(sb, "c1", ambient_iop("c1", "net1"), tmp_path)
    assert "The ambient profile has been installed successfully" in proc.stderr
    daemonsets = {d["metadata"]["name"]: d for d in sb.get_json("c1", "daemonsets", "-n", NS)["items"]}
    assert set(daemonsets) == {"ztunnel", "istio-cni-node"}
    assert all(d["status"]["numberReady"] == d["status"]["desiredNumberScheduled"] == 1 for d in daemonsets.values())
    table = sb.kubectl("c1", "get", "daemonsets", "-n", NS).stdout
    assert table.split("\n")[0].split()[:4] == ["NAME", "DESIRED", "CURRENT", "READY"]
    ztunnel = env_of(daemonsets["ztunnel"], "istio-proxy")
    assert (ztunnel["CLUSTER_ID"], ztunnel["NETWORK"]) == ("c1", "net1")

    istiod = sb.get_json("c1", "deployment", "istiod", "-n", NS)
    env = env_of(istiod, "discovery")
    assert env["PILOT_ENABLE_AMBIENT"] == "true"
    # components.pilot.k8s.env is merged into the chart's env, not put in its place
    assert env["AMBIENT_ENABLE_MULTI_NETWORK"] == "true" and env["CLUSTER_ID"] == "c1"
    mesh = yaml.safe_load(sb.get_json("c1", "configmap", "istio", "-n", NS)["data"]["mesh"])
    assert mesh["serviceScopeConfigs"][0]["scope"] == "GLOBAL"
    assert mesh["serviceScopeConfigs"][0]["servicesSelector"]["matchExpressions"][0]["key"] == "istio.io/global"
    # the ambient profile has no ingress gateway
    assert get_or_none(sb, "c1", "deployment", "istio-ingressgateway", "-n", NS) is None

    subprocess.run([str(Path(sb.istio_dir) / "bin" / "istioctl"), "uninstall", "--purge", "-y", "--context", "c1"],
                   env=sb.env, capture_output=True, check=True, timeout=60)
    assert sb.get_json("c1", "daemonsets", "-n", NS)["items"] == []


def test_gateway_api_kinds_are_served_only_once_their_crds_are_installed(sb, tmp_path):
    sb.kubectl("c1", "create", "namespace", NS)
    refused = sb.kubectl("c1", "apply", "--server-side", "-f", "-", stdin=yaml.safe_dump(east_west_gateway(sb, "net1")),
                         check=False)
    assert refused.returncode != 0 and 'no matches for kind "Gateway"' in refused.stderr
    sb.kubectl("c1", "apply", "--server-side", "-f", str(CRDS))
    resources = sb.kubectl("c1", "api-resources", "--api-group=gateway.networking.k8s.io", "-o", "name").stdout.split()
    assert {"gateways.gateway.networking.k8s.io", "gatewayclasses.gateway.networking.k8s.io",
            "httproutes.gateway.networking.k8s.io"} <= set(resources)
    crd = sb.get_json("c1", "crd", "gateways.gateway.networking.k8s.io")
    assert crd["metadata"]["annotations"]["gateway.networking.k8s.io/bundle-version"] == "v1.4.0"
    sb.kubectl("c1", "apply", "--server-side", "-f", "-", stdin=yaml.safe_dump(east_west_gateway(sb, "net1")))
    assert sb.get_json("c1", "gateways", "-n", NS)["items"][0]["spec"]["gatewayClassName"] == "istio-east-west"
    # deleting the CRD deletes its objects, as a real API server does
    sb.kubectl("c1", "delete", "crd", "gateways.gateway.networking.k8s.io")
    assert get_or_none(sb, "c1", "gateways", "-n", NS) is None


def test_east_west_gateway_is_deployed_by_an_istiod_with_the_multi_network_switch(sb, tmp_path):
    sb.kubectl("c1", "apply", "--server-side", "-f", str(CRDS))
    install(sb, "c1", ambient_iop("c1", "net1", multi_network=False), tmp_path)
    sb.kubectl("c1", "apply", "--server-side", "-f", "-", stdin=yaml.safe_dump(east_west_gateway(sb, "net1")))
    time.sleep(0.5)
    # without AMBIENT_ENABLE_MULTI_NETWORK istiod has no istio-east-west class: nothing handles the Gateway
    assert get_or_none(sb, "c1", "deployment", EW, "-n", NS) is None
    assert "status" not in sb.get_json("c1", "gateway", EW, "-n", NS) or \
        not sb.get_json("c1", "gateway", EW, "-n", NS)["status"].get("addresses")
    assert get_or_none(sb, "c1", "gatewayclass", "istio-east-west") is None

    install(sb, "c1", ambient_iop("c1", "net1"), tmp_path)

    def programmed():
        gw = sb.get_json("c1", "gateway", EW, "-n", NS)
        conditions = {c["type"]: c["status"] for c in (gw.get("status") or {}).get("conditions") or []}
        return gw if conditions.get("Programmed") == "True" else None

    gateway = wait_for(programmed)
    assert gateway, sb.get_json("c1", "gateway", EW, "-n", NS)
    service = sb.get_json("c1", "service", EW, "-n", NS)
    assert service["spec"]["type"] == "LoadBalancer"
    assert {p["port"] for p in service["spec"]["ports"]} == {15021, 15008}
    assert service["metadata"]["labels"]["gateway.istio.io/managed"] == "istio.io-eastwest-controller"
    assert service["metadata"]["labels"]["topology.istio.io/network"] == "net1"
    lb_ip = service["status"]["loadBalancer"]["ingress"][0]["ip"]
    assert gateway["status"]["addresses"] == [{"type": "IPAddress", "value": lb_ip}]
    deployment = sb.get_json("c1", "deployment", EW, "-n", NS)
    assert env_of(deployment, "istio-proxy")["ISTIO_META_NETWORK"] == "net1"
    assert deployment["metadata"]["ownerReferences"][0]["uid"] == gateway["metadata"]["uid"]
    assert sb.get_json("c1", "gatewayclass", "istio-east-west")["spec"]["controllerName"] == "istio.io/eastwest-controller"
    printed = sb.kubectl("c1", "get", "gateway", EW, "-n", NS).stdout
    assert lb_ip in printed and "True" in printed

    # the generated objects go with the Gateway
    sb.kubectl("c1", "delete", "gateway", EW, "-n", NS)
    assert get_or_none(sb, "c1", "deployment", EW, "-n", NS) is None
    assert get_or_none(sb, "c1", "service", EW, "-n", NS) is None


def test_gateway_controller_never_takes_over_a_service_it_did_not_make(sb, tmp_path):
    """A sidecar-mode east-west gateway (from an IstioOperator) holds the name: istiod leaves it alone."""
    sb.kubectl("c1", "apply", "--server-side", "-f", str(CRDS))
    install(sb, "c1", ambient_iop("c1", "net1"), tmp_path)
    script = Path(sb.istio_dir) / "samples/multicluster/gen-eastwest-gateway.sh"
    sidecar_gateway = subprocess.run(["bash", str(script), "--network", "net1"], capture_output=True, text=True,
                                     check=True).stdout
    path = tmp_path / "eastwest.yaml"
    path.write_text(sidecar_gateway)
    subprocess.run([str(Path(sb.istio_dir) / "bin" / "istioctl"), "install", "-y", "-f", str(path), "--context", "c1"],
                   env=sb.env, capture_output=True, check=True, timeout=60)
    sb.kubectl("c1", "apply", "--server-side", "-f", "-", stdin=yaml.safe_dump(east_west_gateway(sb, "net1")))
    time.sleep(0.5)
    service = sb.get_json("c1", "service", EW, "-n", NS)
    assert "gateway.istio.io/managed" not in service["metadata"]["labels"]
    assert service["metadata"]["labels"]["operator.istio.io/component"] == "IngressGateways"
    assert 15443 in {p["port"] for p in service["spec"]["ports"]}


def test_an_unlabelled_gateway_is_served_only_by_the_default_revision(sb, tmp_path):
    sb.kubectl("c1", "apply", "--server-side", "-f", str(CRDS))
    install(sb, "c1", ambient_iop("c1", "net1", revision="canary"), tmp_path)
    sb.kubectl("c1", "apply", "--server-side", "-f", "-", stdin=yaml.safe_dump(east_west_gateway(sb, "net1")))
    time.sleep(0.5)
    assert get_or_none(sb, "c1", "deployment", EW, "-n", NS) is None
    sb.kubectl("c1", "apply", "--server-side", "-f", "-",
               stdin=yaml.safe_dump(east_west_gateway(sb, "net1", {"istio.io/rev": "canary"})))
    assert wait_for(lambda: get_or_none(sb, "c1", "deployment", EW, "-n", NS))
