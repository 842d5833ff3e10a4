"""Decisions the mutation run (README: "How we know the tests bite") showed no fast test pinned down,
each as a user would feel it. docs/mutation-report.md lists the mutants these kill."""
from __future__ import annotations

from lib.mesh import mesh_model
from lib.config import Cluster, Topology


def test_a_remote_is_configured_by_its_primary_and_the_primary_holds_its_secret(tmp_path):
    clusters = (Cluster("c1", "n1", "c1"), Cluster("c2", "n2", "c2", primary="c1"), Cluster("c3", "n2", "c3"))
    mesh = mesh_model(Topology("m", clusters, tmp_path / "topology.yaml"))
    remote, primary, other = mesh.member("c2"), mesh.member("c1"), mesh.member("c3")
    assert remote.is_remote and not primary.is_remote and primary.is_primary
    assert mesh.control_plane_of(remote) is primary and mesh.control_plane_of(other) is other
    assert primary.exposes_istiod and not other.exposes_istiod and not remote.exposes_istiod
    assert "c2" in primary.holds_secrets_of and not remote.holds_secrets_of


# --- keys stay private ---------------------------------------------------------------------------

def test_secure_tree_makes_every_folder_0700_and_every_key_0600_and_leaves_certificates_readable(tmp_path):
    import os
    import stat

    from lib.certs import secure_tree

    certs = tmp_path / "certs"
    (certs / "c1").mkdir(parents=True)
    for name, mode in (("root-key.pem", 0o644), ("root-cert.pem", 0o644), ("c1/ca-key.pem", 0o664),
                       ("c1/ca-cert.pem", 0o644)):
        (certs / name).write_text(name)
        os.chmod(certs / name, mode)
    os.chmod(certs, 0o755)
    os.chmod(certs / "c1", 0o775)
    secure_tree(certs)
    mode = {p.relative_to(certs).as_posix(): stat.S_IMODE(p.stat().st_mode) for p in [certs, *certs.rglob("*")]}
    assert mode == {".": 0o700, "c1": 0o700, "root-key.pem": 0o600, "c1/ca-key.pem": 0o600,
                    "root-cert.pem": 0o644, "c1/ca-cert.pem": 0o644}
    secure_tree(tmp_path / "missing")  # nothing to secure: no error


def test_a_backup_of_intermediates_is_private_all_the_way_down(tmp_path):
    import stat

    from lib import lifecycle

    source = tmp_path / "certs" / "c1"
    source.mkdir(parents=True)
    (source / "ca-key.pem").write_text("key")
    (source / "ca-cert.pem").write_text("cert")
    target = lifecycle.backup_dir(tmp_path, "20300101T000000Z") / "c1"
    lifecycle.move_to_backup(source, target)
    assert not source.exists() and (target / "ca-key.pem").read_text() == "key"
    assert stat.S_IMODE((target / "ca-key.pem").stat().st_mode) == 0o600
    folder = target
    while folder != tmp_path:
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700, folder
        folder = folder.parent


# --- the rotation record: an interrupted rotate-certs is finished, never started over ------------

def test_an_unfinished_rotation_is_saved_privately_read_back_and_removed_once_done(tmp_path):
    import stat

    from lib import lifecycle
    from lib.errors import ConfigError

    assert lifecycle.load_rotation(tmp_path) is None
    rotation = lifecycle.Rotation("2030-01-01T00:00:00Z", {"c1": "ab" * 32, "c2": "cd" * 32})
    lifecycle.save_rotation(tmp_path, rotation)
    path = lifecycle.rotation_path(tmp_path)
    assert path.is_file() and tmp_path in path.parents
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert lifecycle.load_rotation(tmp_path) == rotation
    lifecycle.save_rotation(tmp_path, None)
    assert not path.exists() and lifecycle.load_rotation(tmp_path) is None
    lifecycle.save_rotation(tmp_path, None)  # nothing to remove: fine

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("{not json")
    try:
        lifecycle.load_rotation(tmp_path)
    except ConfigError as exc:
        assert str(path) in exc.message and f"delete {path}" in exc.hint
    else:
        raise AssertionError("a damaged rotation record must be a clear error")


