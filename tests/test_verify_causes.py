"""verify's causes come from status's one judgment: in-process, on status's own evaluation of a broken
mesh, every cause verify gives a pair rests on a problem status reports for the same cluster; the text
view groups failing pairs by cause, names no code, and fits 80 columns without splitting a command."""
from __future__ import annotations

import io
import re
from pathlib import Path

import pytest
from rich.console import Console

from lib.causes import CAUSES, RESTS_ON
from lib.config import Cluster, Topology
from lib.diagnosis import Facts, judge
from lib.mesh import mesh_model
from lib.statusjudge import evaluate
from lib.statusread import Istiod, IstiodView
from lib.statusreport import Hints
from lib.traffic import ClusterRun, PodState
from lib.verify import VerifyHints
from lib.causes import VerifyResult
from lib.verifyview import describe_pairs, render
from tests import goldens
from tests.test_status import NOW, _cacerts, _codes, _healthy, _ws, roots  # noqa: F401

ROOT = Path(__file__).resolve().parent.parent
READY = PodState("p", True, "", True)


def _topology(tmp_path) -> Topology:
    clusters = tuple(Cluster(f"c{i}", net, f"c{i}", api_server=f"https://c{i}.example:6443")
                     for i, net in ((1, "n1"), (2, "n1"), (3, "n2")))
    return Topology("mesh1", clusters, tmp_path / "topology.yaml")


def _verify(tmp_path, roots, breaks, broken: set[tuple[str, str]], views=None, runs=None):
    """status's evaluation of the mesh with ``breaks`` applied to what was read, and verify's judgment of
    it when exactly the ``broken`` pairs do not answer."""
    topology = _topology(tmp_path)
    observed, istiod = _healthy(topology, roots[0])
    breaks(observed, istiod)
    status = evaluate(_ws(tmp_path, topology, roots[0]), observed, istiod, now=NOW, views=views)
    names = [c.name for c in topology.clusters]
    runs = runs or {c.context: ClusterRun(applied=True, client=READY, server=READY,
                                          answered_by={n: 1 for n in names if (c.name, n) not in broken})
                    for c in topology.clusters}
    hints = VerifyHints(Hints(tmp_path, topology), "setup-mesh-verify", None)
    pairs, problems = judge(topology, runs, Facts(status, {"c1": True, "c2": True, "c3": True},
                                                  mesh_model(topology)), hints)
    return status, VerifyResult("mesh1", "setup-mesh-verify", names, pairs, problems, False)


def _no_secret_of_c3(observed, istiod):
    del observed["c1"].remote_secrets["c3"]


def _c3_gateway_without_address(observed, istiod):
    observed["c3"].eastwest_address = None


def _c2_cacerts_on_another_root(observed, istiod, other=None):
    observed["c2"].cacerts = _cacerts(other)


SCENARIOS = {
    "secret": (_no_secret_of_c3, {("c1", "c3")}, "remote_secret_missing", {("c1", "remote_secret_missing")}),
    "gateway": (_c3_gateway_without_address, {("c1", "c3"), ("c2", "c3")}, "gateway_no_address",
                {("c3", "gateway_pending")}),
    "istiod view": (lambda o, i: None, {("c1", "c3")}, "peer_not_synced", {("c1", "remote_cluster_timeout")}),
}


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_status_and_verify_name_the_same_cause_for_the_same_broken_mesh(tmp_path, roots, name):
    breaks, broken, code, linked = SCENARIOS[name]
    views = {"c1": IstiodView(remotes={"c2": "synced", "c3": "timeout"})} if name == "istiod view" else None
    status, result = _verify(tmp_path, roots, breaks, broken, views)
    failed = {(p.source, p.target): p.causes for p in result.pairs if not p.reached}
    assert set(failed) == broken
    for causes in failed.values():
        (cause,) = causes
        assert cause.code == code and set(cause.status_problems) == linked
    # every status problem a cause names is one status reports on that cluster, of a check it rests on
    for causes in failed.values():
        for cause in causes:
            for context, check_id in cause.status_problems:
                assert check_id in _codes(status, context) and check_id in RESTS_ON[cause.code]


def test_a_cacerts_under_another_root_is_blamed_where_status_blames_it(tmp_path, roots):
    broken = {(a, b) for a in ("c1", "c2", "c3") for b in ("c1", "c2", "c3") if a != b and "c2" in (a, b)}
    status, result = _verify(tmp_path, roots, lambda o, i: _c2_cacerts_on_another_root(o, i, roots[1]), broken)
    assert "cacerts_foreign_root" in _codes(status, "c2")
    causes = {c for p in result.pairs if not p.reached for c in p.causes}
    (cause,) = causes  # one cause, the same for every pair
    assert cause.code == "cacerts_other_root" and cause.status_problems == (("c2", "cacerts_foreign_root"),)
    assert cause.message == ("the cacerts of c2 does not chain to the mesh's root: the workloads whose certificates it "
                             "signs are not trusted across the mesh"), "c2 has no remotes"
    assert cause.hint == next(p.hint for c in status.clusters for p in c.problems if p.code == "cacerts_foreign_root")


def _ambient_pairs_from_c2(tmp_path, roots, breaks):
    """An ambient mesh, every ztunnel ready, with ``breaks`` applied to what status read; verify's pairs when
    every call from or to c2 fails."""
    from dataclasses import replace

    from lib.config import AMBIENT

    topology = _topology(tmp_path)
    observed, istiod = _healthy(topology, roots[0])
    for seen in observed.values():
        seen.daemonsets["ztunnel"] = {"status": {"numberReady": 1, "desiredNumberScheduled": 1}}
    breaks(observed, istiod)
    status = evaluate(replace(_ws(tmp_path, topology, roots[0]), data_plane=AMBIENT), observed, istiod, now=NOW)
    names = [c.name for c in topology.clusters]
    runs = {c.context: ClusterRun(applied=True, client=READY, server=READY,
                                  answered_by={n: 1 for n in names if "c2" not in (c.name, n)})
            for c in topology.clusters}
    hints = VerifyHints(Hints(tmp_path, topology), "setup-mesh-verify", None, ambient=True)
    pairs, _ = judge(topology, runs, Facts(status, {}, mesh_model(topology, AMBIENT)), hints)
    return topology, status, pairs


