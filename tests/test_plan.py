"""The plan: what apply would do, from desired and observed state (no cluster needed)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lib.config import Cluster, Topology
from lib.kube import Observed, RemoteSecretInfo, Tools, token_fingerprint
from lib.istiousage import IstioUsage, parse_istio_usage
from lib.desired import desired_state
from lib.plan import Removal, Uninstall, build_apply_plan, uninstall_steps
from tests import goldens

ROOT = Path(__file__).resolve().parent.parent
CLUSTERS = (Cluster("c1", "n1", "c1", server="https://c1:6443"), Cluster("c2", "n1", "c2", server="https://c2:6443"),
            Cluster("c3", "n2", "c3", server="https://c3:6443"))


def _workdir(tmp_path):
    for c in CLUSTERS:
        d = tmp_path / "certs" / c.name
        d.mkdir(parents=True)
        for name in ("ca-cert.pem", "ca-key.pem", "root-cert.pem", "cert-chain.pem"):
            (d / name).write_text(f"{c.name}-{name}")
    return tmp_path


def _healthy(topology, desired):
    observed = {}
    for c in topology.clusters:
        peers = {p.name: RemoteSecretInfo(f"istio-remote-secret-{p.name}", p.name,
                                          token_fingerprint(p.name, p.remote_server, f"tok-{p.name}"), p.server,
                                          manifest={"kind": "Secret", "metadata": {"name": f"copy-of-{p.name}"}})
                 for p in topology.clusters if p is not c}
        observed[c.context] = Observed(
            reachable=True, namespace=True, network_label=c.network, applied=desired[c.context].fingerprint,
            cacerts={name: f"{c.name}-{name}".encode() for name in ("ca-cert.pem", "cert-chain.pem", "root-cert.pem")},
            remote_secrets=peers,
            reader_token=f"tok-{c.name}", eastwest_exists=True, eastwest_made_by="operator", eastwest_address="198.51.100.1")
    return observed


def _plan(tmp_path, observed, removed=(), uninstall=None, only=None):
    topology = Topology("m", CLUSTERS, tmp_path / "topology.yaml")
    desired = desired_state(topology, {"apiVersion": "install.istio.io/v1alpha1", "kind": "IstioOperator", "spec": {}})
    obs = observed(topology, desired) if callable(observed) else observed
    return build_apply_plan(topology=topology, desired=desired, observed=obs, removed=list(removed),
                            removed_observed=obs, workdir=_workdir(tmp_path), tools=Tools(), release=None,
                            intermediate_vars={}, gateway_timeout=5, uninstall=uninstall, only=only)


def _steps(plan):
    return {(phase.name, ctx): [s.title for s in steps] for phase in plan.phases for ctx, steps in phase.steps.items()}


def test_a_healthy_mesh_plans_nothing(tmp_path):
    plan = _plan(tmp_path, _healthy)
    assert _steps(plan) == {}
    assert plan.unchanged == ["c1", "c2", "c3"]


IMPORT = "import remote secrets, gateways ready"
SETUP = "set up, install, export remote secret"


def test_a_cluster_whose_istio_system_is_being_deleted_waits_for_it_then_is_set_up_afresh(tmp_path):
    # Whatever it held goes with the namespace (an interrupted teardown): it is planned as a new cluster.
    def observed(topology, desired):
        obs = _healthy(topology, desired)
        obs["c2"].namespace_terminating = True
        return obs

    plan = _plan(tmp_path, observed)
    chain = [s for phase in plan.phases for s in phase.steps.get("c2", [])]
    assert chain[0].title == "istio-system is being deleted: wait until it is gone"
    install = next(s for s in chain if s.title == "install Istio")
    assert install.change.startswith("+ Istio") and install.done == "installed", "a fresh install, not an update"
    assert plan.actions["c2"] == "install" and "c2" not in plan.unchanged
    assert "import 2 peers' secrets" in [s.title for s in chain], "its peers' secrets went with it"
    # Its new remote secret (a new reader token) goes to the others, which are not installed again.
    assert _steps(plan)[(IMPORT, "c1")] == _steps(plan)[(IMPORT, "c3")] == ["import c2's secret"]
    assert plan.unchanged == ["c1", "c3"]


def test_a_missing_secret_is_copied_from_a_peer_that_holds_a_current_one(tmp_path):
    def observed(topology, desired):
        obs = _healthy(topology, desired)
        del obs["c1"].remote_secrets["c3"]
        return obs

    plan = _plan(tmp_path, observed)
    assert _steps(plan) == {(IMPORT, "c1"): ["import c3's secret"]}
    argvs = [c.argv for phase in plan.phases for steps in phase.steps.values() for st in steps for c in st.commands]
    assert not any("create-remote-secret" in argv for argv in argvs)
    # What c1's import applies is the copy as c2's read found it.
    import yaml

    from tests.test_behaviours import Replies, _context

    (step,) = [s for p in plan.phases for s in p.steps.get("c1", [])]
    runner = Replies("")
    step.action(_context(runner))
    (command,) = runner.asked
    assert [item["metadata"]["name"] for item in yaml.safe_load(command.stdin)["items"]] == ["copy-of-c3"]


def test_a_secret_nobody_holds_is_exported_once(tmp_path):
    def observed(topology, desired):
        obs = _healthy(topology, desired)
        del obs["c1"].remote_secrets["c3"]
        del obs["c2"].remote_secrets["c3"]
        return obs

    assert _steps(_plan(tmp_path, observed)) == {
        (SETUP, "c3"): ["create its remote secret"],
        (IMPORT, "c1"): ["import c3's secret"],
        (IMPORT, "c2"): ["import c3's secret"],
    }


def test_a_rotated_token_refreshes_that_clusters_secret_everywhere(tmp_path):
    def observed(topology, desired):
        obs = _healthy(topology, desired)
        obs["c2"].reader_token = "new-token"
        return obs

    steps = _steps(_plan(tmp_path, observed))
    assert steps[(SETUP, "c2")] == ["create its remote secret"]
    assert steps[(IMPORT, "c1")] == ["import c2's secret"]
    assert steps[(IMPORT, "c3")] == ["import c2's secret"]


def _changes(plan, phase, ctx):
    return [st.change for st in dict(((p.name, c), steps) for p in plan.phases for c, steps in p.steps.items())
            .get((phase, ctx), [])]


def test_the_plan_says_whether_a_secret_is_replaced_for_its_address_or_its_credentials(tmp_path):
    def new_token(topology, desired):
        obs = _healthy(topology, desired)
        obs["c2"].reader_token = "new-token"
        return obs

    def new_address(topology, desired):  # c2 held secrets naming another address; its token is unchanged
        obs = _healthy(topology, desired)
        for holder in ("c1", "c3"):
            obs[holder].remote_secrets["c2"].server = "https://127.0.0.1:6443"
            obs[holder].remote_secrets["c2"].source = token_fingerprint("c2", "https://127.0.0.1:6443", "tok-c2")
        return obs

    assert _changes(_plan(tmp_path / "a", new_token), IMPORT, "c1") == ["~ remote secret of c2 (new credentials)"]
    assert _changes(_plan(tmp_path / "b", new_address), IMPORT, "c1") == ["~ remote secret of c2 (new address)"]


@pytest.mark.parametrize("gateway_runs", [False, True])
def test_an_edit_on_one_network_removes_the_east_west_gateway_only_where_one_runs(tmp_path, gateway_runs):
    """One network: no gateway is wanted. An edit of base.yaml re-installs; the gateway's removal (a delete of
    the Gateway, an uninstall) is planned only where istioctl's east-west gateway was found."""
    clusters = tuple(Cluster(c.context, "n1", c.name, server=c.server) for c in CLUSTERS)
    topology = Topology("m", clusters, tmp_path / "topology.yaml")
    desired = desired_state(topology, {"apiVersion": "install.istio.io/v1alpha1", "kind": "IstioOperator", "spec": {}})
    observed = _healthy(topology, desired)
    for seen in observed.values():
        seen.applied = "before the edit"
        seen.eastwest_exists, seen.eastwest_made_by = gateway_runs, "operator" if gateway_runs else None
        seen.eastwest_address = "198.51.100.1" if gateway_runs else None
    plan = build_apply_plan(topology=topology, desired=desired, observed=observed, removed=[],
                            removed_observed=observed, workdir=_workdir(tmp_path), tools=Tools(), release=None,
                            intermediate_vars={}, gateway_timeout=5)
    for c in clusters:
        changes = [st.change for p in plan.phases for st in p.steps.get(c.context, [])]
        assert "~ Istio (overlays/%s.yaml)" % c.context in changes
        removal = "- east-west gateway and Gateway cross-network-gateway (one network now)"
        assert (removal in changes) is gateway_runs, changes


