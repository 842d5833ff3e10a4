"""status, judging: what the clusters hold, as read, against what the workspace says (lib/statusinputs.py),
as a :class:`MeshStatus`. Runs nothing."""
from __future__ import annotations

import datetime as dt

from . import certs, reissue
from .ambient import gateway_status
from .assess import (CacertsFinding, GatewayState, LabelState, NamespaceFinding, WorkspaceCerts, assess_cluster_cacerts,
                     assess_gateway, assess_install, assess_namespace, assess_secrets, assess_wiring,
                     issued_credentials, missing_objects)
from .checks import WARNING
from .config import AMBIENT, SIDECAR, Cluster
from .desired import Desired
from .gatewayapi import offline_crds_hint, expected_version, older_than_needed
from .invocation import prep_hint
from .kube import GATEWAY_RESOURCE, Observed
from .names import CONTROL_PLANE_CLUSTERS, EASTWEST_NAME, ISTIO_NAMESPACE, NETWORK_LABEL
from .statuscerts import (judge_cacerts, judge_istiod_roots, judge_roots, load_cert, transition_summary,
                          word_other_roots)
from .statusinputs import Expected
from .statuspeers import judge_istiod_view, judge_remotes, report_secret
from .statusread import ZTUNNEL, InjectorWebhook, Istiod, IstiodView
from .statusreport import ClusterStatus, Hints, MeshStatus, Problem, short_error


def evaluate(ws: Expected, observed: dict[str, Observed], istiod: dict[str, Istiod],
             now: dt.datetime | None = None, views: dict[str, IstiodView] | None = None,
             injection: dict[str, "InjectorWebhook"] | None = None,
             published: dict[str, bytes | None] | None = None,
             serving: dict[str, str | None] | None = None, roots_unread: frozenset[str] = frozenset()) -> MeshStatus:
    """What the clusters show against what the workspace says. Runs nothing. ``published``: context -> the
    root bundle its istiod publishes (istio-ca-root-cert), for the clusters where it was read; ``serving``:
    context -> the control-plane revision that serves it (None: base.yaml's), where it was read;
    ``roots_unread``: the clusters where reading the published bundle failed."""
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
    mesh_problems += _unkeyed_intermediates(ws, hints)
    unfinished = reissue.load_rotation(ws.workdir)
    if unfinished is not None:  # its clusters may still run on the intermediates it replaces
        mesh_problems.append(Problem("rotation_unfinished", f"the intermediate rotation started at {unfinished.started} "
                                     f"({', '.join(unfinished.replaced)}) did not finish: clusters may still run on the "
                                     f"intermediates it replaces", f"`{hints.rotate()}` finishes it", severity=WARNING))
    names = {c.name for c in topology.clusters}
    # The credentials each cluster issues now (None when it could not be read): older copies are outdated.
    current = issued_credentials(ws.mesh, {ctx: seen for ctx, seen in observed.items() if seen.reachable})
    pki = ws.cacerts_inputs()  # the workspace's certificates, which each cluster's cacerts is judged against
    result = []
    for cluster in topology.clusters:
        seen = observed.get(cluster.context) or Observed(reachable=False, error="not read")
        result.append(_judge(cluster, seen, istiod.get(cluster.context) or Istiod(), ws, hints, pki, root_fp,
                             names, now, current))
    word_other_roots(result, root_fp, ws, hints)
    reachable = {c.name for c in topology.clusters if (observed.get(c.context) or Observed()).reachable}
    for status in result:
        status.serving_revision = (serving or {}).get(status.cluster.context)
        judge_istiod_view(status, (views or {}).get(status.cluster.context), topology, hints, reachable)
    judge_remotes(ws.mesh, result, injection or {}, hints)
    for status in result:
        if status.cluster.context in (published or {}):
            judge_istiod_roots(status, observed[status.cluster.context], published[status.cluster.context], ws,
                               hints)
        elif status.cluster.context in roots_unread:  # not known: never counted as taken
            status.problems.append(Problem("istiod_roots_unread", "could not read the root bundle istiod publishes "
                                           "(configmap istio-ca-root-cert): whether it took the roots in secret cacerts "
                                           "is not known", "check access with `" + hints.kubectl(
                                               status.cluster, "get", "configmap", "istio-ca-root-cert", "-n",
                                               ISTIO_NAMESPACE) + "`, then run status again", severity=WARNING))
    root_info = judge_roots(ws, root, now, hints, mesh_problems)
    transition = transition_summary(ws, result, observed, hints)
    return MeshStatus(topology.mesh_id, root_fp, result, mesh_problems, root_info, transition)