def test_ambient_ztunnel_is_blamed_from_status_reading_of_the_daemonset(tmp_path, roots):
    """verify reads no DaemonSet of its own: status's one reading of istio-system says ztunnel is gone."""
    def gone(observed, istiod):
        del observed["c2"].daemonsets["ztunnel"]  # c2's ztunnel was deleted

    topology, status, pairs = _ambient_pairs_from_c2(tmp_path, roots, gone)
    assert "ztunnel_missing" in _codes(status, "c2")
    names = [c.name for c in topology.clusters]
    failed = {(p.source, p.target): p.causes for p in pairs if not p.reached}
    assert set(failed) == {(a, b) for a in names for b in names if "c2" in (a, b)}
    for causes in failed.values():
        (cause,) = [c for c in causes if c.code == "ztunnel_not_ready"]
        assert cause.status_problems == (("c2", "ztunnel_missing"),)
        assert cause.message.startswith("c2's ztunnel is missing")



def test_ambient_each_ztunnel_down_is_named_with_its_pods_and_the_command_that_shows_it(tmp_path, roots):
    """A call between two clusters whose ztunnels are both down names both: the one gone, and the one short of
    ready pods with its counts; each hint ends with the command that lists that cluster's ztunnel."""
    from dataclasses import replace

    from lib.config import AMBIENT

    topology = _topology(tmp_path)
    observed, istiod = _healthy(topology, roots[0])
    observed["c1"].daemonsets["ztunnel"] = {"status": {"numberReady": 1, "desiredNumberScheduled": 1}}
    observed["c3"].daemonsets["ztunnel"] = {"status": {"numberReady": 1, "desiredNumberScheduled": 2}}
    status = evaluate(replace(_ws(tmp_path, topology, roots[0]), data_plane=AMBIENT), observed, istiod, now=NOW)
    names = [c.name for c in topology.clusters]
    runs = {c.context: ClusterRun(applied=True, client=READY, server=READY,
                                  answered_by={n: 1 for n in names if not {"c2", "c3"} & {c.name, n} or n == c.name})
            for c in topology.clusters}
    status_hints = Hints(tmp_path, topology)
    pairs, _ = judge(topology, runs, Facts(status, {}, mesh_model(topology, AMBIENT)),
                     VerifyHints(status_hints, "setup-mesh-verify", None, ambient=True))
    (pair,) = [p for p in pairs if (p.source, p.target) == ("c3", "c2")]
    causes = [c for c in pair.causes if c.code == "ztunnel_not_ready"]
    c2, c3 = topology.clusters[1], topology.clusters[2]
    assert [c.message for c in causes] == [
        "c3's ztunnel is not ready (1 of 2 pods ready): its pods neither call nor take calls across the mesh",
        "c2's ztunnel is missing: its pods neither call nor take calls across the mesh"]
    for cause, cluster, code in zip(causes, (c3, c2), ("ztunnel_not_ready", "ztunnel_missing")):
        (problem,) = [p for c in status.clusters if c.cluster is cluster for p in c.problems if p.code == code]
        look = status_hints.kubectl(cluster, "get", "daemonsets", "-n", "istio-system", "-l",
                                    "app.kubernetes.io/name=ztunnel")
        assert cause.hint == f"{problem.hint}; look at it: `{look}`"
        assert cause.status_problems == ((cluster.context, code),)
    # c2 not reaching its own helloworld either: its ztunnel says why, and nothing else is looked for;
    # c1, whose ztunnel is ready, not reaching its own helloworld: that call is what failed.
    runs["c1"] = replace(runs["c1"], answered_by={})
    runs["c2"] = replace(runs["c2"], answered_by={})
    pairs, _ = judge(topology, runs, Facts(status, {}, mesh_model(topology, AMBIENT)),
                     VerifyHints(status_hints, "setup-mesh-verify", None, ambient=True))
    itself = {p.source: [c.code for c in p.causes] for p in pairs if p.source == p.target and not p.reached}
    assert itself == {"c1": ["local_call_failed"], "c2": ["ztunnel_not_ready"]}


def test_a_problem_about_another_peer_is_not_put_on_a_pair(tmp_path, roots):
    # c1 lacks c3's secret only: a call from c1 to c2 that fails is not explained by it
    _, result = _verify(tmp_path, roots, _no_secret_of_c3, {("c1", "c3"), ("c1", "c2")})
    causes = {(p.source, p.target): [c.code for c in p.causes] for p in result.pairs if not p.reached}
    assert causes == {("c1", "c3"): ["remote_secret_missing"], ("c1", "c2"): ["unknown"]}


def test_a_primary_failing_its_remote_is_blamed_where_status_reports_it(tmp_path, roots):
    """c2 is a remote of c1; c1 lost c2's secret: status reports it on c2 (its primary lacks its secret),
    verify puts it on every pair with c2, linked to that problem."""
    clusters = (Cluster("c1", "n1", "c1", api_server="https://c1.example:6443"),
                Cluster("c2", "n2", "c2", api_server="https://c2.example:6443", primary="c1"),
                Cluster("c3", "n2", "c3", api_server="https://c3.example:6443"))
    topology = Topology("mesh1", clusters, tmp_path / "topology.yaml")
    observed, istiod = _healthy(topology, roots[0])
    del observed["c1"].remote_secrets["c2"]
    observed["c2"].remote_secrets.clear()
    observed["c2"].annotations = {"topology.istio.io/controlPlaneClusters": "c1"}
    status = evaluate(_ws(tmp_path, topology, roots[0]), observed, istiod, now=NOW)
    names = [c.name for c in clusters]
    with_remote = {(a, b) for a in names for b in names if "c2" in (a, b)}
    runs = {c.context: ClusterRun(applied=True, client=READY, server=READY,
                                  answered_by={n: 1 for n in names if (c.name, n) not in with_remote})
            for c in clusters}
    hints = VerifyHints(Hints(tmp_path, topology), "setup-mesh-verify", None)
    pairs, _ = judge(topology, runs, Facts(status, {"c1": True, "c3": True}, mesh_model(topology)), hints)
    blamed = {(p.source, p.target): c for p in pairs for c in p.causes if c.code == "primary_lacks_secret"}
    assert set(blamed) == with_remote
    for cause in blamed.values():
        assert cause.status_problems == (("c2", "primary_lacks_secret"),)
        assert "primary_lacks_secret" in _codes(status, "c2")
        assert cause.message.startswith("c1, the primary of c2, holds no current remote secret of c2 (missing)")


