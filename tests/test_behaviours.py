"""Decisions a user of real clusters would feel, each pinned in-process (no emulated cluster): what
rotate-certs confirms and refuses, what status and verify blame, in which order apply and teardown
remove things, and when apply waits for the ambient east-west Gateway. The end-to-end side of the same
behaviours is in test_behaviours_e2e.py."""
from __future__ import annotations

import datetime as dt
import io
import json
import threading
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from rich.console import Console

from lib import carotation
from lib.names import TRANSITION_ANNOTATION
from lib.config import AMBIENT, Cluster, Topology
from lib.desired import desired_state
from lib.errors import ConfigError, MeshError
from lib.executor import RunContext
from lib.kube import Observed, RemoteSecretInfo, Tools
from lib.istiousage import IstioUsage
from lib.mesh import mesh_model
from lib.overlay import injection_path
from lib.names import FIELD_MANAGER, MANAGED_BY_LABEL
from lib.plan import WAIT_KEY, Removal, Uninstall, build_apply_plan, teardown_plan, uninstall_steps, wait_gateway_step
from lib.reporter import Reporter
from lib.rotate import confirm_step, rotate_intermediates
from lib.statusjudge import evaluate
from lib.diagnosis import Facts, judge
from lib.traffic import ClusterRun, PodState
from tests.test_status import NOW, _ca, _cacerts, _codes, _healthy, _mid_transition, _pem, _ws, roots  # noqa: F401


class Replies:
    """A runner that answers each command with the next canned stdout, and counts what it was asked."""

    def __init__(self, *stdouts: str):
        self.stdouts, self.asked = list(stdouts), []

    def run(self, command):
        self.asked.append(command)
        out = self.stdouts.pop(0) if len(self.stdouts) > 1 else self.stdouts[0]
        return SimpleNamespace(stdout=out, ok=True, returncode=0, stderr="")


def _context(runner) -> RunContext:
    return RunContext(runner, Reporter(quiet=True, err_console=Console(file=io.StringIO())), "c1", {},
                      threading.Lock(), threading.Event())


# --- rotate-certs ----------------------------------------------------------------------------------

def test_rotate_certs_reports_a_control_plane_left_with_no_ready_istiod():
    cluster = Cluster("c1", "n1", "c1")
    down = json.dumps({"status": {"replicas": 1, "readyReplicas": 0}})
    step = confirm_step(Tools(), cluster, "istiod", timeout=0)
    with pytest.raises(MeshError) as failed:
        step.action(_context(Replies(down)))
    assert "istiod has no ready replica" in failed.value.message and "cacerts changed" in failed.value.message
    assert "app=istiod" in failed.value.hint

    # Not ready at first, ready a moment later (istiod restarting): the step waits for it, then passes.
    runner = Replies(json.dumps({"status": {}}), json.dumps({"status": {"readyReplicas": 1}}))
    step = confirm_step(Tools(), cluster, "istiod", timeout=30)
    import lib.rotate
    lib.rotate.POLL_SECONDS, saved = 0.01, lib.rotate.POLL_SECONDS
    try:
        step.action(_context(runner))
    finally:
        lib.rotate.POLL_SECONDS = saved
    assert len(runner.asked) == 2


def _workspace_mid_transition(tmp_path: Path) -> Path:
    """A workspace (topology, base.yaml, kubeconfig, certs/) whose move to a new root is at stage 2."""
    root = Path(__file__).resolve().parent.parent
    workdir = tmp_path / "ws"
    workdir.mkdir()
    (workdir / "base.yaml").write_text((root / "base.yaml").read_text())
    (workdir / "topology.yaml").write_text(yaml.safe_dump(
        {"mesh_id": "mesh1", "contexts": {"c1": {"network": "n1"}, "c2": {"network": "n2"}}}))
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "c1",
        "clusters": [{"name": c, "cluster": {"server": f"https://{c}.example:6443"}} for c in ("c1", "c2")],
        "contexts": [{"name": c, "context": {"cluster": c, "user": c}} for c in ("c1", "c2")],
        "users": [{"name": c, "user": {"token": "x"}} for c in ("c1", "c2")]}))
    certs = workdir / "certs"
    for name in ("root-cert.pem", "root-key.pem", "c1/ca-cert.pem", "c2/ca-cert.pem"):
        (certs / name).parent.mkdir(parents=True, exist_ok=True)
        (certs / name).write_text(f"{name}\n")
    carotation.save_transition(workdir, carotation.Transition(2, "a" * 64, "b" * 64, "2029-12-30T00:00:00Z"))
    return workdir


