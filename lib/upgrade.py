"""A canary upgrade, decided from what a cluster holds: which of its steps are still to do to move it to a
pinned Istio version, and the order clusters move in. Pure (no cluster is read here), so that a run cut
short anywhere is finished by the next: each run reads the clusters again and does only what is left.

The steps, per cluster, as Istio's canary upgrade docs (istio.io docs/setup/upgrade/canary) give them,
with the east-west gateway moved in place (its Service, so its UID and address, stays):

1. ``install``: the new control plane as revision ``1-31-0`` beside the old one (a remote: its remote
   install at that revision, whose istiod is its primary's);
2. ``expose`` (a primary with remotes): that revision's istiod exposed to the remotes through the
   east-west gateway, as samples/multicluster/expose-istiod-rev.yaml.tmpl does it (a VirtualService
   ``istiod-vs-1-31-0`` routing the server name ``istiod-1-31-0.istio-system.svc``, which the remote's
   Service ``istiod-1-31-0`` is called by, to that istiod); applied again in every run until the cluster
   is done, so that a run cut short after the install still exposes it before a remote moves;
3. ``gateway``: the east-west gateway reinstalled with that revision (same names: updated in place);
4. ``tag``: ``istioctl tag set default --revision 1-31-0 --overwrite``, so namespaces labelled
   ``istio-injection=enabled`` (or ``istio.io/rev=default``) get the new revision's sidecars;
5. ``restart``: workloads still on an old revision are listed with the command that restarts them
   (nothing waits on them: a later run goes on once they moved);
6. ``remove``: ``istioctl uninstall --revision <old> -y`` once no proxy uses the old revision and the
   gateway has left it (uninstall removes every object of that revision, gateways included), after what
   uninstall leaves of it (a primary's VirtualService exposing it, a remote's EndpointSlice); a primary
   keeps the old revision while a remote's proxies or gateway still use it.

Order: a remote moves right after its primary (its istiod is the primary's, which must run and be
exposed at the new revision first); primaries one at a time unless ``parallel`` allows more.
lib/upgradeplan.py turns the steps into apply's plan.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Iterable

from .errors import ConfigError
from .names import ISTIO_NAMESPACE, REVISION_LABEL
from .skew import ClusterVersions, Refusal, check_targets, revision_name

if TYPE_CHECKING:
    from .config import Topology
    from .statusrevisions import Revisions

INSTALL, EXPOSE, GATEWAY, TAG, RESTART, REMOVE = "install", "expose", "gateway", "tag", "restart", "remove"


@dataclass(frozen=True)
class ClusterRevisions:
    """What one cluster holds, as read. ``installed``: revision -> Istio version (a primary's istiods; a
    remote's revision injectors); ``proxies``: revision -> namespace -> proxies (istio-system's are the
    gateways); ``gateway_revision``: the east-west gateway's istio.io/rev (None: no gateway)."""
    context: str
    installed: dict[str, str] = field(default_factory=dict)
    default_tag: str | None = None
    proxies: dict[str, dict[str, int]] = field(default_factory=dict)
    gateway_revision: str | None = None
    primary: str | None = None
    serves_remotes: bool = False


@dataclass(frozen=True)
class UpgradeStep:
    context: str
    kind: str  # install, expose, gateway, tag, restart, remove
    revision: str  # the revision it installs or moves to; for restart and remove, the old one
    detail: str
    later: bool = False  # waits for a later run (a removal while something still uses the revision)
    namespaces: tuple[str, ...] = ()  # restart: the namespaces whose workloads are still on the old revision
    # remove: objects of the revision that ``istioctl uninstall`` leaves (it prunes only the kinds of
    # operator/pkg/uninstall/prune.go): (resource, name), deleted with it
    leftovers: tuple[tuple[str, str], ...] = ()

    def __str__(self) -> str:
        return f"{self.context}: {self.detail}" + (" (a later run, once nothing uses it)" if self.later else "")


