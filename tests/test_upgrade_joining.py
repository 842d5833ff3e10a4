"""A remote added after its primary's canary upgrade (lib/upgradeplan.py, lib/installsteps.py): it joins at the
revision its primary runs, through apply's ordinary install, and gets the default tag; what still cannot
work (a primary in the middle of an upgrade) is refused before any cluster is touched."""
from __future__ import annotations

import yaml

from lib.config import Cluster, Topology
from lib.desired import desired_state
from lib.kube import Observed, Tools
from lib.plan import build_apply_plan
from lib.secretsteps import EXPORT_KEY, IMPORT_KEY
from lib.upgrade import ClusterRevisions
from lib.upgradeplan import install_revisions, joining_refusal, joining_revisions

OLD, NEW, REV = "1.30.3", "1.31.0", "1-31-0"
ADDRESS = "192.0.2.10"
BASE = {"apiVersion": "install.istio.io/v1alpha1", "kind": "IstioOperator", "spec": {}}
# p1 runs 1.31.0 as revision 1-31-0 alone since its upgrade; r1 is its remote that moved with it.
UPGRADED = ClusterRevisions("p1", installed={REV: NEW}, default_tag=REV, proxies={REV: {"istio-system": 1}},
                            gateway_revision=REV, serves_remotes=True)
MOVED = ClusterRevisions("r1", installed={REV: NEW}, default_tag=REV, proxies={REV: {"app": 1}}, primary="p1")
PINNED = {"p1": NEW, "r1": NEW, "r2": NEW}


def _topology(tmp_path, r2_network="n3", mesh_version=NEW):
    return Topology(path=tmp_path / "topology.yaml", mesh_id="m", istio_version=mesh_version, clusters=(
        Cluster("p1", "n1", "p1", server="https://p1:6443", istio_version=NEW),
        Cluster("r1", "n1", "r1", server="https://r1:6443", primary="p1", istio_version=NEW),
        Cluster("r2", r2_network, "r2", server="https://r2:6443", primary="p1")))


def _observed(installed=("p1", "r1")):
    """p1 and r1 installed (what they applied is not compared here); r2 reachable and empty."""
    return {ctx: Observed(reachable=True, namespace=ctx in installed, applied="x" if ctx in installed else None)
            for ctx in ("p1", "r1", "r2")}


def test_a_new_remote_of_an_upgraded_primary_joins_at_its_revision_the_others_keep_theirs(tmp_path):
    topology, observed = _topology(tmp_path), _observed()
    assert joining_revisions(topology, [UPGRADED, MOVED], observed) == {"r2": REV}
    assert install_revisions(topology, [UPGRADED, MOVED], observed) == {"p1": REV, "r1": REV, "r2": REV}
    # A primary on the default revision: a new remote's ordinary install is the default revision's.
    plain = ClusterRevisions("p1", installed={"default": OLD}, default_tag=None, serves_remotes=True)
    assert joining_revisions(topology, [plain], observed) == {}
    # An installed remote that is not read as one (no labelled injector) is not installed again as joining.
    assert joining_revisions(topology, [UPGRADED], observed) == {"r2": REV}, "r1 holds an install: not r1"
    assert joining_revisions(topology, [UPGRADED], {**observed, "r2": None}) == {}, "unreadable: sits out"


def _joining_plan(tmp_path, r2_network="n3"):
    topology = _topology(tmp_path, r2_network)
    desired = desired_state(topology, BASE, {"p1": ADDRESS})
    observed = _observed()
    for ctx in ("p1", "r1"):
        observed[ctx] = Observed(reachable=True, namespace=True, network_label="n1", applied=desired[ctx].fingerprint,
                                 eastwest_exists=True, eastwest_made_by="operator", eastwest_address=ADDRESS)
    (tmp_path / "certs" / "r2").mkdir(parents=True)
    for name in ("ca-cert.pem", "ca-key.pem", "root-cert.pem", "cert-chain.pem"):
        (tmp_path / "certs" / "r2" / name).write_text(name)
    plan = build_apply_plan(topology=topology, desired=desired, observed=observed, removed=[], removed_observed={},
                            workdir=tmp_path, tools=Tools(), release=None, intermediate_vars={}, gateway_timeout=5,
                            revisions=install_revisions(topology, [UPGRADED, MOVED], observed))
    return plan.phases[0].steps["r2"]


def _argvs(step):
    return [" ".join(c.argv) for c in step.commands]


def test_the_joining_remote_installs_the_remote_profile_at_the_revision_then_sets_the_default_tag(tmp_path):
    steps = _joining_plan(tmp_path)
    titles, keys = [s.title for s in steps], [s.key for s in steps]
    install = steps[titles.index("install Istio")]
    (argv,) = _argvs(install)
    assert argv.startswith(f"istioctl install -y -f {tmp_path}/overlays/r2.yaml --revision {REV} "), argv
    overlay = yaml.safe_load(install.files[0][1])
    assert overlay["spec"]["profile"] == "remote"
    assert overlay["spec"]["values"]["global"]["remotePilotAddress"] == ADDRESS
    assert install.change == f"+ Istio (overlays/r2.yaml) at revision {REV}"
    # Right after its install (the revision's injector exists), before the gateway and the record.
    tag = steps[titles.index(install.title) + 1]
    assert _argvs(tag) == [f"istioctl tag set default --revision {REV} --overwrite --context r2"]
    assert tag.change == f"+ default revision tag → {REV}"
    # On a network of its own: its gateway at the revision too, once p1 imported its secret.
    gateway = steps[titles.index("install east-west gateway")]
    assert f" --revision {REV} " in _argvs(gateway)[0]
    assert keys.index(EXPORT_KEY) < keys.index(gateway.key) < titles.index("record what was applied")
    assert ("p1", IMPORT_KEY) in [(a.cluster, a.key) for a in gateway.after]


