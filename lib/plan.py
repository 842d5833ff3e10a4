"""From what should be (topology, base.yaml) and what is (one read per cluster) to a plan of steps.

Building the plan runs nothing; the same plan is printed by --dry-run and run by apply.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from . import carotation, certs
from .assess import (CacertsFinding, CacertsState, GatewayState, InstallState, LabelState, assess_cluster_cacerts,
                     assess_gateway, assess_install, assess_namespace, assess_secrets, assess_wiring,
                     controlled_before, issued_credentials)
from .carotation import Transition
from .casteps import cacerts_step, intermediate_step, workspace_certs
from .config import AMBIENT, SIDECAR, Cluster, Topology
from .desired import Desired
from .errors import MeshError
from .executor import After, Phase, Step
from .gatewayapi import CrdSource
from .gatewaysteps import (gateway_api_crds_step, remove_ambient_gateway_step, remove_gateways_step,
                           remove_sidecar_gateway_step, wait_gateway_step)
from .installsteps import (install_steps, no_longer_remote_step, objects_present, record_step, restore_objects_steps,
                           stop_exposing_istiod_step)
from .kube import Observed, Tools
from .mesh import mesh_model
from .names import CONTROL_PLANE_CLUSTERS, CROSS_NETWORK_GATEWAY, EASTWEST_NAME, ISTIO_NAMESPACE
from .release import Release
from .secretsteps import IMPORT_KEY, export_step, import_step, prune_step
from .uninstallsteps import Uninstall, await_namespace_deleted_step, uninstall_steps

# The steps live in lib/*steps.py; these names stay importable from here for apply, rotate and upgrade.
from .installsteps import (RECORD_TITLE, eastwest_path, install_command, overlay_path,  # noqa: F401
                           readiness_timeout, resolved)
from .gatewaysteps import WAIT_KEY  # noqa: F401
from .secretsteps import secrets_done  # noqa: F401


@dataclass
class Removal:
    context: str
    cluster_name: str
    kubeconfig: str | None
    reachable: bool
    primary: str | None = None  # it was a remote of that context

    @property
    def cluster(self) -> Cluster:
        """The cluster as the recorded state knows it: enough to reach it (no network: it left the mesh)."""
        return Cluster(context=self.context, network="", name=self.cluster_name, kubeconfig=self.kubeconfig)


@dataclass
class ApplyPlan:
    phases: list[Phase]
    removals: list[Removal] = field(default_factory=list)
    prunes: dict[str, list[str]] = field(default_factory=dict)  # context -> secret names
    unchanged: list[str] = field(default_factory=list)
    actions: dict[str, str] = field(default_factory=dict)  # context -> install | remove (else: change)
    secrets: dict[str, int] | None = None  # remote secrets to add, replace, prune
    replacements: dict[str, list[str]] = field(default_factory=dict)  # context -> what a mode switch replaces
    # Clusters whose cacerts chains to another root than this workspace's: apply replaces it only when told to.
    other_roots: dict[str, CacertsFinding] = field(default_factory=dict)

    @property
    def deletes_anything(self) -> bool:
        return bool(self.removals or any(self.prunes.values()) or any(self.replacements.values()))


@dataclass
class _SecretExchange:
    """Who gets whose remote secret. A peer's copy is current when it carries the credentials its cluster
    holds now; a missing copy is taken from another member that holds a current one, else made once by
    istioctl."""

    secrets_of: dict[str, list]  # member context -> its remote secrets judged (what to import, what to prune)
    held: dict[str, dict]  # peer context -> a current copy of its secret held somewhere
    imports: dict[str, list[Cluster]]  # target context -> the peers whose secret it imports (within --context)
    all_imports: dict[str, list[Cluster]]  # the same, --context aside
    exporters: set[str]  # the peers that must export their secret: nobody holds a current copy


def _secret_exchange(mesh, members: list[Cluster], seen_of: dict[str, Observed],
                     only: set[str] | None) -> _SecretExchange:
    issued = issued_credentials(mesh, seen_of)
    current_fp = {c.context: issued[c.context] for c in members}
    # Each member's remote secrets judged once: what to import (from readable peers), what to prune.
    secrets_of = {c.context: assess_secrets(mesh, mesh.member(c.context), seen_of[c.context], issued)
                  for c in members}
    held = {}
    for holder in members:
        for peer in members:
            info = seen_of[holder.context].remote_secrets.get(peer.name)
            if info and info.manifest and info.source and info.source == current_fp[peer.context]:
                held.setdefault(peer.context, info.manifest)
    member_of = {c.context: c for c in members}
    imports: dict[str, list[Cluster]] = {}
    for target in members:
        for finding in secrets_of[target.context]:
            if finding.to_import and finding.context in member_of:
                imports.setdefault(target.context, []).append(member_of[finding.context])
    all_imports = imports
    if only is not None:  # a peer outside the selection is not asked for a secret nobody holds
        imports = {target: kept for target, peers in imports.items() if target in only
                   for kept in [[p for p in peers if p.context in only or p.context in held]] if kept}
    exporters = {p.context for peers in imports.values() for p in peers if p.context not in held}
    return _SecretExchange(secrets_of, held, imports, all_imports, exporters)


@dataclass
class _Planner:
    """What every member's steps are decided from; adds each member's steps to the plan's phases."""

    plan: ApplyPlan
    tools: Tools
    workdir: Path
    release: Release | None
    intermediate_vars: dict[str, str]
    gateway_timeout: float
    only: set[str] | None
    gateway_api: CrdSource | None
    transition: Transition | None
    revisions: dict[str, str]
    mesh: object
    controlled: set[str]
    exchange: _SecretExchange
    members: dict[str, Cluster]

    def __post_init__(self) -> None:
        self.cert_dir = carotation.issuing_dir(self.workdir, self.transition)
        self.stage_note = (f", stage {self.transition.stage} of the move to a new root"
                           if self.transition is not None else "")
        self.pki = workspace_certs(self.workdir, self.transition, [c.name for c in self.members.values()])
        self.setup, self.connect, self.prune, self.remove = self.plan.phases

    def add_member(self, cluster: Cluster, d: Desired, seen: Observed, terminating: bool) -> None:
        plan = self.plan
        cacerts = assess_cluster_cacerts(seen, cluster.name, self.pki)
        if cacerts.other_root:
            plan.other_roots[cluster.context] = cacerts
        namespace, install = assess_namespace(seen, d), assess_install(seen, d.fingerprint)
        gateway_found = assess_gateway(seen, d)
        wiring = assess_wiring(self.mesh, d.member, seen.annotations, self.controlled)
        installing = install.drift or gateway_found.state is GatewayState.MISSING
        steps = self.ca_steps(cluster, d, seen, terminating, namespace, cacerts.state is CacertsState.CURRENT,
                              installing)
        was = seen.recorded_data_plane
        if was is not None and was != d.data_plane:
            plan.replacements.setdefault(cluster.context, []).extend(
                _switch_description(was, d, had_gateway=seen.eastwest_made_by is not None))
        if d.ambient and seen.gateway_api is not None and not seen.gateway_api.installed and self.gateway_api is not None:
            steps.append(gateway_api_crds_step(self.tools, cluster, self.gateway_api))
        if CONTROL_PLANE_CLUSTERS in namespace.annotations_left:
            steps.append(no_longer_remote_step(self.tools, cluster, d))
        gateway: list[Step] = []  # the east-west gateway's steps, placed by _chain
        after: list[Step] = []  # what follows the install and the gateway
        if installing:
            installed, gateway, after = self.install(cluster, d, seen, install, gateway_found, wiring)
            steps.extend(installed)
        else:
            steps.extend(restore_objects_steps(self.tools, d, seen, self.revisions.get(cluster.context)))
        changed = bool(steps)  # an install is among them whenever anything comes after it
        if d.member.remotes and gateway_found.wanted == SIDECAR and (changed or not gateway_found.address):
            # Its remotes wait for this address: find it before anything else this cluster does.
            after.append(wait_gateway_step(self.tools, cluster, self.gateway_timeout))
        if changed:
            after.append(record_step(self.tools, cluster, d.fingerprint, d, was))
        else:
            plan.unchanged.append(cluster.context)
        export = [export_step(self.tools, cluster)] if cluster.context in self.exchange.exporters else []
        if gateway:
            self.refuse_gateway_without_its_primary(cluster, d)
        self.refuse_remote_without_its_primary(cluster, d)
        for step in _chain(steps, gateway, after, export, d):
            self.setup.add(cluster.context, step)
        self.add_imports(cluster, seen)
        self.add_gateway_wait(cluster, d, gateway_found, changed)
        self.add_prune(cluster)

    def ca_steps(self, cluster: Cluster, d: Desired, seen: Observed, terminating: bool, namespace,
                 cacerts_current: bool, installing: bool) -> list[Step]:
        """What must come before Istio's install: istio-system gone if being deleted, the intermediate CA,
        istio-system and secret cacerts as they must be now."""
        steps: list[Step] = []
        if terminating:
            steps.append(await_namespace_deleted_step(self.tools, cluster))
        kept = carotation.kept_intermediate(self.workdir, cluster.name, self.transition) is not None
        if not kept and not certs.has_cacerts(self.cert_dir, cluster.name):
            steps.append(intermediate_step(self.release, self.cert_dir, cluster, self.intermediate_vars))
        if steps or not namespace.current or not cacerts_current:
            step = cacerts_step(self.tools, cluster, self.workdir, d.namespace_manifest(), self.transition)
            if not namespace.exists:
                step.change = f"+ namespace {ISTIO_NAMESPACE} (network {cluster.network}) and secret cacerts"
            else:
                label = namespace.label is not LabelState.CURRENT
                step.change = ", ".join(filter(None, [
                    label and f"~ network label: {seen.network_label or '(none)'} → {cluster.network}",
                    not cacerts_current and ("~ " if not label else "") + "secret cacerts"
                    f" ({'root-cert.pem' if kept else f'{self.cert_dir.name}/{cluster.name}/'}{self.stage_note})",
                    namespace.annotations_off and "~ annotation " + ", ".join(namespace.annotations_off)]
                )) or "~ secret cacerts"
                if not installing:
                    step.done = "cacerts updated"
            steps.append(step)
        return steps

    def install(self, cluster: Cluster, d: Desired, seen: Observed, install, gateway_found,
                wiring) -> tuple[list[Step], list[Step], list[Step]]:
        """(Istio's install and what it replaces, the east-west gateway's steps, what comes after both:
        removals of what is no longer needed)."""
        steps: list[Step] = []
        # The other mode's gateway holds the name this mode's gateway takes: it goes first.
        if gateway_found.running == SIDECAR and d.ambient:
            steps.append(remove_sidecar_gateway_step(self.tools, self.workdir, d, seen))
        elif gateway_found.running == AMBIENT and not d.ambient:
            steps.append(remove_ambient_gateway_step(self.tools, cluster))
        installed, gateway = install_steps(self.tools, self.workdir, d, seen,
                                           objects_present(d, gateway_found, wiring, seen,
                                                           self.revisions.get(cluster.context)),
                                           self.revisions.get(cluster.context))
        steps.extend(installed)
        self.plan.actions[cluster.context] = "install" if install.state is InstallState.ABSENT else "change"
        after: list[Step] = []
        if gateway_found.wanted is None and install.state is not InstallState.ABSENT:  # none needed now
            if gateway_found.running == AMBIENT:
                if d.ambient:  # in sidecar mode it was removed above, before the install
                    after.append(remove_ambient_gateway_step(self.tools, cluster))
            elif gateway_found.running == SIDECAR and not d.ambient:  # only where one runs: nothing to remove else
                after.append(remove_gateways_step(self.tools, self.workdir, d, seen))
        if wiring.stop_exposing:
            after.append(stop_exposing_istiod_step(self.tools, cluster, d, self.revisions.get(cluster.context)))
        return steps, gateway, after

    def refuse_remote_without_its_primary(self, cluster: Cluster, d: Desired) -> None:
        """A remote's injector calls its primary's istiod, which serves remotes only once its own install says
        so (externalIstiod, istiod exposed through its gateway): --context must not leave out a primary that
        served no remote when read (a remote moved to it, or a primary turned remote of it)."""
        if not d.member.is_remote or self.only is None or d.member.control_plane in self.only:
            return
        primary = self.members.get(d.member.control_plane)
        if primary is not None and primary.name not in self.controlled:
            raise MeshError(f"{cluster.context} is a remote of {primary.context}, which served no remote when read: "
                            f"its install must change first, and --context leaves {primary.context} out",
                            hint=f"add --context {primary.context} (or run without --context)")

    def refuse_gateway_without_its_primary(self, cluster: Cluster, d: Desired) -> None:
        """A remote's gateway waits for its primary to import the remote's secret: --context must not leave
        that primary out when it has that import to do."""
        primary = d.member.control_plane
        if d.member.is_remote and self.only is not None and primary not in self.only \
                and primary in {t for t, peers in self.exchange.all_imports.items() if cluster in peers}:
            primary = self.members[primary]
            raise MeshError(f"{cluster.context}'s east-west gateway can only be installed once {primary.context} "
                            f"holds its current remote secret, and --context leaves {primary.context} out",
                            hint=f"add --context {primary.context} (or run without --context)")

    def add_imports(self, cluster: Cluster, seen: Observed) -> None:
        if cluster.context not in self.exchange.imports:
            return
        peers, held = self.exchange.imports[cluster.context], self.exchange.held
        # What makes each held copy outdated: the address it names, or else the credentials it carries.
        replacing = {p.context: "new address" if seen.remote_secrets[p.name].server != p.remote_server
                     else "new credentials" for p in peers if p.name in seen.remote_secrets}
        self.plan.secrets["replace"] += len(replacing)
        self.plan.secrets["add"] += len(peers) - len(replacing)
        self.connect.add(cluster.context, import_step(self.tools, cluster, peers,
                                                      {p.context: held[p.context] for p in peers if p.context in held},
                                                      replacing))

    def add_gateway_wait(self, cluster: Cluster, d: Desired, gateway_found, changed: bool) -> None:
        """A gateway nobody waits for during set-up is waited for once the secrets are in."""
        if gateway_found.wanted == AMBIENT:
            if changed or not gateway_found.programmed:
                self.connect.add(cluster.context,
                                 wait_gateway_step(self.tools, cluster, self.gateway_timeout, ambient=True))
        elif not d.member.remotes and gateway_found.wanted == SIDECAR and (changed or not gateway_found.address):
            self.connect.add(cluster.context, wait_gateway_step(self.tools, cluster, self.gateway_timeout))

    def add_prune(self, cluster: Cluster) -> None:
        """Secrets of clusters that left the mesh, and any a cluster no longer needs (a remote holds none)."""
        stale = sorted(f.secret for f in self.exchange.secrets_of[cluster.context] if f.to_prune)
        if stale:
            self.plan.prunes[cluster.context] = stale
            self.plan.secrets["prune"] += len(stale)
            self.prune.add(cluster.context, prune_step(self.tools, cluster, stale))


