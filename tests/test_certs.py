"""Certificates: intermediates made through the release's Makefile, read with cryptography."""
import stat
import subprocess

import pytest

from lib import certs
from lib.config import Cluster
from lib.executor import Executor, Phase
from lib.plan import intermediate_step
from lib.release import Release
from lib.reporter import Reporter
from lib.runner import ShRunner
from tests.meshkit import key_bits
from tests.sandbox.release import materialize_release


def _root_ca(tmp_path, monkeypatch, variables: dict[str, str]):
    """A release's Makefile and a root CA made with it in certs/ (small keys: fast)."""
    monkeypatch.setenv("ROOTCA_KEYSZ", "2048")
    monkeypatch.setenv("INTERMEDIATE_KEYSZ", "2048")
    release = Release(materialize_release(tmp_path / "rel"))
    cert_dir = tmp_path / "certs"
    cert_dir.mkdir()
    runner = ShRunner()
    certs.make_key_if_asked(runner.run, cert_dir / certs.ROOT_KEY, certs.requested_key_bits(certs.ROOT_KEY_BITS, variables))
    runner.run(certs.root_ca_command(release, cert_dir, variables))
    return release, cert_dir, runner



def _run(release, cert_dir, runner, names, parallel=8):
    phase = Phase("certs")
    for name in names:
        phase.add(name, intermediate_step(release, cert_dir, Cluster(name, "n", name), {"INTERMEDIATE_ORG": "Org"}))
    return Executor(runner, Reporter(quiet=True), parallel=parallel).run_phases([phase])


def _serial(path) -> int:
    from cryptography import x509

    return x509.load_pem_x509_certificate(path.read_bytes()).serial_number


def test_a_mesh_of_intermediates_signed_side_by_side_has_distinct_serials_all_chaining_to_the_root(tmp_path, monkeypatch):
    # Signed at once by the release's Makefile (real make and openssl), each in a folder of its own.
    release, cert_dir, runner = _root_ca(tmp_path, monkeypatch, {"ROOTCA_ORG": "Org"})
    names = [f"c{i}" for i in range(8)]
    outcome = _run(release, cert_dir, runner, names)
    assert outcome.ok, outcome.failures
    serials = set()
    for name in names:
        assert certs.has_cacerts(cert_dir, name)
        verify = subprocess.run(["openssl", "verify", "-CAfile", str(cert_dir / "root-cert.pem"),
                                 str(cert_dir / name / "ca-cert.pem")], capture_output=True, text=True)
        assert verify.returncode == 0, verify.stderr
        info = certs.read_cert((cert_dir / name / "ca-cert.pem").read_bytes())
        assert info.is_ca and info.organization == "Org" and f"L={name}" in info.subject
        chain = (cert_dir / name / "cert-chain.pem").read_bytes()
        assert chain == (cert_dir / name / "ca-cert.pem").read_bytes() + (cert_dir / "root-cert.pem").read_bytes()
        assert (cert_dir / name / "root-cert.pem").read_bytes() == (cert_dir / "root-cert.pem").read_bytes()
        assert stat.S_IMODE((cert_dir / name / "ca-key.pem").stat().st_mode) == 0o600
        assert stat.S_IMODE((cert_dir / name).stat().st_mode) == 0o700
        serials.add(_serial(cert_dir / name / "ca-cert.pem"))
        # INTERMEDIATE_KEYSZ honoured, though Istio's recipe always makes 4096 bits: setup-mesh made the key.
        assert key_bits(cert_dir / name / "ca-key.pem") == 2048
    assert len(serials) == len(names), "two intermediates of one mesh share a serial"
    # Nothing of the signing is left: no folder of its own, no serial file of the root's shared by all.
    assert all(p.name.startswith("root-") for p in cert_dir.iterdir() if not p.is_dir())
    assert not list(cert_dir.glob(certs.SIGNING_PREFIX + "*")) and not (cert_dir / certs.ROOT_SERIAL).exists()
    assert sorted(p.name for p in cert_dir.iterdir() if p.is_dir()) == names


def test_intermediates_another_root_issued_are_named_and_a_half_made_one_is_not(tmp_path, monkeypatch):
    release, cert_dir, runner = _root_ca(tmp_path, monkeypatch, {"ROOTCA_ORG": "Org"})
    assert _run(release, cert_dir, runner, ["ours", "copied"]).ok
    assert certs.not_issued_by_root(cert_dir, ["ours", "copied", "unmade"]) == []
    # Another workspace's intermediate, copied in: the same files, issued by another root.
    _, other_dir, _ = _root_ca(tmp_path / "other", monkeypatch, {"ROOTCA_ORG": "Org"})
    assert _run(release, other_dir, runner, ["copied"]).ok
    for path in (other_dir / "copied").iterdir():
        (cert_dir / "copied" / path.name).write_bytes(path.read_bytes())
    (cert_dir / "half").mkdir()
    (cert_dir / "half" / "ca-cert.pem").write_bytes((other_dir / "copied" / "ca-cert.pem").read_bytes())
    assert certs.not_issued_by_root(cert_dir, ["ours", "copied", "half", "unmade"]) == ["copied"]
    # Without a root there is nothing to judge them by (prep-mesh's error says what is missing).
    (cert_dir / certs.ROOT_CERT).unlink()
    assert certs.not_issued_by_root(cert_dir, ["copied"]) == []


