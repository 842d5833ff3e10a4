"""A model of Istio's multicluster discovery for the emulated clusters (standard library only).

This is a model, not Istio's data plane: no proxy runs and no packet crosses a gateway. It decides,
from the objects the clusters hold, what a real mesh would do:

- **which peers a control plane has synced** (``istioctl remote-clusters``): cluster X's control plane
  syncs peer Y when X's ``istio-system`` holds a remote secret (label ``istio/multiCluster=true``) whose
  kubeconfig names an address X can reach and whose token Y accepts. Addresses are reachable only when
  they are one of the sandbox's API server names (``<dir>/hosts.json``: name -> loopback port); any other
  address (a loopback literal included: inside X it would be X itself) is never contacted and reports
  ``timeout``, as istiod does after ``PILOT_REMOTE_CLUSTER_TIMEOUT``.
- **which webhook a new pod goes through**: the first mutating webhook, in kube-apiserver's order, whose
  rule covers pod CREATE and whose namespace and object selectors match (the injector's four webhooks
  as Istio's chart renders them select plain pods by namespace label, and gateways rendered for
  injection by their own ``sidecar.istio.io/inject=true`` label). A webhook without ``caBundle`` is not
  trusted: the pod is refused with x509's "certificate signed by unknown authority". istiod's webhook
  patcher fills it in (``webhook_ca_bundle``): in its own cluster once it runs; in a remote once it has
  synced the remote and the remote's istio-system names it in topology.istio.io/controlPlaneClusters.
- **which istiod injects and configures a namespace's sidecars** (its *control plane*): the webhook
  that selects the namespace's plain pods calls the ``istiod[-R]`` Service of ``istio-system``; sidecars fetch their configuration from the same
  Service. A Service with a selector leads to the cluster's own istiod pods (a primary). A Service
  without one (a remote) leads where its EndpointSlice (or ``externalName``) points: to the cluster of
  the sandbox whose LoadBalancer Service holds that address (the network knows every cluster's load
  balancers), then, when that Service is an east-west gateway with ready pods, through a Gateway and
  VirtualService of that cluster's ``istio-system`` that route the port (15017 for the injector, 15012
  for configuration) to an istiod Service there: the route whose sniHosts name the called Service
  (``<name>.<ns>.svc``) most specifically wins, as Envoy picks filter chains (an exact name over "*", so
  expose-istiod-rev.yaml.tmpl's ``istiod-vs-<rev>`` takes its revision's calls from expose-istiod.yaml's
  catch-all). The control plane *runs* when a ready pod answers at the end of that path and its serving
  certificate names the Service called (istiod's names, pilot/pkg/bootstrap/server.go: ``istiod``,
  ``istiod-remote``, ``istio-pilot`` and its own ``istiod-<rev>``: a remote's revision reaching another
  revision's istiod fails TLS); it *configures* cluster X when it runs in X or has synced X (above): a primary
  cannot configure a remote whose secret it lacks.
- **what happens to a pod of the mesh**: a pod a Deployment creates is refused, as the API server
  refuses it when the injector's webhook cannot be called (``failurePolicy: Fail``), while its control
  plane does not run; the Deployment then reports ``ReplicaFailure`` with the API server's message, and
  the pod is tried again a second later. Otherwise it gets an ``istio-proxy`` container that becomes
  ready once its control plane configures its cluster (until then the pod runs but is not ready, as a
  proxy that has received no configuration is), checked again every second.
- **what a call from a pod answers**: a call from a pod in cluster X to ``<svc>.<ns>:<port>`` reaches a
  ready pod behind Service ``<svc>`` in X when the calling pod is outside the mesh (and only in X). A
  pod in the mesh gets endpoints only from its control plane, which must configure X (else its sidecar
  has no listener and the call is refused): from the control plane's own cluster and every peer it has
  synced. There, a ready pod in cluster Y answers when Y's namespace is in the mesh, the control planes
  of X and Y (whose istiods sign their workloads' certificates) hold ``cacerts`` with the same
  ``root-cert.pem``, and, when X's and Y's ``istio-system`` carry different
  ``topology.istio.io/network`` labels, one of those clusters on Y's network has an
  ``istio-eastwestgateway`` Service with an address, a Gateway exposing ``*.local`` on port 15443 in
  the ``istio-system`` of the control plane that configures that gateway, and that control plane
  knows Y (runs in Y or has synced it). Calls are spread round-robin over the endpoints. The helloworld
  app answers ``Hello version: <SERVICE_VERSION>, instance: <pod>``.

The model has no memory: a call follows what the control planes know at that moment, whether or not
their istiod still runs (a real proxy keeps the configuration it was last sent).
"""
from __future__ import annotations

import base64
import contextlib
import http.client
import json
import socket
import ssl
from dataclasses import dataclass
from urllib.parse import urlsplit

CONNECT_TIMEOUT = 2.0
ISTIO_NS = "istio-system"
NETWORK_LABEL = "topology.istio.io/network"
CONTROL_PLANE_CLUSTERS = "topology.istio.io/controlPlaneClusters"


def service_address(service: dict | None) -> tuple[str, str] | None:
    """Where istiod finds a gateway Service: its LoadBalancer's ingress (IP, else hostname), else an
    external IP. ("IPAddress" | "Hostname", value)."""
    for ingress in (((service or {}).get("status") or {}).get("loadBalancer") or {}).get("ingress") or []:
        if ingress.get("ip"):
            return "IPAddress", ingress["ip"]
        if ingress.get("hostname"):
            return "Hostname", ingress["hostname"]
    external = ((service or {}).get("spec") or {}).get("externalIPs") or []
    return ("IPAddress", external[0]) if external else None