def test_the_workspaces_intermediate_is_read_with_its_fingerprint_and_expiry(tmp_path):
    import datetime as dt

    from lib import lifecycle
    from lib.certs import read_cert
    from tests.test_status import NOW, _ca, _pem

    root = _ca("Root CA")
    inter, _ = _ca("Intermediate CA", issuer=root, days=40)
    folder = tmp_path / "c1"
    folder.mkdir()
    for name in ("ca-key.pem", "root-cert.pem", "cert-chain.pem"):
        (folder / name).write_text("x")
    assert lifecycle.read_intermediate(tmp_path, "c1").fingerprint is None, "incomplete: no ca-cert.pem"
    (folder / "ca-cert.pem").write_bytes(_pem(inter))
    got = lifecycle.read_intermediate(tmp_path, "c1")
    assert got.name == "c1" and got.fingerprint == read_cert(_pem(inter)).fingerprint
    assert got.days_left(NOW) == 40 and got.not_after == NOW + dt.timedelta(days=40)
    (folder / "ca-cert.pem").write_text("not a certificate")
    assert lifecycle.read_intermediate(tmp_path, "c1").fingerprint == "unreadable"
    assert lifecycle.read_intermediate(tmp_path, "c9").fingerprint is None


def test_the_wait_before_the_next_root_stage_reads_in_hours_and_minutes():
    import datetime as dt

    from lib.lifecycle import describe_wait

    assert describe_wait(dt.timedelta(hours=23, minutes=5, seconds=59)) == "23h05m"
    assert describe_wait(dt.timedelta(minutes=59, seconds=30)) == "59m"
    assert describe_wait(dt.timedelta(hours=1)) == "1h00m"
    assert describe_wait(dt.timedelta(seconds=-5)) == "0m"


# --- what apply sends ----------------------------------------------------------------------------

def test_secret_cacerts_carries_the_four_files_and_setup_meshs_label():
    import base64

    from lib.overlay import FIELD_MANAGER, MANAGED_BY_LABEL, cacerts_manifest

    files = {name: f"<{name}>".encode() for name in ("ca-cert.pem", "ca-key.pem", "root-cert.pem", "cert-chain.pem")}
    secret = cacerts_manifest(files)
    assert (secret["apiVersion"], secret["kind"], secret["type"]) == ("v1", "Secret", "Opaque")
    assert secret["metadata"] == {"name": "cacerts", "namespace": "istio-system",
                                  "labels": {MANAGED_BY_LABEL: FIELD_MANAGER}}
    assert {k: base64.b64decode(v) for k, v in secret["data"].items()} == files


def test_the_cacerts_step_sends_namespace_and_secret_on_stdin_never_on_the_command_line(tmp_path):
    import yaml

    from lib.kube import Tools
    from lib.plan import _cacerts_step
    from tests.test_behaviours import Replies, _context

    cluster = Cluster("c1", "n7", "c1")
    folder = tmp_path / "certs" / "c1"
    folder.mkdir(parents=True)
    for name in ("ca-cert.pem", "ca-key.pem", "root-cert.pem", "cert-chain.pem"):
        (folder / name).write_text(f"-----{name}-----\n")
    step = _cacerts_step(Tools(), cluster, tmp_path)
    runner = Replies("")
    step.action(_context(runner))
    (command,) = runner.asked
    assert "ca-key.pem" not in " ".join(command.argv) and "-----ca-key.pem-----" not in " ".join(command.argv)
    assert not command.stdin_shown
    items = yaml.safe_load(command.stdin)["items"]
    namespace, secret = items
    assert namespace["kind"] == "Namespace" and namespace["metadata"]["labels"]["topology.istio.io/network"] == "n7"
    assert secret["metadata"]["name"] == "cacerts" and set(secret["data"]) == {
        "ca-cert.pem", "ca-key.pem", "root-cert.pem", "cert-chain.pem"}

    (folder / "ca-key.pem").unlink()
    from lib.errors import MeshError
    try:
        step.action(_context(Replies("")))
    except MeshError as exc:
        assert "incomplete" in exc.message and str(folder) in exc.message
    else:
        raise AssertionError("an incomplete intermediate CA must not be sent")