def test_plain_rotate_certs_during_a_root_move_is_refused_before_anything_runs(tmp_path):
    workdir = _workspace_mid_transition(tmp_path)
    before = {p: p.read_bytes() for p in workdir.rglob("*") if p.is_file()}

    class NothingRuns:
        def run(self, command):
            raise AssertionError(f"ran {command} although rotate-certs must be refused")

        def require(self, name):
            pass

    for dry_run in (False, True):
        with pytest.raises(ConfigError) as refused:
            rotate_intermediates(workdir, kubeconfig=str(tmp_path / "kubeconfig"), istio_dir=None, contexts=[],
                                 expiring_within=None, dry_run=dry_run, parallel=2, timeout=30,
                                 runner=NothingRuns(), reporter=Reporter(quiet=True))
        assert "move to a new root is under way (stage 2 of 3)" in refused.value.message
        assert "rotate-certs --root" in refused.value.hint
    assert {p: p.read_bytes() for p in workdir.rglob("*") if p.is_file()} == before


# --- status ----------------------------------------------------------------------------------------

def _primary_and_remote(tmp_path, root):
    clusters = (Cluster("c1", "n1", "c1", api_server="https://c1.example:6443"),
                Cluster("c2", "n2", "c2", api_server="https://c2.example:6443", primary="c1"))
    topology = Topology("mesh1", clusters, tmp_path / "topology.yaml")
    observed, istiod = _healthy(topology, root)
    observed["c2"].remote_secrets = {}  # a remote holds no secret; its primary holds the remote's
    observed["c2"].annotations = {"topology.istio.io/controlPlaneClusters": "c1"}
    istiod["c2"] = replace(istiod["c2"], installed=True)
    return topology, observed, istiod


def test_status_flags_a_remote_whose_injector_calls_another_clusters_or_networks_path(tmp_path, roots):
    topology, observed, istiod = _primary_and_remote(tmp_path, roots[0])
    remote = topology.clusters[1]
    assert injection_path(remote) == "/inject/cluster/c2/net/n2"
    ws = _ws(tmp_path, topology, roots[0])

    def injector_calls(path):
        from lib.statusread import InjectorWebhook

        return evaluate(ws, observed, istiod, now=NOW, injection={"c2": InjectorWebhook(path, trusted=True)})

    assert _codes(injector_calls("/inject/cluster/c2/net/n2"), "c2") == []
    for wrong in ("/inject/cluster/c1/net/n1", "/inject/cluster/c2/net/n1", "/inject/cluster/c1/net/n2",
                  "/inject", None):
        status = injector_calls(wrong)
        assert _codes(status, "c2") == ["injection_path_wrong"], wrong
        assert not status.healthy
        problem = next(p for c in status.clusters for p in c.problems if p.code == "injection_path_wrong")
        assert "/inject/cluster/c2/net/n2" in problem.message and "apply" in problem.hint
        assert _codes(status, "c1") == []


def test_the_next_root_stage_can_start_a_day_after_the_cluster_that_reached_the_stage_last(tmp_path, roots):
    ws, observed, istiod = _mid_transition(tmp_path, roots, 2)
    t = ws.transition
    reached = {"c1": "2029-12-30T06:00:00Z", "c2": "2029-12-31T18:30:00Z", "c3": "2029-12-31T00:00:00Z"}
    for ctx, since in reached.items():
        observed[ctx].annotations = {TRANSITION_ANNOTATION: t.annotation(since)}
    doc = evaluate(ws, observed, istiod, now=NOW).to_json()["transition"]
    assert doc["in_step"] is True and doc["since"] == "2029-12-31T18:30:00Z"
    assert "from 2030-01-01T18:30:00Z" in doc["next"], doc["next"]
    # Whichever cluster is last, its time counts (not the first cluster's, nor the earliest).
    observed["c1"].annotations = {TRANSITION_ANNOTATION: t.annotation("2030-01-01T02:00:00Z")}
    doc = evaluate(ws, observed, istiod, now=NOW).to_json()["transition"]
    assert doc["since"] == "2030-01-01T02:00:00Z" and "from 2030-01-02T02:00:00Z" in doc["next"]


