"""Each cluster's desired state, composed from small parts of the mesh model (pure: no files, no programs).

A part is a function ``part(inputs, member, desired)`` that adds to ``desired`` what one aspect of the
member's place in the mesh requires: values in its IstioOperator, an east-west gateway, Istio objects
applied after the install, labels or annotations on istio-system. A part looks at the member (role,
network, data-plane mode, duties) and does nothing where it does not apply. ``PARTS`` runs them in
order, so later parts see what earlier ones made (the control-plane IstioOperator comes first).

A new aspect of the mesh, e.g. another data-plane mode, is one more part appended to ``PARTS`` (and, if
it needs a new duty, one more field on ``lib.mesh.Member``). The plan installs whatever the parts
produce: ``operator`` and ``eastwest`` with istioctl, each ``IstioObjects`` with one kubectl apply,
the namespace fields with the cacerts step. Values a part sets for the user are listed in
``lib.config.RESERVED_VALUES`` so that base.yaml cannot set them too.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Callable, Mapping

from .ambient import GATEWAY_API_VERSION, east_west_gateway, with_multi_network_switch
from .config import AMBIENT, MULTIROOT_ENV, SIDECAR, Topology, data_plane_mode
from .mesh import Member, Mesh, mesh_model
from .carotation import Transition
from .overlay import (cluster_operator, control_plane_revision, cross_network_gateway, eastwest_operator,
                      expose_istiod, external_istiod, fingerprint, remote_operator, with_pilot_env)
from .names import CONTROL_PLANE_CLUSTERS, CROSS_NETWORK_GATEWAY, ISTIO_NAMESPACE, NETWORK_LABEL

EXPOSE_ISTIOD = "expose istiod"  # the purpose of the objects that let remotes reach a primary's istiod

# What a dry run shows, and nothing installs, while the address of a primary's east-west gateway is not known.
PENDING_ADDRESS = "<address of {}'s east-west gateway>"


@dataclass
class IstioObjects:
    """Istio configuration applied with kubectl after the install, as one unit with a purpose."""

    purpose: str  # e.g. "expose services"
    objects: list[dict[str, Any]]

    @property
    def title(self) -> str:
        return f"{self.purpose} ({', '.join(o['kind'] + ' ' + o['metadata']['name'] for o in self.objects)})"


def at_revision(unit: IstioObjects, revision: str | None) -> IstioObjects:
    """Istio objects for the revision a cluster runs since a canary upgrade: istiod is exposed to remotes
    as that revision's (expose-istiod-rev.yaml.tmpl), not as base.yaml's, whose istiod is gone."""
    if revision and unit.purpose == EXPOSE_ISTIOD:
        return IstioObjects(unit.purpose, expose_istiod(revision))
    return unit


@dataclass
class Desired:
    """Everything apply installs in one cluster."""

    member: Member
    operator: dict[str, Any] = field(default_factory=dict)
    eastwest: dict[str, Any] | None = None
    istio_objects: list[IstioObjects] = field(default_factory=list)
    namespace_labels: dict[str, str] = field(default_factory=dict)
    namespace_annotations: dict[str, str] = field(default_factory=dict)
    # The context of the primary whose gateway address this state still lacks (known once it has one).
    awaits_address_of: str | None = None
    inputs: "Inputs | None" = field(default=None, repr=False, compare=False)

    @property
    def cluster(self):
        return self.member.cluster

    @property
    def data_plane(self) -> str:
        return self.member.data_plane

    @property
    def ambient(self) -> bool:
        return self.member.data_plane == AMBIENT

    @property
    def ambient_gateway(self) -> dict[str, Any] | None:
        """The ambient east-west Gateway (Gateway API), which istiod deploys."""
        for unit in self.istio_objects:
            for obj in unit.objects:
                if obj["kind"] == "Gateway" and obj["apiVersion"] == GATEWAY_API_VERSION:
                    return obj
        return None

    @property
    def gateway(self) -> dict[str, Any] | None:
        """The cross-network Gateway, when this cluster's east-west gateway carries service traffic."""
        for unit in self.istio_objects:
            for obj in unit.objects:
                if obj["kind"] == "Gateway" and obj["metadata"]["name"] == CROSS_NETWORK_GATEWAY:
                    return obj
        return None

    @property
    def fingerprint(self) -> str:
        """What was installed, to skip unchanged clusters. What a multi-primary mesh installs is hashed as
        it always was; anything more is added only when present, so recorded fingerprints stay valid."""
        parts: list[Any] = [self.operator, self.eastwest, self.gateway, self.member.network]
        others = [u.objects for u in self.istio_objects
                  if not any(o["metadata"]["name"] == CROSS_NETWORK_GATEWAY for o in u.objects)]
        if others:
            parts.append(others)
        if self.namespace_annotations:
            parts.append(self.namespace_annotations)
        return fingerprint(*parts)

    def with_addresses(self, addresses: Mapping[str, str]) -> "Desired":
        """The same cluster's state once more gateway addresses are known."""
        inputs = self.inputs
        return derive(replace(inputs, addresses={**inputs.addresses, **addresses}), self.member)

    def namespace_manifest(self) -> dict[str, Any]:
        metadata: dict[str, Any] = {"name": ISTIO_NAMESPACE, "labels": dict(self.namespace_labels)}
        if self.namespace_annotations:
            metadata["annotations"] = dict(self.namespace_annotations)
        return {"apiVersion": "v1", "kind": "Namespace", "metadata": metadata}


