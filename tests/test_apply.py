"""apply on the sandbox: three clusters on two networks, a single-network mesh, refusals, re-runs."""
import base64
import subprocess

import pytest
import yaml

from tests.meshkit import make_mesh, scan_for_secrets, workdir_snapshot

# The tests share one mesh built for this module: under -n they run on one worker, which builds it once.
pytestmark = pytest.mark.xdist_group("test_apply")

THREE = {"cluster1": "network1", "cluster2": "network1", "cluster3": "network2"}
BASE_EXTRA = "  values:\n    pilot:\n      env:\n        PILOT_ENABLE_WORKLOAD_ENTRY_AUTOREGISTRATION: \"true\"\n"


@pytest.fixture(scope="module")
def applied(tmp_path_factory):
    """One three-cluster, two-network mesh built by apply, shared by the read-only tests below."""
    from tests.sandbox import Sandbox

    root = tmp_path_factory.mktemp("mesh3")
    sandbox = Sandbox.up(root / "sandbox", list(THREE))
    try:
        mesh = make_mesh(sandbox, root / "ws", THREE, BASE_EXTRA)
        result = mesh.apply()
        yield mesh, result
    finally:
        sandbox.down()


def test_every_cacerts_chains_to_the_one_root(applied, tmp_path):
    mesh, _ = applied
    root = mesh.workdir / "certs" / "root-cert.pem"
    for ctx in THREE:
        secret = mesh.get(ctx, "secret", "cacerts", "-n", "istio-system")
        assert sorted(secret["data"]) == ["ca-cert.pem", "ca-key.pem", "cert-chain.pem", "root-cert.pem"]
        for name, value in secret["data"].items():
            (tmp_path / f"{ctx}-{name}").write_bytes(base64.b64decode(value))
        assert (tmp_path / f"{ctx}-root-cert.pem").read_bytes() == root.read_bytes()
        verify = subprocess.run(["openssl", "verify", "-CAfile", str(root), str(tmp_path / f"{ctx}-ca-cert.pem")],
                                capture_output=True, text=True)
        assert verify.returncode == 0, verify.stdout + verify.stderr
        assert "last-applied-configuration" not in str(secret["metadata"].get("annotations", {})), \
            "the CA key must not be copied into an annotation"


def test_namespaces_carry_the_network_label(applied):
    mesh, _ = applied
    for ctx, network in THREE.items():
        ns = mesh.get(ctx, "namespace", "istio-system")
        assert ns["metadata"]["labels"]["topology.istio.io/network"] == network


def test_overlay_carries_base_and_reserved_values_and_is_what_istioctl_got(applied):
    mesh, _ = applied
    calls = mesh.control_plane_installs()
    assert sorted(c["context"] for c in calls) == sorted(THREE)
    for call in calls:
        ctx = call["context"]
        overlay = yaml.safe_load((mesh.workdir / "overlays" / f"{ctx}.yaml").read_text())
        values = overlay["spec"]["values"]
        assert values["global"]["meshID"] == "mesh1"
        assert values["global"]["multiCluster"]["clusterName"] == ctx
        assert values["global"]["network"] == THREE[ctx]
        assert values["pilot"]["env"]["PILOT_ENABLE_WORKLOAD_ENTRY_AUTOREGISTRATION"] == "true"
        assert overlay["spec"]["meshConfig"]["accessLogFile"] == "/dev/stdout"
        assert call["merged"] == overlay


def test_eastwest_gateways_and_cross_network_gateway_exist(applied):
    mesh, _ = applied
    for ctx, network in THREE.items():
        svc = mesh.get(ctx, "service", "istio-eastwestgateway", "-n", "istio-system")
        assert svc["spec"]["type"] == "LoadBalancer"
        assert svc["metadata"]["labels"]["topology.istio.io/network"] == network
        assert {p["port"] for p in svc["spec"]["ports"]} == {15021, 15443, 15012, 15017}
        assert svc["status"]["loadBalancer"]["ingress"]
        gateway = mesh.get(ctx, "gateways.networking.istio.io", "cross-network-gateway", "-n", "istio-system")
        server = gateway["spec"]["servers"][0]
        assert server["port"]["number"] == 15443 and server["tls"]["mode"] == "AUTO_PASSTHROUGH"
        assert server["hosts"] == ["*.local"]


