"""A running multi-network mesh under the edits users make: what must change, and what must not.

Every scenario starts from an applied mesh of three clusters on two networks whose Istio cluster
names differ from their kube context names. After the edit and a re-apply it checks that the mesh
was not disrupted: the east-west gateway Service keeps its UID and address (a new one is a
cross-network outage and a new public IP), istiod's Deployment keeps its UID, cacerts is untouched
and no remote secret is exported again unless its credentials changed.
"""
from __future__ import annotations

import functools
import hashlib
import json
import subprocess

import pytest
import yaml

from tests.meshkit import FOREIGN_PA, FOREIGN_VS, make_mesh, make_other_ca, plan_sections

CONTEXTS = ["ctx-a", "ctx-b", "ctx-c"]
NAMES = {"ctx-a": "alpha", "ctx-b": "beta", "ctx-c": "gamma", "ctx-d": "delta"}  # ctx-d: a cluster that joins
NETS = {"ctx-a": "network1", "ctx-b": "network1", "ctx-c": "network2"}


def _topology(mesh, networks: dict[str, str], extra: dict | None = None) -> None:
    names = {ctx: {"cluster_name": NAMES[ctx], **((extra or {}).get(ctx, {}))} for ctx in networks}
    mesh.write_topology(networks, extra=names)


def _digest(data: dict | None) -> str | None:
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest() if data is not None else None


def snapshot(mesh, contexts=CONTEXTS) -> dict:
    """What a disruption would change, per cluster."""
    state = {}
    for ctx in contexts:
        service = mesh.get(ctx, "service", "istio-eastwestgateway", "-n", "istio-system", check=False)
        istiod = mesh.get(ctx, "deployment", "istiod", "-n", "istio-system", check=False)
        cacerts = mesh.get(ctx, "secret", "cacerts", "-n", "istio-system", check=False)
        ingress = ((service or {}).get("status", {}).get("loadBalancer", {}).get("ingress") or [{}])[0]
        state[ctx] = {
            "eastwest": (service["metadata"]["uid"], ingress.get("ip")) if service else None,
            "istiod": istiod["metadata"]["uid"] if istiod else None,
            "cacerts": _digest((cacerts or {}).get("data")),
            "remote_secrets": {name: _digest(s["data"]) for name, s in mesh.remote_secrets(ctx).items()},
        }
    return state


def exports(mesh) -> list[str]:
    """The contexts create-remote-secret ran against, oldest first."""
    return [c["context"] for c in mesh.sandbox.istioctl_calls() if c["argv"][1:2] == ["create-remote-secret"]]


def _build_applied_mesh(start, workdir, spare=()):
    """The three-cluster mesh, applied; ``spare`` contexts exist in the sandbox but not in the mesh."""
    mesh = make_mesh(start(CONTEXTS + list(spare)), workdir, NETS)
    _topology(mesh, NETS)
    mesh.apply()
    return mesh


def _applied_mesh(shaped, spare=()):
    """A copy of the applied three-cluster mesh (built once per session, see tests/shapes.py)."""
    return shaped("scenarios" + "".join(f"+{ctx}" for ctx in spare), functools.partial(_build_applied_mesh, spare=spare))


@pytest.fixture
def mesh(shaped):
    return _applied_mesh(shaped)


def installs_since(mesh, count: int) -> list[str]:
    """The contexts whose control plane was installed after the first ``count`` installs."""
    return sorted(c["context"] for c in mesh.control_plane_installs()[count:])


def _edit_base(mesh, old: str, new: str) -> None:
    path = mesh.workdir / "base.yaml"
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new))


def test_base_yaml_change_reinstalls_without_touching_gateways_or_secrets(mesh):
    before, exported, installs = snapshot(mesh), len(exports(mesh)), len(mesh.control_plane_installs())
    _edit_base(mesh, "accessLogFile: /dev/stdout", "accessLogFile: /dev/null")
    plan, count = mesh.run("apply", "--dry-run").stdout, len(mesh.installs())
    mesh.apply_checked()
    after = snapshot(mesh)
    assert sorted(c["context"] for c in mesh.control_plane_installs()[installs:]) == CONTEXTS
    # what apply installed and applied again is what its dry run named, cluster by cluster
    gateways = sorted(c["context"] for c in mesh.installs()[count:] if c not in mesh.control_plane_installs())
    assert gateways == CONTEXTS
    for ctx in CONTEXTS:
        shown = plan.split(f"\n{ctx} (")[1].split("\n\n")[0]
        assert f"~ east-west gateway (overlays/{NAMES[ctx]}-eastwest.yaml): reinstalled as is" in shown, plan
        assert "~ expose services (Gateway cross-network-gateway): applied again" in shown, plan
    for ctx in CONTEXTS:
        mesh_config = yaml.safe_load(mesh.get(ctx, "configmap", "istio", "-n", "istio-system")["data"]["mesh"])
        assert mesh_config["accessLogFile"] == "/dev/null", "the edit reached every cluster"
    assert after == before, "gateways, istiod, cacerts and remote secrets must survive a base.yaml edit"
    assert len(exports(mesh)) == exported, "no remote secret is exported again"


