"""status / describe: the mesh's health, read from every cluster and changing nothing.

Reading is separated from judging: :func:`collect` reads the clusters (in parallel), :func:`evaluate`
turns what was read plus the workspace into a :class:`MeshStatus` without running anything, and the
renderers print it as tables or as the JSON document described in docs/status-json.md.
"""
from __future__ import annotations

import datetime as dt
import os
import json
import re
import shlex
import time
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

from cryptography import x509
from cryptography.exceptions import InvalidSignature

from . import certs, invocation, lifecycle
from . import polling
from .ambient import gateway_status
from .assess import (GatewayState, LabelState, SecretFinding, SecretState, assess_gateway, assess_install,
                     assess_namespace, assess_secrets, assess_wiring, issued_credentials, WiringFinding)
from .cluster import ClusterClient, KubeClient
from .checks import ERROR, EXPIRY_WARN_DAYS, LOCAL, MISSING, OUTDATED, PRESENT, STALE, SYNCED, WARNING
from .config import AMBIENT, MULTIROOT_ENV, SIDECAR, Cluster, Topology, data_plane_mode, select_clusters
from .gatewayapi import offline_crds_hint, expected_version, older_than_needed
from .fsutil import read_if_present
from .errors import MeshError
from .executor import RunContext, read_clusters
from .invocation import prep_hint
from .kube import (CA_ROOT_CONFIGMAP, GATEWAY_RESOURCE, READ_TIMEOUT, Observed, Tools, gateway_addresses,
                   parse_published_roots)
from .mesh import Mesh, mesh_model
from .overlay import CONTROL_PLANE_CLUSTERS, EASTWEST_NAME, ISTIO_NAMESPACE, NETWORK_LABEL, control_plane_revision
from .redact import redact
from .reporter import Reporter
from .statusview import render as render_view
from .workspace import find_tools, load_workspace

if TYPE_CHECKING:
    from .desired import Desired

WAIT_POLL_SECONDS = 2.0
ISTIOD_CONTAINER = "discovery"
ZTUNNEL = "ztunnel"  # the ambient profile's DaemonSet in istio-system
# Image tag suffixes that name a build flavour, not a version.
_TAG_VARIANTS = ("-distroless", "-debug")
# Istio release tags: 1.29.0, 1.30.0-beta.1, 1.29.0-rc.0 (and istio's own dev builds, 1.30-dev).
_RELEASE_TAG = re.compile(r"^\d+\.\d+(\.\d+)?(-[0-9A-Za-z.]+)?$")
UNKNOWN_VERSION = "unknown"



# --- what one cluster shows ----------------------------------------------------------------------

@dataclass
class Istiod:
    """The istiod Deployment, as far as status needs it."""

    read: bool = False  # False when the read failed (see error)
    installed: bool = False
    version: str | None = None
    ready: bool | None = None  # at least one ready replica
    cluster_id: str | None = None  # its CLUSTER_ID env: the cluster name Istio runs under
    error: str | None = None


def istiod_name(base: dict) -> str:
    revision = control_plane_revision(base)
    return f"istiod-{revision}" if revision else "istiod"


def image_version(image: str | None) -> str | None:
    """``docker.io/istio/pilot:1.29.0`` -> ``1.29.0``; None without an image; UNKNOWN_VERSION when the
    image is pinned by digest alone or its tag is not a version (``latest``, a custom build): a tag
    like that says nothing reliable about what runs."""
    if not image:
        return None
    image = image.split("@", 1)[0]
    last = image.rsplit("/", 1)[-1]
    if ":" not in last:
        return UNKNOWN_VERSION
    tag = last.rsplit(":", 1)[1]
    for variant in _TAG_VARIANTS:
        tag = tag.removesuffix(variant)
    return tag if _RELEASE_TAG.match(tag) else UNKNOWN_VERSION


def parse_istiod(deployment: dict | None) -> Istiod:
    """The istiod Deployment as the cluster read returned it (None: not there)."""
    if not deployment:
        return Istiod(read=True, installed=False)
    data = deployment
    containers = (((data.get("spec") or {}).get("template") or {}).get("spec") or {}).get("containers") or []
    container = next((c for c in containers if c.get("name") == ISTIOD_CONTAINER), containers[0] if containers else {})
    cluster_id = None
    for env in container.get("env") or []:
        if env.get("name") == "CLUSTER_ID" and env.get("value"):
            cluster_id = env["value"]
    ready = int((data.get("status") or {}).get("readyReplicas") or 0) > 0
    return Istiod(read=True, installed=True, version=image_version(container.get("image")), ready=ready,
                  cluster_id=cluster_id)


