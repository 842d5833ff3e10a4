"""The assessment of what a cluster holds, on in-memory inputs (no cluster, no files, no programs)."""
from __future__ import annotations

import datetime as dt

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from lib.assess import CacertsState, assess_cacerts, root_id


def _cert(name: str, issuer: tuple | None = None) -> tuple[bytes, object, x509.Name]:
    """A CA certificate (PEM), its key and its name; self-signed unless ``issuer`` (pem, key, name)."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Org"), x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer[2] if issuer else subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now).not_valid_after(now + dt.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(issuer[1] if issuer else key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM), key, subject


@pytest.fixture(scope="module")
def pki():
    ours, other = _cert("Root CA"), _cert("Root CA")  # same name, another key: another workspace's root
    new = _cert("Root CA next")

    def cacerts(root, name="intermediate", bundle=None):
        inter = _cert(name, root)
        return {"ca-cert.pem": inter[0], "cert-chain.pem": inter[0] + root[0], "root-cert.pem": bundle or root[0]}

    return {"ours": ours[0], "other": other[0], "new": new[0], "current": cacerts(ours), "earlier": cacerts(ours),
            "theirs": cacerts(other), "stage1": cacerts(ours, bundle=ours[0] + new[0])}


def test_no_cacerts_is_absent(pki):
    assert assess_cacerts(None, False, pki["current"], [pki["ours"]]).state is CacertsState.ABSENT


def test_what_it_must_hold_is_current(pki):
    assert assess_cacerts(pki["current"], True, pki["current"], [pki["ours"]]).state is CacertsState.CURRENT


def test_an_earlier_intermediate_of_our_root_is_ours_and_outdated(pki):
    found = assess_cacerts(pki["earlier"], True, pki["current"], [pki["ours"]])
    assert found.state is CacertsState.OURS_OUTDATED and not found.other_root
    # made before setup-mesh labelled its cacerts: trusting our root is what makes it ours
    assert assess_cacerts(pki["earlier"], False, pki["current"], [pki["ours"]]).state is CacertsState.OURS_OUTDATED


def test_another_workspaces_cacerts_is_another_root_naming_both(pki):
    found = assess_cacerts(pki["theirs"], True, pki["current"], [pki["ours"]])
    assert found.state is CacertsState.OTHER_ROOT and found.other_root
    assert found.cluster_root == root_id(pki["other"]) and found.workspace_root == root_id(pki["ours"])
    assert found.cluster_root.fingerprint != found.workspace_root.fingerprint  # same subject, told apart
    text = found.describe()
    assert root_id(pki["other"]).describe() in text and root_id(pki["ours"]).describe() in text


def test_somebody_elses_ca_is_foreign_and_named(pki):
    found = assess_cacerts(pki["theirs"], False, pki["current"], [pki["ours"]])
    assert found.state is CacertsState.FOREIGN and found.other_root
    assert "CN=intermediate" in found.issuer and "not made by setup-mesh" in found.describe()


def test_without_a_workspace_root_setup_meshs_label_alone_tells_its_cacerts_from_somebody_elses(pki):
    # certs/ lost (status still judges, teardown still decides what to keep): nothing to compare roots with.
    labelled = assess_cacerts(pki["theirs"], True, None, [])
    assert labelled.state is CacertsState.OURS_OUTDATED and not labelled.other_root, "replaced like its own"
    unlabelled = assess_cacerts(pki["theirs"], False, None, [])
    assert unlabelled.state is CacertsState.FOREIGN and "CN=intermediate" in unlabelled.issuer, "kept, and named"
    assert labelled.workspace_root is None and labelled.cluster_root == root_id(pki["other"])


def test_every_finding_names_the_workspaces_root_and_a_held_one_the_clusters(pki):
    # status -o json shows both roots of each cluster, also when its cacerts is in place or missing.
    ours = root_id(pki["ours"])
    absent = assess_cacerts(None, False, pki["current"], [pki["ours"]])
    assert (absent.workspace_root, absent.cluster_root) == (ours, None)
    current = assess_cacerts(pki["current"], True, pki["current"], [pki["ours"]])
    assert (current.workspace_root, current.cluster_root) == (ours, ours)
    # Mid-move the workspace issues under the first of its roots; the cluster's is the first of its bundle.
    moving = assess_cacerts(pki["stage1"], True, pki["stage1"], [pki["new"], pki["ours"]])
    assert (moving.workspace_root, moving.cluster_root) == (root_id(pki["new"]), ours)


def test_mid_move_a_cluster_on_a_root_of_the_move_is_behind_not_foreign(pki):
    roots = [pki["ours"], pki["new"]]
    assert assess_cacerts(pki["current"], True, pki["stage1"], roots).state is CacertsState.BEHIND_MOVE
    # holding the stage's files but without the stage recorded on istio-system is not in place
    assert assess_cacerts(pki["stage1"], True, pki["stage1"], roots, at_stage=False).state is CacertsState.BEHIND_MOVE
    assert assess_cacerts(pki["stage1"], True, pki["stage1"], roots).state is CacertsState.CURRENT
    assert assess_cacerts(pki["theirs"], True, pki["stage1"], roots).state is CacertsState.OTHER_ROOT


def test_a_root_bundle_in_another_order_is_not_current(pki):
    """istiod 1.28/1.29 compare root bundles byte for byte: the same roots in another order are rewritten."""
    swapped = {**pki["stage1"], "root-cert.pem": pki["new"] + pki["ours"]}
    assert assess_cacerts(swapped, True, pki["stage1"], [pki["ours"], pki["new"]]).state is not CacertsState.CURRENT


# --- the mesh as configured ---------------------------------------------------------------------

def _mesh(**clusters):
    from pathlib import Path

    from lib.config import Cluster, Topology
    from lib.mesh import mesh_model

    made = tuple(Cluster(context=ctx, network=spec.get("network", "n1"), name=ctx, server=spec.get("server"),
                         api_server=spec.get("api_server"), primary=spec.get("primary"))
                 for ctx, spec in clusters.items())
    return mesh_model(Topology("m", made, Path("topology.yaml")))


def test_a_loopback_api_server_matters_where_another_cluster_must_hold_its_secret():
    from lib.assess import loopback_peers

    local, reached = {"server": "https://127.0.0.1:6443"}, {"server": "https://10.0.0.1:6443"}
    two = _mesh(a=local, b=reached)
    assert [m.context for m in loopback_peers(two)] == ["a"]
    fixed = _mesh(a={**local, "api_server": "https://a.example:6443"}, b=reached)
    assert loopback_peers(fixed) == []
    # a primary with its remote: the remote's secret is held by the primary, the primary's by nobody
    remote = _mesh(p=local, r={**local, "primary": "p"})
    assert [m.context for m in loopback_peers(remote)] == ["r"]
    assert loopback_peers(_mesh(alone=local)) == [], "a mesh of one cluster holds no remote secret"


# --- remote secrets -----------------------------------------------------------------------------

def _holding(**secrets):
    """An Observed holding remote secrets: peer name -> recorded source fingerprint (and loopback flag)."""
    from lib.kube import Observed, RemoteSecretInfo

    held = {}
    for name, spec in secrets.items():
        source, local = spec if isinstance(spec, tuple) else (spec, False)
        held[name] = RemoteSecretInfo(f"istio-remote-secret-{name}", name, source, "https://x", suspicious_local=local)
    return Observed(reachable=True, namespace=True, remote_secrets=held)


def _states(findings):
    return {f.peer: f.state.value for f in findings}


def test_a_primary_must_hold_every_peers_current_secret():
    from lib.assess import SecretState, assess_secrets

    mesh = _mesh(a={}, b={}, c={}, d={})
    issued = {"a": "fa", "b": "fb", "c": "fc", "d": None}  # d's credentials could not be read
    found = assess_secrets(mesh, mesh.member("a"), _holding(b="fb", c="old", d="fd", gone="fg"), issued)
    assert _states(found) == {"b": "present", "c": "outdated", "d": "present", "gone": "stale"}
    assert [f.peer for f in found if f.to_import] == ["c", "d"], "outdated, and not known to be current"
    assert [f.secret for f in found if f.to_prune] == ["istio-remote-secret-gone"]
    missing = assess_secrets(mesh, mesh.member("a"), _holding(), issued)
    assert _states(missing) == {"b": "missing", "c": "missing", "d": "missing"}
    assert all(f.to_import for f in missing) and missing[0].state is SecretState.MISSING


def test_a_remote_holds_no_secret_and_its_primary_holds_its_secret():
    from lib.assess import assess_secrets

    mesh = _mesh(p={}, q={}, r={"primary": "p"})
    issued = {"p": "fp", "q": "fq", "r": "fr"}
    remote = assess_secrets(mesh, mesh.member("r"), _holding(p="fp"), issued)
    assert _states(remote) == {"p": "unneeded"} and remote[0].to_prune and not remote[0].to_import
    primary = assess_secrets(mesh, mesh.member("p"), _holding(q="fq", r="fr"), issued)
    assert _states(primary) == {"q": "present", "r": "present"} and not any(f.to_import for f in primary)


def test_a_secret_naming_a_loopback_server_is_reported_before_being_outdated():
    from lib.assess import assess_secrets

    mesh = _mesh(a={}, b={})
    found = assess_secrets(mesh, mesh.member("a"), _holding(b=("old", True)), {"a": "fa", "b": "fb"})
    assert _states(found) == {"b": "loopback"} and found[0].to_import and found[0].current is False
    current = assess_secrets(mesh, mesh.member("a"), _holding(b=("fb", True)), {"a": "fa", "b": "fb"})
    assert _states(current) == {"b": "loopback"} and not current[0].to_import, "only a new api_server fixes it"


def test_the_refusal_to_replace_another_root_reads_as_a_user_compares_roots(pki):
    """apply's refusal and the plan name both roots by subject and fingerprint, and say whose CA it is."""
    from lib.assess import CacertsFinding, RootId

    ours, theirs = root_id(pki["ours"]), root_id(pki["other"])
    assert ours.describe() == f"{ours.subject} (SHA-256 {ours.fingerprint})" and ours.subject
    assert RootId("", "ab").describe() == "(no subject) (SHA-256 ab)"
    other = assess_cacerts(pki["theirs"], True, pki["current"], [pki["ours"]])
    assert other.describe() == (f"secret cacerts chains to root {theirs.describe()}, made by setup-mesh from another "
                                f"workspace or an earlier root; this workspace's root is {ours.describe()}")
    foreign = CacertsFinding(CacertsState.FOREIGN, None, None, "CA of the platform team")
    assert foreign.describe() == ("secret cacerts chains to root a root-cert.pem that does not parse, not made by "
                                  "setup-mesh: CA of the platform team; this workspace's root is (this workspace has "
                                  "no root CA)")


def test_every_secret_a_remote_holds_is_unneeded_and_named_for_its_removal():
    """status names each secret to delete; apply prunes each of them, not only the first."""
    from lib.assess import assess_secrets

    mesh = _mesh(p={}, q={}, r={"primary": "p"})
    issued = {"p": "fp", "q": "fq", "r": "fr"}
    found = assess_secrets(mesh, mesh.member("r"), _holding(p="fp", q="fq"), issued)
    assert [(f.peer, f.state.value, f.secret, f.context) for f in found] == [
        ("p", "unneeded", "istio-remote-secret-p", "p"), ("q", "unneeded", "istio-remote-secret-q", "q")]
    held = assess_secrets(mesh, mesh.member("p"), _holding(q="fq"), issued)
    assert [(f.peer, f.secret, f.current) for f in held if f.secret] == [("q", "istio-remote-secret-q", True)]
