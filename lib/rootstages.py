"""The stages of a move to a new root, per cluster: where each cluster stands, the steps that bring it to a
stage or complete the move, and the checks a stage must pass before it counts (lib/rootmove.py runs them)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from . import certs, invocation, carotation, reissue
from .assess import CacertsState, assess_cluster_cacerts, assess_install
from .casteps import root_bundle_step, workspace_certs
from .cluster import ClusterClient
from .config import Cluster
from .errors import ConfigError, MeshError
from .executor import Phase, Step
from .kube import Observed, Tools
from .reporter import Reporter
from .runner import Command, ShRunner
from .names import ISTIO_NAMESPACE, TRANSITION_ANNOTATION
from .plan import cacerts_step, intermediate_step
from .rotate import confirm_step


def cluster_views(clusters: list[Cluster], observed: dict[str, Observed], workdir: Path,
                  transition: carotation.Transition | None, current_root: str) -> list[carotation.ClusterView]:
    """What carotation.decide needs of each cluster: reachable, in place at the stage, since when."""
    views = []
    pki = workspace_certs(workdir, transition, [c.name for c in clusters]) if transition is not None else None
    for cluster in clusters:
        seen = observed.get(cluster.context) or Observed(reachable=False, error="not read")
        in_place = pki is not None and assess_cluster_cacerts(seen, cluster.name, pki).state is CacertsState.CURRENT
        views.append(carotation.ClusterView(
            cluster.context, seen.reachable, in_place,
            carotation.stage_since(transition, seen.annotations) if transition else None,
            completing=transition is None and carotation.completed_here(current_root, seen.annotations)))
    return views


def completion_phase(clusters: list[Cluster], final: dict, observed: dict[str, Observed], tools: Tools,
                     workdir: Path) -> Phase:
    """istiod back to one root (without ISTIO_MULTIROOT_MESH), and the clusters' record of the move removed."""
    from .plan import install_steps, record_step

    last = Phase("drop the second root from istiod")
    for cluster in clusters:
        d, seen = final[cluster.context], observed[cluster.context]
        if assess_install(seen, d.fingerprint).drift:
            last.add(cluster.context, install_steps(tools, workdir, d, seen)[0][0])
            last.add(cluster.context, record_step(tools, cluster, d.fingerprint, d))
        last.add(cluster.context, Step("the root transition is complete here", commands=[tools.kubectl_cmd(
            cluster, "annotate", "namespace", ISTIO_NAMESPACE, f"{TRANSITION_ANNOTATION}-")]))
    return last


def require_in_step(clusters: list[Cluster], observed: dict[str, Observed], workdir: Path, log, again: str,
                    tools: Tools) -> None:
    """A move to a new root starts only from a mesh that is in step: no intermediate rotation left unfinished,
    every cluster read and on the workspace's root (a mesh on another root is foreign_start's)."""
    unread = [c for c in clusters if not (observed.get(c.context) or Observed()).reachable]
    pki = workspace_certs(workdir, None, [c.name for c in clusters])
    off_root = [c.context for c in clusters if c not in unread
                and assess_cluster_cacerts(observed[c.context], c.name, pki).state is not CacertsState.CURRENT]
    problem = None
    if reissue.load_rotation(workdir) is not None:
        problem = MeshError("an intermediate rotation is unfinished: a new root is introduced only to a mesh in step",
                            hint=f"run `{invocation.command('rotate-certs')}` (it finishes that rotation), then "
                                 f"`{again}`")
    elif unread:
        check = "; ".join(tools.kubectl_cmd(c, "get", "namespace", ISTIO_NAMESPACE).pasteable() for c in unread)
        problem = MeshError(f"{', '.join(c.context for c in unread)} cannot be read: a new root is introduced only "
                            f"when every cluster of the mesh takes each stage", hint=f"check access with `{check}`, "
                                                                                     f"then `{again}`")
    elif off_root:
        problem = MeshError(f"not every cluster runs on the workspace's root yet ({', '.join(off_root)}): "
                            f"a new root is introduced only to a mesh that is in step",
                            hint=f"run `{invocation.command('apply')}` (and check `{invocation.command('status')}`) "
                                 f"first, then `{again}`")
    if problem is not None:
        if log:
            log.close()
        raise problem