def test_an_intermediate_whose_key_is_not_its_certificates_is_named_and_a_half_made_one_is_not(tmp_path, monkeypatch):
    release, cert_dir, runner = _root_ca(tmp_path, monkeypatch, {})
    assert _run(release, cert_dir, runner, ["c1", "c2"]).ok
    assert certs.keys_not_matching(cert_dir, ["c1", "c2", "unmade"]) == []
    key1, key2 = (cert_dir / "c1" / "ca-key.pem").read_bytes(), (cert_dir / "c2" / "ca-key.pem").read_bytes()
    (cert_dir / "c1" / "ca-key.pem").write_bytes(key2)
    assert certs.keys_not_matching(cert_dir, ["c1", "c2"]) == ["c1"]
    (cert_dir / "c1" / "ca-key.pem").write_bytes(b"-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n")
    assert certs.keys_not_matching(cert_dir, ["c1"]) == ["c1"], "a key that does not parse matches nothing"
    (cert_dir / "c1" / "ca-key.pem").write_bytes(key1)
    (cert_dir / "c2" / "ca-key.pem").write_bytes(b"")  # half-made: apply makes it again, no refusal
    assert certs.keys_not_matching(cert_dir, ["c1", "c2"]) == []
    # Both findings together, as apply refuses and status reports them; none during a move to a new root,
    # whose stages decide what each cluster holds.
    (cert_dir / "c1" / "ca-key.pem").write_bytes(key2)
    (cert_dir / "c2" / "ca-key.pem").write_bytes(key2)
    assert certs.intermediate_flaws(cert_dir, ["c1", "c2"], moving=False) == certs.IntermediateFlaws([], ["c1"])
    assert certs.intermediate_flaws(cert_dir, ["c1", "c2"], moving=True) == certs.IntermediateFlaws([], [])


def test_a_signing_interrupted_midway_is_finished_by_the_next_run_with_its_key(tmp_path, monkeypatch):
    # Ctrl-C while make signs: the signing folder keeps the key made so far; certs/c1/ does not exist yet.
    release, cert_dir, runner = _root_ca(tmp_path, monkeypatch, {})
    stage = certs.prepare_signing(cert_dir, "c1")
    runner.run(certs.cacerts_command(release, stage, "c1", {}, target="c1/ca-key.pem"))
    key = (stage / "c1" / "ca-key.pem").read_bytes()
    (stage / "c1" / "ca-cert.pem").write_text("")  # cut short by the interrupt
    assert (stage / certs.ROOT_KEY).is_symlink(), "the root key is linked, never copied"
    assert not certs.has_cacerts(cert_dir, "c1")

    assert _run(release, cert_dir, runner, ["c1"], parallel=1).ok
    assert certs.has_cacerts(cert_dir, "c1")
    assert (cert_dir / "c1" / "ca-key.pem").read_bytes() == key, "the intermediate key is kept"
    assert not stage.exists()
    verify = subprocess.run(["openssl", "verify", "-CAfile", str(cert_dir / "root-cert.pem"),
                             str(cert_dir / "c1" / "ca-cert.pem")], capture_output=True, text=True)
    assert verify.returncode == 0, verify.stderr


def test_where_links_cannot_be_made_the_root_key_is_copied_0600_and_removed(tmp_path, monkeypatch):
    release, cert_dir, runner = _root_ca(tmp_path, monkeypatch, {})
    def no_links(*args, **kwargs):
        raise OSError("operation not permitted")

    monkeypatch.setattr(certs.os, "symlink", no_links)
    stage = certs.prepare_signing(cert_dir, "c1")
    key = stage / certs.ROOT_KEY
    assert not key.is_symlink() and key.read_bytes() == (cert_dir / certs.ROOT_KEY).read_bytes()
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert _run(release, cert_dir, runner, ["c1", "c2"]).ok
    assert not list(cert_dir.glob(certs.SIGNING_PREFIX + "*")), "no copy of the root key is left behind"
    for name in ("c1", "c2"):
        assert (cert_dir / name / "root-cert.pem").read_bytes() == (cert_dir / "root-cert.pem").read_bytes()
        verify = subprocess.run(["openssl", "verify", "-CAfile", str(cert_dir / "root-cert.pem"),
                                 str(cert_dir / name / "ca-cert.pem")], capture_output=True, text=True)
        assert verify.returncode == 0, verify.stderr


