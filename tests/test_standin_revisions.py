"""The istioctl stand-in's revisions and revision tags, as a canary upgrade uses them: `install --revision`,
`tag set/list/remove`, `uninstall --revision`, and the emulated injector naming the injecting revision and
version on each pod (what status counts proxies by)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import yaml

from tests.sandbox.release import materialize_release
from tests.test_standin_istioctl import cluster_iop, run, wait_for, write

NEW = "1.31.0"
NEW_REV = "1-31-0"


@pytest.fixture
def canary(sandbox_factory, tmp_path):
    """c1 with the default (unrevisioned) 1.30.3 control plane, namespace `app` labelled for injection with
    one injected pod, and a 1.31.0 release beside the sandbox's."""
    sb = sandbox_factory(["c1"])
    iop = write(tmp_path / "c1.yaml", cluster_iop("c1", "network1"))
    old = Path(sb.istio_dir)
    new = materialize_release(old.parent, version=NEW)
    assert ctl(old, sb, "install", "-y", "-f", iop, "--context", "c1").returncode == 0
    sb.kubectl("c1", "create", "namespace", "app")
    sb.kubectl("c1", "label", "namespace", "app", "istio-injection=enabled")
    sb.kubectl("c1", "create", "deployment", "web", "--image=nginx", "-n", "app")
    assert wait_for(lambda: proxies(sb, "app"))
    return sb, old, new, iop


def ctl(release, sb, *args, stdin=None):
    return run([str(Path(release) / "bin" / "istioctl"), *args], sb.env, stdin=stdin)


def restart(sb):
    """`kubectl rollout restart` stamps the pod template to the second and refuses a second restart within
    one: start each in a second of its own."""
    time.sleep(1.05 - time.time() % 1)
    sb.kubectl("c1", "rollout", "restart", "deployment/web", "-n", "app")


def proxies(sb, ns):
    """(revision, proxy version) of each injected pod of ``ns``."""
    out = []
    for pod in sb.get_json("c1", "pods", "-n", ns)["items"]:
        annotations = pod["metadata"].get("annotations") or {}
        proxy = [c for c in pod["spec"]["containers"] if c["name"] == "istio-proxy"]
        if proxy and pod["metadata"].get("deletionTimestamp") is None:
            out.append((annotations.get("istio.io/rev"), proxy[0]["image"].rsplit(":", 1)[1]))
    return sorted(out)


def test_a_revision_installs_beside_the_default_and_the_default_tag_moves_injection_to_it(canary):
    sb, old, new, iop = canary
    assert proxies(sb, "app") == [("default", "1.30.3")]
    proc = ctl(new, sb, "install", "-y", "-f", iop, "--revision", NEW_REV, "--context", "c1")
    assert proc.returncode == 0, proc.stderr
    # Istio's charts name a revision's objects with its suffix and label them with it
    dep = sb.get_json("c1", "deployment", f"istiod-{NEW_REV}", "-n", "istio-system")
    assert dep["metadata"]["labels"]["istio.io/rev"] == NEW_REV
    assert dep["spec"]["template"]["spec"]["containers"][0]["image"].endswith(f"pilot:{NEW}")
    injector = sb.get_json("c1", "mutatingwebhookconfiguration", f"istio-sidecar-injector-{NEW_REV}")
    assert injector["metadata"]["labels"]["istio.io/rev"] == NEW_REV
    assert sb.get_json("c1", "deployment", "istiod", "-n", "istio-system")["metadata"]["labels"]["istio.io/rev"] == "default"

    # Until the tag moves, namespaces labelled istio-injection=enabled still get the old revision.
    restart(sb)
    assert wait_for(lambda: proxies(sb, "app") == [("default", "1.30.3")])

    proc = ctl(new, sb, "tag", "set", "default", "--revision", NEW_REV, "--overwrite", "--context", "c1")
    assert proc.returncode == 0, proc.stderr
    assert f'Revision tag "default" created, referencing control plane revision "{NEW_REV}"' in proc.stdout
    tag = sb.get_json("c1", "mutatingwebhookconfiguration", "istio-revision-tag-default")
    assert tag["metadata"]["labels"]["istio.io/rev"] == NEW_REV
    assert tag["metadata"]["labels"]["istio.io/tag"] == "default"
    assert not any(k.startswith(("operator.istio.io", "install.operator.istio.io")) for k in tag["metadata"]["labels"])
    assert {h["clientConfig"]["service"]["name"] for h in tag["webhooks"]} == {f"istiod-{NEW_REV}"}
    # the old default injector stays, selecting nothing
    old_injector = sb.get_json("c1", "mutatingwebhookconfiguration", "istio-sidecar-injector")
    assert {json.dumps(h["namespaceSelector"]) for h in old_injector["webhooks"]} == {
        json.dumps({"matchLabels": {"istio.io/deactivated": "never-match"}})}
    validator = sb.get_json("c1", "validatingwebhookconfiguration", "istiod-default-validator")
    assert validator["metadata"]["labels"]["istio.io/rev"] == NEW_REV

    restart(sb)
    assert wait_for(lambda: proxies(sb, "app") == [(NEW_REV, NEW)]), proxies(sb, "app")

    listed = ctl(new, sb, "tag", "list", "--context", "c1")
    assert listed.returncode == 0, listed.stderr
    rows = [line.split() for line in listed.stdout.splitlines()]
    assert rows[0] == ["TAG", "REVISION", "NAMESPACES"]
    assert ["default", NEW_REV] in rows[1:], listed.stdout

    # the old revision goes; the new one, the tag and the new pods stay
    gone = ctl(new, sb, "uninstall", "--revision", "default", "-y", "--context", "c1")
    assert gone.returncode == 0, gone.stderr
    # istioctl counts the proxies every istiod reports, whatever their revision (pkg/proxy/proxyinfo.go)
    # (the default profile's ingress gateway, still on the old revision, and the restarted web pod)
    assert "There are still 2 proxies pointing to the control plane revision default" in gone.stdout, gone.stdout
    assert ".app\n" in gone.stdout and "istio-ingressgateway-" in gone.stdout
    assert sb.kubectl("c1", "get", "deployment", "istiod", "-n", "istio-system", check=False).returncode != 0
    assert sb.get_json("c1", "deployment", f"istiod-{NEW_REV}", "-n", "istio-system")
    assert sb.get_json("c1", "mutatingwebhookconfiguration", "istio-revision-tag-default")


