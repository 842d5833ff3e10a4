"""The real (pinned) kubectl against emulated clusters: the operations setup-mesh relies on behave as on a cluster."""
from __future__ import annotations

import base64
import json
import time

import pytest
import yaml

from tests.sandbox import KubectlFailed
from tests.sandbox.apiserver import (PatchError, json_patch, merge_patch, parse_label_selector, labels_match,
                                     strategic_merge)

GATEWAY = """\
apiVersion: networking.istio.io/v1
kind: Gateway
metadata:
  name: cross-network-gateway
  namespace: istio-system
spec:
  selector:
    istio: eastwestgateway
  servers:
  - port: {number: 15443, name: tls, protocol: TLS}
    tls: {mode: AUTO_PASSTHROUGH}
    hosts: ["*.local"]
"""

GATEWAY_CRD = """\
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: gateways.networking.istio.io
spec:
  group: networking.istio.io
  names: {kind: Gateway, listKind: GatewayList, plural: gateways, singular: gateway, shortNames: [gw]}
  scope: Namespaced
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec: {type: object, x-kubernetes-preserve-unknown-fields: true}
          status: {type: object, x-kubernetes-preserve-unknown-fields: true}
    subresources: {status: {}}
  - name: v1beta1
    served: true
    storage: false
    schema:
      openAPIV3Schema: {type: object, x-kubernetes-preserve-unknown-fields: true}
"""

EASTWEST_SERVICE = """\
apiVersion: v1
kind: Service
metadata:
  name: istio-eastwestgateway
  namespace: istio-system
  labels: {istio: eastwestgateway, app: istio-eastwestgateway}
spec:
  type: LoadBalancer
  selector: {istio: eastwestgateway}
  ports:
  - {name: status-port, port: 15021, targetPort: 15021}
  - {name: tls, port: 15443, targetPort: 15443}
"""


def apply(sb, ctx, manifest: str, *flags: str) -> str:
    return sb.kubectl(ctx, "apply", "-f", "-", *flags, stdin=manifest).stdout


def create_istio_system(sb, ctx) -> str:
    """What setup-mesh does: render the namespace client-side, then apply it (stdin, no shell)."""
    rendered = sb.kubectl(ctx, "create", "namespace", "istio-system", "--dry-run=client", "-o", "yaml").stdout
    return apply(sb, ctx, rendered)


def secret_manifest(sb, ctx, name: str, **literals: str) -> str:
    args = [f"--from-literal={k}={v}" for k, v in literals.items()]
    return sb.kubectl(ctx, "create", "secret", "generic", name, "-n", "istio-system", *args,
                      "--dry-run=client", "-o", "yaml").stdout


def raw_list_rv(sb, ctx, path: str) -> int:
    return int(json.loads(sb.kubectl(ctx, "get", "--raw", path).stdout)["metadata"]["resourceVersion"])


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def wait_for(predicate, timeout: float = 60.0, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)


# ------------------------------------------------------------------------------------------------ kubectl


def test_pinned_kubectl_is_used(two_clusters, kubectl_bin):
    assert kubectl_bin.name == "kubectl" and str(kubectl_bin) != "/usr/bin/kubectl"
    assert (two_clusters.dir / "bin" / "kubectl").resolve() == kubectl_bin
    version = json.loads(two_clusters.kubectl("cluster1", "version", "-o", "json").stdout)
    assert version["clientVersion"]["gitVersion"] == "v1.37.1"
    assert version["serverVersion"]["gitVersion"].startswith("v1.33.")


@pytest.mark.parametrize("ctx", ["cluster1", "cluster2"])
def test_namespace_apply_and_network_label(two_clusters, ctx):
    sb = two_clusters
    assert "namespace/istio-system created" in create_istio_system(sb, ctx)
    assert "namespace/istio-system unchanged" in create_istio_system(sb, ctx)
    sb.kubectl(ctx, "label", "--overwrite", "namespace", "istio-system", "topology.istio.io/network=net1")
    ns = sb.get_json(ctx, "namespace", "istio-system")
    assert ns["metadata"]["labels"]["topology.istio.io/network"] == "net1"
    assert ns["metadata"]["labels"]["kubernetes.io/metadata.name"] == "istio-system"
    assert ns["status"]["phase"] == "Active"
    sb.kubectl(ctx, "label", "--overwrite", "namespace", "istio-system", "topology.istio.io/network=net2")
    label = sb.kubectl(ctx, "get", "namespace", "istio-system", "-o",
                       r"jsonpath={.metadata.labels.topology\.istio\.io/network}").stdout
    assert label == "net2"
    without_overwrite = sb.kubectl(ctx, "label", "namespace", "istio-system", "topology.istio.io/network=net3",
                                   check=False)
    assert without_overwrite.returncode != 0 and "already has a value (net2)" in without_overwrite.stderr


