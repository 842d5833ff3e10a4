"""What verify deploys in every cluster, and how it calls across the mesh: the traffic probe.

In every cluster: a throwaway namespace enabled for the cluster's control plane (in an ambient mesh:
enrolled in ztunnel), the helloworld Service (port 5000) and one helloworld Deployment whose answer
names the cluster (its SERVICE_VERSION), and a curl client. Once they are ready, every cluster's client
calls ``helloworld.<ns>:5000/hello`` until every cluster that should answer has, or the calls run out.
What each cluster showed is a :class:`ClusterRun`; lib/diagnosis.py explains what did not answer.
"""
from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from typing import Any

from . import polling
from .config import Cluster, Topology
from .executor import Executor, Phase, RunContext, Step
from .kube import Tools
from .names import REVISION_LABEL
from .overlay import manifest_list
from .reporter import Reporter
from .yamlfile import dump

DEFAULT_NAMESPACE = "setup-mesh-verify"
DEFAULT_HELLOWORLD_IMAGE = "registry.istio.io/release/examples-helloworld-v1"
DEFAULT_HELLOWORLD_TAG = "1.0"
DEFAULT_CURL_IMAGE = "curlimages/curl"
DEFAULT_CURL_TAG = "8.16.0"
CALL_TIMEOUT = 5  # seconds per call (curl --max-time)
POLL_SECONDS = 1.0
ROUNDS = 2  # batches of calls before a pair counts as not reached
CREATED_BY = "app.kubernetes.io/created-by"  # label on the namespace: what verify may delete
CREATOR = "setup-mesh-verify"
AMBIENT_MODE_LABEL = "istio.io/dataplane-mode"  # on a namespace: its pods join the ambient mesh through ztunnel
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
    return {REVISION_LABEL: revision} if revision else {"istio-injection": "enabled"}


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


def _dig(obj: Any, *path: str) -> Any:
    """``obj[path[0]][path[1]]...``, None where a level is missing or null (as in kubectl's JSON)."""
    for key in path:
        obj = obj.get(key) if isinstance(obj, dict) else None
    return obj


def pod_states(pods_json: str) -> dict[str, list[PodState]]:
    """app label -> its pods, with readiness and, when not ready, the reason kubectl would show. An app
    whose Deployment has no pod at all gets one entry that is not ``created``, with the Deployment's
    reason (its ReplicaFailure condition, e.g. a webhook that refused the pods)."""
    out: dict[str, list[PodState]] = {}
    items = json.loads(pods_json or "{}").get("items") or []
    for pod in items:
        if pod.get("kind", "Pod") == "Pod" and not _dig(pod, "metadata", "deletionTimestamp"):
            out.setdefault(_dig(pod, "metadata", "labels", "app") or "", []).append(_pod_state(pod))
    for deployment in items:
        app = _dig(deployment, "spec", "template", "metadata", "labels", "app")
        if deployment.get("kind") == "Deployment" and app and not out.get(app):
            out[app] = [_deployment_state(deployment)]
    return out


def _pod_state(pod: dict) -> PodState:
    status = pod.get("status") or {}
    ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or [])
    containers = [c.get("name") for c in _dig(pod, "spec", "containers") or []]
    return PodState(_dig(pod, "metadata", "name") or "", ready, "" if ready else _not_ready_reason(status),
                    "istio-proxy" in containers)


def _not_ready_reason(status: dict) -> str:
    """A waiting container's reason and message, as kubectl shows it; else the phase and the first
    condition that is not met."""
    for cs in status.get("containerStatuses") or []:
        waiting = _dig(cs, "state", "waiting") or {}
        if waiting.get("reason"):
            return ": ".join([f"{cs.get('name')}", waiting["reason"]] + [waiting["message"]] * bool(waiting.get("message")))
    cond = next((c for c in status.get("conditions") or [] if c.get("status") != "True"), {})
    said = f"{cond.get('reason', '')} {cond.get('message', '')}".strip()
    return (status.get("phase") or "Pending") + (f": {said}" if said else "")


