"""status, judging: what the clusters hold, as read, against what the workspace says (lib/statusinputs.py),
as a :class:`MeshStatus`. Runs nothing."""
from __future__ import annotations

import datetime as dt

from cryptography import x509

from . import certs, invocation
from .ambient import gateway_status
from .assess import (GatewayState, LabelState, SecretFinding, SecretState, WiringFinding, assess_gateway,
                     assess_install, assess_namespace, assess_secrets, assess_wiring, issued_credentials)
from .checks import LOCAL, MISSING, OUTDATED, PRESENT, STALE, SYNCED, WARNING
from .config import AMBIENT, SIDECAR, Cluster, Topology
from .gatewayapi import offline_crds_hint, expected_version, older_than_needed
from .invocation import prep_hint
from .kube import GATEWAY_RESOURCE, Observed
from .mesh import Mesh
from .names import CONTROL_PLANE_CLUSTERS, EASTWEST_NAME, ISTIO_NAMESPACE, NETWORK_LABEL
from .statuscerts import judge_cacerts, judge_istiod_roots, judge_roots, load_cert, transition_summary
from .desired import Desired
from .statusinputs import Expected
from .statusread import ZTUNNEL, InjectorWebhook, Istiod, IstiodView
from .statusreport import ClusterStatus, Hints, MeshStatus, Problem, short_error


def evaluate(ws: Expected, observed: dict[str, Observed], istiod: dict[str, Istiod],
             now: dt.datetime | None = None, views: dict[str, IstiodView] | None = None,
             injection: dict[str, "InjectorWebhook"] | None = None,
             published: dict[str, bytes | None] | None = None) -> MeshStatus:
    """What the clusters show against what the workspace says. Runs nothing. ``published``: context -> the
    root bundle its istiod publishes (istio-ca-root-cert), for the clusters where it was read."""
    now = now or dt.datetime.now(dt.timezone.utc)
    topology = ws.topology
    hints = Hints(ws.workdir, topology)
    root = load_cert(ws.root_pem)
    root_fp = certs.read_cert(ws.root_pem).fingerprint if root is not None else None
    mesh_problems: list[Problem] = []
    if ws.root_pem is None:
        mesh_problems.append(Problem("root_ca_missing",
                                     f"the mesh's root CA {ws.workdir / certs.CERTS_DIR / certs.ROOT_CERT} is missing: "
                                     "no cluster's cacerts can be checked against it", prep_hint()))
    elif root is None:
        mesh_problems.append(Problem("root_ca_unreadable",
                                     f"{ws.workdir / certs.CERTS_DIR / certs.ROOT_CERT} is not a PEM certificate",
                                     f"restore it from a backup, or start a new root with `rm -r {hints.path(certs.CERTS_DIR)}` "
                                     f"and {prep_hint()} (every cluster then gets a new intermediate CA on apply)"))
    names = {c.name for c in topology.clusters}
    # The credentials each cluster issues now (None when it could not be read): older copies are outdated.
    current = issued_credentials(ws.mesh, {ctx: seen for ctx, seen in observed.items() if seen.reachable})
    result = []
    for cluster in topology.clusters:
        seen = observed.get(cluster.context) or Observed(reachable=False, error="not read")
        result.append(_judge(cluster, seen, istiod.get(cluster.context) or Istiod(), ws, hints, root, root_fp,
                             names, now, current))
    reachable = {c.name for c in topology.clusters if (observed.get(c.context) or Observed()).reachable}
    for status in result:
        _judge_istiod_view(status, (views or {}).get(status.cluster.context), topology, hints, reachable)
    _judge_remotes(ws.mesh, result, injection or {}, hints)
    for status in result:
        if status.cluster.context in (published or {}):
            judge_istiod_roots(status, observed[status.cluster.context], published[status.cluster.context], ws,
                                hints)
    root_info = judge_roots(ws, root, now, hints, mesh_problems)
    transition = transition_summary(ws, result, observed, hints)
    return MeshStatus(topology.mesh_id, root_fp, result, mesh_problems, root_info, transition)


