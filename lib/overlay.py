"""Pure derivation of what each cluster gets: its IstioOperator, east-west gateway and manifests.

Nothing here reads files or runs programs, so the output can be compared with golden files.
"""
from __future__ import annotations

import base64
import copy
import hashlib
import json
from typing import Any

from .baseconfig import chart_profile, enabled_components
from .config import Cluster, Topology
from .names import (CROSS_NETWORK_GATEWAY, EASTWEST_NAME, FIELD_MANAGER, ISTIO_NAMESPACE,
                    MANAGED_BY_LABEL, NETWORK_LABEL, istiod_name)

# IstioOperator names: istioctl install labels what it applies with the IstioOperator's name and prunes
# by those labels. An unnamed control plane would prune every other install of its revision, the
# east-west gateway included, so the control plane always has a name (base.yaml may choose it).
CONTROL_PLANE_IOP = "setup-mesh"
EASTWEST_IOP = "eastwest"
ISTIOD_GATEWAY = "istiod-gateway"
CACERTS_FILES = ("ca-cert.pem", "ca-key.pem", "root-cert.pem", "cert-chain.pem")


def control_plane_name(base: dict[str, Any]) -> str:
    return (base.get("metadata") or {}).get("name") or CONTROL_PLANE_IOP


def our_operators(base: dict[str, Any]) -> frozenset[str]:
    """The IstioOperator names setup-mesh installs: the control plane's (base.yaml may name it) and the gateway's."""
    return frozenset({control_plane_name(base), EASTWEST_IOP})


def cluster_operator(base: dict[str, Any], topology: Topology, cluster: Cluster) -> dict[str, Any]:
    """base.yaml with the reserved values of this cluster set, and a name; everything else unchanged."""
    operator = copy.deepcopy(base)
    metadata = operator.get("metadata") or {}
    if not metadata.get("name"):
        # metadata first, as in any manifest: the name is the first thing a reader of the overlay looks for.
        operator = {k: v for k, v in operator.items() if k in ("apiVersion", "kind")} | \
            {"metadata": {"name": CONTROL_PLANE_IOP, **metadata}} | \
            {k: v for k, v in operator.items() if k not in ("apiVersion", "kind", "metadata")}
    spec = operator.setdefault("spec", None) or {}
    operator["spec"] = spec
    values = spec.get("values") or {}
    spec["values"] = values
    global_values = values.get("global") or {}
    values["global"] = global_values
    global_values["meshID"] = topology.mesh_id
    multi = global_values.get("multiCluster") or {}
    global_values["multiCluster"] = multi
    multi["clusterName"] = cluster.name
    global_values["network"] = cluster.network
    return operator


def with_pilot_env(operator: dict[str, Any], env: dict[str, str]) -> dict[str, Any]:
    """The IstioOperator with ``env`` added to istiod's values.pilot.env; the entries already there are kept."""
    operator = copy.deepcopy(operator)
    values = operator.setdefault("spec", {}).setdefault("values", {})
    pilot = values.get("pilot") or {}
    values["pilot"] = pilot
    pilot["env"] = {**(pilot.get("env") or {}), **env}
    return operator


def external_istiod(operator: dict[str, Any]) -> dict[str, Any]:
    """A primary whose istiod also runs remotes: the guide's external-istiod setting, so that it configures
    the clusters whose istio-system names it in topology.istio.io/controlPlaneClusters."""
    operator = copy.deepcopy(operator)
    operator["spec"]["values"]["global"]["externalIstiod"] = True
    return operator


def injection_path(cluster: Cluster) -> str:
    """The sidecar injector's path for a remote: istiod reads the pod's cluster and network from it."""
    return f"/inject/cluster/{cluster.name}/net/{cluster.network}"


def remote_operator(operator: dict[str, Any], cluster: Cluster, pilot_address: str) -> dict[str, Any]:
    """A remote: the cluster's IstioOperator with the `remote` profile (no istiod; the injector webhook and
    the reader's rights), told where its primary's istiod is and which injection path is its own."""
    operator = copy.deepcopy(operator)
    spec = operator["spec"] = {"profile": "remote", **{k: v for k, v in operator["spec"].items() if k != "profile"}}
    values = spec["values"]
    if chart_profile(operator):
        # base.yaml's own values.profile (demo, say) would override the remote profile's, and the charts
        # would then render a whole istiod here instead of the remote's injector (zzz_profile.yaml).
        values["profile"] = "remote"
    values["global"]["remotePilotAddress"] = pilot_address
    values["istiodRemote"] = {**(values.get("istiodRemote") or {}), "injectionPath": injection_path(cluster)}
    return operator


