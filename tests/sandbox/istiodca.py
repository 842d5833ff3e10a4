"""istiod's certificate authority as the emulated clusters play it: which root bundle each istiod holds,
and the ConfigMap ``istio-ca-root-cert`` it publishes into every namespace.

No istiod runs in the sandbox; these are the parts of it setup-mesh's certificate handling relies on,
each taken from Istio's source (paths in istio/istio):

- **start** (``pilot/pkg/bootstrap/istio_ca.go`` ``createIstioCA``, 1.29.6 and 1.30.3): an istiod pod
  that starts while ``cacerts`` in its namespace holds a complete plugged-in bundle (ca-key.pem,
  ca-cert.pem, root-cert.pem, cert-chain.pem) loads it whole, whatever root-cert.pem holds, and only
  then watches those files (``initCACertsAndCRLWatcher``). Without one it signs with a root of its own
  kept in ``istio-ca-secret`` (made once, reused by later pods) and watches nothing: a cacerts made
  afterwards is taken only by a new pod.
- **a changed cacerts** (``handleEvent``, 1.29.6 ~329-366, 1.30.3 ~331-368): a root-cert.pem that
  differs from the bundle istiod holds is taken only when the pod started with
  ``ISTIO_MULTIROOT_MESH`` true (read once at start, ``pilot/pkg/features/pilot.go``) and one bundle
  contains the other: byte for byte up to 1.29 (``bytes.Contains`` either way, so order matters), as a
  set of certificates from 1.30.0 on (``pemBundleHasSubsetRelation``). Otherwise istiod keeps what it
  had and logs "Updating new ROOT-CA not supported" (or "Multi root is disabled, ..."). A bundle that
  passes is still checked whole (``Verify``, security/pkg/pki/util/keycertbundle.go): ca-cert.pem must
  verify to root-cert.pem through cert-chain.pem and ca-key.pem must be its key, or istiod logs
  "Failed to update new Plug-in CA certs" and keeps what it had. An unchanged root-cert.pem (a new
  intermediate) changes nothing held here. Which rule applies is the version of the pod's ``discovery``
  image.
- **publishing** (``pilot/pkg/serviceregistry/kube/controller/namespacecontroller.go``, 1.30.3): istiod
  writes the bundle it holds, as it holds it, under ``root-cert.pem`` of the ConfigMap
  ``istio-ca-root-cert`` (label ``istio.io/config=true``) in every namespace but kube-public,
  kube-node-lease and local-path-storage (``pkg/kube/inject/initializer.go``), at start, whenever its
  bundle changes and when a namespace appears. With several istiods the default revision's newest pod
  writes (one leader). In a remote cluster no istiod runs and nothing is written here.

- **a start on a bundle that fails ``Verify``** (``createIstioCA``: "failed to create an istiod CA"):
  istiod exits; its discovery container stays in CrashLoopBackOff, not ready, holding no CA, until a
  cacerts it can load is written (the kubelet's restart back-off is taken as none).

Not modelled: the delay before the kubelet refreshes the mounted secret, the restart back-off, and CRLs.
"""
from __future__ import annotations

import base64
import binascii
import copy
import functools
import itertools
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass

CONFIGMAP = "istio-ca-root-cert"  # features.CACertConfigMapName
CONFIGMAP_KEY = "root-cert.pem"  # constants.CACertNamespaceConfigMapDataName
SELF_SIGNED_SECRET = "istio-ca-secret"
PLUGGED_FILES = ("ca-key.pem", "ca-cert.pem", "root-cert.pem", "cert-chain.pem")
IGNORED_NAMESPACES = {"kube-public", "kube-node-lease", "local-path-storage"}  # kube-system is written
MULTIROOT_ENV = "ISTIO_MULTIROOT_MESH"
_SET_RULE_FROM = (1, 30)  # the first minor comparing bundles as sets
_order = itertools.count()


@dataclass
class HeldCA:
    """What one running istiod pod holds (its process memory)."""

    namespace: str
    revision: str
    version: tuple[int, int] | None
    multiroot: bool
    watching: bool  # started with a plugged-in cacerts
    roots: bytes
    order: int  # start order: the newest pod writes
    refused: str = ""  # the last root change refused, as istiod logs it


