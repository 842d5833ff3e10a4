"""What istiod's Gateway API controllers do for ambient east-west gateways, for the emulated clusters.

No istiod runs in the sandbox; this plays the part of the controllers inside it that setup-mesh relies on,
acting on the objects the cluster holds, as a real istiod would:

- **the class**: an istiod with ambient on (``PILOT_ENABLE_AMBIENT=true``) and the multi-network switch
  (``AMBIENT_ENABLE_MULTI_NETWORK=true``) in its env serves the GatewayClass ``istio-east-west``
  (controller ``istio.io/eastwest-controller``) and creates it when the Gateway API CRDs are installed.
  Without the switch the class does not exist and a Gateway of that class is left alone: no status, no
  deployment. (pilot/pkg/config/kube/gatewaycommon/classinfo.go, GetBuiltinGatewayClasses. The other
  built-in classes it creates, ``istio``, ``istio-remote`` and ``istio-waypoint``, are not modelled:
  setup-mesh makes no Gateway of theirs, and only teardown's note names them.)
- **the deployment**: a Gateway of that class gets a ServiceAccount, a Deployment and a LoadBalancer
  Service named as the Gateway (the class adds no suffix), labelled ``gateway.istio.io/managed``, owned
  by the Gateway (deleted with it). An object of that name that carries no managed label was made by
  someone else and is never taken over, as in istiod.
- **the revision**: a Gateway labelled ``istio.io/rev=R`` is served by istiod revision R; an unlabelled
  one only by the default revision (``istio.io/rev=default``).
- **the status**: ``Accepted``; ``Programmed`` once the Service named as the Gateway has a LoadBalancer
  address, reported in ``status.addresses`` (``IPAddress`` or ``Hostname``), else ``AddressNotAssigned``.
"""
from __future__ import annotations

import copy
import time

try:
    from .meshmodel import NETWORK_LABEL, service_address
except ImportError:  # loaded by apiserver.py run as a script
    from meshmodel import NETWORK_LABEL, service_address

GROUP = "gateway.networking.k8s.io"
EAST_WEST_CLASS = "istio-east-west"
EAST_WEST_CONTROLLER = "istio.io/eastwest-controller"
MANAGED_LABEL = "gateway.istio.io/managed"
MANAGED_VALUE = "istio.io-eastwest-controller"
GATEWAY_NAME_LABEL = "gateway.networking.k8s.io/gateway-name"
CLASS_LABEL = "gateway.networking.k8s.io/gateway-class-name"
REV_LABEL = "istio.io/rev"


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _env(deployment: dict) -> dict[str, str]:
    for c in ((deployment.get("spec") or {}).get("template") or {}).get("spec", {}).get("containers") or []:
        if c.get("name") == "discovery":
            return {e.get("name"): e.get("value") for e in c.get("env") or [] if "value" in e}
    return {}


def east_west_istiods(cluster) -> dict[str, dict]:
    """Revision -> istiod Deployment serving the istio-east-west class."""
    out = {}
    for key, obj in cluster.objects.items():
        if key[:2] != ("apps", "deployments"):
            continue
        labels = obj["metadata"].get("labels") or {}
        if labels.get("app") != "istiod":
            continue
        env = _env(obj)
        if env.get("PILOT_ENABLE_AMBIENT") == "true" and env.get("AMBIENT_ENABLE_MULTI_NETWORK") == "true":
            out[labels.get(REV_LABEL, "default")] = obj
    return out


def watches(group: str, plural: str) -> bool:
    """Writes the controllers react to."""
    return (group, plural) in (("apps", "deployments"), ("", "services"), (GROUP, "gateways"),
                               ("apiextensions.k8s.io", "customresourcedefinitions"))


def reconcile(cluster) -> None:
    """Bring every east-west Gateway's deployment and status in line. Caller holds cluster.lock."""
    gateway_type = cluster.type_for_kind(GROUP, "Gateway")
    if gateway_type is None:
        return
    istiods = east_west_istiods(cluster)
    class_type = cluster.type_for_kind(GROUP, "GatewayClass")
    if istiods and class_type is not None:
        _ensure_class(cluster, class_type)
    for key in sorted(k for k in cluster.objects if k[:2] == (GROUP, "gateways")):
        gateway = cluster.objects.get(key)
        if gateway is None or (gateway.get("spec") or {}).get("gatewayClassName") != EAST_WEST_CLASS:
            continue
        if gateway["metadata"].get("deletionTimestamp"):
            continue
        istiod = istiods.get((gateway["metadata"].get("labels") or {}).get(REV_LABEL, "default"))
        if istiod is None:
            continue  # no control plane serves this class for that revision: the Gateway waits
        _deploy(cluster, gateway, istiod)
        _report_status(cluster, gateway_type, key)