def test_mesh_applied_with_an_unnamed_control_plane_keeps_its_gateways_on_upgrade(mesh):
    """Meshes installed before the control plane's IstioOperator had a name migrate without an outage."""
    for ctx in CONTEXTS:
        name = NAMES[ctx]
        overlay = yaml.safe_load((mesh.workdir / "overlays" / f"{name}.yaml").read_text())
        del overlay["metadata"]["name"]
        unnamed = mesh.workdir / f"{name}-unnamed.yaml"
        unnamed.write_text(yaml.safe_dump(overlay))
        # What earlier versions ran: the unnamed control plane (which prunes the gateway), then the gateway.
        for path in (unnamed, mesh.workdir / "overlays" / f"{name}-eastwest.yaml"):
            done = subprocess.run(["istioctl", "install", "-y", "-f", str(path), "--context", ctx],
                                  env=mesh.env, capture_output=True, text=True, timeout=120)
            assert done.returncode == 0, done.stderr
        mesh.sandbox.kubectl(ctx, "annotate", "--overwrite", "namespace", "istio-system",
                             "setup-mesh.io/applied=from-an-earlier-version")
    before, exported = snapshot(mesh), len(exports(mesh))
    mesh.apply_checked()
    assert snapshot(mesh) == before
    assert len(exports(mesh)) == exported
    for ctx in CONTEXTS:
        labels = mesh.get(ctx, "deployment", "istiod", "-n", "istio-system")["metadata"]["labels"]
        assert labels["install.operator.istio.io/owning-resource"] == "setup-mesh"


def test_contexts_with_a_default_namespace_stay_idempotent_and_leave_nothing_there(sandbox_factory, tmp_path):
    # Many users' contexts name a namespace; istioctl takes create-remote-secret's from the current context.
    namespaces = {ctx: f"team-{ctx[-1]}" for ctx in CONTEXTS}
    sandbox = sandbox_factory(CONTEXTS, namespaces=namespaces)
    mesh = make_mesh(sandbox, tmp_path / "ws", NETS)
    _topology(mesh, NETS)
    mesh.apply()
    assert sorted(exports(mesh)) == CONTEXTS
    before = snapshot(mesh)
    for ctx in CONTEXTS:
        assert sorted(before[ctx]["remote_secrets"]) == sorted(NAMES[p] for p in CONTEXTS if p != ctx)
    mesh.apply()
    assert sorted(exports(mesh)) == CONTEXTS, "a re-apply exports nothing again"
    assert snapshot(mesh) == before
    for ctx in CONTEXTS:
        for namespace in namespaces.values():
            accounts = mesh.get(ctx, "serviceaccounts", "-n", namespace)["items"]
            assert [a["metadata"]["name"] for a in accounts if "istio" in a["metadata"]["name"]] == []
            assert mesh.get(ctx, "clusterrole", f"istio-reader-clusterrole-{namespace}", check=False) is None


def test_teardown_keeps_other_peoples_istio_configuration(mesh):
    sandbox = mesh.sandbox
    sandbox.kubectl("ctx-a", "create", "namespace", "shop")
    sandbox.kubectl("ctx-a", "apply", "-f", "-", stdin=FOREIGN_VS)
    sandbox.kubectl("ctx-b", "apply", "-f", "-", stdin=FOREIGN_PA)
    # What users keep in istio-system besides Istio: a gateway's TLS secret, their own settings.
    sandbox.kubectl("ctx-a", "create", "secret", "generic", "my-ingress-cert", "-n", "istio-system", "--from-literal=k=v")
    sandbox.kubectl("ctx-a", "create", "configmap", "my-settings", "-n", "istio-system", "--from-literal=k=v")
    plan = mesh.run("teardown", "--dry-run")
    assert "ctx-a: keeps namespace istio-system: it holds what setup-mesh and Istio did not make: ConfigMap " \
           "my-settings, Secret my-ingress-cert" in " ".join(plan.stdout.split()), plan.stdout
    result = mesh.run("teardown", "-y")
    assert result.returncode == 0, result.stdout + result.stderr
    said = " ".join((result.stdout + result.stderr).split())
    assert "ctx-a: keeps Istio's CRDs" in said and "1 VirtualService in shop" in said and "--remove-crds" in said
    assert "ctx-b: keeps Istio's CRDs and namespace istio-system" in said
    assert "ctx-c: keeps" not in said
    for ctx in ("ctx-a", "ctx-b"):  # kept, with nothing of setup-mesh's on it
        annotations = mesh.get(ctx, "namespace", "istio-system")["metadata"].get("annotations") or {}
        assert not [key for key in annotations if key.startswith("setup-mesh.io/")], annotations
    assert mesh.get("ctx-a", "secret", "my-ingress-cert", "-n", "istio-system")["data"] == {"k": "dg=="}
    assert mesh.get("ctx-a", "configmap", "my-settings", "-n", "istio-system")["data"] == {"k": "v"}
    again = mesh.run("teardown", "-y")  # nothing of setup-mesh's is left anywhere: no step, no question
    assert again.returncode == 0, again.stdout + again.stderr
    assert "nothing to remove: no cluster holds what setup-mesh creates" in again.stdout, again.stdout
    for ctx in CONTEXTS:
        for kind, name in (("deployment", "istiod"), ("service", "istio-eastwestgateway"), ("secret", "cacerts")):
            assert mesh.get(ctx, kind, name, "-n", "istio-system", check=False) is None, (ctx, kind)
        assert mesh.remote_secrets(ctx) == {}
    for ctx in ("ctx-a", "ctx-b"):  # the CRDs stayed: setup-mesh's own Gateway went nonetheless
        assert sandbox.kubectl(ctx, "get", "gateways.networking.istio.io", "-A", "-o", "name").stdout.strip() == ""
    assert mesh.get("ctx-a", "virtualservice", "reviews", "-n", "shop")["spec"]["hosts"] == ["reviews"]
    assert mesh.get("ctx-b", "peerauthentication", "default", "-n", "istio-system")["spec"]["mtls"]["mode"] == "STRICT"
    crds = {ctx: sandbox.kubectl(ctx, "get", "crd", "-o", "name").stdout for ctx in CONTEXTS}
    assert "virtualservices.networking.istio.io" in crds["ctx-a"] and "istio.io" in crds["ctx-b"]
    assert "istio.io" not in crds["ctx-c"], "nobody else used Istio there: its CRDs go"
    assert mesh.get("ctx-c", "namespace", "istio-system", check=False) is None
    assert [c["argv"] for c in sandbox.istioctl_calls() if "--purge" in c["argv"]] == [
        ["istioctl", "uninstall", "--purge", "-y", "--context", "ctx-c"]]


