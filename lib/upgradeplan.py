"""The canary upgrade as one part of apply's plan: lib/upgrade.py decides, per cluster, what is left to move
it to its pinned Istio version; this turns those decisions into steps (commands as argv, run with the
istioctl of the target version's release) and orders clusters as lib/upgrade.waves says.

Each step is one of Istio's canary-upgrade commands (istio.io docs/setup/upgrade/canary):
``istioctl install --revision``, the east-west gateway reinstalled with that revision (same names, so its
Service, UID and address stay), ``istioctl tag set default --revision <rev> --overwrite``, and
``istioctl uninstall --revision <old> -y`` in a run that finds nothing left on the old revision.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from .config import Topology
from .desired import Desired
from .errors import ConfigError
from .executor import After, Phase, Step
from .kube import Observed, Tools
from .names import EASTWEST_NAME
from .plan import eastwest_path, overlay_path, readiness_timeout
from .release import Release
from .statusrevisions import Revisions
from .upgrade import (GATEWAY, INSTALL, REMOVE, RESTART, TAG, ClusterRevisions, UpgradeStep, cluster_revisions,
                      mesh_steps, runnable_now, waves)
from .yamlfile import dump

PHASE = "upgrade Istio (canary revisions)"


def upgrade_states(topology: Topology, observed: dict[str, Observed | None],
                   revisions: dict[str, Revisions]) -> list[ClusterRevisions]:
    """What each readable cluster that holds a control plane already runs (a fresh cluster is installed
    at its pinned version by the ordinary install, not upgraded)."""
    states = []
    for cluster in topology.clusters:
        seen, read = observed.get(cluster.context), revisions.get(cluster.context)
        if seen is None or read is None or seen.applied is None:
            continue
        if not (read.injectors if cluster.primary else read.control_planes):
            continue
        states.append(cluster_revisions(cluster.context, cluster.primary, read, seen.deployments.get(EASTWEST_NAME)))
    return states


def running_revisions(states: list[ClusterRevisions]) -> dict[str, str]:
    """The named revision each cluster runs since an upgrade (its default tag's, installed): where apply's
    ordinary installs go, so that a change of base.yaml does not bring a default revision back."""
    return {s.context: s.default_tag for s in states
            if s.default_tag and s.default_tag != "default" and s.default_tag in s.installed}


def unsupported_refusal(states: list[ClusterRevisions], targets: dict[str, str], ambient: bool) -> ConfigError | None:
    """What setup-mesh does not upgrade yet, refused before anything is touched. A remote's revision needs
    its primary's istiod exposed per revision through the east-west gateway
    (samples/multicluster/expose-istiod-rev.yaml.tmpl) and its own istiod Service renamed; an ambient mesh
    moves ztunnel in place, node by node (istio.io docs/ambient/upgrade): neither is done here yet."""
    steps = mesh_steps(states, targets)
    moving = [s.context for s in states if runnable_now(steps.get(s.context, []))]
    remotes = [s.context for s in states if s.primary and s.context in moving]
    if moving and ambient:
        what = f"upgrading an ambient mesh ({', '.join(moving)})"
    elif remotes:
        what = f"upgrading remotes ({', '.join(remotes)})"
    else:
        return None
    return ConfigError(f"{what} is not supported by setup-mesh yet; no cluster was changed",
                       hint="keep istio_version where the clusters run now (status shows it), or upgrade them by hand "
                            "as Istio's upgrade guide says")


def upgrade_phase(states: list[ClusterRevisions], targets: dict[str, str], desired: dict[str, Desired],
                  releases: dict[str, Release], tools: Tools, workdir: Path, parallel: int,
                  restart_workloads: bool = False) -> Phase:
    """Every cluster's upgrade steps still to do, chained wave after wave (a wave starts only once the
    one before it succeeded: a failure leaves the later clusters on their working revision). With
    ``restart_workloads``, the workloads still on an old revision are restarted, namespace by namespace,
    once the default tag has moved (before that they would come back on the old revision)."""
    phase = Phase(PHASE)
    steps = mesh_steps(states, targets)
    previous_last: list[tuple[str, str]] = []
    for wave in waves(states, parallel):
        lasts = []
        for ctx in wave:
            target = targets[ctx]
            release = releases[target]
            own = replace(tools, istioctl=str(release.istioctl))
            made = [step for item in steps[ctx]
                    if (step := _step(item, own, desired[ctx], workdir, restart_workloads))]
            if not made:
                continue
            made[0].after.extend(After(c, k) for c, k in previous_last)
            for step in made:
                phase.add(ctx, step)
            lasts.append((ctx, made[-1].key))
        previous_last = lasts or previous_last
    return phase


def _step(item: UpgradeStep, tools: Tools, d: Desired, workdir: Path, restart_workloads: bool) -> Step | None:
    cluster, rev = d.cluster, item.revision
    if item.kind == INSTALL:
        path = overlay_path(workdir, cluster)
        return Step(f"install revision {rev}", files=[(path, dump(d.operator))],
                    commands=[tools.istioctl_cmd(cluster, "install", "-y", "-f", str(path), "--revision", rev,
                                                 "--readiness-timeout", readiness_timeout(tools.timeout, d.operator))],
                    done=f"revision {rev} installed", change=f"+ {item.detail}")
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
        return Step(f"remove revision {rev}",
                    commands=[tools.istioctl_cmd(cluster, "uninstall", "--revision", rev, "-y")],
                    done=f"revision {rev} removed", change=f"- {item.detail}")
    return None


def waiting_removals(states: list[ClusterRevisions], targets: dict[str, str]) -> list[str]:
    """The old revisions a later run removes (what still uses them), for the plan's notes."""
    found = mesh_steps(states, targets)
    return [str(step) for steps in found.values() for step in steps if step.kind == REMOVE and step.later]


def targets_of(topology: Topology) -> dict[str, str]:
    """Each cluster's pinned version (context -> version); empty when nothing is pinned."""
    out = {}
    for cluster in topology.clusters:
        version = topology.istio_version_of(cluster.context)
        if version:
            out[cluster.context] = version
    return out


