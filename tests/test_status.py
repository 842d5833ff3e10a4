"""status: reads every cluster, judges it against the workspace, reports problems with hints.

The pure part (evaluate) is checked with certificates made here; the rest runs ./setup_mesh.py
against a sandbox mesh built the way a user builds one (prep-mesh, topology.yaml, apply).
"""
from __future__ import annotations

import base64
import datetime as dt
import io
import json
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from rich.console import Console

from tests import meshkit
from tests.sandbox.release import VERSION
from tests.fakecluster import istiod_service_of, istiod_services
from tests.meshkit import make_other_ca
from lib.config import Cluster, Topology
from lib.kube import Observed, RemoteSecretInfo
from lib.reporter import Reporter
from lib.status import render
from lib.statusinputs import Expected
from lib.statusjudge import evaluate
from lib.statusread import InjectorWebhook, Istiod, image_version, parse_istiod
from lib.statusreport import Hints

NOW = dt.datetime(2030, 1, 1, tzinfo=dt.timezone.utc)


# --- certificates made in-process (fast) ---------------------------------------------------------

def _ca(name: str, issuer=None, days: int = 3650, now: dt.datetime = NOW):
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Test"),
                         x509.NameAttribute(NameOID.COMMON_NAME, name)])
    issuer_cert, issuer_key = issuer or (None, key)
    cert = (x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(issuer_cert.subject if issuer_cert else subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=30))
            .not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(issuer_key, hashes.SHA256()))
    return cert, key


def _pem(cert) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


@pytest.fixture(scope="module")
def roots():
    root = _ca("Root CA")
    other = _ca("Root CA")  # same name, another key: only the signature tells them apart
    return root, other


def _cacerts(root, days: int = 3650) -> dict[str, bytes]:
    inter, _ = _ca("Intermediate CA", issuer=root, days=days)
    return {"ca-cert.pem": _pem(inter), "root-cert.pem": _pem(root[0]), "cert-chain.pem": _pem(inter) + _pem(root[0])}


def _topology(tmp_path: Path, networks=("n1", "n1", "n2"), api_servers=True) -> Topology:
    clusters = tuple(Cluster(context=f"c{i + 1}", network=net, name=f"c{i + 1}",
                             api_server=f"https://c{i + 1}.example:6443" if api_servers else None,
                             server=f"https://127.0.0.1:{6440 + i}")
                     for i, net in enumerate(networks))
    return Topology("mesh1", clusters, tmp_path / "topology.yaml")


def _healthy(topology: Topology, root) -> tuple[dict[str, Observed], dict[str, Istiod]]:
    observed, istiod = {}, {}
    for c in topology.clusters:
        secrets = {p.name: RemoteSecretInfo(f"istio-remote-secret-{p.name}", p.name, "fp", p.api_server)
                   for p in topology.clusters if p is not c}
        observed[c.context] = Observed(reachable=True, namespace=True, network_label=c.network, applied="fp-" + c.context,
                                       cacerts=_cacerts(root), remote_secrets=secrets, eastwest_exists=True, eastwest_made_by="operator",
                                       eastwest_address="198.51.100.9",
                                       istiod_services=istiod_service_of(c))
        istiod[c.context] = Istiod(read=True, installed=True, version="1.29.0", ready=True, cluster_id=c.name)
    return observed, istiod


def _ws(tmp_path, topology, root, local=None) -> Expected:
    return Expected(tmp_path, topology, {c.context: "fp-" + c.context for c in topology.clusters},
                     _pem(root[0]), local or {})


def _codes(status, context: str) -> list[str]:
    return [p.code for c in status.clusters if c.cluster.context == context for p in c.problems]


def test_image_tag_is_the_version():
    assert image_version("docker.io/istio/pilot:1.29.0") == "1.29.0"
    assert image_version("registry.local:5000/istio/pilot:1.28.1-distroless") == "1.28.1"
    assert image_version("gcr.io/istio/pilot:1.27.0@sha256:" + "a" * 64) == "1.27.0"
    assert image_version("registry.local:5000/istio/pilot") == "unknown"
    assert image_version("docker.io/istio/pilot:1.30.0-beta.1") == "1.30.0-beta.1"
    # A custom build or a moving tag says nothing reliable about the version: never show it as one.
    assert image_version("registry.local/istio/pilot:latest") == "unknown"
    assert image_version("registry.local/istio/pilot:my-fix-build") == "unknown"
    assert image_version("registry.local/istio/pilot@sha256:" + "b" * 64) == "unknown"
    assert image_version(None) is None


REMOTE_CLUSTERS_1_30 = """\
NAME         SECRET                                        STATUS     ISTIOD
cluster2     istio-system/istio-remote-secret-cluster2     synced     istiod-7b69f8c4d-x5kqp
cluster1                                                   synced     istiod-7b69f8c4d-x5kqp
cluster3     istio-system/istio-remote-secret-cluster3     timeout    istiod-7b69f8c4d-x5kqp
"""
REMOTE_CLUSTERS_1_31 = """\
NAME         SECRET                                        STATUS      ISTIOD                         REVISION
cluster1                                                   synced      istiod-canary-5d8f9c-abcde     canary
cluster2     istio-system/istio-remote-secret-cluster2     syncing     istiod-canary-5d8f9c-abcde     canary
cluster2     istio-system/istio-remote-secret-cluster2     synced      istiod-canary-5d8f9c-fghij     canary
"""


def test_remote_clusters_output_of_both_releases_is_parsed():
    from lib.statusread import istiod_view, parse_remote_clusters

    rows = parse_remote_clusters(REMOTE_CLUSTERS_1_30)
    assert [(r.name, r.secret, r.status, r.revision) for r in rows] == [
        ("cluster2", "istio-system/istio-remote-secret-cluster2", "synced", ""),
        ("cluster1", "", "synced", ""),
        ("cluster3", "istio-system/istio-remote-secret-cluster3", "timeout", "")]
    assert istiod_view(rows) == {"cluster2": "synced", "cluster3": "timeout"}  # not its own cluster
    rows = parse_remote_clusters(REMOTE_CLUSTERS_1_31)
    assert {r.revision for r in rows} == {"canary"} and rows[0].istiod == "istiod-canary-5d8f9c-abcde"
    assert istiod_view(rows) == {"cluster2": "syncing"}  # one istiod pod not synced yet is what counts
    with pytest.raises(ValueError):
        parse_remote_clusters("Error: unable to find any Istiod instances\n")


def test_istiod_deployment_is_parsed():
    assert parse_istiod(None) == Istiod(read=True, installed=False)
    seen = parse_istiod(json.loads(
        '{"kind": "Deployment", "spec": {"template": {"spec": {"containers": [{"name": "discovery",'
        ' "image": "istio/pilot:1.29.0", "env": [{"name": "CLUSTER_ID", "value": "c1"}]}]}}},'
        ' "status": {"readyReplicas": 1}}'))
    assert (seen.installed, seen.version, seen.ready, seen.cluster_id) == (True, "1.29.0", True, "c1")


