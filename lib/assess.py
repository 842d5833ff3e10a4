"""One judgment of what a cluster holds against what it should hold: typed findings, per cluster.

Pure: functions of the mesh model, a cluster's desired state and what one read of it showed (and, for
cacerts, the certificates the workspace holds, passed in as bytes). No files, no programs. The plan
turns findings into steps, status reports them; both read the same finding instead of judging twice.
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Mapping, Sequence

from . import certs, carotation
from .kube import Observed, token_fingerprint
from .mesh import Member, Mesh

# --- cacerts ---------------------------------------------------------------------------------------


class CacertsState(str, Enum):
    ABSENT = "absent"  # no secret cacerts: apply creates it
    CURRENT = "current"  # exactly what it must hold now (and, mid-move, recorded at the move's stage)
    OURS_OUTDATED = "ours-outdated"  # trusts this workspace's root, other contents (an earlier intermediate)
    BEHIND_MOVE = "behind-move"  # mid-move to a new root: trusts a root of the move, not at its stage yet
    OTHER_ROOT = "other-root"  # made by setup-mesh under another root (another workspace's, or an earlier one)
    FOREIGN = "foreign"  # not made by setup-mesh, under another root: somebody's own CA


# Replacing these at once breaks mTLS between workloads that hold certificates of the old root and the new one.
OTHER_ROOTS = frozenset({CacertsState.OTHER_ROOT, CacertsState.FOREIGN})


@dataclass(frozen=True)
class RootId:
    """A root certificate as the user can compare it: its subject and SHA-256 fingerprint."""

    subject: str
    fingerprint: str  # hex, lowercase

    def describe(self) -> str:
        return f"{self.subject or '(no subject)'} (SHA-256 {self.fingerprint})"


@dataclass(frozen=True)
class CacertsFinding:
    state: CacertsState
    cluster_root: RootId | None = None  # the root the cluster's root-cert.pem names first (the one in charge)
    workspace_root: RootId | None = None  # the root this workspace issues under now
    issuer: str | None = None  # FOREIGN: whose CA it holds (ca-cert.pem's subject and issuer)

    @property
    def other_root(self) -> bool:
        return self.state in OTHER_ROOTS

    def describe(self) -> str:
        """Both roots, for the plan and for apply's refusal."""
        cluster_root = self.cluster_root.describe() if self.cluster_root else "a root-cert.pem that does not parse"
        ours = self.workspace_root.describe() if self.workspace_root else "(this workspace has no root CA)"
        who = ("made by setup-mesh from another workspace or an earlier root" if self.state is CacertsState.OTHER_ROOT
               else f"not made by setup-mesh: {self.issuer}")
        return f"secret cacerts chains to root {cluster_root}, {who}; this workspace's root is {ours}"


def root_id(pem: bytes | None) -> RootId | None:
    """The first certificate of a PEM bundle, or None when there is none that parses."""
    first = carotation.split_pems(pem)[:1]
    try:
        info = certs.read_cert(first[0]) if first else None
    except ValueError:
        return None
    return RootId(info.subject, info.fingerprint) if info else None


def assess_cacerts(held: Mapping[str, bytes] | None, labelled: bool, want: Mapping[str, bytes] | None,
                   workspace_roots: Sequence[bytes], at_stage: bool = True) -> CacertsFinding:
    """``held``: the cluster's cacerts (public parts); ``labelled``: it carries setup-mesh's label;
    ``want``: what it must hold now (None: the intermediate is not made yet); ``workspace_roots``: the roots
    the clusters may trust now (the workspace's, and mid-move the new one too), the one issuing first;
    ``at_stage``: istio-system records the move's current stage (always True outside a move)."""
    ours = root_id(workspace_roots[0]) if workspace_roots else None
    if held is None:
        return CacertsFinding(CacertsState.ABSENT, workspace_root=ours)
    theirs = root_id(held.get("root-cert.pem"))
    if carotation.holds(dict(held), dict(want) if want else None) and at_stage:
        return CacertsFinding(CacertsState.CURRENT, theirs, ours)
    ours_fps = set().union(*(certs.bundle_fingerprints(pem) for pem in workspace_roots)) if workspace_roots else set()
    if not ours_fps:  # no root to compare with: what setup-mesh made is taken as its own, as before roots existed
        state = CacertsState.OURS_OUTDATED if labelled else CacertsState.FOREIGN
    elif certs.bundle_fingerprints(held.get("root-cert.pem")) & ours_fps:
        state = CacertsState.BEHIND_MOVE if len(workspace_roots) > 1 else CacertsState.OURS_OUTDATED
    else:
        state = CacertsState.OTHER_ROOT if labelled else CacertsState.FOREIGN
    issuer = certs.describe_foreign(dict(held)) if state is CacertsState.FOREIGN else None
    return CacertsFinding(state, theirs, ours, issuer)