def steps_left(state: ClusterRevisions, target: str) -> list[UpgradeStep]:
    """What is still to do to move ``state``'s cluster to Istio ``target`` (empty: done), in order."""
    rev = revision_name(target)
    ctx = state.context
    out: list[UpgradeStep] = []
    if state.installed.get(rev) != target:
        what = "remote install" if state.primary else "control plane"
        out.append(UpgradeStep(ctx, INSTALL, rev, f"install the {target} {what} as revision {rev} beside "
                                                  f"{', '.join(sorted(state.installed)) or 'nothing'}"))
    if state.gateway_revision is not None and state.gateway_revision != rev:
        out.append(UpgradeStep(ctx, GATEWAY, rev, f"move the east-west gateway from revision "
                                                  f"{state.gateway_revision} to {rev} in place"))
    if state.default_tag != rev:
        out.append(UpgradeStep(ctx, TAG, rev, f"point the default revision tag at {rev}"
                                              + (f" (from {state.default_tag})" if state.default_tag else "")))
    for old in sorted(state.installed.keys() - {rev}):
        on_old = state.proxies.get(old) or {}
        workloads = {ns: n for ns, n in on_old.items() if ns != ISTIO_NAMESPACE}
        if workloads:
            listing = ", ".join(f"{ns} ({n})" for ns, n in sorted(workloads.items()))
            out.append(UpgradeStep(ctx, RESTART, old, f"workloads still on revision {old}: {listing}; restart "
                                                      "them: kubectl rollout restart deployment -n <namespace>",
                                   namespaces=tuple(sorted(workloads))))
        # Removed only in a run that finds nothing on it: uninstall takes every object of the revision.
        in_use = bool(on_old) or state.gateway_revision == old or state.default_tag in (old, None)
        leftovers = _leftovers(state, old)
        deletes = "".join(f"; kubectl delete {resource} {name}" for resource, name in leftovers)
        out.append(UpgradeStep(ctx, REMOVE, old, f"remove revision {old} (istioctl uninstall --revision {old}{deletes})",
                               later=in_use, leftovers=leftovers))
    if out and state.serves_remotes:
        # Right after the install (its istiod must exist for the route to lead anywhere), before the gateway
        # and the remotes move: the remotes' new injector and proxies call istiod-<rev> through this gateway.
        at = 1 if out[0].kind == INSTALL else 0
        out.insert(at, UpgradeStep(ctx, EXPOSE, rev, f"expose revision {rev}'s istiod to remotes through the "
                                                     f"east-west gateway (VirtualService istiod-vs-{rev})"))
    return out


def _leftovers(state: ClusterRevisions, revision: str) -> tuple[tuple[str, str], ...]:
    """What a revision leaves that its uninstall does not remove: a primary's VirtualService exposing its
    istiod to remotes (setup-mesh applied it; the Gateway istiod-gateway is every revision's and stays);
    a remote's EndpointSlice leading its istiod Service to the primary (the chart's
    remote-istiod-endpointslices.yaml: uninstall prunes no EndpointSlice)."""
    suffix = "" if revision == "default" else f"-{revision}"
    if state.primary:
        return (("endpointslices.discovery.k8s.io", f"istiod{suffix}"),)
    if state.serves_remotes:
        return (("virtualservices.networking.istio.io", f"istiod-vs{suffix}"),)
    return ()


def mesh_steps(states: Iterable[ClusterRevisions], targets: dict[str, str]) -> dict[str, list[UpgradeStep]]:
    """Every cluster's steps; a primary keeps an old revision while a remote's proxies or gateway still use
    it (the remote's istiod is the primary's)."""
    states = list(states)
    found = {s.context: steps_left(s, targets[s.context]) for s in states}
    for remote in (s for s in states if s.primary in found):
        used = {rev for rev, per_ns in remote.proxies.items() if per_ns} | {remote.gateway_revision}
        found[remote.primary] = [replace(step, later=True) if step.kind == REMOVE and step.revision in used else step
                                 for step in found[remote.primary]]
    return found


