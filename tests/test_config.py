"""topology.yaml and base.yaml validation: every bad input is refused with where and how to fix it."""
import json
import os
import re
from pathlib import Path

import pytest
import yaml

from lib.config import load_base, load_topology
from lib.kubeconfig import resolve_contexts
from lib.errors import ConfigError
from lib.mesh import mesh_model

GOOD_BASE = "apiVersion: install.istio.io/v1alpha1\nkind: IstioOperator\nspec:\n  profile: default\n"

BAD_TOPOLOGIES = [
    ("mesh_id: m\ncontexts:\n  c1:\n    network: n1\n    primary: c9\n",
     "topology.yaml:5: primary 'c9' of context 'c1' is not a context in topology.yaml"),
    ("mesh_id: m\ncontexts:\n  c1:\n    network: n1\n    primary: c1\n",
     "topology.yaml:5: context 'c1' names itself as its primary"),
    ("mesh_id: m\ncontexts:\n  c1:\n    network: n1\n    primary: c2\n  c2:\n    network: n1\n    primary: c1\n",
     "topology.yaml:5: context 'c2', the primary of 'c1', is itself a remote (of 'c1')"),
    ("mesh_id: m\ncontexts:\n  c1:\n    network: n1\n  c2:\n    network: n1\n    primary: c1\n"
     "  c3:\n    network: n1\n    primary: c2\n", "topology.yaml:10: context 'c2', the primary of 'c3', is itself a remote"),
    ("mesh_id: m\ncontexts:\n  c1:\n    network: n1\n    primary: [c2]\n", "primary of context 'c1' must be the name"),
    ("mesh_id: [\n", "not valid YAML"),
    ("", "topology file is empty"),
    ("- a\n- b\n", "must be a mapping"),
    ("contexts:\n  c1:\n    network: n1\n", "mesh_id is required"),
    ("mesh_id: 'has space'\ncontexts:\n  c1:\n    network: n1\n", "invalid mesh_id"),
    ("mesh_id: m\n", "contexts is empty or missing"),
    ("mesh_id: m\ncontexts: {}\n", "contexts is empty or missing"),
    ("mesh_id: m\ncontexts:\n  - c1\n", "contexts must be a mapping"),
    ("mesh_id: m\ncontexts:\n  c1:\n    network: n1\nextra: 1\n", "unknown key 'extra'"),
    ("mesh_id: m\ncontexts:\n  c1:\n    network: n1\n    netwrk: n2\n", "unknown key 'netwrk' in context 'c1'"),
    ("mesh_id: m\ncontexts:\n  c1:\n    network: n1\n    netwrk: n2\n", "did you mean 'network'?"),
    ("mesh_id: m\ncontexts:\n  c1:\n    network: n1\n    apiserver: https://x\n", "did you mean 'api_server'?"),
    ("mesh_ids: m\ncontexts:\n  c1:\n    network: n1\n", "did you mean 'mesh_id'?"),
    ("mesh_id: m\ncontexts:\n  c1: {}\n", "has no network"),
    ("mesh_id: m\ncontexts:\n  c1: network1\n", "must be a mapping with at least network"),
    ("mesh_id: m\ncontexts:\n  c1:\n    network: 'bad net'\n", "invalid network 'bad net'"),
    ("mesh_id: m\ncontexts:\n  gke_proj_zone_name:\n    network: n1\n", "set `cluster_name:`"),
    ("mesh_id: m\ncontexts:\n  c1:\n    network: n1\n    cluster_name: Bad_Name\n", "invalid cluster_name 'Bad_Name'"),
    ("mesh_id: m\ncontexts:\n  c1:\n    network: n1\n    cluster_name: x\n  c2:\n    network: n1\n    cluster_name: x\n",
     "cluster name 'x' of context 'c2' is already used by context 'c1'"),
    ("mesh_id: m\ncontexts:\n  c1:\n    network: n1\n    api_server: not-a-url\n", "invalid api_server"),
    # A URL with a host but another scheme, or a scheme but no host, reaches no API server either.
    ("mesh_id: m\ncontexts:\n  c1:\n    network: n1\n    api_server: ftp://10.0.0.2:6443\n", "invalid api_server"),
    ("mesh_id: m\ncontexts:\n  c1:\n    network: n1\n    api_server: 'https://'\n", "invalid api_server"),
    ("mesh_id: m\ncontexts:\n  c1:\n    network: n1\n    kubeconfig: ''\n", "kubeconfig must be a file path"),
    ("mesh_id: m\ncontexts:\n  c1:\n    network: n1\n    kubeconfig: [a.yaml]\n", "kubeconfig must be a file path"),
    # Kubernetes names and label values: at most 63 characters.
    ("mesh_id: m\ncontexts:\n  c1:\n    network: n1\n    cluster_name: " + "c" * 64 + "\n", "invalid cluster_name"),
    ("mesh_id: m\ncontexts:\n  c1:\n    network: " + "n" * 64 + "\n", "invalid network"),
    # A name YAML reads as something else: the hint says to quote it.
    ("mesh_id: m\ncontexts:\n  c1:\n    network: 5\n",
     'invalid network 5 for context \'c1\'\nput the name in quotes, e.g. network: "5": unquoted, YAML reads it as a number'),
    ("mesh_id: no\ncontexts:\n  c1:\n    network: n1\n",
     "invalid mesh_id False\nput the name in quotes, e.g. mesh_id: \"no\": unquoted, YAML reads yes, no, on, off, true "
     "and false as true/false"),
]


