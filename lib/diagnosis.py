"""Why a pair of clusters does not answer, explained from status's one judgment of the mesh.

status judges every cluster once (lib/status.py, its findings from lib/assess.py) and reports each flaw
as a registered check (lib/checks.py). verify does not judge the clusters again: a pair's cause is a
problem status reported, found by its check and the cluster (and peer) it is about, restated for the
pair and linked back to it (``status_problems``), so status and verify name the same cause for the
same broken mesh. What only traffic shows (pods, sidecars, the cross-network Gateway, where a
remote's istiod Service leads) is verify's own. Pure: no programs, no files.

Causes follow each cluster's role (lib/mesh.py): a remote has no istiod of its own. Its sidecars are
injected and configured by its primary's istiod, reached through the remote's istiod Service and the
primary's east-west gateway; that istiod gives them the endpoints of what it has synced, and signs
their certificates with the primary's cacerts. So the remote secrets, istiod's view and cacerts that
explain a remote's pair are its primary's, and a primary that fails its remote is named as the cause.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from . import gateway_causes as network
from .assess import SecretState
from .causes import (CACERTS_UNTRUSTED, ISTIOD_DOWN, ISTIOD_SERVICE, NOT_SYNCED, PRIMARY_LACKS_SECRET, SECRET_FLAW_STATES,
                     SECRET_FLAWS, ZTUNNEL_DOWN, Cause, Findings, Pair)
from .config import Cluster, Topology
from .mesh import Member, Mesh
from .names import ISTIO_NAMESPACE
from .traffic import ClusterRun, mesh_label_text

if TYPE_CHECKING:  # status's report, read here; status never imports verify
    from .statusreport import MeshStatus


@dataclass
class Facts:
    """What status reported, and what verify read besides."""

    status: MeshStatus  # status's one reading and judgment of every cluster
    exposes_local: dict[str, bool | None]  # cluster name -> a Gateway in istio-system exposes *.local on 15443
    mesh: Mesh  # each cluster's role and data plane
    istiod_addresses: dict[str, str | None] = field(default_factory=dict)  # remote's name -> where its istiod Service leads


# --- judging -----------------------------------------------------------------------------------------

def judge(topology: Topology, runs: dict[str, ClusterRun], facts: Facts, hints: Any) -> tuple[list[Pair], list[Cause]]:
    mesh = facts.mesh
    found = Findings(facts.status)
    planes = {c.context: control_plane_causes(mesh, mesh.member(c.context), found, hints, facts.istiod_addresses)
              for c in topology.clusters}
    problems: list[Cause] = []
    for cluster in topology.clusters:
        problems += cluster_problems(cluster, runs.get(cluster.context) or ClusterRun(), planes[cluster.context],
                                     hints)
    pairs = []
    for src in topology.clusters:
        run = runs.get(src.context) or ClusterRun()
        for dst in topology.clusters:
            count = run.answered_by.get(dst.name, 0)
            pair = Pair(src.name, dst.name, count > 0, count)
            if not pair.reached:
                pair.causes = pair_causes(src, dst, runs, found, facts, mesh, planes, hints)
            pairs.append(pair)
    return pairs, problems


def cluster_problems(cluster: Cluster, run: ClusterRun, plane_causes: list[Cause], hints: Any) -> list[Cause]:
    """What went wrong in one cluster rather than one pair: a step, a pod. A cluster whose control plane
    is known not to serve it: that is where the hint looks first."""
    if run.error:
        return [Cause("step_failed", f"{cluster.name}: {run.error}",
                      f"re-run verify; {hints.apply} if the cluster is not set up")]
    problems = []
    plane = plane_causes[0] if plane_causes else None
    for what, pod in (("curl client", run.client), ("helloworld", run.server)):
        if not run.applied or pod is None or pod.ready:
            continue
        if not pod.created:
            look = f"look at its Deployment with `{hints.kubectl(cluster, 'describe', 'deployment', '-n', hints.namespace, pod.name)}`"
            problems.append(Cause("pod_missing", f"{cluster.name}: no {what} pod was created: {pod.reason}",
                                  f"{plane.message}; {plane.hint}" if plane else look))
            continue
        look = (f"look at it with `{hints.kubectl(cluster, 'describe', 'pod', '-n', hints.namespace, pod.name)}`"
                "; for images from a mirror use --registry and the tag options")
        problems.append(Cause("pod_not_ready", f"{cluster.name}: the {what} pod {pod.name} is not ready: {pod.reason}",
                              f"{plane.message}; {plane.hint}" if plane else look))
    return problems


def control_plane_causes(mesh: Mesh, member: Member, found: Findings, hints: Any,
                         istiod_addresses: dict[str, str | None] | None = None) -> list[Cause]:
    """Why the control plane that injects and configures ``member``'s sidecars does not serve it, as
    status reports it: its own istiod for a primary; for a remote, its primary's istiod, which must hold
    the remote's secret and be reachable through the primary's east-west gateway. Either way the
    cluster's own istiod Service must lead there."""
    causes = []
    service = found.problem(member.name, ISTIOD_SERVICE)  # the cluster's own Service leads its pods nowhere
    if service is not None:
        causes.append(found.cause(member, service.code, service, f"{member.name}: {service.message}"))
    plane = mesh.control_plane_of(member)
    if found.read(plane.name) is None:
        return causes
    pods = f"`{hints.kubectl(plane.cluster, 'get', 'pods', '-n', ISTIO_NAMESPACE, '-l', 'app=istiod')}`"
    down = found.problem(plane.name, ISTIOD_DOWN)
    if member.is_primary:
        if down is not None:
            # ambient: ztunnel fetches its configuration from istiod (its XDS_ADDRESS); no injector is involved
            what = ("its ztunnel gets no configuration, so calls from the cluster's pods cannot connect"
                    if hints.ambient else "its injector refuses new pods and its sidecars get no configuration")
            causes.append(found.cause(member, "istiod_not_ready", down,
                                      f"{member.name}'s istiod has no ready replica: {what}",
                                      f"look at its pods: {pods}"))
        return causes
    remote, primary = member.name, plane.name
    if down is not None:
        causes.append(found.cause(plane, "primary_istiod_not_ready", down,
                                  f"{remote} is a remote of {primary}, whose istiod has no ready replica: "
                                  f"{remote}'s injector refuses new pods and its sidecars get no configuration",
                                  f"look at {primary}'s istiod pods: {pods}"))
    causes += _primary_reads_remote(mesh, member, found, hints)
    causes += _way_to_primary(member, plane, found, hints, (istiod_addresses or {}).get(remote))
    return causes