def runnable_now(steps: list[UpgradeStep]) -> list[UpgradeStep]:
    """The steps this run does."""
    return [s for s in steps if not s.later]


def waves(states: Iterable[ClusterRevisions], parallel: int = 1) -> list[list[str]]:
    """The order clusters move in: each wave is up to ``parallel`` primaries, each followed by its remotes;
    a run stops at the first wave with a failure, leaving every cluster on a working revision."""
    states = list(states)
    primaries = [s.context for s in states if s.primary is None]
    remotes_of = {p: [s.context for s in states if s.primary == p] for p in primaries}
    size = max(1, parallel)
    out = []
    for start in range(0, len(primaries), size):
        group = primaries[start:start + size]
        out.append([ctx for p in group for ctx in [p, *remotes_of[p]]])
    return out


def describe(states: Iterable[ClusterRevisions], targets: dict[str, str], parallel: int = 1) -> list[str]:
    """The whole upgrade as --dry-run shows it: wave by wave, each cluster's steps still to do."""
    states = list(states)
    steps = mesh_steps(states, targets)
    lines = []
    for number, wave in enumerate(waves(states, parallel), 1):
        lines.append(f"wave {number}: {', '.join(wave)}")
        for ctx in wave:
            left = steps[ctx]
            if not left:
                lines.append(f"  {ctx}: on {targets[ctx]}, nothing to do")
            lines += [f"  {step}" for step in left]
    return lines


# --- from what status reads (lib/statusrevisions.py) to the upgrade's inputs --------------------------------

def cluster_revisions(context: str, primary: str | None, seen: "Revisions", gateway: dict | None,
                      serves_remotes: bool = False) -> ClusterRevisions:
    """One cluster's revisions as the upgrade needs them: what is installed (a primary's istiods, a remote's
    revision injectors), the default tag, proxies per revision and namespace, and the revision of the
    east-west gateway's Deployment (``gateway``: as read, None when there is none)."""
    installed = dict(seen.injectors if primary else seen.control_planes)
    labels = ((gateway or {}).get("metadata") or {}).get("labels") or {}
    return ClusterRevisions(context, installed=installed, default_tag=seen.default_tag,
                            proxies={rev: dict(per_ns) for rev, per_ns in seen.namespaces.items()},
                            gateway_revision=(labels.get(REVISION_LABEL) or "default") if gateway else None,
                            primary=primary, serves_remotes=serves_remotes)


def preflight(topology: "Topology", seen: dict[str, "Revisions"], targets: dict[str, str]) -> list[Refusal]:
    """Istio's skew rules for moving every cluster to ``targets`` (context -> pinned version), from what was
    read, before any cluster is touched. A remote's control planes are its primary's."""
    versions = []
    for cluster in topology.clusters:
        read = seen.get(cluster.context)
        if read is None or cluster.context not in targets:
            continue
        planes = read.control_planes
        if cluster.primary and cluster.primary in seen:
            planes = seen[cluster.primary].control_planes or read.injectors
        versions.append(ClusterVersions(cluster.context, targets[cluster.context],
                                        control_planes=tuple(planes.values()),
                                        proxies=tuple(sorted({v for _, v in read.proxies})),
                                        kubernetes=read.kubernetes, primary=cluster.primary))
    return check_targets(versions)


def refusal_error(refusals: list[Refusal]) -> ConfigError:
    """One error naming every rule broken, where, and how to fix each (exit 2: nothing was touched)."""
    lines = [f"- {r.message}\n  fix: {r.hint}" for r in refusals]
    return ConfigError("the pinned Istio versions break Istio's upgrade rules; no cluster was changed:\n"
                       + "\n".join(lines), hint="fix topology.yaml as each line says, then run apply again")