def test_apply_new_namespace_sends_the_reference_sequence(two_clusters):
    sb = two_clusters
    before = len(sb.requests("cluster1"))
    create_istio_system(sb, "cluster1")
    sent = sb.requests("cluster1")[before:]
    paths = [r["path"] for r in sent]
    assert "/openapi/v3" in paths and "/api" in paths and "/apis" in paths and "/api/v1" in paths
    work = [(r["method"], r["path"], r["status"]) for r in sent if r["path"].startswith("/api/v1/namespaces")]
    assert work == [("GET", "/api/v1/namespaces/istio-system", 404), ("POST", "/api/v1/namespaces", 201)]
    post = next(r for r in sent if r["method"] == "POST")
    assert "fieldManager=kubectl-client-side-apply" in post["query"]
    assert "fieldValidation=Strict" in post["query"]
    assert post["content_type"] == "application/json"
    assert all(r["status"] in (200, 201, 404) for r in sent)


@pytest.mark.parametrize("ctx", ["cluster1", "cluster2"])
def test_secret_apply_creates_then_updates(two_clusters, ctx):
    sb = two_clusters
    create_istio_system(sb, ctx)
    assert "secret/cacerts created" in apply(sb, ctx, secret_manifest(sb, ctx, "cacerts", x="one"))
    get_x = ("get", "secret", "cacerts", "-n", "istio-system", "-o", "jsonpath={.data.x}")
    assert sb.kubectl(ctx, *get_x).stdout == b64("one")
    uid = sb.get_json(ctx, "secret", "cacerts", "-n", "istio-system")["metadata"]["uid"]

    before = len(sb.requests(ctx))
    assert "secret/cacerts configured" in apply(sb, ctx, secret_manifest(sb, ctx, "cacerts", x="two", y="3"))
    patch = [r for r in sb.requests(ctx)[before:] if r["method"] == "PATCH"]
    assert [p["content_type"] for p in patch] == ["application/strategic-merge-patch+json"]
    secret = sb.get_json(ctx, "secret", "cacerts", "-n", "istio-system")
    assert secret["data"] == {"x": b64("two"), "y": b64("3")}
    assert secret["metadata"]["uid"] == uid and secret["type"] == "Opaque"

    assert "secret/cacerts configured" in apply(sb, ctx, secret_manifest(sb, ctx, "cacerts", x="two"))
    assert sb.get_json(ctx, "secret", "cacerts", "-n", "istio-system")["data"] == {"x": b64("two")}


def test_delete_with_ignore_not_found_twice(two_clusters):
    sb = two_clusters
    create_istio_system(sb, "cluster1")
    apply(sb, "cluster1", secret_manifest(sb, "cluster1", "istio-remote-secret-cluster2", cluster2="kubeconfig"))
    first = sb.kubectl("cluster1", "delete", "secret", "istio-remote-secret-cluster2", "-n", "istio-system",
                       "--ignore-not-found")
    assert 'secret "istio-remote-secret-cluster2" deleted' in first.stdout
    second = sb.kubectl("cluster1", "delete", "secret", "istio-remote-secret-cluster2", "-n", "istio-system",
                        "--ignore-not-found")
    assert second.returncode == 0 and second.stdout == ""
    strict = sb.kubectl("cluster1", "delete", "secret", "istio-remote-secret-cluster2", "-n", "istio-system",
                        check=False)
    assert strict.returncode == 1
    assert 'secrets "istio-remote-secret-cluster2" not found' in strict.stderr
    missing = sb.kubectl("cluster1", "get", "secret", "cacerts", "-n", "istio-system", check=False)
    assert 'Error from server (NotFound): secrets "cacerts" not found' in missing.stderr


def test_gateway_needs_its_crd(two_clusters):
    sb = two_clusters
    create_istio_system(sb, "cluster1")
    early = sb.kubectl("cluster1", "apply", "-f", "-", stdin=GATEWAY, check=False)
    assert early.returncode != 0
    assert 'no matches for kind "Gateway" in version "networking.istio.io/v1"' in early.stderr
    assert "resource mapping not found" in early.stderr and "ensure CRDs are installed first" in early.stderr

    assert "customresourcedefinition.apiextensions.k8s.io/gateways.networking.istio.io created" in \
        apply(sb, "cluster1", GATEWAY_CRD)
    assert "gateway.networking.istio.io/cross-network-gateway created" in apply(sb, "cluster1", GATEWAY)
    gw = sb.get_json("cluster1", "gateway", "cross-network-gateway", "-n", "istio-system")
    assert gw["apiVersion"] == "networking.istio.io/v1" and gw["spec"]["servers"][0]["port"]["number"] == 15443
    assert gw["metadata"]["generation"] == 1
    old = sb.get_json("cluster1", "gateways.v1beta1.networking.istio.io", "cross-network-gateway", "-n",
                      "istio-system")
    assert old["apiVersion"] == "networking.istio.io/v1beta1"
    resources = sb.kubectl("cluster1", "api-resources", "--api-group=networking.istio.io").stdout
    assert "gateways" in resources and "gw" in resources

    updated = GATEWAY.replace("15443", "15444")
    assert "configured" in apply(sb, "cluster1", updated)
    gw = sb.get_json("cluster1", "gw", "cross-network-gateway", "-n", "istio-system")
    assert gw["spec"]["servers"][0]["port"]["number"] == 15444 and gw["metadata"]["generation"] == 2
    assert "serverside-applied" in apply(sb, "cluster1", GATEWAY, "--server-side", "--force-conflicts")
    gw = sb.get_json("cluster1", "gw", "cross-network-gateway", "-n", "istio-system")
    assert gw["spec"]["servers"][0]["port"]["number"] == 15443

    # the other cluster knows nothing of it
    other = sb.kubectl("cluster2", "apply", "-f", "-", stdin=GATEWAY, check=False)
    assert "no matches for kind" in other.stderr

    sb.kubectl("cluster1", "delete", "crd", "gateways.networking.istio.io")
    assert "cross-network-gateway" not in sb.dump("cluster1")
    groups = json.loads(sb.kubectl("cluster1", "get", "--raw", "/apis").stdout)["groups"]
    assert "networking.istio.io" not in [g["name"] for g in groups]


