"""From what should be (topology, base.yaml) and what is (one read per cluster) to a plan of steps.

Building the plan runs nothing; the same plan is printed by --dry-run and run by apply.
"""
from __future__ import annotations

import copy
import json
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Mapping

import yaml

from . import carotation, certs, invocation
from .assess import (CacertsFinding, CacertsState, GatewayFinding, GatewayState, InstallState, LabelState, assess_cacerts,
                     assess_gateway, assess_install, assess_namespace, assess_secrets, assess_wiring,
                     controlled_before, issued_credentials, overlay_changes, WiringFinding)
from .mesh import mesh_model
from . import polling
from .config import AMBIENT, SIDECAR, Cluster, Topology
from .errors import CommandFailed, MeshError
from .ambient import gateway_status
from .desired import Desired
from .executor import RERUN_HINT, After, Interrupted, Phase, RunContext, Step
from .fsutil import read_if_present
from .gatewayapi import CrdSource, offline_crds_hint
from .kube import (COMPONENT_LABEL, GATEWAY_RESOURCE, MANAGED_GATEWAY_LABEL, OWNER_LABEL, OWNER_NAMESPACE_LABEL, IstioUsage,
                   Observed, Tools, parse_remote_secret, service_address)
from .carotation import Transition
from .overlay import (EASTWEST_IOP, cacerts_manifest, control_plane_istiod, control_plane_revision, expose_istiod,
                      manifest_list, namespace_manifest, sequential_waits)
from .names import (APPLIED_ANNOTATION, CONTROL_PLANE_CLUSTERS, CROSS_NETWORK_GATEWAY, DATA_PLANE_ANNOTATION,
                    EASTWEST_NAME, FIELD_MANAGER, ISTIO_NAMESPACE, MANAGED_BY_LABEL, TRANSITION_ANNOTATION)
from .release import Release
from .runner import Command
from .yamlfile import dump

OVERLAY_DIR = "overlays"
UNINSTALL_DIR = Path(".setup-mesh") / "uninstall"
GATEWAY_POLL_SECONDS = 1.0
RECORD_TITLE = "record what was applied"
EXPORT_KEY = "export its remote secret"
WAIT_KEY = "wait for the east-west gateway's address"
IMPORT_KEY = "import remote secrets"


def overlay_path(workdir: Path, cluster: Cluster) -> Path:
    return workdir / OVERLAY_DIR / f"{cluster.name}.yaml"


def eastwest_path(workdir: Path, cluster: Cluster) -> Path:
    return workdir / OVERLAY_DIR / f"{cluster.name}-eastwest.yaml"


@dataclass
class Removal:
    context: str
    cluster_name: str
    kubeconfig: str | None
    reachable: bool
    primary: str | None = None  # it was a remote of that context


@dataclass
class ApplyPlan:
    phases: list[Phase]
    removals: list[Removal] = field(default_factory=list)
    prunes: dict[str, list[str]] = field(default_factory=dict)  # context -> secret names
    unchanged: list[str] = field(default_factory=list)
    actions: dict[str, str] = field(default_factory=dict)  # context -> install | remove (else: change)
    secrets: dict[str, int] | None = None  # remote secrets to add, replace, prune
    replacements: dict[str, list[str]] = field(default_factory=dict)  # context -> what a mode switch replaces
    # Clusters whose cacerts chains to another root than this workspace's: apply replaces it only when told to.
    other_roots: dict[str, CacertsFinding] = field(default_factory=dict)

    @property
    def deletes_anything(self) -> bool:
        return bool(self.removals or any(self.prunes.values()) or any(self.replacements.values()))


def cacerts_step(tools: Tools, cluster: Cluster, workdir: Path, namespace: dict | None = None,
                  transition: Transition | None = None) -> Step:
    """istio-system as ``namespace`` says (default: labelled with the cluster's network) and secret cacerts
    as the CA rotation (lib/carotation.py) says; during a root transition istio-system also records the stage."""
    namespace = namespace or namespace_manifest(cluster)
    folder = carotation.issuing_dir(workdir, transition) / cluster.name
    annotations = namespace["metadata"].get("annotations") or {}
    annotated = "".join(f", annotated {k}={v}" for k, v in annotations.items())

    def action(ctx: RunContext) -> None:
        files = carotation.desired_cacerts(workdir, cluster.name, transition)
        if files is None:
            raise MeshError(f"the intermediate CA in {folder} is incomplete",
                            hint=f"delete {folder} and run the same command again: it makes a new one")
        manifest_ns = copy.deepcopy(namespace)
        if transition is not None:
            since = carotation.iso(carotation.utc_now())
            manifest_ns["metadata"].setdefault("annotations", {})[TRANSITION_ANNOTATION] = \
                transition.annotation(since)
        manifest = dump(manifest_list([manifest_ns, cacerts_manifest(files)]))
        ctx.run(tools.apply(cluster, manifest, shown=False))

    stage = (f" and the root bundle of stage {transition.stage} ({carotation.STAGES[transition.stage]})"
             if transition is not None and transition.stage < carotation.LAST_STAGE else "")
    return Step(f"namespace {ISTIO_NAMESPACE} (network {cluster.network}) and secret cacerts",
                commands=[tools.apply(cluster, None, shown=False)], action=action,
                note=f"stdin: Namespace {ISTIO_NAMESPACE} labelled {cluster.network}{annotated} and Secret cacerts "
                     f"made from {folder}/*.pem{stage} (holds the CA key: not shown)")


def cacerts_in_place(seen: Observed, cluster: Cluster, workdir: Path, transition: Transition | None) -> bool:
    """The cluster holds what its cacerts must hold now (and, mid-transition, says which stage it is at)."""
    want = carotation.desired_cacerts(workdir, cluster.name, transition)
    if not carotation.holds(seen.cacerts, want):
        return False
    return transition is None or carotation.stage_since(transition, seen.annotations) is not None


