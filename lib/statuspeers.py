"""status, judging the peers: the remote secrets each cluster holds, what its istiod reports about its
remote clusters, and a remote's wiring to its primary (injection path, trusted injector, its secret there)."""
from __future__ import annotations

from . import invocation
from .assess import SecretFinding, SecretState, WiringFinding, assess_wiring
from .checks import LOCAL, MISSING, OUTDATED, PRESENT, STALE, SYNCED, UNNEEDED, WARNING
from .config import Cluster, Topology
from .kube import Observed
from .mesh import Mesh
from .names import CONTROL_PLANE_CLUSTERS, ISTIO_NAMESPACE
from .statusread import InjectorWebhook, IstiodView
from .statusreport import ClusterStatus, Hints, Problem, short_error


def judge_remotes(mesh: Mesh, result: list[ClusterStatus], injection: dict[str, "InjectorWebhook"],
                  hints: Hints) -> None:
    """A remote: istio-system names its primary, its injector calls its own path and is trusted, its primary
    holds its secret."""
    by_context = {s.cluster.context: s for s in result}
    for member in mesh.members:
        status = by_context[member.context]
        if not member.is_remote or not status.reachable:
            continue
        primary = mesh.control_plane_of(member)
        status.primary = primary.context
        add = status.problems.append
        webhook = injection.get(member.context) or InjectorWebhook()
        wiring = assess_wiring(mesh, member, status.annotations, frozenset(), webhook.path, webhook.trusted)
        want = wiring.want_path
        if not wiring.path_right and status.istio_installed:
            add(Problem("injection_path_wrong", f"the sidecar injector calls {webhook.path or 'no path'}, "
                                                f"not {want}: new pods would get another cluster's or network's "
                                                f"identity", hints.apply))
        held = by_context[primary.context].remote_secrets.get(member.name)
        lacks = by_context[primary.context].reachable and held != PRESENT
        if lacks:
            add(Problem("primary_lacks_secret", f"its primary {primary.context} does not hold a current remote "
                                                f"secret of {member.name} ({held}): {primary.context}'s istiod "
                                                f"cannot configure this cluster", hints.apply))
        if webhook.trusted is False and status.istio_installed:
            add(_untrusted_injector(member.cluster, primary, wiring, lacks, hints))


def _untrusted_injector(cluster: Cluster, primary, wiring: WiringFinding, lacks: bool, hints: Hints) -> Problem:
    """The remote's injector webhook has no caBundle: kube-apiserver refuses every pod it selects (gateway
    pods included), and says why. Only the primary's istiod patches it (Istio's
    pilot/pkg/serviceregistry/kube/controller/multicluster.go), once it holds this cluster's secret and this
    cluster's istio-system names it in topology.istio.io/controlPlaneClusters."""
    if lacks:
        cause = f"{primary.context} does not hold this cluster's current remote secret"
    elif not wiring.names_control_plane:
        cause = (f"namespace {ISTIO_NAMESPACE} names {wiring.named or 'no control plane'} in {CONTROL_PLANE_CLUSTERS}, "
                 f"not {primary.name}")
    else:
        cause = f"{primary.context}'s istiod has not patched it yet (is it running, and has it synced this cluster?)"
    see = hints.kubectl(cluster, "get", "mutatingwebhookconfiguration", "-l", "app=sidecar-injector", "-o",
                        "jsonpath={.items[*].webhooks[*].clientConfig.caBundle}")
    return Problem("injector_untrusted",
                   f"the sidecar injector's webhook has no caBundle, so the API server refuses new pods here "
                   f"(x509: certificate signed by unknown authority), the east-west gateway's included: {cause}",
                   f"{hints.apply} (its primary imports this cluster's secret before its gateway is installed); "
                   f"check with `{see}`")


# What istiod reports for a peer -> (problem code, hint).
_NOT_SYNCED = {
    "timeout": ("remote_cluster_timeout", "istiod cannot reach {peer}'s API server at the address in the secret, or {peer} refuses its "
               "credentials: check that this cluster reaches {server} ({api_server}), then {apply}; istiod's log "
               "says more: `{logs}`"),
    "syncing": ("remote_cluster_syncing", "istiod is still reading {peer}: wait a moment and check again with `{wait}`"),
    "closed": ("remote_cluster_closed", "istiod stopped watching {peer} (its secret was removed or replaced): {apply}"),
}
_NOT_LOADED = ("remote_cluster_not_loaded", "istiod has not loaded {peer}'s secret: check again in a moment, then {apply}")