def _unkeyed_intermediates(ws: Expected, hints: Hints) -> list[Problem]:
    """What apply refuses (certs.intermediate_flaws, as commands.intermediates_refusal words it), said before
    it is run."""
    if not ws.unkeyed:
        return []
    folders = [hints.path(certs.CERTS_DIR, name) for name in sorted(ws.unkeyed)]
    return [Problem("intermediate_key_mismatch",
                    f"{', '.join(f'{f}/ca-key.pem' for f in folders)} is not the key of the intermediate CA beside "
                    f"it (ca-cert.pem): apply refuses it, and istiod would not start on that cacerts",
                    f"`rm -r {' '.join(folders)}`, then {hints.apply} (it issues a new intermediate CA), or put back "
                    f"the ca-key.pem made with it")]


def _judge(cluster: Cluster, seen: Observed, istiod: Istiod, ws: Expected, hints: Hints,
           pki: WorkspaceCerts, root_fp: str | None, names: set[str], now: dt.datetime,
           current: dict[str, str | None]) -> ClusterStatus:
    member = ws.mesh.member(cluster.context)
    status = ClusterStatus(cluster, reachable=seen.reachable, gateway_required=member.eastwest,
                           ambient=ws.data_plane == AMBIENT)
    status.annotations = dict(seen.annotations or {})
    if not seen.reachable:
        status.error = seen.error
        status.problems.append(Problem("unreachable", f"cannot read the cluster: {short_error(seen.error)}",
                                       f"check access with `{hints.kubectl(cluster, 'get', 'namespace', ISTIO_NAMESPACE)}`, or remove "
                                       f"the context from {hints.topology_file}"))
        return status
    desired = ws.desired[cluster.context]
    namespace = assess_namespace(seen, desired)
    set_up = namespace.exists
    _judge_namespace(status, cluster, seen, namespace, hints)
    if istiod.read:
        status.istio_installed = istiod.installed
        status.istio_version = istiod.version
        status.istio_ready = istiod.ready
    if member.is_remote:
        named = assess_wiring(ws.mesh, member, seen.annotations, frozenset()).names_control_plane
        _judge_remote_install(status, ws.mesh.control_plane_of(member).name, seen, hints, set_up, named)
    else:
        _judge_istiod(status, cluster, istiod, ws, hints, set_up)
    if istiod.installed and istiod.cluster_id and istiod.cluster_id != cluster.name:
        status.problems.append(Problem("cluster_name_wrong", f"istiod runs as cluster {istiod.cluster_id}, "
                                                             f"topology.yaml names it {cluster.name}", hints.apply))
    if set_up and CONTROL_PLANE_CLUSTERS in namespace.annotations_left:
        _report_annotation_left(status, seen, hints)
    _judge_istiod_service(status, cluster, member.is_remote, seen, ws, hints)
    cacerts = assess_cluster_cacerts(seen, cluster.name, pki)
    judge_cacerts(status, cluster, seen, cacerts, ws, hints, root_fp, set_up, now)
    if ws.data_plane == AMBIENT:
        _judge_ambient_gateway(status, cluster, seen, istiod, hints, set_up, desired)
        _judge_ztunnel(status, cluster, seen, hints, set_up)
    else:
        _judge_sidecar_gateway(status, cluster, seen, hints, set_up, desired)
    if seen.applied is not None:
        _judge_istio_objects(status, seen, desired, istiod, hints)
    # remote secrets: a primary holds every other cluster's, a remote none (judged as the plan judges them)
    for finding in assess_secrets(ws.mesh, member, seen, current):
        report_secret(status, cluster, seen, finding, hints, set_up, ws.topology)
    if set_up and cluster.context in ws.fingerprints:  # absent: a remote whose primary could not be read
        _judge_drift(status, seen, ws.fingerprints[cluster.context], hints, cacerts)
    return status