# --- teardown and removal --------------------------------------------------------------------------

def _exposed_istiod_objects(primary: Cluster, remote: Cluster) -> list[dict]:
    topology = Topology("m", (primary, remote), Path("topology.yaml"))
    d = desired_state(topology, {"apiVersion": "install.istio.io/v1alpha1", "kind": "IstioOperator", "spec": {}})
    exposed = [o for group in d[primary.context].istio_objects if group.purpose == "expose istiod"
               for o in group.objects]
    assert exposed, "a primary with a remote exposes its istiod"
    return exposed


def test_a_scoped_teardown_of_a_primary_with_remotes_removes_its_exposed_istiod_objects(tmp_path):
    primary, remote = Cluster("c1", "n1", "c1"), Cluster("c2", "n2", "c2", primary="c1")
    exposed = _exposed_istiod_objects(primary, remote)
    # Somebody's policy in istio-system: the namespace stays, so setup-mesh's objects there go one by one.
    others = IstioUsage(resources={("VirtualService", "shop"): 1, ("PeerAuthentication", "istio-system"): 1})
    how = Uninstall(tmp_path, frozenset({"istio", "eastwest"}), others)
    assert not how.purge
    steps = uninstall_steps(Tools(), primary, [], Observed(reachable=True, namespace=True), how)
    deletes = [c.argv[c.argv.index("delete") + 1:] for s in steps for c in s.commands if "delete" in c.argv]
    for obj in exposed:
        kind = obj["kind"].lower() + "s." + obj["apiVersion"].split("/")[0]
        labels = obj["metadata"].get("labels") or {}

        def selects(args):
            if "-l" not in args:
                return obj["metadata"]["name"] in args[1:]
            wanted = (s.split("=", 1) for s in args[args.index("-l") + 1].split(","))
            return all(labels.get(k) == v for k, v in wanted)

        removed = [args for args in deletes if kind in args[0].split(",") and selects(args)
                   and args[args.index("-n") + 1] == obj["metadata"]["namespace"]]
        assert removed, f"{obj['kind']} {obj['metadata']['name']} is left behind by {deletes}"
        assert labels.get(MANAGED_BY_LABEL) == FIELD_MANAGER
    # Others' objects are kept: nothing is deleted across every namespace, and Istio's CRDs stay.
    assert not any("--all-namespaces" in argv or "-A" in argv or "crd" in argv for argv in deletes)
    assert not any("--purge" in c.argv for s in steps for c in s.commands)
    assert ("namespace", "istio-system", "--ignore-not-found") not in deletes


def _removal_order(phase) -> dict[str, list[tuple[str, str]]]:
    return {ctx: [(a.cluster, a.key) for a in steps[0].after] for ctx, steps in phase.steps.items()}


def test_teardown_uninstalls_a_remote_before_its_primary(tmp_path):
    clusters = [Cluster("c1", "n1", "c1"), Cluster("c2", "n2", "c2", primary="c1"), Cluster("c3", "n2", "c3")]
    seen = {c.context: Observed(reachable=True, namespace=True) for c in clusters}
    how = {c.context: Uninstall(tmp_path, frozenset(), IstioUsage()) for c in clusters}
    phase = teardown_plan(Tools(), clusters, seen, how)
    order = _removal_order(phase)
    assert order["c1"] == [("c2", phase.steps["c2"][-1].key)]
    assert order["c2"] == [] and order["c3"] == []