def test_one_clusters_network_changes_only_that_cluster(mesh):
    before, exported, installs = snapshot(mesh), len(exports(mesh)), len(mesh.control_plane_installs())
    networks = {**NETS, "ctx-b": "network2"}
    _topology(mesh, networks)
    mesh.apply_checked()
    after = snapshot(mesh)
    assert installs_since(mesh, installs) == ["ctx-b"]
    assert mesh.get("ctx-b", "namespace", "istio-system")["metadata"]["labels"]["topology.istio.io/network"] == "network2"
    service = mesh.get("ctx-b", "service", "istio-eastwestgateway", "-n", "istio-system")
    assert service["metadata"]["labels"]["topology.istio.io/network"] == "network2"
    assert after == before, "the gateway is updated in place: same Service, same address; nothing else moves"
    assert len(exports(mesh)) == exported


def test_down_to_one_network_and_back_keeps_control_planes_and_secrets(mesh):
    before, exported = snapshot(mesh), len(exports(mesh))
    _topology(mesh, {ctx: "network1" for ctx in CONTEXTS})
    mesh.apply_checked()
    single = snapshot(mesh)
    for ctx in CONTEXTS:
        assert single[ctx]["eastwest"] is None, "one network needs no east-west gateway"
        assert {k: v for k, v in single[ctx].items() if k != "eastwest"} == \
            {k: v for k, v in before[ctx].items() if k != "eastwest"}
    _topology(mesh, NETS)  # a second network again
    mesh.apply_checked()
    again = snapshot(mesh)
    for ctx in CONTEXTS:
        assert again[ctx]["eastwest"] is not None and again[ctx]["eastwest"][1], "every cluster has a gateway address"
        assert again[ctx]["istiod"] == before[ctx]["istiod"] and again[ctx]["cacerts"] == before[ctx]["cacerts"]
        assert again[ctx]["remote_secrets"] == before[ctx]["remote_secrets"]
    assert len(exports(mesh)) == exported, "networks come and go without new remote secrets"


def test_a_cluster_added_then_removed_touches_only_what_concerns_it(shaped):
    mesh = _applied_mesh(shaped, spare=["ctx-d"])
    before, exported, installs = snapshot(mesh), len(exports(mesh)), len(mesh.control_plane_installs())
    _topology(mesh, {**NETS, "ctx-d": "network2"})
    mesh.apply_checked()  # each step: the dry run named it all, then healthy
    grown = snapshot(mesh, CONTEXTS + ["ctx-d"])
    assert installs_since(mesh, installs) == ["ctx-d"]
    assert exports(mesh)[exported:] == ["ctx-d"], "the others' secrets are copied, not made again"
    for ctx in CONTEXTS:
        assert {k: v for k, v in grown[ctx].items() if k != "remote_secrets"} == \
            {k: v for k, v in before[ctx].items() if k != "remote_secrets"}
        secrets = dict(grown[ctx]["remote_secrets"])
        assert secrets.pop("delta") and secrets == before[ctx]["remote_secrets"]
    assert sorted(grown["ctx-d"]["remote_secrets"]) == ["alpha", "beta", "gamma"]

    _topology(mesh, NETS)
    mesh.apply_checked()
    assert snapshot(mesh) == before, "removing it takes its secrets and nothing else"
    assert mesh.get("ctx-d", "namespace", "istio-system", check=False) is None
    assert len(exports(mesh)) == exported + 1