@dataclass(frozen=True)
class Inputs:
    mesh: Mesh
    base: dict[str, Any]  # base.yaml, validated
    addresses: Mapping[str, str] = field(default_factory=dict)  # context -> its east-west gateway's address
    transition: Transition | None = None  # a move to a new root under way (rotate-certs --root)


Part = Callable[[Inputs, Member, Desired], None]


def network_label(inputs: Inputs, member: Member, d: Desired) -> None:
    """Every cluster: istio-system carries its network, which is how Istio maps clusters to networks."""
    d.namespace_labels[NETWORK_LABEL] = member.network


def primary_control_plane(inputs: Inputs, member: Member, d: Desired) -> None:
    """A primary: base.yaml with the mesh's identity values (mesh, cluster, network); with remotes, its
    istiod also configures them (external istiod)."""
    if member.is_primary:
        d.operator = cluster_operator(inputs.base, inputs.mesh.topology, member.cluster)
        if member.remotes:
            d.operator = external_istiod(d.operator)


def remote_control_plane(inputs: Inputs, member: Member, d: Desired) -> None:
    """A remote: the `remote` profile pointed at its primary's istiod through the primary's east-west
    gateway, and istio-system naming the cluster whose istiod configures it."""
    if not member.is_remote:
        return
    primary = inputs.mesh.control_plane_of(member)
    address = inputs.addresses.get(primary.context)
    if not address:
        d.awaits_address_of = primary.context
        address = PENDING_ADDRESS.format(primary.context)
    identity = cluster_operator(inputs.base, inputs.mesh.topology, member.cluster)
    d.operator = remote_operator(identity, member.cluster, address)
    d.namespace_annotations[CONTROL_PLANE_CLUSTERS] = primary.name


def eastwest_gateway(inputs: Inputs, member: Member, d: Desired) -> None:
    """The east-west gateway, for a cluster whose network others must reach or whose istiod remotes use."""
    if member.eastwest and member.data_plane == SIDECAR:
        d.eastwest = eastwest_operator(inputs.base, member.cluster)


def expose_services(inputs: Inputs, member: Member, d: Desired) -> None:
    """Cross-network service traffic through the east-west gateway (samples/multicluster/expose-services.yaml)."""
    if member.exposes_services and member.data_plane == SIDECAR:
        d.istio_objects.append(IstioObjects("expose services", [cross_network_gateway()]))


def expose_istiod_to_remotes(inputs: Inputs, member: Member, d: Desired) -> None:
    """A primary with remotes: istiod reachable through its east-west gateway (samples/multicluster/
    expose-istiod.yaml, or the revision template when base.yaml sets a revision)."""
    if member.exposes_istiod:
        d.istio_objects.append(IstioObjects(EXPOSE_ISTIOD, expose_istiod(control_plane_revision(inputs.base))))


def ambient_data_plane(inputs: Inputs, member: Member, d: Desired) -> None:
    """Ambient (Istio's ambient multicluster guide): istiod's multi-network switch, and across networks the
    east-west gateway as a Gateway API Gateway that istiod deploys, instead of the two parts above."""
    if member.data_plane != AMBIENT:
        return
    if member.is_primary:
        d.operator = with_multi_network_switch(d.operator)
    if member.exposes_services:
        d.istio_objects.append(IstioObjects("east-west gateway", [east_west_gateway(member.network, inputs.base)]))


def root_transition(inputs: Inputs, member: Member, d: Desired) -> None:
    """While the mesh moves to a new root, istiod must accept a changed root bundle (ISTIO_MULTIROOT_MESH).
    A remote runs no istiod: its primary's accepts for it."""
    if inputs.transition is not None and member.is_primary and d.operator:
        d.operator = with_pilot_env(d.operator, {MULTIROOT_ENV: "true"})


PARTS: list[Part] = [network_label, primary_control_plane, remote_control_plane, root_transition, eastwest_gateway,
                     expose_services, expose_istiod_to_remotes, ambient_data_plane]


def derive(inputs: Inputs, member: Member) -> Desired:
    d = Desired(member, inputs=inputs)
    for part in PARTS:
        part(inputs, member, d)
    return d


def desired_state(topology: Topology, base: dict[str, Any],
                  addresses: Mapping[str, str] | None = None,
                  transition: Transition | None = None) -> dict[str, Desired]:
    """Every cluster's desired state, by context. ``addresses``: the east-west gateway addresses known now
    (a remote is pointed at its primary's); ``transition``: a move to a new root under way."""
    inputs = Inputs(mesh_model(topology, data_plane_mode(base)), base, dict(addresses or {}), transition)
    return {m.context: derive(inputs, m) for m in inputs.mesh.members}