def judge_istiod_view(status: ClusterStatus, view: IstiodView | None, topology: Topology, hints: Hints,
                      reachable: set[str]) -> None:
    """One problem per peer istiod does not report synced, unless a cause is already named (the peer's
    secret is missing, local or outdated, or the peer cannot be read at all)."""
    if view is None or not status.reachable:
        return
    if view.error:
        status.problems.append(Problem("istiod_view_unreadable", f"`istioctl remote-clusters` failed: "
                                                                 f"{short_error(view.error)}",
                                       f"check istiod with `{hints.kubectl(status.cluster, 'get', 'pods', '-n', ISTIO_NAMESPACE, '-l', 'app=istiod')}`",
                                       severity=WARNING))
        return
    remotes = view.remotes or {}
    status.remote_clusters = {p.name: remotes.get(p.name, "not loaded")
                              for p in topology.clusters if p is not status.cluster}
    for peer in topology.clusters:
        if peer is status.cluster:
            continue
        state = status.remote_clusters[peer.name]
        if state == SYNCED or status.remote_secrets.get(peer.name) != PRESENT or peer.name not in reachable:
            continue
        code, hint = _NOT_SYNCED.get(state, _NOT_LOADED)
        hint = hint.format(
            peer=peer.name, server=peer.remote_server or "the address in the secret",
            api_server=f"api_server: for {peer.context} in {hints.topology_file}", apply=hints.apply,
            wait=invocation.command("status", "--wait"),
            logs=hints.kubectl(status.cluster, "logs", "-n", ISTIO_NAMESPACE, "deploy/istiod"))
        status.problems.append(Problem(code, f"istiod reports remote cluster {peer.name} as {state}", hint,
                                       peer=peer.name))


def report_secret(status: ClusterStatus, cluster: Cluster, seen: Observed, finding: SecretFinding, hints: Hints,
                  set_up: bool, topology: Topology) -> None:
    """One remote secret's finding as the peer matrix shows it, and as a problem unless present."""
    add, state, peer = status.problems.append, finding.state, finding.peer
    info = seen.remote_secrets.get(peer)
    status.remote_secrets[peer] = _SECRET_WORDS[state]
    if state in (SecretState.UNNEEDED, SecretState.STALE):
        status.stale_secrets.append(finding.secret)
    if state is SecretState.UNNEEDED:
        add(Problem("remote_secret_unneeded", f"a remote holds no remote secret, and this one holds {finding.secret}",
                    f"{hints.apply} (prunes it)", severity=WARNING))
    elif state is SecretState.STALE:
        add(Problem("remote_secret_stale", f"remote secret {finding.secret} gives access to cluster {peer}, which is "
                                           f"not in topology.yaml",
                    f"{hints.apply} (prunes it), or `{hints.kubectl(cluster, 'delete', 'secret', '-n', ISTIO_NAMESPACE, finding.secret)}`"))
    elif state is SecretState.MISSING and set_up:  # a cluster that is not set up at all is reported once
        add(Problem("remote_secret_missing", f"no remote secret of {peer}: this cluster cannot discover "
                                             f"{peer}'s endpoints", hints.apply, peer=peer))
    elif state is SecretState.LOOPBACK:
        other = topology.by_context(finding.context)
        if other.api_server and not other.server_is_local:
            hint = f"{hints.apply} (replaces it with one naming {other.api_server})"
        else:
            hint = f"set api_server: for {other.context} in {hints.topology_file}, then {hints.apply}"
        add(Problem("remote_secret_local", f"the remote secret of {peer} ({info.name}) names the API server "
                                           f"{info.server}, which this cluster cannot reach", hint, peer=peer))
    elif state is SecretState.OUTDATED:
        add(Problem("remote_secret_outdated", f"the remote secret of {peer} ({info.name}) does not carry the "
                                              f"credentials {peer} issues now (its reader token changed, or the "
                                              f"secret was not made by setup-mesh)", hints.apply, peer=peer))


# A secret's finding in the peer matrix and the JSON document.
_SECRET_WORDS = {SecretState.PRESENT: PRESENT, SecretState.MISSING: MISSING, SecretState.OUTDATED: OUTDATED,
                 SecretState.LOOPBACK: LOCAL, SecretState.UNNEEDED: UNNEEDED, SecretState.STALE: STALE}
