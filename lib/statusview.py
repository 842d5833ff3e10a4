"""How status reads in a terminal: one row per cluster, the remote-secret matrix, and problems
grouped by cause (one line naming the clusters it affects, one hint). Codes are for -o json."""
from __future__ import annotations

from dataclasses import dataclass

from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from .checks import ERROR, EXPIRY_WARN_DAYS, LOCAL, MISSING, OUTDATED, PRESENT, STALE, SYNCED, UNNEEDED, WARNING
from .redact import redact
from .statusreport import Cacerts, ClusterStatus, MeshStatus, Problem
from .wrapping import fit

COLUMNS = ("cluster", "up", "istio", "network", "cacerts", "gateway", "secrets", "synced", "drift")
AMBIENT_COLUMNS = ("ztunnel", "gateway api")  # shown after the gateway column in an ambient mesh
DROP_ORDER = ("synced", "gateway api", "istio", "drift", "up", "ztunnel")  # what goes first when narrow


# One line for a problem that many (cluster, peer) pairs share; {peers}: the peers it is about.
MERGED = {
    "remote_secret_missing": "remote secrets missing (clusters cannot discover their peers' endpoints)",
    "remote_secret_local": "the remote secrets of {peers} name loopback API servers other clusters cannot reach",
    "remote_secret_outdated": "remote secrets carry credentials their clusters no longer issue",
    "remote_cluster_timeout": "istiod cannot reach the API servers of {peers} at the addresses in their secrets",
    "remote_cluster_syncing": "istiod is still reading {peers}",
    "remote_cluster_closed": "istiod stopped watching {peers}",
}


@dataclass
class Cause:
    severity: str
    message: str
    hint: str
    where: str  # the clusters (or holder: peers) it affects


def render(status: MeshStatus, console: Console, tables: bool = True) -> None:
    """The tables (unless ``tables`` is off: -q), the root CA lines, the problems and the verdict."""
    if tables:
        console.print(_fitting(console, lambda dropped: _table(status, dropped)))
    matrix = _matrix(status) if tables else None
    if matrix is not None:
        console.print("remote secrets (row holds column's; istiod's word if not synced)", style="bold")
        console.print(matrix)
    for line in root_lines(status) + revision_lines(status):
        console.print(escape(redact(line)))
    causes = group_problems(status)
    for cause in causes:
        mark, style = ("✗", "red") if cause.severity == ERROR else ("!", "yellow")
        line = fit(console, f"{cause.where}: {cause.message}", f"{mark} ")  # the mark, coloured below
        console.print(f"[{style}]{mark}[/]" + escape(redact(line[len(mark):])))
        console.print(escape(redact(fit(console, cause.hint, "  hint: ", indent="    "))),
                      style="dim" if cause.severity == WARNING else None)
    errors = sum(1 for c in causes if c.severity == ERROR)
    warnings = len(causes) - errors
    if status.healthy:
        console.print("[green]healthy[/]" + (f" ({warnings} warning{'s' * (warnings != 1)} above)" if warnings else ""))
    else:
        affected = sum(1 for c in status.clusters if not c.healthy)
        console.print(f"[red]unhealthy[/]: {errors} problem{'s' * (errors != 1)} in {affected} of "
                      f"{len(status.clusters)} clusters" + (f", {warnings} warning{'s' * (warnings != 1)}"
                                                           if warnings else ""))


def root_lines(status: MeshStatus) -> list[str]:
    """The root CA's days left and, during a move to a new root, where it stands and what comes next."""
    lines = []
    if status.root:
        line = f"root CA: {status.root['days_left']}d left (expires {status.root['expires']})"
        if status.root.get("new_root"):
            line += f"; new root: {status.root['new_root']['days_left']}d left"
        lines.append(line)
    t = status.transition
    if t:
        where = (f"in place in every cluster since {t['since']}" if t["in_step"]
                 else "not yet in place in every cluster")
        lines.append(f"root transition: stage {t['stage']} of {t['stages']} ({t['description']}), {where}")
        lines.append(f"  next: {t['next']}")
    return lines


def revision_lines(status: MeshStatus) -> list[str]:
    """During an upgrade (more than one control-plane revision, or a default tag): each such cluster's
    revisions with their versions and proxies, and where the default tag points."""
    lines = []
    for c in status.clusters:
        seen = c.revisions or {}
        planes = seen.get("control_planes") or {}
        if len(planes) < 2 and not seen.get("default_tag"):
            continue
        counts: dict[str, list[str]] = {}
        for p in seen.get("proxies") or []:
            counts.setdefault(p["revision"], []).append(f"{p['count']} at {p['version']}")
        parts = [f"{rev} ({version}, proxies: {', '.join(counts.get(rev, [])) or 'none'})"
                 for rev, version in sorted(planes.items())]
        tag = f"; default tag -> {seen['default_tag']}" if seen.get("default_tag") else ""
        lines.append(f"{c.cluster.context}: revisions {', '.join(parts)}{tag}")
    return lines


