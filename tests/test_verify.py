"""verify: on a sandbox mesh built as a user builds one, a healthy mesh gives a full matrix; each cause
of a pair that does not answer, injected, fails verify and names the pair and the cause; nothing is left
behind by a passing, failing or interrupted run."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from lib.config import Cluster
from lib.traffic import Images, answers, manifests, pod_states
from tests import meshkit
from tests.meshkit import FAST_KEYS, make_other_ca

# The tests share one mesh built for this module: under -n they run on one worker, which builds it once.
pytestmark = pytest.mark.xdist_group("test_verify")

ROOT = Path(__file__).resolve().parent.parent
NETS = {"cluster1": "network1", "cluster2": "network1", "cluster3": "network2"}
NS = "setup-mesh-verify"


# --- pure parts --------------------------------------------------------------------------------------

def test_manifests_name_the_cluster_and_join_its_control_plane():
    cluster = Cluster("ctx-west", "network2", "west")
    images = Images.from_options(None, "1.0", "8.16.0")
    items = manifests("check", cluster, None, images)
    kinds = [(m["kind"], m["metadata"]["name"]) for m in items]
    assert kinds == [("Namespace", "check"), ("Service", "helloworld"), ("Deployment", "helloworld-west"),
                     ("ServiceAccount", "curl"), ("Service", "curl"), ("Deployment", "curl")]
    assert items[0]["metadata"]["labels"]["istio-injection"] == "enabled"
    service = items[1]["spec"]
    assert service["ports"] == [{"name": "http", "port": 5000}] and service["selector"] == {"app": "helloworld"}
    hello = items[2]["spec"]["template"]["spec"]["containers"][0]
    assert hello["env"] == [{"name": "SERVICE_VERSION", "value": "west"}]
    assert hello["image"] == "registry.istio.io/release/examples-helloworld-v1:1.0"
    assert items[5]["spec"]["template"]["spec"]["containers"][0]["image"] == "curlimages/curl:8.16.0"
    # a revision: istio.io/rev and no istio-injection (which would take precedence)
    labels = manifests("check", cluster, "canary", images)[0]["metadata"]["labels"]
    assert labels["istio.io/rev"] == "canary" and "istio-injection" not in labels
    mirror = Images.from_options("mirror.example.com/istio/", "1.1", "8.17.0")
    assert mirror == Images("mirror.example.com/istio/examples-helloworld-v1:1.1", "mirror.example.com/istio/curl:8.17.0")


def test_answers_and_pod_states_are_read_as_kubectl_shows_them():
    out = ("Hello version: cluster1, instance: helloworld-cluster1-abc\nno healthy upstream"
           "Hello version: west, instance: helloworld-west-def\n")
    assert answers(out) == ["cluster1", "west"]
    pods = {"items": [
        {"metadata": {"name": "curl-1", "labels": {"app": "curl"}},
         "spec": {"containers": [{"name": "curl"}, {"name": "istio-proxy"}]},
         "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}},
        {"metadata": {"name": "helloworld-x-1", "labels": {"app": "helloworld"}},
         "spec": {"containers": [{"name": "helloworld"}]},
         "status": {"phase": "Pending", "conditions": [{"type": "Ready", "status": "False"}],
                    "containerStatuses": [{"name": "helloworld", "state": {"waiting": {
                        "reason": "ErrImagePull", "message": "no such host"}}}]}},
        {"metadata": {"name": "helloworld-x-2", "labels": {"app": "helloworld"}},
         "spec": {"containers": [{"name": "helloworld"}]},
         "status": {"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "False",
                                                         "reason": "Unschedulable", "message": "0/1 nodes"}]}}]}
    states = pod_states(json.dumps(pods))
    (curl,) = states["curl"]
    assert curl.ready and curl.sidecar and curl.reason == ""
    first, second = states["helloworld"]
    assert not first.ready and not first.sidecar and first.reason == "helloworld: ErrImagePull: no such host"
    assert second.reason == "Pending: Unschedulable 0/1 nodes"


def test_a_deployment_without_pods_says_why():
    webhook = 'Internal error occurred: failed calling webhook "rev.namespace.sidecar-injector.istio.io": EOF'
    listing = {"apiVersion": "v1", "kind": "List", "items": [
        {"kind": "Deployment", "metadata": {"name": "curl"},
         "spec": {"template": {"metadata": {"labels": {"app": "curl"}}}},
         "status": {"conditions": [{"type": "Available", "status": "False"},
                                   {"type": "ReplicaFailure", "status": "True", "reason": "FailedCreate",
                                    "message": webhook}]}},
        {"kind": "Deployment", "metadata": {"name": "helloworld-west"},
         "spec": {"template": {"metadata": {"labels": {"app": "helloworld"}}}}, "status": {}},
        {"kind": "Deployment", "metadata": {"name": "other"},
         "spec": {"template": {"metadata": {"labels": {"app": "other"}}}}, "status": {}},
        {"kind": "Pod", "metadata": {"name": "other-1", "labels": {"app": "other"}},
         "spec": {"containers": [{"name": "other"}]},
         "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}}]}
    states = pod_states(json.dumps(listing))
    (curl,) = states["curl"]
    assert (curl.name, curl.created, curl.ready, curl.reason) == ("curl", False, False, f"FailedCreate: {webhook}")
    assert curl.refused, "refused by the API server: waiting longer changes nothing"
    (hello,) = states["helloworld"]
    assert not hello.created and hello.reason == "no pod created yet" and not hello.refused
    (other,) = states["other"]
    assert other.created and other.ready and other.name == "other-1"


# --- on the sandbox ------------------------------------------------------------------------------------

class Mesh(meshkit.Mesh):
    def verify(self, *args: str) -> tuple[int, dict]:
        result = self.run("verify", "-o", "json", *args)
        assert result.returncode in (0, 1), result.stdout + result.stderr
        doc = json.loads(result.stdout)  # stdout is the document and nothing else
        self.assert_nothing_left()
        return result.returncode, doc

    def write_topology(self, api_servers: dict[str, str]) -> None:
        contexts = {ctx: {"network": net, "api_server": api_servers[ctx]} for ctx, net in NETS.items()}
        (self.workdir / "topology.yaml").write_text(yaml.safe_dump({"mesh_id": "mesh1", "contexts": contexts}))

    def assert_nothing_left(self) -> None:
        for ctx in NETS:  # every object the cluster holds, read from the emulator directly
            objects = json.loads(self.sandbox.dump(ctx))["objects"]
            assert not [o for o in objects if o["name"] == NS or o["namespace"] == NS], f"verify left objects in {ctx}"
            assert {o["namespace"] for o in objects if o["resource"] == "pods"} <= {"istio-system"}, ctx


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    """Three clusters on two networks, set up by prep-mesh and apply; every test leaves it healthy again."""
    with meshkit.running_mesh(tmp_path_factory.mktemp("verify"), Mesh, list(NETS)) as m:
        yield m


def _pair(doc: dict, source: str, target: str) -> dict:
    return next(p for p in doc["pairs"] if (p["from"], p["to"]) == (source, target))


def _failed_only(doc: dict, expected: dict[tuple[str, str], str]) -> None:
    """Exactly the pairs in ``expected`` fail, each naming (at least) the expected cause."""
    assert doc["ok"] is False
    failed = {(p["from"], p["to"]): {c["code"] for c in p["causes"]} for p in doc["pairs"] if not p["reached"]}
    assert set(failed) == set(expected), failed
    for pair, code in expected.items():
        assert code in failed[pair], (pair, failed[pair])


def _repaired(mesh: Mesh, *apply_args: str) -> None:
    mesh.apply(*apply_args)
    code, doc = mesh.verify()
    assert code == 0 and doc["ok"], [p for p in doc["pairs"] if not p["reached"]]


def test_healthy_mesh_gives_a_full_matrix_and_leaves_nothing(mesh):
    code, doc = mesh.verify()
    assert code == 0 and doc["ok"] is True
    assert set(doc) == {"mesh_id", "namespace", "ok", "clusters", "pairs", "problems", "kept"}
    assert doc["clusters"] == list(NETS) and doc["namespace"] == NS and doc["problems"] == []
    assert [(p["from"], p["to"]) for p in doc["pairs"]] == [(a, b) for a in NETS for b in NETS]
    assert all(p["reached"] and p["answers"] > 0 and p["causes"] == [] for p in doc["pairs"])

    table = mesh.run("verify")
    assert table.returncode == 0, table.stderr
    assert "every cluster reaches every cluster (3x3)" in table.stdout
    matrix = table.stdout.split("answering cluster)")[1]
    assert matrix.count("✓") == 9 and "✗" not in matrix
    mesh.assert_nothing_left()


def test_dry_run_lists_what_it_would_do_and_touches_nothing(mesh):
    before = {ctx: len(mesh.sandbox.requests(ctx)) for ctx in NETS}
    result = mesh.run("verify", "--dry-run", "--registry", "mirror.example.com/istio")
    assert result.returncode == 0, result.stderr
    for ctx in NETS:
        assert f"== {ctx}" in result.stdout
        assert f"kubectl --context {ctx} exec -n {NS} deploy/curl -c curl -- curl -sS" in result.stdout
        assert f"kubectl --context {ctx} delete namespace {NS}" in result.stdout
        assert f"SERVICE_VERSION\n" in result.stdout and f"value: {ctx}" in result.stdout
        assert len(mesh.sandbox.requests(ctx)) == before[ctx], "a dry run reads nothing"
    assert "mirror.example.com/istio/examples-helloworld-v1:1.0" in result.stdout


def test_missing_remote_secret_breaks_one_direction(mesh):
    mesh.kubectl("cluster1", "delete", "secret", "istio-remote-secret-cluster3", "-n", "istio-system")
    code, doc = mesh.verify()
    assert code == 1
    _failed_only(doc, {("cluster1", "cluster3"): "remote_secret_missing"})
    cause = _pair(doc, "cluster1", "cluster3")["causes"][0]
    assert "cluster1 holds no remote secret of cluster3" in cause["message"]
    assert cause["hint"].startswith(f"{ROOT / 'setup_mesh.py'} apply --workdir {mesh.workdir}")
    # status names the same cause, on the cluster verify says it rests on, with the same hint
    assert cause["status_problems"] == [{"context": "cluster1", "code": "remote_secret_missing"}]
    status = json.loads(mesh.run("status", "-o", "json").stdout)
    (reported,) = [p for c in status["clusters"] if c["context"] == "cluster1" for p in c["problems"]
                   if p["code"] == "remote_secret_missing"]
    assert reported["hint"] == cause["hint"]
    table = mesh.run("verify")
    assert table.returncode == 1
    assert "cluster1 -> cluster3: cluster1 holds no remote secret of cluster3" in table.stdout
    assert "1 of 9 pair(s) not reached" in table.stdout
    assert "remote_secret_missing" not in table.stdout, "codes are for -o json"
    _repaired(mesh)


def test_outdated_remote_secret(mesh):
    # cluster2's reader token changes (as after a reinstall): the copies its peers hold are refused
    token_secret = "istio-reader-service-account-istio-remote-secret-token"
    mesh.kubectl("cluster2", "delete", "secret", "-n", "istio-system", token_secret)
    mesh.kubectl("cluster2", "apply", "-f", "-", stdin=(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: " + token_secret + "\n  namespace: istio-system\n"
        "  annotations:\n    kubernetes.io/service-account.name: istio-reader-service-account\n"
        "type: kubernetes.io/service-account-token\n"))
    code, doc = mesh.verify()
    _failed_only(doc, {("cluster1", "cluster2"): "remote_secret_outdated",
                       ("cluster3", "cluster2"): "remote_secret_outdated"})
    _repaired(mesh)


def test_control_plane_that_does_not_sync_the_peer(mesh):
    # cluster3's secrets name an address its peers cannot reach: istiod reports it as timeout
    mesh.write_topology({ctx: "https://cluster3.unreachable.test:6443" if ctx == "cluster3"
                         else mesh.sandbox.api_server(ctx) for ctx in NETS})
    try:
        mesh.apply()
        code, doc = mesh.verify()
        _failed_only(doc, {("cluster1", "cluster3"): "peer_not_synced", ("cluster2", "cluster3"): "peer_not_synced"})
        cause = next(c for c in _pair(doc, "cluster1", "cluster3")["causes"] if c["code"] == "peer_not_synced")
        assert "cluster1's istiod reports cluster3 as timeout" in cause["message"]
        assert "https://cluster3.unreachable.test:6443" in cause["hint"]
    finally:
        mesh.write_topology({ctx: mesh.sandbox.api_server(ctx) for ctx in NETS})
    _repaired(mesh)


def test_east_west_gateway_without_address(mesh):
    patch = lambda kind: mesh.kubectl("cluster3", "patch", "service", "istio-eastwestgateway", "-n", "istio-system",
                                      "-p", json.dumps({"spec": {"type": kind}}))
    patch("NodePort")
    try:
        code, doc = mesh.verify()
        _failed_only(doc, {("cluster1", "cluster3"): "gateway_no_address",
                           ("cluster2", "cluster3"): "gateway_no_address"})
        hint = _pair(doc, "cluster2", "cluster3")["causes"][0]["hint"]
        assert "kubectl --context cluster3 get service istio-eastwestgateway -n istio-system" in hint
    finally:
        patch("LoadBalancer")
    code, doc = mesh.verify()
    assert code == 0


def test_cross_network_gateway_missing(mesh):
    gateway = mesh.kubectl("cluster3", "get", "gateway", "cross-network-gateway", "-n", "istio-system", "-o", "json")
    mesh.kubectl("cluster3", "delete", "gateway", "cross-network-gateway", "-n", "istio-system")
    try:
        code, doc = mesh.verify()
        _failed_only(doc, {("cluster1", "cluster3"): "cross_network_gateway_missing",
                           ("cluster2", "cluster3"): "cross_network_gateway_missing"})
    finally:
        restored = json.loads(gateway)
        restored["metadata"] = {k: v for k, v in restored["metadata"].items()
                                if k in ("name", "namespace", "labels", "annotations")}
        mesh.kubectl("cluster3", "apply", "-f", "-", stdin=json.dumps(restored))
    code, doc = mesh.verify()
    assert code == 0


def test_cacerts_on_another_root(mesh, tmp_path):
    where = make_other_ca(mesh.sandbox.istio_dir / "tools" / "certs" / "Makefile.selfsigned.mk", tmp_path / "other-root",
                          "cluster2")
    files = [f"--from-file={n}={where / n}" for n in ("ca-cert.pem", "ca-key.pem", "root-cert.pem", "cert-chain.pem")]
    manifest = mesh.kubectl("cluster2", "create", "secret", "generic", "cacerts", "-n", "istio-system", *files,
                            "--dry-run=client", "-o", "json")
    mesh.kubectl("cluster2", "replace", "-f", "-", stdin=manifest)
    code, doc = mesh.verify()
    broken = {(a, b): "cacerts_other_root" for a in NETS for b in NETS if a != b and "cluster2" in (a, b)}
    _failed_only(doc, broken)
    assert "cluster2" in _pair(doc, "cluster1", "cluster2")["causes"][0]["message"]
    _repaired(mesh, "--replace-foreign-ca")  # a CA setup-mesh did not make is replaced only when asked to


def test_pods_that_never_become_ready_are_reported_with_their_reason(mesh):
    started = time.monotonic()
    code, doc = mesh.verify("--registry", "mirror.registry.invalid/istio", "--ready-timeout", "3")
    assert code == 1 and time.monotonic() - started < 120
    problems = [p for p in doc["problems"] if p["code"] == "pod_not_ready"]
    assert len(problems) == 6  # a client and a helloworld per cluster
    assert all("ImagePullBackOff" in p["message"] and "mirror.registry.invalid" in p["message"] for p in problems)
    assert {c["code"] for p in doc["pairs"] for c in p["causes"]} == {"client_not_ready"}


def test_keep_leaves_the_namespace_and_a_later_run_reuses_and_removes_it(mesh):
    result = mesh.run("verify", "--keep")
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"kept namespace {NS}" in result.stdout
    for ctx in NETS:
        assert mesh.sandbox.get_json(ctx, "namespace", NS)["metadata"]["labels"]["app.kubernetes.io/created-by"] \
            == "setup-mesh-verify"
    code, doc = mesh.verify()  # asserts that nothing is left
    assert code == 0


def test_a_namespace_verify_did_not_create_is_never_used(mesh):
    mesh.kubectl("cluster2", "create", "namespace", "team-app")
    mesh.kubectl("cluster2", "create", "configmap", "keep-me", "-n", "team-app")
    try:
        result = mesh.run("verify", "--namespace", "team-app")
        assert result.returncode == 2
        assert "namespace team-app already exists in cluster2 and was not created by verify" in result.stderr
        assert "Traceback" not in result.stderr
        assert mesh.sandbox.get_json("cluster2", "configmap", "keep-me", "-n", "team-app")
        for ctx in ("cluster1", "cluster3"):
            assert mesh.sandbox.kubectl(ctx, "get", "namespace", "team-app", check=False).returncode != 0
    finally:
        mesh.kubectl("cluster2", "delete", "namespace", "team-app")


def test_ctrl_c_cleans_up(mesh):
    # The pods never get ready, so verify sits in its wait when the terminal sends Ctrl-C to the whole group.
    proc = subprocess.Popen([sys.executable, str(ROOT / "setup_mesh.py"), "verify", "--workdir", str(mesh.workdir),
                             "--registry", "mirror.registry.invalid/istio", "--ready-timeout", "120"],
                            env={**mesh.sandbox.env, **FAST_KEYS}, cwd=ROOT, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            pods = [mesh.sandbox.get_json(ctx, "pods", "-n", NS)["items"] for ctx in NETS]
            if all(pods):
                break
            time.sleep(0.3)
        else:
            pytest.fail("verify did not deploy in time")
        os.killpg(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 130, out + err
    assert "interrupted" in err
    mesh.assert_nothing_left()