def test_deleting_a_namespace_removes_its_objects(two_clusters):
    sb = two_clusters
    create_istio_system(sb, "cluster1")
    apply(sb, "cluster1", secret_manifest(sb, "cluster1", "cacerts", a="b"))
    apply(sb, "cluster1", EASTWEST_SERVICE)
    assert 'namespace "istio-system" deleted' in sb.kubectl("cluster1", "delete", "namespace", "istio-system").stdout
    assert sb.kubectl("cluster1", "get", "secrets", "-A", "-o", "name").stdout.count("istio-system") == 0
    dump = json.loads(sb.dump("cluster1"))
    assert not [o for o in dump["objects"] if o["namespace"] == "istio-system"]
    again = sb.kubectl("cluster1", "delete", "namespace", "istio-system", check=False)
    assert again.returncode == 1 and 'namespaces "istio-system" not found' in again.stderr
    missing_ns = sb.kubectl("cluster1", "apply", "-f", "-", stdin=secret_manifest(sb, "cluster1", "x", a="b"),
                            check=False)
    assert 'namespaces "istio-system" not found' in missing_ns.stderr
    forbidden = sb.kubectl("cluster1", "delete", "namespace", "kube-system", check=False)
    assert "this namespace may not be deleted" in forbidden.stderr


def test_label_selectors_and_field_selectors(two_clusters):
    sb = two_clusters
    create_istio_system(sb, "cluster1")
    docs = []
    for name, labels in [("a", {"istio/multiCluster": "true", "tier": "web"}), ("b", {"istio/multiCluster": "false"}),
                         ("c", {"tier": "db"})]:
        docs.append({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": "istio-system",
                                                                        "labels": labels}, "data": {"k": b64(name)}})
    apply(sb, "cluster1", yaml.safe_dump_all(docs))

    def names(*selector):
        out = sb.kubectl("cluster1", "get", "secrets", "-A", *selector, "-o", "name").stdout.split()
        return sorted(n.split("/")[1] for n in out)

    assert names("-l", "istio/multiCluster=true") == ["a"]
    assert names("-l", "istio/multiCluster==true") == ["a"]
    assert names("-l", "istio/multiCluster!=true") == ["b", "c"]
    assert names("-l", "istio/multiCluster in (true,false)") == ["a", "b"]
    assert names("-l", "istio/multiCluster notin (true)") == ["b", "c"]
    assert names("-l", "istio/multiCluster") == ["a", "b"]
    assert names("-l", "!istio/multiCluster") == ["c"]
    assert names("-l", "istio/multiCluster=true,tier=web") == ["a"]
    assert names("--field-selector", "metadata.name=b") == ["b"]
    assert names("--field-selector", "metadata.namespace=istio-system,metadata.name!=b") == ["a", "c"]
    bad = sb.kubectl("cluster1", "get", "secrets", "-A", "--field-selector", "spec.nope=1", check=False)
    assert bad.returncode != 0 and "field label not supported" in bad.stderr
    deleted = sb.kubectl("cluster1", "delete", "secrets", "-n", "istio-system", "-l", "tier").stdout
    assert 'secret "a" deleted' in deleted and 'secret "c" deleted' in deleted
    assert names() == ["b"]


def test_loadbalancer_address_and_status_patch(sandbox_factory):
    sb = sandbox_factory(["cluster1", "cluster2"], lb_delay={"cluster1": 0.5, "cluster2": None})
    ingress = ("get", "svc", "istio-eastwestgateway", "-n", "istio-system", "-o",
               "jsonpath={.status.loadBalancer.ingress[0].ip}")
    for ctx in sb.contexts:
        create_istio_system(sb, ctx)
    apply(sb, "cluster1", EASTWEST_SERVICE)
    stored = next(o["object"] for o in json.loads(sb.dump("cluster1"))["objects"]
                  if o["name"] == "istio-eastwestgateway")
    assert stored["status"] == {"loadBalancer": {}}, "the address must come after the delay"
    apply(sb, "cluster2", EASTWEST_SERVICE)
    ip = wait_for(lambda: sb.kubectl("cluster1", *ingress).stdout)
    assert ip.startswith("198.51.100."), ip
    svc = sb.get_json("cluster1", "svc", "istio-eastwestgateway", "-n", "istio-system")
    assert svc["spec"]["clusterIP"].startswith("10.96.") and all(p.get("nodePort") for p in svc["spec"]["ports"])
    assert "<pending>" in sb.kubectl("cluster2", "get", "svc", "-n", "istio-system").stdout
    assert sb.kubectl("cluster2", *ingress).stdout == ""

    patched = sb.kubectl("cluster2", "patch", "svc", "istio-eastwestgateway", "-n", "istio-system",
                         "--subresource=status", "--type=merge",
                         "-p", '{"status":{"loadBalancer":{"ingress":[{"ip":"198.51.100.250"}]}}}')
    assert "patched" in patched.stdout
    assert sb.kubectl("cluster2", *ingress).stdout == "198.51.100.250"
    # the main resource ignores status, as on a real cluster
    sb.kubectl("cluster2", "patch", "svc", "istio-eastwestgateway", "-n", "istio-system", "--type=merge",
               "-p", '{"status":{"loadBalancer":{"ingress":[{"ip":"198.51.100.251"}]}}}')
    assert sb.kubectl("cluster2", *ingress).stdout == "198.51.100.250"
    status_requests = [r for r in sb.requests("cluster2") if r["path"].endswith("/status")]
    assert [(r["method"], r["status"]) for r in status_requests] == [("GET", 200), ("PATCH", 200)]