def test_a_gateway_removed_from_a_remote_says_why_in_words_true_of_a_two_network_mesh(tmp_path):
    """c2 becomes a remote of c1 on c1's network: its gateway goes, while the mesh keeps two networks."""
    clusters = (CLUSTERS[0], Cluster("c2", "n1", "c2", server="https://c2:6443", primary="c1"), CLUSTERS[2])
    topology = Topology("m", clusters, tmp_path / "topology.yaml")
    desired = desired_state(topology, {"apiVersion": "install.istio.io/v1alpha1", "kind": "IstioOperator", "spec": {}})
    observed = _healthy(topology, desired)
    observed["c2"].applied = "as a primary"
    for d in desired.values():
        d.awaits_address_of = None
    plan = build_apply_plan(topology=topology, desired=desired, observed=observed, removed=[],
                            removed_observed=observed, workdir=_workdir(tmp_path), tools=Tools(), release=None,
                            intermediate_vars={}, gateway_timeout=5)
    changes = [st.change for p in plan.phases for st in p.steps.get("c2", [])]
    assert "- east-west gateway and Gateway cross-network-gateway (a remote on its primary's network)" in changes
    assert not any("one network now" in (c or "") for c in changes)


def test_the_switch_to_ambient_names_a_sidecar_gateway_replaced_only_where_there_is_one(tmp_path):
    """c2 ran no east-west gateway (it was a remote on its primary's network): nothing of it is replaced."""
    from lib.names import DATA_PLANE_ANNOTATION

    topology = Topology("m", CLUSTERS, tmp_path / "topology.yaml")
    desired = desired_state(topology, {"apiVersion": "install.istio.io/v1alpha1", "kind": "IstioOperator",
                                       "spec": {"profile": "ambient"}})
    observed = _healthy(topology, desired)
    for ctx, seen in observed.items():
        seen.applied, seen.annotations = "sidecar mode", {DATA_PLANE_ANNOTATION: "sidecar"}
        seen.eastwest_made_by = None if ctx == "c2" else "operator"
    plan = build_apply_plan(topology=topology, desired=desired, observed=observed, removed=[],
                            removed_observed=observed, workdir=_workdir(tmp_path), tools=Tools(), release=None,
                            intermediate_vars={}, gateway_timeout=5)
    replaced = {ctx: " ".join(what) for ctx, what in plan.replacements.items()}
    assert "sidecar-mode east-west gateway" in replaced["c1"] and "sidecar-mode east-west gateway" in replaced["c3"]
    assert "Istio is reinstalled with profile ambient" in replaced["c2"]
    assert "east-west gateway" not in replaced["c2"]


