"""The sandbox's pods, ``kubectl exec`` and its model of Istio's multicluster discovery (tests/sandbox/meshmodel.py)."""
from __future__ import annotations

import base64
import json
import subprocess

import pytest

from tests.sandbox import meshmodel

HELLO = """apiVersion: v1
kind: Service
metadata: {{name: helloworld, labels: {{app: helloworld, service: helloworld}}}}
spec: {{ports: [{{port: 5000, name: http}}], selector: {{app: helloworld}}}}
---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: helloworld}}
spec:
  replicas: {replicas}
  selector: {{matchLabels: {{app: helloworld}}}}
  template:
    metadata: {{labels: {{app: helloworld}}}}
    spec: {{containers: [{{name: helloworld, image: {image}, env: [{{name: SERVICE_VERSION, value: one}}]}}]}}
---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: curl}}
spec:
  selector: {{matchLabels: {{app: curl}}}}
  template:
    metadata: {{labels: {{app: curl}}}}
    spec: {{containers: [{{name: curl, image: curlimages/curl:8.16.0, command: [/bin/sleep, infinity]}}]}}
"""


def _pods(sb, ns: str, selector: str) -> list[dict]:
    return sb.get_json("c1", "pods", "-n", ns, "-l", selector)["items"]


@pytest.fixture
def sb(sandbox_factory):
    sandbox = sandbox_factory(["c1"])
    sandbox.kubectl("c1", "create", "namespace", "demo")
    return sandbox


def test_deployments_get_ready_pods_that_follow_them(sb):
    sb.kubectl("c1", "apply", "-n", "demo", "-f", "-",
               stdin=HELLO.format(replicas=2, image="registry.istio.io/release/examples-helloworld-v1:1.0"))
    pods = _pods(sb, "demo", "app=helloworld")
    assert len(pods) == 2
    for pod in pods:
        assert pod["metadata"]["name"].startswith("helloworld-")
        assert pod["status"]["phase"] == "Running" and meshmodel.pod_ready(pod)
        assert [c["name"] for c in pod["spec"]["containers"]] == ["helloworld"]  # no injector installed
        assert pod["metadata"]["ownerReferences"][0]["name"] == "helloworld"
    table = sb.kubectl("c1", "get", "pods", "-n", "demo", "-l", "app=helloworld").stdout
    assert table.count("1/1") == 2 and table.count("Running") == 2

    sb.kubectl("c1", "scale", "deployment", "helloworld", "-n", "demo", "--replicas=1")
    assert len(_pods(sb, "demo", "app=helloworld")) == 1
    # a new template replaces the pods
    sb.kubectl("c1", "set", "env", "deployment/helloworld", "-n", "demo", "SERVICE_VERSION=two")
    (pod,) = _pods(sb, "demo", "app=helloworld")
    assert pod["spec"]["containers"][0]["env"] == [{"name": "SERVICE_VERSION", "value": "two"}]
    sb.kubectl("c1", "delete", "deployment", "helloworld", "-n", "demo")
    assert _pods(sb, "demo", "app=helloworld") == []


def test_an_image_that_cannot_be_pulled_keeps_the_pod_unready_with_the_reason(sb):
    sb.kubectl("c1", "apply", "-n", "demo", "-f", "-",
               stdin=HELLO.format(replicas=1, image="mirror.registry.invalid/helloworld:1.0"))
    (pod,) = _pods(sb, "demo", "app=helloworld")
    assert pod["status"]["phase"] == "Pending" and not meshmodel.pod_ready(pod)
    waiting = pod["status"]["containerStatuses"][0]["state"]["waiting"]
    assert waiting["reason"] == "ImagePullBackOff" and "mirror.registry.invalid" in waiting["message"]
    assert "ImagePullBackOff" in sb.kubectl("c1", "get", "pods", "-n", "demo", "-l", "app=helloworld").stdout


def test_kubectl_exec_over_websocket(sb):
    sb.kubectl("c1", "apply", "-n", "demo", "-f", "-",
               stdin=HELLO.format(replicas=1, image="registry.istio.io/release/examples-helloworld-v1:1.0"))
    (curl,) = _pods(sb, "demo", "app=curl")
    (hello,) = _pods(sb, "demo", "app=helloworld")
    name = curl["metadata"]["name"]
    before = len(sb.requests("c1"))
    got = sb.kubectl("c1", "exec", "-n", "demo", "-c", "curl", name, "--",
                     "curl", "-sS", "helloworld.demo:5000/hello", "http://helloworld:5000/hello")
    assert got.stdout == f"Hello version: one, instance: {hello['metadata']['name']}\n" * 2
    # what kubectl 1.37 sends: a WebSocket upgrade (GET), answered 101; no SPDY fallback (POST)
    execs = [r for r in sb.requests("c1")[before:] if r["path"].endswith("/exec")]
    assert [(r["method"], r["status"]) for r in execs] == [("GET", 101)]

    missing = sb.kubectl("c1", "exec", "-n", "demo", "-c", "curl", name, "--", "curl", "-sS", "nope.demo:5000/",
                         check=False)
    assert missing.returncode == 6 and "Could not resolve host: nope.demo" in missing.stderr
    no_port = sb.kubectl("c1", "exec", "-n", "demo", "-c", "curl", name, "--", "curl", "-sS",
                         "helloworld.demo:8080/hello", check=False)
    assert no_port.returncode == 7 and "Failed to connect to helloworld.demo port 8080" in no_port.stderr
    absent = sb.kubectl("c1", "exec", "-n", "demo", "-c", "curl", name, "--", "ls", check=False)
    assert absent.returncode == 1 and 'exec: "ls": executable file not found in $PATH' in absent.stderr
    wrong = sb.kubectl("c1", "exec", "-n", "demo", "-c", "nosuch", name, "--", "true", check=False)
    assert wrong.returncode == 1 and "container nosuch is not valid for pod" in wrong.stderr


