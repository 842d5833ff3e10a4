"""status by revision: each cluster's control planes and their versions, where the default tag points,
how many proxies run each revision, and the skew warnings (lib/statusrevisions.py)."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from lib.config import Cluster, Topology
from lib.statusreport import ClusterStatus, Hints
from lib.statusrevisions import Revisions, judge_revisions, parse_revisions
from tests.sandbox.release import VERSION, materialize_release
from tests.test_status import NETS, Mesh, _build_shared, _cluster, _problems

NEW, NEW_REV = "1.31.0", "1-31-0"


def _istiod(rev: str | None, version: str) -> dict:
    labels = {"app": "istiod", **({"istio.io/rev": rev} if rev else {})}
    return {"metadata": {"labels": labels},
            "spec": {"template": {"spec": {"containers": [{"image": f"docker.io/istio/pilot:{version}"}]}}}}


def _pod(ns: str, rev: str, version: str) -> dict:
    return {"kind": "Pod", "metadata": {"namespace": ns, "annotations": {"istio.io/rev": rev}},
            "spec": {"containers": [{"name": "app"}, {"name": "istio-proxy", "image": f"docker.io/istio/proxyv2:{version}"}]}}


def _tag(rev: str) -> dict:
    return {"kind": "MutatingWebhookConfiguration",
            "metadata": {"name": "istio-revision-tag-default", "labels": {"istio.io/rev": rev, "istio.io/tag": "default"}}}


def _judge(tmp_path, seen: dict[str, Revisions], primaries=None) -> dict[str, ClusterStatus]:
    clusters = [Cluster(context=ctx, name=ctx, network="n1", primary=(primaries or {}).get(ctx)) for ctx in seen]
    results = [ClusterStatus(cluster=c, reachable=True, istio_installed=True, primary=c.primary) for c in clusters]
    judge_revisions(results, seen, Hints(tmp_path, Topology(path=tmp_path / "topology.yaml", mesh_id="m",
                                                                clusters=clusters)))
    return {s.cluster.context: s for s in results}


def test_revisions_and_proxies_are_read_from_deployments_webhooks_and_pods():
    seen = parse_revisions([_tag(NEW_REV), _pod("app", "default", "1.30.3"), _pod("app", "default", "1.30.3"),
                            _pod("web", NEW_REV, NEW), {"kind": "Pod", "metadata": {"namespace": "plain"},
                                                        "spec": {"containers": [{"name": "app"}]}}],
                           {"istiod": _istiod(None, "1.30.3"), f"istiod-{NEW_REV}": _istiod(NEW_REV, NEW)},
                           {"gitVersion": "v1.33.4"})
    assert seen.control_planes == {"default": "1.30.3", NEW_REV: NEW}
    assert seen.default_tag == NEW_REV and seen.kubernetes == "v1.33.4"
    assert seen.proxies == {("default", "1.30.3"): 2, (NEW_REV, NEW): 1}
    assert seen.to_json(seen.control_planes)["proxies"] == [
        {"revision": "1-31-0", "version": NEW, "count": 1}, {"revision": "default", "version": "1.30.3", "count": 2}]


def test_proxies_left_on_the_old_revision_are_listed_with_their_restart(tmp_path):
    seen = parse_revisions([_tag(NEW_REV), _pod("app", "default", "1.30.3"), _pod("istio-system", "default", "1.30.3")],
                           {"istiod": _istiod(None, "1.30.3"), f"istiod-{NEW_REV}": _istiod(NEW_REV, NEW)}, None)
    status = _judge(tmp_path, {"c1": seen})["c1"]
    (problem,) = status.problems
    assert (problem.code, problem.severity) == ("proxies_on_old_revision", "warning")
    assert "1 proxies in app still run revision default (1.30.3); new pods get 1-31-0 (1.31.0)" in problem.message
    assert "kubectl --context c1 rollout restart deployment -n app" in problem.hint


def test_proxies_whose_control_plane_is_gone_are_an_error(tmp_path):
    seen = parse_revisions([_tag(NEW_REV), _pod("app", "old", "1.29.6")], {f"istiod-{NEW_REV}": _istiod(NEW_REV, NEW)},
                           None)
    codes = [(p.code, p.severity) for p in _judge(tmp_path, {"c1": seen})["c1"].problems]
    assert codes == [("proxies_without_control_plane", "error")]


def test_skew_and_kubernetes_support_are_warned(tmp_path):
    seen = parse_revisions([_pod("app", "default", "1.28.1"), _pod("web", "default", "1.31.0")],
                           {"istiod": _istiod(None, "1.30.3")}, {"gitVersion": "v1.31.2"})
    problems = _judge(tmp_path, {"c1": seen})["c1"].problems
    assert sorted((p.code, p.severity) for p in problems) == [
        ("kubernetes_unsupported", "warning"), ("proxy_skew", "warning"), ("proxy_skew", "warning")]
    assert any("newer than its control plane (1.30.3)" in p.message for p in problems)
    assert any("Kubernetes 1.31.2 is outside what Istio 1.30 supports (1.32 to 1.36)" in p.message for p in problems)


def test_a_remote_is_judged_against_its_primarys_control_planes(tmp_path):
    primary = parse_revisions([], {f"istiod-{NEW_REV}": _istiod(NEW_REV, NEW)}, None)
    remote = parse_revisions([_pod("app", "default", "1.30.3")], {}, None)
    found = _judge(tmp_path, {"p1": primary, "r1": remote}, primaries={"r1": "p1"})
    assert found["r1"].revisions["control_planes"] == {NEW_REV: NEW}
    assert [p.code for p in found["r1"].problems] == ["proxies_without_control_plane"]


# --- on a running mesh --------------------------------------------------------------------------------------

@pytest.fixture
def mesh(shaped):
    built = shaped("status", _build_shared, Mesh)
    built.networks = NETS
    return built


def _istioctl(mesh, release: Path, *args: str) -> None:
    done = subprocess.run([str(release / "bin" / "istioctl"), *args], env=mesh.sandbox.env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


def _restart(mesh) -> None:
    time.sleep(1.05 - time.time() % 1)  # kubectl refuses a second restart within the same second
    mesh.sandbox.kubectl("cluster1", "rollout", "restart", "deployment/web", "-n", "app")


def _proxy_counts(doc: dict) -> dict[tuple[str, str], int]:
    """cluster1's proxies as status counts them: (revision, version) -> pods."""
    return {(p["revision"], p["version"]): p["count"] for p in _cluster(doc, "cluster1")["revisions"]["proxies"]}


