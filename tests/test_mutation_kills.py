"""Decisions the mutation run (README: "How we know the tests bite") showed no fast test pinned down,
each as a user would feel it. docs/mutation-report.md lists the mutants these kill."""
from __future__ import annotations

import pytest

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

    from lib import carotation

    source = tmp_path / "certs" / "c1"
    source.mkdir(parents=True)
    (source / "ca-key.pem").write_text("key")
    (source / "ca-cert.pem").write_text("cert")
    target = carotation.backup_dir(tmp_path, "20300101T000000Z") / "c1"
    carotation.move_to_backup(source, target)
    assert not source.exists() and (target / "ca-key.pem").read_text() == "key"
    assert stat.S_IMODE((target / "ca-key.pem").stat().st_mode) == 0o600
    folder = target
    while folder != tmp_path:
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700, folder
        folder = folder.parent


# --- the rotation record: an interrupted rotate-certs is finished, never started over ------------

def test_an_unfinished_rotation_is_saved_privately_read_back_and_removed_once_done(tmp_path):
    import stat

    from lib import reissue
    from lib.errors import ConfigError

    assert reissue.load_rotation(tmp_path) is None
    rotation = reissue.Rotation("2030-01-01T00:00:00Z", {"c1": "ab" * 32, "c2": "cd" * 32})
    reissue.save_rotation(tmp_path, rotation)
    path = reissue.rotation_path(tmp_path)
    assert path.is_file() and tmp_path in path.parents
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert reissue.load_rotation(tmp_path) == rotation
    reissue.save_rotation(tmp_path, None)
    assert not path.exists() and reissue.load_rotation(tmp_path) is None
    reissue.save_rotation(tmp_path, None)  # nothing to remove: fine

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("{not json")
    try:
        reissue.load_rotation(tmp_path)
    except ConfigError as exc:
        assert str(path) in exc.message and f"delete {path}" in exc.hint
    else:
        raise AssertionError("a damaged rotation record must be a clear error")


def test_the_workspaces_intermediate_is_read_with_its_fingerprint_and_expiry(tmp_path):
    import datetime as dt

    from lib import reissue
    from lib.certs import read_cert
    from tests.test_status import NOW, _ca, _pem

    root = _ca("Root CA")
    inter, _ = _ca("Intermediate CA", issuer=root, days=40)
    folder = tmp_path / "c1"
    folder.mkdir()
    for name in ("ca-key.pem", "root-cert.pem", "cert-chain.pem"):
        (folder / name).write_text("x")
    assert reissue.read_intermediate(tmp_path, "c1").fingerprint is None, "incomplete: no ca-cert.pem"
    (folder / "ca-cert.pem").write_bytes(_pem(inter))
    got = reissue.read_intermediate(tmp_path, "c1")
    assert got.name == "c1" and got.fingerprint == read_cert(_pem(inter)).fingerprint
    assert got.days_left(NOW) == 40 and got.not_after == NOW + dt.timedelta(days=40)
    (folder / "ca-cert.pem").write_text("not a certificate")
    assert reissue.read_intermediate(tmp_path, "c1").fingerprint == "unreadable"
    assert reissue.read_intermediate(tmp_path, "c9").fingerprint is None


def test_the_wait_before_the_next_root_stage_reads_in_hours_and_minutes():
    import datetime as dt

    from lib.carotation import describe_wait

    assert describe_wait(dt.timedelta(hours=23, minutes=5, seconds=59)) == "23h05m"
    assert describe_wait(dt.timedelta(minutes=59, seconds=30)) == "59m"
    assert describe_wait(dt.timedelta(hours=1)) == "1h00m"
    assert describe_wait(dt.timedelta(seconds=-5)) == "0m"


# --- what apply sends ----------------------------------------------------------------------------

def test_secret_cacerts_carries_the_four_files_and_setup_meshs_label():
    import base64

    from lib.overlay import cacerts_manifest
    from lib.names import FIELD_MANAGER, MANAGED_BY_LABEL

    files = {name: f"<{name}>".encode() for name in ("ca-cert.pem", "ca-key.pem", "root-cert.pem", "cert-chain.pem")}
    secret = cacerts_manifest(files)
    assert (secret["apiVersion"], secret["kind"], secret["type"]) == ("v1", "Secret", "Opaque")
    assert secret["metadata"] == {"name": "cacerts", "namespace": "istio-system",
                                  "labels": {MANAGED_BY_LABEL: FIELD_MANAGER}}
    assert {k: base64.b64decode(v) for k, v in secret["data"].items()} == files


def test_thecacerts_step_sends_namespace_and_secret_on_stdin_never_on_the_command_line(tmp_path):
    import yaml

    from lib.kube import Tools
    from lib.plan import cacerts_step
    from tests.test_behaviours import Replies, _context

    cluster = Cluster("c1", "n7", "c1")
    folder = tmp_path / "certs" / "c1"
    folder.mkdir(parents=True)
    for name in ("ca-cert.pem", "ca-key.pem", "root-cert.pem", "cert-chain.pem"):
        (folder / name).write_text(f"-----{name}-----\n")
    step = cacerts_step(Tools(), cluster, tmp_path)
    runner = Replies("")
    step.action(_context(runner))
    (command,) = runner.asked
    assert "ca-key.pem" not in " ".join(command.argv) and "-----ca-key.pem-----" not in " ".join(command.argv)
    assert not command.stdin_shown
    sent = yaml.safe_load(command.stdin)
    assert (sent["apiVersion"], sent["kind"]) == ("v1", "List"), "what kubectl apply takes as several objects"
    items = sent["items"]
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


# --- rotate-certs --root: what the next run does -------------------------------------------------

def test_each_root_move_decision_is_exact():
    import datetime as dt

    from lib.carotation import ClusterView, Move, Transition, decide

    now = dt.datetime(2030, 1, 2, tzinfo=dt.timezone.utc)
    day = dt.timedelta(hours=24)
    t = lambda stage: Transition(stage, "a" * 64, "b" * 64, "2030-01-01T00:00:00Z")  # noqa: E731
    placed = lambda ctx, hours_ago: ClusterView(ctx, True, True, since=now - dt.timedelta(hours=hours_ago))  # noqa: E731

    assert decide(None, [ClusterView("c1", True, False), ClusterView("c2", False, False)], now, day) == \
        Move("start", 1, behind=["c1", "c2"])
    # A completion cut short, seen only where the cluster can be read.
    assert decide(None, [ClusterView("c1", True, False, completing=True), ClusterView("c2", False, False, completing=True),
                         ClusterView("c3", True, False)], now, day) == Move("complete", 3, behind=["c1"])
    assert decide(t(2), [placed("c1", 30), ClusterView("c2", True, False)], now, day) == \
        Move("converge", 2, behind=["c2"], unreachable=[])
    assert decide(t(2), [placed("c1", 30), ClusterView("c2", False, False)], now, day) == \
        Move("converge", 2, behind=[], unreachable=["c2"])
    assert decide(t(3), [placed("c1", 30), placed("c2", 1)], now, day) == Move("finish", 3)
    # The stage counts from the cluster that reached it last; exactly min_wait later it may advance.
    assert decide(t(1), [placed("c1", 30), placed("c2", 23)], now, day) == \
        Move("wait", 1, ready_at=now + dt.timedelta(hours=1))
    assert decide(t(1), [placed("c1", 30), placed("c2", 24)], now, day) == Move("advance", 2, behind=["c1", "c2"])
    assert decide(t(2), [placed("c1", 0)], now, dt.timedelta(0)) == Move("advance", 3, behind=["c1"])
    # A stage in place with no record of when (an older run) counts from now.
    assert decide(t(1), [ClusterView("c1", True, True)], now, day) == Move("wait", 1, ready_at=now + day)