def test_a_new_api_server_re_exports_that_clusters_secret_only(mesh):
    before, exported, installs = snapshot(mesh), len(exports(mesh)), len(mesh.control_plane_installs())
    address = mesh.sandbox.api_server("ctx-a")  # one the peers reach: status then calls the mesh healthy
    _topology(mesh, NETS, extra={"ctx-a": {"api_server": address}})
    mesh.apply_checked()
    after = snapshot(mesh)
    assert exports(mesh)[exported:] == ["ctx-a"]
    assert installs_since(mesh, installs) == []
    for ctx in ("ctx-b", "ctx-c"):
        server = mesh.secret_kubeconfig(mesh.remote_secrets(ctx)["alpha"])["clusters"][0]["cluster"]["server"]
        assert server == address
        assert after[ctx]["remote_secrets"]["alpha"] != before[ctx]["remote_secrets"]["alpha"]
    for ctx in CONTEXTS:
        assert {k: v for k, v in after[ctx].items() if k != "remote_secrets"} == \
            {k: v for k, v in before[ctx].items() if k != "remote_secrets"}
        assert {n: d for n, d in after[ctx]["remote_secrets"].items() if n != "alpha"} == \
            {n: d for n, d in before[ctx]["remote_secrets"].items() if n != "alpha"}


def test_re_apply_after_a_failed_run_repairs_only_what_failed(mesh):
    before, exported, installs = snapshot(mesh), len(exports(mesh)), len(mesh.control_plane_installs())
    _edit_base(mesh, "accessLogFile: /dev/stdout", "accessLogFile: /dev/null")
    failed = mesh.apply(env={"ISTIOCTL_STANDIN_FAIL": "ctx-b/install"}, ok=False)
    assert failed.returncode == 1 and "ctx-b" in failed.stdout + failed.stderr
    first = installs_since(mesh, installs)
    assert sorted(set(first)) == CONTEXTS
    mesh.apply_checked()
    assert installs_since(mesh, installs + len(first)) == ["ctx-b"], "the repair re-does only the failed cluster"
    mesh_config = yaml.safe_load(mesh.get("ctx-b", "configmap", "istio", "-n", "istio-system")["data"]["mesh"])
    assert mesh_config["accessLogFile"] == "/dev/null"
    assert snapshot(mesh) == before
    assert len(exports(mesh)) == exported


# --- a mesh with a remote: ctx-b is run by ctx-a's istiod; ctx-c is a primary on network2 ------------

def _with_primaries(mesh, primaries: dict[str, str]) -> None:
    """topology.yaml with these remotes (context -> its primary), and API servers peers can reach, so that
    status can judge the remote secrets."""
    _topology(mesh, NETS, extra={ctx: {"api_server": mesh.sandbox.api_server(ctx),
                                       **({"primary": primaries[ctx]} if ctx in primaries else {})}
                                 for ctx in CONTEXTS})


def _build_remote_mesh(start, workdir):
    mesh = make_mesh(start(CONTEXTS), workdir, NETS)
    _with_primaries(mesh, {"ctx-b": "ctx-a"})
    mesh.apply()
    return mesh


@pytest.fixture
def remote_mesh(shaped):
    return shaped("scenarios-remote", _build_remote_mesh)


def _remote_of(mesh, ctx: str) -> tuple[str | None, str | None]:
    """(the cluster named by the controlPlaneClusters annotation, the address its last install points at)."""
    namespace = mesh.get(ctx, "namespace", "istio-system")["metadata"]
    install = [c for c in mesh.control_plane_installs() if c["context"] == ctx][-1]["merged"]["spec"]
    return ((namespace.get("annotations") or {}).get("topology.istio.io/controlPlaneClusters"),
            install["values"].get("global", {}).get("remotePilotAddress"))


def _istiod_exposed(mesh, ctx: str) -> bool:
    return mesh.get(ctx, "gateways.networking.istio.io", "istiod-gateway", "-n", "istio-system", check=False) is not None


def test_base_yaml_edit_with_a_remote_keeps_gateways_secrets_and_the_remote_link(remote_mesh):
    mesh = remote_mesh
    before, exported, installs = snapshot(mesh), len(exports(mesh)), len(mesh.control_plane_installs())
    assert before["ctx-b"]["istiod"] is None and before["ctx-b"]["remote_secrets"] == {}
    _edit_base(mesh, "accessLogFile: /dev/stdout", "accessLogFile: /dev/null")
    mesh.apply_checked()
    assert installs_since(mesh, installs) == CONTEXTS
    assert snapshot(mesh) == before, "gateways, istiod, cacerts and remote secrets survive a base.yaml edit"
    assert len(exports(mesh)) == exported
    assert _remote_of(mesh, "ctx-b") == ("alpha", before["ctx-a"]["eastwest"][1])
    assert _istiod_exposed(mesh, "ctx-a") and not _istiod_exposed(mesh, "ctx-c")


