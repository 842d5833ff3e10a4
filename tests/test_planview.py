"""How apply --dry-run reads: per cluster what changes, diff-like, and a counts line (exact output)."""
import io
from pathlib import Path

import yaml
from rich.console import Console

from lib.config import Cluster, Topology
from lib.kube import Observed, RemoteSecretInfo, Tools, token_fingerprint
from lib.istiousage import IstioUsage
from lib.desired import desired_state
from lib.plan import Removal, Uninstall, build_apply_plan
from lib.planview import print_plan
from lib.reporter import Reporter

FOUR = tuple(Cluster(f"cluster{i}", "network1" if i < 3 else "network2", f"cluster{i}",
                     server=f"https://cluster{i}.example:6443") for i in range(1, 5))
BASE = {"apiVersion": "install.istio.io/v1alpha1", "kind": "IstioOperator",
        "spec": {"profile": "default", "meshConfig": {"accessLogFile": "/dev/stdout"}}}


def _workspace(tmp_path: Path, clusters, base) -> Path:
    """certs/ for every cluster, and overlays/ as the last apply left them (built from ``base``)."""
    topology = Topology("mesh1", clusters, tmp_path / "topology.yaml")
    for c in clusters:
        d = tmp_path / "certs" / c.name
        d.mkdir(parents=True)
        for name in ("ca-cert.pem", "ca-key.pem", "root-cert.pem", "cert-chain.pem"):
            (d / name).write_text(f"{c.name}-{name}")
    (tmp_path / "overlays").mkdir()
    for ctx, d in desired_state(topology, base).items():
        (tmp_path / "overlays" / f"{ctx}.yaml").write_text(yaml.safe_dump(d.operator))
        if d.eastwest:
            (tmp_path / "overlays" / f"{ctx}-eastwest.yaml").write_text(yaml.safe_dump(d.eastwest))
    return tmp_path


def _applied(clusters, base, members=None):
    """Each cluster as apply left it with ``base``: installed, holding every member's current secret."""
    topology = Topology("mesh1", clusters, Path("topology.yaml"))
    desired = desired_state(topology, base)
    members = members or clusters
    observed = {}
    for c in clusters:
        peers = {p.name: RemoteSecretInfo(f"istio-remote-secret-{p.name}", p.name,
                                          token_fingerprint(p.name, p.remote_server, f"tok-{p.name}"), p.server,
                                          manifest={"kind": "Secret", "metadata": {"name": f"copy-of-{p.name}"}})
                 for p in members if p is not c}
        observed[c.context] = Observed(
            reachable=True, namespace=True, network_label=c.network, applied=desired[c.context].fingerprint,
            cacerts={name: f"{c.name}-{name}".encode() for name in ("ca-cert.pem", "cert-chain.pem", "root-cert.pem")},
            remote_secrets=peers,
            reader_token=f"tok-{c.name}", eastwest_exists=True, eastwest_address="198.51.100.1",
            eastwest_made_by="operator")
    return observed


def _render(tmp_path, clusters, base, observed, width, removed=(), verbose=False) -> str:
    topology = Topology("mesh1", clusters, tmp_path / "topology.yaml")
    # A removed cluster that was read and holds no one else's Istio objects is purged.
    uninstall = {gone.context: Uninstall(tmp_path, frozenset({"setup-mesh", "eastwest"}), IstioUsage())
                 for gone in removed}
    plan = build_apply_plan(topology=topology, desired=desired_state(topology, base), observed=observed,
                            removed=list(removed), removed_observed=observed, workdir=tmp_path, tools=Tools(),
                            release=None, intermediate_vars={}, gateway_timeout=5, uninstall=uninstall)
    out = io.StringIO()
    reporter = Reporter(console=Console(file=out, width=width), err_console=Console(file=io.StringIO()),
                        verbose=verbose)
    print_plan(plan, topology, observed, [], reporter)
    return out.getvalue().replace(str(tmp_path), "<ws>")