@pytest.mark.parametrize("text,message", BAD_TOPOLOGIES)
def test_bad_topology_is_refused_with_a_clear_message(tmp_path, text, message):
    path = tmp_path / "topology.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_topology(path)
    assert message in f"{info.value.message}\n{info.value.hint}"
    # Where: the message starts with the file, and the line when the problem is on one.
    assert re.match(rf"{re.escape(str(path))}(:\d+)*: ", info.value.message), info.value.message
    assert info.value.exit_code == 2


def test_a_key_close_to_none_gets_no_guess(tmp_path):
    path = tmp_path / "topology.yaml"
    path.write_text("mesh_id: m\ncontexts:\n  c1:\n    network: n1\n    colour: red\n")
    with pytest.raises(ConfigError) as info:
        load_topology(path)
    assert "did you mean" not in info.value.hint and "allowed keys: network" in info.value.hint


@pytest.mark.parametrize("text,where,guess", [
    ("spec:\n  valeus: {}\n", 4, "did you mean 'values'?"),
    ("spec:\n  meshconfig: {}\n", 4, "did you mean 'meshConfig'?"),
    ("metdata: {}\n", 3, "did you mean 'metadata'?"),
])
def test_base_key_close_to_an_istio_operator_field_is_refused_with_a_guess(tmp_path, text, where, guess):
    path = tmp_path / "base.yaml"
    path.write_text("apiVersion: install.istio.io/v1alpha1\nkind: IstioOperator\n" + text)
    with pytest.raises(ConfigError) as info:
        load_base(path)
    assert info.value.message.startswith(f"{path}:{where}:") and guess in info.value.hint


def test_unfamiliar_spec_fields_far_from_known_ones_pass_to_istioctl(tmp_path):
    path = tmp_path / "base.yaml"
    path.write_text(GOOD_BASE + "  someFutureField: 1\n")
    assert load_base(path).operator["spec"]["someFutureField"] == 1


def test_error_names_the_line(tmp_path):
    path = tmp_path / "topology.yaml"
    path.write_text("mesh_id: m\ncontexts:\n  c1:\n    network: n1\n  c2:\n    network: n1\n    colour: red\n")
    with pytest.raises(ConfigError) as info:
        load_topology(path)
    assert f"{path}:7:" in info.value.message


def test_missing_topology_points_to_prep_mesh(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_topology(tmp_path / "topology.yaml")
    assert "prep-mesh" in info.value.hint


def test_cluster_name_defaults_to_context_and_options_are_kept(tmp_path):
    path = tmp_path / "topology.yaml"
    path.write_text("mesh_id: m1\ncontexts:\n  c1:\n    network: n1\n  'gke_p_z_c2':\n    network: n2\n"
                    "    cluster_name: c2\n    api_server: https://10.0.0.2:6443\n    kubeconfig: other.yaml\n")
    topology = load_topology(path)
    c1, c2 = topology.clusters
    assert (c1.context, c1.name, c1.network) == ("c1", "c1", "n1")
    assert (c2.context, c2.name, c2.api_server) == ("gke_p_z_c2", "c2", "https://10.0.0.2:6443")
    assert c2.kubeconfig == str(tmp_path / "other.yaml")
    assert topology.multi_network


RESERVED = [
    ("    global:\n      meshID: x\n", "spec.values.global.meshID", 7),
    ("    global:\n      multiCluster:\n        clusterName: x\n", "spec.values.global.multiCluster.clusterName", 8),
    ("    global:\n      network: x\n", "spec.values.global.network", 7),
    ("    global:\n      meshNetworks: {}\n", "spec.values.global.meshNetworks", 7),
    ("    pilot:\n      env:\n        ISTIO_MULTIROOT_MESH: 'true'\n", "spec.values.pilot.env.ISTIO_MULTIROOT_MESH", 8),
    ("    global:\n      remotePilotAddress: 10.0.0.1\n", "spec.values.global.remotePilotAddress", 7),
    ("    global:\n      externalIstiod: true\n", "spec.values.global.externalIstiod", 7),
    ("    istiodRemote:\n      injectionPath: /inject\n", "spec.values.istiodRemote.injectionPath", 7),
    ("    istiodRemote:\n      injectionURL: https://x/inject\n", "spec.values.istiodRemote.injectionURL", 7),
    ("    pilot:\n      env:\n        EXTERNAL_ISTIOD: 'true'\n", "spec.values.pilot.env.EXTERNAL_ISTIOD", 8),
]


# istioctl lays spec.unvalidatedValues over spec.values: a reserved value there would win over setup-mesh's.
@pytest.mark.parametrize("under", ["values", "unvalidatedValues"])
@pytest.mark.parametrize("extra,key,line", RESERVED)
def test_reserved_value_in_base_is_refused_with_its_line(tmp_path, extra, key, line, under):
    path = tmp_path / "base.yaml"
    path.write_text(GOOD_BASE + f"  {under}:\n" + extra)
    with pytest.raises(ConfigError) as info:
        load_base(path)
    assert f"{path}:{line}: {key.replace('spec.values.', f'spec.{under}.')} is set by setup-mesh from" in info.value.message
    # The hint says who sets it: topology.yaml, or rotate-certs --root for the second root's switch.
    assert info.value.hint == "delete those lines from base.yaml: " + (
        "rotate-certs --root sets ISTIO_MULTIROOT_MESH while a move to a new root needs it"
        if "MULTIROOT" in key else "set mesh_id, network, cluster_name and primary in topology.yaml instead")


def test_the_hint_for_reserved_values_of_several_owners_names_each_once(tmp_path):
    # The docs' ambient multicluster IstioOperator: topology's values and the ambient switch, in one base.yaml.
    path = tmp_path / "base.yaml"
    path.write_text("apiVersion: install.istio.io/v1alpha1\nkind: IstioOperator\nspec:\n  profile: ambient\n"
                    "  values:\n    global:\n      meshID: m\n      network: n\n    pilot:\n      env:\n"
                    "        AMBIENT_ENABLE_MULTI_NETWORK: 'true'\n")
    with pytest.raises(ConfigError) as info:
        load_base(path)
    assert info.value.hint == ("delete those lines from base.yaml: set mesh_id, network, cluster_name and primary in "
                               "topology.yaml instead; setup-mesh sets AMBIENT_ENABLE_MULTI_NETWORK for every istiod "
                               "of an ambient mesh")
    lines = info.value.message.splitlines()[1:]  # every line it must delete, each named
    assert [line.split(": ")[1].split(" ")[0] for line in lines] == [
        "spec.values.global.meshID", "spec.values.global.network", "spec.values.pilot.env.AMBIENT_ENABLE_MULTI_NETWORK"]


def test_the_second_root_switch_is_refused_in_istiods_env_list_too(tmp_path):
    path = tmp_path / "base.yaml"
    path.write_text(GOOD_BASE + "  components:\n    pilot:\n      k8s:\n        env:\n"
                    "        - name: PILOT_X\n          value: '1'\n"
                    "        - name: ISTIO_MULTIROOT_MESH\n          value: 'false'\n")
    with pytest.raises(ConfigError) as info:
        load_base(path)
    assert "spec.components.pilot.k8s.env[1] (ISTIO_MULTIROOT_MESH) is set by setup-mesh from rotate-certs --root" \
        in info.value.message
    assert f"{path}:" in info.value.message
    path.write_text(GOOD_BASE + "  components:\n    pilot:\n      k8s:\n        env:\n"
                    "        - name: PILOT_X\n          value: '1'\n")
    load_base(path)  # other entries are the user's


def test_every_reserved_value_is_named_at_once(tmp_path):
    path = tmp_path / "base.yaml"
    path.write_text(GOOD_BASE + "  values:\n    global:\n      meshID: a\n      network: b\n")
    with pytest.raises(ConfigError) as info:
        load_base(path)
    assert "meshID" in info.value.message and "network" in info.value.message


@pytest.mark.parametrize("text,message", [
    ("kind: Deployment\napiVersion: apps/v1\n", "expected IstioOperator"),
    ("apiVersion: v1\nkind: IstioOperator\n", "expected install.istio.io/v1alpha1"),
    ("- 1\n", "not an IstioOperator"),
    (GOOD_BASE.replace("spec:\n  profile: default\n", "spec: 3\n"), "spec must be a mapping"),
    (GOOD_BASE + "---\n" + GOOD_BASE, "one YAML document"),
    (GOOD_BASE + "metadata:\n  name: eastwest\n", "base.yaml:6: metadata.name 'eastwest' cannot name"),
    (GOOD_BASE + "metadata:\n  name: My_Plane\n", "metadata.name 'My_Plane' cannot name"),
])
def test_base_that_is_not_an_istio_operator_is_refused(tmp_path, text, message):
    path = tmp_path / "base.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_base(path)
    assert message in info.value.message


def _kubeconfig(path: Path, contexts: dict[str, str]) -> None:
    import yaml

    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": c, "cluster": {"server": s}} for c, s in contexts.items()],
        "users": [{"name": "u", "user": {"token": "t"}}],
        "contexts": [{"name": c, "context": {"cluster": c, "user": "u"}} for c in contexts],
    }))


