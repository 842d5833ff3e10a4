"""prep-mesh on the stand-in Istio release: files, permissions, reruns, options and errors."""
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from cryptography import x509

from tests.meshkit import FAST_KEYS, key_bits
from tests.sandbox.release import materialize_release

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    return materialize_release(tmp_path_factory.mktemp("release"))


def run(args, env=None, cwd=None):
    full_env = {k: v for k, v in os.environ.items() if k not in ("WORKDIR", "MESH_ID", "ORG_NAME", "ISTIO_DIR")}
    full_env.update(FAST_KEYS)
    full_env.update(env or {})
    return subprocess.run([sys.executable, str(ROOT / "setup_mesh.py"), "prep-mesh", *args], env=full_env,
                          cwd=cwd, capture_output=True, text=True, timeout=120)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def subject_org(path: Path) -> str:
    cert = x509.load_pem_x509_certificate(path.read_bytes())
    return cert.subject.get_attributes_for_oid(x509.oid.NameOID.ORGANIZATION_NAME)[0].value


def test_creates_workspace_with_private_keys(tmp_path, release):
    ws = tmp_path / "ws"
    result = run(["--workdir", str(ws), "--istio-dir", str(release), "--mesh-id", "prod", "--org", "Acme Corp"])
    assert result.returncode == 0, result.stderr
    topology = yaml.safe_load((ws / "topology.yaml").read_text())
    assert topology["mesh_id"] == "prod"
    base = yaml.safe_load((ws / "base.yaml").read_text())
    assert base["kind"] == "IstioOperator" and "meshID" not in str(base)
    assert "meshID" in (ws / "base.yaml").read_text(), "the comments name the reserved values"
    assert mode(ws / "certs") == 0o700
    assert mode(ws / "certs" / "root-key.pem") == 0o600
    assert subject_org(ws / "certs" / "root-cert.pem") == "Acme Corp"
    for name in ("topology.yaml", "base.yaml", "certs/root-cert.pem", "certs/root-key.pem"):
        assert f"created {name}" in result.stdout
    assert "apply --dry-run" in result.stdout, "it ends with the next step"


def test_second_run_changes_nothing(tmp_path, release):
    ws = tmp_path / "ws"
    assert run(["--workdir", str(ws), "--istio-dir", str(release)]).returncode == 0
    (ws / "topology.yaml").write_text("mesh_id: edited\ncontexts:\n  a:\n    network: n\n")
    (ws / "base.yaml").write_text((ws / "base.yaml").read_text() + "  meshConfig:\n    accessLogFile: /dev/stdout\n")
    (ws / "certs" / "root-key.pem").chmod(0o644)  # loosened by hand, or by a copy
    before = {p: p.read_bytes() for p in ws.rglob("*") if p.is_file()}
    again = run(["--workdir", str(ws), "--istio-dir", str(release), "--mesh-id", "other", "--org", "Other Org"])
    assert again.returncode == 0, again.stderr
    assert {p: p.read_bytes() for p in ws.rglob("*") if p.is_file()} == before
    assert "kept    topology.yaml" in again.stdout and "kept    certs/root-key.pem" in again.stdout
    assert "kept    base.yaml" in again.stdout
    assert "mesh_id 'edited'" in again.stderr  # the ignored --mesh-id is pointed out
    assert "kept the existing root CA" in again.stderr and "'Other Org'" in again.stderr  # and the ignored --org
    assert mode(ws / "certs" / "root-key.pem") == 0o600, "the key is made private again"


def test_a_root_certificate_deleted_by_mistake_is_made_again_from_the_key_that_is_kept(tmp_path, release):
    ws = tmp_path / "ws"
    assert run(["--workdir", str(ws), "--istio-dir", str(release)]).returncode == 0
    key = (ws / "certs" / "root-key.pem").read_bytes()
    (ws / "certs" / "root-cert.pem").unlink()
    again = run(["--workdir", str(ws), "--istio-dir", str(release)])
    assert again.returncode == 0, again.stderr
    assert (ws / "certs" / "root-key.pem").read_bytes() == key
    cert = x509.load_pem_x509_certificate((ws / "certs" / "root-cert.pem").read_bytes())
    from cryptography.hazmat.primitives.serialization import load_pem_private_key
    assert cert.public_key().public_numbers() == load_pem_private_key(key, None).public_key().public_numbers()


