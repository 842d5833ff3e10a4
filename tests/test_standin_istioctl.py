"""The istioctl stand-in: cobra-style command line, and what it does to (emulated) clusters."""

from __future__ import annotations

import base64
import json
import os
import ssl
import subprocess
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

from tests.sandbox.release import VERSION, materialize_release

# ----------------------------------------------------------------------------- helpers


def run(cmd, env, stdin=None, check=False, timeout=60):
    proc = subprocess.run(cmd, env=env, input=stdin, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{cmd} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def records(istio_dir):
    path = Path(istio_dir).parent / "istioctl-calls.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture
def sb(sandbox_factory):
    return sandbox_factory(["c1", "c2"])


def istioctl(sb, *args, stdin=None, env=None, timeout=60):
    e = dict(sb.env)
    e.update(env or {})
    return run([str(Path(sb.istio_dir) / "bin" / "istioctl"), *args], e, stdin=stdin, timeout=timeout)


def write(path, doc):
    path.write_text(yaml.safe_dump(doc) if not isinstance(doc, str) else doc)
    return str(path)


def cluster_iop(ctx, network):
    return {"apiVersion": "install.istio.io/v1alpha1", "kind": "IstioOperator",
            "spec": {"values": {"global": {"meshID": "mesh1", "multiCluster": {"clusterName": ctx},
                                           "network": network}}}}


def eastwest(sb, network):
    script = Path(sb.istio_dir) / "samples/multicluster/gen-eastwest-gateway.sh"
    return run([str(script), "--network", network], sb.env, check=True).stdout


def wait_for(fn, timeout=60.0):
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.1)


def exists(sb, ctx, *args):
    return sb.kubectl(ctx, "get", *args, check=False).returncode == 0


# ----------------------------------------------------------------------------- command line (no cluster)


@pytest.fixture(scope="module")
def bare(tmp_path_factory):
    d = tmp_path_factory.mktemp("bare")
    rel = materialize_release(d)
    kubeconfig = d / "kubeconfig"
    # a cluster nobody listens on
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "dead",
        "clusters": [{"name": "dead", "cluster": {"server": "https://127.0.0.1:9"}}],
        "users": [{"name": "dead", "user": {"token": "x"}}],
        "contexts": [{"name": "dead", "context": {"cluster": "dead", "user": "dead"}}]}))
    env = dict(os.environ, KUBECONFIG=str(kubeconfig))

    class Bare:
        istio_dir = rel

        def __call__(self, *args, stdin=None, extra=None):
            return run([str(rel / "bin" / "istioctl"), *args], dict(env, **(extra or {})), stdin=stdin)

    return Bare()


def test_unknown_flag_is_rejected_like_cobra(bare):
    proc = bare("install", "--foo")
    assert proc.returncode == 64  # istioctl maps flag errors to EX_USAGE
    assert proc.stderr == "Error: unknown flag: --foo\n"
    assert proc.stdout == ""
    proc = bare("--kubeconfig", "x", "uninstall", "-z")
    assert proc.returncode == 64 and proc.stderr == "Error: unknown shorthand flag: 'z' in -z\n"
    proc = bare("install", "-f")
    assert proc.stderr == "Error: flag needs an argument: 'f' in -f\n"
    proc = bare("install", "--readiness-timeout=soon")
    assert proc.stderr == ('Error: invalid argument "soon" for "--readiness-timeout" flag: '
                           'time: invalid duration "soon"\n')


def test_unknown_command_gets_the_usage_hint(bare):
    proc = bare("instal")
    assert proc.returncode == 64
    assert proc.stderr == ('Error: unknown command "instal" for "istioctl"\n\nDid you mean this?\n\tinstall\n\n'
                           "Run 'istioctl --help' for usage.\n")
    proc = bare("frobnicate")
    assert proc.stderr == 'Error: unknown command "frobnicate" for "istioctl"\nRun \'istioctl --help\' for usage.\n'
    proc = bare("x", "create-remote-secret")  # removed from `x` in 1.19
    assert proc.returncode == 0 and "Available Commands:" in proc.stdout


def test_help_lists_the_real_flags(bare):
    proc = bare("install", "--help")
    assert proc.returncode == 0
    for flag in ("-f, --filename strings", "-y, --skip-confirmation", "-s, --set stringArray", "--readiness-timeout",
                 "--force", "--verify", "-r, --revision string", "-d, --manifests string", "--dry-run",
                 "-c, --kubeconfig string", "--context string", "-i, --istioNamespace string",
                 "--kubeclient-timeout string", "--as string", "--as-uid string", "--as-group stringArray"):
        assert flag in proc.stdout, flag
    assert "apply" in proc.stdout
    crs = bare("create-remote-secret", "-h").stdout
    for flag in ("--name", "--server", "--tls-server-name", "--type", "--service-account", "--create-service-account",
                 "--secret-name", "--auth-type", "--auth-plugin-name", "--auth-plugin-config", "-d, --manifests"):
        assert flag in crs, flag
    un = bare("uninstall", "--help").stdout
    for flag in ("-y, --skip-confirmation", "--force", "--purge", "-r, --revision", "-f, --filename", "-d, --manifests",
                 "-s, --set", "-v, --verbose", "--dry-run"):
        assert flag in un, flag


