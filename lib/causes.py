"""verify's causes by name, its result, and status's report asked by check.

Every cause a pair (or a cluster) can show is registered here with an id, a description and a hint, as
status's checks are in lib/checks.py; docs/verify-json.md lists the same table. A cause that rests on
what status found names the status checks it rests on (``RESTS_ON``): verify's cause is then the
problem status reported, restated for the pair, never a judgment of its own.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .assess import SecretState
from .checks import CLUSTER, ERROR, Check, check
from .redact import redact

if TYPE_CHECKING:  # status's report, read here; status never imports verify
    from .mesh import Member
    from .statusreport import ClusterStatus, MeshStatus, Problem

PAIR = "pair"  # a cause of one (calling, answering) pair; CLUSTER: a problem of one cluster's run


def _checks(*ids: str) -> frozenset[str]:
    """Status checks by id, each looked up in the registry (an id nobody registered fails at import)."""
    return frozenset(check(i).id for i in ids)


# The status checks a pair's causes rest on, grouped by what they mean for traffic.
ISTIOD_SERVICE = _checks("istiod_service_selects_pods", "istiod_service_selects_nothing")
ISTIOD_DOWN = _checks("istiod_not_ready")
PRIMARY_LACKS_SECRET = _checks("primary_lacks_secret")
# A held secret that gives istiod no endpoints of the peer, by the assessment's finding.
SECRET_FLAWS: dict[SecretState, str] = {SecretState.MISSING: check("remote_secret_missing").id,
                                        SecretState.LOOPBACK: check("remote_secret_local").id,
                                        SecretState.OUTDATED: check("remote_secret_outdated").id}
SECRET_FLAW_STATES = {code: state for state, code in SECRET_FLAWS.items()}
NOT_SYNCED = _checks("remote_cluster_timeout", "remote_cluster_syncing", "remote_cluster_closed",
                     "remote_cluster_not_loaded")
CACERTS_UNTRUSTED = _checks("cacerts_missing", "cacerts_unreadable", "cacerts_foreign_root",
                            "root_transition_behind", "istiod_roots_not_taken")
ZTUNNEL_DOWN = _checks("ztunnel_missing", "ztunnel_not_ready")
GATEWAY_NO_ADDRESS = _checks("gateway_missing", "gateway_pending", "gateway_not_programmed")
AMBIENT_GATEWAY_MISSING = _checks("gateway_missing", "gateway_sidecar_mode", "gateway_api_crds_missing")
AMBIENT_GATEWAY_DOWN = AMBIENT_GATEWAY_MISSING | _checks("gateway_not_programmed")


def _cause(code: str, description: str, hint: str, scope: str = PAIR) -> Check:
    return Check(code, ERROR, description, hint, scope)


CAUSES: dict[str, Check] = {c.id: c for c in (
    _cause("pod_not_ready", "a pod was not ready within --ready-timeout (the message carries the reason)",
           "kubectl describe pod; for images from a mirror --registry and the tag options", CLUSTER),
    _cause("pod_missing", "a Deployment had no pod at all (the message carries its ReplicaFailure condition)",
           "kubectl describe deployment", CLUSTER),
    _cause("step_failed", "deploying or calling failed in a cluster", "re-run verify; setup-mesh apply", CLUSTER),
    _cause("istiod_not_ready", "a primary of the pair has an istiod without a ready replica",
           "kubectl get pods -n istio-system -l app=istiod"),
    _cause("istiod_service_selects_pods", "a remote of the pair has an istiod Service that selects pods",
           "setup-mesh apply"),
    _cause("istiod_service_selects_nothing", "a primary of the pair has an istiod Service that selects no pods",
           "setup-mesh apply"),
    _cause("primary_istiod_not_ready", "a remote of the pair has a primary whose istiod has no ready replica",
           "kubectl get pods -n istio-system -l app=istiod in the primary"),
    _cause("primary_lacks_secret", "a remote of the pair has a primary that holds no current remote secret of it",
           "setup-mesh apply"),
    _cause("primary_not_synced", "a remote of the pair has a primary whose istiod reports it as anything but synced",
           "setup-mesh status"),
    _cause("primary_gateway_no_address", "a remote of the pair has a primary whose east-west gateway has no address",
           "check the primary's LoadBalancer"),
    _cause("primary_address_changed", "a remote's istiod Service leads to another address than its primary's "
                                      "east-west gateway has now", "setup-mesh apply"),
    _cause("remote_secret_missing", "the caller's control plane holds no remote secret of the answering cluster",
           "setup-mesh apply"),
    _cause("remote_secret_local", "the caller's control plane's remote secret of the answering cluster names a "
                                  "loopback API server", "set api_server: in topology.yaml, then setup-mesh apply"),
    _cause("remote_secret_outdated", "the caller's control plane's remote secret of the answering cluster carries "
                                     "credentials it no longer issues", "setup-mesh apply"),
    _cause("peer_not_synced", "the caller's control plane's istiod reports the answering cluster as anything but "
                              "synced", "setup-mesh status"),
    _cause("cacerts_other_root", "the cacerts of a control plane of the pair does not chain to the mesh's root",
           "setup-mesh apply"),
    _cause("gateway_no_address", "no east-west gateway of the answering cluster's network has an address",
           "check the LoadBalancer"),
    _cause("cross_network_gateway_missing", "no Gateway exposes *.local on port 15443 where the east-west gateways "
                                            "of the answering cluster's network are configured", "setup-mesh apply"),
    _cause("eastwest_gateway_missing", "ambient: no cluster of the answering cluster's network has its east-west "
                                       "Gateway", "setup-mesh apply"),
    _cause("eastwest_gateway_not_programmed", "ambient: that Gateway is there but not programmed",
           "kubectl get gateways.gateway.networking.k8s.io -o yaml"),
    _cause("ztunnel_not_ready", "ambient: the calling or answering cluster's ztunnel is missing or not ready",
           "kubectl get pods -n istio-system -l app=ztunnel"),
    _cause("sidecar_missing", "a pod of the pair has no istio-proxy container", "check the injector"),
    _cause("client_not_ready", "the caller's curl pod was not ready, so the pair was not tested",
           "see the cluster's pod problem"),
    _cause("helloworld_not_ready", "the answering helloworld pod was not ready, so the pair was not tested",
           "see the cluster's pod problem"),
    _cause("local_call_failed", "a cluster's client does not reach its own helloworld",
           "kubectl get endpoints helloworld"),
    _cause("unknown", "nothing read explains it", "istioctl proxy-config endpoint, or ztunnel-config"),
)}

# The status checks each cause rests on: verify reports it only where status reported one of them.
RESTS_ON: dict[str, frozenset[str]] = {
    "istiod_not_ready": ISTIOD_DOWN,
    "istiod_service_selects_pods": _checks("istiod_service_selects_pods"),
    "istiod_service_selects_nothing": _checks("istiod_service_selects_nothing"),
    "primary_istiod_not_ready": ISTIOD_DOWN,
    "primary_lacks_secret": PRIMARY_LACKS_SECRET,
    "primary_not_synced": NOT_SYNCED,
    "primary_gateway_no_address": GATEWAY_NO_ADDRESS,
    "remote_secret_missing": _checks("remote_secret_missing"),
    "remote_secret_local": _checks("remote_secret_local"),
    "remote_secret_outdated": _checks("remote_secret_outdated"),
    "peer_not_synced": NOT_SYNCED,
    "cacerts_other_root": CACERTS_UNTRUSTED,
    "gateway_no_address": GATEWAY_NO_ADDRESS,
    "eastwest_gateway_missing": AMBIENT_GATEWAY_MISSING,
    "eastwest_gateway_not_programmed": AMBIENT_GATEWAY_DOWN,
    "ztunnel_not_ready": ZTUNNEL_DOWN,
}


# --- the result ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Cause:
    code: str  # one of CAUSES
    message: str
    hint: str
    status_problems: tuple[tuple[str, str], ...] = ()  # (context, check id) status reports it as

    def __post_init__(self) -> None:
        if self.code not in CAUSES:
            raise KeyError(f"verify cause {self.code!r} is not registered in lib/causes.py")

    def to_json(self) -> dict[str, Any]:
        return {"code": self.code, "message": redact(self.message), "hint": self.hint,
                "status_problems": [{"context": ctx, "code": code} for ctx, code in self.status_problems]}


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


# --- what status found -------------------------------------------------------------------------------

class Findings:
    """status's report, asked by cluster and check: the problem status reported, or None."""

    def __init__(self, status: MeshStatus):
        self.by_name: dict[str, ClusterStatus] = {c.cluster.name: c for c in status.clusters}

    def read(self, name: str) -> ClusterStatus | None:
        """The cluster's status when it was read."""
        found = self.by_name.get(name)
        return found if found is not None and found.reachable else None

    def problem(self, name: str, checks: frozenset[str], peer: str | None = None) -> Problem | None:
        found = self.read(name)
        return next((p for p in found.problems if p.code in checks and (peer is None or p.peer == peer)),
                    None) if found is not None else None

    def cause(self, member: Member, code: str, problem: Problem, message: str, hint: str | None = None) -> Cause:
        return Cause(code, message, problem.hint if hint is None else hint, ((member.context, problem.code),))