def test_a_signing_cut_short_after_make_only_moves_what_was_made(tmp_path, monkeypatch):
    release, cert_dir, runner = _root_ca(tmp_path, monkeypatch, {})
    stage = certs.prepare_signing(cert_dir, "c1")
    runner.run(certs.cacerts_command(release, stage, "c1", {}))
    made = (stage / "c1" / "ca-cert.pem").read_bytes()
    assert _run(release, cert_dir, runner, ["c1"], parallel=1).ok
    assert (cert_dir / "c1" / "ca-cert.pem").read_bytes() == made and not stage.exists()


def test_an_intermediate_made_under_another_root_is_never_put_in_place(tmp_path, monkeypatch):
    # A signing folder whose intermediate names a root that is no longer the workspace's (the root was made
    # again since the run that made it was cut short): discarded, with the advice to run again.
    release, cert_dir, runner = _root_ca(tmp_path, monkeypatch, {})
    stage = certs.prepare_signing(cert_dir, "c1")
    runner.run(certs.cacerts_command(release, stage, "c1", {}))
    (stage / "c1" / "root-cert.pem").write_bytes(b"-----BEGIN CERTIFICATE-----\nother\n-----END CERTIFICATE-----\n")
    from lib.errors import MeshError
    with pytest.raises(MeshError) as refused:
        certs.finish_signing(cert_dir, "c1")
    assert "names another root than" in refused.value.message and "run the same command again" in refused.value.hint
    assert not (cert_dir / "c1").exists() and not (stage / "c1").exists()


KEY_PEM = "-----BEGIN PRIVATE KEY-----\nMIIE\n-----END PRIVATE KEY-----\n"


def test_a_failed_make_leaves_no_empty_or_cut_off_file_behind(tmp_path):
    folder = tmp_path / "c1"
    folder.mkdir()
    (folder / "ca-cert.pem").write_text("")
    (folder / "cluster-ca.csr").write_text("CSR")
    (folder / "ca-key.pem").write_text(KEY_PEM)
    (folder / "cert-chain.pem").write_text("-----BEGIN CERTIFICATE-----\nMIIC")  # cut off mid-write
    certs.discard_incomplete(tmp_path, "c1")
    assert sorted(p.name for p in folder.iterdir()) == ["ca-key.pem"]
    assert not certs.has_cacerts(tmp_path, "c1")


def test_a_make_interrupted_before_its_last_copy_is_finished_by_the_next_run(tmp_path, monkeypatch):
    # The Makefile writes cert-chain.pem, then copies root-cert.pem; it keeps cert-chain.pem when
    # interrupted, so on its own the next make would never copy root-cert.pem. Here certs/c1/ was left so
    # by make run in certs/ itself, as earlier versions ran it.
    release, cert_dir, runner = _root_ca(tmp_path, monkeypatch, {})
    runner.run(certs.cacerts_command(release, cert_dir, "c1", {}))
    key = (cert_dir / "c1" / "ca-key.pem").read_bytes()
    (cert_dir / "c1" / "root-cert.pem").unlink()
    rerun = subprocess.run(list(certs.cacerts_command(release, cert_dir, "c1", {}).argv), cwd=cert_dir,
                           capture_output=True, text=True)
    assert rerun.returncode == 0 and not certs.has_cacerts(cert_dir, "c1"), "make alone does not repair it"

    outcome = _run(release, cert_dir, runner, ["c1"], parallel=1)
    assert outcome.ok, outcome.failures
    assert certs.has_cacerts(cert_dir, "c1")
    assert (cert_dir / "c1" / "ca-key.pem").read_bytes() == key, "the intermediate key is kept"
    assert (cert_dir / "c1" / "root-cert.pem").read_bytes() == (cert_dir / "root-cert.pem").read_bytes()


def test_root_organisation_is_read_from_the_certificate(tmp_path):
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(tmp_path / "k"),
                    "-out", str(tmp_path / "root-cert.pem"), "-subj", "/O=Acme Mesh/CN=Root CA", "-days", "2"],
                   check=True, capture_output=True)
    assert certs.root_organization(tmp_path) == "Acme Mesh"
    assert certs.read_cert((tmp_path / "root-cert.pem").read_bytes()).days_left() in (1, 2)


@pytest.mark.parametrize("value", ["abc", "512"])
def test_a_key_size_setup_mesh_cannot_make_is_refused_while_planning(tmp_path, monkeypatch, value):
    from lib.errors import ConfigError

    monkeypatch.setenv("INTERMEDIATE_KEYSZ", value)
    with pytest.raises(ConfigError, match=f"INTERMEDIATE_KEYSZ={value}"):
        intermediate_step(None, tmp_path, Cluster("c1", "n", "c1"), {})
