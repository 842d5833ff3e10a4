"""The assessment of istio-system, the install, the east-west gateway, a remote's wiring and cacerts, on the
in-memory cluster client: clusters filled with Python objects, read as the real client reads, judged."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from lib.assess import CacertsState, GatewayState, InstallState, LabelState, assess_mesh
from lib.config import AMBIENT, Cluster, Topology, data_plane_mode
from lib.desired import desired_state
from lib.kube import Observed
from lib.mesh import mesh_model
from lib.names import CONTROL_PLANE_CLUSTERS, EASTWEST_NAME, NETWORK_LABEL
from lib.statusread import InjectorWebhook, IstiodView
from tests.fakecluster import ISTIOD_SELECTOR, FakeClient, FakeCluster, installed, istiod_services

AMBIENT_BASE = {"spec": {"profile": "ambient"}}


def _topology(*clusters: tuple[str, str, str | None]) -> Topology:
    return Topology("mesh1", tuple(Cluster(context=ctx, network=net, name=ctx, primary=primary,
                                           api_server=f"https://{ctx}.example:6443")
                                   for ctx, net, primary in clusters), Path("topology.yaml"))


MULTI_NETWORK = _topology(("east", "n1", None), ("west", "n2", None))
ONE_NETWORK = _topology(("east", "n1", None), ("west", "n1", None))
PRIMARY_REMOTE = _topology(("main", "n1", None), ("edge", "n2", "main"))


def _assess(topology: Topology, clusters: dict, base: dict | None = None, injectors: bool = False):
    """Read every cluster of ``topology`` through the fake client, then judge what it read."""
    base = base or {}
    desired = desired_state(topology, base)
    client = FakeClient(clusters)
    mesh = mesh_model(topology, data_plane_mode(base))
    observed = client.read_state(topology.clusters, ambient=data_plane_mode(base) == AMBIENT)
    read_injectors = client.injection_paths([c for c in topology.clusters if c.primary], None) if injectors else None
    return assess_mesh(mesh, desired, observed, read_injectors), desired


def _set_up(topology: Topology, base: dict | None = None, **per_cluster) -> dict[str, Observed]:
    """Every cluster as apply leaves it, with ``per_cluster`` fields changed (context -> dict)."""
    desired = desired_state(topology, base or {})
    found = {}
    for c in topology.clusters:
        d = desired[c.context]
        seen = installed(c, d.fingerprint, annotations=dict(d.namespace_annotations))
        if d.eastwest is not None:
            seen = replace(seen, eastwest_exists=True, eastwest_address="198.51.100.7", eastwest_made_by="operator")
        if d.ambient:  # apply installs the Gateway API CRDs an ambient mesh needs
            from lib.gatewayapi import ClusterCrds
            seen = replace(seen, gateway_api=ClusterCrds(True, "v1.4.0", "standard"))
        found[c.context] = replace(seen, **per_cluster.get(c.context, {}))
    return found


# --- istio-system ---------------------------------------------------------------------------------

def test_a_cluster_as_apply_leaves_it_has_nothing_to_change():
    found, _ = _assess(MULTI_NETWORK, _set_up(MULTI_NETWORK))
    for f in found.values():
        assert f.namespace.current and f.install.state is InstallState.CURRENT
        assert f.gateway.state is GatewayState.READY and f.gateway.address == "198.51.100.7"


def test_no_namespace_is_not_set_up():
    found, _ = _assess(MULTI_NETWORK, {**_set_up(MULTI_NETWORK), "west": Observed(reachable=True)})
    assert not found["west"].namespace.exists and not found["west"].namespace.current
    assert found["east"].namespace.exists


def test_the_network_label_missing_or_naming_another_network():
    found, _ = _assess(MULTI_NETWORK, _set_up(MULTI_NETWORK, east={"network_label": None},
                                              west={"network_label": "n1"}))
    assert found["east"].namespace.label is LabelState.MISSING and not found["east"].namespace.current
    assert found["west"].namespace.label is LabelState.WRONG and found["west"].namespace.network == "n1"
    assert found["west"].namespace.want_network == "n2"


def test_a_namespace_being_deleted_is_not_current():
    found, _ = _assess(MULTI_NETWORK, _set_up(MULTI_NETWORK, east={"namespace_terminating": True}))
    assert not found["east"].namespace.current and found["west"].namespace.current


def test_a_remote_must_name_its_primary_and_a_primary_must_not_name_one():
    wrong = _set_up(PRIMARY_REMOTE, edge={"annotations": {CONTROL_PLANE_CLUSTERS: "elsewhere"}},
                    main={"annotations": {CONTROL_PLANE_CLUSTERS: "edge"}})
    found, _ = _assess(PRIMARY_REMOTE, wrong)
    assert found["edge"].namespace.annotations_off == (CONTROL_PLANE_CLUSTERS,)
    assert not found["edge"].wiring.names_control_plane and found["edge"].wiring.control_plane == "main"
    assert found["main"].namespace.annotations_left == (CONTROL_PLANE_CLUSTERS,), "a primary now: apply removes it"
    right, _ = _assess(PRIMARY_REMOTE, _set_up(PRIMARY_REMOTE))
    assert right["edge"].wiring.names_control_plane and right["edge"].namespace.annotations_off == ()
    assert right["main"].namespace.annotations_left == ()


def test_a_running_primary_turned_remote_lacks_the_annotation_and_its_install():
    """What the cluster holds as a primary, judged against topology.yaml that now makes it a remote."""
    as_primary = _set_up(MULTI_NETWORK)
    found, _ = _assess(PRIMARY_REMOTE, {"main": as_primary["east"], "edge": replace(as_primary["west"], annotations={})})
    assert found["edge"].namespace.annotations_off == (CONTROL_PLANE_CLUSTERS,)
    assert found["edge"].install.state is InstallState.CHANGED and found["edge"].install.drift


# --- the install ----------------------------------------------------------------------------------

def test_nothing_recorded_is_a_fresh_install():
    fresh = {c.context: Observed(reachable=True, namespace=True, network_label=c.network)
             for c in MULTI_NETWORK.clusters}
    found, _ = _assess(MULTI_NETWORK, fresh)
    assert all(f.install.state is InstallState.ABSENT and f.install.drift for f in found.values())


def test_another_recorded_install_is_changed_with_the_paths_that_differ():
    clusters = _set_up(MULTI_NETWORK, east={"applied": "an-earlier-install"})
    desired = desired_state(MULTI_NETWORK, {})
    last = {"east": {**desired["east"].operator, "spec": {**desired["east"].operator["spec"], "profile": "minimal"}}}
    observed = FakeClient(clusters).read_state(MULTI_NETWORK.clusters)
    found = assess_mesh(mesh_model(MULTI_NETWORK), desired, observed, last_overlays=last)
    assert found["east"].install.state is InstallState.CHANGED and found["east"].install.recorded == "an-earlier-install"
    assert found["east"].install.changed == ("- spec.profile: minimal",)
    assert found["west"].install.state is InstallState.CURRENT and found["west"].install.changed == ()


# --- the east-west gateway -------------------------------------------------------------------------

def test_one_network_needs_no_gateway_and_one_left_there_is_left_over():
    found, _ = _assess(ONE_NETWORK, _set_up(ONE_NETWORK, west={"eastwest_exists": True, "eastwest_made_by": "operator"}))
    assert found["east"].gateway.state is GatewayState.NOT_NEEDED and found["east"].gateway.wanted is None
    assert found["west"].gateway.state is GatewayState.LEFT_OVER


def test_across_networks_a_gateway_without_service_is_missing_and_one_without_address_pending():
    found, _ = _assess(MULTI_NETWORK, _set_up(MULTI_NETWORK, east={"eastwest_exists": False, "eastwest_address": None,
                                                                   "eastwest_made_by": None},
                                              west={"eastwest_address": None}))
    assert found["east"].gateway.state is GatewayState.MISSING
    assert found["west"].gateway.state is GatewayState.PENDING and found["west"].gateway.present


def test_a_gateway_of_the_other_data_plane_mode():
    sidecar, _ = _assess(MULTI_NETWORK, _set_up(MULTI_NETWORK, east={"eastwest_made_by": "gateway"}))
    assert sidecar["east"].gateway.state is GatewayState.OTHER_MODE and sidecar["east"].gateway.running == "ambient"
    # ambient across networks: the Gateway is there, but the Service belongs to the sidecar-mode gateway
    programmed = {"status": {"addresses": [{"value": "198.51.100.8"}],
                             "conditions": [{"type": "Programmed", "status": "True"}]}}
    ambient, _ = _assess(MULTI_NETWORK, _set_up(MULTI_NETWORK, AMBIENT_BASE, east={
        "eastwest_gateway": programmed, "eastwest_exists": True, "eastwest_made_by": "operator"},
        west={"eastwest_gateway": programmed, "eastwest_exists": True, "eastwest_made_by": "gateway"}), AMBIENT_BASE)
    assert ambient["east"].gateway.state is GatewayState.OTHER_MODE and ambient["east"].gateway.running == "sidecar"
    assert ambient["west"].gateway.state is GatewayState.READY and ambient["west"].gateway.address == "198.51.100.8"


def test_an_ambient_gateway_counts_once_istiod_programmed_it():
    waiting = {"status": {"conditions": [{"type": "Programmed", "status": "False", "reason": "AddressNotAssigned"}]}}
    clusters = _set_up(MULTI_NETWORK, AMBIENT_BASE, east={"eastwest_gateway": waiting},
                       west={"eastwest_gateway": None})
    found, _ = _assess(MULTI_NETWORK, clusters, AMBIENT_BASE)
    assert found["east"].gateway.state is GatewayState.PENDING and found["east"].gateway.programmed is False
    assert found["west"].gateway.state is GatewayState.MISSING and found["west"].gateway.wanted == "ambient"


def test_the_network_the_gateway_deployment_selects():
    deployment = {"spec": {"selector": {"matchLabels": {NETWORK_LABEL: "n9", "istio": "eastwestgateway"}}}}
    found, _ = _assess(MULTI_NETWORK, _set_up(MULTI_NETWORK, west={"deployments": {EASTWEST_NAME: deployment}}))
    assert found["west"].gateway.network == "n9" and found["east"].gateway.network is None


# --- a remote's wiring -----------------------------------------------------------------------------

def test_a_remote_injector_must_call_its_own_path():
    clusters = _set_up(PRIMARY_REMOTE)
    good = {**clusters, "edge": FakeCluster(clusters["edge"], injector=InjectorWebhook("/inject/cluster/edge/net/n2", True))}
    found, _ = _assess(PRIMARY_REMOTE, good, injectors=True)
    assert found["edge"].wiring.path_right and found["edge"].wiring.trusted is True
    bad = {**clusters, "edge": FakeCluster(clusters["edge"], injector=InjectorWebhook("/inject/cluster/main/net/n1", False))}
    found, _ = _assess(PRIMARY_REMOTE, bad, injectors=True)
    assert not found["edge"].wiring.path_right and found["edge"].wiring.want_path == "/inject/cluster/edge/net/n2"
    assert found["main"].wiring.path_right, "a primary's injector is its own istiod's: no path to check"


def test_a_primary_exposes_istiod_while_it_has_remotes_and_stops_once_it_has_none():
    found, _ = _assess(PRIMARY_REMOTE, _set_up(PRIMARY_REMOTE))
    assert found["main"].wiring.exposes_istiod and found["main"].wiring.exposed and not found["main"].wiring.stop_exposing
    # the remote became a primary of its own in topology.yaml; its istio-system still names main
    held = _set_up(PRIMARY_REMOTE)
    found, _ = _assess(_topology(("main", "n1", None), ("edge", "n2", None)), held)
    assert found["main"].wiring.stop_exposing and not found["main"].wiring.exposes_istiod


# --- the fake answers as the real client does --------------------------------------------------------

def test_a_context_the_kubeconfig_lacks_is_unreachable_with_kubectls_words():
    client = FakeClient({"east": _set_up(MULTI_NETWORK)["east"]})
    observed = client.read_state(MULTI_NETWORK.clusters)
    assert observed["east"].reachable and not observed["west"].reachable
    assert observed["west"].error == 'error: context "west" does not exist'
    assert client.reads == [("state", "east"), ("state", "west")]
    found = assess_mesh(mesh_model(MULTI_NETWORK), desired_state(MULTI_NETWORK, {}), observed)
    assert list(found) == ["east"], "a cluster that was not read is not judged"


def test_a_judgment_cannot_change_what_the_fake_holds():
    client = FakeClient(_set_up(MULTI_NETWORK))
    client.read_state(MULTI_NETWORK.clusters)["east"].annotations.clear()
    assert client.read_state(MULTI_NETWORK.clusters)["east"].annotations


def test_the_fakes_read_lists_the_namespaces_as_kubectls_read_does():
    """kubectl's read lists every namespace beside istio-system's objects: parse_inspect of such a listing
    gives the namespaces and their labels together, one being deleted among the labels only. The fake's
    read does the same whatever a test filled in."""
    import json

    from lib.kube import parse_inspect

    def ns(name, labels=None, deleting=False):
        meta = {"name": name, "labels": labels or {}, **({"deletionTimestamp": "2026-12-05T10:00:00Z"} if deleting else {})}
        return {"apiVersion": "v1", "kind": "Namespace", "metadata": meta}

    listing = {"apiVersion": "v1", "kind": "List", "items": [
        ns("default"), ns("team-a"), ns("istio-system", {"topology.istio.io/network": "n1"}), ns("old", deleting=True)]}
    real = parse_inspect(json.dumps(listing))
    held = Observed(reachable=True, namespace=True, network_label="n1",
                    namespace_labels={"default": {}, "old": {}}, namespaces=frozenset({"default", "team-a"}))
    fake = FakeClient({"east": held}).read_state(MULTI_NETWORK.clusters[:1])["east"]
    assert (fake.namespaces, fake.namespace_labels) == (real.namespaces, real.namespace_labels)
    # Given neither, istio-system alone (with its network label) is what such a cluster lists.
    bare = FakeClient({"east": Observed(reachable=True, namespace=True, network_label="n1")}).read_state(
        MULTI_NETWORK.clusters[:1])["east"]
    assert (bare.namespaces, bare.namespace_labels) == (frozenset({"istio-system"}),
                                                        {"istio-system": {"topology.istio.io/network": "n1"}})
    empty = FakeClient({"east": Observed(reachable=True)}).read_state(MULTI_NETWORK.clusters[:1])["east"]
    assert (empty.namespaces, empty.namespace_labels) == (frozenset(), {})


@pytest.mark.parametrize("ambient", [False, True])
def test_the_gateway_api_is_read_only_for_an_ambient_mesh(ambient):
    clusters = _set_up(MULTI_NETWORK, AMBIENT_BASE, east={"eastwest_gateway": {"status": {}}})
    seen = FakeClient(clusters).read_state(MULTI_NETWORK.clusters, ambient=ambient)["east"]
    assert (seen.eastwest_gateway is not None) is ambient
    # Without the Gateway CRD the real read lists no Gateway (asking for them would fail it): nor does the fake.
    from lib.gatewayapi import ClusterCrds
    clusters["east"] = replace(clusters["east"], gateway_api=ClusterCrds(installed=False))
    assert FakeClient(clusters).read_state(MULTI_NETWORK.clusters, ambient=ambient)["east"].eastwest_gateway is None


# --- status judges what the fake client answers, from the same findings ----------------------------

def _ca(name: str, issuer=None):
    """A CA certificate valid for ten years from yesterday (PEM, key, subject); self-signed unless ``issuer``."""
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer[2] if issuer else subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(issuer[1] if issuer else key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM), key, subject


@pytest.fixture(scope="module")
def pki():
    root = _ca("Root CA")
    inter = _ca("Intermediate CA", root)
    return root[0], {"ca-cert.pem": inter[0], "cert-chain.pem": inter[0] + root[0], "root-cert.pem": root[0]}


def _istiod(name: str) -> dict:
    return {"spec": {"template": {"spec": {"containers": [{
        "name": "discovery", "image": "docker.io/istio/pilot:1.29.0", "env": [{"name": "CLUSTER_ID", "value": name}]}]}}},
        "status": {"readyReplicas": 1}}


def _live(topology: Topology, pki, **per_cluster) -> dict[str, FakeCluster]:
    """Every cluster as apply leaves it, running: istiod (or a remote's Service), cacerts, peers' secrets,
    istiod reporting them synced, a remote's injector on its own path."""
    from lib.kube import RemoteSecretInfo

    mesh = mesh_model(topology)
    held = _set_up(topology)
    fakes = {}
    for m in mesh.members:
        secrets = {mesh.member(p).name: RemoteSecretInfo(f"istio-remote-secret-{p}", p, None, f"https://{p}.example:6443")
                   for p in m.holds_secrets_of}
        seen = replace(held[m.context], cacerts=pki[1], cacerts_labelled=True, remote_secrets=secrets,
                       deployments={} if m.is_remote else {"istiod": _istiod(m.name)},
                       # a remote's istiod Service leads to its primary through an EndpointSlice: no selector
                       istiod_services=istiod_services({"istiod": {} if m.is_remote else ISTIOD_SELECTOR}))
        fakes[m.context] = FakeCluster(
            replace(seen, **per_cluster.get(m.context, {})),
            istiod=None if m.is_remote else IstiodView(remotes={mesh.member(p).name: "synced" for p in m.holds_secrets_of}),
            injector=InjectorWebhook(f"/inject/cluster/{m.name}/net/{m.network}", True) if m.is_remote else InjectorWebhook())
    return fakes


def _status(topology: Topology, fakes: dict, pki, held_topology: Topology | None = None):
    """status of ``topology`` over clusters that hold ``fakes``."""
    from lib.status import read_status
    from lib.statusinputs import Expected

    ws = Expected(Path("/nonexistent"), topology, {ctx: d.fingerprint for ctx, d in desired_state(topology, {}).items()},
                  pki[0], {})
    return read_status(ws, FakeClient(fakes))


def _problems(status) -> dict[str, list[str]]:
    return {c.cluster.context: sorted(p.code for p in c.problems) for c in status.clusters}


def test_status_of_a_mesh_as_apply_leaves_it_is_healthy(pki):
    status = _status(PRIMARY_REMOTE, _live(PRIMARY_REMOTE, pki), pki)
    assert _problems(status) == {"main": [], "edge": []} and status.healthy


def test_status_names_the_findings_a_live_cluster_shows(pki):
    fakes = _live(MULTI_NETWORK, pki, east={"network_label": "n2", "eastwest_address": None},
                  west={"eastwest_exists": False, "eastwest_address": None, "eastwest_made_by": None})
    assert _problems(_status(MULTI_NETWORK, fakes, pki)) == {"east": ["gateway_pending", "network_label_wrong"],
                                                             "west": ["gateway_missing"]}


def test_roots_istiod_publishes_that_could_not_be_read_are_a_warning_only_where_cacerts_gives_istiod_roots(pki):
    # Where the user may not list ConfigMaps, the read goes without them: whether istiod took cacerts' roots
    # is not known there, and said. A cluster without cacerts has no roots to take: nothing to say.
    fakes = _live(MULTI_NETWORK, pki)
    for ctx in ("east", "west"):
        fakes[ctx] = replace(fakes[ctx], roots_readable=False, published=pki[0])
    fakes["west"] = replace(fakes["west"], state=replace(fakes["west"].state, cacerts={}, cacerts_labelled=False))
    problems = _problems(_status(MULTI_NETWORK, fakes, pki))
    assert "istiod_roots_unread" in problems["east"] and "istiod_roots_unread" not in problems["west"]
    fakes["east"] = replace(fakes["east"], roots_readable=True)
    assert "istiod_roots_unread" not in _problems(_status(MULTI_NETWORK, fakes, pki))["east"]


def test_status_names_the_revision_that_serves_each_cluster_once_a_canary_upgrade_moved_them(pki):
    fakes = _live(PRIMARY_REMOTE, pki)
    assert [c.serving_revision for c in _status(PRIMARY_REMOTE, fakes, pki).clusters] == [None, None]
    # After the move to 1.31.0 the primary runs istiod-1-31-0 only, and the remote's install at that
    # revision made its istiod-1-31-0 Service (the old one removed): verify reads that one's EndpointSlice.
    fakes["main"].state.deployments = {"istiod-1-31-0": _istiod("main")}
    fakes["main"].state.istiod_services = istiod_services({"istiod-1-31-0": {"app": "istiod", "istio.io/rev": "1-31-0"}})
    fakes["edge"].state.istiod_services = istiod_services({"istiod-1-31-0": {}})
    assert [c.serving_revision for c in _status(PRIMARY_REMOTE, fakes, pki).clusters] == ["1-31-0", "1-31-0"]


def test_status_of_a_remote_wired_to_the_wrong_place(pki):
    fakes = _live(PRIMARY_REMOTE, pki, edge={"annotations": {**_set_up(PRIMARY_REMOTE)["edge"].annotations,
                                                             CONTROL_PLANE_CLUSTERS: "elsewhere"}})
    fakes["edge"].injector = InjectorWebhook("/inject/cluster/main/net/n1", True)
    assert _problems(_status(PRIMARY_REMOTE, fakes, pki))["edge"] == ["control_plane_annotation_wrong",
                                                                       "injection_path_wrong"]
    edge = next(c for c in _status(PRIMARY_REMOTE, fakes, pki).clusters if c.cluster.context == "edge")
    wrong = next(p for p in edge.problems if p.code == "injection_path_wrong")
    assert wrong.message.startswith("the sidecar injector calls /inject/cluster/main/net/n1, not /inject/cluster/edge/net/n2")
    # without its caBundle, the injector refuses pods: the cause named is the annotation
    fakes["edge"].injector = InjectorWebhook("/inject/cluster/edge/net/n2", False)
    edge = next(c for c in _status(PRIMARY_REMOTE, fakes, pki).clusters if c.cluster.context == "edge")
    untrusted = next(p for p in edge.problems if p.code == "injector_untrusted")
    assert f"names elsewhere in {CONTROL_PLANE_CLUSTERS}, not main" in untrusted.message


def test_status_reports_the_cacerts_findings_of_live_clusters(pki):
    from tests.test_assess import _cert

    other = _cert("Root CA")  # another workspace's root: same name, another key
    inter = _cert("Intermediate CA", other)
    theirs = {"ca-cert.pem": inter[0], "cert-chain.pem": inter[0] + other[0], "root-cert.pem": other[0]}
    fakes = _live(MULTI_NETWORK, pki, east={"cacerts": {**pki[1], "ca-cert.pem": b"not a certificate"}},
                  west={"cacerts": theirs})
    status = _status(MULTI_NETWORK, fakes, pki)
    problems = _problems(status)  # (west's intermediate, made for 30 days, is also expiring)
    assert problems["east"] == ["cacerts_unreadable"] and "cacerts_foreign_root" in problems["west"]
    east, west = status.clusters
    assert east.cacerts.chains_to_root is False and west.cacerts.chains_to_root is False
    assert west.cacerts.root_fingerprint == _fp(other[0]) and west.cacerts.chains_to is None
    fakes["east"].state.cacerts = None
    assert _problems(_status(MULTI_NETWORK, fakes, pki))["east"] == ["cacerts_missing"]


def test_status_from_the_workspace_a_mesh_is_moving_off_names_the_move_instead_of_a_fix_that_undoes_it(pki):
    """Another workspace's rotate-certs --root: each cacerts trusts this workspace's root and the other's,
    istio-system records the move to the other root, istiod was reinstalled for two roots. Here apply and
    rotate-certs refuse; status names the move, not drift (whose hint is apply) nor another root (whose
    hint replaces cacerts)."""
    from lib.names import TRANSITION_ANNOTATION
    from tests.test_assess import _cert

    theirs = _cert("Root CA 20261204T000000Z")[0]
    fakes = _live(MULTI_NETWORK, pki)
    for fake in fakes.values():
        fake.state.cacerts = {**pki[1], "root-cert.pem": pki[1]["root-cert.pem"] + theirs}
        fake.state.annotations[TRANSITION_ANNOTATION] = f"stage=1 root={_fp(theirs)[:16]} since=2026-12-04T00:00:00Z"
        fake.state.applied = "0" * 16  # what the other workspace installed
    status = _status(MULTI_NETWORK, fakes, pki)
    assert _problems(status) == {"east": ["root_moved_elsewhere"], "west": ["root_moved_elsewhere"]}
    assert not status.healthy
    # Its own move to a root it holds is not another workspace's.
    for fake in fakes.values():
        fake.state.annotations[TRANSITION_ANNOTATION] = f"stage=1 root={_fp(pki[0])[:16]} since=2026-12-04T00:00:00Z"
    assert "root_moved_elsewhere" not in _problems(_status(MULTI_NETWORK, fakes, pki))["east"]


def test_status_of_a_running_primary_turned_into_a_remote_is_not_healthy(pki):
    """topology.yaml makes edge a remote of main; edge still runs what it ran as a primary."""
    as_primaries = _topology(("main", "n1", None), ("edge", "n2", None))
    fakes = _live(as_primaries, pki)
    status = _status(PRIMARY_REMOTE, fakes, pki)
    assert not status.healthy
    assert {"control_plane_annotation_wrong", "drift", "istiod_service_selects_pods"} <= set(_problems(status)["edge"])


def test_status_of_a_remote_turned_primary_names_the_annotation_it_keeps(pki):
    """What apply --dry-run plans ("stop being a remote") status reports, even with the install current."""
    as_primaries = _topology(("main", "n1", None), ("edge", "n2", None))
    fakes = _live(as_primaries, pki)
    fakes["edge"].state.annotations[CONTROL_PLANE_CLUSTERS] = "main"
    assert _problems(_status(as_primaries, fakes, pki)) == {"main": [], "edge": ["control_plane_annotation_left"]}


# --- the plan turns the same findings into steps ---------------------------------------------------

GATEWAY_ADDRESS = "198.51.100.7"


def _running(topology: Topology, workdir: Path, base: dict | None = None, **per_cluster) -> dict[str, Observed]:
    """Every cluster as apply leaves it, with the cacerts of ``workdir`` and its peers' current secrets."""
    from lib.kube import RemoteSecretInfo, token_fingerprint

    for c in topology.clusters:
        folder = workdir / "certs" / c.name
        folder.mkdir(parents=True, exist_ok=True)
        for name in ("ca-cert.pem", "ca-key.pem", "root-cert.pem", "cert-chain.pem"):
            (folder / name).write_text(f"{c.name}-{name}")
    mesh = mesh_model(topology)
    desired = desired_state(topology, base or {}, _addresses(topology))
    found = {}
    for m in mesh.members:
        d = desired[m.context]
        secrets = {p.name: RemoteSecretInfo(f"istio-remote-secret-{p.name}", p.name,
                                            token_fingerprint(p.name, p.cluster.remote_server, f"tok-{p.name}"),
                                            p.cluster.remote_server, manifest={"kind": "Secret"})
                   for p in mesh.members if p.context in m.holds_secrets_of}
        seen = installed(m.cluster, d.fingerprint, annotations=dict(d.namespace_annotations), remote_secrets=secrets,
                         reader_token=f"tok-{m.name}", cacerts={name: f"{m.name}-{name}".encode() for name in
                                                                ("ca-cert.pem", "cert-chain.pem", "root-cert.pem")})
        if d.eastwest is not None:
            seen = replace(seen, eastwest_exists=True, eastwest_address=GATEWAY_ADDRESS, eastwest_made_by="operator")
        found[m.context] = replace(seen, **per_cluster.get(m.context, {}))
    return found


def _addresses(topology: Topology) -> dict[str, str]:
    return {m.context: GATEWAY_ADDRESS for m in mesh_model(topology).members if m.eastwest}


def _plan(topology: Topology, workdir: Path, clusters: dict, base: dict | None = None,
          lines: bool = False) -> dict[str, list[str]]:
    """The steps apply plans per cluster (``lines``: their lines in the plan), for clusters read through
    the fake client."""
    plan = _apply_plan(topology, workdir, clusters, base)
    steps: dict[str, list[str]] = {}
    for phase in plan.phases:
        for context, found in phase.steps.items():
            steps.setdefault(context, []).extend(step.change if lines else step.title for step in found)
    return steps


def _apply_plan(topology: Topology, workdir: Path, clusters: dict, base: dict | None = None):
    from lib.gatewayapi import CrdSource
    from lib.kube import Tools, gateway_addresses
    from lib.plan import build_apply_plan

    observed = FakeClient(clusters).read_state(topology.clusters, ambient=data_plane_mode(base or {}) == AMBIENT)
    desired = desired_state(topology, base or {}, gateway_addresses(observed))
    plan = build_apply_plan(topology=topology, desired=desired, observed=observed, removed=[], removed_observed=observed,
                            workdir=workdir, tools=Tools(), release=None, intermediate_vars={}, gateway_timeout=5,
                            gateway_api=CrdSource("crds.yaml", "v1.4.0") if base else None)
    return plan


def test_a_mesh_as_apply_leaves_it_plans_nothing(tmp_path):
    for topology in (MULTI_NETWORK, PRIMARY_REMOTE, ONE_NETWORK):
        assert _plan(topology, tmp_path, _running(topology, tmp_path)) == {}, topology


def test_a_missing_gateway_is_installed(tmp_path):
    clusters = _running(MULTI_NETWORK, tmp_path, west={"eastwest_exists": False, "eastwest_address": None,
                                                       "eastwest_made_by": None})
    steps = _plan(MULTI_NETWORK, tmp_path, clusters)
    assert list(steps) == ["west"] and "install east-west gateway" in steps["west"]


def test_a_wrong_network_label_alone_relabels_istio_system(tmp_path):
    steps = _plan(MULTI_NETWORK, tmp_path, _running(MULTI_NETWORK, tmp_path, east={"network_label": "n2"}))
    assert steps == {"east": ["namespace istio-system (network n1) and secret cacerts", "record what was applied",
                              "wait for the east-west gateway's address"]}


def test_a_remote_turned_primary_stops_being_a_remote_and_its_primary_stops_exposing_istiod(tmp_path):
    as_remote = _running(PRIMARY_REMOTE, tmp_path)
    steps = _plan(_topology(("main", "n1", None), ("edge", "n2", None)), tmp_path, as_remote)
    assert any(title.startswith("stop being a remote") for title in steps["edge"])
    assert "stop exposing istiod (no remotes now)" in steps["main"]


def test_a_primary_whose_gateway_has_no_address_waits_for_it(tmp_path):
    clusters = _running(PRIMARY_REMOTE, tmp_path, main={"eastwest_address": None})
    assert _plan(PRIMARY_REMOTE, tmp_path, clusters)["main"] == ["wait for the east-west gateway's address"]


def test_to_ambient_the_sidecar_mode_gateway_goes_first(tmp_path):
    clusters = _running(MULTI_NETWORK, tmp_path)  # a sidecar-mode mesh, now declared ambient
    steps = _plan(MULTI_NETWORK, tmp_path, clusters, AMBIENT_BASE)
    assert steps["east"][:2] == ["remove the sidecar-mode east-west gateway (ambient now)", "install Istio"]


def test_istiod_exposed_to_a_new_remote_is_added_and_to_a_known_one_applied_again(tmp_path):
    as_primaries = _running(_topology(("main", "n1", None), ("edge", "n2", None)), tmp_path)
    gaining = _plan(PRIMARY_REMOTE, tmp_path, as_primaries, lines=True)["main"]
    assert any(line.startswith("+ expose istiod") for line in gaining), gaining
    # a base.yaml edit reinstalls a primary that has its remote already
    edited = {"spec": {"meshConfig": {"accessLogFile": "/dev/stdout"}}}
    again = _plan(PRIMARY_REMOTE, tmp_path, _running(PRIMARY_REMOTE, tmp_path), edited, lines=True)["main"]
    assert any(line.startswith("~ expose istiod") and line.endswith("applied again") for line in again), again


# --- cacerts: whose CA each cluster holds, judged against the workspace's certificates --------------

@pytest.fixture(scope="module")
def ca():
    """Roots and intermediates as bytes: this workspace's root, another workspace's (same name, another key),
    the root a move goes to; east's intermediate under each."""
    from tests.test_assess import _cert

    ours, other, new = _cert("Root CA"), _cert("Root CA"), _cert("Root CA next")

    def cacerts(root, bundle=None):
        inter = _cert("intermediate", root)
        return {"ca-cert.pem": inter[0], "cert-chain.pem": inter[0] + root[0], "root-cert.pem": bundle or root[0]}

    return {"ours": ours[0], "other": other[0], "new": new[0], "current": cacerts(ours), "earlier": cacerts(ours),
            "theirs": cacerts(other), "next": cacerts(new, bundle=new[0] + ours[0]),
            "stage1": cacerts(ours, bundle=ours[0] + new[0])}


def _fp(pem: bytes) -> str:
    from lib.certs import read_cert

    return read_cert(pem).fingerprint


def _move(ca, stage: int, foreign_start: bool = False):
    from lib.carotation import Transition

    old, new = ("other", "ours") if foreign_start else ("ours", "new")
    return Transition(stage, _fp(ca[old]), _fp(ca[new]), "2026-01-01T00:00:00Z", foreign_start)


def _at_stage(t) -> dict[str, str]:
    from lib.names import TRANSITION_ANNOTATION

    return {TRANSITION_ANNOTATION: t.annotation("2026-01-02T00:00:00Z")}


def _cacerts(ca, east: dict | None, labelled: bool = True, pki=None, **fields):
    """east's cacerts finding, read through the fake client (west holds nothing)."""
    from lib.assess import WorkspaceCerts

    pki = pki or WorkspaceCerts(ca["ours"], {"east": ca["current"]})
    clusters = _set_up(MULTI_NETWORK, east={"cacerts": east, "cacerts_labelled": labelled, **fields})
    observed = FakeClient(clusters).read_state(MULTI_NETWORK.clusters)
    found = assess_mesh(mesh_model(MULTI_NETWORK), desired_state(MULTI_NETWORK, {}), observed, pki=pki)
    assert found["west"].cacerts.state is CacertsState.ABSENT
    return found["east"].cacerts


def test_cacerts_judged_without_the_workspaces_certificates_is_not_judged():
    found, _ = _assess(MULTI_NETWORK, _set_up(MULTI_NETWORK))
    assert all(f.cacerts is None for f in found.values())


def test_cacerts_as_apply_made_it_is_ours_and_current(ca):
    found = _cacerts(ca, ca["current"])
    assert found.state is CacertsState.CURRENT and not found.other_root
    assert found.ca_readable and found.chains_to == "current" and found.on_workspace_root is True


def test_cacerts_of_an_earlier_intermediate_of_our_root_is_ours_and_outdated(ca):
    found = _cacerts(ca, ca["earlier"])
    assert found.state is CacertsState.OURS_OUTDATED and not found.other_root
    assert found.on_workspace_root is True, "status: it chains to this workspace's root"


def test_cacerts_of_another_workspaces_root_is_another_root(ca):
    found = _cacerts(ca, ca["theirs"])
    assert found.state is CacertsState.OTHER_ROOT and found.other_root
    assert found.cluster_root.fingerprint == _fp(ca["other"]) != found.workspace_root.fingerprint
    assert found.chains_to is None and found.on_workspace_root is False


def test_cacerts_somebody_made_is_foreign_and_names_its_ca(ca):
    found = _cacerts(ca, ca["theirs"], labelled=False)
    assert found.state is CacertsState.FOREIGN and found.other_root
    assert found.issuer.startswith("CA ") and "CN=intermediate" in found.issuer
    # unlabelled, but trusting our root: made by setup-mesh before it labelled its cacerts
    assert _cacerts(ca, ca["earlier"], labelled=False).state is CacertsState.OURS_OUTDATED


def test_cacerts_behind_a_move_until_it_holds_the_stage_and_says_so(ca):
    from lib.assess import WorkspaceCerts

    t = _move(ca, 1)
    pki = WorkspaceCerts(ca["ours"], {"east": ca["stage1"]}, t, ca["new"])
    assert _cacerts(ca, ca["current"], pki=pki).state is CacertsState.BEHIND_MOVE
    assert _cacerts(ca, ca["stage1"], pki=pki).state is CacertsState.BEHIND_MOVE, "the stage is not recorded"
    assert _cacerts(ca, ca["stage1"], pki=pki, annotations=_at_stage(t)).state is CacertsState.CURRENT
    assert _cacerts(ca, ca["theirs"], pki=pki).state is CacertsState.OTHER_ROOT


def test_cacerts_mid_way_in_another_workspaces_move_is_not_ours_to_replace(ca):
    from lib.assess import WorkspaceCerts
    from lib.names import TRANSITION_ANNOTATION

    theirs_move = {TRANSITION_ANNOTATION: f"stage=1 root={_fp(ca['other'])[:16]} since=2026-01-02T00:00:00Z"}
    found = _cacerts(ca, ca["earlier"], annotations=theirs_move)
    assert found.state is CacertsState.OTHER_MOVE and found.other_root
    assert "another workspace is moving the mesh to its root" in found.describe()
    # a move to this workspace's own root (one cut short at its completion) is ours
    own_move = {TRANSITION_ANNOTATION: f"stage=3 root={_fp(ca['ours'])[:16]} since=2026-01-02T00:00:00Z"}
    assert _cacerts(ca, ca["earlier"], annotations=own_move).state is CacertsState.OURS_OUTDATED
    # mid-move, the move's new root is ours too
    t = _move(ca, 1)
    moving = WorkspaceCerts(ca["ours"], {"east": ca["stage1"]}, t, ca["new"])
    assert _cacerts(ca, ca["current"], pki=moving, annotations=_at_stage(_move(ca, 2))).state is \
        CacertsState.BEHIND_MOVE


def test_cacerts_names_the_root_of_the_move_that_signed_its_intermediate(ca):
    from lib.assess import WorkspaceCerts

    t = _move(ca, 2)
    pki = WorkspaceCerts(ca["ours"], {"east": ca["next"]}, t, ca["new"])
    found = _cacerts(ca, ca["next"], pki=pki, annotations=_at_stage(t))
    assert found.state is CacertsState.CURRENT and found.chains_to == "new"
    assert found.workspace_root.fingerprint == _fp(ca["new"]), "from stage 2 the new root issues"
    assert found.on_workspace_root is False, "its root-cert.pem names the new root first"
    # a move from the clusters' root: certs-former/ holds the root their intermediates were issued by
    start = _move(ca, 1, foreign_start=True)
    former = WorkspaceCerts(ca["ours"], {"east": None}, start, None, ca["other"])
    found = _cacerts(ca, ca["theirs"], pki=former)
    assert found.chains_to == "former" and found.state is CacertsState.BEHIND_MOVE


def test_cacerts_with_an_unreadable_or_foreign_signed_intermediate_is_not_on_our_root(ca):
    found = _cacerts(ca, {**ca["current"], "ca-cert.pem": b"not a certificate"})
    assert not found.ca_readable and found.chains_to is None and found.on_workspace_root is False
    # our root in root-cert.pem, an intermediate another root signed: the plan calls it ours (outdated),
    # status says it does not chain to this workspace's root
    mixed = _cacerts(ca, {**ca["theirs"], "root-cert.pem": ca["ours"]})
    assert mixed.state is CacertsState.OURS_OUTDATED and mixed.on_workspace_root is False
    # and an intermediate of ours under a root bundle that names another root first
    other_first = _cacerts(ca, {**ca["earlier"], "root-cert.pem": ca["other"] + ca["ours"]})
    assert other_first.chains_to == "current" and other_first.on_workspace_root is False
    # a workspace without a root judges no chain
    from lib.assess import WorkspaceCerts

    assert _cacerts(ca, ca["current"], pki=WorkspaceCerts(None, {"east": ca["current"]})).on_workspace_root is None


def test_the_plan_updates_an_outdated_cacerts_and_refuses_to_replace_one_it_did_not_make(tmp_path):
    outdated = {name: b"an earlier intermediate" for name in ("ca-cert.pem", "cert-chain.pem", "root-cert.pem")}
    clusters = _running(MULTI_NETWORK, tmp_path, east={"cacerts": outdated, "cacerts_labelled": True})
    assert _plan(MULTI_NETWORK, tmp_path, clusters, lines=True)["east"][0] == "~ secret cacerts (certs/east/)"
    # not made by setup-mesh (no label) and no root of ours in it: somebody's own CA, apply asks first
    plan = _apply_plan(MULTI_NETWORK, tmp_path, _running(MULTI_NETWORK, tmp_path, east={"cacerts": outdated}))
    assert {ctx: f.state for ctx, f in plan.other_roots.items()} == {"east": CacertsState.FOREIGN}


def test_verify_reads_a_remotes_istiod_endpoints_at_the_revision_that_serves_it():
    import io

    from rich.console import Console

    from lib.kube import Tools
    from lib.reporter import Reporter
    from lib.verify import Options, read_extra
    from tests.test_behaviours import Replies

    runner = Replies("")
    quiet = Reporter(quiet=True, err_console=Console(file=io.StringIO()))
    read_extra(mesh_model(PRIMARY_REMOTE), Tools(), runner, Options(), quiet, False, {"main": None, "edge": "1-31-0"})
    selectors = [list(c.argv)[list(c.argv).index("-l") + 1] for c in runner.asked if "endpointslices.discovery.k8s.io"
                 in c.argv]
    assert selectors == ["kubernetes.io/service-name=istiod-1-31-0"], "the remote's, at its revision"


def _read_extra(topology, observed, namespace="setup-mesh-verify"):
    import io

    from rich.console import Console

    from lib.kube import Tools
    from lib.reporter import Reporter
    from lib.verify import Options, read_extra
    from tests.test_behaviours import Replies

    runner = Replies("")
    quiet = Reporter(quiet=True, err_console=Console(file=io.StringIO()))
    extra = read_extra(mesh_model(topology), Tools(), runner, Options(namespace=namespace), quiet, False,
                       {c.context: None for c in topology.clusters}, observed)
    return extra, [" ".join(c.argv[c.argv.index("get"):c.argv.index("get") + 2]) for c in runner.asked]


def test_verify_takes_the_namespace_and_the_gateways_from_status_read_and_reads_only_what_it_did_not_list():
    exposing = {"apiVersion": "networking.istio.io/v1", "kind": "Gateway",
                "metadata": {"name": "cross-network-gateway", "namespace": "istio-system"},
                "spec": {"servers": [{"port": {"number": 15443, "name": "tls", "protocol": "TLS"}, "hosts": ["*.local"]}]}}
    listed = Observed(reachable=True, namespace_labels={"istio-system": {}, "setup-mesh-verify": {"team": "x"}},
                      istio_gateways=[exposing])
    extra, reads = _read_extra(MULTI_NETWORK, {"east": listed, "west": Observed(reachable=True, namespace_labels={},
                                                                                istio_gateways=[])})
    assert reads == [], "all of it was in status's read"
    assert extra.not_ours == ["east"], "a namespace of that name verify did not label is named"
    assert extra.exposes_local == {"east": True, "west": False}
    ours = Observed(reachable=True, namespace_labels={"setup-mesh-verify": {"app.kubernetes.io/created-by": "setup-mesh-verify"}})
    extra, reads = _read_extra(MULTI_NETWORK, {"east": ours, "west": Observed(reachable=True)})
    assert extra.not_ours == [] and extra.exposes_local == {"east": False, "west": False}, "as the reads answered"
    assert sorted(reads) == ["get gateways.networking.istio.io", "get gateways.networking.istio.io",
                             "get namespace"], "what the read did not list is read (west's namespaces, both Gateways)"
    _, reads = _read_extra(ONE_NETWORK, {"east": Observed(reachable=True, namespace_labels={}),
                                         "west": Observed(reachable=True, namespace_labels={})})
    assert reads == [], "one network: no cross-network Gateway is judged, none is read"


def test_a_remote_whose_primary_cannot_be_read_is_not_reported_as_changed(pki):
    # A remote's install names its primary's gateway address; with the primary unread, what apply would
    # install there is unknown, not different (apply makes such a remote sit its run out).
    from lib.kube import gateway_addresses
    from lib.status import read_status
    from lib.statusinputs import Expected

    def fingerprints_for(addresses):
        return {ctx: d.fingerprint for ctx, d in desired_state(PRIMARY_REMOTE, {}, addresses).items()}

    fakes = _live(PRIMARY_REMOTE, pki)
    with_address = fingerprints_for(gateway_addresses({ctx: fake.state for ctx, fake in fakes.items()}))
    fakes["edge"].state.applied = with_address["edge"]  # as apply left it, pointed at main's gateway
    ws = Expected(Path("/nonexistent"), PRIMARY_REMOTE, with_address, pki[0], {}, fingerprints_for=fingerprints_for)
    assert _problems(read_status(ws, FakeClient(fakes)))["edge"] == []
    fakes["main"].state = Observed(reachable=False, error="connection refused")
    problems = _problems(read_status(ws, FakeClient(fakes)))
    assert problems["main"] == ["unreachable"] and "drift" not in problems["edge"], problems


def test_the_istio_objects_a_read_listed_and_lacks_are_named_at_the_revision_the_cluster_runs():
    from lib.assess import missing_objects

    held = _set_up(PRIMARY_REMOTE, main={"istio_objects": frozenset({("Gateway", "istiod-gateway"),
                                                                     ("Gateway", "cross-network-gateway")})})
    want = desired_state(PRIMARY_REMOTE, {})["main"]
    seen = FakeClient(held).read_state(PRIMARY_REMOTE.clusters, istio_objects_in=frozenset({"main"}))["main"]
    assert [(u.purpose, lacking) for u, lacking in missing_objects(seen, want)] == \
        [("expose istiod", ["VirtualService istiod-vs"])]
    # after a canary upgrade istiod is exposed as its revision's (expose-istiod-rev.yaml.tmpl)
    assert [lacking for _, lacking in missing_objects(seen, want, "1-31-0")] == [["VirtualService istiod-vs-1-31-0"]]
    unread = FakeClient(held).read_state(PRIMARY_REMOTE.clusters)["main"]
    assert missing_objects(unread, want) == [], "objects the read did not list are not called missing"


def test_an_untrusted_injector_is_blamed_on_what_keeps_its_primary_from_patching_it(pki):
    """The primary's istiod patches the remote's caBundle once it holds the remote's secret and the remote
    names it: the cause named is the first of these that is missing, else istiod itself."""
    fakes = _live(PRIMARY_REMOTE, pki)
    fakes["edge"].injector = InjectorWebhook("/inject/cluster/edge/net/n2", False)
    fakes["main"].state.remote_secrets = {}

    def untrusted():
        edge = next(c for c in _status(PRIMARY_REMOTE, fakes, pki).clusters if c.cluster.context == "edge")
        return next(p for p in edge.problems if p.code == "injector_untrusted"), edge

    problem, edge = untrusted()
    assert problem.message.endswith(": main does not hold this cluster's current remote secret")
    assert "the east-west gateway's included" in problem.message and "primary_lacks_secret" in [p.code for p in edge.problems]
    assert problem.hint.endswith("check with `kubectl --context edge get mutatingwebhookconfiguration -l "
                                 "app=sidecar-injector -o 'jsonpath={.items[*].webhooks[*].clientConfig.caBundle}'`")
    assert [(c.to_json()["role"], c.to_json()["primary"]) for c in _status(PRIMARY_REMOTE, fakes, pki).clusters] == \
        [("primary", None), ("remote", "main")]
    fakes["main"] = _live(PRIMARY_REMOTE, pki)["main"]
    problem, edge = untrusted()
    assert problem.message.endswith(": main's istiod has not patched it yet (is it running, and has it synced this "
                                    "cluster?)")
    assert [p.code for p in edge.problems] == ["injector_untrusted"]