def _judge_namespace(status: ClusterStatus, cluster: Cluster, seen: Observed, namespace: NamespaceFinding,
                     hints: Hints) -> None:
    """istio-system and its network label."""
    add = status.problems.append
    status.network_label = seen.network_label
    if not namespace.exists:
        add(Problem("namespace_missing", f"namespace {ISTIO_NAMESPACE} does not exist: the cluster is not set up",
                    hints.apply))
    elif namespace.label is LabelState.MISSING:
        add(Problem("network_label_missing",
                    f"namespace {ISTIO_NAMESPACE} has no {NETWORK_LABEL} label (expected {cluster.network})",
                    f"{hints.apply} (labels {ISTIO_NAMESPACE} {NETWORK_LABEL}={cluster.network})"))
    elif namespace.label is LabelState.WRONG:
        add(Problem("network_label_wrong",
                    f"namespace {ISTIO_NAMESPACE} is labelled {NETWORK_LABEL}={seen.network_label}, "
                    f"topology.yaml says {cluster.network}",
                    f"{hints.apply} (relabels it), or set network: {seen.network_label} for {cluster.context} "
                    f"in {hints.topology_file} if that is the right network"))


def _judge_remote_install(status: ClusterStatus, control_plane: str, seen: Observed, hints: Hints,
                          set_up: bool, names_control_plane: bool) -> None:
    """A remote has no istiod of its own: the remote profile installs a Service leading to the primary's
    istiod, and istio-system names the primary as its control plane."""
    add = status.problems.append
    status.istio_installed = seen.istiod_service
    status.istio_version = "remote" if seen.istiod_service else None
    status.istio_ready = None
    if set_up and not seen.istiod_service:
        add(Problem("istio_missing", f"Istio's remote install is missing (no istiod Service leading to "
                                     f"{control_plane}'s istiod)", hints.apply))
    if set_up and not names_control_plane:
        add(Problem("control_plane_annotation_wrong",
                    f"namespace {ISTIO_NAMESPACE} has {CONTROL_PLANE_CLUSTERS}="
                    f"{seen.annotations.get(CONTROL_PLANE_CLUSTERS) or '(none)'}, want {control_plane}: "
                    f"{control_plane}'s istiod does not configure this cluster", hints.apply))


def _judge_istiod(status: ClusterStatus, cluster: Cluster, istiod: Istiod, ws: Expected, hints: Hints,
                  set_up: bool) -> None:
    """A primary's istiod Deployment: read, installed, ready."""
    add = status.problems.append
    if not istiod.read:
        add(Problem("istio_unreadable", f"cannot read the istiod Deployment: {istiod.error or 'no answer'}",
                    f"check with `{hints.kubectl(cluster, 'get', 'deployment', '-n', ISTIO_NAMESPACE)}`"))
    elif not istiod.installed and set_up:
        add(Problem("istio_missing", f"Istio is not installed (no {ws.istiod_deployment} Deployment in "
                                     f"{ISTIO_NAMESPACE})", hints.apply))
    elif istiod.installed and not istiod.ready:
        add(Problem("istiod_not_ready", f"the {ws.istiod_deployment} Deployment has no ready replica",
                    f"look at its pods: `{hints.kubectl(cluster, 'get', 'pods', '-n', ISTIO_NAMESPACE, '-l', 'app=istiod')}`"))