def workspace_roots(workdir: Path, transition: Transition | None) -> list[bytes]:
    """The roots the clusters may trust now, the one issuing first: the workspace's, and mid-move the new one."""
    old = read_if_present(certs.certs_dir(workdir) / certs.ROOT_CERT)
    new = read_if_present(carotation.next_dir(workdir) / certs.ROOT_CERT) if transition is not None else None
    roots = [new, old] if transition is not None and transition.stage >= 2 else [old, new]
    return [pem for pem in roots if pem]


def cacerts_finding(seen: Observed, cluster: Cluster, workdir: Path, transition: Transition | None,
                    roots: list[bytes]) -> CacertsFinding:
    """The cluster's cacerts judged against what it must hold now (files of the workspace read here)."""
    want = carotation.desired_cacerts(workdir, cluster.name, transition)
    at_stage = transition is None or carotation.stage_since(transition, seen.annotations) is not None
    return assess_cacerts(seen.cacerts, seen.cacerts_labelled, want, roots, at_stage)


def intermediate_step(release: Release | None, cert_dir: Path, cluster: Cluster, variables: dict[str, str]) -> Step:
    """One make per cluster, in a folder of its own (a serial file of its own): clusters sign side by side."""
    release = release or Release(Path("<istio>"))
    stage = certs.signing_dir(cert_dir, cluster.name)
    make = certs.cacerts_command(release, stage, cluster.name, variables)

    def action(ctx: RunContext) -> None:
        certs.prepare_signing(cert_dir, cluster.name)
        if not certs.has_cacerts(stage, cluster.name):  # else a run cut short after make: only the move is left
            try:
                ctx.run(make)
            except MeshError:
                certs.discard_incomplete(stage, cluster.name)  # an empty file would look made to make
                raise
        certs.finish_signing(cert_dir, cluster.name)

    return Step("make intermediate CA", commands=[make], action=action,
                note=f"in {cert_dir.name}/{stage.name}/: a copy of {certs.ROOT_CERT} and a link to {certs.ROOT_KEY} "
                     f"(a serial file of its own); then moved to {cert_dir.name}/{cluster.name}/",
                change=f"+ intermediate CA ({cert_dir.name}/{cluster.name}/)")


def readiness_timeout(timeout: float, operator: dict) -> str:
    """istioctl install waits up to --readiness-timeout for each component in turn; setup-mesh kills a
    command after --timeout. Sharing the time out keeps istioctl's own "not ready" report instead of a kill."""
    margin = min(30.0, timeout / 10)
    return f"{max(1, int((timeout - margin) / sequential_waits(operator)))}s"


def install_command(tools: Tools, cluster: Cluster, path: Path, operator: dict, revision: str | None = None):
    """``revision``: the revision the cluster runs since a canary upgrade (lib/upgradeplan.py); a plain
    install would bring back a default revision beside it."""
    return tools.istioctl_cmd(cluster, "install", "-y", "-f", str(path), *(["--revision", revision] if revision else []),
                              "--readiness-timeout", readiness_timeout(tools.timeout, operator))


def resolved(ctx: RunContext, d: Desired) -> Desired:
    """``d`` with the gateway addresses found so far in this run; fails when the one it needs is missing."""
    if d.awaits_address_of is None:
        return d
    primary = d.awaits_address_of
    address = ctx.shared.get("gateway_address", {}).get(primary)
    if not address:
        raise MeshError(f"the address of {primary}'s east-west gateway is not known: this remote cannot be told "
                        f"where its control plane is",
                        hint=f"make {primary} healthy first (see its own result), then {RERUN_HINT}")
    with ctx.lock:
        full = ctx.shared.setdefault("desired", {}).get(d.cluster.context)
        if full is None:
            full = ctx.shared["desired"][d.cluster.context] = d.with_addresses({primary: address})
    return full


def install_steps(tools: Tools, workdir: Path, d: Desired, seen: Observed | None = None,
                  present: frozenset[str] = frozenset(), revision: str | None = None) -> tuple[list[Step], list[Step]]:
    """(Istio's install, the east-west gateway's and the Istio objects'). A first install shows what is
    added; a re-install, the paths that change in each overlay (the overlays/ files are what was installed
    last), and what is installed or applied again unchanged. ``present``: the purposes of the Istio objects
    the cluster already holds (the others are new)."""
    cluster = d.cluster
    fresh = seen.applied is None
    overlay = overlay_path(workdir, cluster)
    changed = _changed(overlay, d.operator, fresh, workdir)
    install = Step("install Istio", files=[(overlay, dump(d.operator))],
                   commands=[install_command(tools, cluster, overlay, d.operator, revision)],
                   done="installed" if fresh else "updated",
                   change=f"{changed[0] or '~'} Istio ({OVERLAY_DIR}/{overlay.name})",
                   details=changed[1] if changed[0] else ["(its overlay is unchanged: installed again)"])
    if d.member.is_remote:
        # Its primary's istiod must be exposed and have an address before a remote can be pointed at it.
        install.after = [After(d.member.control_plane, WAIT_KEY)]
    if d.awaits_address_of:
        install.prepare = lambda ctx: [(overlay, dump(resolved(ctx, d).operator))]
    steps = []
    fresh_gateway = fresh or not seen.eastwest_exists
    if d.eastwest is not None:
        old_network = assess_gateway(seen, d).network
        if old_network is not None and old_network != cluster.network:
            # A Deployment's selector cannot change, and the gateway's names its network: its Deployment
            # is replaced. Its Service (and so its address) is updated in place.
            steps.append(Step(f"remove the east-west gateway's Deployment (it selects network {old_network})",
                              commands=[tools.kubectl_cmd(cluster, "delete", "deployment", EASTWEST_NAME, "-n",
                                                          ISTIO_NAMESPACE, "--ignore-not-found")]))
        path = eastwest_path(workdir, cluster)
        eastwest = _changed(path, d.eastwest, fresh_gateway, workdir)
        gateway_install = install_command(tools, cluster, path, d.eastwest, revision)
        steps.append(Step("install east-west gateway", files=[(path, dump(d.eastwest))],
                          commands=[gateway_install], action=_explained_gateway_install(tools, cluster, gateway_install),
                          change=f"{eastwest[0]} east-west gateway ({OVERLAY_DIR}/{path.name})" if eastwest[0] else
                          f"~ east-west gateway ({OVERLAY_DIR}/{path.name}): reinstalled as is",
                          details=eastwest[1]))
    for unit in d.istio_objects:  # applied again on every install: new ones added, the others applied again
        new = fresh_gateway or unit.purpose not in present
        steps.append(Step(unit.title, commands=[tools.apply(cluster, dump(manifest_list(unit.objects)
                                                                          if len(unit.objects) > 1 else unit.objects[0]),
                                                            shown=True)],
                          change=f"+ {unit.title}" if new else f"~ {unit.title}: applied again"))
    return [install], steps