def _ensure_class(cluster, class_type) -> None:
    """istiod creates its class if missing, and accepts it when the controller named is its own."""
    key = cluster._key(class_type, None, EAST_WEST_CLASS)
    if key not in cluster.objects:
        cluster._create(class_type, None, {
            "apiVersion": class_type.api_version, "kind": "GatewayClass",
            "metadata": {"name": EAST_WEST_CLASS},
            "spec": {"controllerName": EAST_WEST_CONTROLLER,
                     "description": "The default GatewayClass for Istio East West Gateways"}}, {})
    live = cluster.objects[key]
    if (live.get("spec") or {}).get("controllerName") != EAST_WEST_CONTROLLER:
        return
    if any(c.get("type") == "Accepted" and c.get("status") == "True"
           for c in (live.get("status") or {}).get("conditions") or []):
        return
    new = copy.deepcopy(live)
    new["status"] = {"conditions": [{"type": "Accepted", "status": "True", "reason": "Accepted",
                                     "message": "Handled by Istio controller", "lastTransitionTime": _now(),
                                     "observedGeneration": live["metadata"].get("generation", 1)}]}
    cluster._commit(class_type, key, new, "MODIFIED", live)


def _deploy(cluster, gateway: dict, istiod: dict) -> None:
    meta = gateway["metadata"]
    name, ns = meta["name"], meta["namespace"]
    istiod_env = _env(istiod)
    labels = {MANAGED_LABEL: MANAGED_VALUE, CLASS_LABEL: EAST_WEST_CLASS, GATEWAY_NAME_LABEL: name}
    for copied in (NETWORK_LABEL, REV_LABEL):
        if copied in (meta.get("labels") or {}):
            labels[copied] = meta["labels"][copied]
    network = labels.get(NETWORK_LABEL, "")
    owner = [{"apiVersion": gateway["apiVersion"], "kind": "Gateway", "name": name, "uid": meta["uid"]}]
    image = ((istiod["spec"]["template"]["spec"].get("containers") or [{}])[0].get("image") or "")
    proxy_image = image.replace("/pilot:", "/proxyv2:") if "/pilot:" in image else image
    rev = (istiod["metadata"].get("labels") or {}).get(REV_LABEL, "default")
    listener_ports = [{"name": str(lst.get("name")), "port": int(lst.get("port")), "protocol": "TCP",
                       "appProtocol": "all" if lst.get("protocol") == "HBONE" else "tcp"}
                      for lst in (gateway.get("spec") or {}).get("listeners") or []
                      if isinstance(lst, dict) and isinstance(lst.get("port"), int)]
    objects = [
        ("", "v1", "serviceaccounts", {"apiVersion": "v1", "kind": "ServiceAccount",
                                       "metadata": {"name": name, "namespace": ns, "labels": dict(labels),
                                                    "ownerReferences": copy.deepcopy(owner)}}),
        ("apps", "v1", "deployments", {
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": name, "namespace": ns, "labels": dict(labels),
                         "ownerReferences": copy.deepcopy(owner)},
            "spec": {"replicas": 1, "selector": {"matchLabels": {GATEWAY_NAME_LABEL: name}},
                     "template": {
                         "metadata": {"labels": {**labels, "istio.io/dataplane-mode": "none",
                                                 "service.istio.io/canonical-name": name,
                                                 "service.istio.io/canonical-revision": "latest",
                                                 "sidecar.istio.io/inject": "false"},
                                      "annotations": {REV_LABEL: rev}},
                         "spec": {"serviceAccountName": name, "containers": [{
                             "name": "istio-proxy", "image": proxy_image,
                             "args": ["proxy", "waypoint", "--domain", "$(POD_NAMESPACE).svc.cluster.local"],
                             "env": [{"name": "ISTIO_META_CLUSTER_ID",
                                      "value": istiod_env.get("CLUSTER_ID", "Kubernetes")},
                                     {"name": "ISTIO_META_NETWORK", "value": network}],
                             "ports": [{"containerPort": 15021, "name": "status-port", "protocol": "TCP"}]}]}}}}),
        ("", "v1", "services", {
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": ns, "labels": dict(labels),
                         "annotations": {"networking.istio.io/traffic-distribution": "PreferClose"},
                         "ownerReferences": copy.deepcopy(owner)},
            "spec": {"type": "LoadBalancer", "selector": {GATEWAY_NAME_LABEL: name},
                     "ports": [{"name": "status-port", "port": 15021, "protocol": "TCP", "appProtocol": "tcp"},
                               *listener_ports]}}),
    ]
    for group, version, plural, desired in objects:
        rt = cluster.lookup(group, version, plural)
        key = cluster._key(rt, ns, name)
        live = cluster.objects.get(key)
        if live is None:
            cluster._create(rt, ns, desired, {})
            continue
        if MANAGED_LABEL not in (live["metadata"].get("labels") or {}):
            continue  # someone else's object: istiod takes over only what carries its managed label
        updated = copy.deepcopy(live)
        updated["metadata"]["labels"] = desired["metadata"]["labels"]
        updated["metadata"]["ownerReferences"] = desired["metadata"]["ownerReferences"]
        for field in ("spec",):
            if field in desired:
                merged = dict(updated.get(field) or {})
                merged.update(desired[field])
                updated[field] = merged
        if updated != live:
            cluster._update(rt, key, live, updated, {}, None)