def test_a_changed_overlay_reinstalls_only_that_cluster(tmp_path):
    def observed(topology, desired):
        obs = _healthy(topology, desired)
        obs["c3"].applied = "something-else"
        return obs

    steps = _steps(_plan(tmp_path, observed))
    assert steps[(SETUP, "c3")] == ["install Istio", "install east-west gateway",
                                    "expose services (Gateway cross-network-gateway)", "record what was applied"]
    assert steps[(IMPORT, "c3")] == ["wait for the east-west gateway's address"]
    assert sorted(steps) == [(IMPORT, "c3"), (SETUP, "c3")]


def test_stale_secrets_and_removed_clusters(tmp_path):
    def observed(topology, desired):
        obs = _healthy(topology, desired)
        obs["c1"].remote_secrets["old"] = RemoteSecretInfo("istio-remote-secret-old", "old", "x", None)
        obs["gone"] = Observed(reachable=True, namespace=True)
        return obs

    how = Uninstall(tmp_path, OURS, IstioUsage())
    plan = _plan(tmp_path, observed, [Removal("gone", "gone", None, False)], uninstall={"gone": how})
    assert plan.prunes == {"c1": ["istio-remote-secret-old"]}
    assert plan.deletes_anything
    assert _steps(plan)[("remove clusters", "gone")] == ["uninstall Istio and its CRDs", "delete cacerts and remote secrets",
                                                         "delete namespace istio-system"]
    unread = _plan(tmp_path / "again", observed, [Removal("gone", "gone", None, False)], uninstall={})
    assert ("remove clusters", "gone") not in _steps(unread), "who else uses Istio there is unknown: touch nothing"
    assert [r.reachable for r in unread.removals] == [False]


OURS = frozenset({"setup-mesh", "eastwest"})


def _deployment(name, owner, rev="default"):
    labels = {"operator.istio.io/component": "Pilot", "istio.io/rev": rev}
    if owner is not None:
        labels["install.operator.istio.io/owning-resource"] = owner
    return {"kind": "Deployment", "metadata": {"name": name, "namespace": "istio-system", "labels": labels}}


def test_uninstall_keeps_crds_and_others_control_planes_when_others_use_istio(tmp_path):
    cluster = Cluster("c1", "n1", "c1")
    seen = Observed(reachable=True, namespace=True, deployments={
        "istiod": _deployment("istiod", "setup-mesh"), "istio-eastwestgateway": _deployment("istio-eastwestgateway", "eastwest"),
        "istiod-old": _deployment("istiod-old", None, rev="old"), "istiod-team": _deployment("istiod-team", "team-plane")})
    usage = IstioUsage(resources={("VirtualService", "shop"): 2})
    steps = uninstall_steps(Tools(), cluster, ["istio-remote-secret-c2"], seen, Uninstall(tmp_path, OURS, usage))
    argvs = [" ".join(c.argv) for s in steps for c in s.commands]
    assert not any("--purge" in a for a in argvs)
    files = {path.name: text for s in steps for path, text in s.files}
    assert sorted(files) == ["c1-eastwest.yaml", "c1-setup-mesh.yaml"]
    assert "name: eastwest" in files["c1-eastwest.yaml"]
    assert any(a.endswith("uninstall -y -r old --context c1") for a in argvs), "unnamed installs of earlier versions"
    assert not any("team" in a for a in argvs), "another IstioOperator's control plane is not ours"
    assert any("delete namespace istio-system" in a for a in argvs)
    in_istio_system = Uninstall(tmp_path, OURS, IstioUsage(resources={("PeerAuthentication", "istio-system"): 1}))
    argvs = [" ".join(c.argv) for s in uninstall_steps(Tools(), cluster, [], seen, in_istio_system) for c in s.commands]
    assert not any("delete namespace" in a for a in argvs), "others' resources live in istio-system: it stays"
    forced = Uninstall(tmp_path, OURS, usage, remove_crds=True)
    argvs = [" ".join(c.argv) for s in uninstall_steps(Tools(), cluster, [], seen, forced) for c in s.commands]
    assert argvs[0].startswith("istioctl uninstall --purge -y")


def test_uninstall_that_keeps_istio_still_removes_the_ambient_gateway_istiod_made(tmp_path):
    """With istiod gone nothing reconciles the Deployment and Service it made for the ambient Gateway."""
    cluster = Cluster("c1", "n1", "c1")
    usage = IstioUsage(resources={("VirtualService", "shop"): 2})
    ambient = Observed(reachable=True, namespace=True, eastwest_made_by="gateway")
    argvs = [" ".join(c.argv) for s in uninstall_steps(Tools(), cluster, [], ambient, Uninstall(tmp_path, OURS, usage))
             for c in s.commands]
    assert any("delete gateways.gateway.networking.k8s.io istio-eastwestgateway" in a for a in argvs)
    assert any("gateway.networking.k8s.io/gateway-name=istio-eastwestgateway" in a for a in argvs)
    sidecar = Observed(reachable=True, namespace=True, eastwest_made_by="operator")
    argvs = [" ".join(c.argv) for s in uninstall_steps(Tools(), cluster, [], sidecar, Uninstall(tmp_path, OURS, usage))
             for c in s.commands]
    assert not any("gateway.networking.k8s.io" in a for a in argvs), "a sidecar mesh may have no Gateway API CRDs"


