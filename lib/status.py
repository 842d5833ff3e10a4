"""status / describe: the mesh's health, read from every cluster and changing nothing.

Reading is separated from judging: :func:`collect` reads the clusters (in parallel, lib/statusread.py),
:func:`lib.statusjudge.evaluate` turns what was read plus the workspace (lib/statusinputs.py) into a
:class:`lib.statusreport.MeshStatus` without running anything, and the renderers print it as tables
(lib/statusview.py) or as the JSON document described in docs/status-json.md.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import replace
from pathlib import Path

from . import polling
from .cluster import ClusterClient, KubeClient
from .config import AMBIENT, select_clusters, ztunnel_namespace
from .errors import MeshError
from .installsteps import istio_objects_read_in
from .kube import READ_TIMEOUT, Tools, gateway_addresses
from .names import ISTIOD, is_istiod_name
from .reporter import Reporter
from .statusinputs import Expected, status_workspace
from .statusjudge import evaluate
from .statusread import Istiod, parse_istiod
from .statusreport import Hints, MeshStatus
from .statusrevisions import judge_revisions
from .statusview import render as render_view
from .workspace import find_tools, load_workspace, pinned_release


WAIT_POLL_SECONDS = 2.0


# --- reading ---------------------------------------------------------------------------------------

def collect(ws: Expected, tools: Tools, runner, reporter: Reporter, parallel: int) -> MeshStatus:
    # The reads report no progress: status prints one report at the end.
    return read_status(ws, KubeClient(tools, runner, reporter, parallel).quiet())


def read_status(ws: Expected, client: ClusterClient) -> MeshStatus:
    """Every read status makes, through ``client``, judged."""
    observed = client.read_state(list(ws.topology.clusters), title="read status", ambient=ws.data_plane == AMBIENT,
                                 ztunnel_namespace=ztunnel_namespace(ws.base),
                                 istio_objects_in=istio_objects_read_in(ws.workdir, ws.mesh), published_roots=True)
    serving = {ctx: serving_istiod(seen.deployments, ws.istiod_deployment, ws.revision)
               for ctx, seen in observed.items() if seen.reachable}
    istiod = {ctx: parse_istiod(seen.deployments.get(serving[ctx][0])) if seen.reachable
              else Istiod(read=False, error=seen.error) for ctx, seen in observed.items()}
    asked = [c for c in ws.topology.clusters if istiod.get(c.context) and istiod[c.context].installed]
    views = {}
    for revision in dict.fromkeys(serving[c.context][1] for c in asked):  # after a canary upgrade: per revision
        views.update(client.istiod_views([c for c in asked if serving[c.context][1] == revision], revision))
    if ws.fingerprints_for:
        addresses = gateway_addresses(observed)
        # A remote's install names its primary's gateway address: with that primary unread it cannot be judged.
        unread = {c.context for c in ws.topology.clusters
                  if c.primary and not (observed.get(c.primary) and observed[c.primary].reachable)}
        ws = replace(ws, fingerprints={ctx: fp for ctx, fp in ws.fingerprints_for(addresses).items()
                                       if ctx not in unread})
    remotes = [c for c in ws.topology.clusters if c.primary and observed.get(c.context)
               and observed[c.context].reachable]
    # A remote's injector is its revision's: base.yaml's, else, once a canary upgrade removed that revision,
    # the newest revisioned istiod Service left (its remote install at that revision made both).
    remote_revision = {c.context: serving_istiod(observed[c.context].istiod_selectors, ws.istiod_deployment,
                                                 ws.revision)[1] for c in remotes}
    injection = {}
    for revision in dict.fromkeys(remote_revision.values()):
        injection.update(client.injection_paths([c for c in remotes if remote_revision[c.context] == revision], revision))
    holding = [c for c in asked if observed[c.context].cacerts]
    published = {c.context: observed[c.context].published_root for c in holding if observed[c.context].roots_read}
    status = evaluate(ws, observed, istiod, views=views, injection=injection, published=published,
                      roots_unread=frozenset(c.context for c in holding if c.context not in published),
                      serving={**{ctx: revision for ctx, (_, revision) in serving.items()}, **remote_revision})
    judge_revisions(status.clusters, client.revisions(list(ws.topology.clusters), observed),
                    Hints(ws.workdir, ws.topology))
    status.observed = observed
    return status


def serving_istiod(deployments: dict[str, dict], expected: str, revision: str | None) -> tuple[str, str | None]:
    """(istiod Deployment, its revision) that serves a primary: base.yaml's, else, once a canary upgrade
    removed that revision, the newest revisioned istiod left (Istio names it istiod-<revision>). Given a
    remote's istiod Services (by name), the same for the revision its remote install runs."""
    if expected in deployments:
        return expected, revision
    others = sorted((name for name in deployments if is_istiod_name(name) and name != ISTIOD),
                    key=lambda name: tuple(int(p) if p.isdigit() else 0 for p in name[len(ISTIOD) + 1:].split("-")))
    if not others:
        return expected, revision
    return others[-1], others[-1][len(ISTIOD) + 1:]


def run_status(workdir: Path, *, kubeconfig: str | None, istio_dir: str | None, output: str, wait: bool,
               wait_timeout: float, parallel: int, runner, reporter: Reporter, contexts: list[str] = (),
               timeout: float = READ_TIMEOUT) -> int:
    loaded = load_workspace(workdir, kubeconfig, lenient=False)
    # Every cluster is still read: whether a shown cluster holds its peers' current secrets depends on them.
    shown = {c.context for c in select_clusters(loaded.topology, list(contexts))}
    tools = find_tools(istio_dir, runner, False, loaded.notes, timeout,
                       pinned=pinned_release(loaded.topology, workdir, istio_dir))
    ws = status_workspace(workdir, loaded)

    deadline = time.monotonic() + wait_timeout
    polls = 0
    while True:
        status = collect(ws, tools, runner, reporter, parallel)
        status = replace(status, clusters=[c for c in status.clusters if c.cluster.context in shown])
        polls += 1
        remaining = deadline - time.monotonic()
        if not wait or status.healthy or remaining <= 0:
            break
        if output != "json":
            errors = status.errors()
            reporter.info(f"waiting for {len(errors)} problem(s) to clear: "
                          + ", ".join(sorted({f"{ctx or 'workspace'} {p.code}" for ctx, p in errors})))
        time.sleep(min(polling.interval(WAIT_POLL_SECONDS), max(remaining, 0.0)))

    if output == "json":
        reporter.console.out(json.dumps(status.to_json(), indent=2), highlight=False)
    else:
        render(status, reporter)
    if wait and not status.healthy:
        still = "; ".join(f"{ctx + ': ' if ctx else ''}{p.code}" for ctx, p in status.errors())
        reporter.error(MeshError(f"the mesh is still unhealthy after {wait_timeout:g}s ({polls} check(s)): {still}",
                                 hint="see the problems and hints above; raise --wait-timeout if it is only slow"))
    return 0 if status.healthy else 1


# --- printing --------------------------------------------------------------------------------------

def render(status: MeshStatus, reporter: Reporter) -> None:

    render_view(status, _wide_console(reporter.console), tables=not reporter.quiet)


def _wide_console(console):
    """Pipes and CI logs have no width to respect: there, tables are as wide as their cells. A terminal's
    width is kept (columns are dropped to fit)."""
    from rich.console import Console

    if console.is_terminal or os.environ.get("COLUMNS"):
        return console
    return Console(file=console.file, width=max(console.width, 200), highlight=False, soft_wrap=True,
                   color_system=console.color_system, force_terminal=False, no_color=console.no_color)
