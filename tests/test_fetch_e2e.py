"""A pinned Istio version end to end: prep-mesh and apply fetch it from a loopback mirror, verify it, install
with its istioctl and reuse it; every refusal comes before any cluster is touched and changes nothing."""
from __future__ import annotations

import hashlib
import os

import pytest
import yaml

from tests.meshkit import Mesh, workdir_snapshot
from tests.releaseserver import ClosedPort, publish, serving_a_copy

pytestmark = pytest.mark.xdist_group("test_fetch_e2e")

ARCHIVE = "istio-1.31.0-linux-amd64.tar.gz"


class PinnedMesh(Mesh):
    """A workspace whose Istio comes from its pin: the sandbox's ISTIO_DIR is not given (its istioctl, 1.30.3,
    stays on PATH), and the fetched istioctl records its calls where the sandbox's does."""

    @property
    def env(self) -> dict:
        env = super().env
        env.pop("ISTIO_DIR", None)
        env["ISTIOCTL_STANDIN_RECORD"] = str(self.sandbox.dir / "istioctl-calls.jsonl")
        return env

    def pin(self, version: str) -> None:
        data = yaml.safe_load((self.workdir / "topology.yaml").read_text())
        data["istio_version"] = version
        (self.workdir / "topology.yaml").write_text(yaml.safe_dump(data))


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    folder = tmp_path_factory.mktemp("published")
    publish(folder, "1.31.0")
    return folder


@pytest.fixture
def mirror(published, tmp_path):
    with serving_a_copy(published, tmp_path) as server:
        yield server


def _istiod_image(mesh: Mesh, ctx: str = "cluster1") -> str:
    deployment = mesh.get(ctx, "deployment", "istiod", "-n", "istio-system")
    return deployment["spec"]["template"]["spec"]["containers"][0]["image"]


def test_prep_mesh_pins_and_fetches_and_apply_installs_that_release_reusing_it(sandbox_factory, mirror, tmp_path):
    sandbox = sandbox_factory(["cluster1"])
    mesh = PinnedMesh(sandbox, tmp_path / "ws")
    result = mesh.run("prep-mesh", "--istio-version", "1.31.0", "--istio-mirror", mirror.url)
    assert result.returncode == 0, result.stderr
    assert yaml.safe_load((mesh.workdir / "topology.yaml").read_text())["istio_version"] == "1.31.0"
    release = mesh.workdir / "istio" / "istio-1.31.0"
    assert "making the root CA with " + str(release / "tools/certs/Makefile.selfsigned.mk") in result.stdout
    assert mirror.downloads() == [f"/{ARCHIVE}"]

    mesh.write_topology({"cluster1": "network1"}, extra={})
    mesh.pin("1.31.0")
    mesh.apply("--istio-mirror", mirror.url)
    # The pinned release's istioctl installed, not the 1.30.3 one on PATH.
    assert _istiod_image(mesh).endswith(":1.31.0")
    assert mesh.installs(), "the fetched istioctl records its calls with the sandbox's"
    assert len(mirror.requests) == 2, "apply reuses the release prep-mesh fetched"
    mesh.apply("--istio-mirror", mirror.url)
    assert len(mirror.requests) == 2
    # status fetches nothing and finds istioctl in the fetched release, with none on PATH.
    path = os.pathsep.join(p for p in mesh.env["PATH"].split(os.pathsep) if p != str(sandbox.istio_dir / "bin"))
    calls = len(mesh.sandbox.istioctl_calls())
    result = mesh.run("status", env={"PATH": path, "SETUP_MESH_ISTIO_MIRROR": "/nonexistent"})
    assert result.returncode == 0, result.stdout + result.stderr
    assert len(mesh.sandbox.istioctl_calls()) > calls and len(mirror.requests) == 2
    # verify reads with the fetched istioctl too.
    result = mesh.run("verify", env={"PATH": path, "SETUP_MESH_ISTIO_MIRROR": "/nonexistent"})
    assert result.returncode == 0, result.stdout + result.stderr
    # rotate-certs issues intermediates with the fetched release's Makefile (no other release is findable).
    result = mesh.run("rotate-certs", "-y", env={"PATH": path, "SETUP_MESH_ISTIO_MIRROR": "/nonexistent"})
    assert result.returncode == 0, result.stdout + result.stderr
    # teardown too: it uninstalls (and removes the default tag) with the fetched istioctl.
    before = len(mesh.sandbox.istioctl_calls())
    result = mesh.run("teardown", "-y", env={"PATH": path, "SETUP_MESH_ISTIO_MIRROR": "/nonexistent"})
    assert result.returncode == 0, result.stdout + result.stderr
    assert "uninstall" in [c["command"] for c in mesh.sandbox.istioctl_calls()[before:]]
    assert mesh.get("cluster1", "namespace", "istio-system", check=False) is None


@pytest.fixture(scope="module")
def running(tmp_path_factory):
    """One cluster holding a mesh applied at the sandbox's Istio (1.30.3, pinned), shared by the refusals
    below: each must leave it, and the workspace, exactly as they were."""
    from tests.sandbox import Sandbox

    root = tmp_path_factory.mktemp("pinned")
    sandbox = Sandbox.up(root / "sandbox", ["cluster1"])
    try:
        mesh = Mesh(sandbox, root / "ws")
        assert mesh.run("prep-mesh").returncode == 0
        mesh.write_topology({"cluster1": "network1"})
        (mesh.workdir / "topology.yaml").write_text("istio_version: 1.30.3\n" +
                                                     (mesh.workdir / "topology.yaml").read_text())
        mesh.apply()  # with the sandbox's ISTIO_DIR: the pinned 1.30.3
        yield PinnedMesh(sandbox, mesh.workdir)
    finally:
        sandbox.down()


