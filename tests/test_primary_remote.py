"""Primary-remote meshes on the sandbox: remotes run by another cluster's istiod, on one network or several.

What each cluster holds is compared with Istio's primary-remote guides and the multicluster samples of
the release (samples/multicluster/expose-istiod.yaml, expose-services.yaml).
"""
from __future__ import annotations

import json
import time

import yaml

from tests.meshkit import make_mesh, rollout_restart

CONTROL_PLANE_CLUSTERS = "topology.istio.io/controlPlaneClusters"


def _sample(sandbox, name: str) -> list[dict]:
    path = sandbox.istio_dir / "samples" / "multicluster" / name
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def _spec_of(obj: dict) -> dict:
    return {k: v for k, v in obj.items() if k not in ("apiVersion", "kind", "metadata", "status")}


def _write(mesh, contexts: dict[str, dict]) -> None:
    """topology.yaml with these contexts, each with the API server address its peers reach it at."""
    extra = {ctx: {"api_server": mesh.sandbox.api_server(ctx), **{k: v for k, v in spec.items() if k != "network"}}
             for ctx, spec in contexts.items()}
    mesh.write_topology({ctx: spec["network"] for ctx, spec in contexts.items()}, extra=extra)


def _mesh(sandbox_factory, tmp_path, contexts: dict[str, dict], lb_delay=0.0, running=None):
    sandbox = sandbox_factory(list(running or contexts), lb_delay=lb_delay)
    mesh = make_mesh(sandbox, tmp_path / "ws", {ctx: spec["network"] for ctx, spec in contexts.items()})
    _write(mesh, contexts)
    return mesh


def _gateway_address(mesh, ctx: str) -> str:
    service = mesh.get(ctx, "service", "istio-eastwestgateway", "-n", "istio-system")
    return service["status"]["loadBalancer"]["ingress"][0]["ip"]


def _last_install(mesh, ctx: str) -> dict:
    return [c for c in mesh.control_plane_installs() if c["context"] == ctx][-1]


def _check_primary_exposes_istiod(mesh, ctx: str) -> None:
    expose = {o["kind"]: o for o in _sample(mesh.sandbox, "expose-istiod.yaml")}
    gateway = mesh.get(ctx, "gateways.networking.istio.io", "istiod-gateway", "-n", "istio-system")
    service = mesh.get(ctx, "virtualservices.networking.istio.io", "istiod-vs", "-n", "istio-system")
    assert _spec_of(gateway) == _spec_of(expose["Gateway"])
    assert _spec_of(service) == _spec_of(expose["VirtualService"])
    values = _last_install(mesh, ctx)["merged"]["spec"]["values"]
    assert values["global"]["externalIstiod"] is True, "the guide's external-istiod setting on the primary"
    assert mesh.get(ctx, "deployment", "istiod", "-n", "istio-system") is not None


def _check_remote(mesh, ctx: str, primary: str, network: str, name: str | None = None) -> None:
    name = name or ctx
    namespace = mesh.get(ctx, "namespace", "istio-system")["metadata"]
    assert namespace["annotations"][CONTROL_PLANE_CLUSTERS] == primary
    assert namespace["labels"]["topology.istio.io/network"] == network
    spec = _last_install(mesh, ctx)["merged"]["spec"]
    assert spec["profile"] == "remote"
    assert spec["values"]["global"]["remotePilotAddress"] == _gateway_address(mesh, primary)
    assert spec["values"]["istiodRemote"]["injectionPath"] == f"/inject/cluster/{name}/net/{network}"
    assert spec["values"]["global"]["multiCluster"]["clusterName"] == name
    # What the remote profile renders: no istiod, a Service and EndpointSlice leading to the primary's istiod.
    assert mesh.get(ctx, "deployment", "istiod", "-n", "istio-system", check=False) is None
    istiod = mesh.get(ctx, "service", "istiod", "-n", "istio-system")
    assert [p["port"] for p in istiod["spec"]["ports"]] == [15012, 443]
    slices = mesh.get(ctx, "endpointslices.discovery.k8s.io", "-n", "istio-system",
                      "-l", "kubernetes.io/service-name=istiod")["items"]
    assert [s["endpoints"][0]["addresses"] for s in slices] == [[_gateway_address(mesh, primary)]]
    webhook = mesh.get(ctx, "mutatingwebhookconfiguration", "istio-sidecar-injector")
    paths = {h["clientConfig"]["service"]["path"] for h in webhook["webhooks"]}
    assert paths == {f"/inject/cluster/{name}/net/{network}"}
    assert mesh.remote_secrets(ctx) == {}, "a remote holds no remote secret"