def test_what_status_finds_healthy_verify_does_not_blame(tmp_path, roots):
    # the gateway has an address and every secret is there: status is healthy, so a pair that does not
    # answer is not put on them; verify says it does not know, and where to look
    status, result = _verify(tmp_path, roots, lambda o, i: None, {("c1", "c3")})
    assert status.healthy
    (pair,) = [p for p in result.pairs if not p.reached]
    assert [c.code for c in pair.causes] == ["unknown"] and pair.causes[0].status_problems == ()


def test_every_cause_is_registered_and_documented():
    documented = set(re.findall(r"`([a-z_]+)`", (ROOT / "docs" / "verify-json.md").read_text()
                                .split("## Causes", 1)[1]))
    assert set(CAUSES) - {"pod_not_ready", "pod_missing"} <= documented
    assert set(RESTS_ON) <= set(CAUSES)


def test_pairs_are_said_in_few_words():
    names = ["a", "b", "c"]
    every = [(x, y) for x in names for y in names]
    assert describe_pairs(every, names) == "every pair"
    assert describe_pairs([p for p in every if "b" in p], names) == "every call from or to b"
    assert describe_pairs([("a", "c"), ("b", "c"), ("c", "c")], names) == "every call to c"
    assert describe_pairs([("a", "c"), ("b", "c")], names) == "a -> c, b -> c"


# --- the text view ---------------------------------------------------------------------------------

def _two_causes_and_a_pod(observed, istiod):
    _no_secret_of_c3(observed, istiod)
    _c3_gateway_without_address(observed, istiod)


def _broken_view(tmp_path, roots, width: int, monkeypatch) -> str:
    monkeypatch.chdir(tmp_path)
    topology = _topology(tmp_path)
    pending = PodState("helloworld-c2-5d9f", False, "helloworld: ImagePullBackOff: Back-off pulling image "
                       "\"registry.istio.io/release/examples-helloworld-v1:1.0\"", True)
    answered = {"c1": {"c1": 2}, "c2": {"c1": 3}, "c3": {"c1": 2, "c3": 2}}
    runs = {c.context: ClusterRun(applied=True, client=READY, server=pending if c.context == "c2" else READY,
                                  answered_by=answered[c.context]) for c in topology.clusters}
    _, result = _verify(tmp_path, roots, _two_causes_and_a_pod, set(), runs=runs)
    out = io.StringIO()
    render(result, Console(file=out, width=width, force_terminal=True, color_system=None, highlight=False))
    return out.getvalue()


@pytest.mark.parametrize("width", [80, 160])
def test_verify_text_groups_pairs_by_cause_and_names_no_code(tmp_path, roots, monkeypatch, width):
    text = _broken_view(tmp_path, roots, width, monkeypatch)
    lines = text.splitlines()
    assert not [c for c in CAUSES if re.search(rf"\b{c}\b", text)], "codes are for -o json"
    # one block per cause: the helloworld that is not ready explains every call to c2, once
    assert text.count("helloworld in c2 is not ready") == 1 and "every call to c2" in text
    assert text.count("c3's east-west gateway has no address") == 1
    assert "c1 -> c3, c2 -> c3: c3's east-west gateway has no address" in text.replace("\n  ", " ")
    if width == 80:
        assert max(len(line) for line in lines) <= 80, [line for line in lines if len(line) > 80]
    for line in lines:  # a pasteable command is never split across lines
        assert line.count("`") % 2 == 0, line
        assert not re.search(r"setup-mesh$|kubectl$|--context$", line.rstrip()), line
    goldens.check(f"verify-causes-{width}.txt", text)


# --- what only the traffic shows: verify's steps, its pods, their sidecars ------------------------------

def _pairs(result) -> dict[tuple[str, str], list[tuple[str, str]]]:
    """Each pair that did not answer -> its causes as (code, message)."""
    return {(p.source, p.target): [(c.code, c.message) for c in p.causes] for p in result.pairs if not p.reached}


def test_a_failed_step_and_a_helloworld_not_ready_are_told_once_per_cluster_and_on_each_pair(tmp_path, roots):
    names = ("c1", "c2", "c3")
    runs = {"c1": ClusterRun(applied=False, error="could not create namespace setup-mesh-verify: forbidden"),
            "c2": ClusterRun(applied=True, client=READY, server=PodState("helloworld-7d9f", False, "ImagePullBackOff", True),
                             answered_by={"c1": 0}),
            "c3": ClusterRun(applied=True, client=READY, server=READY, answered_by={"c3": 1})}
    broken = {(a, b) for a in names for b in names if "c1" in (a, b) or b == "c2"}
    status, result = _verify(tmp_path, roots, lambda o, i: None, broken, runs=runs)
    assert set(_pairs(result)) == broken | {("c2", "c3")}  # c2 answered nothing at all
    for (src, dst), causes in _pairs(result).items():
        if "c1" in (src, dst):
            assert causes == [("step_failed", "verify could not run in c1")]
        elif dst == "c2":
            assert causes == [("helloworld_not_ready", "helloworld in c2 is not ready")]
    problems = {(c.code, c.message): c.hint for c in result.problems}
    assert set(problems) == {("step_failed", "c1: could not create namespace setup-mesh-verify: forbidden"),
                             ("pod_not_ready", "c2: the helloworld pod helloworld-7d9f is not ready: ImagePullBackOff")}
    assert problems[("step_failed", "c1: could not create namespace setup-mesh-verify: forbidden")].startswith("re-run verify")
    hints = {c.hint for p in result.pairs if not p.reached and ("c1" in (p.source, p.target) or p.target == "c2")
             for c in p.causes}
    assert hints == {"see the problems above", "see why under c2's pods above"}, "each pair points at its cluster's problem"
    assert "kubectl --context c2 describe pod -n setup-mesh-verify helloworld-7d9f" in \
        problems[("pod_not_ready", "c2: the helloworld pod helloworld-7d9f is not ready: ImagePullBackOff")]


