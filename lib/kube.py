"""kubectl and istioctl command lines for one cluster, and reading what a cluster holds."""
from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

import yaml

from .baseconfig import SIDECAR
from .config import Cluster
from .names import (APPLIED_ANNOTATION, CLUSTER_ANNOTATION, COMPONENT_LABEL, DATA_PLANE_ANNOTATION, DEFAULT_TAG_WEBHOOK,
                    EASTWEST_NAME, FIELD_MANAGER, ISTIO_NAMESPACE, MANAGED_BY_LABEL, MANAGED_GATEWAY_LABEL,
                    MULTICLUSTER_LABEL, NETWORK_LABEL, SECRET_SOURCE_ANNOTATION, is_istiod_name)
from .gatewayapi import GATEWAY_API_GROUP, GATEWAY_CRD, ClusterCrds
from .istiousage import ISTIO_SYSTEM_KINDS
from .runner import Command
from .yamlfile import load_all_data, load_data

READER_SERVICE_ACCOUNT = "istio-reader-service-account"
GATEWAY_RESOURCE = GATEWAY_CRD  # a CRD is named as its resource: the Gateway API kind, not Istio's Gateway
# Every kind Istio's CRDs define is in this category, so one `kubectl get` lists all Istio resources.
ISTIO_CATEGORY = "istio-io"
# The Istio objects setup-mesh applies in istio-system (the cross-network Gateway, istiod's Gateway and
# VirtualService). Istio's CRDs define them, so asking for them fails where the CRDs are not installed.
# Named with their version (v1, served since Istio 1.22): kubectl then maps them without weighing every
# version of every group it discovered, which costs it half as much CPU again as the rest of the read.
ISTIO_OBJECT_GROUP = "networking.istio.io"
ISTIO_OBJECT_KINDS = {"Gateway": f"gateways.v1.{ISTIO_OBJECT_GROUP}",
                      "VirtualService": f"virtualservices.v1.{ISTIO_OBJECT_GROUP}"}
READ_TIMEOUT = 30.0  # seconds one read of a cluster may take (status's reads; --timeout)