def test_healthy_inputs_give_no_problem(tmp_path, roots):
    topology = _topology(tmp_path)
    observed, istiod = _healthy(topology, roots[0])
    status = evaluate(_ws(tmp_path, topology, roots[0]), observed, istiod, now=NOW)
    assert status.healthy, [(c.cluster.context, c.problems) for c in status.clusters]
    doc = status.to_json()
    assert doc["clusters"][0]["remote_secrets"] == {"c2": "present", "c3": "present"}
    assert doc["clusters"][0]["cacerts"]["chains_to_root"] is True
    assert doc["clusters"][0]["cacerts"]["days_left"] == 3650


def test_same_named_root_with_another_key_is_foreign(tmp_path, roots):
    root, other = roots
    topology = _topology(tmp_path)
    observed, istiod = _healthy(topology, root)
    observed["c2"].cacerts = _cacerts(other)
    # the local intermediate is this root's: apply alone repairs it
    local_inter, _ = _ca("Intermediate CA", issuer=root)
    status = evaluate(_ws(tmp_path, topology, root, {"c2": _pem(local_inter)}), observed, istiod, now=NOW)
    assert _codes(status, "c2") == ["cacerts_foreign_root"]
    problem = status.clusters[1].problems[0]
    assert "rm -r" not in problem.hint and "setup-mesh apply" in problem.hint
    # the intermediate on disk is foreign too: it must be re-issued first
    status = evaluate(_ws(tmp_path, topology, root, {"c2": observed["c2"].cacerts["ca-cert.pem"]}), observed, istiod,
                      now=NOW)
    assert status.clusters[1].problems[0].hint.startswith("`rm -r ")
    # a foreign intermediate shipped with this workspace's root-cert.pem is still caught by the signature
    forged = _cacerts(other)
    forged["root-cert.pem"] = _pem(root[0])
    observed["c2"].cacerts = forged
    status = evaluate(_ws(tmp_path, topology, root), observed, istiod, now=NOW)
    assert "not issued by this workspace's root" in status.clusters[1].problems[0].message


def test_expiry_under_30_days_warns_and_past_expiry_fails(tmp_path, roots):
    topology = _topology(tmp_path)
    observed, istiod = _healthy(topology, roots[0])
    observed["c1"].cacerts = _cacerts(roots[0], days=10)
    observed["c3"].cacerts = _cacerts(roots[0], days=-2)
    status = evaluate(_ws(tmp_path, topology, roots[0]), observed, istiod, now=NOW)
    assert _codes(status, "c1") == ["cacerts_expiring"]
    assert status.clusters[0].problems[0].severity == "warning" and status.clusters[0].healthy
    assert _codes(status, "c3") == ["cacerts_expired"]
    assert not status.healthy


def test_local_secret_hint_depends_on_api_server(tmp_path, roots):
    for api_servers, expected in ((False, "set api_server: for c2 in"), (True, "replaces it with one naming https://c2")):
        topology = _topology(tmp_path, api_servers=api_servers)
        observed, istiod = _healthy(topology, roots[0])
        observed["c1"].remote_secrets["c2"] = RemoteSecretInfo("istio-remote-secret-c2", "c2", "fp",
                                                               "https://127.0.0.1:6441", suspicious_local=True)
        status = evaluate(_ws(tmp_path, topology, roots[0]), observed, istiod, now=NOW)
        assert _codes(status, "c1") == ["remote_secret_local"]
        assert expected in status.clusters[0].problems[0].hint


def test_a_cluster_never_set_up_is_one_problem_not_many(tmp_path, roots):
    topology = _topology(tmp_path)
    observed, istiod = _healthy(topology, roots[0])
    observed["c3"] = Observed(reachable=True)
    istiod["c3"] = Istiod(read=True, installed=False)
    status = evaluate(_ws(tmp_path, topology, roots[0]), observed, istiod, now=NOW)
    assert _codes(status, "c3") == ["namespace_missing"]
    assert status.to_json()["clusters"][2]["remote_secrets"] == {"c1": "missing", "c2": "missing"}


def test_one_network_needs_no_gateway(tmp_path, roots):
    topology = _topology(tmp_path, networks=("n1", "n1"))
    observed, istiod = _healthy(topology, roots[0])
    for seen in observed.values():
        seen.eastwest_exists, seen.eastwest_address = False, None
    status = evaluate(_ws(tmp_path, topology, roots[0]), observed, istiod, now=NOW)
    assert status.healthy
    assert status.to_json()["clusters"][0]["gateway"] == {"required": False, "address": None}


def test_an_istiod_service_that_leads_nowhere(tmp_path, roots):
    # c2 is a remote of c1: its istiod Service must select nothing (its EndpointSlice leads to c1's istiod);
    # c1's must select its istiod pods.
    plain = _topology(tmp_path, networks=("n1", "n2"))
    c1, c2 = plain.clusters
    topology = Topology("mesh1", (c1, replace(c2, primary="c1")), plain.path)
    observed, istiod = _healthy(topology, roots[0])
    observed["c2"].remote_secrets = {}
    observed["c2"].annotations = {"topology.istio.io/controlPlaneClusters": "c1"}
    istiod["c2"] = Istiod(read=True, installed=False)
    observed["c1"].istiod_services = istiod_services({"istiod": {"app": "istiod", "istio": "pilot"}})
    observed["c2"].istiod_services = istiod_services({"istiod": {}})
    injection = {"c2": InjectorWebhook("/inject/cluster/c2/net/n2", trusted=True)}
    ws = _ws(tmp_path, topology, roots[0])
    status = evaluate(ws, observed, istiod, now=NOW, injection=injection)
    assert status.healthy, [(c.cluster.context, c.problems) for c in status.clusters]
    assert [c.istio_version for c in status.clusters] == ["1.29.0", "remote"]  # a remote runs its primary's

    # The remote profile's Service gone (uninstalled by hand): the remote install is missing.
    observed["c2"].istiod_services = {}
    status = evaluate(ws, observed, istiod, now=NOW, injection=injection)
    missing = [p for p in status.clusters[1].problems if p.code == "istio_missing"]
    assert [(p.message, p.hint) for p in missing] == [
        ("Istio's remote install is missing (no istiod Service leading to c1's istiod)", Hints(tmp_path, topology).apply)]
    assert status.clusters[1].istio_version is None
    observed["c2"].istiod_services = istiod_services({"istiod": {}})

    observed["c2"].istiod_services = istiod_services({"istiod": {"app": "istiod"}})  # left from when it was a primary
    observed["c1"].istiod_services = istiod_services({"istiod": {}})
    status = evaluate(ws, observed, istiod, now=NOW, injection=injection)
    assert _codes(status, "c2") == ["istiod_service_selects_pods"]
    assert _codes(status, "c1") == ["istiod_service_selects_nothing"]
    problem = status.clusters[1].problems[0]
    assert problem.message.startswith("the istiod Service still selects pods (app=istiod)")
    assert problem.hint.endswith("`kubectl --context c2 patch service istiod -n istio-system --type json -p "
                                 "'[{\"op\": \"remove\", \"path\": \"/spec/selector\"}]'`")