def test_min_wait_reads_every_unit_and_refuses_what_is_not_a_duration():
    import datetime as dt

    import pytest

    from lib.errors import ConfigError
    from lib.carotation import parse_duration

    assert parse_duration("30s") == dt.timedelta(seconds=30)
    assert parse_duration("90m") == dt.timedelta(minutes=90)
    assert parse_duration(" 24H ") == dt.timedelta(hours=24)
    assert parse_duration("2d") == dt.timedelta(days=2)
    assert parse_duration("1.5") == dt.timedelta(hours=1.5), "a bare number is hours"
    assert parse_duration("0") == dt.timedelta(0)
    assert parse_duration("3650d") == dt.timedelta(days=3650)
    for text, says, hint in (("soon", "'soon' is not a duration", "24h (the default), 90m, 0"),
                             ("-1h", "'-1h' is negative", "give 0 or more"),
                             ("3651d", "'3651d' is longer than a root lives", "at most 3650d"),
                             ("infh", "is longer than a root lives", "at most 3650d"),
                             ("", "'' is not a duration", "24h")):
        with pytest.raises(ConfigError) as refused:
            parse_duration(text)
        assert says in refused.value.message and hint in refused.value.hint, text


# --- teardown: what is setup-mesh's, and every cluster gets its steps ------------------------------

def test_what_setup_mesh_made_is_told_by_its_label_or_the_old_unlabelled_cross_network_gateway():
    from lib.names import made_by_setup_mesh

    labelled = {"kind": "VirtualService", "metadata": {"name": "istiod-vs", "namespace": "istio-system",
                                                       "labels": {"app.kubernetes.io/managed-by": "setup-mesh"}}}
    assert made_by_setup_mesh(labelled)
    assert not made_by_setup_mesh({**labelled, "metadata": {**labelled["metadata"], "labels": {
        "app.kubernetes.io/managed-by": "Helm"}}})
    old = {"kind": "Gateway", "metadata": {"name": "cross-network-gateway", "namespace": "istio-system"}}
    assert made_by_setup_mesh(old)
    assert not made_by_setup_mesh({**old, "kind": "VirtualService"})
    assert not made_by_setup_mesh({**old, "metadata": {"name": "cross-network-gateway", "namespace": "shop"}})
    assert not made_by_setup_mesh({**old, "metadata": {"name": "other", "namespace": "istio-system"}})
    assert not made_by_setup_mesh({"kind": "Gateway", "metadata": {"name": "x", "namespace": "istio-system"}})


def _deployment(name: str, **labels: str) -> dict:
    return {"metadata": {"name": name, "namespace": "istio-system", "labels": labels}}


def test_a_scoped_teardown_uninstalls_each_of_setup_meshs_operators_and_each_unnamed_control_plane(tmp_path):
    from lib.kube import Observed, Tools
    from lib.istiousage import IstioUsage
    from lib.plan import Uninstall, uninstall_steps

    component, owner, owner_ns = ("operator.istio.io/component", "install.operator.istio.io/owning-resource",
                                  "install.operator.istio.io/owning-resource-namespace")
    seen = Observed(reachable=True, namespace=True, deployments={
        "somebody": _deployment("somebody"),  # no component label: not Istio's operator at all
        "istiod": _deployment("istiod", **{component: "Pilot", owner: "istio", owner_ns: "istio-system"}),
        "eastwest": _deployment("eastwest", **{component: "IngressGateways", owner: "eastwest"}),
        "theirs": _deployment("theirs", **{component: "Pilot", owner: "their-operator"}),
        "old": _deployment("old", **{component: "Pilot", owner: "unknown"}),
        "older": _deployment("older", **{component: "Pilot", owner: "", "istio.io/rev": "canary"}),
    })
    how = Uninstall(tmp_path, frozenset({"istio", "eastwest"}), IstioUsage(resources={("VirtualService", "shop"): 1}))
    step = uninstall_steps(Tools(), Cluster("c1", "n1", "c1"), [], seen, how)[0]
    istioctl = [c.argv[1:] for c in step.commands if c.argv[0] == "istioctl"]
    files = [str(path) for path, _ in step.files]
    assert istioctl == [("uninstall", "-y", "-f", files[0], "--context", "c1"),
                        ("uninstall", "-y", "-f", files[1], "--context", "c1"),
                        ("uninstall", "-y", "-r", "canary", "--context", "c1"),
                        ("uninstall", "-y", "-r", "default", "--context", "c1")]
    import yaml
    manifests = [yaml.safe_load(text) for _, text in step.files]
    assert [m["metadata"] for m in manifests] == [{"name": "eastwest"}, {"name": "istio", "namespace": "istio-system"}]
    assert all(m["kind"] == "IstioOperator" for m in manifests)


def test_a_scoped_teardown_of_a_remote_uninstalls_its_istioctl_install_found_by_its_istiod_service(tmp_path):
    """A remote runs no Deployment of its own: its istiod Service (parse_inspect reads it) names the
    IstioOperator. Left installed, its injector (failurePolicy Fail) would refuse every pod of an
    istio-injection=enabled namespace once istio-system and the Service are gone."""
    import json

    from lib.kube import Tools, parse_inspect
    from lib.istiousage import IstioUsage
    from lib.plan import Uninstall, uninstall_steps

    labels = {"operator.istio.io/component": "Pilot", "install.operator.istio.io/owning-resource": "setup-mesh",
              "install.operator.istio.io/owning-resource-namespace": "istio-system", "istio.io/rev": "1-31-0"}
    service = {"kind": "Service", "metadata": {"name": "istiod-1-31-0", "namespace": "istio-system", "labels": labels},
               "spec": {}}
    seen = parse_inspect(json.dumps({"kind": "List", "items": [
        {"kind": "Namespace", "metadata": {"name": "istio-system"}}, service]}))
    usage = IstioUsage(resources={("VirtualService", "shop"): 1}, default_tag="1-31-0")  # others use Istio here
    steps = uninstall_steps(Tools(), Cluster("r1", "n1", "r1"), [], seen,
                            Uninstall(tmp_path, frozenset({"setup-mesh", "eastwest"}), usage))
    istioctl = [c.argv[1:] for s in steps for c in s.commands if c.argv[0] == "istioctl"]
    assert istioctl == [("uninstall", "-y", "-f", str(steps[0].files[0][0]), "--context", "r1"),
                        ("tag", "remove", "default", "-y", "--context", "r1")], "its install, then the tag to it"


