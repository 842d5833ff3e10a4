"""The mesh's certificates: made by Istio's own Makefile, read with ``cryptography``."""
from __future__ import annotations

import datetime as dt
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from .errors import ConfigError, MeshError
from .overlay import CACERTS_FILES
from .release import Release
from .runner import Command

CERTS_DIR = "certs"
ROOT_CERT = "root-cert.pem"
ROOT_KEY = "root-key.pem"
# `openssl x509 -CAcreateserial -CA root-cert.pem` keeps the serial in root-cert.srl next to where it runs.
ROOT_SERIAL = "root-cert.srl"
SIGNING_PREFIX = ".signing-"
MAKE_TIMEOUT = 300.0


def certs_dir(workdir: Path) -> Path:
    return workdir / CERTS_DIR


def root_ca_command(release: Release, directory: Path, variables: dict[str, str]) -> Command:
    """``make -f .../Makefile.selfsigned.mk root-ca`` with Makefile variables on the command line."""
    return Command(
        ("make", "-f", str(release.certs_makefile), "root-ca", *(f"{k}={v}" for k, v in sorted(variables.items()))),
        cwd=str(directory),
        timeout=MAKE_TIMEOUT,
    )


# The certs Makefile's key-size variables (common.mk). Istio's recipes ignore them (1.30.3: `openssl genrsa
# -out $@ 4096` for every key), so a size asked for is honoured by making the key first: make keeps a key
# that exists (its key rules have no prerequisites).
ROOT_KEY_BITS = "ROOTCA_KEYSZ"
INTERMEDIATE_KEY_BITS = "INTERMEDIATE_KEYSZ"
MIN_KEY_BITS = 1024


def requested_key_bits(variable: str, variables: dict[str, str] | None = None) -> int | None:
    """The key size asked for with ``variable``: given on setup-mesh's command line (``variables``), else in
    the environment as for make; None: the Makefile's own (4096 bits)."""
    text = (variables or {}).get(variable) or os.environ.get(variable)
    if not text:
        return None
    try:
        bits = int(text)
    except ValueError:
        bits = 0
    if bits < MIN_KEY_BITS:
        raise ConfigError(f"{variable}={text} is not a key size setup-mesh makes keys of",
                          hint=f"set {variable} to a number of bits, {MIN_KEY_BITS} or more (4096, the Makefile's, "
                               f"when unset), or unset it")
    return bits


def key_command(path: Path, bits: int) -> Command:
    """``openssl genrsa`` of ``bits`` into ``path`` (0600: the runner starts every program with umask 077)."""
    return Command(("openssl", "genrsa", "-out", str(path), str(bits)), timeout=MAKE_TIMEOUT)


def make_key_if_asked(run, path: Path, bits: int | None) -> None:
    """Before make: the key at ``path`` of the size asked for (``requested_key_bits``), unless a key is
    already there."""
    if bits is None or path.exists():
        return
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    run(key_command(path, bits))


def cacerts_command(release: Release, directory: Path, cluster_name: str, variables: dict[str, str],
                    target: str | None = None) -> Command:
    """``make ... <name>-cacerts``; ``target`` names another of the Makefile's targets for <name>."""
    return Command(
        ("make", "-f", str(release.certs_makefile), target or f"{cluster_name}-cacerts",
         *(f"{k}={v}" for k, v in sorted(variables.items()))),
        cwd=str(directory),
        timeout=MAKE_TIMEOUT,
    )


def secure_tree(directory: Path) -> None:
    """certs/ and every folder in it 0700, every key 0600: the make recipes do not set modes."""
    if not directory.is_dir():
        return
    os.chmod(directory, 0o700)
    for path in directory.rglob("*"):
        if path.is_dir():
            os.chmod(path, 0o700)
        elif path.name.endswith("-key.pem"):
            os.chmod(path, 0o600)


def cacerts_files(directory: Path, cluster_name: str) -> dict[str, Path]:
    return {name: directory / cluster_name / name for name in CACERTS_FILES}


# What the Makefile copies or concatenates last (cert-chain.pem: ca-cert.pem + root-cert.pem, then a
# copy of root-cert.pem): cheap to make again.
_DERIVED = ("cert-chain.pem", "root-cert.pem")


def discard_incomplete(directory: Path, cluster_name: str) -> None:
    """Remove what an interrupted or failed make leaves that make would take as already made: empty or
    cut-off PEM files, and, while the cluster's set is incomplete, the files its last recipe makes (the
    Makefile keeps cert-chain.pem when interrupted, so a missing copy of root-cert.pem would never come)."""
    folder = directory / cluster_name
    if not folder.is_dir():
        return
    for path in folder.iterdir():
        if path.is_file() and path.suffix in (".pem", ".csr") and b"-----END " not in path.read_bytes():
            path.unlink()
    if not has_cacerts(directory, cluster_name):
        for name in _DERIVED:
            (folder / name).unlink(missing_ok=True)