def _explained_gateway_install(tools: Tools, cluster: Cluster, command: Command):
    """istioctl says only that the gateway is not ready when the API server refuses its pods (it reads the
    reason from pods, and there are none): the Deployment's ReplicaFailure says why, e.g. the sidecar
    injector's webhook refusing them."""
    read = replace(tools.kubectl_cmd(cluster, "get", "deployment", EASTWEST_NAME, "-n", ISTIO_NAMESPACE, "-o", "json",
                                     timeout=min(tools.timeout, 60.0)), check=False)

    def action(ctx: RunContext) -> None:
        try:
            ctx.run(command)
        except CommandFailed as failed:
            refused = _replica_failure(ctx, read)
            if not refused:
                raise
            raise MeshError(f"{failed.message}\nthe API server refuses the gateway's pods: {refused}",
                            hint=f"see `{read.pasteable()}`; a webhook without caBundle is trusted once its control "
                                 f"plane holds this cluster's remote secret: `{invocation.command('status')}` names the cause") from None

    return action


def _replica_failure(ctx: RunContext, read: Command) -> str | None:
    try:
        result = ctx.run(read)
        conditions = ((json.loads(result.stdout or "{}").get("status") or {}).get("conditions") or []) if result.ok else []
    except (MeshError, ValueError):
        return None
    return next((c.get("message") for c in conditions if c.get("type") == "ReplicaFailure" and c.get("message")), None)


def objects_present(d: Desired, gateway: GatewayFinding, wiring: WiringFinding) -> frozenset[str]:
    """The purposes of ``d``'s Istio objects the cluster holds already, from the findings: the
    cross-network Gateway comes with the sidecar-mode gateway, istiod's exposure with remotes that name
    this cluster as their control plane, the ambient Gateway is read itself."""
    held = {"expose services": gateway.running == SIDECAR, "expose istiod": wiring.exposed,
            "east-west gateway": d.ambient and gateway.present}
    return frozenset(unit.purpose for unit in d.istio_objects if held.get(unit.purpose))


def _changed(path: Path, new: dict, fresh: bool, workdir: Path) -> tuple[str, list[str]]:
    """(sign, changed paths) of an overlay against the file last installed: ("+", []) when new,
    ("", []) when the same."""
    if fresh:
        return "+", []
    try:
        old = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return "~", [f"(no readable {OVERLAY_DIR}/{path.name} to compare with: installed again as a whole)"]
    found = overlay_changes(old, new)
    return ("~", list(found)) if found else ("", [])


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


def _remove_ambient_gateway_step(tools: Tools, cluster: Cluster) -> Step:
    """Back to sidecar mode: the Gateway, and what istiod deployed for it, give the name back to the
    sidecar-mode gateway (istiod's objects are deleted too, so none lingers until garbage collection)."""
    return Step(f"remove the ambient east-west gateway (Gateway {EASTWEST_NAME})",
                commands=_ambient_gateway_removal(tools, cluster),
                change=f"- ambient east-west gateway (Gateway {EASTWEST_NAME})")


def _ambient_gateway_removal(tools: Tools, cluster: Cluster) -> list[Command]:
    return [tools.kubectl_cmd(cluster, "delete", GATEWAY_RESOURCE, EASTWEST_NAME, "-n", ISTIO_NAMESPACE,
                              "--ignore-not-found"),
            tools.kubectl_cmd(cluster, "delete", "deployment,service,serviceaccount", "-n", ISTIO_NAMESPACE,
                              "-l", f"gateway.networking.k8s.io/gateway-name={EASTWEST_NAME},{MANAGED_GATEWAY_LABEL}",
                              "--ignore-not-found")]


def _no_gateway_reason(d: Desired) -> str:
    """Why a cluster needs no east-west gateway any more, in words that are true of this mesh."""
    if d.member.is_remote:
        return "a remote on its primary's network"
    return "one network now"


def _remove_gateways_step(tools: Tools, workdir: Path, d: Desired, seen: Observed) -> Step:
    """The east-west gateway and its Gateway are not needed any more (see _no_gateway_reason)."""
    commands = [tools.kubectl_cmd(d.cluster, "delete", "gateways.networking.istio.io", CROSS_NETWORK_GATEWAY,
                                  "-n", ISTIO_NAMESPACE, "--ignore-not-found")]
    files = []
    if seen.eastwest_exists:
        file, command = _uninstall_operator(tools, workdir, d.cluster, EASTWEST_IOP)
        files.append(file)
        commands.append(command)
    why = _no_gateway_reason(d)
    return Step(f"remove the east-west gateway ({why})", commands=commands, files=files,
                done="east-west gateway removed",
                change=f"- east-west gateway and Gateway {CROSS_NETWORK_GATEWAY} ({why})")