@dataclass(frozen=True)
class Tools:
    kubectl: str = "kubectl"
    istioctl: str = "istioctl"
    timeout: float = 600.0

    def _target(self, cluster: Cluster) -> list[str]:
        args = []
        if cluster.kubeconfig:
            args += ["--kubeconfig", cluster.kubeconfig]
        return args + ["--context", cluster.context]

    def kubectl_cmd(self, cluster: Cluster, *args: str, stdin: str | None = None, stdin_shown: bool = False,
                    check: bool = True, timeout: float | None = None) -> Command:
        return Command((self.kubectl, *self._target(cluster), *args), context=cluster.context, stdin=stdin,
                       stdin_shown=stdin_shown, check=check,
                       timeout=timeout or self.timeout)

    def istioctl_cmd(self, cluster: Cluster, *args: str, timeout: float | None = None) -> Command:
        return Command((self.istioctl, *args, *self._target(cluster)), context=cluster.context,
                       timeout=timeout or self.timeout)

    # --- the commands setup-mesh uses -----------------------------------------------------
    def apply(self, cluster: Cluster, manifest: str | None, shown: bool) -> Command:
        """Server-side apply: no last-applied annotation, so secret data is never copied into one."""
        return self.kubectl_cmd(cluster, "apply", "--server-side", f"--field-manager={FIELD_MANAGER}",
                                "--force-conflicts", "-f", "-", stdin=manifest, stdin_shown=shown)

    def gateway_api_crds(self, cluster: Cluster, timeout: float) -> Command:
        """The Gateway CRD's annotations (its bundle version), or nothing when the cluster has no such CRD."""
        return self.kubectl_cmd(cluster, "get", "customresourcedefinition", GATEWAY_CRD, "--ignore-not-found",
                                "-o", "jsonpath={.metadata.annotations}", timeout=timeout)

    def ztunnel(self, cluster: Cluster, namespace: str, timeout: float) -> Command:
        """ztunnel's DaemonSet where the profile puts it outside istio-system (nothing when it is not there)."""
        return self.kubectl_cmd(cluster, "get", "daemonset", "ztunnel", "-n", namespace, "--ignore-not-found",
                                "-o", "json", timeout=timeout)

    def istio_resources(self, cluster: Cluster, timeout: float) -> Command:
        return self.kubectl_cmd(cluster, "get", ISTIO_CATEGORY, "--all-namespaces", "-o", "json", check=False,
                                timeout=timeout)

    def default_tag_webhook(self, cluster: Cluster, timeout: float) -> Command:
        return self.kubectl_cmd(cluster, "get", "mutatingwebhookconfiguration", DEFAULT_TAG_WEBHOOK, "--ignore-not-found",
                                "-o", "json", timeout=timeout)

    def istio_system_objects(self, cluster: Cluster, timeout: float) -> Command:
        """What users keep in istio-system besides Istio (a gateway's TLS secret, an addon such as Kiali):
        deleting the namespace would delete them."""
        return self.kubectl_cmd(cluster, "get", ISTIO_SYSTEM_KINDS, "-n", ISTIO_NAMESPACE, "-o", "json",
                                timeout=timeout)

    def istio_deployments(self, cluster: Cluster, timeout: float) -> Command:
        return self.kubectl_cmd(cluster, "get", "deployments", "--all-namespaces", "-l", COMPONENT_LABEL, "-o", "json",
                                timeout=timeout)

    def published_roots(self, cluster: Cluster, timeout: float) -> Command:
        """The ConfigMap in which istiod publishes the root bundle it holds (nothing before istiod wrote it)."""
        return self.kubectl_cmd(cluster, "get", "configmap", CA_ROOT_CONFIGMAP, "-n", ISTIO_NAMESPACE,
                                "--ignore-not-found", "-o", "json", check=False, timeout=timeout)

    def inspect(self, cluster: Cluster, timeout: float, istio_objects: bool = False,
                published_roots: bool = False, gateway_api: bool = False) -> Command:
        # One read gives the namespace, its secrets (cacerts, remote secrets, tokens), services, deployments
        # and daemonsets (ztunnel and istio-cni in an ambient mesh); ``istio_objects``: also the Istio
        # objects setup-mesh applies there (fails where Istio's CRDs are not installed); ``published_roots``:
        # also its ConfigMaps, one of which holds the root bundle istiod publishes (CA_ROOT_CONFIGMAP);
        # ``gateway_api``: also its Gateway API Gateways, the ambient east-west one among them (only where
        # the Gateway CRD is installed).
        kinds = ["namespaces", "secrets", "services", "deployments", "daemonsets",
                 *(["configmaps"] if published_roots else ()), *(ISTIO_OBJECT_KINDS.values() if istio_objects else ()),
                 *([GATEWAY_RESOURCE] if gateway_api else ())]
        return self.kubectl_cmd(cluster, "get", ",".join(kinds), "-n", ISTIO_NAMESPACE, "-o", "json", timeout=timeout)


# istiod writes the root bundle it holds, as it holds it, into this ConfigMap of every namespace
# (pilot/pkg/serviceregistry/kube/controller/namespacecontroller.go; PILOT_CA_CERT_CONFIGMAP).
CA_ROOT_CONFIGMAP = "istio-ca-root-cert"


def parse_published_roots(output: str) -> bytes | None:
    """root-cert.pem of istio-ca-root-cert as kubectl printed it; None when there is none (yet)."""
    if not (output or "").strip():
        return None
    return published_root(json.loads(output))


def published_root(configmap: dict) -> bytes | None:
    value = (configmap.get("data") or {}).get("root-cert.pem")
    return value.encode() if isinstance(value, str) else None


def _b64(data: dict, key: str) -> bytes | None:
    value = (data or {}).get(key)
    if value is None:
        return None
    try:
        return base64.b64decode(value)
    except (ValueError, TypeError):
        return None


def gateway_addresses(observed: dict[str, "Observed"]) -> dict[str, str]:
    """Each cluster's east-west gateway address, where it has one (what a remote is pointed at)."""
    return {ctx: seen.eastwest_address for ctx, seen in observed.items() if seen.eastwest_address}


def token_fingerprint(cluster_name: str, server: str | None, token: str | bytes | None) -> str | None:
    """Identifies the credentials a remote secret carries, without keeping them."""
    if not token:
        return None
    raw = token if isinstance(token, bytes) else token.encode()
    return hashlib.sha256(b"\0".join([cluster_name.encode(), (server or "").encode(), raw])).hexdigest()[:16]