EASTWEST = "istio-eastwestgateway"
CROSS_NETWORK_PORT = 15443
ISTIOD_PORT = 15012  # where sidecars fetch their configuration (xDS)
WEBHOOK_PORT = 15017  # where the injector's webhook is called
SERVICE_NAME_LABEL = "kubernetes.io/service-name"  # on an EndpointSlice: the Service it belongs to


def injector_name(revision: str) -> str:
    return "istio-sidecar-injector" if revision in ("", "default") else f"istio-sidecar-injector-{revision}"


def _sni_rank(patterns: list[str], sni: str) -> int | None:
    """How specifically a route's sniHosts match ``sni`` (lower wins; None: no match). Istio turns a "*"
    among sniHosts into a filter chain without server names (pilot/pkg/networking/core/listener.go, 1.30),
    and Envoy picks the filter chain whose server name matches most specifically: an exact name, then the
    longest wildcard suffix, then a chain without server names."""
    ranks = [0 if p == sni else 1 if p.startswith("*.") and sni.endswith(p[1:]) else 2 if p == "*" else None
             for p in patterns]
    found = [r for r in ranks if r is not None]
    return min(found) if found else None


def selector_matches(selector: dict | None, labels: dict) -> bool:
    """A Kubernetes label selector (matchLabels and matchExpressions); an empty or absent one matches all."""
    selector = selector or {}
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr.get("key"), expr.get("operator"), expr.get("values") or []
        present = key in labels
        if op == "In" and not (present and labels[key] in values):
            return False
        if op == "NotIn" and present and labels[key] in values:
            return False
        if op == "Exists" and not present:
            return False
        if op == "DoesNotExist" and present:
            return False
    return True


def _covers_pod_create(rules: list[dict]) -> bool:
    def has(values, want):
        return "*" in (values or []) or want in (values or [])
    return any(has(r.get("operations"), "CREATE") and has(r.get("apiGroups"), "") and has(r.get("apiVersions"), "v1")
               and has(r.get("resources"), "pods") for r in rules)


def load_hosts(path: str | None) -> dict[str, int]:
    """The sandbox's API server names and the loopback port each one stands for."""
    if not path:
        return {}
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, ValueError):
        return {}
    return {str(k).lower(): int(v) for k, v in data.items()}