def test_environment_variables_work_and_flags_win(tmp_path, release):
    ws = tmp_path / "ws"
    env = {"WORKDIR": str(ws), "MESH_ID": "from-env", "ORG_NAME": "Env Org", "ISTIO_DIR": str(release)}
    assert run([], env=env).returncode == 0
    assert yaml.safe_load((ws / "topology.yaml").read_text())["mesh_id"] == "from-env"
    assert subject_org(ws / "certs" / "root-cert.pem") == "Env Org"
    ws2 = tmp_path / "ws2"
    first = {p: p.read_bytes() for p in ws.rglob("*") if p.is_file()}
    result = run(["--workdir", str(ws2), "--mesh-id", "from-flag", "--org", "Flag Org"], env=env)
    assert result.returncode == 0, result.stderr
    assert {p: p.read_bytes() for p in ws.rglob("*") if p.is_file()} == first, "--workdir wins over WORKDIR"
    assert yaml.safe_load((ws2 / "topology.yaml").read_text())["mesh_id"] == "from-flag"
    assert subject_org(ws2 / "certs" / "root-cert.pem") == "Flag Org"


def test_release_is_found_from_istioctl_on_path_through_a_symlink(tmp_path, release):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "istioctl").symlink_to(release / "bin" / "istioctl")
    ws = tmp_path / "ws"
    result = run(["--workdir", str(ws)], env={"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"})
    assert result.returncode == 0, result.stderr
    assert str(release / "tools/certs/Makefile.selfsigned.mk") in result.stdout


def test_release_is_found_in_the_workdir(tmp_path, release):
    ws = tmp_path / "ws"
    ws.mkdir()
    shutil.copytree(release, ws / release.name, symlinks=True)
    result = run(["--workdir", str(ws)])
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("flag", ["--add-context", "--context"])  # --context: the earlier spelling
def test_contexts_given_on_the_command_line(tmp_path, release, flag):
    ws = tmp_path / "ws"
    eks = "arn:aws:eks:eu-west-1:123456789012:cluster/shop"
    assert run(["--workdir", str(ws), "--istio-dir", str(release), flag, "east=net1", flag, "west",
                flag, f"{eks}=net2"]).returncode == 0
    # A context that is no valid Istio cluster name (as aws and gcloud name them) gets one, so apply takes it.
    assert yaml.safe_load((ws / "topology.yaml").read_text())["contexts"] == {
        "east": {"network": "net1"}, "west": {"network": "network1"}, eks: {"network": "net2", "cluster_name": "shop"}}
    from lib.config import load_topology
    assert [c.name for c in load_topology(ws / "topology.yaml").clusters] == ["east", "west", "shop"]


def test_prefixed_environment_names_win_over_the_plain_ones(tmp_path, release):
    env = {"SETUP_MESH_WORKDIR": str(tmp_path / "a"), "WORKDIR": str(tmp_path / "b"),
           "SETUP_MESH_MESH_ID": "prefixed", "MESH_ID": "plain", "SETUP_MESH_ORG_NAME": "Prefixed Org",
           "SETUP_MESH_ISTIO_DIR": str(release)}
    result = run([], env=env)
    assert result.returncode == 0, result.stderr
    assert yaml.safe_load((tmp_path / "a" / "topology.yaml").read_text())["mesh_id"] == "prefixed"
    assert subject_org(tmp_path / "a" / "certs" / "root-cert.pem") == "Prefixed Org"
    assert not (tmp_path / "b").exists()