def test_bad_remote_secret_name_is_rejected(bare):
    proc = bare("create-remote-secret", "--name", "Cluster_1")
    assert proc.returncode == 1
    assert proc.stdout == ""
    assert proc.stderr == "Error: Cluster_1 is not a valid DNS 1123 label\n"
    proc = bare("create-remote-secret", "--name", "c1", "extra")
    assert proc.returncode == 64
    assert proc.stderr == 'Error: unknown command "extra" for "istioctl create-remote-secret"\n'


def test_uninstall_needs_purge_revision_or_filename(bare):
    proc = bare("uninstall", "-y")
    assert proc.returncode == 1
    assert proc.stderr == ("Error: at least one of the --revision (or --set revision=<revision>), --filename or "
                           "--purge flags must be set\n")


def test_unreachable_cluster(bare):
    proc = bare("install", "-y")
    assert proc.returncode == 1
    assert proc.stderr.splitlines()[-1] == (
        'Error: check minimum supported Kubernetes version: error getting Kubernetes version: '
        'Get "https://127.0.0.1:9/version?timeout=15s": dial tcp 127.0.0.1:9: connect: connection refused')
    proc = bare("create-remote-secret", "--kubeclient-timeout=3s")
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.splitlines()[-1] == (
        'Error: Get "https://127.0.0.1:9/api/v1/namespaces/kube-system?timeout=3s": '
        'dial tcp 127.0.0.1:9: connect: connection refused')
    assert bare("--context", "nope", "install", "-y").stderr.splitlines()[-1] == \
        "Error: context was not found for specified context: nope"


def test_flags_are_parsed_the_cobra_way_and_recorded(bare, tmp_path):
    a = write(tmp_path / "a.yaml", {"apiVersion": "install.istio.io/v1alpha1", "kind": "IstioOperator",
                                    "spec": {"profile": "minimal", "values": {"global": {"meshID": "m1", "network": "n1"}},
                                             "components": {"ingressGateways": [{"name": "one"}]}}})
    b = write(tmp_path / "b.yaml", {"apiVersion": "install.istio.io/v1alpha1", "kind": "IstioOperator",
                                    "metadata": {"name": "main"},
                                    "spec": {"values": {"global": {"network": "n2"}},
                                             "components": {"ingressGateways": [{"name": "two"}]}}})
    c = write(tmp_path / "c.yaml", {"apiVersion": "install.istio.io/v1alpha1", "kind": "IstioOperator",
                                    "spec": {"meshConfig": {"trustDomain": "td"}}})
    before = len(records(bare.istio_dir))
    proc = bare("install", f"-f{a}", "--filename", f"{b},{c}", "--set=values.global.meshID=m2", "-s",
                "values.pilot.env.EXTERNAL_ISTIOD=true", "-y=true", "--context=dead", "-r", "canary")
    assert proc.returncode == 1
    rec = records(bare.istio_dir)[before]
    assert rec["argv"][1:4] == ["install", f"-f{a}", "--filename"]
    assert rec["command"] == "install" and rec["context"] == "dead"
    assert rec["merged"] == {
        "apiVersion": "install.istio.io/v1alpha1", "kind": "IstioOperator", "metadata": {"name": "main"},
        "spec": {"profile": "minimal", "revision": "canary",
                 "meshConfig": {"trustDomain": "td"},
                 "values": {"global": {"meshID": "m2", "network": "n2"}, "pilot": {"env": {"EXTERNAL_ISTIOD": True}}},
                 "components": {"ingressGateways": [{"name": "two"}]}}}
    assert isinstance(rec["time"], float)


def test_records_from_parallel_invocations_do_not_interleave(bare):
    before = len(records(bare.istio_dir))
    with ThreadPoolExecutor(8) as pool:
        procs = list(pool.map(lambda i: bare("version", "--remote=false", f"--vklog={i}"), range(16)))
    assert all(p.returncode == 0 for p in procs)
    recs = records(bare.istio_dir)[before:]
    assert sorted(r["argv"][3] for r in recs) == sorted(f"--vklog={i}" for i in range(16))


# ----------------------------------------------------------------------------- against emulated clusters