def test_a_remote_moved_to_another_primary_keeps_both_primaries_gateways(remote_mesh):
    mesh = remote_mesh
    before, exported = snapshot(mesh), len(exports(mesh))
    _with_primaries(mesh, {"ctx-b": "ctx-c"})
    plan = mesh.run("apply", "--dry-run")
    assert "ctx-b (network1, remote of ctx-c): change" in plan.stdout, plan.stdout
    mesh.apply_checked()
    after = snapshot(mesh)
    assert _remote_of(mesh, "ctx-b") == ("gamma", before["ctx-c"]["eastwest"][1])
    assert _istiod_exposed(mesh, "ctx-c") and not _istiod_exposed(mesh, "ctx-a")
    # ctx-b's network has no primary of its own now: it gets an east-west gateway; nothing else moves.
    assert after["ctx-b"]["eastwest"] is not None
    assert {k: v for k, v in after["ctx-b"].items() if k != "eastwest"} == \
        {k: v for k, v in before["ctx-b"].items() if k != "eastwest"}
    assert {ctx: after[ctx] for ctx in ("ctx-a", "ctx-c")} == {ctx: before[ctx] for ctx in ("ctx-a", "ctx-c")}
    assert len(exports(mesh)) == exported, "every primary already held the remote's secret"
    mesh.apply()
    assert snapshot(mesh) == after, "a re-run converges"
    status = mesh.run("status")
    assert status.returncode == 0, status.stdout + status.stderr


def test_a_remote_moved_while_its_old_primarys_install_fails_has_that_exposure_removed_by_the_next_apply(remote_mesh):
    # The remote moves in the failed run: no remote names ctx-a any more when the next apply reads, and its
    # istiod must not stay exposed through its east-west gateway.
    mesh = remote_mesh
    _with_primaries(mesh, {"ctx-b": "ctx-c"})
    failed = mesh.apply(env={"ISTIOCTL_STANDIN_FAIL": "ctx-a/install"}, ok=False)
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert _remote_of(mesh, "ctx-b")[0] == "gamma" and _istiod_exposed(mesh, "ctx-a")
    plan = mesh.run("apply", "--dry-run")
    assert "ctx-a (network1, primary): change" in plan.stdout and "istiod" in plan.stdout.split("ctx-a (")[1].split("\n\n")[0], plan.stdout
    mesh.apply_checked()
    assert not _istiod_exposed(mesh, "ctx-a") and _istiod_exposed(mesh, "ctx-c")
    assert mesh.run("apply", "--dry-run").stdout.count("unchanged") == 1, "a re-run converges"


def _gateway_injected(mesh, ctx: str) -> None:
    """The cluster's east-west gateway runs pods that its injector admitted (it trusts its control plane)."""
    deployment = mesh.get(ctx, "deployment", "istio-eastwestgateway", "-n", "istio-system")
    assert deployment["status"].get("availableReplicas") == 1, deployment["status"]
    hooks = mesh.get(ctx, "mutatingwebhookconfiguration", "istio-sidecar-injector")["webhooks"]
    assert all(h["clientConfig"].get("caBundle") for h in hooks)


def _before_gateway(output: str, ctx: str, primary: str) -> None:
    """In apply's progress, ``primary`` imported ``ctx``'s secret before ``ctx``'s gateway was installed."""
    gateway = output.find(f" {ctx}: install east-west gateway ...")
    imported = output.find(f" {primary}: import ")
    assert 0 <= imported < gateway, output


def test_a_remote_moved_to_a_network_of_its_own_gets_a_gateway_and_nothing_else_moves(remote_mesh):
    mesh = remote_mesh
    before, exported = snapshot(mesh), len(exports(mesh))
    assert before["ctx-b"]["eastwest"] is None
    _topology(mesh, {**NETS, "ctx-b": "network3"}, extra={
        ctx: {"api_server": mesh.sandbox.api_server(ctx), **({"primary": "ctx-a"} if ctx == "ctx-b" else {})}
        for ctx in CONTEXTS})
    mesh.apply_checked("--timeout", "60")
    after = snapshot(mesh)
    _gateway_injected(mesh, "ctx-b")
    assert after["ctx-b"]["eastwest"] is not None and after["ctx-b"]["istiod"] is None
    assert after["ctx-b"]["cacerts"] == before["ctx-b"]["cacerts"]
    assert {ctx: after[ctx] for ctx in ("ctx-a", "ctx-c")} == {ctx: before[ctx] for ctx in ("ctx-a", "ctx-c")}
    assert len(exports(mesh)) == exported, "the primaries already held the remote's current secret"
    status = mesh.run("status")
    assert status.returncode == 0, status.stdout + status.stderr


def test_a_primary_turned_into_a_remote_on_its_network_keeps_its_gateway(remote_mesh):
    mesh = remote_mesh
    before, exported = snapshot(mesh), len(exports(mesh))
    _with_primaries(mesh, {"ctx-b": "ctx-a", "ctx-c": "ctx-a"})
    mesh.apply_checked("--timeout", "60")
    after = snapshot(mesh)
    assert _remote_of(mesh, "ctx-c") == ("alpha", before["ctx-a"]["eastwest"][1])
    assert after["ctx-c"]["istiod"] is None, "a remote runs no istiod"
    assert after["ctx-c"]["eastwest"] == before["ctx-c"]["eastwest"], "its gateway Service keeps its UID and address"
    assert after["ctx-c"]["cacerts"] == before["ctx-c"]["cacerts"]
    assert after["ctx-a"] == before["ctx-a"]
    _gateway_injected(mesh, "ctx-c")
    assert len(exports(mesh)) == exported, "ctx-a already held ctx-c's current secret"
    status = mesh.run("status")
    assert status.returncode == 0, status.stdout + status.stderr