def _wait_status(mesh, want) -> dict:
    """Status runs until ``want(doc)``; the last document. The caller asserts ``want`` again: a look that never
    comes fails the test instead of passing it late."""
    deadline = time.monotonic() + 120  # each look is a whole status run: minutes on a loaded machine
    while True:
        code, doc = mesh.status()
        if want(doc) or time.monotonic() > deadline:
            return doc
        time.sleep(0.2)


def test_status_follows_a_canary_revision_and_its_proxies(mesh):
    code, doc = mesh.status()
    assert code == 0, doc
    c1 = _cluster(doc, "cluster1")
    assert c1["revisions"]["control_planes"] == {"default": VERSION} and c1["revisions"]["default_tag"] is None
    assert c1["revisions"]["kubernetes"].startswith("v1.")
    # The mesh's own gateways in istio-system are proxies too: web's is counted on top of them.
    gateways = _proxy_counts(doc)
    sb = mesh.sandbox
    sb.kubectl("cluster1", "create", "namespace", "app")
    sb.kubectl("cluster1", "label", "namespace", "app", "istio-injection=enabled")
    sb.kubectl("cluster1", "create", "deployment", "web", "--image=nginx", "-n", "app")
    with_web = {**gateways, ("default", VERSION): gateways.get(("default", VERSION), 0) + 1}
    doc = _wait_status(mesh, lambda d: _proxy_counts(d) == with_web)
    assert _proxy_counts(doc) == with_web

    new = materialize_release(Path(sb.istio_dir).parent, version=NEW)
    _istioctl(mesh, new, "install", "-y", "--context", "cluster1", "--revision", NEW_REV,
              "--set", "values.global.meshID=mesh1", "--set", "values.global.multiCluster.clusterName=cluster1",
              "--set", "values.global.network=network1")
    _istioctl(mesh, new, "tag", "set", "default", "--revision", NEW_REV, "--overwrite", "--context", "cluster1")
    code, doc = mesh.status()
    c1 = _cluster(doc, "cluster1")
    assert c1["revisions"]["control_planes"] == {"default": VERSION, NEW_REV: NEW}
    assert c1["revisions"]["default_tag"] == NEW_REV
    old = _problems(doc, "cluster1")["proxies_on_old_revision"]
    assert old["severity"] == "warning" and "in app still run revision default" in old["message"]
    assert "rollout restart deployment -n app" in old["hint"]

    _restart(mesh)

    def web_moved(d: dict) -> bool:  # the install may have moved a gateway too: web's proxy is the one more
        counts = _proxy_counts(d)
        return (counts.get((NEW_REV, NEW), 0) >= 1 and sum(counts.values()) == sum(with_web.values())
                and "proxies_on_old_revision" not in _problems(d, "cluster1"))
    doc = _wait_status(mesh, web_moved)
    assert "proxies_on_old_revision" not in _problems(doc, "cluster1"), _problems(doc, "cluster1")
    assert web_moved(doc), _cluster(doc, "cluster1")["revisions"]

    # the new revision removed while proxies use it: they are left without a control plane
    _istioctl(mesh, new, "uninstall", "--revision", NEW_REV, "-y", "--context", "cluster1")
    code, doc = mesh.status()
    assert code == 1 and "proxies_without_control_plane" in _problems(doc, "cluster1")


