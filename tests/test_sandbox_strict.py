"""The sandbox is as strict as a real API server where setup-mesh depends on it, seen through the real kubectl:
namespaces terminate over time, Deployments and LoadBalancers take time, and every message is kube-apiserver's."""
from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest
import yaml

DELAY = 3.0  # long enough to observe each state in between, even on a busy machine


@pytest.fixture
def slow(sandbox_factory):
    return sandbox_factory(["c1"], lb_delay=DELAY, ready_delay=DELAY, namespace_delete_delay=DELAY)


def test_a_deleted_namespace_is_terminating_and_refuses_new_content(slow):
    slow.kubectl("c1", "create", "namespace", "work")
    slow.kubectl("c1", "create", "configmap", "old", "-n", "work")
    _hold(slow, "work")  # keeps it Terminating for as long as this test looks
    deleted = slow.kubectl("c1", "delete", "namespace", "work", "--wait=false")
    assert deleted.stdout.strip() == 'namespace "work" deleted'
    ns = slow.get_json("c1", "namespace", "work")
    assert ns["status"]["phase"] == "Terminating" and ns["metadata"]["deletionTimestamp"]
    assert ns["spec"]["finalizers"] == ["kubernetes"], "the namespace controller's finalizer holds it"
    table = slow.kubectl("c1", "get", "namespace", "work", "--no-headers").stdout.split()
    assert table[:2] == ["work", "Terminating"]

    refused = slow.kubectl("c1", "create", "configmap", "new", "-n", "work", check=False)
    assert refused.returncode == 1
    assert refused.stderr.strip() == ('error: failed to create configmap: configmaps "new" is forbidden: unable to '
                                      'create new content in namespace work because it is being terminated')
    applied = slow.kubectl("c1", "apply", "--server-side", "-f", "-", check=False, stdin=json.dumps(
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s", "namespace": "work"}}))
    assert applied.returncode == 1
    assert applied.stderr.strip() == ('Error from server (Forbidden): secrets "s" is forbidden: unable to create new '
                                      'content in namespace work because it is being terminated')
    # What is already there can still be read and changed until the controller removes it.
    slow.kubectl("c1", "label", "configmap", "hold", "-n", "work", "still=here")
    again = slow.kubectl("c1", "delete", "namespace", "work", "--ignore-not-found", check=False)
    assert again.returncode == 1, "a second delete is refused, --ignore-not-found or not"
    assert again.stderr.strip() == ('Error from server (Conflict): Operation cannot be fulfilled on namespaces "work": '
                                    'The system is ensuring all content is removed from this namespace.  Upon '
                                    'completion, this namespace will automatically be purged by the system.')

    _release(slow, "work")
    slow.kubectl("c1", "wait", "--for=delete", "namespace/work", "--timeout=60s")
    gone = slow.kubectl("c1", "get", "namespace", "work", check=False)
    assert gone.returncode == 1 and gone.stderr.strip() == 'Error from server (NotFound): namespaces "work" not found'
    assert slow.kubectl("c1", "get", "configmaps", "-n", "work", "-o", "name").stdout == ""


def _hold(sandbox, namespace: str) -> None:
    sandbox.kubectl(sandbox.contexts[0], "apply", "-f", "-", stdin=json.dumps({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "hold", "namespace": namespace, "finalizers": ["example.com/hold"]}}))


def _release(sandbox, namespace: str) -> None:
    sandbox.kubectl(sandbox.contexts[0], "patch", "configmap", "hold", "-n", namespace, "--type=merge",
                    "-p", '{"metadata":{"finalizers":null}}')


def test_kubectl_delete_waits_until_the_namespace_is_gone(slow):
    slow.kubectl("c1", "create", "namespace", "work")
    started = time.monotonic()
    deleted = slow.kubectl("c1", "delete", "namespace", "work")
    assert time.monotonic() - started >= DELAY * 0.9, "kubectl waits for the namespace controller"
    assert deleted.stdout.strip() == 'namespace "work" deleted'
    assert slow.kubectl("c1", "get", "namespace", "work", check=False).returncode == 1
    again = slow.kubectl("c1", "create", "namespace", "work")
    assert again.stdout.strip() == "namespace/work created"


def test_a_new_deployment_becomes_ready_after_a_while(slow):
    slow.kubectl("c1", "create", "deployment", "web", "--image=nginx", "--replicas=2")
    status = slow.get_json("c1", "deployment", "web")["status"]
    assert "readyReplicas" not in status and status["unavailableReplicas"] == 2
    assert {c["type"]: c["status"] for c in status["conditions"]} == {"Available": "False", "Progressing": "True"}
    started = time.monotonic()
    rollout = slow.kubectl("c1", "rollout", "status", "deployment/web", "--timeout=60s")
    assert rollout.returncode == 0 and 'deployment "web" successfully rolled out' in rollout.stdout
    assert time.monotonic() - started >= DELAY * 0.5
    status = slow.get_json("c1", "deployment", "web")["status"]
    assert status["readyReplicas"] == 2 and status["availableReplicas"] == 2
    # An update rolls out with the old replicas still serving: it stays ready.
    slow.kubectl("c1", "set", "image", "deployment/web", "nginx=nginx:2")
    assert slow.get_json("c1", "deployment", "web")["status"]["readyReplicas"] == 2
    # An image that cannot be pulled leaves the rollout stuck, with the old pods still serving.
    slow.kubectl("c1", "set", "image", "deployment/web", "nginx=registry.invalid/nginx:3")

    def images() -> str:
        return slow.kubectl("c1", "get", "pods", "-l", "app=web", "-o",
                            "jsonpath={range .items[*]}{.spec.containers[0].image} {.status.phase}{'\\n'}{end}").stdout

    deadline = time.monotonic() + 60  # the new ReplicaSet's pods come at its controller's next pass
    while images().count("registry.invalid") < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(DELAY * 1.5)  # longer than a pullable image takes to become ready: these never do
    status = slow.get_json("c1", "deployment", "web")["status"]
    assert status["readyReplicas"] == 2 and {c["type"]: c["status"] for c in status["conditions"]}["Available"] == "True"
    listed = images()
    assert sorted(listed.split("\n")[:-1]) == ["nginx:2 Running", "nginx:2 Running",
                                                "registry.invalid/nginx:3 Pending", "registry.invalid/nginx:3 Pending"]


def test_a_deployment_whose_pods_cannot_pull_their_image_never_becomes_available(slow):
    slow.kubectl("c1", "create", "deployment", "broken", "--image=registry.invalid/app:1")
    wait = slow.kubectl("c1", "wait", "deployment/broken", "--for=condition=Available", "--timeout=5s", check=False)
    assert wait.returncode == 1 and "timed out waiting for the condition" in wait.stderr
    status = slow.get_json("c1", "deployment", "broken")["status"]
    assert "readyReplicas" not in status and status["unavailableReplicas"] == 1
    pod = slow.get_json("c1", "pods", "-l", "app=broken")["items"][0]
    assert pod["status"]["containerStatuses"][0]["state"]["waiting"]["reason"] == "ImagePullBackOff"


def test_a_loadbalancer_address_arrives_after_a_while(slow):
    slow.kubectl("c1", "create", "service", "loadbalancer", "gw", "--tcp=443:443")
    row = slow.kubectl("c1", "get", "service", "gw", "--no-headers").stdout.split()
    assert row[3] == "<pending>"
    wait = slow.kubectl("c1", "wait", "service/gw", "--for=jsonpath={.status.loadBalancer.ingress[0].ip}",
                        "--timeout=60s")
    assert wait.stdout.strip() == "service/gw condition met"
    assert slow.get_json("c1", "service", "gw")["status"]["loadBalancer"]["ingress"][0]["ip"]


def test_content_with_a_finalizer_keeps_its_namespace_terminating(sandbox_factory):
    sandbox = sandbox_factory(["c1"], namespace_delete_delay=0.0)
    sandbox.kubectl("c1", "create", "namespace", "work")
    _hold(sandbox, "work")
    sandbox.kubectl("c1", "delete", "namespace", "work", "--wait=false")
    deadline = time.monotonic() + 60  # the namespace controller's pass deletes the content
    held = sandbox.get_json("c1", "configmap", "hold", "-n", "work")
    while not held["metadata"].get("deletionTimestamp") and time.monotonic() < deadline:
        time.sleep(0.1)
        held = sandbox.get_json("c1", "configmap", "hold", "-n", "work")
    assert sandbox.get_json("c1", "namespace", "work")["status"]["phase"] == "Terminating"
    assert held["metadata"]["deletionTimestamp"], "the controller deleted it; its finalizer keeps it"
    _release(sandbox, "work")
    wait = sandbox.kubectl("c1", "wait", "--for=delete", "namespace/work", "--timeout=60s")
    assert wait.returncode == 0
    assert sandbox.kubectl("c1", "get", "namespace", "work", check=False).returncode == 1


# --- server-side apply: field ownership ------------------------------------------------------------

def _managers(sandbox, *what) -> dict[str, dict]:
    obj = sandbox.get_json("c1", *what, "--show-managed-fields")
    return {f'{e["manager"]}/{e["operation"]}': e["fieldsV1"] for e in obj["metadata"]["managedFields"]}


def _ssa(sandbox, manifest: dict, manager: str, *flags: str):
    return sandbox.kubectl("c1", "apply", "--server-side", f"--field-manager={manager}", *flags, "-f", "-",
                           stdin=json.dumps(manifest), check=False)


def _config(labels: dict, data: dict | None = None) -> dict:
    doc = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cfg", "namespace": "default",
                                                                   "labels": labels}}
    if data is not None:
        doc["data"] = data
    return doc


