"""verify: prove that traffic crosses the mesh, and name what breaks it where it does not.

In every cluster: a throwaway namespace enabled for the cluster's control plane, the helloworld
Service (port 5000) and one helloworld Deployment whose answer names the cluster (its
SERVICE_VERSION), and a curl client. Once they are ready, every cluster's client calls
``helloworld.<ns>:5000/hello`` until every cluster that should answer has, or the calls run out.
The result is a matrix (calling cluster x answering cluster). For a pair that does not answer, the
likely causes come from what status already reads (remote secrets, istiod's own view, cacerts, the
east-west gateways) plus the cross-network Gateway and the pods' sidecars. Everything created is
deleted at the end, also after a failure or Ctrl-C, unless --keep.

Causes follow each cluster's role (lib/mesh.py): a remote has no istiod of its own. Its sidecars are
injected and configured by its primary's istiod, reached through the remote's istiod Service and the
primary's east-west gateway; that istiod gives them the endpoints of what it has synced, and signs
their certificates with the primary's cacerts. So the remote secrets, istiod's view and cacerts that
explain a remote's pair are its primary's, and a primary that fails its remote (istiod down, no
secret of the remote, a gateway without the address the remote was given) is named as the cause.
"""
from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import invocation
from . import polling
from .config import AMBIENT, Cluster, Topology, data_plane_mode
from .errors import ConfigError, MeshError
from .executor import Executor, Phase, RunContext, Step
from .kube import GATEWAY_RESOURCE, Tools
from .mesh import Member, Mesh, mesh_model
from .overlay import control_plane_revision, manifest_list
from .names import CROSS_NETWORK_GATEWAY, EASTWEST_NAME, ISTIO_NAMESPACE, istiod_name
from .redact import redact
from .reporter import Reporter
from .workspace import find_tools, load_workspace
from .checks import LOCAL, MISSING, OUTDATED, PRESENT, SYNCED
from .statusjudge import ISTIOD_SERVICE_PROBLEMS
from .yamlfile import dump

DEFAULT_NAMESPACE = "setup-mesh-verify"
DEFAULT_HELLOWORLD_IMAGE = "registry.istio.io/release/examples-helloworld-v1"
DEFAULT_HELLOWORLD_TAG = "1.0"
DEFAULT_CURL_IMAGE = "curlimages/curl"
DEFAULT_CURL_TAG = "8.16.0"
DEFAULT_READY_TIMEOUT = 180.0
CALL_TIMEOUT = 5  # seconds per call (curl --max-time)
POLL_SECONDS = 1.0
ROUNDS = 2  # batches of calls before a pair counts as not reached
CREATED_BY = "app.kubernetes.io/created-by"  # label on the namespace: what verify may delete
CREATOR = "setup-mesh-verify"
AMBIENT_MODE_LABEL = "istio.io/dataplane-mode"  # on a namespace: its pods join the ambient mesh through ztunnel
ZTUNNEL_SELECTOR = "app.kubernetes.io/name=ztunnel"  # on ztunnel's DaemonSet (manifests/charts/ztunnel)
GLOBAL_SERVICE_LABEL = "istio.io/global"  # on a Service: reachable from every cluster of an ambient mesh
HELLO = re.compile(r"Hello version: (?P<version>[^,\s]+), instance: (?P<instance>\S+)")


# --- what verify deploys (one place, so other data-plane modes are one small addition) --------------

@dataclass(frozen=True)
class Images:
    helloworld: str
    curl: str

    @classmethod
    def from_options(cls, registry: str | None, helloworld_tag: str, curl_tag: str) -> "Images":
        """``--registry`` replaces where both images come from (an air-gapped mirror); tags are options too."""
        hello, curl = DEFAULT_HELLOWORLD_IMAGE, DEFAULT_CURL_IMAGE
        if registry:
            registry = registry.rstrip("/")
            hello = f"{registry}/{hello.rsplit('/', 1)[-1]}"
            curl = f"{registry}/{curl.rsplit('/', 1)[-1]}"
        return cls(f"{hello}:{helloworld_tag}", f"{curl}:{curl_tag}")


def mesh_labels(revision: str | None, ambient: bool = False) -> dict[str, str]:
    """How a namespace joins the cluster's control plane: in an ambient mesh ztunnel takes it in
    (istio.io/dataplane-mode=ambient); else the injection label, or the revision's label
    (``istio-injection`` would take precedence over ``istio.io/rev``, so it is not set then)."""
    if ambient:
        return {AMBIENT_MODE_LABEL: "ambient"}
    return {"istio.io/rev": revision} if revision else {"istio-injection": "enabled"}


def namespace_manifest(namespace: str, revision: str | None, ambient: bool = False) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": namespace, "labels": {CREATED_BY: CREATOR, **mesh_labels(revision, ambient)}}}


def helloworld_service(namespace: str, ambient: bool = False) -> dict[str, Any]:
    """The same Service in every cluster: Istio merges same-named services into one across the mesh (in
    an ambient mesh only those labelled istio.io/global=true, as Istio's ambient verify guide does)."""
    labels = {"app": "helloworld", "service": "helloworld"}
    if ambient:
        labels[GLOBAL_SERVICE_LABEL] = "true"
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "helloworld", "namespace": namespace, "labels": labels},
            "spec": {"selector": {"app": "helloworld"}, "ports": [{"name": "http", "port": 5000}]}}


def helloworld_deployment(namespace: str, cluster: Cluster, image: str) -> dict[str, Any]:
    """One version per cluster, named after it: SERVICE_VERSION is what /hello answers."""
    labels = {"app": "helloworld", "version": cluster.name}
    return {"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": f"helloworld-{cluster.name}", "namespace": namespace, "labels": dict(labels)},
            "spec": {"replicas": 1, "selector": {"matchLabels": dict(labels)},
                     "template": {"metadata": {"labels": dict(labels)}, "spec": {"containers": [{
                         "name": "helloworld", "image": image, "imagePullPolicy": "IfNotPresent",
                         "env": [{"name": "SERVICE_VERSION", "value": cluster.name}],
                         "ports": [{"containerPort": 5000}],
                         "resources": {"requests": {"cpu": "100m"}}}]}}}}


