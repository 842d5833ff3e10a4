"""Bad input and faults while running: clear errors, nothing lost, the next run converges."""
import json
import os
import signal
import stat
import subprocess
import sys
import time

import pytest
import yaml

from tests.meshkit import ROOT, make_mesh, scan_for_secrets
from tests.terminal import wait_until_reading

NETS = {"cluster1": "network1", "cluster2": "network2"}


@pytest.fixture
def mesh(sandbox_factory, tmp_path):
    return make_mesh(sandbox_factory(list(NETS)), tmp_path / "ws", NETS)


# --- bad input, refused before any cluster is touched ------------------------------------------

def _requests(mesh):
    return {ctx: len(mesh.sandbox.requests(ctx)) for ctx in mesh.sandbox.contexts}


@pytest.mark.parametrize("case,expect", [
    ("missing-topology", "topology file not found"),
    ("missing-base", "base IstioOperator not found"),
    ("missing-root", "root CA is missing"),
    ("unknown-context", "context 'nowhere' is not in the kubeconfig"),
    ("bad-yaml", "is not valid YAML"),
    ("missing-istioctl", "istioctl was not found"),
])
def test_bad_input_is_refused_before_any_request(mesh, case, expect):
    env = {}
    if case == "missing-topology":
        (mesh.workdir / "topology.yaml").unlink()
    elif case == "missing-base":
        (mesh.workdir / "base.yaml").unlink()
    elif case == "missing-root":
        (mesh.workdir / "certs" / "root-key.pem").unlink()
    elif case == "unknown-context":
        mesh.write_topology({**NETS, "nowhere": "network1"})
    elif case == "bad-yaml":
        (mesh.workdir / "topology.yaml").write_text("mesh_id: m\ncontexts:\n  c1: [\n")
    elif case == "missing-istioctl":
        path = [p for p in mesh.env["PATH"].split(os.pathsep) if not os.path.exists(os.path.join(p, "istioctl"))]
        env = {"PATH": os.pathsep.join(path), "ISTIO_DIR": ""}
    before = _requests(mesh)
    result = mesh.run("apply", "-y", env=env)
    assert result.returncode == 2, result.stdout + result.stderr
    assert expect in result.stderr
    assert "hint:" in result.stderr and "Traceback" not in result.stderr
    if case in ("missing-topology", "missing-base", "missing-root"):
        assert "prep-mesh" in result.stderr
    assert _requests(mesh) == before


def test_dry_run_and_apply_agree_on_a_context_missing_from_the_kubeconfig(mesh):
    mesh.write_topology({**NETS, "nowhere": "network1"})
    before = _requests(mesh)
    dry, real = mesh.run("apply", "--dry-run"), mesh.run("apply", "-y")
    assert (dry.returncode, real.returncode) == (2, 2), dry.stderr + real.stderr
    error = [line for line in real.stderr.splitlines() if line.startswith(("error:", "hint:"))]
    assert error and error[0].startswith("error: ") and "context 'nowhere' is not in the kubeconfig" in error[0]
    assert dry.stderr.splitlines()[-len(error):] == error, "the dry run ends with apply's own error"
    assert "Plan (dry run, changes nothing)" in dry.stdout, "the plan is still shown"
    assert _requests(mesh) == before


# --- faults while running -----------------------------------------------------------------------

