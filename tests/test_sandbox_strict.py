"""The sandbox is as strict as a real API server where setup-mesh depends on it, seen through the real kubectl:
namespaces terminate over time, Deployments and LoadBalancers take time, and every message is kube-apiserver's."""
from __future__ import annotations

import json
import time

import pytest

DELAY = 1.0  # long enough to observe each state in between


@pytest.fixture
def slow(sandbox_factory):
    return sandbox_factory(["c1"], lb_delay=DELAY, ready_delay=DELAY, namespace_delete_delay=DELAY)


def test_a_deleted_namespace_is_terminating_and_refuses_new_content(slow):
    slow.kubectl("c1", "create", "namespace", "work")
    slow.kubectl("c1", "create", "configmap", "old", "-n", "work")
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
    slow.kubectl("c1", "label", "configmap", "old", "-n", "work", "still=here")

    time.sleep(DELAY + 0.5)
    gone = slow.kubectl("c1", "get", "namespace", "work", check=False)
    assert gone.returncode == 1 and gone.stderr.strip() == 'Error from server (NotFound): namespaces "work" not found'
    assert slow.kubectl("c1", "get", "configmaps", "-n", "work", "-o", "name").stdout == ""


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
    rollout = slow.kubectl("c1", "rollout", "status", "deployment/web", "--timeout=20s")
    assert rollout.returncode == 0 and 'deployment "web" successfully rolled out' in rollout.stdout
    assert time.monotonic() - started >= DELAY * 0.5
    status = slow.get_json("c1", "deployment", "web")["status"]
    assert status["readyReplicas"] == 2 and status["availableReplicas"] == 2
    # An update rolls out with the old replicas still serving: it stays ready.
    slow.kubectl("c1", "set", "image", "deployment/web", "nginx=nginx:2")
    assert slow.get_json("c1", "deployment", "web")["status"]["readyReplicas"] == 2


def test_a_loadbalancer_address_arrives_after_a_while(slow):
    slow.kubectl("c1", "create", "service", "loadbalancer", "gw", "--tcp=443:443")
    row = slow.kubectl("c1", "get", "service", "gw", "--no-headers").stdout.split()
    assert row[3] == "<pending>"
    wait = slow.kubectl("c1", "wait", "service/gw", "--for=jsonpath={.status.loadBalancer.ingress[0].ip}",
                        "--timeout=20s")
    assert wait.stdout.strip() == "service/gw condition met"
    assert slow.get_json("c1", "service", "gw")["status"]["loadBalancer"]["ingress"][0]["ip"]


def test_content_with_a_finalizer_keeps_its_namespace_terminating(sandbox_factory):
    sandbox = sandbox_factory(["c1"], namespace_delete_delay=0.0)
    sandbox.kubectl("c1", "create", "namespace", "work")
    sandbox.kubectl("c1", "apply", "-f", "-", stdin=json.dumps({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "hold", "namespace": "work", "finalizers": ["example.com/hold"]}}))
    sandbox.kubectl("c1", "delete", "namespace", "work", "--wait=false")
    time.sleep(0.5)
    assert sandbox.get_json("c1", "namespace", "work")["status"]["phase"] == "Terminating"
    held = sandbox.get_json("c1", "configmap", "hold", "-n", "work")
    assert held["metadata"]["deletionTimestamp"], "the controller deleted it; its finalizer keeps it"
    sandbox.kubectl("c1", "patch", "configmap", "hold", "-n", "work", "--type=merge",
                    "-p", '{"metadata":{"finalizers":null}}')
    wait = sandbox.kubectl("c1", "wait", "--for=delete", "namespace/work", "--timeout=10s")
    assert wait.returncode == 0
    assert sandbox.kubectl("c1", "get", "namespace", "work", check=False).returncode == 1
