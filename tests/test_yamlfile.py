"""Manifests written by setup-mesh mean the same to kubectl as to setup-mesh."""
import json

import yaml

from lib.yamlfile import dump

# Hex digests that YAML 1.2 (kubectl) reads as numbers, and strings it reads as strings either way.
NUMBER_LOOKING = ["87731235093e71", "1e5", "0o17", "12", "1.0", ".5", "-3"]


def test_strings_that_look_like_numbers_stay_strings_in_kubectl(two_clusters):
    annotations = {f"example.com/v{i}": value for i, value in enumerate(NUMBER_LOOKING + ["deadbeef", "true"])}
    manifest = dump({"apiVersion": "v1", "kind": "ConfigMap",
                     "metadata": {"name": "digests", "namespace": "default", "annotations": annotations}})
    assert yaml.safe_load(manifest)["metadata"]["annotations"] == annotations
    applied = two_clusters.kubectl("cluster1", "apply", "--server-side", "--field-manager=t", "-f", "-", "-o", "json",
                                   stdin=manifest, check=False)
    assert applied.returncode == 0, applied.stderr
    assert json.loads(applied.stdout)["metadata"]["annotations"] == annotations


def test_unquoted_digest_is_what_kubectl_rejects(two_clusters):
    """What the quoting prevents: an unquoted hex digest reaches the API server as a number."""
    manifest = ("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: digests\n  namespace: default\n"
                "  annotations:\n    example.com/fp: 87731235093e71\n")
    applied = two_clusters.kubectl("cluster1", "apply", "--server-side", "--field-manager=t", "-f", "-",
                                   stdin=manifest, check=False)
    assert applied.returncode == 1
    assert "annotation values must be strings" in applied.stderr or "cannot unmarshal number" in applied.stderr, \
        applied.stderr


# --- reading: libyaml's parser where PyYAML has it, the same documents and lines, PyYAML's errors -------

KUBECONFIG_LIKE = """\
apiVersion: v1
kind: Config
clusters:
- name: c1
  cluster: {server: "https://127.0.0.1:6443", certificate-authority-data: "TFMwdExTMUNSVWRKVGlCRFJWSlVTVVpKUTBGVVJTMHRMUzB0"}
- name: c2
  cluster:
    server: https://10.0.0.2:6443
    insecure-skip-tls-verify: true
contexts:
- name: gke_project_zone_c1  # a comment
  context: &ctx {cluster: c1, user: u1, namespace: team-a}
- name: c1-alias
  context: *ctx
users:
- name: u1
  user:
    token: "0123456789"
    exec: {command: gcloud, args: [a, '1.10', 0x1f, yes, ~, 2026-12-04]}
"""


def test_a_file_reads_the_same_with_and_without_libyaml(tmp_path, monkeypatch):
    from lib import yamlfile

    path = tmp_path / "kubeconfig"
    path.write_text(KUBECONFIG_LIKE)
    fast = yamlfile.load_located(path, "kubeconfig")
    monkeypatch.setattr(yamlfile, "_LIBYAML", None)
    plain = yamlfile.load_located(path, "kubeconfig")
    assert fast.data == plain.data == yaml.safe_load(KUBECONFIG_LIKE)
    assert fast._lines == plain._lines
    assert fast.line("contexts", 0, "name") == 11 and fast.line("users", 0, "user", "exec") == 19
    assert yamlfile.load_data(KUBECONFIG_LIKE) == yaml.safe_load(KUBECONFIG_LIKE)
    assert yamlfile.load_all_data("a: 1\n---\nb: [2]\n") == [{"a": 1}, {"b": [2]}]


def test_a_syntax_error_is_worded_by_pyyaml_with_its_line(tmp_path):
    import pytest

    from lib.errors import ConfigError
    from lib.yamlfile import load_located

    path = tmp_path / "topology.yaml"
    path.write_text("mesh_id: mesh1\ncontexts:\n  c1:\n    network: n1\n   bad: [\n")
    with pytest.raises(ConfigError) as caught:
        load_located(path, "topology file")
    try:
        yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        expected = f"{path}:{exc.problem_mark.line + 1}:{exc.problem_mark.column + 1}: topology file is not valid YAML: {exc.problem}"
    assert str(caught.value) == expected


def test_empty_documents_count_for_nothing_and_a_second_document_is_refused_at_its_line(tmp_path):
    import pytest

    from lib.errors import ConfigError
    from lib.yamlfile import load_located

    path = tmp_path / "base.yaml"
    body = "kind: IstioOperator\nspec:\n  profile: default\n"
    for text in (body + "---\n# end\n", "# start\n---\n" + body, "---\n" + body + "---\n", body + "---\nnull\n"):
        path.write_text(text)
        doc = load_located(path, "base IstioOperator")
        assert doc.data == {"kind": "IstioOperator", "spec": {"profile": "default"}}, text
        assert doc.line("spec", "profile") == text.splitlines().index("  profile: default") + 1
    path.write_text(body + "---\n# another\n---\n" + body)
    with pytest.raises(ConfigError) as info:
        load_located(path, "base IstioOperator")
    assert info.value.message == f"{path}:7: base IstioOperator must hold one YAML document, found 2"