def _deployment_state(deployment: dict) -> PodState:
    """A Deployment without pods: its ReplicaFailure says why (the API server refused them)."""
    conditions = (deployment.get("status") or {}).get("conditions") or []
    failure = next((c for c in conditions if c.get("type") == "ReplicaFailure" and c.get("status") == "True"), {})
    reason = (f"{failure.get('reason') or 'ReplicaFailure'}: {failure.get('message', '')}".rstrip(": ")
              if failure else "no pod created yet")
    return PodState((deployment.get("metadata") or {}).get("name", ""), False, reason, False, created=False,
                    refused=bool(failure))


def answers(output: str) -> list[str]:
    """The versions (cluster names) that answered, one per successful call."""
    return [m.group("version") for m in HELLO.finditer(output)]


@dataclass
class ClusterRun:
    """What happened in one cluster."""

    applied: bool = False
    error: str | None = None  # a step failed (deploy, exec)
    client: PodState | None = None
    server: PodState | None = None
    answered_by: dict[str, int] = field(default_factory=dict)  # cluster name -> answers
    failures: list[str] = field(default_factory=list)  # call errors, distinct


def mesh_label_text(revision: str | None, ambient: bool = False) -> str:
    return ", ".join(f"{k}={v}" for k, v in mesh_labels(revision, ambient).items())


# --- the steps ---------------------------------------------------------------------------------------

def phase(name: str, topology: Topology, make) -> Phase:
    """One step per cluster, made by ``make(cluster)``."""
    built = Phase(name)
    for cluster in topology.clusters:
        built.add(cluster.context, make(cluster))
    return built


def deploy_step(tools: Tools, cluster: Cluster, items: list[dict], run: ClusterRun) -> Step:
    command = tools.apply(cluster, dump(manifest_list(items)), shown=True)

    def action(ctx: RunContext) -> None:
        run.applied = True  # from here on, cleanup has something to remove
        ctx.run(command)

    return Step("deploy helloworld and curl", commands=[command], action=action)


def wait_step(tools: Tools, cluster: Cluster, namespace: str, ready_timeout: float, run: ClusterRun) -> Step:
    command = pods_command(tools, cluster, namespace)

    def action(ctx: RunContext) -> None:
        deadline = time.monotonic() + ready_timeout
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


def call_step(tools: Tools, cluster: Cluster, namespace: str, topology: Topology, run: ClusterRun) -> Step:
    calls = calls_per_round(len(topology.clusters))
    command = call_command(tools, cluster, namespace, calls)
    expected = {c.name for c in topology.clusters}

    def action(ctx: RunContext) -> None:
        if run.client is None or not run.client.ready:
            return
        for _ in range(ROUNDS):
            result = ctx.run(command)
            for version in answers(result.stdout):
                run.answered_by[version] = run.answered_by.get(version, 0) + 1
            _note_failures(run, result.stdout + "\n" + result.stderr)
            if expected <= set(run.answered_by):
                return

    return Step("call helloworld", commands=[command], action=action)


def _note_failures(run: ClusterRun, output: str) -> None:
    """curl's errors, each once, at most five."""
    for line in output.splitlines():
        line = line.strip()
        if line and not HELLO.search(line) and not line.startswith("command terminated"):
            if line not in run.failures and len(run.failures) < 5:
                run.failures.append(line)


def cleanup(topology: Topology, tools: Tools, runner, namespace: str, parallel: int, runs: dict[str, ClusterRun],
            reporter: Reporter) -> None:
    """Deletes the namespace (and with it everything verify made) wherever verify began to deploy.
    Runs after success, failure and Ctrl-C alike."""
    touched = [c for c in topology.clusters if runs[c.context].applied]
    if not touched:
        return
    resume = getattr(runner, "resume", None)  # a Ctrl-C stopped the runner: this clean-up must still run
    if resume:
        resume()
    quiet = Reporter(console=reporter.console, err_console=reporter.err, quiet=True)
    executor = Executor(runner, quiet, parallel)
    executor.run_phase(phase("clean up", Topology(topology.mesh_id, tuple(touched), topology.path),
                             lambda c: Step("clean up", commands=[cleanup_command(tools, c, namespace)])))
    for context, exc in executor.outcome.failures.items():
        command = cleanup_command(tools, topology.by_context(context), namespace).pasteable()
        reporter.warn(f"{context}: could not delete namespace {namespace}: {exc.message.splitlines()[-1]}; "
                      f"delete it with `{command}`")