def _primary_reads_remote(mesh: Mesh, member: Member, found: Findings, hints: Any) -> list[Cause]:
    """The primary holds the remote's current secret (status: primary_lacks_secret on the remote), and its
    istiod has synced the remote (status: remote_cluster_* on the primary about the remote)."""
    remote, plane = member.name, mesh.control_plane_of(member)
    primary = plane.name
    lacks = found.problem(remote, PRIMARY_LACKS_SECRET)
    if lacks is not None:
        flaw = found.problem(primary, frozenset(SECRET_FLAWS.values()), peer=remote)
        state = SECRET_FLAW_STATES[flaw.code] if flaw is not None else SecretState.MISSING
        held = hints.kubectl(plane.cluster, "get", "secrets", "-n", ISTIO_NAMESPACE, "-l", "istio/multiCluster=true")
        hint = (flaw.hint if flaw is not None and state is not SecretState.MISSING else
                f"{hints.apply} creates it in {primary} again (`{held}` lists the secrets {primary} holds)")
        word = found.read(primary).remote_secrets.get(remote, "missing")
        return [found.cause(member, "primary_lacks_secret", lacks,
                            f"{primary}, the primary of {remote}, holds no current remote secret of {remote} "
                            f"({word}): {primary}'s istiod does not configure {remote}'s sidecars", hint)]
    synced = found.problem(primary, NOT_SYNCED, peer=remote)
    if synced is None:
        return []
    word = (found.read(primary).remote_clusters or {}).get(remote)
    return [found.cause(plane, "primary_not_synced", synced,
                        f"{primary}'s istiod reports its remote {remote} as {word}: it does not configure "
                        f"{remote}'s sidecars")]


def _way_to_primary(member: Member, plane: Member, found: Findings, hints: Any, leads_to: str | None) -> list[Cause]:
    """A remote reaches its primary's istiod through the primary's east-west gateway: at the address the
    remote was installed with (its istiod Service's EndpointSlice), which must be the gateway's now."""
    remote, primary = member.name, plane.name
    address = found.read(primary).gateway_address
    if address and leads_to and leads_to != address:
        return [Cause("primary_address_changed", f"{remote}'s istiod Service leads to {leads_to}, but {primary}'s "
                                                 f"east-west gateway is at {address} now: {remote}'s injector and "
                                                 f"sidecars cannot reach their control plane",
                      f"{hints.apply} installs {remote} again with {primary}'s current address")]
    no_address = found.problem(primary, network.GATEWAY_NO_ADDRESS)
    if no_address is None:
        return []
    return [found.cause(plane, "primary_gateway_no_address", no_address,
                        f"{remote} reaches {primary}'s istiod through {primary}'s east-west gateway, which has no "
                        f"address: {remote}'s injector and sidecars cannot reach their control plane")]


