"""rotate-certs on the sandbox, with the real make and openssl: intermediates re-issued under the same root."""
import base64
import json
import shutil
import stat
import subprocess

import pytest
import yaml

from tests.meshkit import NOTHING_PLANNED, ROOT, make_mesh, rollout_restart, scan_for_secrets, workdir_snapshot

TWO = {"cluster1": "network1", "cluster2": "network1"}
TWO_NETS = {"cluster1": "network1", "cluster2": "network2"}


def _build_mesh2(start, workdir):
    sandbox = start(list(TWO))
    mesh = make_mesh(sandbox, workdir, TWO)
    # Addresses the peers' control planes reach: status is healthy only then.
    mesh.write_topology(TWO, extra={ctx: {"api_server": sandbox.api_server(ctx)} for ctx in TWO})
    mesh.apply()
    return mesh


@pytest.fixture
def mesh2(shaped):
    """Two clusters on one network, applied: a copy of a mesh built once per session (tests/shapes.py)."""
    return shaped("rotation-mesh2", _build_mesh2)


# The stages are checked by looking at every cluster many times: these looks read the API server directly
# (Sandbox.read), the same objects kubectl would show, without starting kubectl at each.

def cacerts(mesh, ctx) -> dict[str, bytes]:
    secret = mesh.sandbox.read(ctx, "/api/v1/namespaces/istio-system/secrets/cacerts")
    assert secret is not None, f"{ctx} holds no cacerts"
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
    result = mesh2.run("rotate-certs", "-y")
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
    one = mesh2.run("rotate-certs", "-y", "--context", "cluster2", "--expiring-within", "4000")
    assert one.returncode == 0, one.stdout + one.stderr
    assert cacerts(mesh2, "cluster1")["ca-cert.pem"] == before["cluster1"]
    assert cacerts(mesh2, "cluster2")["ca-cert.pem"] != before["cluster2"]
    unknown = mesh2.run("rotate-certs", "--context", "nope")
    assert unknown.returncode == 2 and "nope" in unknown.stderr and "Traceback" not in unknown.stderr


def test_a_cluster_apply_has_not_set_up_sits_the_rotation_out_and_is_not_waited_for(mesh2):
    # cluster2 as a cluster added to topology.yaml and not applied yet looks: istio-system without apply's record.
    mesh2.kubectl("cluster2", "annotate", "namespace", "istio-system", "setup-mesh.io/applied-")
    before = {ctx: cacerts(mesh2, ctx) for ctx in TWO}
    rotated = mesh2.run("rotate-certs", "-y")
    assert rotated.returncode == 1, rotated.stdout + rotated.stderr
    out = rotated.stdout + rotated.stderr
    assert "cluster2: re-issue intermediate CA: not set up by apply yet" in out and "run `" in out
    assert cacerts(mesh2, "cluster2") == before["cluster2"], "nothing written to a cluster apply has not set up"
    assert cacerts(mesh2, "cluster1")["ca-cert.pem"] != before["cluster1"]["ca-cert.pem"]
    # The next run does not wait for it: the rotation it finishes is cluster1's alone.
    again = mesh2.run("rotate-certs", "-y", "--context", "cluster1")
    assert again.returncode == 0 and "cluster2" not in again.stdout + again.stderr, again.stdout + again.stderr
    assert not (mesh2.workdir / ".setup-mesh" / "rotation.json").exists()
    # A rotation recorded by an earlier version for that cluster alone does not hold every later run.
    from lib import reissue
    reissue.save_rotation(mesh2.workdir, reissue.Rotation("2026-12-01T00:00:00Z", {"cluster2": None}))
    assert mesh2.run("rotate-certs", "-y").returncode == 1
    assert reissue.load_rotation(mesh2.workdir) is None


def test_without_a_terminal_rotate_certs_shows_its_plan_and_refuses_unless_told_yes(mesh2):
    dumps = {ctx: mesh2.sandbox.dump(ctx) for ctx in TWO}
    before = {ctx: cacerts(mesh2, ctx) for ctx in TWO}
    refused = mesh2.run("rotate-certs")
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert "cluster1 (network1, primary): change" in refused.stdout, "what it would change, per cluster"
    assert ("error: Re-issue the intermediate CAs of cluster1, cluster2 and update their cacerts? needs "
            "confirmation, and there is no terminal to ask on") in refused.stderr, refused.stderr
    assert "hint: re-run with -y to confirm" in refused.stderr
    assert {ctx: mesh2.sandbox.dump(ctx) for ctx in TWO} == dumps
    assert {ctx: cacerts(mesh2, ctx) for ctx in TWO} == before
    assert not (mesh2.workdir / "backups").exists() and not (mesh2.workdir / ".setup-mesh" / "rotation.json").exists()
    # A move to a new root asks too, before it makes the new root.
    root = mesh2.run("rotate-certs", "--root")
    assert root.returncode == 2, root.stdout + root.stderr
    assert "starting the move to a new root: stage 1 of 3" in root.stdout
    assert "+ spec.values.pilot.env.ISTIO_MULTIROOT_MESH: \"true\"" in root.stdout, "istiod is reinstalled first"
    assert ("error: Make a new root CA and bring cluster1, cluster2 to stage 1 of 3? needs confirmation"
            in root.stderr), root.stderr
    assert not (mesh2.workdir / "certs-next").exists()
    assert {ctx: mesh2.sandbox.dump(ctx) for ctx in TWO} == dumps


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
    failed = mesh2.run("rotate-certs", "-y")
    restore()
    assert failed.returncode == 1
    assert "cluster2" in failed.stdout + failed.stderr
    first = (mesh2.workdir / "certs" / "cluster1" / "ca-cert.pem").read_bytes()
    assert cacerts(mesh2, "cluster1")["ca-cert.pem"] == first
    assert cacerts(mesh2, "cluster2")["ca-cert.pem"] == old2
    # status says the rotation is unfinished, and what finishes it.
    doc = json.loads(mesh2.run("status", "-o", "json").stdout)
    (unfinished,) = [p for p in doc["problems"] if p["code"] == "rotation_unfinished"]
    assert unfinished["severity"] == "warning" and "(cluster1, cluster2) did not finish" in unfinished["message"]
    assert "rotate-certs" in unfinished["hint"]
    again = mesh2.run("rotate-certs", "-y")
    assert again.returncode == 0, again.stdout + again.stderr
    assert "finishing the rotation" in again.stdout
    assert (mesh2.workdir / "certs" / "cluster1" / "ca-cert.pem").read_bytes() == first, "not re-issued twice"
    assert cacerts(mesh2, "cluster2")["ca-cert.pem"] == (mesh2.workdir / "certs" / "cluster2" / "ca-cert.pem").read_bytes()
    assert not (mesh2.workdir / ".setup-mesh" / "rotation.json").exists()
    assert len(list((mesh2.workdir / "backups").iterdir())) == 1, "one rotation, one backup folder"
    assert "rotation_unfinished" not in mesh2.run("status", "-o", "json").stdout


