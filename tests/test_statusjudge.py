"""status's judgment of each cluster's istiod and of what istiod reports about its peers, in-process on
what a healthy three-cluster mesh reads, one fault at a time: each fault is named on the cluster that has
it, with its own hint, and on no other cluster."""
from __future__ import annotations

from dataclasses import replace

from lib.checks import ERROR, WARNING
from lib.statusjudge import evaluate
from lib.statusread import Istiod, IstiodView
from lib.statusreport import Hints
from tests.test_status import NOW, _codes, _healthy, _topology, _ws, roots  # noqa: F401

FORBIDDEN = ('Error from server (Forbidden): deployments.apps is forbidden: User "dev" cannot list resource '
             '"deployments" in API group "apps" in the namespace "istio-system"')


def _status(tmp_path, roots, change=lambda observed, istiod: None, views=None, root_pem=None):
    topology = _topology(tmp_path)
    observed, istiod = _healthy(topology, roots[0])
    change(observed, istiod)
    ws = _ws(tmp_path, topology, roots[0])
    if root_pem is not None:
        ws = replace(ws, root_pem=root_pem)
    return topology, evaluate(ws, observed, istiod, now=NOW, views=views)


def _problem(status, context: str, code: str):
    (found,) = [p for c in status.clusters if c.cluster.context == context for p in c.problems if p.code == code]
    return found


def test_a_healthy_mesh_has_no_problem(tmp_path, roots):
    views = {c: IstiodView(remotes={p: "synced" for p in ("c1", "c2", "c3") if p != c}) for c in ("c1", "c2", "c3")}
    _, status = _status(tmp_path, roots, views=views)
    assert {c.cluster.context: [p.code for p in c.problems] for c in status.clusters} == {"c1": [], "c2": [], "c3": []}
    assert status.healthy and not status.problems


def test_istiod_unreadable_missing_not_ready_or_running_as_another_cluster_is_named_where_it_is(tmp_path, roots):
    def faults(observed, istiod):
        istiod["c1"] = Istiod(read=False, error=FORBIDDEN)
        istiod["c2"] = replace(istiod["c2"], installed=False, ready=None, version=None)
        istiod["c3"] = replace(istiod["c3"], ready=False, cluster_id="c9")

    topology, status = _status(tmp_path, roots, faults)
    hints = Hints(tmp_path, topology)
    c1, c2, c3 = topology.clusters
    assert _codes(status, "c1") == ["istio_unreadable"], "an unread istiod is neither missing nor unready"
    unreadable = _problem(status, "c1", "istio_unreadable")
    assert unreadable.message == f"cannot read the istiod Deployment: {FORBIDDEN}"
    assert unreadable.hint == f"check with `{hints.kubectl(c1, 'get', 'deployment', '-n', 'istio-system')}`"
    assert _codes(status, "c2") == ["istio_missing"]
    missing = _problem(status, "c2", "istio_missing")
    assert missing.message == "Istio is not installed (no istiod Deployment in istio-system)"
    assert missing.hint == hints.apply
    assert sorted(_codes(status, "c3")) == ["cluster_name_wrong", "istiod_not_ready"]
    unready = _problem(status, "c3", "istiod_not_ready")
    assert unready.message == "the istiod Deployment has no ready replica"
    assert hints.kubectl(c3, "get", "pods", "-n", "istio-system", "-l", "app=istiod") in unready.hint
    wrong = _problem(status, "c3", "cluster_name_wrong")
    assert wrong.message == "istiod runs as cluster c9, topology.yaml names it c3" and wrong.hint == hints.apply
    assert all(p.severity == ERROR for c in status.clusters for p in c.problems)
    assert not any(c.healthy for c in status.clusters) and not status.healthy


def test_an_istiod_answering_without_the_reason_is_unreadable_with_no_answer(tmp_path, roots):
    def unanswered(observed, istiod):
        istiod["c2"] = Istiod(read=False)

    _, status = _status(tmp_path, roots, unanswered)
    assert _problem(status, "c2", "istio_unreadable").message == "cannot read the istiod Deployment: no answer"


