"""The steps that install Istio in a cluster from its overlays, and record what was applied."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import yaml

from . import invocation
from .assess import GatewayFinding, WiringFinding, assess_gateway, missing_objects, overlay_changes
from .config import SIDECAR, Cluster
from .desired import EXPOSE_ISTIOD, Desired, IstioObjects, at_revision
from .errors import CommandFailed, MeshError
from .executor import RERUN_HINT, After, RunContext, Step
from .gatewaysteps import WAIT_KEY
from .kube import Observed, Tools
from .mesh import Mesh
from .names import APPLIED_ANNOTATION, CONTROL_PLANE_CLUSTERS, DATA_PLANE_ANNOTATION, EASTWEST_NAME, ISTIO_NAMESPACE
from .overlay import control_plane_istiod, control_plane_revision, expose_istiod, manifest_list, sequential_waits
from .runner import Command
from .yamlfile import dump

OVERLAY_DIR = "overlays"
RECORD_TITLE = "record what was applied"
DEFAULT_TAG_KEY = "default revision tag"


def overlay_path(workdir: Path, cluster: Cluster) -> Path:
    return workdir / OVERLAY_DIR / f"{cluster.name}.yaml"


def istio_objects_read_in(workdir: Path, mesh: Mesh) -> frozenset[str]:
    """The clusters whose read lists the Istio objects in istio-system (lib/kube.py): those that keep some,
    where this workspace installed Istio (it keeps their overlays), so that Istio's CRDs are expected."""
    return frozenset(m.name for m in mesh.members if m.keeps_istio_objects and overlay_path(workdir, m.cluster).is_file())


def eastwest_path(workdir: Path, cluster: Cluster) -> Path:
    return workdir / OVERLAY_DIR / f"{cluster.name}-eastwest.yaml"


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
    """(Istio's install, with the default tag after a first install at ``revision``; the east-west gateway's
    and the Istio objects'). A first install shows what is
    added; a re-install, the paths that change in each overlay (the overlays/ files are what was installed
    last), and what is installed or applied again unchanged. ``present``: the purposes of the Istio objects
    the cluster already holds (the others are new)."""
    cluster = d.cluster
    fresh = seen.applied is None
    overlay = overlay_path(workdir, cluster)
    changed = _changed(overlay, d.operator, fresh, workdir)
    if changed[0] == "~" and revision is None:
        changed[1].extend(_revision_left_running(tools, cluster, overlay, d.operator))
    install = Step("install Istio", files=[(overlay, dump(d.operator))],
                   commands=[install_command(tools, cluster, overlay, d.operator, revision)],
                   done="installed" if fresh else "updated",
                   change=f"{changed[0] or '~'} Istio ({OVERLAY_DIR}/{overlay.name})"
                          + (f" at revision {revision}" if revision else ""),
                   details=changed[1] if changed[0] else ["(its overlay is unchanged: installed again)"])
    if d.member.is_remote:
        # Its primary's istiod must be exposed and have an address before a remote can be pointed at it.
        install.after = [After(d.member.control_plane, WAIT_KEY)]
    if d.awaits_address_of:
        install.prepare = lambda ctx: [(overlay, dump(resolved(ctx, d).operator))]
    installed = [install]
    if revision and fresh:
        # A first install at a revision (a remote joining a primary that runs one since its upgrade) makes no
        # default tag: without it, namespaces labelled istio-injection=enabled would match no injector.
        installed.append(default_tag_step(tools, cluster, revision))
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
        unit = at_revision(unit, revision)
        new = fresh_gateway or unit.purpose not in present
        steps.append(objects_step(tools, cluster, unit, f"+ {unit.title}" if new else f"~ {unit.title}: applied again"))
    return installed, steps


def objects_step(tools: Tools, cluster: Cluster, unit: IstioObjects, change: str, done: str = "") -> Step:
    return Step(unit.title, change=change, done=done, commands=[tools.apply(
        cluster, dump(manifest_list(unit.objects) if len(unit.objects) > 1 else unit.objects[0]), shown=True)])