def test_a_helloworld_never_created_is_told_so_on_the_pairs_to_it(tmp_path, roots):
    names = ("c1", "c2", "c3")
    runs = {c: ClusterRun(applied=True, client=READY, server=READY, answered_by={n: 1 for n in names if n != "c3"})
            for c in names}
    runs["c3"].server = PodState("helloworld", False, "pods \"helloworld-\" is forbidden", True, created=False)
    _, result = _verify(tmp_path, roots, lambda o, i: None, {(a, "c3") for a in names}, runs=runs)
    assert _pairs(result) == {(a, "c3"): [("helloworld_not_ready", "helloworld in c3 was never created")] for a in names}
    (problem,) = result.problems
    assert problem.code == "pod_missing" and problem.message.startswith("c3: no helloworld pod was created")


def test_pods_without_a_sidecar_and_a_cluster_not_reaching_itself_are_each_blamed_on_their_pairs(tmp_path, roots):
    names = ("c1", "c2", "c3")
    bare_client = PodState("curl-5c4d", True, "", False)
    bare_server = PodState("helloworld-7d9f", True, "", False)
    runs = {"c1": ClusterRun(applied=True, client=READY, server=READY, answered_by={"c1": 1, "c3": 1}),
            "c2": ClusterRun(applied=True, client=READY, server=bare_server, answered_by={"c1": 1, "c2": 1, "c3": 1}),
            "c3": ClusterRun(applied=True, client=bare_client, server=READY, answered_by={},
                             failures=["curl: (7) Failed to connect to helloworld port 5000"])}
    _, result = _verify(tmp_path, roots, lambda o, i: None, set(), runs=runs)
    client = ("sidecar_missing", "the curl pod in c3 has no istio-proxy sidecar: its calls stay in c3")
    server = ("sidecar_missing", "the helloworld pod in c2 has no istio-proxy sidecar: it cannot take mTLS calls "
                                 "from other clusters")
    assert _pairs(result) == {
        ("c1", "c2"): [server],
        ("c3", "c1"): [client],
        ("c3", "c2"): [client, server],
        ("c3", "c3"): [("local_call_failed", "c3 does not reach its own helloworld: curl: (7) Failed to connect to "
                                             "helloworld port 5000")]}
    hints = {c.code: c.hint for p in result.pairs for c in p.causes}
    assert "kubectl --context c3 get endpoints helloworld -n setup-mesh-verify" in hints["local_call_failed"]
    assert "mutatingwebhookconfigurations" in hints["sidecar_missing"] and "istio-injection=enabled" in hints["sidecar_missing"]
    assert result.problems == []


def test_ambient_a_network_whose_east_west_gateway_is_not_programmed_is_blamed_for_calls_to_it(tmp_path, roots):
    """c3, alone on n2, has its Gateway but istiod reports no address: calls from n1 to c3 have no network
    gateway to go through; calls within n1 and c3's own are not put on it."""
    from dataclasses import replace

    from lib.config import AMBIENT

    def gateway(programmed: bool) -> dict:
        condition = ({"type": "Programmed", "status": "True", "reason": "Programmed"} if programmed else
                     {"type": "Programmed", "status": "False", "reason": "AddressNotAssigned",
                      "message": "address pending"})
        return {"metadata": {"name": "istio-eastwestgateway", "namespace": "istio-system"},
                "status": {"addresses": [{"value": "198.51.100.9"}] if programmed else [], "conditions": [condition]}}

    topology = _topology(tmp_path)
    observed, istiod = _healthy(topology, roots[0])
    for ctx, seen in observed.items():
        seen.daemonsets["ztunnel"] = {"status": {"numberReady": 1, "desiredNumberScheduled": 1}}
        seen.eastwest_exists, seen.eastwest_made_by = False, None
        seen.eastwest_gateway = gateway(programmed=ctx != "c3")
    status = evaluate(replace(_ws(tmp_path, topology, roots[0]), data_plane=AMBIENT), observed, istiod, now=NOW)
    assert _codes(status, "c3") == ["gateway_not_programmed"] and _codes(status, "c1") == []
    names = [c.name for c in topology.clusters]
    broken = {("c1", "c3"), ("c2", "c3")}
    runs = {c.context: ClusterRun(applied=True, client=READY, server=READY,
                                  answered_by={n: 1 for n in names if (c.name, n) not in broken})
            for c in topology.clusters}
    hints = VerifyHints(Hints(tmp_path, topology), "setup-mesh-verify", None, ambient=True)
    pairs, _ = judge(topology, runs, Facts(status, {}, mesh_model(topology, AMBIENT)), hints)
    failed = {(p.source, p.target): p.causes for p in pairs if not p.reached}
    assert set(failed) == broken
    for causes in failed.values():
        (cause,) = causes
        assert cause.code == "eastwest_gateway_not_programmed"
        assert cause.message.startswith("c3's east-west Gateway has no address in its status (not programmed), so no "
                                        "istiod knows a network gateway for n2")
        assert cause.status_problems == (("c3", "gateway_not_programmed"),)
        assert "kubectl --context c3 get gateways.gateway.networking.k8s.io istio-eastwestgateway" in cause.hint