def test_the_istiod_services_selectors_are_read():
    from lib.kube import parse_inspect

    listing = {"kind": "List", "items": [
        {"kind": "Service", "metadata": {"name": "istiod", "namespace": "istio-system"},
         "spec": {"selector": {"app": "istiod"}}},
        {"kind": "Service", "metadata": {"name": "istiod-canary", "namespace": "istio-system"}, "spec": {}},
        {"kind": "Service", "metadata": {"name": "other", "namespace": "istio-system"},
         "spec": {"selector": {"app": "other"}}}]}
    seen = parse_inspect(json.dumps(listing))
    assert seen.istiod_service
    assert seen.istiod_selectors == {"istiod": {"app": "istiod"}, "istiod-canary": {}}


def test_no_workspace_root_is_a_workspace_problem(tmp_path, roots):
    topology = _topology(tmp_path)
    observed, istiod = _healthy(topology, roots[0])
    ws = _ws(tmp_path, topology, roots[0])
    ws.root_pem = None
    status = evaluate(ws, observed, istiod, now=NOW)
    assert [p.code for p in status.problems] == ["root_ca_missing"]
    assert status.to_json()["clusters"][0]["cacerts"]["chains_to_root"] is None


def test_every_problem_code_and_field_is_documented(tmp_path, roots):
    import re

    doc = (ROOT / "docs" / "status-json.md").read_text()
    source = "\n".join(p.read_text() for p in sorted((ROOT / "lib").glob("status*.py")))  # status's modules
    emitted = set(re.findall(r'Problem\("([a-z_]+)"', source)) | set(re.findall(r'\("(remote_cluster_[a-z_]+)"', source))
    documented = dict(re.findall(r"^\| `([a-z_]+)` \| (error|warning) \|", doc, re.M))
    assert emitted == set(documented)
    assert documented["cacerts_expiring"] == "warning"
    topology = _topology(tmp_path)
    observed, istiod = _healthy(topology, roots[0])
    sample = evaluate(_ws(tmp_path, topology, roots[0]), observed, istiod, now=NOW).to_json()
    fields = set(sample) | {f"{k}.{sub}" if isinstance(v, dict) and k != "remote_secrets" else k
                            for k, v in sample["clusters"][0].items() for sub in (v if isinstance(v, dict) else [None])}
    for name in fields:
        assert f"| `{name}` |" in doc, f"{name} is not documented"