# --- istiod's own view: istioctl remote-clusters -----------------------------------------------------

@dataclass(frozen=True)
class RemoteClusterRow:
    name: str  # the cluster id istiod knows the remote by
    secret: str  # "<namespace>/<secret>"; empty for istiod's own cluster
    status: str  # synced | syncing | timeout | closed
    istiod: str  # the istiod pod reporting it
    revision: str = ""


def parse_remote_clusters(output: str) -> list[RemoteClusterRow]:
    """The table ``istioctl remote-clusters`` prints: NAME SECRET STATUS ISTIOD (1.30), plus REVISION (1.31).

    Columns are padded to their widest cell and SECRET is empty for istiod's own cluster, so cells are
    cut at the header's column starts rather than split on blanks.
    """
    lines = [line for line in output.splitlines() if line.strip()]
    header = next((i for i, line in enumerate(lines) if line.split()[:1] == ["NAME"]), None)
    if header is None:
        raise ValueError("no NAME SECRET STATUS ISTIOD header in the output of istioctl remote-clusters")
    columns = lines[header].split()
    if columns[:4] != ["NAME", "SECRET", "STATUS", "ISTIOD"]:
        raise ValueError(f"unexpected columns {' '.join(columns)} from istioctl remote-clusters")
    starts, at = [], 0
    for column in columns:
        at = lines[header].index(column, at)
        starts.append(at)
        at += len(column)
    rows = []
    for line in lines[header + 1:]:
        cells = [line[start:end].strip() for start, end in zip(starts, starts[1:] + [len(line)])]
        cells += [""] * (len(columns) - len(cells))
        values = dict(zip(columns, cells))
        rows.append(RemoteClusterRow(values["NAME"], values["SECRET"], values["STATUS"], values["ISTIOD"],
                                     values.get("REVISION", "")))
    return rows


def istiod_view(rows: list[RemoteClusterRow]) -> dict[str, str]:
    """Remote cluster -> what istiod reports for it; with several istiod pods, the worst report wins."""
    rank = {SYNCED: 0, "syncing": 1, "closed": 2, "timeout": 3}
    view: dict[str, str] = {}
    for row in rows:
        if not row.secret:  # istiod's own cluster
            continue
        if row.name not in view or rank.get(row.status, 4) > rank.get(view[row.name], 4):
            view[row.name] = row.status
    return view


@dataclass
class IstiodView:
    """What one cluster's istiod reports about its remote clusters; None fields when it was not asked."""

    remotes: dict[str, str] | None = None  # cluster name -> synced | syncing | timeout | closed
    error: str | None = None


# --- the report ------------------------------------------------------------------------------------

@dataclass
class Problem:
    code: str
    message: str
    hint: str
    severity: str = ERROR
    peer: str | None = None  # the peer a per-peer problem is about (lets the table view group them)

    def to_json(self) -> dict[str, str]:
        return {"code": self.code, "message": redact(self.message), "hint": self.hint, "severity": self.severity}


@dataclass
class Cacerts:
    present: bool | None = None  # None: not known (cluster unreachable)
    chains_to_root: bool | None = None
    root_fingerprint: str | None = None  # SHA-256 of the root-cert.pem in the cluster's cacerts
    expires: dt.datetime | None = None  # of ca-cert.pem, the cluster's intermediate CA
    days_left: int | None = None
    chains_to: str | None = None  # which of the workspace's roots issued ca-cert.pem: "current" or "new"
    roots_trusted: int | None = None  # certificates in its root-cert.pem: 2 during a root transition
    stage: int | None = None  # the root transition's stage the cluster is at
    istiod_took: bool | None = None  # istiod publishes cacerts' root bundle as its own (None: not known)