@dataclass
class RemoteSecretInfo:
    name: str
    cluster: str  # the cluster it gives access to
    source: str | None  # setup-mesh's fingerprint of its credentials
    server: str | None
    suspicious_local: bool = False
    manifest: dict | None = field(default=None, repr=False)  # a copy to apply elsewhere; holds a token


@dataclass
class Observed:
    """What one read of a cluster showed. Secret data is reduced to what is needed and then dropped."""

    reachable: bool = False
    error: str | None = None
    namespace: bool = False
    namespace_terminating: bool = False  # being deleted: what is in it now will be gone
    network_label: str | None = None
    applied: str | None = None
    annotations: dict[str, str] = field(default_factory=dict)
    cacerts: dict[str, bytes] | None = None  # public parts only: ca-cert, cert-chain, root-cert
    cacerts_labelled: bool = False  # carries setup-mesh's managed-by label
    remote_secrets: dict[str, RemoteSecretInfo] = field(default_factory=dict)  # by cluster name
    reader_token: str | None = None  # fingerprint input only; never printed
    eastwest_exists: bool = False
    eastwest_address: str | None = None
    # Who made the east-west gateway's Service: "gateway" (istiod, for an ambient Gateway) or "operator"
    # (istioctl, from the sidecar-mode gateway IstioOperator).
    eastwest_made_by: str | None = None
    # Ambient meshes only (read when base.yaml is ambient): the Gateway API CRDs and the east-west Gateway.
    gateway_api: ClusterCrds | None = None
    eastwest_gateway: dict | None = None
    deployments: dict[str, dict] = field(default_factory=dict)  # in istio-system, by name
    # Each istiod[-<revision>] Service of istio-system, by name. A primary's selects its own istiod pods, a
    # remote's selects nothing (its EndpointSlice holds its primary's address). In a remote, which runs no
    # Deployment of its own, it is the install's only trace in istio-system (its labels name the
    # IstioOperator that made it).
    istiod_services: dict[str, dict] = field(default_factory=dict)
    daemonsets: dict[str, dict] = field(default_factory=dict)  # in istio-system, by name (and ztunnel where it runs)
    namespaces: frozenset[str] | None = None  # every namespace of the cluster, when the read listed them
    # Each namespace's labels, one being deleted too (verify looks for its own namespace here); None: not listed.
    namespace_labels: dict[str, dict[str, str]] | None = None
    # (kind, name) of each networking.istio.io Gateway and VirtualService in istio-system; None: not read.
    istio_objects: frozenset[tuple[str, str]] | None = None
    # The root bundle istiod publishes in istio-system (CA_ROOT_CONFIGMAP), when the read listed ConfigMaps
    # (roots_read); None: istiod has not written it (yet).
    published_root: bytes | None = None
    roots_read: bool = False
    # The networking.istio.io Gateways of istio-system, whole, when the read listed the Istio objects.
    istio_gateways: list[dict] | None = None

    def lacks(self, objects: list[dict]) -> list[str]:
        """"Kind name" of each networking.istio.io object of ``objects`` the read found absent; none when
        they were not read."""
        if self.istio_objects is None:
            return []
        return [f"{o['kind']} {o['metadata']['name']}" for o in objects
                if o.get("apiVersion", "").split("/")[0] == ISTIO_OBJECT_GROUP
                and (o["kind"], o["metadata"]["name"]) not in self.istio_objects]

    @property
    def recorded_data_plane(self) -> str | None:
        """The data plane apply recorded on istio-system (sidecar when none is named); None before any apply."""
        return self.annotations.get(DATA_PLANE_ANNOTATION, SIDECAR) if self.applied is not None else None

    @property
    def istiod_service(self) -> bool:
        return bool(self.istiod_services)

    @property
    def istiod_selectors(self) -> dict[str, dict[str, str]]:
        """Each istiod Service's selector ({} for none)."""
        return {name: dict((item.get("spec") or {}).get("selector") or {}) for name, item in self.istiod_services.items()}