def test_a_cluster_not_set_up_is_not_also_reported_without_istio(tmp_path, roots):
    """istio-system missing altogether is one fault (apply sets it up), not also a missing istiod."""
    def bare(observed, istiod):
        observed["c2"] = replace(observed["c2"], namespace=False, network_label=None, cacerts=None,
                                 remote_secrets={}, eastwest_exists=False, eastwest_address=None, applied=None)
        istiod["c2"] = Istiod(read=True, installed=False)

    _, status = _status(tmp_path, roots, bare)
    assert _codes(status, "c2") == ["namespace_missing"]


def test_a_root_certificate_that_is_no_pem_is_named_with_its_repair(tmp_path, roots):
    topology, status = _status(tmp_path, roots, root_pem=b"-----BEGIN CERTIFICATE-----\nnot base64\n")
    (problem,) = [p for p in status.problems if p.code == "root_ca_unreadable"]
    assert problem.message == f"{tmp_path / 'certs' / 'root-cert.pem'} is not a PEM certificate"
    assert problem.hint.startswith("restore it from a backup, or start a new root with "
                                   f"`rm -r {Hints(tmp_path, topology).path('certs')}` and ")
    assert "prep-mesh" in problem.hint
    assert problem.severity == ERROR and not status.healthy
    assert "root_ca_missing" not in [p.code for p in status.problems]


# --- what istiod reports about its peers (`istioctl remote-clusters`) ------------------------------------

def test_each_state_istiod_reports_short_of_synced_is_named_with_its_peer_and_hint(tmp_path, roots):
    views = {"c1": IstiodView(remotes={"c2": "syncing"}),  # c3 not listed: its secret is not loaded
             "c2": IstiodView(remotes={"c1": "closed", "c3": "synced"}),
             "c3": IstiodView(remotes={"c1": "timeout", "c2": "synced"})}
    topology, status = _status(tmp_path, roots, views=views)
    hints = Hints(tmp_path, topology)
    by_cluster = {c.cluster.context: c for c in status.clusters}
    assert by_cluster["c1"].remote_clusters == {"c2": "syncing", "c3": "not loaded"}
    assert by_cluster["c2"].remote_clusters == {"c1": "closed", "c3": "synced"}

    def named(context):
        return {(p.code, p.peer): p for p in by_cluster[context].problems}

    assert set(named("c1")) == {("remote_cluster_syncing", "c2"), ("remote_cluster_not_loaded", "c3")}
    assert set(named("c2")) == {("remote_cluster_closed", "c1")}
    assert set(named("c3")) == {("remote_cluster_timeout", "c1")}
    syncing = named("c1")[("remote_cluster_syncing", "c2")]
    assert syncing.message == "istiod reports remote cluster c2 as syncing"
    assert "status --wait" in syncing.hint and "c2" in syncing.hint
    not_loaded = named("c1")[("remote_cluster_not_loaded", "c3")]
    assert not_loaded.message == "istiod reports remote cluster c3 as not loaded"
    assert "has not loaded c3's secret" in not_loaded.hint and not_loaded.hint.endswith(hints.apply)
    closed = named("c2")[("remote_cluster_closed", "c1")]
    assert "stopped watching c1" in closed.hint and closed.hint.endswith(hints.apply)
    timeout = named("c3")[("remote_cluster_timeout", "c1")]
    assert "cannot reach c1's API server" in timeout.hint and "https://c1.example:6443" in timeout.hint
    assert hints.kubectl(topology.clusters[2], "logs", "-n", "istio-system", "deploy/istiod") in timeout.hint


def test_a_peer_whose_secret_is_missing_or_that_cannot_be_read_is_not_also_reported_unsynced(tmp_path, roots):
    """The cause already named (no secret; a peer nobody can read) is not repeated as istiod's view of it."""
    def faults(observed, istiod):
        del observed["c1"].remote_secrets["c2"]
        observed["c3"] = replace(observed["c3"], reachable=False, error="connection refused")

    views = {"c1": IstiodView(remotes={}), "c2": IstiodView(remotes={"c1": "synced"})}
    _, status = _status(tmp_path, roots, faults, views=views)
    assert _codes(status, "c1") == ["remote_secret_missing"]
    assert _codes(status, "c2") == []