def test_teardown_removes_the_default_tag_only_when_it_points_at_a_revision_it_removes(tmp_path):
    from lib.kube import Observed, Tools
    from lib.istiousage import IstioUsage
    from lib.plan import Uninstall, uninstall_steps

    component, owner = "operator.istio.io/component", "install.operator.istio.io/owning-resource"
    seen = Observed(reachable=True, namespace=True, deployments={
        "istiod-1-31-0": _deployment("istiod-1-31-0", **{component: "Pilot", owner: "setup-mesh",
                                                         "istio.io/rev": "1-31-0"}),
        "istiod-theirs": _deployment("istiod-theirs", **{component: "Pilot", owner: "theirs", "istio.io/rev": "theirs"}),
    })
    others = IstioUsage(resources={("VirtualService", "shop"): 1})

    def tag_steps(tag, usage=others):
        usage = IstioUsage(usage.resources, usage.control_planes, default_tag=tag)
        how = Uninstall(tmp_path, frozenset({"setup-mesh", "eastwest"}), usage)
        steps = uninstall_steps(Tools(), Cluster("c1", "n1", "c1"), [], seen, how)
        return [(s.change, [list(c.argv) for c in s.commands]) for s in steps if "tag" in s.title]

    removal = [("- default revision tag → 1-31-0",
                [["istioctl", "tag", "remove", "default", "-y", "--context", "c1"]])]
    assert tag_steps("1-31-0") == removal, "setup-mesh's revision goes: its tag goes with it"
    assert tag_steps("theirs") == [], "somebody else's revision stays, and the tag that points at it"
    assert tag_steps(None) == []
    # Nobody else uses Istio here: everything is purged, and a tag to any revision would point at nothing.
    assert [c for c, _ in tag_steps("theirs", IstioUsage())] == ["- default revision tag → theirs"]


def test_teardown_plans_every_cluster_it_was_asked_to_even_after_one_it_skips(tmp_path):
    from lib.kube import Observed, Tools
    from lib.istiousage import IstioUsage
    from lib.plan import Uninstall, teardown_plan

    clusters = [Cluster("c1", "n1", "c1"), Cluster("c2", "n1", "c2"), Cluster("c3", "n1", "c3")]
    seen = {c.context: Observed(reachable=True, namespace=True) for c in clusters}
    phase = teardown_plan(Tools(), clusters, seen, {ctx: Uninstall(tmp_path, frozenset(), IstioUsage())
                                                    for ctx in ("c2", "c3")})
    assert phase.name == "teardown"
    assert sorted(phase.steps) == ["c2", "c3"] and all(phase.steps[ctx] for ctx in ("c2", "c3"))


def test_resuming_a_finished_root_move_touches_only_a_finish_cut_short(tmp_path):
    from lib import carotation

    certs, new = tmp_path / "certs", tmp_path / "certs-next"
    certs.mkdir()
    (certs / "root-cert.pem").write_text("old")
    carotation.resume_finish(tmp_path)  # an ordinary workspace: nothing to do, no error
    assert (certs / "root-cert.pem").read_text() == "old"

    # Mid-transition at the last stage, with a backup folder already there: both roots stay where they are.
    transition = carotation.Transition(3, "a" * 64, "b" * 64, "2030-01-01T00:00:00Z")
    new.mkdir()
    (new / "root-cert.pem").write_text("new")
    carotation.save_transition(tmp_path, transition)
    carotation.backup_dir(tmp_path, transition.backup_name).mkdir(parents=True)
    carotation.resume_finish(tmp_path)
    assert (certs / "root-cert.pem").read_text() == "old" and (new / "root-cert.pem").read_text() == "new"

    # certs/ gone by hand, with no record of a finish: nothing is promoted.
    (certs / "root-cert.pem").unlink()
    certs.rmdir()
    (new / carotation.TRANSITION_FILE).unlink()
    carotation.resume_finish(tmp_path)
    assert not certs.exists() and (new / "root-cert.pem").read_text() == "new"


def test_backup_folders_are_stamped_in_utc_whatever_the_machines_zone(monkeypatch):
    import datetime as dt
    import time

    from lib.carotation import stamp

    moment = dt.datetime(2030, 1, 1, 23, 30, tzinfo=dt.timezone.utc)
    monkeypatch.setenv("TZ", "Asia/Tokyo")
    time.tzset()
    try:
        assert stamp(moment) == "20300101T233000Z"
        assert stamp(moment.astimezone(dt.timezone(dt.timedelta(hours=-5)))) == "20300101T233000Z"
    finally:
        monkeypatch.undo()
        time.tzset()


# --- what each cluster's IstioOperator says --------------------------------------------------------

BASE_WITH_VALUES = {"apiVersion": "install.istio.io/v1alpha1", "kind": "IstioOperator",
                    "spec": {"profile": "default", "values": {
                        "global": {"proxy": {"resources": {"requests": {"cpu": "50m"}}}},
                        "pilot": {"env": {"PILOT_TRACE_SAMPLING": "5"}},
                        "istiodRemote": {"injectionCABundle": "Q0EgYnVuZGxl"}}}}


def test_a_remotes_operator_has_the_remote_profile_its_own_path_and_keeps_base_yamls_remote_values(tmp_path):
    import copy

    from lib.desired import desired_state

    base = copy.deepcopy(BASE_WITH_VALUES)
    clusters = (Cluster("c2", "n2", "c2", primary="c1"), Cluster("c1", "n1", "c1"), Cluster("c3", "n1", "c3"))
    d = desired_state(Topology("m", clusters, tmp_path / "topology.yaml"), base, addresses={"c1": "203.0.113.5"})
    assert base == BASE_WITH_VALUES, "base.yaml as loaded is shared by every cluster: nothing may change it"
    remote = d["c2"].operator["spec"]
    assert remote["profile"] == "remote", "base.yaml's profile would install an istiod in the remote"
    assert remote["values"]["istiodRemote"] == {"injectionCABundle": "Q0EgYnVuZGxl",
                                                "injectionPath": "/inject/cluster/c2/net/n2"}
    assert remote["values"]["global"]["remotePilotAddress"] == "203.0.113.5"
    for primary in ("c1", "c3"):
        spec = d[primary].operator["spec"]
        assert spec["profile"] == "default"
        assert spec["values"]["istiodRemote"] == {"injectionCABundle": "Q0EgYnVuZGxl"}, primary
        assert "remotePilotAddress" not in spec["values"]["global"], primary
    assert d["c1"].operator["spec"]["values"]["global"]["externalIstiod"] is True
    assert "externalIstiod" not in d["c3"].operator["spec"]["values"]["global"], "c3 runs no remote"


def test_a_remotes_charts_take_the_remote_profile_whatever_profile_base_yaml_gives_them(tmp_path):
    import copy

    from lib.desired import desired_state

    base = copy.deepcopy(BASE_WITH_VALUES)
    base["spec"]["values"]["profile"] = "demo"  # what Istio's manifests/profiles/demo.yaml sets
    clusters = (Cluster("c1", "n1", "c1"), Cluster("c2", "n2", "c2", primary="c1"))
    d = desired_state(Topology("m", clusters, tmp_path / "topology.yaml"), base, addresses={"c1": "203.0.113.5"})
    # values.profile overrides the remote profile's in the charts: demo would render a whole istiod there.
    assert d["c2"].operator["spec"]["values"]["profile"] == "remote"
    assert d["c1"].operator["spec"]["values"]["profile"] == "demo"
    plain = desired_state(Topology("m", clusters, tmp_path / "topology.yaml"), copy.deepcopy(BASE_WITH_VALUES),
                          addresses={"c1": "203.0.113.5"})
    # Without a profile in base.yaml's values the overlay is as before: spec.profile remote sets it.
    assert "profile" not in plain["c2"].operator["spec"]["values"]


