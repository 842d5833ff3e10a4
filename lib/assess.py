"""One judgment of what a cluster holds against what it should hold: typed findings, per cluster.

Pure: functions of the mesh model, a cluster's desired state and what one read of it showed (and, for
cacerts, the certificates the workspace holds, passed in as bytes: lib/assesscerts.py). No files, no
programs. The plan turns findings into steps, status reports them; both read the same finding instead of
judging twice.
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Mapping

from .ambient import gateway_status
from .assesscerts import (OTHER_ROOTS, CacertsFinding, CacertsState, RootId, WorkspaceCerts,  # noqa: F401
                          assess_cacerts, assess_cluster_cacerts, root_id)
from .config import AMBIENT, SIDECAR
from .desired import Desired, IstioObjects, at_revision
from .kube import Observed, token_fingerprint
from .mesh import Member, Mesh
from .names import CONTROL_PLANE_CLUSTERS, EASTWEST_NAME, NETWORK_LABEL
from .overlay import injection_path
from .yamldiff import diff

# Annotations of istio-system that setup-mesh sets from the mesh model, and so also removes once unwanted.
MANAGED_ANNOTATIONS = (CONTROL_PLANE_CLUSTERS,)

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


# --- istio-system: the namespace, its labels and annotations --------------------------------------

class LabelState(str, Enum):
    CURRENT = "current"
    MISSING = "missing"  # no network label
    WRONG = "wrong"  # labelled with another network


@dataclass(frozen=True)
class NamespaceFinding:
    exists: bool
    terminating: bool = False  # being deleted: as good as gone
    network: str | None = None  # the network label it carries
    want_network: str | None = None
    annotations_off: tuple[str, ...] = ()  # annotations it must carry, absent or with another value
    annotations_left: tuple[str, ...] = ()  # setup-mesh's annotations it carries and must not any more

    @property
    def label(self) -> LabelState:
        if self.network == self.want_network:
            return LabelState.CURRENT
        return LabelState.MISSING if self.network is None else LabelState.WRONG

    @property
    def current(self) -> bool:
        """Nothing to apply to the namespace itself."""
        return self.exists and not self.terminating and self.label is LabelState.CURRENT and not self.annotations_off


def assess_namespace(seen: Observed, d: Desired) -> NamespaceFinding:
    """istio-system against ``d``'s labels and annotations (the network label is the one label read)."""
    if not seen.namespace:
        return NamespaceFinding(False, want_network=d.namespace_labels.get(NETWORK_LABEL))
    held = seen.annotations or {}
    off = tuple(k for k, v in d.namespace_annotations.items() if held.get(k) != v)
    left = tuple(k for k in MANAGED_ANNOTATIONS if k in held and k not in d.namespace_annotations)
    return NamespaceFinding(True, seen.namespace_terminating, seen.network_label,
                            d.namespace_labels.get(NETWORK_LABEL), off, left)


# --- the installed overlay --------------------------------------------------------------------------

class InstallState(str, Enum):
    ABSENT = "absent"  # istio-system records no install by setup-mesh: apply installs afresh
    CURRENT = "current"  # records what apply would install now
    CHANGED = "changed"  # records an install of other overlays (or another network, other Istio objects)


@dataclass(frozen=True)
class InstallFinding:
    state: InstallState
    recorded: str | None  # the fingerprint istio-system records
    wanted: str  # the fingerprint of what apply installs now
    changed: tuple[str, ...] = ()  # paths of the control plane's overlay that differ from the one installed last
    # It differs because another workspace is moving the mesh to its root (its stages reinstall istiod): a
    # fix here would undo that move, so the move is the finding to report, not the difference.
    moved_elsewhere: bool = False

    @property
    def drift(self) -> bool:
        return self.state is not InstallState.CURRENT


def overlay_changes(last: object, want: dict) -> tuple[str, ...]:
    """The paths that differ between the overlay installed last and the one apply installs, described."""
    return tuple(d.describe() for d in diff(last, want))