def test_a_resumed_rotation_puts_in_place_an_intermediate_it_made_and_did_not_apply(mesh2):
    """A run cut short between making cluster1's new intermediate and updating its cacerts: the next run
    makes nothing again, and updates that cacerts (the assessment finds it is not what certs/ holds)."""
    from lib import reissue
    from lib.certs import read_cert

    old = mesh2.get("cluster1", "secret", "cacerts", "-n", "istio-system")
    done = mesh2.run("rotate-certs", "-y", "--context", "cluster1")
    assert done.returncode == 0, done.stdout + done.stderr
    made = (mesh2.workdir / "certs" / "cluster1" / "ca-cert.pem").read_bytes()
    # the cluster back on its old intermediate, and the rotation's record as the cut-short run left it
    mesh2.kubectl("cluster1", "delete", "secret", "cacerts", "-n", "istio-system")
    put_back = {"apiVersion": "v1", "kind": "Secret", "type": "Opaque", "data": old["data"],
                "metadata": {"name": "cacerts", "namespace": "istio-system", "labels": old["metadata"]["labels"]}}
    mesh2.kubectl("cluster1", "apply", "-f", "-", stdin=json.dumps(put_back))
    old_fp = read_cert(base64.b64decode(old["data"]["ca-cert.pem"])).fingerprint
    reissue.save_rotation(mesh2.workdir, reissue.Rotation("2026-11-29T08:00:00Z", {"cluster1": old_fp}))
    again = mesh2.run("rotate-certs", "-y")
    assert again.returncode == 0, again.stdout + again.stderr
    assert "finishing the rotation" in again.stdout
    assert (mesh2.workdir / "certs" / "cluster1" / "ca-cert.pem").read_bytes() == made, "not re-issued twice"
    assert cacerts(mesh2, "cluster1")["ca-cert.pem"] == made


# --- the move to a new root -------------------------------------------------------------------------

def pems(bundle: bytes) -> list[bytes]:
    from lib.carotation import split_pems
    return split_pems(bundle)


def istiod_env(mesh, ctx) -> dict[str, str]:
    deployment = mesh.sandbox.read(ctx, "/apis/apps/v1/namespaces/istio-system/deployments/istiod")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e.get("value") for e in container.get("env") or []}


def published_roots(mesh, ctx, namespace="istio-system") -> bytes | None:
    """The root bundle the cluster's istiod holds, as it publishes it in istio-ca-root-cert."""
    found = mesh.sandbox.read(ctx, f"/api/v1/namespaces/{namespace}/configmaps/istio-ca-root-cert")
    return found["data"]["root-cert.pem"].encode() if found else None


def check_stage(mesh, tmp_path, stage, old_root, new_root, contexts, old_intermediates):
    """Every cluster's cacerts holds and trusts what the stage says, asked of openssl: its intermediate is
    issued by the stage's root, its root bundle accepts each root that must still be trusted (and no
    other), the intermediate every cluster holds now, and up to stage 2 the intermediates the clusters
    held before the move (what workloads that have not renewed yet still present)."""
    held = {ctx: cacerts(mesh, ctx) for ctx in contexts}
    for ctx in contexts:
        bundle, ca = held[ctx]["root-cert.pem"], held[ctx]["ca-cert.pem"]
        signer, other = (old_root, new_root) if stage == 1 else (new_root, old_root)
        assert verify(signer, ca, tmp_path).returncode == 0, f"{ctx}: intermediate not issued by the stage's root"
        assert verify(other, ca, tmp_path).returncode != 0
        assert held[ctx]["cert-chain.pem"] == ca + signer
        trusts = (verify(bundle, old_root, tmp_path).returncode == 0, verify(bundle, new_root, tmp_path).returncode == 0)
        assert trusts == ((True, True) if stage < 3 else (False, True)), f"{ctx} at stage {stage} trusts {trusts}"
        for peer in contexts:
            assert verify(bundle, held[peer]["ca-cert.pem"], tmp_path).returncode == 0, f"{ctx} rejects {peer}"
            was = verify(bundle, old_intermediates[peer], tmp_path).returncode == 0
            assert was == (stage < 3), f"{ctx} at stage {stage}: {peer}'s intermediate from before the move"
        # Each stage's bundle contains the one before (or is inside it), byte for byte: istiod 1.28 and
        # 1.29 take nothing else. And istiod took it: it publishes what it holds.
        assert published_roots(mesh, ctx) == bundle, f"{ctx}: istiod did not take stage {stage}"
        assert bundle == {1: old_root + new_root, 2: old_root + new_root + new_root, 3: new_root}[stage], ctx
        if stage in (1, 2):
            assert istiod_env(mesh, ctx).get("ISTIO_MULTIROOT_MESH") == "true"
        annotation = mesh.sandbox.read(ctx, "/api/v1/namespaces/istio-system")["metadata"].get("annotations", {})
        if stage < 3:
            assert f"stage={stage} " in annotation.get("setup-mesh.io/root-transition", "")
        else:  # complete: the clusters no longer carry a transition
            assert "setup-mesh.io/root-transition" not in annotation
            assert "ISTIO_MULTIROOT_MESH" not in istiod_env(mesh, ctx)