def test_a_remote_with_its_own_network_added_to_a_running_mesh(shaped):
    mesh = _applied_mesh(shaped, spare=["ctx-d"])
    before, exported = snapshot(mesh), len(exports(mesh))
    networks = {**NETS, "ctx-d": "network3"}
    # the new remote's API server is one its primary reaches; the others' secrets stay as they are
    _topology(mesh, networks, extra={"ctx-d": {"api_server": mesh.sandbox.api_server("ctx-d"), "primary": "ctx-c"}})
    result = mesh.apply_checked("--timeout", "60")
    _before_gateway(result.stdout, "ctx-d", "ctx-c")
    _gateway_injected(mesh, "ctx-d")
    after = snapshot(mesh, CONTEXTS)
    for ctx in CONTEXTS:
        assert {k: v for k, v in after[ctx].items() if k != "remote_secrets"} == \
            {k: v for k, v in before[ctx].items() if k != "remote_secrets"}
        assert {n: d for n, d in after[ctx]["remote_secrets"].items() if n != "delta"} == before[ctx]["remote_secrets"]
    assert exports(mesh)[exported:] == ["ctx-d"], "only the new remote's secret is made"
    # (the first three clusters' secrets name loopback API servers, which status reports on its own)
    status = json.loads(mesh.run("status", "-o", "json").stdout)
    assert [c["problems"] for c in status["clusters"] if c["context"] == "ctx-d"] == [[]]


def _codes(status: dict) -> dict[str, list[tuple[str, str]]]:
    return {c["context"]: [(p["code"], p["message"]) for p in c["problems"]] for c in status["clusters"]}


def test_istio_objects_deleted_by_hand_are_reported_and_applied_again_alone(remote_mesh):
    # Remotes reach ctx-a's istiod through istiod-gateway and istiod-vs; each network's services cross
    # through the cross-network Gateway. Deleted (by hand, or by a tool pruning what it did not make), they
    # must not be called healthy, and apply brings back exactly them.
    mesh = remote_mesh
    before, exported, installs = snapshot(mesh), len(exports(mesh)), len(mesh.installs())
    mesh.kubectl("ctx-a", "delete", "virtualservices.networking.istio.io", "istiod-vs", "-n", "istio-system")
    mesh.kubectl("ctx-c", "delete", "gateways.networking.istio.io", "cross-network-gateway", "-n", "istio-system")
    status = mesh.run("status", "-o", "json")
    assert status.returncode == 1, status.stdout + status.stderr
    codes = _codes(json.loads(status.stdout))
    assert [c for c, _ in codes["ctx-a"]] == ["istio_objects_missing"] and "VirtualService istiod-vs" in codes["ctx-a"][0][1]
    assert [c for c, _ in codes["ctx-c"]] == ["istio_objects_missing"] and \
        "Gateway cross-network-gateway" in codes["ctx-c"][0][1]
    assert codes["ctx-b"] == [], "a remote holds none of them"
    plan = mesh.run("apply", "--dry-run")
    sections = plan_sections(plan.stdout)
    assert "+ expose istiod (Gateway istiod-gateway, VirtualService istiod-vs): VirtualService istiod-vs missing" in \
        "\n".join(sections["ctx-a"]), plan.stdout
    assert "Gateway cross-network-gateway missing" in "\n".join(sections["ctx-c"]), plan.stdout
    assert "install" not in "\n".join(sections["ctx-a"] + sections["ctx-c"]), plan.stdout
    assert "ctx-b" not in sections, plan.stdout
    done = mesh.results(mesh.apply_checked().stdout)
    assert done == {"ctx-a": "VirtualService istiod-vs applied again", "ctx-b": "unchanged",
                    "ctx-c": "Gateway cross-network-gateway applied again"}, done
    assert len(mesh.installs()) == installs and len(exports(mesh)) == exported, "nothing installed or exported again"
    assert snapshot(mesh) == before, "gateways (UID, address), istiod, cacerts and remote secrets untouched"
    assert _istiod_exposed(mesh, "ctx-a")
    assert mesh.get("ctx-a", "virtualservices.networking.istio.io", "istiod-vs", "-n", "istio-system")
    assert mesh.get("ctx-c", "gateways.networking.istio.io", "cross-network-gateway", "-n", "istio-system")
    assert all(problems == [] for problems in _codes(json.loads(mesh.run("status", "-o", "json").stdout)).values())
    assert "unchanged: ctx-a, ctx-b, ctx-c" in mesh.run("apply", "--dry-run").stdout, "a re-run converges"