def test_unreachable_cluster_is_named_and_the_others_go_ahead(mesh):
    mesh.sandbox.stop_cluster("cluster2")
    # The dry run plans what apply does: nothing for the cluster it cannot read, and it fails as apply does.
    dry = mesh.run("apply", "--dry-run")
    assert dry.returncode == 1, dry.stdout + dry.stderr
    assert "cluster1 (network1, primary): install" in dry.stdout
    assert "cluster2 (" not in dry.stdout, "no plan for a cluster apply does not touch"
    assert "error: cluster2 would sit this run out: read current state: cannot read the cluster" in dry.stderr
    assert "hint: check access with `kubectl --context cluster2 get namespace istio-system`" in dry.stderr
    # Said once: not also as a warning above the plan, and kubectl's line (one per kind it read) once.
    assert dry.stderr.count("was refused") == 1, dry.stderr
    result = mesh.run("apply", "-y")
    assert result.returncode == 1
    out = result.stdout + result.stderr
    assert "cluster2: read current state: ok" not in out, "a read that failed is not reported ok"
    assert out.count("cluster2: read current state: FAILED") == 1, out
    assert "cluster2: read current state: cannot read the cluster" in out
    assert "kubectl --context cluster2 get namespace istio-system" in out
    assert mesh.get("cluster1", "deployment", "istiod", "-n", "istio-system")
    assert mesh.remote_secrets("cluster1") == {}, "no secret of a cluster that could not be read"
    # teardown's dry run too: it would fail for the cluster it cannot read, so it says so and exits 1.
    dry = mesh.run("teardown", "--dry-run")
    assert dry.returncode == 1 and "cluster1 (network1, primary): remove" in dry.stdout, dry.stdout + dry.stderr
    assert "error: cluster2 would sit this run out: read current state: cannot read the cluster" in dry.stderr
    # With nothing to remove where it could read, it claims nothing of the cluster it could not.
    mesh.run("teardown", "-y")
    dry = mesh.run("teardown", "--dry-run")
    assert dry.returncode == 1, dry.stdout + dry.stderr
    assert "nothing to remove: no cluster holds what setup-mesh creates, of the clusters that could be read " \
           "(not cluster2)" in dry.stdout, dry.stdout


def test_failing_install_is_reported_and_the_next_run_converges(mesh):
    result = mesh.apply(env={"ISTIOCTL_STANDIN_FAIL": "cluster2/install"}, ok=False)
    assert result.returncode == 1
    out = result.stdout + result.stderr
    assert "install Istio" in out and "istioctl install -y -f" in out and "--context cluster2" in out
    assert "run log:" in out
    assert mesh.get("cluster1", "deployment", "istiod", "-n", "istio-system")  # the other cluster finished
    assert not list(mesh.workdir.rglob("*.tmp")), "no half-written file is left"
    mesh.apply()
    assert sorted(mesh.remote_secrets("cluster1")) == ["cluster2"]
    assert sorted(mesh.remote_secrets("cluster2")) == ["cluster1"]


def test_command_exceeding_its_timeout(mesh):
    result = mesh.apply("--timeout", "1", env={"ISTIOCTL_STANDIN_LATENCY": "cluster1/install=5"}, ok=False)
    assert result.returncode == 1
    assert "timed out after 1s" in result.stdout + result.stderr


def test_gateway_that_never_gets_an_address(sandbox_factory, tmp_path):
    sandbox = sandbox_factory(list(NETS), lb_delay={"cluster1": 0.0, "cluster2": None})
    mesh = make_mesh(sandbox, tmp_path / "ws", NETS)
    result = mesh.apply("--gateway-timeout", "2", ok=False)
    assert result.returncode == 1
    out = result.stdout + result.stderr
    assert "cluster2" in out and "no address after 2s" in out
    assert "cluster1: " not in out.split("apply failed")[-1].replace("cluster1: ok", "")