@pytest.fixture
def c1(sandbox_factory):
    return sandbox_factory(["c1"])


def test_managed_fields_record_who_owns_what(c1):
    assert _ssa(c1, _config({"a": "1"}, {"k": "v"}), "mesh").returncode == 0
    c1.kubectl("c1", "label", "configmap", "cfg", "-n", "default", "b=2")
    obj = c1.get_json("c1", "configmap", "cfg", "-n", "default", "--show-managed-fields")
    owners = {(e["manager"], e["operation"]): e for e in obj["metadata"]["managedFields"]}
    assert owners[("mesh", "Apply")]["fieldsV1"] == {"f:data": {"f:k": {}}, "f:metadata": {"f:labels": {"f:a": {}}}}
    assert owners[("kubectl-label", "Update")]["fieldsV1"] == {"f:metadata": {"f:labels": {"f:b": {}}}}
    assert owners[("mesh", "Apply")]["fieldsType"] == "FieldsV1" and owners[("mesh", "Apply")]["time"]
    plain = c1.get_json("c1", "configmap", "cfg", "-n", "default")
    assert "managedFields" not in plain["metadata"], "kubectl hides them unless asked"


def test_applying_another_managers_field_is_a_conflict_unless_forced(c1):
    assert _ssa(c1, _config({"team": "a"}), "first").returncode == 0
    clash = _ssa(c1, _config({"team": "b"}), "second")
    assert clash.returncode == 1
    assert clash.stderr.startswith('error: Apply failed with 1 conflict: conflict with "first": .metadata.labels.team\n'
                                   "Please review the fields above--they currently have other managers.")
    assert "--force-conflicts" in clash.stderr
    assert c1.get_json("c1", "configmap", "cfg", "-n", "default")["metadata"]["labels"] == {"team": "a"}
    # The same value is no conflict: both own the field.
    assert _ssa(c1, _config({"team": "a"}), "second").returncode == 0
    forced = _ssa(c1, _config({"team": "b"}), "second", "--force-conflicts")
    assert forced.returncode == 0, forced.stderr
    assert c1.get_json("c1", "configmap", "cfg", "-n", "default")["metadata"]["labels"] == {"team": "b"}
    owners = _managers(c1, "configmap", "cfg", "-n", "default")
    assert owners == {"second/Apply": {"f:metadata": {"f:labels": {"f:team": {}}}}}, "forcing takes the field over"