@dataclass
class _Listing:
    """What the items of one read add up to, set on Observed once all are read."""

    published_roots: bool  # the read listed ConfigMaps (Tools.inspect)
    tokens: list[tuple[str, str]] = field(default_factory=list)  # (secret name, reader token)
    objects: set[tuple[str, str]] = field(default_factory=set)  # (kind, name) of Istio objects
    gateways: list[dict] = field(default_factory=list)  # the networking.istio.io Gateways, whole
    namespaces: set[str] = field(default_factory=set)  # those not being deleted
    labels: dict[str, dict[str, str]] = field(default_factory=dict)  # each namespace's


def parse_inspect(output: str, istio_objects: bool = False, published_roots: bool = False) -> Observed:
    """``istio_objects``, ``published_roots``: what the read asked for besides (Tools.inspect). A Gateway API
    Gateway named as the ambient east-west gateway is kept whole, with the status istiod writes."""
    data = json.loads(output or "{}")
    items = data.get("items", []) if data.get("kind") == "List" else [data]
    seen = Observed(reachable=True)
    # The read lists namespaces with -n istio-system: a cluster-scoped kind is listed whole.
    listing = _Listing(published_roots)
    for item in items:
        meta = item.get("metadata") or {}
        if item.get("kind") == "Namespace":
            _read_namespace(seen, meta, listing.namespaces)
            listing.labels[meta.get("name")] = dict(meta.get("labels") or {})
        elif meta.get("namespace", ISTIO_NAMESPACE) == ISTIO_NAMESPACE:  # the read is of istio-system
            _read_object(seen, item, listing)
    seen.roots_read = published_roots
    if istio_objects:
        seen.istio_objects = frozenset(listing.objects)
        seen.istio_gateways = listing.gateways
    if listing.tokens:
        seen.reader_token = sorted(listing.tokens)[0][1]
    if data.get("kind") == "List":
        seen.namespaces = frozenset(listing.namespaces)
        seen.namespace_labels = listing.labels
    return seen


def _read_object(seen: Observed, item: dict[str, Any], listing: _Listing) -> None:
    kind, name = item.get("kind"), (item.get("metadata") or {}).get("name")
    if kind == "Secret":
        _read_secret(seen, item, listing.tokens)
    elif kind == "Service":
        _read_service(seen, item)
    elif kind == "Deployment":
        seen.deployments[name] = item
    elif kind == "DaemonSet":
        seen.daemonsets[name] = item
    elif kind == "Gateway" and item.get("apiVersion", "").startswith(GATEWAY_API_GROUP + "/"):
        if name == EASTWEST_NAME:
            seen.eastwest_gateway = item
    elif kind in ISTIO_OBJECT_KINDS and item.get("apiVersion", "").startswith(ISTIO_OBJECT_GROUP + "/"):
        listing.objects.add((kind, name))
        if kind == "Gateway":
            listing.gateways.append(item)
    elif listing.published_roots and kind == "ConfigMap" and name == CA_ROOT_CONFIGMAP:
        seen.published_root = published_root(item)


def _read_namespace(seen: Observed, meta: dict[str, Any], namespaces: set[str]) -> None:
    if not meta.get("deletionTimestamp"):  # one being deleted takes no new object
        namespaces.add(meta.get("name"))
    if meta.get("name") == ISTIO_NAMESPACE:
        seen.namespace = True
        seen.namespace_terminating = bool(meta.get("deletionTimestamp"))
        seen.network_label = (meta.get("labels") or {}).get(NETWORK_LABEL)
        seen.annotations = dict(meta.get("annotations") or {})
        seen.applied = seen.annotations.get(APPLIED_ANNOTATION)


def _read_secret(seen: Observed, item: dict[str, Any], tokens: list[tuple[str, str]]) -> None:
    """A Secret in istio-system: cacerts, a remote secret, or a token of the reader service account."""
    meta = item.get("metadata") or {}
    name = meta.get("name")
    secret_data = item.get("data") or {}
    labels = meta.get("labels") or {}
    annotations = meta.get("annotations") or {}
    if name == "cacerts":
        seen.cacerts = {k: v for k in ("ca-cert.pem", "cert-chain.pem", "root-cert.pem")
                        if (v := _b64(secret_data, k)) is not None}
        seen.cacerts_labelled = labels.get(MANAGED_BY_LABEL) == FIELD_MANAGER
    elif labels.get(MULTICLUSTER_LABEL) == "true":
        info = _remote_secret_info(name, annotations, secret_data, labels, item.get("type"))
        seen.remote_secrets[info.cluster] = info
    elif (item.get("type") == "kubernetes.io/service-account-token"
          and annotations.get("kubernetes.io/service-account.name") == READER_SERVICE_ACCOUNT):
        token = _b64(secret_data, "token")
        if token:
            tokens.append((name, token.decode(errors="replace")))