def watches(group: str, plural: str) -> bool:
    return group == "" and plural in ("pods", "secrets", "namespaces")


def _go_bool(value: str | None) -> bool:
    """strconv.ParseBool, as Istio's env.Register reads a bool (an unparseable value: the default, false)."""
    return (value or "") in ("1", "t", "T", "TRUE", "true", "True")


def _discovery(pod: dict) -> dict:
    for container in (pod.get("spec") or {}).get("containers") or []:
        if container.get("name") == "discovery":
            return container
    return {}


def _version(image: str | None) -> tuple[int, int] | None:
    tag = (image or "").rsplit("/", 1)[-1].rpartition(":")[2]
    match = re.match(r"^(\d+)\.(\d+)", tag)
    return (int(match.group(1)), int(match.group(2))) if match else None


def _is_istiod(pod: dict) -> bool:
    return ((pod.get("metadata") or {}).get("labels") or {}).get("app") == "istiod"


def _secret_files(secret: dict | None) -> dict[str, bytes]:
    out = {}
    for name, value in ((secret or {}).get("data") or {}).items():
        try:
            out[name] = base64.b64decode(value)
        except (binascii.Error, ValueError):
            pass
    return out


def certificate_set(bundle: bytes) -> set[bytes]:
    """The DER of each CERTIFICATE block (pemToRawCertSet, istio_ca.go 1.30.3), found as Go's
    ``encoding/pem`` Decode finds blocks, which that function loops over."""
    return set(certificate_list(bundle))


def pem_blocks(data: bytes) -> list[tuple[bytes, bytes]]:
    """(type, DER) of each block Go's ``pem.Decode`` (``encoding/pem``) returns, called until it returns
    none: a block starts with "-----BEGIN <type>-----" at the start of the data or of a line,
    ends with "-----END <type>-----" at the start of a line followed by nothing but spaces and tabs to the
    end of that line; its body is base64 (header lines with a colon are skipped). A block that breaks
    any of these is skipped and the search goes on after its BEGIN line, so two PEM files glued
    together without a newline ("...-----END CERTIFICATE----------BEGIN CERTIFICATE-----") yield
    neither certificate."""
    found, rest = [], data
    while True:
        if rest.startswith(b"-----BEGIN "):
            start = 0
        else:
            at = rest.find(b"\n-----BEGIN ")
            if at < 0:
                return found
            start = at + 1
        line, rest = _line(rest[start + len(b"-----BEGIN "):])
        if not line.endswith(b"-----"):
            continue
        kind = line[:-5]
        block = _pem_body(kind, rest)
        if block is not None:
            found.append((kind, block[0]))
            rest = block[1]


def _line(data: bytes) -> tuple[bytes, bytes]:
    """getLine: the line without its end (and trailing spaces and tabs), and what follows it."""
    end = data.find(b"\n")
    line, rest = (data, b"") if end < 0 else (data[:end], data[end + 1:])
    return line.rstrip(b"\r").rstrip(b" \t"), rest


def _pem_body(kind: bytes, rest: bytes) -> tuple[bytes, bytes] | None:
    """The DER of the block whose BEGIN line was just read, and the data after its END line; None when
    Go rejects the block."""
    body = rest
    while True:  # header lines ("Proc-Type: ...") come first
        line, after = _line(body)
        if b":" not in line or not after:
            break
        body = after
    end = (b"\n" + body).find(b"\n-----END ")
    if end < 0:
        return None
    payload = body[:max(end - 1, 0)] if end else b""
    trailer, after = _line(body[end + len(b"-----END "):])
    if trailer != kind + b"-----":
        return None
    encoded = bytes(c for c in payload if c not in b" \t\r\n")
    try:
        return base64.b64decode(encoded, validate=True), after
    except (binascii.Error, ValueError):
        return None