def test_istioctl_failing_to_report_is_a_warning_that_keeps_the_cluster_healthy(tmp_path, roots):
    topology, status = _status(tmp_path, roots, views={"c2": IstiodView(error='Error: no running Istio pods in "istio-system"')})
    problem = _problem(status, "c2", "istiod_view_unreadable")
    assert problem.message == '`istioctl remote-clusters` failed: Error: no running Istio pods in "istio-system"'
    assert problem.severity == WARNING
    assert Hints(tmp_path, topology).kubectl(topology.clusters[1], "get", "pods", "-n", "istio-system",
                                             "-l", "app=istiod") in problem.hint
    assert all(c.healthy for c in status.clusters) and status.healthy
    assert next(c for c in status.clusters if c.cluster.context == "c2").remote_clusters in ({}, None)


# --- ambient: the Gateway API CRDs, the east-west Gateway, ztunnel ------------------------------------

PROGRAMMED = {"metadata": {"name": "istio-eastwestgateway", "namespace": "istio-system"},
              "status": {"addresses": [{"value": "198.51.100.9"}],
                         "conditions": [{"type": "Programmed", "status": "True", "reason": "Programmed"}]}}
ZTUNNEL_READY = {"metadata": {"namespace": "istio-system"}, "status": {"numberReady": 3, "desiredNumberScheduled": 3}}


def _ambient(tmp_path, roots, change):
    from lib.config import AMBIENT
    from lib.gatewayapi import ClusterCrds

    topology = _topology(tmp_path)
    observed, istiod = _healthy(topology, roots[0])
    for seen in observed.values():
        seen.eastwest_exists, seen.eastwest_made_by, seen.eastwest_address = False, None, None
        seen.eastwest_gateway = PROGRAMMED
        seen.gateway_api = ClusterCrds(installed=True, version="v1.4.0")
        seen.daemonsets["ztunnel"] = ZTUNNEL_READY
    change(observed, istiod)
    ws = replace(_ws(tmp_path, topology, roots[0]), data_plane=AMBIENT)
    return topology, evaluate(ws, observed, istiod, now=NOW)


def test_ambient_crds_gateway_and_ztunnel_faults_are_each_named_on_their_cluster(tmp_path, roots):
    from lib.gatewayapi import ClusterCrds

    def faults(observed, istiod):
        observed["c1"].gateway_api = ClusterCrds(installed=False, version=None)
        observed["c1"].eastwest_gateway = None
        observed["c2"].gateway_api = ClusterCrds(installed=True, version="v1.0.0")
        observed["c2"].eastwest_gateway = None
        observed["c3"].eastwest_exists, observed["c3"].eastwest_made_by = True, "operator"
        observed["c3"].daemonsets["ztunnel"] = {"metadata": {"namespace": "kube-system"},
                                                "status": {"numberReady": 1, "desiredNumberScheduled": 3}}

    topology, status = _ambient(tmp_path, roots, faults)
    hints = Hints(tmp_path, topology)
    by = {c.cluster.context: c for c in status.clusters}
    assert _codes(status, "c1") == ["gateway_api_crds_missing"], "no Gateway either: the CRDs come first"
    assert by["c1"].gateway_api_crds == "missing" and hints.apply in _problem(status, "c1", "gateway_api_crds_missing").hint
    assert sorted(_codes(status, "c2")) == ["gateway_api_crds_old", "gateway_missing"]
    old = _problem(status, "c2", "gateway_api_crds_old")
    assert old.severity == WARNING and "v1.0.0, older than the v1.4.0 Istio expects" in old.message
    assert by["c2"].gateway_api_crds == "v1.0.0"
    assert _problem(status, "c2", "gateway_missing").message.startswith("the east-west Gateway (istio-eastwestgateway, "
                                                                        "class istio-east-west) is not there")
    assert sorted(_codes(status, "c3")) == ["gateway_sidecar_mode", "ztunnel_not_ready"]
    unready = _problem(status, "c3", "ztunnel_not_ready")
    assert unready.message == "1 of 3 ztunnel pods are ready: workloads on the other nodes have no data plane"
    assert hints.kubectl(topology.clusters[2], "get", "pods", "-n", "kube-system", "-l", "app=ztunnel") in unready.hint
    assert by["c3"].ztunnel == (1, 3)