def curl_manifests(namespace: str, image: str) -> list[dict[str, Any]]:
    labels = {"app": "curl"}
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "curl", "namespace": namespace}},
        {"apiVersion": "v1", "kind": "Service",
         "metadata": {"name": "curl", "namespace": namespace, "labels": {**labels, "service": "curl"}},
         "spec": {"selector": dict(labels), "ports": [{"name": "http", "port": 80}]}},
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "curl", "namespace": namespace},
         "spec": {"replicas": 1, "selector": {"matchLabels": dict(labels)},
                  "template": {"metadata": {"labels": dict(labels)}, "spec": {
                      "serviceAccountName": "curl", "terminationGracePeriodSeconds": 0,
                      "containers": [{"name": "curl", "image": image, "imagePullPolicy": "IfNotPresent",
                                      "command": ["/bin/sleep", "infinity"]}]}}}},
    ]


def manifests(namespace: str, cluster: Cluster, revision: str | None, images: Images,
              ambient: bool = False) -> list[dict[str, Any]]:
    return [namespace_manifest(namespace, revision, ambient), helloworld_service(namespace, ambient),
            helloworld_deployment(namespace, cluster, images.helloworld), *curl_manifests(namespace, images.curl)]


# --- the commands ----------------------------------------------------------------------------------

def calls_per_round(clusters: int) -> int:
    """Enough calls that a load balancer picking at random misses a cluster rarely (3 clusters: 12 calls a
    round, two rounds: about 1 in 5000)."""
    return max(4, 4 * clusters)


def _url(namespace: str) -> str:
    return f"helloworld.{namespace}:5000/hello"


def call_command(tools: Tools, cluster: Cluster, namespace: str, calls: int):
    # One exec per batch: curl makes one call per URL (the sidecar balances each request on its own).
    return tools.kubectl_cmd(cluster, "exec", "-n", namespace, "deploy/curl", "-c", "curl", "--",
                             "curl", "-sS", "--max-time", str(CALL_TIMEOUT), *([_url(namespace)] * calls),
                             check=False, timeout=CALL_TIMEOUT * calls + 30)


def pods_command(tools: Tools, cluster: Cluster, namespace: str):
    # The Deployments too: when a pod cannot be created (e.g. the injector's webhook fails), only the
    # Deployment says why.
    return tools.kubectl_cmd(cluster, "get", "deployments,pods", "-n", namespace, "-o", "json", timeout=30)


def cleanup_command(tools: Tools, cluster: Cluster, namespace: str):
    return tools.kubectl_cmd(cluster, "delete", "namespace", namespace, "--ignore-not-found", "--timeout=120s",
                             check=False, timeout=150)


# --- reading pods ----------------------------------------------------------------------------------

@dataclass
class PodState:
    name: str
    ready: bool
    reason: str  # why not ready ("" when ready)
    sidecar: bool
    created: bool = True  # False: no pod exists; ``name`` is then its Deployment's
    refused: bool = False  # the API server refused to create its pod (the Deployment's ReplicaFailure)


def pod_states(pods_json: str) -> dict[str, list[PodState]]:
    """app label -> its pods, with readiness and, when not ready, the reason kubectl would show. An app
    whose Deployment has no pod at all gets one entry that is not ``created``, with the Deployment's
    reason (its ReplicaFailure condition, e.g. a webhook that refused the pods)."""
    out: dict[str, list[PodState]] = {}
    items = json.loads(pods_json or "{}").get("items") or []
    for pod in items:
        if pod.get("kind", "Pod") != "Pod":
            continue
        meta = pod.get("metadata") or {}
        if meta.get("deletionTimestamp"):
            continue
        status = pod.get("status") or {}
        ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or [])
        reason = ""
        if not ready:
            for cs in status.get("containerStatuses") or []:
                waiting = (cs.get("state") or {}).get("waiting") or {}
                if waiting.get("reason"):
                    reason = f"{cs.get('name')}: {waiting['reason']}" + (f": {waiting['message']}" if waiting.get("message") else "")
                    break
            if not reason:
                cond = next((c for c in status.get("conditions") or [] if c.get("status") != "True"), {})
                reason = status.get("phase") or "Pending"
                if cond.get("reason") or cond.get("message"):
                    reason += f": {cond.get('reason', '')} {cond.get('message', '')}".rstrip()
        containers = [c.get("name") for c in (pod.get("spec") or {}).get("containers") or []]
        app = (meta.get("labels") or {}).get("app", "")
        out.setdefault(app, []).append(PodState(meta.get("name", ""), ready, reason, "istio-proxy" in containers))
    for deployment in items:
        if deployment.get("kind") != "Deployment":
            continue
        spec = deployment.get("spec") or {}
        app = (((spec.get("template") or {}).get("metadata") or {}).get("labels") or {}).get("app", "")
        if not app or out.get(app):
            continue
        conditions = (deployment.get("status") or {}).get("conditions") or []
        failure = next((c for c in conditions if c.get("type") == "ReplicaFailure" and c.get("status") == "True"), {})
        reason = (f"{failure.get('reason') or 'ReplicaFailure'}: {failure.get('message', '')}".rstrip(": ")
                  if failure else "no pod created yet")
        out[app] = [PodState((deployment.get("metadata") or {}).get("name", ""), False, reason, False, created=False,
                             refused=bool(failure))]
    return out


def answers(output: str) -> list[str]:
    """The versions (cluster names) that answered, one per successful call."""
    return [m.group("version") for m in HELLO.finditer(output)]


# --- the result ------------------------------------------------------------------------------------

@dataclass
class Cause:
    code: str
    message: str
    hint: str

    def to_json(self) -> dict[str, str]:
        return {"code": self.code, "message": redact(self.message), "hint": self.hint}


@dataclass
class Pair:
    source: str  # cluster name of the caller
    target: str
    reached: bool
    answers: int = 0
    causes: list[Cause] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"from": self.source, "to": self.target, "reached": self.reached, "answers": self.answers,
                "causes": [c.to_json() for c in self.causes]}


@dataclass
class ClusterRun:
    """What happened in one cluster."""

    applied: bool = False
    error: str | None = None  # a step failed (deploy, exec)
    client: PodState | None = None
    server: PodState | None = None
    answered_by: dict[str, int] = field(default_factory=dict)  # cluster name -> answers
    failures: list[str] = field(default_factory=list)  # call errors, distinct