def test_mid_root_move_every_primarys_istiod_accepts_a_second_root_and_keeps_base_yamls_env(tmp_path):
    import copy

    from lib import carotation
    from lib.desired import desired_state

    transition = carotation.Transition(1, "a" * 64, "b" * 64, "2030-01-01T00:00:00Z")
    clusters = (Cluster("c1", "n1", "c1"), Cluster("c2", "n2", "c2", primary="c1"))
    topology = Topology("m", clusters, tmp_path / "topology.yaml")
    for base in (copy.deepcopy(BASE_WITH_VALUES), {"apiVersion": "install.istio.io/v1alpha1",
                                                   "kind": "IstioOperator", "spec": {}}):
        before = copy.deepcopy(base)
        d = desired_state(topology, base, addresses={"c1": "203.0.113.5"}, transition=transition)
        assert base == before
        env = d["c1"].operator["spec"]["values"]["pilot"]["env"]
        assert env["ISTIO_MULTIROOT_MESH"] == "true"
        assert env.get("PILOT_TRACE_SAMPLING") == before["spec"].get("values", {}).get("pilot", {}).get(
            "env", {}).get("PILOT_TRACE_SAMPLING")
        assert "pilot" not in d["c2"].operator["spec"]["values"] or "ISTIO_MULTIROOT_MESH" not in \
            (d["c2"].operator["spec"]["values"]["pilot"].get("env") or {}), "a remote runs no istiod"
    plain = desired_state(topology, copy.deepcopy(BASE_WITH_VALUES), addresses={"c1": "203.0.113.5"})
    assert "ISTIO_MULTIROOT_MESH" not in plain["c1"].operator["spec"]["values"]["pilot"]["env"]


def test_the_exposed_istiod_is_a_gateway_and_a_virtual_service_as_in_istios_sample():
    from lib.overlay import expose_istiod

    objects = expose_istiod(None)
    assert [(o["apiVersion"], o["kind"], o["metadata"]["name"]) for o in objects] == [
        ("networking.istio.io/v1", "Gateway", "istiod-gateway"),
        ("networking.istio.io/v1", "VirtualService", "istiod-vs")]


# --- somebody else's CA is never replaced unasked -------------------------------------------------

def test_teardown_keeps_a_cacerts_that_is_neither_labelled_by_setup_mesh_nor_on_the_workspaces_root(tmp_path):
    from lib.commands import uninstalls_for
    from lib.kube import Observed
    from lib.istiousage import IstioUsage
    from tests.test_status import _ca, _pem

    ours, theirs = _ca("Root CA"), _ca("Root CA")
    ours_pem, theirs_pem = _pem(ours[0]), _pem(theirs[0])
    (tmp_path / "certs").mkdir()

    def kept(cacerts, labelled, root=ours_pem):
        (tmp_path / "certs" / "root-cert.pem").write_bytes(root or b"")
        if root is None:
            (tmp_path / "certs" / "root-cert.pem").unlink()
        seen = Observed(reachable=True, cacerts=cacerts, cacerts_labelled=labelled)
        return uninstalls_for(tmp_path, frozenset({"setup-mesh"}), {"c1": IstioUsage()}, {"c1": seen})["c1"].foreign_cacerts

    assert kept(None, False) is None, "no cacerts: nothing to keep"
    assert kept({"root-cert.pem": theirs_pem}, True) is None, "setup-mesh's label: removed with istio-system"
    # Applied before the label existed: it trusts this workspace's root (alone, or beside another mid-move).
    assert kept({"root-cert.pem": ours_pem}, False) is None
    assert kept({"root-cert.pem": theirs_pem + ours_pem}, False) is None
    # Somebody's own CA: another root (even one of the same name), none, or an unreadable one; named by its CA.
    theirs_ca = {"root-cert.pem": theirs_pem, "ca-cert.pem": theirs_pem}
    assert kept(theirs_ca, False) == "CA CN=Root CA,O=Test, issued by CN=Root CA,O=Test"
    assert kept({"ca-cert.pem": ours_pem}, False) is not None
    assert kept({"root-cert.pem": b"garbage"}, False) is not None
    # A workspace without a readable root cannot claim an unlabelled cacerts.
    assert kept({"root-cert.pem": ours_pem}, False, root=None) is not None


def test_teardown_names_the_gateway_api_crds_it_keeps_where_the_cluster_ran_an_ambient_mesh(tmp_path):
    from lib.commands import describe_kept, uninstalls_for
    from lib.kube import Observed
    from lib.istiousage import IstioUsage
    from lib.names import DATA_PLANE_ANNOTATION

    (tmp_path / "certs").mkdir()
    # as apply records it: the fingerprint and, for ambient, the data plane, on istio-system
    seen = {ctx: Observed(reachable=True, namespace=True, applied="fp",
                          annotations={DATA_PLANE_ANNOTATION: mode} if mode else {})
            for ctx, mode in (("amb", "ambient"), ("side", "sidecar"), ("old", None))}
    uninstall = uninstalls_for(tmp_path, frozenset({"setup-mesh"}), {ctx: IstioUsage() for ctx in seen}, seen)
    assert describe_kept("amb", uninstall["amb"]) == (
        "amb: keeps the Gateway API CRDs (gateway.networking.k8s.io) its ambient mesh needed: other Gateway API "
        "resources may use them; delete them yourself once nothing does (the GatewayClasses istiod made stay with "
        "them, served by nothing: istio-east-west for the east-west gateway, and those of Istio's own Gateway API "
        "support such as istio and istio-waypoint; `kubectl get gatewayclasses` lists them)")
    assert describe_kept("side", uninstall["side"]) is None
    assert describe_kept("old", uninstall["old"]) is None, "applied before the data plane was recorded: sidecar"


def test_an_ambient_clusters_east_west_gateway_carries_its_own_network(tmp_path):
    from lib.desired import desired_state

    clusters = (Cluster("c1", "n1", "c1"), Cluster("c2", "n2", "c2"))
    d = desired_state(Topology("m", clusters, tmp_path / "topology.yaml"),
                      {"apiVersion": "install.istio.io/v1alpha1", "kind": "IstioOperator", "spec": {"profile": "ambient"}})
    for ctx, network in (("c1", "n1"), ("c2", "n2")):
        groups = {g.purpose: g.objects for g in d[ctx].istio_objects}
        (gateway,) = groups["east-west gateway"]
        assert gateway["kind"] == "Gateway" and gateway["metadata"]["labels"]["topology.istio.io/network"] == network