def test_one_apply_that_removes_a_primary_and_its_remote_uninstalls_the_remote_first(tmp_path):
    from tests.test_plan import _healthy as healthy_plan_inputs, _workdir

    kept = (Cluster("c3", "n2", "c3", server="https://c3:6443"),)
    topology = Topology("m", kept, tmp_path / "topology.yaml")
    desired = desired_state(topology, {"apiVersion": "install.istio.io/v1alpha1", "kind": "IstioOperator", "spec": {}})
    observed = healthy_plan_inputs(topology, desired)
    gone = [Removal("c1", "c1", None, True), Removal("c2", "c2", None, True, primary="c1")]
    for r in gone:
        observed[r.context] = Observed(reachable=True, namespace=True)
    plan = build_apply_plan(topology=topology, desired=desired, observed=observed, removed=gone,
                            removed_observed=observed, workdir=_workdir(tmp_path), tools=Tools(), release=None,
                            intermediate_vars={}, gateway_timeout=5,
                            uninstall={r.context: Uninstall(tmp_path, frozenset(), IstioUsage()) for r in gone})
    remove = next(p for p in plan.phases if p.name == "remove clusters")
    order = _removal_order(remove)
    assert order["c1"] == [("c2", remove.steps["c2"][-1].key)], "the primary's istiod serves the remote until it goes"
    assert order["c2"] == []
    assert [r.context for r in plan.removals] == ["c1", "c2"]


# --- verify ----------------------------------------------------------------------------------------

class _Hints:
    namespace, revision, ambient = "verify", None, False
    apply, status = "`setup_mesh.py apply`", "`setup_mesh.py status`"

    def kubectl(self, cluster, *args):
        return "kubectl --context " + cluster.context + " " + " ".join(args)


def _several_gateways_on_n2(tmp_path, roots):
    """c1 on n1; c2 and c3 on n2, each with its own east-west gateway. c1's calls reach nobody on n2."""
    clusters = (Cluster("c1", "n1", "c1", api_server="https://c1.example:6443"),
                Cluster("c2", "n2", "c2", api_server="https://c2.example:6443"),
                Cluster("c3", "n2", "c3", api_server="https://c3.example:6443"))
    topology = Topology("mesh1", clusters, tmp_path / "topology.yaml")
    observed, istiod = _healthy(topology, roots[0])
    status = evaluate(_ws(tmp_path, topology, roots[0]), observed, istiod, now=NOW)
    assert status.healthy
    ready = PodState("p", True, "", True)
    runs = {c.context: ClusterRun(applied=True, client=ready, server=ready,
                                  answered_by={"c1": 1} if c.context == "c1" else {"c2": 1, "c3": 1})
            for c in clusters}
    return topology, status, runs


def _blamed(topology, status, runs, exposes: dict[str, bool | None]) -> set[tuple[str, str]]:
    pairs, _ = judge(topology, runs, Facts(status, exposes, mesh_model(topology)), _Hints())
    return {(p.source, p.target) for p in pairs for c in p.causes if c.code == "cross_network_gateway_missing"}


def test_verify_blames_the_cross_network_gateway_only_when_no_gateway_of_the_network_exposes_the_services(
        tmp_path, roots):
    topology, status, runs = _several_gateways_on_n2(tmp_path, roots)
    # One of n2's two gateways carries *.local: traffic for n2 has a way in, so that is not the cause.
    for one in ("c2", "c3"):
        assert _blamed(topology, status, runs, {"c1": True, "c2": one == "c2", "c3": one == "c3"}) == set()
    # Not read (None) is not blamed either: verify does not know.
    assert _blamed(topology, status, runs, {"c1": True, "c2": False, "c3": None}) == set()
    # Neither exposes the services: every call from n1 into n2 is blamed on it.
    assert _blamed(topology, status, runs, {"c1": True, "c2": False, "c3": False}) == {("c1", "c2"), ("c1", "c3")}


# --- apply and the ambient east-west Gateway -------------------------------------------------------

AMBIENT_BASE = {"apiVersion": "install.istio.io/v1alpha1", "kind": "IstioOperator", "spec": {"profile": "ambient"}}