@dataclass
class ClusterStatus:
    cluster: Cluster
    reachable: bool
    error: str | None = None
    istio_installed: bool | None = None
    istio_version: str | None = None
    istio_ready: bool | None = None
    network_label: str | None = None
    cacerts: Cacerts = field(default_factory=Cacerts)
    gateway_required: bool = False
    gateway_address: str | None = None
    gateway_exists: bool | None = None
    ambient: bool = False  # the mesh is ambient: the fields below are reported
    gateway_programmed: bool | None = None  # ambient: the Gateway's Programmed condition
    gateway_api_crds: str | None = None  # ambient: the Gateway API CRDs' bundle version, "missing" or "unversioned"
    ztunnel: tuple[int, int] | None = None  # ambient: ztunnel's DaemonSet, (ready, desired) pods; None: missing
    remote_secrets: dict[str, str] = field(default_factory=dict)  # source cluster name -> state
    stale_secrets: list[str] = field(default_factory=list)  # secret names
    remote_clusters: dict[str, str] | None = None  # istiod's view: peer -> synced/syncing/timeout/closed
    primary: str | None = None  # a remote: the context of the primary whose istiod configures it
    injection_path: str | None = None  # a remote: the path its sidecar injector webhook calls
    injector_trusted: bool | None = None  # a remote: its injector webhook has a caBundle (None: not read)
    annotations: dict[str, str] = field(default_factory=dict)  # istio-system's, as read
    drift: bool | None = None
    problems: list[Problem] = field(default_factory=list)

    @property
    def healthy(self) -> bool:
        return not any(p.severity == ERROR for p in self.problems)

    def to_json(self) -> dict[str, Any]:
        c = self.cacerts
        return {
            "context": self.cluster.context,
            "cluster_name": self.cluster.name,
            "network": self.cluster.network,
            "role": "remote" if self.primary else "primary",
            "primary": self.primary,
            "reachable": self.reachable,
            "error": redact(_short_error(self.error)) if self.error else None,
            "istio": {"installed": self.istio_installed, "version": self.istio_version, "ready": self.istio_ready},
            "network_label": self.network_label,
            "cacerts": {
                "present": c.present,
                "chains_to_root": c.chains_to_root,
                "root_fingerprint": c.root_fingerprint,
                "expires": _iso(c.expires),
                "days_left": c.days_left,
                "chains_to": c.chains_to,
                "roots_trusted": c.roots_trusted,
                "transition_stage": c.stage,
                "istiod_took": c.istiod_took,
            },
            "gateway": {"required": self.gateway_required, "address": self.gateway_address,
                        **({"programmed": self.gateway_programmed} if self.ambient else {})},
            **({"gateway_api_crds": self.gateway_api_crds,
                "ztunnel": {"ready": self.ztunnel[0], "desired": self.ztunnel[1]} if self.ztunnel else None}
               if self.ambient else {}),
            "remote_secrets": dict(sorted(self.remote_secrets.items())),
            "stale_secrets": sorted(self.stale_secrets),
            "remote_clusters": dict(sorted(self.remote_clusters.items())) if self.remote_clusters is not None else None,
            "drift": self.drift,
            "problems": [p.to_json() for p in self.problems],
        }


@dataclass
class MeshStatus:
    mesh_id: str
    root_fingerprint: str | None
    clusters: list[ClusterStatus]
    problems: list[Problem] = field(default_factory=list)  # about the workspace, not one cluster
    root: dict[str, Any] | None = None  # the workspace's root: expires, days_left
    transition: dict[str, Any] | None = None  # a move to a new root under way

    @property
    def healthy(self) -> bool:
        return all(c.healthy for c in self.clusters) and not any(p.severity == ERROR for p in self.problems)

    def to_json(self) -> dict[str, Any]:
        return {
            "mesh_id": self.mesh_id,
            "healthy": self.healthy,
            "root_fingerprint": self.root_fingerprint,
            "problems": [p.to_json() for p in self.problems],
            "clusters": [c.to_json() for c in self.clusters],
            "root": self.root,
            "transition": self.transition,
        }

    def all_problems(self) -> list[tuple[str | None, Problem]]:
        """(context, problem) for every problem; context None for the mesh's own."""
        found: list[tuple[str | None, Problem]] = [(None, p) for p in self.problems]
        for c in self.clusters:
            found.extend((c.cluster.context, p) for p in c.problems)
        return found

    def errors(self) -> list[tuple[str | None, Problem]]:
        return [(context, p) for context, p in self.all_problems() if p.severity == ERROR]