def test_wrong_token_is_unauthorized(two_clusters):
    sb = two_clusters
    result = sb.kubectl("cluster1", "--token", "not-the-token", "get", "namespaces", check=False)
    assert result.returncode == 1
    # kubectl words it "(Unauthorized)" or "(the server has asked for the client to provide credentials)"
    # depending on whether discovery was cached; both come from the 401 Status.
    assert "error: You must be logged in to the server" in result.stderr
    assert sb.requests("cluster1")[-1]["status"] == 401
    sb.kubectl("cluster1", "get", "namespaces")  # warm the discovery cache
    cached = sb.kubectl("cluster1", "--token", "not-the-token", "get", "namespace", "default", check=False)
    assert "error: You must be logged in to the server (Unauthorized)" in cached.stderr
    assert sb.kubectl("cluster1", "get", "namespace", "default").returncode == 0


def test_writes_bump_list_resource_version_reads_do_not(two_clusters):
    sb = two_clusters
    create_istio_system(sb, "cluster1")
    path = "/api/v1/namespaces/istio-system/secrets"
    start = raw_list_rv(sb, "cluster1", path)
    sb.kubectl("cluster1", "get", "secrets", "-A")
    sb.kubectl("cluster1", "get", "namespace", "istio-system", "-o", "yaml")
    assert raw_list_rv(sb, "cluster1", path) == start
    manifest = secret_manifest(sb, "cluster1", "cacerts", x="1")
    apply(sb, "cluster1", manifest)
    created = raw_list_rv(sb, "cluster1", path)
    assert created > start
    assert "unchanged" in apply(sb, "cluster1", manifest)
    assert raw_list_rv(sb, "cluster1", path) == created
    dump = sb.dump("cluster1")
    sb.kubectl("cluster1", "get", "secret", "cacerts", "-n", "istio-system")
    assert sb.dump("cluster1") == dump
    sb.kubectl("cluster1", "annotate", "secret", "cacerts", "-n", "istio-system", "note=x")
    assert raw_list_rv(sb, "cluster1", path) > created and sb.dump("cluster1") != dump


def test_clusters_are_independent(two_clusters):
    sb = two_clusters
    uid1 = sb.kubectl("cluster1", "get", "ns", "kube-system", "-o", "jsonpath={.metadata.uid}").stdout
    uid2 = sb.kubectl("cluster2", "get", "ns", "kube-system", "-o", "jsonpath={.metadata.uid}").stdout
    assert uid1 and uid2 and uid1 != uid2
    assert sb.token("cluster1") != sb.token("cluster2")
    dump2, seen2 = sb.dump("cluster2"), len(sb.requests("cluster2"))
    create_istio_system(sb, "cluster1")
    apply(sb, "cluster1", secret_manifest(sb, "cluster1", "cacerts", x="1"))
    assert sb.dump("cluster2") == dump2
    assert len(sb.requests("cluster2")) == seen2, "no request may reach cluster2"
    assert sb.kubectl("cluster2", "get", "ns", "istio-system", check=False).returncode == 1
    # current context is the first one
    assert sb.kubectl(None, "config", "current-context").stdout.strip() == "cluster1"


def test_stopped_cluster_refuses_connections_and_restarts_with_stable_identity(two_clusters):
    sb = two_clusters
    uid = sb.kubectl("cluster2", "get", "ns", "kube-system", "-o", "jsonpath={.metadata.uid}").stdout
    port = sb.url("cluster2").rsplit(":", 1)[1]
    sb.stop_cluster("cluster2")
    down = sb.kubectl("cluster2", "get", "ns", check=False, timeout=30)
    assert down.returncode == 1
    assert f"The connection to the server 127.0.0.1:{port} was refused" in down.stderr
    assert sb.kubectl("cluster1", "get", "ns", "default").returncode == 0
    sb.start_cluster("cluster2")
    assert sb.kubectl("cluster2", "get", "ns", "kube-system", "-o", "jsonpath={.metadata.uid}").stdout == uid
    sb.start_cluster("cluster3", lb_delay=None)
    assert sb.contexts == ["cluster1", "cluster2", "cluster3"]
    assert sb.kubectl("cluster3", "get", "ns", "default", "-o", "name").stdout.strip() == "namespace/default"