def _add_removals(plan: ApplyPlan, tools: Tools, removed: list[Removal],
                  removed_observed: dict[str, Observed | None], uninstall: dict[str, Uninstall] | None) -> None:
    """Clusters dropped from topology.yaml: uninstall where reachable."""
    remove = plan.phases[3]
    for gone in removed:
        seen = removed_observed.get(gone.context)
        # A cluster whose Istio users could not be read is left as it is, like an unreachable one.
        gone.reachable = bool(seen and seen.reachable and gone.context in (uninstall or {}))
        plan.removals.append(gone)
        plan.actions[gone.context] = "remove"
        if gone.reachable:
            cluster = Cluster(context=gone.context, network="", name=gone.cluster_name, kubeconfig=gone.kubeconfig)
            secrets = sorted(info.name for info in seen.remote_secrets.values())
            for step in uninstall_steps(tools, cluster, secrets, seen, uninstall[gone.context]):
                remove.add(gone.context, step)
    _remotes_first(remove, {r.context: r.primary for r in removed})


def build_apply_plan(*, topology: Topology, desired: dict[str, Desired], observed: dict[str, Observed | None],
                     removed: list[Removal], removed_observed: dict[str, Observed | None], workdir: Path,
                     tools: Tools, release: Release | None, intermediate_vars: dict[str, str],
                     gateway_timeout: float, skip: set[str] = frozenset(),
                     only: set[str] | None = None, gateway_api: CrdSource | None = None,
                     uninstall: dict[str, Uninstall] | None = None,
                     transition: Transition | None = None, revisions: dict[str, str] | None = None,
                     served: frozenset[str] = frozenset()) -> ApplyPlan:
    """``skip``: contexts that could not be read; they get no step, and their secrets are left as they are.
    ``only``: the contexts to change (--context); the others are read for their current secrets only.
    ``gateway_api``: where an ambient mesh's clusters that lack the Gateway API CRDs get them from.
    ``uninstall``: how each reachable removed cluster is uninstalled (from what else uses Istio there).
    ``transition``: a root transition under way; clusters get (and keep) the certificates of its stage.
    ``served``: primaries (cluster names) recorded as serving remotes when last set up."""
    # Each member's own chain (set-up, install, its remote secret), then what needs the others (their
    # secrets, and the gateway address); phases group the steps for the reader, the steps' dependencies
    # (Step.after) are what orders clusters against each other.
    plan = ApplyPlan([Phase("set up, install, export remote secret"), Phase("import remote secrets, gateways ready"),
                      Phase("prune"), Phase("remove clusters")], secrets={"add": 0, "replace": 0, "prune": 0})
    members = [c for c in topology.clusters if c.context not in skip]
    # A terminating istio-system is as good as gone: plan a fresh install, after waiting for it to go.
    terminating = {c.context for c in members if (observed.get(c.context) or Observed()).namespace_terminating}
    seen_of = {c.context: Observed(reachable=True) if c.context in terminating else observed.get(c.context) or Observed()
               for c in members}
    mesh = mesh_model(topology)
    # Primaries whose istiod ran remotes when the clusters were read (the remotes' istio-system names them).
    # ... or recorded as serving them: a run cut short after its remotes moved away left its istiod exposed.
    controlled = controlled_before(seen_of) | controlled_before(removed_observed) | served
    planner = _Planner(plan, tools, workdir, release, intermediate_vars, gateway_timeout, only, gateway_api,
                       transition, revisions or {}, mesh, controlled, _secret_exchange(mesh, members, seen_of, only),
                       {c.context: c for c in members})
    for cluster in members:
        if only is None or cluster.context in only:
            planner.add_member(cluster, desired[cluster.context], seen_of[cluster.context],
                               cluster.context in terminating)
    _add_removals(plan, tools, removed, removed_observed, uninstall)
    return plan