def _iso(value: dt.datetime | None) -> str | None:
    if value is None:
        return None
    return value.astimezone(dt.timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


# --- hints -------------------------------------------------------------------------------------

class Hints:
    """The commands a hint names, pasteable from where the user runs setup-mesh."""

    def __init__(self, workdir: Path, topology: Topology):
        self.workdir = workdir
        self.topology = topology

    @property
    def apply(self) -> str:
        return invocation.command("apply")

    def rotate(self, *args: str) -> str:
        return invocation.command("rotate-certs", *args)

    @property
    def dry_run(self) -> str:
        return invocation.command("apply", "--dry-run")

    def kubectl(self, cluster: Cluster, *args: str) -> str:
        argv = ["kubectl"]
        if cluster.kubeconfig:
            argv += ["--kubeconfig", cluster.kubeconfig]
        return shlex.join([*argv, "--context", cluster.context, *args])

    def path(self, *parts: str) -> str:
        target = self.workdir.joinpath(*parts)
        if _same_dir(self.workdir, Path.cwd()):
            target = Path(*parts)
        return shlex.quote(str(target))

    @property
    def topology_file(self) -> str:
        return self.path(self.topology.path.name)


def _same_dir(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve()
    except OSError:
        return False


# --- judging ---------------------------------------------------------------------------------------

@dataclass
class Expected:
    """The inputs status compares the clusters with."""

    workdir: Path
    topology: Topology
    fingerprints: dict[str, str]  # context -> what apply would install now
    root_pem: bytes | None  # certs/root-cert.pem
    local_ca: dict[str, bytes | None]  # cluster name -> certs/<name>/ca-cert.pem
    istiod_deployment: str = "istiod"
    revision: str | None = None  # base.yaml's spec.revision, when not the default
    data_plane: str = SIDECAR  # ambient: the east-west gateway is a Gateway API Gateway
    transition: lifecycle.Transition | None = None  # a move to a new root under way
    new_root_pem: bytes | None = None  # certs-next/root-cert.pem during a transition
    expected: dict[str, dict[str, bytes] | None] = field(default_factory=dict)  # name -> the stage's cacerts
    # The fingerprints once the clusters are read (a remote's install names its primary's gateway address).
    fingerprints_for: Callable[[Mapping[str, str]], dict[str, str]] | None = None
    base: dict[str, Any] = field(default_factory=dict)  # base.yaml, validated

    @cached_property
    def mesh(self) -> Mesh:  # read for every cluster judged: built once
        return mesh_model(self.topology, self.data_plane)

    @cached_property
    def desired(self) -> dict[str, "Desired"]:
        """Each cluster's desired state: what its namespace and gateway are judged against."""
        from .desired import Inputs, derive

        inputs = Inputs(self.mesh, self.base, {}, self.transition)
        return {m.context: derive(inputs, m) for m in self.mesh.members}


def _load_cert(pem: bytes | None) -> x509.Certificate | None:
    if not pem:
        return None
    try:
        return x509.load_pem_x509_certificate(pem)
    except ValueError:
        return None


def _issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
        return True
    except (ValueError, TypeError, InvalidSignature):
        return False


def evaluate(ws: Expected, observed: dict[str, Observed], istiod: dict[str, Istiod],
             now: dt.datetime | None = None, views: dict[str, IstiodView] | None = None,
             injection: dict[str, "InjectorWebhook"] | None = None,
             published: dict[str, bytes | None] | None = None) -> MeshStatus:
    """What the clusters show against what the workspace says. Runs nothing. ``published``: context -> the
    root bundle its istiod publishes (istio-ca-root-cert), for the clusters where it was read."""
    now = now or dt.datetime.now(dt.timezone.utc)
    topology = ws.topology
    hints = Hints(ws.workdir, topology)
    root = _load_cert(ws.root_pem)
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
            _judge_istiod_roots(status, observed[status.cluster.context], published[status.cluster.context], ws,
                                hints)
    root_info = _judge_roots(ws, root, now, hints, mesh_problems)
    transition = _transition_summary(ws, result, observed, hints)
    return MeshStatus(topology.mesh_id, root_fp, result, mesh_problems, root_info, transition)


def _judge_roots(ws: Expected, root: x509.Certificate | None, now: dt.datetime, hints: Hints,
                 problems: list[Problem]) -> dict[str, Any] | None:
    """Days left for the workspace's root (and, mid-transition, the new one): warning under 30, error expired."""
    if root is None:
        return None
    info = certs.read_cert(ws.root_pem)
    days = info.days_left(now)
    # Mid-transition the old root still signs (stage 1) and is still trusted (stages 1 and 2).
    remedy = (f"{hints.rotate('--root')} (continues the move to the new root already under way)"
              if ws.transition is not None else
              f"{hints.rotate('--root')} (moves the mesh to a new root in three runs, at least a day apart)")
    if days < 0:
        problems.append(Problem("root_ca_expired", f"the mesh's root CA expired on {_iso(info.not_after)}: "
                                                   "cross-cluster mTLS fails", remedy))
    elif days < EXPIRY_WARN_DAYS:
        problems.append(Problem("root_ca_expiring", f"the mesh's root CA expires in {days} day(s) "
                                                    f"({_iso(info.not_after)})", remedy, severity=WARNING))
    result = {"expires": _iso(info.not_after), "days_left": days}
    if ws.new_root_pem:
        new = certs.read_cert(ws.new_root_pem)
        result["new_root"] = {"fingerprint": new.fingerprint, "expires": _iso(new.not_after),
                              "days_left": new.days_left(now)}
    return result


def _transition_summary(ws: Expected, clusters: list[ClusterStatus], observed: dict[str, Observed],
                        hints: Hints) -> dict[str, Any] | None:
    """Where a move to a new root stands, and the command for its next stage."""
    t = ws.transition
    if t is None:
        return None
    in_step = all(c.cacerts.stage == t.stage for c in clusters)
    since = [lifecycle.stage_since(t, (observed.get(c.cluster.context) or Observed()).annotations) for c in clusters]
    latest = max((s for s in since if s is not None), default=None)
    if not in_step:
        next_step = f"{hints.rotate('--root')} (brings every cluster to stage {t.stage})"
    elif t.stage == lifecycle.LAST_STAGE:
        next_step = f"{hints.rotate('--root')} (completes the transition: certs/ becomes the new root)"
    else:
        ready = latest + lifecycle.WORKLOAD_CERT_LIFETIME if latest else None
        next_step = (f"{hints.rotate('--root')} from {_iso(ready)} (stage {t.stage + 1}: "
                     f"{lifecycle.STAGES[t.stage + 1]}; --min-wait shortens the 24h wait)")
    return {"stage": t.stage, "stages": lifecycle.LAST_STAGE, "description": lifecycle.STAGES[t.stage],
            "started": t.started, "in_step": in_step, "since": _iso(latest) if in_step else None, "next": next_step}


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
                                                                 f"{_short_error(view.error)}",
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
        add(Problem("unreachable", f"cannot read the cluster: {_short_error(seen.error)}",
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
    _judge_cacerts(status, cluster, seen, ws, hints, root, root_fp, set_up, now)

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
                           set_up: bool, desired: "Desired") -> None:
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


def _short_error(error: str | None) -> str:
    """kubectl's own words, once each: not the command line that failed (the hint names one to try)."""
    lines = [line.strip() for line in (error or "").splitlines() if line.strip()]
    if len(lines) > 1 and lines[0].startswith("`"):
        lines = lines[1:]
    return " / ".join(dict.fromkeys(lines)) or "no answer"


def _judge_cacerts(status: ClusterStatus, cluster: Cluster, seen: Observed, ws: Expected, hints: Hints,
                   root: x509.Certificate | None, root_fp: str | None, set_up: bool, now: dt.datetime) -> None:
    add = status.problems.append
    c = status.cacerts
    c.present = seen.cacerts is not None
    if not c.present:
        if set_up:
            add(Problem("cacerts_missing", "secret cacerts is missing: istiod signs workloads with a self-made CA "
                                           "that no other cluster trusts", hints.apply))
        return
    files = seen.cacerts or {}
    ca = _load_cert(files.get("ca-cert.pem"))
    cluster_root = _load_cert(files.get("root-cert.pem"))
    if cluster_root is not None:
        c.root_fingerprint = certs.read_cert(files["root-cert.pem"]).fingerprint
    if ca is None:
        add(Problem("cacerts_unreadable", "secret cacerts holds no readable ca-cert.pem",
                    f"`rm -r {hints.path(certs.CERTS_DIR, cluster.name)}`, then {hints.apply} "
                    f"(re-issues the intermediate CA from this workspace's root)"))
        c.chains_to_root = False if root is not None else None
        return
    info = certs.read_cert(files["ca-cert.pem"])
    c.expires = info.not_after
    c.days_left = info.days_left(now)
    c.roots_trusted = len(set(lifecycle.split_pems(files.get("root-cert.pem"))))  # distinct: stage 2 repeats one
    if root is not None and _issued_by(ca, root):
        c.chains_to = "current"
    elif ws.new_root_pem and (new_root := _load_cert(ws.new_root_pem)) is not None and _issued_by(ca, new_root):
        c.chains_to = "new"
    if ws.transition is not None:
        # Mid-transition a cluster is in step when it holds exactly what the stage says.
        t = ws.transition
        c.chains_to_root = c.chains_to is not None
        if lifecycle.holds(seen.cacerts, ws.expected.get(cluster.name)) and lifecycle.stage_since(t, seen.annotations):
            c.stage = t.stage
        else:
            add(Problem("root_transition_behind",
                        f"secret cacerts is not at stage {t.stage} of the move to a new root "
                        f"({lifecycle.STAGES[t.stage]})", f"{hints.rotate('--root')} (brings every cluster to the stage)"))
    elif root is not None:
        c.chains_to_root = c.root_fingerprint == root_fp and _issued_by(ca, root)
        if not c.chains_to_root:
            local = _load_cert(ws.local_ca.get(cluster.name))
            local_ok = local is not None and _issued_by(local, root)
            # apply replaces a cacerts under another root only when told to (mTLS breaks until workloads restart)
            other_root = c.root_fingerprint != root_fp
            apply = invocation.command("apply", "--replace-foreign-ca") if other_root else hints.apply
            replaces = ("; it replaces that cacerts at once: mTLS between workloads breaks until they restart"
                        if other_root else "")
            if local_ok:
                hint = f"{apply} (installs certs/{cluster.name}/, which this workspace's root issued{replaces})"
            else:
                hint = (f"`rm -r {hints.path(certs.CERTS_DIR, cluster.name)}`, then {apply} "
                        f"(re-issues the intermediate CA from this workspace's root{replaces})")
            what = ("its root-cert.pem is another root" if c.root_fingerprint != root_fp
                    else "its ca-cert.pem was not issued by this workspace's root")
            add(Problem("cacerts_foreign_root", f"secret cacerts does not chain to this workspace's root CA "
                                                f"({what}): workloads here are not trusted by the other clusters",
                        hint))
    if ws.transition is not None:  # rotate-certs alone waits for the move, whose stage 2 re-issues every intermediate
        reissue = reissue_all = (f"{hints.rotate('--root')} (stage 2 of the move to the new root re-issues every "
                                 f"intermediate)")
    else:
        reissue = f"{hints.rotate('--context', cluster.context)} (re-issues it from this workspace's root)"
        reissue_all = (f"{reissue}, or {hints.rotate('--expiring-within', str(EXPIRY_WARN_DAYS))} for every such "
                       f"cluster")
    if c.days_left < 0:
        add(Problem("cacerts_expired", f"the intermediate CA in cacerts expired on {_iso(c.expires)}", reissue))
    elif c.days_left < EXPIRY_WARN_DAYS:
        add(Problem("cacerts_expiring", f"the intermediate CA in cacerts expires in {c.days_left} day(s) "
                                        f"({_iso(c.expires)})", reissue_all, severity=WARNING))


def _judge_istiod_roots(status: ClusterStatus, seen: Observed, published: bytes | None, ws: Expected,
                        hints: Hints) -> None:
    """istiod took the root bundle secret cacerts holds: the bundle it publishes in istio-ca-root-cert is
    that one, byte for byte. istiod takes a changed root-cert.pem only under ISTIO_MULTIROOT_MESH and when
    one bundle contains the other (pilot/pkg/bootstrap/istio_ca.go handleEvent: as bytes up to 1.29, as
    a set of certificates from 1.30); else it keeps the roots, and the intermediate, it had."""
    want = (seen.cacerts or {}).get("root-cert.pem")
    if not want or published is None:  # no cacerts to take, or istiod has published nothing yet
        return
    status.cacerts.istiod_took = published == want
    if status.cacerts.istiod_took or any(p.code == "cacerts_foreign_root" for p in status.problems):
        return  # a cacerts that is not this mesh's is the problem to solve (apply puts back what istiod holds)
    held, wanted = set(lifecycle.split_pems(published)), set(lifecycle.split_pems(want))
    deployment = ws.istiod_deployment
    containers = (((seen.deployments.get(deployment) or {}).get("spec") or {}).get("template") or {}).get("spec", {})
    env = {e.get("name"): e.get("value") for c in containers.get("containers") or [] for e in c.get("env") or []}
    if not held & wanted:
        why = ("it signs with a root that is not in cacerts (istiod reads cacerts when it starts, and watches "
               "it only when it was there then)")
    elif str(env.get(MULTIROOT_ENV, "")).lower() not in ("true", "1", "t"):
        why = f"it runs without {MULTIROOT_ENV}=true, so it keeps the roots it started with"
    elif held == wanted:
        why = ("cacerts holds the same roots in another order: istiod before 1.30 takes a changed bundle only "
               "when one contains the other byte for byte (its log says \"Updating new ROOT-CA not supported\")")
    else:
        why = ("neither bundle contains the other, so istiod keeps its own (its log says \"Updating new ROOT-CA "
               "not supported\")")
    stage = f" (stage {ws.transition.stage} of the move to a new root)" if ws.transition else ""
    restart = hints.kubectl(status.cluster, "rollout", "restart", f"deployment/{deployment}", "-n", ISTIO_NAMESPACE)
    status.problems.append(Problem("istiod_roots_not_taken",
        f"istiod did not take the root bundle in secret cacerts{stage}: it publishes {len(held)} root(s) in "
        f"{CA_ROOT_CONFIGMAP}, cacerts holds {len(wanted)}; {why}",
        f"`{restart}` (istiod loads cacerts whole when it starts), then {invocation.command('status')}; "
        f"a change made in the last minute or two may still be on its way to istiod"))


# --- reading ---------------------------------------------------------------------------------------

def collect(ws: Expected, tools: Tools, runner, reporter: Reporter, parallel: int) -> MeshStatus:
    # The reads report no progress: status prints one report at the end.
    return read_status(ws, KubeClient(tools, runner, reporter, parallel).quiet())


def read_status(ws: Expected, client: ClusterClient) -> MeshStatus:
    """Every read status makes, through ``client``, judged."""
    observed = client.read_state(list(ws.topology.clusters), title="read status", ambient=ws.data_plane == AMBIENT)
    istiod = {ctx: parse_istiod(seen.deployments.get(ws.istiod_deployment)) if seen.reachable
              else Istiod(read=False, error=seen.error) for ctx, seen in observed.items()}
    asked = [c for c in ws.topology.clusters if istiod.get(c.context) and istiod[c.context].installed]
    views = client.istiod_views(asked, ws.revision)
    if ws.fingerprints_for:
        addresses = gateway_addresses(observed)
        ws = replace(ws, fingerprints=ws.fingerprints_for(addresses))
    remotes = [c for c in ws.topology.clusters if c.primary and observed.get(c.context)
               and observed[c.context].reachable]
    injection = client.injection_paths(remotes, ws.revision)
    published = client.published_roots([c for c in asked if observed[c.context].cacerts])
    return evaluate(ws, observed, istiod, views=views, injection=injection, published=published)


@dataclass(frozen=True)
class InjectorWebhook:
    """A remote's sidecar injector webhook as read: the path it calls (None: none, or it calls a URL), and
    whether every webhook has a caBundle (None: no webhook read). The chart leaves caBundle empty; the
    primary's istiod patches it in, and until then kube-apiserver cannot trust istiod and refuses pods."""

    path: str | None = None
    trusted: bool | None = None


def read_injection_paths(clusters: list[Cluster], revision: str | None, tools: Tools, runner, reporter: Reporter,
                         parallel: int) -> dict[str, InjectorWebhook]:
    """Each remote's sidecar injector webhook: the path it calls and whether it has its caBundle."""
    name = f"istio-sidecar-injector-{revision}" if revision else "istio-sidecar-injector"

    def read(ctx: RunContext, cluster: Cluster) -> InjectorWebhook:
        command = replace(tools.kubectl_cmd(cluster, "get", "mutatingwebhookconfiguration", name, "-o", "json",
                                            "--ignore-not-found"), check=False)
        try:
            result = ctx.run(command)
            hooks = (json.loads(result.stdout or "{}").get("webhooks") or []) if result.ok else []
        except (MeshError, ValueError):
            return InjectorWebhook()
        paths = {((h.get("clientConfig") or {}).get("service") or {}).get("path") for h in hooks}
        trusted = all((h.get("clientConfig") or {}).get("caBundle") for h in hooks) if hooks else None
        return InjectorWebhook(paths.pop() if len(paths) == 1 else None, trusted)

    return read_clusters(clusters, runner, reporter, parallel, "read the sidecar injector", read)


def read_published_roots(clusters: list[Cluster], tools: Tools, runner, reporter: Reporter,
                         parallel: int) -> dict[str, bytes | None]:
    """The root bundle each cluster's istiod publishes (istio-ca-root-cert in istio-system); a cluster whose
    ConfigMap could not be read is left out (not judged)."""

    def read(ctx: RunContext, cluster: Cluster) -> bytes | None | MeshError:
        try:
            result = ctx.run(tools.published_roots(cluster, tools.timeout))
            return parse_published_roots(result.stdout) if result.ok else MeshError(result.stderr_tail())
        except ValueError as exc:
            return MeshError(str(exc))
        except MeshError as exc:
            return exc

    found = read_clusters(clusters, runner, reporter, parallel, "read the roots istiod publishes", read)
    return {ctx: value for ctx, value in found.items() if not isinstance(value, MeshError)}


def read_istiod_views(clusters: list[Cluster], revision: str | None, tools: Tools, runner, reporter: Reporter,
                      parallel: int) -> dict[str, IstiodView]:
    """``istioctl remote-clusters`` against each cluster's istiod, in parallel."""
    args = ["remote-clusters"] + (["--revision", revision] if revision else [])

    def read(ctx: RunContext, cluster: Cluster) -> IstiodView:
        command = replace(tools.istioctl_cmd(cluster, *args), check=False)
        try:
            result = ctx.run(command)
            if result.ok:
                return IstiodView(remotes=istiod_view(parse_remote_clusters(result.stdout)))
            return IstiodView(error=result.stderr_tail() or f"exit code {result.exit_code}")
        except ValueError as exc:
            return IstiodView(error=str(exc))
        except MeshError as exc:
            return IstiodView(error=exc.message)

    return read_clusters(clusters, runner, reporter, parallel, "read istiod's remote clusters", read)


def status_workspace(workdir: Path, loaded) -> Expected:
    """What status compares the clusters with, from a loaded workspace (commands.load_workspace)."""
    from .desired import desired_state

    cert_dir = certs.certs_dir(workdir)
    transition = lifecycle.load_transition(workdir)
    desired = desired_state(loaded.topology, loaded.base, transition=transition)
    return Expected(
        workdir=workdir,
        topology=loaded.topology,
        fingerprints={ctx: d.fingerprint for ctx, d in desired.items()},
        fingerprints_for=lambda addresses: {ctx: d.fingerprint for ctx, d in
                                            desired_state(loaded.topology, loaded.base, addresses,
                                                          transition=transition).items()},
        root_pem=read_if_present(cert_dir / certs.ROOT_CERT),
        local_ca={c.name: read_if_present(cert_dir / c.name / "ca-cert.pem") for c in loaded.topology.clusters},
        istiod_deployment=istiod_name(loaded.base),
        revision=control_plane_revision(loaded.base),
        data_plane=data_plane_mode(loaded.base),
        transition=transition,
        base=loaded.base,
        new_root_pem=read_if_present(lifecycle.next_dir(workdir) / certs.ROOT_CERT) if transition else None,
        expected={c.name: lifecycle.desired_cacerts(workdir, c.name, transition) for c in loaded.topology.clusters}
        if transition else {},
    )


def run_status(workdir: Path, *, kubeconfig: str | None, istio_dir: str | None, output: str, wait: bool,
               wait_timeout: float, parallel: int, runner, reporter: Reporter, contexts: list[str] = (),
               timeout: float = READ_TIMEOUT) -> int:
    loaded = load_workspace(workdir, kubeconfig, lenient=False)
    # Every cluster is still read: whether a shown cluster holds its peers' current secrets depends on them.
    shown = {c.context for c in select_clusters(loaded.topology, list(contexts))}
    tools = find_tools(istio_dir, runner, False, loaded.notes, timeout)
    ws = status_workspace(workdir, loaded)

    deadline = time.monotonic() + wait_timeout
    polls = 0
    while True:
        status = collect(ws, tools, runner, reporter, parallel)
        status = replace(status, clusters=[c for c in status.clusters if c.cluster.context in shown])
        polls += 1
        remaining = deadline - time.monotonic()
        if not wait or status.healthy or remaining <= 0:
            break
        if output != "json":
            errors = status.errors()
            reporter.info(f"waiting for {len(errors)} problem(s) to clear: "
                          + ", ".join(sorted({f"{ctx or 'workspace'} {p.code}" for ctx, p in errors})))
        time.sleep(min(polling.interval(WAIT_POLL_SECONDS), max(remaining, 0.0)))

    if output == "json":
        reporter.console.out(json.dumps(status.to_json(), indent=2), highlight=False)
    else:
        render(status, reporter)
    if wait and not status.healthy:
        still = "; ".join(f"{ctx + ': ' if ctx else ''}{p.code}" for ctx, p in status.errors())
        reporter.error(MeshError(f"the mesh is still unhealthy after {wait_timeout:g}s ({polls} check(s)): {still}",
                                 hint="see the problems and hints above; raise --wait-timeout if it is only slow"))
    return 0 if status.healthy else 1


# --- printing --------------------------------------------------------------------------------------

def render(status: MeshStatus, reporter: Reporter) -> None:

    render_view(status, _wide_console(reporter.console), tables=not reporter.quiet)


def _wide_console(console):
    """Pipes and CI logs have no width to respect: there, tables are as wide as their cells. A terminal's
    width is kept (columns are dropped to fit)."""
    from rich.console import Console

    if console.is_terminal or os.environ.get("COLUMNS"):
        return console
    return Console(file=console.file, width=max(console.width, 200), highlight=False, soft_wrap=True,
                   color_system=console.color_system, force_terminal=False, no_color=console.no_color)