def restore_objects_steps(tools: Tools, d: Desired, seen: Observed, revision: str | None) -> list[Step]:
    """A cluster that needs no install but lacks some of its Istio objects (deleted by hand, or by a tool
    that prunes what it did not make): those units applied again, and nothing else."""
    return [objects_step(tools, d.cluster, unit, f"+ {unit.title}: {', '.join(lacking)} missing",
                         done=f"{', '.join(lacking)} applied again")
            for unit, lacking in missing_objects(seen, d, revision)]


def default_tag_step(tools: Tools, cluster: Cluster, revision: str) -> Step:
    """``istioctl tag set default --revision <rev> --overwrite``, as on a cluster that moved to ``revision``
    (istio.io docs/setup/upgrade/canary, "Default tag")."""
    return Step(f"point the default revision tag at {revision}",
                commands=[tools.istioctl_cmd(cluster, "tag", "set", "default", "--revision", revision, "--overwrite")],
                change=f"+ default revision tag → {revision}", key=DEFAULT_TAG_KEY)


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


def objects_present(d: Desired, gateway: GatewayFinding, wiring: WiringFinding, seen: Observed,
                    revision: str | None = None) -> frozenset[str]:
    """The purposes of ``d``'s Istio objects the cluster holds already, from the findings: the
    cross-network Gateway comes with the sidecar-mode gateway, istiod's exposure with remotes that name
    this cluster as their control plane, the ambient Gateway is read itself; and, where the read listed
    Istio's objects, none of them is missing."""
    held = {"expose services": gateway.running == SIDECAR, EXPOSE_ISTIOD: wiring.exposed,
            "east-west gateway": d.ambient and gateway.present}
    lacking = {unit.purpose for unit, _ in missing_objects(seen, d, revision)}
    return frozenset(unit.purpose for unit in d.istio_objects if held.get(unit.purpose) and unit.purpose not in lacking)


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


def _revision_left_running(tools: Tools, cluster: Cluster, path: Path, new: dict) -> list[str]:
    """A base.yaml edit of spec.revision installs a control plane of the new revision beside the one installed
    last, which keeps running (workloads it injected use it until they restart): said, with the command that
    removes it once none does."""
    try:
        old = control_plane_revision(yaml.safe_load(path.read_text()) or {}) or "default"
    except (OSError, yaml.YAMLError, AttributeError):
        return []
    if old == (control_plane_revision(new) or "default"):
        return []
    remove = tools.istioctl_cmd(cluster, "uninstall", "--revision", old, "-y").pasteable()
    return [f"(the control plane of revision {old} keeps running beside it: the workloads it injected use it until "
            f"they restart; `{remove}` removes it once none does)"]


def no_longer_remote_step(tools: Tools, cluster: Cluster, d: Desired) -> Step:
    """A remote turned primary: its istio-system must stop naming another cluster's control plane, and the
    EndpointSlice that led its istiod Service to the old primary must not outlive the remote install."""
    service = control_plane_istiod(d.operator)
    return Step(f"stop being a remote (annotation {CONTROL_PLANE_CLUSTERS}, EndpointSlice {service})",
                change=f"- annotation {CONTROL_PLANE_CLUSTERS} and EndpointSlice {service} (a primary now)", commands=[
        tools.kubectl_cmd(cluster, "annotate", "namespace", ISTIO_NAMESPACE, f"{CONTROL_PLANE_CLUSTERS}-"),
        tools.kubectl_cmd(cluster, "delete", "endpointslices.discovery.k8s.io", service, "-n", ISTIO_NAMESPACE,
                          "--ignore-not-found")])


def stop_exposing_istiod_step(tools: Tools, cluster: Cluster, d: Desired, revision: str | None = None) -> Step:
    """A primary that no longer has remotes: its istiod is no longer reachable through the gateway.
    ``revision``: the one it runs since a canary upgrade."""
    names = [(o["kind"], o["metadata"]["name"]) for o in expose_istiod(revision or control_plane_revision(d.operator))]
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