def test_contexts_must_exist_in_the_kubeconfig(tmp_path, monkeypatch):
    kubeconfig = tmp_path / "kc"
    _kubeconfig(kubeconfig, {"c1": "https://127.0.0.1:6443"})
    path = tmp_path / "topology.yaml"
    path.write_text("mesh_id: m\ncontexts:\n  c1:\n    network: n\n  c2:\n    network: n\n")
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    with pytest.raises(ConfigError) as info:
        resolve_contexts(load_topology(path), None)
    assert "context 'c2' is not in the kubeconfig" in info.value.message


def _resolve_refused(tmp_path, monkeypatch, edit) -> ConfigError:
    """c1 in a kubeconfig changed by ``edit`` (its data), checked for topology.yaml's context c1."""
    kubeconfig = tmp_path / "kc"
    _kubeconfig(kubeconfig, {"c1": "https://127.0.0.1:6443", "c2": "https://127.0.0.1:6444"})
    data = json.loads(json.dumps(edit(yaml.safe_load(kubeconfig.read_text()))))  # no YAML aliases in the file
    kubeconfig.write_text(yaml.safe_dump(data, sort_keys=False))
    path = tmp_path / "topology.yaml"
    path.write_text("mesh_id: m\ncontexts:\n  c1:\n    network: n\n")
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    with pytest.raises(ConfigError) as info:
        resolve_contexts(load_topology(path), None)
    return info.value


def _context(data, name):
    return next(c for c in data["contexts"] if c["name"] == name)


@pytest.mark.parametrize("edit, message", [
    # kubectl would send this context's requests to http://localhost:8080: whatever answers there.
    (lambda d: (_context(d, "c1")["context"].update(cluster="c1-old"), d)[1],
     "context 'c1' ({kc}) names cluster 'c1-old', which is not in the kubeconfig: kubectl would send its requests "
     "to http://localhost:8080 instead"),
    (lambda d: (d["clusters"][0]["cluster"].pop("server"), d)[1],
     "context 'c1' ({kc}) names cluster 'c1', which has no server: kubectl would send its requests to "
     "http://localhost:8080 instead"),
    (lambda d: (_context(d, "c1")["context"].pop("cluster"), d)[1],
     "context 'c1' ({kc}) names no cluster: kubectl would send its requests to http://localhost:8080 instead"),
])
def test_a_context_without_a_server_is_refused_before_kubectl_calls_localhost(tmp_path, monkeypatch, edit, message):
    refused = _resolve_refused(tmp_path, monkeypatch, edit)
    assert refused.message == f"{tmp_path / 'topology.yaml'}: " + message.format(kc=tmp_path / "kc")
    assert refused.hint == "fix the context's cluster in the kubeconfig (`kubectl config get-clusters`), or remove the " \
                           "context from topology.yaml"