def group_problems(status: MeshStatus) -> list[Cause]:
    """One cause, one entry: problems with the same message and hint name every cluster they affect,
    and a per-peer problem that several peers share is one entry naming the pairs. Errors first."""
    found = sorted(status.all_problems(), key=lambda item: item[1].severity != ERROR)
    by_code: dict[str, list[tuple[str | None, Problem]]] = {}
    for context, problem in found:
        by_code.setdefault(problem.code, []).append((context, problem))
    causes: list[Cause] = []
    for code, items in by_code.items():
        distinct = {(p.message, p.hint) for _, p in items}
        if len(distinct) > 1 and code in MERGED and all(p.peer for _, p in items):
            causes.append(_merged(code, items, status))
            continue
        same: dict[tuple[str, str, str], list[str | None]] = {}
        for context, problem in items:
            contexts = same.setdefault((problem.severity, problem.message, problem.hint), [])
            if context not in contexts:
                contexts.append(context)
        causes.extend(Cause(sev, message, hint, ", ".join(c or "workspace" for c in contexts))
                      for (sev, message, hint), contexts in same.items())
    return sorted(causes, key=lambda c: c.severity != ERROR)


def _merged(code: str, items: list[tuple[str | None, Problem]], status: MeshStatus) -> Cause:
    peers_of: dict[str, list[str]] = {}
    for context, problem in items:
        peers_of.setdefault(context or "workspace", []).append(problem.peer or "")
    peers = sorted({p for ps in peers_of.values() for p in ps})
    members = len(status.clusters)
    if len(peers_of) == members and all(len(ps) == members - 1 for ps in peers_of.values()):
        where = f"every cluster, for each of its {members - 1} peers"
    elif len({tuple(ps) for ps in peers_of.values()}) == 1:
        where = f"{', '.join(peers_of)} (about {', '.join(next(iter(peers_of.values())))})"
    else:
        where = "; ".join(f"{holder} ({', '.join(ps)})" for holder, ps in peers_of.items())
    first_holder, first = items[0][0], items[0][1]
    hint = first.hint if len({p.hint for _, p in items}) == 1 else \
        f"for {first_holder} and {first.peer}, and likewise for the others: {first.hint}"
    return Cause(first.severity, MERGED[code].format(peers=", ".join(peers)), hint, where)


def _fitting(console: Console, build):
    """The table with as many columns as fit; values are never folded inside a cell."""
    dropped: list[str] = []
    table = build(dropped)
    for column in DROP_ORDER:
        if _natural_width(table) <= console.width:
            break
        dropped.append(column)
        table = build(dropped)
    return table


def _natural_width(table: Table) -> int:
    """Width of the table with no cell shortened: widest cell per column, plus padding."""
    widths = [max([Text.from_markup(str(column.header)).cell_len]
                  + [Text.from_markup(str(cell)).cell_len for cell in column.cells]) for column in table.columns]
    return sum(widths) + 2 * len(widths) + len(widths) + 1  # padding, then the box's separators and edges


def _table(status: MeshStatus, dropped: list[str]) -> Table:
    table = Table(title=f"mesh {escape(status.mesh_id)}", title_justify="left", header_style="bold",
                  box=box.SIMPLE_HEAD, pad_edge=False)
    ambient = any(c.ambient for c in status.clusters)
    columns = _columns(ambient)
    shown = [c for c in columns if c not in dropped]
    for column in shown:
        table.add_column(column, no_wrap=True)
    for c in status.clusters:
        label = c.cluster.context if c.cluster.name == c.cluster.context else f"{c.cluster.context} ({c.cluster.name})"
        if c.primary:
            label += f", remote of {c.primary}"
        row = _row(c) + (_ambient_row(c) if ambient else [])
        cells = dict(zip(COLUMNS[1:] + (AMBIENT_COLUMNS if ambient else ()), (_cell(text, ok) for text, ok in row)))
        table.add_row(escape(label), *(cells[column] for column in shown[1:]))
    return table


def _columns(ambient: bool) -> tuple[str, ...]:
    if not ambient:
        return COLUMNS
    at = COLUMNS.index("gateway") + 1
    return COLUMNS[:at] + AMBIENT_COLUMNS + COLUMNS[at:]


def _ambient_row(c: ClusterStatus) -> list[tuple[str, bool | None]]:
    """ztunnel's ready pods and the Gateway API CRDs' version (what ambient multicluster needs)."""
    if not c.reachable:
        return [("?", None)] * len(AMBIENT_COLUMNS)
    if c.ztunnel is None:
        ztunnel = ("missing", False) if c.istio_installed else ("-", None)
    else:
        ztunnel = (f"{c.ztunnel[0]}/{c.ztunnel[1]}", c.ztunnel[0] >= c.ztunnel[1])
    codes = {p.code for p in c.problems}
    crds = (c.gateway_api_crds or "?", None if c.gateway_api_crds is None else
            not codes & {"gateway_api_crds_missing", "gateway_api_crds_old"})
    return [ztunnel, crds]


