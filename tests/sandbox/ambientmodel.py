"""Ambient traffic for the emulated clusters: ztunnel, global services, HBONE through east-west Gateways.

Like meshmodel.py this is a model, not Istio's data plane: no ztunnel runs and no packet crosses a gateway.
It decides, from the objects the clusters hold, what a call from a pod that ztunnel captures answers. Each
rule follows Istio 1.30.3 (paths in istio/istio at that tag):

- **capture** (manifests/charts/istio-cni/values.yaml ``ambient.enablementSelectors``, applied by
  cni/pkg/util/enablement_selector.go): a pod is in the ambient mesh when it is labelled
  ``istio.io/dataplane-mode=ambient``, or its namespace is and the pod is not labelled ``none``; a pod
  with a sidecar never is. Its traffic then goes to the node's ztunnel: the ``ztunnel`` DaemonSet of
  ``istio-system`` must be ready on the (one) node, else nothing listens where the pod's traffic is
  redirected and calls are refused. Without istio-cni's node agent (DaemonSet ``istio-cni-node``) nothing
  redirects the pod at all: it is a plain pod of its cluster.
- **ztunnel's control plane**: the istiod named by ztunnel's ``XDS_ADDRESS`` (the chart points it at
  ``istiod[-<rev>].istio-system.svc:15012``) must have a ready pod, else ztunnel has no configuration.
  That istiod gives ztunnel its own cluster's endpoints and those of every peer it has synced (a remote
  secret whose credentials the peer accepts, as in meshmodel.py).
- **service scope** (pilot/pkg/serviceregistry/ambient/services.go ``matchServiceScope`` and
  ``serviceServiceBuilder``; multicluster.go merges services): only with ``AMBIENT_ENABLE_MULTI_NETWORK``
  on istiod is the scope checked at all; a Service is GLOBAL when it and its namespace match an entry of
  the *calling* istiod's mesh config ``serviceScopeConfigs`` (the ambient profile's entry selects
  ``istio.io/global=true``, manifests/helm-profiles/ambient.yaml). A peer's Service that is not global is
  ignored, and when the caller's own Service is not global the call stays in its cluster.
- **certificates**: ztunnel's HBONE is mutual TLS with certificates each cluster's istiod signs from its
  ``cacerts``: caller, answering cluster (and the gateway in between) need the same ``root-cert.pem``.
  The answering pod must be captured too (HBONE ends at its node's ztunnel).
- **another network** (pilot/pkg/serviceregistry/ambient/networks.go ``remoteK8sGatewayToNetworkGateways``):
  the workloads of a peer whose ``istio-system`` carries another ``topology.istio.io/network`` are reached
  through a *network gateway* of that network, which istiod learns only from a *peer's* Gateway API
  ``Gateway`` (its own cluster's do not count): class ``istio-east-west``, labelled with the network, a
  listener of protocol HBONE with TLS mode Terminate, and an ``IPAddress`` or ``Hostname`` in
  ``status.addresses``. istiod reads peers' Gateways cluster-wide with the remote secret's token
  (pkg/kube/multicluster/cluster.go), so the peer must grant that token ``list`` on
  ``gateways.gateway.networking.k8s.io`` (the reader ClusterRole, checked against the peer's RBAC).
  Without such a gateway istiod drops those workloads (multicluster.go: "No network gateway found").
  The address must lead to a LoadBalancer Service of the sandbox with port 15008 and ready pods, in a
  cluster whose istiod knows the answering cluster (the gateway forwards what its istiod tells it).

A call answered by nobody is reset by ztunnel (curl exit 56); a pod whose ztunnel is missing or has no
configuration cannot connect (curl exit 7).
"""
from __future__ import annotations

import http.client
import socket
import ssl

try:
    from . import meshmodel
except ImportError:  # loaded by apiserver.py run as a script
    import meshmodel

ISTIO_NS = meshmodel.ISTIO_NS
NETWORK_LABEL = meshmodel.NETWORK_LABEL
DATAPLANE_MODE = "istio.io/dataplane-mode"
GATEWAY_GROUP = "gateway.networking.k8s.io"
EAST_WEST_CLASS = "istio-east-west"  # pkg/config/constants/constants.go EastWestGatewayClassName
HBONE_PORT = 15008
AMBIENT_ENV = "PILOT_ENABLE_AMBIENT"
MULTI_NETWORK_ENV = "AMBIENT_ENABLE_MULTI_NETWORK"


# --- a cluster's own ambient parts ----------------------------------------------------------------

def _labels(obj: dict | None) -> dict:
    return ((obj or {}).get("metadata") or {}).get("labels") or {}


