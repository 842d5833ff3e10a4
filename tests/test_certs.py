"""Certificates: intermediates made through the release's Makefile, read with cryptography."""
import subprocess

from lib import certs
from lib.config import Cluster
from lib.executor import Executor, Phase
from lib.plan import intermediate_step
from lib.release import Release
from lib.reporter import Reporter
from lib.runner import ShRunner
from tests.sandbox.release import materialize_release


def _root_ca(tmp_path, monkeypatch, variables: dict[str, str]):
    """A release's Makefile and a root CA made with it in certs/ (small keys: fast)."""
    monkeypatch.setenv("ROOTCA_KEYSZ", "2048")
    monkeypatch.setenv("INTERMEDIATE_KEYSZ", "2048")
    release = Release(materialize_release(tmp_path / "rel"))
    cert_dir = tmp_path / "certs"
    cert_dir.mkdir()
    runner = ShRunner()
    runner.run(certs.root_ca_command(release, cert_dir, variables))
    return release, cert_dir, runner


def test_intermediates_made_in_parallel_all_chain_to_the_root(tmp_path, monkeypatch):
    # The Makefile signs with one serial file; concurrent makes must not corrupt each other's output.
    release, cert_dir, runner = _root_ca(tmp_path, monkeypatch, {"ROOTCA_ORG": "Org"})
    phase = Phase("certs")
    names = [f"c{i}" for i in range(8)]
    for name in names[:6]:  # keys already there: these signings would all start at once
        runner.run(certs.intermediate_key_command(release, cert_dir, name, {}))
    for name in names:
        phase.add(name, intermediate_step(release, cert_dir, Cluster(name, "n", name), {"INTERMEDIATE_ORG": "Org"}))
    outcome = Executor(runner, Reporter(quiet=True), parallel=8).run_phases([phase])
    assert outcome.ok, outcome.failures
    for name in names:
        assert certs.has_cacerts(cert_dir, name)
        verify = subprocess.run(["openssl", "verify", "-CAfile", str(cert_dir / "root-cert.pem"),
                                 str(cert_dir / name / "ca-cert.pem")], capture_output=True, text=True)
        assert verify.returncode == 0, verify.stderr
        info = certs.read_cert((cert_dir / name / "ca-cert.pem").read_bytes())
        assert info.is_ca and info.organization == "Org" and f"L={name}" in info.subject
        chain = (cert_dir / name / "cert-chain.pem").read_bytes()
        assert chain == (cert_dir / name / "ca-cert.pem").read_bytes() + (cert_dir / "root-cert.pem").read_bytes()


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
    # interrupted, so on its own the next make would never copy root-cert.pem.
    release, cert_dir, runner = _root_ca(tmp_path, monkeypatch, {})
    runner.run(certs.cacerts_command(release, cert_dir, "c1", {}))
    key = (cert_dir / "c1" / "ca-key.pem").read_bytes()
    (cert_dir / "c1" / "root-cert.pem").unlink()
    rerun = subprocess.run(list(certs.cacerts_command(release, cert_dir, "c1", {}).argv), cwd=cert_dir,
                           capture_output=True, text=True)
    assert rerun.returncode == 0 and not certs.has_cacerts(cert_dir, "c1"), "make alone does not repair it"

    phase = Phase("certs")
    phase.add("c1", intermediate_step(release, cert_dir, Cluster("c1", "n", "c1"), {}))
    outcome = Executor(runner, Reporter(quiet=True), parallel=1).run_phases([phase])
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