EDITED = """\
Plan (dry run, changes nothing): mesh mesh1, 4 clusters on network1, network2

cluster1 (network1, primary): change
  ~ Istio (overlays/cluster1.yaml)
      ~ spec.meshConfig.accessLogFile: /dev/stdout → /dev/null
      + spec.values.pilot.autoscaleMin: 2
  ~ east-west gateway (overlays/cluster1-eastwest.yaml): reinstalled as is
  ~ expose services (Gateway cross-network-gateway): applied again

cluster2 (network1, primary): change
  ~ Istio (overlays/cluster2.yaml)
      ~ spec.meshConfig.accessLogFile: /dev/stdout → /dev/null
      + spec.values.pilot.autoscaleMin: 2
  ~ east-west gateway (overlays/cluster2-eastwest.yaml): reinstalled as is
  ~ expose services (Gateway cross-network-gateway): applied again

cluster3 (network2, primary): change
  ~ Istio (overlays/cluster3.yaml)
      ~ spec.meshConfig.accessLogFile: /dev/stdout → /dev/null
      + spec.values.pilot.autoscaleMin: 2
  ~ east-west gateway (overlays/cluster3-eastwest.yaml): reinstalled as is
  ~ expose services (Gateway cross-network-gateway): applied again

cluster4 (network2, primary): change
  ~ Istio (overlays/cluster4.yaml)
      ~ spec.meshConfig.accessLogFile: /dev/stdout → /dev/null
      + spec.values.pilot.autoscaleMin: 2
  ~ east-west gateway (overlays/cluster4-eastwest.yaml): reinstalled as is
  ~ expose services (Gateway cross-network-gateway): applied again

Plan: 0 install, 4 change, 0 remove; secrets: 0 add, 0 replace, 0 prune.
Every command and manifest: setup-mesh apply --dry-run -v
"""


def test_an_edit_of_base_shows_the_changed_paths_with_old_and_new_values(tmp_path):
    _workspace(tmp_path, FOUR, BASE)
    edited = {**BASE, "spec": {"profile": "default", "meshConfig": {"accessLogFile": "/dev/null"},
                               "values": {"pilot": {"autoscaleMin": 2}}}}
    at_80 = _render(tmp_path, FOUR, edited, _applied(FOUR, BASE), 80)
    assert at_80 == EDITED
    assert max(map(len, at_80.splitlines())) <= 80
    at_160 = _render(tmp_path, FOUR, edited, _applied(FOUR, BASE), 160)
    assert at_160 == at_80


GROWN = """\
Plan (dry run, changes nothing): mesh mesh1, 4 clusters on network1, network2

cluster1 (network1, primary): change
  + remote secret of cluster4

cluster2 (network1, primary): change
  + remote secret of cluster4

cluster3 (network2, primary): change
  + remote secret of cluster4
  - stale remote secrets: istio-remote-secret-old

cluster4 (network2, primary): install
  + namespace istio-system (network network2) and secret cacerts
  + Istio (overlays/cluster4.yaml)
  + east-west gateway (overlays/cluster4-eastwest.yaml)
  + expose services (Gateway cross-network-gateway)
  + remote secrets of cluster1, cluster2, cluster3

gone: remove
  - Istio (istioctl uninstall --purge)
  - secret cacerts and 3 remote secrets
  - namespace istio-system

Plan: 1 install, 3 change, 1 remove; secrets: 6 add, 0 replace, 1 prune.
Every command and manifest: setup-mesh apply --dry-run -v
"""


def test_adding_and_removing_clusters_reads_as_secrets_added_pruned_and_a_cluster_removed(tmp_path):
    _workspace(tmp_path, FOUR, BASE)
    observed = _applied(FOUR, BASE, members=FOUR[:3])
    observed["cluster4"] = Observed(reachable=True)
    observed["cluster3"].remote_secrets["old"] = RemoteSecretInfo("istio-remote-secret-old", "old", None, None)
    observed["gone"] = Observed(reachable=True, namespace=True, remote_secrets={
        p.name: RemoteSecretInfo(f"istio-remote-secret-{p.name}", p.name, None, None) for p in FOUR[:3]})
    text = _render(tmp_path, FOUR, BASE, observed, 160, removed=[Removal("gone", "gone", None, False)])
    assert text == GROWN
    assert "token" not in text and "kind: Secret" not in text, "secrets are named, never shown"


def test_nothing_to_do_says_so_without_a_counts_line(tmp_path):
    _workspace(tmp_path, FOUR, BASE)
    text = _render(tmp_path, FOUR, BASE, _applied(FOUR, BASE), 80)
    assert text.splitlines()[-1] == "nothing to do: every cluster matches topology.yaml and base.yaml"
    assert "Plan:" not in text


def test_verbose_shows_every_command_and_the_new_overlay(tmp_path):
    _workspace(tmp_path, FOUR, BASE)
    edited = {**BASE, "spec": {"profile": "default", "meshConfig": {"accessLogFile": "/dev/null"}}}
    # Wide enough for the workspace's path, whose length depends on where pytest puts tmp_path (longer under -n).
    text = _render(tmp_path, FOUR, edited, _applied(FOUR, BASE), 160 + len(str(tmp_path)), verbose=True)
    assert "istioctl install -y -f <ws>/overlays/cluster1.yaml --readiness-timeout 190s --context cluster1" in text
    assert "accessLogFile: /dev/null" in text
    assert text.splitlines()[-1] == "Plan: 0 install, 4 change, 0 remove; secrets: 0 add, 0 replace, 0 prune."