def accepts_root_change(version: tuple[int, int] | None, current: bytes, new: bytes) -> bool:
    """Whether an istiod of ``version`` (with multi-root on) takes root bundle ``new`` over ``current``."""
    if version is not None and version < _SET_RULE_FROM:
        return current in new or new in current  # bytes.Contains either way (1.28, 1.29)
    a, b = certificate_set(current), certificate_set(new)
    return bool(a) and bool(b) and (a <= b or b <= a)  # pemBundleHasSubsetRelation (1.30+)


def on_write(cluster, rt, key, old: dict | None, obj: dict) -> None:
    """Called by the API server, under its lock, after every write of a watched kind."""
    group, plural, ns, name = key
    if plural == "pods" and old is None and _is_istiod(obj):
        _start(cluster, obj)
        _publish(cluster, ns)
    elif plural == "secrets" and name == "cacerts":
        if _reload(cluster, ns, _secret_files(obj)) | _restart_crashed(cluster, ns):
            _publish(cluster, ns)
    elif plural == "namespaces" and old is None:
        for system_ns in sorted({h.namespace for h in _held(cluster).values()}):
            _publish(cluster, system_ns, only=name)


def on_delete(cluster, rt, key, obj: dict) -> None:
    if key[1] == "pods":
        _held(cluster).pop(obj["metadata"].get("uid"), None)


def _held(cluster) -> dict[str, HeldCA]:
    if not hasattr(cluster, "istiod_cas"):
        cluster.istiod_cas = {}
    return cluster.istiod_cas


def start_failure(cluster, pod: dict, container: dict) -> str | None:
    """Why this container exits at start (the API server's pod status shows it in CrashLoopBackOff), or None:
    an istiod's discovery container on a complete plugged-in cacerts that fails ``Verify`` ("failed to
    create an istiod CA", createIstioCA -> NewPluggedCertIstioCAOptions -> NewVerifiedKeyCertBundleFromFile).
    Such a pod holds no CA."""
    if container.get("name") != "discovery" or not _is_istiod(pod):
        return None
    flaw = _start_flaw(cluster, pod)
    return None if flaw is None else f"failed to create an istiod CA: {flaw}"


def _start_flaw(cluster, pod: dict) -> str | None:
    files = _secret_files(cluster.objects.get(("", "secrets", pod["metadata"].get("namespace", ""), "cacerts")))
    if not all(files.get(f) for f in PLUGGED_FILES):
        return None  # no plugged-in CA: istiod signs with a root of its own
    return bundle_flaw(files)


def _crashed(pod: dict) -> bool:
    return any(cs.get("name") == "discovery" and "waiting" in (cs.get("state") or {})
               and cs["state"]["waiting"].get("reason") == "CrashLoopBackOff"
               for cs in (pod.get("status") or {}).get("containerStatuses") or [])


def _restart_crashed(cluster, ns: str) -> bool:
    """The kubelet restarts a crashed istiod container (with a back-off, taken as none here); one that
    now loads its namespace's cacerts runs: it becomes ready and holds that CA. Whether one started."""
    started = False
    for key, pod in list(cluster.objects.items()):
        if key[:3] != ("", "pods", ns) or not _is_istiod(pod) or not _crashed(pod) or _start_flaw(cluster, pod):
            continue
        cluster.container_ready(key, "discovery", restarted=True)
        _start(cluster, cluster.objects.get(key) or pod)
        started = True
    return started


def _start(cluster, pod: dict) -> None:
    if _crashed(pod):
        return  # exited: holds no CA, publishes nothing
    meta = pod["metadata"]
    ns = meta.get("namespace", "")
    container = _discovery(pod)
    env = {e.get("name"): e.get("value") for e in container.get("env") or []}
    files = _secret_files(cluster.objects.get(("", "secrets", ns, "cacerts")))
    plugged = all(files.get(f) for f in PLUGGED_FILES)
    roots = files["root-cert.pem"] if plugged else _self_signed_root(cluster, ns)
    _held(cluster)[meta.get("uid")] = HeldCA(
        namespace=ns, revision=(meta.get("labels") or {}).get("istio.io/rev", "default"),
        version=_version(container.get("image")), multiroot=_go_bool(env.get(MULTIROOT_ENV)),
        watching=plugged, roots=roots, order=next(_order))