def assess_install(seen: Observed, wanted: str, last_overlay: dict | None = None,
                   overlay: dict | None = None, cacerts: CacertsFinding | None = None) -> InstallFinding:
    """What istio-system records as installed against ``wanted``, the fingerprint of what apply installs
    now (``last_overlay``, ``overlay``: the control plane's overlay as installed last and as apply installs
    it, where the caller has both, for the changed paths; ``cacerts``: the cluster's cacerts finding, which
    tells whether another workspace's move explains the difference)."""
    if seen.applied is None:
        return InstallFinding(InstallState.ABSENT, None, wanted)
    if seen.applied == wanted:
        return InstallFinding(InstallState.CURRENT, seen.applied, wanted)
    changed = overlay_changes(last_overlay, overlay) if last_overlay is not None and overlay is not None else ()
    return InstallFinding(InstallState.CHANGED, seen.applied, wanted, changed,
                          moved_elsewhere=cacerts is not None and cacerts.state is CacertsState.OTHER_MOVE)


# --- the east-west gateway --------------------------------------------------------------------------

class GatewayState(str, Enum):
    NOT_NEEDED = "not-needed"
    MISSING = "missing"  # needed, not there
    OTHER_MODE = "other-mode"  # its Service belongs to the other data-plane mode's gateway
    PENDING = "pending"  # there, without an address (ambient: not programmed by istiod)
    READY = "ready"
    LEFT_OVER = "left-over"  # there, and not needed any more


# Who made the east-west gateway's Service (Observed.eastwest_made_by) -> the mode that gateway serves.
_MODE_OF_MAKER = {"operator": SIDECAR, "gateway": AMBIENT}


@dataclass(frozen=True)
class GatewayFinding:
    wanted: str | None  # the data-plane mode of the gateway it must run (None: it needs none)
    running: str | None  # the mode of the gateway whose Service it runs (None: no Service)
    present: bool  # the wanted gateway is there (sidecar: its Service; ambient: its Gateway)
    address: str | None = None
    programmed: bool | None = None  # ambient: istiod reports the Gateway programmed
    network: str | None = None  # sidecar: the network its Deployment selects pods by

    @property
    def state(self) -> GatewayState:
        if self.wanted is None:
            return GatewayState.LEFT_OVER if self.running or self.present else GatewayState.NOT_NEEDED
        if not self.present:
            return GatewayState.MISSING
        if self.running and self.running != self.wanted:
            return GatewayState.OTHER_MODE
        ready = self.programmed if self.wanted == AMBIENT else bool(self.address)
        return GatewayState.READY if ready else GatewayState.PENDING


def assess_gateway(seen: Observed, d: Desired) -> GatewayFinding:
    """The gateway of the mesh's data-plane mode (ambient: the Gateway istiod reports on; sidecar: the
    Service of the gateway istioctl installed) against what ``d`` installs."""
    wanted = AMBIENT if d.ambient_gateway is not None else SIDECAR if d.eastwest is not None else None
    running = _MODE_OF_MAKER.get(seen.eastwest_made_by or "")
    deployment = seen.deployments.get(EASTWEST_NAME) or {}
    selects = ((deployment.get("spec") or {}).get("selector") or {}).get("matchLabels") or {}
    network = selects.get(NETWORK_LABEL) if deployment else None
    if d.ambient:
        reported = gateway_status(seen.eastwest_gateway) if seen.eastwest_gateway is not None else None
        return GatewayFinding(wanted, running, reported is not None, reported.address if reported else None,
                              reported.programmed if reported else None, network)
    return GatewayFinding(wanted, running, seen.eastwest_exists, seen.eastwest_address, None, network)


# --- a remote's wiring to its primary -----------------------------------------------------------------

@dataclass(frozen=True)
class WiringFinding:
    control_plane: str | None  # the cluster name istio-system must name in controlPlaneClusters (None: a primary)
    named: str | None  # the one it names
    want_path: str | None = None  # a remote: the injection path its sidecar injector must call
    path: str | None = None  # the one it calls, as read (None: not read, or no webhook)
    trusted: bool | None = None  # its injector's webhook has a caBundle (None: not read)
    exposes_istiod: bool = False  # a primary: its istiod must be reachable through its gateway (it has remotes)
    exposed: bool = False  # a primary: remotes named it when read, so it exposes istiod now

    @property
    def names_control_plane(self) -> bool:
        return self.named == self.control_plane

    @property
    def path_right(self) -> bool:
        return self.want_path is None or self.path == self.want_path

    @property
    def stop_exposing(self) -> bool:
        return self.exposed and not self.exposes_istiod