def test_a_cluster_counts_as_at_the_stage_only_for_this_moves_new_root(tmp_path):
    import datetime as dt

    from lib.carotation import Transition, stage_since
    from lib.names import TRANSITION_ANNOTATION

    t = Transition(2, "a" * 64, "b" * 64, "2030-01-01T00:00:00Z")
    other_move = Transition(2, "a" * 64, "c" * 64, "2030-01-01T00:00:00Z")
    since = "2030-01-01T06:00:00Z"
    assert stage_since(t, {TRANSITION_ANNOTATION: t.annotation(since)}) == dt.datetime(2030, 1, 1, 6, tzinfo=dt.timezone.utc)
    assert stage_since(t, {TRANSITION_ANNOTATION: other_move.annotation(since)}) is None, "another move's stage 2"
    assert stage_since(t, {TRANSITION_ANNOTATION: Transition(1, "a" * 64, "b" * 64, "x").annotation(since)}) is None
    assert stage_since(t, {}) is None


# --- config: what --context selects, ambient's refusal of remotes, which kubeconfig is read ----------

def _topology_file(tmp_path, text: str):
    from lib.config import load_topology

    path = tmp_path / "topology.yaml"
    path.write_text(text)
    return load_topology(path)


THREE_CONTEXTS = ("mesh_id: m\ncontexts:\n  ctx-a:\n    network: n1\n    cluster_name: alpha\n"
                  "  ctx-b:\n    network: n1\n  ctx-c:\n    network: n2\n    primary: ctx-a\n")


def test_context_selects_by_context_or_cluster_name_and_refuses_a_name_not_in_the_topology(tmp_path):
    import pytest

    from lib.config import select_clusters
    from lib.errors import ConfigError

    topology = _topology_file(tmp_path, THREE_CONTEXTS)
    assert [c.context for c in select_clusters(topology, [])] == ["ctx-a", "ctx-b", "ctx-c"], "none: every cluster"
    # in topology order, whichever order and spelling (context or Istio cluster name) the user gave
    assert [c.context for c in select_clusters(topology, ["ctx-c", "alpha"])] == ["ctx-a", "ctx-c"]
    assert [c.context for c in select_clusters(topology, ["ctx-b"])] == ["ctx-b"]
    with pytest.raises(ConfigError) as refused:
        select_clusters(topology, ["ctx-b", "ctx-d"])
    assert refused.value.message == f"--context ctx-d: not in {topology.path}"
    assert refused.value.hint == "did you mean 'ctx-c'? name contexts listed there: ctx-a, ctx-b, ctx-c"


def test_an_ambient_base_refuses_remotes_and_names_them_and_where_the_profile_is(tmp_path):
    import pytest

    from lib.config import check_data_plane, load_base
    from lib.errors import ConfigError

    topology = _topology_file(tmp_path, THREE_CONTEXTS)
    base_path = tmp_path / "base.yaml"
    base_path.write_text("apiVersion: install.istio.io/v1alpha1\nkind: IstioOperator\nspec:\n  profile: ambient\n")
    with pytest.raises(ConfigError) as refused:
        check_data_plane(topology, load_base(base_path))
    assert refused.value.message == (f"{base_path}:4: profile ambient does not support remote clusters, and "
                                     f"{topology.path} makes these remote: ctx-c (primary: ctx-a)")
    assert "multi-primary only: drop `primary:` from those contexts" in refused.value.hint
    assert refused.value.exit_code == 2
    # ambient without remotes, and remotes in sidecar mode, are fine
    check_data_plane(_topology_file(tmp_path, THREE_CONTEXTS.replace("    primary: ctx-a\n", "")), load_base(base_path))
    base_path.write_text(base_path.read_text().replace("ambient", "default"))
    check_data_plane(topology, load_base(base_path))


def _kubeconfig_file(path, contexts: dict[str, str], clusters: dict[str, str]) -> str:
    """contexts: context -> its cluster's name; clusters: cluster name -> server."""
    import yaml

    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config",
        # Entries without a name come first: kubectl takes them as named "", and so must the search.
        "clusters": [{"cluster": {"server": "https://nameless:6443"}}]
        + [{"name": n, "cluster": {"server": s}} for n, s in clusters.items()],
        "users": [{"name": "u", "user": {"token": "t"}}],
        "contexts": [{"context": {"cluster": "", "user": "u"}}]
        + [{"name": c, "context": {"cluster": n, "user": "u"}} for c, n in contexts.items()],
    }))
    return str(path)


def test_kubeconfig_is_read_as_kubectl_reads_it(tmp_path, monkeypatch):
    import os

    from lib.kubeconfig import kubeconfig_files, resolve_contexts

    topology = _topology_file(tmp_path, "mesh_id: m\ncontexts:\n  c1:\n    network: n1\n  c2:\n    network: n1\n")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("KUBECONFIG", raising=False)
    assert kubeconfig_files(None) == [str(tmp_path / "home" / ".kube" / "config")]
    assert kubeconfig_files("given") == ["given"]
    first = _kubeconfig_file(tmp_path / "first", {"c1": "one"}, {"zero": "https://zero:6443", "one": "https://one:6443"})
    second = _kubeconfig_file(tmp_path / "second", {"c1": "other", "c2": "two"},
                              {"other": "https://other:6443", "two": "https://two:6443"})
    # KUBECONFIG is a list; a missing entry is skipped, and the first file that names a context wins
    monkeypatch.setenv("KUBECONFIG", os.pathsep.join([str(tmp_path / "absent"), first, "", second]))
    assert kubeconfig_files(None) == [str(tmp_path / "absent"), first, second]
    resolved = resolve_contexts(topology, None)
    assert resolved.mesh_id == "m" and resolved.path == topology.path
    assert {c.context: (c.server, c.kubeconfig) for c in resolved.clusters} == {
        "c1": ("https://one:6443", None), "c2": ("https://two:6443", None)}
    # --kubeconfig: that file alone, handed on as an absolute path to kubectl and istioctl
    monkeypatch.chdir(tmp_path)
    both = _kubeconfig_file(tmp_path / "both", {"c1": "one", "c2": "one"}, {"one": "https://one:6443"})
    assert {c.kubeconfig for c in resolve_contexts(topology, "both").clusters} == {both}


def test_a_kubeconfig_that_is_missing_or_lacks_a_context_says_which_file_and_how_it_was_chosen(tmp_path, monkeypatch):
    import os

    import pytest

    from lib.kubeconfig import resolve_contexts
    from lib.errors import ConfigError

    topology = _topology_file(tmp_path, "mesh_id: m\ncontexts:\n  c1:\n    network: n1\n")
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "gone"))
    with pytest.raises(ConfigError) as missing:
        resolve_contexts(topology, None)  # one file named: kubectl requires it
    assert missing.value.message == f"kubeconfig file not found: {tmp_path / 'gone'} (KUBECONFIG)"
    assert missing.value.hint == "check the path, or point --kubeconfig / KUBECONFIG at your kubeconfig"
    with pytest.raises(ConfigError) as missing:
        resolve_contexts(topology, str(tmp_path / "nope"))
    assert missing.value.message == f"kubeconfig file not found: {tmp_path / 'nope'} (--kubeconfig)"
    other = _kubeconfig_file(tmp_path / "other", {"c9": "x"}, {"x": "https://x:6443"})
    monkeypatch.setenv("KUBECONFIG", os.pathsep.join([str(tmp_path / "gone"), other]))
    with pytest.raises(ConfigError) as lacking:
        resolve_contexts(topology, None)
    assert lacking.value.message == (f"{topology.path}: context 'c1' is not in the kubeconfig "
                                     f"({tmp_path / 'gone'} or {other})")
    assert "kubectl config get-contexts" in lacking.value.hint