def _reload(cluster, ns: str, files: dict[str, bytes]) -> bool:
    """handleEvent in every pod watching this cacerts; whether a held bundle changed."""
    new = files.get("root-cert.pem")
    changed = False
    for held in _held(cluster).values():
        if held.namespace != ns or not held.watching or not new or new == held.roots:
            continue
        if not held.multiroot:
            held.refused = "Multi root is disabled, updating new ROOT-CA not supported"
        elif not accepts_root_change(held.version, held.roots, new):
            held.refused = "Updating new ROOT-CA not supported"
        elif (flaw := bundle_flaw(files)) is not None:
            held.refused = f"Failed to update new Plug-in CA certs: {flaw}"
        else:
            held.roots, held.refused, changed = new, "", True
    return changed


def bundle_flaw(files: dict[str, bytes], at: int | None = None) -> str | None:
    """Why istiod would not take a plugged-in bundle (``Verify``, security/pkg/pki/util/keycertbundle.go,
    which handleEvent calls through UpdateVerifiedKeyCertBundleFromFile after the root checks; on an
    error istiod logs it and keeps what it holds): ca-cert.pem must verify to a certificate of
    root-cert.pem through those of cert-chain.pem (Go's x509 Verify: signatures, names, validity now),
    and ca-key.pem must be its key (tls.X509KeyPair). Checked with the real openssl (the emulator runs
    on the standard library alone), on the certificates Go's pem.Decode finds. ``at``: the time to
    verify at (seconds since the epoch; default now). None: taken."""
    return _bundle_flaw(*(files.get(name, b"") for name in PLUGGED_FILES), at)


@functools.lru_cache(maxsize=64)
def _bundle_flaw(key_pem: bytes, cert_pem: bytes, root_pem: bytes, chain_pem: bytes, at: int | None) -> str | None:
    """bundle_flaw of one bundle: an istiod restarted, or another revision's, reads the same cacerts again,
    and each check starts several openssl processes. (A certificate that expires meanwhile is not seen
    until the emulator restarts; the sandbox's certificates last days at least.)"""
    files = {"ca-key.pem": key_pem, "ca-cert.pem": cert_pem, "root-cert.pem": root_pem, "cert-chain.pem": chain_pem}
    leaf = [b for kind, b in pem_blocks(files.get("ca-cert.pem", b""))[:1] if kind == b"CERTIFICATE"]
    if not leaf:
        return "failed to parse cert PEM: invalid PEM encoded certificate"
    tmp = tempfile.mkdtemp(prefix="sandbox-istiod-verify-")
    try:
        roots, chain = certificate_list(files.get("root-cert.pem", b"")), certificate_list(files.get("cert-chain.pem", b""))
        for name, blocks in (("ca-cert.pem", leaf), ("cert-chain.pem", chain),
                             *((f"root-{i}.pem", [der]) for i, der in enumerate(roots)), ("ca-key.pem", None)):
            with open(os.path.join(tmp, name), "wb") as out:
                out.write(files.get(name, b"") if blocks is None else b"".join(_pem(der) for der in blocks))
        when = (["-attime", str(at)] if at is not None else []) + (["-untrusted", "cert-chain.pem"] if chain else [])
        # One root at a time: Go tries every root whose name matches, openssl only the first it finds.
        tried = [_openssl(tmp, "verify", "-no-CApath", "-no-CAstore", "-CAfile", f"root-{i}.pem", *when, "ca-cert.pem")
                 for i in range(len(roots))]
        if not any(run.returncode == 0 for run in tried):
            said = (tried[-1].stdout + tried[-1].stderr).decode(errors="replace").strip() if tried else "no root"
            return "cannot verify the cert with the provided root chain and cert pool with error: " + \
                (said.splitlines() or [""])[-1]
        key = _openssl(tmp, "pkey", "-in", "ca-key.pem", "-pubout")
        if key.returncode != 0:
            return "failed to parse private key PEM: invalid PEM-encoded private key"
        if key.stdout != _openssl(tmp, "x509", "-in", "ca-cert.pem", "-noout", "-pubkey").stdout:
            return "the cert does not match the key: tls: private key does not match public key"
        return None
    except (OSError, subprocess.SubprocessError, IndexError) as exc:
        return f"cannot verify the cert: {exc}"
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def certificate_list(bundle: bytes) -> list[bytes]:
    """The DER of each CERTIFICATE block Go's pem.Decode finds, in order (AppendCertsFromPEM)."""
    return [body for kind, body in pem_blocks(bundle) if kind == b"CERTIFICATE"]