def test_root_transition_in_three_runs_with_an_added_cluster_and_an_interrupted_run(sandbox_factory, tmp_path):
    contexts = {**TWO, "cluster3": "network1"}
    sandbox = sandbox_factory(list(contexts))
    mesh = make_mesh(sandbox, tmp_path / "ws", TWO)
    extra = {ctx: {"api_server": sandbox.api_server(ctx)} for ctx in contexts}
    mesh.write_topology(TWO, extra=extra)
    mesh.apply()
    ws = mesh.workdir
    old_root = (ws / "certs" / "root-cert.pem").read_bytes()
    old_key = (ws / "certs" / "root-key.pem").read_bytes()
    old_intermediates = {ctx: cacerts(mesh, ctx)["ca-cert.pem"] for ctx in TWO}
    outputs = []

    def run(*args):
        result = mesh.run(*args)
        outputs.append(result.stdout + result.stderr)
        return result

    preview = run("rotate-certs", "--root", "--dry-run")
    assert preview.returncode == 0, preview.stdout + preview.stderr
    assert "stage 1 of 3" in preview.stdout and "root-ca" in preview.stdout
    assert not (ws / "certs-next").exists()

    # Stage 1: both roots trusted, old intermediates; istiod set to accept a second root first.
    first = run("rotate-certs", "-y", "--root")
    assert first.returncode == 0, first.stdout + first.stderr
    new_root = (ws / "certs-next" / "root-cert.pem").read_bytes()
    assert new_root != old_root
    assert stat.S_IMODE((ws / "certs-next").stat().st_mode) == 0o700
    assert stat.S_IMODE((ws / "certs-next" / "root-key.pem").stat().st_mode) == 0o600
    check_stage(mesh, tmp_path, 1, old_root, new_root, TWO, old_intermediates)
    status = run("status", "-o", "json")
    assert status.returncode == 0, status.stdout + status.stderr
    doc = json.loads(status.stdout)
    assert doc["transition"]["stage"] == 1 and doc["transition"]["in_step"]
    assert "rotate-certs --root --workdir " in doc["transition"]["next"]
    assert " from " in doc["transition"]["next"]
    assert doc["root"]["new_root"]["days_left"] > 3000
    for c in doc["clusters"]:
        assert (c["cacerts"]["chains_to"], c["cacerts"]["roots_trusted"], c["cacerts"]["transition_stage"]) == ("current", 2, 1)
    table = run("status")
    assert "root transition: stage 1 of 3" in table.stdout and "3649d, 2 roots" in table.stdout

    # Too early for stage 2: nothing changes.
    before = {ctx: cacerts(mesh, ctx) for ctx in TWO}
    early = run("rotate-certs", "--root", "-q")
    assert early.returncode == 0, early.stdout + early.stderr
    assert "can start at" in early.stdout, "said even with -q: the run did nothing, and when it will"
    assert {ctx: cacerts(mesh, ctx) for ctx in TWO} == before

    # A cluster added mid-transition is apply's to set up; rotate-certs --root says so and leaves it alone.
    mesh.write_topology(contexts, extra=extra)
    added = run("rotate-certs", "-y", "--root")
    assert added.returncode == 1
    assert "not set up by apply yet" in added.stdout + added.stderr and "apply" in added.stdout + added.stderr
    assert mesh.get("cluster3", "namespace", "istio-system", check=False) is None
    # apply gives it the current stage's certificates.
    mesh.apply()
    old_intermediates["cluster3"] = cacerts(mesh, "cluster3")["ca-cert.pem"]
    check_stage(mesh, tmp_path, 1, old_root, new_root, contexts, old_intermediates)
    assert cacerts(mesh, "cluster3")["ca-cert.pem"] == (ws / "certs" / "cluster3" / "ca-cert.pem").read_bytes()
    installs = len(mesh.installs())
    mesh.apply()
    assert len(mesh.installs()) == installs, "apply keeps what the transition put in place"
    check_stage(mesh, tmp_path, 1, old_root, new_root, contexts, old_intermediates)

    # A cluster out of reach holds the mesh at stage 1, whatever --min-wait says.
    restore = cut_off(mesh, "cluster2")
    blocked = run("rotate-certs", "-y", "--root", "--min-wait", "0")
    restore()
    assert blocked.returncode == 1 and "cluster2" in blocked.stdout + blocked.stderr
    check_stage(mesh, tmp_path, 1, old_root, new_root, contexts, old_intermediates)

    # The next runs come from another machine: the same workspace, in another place.
    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(ws, elsewhere, symlinks=True)
    shutil.rmtree(ws)
    mesh.workdir = ws = elsewhere

    # Stage 2; a run that stopped before cluster2 (its stage-1 cacerts put back) is finished by the next.
    stage1_secret = mesh.get("cluster2", "secret", "cacerts", "-n", "istio-system")
    stage1_note = mesh.get("cluster2", "namespace", "istio-system")["metadata"]["annotations"]["setup-mesh.io/root-transition"]
    second = run("rotate-certs", "-y", "--root", "--min-wait", "0")
    assert second.returncode == 0, second.stdout + second.stderr
    # The hint for stage 3 carries the --min-wait that made this run work: pasted, it runs at once.
    assert f"`{ROOT / 'setup_mesh.py'} rotate-certs --root --min-wait 0 --workdir {ws}` for stage 3" in second.stdout
    check_stage(mesh, tmp_path, 2, old_root, new_root, contexts, old_intermediates)
    mesh.sandbox.kubectl("cluster2", "apply", "-f", "-", stdin=json.dumps({
        "apiVersion": "v1", "kind": "Secret", "type": "Opaque", "data": stage1_secret["data"],
        "metadata": {"name": "cacerts", "namespace": "istio-system"}}))
    mesh.sandbox.kubectl("cluster2", "annotate", "--overwrite", "namespace", "istio-system",
                         f"setup-mesh.io/root-transition={stage1_note}")
    behind = run("status", "-o", "json")
    assert behind.returncode == 1
    problems = {c["context"]: [p["code"] for p in c["problems"]] for c in json.loads(behind.stdout)["clusters"]}
    assert problems == {"cluster1": [], "cluster2": ["root_transition_behind"], "cluster3": []}
    stuck = run("rotate-certs", "-y", "--root", "--min-wait", "0")
    assert stuck.returncode == 0, stuck.stdout + stuck.stderr
    assert "bringing cluster2 to stage 2" in stuck.stdout, "finishes the stage, goes no further"
    check_stage(mesh, tmp_path, 2, old_root, new_root, contexts, old_intermediates)
    status = run("status", "-o", "json")
    assert status.returncode == 0, status.stdout + status.stderr
    assert {c["cacerts"]["chains_to"] for c in json.loads(status.stdout)["clusters"]} == {"new"}
    installs = len(mesh.installs())
    mesh.apply()
    assert len(mesh.installs()) == installs, "apply keeps stage 2 as it is"
    check_stage(mesh, tmp_path, 2, old_root, new_root, contexts, old_intermediates)

    # Stage 3: only the new root; then the workspace's root is the new one, the old one kept.
    plan = run("rotate-certs", "--root", "--min-wait", "0", "--dry-run")
    assert plan.returncode == 0, plan.stdout + plan.stderr
    assert "~ secret cacerts: root-cert.pem trusts only the new root (certs-next/cluster1/)" in plan.stdout
    assert "the same run completes the move" in plan.stdout and "rotate-certs --root --dry-run -v" in plan.stdout
    last = run("rotate-certs", "-y", "--root", "--min-wait", "0")
    assert last.returncode == 0, last.stdout + last.stderr
    check_stage(mesh, tmp_path, 3, old_root, new_root, contexts, old_intermediates)
    assert (ws / "certs" / "root-cert.pem").read_bytes() == new_root
    assert not (ws / "certs-next").exists()
    kept = [p for p in (ws / "backups").iterdir() if p.name.endswith("-root")]
    assert len(kept) == 1 and (kept[0] / "root-key.pem").read_bytes() == old_key
    assert stat.S_IMODE(kept[0].stat().st_mode) == 0o700
    assert stat.S_IMODE((kept[0] / "root-key.pem").stat().st_mode) == 0o600
    assert stat.S_IMODE((kept[0] / "cluster1" / "ca-key.pem").stat().st_mode) == 0o600
    status = run("status")
    assert status.returncode == 0, status.stdout + status.stderr
    installs = len(mesh.installs())
    mesh.apply()
    assert len(mesh.installs()) == installs

    # A completion cut short in one cluster (it still records the move) is finished, not taken for a new start.
    mesh.sandbox.kubectl("cluster2", "annotate", "--overwrite", "namespace", "istio-system",
                         f"setup-mesh.io/root-transition={stage1_note.replace('stage=1', 'stage=3')}")
    leftover = run("rotate-certs", "-y", "--root")
    assert leftover.returncode == 0, leftover.stdout + leftover.stderr
    assert "no new transition is started" in leftover.stdout
    assert not (ws / "certs-next").exists() and (ws / "certs" / "root-cert.pem").read_bytes() == new_root
    check_stage(mesh, tmp_path, 3, old_root, new_root, contexts, old_intermediates)

    again = run("rotate-certs", "-y")
    assert again.returncode == 0, again.stdout + again.stderr
    for ctx in contexts:
        assert verify(new_root, cacerts(mesh, ctx)["ca-cert.pem"], tmp_path).returncode == 0
    # No key, in what was printed or in the run logs.
    logs = sorted((ws / ".setup-mesh" / "logs").iterdir())
    assert logs
    for text in outputs + [log.read_text() for log in logs]:
        assert scan_for_secrets(text) == []