def test_a_field_changed_by_an_update_conflicts_with_its_manager(c1):
    assert _ssa(c1, _config({"net": "n1"}, {"k": "v"}), "mesh").returncode == 0
    c1.kubectl("c1", "label", "configmap", "cfg", "-n", "default", "net=n2", "--overwrite")
    assert _managers(c1, "configmap", "cfg", "-n", "default")["mesh/Apply"] == {"f:data": {"f:k": {}}}, \
        "the label's new value belongs to kubectl-label now"
    clash = _ssa(c1, _config({"net": "n1"}, {"k": "v"}), "mesh")
    assert clash.returncode == 1
    assert clash.stderr.startswith('error: Apply failed with 1 conflict: conflict with "kubectl-label" using v1: '
                                   ".metadata.labels.net\n")
    several = _ssa(c1, _config({"net": "n3"}, {"k": "w"}), "other")
    assert several.returncode == 1
    assert several.stderr.startswith('error: Apply failed with 2 conflicts: conflicts with "kubectl-label" using v1:\n'
                                     '- .metadata.labels.net\nconflicts with "mesh":\n- .data.k\n')


def test_fields_a_manager_stops_applying_are_removed_unless_someone_else_owns_them(c1):
    assert _ssa(c1, _config({"a": "1", "b": "2"}, {"k1": "v", "k2": "v"}), "mesh").returncode == 0
    assert _ssa(c1, _config({"c": "3"}), "other").returncode == 0
    assert _ssa(c1, _config({"a": "1", "c": "3"}), "mesh").returncode == 0
    obj = c1.get_json("c1", "configmap", "cfg", "-n", "default")
    assert obj["metadata"]["labels"] == {"a": "1", "c": "3"}, "b went; c stays: other still applies it"
    assert "data" not in obj, "keys mesh no longer applies are removed"
    assert _ssa(c1, _config({"a": "1"}), "mesh").returncode == 0
    assert c1.get_json("c1", "configmap", "cfg", "-n", "default")["metadata"]["labels"] == {"a": "1", "c": "3"}