def _chain(installed: list[Step], gateway: list[Step], after: list[Step], export: list[Step],
           d: Desired) -> list[Step]:
    """A cluster's chain: its set-up and install, then the east-west gateway's steps, what follows them,
    and the export of its remote secret. A remote's gateway pods are injected by its primary's istiod,
    whose webhook the remote's API server trusts only once that istiod holds the remote's current secret
    (and the remote names it in topology.istio.io/controlPlaneClusters): until then the pods are refused
    and the install waits out its readiness timeout. So a remote exports its secret first, and its gateway
    waits for its primary to import it, as Istio's guide "Install primary-remote on different networks"
    orders it."""
    if gateway and d.member.is_remote:
        gateway[0].after.append(After(d.member.control_plane, IMPORT_KEY))
        return installed + export + gateway + after
    return installed + gateway + after + export


def _switch_description(was: str, d: Desired, had_gateway: bool) -> list[str]:
    """What changing base.yaml's profile between ambient and sidecar replaces in a running cluster
    (``had_gateway``: it runs an east-west gateway of the other mode now)."""
    if d.ambient:
        what = ["Istio is reinstalled with profile ambient (adds ztunnel and istio-cni; workloads stay as they are "
                "until their namespaces are labelled istio.io/dataplane-mode=ambient)"]
        if d.ambient_gateway is not None and had_gateway:
            what.append(f"the sidecar-mode east-west gateway (IstioOperator eastwest, Gateway {CROSS_NETWORK_GATEWAY}) "
                        f"is replaced by the ambient Gateway {EASTWEST_NAME}")
    else:
        profile = (d.operator.get("spec") or {}).get("profile") or "default"
        what = [f"Istio is reinstalled with profile {profile} (removes ztunnel and istio-cni: workloads in ambient "
                f"namespaces lose the mesh until they get sidecars)"]
        if d.eastwest is not None and had_gateway:
            what.append(f"the ambient Gateway {EASTWEST_NAME} is replaced by the sidecar-mode east-west gateway")
    return what


def _remotes_first(phase: Phase, primary_of: dict[str, str | None]) -> None:
    """A primary is uninstalled only after its remotes (their webhooks call its istiod until then)."""
    for remote, primary in primary_of.items():
        if primary and primary in phase.steps and remote in phase.steps:
            phase.steps[primary][0].after.append(After(remote, phase.steps[remote][-1].key, required=False))


def teardown_plan(tools: Tools, clusters: list[Cluster], observed: dict[str, Observed],
                  uninstall: dict[str, Uninstall]) -> Phase:
    """``uninstall``: the clusters that hold something of setup-mesh's and were read whole (who else uses
    Istio there included); the others get no step."""
    phase = Phase("teardown")
    for cluster in clusters:
        if cluster.context not in uninstall:
            continue
        seen = observed[cluster.context]
        secrets = sorted(info.name for info in seen.remote_secrets.values())
        for step in uninstall_steps(tools, cluster, secrets, seen, uninstall[cluster.context]):
            phase.add(cluster.context, step)
    _remotes_first(phase, {c.context: c.primary for c in clusters})
    return phase

