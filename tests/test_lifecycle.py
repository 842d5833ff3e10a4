"""Growing, shrinking, previewing and tearing down a mesh by editing topology.yaml."""
import json
import os
import signal
import subprocess
import sys
import threading

import pytest

from tests.meshkit import ROOT, make_mesh, workdir_snapshot

NETS = {"cluster1": "network1", "cluster2": "network1", "cluster3": "network2"}


def _build_mesh3(start, workdir):
    """Three clusters applied; cluster4 runs beside them, not in the mesh."""
    mesh = make_mesh(start(list(NETS) + ["cluster4"]), workdir, NETS)
    mesh.apply()
    return mesh


@pytest.fixture
def mesh3(shaped):
    return shaped("lifecycle-mesh3", _build_mesh3)


def test_adding_a_cluster_installs_only_that_cluster(mesh3):
    before = len(mesh3.control_plane_installs())
    mesh3.write_topology({**NETS, "cluster4": "network2"})
    result = mesh3.apply_checked()
    assert mesh3.results(result.stdout) == {"cluster1": "1 secret imported", "cluster2": "1 secret imported",
                                            "cluster3": "1 secret imported",
                                            "cluster4": "installed, 3 secrets imported"}, result.stdout
    new = mesh3.control_plane_installs()[before:]
    assert [c["context"] for c in new] == ["cluster4"]
    for target in ("cluster1", "cluster2", "cluster3", "cluster4"):
        assert sorted(mesh3.remote_secrets(target)) == sorted(c for c in ("cluster1", "cluster2", "cluster3", "cluster4") if c != target)


def test_removing_a_cluster_clears_its_secrets_and_uninstalls_it(mesh3):
    mesh3.write_topology({"cluster1": "network1", "cluster3": "network2"})
    refused = mesh3.run("apply")  # no terminal, no -y
    assert refused.returncode == 2 and "-y" in refused.stderr
    assert "cluster2" in mesh3.remote_secrets("cluster1"), "a refused run changes nothing"
    result = mesh3.apply_checked()
    assert mesh3.results(result.stdout) == {"cluster1": "1 stale secret pruned", "cluster3": "1 stale secret pruned",
                                            "cluster2": "removed"}, result.stdout
    for target in ("cluster1", "cluster3"):
        assert "cluster2" not in mesh3.remote_secrets(target)
    assert mesh3.get("cluster2", "namespace", "istio-system", check=False) is None
    assert mesh3.get("cluster2", "deployment", "istiod", "-n", "istio-system", check=False) is None
    uninstalls = [c for c in mesh3.sandbox.istioctl_calls() if c["argv"][1:2] == ["uninstall"]]
    assert [c["context"] for c in uninstalls] == ["cluster2"]


def test_context_limits_apply_to_that_cluster(mesh3):
    mesh3.write_topology({**NETS, "cluster4": "network2"})
    result = mesh3.apply("--context", "cluster4")
    assert mesh3.results(result.stdout) == {"cluster4": "installed, 3 secrets imported"}, result.stdout
    assert sorted(mesh3.remote_secrets("cluster4")) == ["cluster1", "cluster2", "cluster3"]
    assert "cluster4" not in mesh3.remote_secrets("cluster1"), "the other clusters are not touched"
    rest = mesh3.apply_checked()
    assert mesh3.results(rest.stdout) == {"cluster1": "1 secret imported", "cluster2": "1 secret imported",
                                          "cluster3": "1 secret imported", "cluster4": "unchanged"}, rest.stdout


def test_a_new_api_server_replaces_that_clusters_secret_in_its_peers(mesh3):
    # an address the peers reach (a made-up one would leave their istiod timing out, as status says)
    mesh3.write_topology(NETS, extra={"cluster1": {"api_server": mesh3.sandbox.api_server("cluster1")}})
    result = mesh3.apply_checked()
    assert mesh3.results(result.stdout) == {"cluster1": "unchanged", "cluster2": "1 secret replaced",
                                            "cluster3": "1 secret replaced"}, result.stdout
    again = mesh3.apply()
    assert set(mesh3.results(again.stdout).values()) == {"unchanged"}, again.stdout