def daemonset(view: meshmodel.View, name: str) -> dict | None:
    """The DaemonSet of that name in istio-system, else in any namespace (a component's ``namespace`` may
    put istio-cni or ztunnel elsewhere, e.g. kube-system)."""
    found = view.get("apps", "daemonsets", ISTIO_NS, name)
    if found is None:
        found = next((o for (g, r, _, n), o in sorted(view.objects.items(), key=lambda kv: kv[0])
                      if (g, r, n) == ("apps", "daemonsets", name)), None)
    return found


def daemonset_ready(view: meshmodel.View, name: str) -> bool:
    status = (daemonset(view, name) or {}).get("status") or {}
    desired = status.get("desiredNumberScheduled") or 0
    return desired > 0 and (status.get("numberReady") or 0) >= desired


def selected(view: meshmodel.View, pod: dict) -> bool:
    """istio-cni's default enablement selectors: the pod's or its namespace's dataplane-mode label. Without
    istio-cni's node agent nothing redirects the pod: the label alone does nothing."""
    if daemonset(view, "istio-cni-node") is None:
        return False
    pod_mode = _labels(pod).get(DATAPLANE_MODE)
    ns_mode = _labels(view.get("", "namespaces", "", pod["metadata"].get("namespace", ""))).get(DATAPLANE_MODE)
    containers = [c.get("name") for c in (pod.get("spec") or {}).get("containers") or []]
    annotations = (pod.get("metadata") or {}).get("annotations") or {}
    if "istio-proxy" in containers or annotations.get("sidecar.istio.io/status"):
        return False  # ztunnel and a sidecar for one pod is not supported: opted out
    return pod_mode == "ambient" or (ns_mode == "ambient" and pod_mode != "none")


def captured(view: meshmodel.View, pod: dict) -> bool:
    """Selected for ambient, and the node's ztunnel is there to take its traffic."""
    return selected(view, pod) and daemonset_ready(view, "ztunnel")


class Istiod:
    """The istiod ztunnel of a cluster fetches its configuration from."""

    def __init__(self, view: meshmodel.View):
        self.view = view
        self.service = self._xds_service()
        svc = view.service(ISTIO_NS, self.service) if self.service else None
        self.ready = bool(svc and (svc.get("spec") or {}).get("selector") and view.ready_pods(svc))
        env = self._env()
        self.ambient = env.get(AMBIENT_ENV) == "true"
        self.multi_network = env.get(MULTI_NETWORK_ENV) == "true"
        self.scope_configs = self._scope_configs()

    def _xds_service(self) -> str | None:
        ds = daemonset(self.view, "ztunnel") or {}
        for c in (((ds.get("spec") or {}).get("template") or {}).get("spec") or {}).get("containers") or []:
            for e in c.get("env") or []:
                if e.get("name") == "XDS_ADDRESS" and e.get("value"):
                    return e["value"].split(".", 1)[0]
        return None

    def _env(self) -> dict:
        deployment = self.view.get("apps", "deployments", ISTIO_NS, self.service or "") or {}
        for c in (((deployment.get("spec") or {}).get("template") or {}).get("spec") or {}).get("containers") or []:
            if c.get("name") == "discovery":
                return {e.get("name"): e.get("value") for e in c.get("env") or []}
        return {}

    def _scope_configs(self) -> list:
        # the mesh config of the istiod's revision: ConfigMap istio (istiod) or istio-<rev> (istiod-<rev>)
        name = "istio" + (self.service or "istiod")[len("istiod"):]
        data = (self.view.get("", "configmaps", ISTIO_NS, name) or {}).get("data") or {}
        try:
            mesh = meshmodel._mini_yaml(data.get("mesh") or "")
        except (ValueError, IndexError):
            mesh = {}
        return mesh.get("serviceScopeConfigs") or []

    def is_global(self, view: meshmodel.View, service: dict) -> bool:
        """The Service (held in ``view``) matches one of this istiod's GLOBAL serviceScopeConfigs."""
        ns_labels = _labels(view.get("", "namespaces", "", service["metadata"].get("namespace", "")))
        for config in self.scope_configs:
            if not isinstance(config, dict) or config.get("scope") != "GLOBAL":
                continue
            if label_selector_matches(config.get("namespaceSelector"), ns_labels) and \
                    label_selector_matches(config.get("servicesSelector"), _labels(service)):
                return True
        return False


def label_selector_matches(selector: dict | None, labels: dict) -> bool:
    """A metav1.LabelSelector; an empty or missing one selects everything (as matchServiceScope treats it)."""
    selector = selector or {}
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr.get("key"), expr.get("operator"), [str(v) for v in expr.get("values") or []]
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and key in labels and labels[key] in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def same_root(a: meshmodel.View, b: meshmodel.View) -> bool:
    return bool(a.root_cert) and a.root_cert == b.root_cert


