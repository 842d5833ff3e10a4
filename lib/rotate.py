"""rotate-certs: re-issue the clusters' intermediate CAs under the workspace's root and put them in place."""
from __future__ import annotations

import json
import time
from pathlib import Path

from . import certs, lifecycle
from .commands import _certs_prerequisites, _finish, _open_log, _sit_out, print_plan
from .workspace import find_tools, inspect_clusters, load_workspace
from .config import Cluster, select_clusters
from .fsutil import read_if_present
from .errors import ConfigError, MeshError
from .executor import Executor, Interrupted, Phase, RunContext, Step
from .kube import Observed, Tools
from .overlay import ISTIO_NAMESPACE
from .desired import desired_state
from .plan import ApplyPlan, _cacerts_step, _intermediate_step
from .reporter import Reporter
from .runner import ShRunner

CONTROL_PLANE_WAIT = 120.0  # seconds istiod may take to be ready again
POLL_SECONDS = 1.0


def backup_step(workdir: Path, cluster: Cluster, backup: Path) -> Step:
    source = certs.certs_dir(workdir) / cluster.name
    target = backup / cluster.name

    def action(ctx: RunContext) -> None:
        if source.is_dir():
            lifecycle.move_to_backup(source, target)

    return Step("back up the intermediate CA", action=action,
                note=f"moves {source} to {target} (0700, keys 0600), so the Makefile makes a new one")


def confirm_step(tools: Tools, cluster: Cluster, deployment: str, timeout: float = CONTROL_PLANE_WAIT) -> Step:
    """istiod reloads a changed cacerts on its own; this checks that it still runs afterwards."""
    command = tools.kubectl_cmd(cluster, "get", "deployment", deployment, "-n", ISTIO_NAMESPACE, "-o", "json",
                                timeout=min(tools.timeout, 60.0))

    def action(ctx: RunContext) -> None:
        deadline = time.monotonic() + timeout
        while True:
            status = json.loads(ctx.run(command).stdout or "{}").get("status") or {}
            if int(status.get("readyReplicas") or 0) > 0:
                return
            if time.monotonic() >= deadline:
                raise MeshError(f"{deployment} has no ready replica {timeout:g}s after cacerts changed",
                                hint=f"look at its pods: `{tools.kubectl_cmd(cluster, 'get', 'pods', '-n', ISTIO_NAMESPACE, '-l', 'app=istiod').pasteable()}`")
            if ctx.cancelled.wait(POLL_SECONDS):
                raise Interrupted()

    return Step(f"confirm {deployment} runs", commands=[command], action=action)