def eastwest_operator(base: dict[str, Any], cluster: Cluster) -> dict[str, Any]:
    """The east-west gateway IstioOperator for the cluster's network (as gen-eastwest-gateway.sh makes it)."""
    network = cluster.network
    base_spec = base.get("spec") or {}
    spec: dict[str, Any] = {}
    # The gateway must run the same control-plane revision and images as the cluster's istiod;
    # istioctl reads the revision from spec.revision or, failing that, spec.values.revision.
    revision = control_plane_revision(base)
    if revision:
        spec["revision"] = revision
    for key in ("hub", "tag"):
        if base_spec.get(key):
            spec[key] = base_spec[key]
    spec["profile"] = "empty"
    spec["components"] = {
        "ingressGateways": [
            {
                "name": EASTWEST_NAME,
                "label": {
                    "istio": "eastwestgateway",
                    "app": EASTWEST_NAME,
                    NETWORK_LABEL: network,
                },
                "enabled": True,
                "k8s": {
                    "env": [{"name": "ISTIO_META_REQUESTED_NETWORK_VIEW", "value": network}],
                    "service": {
                        "ports": [
                            {"name": "status-port", "port": 15021, "targetPort": 15021},
                            {"name": "tls", "port": 15443, "targetPort": 15443},
                            {"name": "tls-istiod", "port": 15012, "targetPort": 15012},
                            {"name": "tls-webhook", "port": 15017, "targetPort": 15017},
                        ]
                    },
                },
            }
        ]
    }
    spec["values"] = {
        "gateways": {"istio-ingressgateway": {"injectionTemplate": "gateway"}},
        "global": {"network": network},
    }
    return {
        "apiVersion": "install.istio.io/v1alpha1",
        "kind": "IstioOperator",
        "metadata": {"name": EASTWEST_IOP},
        "spec": spec,
    }


def control_plane_istiod(operator: dict[str, Any]) -> str:
    """The name of the istiod Deployment and Service an IstioOperator installs."""
    return istiod_name(control_plane_revision(operator))


def control_plane_revision(operator: dict[str, Any]) -> str | None:
    """The revision an IstioOperator installs. istioctl copies spec.revision into the values, then merges
    the user's spec.values over them, so spec.values.revision wins when both are set."""
    spec = operator.get("spec") or {}
    values = spec.get("values") or {}
    revision = values["revision"] if values.get("revision") is not None else spec.get("revision")
    return str(revision) if revision and revision != "default" else None


def sequential_waits(operator: dict[str, Any]) -> int:
    """How many components `istioctl install` waits for one after another (at least 1). Unsure means more:
    counting too many only makes istioctl give up earlier, with its own list of what is not ready."""
    enabled = enabled_components(operator)
    return max(1, len(enabled))


def cross_network_gateway() -> dict[str, Any]:
    """The Gateway that exposes every service (*.local) on the east-west gateway's port 15443."""
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "Gateway",
        "metadata": {"name": CROSS_NETWORK_GATEWAY, "namespace": ISTIO_NAMESPACE, "labels": {MANAGED_BY_LABEL: FIELD_MANAGER}},
        "spec": {
            "selector": {"istio": "eastwestgateway"},
            "servers": [
                {
                    "port": {"number": 15443, "name": "tls", "protocol": "TLS"},
                    "tls": {"mode": "AUTO_PASSTHROUGH"},
                    "hosts": ["*.local"],
                }
            ],
        },
    }


def expose_istiod(revision: str | None) -> list[dict[str, Any]]:
    """The Gateway and VirtualService that let remotes reach istiod (xDS on 15012, the injector on 15017)
    through the east-west gateway, as samples/multicluster/expose-istiod.yaml (expose-istiod-rev.yaml.tmpl
    with a revision) makes them."""
    servers = [{"port": {"name": name, "number": port, "protocol": "tls"}, "tls": {"mode": "PASSTHROUGH"}, "hosts": ["*"]}
               for name, port in (("tls-istiod", 15012), ("tls-istiodwebhook", 15017))]
    gateway = {"apiVersion": "networking.istio.io/v1", "kind": "Gateway",
               "metadata": {"name": ISTIOD_GATEWAY, "namespace": ISTIO_NAMESPACE, "labels": {MANAGED_BY_LABEL: FIELD_MANAGER}},
               "spec": {"selector": {"istio": "eastwestgateway"}, "servers": servers}}
    service = istiod_name(revision)
    host = f"{service}.{ISTIO_NAMESPACE}.svc.cluster.local"
    sni = [f"{service}.{ISTIO_NAMESPACE}.svc", host] if revision else ["*"]
    routes = [{"match": [{"port": port, "sniHosts": list(sni)}], "route": [{"destination": {"host": host, "port": {"number": target}}}]}
              for port, target in ((15012, 15012), (15017, 443))]
    virtual_service = {"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
                       "metadata": {"name": f"istiod-vs-{revision}" if revision else "istiod-vs",
                                    "namespace": ISTIO_NAMESPACE, "labels": {MANAGED_BY_LABEL: FIELD_MANAGER}},
                       "spec": {"hosts": ["*"], "gateways": [ISTIOD_GATEWAY], "tls": routes}}
    return [gateway, virtual_service]


def namespace_manifest(cluster: Cluster) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": ISTIO_NAMESPACE, "labels": {NETWORK_LABEL: cluster.network}},
    }


def cacerts_manifest(files: dict[str, bytes]) -> dict[str, Any]:
    """Secret cacerts from the cluster's intermediate CA files (the key travels only on stdin)."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        # The label tells setup-mesh's cacerts from one somebody else put there (never replaced unasked).
        "metadata": {"name": "cacerts", "namespace": ISTIO_NAMESPACE, "labels": {MANAGED_BY_LABEL: FIELD_MANAGER}},
        "type": "Opaque",
        "data": {name: base64.b64encode(files[name]).decode() for name in CACERTS_FILES},
    }


def manifest_list(items: list[dict[str, Any]]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "List", "items": items}


def fingerprint(*parts: Any) -> str:
    """A short stable hash of JSON-able data: what was installed, to skip unchanged clusters."""
    digest = hashlib.sha256()
    for part in parts:
        digest.update(json.dumps(part, sort_keys=True, separators=(",", ":")).encode())
        digest.update(b"\0")
    return digest.hexdigest()[:16]