@dataclass
class VerifyResult:
    mesh_id: str
    namespace: str
    clusters: list[str]
    pairs: list[Pair]
    problems: list[Cause]  # per cluster problems that are not about one pair
    kept: bool

    @property
    def ok(self) -> bool:
        return all(p.reached for p in self.pairs) and not self.problems

    def to_json(self) -> dict[str, Any]:
        return {"mesh_id": self.mesh_id, "namespace": self.namespace, "ok": self.ok, "clusters": self.clusters,
                "pairs": [p.to_json() for p in self.pairs], "problems": [p.to_json() for p in self.problems],
                "kept": self.kept}


# --- judging (pure) ----------------------------------------------------------------------------------

@dataclass
class Facts:
    """What status read, reduced to what explains a pair that does not answer."""

    status: Any  # status.MeshStatus
    exposes_local: dict[str, bool | None]  # cluster name -> a Gateway in istio-system exposes *.local on 15443
    mesh: Mesh | None = None  # each cluster's role (None: the topology's, all sidecar)
    istiod_addresses: dict[str, str | None] = field(default_factory=dict)  # remote's name -> where its istiod Service leads
    ztunnels: dict[str, str | None] = field(default_factory=dict)  # ambient: cluster name -> what ails ztunnel (None: ready)


def judge(topology: Topology, runs: dict[str, ClusterRun], facts: Facts, hints: Any) -> tuple[list[Pair], list[Cause]]:
    mesh = facts.mesh or mesh_model(topology)
    by_name = {c.cluster.name: c for c in facts.status.clusters}
    planes = {c.context: control_plane_causes(mesh, mesh.member(c.context), by_name, hints, facts.istiod_addresses)
              for c in topology.clusters}
    problems: list[Cause] = []
    for cluster in topology.clusters:
        run = runs.get(cluster.context) or ClusterRun()
        if run.error:
            problems.append(Cause("step_failed", f"{cluster.name}: {run.error}", f"re-run verify; {hints.apply} "
                                                                                 "if the cluster is not set up"))
        for what, pod in (("curl client", run.client), ("helloworld", run.server)):
            if not run.applied or run.error or pod is None or pod.ready:
                continue
            # A cluster whose control plane is known not to serve it: that is where to look first.
            plane = planes[cluster.context][0] if planes[cluster.context] else None
            if not pod.created:
                problems.append(Cause("pod_missing", f"{cluster.name}: no {what} pod was created: {pod.reason}",
                                      f"{plane.message}; {plane.hint}" if plane else
                                      f"look at its Deployment with `{hints.kubectl(cluster, 'describe', 'deployment', '-n', hints.namespace, pod.name)}`"))
                continue
            problems.append(Cause("pod_not_ready", f"{cluster.name}: the {what} pod {pod.name} is not ready: "
                                                   f"{pod.reason}",
                                  f"{plane.message}; {plane.hint}" if plane else
                                  f"look at it with `{hints.kubectl(cluster, 'describe', 'pod', '-n', hints.namespace, pod.name)}`"
                                  "; for images from a mirror use --registry and the tag options"))
    pairs = []
    for src in topology.clusters:
        run = runs.get(src.context) or ClusterRun()
        for dst in topology.clusters:
            count = run.answered_by.get(dst.name, 0)
            pair = Pair(src.name, dst.name, count > 0, count)
            if not pair.reached:
                pair.causes = _causes(src, dst, runs, by_name, facts, mesh, planes, hints)
            pairs.append(pair)
    return pairs, problems


def control_plane_causes(mesh: Mesh, member: Member, by_name: dict, hints: Any,
                         istiod_addresses: dict[str, str | None] | None = None) -> list[Cause]:
    """Why the control plane that injects and configures ``member``'s sidecars does not serve it, as far
    as status shows: its own istiod for a primary; for a remote, its primary's istiod, which must hold
    the remote's secret and be reachable through the primary's east-west gateway. Either way the
    cluster's own istiod Service must lead there."""
    causes: list[Cause] = []
    add = lambda code, message, hint: causes.append(Cause(code, message, hint))  # noqa: E731
    own = by_name.get(member.name)
    for problem in own.problems if own is not None else []:
        if problem.code in ISTIOD_SERVICE_PROBLEMS:  # the cluster's own Service leads its pods nowhere
            add(problem.code, f"{member.name}: {problem.message}", problem.hint)
    plane = mesh.control_plane_of(member)
    p = by_name.get(plane.name)
    if p is None or not p.reachable:
        return causes
    pods = f"`{hints.kubectl(plane.cluster, 'get', 'pods', '-n', ISTIO_NAMESPACE, '-l', 'app=istiod')}`"
    if member.is_primary:
        if p.istio_installed and p.istio_ready is False:
            # ambient: ztunnel fetches its configuration from istiod (its XDS_ADDRESS); no injector is involved
            what = ("its ztunnel gets no configuration, so calls from the cluster's pods cannot connect"
                    if getattr(hints, "ambient", False) else
                    "its injector refuses new pods and its sidecars get no configuration")
            add("istiod_not_ready", f"{member.name}'s istiod has no ready replica: {what}", f"look at its pods: {pods}")
        return causes
    remote, primary = member.name, plane.name
    if p.istio_installed and p.istio_ready is False:
        add("primary_istiod_not_ready", f"{remote} is a remote of {primary}, whose istiod has no ready replica: "
                                        f"{remote}'s injector refuses new pods and its sidecars get no "
                                        f"configuration", f"look at {primary}'s istiod pods: {pods}")
    secret = p.remote_secrets.get(remote)
    if secret not in (None, PRESENT):
        problem = next((x for x in p.problems if x.peer == remote and x.code.startswith("remote_secret_")), None)
        held = hints.kubectl(plane.cluster, "get", "secrets", "-n", ISTIO_NAMESPACE, "-l", "istio/multiCluster=true")
        add("primary_lacks_secret", f"{primary}, the primary of {remote}, holds no current remote secret of "
                                    f"{remote} ({secret}): {primary}'s istiod does not configure {remote}'s "
                                    f"sidecars",
            problem.hint if problem and secret != MISSING else
            f"{hints.apply} creates it in {primary} again (`{held}` lists the secrets {primary} holds)")
    else:
        synced = (p.remote_clusters or {}).get(remote)
        if synced not in (None, SYNCED):
            problem = next((x for x in p.problems if x.peer == remote and x.code.startswith("remote_cluster_")), None)
            add("primary_not_synced", f"{primary}'s istiod reports its remote {remote} as {synced}: it does not "
                                      f"configure {remote}'s sidecars",
                problem.hint if problem else f"{hints.status} shows why")
    leads_to = (istiod_addresses or {}).get(remote)
    if p.gateway_address and leads_to and leads_to != p.gateway_address:
        add("primary_address_changed", f"{remote}'s istiod Service leads to {leads_to}, but {primary}'s east-west "
                                       f"gateway is at {p.gateway_address} now: {remote}'s injector and sidecars "
                                       f"cannot reach their control plane",
            f"{hints.apply} installs {remote} again with {primary}'s current address")
    if not p.gateway_address:
        add("primary_gateway_no_address", f"{remote} reaches {primary}'s istiod through {primary}'s east-west "
                                          f"gateway, which has no address: {remote}'s injector and sidecars cannot "
                                          f"reach their control plane",
            f"check {primary}'s LoadBalancer: `{hints.kubectl(plane.cluster, 'get', 'service', EASTWEST_NAME, '-n', ISTIO_NAMESPACE)}`")
    return causes


