"""status, its inputs: what the workspace says the clusters should hold, which status compares them with."""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

from . import certs, carotation
from .assesscerts import WorkspaceCerts
from .config import SIDECAR, Topology, data_plane_mode
from .fsutil import read_if_present
from .mesh import Mesh, mesh_model
from .names import ISTIOD
from .overlay import control_plane_istiod, control_plane_revision

if TYPE_CHECKING:
    from .desired import Desired


@dataclass
class Expected:
    """The inputs status compares the clusters with."""

    workdir: Path
    topology: Topology
    fingerprints: dict[str, str]  # context -> what apply would install now
    root_pem: bytes | None  # certs/root-cert.pem
    local_ca: dict[str, bytes | None]  # cluster name -> certs/<name>/ca-cert.pem
    unkeyed: frozenset[str] = frozenset()  # cluster names whose certs/<name>/ca-key.pem is not its certificate's
    istiod_deployment: str = ISTIOD
    revision: str | None = None  # base.yaml's spec.revision, when not the default
    data_plane: str = SIDECAR  # ambient: the east-west gateway is a Gateway API Gateway
    transition: carotation.Transition | None = None  # a move to a new root under way
    new_root_pem: bytes | None = None  # certs-next/root-cert.pem during a transition
    former_root_pem: bytes | None = None  # certs-former/root-cert.pem: a move from the clusters' root (key not held)
    expected: dict[str, dict[str, bytes] | None] = field(default_factory=dict)  # name -> what its cacerts must hold
    # The fingerprints once the clusters are read (a remote's install names its primary's gateway address).
    fingerprints_for: Callable[[Mapping[str, str]], dict[str, str]] | None = None
    base: dict[str, Any] = field(default_factory=dict)  # base.yaml, validated

    def cacerts_inputs(self) -> WorkspaceCerts:
        """The certificates the clusters' cacerts is judged against (read when status judges: tests set the
        fields above after the fact)."""
        return WorkspaceCerts(self.root_pem, self.expected, self.transition, self.new_root_pem, self.former_root_pem)

    @cached_property
    def mesh(self) -> Mesh:  # read for every cluster judged: built once, with base.yaml's data-plane mode
        return mesh_model(self.topology, self.data_plane)

    @cached_property
    def desired(self) -> dict[str, "Desired"]:
        """Each cluster's desired state: what its namespace and gateway are judged against."""
        from .desired import Inputs, derive

        inputs = Inputs(self.mesh, self.base, {}, self.transition)
        return {m.context: derive(inputs, m) for m in self.mesh.members}


def status_workspace(workdir: Path, loaded) -> Expected:
    """What status compares the clusters with, from a loaded workspace (commands.load_workspace)."""
    from .desired import desired_state

    cert_dir = certs.certs_dir(workdir)
    transition = carotation.load_transition(workdir)
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
        # During a root move its stages decide what each cluster holds: no intermediate is judged then.
        unkeyed=frozenset() if transition is not None else
        frozenset(certs.keys_not_matching(cert_dir, [c.name for c in loaded.topology.clusters])),
        istiod_deployment=control_plane_istiod(loaded.base),
        revision=control_plane_revision(loaded.base),
        data_plane=data_plane_mode(loaded.base),
        transition=transition,
        base=loaded.base,
        new_root_pem=read_if_present(carotation.next_dir(workdir) / certs.ROOT_CERT) if transition else None,
        former_root_pem=read_if_present(carotation.former_dir(workdir) / certs.ROOT_CERT)
        if transition and transition.foreign_start else None,
        expected={c.name: carotation.desired_cacerts(workdir, c.name, transition) for c in loaded.topology.clusters},
    )