def _read_service(seen: Observed, item: dict[str, Any]) -> None:
    """A Service in istio-system: the east-west gateway's, or some revision's istiod."""
    meta = item.get("metadata") or {}
    name = meta.get("name")
    if name == EASTWEST_NAME:
        seen.eastwest_exists = True
        seen.eastwest_address = service_address(item)
        made_by_istiod = MANAGED_GATEWAY_LABEL in (meta.get("labels") or {})
        seen.eastwest_made_by = "gateway" if made_by_istiod else "operator"
    elif is_istiod_name(name):
        seen.istiod_services[name] = item


def service_address(service: dict[str, Any]) -> str | None:
    """The address Istio would use for a gateway: LoadBalancer ingress IP/hostname, else externalIPs."""
    for ingress in ((service.get("status") or {}).get("loadBalancer") or {}).get("ingress") or []:
        address = ingress.get("ip") or ingress.get("hostname")
        if address:
            return address
    external = (service.get("spec") or {}).get("externalIPs") or []
    return external[0] if external else None


def _remote_secret_info(name: str, annotations: dict, data: dict, labels: dict | None = None,
                        secret_type: str | None = None) -> RemoteSecretInfo:
    labels = labels or {}
    cluster = annotations.get(CLUSTER_ANNOTATION)
    if not cluster:
        cluster = name.removeprefix("istio-remote-secret-")
    server = None
    for key in data:
        raw = _b64(data, key)
        if raw is None:
            continue
        try:
            config = load_data(raw)
        except yaml.YAMLError:
            continue
        if isinstance(config, dict):
            for entry in config.get("clusters") or []:
                server = ((entry or {}).get("cluster") or {}).get("server") or server
    from urllib.parse import urlparse

    host = urlparse(server).hostname if server else None
    local = bool(host) and (host in ("localhost", "::1", "0.0.0.0") or host.startswith("127."))
    manifest = {
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": name, "namespace": ISTIO_NAMESPACE, "labels": dict(labels),
                     "annotations": {k: v for k, v in annotations.items() if not k.startswith("kubectl.kubernetes.io/")}},
        "type": secret_type or "Opaque",
        "data": dict(data),
    }
    return RemoteSecretInfo(name=name, cluster=cluster, source=annotations.get(SECRET_SOURCE_ANNOTATION),
                            server=server, suspicious_local=local, manifest=manifest)


def parse_remote_secret(output: str, cluster_name: str) -> tuple[dict[str, Any], str | None]:
    """The Secret that create-remote-secret printed, and the fingerprint of the token it carries."""
    docs = [d for d in load_all_data(output) if d]
    secrets = [d for d in docs if isinstance(d, dict) and d.get("kind") == "Secret"]
    if len(secrets) != 1:
        raise ValueError(f"expected one Secret from create-remote-secret, got {len(secrets)}")
    secret = secrets[0]
    token = server = None
    payload = (secret.get("stringData") or {}).get(cluster_name)
    if payload is None and cluster_name in (secret.get("data") or {}):
        payload = (_b64(secret["data"], cluster_name) or b"").decode()
    config = load_data(payload) if payload else None
    if isinstance(config, dict):
        for entry in config.get("clusters") or []:
            server = ((entry or {}).get("cluster") or {}).get("server") or server
        for entry in config.get("users") or []:
            token = ((entry or {}).get("user") or {}).get("token") or token
    meta = secret.setdefault("metadata", {})
    meta.pop("creationTimestamp", None)
    # istioctl takes the namespace from the kubeconfig context when one is set; Istio reads istio-system.
    meta["namespace"] = ISTIO_NAMESPACE
    fp = token_fingerprint(cluster_name, server, token)
    if fp:
        meta.setdefault("annotations", {})[SECRET_SOURCE_ANNOTATION] = fp
    return secret, fp