@pytest.mark.parametrize("edit, message", [
    # What kubectl refuses to load: `error loading config file`.
    (lambda d: {**d, "contexts": d["contexts"] + [_context(d, "c1")]}, "{kc}:18: context 'c1' is in contexts twice: "
     "kubectl refuses to load {kc} (duplicate name)"),
    (lambda d: {**d, "clusters": d["clusters"] + [d["clusters"][1]]}, "{kc}:9: cluster 'c2' is in clusters twice: "
     "kubectl refuses to load {kc} (duplicate name)"),
    (lambda d: {**d, "contexts": {c["name"]: c["context"] for c in d["contexts"]}},
     "{kc}:9: contexts must be a list of entries with a name, not a mapping"),
    (lambda d: {**d, "users": ["u"]}, "{kc}:20: each of users must be a mapping (name: and user:), not a string"),
    (lambda d: {**d, "users": [{"name": 7, "user": {"token": "t"}}]},
     "{kc}:20: the name of each of users must be a string, not a number"),
    (lambda d: {**d, "contexts": [{"name": "c1", "context": "c1"}]},
     "{kc}:11: the context of context 'c1' must be a mapping, not a string"),
    (lambda d: [d], "{kc}: {kc} is not a kubeconfig (a mapping with clusters, contexts and users), it is a list"),
])
def test_a_kubeconfig_kubectl_cannot_load_is_refused_at_its_line(tmp_path, monkeypatch, edit, message):
    refused = _resolve_refused(tmp_path, monkeypatch, edit)
    kc = tmp_path / "kc"
    assert refused.message == message.format(kc=kc)
    assert refused.hint == f"fix the file (kubectl refuses to load it too: try `kubectl --kubeconfig {kc} config view`)"


def test_a_kubeconfig_in_the_list_that_cannot_be_read_is_an_error_not_a_missing_file(tmp_path, monkeypatch):
    # kubectl skips a KUBECONFIG entry that does not exist, and fails on one it may not read (a folder of the
    # path closed to this user: stat fails with EACCES; root passes such checks, so the failure is simulated).
    good, locked = tmp_path / "kc", tmp_path / "locked" / "config"
    _kubeconfig(good, {"c1": "https://127.0.0.1:6443"})
    real_stat = os.stat

    def stat(path, *args, **kwargs):
        if str(path) == str(locked):
            raise PermissionError(13, "Permission denied", str(path))
        return real_stat(path, *args, **kwargs)

    monkeypatch.setattr(os, "stat", stat)
    path = tmp_path / "topology.yaml"
    path.write_text("mesh_id: m\ncontexts:\n  c1:\n    network: n\n")
    monkeypatch.setenv("KUBECONFIG", f"{good}{os.pathsep}{tmp_path / 'absent'}{os.pathsep}{locked}")
    with pytest.raises(ConfigError) as info:
        resolve_contexts(load_topology(path), None)
    assert info.value.message == f"cannot read kubeconfig {locked} (KUBECONFIG): Permission denied"
    monkeypatch.setenv("KUBECONFIG", f"{good}{os.pathsep}{tmp_path / 'absent'}")
    assert resolve_contexts(load_topology(path), None).clusters[0].server == "https://127.0.0.1:6443"


def test_a_per_context_kubeconfig_that_is_missing_or_lacks_the_context_points_at_topology_yaml(tmp_path):
    path = tmp_path / "topology.yaml"
    other = tmp_path / "other.yaml"
    path.write_text(f"mesh_id: m\ncontexts:\n  c1:\n    network: n\n    kubeconfig: {other}\n")
    with pytest.raises(ConfigError) as info:
        resolve_contexts(load_topology(path), None)
    assert info.value.hint == f"fix contexts.c1.kubeconfig in {path}"
    _kubeconfig(other, {"c9": "https://127.0.0.1:6443"})
    with pytest.raises(ConfigError) as info:
        resolve_contexts(load_topology(path), None)
    assert info.value.hint.startswith(f"check `kubectl --kubeconfig {other} config get-contexts`")


def test_missing_kubeconfig_file_is_an_error(tmp_path):
    path = tmp_path / "topology.yaml"
    path.write_text("mesh_id: m\ncontexts:\n  c1:\n    network: n\n")
    with pytest.raises(ConfigError) as info:
        resolve_contexts(load_topology(path), str(tmp_path / "nope"))
    assert "kubeconfig file not found" in info.value.message


def test_per_context_kubeconfig_and_local_server_detection(tmp_path, monkeypatch):
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "absent"))
    _kubeconfig(tmp_path / "one.yaml", {"c1": "https://127.0.0.1:6443"})
    path = tmp_path / "topology.yaml"
    path.write_text("mesh_id: m\ncontexts:\n  c1:\n    network: n\n    kubeconfig: one.yaml\n")
    cluster = resolve_contexts(load_topology(path), None).clusters[0]
    assert cluster.server == "https://127.0.0.1:6443"
    assert cluster.server_is_local


def test_removing_a_primary_that_still_has_remotes_names_them(tmp_path):
    path = tmp_path / "topology.yaml"
    path.write_text("mesh_id: m\ncontexts:\n  r1:\n    network: n1\n    primary: p1\n  r2:\n    network: n2\n"
                    "    primary: p1\n  p2:\n    network: n2\n")
    with pytest.raises(ConfigError) as info:
        load_topology(path)
    assert "primary 'p1' of context 'r1' is not a context in topology.yaml (it is the primary of r1, r2)" \
        in info.value.message
    assert "r1, r2" in info.value.hint and "p2" in info.value.hint