def test_list_items_a_manager_stops_applying_go_whole(c1):
    def service(ports, selector=None):
        spec = {"ports": [{"name": n, "port": p, "protocol": "TCP"} for n, p in ports]}
        if selector:
            spec["selector"] = selector
        return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "svc", "namespace": "default"},
                "spec": spec}

    assert _ssa(c1, service([("a", 80), ("b", 81), ("c", 82)], {"app": "x"}), "mesh").returncode == 0
    applied = _ssa(c1, service([("b2", 81)]), "mesh")
    assert applied.returncode == 0, applied.stderr
    spec = c1.get_json("c1", "service", "svc", "-n", "default")["spec"]
    assert [(p["name"], p["port"]) for p in spec["ports"]] == [("b2", 81)], "items 80 and 82 went, keys and all"
    assert "selector" not in spec


# --- authorization: a service account's token may do only what RBAC grants --------------------------

def _reader_kubeconfig(sandbox, tmp_path) -> str:
    """The kubeconfig istioctl create-remote-secret prints for c1: the reader service account's token."""
    secret, = (d for d in yaml.safe_load_all(subprocess.run(
        [str(sandbox.istio_dir / "bin" / "istioctl"), "create-remote-secret", "--name", "c1", "--context", "c1"],
        env=sandbox.env, capture_output=True, text=True, check=True, timeout=60).stdout) if d)
    path = tmp_path / "reader.kubeconfig"
    path.write_text(secret["stringData"]["c1"])
    return str(path)


def test_the_reader_token_reads_what_istios_role_grants_and_nothing_more(c1, tmp_path):
    install = subprocess.run([str(c1.istio_dir / "bin" / "istioctl"), "install", "-y", "--context", "c1"],
                             env=c1.env, capture_output=True, text=True, timeout=120)
    assert install.returncode == 0, install.stderr
    reader = _reader_kubeconfig(c1, tmp_path)

    def as_reader(*args):
        return c1.kubectl(None, "--kubeconfig", reader, *args, check=False)

    assert as_reader("get", "secrets", "-n", "istio-system", "-o", "name").returncode == 0
    assert as_reader("get", "pods,services", "-A", "-o", "name").returncode == 0
    denied = as_reader("create", "configmap", "x", "-n", "default")
    assert denied.returncode == 1
    assert denied.stderr.strip() == (
        'error: failed to create configmap: configmaps is forbidden: User '
        '"system:serviceaccount:istio-system:istio-reader-service-account" cannot create resource "configmaps" '
        'in API group "" in the namespace "default"')
    denied = as_reader("delete", "namespace", "istio-system")
    assert denied.returncode == 1 and denied.stderr.strip() == (
        'Error from server (Forbidden): namespaces "istio-system" is forbidden: User '
        '"system:serviceaccount:istio-system:istio-reader-service-account" cannot delete resource "namespaces" '
        'in API group "" at the cluster scope')
    can_i = as_reader("auth", "can-i", "list", "secrets", "-n", "istio-system")
    assert (can_i.returncode, can_i.stdout.strip()) == (0, "yes")
    cannot = as_reader("auth", "can-i", "create", "secrets", "-n", "istio-system")
    assert (cannot.returncode, cannot.stdout.strip()) == (1, "no")
    pod = c1.kubectl("c1", "get", "pods", "-n", "istio-system", "-o", "name").stdout.split()[0].split("/")[1]
    denied = as_reader("exec", "-n", "istio-system", pod, "--", "true")
    assert denied.returncode == 1, "reading pods grants no exec into them"
    assert ('cannot create resource "pods/exec" in API group "" in the namespace "istio-system"'
            in denied.stderr), denied.stderr

    # Without its ClusterRoleBinding, the same token reads nothing: the forbidden a peer's istiod would get.
    c1.kubectl("c1", "delete", "clusterrolebinding", "istio-reader-clusterrole-istio-system")
    denied = as_reader("get", "pods", "-n", "istio-system")
    assert denied.returncode == 1 and denied.stderr.strip() == (
        'Error from server (Forbidden): pods is forbidden: User '
        '"system:serviceaccount:istio-system:istio-reader-service-account" cannot list resource "pods" '
        'in API group "" in the namespace "istio-system"')
    assert c1.kubectl("c1", "get", "pods", "-n", "istio-system").returncode == 0, "the admin token still may"


