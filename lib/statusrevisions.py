"""status, revisions: each cluster's control-plane revisions and their Istio versions, where the ``default``
revision tag points, how many proxies run each revision (and which version), and the skew warnings that
follow (lib/skew.py). Read apart from the rest of status and judged in a function of its own, so that a
mesh mid-upgrade (two revisions side by side) reads as one.

Proxies are read from the pods themselves, as Istio's injection template marks them
(manifests/charts/istio-control/istio-discovery/files/injection-template.yaml): the injecting revision
in the annotation ``istio.io/rev`` (also in ``sidecar.istio.io/status``), the version in the
``istio-proxy`` container's image tag. A primary's revisions are its ``istiod[-<rev>]`` Deployments
(label ``istio.io/rev``, image tag); a remote runs its primary's. The ``default`` tag is the webhook
``istio-revision-tag-default`` (istioctl tag set; label ``istio.io/rev`` names its revision).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from .checks import ERROR, WARNING
from .config import Cluster
from .errors import MeshError
from .executor import RunContext, read_clusters
from .kube import Observed, Tools
from .names import DEFAULT_TAG_WEBHOOK, ISTIO_NAMESPACE, REVISION_LABEL
from .reporter import Reporter
from .skew import KUBERNETES_SUPPORT, parse_version, proxy_skew
from .statusread import image_version
from .statusreport import ClusterStatus, Hints, Problem

TAG_LABEL = "istio.io/tag"
PROXY_CONTAINER = "istio-proxy"


@dataclass
class Revisions:
    """One cluster's revisions as read; None fields: not known."""

    control_planes: dict[str, str] = field(default_factory=dict)  # revision -> Istio version (a primary's istiods)
    injectors: dict[str, str] = field(default_factory=dict)  # revision -> version its installer labelled
    default_tag: str | None = None  # the revision the `default` tag points at (None: no tag)
    proxies: dict[tuple[str, str], int] = field(default_factory=dict)  # (revision, version) -> pods
    namespaces: dict[str, dict[str, int]] = field(default_factory=dict)  # revision -> namespace -> its proxies
    kubernetes: str | None = None  # the API server's version (gitVersion)

    def current(self, control_planes: dict[str, str]) -> str | None:
        """The revision new proxies get: the default tag's, else the only one there is."""
        if self.default_tag:
            return self.default_tag
        return next(iter(control_planes)) if len(control_planes) == 1 else None

    def to_json(self, control_planes: dict[str, str]) -> dict[str, Any]:
        return {"control_planes": dict(sorted(control_planes.items())), "default_tag": self.default_tag,
                "proxies": [{"revision": r, "version": v, "count": n} for (r, v), n in sorted(self.proxies.items())],
                "kubernetes": self.kubernetes}


def parse_revisions(items: list[dict], deployments: dict[str, dict], version_doc: dict | None) -> Revisions:
    """From the webhook configurations and pods read (one list), istio-system's Deployments (the shared
    cluster read) and the API server's /version."""
    found = Revisions(kubernetes=(version_doc or {}).get("gitVersion"))
    for deployment in deployments.values():
        labels = (deployment.get("metadata") or {}).get("labels") or {}
        if labels.get("app") == "istiod":
            containers = ((deployment.get("spec") or {}).get("template") or {}).get("spec", {}).get("containers") or []
            found.control_planes[labels.get(REVISION_LABEL) or "default"] = \
                image_version(containers[0].get("image") if containers else None) or "unknown"
    for item in items:
        meta = item.get("metadata") or {}
        labels = meta.get("labels") or {}
        if item.get("kind") == "MutatingWebhookConfiguration":
            if meta.get("name") == DEFAULT_TAG_WEBHOOK:
                found.default_tag = labels.get(REVISION_LABEL)
            elif REVISION_LABEL in labels and TAG_LABEL not in labels and labels.get("operator.istio.io/version"):
                found.injectors[labels[REVISION_LABEL]] = labels["operator.istio.io/version"]
        elif item.get("kind") == "Pod" and not meta.get("deletionTimestamp"):
            proxy = next((c for c in (item.get("spec") or {}).get("containers") or []
                          if c.get("name") == PROXY_CONTAINER), None)
            revision = (meta.get("annotations") or {}).get(REVISION_LABEL)
            if proxy is None or revision is None:
                continue
            key = (revision, image_version(proxy.get("image")) or "unknown")
            found.proxies[key] = found.proxies.get(key, 0) + 1
            per_ns = found.namespaces.setdefault(revision, {})
            per_ns[meta.get("namespace") or ""] = per_ns.get(meta.get("namespace") or "", 0) + 1
    return found