def pair_causes(src: Cluster, dst: Cluster, runs: dict[str, ClusterRun], found: Findings, facts: Facts, mesh: Mesh,
                planes: dict[str, list[Cause]], hints: Any) -> list[Cause]:
    src_run, dst_run = runs.get(src.context) or ClusterRun(), runs.get(dst.context) or ClusterRun()
    if src_run.error or dst_run.error:
        return [Cause("step_failed", f"verify could not run in {src.name if src_run.error else dst.name}",
                      "see the problems above")]
    # The control planes first: a cluster whose sidecars nobody configures explains everything else.
    causes = list(dict.fromkeys(planes[src.context] + planes[dst.context]))
    not_ready = _pods_not_ready(src, dst, src_run, dst_run)
    if not_ready is not None:
        return causes + [not_ready]
    local = _local_causes(mesh, src, dst, src_run, found, hints, causes)
    if local is not None:
        return local
    if not hints.ambient:
        causes += sidecar_causes(mesh, src, dst, src_run, dst_run, hints)
    causes += peer_causes(mesh, src, dst, found, planes)
    causes += cacerts_causes(mesh, src, dst, found)
    if src.network != dst.network:
        causes += network.gateway_causes(src, dst, mesh, found, facts.exposes_local, hints)
    if not causes:
        causes.append(Cause("unknown", f"no answer from {dst.name} ({'; '.join(src_run.failures) or 'other clusters answered'}), "
                                       f"and nothing status reads explains it", _unknown_hint(src, hints)))
    return causes


def _local_causes(mesh: Mesh, src: Cluster, dst: Cluster, src_run: ClusterRun, found: Findings, hints: Any,
                  causes: list[Cause]) -> list[Cause] | None:
    """ztunnel (ambient), then a cluster's call to itself: the causes of a pair within one cluster (None:
    look further, at what lies between the two)."""
    if hints.ambient:
        causes += [c for c in ztunnel_causes(mesh, src, dst, found, hints) if c not in causes]
        if causes and src == dst:
            return causes
    if src != dst:
        return None
    return causes + [Cause("local_call_failed", f"{src.name} does not reach its own helloworld: "
                                                f"{'; '.join(src_run.failures) or 'no answer'}",
                           f"check the Service and its endpoints: `{hints.kubectl(src, 'get', 'endpoints', 'helloworld', '-n', hints.namespace)}`")]


def _pods_not_ready(src: Cluster, dst: Cluster, src_run: ClusterRun, dst_run: ClusterRun) -> Cause | None:
    """A pair whose client or helloworld is not ready was not tested: its pod's problem says why."""
    if src_run.client is None or not src_run.client.ready:
        missing = src_run.client is not None and not src_run.client.created
        return Cause("client_not_ready", f"the curl client in {src.name} "
                                         f"{'was never created' if missing else 'is not ready'}, so nothing was "
                                         f"called from it", f"see why under {src.name}'s pods above")
    if dst_run.server is None or not dst_run.server.ready:
        missing = dst_run.server is not None and not dst_run.server.created
        return Cause("helloworld_not_ready", f"helloworld in {dst.name} "
                                             f"{'was never created' if missing else 'is not ready'}",
                     f"see why under {dst.name}'s pods above")
    return None


def ztunnel_causes(mesh: Mesh, src: Cluster, dst: Cluster, found: Findings, hints: Any) -> list[Cause]:
    """Ambient: the node's ztunnel takes every call of the pods istio-cni redirects to it, and ends the HBONE
    calls to them; without it the caller cannot connect and the answering pod takes no call from afar.
    As status reads it (the ztunnel DaemonSet in istio-system)."""
    causes = []
    for cluster in dict.fromkeys([src, dst]):
        problem = found.problem(cluster.name, ZTUNNEL_DOWN)
        if problem is None:
            continue
        counts = found.read(cluster.name).ztunnel
        what = "is missing" if counts is None else f"is not ready ({counts[0]} of {counts[1]} pods ready)"
        look = hints.kubectl(cluster, "get", "daemonsets", "-n", ISTIO_NAMESPACE, "-l", "app.kubernetes.io/name=ztunnel")
        causes.append(found.cause(mesh.member(cluster.context), "ztunnel_not_ready", problem,
                                  f"{cluster.name}'s ztunnel {what}: its pods neither call nor take calls "
                                  f"across the mesh", f"{problem.hint}; look at it: `{look}`"))
    return causes