# --- the mesh as configured -------------------------------------------------------------------------

def loopback_peers(mesh: Mesh) -> list[Member]:
    """Clusters whose remote secret another cluster must hold, while the API server it would name is a
    loopback address (no reachable ``api_server:``): that cluster can never read them, whatever apply does."""
    held = {context for m in mesh.members for context in m.holds_secrets_of}
    return [m for m in mesh.members if m.context in held and m.cluster.server_is_local]


# --- remote secrets ---------------------------------------------------------------------------------

class SecretState(str, Enum):
    PRESENT = "present"  # held, and not known to be outdated
    MISSING = "missing"  # must be held, is not
    OUTDATED = "outdated"  # held, carrying credentials the peer no longer issues
    LOOPBACK = "loopback"  # held, naming a loopback API server this cluster cannot reach
    UNNEEDED = "unneeded"  # of a cluster of the mesh, which this one need not hold (a remote holds none)
    STALE = "stale"  # of a cluster that is not in the mesh


@dataclass(frozen=True)
class SecretFinding:
    peer: str  # the Istio cluster name the secret is for
    state: SecretState
    secret: str | None = None  # the Secret's name, when held
    context: str | None = None  # the peer's context, when it is a member
    # Carries the credentials the peer issues now: True, False, or None when that is not known (the
    # peer's reader token was not read, or the secret records no source).
    current: bool | None = None

    @property
    def to_import(self) -> bool:
        """apply brings this secret: it is missing, or not known to carry the peer's current credentials."""
        return not self.to_prune and self.current is not True

    @property
    def to_prune(self) -> bool:
        return self.state in (SecretState.STALE, SecretState.UNNEEDED)


def issued_credentials(mesh: Mesh, observed: Mapping[str, Observed]) -> dict[str, str | None]:
    """Each member's current credentials, as the fingerprint its remote secret records (by context)."""
    return {m.context: token_fingerprint(m.name, m.cluster.remote_server,
                                         (observed.get(m.context) or Observed()).reader_token)
            for m in mesh.members}


def assess_secrets(mesh: Mesh, member: Member, seen: Observed,
                   issued: Mapping[str, str | None]) -> list[SecretFinding]:
    """Every remote secret ``member`` must hold or holds, judged: per peer of the mesh, then the secrets of
    clusters outside it (by name). ``issued``: :func:`issued_credentials`."""
    found = []
    duty = set(member.holds_secrets_of)
    for peer in mesh.members:
        if peer is member:
            continue
        info = seen.remote_secrets.get(peer.name)
        if peer.context not in duty:
            if info is not None:
                found.append(SecretFinding(peer.name, SecretState.UNNEEDED, info.name, peer.context))
            continue
        if info is None:
            found.append(SecretFinding(peer.name, SecretState.MISSING, context=peer.context))
            continue
        want = issued.get(peer.context)
        current = None if want is None else info.source == want
        state = (SecretState.LOOPBACK if info.suspicious_local else
                 SecretState.OUTDATED if current is False else SecretState.PRESENT)
        found.append(SecretFinding(peer.name, state, info.name, peer.context, current))
    names = {m.name for m in mesh.members}
    found.extend(SecretFinding(name, SecretState.STALE, info.name)
                 for name, info in sorted(seen.remote_secrets.items()) if name not in names)
    return found