def _judge_remotes(mesh: Mesh, result: list[ClusterStatus], injection: dict[str, "InjectorWebhook"],
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
        status.injection_path = webhook.path
        status.injector_trusted = webhook.trusted
        if not wiring.path_right and status.istio_installed:
            add(Problem("injection_path_wrong", f"the sidecar injector calls {status.injection_path or 'no path'}, "
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


def _judge_istiod_view(status: ClusterStatus, view: IstiodView | None, topology: Topology, hints: Hints,
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


def _report_secret(status: ClusterStatus, cluster: Cluster, seen: Observed, finding: SecretFinding, hints: Hints,
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
                 SecretState.LOOPBACK: LOCAL, SecretState.UNNEEDED: STALE, SecretState.STALE: STALE}


def _judge(cluster: Cluster, seen: Observed, istiod: Istiod, ws: Expected, hints: Hints,
           root: x509.Certificate | None, root_fp: str | None, names: set[str], now: dt.datetime,
           current: dict[str, str | None]) -> ClusterStatus:
    topology = ws.topology
    member = ws.mesh.member(cluster.context)
    status = ClusterStatus(cluster, reachable=seen.reachable, gateway_required=member.eastwest,
                           ambient=ws.data_plane == AMBIENT)
    status.annotations = dict(seen.annotations or {})
    add = status.problems.append
    if not seen.reachable:
        status.error = seen.error
        add(Problem("unreachable", f"cannot read the cluster: {short_error(seen.error)}",
                    f"check access with `{hints.kubectl(cluster, 'get', 'ns')}`, or remove the context from "
                    f"{hints.topology_file}"))
        return status

    # istio-system, its network label, Istio itself
    status.network_label = seen.network_label
    if istiod.read:
        status.istio_installed = istiod.installed
        status.istio_version = istiod.version
        status.istio_ready = istiod.ready
    desired = ws.desired[cluster.context]
    namespace = assess_namespace(seen, desired)
    set_up = namespace.exists
    if not namespace.exists:
        add(Problem("namespace_missing", f"namespace {ISTIO_NAMESPACE} does not exist: the cluster is not set up",
                    hints.apply))
    else:
        if namespace.label is LabelState.MISSING:
            add(Problem("network_label_missing",
                        f"namespace {ISTIO_NAMESPACE} has no {NETWORK_LABEL} label (expected {cluster.network})",
                        f"{hints.apply} (labels {ISTIO_NAMESPACE} {NETWORK_LABEL}={cluster.network})"))
        elif namespace.label is LabelState.WRONG:
            add(Problem("network_label_wrong",
                        f"namespace {ISTIO_NAMESPACE} is labelled {NETWORK_LABEL}={seen.network_label}, "
                        f"topology.yaml says {cluster.network}",
                        f"{hints.apply} (relabels it), or set network: {seen.network_label} for {cluster.context} "
                        f"in {hints.topology_file} if that is the right network"))
    if member.is_remote:
        # No istiod of its own: the remote profile installs a Service leading to the primary's istiod.
        status.istio_installed = seen.istiod_service
        status.istio_version = "remote" if seen.istiod_service else None
        status.istio_ready = None
        control_plane = ws.mesh.control_plane_of(member).name
        if set_up and not seen.istiod_service:
            add(Problem("istio_missing", f"Istio's remote install is missing (no istiod Service leading to "
                                         f"{control_plane}'s istiod)", hints.apply))
        if set_up and not assess_wiring(ws.mesh, member, seen.annotations, frozenset()).names_control_plane:
            add(Problem("control_plane_annotation_wrong",
                        f"namespace {ISTIO_NAMESPACE} has {CONTROL_PLANE_CLUSTERS}="
                        f"{seen.annotations.get(CONTROL_PLANE_CLUSTERS) or '(none)'}, want {control_plane}: "
                        f"{control_plane}'s istiod does not configure this cluster", hints.apply))
    elif not istiod.read:
        add(Problem("istio_unreadable", f"cannot read the istiod Deployment: {istiod.error or 'no answer'}",
                    f"check with `{hints.kubectl(cluster, 'get', 'deployment', '-n', ISTIO_NAMESPACE)}`"))
    elif not istiod.installed and set_up:
        add(Problem("istio_missing", f"Istio is not installed (no {ws.istiod_deployment} Deployment in "
                                     f"{ISTIO_NAMESPACE})", hints.apply))
    elif istiod.installed and not istiod.ready:
        add(Problem("istiod_not_ready", f"the {ws.istiod_deployment} Deployment has no ready replica",
                    f"look at its pods: `{hints.kubectl(cluster, 'get', 'pods', '-n', ISTIO_NAMESPACE, '-l', 'app=istiod')}`"))
    if istiod.installed and istiod.cluster_id and istiod.cluster_id != cluster.name:
        add(Problem("cluster_name_wrong", f"istiod runs as cluster {istiod.cluster_id}, topology.yaml names it "
                                          f"{cluster.name}", hints.apply))

    if set_up and CONTROL_PLANE_CLUSTERS in namespace.annotations_left:
        # honoured by an istiod with EXTERNAL_ISTIOD (pilot/pkg/serviceregistry/kube/controller/multicluster.go)
        add(Problem("control_plane_annotation_left",
                    f"namespace {ISTIO_NAMESPACE} of this primary still has {CONTROL_PLANE_CLUSTERS}="
                    f"{seen.annotations[CONTROL_PLANE_CLUSTERS]}: that cluster's istiod also patches this "
                    f"cluster's injector webhook while it holds this cluster's secret", f"{hints.apply} (removes it)"))
    _judge_istiod_service(status, cluster, member.is_remote, seen, ws, hints)

    # cacerts
    judge_cacerts(status, cluster, seen, ws, hints, root, root_fp, set_up, now)

    # east-west gateway
    if ws.data_plane == AMBIENT:
        _judge_ambient_gateway(status, cluster, seen, istiod, hints, set_up, desired)
        _judge_ztunnel(status, cluster, seen, hints, set_up)
    else:
        gateway = assess_gateway(seen, desired)
        status.gateway_exists = gateway.present
        status.gateway_address = gateway.address
        if gateway.wanted and set_up:
            if gateway.state is GatewayState.MISSING:
                add(Problem("gateway_missing", f"the east-west gateway ({EASTWEST_NAME}) is not installed; "
                                               f"topology.yaml has {len(topology.networks)} networks", hints.apply))
            elif not gateway.address:
                add(Problem("gateway_pending", f"the east-west gateway service {EASTWEST_NAME} has no address yet",
                            f"check its LoadBalancer with `{hints.kubectl(cluster, 'get', 'service', EASTWEST_NAME, '-n', ISTIO_NAMESPACE)}`"
                            f"; clusters without a load balancer need one (e.g. MetalLB) or spec.externalIPs"))

    # remote secrets: a primary holds every other cluster's, a remote none (judged as the plan judges them)
    for finding in assess_secrets(ws.mesh, member, seen, current):
        _report_secret(status, cluster, seen, finding, hints, set_up, topology)

    # drift: what is installed against what apply would install now
    if set_up:
        install = assess_install(seen, ws.fingerprints.get(cluster.context))
        status.drift = install.drift
        if status.drift and status.istio_installed:
            if install.recorded is None:
                message = (f"{ISTIO_NAMESPACE} carries no record of what setup-mesh installed "
                           f"(installed by hand, or apply did not finish)")
            else:
                message = "the installation differs from what topology.yaml and base.yaml describe now"
            add(Problem("drift", message, f"preview with `{hints.dry_run}`, then {hints.apply}"))
    return status


# A cluster's istiod Service that leads its new pods and sidecars nowhere (verify names these as the cause).
ISTIOD_SERVICE_PROBLEMS = ("istiod_service_selects_pods", "istiod_service_selects_nothing")


def _judge_istiod_service(status: ClusterStatus, cluster: Cluster, remote: bool, seen: Observed, ws: Expected,
                          hints: Hints) -> None:
    """Where the istiod Service sends the injector's calls and the sidecars: a Service with a selector gets
    the endpoints of the pods it selects, so a remote's must select nothing (its EndpointSlice leads to the
    primary) and a primary's must select its istiod pods."""
    name = ws.istiod_deployment
    selector = seen.istiod_selectors.get(name)
    if selector is None:
        return
    if remote and selector:
        labels = ",".join(f"{k}={v}" for k, v in sorted(selector.items()))
        remove = hints.kubectl(cluster, "patch", "service", name, "-n", ISTIO_NAMESPACE, "--type", "json", "-p",
                               '[{"op": "remove", "path": "/spec/selector"}]')
        status.problems.append(Problem("istiod_service_selects_pods", (
            f"the {name} Service still selects pods ({labels}), as a primary's does: Kubernetes gives it the "
            f"endpoints of those pods, and no istiod runs here, so the sidecar injector refuses new pods and "
            f"sidecars reach no control plane"),
            f"{hints.apply} installs the remote profile again, which drops the selector; if it stays, another "
            f"field manager set it: `{remove}`"))
    elif not remote and not selector:
        status.problems.append(Problem("istiod_service_selects_nothing", (
            f"the {name} Service selects no pods, as a remote's does: it does not lead to this cluster's istiod, "
            f"so the sidecar injector refuses new pods and sidecars reach no control plane"),
            f"{hints.apply} installs the primary's Service again, with its selector"))


def _judge_ambient_gateway(status: ClusterStatus, cluster: Cluster, seen: Observed, istiod: Istiod, hints: Hints,
                           set_up: bool, desired: Desired) -> None:
    """Ambient: the Gateway API CRDs, and the east-west Gateway as istiod reports it in its status."""
    add = status.problems.append
    crds = seen.gateway_api
    if crds is not None:
        status.gateway_api_crds = (crds.version or "unversioned") if crds.installed else "missing"
        if not crds.installed:
            add(Problem("gateway_api_crds_missing", "the Gateway API CRDs are not installed: ambient multicluster "
                                                    "needs them for its east-west gateway",
                        f"{hints.apply} installs them; {offline_crds_hint()}"))
        else:
            older = older_than_needed(crds, expected_version(istiod.version))
            if older:
                add(Problem("gateway_api_crds_old", older, "upgrade them yourself; setup-mesh leaves CRDs it did "
                                                           "not install alone", severity=WARNING))
    found = assess_gateway(seen, desired)
    status.gateway_exists = found.present
    if not found.present:
        if found.state is GatewayState.MISSING and set_up and (crds is None or crds.installed):
            add(Problem("gateway_missing", f"the east-west Gateway ({EASTWEST_NAME}, class istio-east-west) is "
                                           f"not there; topology.yaml has {len(hints.topology.networks)} "
                                           f"networks", hints.apply))
        return
    reported = gateway_status(seen.eastwest_gateway)
    status.gateway_address = found.address
    status.gateway_programmed = found.programmed
    if found.running == SIDECAR:
        add(Problem("gateway_sidecar_mode", f"service {EASTWEST_NAME} belongs to a sidecar-mode east-west gateway "
                                            f"(an IstioOperator), so istiod cannot deploy the ambient one", hints.apply))
    elif not found.programmed:
        add(Problem("gateway_not_programmed", f"the east-west Gateway is not programmed: {reported.reason}"
                                              + (f" ({reported.message})" if reported.message else ""),
                    f"see istiod's report with `{hints.kubectl(cluster, 'get', GATEWAY_RESOURCE, EASTWEST_NAME, '-n', ISTIO_NAMESPACE, '-o', 'yaml')}`"
                    f"; without an address, check the LoadBalancer of service {EASTWEST_NAME}"))


def _judge_ztunnel(status: ClusterStatus, cluster: Cluster, seen: Observed, hints: Hints, set_up: bool) -> None:
    """Ambient: ztunnel carries every workload's traffic; a node without a ready ztunnel has no mesh."""
    daemonset = seen.daemonsets.get(ZTUNNEL)
    if daemonset is None:
        if set_up and status.istio_installed:
            status.problems.append(Problem("ztunnel_missing", f"the {ZTUNNEL} DaemonSet is not there: ambient "
                                                              f"workloads here have no data plane", hints.apply))
        return
    counts = daemonset.get("status") or {}
    ready, desired = int(counts.get("numberReady") or 0), int(counts.get("desiredNumberScheduled") or 0)
    status.ztunnel = (ready, desired)
    if ready < desired:
        pods = hints.kubectl(cluster, "get", "pods", "-n", ISTIO_NAMESPACE, "-l", "app=ztunnel")
        status.problems.append(Problem("ztunnel_not_ready", f"{ready} of {desired} {ZTUNNEL} pods are ready: "
                                                            f"workloads on the other nodes have no data plane",
                                       f"look at its pods: `{pods}`"))
