"""The steps about a cluster's east-west gateway beyond its install: the Gateway API CRDs, removing a
gateway no longer wanted (or of the other mode), and waiting for its address."""
from __future__ import annotations

import json
import time
from pathlib import Path

from . import polling
from .ambient import gateway_status
from .config import Cluster
from .desired import Desired
from .errors import CommandFailed, MeshError
from .executor import Interrupted, RunContext, Step
from .gatewayapi import CrdSource, offline_crds_hint
from .kube import GATEWAY_RESOURCE, Observed, Tools, service_address
from .names import CROSS_NETWORK_GATEWAY, EASTWEST_NAME, FIELD_MANAGER, ISTIO_NAMESPACE
from .overlay import EASTWEST_IOP
from .uninstallsteps import ambient_gateway_removal, uninstall_operator

GATEWAY_POLL_SECONDS = 1.0
WAIT_KEY = "wait for the east-west gateway's address"


def gateway_api_crds_step(tools: Tools, cluster: Cluster, source: CrdSource) -> Step:
    """Server-side: the CRDs are too large for the last-applied annotation client-side apply writes. From
    a URL, a failure (no network, a proxy) says how to install them from a file instead."""
    command = tools.kubectl_cmd(cluster, "apply", "--server-side", f"--field-manager={FIELD_MANAGER}",
                                "-f", source.location)

    def action(ctx: RunContext) -> None:
        try:
            ctx.run(command)
        except CommandFailed as exc:
            if source.is_url:
                exc.hint = offline_crds_hint(source)
            raise

    return Step(f"install the Gateway API CRDs ({source.version or 'from ' + source.location})",
                commands=[command], action=action, done="Gateway API CRDs installed",
                change=f"+ Gateway API CRDs ({source.version or source.location})")


def remove_ambient_gateway_step(tools: Tools, cluster: Cluster) -> Step:
    """Back to sidecar mode: the Gateway, and what istiod deployed for it, give the name back to the
    sidecar-mode gateway (istiod's objects are deleted too, so none lingers until garbage collection)."""
    return Step(f"remove the ambient east-west gateway (Gateway {EASTWEST_NAME})",
                commands=ambient_gateway_removal(tools, cluster),
                change=f"- ambient east-west gateway (Gateway {EASTWEST_NAME})")


def _no_gateway_reason(d: Desired) -> str:
    """Why a cluster needs no east-west gateway any more, in words that are true of this mesh."""
    if d.member.is_remote:
        return "a remote on its primary's network"
    return "one network now"


def remove_gateways_step(tools: Tools, workdir: Path, d: Desired, seen: Observed) -> Step:
    """The east-west gateway and its Gateway are not needed any more (see _no_gateway_reason)."""
    commands = [tools.kubectl_cmd(d.cluster, "delete", "gateways.networking.istio.io", CROSS_NETWORK_GATEWAY,
                                  "-n", ISTIO_NAMESPACE, "--ignore-not-found")]
    files = []
    if seen.eastwest_exists:
        file, command = uninstall_operator(tools, workdir, d.cluster, EASTWEST_IOP)
        files.append(file)
        commands.append(command)
    why = _no_gateway_reason(d)
    return Step(f"remove the east-west gateway ({why})", commands=commands, files=files,
                done="east-west gateway removed",
                change=f"- east-west gateway and Gateway {CROSS_NETWORK_GATEWAY} ({why})")


def remove_sidecar_gateway_step(tools: Tools, workdir: Path, d: Desired, seen: Observed) -> Step:
    """To ambient: the sidecar-mode east-west gateway holds the name istiod's ambient gateway takes."""
    step = remove_gateways_step(tools, workdir, d, seen)
    step.title = "remove the sidecar-mode east-west gateway (ambient now)"
    step.change = f"- sidecar-mode east-west gateway and Gateway {CROSS_NETWORK_GATEWAY} (ambient now)"
    step.done = "sidecar-mode east-west gateway replaced by the ambient one"  # not "removed": another follows
    return step


def wait_gateway_step(tools: Tools, cluster: Cluster, timeout: float, ambient: bool = False) -> Step:
    """Until the east-west gateway has an address: its Service's LoadBalancer, or for an ambient Gateway
    where istiod reports it (status.addresses, once Programmed)."""
    kind = GATEWAY_RESOURCE if ambient else "service"
    command = tools.kubectl_cmd(cluster, "get", kind, EASTWEST_NAME, "-n", ISTIO_NAMESPACE, "-o", "json",
                                timeout=min(tools.timeout, 60.0))

    def action(ctx: RunContext) -> None:

        deadline = time.monotonic() + timeout
        while True:
            seen = json.loads(ctx.run(command).stdout or "{}")
            if ambient:
                reported = gateway_status(seen)
                address = reported.address if reported.programmed else None
            else:
                address = service_address(seen)
            if address:
                with ctx.lock:
                    ctx.shared.setdefault("gateway_address", {})[cluster.context] = address
                return
            if time.monotonic() >= deadline:
                if ambient:
                    raise MeshError(f"istiod has not programmed the east-west Gateway {EASTWEST_NAME} after "
                                    f"{timeout:g}s: {reported.reason}" + (f" ({reported.message})" if reported.message else ""),
                                    hint=f"see its status: {command.pasteable()} ; raise --gateway-timeout if the "
                                         f"LoadBalancer is only slow")
                raise MeshError(f"east-west gateway {EASTWEST_NAME} has no address after {timeout:g}s",
                                hint=f"check the LoadBalancer: {command.pasteable()} ; raise --gateway-timeout if it is slow")
            if ctx.cancelled.wait(polling.interval(GATEWAY_POLL_SECONDS)):
                raise Interrupted()

    return Step(WAIT_KEY, commands=[command], action=action, change="")