def _two_networks(sandbox_factory, tmp_path, remote: bool = False):
    """cluster1 and cluster2 on networks of their own (cluster2 a remote of cluster1 if ``remote``), applied;
    the mesh and topology.yaml's per-context entries."""
    sandbox = sandbox_factory(list(TWO_NETS))
    mesh = make_mesh(sandbox, tmp_path / "ws", TWO_NETS)
    extra = {ctx: {"api_server": sandbox.api_server(ctx)} for ctx in TWO_NETS}
    if remote:
        extra["cluster2"]["primary"] = "cluster1"
    mesh.write_topology(TWO_NETS, extra=extra)
    mesh.apply()
    return mesh, extra


def test_root_transition_with_a_remote_leaves_its_install_alone_and_gives_it_each_stages_trust(sandbox_factory,
                                                                                               tmp_path):
    # cluster2 is a remote of cluster1 on a network of its own: it runs no istiod, but its workloads'
    # certificates come from cluster1's istiod and its cacerts must trust what each stage trusts.
    mesh, _ = _two_networks(sandbox_factory, tmp_path, remote=True)
    ws = mesh.workdir
    old_root = (ws / "certs" / "root-cert.pem").read_bytes()
    old_intermediates = {"cluster1": cacerts(mesh, "cluster1")["ca-cert.pem"]}
    remote_installs = [c for c in mesh.control_plane_installs() if c["context"] == "cluster2"]

    for stage, args in ((1, ()), (2, ("--min-wait", "0")), (3, ("--min-wait", "0"))):
        result = mesh.run("rotate-certs", "-y", "--root", *args)
        assert result.returncode == 0, result.stdout + result.stderr
        new_root = (ws / ("certs" if stage == 3 else "certs-next") / "root-cert.pem").read_bytes()
        check_stage(mesh, tmp_path, stage, old_root, new_root, ["cluster1"], old_intermediates)
        held = cacerts(mesh, "cluster2")
        assert held["root-cert.pem"] == cacerts(mesh, "cluster1")["root-cert.pem"], "the primary's stage bundle"
        assert verify(held["root-cert.pem"], cacerts(mesh, "cluster1")["ca-cert.pem"], tmp_path).returncode == 0
        assert mesh.get("cluster2", "deployment", "istiod", "-n", "istio-system", check=False) is None
        assert [c for c in mesh.control_plane_installs() if c["context"] == "cluster2"] == remote_installs, \
            "the remote's install is not touched by the move"
        status = mesh.run("status")
        assert status.returncode == 0, status.stdout + status.stderr
    installs = len(mesh.installs())
    mesh.apply()
    assert len(mesh.installs()) == installs, "apply after the move changes nothing"


def test_a_topology_edit_mid_move_is_left_to_apply_and_the_stage_changes_nothing_until_then(sandbox_factory,
                                                                                             tmp_path):
    # Two primaries on two networks; mid-move, cluster2 is made a remote of cluster1. A stage re-installing
    # them would make half of that edit (no istiod exposed, the remote's secrets and gateway as they were).
    mesh, extra = _two_networks(sandbox_factory, tmp_path)
    nets = TWO_NETS
    assert mesh.run("rotate-certs", "-y", "--root").returncode == 0
    extra["cluster2"]["primary"] = "cluster1"
    mesh.write_topology(nets, extra=extra)
    installs, held = len(mesh.installs()), {ctx: cacerts(mesh, ctx) for ctx in nets}
    for args in (("--dry-run",), ("-y",)):
        stage = mesh.run("rotate-certs", "--root", "--min-wait", "0", *args)
        assert stage.returncode == 1, stage.stdout + stage.stderr
        for ctx in nets:
            assert f"{ctx} would sit this run out: stage 2: topology.yaml or base.yaml changed since apply set it up" \
                   in stage.stderr if args == ("--dry-run",) else f"{ctx}: stage 2: topology.yaml or base.yaml " \
                   "changed since apply set it up" in stage.stdout + stage.stderr, stage.stdout + stage.stderr
    assert len(mesh.installs()) == installs and {ctx: cacerts(mesh, ctx) for ctx in nets} == held
    # apply makes the edit, with the certificates of the stage the workspace is at (the refused run recorded
    # stage 2 before the clusters sat out); the move then goes on.
    mesh.apply()
    assert mesh.get("cluster1", "gateways.networking.istio.io", "istiod-gateway", "-n", "istio-system")
    status = mesh.run("status")
    assert status.returncode == 0 and "root transition: stage 2 of 3" in status.stdout, status.stdout + status.stderr
    moved = mesh.run("rotate-certs", "-y", "--root", "--min-wait", "0")
    assert moved.returncode == 0 and "moving on to stage 3 of 3" in moved.stdout, moved.stdout + moved.stderr


