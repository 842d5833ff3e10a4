"""A canary upgrade decided from what the clusters hold (lib/upgrade.py): what is left per cluster, so that a
run cut short is finished by the next, and the order clusters move in."""

from __future__ import annotations

from dataclasses import replace

from lib.upgrade import (EXPOSE, GATEWAY, INSTALL, REMOVE, RESTART, TAG, ClusterRevisions, describe, mesh_steps,
                         runnable_now, steps_left, waves)

OLD, NEW, REV = "1.30.3", "1.31.0", "1-31-0"


def kinds(steps):
    return [(s.kind, s.revision, s.later) for s in steps]


def untouched(ctx="c1", primary=None):
    """A cluster on the default (unrevisioned) 1.30.3 install, its gateway and one app on it."""
    return ClusterRevisions(ctx, installed={"default": OLD}, proxies={"default": {"istio-system": 1, "app": 2}},
                            gateway_revision="default", primary=primary)


def test_a_cluster_on_the_old_version_gets_every_step_and_keeps_the_old_revision_this_run():
    steps = steps_left(untouched(), NEW)
    assert kinds(steps) == [(INSTALL, REV, False), (GATEWAY, REV, False), (TAG, REV, False),
                            (RESTART, "default", False), (REMOVE, "default", True)]
    assert "app (2)" in steps[3].detail and "rollout restart" in steps[3].detail
    assert [s.kind for s in runnable_now(steps)] == [INSTALL, GATEWAY, TAG, RESTART]


def test_an_interrupted_run_is_finished_by_the_next_from_what_the_cluster_holds():
    # cut off after the install: the gateway and the tag are still to do, the install is not repeated
    halfway = ClusterRevisions("c1", installed={"default": OLD, REV: NEW},
                               proxies={"default": {"istio-system": 1, "app": 2}}, gateway_revision="default")
    assert [s.kind for s in runnable_now(steps_left(halfway, NEW))] == [GATEWAY, TAG, RESTART]
    # everything moved but the workloads: nothing but the reminder, the old revision stays
    moved = ClusterRevisions("c1", installed={"default": OLD, REV: NEW}, default_tag=REV,
                             proxies={"default": {"app": 2}, REV: {"istio-system": 1}}, gateway_revision=REV)
    assert kinds(steps_left(moved, NEW)) == [(RESTART, "default", False), (REMOVE, "default", True)]
    # the workloads restarted: the old revision goes; then nothing is left
    restarted = ClusterRevisions("c1", installed={"default": OLD, REV: NEW}, default_tag=REV,
                                 proxies={REV: {"istio-system": 1, "app": 2}}, gateway_revision=REV)
    assert kinds(steps_left(restarted, NEW)) == [(REMOVE, "default", False)]
    done = ClusterRevisions("c1", installed={REV: NEW}, default_tag=REV, proxies={REV: {"app": 2}},
                            gateway_revision=REV)
    assert steps_left(done, NEW) == []


def test_an_old_revision_is_kept_while_the_default_tag_or_the_gateway_still_names_it_even_with_no_proxy_on_it():
    # No proxy of the old revision is running (none was ever created, or all restarted already): the run that
    # moves the tag or the gateway still keeps the old revision, for a later run; pods the old tag admits
    # meanwhile would otherwise point at an istiod that is gone.
    tag_on_old = ClusterRevisions("c1", installed={"default": OLD, REV: NEW}, default_tag="default",
                                  proxies={REV: {"istio-system": 1}}, gateway_revision=REV)
    assert kinds(steps_left(tag_on_old, NEW)) == [(TAG, REV, False), (REMOVE, "default", True)]
    untagged = replace(tag_on_old, default_tag=None)  # the charts' default revision answers without a tag
    assert kinds(steps_left(untagged, NEW)) == [(TAG, REV, False), (REMOVE, "default", True)]
    gateway_on_old = ClusterRevisions("c1", installed={"default": OLD, REV: NEW}, default_tag=REV,
                                      proxies={REV: {"app": 1}}, gateway_revision="default")
    assert kinds(steps_left(gateway_on_old, NEW)) == [(GATEWAY, REV, False), (REMOVE, "default", True)]