def test_install_leaves_what_a_real_install_leaves(sb, tmp_path):
    f1 = write(tmp_path / "base.yaml", {"apiVersion": "install.istio.io/v1alpha1", "kind": "IstioOperator",
                                        "spec": {"meshConfig": {"defaultConfig": {"holdApplicationUntilProxyStarts": True}},
                                                 "components": {"ingressGateways": [{"name": "istio-ingressgateway",
                                                                                     "enabled": False}]}}})
    f2 = write(tmp_path / "c1.yaml", cluster_iop("c1", "network1"))
    proc = istioctl(sb, "install", "-y", "-f", f1, "-f", f2, "--context", "c1")
    assert proc.returncode == 0, proc.stderr
    for line in ("✔ Istio core installed", "✔ Istiod installed", "✔ Installation complete"):
        assert line in proc.stderr
    ns = sb.get_json("c1", "namespace", "istio-system")
    assert ns["metadata"]["labels"]["topology.istio.io/network"] == "network1"
    dep = sb.get_json("c1", "deployment", "istiod", "-n", "istio-system")
    env = {e["name"]: e.get("value") for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["CLUSTER_ID"] == "c1"
    assert dep["spec"]["template"]["spec"]["containers"][0]["image"] == f"docker.io/istio/pilot:{VERSION}"
    assert dep["metadata"]["labels"]["operator.istio.io/component"] == "Pilot"
    svc = sb.get_json("c1", "service", "istiod", "-n", "istio-system")
    assert {p["port"] for p in svc["spec"]["ports"]} >= {15010, 15012, 443, 15014}
    cm = sb.get_json("c1", "configmap", "istio", "-n", "istio-system")
    mesh = yaml.safe_load(cm["data"]["mesh"])
    assert mesh["defaultConfig"]["meshId"] == "mesh1"
    assert mesh["defaultConfig"]["holdApplicationUntilProxyStarts"] is True
    assert mesh["trustDomain"] == "cluster.local"
    assert "meshNetworks" in cm["data"]
    crds = {c["metadata"]["name"] for c in sb.get_json("c1", "crd")["items"]}
    for name in ("gateways.networking.istio.io", "virtualservices.networking.istio.io",
                 "destinationrules.networking.istio.io", "serviceentries.networking.istio.io",
                 "sidecars.networking.istio.io", "envoyfilters.networking.istio.io",
                 "workloadentries.networking.istio.io", "peerauthentications.security.istio.io",
                 "authorizationpolicies.security.istio.io"):
        assert name in crds
    for kind, name in (("serviceaccount", "istiod"), ("serviceaccount", "istio-reader-service-account")):
        assert exists(sb, "c1", kind, name, "-n", "istio-system"), name
    assert exists(sb, "c1", "mutatingwebhookconfiguration", "istio-sidecar-injector")
    assert exists(sb, "c1", "validatingwebhookconfiguration", "istio-validator-istio-system")
    assert exists(sb, "c1", "clusterrole", "istio-reader-clusterrole-istio-system")
    assert not exists(sb, "c1", "deployment", "istio-ingressgateway", "-n", "istio-system")
    assert not exists(sb, "c2", "namespace", "istio-system")

    # Istio's CRDs are served: the sample Gateway applies with the real kubectl
    sample = Path(sb.istio_dir) / "samples/multicluster/expose-services.yaml"
    sb.kubectl("c1", "apply", "-n", "istio-system", "-f", str(sample))
    assert sb.get_json("c1", "gateways.networking.istio.io", "cross-network-gateway", "-n", "istio-system")

    rec = [r for r in records(sb.istio_dir) if r["command"] == "install"][-1]
    assert rec["context"] == "c1"
    expected = {}
    for f in (f1, f2):
        for k, v in yaml.safe_load(Path(f).read_text()).items():
            if isinstance(v, dict):
                expected[k] = _deep_merge(expected.get(k, {}), v)
            else:
                expected[k] = v
    assert rec["merged"] == expected

    # installing again changes nothing and succeeds
    again = istioctl(sb, "install", "-y", "-f", f1, "-f", f2, "--context", "c1")
    assert again.returncode == 0, again.stderr
    assert "Removed" not in again.stdout


def _deep_merge(a, b):
    out = dict(a)
    for k, v in b.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def test_default_profile_installs_an_ingress_gateway(sb):
    assert istioctl(sb, "install", "-y", "--context", "c2").returncode == 0
    svc = sb.get_json("c2", "service", "istio-ingressgateway", "-n", "istio-system")
    assert svc["spec"]["type"] == "LoadBalancer"
    assert svc["spec"]["selector"] == {"app": "istio-ingressgateway", "istio": "ingressgateway"}


def test_eastwest_gateway_gets_a_load_balancer_address(sandbox_factory, tmp_path):
    sb = sandbox_factory(["c1"], lb_delay=0.3)
    ew = write(tmp_path / "ew.yaml", eastwest(sb, "network1"))
    proc = istioctl(sb, "install", "-y", "-f", ew)
    assert proc.returncode == 0, proc.stderr
    assert "✔ Ingress gateways installed" in proc.stderr and "Istiod installed" not in proc.stderr
    assert not exists(sb, "c1", "deployment", "istiod", "-n", "istio-system")  # profile empty
    svc = sb.get_json("c1", "service", "istio-eastwestgateway", "-n", "istio-system")
    assert svc["spec"]["type"] == "LoadBalancer"
    labels = svc["metadata"]["labels"]
    assert labels["istio"] == "eastwestgateway" and labels["app"] == "istio-eastwestgateway"
    assert labels["topology.istio.io/network"] == "network1"
    assert labels["install.operator.istio.io/owning-resource"] == "eastwest"
    assert svc["spec"]["selector"] == {"istio": "eastwestgateway", "app": "istio-eastwestgateway",
                                       "topology.istio.io/network": "network1"}
    assert [(p["name"], p["port"]) for p in svc["spec"]["ports"]] == [
        ("status-port", 15021), ("tls", 15443), ("tls-istiod", 15012), ("tls-webhook", 15017)]
    dep = sb.get_json("c1", "deployment", "istio-eastwestgateway", "-n", "istio-system")
    env = {e["name"]: e.get("value") for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["ISTIO_META_REQUESTED_NETWORK_VIEW"] == "network1"

    def address():
        s = sb.get_json("c1", "service", "istio-eastwestgateway", "-n", "istio-system")
        ingress = ((s.get("status") or {}).get("loadBalancer") or {}).get("ingress") or []
        return ingress and (ingress[0].get("ip") or ingress[0].get("hostname"))

    assert wait_for(address)


def test_reinstalling_an_unnamed_iop_prunes_the_eastwest_gateway(sandbox_factory, tmp_path):
    # Real istioctl: an IstioOperator without metadata.name owns every installed gateway of its revision.
    sb = sandbox_factory(["c1"])
    main = write(tmp_path / "main.yaml", cluster_iop("c1", "network1"))
    ew = write(tmp_path / "ew.yaml", eastwest(sb, "network1"))
    assert istioctl(sb, "install", "-y", "-f", main).returncode == 0
    assert istioctl(sb, "install", "-y", "-f", ew).returncode == 0
    assert exists(sb, "c1", "deployment", "istiod", "-n", "istio-system")  # not pruned by the named one
    again = istioctl(sb, "install", "-y", "-f", main)
    assert again.returncode == 0
    assert "  Removed apps/v1, Kind=Deployment/istio-eastwestgateway.istio-system." in again.stdout
    assert not exists(sb, "c1", "service", "istio-eastwestgateway", "-n", "istio-system")

    named = cluster_iop("c1", "network1")
    named["metadata"] = {"name": "control-plane"}
    named_file = write(tmp_path / "named.yaml", named)
    assert istioctl(sb, "install", "-y", "-f", named_file).returncode == 0
    assert istioctl(sb, "install", "-y", "-f", ew).returncode == 0
    again = istioctl(sb, "install", "-y", "-f", named_file)
    assert "istio-eastwestgateway" not in again.stdout
    assert exists(sb, "c1", "service", "istio-eastwestgateway", "-n", "istio-system")


def test_validation_errors(sb, tmp_path):
    bad_field = write(tmp_path / "bad.yaml", {"apiVersion": "install.istio.io/v1alpha1", "kind": "IstioOperator",
                                              "spec": {"meshconfig": {}}})
    proc = istioctl(sb, "install", "-y", "-f", bad_field, "--context", "c1")
    assert proc.returncode == 1
    assert proc.stderr.splitlines()[-1] == 'Error: generate config: could not unmarshal: json: unknown field "meshconfig"'
    broken = write(tmp_path / "broken.yaml", "spec:\n  values: [\n")
    proc = istioctl(sb, "install", "-y", "-f", broken, "--context", "c1")
    assert proc.returncode == 1
    assert proc.stderr.splitlines()[-1].startswith("Error: generate config: merge inputs: unable to parse file: ")
    missing = istioctl(sb, "install", "-y", "-f", str(tmp_path / "nope.yaml"), "--context", "c1")
    assert missing.stderr.splitlines()[-1] == \
        f"Error: generate config: merge inputs: open {tmp_path / 'nope.yaml'}: no such file or directory"
    two = write(tmp_path / "two.yaml", "kind: IstioOperator\n---\nkind: IstioOperator\n")
    proc = istioctl(sb, "install", "-y", "-f", two, "--context", "c1")
    assert proc.stderr.splitlines()[-1] == ("Error: generate config: merge inputs: contains multiple IstioOperator "
                                            "CRs, only one per file is supported")
    rev = istioctl(sb, "install", "-y", "--revision", "Bad.Rev", "--context", "c1")
    assert rev.stderr == "Error: invalid revision specified: Bad.Rev\n"
    assert not exists(sb, "c1", "namespace", "istio-system")


def test_install_asks_for_confirmation(sb):
    proc = istioctl(sb, "install", "--context", "c1", stdin="n\n")
    assert proc.returncode == 1
    assert f'This will install the Istio {VERSION} profile "default" into the cluster. Proceed? (y/N)' in proc.stdout
    assert "Cancelled." in proc.stderr
    assert not exists(sb, "c1", "namespace", "istio-system")
    proc = istioctl(sb, "install", "--context", "c1", stdin="")
    assert proc.returncode == 1
    proc = istioctl(sb, "install", "--context", "c1", stdin="yes\n")
    assert proc.returncode == 0
    assert exists(sb, "c1", "deployment", "istiod", "-n", "istio-system")


def test_remote_secret_has_the_real_shape_and_a_working_token(sb, tmp_path):
    proc = istioctl(sb, "create-remote-secret", "--name", "c1", "--context", "c1")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("# This file is autogenerated, do not edit.\napiVersion: v1\nkind: Secret\n")
    assert proc.stdout.endswith("---\n")
    assert proc.stderr.startswith("warn: server in Kubeconfig is http")
    assert "127.0.0.1" in proc.stderr or "localhost" in proc.stderr
    assert "This is likely not reachable from inside the cluster" in proc.stderr
    assert "pass --server with the container IP for the API Server" in proc.stderr
    docs = [d for d in yaml.safe_load_all(proc.stdout) if d]
    assert len(docs) == 1
    secret = docs[0]
    assert secret["metadata"] == {"annotations": {"networking.istio.io/cluster": "c1"},
                                  "labels": {"istio/multiCluster": "true"},
                                  "name": "istio-remote-secret-c1", "namespace": "istio-system"}
    assert list(secret["stringData"]) == ["c1"]
    kc = yaml.safe_load(secret["stringData"]["c1"])
    assert kc["current-context"] == "c1"
    assert [c["name"] for c in kc["clusters"]] == ["c1"] and [u["name"] for u in kc["users"]] == ["c1"]
    assert kc["contexts"] == [{"context": {"cluster": "c1", "user": "c1"}, "name": "c1"}]
    server = kc["clusters"][0]["cluster"]["server"]
    own = yaml.safe_load(Path(sb.env["KUBECONFIG"]).read_text())
    assert server == next(c["cluster"]["server"] for c in own["clusters"]
                          if c["name"] == next(x["context"]["cluster"] for x in own["contexts"] if x["name"] == "c1"))

    # the token and CA let a client read the cluster
    ca = base64.b64decode(kc["clusters"][0]["cluster"]["certificate-authority-data"]).decode()
    ctx = ssl.create_default_context(cadata=ca) if server.startswith("https") else None
    req = urllib.request.Request(server + "/api/v1/namespaces/kube-system",
                                 headers={"Authorization": "Bearer " + kc["users"][0]["user"]["token"]})
    with urllib.request.urlopen(req, context=ctx, timeout=5) as resp:
        assert json.load(resp)["metadata"]["name"] == "kube-system"

    token_secret = sb.get_json("c1", "secret", "istio-reader-service-account-istio-remote-secret-token",
                               "-n", "istio-system")
    assert token_secret["type"] == "kubernetes.io/service-account-token"
    assert exists(sb, "c1", "clusterrolebinding", "istio-reader-clusterrole-istio-system")

    # --server replaces the address and silences the warning; the secret applies to the other cluster
    assert istioctl(sb, "install", "-y", "--context", "c2").returncode == 0

    asked = []  # requests c1 got during each remote-clusters

    def c2_sees_c1(address: str) -> list[str]:
        proc = istioctl(sb, "create-remote-secret", "--name", "c1", "--server", address, "--context", "c1")
        assert proc.stderr == ""
        sb.kubectl("c2", "apply", "-f", "-", stdin=proc.stdout)
        before = len(sb.requests("c1"))
        table = istioctl(sb, "remote-clusters", "--context", "c2").stdout.splitlines()
        asked.append(len(sb.requests("c1")) - before)
        assert table[0].split() == ["NAME", "SECRET", "STATUS", "ISTIOD"], "1.30's columns"
        # itself (installed without a cluster name: istiod runs as "Kubernetes"), with no secret
        assert next(line.split() for line in table[1:] if line.startswith("Kubernetes "))[1] == "synced"
        return next(line.split() for line in table[1:] if line.startswith("c1 "))

    # the address c1's peers reach (not loopback): c2's control plane syncs it
    assert c2_sees_c1(sb.api_server("c1"))[1:3] == ["istio-system/istio-remote-secret-c1", "synced"]
    # an address c2 cannot reach is never contacted and times out, as istiod reports it
    assert c2_sees_c1("https://c1.unreachable.test:6443")[1:3] == ["istio-system/istio-remote-secret-c1", "timeout"]
    assert asked[0] > 0 and asked[1] == 0


def test_remote_secret_default_name_is_the_kube_system_uid(sb):
    uid = sb.get_json("c2", "namespace", "kube-system")["metadata"]["uid"]
    proc = istioctl(sb, "create-remote-secret", "--context", "c2")
    assert proc.returncode == 0
    secret = next(d for d in yaml.safe_load_all(proc.stdout) if d)
    assert secret["metadata"]["name"] == f"istio-remote-secret-{uid}"
    assert list(secret["stringData"]) == [uid]


def test_uninstall_purge_removes_istio_but_keeps_the_namespace(sb, tmp_path):
    ew = write(tmp_path / "ew.yaml", eastwest(sb, "network1"))
    assert istioctl(sb, "install", "-y", "--context", "c1").returncode == 0
    assert istioctl(sb, "install", "-y", "-f", ew, "--context", "c1").returncode == 0
    sb.kubectl("c1", "apply", "-n", "istio-system", "-f",
               str(Path(sb.istio_dir) / "samples/multicluster/expose-services.yaml"))
    proc = istioctl(sb, "uninstall", "--purge", "-y", "--context", "c1")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("All Istio resources will be pruned from the cluster\n")
    assert "  Removed apps/v1, Kind=Deployment/istiod.istio-system." in proc.stdout
    assert "✔ Uninstall complete" in proc.stderr
    assert exists(sb, "c1", "namespace", "istio-system")
    for args in (("deployment", "istiod"), ("deployment", "istio-eastwestgateway"), ("service", "istiod"),
                 ("service", "istio-eastwestgateway"), ("configmap", "istio"),
                 ("serviceaccount", "istio-reader-service-account")):
        assert not exists(sb, "c1", *args, "-n", "istio-system"), args
    assert not exists(sb, "c1", "mutatingwebhookconfiguration", "istio-sidecar-injector")
    assert not exists(sb, "c1", "clusterrole", "istiod-clusterrole-istio-system")
    assert not [c for c in sb.get_json("c1", "crd")["items"] if c["metadata"]["name"].endswith(".istio.io")]
    assert "No resources" in istioctl(sb, "version", "--context", "c1").stderr or \
        "Istio is not present in the cluster" in istioctl(sb, "version", "--context", "c1").stderr


def test_version_reports_the_control_plane(sb):
    proc = istioctl(sb, "version", "--context", "c1")
    assert proc.stdout == f"client version: {VERSION}\n"
    assert proc.stderr == 'Istio is not present in the cluster: no running Istio pods in namespace "istio-system"\n'
    assert istioctl(sb, "install", "-y", "--context", "c1").returncode == 0
    out = istioctl(sb, "version", "--context", "c1").stdout.splitlines()
    assert out[:2] == [f"client version: {VERSION}", f"control plane version: {VERSION}"]


def test_latency_and_failure_injection_per_context(sb):
    # Only one-sided bounds, which load cannot break: c2's own 1.2 s is waited at least, and c1's own 0 s
    # wins over the 20 s every other context waits.
    env = {"ISTIOCTL_STANDIN_LATENCY": "version=20,c1/version=0,c2/version=1.2",
           "ISTIOCTL_STANDIN_FAIL": "install,c1/install=0"}
    t0 = time.monotonic()
    assert istioctl(sb, "version", "--remote=false", "--context", "c1", env=env).returncode == 0
    assert time.monotonic() - t0 < 20
    t0 = time.monotonic()
    assert istioctl(sb, "version", "--remote=false", "--context", "c2", env=env).returncode == 0
    assert time.monotonic() - t0 >= 1.2

    failed = istioctl(sb, "install", "-y", "--context", "c2", env=env)
    assert failed.returncode == 1
    assert failed.stderr.splitlines()[-2].startswith("Error: failed to install manifests: ")
    assert "✘ Istiod encountered an error" in failed.stderr
    assert not exists(sb, "c2", "namespace", "istio-system")
    assert istioctl(sb, "install", "-y", "--context", "c1", env=env).returncode == 0

    crs = istioctl(sb, "create-remote-secret", "--name", "c2", "--context", "c2",
                   env={"ISTIOCTL_STANDIN_FAIL": "c2/create-remote-secret"})
    assert crs.returncode == 1 and crs.stdout == ""
    assert crs.stderr.startswith("error: could not get access token")


def test_an_install_spends_its_latency_waiting_after_it_has_applied_its_objects(sb, tmp_path):
    # A real install applies first and then waits for pods: the east-west gateway's Service exists, and its
    # load balancer is being provisioned, while the install still runs.
    proc = subprocess.Popen([str(Path(sb.istio_dir) / "bin" / "istioctl"), "install", "-y", "--context", "c1",
                             "-f", write(tmp_path / "ew.yaml", eastwest(sb, "n1"))], env=dict(sb.env, ISTIOCTL_STANDIN_LATENCY="install=30"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert wait_for(lambda: exists(sb, "c1", "service", "istio-eastwestgateway", "-n", "istio-system"), 25)
        assert proc.poll() is None, "the Service was created before the latency was spent"
    finally:
        proc.kill()
        proc.communicate()


def test_stopped_cluster_is_reported_like_client_go(sb):
    sb.stop_cluster("c2")
    proc = istioctl(sb, "install", "-y", "--context", "c2")
    assert proc.returncode == 1
    last = proc.stderr.splitlines()[-1]
    assert last.startswith("Error: check minimum supported Kubernetes version: error getting Kubernetes version: Get ")
    assert last.endswith("connect: connection refused")


# ----------------------------------------------------------------------------- readiness


def test_install_waits_until_its_deployments_are_ready(sandbox_factory, tmp_path):
    sb = sandbox_factory(["c1"], ready_delay=1.0)
    started = time.monotonic()
    done = istioctl(sb, "install", "-y", "-f", write(tmp_path / "c1.yaml", cluster_iop("c1", "n1")), "--context", "c1")
    assert done.returncode == 0, done.stderr
    assert time.monotonic() - started >= 0.9
    status = sb.get_json("c1", "deployment", "istiod", "-n", "istio-system")["status"]
    assert status["readyReplicas"] == status["replicas"] >= 1


def test_install_fails_when_deployments_are_not_ready_in_time(sandbox_factory, tmp_path):
    sb = sandbox_factory(["c1"], ready_delay=5.0)
    failed = istioctl(sb, "install", "-y", "-f", write(tmp_path / "c1.yaml", cluster_iop("c1", "n1")), "--context", "c1",
                      "--readiness-timeout", "500ms")
    assert failed.returncode == 1
    # istioctl names a not-ready Deployment with the reason its pods give, and prints an empty line when they
    # give none (operator/pkg/install/wait.go): the sandbox's pods run while the Deployment is not ready yet
    assert ("✘ Istiod encountered an error: failed to wait for resource: resources not ready after 500ms: "
            "context deadline exceeded\n  \n") in failed.stderr
    assert failed.stderr.rstrip().splitlines()[-1].startswith("Error: failed to install manifests: failed to wait")


# ----------------------------------------------------------------------------- how install writes


def remote_iop(ctx, network, pilot_address):
    iop = cluster_iop(ctx, network)
    iop["spec"]["profile"] = "remote"
    iop["spec"]["values"]["global"]["remotePilotAddress"] = pilot_address
    return iop


def managers(obj):
    return {(e["manager"], e["operation"]) for e in obj["metadata"].get("managedFields") or []}


def webhook_rights(sb):
    role = sb.get_json("c1", "clusterrole", "istio-reader-clusterrole-istio-system")
    return {r for rule in role["rules"] if "admissionregistration.k8s.io" in rule["apiGroups"]
            for r in rule["resources"]}


def test_install_applies_server_side_and_drops_what_it_no_longer_renders(sb, tmp_path):
    primary = write(tmp_path / "primary.yaml", cluster_iop("c1", "network1"))
    remote = write(tmp_path / "remote.yaml", remote_iop("c1", "network1", "10.0.0.7"))
    assert istioctl(sb, "install", "-y", "-f", primary, "--context", "c1").returncode == 0
    svc = sb.get_json("c1", "service", "istiod", "-n", "istio-system")
    assert svc["spec"]["selector"] == {"app": "istiod", "istio": "pilot"}
    assert ("istio-operator", "Apply") in managers(
        sb.get_json("c1", "service", "istiod", "-n", "istio-system", "--show-managed-fields"))
    # somebody else's label on the same object: another manager's field, which install leaves alone
    sb.kubectl("c1", "label", "service", "istiod", "-n", "istio-system", "team=mesh")

    # reinstalled as a remote: the Service is rendered without a selector, so the selector goes
    turned = istioctl(sb, "install", "-y", "-f", remote, "--context", "c1")
    assert turned.returncode == 0, turned.stderr
    svc = sb.get_json("c1", "service", "istiod", "-n", "istio-system")
    assert "selector" not in svc["spec"]
    assert {p["name"] for p in svc["spec"]["ports"]} == {"tcp-istiod", "tcp-webhook"}
    assert svc["metadata"]["labels"]["team"] == "mesh"
    # what istioctl prunes is unchanged: objects of the owner's labels it no longer renders
    assert "  Removed apps/v1, Kind=Deployment/istiod.istio-system." in turned.stdout
    assert not exists(sb, "c1", "deployment", "istiod", "-n", "istio-system")
    assert exists(sb, "c1", "endpointslice", "istiod", "-n", "istio-system")
    assert "mutatingwebhookconfigurations" in webhook_rights(sb), "a remote's reader lets istiod patch the injector"

    # and back: the primary's selector returns
    back = istioctl(sb, "install", "-y", "-f", primary, "--context", "c1")
    assert back.returncode == 0, back.stderr
    svc = sb.get_json("c1", "service", "istiod", "-n", "istio-system")
    assert svc["spec"]["selector"] == {"app": "istiod", "istio": "pilot"}
    assert svc["metadata"]["labels"]["team"] == "mesh"
    assert webhook_rights(sb) == set()


def test_install_takes_fields_another_manager_changed(sb, tmp_path):
    # forced: a conflicting value set by someone else is overwritten, not reported as a conflict
    primary = write(tmp_path / "primary.yaml", cluster_iop("c1", "network1"))
    assert istioctl(sb, "install", "-y", "-f", primary, "--context", "c1").returncode == 0
    sb.kubectl("c1", "patch", "service", "istiod", "-n", "istio-system", "--type", "merge",
               "-p", '{"spec": {"selector": {"app": "elsewhere"}}}')
    again = istioctl(sb, "install", "-y", "-f", primary, "--context", "c1")
    assert again.returncode == 0, again.stderr
    svc = sb.get_json("c1", "service", "istiod", "-n", "istio-system")
    assert svc["spec"]["selector"] == {"app": "istiod", "istio": "pilot"}


def test_a_chart_profile_the_charts_do_not_know_fails_the_install_and_remote_in_the_values_makes_a_remote(
        sb, tmp_path):
    # istio-discovery templates/zzz_profile.yaml: `coalesce .Values.profile .Values.global.profile`, and a
    # name without files/profile-<name>.yaml fails the render.
    bad = write(tmp_path / "bad.yaml", "apiVersion: install.istio.io/v1alpha1\nkind: IstioOperator\n"
                                       "spec:\n  values:\n    global:\n      profile: ambiant\n")
    proc = istioctl(sb, "install", "-y", "-f", bad, "--context", "c1")
    assert proc.returncode == 1 and "unknown profile ambiant" in proc.stderr, proc.stderr
    assert not exists(sb, "c1", "deployment", "istiod", "-n", "istio-system")
    remote = write(tmp_path / "remote.yaml", "apiVersion: install.istio.io/v1alpha1\nkind: IstioOperator\n"
                                             "spec:\n  values:\n    global:\n      profile: remote\n")
    assert istioctl(sb, "install", "-y", "-f", remote, "--context", "c2").returncode == 0
    assert not exists(sb, "c2", "deployment", "istiod", "-n", "istio-system"), "the charts' remote profile"


def test_a_user_with_an_exec_plugin_gets_its_token_as_client_go_runs_it(sb, tmp_path):
    # EKS, GKE and AKS kubeconfigs authenticate with an exec plugin (client-go plugin/pkg/client/auth/exec):
    # kubectl runs it, and so must istioctl, or every install fails Unauthorized.
    config = yaml.safe_load(Path(sb.env["KUBECONFIG"]).read_text())
    plugins = tmp_path / "bin"
    plugins.mkdir()
    for user in config["users"]:
        token = user["user"].pop("token")
        script = plugins / f"credential-{user['name']}"
        script.write_text('#!/bin/sh\necho "$KUBERNETES_EXEC_INFO" > "$0.info"\nprintf \'{"apiVersion": '
                          '"client.authentication.k8s.io/v1", "kind": "ExecCredential", "status": {"token": "%s"}}\' '
                          '"$TOKEN"\n')
        script.chmod(0o755)
        # A relative command with a path separator is taken from the kubeconfig's folder (clientcmd).
        user["user"]["exec"] = {"apiVersion": "client.authentication.k8s.io/v1", "interactiveMode": "Never",
                                "command": f"./bin/{script.name}", "env": [{"name": "TOKEN", "value": token}]}
    kubeconfig = tmp_path / "config"
    kubeconfig.write_text(yaml.safe_dump(config))
    env = {"KUBECONFIG": str(kubeconfig)}
    assert run(["kubectl", "--context", "c1", "get", "namespace", "kube-system"], {**sb.env, **env}).returncode == 0
    proc = istioctl(sb, "--context", "c1", "install", "-y", "-f", write(tmp_path / "c1.yaml", cluster_iop("c1", "n1")),
                    env=env)
    assert proc.returncode == 0, proc.stderr
    assert json.loads((plugins / "credential-c1.info").read_text()) == {
        "kind": "ExecCredential", "apiVersion": "client.authentication.k8s.io/v1", "spec": {"interactive": False}}
    # A plugin that fails, and one that is not installed, are reported as client-go reports them.
    (plugins / "credential-c2").write_text("#!/bin/sh\nexit 3\n")
    proc = istioctl(sb, "--context", "c2", "create-remote-secret", "--name", "c2", env=env)
    assert proc.returncode == 1
    assert proc.stderr.splitlines()[-1].endswith(
        f": getting credentials: exec: executable {plugins / 'credential-c2'} failed with exit code 3")
    config["users"][1]["user"]["exec"]["command"] = "no-such-credential-plugin"
    kubeconfig.write_text(yaml.safe_dump(config))
    proc = istioctl(sb, "--context", "c2", "create-remote-secret", "--name", "c2", env=env)
    assert "getting credentials: exec: executable no-such-credential-plugin not found" in proc.stderr
    assert "a client-go credential plugin that is not installed" in proc.stderr


def test_a_kubeconfig_naming_a_context_twice_is_refused_as_client_go_refuses_it(sb, tmp_path):
    config = yaml.safe_load(Path(sb.env["KUBECONFIG"]).read_text())
    config["contexts"].append(config["contexts"][0])
    kubeconfig = write(tmp_path / "config", config)
    kubectl = run(["kubectl", "--kubeconfig", kubeconfig, "--context", "c2", "get", "ns"], sb.env)
    proc = istioctl(sb, "--kubeconfig", kubeconfig, "--context", "c2", "create-remote-secret", "--name", "c2")
    assert kubectl.returncode == 1 and proc.returncode == 1
    assert f'error loading config file "{kubeconfig}": error converting *[]NamedContext into ' \
           '*map[string]*api.Context: duplicate name "c1" in list' in kubectl.stderr
    assert proc.stderr.splitlines()[-1] == (f'Error: error loading config file "{kubeconfig}": error converting '
                                            '*[]NamedContext into *map[string]*api.Context: duplicate name "c1" in list')