def test_istio_usage_tells_setup_mesh_objects_from_others():
    import json

    from lib.overlay import cross_network_gateway
    from lib.names import made_by_setup_mesh

    resources = json.dumps({"items": [
        {**cross_network_gateway(), "kind": "Gateway"},
        {"kind": "Gateway", "metadata": {"name": "cross-network-gateway", "namespace": "istio-system"}},  # earlier versions
        {"kind": "VirtualService", "metadata": {"name": "a", "namespace": "shop"}},
        {"kind": "VirtualService", "metadata": {"name": "b", "namespace": "shop"}},
        {"kind": "AuthorizationPolicy", "metadata": {"name": "c", "namespace": "bank"}}]})
    deployments = json.dumps({"items": [_deployment("istiod", "setup-mesh"), _deployment("istiod-legacy", "unknown"),
                                        {**_deployment("istiod", "theirs"), "metadata": {**_deployment("istiod", "theirs")["metadata"], "namespace": "other"}}]})
    usage = parse_istio_usage(resources, deployments, OURS, made_by_setup_mesh)
    assert usage.resources == {("VirtualService", "shop"): 2, ("AuthorizationPolicy", "bank"): 1}
    assert usage.control_planes == ["other/istiod"]
    assert usage.describe() == "1 AuthorizationPolicy in bank; 2 VirtualService in shop; Istio deployments installed by others: other/istiod"
    # An unnamed control plane is taken for one of setup-mesh's earlier versions only in istio-system: in
    # another namespace it is somebody's (a Helm install carries no owner), and keeps Istio's CRDs.
    helm = _deployment("istiod", None)
    helm["metadata"] = {**helm["metadata"], "namespace": "istio-canary"}
    usage = parse_istio_usage(None, json.dumps({"items": [_deployment("istiod", "unknown"), helm]}), OURS, made_by_setup_mesh)
    assert usage.control_planes == ["istio-canary/istiod"] and usage.foreign
    assert not parse_istio_usage(None, '{"items": []}', OURS, made_by_setup_mesh).foreign


def test_only_a_default_tag_that_no_uninstall_removes_is_named_for_removal():
    import json

    from lib.names import made_by_setup_mesh

    def tag(**labels):
        webhook = {"kind": "MutatingWebhookConfiguration",
                   "metadata": {"name": "istio-revision-tag-default", "labels": {"istio.io/rev": "1-31-0", **labels}}}
        return parse_istio_usage(None, '{"items": []}', OURS, made_by_setup_mesh, json.dumps(webhook)).default_tag

    assert tag(**{"istio.io/tag": "default"}) == "1-31-0", "istioctl tag set: no uninstall prunes it"
    # Made by the charts from values.revisionTags: pruned with its install, after which `tag remove` would
    # fail ("cannot find MutatingWebhookConfiguration or Service for tag").
    assert tag(**{"operator.istio.io/component": "Pilot"}) is None
    assert parse_istio_usage(None, '{"items": []}', OURS, made_by_setup_mesh, "").default_tag is None  # none there


def test_dry_run_of_the_bundled_example_matches_the_golden_plan(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("ISTIO_DIR", "WORKDIR")}
    env.update(KUBECONFIG=str(tmp_path / "no-kubeconfig"), PATH="/usr/bin:/bin", HOME=str(tmp_path))
    for flags, golden in ((), "plan-bundled-example.txt"), (("-v",), "plan-bundled-example-full.txt"):
        result = subprocess.run([sys.executable, "setup_mesh.py", "apply", "--dry-run", *flags], cwd=ROOT, env=env,
                                capture_output=True, text=True, timeout=60)
        # the plan as if the clusters held nothing, then the error apply itself stops at (exit 2)
        assert result.returncode == 2, result.stderr
        assert result.stderr.replace(str(tmp_path), "<tmp>").rstrip().endswith(
            "error: kubeconfig file not found: <tmp>/no-kubeconfig (KUBECONFIG)\n"
            "hint: check the path, or point --kubeconfig / KUBECONFIG at your kubeconfig"), result.stderr
        goldens.check(golden, result.stdout.replace(str(tmp_path), "<tmp>"))
    assert not (ROOT / "overlays").exists() and not (ROOT / ".setup-mesh").exists(), "a dry run writes nothing"


def test_only_the_selected_contexts_get_steps(tmp_path):
    def observed(topology, desired):
        obs = _healthy(topology, desired)
        del obs["c1"].remote_secrets["c3"]  # c2 holds a current copy of c3's secret
        del obs["c2"].remote_secrets["c1"]
        return obs

    plan = _plan(tmp_path, observed, only={"c1"})
    assert _steps(plan) == {(IMPORT, "c1"): ["import c3's secret"]}, "c2 is not touched, c3 is read only"


def test_a_secret_nobody_holds_is_not_made_in_an_unselected_peer(tmp_path):
    def observed(topology, desired):
        obs = _healthy(topology, desired)
        for holder in ("c1", "c2"):
            del obs[holder].remote_secrets["c3"]
        return obs

    assert _steps(_plan(tmp_path, observed, only={"c1"})) == {}
    both = _plan(tmp_path / "b", observed, only={"c1", "c3"})
    assert _steps(both) == {(SETUP, "c3"): ["create its remote secret"], (IMPORT, "c1"): ["import c3's secret"]}


def test_istioctl_gives_up_waiting_before_setup_mesh_kills_it():
    from lib.overlay import sequential_waits
    from lib.plan import install_command

    default = {"spec": {"profile": "default"}}
    assert sequential_waits(default) == 3  # base, istiod, ingress gateway, one after another
    assert sequential_waits({"spec": {"profile": "default", "components": {
        "ingressGateways": [{"name": "istio-ingressgateway", "enabled": False}]}}}) == 3, "unsure counts more"
    assert sequential_waits({"spec": {"profile": "minimal", "components": {"cni": {"enabled": True}}}}) == 3
    assert sequential_waits({"spec": {"profile": "empty", "components": {"ingressGateways": [{"name": "gw"}]}}}) == 1
    for timeout in (600.0, 45.0):
        argv = install_command(Tools(timeout=timeout), CLUSTERS[0], Path("o.yaml"), default).argv
        readiness = float(argv[argv.index("--readiness-timeout") + 1].rstrip("s"))
        assert readiness * 3 < timeout and readiness * 3 > timeout * 0.8