def test_service_account_token_secret_is_filled_and_authenticates(two_clusters):
    sb = two_clusters
    create_istio_system(sb, "cluster1")
    apply(sb, "cluster1", """\
apiVersion: v1
kind: ServiceAccount
metadata: {name: istio-reader-service-account, namespace: istio-system}
---
apiVersion: v1
kind: Secret
type: kubernetes.io/service-account-token
metadata:
  name: istio-reader-service-account-token
  namespace: istio-system
  annotations: {kubernetes.io/service-account.name: istio-reader-service-account}
""")
    data = wait_for(lambda: sb.get_json("cluster1", "secret", "istio-reader-service-account-token", "-n",
                                        "istio-system").get("data", {}).get("token"))
    secret = sb.get_json("cluster1", "secret", "istio-reader-service-account-token", "-n", "istio-system")["data"]
    token = base64.b64decode(data).decode()
    assert token.count(".") == 2
    assert base64.b64decode(secret["namespace"]).decode() == "istio-system"
    assert "BEGIN CERTIFICATE" in base64.b64decode(secret["ca.crt"]).decode()
    assert base64.b64decode(secret["ca.crt"]).decode() == sb.ca_file("cluster1").read_text()
    # Authenticated (no RBAC grants this account anything here, so: forbidden, not unauthorized).
    known = sb.kubectl("cluster1", "--token", token, "get", "ns", "default", check=False)
    assert known.returncode == 1 and "Error from server (Forbidden)" in known.stderr
    assert "system:serviceaccount:istio-system:istio-reader-service-account" in known.stderr
    other = sb.kubectl("cluster2", "--token", token, "get", "ns", "default", check=False)
    assert other.returncode == 1 and "error: You must be logged in to the server" in other.stderr
    sb.kubectl("cluster1", "delete", "secret", "istio-reader-service-account-token", "-n", "istio-system")
    revoked = sb.kubectl("cluster1", "--token", token, "get", "ns", "default", check=False)
    assert revoked.returncode == 1 and "error: You must be logged in to the server" in revoked.stderr
    created = sb.kubectl("cluster1", "create", "token", "istio-reader-service-account", "-n", "istio-system")
    fresh = sb.kubectl("cluster1", "--token", created.stdout.strip(), "get", "ns", check=False)
    assert "Error from server (Forbidden)" in fresh.stderr


def test_deployment_strategic_merge_and_status(two_clusters):
    sb = two_clusters
    create_istio_system(sb, "cluster1")
    deployment = {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "helloworld", "namespace": "istio-system"},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "helloworld"}},
                 "template": {"metadata": {"labels": {"app": "helloworld"}}, "spec": {"containers": [{
                     "name": "hello", "image": "docker.io/istio/examples-helloworld-v1:1.0",
                     "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}],
                     "ports": [{"containerPort": 5000}]}]}}},
    }
    apply(sb, "cluster1", json.dumps(deployment))
    sb.kubectl("cluster1", "rollout", "status", "deployment/helloworld", "-n", "istio-system", "--timeout=60s")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    container["env"] = [{"name": "A", "value": "1"}, {"name": "C", "value": "3"}]
    container["image"] = "docker.io/istio/examples-helloworld-v2:1.0"
    apply(sb, "cluster1", json.dumps(deployment))
    live = sb.get_json("cluster1", "deployment", "helloworld", "-n", "istio-system")
    live_container = live["spec"]["template"]["spec"]["containers"][0]
    assert live_container["env"] == container["env"]
    assert live_container["image"].endswith("v2:1.0") and live_container["ports"][0]["containerPort"] == 5000
    assert live["metadata"]["generation"] == 2
    assert live["status"]["readyReplicas"] == 2 and live["status"]["observedGeneration"] == 2
    sb.kubectl("cluster1", "scale", "deployment/helloworld", "-n", "istio-system", "--replicas=3")
    sb.kubectl("cluster1", "wait", "--for=jsonpath={.status.readyReplicas}=3", "deployment/helloworld", "-n",
               "istio-system", "--timeout=60s")
    bad = json.loads(json.dumps(deployment))
    bad["spec"]["template"]["metadata"]["labels"] = {"app": "other"}
    invalid = sb.kubectl("cluster1", "apply", "-f", "-", stdin=json.dumps(bad), check=False)
    assert "`selector` does not match template `labels`" in invalid.stderr


def test_server_side_apply_creates_updates_and_prunes(two_clusters):
    sb = two_clusters
    create_istio_system(sb, "cluster1")
    cm = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "mesh", "namespace": "istio-system"},
          "data": {"a": "1", "b": "2"}}
    before = len(sb.requests("cluster1"))
    assert "serverside-applied" in apply(sb, "cluster1", json.dumps(cm), "--server-side")
    assert [(r["content_type"], r["status"]) for r in sb.requests("cluster1")[before:] if r["method"] == "PATCH"] \
        == [("application/apply-patch+yaml", 201)]
    cm["data"] = {"a": "10"}
    apply(sb, "cluster1", json.dumps(cm), "--server-side")
    assert sb.get_json("cluster1", "configmap", "mesh", "-n", "istio-system")["data"] == {"a": "10"}