def test_a_primary_key_makes_a_remote(tmp_path):
    path = tmp_path / "topology.yaml"
    path.write_text("mesh_id: m\ncontexts:\n  p1:\n    network: n1\n  r1:\n    network: n2\n    primary: p1\n")
    topology = load_topology(path)
    assert [(c.context, c.primary) for c in topology.clusters] == [("p1", None), ("r1", "p1")]


# --- istio_version ----------------------------------------------------------------------------

def _pinned(tmp_path, text):
    path = tmp_path / "topology.yaml"
    path.write_text(text)
    return load_topology(path)


def test_the_mesh_pins_one_istio_version_and_a_context_overrides_it(tmp_path):
    topology = _pinned(tmp_path, "mesh_id: m\nistio_version: 1.30.3\ncontexts:\n  c1:\n    network: n1\n"
                                 "  c2:\n    network: n1\n    istio_version: 1.31.0\n  c3:\n    network: n2\n"
                                 "    primary: c1\n")
    assert topology.istio_version == "1.30.3"
    assert [topology.istio_version_of(c) for c in ("c1", "c2", "c3")] == ["1.30.3", "1.31.0", "1.30.3"]
    assert topology.istio_versions == ["1.30.3", "1.31.0"]
    mesh = mesh_model(topology)
    assert [m.istio_version for m in mesh.members] == ["1.30.3", "1.31.0", "1.30.3"]


def test_without_the_key_nothing_is_pinned(tmp_path):
    topology = _pinned(tmp_path, "mesh_id: m\ncontexts:\n  c1:\n    network: n1\n")
    assert topology.istio_version is None and topology.istio_version_of("c1") is None
    assert topology.istio_versions == []


def test_a_context_may_pin_a_version_when_the_mesh_does_not(tmp_path):
    topology = _pinned(tmp_path, "mesh_id: m\ncontexts:\n  c1:\n    network: n1\n    istio_version: 1.31.0-rc.0\n"
                                 "  c2:\n    network: n1\n")
    assert (topology.istio_version_of("c1"), topology.istio_version_of("c2")) == ("1.31.0-rc.0", None)


def test_pinned_versions_survive_resolving_the_kubeconfig(tmp_path, monkeypatch):
    _kubeconfig(tmp_path / "kc", {"c1": "https://127.0.0.1:1", "c2": "https://127.0.0.1:2"})
    topology = _pinned(tmp_path, "mesh_id: m\nistio_version: 1.30.3\ncontexts:\n  c1:\n    network: n1\n"
                                 "  c2:\n    network: n1\n    istio_version: 1.31.0\n")
    resolved = resolve_contexts(topology, str(tmp_path / "kc"))
    assert [resolved.istio_version_of(c) for c in ("c1", "c2")] == ["1.30.3", "1.31.0"]


BAD_VERSIONS = [
    ("istio_version: 1.30\n", 2, "istio_version of the mesh: 1.3 is a number, not an Istio version", "X.Y.Z"),
    ("istio_version: v1.30.3\n", 2, "'v1.30.3' is not an Istio version", "without a leading 'v'"),
    ("istio_version: 1.30.x\n", 2, "'1.30.x' is not an Istio version", "e.g. 1.30.3"),
    ("istio_version: [1.30.3]\n", 2, "is not an Istio version", "X.Y.Z"),
    ("istio_version: 1.27.9\n", 2, "Istio 1.27.9 is outside the range setup-mesh supports (1.28.0 to 1.31.x)",
     "pin a release from 1.28.0 to 1.31.x"),
    ("istio_version: 1.32.0\n", 2, "Istio 1.32.0 is outside the range", "e.g. 1.30.3"),
    ("istio_version: 2.0.0\n", 2, "Istio 2.0.0 is outside the range", "e.g. 1.30.3"),
]


@pytest.mark.parametrize("line,lineno,message,hint", BAD_VERSIONS)
def test_a_bad_mesh_istio_version_is_refused_with_where_and_how(tmp_path, line, lineno, message, hint):
    path = tmp_path / "topology.yaml"
    path.write_text("mesh_id: m\n" + line + "contexts:\n  c1:\n    network: n1\n")
    with pytest.raises(ConfigError) as info:
        load_topology(path)
    assert info.value.message.startswith(f"{path}:{lineno}: ")
    assert message in info.value.message and hint in info.value.hint


def test_a_bad_context_istio_version_names_the_context_and_its_line(tmp_path):
    path = tmp_path / "topology.yaml"
    path.write_text("mesh_id: m\nistio_version: 1.30.3\ncontexts:\n  c1:\n    network: n1\n"
                    "  c2:\n    network: n1\n    istio_version: 1.31\n")
    with pytest.raises(ConfigError) as info:
        load_topology(path)
    assert info.value.message.startswith(f"{path}:8: istio_version of context 'c2': 1.31 is a number")


def test_a_misspelt_version_key_gets_a_guess(tmp_path):
    path = tmp_path / "topology.yaml"
    path.write_text("mesh_id: m\nistio_versoin: 1.30.3\ncontexts:\n  c1:\n    network: n1\n")
    with pytest.raises(ConfigError) as info:
        load_topology(path)
    assert "did you mean 'istio_version'?" in info.value.hint