def _pem(der: bytes) -> bytes:
    encoded = base64.b64encode(der)
    return b"-----BEGIN CERTIFICATE-----\n" + b"\n".join(encoded[i:i + 64] for i in range(0, len(encoded), 64)) + \
        b"\n-----END CERTIFICATE-----\n"


def _openssl(cwd: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, timeout=20)


def _writer(cluster, ns: str) -> HeldCA | None:
    """The istiod whose namespace controller leads: the default revision first, its newest pod."""
    running = [h for h in _held(cluster).values() if h.namespace == ns]
    if not running:
        return None
    return max(running, key=lambda h: (h.revision == "default", h.order))


def _publish(cluster, system_ns: str, only: str | None = None) -> None:
    writer = _writer(cluster, system_ns)
    if writer is None:
        return
    text = writer.roots.decode("utf-8", errors="replace")
    cm_rt = cluster.lookup("", "v1", "configmaps")
    for key in sorted(k for k in cluster.objects if k[:2] == ("", "namespaces")):
        ns = key[3]
        if ns in IGNORED_NAMESPACES or (only is not None and ns != only) or cluster._namespace_terminating(ns):
            continue
        cm_key = ("", "configmaps", ns, CONFIGMAP)
        current = cluster.objects.get(cm_key)
        if current is None:
            try:
                cluster._create(cm_rt, ns, {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {
                    "name": CONFIGMAP, "labels": {"istio.io/config": "true"}}, "data": {CONFIGMAP_KEY: text}}, {})
            except Exception:  # noqa: BLE001 - istiod retries; the write that woke it must not fail
                continue
        elif (current.get("data") or {}).get(CONFIGMAP_KEY) != text:
            new = copy.deepcopy(current)
            new.setdefault("data", {})[CONFIGMAP_KEY] = text
            cluster._commit(cm_rt, cm_key, new, "MODIFIED", current)


def _self_signed_root(cluster, ns: str) -> bytes:
    """istio-ca-secret's root, made the first time an istiod starts without cacerts (O=cluster.local)."""
    files = _secret_files(cluster.objects.get(("", "secrets", ns, SELF_SIGNED_SECRET)))
    if files.get("ca-cert.pem"):
        return files["ca-cert.pem"]
    tmp = tempfile.mkdtemp(prefix="sandbox-istiod-ca-")
    try:
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                        "-nodes", "-keyout", "ca-key.pem", "-out", "ca-cert.pem", "-subj", "/O=cluster.local",
                        "-days", "3650", "-addext", "basicConstraints=critical,CA:TRUE",
                        "-addext", "keyUsage=critical,keyCertSign,cRLSign,digitalSignature"],
                       cwd=tmp, check=True, capture_output=True, timeout=20)
        cert = open(os.path.join(tmp, "ca-cert.pem"), "rb").read()
        key = open(os.path.join(tmp, "ca-key.pem"), "rb").read()
    except (OSError, subprocess.SubprocessError):
        return b""
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    data = {name: base64.b64encode(value).decode() for name, value in
            (("ca-cert.pem", cert), ("ca-key.pem", key), ("cert-chain.pem", b""), ("key.pem", b""),
             ("root-cert.pem", b""))}
    cluster._create(cluster.lookup("", "v1", "secrets"), ns, {
        "apiVersion": "v1", "kind": "Secret", "type": "istio.io/ca-root",
        "metadata": {"name": SELF_SIGNED_SECRET}, "data": data}, {})
    return cert