def test_a_primary_keeps_the_revision_its_remotes_proxies_still_use():
    primary = ClusterRevisions("p1", installed={"default": OLD, REV: NEW}, default_tag=REV,
                               proxies={REV: {"istio-system": 1}}, gateway_revision=REV)
    remote = ClusterRevisions("r1", installed={"default": OLD, REV: NEW}, default_tag=REV,
                              proxies={"default": {"app": 1}}, gateway_revision=REV, primary="p1")
    steps = mesh_steps([primary, remote], {"p1": NEW, "r1": NEW})
    assert kinds(steps["p1"]) == [(REMOVE, "default", True)]
    assert steps_left(primary, NEW)[0].later is False  # alone it could go


def test_remotes_move_with_their_primary_and_primaries_one_at_a_time():
    states = [untouched("p1"), untouched("p2"), untouched("r1", primary="p2"), untouched("r2", primary="p1")]
    assert waves(states) == [["p1", "r2"], ["p2", "r1"]]
    assert waves(states, parallel=2) == [["p1", "r2", "p2", "r1"]]


def test_the_dry_run_shows_the_whole_upgrade():
    lines = describe([untouched("p1"), untouched("r1", primary="p1")], {"p1": NEW, "r1": NEW})
    assert lines[0] == "wave 1: p1, r1"
    assert "  p1: install the 1.31.0 control plane as revision 1-31-0 beside default" in lines
    assert "  r1: install the 1.31.0 remote install as revision 1-31-0 beside default" in lines
    assert any(line.startswith("  p1: remove revision default") and "a later run" in line for line in lines)


def test_a_revision_nothing_but_its_gateway_uses_goes_only_after_the_gateway_moved():
    no_apps = ClusterRevisions("c1", installed={"default": OLD}, proxies={"default": {"istio-system": 1}},
                               gateway_revision="default")
    assert kinds(steps_left(no_apps, NEW)) == [(INSTALL, REV, False), (GATEWAY, REV, False), (TAG, REV, False),
                                               (REMOVE, "default", True)]


def test_a_mesh_upgraded_by_revision_before_moves_its_tag_from_the_old_revision():
    earlier = ClusterRevisions("c1", installed={"1-30-3": OLD}, default_tag="1-30-3",
                               proxies={"1-30-3": {"istio-system": 1}}, gateway_revision="1-30-3")
    steps = steps_left(earlier, NEW)
    assert kinds(steps) == [(INSTALL, REV, False), (GATEWAY, REV, False), (TAG, REV, False), (REMOVE, "1-30-3", True)]
    assert steps[2].detail == "point the default revision tag at 1-31-0 (from 1-30-3)"


# --- from what status reads -------------------------------------------------------------------------------

def _read(planes=None, injectors=None, pods=(), kube="v1.33.4", tag=None):
    from lib.statusrevisions import Revisions
    seen = Revisions(control_planes=dict(planes or {}), injectors=dict(injectors or {}), default_tag=tag,
                     kubernetes=kube)
    for ns, rev, version in pods:
        seen.proxies[(rev, version)] = seen.proxies.get((rev, version), 0) + 1
        seen.namespaces.setdefault(rev, {})[ns] = seen.namespaces.get(rev, {}).get(ns, 0) + 1
    return seen


def _topology(tmp_path):
    from lib.config import Cluster, Topology
    return Topology(path=tmp_path / "topology.yaml", mesh_id="m",
                    clusters=(Cluster(context="p1", name="p1", network="n1"),
                              Cluster(context="r1", name="r1", network="n2", primary="p1")))


def test_preflight_refuses_a_skip_of_two_minors_for_a_primary_and_its_remote(tmp_path):
    from lib.upgrade import preflight, refusal_error
    seen = {"p1": _read({"default": "1.28.4"}), "r1": _read(injectors={"default": "1.28.4"})}
    refused = preflight(_topology(tmp_path), seen, {"p1": NEW, "r1": NEW})
    assert [(r.context, r.rule) for r in refused] == [("p1", "skew_skips_minor"), ("r1", "skew_skips_minor")]
    error = refusal_error(refused)
    assert error.exit_code == 2 and "no cluster was changed" in error.message
    assert "p1: moving Istio 1.28.4 -> 1.31.0" in error.message and "fix: pin istio_version" in error.message
    assert preflight(_topology(tmp_path), seen, {"p1": "1.30.3", "r1": "1.30.3"}) == []