def test_stale_secrets_are_pruned_even_without_the_state_file(mesh3):
    (mesh3.workdir / ".setup-mesh" / "state.json").unlink()
    mesh3.write_topology({"cluster1": "network1", "cluster3": "network2"})
    mesh3.apply_checked()
    assert sorted(mesh3.remote_secrets("cluster1")) == ["cluster3"]
    assert sorted(mesh3.remote_secrets("cluster3")) == ["cluster1"]


def test_dry_run_changes_nothing_anywhere(mesh3):
    mesh3.write_topology({"cluster1": "network1", "cluster3": "network2", "cluster4": "network2"})
    (mesh3.workdir / "base.yaml").write_text((mesh3.workdir / "base.yaml").read_text().replace(
        "accessLogFile: /dev/stdout", "accessLogFile: /dev/null"))
    dumps = {ctx: mesh3.sandbox.dump(ctx) for ctx in mesh3.sandbox.contexts}
    files = workdir_snapshot(mesh3.workdir)
    short = mesh3.run("apply", "--dry-run")
    assert short.returncode == mesh3.applied_code(), short.stderr
    # By default: what changes, per cluster, and the counts.
    assert "cluster1 (network1, primary): change\n  ~ Istio (overlays/cluster1.yaml)\n" \
           "      ~ spec.meshConfig.accessLogFile: /dev/stdout → /dev/null\n" in short.stdout
    assert "cluster4 (network2, primary): install\n" in short.stdout and "cluster2: remove\n" in short.stdout
    assert "Plan: 1 install, 2 change, 1 remove; secrets: 4 add, 0 replace, 2 prune." in short.stdout
    result = mesh3.run("apply", "--dry-run", "-v")  # every command and manifest
    assert result.returncode == mesh3.applied_code(), result.stderr
    assert {ctx: mesh3.sandbox.dump(ctx) for ctx in mesh3.sandbox.contexts} == dumps
    assert workdir_snapshot(mesh3.workdir) == files
    out = result.stdout
    assert "istioctl install -y -f" in out and "--context cluster4" in out
    assert "accessLogFile: /dev/null" in out, "the new overlay is shown"
    assert "uninstall --purge -y --context cluster2" in out
    assert "delete secret -n istio-system --ignore-not-found istio-remote-secret-cluster2" in out


def test_dry_run_without_reachable_clusters_plans_what_apply_would_do_and_fails_as_it_would(mesh3):
    # Not a plan for clusters that hold nothing: apply touches no cluster it cannot read, and fails for each.
    for ctx in mesh3.sandbox.contexts:
        mesh3.sandbox.stop_cluster(ctx)
    result = mesh3.run("apply", "--dry-run", "-v")
    assert result.returncode == 1, result.stderr
    assert "Plan (dry run, changes nothing)" in result.stdout
    # Each cluster's cause is said once, with its hint, after the plan (not also as a warning above it).
    assert "could not read current state" not in result.stdout + result.stderr
    assert result.stderr.count("was refused") == 3, result.stderr
    assert "istioctl" not in result.stdout and "\nnothing to do: no cluster could be read\n" in result.stdout
    for ctx in ("cluster1", "cluster2", "cluster3"):  # topology.yaml's (the sandbox has one more)
        assert f"error: {ctx} would sit this run out: read current state: cannot read the cluster" in result.stderr
        assert f"hint: check access with `kubectl --context {ctx} get namespace istio-system`" in result.stderr