def test_invalid_objects_are_rejected_like_a_real_server(two_clusters):
    sb = two_clusters
    bad_ns = sb.kubectl("cluster1", "create", "namespace", "Istio_System", check=False)
    assert 'The Namespace "Istio_System" is invalid: metadata.name: Invalid value: "Istio_System": a lowercase ' \
           'RFC 1123 label' in bad_ns.stderr
    create_istio_system(sb, "cluster1")
    bad_label = sb.kubectl("cluster1", "patch", "ns", "istio-system", "--type=merge",
                           "-p", '{"metadata":{"labels":{"topology.istio.io/network":"net 1"}}}', check=False)
    assert "is invalid" in bad_label.stderr and "a valid label must be an empty string" in bad_label.stderr
    bad_data = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "x", "namespace": "istio-system"},
                "data": {"k": "not base64!"}}
    rejected = sb.kubectl("cluster1", "apply", "-f", "-", stdin=json.dumps(bad_data), check=False)
    assert "illegal base64 data" in rejected.stderr
    dry = sb.kubectl("cluster1", "create", "configmap", "probe", "-n", "istio-system", "--from-literal=a=b",
                     "--dry-run=server", "-o", "name")
    assert dry.stdout.strip() == "configmap/probe"
    assert sb.kubectl("cluster1", "get", "cm", "probe", "-n", "istio-system", check=False).returncode == 1


def test_kubectl_failure_carries_stderr(two_clusters):
    with pytest.raises(KubectlFailed) as info:
        two_clusters.kubectl("cluster1", "get", "secret", "nope", "-n", "default")
    assert 'secrets "nope" not found' in str(info.value)


# ------------------------------------------------------------------------------------------------ internals


def test_strategic_merge_directives():
    original = {"metadata": {"labels": {"a": "1", "b": "2"}, "finalizers": ["x"]},
                "spec": {"containers": [{"name": "a", "image": "1", "env": [{"name": "E", "value": "1"}]},
                                        {"name": "b", "image": "1"}],
                         "volumes": [{"name": "v", "emptyDir": {}}],
                         "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1}},
                         "args": ["x", "y"]}}
    patch = {"metadata": {"labels": {"b": None, "c": "3"}, "finalizers": ["y"],
                          "$deleteFromPrimitiveList/finalizers": ["x"]},
             "spec": {"$setElementOrder/containers": [{"name": "b"}, {"name": "a"}],
                      "containers": [{"name": "a", "env": [{"name": "E", "$patch": "delete"}]},
                                     {"name": "b", "image": "2"}],
                      "volumes": [{"name": "v", "$patch": "delete"}],
                      "strategy": {"$retainKeys": ["type"], "type": "Recreate"},
                      "args": ["z"]}}
    merged = strategic_merge(original, patch, "Deployment")
    assert merged["metadata"]["labels"] == {"a": "1", "c": "3"}
    assert merged["metadata"]["finalizers"] == ["y"]
    assert [c["name"] for c in merged["spec"]["containers"]] == ["b", "a"]
    assert merged["spec"]["containers"][0]["image"] == "2" and merged["spec"]["containers"][1]["env"] == []
    assert merged["spec"]["volumes"] == [] and merged["spec"]["strategy"] == {"type": "Recreate"}
    assert merged["spec"]["args"] == ["z"]
    replaced = strategic_merge(original, {"spec": {"$patch": "replace", "args": ["only"]}}, "Deployment")
    assert replaced["spec"] == {"args": ["only"]}
    svc = strategic_merge({"spec": {"ports": [{"port": 80, "name": "http"}, {"port": 443, "name": "https"}]}},
                          {"spec": {"ports": [{"port": 443, "targetPort": 8443}]}}, "Service")
    assert svc["spec"]["ports"][1] == {"port": 443, "name": "https", "targetPort": 8443}
    with pytest.raises(PatchError):
        strategic_merge(original, {"spec": {"containers": [{"image": "no-name"}]}}, "Deployment")


def test_json_and_merge_patches():
    doc = {"a": {"b": [1, 2]}, "c": "d", "x/y": 1}
    out = json_patch(doc, [{"op": "add", "path": "/a/b/-", "value": 3}, {"op": "remove", "path": "/c"},
                           {"op": "replace", "path": "/x~1y", "value": 2}, {"op": "copy", "from": "/a", "path": "/e"},
                           {"op": "move", "from": "/e", "path": "/f"}, {"op": "test", "path": "/f/b/2", "value": 3}])
    assert out == {"a": {"b": [1, 2, 3]}, "x/y": 2, "f": {"b": [1, 2, 3]}}
    assert doc == {"a": {"b": [1, 2]}, "c": "d", "x/y": 1}
    with pytest.raises(PatchError):
        json_patch(doc, [{"op": "test", "path": "/c", "value": "nope"}])
    with pytest.raises(PatchError):
        json_patch(doc, [{"op": "remove", "path": "/missing"}])
    assert merge_patch({"a": {"b": 1, "c": 2}, "l": [1]}, {"a": {"b": None}, "l": [2]}) == {"a": {"c": 2}, "l": [2]}