def test_preflight_reads_downgrades_proxies_and_kubernetes(tmp_path):
    from lib.upgrade import preflight
    seen = {"p1": _read({"default": NEW}, pods=[("app", "default", NEW)], kube="v1.31.0"),
            "r1": _read(injectors={"default": NEW})}
    refused = preflight(_topology(tmp_path), seen, {"p1": OLD, "r1": OLD})
    assert [(r.context, r.rule) for r in refused] == [
        ("p1", "skew_downgrade"), ("p1", "skew_proxies_ahead"), ("p1", "skew_kubernetes_unsupported"),
        ("r1", "skew_downgrade")]


def test_cluster_revisions_take_the_gateways_revision_from_its_deployment():
    from lib.upgrade import cluster_revisions
    seen = _read({"default": OLD, REV: NEW}, injectors={"default": OLD}, pods=[("istio-system", "default", OLD)],
                 tag=REV)
    gateway = {"metadata": {"labels": {"istio.io/rev": REV}}}
    state = cluster_revisions("c1", None, seen, gateway)
    assert (state.installed, state.gateway_revision, state.default_tag) == ({"default": OLD, REV: NEW}, REV, REV)
    assert state.proxies == {"default": {"istio-system": 1}}
    assert cluster_revisions("c1", "p1", seen, {"metadata": {}}).installed == {"default": OLD}
    assert cluster_revisions("c1", "p1", seen, {"metadata": {}}).gateway_revision == "default"
    assert cluster_revisions("c1", None, seen, None).gateway_revision is None


def _upgrade_phase(tmp_path, states, parallel=1, restart_workloads=False, addresses=None, only=None):
    from pathlib import Path

    from lib.config import Cluster, Topology
    from lib.desired import desired_state
    from lib.kube import Tools
    from lib.release import Release
    from lib.upgradeplan import upgrade_phase

    clusters = tuple(Cluster(s.context, "n1", s.context, server=f"https://{s.context}:6443", primary=s.primary)
                     for s in states)
    base = {"apiVersion": "install.istio.io/v1alpha1", "kind": "IstioOperator", "spec": {}}
    desired = desired_state(Topology("m", clusters, tmp_path / "topology.yaml"), base, addresses)
    return upgrade_phase(states, {s.context: NEW for s in states}, desired, {NEW: Release(Path("/istio-1.31.0"))},
                         Tools(), tmp_path, parallel, restart_workloads, only)


def _argvs(step):
    return [" ".join(c.argv) for c in step.commands]


def test_restart_workloads_restarts_each_namespace_on_the_old_revision_after_the_tag_moved(tmp_path):
    state = ClusterRevisions("c1", installed={"default": OLD},
                             proxies={"default": {"istio-system": 1, "app": 2, "shop": 1}}, gateway_revision="default")
    steps = _upgrade_phase(tmp_path, [state], restart_workloads=True).steps["c1"]
    titles = [s.title for s in steps]
    tag = next(i for i, t in enumerate(titles) if "default tag" in t)
    restart = next(i for i, t in enumerate(titles) if t.startswith("restart the workloads"))
    assert restart > tag, "restarted before the tag moved, the pods would come back on the old revision"
    assert _argvs(steps[restart]) == ["kubectl --context c1 rollout restart deployment -n app",
                                      "kubectl --context c1 rollout restart deployment -n shop"]
    # Without the option the workloads are only listed: nothing is restarted.
    listed = _upgrade_phase(tmp_path, [state]).steps["c1"]
    assert not any("rollout" in argv for s in listed for argv in _argvs(s))
    assert any("workloads still on revision default: app (2), shop (1)" in s.title for s in listed)


def test_parallel_moves_that_many_primaries_at_a_time(tmp_path):
    states = [untouched("c1"), untouched("c2"), untouched("c3")]

    def waits_on(phase, ctx):
        return {after.cluster for after in phase.steps[ctx][0].after}

    one = _upgrade_phase(tmp_path, states)
    assert waits_on(one, "c1") == set() and waits_on(one, "c2") == {"c1"} and waits_on(one, "c3") == {"c2"}
    two = _upgrade_phase(tmp_path, states, parallel=2)
    assert waits_on(two, "c1") == set() and waits_on(two, "c2") == set() and waits_on(two, "c3") == {"c1", "c2"}