# --- the control plane of each pair: a primary's own istiod, a remote's primary -----------------------

def _primary_with_remotes(tmp_path, roots, views=None, change=lambda observed, istiod: None):
    """c1 primary of c2 and c3 (remotes), c4 a primary of its own; status's evaluation, and verify's
    judgment when every pair with a cluster of ``broken`` fails."""
    clusters = (Cluster("c1", "n1", "c1", api_server="https://c1.example:6443"),
                Cluster("c2", "n1", "c2", api_server="https://c2.example:6443", primary="c1"),
                Cluster("c3", "n1", "c3", api_server="https://c3.example:6443", primary="c1"),
                Cluster("c4", "n1", "c4", api_server="https://c4.example:6443"))
    topology = Topology("mesh1", clusters, tmp_path / "topology.yaml")
    observed, istiod = _healthy(topology, roots[0])
    for remote in ("c2", "c3"):
        observed[remote].remote_secrets.clear()
        observed[remote].annotations = {"topology.istio.io/controlPlaneClusters": "c1"}
    change(observed, istiod)
    return topology, evaluate(_ws(tmp_path, topology, roots[0]), observed, istiod, now=NOW, views=views)


def _blamed(tmp_path, topology, status, broken: set[str], hints_too: bool = False):
    names = [c.name for c in topology.clusters]
    runs = {c.context: ClusterRun(applied=True, client=READY, server=READY,
                                  answered_by={n: 1 for n in names if not {c.name, n} & broken})
            for c in topology.clusters}
    hints = VerifyHints(Hints(tmp_path, topology), "setup-mesh-verify", None)
    pairs, _ = judge(topology, runs, Facts(status, {}, mesh_model(topology)), hints)
    return {(p.source, p.target): [(c.code, c.message, c.status_problems) + ((c.hint,) if hints_too else ())
                                   for c in p.causes] for p in pairs if not p.reached}


def test_a_primary_whose_istiod_is_not_ready_is_blamed_for_its_own_pairs_and_its_remotes(tmp_path, roots):
    topology, status = _primary_with_remotes(tmp_path, roots, change=lambda o, i: i.__setitem__(
        "c1", Istiod(read=True, installed=True, version="1.29.0", ready=False, cluster_id="c1")))
    assert "istiod_not_ready" in _codes(status, "c1")
    blamed = _blamed(tmp_path, topology, status, {"c1", "c2", "c3"})
    down = ("istiod_not_ready", "c1's istiod has no ready replica: its injector refuses new pods and its sidecars get "
                                "no configuration", (("c1", "istiod_not_ready"),))
    remote_down = [("primary_istiod_not_ready", f"{r} is a remote of c1, whose istiod has no ready replica: {r}'s "
                                                f"injector refuses new pods and its sidecars get no configuration",
                    (("c1", "istiod_not_ready"),)) for r in ("c2", "c3")]
    assert blamed[("c4", "c1")] == [down] and blamed[("c1", "c4")] == [down]
    assert blamed[("c4", "c2")] == [remote_down[0]] and blamed[("c3", "c4")] == [remote_down[1]]
    assert blamed[("c2", "c3")] == remote_down, "both ends' control plane, the same istiod"
    assert ("c4", "c4") not in blamed


def test_a_primary_holding_an_outdated_secret_of_one_remote_is_blamed_for_that_remote_only(tmp_path, roots):
    def reissued(observed, istiod):
        observed["c2"].reader_token = "a token issued after the secret c1 holds"

    topology, status = _primary_with_remotes(tmp_path, roots, change=reissued)
    assert "remote_secret_outdated" in _codes(status, "c1") and "primary_lacks_secret" in _codes(status, "c2")
    assert "primary_lacks_secret" not in _codes(status, "c3")
    blamed = _blamed(tmp_path, topology, status, {"c2"}, hints_too=True)
    assert set(blamed) == {(a, b) for a in ("c1", "c2", "c3", "c4") for b in ("c1", "c2", "c3", "c4") if "c2" in (a, b)}
    outdated = next(p for c in status.clusters for p in c.problems if p.code == "remote_secret_outdated")
    for causes in blamed.values():
        (code, message, linked, hint) = causes[0]
        assert hint == outdated.hint, "status's repair of the outdated secret"
        assert (code, linked) == ("primary_lacks_secret", (("c2", "primary_lacks_secret"),))
        assert message == ("c1, the primary of c2, holds no current remote secret of c2 (outdated): c1's istiod does "
                           "not configure c2's sidecars")



def test_a_primary_without_a_remotes_secret_is_blamed_with_the_command_that_lists_what_it_holds(tmp_path, roots):
    def dropped(observed, istiod):
        del observed["c1"].remote_secrets["c2"]

    topology, status = _primary_with_remotes(tmp_path, roots, change=dropped)
    assert "remote_secret_missing" in _codes(status, "c1") and "primary_lacks_secret" in _codes(status, "c2")
    blamed = _blamed(tmp_path, topology, status, {"c2"}, hints_too=True)
    c1 = topology.clusters[0]
    held = Hints(tmp_path, topology).kubectl(c1, "get", "secrets", "-n", "istio-system", "-l", "istio/multiCluster=true")
    for causes in blamed.values():
        (code, message, linked, hint) = causes[0]
        assert (code, linked) == ("primary_lacks_secret", (("c2", "primary_lacks_secret"),))
        assert message == ("c1, the primary of c2, holds no current remote secret of c2 (missing): c1's istiod does "
                           "not configure c2's sidecars")
        assert hint == f"{Hints(tmp_path, topology).apply} creates it in c1 again (`{held}` lists the secrets c1 holds)"



