"""rotate-certs on the sandbox, with the real make and openssl: intermediates re-issued under the same root."""
import base64
import stat
import subprocess

import pytest
import yaml

from tests.meshkit import make_mesh, scan_for_secrets, workdir_snapshot

TWO = {"cluster1": "network1", "cluster2": "network1"}


@pytest.fixture
def mesh2(sandbox_factory, tmp_path):
    sandbox = sandbox_factory(list(TWO))
    mesh = make_mesh(sandbox, tmp_path / "ws", TWO)
    # Addresses the peers' control planes reach: status is healthy only then.
    mesh.write_topology(TWO, extra={ctx: {"api_server": sandbox.api_server(ctx)} for ctx in TWO})
    mesh.apply()
    return mesh


def cacerts(mesh, ctx) -> dict[str, bytes]:
    secret = mesh.get(ctx, "secret", "cacerts", "-n", "istio-system")
    return {name: base64.b64decode(value) for name, value in secret["data"].items()}


def verify(root_pem: bytes, cert_pem: bytes, tmp_path, untrusted: bytes | None = None) -> subprocess.CompletedProcess:
    """openssl verify of cert_pem against the roots in root_pem (a bundle may hold several)."""
    (tmp_path / "roots.pem").write_bytes(root_pem)
    (tmp_path / "cert.pem").write_bytes(cert_pem)
    argv = ["openssl", "verify", "-CAfile", str(tmp_path / "roots.pem")]
    if untrusted:
        (tmp_path / "untrusted.pem").write_bytes(untrusted)
        argv += ["-untrusted", str(tmp_path / "untrusted.pem")]
    return subprocess.run(argv + [str(tmp_path / "cert.pem")], capture_output=True, text=True)


def test_rotation_reissues_every_intermediate_under_the_same_root(mesh2, tmp_path):
    before = {ctx: cacerts(mesh2, ctx) for ctx in TWO}
    root = (mesh2.workdir / "certs" / "root-cert.pem").read_bytes()
    installs = len(mesh2.installs())
    result = mesh2.run("rotate-certs")
    assert result.returncode == 0, result.stdout + result.stderr
    assert scan_for_secrets(result.stdout + result.stderr) == []
    for ctx in TWO:
        after = cacerts(mesh2, ctx)
        assert after["ca-cert.pem"] != before[ctx]["ca-cert.pem"]
        assert after["ca-key.pem"] != before[ctx]["ca-key.pem"]
        assert after["root-cert.pem"] == root
        assert after["ca-cert.pem"] == (mesh2.workdir / "certs" / ctx / "ca-cert.pem").read_bytes()
        assert verify(root, after["ca-cert.pem"], tmp_path).returncode == 0
        assert after["cert-chain.pem"] == after["ca-cert.pem"] + root
    # The replaced files are kept, private.
    backups = list((mesh2.workdir / "backups").iterdir())
    assert len(backups) == 1 and backups[0].name.endswith("-intermediates")
    for ctx in TWO:
        kept = backups[0] / ctx
        assert (kept / "ca-cert.pem").read_bytes() == before[ctx]["ca-cert.pem"]
        assert stat.S_IMODE(kept.stat().st_mode) == 0o700
        assert stat.S_IMODE((kept / "ca-key.pem").stat().st_mode) == 0o600
    assert stat.S_IMODE((mesh2.workdir / "backups").stat().st_mode) == 0o700
    assert stat.S_IMODE(backups[0].stat().st_mode) == 0o700
    assert stat.S_IMODE((mesh2.workdir / "certs" / "cluster1" / "ca-key.pem").stat().st_mode) == 0o600
    assert len(mesh2.installs()) == installs, "istiod reloads cacerts: nothing is reinstalled"
    status = mesh2.run("status")
    assert status.returncode == 0, status.stdout + status.stderr
    # Nothing else to do for apply: what rotate-certs installed is what apply would install.
    mesh2.apply()
    assert len(mesh2.installs()) == installs
    assert cacerts(mesh2, "cluster1")["ca-cert.pem"] == (mesh2.workdir / "certs" / "cluster1" / "ca-cert.pem").read_bytes()