def test_tag_commands_refuse_as_the_real_ones(canary):
    sb, old, new, iop = canary
    assert ctl(new, sb, "install", "-y", "-f", iop, "--revision", NEW_REV, "--context", "c1").returncode == 0

    def fails(*args):
        proc = ctl(new, sb, *args, "--context", "c1")
        assert proc.returncode == 1, proc.stdout + proc.stderr
        return proc.stderr.strip()

    assert fails("tag", "set") == "Error: must provide a tag for modification"
    assert fails("tag", "set", "a", "b", "--revision", NEW_REV) == "Error: must provide a single tag for creation"
    assert fails("tag", "set", "default") == 'Error: required flag(s) "revision" not set'
    assert fails("tag", "set", "prod", "--revision", "9-9-9") == (
        'Error: cannot modify tag: cannot find MutatingWebhookConfiguration or Service with revision "9-9-9"')
    assert fails("tag", "set", NEW_REV, "--revision", "default") == (
        f'Error: cannot create revision tag "{NEW_REV}": found existing control plane revision with same name')
    assert fails("install", "-y", "-f", iop, "--revision", "1.31.0") == "Error: invalid revision specified: 1.31.0"
    assert ctl(new, sb, "tag", "set", "prod", "--revision", NEW_REV, "--context", "c1").returncode == 0
    assert fails("tag", "set", "prod", "--revision", "default") == (
        'Error: revision tag "prod" already exists, and --overwrite is false')
    moved = ctl(new, sb, "tag", "set", "prod", "--revision", "default", "--overwrite", "--context", "c1")
    assert moved.returncode == 0, moved.stderr
    assert sb.get_json("c1", "mutatingwebhookconfiguration", "istio-revision-tag-prod")["metadata"]["labels"][
        "istio.io/rev"] == "default"
    listed = json.loads(ctl(new, sb, "tag", "list", "-o", "json", "--context", "c1").stdout)
    assert {"tag": "prod", "revision": "default", "namespaces": []} in listed
    assert {"tag": "", "revision": NEW_REV, "namespaces": []} in listed

    # a namespace still using the tag: remove asks first
    sb.kubectl("c1", "label", "namespace", "app", "istio-injection-", "istio.io/rev=prod")
    asked = ctl(new, sb, "tag", "remove", "prod", "--context", "c1", stdin="n\n")
    assert 'Caution, found 1 namespace(s) still injected by tag "prod": app' in asked.stdout
    assert "Aborting operation." in asked.stdout
    assert sb.get_json("c1", "mutatingwebhookconfiguration", "istio-revision-tag-prod")
    removed = ctl(new, sb, "tag", "remove", "prod", "-y", "--context", "c1")
    assert removed.returncode == 0 and "Revision tag prod removed" in removed.stdout, removed.stderr
    assert fails("tag", "remove", "prod") == (
        'Error: cannot remove tag "prod": cannot find MutatingWebhookConfiguration or Service for tag')
    assert fails("uninstall", "--revision", "9-9-9", "-y") == "Error: could not find target revision"


def test_the_api_server_reports_the_kubernetes_version_it_was_started_with(sandbox_factory):
    sb = sandbox_factory(["c1", "c2"], kube_versions={"c2": "1.31.7"})
    versions = {ctx: json.loads(sb.kubectl(ctx, "version", "-o", "json").stdout)["serverVersion"]
                for ctx in ("c1", "c2")}
    assert versions["c2"]["gitVersion"] == "v1.31.7" and versions["c2"]["minor"] == "31"
    assert versions["c1"]["gitVersion"] != "v1.31.7"