def test_a_network_change_replaces_the_gateway_deployment_whose_selector_names_it(tmp_path):
    def observed(topology, desired):
        obs = _healthy(topology, desired)
        obs["c3"].applied = "network-was-different"
        obs["c3"].deployments["istio-eastwestgateway"] = {"spec": {"selector": {"matchLabels": {
            "istio": "eastwestgateway", "topology.istio.io/network": "old-network"}}}}
        obs["c1"].deployments["istio-eastwestgateway"] = {"spec": {"selector": {"matchLabels": {
            "istio": "eastwestgateway", "topology.istio.io/network": "n1"}}}}
        obs["c1"].applied = "something-else"
        return obs

    plan = _plan(tmp_path, observed)
    steps = _steps(plan)
    assert steps[(SETUP, "c3")][:3] == ["install Istio", "remove the east-west gateway's Deployment (it selects network old-network)",
                                        "install east-west gateway"]
    (delete,) = next(s for s in plan.phases[0].steps["c3"] if s.title.startswith("remove the east-west")).commands
    assert list(delete.argv[-6:]) == ["delete", "deployment", "istio-eastwestgateway", "-n", "istio-system", "--ignore-not-found"]
    assert "--context" in delete.argv and delete.argv[delete.argv.index("--context") + 1] == "c3"
    assert not any("remove the east-west" in title for title in steps[(SETUP, "c1")]), "same network: updated in place"


def test_mid_transition_a_new_cluster_gets_the_stages_certificates_and_the_others_keep_theirs(tmp_path):
    from lib import carotation
    from lib.names import TRANSITION_ANNOTATION

    pem = "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n".format
    _workdir(tmp_path)
    (tmp_path / "certs" / "root-cert.pem").write_text(pem("OLD"))
    nxt = tmp_path / "certs-next"
    (nxt).mkdir()
    (nxt / "root-cert.pem").write_text(pem("NEW"))
    for c in CLUSTERS[:2]:  # stage 2: c1 and c2 run on intermediates of the new root; c3 was just added
        (nxt / c.name).mkdir()
        for name in ("ca-cert.pem", "ca-key.pem", "cert-chain.pem", "root-cert.pem"):
            (nxt / c.name / name).write_text(f"next-{c.name}-{name}")
    transition = carotation.Transition(2, "old", "ab" * 32, "2026-11-29T08:00:00Z")
    topology = Topology("m", CLUSTERS, tmp_path / "topology.yaml")
    desired = desired_state(topology, {"apiVersion": "install.istio.io/v1alpha1", "kind": "IstioOperator", "spec": {}},
                            transition=transition)
    observed = _healthy(topology, desired)
    for c in CLUSTERS[:2]:
        observed[c.context].cacerts = carotation.desired_cacerts(tmp_path, c.name, transition)
        observed[c.context].annotations = {TRANSITION_ANNOTATION: transition.annotation("2026-11-30T08:00:00Z")}
    observed["c3"] = Observed(reachable=True)
    plan = build_apply_plan(topology=topology, desired=desired, observed=observed, removed=[], removed_observed=observed,
                            workdir=tmp_path, tools=Tools(), release=None, intermediate_vars={}, gateway_timeout=5,
                            transition=transition)
    steps = {}
    for phase in plan.phases:
        for ctx, st in phase.steps.items():
            steps.setdefault(ctx, []).extend(st)
    for ctx in ("c1", "c2"):  # only the new peer's secret: apply keeps what the transition put in place
        assert [s.title for s in steps[ctx]] == ["import c3's secret"], steps[ctx]
    made = [s for s in steps["c3"] if s.title == "make intermediate CA"]
    assert made and made[0].change == "+ intermediate CA (certs-next/c3/)", "issued by the new root"
    install = next(s for s in steps["c3"] if s.title == "install Istio")
    assert "ISTIO_MULTIROOT_MESH: 'true'" in install.files[0][1]
    # Once the new intermediate is there, c3's cacerts is the stage's: both roots, in a bundle that holds
    # stage 1's bytes (old, new, new), which istiod 1.28/1.29 take as well as 1.30.
    (nxt / "c3").mkdir()
    for name in ("ca-cert.pem", "ca-key.pem", "cert-chain.pem", "root-cert.pem"):
        (nxt / "c3" / name).write_text(f"next-c3-{name}")
    files = carotation.desired_cacerts(tmp_path, "c3", transition)
    assert files["ca-cert.pem"] == b"next-c3-ca-cert.pem" and files["root-cert.pem"] == (pem("OLD") + pem("NEW") + pem("NEW")).encode()


def _remote_plan(tmp_path, observed=None):
    clusters = (Cluster("c1", "n1", "c1", server="https://c1:6443"),
                Cluster("c2", "n1", "c2", server="https://c2:6443", primary="c1"))
    topology = Topology("m", clusters, tmp_path / "topology.yaml")
    base = {"apiVersion": "install.istio.io/v1alpha1", "kind": "IstioOperator", "spec": {}}
    addresses = {ctx: o.eastwest_address for ctx, o in (observed or {}).items() if o.eastwest_address}
    desired = desired_state(topology, base, addresses)
    for c in clusters:
        d = tmp_path / "certs" / c.name
        d.mkdir(parents=True, exist_ok=True)
        for name in ("ca-cert.pem", "ca-key.pem", "root-cert.pem", "cert-chain.pem"):
            (d / name).write_text(f"{c.name}-{name}")
    return build_apply_plan(topology=topology, desired=desired, observed=observed or {}, removed=[],
                            removed_observed={}, workdir=tmp_path, tools=Tools(), release=None,
                            intermediate_vars={}, gateway_timeout=5)