def test_next_steps_name_the_program_and_workdir_as_given(tmp_path, release):
    given = run(["--workdir", "ws", "--istio-dir", str(release)], cwd=tmp_path)
    script = str(ROOT / "setup_mesh.py")
    assert f"run `{script} apply --workdir ws`" in given.stdout
    # A workdir from the environment is not repeated: the pasted command gets it the same way.
    from_env = run([], env={"WORKDIR": str(tmp_path / "ws2"), "ISTIO_DIR": str(release)})
    assert f"preview with `{script} apply --dry-run`" in from_env.stdout
    # The new topology.yaml says how to apply an edit with the same command line, and names every key.
    topology = (tmp_path / "ws" / "topology.yaml").read_text()
    assert f"run `{script} apply --workdir ws` (it asks before removing)" in topology
    assert f"run `{script} apply` (it asks" in (tmp_path / "ws2" / "topology.yaml").read_text()
    for key in ("network", "primary", "cluster_name", "api_server", "kubeconfig"):
        assert f"#   {key} " in topology, key
    # Files are named as they can be typed from here: relative inside the current folder, absolute outside it.
    assert "  1. edit ws/topology.yaml: list your kube contexts and their networks" in given.stdout
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    listed = run(["--workdir", str(tmp_path / "ws3"), "--istio-dir", str(release), "--add-context", "east=net1"],
                 cwd=elsewhere)
    assert f"  1. check the contexts and networks listed in {tmp_path / 'ws3' / 'topology.yaml'}\n" in listed.stdout
    assert f"  2. optionally customise {tmp_path / 'ws3' / 'base.yaml'} (" in listed.stdout


def _reserved_paths() -> list[str]:
    from lib.config import PILOT_ENV_SWITCH, RESERVED_VALUES

    return [".".join(keys) for keys in [*RESERVED_VALUES, PILOT_ENV_SWITCH]]


def test_base_yaml_and_readme_list_every_reserved_value(tmp_path, release):
    """The values apply refuses in base.yaml are the ones base.yaml's comment and README list."""
    assert run(["--workdir", str(tmp_path / "ws"), "--istio-dir", str(release)]).returncode == 0
    written = (tmp_path / "ws" / "base.yaml").read_text()
    assert written == (ROOT / "base.yaml").read_text(), "the bundled example is what prep-mesh writes"
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("### base.yaml and the reserved values"):]
    section = section[:section.index("\n### ")]
    for path in _reserved_paths():
        assert f"#   {path}\n" in written, path
        assert f"`{path}`" in section, path


def test_no_release_is_a_clear_error_listing_where_it_looked(tmp_path):
    ws = tmp_path / "ws"
    result = run(["--workdir", str(ws)], env={"PATH": "/usr/bin:/bin"})
    assert result.returncode == 2
    assert "no Istio release found" in result.stderr and "istioctl on PATH: not found" in result.stderr
    assert "downloadIstio" in result.stderr and "Traceback" not in result.stderr
    assert not ws.exists(), "nothing is written when it cannot finish"


def test_istio_dir_that_is_not_a_release(tmp_path):
    result = run(["--workdir", str(tmp_path / "ws"), "--istio-dir", str(tmp_path)])
    assert result.returncode == 2
    assert "Makefile.selfsigned.mk is missing" in result.stderr


@pytest.mark.parametrize("missing", ["make", "openssl"])
def test_missing_make_or_openssl_is_named(tmp_path, release, missing):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("make", "openssl", "sh", "cat", "cp", "mkdir", "rm"):
        if tool != missing and shutil.which(tool):
            (bin_dir / tool).symlink_to(shutil.which(tool))
    result = run(["--workdir", str(tmp_path / "ws"), "--istio-dir", str(release)], env={"PATH": str(bin_dir)})
    assert result.returncode == 2
    assert f"{missing} was not found on PATH" in result.stderr
    assert "Traceback" not in result.stderr


def test_kubeconfig_contexts_are_offered_as_comments_and_apply_then_asks_for_them(tmp_path, release):
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({"apiVersion": "v1", "kind": "Config", "clusters": [], "users": [],
                                          "contexts": [{"name": "kind-east", "context": {}},
                                                       {"name": "kind-west", "context": {}}]}))
    ws = tmp_path / "ws"
    assert run(["--workdir", str(ws), "--istio-dir", str(release)], env={"KUBECONFIG": str(kubeconfig)}).returncode == 0
    text = (ws / "topology.yaml").read_text()
    assert "  # kind-east:\n  #   network: network1\n  # kind-west:\n  #   network: network2\n" in text
    assert yaml.safe_load(text)["contexts"] is None, "nothing joins the mesh until the user says so"
    applied = subprocess.run([sys.executable, str(ROOT / "setup_mesh.py"), "apply", "--workdir", str(ws)],
                             env={**os.environ, "KUBECONFIG": str(kubeconfig)}, capture_output=True, text=True)
    assert applied.returncode == 2 and "contexts is empty or missing" in applied.stderr


