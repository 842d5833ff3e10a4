"""A running multi-network mesh under the edits users make: what must change, and what must not.

Every scenario starts from an applied mesh of three clusters on two networks whose Istio cluster
names differ from their kube context names. After the edit and a re-apply it checks that the mesh
was not disrupted: the east-west gateway Service keeps its UID and address (a new one is a
cross-network outage and a new public IP), istiod's Deployment keeps its UID, cacerts is untouched
and no remote secret is exported again unless its credentials changed.
"""
from __future__ import annotations

import hashlib
import json
import subprocess

import pytest
import yaml

from tests.meshkit import make_mesh

CONTEXTS = ["ctx-a", "ctx-b", "ctx-c"]
NAMES = {"ctx-a": "alpha", "ctx-b": "beta", "ctx-c": "gamma"}
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


@pytest.fixture
def mesh(sandbox_factory, tmp_path):
    sandbox = sandbox_factory(CONTEXTS)
    mesh = make_mesh(sandbox, tmp_path / "ws", NETS)
    _topology(mesh, NETS)
    mesh.apply()
    return mesh


def _edit_base(mesh, old: str, new: str) -> None:
    path = mesh.workdir / "base.yaml"
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new))


def test_base_yaml_change_reinstalls_without_touching_gateways_or_secrets(mesh):
    before, exported, installs = snapshot(mesh), len(exports(mesh)), len(mesh.control_plane_installs())
    _edit_base(mesh, "accessLogFile: /dev/stdout", "accessLogFile: /dev/null")
    mesh.apply()
    after = snapshot(mesh)
    assert sorted(c["context"] for c in mesh.control_plane_installs()[installs:]) == CONTEXTS
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
    mesh.apply()
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
