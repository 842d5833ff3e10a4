"""status, the report: what status found per cluster and for the mesh (:class:`MeshStatus`), as the table
view (lib/statusview.py) prints it and as the JSON document described in docs/status-json.md, and the
commands its hints name."""
from __future__ import annotations

import datetime as dt
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import invocation
from .checks import ERROR
from .config import Cluster, Topology
from .redact import redact

if TYPE_CHECKING:  # for the annotation only: the report does not depend on how clusters are read
    from .kube import Observed


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
    chains_to: str | None = None  # which of the workspace's roots issued ca-cert.pem: "current", "new" or "former"
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
    annotations: dict[str, str] = field(default_factory=dict)  # istio-system's, as read
    drift: bool | None = None
    revisions: dict[str, Any] | None = None  # control planes, default tag, proxies per revision (statusrevisions.py)
    # The revision whose istiod serves it (a remote: whose istiod Service its install made); None: the
    # default, or not read. After a canary upgrade it is no longer base.yaml's.
    serving_revision: str | None = None
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
            "error": redact(short_error(self.error)) if self.error else None,
            "istio": {"installed": self.istio_installed, "version": self.istio_version, "ready": self.istio_ready},
            "network_label": self.network_label,
            "cacerts": {
                "present": c.present,
                "chains_to_root": c.chains_to_root,
                "root_fingerprint": c.root_fingerprint,
                "expires": iso_utc(c.expires),
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
            "revisions": self.revisions,
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
    # What the first read found per context: verify reads no cluster twice.
    observed: dict[str, Observed] = field(default_factory=dict, repr=False, compare=False)

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


def iso_utc(value: dt.datetime | None) -> str | None:
    if value is None:
        return None
    return value.astimezone(dt.timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def short_error(error: str | None) -> str:
    """kubectl's own words, once each: not the command line that failed (the hint names one to try)."""
    lines = [line.strip() for line in (error or "").splitlines() if line.strip()]
    if len(lines) > 1 and lines[0].startswith("`"):
        lines = lines[1:]
    return " / ".join(dict.fromkeys(lines)) or "no answer"


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