def _causes(src: Cluster, dst: Cluster, runs: dict[str, ClusterRun], by_name: dict, facts: Facts, mesh: Mesh,
            planes: dict[str, list[Cause]], hints: Any) -> list[Cause]:
    causes: list[Cause] = []
    add = lambda code, message, hint: causes.append(Cause(code, message, hint))  # noqa: E731
    src_run, dst_run = runs.get(src.context) or ClusterRun(), runs.get(dst.context) or ClusterRun()
    if src_run.error or dst_run.error:
        add("step_failed", f"verify could not run in {src.name if src_run.error else dst.name}", "see the problems above")
        return causes
    # The control planes first: a cluster whose sidecars nobody configures explains everything else.
    for cause in planes[src.context] + planes[dst.context]:
        if cause not in causes:
            causes.append(cause)
    if src_run.client is None or not src_run.client.ready:
        missing = src_run.client is not None and not src_run.client.created
        add("client_not_ready", f"the curl client in {src.name} {'was never created' if missing else 'is not ready'}, "
                                f"so nothing was called from it",
            f"see the {'pod_missing' if missing else 'pod_not_ready'} problem above")
        return causes
    if dst_run.server is None or not dst_run.server.ready:
        missing = dst_run.server is not None and not dst_run.server.created
        add("helloworld_not_ready", f"helloworld in {dst.name} {'was never created' if missing else 'is not ready'}",
            f"see the {'pod_missing' if missing else 'pod_not_ready'} problem above")
        return causes
    src_member, dst_member = mesh.member(src.context), mesh.member(dst.context)
    src_plane, dst_plane = mesh.control_plane_of(src_member), mesh.control_plane_of(dst_member)
    if hints.ambient:
        _ztunnel_causes(src, dst, facts, hints, add)
        if causes and src == dst:
            return causes
    if src == dst:
        add("local_call_failed", f"{src.name} does not reach its own helloworld: "
                                 f"{'; '.join(src_run.failures) or 'no answer'}",
            f"check the Service and its endpoints: `{hints.kubectl(src, 'get', 'endpoints', 'helloworld', '-n', hints.namespace)}`")
        return causes
    ambient = hints.ambient  # no sidecars in an ambient mesh: ztunnel carries the calls
    for cluster, member, pod, what in ((src, src_member, src_run.client, "its calls stay in " + src.name),
                                       (dst, dst_member, dst_run.server, "it cannot take mTLS calls from other "
                                                                         "clusters")):
        if ambient or pod.sidecar:
            continue
        name = "curl" if pod is src_run.client else "helloworld"
        calls = "" if member.is_primary else f", which calls {mesh.control_plane_of(member).name}'s istiod"
        add("sidecar_missing", f"the {name} pod in {cluster.name} has no istio-proxy sidecar: {what}",
            f"the namespace is labelled {mesh_label_text(hints.revision)}; check that {cluster.name}'s injector "
            f"(`{hints.kubectl(cluster, 'get', 'mutatingwebhookconfigurations')}`{calls}) matches it")
    # The client's sidecar gets its endpoints from its control plane (a remote's: its primary's istiod),
    # which must read the answering cluster (unless it runs there).
    s = by_name.get(src_plane.name)
    known = any(c.code in ("primary_lacks_secret", "primary_not_synced") for c in planes[dst.context]) \
        and dst_plane.context == src_plane.context  # that cause already says the control plane lacks dst
    if s is not None and s.reachable and dst.context != src_plane.context and not known:
        whose = "" if src_plane.context == src.context else f" (the control plane of {src.name})"
        secret = s.remote_secrets.get(dst.name)
        about_dst = [p for p in s.problems if p.peer == dst.name]  # a hint about another peer would mislead
        if secret in (MISSING, LOCAL, OUTDATED):
            what = {MISSING: f"{s.cluster.name}{whose} holds no remote secret of {dst.name}",
                    LOCAL: f"{s.cluster.name}'s{whose} remote secret of {dst.name} names a loopback API server",
                    OUTDATED: f"{s.cluster.name}'s{whose} remote secret of {dst.name} carries credentials "
                              f"{dst.name} no longer issues"}
            problem = next((p for p in about_dst if p.code == f"remote_secret_{secret}"), None)
            add(f"remote_secret_{secret}", what[secret], problem.hint if problem else hints.apply)
        synced = (s.remote_clusters or {}).get(dst.name)
        if synced not in (None, SYNCED) and secret not in (MISSING, LOCAL, OUTDATED):  # else: that cause
            problem = next((p for p in about_dst if p.code.startswith("remote_cluster_")), None)
            add("peer_not_synced", f"{s.cluster.name}'s istiod{whose} reports {dst.name} as {synced}",
                problem.hint if problem else f"{hints.status} shows why")
    # Workload certificates are signed with the cacerts of the cluster whose istiod issues them.
    signers = [by_name.get(src_plane.name), by_name.get(dst_plane.name)]
    roots = [c.cacerts.root_fingerprint if c is not None and c.reachable else None for c in signers]
    foreign = [c.cluster.name for c in signers if c is not None and c.cacerts.chains_to_root is False]
    if foreign or (all(roots) and roots[0] != roots[1]) or any(c is not None and c.reachable and not c.cacerts.present
                                                                for c in signers):
        names = ", ".join(dict.fromkeys(foreign)) or " and ".join(dict.fromkeys([src_plane.name, dst_plane.name]))
        signed = [f"{m.name}'s by {p.name}" for m, p in ((src_member, src_plane), (dst_member, dst_plane))
                  if m.context != p.context]
        add("cacerts_other_root", f"the cacerts of {names} do not chain to one root: their workloads do not trust "
                                  f"each other" + (f" ({', '.join(signed)} signs the workload certificates)"
                                                   if signed else ""), hints.apply)
    if src.network != dst.network:
        _gateway_causes(src, dst, mesh, by_name, facts, hints, add)
    if not causes:
        add("unknown", f"no answer from {dst.name} ({'; '.join(src_run.failures) or 'other clusters answered'}), "
                       f"and nothing status reads explains it", _unknown_hint(src, hints))
    return causes