def test_a_remote_removed_takes_its_secrets_and_its_primarys_istiod_exposure(remote_mesh):
    mesh = remote_mesh
    before, exported = snapshot(mesh), len(exports(mesh))
    mesh.write_topology({"ctx-a": "network1", "ctx-c": "network2"},
                        extra={ctx: {"cluster_name": NAMES[ctx], "api_server": mesh.sandbox.api_server(ctx)}
                               for ctx in ("ctx-a", "ctx-c")})
    mesh.apply_checked()
    after = snapshot(mesh, ["ctx-a", "ctx-c"])
    assert mesh.get("ctx-b", "namespace", "istio-system", check=False) is None
    assert not _istiod_exposed(mesh, "ctx-a")
    for ctx in ("ctx-a", "ctx-c"):
        assert "beta" not in after[ctx]["remote_secrets"]
        assert {k: v for k, v in after[ctx].items() if k != "remote_secrets"} == \
            {k: v for k, v in before[ctx].items() if k != "remote_secrets"}
        assert after[ctx]["remote_secrets"] == {n: d for n, d in before[ctx]["remote_secrets"].items() if n != "beta"}
    assert len(exports(mesh)) == exported


# --- somebody's own CA in a cluster ---------------------------------------------------------------

def _own_ca(mesh, tmp_path) -> dict[str, str]:
    """An intermediate CA under a root of the user's own, made with the release's Makefile: cacerts files."""
    makefile = mesh.sandbox.istio_dir / "tools" / "certs" / "Makefile.selfsigned.mk"
    own = make_other_ca(makefile, tmp_path / "own-ca", "own", "ROOTCA_ORG=Own Org")
    return {name: str(own / name) for name in ("ca-cert.pem", "ca-key.pem", "root-cert.pem", "cert-chain.pem")}


def _put_cacerts(mesh, ctx: str, files: dict[str, str]) -> None:
    mesh.sandbox.kubectl(ctx, "create", "namespace", "istio-system", check=False)
    mesh.sandbox.kubectl(ctx, "delete", "secret", "cacerts", "-n", "istio-system", "--ignore-not-found")
    mesh.sandbox.kubectl(ctx, "create", "secret", "generic", "cacerts", "-n", "istio-system",
                         *(f"--from-file={name}={path}" for name, path in files.items()))


def _writes(mesh, since: dict[str, int]) -> dict[str, list]:
    """Each cluster's requests that change something, since ``since`` (request counts per context)."""
    return {ctx: [r for r in mesh.sandbox.requests(ctx)[since[ctx]:] if r["method"] not in ("GET", "HEAD")]
            for ctx in since}