def _address(service: dict | None) -> dict | None:
    found = service_address(service)
    return {"type": found[0], "value": found[1]} if found else None


def _report_status(cluster, gateway_type, key) -> None:
    gateway = cluster.objects[key]
    name, ns = gateway["metadata"]["name"], gateway["metadata"]["namespace"]
    service = cluster.objects.get(("", "services", ns, name))
    address = _address(service)
    generation = gateway["metadata"].get("generation", 1)
    old_status = gateway.get("status") or {}
    old_conditions = {c.get("type"): c for c in old_status.get("conditions") or []}

    def condition(kind: str, ok: bool, reason: str, message: str) -> dict:
        previous = old_conditions.get(kind) or {}
        same = previous.get("status") == ("True" if ok else "False") and previous.get("reason") == reason
        return {"type": kind, "status": "True" if ok else "False", "reason": reason, "message": message,
                "observedGeneration": generation,
                "lastTransitionTime": previous.get("lastTransitionTime") if same else _now()}

    host = f"{name}.{ns}.svc.cluster.local"
    ports = sorted({lst.get("port") for lst in (gateway.get("spec") or {}).get("listeners") or []
                    if isinstance(lst, dict) and lst.get("port")})
    services = ", ".join(f"{host}:{port}" for port in ports) or host
    conditions = [condition("Accepted", True, "Accepted", "Resource accepted")]
    if address:
        conditions.append(condition("Programmed", True, "Programmed",
                                    f"Resource programmed, assigned to service(s) {services}"))
    else:
        conditions.append(condition("Programmed", False, "AddressNotAssigned",
                                    f"Assigned to service(s) {services}, but failed to assign to all requested "
                                    f"addresses: address pending for hostname \"{host}\""))
    status = {"conditions": conditions}
    if address:
        status["addresses"] = [address]
    listeners = [{"name": lst.get("name"), "attachedRoutes": 0, "supportedKinds": [],
                  "conditions": [condition("Programmed", True, "Programmed", "No errors found")]}
                 for lst in (gateway.get("spec") or {}).get("listeners") or [] if isinstance(lst, dict)]
    if listeners:
        status["listeners"] = listeners
    if _comparable(status) == _comparable(old_status):
        return
    new = copy.deepcopy(gateway)
    new["status"] = status
    cluster._commit(gateway_type, key, new, "MODIFIED", gateway)


def _comparable(status: dict) -> dict:
    def strip(conditions):
        return [{k: v for k, v in c.items() if k != "lastTransitionTime"} for c in conditions or []]

    out = {k: v for k, v in status.items() if k not in ("conditions", "listeners")}
    out["conditions"] = strip(status.get("conditions"))
    out["listeners"] = [{**{k: v for k, v in lst.items() if k != "conditions"}, "conditions": strip(lst.get("conditions"))}
                        for lst in status.get("listeners") or []]
    return out