def test_intermediates_are_not_reissued_in_the_middle_of_a_move_to_a_new_root(mesh2):
    # Mid-move, certs/ still holds the old root and the clusters trust both: an intermediate re-issued under
    # certs/ now would undo the stage. rotate-certs refuses, naming the stage, before any cluster is touched.
    started = mesh2.run("rotate-certs", "-y", "--root")
    assert started.returncode == 0, started.stdout + started.stderr
    before = {ctx: cacerts(mesh2, ctx) for ctx in ("cluster1", "cluster2")}
    files = workdir_snapshot(mesh2.workdir / "certs")
    for args in (("-y",), ("--dry-run",)):
        refused = mesh2.run("rotate-certs", *args)
        assert refused.returncode == 2, refused.stdout + refused.stderr
        assert "a move to a new root is under way (stage 1 of 3)" in refused.stderr
        assert "rotate-certs --root until it reports the transition complete" in refused.stderr
    assert {ctx: cacerts(mesh2, ctx) for ctx in ("cluster1", "cluster2")} == before
    assert workdir_snapshot(mesh2.workdir / "certs") == files


def test_a_last_stage_that_fails_in_a_cluster_leaves_the_move_open_and_the_next_run_finishes_it(mesh2):
    # The workspace takes the new root as its own only once every cluster has taken the last stage: until
    # then certs/ keeps the old root (a cluster still on it needs it), and the next run finishes the move.
    ws = mesh2.workdir
    old_root = (ws / "certs" / "root-cert.pem").read_bytes()
    for args in (("-y", "--root"), ("-y", "--root", "--min-wait", "0")):
        done = mesh2.run("rotate-certs", *args)
        assert done.returncode == 0, done.stdout + done.stderr
    new_root = (ws / "certs-next" / "root-cert.pem").read_bytes()
    # Somebody made cluster2's cacerts immutable: the API server refuses the stage's change there.
    secret = mesh2.get("cluster2", "secret", "cacerts", "-n", "istio-system")
    mesh2.kubectl("cluster2", "patch", "secret", "cacerts", "-n", "istio-system", "-p", '{"immutable": true}')
    failed = mesh2.run("rotate-certs", "-y", "--root", "--min-wait", "0")
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert "field is immutable" in failed.stdout + failed.stderr
    assert (ws / "certs" / "root-cert.pem").read_bytes() == old_root, "the old root stays the workspace's"
    assert (ws / "certs-next" / "root-cert.pem").read_bytes() == new_root
    assert not (ws / "backups").exists()
    # Made mutable again (deleted and created as it was), the next run takes the stage there and finishes.
    mesh2.kubectl("cluster2", "delete", "secret", "cacerts", "-n", "istio-system")
    kept = {key: secret[key] for key in ("apiVersion", "kind", "type", "data")}
    kept["metadata"] = {k: secret["metadata"][k] for k in ("name", "namespace", "labels") if k in secret["metadata"]}
    mesh2.kubectl("cluster2", "create", "-f", "-", stdin=json.dumps(kept))
    finished = mesh2.run("rotate-certs", "-y", "--root", "--min-wait", "0")
    assert finished.returncode == 0, finished.stdout + finished.stderr
    assert (ws / "certs" / "root-cert.pem").read_bytes() == new_root and not (ws / "certs-next").exists()
    assert json.loads(mesh2.run("status", "-o", "json").stdout)["transition"] is None


def test_teardown_mid_transition_keeps_or_purges_both_roots_together(mesh2):
    ws = mesh2.workdir
    started = mesh2.run("rotate-certs", "-y", "--root")
    assert started.returncode == 0, started.stdout + started.stderr
    preview = mesh2.run("teardown", "--dry-run")
    assert preview.returncode == 0, preview.stdout + preview.stderr
    assert "certs-next/ is kept (the new root CA of a move to a new root" in preview.stdout
    gone = mesh2.run("teardown", "-y", "--purge-certs")
    assert gone.returncode == 0, gone.stdout + gone.stderr
    assert not (ws / "certs").exists() and not (ws / "certs-next").exists()
    # A new root and a fresh apply: no half of the old move is left to trip over.
    again = mesh2.run("prep-mesh", "--org", "Test Org")
    assert again.returncode == 0, again.stdout + again.stderr
    mesh2.apply()
    status = mesh2.run("status", "-o", "json")
    assert status.returncode == 0, status.stdout + status.stderr
    assert json.loads(status.stdout)["transition"] is None


def test_root_move_on_istio_1_29_every_stage_is_taken_and_a_reordered_bundle_is_reported(sandbox_factory, tmp_path):
    # istiod 1.29 takes a changed root bundle only when one contains the other byte for byte.
    sandbox = sandbox_factory(list(TWO), istio_version="1.29.6")
    mesh = make_mesh(sandbox, tmp_path / "ws", TWO)
    mesh.write_topology(TWO, extra={ctx: {"api_server": sandbox.api_server(ctx)} for ctx in TWO})
    mesh.apply()
    ws = mesh.workdir
    image = mesh.get("cluster1", "deployment", "istiod", "-n", "istio-system")["spec"]["template"]["spec"]["containers"][0]["image"]
    assert image.endswith(":1.29.6")
    old_root = (ws / "certs" / "root-cert.pem").read_bytes()
    old_intermediates = {ctx: cacerts(mesh, ctx)["ca-cert.pem"] for ctx in TWO}

    for stage, args in ((1, ()), (2, ("--min-wait", "0")), (3, ("--min-wait", "0"))):
        result = mesh.run("rotate-certs", "-y", "--root", *args)
        assert result.returncode == 0, result.stdout + result.stderr
        new_root = (ws / ("certs" if stage == 3 else "certs-next") / "root-cert.pem").read_bytes()
        check_stage(mesh, tmp_path, stage, old_root, new_root, TWO, old_intermediates)
        status = mesh.run("status", "-o", "json")
        assert status.returncode == 0, status.stdout + status.stderr
        assert {c["cacerts"]["istiod_took"] for c in json.loads(status.stdout)["clusters"]} == {True}
        if stage == 1:
            _istiod_misses_stage_1_then_the_hint_repairs_it(mesh)
        if stage != 2:
            continue
        # cluster2's stage-2 bundle reordered (new, old: what a stage 2 used to be): istiod 1.29 refuses it.
        secret = mesh.get("cluster2", "secret", "cacerts", "-n", "istio-system")
        taken = cacerts(mesh, "cluster2")["root-cert.pem"]
        secret["data"]["root-cert.pem"] = base64.b64encode(new_root + old_root).decode()
        mesh.sandbox.kubectl("cluster2", "apply", "-f", "-", stdin=json.dumps(
            {k: secret[k] for k in ("apiVersion", "kind", "type", "data")}
            | {"metadata": {"name": "cacerts", "namespace": "istio-system"}}))
        assert published_roots(mesh, "cluster2") == taken, "istiod kept stage 2's bundle"
        refused = mesh.run("status", "-o", "json")
        assert refused.returncode == 1
        doc = json.loads(refused.stdout)
        problems = {c["context"]: {p["code"]: p for p in c["problems"]} for c in doc["clusters"]}
        assert set(problems["cluster1"]) == set()
        assert set(problems["cluster2"]) == {"istiod_roots_not_taken", "root_transition_behind"}
        not_taken = problems["cluster2"]["istiod_roots_not_taken"]
        assert "another order" in not_taken["message"] and "stage 2" in not_taken["message"]
        assert "kubectl --context cluster2 rollout restart deployment/istiod -n istio-system" in not_taken["hint"]
        assert _cluster_doc(doc, "cluster2")["cacerts"]["istiod_took"] is False
        table = mesh.run("status")
        assert "istiod did not take the root bundle" in table.stdout + table.stderr
        # rotate-certs puts the stage's bundle back; istiod holds it still: in step again
        back = mesh.run("rotate-certs", "-y", "--root", "--min-wait", "0")
        assert back.returncode == 0 and "bringing cluster2 to stage 2" in back.stdout, back.stdout + back.stderr
        check_stage(mesh, tmp_path, 2, old_root, new_root, TWO, old_intermediates)
        assert mesh.run("status").returncode == 0


