"""A canary upgrade end to end: a two-primary mesh on two networks at 1.30.3 (the sandbox's release) moved to
1.31.0 (fetched from a loopback mirror) by changing istio_version: the dry run shows the upgrade, the first run
installs the new revision beside the old, moves the east-west gateway in place (its Service's UID and address
stay) and the default tag; the next run removes the old revision, and status stays healthy. A skip of two
minors is refused before any cluster is touched."""
from __future__ import annotations

import pytest
import yaml

from tests.meshkit import injected_workload, make_mesh
from tests.releaseserver import ReleaseServer, publish
from tests.test_fetch_e2e import PinnedMesh
from tests.test_standin_istioctl import wait_for

pytestmark = pytest.mark.xdist_group("test_upgrade_e2e")

NETWORKS = {"cluster1": "network1", "cluster2": "network2"}
NEW_REV = "1-31-0"


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    folder = tmp_path_factory.mktemp("published")
    publish(folder, "1.31.0")
    publish(folder, "1.28.0")
    with ReleaseServer(folder) as server:
        yield server


def _build_pinned_mesh(start, workdir):
    sandbox = start(list(NETWORKS))
    made = make_mesh(sandbox, workdir, NETWORKS)
    mesh = PinnedMesh(made.sandbox, made.workdir)
    # API servers the peers reach, so that status can call the mesh healthy
    mesh.write_topology(NETWORKS, extra={ctx: {"api_server": sandbox.api_server(ctx)} for ctx in NETWORKS})
    mesh.pin("1.30.3")
    mesh.apply("--istio-dir", str(sandbox.istio_dir))
    return mesh


@pytest.fixture
def mesh(shaped):
    """The mesh at 1.30.3, pinned: a copy of one built once per worker (tests/shapes.py); the module's tests
    stay on one worker."""
    return shaped("upgrade-e2e", _build_pinned_mesh, PinnedMesh)


def revisions_in(mesh, namespace):
    """The injecting revision of each live pod of ``namespace`` on cluster1."""
    pods = mesh.get("cluster1", "pods", "-n", namespace)["items"]
    return sorted((p["metadata"].get("annotations") or {}).get("istio.io/rev", "") for p in pods
                  if not p["metadata"].get("deletionTimestamp"))


def gateway(mesh, ctx):
    service = mesh.get(ctx, "service", "istio-eastwestgateway", "-n", "istio-system")
    return service["metadata"]["uid"], service["status"]["loadBalancer"]["ingress"][0].get("ip")


def default_tag(mesh, ctx):
    return mesh.get(ctx, "mutatingwebhookconfiguration", "istio-revision-tag-default")["metadata"]["labels"]["istio.io/rev"]


