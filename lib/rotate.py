"""rotate-certs: re-issue the clusters' intermediate CAs under the workspace's root and put them in place
(the move to a new root, rotate-certs --root, is in lib/rootmove.py)."""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

from . import certs, invocation, carotation, reissue
from . import polling
from .cluster import KubeClient
from .commands import certs_prerequisites, other_roots_refusal
from .driver import Parts, Run, SitOut, drive, rows_of, sit_out
from .planview import print_plan
from .config import Cluster, select_clusters
from .errors import ConfigError, MeshError
from .executor import Interrupted, Outcome, Phase, RunContext, Step
from .kube import Observed, Tools, parse_published_roots
from .names import ISTIO_NAMESPACE
from .overlay import control_plane_istiod
from .assess import CacertsFinding, CacertsState, assess_cluster_cacerts
from .casteps import workspace_certs
from .desired import desired_state
from .plan import ApplyPlan, cacerts_step, intermediate_step
from .workspace import Workspace, find_tools, load_workspace, pinned_release
from .reporter import Reporter
from .runner import ShRunner

CONTROL_PLANE_WAIT = 120.0  # seconds istiod may take to be ready again
POLL_SECONDS = 1.0


def backup_step(workdir: Path, cluster: Cluster, backup: Path) -> Step:
    source = certs.certs_dir(workdir) / cluster.name
    target = backup / cluster.name

    def action(ctx: RunContext) -> None:
        if source.is_dir():
            carotation.move_to_backup(source, target)

    return Step("back up the intermediate CA", action=action,
                note=f"moves {source} to {target} (0700, keys 0600), so the Makefile makes a new one")


def confirm_step(tools: Tools, cluster: Cluster, deployment: str, timeout: float = CONTROL_PLANE_WAIT,
                 roots: Callable[[], bytes | None] | None = None) -> Step:
    """istiod reloads a changed cacerts on its own; this checks that it still runs afterwards and, given
    the stage's root bundle (``roots``), that istiod took it: it publishes the bundle it holds in
    istio-ca-root-cert, and keeps its old one (and its old intermediate) when it refuses a change."""
    command = tools.kubectl_cmd(cluster, "get", "deployment", deployment, "-n", ISTIO_NAMESPACE, "-o", "json",
                                timeout=min(tools.timeout, 60.0))
    published = tools.published_roots(cluster, min(tools.timeout, 60.0))
    restart = tools.kubectl_cmd(cluster, "rollout", "restart", f"deployment/{deployment}", "-n", ISTIO_NAMESPACE)

    def action(ctx: RunContext) -> None:
        deadline = time.monotonic() + timeout
        while True:
            status = json.loads(ctx.run(command).stdout or "{}").get("status") or {}
            if int(status.get("readyReplicas") or 0) > 0:
                break
            if time.monotonic() >= deadline:
                raise MeshError(f"{deployment} has no ready replica {timeout:g}s after cacerts changed",
                                hint=f"look at its pods: `{tools.kubectl_cmd(cluster, 'get', 'pods', '-n', ISTIO_NAMESPACE, '-l', 'app=istiod').pasteable()}`")
            if ctx.cancelled.wait(polling.interval(POLL_SECONDS)):
                raise Interrupted()
        want = roots() if roots else None
        # The kubelet refreshes a mounted secret within a minute or so; istiod reloads it then.
        while want is not None:
            result = ctx.run(published)
            if result.ok and parse_published_roots(result.stdout) == want:
                return
            if time.monotonic() >= deadline:
                raise MeshError(f"{deployment} has not taken the root bundle of cacerts {timeout:g}s after it changed "
                                f"(istio-ca-root-cert still holds another): it keeps its old roots and intermediate",
                                hint=f"`{restart.pasteable()}` (istiod loads cacerts whole when it starts), then run "
                                     f"this command again; `{invocation.command('status')}` says why it refused")
            if ctx.cancelled.wait(polling.interval(POLL_SECONDS)):
                raise Interrupted()

    return Step(f"confirm {deployment} runs" + (" on the stage's roots" if roots else ""),
                commands=[command, published] if roots else [command], action=action)