@pytest.mark.parametrize("contexts,said", [
    ("  - c1\n", "contexts must be a mapping of kube context names, not a list"),
    ("  c1: net1\n", "context 'c1' must be a mapping with at least network:, not a string"),
    ("  c1: 7\n", "not a number"), ("  c1: 7.5\n", "not a number"), ("  c1: true\n", "not true/false"),
    ("  c1:\n", "not empty"), ("  c1: 2030-01-01\n", "not date"),
])
def test_a_value_of_the_wrong_type_is_named_as_a_user_writes_it(tmp_path, contexts, said):
    from lib.errors import ConfigError

    with pytest.raises(ConfigError) as refused:
        _topology_file(tmp_path, "mesh_id: m\ncontexts:\n" + contexts)
    assert said in refused.value.message


@pytest.mark.parametrize("context,suggested", [
    # The cluster's own name out of the contexts aws and gcloud write.
    ("arn:aws:eks:eu-west-1:1234:cluster/Prod_EU", "prod-eu"),
    ("arn:aws-us-gov:eks:us-gov-west-1:1234:cluster/gov", "gov"),
    ("gke_my-project_europe-west1-b_Shop_Prod", "shop-prod"),
    ("gke_p_" + "x" * 70, "x" * 63),  # at most 63 characters: the last ones
    ("kind:dev/one", "kind-dev-one"),
    ("__", "cluster1"),
])
def test_an_invalid_cluster_name_gets_a_valid_suggestion(tmp_path, context, suggested):
    from lib.errors import ConfigError

    with pytest.raises(ConfigError) as refused:
        _topology_file(tmp_path, f"mesh_id: m\ncontexts:\n  '{context}':\n    network: n1\n")
    assert refused.value.hint.endswith(f"e.g. cluster_name: {suggested}")


def test_contexts_that_are_no_cluster_names_each_get_a_distinct_valid_one():
    from lib.config import cluster_names_for, is_cluster_name

    contexts = ["cluster1", "arn:aws:eks:us-east-1:1:cluster/prod", "arn:aws:eks:eu-west-1:1:cluster/prod",
                "gke_p_z_prod", "gke_p_z_cluster1"]
    named = cluster_names_for(contexts)
    assert "cluster1" not in named, "a valid name stays the context's"
    assert named["arn:aws:eks:us-east-1:1:cluster/prod"] == "prod"
    # Two clusters called prod in two regions: the second keeps its whole context, made a label.
    assert named["arn:aws:eks:eu-west-1:1:cluster/prod"] == "arn-aws-eks-eu-west-1-1-cluster-prod"
    assert named["gke_p_z_prod"] == "gke-p-z-prod" and named["gke_p_z_cluster1"] == "gke-p-z-cluster1"
    assert all(is_cluster_name(n) for n in named.values()) and len(set(named.values())) == len(named)
    assert cluster_names_for(["a_b", "a-b"]) == {"a_b": "a-b-2"}


# --- plan: teardown of one cluster, stale secrets, the words of a cluster's result ---------------------

def _lines(steps) -> list[tuple[str, str, str, list[str]]]:
    return [(s.title, s.change, s.done, [c.pasteable() for c in s.commands]) for s in steps]


def test_a_teardown_deletes_istio_then_its_secrets_then_the_namespace_and_keeps_somebodys_ca(tmp_path):
    from lib.kube import Observed, Tools
    from lib.istiousage import IstioUsage
    from lib.plan import Uninstall, uninstall_steps

    c1, secrets = Cluster("c1", "n1", "c1"), ["istio-remote-secret-c2", "istio-remote-secret-c3"]
    ours = frozenset({"setup-mesh"})
    purge = ("uninstall Istio and its CRDs", "- Istio (istioctl uninstall --purge)", "",
             ["istioctl uninstall --purge -y --context c1"])
    delete = "kubectl --context c1 delete secret -n istio-system --ignore-not-found"
    seen = Observed(reachable=True, namespace=True)
    assert _lines(uninstall_steps(Tools(), c1, secrets, seen, Uninstall(tmp_path, ours, IstioUsage()))) == [
        purge,
        ("delete cacerts and remote secrets", "- secret cacerts and 2 remote secrets", "",
         [f"{delete} cacerts istio-remote-secret-c2 istio-remote-secret-c3"]),
        ("delete namespace istio-system", "- namespace istio-system", "removed",
         ["kubectl --context c1 delete namespace istio-system --ignore-not-found"])]
    # no remote secret: cacerts alone
    assert _lines(uninstall_steps(Tools(), c1, [], seen, Uninstall(tmp_path, ours, IstioUsage())))[1] == (
        "delete cacerts and remote secrets", "- secret cacerts", "", [f"{delete} cacerts"])
    # somebody's own CA in cacerts: it stays, and istio-system with it, without setup-mesh's annotations
    foreign = Uninstall(tmp_path, ours, IstioUsage(), foreign_cacerts="CN=corp")
    unmark = ("remove setup-mesh's annotations from namespace istio-system (kept)",
              "~ namespace istio-system kept, without setup-mesh's annotations", "removed (istio-system kept)",
              ["kubectl --context c1 annotate namespace istio-system setup-mesh.io/applied- setup-mesh.io/data-plane- "
               "setup-mesh.io/root-transition- topology.istio.io/controlPlaneClusters-"])
    assert _lines(uninstall_steps(Tools(), c1, secrets[:1], seen, foreign)) == [
        purge, ("delete remote secrets", "- 1 remote secret", "", [f"{delete} istio-remote-secret-c2"]), unmark]
    assert _lines(uninstall_steps(Tools(), c1, [], seen, foreign)) == [purge, unmark], "nothing of ours but Istio"
    # others' objects in istio-system (a gateway's TLS secret): the namespace stays, even when Istio goes whole
    kept = Uninstall(tmp_path, ours, IstioUsage(namespace_objects=["Secret my-ingress-cert"]))
    assert _lines(uninstall_steps(Tools(), c1, [], seen, kept))[-1] == unmark
    # an earlier delete of istio-system is under way: wait for it (a second delete is refused)
    terminating = Observed(reachable=True, namespace=True, namespace_terminating=True)
    assert _lines(uninstall_steps(Tools(), c1, [], terminating, Uninstall(tmp_path, ours, IstioUsage())))[-1] == (
        "istio-system is being deleted: wait until it is gone",
        "- namespace istio-system (already being deleted: waited for)", "removed",
        ["kubectl --context c1 wait --for=delete namespace/istio-system --timeout=600s"])


