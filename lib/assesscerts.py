"""The assessment of a cluster's secret cacerts: whose CA it holds, under which root, and whether it is what
the cluster must hold now (mid-move: at the move's stage).

Pure, like lib/assess.py (which holds it in a cluster's findings): functions of what one read of the cluster
showed and of the certificates the workspace holds, passed in as bytes (:class:`WorkspaceCerts`, read by
lib/casteps.py or from status's inputs). The plan, status and rotate-certs read the same finding.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from enum import Enum
from typing import Mapping, Sequence

from . import carotation, certs
from .kube import Observed
from .names import TRANSITION_ANNOTATION


class CacertsState(str, Enum):
    ABSENT = "absent"  # no secret cacerts: apply creates it
    CURRENT = "current"  # exactly what it must hold now (and, mid-move, recorded at the move's stage)
    OURS_OUTDATED = "ours-outdated"  # trusts this workspace's root, other contents (an earlier intermediate)
    BEHIND_MOVE = "behind-move"  # mid-move to a new root: trusts a root of the move, not at its stage yet
    OTHER_ROOT = "other-root"  # made by setup-mesh under another root (another workspace's, or an earlier one)
    FOREIGN = "foreign"  # not made by setup-mesh, under another root: somebody's own CA
    OTHER_MOVE = "other-move"  # trusts this workspace's root, mid-way in a move to a root another workspace holds


# Replacing these at once breaks mTLS between workloads that hold certificates of the old root and the new one.
OTHER_ROOTS = frozenset({CacertsState.OTHER_ROOT, CacertsState.FOREIGN, CacertsState.OTHER_MOVE})

# Which of the workspace's roots signed a cluster's ca-cert.pem (CacertsFinding.chains_to).
CURRENT_ROOT, NEW_ROOT, FORMER_ROOT = "current", "new", "former"


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
    ca_readable: bool = False  # its ca-cert.pem parses
    # The workspace's root whose key signed its ca-cert.pem: CURRENT_ROOT (certs/), NEW_ROOT (certs-next/, mid-move),
    # FORMER_ROOT (certs-former/, a move from the clusters' root); None: none of them.
    chains_to: str | None = None
    # Its root-cert.pem names certs/root-cert.pem first and that root signed its ca-cert.pem (None: the
    # workspace holds no root).
    on_workspace_root: bool | None = None

    @property
    def other_root(self) -> bool:
        return self.state in OTHER_ROOTS

    def describe(self) -> str:
        """Both roots, for the plan and for apply's refusal."""
        cluster_root = self.cluster_root.describe() if self.cluster_root else "a root-cert.pem that does not parse"
        ours = self.workspace_root.describe() if self.workspace_root else "(this workspace has no root CA)"
        if self.state is CacertsState.OTHER_MOVE:
            return (f"istio-system records a move to a root this workspace does not hold: another workspace is moving "
                    f"the mesh to its root (secret cacerts names root {cluster_root} first; this workspace's is {ours})")
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


@dataclass
class WorkspaceCerts:
    """The certificates a cluster's cacerts is judged against, as the workspace holds them (bytes)."""

    root: bytes | None  # certs/root-cert.pem
    want: Mapping[str, Mapping[str, bytes] | None] = field(default_factory=dict)  # cluster name -> what it must hold
    transition: carotation.Transition | None = None  # a move to a new root under way
    new_root: bytes | None = None  # certs-next/root-cert.pem, mid-move
    former_root: bytes | None = None  # certs-former/root-cert.pem: a move from the clusters' root (key not held)
    root_fingerprint: str | None = field(init=False, default=None)  # certs/root-cert.pem's, read once

    def __post_init__(self) -> None:
        found = root_id(self.root)
        self.root_fingerprint = found.fingerprint if found else None

    @property
    def roots(self) -> list[bytes]:
        """The roots the clusters may trust now, the one issuing first: the workspace's, and mid-move the new one
        (from stage 2 on, the one issuing). A move from the clusters' root goes from certs-former/ to certs/."""
        t = self.transition
        if t is None:
            return [self.root] if self.root else []
        old, new = (self.former_root, self.root) if t.foreign_start else (self.root, self.new_root)
        return [pem for pem in ([new, old] if t.stage >= 2 else [old, new]) if pem]


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


def moved_elsewhere(annotations: Mapping[str, str] | None, transition: carotation.Transition | None,
                    root_fingerprint: str | None) -> bool:
    """istio-system records a move to a root that is neither this workspace's (``root_fingerprint``) nor the
    one its move goes to: another workspace is moving the mesh from this workspace's root to its own
    (replacing cacerts now would undo its stages)."""
    moving_to = carotation.parse_annotation((annotations or {}).get(TRANSITION_ANNOTATION)).get("root")
    if not moving_to:
        return False
    ours = [transition.new_root] if transition is not None else []
    ours.append(root_fingerprint)
    return not any(fp and fp[:16] == moving_to for fp in ours)


def signed_by(ca_pem: bytes | None, pki: WorkspaceCerts) -> str | None:
    """Which of the workspace's roots signed ``ca_pem``: the current one, mid-move the new one, or in a move
    from the clusters' root their former one."""
    for name, root in ((CURRENT_ROOT, pki.root), (NEW_ROOT, pki.new_root), (FORMER_ROOT, pki.former_root)):
        if certs.issued_by(ca_pem, root):
            return name
    return None


def assess_cluster_cacerts(seen: Observed, cluster_name: str, pki: WorkspaceCerts) -> CacertsFinding:
    """The cluster's cacerts against what it must hold now, with whose root signed its intermediate."""
    t = pki.transition
    at_stage = t is None or carotation.stage_since(t, seen.annotations or {}) is not None
    found = assess_cacerts(seen.cacerts, seen.cacerts_labelled, pki.want.get(cluster_name), pki.roots, at_stage)
    if found.state in (CacertsState.OURS_OUTDATED, CacertsState.BEHIND_MOVE) and \
            moved_elsewhere(seen.annotations, t, pki.root_fingerprint):
        found = replace(found, state=CacertsState.OTHER_MOVE)
    if seen.cacerts is None:
        return found
    ca = seen.cacerts.get("ca-cert.pem")
    readable = root_id(ca) is not None
    chains_to = signed_by(ca, pki) if readable else None
    on_root = None if pki.root_fingerprint is None else bool(
        found.cluster_root and found.cluster_root.fingerprint == pki.root_fingerprint and chains_to == CURRENT_ROOT)
    return replace(found, ca_readable=readable, chains_to=chains_to, on_workspace_root=on_root)
