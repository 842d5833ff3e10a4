"""A model of Istio's multicluster discovery for the emulated clusters (standard library only).

This is a model, not Istio's data plane: no proxy runs and no packet crosses a gateway. It decides,
from the objects the clusters hold, what a real mesh would do:

- **which peers a control plane has synced** (``istioctl remote-clusters``): cluster X's control plane
  syncs peer Y when X's ``istio-system`` holds a remote secret (label ``istio/multiCluster=true``) whose
  kubeconfig names an address X can reach and whose token Y accepts. Addresses are reachable only when
  they are one of the sandbox's API server names (``<dir>/hosts.json``: name -> loopback port); any other
  address (a loopback literal included: inside X it would be X itself) is never contacted and reports
  ``timeout``, as istiod does after ``PILOT_REMOTE_CLUSTER_TIMEOUT``.
- **what a call from a pod answers**: a call from a pod in cluster X to ``<svc>.<ns>:<port>`` reaches a
  ready pod in cluster Y behind Service ``<svc>`` when Y is X; or when the calling pod and the answering
  pod are both in the mesh (their namespaces select a sidecar injector installed in their cluster:
  ``istio-injection=enabled`` -> ``istio-sidecar-injector``, ``istio.io/rev=R`` ->
  ``istio-sidecar-injector-R``), X has synced Y (above), both clusters' ``cacerts`` carry the same
  ``root-cert.pem``, and, when the clusters' ``istio-system`` namespaces carry different
  ``topology.istio.io/network`` labels, Y's ``istio-eastwestgateway`` Service has an address and a Gateway
  in Y's ``istio-system`` exposes ``*.local`` on port 15443. Calls are spread round-robin over the
  endpoints. The helloworld app answers ``Hello version: <SERVICE_VERSION>, instance: <pod>``.
"""
from __future__ import annotations

import base64
import http.client
import json
import socket
import ssl
from urllib.parse import urlsplit

CONNECT_TIMEOUT = 2.0
ISTIO_NS = "istio-system"
NETWORK_LABEL = "topology.istio.io/network"


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

    def in_mesh(self, ns: str) -> bool:
        """A namespace whose pods get a sidecar from an injector installed in this cluster."""
        labels = ((self.get("", "namespaces", "", ns) or {}).get("metadata") or {}).get("labels") or {}
        if labels.get("istio-injection") == "enabled":
            webhook = "istio-sidecar-injector"
        elif labels.get("istio.io/rev") and "istio-injection" not in labels:
            rev = labels["istio.io/rev"]
            webhook = "istio-sidecar-injector" if rev == "default" else f"istio-sidecar-injector-{rev}"
        else:
            return False
        return self.get("admissionregistration.k8s.io", "mutatingwebhookconfigurations", "", webhook) is not None

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
                # a list item: re-indent its first line as a map key
                first = lines[i].lstrip()[2:]
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


def connect(secret: str, cluster_id: str, config: dict, hosts: dict[str, int]) -> Peer:
    cluster, user = _context(config)
    server = cluster.get("server") or ""
    host = (urlsplit(server).hostname or "").lower()
    if host not in hosts:
        # Never contacted: only the sandbox's own names lead anywhere (and only to loopback).
        return Peer(secret, cluster_id, "timeout", f"{server or 'no server'} cannot be reached from this cluster")
    port = hosts[host]
    try:
        sc = ssl.create_default_context()
        if cluster.get("insecure-skip-tls-verify"):
            sc.check_hostname, sc.verify_mode = False, ssl.CERT_NONE
        elif cluster.get("certificate-authority-data"):
            sc.load_verify_locations(cadata=base64.b64decode(cluster["certificate-authority-data"]).decode())
        sni = cluster.get("tls-server-name") or host
        token = user.get("token") or ""
        status, _ = _get(port, sc, sni, "/api/v1/namespaces/kube-system", token)
        if status in (401, 403):
            return Peer(secret, cluster_id, "timeout", f"{server} rejects the secret's credentials (HTTP {status})")
        if status != 200:
            return Peer(secret, cluster_id, "timeout", f"{server} answered HTTP {status}")
        status, body = _get(port, sc, sni, "/_sandbox/dump", token)
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


# --- calls from pods --------------------------------------------------------------------------

class Mesh:
    """One cluster's view of the mesh at the moment of a call: itself plus the peers it has synced."""

    def __init__(self, local: View, hosts: dict[str, int]):
        self.local = local
        self.peers = [p for p in peers(local, hosts) if p.view is not None]

    def endpoints(self, caller_ns: str, ns: str, svc_name: str) -> list[tuple[str, dict]]:
        local_svc = self.local.service(ns, svc_name)
        found = [(self.local.name, p) for p in self.local.ready_pods(local_svc)] if local_svc else []
        if not self.local.in_mesh(caller_ns):
            return found
        seen = {self.local.name}
        for peer in self.peers:
            y = peer.view
            if y.name in seen:
                continue
            seen.add(y.name)
            svc = y.service(ns, svc_name)
            if svc is None or not y.in_mesh(ns):
                continue
            if not self.local.root_cert or self.local.root_cert != y.root_cert:
                continue
            if self.local.network != y.network and not (y.gateway_address and y.exposes_local):
                continue
            found.extend((y.name, p) for p in y.ready_pods(svc))
        return found


def service_version(pod: dict) -> str:
    for c in (pod.get("spec") or {}).get("containers") or []:
        for env in c.get("env") or []:
            if env.get("name") == "SERVICE_VERSION" and env.get("value"):
                return env["value"]
    image = next((c.get("image", "") for c in (pod.get("spec") or {}).get("containers") or []), "")
    name = image.rsplit("/", 1)[-1].split(":", 1)[0]
    return name.rsplit("-", 1)[-1] if "-" in name else "unknown"


def curl(mesh: "Mesh | None", local: View, pod: dict, argv: list[str], counters: dict) -> tuple[int, bytes, bytes]:
    """Runs ``curl [options] URL...`` in ``pod``: (exit code, stdout, stderr). Each URL is one call."""
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
    out, err, code = [], [], 0
    for url in urls:
        code, body, error = _one_call(mesh, local, caller_ns, pod["metadata"]["name"], url, counters)
        out.append(body)
        if error and (show_errors or not silent):
            err.append(error)
    return code, b"".join(out), b"".join(err)


def _one_call(mesh, local: View, caller_ns: str, caller: str, url: str, counters: dict) -> tuple[int, bytes, bytes]:
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
    endpoints = (mesh.endpoints(caller_ns, ns, svc_name) if mesh else
                 [(local.name, p) for p in local.ready_pods(service)]) if port in ports else []
    if not endpoints:
        if in_mesh:
            return 0, b"no healthy upstream", b""
        return 7, b"", (f"curl: (7) Failed to connect to {host} port {port} after 0 ms: "
                        f"Could not connect to server\n").encode()
    endpoints.sort(key=lambda e: (e[0], e[1]["metadata"]["name"]))
    key = (caller, host, port)
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