def _istiod_misses_stage_1_then_the_hint_repairs_it(mesh):
    """cluster1's istiod restarted while cacerts was gone: it signs with a root of its own and does not
    watch the stage-1 cacerts put back. The move does not go on; the restart it names repairs it."""
    secret = mesh.get("cluster1", "secret", "cacerts", "-n", "istio-system")
    mesh.sandbox.kubectl("cluster1", "delete", "secret", "cacerts", "-n", "istio-system")
    rollout_restart(mesh.sandbox, "cluster1", "istiod")
    mesh.sandbox.kubectl("cluster1", "rollout", "status", "deployment/istiod", "-n", "istio-system", "--timeout=60s")
    mesh.sandbox.kubectl("cluster1", "apply", "-f", "-", stdin=json.dumps(
        {k: secret[k] for k in ("apiVersion", "kind", "type", "data")}
        | {"metadata": {"name": "cacerts", "namespace": "istio-system"}}))
    stopped = mesh.run("rotate-certs", "-y", "--root", "--min-wait", "0")
    out = stopped.stdout + stopped.stderr
    assert stopped.returncode == 1 and "istiod in cluster1 has not taken its root bundle" in out, out
    assert "kubectl --context cluster1 rollout restart deployment/istiod -n istio-system" in out
    assert json.loads(mesh.run("status", "-o", "json").stdout)["transition"]["stage"] == 1, "no further"
    doc = json.loads(mesh.run("status", "-o", "json").stdout)
    problem = {p["code"]: p for p in _cluster_doc(doc, "cluster1")["problems"]}["istiod_roots_not_taken"]
    assert "a root that is not in cacerts" in problem["message"]
    rollout_restart(mesh.sandbox, "cluster1", "istiod")
    mesh.sandbox.kubectl("cluster1", "rollout", "status", "deployment/istiod", "-n", "istio-system", "--timeout=60s")
    assert mesh.run("status").returncode == 0


def _cluster_doc(doc, ctx):
    return next(c for c in doc["clusters"] if c["context"] == ctx)


# --- a move from a root this workspace does not hold ---------------------------------------------------



def _writes(mesh, since: dict[str, int]) -> dict[str, list]:
    """Each cluster's requests that change something, since ``since`` (request counts per context)."""
    return {ctx: [r for r in mesh.sandbox.requests(ctx)[since[ctx]:] if r["method"] not in ("GET", "HEAD")]
            for ctx in since}


def _kept_objects(mesh, ctx) -> tuple:
    """What a move to another root must leave alone: the gateway's Service (its address) and istiod itself."""
    service = mesh.get(ctx, "service", "istio-eastwestgateway", "-n", "istio-system")
    istiod = mesh.get(ctx, "deployment", "istiod", "-n", "istio-system", check=False)  # None on a remote
    address = [i.get("ip") or i.get("hostname") for i in service["status"]["loadBalancer"]["ingress"]]
    return service["metadata"]["uid"], address, istiod and istiod["metadata"]["uid"]