def test_two_clusters_on_two_networks(sandbox_factory, tmp_path):
    mesh = _mesh(sandbox_factory, tmp_path, {"cluster1": {"network": "network1"},
                                             "cluster2": {"network": "network2", "primary": "cluster1"}})
    plan = mesh.run("apply", "--dry-run")
    assert plan.returncode == 0, plan.stderr
    assert "cluster2 (network2, remote of cluster1)" in plan.stdout and "cluster1 (network1, primary)" in plan.stdout
    assert "(after cluster1: wait for the east-west gateway's address)" in plan.stdout
    mesh.apply()
    _check_primary_exposes_istiod(mesh, "cluster1")
    _check_remote(mesh, "cluster2", "cluster1", "network2")
    assert sorted(mesh.remote_secrets("cluster1")) == ["cluster2"]
    # On a network of its own the remote has an east-west gateway; the services Gateway lives in the primary,
    # whose istiod configures both gateways.
    assert _gateway_address(mesh, "cluster2")
    services = {o["kind"]: o for o in _sample(mesh.sandbox, "expose-services.yaml")}
    gateway = mesh.get("cluster1", "gateways.networking.istio.io", "cross-network-gateway", "-n", "istio-system")
    assert _spec_of(gateway) == _spec_of(services["Gateway"])
    assert mesh.get("cluster2", "gateways.networking.istio.io", "-n", "istio-system")["items"] == []

    installs = len(mesh.installs())
    again = mesh.apply()
    assert len(mesh.installs()) == installs, again.stdout
    status = mesh.run("status")
    assert status.returncode == 0, status.stdout + status.stderr
    assert "remote of cluster1" in status.stdout


def test_a_base_yaml_naming_the_charts_profile_still_makes_the_remote_a_remote(sandbox_factory, tmp_path):
    # Istio's demo profile file, taken as base.yaml, sets values.profile demo. The charts take that before the
    # remote profile's own, and would render a whole istiod in the remote.
    mesh = _mesh(sandbox_factory, tmp_path, {"cluster1": {"network": "network1"},
                                             "cluster2": {"network": "network2", "primary": "cluster1"}})
    base = mesh.workdir / "base.yaml"
    base.write_text(base.read_text() + "  values:\n    profile: demo\n")
    mesh.apply()
    _check_remote(mesh, "cluster2", "cluster1", "network2")
    assert _last_install(mesh, "cluster1")["merged"]["spec"]["values"]["profile"] == "demo"
    status = mesh.run("status")
    assert status.returncode == 0, status.stdout + status.stderr


def _started(output: str, line: str) -> int:
    """Where apply's progress shows ``line`` starting (it must)."""
    at = output.find(f" {line} ...")
    assert at >= 0, f"{line!r} did not run:\n{output}"
    return at