@pytest.mark.parametrize("whole_group", [False, True], ids=["signal-to-setup-mesh", "ctrl-c-to-the-process-group"])
def test_interrupt_stops_cleanly_and_the_next_run_converges(mesh, whole_group):
    env = dict(mesh.env, ISTIOCTL_STANDIN_LATENCY="install=4")
    proc = subprocess.Popen([sys.executable, str(ROOT / "setup_mesh.py"), "apply", "-y", "--workdir", str(mesh.workdir)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=whole_group)
    seen = []
    for line in proc.stdout:  # progress lines are plain when output is not a terminal
        seen.append(line)
        if "install Istio ..." in line:
            break
    time.sleep(0.5)
    if whole_group:  # what a terminal does on Ctrl-C: kubectl and istioctl get the signal too
        os.killpg(proc.pid, signal.SIGINT)
    else:
        proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    out = "".join(seen) + out
    assert proc.returncode == 130, out + err
    assert "interrupted" in out + err and "Traceback" not in err
    assert not list(mesh.workdir.rglob("*.tmp"))
    mesh.apply()
    assert sorted(mesh.remote_secrets("cluster2")) == ["cluster1"]


def test_context_names_with_spaces_and_shell_characters(sandbox_factory, tmp_path):
    contexts = ["team a; echo x", "b $(touch pwned)"]
    sandbox = sandbox_factory(contexts)
    mesh = make_mesh(sandbox, tmp_path / "ws", {})
    (mesh.workdir / "topology.yaml").write_text(yaml.safe_dump({"mesh_id": "m", "contexts": {
        contexts[0]: {"network": "n1", "cluster_name": "team-a"},
        contexts[1]: {"network": "n2", "cluster_name": "team-b"}}}))
    mesh.apply()
    assert sorted(mesh.remote_secrets(contexts[0])) == ["team-b"]
    assert not (tmp_path / "pwned").exists() and not (ROOT / "pwned").exists()


def test_no_key_or_token_in_any_output_or_log(mesh):
    outputs = [mesh.apply("-v"), mesh.run("apply", "--dry-run"), mesh.run("apply", "--dry-run", "-v"),
               mesh.run("status"), mesh.run("teardown", "-y", "-v")]
    text = "".join(r.stdout + r.stderr for r in outputs)
    for log in (mesh.workdir / ".setup-mesh" / "logs").glob("*.log"):
        text += log.read_text()
    assert scan_for_secrets(text) == []
    kubeconfig = yaml.safe_load(open(mesh.sandbox.kubeconfig))
    for user in kubeconfig["users"]:
        assert user["user"]["token"] not in text


def test_token_in_a_failing_tools_stderr_is_neither_shown_nor_logged(mesh):
    result = mesh.apply(env={"ISTIOCTL_STANDIN_FAIL": "cluster2/create-remote-secret=token-refresh"}, ok=False)
    assert result.returncode == 1
    out = result.stdout + result.stderr
    # The failure itself reaches the user: only the credential in it is removed.
    assert "oauth2: cannot fetch token" in out and "create-remote-secret" in out
    assert "invalid_grant" in out and "has expired" in out
    logs = list((mesh.workdir / ".setup-mesh" / "logs").glob("apply-*.log"))
    assert len(logs) == 1
    log = logs[0].read_text()
    assert "oauth2: cannot fetch token" in log, "the log keeps the stderr tail"
    assert scan_for_secrets(out) == [], f"a JWT reached the output:\n{out}"
    assert scan_for_secrets(log) == [], f"a JWT reached the run log {logs[0]}"
    # The log keeps the tools' errors, which name clusters, users and endpoints: readable by its owner only.
    assert stat.S_IMODE(logs[0].stat().st_mode) == 0o600


def test_a_deleted_east_west_gateway_is_reinstalled_by_the_next_apply(mesh):
    mesh.apply()
    mesh.sandbox.kubectl("cluster2", "delete", "deployment,service", "istio-eastwestgateway", "-n", "istio-system")
    result = mesh.apply("--gateway-timeout", "5", ok=False)
    assert result.returncode == mesh.applied_code(), f"apply did not bring back the deleted east-west gateway:\n{result.stdout}{result.stderr}"
    service = mesh.get("cluster2", "service", "istio-eastwestgateway", "-n", "istio-system")
    assert service["status"]["loadBalancer"]["ingress"], "the re-installed gateway got an address"
    assert mesh.get("cluster2", "deployment", "istio-eastwestgateway", "-n", "istio-system")


def test_apply_while_istio_system_is_still_terminating(mesh):
    mesh.apply()
    # Someone deleted istio-system without waiting, and something in it holds a finalizer: the namespace
    # stays Terminating until that finalizer is removed, as on a real cluster.
    mesh.sandbox.kubectl("cluster2", "apply", "-f", "-", stdin=json.dumps({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "hold", "namespace": "istio-system", "finalizers": ["example.com/hold"]}}))
    mesh.sandbox.kubectl("cluster2", "delete", "namespace", "istio-system", "--wait=false")
    proc = subprocess.Popen([sys.executable, str(ROOT / "setup_mesh.py"), "apply", "-y", "--workdir", str(mesh.workdir)],
                            env=mesh.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if "cluster2: istio-system is being deleted: wait until it is gone ..." in line:
            break
    time.sleep(1)
    assert proc.poll() is None, "apply waits for the namespace to go"
    mesh.sandbox.kubectl("cluster2", "patch", "configmap", "hold", "-n", "istio-system", "--type=merge",
                         "-p", '{"metadata":{"finalizers":null}}')
    out, err = proc.communicate(timeout=300)
    out = "".join(seen) + out
    assert proc.returncode == mesh.applied_code(), f"apply failed on a terminating namespace:\n{out}{err}"
    assert "istio-system is being deleted" in out, "the wait is said, not silent"
    namespace = mesh.get("cluster2", "namespace", "istio-system")
    assert "deletionTimestamp" not in namespace["metadata"]
    assert namespace["metadata"]["labels"]["topology.istio.io/network"] == "network2"
    assert mesh.get("cluster2", "secret", "cacerts", "-n", "istio-system")
    assert mesh.get("cluster2", "deployment", "istiod", "-n", "istio-system")
    assert sorted(mesh.remote_secrets("cluster2")) == ["cluster1"]
    assert sorted(mesh.remote_secrets("cluster1")) == ["cluster2"]


def _read_terminal(master: int, until, seconds: float) -> bytes:
    """What the program writes to its terminal, until `until(seen)` or the time is up; never blocks longer."""
    import select

    seen = b""
    deadline = time.monotonic() + seconds
    while not until(seen) and time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.2)
        if not ready:
            continue
        try:
            chunk = os.read(master, 4096)
        except OSError:  # the program is gone and the terminal closed
            break
        if not chunk:
            break
        seen += chunk
    return seen


