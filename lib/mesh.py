"""The mesh model: what each cluster of topology.yaml is in the mesh and what it must hold.

Decided once, from topology.yaml alone (pure), so that the desired state, the plan, status and teardown
read a cluster's role instead of each re-deciding it:

- role: a primary runs its own istiod; a remote is configured by its primary's istiod;
- control plane: the cluster whose istiod configures it (a primary's is itself);
- network, and whether it runs an east-west gateway (and what that gateway exposes);
- data-plane mode ("sidecar" or "ambient");
- the Istio release pinned for it (topology.yaml istio_version, a context's own overriding the mesh's);
- which other clusters' remote secrets it must hold (a control plane reads every other cluster).
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from .config import SIDECAR, Cluster, Topology


class Role(str, Enum):
    PRIMARY = "primary"
    REMOTE = "remote"


@dataclass(frozen=True)
class Member:
    """One cluster's place in the mesh."""

    cluster: Cluster
    role: Role
    control_plane: str  # context of the cluster whose istiod configures this one
    remotes: tuple[str, ...]  # contexts this primary's istiod configures (empty for a remote)
    eastwest: bool  # runs an east-west gateway
    exposes_services: bool  # its east-west gateway carries cross-network service traffic (*.local on 15443)
    exposes_istiod: bool  # its east-west gateway lets remotes reach its istiod (15012, 15017)
    holds_secrets_of: tuple[str, ...]  # contexts whose remote secret this cluster must hold
    data_plane: str = SIDECAR
    istio_version: str | None = None  # the release pinned for this cluster, if topology.yaml pins one

    @property
    def context(self) -> str:
        return self.cluster.context

    @property
    def name(self) -> str:
        return self.cluster.name

    @property
    def network(self) -> str:
        return self.cluster.network

    @property
    def is_primary(self) -> bool:
        return self.role is Role.PRIMARY

    @property
    def is_remote(self) -> bool:
        return self.role is Role.REMOTE

    @property
    def keeps_istio_objects(self) -> bool:
        """It holds Istio Gateways or VirtualServices that apply makes (lib/desired.py: the cross-network
        Gateway of a sidecar-mode gateway, istiod's exposure to remotes)."""
        return (self.exposes_services and self.data_plane == SIDECAR) or self.exposes_istiod


@dataclass(frozen=True)
class Mesh:
    mesh_id: str
    members: tuple[Member, ...]  # in topology.yaml's order
    topology: Topology

    @property
    def multi_network(self) -> bool:
        return self.topology.multi_network

    @property
    def networks(self) -> list[str]:
        return self.topology.networks

    def member(self, context: str) -> Member:
        for m in self.members:
            if m.context == context:
                return m
        raise KeyError(context)

    def control_plane_of(self, member: Member) -> Member:
        return self.member(member.control_plane)

    @property
    def primaries(self) -> list[Member]:
        return [m for m in self.members if m.is_primary]


def mesh_model(topology: Topology, data_plane: str = SIDECAR) -> Mesh:
    """Every cluster's role and duties. topology.yaml has been validated: a remote's primary exists and
    is itself a primary. ``data_plane``: base.yaml's mode, the same for the whole mesh."""
    by_context = {c.context: c for c in topology.clusters}
    remotes_of: dict[str, list[str]] = {c.context: [] for c in topology.clusters}
    for c in topology.clusters:
        if c.primary:
            remotes_of[c.primary].append(c.context)
    multi_network = topology.multi_network
    members = []
    for c in topology.clusters:
        if c.primary:
            primary = by_context[c.primary]
            # The primary's istiod configures the remote's gateway too: it needs one only to reach its network.
            eastwest = c.network != primary.network
            members.append(Member(
                cluster=c, role=Role.REMOTE, control_plane=c.primary, remotes=(),
                eastwest=eastwest, exposes_services=False, exposes_istiod=False,
                holds_secrets_of=(), data_plane=data_plane,
                istio_version=topology.istio_version_of(c.context)))
        else:
            remotes = tuple(remotes_of[c.context])
            # Every other cluster's secret, so this istiod sees all endpoints (Istio's own multicluster tests
            # give every primary the secret of every cluster but itself).
            peers = tuple(o.context for o in topology.clusters if o.context != c.context)
            members.append(Member(
                cluster=c, role=Role.PRIMARY, control_plane=c.context, remotes=remotes,
                eastwest=multi_network or bool(remotes), exposes_services=multi_network,
                exposes_istiod=bool(remotes), holds_secrets_of=peers, data_plane=data_plane,
                istio_version=topology.istio_version_of(c.context)))
    return Mesh(mesh_id=topology.mesh_id, members=tuple(members), topology=topology)