def _ztunnel_causes(src: Cluster, dst: Cluster, facts: Facts, hints: Any, add) -> None:
    """Ambient: the node's ztunnel takes every call of the pods istio-cni redirects to it, and ends the HBONE
    calls to them; without it the caller cannot connect and the answering pod takes no call from afar."""
    for cluster in dict.fromkeys([src, dst]):
        state = facts.ztunnels.get(cluster.name)
        if not state:
            continue
        what = "is missing" if state == "missing" else f"is not ready ({state})"
        effect = ("calls from its pods cannot connect" if cluster == src else
                  f"its pods take no calls from {src.name}")
        add("ztunnel_not_ready", f"{cluster.name}'s ztunnel {what}: {effect}",
            f"look at it: `{hints.kubectl(cluster, 'get', 'daemonsets', '--all-namespaces', '-l', ZTUNNEL_SELECTOR)}`"
            f" and its pods; a missing one is installed by `istioctl install` of the ambient profile")


def _unknown_hint(src: Cluster, hints: Any) -> str:
    """Where to look next: what the client's proxy knows (ztunnel in an ambient mesh, else its sidecar)."""
    if hints.ambient:
        return (f"look at what {src.name}'s ztunnel knows: `istioctl ztunnel-config services --context {src.context}"
                f" | grep helloworld` and `istioctl ztunnel-config workloads --context {src.context}`, and at "
                f"{hints.status}")
    return (f"look at what the client's sidecar knows: `istioctl proxy-config endpoint deploy/curl.{hints.namespace} "
            f"--context {src.context} | grep helloworld`, and at {hints.status}")


def _gateway_causes(src: Cluster, dst: Cluster, mesh: Mesh, by_name: dict, facts: Facts, hints: Any, add) -> None:
    """Traffic for another network enters it through an east-west gateway of that network: the answering
    cluster's own, or, for a remote without one, its primary's (any of them will do). Which services a
    gateway carries is set by a Gateway in the istio-system of the cluster whose istiod configures it."""
    gateways = [m for m in mesh.members if m.network == dst.network and m.eastwest]
    read = [(m, by_name.get(m.name)) for m in gateways]
    read = [(m, c) for m, c in read if c is not None and c.reachable]
    if not read:
        return
    ambient = hints.ambient
    if ambient:
        _ambient_gateway_causes(src, dst, read, hints, add)
        return
    with_address = [m for m, c in read if c.gateway_address]
    if not with_address:
        names = " and ".join(f"{m.name}'s" for m, _ in read)
        own = "" if mesh.member(dst.context).eastwest else f" ({dst.name} has no gateway of its own)"
        add("gateway_no_address", f"{names} east-west gateway has no address, so {src.name} (on {src.network}) "
                                  f"cannot send to {dst.network}{own}",
            "check its LoadBalancer: " + "; ".join(
                f"`{hints.kubectl(m.cluster, 'get', 'service', EASTWEST_NAME, '-n', ISTIO_NAMESPACE)}`" for m, _ in read))
        return
    planes = [mesh.control_plane_of(m) for m in with_address]
    if all(facts.exposes_local.get(p.name) is False for p in planes):
        names = " and ".join(dict.fromkeys(p.name for p in planes))
        if [m.name for m in with_address] == [p.name for p in planes] == [dst.name]:
            what = "its east-west gateway takes"
        else:
            owners = ", ".join(f"{m.name}'s" for m in with_address)
            what = f"the east-west gateways it configures on {dst.network} ({owners}) take"
        add("cross_network_gateway_missing", f"{names} has no Gateway exposing *.local on port 15443 "
                                             f"({CROSS_NETWORK_GATEWAY}), so {what} no traffic from other networks",
            hints.apply)


def _ambient_gateway_causes(src: Cluster, dst: Cluster, read: list, hints: Any, add) -> None:
    """Ambient: istiod sends a call for another network to a network gateway it learns from a peer's
    Gateway of class istio-east-west labelled with that network, at the address istiod reported in the
    Gateway's status (pilot/pkg/serviceregistry/ambient/networks.go, Istio 1.30). So the Gateway must be
    there and programmed; ztunnel's own view of the service says what it was given."""
    zc = (f"`istioctl ztunnel-config services --context {src.context}` shows the endpoints {src.name}'s ztunnel "
          f"has for helloworld.{hints.namespace}, `istioctl ztunnel-config workloads --context {src.context}` "
          f"the workloads (those of {dst.network} appear only behind a network gateway)")
    names = " and ".join(f"{m.name}'s" for m, _ in read)
    if not any(c.gateway_exists for _, c in read):
        listing = "; ".join(f"`{hints.kubectl(m.cluster, 'get', GATEWAY_RESOURCE, '-n', ISTIO_NAMESPACE)}`"
                            for m, _ in read)
        add("eastwest_gateway_missing", f"{names} east-west Gateway ({EASTWEST_NAME}, class istio-east-west) is "
                                        f"missing, so no istiod knows a network gateway for {dst.network}: "
                                        f"{src.name} (on {src.network}) cannot send to {dst.name}",
            f"{hints.apply} creates it again (what is there: {listing}); {zc}")
        return
    if not any(c.gateway_programmed and c.gateway_address for _, c in read):
        shown = "; ".join(f"`{hints.kubectl(m.cluster, 'get', GATEWAY_RESOURCE, EASTWEST_NAME, '-n', ISTIO_NAMESPACE, '-o', 'yaml')}`"
                          for m, _ in read)
        add("eastwest_gateway_not_programmed", f"{names} east-west Gateway has no address in its status (not "
                                               f"programmed), so no istiod knows a network gateway for "
                                               f"{dst.network}: {src.name} (on {src.network}) cannot send to "
                                               f"{dst.name}",
            f"see istiod's report with {shown}; without an address, check the LoadBalancer of service "
            f"{EASTWEST_NAME}; {zc}")