def test_a_remote_is_installed_only_once_its_primarys_gateway_address_is_known(tmp_path):
    from lib.desired import desired_state
    from lib.errors import MeshError
    from lib.plan import resolved
    from tests.test_behaviours import Replies, _context

    clusters = (Cluster("c1", "n1", "c1"), Cluster("c2", "n2", "c2", primary="c1"))
    desired = desired_state(Topology("m", clusters, tmp_path / "topology.yaml"), {"spec": {}})
    assert resolved(_context(Replies("")), desired["c1"]) is desired["c1"], "a primary waits for nobody"
    ctx = _context(Replies(""))
    try:
        resolved(ctx, desired["c2"])
    except MeshError as exc:
        assert "c1's east-west gateway" in exc.message and "make c1 healthy first" in exc.hint
    else:
        raise AssertionError("a remote without its primary's address must not be installed")
    ctx.shared["gateway_address"] = {"c1": "203.0.113.5"}
    full = resolved(ctx, desired["c2"])
    assert full.operator["spec"]["values"]["global"]["remotePilotAddress"] == "203.0.113.5"
    assert resolved(ctx, desired["c2"]) is full, "worked out once per run"


def _one_network_plan_after_a_remote(tmp_path):
    """c2 was a remote of c1 across two networks; topology.yaml now has both as primaries on one network."""
    from lib.desired import desired_state
    from lib.kube import Observed, Tools
    from lib.plan import build_apply_plan
    from tests.test_plan import _workdir

    clusters = (Cluster("c1", "n1", "c1", server="https://c1:6443"), Cluster("c2", "n1", "c2", server="https://c2:6443"))
    topology = Topology("m", clusters, tmp_path / "topology.yaml")
    desired = desired_state(topology, {"apiVersion": "install.istio.io/v1alpha1", "kind": "IstioOperator", "spec": {}})
    observed = {
        "c1": Observed(reachable=True, namespace=True, network_label="n1", applied="before", eastwest_exists=True,
                       eastwest_address="198.51.100.1", eastwest_made_by="operator"),
        "c2": Observed(reachable=True, namespace=True, network_label="n1", applied="before",
                       annotations={"topology.istio.io/controlPlaneClusters": "c1"}),
    }
    plan = build_apply_plan(topology=topology, desired=desired, observed=observed, removed=[], removed_observed={},
                            workdir=_workdir(tmp_path), tools=Tools(), release=None, intermediate_vars={},
                            gateway_timeout=5)
    by_cluster: dict[str, list] = {}
    for phase in plan.phases:
        for ctx, steps in phase.steps.items():
            by_cluster.setdefault(ctx, []).extend(steps)
    return by_cluster


def _argvs(steps, title_part: str) -> list[tuple[str, ...]]:
    chosen = [s for s in steps if title_part in s.title]
    assert len(chosen) == 1, [s.title for s in steps]
    return [c.argv[3:] for c in chosen[0].commands]  # without "kubectl --context X"


def test_a_remote_turned_primary_stops_naming_its_old_primary_and_drops_the_endpointslice(tmp_path):
    steps = _one_network_plan_after_a_remote(tmp_path)
    assert _argvs(steps["c2"], "stop being a remote") == [
        ("annotate", "namespace", "istio-system", "topology.istio.io/controlPlaneClusters-"),
        ("delete", "endpointslices.discovery.k8s.io", "istiod", "-n", "istio-system", "--ignore-not-found")]
    assert not [s for s in steps["c1"] if "stop being a remote" in s.title]


def test_a_primary_left_without_remotes_stops_exposing_istiod_and_one_network_drops_the_gateway(tmp_path):
    steps = _one_network_plan_after_a_remote(tmp_path)
    assert _argvs(steps["c1"], "stop exposing istiod") == [
        ("delete", "gateways.networking.istio.io", "istiod-gateway", "-n", "istio-system", "--ignore-not-found"),
        ("delete", "virtualservices.networking.istio.io", "istiod-vs", "-n", "istio-system", "--ignore-not-found")]
    removal = [s for s in steps["c1"] if "remove the east-west gateway" in s.title]
    assert len(removal) == 1 and removal[0].done == "east-west gateway removed"
    argvs = [c.argv for c in removal[0].commands]
    assert argvs[0][3:] == ("delete", "gateways.networking.istio.io", "cross-network-gateway", "-n", "istio-system",
                            "--ignore-not-found")
    assert argvs[1][0] == "istioctl" and argvs[1][1:4] == ("uninstall", "-y", "-f")
    (path, manifest), = removal[0].files
    assert str(path) == argvs[1][4] and "name: eastwest" in manifest
    assert not [s for s in steps["c2"] if "stop exposing" in s.title], "c2 never exposed an istiod"