def test_a_remote_on_a_network_of_its_own_gets_its_gateway_once_its_primary_holds_its_secret(sandbox_factory,
                                                                                             tmp_path):
    """The remote's gateway pods are injected by its primary's istiod: its API server refuses them until that
    istiod holds the remote's secret (and patches the webhook's caBundle), so the gateway comes last."""
    mesh = _mesh(sandbox_factory, tmp_path, {"cluster1": {"network": "network1"},
                                             "cluster2": {"network": "network2", "primary": "cluster1"}})
    plan = mesh.run("apply", "--dry-run")
    result = mesh.apply("--timeout", "60")
    out = result.stdout
    assert "(after cluster1: import remote secrets)" in plan.stdout, plan.stdout
    gateway = _started(out, "cluster2: install east-west gateway")
    assert _started(out, "cluster2: create its remote secret") < _started(out, "cluster1: import cluster2's secret") \
        < gateway, out
    # The gateway's pods went through the remote's injector, which trusts cluster1's istiod now.
    webhook = mesh.get("cluster2", "mutatingwebhookconfiguration", "istio-sidecar-injector")
    assert [h["name"] for h in webhook["webhooks"]] == [
        "rev.namespace.sidecar-injector.istio.io", "rev.object.sidecar-injector.istio.io",
        "namespace.sidecar-injector.istio.io", "object.sidecar-injector.istio.io"]
    root = mesh.get("cluster1", "secret", "cacerts", "-n", "istio-system")["data"]["root-cert.pem"]
    assert {h["clientConfig"].get("caBundle") for h in webhook["webhooks"]} == {root}
    (pod,) = mesh.get("cluster2", "pods", "-n", "istio-system", "-l", "istio=eastwestgateway")["items"]
    assert "sidecar.istio.io/status" in pod["metadata"]["annotations"]
    assert mesh.get("cluster2", "deployment", "istio-eastwestgateway", "-n", "istio-system")[
        "status"].get("availableReplicas") == 1

    status = mesh.run("status")
    assert status.returncode == 0, status.stdout + status.stderr
    verify = mesh.run("verify", "--ready-timeout", "30")
    assert verify.returncode == 0, verify.stdout + verify.stderr


def test_status_names_why_a_remotes_injector_is_not_trusted_and_apply_repairs_it(sandbox_factory, tmp_path):
    mesh = _mesh(sandbox_factory, tmp_path, {"cluster1": {"network": "network1"},
                                             "cluster2": {"network": "network2", "primary": "cluster1"}})
    mesh.apply("--timeout", "60")
    exported = [c for c in mesh.sandbox.istioctl_calls() if c["argv"][1:2] == ["create-remote-secret"]]
    # cluster1 loses the remote's secret, and the webhook its caBundle (as a fresh install leaves it)
    mesh.kubectl("cluster1", "delete", "secret", "istio-remote-secret-cluster2", "-n", "istio-system")
    hooks = mesh.get("cluster2", "mutatingwebhookconfiguration", "istio-sidecar-injector")["webhooks"]
    mesh.kubectl("cluster2", "patch", "mutatingwebhookconfiguration", "istio-sidecar-injector", "--type=json", "-p",
                 json.dumps([{"op": "remove", "path": f"/webhooks/{i}/clientConfig/caBundle"}
                             for i in range(len(hooks))]))
    rollout_restart(mesh.sandbox, "cluster2", "istio-eastwestgateway")
    deadline, failure = time.monotonic() + 60, None  # the API server's verdict comes from the mesh agent
    while failure is None and time.monotonic() < deadline:
        deployment = mesh.get("cluster2", "deployment", "istio-eastwestgateway", "-n", "istio-system")
        failure = next((c for c in deployment["status"]["conditions"] if c["type"] == "ReplicaFailure"), None)
        time.sleep(0.5)
    assert failure is not None and failure["message"] == (
        'Internal error occurred: failed calling webhook "object.sidecar-injector.istio.io": failed to call webhook: '
        'Post "https://istiod.istio-system.svc:443/inject/cluster/cluster2/net/network2?timeout=10s": '
        'tls: failed to verify certificate: x509: certificate signed by unknown authority')

    status = mesh.run("status", "-o", "json")
    assert status.returncode != 0
    problems = {p["code"]: p for c in json.loads(status.stdout)["clusters"] if c["context"] == "cluster2"
                for p in c["problems"]}
    untrusted = problems["injector_untrusted"]
    assert "cluster1 does not hold this cluster's current remote secret" in untrusted["message"]
    assert "kubectl --context cluster2 get mutatingwebhookconfiguration" in untrusted["hint"]

    mesh.apply("--timeout", "60")
    status = mesh.run("status")
    assert status.returncode == 0, status.stdout + status.stderr
    deadline = time.monotonic() + 60  # refused pods are tried again every second
    while True:
        deployment = mesh.get("cluster2", "deployment", "istio-eastwestgateway", "-n", "istio-system")
        admitted = "ReplicaFailure" not in {c["type"] for c in deployment["status"]["conditions"]}
        if admitted or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert admitted and deployment["status"].get("updatedReplicas") == 1, deployment["status"]
    again = [c for c in mesh.sandbox.istioctl_calls() if c["argv"][1:2] == ["create-remote-secret"]]
    assert len(again) == len(exported) + 1, "the secret nobody held any more is made again, once"


