"""Who else uses Istio in a cluster: others' Istio resources and control planes (which keep Istio's CRDs), the
default revision tag, and what others keep in istio-system (which keeps the namespace)."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Callable

from .names import (COMPONENT_LABEL, FIELD_MANAGER, ISTIO_NAMESPACE, MANAGED_BY_LABEL, MANAGED_GATEWAY_LABEL,
                    MULTICLUSTER_LABEL, OWNER_LABEL, REVISION_LABEL)


@dataclass
class IstioUsage:
    """Istio objects in a cluster that setup-mesh did not make. While any exist, Istio's CRDs stay:
    deleting a CRD deletes every resource of its kind, in every namespace."""

    resources: dict[tuple[str, str], int] = field(default_factory=dict)  # (kind, namespace) -> count
    control_planes: list[str] = field(default_factory=list)  # namespace/name of others' Istio deployments
    # The revision the `default` tag points at, when no uninstall removes the tag: `istioctl tag set` makes its
    # webhook without the operator's labels (operator/pkg/uninstall/prune.go selects by
    # operator.istio.io/component), while one the charts made from values.revisionTags goes with its install.
    default_tag: str | None = None

    # Objects in istio-system that neither setup-mesh, Istio, istiod nor Kubernetes made ("Secret my-cert"):
    # they keep the namespace (not the CRDs).
    namespace_objects: list[str] = field(default_factory=list)

    @property
    def foreign(self) -> bool:
        return bool(self.resources or self.control_planes)

    def in_namespace(self, namespace: str) -> bool:
        return any(ns == namespace for _, ns in self.resources) or any(
            cp.split("/", 1)[0] == namespace for cp in self.control_planes)

    def describe(self) -> str:
        by_kind: dict[str, list[tuple[str, int]]] = {}
        for (kind, namespace), count in sorted(self.resources.items()):
            by_kind.setdefault(kind, []).append((namespace, count))
        parts = [f"{sum(c for _, c in places)} {kind} in {', '.join(ns or '(cluster)' for ns, _ in places)}"
                 for kind, places in by_kind.items()]
        if self.control_planes:
            parts.append(f"Istio deployments installed by others: {', '.join(self.control_planes)}")
        return "; ".join(parts)


# The kinds read for others' objects in istio-system (those users put there: secrets, configuration, addons).
ISTIO_SYSTEM_KINDS = "secrets,configmaps,serviceaccounts,services,deployments,statefulsets,daemonsets"
# Made in every namespace, or by istiod: Kubernetes' root CA bundle (kube-controller-manager's root-ca-cert
# publisher) and default service account (its serviceaccounts controller), istiod's root bundle (Istio's
# namespace controller, pilot/pkg/serviceregistry/kube/controller/namespacecontroller.go) and its own CA
# when no cacerts is given (istio-ca-secret, security/pkg/pki/ca).
_MADE_IN_EVERY_NAMESPACE = {("ConfigMap", "kube-root-ca.crt"), ("ServiceAccount", "default"),
                            ("ConfigMap", "istio-ca-root-cert"), ("Secret", "istio-ca-secret")}
# Decided apart: secret cacerts is deleted with the rest, or kept with istio-system when its CA is somebody
# else's (Uninstall.foreign_cacerts), whatever its labels (earlier versions did not label it).
_DECIDED_APART = {("Secret", "cacerts")}
# Labels of what Istio's install made (operator/pkg/uninstall/prune.go selects by them), of the Deployment and
# Service istiod makes for a Gateway, and of a revision tag's webhook and Service (istioctl/pkg/tag; the
# default tag is decided apart: IstioUsage.default_tag).
_ISTIO_MADE_LABELS = (OWNER_LABEL, COMPONENT_LABEL, MANAGED_GATEWAY_LABEL, "istio.io/tag")
# A ConfigMap lock of leader election (client-go tools/leaderelection/resourcelock) carries this annotation.
_LEADER_ANNOTATION = "control-plane.alpha.kubernetes.io/leader"


def others_in_istio_system(output: str) -> list[str]:
    """"Kind name" of each object in istio-system that setup-mesh, Istio's install, istiod or Kubernetes did not
    make: setup-mesh's own carry its managed-by label (remote secrets: Istio's multiCluster label), what an
    owner made goes with its owner, and service-account tokens with their account."""
    found = []
    for item in json.loads(output or "{}").get("items") or []:
        meta = item.get("metadata") or {}
        labels, kind, name = meta.get("labels") or {}, item.get("kind") or "?", meta.get("name") or "?"
        if ((kind, name) in _MADE_IN_EVERY_NAMESPACE | _DECIDED_APART or meta.get("ownerReferences")
                or any(label in labels for label in _ISTIO_MADE_LABELS)
                or labels.get(MANAGED_BY_LABEL) == FIELD_MANAGER or labels.get(MULTICLUSTER_LABEL) == "true"
                or item.get("type") == "kubernetes.io/service-account-token"
                or _LEADER_ANNOTATION in (meta.get("annotations") or {})):
            continue
        found.append(f"{kind} {name}")
    return sorted(found)


def is_missing_category(result_stderr: str) -> bool:
    # kubectl's answer when no Istio CRD is installed: nothing of Istio's exists.
    return "doesn't have a resource type" in result_stderr


def parse_istio_usage(resources: str | None, deployments: str, ours: set[str],
                      own_resource: Callable[[dict], bool], tag_webhook: str = "") -> IstioUsage:
    """``ours``: the IstioOperator names setup-mesh installs; ``own_resource`` says which Istio
    resources setup-mesh made itself; ``tag_webhook``: the default tag's webhook as read (empty: none)."""
    usage = IstioUsage()
    tag_labels = ((json.loads(tag_webhook).get("metadata") or {}).get("labels") or {}) if tag_webhook.strip() else None
    if tag_labels is not None and COMPONENT_LABEL not in tag_labels:
        usage.default_tag = tag_labels.get(REVISION_LABEL)
    for item in (json.loads(resources).get("items") or []) if resources else []:
        if own_resource(item):
            continue
        meta = item.get("metadata") or {}
        key = (item.get("kind") or "?", meta.get("namespace") or "")
        usage.resources[key] = usage.resources.get(key, 0) + 1
    for item in json.loads(deployments or "{}").get("items") or []:
        meta = item.get("metadata") or {}
        labels = meta.get("labels") or {}
        owner = labels.get(OWNER_LABEL)
        namespace = meta.get("namespace") or ""
        # Earlier versions installed the control plane without a name: its objects have no owner (or "unknown").
        legacy_ours = namespace == ISTIO_NAMESPACE and owner in (None, "", "unknown")
        if owner not in ours and not legacy_ours:
            usage.control_planes.append(f"{namespace}/{meta.get('name')}")
    usage.control_planes.sort()
    return usage