def test_label_selector_parsing():
    reqs = parse_label_selector("app in (a, b),tier!=web,!legacy,env")
    assert labels_match(reqs, {"app": "a", "tier": "db", "env": ""})
    assert not labels_match(reqs, {"app": "a", "tier": "web", "env": ""})
    assert not labels_match(reqs, {"app": "a", "legacy": "1", "env": ""})
    assert not labels_match(reqs, {"app": "c", "env": ""})


# ------------------------------------------------------------------------------------------------ protocol


def http(sb, ctx, method, path, body=None, token: str | None = "default", headers=None):
    """One request over plain HTTP (the emulator serves TLS and plain HTTP on the same port)."""
    import urllib.error
    import urllib.request

    req = urllib.request.Request(sb.plain_url(ctx) + path, method=method,
                                 data=json.dumps(body).encode() if body is not None else None)
    if token:
        req.add_header("Authorization", f"Bearer {sb.token(ctx) if token == 'default' else token}")
    req.add_header("Content-Type", "application/json")
    for k, v in (headers or {}).items():
        req.add_header(k, v)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.headers.get("Content-Type"), json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as err:
        return err.code, err.headers.get("Content-Type"), json.loads(err.read() or b"null")


def test_rest_protocol_details(two_clusters):
    sb = two_clusters
    code, _, status = http(sb, "cluster1", "GET", "/api/v1/namespaces", token=None)
    assert code == 401 and status == {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                                      "message": "Unauthorized", "reason": "Unauthorized", "code": 401}
    assert http(sb, "cluster1", "GET", "/api", token=sb.token("cluster2"))[0] == 401
    import urllib.request
    assert urllib.request.urlopen(sb.plain_url("cluster1") + "/healthz", timeout=10).read() == b"ok"

    code, ctype, groups = http(sb, "cluster1", "GET", "/apis", headers={
        "Accept": "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json"})
    assert code == 200 and ctype == "application/json" and groups["kind"] == "APIGroupList"
    assert {"apps", "apiextensions.k8s.io", "rbac.authorization.k8s.io", "admissionregistration.k8s.io"} <= \
        {g["name"] for g in groups["groups"]}
    core = http(sb, "cluster1", "GET", "/api/v1")[2]
    by_name = {r["name"]: r for r in core["resources"]}
    assert by_name["namespaces"]["shortNames"] == ["ns"] and not by_name["namespaces"]["namespaced"]
    assert "services/status" in by_name and by_name["secrets"]["kind"] == "Secret"
    index = http(sb, "cluster1", "GET", "/openapi/v3")[2]["paths"]
    assert {"api/v1", "apis/apps/v1"} <= set(index) and "?hash=" in index["api/v1"]["serverRelativeURL"]

    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "cacerts"}, "stringData": {"a": "b"}}
    code, _, created = http(sb, "cluster1", "POST", "/api/v1/namespaces/default/secrets?fieldManager=t", secret)
    assert code == 201 and created["data"] == {"a": b64("b")} and "stringData" not in created
    assert created["metadata"]["uid"] and created["metadata"]["creationTimestamp"]
    code, _, status = http(sb, "cluster1", "POST", "/api/v1/namespaces/default/secrets", secret)
    assert (code, status["reason"], status["message"]) == (409, "AlreadyExists", 'secrets "cacerts" already exists')
    code, _, status = http(sb, "cluster1", "GET", "/api/v1/namespaces/default/secrets/nope")
    assert status["details"] == {"name": "nope", "kind": "secrets"} and code == 404
    code, _, status = http(sb, "cluster1", "POST", "/api/v1/namespaces/default/configmaps", secret)
    assert code == 400 and status["reason"] == "BadRequest"
    code, _, status = http(sb, "cluster1", "POST", "/api/v1/namespaces/default/secrets?dryRun=All",
                           dict(secret, metadata={"name": "dry"}))
    assert code == 201 and http(sb, "cluster1", "GET", "/api/v1/namespaces/default/secrets/dry")[0] == 404

    stale = dict(created, data={"a": b64("c")})
    stale["metadata"] = dict(created["metadata"], resourceVersion="1")
    assert http(sb, "cluster1", "PUT", "/api/v1/namespaces/default/secrets/cacerts", stale)[2]["reason"] == "Conflict"
    stale["metadata"]["resourceVersion"] = created["metadata"]["resourceVersion"]
    code, _, replaced = http(sb, "cluster1", "PUT", "/api/v1/namespaces/default/secrets/cacerts", stale)
    assert code == 200 and replaced["data"] == {"a": b64("c")}

    listing = http(sb, "cluster1", "GET", "/api/v1/secrets?labelSelector=")[2]
    assert listing["kind"] == "SecretList" and int(listing["metadata"]["resourceVersion"]) >= \
        int(replaced["metadata"]["resourceVersion"])
    code, _, gone = http(sb, "cluster1", "DELETE", "/api/v1/namespaces/default/secrets/cacerts",
                         {"propagationPolicy": "Background"})
    assert code == 200 and gone["metadata"]["name"] == "cacerts"
    assert http(sb, "cluster1", "DELETE", "/api/v1/namespaces/default/secrets/cacerts")[0] == 404
    text = sb.dump("cluster1")
    dump = json.loads(text)
    assert dump["cluster"] == "cluster1" and not [o for o in dump["objects"] if o["name"] == "cacerts"]
    # Deterministic: keys sorted at every level, so equal text means equal objects whatever order they came in.
    assert text == json.dumps(dump, sort_keys=True, separators=(",", ":"))
    assert all(r["path"] != "/_sandbox/dump" for r in sb.requests("cluster1"))


