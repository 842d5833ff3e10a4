"""verify on a mesh with a remote: cluster1 (primary, network1), cluster2 (remote of cluster1, network2)
and cluster3 (primary, network2). The remote's sidecars are injected and configured by cluster1's
istiod; when that control plane fails it, verify says so and points at cluster1."""
from __future__ import annotations

import json
import time

import pytest
import yaml

from tests import meshkit, test_verify
from tests.sandbox import meshmodel
from tests.test_verify import NS, _failed_only, _pair, _repaired

# The tests share one mesh built for this module: under -n they run on one worker, which builds it once.
pytestmark = pytest.mark.xdist_group("test_verify_remote")

CONTEXTS = {"cluster1": {"network": "network1"},
            "cluster2": {"network": "network2", "primary": "cluster1"},
            "cluster3": {"network": "network2"}}
EVERY = [(a, b) for a in CONTEXTS for b in CONTEXTS]
WITH_REMOTE = {(a, b) for a, b in EVERY if "cluster2" in (a, b)}
ISTIOD_PODS = "kubectl --context cluster1 get pods -n istio-system -l app=istiod"


class Mesh(test_verify.Mesh):
    def write_topology(self, api_servers: dict[str, str]) -> None:
        contexts = {ctx: {**spec, "api_server": api_servers[ctx]} for ctx, spec in CONTEXTS.items()}
        (self.workdir / "topology.yaml").write_text(yaml.safe_dump({"mesh_id": "mesh1", "contexts": contexts}))


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    with meshkit.running_mesh(tmp_path_factory.mktemp("verify-remote"), Mesh, list(CONTEXTS)) as m:
        yield m


def _causes(doc: dict, code: str) -> dict[tuple[str, str], dict]:
    """The failing pairs naming ``code``, with that cause."""
    return {(p["from"], p["to"]): c for p in doc["pairs"] for c in p["causes"] if c["code"] == code}


def test_a_remote_reaches_and_is_reached_by_every_cluster(mesh):
    before = len(mesh.sandbox.requests("cluster2"))
    code, doc = mesh.verify()
    assert code == 0 and doc["ok"] is True, [p for p in doc["pairs"] if not p["reached"]]
    assert [(p["from"], p["to"]) for p in doc["pairs"]] == EVERY
    assert all(p["reached"] and p["answers"] > 0 for p in doc["pairs"]) and doc["problems"] == []
    # A remote's Istio configuration is its primary's: verify reads no Gateway in the remote.
    paths = [r["path"] for r in mesh.sandbox.requests("cluster2")[before:]]
    assert not [p for p in paths if "/gateways" in p], paths

    plan = mesh.run("verify", "--dry-run")
    assert plan.returncode == 0, plan.stderr
    assert "== cluster2 (remote of cluster1: its sidecars are injected and configured by cluster1's istiod)" \
        in plan.stdout
    assert "on remotes: $ kubectl get endpointslices.discovery.k8s.io -n istio-system -l " \
           "kubernetes.io/service-name=istiod -o json" in plan.stdout


def test_a_primary_without_the_remotes_secret_leaves_the_remote_unconfigured(mesh):
    mesh.kubectl("cluster1", "delete", "secret", "istio-remote-secret-cluster2", "-n", "istio-system")
    result = mesh.run("verify", "-o", "json", "--ready-timeout", "5", "--keep")
    code, doc = result.returncode, json.loads(result.stdout)
    assert code == 1
    _failed_only(doc, {pair: "primary_lacks_secret" for pair in WITH_REMOTE})
    causes = _causes(doc, "primary_lacks_secret")
    assert set(causes) == WITH_REMOTE
    for cause in causes.values():
        assert cause["message"].startswith("cluster1, the primary of cluster2, holds no current remote secret of "
                                           "cluster2 (missing): cluster1's istiod does not configure")
        assert "kubectl --context cluster1 get secrets -n istio-system" in cause["hint"]
    # the remote's pods run with a sidecar that never gets configuration; the hint names the primary
    problems = [p for p in doc["problems"] if p["code"] == "pod_not_ready"]
    assert len(problems) == 2 and all(p["message"].startswith("cluster2: ") for p in problems)
    assert all("[istio-proxy]" in p["message"] and "cluster1, the primary of cluster2" in p["hint"]
               for p in problems)
    # Once cluster1 holds the secret again, the waiting sidecars get their configuration.
    mesh.apply()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        pods = mesh.get("cluster2", "pods", "-n", NS)["items"]
        ready = mesh.get("cluster2", "deployment", "curl", "-n", NS)["status"].get("readyReplicas")
        if pods and all(meshmodel.pod_ready(p) for p in pods) and ready == 1:
            break
        time.sleep(0.3)
    assert len(pods) == 2 and all(meshmodel.pod_ready(p) for p in pods), [p["status"] for p in pods]
    assert ready == 1, "the Deployment counts its pods once they are ready"
    _repaired(mesh)  # reuses the kept namespace, and removes it