def test_ambient_ztunnel_gone_is_named_only_where_istio_runs(tmp_path, roots):
    def gone(observed, istiod):
        for ctx in ("c1", "c2"):
            del observed[ctx].daemonsets["ztunnel"]
        istiod["c2"] = replace(istiod["c2"], installed=False, ready=None)

    _, status = _ambient(tmp_path, roots, gone)
    assert _codes(status, "c1") == ["ztunnel_missing"]
    assert _codes(status, "c2") == ["istio_missing"], "no Istio there: that is the fault, not its ztunnel"
    assert _codes(status, "c3") == []


# --- the workspace: the root's fingerprint, a rotation cut short, istiod's published roots -------------

def test_the_root_fingerprint_and_an_unfinished_rotation_are_reported_for_the_mesh(tmp_path, roots):
    from lib import reissue

    (tmp_path / "certs").mkdir()
    reissue.save_rotation(tmp_path, reissue.Rotation("2026-12-01T10:00:00Z", {"c1": "ab" * 32, "c3": None}))
    topology, status = _status(tmp_path, roots)
    from cryptography.hazmat.primitives import hashes

    assert status.root_fingerprint == roots[0][0].fingerprint(hashes.SHA256()).hex()
    (problem,) = status.problems
    assert problem.code == "rotation_unfinished" and problem.severity == WARNING
    assert problem.message == ("the intermediate rotation started at 2026-12-01T10:00:00Z (c1, c3) did not finish: "
                               "clusters may still run on the intermediates it replaces")
    assert "rotate-certs" in problem.hint
    assert status.healthy, "a warning: the clusters themselves are judged on their own"


def test_a_published_root_bundle_that_could_not_be_read_is_a_warning_on_that_cluster(tmp_path, roots):
    topology = _topology(tmp_path)
    observed, istiod = _healthy(topology, roots[0])
    status = evaluate(_ws(tmp_path, topology, roots[0]), observed, istiod, now=NOW, roots_unread=frozenset({"c2"}))
    assert _codes(status, "c2") == ["istiod_roots_unread"] and _codes(status, "c1") == []
    problem = _problem(status, "c2", "istiod_roots_unread")
    assert problem.severity == WARNING and "whether it took the roots in secret cacerts is not known" in problem.message
    assert Hints(tmp_path, topology).kubectl(topology.clusters[1], "get", "configmap", "istio-ca-root-cert", "-n",
                                             "istio-system") in problem.hint


# --- the remote secrets each cluster holds ----------------------------------------------------------------

def test_secrets_of_clusters_gone_held_by_a_remote_or_naming_a_loopback_address_are_each_named_with_their_repair(tmp_path, roots):
    from lib.config import Cluster, Topology
    from lib.kube import RemoteSecretInfo

    clusters = (Cluster("c1", "n1", "c1", api_server="https://c1.example:6443"),
                Cluster("c2", "n1", "c2", server="https://127.0.0.1:6441"),  # no api_server: its kubeconfig's loopback
                Cluster("c3", "n2", "c3", api_server="https://c3.example:6443", primary="c1"),
                Cluster("c4", "n1", "c4", api_server="https://127.0.0.1:6443"))  # api_server given, but a loopback
    topology = Topology("mesh1", clusters, tmp_path / "topology.yaml")
    observed, istiod = _healthy(topology, roots[0])
    observed["c3"].annotations = {"topology.istio.io/controlPlaneClusters": "c1"}
    observed["c3"].remote_secrets = {"c2": RemoteSecretInfo("istio-remote-secret-c2", "c2", "fp", "https://c2.example:6443")}
    observed["c1"].remote_secrets["c9"] = RemoteSecretInfo("istio-remote-secret-c9", "c9", "fp", "https://c9.example:6443")
    observed["c1"].remote_secrets["c2"] = RemoteSecretInfo("istio-remote-secret-c2", "c2", "fp", "https://127.0.0.1:6441",
                                                           suspicious_local=True)
    observed["c2"].remote_secrets["c1"] = RemoteSecretInfo("istio-remote-secret-c1", "c1", "fp", "https://127.0.0.1:6440",
                                                           suspicious_local=True)
    observed["c1"].remote_secrets["c4"] = RemoteSecretInfo("istio-remote-secret-c4", "c4", "fp", "https://127.0.0.1:6443",
                                                           suspicious_local=True)
    status = evaluate(_ws(tmp_path, topology, roots[0]), observed, istiod, now=NOW)
    hints = Hints(tmp_path, topology)
    by = {c.cluster.context: c for c in status.clusters}

    stale = _problem(status, "c1", "remote_secret_stale")
    assert stale.message == "remote secret istio-remote-secret-c9 gives access to cluster c9, which is not in topology.yaml"
    assert stale.hint == (f"{hints.apply} (prunes it), or "
                          f"`{hints.kubectl(clusters[0], 'delete', 'secret', '-n', 'istio-system', 'istio-remote-secret-c9')}`")
    assert by["c1"].stale_secrets == ["istio-remote-secret-c9"] and by["c1"].remote_secrets["c9"] == "stale"

    unneeded = _problem(status, "c3", "remote_secret_unneeded")
    assert unneeded.severity == WARNING and unneeded.hint == f"{hints.apply} (prunes it)"
    assert unneeded.message == "a remote holds no remote secret, and this one holds istio-remote-secret-c2"
    assert by["c3"].stale_secrets == ["istio-remote-secret-c2"] and by["c3"].remote_secrets["c2"] == "unneeded"

    # A loopback address: apply can replace it where topology.yaml gives the peer's api_server, else it is the fix.
    (to_c2,) = [p for p in by["c1"].problems if p.code == "remote_secret_local" and p.peer == "c2"]
    assert to_c2.message == ("the remote secret of c2 (istio-remote-secret-c2) names the API server "
                             "https://127.0.0.1:6441, which this cluster cannot reach")
    assert to_c2.hint == f"set api_server: for c2 in {hints.topology_file}, then {hints.apply}"
    to_c1 = _problem(status, "c2", "remote_secret_local")
    assert to_c1.hint == f"{hints.apply} (replaces it with one naming https://c1.example:6443)"
    assert by["c1"].remote_secrets["c2"] == "local" and to_c2.peer == "c2"
    (to_c4,) = [p for p in by["c1"].problems if p.code == "remote_secret_local" and p.peer == "c4"]
    assert to_c4.hint == f"set api_server: for c4 in {hints.topology_file}, then {hints.apply}"