def await_namespace_deleted_step(tools: Tools, cluster: Cluster) -> Step:
    """Nothing can be created in a namespace being deleted (kube-apiserver answers 403 Forbidden)."""
    return Step(f"{ISTIO_NAMESPACE} is being deleted: wait until it is gone", commands=[tools.kubectl_cmd(
        cluster, "wait", "--for=delete", f"namespace/{ISTIO_NAMESPACE}", f"--timeout={tools.timeout:g}s")])


def _remove_sidecar_gateway_step(tools: Tools, workdir: Path, d: Desired, seen: Observed) -> Step:
    """To ambient: the sidecar-mode east-west gateway holds the name istiod's ambient gateway takes."""
    step = _remove_gateways_step(tools, workdir, d, seen)
    step.title = "remove the sidecar-mode east-west gateway (ambient now)"
    step.change = f"- sidecar-mode east-west gateway and Gateway {CROSS_NETWORK_GATEWAY} (ambient now)"
    return step


def _no_longer_remote_step(tools: Tools, cluster: Cluster, d: Desired) -> Step:
    """A remote turned primary: its istio-system must stop naming another cluster's control plane, and the
    EndpointSlice that led its istiod Service to the old primary must not outlive the remote install."""
    service = control_plane_istiod(d.operator)
    return Step(f"stop being a remote (annotation {CONTROL_PLANE_CLUSTERS}, EndpointSlice {service})",
                change=f"- annotation {CONTROL_PLANE_CLUSTERS} and EndpointSlice {service} (a primary now)", commands=[
        tools.kubectl_cmd(cluster, "annotate", "namespace", ISTIO_NAMESPACE, f"{CONTROL_PLANE_CLUSTERS}-"),
        tools.kubectl_cmd(cluster, "delete", "endpointslices.discovery.k8s.io", service, "-n", ISTIO_NAMESPACE,
                          "--ignore-not-found")])


def _stop_exposing_istiod_step(tools: Tools, cluster: Cluster, d: Desired) -> Step:
    """A primary that no longer has remotes: its istiod is no longer reachable through the gateway."""
    names = [(o["kind"], o["metadata"]["name"]) for o in expose_istiod(control_plane_revision(d.operator))]
    commands = [tools.kubectl_cmd(cluster, "delete", f"{kind.lower()}s.networking.istio.io", name,
                                  "-n", ISTIO_NAMESPACE, "--ignore-not-found") for kind, name in names]
    return Step("stop exposing istiod (no remotes now)", commands=commands,
                change="- Gateway istiod-gateway and its VirtualService (no remotes now)")


def record_step(tools: Tools, cluster: Cluster, fp: str, d: Desired | None = None, was: str | None = None) -> Step:
    """The fingerprint of what was applied, and the data-plane mode when not sidecar (``was``: the mode
    recorded before, whose annotation a sidecar mesh removes). A remote whose primary's gateway address
    was unknown at planning records the fingerprint of what it finally installed."""
    data_plane = d.data_plane if d is not None else SIDECAR
    mode = ([f"{DATA_PLANE_ANNOTATION}={data_plane}"] if data_plane != SIDECAR
            else [f"{DATA_PLANE_ANNOTATION}-"] if was not in (None, SIDECAR) else [])

    def command(fingerprint: str):
        return tools.kubectl_cmd(cluster, "annotate", "--overwrite", "namespace", ISTIO_NAMESPACE,
                                 f"{APPLIED_ANNOTATION}={fingerprint}", *mode)

    if d is None or d.awaits_address_of is None:
        return Step(RECORD_TITLE, commands=[command(fp)], change="")
    return Step(RECORD_TITLE, commands=[command("<fingerprint once the address is known>")],
                action=lambda ctx: ctx.run(command(resolved(ctx, d).fingerprint)) and None, change="")


def wait_gateway_step(tools: Tools, cluster: Cluster, timeout: float, ambient: bool = False) -> Step:
    """Until the east-west gateway has an address: its Service's LoadBalancer, or for an ambient Gateway
    where istiod reports it (status.addresses, once Programmed)."""
    kind = GATEWAY_RESOURCE if ambient else "service"
    command = tools.kubectl_cmd(cluster, "get", kind, EASTWEST_NAME, "-n", ISTIO_NAMESPACE, "-o", "json",
                                timeout=min(tools.timeout, 60.0))

    def action(ctx: RunContext) -> None:
        import json

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


def export_step(tools: Tools, cluster: Cluster) -> Step:
    # Without -n, istioctl makes the reader account and its token in the namespace of the kubeconfig's
    # current context (whatever --context says), where neither Istio nor setup-mesh looks for them.
    args = ["create-remote-secret", "--namespace", ISTIO_NAMESPACE, "--name", cluster.name]
    if cluster.api_server:
        args += ["--server", cluster.api_server]
    command = tools.istioctl_cmd(cluster, *args)

    def action(ctx: RunContext) -> None:
        result = ctx.run(command)
        try:
            secret, _ = parse_remote_secret(result.stdout, cluster.name)
        except ValueError as exc:
            raise MeshError(f"`{command.pasteable()}` printed no usable Secret: {exc}",
                            hint="run it by hand to see what istioctl printed") from None
        with ctx.lock:
            ctx.shared.setdefault("remote_secrets", {})[cluster.context] = secret

    return Step("create its remote secret", commands=[command], action=action, key=EXPORT_KEY, change="")