def test_teardown_removes_everything_and_twice_is_fine(mesh3):
    refused = mesh3.run("teardown")
    assert refused.returncode == 2 and "-y" in refused.stderr
    dumps = {ctx: mesh3.sandbox.dump(ctx) for ctx in NETS}
    preview = mesh3.run("teardown", "--dry-run")
    assert preview.returncode == 0, preview.stderr
    assert {ctx: mesh3.sandbox.dump(ctx) for ctx in NETS} == dumps, "a dry run changes nothing"
    for ctx in NETS:
        assert f"{ctx} (network{NETS[ctx][-1]}, primary): remove\n  - Istio (istioctl uninstall --purge)\n" \
               "  - secret cacerts and 2 remote secrets\n  - namespace istio-system\n" in preview.stdout
    assert "Plan: 3 remove." in preview.stdout and "certs/ is kept" in preview.stdout
    result = mesh3.run("teardown", "-y", env={"COLUMNS": "160"})
    assert result.returncode == 0, result.stdout + result.stderr
    assert mesh3.results(result.stdout) == {ctx: "removed" for ctx in NETS}, result.stdout
    assert "kept certs/ (the root CA and intermediates)" in result.stdout
    for ctx in NETS:
        assert mesh3.get(ctx, "namespace", "istio-system", check=False) is None
        crds = mesh3.sandbox.kubectl(ctx, "get", "crd", "-o", "name").stdout
        assert "istio.io" not in crds
        webhooks = mesh3.sandbox.kubectl(ctx, "get", "mutatingwebhookconfigurations,validatingwebhookconfigurations",
                                         "-o", "name").stdout
        assert "istio" not in webhooks
        secrets = mesh3.sandbox.kubectl(ctx, "get", "secrets", "-A", "-l", "istio/multiCluster=true", "-o", "name")
        assert secrets.stdout.strip() == ""
    assert (mesh3.workdir / "certs" / "root-key.pem").exists(), "certs/ is kept without --purge-certs"
    # Nothing left: said without a question, even with no terminal and no -y.
    again = mesh3.run("teardown", "--purge-certs")
    assert again.returncode == 0, again.stdout + again.stderr
    assert "nothing to remove" in again.stdout
    assert not (mesh3.workdir / "certs").exists()