# --- peers, as istiod reads them with the remote secrets' tokens -------------------------------------

def _peer_get(config: dict, hosts: dict[str, int], path: str) -> int:
    """HTTP status of a GET on the peer with the secret's credentials (0: not reachable)."""
    try:
        peer = meshmodel.peer_address(config, hosts)
        return peer.get(path)[0] if peer is not None else 0
    except (OSError, ssl.SSLError, ValueError, http.client.HTTPException, socket.timeout):
        return 0


class Peer:
    def __init__(self, view: meshmodel.View, reads_gateways: bool):
        self.view, self.reads_gateways = view, reads_gateways


def synced_peers(local: meshmodel.View, hosts: dict[str, int]) -> list[Peer]:
    """The peers local's istiod has synced, and whether the token lets it list their Gateways."""
    configs = {(secret, cluster_id): config for secret, cluster_id, config in local.remote_secrets()}
    out = []
    for peer in meshmodel.peers(local, hosts):
        if peer.view is None:
            continue
        config = configs.get((peer.secret, peer.cluster_id)) or {}
        status = _peer_get(config, hosts, f"/apis/{GATEWAY_GROUP}/v1/gateways?limit=1")
        out.append(Peer(peer.view, status == 200))
    return out


def network_gateways(peer: Peer, network: str) -> list[str]:
    """Addresses of the network gateways istiod derives from a peer's Gateways for ``network``."""
    if not peer.reads_gateways:
        return []
    found = []
    for (group, resource, _, _), gw in sorted(peer.view.objects.items(), key=lambda kv: kv[0]):
        if (group, resource) != (GATEWAY_GROUP, "gateways") or _labels(gw).get(NETWORK_LABEL) != network:
            continue
        spec = gw.get("spec") or {}
        if spec.get("gatewayClassName") != EAST_WEST_CLASS:
            continue
        if not any(lst.get("protocol") == "HBONE" and (lst.get("tls") or {}).get("mode") == "Terminate"
                   for lst in spec.get("listeners") or [] if isinstance(lst, dict)):
            continue
        found += [a["value"] for a in (gw.get("status") or {}).get("addresses") or []
                  if isinstance(a, dict) and a.get("type") in ("IPAddress", "Hostname") and a.get("value")]
    return found


# --- a call from a captured pod --------------------------------------------------------------------

class Ztunnel:
    """What the ztunnel of ``local`` does with a call from a pod it captures."""

    def __init__(self, local: meshmodel.View, network: meshmodel.Network):
        self.local, self.network = local, network
        self._peers: list[Peer] | None = None

    def peers(self) -> list[Peer]:
        if self._peers is None:
            self._peers = synced_peers(self.local, self.network.hosts)
        return self._peers

    def endpoints(self, ns: str, svc_name: str) -> list[tuple[str, dict]] | None:
        """(cluster name, pod) the call may reach; None when ztunnel cannot take the call at all."""
        local = self.local
        if not daemonset_ready(local, "ztunnel"):
            return None
        istiod = Istiod(local)
        if not istiod.ready or not istiod.ambient:
            return None
        service = local.service(ns, svc_name)
        if service is None:
            return []
        found = [(local.name, p) for p in local.ready_pods(service)]
        if not istiod.multi_network or not istiod.is_global(local, service):
            return found  # a local service: never merged with peers' (multicluster.go)
        for peer in self.peers():
            y = peer.view
            theirs = y.service(ns, svc_name)
            if theirs is None or not istiod.is_global(y, theirs) or not same_root(local, y):
                continue
            pods = [p for p in y.ready_pods(theirs) if captured(y, p)]
            if pods and (y.network == local.network or self._gateway_into(y)):
                found += [(y.name, p) for p in pods]
        return found

    def _gateway_into(self, y: meshmodel.View) -> bool:
        """A network gateway of Y's network, learnt from a peer's Gateway, that carries HBONE on to Y."""
        for peer in self.peers():
            for address in network_gateways(peer, y.network):
                owner = self.network.owner(address)
                if owner is None:
                    continue
                gateway_cluster, lb = owner
                ports = [p.get("port") for p in (lb.get("spec") or {}).get("ports") or []]
                if HBONE_PORT not in ports or not gateway_cluster.ready_pods(lb):
                    continue
                if not same_root(self.local, gateway_cluster) or not Istiod(gateway_cluster).ready:
                    continue
                if self.network.knows(gateway_cluster, y.name):
                    return True
        return False


def ztunnel_for(local: meshmodel.View, pod: dict, network: meshmodel.Network) -> Ztunnel | None:
    """The ztunnel taking the pod's calls, or None when the pod is not selected for ambient."""
    return Ztunnel(local, network) if selected(local, pod) else None