class View:
    """The objects of one cluster, indexed by (group, resource, namespace, name)."""

    def __init__(self, name: str, objects: dict):
        self.name = name
        self.objects = objects

    @classmethod
    def from_dump(cls, data: dict) -> "View":
        return cls(data.get("cluster", ""), {(i["group"], i["resource"], i["namespace"], i["name"]): i["object"]
                                             for i in data.get("objects", [])})

    def get(self, group: str, resource: str, ns: str, name: str) -> dict | None:
        return self.objects.get((group, resource, ns, name))

    def items(self, group: str, resource: str, ns: str) -> list[dict]:
        return [o for k, o in sorted(self.objects.items(), key=lambda kv: kv[0]) if k[:3] == (group, resource, ns)]

    @property
    def network(self) -> str:
        ns = self.get("", "namespaces", "", ISTIO_NS) or {}
        return ((ns.get("metadata") or {}).get("labels") or {}).get(NETWORK_LABEL, "")

    @property
    def root_cert(self) -> str | None:
        secret = self.get("", "secrets", ISTIO_NS, "cacerts") or {}
        data = secret.get("data") or {}
        return data.get("root-cert.pem")

    def injector(self, ns: str, pod_labels: dict | None = None) -> tuple[dict, dict] | None:
        """(webhook configuration, webhook) of the first mutating webhook that a new pod of namespace ``ns``
        labelled ``pod_labels`` (default: none, a plain pod) goes through; None when no webhook selects it.
        kube-apiserver calls webhooks in the order of their configurations' names, each configuration's in
        order, and a webhook applies when a rule covers pod CREATE and both its namespace and object
        selectors match (staging/src/k8s.io/apiserver/pkg/admission/plugin/webhook/predicates)."""
        namespace = self.get("", "namespaces", "", ns)
        if namespace is None:
            return None
        # kube-apiserver labels every namespace with its name (the NamespaceDefaultLabelName feature)
        ns_labels = {**((namespace.get("metadata") or {}).get("labels") or {}), "kubernetes.io/metadata.name": ns}
        for config in self.items("admissionregistration.k8s.io", "mutatingwebhookconfigurations", ""):
            for hook in config.get("webhooks") or []:
                if (_covers_pod_create(hook.get("rules") or [])
                        and selector_matches(hook.get("namespaceSelector"), ns_labels)
                        and selector_matches(hook.get("objectSelector"), pod_labels or {})):
                    return config, hook
        return None

    def webhook(self, name: str) -> tuple[dict, dict] | None:
        config = self.get("admissionregistration.k8s.io", "mutatingwebhookconfigurations", "", name)
        if config is None:
            return None
        hooks = config.get("webhooks") or []
        return config, hooks[0] if hooks else {}

    def in_mesh(self, ns: str) -> bool:
        """A namespace whose plain pods get a sidecar from an injector installed in this cluster."""
        return self.injector(ns) is not None

    def load_balancers(self) -> list[tuple[str, dict]]:
        """(address, Service) for every Service that has an address outside the cluster."""
        out = []
        for (group, resource, _, _), svc in sorted(self.objects.items(), key=lambda kv: kv[0]):
            if (group, resource) == ("", "services"):
                found = service_address(svc)
                if found:
                    out.append((found[1], svc))
        return out

    def istiod_route(self, port: int, sni: str, pod_labels: list[dict]) -> tuple[str, str] | None:
        """(namespace, Service) an east-west gateway forwards TLS on ``port`` with server name ``sni`` to,
        as samples/multicluster/expose-istiod.yaml configures it: a Gateway of istio-system selecting the
        gateway's pods with a server on the port, and a VirtualService bound to it routing the port."""
        gateways = set()
        for gw in self.items("networking.istio.io", "gateways", ISTIO_NS):
            spec = gw.get("spec") or {}
            selector = spec.get("selector") or {}
            if not any(all(labels.get(k) == v for k, v in selector.items()) for labels in pod_labels):
                continue
            if any((server.get("port") or {}).get("number") == port for server in spec.get("servers") or []):
                name = gw["metadata"]["name"]
                gateways.update({name, f"{ISTIO_NS}/{name}"})
        best: tuple[int, tuple[str, str]] | None = None
        for vs in self.items("networking.istio.io", "virtualservices", ISTIO_NS):
            spec = vs.get("spec") or {}
            if not gateways & set(spec.get("gateways") or []):
                continue
            for route in spec.get("tls") or []:
                ranks = [r for m in route.get("match") or [] if m.get("port") == port
                         and (r := _sni_rank(m.get("sniHosts") or [], sni)) is not None]
                for dest in route.get("route") or [] if ranks else []:
                    host = ((dest.get("destination") or {}).get("host") or "").split(".")
                    if len(host) >= 2 and (best is None or min(ranks) < best[0]):
                        best = (min(ranks), (host[1], host[0]))
                        break
        return best[1] if best else None

    @property
    def gateway_address(self) -> str | None:
        found = service_address(self.get("", "services", ISTIO_NS, EASTWEST))
        return found[1] if found else None

    @property
    def exposes_local(self) -> bool:
        for gw in self.items("networking.istio.io", "gateways", ISTIO_NS):
            for server in (gw.get("spec") or {}).get("servers") or []:
                port = (server.get("port") or {}).get("number")
                if port == CROSS_NETWORK_PORT and "*.local" in (server.get("hosts") or []):
                    return True
        return False

    def remote_secrets(self) -> list[tuple[str, str, dict]]:
        """(secret name, cluster id, kubeconfig) for every remote secret in istio-system."""
        out = []
        for secret in self.items("", "secrets", ISTIO_NS):
            meta = secret.get("metadata") or {}
            if (meta.get("labels") or {}).get("istio/multiCluster") != "true":
                continue
            for cluster_id, b64 in sorted((secret.get("data") or {}).items()):
                try:
                    config = _parse_kubeconfig(base64.b64decode(b64).decode())
                except (ValueError, UnicodeDecodeError):
                    config = {}
                out.append((meta.get("name", ""), cluster_id, config))
        return out

    def service(self, ns: str, name: str) -> dict | None:
        return self.get("", "services", ns, name)

    def ready_pods(self, service: dict) -> list[dict]:
        selector = (service.get("spec") or {}).get("selector") or {}
        if not selector:
            return []
        ns = service["metadata"].get("namespace", "")
        found = []
        for pod in self.items("", "pods", ns):
            labels = (pod.get("metadata") or {}).get("labels") or {}
            if all(labels.get(k) == v for k, v in selector.items()) and pod_ready(pod):
                found.append(pod)
        return found


def pod_ready(pod: dict) -> bool:
    status = pod.get("status") or {}
    if (pod.get("metadata") or {}).get("deletionTimestamp"):
        return False
    return status.get("phase") == "Running" and any(
        c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or [])


def _parse_kubeconfig(text: str) -> dict:
    """Kubeconfigs in remote secrets are YAML; istioctl writes a JSON-compatible subset we can read."""
    text = text.strip()
    if text.startswith("{"):
        return json.loads(text)
    return _mini_yaml(text)


def _mini_yaml(text: str) -> dict:
    """Enough YAML for a kubeconfig (maps, lists of maps, plain and quoted scalars). Standard library only."""
    lines = [ln.rstrip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]

    def scalar(value: str):
        value = value.strip()
        if value[:1] in ("'", '"'):
            return value[1:-1] if value[0] == "'" else json.loads(value)
        if value in ("{}", "[]"):
            return {} if value == "{}" else []
        return None if value in ("null", "~", "") else value

    def block(i: int, indent: int):
        if i < len(lines) and lines[i].lstrip().startswith("- ") and len(lines[i]) - len(lines[i].lstrip()) == indent:
            items = []
            while i < len(lines) and len(lines[i]) - len(lines[i].lstrip()) == indent and lines[i].lstrip().startswith("- "):
                first = lines[i].lstrip()[2:]
                if first[:1] in ("'", '"') or (": " not in first and not first.endswith(":")):
                    items.append(scalar(first))  # a plain or quoted scalar item (e.g. a selector's values)
                    i += 1
                    continue
                # a list item that is a map: re-indent its first line as a map key
                lines[i] = " " * (indent + 2) + first
                value, i = block(i, indent + 2)
                items.append(value)
            return items, i
        out = {}
        while i < len(lines):
            line = lines[i]
            cur = len(line) - len(line.lstrip())
            if cur < indent or line.lstrip().startswith("- "):
                break
            key, _, rest = line.strip().partition(":")
            key = scalar(key) if key[:1] in ("'", '"') else key
            i += 1
            if rest.strip():
                out[key] = scalar(rest)
            elif i < len(lines):
                nxt = len(lines[i]) - len(lines[i].lstrip())
                if nxt > cur or (nxt == cur and lines[i].lstrip().startswith("- ")):
                    out[key], i = block(i, nxt)
                else:
                    out[key] = None
            else:
                out[key] = None
        return out, i

    value, _ = block(0, 0)
    return value if isinstance(value, dict) else {}


