"""rotate-certs --root: the move to a new root in three stages, one per run, without downtime."""
from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Callable

from . import certs, invocation, carotation
from .assess import assess_install
from .cluster import ClusterClient, KubeClient
from .commands import confirm_plan, finish_run, open_log, sit_out
from .planview import print_plan
from .config import MULTIROOT_ENV, Cluster
from .errors import ConfigError, MeshError
from .executor import Executor, Phase, Step
from .kube import Observed, Tools, gateway_addresses
from .names import ISTIO_NAMESPACE, TRANSITION_ANNOTATION
from .overlay import control_plane_istiod
from .desired import desired_state
from .plan import (RECORD_TITLE, ApplyPlan, cacerts_finding, cacerts_in_place, cacerts_step, intermediate_step,
                   workspace_roots)
from .release import Release
from .workspace import find_tools, load_workspace, pinned_release
from .reporter import Reporter
from .runner import ShRunner
from .wrapping import fit
from .rotate import confirm_step


def rotate_root(workdir: Path, *, kubeconfig: str | None, istio_dir: str | None, min_wait: dt.timedelta, dry_run: bool,
                parallel: int, timeout: float, runner: ShRunner, reporter: Reporter, yes: bool = False) -> int:
    """One stage of the move to a new root per run; see carotation.decide for when a stage may start."""
    from .release import find_release

    wait = min_wait
    # The next run's command carries a --min-wait the user chose, or the pasted hint would refuse for a day.
    again = invocation.command("rotate-certs", "--root", *(
        ["--min-wait", carotation.format_duration(min_wait)] if min_wait != carotation.WORKLOAD_CERT_LIFETIME else []))
    if not dry_run:
        carotation.resume_finish(workdir)
    ws = load_workspace(workdir, kubeconfig, lenient=dry_run)
    topology = ws.topology
    cert_dir, new_dir = certs.certs_dir(workdir), carotation.next_dir(workdir)
    if not ((cert_dir / certs.ROOT_CERT).is_file() and (cert_dir / certs.ROOT_KEY).is_file()):
        raise ConfigError(f"the mesh's root CA is missing ({cert_dir / certs.ROOT_CERT})",
                          hint="restore certs/ from a backup: the clusters trust that root, and a new one is "
                               "introduced only next to it")
    root_info = _read_root(cert_dir / certs.ROOT_CERT)
    transition = carotation.load_transition(workdir)
    pinned = pinned_release(ws.topology, workdir, istio_dir)
    istio_dir = str(pinned.root) if pinned else istio_dir  # its certs Makefile too
    tools = find_tools(istio_dir, runner, dry_run, ws.notes, timeout, pinned=pinned)
    try:
        release = find_release(istio_dir, workdir)
    except ConfigError:
        if not dry_run:
            raise
        release = None
        ws.notes.append("no Istio release found: the plan names the Makefile as <istio>/tools/certs/Makefile.selfsigned.mk")
    if not dry_run:
        for tool in ("make", "openssl"):
            runner.require(tool)
    org = root_info.organization
    variables = {"INTERMEDIATE_ORG": org} if org else {}

    log = None if dry_run else open_log(workdir, "rotate-certs", runner)
    read_reporter = Reporter(quiet=True, err_console=reporter.err) if dry_run else reporter
    if not dry_run:  # the reads show on the live table, as apply's do
        reporter.start_progress([(c.context, c.network) for c in topology.clusters])
    try:
        client = KubeClient(tools, runner, read_reporter, parallel)
        observed = client.read_state(topology.clusters) if ws.contexts_resolved else {}
        now = carotation.utc_now()
        current_root = root_info.fingerprint
        views = _cluster_views(topology.clusters, observed, workdir, transition, current_root)
        move = carotation.decide(transition, views, now, wait)
        if move.kind in ("wait", "advance", "finish"):
            _require_istiod_took(topology.clusters, observed, tools, client, transition, log,
                                 control_plane_istiod(ws.base))
    finally:
        reporter.stop_progress()
    # A remote's install names its primary's gateway address: with the one it has now, its state is
    # the one apply recorded (and the move's istiod setting concerns primaries only).
    addresses = gateway_addresses(observed)
    final = desired_state(topology, ws.base, addresses)

    def completion(clusters: list[Cluster]) -> Phase:
        return _completion_phase(clusters, final, observed, tools, workdir)

    if move.kind == "complete":
        # An earlier run made the new root the workspace's but did not reach every istiod afterwards.
        targets = [c for c in topology.clusters if c.context in move.behind]
        reporter.info(f"the move to the root in certs/ is complete in the workspace; finishing it in "
                      f"{', '.join(move.behind)} (no new transition is started)")
        phase = completion(targets)
        if dry_run:
            print_plan(ApplyPlan([phase]), topology, observed if ws.contexts_resolved else None, ws.notes, reporter,
                       title="rotate-certs --root plan", command=("rotate-certs", "--root"))
            return 0
        confirm_plan(ApplyPlan([phase]), topology, f"Complete the move to the new root in {', '.join(move.behind)}?",
                     yes, reporter, title="rotate-certs --root", command=("rotate-certs", "--root"), log=log)
        executor = Executor(runner, reporter, parallel)
        reporter.start_progress([(c.context, c.network) for c in targets])
        outcome = executor.run_phases([phase])
        reporter.stop_progress()
        for cluster in targets:
            if RECORD_TITLE in outcome.done_steps.get(cluster.context, []):
                ws.state.record(cluster, final[cluster.context].fingerprint)
            if cluster.context not in outcome.failures:
                reporter.finish_cluster(cluster.context, True, "new root")
        ws.state.save(topology.mesh_id)
        return finish_run("rotate-certs --root", outcome, log, reporter)

    if move.kind == "start" and not dry_run:
        _require_in_step(topology.clusters, observed, workdir, log, again)
    if move.kind == "wait":
        _report_wait(transition, move, wait, now, again, reporter)
        if log:
            log.close()
        return 0

    # The stage this run brings the clusters to.
    if move.kind == "start":
        planned = carotation.Transition(1, current_root, "", carotation.iso(now))
    elif move.kind == "advance":
        planned = carotation.Transition(move.stage, transition.old_root, transition.new_root, transition.started)
    else:
        planned = transition
    targets = [c for c in topology.clusters if c.context in move.behind]
    desired = desired_state(topology, ws.base, addresses, transition=planned)
    deployment = control_plane_istiod(ws.base)
    issuer = carotation.issuing_dir(workdir, planned)
    phase = Phase(f"stage {planned.stage} of {carotation.LAST_STAGE}: {carotation.STAGES[planned.stage]}")
    # A cluster apply has not set up yet (added to topology.yaml meanwhile) is apply's to set up: it
    # gets the stage's certificates there, and its gateway and secrets, which this command does not make.
    not_set_up = [c for c in targets if (observed.get(c.context) or Observed()).applied is None]
    for cluster in not_set_up:
        ws.notes.append(f"{cluster.context} is not set up yet: apply sets it up with the certificates of stage "
                        f"{planned.stage}")
    for cluster in targets:
        if cluster not in not_set_up:
            _add_stage_steps(phase, cluster, observed.get(cluster.context) or Observed(), desired[cluster.context],
                             tools, workdir, issuer, release, variables, planned, deployment)
    root_vars = {"ROOTCA_CN": carotation.next_root_name(root_info.common_name, now), **({"ROOTCA_ORG": org} if org else {})}
    make_root = certs.root_ca_command(release or _NO_RELEASE, new_dir, root_vars)

    completes = (f"certs/ becomes the new root (the old one kept in "
                 f"{carotation.backup_dir(workdir, planned.backup_name)}) and istiod drops {MULTIROOT_ENV} "
                 f"(reinstalled with apply's overlay)")
    if dry_run:
        reporter.info(_move_text(move, planned))
        if move.kind == "start":
            reporter.info(f"first the new root: mkdir -p {new_dir} && {make_root.pasteable()}")
        plan = ApplyPlan([phase] if move.kind != "finish" else [])
        print_plan(plan, topology, observed if ws.contexts_resolved else None, ws.notes, reporter,
                   title="rotate-certs --root plan", command=("rotate-certs", "--root"),
                   nothing="no cluster changes in this stage" if move.kind != "finish" else f"then {completes}")
        if planned.stage == carotation.LAST_STAGE and move.kind != "finish":
            reporter.info(f"once stage {planned.stage} is in place in every cluster, the same run completes the move: "
                          f"{completes}")
        return 0

    reporter.info(fit(reporter.console, _move_text(move, planned)))
    if phase or move.kind == "finish":
        _ask_for_stage(move, planned, phase, topology, yes, reporter, log, completes)
    if move.kind == "start":
        new_dir.mkdir(mode=0o700, exist_ok=True)
        with reporter.activity(f"making the new root CA in {new_dir} (a 4096-bit key takes a few seconds) ..."):
            runner.run(make_root)  # the Makefile keeps files that exist: a repeated start reuses the same root
        certs.secure_tree(new_dir)
        planned.new_root = certs.read_cert((new_dir / certs.ROOT_CERT).read_bytes()).fingerprint
        reporter.info(f"made a new root CA in {new_dir}")
    if move.kind in ("start", "advance"):
        carotation.save_transition(workdir, planned)  # the workspace leads; the clusters follow

    executor = Executor(runner, reporter, parallel)
    if targets or move.unreachable:
        reporter.start_progress([(c.context, c.network) for c in topology.clusters
                                 if c.context in move.behind or c.context in move.unreachable])
    for context in move.unreachable:
        sit_out(executor, tools, topology.by_context(context), observed[context], f"then run `{again}`")
    for cluster in not_set_up:
        executor.fail_before_start(cluster.context, f"stage {planned.stage}", MeshError(
            "not set up by apply yet: the move to a new root changes clusters that are part of the mesh",
            hint=f"run `{invocation.command('apply')}` (it gives the cluster the certificates of stage "
                 f"{planned.stage}), then `{again}`"))
    outcome = executor.run_phases([phase])
    certs.secure_tree(new_dir)
    for cluster in targets:
        if RECORD_TITLE in outcome.done_steps.get(cluster.context, []):
            ws.state.record(cluster, desired[cluster.context].fingerprint)

    complete = outcome.ok and planned.stage == carotation.LAST_STAGE
    if complete:
        # The workspace first: a run cut short after this finds the clusters' records of the move and
        # finishes it there (the "complete" move above) instead of starting a new one.
        backup = carotation.finish_transition(workdir, planned)
        outcome = executor.run_phases([completion(topology.clusters)])
        for cluster in topology.clusters:
            if RECORD_TITLE in outcome.done_steps.get(cluster.context, []):
                ws.state.record(cluster, final[cluster.context].fingerprint)
    reporter.stop_progress()
    ws.state.save(topology.mesh_id)
    for cluster in topology.clusters:
        if cluster.context not in outcome.failures and (cluster in targets or complete):
            reporter.finish_cluster(cluster.context, True, f"stage {planned.stage}" if not complete else "new root")
    _report_stage(planned, outcome.ok, backup if complete else None, wait, again, reporter)
    return finish_run("rotate-certs --root", outcome, log, reporter)