def left_alone(targets: list[Cluster], observed: dict[str, Observed], desired: dict, current: dict,
               planned: carotation.Transition, again: str) -> dict[str, MeshError]:
    """The targets a stage leaves to apply, each with why: apply has not set it up yet, or set it up from
    another topology.yaml or base.yaml than today's. A stage changes istiod's root setting and cacerts only;
    re-installing with an edit apply has not made yet would make half of it (a remote without its primary's
    istiod exposed, its secrets and gateway as they were). ``current``: the desired state at the stage in
    place now (none at the start), ``desired``: at the stage planned. A move from the clusters' root takes
    over what another workspace's apply set up: those are installed as this workspace describes them."""
    first = f"run `{invocation.command('apply')}` (it gives the cluster the certificates of stage {planned.stage}"
    found = {}
    for cluster in targets:
        seen = observed.get(cluster.context)
        if seen is None or not seen.reachable:
            continue  # it sits the stage out as unreadable
        applied = seen.applied
        if applied is None:
            found[cluster.context] = MeshError(
                "not set up by apply yet: the move to a new root changes clusters that are part of the mesh",
                hint=f"{first}), then `{again}`")
        elif not planned.foreign_start and applied not in (current[cluster.context].fingerprint,
                                                            desired[cluster.context].fingerprint):
            found[cluster.context] = MeshError(
                "topology.yaml or base.yaml changed since apply set it up: a stage of the move changes certificates "
                "only, and apply makes the edit", hint=f"{first} and keeps the move's stage), then `{again}`")
    return found


def add_stage_steps(phase: Phase, cluster: Cluster, seen: Observed, d, tools: Tools, workdir: Path, issuer: Path,
                    release, variables: dict[str, str], planned: carotation.Transition, deployment: str) -> None:
    """One cluster's steps to the planned stage: istiod ready for two roots, the stage's intermediate and
    cacerts, and (on a primary) istiod confirmed to have taken them."""
    from .plan import install_steps, record_step

    if assess_install(seen, d.fingerprint).drift:
        # istiod must accept a second root before it sees one (the reserved value ISTIO_MULTIROOT_MESH).
        phase.add(cluster.context, install_steps(tools, workdir, d, seen)[0][0])
        phase.add(cluster.context, record_step(tools, cluster, d.fingerprint, d))
    # Stage 1 from the clusters' root: a cluster keeps its intermediate when the move's start recorded it (this
    # run's start records every cluster's); one added since gets the workspace's, trusted by every stage.
    kept = planned.foreign_start and planned.stage == 1 and (
        not carotation.former_dir(workdir).is_dir()
        or carotation.kept_intermediate(workdir, cluster.name, planned) is not None)
    if not kept and not certs.has_cacerts(issuer, cluster.name):
        phase.add(cluster.context, intermediate_step(release, issuer, cluster, variables))
    step = (root_bundle_step if kept else cacerts_step)(tools, cluster, workdir, d.namespace_manifest(), planned)
    step.change = ("~ secret cacerts: root-cert.pem trusts the clusters' root and this workspace's, same intermediate "
                   "(only root-cert.pem is patched)" if kept else
                   f"~ secret cacerts: {_STAGE_CHANGE[2 if planned.foreign_start and planned.stage == 1 else planned.stage]} "
                   f"({issuer.name}/{cluster.name}/)")
    phase.add(cluster.context, step)
    if not cluster.primary:  # a remote runs no istiod to confirm
        phase.add(cluster.context, confirm_step(tools, cluster, deployment, roots=_stage_roots(
            workdir, cluster, planned)))


# What each stage changes in a cluster's cacerts, as the plan shows it.
_STAGE_CHANGE = {
    1: "root-cert.pem trusts the old and the new root, same intermediate",
    2: "an intermediate of the new root, trusting both roots",
    3: "root-cert.pem trusts only the new root",
}


