"""Ambient mode: ``spec.profile: ambient`` in base.yaml makes the whole mesh sidecar-less (pure functions).

What Istio's ambient multicluster guide adds to a multi-primary mesh (beta across networks since Istio
1.29): the multi-network switch ``AMBIENT_ENABLE_MULTI_NETWORK=true`` on every istiod, the Gateway API
CRDs, and per network an east-west gateway declared as a Gateway API ``Gateway`` of class
``istio-east-west`` (HBONE on 15008) that istiod deploys itself, instead of the sidecar-mode gateway
IstioOperator and the ``cross-network-gateway``. Remote (primary-remote) clusters are not supported.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

from .config import MULTI_NETWORK_ENV
from .overlay import control_plane_revision
from .names import EASTWEST_NAME, ISTIO_NAMESPACE, NETWORK_LABEL, REVISION_LABEL

EAST_WEST_CLASS = "istio-east-west"
GATEWAY_API_VERSION = "gateway.networking.k8s.io/v1"
HBONE_PORT = 15008
def with_multi_network_switch(operator: dict[str, Any]) -> dict[str, Any]:
    """The IstioOperator with AMBIENT_ENABLE_MULTI_NETWORK=true added to istiod's env, as the guide puts it
    (components.pilot.k8s.env). base.yaml's own entries there are kept, in their order."""
    operator = copy.deepcopy(operator)
    spec = operator.setdefault("spec", {}) or {}
    operator["spec"] = spec
    components = spec.get("components") or {}
    spec["components"] = components
    pilot = components.get("pilot") or {}
    components["pilot"] = pilot
    k8s = pilot.get("k8s") or {}
    pilot["k8s"] = k8s
    env = [e for e in (k8s.get("env") or []) if not (isinstance(e, dict) and e.get("name") == MULTI_NETWORK_ENV)]
    env.append({"name": MULTI_NETWORK_ENV, "value": "true"})
    k8s["env"] = env
    return operator


def east_west_gateway(network: str, base: dict[str, Any]) -> dict[str, Any]:
    """The Gateway ``gen-eastwest-gateway.sh --network N --ambient`` prints, plus the revision label when
    base.yaml installs a revision (without a default revision no istiod would serve it)."""
    labels = {NETWORK_LABEL: network}
    revision = control_plane_revision(base)
    if revision:
        labels[REVISION_LABEL] = revision
    return {
        "apiVersion": GATEWAY_API_VERSION,
        "kind": "Gateway",
        "metadata": {"name": EASTWEST_NAME, "namespace": ISTIO_NAMESPACE, "labels": labels},
        "spec": {
            "gatewayClassName": EAST_WEST_CLASS,
            "listeners": [{
                "name": "mesh", "port": HBONE_PORT, "protocol": "HBONE",
                "tls": {"mode": "Terminate", "options": {"gateway.istio.io/tls-terminate-mode": "ISTIO_MUTUAL"}},
            }],
        },
    }


@dataclass(frozen=True)
class GatewayStatus:
    """Where Istio reports a Gateway API gateway: its status addresses and Programmed condition."""

    address: str | None
    programmed: bool
    reason: str | None = None
    message: str | None = None


def gateway_status(gateway: dict[str, Any] | None) -> GatewayStatus:
    status = (gateway or {}).get("status") or {}
    address = next((a.get("value") for a in status.get("addresses") or []
                    if isinstance(a, dict) and a.get("value")), None)
    programmed = next((c for c in status.get("conditions") or []
                       if isinstance(c, dict) and c.get("type") == "Programmed"), None)
    if programmed is None:
        # Nobody has written a status: no istiod serves the class (multi-network switch off, or no istiod
        # of the Gateway's revision).
        return GatewayStatus(address, False, "NoController", "no istiod has taken the Gateway up yet")
    return GatewayStatus(address, programmed.get("status") == "True", programmed.get("reason"),
                         programmed.get("message"))
