"""Why a call to another network does not arrive: the east-west gateways of the answering cluster's network.

Traffic for another network enters it through an east-west gateway of that network: the answering
cluster's own, or, for a remote without one, its primary's (any of them will do). A gateway without an
address is status's finding (gateway_pending, gateway_missing); which services a sidecar-mode gateway
carries is set by a Gateway in the istio-system of the cluster whose istiod configures it, which verify
reads itself. In an ambient mesh istiod learns the network gateway from the east-west Gateway of class
istio-east-west, as status reports it.
"""
from __future__ import annotations

from typing import Any

from .causes import AMBIENT_GATEWAY_DOWN, AMBIENT_GATEWAY_MISSING, GATEWAY_NO_ADDRESS, Cause, Findings
from .config import Cluster
from .kube import GATEWAY_RESOURCE
from .mesh import Mesh
from .names import CROSS_NETWORK_GATEWAY, EASTWEST_NAME, ISTIO_NAMESPACE


def gateway_causes(src: Cluster, dst: Cluster, mesh: Mesh, found: Findings, exposes_local: dict[str, bool | None],
                   hints: Any) -> list[Cause]:
    gateways = [m for m in mesh.members if m.network == dst.network and m.eastwest and found.read(m.name)]
    if not gateways:
        return []
    if hints.ambient:
        return _ambient(src, dst, gateways, found, hints)
    flaws = [(m, found.problem(m.name, GATEWAY_NO_ADDRESS)) for m in gateways]
    if all(p is not None for _, p in flaws):
        return [_no_address(dst, mesh, flaws)]
    return _cross_network(dst, mesh, [m for m, p in flaws if p is None], exposes_local, hints)


def _no_address(dst: Cluster, mesh: Mesh, flaws: list) -> Cause:
    """Every gateway of the network is one status finds missing or without an address."""
    names = " and ".join(f"{m.name}'s" for m, _ in flaws)
    own = "" if mesh.member(dst.context).eastwest else f" ({dst.name} has no gateway of its own)"
    return Cause("gateway_no_address", f"{names} east-west gateway has no address, so no cluster on another "
                                       f"network can send to {dst.network}{own}",
                 "; ".join(dict.fromkeys(p.hint for _, p in flaws)), tuple((m.context, p.code) for m, p in flaws))


def _cross_network(dst: Cluster, mesh: Mesh, with_address: list, exposes_local: dict[str, bool | None],
                   hints: Any) -> list[Cause]:
    """The gateways with an address carry no traffic from other networks when no control plane that
    configures them has a Gateway exposing *.local on 15443 (not read: not blamed)."""
    planes = [mesh.control_plane_of(m) for m in with_address]
    if not all(exposes_local.get(p.name) is False for p in planes):
        return []
    names = " and ".join(dict.fromkeys(p.name for p in planes))
    if [m.name for m in with_address] == [p.name for p in planes] == [dst.name]:
        what = "its east-west gateway takes"
    else:
        owners = ", ".join(f"{m.name}'s" for m in with_address)
        what = f"the east-west gateways it configures on {dst.network} ({owners}) take"
    return [Cause("cross_network_gateway_missing", f"{names} has no Gateway exposing *.local on port 15443 "
                                                   f"({CROSS_NETWORK_GATEWAY}), so {what} no traffic from other "
                                                   f"networks", hints.apply)]


def _ambient(src: Cluster, dst: Cluster, gateways: list, found: Findings, hints: Any) -> list[Cause]:
    """Ambient: istiod sends a call for another network to a network gateway it learns from a peer's
    Gateway of class istio-east-west labelled with that network, at the address istiod reported in the
    Gateway's status (pilot/pkg/serviceregistry/ambient/networks.go, Istio 1.30). So the Gateway must be
    there and programmed; ztunnel's own view of the service says what it was given."""
    flaws = [(m, found.problem(m.name, AMBIENT_GATEWAY_DOWN)) for m in gateways]
    if not all(p is not None for _, p in flaws):
        return []
    linked = tuple((m.context, p.code) for m, p in flaws)
    zc = (f"`istioctl ztunnel-config services --context {src.context}` shows the endpoints {src.name}'s ztunnel "
          f"has for helloworld.{hints.namespace}, `istioctl ztunnel-config workloads --context {src.context}` "
          f"the workloads (those of {dst.network} appear only behind a network gateway)")
    names = " and ".join(f"{m.name}'s" for m in gateways)
    if all(p.code in AMBIENT_GATEWAY_MISSING for _, p in flaws):
        listing = "; ".join(f"`{hints.kubectl(m.cluster, 'get', GATEWAY_RESOURCE, '-n', ISTIO_NAMESPACE)}`"
                            for m in gateways)
        return [Cause("eastwest_gateway_missing", f"{names} east-west Gateway ({EASTWEST_NAME}, class "
                                                  f"istio-east-west) is missing, so no istiod knows a network "
                                                  f"gateway for {dst.network}: no cluster on another network can "
                                                  f"send to {dst.name}",
                      f"{hints.apply} creates it again (what is there: {listing}); {zc}", linked)]
    shown = "; ".join(f"`{hints.kubectl(m.cluster, 'get', GATEWAY_RESOURCE, EASTWEST_NAME, '-n', ISTIO_NAMESPACE, '-o', 'yaml')}`"
                      for m in gateways)
    return [Cause("eastwest_gateway_not_programmed", f"{names} east-west Gateway has no address in its status (not "
                                                     f"programmed), so no istiod knows a network gateway for "
                                                     f"{dst.network}: no cluster on another network can send to "
                                                     f"{dst.name}",
                  f"see istiod's report with {shown}; without an address, check the LoadBalancer of service "
                  f"{EASTWEST_NAME}; {zc}", linked)]