def has_cacerts(directory: Path, cluster_name: str) -> bool:
    return all(p.is_file() and p.stat().st_size > 0 for p in cacerts_files(directory, cluster_name).values())


# --- one intermediate, signed in a folder of its own ---------------------------------------------
# The Makefile signs with `-CAcreateserial`, which reads and rewrites root-cert.srl in the folder make
# runs in: signings sharing certs/ would race on that file (two intermediates with one serial, or a
# cut-off file that fails the next signing). Each cluster's make runs in certs/.signing-<name>/ instead,
# where the serial file is its own and starts at a fresh random value, so clusters sign side by side.


def signing_dir(directory: Path, cluster_name: str) -> Path:
    return directory / f"{SIGNING_PREFIX}{cluster_name}"


def prepare_signing(directory: Path, cluster_name: str) -> Path:
    """certs/.signing-<name>/ (0700) ready for ``make <name>-cacerts``: a copy of the root certificate, a
    link to the root key (a 0600 copy only where the file system has no links), and whatever an earlier
    run made towards this intermediate (its key, say: make keeps what exists), half-written files removed."""
    for name in (ROOT_CERT, ROOT_KEY):
        if not (directory / name).is_file():
            raise MeshError(f"the root CA file {directory / name} is missing: the intermediate CA for "
                            f"{cluster_name} cannot be signed",
                            hint="restore it from a copy of the workspace (or, for a new mesh, run prep-mesh)")
    stage = signing_dir(directory, cluster_name)
    stage.mkdir(mode=0o700, exist_ok=True)
    os.chmod(stage, 0o700)
    _carry_over(directory / cluster_name, stage / cluster_name)
    discard_incomplete(stage, cluster_name)
    for name in (ROOT_CERT, ROOT_KEY, ROOT_SERIAL):
        (stage / name).unlink(missing_ok=True)
    _link_root_key(directory, stage)
    # Copied last, so newer than the root key: make never takes the root certificate as out of date.
    shutil.copyfile(directory / ROOT_CERT, stage / ROOT_CERT)
    return stage