def test_stale_secrets_are_deleted_by_name_and_a_clusters_result_counts_its_secrets_in_words():
    from lib.kube import Tools
    from lib.plan import prune_step, secrets_done

    step = prune_step(Tools(), Cluster("c1", "n1", "c1"), ["istio-remote-secret-old", "istio-remote-secret-gone"])
    assert _lines([step]) == [(
        "delete 2 stale remote secrets", "- stale remote secrets: istio-remote-secret-old, istio-remote-secret-gone",
        "2 stale secrets pruned", ["kubectl --context c1 delete secret -n istio-system --ignore-not-found "
                                   "istio-remote-secret-old istio-remote-secret-gone"])]
    assert prune_step(Tools(), Cluster("c1", "n1", "c1"), ["x"]).title == "delete 1 stale remote secret"
    assert [secrets_done(*counts) for counts in ((0, 0, 0), (1, 0, 0), (2, 1, 0), (0, 1, 0), (0, 2, 0), (0, 0, 1),
                                                  (3, 2, 2))] == [
        "", "1 secret imported", "2 secrets imported, 1 replaced", "1 secret replaced", "2 secrets replaced",
        "1 stale secret pruned", "3 secrets imported, 2 replaced, 2 stale secrets pruned"]


def test_a_scoped_teardown_removes_exactly_what_setup_mesh_and_istiod_made_for_it(tmp_path):
    """Others use Istio here: Istio's CRDs stay, and only what carries setup-mesh's name or label goes, with the
    ambient Gateway and what istiod made for it (nothing reconciles those once istiod is gone)."""
    from lib.kube import Observed, Tools
    from lib.istiousage import IstioUsage
    from lib.plan import Uninstall, uninstall_steps

    seen = Observed(reachable=True, namespace=True, eastwest_made_by="gateway")
    how = Uninstall(tmp_path, frozenset({"setup-mesh"}), IstioUsage(resources={("VirtualService", "shop"): 1}))
    first = uninstall_steps(Tools(), Cluster("c1", "n1", "c1"), [], seen, how)[0]
    delete = "kubectl --context c1 delete"
    assert [c.pasteable() for c in first.commands] == [
        f"{delete} gateways.networking.istio.io cross-network-gateway -n istio-system --ignore-not-found",
        f"{delete} gateways.networking.istio.io,virtualservices.networking.istio.io -n istio-system "
        "-l app.kubernetes.io/managed-by=setup-mesh --ignore-not-found",
        f"{delete} gateways.gateway.networking.k8s.io istio-eastwestgateway -n istio-system --ignore-not-found",
        f"{delete} deployment,service,serviceaccount -n istio-system "
        "-l gateway.networking.k8s.io/gateway-name=istio-eastwestgateway,gateway.istio.io/managed --ignore-not-found"]


def test_an_ambient_base_may_not_set_the_multi_network_switch_setup_mesh_sets_in_every_istiod(tmp_path):
    from lib.config import load_base
    from lib.errors import ConfigError

    path = tmp_path / "base.yaml"
    text = ("apiVersion: install.istio.io/v1alpha1\nkind: IstioOperator\nspec:\n  profile: ambient\n"
            "  values:\n    pilot:\n      env:\n        AMBIENT_ENABLE_MULTI_NETWORK: 'false'\n"
            "  components:\n    pilot:\n      k8s:\n        env:\n        - name: OTHER\n          value: '1'\n"
            "        - name: AMBIENT_ENABLE_MULTI_NETWORK\n          value: 'false'\n")
    path.write_text(text)
    with pytest.raises(ConfigError) as refused:
        load_base(path)
    why = f"is set by setup-mesh: spec.profile ambient ({path}:4) turns it on in every istiod"
    assert refused.value.message.splitlines() == [
        "base.yaml sets values that setup-mesh owns:",
        f"  {path}:8: spec.values.pilot.env.AMBIENT_ENABLE_MULTI_NETWORK {why}",
        f"  {path}:15: spec.components.pilot.k8s.env[1] (AMBIENT_ENABLE_MULTI_NETWORK) {why}"]
    assert refused.value.hint == ("delete those lines from base.yaml: setup-mesh sets AMBIENT_ENABLE_MULTI_NETWORK for "
                                  "every istiod of an ambient mesh")
    path.write_text(text.replace("profile: ambient", "profile: default"))  # a sidecar mesh: istiod's env is the user's
    assert load_base(path).operator["spec"]["profile"] == "default"


@pytest.mark.parametrize("text,where", [
    ("apiVersion: install.istio.io/v1alpha1\nkind: Deployment\nspec: {}\n", ":2: base.yaml has kind 'Deployment'"),
    ("apiVersion: install.istio.io/v1alpha1\nspec: {}\n", ": base.yaml has kind None"),
    ("kind: IstioOperator\napiVersion: apps/v1\nspec: {}\n", ":2: base.yaml has apiVersion 'apps/v1'"),
    ("kind: IstioOperator\nspec: {}\n", ": base.yaml has apiVersion None"),
    ("apiVersion: install.istio.io/v1alpha1\nkind: IstioOperator\nspec: [a]\n", ":3: spec must be a mapping, not a list"),
    ("- a\n", ": base.yaml is not an IstioOperator (it is a list)"),
])
def test_a_base_that_is_no_istio_operator_is_refused_at_the_line_at_fault(tmp_path, text, where):
    from lib.config import load_base
    from lib.errors import ConfigError

    path = tmp_path / "base.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as refused:
        load_base(path)
    assert refused.value.message.startswith(f"{path}{where}"), refused.value.message


# --- survivors of the full mutation run: rules a user would feel --------------------------------------

def test_istio_system_is_sent_as_a_namespace_with_its_labels_and_annotations_only_when_it_has_some(tmp_path):
    from lib.desired import desired_state
    from lib.names import ISTIO_NAMESPACE

    clusters = (Cluster("c1", "n1", "c1"), Cluster("c2", "n2", "c2", primary="c1"))
    d = desired_state(Topology("m", clusters, tmp_path / "topology.yaml"),
                      {"apiVersion": "install.istio.io/v1alpha1", "kind": "IstioOperator", "spec": {}},
                      addresses={"c1": "203.0.113.5"})
    primary, remote = d["c1"].namespace_manifest(), d["c2"].namespace_manifest()
    # kubectl apply refuses an object without apiVersion and kind spelt exactly so.
    assert primary == {"apiVersion": "v1", "kind": "Namespace",
                       "metadata": {"name": ISTIO_NAMESPACE, "labels": {"topology.istio.io/network": "n1"}}}
    assert (remote["apiVersion"], remote["kind"]) == ("v1", "Namespace")
    assert remote["metadata"]["annotations"] == {"topology.istio.io/controlPlaneClusters": "c1"}


def test_without_a_root_in_the_workspace_only_setup_meshs_label_claims_a_cacerts():
    from lib.assesscerts import CacertsState, assess_cacerts
    from tests.test_status import _ca, _pem

    held = {"root-cert.pem": _pem(_ca("Someone's Root")[0])}
    # certs/root-cert.pem lost: nothing to compare with, so somebody's unlabelled CA stays theirs (refused,
    # never replaced), while what setup-mesh labelled is its own, outdated.
    assert assess_cacerts(held, False, None, []).state is CacertsState.FOREIGN
    assert assess_cacerts(held, True, None, []).state is CacertsState.OURS_OUTDATED