# --- a mesh with remotes --------------------------------------------------------------------------------

def test_a_primary_with_remotes_exposes_the_new_revisions_istiod_right_after_installing_it():
    primary = ClusterRevisions("p1", installed={"default": OLD}, proxies={"default": {"istio-system": 1}},
                               gateway_revision="default", serves_remotes=True)
    steps = steps_left(primary, NEW)
    assert kinds(steps) == [(INSTALL, REV, False), (EXPOSE, REV, False), (GATEWAY, REV, False), (TAG, REV, False),
                            (REMOVE, "default", True)]
    assert steps[-1].leftovers == (("virtualservices.networking.istio.io", "istiod-vs"),)
    assert steps[-1].detail.endswith("; kubectl delete virtualservices.networking.istio.io istiod-vs)")
    # Cut short after the install: the expose step comes again (first), until the primary is done.
    installed = replace(primary, installed={"default": OLD, REV: NEW})
    assert [s.kind for s in runnable_now(steps_left(installed, NEW))] == [EXPOSE, GATEWAY, TAG]
    done = ClusterRevisions("p1", installed={REV: NEW}, default_tag=REV, proxies={REV: {"istio-system": 1}},
                            gateway_revision=REV, serves_remotes=True)
    assert steps_left(done, NEW) == []
    # A primary without remotes exposes nothing.
    assert EXPOSE not in [s.kind for s in steps_left(replace(primary, serves_remotes=False), NEW)]


def _remote_states():
    primary = ClusterRevisions("p1", installed={"default": OLD}, proxies={"default": {"istio-system": 1}},
                               gateway_revision="default", serves_remotes=True)
    remote = ClusterRevisions("r1", installed={"default": OLD}, proxies={"default": {"istio-system": 1, "app": 1}},
                              gateway_revision="default", primary="p1")
    return primary, remote


def _stdin(step):
    return "".join(c.stdin or "" for c in step.commands)


def test_the_expose_step_applies_the_revisions_virtual_service_as_expose_istiod_rev_does(tmp_path):
    import yaml
    phase = _upgrade_phase(tmp_path, list(_remote_states()))
    expose = next(s for s in phase.steps["p1"] if s.title == f"expose revision {REV}'s istiod to remotes")
    assert _argvs(expose) == ["kubectl --context p1 apply --server-side --field-manager=setup-mesh --force-conflicts -f -"]
    objects = {o["kind"]: o for o in yaml.safe_load(_stdin(expose))["items"]}
    assert objects["Gateway"]["metadata"]["name"] == "istiod-gateway"
    vs = objects["VirtualService"]
    assert vs["metadata"]["name"] == f"istiod-vs-{REV}" and vs["spec"]["gateways"] == ["istiod-gateway"]
    sni = [f"istiod-{REV}.istio-system.svc", f"istiod-{REV}.istio-system.svc.cluster.local"]
    assert [(r["match"][0]["port"], r["match"][0]["sniHosts"], r["route"][0]["destination"]["port"]["number"])
            for r in vs["spec"]["tls"]] == [(15012, sni, 15012), (15017, sni, 443)]
    assert all(r["route"][0]["destination"]["host"] == f"istiod-{REV}.istio-system.svc.cluster.local"
               for r in vs["spec"]["tls"])
    titles = [s.title for s in phase.steps["p1"]]
    assert titles.index(expose.title) == titles.index(f"install revision {REV}") + 1


