"""The stand-in Istio release: its layout, the certs Makefile (real make, real openssl) and the samples."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys

import pytest
import yaml

from tests.meshkit import FAST_KEY_BITS, FAST_KEYS
from tests.sandbox.release import VERSION, materialize_release

pytestmark = pytest.mark.skipif(shutil.which("make") is None or shutil.which("openssl") is None,
                                reason="needs make and openssl")

# Istio 1.30.3's recipes make every key 4096 bits whatever these say (they reach only default_bits).
FAST = [f"{k}={v}" for k, v in FAST_KEYS.items()]


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    return materialize_release(tmp_path_factory.mktemp("rel"))


def make(release, cwd, *args, env=None, check=True):
    mk = release / "tools" / "certs" / "Makefile.selfsigned.mk"
    full_env = dict(os.environ)
    full_env.update(env or {})
    proc = subprocess.run(["make", "-f", str(mk), *args], cwd=cwd, env=full_env,
                          capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"make {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def small_keys(folder, *keys):
    """Keys made before make runs (make keeps a key that exists), as setup-mesh makes them: small, since a
    4096-bit key, the recipes' own, costs openssl seconds. Only the root key test makes one of those."""
    for key in keys:
        (folder / key).parent.mkdir(parents=True, exist_ok=True)
        openssl("genrsa", "-out", str(folder / key), str(FAST_KEY_BITS))


def openssl(*args, cwd=None):
    return subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True, check=True).stdout


def subject(path):
    return openssl("x509", "-noout", "-subject", "-nameopt", "RFC2253", "-in", str(path)).strip()


def text(path):
    return openssl("x509", "-noout", "-text", "-in", str(path))


# ----------------------------------------------------------------------------- layout


def test_materialize_lays_out_a_release_and_is_idempotent(tmp_path):
    rel = materialize_release(tmp_path, python=sys.executable)
    assert rel == tmp_path / f"istio-{VERSION}"
    for f in ("bin/istioctl", "tools/certs/Makefile.selfsigned.mk", "tools/certs/common.mk",
              "tools/certs/Makefile.k8s.mk", "samples/multicluster/gen-eastwest-gateway.sh",
              "samples/multicluster/expose-services.yaml", "samples/multicluster/expose-istiod.yaml",
              "manifests/profiles/default.yaml", "manifest.yaml"):
        assert (rel / f).is_file(), f
    assert not (rel / "README-standin.md").exists()
    istioctl = rel / "bin" / "istioctl"
    assert istioctl.read_text().splitlines()[0] == f"#!{sys.executable} -S", "started without the site module"
    assert os.access(istioctl, os.X_OK)
    assert os.access(rel / "samples/multicluster/gen-eastwest-gateway.sh", os.X_OK)
    assert yaml.safe_load((rel / "manifest.yaml").read_text())["version"] == VERSION

    before = {p: p.read_bytes() for p in rel.rglob("*") if p.is_file()}
    again = materialize_release(tmp_path, python=sys.executable)
    assert again == rel
    assert {p: p.read_bytes() for p in rel.rglob("*") if p.is_file()} == before
    assert istioctl.stat().st_mode & stat.S_IXUSR

    other = materialize_release(tmp_path, python="/usr/bin/python3")
    assert other.joinpath("bin/istioctl").read_text().splitlines()[0] == "#!/usr/bin/python3"


def test_istioctl_runs_with_the_given_interpreter(release):
    out = subprocess.run([str(release / "bin" / "istioctl"), "version", "--remote=false"],
                         capture_output=True, text=True, check=True).stdout
    assert out == f"client version: {VERSION}\n"


# ----------------------------------------------------------------------------- certs Makefile


def test_root_ca_creates_the_root_files(release, tmp_path):
    proc = make(release, tmp_path, "root-ca", *FAST)
    assert "generating root-cert.pem" in proc.stdout
    for f in ("root-key.pem", "root-cert.pem", "root-ca.conf", "root-cert.csr"):
        assert (tmp_path / f).is_file(), f
    assert subject(tmp_path / "root-cert.pem") == "subject=CN=Root CA,O=Istio"
    t = text(tmp_path / "root-cert.pem")
    assert "X509v3 Basic Constraints: critical" in t and "CA:TRUE" in t
    assert "pathlen" not in t
    assert "Digital Signature, Non Repudiation, Key Encipherment, Certificate Sign" in t
    assert "Public-Key: (4096 bit)" in t, "ROOTCA_KEYSZ is not honoured by Istio's recipe"
    assert "sha256WithRSAEncryption" in t
    assert "BEGIN PRIVATE KEY" in (tmp_path / "root-key.pem").read_text() or \
        "BEGIN RSA PRIVATE KEY" in (tmp_path / "root-key.pem").read_text()