def test_an_intermediate_whose_key_is_not_its_certificates_is_named_with_apply_s_repair(tmp_path, roots):
    topology = _topology(tmp_path)
    observed, istiod = _healthy(topology, roots[0])
    ws = replace(_ws(tmp_path, topology, roots[0]), unkeyed=frozenset({"c3", "c1"}))
    status = evaluate(ws, observed, istiod, now=NOW)
    hints = Hints(tmp_path, topology)
    (problem,) = status.problems
    c1, c3 = hints.path("certs", "c1"), hints.path("certs", "c3")
    assert problem.code == "intermediate_key_mismatch" and problem.severity == ERROR and not status.healthy
    assert problem.message == (f"{c1}/ca-key.pem, {c3}/ca-key.pem is not the key of the intermediate CA beside it "
                               f"(ca-cert.pem): apply refuses it, and istiod would not start on that cacerts")
    assert problem.hint == f"`rm -r {c1} {c3}`, then {hints.apply} (it issues a new intermediate CA), or put back " \
                           f"the ca-key.pem made with it"
    assert all(c.healthy for c in status.clusters), "the clusters themselves run as they are"


def test_drift_says_whether_setup_mesh_left_no_record_or_the_install_differs(tmp_path, roots):
    def drifted(observed, istiod):
        observed["c2"] = replace(observed["c2"], applied=None)  # installed by hand, or apply did not finish
        observed["c3"] = replace(observed["c3"], applied="fp-an-older-base")

    _, status = _status(tmp_path, roots, drifted)
    assert _codes(status, "c1") == []
    assert _problem(status, "c2", "drift").message == ("istio-system carries no record of what setup-mesh installed "
                                                       "(installed by hand, or apply did not finish)")
    assert _problem(status, "c3", "drift").message == ("the installation differs from what topology.yaml and "
                                                       "base.yaml describe now")


def test_a_set_up_cluster_missing_its_istio_objects_is_told_which(tmp_path, roots):
    """The objects of a multi-network primary are read (Observed.istio_objects): one deleted by hand is named on
    that cluster; a cluster with no record of setup-mesh is judged by its drift instead."""
    def deleted(observed, istiod):
        for ctx in ("c1", "c2"):
            observed[ctx] = replace(observed[ctx], istio_objects=frozenset())
        observed["c2"] = replace(observed["c2"], applied=None)

    _, status = _status(tmp_path, roots, deleted)
    missing = _problem(status, "c1", "istio_objects_missing")
    assert missing.message.startswith("missing from istio-system: Gateway cross-network-gateway")
    assert "istio_objects_missing" not in _codes(status, "c2") and "drift" in _codes(status, "c2")
    assert "istio_objects_missing" not in _codes(status, "c3"), "not read there: not judged"


