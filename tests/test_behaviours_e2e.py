"""A primary with a remote on another network, built once for the module, walked the way a user walks it:
rotate-certs (which istiod it confirms), status (a remote's injector path), then a teardown that keeps
others' Istio objects. The decisions behind each are pinned in-process in test_behaviours.py; here is
what reaches the clusters. The tests run in file order: the last one tears the mesh down."""
from __future__ import annotations

import json

import pytest

from tests.meshkit import FOREIGN_PA, FOREIGN_VS, applied_mesh
from tests.test_standin_istioctl import wait_for

# One mesh for the module: its tests stay on one worker, which builds it once.
pytestmark = pytest.mark.xdist_group("test_behaviours_e2e")

PRIMARY, REMOTE = "cluster1", "cluster2"
NETWORKS = {PRIMARY: "network1", REMOTE: "network2"}


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    with applied_mesh(tmp_path_factory.mktemp("behaviours"), NETWORKS, lb_delay=0.0,
                      primaries={REMOTE: PRIMARY}) as (built, _):
        yield built


def _status(mesh) -> tuple[int, dict]:
    result = mesh.run("status", "--output", "json")
    return result.returncode, json.loads(result.stdout)


def _problems(doc: dict, ctx: str) -> dict[str, dict]:
    cluster = next(c for c in doc["clusters"] if c["context"] == ctx)
    return {p["code"]: p for p in cluster["problems"]}


def _istiod_reads(mesh, ctx: str, since: int) -> list[str]:
    return [r["path"] for r in mesh.sandbox.requests(ctx)[since:]
            if r["method"] == "GET" and r["path"].endswith("/namespaces/istio-system/deployments/istiod")]


def test_rotate_certs_confirms_the_primarys_istiod_and_leaves_the_remote_which_runs_none(mesh):
    plan = mesh.run("rotate-certs", "--dry-run", "-v", env={"COLUMNS": "200"})
    assert plan.returncode == 0, plan.stdout + plan.stderr
    text = " ".join(plan.stdout.split())
    assert "kubectl --context cluster1 get deployment istiod -n istio-system -o json" in text, plan.stdout
    assert "kubectl --context cluster2 get deployment istiod" not in text, plan.stdout

    before = {ctx: len(mesh.sandbox.requests(ctx)) for ctx in NETWORKS}
    result = mesh.run("rotate-certs", "-y")
    assert result.returncode == 0, result.stdout + result.stderr
    assert _istiod_reads(mesh, PRIMARY, before[PRIMARY]), "the primary's istiod is confirmed after cacerts changed"
    assert _istiod_reads(mesh, REMOTE, before[REMOTE]) == [], "a remote runs no istiod"
    code, doc = _status(mesh)
    assert code == 0, doc


def test_status_flags_a_remote_whose_injector_calls_another_clusters_path(mesh):
    hook = mesh.get(REMOTE, "mutatingwebhookconfiguration", "istio-sidecar-injector")
    paths = {h["clientConfig"]["service"]["path"] for h in hook["webhooks"]}
    assert paths == {"/inject/cluster/cluster2/net/network2"}
    # The injector pointed at the primary's own identity, as a copy-pasted values file would do.
    patch = [{"op": "replace", "path": f"/webhooks/{i}/clientConfig/service/path",
              "value": "/inject/cluster/cluster1/net/network1"} for i in range(len(hook["webhooks"]))]
    mesh.kubectl(REMOTE, "patch", "mutatingwebhookconfiguration", "istio-sidecar-injector", "--type", "json",
                 "-p", json.dumps(patch))
    code, doc = _status(mesh)
    assert code != 0
    problems = _problems(doc, REMOTE)
    assert "injection_path_wrong" in problems, problems
    assert "/inject/cluster/cluster2/net/network2" in problems["injection_path_wrong"]["message"]
    assert _problems(doc, PRIMARY) == {}
    # Put back by hand: apply judges a remote by the install it recorded and does not re-read the webhook.
    for op in patch:
        op["value"] = "/inject/cluster/cluster2/net/network2"
    mesh.kubectl(REMOTE, "patch", "mutatingwebhookconfiguration", "istio-sidecar-injector", "--type", "json",
                 "-p", json.dumps(patch))
    code, doc = _status(mesh)
    assert code == 0, [c["problems"] for c in doc["clusters"]]


def test_a_scoped_teardown_of_a_primary_with_a_remote_removes_its_exposed_istiod(mesh):
    sandbox = mesh.sandbox
    assert mesh.get(PRIMARY, "gateways.networking.istio.io", "istiod-gateway", "-n", "istio-system") is not None
    for ctx in (PRIMARY, REMOTE):  # somebody else uses Istio in both: each teardown is scoped
        sandbox.kubectl(ctx, "create", "namespace", "shop")
        sandbox.kubectl(ctx, "apply", "-f", "-", stdin=FOREIGN_VS)
    # Somebody's policy in istio-system: the namespace stays, so what setup-mesh made there must go one by one.
    sandbox.kubectl(PRIMARY, "apply", "-f", "-", stdin=FOREIGN_PA)
    result = mesh.run("teardown", "-y")
    assert result.returncode == 0, result.stdout + result.stderr
    said = " ".join((result.stdout + result.stderr).split())
    assert f"{PRIMARY}: keeps Istio's CRDs" in said, said
    left = {kind: mesh.get(PRIMARY, kind, "-A")["items"]
            for kind in ("gateways.networking.istio.io", "virtualservices.networking.istio.io")}
    assert left["gateways.networking.istio.io"] == [], "setup-mesh's istiod-gateway and cross-network Gateway go"
    assert [(v["metadata"]["namespace"], v["metadata"]["name"]) for v in left["virtualservices.networking.istio.io"]] \
        == [("shop", "reviews")], "istiod-vs goes; the VirtualService somebody else made stays"
    assert mesh.get(PRIMARY, "peerauthentication", "default", "-n", "istio-system")["spec"]["mtls"]["mode"] == "STRICT"
    assert mesh.get(REMOTE, "namespace", "istio-system", check=False) is None
    # The remote's own install (it runs no istiod) is uninstalled too: its injector, failurePolicy Fail, would
    # otherwise refuse every pod of an injected namespace, calling an istiod Service that is gone.
    assert mesh.get(REMOTE, "virtualservice", "reviews", "-n", "shop") is not None, "somebody's config stays"
    hooks = [h["metadata"]["name"] for h in mesh.get(REMOTE, "mutatingwebhookconfigurations")["items"]]
    assert not [name for name in hooks if "istio" in name], hooks
    sandbox.kubectl(REMOTE, "create", "namespace", "app")
    sandbox.kubectl(REMOTE, "label", "namespace", "app", "istio-injection=enabled")
    sandbox.kubectl(REMOTE, "create", "deployment", "web", "--image=nginx", "-n", "app")
    assert wait_for(lambda: mesh.get(REMOTE, "pods", "-n", "app")["items"]), \
        mesh.get(REMOTE, "deployment", "web", "-n", "app")["status"]