def test_cacerts_builds_an_intermediate_signed_by_the_root(release, tmp_path):
    small_keys(tmp_path, "root-key.pem", "cluster1/ca-key.pem")
    make(release, tmp_path, "root-ca", *FAST)
    proc = make(release, tmp_path, "cluster1-cacerts", *FAST, "INTERMEDIATE_SAN_DNS=istiod.istio-system.svc")
    assert proc.stdout.rstrip().endswith("rm cluster1/cluster-ca.csr cluster1/intermediate.conf") or \
        "done" in proc.stdout
    d = tmp_path / "cluster1"
    for f in ("ca-key.pem", "ca-cert.pem", "cert-chain.pem", "root-cert.pem"):
        assert (d / f).is_file(), f
    # make removes the intermediate request and config, like the real Makefile does
    assert not (d / "cluster-ca.csr").exists()
    assert (tmp_path / "root-cert.srl").is_file()

    verify = openssl("verify", "-CAfile", "root-cert.pem", "cluster1/ca-cert.pem", cwd=tmp_path)
    assert verify.strip() == "cluster1/ca-cert.pem: OK"
    assert subject(d / "ca-cert.pem") == "subject=L=cluster1,CN=Intermediate CA,O=Istio"
    t = text(d / "ca-cert.pem")
    assert "CA:TRUE, pathlen:0" in t
    assert "X509v3 Key Usage: critical" in t
    assert "Digital Signature, Non Repudiation, Key Encipherment, Certificate Sign" in t
    assert "DNS:istiod.istio-system.svc" in t
    issuer = openssl("x509", "-noout", "-issuer", "-nameopt", "RFC2253", "-in", str(d / "ca-cert.pem")).strip()
    assert issuer == "issuer=CN=Root CA,O=Istio"
    assert (d / "cert-chain.pem").read_text() == (d / "ca-cert.pem").read_text() + (tmp_path / "root-cert.pem").read_text()
    assert (d / "root-cert.pem").read_bytes() == (tmp_path / "root-cert.pem").read_bytes()


def test_existing_keys_and_certs_are_kept(release, tmp_path):
    small_keys(tmp_path, "root-key.pem", "c1/ca-key.pem")
    make(release, tmp_path, "root-ca", *FAST)
    make(release, tmp_path, "c1-cacerts", *FAST)
    files = ["root-key.pem", "root-cert.pem", "c1/ca-key.pem", "c1/ca-cert.pem", "c1/cert-chain.pem"]
    before = {f: (tmp_path / f).read_bytes() for f in files}
    again = make(release, tmp_path, "root-ca", *FAST)
    assert "Nothing to be done" in again.stdout
    again = make(release, tmp_path, "c1-cacerts", *FAST)
    assert "generating" not in again.stdout
    assert {f: (tmp_path / f).read_bytes() for f in files} == before


@pytest.mark.parametrize("how", ["command-line", "environment"])
def test_variables_from_command_line_and_environment(release, tmp_path, how):
    values = {"ROOTCA_ORG": "Acme Inc", "ROOTCA_CN": "Acme Root", "INTERMEDIATE_ORG": "Acme Mesh",
              "INTERMEDIATE_CN": "Acme Intermediate", "INTERMEDIATE_SAN_DNS": "istiod.mesh-system.svc",
              "ROOTCA_DAYS": "30", "INTERMEDIATE_DAYS": "20", **dict(v.split("=") for v in FAST)}
    if how == "command-line":
        args, env = [f"{k}={v}" for k, v in values.items()], {}
    else:
        args, env = [], values
    small_keys(tmp_path, "root-key.pem", "east/ca-key.pem")
    make(release, tmp_path, "root-ca", "east-cacerts", *args, env=env)
    assert subject(tmp_path / "root-cert.pem") == "subject=CN=Acme Root,O=Acme Inc"
    assert subject(tmp_path / "east/ca-cert.pem") == "subject=L=east,CN=Acme Intermediate,O=Acme Mesh"
    assert "DNS:istiod.mesh-system.svc" in text(tmp_path / "east/ca-cert.pem")
    enddates = {f: openssl("x509", "-noout", "-enddate", "-in", f, cwd=tmp_path) for f in
                ("root-cert.pem", "east/ca-cert.pem")}
    startdate = openssl("x509", "-noout", "-startdate", "-in", "root-cert.pem", cwd=tmp_path)
    assert enddates["root-cert.pem"] != enddates["east/ca-cert.pem"]
    assert startdate


def test_default_variables_are_the_real_ones(release):
    common = (release / "tools/certs/common.mk").read_text()
    for line in ("ROOTCA_DAYS ?= 3650", "ROOTCA_KEYSZ ?= 4096", "ROOTCA_ORG ?= Istio", "ROOTCA_CN ?= Root CA",
                 "INTERMEDIATE_DAYS ?= 3650", "INTERMEDIATE_KEYSZ ?= 4096", "INTERMEDIATE_ORG ?= Istio",
                 "INTERMEDIATE_CN ?= Intermediate CA", "INTERMEDIATE_SAN_DNS ?= istiod.istio-system.svc",
                 "WORKLOAD_DAYS ?= 1", "SERVICE_ACCOUNT ?= default", "WORKLOAD_CN ?= Workload"):
        assert line in common, line
    dry = subprocess.run(["make", "-n", "-f", str(release / "tools/certs/Makefile.selfsigned.mk"), "root-key.pem"],
                         cwd=release, capture_output=True, text=True, check=True).stdout
    assert "openssl genrsa -out root-key.pem 4096" in dry