def _cluster_views(clusters: list[Cluster], observed: dict[str, Observed], workdir: Path,
                   transition: carotation.Transition | None, current_root: str) -> list[carotation.ClusterView]:
    """What carotation.decide needs of each cluster: reachable, in place at the stage, since when."""
    views = []
    for cluster in clusters:
        seen = observed.get(cluster.context) or Observed(reachable=False, error="not read")
        in_place = transition is not None and cacerts_in_place(seen, cluster, workdir, transition)
        views.append(carotation.ClusterView(
            cluster.context, seen.reachable, in_place,
            carotation.stage_since(transition, seen.annotations) if transition else None,
            completing=transition is None and carotation.completed_here(current_root, seen.annotations)))
    return views


def _completion_phase(clusters: list[Cluster], final: dict, observed: dict[str, Observed], tools: Tools,
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


def _require_in_step(clusters: list[Cluster], observed: dict[str, Observed], workdir: Path, log, again: str) -> None:
    """A move to a new root starts only from a mesh that is in step: every cluster reachable and on the
    workspace's root."""
    not_ready = [c.context for c in clusters
                 if not (observed.get(c.context) or Observed()).reachable
                 or not cacerts_in_place(observed[c.context], c, workdir, None)]
    roots = workspace_roots(workdir, None)
    other_root = [c.context for c in clusters if c.context in not_ready and c.context in observed
                  and cacerts_finding(observed[c.context], c, workdir, None, roots).other_root]
    if other_root:
        # The stages start from the root the clusters trust, whose key this workspace does not hold.
        log.close()
        raise ConfigError(f"the cacerts of {', '.join(other_root)} chains to another root than this "
                          f"workspace's: a move to a new root starts from the root the clusters run on",
                          hint=f"run `rotate-certs --root` from the workspace that holds that root, or "
                               f"`{invocation.command('apply', '--replace-foreign-ca')}` to replace it at once "
                               f"(mTLS between workloads breaks until they restart)")
    if not_ready:
        log.close()
        raise MeshError(f"not every cluster runs on the workspace's root yet ({', '.join(not_ready)}): "
                        f"a new root is introduced only to a mesh that is in step",
                        hint=f"run `{invocation.command('apply')}` (and check `{invocation.command('status')}`) "
                             f"first, then `{again}`")


def _report_wait(transition: carotation.Transition, move: carotation.Move, wait: dt.timedelta, now: dt.datetime,
                 again: str, reporter: Reporter) -> None:
    since = move.ready_at - wait
    reporter.info(f"stage {transition.stage} of {carotation.LAST_STAGE} ({carotation.STAGES[transition.stage]}) "
                  f"is in place in every cluster since {carotation.iso(since)}")
    reporter.notice(f"stage {transition.stage + 1} ({carotation.STAGES[transition.stage + 1]}) can start at "
                    f"{carotation.iso(move.ready_at)} (in {carotation.describe_wait(move.ready_at - now)}), when "
                    f"every workload has renewed its certificate: run `{again}` then "
                    f"(with --min-wait 0 if every workload has been restarted since)")


def _add_stage_steps(phase: Phase, cluster: Cluster, seen: Observed, d, tools: Tools, workdir: Path, issuer: Path,
                     release, variables: dict[str, str], planned: carotation.Transition, deployment: str) -> None:
    """One cluster's steps to the planned stage: istiod ready for two roots, the stage's intermediate and
    cacerts, and (on a primary) istiod confirmed to have taken them."""
    from .plan import install_steps, record_step

    if assess_install(seen, d.fingerprint).drift:
        # istiod must accept a second root before it sees one (the reserved value ISTIO_MULTIROOT_MESH).
        phase.add(cluster.context, install_steps(tools, workdir, d, seen)[0][0])
        phase.add(cluster.context, record_step(tools, cluster, d.fingerprint, d))
    if not certs.has_cacerts(issuer, cluster.name):
        phase.add(cluster.context, intermediate_step(release, issuer, cluster, variables))
    step = cacerts_step(tools, cluster, workdir, d.namespace_manifest(), transition=planned)
    step.change = f"~ secret cacerts: {_STAGE_CHANGE[planned.stage]} ({issuer.name}/{cluster.name}/)"
    phase.add(cluster.context, step)
    if not cluster.primary:  # a remote runs no istiod to confirm
        phase.add(cluster.context, confirm_step(tools, cluster, deployment, roots=_stage_roots(
            workdir, cluster, planned)))


def _report_stage(planned: carotation.Transition, ok: bool, backup: Path | None, wait: dt.timedelta, again: str,
                  reporter: Reporter) -> None:
    """Where the move stands after this run: complete (``backup`` holds the old root), or what comes next."""
    if backup is not None:
        reporter.info(f"the mesh runs on the new root: certs/ holds it; the old root, its key and intermediates "
                      f"are kept in {backup}")
    elif ok:
        when = f" in {carotation.describe_wait(wait)} or later" if wait else ""
        reporter.info(f"stage {planned.stage} of {carotation.LAST_STAGE} is in place in every cluster; run "
                      f"`{again}`{when} for stage {planned.stage + 1} ({carotation.STAGES[planned.stage + 1]})")
    else:
        reporter.info(f"stage {planned.stage} is not in place everywhere yet: run `{again}` "
                      f"(it finishes this stage and goes no further)")


_NO_RELEASE = Release(Path("<istio>"))
# What each stage changes in a cluster's cacerts, as the plan shows it.
_STAGE_CHANGE = {
    1: "root-cert.pem trusts the old and the new root, same intermediate",
    2: "an intermediate of the new root, trusting both roots",
    3: "root-cert.pem trusts only the new root",
}


def _ask_for_stage(move: carotation.Move, planned: carotation.Transition, phase: Phase, topology, yes: bool,
                   reporter: Reporter, log, completes: str) -> None:
    """A stage changes every cluster's cacerts (stage 1 reinstalls istiod first): the plan, then the question."""
    if move.kind == "start":
        reporter.info("first a new root CA is made in certs-next/")
    then = (f"once stage {planned.stage} is in place in every cluster, the same run completes the move: {completes}"
            if planned.stage == carotation.LAST_STAGE and move.kind != "finish" else "")
    confirm_plan(ApplyPlan([phase] if move.kind != "finish" else []), topology, _stage_question(move, planned, phase),
                 yes, reporter, title="rotate-certs --root", command=("rotate-certs", "--root"), log=log,
                 nothing=f"then {completes}", then=then)


def _stage_question(move: carotation.Move, planned: carotation.Transition, phase: Phase) -> str:
    if move.kind == "finish":
        return "Complete the move to the new root in every cluster?"
    names = ", ".join(phase.steps)
    first = "Make a new root CA and bring" if move.kind == "start" else "Bring"
    then = " and complete the move to the new root" if planned.stage == carotation.LAST_STAGE else ""
    return f"{first} {names} to stage {planned.stage} of {carotation.LAST_STAGE}{then}?"


def _require_istiod_took(clusters, observed: dict[str, Observed], tools: Tools, client: ClusterClient,
                         transition: carotation.Transition, log, deployment: str) -> None:
    """The stage is in place in every cacerts: before it counts (or the next starts), each istiod must hold
    its roots, as it publishes them in istio-ca-root-cert (one that refused keeps its old ones)."""
    primaries = [c for c in clusters if not c.primary and (observed.get(c.context) or Observed()).cacerts]
    published = client.published_roots(primaries)
    refused = [c for c in primaries if published.get(c.context) is not None
               and published[c.context] != observed[c.context].cacerts.get("root-cert.pem")]
    if not refused:
        return
    if log:
        log.close()
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


def _read_root(path: Path) -> certs.CertInfo:
    try:
        return certs.read_cert(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read the mesh's root CA {path}: {exc}",
                          hint="restore certs/ from a backup of the workspace") from None


def _move_text(move: carotation.Move, planned: carotation.Transition) -> str:
    stage = f"stage {planned.stage} of {carotation.LAST_STAGE} ({carotation.STAGES[planned.stage]})"
    return {
        "start": f"starting the move to a new root: {stage}",
        "advance": f"moving on to {stage}",
        "converge": f"bringing {', '.join(move.behind) or 'no reachable cluster'} to {stage}",
        "finish": f"every cluster is at {stage}: completing the transition",
    }[move.kind]