def import_step(tools: Tools, target: Cluster, peers: list[Cluster], copies: dict[str, dict],
                replacing: Mapping[str, str] = MappingProxyType({})) -> Step:
    """Apply the peers' secrets in one go; ``copies`` are current ones read from other clusters;
    ``replacing``: the peers whose (outdated) secret the target already holds, with what changed."""
    names = ", ".join(p.name for p in peers)

    def action(ctx: RunContext) -> str:
        # A peer whose export failed is reported on its own; the next apply brings its secret.
        available = {**copies, **ctx.shared.get("remote_secrets", {})}
        brought = [p for p in peers if p.context in available]
        if brought:
            ctx.run(tools.apply(target, dump(manifest_list([available[p.context] for p in brought])), shown=False))
        replaced = sum(1 for p in brought if p.context in replacing)
        return secrets_done(len(brought) - replaced, replaced, 0)

    title = f"import {peers[0].name}'s secret" if len(peers) == 1 else f"import {len(peers)} peers' secrets"
    added = [p.name for p in peers if p.context not in replacing]
    renewed = [p for p in peers if p.context in replacing]
    why = {replacing[p.context] for p in renewed}
    change = "; ".join(filter(None, [
        added and f"+ remote secret{'s' * (len(added) > 1)} of " + ", ".join(added),
        renewed and ("~ " if not added else "replace ") + f"remote secret{'s' * (len(renewed) > 1)} of "
        + (", ".join(p.name for p in renewed) + f" ({why.pop()})" if len(why) == 1 else
           ", ".join(f"{p.name} ({replacing[p.context]})" for p in renewed))]))
    # Waits for the peers' exports, but goes ahead without a peer whose export failed.
    return Step(title, commands=[tools.apply(target, None, shown=False)], action=action, change=change, key=IMPORT_KEY,
                note=f"stdin: the remote secrets of {names}, from create-remote-secret or copied from a peer "
                     f"(hold tokens: not shown)",
                after=[After(p.context, EXPORT_KEY, required=False) for p in peers])


def secrets_done(added: int, replaced: int, pruned: int) -> str:
    """`2 secrets imported, 1 replaced`: the words a cluster's result uses for its remote secrets."""
    parts = []
    if added:
        parts.append(f"{added} secret{'s' * (added != 1)} imported")
    if replaced:
        parts.append(f"{replaced} secret{'s' * (replaced != 1)} replaced" if not added else f"{replaced} replaced")
    if pruned:
        parts.append(f"{pruned} stale secret{'s' * (pruned != 1)} pruned")
    return ", ".join(parts)


def prune_step(tools: Tools, target: Cluster, names: list[str]) -> Step:
    return Step(f"delete {len(names)} stale remote secret{'s' * (len(names) != 1)}", commands=[tools.kubectl_cmd(
        target, "delete", "secret", "-n", ISTIO_NAMESPACE, "--ignore-not-found", *names)],
        done=secrets_done(0, 0, len(names)), change="- stale remote secrets: " + ", ".join(names))


@dataclass(frozen=True)
class Uninstall:
    """How to remove setup-mesh from one cluster, decided from what the cluster holds."""

    workdir: Path
    ours: frozenset[str]  # the IstioOperator names setup-mesh installs (control plane, east-west gateway)
    usage: IstioUsage  # Istio objects others made
    remove_crds: bool = False  # delete Istio's CRDs even though others' resources exist (and go with them)
    foreign_cacerts: str | None = None  # a cacerts setup-mesh did not make (whose CA): it and istio-system stay

    @property
    def purge(self) -> bool:
        return self.remove_crds or not self.usage.foreign


def _installed_operators(seen: Observed, ours: frozenset[str]) -> tuple[list[tuple[str, str | None]], list[str]]:
    """setup-mesh's IstioOperators (name, namespace) found on istio-system's deployments, and the
    revisions of control planes installed unnamed by earlier versions."""
    named, revisions = set(), set()
    for item in seen.deployments.values():
        labels = (item.get("metadata") or {}).get("labels") or {}
        if COMPONENT_LABEL not in labels:
            continue
        owner = labels.get(OWNER_LABEL)
        if owner in ours:
            named.add((owner, labels.get(OWNER_NAMESPACE_LABEL)))
        elif owner in (None, "", "unknown"):
            revisions.add(labels.get("istio.io/rev") or "default")
    return sorted(named, key=lambda n: (n[0], n[1] or "")), sorted(revisions)


def _uninstall_operator(tools: Tools, workdir: Path, cluster: Cluster, name: str,
                        namespace: str | None = None) -> tuple[tuple[Path, str], Command]:
    """The file and command that remove what one IstioOperator installed: `uninstall -f` selects by the
    file's metadata.name (and namespace); nothing else in the file matters."""
    path = workdir / UNINSTALL_DIR / f"{cluster.name}-{name}.yaml"
    metadata = {"name": name, **({"namespace": namespace} if namespace else {})}
    manifest = dump({"apiVersion": "install.istio.io/v1alpha1", "kind": "IstioOperator", "metadata": metadata})
    return (path, manifest), tools.istioctl_cmd(cluster, "uninstall", "-y", "-f", str(path))