def _cell(text: str, ok: bool | None) -> str:
    text = escape(redact(text))
    if ok is None:
        return f"[dim]{text}[/]"
    return f"[green]{text}[/]" if ok else f"[red]{text}[/]"


def _row(c: ClusterStatus) -> list[tuple[str, bool | None]]:
    if not c.reachable:
        return [("no", False)] + [("?", None)] * 7
    codes = {p.code for p in c.problems}
    if c.istio_installed is None:
        istio = ("?", None)
    elif c.istio_installed:
        istio = (c.istio_version or "installed", not codes & {"cluster_name_wrong", "istiod_not_ready"})
    else:
        istio = ("no", False)
    if c.network_label is None:
        network = ("unlabelled", False)
    elif c.network_label != c.cluster.network:
        network = (f"{c.network_label}≠{c.cluster.network}", False)
    else:
        network = (c.network_label, True)
    cacerts = _cacerts_cell(c.cacerts)
    gateway = _gateway_cell(c)
    peers = [s for s in c.remote_secrets.values() if s != STALE]
    good = sum(1 for s in peers if s == PRESENT)
    # The secrets column counts what the matrix shows: held secrets that are not in working order are named.
    flaws = [state for state in (MISSING, LOCAL, OUTDATED) if state in peers] + ["stale"] * bool(c.stale_secrets)
    secrets = (f"{good}/{len(peers)}" + (f" {','.join(flaws)}" if flaws else ""), not flaws)
    if c.remote_clusters is None:
        synced = ("?", None)
    else:  # istiod's own view
        count = sum(1 for s in c.remote_clusters.values() if s == SYNCED)
        synced = (f"{count}/{len(c.remote_clusters)}", count == len(c.remote_clusters))
    drift = ("?", None) if c.drift is None else (("yes", False) if c.drift else ("no", True))
    return [("yes", True), istio, network, cacerts, gateway, secrets, synced, drift]


def _cacerts_cell(ca: Cacerts) -> tuple[str, bool | None]:
    if not ca.present:
        return ("missing", False)
    if ca.chains_to_root is False:
        return ("foreign", False)
    if ca.days_left is None:
        return ("unreadable", False)
    # Mid-transition: which root issued the intermediate, and how many roots the cluster trusts.
    text = ", ".join([f"{ca.days_left}d" + ("" if ca.chains_to_root else "?")]
                     + ["new root"] * (ca.chains_to == "new") + ["former root"] * (ca.chains_to == "former")
                     + [f"{ca.roots_trusted} roots"] * ((ca.roots_trusted or 0) > 1))
    return (text, ca.days_left >= EXPIRY_WARN_DAYS if ca.chains_to_root else None)


def _gateway_cell(c: ClusterStatus) -> tuple[str, bool | None]:
    if not c.gateway_required:
        return (c.gateway_address or "-", None)
    if not c.gateway_exists:
        return ("missing", False)
    if c.gateway_programmed is False:
        return (f"{c.gateway_address or 'no address'}, not programmed", False)
    if c.gateway_programmed:
        return (f"{c.gateway_address or 'no address'}, programmed", bool(c.gateway_address))
    return (c.gateway_address or "pending", bool(c.gateway_address))


_MARKS = {PRESENT: "[green]✓[/]", MISSING: "[red]missing[/]", STALE: "[yellow]stale[/]", LOCAL: "[red]local[/]",
          OUTDATED: "[red]outdated[/]", UNNEEDED: "[yellow]unneeded[/]"}


def _matrix(status: MeshStatus) -> Table | None:
    """Rows: the cluster holding the secrets; columns: the peer each secret gives access to."""
    members = [c.cluster.name for c in status.clusters]
    if len(members) < 2 and not any(c.stale_secrets for c in status.clusters):
        return None
    # Columns for the clusters that stale secrets name (not in the topology: never a member's name).
    extra = sorted({name for c in status.clusters for name, s in c.remote_secrets.items()
                    if s == STALE and name not in members})
    table = Table(header_style="bold", box=box.SIMPLE_HEAD, pad_edge=False)
    table.add_column("", no_wrap=True)
    for name in members + extra:
        table.add_column(escape(name) + (" (not in topology)" if name in extra else ""), no_wrap=True)
    for c in status.clusters:
        cells = []
        for name in members + extra:
            if name == c.cluster.name:
                cells.append("[dim]—[/]")
            elif not c.reachable:
                cells.append("[dim]?[/]")
            else:
                state = c.remote_secrets.get(name)
                cell = _MARKS.get(state, "") if state else ""
                synced = (c.remote_clusters or {}).get(name)
                if state == PRESENT and synced not in (None, SYNCED):
                    cell = f"[red]{escape(synced)}[/]"
                cells.append(cell)
        table.add_row(escape(c.cluster.name), *cells)
    return table