def test_two_clusters_on_one_network(sandbox_factory, tmp_path):
    mesh = _mesh(sandbox_factory, tmp_path, {"cluster1": {"network": "network1"},
                                             "cluster2": {"network": "network1", "primary": "cluster1"}})
    mesh.apply()
    _check_primary_exposes_istiod(mesh, "cluster1")
    _check_remote(mesh, "cluster2", "cluster1", "network1")
    # One network: no service traffic through gateways, and the remote needs no gateway of its own.
    assert mesh.get("cluster1", "gateways.networking.istio.io", "cross-network-gateway", "-n", "istio-system",
                    check=False) is None
    assert mesh.get("cluster2", "service", "istio-eastwestgateway", "-n", "istio-system", check=False) is None
    assert sorted(mesh.remote_secrets("cluster1")) == ["cluster2"]


def test_two_primaries_with_a_remote_each_across_two_networks(sandbox_factory, tmp_path):
    mesh = _mesh(sandbox_factory, tmp_path, {
        "p1": {"network": "network1"}, "r1": {"network": "network1", "primary": "p1"},
        "p2": {"network": "network2"}, "r2": {"network": "network2", "primary": "p2"}})
    mesh.apply()
    for primary, remote, network in (("p1", "r1", "network1"), ("p2", "r2", "network2")):
        _check_primary_exposes_istiod(mesh, primary)
        _check_remote(mesh, remote, primary, network)
    # Every primary holds the secret of every other cluster; remotes hold none.
    assert sorted(mesh.remote_secrets("p1")) == ["p2", "r1", "r2"]
    assert sorted(mesh.remote_secrets("p2")) == ["p1", "r1", "r2"]
    status = mesh.run("status")
    assert status.returncode == 0, status.stdout + status.stderr


def test_a_remote_waits_for_its_primary_and_sits_out_when_it_fails(sandbox_factory, tmp_path):
    # The primary's gateway never gets an address: the remote cannot be told where istiod is.
    mesh = _mesh(sandbox_factory, tmp_path, {"cluster1": {"network": "network1"},
                                             "cluster2": {"network": "network1", "primary": "cluster1"},
                                             "cluster3": {"network": "network2"}},
                 lb_delay={"cluster1": None})
    result = mesh.apply("--gateway-timeout", "2", ok=False)
    assert result.returncode == 1
    out = result.stdout + result.stderr
    assert "cluster2" in out and "needs cluster1" in out, out
    assert not [c for c in mesh.control_plane_installs() if c["context"] == "cluster2"], \
        "the remote is not installed without its primary's address"
    assert [c for c in mesh.control_plane_installs() if c["context"] == "cluster3"], \
        "an unrelated primary goes ahead"