def mesh_label_text(revision: str | None, ambient: bool = False) -> str:
    return ", ".join(f"{k}={v}" for k, v in mesh_labels(revision, ambient).items())


def exposes_local(gateways_json: str) -> bool:
    for gw in json.loads(gateways_json or "{}").get("items") or []:
        for server in (gw.get("spec") or {}).get("servers") or []:
            if (server.get("port") or {}).get("number") == 15443 and "*.local" in (server.get("hosts") or []):
                return True
    return False


# --- running it ------------------------------------------------------------------------------------

@dataclass
class Options:
    namespace: str = DEFAULT_NAMESPACE
    images: Images = field(default_factory=lambda: Images.from_options(None, DEFAULT_HELLOWORLD_TAG, DEFAULT_CURL_TAG))
    ready_timeout: float = DEFAULT_READY_TIMEOUT
    keep: bool = False
    dry_run: bool = False
    output: str = "table"
    parallel: int = 8


class VerifyHints:
    def __init__(self, status_hints: Any, namespace: str, revision: str | None, ambient: bool = False):
        self._h = status_hints
        self.namespace = namespace
        self.revision = revision
        self.ambient = ambient
        self.apply = status_hints.apply
        self.status = invocation.command("status")

    def kubectl(self, cluster: Cluster, *args: str) -> str:
        return self._h.kubectl(cluster, *args)


def run_verify(workdir: Path, *, kubeconfig: str | None, istio_dir: str | None, options: Options, timeout: float,
               runner, reporter: Reporter) -> int:
    from .status import collect
    from .statusinputs import status_workspace
    from .statusreport import Hints

    if not re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", options.namespace) or len(options.namespace) > 63:
        raise ConfigError(f"--namespace {options.namespace!r} is not a valid namespace name",
                          hint="use lower-case letters, digits and '-' (at most 63), e.g. setup-mesh-verify")
    loaded = load_workspace(workdir, kubeconfig, lenient=options.dry_run)
    topology = loaded.topology
    tools = find_tools(istio_dir, runner, options.dry_run, loaded.notes, timeout)
    revision = control_plane_revision(loaded.base)
    ambient = data_plane_mode(loaded.base) == AMBIENT
    mesh = mesh_model(topology, data_plane_mode(loaded.base))
    plan = {c.context: manifests(options.namespace, c, revision, options.images, ambient) for c in topology.clusters}
    if options.dry_run:
        _print_dry_run(mesh, tools, plan, options, revision, ambient, loaded.notes, reporter)
        return 0

    ws = status_workspace(workdir, loaded)
    hints = VerifyHints(Hints(workdir, topology), options.namespace, revision, ambient)
    quiet = Reporter(console=reporter.console, err_console=reporter.err, quiet=True)
    status = collect(ws, tools, runner, quiet, options.parallel)
    unreachable = [c for c in status.clusters if not c.reachable]
    if unreachable:
        names = ", ".join(c.cluster.context for c in unreachable)
        raise MeshError(f"cannot read {names}: verify needs every cluster of the mesh",
                        hint=f"{hints.status} says more; or remove the context from {topology.path}")
    gateways: dict[str, bool | None] = {}
    istiod_addresses: dict[str, str | None] = {}
    ztunnels: dict[str, str | None] = {}
    not_ours = _pre_read(mesh, tools, runner, options, quiet, gateways, ambient, revision, istiod_addresses,
                         ztunnels)
    if not_ours:
        raise ConfigError(f"namespace {options.namespace} already exists in {', '.join(not_ours)} and was not created "
                        f"by verify (no {CREATED_BY}={CREATOR} label): verify deletes its namespace when done, so it "
                        f"will not use that one", hint="pass another name with --namespace")

    runs = {c.context: ClusterRun() for c in topology.clusters}
    progress = options.output != "json"
    if progress:
        reporter.start_progress([(c.context, c.network) for c in topology.clusters])
    step_reporter = reporter if progress else quiet
    executor = Executor(runner, step_reporter, options.parallel)
    try:
        executor.run_phases([
            _phase("deploy", topology, lambda c: _deploy_step(tools, c, plan[c.context], runs[c.context])),
            _phase("wait for pods", topology, lambda c: _wait_step(tools, c, options, runs[c.context])),
            _phase("call helloworld", topology, lambda c: _call_step(tools, c, options, topology, runs[c.context])),
        ])
    finally:
        reporter.stop_progress()
        if not options.keep:
            _cleanup(topology, tools, runner, options, runs, reporter)
    if executor.outcome.interrupted:
        raise KeyboardInterrupt
    for context, exc in executor.outcome.failures.items():
        runs[context].error = runs[context].error or exc.message.splitlines()[0]
    pairs, problems = judge(topology, runs, Facts(status, gateways, mesh, istiod_addresses, ztunnels), hints)
    result = VerifyResult(topology.mesh_id, options.namespace, [c.name for c in topology.clusters], pairs, problems,
                          options.keep)
    if options.output == "json":
        reporter.console.out(json.dumps(result.to_json(), indent=2), highlight=False)
    else:
        render(result, reporter, options, topology, tools)
    return 0 if result.ok else 1


def _phase(name: str, topology: Topology, make) -> Phase:
    phase = Phase(name)
    for cluster in topology.clusters:
        phase.add(cluster.context, make(cluster))
    return phase