def test_a_remotes_own_istiod_service_and_its_primarys_unready_istiod_are_each_blamed_with_what_to_look_at(
        tmp_path, roots):
    """c2, a remote of c1, kept the selector of its primary days; c1's istiod has no ready replica: the pairs from
    c2 name both, c1's own pairs its istiod, and each hint the command that shows the pods."""
    from dataclasses import replace

    from tests.fakecluster import istiod_services

    def faults(observed, istiod):
        observed["c2"].istiod_services = istiod_services({"istiod": {"app": "istiod"}})
        istiod["c1"] = replace(istiod["c1"], ready=False)

    topology, status = _primary_with_remotes(tmp_path, roots, change=faults)
    blamed = _blamed(tmp_path, topology, status, {"c1", "c2", "c3"}, hints_too=True)
    c1 = topology.clusters[0]
    pods = f"`{Hints(tmp_path, topology).kubectl(c1, 'get', 'pods', '-n', 'istio-system', '-l', 'app=istiod')}`"
    service = next(p for c in status.clusters if c.cluster.context == "c2" for p in c.problems
                   if p.code == "istiod_service_selects_pods")
    from_c2 = {cause[0]: cause for cause in blamed[("c2", "c4")]}
    assert from_c2["istiod_service_selects_pods"] == (
        "istiod_service_selects_pods", f"c2: {service.message}", (("c2", "istiod_service_selects_pods"),), service.hint)
    assert from_c2["primary_istiod_not_ready"][1:] == (
        "c2 is a remote of c1, whose istiod has no ready replica: c2's injector refuses new pods and its sidecars get "
        "no configuration", (("c1", "istiod_not_ready"),), f"look at c1's istiod pods: {pods}")
    from_c1 = {cause[0]: cause for cause in blamed[("c1", "c4")]}
    assert from_c1["istiod_not_ready"][1:] == (
        "c1's istiod has no ready replica: its injector refuses new pods and its sidecars get no configuration",
        (("c1", "istiod_not_ready"),), f"look at its pods: {pods}")


def test_istiods_view_blames_the_primary_only_for_the_remote_it_has_not_synced(tmp_path, roots):
    views = {"c1": IstiodView(remotes={"c2": "synced", "c3": "syncing", "c4": "synced"})}
    topology, status = _primary_with_remotes(tmp_path, roots, views=views)
    blamed = _blamed(tmp_path, topology, status, {"c3"})
    synced = ("primary_not_synced", "c1's istiod reports its remote c3 as syncing: it does not configure c3's sidecars",
              (("c1", "remote_cluster_syncing"),))
    assert set(blamed) == {(a, b) for a in ("c1", "c2", "c3", "c4") for b in ("c1", "c2", "c3", "c4") if "c3" in (a, b)}
    assert blamed.pop(("c3", "c3"))[:1] == [synced], "then that c3 does not reach itself"
    assert all(causes == [synced] for causes in blamed.values()), blamed


def test_a_remote_whose_way_to_its_primary_moved_or_has_no_address_is_blamed_on_its_pairs(tmp_path, roots):
    """The remote's istiod Service leads where it was installed to; the primary's east-west gateway is
    elsewhere now (verify reads where it leads), or has no address at all (status's finding)."""
    topology, status = _primary_with_remotes(tmp_path, roots)
    names = [c.name for c in topology.clusters]
    runs = {c.context: ClusterRun(applied=True, client=READY, server=READY,
                                  answered_by={n: 1 for n in names if "c2" not in (c.name, n)})
            for c in topology.clusters}
    hints = VerifyHints(Hints(tmp_path, topology), "setup-mesh-verify", None)
    facts = Facts(status, {}, mesh_model(topology), istiod_addresses={"c2": "203.0.113.4", "c3": "198.51.100.9"})
    pairs, _ = judge(topology, runs, facts, hints)
    moved = {(p.source, p.target): [c.code for c in p.causes] for p in pairs if not p.reached}
    assert set(moved) == {(a, b) for a in names for b in names if "c2" in (a, b)}
    assert all(codes[0] == "primary_address_changed" for codes in moved.values())
    cause = next(c for p in pairs for c in p.causes if c.code == "primary_address_changed")
    assert cause.message == ("c2's istiod Service leads to 203.0.113.4, but c1's east-west gateway is at 198.51.100.9 "
                             "now: c2's injector and sidecars cannot reach their control plane")
    assert cause.hint == f"{Hints(tmp_path, topology).apply} installs c2 again with c1's current address"

    topology, status = _primary_with_remotes(tmp_path, roots, change=lambda o, i: setattr(o["c1"], "eastwest_address", None))
    assert "gateway_pending" in _codes(status, "c1")
    pairs, _ = judge(topology, runs, Facts(status, {}, mesh_model(topology), istiod_addresses={"c2": "203.0.113.4"}), hints)
    causes = {c.code: c for p in pairs if not p.reached for c in p.causes}
    assert "primary_address_changed" not in causes, "no address to compare with"
    assert causes["primary_gateway_no_address"].status_problems == (("c1", "gateway_pending"),)
    assert causes["primary_gateway_no_address"].message.startswith("c2 reaches c1's istiod through c1's east-west gateway, "
                                                                   "which has no address")


def test_a_curl_client_not_ready_or_never_created_leaves_its_calls_untested(tmp_path, roots):
    names = ("c1", "c2", "c3")
    runs = {c: ClusterRun(applied=True, client=READY, server=READY, answered_by={n: 1 for n in names}) for c in names}
    runs["c2"] = ClusterRun(applied=True, client=PodState("curl-1", False, "CrashLoopBackOff", True), server=READY)
    runs["c3"] = ClusterRun(applied=True, client=PodState("curl", False, "quota exceeded", True, created=False), server=READY)
    _, result = _verify(tmp_path, roots, lambda o, i: None, set(), runs=runs)
    pairs = _pairs(result)
    assert set(pairs) == {(s, d) for s in ("c2", "c3") for d in names}
    assert all(causes == [("client_not_ready", "the curl client in c2 is not ready, so nothing was called from it")]
               for (s, _), causes in pairs.items() if s == "c2")
    assert all(causes == [("client_not_ready", "the curl client in c3 was never created, so nothing was called from it")]
               for (s, _), causes in pairs.items() if s == "c3")
    assert {(p.source, c.hint) for p in result.pairs if not p.reached for c in p.causes} == {
        ("c2", "see why under c2's pods above"), ("c3", "see why under c3's pods above")}


