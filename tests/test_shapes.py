"""A saved sandbox restored, and mesh shapes built once and copied: a copy must be the original to every client."""
from __future__ import annotations

import base64
import socket
import time
import urllib.error
import urllib.request

from tests.meshkit import make_mesh
from tests.sandbox import Sandbox, reserve_port

LB_SERVICE = """apiVersion: v1
kind: Service
metadata: {name: edge, namespace: shop}
spec: {type: LoadBalancer, selector: {app: edge}, ports: [{port: 80}]}
"""
TOKEN_SECRET = """apiVersion: v1
kind: Secret
metadata: {name: reader-token, namespace: shop, annotations: {kubernetes.io/service-account.name: reader}}
type: kubernetes.io/service-account-token
"""


def _lb_address(sandbox: Sandbox, ctx: str, name: str) -> str:
    deadline = time.monotonic() + 60
    while True:
        service = sandbox.get_json(ctx, "service", name, "-n", "shop")
        ingress = (service.get("status", {}).get("loadBalancer") or {}).get("ingress")
        if ingress or time.monotonic() > deadline:
            return ingress[0]["ip"]
        time.sleep(0.05)


def _status_with_token(sandbox: Sandbox, ctx: str, token: str) -> int:
    request = urllib.request.Request(sandbox.plain_url(ctx) + "/api/v1/namespaces/shop/services",
                                     headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code


def _refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except ConnectionRefusedError:
        return True
    return False


def test_a_restored_sandbox_is_the_saved_one_to_every_client(tmp_path, kubectl_bin):
    held = {ctx: reserve_port() for ctx in ("c1", "c2")}
    ports = {ctx: sock.getsockname()[1] for ctx, sock in held.items()}
    try:
        original = Sandbox.up(tmp_path / "original", list(ports), ports=ports)
        try:
            assert {ctx: original.url(ctx) for ctx in ports} == {c: f"https://127.0.0.1:{p}" for c, p in ports.items()}
            original.kubectl("c1", "create", "namespace", "shop")
            original.kubectl("c1", "create", "serviceaccount", "reader", "-n", "shop")
            original.kubectl("c1", "apply", "-f", "-", stdin=LB_SERVICE + "---\n" + TOKEN_SECRET)
            first_ip = _lb_address(original, "c1", "edge")
            token = base64.b64decode(original.get_json("c1", "secret", "reader-token", "-n", "shop")["data"]["token"]).decode()
            assert _status_with_token(original, "c1", token) == 403, "the service account's token is known (no RBAC)"
            dumps = {ctx: original.dump(ctx) for ctx in ports}
            kubeconfig = original.kubeconfig.read_text()
            requests = len(original.requests("c1"))
            original.save(tmp_path / "saved")
        finally:
            original.down()
        assert all(_refused(port) for port in ports.values()), "a held port refuses connections: nothing listens"

        copy = Sandbox.restore(tmp_path / "saved", tmp_path / "copy", ports=ports)
        try:
            assert copy.kubeconfig.read_text() == kubeconfig, "same servers, CAs and tokens"
            assert {ctx: copy.dump(ctx) for ctx in ports} == dumps, "same objects, UIDs and resource versions"
            assert len(copy.requests("c1")) == requests, "the request log goes on"
            assert _status_with_token(copy, "c1", token) == 403, "tokens issued before the save are still accepted"
            assert _status_with_token(copy, "c1", "not-a-token") == 401
            copy.kubectl("c1", "apply", "-f", "-", stdin=LB_SERVICE.replace("name: edge", "name: edge2"))
            second_ip = _lb_address(copy, "c1", "edge2")
            assert int(second_ip.rsplit(".", 1)[1]) == int(first_ip.rsplit(".", 1)[1]) + 1, \
                "the next LoadBalancer address follows the saved ones"
        finally:
            copy.down()

        again = Sandbox.restore(tmp_path / "saved", tmp_path / "again", ports=ports)
        try:
            assert {ctx: again.dump(ctx) for ctx in ports} == dumps, "a copy's changes stay in that copy"
        finally:
            again.down()
    finally:
        for sock in held.values():
            sock.close()


ONE_NETWORK = {"east": "net1", "west": "net1"}


def _build_two(start, workdir):
    mesh = make_mesh(start(list(ONE_NETWORK)), workdir, ONE_NETWORK)
    mesh.apply()
    return mesh


def test_copies_of_a_shape_are_the_applied_mesh_and_independent(shaped):
    first = shaped("shapes-two", _build_two)
    second = shaped("shapes-two", _build_two)  # alive at once: built again on ports of its own
    assert first.sandbox.url("east") != second.sandbox.url("east")
    for mesh in (first, second):
        installs = len(mesh.installs())
        assert installs > 0, "the copy holds the build's istioctl calls"
        again = mesh.apply(env={"COLUMNS": "160"})
        assert mesh.results(again.stdout) == {"east": "unchanged", "west": "unchanged"}, again.stdout
        assert len(mesh.installs()) == installs, "nothing to install: the clusters are as apply left them"
    first.write_topology({"east": "net1"})
    first.apply()
    assert second.get("west", "namespace", "istio-system", check=False) is not None
    assert sorted(second.remote_secrets("east")) == ["west"], "a copy's changes stay in that copy"
