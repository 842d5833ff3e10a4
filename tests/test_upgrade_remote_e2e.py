"""A canary upgrade of a mesh with a remote, end to end: cluster1 (primary, network1), cluster2 (primary,
network2) and cluster3, a remote of cluster1 on network2 (so it runs an east-west gateway of its own, whose
pods its primary's istiod injects through cluster1's gateway). Moved from 1.30.3 to 1.31.0 one cluster at a
time with --context: cluster1 installs the new revision and exposes its istiod per revision
(istiod-vs-1-31-0); cluster3's remote install at the revision leads its Service istiod-1-31-0 there, its
gateway and default tag move; cluster1 keeps its old revision while cluster3's proxies use it. verify and
status pass before and after each move; at the end no cluster holds the old revision, nor cluster1 the old
revision's VirtualService. Then cluster4, a remote of cluster1 on a network of its own, is added: it joins
at revision 1-31-0 (its remote install and gateway at the revision, its default tag on it), nothing else is
installed again, and its gateway's pods and workloads are injected by cluster1's istiod at the revision."""
from __future__ import annotations

import json

import pytest
import yaml

from tests.meshkit import injected_workload, make_mesh
from tests.releaseserver import ReleaseServer, publish
from tests.test_fetch_e2e import PinnedMesh
from tests.test_standin_istioctl import wait_for
from tests.test_upgrade_e2e import default_tag, gateway

pytestmark = pytest.mark.xdist_group("test_upgrade_remote_e2e")

CONTEXTS = {"cluster1": {"network": "network1"},
            "cluster2": {"network": "network2"},
            "cluster3": {"network": "network2", "primary": "cluster1"}}
NEW_REV = "1-31-0"
JOINING = "cluster4"  # a remote of cluster1 added after the upgrade
JOINING_NETWORK = "network3"


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    folder = tmp_path_factory.mktemp("published")
    publish(folder, "1.31.0")
    with ReleaseServer(folder) as server:
        yield server


@pytest.fixture
def mesh(sandbox_factory, tmp_path):
    sandbox = sandbox_factory([*CONTEXTS, JOINING])  # JOINING stays out of the mesh until the end
    made = make_mesh(sandbox, tmp_path / "ws", {ctx: spec["network"] for ctx, spec in CONTEXTS.items()})
    mesh = PinnedMesh(made.sandbox, made.workdir)
    contexts = {ctx: {**spec, "api_server": sandbox.api_server(ctx)} for ctx, spec in CONTEXTS.items()}
    (mesh.workdir / "topology.yaml").write_text(yaml.safe_dump({"mesh_id": "mesh1", "contexts": contexts}))
    mesh.pin("1.30.3")
    mesh.apply("--istio-dir", str(sandbox.istio_dir))
    return mesh


def revisions_in(mesh, ctx, namespace):
    """The injecting revision of each live pod of ``namespace``."""
    pods = mesh.get(ctx, "pods", "-n", namespace)["items"]
    return sorted((p["metadata"].get("annotations") or {}).get("istio.io/rev", "") for p in pods
                  if not p["metadata"].get("deletionTimestamp"))


def healthy(mesh, before):
    """status exits 0, verify's calls cross every pair of clusters, and every east-west gateway's Service
    kept its UID and address."""
    assert {ctx: gateway(mesh, ctx) for ctx in CONTEXTS} == before
    status = mesh.run("status")
    assert status.returncode == 0, status.stdout + status.stderr
    verified = mesh.run("verify")
    assert verified.returncode == 0, verified.stdout + verified.stderr


def with_joining(mesh):
    """topology.yaml with JOINING, a remote of cluster1 on a network of its own."""
    topology = yaml.safe_load((mesh.workdir / "topology.yaml").read_text())
    joining = {"network": JOINING_NETWORK, "primary": "cluster1", "api_server": mesh.sandbox.api_server(JOINING)}
    (mesh.workdir / "topology.yaml").write_text(yaml.safe_dump({**topology, "contexts": {**topology["contexts"],
                                                                                          JOINING: joining}}))


def virtual_services(mesh, ctx):
    return sorted(vs["metadata"]["name"] for vs in mesh.get(ctx, "virtualservices", "-n", "istio-system")["items"])


