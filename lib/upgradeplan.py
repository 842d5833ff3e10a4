"""The canary upgrade as one part of apply's plan: lib/upgrade.py decides, per cluster, what is left to move
it to its pinned Istio version; this turns those decisions into steps (commands as argv, run with the
istioctl of the target version's release) and orders clusters as lib/upgrade.waves says.

Each step is one of Istio's canary-upgrade commands (istio.io docs/setup/upgrade/canary):
``istioctl install --revision``, the east-west gateway reinstalled with that revision (same names, so its
Service, UID and address stay), ``istioctl tag set default --revision <rev> --overwrite``, and
``istioctl uninstall --revision <old> -y`` in a run that finds nothing left on the old revision, after
deleting what uninstall leaves of it (lib/upgrade.py). A primary with remotes also applies the new
revision's expose objects (``kubectl apply``, as Istio's primary-remote guide does with
samples/multicluster/expose-istiod-rev.yaml.tmpl). A remote's steps are the same commands (its install is
the remote profile at the revision: a Service ``istiod-<rev>`` leading to its primary's gateway and the
revision's injector); they start once its primary's steps of the run succeeded. A remote added after its
primary's upgrade is no upgrade: apply's ordinary install takes it at the primary's revision
(``install_revisions``), unless the primary is in the middle of one (``joining_refusal``).
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from .config import Topology
from .desired import Desired
from .errors import ConfigError
from .executor import After, Phase, Step
from .kube import Observed, Tools
from .names import EASTWEST_NAME, ISTIO_NAMESPACE
from .overlay import expose_istiod, manifest_list
from .plan import eastwest_path, overlay_path, readiness_timeout
from .release import Release
from .statusrevisions import Revisions
from .upgrade import (EXPOSE, GATEWAY, INSTALL, REMOVE, RESTART, TAG, ClusterRevisions, UpgradeStep,
                      cluster_revisions, mesh_steps, runnable_now, waves)
from .yamlfile import dump

PHASE = "upgrade Istio (canary revisions)"


def upgrade_states(topology: Topology, observed: dict[str, Observed | None],
                   revisions: dict[str, Revisions]) -> list[ClusterRevisions]:
    """What each readable cluster that holds a control plane already runs (a fresh cluster is installed
    at its pinned version by the ordinary install, not upgraded)."""
    states = []
    served = {c.primary for c in topology.clusters if c.primary}
    for cluster in topology.clusters:
        seen, read = observed.get(cluster.context), revisions.get(cluster.context)
        if seen is None or read is None or seen.applied is None:
            continue
        if not (read.injectors if cluster.primary else read.control_planes):
            continue
        states.append(cluster_revisions(cluster.context, cluster.primary, read, seen.deployments.get(EASTWEST_NAME),
                                        serves_remotes=cluster.context in served))
    return states


def running_revisions(states: list[ClusterRevisions]) -> dict[str, str]:
    """The named revision each cluster runs since an upgrade (its default tag's, installed): where apply's
    ordinary installs go, so that a change of base.yaml does not bring a default revision back."""
    return {s.context: s.default_tag for s in states
            if s.default_tag and s.default_tag != "default" and s.default_tag in s.installed}


def unsupported_refusal(states: list[ClusterRevisions], targets: dict[str, str], ambient: bool) -> ConfigError | None:
    """What setup-mesh does not upgrade, refused before anything is touched: an ambient mesh. Istio's
    ambient upgrade guide (istio.io docs/ambient/upgrade/helm) moves the control plane first, then ztunnel,
    a DaemonSet, in place: each node's ztunnel restarts, cutting that node's connections, which the guide
    avoids by cordoning and draining a node before its ztunnel moves. Which nodes may be drained, and
    when, only the user can say."""
    steps = mesh_steps(states, targets)
    moving = [s.context for s in states if runnable_now(steps.get(s.context, []))]
    if not (moving and ambient):
        return None
    return ConfigError(
        f"upgrading an ambient mesh ({', '.join(moving)}) is not supported by setup-mesh; no cluster was changed. "
        "Istio's ambient upgrade (istio.io docs/ambient/upgrade) moves ztunnel in place, node by node: its "
        "DaemonSet's pod on each node restarts, which cuts that node's connections",
        hint="keep istio_version at the version the clusters run (status shows it); or upgrade by hand as Istio's "
             "ambient upgrade guide says (the control plane first, then ztunnel, cordoning and draining each node "
             "before its ztunnel moves where long-lived connections matter), then pin the version they run")


def joining_revisions(topology: Topology, states: list[ClusterRevisions],
                      observed: dict[str, Observed | None]) -> dict[str, str]:
    """Remotes installed for the first time whose primary runs a named revision since an upgrade, each with
    that revision: the default revision's istiod is gone from the primary (and no longer exposed), so a
    remote joins at the revision, as Istio's canary-upgrade and primary-remote guides install a remote of a
    revisioned control plane (``istioctl install --revision <rev>`` of the remote profile, whose Service
    istiod-<rev> the primary's gateway routes through istiod-vs-<rev>), then gets the default tag."""
    running = running_revisions(states)
    present = {s.context for s in states}
    return {c.context: running[c.primary] for c in topology.clusters
            if c.primary in running and c.context not in present
            and (seen := observed.get(c.context)) is not None and seen.applied is None}


def install_revisions(topology: Topology, states: list[ClusterRevisions],
                      observed: dict[str, Observed | None]) -> dict[str, str]:
    """The revision each cluster's ordinary install goes to (lib/installsteps.py): the one it runs since an
    upgrade, so that a change of base.yaml does not bring a default revision back; a joining remote, its
    primary's."""
    return {**running_revisions(states), **joining_revisions(topology, states, observed)}


def joining_refusal(topology: Topology, states: list[ClusterRevisions], observed: dict[str, Observed | None],
                    targets: dict[str, str], only: set[str] | None = None) -> ConfigError | None:
    """What a joining remote cannot do yet, refused before any cluster is touched: join a primary in the
    middle of an upgrade (it holds two revisions, or moves to another version in this run: the remote would
    be installed at a revision the primary is leaving), or join with a pinned version other than the one
    its primary's revision runs, or while the mesh's own istio_version, whose istioctl installs new clusters,
    is another (its install would be another release's at that revision's name)."""
    primaries = {s.context: s for s in states}
    mesh_version = topology.istio_version or next(iter(topology.istio_versions), None)
    reasons = []
    for ctx, rev in joining_revisions(topology, states, observed).items():
        if only is not None and ctx not in only:
            continue
        primary = primaries[topology.by_context(ctx).primary]
        version = primary.installed[rev]
        if len(primary.installed) > 1 or targets.get(primary.context) != version:
            held = ", ".join(f"{r} ({v})" for r, v in sorted(primary.installed.items()))
            reasons.append(f"{ctx}: its primary {primary.context} is in the middle of an upgrade (it runs {held}, "
                           f"pinned to {targets.get(primary.context)}); finish that upgrade first (apply without "
                           f"{ctx}, until status shows {primary.context} on one revision), then add {ctx}")
        elif targets.get(ctx) != version:
            reasons.append(f"{ctx}: pinned to {targets.get(ctx)}, but it joins its primary {primary.context}'s "
                           f"revision {rev}, which runs {version}; pin {ctx} to {version}")
        elif mesh_version != version:
            # New clusters are installed with the mesh's release (lib/fetch.py mesh_release), as any install.
            reasons.append(f"{ctx}: the mesh is in a staged move (its istio_version is {mesh_version}, whose "
                           f"istioctl installs new clusters), and {ctx} joins revision {rev}, which runs {version}; "
                           f"add {ctx} once the top-level istio_version is {version}")
    if not reasons:
        return None
    return ConfigError("a remote cannot join its primary's revision yet; no cluster was changed:\n"
                       + "\n".join(f"- {r}" for r in reasons),
                       hint="do as each line says in topology.yaml, then run apply again")


def upgrade_phase(states: list[ClusterRevisions], targets: dict[str, str], desired: dict[str, Desired],
                  releases: dict[str, Release], tools: Tools, workdir: Path, parallel: int,
                  restart_workloads: bool = False, only: set[str] | None = None) -> Phase:
    """Every cluster's upgrade steps still to do, chained wave after wave (a wave starts only once the
    one before it succeeded: a failure leaves the later clusters on their working revision). With
    ``restart_workloads``, the workloads still on an old revision are restarted, namespace by namespace,
    once the default tag has moved (before that they would come back on the old revision). ``only``: the
    clusters this run moves (--context); the others' states still hold back what they use."""
    phase = Phase(PHASE)
    steps = mesh_steps(states, targets)
    primary_of = {s.context: s.primary for s in states}
    previous_last: list[tuple[str, str]] = []
    for wave in waves(states, parallel):
        lasts: dict[str, str] = {}
        for ctx in (c for c in wave if only is None or c in only):
            target = targets[ctx]
            release = releases[target]
            own = replace(tools, istioctl=str(release.istioctl))
            made = [step for item in steps[ctx]
                    if (step := _step(item, own, desired[ctx], workdir, restart_workloads))]
            if not made:
                continue
            made[0].after.extend(After(c, k) for c, k in previous_last)
            # A remote moves once its primary's steps of this run succeeded: its new injector and proxies
            # call the primary's new istiod, through the route the primary's expose step made.
            if primary_of.get(ctx) in lasts:
                made[0].after.append(After(primary_of[ctx], lasts[primary_of[ctx]]))
            for step in made:
                phase.add(ctx, step)
            lasts[ctx] = made[-1].key
        previous_last = list(lasts.items()) or previous_last
    return phase


def _step(item: UpgradeStep, tools: Tools, d: Desired, workdir: Path, restart_workloads: bool) -> Step | None:
    cluster, rev = d.cluster, item.revision
    if item.kind == INSTALL:
        path = overlay_path(workdir, cluster)
        return Step(f"install revision {rev}", files=[(path, dump(d.operator))],
                    commands=[tools.istioctl_cmd(cluster, "install", "-y", "-f", str(path), "--revision", rev,
                                                 "--readiness-timeout", readiness_timeout(tools.timeout, d.operator))],
                    done=f"revision {rev} installed", change=f"+ {item.detail}")
    if item.kind == EXPOSE:
        # expose-istiod-rev.yaml.tmpl: the shared Gateway istiod-gateway and the revision's VirtualService.
        objects = expose_istiod(rev)
        return Step(f"expose revision {rev}'s istiod to remotes",
                    commands=[tools.apply(cluster, dump(manifest_list(objects)), shown=True)],
                    change=f"+ {item.detail}")
    if item.kind == GATEWAY:
        if d.eastwest is None:
            return None
        path = eastwest_path(workdir, cluster)
        return Step(f"move the east-west gateway to {rev}", files=[(path, dump(d.eastwest))],
                    commands=[tools.istioctl_cmd(cluster, "install", "-y", "-f", str(path), "--revision", rev,
                                                 "--readiness-timeout", readiness_timeout(tools.timeout, d.eastwest))],
                    change=f"~ {item.detail} (its Service, UID and address, stays)")
    if item.kind == TAG:
        return Step(f"move the default tag to {rev}",
                    commands=[tools.istioctl_cmd(cluster, "tag", "set", "default", "--revision", rev, "--overwrite")],
                    change=f"~ {item.detail}")
    if item.kind == RESTART:
        if restart_workloads:
            # As Istio's canary guide does it: a rollout restart per namespace; the new pods are injected
            # through the default tag, which an earlier step of this cluster moved.
            where = ", ".join(item.namespaces)
            return Step(f"restart the workloads of {where}",
                        commands=[tools.kubectl_cmd(cluster, "rollout", "restart", "deployment", "-n", ns)
                                  for ns in item.namespaces],
                        done=f"workloads of {where} restarted",
                        change=f"~ restart the workloads still on revision {rev}: {where} "
                               f"(kubectl rollout restart deployment -n <namespace>)")
        # Nothing runs: the listing is the step (its title shows in apply's progress, its change in the plan).
        return Step(item.detail, change=f"! {item.detail}", note=item.detail)
    if item.kind == REMOVE and not item.later:
        # Its leftovers first: a run cut short after them finds the revision installed and does both again.
        leftovers = [tools.kubectl_cmd(cluster, "delete", resource, name, "-n", ISTIO_NAMESPACE, "--ignore-not-found")
                     for resource, name in item.leftovers]
        return Step(f"remove revision {rev}",
                    commands=[*leftovers, tools.istioctl_cmd(cluster, "uninstall", "--revision", rev, "-y")],
                    done=f"revision {rev} removed", change=f"- {item.detail}")
    return None


def waiting_removals(states: list[ClusterRevisions], targets: dict[str, str], only: set[str] | None = None) -> list[str]:
    """The old revisions a later run removes (what still uses them), for the plan's notes."""
    found = mesh_steps(states, targets)
    return [str(step) for ctx, steps in found.items() if only is None or ctx in only
            for step in steps if step.kind == REMOVE and step.later]


def targets_of(topology: Topology) -> dict[str, str]:
    """Each cluster's pinned version (context -> version); empty when nothing is pinned."""
    out = {}
    for cluster in topology.clusters:
        version = topology.istio_version_of(cluster.context)
        if version:
            out[cluster.context] = version
    return out