def test_a_cluster_with_its_own_ca_is_refused_and_replaced_only_with_the_option(sandbox_factory, tmp_path):
    sandbox = sandbox_factory(CONTEXTS)
    mesh = make_mesh(sandbox, tmp_path / "ws", NETS)
    _topology(mesh, NETS)
    own = _own_ca(mesh, tmp_path)
    _put_cacerts(mesh, "ctx-c", own)
    theirs = _digest(mesh.get("ctx-c", "secret", "cacerts", "-n", "istio-system")["data"])

    plan = mesh.run("apply", "--dry-run")
    assert plan.returncode == 2, plan.stdout + plan.stderr
    assert "ctx-c: secret cacerts chains to root " in plan.stdout and "not made by setup-mesh: CA " in plan.stdout
    assert "O=Own Org" in plan.stdout
    refused = mesh.run("apply", "-y")  # -y answers questions; it does not replace somebody's CA
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert "chains to another root than this workspace's in ctx-c" in refused.stderr
    assert "--replace-foreign-ca" in refused.stderr
    assert _digest(mesh.get("ctx-c", "secret", "cacerts", "-n", "istio-system")["data"]) == theirs
    assert mesh.control_plane_installs() == [], "nothing was installed anywhere"

    replaced = mesh.apply_checked("--replace-foreign-ca")  # the dry run with the option names the replacement
    assert "mTLS between workloads breaks until every workload restarts" in replaced.stdout
    secret = mesh.get("ctx-c", "secret", "cacerts", "-n", "istio-system")
    assert _digest(secret["data"]) != theirs
    assert secret["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "setup-mesh"
    before = snapshot(mesh)
    mesh.run("apply")  # nothing to ask about any more: no prompt, no change
    assert snapshot(mesh) == before


def test_a_mesh_of_another_workspaces_root_is_refused_from_a_second_workspace(mesh, tmp_path):
    second = make_mesh(mesh.sandbox, tmp_path / "ws2", NETS)  # its own root, same clusters
    _topology(second, NETS)
    before, installs = snapshot(mesh), len(mesh.installs())
    counts = {ctx: len(mesh.sandbox.requests(ctx)) for ctx in CONTEXTS}

    plan = second.run("apply", "--dry-run")
    refused = second.run("apply", "-y")
    for result in (plan, refused):
        assert result.returncode == 2, result.stdout + result.stderr
        assert "chains to another root than this workspace's in ctx-a, ctx-b, ctx-c" in result.stderr
    first_root = (mesh.workdir / "certs" / "root-cert.pem").read_bytes()
    second_root = (second.workdir / "certs" / "root-cert.pem").read_bytes()
    from lib.certs import read_cert
    for root in (first_root, second_root):  # the plan names both roots, by subject and fingerprint
        info = read_cert(root)
        assert f"{info.subject} (SHA-256 {info.fingerprint})" in plan.stdout, plan.stdout
    assert "made by setup-mesh from another workspace or an earlier root" in plan.stdout
    # status from the second workspace: one cause for the whole mesh, in words true of it (its clusters
    # trust each other; it is this workspace that does not hold their root)
    seen = second.run("status", env={"COLUMNS": "160"})
    causes = [line for line in seen.stdout.splitlines() if "another root" in line]
    assert causes == ["✗ ctx-a, ctx-b, ctx-c: secret cacerts chains to another root than this workspace's, the same "
                      "in every cluster: the mesh runs on a root this workspace does not hold"], seen.stdout
    assert "not trusted by" not in seen.stdout
    assert snapshot(mesh) == before and len(mesh.installs()) == installs
    assert _writes(mesh, counts) == {ctx: [] for ctx in CONTEXTS}, "refused before any cluster was touched"
    # the move to this workspace's root (tests/test_rotation.py) asks first: unasked, nothing changes
    move = second.run("rotate-certs", "--root")
    assert move.returncode == 2 and "Bring ctx-a, ctx-b, ctx-c to stage 1 of 3?" in move.stderr, move.stderr
    assert not (second.workdir / "certs-next").exists() and not (second.workdir / "certs-former").exists()
    assert snapshot(mesh) == before and _writes(mesh, counts) == {ctx: [] for ctx in CONTEXTS}
    assert mesh.run("apply").returncode == mesh.applied_code(), "the first workspace still owns the mesh"


def test_teardown_keeps_a_cacerts_it_did_not_make_and_its_namespace(mesh, tmp_path):
    _put_cacerts(mesh, "ctx-c", _own_ca(mesh, tmp_path))  # e.g. the user's CA, put back after apply
    theirs = _digest(mesh.get("ctx-c", "secret", "cacerts", "-n", "istio-system")["data"])
    result = mesh.run("teardown", "-y")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ctx-c: keeps secret cacerts and namespace istio-system: that cacerts was not made by setup-mesh" \
        in result.stdout + result.stderr
    assert _digest(mesh.get("ctx-c", "secret", "cacerts", "-n", "istio-system")["data"]) == theirs
    assert mesh.remote_secrets("ctx-c") == {}
    for ctx in ("ctx-a", "ctx-b"):
        assert mesh.get(ctx, "namespace", "istio-system", check=False) is None


# --- identity edits: a cluster's name, the mesh's id ---------------------------------------------

def test_a_renamed_cluster_is_reinstalled_under_its_new_name_and_its_old_secrets_go(mesh):
    before, exported, installs = snapshot(mesh), len(exports(mesh)), len(mesh.control_plane_installs())
    renamed = {**NAMES, "ctx-c": "gamma2"}
    mesh.write_topology(NETS, extra={ctx: {"cluster_name": renamed[ctx]} for ctx in NETS})
    mesh.apply_checked()
    after = snapshot(mesh)
    assert installs_since(mesh, installs) == ["ctx-c"], "only the renamed cluster's control plane changes"
    values = [c for c in mesh.control_plane_installs() if c["context"] == "ctx-c"][-1]["merged"]["spec"]["values"]
    assert values["global"]["multiCluster"]["clusterName"] == "gamma2"
    assert exports(mesh)[exported:] == ["ctx-c"], "its secret is made again under the new name, no other"
    for ctx in ("ctx-a", "ctx-b"):
        assert sorted(after[ctx]["remote_secrets"]) == sorted(n for c, n in renamed.items() if c not in (ctx, "ctx-d"))
        assert {n: d for n, d in after[ctx]["remote_secrets"].items() if n != "gamma2"} == \
            {n: d for n, d in before[ctx]["remote_secrets"].items() if n != "gamma"}
    for ctx in CONTEXTS:
        assert after[ctx]["eastwest"] == before[ctx]["eastwest"], "gateway Services keep their UID and address"
        assert after[ctx]["istiod"] == before[ctx]["istiod"]
    assert [ctx for ctx in CONTEXTS if after[ctx]["cacerts"] != before[ctx]["cacerts"]] == ["ctx-c"], \
        "an intermediate CA of its own under the new name"
    status = json.loads(mesh.run("status", "-o", "json").stdout)
    assert {c["context"]: c["stale_secrets"] for c in status["clusters"]} == {ctx: [] for ctx in CONTEXTS}


def test_a_new_mesh_id_reinstalls_every_control_plane_and_keeps_gateways_and_secrets(mesh):
    before, exported, installs = snapshot(mesh), len(exports(mesh)), len(mesh.control_plane_installs())
    mesh.write_topology(NETS, mesh_id="mesh2", extra={ctx: {"cluster_name": NAMES[ctx]} for ctx in NETS})
    mesh.apply_checked()
    assert installs_since(mesh, installs) == CONTEXTS
    for ctx in CONTEXTS:
        values = [c for c in mesh.control_plane_installs() if c["context"] == ctx][-1]["merged"]["spec"]["values"]
        assert values["global"]["meshID"] == "mesh2"
    assert snapshot(mesh) == before
    assert len(exports(mesh)) == exported