def test_help_clean_and_workload_certs(release, tmp_path):
    helptext = make(release, tmp_path).stdout
    for target in ("root-ca:", "<name>-cacerts:", "<namespace>-certs:", "clean:"):
        assert target in helptext
    small_keys(tmp_path, "root-key.pem", "vm/ca-key.pem", "vm/key.pem")
    make(release, tmp_path, "root-ca", "vm-certs", *FAST, "SERVICE_ACCOUNT=app")
    for f in ("ca-cert.pem", "ca-key.pem", "key.pem", "workload-cert.pem", "workload-cert-chain.pem", "root-cert.pem"):
        assert (tmp_path / "vm" / f).is_file(), f
    t = text(tmp_path / "vm/workload-cert.pem")
    assert "URI:spiffe://cluster.local/ns/vm/sa/app" in t and "CA:FALSE" in t
    assert openssl("verify", "-CAfile", "root-cert.pem", "-untrusted", "vm/ca-cert.pem", "vm/workload-cert.pem",
                   cwd=tmp_path).strip().endswith("OK")
    make(release, tmp_path, "clean")
    assert not (tmp_path / "root-key.pem").exists() and not (tmp_path / "root-ca.conf").exists()
    assert (tmp_path / "vm" / "ca-cert.pem").exists()


# ----------------------------------------------------------------------------- samples


def test_gen_eastwest_gateway(release):
    script = release / "samples/multicluster/gen-eastwest-gateway.sh"
    out = subprocess.run([str(script), "--network", "network2", "--cluster", "c2", "--mesh", "m1"],
                         capture_output=True, text=True, check=True).stdout
    iop = yaml.safe_load(out)
    assert iop["kind"] == "IstioOperator" and iop["apiVersion"] == "install.istio.io/v1alpha1"
    assert iop["metadata"]["name"] == "eastwest"
    spec = iop["spec"]
    assert spec["profile"] == "empty" and spec["revision"] == ""
    (gw,) = spec["components"]["ingressGateways"]
    assert gw["name"] == "istio-eastwestgateway" and gw["enabled"] is True
    assert gw["label"] == {"istio": "eastwestgateway", "app": "istio-eastwestgateway",
                           "topology.istio.io/network": "network2"}
    assert gw["k8s"]["env"] == [{"name": "ISTIO_META_REQUESTED_NETWORK_VIEW", "value": "network2"}]
    assert [(p["name"], p["port"], p["targetPort"]) for p in gw["k8s"]["service"]["ports"]] == [
        ("status-port", 15021, 15021), ("tls", 15443, 15443), ("tls-istiod", 15012, 15012),
        ("tls-webhook", 15017, 15017)]
    assert spec["values"] == {"gateways": {"istio-ingressgateway": {"injectionTemplate": "gateway"}},
                              "global": {"network": "network2"}}

    rev = yaml.safe_load(subprocess.run([str(script), "--network", "n", "--revision", "canary"],
                                        capture_output=True, text=True, check=True).stdout)
    assert rev["spec"]["revision"] == "canary"

    missing = subprocess.run([str(script)], capture_output=True, text=True)
    assert missing.returncode == 1 and "Must specify either --single-cluster or --network." in missing.stdout
    bad = subprocess.run([str(script), "--network", "n", "--bogus"], capture_output=True, text=True)
    assert bad.returncode == 1 and "Unsupported flag --bogus" in bad.stderr


def test_expose_samples(release):
    (gw,) = list(yaml.safe_load_all((release / "samples/multicluster/expose-services.yaml").read_text()))
    assert gw["kind"] == "Gateway" and gw["apiVersion"] == "networking.istio.io/v1"
    assert gw["metadata"]["name"] == "cross-network-gateway"
    assert gw["spec"]["selector"] == {"istio": "eastwestgateway"}
    (server,) = gw["spec"]["servers"]
    assert server["port"] == {"number": 15443, "name": "tls", "protocol": "TLS"}
    assert server["tls"] == {"mode": "AUTO_PASSTHROUGH"} and server["hosts"] == ["*.local"]

    docs = list(yaml.safe_load_all((release / "samples/multicluster/expose-istiod.yaml").read_text()))
    assert [(d["kind"], d["metadata"]["name"]) for d in docs] == [("Gateway", "istiod-gateway"),
                                                                  ("VirtualService", "istiod-vs")]
    assert sorted(s["port"]["number"] for s in docs[0]["spec"]["servers"]) == [15012, 15017]
    assert all(s["tls"]["mode"] == "PASSTHROUGH" for s in docs[0]["spec"]["servers"])