def test_a_primary_whose_istiod_is_down_takes_its_remote_down_too(mesh):
    mesh.kubectl("cluster1", "scale", "deployment", "istiod", "-n", "istio-system", "--replicas=0")
    try:
        code, doc = mesh.verify("--ready-timeout", "3")
    finally:
        mesh.kubectl("cluster1", "scale", "deployment", "istiod", "-n", "istio-system", "--replicas=1")
    assert code == 1
    failed = {pair for pair in EVERY if pair != ("cluster3", "cluster3")}
    _failed_only(doc, {pair: "primary_istiod_not_ready" if pair in WITH_REMOTE else "istiod_not_ready"
                       for pair in failed})
    remote = _causes(doc, "primary_istiod_not_ready")
    assert set(remote) == WITH_REMOTE
    for cause in remote.values():
        assert cause["message"].startswith("cluster2 is a remote of cluster1, whose istiod has no ready replica")
        assert ISTIOD_PODS in cause["hint"]
    # The injector's webhook fails, so no pod is created, in the primary or the remote: the API server's
    # words (from the Deployment) say why, the hint says where to look.
    problems = {(p["message"].split(":")[0], p["code"]) for p in doc["problems"]}
    assert problems == {("cluster1", "pod_missing"), ("cluster2", "pod_missing")}, doc["problems"]
    for problem in doc["problems"]:
        # verify's namespace is labelled istio-injection=enabled: the chart's namespace. webhook selects it
        assert 'failed calling webhook "namespace.sidecar-injector.istio.io"' in problem["message"]
        assert ISTIOD_PODS in problem["hint"]
    assert "/inject/cluster/cluster2/net/network2" in next(
        p["message"] for p in doc["problems"] if p["message"].startswith("cluster2:"))
    assert _pair(doc, "cluster2", "cluster3")["causes"][-1]["code"] == "client_not_ready"
    code, doc = mesh.verify()
    assert code == 0, [p for p in doc["pairs"] if not p["reached"]]


def test_a_remote_knows_only_the_peers_its_primary_has_synced(mesh):
    # cluster3's own secrets stay: it still reaches cluster2. cluster2 holds no secret of anyone: what it
    # reaches is what cluster1 reads.
    mesh.kubectl("cluster1", "delete", "secret", "istio-remote-secret-cluster3", "-n", "istio-system")
    code, doc = mesh.verify()
    assert code == 1
    _failed_only(doc, {("cluster1", "cluster3"): "remote_secret_missing",
                       ("cluster2", "cluster3"): "remote_secret_missing"})
    cause = _causes(doc, "remote_secret_missing")[("cluster2", "cluster3")]
    assert cause["message"] == "cluster1 (the control plane of cluster2) holds no remote secret of cluster3"
    _repaired(mesh)


def test_the_primarys_cross_network_gateway_serves_the_remotes_gateway(mesh):
    # The Gateway lives in cluster1 only; cluster1's istiod applies it to cluster2's east-west gateway too.
    gateway = mesh.kubectl("cluster1", "get", "gateway", "cross-network-gateway", "-n", "istio-system", "-o", "json")
    assert mesh.get("cluster2", "gateways.networking.istio.io", "-n", "istio-system")["items"] == []
    mesh.kubectl("cluster1", "delete", "gateway", "cross-network-gateway", "-n", "istio-system")
    try:
        code, doc = mesh.verify()
    finally:
        restored = json.loads(gateway)
        restored["metadata"] = {k: v for k, v in restored["metadata"].items()
                                if k in ("name", "namespace", "labels", "annotations")}
        mesh.kubectl("cluster1", "apply", "-f", "-", stdin=json.dumps(restored))
    # network2 has cluster3's gateway (exposed by cluster3, which reads cluster2): cluster1 -> cluster2
    # still goes through it; nothing enters network1 any more.
    _failed_only(doc, {("cluster2", "cluster1"): "cross_network_gateway_missing",
                       ("cluster3", "cluster1"): "cross_network_gateway_missing"})
    cause = _causes(doc, "cross_network_gateway_missing")[("cluster3", "cluster1")]
    assert cause["message"].startswith("cluster1 has no Gateway exposing *.local on port 15443")
    code, doc = mesh.verify()
    assert code == 0, [p for p in doc["pairs"] if not p["reached"]]