@pytest.mark.parametrize("istio_version", [None, "1.29.6"], ids=["default", "1.29"])
def test_a_second_workspace_is_refused_by_apply_then_moves_the_mesh_to_its_own_root(sandbox_factory, tmp_path,
                                                                                    istio_version):
    # istiod 1.29 takes a changed root bundle only when one contains the other byte for byte.
    sandbox = sandbox_factory(list(TWO_NETS), istio_version=istio_version)
    extra = {ctx: {"api_server": sandbox.api_server(ctx)} for ctx in TWO_NETS}
    first = make_mesh(sandbox, tmp_path / "ws-a", TWO_NETS)
    first.write_topology(TWO_NETS, extra=extra)
    first.apply()
    image = first.get("cluster1", "deployment", "istiod", "-n", "istio-system")["spec"]["template"]["spec"]["containers"][0]["image"]
    assert istio_version is None or image.endswith(f":{istio_version}")
    second = make_mesh(sandbox, tmp_path / "ws-b", TWO_NETS)  # its own root, the same clusters
    second.write_topology(TWO_NETS, extra=extra)
    ws = second.workdir
    theirs = (first.workdir / "certs" / "root-cert.pem").read_bytes()
    ours = (ws / "certs" / "root-cert.pem").read_bytes()
    assert theirs != ours
    before = {ctx: cacerts(second, ctx) for ctx in TWO_NETS}
    kept = {ctx: _kept_objects(second, ctx) for ctx in TWO_NETS}
    outputs = []

    def run(*args, env=None):
        result = second.run(*args, env=env)
        outputs.append(result.stdout + result.stderr)
        return result

    # apply from the second workspace: refused, nothing changed in any cluster; its hint names the move.
    counts = {ctx: len(sandbox.requests(ctx)) for ctx in TWO_NETS}
    refused = run("apply", "-y")
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert "chains to another root than this workspace's in cluster1, cluster2" in refused.stderr
    assert "rotate-certs --root" in refused.stderr
    reissued = run("rotate-certs", "-y")  # new intermediates of this workspace's root would replace cacerts too
    assert reissued.returncode == 2, reissued.stdout + reissued.stderr
    assert "chains to another root than this workspace's in cluster1, cluster2" in reissued.stderr
    assert "run rotate-certs from the workspace that holds that root" in reissued.stderr
    preview = run("rotate-certs", "--root", "--dry-run")
    assert preview.returncode == 0, preview.stdout + preview.stderr
    assert "starting the move from the clusters' root to this workspace's: stage 1 of 3" in preview.stdout
    assert "no new root is made" in preview.stdout and "certs-former" in preview.stdout
    assert "only root-cert.pem is patched" in preview.stdout
    assert _writes(second, counts) == {ctx: [] for ctx in TWO_NETS}, "refused and previewed without a change"
    assert {ctx: cacerts(second, ctx) for ctx in TWO_NETS} == before
    assert not (ws / "certs-former").exists() and not (ws / "certs-next").exists()

    # Stage 1: each cluster keeps its intermediate (and key); only its root bundle grows by our root.
    stage1 = run("rotate-certs", "-y", "--root")
    assert stage1.returncode == 0, stage1.stdout + stage1.stderr
    assert not (ws / "certs-next").exists(), "no new root is made"
    assert (ws / "certs-former" / "root-cert.pem").read_bytes() == theirs
    assert not [p for p in (ws / "certs-former").rglob("*key*")], "no key of the clusters is kept"
    assert stat.S_IMODE((ws / "certs-former").stat().st_mode) == 0o700
    for ctx in TWO_NETS:
        held = cacerts(second, ctx)
        assert held == {**before[ctx], "root-cert.pem": theirs + ours}, ctx
        assert published_roots(second, ctx) == theirs + ours, f"{ctx}: istiod did not take stage 1"
        assert istiod_env(second, ctx).get("ISTIO_MULTIROOT_MESH") == "true"
        assert verify(held["root-cert.pem"], held["ca-cert.pem"], tmp_path).returncode == 0
    status = run("status", "-o", "json")
    assert status.returncode == 0, status.stdout + status.stderr
    doc = json.loads(status.stdout)
    assert doc["transition"]["stage"] == 1 and doc["transition"]["in_step"] and doc["transition"]["foreign_start"]
    assert {c["cacerts"]["chains_to"] for c in doc["clusters"]} == {"former"}
    assert {c["cacerts"]["istiod_took"] for c in doc["clusters"]} == {True}
    table = run("status", env={"COLUMNS": "200"}).stdout
    assert "healthy" in table and " foreign " not in table and "former root" in table, table
    _the_first_workspace_leaves_the_move_alone(first, before)
    installs = len(second.installs())
    again = run("apply", "--dry-run")
    assert again.returncode == 0 and "nothing to do" in again.stdout, again.stdout + again.stderr
    assert run("apply", "-y").returncode == 0 and len(second.installs()) == installs, "apply keeps stage 1"

    # Stage 2: intermediates of our root; stage 3 and completion: our root alone, istiod back to one root.
    for stage, bundle in ((2, theirs + ours + ours), (3, ours)):
        result = run("rotate-certs", "-y", "--root", "--min-wait", "0")
        assert result.returncode == 0, result.stdout + result.stderr
        for ctx in TWO_NETS:
            held = cacerts(second, ctx)
            assert held["root-cert.pem"] == bundle, f"{ctx} at stage {stage}"
            assert held["ca-cert.pem"] == (ws / "certs" / ctx / "ca-cert.pem").read_bytes()
            assert verify(ours, held["ca-cert.pem"], tmp_path).returncode == 0
            assert verify(theirs, held["ca-cert.pem"], tmp_path).returncode != 0
            assert (verify(held["root-cert.pem"], before[ctx]["ca-cert.pem"], tmp_path).returncode == 0) == (stage < 3), \
                f"{ctx} at stage {stage}: the intermediates from before the move are trusted until stage 3"
            assert published_roots(second, ctx) == bundle, f"{ctx}: istiod did not take stage {stage}"
        status = run("status", "-o", "json")
        assert status.returncode == 0, status.stdout + status.stderr
        if stage == 2:
            _the_first_workspace_leaves_the_move_alone(first, before)
    assert "the clusters' former root certificate is kept in" in result.stdout
    assert not (ws / "certs-former").exists() and not (ws / "certs-next").exists()
    assert (ws / "certs" / "root-cert.pem").read_bytes() == ours
    backup, = [p for p in (ws / "backups").iterdir() if p.name.endswith("-root")]
    assert (backup / "root-cert.pem").read_bytes() == theirs
    keys = list(ws.rglob("*-key.pem"))
    assert len(keys) == 3 and {stat.S_IMODE(k.stat().st_mode) for k in keys} == {0o600}, "the root's and 2 intermediates'"
    for ctx in TWO_NETS:
        assert "ISTIO_MULTIROOT_MESH" not in istiod_env(second, ctx)
        annotations = second.get(ctx, "namespace", "istio-system")["metadata"].get("annotations", {})
        assert "setup-mesh.io/root-transition" not in annotations
        assert _kept_objects(second, ctx) == kept[ctx], f"{ctx}: the gateway's Service or istiod was replaced"
    doc = json.loads(run("status", "-o", "json").stdout)
    assert doc["transition"] is None and {c["cacerts"]["chains_to"] for c in doc["clusters"]} == {"current"}
    plan = run("apply", "--dry-run")
    assert plan.returncode == 0 and NOTHING_PLANNED in plan.stdout.splitlines(), plan.stdout + plan.stderr
    status = run("status")
    assert status.returncode == 0, status.stdout + status.stderr
    for text in outputs + [log.read_text() for log in sorted((ws / ".setup-mesh" / "logs").iterdir())]:
        assert scan_for_secrets(text) == []


