"""Traffic in an ambient mesh on the sandbox (tests/sandbox/ambientmodel.py): three clusters on two networks
built by apply; verify passes, and names what breaks it (the east-west Gateway of a network gone) with
ztunnel's words, never a sidecar's."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.meshkit import make_mesh

THREE = {"cluster1": "network1", "cluster2": "network1", "cluster3": "network2"}
CRDS = Path(__file__).parent / "gateway-api" / "standard-v1.4.0.yaml"
EW = "istio-eastwestgateway"
NS = "istio-system"
VERIFY_NS = "setup-mesh-verify"


class AmbientMesh:
    def __init__(self, mesh):
        self.mesh = mesh

    def apply(self):
        return self.mesh.apply("--gateway-api-crds", str(CRDS), "--gateway-timeout", "30")

    def verify(self, *args: str) -> tuple[int, dict]:
        result = self.mesh.run("verify", "-o", "json", *args)
        assert result.returncode in (0, 1), result.stdout + result.stderr
        return result.returncode, json.loads(result.stdout)


@pytest.fixture(scope="module")
def ambient(tmp_path_factory):
    from tests.sandbox import Sandbox

    root = tmp_path_factory.mktemp("ambient-traffic")
    sandbox = Sandbox.up(root / "sandbox", list(THREE), lb_delay=0.3)
    try:
        mesh = make_mesh(sandbox, root / "ws", THREE)
        mesh.write_topology(THREE, extra={ctx: {"api_server": sandbox.api_server(ctx)} for ctx in THREE})
        base = mesh.workdir / "base.yaml"
        base.write_text(base.read_text().replace("profile: default", "profile: ambient"))
        built = AmbientMesh(mesh)
        built.apply()
        yield built
    finally:
        sandbox.down()


def _failed(doc: dict) -> dict[tuple[str, str], list[dict]]:
    return {(p["from"], p["to"]): p["causes"] for p in doc["pairs"] if not p["reached"]}


def test_a_healthy_ambient_mesh_passes_verify(ambient):
    code, doc = ambient.verify()
    assert code == 0 and doc["ok"], _failed(doc) or doc["problems"]
    assert all(p["reached"] and p["answers"] > 0 for p in doc["pairs"]) and len(doc["pairs"]) == 9


def test_without_the_east_west_gateway_of_a_network_verify_names_it(ambient):
    mesh = ambient.mesh
    mesh.kubectl("cluster3", "delete", "gateways.gateway.networking.k8s.io", EW, "-n", NS)
    code, doc = ambient.verify()
    assert code == 1
    failed = _failed(doc)
    # network2 has no way in; network1's gateways still take cluster3's calls
    assert set(failed) == {("cluster1", "cluster3"), ("cluster2", "cluster3")}, failed
    for causes in failed.values():
        cause = next(c for c in causes if c["code"] == "eastwest_gateway_missing")
        assert "cluster3's east-west Gateway" in cause["message"] and "network2" in cause["message"]
        assert "istioctl ztunnel-config" in cause["hint"]
        assert "kubectl --context cluster3 get gateways.gateway.networking.k8s.io" in cause["hint"]
        text = json.dumps(causes)
        assert "sidecar" not in text and "proxy-config" not in text, text

    table = mesh.run("verify")
    assert table.returncode == 1
    assert "cluster1 -> cluster3: eastwest_gateway_missing" in table.stdout

    ambient.apply()  # apply puts the Gateway back
    code, doc = ambient.verify()
    assert code == 0, _failed(doc)