def test_a_remote_installs_the_remote_profile_at_the_revision_once_its_primary_moved(tmp_path):
    import yaml
    phase = _upgrade_phase(tmp_path, list(_remote_states()), addresses={"p1": "192.0.2.10"})
    install = phase.steps["r1"][0]
    (argv,) = _argvs(install)
    assert argv.startswith(f"/istio-1.31.0/bin/istioctl install -y -f {tmp_path}/overlays/r1.yaml --revision {REV} ")
    assert argv.endswith("--context r1")
    overlay = yaml.safe_load(install.files[0][1])
    assert overlay["spec"]["profile"] == "remote"
    assert overlay["spec"]["values"]["global"]["remotePilotAddress"] == "192.0.2.10"
    # It starts once its primary's steps of this run succeeded (its istiod installed and exposed).
    assert [(a.cluster, a.key) for a in install.after] == [("p1", phase.steps["p1"][-1].key)]
    # (on its primary's network it runs no gateway of its own: nothing to move there)
    assert [s.title for s in phase.steps["r1"]][1:] == [f"move the default tag to {REV}",
                                                        "workloads still on revision default: app (1); restart them: "
                                                        "kubectl rollout restart deployment -n <namespace>"]


def test_the_old_revision_stops_being_exposed_when_it_is_removed(tmp_path):
    primary = ClusterRevisions("p1", installed={"default": OLD, REV: NEW}, default_tag=REV,
                               proxies={REV: {"istio-system": 1}}, gateway_revision=REV, serves_remotes=True)
    remote = ClusterRevisions("r1", installed={REV: NEW}, default_tag=REV, proxies={REV: {"app": 1}},
                              gateway_revision=REV, primary="p1")
    remove = next(s for s in _upgrade_phase(tmp_path, [primary, remote]).steps["p1"] if s.title == "remove revision default")
    assert _argvs(remove) == [
        "kubectl --context p1 delete virtualservices.networking.istio.io istiod-vs -n istio-system --ignore-not-found",
        "/istio-1.31.0/bin/istioctl uninstall --revision default -y --context p1"]
    # a revision of an earlier upgrade: its own VirtualService goes
    earlier = replace(primary, installed={"1-30-3": OLD, REV: NEW})
    remove = next(s for s in _upgrade_phase(tmp_path, [earlier, remote]).steps["p1"] if s.title == "remove revision 1-30-3")
    assert "virtualservices.networking.istio.io istiod-vs-1-30-3" in _argvs(remove)[0]


def test_a_remote_deletes_its_old_revisions_endpoint_slice_which_uninstall_leaves(tmp_path):
    remote = ClusterRevisions("r1", installed={"default": OLD, REV: NEW}, default_tag=REV, proxies={REV: {"app": 1}},
                              gateway_revision=REV, primary="p1")
    primary = ClusterRevisions("p1", installed={REV: NEW}, default_tag=REV, gateway_revision=REV, serves_remotes=True)
    remove = next(s for s in _upgrade_phase(tmp_path, [primary, remote]).steps["r1"] if s.title == "remove revision default")
    assert _argvs(remove) == [
        "kubectl --context r1 delete endpointslices.discovery.k8s.io istiod -n istio-system --ignore-not-found",
        "/istio-1.31.0/bin/istioctl uninstall --revision default -y --context r1"]


def test_with_context_the_primary_alone_still_keeps_the_revision_its_remote_uses(tmp_path):
    primary = ClusterRevisions("p1", installed={"default": OLD, REV: NEW}, default_tag=REV,
                               proxies={REV: {"istio-system": 1}}, gateway_revision=REV, serves_remotes=True)
    remote = ClusterRevisions("r1", installed={"default": OLD}, proxies={"default": {"app": 1}},
                              gateway_revision="default", primary="p1")
    phase = _upgrade_phase(tmp_path, [primary, remote], only={"p1"})
    assert "r1" not in phase.steps
    assert [s.title for s in phase.steps["p1"]] == [f"expose revision {REV}'s istiod to remotes"]


def test_remotes_are_no_longer_refused_and_ambient_meshes_are_with_what_istio_says_of_ztunnel():
    from lib.upgradeplan import unsupported_refusal
    states = list(_remote_states())
    targets = {"p1": NEW, "r1": NEW}
    assert unsupported_refusal(states, targets, ambient=False) is None
    refused = unsupported_refusal([states[0]], {"p1": NEW}, ambient=True)
    assert refused is not None and refused.exit_code == 2 and "no cluster was changed" in refused.message
    assert "ztunnel in place, node by node" in refused.message and "istio.io docs/ambient/upgrade" in refused.message
    assert "cordoning and draining each node" in refused.hint and "keep istio_version" in refused.hint