def _deploy_step(tools: Tools, cluster: Cluster, items: list[dict], run: ClusterRun) -> Step:
    command = tools.apply(cluster, dump(manifest_list(items)), shown=True)

    def action(ctx: RunContext) -> None:
        run.applied = True  # from here on, cleanup has something to remove
        ctx.run(command)

    return Step("deploy helloworld and curl", commands=[command], action=action)


def _wait_step(tools: Tools, cluster: Cluster, options: Options, run: ClusterRun) -> Step:
    command = pods_command(tools, cluster, options.namespace)

    def action(ctx: RunContext) -> None:
        deadline = time.monotonic() + options.ready_timeout
        while True:
            pods = pod_states(ctx.run(command).stdout)
            run.client = _one(pods.get("curl"))
            run.server = _one(pods.get("helloworld"))
            # Settled: each pod is ready, or its creation was refused (a webhook, a quota), which waiting
            # does not change; the refusal is then shown as it stands.
            settled = all(p is not None and (p.ready or p.refused) for p in (run.client, run.server))
            if settled or time.monotonic() >= deadline:
                return
            if ctx.cancelled.wait(polling.interval(POLL_SECONDS)):
                return

    return Step("wait for pods", commands=[command], action=action)


def _one(pods: list[PodState] | None) -> PodState | None:
    if not pods:
        return None
    return next((p for p in pods if p.ready), pods[0])


def _call_step(tools: Tools, cluster: Cluster, options: Options, topology: Topology, run: ClusterRun) -> Step:
    calls = calls_per_round(len(topology.clusters))
    command = call_command(tools, cluster, options.namespace, calls)
    expected = {c.name for c in topology.clusters}

    def action(ctx: RunContext) -> None:
        if run.client is None or not run.client.ready:
            return
        for _ in range(ROUNDS):
            result = ctx.run(command)
            for version in answers(result.stdout):
                run.answered_by[version] = run.answered_by.get(version, 0) + 1
            for line in (result.stdout + "\n" + result.stderr).splitlines():
                line = line.strip()
                if line and not HELLO.search(line) and not line.startswith("command terminated"):
                    if line not in run.failures and len(run.failures) < 5:
                        run.failures.append(line)
            if expected <= set(run.answered_by):
                return

    return Step("call helloworld", commands=[command], action=action)


def gateways_command(tools: Tools, cluster: Cluster):
    return tools.kubectl_cmd(cluster, "get", "gateways.networking.istio.io", "-n", ISTIO_NAMESPACE, "-o", "json",
                             check=False, timeout=30)


def istiod_endpoints_command(tools: Tools, cluster: Cluster, revision: str | None):
    """Where a remote's istiod Service leads: its EndpointSlice, which the remote profile points at the
    address of its primary's east-west gateway."""
    return tools.kubectl_cmd(cluster, "get", "endpointslices.discovery.k8s.io", "-n", ISTIO_NAMESPACE, "-l",
                             f"kubernetes.io/service-name={istiod_name(revision)}", "-o", "json", check=False,
                             timeout=30)


def ztunnel_command(tools: Tools, cluster: Cluster):
    """ztunnel's DaemonSet, wherever it was installed (its chart labels it app.kubernetes.io/name=ztunnel)."""
    return tools.kubectl_cmd(cluster, "get", "daemonsets", "--all-namespaces", "-l", ZTUNNEL_SELECTOR, "-o", "json",
                             check=False, timeout=30)


def ztunnel_state(daemonsets_json: str) -> str | None:
    """What keeps ztunnel from carrying the node's calls: "missing", "<ready> of <desired> pods ready"; None when
    it is ready on every node."""
    items = json.loads(daemonsets_json or "{}").get("items") or []
    if not items:
        return "missing"
    status = items[0].get("status") or {}
    desired, ready = status.get("desiredNumberScheduled") or 0, status.get("numberReady") or 0
    return None if desired and ready >= desired else f"{ready} of {desired} pods ready"


def endpoint_address(slices_json: str) -> str | None:
    for item in json.loads(slices_json or "{}").get("items") or []:
        for endpoint in item.get("endpoints") or []:
            if endpoint.get("addresses"):
                return endpoint["addresses"][0]
    return None


def reads_gateways(mesh: Mesh, cluster: Cluster, ambient: bool) -> bool:
    """The cross-network Gateway is read where an istiod reads it: on primaries (a remote's east-west
    gateway is configured from its primary's istio-system), and not in an ambient mesh, whose east-west
    gateway is a Gateway API Gateway."""
    return not ambient and mesh.member(cluster.context).is_primary


def _pre_read(mesh: Mesh, tools: Tools, runner, options: Options, reporter: Reporter,
              gateways: dict[str, bool | None], ambient: bool, revision: str | None = None,
              istiod_addresses: dict[str, str | None] | None = None,
              ztunnels: dict[str, str | None] | None = None) -> list[str]:
    """Reads what status does not: the cross-network Gateways (see reads_gateways), on a remote where its
    istiod Service leads (``istiod_addresses``), in an ambient mesh each cluster's ztunnel (``ztunnels``),
    and whether the namespace exists already.
    Returns the contexts where it exists and verify did not create it."""
    found: dict[str, bool] = {}
    topology = mesh.topology

    def step_for(cluster: Cluster) -> Step:
        namespace = tools.kubectl_cmd(cluster, "get", "namespace", options.namespace, "--ignore-not-found", "-o",
                                      "json", timeout=30)
        gateway = gateways_command(tools, cluster)
        read_gateway = reads_gateways(mesh, cluster, ambient)
        endpoints = istiod_endpoints_command(tools, cluster, revision)
        remote = mesh.member(cluster.context).is_remote
        ztunnel = ztunnel_command(tools, cluster)
        read_ztunnel = ambient and ztunnels is not None

        def action(ctx: RunContext) -> None:
            out = ctx.run(namespace).stdout.strip()
            if out:
                labels = (json.loads(out).get("metadata") or {}).get("labels") or {}
                found[cluster.context] = labels.get(CREATED_BY) == CREATOR
            if remote and istiod_addresses is not None:
                result = ctx.run(endpoints)
                try:
                    istiod_addresses[cluster.name] = endpoint_address(result.stdout) if result.ok else None
                except ValueError:
                    istiod_addresses[cluster.name] = None
            if read_ztunnel:
                result = ctx.run(ztunnel)
                try:
                    ztunnels[cluster.name] = ztunnel_state(result.stdout) if result.ok else None
                except ValueError:
                    pass  # not known: nothing said
            if not read_gateway:
                return
            result = ctx.run(gateway)  # fails without Istio's CRDs: then nothing is known
            try:
                gateways[cluster.name] = exposes_local(result.stdout) if result.ok else None
            except ValueError:
                gateways[cluster.name] = None

        commands = ([namespace] + ([endpoints] if remote else []) + ([ztunnel] if read_ztunnel else [])
                    + ([gateway] if read_gateway else []))
        return Step("read namespace and gateways", commands=commands, action=action)

    executor = Executor(runner, reporter, options.parallel)
    executor.run_phase(_phase("read namespace and gateways", topology, step_for))
    if executor.outcome.interrupted:
        raise KeyboardInterrupt
    if executor.outcome.failures:
        context, exc = next(iter(executor.outcome.failures.items()))
        raise MeshError(f"{context}: {exc.message}")
    return [ctx for ctx, ours in found.items() if not ours]


