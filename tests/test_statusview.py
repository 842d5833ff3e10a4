"""status's table as a person reads it: exact output at 160 and 80 columns."""
import io

import pytest
from rich.console import Console

from lib.config import Cluster
from lib.statusreport import Cacerts, ClusterStatus, MeshStatus, Problem
from lib.statusview import render
from tests.test_status import roots  # noqa: F401 - the fixture


def _ambient_mesh(ztunnel_ready: int = 1) -> MeshStatus:
    clusters = []
    for ctx, net, address in (("cluster1", "network1", "172.18.0.10"), ("cluster2", "network2", "172.18.0.20")):
        c = ClusterStatus(Cluster(ctx, net, ctx), reachable=True, istio_installed=True, istio_version="1.30.3",
                          network_label=net, cacerts=Cacerts(present=True, chains_to_root=True, days_left=3649),
                          gateway_required=True, gateway_exists=True, gateway_address=address, ambient=True,
                          gateway_programmed=True, gateway_api_crds="v1.5.1", ztunnel=(1, 1),
                          remote_secrets={"cluster2" if ctx == "cluster1" else "cluster1": "present"},
                          remote_clusters={"cluster2" if ctx == "cluster1" else "cluster1": "synced"}, drift=False)
        clusters.append(c)
    if ztunnel_ready < 1:
        clusters[1].ztunnel = (0, 1)
        clusters[1].problems.append(Problem("ztunnel_not_ready", "0 of 1 ztunnel pods are ready: workloads on the "
                                            "other nodes have no data plane", "look at its pods"))
    return MeshStatus("mesh1", None, clusters)


def _render(status: MeshStatus, width: int) -> list[str]:
    out = io.StringIO()
    render(status, Console(file=out, width=width, color_system=None, force_terminal=True))
    return [line.rstrip() for line in out.getvalue().splitlines()]


def test_an_ambient_mesh_shows_the_gateway_programmed_ztunnel_and_the_crd_version_at_160_columns():
    lines = _render(_ambient_mesh(), 160)
    header = next(line for line in lines if line.lstrip().startswith("cluster "))
    assert header.split() == ["cluster", "up", "istio", "network", "cacerts", "gateway", "ztunnel", "gateway",
                              "api", "secrets", "synced", "drift"]
    row = next(line for line in lines if line.lstrip().startswith("cluster2"))
    assert row.split() == ["cluster2", "yes", "1.30.3", "network2", "3649d", "172.18.0.20,", "programmed", "1/1",
                           "v1.5.1", "1/1", "1/1", "no"]
    assert lines[-1] == "healthy"


def test_a_ztunnel_not_ready_is_shown_and_named_and_80_columns_keep_every_line_inside():
    lines = _render(_ambient_mesh(ztunnel_ready=0), 80)
    assert all(len(line) <= 80 for line in lines), "\n".join(lines)
    row = next(line for line in lines if line.lstrip().startswith("cluster2"))
    assert "0/1" in row.split()
    assert "✗ cluster2: 0 of 1 ztunnel pods are ready: workloads on the other nodes have no" in lines
    assert lines[-1] == "unhealthy: 1 problem in 1 of 2 clusters"


def test_a_sidecar_mesh_has_no_ambient_columns():
    status = _ambient_mesh()
    for c in status.clusters:
        c.ambient, c.gateway_programmed, c.ztunnel, c.gateway_api_crds = False, None, None, None
    header = next(line for line in _render(status, 160) if line.lstrip().startswith("cluster "))
    assert "ztunnel" not in header and "gateway api" not in header


# --- cacerts under another root: one cause, in words that are true ------------------------------------