def _context(config: dict) -> tuple[dict, dict]:
    """The (cluster, user) entries of the kubeconfig's current context."""
    current = config.get("current-context")
    ctx = next((c.get("context") or {} for c in config.get("contexts") or [] if c.get("name") == current), {})
    cluster = next((c.get("cluster") or {} for c in config.get("clusters") or [] if c.get("name") == ctx.get("cluster")),
                   {})
    user = next((u.get("user") or {} for u in config.get("users") or [] if u.get("name") == ctx.get("user")), {})
    return cluster, user


class Peer:
    """What a control plane gets from one remote secret: a status and, when synced, the peer's objects."""

    def __init__(self, secret: str, cluster_id: str, status: str, reason: str, view: View | None = None):
        self.secret, self.cluster_id, self.status, self.reason, self.view = secret, cluster_id, status, reason, view


@dataclass(frozen=True)
class PeerAddress:
    """How a kubeconfig's current context is called in the sandbox: the emulator's port, the TLS context
    its certificate-authority-data (or insecure-skip-tls-verify) makes, the server name and the token."""

    server: str
    port: int
    tls: ssl.SSLContext
    sni: str
    token: str

    def get(self, path: str) -> tuple[int, bytes]:
        return _get(self.port, self.tls, self.sni, path, self.token)


def peer_address(config: dict, hosts: dict[str, int]) -> PeerAddress | None:
    """Where a remote secret's kubeconfig leads; None when its server is no name of the sandbox (never
    contacted: only the sandbox's own names lead anywhere, and only to loopback). ValueError / ssl.SSLError
    for a certificate-authority-data that does not load."""
    cluster, user = _context(config)
    server = cluster.get("server") or ""
    host = (urlsplit(server).hostname or "").lower()
    if host not in hosts:
        return None
    # As client-go (transport.TLSConfigFor): the kubeconfig's CA is the only root trusted, the system's
    # roots only where it names none.
    sc = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if cluster.get("insecure-skip-tls-verify"):
        sc.check_hostname, sc.verify_mode = False, ssl.CERT_NONE
    elif cluster.get("certificate-authority-data"):
        sc.load_verify_locations(cadata=base64.b64decode(cluster["certificate-authority-data"]).decode())
    else:
        sc = ssl.create_default_context()
    return PeerAddress(server, hosts[host], sc, cluster.get("tls-server-name") or host, user.get("token") or "")


def connect(secret: str, cluster_id: str, config: dict, hosts: dict[str, int]) -> Peer:
    server = _context(config)[0].get("server") or ""
    try:
        peer = peer_address(config, hosts)
        if peer is None:
            return Peer(secret, cluster_id, "timeout", f"{server or 'no server'} cannot be reached from this cluster")
        status, _ = peer.get("/api/v1/namespaces/kube-system")
        if status in (401, 403):
            return Peer(secret, cluster_id, "timeout", f"{server} rejects the secret's credentials (HTTP {status})")
        if status != 200:
            return Peer(secret, cluster_id, "timeout", f"{server} answered HTTP {status}")
        status, body = peer.get("/_sandbox/dump")
        if status != 200:
            return Peer(secret, cluster_id, "timeout", f"{server} answered HTTP {status}")
        return Peer(secret, cluster_id, "synced", "", View.from_dump(json.loads(body)))
    except (OSError, ssl.SSLError, ValueError, http.client.HTTPException) as exc:
        return Peer(secret, cluster_id, "timeout", f"{server}: {exc}")


def _get(port: int, sc: ssl.SSLContext, sni: str, path: str, token: str) -> tuple[int, bytes]:
    raw = socket.create_connection(("127.0.0.1", port), timeout=CONNECT_TIMEOUT)
    try:
        conn = sc.wrap_socket(raw, server_hostname=sni)
        conn.settimeout(CONNECT_TIMEOUT * 5)
        request = (f"GET {path} HTTP/1.1\r\nHost: {sni}\r\nAuthorization: Bearer {token}\r\n"
                   f"Accept: application/json\r\nConnection: close\r\n\r\n")
        conn.sendall(request.encode())
        response = http.client.HTTPResponse(conn)
        response.begin()
        return response.status, response.read()
    finally:
        raw.close()


def peers(local: View, hosts: dict[str, int]) -> list[Peer]:
    return [connect(secret, cluster_id, config, hosts) for secret, cluster_id, config in local.remote_secrets()]


# --- the network and the control planes -----------------------------------------------------------