def test_the_reader_token_has_the_charts_rules(c1, tmp_path):
    # reader-clusterrole.yaml (istio-discovery chart): configmaps, Gateway API gateways (an ambient istiod
    # reads a peer's east-west Gateway with this token), the multi-cluster-services kinds; nothing else.
    install = subprocess.run([str(c1.istio_dir / "bin" / "istioctl"), "install", "-y", "--context", "c1"],
                             env=c1.env, capture_output=True, text=True, timeout=120)
    assert install.returncode == 0, install.stderr
    c1.kubectl("c1", "apply", "--server-side", "-f", str(Path(__file__).parent / "gateway-api" / "standard-v1.4.0.yaml"))
    c1.kubectl("c1", "apply", "-f", "-", stdin=json.dumps({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
        "metadata": {"name": "istio-eastwestgateway", "namespace": "istio-system"},
        "spec": {"gatewayClassName": "istio-east-west",
                 "listeners": [{"name": "mesh", "port": 15008, "protocol": "HBONE"}]}}))
    reader = _reader_kubeconfig(c1, tmp_path)

    def as_reader(*args, stdin=None):
        return c1.kubectl(None, "--kubeconfig", reader, *args, check=False, stdin=stdin)

    gateways = as_reader("get", "gateways.gateway.networking.k8s.io", "-A", "-o", "name")
    assert gateways.returncode == 0, gateways.stderr
    assert gateways.stdout.split() == ["gateway.gateway.networking.k8s.io/istio-eastwestgateway"]
    assert as_reader("get", "configmaps", "-n", "istio-system", "-o", "name").returncode == 0

    def allowed(verb, group, resource):
        """A SelfSubjectAccessReview, as istiod's client would be judged (no discovery in between)."""
        review = as_reader("create", "-o", "json", "-f", "-", stdin=json.dumps({
            "apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview",
            "spec": {"resourceAttributes": {"verb": verb, "group": group, "resource": resource}}}))
        assert review.returncode == 0, review.stderr
        return json.loads(review.stdout)["status"]["allowed"]

    granted = [("watch", "gateway.networking.k8s.io", "gateways"), ("list", "networking.x-k8s.io", "gateways"),
               ("list", "", "configmaps"), ("create", "multicluster.x-k8s.io", "serviceexports"),
               ("delete", "multicluster.x-k8s.io", "serviceexports"), ("list", "multicluster.x-k8s.io", "serviceimports"),
               ("list", "discovery.k8s.io", "endpointslices"), ("get", "apps", "replicasets"),
               ("watch", "networking.istio.io", "workloadentries"), ("create", "authentication.k8s.io", "tokenreviews")]
    refused = [("create", "gateway.networking.k8s.io", "gateways"), ("list", "gateway.networking.k8s.io", "httproutes"),
               ("create", "", "configmaps"), ("update", "", "configmaps"),
               ("create", "multicluster.x-k8s.io", "serviceimports"), ("list", "apps", "deployments"),
               ("patch", "admissionregistration.k8s.io", "mutatingwebhookconfigurations")]
    assert [g for g in granted if not allowed(*g)] == []
    assert [r for r in refused if allowed(*r)] == []


def test_objects_whose_owners_are_all_gone_are_collected(c1):
    c1.kubectl("c1", "create", "configmap", "owner-a")
    c1.kubectl("c1", "create", "configmap", "owner-b")
    uids = {name: c1.get_json("c1", "configmap", name)["metadata"]["uid"] for name in ("owner-a", "owner-b")}

    def owned(name, owners):
        c1.kubectl("c1", "apply", "-f", "-", stdin=json.dumps({
            "apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "ownerReferences": [
                {"apiVersion": "v1", "kind": "ConfigMap", "name": o, "uid": uids[o]} for o in owners]}}))

    owned("only-a", ["owner-a"])
    owned("a-and-b", ["owner-a", "owner-b"])
    c1.kubectl("c1", "delete", "configmap", "owner-a")
    names = c1.kubectl("c1", "get", "configmaps", "-o", "name").stdout.split()
    assert "configmap/only-a" not in names, "its only owner is gone"
    assert "configmap/a-and-b" in names, "owner-b still owns it"
    c1.kubectl("c1", "delete", "configmap", "owner-b")
    assert "configmap/a-and-b" not in c1.kubectl("c1", "get", "configmaps", "-o", "name").stdout.split()