# --- --istio-version ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def published(tmp_path_factory):
    from tests.releaseserver import publish

    folder = tmp_path_factory.mktemp("published")
    publish(folder, "1.31.0")
    return folder


def test_istio_version_from_a_folder_mirror_is_pinned_and_makes_the_root(tmp_path, published):
    workdir = tmp_path / "ws"
    result = run(["--workdir", str(workdir), "--istio-version", "1.31.0", "--add-context", "c1"],
                 env={"PATH": "/usr/bin:/bin", "SETUP_MESH_ISTIO_MIRROR": str(published)})
    assert result.returncode == 0, result.stderr
    topology = yaml.safe_load((workdir / "topology.yaml").read_text())
    assert topology == {"mesh_id": "mesh1", "istio_version": "1.31.0", "contexts": {"c1": {"network": "network1"}}}
    assert f"making the root CA with {workdir.resolve() / 'istio/istio-1.31.0/tools/certs/Makefile.selfsigned.mk'}" \
        in result.stdout
    assert (workdir / "certs" / "root-cert.pem").is_file()


@pytest.mark.parametrize("version,message", [
    ("1.31", "--istio-version 1.31: '1.31' is not an Istio version"),
    ("1.26.0", "--istio-version 1.26.0: Istio 1.26.0 is outside the range setup-mesh supports (1.28.0 to 1.31.x)"),
])
def test_a_bad_istio_version_writes_nothing(tmp_path, release, version, message):
    result = run(["--workdir", str(tmp_path / "ws"), "--istio-version", version, "--istio-dir", str(release)])
    assert result.returncode == 2
    assert message in " ".join(result.stderr.split())
    assert not (tmp_path / "ws").exists()


def test_istio_dir_must_hold_the_version_asked_for(tmp_path, release):
    result = run(["--workdir", str(tmp_path / "ws"), "--istio-version", "1.31.0", "--istio-dir", str(release)])
    assert result.returncode == 2
    assert f"{release} holds Istio 1.30.3, but" in " ".join(result.stderr.split())
    assert not (tmp_path / "ws").exists()


def test_an_existing_topology_is_kept_and_the_pin_is_suggested(tmp_path, release):
    workdir = tmp_path / "ws"
    assert run(["--workdir", str(workdir), "--istio-dir", str(release)]).returncode == 0
    before = (workdir / "topology.yaml").read_text()
    result = run(["--workdir", str(workdir), "--istio-version", "1.30.3", "--istio-dir", str(release)])
    assert result.returncode == 0, result.stderr
    assert (workdir / "topology.yaml").read_text() == before
    assert "set `istio_version: 1.30.3` in it" in " ".join(result.stderr.split())


def test_at_a_terminal_the_download_shows_a_progress_bar_that_goes(tmp_path, published):
    from tests.terminal import Terminal, plain

    env = {k: v for k, v in os.environ.items() if k not in ("WORKDIR", "MESH_ID", "ORG_NAME", "ISTIO_DIR")}
    env.update(FAST_KEYS, PATH="/usr/bin:/bin")
    term = Terminal([sys.executable, str(ROOT / "setup_mesh.py"), "prep-mesh", "--workdir", str(tmp_path / "ws"),
                     "--istio-version", "1.31.0", "--istio-mirror", str(published)], env)
    assert term.wait() == 0, plain(term.output)
    size = (published / "istio-1.31.0-linux-amd64.tar.gz").stat().st_size / 1000
    shown = plain(term.output)
    assert "downloading istio-1.31.0-linux-amd64.tar.gz" in shown
    assert f"{size:.1f}/{size:.1f} kB" in shown, "the bar ends with every byte counted"
    assert "created certs/root-key.pem" in shown



@pytest.mark.parametrize("args, env, bits", [
    (["--key-size", "1536"], {}, 1536),
    ([], {"ROOTCA_KEYSZ": "1536"}, 1536),
    ([], {"ROOTCA_KEYSZ": ""}, 4096),  # the Makefile's own
])
def test_the_root_key_has_the_size_asked_for_though_istios_recipe_makes_4096_bits(tmp_path, release, args, env, bits):
    result = run(["--workdir", str(tmp_path), "--istio-dir", str(release), *args], env=env)
    assert result.returncode == 0, result.stderr
    key = tmp_path / "certs" / "root-key.pem"
    assert key_bits(key) == bits
    assert mode(key) == 0o600