def test_install_warns_below_the_releases_minimum_kubernetes_and_goes_on(sandbox_factory, tmp_path):
    sb = sandbox_factory(["old", "new"], kube_versions={"old": "1.31.2"})
    iop = write(tmp_path / "c.yaml", cluster_iop("old", "network1"))
    warned = ctl(sb.istio_dir, sb, "install", "-y", "-f", iop, "--context", "old")
    assert warned.returncode == 0, warned.stderr
    assert ("The Kubernetes version v1.31.2 is not supported by Istio 1.30.3. The minimum supported Kubernetes "
            "version is 1.32.") in warned.stdout
    quiet = ctl(sb.istio_dir, sb, "install", "-y", "-f", iop, "--context", "new")
    assert quiet.returncode == 0 and "not supported" not in quiet.stdout


def test_tag_generate_prints_the_tag_and_changes_nothing(canary):
    sb, old, new, iop = canary
    assert ctl(new, sb, "install", "-y", "-f", iop, "--revision", NEW_REV, "--context", "c1").returncode == 0
    before = sb.get_json("c1", "mutatingwebhookconfiguration", "istio-sidecar-injector")
    generated = ctl(new, sb, "tag", "generate", "default", "--revision", NEW_REV, "--context", "c1")
    assert generated.returncode == 0, generated.stderr
    docs = [d for d in yaml.safe_load_all(generated.stdout) if d]
    assert [(d["kind"], d["metadata"]["name"]) for d in docs] == [
        ("MutatingWebhookConfiguration", "istio-revision-tag-default"),
        ("ValidatingWebhookConfiguration", "istiod-default-validator"),
        ("Service", "istiod-revision-tag-default")]
    assert docs[2]["spec"]["selector"] == {"app": "istiod", "istio.io/rev": NEW_REV}
    assert sb.kubectl("c1", "get", "mutatingwebhookconfiguration", "istio-revision-tag-default",
                      check=False).returncode != 0
    assert sb.get_json("c1", "mutatingwebhookconfiguration", "istio-sidecar-injector")["webhooks"] == before["webhooks"]


def test_a_revisions_istiod_pods_are_not_selected_by_the_default_revisions_service(canary):
    sb, old, new, iop = canary
    assert ctl(new, sb, "install", "-y", "-f", iop, "--revision", NEW_REV, "--context", "c1").returncode == 0
    # the chart's deployment.yaml: a named revision's pods are istio=istiod; the default Service selects istio=pilot
    selector = sb.get_json("c1", "service", "istiod", "-n", "istio-system")["spec"]["selector"]
    pods = sb.get_json("c1", "pods", "-n", "istio-system", "-l", ",".join(f"{k}={v}" for k, v in selector.items()))
    assert {p["metadata"]["labels"]["istio.io/rev"] for p in pods["items"]} == {"default"}



def test_the_charts_own_revision_tags_are_part_of_the_install_and_go_with_it(canary):
    # values.revisionTags: istio-discovery templates/revision-tags-{mwc,svc}.yaml, labelled like the install.
    sb, old, new, iop = canary
    tagged = write(Path(iop).parent / "tagged.yaml", {**cluster_iop("c1", "network1"), "spec": {
        "values": {**cluster_iop("c1", "network1")["spec"]["values"], "revisionTags": ["prod"]}}})
    assert ctl(new, sb, "install", "-y", "-f", tagged, "--revision", NEW_REV, "--context", "c1").returncode == 0
    hook = sb.get_json("c1", "mutatingwebhookconfiguration", "istio-revision-tag-prod")
    labels = hook["metadata"]["labels"]
    assert (labels["istio.io/tag"], labels["istio.io/rev"], labels["operator.istio.io/component"]) == (
        "prod", NEW_REV, "Pilot")
    assert sb.get_json("c1", "service", "istiod-revision-tag-prod", "-n", "istio-system")
    listed = json.loads(ctl(new, sb, "tag", "list", "-o", "json", "--context", "c1").stdout)
    assert {"tag": "prod", "revision": NEW_REV, "namespaces": []} in listed
    removed = ctl(new, sb, "uninstall", "--revision", NEW_REV, "-y", "--context", "c1")
    assert removed.returncode == 0, removed.stderr
    assert sb.kubectl("c1", "get", "mutatingwebhookconfiguration", "istio-revision-tag-prod", "--ignore-not-found",
                      "-o", "name").stdout.strip() == "", "pruned with its revision"
    gone = ctl(new, sb, "tag", "remove", "prod", "-y", "--context", "c1")
    assert gone.returncode == 1 and gone.stderr.strip() == (
        'Error: cannot remove tag "prod": cannot find MutatingWebhookConfiguration or Service for tag')