def test_changing_istio_version_upgrades_by_canary_keeping_gateways_and_removes_the_old_revision_later(mesh, published):
    before = {ctx: gateway(mesh, ctx) for ctx in NETWORKS}
    # One injected workload on cluster1, on the old revision.
    sb = mesh.sandbox
    injected_workload(sb, "cluster1")
    assert wait_for(lambda: revisions_in(mesh, "app") == ["default"])
    healthy = mesh.run("status")
    assert healthy.returncode == 0, healthy.stdout + healthy.stderr
    mesh.pin("1.31.0")
    plan = mesh.run("apply", "--dry-run", "--istio-mirror", published.url, env={"COLUMNS": "200"})
    assert plan.returncode in (0, 3), plan.stdout + plan.stderr
    assert "nothing to do" not in plan.stdout
    for ctx in NETWORKS:
        assert f"install the 1.31.0 control plane as revision {NEW_REV}" in plan.stdout
    assert "workloads still on revision default: app (1)" in plan.stdout
    assert "remove revision default" in plan.stderr and "a later run" in plan.stderr
    assert f"point the default revision tag at {NEW_REV}" in plan.stdout
    assert mesh.get("cluster1", "deployment", f"istiod-{NEW_REV}", "-n", "istio-system", check=False) is None

    mesh.apply("--istio-mirror", published.url)
    for ctx in NETWORKS:
        istiod = mesh.get(ctx, "deployment", f"istiod-{NEW_REV}", "-n", "istio-system")
        assert istiod["spec"]["template"]["spec"]["containers"][0]["image"].endswith(":1.31.0")
        assert default_tag(mesh, ctx) == NEW_REV
        assert gateway(mesh, ctx) == before[ctx], "the east-west gateway's Service kept its UID and address"
        deployment = mesh.get(ctx, "deployment", "istio-eastwestgateway", "-n", "istio-system")
        assert deployment["metadata"]["labels"]["istio.io/rev"] == NEW_REV
    status = mesh.run("status")
    assert status.returncode == 0, status.stdout + status.stderr

    # The next run removes the old revision where nothing uses it any more; cluster1 keeps it for `app`.
    second = mesh.apply("--istio-mirror", published.url)
    assert "workloads still on revision default: app (1)" in second.stdout
    assert mesh.get("cluster2", "deployment", "istiod", "-n", "istio-system", check=False) is None
    assert mesh.get("cluster1", "deployment", "istiod", "-n", "istio-system") is not None
    sb.kubectl("cluster1", "rollout", "restart", "deployment/web", "-n", "app")  # as the listing says
    assert wait_for(lambda: revisions_in(mesh, "app") == [NEW_REV])
    mesh.apply("--istio-mirror", published.url)
    for ctx in NETWORKS:
        assert mesh.get(ctx, "deployment", "istiod", "-n", "istio-system", check=False) is None
        assert mesh.get(ctx, "deployment", f"istiod-{NEW_REV}", "-n", "istio-system") is not None
        assert gateway(mesh, ctx) == before[ctx]
    status = mesh.run("status")
    assert status.returncode == 0, status.stdout + status.stderr
    third = mesh.apply("--istio-mirror", published.url)
    assert mesh.results(third.stdout) == {ctx: "unchanged" for ctx in NETWORKS}

    # A later change of base.yaml updates the revision the clusters run; no default revision comes back.
    base = mesh.workdir / "base.yaml"
    base.write_text(base.read_text().replace("accessLogFile: /dev/stdout", "accessLogFile: /dev/stderr"))
    calls = len(sb.istioctl_calls())
    mesh.apply("--istio-mirror", published.url)
    installs = [c["argv"] for c in sb.istioctl_calls()[calls:] if c["argv"][1] == "install"]
    assert installs and all(argv[argv.index("--revision") + 1] == NEW_REV for argv in installs if "--revision" in argv)
    assert all("--revision" in argv for argv in installs), installs
    for ctx in NETWORKS:
        assert mesh.get(ctx, "deployment", "istiod", "-n", "istio-system", check=False) is None
        assert gateway(mesh, ctx) == before[ctx]
    status = mesh.run("status")
    assert status.returncode == 0, status.stdout + status.stderr


def test_an_upgrade_stopped_by_a_failure_leaves_the_next_cluster_untouched_and_the_next_run_finishes_it(mesh, published):
    before = {ctx: gateway(mesh, ctx) for ctx in NETWORKS}
    mesh.pin("1.31.0")
    failed = mesh.apply("--istio-mirror", published.url, env={"ISTIOCTL_STANDIN_FAIL": "cluster1/tag set"}, ok=False)
    assert failed.returncode not in (0, 3), failed.stdout + failed.stderr
    assert mesh.get("cluster1", "deployment", f"istiod-{NEW_REV}", "-n", "istio-system") is not None
    assert mesh.get("cluster2", "deployment", f"istiod-{NEW_REV}", "-n", "istio-system", check=False) is None, \
        "the next primary waits for the one before it to finish"
    calls = len(mesh.sandbox.istioctl_calls())
    mesh.apply("--istio-mirror", published.url)
    done = [(c["context"], c["argv"][1]) for c in mesh.sandbox.istioctl_calls()[calls:]
            if c["argv"][1] in ("install", "tag")]
    assert ("cluster1", "install") not in done, "what the cut-short run did is not done again"
    assert ("cluster1", "tag") in done and ("cluster2", "install") in done
    for ctx in NETWORKS:
        assert default_tag(mesh, ctx) == NEW_REV
        assert gateway(mesh, ctx) == before[ctx]