def read_revisions(clusters: list[Cluster], observed: dict[str, Observed], tools: Tools, runner, reporter: Reporter,
                   parallel: int) -> dict[str, Revisions]:
    """Every reachable cluster's revisions; a cluster whose read failed is left out (not judged)."""

    def read(ctx: RunContext, cluster: Cluster) -> Revisions | None:
        try:
            listed = ctx.run(tools.kubectl_cmd(cluster, "get", "mutatingwebhookconfigurations,pods", "-A", "-o", "json",
                                               check=False))
            version = ctx.run(tools.kubectl_cmd(cluster, "get", "--raw", "/version", check=False))
            if not listed.ok:
                return None
            items = json.loads(listed.stdout or "{}").get("items") or []
            version_doc = json.loads(version.stdout) if version.ok and version.stdout.strip() else None
        except (MeshError, ValueError):
            return None
        return parse_revisions(items, observed[cluster.context].deployments, version_doc)

    reachable = [c for c in clusters if (observed.get(c.context) or Observed()).reachable]
    found = read_clusters(reachable, runner, reporter, parallel, "read revisions and proxies", read)
    return {ctx: value for ctx, value in found.items() if value is not None}


def judge_revisions(results: list[ClusterStatus], revisions: dict[str, Revisions], hints: Hints) -> None:
    """Fill each cluster's ``revisions`` and add its skew problems. A remote's control planes are its
    primary's (known when the primary was read, else the versions its own injectors were installed at)."""
    by_context = {s.cluster.context: s for s in results}
    for status in results:
        seen = revisions.get(status.cluster.context)
        if seen is None:
            continue
        planes = seen.control_planes
        if status.primary:
            primary = revisions.get(status.primary)
            planes = primary.control_planes if primary is not None and primary.control_planes else seen.injectors
        status.revisions = seen.to_json(planes)
        if status.istio_installed and (status.primary is None or status.primary in by_context):
            status.problems += revision_problems(status.cluster, seen, planes, hints)


def revision_problems(cluster: Cluster, seen: Revisions, planes: dict[str, str], hints: Hints) -> list[Problem]:
    problems = []
    orphaned = sorted({r for r, _ in seen.proxies} - set(planes)) if planes else []
    for revision in orphaned:
        count = sum(n for (r, _), n in seen.proxies.items() if r == revision)
        problems.append(Problem("proxies_without_control_plane",
            f"{count} proxies in {', '.join(sorted(seen.namespaces.get(revision, ())))} run revision {revision}, "
            f"whose control plane is gone: they get no new configuration or certificates",
            _restart_hint(cluster, seen.namespaces.get(revision, ()), hints), severity=ERROR))
    for skew in proxy_skew(planes, seen.proxies):
        relation = "newer than" if skew.ahead else "more than one minor version behind"
        problems.append(Problem("proxy_skew",
            f"{skew.proxies} proxies of revision {skew.revision} run Istio {skew.proxy_version}, {relation} its "
            f"control plane ({skew.control_plane}); Istio supports a control plane at most one minor ahead",
            _restart_hint(cluster, seen.namespaces.get(skew.revision, ()), hints), severity=WARNING))
    current = seen.current(planes)
    if current is not None:
        behind = {r: {ns: n for ns, n in per_ns.items() if ns != ISTIO_NAMESPACE}
                  for r, per_ns in seen.namespaces.items() if r != current and r not in orphaned}
        for revision, namespaces in sorted(behind.items()):
            if namespaces:
                count = sum(namespaces.values())
                problems.append(Problem("proxies_on_old_revision",
                    f"{count} proxies in {', '.join(sorted(namespaces))} still run revision {revision} "
                    f"({planes.get(revision, 'unknown')}); new pods get {current} ({planes.get(current, 'unknown')})",
                    _restart_hint(cluster, namespaces, hints), severity=WARNING))
    supported = _kubernetes_problem(cluster, seen, planes)
    return problems + ([supported] if supported else [])


def _kubernetes_problem(cluster: Cluster, seen: Revisions, planes: dict[str, str]) -> Problem | None:
    kube = parse_version(seen.kubernetes or "")
    for version in sorted(set(planes.values())):
        parsed = parse_version(version)
        span = KUBERNETES_SUPPORT.get(parsed.minor_line) if parsed else None
        if kube is None or span is None or (kube.major == 1 and span[0] <= kube.minor <= span[1]):
            continue
        return Problem("kubernetes_unsupported",
                       f"Kubernetes {kube} is outside what Istio {parsed.major}.{parsed.minor} supports "
                       f"(1.{span[0]} to 1.{span[1]})",
                       f"upgrade {cluster.context}'s Kubernetes to 1.{span[0]}-1.{span[1]}, or pin an Istio "
                       "release that supports it in topology.yaml", severity=WARNING)
    return None


def _restart_hint(cluster: Cluster, namespaces, hints: Hints) -> str:
    commands = [hints.kubectl(cluster, "rollout", "restart", "deployment", "-n", ns)
                for ns in sorted(namespaces) if ns != ISTIO_NAMESPACE]
    if not commands:
        return f"{hints.apply} (moves the gateways to the current revision)"
    return "restart them onto the current revision: " + "; ".join(commands)