def rotate_intermediates(workdir: Path, *, kubeconfig: str | None, istio_dir: str | None, contexts: list[str],
                         expiring_within: int | None, dry_run: bool, parallel: int, timeout: float,
                         runner: ShRunner, reporter: Reporter) -> int:
    from .status import istiod_name

    ws = load_workspace(workdir, kubeconfig, lenient=dry_run)
    topology = ws.topology
    chosen = select_clusters(topology, contexts)
    cert_dir = certs.certs_dir(workdir)
    if not ((cert_dir / certs.ROOT_CERT).is_file() and (cert_dir / certs.ROOT_KEY).is_file()):
        raise ConfigError(f"the mesh's root CA is missing ({cert_dir / certs.ROOT_CERT})",
                          hint="rotate-certs re-issues intermediates under the workspace's root; restore certs/ "
                               "from a backup, or run prep-mesh for a new mesh")
    tools = find_tools(istio_dir, runner, dry_run, ws.notes, timeout)
    now = lifecycle.utc_now()

    # A rotation left unfinished is completed first; otherwise a new one covers the chosen clusters.
    rotation = lifecycle.load_rotation(workdir)
    local = {c.context: lifecycle.read_intermediate(cert_dir, c.name) for c in chosen}
    resuming = rotation is not None
    if rotation is None:
        picked = lifecycle.select_for_rotation(local, expiring_within, now)
        rotation = lifecycle.Rotation(lifecycle.iso(now), {ctx: local[ctx].fingerprint for ctx in picked})
    else:
        reporter.info(f"finishing the rotation started at {rotation.started} "
                      f"({', '.join(rotation.replaced) or 'no cluster'}) before any new one")
        chosen = [c for c in topology.clusters if c.context in rotation.replaced]
        local = {c.context: lifecycle.read_intermediate(cert_dir, c.name) for c in chosen}
    targets = [c for c in chosen if c.context in rotation.replaced]
    if not targets:
        reporter.info(f"nothing to do: no intermediate CA expires within {expiring_within} day(s)"
                      if expiring_within is not None else "nothing to do: no cluster chosen")
        return 0

    # Making intermediates needs the Makefile even when some exist: every target gets a new one.
    release, variables = _certs_prerequisites(ws, istio_dir, runner, dry_run, force=True)
    log = None if dry_run else _open_log(workdir, "rotate-certs", runner)
    read_reporter = Reporter(quiet=True, err_console=reporter.err) if dry_run else reporter
    if not dry_run:
        reporter.start_progress([(c.context, c.network) for c in targets])
    observed = inspect_clusters(targets, tools, runner, read_reporter, parallel) if ws.contexts_resolved else {}
    unreachable = {ctx: seen for ctx, seen in observed.items() if not seen.reachable}

    backup = lifecycle.backup_dir(workdir, rotation.backup_name)
    deployment = istiod_name(ws.base)
    namespaces = {ctx: d.namespace_manifest() for ctx, d in desired_state(ws.topology, ws.base).items()}
    phase = Phase("re-issue intermediate CAs and update cacerts")
    for cluster in targets:
        if cluster.context in unreachable and not dry_run:
            continue
        seen = observed.get(cluster.context) or Observed()
        reissue = lifecycle.needs_reissue(rotation, cluster.context, local[cluster.context])
        if reissue:
            if local[cluster.context].fingerprint is not None:
                phase.add(cluster.context, backup_step(workdir, cluster, backup))
            phase.add(cluster.context, _intermediate_step(release, cert_dir, cluster, variables))
        local_ca = read_if_present(cert_dir / cluster.name / "ca-cert.pem")
        if reissue or local_ca is None or (seen.cacerts or {}).get("ca-cert.pem") != local_ca:
            # istio-system exactly as apply makes it: server-side apply would drop a remote's annotation.
            phase.add(cluster.context, _cacerts_step(tools, cluster, cert_dir, namespaces[cluster.context]))
        if not cluster.primary:  # a remote runs no istiod to confirm
            phase.add(cluster.context, confirm_step(tools, cluster, deployment))

    if dry_run:
        print_plan(ApplyPlan([phase]), topology, observed if ws.contexts_resolved else None, ws.notes, reporter,
                   title="rotate-certs plan", command="rotate-certs")
        return 0

    lifecycle.save_rotation(workdir, rotation)  # before anything changes: an interrupted run is resumed
    executor = Executor(runner, reporter, parallel)
    for context, seen in unreachable.items():
        _sit_out(executor, tools, topology.by_context(context), seen, "then run rotate-certs again")
    outcome = executor.run_phases([phase])
    reporter.stop_progress()
    certs.secure_tree(cert_dir)
    if outcome.ok:
        lifecycle.save_rotation(workdir, None)
    for cluster in targets:
        if cluster.context not in outcome.failures:
            reporter.finish_cluster(cluster.context, True, "intermediate CA re-issued")
    if backup.is_dir():
        reporter.info(f"the replaced intermediate CAs are kept in {backup}")
    if not outcome.ok and not resuming:
        reporter.info("the next rotate-certs finishes this rotation (it re-issues nothing twice)")
    return _finish("rotate-certs", outcome, log, reporter)