def _cluster_state(mesh: Mesh) -> list:
    """Every object apply makes or changes in the cluster, with its resourceVersion."""
    items = mesh.get("cluster1", "namespaces,deployments,services,secrets,configmaps", "-A")["items"]
    return sorted((i["kind"], i["metadata"].get("namespace", ""), i["metadata"]["name"],
                   i["metadata"]["resourceVersion"]) for i in items)


@pytest.fixture
def moving_to_1_31(running):
    """The shared mesh with topology.yaml pinning 1.31.0 (restored afterwards); its state before the run."""
    topology = running.workdir / "topology.yaml"
    saved = topology.read_text()
    running.pin("1.31.0")
    before = (workdir_snapshot(running.workdir), _cluster_state(running), len(running.sandbox.istioctl_calls()))
    yield running, before
    topology.write_text(saved)


def _nothing_changed(mesh, before):
    assert workdir_snapshot(mesh.workdir) == before[0]
    assert _cluster_state(mesh) == before[1]
    assert len(mesh.sandbox.istioctl_calls()) == before[2]
    assert _istiod_image(mesh).endswith(":1.30.3")


def test_a_bad_checksum_is_refused_with_nothing_unpacked_and_no_cluster_touched(moving_to_1_31, mirror):
    mesh, before = moving_to_1_31
    (mirror.folder / f"{ARCHIVE}.sha256").write_text(f"{hashlib.sha256(b'x').hexdigest()} {ARCHIVE}\n")
    result = mesh.run("apply", "-y", "--istio-mirror", mirror.url)
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"error: {ARCHIVE} from {mirror.url}/{ARCHIVE} does not match its .sha256" in " ".join(result.stderr.split())
    assert "Traceback" not in result.stderr
    _nothing_changed(mesh, before)


def test_an_unreachable_mirror_is_refused_naming_the_option_and_nothing_changes(moving_to_1_31):
    mesh, before = moving_to_1_31
    with ClosedPort() as url:
        result = mesh.run("apply", "-y", "--istio-mirror", url)
    assert result.returncode == 1, result.stdout + result.stderr
    stderr = " ".join(result.stderr.split())
    assert f"cannot reach {url.removeprefix('http://')}" in stderr and "(--istio-mirror)" in stderr
    assert "point --istio-mirror (or SETUP_MESH_ISTIO_MIRROR)" in stderr
    _nothing_changed(mesh, before)


def test_istio_dir_of_another_version_is_refused_and_nothing_changes(moving_to_1_31):
    mesh, before = moving_to_1_31
    result = mesh.run("apply", "-y", "--istio-dir", str(mesh.sandbox.istio_dir))
    assert result.returncode == 2, result.stdout + result.stderr
    stderr = " ".join(result.stderr.split())
    assert f"{mesh.sandbox.istio_dir} holds Istio 1.30.3, but {mesh.workdir / 'topology.yaml'} pins 1.31.0" in stderr
    _nothing_changed(mesh, before)


def test_the_suites_own_mirror_setting_keeps_every_test_off_the_internet(moving_to_1_31):
    """Without --istio-mirror a pinned release would come from GitHub: the suite's environment names a
    mirror folder that does not exist, so a test that forgets its loopback mirror fails here instead."""
    mesh, before = moving_to_1_31
    result = mesh.run("apply", "-y")
    assert result.returncode == 2, result.stdout + result.stderr
    assert "SETUP_MESH_ISTIO_MIRROR /nonexistent/" in result.stderr and "no such folder" in result.stderr
    _nothing_changed(mesh, before)


def test_a_dry_run_says_what_apply_would_fetch_and_fetches_nothing(moving_to_1_31, mirror):
    mesh, before = moving_to_1_31
    result = mesh.run("apply", "--dry-run", "--istio-mirror", mirror.url)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"apply fetches {mirror.url}/{ARCHIVE} and checks its sha256" in " ".join(result.stderr.split())
    assert mirror.requests == []
    _nothing_changed(mesh, before)


def test_a_dry_run_plan_names_the_istioctl_of_the_release_apply_would_fetch(sandbox_factory, mirror, tmp_path):
    sandbox = sandbox_factory(["cluster1"])
    made = Mesh(sandbox, tmp_path / "ws")  # the sandbox's 1.30.3 makes the root CA
    assert made.run("prep-mesh").returncode == 0
    mesh = PinnedMesh(sandbox, made.workdir)
    mesh.write_topology({"cluster1": "network1"})
    mesh.pin("1.31.0")
    result = mesh.run("apply", "--dry-run", "-v", "--istio-mirror", mirror.url, env={"COLUMNS": "400"})
    assert result.returncode == 0, result.stdout + result.stderr
    planned = f"{mesh.workdir.resolve()}/istio/istio-1.31.0/bin/istioctl install -y"
    assert planned in result.stdout, result.stdout
    assert mirror.requests == [] and not (mesh.workdir / "istio").exists()