def test_a_primary_on_another_root_is_blamed_for_its_remotes_workloads_too(tmp_path, roots):
    """Its istiod signs its remotes' workload certificates: the cause says so; with the other end's signer
    also on another root, both are named, each with its own repair."""
    def foreign(observed, istiod):
        for ctx in ("c1", "c4"):
            observed[ctx].cacerts = _cacerts(roots[1])

    topology, status = _primary_with_remotes(tmp_path, roots, change=foreign)
    blamed = _blamed(tmp_path, topology, status, {"c1", "c2", "c3", "c4"}, hints_too=True)
    repair = {ctx: next(p.hint for c in status.clusters if c.cluster.context == ctx for p in c.problems
                        if p.code == "cacerts_foreign_root") for ctx in ("c1", "c4")}
    (code, message, linked, hint), = blamed[("c2", "c3")]
    assert (code, linked) == ("cacerts_other_root", (("c1", "cacerts_foreign_root"),))
    assert message == ("the cacerts of c1 does not chain to the mesh's root: the workloads whose certificates it "
                       "signs (and of its remotes c2, c3) are not trusted across the mesh")
    assert hint == repair["c1"]
    (code, message, linked, hint), = blamed[("c2", "c4")]
    assert linked == (("c1", "cacerts_foreign_root"), ("c4", "cacerts_foreign_root"))
    assert message.startswith("the cacerts of c1 and c4 does not chain to the mesh's root")
    assert hint == f"c1: {repair['c1']}; c4: {repair['c4']}"


def _judged(tmp_path, topology, status, runs):
    hints = VerifyHints(Hints(tmp_path, topology), "setup-mesh-verify", None)
    return judge(topology, runs, Facts(status, {}, mesh_model(topology)), hints)


def test_each_pod_never_created_in_a_cluster_is_told_with_the_deployment_to_look_at(tmp_path, roots):
    names = ("c1", "c2", "c3")
    runs = {c: ClusterRun(applied=True, client=READY, server=READY, answered_by={n: 1 for n in names}) for c in names}
    runs["c3"] = ClusterRun(applied=True, client=PodState("curl", False, "exceeded quota: pods=10", True, created=False),
                            server=PodState("helloworld", False, "exceeded quota: pods=10", True, created=False))
    _, result = _verify(tmp_path, roots, lambda o, i: None, set(), runs=runs)
    hints = Hints(tmp_path, _topology(tmp_path))
    c3 = _topology(tmp_path).clusters[2]
    assert [(p.code, p.message, p.hint) for p in result.problems] == [
        ("pod_missing", f"c3: no {what} pod was created: exceeded quota: pods=10",
         f"look at its Deployment with `{hints.kubectl(c3, 'describe', 'deployment', '-n', 'setup-mesh-verify', name)}`")
        for what, name in (("curl client", "curl"), ("helloworld", "helloworld"))]


def test_pods_of_a_cluster_whose_control_plane_is_down_are_told_with_that_cause_as_their_hint(tmp_path, roots):
    """c1's istiod has no ready replica: c1's and its remote c2's pods are refused or not ready because of it,
    and each pod's problem points there rather than at the pod."""
    topology, status = _primary_with_remotes(tmp_path, roots, change=lambda o, i: i.__setitem__(
        "c1", Istiod(read=True, installed=True, version="1.29.0", ready=False, cluster_id="c1")))
    runs = {c.context: ClusterRun(applied=True, client=READY, server=READY, answered_by={"c4": 1})
            for c in topology.clusters}
    refused = 'Internal error occurred: failed calling webhook "namespace.sidecar-injector.istio.io"'
    runs["c1"].server = PodState("helloworld-7d9f", False, "ContainersNotReady", True)
    runs["c2"].client = PodState("curl", False, refused, True, created=False, refused=True)
    _, problems = _judged(tmp_path, topology, status, runs)
    pods = f"`{Hints(tmp_path, topology).kubectl(topology.clusters[0], 'get', 'pods', '-n', 'istio-system', '-l', 'app=istiod')}`"
    effect = "its injector refuses new pods and its sidecars get no configuration"
    assert [(p.code, p.message, p.hint) for p in problems] == [
        ("pod_not_ready", "c1: the helloworld pod helloworld-7d9f is not ready: ContainersNotReady",
         f"c1's istiod has no ready replica: {effect}; look at its pods: {pods}"),
        ("pod_missing", f"c2: no curl client pod was created: {refused}",
         f"c2 is a remote of c1, whose istiod has no ready replica: c2's {effect.removeprefix('its ')}; "
         f"look at c1's istiod pods: {pods}")]


def test_a_remotes_pod_without_a_sidecar_names_the_istiod_its_injector_calls(tmp_path, roots):
    topology, status = _primary_with_remotes(tmp_path, roots)
    names = [c.name for c in topology.clusters]
    runs = {c.context: ClusterRun(applied=True, client=READY, server=READY, answered_by={n: 1 for n in names})
            for c in topology.clusters}
    for remote in ("c2", "c4"):  # a remote of c1, and a primary
        runs[remote].server = PodState("helloworld-7d9f", True, "", False)
        for src in names:
            runs[src].answered_by.pop(remote)
    pairs, _ = _judged(tmp_path, topology, status, runs)
    hint = {p.target: c.hint for p in pairs if p.source == "c1" and not p.reached for c in p.causes}
    hints = Hints(tmp_path, topology)
    webhooks = {ctx: hints.kubectl(topology.clusters[int(ctx[1]) - 1], "get", "mutatingwebhookconfigurations")
                for ctx in ("c2", "c4")}
    assert hint["c2"].endswith(f"check that c2's injector (`{webhooks['c2']}`, which calls c1's istiod) matches it")
    assert hint["c4"].endswith(f"check that c4's injector (`{webhooks['c4']}`) matches it")