def _gateway(programmed: bool, address: str | None = "198.51.100.7") -> dict:
    status = {"conditions": [{"type": "Programmed", "status": "True" if programmed else "False",
                              "reason": "Programmed" if programmed else "AddressNotAssigned",
                              "message": "" if programmed else "the LoadBalancer has no address yet"}]}
    if address:
        status["addresses"] = [{"type": "IPAddress", "value": address}]
    return {"kind": "Gateway", "metadata": {"name": "istio-eastwestgateway"}, "status": status}


def _ambient_reapply(tmp_path, programmed: dict[str, bool]):
    from lib.gatewayapi import ClusterCrds
    from tests.test_plan import _healthy as healthy_plan_inputs, _workdir

    clusters = (Cluster("c1", "n1", "c1", server="https://c1:6443"), Cluster("c2", "n2", "c2", server="https://c2:6443"))
    topology = Topology("m", clusters, tmp_path / "topology.yaml")
    desired = desired_state(topology, AMBIENT_BASE)
    observed = healthy_plan_inputs(topology, desired)
    for c in clusters:
        seen = observed[c.context]
        seen.annotations = dict(desired[c.context].namespace_annotations)
        seen.eastwest_made_by, seen.gateway_api = "gateway", ClusterCrds(True, "v1.4.0", "standard")
        seen.eastwest_gateway = _gateway(programmed[c.context])
    plan = build_apply_plan(topology=topology, desired=desired, observed=observed, removed=[], removed_observed={},
                            workdir=_workdir(tmp_path / str(len(list(tmp_path.iterdir())))), tools=Tools(),
                            release=None, intermediate_vars={}, gateway_timeout=0)
    return {ctx: [s for s in steps if s.title == WAIT_KEY] for phase in plan.phases
            for ctx, steps in phase.steps.items()}, plan


def test_a_reapply_waits_for_an_ambient_gateway_that_is_not_programmed_and_fails_when_it_never_is(tmp_path):
    waits, plan = _ambient_reapply(tmp_path, {"c1": True, "c2": True})
    assert plan.unchanged == ["c1", "c2"] and not any(waits.values()), "a healthy ambient mesh plans nothing"

    waits, plan = _ambient_reapply(tmp_path, {"c1": True, "c2": False})
    assert plan.unchanged == ["c1", "c2"], "nothing to reinstall: only the wait"
    assert not waits.get("c1") and len(waits["c2"]) == 1
    wait = waits["c2"][0]
    assert "gateway" in wait.commands[0].argv[wait.commands[0].argv.index("get") + 1]
    with pytest.raises(MeshError) as failed:  # the address is there, but istiod never programs it
        wait.action(_context(Replies(json.dumps(_gateway(False)))))
    assert "has not programmed the east-west Gateway" in failed.value.message
    assert "AddressNotAssigned" in failed.value.message and "--gateway-timeout" in failed.value.hint

    ctx = _context(Replies(json.dumps(_gateway(True))))
    wait.action(ctx)
    assert ctx.shared["gateway_address"] == {"c2": "198.51.100.7"}


def test_the_ambient_gateway_wait_polls_until_programmed():
    import lib.gatewaysteps

    runner = Replies(json.dumps(_gateway(False)), json.dumps(_gateway(False, None)), json.dumps(_gateway(True)))
    step = wait_gateway_step(Tools(), Cluster("c2", "n2", "c2"), timeout=30, ambient=True)
    lib.gatewaysteps.GATEWAY_POLL_SECONDS, saved = 0.01, lib.gatewaysteps.GATEWAY_POLL_SECONDS
    try:
        ctx = _context(runner)
        step.action(ctx)
    finally:
        lib.gatewaysteps.GATEWAY_POLL_SECONDS = saved
    assert len(runner.asked) == 3 and ctx.shared["gateway_address"] == {"c2": "198.51.100.7"}


