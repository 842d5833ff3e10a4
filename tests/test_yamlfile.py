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