def test_the_primarys_gateway_address_lost_and_changed(mesh):
    patch = lambda kind: mesh.kubectl("cluster1", "patch", "service", "istio-eastwestgateway", "-n",  # noqa: E731
                                      "istio-system", "-p", json.dumps({"spec": {"type": kind}}))
    patch("NodePort")
    try:
        code, doc = mesh.verify("--ready-timeout", "3")
    finally:
        patch("LoadBalancer")
    expected = {pair: "primary_gateway_no_address" for pair in WITH_REMOTE}
    expected[("cluster3", "cluster1")] = "gateway_no_address"  # the services' way into network1, too
    _failed_only(doc, expected)
    cause = _causes(doc, "primary_gateway_no_address")[("cluster3", "cluster2")]
    assert cause["message"].startswith("cluster2 reaches cluster1's istiod through cluster1's east-west gateway, "
                                       "which has no address")
    assert "kubectl --context cluster1 get service istio-eastwestgateway -n istio-system" in cause["hint"]
    assert "i/o timeout" in next(p["message"] for p in doc["problems"] if p["code"] == "pod_missing")

    # Back as a LoadBalancer it gets another address, which the remote was not installed with. (The load
    # balancer gives it one after its delay: verified once it has, else this would be the case above again.)
    deadline = time.monotonic() + 30
    while not mesh.get("cluster1", "service", "istio-eastwestgateway", "-n", "istio-system")["status"].get(
            "loadBalancer", {}).get("ingress") and time.monotonic() < deadline:
        time.sleep(0.1)
    code, doc = mesh.verify("--ready-timeout", "3")
    _failed_only(doc, {pair: "primary_address_changed" for pair in WITH_REMOTE})
    cause = _causes(doc, "primary_address_changed")[("cluster2", "cluster2")]
    assert cause["message"].startswith("cluster2's istiod Service leads to ")
    assert "installs cluster2 again with cluster1's current address" in cause["hint"]
    _repaired(mesh)


def test_table_names_the_primary(mesh):
    mesh.kubectl("cluster1", "scale", "deployment", "istiod", "-n", "istio-system", "--replicas=0")
    try:
        table = mesh.run("verify", "--ready-timeout", "2")
    finally:
        mesh.kubectl("cluster1", "scale", "deployment", "istiod", "-n", "istio-system", "--replicas=1")
    assert table.returncode == 1, table.stdout + table.stderr
    # one block for the cause, naming every pair it breaks; no code in the text view
    assert "every call from or to cluster2: cluster2 is a remote of cluster1" in table.stdout
    blocks = [line for line in table.stdout.splitlines() if line.startswith("✗") and "is a remote of" in line]
    assert len(blocks) == 1 and "primary_istiod_not_ready" not in table.stdout, blocks
    assert f"hint: look at cluster1's istiod pods: `{ISTIOD_PODS}`" in table.stdout
    assert "Traceback" not in table.stderr
    mesh.assert_nothing_left()
    assert NS not in mesh.kubectl("cluster2", "get", "namespaces")


def test_a_remotes_istiod_service_that_selects_pods_is_named_and_verify_stops_at_the_refusal(mesh):
    # A selector set by someone other than istioctl (whose server-side apply removes only its own fields):
    # Kubernetes then gives the Service the endpoints of matching pods, and the remote runs no istiod.
    mesh.kubectl("cluster2", "patch", "service", "istiod", "-n", "istio-system", "-p",
                 json.dumps({"spec": {"selector": {"app": "istiod"}}}))
    try:
        status = mesh.run("status", "-o", "json")
        # far longer than the run may take: verify must stop once the API server refuses the pods
        result = mesh.run("verify", "-o", "json", "--ready-timeout", "900", timeout=240)
    finally:
        mesh.kubectl("cluster2", "patch", "service", "istiod", "-n", "istio-system", "--type", "json",
                     "-p", '[{"op": "remove", "path": "/spec/selector"}]')
    assert status.returncode == 1
    (problem,) = [p for c in json.loads(status.stdout)["clusters"] if c["context"] == "cluster2"
                  for p in c["problems"] if p["code"] == "istiod_service_selects_pods"]
    assert problem["message"].startswith("the istiod Service still selects pods (app=istiod), as a primary's does")
    assert ("kubectl --context cluster2 patch service istiod -n istio-system --type json -p "
            "'[{\"op\": \"remove\", \"path\": \"/spec/selector\"}]'") in problem["hint"]

    assert result.returncode == 1, result.stdout + result.stderr
    doc = json.loads(result.stdout)
    _failed_only(doc, {pair: "istiod_service_selects_pods" for pair in WITH_REMOTE})
    # the API server's refusal, from the Deployment, and where to look
    problems = [p for p in doc["problems"] if p["code"] == "pod_missing"]
    assert len(problems) == 2 and all(p["message"].startswith("cluster2: no ") for p in problems)
    assert all('no endpoints available for service "istiod"' in p["message"] for p in problems), problems
    assert all("cluster2: the istiod Service still selects pods" in p["hint"] for p in problems)
    code, doc = mesh.verify()
    assert code == 0, [p for p in doc["pairs"] if not p["reached"]]