def test_a_remote_is_installed_after_its_primary_has_exposed_istiod_and_has_an_address(tmp_path):
    plan = _remote_plan(tmp_path)
    steps = _steps(plan)
    assert steps[(SETUP, "c1")] == ["namespace istio-system (network n1) and secret cacerts", "install Istio",
                                    "install east-west gateway",
                                    "expose istiod (Gateway istiod-gateway, VirtualService istiod-vs)",
                                    "wait for the east-west gateway's address", "record what was applied"]
    assert steps[(SETUP, "c2")] == ["namespace istio-system (network n1) and secret cacerts", "install Istio",
                                    "record what was applied", "create its remote secret"]
    assert len(steps[(IMPORT, "c1")]) == 1 and "c2" in steps[(IMPORT, "c1")][0]
    assert (IMPORT, "c2") not in steps, "a remote holds no remote secret"
    install, = [s for s in plan.phases[0].steps["c2"] if s.title == "install Istio"]
    assert [(a.cluster, a.key, a.required) for a in install.after] == \
        [("c1", "wait for the east-west gateway's address", True)]
    # The dry run shows where the address goes; the run writes the overlay once it is known.
    assert "remotePilotAddress: <address of c1's east-west gateway>" in install.files[0][1]
    assert install.prepare is not None


def test_a_remote_whose_primary_has_an_address_is_installed_without_waiting(tmp_path):
    observed = {"c1": Observed(reachable=True, eastwest_exists=True, eastwest_made_by="operator", eastwest_address="203.0.113.1")}
    plan = _remote_plan(tmp_path, observed)
    install, = [s for s in plan.phases[0].steps["c2"] if s.title == "install Istio"]
    assert "remotePilotAddress: 203.0.113.1" in install.files[0][1] and install.prepare is None


def _own_network_remote_plan(tmp_path, observed, only=None):
    """c1 and c2 primaries on n1; c3 a remote of c1 on a network of its own (n2)."""
    clusters = CLUSTERS[:2] + (Cluster("c3", "n2", "c3", server="https://c3:6443", primary="c1"),)
    topology = Topology("m", clusters, tmp_path / "topology.yaml")
    desired = desired_state(topology, {"apiVersion": "install.istio.io/v1alpha1", "kind": "IstioOperator", "spec": {}})
    obs = observed(topology, desired)
    return build_apply_plan(topology=topology, desired=desired, observed=obs, removed=[], removed_observed=obs,
                            workdir=_workdir(tmp_path), tools=Tools(), release=None, intermediate_vars={},
                            gateway_timeout=5, only=only)


def test_a_remotes_gateway_waits_for_its_primary_to_import_its_secret(tmp_path):
    from lib.executor import After
    from lib.plan import IMPORT_KEY

    plan = _own_network_remote_plan(tmp_path, lambda topology, desired: {c.context: Observed(reachable=True)
                                                               for c in topology.clusters})
    chain = [s for phase in plan.phases for s in phase.steps.get("c3", [])]
    titles = [s.title for s in chain]
    assert titles.index("install Istio") < titles.index("create its remote secret") \
        < titles.index("install east-west gateway") < titles.index("record what was applied"), titles
    gateway = chain[titles.index("install east-west gateway")]
    assert After("c1", IMPORT_KEY) in gateway.after
    (imports,) = plan.phases[1].steps["c1"]
    assert imports.key == IMPORT_KEY and imports.title == "import 2 peers' secrets"
    # A primary's own gateway follows its install, as before.
    primary = [s.title for s in plan.phases[0].steps["c1"]]
    assert primary.index("install Istio") + 1 == primary.index("install east-west gateway"), primary


def test_a_remotes_gateway_is_refused_with_context_when_its_primary_lacks_its_secret(tmp_path):
    import pytest

    from lib.errors import MeshError

    def observed(topology, desired):
        obs = {c.context: Observed(reachable=True) for c in topology.clusters}
        return obs

    with pytest.raises(MeshError) as refused:
        _own_network_remote_plan(tmp_path, observed, only={"c3"})
    assert "c3's east-west gateway can only be installed once c1 holds its current remote secret" in str(refused.value)
    assert refused.value.hint == "add --context c1 (or run without --context)"
    assert _own_network_remote_plan(tmp_path / "both", observed, only={"c1", "c3"}).phases[1].steps["c1"]


def test_a_gateway_api_crd_download_that_fails_names_the_offline_option():
    """Without network, kubectl cannot fetch the standard-install.yaml: the failure says how to give a file."""
    from lib.executor import Executor, Phase
    from lib.gatewayapi import CrdSource
    from lib.kube import Tools
    from lib.plan import gateway_api_crds_step
    from lib.reporter import Reporter
    from tests.recording import RecordingRunner

    url = "https://github.com/kubernetes-sigs/gateway-api/releases/download/v1.5.1/standard-install.yaml"
    offline = RecordingRunner(lambda c: (1, "", 'Unable to connect to the server: dial tcp: lookup github.com: '
                                                'no such host'))
    results = {}
    for name, source in (("url", CrdSource(url, "v1.5.1")), ("file", CrdSource("/tmp/crds.yaml", "v1.5.1"))):
        phase = Phase("crds")
        phase.add("cluster1", gateway_api_crds_step(Tools(), Cluster("cluster1", "network1", "cluster1"), source))
        results[name] = Executor(offline, Reporter(quiet=True), parallel=1).run_phases([phase]).failures["cluster1"]
    assert "no such host" in results["url"].message
    assert "`--gateway-api-crds PATH`" in results["url"].hint and url in results["url"].hint
    assert not results["file"].hint or "--gateway-api-crds" not in results["file"].hint