def _on_other_roots(tmp_path, roots, monkeypatch, foreign: tuple[str, ...]):
    """c1..c3 (networks n1, n1, n2) whose cacerts in ``foreign`` hold another root than the workspace's."""
    from lib import invocation
    from lib.statusjudge import evaluate
    from tests.test_status import NOW, _cacerts, _healthy, _topology, _ws

    monkeypatch.setattr(invocation, "_current", invocation.Invocation())  # hints as an installed setup-mesh names them
    root, other = roots
    topology = _topology(tmp_path)
    observed, istiod = _healthy(topology, root)
    for context in foreign:
        observed[context].cacerts = _cacerts(other)
    return evaluate(_ws(tmp_path, topology, root), observed, istiod, now=NOW)


MESH_ON_ANOTHER_ROOT_80 = [
    "root CA: 3650d left (expires 2039-12-30T00:00:00Z)",
    "✗ c1, c2, c3: secret cacerts chains to another root than this workspace's, the",
    "  same in every cluster: the mesh runs on a root this workspace does not hold",
    "  hint: run setup-mesh from the workspace that holds that root; or",
    "    setup-mesh rotate-certs --root (moves the mesh to this workspace's root",
    "    without downtime, when setup-mesh made that cacerts); or",
    "    setup-mesh apply --replace-foreign-ca (gives them intermediate CAs of this",
    "    workspace's root; it replaces their cacerts at once: mTLS between workloads",
    "    breaks until they restart)",
    "unhealthy: 1 problem in 3 of 3 clusters",
]
MESH_ON_ANOTHER_ROOT_160 = [
    "root CA: 3650d left (expires 2039-12-30T00:00:00Z)",
    "✗ c1, c2, c3: secret cacerts chains to another root than this workspace's, the same in every cluster: the mesh "
    "runs on a root this workspace does not hold",
    "  hint: run setup-mesh from the workspace that holds that root; or setup-mesh rotate-certs --root (moves the "
    "mesh to this workspace's root without downtime,",
    "    when setup-mesh made that cacerts); or setup-mesh apply --replace-foreign-ca (gives them intermediate CAs of "
    "this workspace's root; it replaces their",
    "    cacerts at once: mTLS between workloads breaks until they restart)",
    "unhealthy: 1 problem in 3 of 3 clusters",
]


@pytest.mark.parametrize("width,expected", [(80, MESH_ON_ANOTHER_ROOT_80), (160, MESH_ON_ANOTHER_ROOT_160)])
def test_a_mesh_wholly_on_another_root_is_one_cause_that_says_so(tmp_path, roots, monkeypatch, width, expected):
    status = _on_other_roots(tmp_path, roots, monkeypatch, ("c1", "c2", "c3"))
    lines = _render(status, width)
    assert all(len(line) <= width for line in lines), "\n".join(lines)
    assert sum("foreign" in line.split() for line in lines) == 3, "each cluster's row says foreign"
    assert lines[lines.index(expected[0]):] == expected, "\n".join(lines)
    assert not any("by the other clusters" in line for line in lines), "they all trust that root"


def test_clusters_on_another_root_next_to_one_on_the_workspaces_are_one_cause_naming_who_does_not_trust_them(
        tmp_path, roots, monkeypatch):
    status = _on_other_roots(tmp_path, roots, monkeypatch, ("c1", "c2"))
    lines = _render(status, 80)
    assert lines[lines.index("root CA: 3650d left (expires 2039-12-30T00:00:00Z)"):] == [
        "root CA: 3650d left (expires 2039-12-30T00:00:00Z)",
        "✗ c1, c2: secret cacerts chains to another root than this workspace's (its",
        "  root-cert.pem is another root): workloads here are not trusted by c3",
        "  hint: setup-mesh apply --replace-foreign-ca (gives them intermediate CAs of",
        "    this workspace's root; it replaces their cacerts at once: mTLS between",
        "    workloads breaks until they restart)",
        "unhealthy: 1 problem in 2 of 3 clusters",
    ], "\n".join(lines)
    # -o json keeps one problem per cluster, with the same words
    problems = [p for c in status.to_json()["clusters"] for p in c["problems"]]
    assert [p["code"] for p in problems] == ["cacerts_foreign_root"] * 2 and problems[0] == problems[1]