def rotate_intermediates(workdir: Path, *, kubeconfig: str | None, istio_dir: str | None, contexts: list[str],
                         expiring_within: int | None, dry_run: bool, parallel: int, timeout: float,
                         runner: ShRunner, reporter: Reporter, yes: bool = False) -> int:
    run = Run("rotate-certs", workdir, runner, reporter, parallel, dry_run, yes)
    ws = load_workspace(workdir, kubeconfig, lenient=dry_run)
    topology = ws.topology
    chosen = select_clusters(topology, contexts)
    cert_dir = certs.certs_dir(workdir)
    _require_rotatable(workdir, cert_dir)
    pinned = pinned_release(ws.topology, workdir, istio_dir)
    istio_dir = str(pinned.root) if pinned else istio_dir  # its certs Makefile too
    tools = find_tools(istio_dir, runner, dry_run, ws.notes, timeout, pinned=pinned)
    unfinished = reissue.load_rotation(workdir)
    resuming = unfinished is not None
    rotation, chosen, local = _rotation_to_run(ws, unfinished, chosen, expiring_within, reporter)
    targets = [c for c in chosen if c.context in rotation.replaced]
    if not targets:
        reporter.info(f"nothing to do: no intermediate CA expires within {expiring_within} day(s)"
                      if expiring_within is not None else "nothing to do: no cluster chosen")
        return 0

    # Making intermediates needs the Makefile even when some exist: every target gets a new one.
    release, variables = certs_prerequisites(ws, istio_dir, runner, dry_run, force=True)
    run.open_log()  # before the reads, so that they are logged
    if not dry_run:
        run.start_progress(rows_of(targets))
    client = KubeClient(tools, runner, run.reader, parallel)
    observed = client.read_state(targets) if ws.contexts_resolved else {}
    unreachable = {ctx: seen for ctx, seen in observed.items() if not seen.reachable}
    cacerts = _cacerts_findings(workdir, targets, observed)
    # Refused before the plan is built, and so also before a dry run shows it.
    refusal = other_roots_refusal({ctx: found for ctx, found in cacerts.items() if found.other_root}, replace=False,
                                  command="rotate-certs")
    if refusal is not None:
        run.close_log()
        raise refusal

    # A cluster apply has not set up runs no istiod on an intermediate yet: apply gives it one. It sits the
    # rotation out, and is not recorded in it (a rotation left unfinished would wait for it).
    unset = [c.context for c in targets if (seen := observed.get(c.context)) and seen.reachable and seen.applied is None]
    rotation = replace(rotation, replaced={ctx: fp for ctx, fp in rotation.replaced.items() if ctx not in unset})
    backup = carotation.backup_dir(workdir, rotation.backup_name)
    skip = set(unreachable) | set(unset)
    phase, reissued = _rotation_phase(ws, [c for c in targets if c.context not in skip], cacerts, rotation, local,
                                      tools, release, variables, backup)
    return drive(run, _Rotating(run, ws, targets, observed, unreachable, unset, rotation, resuming, backup, tools,
                                phase, reissued).parts())


@dataclass
class _Rotating:
    """One rotation's parts of the run (lib/driver.py)."""
    run: Run
    ws: Workspace
    targets: list[Cluster]
    observed: dict[str, Observed]
    unreachable: dict[str, Observed]
    unset: list[str]  # targets apply has not set up
    rotation: reissue.Rotation
    resuming: bool
    backup: Path
    tools: Tools
    phase: Phase
    reissued: list[str]

    def parts(self) -> Parts:
        return Parts(show=self.show, ask=self.ask, begin=self.begin, rows=rows_of(self.targets), sit_outs=self.sit_outs,
                     execute=lambda executor: executor.run_phases([self.phase]), record=self.record,
                     report=lambda outcome: _report_rotation(self.targets, outcome, self.backup, self.resuming,
                                                             self.run.reporter))

    def show(self) -> int:
        ws = self.ws
        print_plan(ApplyPlan([self.phase]), ws.topology, self.observed if ws.contexts_resolved else None, ws.notes,
                   self.run.reporter, title="rotate-certs plan", command="rotate-certs", sitting_out=self.unreachable)
        return 0

    def ask(self) -> None:
        if self.phase:
            self.run.confirm_plan(ApplyPlan([self.phase]), self.ws.topology,
                                  _rotation_question(self.reissued, list(self.phase.steps)),
                                  title="rotate-certs", command="rotate-certs")

    def begin(self) -> None:
        if self.rotation.replaced:  # before anything changes: an interrupted run is resumed
            reissue.save_rotation(self.ws.workdir, self.rotation)

    def sit_outs(self) -> list[SitOut]:
        unset = MeshError("not set up by apply yet: it runs no istiod on an intermediate of this mesh to rotate",
                          hint=f"run `{invocation.command('apply')}`: it sets the cluster up with its intermediate")
        return [*(sit_out(self.tools, self.ws.topology.by_context(context), seen, "then run rotate-certs again")
                  for context, seen in self.unreachable.items()),
                *(SitOut(context, "re-issue intermediate CA", unset) for context in self.unset)]

    def record(self, outcome: Outcome) -> None:
        certs.secure_tree(certs.certs_dir(self.ws.workdir))
        if outcome.ok or not self.rotation.replaced:
            reissue.save_rotation(self.ws.workdir, None)


def _require_rotatable(workdir: Path, cert_dir: Path) -> None:
    """Intermediates are re-issued under the workspace's root, and not while a move to a new root is under way."""
    transition = carotation.load_transition(workdir)
    if transition is not None:
        raise ConfigError(f"a move to a new root is under way (stage {transition.stage} of {carotation.LAST_STAGE}): "
                          f"its intermediates are made by rotate-certs --root",
                          hint="run rotate-certs --root until it reports the transition complete, then rotate-certs")
    if not ((cert_dir / certs.ROOT_CERT).is_file() and (cert_dir / certs.ROOT_KEY).is_file()):
        raise ConfigError(f"the mesh's root CA is missing ({cert_dir / certs.ROOT_CERT})",
                          hint="rotate-certs re-issues intermediates under the workspace's root; restore certs/ "
                               "from a backup, or run prep-mesh for a new mesh")