def test_a_clusters_root_is_named_by_the_first_certificate_of_its_bundle():
    from lib.assesscerts import root_id
    from lib.certs import read_cert
    from tests.test_status import _ca, _pem

    first, second = _pem(_ca("Root A")[0]), _pem(_ca("Root B")[0])
    # Mid-move a bundle holds two roots: the plan and the refusal name the one in charge, the first.
    assert root_id(first + second).fingerprint == read_cert(first).fingerprint
    assert root_id(second + first).subject != root_id(first + second).subject
    assert root_id(b"") is None and root_id(b"garbage") is None


def test_one_import_applies_every_peers_secret_it_has_on_stdin_unshown_and_skips_a_failed_export():
    import yaml

    from lib.kube import Tools
    from lib.secretsteps import import_step
    from tests.test_behaviours import Replies, _context

    target = Cluster("c1", "n1", "c1")
    peers = [Cluster("c2", "n1", "c2"), Cluster("c3", "n2", "c3"), Cluster("c4", "n2", "c4")]

    def secret(name: str) -> dict:
        return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": f"istio-remote-secret-{name}"},
                "stringData": {name: f"token-of-{name}"}}

    step = import_step(Tools(), target, peers, copies={"c3": secret("c3")}, replacing={"c3": "new token"})
    runner = Replies("")
    ctx = _context(runner)
    ctx.shared["remote_secrets"] = {"c2": secret("c2")}  # c4's export failed: nothing of it to bring
    done = step.action(ctx)
    (command,) = runner.asked
    argv = list(command.argv)
    assert argv[-2:] == ["-f", "-"] and argv[argv.index("--context") + 1] == "c1", "applied to the importer"
    assert not command.stdin_shown, "remote secrets hold tokens: never shown or logged"
    sent = yaml.safe_load(command.stdin)
    assert [i["metadata"]["name"] for i in sent["items"]] == ["istio-remote-secret-c2", "istio-remote-secret-c3"]
    assert done == "1 secret imported, 1 replaced"
    # Nothing brought (every export failed): nothing is applied.
    runner = Replies("")
    assert import_step(Tools(), target, peers[:1], copies={}).action(_context(runner)) == ""
    assert runner.asked == []


def test_the_export_asks_istioctl_for_the_clusters_secret_in_istio_system_by_its_name_and_address():
    from lib.errors import MeshError
    from lib.kube import Tools
    from lib.secretsteps import export_step
    from tests.test_behaviours import Replies, _context

    printed = ("# This file is autogenerated, do not edit.\napiVersion: v1\nkind: Secret\nmetadata:\n"
               "  annotations:\n    networking.istio.io/cluster: alpha\n  creationTimestamp: null\n"
               "  labels:\n    istio/multiCluster: \"true\"\n  name: istio-remote-secret-alpha\n"
               "  namespace: default\nstringData:\n  alpha: |\n    apiVersion: v1\n    clusters:\n"
               "    - cluster:\n        server: https://203.0.113.7:6443\n      name: alpha\n"
               "    users:\n    - name: alpha\n      user:\n        token: abc\n---\n")
    cluster = Cluster("ctx-a", "n1", "alpha", api_server="https://203.0.113.7:6443")
    step = export_step(Tools(), cluster)
    runner = Replies(printed)
    ctx = _context(runner)
    step.action(ctx)
    (command,) = runner.asked
    argv = list(command.argv)
    # Without --namespace istioctl makes the reader's token in the kubeconfig's namespace; --server is the
    # address the peers reach (topology.yaml api_server), not the kubeconfig's.
    assert argv == ["istioctl", "create-remote-secret", "--namespace", "istio-system", "--name", "alpha",
                    "--server", "https://203.0.113.7:6443", "--context", "ctx-a"]
    secret = ctx.shared["remote_secrets"]["ctx-a"]
    assert secret["metadata"]["name"] == "istio-remote-secret-alpha"
    assert secret["metadata"]["namespace"] == "istio-system", "Istio reads remote secrets there only"
    without = list(export_step(Tools(), Cluster("c2", "n1", "c2")).commands[0].argv)
    assert "--server" not in without
    with pytest.raises(MeshError) as failed:
        export_step(Tools(), cluster).action(_context(Replies("")))
    assert "printed no usable Secret" in failed.value.message and "create-remote-secret" in failed.value.message
    assert failed.value.hint == "run it by hand to see what istioctl printed"


def test_istio_system_records_what_was_installed_a_remote_once_its_primarys_address_is_known(tmp_path):
    from lib.desired import desired_state
    from lib.installsteps import RECORD_TITLE, record_step
    from lib.kube import Tools
    from tests.test_behaviours import Replies, _context

    base = {"apiVersion": "install.istio.io/v1alpha1", "kind": "IstioOperator", "spec": {"profile": "default"}}
    clusters = (Cluster("c1", "n1", "c1"), Cluster("c2", "n2", "c2", primary="c1"))
    topology = Topology("m", clusters, tmp_path / "topology.yaml")
    planned = desired_state(topology, base)  # the primary's gateway has no address yet
    remote = planned["c2"]
    step = record_step(Tools(), clusters[1], remote.fingerprint, remote)
    assert step.title == RECORD_TITLE
    runner = Replies("")
    ctx = _context(runner)
    ctx.shared["gateway_address"] = {"c1": "203.0.113.9"}
    step.action(ctx)
    (command,) = runner.asked
    # What the remote finally installed: pointed at the address its primary's gateway got in this run.
    installed = desired_state(topology, base, addresses={"c1": "203.0.113.9"})["c2"].fingerprint
    assert installed != remote.fingerprint
    assert list(command.argv) == ["kubectl", "--context", "c2", "annotate", "--overwrite", "namespace", "istio-system",
                                  f"setup-mesh.io/applied={installed}"]
    # A primary records at once, and a mesh back from ambient drops the data-plane annotation.
    primary = record_step(Tools(), clusters[0], "fp1", planned["c1"], was="ambient")
    assert [list(c.argv)[-2:] for c in primary.commands] == [["setup-mesh.io/applied=fp1", "setup-mesh.io/data-plane-"]]
    assert primary.action is None
    assert list(record_step(Tools(), clusters[0], "fp1", planned["c1"], was="sidecar").commands[0].argv)[-1] == \
        "setup-mesh.io/applied=fp1"


def test_the_install_fingerprint_ignores_key_order_and_stays_the_same_across_releases_of_setup_mesh():
    from lib.overlay import fingerprint

    one = {"spec": {"profile": "default", "values": {"a": 1, "b": [1, 2]}}}
    reordered = {"spec": {"values": {"b": [1, 2], "a": 1}, "profile": "default"}}
    # Keys reordered in base.yaml change nothing installed: no cluster is reinstalled for it.
    assert fingerprint(one) == fingerprint(reordered)
    assert fingerprint(one, ["x"]) != fingerprint(one) and fingerprint(["x"], one) != fingerprint(one, ["x"])
    # istio-system of every running mesh records this value: a new way of computing it would reinstall
    # every cluster on the first apply after an upgrade of setup-mesh.
    import hashlib
    recorded = hashlib.sha256(b'{"spec":{"profile":"default","values":{"a":1}}}\0["x"]\0').hexdigest()[:16]
    assert fingerprint({"spec": {"values": {"a": 1}, "profile": "default"}}, ["x"]) == recorded