class Network:
    """The sandbox as workloads and control planes see it: every cluster's load balancers, and what each
    control plane has synced. Read once per question (a call, a pod's admission), then kept."""

    def __init__(self, hosts: dict[str, int], views: "list[View] | None" = None):
        self.hosts = hosts
        self._views = views
        self._synced: dict[str, list[View]] = {}

    def views(self) -> list[View]:
        """Every cluster of the sandbox (fetched through its emulator's /_sandbox/dump, which is not an API
        a workload could call: the model stands in for the network here)."""
        if self._views is None:
            self._views = [v for v in (_fetch_view(port) for port in sorted(set(self.hosts.values()))) if v]
        return self._views

    def owner(self, address: str) -> tuple[View, dict] | None:
        """The cluster and Service whose load balancer answers at ``address``."""
        for view in self.views():
            for found, svc in view.load_balancers():
                if found == address:
                    return view, svc
        return None

    def synced(self, view: View) -> list[View]:
        """The peers ``view``'s control plane has synced, with their objects."""
        if view.name not in self._synced:
            self._synced[view.name] = [p.view for p in peers(view, self.hosts) if p.view is not None]
        return self._synced[view.name]

    def knows(self, plane: View, name: str) -> bool:
        """The control plane running in ``plane`` has cluster ``name`` in its registry."""
        return plane.name == name or any(v.name == name for v in self.synced(plane))


def _fetch_view(port: int) -> View | None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=CONNECT_TIMEOUT * 5)
    try:
        conn.request("GET", "/_sandbox/dump")
        response = conn.getresponse()
        body = response.read()
        return View.from_dump(json.loads(body)) if response.status == 200 else None
    except (OSError, ValueError, http.client.HTTPException):
        return None
    finally:
        conn.close()


class ControlPlane:
    """The istiod a cluster's sidecars reach through one of its istiod Services."""

    def __init__(self, view: View | None, service: str, ready: bool, problem: str, address: str = ""):
        self.view = view  # the cluster that istiod runs in (None: nothing answers where the Service leads)
        self.service = service  # its Service there
        self.ready = ready  # a ready istiod pod answers
        self.problem = problem  # why not, as a client calling it would see it ("" when ready)
        self.address = address  # where the Service leads ("" when istiod runs in the same cluster)


def istiod_service(view: View, ns: str, pod_labels: dict | None = None) -> tuple[str, str] | None:
    """(namespace, name) of the Service the injector of ``ns`` calls, which its sidecars also fetch their
    configuration from; None when the namespace is not in the mesh or the webhook calls a URL."""
    found = view.injector(ns, pod_labels)
    if found is None:
        return None
    service = ((found[1].get("clientConfig") or {}).get("service") or {})
    return (service.get("namespace") or ISTIO_NS, service["name"]) if service.get("name") else None


def leads_out(view: View, target: tuple[str, str] | None) -> bool:
    """The istiod Service has no selector: only the network can tell which istiod answers."""
    if target is None:
        return False
    svc = view.get("", "services", target[0], target[1])
    return svc is not None and not (svc.get("spec") or {}).get("selector")


def reach_istiod(view: View, target: tuple[str, str], port: int, network: Network | None) -> ControlPlane:
    """Follows istiod Service ``target`` of ``view`` to the istiod answering on ``port``."""
    ns, name = target
    svc = view.get("", "services", ns, name)
    if svc is None:
        return ControlPlane(None, name, False, f'service "{name}" not found')
    if (svc.get("spec") or {}).get("selector"):
        ready = bool(view.ready_pods(svc))
        return ControlPlane(view, name, ready, "" if ready else f'no endpoints available for service "{name}"')
    address = _service_target(view, svc)
    if not address:
        return ControlPlane(None, name, False, f'no endpoints available for service "{name}"')
    found = network.owner(address) if network is not None else None
    if found is None:
        return ControlPlane(None, name, False, f"dial tcp {address}:{port}: i/o timeout", address)
    cluster, lb = found
    gateway_pods = cluster.ready_pods(lb)
    ports = [p.get("port") for p in (lb.get("spec") or {}).get("ports") or []]
    route = cluster.istiod_route(port, f"{name}.{ns}.svc", [(p.get("metadata") or {}).get("labels") or {}
                                                             for p in gateway_pods])
    if port not in ports or not gateway_pods or route is None:
        # nothing listens there for it: no such port, no gateway pod, or no route through the gateway
        return ControlPlane(None, name, False, f"dial tcp {address}:{port}: connect: connection refused", address)
    istiod = cluster.get("", "services", route[0], route[1])
    pods = cluster.ready_pods(istiod) if istiod is not None else []
    if not pods:
        # the gateway takes the connection, finds no istiod behind it and closes it
        return ControlPlane(cluster, route[1], False, "EOF", address)
    names = istiod_dns_names(pods[0], route[0])
    if f"{name}.{ns}.svc" not in names:
        # TLS passthrough: the caller checks the name it called against the certificate istiod serves
        return ControlPlane(None, route[1], False, "tls: failed to verify certificate: x509: certificate is valid "
                                                   f"for {', '.join(names)}, not {name}.{ns}.svc", address)
    return ControlPlane(cluster, route[1], True, "", address)


def istiod_dns_names(pod: dict, ns: str) -> list[str]:
    """The names in the serving certificate an istiod pod presents (for its webhook and xDS), as
    pilot/pkg/bootstrap/server.go getDNSNames (1.30) lists them: istiod, istiod-remote and istio-pilot, and
    istiod-<rev> for a named revision, each as <name>.<namespace>.svc; sorted, as Go's x509 error lists them."""
    revision = ((pod.get("metadata") or {}).get("labels") or {}).get("istio.io/rev") or "default"
    known = ["istiod", "istiod-remote", "istio-pilot"] + ([f"istiod-{revision}"] if revision != "default" else [])
    return sorted(f"{n}.{ns}.svc" for n in known)