def test_a_remote_moves_right_after_its_primary_through_the_revisions_exposed_istiod(mesh, published):
    before = {ctx: gateway(mesh, ctx) for ctx in CONTEXTS}
    sb = mesh.sandbox
    # One injected workload on the remote: its sidecar is injected and configured by cluster1's istiod.
    injected_workload(sb, "cluster3")
    assert wait_for(lambda: revisions_in(mesh, "cluster3", "app") == ["default"])
    assert virtual_services(mesh, "cluster1") == ["istiod-vs"]
    healthy(mesh, before)

    mesh.pin("1.31.0")
    plan = mesh.run("apply", "--dry-run", "--istio-mirror", published.url, env={"COLUMNS": "200"})
    assert plan.returncode in (0, 3), plan.stdout + plan.stderr
    assert "not supported" not in plan.stdout + plan.stderr
    assert f"expose revision {NEW_REV}'s istiod to remotes" in plan.stdout
    assert f"install the 1.31.0 remote install as revision {NEW_REV}" in plan.stdout

    # cluster1 first: the new revision beside the old, exposed to the remote per revision.
    mesh.apply("--istio-mirror", published.url, "--context", "cluster1")
    assert mesh.get("cluster1", "deployment", f"istiod-{NEW_REV}", "-n", "istio-system") is not None
    assert virtual_services(mesh, "cluster1") == ["istiod-vs", f"istiod-vs-{NEW_REV}"]
    route = mesh.get("cluster1", "virtualservice", f"istiod-vs-{NEW_REV}", "-n", "istio-system")["spec"]["tls"][0]
    assert route["match"][0]["sniHosts"][0] == f"istiod-{NEW_REV}.istio-system.svc"
    assert mesh.get("cluster3", "service", f"istiod-{NEW_REV}", "-n", "istio-system", check=False) is None
    assert default_tag(mesh, "cluster1") == NEW_REV
    healthy(mesh, before)

    # The remote: its install at the revision leads istiod-1-31-0 to cluster1's gateway; its own gateway's
    # pods are injected by the new revision through it; the default tag moves, so new pods follow.
    mesh.apply("--istio-mirror", published.url, "--context", "cluster3")
    slice_ = mesh.get("cluster3", "endpointslice", f"istiod-{NEW_REV}", "-n", "istio-system")
    assert slice_["endpoints"][0]["addresses"] == [before["cluster1"][1]]
    injector = mesh.get("cluster3", "mutatingwebhookconfiguration", f"istio-sidecar-injector-{NEW_REV}")
    assert all(hook["clientConfig"].get("caBundle") for hook in injector["webhooks"]), "patched by cluster1's istiod"
    assert default_tag(mesh, "cluster3") == NEW_REV
    deployment = mesh.get("cluster3", "deployment", "istio-eastwestgateway", "-n", "istio-system")
    assert deployment["metadata"]["labels"]["istio.io/rev"] == NEW_REV
    assert wait_for(lambda: revisions_in(mesh, "cluster3", "istio-system") == [NEW_REV]), \
        "the remote's gateway pod is re-injected by the new revision"
    # cluster1 keeps its old revision while the remote's workload is on it, also when moved alone.
    mesh.apply("--istio-mirror", published.url, "--context", "cluster1")
    assert mesh.get("cluster1", "deployment", "istiod", "-n", "istio-system") is not None
    assert virtual_services(mesh, "cluster1") == ["istiod-vs", f"istiod-vs-{NEW_REV}"]
    healthy(mesh, before)
    # A remote cannot join cluster1 now, in the middle of its upgrade (it would join a revision cluster1 is
    # leaving): refused before any cluster is touched.
    written = (mesh.workdir / "topology.yaml").read_text()
    with_joining(mesh)
    refused = mesh.run("apply", "-y", "--istio-mirror", published.url)
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert f"{JOINING}: its primary cluster1 is in the middle of an upgrade" in refused.stderr, refused.stderr
    assert mesh.get(JOINING, "namespace", "istio-system", check=False) is None
    (mesh.workdir / "topology.yaml").write_text(written)
    sb.kubectl("cluster3", "rollout", "restart", "deployment/web", "-n", "app")
    assert wait_for(lambda: revisions_in(mesh, "cluster3", "app") == [NEW_REV])

    mesh.apply("--istio-mirror", published.url, "--context", "cluster2")
    assert default_tag(mesh, "cluster2") == NEW_REV
    healthy(mesh, before)

    # Nothing uses the old revision any more: the next run removes it everywhere, with its expose objects.
    mesh.apply("--istio-mirror", published.url)
    for ctx in CONTEXTS:
        assert mesh.get(ctx, "mutatingwebhookconfiguration", "istio-sidecar-injector", check=False) is None, ctx
        assert mesh.get(ctx, "service", "istiod", "-n", "istio-system", check=False) is None, ctx
    for ctx in ("cluster1", "cluster2"):
        assert mesh.get(ctx, "deployment", "istiod", "-n", "istio-system", check=False) is None, ctx
    # What uninstall leaves of the old revision goes too: cluster1's VirtualService, cluster3's EndpointSlice.
    assert virtual_services(mesh, "cluster1") == [f"istiod-vs-{NEW_REV}"]
    assert mesh.get("cluster3", "endpointslice", "istiod", "-n", "istio-system", check=False) is None
    assert mesh.get("cluster1", "gateway", "istiod-gateway", "-n", "istio-system") is not None
    healthy(mesh, before)
    again = mesh.apply("--istio-mirror", published.url)
    assert mesh.results(again.stdout) == {ctx: "unchanged" for ctx in CONTEXTS}

    # A later change of base.yaml installs every cluster again at the revision it runs: cluster1's istiod is
    # exposed as that revision's, the old revision's VirtualService does not come back.
    base = mesh.workdir / "base.yaml"
    base.write_text(base.read_text().replace("accessLogFile: /dev/stdout", "accessLogFile: /dev/stderr"))
    mesh.apply("--istio-mirror", published.url)
    assert virtual_services(mesh, "cluster1") == [f"istiod-vs-{NEW_REV}"]
    assert mesh.get("cluster3", "service", "istiod", "-n", "istio-system", check=False) is None
    healthy(mesh, before)

    # A remote added now joins at the revision cluster1 runs (whose default revision is gone): on a network of
    # its own, its gateway's pods are injected by cluster1's istiod at the revision once cluster1 holds its secret.
    istiod = mesh.get("cluster1", "deployment", f"istiod-{NEW_REV}", "-n", "istio-system")["metadata"]
    with_joining(mesh)
    plan = mesh.run("apply", "--dry-run", "--istio-mirror", published.url, env={"COLUMNS": "200"})
    assert plan.returncode == 0, plan.stdout + plan.stderr
    assert f"+ Istio (overlays/{JOINING}.yaml) at revision {NEW_REV}" in plan.stdout, plan.stdout
    assert f"+ default revision tag → {NEW_REV}" in plan.stdout
    assert "Istio (overlays/cluster1.yaml)" not in plan.stdout, plan.stdout  # cluster1 is not installed again
    assert "unchanged: cluster3" in plan.stdout, plan.stdout
    commands = mesh.run("apply", "--dry-run", "-v", "--istio-mirror", published.url, env={"COLUMNS": "300"}).stdout
    assert f"/istio-1.31.0/bin/istioctl install -y -f {mesh.workdir}/overlays/{JOINING}.yaml --revision {NEW_REV} " \
        in commands, commands
    assert f"istioctl tag set default --revision {NEW_REV} --overwrite --context {JOINING}" in commands
    mesh.apply_checked("--istio-mirror", published.url)
    assert not [d for d in mesh.get(JOINING, "deployments", "-n", "istio-system")["items"]
                if d["metadata"]["name"].startswith("istiod")], "a remote runs no istiod"
    injector = mesh.get(JOINING, "mutatingwebhookconfiguration", f"istio-sidecar-injector-{NEW_REV}")
    paths = {(hook["clientConfig"].get("service") or {}).get("path") for hook in injector["webhooks"]}
    assert paths == {f"/inject/cluster/{JOINING}/net/{JOINING_NETWORK}"}
    assert mesh.get(JOINING, "mutatingwebhookconfiguration", "istio-sidecar-injector", check=False) is None
    assert default_tag(mesh, JOINING) == NEW_REV
    # status reads its injector at the revision it runs (a wrong path or no caBundle would be errors).
    report = json.loads(mesh.run("status", "--output", "json").stdout)
    row = next(c for c in report["clusters"] if c["context"] == JOINING)
    assert row["istio"]["installed"] and not row["problems"], row
    assert row["revisions"]["control_planes"] == {NEW_REV: "1.31.0"} and row["revisions"]["default_tag"] == NEW_REV
    assert wait_for(lambda: revisions_in(mesh, JOINING, "istio-system") == [NEW_REV]), "its gateway, at the revision"
    assert JOINING in mesh.remote_secrets("cluster1")
    after = mesh.get("cluster1", "deployment", f"istiod-{NEW_REV}", "-n", "istio-system")["metadata"]
    assert (after["uid"], after["generation"]) == (istiod["uid"], istiod["generation"]), "cluster1's istiod untouched"
    injected_workload(sb, JOINING)  # labelled istio-injection=enabled: injected through the default tag
    assert wait_for(lambda: revisions_in(mesh, JOINING, "app") == [NEW_REV])
    joined = gateway(mesh, JOINING)
    healthy(mesh, before)
    again = mesh.apply("--istio-mirror", published.url)
    assert mesh.results(again.stdout) == {ctx: "unchanged" for ctx in [*CONTEXTS, JOINING]}
    assert gateway(mesh, JOINING) == joined