def test_teardown_after_an_interrupted_one_waits_for_the_namespace_already_being_deleted(sandbox_factory, tmp_path):
    # An interrupted teardown can leave istio-system Terminating; kube-apiserver refuses a second delete.
    sandbox = sandbox_factory(["cluster1", "cluster2"])
    mesh = make_mesh(sandbox, tmp_path / "ws", {"cluster1": "network1", "cluster2": "network1"})
    mesh.apply()
    # Something in it with a finalizer of its own keeps it Terminating until released.
    sandbox.kubectl("cluster1", "apply", "-f", "-", stdin=json.dumps({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "hold", "namespace": "istio-system", "finalizers": ["example.com/hold"]}}))
    sandbox.kubectl("cluster1", "delete", "namespace", "istio-system", "--wait=false")
    assert mesh.get("cluster1", "namespace", "istio-system")["status"]["phase"] == "Terminating"
    preview = mesh.run("teardown", "--dry-run")
    assert "- namespace istio-system (already being deleted: waited for)" in preview.stdout, preview.stdout
    # Released once teardown is waiting for it (not after a fixed time: on a busy machine teardown may not have
    # read cluster1 yet, and would then find nothing to remove).
    proc = subprocess.Popen([sys.executable, str(ROOT / "setup_mesh.py"), "teardown", "-y", "--workdir", str(mesh.workdir)],
                            env={**mesh.env, "COLUMNS": "160"}, cwd=ROOT, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen = []
    waiting = threading.Event()  # set once teardown says it waits, or once it has said all it will say
    wait_step = "cluster1: istio-system is being deleted: wait until it is gone ..."

    def read_progress():
        for line in proc.stdout:
            seen.append(line)
            if wait_step in line:
                waiting.set()
        waiting.set()

    reader = threading.Thread(target=read_progress, daemon=True)
    reader.start()
    waiting.wait(120)  # the step comes within seconds; a teardown that never says it would hang here
    said_waiting = any(wait_step in line for line in seen)
    if not said_waiting:
        proc.kill()
    assert said_waiting, "teardown never said it waits for istio-system:\n" + "".join(seen)
    sandbox.kubectl("cluster1", "patch", "configmap", "hold", "-n", "istio-system", "--type=merge",
                    "-p", '{"metadata":{"finalizers":null}}')
    stderr = proc.stderr.read()  # the reader thread has stdout
    proc.wait(300)
    reader.join(10)
    result = subprocess.CompletedProcess(proc.args, proc.returncode, "".join(seen), stderr)
    assert result.returncode == 0, result.stdout + result.stderr
    assert mesh.results(result.stdout) == {"cluster1": "removed", "cluster2": "removed"}, result.stdout
    for ctx in ("cluster1", "cluster2"):
        assert mesh.get(ctx, "namespace", "istio-system", check=False) is None


def test_going_down_to_one_network_removes_the_gateways(mesh3):
    mesh3.write_topology({ctx: "network1" for ctx in NETS})
    mesh3.apply_checked()
    for ctx in NETS:
        assert mesh3.get(ctx, "service", "istio-eastwestgateway", "-n", "istio-system", check=False) is None
        gateways = mesh3.sandbox.kubectl(ctx, "get", "gateways.networking.istio.io", "-A", "-o", "name").stdout
        assert gateways.strip() == ""
        assert mesh3.get(ctx, "namespace", "istio-system")["metadata"]["labels"]["topology.istio.io/network"] == "network1"
    assert sorted(mesh3.remote_secrets("cluster3")) == ["cluster1", "cluster2"]


def test_a_default_tag_the_charts_made_goes_with_the_install_and_teardown_adds_no_tag_removal(sandbox_factory, tmp_path):
    # values.revisionTags: istio-discovery's templates/revision-tags-mwc.yaml makes the tag's webhook as part of
    # the install (operator.istio.io/component: Pilot), so the purge removes it; a `tag remove` after that
    # would fail (cannot find MutatingWebhookConfiguration or Service for tag).
    import yaml

    sandbox = sandbox_factory(["cluster1", "cluster2"])
    mesh = make_mesh(sandbox, tmp_path / "ws", {"cluster1": "network1", "cluster2": "network2"})
    base = yaml.safe_load((mesh.workdir / "base.yaml").read_text())
    base["spec"].setdefault("values", {})["revisionTags"] = ["default"]
    (mesh.workdir / "base.yaml").write_text(yaml.safe_dump(base))
    mesh.apply()
    tag = mesh.get("cluster1", "mutatingwebhookconfiguration", "istio-revision-tag-default")
    assert tag["metadata"]["labels"]["operator.istio.io/component"] == "Pilot"
    preview = mesh.run("teardown", "--dry-run")
    assert preview.returncode == 0 and "revision tag" not in preview.stdout, preview.stdout
    done = mesh.run("teardown", "-y")
    assert done.returncode == 0, done.stdout + done.stderr
    for ctx in ("cluster1", "cluster2"):
        assert mesh.get(ctx, "mutatingwebhookconfiguration", "istio-revision-tag-default", check=False) is None, ctx
        assert mesh.get(ctx, "namespace", "istio-system", check=False) is None, ctx


def test_a_cluster_removed_while_unreachable_stays_recorded_and_the_next_apply_removes_it(mesh3):
    # Its peers stop trusting it at once; what setup-mesh installed there is removed once it answers again,
    # not forgotten (a leftover injector would refuse every new pod of an injected namespace there).
    mesh3.write_topology({ctx: net for ctx, net in NETS.items() if ctx != "cluster3"})
    pid = mesh3.sandbox._cluster("cluster3")["pid"]
    os.kill(pid, signal.SIGSTOP)  # frozen, as a cluster behind a network outage: it keeps what it holds
    try:
        result = mesh3.run("apply", "-y", "--timeout", "3")
    finally:
        os.kill(pid, signal.SIGCONT)
    assert result.returncode == 1, result.stdout + result.stderr
    said = " ".join((result.stdout + result.stderr).split())
    assert "cannot reach the removed context 'cluster3'" in said
    assert "kubectl --context cluster3 get namespace istio-system" in said and "--purge" not in said
    for ctx in ("cluster1", "cluster2"):
        assert "cluster3" not in mesh3.remote_secrets(ctx)
    recorded = lambda: json.loads((mesh3.workdir / ".setup-mesh" / "state.json").read_text())["clusters"]  # noqa: E731
    assert "cluster3" in recorded()
    assert mesh3.get("cluster3", "deployment", "istiod", "-n", "istio-system")
    mesh3.apply()  # it answers again: removed, and forgotten only now
    assert mesh3.get("cluster3", "namespace", "istio-system", check=False) is None
    assert "cluster3" not in recorded()


def test_teardown_without_the_recorded_state_finds_what_setup_mesh_made_by_what_it_left(sandbox_factory, tmp_path):
    # The workspace's .setup-mesh/ is gone (a copy of the workspace without it, a cleaned folder): teardown
    # finds setup-mesh's clusters by what it left in them. cluster3's apply stopped at its install, so
    # its istio-system holds setup-mesh's cacerts and nothing else.
    sandbox = sandbox_factory(["cluster1", "cluster2", "cluster3"])
    mesh = make_mesh(sandbox, tmp_path / "ws", {"cluster1": "network1", "cluster2": "network2"})
    mesh.apply()
    topology = mesh.workdir / "topology.yaml"
    topology.write_text(topology.read_text().replace("contexts:\n", "contexts:\n  cluster3:\n    network: network2\n", 1))
    mesh.apply(env={"ISTIOCTL_STANDIN_FAIL": "cluster3/install"}, ok=False)
    assert mesh.get("cluster3", "secret", "cacerts", "-n", "istio-system")
    assert mesh.get("cluster3", "deployment", "istiod", "-n", "istio-system", check=False) is None
    (mesh.workdir / ".setup-mesh" / "state.json").unlink()

    result = mesh.run("teardown", "-y")
    assert result.returncode == 0, result.stdout + result.stderr
    assert mesh.results(result.stdout) == {ctx: "removed" for ctx in ("cluster1", "cluster2", "cluster3")}, result.stdout
    for ctx in ("cluster1", "cluster2", "cluster3"):
        assert mesh.get(ctx, "namespace", "istio-system", check=False) is None, ctx


def test_a_teardown_that_fails_in_one_cluster_keeps_the_keys_and_that_cluster_for_the_next_run(sandbox_factory, tmp_path):
    # --purge-certs deletes the root key only once no cluster holds the mesh any more, and a cluster that
    # failed stays in the recorded state: the next teardown removes it even once topology.yaml drops it.
    sandbox = sandbox_factory(["cluster1", "cluster2"])
    mesh = make_mesh(sandbox, tmp_path / "ws", {"cluster1": "network1", "cluster2": "network2"})
    mesh.apply()
    failed = mesh.run("teardown", "-y", "--purge-certs", env={"ISTIOCTL_STANDIN_FAIL": "cluster2/uninstall"})
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert mesh.get("cluster1", "namespace", "istio-system", check=False) is None
    assert mesh.get("cluster2", "deployment", "istiod", "-n", "istio-system"), "cluster2 still runs the mesh"
    assert (mesh.workdir / "certs" / "root-key.pem").exists(), "the keys of a mesh still running are kept"
    assert "deleted " not in failed.stdout + failed.stderr

    mesh.write_topology({"cluster1": "network1"})
    again = mesh.run("teardown", "-y", "--purge-certs")
    assert again.returncode == 0, again.stdout + again.stderr
    assert mesh.get("cluster2", "namespace", "istio-system", check=False) is None, again.stdout
    assert not (mesh.workdir / "certs").exists()


def test_teardown_removes_a_recorded_clusters_istio_system_even_without_setup_mesh_marks(sandbox_factory, tmp_path):
    # An apply cut short before its install, by a version that did not label cacerts: istio-system holds
    # nothing teardown recognises as setup-mesh's, but the recorded state says apply worked there.
    sandbox = sandbox_factory(["cluster1"])
    mesh = make_mesh(sandbox, tmp_path / "ws", {"cluster1": "network1"})
    mesh.apply(env={"ISTIOCTL_STANDIN_FAIL": "cluster1/install"}, ok=False)
    sandbox.kubectl("cluster1", "label", "secret", "cacerts", "-n", "istio-system", "app.kubernetes.io/managed-by-")
    result = mesh.run("teardown", "-y")
    assert result.returncode == 0, result.stdout + result.stderr
    assert mesh.get("cluster1", "namespace", "istio-system", check=False) is None, result.stdout