def _cleanup(topology: Topology, tools: Tools, runner, options: Options, runs: dict[str, ClusterRun],
             reporter: Reporter) -> None:
    """Deletes the namespace (and with it everything verify made) wherever verify began to deploy.
    Runs after success, failure and Ctrl-C alike."""
    touched = [c for c in topology.clusters if runs[c.context].applied]
    if not touched:
        return
    quiet = Reporter(console=reporter.console, err_console=reporter.err, quiet=True)
    executor = Executor(runner, quiet, options.parallel)
    executor.run_phase(_phase("clean up", Topology(topology.mesh_id, tuple(touched), topology.path),
                              lambda c: Step("clean up", commands=[cleanup_command(tools, c, options.namespace)])))
    for context, exc in executor.outcome.failures.items():
        reporter.warn(f"{context}: could not delete namespace {options.namespace}: {exc.message.splitlines()[-1]}; "
                      f"delete it with `{cleanup_command(tools, topology.by_context(context), options.namespace).pasteable()}`")


# --- printing --------------------------------------------------------------------------------------

def render(result: VerifyResult, reporter: Reporter, options: Options, topology: Topology, tools: Tools) -> None:
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=f"traffic in mesh {escape(result.mesh_id)} (row: calling cluster; column: answering cluster)",
                  header_style="bold")
    table.add_column("from \\ to")
    for name in result.clusters:
        table.add_column(escape(name), justify="center")
    by_pair = {(p.source, p.target): p for p in result.pairs}
    for source in result.clusters:
        cells = []
        for target in result.clusters:
            pair = by_pair[(source, target)]
            cells.append(f"[green]✓ {pair.answers}[/]" if pair.reached else "[red]✗[/]")
        table.add_row(escape(source), *cells)
    reporter.console.print(table)
    say = lambda text, style=None: reporter.console.print(escape(redact(text)), style=style)  # noqa: E731
    for problem in result.problems:
        say(f"{problem.code}: {problem.message}", "red")
        say(f"  hint: {problem.hint}")
    for pair in result.pairs:
        if pair.reached:
            continue
        for cause in pair.causes:
            say(f"{pair.source} -> {pair.target}: {cause.code}: {cause.message}", "red")
            say(f"  hint: {cause.hint}")
    if result.ok:
        say(f"every cluster reaches every cluster ({len(result.clusters)}x{len(result.clusters)})", "green")
    else:
        missing = sum(1 for p in result.pairs if not p.reached)
        say(f"{missing} of {len(result.pairs)} pair(s) not reached", "red")
    if options.keep:
        say(f"kept namespace {options.namespace} in every cluster; delete it with "
            + "; ".join(cleanup_command(tools, c, options.namespace).pasteable() for c in topology.clusters))


def _print_dry_run(mesh: Mesh, tools: Tools, plan: dict[str, list[dict]], options: Options,
                   revision: str | None, ambient: bool, notes: list[str], reporter: Reporter) -> None:
    out = reporter.info
    topology = mesh.topology
    remotes = [m for m in mesh.members if m.is_remote]
    out(f"verify on mesh {topology.mesh_id}: {len(topology.clusters)} cluster(s), namespace {options.namespace} "
        f"({mesh_label_text(revision, ambient)}) (dry run: nothing is created)")
    for note in notes:
        reporter.warn(note)
    calls = calls_per_round(len(topology.clusters))
    out("reads first what status reads, plus per cluster: "
        f"$ kubectl get namespace {options.namespace} --ignore-not-found -o json"
        + (f"; $ kubectl get daemonsets --all-namespaces -l {ZTUNNEL_SELECTOR} -o json (ztunnel)" if ambient else
           f"; $ kubectl get gateways.networking.istio.io -n {ISTIO_NAMESPACE} -o json"
           + (" (on primaries: a remote's gateways are configured from its primary)" if remotes else ""))
        + (f"; on remotes: $ kubectl get endpointslices.discovery.k8s.io -n {ISTIO_NAMESPACE} -l "
           f"kubernetes.io/service-name={istiod_name(revision)} -o json" if remotes else ""))
    for cluster in topology.clusters:
        out("")
        member = mesh.member(cluster.context)
        plane = mesh.control_plane_of(member)
        out(f"== {cluster.context}" + (f" (remote of {plane.context}: its sidecars are injected and configured by "
                                       f"{plane.context}'s istiod)" if member.is_remote else ""))
        kinds = ", ".join(f"{m['kind']} {m['metadata']['name']}" for m in plan[cluster.context])
        out(f"  create: {kinds} (helloworld answers version {cluster.name}; images {options.images.helloworld}, "
            f"{options.images.curl})")
        out("  $ " + tools.apply(cluster, dump(manifest_list(plan[cluster.context])), shown=True).pasteable(with_stdin=True)
            .replace("\n", "\n    "))
        out(f"  wait up to {options.ready_timeout:g}s for the pods: $ {pods_command(tools, cluster, options.namespace).pasteable()}")
        out(f"  call (up to {ROUNDS} times, until every cluster answered): "
            f"$ {call_command(tools, cluster, options.namespace, calls).pasteable()}")
        if options.keep:
            out("  keep the namespace (--keep)")
        else:
            out(f"  clean up: $ {cleanup_command(tools, cluster, options.namespace).pasteable()}")