def test_a_remote_on_its_primarys_network_joins_at_the_revision_without_a_gateway(tmp_path):
    steps = _joining_plan(tmp_path, r2_network="n1")
    titles = [s.title for s in steps]
    assert "install east-west gateway" not in titles
    assert titles[titles.index("install Istio") + 1] == f"point the default revision tag at {REV}"


def test_an_installed_cluster_at_its_revision_is_installed_again_without_touching_its_tag(tmp_path):
    # A change of base.yaml reinstalls a cluster that moved at its revision; its default tag is already there.
    from lib.installsteps import install_steps
    topology = _topology(tmp_path)
    d = desired_state(topology, BASE, {"p1": ADDRESS})["r1"]
    installed, _ = install_steps(Tools(), tmp_path, d, Observed(reachable=True, namespace=True, applied="old"),
                                 revision=REV)
    assert [s.title for s in installed] == ["install Istio"]
    assert f"--revision {REV}" in _argvs(installed[0])[0]


def test_a_primary_in_the_middle_of_an_upgrade_or_another_version_is_refused_before_anything_is_touched(tmp_path):
    topology, observed = _topology(tmp_path), _observed()
    assert joining_refusal(topology, [UPGRADED, MOVED], observed, PINNED) is None
    # p1 still holds the old revision (a remote's workload is on it): r2 would join a primary being moved.
    halfway = ClusterRevisions("p1", installed={"default": OLD, REV: NEW}, default_tag=REV, serves_remotes=True)
    refused = joining_refusal(topology, [halfway, MOVED], observed, PINNED)
    assert refused is not None and refused.exit_code == 2 and "no cluster was changed" in refused.message
    assert "r2: its primary p1 is in the middle of an upgrade (it runs 1-31-0 (1.31.0), default (1.30.3)" \
        in refused.message
    assert "finish that upgrade first" in refused.message
    assert joining_refusal(topology, [halfway, MOVED], observed, PINNED, only={"p1", "r1"}) is None, \
        "--context leaves the new remote out"
    # p1 moves on to another version in this run: its revision 1-31-0 is on its way out.
    moving = joining_refusal(topology, [UPGRADED, MOVED], observed, {**PINNED, "p1": "1.32.0", "r2": "1.32.0"})
    assert moving is not None and "p1 is in the middle of an upgrade" in moving.message
    # r2 pinned to another version than the one its primary's revision runs.
    other = joining_refusal(topology, [UPGRADED, MOVED], observed, {**PINNED, "r2": OLD})
    assert other is not None and f"r2: pinned to {OLD}, but it joins its primary p1's revision {REV}" in other.message
    assert f"pin r2 to {NEW}" in other.message
    # A staged move: the mesh's own istio_version, whose istioctl installs new clusters, is still the old one.
    staged = joining_refusal(_topology(tmp_path, mesh_version=OLD), [UPGRADED, MOVED], observed, PINNED)
    assert staged is not None and f"r2: the mesh is in a staged move (its istio_version is {OLD}" in staged.message


def _read_upgrade(tmp_path, monkeypatch, p1_read, only):
    """apply's read of the upgrade state, with each cluster's revisions as given (no cluster read)."""
    import lib.apply
    from lib.statusrevisions import Revisions

    read = {"p1": p1_read, "r1": Revisions(injectors={REV: NEW}, default_tag=REV), "r2": Revisions()}
    monkeypatch.setattr(lib.apply, "read_revisions", lambda members, *args: {c.context: read[c.context] for c in members})
    topology, observed = _topology(tmp_path), _observed()
    found = lib.apply._read_upgrade(topology, observed, Tools(), None, None, 1, only, ambient=False)
    return found and install_revisions(topology, found[0], observed)


def test_apply_installs_the_joining_remote_at_the_revision_also_when_context_names_it_alone(tmp_path, monkeypatch):
    import pytest

    from lib.errors import ConfigError
    from lib.statusrevisions import Revisions

    upgraded = Revisions(control_planes={REV: NEW}, injectors={REV: NEW}, default_tag=REV)
    assert _read_upgrade(tmp_path, monkeypatch, upgraded, only={"r2"}) == {"p1": REV, "r1": REV, "r2": REV}
    assert _read_upgrade(tmp_path, monkeypatch, upgraded, only=None)["r2"] == REV
    halfway = Revisions(control_planes={"default": OLD, REV: NEW}, injectors={"default": OLD, REV: NEW}, default_tag=REV)
    with pytest.raises(ConfigError, match="r2: its primary p1 is in the middle of an upgrade"):
        _read_upgrade(tmp_path, monkeypatch, halfway, only={"r2"})
    assert _read_upgrade(tmp_path, monkeypatch, halfway, only={"p1"}) is not None, "r2 sits this run out"