def test_a_remotes_calls_blame_the_secret_or_view_its_primary_holds_of_the_peer(tmp_path, roots):
    """A remote's sidecars get their endpoints from its primary: a peer that primary holds no secret of, or
    reports unsynced, is named as the primary's, for the remote."""
    def dropped(observed, istiod):
        del observed["c1"].remote_secrets["c4"]

    topology, status = _primary_with_remotes(tmp_path, roots, change=dropped)
    blamed = _blamed(tmp_path, topology, status, {"c4"})
    assert blamed[("c3", "c4")] == [("remote_secret_missing", "c1 (the control plane of c3) holds no remote secret of c4",
                                     (("c1", "remote_secret_missing"),))]
    assert blamed[("c1", "c4")] == [("remote_secret_missing", "c1 holds no remote secret of c4",
                                     (("c1", "remote_secret_missing"),))]

    views = {"c1": IstiodView(remotes={"c2": "synced", "c3": "synced", "c4": "timeout"})}
    topology, status = _primary_with_remotes(tmp_path, roots, views=views)
    blamed = _blamed(tmp_path, topology, status, {"c4"})
    assert blamed[("c3", "c4")] == [("peer_not_synced", "c1's istiod (the control plane of c3) reports c4 as timeout",
                                     (("c1", "remote_cluster_timeout"),))]


def test_a_primary_missing_a_remotes_secret_does_not_hide_another_primary_missing_it_too(tmp_path, roots):
    """c1 lacks its remote c2's secret (c2's control plane does not serve it), and c4 lacks it as well: c4's
    calls to c2 name c4's missing secret, which is c4's own repair."""
    def dropped(observed, istiod):
        del observed["c1"].remote_secrets["c2"]
        del observed["c4"].remote_secrets["c2"]

    topology, status = _primary_with_remotes(tmp_path, roots, change=dropped)
    blamed = _blamed(tmp_path, topology, status, {"c2"})
    assert ("remote_secret_missing", "c4 holds no remote secret of c2", (("c4", "remote_secret_missing"),)) \
        in blamed[("c4", "c2")]
    assert all(code != "remote_secret_missing" for code, *_ in blamed[("c3", "c2")]), \
        "c1's missing secret of c2 is told once, as c2's control plane's"


def test_a_pair_nothing_explains_is_told_so_with_what_the_clients_proxy_knows(tmp_path, roots):
    names = ("c1", "c2", "c3")
    runs = {c: ClusterRun(applied=True, client=READY, server=READY, answered_by={n: 1 for n in names}) for c in names}
    del runs["c1"].answered_by["c3"]
    runs["c2"].answered_by.pop("c3")
    runs["c2"].failures = ["curl: (56) Recv failure: Connection reset by peer"]
    _, result = _verify(tmp_path, roots, lambda o, i: None, {("c1", "c3"), ("c2", "c3")}, runs=runs)
    causes = {(p.source, p.target): [(c.code, c.message, c.hint) for c in p.causes] for p in result.pairs if not p.reached}
    status = VerifyHints(Hints(tmp_path, _topology(tmp_path)), "setup-mesh-verify", None).status
    assert causes == {(src, "c3"): [(
        "unknown", f"no answer from c3 ({why}), and nothing status reads explains it",
        f"look at what the client's sidecar knows: `istioctl proxy-config endpoint deploy/curl.setup-mesh-verify "
        f"--context {src} | grep helloworld`, and at {status}")]
        for src, why in (("c1", "other clusters answered"), ("c2", "curl: (56) Recv failure: Connection reset by peer"))}


def test_ambient_a_primarys_istiod_down_is_said_to_leave_its_ztunnel_without_configuration(tmp_path, roots):
    from dataclasses import replace

    _, _, pairs = _ambient_pairs_from_c2(tmp_path, roots,
                                         lambda observed, istiod: istiod.__setitem__("c2", replace(istiod["c2"], ready=False)))
    (cause,) = {c for p in pairs if not p.reached for c in p.causes if c.code == "istiod_not_ready"}
    assert (cause.code, cause.message) == ("istiod_not_ready", "c2's istiod has no ready replica: its ztunnel gets no "
                                                               "configuration, so calls from the cluster's pods cannot connect")


def test_a_primary_with_flaws_about_two_remotes_is_blamed_for_each_with_its_own(tmp_path, roots):
    """c1 holds no secret of c2 and an outdated one of c3: each remote's pairs name that remote's flaw, with its
    repair."""
    def flaws(observed, istiod):
        del observed["c1"].remote_secrets["c2"]
        observed["c3"].reader_token = "a token issued after the secret c1 holds"

    topology, status = _primary_with_remotes(tmp_path, roots, change=flaws)
    blamed = _blamed(tmp_path, topology, status, {"c2", "c3"}, hints_too=True)
    outdated = next(p for c in status.clusters for p in c.problems if p.code == "remote_secret_outdated")
    held = Hints(tmp_path, topology).kubectl(topology.clusters[0], "get", "secrets", "-n", "istio-system", "-l",
                                             "istio/multiCluster=true")
    by_remote = {remote: next(c for c in blamed[("c4", remote)] if c[0] == "primary_lacks_secret")
                 for remote in ("c2", "c3")}
    assert by_remote["c2"][1].endswith("holds no current remote secret of c2 (missing): c1's istiod does not "
                                       "configure c2's sidecars")
    assert by_remote["c2"][3] == f"{Hints(tmp_path, topology).apply} creates it in c1 again (`{held}` lists the " \
                                 f"secrets c1 holds)"
    assert by_remote["c3"][1].endswith("holds no current remote secret of c3 (outdated): c1's istiod does not "
                                       "configure c3's sidecars")
    assert by_remote["c3"][3] == outdated.hint