@pytest.mark.parametrize("spec, mode, ztunnel", [
    ({"profile": "ambient"}, "ambient", "istio-system"),
    ({"profile": "openshift-ambient"}, "ambient", "kube-system"),
    ({"profile": "openshift-ambient", "components": {"ztunnel": {"namespace": "ztunnel"}}}, "ambient", "ztunnel"),
    ({"profile": "openshift"}, "sidecar", "istio-system"),
    ({}, "sidecar", "istio-system"),
    # What Istio's manifests/profiles/ambient.yaml holds, taken as base.yaml: the charts' profile is ambient.
    ({"components": {"cni": {"enabled": True}, "ztunnel": {"enabled": True}}, "values": {"profile": "ambient"}},
     "ambient", "istio-system"),
    ({"values": {"global": {"profile": "ambient"}}}, "ambient", "istio-system"),
    ({"profile": "default", "values": {"profile": "demo"}}, "sidecar", "istio-system"),
])
def test_istios_ambient_profiles_and_where_they_put_ztunnel(spec, mode, ztunnel):
    from lib.config import data_plane_mode, ztunnel_namespace

    operator = {"apiVersion": "install.istio.io/v1alpha1", "kind": "IstioOperator", "spec": spec}
    assert (data_plane_mode(operator), ztunnel_namespace(operator)) == (mode, ztunnel)


@pytest.mark.parametrize("profile, refused", [("remote", True), ("external", True), ("minimal", False),
                                              ("openshift-ambient", False)])
def test_a_profile_for_a_clusters_role_is_refused_in_base_yaml(tmp_path, profile, refused):
    # base.yaml is what every primary installs: a remote's profile there would make every primary a remote.
    path = tmp_path / "base.yaml"
    path.write_text(f"apiVersion: install.istio.io/v1alpha1\nkind: IstioOperator\nspec:\n  profile: {profile}\n")
    if not refused:
        assert load_base(path).operator["spec"]["profile"] == profile
        return
    with pytest.raises(ConfigError) as info:
        load_base(path)
    assert info.value.message.startswith(f"{path}:4: spec.profile {profile}") and "primary" in info.value.hint


@pytest.mark.parametrize("values, line, key", [
    # Istio's manifests/profiles/remote.yaml names the remote profile in the values only.
    ("  values:\n    profile: remote\n", 5, "values.profile"),
    ("  values:\n    global:\n      profile: remote\n", 6, "values.global.profile"),
])
def test_the_charts_remote_profile_in_base_yaml_is_refused_where_it_is_set(tmp_path, values, line, key):
    # The charts take their profile from the values: every primary would install a remote's injector only.
    path, refused = _refused_spec(tmp_path, values)
    assert refused.message.startswith(f"{path}:{line}: {key} remote cannot be base.yaml's")
    assert "primary" in refused.hint


def _refused_spec(tmp_path, spec: str):
    """base.yaml with this text under spec:, and load_base's refusal of it."""
    path = tmp_path / "base.yaml"
    path.write_text("apiVersion: install.istio.io/v1alpha1\nkind: IstioOperator\nspec:\n" + spec)
    with pytest.raises(ConfigError) as info:
        load_base(path)
    return path, info.value


def test_a_misspelt_chart_profile_is_refused_before_istioctl_fails_on_it(tmp_path):
    path, refused = _refused_spec(tmp_path, "  values:\n    profile: ambiant\n")
    assert refused.message.startswith(f"{path}:5: values.profile ambiant is no profile of Istio's charts")
    assert refused.hint.startswith("did you mean 'ambient'?")
    path.write_text(path.read_text().replace("ambiant", "platform-k3d"))
    assert load_base(path).operator["spec"]["values"]["profile"] == "platform-k3d"


def test_an_ambient_profile_with_another_chart_profile_is_refused(tmp_path):
    # istioctl would install ztunnel, and istiod without ambient: pods would be captured by nothing.
    path, refused = _refused_spec(tmp_path, "  profile: ambient\n  values:\n    profile: demo\n")
    assert refused.message.startswith(f"{path}:6: values.profile demo with spec.profile ambient")
    assert "without ambient" in refused.message and "delete values.profile" in refused.hint


def test_an_ambient_base_by_its_values_may_not_set_the_multi_network_switch_either(tmp_path):
    path, refused = _refused_spec(tmp_path, "  values:\n    profile: ambient\n    pilot:\n      env:\n"
                                            "        AMBIENT_ENABLE_MULTI_NETWORK: 'true'\n")
    assert f"values.profile ambient ({path}:5) turns it on" in refused.message