def _cacerts_findings(workdir: Path, targets: list[Cluster],
                      observed: dict[str, Observed]) -> dict[str, CacertsFinding]:
    """Each readable target's cacerts, judged once: whether it is in place, and whether it chains to another
    root (another workspace's mesh, someone's own CA, a move another workspace is making), which re-issuing
    would replace, as apply would."""
    pki = workspace_certs(workdir, None, [c.name for c in targets])
    return {c.context: assess_cluster_cacerts(observed[c.context], c.name, pki) for c in targets
            if c.context in observed and observed[c.context].reachable}


def _rotation_to_run(ws: Workspace, rotation: reissue.Rotation | None, chosen: list[Cluster],
                     expiring_within: int | None, reporter: Reporter
                     ) -> tuple[reissue.Rotation, list[Cluster], dict[str, reissue.Intermediate]]:
    """A rotation left unfinished is completed first; otherwise a new one covers the chosen clusters.
    Returns it, the clusters it concerns and their intermediates as the workspace holds them."""
    cert_dir = certs.certs_dir(ws.workdir)
    if rotation is not None:
        reporter.info(f"finishing the rotation started at {rotation.started} "
                      f"({', '.join(rotation.replaced) or 'no cluster'}) before any new one")
        chosen = [c for c in ws.topology.clusters if c.context in rotation.replaced]
    local = {c.context: reissue.read_intermediate(cert_dir, c.name) for c in chosen}
    if rotation is None:
        now = carotation.utc_now()
        picked = reissue.select_for_rotation(local, expiring_within, now)
        rotation = reissue.Rotation(carotation.iso(now), {ctx: local[ctx].fingerprint for ctx in picked})
    return rotation, chosen, local


def _rotation_phase(ws: Workspace, targets: list[Cluster], cacerts: dict[str, CacertsFinding],
                    rotation: reissue.Rotation, local: dict[str, reissue.Intermediate], tools: Tools,
                    release, variables: dict[str, str], backup: Path) -> tuple[Phase, list[str]]:
    """Each target's steps: its old intermediate backed up and a new one made (unless this rotation made it
    already), cacerts updated where it differs (``cacerts``: the findings of the readable targets),
    istiod confirmed; and the clusters re-issued."""
    workdir, cert_dir = ws.workdir, certs.certs_dir(ws.workdir)
    deployment = control_plane_istiod(ws.base)
    namespaces = {ctx: d.namespace_manifest() for ctx, d in desired_state(ws.topology, ws.base).items()}
    phase = Phase("re-issue intermediate CAs and update cacerts")
    reissued = []
    for cluster in targets:
        due = reissue.needs_reissue(rotation, cluster.context, local[cluster.context])
        if due:
            reissued.append(cluster.context)
            if local[cluster.context].fingerprint is not None:
                phase.add(cluster.context, backup_step(workdir, cluster, backup))
            phase.add(cluster.context, intermediate_step(release, cert_dir, cluster, variables))
        found = cacerts.get(cluster.context)
        if due or found is None or found.state is not CacertsState.CURRENT:
            # istio-system exactly as apply makes it: server-side apply would drop a remote's annotation.
            phase.add(cluster.context, cacerts_step(tools, cluster, workdir, namespaces[cluster.context]))
        if not cluster.primary:  # a remote runs no istiod to confirm
            phase.add(cluster.context, confirm_step(tools, cluster, deployment))
    return phase, reissued


def _report_rotation(targets: list[Cluster], outcome: Outcome, backup: Path, resuming: bool,
                     reporter: Reporter) -> None:
    for cluster in targets:
        if cluster.context not in outcome.failures:
            reporter.finish_cluster(cluster.context, True, "intermediate CA re-issued")
    if backup.is_dir():
        reporter.info(f"the replaced intermediate CAs are kept in {backup}")
    if not outcome.ok and not resuming:
        reporter.info("the next rotate-certs finishes this rotation (it re-issues nothing twice)")


def _rotation_question(reissued: list[str], changed: list[str]) -> str:
    """The question names what the plan above it shows: new intermediates, and cacerts updated."""
    one = len(changed) == 1
    if reissued == changed:
        return (f"Re-issue the intermediate CA{'' if one else 's'} of {', '.join(changed)} and update "
                f"{'its' if one else 'their'} cacerts?")
    if reissued:
        return (f"Re-issue the intermediate CA{'s' * (len(reissued) > 1)} of {', '.join(reissued)} and update "
                f"cacerts in {', '.join(changed)}?")
    return f"Update cacerts in {', '.join(changed)}?"