# --- the model, on objects built here -------------------------------------------------------------

ROOT_A, ROOT_B = base64.b64encode(b"root A").decode(), base64.b64encode(b"root B").decode()


def _cluster(name: str, network: str, root: str | None = ROOT_A, gateway: bool = True, exposes: bool = True,
             injected: bool = True) -> meshmodel.View:
    objs = {}

    def put(group, resource, ns, obj_name, obj):
        obj.setdefault("metadata", {}).update({"name": obj_name, **({"namespace": ns} if ns else {})})
        objs[(group, resource, ns, obj_name)] = obj

    put("", "namespaces", "", "istio-system", {"metadata": {"labels": {"topology.istio.io/network": network}}})
    put("", "namespaces", "", "demo", {"metadata": {"labels": {"istio-injection": "enabled"} if injected else {}}})
    put("admissionregistration.k8s.io", "mutatingwebhookconfigurations", "", "istio-sidecar-injector", {})
    if root:
        put("", "secrets", "istio-system", "cacerts", {"data": {"root-cert.pem": root}})
    if gateway:
        put("", "services", "istio-system", "istio-eastwestgateway",
            {"status": {"loadBalancer": {"ingress": [{"ip": "198.51.100.9"}]}}})
    if exposes:
        put("networking.istio.io", "gateways", "istio-system", "cross-network-gateway",
            {"spec": {"servers": [{"port": {"number": 15443}, "hosts": ["*.local"]}]}})
    put("", "services", "demo", "helloworld", {"spec": {"selector": {"app": "helloworld"}, "ports": [{"port": 5000}]}})
    put("", "pods", "demo", f"helloworld-{name}", {
        "metadata": {"labels": {"app": "helloworld"}},
        "spec": {"containers": [{"name": "helloworld", "env": [{"name": "SERVICE_VERSION", "value": name}]}]},
        "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}})
    return meshmodel.View(name, objs)


def _answers(local: meshmodel.View, *peers: meshmodel.View) -> set[str]:
    mesh = meshmodel.Mesh.__new__(meshmodel.Mesh)
    mesh.local = local
    mesh.peers = [meshmodel.Peer("s", p.name, "synced", "", p) for p in peers]
    return {meshmodel.service_version(pod) for _, pod in mesh.endpoints("demo", "demo", "helloworld")}


def test_model_same_network_needs_a_synced_peer_and_one_root():
    x = _cluster("x", "n1")
    assert _answers(x, _cluster("y", "n1", gateway=False, exposes=False)) == {"x", "y"}
    assert _answers(x) == {"x"}  # no remote secret synced: only itself
    assert _answers(x, _cluster("y", "n1", root=ROOT_B)) == {"x"}
    assert _answers(x, _cluster("y", "n1", root=None)) == {"x"}
    assert _answers(x, _cluster("y", "n1", injected=False)) == {"x"}  # no sidecar to terminate mTLS
    assert _answers(_cluster("x", "n1", injected=False), _cluster("y", "n1")) == {"x"}  # caller outside the mesh


def test_model_across_networks_needs_the_peer_gateway_address_and_its_local_exposure():
    x = _cluster("x", "n1")
    assert _answers(x, _cluster("y", "n2")) == {"x", "y"}
    assert _answers(x, _cluster("y", "n2", gateway=False)) == {"x"}
    assert _answers(x, _cluster("y", "n2", exposes=False)) == {"x"}
    # the caller's own gateway does not matter for calls out of its cluster
    assert _answers(_cluster("x", "n1", gateway=False, exposes=False), _cluster("y", "n2")) == {"x", "y"}


def test_model_never_contacts_an_unknown_address():
    config = {"current-context": "y", "contexts": [{"name": "y", "context": {"cluster": "y", "user": "y"}}],
              "clusters": [{"name": "y", "cluster": {"server": "https://203.0.113.7:6443"}}],
              "users": [{"name": "y", "user": {"token": "t"}}]}
    peer = meshmodel.connect("istio-remote-secret-y", "y", config, {"y.sandbox.test": 1})
    assert (peer.status, peer.view) == ("timeout", None)
    assert "203.0.113.7" in peer.reason
    loopback = json.loads(json.dumps(config))
    loopback["clusters"][0]["cluster"]["server"] = "https://127.0.0.1:1"
    assert meshmodel.connect("s", "y", loopback, {"y.sandbox.test": 1}).status == "timeout"