def uninstall_steps(tools: Tools, cluster: Cluster, secrets: list[str], seen: Observed, how: Uninstall) -> list[Step]:
    """setup-mesh's Istio, then its secrets, then istio-system. Istio's CRDs (and with them every Istio
    resource) go only when nobody else uses Istio there, or when asked to with --remove-crds."""
    steps = []
    if how.purge:
        steps.append(Step("uninstall Istio and its CRDs", commands=[tools.istioctl_cmd(cluster, "uninstall", "--purge", "-y")],
                          change="- Istio (istioctl uninstall --purge)"))
    else:
        named, revisions = _installed_operators(seen, how.ours)
        files, commands = [], []
        for name, namespace in named:
            file, command = _uninstall_operator(tools, how.workdir, cluster, name, namespace)
            files.append(file)
            commands.append(command)
        for revision in revisions:
            commands.append(tools.istioctl_cmd(cluster, "uninstall", "-y", "-r", revision))
        commands.append(tools.kubectl_cmd(cluster, "delete", "gateways.networking.istio.io", CROSS_NETWORK_GATEWAY,
                                          "-n", ISTIO_NAMESPACE, "--ignore-not-found"))
        # What exposes istiod to remotes carries setup-mesh's label (Istio's CRDs, and so the kinds, stay).
        commands.append(tools.kubectl_cmd(cluster, "delete", "gateways.networking.istio.io,virtualservices.networking.istio.io",
                                          "-n", ISTIO_NAMESPACE, "-l", f"{MANAGED_BY_LABEL}={FIELD_MANAGER}",
                                          "--ignore-not-found"))
        if seen.eastwest_made_by == "gateway":
            # istiod made this one for the ambient Gateway; with istiod gone nothing would reconcile it.
            commands.extend(_ambient_gateway_removal(tools, cluster))
        steps.append(Step("uninstall setup-mesh's IstioOperators (Istio's CRDs are kept)", commands=commands,
                          files=files, change="- setup-mesh's IstioOperators and Gateway (Istio's CRDs are kept: "
                                              f"others use Istio here: {how.usage.describe()})"))
    names = secrets if how.foreign_cacerts else ["cacerts", *secrets]
    if names:
        some = f"{len(secrets)} remote secret{'s' * (len(secrets) != 1)}"
        steps.append(Step("delete cacerts and remote secrets" if not how.foreign_cacerts else "delete remote secrets",
                          commands=[tools.kubectl_cmd(cluster, "delete", "secret", "-n", ISTIO_NAMESPACE,
                                                      "--ignore-not-found", *names)],
                          change=f"- {some}" if how.foreign_cacerts else
                          "- secret cacerts" + (f" and {some}" if secrets else "")))
    if how.foreign_cacerts:  # istio-system holds somebody's CA: deleting the namespace would delete it too
        return steps
    if seen.namespace_terminating:
        # An earlier delete is under way (kube-apiserver refuses a second one with 409 Conflict).
        step = await_namespace_deleted_step(tools, cluster)
        step.done, step.change = "removed", f"- namespace {ISTIO_NAMESPACE} (already being deleted: waited for)"
        steps.append(step)
    elif how.purge or not how.usage.in_namespace(ISTIO_NAMESPACE):
        steps.append(Step(f"delete namespace {ISTIO_NAMESPACE}", commands=[tools.kubectl_cmd(
            cluster, "delete", "namespace", ISTIO_NAMESPACE, "--ignore-not-found")], done="removed",
            change=f"- namespace {ISTIO_NAMESPACE}"))
    return steps