def test_a_cluster_missing_from_what_was_read_is_reported_not_read(tmp_path, roots):
    def lost(observed, istiod):
        del observed["c2"]

    _, status = _status(tmp_path, roots, lost)
    (c2,) = [c for c in status.clusters if c.cluster.context == "c2"]
    assert not c2.reachable and not status.healthy
    assert [p.message for p in c2.problems] == ["cannot read the cluster: not read"]


def test_the_table_shows_what_was_read_of_each_cluster_network_label_and_gateway(tmp_path, roots):
    """evaluate's row of each cluster, as status's table shows it: the network label read (a wrong one as
    read), the east-west gateway's address, or "missing" where a gateway is needed and there is none."""
    from tests.test_statusview import _render

    def faults(observed, istiod):
        observed["c1"].network_label = "n9"
        observed["c3"].eastwest_exists, observed["c3"].eastwest_made_by = False, None
        observed["c3"].eastwest_address = None

    _, status = _status(tmp_path, roots, faults)
    rows: dict[str, list[str]] = {}  # the first table's rows (the secrets' matrix has rows named alike)
    for line in _render(status, 160):
        if line.strip().startswith("c"):
            rows.setdefault(line.split()[0], line.split())
    assert (rows["c1"][3], rows["c1"][5]) == ("n9≠n1", "198.51.100.9"), "the label read, and the one expected"
    assert (rows["c2"][3], rows["c2"][5]) == ("n1", "198.51.100.9")
    assert (rows["c3"][3], rows["c3"][5]) == ("n2", "missing")
    assert [rows[c][1:3] for c in ("c1", "c2", "c3")] == [["yes", "1.29.0"]] * 3, "reachable, istiod's version"
    assert [c.to_json()["network_label"] for c in status.clusters] == ["n9", "n1", "n2"]


def test_ambient_the_gateway_istiod_reports_and_a_ztunnel_with_no_pod_ready_are_shown_as_read(tmp_path, roots):
    """c1's Gateway is programmed at its address; c2's is not, with istiod's reason and message; c3's is not,
    with a reason alone. c2's ztunnel status lacks numberReady: a count not there is read as none ready."""
    def faults(observed, istiod):
        observed["c2"].eastwest_gateway = {**PROGRAMMED, "status": {"conditions": [
            {"type": "Programmed", "status": "False", "reason": "AddressNotAssigned",
             "message": "Assigned to service(s) istio-eastwestgateway.istio-system.svc.cluster.local:15008, but "
                        "failed to assign to all requested addresses"}]}}
        observed["c3"].eastwest_gateway = {**PROGRAMMED, "status": {"conditions": [
            {"type": "Programmed", "status": "False", "reason": "Pending"}]}}
        observed["c2"].daemonsets["ztunnel"] = {"metadata": {"namespace": "istio-system"},
                                                "status": {"desiredNumberScheduled": 2}}

    _, status = _ambient(tmp_path, roots, faults)
    by = {c.cluster.context: c for c in status.clusters}
    assert [(c.gateway_address, c.gateway_programmed) for c in status.clusters] == [
        ("198.51.100.9", True), (None, False), (None, False)]
    assert [c.to_json()["gateway"] for c in status.clusters][0] == {"required": True, "address": "198.51.100.9",
                                                                    "programmed": True}
    assert _problem(status, "c2", "gateway_not_programmed").message == (
        "the east-west Gateway is not programmed: AddressNotAssigned (Assigned to service(s) "
        "istio-eastwestgateway.istio-system.svc.cluster.local:15008, but failed to assign to all requested addresses)")
    assert _problem(status, "c3", "gateway_not_programmed").message == "the east-west Gateway is not programmed: Pending"
    assert by["c2"].ztunnel == (0, 2) and _problem(status, "c2", "ztunnel_not_ready").message.startswith(
        "0 of 2 ztunnel pods are ready")