def _service_target(view: View, svc: dict) -> str | None:
    """Where a Service without selector leads: its EndpointSlice's first address, or its externalName."""
    spec = svc.get("spec") or {}
    if spec.get("type") == "ExternalName":
        return spec.get("externalName") or None
    meta = svc.get("metadata") or {}
    for eps in view.items("discovery.k8s.io", "endpointslices", meta.get("namespace", "")):
        if ((eps.get("metadata") or {}).get("labels") or {}).get(SERVICE_NAME_LABEL) != meta.get("name"):
            continue
        for endpoint in eps.get("endpoints") or []:
            if endpoint.get("addresses"):
                return endpoint["addresses"][0]
    return None


class Injection:
    """What a new pod of namespace ``ns`` meets: the injector's webhook answers (else ``error``, the API
    server's refusal), and whether its sidecar then gets configuration (``configured``)."""

    def __init__(self, admitted: bool, error: str, configured: bool):
        self.admitted, self.error, self.configured = admitted, error, configured


def decided_locally(view: View, ns: str, pod_labels: dict | None = None) -> bool:
    """Whether ``injection`` needs no network: the namespace's istiod runs (or is missing) in the cluster."""
    return not leads_out(view, istiod_service(view, ns, pod_labels))


def injection(view: View, ns: str, network: Network | None, pod_labels: dict | None = None) -> Injection | None:
    """None when no injector webhook selects the pod. ``network`` may be None when decided_locally."""
    found = view.injector(ns, pod_labels)
    if found is None:
        return None
    config, hook = found
    target = istiod_service(view, ns, pod_labels)
    if target is None:  # the webhook calls a URL: not modelled, it answers
        return Injection(True, "", True)
    webhook = reach_istiod(view, target, WEBHOOK_PORT, network)
    service = (hook.get("clientConfig") or {}).get("service") or {}
    url = f"https://{target[1]}.{target[0]}.svc:{service.get('port') or 443}{service.get('path') or ''}"
    refused = f'Internal error occurred: failed calling webhook "{hook.get("name") or config["metadata"]["name"]}": ' \
              f'failed to call webhook: Post "{url}?timeout=10s": '
    if not webhook.ready:
        return Injection(False, refused + webhook.problem, False)
    if not (hook.get("clientConfig") or {}).get("caBundle"):
        # No caBundle: kube-apiserver checks istiod's serving certificate against the system roots, which
        # did not sign it (k8s.io/apiserver/pkg/util/webhook; Go's crypto/tls wording). The chart leaves it
        # empty (istiodRemote.injectionCABundle); only istiod patches it in (see webhook_ca_bundle).
        return Injection(False, refused + UNKNOWN_AUTHORITY, False)
    plane = reach_istiod(view, target, ISTIOD_PORT, network)
    configured = plane.ready and (plane.view.name == view.name
                                  or (network is not None and network.knows(plane.view, view.name)))
    return Injection(True, "", configured)


UNKNOWN_AUTHORITY = "tls: failed to verify certificate: x509: certificate signed by unknown authority"
INJECTOR_APP = "sidecar-injector"  # the label app of the injector's webhook configurations


def _istiods(view: View) -> dict[str, dict]:
    """Revision -> a ready istiod pod of istio-system."""
    out = {}
    for pod in view.items("", "pods", ISTIO_NS):
        labels = (pod.get("metadata") or {}).get("labels") or {}
        if labels.get("app") == "istiod" and pod_ready(pod):
            out.setdefault(labels.get("istio.io/rev") or "default", pod)
    return out


def _istiod_env(view: View, revision: str) -> dict[str, str]:
    for deployment in view.items("apps", "deployments", ISTIO_NS):
        labels = (deployment.get("metadata") or {}).get("labels") or {}
        if labels.get("app") == "istiod" and (labels.get("istio.io/rev") or "default") == revision:
            containers = ((deployment.get("spec") or {}).get("template") or {}).get("spec", {}).get("containers") or []
            return {e.get("name"): e.get("value") for c in containers for e in c.get("env") or [] if "value" in e}
    return {}


def istiod_ca_bundle(view: View) -> str:
    """What istiod patches into webhooks: its root of trust (base64 PEM), the plugged-in root when cacerts
    holds one, else the self-signed CA istiod makes (a fixed stand-in here)."""
    return view.root_cert or base64.b64encode(b"-----BEGIN CERTIFICATE-----\nistiod self-signed CA\n"
                                              b"-----END CERTIFICATE-----\n").decode()


DEFAULT_PROXY_VERSION = "1.30.3"  # a webhook no istioctl install labelled (made by hand): the release's default


def injector_revision(view: View, config: dict) -> tuple[str, str]:
    """(revision, Istio version) of the sidecars the injector ``config`` makes. The revision is the
    configuration's istio.io/rev label (a revision tag's webhook carries its target revision's); the version
    is that revision's: istiod renders the proxy image with its own tag. It is read from the revision's own
    injector configuration, labelled operator.istio.io/version by the istioctl that installed it (also in a
    remote, whose istiod runs elsewhere), else from the revision's istiod Deployment here."""
    revision = ((config.get("metadata") or {}).get("labels") or {}).get("istio.io/rev") or "default"
    for candidate in view.items("admissionregistration.k8s.io", "mutatingwebhookconfigurations", ""):
        labels = (candidate.get("metadata") or {}).get("labels") or {}
        if labels.get("istio.io/rev") == revision and "istio.io/tag" not in labels and labels.get("operator.istio.io/version"):
            return revision, labels["operator.istio.io/version"]
    for deployment in view.items("apps", "deployments", ISTIO_NS):
        labels = (deployment.get("metadata") or {}).get("labels") or {}
        if labels.get("app") == "istiod" and (labels.get("istio.io/rev") or "default") == revision:
            containers = ((deployment.get("spec") or {}).get("template") or {}).get("spec", {}).get("containers") or []
            image = (containers[0].get("image") or "") if containers else ""
            if ":" in image.rsplit("/", 1)[-1]:
                return revision, image.rsplit(":", 1)[1]
    return revision, DEFAULT_PROXY_VERSION


