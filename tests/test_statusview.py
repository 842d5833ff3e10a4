"""status's table as a person reads it: exact output at 160 and 80 columns."""
import io

from rich.console import Console

from lib.config import Cluster
from lib.statusreport import Cacerts, ClusterStatus, MeshStatus, Problem
from lib.statusview import render


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