def build_apply_plan(*, topology: Topology, desired: dict[str, Desired], observed: dict[str, Observed | None],
                     removed: list[Removal], removed_observed: dict[str, Observed | None], workdir: Path,
                     tools: Tools, release: Release | None, intermediate_vars: dict[str, str],
                     gateway_timeout: float, skip: set[str] = frozenset(),
                     only: set[str] | None = None, gateway_api: CrdSource | None = None,
                     uninstall: dict[str, Uninstall] | None = None,
                     transition: Transition | None = None, revisions: dict[str, str] | None = None) -> ApplyPlan:
    """``skip``: contexts that could not be read; they get no step, and their secrets are left as they are.
    ``only``: the contexts to change (--context); the others are read for their current secrets only.
    ``gateway_api``: where an ambient mesh's clusters that lack the Gateway API CRDs get them from.
    ``uninstall``: how each reachable removed cluster is uninstalled (from what else uses Istio there).
    ``transition``: a root transition under way; clusters get (and keep) the certificates of its stage."""
    cert_dir = carotation.issuing_dir(workdir, transition)
    stage_note = f", stage {transition.stage} of the move to a new root" if transition is not None else ""
    roots = workspace_roots(workdir, transition)
    # Each member's own chain (set-up, install, its remote secret), then what needs the others (their
    # secrets, and the gateway address); phases group the steps for the reader, the steps' dependencies
    # (Step.after) are what orders clusters against each other.
    setup, connect, prune, remove = (Phase("set up, install, export remote secret"),
                                     Phase("import remote secrets, gateways ready"), Phase("prune"),
                                     Phase("remove clusters"))
    plan = ApplyPlan([setup, connect, prune, remove], secrets={"add": 0, "replace": 0, "prune": 0})
    members = [c for c in topology.clusters if c.context not in skip]
    # A terminating istio-system is as good as gone: plan a fresh install, after waiting for it to go.
    terminating = {c.context for c in members if (observed.get(c.context) or Observed()).namespace_terminating}
    seen_of = {c.context: Observed(reachable=True) if c.context in terminating else observed.get(c.context) or Observed()
               for c in members}

    # Secret exchange: a peer's copy is current when it carries the credentials its cluster holds now.
    # A missing copy is taken from another member that holds a current one, else made once by istioctl.
    mesh = mesh_model(topology)
    issued = issued_credentials(mesh, seen_of)
    current_fp = {c.context: issued[c.context] for c in members}
    # Each member's remote secrets judged once: what to import (from readable peers), what to prune.
    secrets_of = {c.context: assess_secrets(mesh, mesh.member(c.context), seen_of[c.context], issued)
                  for c in members}
    held = {}  # peer context -> a current copy of its secret held somewhere
    for holder in members:
        for peer in members:
            info = seen_of[holder.context].remote_secrets.get(peer.name)
            if info and info.manifest and info.source and info.source == current_fp[peer.context]:
                held.setdefault(peer.context, info.manifest)
    # Primaries whose istiod ran remotes when the clusters were read (the remotes' istio-system names them).
    controlled = controlled_before(seen_of) | controlled_before(removed_observed)
    member_of = {c.context: c for c in members}
    imports: dict[str, list[Cluster]] = {}
    for target in members:
        for finding in secrets_of[target.context]:
            if finding.to_import and finding.context in member_of:
                imports.setdefault(target.context, []).append(member_of[finding.context])
    unfiltered_imports = imports
    members_by_context = member_of
    if only is not None:  # a peer outside the selection is not asked for a secret nobody holds
        imports = {target: kept for target, peers in imports.items() if target in only
                   for kept in [[p for p in peers if p.context in only or p.context in held]] if kept}
    needed_sources = {p.context for peers in imports.values() for p in peers if p.context not in held}

    for cluster in members:
        if only is not None and cluster.context not in only:
            continue
        d = desired[cluster.context]
        seen = seen_of[cluster.context]
        steps: list[Step] = []
        gateway: list[Step] = []  # the east-west gateway's steps, placed by _gateway_after_attach
        if cluster.context in terminating:
            steps.append(await_namespace_deleted_step(tools, cluster))
        if not certs.has_cacerts(cert_dir, cluster.name):
            steps.append(intermediate_step(release, cert_dir, cluster, intermediate_vars))
        cacerts = cacerts_finding(seen, cluster, workdir, transition, roots)
        cacerts_current = cacerts.state is CacertsState.CURRENT
        if cacerts.other_root:
            plan.other_roots[cluster.context] = cacerts
        namespace, install = assess_namespace(seen, d), assess_install(seen, d.fingerprint)
        gateway_found, wiring = assess_gateway(seen, d), assess_wiring(mesh, d.member, seen.annotations, controlled)
        installing = install.drift or gateway_found.state is GatewayState.MISSING
        if steps or not namespace.current or not cacerts_current:
            step = cacerts_step(tools, cluster, workdir, d.namespace_manifest(), transition)
            if not namespace.exists:
                step.change = f"+ namespace {ISTIO_NAMESPACE} (network {cluster.network}) and secret cacerts"
            else:
                label = namespace.label is not LabelState.CURRENT
                step.change = ", ".join(filter(None, [
                    label and f"~ network label: {seen.network_label or '(none)'} → {cluster.network}",
                    not cacerts_current and ("~ " if not label else "") + "secret cacerts"
                    f" ({cert_dir.name}/{cluster.name}/{stage_note})",
                    namespace.annotations_off and "~ annotation " + ", ".join(namespace.annotations_off)]
                )) or "~ secret cacerts"
                if not installing:
                    step.done = "cacerts updated"
            steps.append(step)
        was = seen.annotations.get(DATA_PLANE_ANNOTATION, SIDECAR) if seen.applied is not None else None
        if was is not None and was != d.data_plane:
            plan.replacements.setdefault(cluster.context, []).extend(
                _switch_description(was, d, had_gateway=seen.eastwest_made_by is not None))
        if d.ambient and seen.gateway_api is not None and not seen.gateway_api.installed and gateway_api is not None:
            steps.append(gateway_api_crds_step(tools, cluster, gateway_api))
        if CONTROL_PLANE_CLUSTERS in namespace.annotations_left:
            steps.append(_no_longer_remote_step(tools, cluster, d))
        if installing:
            # The other mode's gateway holds the name this mode's gateway takes: it goes first.
            if gateway_found.running == SIDECAR and d.ambient:
                steps.append(_remove_sidecar_gateway_step(tools, workdir, d, seen))
            elif gateway_found.running == AMBIENT and not d.ambient:
                steps.append(_remove_ambient_gateway_step(tools, cluster))
            installed, gateway = install_steps(tools, workdir, d, seen, objects_present(d, gateway_found, wiring),
                                               (revisions or {}).get(cluster.context))
            steps.extend(installed)
            plan.actions[cluster.context] = "install" if install.state is InstallState.ABSENT else "change"
            if gateway_found.wanted is None and install.state is not InstallState.ABSENT:  # none needed now
                if gateway_found.running == AMBIENT:
                    if d.ambient:  # in sidecar mode it was removed above, before the install
                        steps.append(_remove_ambient_gateway_step(tools, cluster))
                elif not d.ambient:
                    steps.append(_remove_gateways_step(tools, workdir, d, seen))
            if wiring.stop_exposing:
                steps.append(_stop_exposing_istiod_step(tools, cluster, d))
        changed = bool(steps)
        if d.member.remotes and gateway_found.wanted == SIDECAR and (changed or not gateway_found.address):
            # Its remotes wait for this address: find it before anything else this cluster does.
            steps.append(wait_gateway_step(tools, cluster, gateway_timeout))
        if changed:
            steps.append(record_step(tools, cluster, d.fingerprint, d, was))
        else:
            plan.unchanged.append(cluster.context)
        if cluster.context in needed_sources:
            steps.append(export_step(tools, cluster))
        if gateway and d.member.is_remote and only is not None and d.member.control_plane not in only \
                and d.member.control_plane in {t for t, peers in unfiltered_imports.items() if cluster in peers}:
            primary = members_by_context[d.member.control_plane]
            raise MeshError(f"{cluster.context}'s east-west gateway can only be installed once {primary.context} "
                            f"holds its current remote secret, and --context leaves {primary.context} out",
                            hint=f"add --context {primary.context} (or run without --context)")
        steps = _gateway_after_attach(steps, gateway, d)
        for step in steps:
            setup.add(cluster.context, step)

        if cluster.context in imports:
            peers = imports[cluster.context]
            # What makes each held copy outdated: the address it names, or else the credentials it carries.
            replacing = {p.context: "new address" if seen.remote_secrets[p.name].server != p.remote_server
                         else "new credentials" for p in peers if p.name in seen.remote_secrets}
            plan.secrets["replace"] += len(replacing)
            plan.secrets["add"] += len(peers) - len(replacing)
            connect.add(cluster.context, import_step(tools, cluster, peers, {p.context: held[p.context]
                                                                               for p in peers if p.context in held},
                                                     replacing))
        if gateway_found.wanted == AMBIENT:
            if changed or not gateway_found.programmed:
                connect.add(cluster.context, wait_gateway_step(tools, cluster, gateway_timeout, ambient=True))
        elif not d.member.remotes and gateway_found.wanted == SIDECAR and (changed or not gateway_found.address):
            connect.add(cluster.context, wait_gateway_step(tools, cluster, gateway_timeout))
        # Secrets of clusters that left the mesh, and any a cluster no longer needs (a remote holds none).
        stale = sorted(f.secret for f in secrets_of[cluster.context] if f.to_prune)
        if stale:
            plan.prunes[cluster.context] = stale
            plan.secrets["prune"] += len(stale)
            prune.add(cluster.context, prune_step(tools, cluster, stale))

    # Clusters dropped from topology.yaml: uninstall where reachable.
    for gone in removed:
        seen = removed_observed.get(gone.context)
        # A cluster whose Istio users could not be read is left as it is, like an unreachable one.
        gone.reachable = bool(seen and seen.reachable and gone.context in (uninstall or {}))
        plan.removals.append(gone)
        plan.actions[gone.context] = "remove"
        if gone.reachable:
            cluster = Cluster(context=gone.context, network="", name=gone.cluster_name, kubeconfig=gone.kubeconfig)
            secrets = sorted(info.name for info in seen.remote_secrets.values())
            for step in uninstall_steps(tools, cluster, secrets, seen, uninstall[gone.context]):
                remove.add(gone.context, step)
    _remotes_first(remove, {r.context: r.primary for r in removed})
    return plan