def test_ctrl_c_at_a_confirmation_prompt_is_interrupted(sandbox_factory, tmp_path):
    """Ctrl-C typed at teardown's question, on a real terminal (a pty whose driver sends SIGINT)."""
    import fcntl
    import pty
    import termios

    sandbox = sandbox_factory(["cluster1"])
    mesh = make_mesh(sandbox, tmp_path / "ws", {"cluster1": "network1"})
    mesh.apply()  # teardown asks only when there is something to remove
    already = len(sandbox.requests("cluster1"))
    master, slave = pty.openpty()

    def controlling_terminal():
        os.setsid()
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    proc = subprocess.Popen([sys.executable, str(ROOT / "setup_mesh.py"), "teardown", "--workdir", str(mesh.workdir)],
                            env=dict(mesh.env, TERM="dumb", COLUMNS="200"), stdin=slave, stdout=slave, stderr=slave,
                            preexec_fn=controlling_terminal, close_fds=True)
    os.close(slave)
    try:
        seen = _read_terminal(master, until=lambda seen: b"[y/N]" in seen, seconds=60)
        assert b"[y/N]" in seen, seen.decode(errors="replace")
        wait_until_reading(proc.pid)  # as a person answers: once it waits for the answer
        os.write(master, b"\x03")  # the terminal turns it into SIGINT for the foreground process group
        seen += _read_terminal(master, until=lambda _: proc.poll() is not None, seconds=30)
    finally:
        if proc.poll() is None:  # a failed check must not leave it waiting at its prompt
            proc.kill()
    proc.wait(timeout=60)
    seen += _read_terminal(master, until=lambda _: False, seconds=2)  # what it wrote last, up to the terminal's end
    os.close(master)
    text = seen.decode(errors="replace")
    assert proc.returncode == 130, text
    assert "interrupted" in text and "Traceback" not in text
    writes = [r for r in sandbox.requests("cluster1")[already:] if r["method"] not in ("GET", "HEAD")]
    assert writes == [], "nothing was changed"