@pytest.mark.parametrize("running, pinned, why", [
    ("1.28.0", "1.31.0", "skips 2 minor versions"),
    ("1.31.0", "1.28.0", "is a downgrade across minor"),
])
def test_a_move_istios_skew_rules_forbid_is_refused_before_any_cluster_is_touched(sandbox_factory, tmp_path, published,
                                                                                    running, pinned, why):
    sandbox = sandbox_factory(["cluster1"])
    made = make_mesh(sandbox, tmp_path / "ws", {"cluster1": "network1"})
    mesh = PinnedMesh(made.sandbox, made.workdir)
    mesh.pin(running)
    mesh.apply("--istio-mirror", published.url)
    mesh.pin(pinned)
    calls, requests = len(mesh.sandbox.istioctl_calls()), len(sandbox.requests("cluster1"))
    result = mesh.run("apply", "-y", "--istio-mirror", published.url)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "no cluster was changed" in result.stderr and why in result.stderr
    assert "Traceback" not in result.stderr
    assert mesh.sandbox.istioctl_calls()[calls:] == []
    writes = [r for r in sandbox.requests("cluster1")[requests:] if r["method"] not in ("GET", "HEAD")]
    assert writes == [], "nothing was changed"
    target = "istiod-" + pinned.replace(".", "-")
    assert mesh.get("cluster1", "deployment", target, "-n", "istio-system", check=False) is None


def test_restart_workloads_moves_them_in_the_same_run_so_the_next_run_removes_the_old_revision(mesh, published):
    sb = mesh.sandbox
    injected_workload(sb, "cluster1")
    assert wait_for(lambda: revisions_in(mesh, "app") == ["default"])
    mesh.pin("1.31.0")
    plan = mesh.run("apply", "--dry-run", "--restart-workloads", "--istio-mirror", published.url, env={"COLUMNS": "200"})
    assert "restart the workloads still on revision default: app" in plan.stdout, plan.stdout

    _traffic_crosses(mesh)
    # One cluster at a time, traffic checked after each move.
    mesh.apply("--restart-workloads", "--istio-mirror", published.url, "--context", "cluster1")
    # Restarted after the default tag moved: the new pods carry the new revision's sidecar.
    assert wait_for(lambda: revisions_in(mesh, "app") == [NEW_REV])
    assert mesh.get("cluster2", "deployment", f"istiod-{NEW_REV}", "-n", "istio-system", check=False) is None, \
        "--context cluster1 moves cluster1 alone"
    _traffic_crosses(mesh)
    mesh.apply("--restart-workloads", "--istio-mirror", published.url, "--context", "cluster2")
    _traffic_crosses(mesh)
    mesh.apply("--istio-mirror", published.url)
    for ctx in NETWORKS:
        assert mesh.get(ctx, "deployment", "istiod", "-n", "istio-system", check=False) is None, ctx
    status = mesh.run("status")
    assert status.returncode == 0, status.stdout + status.stderr

    # The default tag the upgrade set is user-managed: no `istioctl uninstall` prunes it. Teardown removes it,
    # or every pod of an istio-injection=enabled namespace would be sent to an injector that is gone.
    plan = mesh.run("teardown", "--dry-run")
    assert f"- default revision tag → {NEW_REV}" in plan.stdout, plan.stdout
    torn = mesh.run("teardown", "-y")
    assert torn.returncode == 0, torn.stdout + torn.stderr
    for ctx in NETWORKS:
        assert mesh.get(ctx, "mutatingwebhookconfigurations", "-l", "istio.io/tag=default")["items"] == [], ctx


def _traffic_crosses(mesh):
    verified = mesh.run("verify")
    assert verified.returncode == 0, verified.stdout + verified.stderr