def _gateway_after_attach(steps: list[Step], gateway: list[Step], d: Desired) -> list[Step]:
    """Where the east-west gateway's steps go in a cluster's chain. A primary's follow its install. A
    remote's gateway pods are injected by its primary's istiod, whose webhook the remote's API server
    trusts only once that istiod holds the remote's current secret (and the remote names it in
    topology.istio.io/controlPlaneClusters): until then the pods are refused and the install waits out its
    readiness timeout. So a remote exports its secret first, and its gateway waits for its primary to
    import it, as Istio's guide "Install primary-remote on different networks" orders it."""
    if not gateway:
        return steps
    at = next(i for i, step in enumerate(steps) if step.title == "install Istio") + 1
    if not d.member.is_remote:
        return steps[:at] + gateway + steps[at:]
    gateway[0].after.append(After(d.member.control_plane, IMPORT_KEY))
    rest = steps[at:]
    export = [s for s in rest if s.key == EXPORT_KEY]
    others = [s for s in rest if s.key != EXPORT_KEY]
    return steps[:at] + export + gateway + others


def _switch_description(was: str, d: Desired, had_gateway: bool) -> list[str]:
    """What changing base.yaml's profile between ambient and sidecar replaces in a running cluster
    (``had_gateway``: it runs an east-west gateway of the other mode now)."""
    if d.ambient:
        what = ["Istio is reinstalled with profile ambient (adds ztunnel and istio-cni; workloads stay as they are "
                "until their namespaces are labelled istio.io/dataplane-mode=ambient)"]
        if d.ambient_gateway is not None and had_gateway:
            what.append(f"the sidecar-mode east-west gateway (IstioOperator eastwest, Gateway {CROSS_NETWORK_GATEWAY}) "
                        f"is replaced by the ambient Gateway {EASTWEST_NAME}")
    else:
        profile = (d.operator.get("spec") or {}).get("profile") or "default"
        what = [f"Istio is reinstalled with profile {profile} (removes ztunnel and istio-cni: workloads in ambient "
                f"namespaces lose the mesh until they get sidecars)"]
        if d.eastwest is not None and had_gateway:
            what.append(f"the ambient Gateway {EASTWEST_NAME} is replaced by the sidecar-mode east-west gateway")
    return what


def _remotes_first(phase: Phase, primary_of: dict[str, str | None]) -> None:
    """A primary is uninstalled only after its remotes (their webhooks call its istiod until then)."""
    for remote, primary in primary_of.items():
        if primary and primary in phase.steps and remote in phase.steps:
            phase.steps[primary][0].after.append(After(remote, phase.steps[remote][-1].key, required=False))



def teardown_plan(tools: Tools, clusters: list[Cluster], observed: dict[str, Observed],
                  uninstall: dict[str, Uninstall]) -> Phase:
    """``uninstall``: the clusters that hold something of setup-mesh's and were read whole (who else uses
    Istio there included); the others get no step."""
    phase = Phase("teardown")
    for cluster in clusters:
        if cluster.context not in uninstall:
            continue
        seen = observed[cluster.context]
        secrets = sorted(info.name for info in seen.remote_secrets.values())
        for step in uninstall_steps(tools, cluster, secrets, seen, uninstall[cluster.context]):
            phase.add(cluster.context, step)
    _remotes_first(phase, {c.context: c.primary for c in clusters})
    return phase