def test_the_sidecar_gateway_wait_polls_the_services_loadbalancer_until_it_has_an_address():
    import lib.gatewaysteps

    pending = {"spec": {"type": "LoadBalancer"}, "status": {"loadBalancer": {}}}
    ready = {**pending, "status": {"loadBalancer": {"ingress": [{"hostname": "eastwest.elb.example.com"}]}}}
    runner = Replies(json.dumps(pending), json.dumps(ready))
    step = wait_gateway_step(Tools(), Cluster("c2", "n2", "c2"), timeout=30)
    lib.gatewaysteps.GATEWAY_POLL_SECONDS, saved = 0.01, lib.gatewaysteps.GATEWAY_POLL_SECONDS
    try:
        ctx = _context(runner)
        step.action(ctx)
        with pytest.raises(MeshError) as failed:  # a LoadBalancer that never gets one: said, with the command
            wait_gateway_step(Tools(), Cluster("c2", "n2", "c2"), timeout=0).action(_context(Replies(json.dumps(pending))))
    finally:
        lib.gatewaysteps.GATEWAY_POLL_SECONDS = saved
    assert len(runner.asked) == 2 and ctx.shared["gateway_address"] == {"c2": "eastwest.elb.example.com"}
    assert failed.value.message == "east-west gateway istio-eastwestgateway has no address after 0s"
    assert "kubectl --context c2 get service istio-eastwestgateway -n istio-system -o json" in failed.value.hint