def test_a_second_workspace_moves_a_primary_and_its_remote_to_its_own_root(sandbox_factory, tmp_path):
    # cluster2 is a remote of cluster1 on a network of its own: it runs no istiod, and its cacerts must
    # trust what each stage trusts, as the primary's does, while its install is left alone.
    sandbox = sandbox_factory(list(TWO_NETS))
    extra = {ctx: {"api_server": sandbox.api_server(ctx)} for ctx in TWO_NETS}
    extra["cluster2"]["primary"] = "cluster1"
    first = make_mesh(sandbox, tmp_path / "ws-a", TWO_NETS)
    first.write_topology(TWO_NETS, extra=extra)
    first.apply()
    second = make_mesh(sandbox, tmp_path / "ws-b", TWO_NETS)
    second.write_topology(TWO_NETS, extra=extra)
    ws = second.workdir
    theirs = (first.workdir / "certs" / "root-cert.pem").read_bytes()
    ours = (ws / "certs" / "root-cert.pem").read_bytes()
    before = {ctx: cacerts(second, ctx) for ctx in TWO_NETS}
    kept = {ctx: _kept_objects(second, ctx) for ctx in TWO_NETS}
    remote_installs = [c for c in second.control_plane_installs() if c["context"] == "cluster2"]
    counts = {ctx: len(sandbox.requests(ctx)) for ctx in TWO_NETS}
    refused = second.run("apply", "-y")
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert "rotate-certs --root" in refused.stderr
    assert _writes(second, counts) == {ctx: [] for ctx in TWO_NETS}, "refused without a change"

    bundles = {1: theirs + ours, 2: theirs + ours + ours, 3: ours}
    for stage, args in ((1, ()), (2, ("--min-wait", "0")), (3, ("--min-wait", "0"))):
        result = second.run("rotate-certs", "-y", "--root", *args)
        assert result.returncode == 0, f"stage {stage}:\n{result.stdout}{result.stderr}"
        primary = cacerts(second, "cluster1")
        assert primary["root-cert.pem"] == bundles[stage], f"cluster1 at stage {stage}"
        assert primary["ca-cert.pem"] == (before["cluster1"]["ca-cert.pem"] if stage == 1 else
                                          (ws / "certs" / "cluster1" / "ca-cert.pem").read_bytes()), \
            f"cluster1 at stage {stage}: its intermediate is kept in stage 1 and ours from stage 2"
        assert published_roots(second, "cluster1") == bundles[stage], f"istiod did not take stage {stage}"
        held = cacerts(second, "cluster2")
        assert held["root-cert.pem"] == bundles[stage], f"the remote at stage {stage}: the primary's bundle"
        assert verify(held["root-cert.pem"], primary["ca-cert.pem"], tmp_path).returncode == 0, \
            f"the remote at stage {stage} trusts the certificates its primary's istiod issues"
        assert second.get("cluster2", "deployment", "istiod", "-n", "istio-system", check=False) is None
        assert [c for c in second.control_plane_installs() if c["context"] == "cluster2"] == remote_installs, \
            f"stage {stage} reinstalled the remote"
        status = second.run("status")
        assert status.returncode == 0, f"stage {stage}:\n{status.stdout}{status.stderr}"
    assert "ISTIO_MULTIROOT_MESH" not in istiod_env(second, "cluster1")
    assert {ctx: _kept_objects(second, ctx) for ctx in TWO_NETS} == kept, "a gateway's Service or istiod was replaced"
    plan = second.run("apply", "--dry-run")
    assert plan.returncode == 0 and NOTHING_PLANNED in plan.stdout.splitlines(), plan.stdout + plan.stderr
    crossed = second.run("verify")
    assert crossed.returncode == 0, crossed.stdout + crossed.stderr


def _the_first_workspace_leaves_the_move_alone(first, before):
    """apply and rotate-certs from the workspace whose root the mesh is moving from refuse to put its own
    cacerts back (that would undo the stages, and from stage 2 break mTLS): nothing changes in any cluster."""
    counts = {ctx: len(first.sandbox.requests(ctx)) for ctx in before}
    held = {ctx: cacerts(first, ctx) for ctx in before}
    for command in (("apply", "--dry-run"), ("apply", "-y"), ("rotate-certs", "--dry-run"), ("rotate-certs", "-y")):
        refused = first.run(*command)
        assert refused.returncode == 2, f"{command}:\n{refused.stdout}{refused.stderr}"
        assert "another workspace is moving the mesh to its root" in refused.stdout + refused.stderr, command
        assert "leave the mesh to the workspace that is moving it" in refused.stderr, command
    # Its status names the move, not a fix that would undo it (apply for the install, replacing cacerts).
    status = first.run("status", "-o", "json")
    assert status.returncode == 1, status.stdout + status.stderr
    assert {c["context"]: sorted(p["code"] for p in c["problems"]) for c in json.loads(status.stdout)["clusters"]} == \
        {ctx: ["root_moved_elsewhere"] for ctx in before}
    assert _writes(first, counts) == {ctx: [] for ctx in before}
    assert {ctx: cacerts(first, ctx) for ctx in before} == held


def test_a_cluster_added_during_stage_1_of_a_move_from_the_clusters_root_gets_this_workspaces_intermediate(
        sandbox_factory, tmp_path):
    three = {**TWO_NETS, "cluster3": "network1"}
    sandbox = sandbox_factory(list(three))
    extra = {ctx: {"api_server": sandbox.api_server(ctx)} for ctx in three}
    first = make_mesh(sandbox, tmp_path / "ws-a", three)
    first.write_topology(three, extra=extra)
    first.apply()
    second = make_mesh(sandbox, tmp_path / "ws-b", TWO_NETS)  # cluster3 joins its topology later
    second.write_topology(TWO_NETS, extra=extra)
    ws = second.workdir
    theirs = (first.workdir / "certs" / "root-cert.pem").read_bytes()
    ours = (ws / "certs" / "root-cert.pem").read_bytes()
    started = second.run("rotate-certs", "-y", "--root")
    assert started.returncode == 0, started.stdout + started.stderr
    assert sorted(p.name for p in (ws / "certs-former").iterdir() if p.is_dir()) == ["cluster1", "cluster2"]

    second.write_topology(three, extra=extra)
    added = second.run("rotate-certs", "-y", "--root")
    assert added.returncode == 0, added.stdout + added.stderr
    assert "bringing cluster3 to stage 1" in added.stdout
    held = cacerts(second, "cluster3")
    assert held["root-cert.pem"] == theirs + ours
    assert held["ca-cert.pem"] == (ws / "certs" / "cluster3" / "ca-cert.pem").read_bytes()
    assert verify(ours, held["ca-cert.pem"], tmp_path).returncode == 0
    assert published_roots(second, "cluster3") == theirs + ours
    for ctx in TWO_NETS:  # they keep their intermediates, and trust cluster3's
        assert verify(theirs, cacerts(second, ctx)["ca-cert.pem"], tmp_path).returncode == 0
        assert verify(cacerts(second, ctx)["root-cert.pem"], held["ca-cert.pem"], tmp_path).returncode == 0
    status = second.run("status", "-o", "json")
    assert status.returncode == 0, status.stdout + status.stderr
    chains = {c["context"]: c["cacerts"]["chains_to"] for c in json.loads(status.stdout)["clusters"]}
    assert chains == {"cluster1": "former", "cluster2": "former", "cluster3": "current"}