def test_one_cause_is_one_line_naming_every_cluster_it_affects(tmp_path, roots, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")  # a terminal's width: kept, where a pipe's is not
    topology = _topology(tmp_path)
    observed, istiod = _healthy(topology, roots[0])
    for holder in ("c2", "c3"):  # c1's secret names a loopback address, in both peers
        observed[holder].remote_secrets["c1"].suspicious_local = True
        observed[holder].remote_secrets["c1"].server = "https://127.0.0.1:6443"
    status = evaluate(_ws(tmp_path, topology, roots[0]), observed, istiod, now=NOW)
    out = io.StringIO()
    render(status, Reporter(console=Console(file=out, width=80, highlight=False)))
    problems = out.getvalue().split("✗ ", 1)[1].splitlines()
    assert problems[0].startswith("c2, c3: the remote secret of c1 (istio-remote-secret-c1) names the API server")
    assert sum(1 for line in problems if line.startswith("✗ ")) == 0, "one cause, one entry"
    assert sum(1 for line in problems if "hint:" in line) == 1
    assert problems[-1] == "unhealthy: 1 problem in 2 of 3 clusters"
    assert max(len(line.rstrip()) for line in out.getvalue().splitlines()) <= 80


def test_a_remote_holding_secrets_of_clusters_in_the_topology_shows_them_unneeded_not_as_other_clusters(tmp_path,
                                                                                                         roots):
    # c2 was made a remote of c1 and apply has not run yet: its secrets of c1 and c3 are not needed (apply
    # prunes them). They name clusters of the topology: no column "(not in topology)", no word "stale".
    topology = _topology(tmp_path)
    topology = Topology(topology.mesh_id, (topology.clusters[0], replace(topology.clusters[1], primary="c1"),
                                           topology.clusters[2]), topology.path)
    observed, istiod = _healthy(topology, roots[0])
    status = evaluate(_ws(tmp_path, topology, roots[0]), observed, istiod, now=NOW)
    assert status.to_json()["clusters"][1]["remote_secrets"] == {"c1": "unneeded", "c3": "unneeded"}
    assert {p.code for p in status.clusters[1].problems} >= {"remote_secret_unneeded"}
    out = io.StringIO()
    render(status, Reporter(console=Console(file=out, width=200, highlight=False)))
    text = out.getvalue()
    matrix = text.split("remote secrets (row holds column's", 1)[1]
    assert matrix.splitlines()[2].split() == ["c1", "c2", "c3"], "one column per cluster"
    assert "not in topology" not in text and "stale" not in matrix
    assert [line.split() for line in matrix.splitlines() if line.strip().startswith("c2 ")] == [
        ["c2", "unneeded", "—", "unneeded"]]


def test_a_cacerts_whose_bundle_holds_this_root_after_another_is_left_to_a_plain_apply(tmp_path, roots):
    # A cluster back after a move to this root completed without it: its bundle names the former root first,
    # then this one. apply replaces such a cacerts without --replace-foreign-ca (it trusts this root): the
    # hint must not send the user to the flag that breaks mTLS until every workload restarts.
    old, new = roots
    topology = _topology(tmp_path)
    observed, istiod = _healthy(topology, new)
    observed["c2"].cacerts["root-cert.pem"] = _pem(old[0]) + _pem(new[0])
    observed["c2"].cacerts["ca-cert.pem"] = _cacerts(old)["ca-cert.pem"]
    status = evaluate(_ws(tmp_path, topology, new), observed, istiod, now=NOW)
    (problem,) = [p for p in status.clusters[1].problems if p.code == "cacerts_foreign_root"]
    assert "--replace-foreign-ca" not in problem.hint and "rm -r" not in problem.hint, problem.hint
    assert "apply" in problem.hint and "issues the cluster an intermediate CA" in problem.hint
    # A bundle without this root is another mesh's: only --replace-foreign-ca replaces it.
    observed["c2"].cacerts["root-cert.pem"] = _pem(old[0])
    status = evaluate(_ws(tmp_path, topology, new), observed, istiod, now=NOW)
    (problem,) = [p for p in status.clusters[1].problems if p.code == "cacerts_foreign_root"]
    assert "apply --replace-foreign-ca" in problem.hint


def test_table_names_every_problem_with_its_hint(tmp_path, roots):
    topology = _topology(tmp_path)
    observed, istiod = _healthy(topology, roots[0])
    del observed["c1"].remote_secrets["c3"]
    observed["c1"].remote_secrets["gone"] = RemoteSecretInfo("istio-remote-secret-gone", "gone", "fp", None)
    observed["c3"].remote_secrets["c1"].suspicious_local = True
    observed["c3"].eastwest_address = None
    observed["c2"] = Observed(reachable=False, error="connection refused")
    status = evaluate(_ws(tmp_path, topology, roots[0]), observed, istiod, now=NOW)
    out = io.StringIO()
    render(status, Reporter(console=Console(file=out, width=160, highlight=False, soft_wrap=True)))
    text = out.getvalue()
    assert "✗ c1: no remote secret of c3: this cluster cannot discover c3's endpoints\n  hint: setup-mesh apply\n" in text
    assert "✗ c2: cannot read the cluster: connection refused" in text and "kubectl --context c2 get namespace istio-system" in text
    assert "✗ c3: the east-west gateway service istio-eastwestgateway has no address yet" in text
    assert "✗ c1: remote secret istio-remote-secret-gone gives access to cluster gone" in text
    assert "remote_secret" not in text, "codes are for -o json"
    assert text.rstrip().splitlines()[-1] == "unhealthy: 5 problems in 3 of 3 clusters"
    matrix = text.split("remote secrets (")[1].splitlines()
    assert "gone (not in topology)" in matrix[2]
    row = {line.split()[0]: line.split()[1:] for line in matrix[4:7]}
    assert row == {"c1": ["—", "✓", "missing", "stale"], "c2": ["?", "—", "?", "?"], "c3": ["local", "✓", "—"]}
    table = {line.split()[0]: line.split()[1:] for line in text.split("remote secrets (")[0].splitlines()[4:7]}
    assert table["c1"][5:7] == ["1/2", "missing,stale"] and table["c3"][5:7] == ["1/2", "local"]
    assert "pending" in text.split("remote secrets")[0]


# --- on the sandbox: a mesh built by prep-mesh and apply -----------------------------------------

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = str(ROOT / "setup_mesh.py")  # hints name the program as it was run
NETS = {"cluster1": "network1", "cluster2": "network1", "cluster3": "network2"}
CLUSTER_FIELDS = {"context", "cluster_name", "network", "role", "primary", "reachable", "error", "istio", "network_label", "cacerts",
                  "gateway", "remote_secrets", "stale_secrets", "remote_clusters", "drift", "revisions", "problems"}


class Mesh(meshkit.Mesh):
    def status(self, *args: str) -> tuple[int, dict]:
        result = self.run("status", "-o", "json", *args)
        assert result.returncode in (0, 1), result.stderr
        return result.returncode, json.loads(result.stdout)  # stdout is the document and nothing else

    def write_topology(self, api_servers: dict[str, str | None]) -> None:
        contexts = {}
        for ctx, net in self.networks.items():
            contexts[ctx] = {"network": net}
            if api_servers.get(ctx):
                contexts[ctx]["api_server"] = api_servers[ctx]
        (self.workdir / "topology.yaml").write_text(yaml.safe_dump({"mesh_id": "mesh1", "contexts": contexts}))


def _build(sandbox, workdir: Path, networks: dict[str, str], ok: bool = True, *apply_args: str) -> Mesh:
    mesh = Mesh(sandbox, workdir)
    mesh.networks = networks
    result = mesh.run("prep-mesh")
    assert result.returncode == 0, result.stderr
    # Every sandbox API server listens on 127.0.0.1: name the addresses peers reach, as a user would.
    mesh.write_topology({ctx: sandbox.api_server(ctx) for ctx in networks})
    result = mesh.run("apply", "-y", *apply_args)
    assert (result.returncode == 0) == ok, result.stdout + result.stderr
    return mesh


def _build_shared(start, workdir: Path) -> Mesh:
    return _build(start(list(NETS)), workdir, NETS)


@pytest.fixture
def mesh(shaped):
    """Three clusters on two networks, healthy: a copy of one mesh built once per session (tests/shapes.py),
    so that a test that breaks it breaks it for itself alone."""
    built = shaped("status", _build_shared, Mesh)
    built.networks = NETS
    return built


def _cluster(doc: dict, ctx: str) -> dict:
    return next(c for c in doc["clusters"] if c["context"] == ctx)


def _problems(doc: dict, ctx: str) -> dict[str, dict]:
    return {p["code"]: p for p in _cluster(doc, ctx)["problems"]}


def _unhealthy_only(doc: dict, ctx: str, *codes: str) -> None:
    assert not doc["healthy"]
    for c in doc["clusters"]:
        expected = set(codes) if c["context"] == ctx else set()
        assert {p["code"] for p in c["problems"]} == expected, (c["context"], c["problems"])


def _repaired_by_apply(mesh: Mesh) -> None:
    mesh.apply()
    code, doc = mesh.status()
    assert code == 0 and doc["healthy"], [(c["context"], c["problems"]) for c in doc["clusters"]]


def test_healthy_mesh_reads_only_and_reports_every_field(mesh):
    before = {ctx: len(mesh.sandbox.requests(ctx)) for ctx in NETS}
    code, doc = mesh.status()
    assert code == 0 and doc["healthy"] is True
    assert set(doc) == {"mesh_id", "healthy", "root_fingerprint", "problems", "clusters", "root", "transition"}
    assert doc["transition"] is None and doc["root"]["days_left"] > 3000
    assert doc["mesh_id"] == "mesh1" and doc["problems"] == []
    root_fp = doc["root_fingerprint"]
    assert len(root_fp) == 64
    for ctx, net in NETS.items():
        c = _cluster(doc, ctx)
        assert set(c) == CLUSTER_FIELDS
        assert (c["cluster_name"], c["network"], c["network_label"], c["reachable"], c["error"]) == (ctx, net, net, True, None)
        assert c["istio"] == {"installed": True, "version": VERSION, "ready": True}
        assert c["cacerts"]["present"] and c["cacerts"]["chains_to_root"] and c["cacerts"]["root_fingerprint"] == root_fp
        assert c["cacerts"]["istiod_took"] is True, "istiod publishes the root of cacerts"
        assert c["cacerts"]["days_left"] > 3000 and c["cacerts"]["expires"].endswith("Z")
        assert c["gateway"]["required"] and c["gateway"]["address"].startswith("198.51.100.")
        assert c["remote_secrets"] == {p: "present" for p in NETS if p != ctx}
        assert c["stale_secrets"] == [] and c["drift"] is False and c["problems"] == []
        assert c["remote_clusters"] == {p: "synced" for p in NETS if p != ctx}  # istiod's own view
    for ctx in NETS:  # status only reads
        assert {r["method"] for r in mesh.sandbox.requests(ctx)[before[ctx]:]} == {"GET"}

    table = mesh.run("describe")
    assert table.returncode == 0, table.stderr
    assert "healthy" in table.stdout and VERSION in table.stdout and "✓" in table.stdout, table.stdout
    # neither keys nor tokens reach any output
    key = (mesh.workdir / "certs" / "cluster1" / "ca-key.pem").read_text()
    for text in (table.stdout, table.stderr, json.dumps(doc)):
        assert "PRIVATE KEY" not in text and key.splitlines()[1] not in text
        assert not any(mesh.sandbox.token(ctx) in text for ctx in NETS)


def test_missing_remote_secret(mesh):
    mesh.kubectl("cluster1", "delete", "secret", "istio-remote-secret-cluster3", "-n", "istio-system")
    code, doc = mesh.status()
    assert code == 1
    _unhealthy_only(doc, "cluster1", "remote_secret_missing")
    assert _cluster(doc, "cluster1")["remote_secrets"] == {"cluster2": "present", "cluster3": "missing"}
    problem = _problems(doc, "cluster1")["remote_secret_missing"]
    assert "cluster3" in problem["message"] and problem["hint"].startswith(f"{SCRIPT} apply --workdir ")
    table = mesh.run("status")
    assert table.returncode == 1
    assert "✗ cluster1: no remote secret of cluster3" in table.stdout and f"hint: {SCRIPT} apply" in table.stdout
    assert "remote_secret_missing" not in table.stdout, "codes are for -o json"
    matrix = table.stdout.split("remote secrets")[1]
    assert "missing" in matrix.splitlines()[4]  # row cluster1 (after title and header lines)
    _repaired_by_apply(mesh)


def test_stale_secret_of_a_cluster_not_in_the_topology(mesh):
    stale = {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
             "metadata": {"name": "istio-remote-secret-old-cluster", "namespace": "istio-system",
                          "labels": {"istio/multiCluster": "true"},
                          "annotations": {"networking.istio.io/cluster": "old-cluster"}},
             "stringData": {"old-cluster": yaml.safe_dump({"apiVersion": "v1", "kind": "Config", "clusters": [
                 {"name": "old-cluster", "cluster": {"server": "https://old.mesh.test:6443"}}]})}}
    mesh.kubectl("cluster2", "apply", "-f", "-", stdin=json.dumps(stale))
    code, doc = mesh.status()
    assert code == 1
    _unhealthy_only(doc, "cluster2", "remote_secret_stale")
    c2 = _cluster(doc, "cluster2")
    assert c2["remote_secrets"]["old-cluster"] == "stale"
    assert c2["stale_secrets"] == ["istio-remote-secret-old-cluster"]
    assert "prunes it" in _problems(doc, "cluster2")["remote_secret_stale"]["hint"]
    _repaired_by_apply(mesh)


def test_remote_secret_naming_a_loopback_server(mesh):
    # As if made by hand with `istioctl create-remote-secret` from a kubeconfig naming 127.0.0.1.
    secret = json.loads(mesh.kubectl("cluster1", "get", "secret", "istio-remote-secret-cluster2", "-n", "istio-system",
                                     "-o", "json"))
    (key, value), = secret["data"].items()
    config = yaml.safe_load(base64.b64decode(value))
    config["clusters"][0]["cluster"]["server"] = "https://127.0.0.1:6443"
    secret["data"][key] = base64.b64encode(yaml.safe_dump(config).encode()).decode()
    meta = secret["metadata"]
    secret["metadata"] = {"name": meta["name"], "namespace": meta["namespace"], "labels": meta["labels"],
                          "annotations": {"networking.istio.io/cluster": "cluster2"}}
    mesh.kubectl("cluster1", "replace", "-f", "-", stdin=json.dumps(secret))

    code, doc = mesh.status()
    assert code == 1
    _unhealthy_only(doc, "cluster1", "remote_secret_local")
    assert _cluster(doc, "cluster1")["remote_secrets"]["cluster2"] == "local"
    # topology.yaml gives cluster2 a reachable api_server: apply alone replaces the secret
    assert f"replaces it with one naming {mesh.sandbox.api_server('cluster2')}" in \
        _problems(doc, "cluster1")["remote_secret_local"]["hint"]
    # without one, the field to set is named
    topology = (mesh.workdir / "topology.yaml").read_text()
    mesh.write_topology({ctx: mesh.sandbox.api_server(ctx) for ctx in NETS if ctx != "cluster2"})
    try:
        code, doc = mesh.status()
        hint = _problems(doc, "cluster1")["remote_secret_local"]["hint"]
        assert hint.startswith("set api_server: for cluster2 in ") and f"then {SCRIPT} apply" in hint
    finally:
        (mesh.workdir / "topology.yaml").write_text(topology)
    _repaired_by_apply(mesh)


def _foreign_cacerts(mesh: Mesh, where: Path) -> Path:
    """cluster2's cacerts files made from another root, with the release's own Makefile."""
    return make_other_ca(mesh.sandbox.istio_dir / "tools" / "certs" / "Makefile.selfsigned.mk", where, "cluster2")


def test_cacerts_from_another_root(mesh, tmp_path):
    foreign = _foreign_cacerts(mesh, tmp_path / "other-root")
    files = [f"--from-file={name}={foreign / name}" for name in ("ca-cert.pem", "ca-key.pem", "root-cert.pem", "cert-chain.pem")]
    manifest = mesh.kubectl("cluster2", "create", "secret", "generic", "cacerts", "-n", "istio-system", *files,
                            "--dry-run=client", "-o", "json")
    mesh.kubectl("cluster2", "replace", "-f", "-", stdin=manifest)

    code, doc = mesh.status()
    assert code == 1
    _unhealthy_only(doc, "cluster2", "cacerts_foreign_root")
    cacerts = _cluster(doc, "cluster2")["cacerts"]
    assert cacerts["present"] is True and cacerts["chains_to_root"] is False
    assert cacerts["root_fingerprint"] != doc["root_fingerprint"]
    # certs/cluster2 in the workdir is this root's: apply puts it back, when told to replace another root
    assert _problems(doc, "cluster2")["cacerts_foreign_root"]["hint"].startswith(f"{SCRIPT} apply --replace-foreign-ca")
    assert "mTLS between workloads breaks until they restart" in _problems(doc, "cluster2")["cacerts_foreign_root"]["hint"]

    # when the workdir's own intermediate is the foreign one, it must be re-issued first
    local = mesh.workdir / "certs" / "cluster2"
    for path in foreign.iterdir():
        (local / path.name).write_bytes(path.read_bytes())
    code, doc = mesh.status()
    hint = _problems(doc, "cluster2")["cacerts_foreign_root"]["hint"]
    assert hint == (f"`rm -r {local}`, then {SCRIPT} apply --replace-foreign-ca --workdir {mesh.workdir} "
                    "(re-issues the intermediate CA from this workspace's root; it replaces that cacerts at once: "
                    "mTLS between workloads breaks until they restart)")
    # apply would install (here: keep) an intermediate other clusters do not trust: refused, with the same repair.
    dumps = {ctx: mesh.sandbox.dump(ctx) for ctx in mesh.sandbox.contexts}
    refused = mesh.apply("--replace-foreign-ca", ok=False)
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert refused.stderr.startswith(f"error: the intermediate CA in {local} was not issued by this workspace's root "
                                     f"CA ({mesh.workdir / 'certs' / 'root-cert.pem'}): the other clusters would not "
                                     f"trust the workloads of cluster2\nhint: `rm -r {local}`, then run apply again"), \
        refused.stderr
    assert {ctx: mesh.sandbox.dump(ctx) for ctx in mesh.sandbox.contexts} == dumps, "refused before any change"
    subprocess.run(["rm", "-r", str(local)], check=True)  # following the hint
    assert mesh.apply(ok=False).returncode == 2, "apply alone refuses to replace a cacerts under another root"
    mesh.apply("--replace-foreign-ca")
    code, doc = mesh.status()
    assert code == 0 and doc["healthy"], [(c["context"], c["problems"]) for c in doc["clusters"]]

    # A ca-key.pem that is not its certificate's key (another cluster's, here): istiod would not start on it.
    key = local / "ca-key.pem"
    mine = key.read_bytes()
    key.write_bytes((mesh.workdir / "certs" / "cluster1" / "ca-key.pem").read_bytes())
    dumps = {ctx: mesh.sandbox.dump(ctx) for ctx in mesh.sandbox.contexts}
    for args in (("--dry-run",), ()):
        refused = mesh.apply(*args, ok=False)
        assert refused.returncode == 2, refused.stdout + refused.stderr
        assert refused.stderr.startswith(f"error: {key} is not the key of the intermediate CA beside it (ca-cert.pem): "
                                         f"istiod would not start on that cacerts (\"failed to create an istiod CA\")\n"
                                         f"hint: `rm -r {local}`, then run apply again"), refused.stderr
        assert "put back the ca-key.pem made with it" in refused.stderr
    assert {ctx: mesh.sandbox.dump(ctx) for ctx in mesh.sandbox.contexts} == dumps, "refused before any change"
    code, doc = mesh.status()  # status says what apply refuses, before it is run
    assert code == 1 and [p["code"] for p in doc["problems"]] == ["intermediate_key_mismatch"]
    assert doc["problems"][0]["hint"].startswith(f"`rm -r {local}`, then {SCRIPT} apply")
    assert all(not c["problems"] for c in doc["clusters"]), "the clusters run on the key they hold"
    key.write_bytes(mine)
    assert mesh.apply().returncode == 0


def test_network_label_missing_then_wrong(mesh):
    for change, label, code_expected in (("topology.istio.io/network-", None, "network_label_missing"),
                                         ("topology.istio.io/network=network9", "network9", "network_label_wrong")):
        mesh.kubectl("cluster3", "label", "namespace", "istio-system", change, "--overwrite")
        code, doc = mesh.status()
        assert code == 1
        _unhealthy_only(doc, "cluster3", code_expected)
        assert _cluster(doc, "cluster3")["network_label"] == label
        assert _problems(doc, "cluster3")[code_expected]["hint"].startswith(f"{SCRIPT} apply")
    _repaired_by_apply(mesh)


def test_gateway_without_address(mesh):
    # A LoadBalancer that gives no address looks the same: the service exists, its status names none.
    patch = lambda kind: mesh.kubectl("cluster1", "patch", "service", "istio-eastwestgateway", "-n", "istio-system",
                                      "-p", json.dumps({"spec": {"type": kind}}))
    patch("NodePort")
    try:
        code, doc = mesh.status()
        assert code == 1
        _unhealthy_only(doc, "cluster1", "gateway_pending")
        assert _cluster(doc, "cluster1")["gateway"] == {"required": True, "address": None}
        hint = _problems(doc, "cluster1")["gateway_pending"]["hint"]
        assert "kubectl --context cluster1 get service istio-eastwestgateway -n istio-system" in hint
    finally:
        patch("LoadBalancer")
    # The emulated LoadBalancer gives the address back after its delay, as a cloud's does: status once it has.
    from tests.test_standin_istioctl import wait_for

    assert wait_for(lambda: ((mesh.get("cluster1", "service", "istio-eastwestgateway", "-n", "istio-system")
                              .get("status") or {}).get("loadBalancer") or {}).get("ingress"))
    code, doc = mesh.status()
    assert code == 0 and _cluster(doc, "cluster1")["gateway"]["address"]


def test_drift_after_editing_base_yaml(mesh):
    base = mesh.workdir / "base.yaml"
    original = base.read_text()
    base.write_text(original + "    accessLogEncoding: JSON\n")  # under meshConfig
    try:
        code, doc = mesh.status()
        assert code == 1
        for ctx in NETS:
            c = _cluster(doc, ctx)
            assert c["drift"] is True and [p["code"] for p in c["problems"]] == ["drift"]
            assert "apply --dry-run" in c["problems"][0]["hint"]
    finally:
        base.write_text(original)
    code, doc = mesh.status()
    assert code == 0 and all(c["drift"] is False for c in doc["clusters"])


def test_wait_returns_once_the_mesh_is_healthy_again(mesh):
    mesh.kubectl("cluster2", "label", "namespace", "istio-system", "topology.istio.io/network-")
    # A wait timeout far beyond the test's own: only a return on health ends it with exit 0 in time.
    proc = subprocess.Popen([sys.executable, str(ROOT / "setup_mesh.py"), "status", "--wait", "--wait-timeout", "900",
                             "-o", "json", "--workdir", str(mesh.workdir)], env=mesh.sandbox.env, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(1.5)
        assert proc.poll() is None, "status --wait returned while the mesh was unhealthy"
        mesh.kubectl("cluster2", "label", "namespace", "istio-system", "topology.istio.io/network=network1")
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    # Exit 0 and healthy: it returned once the label was back, not at --wait-timeout (that exits 1). No
    # bound on the elapsed time: on a loaded machine a poll can take seconds.
    assert proc.returncode == 0, err
    assert json.loads(out)["healthy"] is True


def test_istiod_reports_a_timeout_for_a_peer_whose_secret_names_an_unreachable_address(mesh):
    # topology.yaml names an address for cluster3 that no other cluster reaches; apply puts it in the secrets
    unreachable = "https://cluster3.unreachable.test:6443"
    mesh.write_topology({ctx: unreachable if ctx == "cluster3" else mesh.sandbox.api_server(ctx) for ctx in NETS})
    try:
        mesh.apply()
        code, doc = mesh.status()
        assert code == 1
        for ctx in ("cluster1", "cluster2"):
            c = _cluster(doc, ctx)
            assert c["remote_secrets"]["cluster3"] == "present"
            assert c["remote_clusters"] == {**{p: "synced" for p in NETS if p not in (ctx, "cluster3")},
                                            "cluster3": "timeout"}
            problem = _problems(doc, ctx)["remote_cluster_timeout"]
            assert "cluster3" in problem["message"] and unreachable in problem["hint"]
            assert f"kubectl --context {ctx} logs -n istio-system deploy/istiod" in problem["hint"]
        assert _problems(doc, "cluster3") == {}
        table = mesh.run("status")
        assert table.returncode == 1
        assert "✗ cluster1, cluster2 (about cluster3): istiod cannot reach the API servers of cluster3" in table.stdout
        assert "timeout" in table.stdout.split("remote secrets")[1]
    finally:
        mesh.write_topology({ctx: mesh.sandbox.api_server(ctx) for ctx in NETS})
    _repaired_by_apply(mesh)


def test_remote_secret_with_outdated_credentials(mesh):
    # cluster2's reader token changes (as after a reinstall): the copies its peers hold no longer work.
    token_secret = "istio-reader-service-account-istio-remote-secret-token"
    mesh.kubectl("cluster2", "delete", "secret", "-n", "istio-system", token_secret)
    mesh.kubectl("cluster2", "apply", "-f", "-", stdin=(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: " + token_secret + "\n  namespace: istio-system\n"
        "  annotations:\n    kubernetes.io/service-account.name: istio-reader-service-account\n"
        "type: kubernetes.io/service-account-token\n"))
    code, doc = mesh.status()
    assert code == 1 and not doc["healthy"]
    for ctx in ("cluster1", "cluster3"):
        assert _cluster(doc, ctx)["remote_secrets"]["cluster2"] == "outdated"
        assert set(_problems(doc, ctx)) == {"remote_secret_outdated"}
    assert _problems(doc, "cluster2") == {}
    _repaired_by_apply(mesh)


def test_unreachable_cluster_is_reported_and_the_rest_still_read(mesh):
    mesh.sandbox.stop_cluster("cluster3")
    code, doc = mesh.status()
    assert code == 1
    c3 = _cluster(doc, "cluster3")
    assert c3["reachable"] is False and c3["error"]
    assert c3["istio"] == {"installed": None, "version": None, "ready": None} and c3["drift"] is None
    assert c3["remote_secrets"] == {} and c3["remote_clusters"] is None and set(c3) == CLUSTER_FIELDS
    problem = _problems(doc, "cluster3")["unreachable"]
    assert "kubectl --context cluster3 get namespace istio-system" in problem["hint"]
    for ctx in ("cluster1", "cluster2"):
        assert _cluster(doc, ctx)["reachable"] and _cluster(doc, ctx)["problems"] == []
        # istiod cannot reach it either; the cause is named once, on cluster3
        assert _cluster(doc, ctx)["remote_clusters"]["cluster3"] == "timeout"
    table = mesh.run("status")
    assert table.returncode == 1 and "✗ cluster3: cannot read the cluster" in table.stdout

    started = time.monotonic()
    result = mesh.run("status", "--wait", "--wait-timeout", "3")
    elapsed = time.monotonic() - started
    assert result.returncode == 1
    assert 3 <= elapsed < 60, elapsed  # gave up near its 3 s, far from the default wait (300 s)
    assert "still unhealthy after 3s" in result.stderr and "cluster3: unreachable" in result.stderr



def test_a_problem_every_pair_shares_is_one_entry_with_one_hint():
    from lib.statusreport import ClusterStatus, MeshStatus, Problem
    from lib.statusview import group_problems

    names = ["c1", "c2", "c3", "c4"]
    clusters = []
    for holder in names:
        c = ClusterStatus(Cluster(holder, "n1", holder), reachable=True)
        c.problems = [Problem("remote_cluster_timeout", f"istiod reports remote cluster {peer} as timeout",
                              f"check that {holder} reaches {peer}", peer=peer) for peer in names if peer != holder]
        clusters.append(c)
    causes = group_problems(MeshStatus("m", None, clusters))
    assert len(causes) == 1
    assert causes[0].where == "every cluster, for each of its 3 peers"
    assert causes[0].message == "istiod cannot reach the API servers of c1, c2, c3, c4 at the addresses in their secrets"
    assert causes[0].hint == "for c1 and c2, and likewise for the others: check that c1 reaches c2"
    # Only some pairs: each holder is named with its peers.
    clusters[0].problems, clusters[1].problems = [], clusters[1].problems[:1]
    causes = group_problems(MeshStatus("m", None, clusters))
    assert causes[0].where == "c2 (c1); c3 (c1, c2, c4); c4 (c1, c2, c3)"


# --- the CAs over time: the root's expiry, a move to a new root --------------------------

def test_the_roots_days_left_warn_under_30_and_fail_once_expired(tmp_path):
    topology = _topology(tmp_path)
    for days, code, healthy in ((400, None, True), (10, "root_ca_expiring", True), (-1, "root_ca_expired", False)):
        root = _ca("Root CA", days=days)
        observed, istiod = _healthy(topology, root)
        status = evaluate(_ws(tmp_path, topology, root), observed, istiod, now=NOW)
        assert [p.code for p in status.problems] == ([code] if code else [])
        assert status.healthy is healthy
        assert status.to_json()["root"]["days_left"] == days
        if code:
            assert "rotate-certs --root" in status.problems[0].hint
        text = _rendered(status)
        assert f"root CA: {days}d left" in text


def _rendered(status) -> str:
    out = io.StringIO()
    render(status, Reporter(console=Console(file=out, width=200), err_console=Console(file=io.StringIO())))
    return out.getvalue()


def _mid_transition(tmp_path, roots, stage: int):
    """A mesh at ``stage`` of the move from roots[0] to roots[1], every cluster in step."""
    from lib import carotation, names

    old, new = roots
    topology = _topology(tmp_path)
    observed, istiod = _healthy(topology, old)
    transition = carotation.Transition(stage, "old", certs_fp(new[0]), "2029-12-30T00:00:00Z")
    since = "2029-12-31T12:00:00Z"
    expected = {}
    for c in topology.clusters:
        files = _cacerts(old if stage == 1 else new)
        files["root-cert.pem"] = carotation.stage_roots(stage, _pem(old[0]), _pem(new[0]))
        expected[c.name] = files
        observed[c.context].cacerts = dict(files)
        observed[c.context].annotations = {names.TRANSITION_ANNOTATION: transition.annotation(since)}
    ws = _ws(tmp_path, topology, old)
    ws.transition, ws.new_root_pem, ws.expected = transition, _pem(new[0]), expected
    return ws, observed, istiod


def certs_fp(cert) -> str:
    return cert.fingerprint(hashes.SHA256()).hex()


def test_a_mesh_in_step_mid_transition_is_healthy_and_says_what_comes_next(tmp_path, roots):
    ws, observed, istiod = _mid_transition(tmp_path, roots, 2)
    status = evaluate(ws, observed, istiod, now=NOW)
    assert status.healthy, [(c.cluster.context, c.problems) for c in status.clusters]
    doc = status.to_json()
    assert doc["transition"]["stage"] == 2 and doc["transition"]["in_step"] is True
    assert doc["transition"]["since"] == "2029-12-31T12:00:00Z"
    assert "rotate-certs --root" in doc["transition"]["next"] and "from 2030-01-01T12:00:00Z" in doc["transition"]["next"]
    assert doc["root"]["new_root"]["fingerprint"] == certs_fp(roots[1][0])
    for c in doc["clusters"]:
        assert (c["cacerts"]["chains_to"], c["cacerts"]["roots_trusted"], c["cacerts"]["transition_stage"]) == ("new", 2, 2)
        assert c["cacerts"]["chains_to_root"] is True
    text = _rendered(status)
    assert "root transition: stage 2 of 3" in text and "in place in every cluster since 2029-12-31T12:00:00Z" in text
    assert "3650d, new root, 2 roots" in text and "healthy" in text


def _istiod_env(observed, ctx, **env):
    observed[ctx].deployments["istiod"] = {"spec": {"template": {"spec": {"containers": [
        {"name": "discovery", "env": [{"name": k, "value": v} for k, v in env.items()]}]}}}}


def test_status_says_when_istiod_did_not_take_the_stage_and_why(tmp_path, roots):
    from lib import carotation

    old, new = (_pem(r[0]) for r in roots)
    ws, observed, istiod = _mid_transition(tmp_path, roots, 2)
    stage1, stage2 = carotation.stage_roots(1, old, new), carotation.stage_roots(2, old, new)
    for ctx in observed:
        _istiod_env(observed, ctx, ISTIO_MULTIROOT_MESH="true")
    taken = {ctx: stage2 for ctx in observed}
    status = evaluate(ws, observed, istiod, now=NOW, published=taken)
    assert status.healthy and {c["cacerts"]["istiod_took"] for c in status.to_json()["clusters"]} == {True}

    # c2's cacerts holds stage 2's roots in another order: istiod 1.29 kept stage 1's
    observed["c2"].cacerts["root-cert.pem"] = new + old
    ws.expected["c2"] = dict(observed["c2"].cacerts)
    status = evaluate(ws, observed, istiod, now=NOW, published={**taken, "c2": stage1})
    assert _codes(status, "c2") == ["istiod_roots_not_taken"] and _codes(status, "c1") == []
    problem = status.clusters[1].problems[0]
    assert "stage 2 of the move" in problem.message and "another order" in problem.message
    assert "Updating new ROOT-CA not supported" in problem.message
    assert problem.hint.startswith("`kubectl --context c2 rollout restart deployment/istiod -n istio-system`")
    assert status.to_json()["clusters"][1]["cacerts"]["istiod_took"] is False

    # What c2's istiod publishes could not be read: not known, said so, and never counted as taken.
    unread = {ctx: roots for ctx, roots in taken.items() if ctx != "c2"}
    status = evaluate(ws, observed, istiod, now=NOW, published=unread, roots_unread=frozenset({"c2"}))
    assert _codes(status, "c2") == ["istiod_roots_unread"] and _codes(status, "c1") == []
    assert status.clusters[1].problems[0].severity == "warning"
    assert status.clusters[1].problems[0].hint.startswith(
        "check access with `kubectl --context c2 get configmap istio-ca-root-cert -n istio-system`")
    assert status.to_json()["clusters"][1]["cacerts"]["istiod_took"] is None

    # without the multi-root switch istiod keeps the roots it started with, whatever the order
    _istiod_env(observed, "c2")
    status = evaluate(ws, observed, istiod, now=NOW, published={**taken, "c2": stage1})
    assert "without ISTIO_MULTIROOT_MESH=true" in status.clusters[1].problems[0].message
    # a root of its own (it started before cacerts existed)
    status = evaluate(ws, observed, istiod, now=NOW, published={**taken, "c2": _pem(_ca("cluster.local")[0])})
    assert "a root that is not in cacerts" in status.clusters[1].problems[0].message
    # nothing published (yet), or not read: not judged
    assert _codes(evaluate(ws, observed, istiod, now=NOW, published={**taken, "c2": None}), "c2") == []
    assert _codes(evaluate(ws, observed, istiod, now=NOW, published={}), "c2") == []


def test_a_cluster_behind_the_stage_is_named_with_the_command_that_brings_it_there(tmp_path, roots):
    from lib import carotation

    ws, observed, istiod = _mid_transition(tmp_path, roots, 2)
    old, new = roots
    behind = _cacerts(old)  # still stage 1: the old intermediate, both roots
    behind["root-cert.pem"] = carotation.stage_roots(1, _pem(old[0]), _pem(new[0]))
    observed["c2"].cacerts = behind
    status = evaluate(ws, observed, istiod, now=NOW)
    assert _codes(status, "c2") == ["root_transition_behind"] and _codes(status, "c1") == []
    assert not status.healthy
    problem = status.clusters[1].problems[0]
    assert "stage 2" in problem.message and "rotate-certs --root" in problem.hint
    doc = status.to_json()
    assert doc["transition"]["in_step"] is False and doc["transition"]["since"] is None
    assert "brings every cluster to stage 2" in doc["transition"]["next"]
    assert doc["clusters"][1]["cacerts"]["chains_to"] == "current"
    assert doc["clusters"][1]["cacerts"]["transition_stage"] is None
    # c2 added mid-move, not applied yet: a stage run leaves it to apply, and so the next step is apply.
    observed["c2"].applied, observed["c2"].cacerts = None, None
    following = evaluate(ws, observed, istiod, now=NOW).to_json()["transition"]["next"]
    assert following.endswith("apply (sets up c2 with the certificates of stage 2)"), following


def test_an_intermediate_expiring_mid_transition_points_to_the_move(tmp_path, roots):
    ws, observed, istiod = _mid_transition(tmp_path, roots, 1)
    old, new = roots
    soon = _cacerts(old, days=10)
    soon["root-cert.pem"] = observed["c1"].cacerts["root-cert.pem"]
    observed["c1"].cacerts = soon
    ws.expected["c1"] = dict(soon)
    status = evaluate(ws, observed, istiod, now=NOW)
    assert _codes(status, "c1") == ["cacerts_expiring"]
    hint = status.clusters[0].problems[0].hint
    assert "rotate-certs --root" in hint and "--context" not in hint, "rotate-certs alone is refused mid-transition"
