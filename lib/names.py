"""The names of what setup-mesh and Istio make in a cluster, and of the labels and annotations on it.

One place for them: the manifests (lib/overlay.py, lib/plan.py) write them and the cluster reads
(lib/kube.py, lib/workspace.py, status) look for them, so both always agree.
"""
from __future__ import annotations

from typing import Any

ISTIO_NAMESPACE = "istio-system"
ZTUNNEL_DAEMONSET = "ztunnel"  # ambient's node proxy, in istio-system unless the profile says otherwise
ISTIOD = "istiod"  # the istiod Deployment and Service; istiod-<revision> with a revision
EASTWEST_NAME = "istio-eastwestgateway"
CROSS_NETWORK_GATEWAY = "cross-network-gateway"
FIELD_MANAGER = "setup-mesh"
# The `default` revision tag's webhook (`istioctl tag set default`, or the charts from values.revisionTags);
# its label istio.io/rev names the revision the tag points at.
DEFAULT_TAG_WEBHOOK = "istio-revision-tag-default"

# Istio's labels and annotations.
NETWORK_LABEL = "topology.istio.io/network"
# The revision a control plane, its injector, a gateway or a workload namespace belongs to (Istio's label
# and annotation key; absent or "default" for the default revision).
REVISION_LABEL = "istio.io/rev"
CONTROL_PLANE_CLUSTERS = "topology.istio.io/controlPlaneClusters"
MULTICLUSTER_LABEL = "istio/multiCluster"
CLUSTER_ANNOTATION = "networking.istio.io/cluster"
# On what Istio's install makes (operator/pkg/uninstall/prune.go selects by them), and on what istiod
# deploys for a Gateway API gateway.
COMPONENT_LABEL = "operator.istio.io/component"
OWNER_LABEL = "install.operator.istio.io/owning-resource"
OWNER_NAMESPACE_LABEL = "install.operator.istio.io/owning-resource-namespace"
MANAGED_GATEWAY_LABEL = "gateway.istio.io/managed"
# On the Istio resources setup-mesh makes itself, so teardown can tell them from everybody else's.
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"

# setup-mesh's annotations.
# On istio-system: the fingerprint of everything setup-mesh installed there.
APPLIED_ANNOTATION = "setup-mesh.io/applied"
# On istio-system, next to what was applied: the data-plane mode it was applied in (absent: sidecar).
DATA_PLANE_ANNOTATION = "setup-mesh.io/data-plane"
# On istio-system: the stage of a move to a new root whose cacerts the cluster holds, under which new root,
# since when.
TRANSITION_ANNOTATION = "setup-mesh.io/root-transition"
# On each remote secret: the fingerprint of the cluster it came from, so stale copies are replaced.
SECRET_SOURCE_ANNOTATION = "setup-mesh.io/source"


def istiod_name(revision: str | None) -> str:
    """The istiod Deployment and Service of a control plane revision (None: the default revision)."""
    return f"{ISTIOD}-{revision}" if revision else ISTIOD


def is_istiod_name(name: str) -> bool:
    """Whether a Deployment or Service in istio-system is some revision's istiod."""
    return name == ISTIOD or name.startswith(f"{ISTIOD}-")


def made_by_setup_mesh(item: dict[str, Any]) -> bool:
    meta = item.get("metadata") or {}
    if (meta.get("labels") or {}).get(MANAGED_BY_LABEL) == FIELD_MANAGER:
        return True
    # Earlier versions made the cross-network Gateway without the label.
    return (item.get("kind") == "Gateway" and meta.get("name") == CROSS_NETWORK_GATEWAY
            and meta.get("namespace") == ISTIO_NAMESPACE)