def test_the_confirmation_names_only_what_is_removed():
    from lib.apply import deletion_question
    from lib.plan import ApplyPlan, Removal

    gone = Removal("c3", "c3", None, reachable=True)
    assert deletion_question(ApplyPlan([], prunes={"c1": ["istio-remote-secret-old"]})) == \
        "Remove the remote secrets listed above?"
    assert deletion_question(ApplyPlan([], removals=[gone], prunes={"c1": ["istio-remote-secret-c3"]})) == \
        "Remove the cluster and the remote secrets listed above?"
    assert deletion_question(ApplyPlan([], removals=[gone, gone])) == "Remove the clusters listed above?"
    assert deletion_question(ApplyPlan([], replacements={"c1": ["Istio is reinstalled with profile ambient"]})) == \
        "Replace or remove what is listed above?"


def test_the_bundled_examples_full_plan_built_in_this_process_matches_the_golden_plan(tmp_path, monkeypatch, capsys):
    # The golden above, through apply's own code in this process: every step builder's command line is
    # pinned by a test that runs where mutation testing sees it (the CLI run above is a subprocess).
    import pytest

    from lib.apply import apply
    from lib.errors import ConfigError
    from lib.reporter import Reporter
    from lib.runner import ShRunner

    for name in ("ISTIO_DIR", "WORKDIR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "no-kubeconfig"))
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(ROOT)
    reporter = Reporter(verbose=True)  # as the CLI makes it, on this process's stdout
    with pytest.raises(ConfigError) as stopped:
        apply(Path("."), kubeconfig=None, istio_dir=None, dry_run=True, yes=False, parallel=8, gateway_timeout=300.0,
              timeout=600.0, runner=ShRunner(), reporter=reporter)
    assert stopped.value.message.startswith("kubeconfig file not found")
    goldens.check("plan-bundled-example-full.txt", capsys.readouterr().out.replace(str(tmp_path), "<tmp>"))


def test_a_remote_is_refused_with_context_when_its_primary_served_no_remote_when_read(tmp_path):
    # c2, a primary until now, becomes a remote of c1: c1's install must change first (externalIstiod, istiod
    # exposed), or c2's injector calls an istiod that does not serve it and every new pod there is refused.
    import pytest

    from lib.errors import MeshError

    clusters = (CLUSTERS[0], Cluster("c2", CLUSTERS[0].network, "c2", server="https://c2:6443", primary="c1"))
    topology = Topology("m", clusters, tmp_path / "topology.yaml")
    desired = desired_state(topology, {"apiVersion": "install.istio.io/v1alpha1", "kind": "IstioOperator", "spec": {}})

    workdir = _workdir(tmp_path)

    def plan(observed, only):
        return build_apply_plan(topology=topology, desired=desired, observed=observed, removed=[],
                                removed_observed=observed, workdir=workdir, tools=Tools(), release=None,
                                intermediate_vars={}, gateway_timeout=5, only=only)

    as_primaries = _healthy(topology, desired)
    as_primaries["c1"].applied, as_primaries["c2"].applied = "serving no remote", "as a primary"
    with pytest.raises(MeshError) as refused:
        plan(as_primaries, {"c2"})
    assert str(refused.value) == ("c2 is a remote of c1, which served no remote when read: its install must change "
                                  "first, and --context leaves c1 out")
    assert refused.value.hint == "add --context c1 (or run without --context)"
    assert plan(as_primaries, {"c1", "c2"}).actions == {"c1": "change", "c2": "change"}
    # c1 serves remotes already (one names it): c2 may join it alone
    serving = _healthy(topology, desired)
    serving["c2"].annotations["topology.istio.io/controlPlaneClusters"] = "c1"
    serving["c2"].applied = "before an edit"
    assert plan(serving, {"c2"}).actions == {"c2": "change"}


@pytest.mark.parametrize("before, after", [(None, "canary"), ("canary", None), ("canary", "blue"), ("canary", "canary")])
def test_a_revision_edit_says_the_control_plane_installed_last_keeps_running(tmp_path, before, after):
    """istioctl installs the new revision's control plane beside the old one, which keeps serving the workloads
    it injected: the plan says so and how to remove it; an edit that keeps the revision says nothing of it."""
    from lib.installsteps import overlay_path
    from lib.yamlfile import dump

    def base(revision):
        return {"apiVersion": "install.istio.io/v1alpha1", "kind": "IstioOperator",
                "spec": {"meshConfig": {"accessLogFile": "/dev/stdout"}, **({"revision": revision} if revision else {})}}

    topology = Topology("m", CLUSTERS, tmp_path / "topology.yaml")
    workdir = _workdir(tmp_path)
    for context, d in desired_state(topology, base(before)).items():
        overlay = overlay_path(workdir, d.cluster)
        overlay.parent.mkdir(exist_ok=True)
        overlay.write_text(dump(d.operator))  # what was installed last
    desired = desired_state(topology, {**base(after), "spec": {**base(after)["spec"], "meshConfig": {}}})
    observed = _healthy(topology, desired)
    for seen in observed.values():
        seen.applied = "before the edit"
    plan = build_apply_plan(topology=topology, desired=desired, observed=observed, removed=[],
                            removed_observed=observed, workdir=workdir, tools=Tools(), release=None,
                            intermediate_vars={}, gateway_timeout=5)
    for c in CLUSTERS:
        (install,) = [st for p in plan.phases for st in p.steps.get(c.context, []) if st.title == "install Istio"]
        said = [line for line in install.details if "keeps running" in line]
        if before == after:
            assert said == [] and install.details, install.details
        else:
            assert said == [f"(the control plane of revision {before or 'default'} keeps running beside it: the "
                            f"workloads it injected use it until they restart; `istioctl uninstall --revision "
                            f"{before or 'default'} -y --context {c.context}` removes it once none does)"]


def test_the_plans_secret_counts_add_up_over_clusters(tmp_path):
    """The summary line's secrets: c2's reader token changed (c1 and c3 replace theirs), c1 lacks c3's secret
    (one added), and c1 and c2 each hold one of a cluster gone (two pruned)."""
    def observed(topology, desired):
        obs = _healthy(topology, desired)
        obs["c2"].reader_token = "new-token"
        del obs["c1"].remote_secrets["c3"]
        for holder in ("c1", "c2"):
            obs[holder].remote_secrets["old"] = RemoteSecretInfo("istio-remote-secret-old", "old", "x", None)
        return obs

    plan = _plan(tmp_path, observed)
    assert plan.secrets == {"add": 1, "replace": 2, "prune": 2}


def test_a_removed_cluster_is_reached_through_its_own_kubeconfig(tmp_path):
    def observed(topology, desired):
        obs = _healthy(topology, desired)
        obs["gone"] = Observed(reachable=True, namespace=True)
        return obs

    plan = _plan(tmp_path, observed, [Removal("gone", "gone", "/home/me/gone.yaml", False)],
                 uninstall={"gone": Uninstall(tmp_path, OURS, IstioUsage())})
    commands = [c.argv for p in plan.phases for s in p.steps.get("gone", []) for c in s.commands]
    assert commands and all("--kubeconfig" in argv and argv[argv.index("--kubeconfig") + 1] == "/home/me/gone.yaml"
                            for argv in commands), commands


def _gateway_install_step(tmp_path):
    plan = _plan(tmp_path, lambda topology, desired: {c.context: Observed(reachable=True) for c in topology.clusters})
    return next(s for phase in plan.phases for s in phase.steps.get("c3", []) if s.title == "install east-west gateway")


class _FailingInstall:
    """istioctl install fails as it does when the gateway's pods never come; the Deployment reads as given."""

    def __init__(self, deployment):
        self.deployment, self.asked = deployment, []

    def run(self, command):
        from types import SimpleNamespace

        from lib.errors import CommandFailed, MeshError
        self.asked.append(command)
        if command.argv[0] == "istioctl":
            raise CommandFailed(command, 1, "Error: failed to install manifests: failed to wait for resource: "
                                            "resources not ready after 5m0s: context deadline exceeded")
        if isinstance(self.deployment, MeshError):
            raise self.deployment
        if self.deployment is None:
            return SimpleNamespace(ok=False, stdout="", stderr="Error from server (NotFound)", returncode=1)
        text = self.deployment if isinstance(self.deployment, str) else json.dumps(self.deployment)
        return SimpleNamespace(ok=True, stdout=text, stderr="", returncode=0)


def _run_gateway_install(step, runner):
    import threading

    from lib.executor import RunContext
    from lib.reporter import Reporter
    step.action(RunContext(runner, Reporter(quiet=True), "c3", {}, threading.Lock(), threading.Event()))


REFUSED = ('Internal error occurred: failed calling webhook "object.sidecar-injector.istio.io": failed to call webhook: '
           'Post "https://istiod.istio-system.svc:443/inject/cluster/c3/net/n2?timeout=10s": EOF')


def test_a_gateway_install_that_fails_because_its_pods_are_refused_says_what_the_api_server_said(tmp_path):
    from lib.errors import CommandFailed, MeshError
    step = _gateway_install_step(tmp_path)
    conditions = [{"type": "Available", "status": "False", "message": "Deployment does not have minimum availability."},
                  {"type": "ReplicaFailure", "status": "True", "reason": "FailedCreate", "message": REFUSED}]
    runner = _FailingInstall({"status": {"conditions": conditions}})
    with pytest.raises(MeshError) as failed:
        _run_gateway_install(step, runner)
    assert not isinstance(failed.value, CommandFailed)
    assert failed.value.message.endswith(f"context deadline exceeded\nthe API server refuses the gateway's pods: {REFUSED}")
    assert failed.value.message.startswith("`istioctl install")
    read = runner.asked[-1].pasteable()
    assert read == "kubectl --context c3 get deployment istio-eastwestgateway -n istio-system -o json"
    assert f"see `{read}`" in failed.value.hint
    # The read is short (a minute at most, not the install's timeout), and its failure is not apply's.
    assert runner.asked[-1].timeout == 60.0 and runner.asked[-1].check is False
    assert "status" in failed.value.hint and "remote secret" in failed.value.hint

    # Without a refusal to tell (no ReplicaFailure, one with no message, no Deployment, a read that fails or
    # answers what is not JSON):
    # istioctl's own failure, as it was.
    for deployment in ({"status": {"conditions": conditions[:1]}},
                       {"status": {"conditions": [dict(conditions[1], message="")]}},
                       None, MeshError("`kubectl get deployment` timed out after 60s"), "<html>proxy error</html>"):
        with pytest.raises(CommandFailed) as plain:
            _run_gateway_install(step, _FailingInstall(deployment))
        assert "refuses" not in plain.value.message