def require_istiod_took(clusters, observed: dict[str, Observed], tools: Tools, client: ClusterClient,
                        transition: carotation.Transition, log, deployment: str) -> None:
    """The stage is in place in every cacerts: before it counts (or the next starts), each istiod must hold
    its roots, as it publishes them in istio-ca-root-cert (one that refused keeps its old ones)."""
    primaries = [c for c in clusters if not c.primary and (observed.get(c.context) or Observed()).cacerts]
    published = client.published_roots(primaries)
    refused = [c for c in primaries if published.get(c.context) is not None
               and published[c.context] != observed[c.context].cacerts.get("root-cert.pem")]
    # A read that failed confirms nothing: the move waits for it as for a refusal.
    unread = [c for c in primaries if c.context not in published]
    if (refused or unread) and log:
        log.close()
    if unread:
        check = "; ".join(tools.kubectl_cmd(c, "get", "configmap", "istio-ca-root-cert", "-n", ISTIO_NAMESPACE)
                          .pasteable() for c in unread)
        raise MeshError(f"stage {transition.stage} is in cacerts everywhere, but the roots istiod publishes in "
                        f"{', '.join(c.context for c in unread)} could not be read: the move goes no further until "
                        f"each istiod is seen to hold them", hint=f"check access with `{check}`, then run this "
                                                                    f"command again")
    if not refused:
        return
    names = ", ".join(c.context for c in refused)
    restart = "; ".join(tools.kubectl_cmd(c, "rollout", "restart", f"deployment/{deployment}", "-n", ISTIO_NAMESPACE)
                        .pasteable() for c in refused)
    raise MeshError(f"stage {transition.stage} is in cacerts everywhere, but istiod in {names} has not taken its "
                    f"root bundle (istio-ca-root-cert holds another): the move goes no further until it has",
                    hint=f"`{restart}` (istiod loads cacerts whole when it starts), then run this command again; "
                         f"`{invocation.command('status')}` says why it refused")


def _stage_roots(workdir: Path, cluster: Cluster, planned: carotation.Transition) -> Callable[[], bytes | None]:
    """The root bundle the cluster's cacerts holds at the planned stage, read once the step runs (its
    intermediate may be made earlier in the same run)."""
    def roots() -> bytes | None:
        want = carotation.desired_cacerts(workdir, cluster.name, planned)
        return want["root-cert.pem"] if want else None
    return roots


# --- a move from the root the clusters run on, whose key this workspace does not hold ----------------------

@dataclass
class Former:
    """What a move from the clusters' root starts from: that root, as their root-cert.pem holds it, and each
    cluster's intermediate certificates by cluster name (public parts only: the keys stay in the clusters)."""

    root: bytes
    fingerprint: str
    intermediates: dict[str, dict[str, bytes]]
    subject: str = ""


def foreign_start(clusters: list[Cluster], observed: dict[str, Observed], workdir: Path, log) -> Former | None:
    """None when the clusters run on no other root than the workspace's (a move from the workspace's root);
    else the clusters' root, when the move to the workspace's own root can start from it: every cluster
    reachable, its cacerts made by setup-mesh (another workspace) under that one root, the same bytes
    everywhere. Refuses otherwise, before any change."""
    pki = workspace_certs(workdir, None, [c.name for c in clusters])
    found = {c.context: assess_cluster_cacerts(observed[c.context], c.name, pki) for c in clusters
             if (observed.get(c.context) or Observed()).reachable}
    if not any(f.other_root for f in found.values()):
        return None
    problem = _foreign_start_problem(clusters, observed, found)
    if problem is not None:
        if log:
            log.close()
        raise problem
    held = {c.name: observed[c.context].cacerts for c in clusters}
    root = held[clusters[0].name]["root-cert.pem"]
    info = certs.read_cert(root)
    return Former(root, info.fingerprint, {name: {f: files[f] for f in carotation.PUBLIC_FILES}
                                           for name, files in held.items()}, info.subject)