def _link_root_key(directory: Path, stage: Path) -> None:
    """A link to the root key; where the file system has no links, a copy made 0600 from the start
    (removed with the signing folder, and by the next run if this one is cut short)."""
    try:
        os.symlink(os.path.join(os.pardir, ROOT_KEY), stage / ROOT_KEY)
    except OSError:
        fd = os.open(stage / ROOT_KEY, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as copy:
            copy.write((directory / ROOT_KEY).read_bytes())


def _carry_over(old: Path, new: Path) -> None:
    """An incomplete certs/<name>/ (an interrupted run of an earlier version) goes on in the signing folder."""
    if not old.is_dir():
        return
    if not new.exists():
        os.replace(old, new)
        return
    for path in old.iterdir():
        if not (new / path.name).exists():
            os.replace(path, new / path.name)
        elif path.is_file():
            path.unlink()
    _remove_empty(old)


def _remove_empty(folder: Path) -> None:
    try:
        folder.rmdir()
    except OSError:
        raise MeshError(f"{folder} holds something setup-mesh did not make, where the intermediate CA goes",
                        hint=f"move what is in {folder} elsewhere, then run the same command again") from None


def finish_signing(directory: Path, cluster_name: str) -> None:
    """Moves the made intermediate to certs/<name>/ (folder 0700, key 0600) and removes the signing folder."""
    stage = signing_dir(directory, cluster_name)
    made = stage / cluster_name
    if not has_cacerts(stage, cluster_name):
        raise MeshError(f"make ended without making every file of the intermediate CA in {made}",
                        hint="see make's output in the run log, then run the same command again")
    if (made / ROOT_CERT).read_bytes() != (directory / ROOT_CERT).read_bytes():
        shutil.rmtree(made)
        raise MeshError(f"the intermediate CA made for {cluster_name} names another root than {directory / ROOT_CERT}",
                        hint="run the same command again: it makes a new one")
    secure_tree(made)
    target = directory / cluster_name
    if target.is_dir():
        _remove_empty(target)  # emptied by prepare_signing; a folder holding something else stays
    os.replace(made, target)
    shutil.rmtree(stage)  # the root certificate's copy, the key's link, the serial file


@dataclass(frozen=True)
class CertInfo:
    subject: str
    organization: str | None
    fingerprint: str  # SHA-256, hex
    not_after: dt.datetime
    is_ca: bool
    common_name: str | None = None
    issuer: str = ""

    def days_left(self, now: dt.datetime | None = None) -> int:
        now = now or dt.datetime.now(dt.timezone.utc)
        return (self.not_after - now).days


def read_cert(pem: bytes) -> CertInfo:
    # Imported here: most runs read no certificate, and the import costs a tenth of a second.
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import NameOID

    cert = x509.load_pem_x509_certificate(pem)
    orgs = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    try:
        is_ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        is_ca = False
    return CertInfo(
        subject=cert.subject.rfc4514_string(),
        organization=str(orgs[0].value) if orgs else None,
        fingerprint=cert.fingerprint(hashes.SHA256()).hex(),
        not_after=cert.not_valid_after_utc,
        is_ca=is_ca,
        common_name=str(names[0].value) if names else None,
        issuer=cert.issuer.rfc4514_string(),
    )


def root_organization(directory: Path) -> str | None:
    """The organisation of the workspace's root CA: intermediates are issued under the same name."""
    path = directory / ROOT_CERT
    if not path.is_file():
        return None
    return read_cert(path.read_bytes()).organization


def bundle_fingerprints(pem: bytes | None) -> set[str]:
    """The SHA-256 fingerprints of every certificate in a PEM bundle (none when it does not parse)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    try:
        return {c.fingerprint(hashes.SHA256()).hex() for c in x509.load_pem_x509_certificates(pem or b"")}
    except ValueError:
        return set()


def describe_foreign(cacerts: dict[str, bytes]) -> str:
    """Whose CA a foreign cacerts holds, for the question apply asks before replacing it."""
    try:
        info = read_cert(cacerts.get("ca-cert.pem") or b"")
    except ValueError:
        return "its ca-cert.pem does not parse"
    return f"CA {info.subject}, issued by {info.issuer}"


def not_issued_by_root(directory: Path, cluster_names) -> list[str]:
    """The clusters whose intermediate in ``directory`` (made, not half-made) the root there did not issue:
    copied from another workspace, or left from a root made again since."""
    root = directory / ROOT_CERT
    if not root.is_file():
        return []
    root_pem = root.read_bytes()
    return [name for name in cluster_names if has_cacerts(directory, name)
            and not issued_by((directory / name / "ca-cert.pem").read_bytes(), root_pem)]


@dataclass(frozen=True)
class IntermediateFlaws:
    """What is wrong with the workspace's intermediates in certs/<cluster>/, as apply refuses it and status
    reports it (cluster names)."""

    foreign: list[str]  # not issued by the workspace's root
    unkeyed: list[str]  # ca-key.pem is not the key of ca-cert.pem


def intermediate_flaws(directory: Path, cluster_names, moving: bool) -> IntermediateFlaws:
    """``moving``: a move to a new root is under way, whose stages decide what each cluster holds (and
    rotate-certs re-issues the intermediates): none is judged."""
    if moving:
        return IntermediateFlaws([], [])
    names = list(cluster_names)
    return IntermediateFlaws(not_issued_by_root(directory, names), keys_not_matching(directory, names))


def keys_not_matching(directory: Path, cluster_names) -> list[str]:
    """The clusters whose intermediate in ``directory`` (made, not half-made) has a ca-key.pem that is not
    the key of its ca-cert.pem: istiod would not start on that cacerts (Istio's Verify pairs them as
    tls.X509KeyPair does), nor sign with it."""
    return [name for name in cluster_names if has_cacerts(directory, name)
            and not key_matches((directory / name / "ca-cert.pem").read_bytes(),
                                (directory / name / "ca-key.pem").read_bytes())]


def key_matches(cert_pem: bytes, key_pem: bytes) -> bool:
    """``key_pem`` (unencrypted, as the certs Makefile writes it) is the private key of ``cert_pem``'s first
    certificate (False when either does not parse)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    public = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
        # Only the public half is compared (as tls.X509KeyPair does): checking a 4096-bit RSA key's private
        # numbers costs about 0.7 s a key, on every apply and status.
        key = serialization.load_pem_private_key(key_pem, password=None, unsafe_skip_rsa_key_validation=True)
    except (ValueError, TypeError):
        return False
    return cert.public_key().public_bytes(*public) == key.public_key().public_bytes(*public)


def issued_by(cert_pem: bytes | None, issuer_pem: bytes | None) -> bool:
    """``cert_pem``'s first certificate is signed by the key of ``issuer_pem``'s first (False when either is
    missing or does not parse)."""
    from cryptography import x509
    from cryptography.exceptions import InvalidSignature

    if not cert_pem or not issuer_pem:
        return False
    try:
        cert, issuer = x509.load_pem_x509_certificate(cert_pem), x509.load_pem_x509_certificate(issuer_pem)
        cert.verify_directly_issued_by(issuer)
        return True
    except (ValueError, TypeError, InvalidSignature):
        return False
