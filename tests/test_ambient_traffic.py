"""Traffic in an ambient mesh on the sandbox (tests/sandbox/ambientmodel.py): three clusters on two networks
built by apply; verify passes, and names what breaks it (the east-west Gateway of a network gone) with
ztunnel's words, never a sidecar's."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.meshkit import applied_mesh

# One mesh for the module: its tests stay on one worker, which builds it once.
pytestmark = pytest.mark.xdist_group("test_ambient_traffic")

THREE = {"cluster1": "network1", "cluster2": "network1", "cluster3": "network2"}
CRDS = Path(__file__).parent / "gateway-api" / "standard-v1.4.0.yaml"
EW = "istio-eastwestgateway"
NS = "istio-system"
VERIFY_NS = "setup-mesh-verify"


class AmbientMesh:
    APPLY = ("--gateway-api-crds", str(CRDS), "--gateway-timeout", "30")

    def __init__(self, mesh):
        self.mesh = mesh

    def apply(self):
        return self.mesh.apply(*self.APPLY)

    def verify(self, *args: str) -> tuple[int, dict]:
        result = self.mesh.run("verify", "-o", "json", *args)
        assert result.returncode in (0, 1), result.stdout + result.stderr
        return result.returncode, json.loads(result.stdout)


@pytest.fixture(scope="module")
def ambient(tmp_path_factory):
    with applied_mesh(tmp_path_factory.mktemp("ambient-traffic"), THREE, lb_delay=0.3, profile="ambient",
                      apply_args=AmbientMesh.APPLY) as (mesh, _):
        yield AmbientMesh(mesh)


def _failed(doc: dict) -> dict[tuple[str, str], list[dict]]:
    return {(p["from"], p["to"]): p["causes"] for p in doc["pairs"] if not p["reached"]}


def test_a_healthy_ambient_mesh_passes_verify(ambient):
    sandbox = ambient.mesh.sandbox
    before = {ctx: len(sandbox.requests(ctx)) for ctx in THREE}
    code, doc = ambient.verify()
    assert code == 0 and doc["ok"], _failed(doc) or doc["problems"]
    assert all(p["reached"] and p["answers"] > 0 for p in doc["pairs"]) and len(doc["pairs"]) == 9
    # ztunnel is read once, by status's reading of istio-system, whose findings verify uses
    for ctx in THREE:
        paths = [r["path"] for r in sandbox.requests(ctx)[before[ctx]:]]
        daemonsets = [p for p in paths if "/daemonsets" in p]
        assert len(daemonsets) == 1 and daemonsets[0].startswith(f"/apis/apps/v1/namespaces/{NS}/daemonsets"), \
            daemonsets


def test_without_the_east_west_gateway_of_a_network_verify_names_it(ambient):
    mesh = ambient.mesh
    mesh.kubectl("cluster3", "delete", "gateways.gateway.networking.k8s.io", EW, "-n", NS)
    code, doc = ambient.verify()
    assert code == 1
    failed = _failed(doc)
    # network2 has no way in; network1's gateways still take cluster3's calls
    assert set(failed) == {("cluster1", "cluster3"), ("cluster2", "cluster3")}, failed
    for causes in failed.values():
        cause = next(c for c in causes if c["code"] == "eastwest_gateway_missing")
        assert "cluster3's east-west Gateway" in cause["message"] and "network2" in cause["message"]
        assert "istioctl ztunnel-config" in cause["hint"]
        assert "kubectl --context cluster3 get gateways.gateway.networking.k8s.io" in cause["hint"]
        text = json.dumps(causes)
        assert "sidecar" not in text and "proxy-config" not in text, text

    table = mesh.run("verify")
    assert table.returncode == 1
    assert "cluster1 -> cluster3, cluster2 -> cluster3: cluster3's east-west Gateway" in table.stdout
    assert "eastwest_gateway_missing" not in table.stdout

    ambient.apply()  # apply puts the Gateway back
    code, doc = ambient.verify()
    assert code == 0, _failed(doc)


# --- the model's rules, one at a time, with workloads deployed by hand ------------------------------

APP_NS = "shop"


def _deploy(mesh, ctx: str) -> None:
    """helloworld (answering with the cluster's name) and curl in namespace shop, enrolled in ambient and
    the Service marked global, as Istio's ambient verify guide does."""
    from types import SimpleNamespace

    from lib.traffic import Images, manifests

    images = Images.from_options(None, "1.0", "8.16.0")
    items = manifests(APP_NS, SimpleNamespace(name=ctx), None, images, ambient=True)
    mesh.kubectl(ctx, "apply", "-f", "-", stdin=json.dumps({"apiVersion": "v1", "kind": "List", "items": items}))


def _ready(mesh, ctx: str) -> bool:
    pods = mesh.get(ctx, "pods", "-n", APP_NS)["items"]
    return len(pods) == 2 and all(any(c["type"] == "Ready" and c["status"] == "True"
                                      for c in p["status"].get("conditions") or []) for p in pods)


def _call(mesh, ctx: str, calls: int = 8) -> tuple[int, set[str], str]:
    """(curl's exit code, the clusters that answered, stderr) of calls from ctx's curl pod."""
    result = mesh.sandbox.kubectl(ctx, "exec", "-n", APP_NS, "deploy/curl", "-c", "curl", "--", "curl", "-sS",
                                  *[f"helloworld.{APP_NS}:5000/hello"] * calls, check=False)
    return result.returncode, set(re.findall(r"Hello version: ([^,]+),", result.stdout)), result.stderr


@pytest.fixture(scope="module")
def workloads(ambient):
    import time

    mesh = ambient.mesh
    for ctx in THREE:
        _deploy(mesh, ctx)
    deadline = time.monotonic() + 60
    while not all(_ready(mesh, ctx) for ctx in THREE):
        assert time.monotonic() < deadline, "workloads never became ready"
        time.sleep(0.5)
    return mesh


def test_captured_pods_reach_global_services_in_every_cluster(workloads):
    for ctx in THREE:
        code, answered, err = _call(workloads, ctx)
        assert code == 0 and answered == set(THREE), (ctx, answered, err)


def test_a_service_that_is_not_global_stays_in_its_cluster(workloads):
    workloads.kubectl("cluster3", "label", "service", "helloworld", "-n", APP_NS, "istio.io/global-")
    try:
        # a peer's local service is ignored; a caller whose own service is local never leaves its cluster
        assert _call(workloads, "cluster1")[1] == {"cluster1", "cluster2"}
        assert _call(workloads, "cluster3")[1] == {"cluster3"}
    finally:
        workloads.kubectl("cluster3", "label", "service", "helloworld", "-n", APP_NS, "istio.io/global=true")
    assert _call(workloads, "cluster3")[1] == set(THREE)


def test_a_pod_outside_ambient_is_not_carried_by_ztunnel(workloads):
    workloads.kubectl("cluster1", "label", "namespace", APP_NS, "istio.io/dataplane-mode-")
    try:
        # the caller is plain Kubernetes now, and cluster1's helloworld is no HBONE endpoint for its peers
        assert _call(workloads, "cluster1")[1] == {"cluster1"}
        assert _call(workloads, "cluster2")[1] == {"cluster2", "cluster3"}
    finally:
        workloads.kubectl("cluster1", "label", "namespace", APP_NS, "istio.io/dataplane-mode=ambient")


def test_peers_gateways_are_read_with_the_reader_token(workloads):
    """istiod reads cluster3's Gateway with the token of cluster1's remote secret for cluster3: without the
    reader ClusterRole's gateways rule in cluster3, network2 has no network gateway for cluster1."""
    role = next(r for r in workloads.get("cluster3", "clusterroles")["items"]
                if r["metadata"]["name"].startswith("istio-reader-clusterrole"))
    kept = [r for r in role["rules"] if "gateways" not in r.get("resources", [])]
    assert len(kept) < len(role["rules"])  # the stand-in grants it, as Istio's chart does
    patch = lambda rules: workloads.kubectl("cluster3", "patch", "clusterrole", role["metadata"]["name"],  # noqa: E731
                                            "--type", "merge", "-p", json.dumps({"rules": rules}))
    patch(kept)
    try:
        assert _call(workloads, "cluster1")[1] == {"cluster1", "cluster2"}
        assert _call(workloads, "cluster3")[1] == set(THREE)  # cluster1's and cluster2's Gateways are readable
    finally:
        patch(role["rules"])
    assert _call(workloads, "cluster1")[1] == set(THREE)


def test_without_ztunnel_or_its_istiod_a_captured_pod_cannot_connect(workloads):
    import time

    workloads.kubectl("cluster2", "scale", "deployment", "istiod", "-n", NS, "--replicas=0")
    try:
        deadline = time.monotonic() + 30
        while workloads.get("cluster2", "pods", "-n", NS, "-l", "app=istiod")["items"]:
            assert time.monotonic() < deadline
            time.sleep(0.3)
        code, answered, err = _call(workloads, "cluster2", calls=1)
        assert code == 7 and not answered and "Failed to connect" in err
    finally:
        workloads.kubectl("cluster2", "scale", "deployment", "istiod", "-n", NS, "--replicas=1")
    deadline = time.monotonic() + 30
    while _call(workloads, "cluster2")[1] != set(THREE):
        assert time.monotonic() < deadline, "cluster2 never recovered"
        time.sleep(0.5)


def test_without_istio_cni_the_ambient_label_alone_captures_nothing(workloads):
    saved = workloads.get("cluster1", "daemonset", "istio-cni-node", "-n", NS)
    workloads.kubectl("cluster1", "delete", "daemonset", "istio-cni-node", "-n", NS)
    try:
        # nothing redirects cluster1's pods: its client is a plain pod, its helloworld no HBONE endpoint
        assert _call(workloads, "cluster1") == (0, {"cluster1"}, "")
        assert _call(workloads, "cluster2")[1] == {"cluster2", "cluster3"}
    finally:
        saved["metadata"] = {k: v for k, v in saved["metadata"].items() if k in ("name", "namespace", "labels")}
        saved.pop("status", None)
        workloads.kubectl("cluster1", "create", "-f", "-", stdin=json.dumps(saved))
    assert _call(workloads, "cluster1")[1] == set(THREE)


def test_verify_names_a_cluster_whose_ztunnel_is_gone(ambient):
    mesh = ambient.mesh
    saved = mesh.get("cluster2", "daemonset", "ztunnel", "-n", NS)
    mesh.kubectl("cluster2", "delete", "daemonset", "ztunnel", "-n", NS)
    try:
        code, doc = ambient.verify()
    finally:
        saved["metadata"] = {k: v for k, v in saved["metadata"].items() if k in ("name", "namespace", "labels")}
        saved.pop("status", None)
        mesh.kubectl("cluster2", "create", "-f", "-", stdin=json.dumps(saved))
    failed = _failed(doc)
    # cluster2's pods cannot call, and take no call from the other clusters
    assert set(failed) == {(a, b) for a in THREE for b in THREE if "cluster2" in (a, b)}, failed
    for (source, _), causes in failed.items():
        cause = next(c for c in causes if c["code"] == "ztunnel_not_ready")
        assert cause["message"].startswith("cluster2's ztunnel is missing")
        # status's reading of the DaemonSet, with status's own problem behind it
        assert "kubectl --context cluster2 get daemonsets -n istio-system -l app.kubernetes.io/name=ztunnel" \
            in cause["hint"]
        assert cause["status_problems"] == [{"context": "cluster2", "code": "ztunnel_missing"}]
    assert "sidecar" not in json.dumps(doc) and "proxy-config" not in json.dumps(doc)
    code, doc = ambient.verify()
    assert code == 0, _failed(doc)