def injector_configs(view: View) -> list[dict]:
    return [c for c in view.items("admissionregistration.k8s.io", "mutatingwebhookconfigurations", "")
            if ((c.get("metadata") or {}).get("labels") or {}).get("app") == INJECTOR_APP]


def lacks_ca_bundle(config: dict) -> bool:
    return any(not (h.get("clientConfig") or {}).get("caBundle") for h in config.get("webhooks") or [])


def webhook_ca_bundle(view: View, config: dict, network: "Network | None") -> str | None:
    """The caBundle istiod patches into injector configuration ``config`` of ``view``; None while no istiod
    does. Istio's webhook cert patcher (pkg/webhooks/webhookpatch.go, 1.30) patches only configurations
    labelled with its own revision. A running istiod patches those of its own cluster; a primary's istiod
    patches a remote's only once it holds the remote's secret (it has synced the cluster) and the remote's
    istio-system names it, by cluster ID or "*", in topology.istio.io/controlPlaneClusters, with
    EXTERNAL_ISTIOD on (pilot/pkg/serviceregistry/kube/controller/multicluster.go, checkShouldLead).
    ``network`` None: only the cluster's own istiod is considered."""
    revision = ((config.get("metadata") or {}).get("labels") or {}).get("istio.io/rev")
    if not revision:
        return None
    if revision in _istiods(view):
        return istiod_ca_bundle(view)
    if network is None:
        return None
    namespace = view.get("", "namespaces", "", ISTIO_NS) or {}
    named = ((namespace.get("metadata") or {}).get("annotations") or {}).get(CONTROL_PLANE_CLUSTERS)
    if not named:
        return None
    names = {n.strip() for n in named.split(",")}
    for primary in network.views():
        if primary.name == view.name or revision not in _istiods(primary):
            continue
        env = _istiod_env(primary, revision)
        if env.get("EXTERNAL_ISTIOD") != "true" or not names & {"*", env.get("CLUSTER_ID", "Kubernetes")}:
            continue
        if network.knows(primary, view.name):
            return istiod_ca_bundle(primary)
    return None


# --- calls from pods --------------------------------------------------------------------------

class Mesh:
    """The mesh as the sidecars of one cluster know it at the moment of a call: from their control plane."""

    def __init__(self, local: View, hosts: dict[str, int], network: Network | None = None):
        self.local = local
        self.network = network or Network(hosts)
        self._planes: dict = {}

    def _view(self, view: View) -> View:
        return self.local if view.name == self.local.name else view

    def control_plane(self, view: View, target: tuple[str, str] | None) -> ControlPlane | None:
        """The istiod that configures the sidecars reaching istiod Service ``target`` of ``view``."""
        if target is None:
            return None
        key = (view.name, target)
        if key not in self._planes:
            self._planes[key] = reach_istiod(view, target, ISTIOD_PORT, self.network)
        return self._planes[key]

    def registry(self, plane: ControlPlane) -> list[View]:
        """The clusters whose endpoints that control plane sends: its own and every peer it has synced."""
        out, seen = [], set()
        for view in [plane.view] + self.network.synced(plane.view):
            if view.name not in seen:
                seen.add(view.name)
                out.append(self._view(view))
        return out

    def endpoints(self, caller_ns: str, ns: str, svc_name: str) -> list[tuple[str, dict]] | None:
        """(cluster name, pod) a call reaches; None when the caller's sidecar has no configuration."""
        local_svc = self.local.service(ns, svc_name)
        if not self.local.in_mesh(caller_ns):
            return [(self.local.name, p) for p in self.local.ready_pods(local_svc)] if local_svc else []
        plane = self.control_plane(self.local, istiod_service(self.local, caller_ns))
        if plane is None or plane.view is None or not self.network.knows(plane.view, self.local.name):
            return None
        registry = self.registry(plane)
        root = plane.view.root_cert
        found = []
        for y in registry:
            svc = y.service(ns, svc_name)
            if svc is None or not y.in_mesh(ns):
                continue
            signer = self.control_plane(y, istiod_service(y, ns))
            if not root or signer is None or signer.view is None or signer.view.root_cert != root:
                continue
            if y.network != self.local.network and not self._gateway_into(y, registry):
                continue
            found.extend((y.name, p) for p in y.ready_pods(svc))
        return found

    def _gateway_into(self, y: View, registry: list[View]) -> bool:
        """A cluster of the caller's registry on Y's network whose east-west gateway has an address and is
        configured, by a control plane that knows Y, to take traffic for services (*.local on 15443)."""
        for g in sorted(registry, key=lambda v: v.name != y.name):  # Y's own gateway first: the cheapest to judge
            if g.network != y.network or not g.gateway_address:
                continue
            labels = (g.service(ISTIO_NS, EASTWEST).get("metadata") or {}).get("labels") or {}
            target = istiod_for_revision(g, labels.get("istio.io/rev", ""))
            plane = self.control_plane(g, target)
            if plane is None or plane.view is None or not plane.view.exposes_local:
                continue
            if self.network.knows(plane.view, y.name):
                return True
        return False


