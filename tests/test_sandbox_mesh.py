"""The sandbox's pods, ``kubectl exec`` and its model of Istio's multicluster discovery (tests/sandbox/meshmodel.py)."""
from __future__ import annotations

import base64
import json
import subprocess
import time

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


ISTIOD_INSTALL = """apiVersion: v1
kind: Namespace
metadata: {{name: istio-system}}
---
apiVersion: v1
kind: Service
metadata: {{name: istiod, namespace: istio-system}}
spec: {{selector: {{app: istiod}}, ports: [{{port: 443, targetPort: 15017, name: https-webhook}}]}}
---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: istiod, namespace: istio-system}}
spec:
  replicas: {replicas}
  selector: {{matchLabels: {{app: istiod}}}}
  template:
    metadata: {{labels: {{app: istiod}}}}
    spec: {{containers: [{{name: discovery, image: docker.io/istio/pilot:1.29.0}}]}}
---
apiVersion: admissionregistration.k8s.io/v1
kind: MutatingWebhookConfiguration
metadata: {{name: istio-sidecar-injector, labels: {{app: sidecar-injector, istio.io/rev: default}}}}
webhooks:
- name: namespace.sidecar-injector.istio.io
  clientConfig: {{service: {{name: istiod, namespace: istio-system, path: /inject, port: 443}}}}
  namespaceSelector: {{matchLabels: {{istio-injection: enabled}}}}
  rules: [{{operations: [CREATE], apiGroups: [""], apiVersions: [v1], resources: [pods]}}]
  failurePolicy: Fail
  sideEffects: None
  admissionReviewVersions: [v1]
"""


def test_the_injector_refuses_pods_while_its_istiod_is_down_and_they_come_with_it(sb):
    sb.kubectl("c1", "apply", "-f", "-", stdin=ISTIOD_INSTALL.format(replicas=0))
    sb.kubectl("c1", "label", "namespace", "demo", "istio-injection=enabled")
    sb.kubectl("c1", "apply", "-n", "demo", "-f", "-",
               stdin=HELLO.format(replicas=1, image="registry.istio.io/release/examples-helloworld-v1:1.0"))
    assert _pods(sb, "demo", "app=helloworld") == []
    deployment = sb.get_json("c1", "deployment", "helloworld", "-n", "demo")
    failure = next(c for c in deployment["status"]["conditions"] if c["type"] == "ReplicaFailure")
    assert failure["reason"] == "FailedCreate" and failure["message"] == (
        'Internal error occurred: failed calling webhook "namespace.sidecar-injector.istio.io": failed to call '
        'webhook: Post "https://istiod.istio-system.svc:443/inject?timeout=10s": no endpoints available for '
        'service "istiod"')
    assert "readyReplicas" not in deployment["status"]
    direct = sb.kubectl("c1", "run", "lone", "-n", "demo", "--image=curlimages/curl:8.16.0", check=False)
    assert direct.returncode != 0 and 'failed calling webhook "namespace.sidecar-injector.istio.io"' in direct.stderr

    sb.kubectl("c1", "scale", "deployment", "istiod", "-n", "istio-system", "--replicas=1")
    deadline = time.monotonic() + 60  # the ReplicaSet controller tries again every second
    while not _pods(sb, "demo", "app=helloworld") and time.monotonic() < deadline:
        time.sleep(0.2)
    (pod,) = _pods(sb, "demo", "app=helloworld")
    assert [c["name"] for c in pod["spec"]["containers"]] == ["helloworld", "istio-proxy"]
    assert meshmodel.pod_ready(pod), "istiod in the cluster configures its sidecar at once"
    # The Deployment's status follows its pods a moment later (its controller's next pass), as in Kubernetes.
    deployment = sb.get_json("c1", "deployment", "helloworld", "-n", "demo")
    while deployment["status"].get("readyReplicas") != 1 and time.monotonic() < deadline + 60:
        time.sleep(0.2)
        deployment = sb.get_json("c1", "deployment", "helloworld", "-n", "demo")
    assert deployment["status"].get("readyReplicas") == 1
    assert "ReplicaFailure" not in {c["type"] for c in deployment["status"]["conditions"]}


# --- the model, on objects built here -------------------------------------------------------------

ROOT_A, ROOT_B = base64.b64encode(b"root A").decode(), base64.b64encode(b"root B").decode()
ISTIOD = {"namespace": "istio-system", "name": "istiod"}