@pytest.mark.parametrize("spec, lines, hint", [
    # Istio's empty profile installs neither the CRDs nor istiod: apply would fail at the first Gateway.
    ("  profile: empty\n", ["components.base (Istio's CRDs, which the Gateway that exposes services needs): "
                             "{p}:4: spec.profile empty does not install it",
                             "components.pilot (istiod: a primary's control plane, a remote's injector): "
                             "{p}:4: spec.profile empty does not install it"],
     "set components.base.enabled: true, components.pilot.enabled: true in base.yaml, or use a profile that "
     "installs them (default, minimal, ambient, openshift, openshift-ambient)"),
    ("  components:\n    pilot:\n      enabled: false\n",
     ["components.pilot (istiod: a primary's control plane, a remote's injector): {p}:6: components.pilot.enabled "
      "is false"], "set components.pilot.enabled: true in base.yaml"),
    ("  profile: minimal\n  components:\n    base:\n      enabled: false\n",
     ["components.base (Istio's CRDs, which the Gateway that exposes services needs): {p}:7: "
      "components.base.enabled is false"], "set components.base.enabled: true in base.yaml"),
    # Ambient needs istio-cni and ztunnel, which Istio's ambient profiles turn on.
    ("  profile: ambient\n  components:\n    ztunnel:\n      enabled: false\n",
     ["components.ztunnel (ztunnel: ambient's node proxy): {p}:7: components.ztunnel.enabled is false"],
     "set components.ztunnel.enabled: true in base.yaml"),
    ("  values:\n    profile: ambient\n",
     ["components.cni (istio-cni: ambient's traffic redirection): {p}:5: values.profile ambient makes the mesh "
      "ambient, but spec.profile default (not set) does not install it",
      "components.ztunnel (ztunnel: ambient's node proxy): {p}:5: values.profile ambient makes the mesh ambient, "
      "but spec.profile default (not set) does not install it"],
     "set components.cni.enabled: true, components.ztunnel.enabled: true in base.yaml, or use a profile that "
     "installs them (ambient, openshift-ambient)"),
    ("  profile: minimal\n  values:\n    global:\n      profile: ambient\n",
     ["components.cni (istio-cni: ambient's traffic redirection): {p}:4: spec.profile minimal does not install it",
      "components.ztunnel (ztunnel: ambient's node proxy): {p}:4: spec.profile minimal does not install it"],
     "set components.cni.enabled: true, components.ztunnel.enabled: true in base.yaml, or use a profile that "
     "installs them (ambient, openshift-ambient)"),
])
def test_a_base_that_leaves_out_what_the_mesh_needs_is_refused_naming_each_component_and_line(tmp_path, spec, lines,
                                                                                              hint):
    path, refused = _refused_spec(tmp_path, spec)
    assert refused.message == "\n".join(["base.yaml leaves out components every cluster of the mesh needs:",
                                         *("  " + line.format(p=path) for line in lines)])
    assert refused.hint == hint


@pytest.mark.parametrize("spec", [
    "  profile: empty\n  components:\n    base:\n      enabled: true\n    pilot:\n      enabled: true\n",
    "  profile: minimal\n", "  profile: demo\n", "  profile: preview\n", "  profile: stable\n",
    "  profile: openshift\n", "  profile: ambient\n", "  profile: openshift-ambient\n", "  {}\n",
    "  profile: some-later-profile\n",  # a profile this version does not know: istioctl decides
    # What Istio's manifests/profiles/ambient.yaml holds: spec.profile default, both components turned on.
    "  components:\n    cni:\n      enabled: true\n    ztunnel:\n      enabled: true\n  values:\n    profile: ambient\n",
])
def test_istios_profiles_and_a_base_that_turns_the_needed_components_on_are_taken(tmp_path, spec):
    path = tmp_path / "base.yaml"
    path.write_text("apiVersion: install.istio.io/v1alpha1\nkind: IstioOperator\nspec:\n" + spec)
    assert load_base(path).operator["spec"] == yaml.safe_load("spec:\n" + spec)["spec"]


@pytest.mark.parametrize("text, message", [
    # Shapes istioctl would refuse as well; each crashed or went through before.
    ("spec:\n  profile: [ambient]\n", "{p}:4: spec.profile must be a string, not a list"),
    ("spec:\n  profile: 3\n", "{p}:4: spec.profile must be a string, not a number"),
    ("spec:\n  components: [pilot]\n", "{p}:4: spec.components must be a mapping, not a list"),
    ("spec:\n  components:\n    pilot: true\n", "{p}:5: spec.components.pilot must be a mapping, not true/false"),
    ("spec:\n  components:\n    pilot:\n      enabled: 'yes'\n",
     "{p}:6: spec.components.pilot.enabled must be true or false, not a string"),
    ("spec:\n  components:\n    pilot:\n      k8s:\n        env: {A: b}\n",
     "{p}:7: spec.components.pilot.k8s.env must be a list, not a mapping"),
    ("spec:\n  components:\n    ingressGateways: {name: a}\n",
     "{p}:5: spec.components.ingressGateways must be a list, not a mapping"),
    ("spec:\n  components:\n    ingressGateways:\n    - istio-ingressgateway\n",
     "{p}:6: spec.components.ingressGateways[0] must be a mapping (name:, enabled:, ...), not a string"),
    ("spec:\n  components:\n    egressGateways:\n    - name: a\n    - name: b\n      enabled: 1\n",
     "{p}:8: spec.components.egressGateways[1].enabled must be true or false, not a number"),
    ("spec:\n  values:\n    pilot:\n      env: [A]\n", "{p}:6: spec.values.pilot.env must be a mapping, not a list"),
    ("spec:\n  meshConfig: 5\n", "{p}:4: spec.meshConfig must be a mapping, not a number"),
    ("metadata: [a]\nspec: {}\n", "{p}:3: metadata must be a mapping, not a list"),
])
def test_a_base_shaped_otherwise_than_the_istiooperator_api_is_refused_at_its_line(tmp_path, text, message):
    path = tmp_path / "base.yaml"
    path.write_text("apiVersion: install.istio.io/v1alpha1\nkind: IstioOperator\n" + text)
    with pytest.raises(ConfigError) as info:
        load_base(path)
    assert info.value.message == message.format(p=path)
    assert info.value.hint == ("write it as the IstioOperator API has it: "
                               "https://istio.io/latest/docs/reference/config/istio.operator.v1alpha1/")


@pytest.mark.parametrize("spec, line, key, value, example", [
    ('  revision: "1.30.3"\n', 4, "spec.revision", "1.30.3", "1-30-3"),
    ("  values:\n    revision: Canary_1\n", 5, "spec.values.revision", "Canary_1", "canary-1"),
])
def test_a_revision_that_is_no_dns_label_is_refused_before_istioctl_fails_on_it(tmp_path, spec, line, key, value,
                                                                                  example):
    path, refused = _refused_spec(tmp_path, spec)
    assert refused.message == (f"{path}:{line}: {key} {value!r} is no valid revision: istioctl install would fail "
                               "with `invalid revision specified`")
    assert refused.hint.endswith(f"e.g. {example}")


