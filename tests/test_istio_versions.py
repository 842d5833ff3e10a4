"""The stand-in Istio release at each version setup-mesh supports, and what differs between them: the
remote-clusters table, the root bundles istiod takes, the Gateway API release it expects."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import yaml

from lib.gatewayapi import expected_version
from lib.release import Release
from lib.statusread import parse_remote_clusters
from tests.sandbox.release import VERSION, materialize_release
from tests.meshkit import rollout_restart
from tests.test_rotation_logic import _issued

ROOT = Path(__file__).resolve().parent.parent


def run(argv, env=None, check=True, cwd=None):
    proc = subprocess.run([str(a) for a in argv], env=env, cwd=cwd, capture_output=True, text=True, timeout=120)
    if check and proc.returncode != 0:
        raise AssertionError(f"{argv} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def test_the_default_release_is_1_30_3(tmp_path):
    rel = materialize_release(tmp_path)
    assert VERSION == "1.30.3" and rel.name == "istio-1.30.3"
    assert run([rel / "bin" / "istioctl", "version", "--remote=false"]).stdout == "client version: 1.30.3\n"


@pytest.mark.parametrize("version,gateway_api", [("1.28.10", "v1.4.1"), ("1.29.6", "v1.4.1"), ("1.29.2", "v1.4.0"),
                                                 ("1.30.3", "v1.5.1"), ("1.31.0-rc.0", "v1.6.0")])
def test_a_release_at_each_supported_version(tmp_path, version, gateway_api):
    rel = materialize_release(tmp_path, version=version)
    assert rel == tmp_path / f"istio-{version}"
    assert run([rel / "bin" / "istioctl", "version", "--remote=false"]).stdout == f"client version: {version}\n"
    manifest = yaml.safe_load((rel / "manifest.yaml").read_text())
    minor = ".".join(version.split(".")[:2])
    assert manifest["version"] == version and manifest["dependencies"]["istio"]["branch"] == f"release-{minor}"
    # what setup-mesh reads of it: the version, and from it the Gateway API CRDs an ambient mesh gets
    assert Release(rel).version == version
    assert expected_version(Release(rel).version) == gateway_api


def test_release_command_writes_the_folder_the_archive_and_its_checksum(tmp_path):
    out = tmp_path / "out"
    made = run([sys.executable, "-m", "tests.sandbox", "release", "--version", "1.29.6", "--out", out], cwd=ROOT)
    archive = out / "istio-1.29.6-linux-amd64.tar.gz"
    assert str(archive) in made.stdout
    assert (out / "istio-1.29.6" / "bin" / "istioctl").is_file()
    line = (out / "istio-1.29.6-linux-amd64.tar.gz.sha256").read_text()
    digest = run(["sha256sum", archive]).stdout.split()[0]
    assert line == f"{digest} istio-1.29.6-linux-amd64.tar.gz\n", "the line Istio's release-builder writes"
    assert run(["sha256sum", "-c", "istio-1.29.6-linux-amd64.tar.gz.sha256"], cwd=out).stdout.endswith(": OK\n")
    with tarfile.open(archive) as tar:
        names = tar.getnames()
        assert {n.split("/")[0] for n in names} == {"istio-1.29.6"}, "one top folder, as the published archives"
        assert "istio-1.29.6/bin/istioctl" in names and "istio-1.29.6/tools/certs/Makefile.selfsigned.mk" in names
        assert tar.getmember("istio-1.29.6/bin/istioctl").mode & 0o111
        tar.extractall(tmp_path / "unpacked", filter="data")
    istioctl = tmp_path / "unpacked" / "istio-1.29.6" / "bin" / "istioctl"
    assert run([istioctl, "version", "--remote=false"]).stdout == "client version: 1.29.6\n"

    default = run([sys.executable, "-m", "tests.sandbox", "release", "--out", out], cwd=ROOT)
    assert (out / "istio-1.30.3-linux-amd64.tar.gz").is_file(), default.stdout
    for bad in ("1.27.3", "latest", "1.30"):
        refused = run([sys.executable, "-m", "tests.sandbox", "release", "--version", bad, "--out", out], cwd=ROOT,
                      check=False)
        assert refused.returncode == 2 and bad in refused.stderr and "Traceback" not in refused.stderr
    assert sorted(p.name for p in out.iterdir() if p.name.startswith("istio-1.27")) == []


# --- against an emulated cluster ------------------------------------------------------------------


def istioctl(sandbox, version: str, *args: str, check: bool = True):
    rel = materialize_release(sandbox.dir / "releases", version=version)
    return run([rel / "bin" / "istioctl", *args], env=sandbox.env, check=check)


def test_remote_clusters_prints_the_table_of_its_version(sandbox_factory):
    sandbox = sandbox_factory(["c1"])
    istioctl(sandbox, "1.30.3", "install", "-y", "--context", "c1")
    istioctl(sandbox, "1.30.3", "install", "-y", "--context", "c1", "--set", "revision=canary")
    for version in ("1.28.10", "1.29.6", "1.30.3"):
        table = istioctl(sandbox, version, "remote-clusters", "--context", "c1").stdout.splitlines()
        assert table[0].split() == ["NAME", "SECRET", "STATUS", "ISTIOD"], version
        assert len(table) == 3 and {line.split()[0] for line in table[1:]} == {"Kubernetes"}
        assert [row.status for row in parse_remote_clusters("\n".join(table))] == ["synced", "synced"]
    seen = set()
    for _ in range(12):  # Go's map order: the istiods come in either order
        table = istioctl(sandbox, "1.30.3", "remote-clusters", "--context", "c1").stdout.splitlines()
        seen.add(tuple(line.split()[-1] for line in table[1:]))
    assert len(seen) == 2
    for _ in range(3):
        table = istioctl(sandbox, "1.31.0-rc.0", "remote-clusters", "--context", "c1").stdout.splitlines()
        assert table[0].split() == ["NAME", "SECRET", "STATUS", "ISTIOD", "REVISION"]
        rows = [line.split() for line in table[1:]]
        assert [r[-2] for r in rows] == sorted(r[-2] for r in rows), "1.31 sorts the istiods"
        assert sorted(r[-1] for r in rows) == ["canary", "default"]
        assert sorted(row.revision for row in parse_remote_clusters("\n".join(table))) == ["canary", "default"]


def _pem(cert) -> bytes:
    from cryptography.hazmat.primitives import serialization
    return cert.public_bytes(serialization.Encoding.PEM)


def _key(key) -> bytes:
    from cryptography.hazmat.primitives import serialization
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


# Real certificates: istiod checks that a changed bundle's intermediate verifies to its roots with its key.
_OLD_ROOT, _NEW_ROOT = _issued("Root CA"), _issued("Root CA")
OLD, NEW = _pem(_OLD_ROOT[0]), _pem(_NEW_ROOT[0])
INTERMEDIATES = {"one": _issued("Intermediate CA", _OLD_ROOT), "two": _issued("Intermediate CA", _OLD_ROOT),
                 "new": _issued("Intermediate CA", _NEW_ROOT)}


def put_cacerts(sandbox, ctx: str, roots: bytes, intermediate: str = "one") -> None:
    """cacerts with ``roots`` and one of INTERMEDIATES ("one" and "two" under the old root, "new" under the new)."""
    cert, key = INTERMEDIATES[intermediate]
    issuer = NEW if intermediate == "new" else OLD
    data = {"ca-cert.pem": _pem(cert), "ca-key.pem": _key(key), "cert-chain.pem": _pem(cert) + issuer,
            "root-cert.pem": roots}
    sandbox.kubectl(ctx, "apply", "-f", "-", stdin=json.dumps({
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "cacerts", "namespace": "istio-system"},
        "data": {k: base64.b64encode(v).decode() for k, v in data.items()}}))


def published(sandbox, ctx: str, ns: str = "istio-system") -> bytes | None:
    found = sandbox.kubectl(ctx, "get", "configmap", "istio-ca-root-cert", "-n", ns, "-o", "json", check=False)
    if found.returncode != 0:
        return None
    cm = json.loads(found.stdout)
    assert cm["metadata"]["labels"] == {"istio.io/config": "true"}
    return cm["data"]["root-cert.pem"].encode()


def test_istiod_takes_a_changed_root_bundle_by_its_versions_rule(sandbox_factory):
    sandbox = sandbox_factory(["v129", "v130"])
    versions = {"v129": "1.29.6", "v130": "1.30.3"}
    for ctx, version in versions.items():
        sandbox.kubectl(ctx, "create", "namespace", "istio-system")
        sandbox.kubectl(ctx, "create", "namespace", "app")
        put_cacerts(sandbox, ctx, OLD)
        istioctl(sandbox, version, "install", "-y", "--context", ctx,
                 "--set", "values.pilot.env.ISTIO_MULTIROOT_MESH=true")
        assert published(sandbox, ctx) == OLD and published(sandbox, ctx, "app") == OLD
        assert published(sandbox, ctx, "kube-system") == OLD and published(sandbox, ctx, "kube-public") is None
        put_cacerts(sandbox, ctx, OLD + NEW)  # contains the bundle istiod holds: taken by both
        assert published(sandbox, ctx) == OLD + NEW and published(sandbox, ctx, "app") == OLD + NEW

    for ctx in versions:
        put_cacerts(sandbox, ctx, NEW + OLD, "two")  # the same roots, reordered, with a new intermediate
    assert published(sandbox, "v129") == OLD + NEW, "1.29 compares bytes: refused, the old bundle stays"
    assert published(sandbox, "v130") == NEW + OLD, "1.30 compares sets: taken"
    sandbox.kubectl("v129", "create", "namespace", "later")
    assert published(sandbox, "v129", "later") == OLD + NEW, "a new namespace gets what istiod holds"

    # a new istiod pod loads cacerts whole, whatever it holds
    rollout_restart(sandbox, "v129", "istiod")
    assert published(sandbox, "v129") == NEW + OLD
    put_cacerts(sandbox, "v129", OLD + NEW)
    assert published(sandbox, "v129") == NEW + OLD, "back to the first order: refused as well"
    rollout_restart(sandbox, "v129", "istiod")
    # the sequence of a root move: [old, new], [old, new, new], [new], taken on either version
    for ctx in versions:
        put_cacerts(sandbox, ctx, OLD + NEW)
        assert published(sandbox, ctx) == OLD + NEW, ctx
        put_cacerts(sandbox, ctx, OLD + NEW + NEW, "new")
        assert published(sandbox, ctx) == OLD + NEW + NEW, ctx
        put_cacerts(sandbox, ctx, NEW, "one")  # the old intermediate does not verify to the new root alone
        assert published(sandbox, ctx) == OLD + NEW + NEW, ctx
        put_cacerts(sandbox, ctx, NEW, "new")
        assert published(sandbox, ctx) == NEW, ctx


def test_istiod_keeps_its_roots_without_the_multi_root_switch_or_without_cacerts_at_start(sandbox_factory):
    sandbox = sandbox_factory(["c1", "c2"])
    sandbox.kubectl("c1", "create", "namespace", "istio-system")
    put_cacerts(sandbox, "c1", OLD)
    istioctl(sandbox, VERSION, "install", "-y", "--context", "c1")
    put_cacerts(sandbox, "c1", OLD + NEW)
    assert published(sandbox, "c1") == OLD, "ISTIO_MULTIROOT_MESH is off: no change of roots"
    put_cacerts(sandbox, "c1", OLD, "two")
    assert published(sandbox, "c1") == OLD, "a new intermediate under the same root is always taken"

    # started before cacerts existed: a root of its own, kept in istio-ca-secret, and no watch
    istioctl(sandbox, VERSION, "install", "-y", "--context", "c2", "--set", "values.pilot.env.ISTIO_MULTIROOT_MESH=true")
    own = published(sandbox, "c2")
    secret = json.loads(sandbox.kubectl("c2", "get", "secret", "istio-ca-secret", "-n", "istio-system",
                                        "-o", "json").stdout)
    assert base64.b64decode(secret["data"]["ca-cert.pem"]) == own and b"BEGIN CERTIFICATE" in own
    put_cacerts(sandbox, "c2", OLD)
    assert published(sandbox, "c2") == own, "cacerts made after istiod started is not watched"
    rollout_restart(sandbox, "c2", "istiod")
    assert published(sandbox, "c2") == OLD


@pytest.mark.parametrize("version", ["1.28.10", "1.31.0-rc.0"])
def test_setup_mesh_builds_a_healthy_mesh_with_the_oldest_and_newest_supported_release(sandbox_factory, tmp_path,
                                                                                      version):
    from tests.meshkit import make_mesh

    nets = {"cluster1": "network1", "cluster2": "network2"}
    sandbox = sandbox_factory(list(nets), istio_version=version)
    mesh = make_mesh(sandbox, tmp_path / "ws", nets)
    mesh.write_topology(nets, extra={ctx: {"api_server": sandbox.api_server(ctx)} for ctx in nets})
    mesh.apply()
    status = mesh.run("status", "-o", "json")
    assert status.returncode == 0, status.stdout + status.stderr
    for c in json.loads(status.stdout)["clusters"]:
        assert c["istio"]["version"] == version
        assert c["remote_clusters"] == {p: "synced" for p in nets if p != c["context"]}, "read from its table"
        assert c["cacerts"]["istiod_took"] is True


def test_istiod_started_on_a_bundle_that_does_not_verify_crashes_until_cacerts_is_repaired(sandbox_factory):
    """createIstioCA loads a complete plugged-in cacerts through Verify; on failure istiod exits. The kubelet
    restarts it (CrashLoopBackOff); the restart that finds a good cacerts runs."""
    sandbox = sandbox_factory(["c1"])
    sandbox.kubectl("c1", "create", "namespace", "istio-system")
    put_cacerts(sandbox, "c1", NEW)  # intermediate "one" is the old root's: it does not verify to NEW
    install = istioctl(sandbox, VERSION, "install", "-y", "--context", "c1", "--readiness-timeout", "3s", check=False)
    assert install.returncode != 0
    pods = json.loads(sandbox.kubectl("c1", "get", "pods", "-n", "istio-system", "-l", "app=istiod", "-o", "json").stdout)
    (discovery,) = [cs for p in pods["items"] for cs in p["status"]["containerStatuses"] if cs["name"] == "discovery"]
    assert discovery["state"]["waiting"]["reason"] == "CrashLoopBackOff" and not discovery["ready"]
    assert "failed to create an istiod CA: cannot verify the cert" in discovery["lastState"]["terminated"]["message"]
    assert published(sandbox, "c1") is None, "no istiod runs to publish a root"
    put_cacerts(sandbox, "c1", NEW, "new")
    assert published(sandbox, "c1") == NEW
    sandbox.kubectl("c1", "rollout", "status", "deployment/istiod", "-n", "istio-system", "--timeout=30s")