def _foreign_start_problem(clusters: list[Cluster], observed: dict[str, Observed], found: dict) -> MeshError | None:
    """Why a move from the clusters' root cannot start (None: it can)."""
    unreachable = [c.context for c in clusters if c.context not in found]
    if unreachable:
        return MeshError(f"{', '.join(unreachable)} cannot be read: a move from the root the clusters run on "
                         f"starts only when every cluster shows what it holds",
                         hint=f"make them reachable, then run `{invocation.command('rotate-certs', '--root')}` again")
    theirs = [ctx for ctx, f in found.items() if f.state is CacertsState.FOREIGN]
    if theirs:
        return ConfigError(f"the cacerts of {', '.join(theirs)} was not made by setup-mesh ({found[theirs[0]].issuer}): "
                           f"rotate-certs --root moves to this workspace's root only a mesh that setup-mesh made "
                           f"(from another workspace)", hint=_replace_hint())
    moving = [ctx for ctx, f in found.items() if f.state is CacertsState.OTHER_MOVE]
    if moving:
        return ConfigError(f"another workspace is moving {', '.join(moving)} to its root (istio-system records that "
                           f"move): a move starts only from a mesh on one root",
                           hint="finish that move from the workspace that started it, then run this command again")
    apart = [ctx for ctx, f in found.items() if f.state is not CacertsState.OTHER_ROOT]
    if apart:
        return ConfigError(f"{', '.join(apart)} do(es) not run on the root the other clusters run on: a move from "
                           f"the clusters' root starts only from one root that every cluster runs on",
                           hint=f"leave {', '.join(apart)} out of topology.yaml for the move, or {_replace_hint()}")
    bundles = {observed[c.context].cacerts.get("root-cert.pem") for c in clusters}
    counts = {len(carotation.split_pems(bundle)) for bundle in bundles}
    if len(bundles) > 1 or counts != {1}:
        return ConfigError("the clusters' root-cert.pem is not one and the same root certificate everywhere (a move "
                           "to a new root may be under way from the workspace that holds their root): a move from "
                           "the clusters' root starts from one root that every cluster runs on",
                           hint="finish that move from the workspace that started it, then run this command again")
    if any(not all(observed[c.context].cacerts.get(f) for f in carotation.PUBLIC_FILES) for c in clusters):
        return ConfigError("a cluster's cacerts holds no complete intermediate CA (ca-cert.pem, cert-chain.pem)",
                           hint=_replace_hint())
    return None


def _replace_hint() -> str:
    return (f"`{invocation.command('apply', '--replace-foreign-ca')}` replaces their cacerts at once (mTLS between "
            f"workloads breaks until they restart)")


@dataclass
class Start:
    """What a move does before its first stage: make a new root in certs-next/, or, moving from the root the
    clusters run on (``former``: its key is not held here) to the workspace's own, keep that root's
    certificate and the clusters' intermediates' certificates in certs-former/."""
    workdir: Path
    former: Former | None
    make_root: Command

    def plan_text(self) -> str:
        if self.former is None:
            return f"first the new root: mkdir -p {carotation.next_dir(self.workdir)} && {self.make_root.pasteable()}"
        return (f"first the clusters' root, {self.former.subject} (SHA-256 {self.former.fingerprint}), and their "
                f"intermediates' certificates (no key) are kept in {carotation.former_dir(self.workdir)}; no new "
                f"root is made: the move is to this workspace's root, certs/")

    def question_text(self) -> str:
        return ("first a new root CA is made in certs-next/" if self.former is None else
                f"first the clusters' root certificate is kept in {carotation.FORMER_DIR}/ (no key is read)")

    def run(self, planned: carotation.Transition, runner: ShRunner, reporter: Reporter) -> None:
        if self.former is None:
            make_new_root(carotation.next_dir(self.workdir), self.make_root, planned, runner, reporter)
            return
        carotation.record_former(self.workdir, self.former.root, self.former.intermediates)
        reporter.info(f"kept the clusters' root certificate in {carotation.former_dir(self.workdir)}")


def make_new_root(new_dir: Path, make_root, planned: carotation.Transition, runner: ShRunner,
                  reporter: Reporter) -> None:
    new_dir.mkdir(mode=0o700, exist_ok=True)
    with reporter.activity(f"making the new root CA in {new_dir} (a 4096-bit key takes a few seconds) ..."):
        certs.make_key_if_asked(runner.run, new_dir / certs.ROOT_KEY, certs.requested_key_bits(certs.ROOT_KEY_BITS))
        runner.run(make_root)  # the Makefile keeps files that exist: a repeated start reuses the same root
    certs.secure_tree(new_dir)
    planned.new_root = certs.read_cert((new_dir / certs.ROOT_CERT).read_bytes()).fingerprint
    reporter.info(f"made a new root CA in {new_dir}")