def test_an_import_waits_for_each_peers_export_and_says_what_it_adds_and_replaces():
    from lib.secretsteps import EXPORT_KEY, import_step

    peers = [Cluster(c, "n1", c) for c in ("c2", "c3", "c4")]
    step = import_step(Tools(), Cluster("c1", "n1", "c1"), peers, {},
                       {"c2": "new address", "c4": "new credentials"})
    assert [(a.cluster, a.key, a.required) for a in step.after] == [(p.context, EXPORT_KEY, False) for p in peers]
    assert step.change == ("+ remote secret of c3; replace remote secrets of c2 (new address), c4 (new credentials)")
    secrets = {p.context: {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": f"istio-remote-secret-{p.name}"}}
               for p in peers}
    ctx = _context(Replies(""))
    ctx.shared["remote_secrets"] = secrets
    assert step.action(ctx) == "1 secret imported, 2 replaced"
    same = import_step(Tools(), Cluster("c1", "n1", "c1"), peers[:2], {}, {"c2": "new address", "c3": "new address"})
    assert same.change == "~ remote secrets of c2, c3 (new address)"
    ctx = _context(Replies(""))
    ctx.shared["remote_secrets"] = secrets
    assert same.action(ctx) == "2 secrets replaced"


def _switch_plan(tmp_path, networks: tuple[str, str], running_base: dict, base: dict, made_by: str,
                 running_networks: tuple[str, str] | None = None, cluster: str = "c1"):
    """``cluster``'s steps in the plan for ``base`` over clusters set up from ``running_base`` (on
    ``running_networks``, else ``networks``), whose east-west gateway ``made_by`` made ("gateway": istiod, for the
    ambient Gateway; "operator": the sidecar-mode install)."""
    from lib.gatewayapi import ClusterCrds
    from tests.test_plan import _healthy as healthy_plan_inputs, _workdir

    def topology_on(nets):
        return Topology("m", tuple(Cluster(f"c{i}", net, f"c{i}", server=f"https://c{i}:6443")
                                   for i, net in enumerate(nets, 1)), tmp_path / "topology.yaml")

    topology, before = topology_on(networks), topology_on(running_networks or networks)
    running = desired_state(before, running_base)
    observed = healthy_plan_inputs(before, running)
    for c in before.clusters:
        seen = observed[c.context]
        seen.annotations = dict(running[c.context].namespace_annotations)
        seen.eastwest_made_by, seen.gateway_api = made_by, ClusterCrds(True, "v1.4.0", "standard")
        seen.eastwest_gateway = _gateway(True) if made_by == "gateway" else None
    plan = build_apply_plan(topology=topology, desired=desired_state(topology, base), observed=observed, removed=[],
                            removed_observed={}, workdir=_workdir(tmp_path), tools=Tools(), release=None,
                            intermediate_vars={}, gateway_timeout=0)
    return [s.title for phase in plan.phases for s in phase.steps.get(cluster, [])]


SIDECAR_BASE = {"apiVersion": "install.istio.io/v1alpha1", "kind": "IstioOperator", "spec": {}}
REMOVE_AMBIENT_GATEWAY = "remove the ambient east-west gateway (Gateway istio-eastwestgateway)"


def test_a_switch_between_modes_removes_the_other_modes_gateway_once_and_before_the_install(tmp_path):
    # The other mode's gateway holds the name the new one takes (istio-eastwestgateway): it goes first.
    to_sidecar = _switch_plan(tmp_path / "a", ("n1", "n2"), AMBIENT_BASE, SIDECAR_BASE, "gateway")
    assert to_sidecar.count(REMOVE_AMBIENT_GATEWAY) == 1
    assert to_sidecar.index(REMOVE_AMBIENT_GATEWAY) < to_sidecar.index("install Istio") < \
        to_sidecar.index("install east-west gateway")
    to_ambient = _switch_plan(tmp_path / "b", ("n1", "n2"), SIDECAR_BASE, AMBIENT_BASE, "operator")
    removal = [t for t in to_ambient if "sidecar" in t and t.startswith("remove")]
    assert len(removal) == 1 and to_ambient.index(removal[0]) < to_ambient.index("install Istio")
    assert REMOVE_AMBIENT_GATEWAY not in to_ambient
    # Back to sidecar on one network: no gateway is wanted any more, and the ambient one still goes once.
    merged = _switch_plan(tmp_path / "c", ("n1", "n1"), AMBIENT_BASE, SIDECAR_BASE, "gateway",
                          running_networks=("n1", "n2"), cluster="c2")
    assert merged.count(REMOVE_AMBIENT_GATEWAY) == 1 and "install east-west gateway" not in merged
    assert merged.index(REMOVE_AMBIENT_GATEWAY) < merged.index("install Istio")


def test_an_ambient_mesh_down_to_one_network_removes_its_east_west_gateway_after_the_install(tmp_path):
    # The running Gateway is kept until Istio is installed again: no mode switch, nothing takes its name.
    steps = _switch_plan(tmp_path, ("n1", "n1"), AMBIENT_BASE, AMBIENT_BASE, "gateway", running_networks=("n1", "n2"),
                         cluster="c2")
    assert steps.count(REMOVE_AMBIENT_GATEWAY) == 1
    assert steps.index("install Istio") < steps.index(REMOVE_AMBIENT_GATEWAY)


def test_teardown_takes_a_cluster_for_setup_meshs_by_any_one_thing_setup_mesh_leaves_there():
    from lib.names import COMPONENT_LABEL, OWNER_LABEL
    from lib.uninstallsteps import holds_setup_mesh

    ours = frozenset({"istio", "eastwest"})
    # istio-system kept for somebody's objects, with their own annotation, Istio and CA: nothing of setup-mesh's.
    theirs = {"metadata": {"labels": {COMPONENT_LABEL: "Pilot", OWNER_LABEL: "their-istio"}}}
    nothing = Observed(reachable=True, namespace=True, annotations={"team.example.com/owner": "payments"},
                       deployments={"istiod": theirs}, cacerts={"ca-cert.pem": b"theirs"})
    assert not holds_setup_mesh(nothing, ours)
    ours_deployed = {"metadata": {"labels": {COMPONENT_LABEL: "Pilot", OWNER_LABEL: "istio"}}}
    each = {"its Istio": replace(nothing, deployments={"istiod": ours_deployed}),
            "its remote's istiod Service": replace(nothing, istiod_services={"istiod": ours_deployed}),
            "a remote secret": replace(nothing, remote_secrets={"c2": RemoteSecretInfo("istio-remote-secret-c2", "c2", None, None)}),
            "its cacerts": replace(nothing, cacerts_labelled=True),
            "its east-west gateway": replace(nothing, eastwest_made_by="operator"),
            **{f"its mark {key}": replace(nothing, annotations={**nothing.annotations, key: "x"})
               for key in ("setup-mesh.io/applied", "setup-mesh.io/data-plane", "setup-mesh.io/root-transition",
                           "topology.istio.io/controlPlaneClusters")}}
    for what, seen in each.items():
        assert holds_setup_mesh(seen, ours), what
    marked = replace(nothing, namespace=False, annotations={"setup-mesh.io/applied": "x"})
    assert not holds_setup_mesh(marked, ours), "marks are read off istio-system only"