def _judge_sidecar_gateway(status: ClusterStatus, cluster: Cluster, seen: Observed, hints: Hints,
                           set_up: bool, desired: Desired) -> None:
    """Sidecar mode: the east-west gateway IstioOperator's Service, and its address."""
    gateway = assess_gateway(seen, desired)
    status.gateway_exists = gateway.present
    status.gateway_address = gateway.address
    if not (gateway.wanted and set_up):
        return
    add = status.problems.append
    if gateway.state is GatewayState.MISSING:
        add(Problem("gateway_missing", f"the east-west gateway ({EASTWEST_NAME}) is not installed; "
                                       f"topology.yaml has {len(hints.topology.networks)} networks", hints.apply))
    elif not gateway.address:
        add(Problem("gateway_pending", f"the east-west gateway service {EASTWEST_NAME} has no address yet",
                    f"check its LoadBalancer with `{hints.kubectl(cluster, 'get', 'service', EASTWEST_NAME, '-n', ISTIO_NAMESPACE)}`"
                    f"; clusters without a load balancer need one (e.g. MetalLB) or spec.externalIPs"))


def _judge_istio_objects(status: ClusterStatus, seen: Observed, desired: Desired, istiod: Istiod, hints: Hints) -> None:
    """The Istio objects apply keeps in istio-system, where the read listed them (lib/kube.py)."""
    for unit, lacking in missing_objects(seen, desired, istiod.revision):
        status.problems.append(Problem("istio_objects_missing", f"missing from {ISTIO_NAMESPACE}: {', '.join(lacking)} "
                                                                f"(what {unit.purpose} takes)", hints.apply))


def _report_annotation_left(status: ClusterStatus, seen: Observed, hints: Hints) -> None:
    """A primary whose istio-system still names a control plane: an istiod with EXTERNAL_ISTIOD honours it
    (pilot/pkg/serviceregistry/kube/controller/multicluster.go) and manages this cluster's webhook too."""
    status.problems.append(Problem("control_plane_annotation_left",
                                   f"namespace {ISTIO_NAMESPACE} of this primary still has {CONTROL_PLANE_CLUSTERS}="
                                   f"{seen.annotations[CONTROL_PLANE_CLUSTERS]}: that cluster's istiod also patches "
                                   f"this cluster's injector webhook while it holds this cluster's secret",
                                   f"{hints.apply} (removes it)"))


def _judge_drift(status: ClusterStatus, seen: Observed, want: str | None, hints: Hints,
                 cacerts: CacertsFinding | None = None) -> None:
    """What is installed against what apply would install now (``want``: its fingerprint). A difference that
    another workspace's root move explains is reported as that move (root_moved_elsewhere), not as drift."""
    install = assess_install(seen, want, cacerts=cacerts)
    status.drift = install.drift
    if status.drift and status.istio_installed and not install.moved_elsewhere:
        if install.recorded is None:
            message = (f"{ISTIO_NAMESPACE} carries no record of what setup-mesh installed "
                       f"(installed by hand, or apply did not finish)")
        else:
            message = "the installation differs from what topology.yaml and base.yaml describe now"
        status.problems.append(Problem("drift", message, f"preview with `{hints.dry_run}`, then {hints.apply}"))


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
                add(Problem("gateway_api_crds_old", older, "upgrade them yourself: apply installs the Gateway API "
                                                           "CRDs only where a cluster has none, and leaves "
                                                           "existing ones alone", severity=WARNING))
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
        where = (daemonset.get("metadata") or {}).get("namespace") or ISTIO_NAMESPACE
        pods = hints.kubectl(cluster, "get", "pods", "-n", where, "-l", "app=ztunnel")
        status.problems.append(Problem("ztunnel_not_ready", f"{ready} of {desired} {ZTUNNEL} pods are ready: "
                                                            f"workloads on the other nodes have no data plane",
                                       f"look at its pods: `{pods}`"))