def sidecar_causes(mesh: Mesh, src: Cluster, dst: Cluster, src_run: ClusterRun, dst_run: ClusterRun,
                   hints: Any) -> list[Cause]:
    causes = []
    for cluster, pod, name, what in ((src, src_run.client, "curl", f"its calls stay in {src.name}"),
                                     (dst, dst_run.server, "helloworld",
                                      "it cannot take mTLS calls from other clusters")):
        if pod.sidecar:
            continue
        member = mesh.member(cluster.context)
        calls = "" if member.is_primary else f", which calls {mesh.control_plane_of(member).name}'s istiod"
        causes.append(Cause("sidecar_missing", f"the {name} pod in {cluster.name} has no istio-proxy sidecar: {what}",
                            f"the namespace is labelled {mesh_label_text(hints.revision)}; check that "
                            f"{cluster.name}'s injector (`{hints.kubectl(cluster, 'get', 'mutatingwebhookconfigurations')}`"
                            f"{calls}) matches it"))
    return causes


def peer_causes(mesh: Mesh, src: Cluster, dst: Cluster, found: Findings, planes: dict[str, list[Cause]]) -> list[Cause]:
    """The client's sidecar gets its endpoints from its control plane (a remote's: its primary's istiod),
    which must read the answering cluster (unless it runs there): status's finding of the secret it holds
    of that peer, then of what its istiod reports about it."""
    src_plane, dst_plane = mesh.control_plane_of(mesh.member(src.context)), mesh.control_plane_of(mesh.member(dst.context))
    told = {"primary_lacks_secret", "primary_not_synced"}
    known = dst_plane.context == src_plane.context and any(c.code in told for c in planes[dst.context])
    if dst.context == src_plane.context or known or found.read(src_plane.name) is None:
        return []
    holder = src_plane.name
    whose = "" if src_plane.context == src.context else f" (the control plane of {src.name})"
    flaw = found.problem(holder, frozenset(SECRET_FLAWS.values()), peer=dst.name)
    if flaw is not None:
        message = {SecretState.MISSING: f"{holder}{whose} holds no remote secret of {dst.name}",
                   SecretState.LOOPBACK: f"{holder}'s{whose} remote secret of {dst.name} names a loopback API server",
                   SecretState.OUTDATED: f"{holder}'s{whose} remote secret of {dst.name} carries credentials "
                                         f"{dst.name} no longer issues"}[SECRET_FLAW_STATES[flaw.code]]
        return [found.cause(src_plane, flaw.code, flaw, message)]
    synced = found.problem(holder, NOT_SYNCED, peer=dst.name)
    if synced is None:
        return []
    word = (found.read(holder).remote_clusters or {}).get(dst.name)
    return [found.cause(src_plane, "peer_not_synced", synced, f"{holder}'s istiod{whose} reports {dst.name} as {word}")]


def cacerts_causes(mesh: Mesh, src: Cluster, dst: Cluster, found: Findings) -> list[Cause]:
    """Workload certificates are signed with the cacerts of the cluster whose istiod issues them: status's
    finding that one of the two signers' cacerts does not chain to the workspace's root."""
    signers = dict.fromkeys(mesh.control_plane_of(mesh.member(c.context)) for c in (src, dst))
    untrusted = [(m, p) for m in signers if (p := found.problem(m.name, CACERTS_UNTRUSTED)) is not None]
    if not untrusted:
        return []
    names = " and ".join(m.name for m, _ in untrusted)
    signed = [mesh.member(r).name for m, _ in untrusted for r in m.remotes]
    also = f" (and of its remotes {', '.join(signed)})" if signed else ""
    hint = "; ".join(dict.fromkeys(f"{m.name}: {p.hint}" if len(untrusted) > 1 else p.hint for m, p in untrusted))
    return [Cause("cacerts_other_root", f"the cacerts of {names} does not chain to the mesh's root: the workloads "
                                        f"whose certificates it signs{also} are not trusted across the mesh",
                  hint, tuple((m.context, p.code) for m, p in untrusted))]


def _unknown_hint(src: Cluster, hints: Any) -> str:
    """Where to look next: what the client's proxy knows (ztunnel in an ambient mesh, else its sidecar)."""
    if hints.ambient:
        return (f"look at what {src.name}'s ztunnel knows: `istioctl ztunnel-config services --context {src.context}"
                f" | grep helloworld` and `istioctl ztunnel-config workloads --context {src.context}`, and at "
                f"{hints.status}")
    return (f"look at what the client's sidecar knows: `istioctl proxy-config endpoint deploy/curl.{hints.namespace} "
            f"--context {src.context} | grep helloworld`, and at {hints.status}")