def test_a_remote_added_to_a_running_mesh_reinstalls_nothing_else(sandbox_factory, tmp_path):
    mesh = _mesh(sandbox_factory, tmp_path, {"cluster1": {"network": "network1"}, "cluster2": {"network": "network2"}},
                 running=["cluster1", "cluster2", "cluster3"])
    mesh.apply()
    before = {c["context"] for c in mesh.installs()}
    count = len(mesh.installs())
    _write(mesh, {"cluster1": {"network": "network1"}, "cluster2": {"network": "network2"},
                  "cluster3": {"network": "network2", "primary": "cluster2"}})
    plan = mesh.run("apply", "--dry-run").stdout
    assert "+ expose istiod (Gateway istiod-gateway, VirtualService istiod-vs)" in \
        plan.split("\ncluster2 (")[1].split("\n\n")[0], plan
    mesh.apply_checked()
    new = mesh.installs()[count:]
    assert before == {"cluster1", "cluster2"}
    # cluster2 gains the istiod exposure (Istio objects and externalIstiod: a re-install of its control
    # plane); cluster1 is not touched.
    assert "cluster1" not in {c["context"] for c in new}
    _check_remote(mesh, "cluster3", "cluster2", "network2")
    assert sorted(mesh.remote_secrets("cluster1")) == ["cluster2", "cluster3"]
    status = mesh.run("status")
    assert status.returncode == 0, status.stdout + status.stderr


def test_a_remote_turned_primary_and_back_converges_and_teardown_removes_remotes_first(sandbox_factory, tmp_path):
    remote_of_1 = {"cluster1": {"network": "network1"}, "cluster2": {"network": "network1", "primary": "cluster1"}}
    mesh = _mesh(sandbox_factory, tmp_path, remote_of_1)
    mesh.apply()

    _write(mesh, {"cluster1": {"network": "network1"}, "cluster2": {"network": "network1"}})
    plan = mesh.run("apply", "--dry-run")
    assert "- annotation topology.istio.io/controlPlaneClusters and EndpointSlice istiod (a primary now)" \
        in plan.stdout
    assert "- Gateway istiod-gateway and its VirtualService (no remotes now)" in plan.stdout
    mesh.apply_checked()
    namespace = mesh.get("cluster2", "namespace", "istio-system")["metadata"]
    assert CONTROL_PLANE_CLUSTERS not in (namespace.get("annotations") or {})
    assert mesh.get("cluster2", "deployment", "istiod", "-n", "istio-system") is not None
    assert mesh.get("cluster2", "endpointslices.discovery.k8s.io", "istiod", "-n", "istio-system",
                    check=False) is None
    assert mesh.get("cluster1", "gateways.networking.istio.io", "istiod-gateway", "-n", "istio-system",
                    check=False) is None
    assert sorted(mesh.remote_secrets("cluster2")) == ["cluster1"]
    assert mesh.run("status").returncode == 0

    _write(mesh, remote_of_1)
    result = mesh.apply_checked()
    assert "delete remote secrets it no longer needs" in result.stdout + result.stderr
    _check_remote(mesh, "cluster2", "cluster1", "network1")
    _check_primary_exposes_istiod(mesh, "cluster1")
    installs = len(mesh.installs())
    mesh.apply()
    assert len(mesh.installs()) == installs, "a re-run converges: nothing more to install"

    calls = len(mesh.sandbox.istioctl_calls())
    down = mesh.run("teardown", "-y")
    assert down.returncode == 0, down.stdout + down.stderr
    uninstalls = [c["context"] for c in mesh.sandbox.istioctl_calls()[calls:] if c["argv"][1:2] == ["uninstall"]]
    assert uninstalls == ["cluster2", "cluster1"], "the remote goes before its primary"