# --- the tests' own reads, answered without kubectl ---------------------------------------------------

def test_the_tests_plain_gets_answer_as_kubectl_does(two_clusters, kubectl_bin):
    """Sandbox.kubectl answers a plain ``get ... -o json`` over HTTP: the same exit code, stderr and JSON
    as the pinned kubectl for every form it answers, and it hands every other form to kubectl."""
    import subprocess

    from tests.sandbox import reads

    sb = two_clusters
    sb.kubectl("cluster1", "apply", "-f", "-", stdin=GATEWAY_CRD)
    sb.kubectl("cluster1", "create", "namespace", "istio-system")
    sb.kubectl("cluster1", "label", "namespace", "istio-system", "topology.istio.io/network=n1")
    sb.kubectl("cluster1", "apply", "-f", "-", stdin=GATEWAY)
    sb.kubectl("cluster1", "create", "secret", "generic", "one", "-n", "istio-system", "--from-literal=a=b")
    sb.kubectl("cluster1", "label", "secret", "one", "-n", "istio-system", "istio/multiCluster=true")
    sb.kubectl("cluster1", "create", "deployment", "web", "-n", "istio-system", "--image=nginx")
    sb.kubectl("cluster1", "rollout", "status", "deployment/web", "-n", "istio-system", "--timeout=60s")
    forms = [
        ("get", "secret", "one", "-n", "istio-system", "-o", "json"),
        ("get", "secrets", "-n", "istio-system", "-l", "istio/multiCluster=true", "-o", "json"),
        ("get", "secret", "missing", "-n", "istio-system", "-o", "json"),
        ("get", "deploy", "--namespace=istio-system", "--output=json"),
        ("get", "Deployment", "web", "-n", "istio-system", "-o", "json"),
        ("get", "deployment", "missing", "-n", "istio-system", "-o", "json"),
        ("get", "namespace", "istio-system", "-o", "json"),
        ("get", "ns", "-l", "topology.istio.io/network=n1", "-o", "json"),
        ("get", "gateways.networking.istio.io", "-n", "istio-system", "-o", "json"),
        ("get", "gw", "cross-network-gateway", "-n", "istio-system", "-o", "json"),
        ("get", "gateways.networking.istio.io", "nope", "-n", "istio-system", "-o", "json"),
        ("get", "crd", "-o", "json"),
        ("get", "secrets", "-A", "-o", "json", "--selector=istio/multiCluster=true"),
    ]

    def answer(result):
        return result.returncode, result.stderr, json.loads(result.stdout) if result.stdout else None

    for form in forms:
        assert reads.parse(form) is not None, form
        for _ in range(100):  # a controller may update an object meanwhile: compare a settled one
            before = answer(sb.kubectl("cluster1", *form, check=False))
            real = answer(subprocess.run([str(kubectl_bin), "--context", "cluster1", *form], capture_output=True,
                                         text=True, env=sb.env))
            if answer(sb.kubectl("cluster1", *form, check=False)) == before:
                break
            time.sleep(0.1)
        assert before == real, form
    with pytest.raises(KubectlFailed):
        sb.kubectl("cluster1", "get", "secret", "missing", "-n", "istio-system", "-o", "json")
    # A resource type the server no longer has (its CRD deleted after a read found it): kubectl's words.
    sb.kubectl("cluster1", "delete", "crd", "gateways.networking.istio.io")
    for form in [("get", "gw", "-n", "istio-system", "-o", "json"),
                 ("get", "gw", "cross-network-gateway", "-n", "istio-system", "-o", "json")]:
        fast = sb.kubectl("cluster1", *form, check=False)
        real = subprocess.run([str(kubectl_bin), "--context", "cluster1", *form], capture_output=True, text=True,
                              env=sb.env)
        assert (fast.returncode, fast.stdout, fast.stderr) == (real.returncode, real.stdout, real.stderr), form
    # Forms left to kubectl: another output, a flag it does not know, several resources, no namespace.
    for form in [("get", "secret", "one", "-n", "istio-system", "-o", "yaml"),
                 ("get", "secret", "one", "-n", "istio-system", "--ignore-not-found", "-o", "json"),
                 ("get", "secrets,deployments", "-n", "istio-system", "-o", "json"),
                 ("get", "deployment/web", "-n", "istio-system", "-o", "json")]:
        assert reads.parse(form) is None, form
    assert reads.parse(("get", "secrets", "-o", "json")) is not None
    assert sb._reader("cluster1").get([], reads.parse(("get", "secrets", "-o", "json"))) is None, \
        "no namespace: the context's, which kubectl knows"