def istiod_for_revision(view: View, revision: str) -> tuple[str, str] | None:
    """The istiod Service the injector of ``revision`` calls (a gateway's proxies are configured by it)."""
    found = view.webhook(injector_name(revision))
    if found is None:
        return None
    service = ((found[1].get("clientConfig") or {}).get("service") or {})
    return (service.get("namespace") or ISTIO_NS, service["name"]) if service.get("name") else None


def service_version(pod: dict) -> str:
    for c in (pod.get("spec") or {}).get("containers") or []:
        for env in c.get("env") or []:
            if env.get("name") == "SERVICE_VERSION" and env.get("value"):
                return env["value"]
    image = next((c.get("image", "") for c in (pod.get("spec") or {}).get("containers") or []), "")
    name = image.rsplit("/", 1)[-1].split(":", 1)[0]
    return name.rsplit("-", 1)[-1] if "-" in name else "unknown"


def curl(mesh: "Mesh | None", local: View, pod: dict, argv: list[str], counters: dict,
         lock=None) -> tuple[int, bytes, bytes]:
    """Runs ``curl [options] URL...`` in ``pod``: (exit code, stdout, stderr). Each URL is one call.
    ``lock`` guards ``counters`` (the model itself may ask the network, so it runs outside any lock)."""
    urls, silent, show_errors = [], False, False
    args = iter(argv[1:])
    for arg in args:
        if arg in ("-m", "--max-time", "--connect-timeout"):
            next(args, None)
        elif arg.startswith("--max-time=") or arg.startswith("--connect-timeout="):
            continue
        elif arg.startswith("--"):
            if arg not in ("--silent", "--show-error", "--fail-early"):
                return 2, b"", f"curl: option {arg}: is unknown\ncurl: try 'curl --help' for more information\n".encode()
            silent |= arg == "--silent"
            show_errors |= arg == "--show-error"
        elif arg.startswith("-") and len(arg) > 1:
            if set(arg[1:]) - set("sS"):
                return 2, b"", f"curl: option {arg}: is unknown\ncurl: try 'curl --help' for more information\n".encode()
            silent |= "s" in arg
            show_errors |= "S" in arg
        else:
            urls.append(arg)
    if not urls:
        return 2, b"", b"curl: no URL specified\ncurl: try 'curl --help' for more information\n"
    caller_ns = pod["metadata"].get("namespace", "default")
    ztunnel = _ztunnel(mesh, local, pod)
    out, err, code = [], [], 0
    for url in urls:
        code, body, error = _one_call(mesh, local, caller_ns, pod["metadata"]["name"], url, counters, lock, ztunnel)
        out.append(body)
        if error and (show_errors or not silent):
            err.append(error)
    return code, b"".join(out), b"".join(err)


def _ztunnel(mesh: "Mesh | None", local: View, pod: dict):
    """The ztunnel that takes the pod's calls when ambient selects it (ambientmodel.py), else None."""
    try:
        from . import ambientmodel
    except ImportError:  # loaded by apiserver.py run as a script
        import ambientmodel
    return ambientmodel.ztunnel_for(local, pod, mesh.network) if mesh is not None else None


def _one_call(mesh, local: View, caller_ns: str, caller: str, url: str, counters: dict,
              lock=None, ztunnel=None) -> tuple[int, bytes, bytes]:
    parts = urlsplit(url if "://" in url else "http://" + url)
    host = (parts.hostname or "").lower()
    port = parts.port or 80
    labels = host.split(".")
    if len(labels) == 1:
        svc_name, ns = labels[0], caller_ns
    elif len(labels) == 2 or labels[2:] in (["svc"], ["svc", "cluster", "local"]):
        svc_name, ns = labels[0], labels[1]
    else:
        svc_name, ns = "", ""
    service = local.service(ns, svc_name) if svc_name else None
    if service is None:
        return 6, b"", f"curl: (6) Could not resolve host: {host}\n".encode()
    ports = [p.get("port") for p in (service.get("spec") or {}).get("ports") or []]
    in_mesh = local.in_mesh(caller_ns)
    if ztunnel is not None:
        endpoints = ztunnel.endpoints(ns, svc_name) if port in ports else []
    else:
        endpoints = (mesh.endpoints(caller_ns, ns, svc_name) if mesh else
                     [(local.name, p) for p in local.ready_pods(service)]) if port in ports else []
    if endpoints is None or (not endpoints and not in_mesh and ztunnel is None):
        # outside the mesh nothing listens; a sidecar (or ztunnel) without configuration takes no call either
        return 7, b"", (f"curl: (7) Failed to connect to {host} port {port} after 0 ms: "
                        f"Could not connect to server\n").encode()
    if not endpoints and ztunnel is not None:
        return 56, b"", b"curl: (56) Recv failure: Connection reset by peer\n"  # ztunnel found no workload
    if not endpoints:
        return 0, b"no healthy upstream", b""
    endpoints.sort(key=lambda e: (e[0], e[1]["metadata"]["name"]))
    key = (caller, host, port)
    with lock or contextlib.nullcontext():
        turn = counters.get(key, 0)
        counters[key] = turn + 1
    _, pod = endpoints[turn % len(endpoints)]
    if parts.path.rstrip("/") == "/hello":
        body = f"Hello version: {service_version(pod)}, instance: {pod['metadata']['name']}\n"
    elif parts.path.rstrip("/") == "/health":
        body = "Helloworld is healthy\n"
    else:
        body = "<!doctype html>\n<html lang=en>\n<title>404 Not Found</title>\n<h1>Not Found</h1>\n"
    return 0, body.encode(), b""