def test_a_component_namespace_that_a_cluster_lacks_is_refused_before_any_cluster_is_touched(mesh):
    # istioctl install creates istio-system only: a gateway of base.yaml in a namespace of its own failed
    # halfway through the install (istiod installed, then `namespaces "istio-ingress" not found`).
    base = yaml.safe_load((mesh.workdir / "base.yaml").read_text())
    base["spec"]["components"] = {"ingressGateways": [
        {"name": "istio-ingressgateway", "enabled": False},
        {"name": "edge-ingress", "namespace": "istio-ingress", "enabled": True}]}
    (mesh.workdir / "base.yaml").write_text(yaml.safe_dump(base))
    mesh.kubectl("cluster1", "create", "namespace", "istio-ingress")
    dumps = {ctx: mesh.sandbox.dump(ctx) for ctx in mesh.sandbox.contexts}
    for args in (("apply", "-y"), ("apply", "--dry-run")):
        result = mesh.run(*args)
        assert result.returncode == 2, result.stdout + result.stderr
        assert "istio-ingress (ingress gateway edge-ingress): not in cluster2\n" in result.stderr
        assert "hint: create them, then run apply again: `kubectl --context cluster2 create namespace " \
               "istio-ingress`" in result.stderr
        assert "Traceback" not in result.stderr
    assert {ctx: mesh.sandbox.dump(ctx) for ctx in mesh.sandbox.contexts} == dumps, "no cluster was changed"
    assert mesh.sandbox.istioctl_calls() == []
    # Created as the hint says, the install puts the gateway there, in both clusters.
    mesh.kubectl("cluster2", "create", "namespace", "istio-ingress")
    mesh.apply()
    for ctx in NETS:
        assert mesh.get(ctx, "deployment", "edge-ingress", "-n", "istio-ingress")


def test_a_second_run_on_a_workspace_that_a_run_is_changing_is_refused_before_it_touches_anything(mesh):
    # Two runs at once made certificates in the same folders and changed the same clusters; the one that
    # comes second is refused. The lock is the one a running apply holds: flock on the workspace folder.
    import fcntl

    dumps = {ctx: mesh.sandbox.dump(ctx) for ctx in mesh.sandbox.contexts}
    held = os.open(mesh.workdir, os.O_RDONLY)
    try:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        for args in (("apply", "-y"), ("teardown", "-y"), ("rotate-certs", "-y"), ("rotate-certs", "--root", "-y")):
            refused = mesh.run(*args)
            assert refused.returncode == 2, args
            assert refused.stderr.startswith(f"error: another setup-mesh run (apply, teardown or rotate-certs) is "
                                             f"changing the workspace {mesh.workdir} and its clusters"), refused.stderr
        for args in (("apply", "--dry-run"), ("status",)):  # they change nothing: they go ahead
            assert "another setup-mesh run" not in mesh.run(*args).stderr
        assert {ctx: mesh.sandbox.dump(ctx) for ctx in mesh.sandbox.contexts} == dumps
        assert not (mesh.workdir / "certs" / "cluster1").exists()
    finally:
        os.close(held)
    mesh.apply()  # once the first run ends, the next one goes ahead


def test_apply_with_context_names_another_cluster_it_could_not_read(mesh):
    # --context reads the other clusters too (for their secrets): one that does not answer is said, as the
    # dry run says it, instead of a silent wait for the read's timeout.
    mesh.apply()
    mesh.sandbox.stop_cluster("cluster2")
    # The dry run names it above its plan: no error after it names cluster2, which is not chosen.
    dry = mesh.run("apply", "--context", "cluster1", "--dry-run")
    assert "warning: could not read current state of cluster2: " in dry.stderr, dry.stdout + dry.stderr
    assert dry.stderr.count("was refused") == 1 and "cluster2 would sit" not in dry.stderr, dry.stderr
    result = mesh.run("apply", "--context", "cluster1", "-y")
    assert "warning: could not read current state of cluster2: " in result.stderr, result.stdout + result.stderr
    assert "(its remote secret in the clusters chosen is left as it is)" in result.stderr
    assert "cluster1" in result.stdout and "Traceback" not in result.stderr