def controlled_before(observed: Mapping[str, Observed | None]) -> frozenset[str]:
    """The primaries (cluster names) that remotes' istio-system named as their control plane when read."""
    return frozenset(seen.annotations[CONTROL_PLANE_CLUSTERS] for seen in observed.values()
                     if seen is not None and (seen.annotations or {}).get(CONTROL_PLANE_CLUSTERS))


def assess_wiring(mesh: Mesh, member: Member, annotations: Mapping[str, str], controlled: frozenset[str],
                  injector_path: str | None = None, injector_trusted: bool | None = None) -> WiringFinding:
    """``annotations``: istio-system's, as read; ``controlled``: :func:`controlled_before`; ``injector_*``:
    the remote's sidecar injector as read."""
    named = (annotations or {}).get(CONTROL_PLANE_CLUSTERS)
    if member.is_remote:
        return WiringFinding(mesh.control_plane_of(member).name, named, injection_path(member.cluster),
                             injector_path, injector_trusted)
    return WiringFinding(None, named, exposes_istiod=member.exposes_istiod, exposed=member.name in controlled)


# --- one cluster, every finding -----------------------------------------------------------------------

def missing_objects(seen: Observed, d: Desired, revision: str | None = None) -> list[tuple[IstioObjects, list[str]]]:
    """Each of ``d``'s Istio objects units (at the ``revision`` the cluster runs, lib/upgradeplan.py) of which
    the read found objects absent, with those ("Gateway istiod-gateway"); none when they were not read. A
    cluster that is not set up yet lacks them all, which its install mends: that is for the caller to weigh."""
    units = (at_revision(unit, revision) for unit in d.istio_objects)
    return [(unit, lacking) for unit in units if (lacking := seen.lacks(unit.objects))]


@dataclass(frozen=True)
class ClusterFindings:
    namespace: NamespaceFinding
    install: InstallFinding
    gateway: GatewayFinding
    wiring: WiringFinding
    secrets: tuple[SecretFinding, ...]
    cacerts: CacertsFinding | None = None  # None: judged without the workspace's certificates


def assess_cluster(mesh: Mesh, d: Desired, seen: Observed, issued: Mapping[str, str | None],
                   controlled: frozenset[str], injector_path: str | None = None,
                   injector_trusted: bool | None = None, last_overlay: dict | None = None,
                   pki: WorkspaceCerts | None = None) -> ClusterFindings:
    """Every finding of one cluster (cacerts where ``pki``, the workspace's certificates, is given)."""
    member = d.member
    cacerts = assess_cluster_cacerts(seen, member.name, pki) if pki is not None else None
    return ClusterFindings(assess_namespace(seen, d),
                           assess_install(seen, d.fingerprint, last_overlay, d.operator, cacerts),
                           assess_gateway(seen, d),
                           assess_wiring(mesh, member, seen.annotations, controlled, injector_path, injector_trusted),
                           tuple(assess_secrets(mesh, member, seen, issued)), cacerts)


def assess_mesh(mesh: Mesh, desired: Mapping[str, Desired], observed: Mapping[str, Observed],
                injectors: Mapping[str, object] | None = None, last_overlays: Mapping[str, dict] | None = None,
                pki: WorkspaceCerts | None = None) -> dict[str, ClusterFindings]:
    """Every read cluster's findings, by context. ``injectors``: the remotes' sidecar injectors as read
    (anything with ``path`` and ``trusted``); ``last_overlays``: control-plane overlays as installed last;
    ``pki``: the workspace's certificates, which cacerts is judged against."""
    readable = {ctx: seen for ctx, seen in observed.items() if seen.reachable and ctx in desired}
    issued, controlled = issued_credentials(mesh, readable), controlled_before(readable)
    found = {}
    for context, seen in readable.items():
        injector = (injectors or {}).get(context)
        found[context] = assess_cluster(mesh, desired[context], seen, issued, controlled,
                                        getattr(injector, "path", None), getattr(injector, "trusted", None),
                                        (last_overlays or {}).get(context), pki)
    return found