def test_expiring_within_and_context_limit_what_is_reissued(mesh2):
    before = {ctx: cacerts(mesh2, ctx)["ca-cert.pem"] for ctx in TWO}
    files = workdir_snapshot(mesh2.workdir)
    none = mesh2.run("rotate-certs", "--expiring-within", "30")  # the Makefile's intermediates last 10 years
    assert none.returncode == 0, none.stdout + none.stderr
    assert "nothing to do" in none.stdout
    assert {ctx: cacerts(mesh2, ctx)["ca-cert.pem"] for ctx in TWO} == before
    assert workdir_snapshot(mesh2.workdir).keys() - files.keys() <= {k for k in workdir_snapshot(mesh2.workdir)
                                                                     if k.startswith(".setup-mesh/logs/")}
    one = mesh2.run("rotate-certs", "--context", "cluster2", "--expiring-within", "4000")
    assert one.returncode == 0, one.stdout + one.stderr
    assert cacerts(mesh2, "cluster1")["ca-cert.pem"] == before["cluster1"]
    assert cacerts(mesh2, "cluster2")["ca-cert.pem"] != before["cluster2"]
    unknown = mesh2.run("rotate-certs", "--context", "nope")
    assert unknown.returncode == 2 and "nope" in unknown.stderr and "Traceback" not in unknown.stderr


def test_dry_run_shows_the_plan_and_changes_nothing(mesh2):
    dumps = {ctx: mesh2.sandbox.dump(ctx) for ctx in TWO}
    files = workdir_snapshot(mesh2.workdir)
    short = mesh2.run("rotate-certs", "--dry-run")
    assert short.returncode == 0, short.stdout + short.stderr
    assert "cluster1 (network1, primary): change" in short.stdout and "back up the intermediate CA" in short.stdout
    result = mesh2.run("rotate-certs", "--dry-run", "-v")  # every command
    assert result.returncode == 0, result.stdout + result.stderr
    assert {ctx: mesh2.sandbox.dump(ctx) for ctx in TWO} == dumps
    assert workdir_snapshot(mesh2.workdir) == files
    out = result.stdout
    assert "back up the intermediate CA" in out and "cluster1-cacerts" in out and "cluster2-cacerts" in out
    assert "get deployment istiod -n istio-system" in out
    assert scan_for_secrets(out + result.stderr) == []


def cut_off(mesh, ctx):
    """Make a cluster unreachable (its API server address refuses connections); returns the way back."""
    path = mesh.sandbox.kubeconfig
    original = path.read_text()
    config = yaml.safe_load(original)
    for entry in config["clusters"]:
        if entry["name"] == next(c["context"]["cluster"] for c in config["contexts"] if c["name"] == ctx):
            entry["cluster"]["server"] = "https://127.0.0.1:1"
    path.write_text(yaml.safe_dump(config))
    return lambda: path.write_text(original)


def test_a_failed_rotation_is_finished_by_the_next_run_without_reissuing_twice(mesh2):
    old2 = (mesh2.workdir / "certs" / "cluster2" / "ca-cert.pem").read_bytes()
    restore = cut_off(mesh2, "cluster2")
    failed = mesh2.run("rotate-certs")
    restore()
    assert failed.returncode == 1
    assert "cluster2" in failed.stdout + failed.stderr
    first = (mesh2.workdir / "certs" / "cluster1" / "ca-cert.pem").read_bytes()
    assert cacerts(mesh2, "cluster1")["ca-cert.pem"] == first
    assert cacerts(mesh2, "cluster2")["ca-cert.pem"] == old2
    again = mesh2.run("rotate-certs")
    assert again.returncode == 0, again.stdout + again.stderr
    assert "finishing the rotation" in again.stdout
    assert (mesh2.workdir / "certs" / "cluster1" / "ca-cert.pem").read_bytes() == first, "not re-issued twice"
    assert cacerts(mesh2, "cluster2")["ca-cert.pem"] == (mesh2.workdir / "certs" / "cluster2" / "ca-cert.pem").read_bytes()
    assert not (mesh2.workdir / ".setup-mesh" / "rotation.json").exists()
    assert len(list((mesh2.workdir / "backups").iterdir())) == 1, "one rotation, one backup folder"