def test_remote_secret_matrix_is_complete(applied):
    mesh, _ = applied
    pairs = 0
    for target in THREE:
        secrets = mesh.remote_secrets(target)
        assert sorted(secrets) == sorted(c for c in THREE if c != target)
        for source, secret in secrets.items():
            kubeconfig = mesh.secret_kubeconfig(secret)
            assert kubeconfig["clusters"][0]["name"] == source
            assert kubeconfig["clusters"][0]["cluster"]["server"] == mesh.sandbox.url(source)
            pairs += 1
    assert pairs == len(THREE) * (len(THREE) - 1)


def test_output_has_a_summary_ending_in_the_loopback_problem_but_no_secrets(applied):
    mesh, result = applied
    out = result.stdout + result.stderr
    assert mesh.results(result.stdout) == {ctx: "installed, 2 secrets imported" for ctx in THREE}, result.stdout
    # every step done, but the remote secrets name 127.0.0.1: status calls that mesh broken, so does apply
    assert result.returncode == 3, out
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: the mesh cannot work: other clusters would reach cluster1 (https://127.0.0.1:")
    assert all(f"{ctx} (https://127.0.0.1:" in last for ctx in THREE) and "set api_server: for them in " in last
    assert "apply finished\n" in result.stdout and "warning" not in out, "said once, as the last line"
    assert scan_for_secrets(out) == []
    logs = list((mesh.workdir / ".setup-mesh" / "logs").glob("apply-*.log"))
    assert logs
    for log in logs:
        text = log.read_text()
        assert "create-remote-secret" in text and "exit=0" in text
        assert scan_for_secrets(text) == []
        # The log is opened before the clusters are read: the reads that decided the plan are in it.
        assert "get namespaces,secrets,services,deployments,daemonsets" in text.splitlines()[0], text[:500]


def test_rerun_with_nothing_changed_installs_nothing_and_only_reads(applied):
    mesh, _ = applied
    installs = len(mesh.installs())
    before = {ctx: len(mesh.sandbox.requests(ctx)) for ctx in THREE}
    result = mesh.apply()
    assert len(mesh.installs()) == installs
    for ctx in THREE:
        new = mesh.sandbox.requests(ctx)[before[ctx]:]
        writes = [r for r in new if r["method"] not in ("GET", "HEAD")]
        assert writes == [], f"{ctx} got writes on a no-op re-run: {writes}"
    assert "unchanged" in result.stdout


def test_single_network_mesh_has_no_gateways(sandbox_factory, tmp_path):
    sandbox = sandbox_factory(["east", "west"])
    mesh = make_mesh(sandbox, tmp_path / "ws", {"east": "net1", "west": "net1"})
    mesh.apply()
    for ctx in ("east", "west"):
        assert mesh.get(ctx, "service", "istio-eastwestgateway", "-n", "istio-system", check=False) is None
        gateways = mesh.sandbox.kubectl(ctx, "get", "gateways.networking.istio.io", "-A", "-o", "name")
        assert gateways.stdout.strip() == ""
        assert len(mesh.remote_secrets(ctx)) == 1
    assert not list((tmp_path / "ws" / "overlays").glob("*-eastwest.yaml"))


def test_reserved_value_in_base_is_refused_before_any_request(sandbox_factory, tmp_path):
    sandbox = sandbox_factory(["east", "west"])
    mesh = make_mesh(sandbox, tmp_path / "ws", {"east": "n1", "west": "n2"},
                     "  values:\n    global:\n      network: mine\n")
    before = {ctx: len(sandbox.requests(ctx)) for ctx in ("east", "west")}
    snapshot = workdir_snapshot(mesh.workdir)
    result = mesh.run("apply", "-y")
    assert result.returncode == 2
    assert "base.yaml:" in result.stderr and "spec.values.global.network is set by setup-mesh" in result.stderr
    assert "Traceback" not in result.stderr
    assert {ctx: len(sandbox.requests(ctx)) for ctx in ("east", "west")} == before
    assert workdir_snapshot(mesh.workdir) == snapshot


def test_kubeconfig_option_reaches_kubectl_and_istioctl(sandbox_factory, tmp_path):
    sandbox = sandbox_factory(["east", "west"])
    mesh = make_mesh(sandbox, tmp_path / "ws", {"east": "n1", "west": "n1"})
    result = mesh.run("apply", "-y", "--kubeconfig", str(sandbox.kubeconfig),
                      env={"KUBECONFIG": str(tmp_path / "not-there")})
    assert result.returncode == mesh.applied_code(), result.stdout + result.stderr
    assert sorted(mesh.remote_secrets("east")) == ["west"]
    calls = mesh.sandbox.istioctl_calls()
    assert {c["command"] for c in calls} >= {"install", "create-remote-secret"}
    assert [c for c in calls if c["kubeconfig"] != str(sandbox.kubeconfig)] == []


GKE = {"gke_proj_europe-west1_east": ("east", "network1"), "gke_proj_europe-west1_west": ("west", "network2")}


def test_cluster_names_that_differ_from_contexts_survive_a_second_apply(sandbox_factory, tmp_path):
    """GKE-style contexts are not valid cluster names: remote secrets are named after cluster_name."""
    sandbox = sandbox_factory(list(GKE))
    mesh = make_mesh(sandbox, tmp_path / "ws", {})
    mesh.write_topology({ctx: net for ctx, (_, net) in GKE.items()},
                        extra={ctx: {"cluster_name": name, "api_server": sandbox.api_server(ctx)}
                               for ctx, (name, _) in GKE.items()})
    mesh.apply()
    expected = {"gke_proj_europe-west1_east": ["west"], "gke_proj_europe-west1_west": ["east"]}
    assert {ctx: sorted(mesh.remote_secrets(ctx)) for ctx in GKE} == expected
    before = {ctx: len(sandbox.requests(ctx)) for ctx in GKE}
    again = mesh.apply()
    assert {ctx: sorted(mesh.remote_secrets(ctx)) for ctx in GKE} == expected, \
        f"the second apply lost remote secrets:\n{again.stdout}"
    for ctx in GKE:
        writes = [r for r in sandbox.requests(ctx)[before[ctx]:] if r["method"] not in ("GET", "HEAD")]
        assert writes == [], f"{ctx} got writes on a second apply with nothing changed: {writes}"
    status = mesh.run("status")
    assert status.returncode == 0, status.stdout + status.stderr


@pytest.mark.parametrize("context, then", [
    ("main", "or give its remotes (edge) another primary, then remove it from {t}"),
    ("other", "or remove the context from {t}"),
])
def test_an_unreachable_cluster_sits_out_with_a_way_out_that_apply_would_take(tmp_path, context, then):
    # A primary with remotes cannot just be removed from topology.yaml: apply refuses that until its remotes
    # have another primary, so the hint says so.
    from lib.apply import _sit_outs
    from lib.config import Cluster, Topology
    from lib.executor import Executor
    from lib.kube import Observed, Tools
    from lib.plan import ApplyPlan
    from lib.reporter import Reporter

    topology = Topology("m", (Cluster("main", "n1", "main"), Cluster("edge", "n2", "edge", primary="main"),
                              Cluster("other", "n1", "other")), tmp_path / "topology.yaml")
    (out,) = _sit_outs(ApplyPlan([]), topology, Tools(), {context: Observed(reachable=False, error="refused")}, {},
                       tmp_path / ".setup-mesh" / "state.json")
    assert out.context == context
    hint = out.error.hint
    assert hint == f"check access with `kubectl --context {context} get namespace istio-system`, " + then.format(
        t=topology.path)