def _address(name: str) -> str:
    """Each cluster's east-west gateway address (distinct for the names used here)."""
    return f"198.51.100.{sum(map(ord, name)) % 250}"


def _cluster(name: str, network: str, root: str | None = ROOT_A, gateway: bool = True, exposes: bool = True,
             injected: bool = True, primary: meshmodel.View | None = None, istiod: bool = True,
             patched: bool = True, names: str | None = None) -> meshmodel.View:
    """A cluster as apply leaves it: a primary runs istiod and exposes it through its east-west gateway; a
    remote (``primary``) has only an istiod Service whose EndpointSlice leads to that gateway."""
    objs = {}

    def put(group, resource, ns, obj_name, obj):
        obj.setdefault("metadata", {}).update({"name": obj_name, **({"namespace": ns} if ns else {})})
        objs[(group, resource, ns, obj_name)] = obj

    def pod(ns, pod_name, labels, ready=True, env=()):
        put("", "pods", ns, pod_name, {
            "metadata": {"labels": labels}, "spec": {"containers": [{"name": "c", "env": list(env)}]},
            "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}})

    put("", "namespaces", "", "istio-system", {"metadata": {
        "labels": {"topology.istio.io/network": network},
        "annotations": {"topology.istio.io/controlPlaneClusters": names or primary.name} if primary else {}}})
    put("", "namespaces", "", "demo", {"metadata": {"labels": {"istio-injection": "enabled"} if injected else {}}})
    put("admissionregistration.k8s.io", "mutatingwebhookconfigurations", "", "istio-sidecar-injector", {
        "metadata": {"labels": {"app": "sidecar-injector", "istio.io/rev": "default"}}, "webhooks": [
            {"name": "rev.namespace.sidecar-injector.istio.io",
             "namespaceSelector": {"matchLabels": {"istio-injection": "enabled"}},
             "rules": [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"]}],
             "clientConfig": {"service": {**ISTIOD, "path": f"/inject/cluster/{name}/net/{network}", "port": 443},
                              **({"caBundle": root or ROOT_A} if patched else {})}}]})
    if primary is None:
        put("", "services", "istio-system", "istiod", {"spec": {"selector": {"app": "istiod"}}})
        if istiod:
            pod("istio-system", "istiod-1", {"app": "istiod"})
        put("apps", "deployments", "istio-system", "istiod", {
            "metadata": {"labels": {"app": "istiod", "istio.io/rev": "default"}},
            "spec": {"template": {"spec": {"containers": [{"name": "discovery", "env": [
                {"name": "CLUSTER_ID", "value": name}, {"name": "EXTERNAL_ISTIOD", "value": "true"}]}]}}}})
        put("networking.istio.io", "gateways", "istio-system", "istiod-gateway", {"spec": {
            "selector": {"istio": "eastwestgateway"},
            "servers": [{"port": {"number": n}, "hosts": ["*"]} for n in (15012, 15017)]}})
        put("networking.istio.io", "virtualservices", "istio-system", "istiod-vs", {"spec": {
            "gateways": ["istiod-gateway"],
            "tls": [{"match": [{"port": n, "sniHosts": ["*"]}],
                     "route": [{"destination": {"host": "istiod.istio-system.svc.cluster.local"}}]}
                    for n in (15012, 15017)]}})
    else:
        put("", "services", "istio-system", "istiod", {"spec": {"ports": [{"port": 15012}, {"port": 443}]}})
        put("discovery.k8s.io", "endpointslices", "istio-system", "istiod", {
            "metadata": {"labels": {"kubernetes.io/service-name": "istiod"}},
            "endpoints": [{"addresses": [_address(primary.name)]}]})
    if root:
        put("", "secrets", "istio-system", "cacerts", {"data": {"root-cert.pem": root}})
    if gateway:
        put("", "services", "istio-system", "istio-eastwestgateway", {
            "spec": {"type": "LoadBalancer", "selector": {"istio": "eastwestgateway"},
                     "ports": [{"port": n} for n in (15021, 15443, 15012, 15017)]},
            "status": {"loadBalancer": {"ingress": [{"ip": _address(name)}]}}})
        pod("istio-system", "istio-eastwestgateway-1", {"istio": "eastwestgateway", "istio.io/rev": "default"})
    if exposes:
        put("networking.istio.io", "gateways", "istio-system", "cross-network-gateway",
            {"spec": {"servers": [{"port": {"number": 15443}, "hosts": ["*.local"]}]}})
    put("", "services", "demo", "helloworld", {"spec": {"selector": {"app": "helloworld"}, "ports": [{"port": 5000}]}})
    pod("demo", f"helloworld-{name}", {"app": "helloworld"}, env=[{"name": "SERVICE_VERSION", "value": name}])
    return meshmodel.View(name, objs)


class FakeNetwork(meshmodel.Network):
    """The network over views built here; ``synced``: the peers each control plane has synced, by name."""

    def __init__(self, views: list[meshmodel.View], synced: dict[str, list[str]]):
        super().__init__({}, list(views))
        self.by_name = {v.name: v for v in views}
        self.synced_names = synced

    def synced(self, view: meshmodel.View) -> list[meshmodel.View]:
        return [self.by_name[n] for n in self.synced_names.get(view.name, [])]


def _answers(local: meshmodel.View, *views: meshmodel.View, synced: dict | None = None) -> set[str] | None:
    """Who answers a call from ``local``; None when its sidecar has no configuration. By default
    ``local`` has synced every other view."""
    network = FakeNetwork([local, *views], synced if synced is not None else {local.name: [v.name for v in views]})
    found = meshmodel.Mesh(local, {}, network).endpoints("demo", "demo", "helloworld")
    return None if found is None else {meshmodel.service_version(pod) for _, pod in found}


def test_model_same_network_needs_a_synced_peer_and_one_root():
    x = _cluster("x", "n1")
    assert _answers(x, _cluster("y", "n1", gateway=False, exposes=False)) == {"x", "y"}
    assert _answers(x, synced={}) == {"x"}  # no remote secret synced: only itself
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


# p1 (n1) with its remote r1 on n2, and p2 (n2): every primary holds every other cluster's secret.
ALL_SYNCED = {"p1": ["r1", "p2"], "p2": ["p1", "r1"]}


def _remote_mesh(**primary) -> tuple[meshmodel.View, meshmodel.View, meshmodel.View]:
    p1 = _cluster("p1", "n1", **primary)
    return p1, _cluster("r1", "n2", primary=p1, exposes=False), _cluster("p2", "n2")


def test_model_a_remote_gets_what_its_primary_knows():
    p1, r1, p2 = _remote_mesh()
    assert _answers(r1, p1, p2, synced=ALL_SYNCED) == {"p1", "r1", "p2"}
    assert _answers(p2, p1, r1, synced=ALL_SYNCED) == {"p1", "r1", "p2"}
    # The remote holds no secret: what its primary has synced is what its sidecars get.
    assert _answers(r1, p1, p2, synced={"p1": ["r1"], "p2": ["p1", "r1"]}) == {"p1", "r1"}
    # A primary that has not synced the remote does not configure it: its sidecars have nothing at all.
    assert _answers(r1, p1, p2, synced={"p1": ["p2"], "p2": ["p1", "r1"]}) is None
    # Its workloads' certificates come from its primary's CA: the remote's own cacerts play no part ...
    p1, _, p2 = _remote_mesh()
    r1 = _cluster("r1", "n2", primary=p1, exposes=False, root=ROOT_B)
    assert _answers(p2, p1, r1, synced=ALL_SYNCED) == {"p1", "r1", "p2"}
    # ... and the primary's do.
    p1, r1, p2 = _remote_mesh(root=ROOT_B)
    assert _answers(p2, p1, r1, synced=ALL_SYNCED) == {"p2"}


def test_model_a_remote_on_its_primarys_network_is_reached_through_the_primarys_gateway():
    p1 = _cluster("p1", "n1")
    r1 = _cluster("r1", "n1", primary=p1, gateway=False, exposes=False)
    p2 = _cluster("p2", "n2")
    assert _answers(p2, p1, r1, synced=ALL_SYNCED) == {"p1", "r1", "p2"}
    closed = _cluster("p1", "n1", exposes=False)  # the primary's gateway takes no service traffic
    assert _answers(p2, closed, _cluster("r1", "n1", primary=closed, gateway=False, exposes=False),
                    synced=ALL_SYNCED) == {"p2"}
    # p2's own gateway serves a remote of p1 on n2 only when p2 knows that remote
    p1, r1, p2 = _remote_mesh()
    r1 = _cluster("r1", "n2", primary=p1, gateway=False, exposes=False)
    assert _answers(p1, r1, p2, synced=ALL_SYNCED) == {"p1", "r1", "p2"}
    assert _answers(p1, r1, p2, synced={"p1": ["r1", "p2"], "p2": ["p1"]}) == {"p1", "p2"}


def test_model_injection_follows_the_control_plane():
    p1, r1, p2 = _remote_mesh()
    verdict = lambda view, *others, synced=ALL_SYNCED: meshmodel.injection(  # noqa: E731
        view, "demo", FakeNetwork([view, *others], synced))
    assert vars(verdict(r1, p1, p2)) == {"admitted": True, "error": "", "configured": True}
    # the primary lacks the remote's secret: the injector answers, the sidecar never gets configuration
    assert vars(verdict(r1, p1, p2, synced={"p1": ["p2"]})) == {"admitted": True, "error": "", "configured": False}
    # the primary's istiod does not run: the API server refuses the pods, in the primary and in its remote
    p1, r1, p2 = _remote_mesh(istiod=False)
    down = verdict(r1, p1, p2)
    assert not down.admitted and down.error.startswith(
        'Internal error occurred: failed calling webhook "rev.namespace.sidecar-injector.istio.io": failed to call '
        'webhook: Post "https://istiod.istio-system.svc:443/inject/cluster/r1/net/n2?timeout=10s": ')
    assert down.error.endswith(": EOF")
    assert verdict(p1, r1, p2).error.endswith(': no endpoints available for service "istiod"')
    assert meshmodel.decided_locally(p1, "demo") and not meshmodel.decided_locally(r1, "demo")
    # nothing answers at the address the remote was given (the primary's gateway lost it)
    p1, r1, p2 = _remote_mesh(gateway=False)
    lost = verdict(r1, p1, p2)
    assert not lost.admitted and lost.error.endswith(f"dial tcp {_address('p1')}:15017: i/o timeout")
    assert verdict(p2, p1, r1).admitted and verdict(p2, p1, r1).configured
    assert meshmodel.injection(_cluster("x", "n1", injected=False), "demo", None) is None


def test_model_a_remote_injector_answers_once_its_primary_patched_its_ca_bundle():
    p1, _, p2 = _remote_mesh()
    r1 = _cluster("r1", "n2", primary=p1, gateway=False, exposes=False, patched=False)
    network = FakeNetwork([r1, p1, p2], ALL_SYNCED)
    refused = meshmodel.injection(r1, "demo", network)
    assert not refused.admitted and refused.error == (
        'Internal error occurred: failed calling webhook "rev.namespace.sidecar-injector.istio.io": failed to call '
        'webhook: Post "https://istiod.istio-system.svc:443/inject/cluster/r1/net/n2?timeout=10s": '
        'tls: failed to verify certificate: x509: certificate signed by unknown authority')
    (config,) = meshmodel.injector_configs(r1)
    # the primary holds the remote's secret and the remote names it: its istiod patches the webhook
    assert meshmodel.webhook_ca_bundle(r1, config, network) == p1.root_cert
    # not without the remote's secret, nor for a remote that names another control plane
    assert meshmodel.webhook_ca_bundle(r1, config, FakeNetwork([r1, p1, p2], {"p1": ["p2"]})) is None
    elsewhere = _cluster("r1", "n2", primary=p1, gateway=False, exposes=False, patched=False, names="p3")
    assert meshmodel.webhook_ca_bundle(elsewhere, meshmodel.injector_configs(elsewhere)[0], network) is None
    # a primary's own webhook is patched by its own istiod, with no network needed
    unpatched = _cluster("p1", "n1", patched=False)
    assert meshmodel.webhook_ca_bundle(unpatched, meshmodel.injector_configs(unpatched)[0], None) == ROOT_A


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


REV = "1-31-0"


def _with_revision(view: meshmodel.View, remote_of: meshmodel.View | None = None, exposed: bool = True) -> None:
    """Adds revision 1-31-0 as a canary upgrade leaves it: on a primary its istiod (and, ``exposed``, the
    VirtualService of expose-istiod-rev.yaml.tmpl); on a remote (``remote_of``) its Service istiod-1-31-0
    leading to the primary's gateway, and its injector; namespace ``canary`` selects that injector."""
    def put(group, resource, ns, name, obj):
        obj.setdefault("metadata", {}).update({"name": name, **({"namespace": ns} if ns else {})})
        view.objects[(group, resource, ns, name)] = obj

    service = f"istiod-{REV}"
    put("", "namespaces", "", "canary", {"metadata": {"labels": {"istio.io/rev": REV}}})
    if remote_of is None:
        labels = {"app": "istiod", "istio.io/rev": REV}
        put("", "services", "istio-system", service, {"spec": {"selector": dict(labels)}})
        put("", "pods", "istio-system", f"{service}-1", {
            "metadata": {"labels": dict(labels)}, "spec": {"containers": [{"name": "discovery"}]},
            "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}})
        put("apps", "deployments", "istio-system", service, {
            "metadata": {"labels": dict(labels)},
            "spec": {"template": {"spec": {"containers": [{"name": "discovery", "env": [
                {"name": "CLUSTER_ID", "value": view.name}, {"name": "EXTERNAL_ISTIOD", "value": "true"}]}]}}}})
        if exposed:
            sni = [f"{service}.istio-system.svc", f"{service}.istio-system.svc.cluster.local"]
            put("networking.istio.io", "virtualservices", "istio-system", f"istiod-vs-{REV}", {"spec": {
                "gateways": ["istiod-gateway"],
                "tls": [{"match": [{"port": n, "sniHosts": sni}],
                         "route": [{"destination": {"host": f"{service}.istio-system.svc.cluster.local"}}]}
                        for n in (15012, 15017)]}})
        return
    put("", "services", "istio-system", service, {"spec": {"ports": [{"port": 15012}, {"port": 443}]}})
    put("discovery.k8s.io", "endpointslices", "istio-system", service, {
        "metadata": {"labels": {"kubernetes.io/service-name": service}},
        "endpoints": [{"addresses": [_address(remote_of.name)]}]})
    put("admissionregistration.k8s.io", "mutatingwebhookconfigurations", "", f"istio-sidecar-injector-{REV}", {
        "metadata": {"labels": {"app": "sidecar-injector", "istio.io/rev": REV}}, "webhooks": [
            {"name": "rev.namespace.sidecar-injector.istio.io",
             "namespaceSelector": {"matchLabels": {"istio.io/rev": REV}},
             "rules": [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"]}],
             "clientConfig": {"service": {"namespace": "istio-system", "name": service, "port": 443,
                                          "path": f"/inject/cluster/{view.name}/net/{view.network}"},
                              "caBundle": ROOT_A}}]})


def test_model_a_remotes_revision_reaches_its_primary_only_through_that_revisions_exposed_istiod():
    p1, r1, p2 = _remote_mesh()
    _with_revision(p1, exposed=False)
    _with_revision(r1, remote_of=p1)
    network = lambda synced=ALL_SYNCED: FakeNetwork([r1, p1, p2], synced)  # noqa: E731
    # Only expose-istiod.yaml's catch-all: the call reaches the default revision's istiod, whose certificate
    # (pilot/pkg/bootstrap/server.go) does not name istiod-1-31-0: the API server refuses the pod.
    refused = meshmodel.injection(r1, "canary", network())
    assert not refused.admitted and refused.error.endswith(
        f'Post "https://istiod-{REV}.istio-system.svc:443/inject/cluster/r1/net/n2?timeout=10s": tls: failed to '
        f"verify certificate: x509: certificate is valid for istio-pilot.istio-system.svc, "
        f"istiod-remote.istio-system.svc, istiod.istio-system.svc, not istiod-{REV}.istio-system.svc")
    # The revision's VirtualService (its exact server name wins over the catch-all): injected and configured.
    _with_revision(p1)
    assert vars(meshmodel.injection(r1, "canary", network())) == {"admitted": True, "error": "", "configured": True}
    (config,) = [c for c in meshmodel.injector_configs(r1) if c["metadata"]["name"].endswith(REV)]
    config["webhooks"][0]["clientConfig"].pop("caBundle")
    assert meshmodel.webhook_ca_bundle(r1, config, network()) == p1.root_cert, "patched by p1's istiod-1-31-0"
    # Without the remote's secret the primary neither patches the webhook nor configures the sidecars.
    assert meshmodel.webhook_ca_bundle(r1, config, network({"p1": ["p2"]})) is None
    config["webhooks"][0]["clientConfig"]["caBundle"] = ROOT_A
    assert meshmodel.injection(r1, "canary", network({"p1": ["p2"]})).configured is False
    # The default revision's calls still take the catch-all to the default istiod.
    assert vars(meshmodel.injection(r1, "demo", network())) == {"admitted": True, "error": "", "configured": True}
