"""On a terminal, every wait longer than a second shows what it waits for (a spinner that clears itself)."""
import socket
import sys
import threading
from pathlib import Path

import pytest

from lib.config import Cluster
from lib.kube import Tools
from lib.reporter import Reporter
from lib.workspace import INSPECT_TIMEOUT, inspect_clusters, read_istio_usage
from tests.recording import RecordingRunner
from tests.terminal import Terminal, plain

ROOT = Path(__file__).resolve().parent.parent
PATH_WITH_STANDIN = ROOT / "tests" / "sandbox" / "release_template" / "bin"


@pytest.fixture
def silent_api_server():
    """An address that accepts connections and never answers, as an API server behind a stuck proxy:
    every read of it waits for its --timeout."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    held, stop = [], threading.Event()

    def accept():
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                pass

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"https://127.0.0.1:{server.getsockname()[1]}"
    stop.set()
    thread.join()
    for conn in held:
        conn.close()
    server.close()


def _workspace(tmp_path: Path, server: str, kubectl_bin: Path) -> dict:
    (tmp_path / "topology.yaml").write_text("mesh_id: m\ncontexts:\n  cluster1:\n    network: n1\n")
    (tmp_path / "base.yaml").write_text("apiVersion: install.istio.io/v1alpha1\nkind: IstioOperator\nspec: {}\n")
    (tmp_path / "kubeconfig").write_text(
        f"apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster: {{server: '{server}', "
        f"insecure-skip-tls-verify: true}}\nusers:\n- name: u\n  user: {{token: t}}\ncontexts:\n"
        f"- name: cluster1\n  context: {{cluster: c, user: u}}\n")
    return {"KUBECONFIG": str(tmp_path / "kubeconfig"), "HOME": str(tmp_path),
            "PATH": f"{kubectl_bin.parent}:{PATH_WITH_STANDIN}:/usr/bin:/bin"}


@pytest.mark.parametrize("command,shown", [
    (["status", "--timeout", "3"], "read status (1 cluster, 1 at a time) ..."),
    (["teardown", "--timeout", "3"], "read current state (1 cluster, 1 at a time) ..."),
    (["verify", "--timeout", "3"], "read status (1 cluster, 1 at a time) ..."),  # verify reads as status does
])
def test_reads_show_what_they_wait_for_then_clear(tmp_path, silent_api_server, kubectl_bin, command, shown):
    env = _workspace(tmp_path, silent_api_server, kubectl_bin)
    term = Terminal([sys.executable, str(ROOT / "setup_mesh.py"), *command, "--workdir", str(tmp_path)], env,
                    cols=80)
    term.expect(shown, timeout=30)
    code = term.wait(timeout=60)
    assert code != 0, plain(term.output)  # the cluster could not be read, and says so
    assert "cannot read" in plain(term.output) or "unreachable" in plain(term.output), plain(term.output)


@pytest.mark.parametrize("given,taken", [(3.0, 3.0), (600.0, INSPECT_TIMEOUT)])
def test_each_read_of_a_cluster_takes_at_most_the_timeout_given(given, taken):
    """--timeout ("any one command") bounds the reads of status, verify, teardown and apply too: a short one is
    how a user learns quickly that a cluster does not answer; a long one (apply's, for its installs) leaves
    reads at their own bound."""
    runner = RecordingRunner()
    tools = Tools(kubectl="kubectl", istioctl="istioctl", timeout=given)
    clusters = [Cluster(context="c1", name="c1", network="n1")]
    inspect_clusters(clusters, tools, runner, Reporter(quiet=True), 1, ambient=True, ztunnel_namespace="kube-system")
    read_istio_usage(clusters, tools, runner, Reporter(quiet=True), 1, frozenset())
    assert len(runner.commands) >= 4 and {c.timeout for c in runner.commands} == {taken}, runner.lines()