def test_the_table_view_names_each_revision_during_an_upgrade(tmp_path):
    from lib.statusreport import MeshStatus
    from lib.statusview import revision_lines

    seen = parse_revisions([_tag(NEW_REV), _pod("app", "default", "1.30.3"), _pod("web", NEW_REV, NEW)],
                           {"istiod": _istiod(None, "1.30.3"), f"istiod-{NEW_REV}": _istiod(NEW_REV, NEW)}, None)
    single = parse_revisions([_pod("app", "default", "1.30.3")], {"istiod": _istiod(None, "1.30.3")}, None)
    found = _judge(tmp_path, {"c1": seen, "c2": single})
    lines = revision_lines(MeshStatus("m", None, list(found.values())))
    assert lines == ["c1: revisions 1-31-0 (1.31.0, proxies: 1 at 1.31.0), default (1.30.3, proxies: 1 at 1.30.3); "
                     "default tag -> 1-31-0"]


def test_a_canary_moves_the_east_west_gateway_in_place_and_the_old_revision_goes(mesh):
    """What an upgrade does to one cluster of a multi-network mesh, by hand with the stand-in: the new revision
    beside the old, the east-west gateway reinstalled at that revision (its Service keeps UID and address, its
    pods are injected by the new revision), the default tag moved, then the old revision removed while the
    gateway and the new control plane stay."""
    sb, ctx = mesh.sandbox, "cluster3"
    svc = mesh.get(ctx, "service", "istio-eastwestgateway", "-n", "istio-system")
    uid, address = svc["metadata"]["uid"], svc["status"]["loadBalancer"]["ingress"][0]["ip"]
    overlays = mesh.workdir / "overlays"
    new = materialize_release(Path(sb.istio_dir).parent, version=NEW)
    _istioctl(mesh, new, "install", "-y", "--context", ctx, "--revision", NEW_REV, "-f", str(overlays / f"{ctx}.yaml"))
    _istioctl(mesh, new, "install", "-y", "--context", ctx, "--revision", NEW_REV,
              "-f", str(overlays / f"{ctx}-eastwest.yaml"))
    _istioctl(mesh, new, "tag", "set", "default", "--revision", NEW_REV, "--overwrite", "--context", ctx)

    svc = mesh.get(ctx, "service", "istio-eastwestgateway", "-n", "istio-system")
    assert (svc["metadata"]["uid"], svc["status"]["loadBalancer"]["ingress"][0]["ip"]) == (uid, address)
    assert svc["metadata"]["labels"]["istio.io/rev"] == NEW_REV

    def on_new_revision():  # the gateways' pods, restarted by the reinstall and injected by the new revision
        code, doc = mesh.status()
        return {(p["revision"], p["version"]) for p in _cluster(doc, ctx)["revisions"]["proxies"]} == {(NEW_REV, NEW)}
    deadline = time.monotonic() + 120  # each look is a whole status run
    while not on_new_revision() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert on_new_revision()

    _istioctl(mesh, new, "uninstall", "--revision", "default", "-y", "--context", ctx)
    svc = mesh.get(ctx, "service", "istio-eastwestgateway", "-n", "istio-system")
    assert (svc["metadata"]["uid"], svc["status"]["loadBalancer"]["ingress"][0]["ip"]) == (uid, address)
    assert mesh.get(ctx, "deployment", f"istiod-{NEW_REV}", "-n", "istio-system")["status"].get("readyReplicas") == 1
    assert mesh.get(ctx, "deployment", "istiod", "-n", "istio-system", check=False) is None