@pytest.mark.parametrize("key, spec", [("spec.revision", "  revision: {}\n"),
                                       ("spec.values.revision", "  values:\n    revision: {}\n")])
def test_a_revision_too_long_for_istiods_service_name_is_refused(tmp_path, key, spec):
    """istiod's Service is istiod-<revision>, and a Service name has at most 63 characters: 56 is the longest
    revision an install can make."""
    longest = "r" * 56
    path = tmp_path / "ok" / "base.yaml"
    path.parent.mkdir()
    path.write_text("apiVersion: install.istio.io/v1alpha1\nkind: IstioOperator\nspec:\n" + spec.format(longest))
    load_base(path)
    path, refused = _refused_spec(tmp_path, spec.format(longest + "s"))
    assert refused.message.startswith(f"{path}:") and refused.message.endswith(
        f"{key} '{longest}s' has 57 characters: istiod's Service istiod-{longest}s would be longer than the 63 a "
        "Service name may have, and the API server would refuse it halfway through istioctl install")
    assert refused.hint == "use a revision of at most 56 characters"


def test_a_gateway_of_base_yaml_may_not_take_the_east_west_gateways_name(tmp_path):
    # What pasting gen-eastwest-gateway.sh's gateway into base.yaml gives: two IstioOperators owning one Deployment.
    path, refused = _refused_spec(tmp_path, "  components:\n    ingressGateways:\n    - name: istio-ingressgateway\n"
                                            "    - name: istio-eastwestgateway\n      enabled: true\n")
    assert refused.message == (f"{path}:7: istio-eastwestgateway is the east-west gateway setup-mesh installs where "
                               "clusters are on several networks")


@pytest.mark.parametrize("spec, line, key", [
    ("  namespace: istio-control\n", 4, "spec.namespace"),
    ("  values:\n    global:\n      istioNamespace: mesh-cp\n", 6, "spec.values.global.istioNamespace"),
])
def test_a_control_plane_namespace_other_than_istio_system_is_refused(tmp_path, spec, line, key):
    # istiod reads secret cacerts and the remote secrets from its own namespace; setup-mesh writes them in
    # istio-system: elsewhere istiod would sign with its own CA and see no peer.
    path, refused = _refused_spec(tmp_path, spec)
    value = yaml.safe_load(spec)
    value = value.get("namespace") or value["values"]["global"]["istioNamespace"]
    assert refused.message.startswith(f"{path}:{line}: {key} {value}: setup-mesh keeps the control plane in "
                                      "istio-system")
    assert refused.hint == "delete the line (or set it to istio-system)"


def test_istio_system_named_as_the_control_planes_namespace_is_taken(tmp_path):
    path = tmp_path / "base.yaml"
    path.write_text("apiVersion: install.istio.io/v1alpha1\nkind: IstioOperator\nspec:\n  namespace: istio-system\n"
                    "  values:\n    global:\n      istioNamespace: istio-system\n")
    assert load_base(path).operator["spec"]["namespace"] == "istio-system"


@pytest.mark.parametrize("contexts, message, hint", [
    # Each refusal names the line at fault (the context's own, or its key's) and says how to fix it.
    ('  "":\n    network: n1\n', "{p}:3: context names must be non-empty strings, got ''",
     "quote the context name as it appears in `kubectl config get-contexts`"),
    ("  c1: n1\n", "{p}:3: context 'c1' must be a mapping with at least network:, not a string",
     "write it as\n  c1:\n    network: network1"),
    ("  c1:\n    networks: n1\n", "{p}:4: unknown key 'networks' in context 'c1'",
     "did you mean 'network'? allowed keys: "),
    ("  c0:\n    network: n1\n  c1:\n    cluster_name: x\n", "{p}:5: context 'c1' has no network",
     "add `network: NAME` (clusters that reach each other's pods directly share a network)"),
    ("  c1:\n    network: 'n 1'\n", "{p}:4: invalid network 'n 1' for context 'c1'",
     "a network is a Kubernetes label value: letters, digits, '-', '_', '.', at most 63 characters"),
    ("  c1:\n    network: n1\n    cluster_name: Bad_Name\n", "{p}:5: invalid cluster_name 'Bad_Name'",
     "a cluster name is a DNS-1123 label"),
    ("  Ctx_1:\n    network: n1\n", "{p}:3: context 'Ctx_1' is not a valid Istio cluster name",
     "set `cluster_name:` under 'Ctx_1' to a DNS-1123 label"),
])
def test_a_bad_context_is_refused_at_its_line_with_how_to_fix_it(tmp_path, contexts, message, hint):
    path = tmp_path / "topology.yaml"
    path.write_text("mesh_id: m\ncontexts:\n" + contexts)
    with pytest.raises(ConfigError) as info:
        load_topology(path)
    assert info.value.message == message.format(p=path)
    assert info.value.hint.startswith(hint)


def test_names_and_label_values_of_63_characters_are_accepted(tmp_path):
    path = tmp_path / "topology.yaml"
    path.write_text(f"mesh_id: m\ncontexts:\n  c1:\n    network: {'n' * 63}\n    cluster_name: {'c' * 63}\n")
    (cluster,) = load_topology(path).clusters
    assert (cluster.network, cluster.name) == ("n" * 63, "c" * 63)
    # A YAML block scalar ends in a newline, which neither a name nor a label value may hold.
    for key in ("network", "cluster_name"):
        path.write_text(f"mesh_id: m\ncontexts:\n  c1:\n    network: n1\n    {key}: |\n      n1\n")
        with pytest.raises(ConfigError):
            load_topology(path)