def _status_and_verify_agree(mesh) -> None:
    """status and verify agree, and both find the mesh healthy."""
    status = mesh.run("status")
    verify = mesh.run("verify", "-o", "json", "--ready-timeout", "60")
    assert verify.returncode in (0, 1), verify.stdout + verify.stderr
    problems = json.dumps(json.loads(verify.stdout)["problems"])
    assert (status.returncode == 0) == (verify.returncode == 0), \
        f"status and verify disagree:\n{status.stdout}{status.stderr}\nverify: {problems}"
    assert (status.returncode, verify.returncode) == (0, 0), status.stdout + problems


def _kept(mesh) -> dict:
    """What turning cluster2 into a remote and back must not change."""
    def version(ctx, *what):
        return mesh.get(ctx, *what, "-n", "istio-system")["metadata"]["resourceVersion"]

    kept = {ctx: {"gateway": (mesh.get(ctx, "service", "istio-eastwestgateway", "-n", "istio-system")["metadata"]["uid"],
                              _gateway_address(mesh, ctx)),
                  "cacerts": version(ctx, "secret", "cacerts")} for ctx in ("cluster1", "cluster2")}
    kept["cluster1"]["istiod"] = mesh.get("cluster1", "deployment", "istiod", "-n", "istio-system")["metadata"]["uid"]
    kept["cluster1"]["secret of cluster2"] = version("cluster1", "secret", "istio-remote-secret-cluster2")
    return kept


def test_a_primary_turned_remote_and_back_status_and_verify_agree_at_every_step(sandbox_factory, tmp_path):
    two_primaries = {"cluster1": {"network": "network1"}, "cluster2": {"network": "network2"}}
    remote_of_1 = {"cluster1": {"network": "network1"}, "cluster2": {"network": "network2", "primary": "cluster1"}}
    mesh = _mesh(sandbox_factory, tmp_path, two_primaries)
    mesh.apply()
    _status_and_verify_agree(mesh)
    kept = _kept(mesh)

    _write(mesh, remote_of_1)
    mesh.apply_checked()
    _check_remote(mesh, "cluster2", "cluster1", "network2")
    _status_and_verify_agree(mesh)
    assert "selector" not in mesh.get("cluster2", "service", "istiod", "-n", "istio-system")["spec"], \
        "istioctl's server-side apply drops the selector the primary's Service had"
    assert _kept(mesh) == kept

    _write(mesh, two_primaries)
    mesh.apply_checked()
    istiod = mesh.get("cluster2", "service", "istiod", "-n", "istio-system")
    assert istiod["spec"]["selector"] == {"app": "istiod", "istio": "pilot"}
    assert sorted(mesh.remote_secrets("cluster2")) == ["cluster1"]
    _status_and_verify_agree(mesh)
    assert _kept(mesh) == kept


def test_a_gateway_whose_pods_are_refused_fails_apply_with_the_api_servers_reason(sandbox_factory, tmp_path):
    mesh = _mesh(sandbox_factory, tmp_path, {"cluster1": {"network": "network1"},
                                             "cluster2": {"network": "network2", "primary": "cluster1"}})
    mesh.apply("--timeout", "60")
    # cluster1's istiod stops: the remote's injector has nobody to answer it, and its gateway must be remade
    mesh.kubectl("cluster1", "scale", "deployment", "istiod", "-n", "istio-system", "--replicas=0")
    mesh.kubectl("cluster2", "delete", "deployment,service", "istio-eastwestgateway", "-n", "istio-system")
    result = mesh.apply("--context", "cluster2", "--timeout", "15", ok=False)
    assert result.returncode != 0
    said = result.stdout + result.stderr
    assert ("the API server refuses the gateway's pods: Internal error occurred: failed calling webhook "
            '"object.sidecar-injector.istio.io": failed to call webhook: Post '
            '"https://istiod.istio-system.svc:443/inject/cluster/cluster2/net/network2?timeout=10s": EOF') in said, said
    assert "hint: see `kubectl --context cluster2 get deployment istio-eastwestgateway -n istio-system -o json`" in said
