"""How verify reads in a terminal: the matrix, then each cause once with the pairs it breaks.

As status groups its problems, a cause that many pairs share is one block: the pairs, what is wrong,
one hint. Prose is wrapped at word boundaries to the terminal's width and never inside a pasteable
command (lib/wrapping.py). Codes are for -o json: the text view names no code.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .causes import VerifyResult
from .kube import Tools
from .mesh import Mesh
from .overlay import manifest_list
from .redact import redact
from .reporter import Reporter
from .traffic import ROUNDS, calls_per_round, call_command, cleanup_command, pods_command
from .wrapping import fit
from .yamlfile import dump


@dataclass
class PairGroup:
    """One cause and every failing pair it was found for, in the matrix's order."""

    message: str
    hint: str
    pairs: list[tuple[str, str]] = field(default_factory=list)


def group_causes(result: VerifyResult) -> list[PairGroup]:
    """Causes with the same code and message are one group. When their hints differ (a command naming the
    calling cluster), the first pair's is shown as the example for the others."""
    groups: dict[tuple[str, str], tuple[PairGroup, set[str]]] = {}
    for pair in result.pairs:
        if pair.reached:
            continue
        for cause in pair.causes:
            group, hints = groups.setdefault((cause.code, cause.message), (PairGroup(cause.message, cause.hint),
                                                                           set()))
            group.pairs.append((pair.source, pair.target))
            hints.add(cause.hint)
    out = []
    for group, hints in groups.values():
        if len(hints) > 1:
            source, target = group.pairs[0]
            group.hint = f"for {source} -> {target}, and likewise for the others: {group.hint}"
        out.append(group)
    return out


def describe_pairs(pairs: list[tuple[str, str]], clusters: list[str]) -> str:
    """The pairs in few words: every pair, every call from or to one cluster, or each pair."""
    chosen = set(pairs)
    if len(clusters) > 1 and chosen == {(a, b) for a in clusters for b in clusters}:
        return "every pair"
    for name in clusters if len(clusters) > 2 else ():
        said = next((words for words, shape in _shapes(name, clusters) if chosen == shape), None)
        if said:
            return said
    return ", ".join(f"{a} -> {b}" for a, b in pairs)


def _shapes(name: str, clusters: list[str]) -> list[tuple[str, set[tuple[str, str]]]]:
    """The sets of pairs one cluster's trouble breaks, in words."""
    return [(f"every call from or to {name}", {(a, b) for a in clusters for b in clusters if name in (a, b)}),
            (f"every call from {name}", {(name, b) for b in clusters}),
            (f"every call to {name}", {(a, name) for a in clusters})]


def render(result: VerifyResult, console: Console, cleanup: list[str] | None = None) -> None:
    """The matrix, the problems of single clusters, each cause once, the verdict; ``cleanup``: the
    commands that delete a kept namespace."""
    console.print(escape(fit(console, f"traffic in mesh {result.mesh_id} (row: calling cluster; column: "
                                      f"answering cluster)")), style="bold")
    console.print(_matrix(result))
    for problem in result.problems:
        _block(console, problem.message, problem.hint)
    for group in group_causes(result):
        _block(console, f"{describe_pairs(group.pairs, result.clusters)}: {group.message}", group.hint)
    size = len(result.clusters)
    if result.ok:
        console.print(escape(f"every cluster reaches every cluster ({size}x{size})"), style="green")
    else:
        missing = sum(1 for p in result.pairs if not p.reached)
        console.print(escape(f"{missing} of {len(result.pairs)} pair(s) not reached"), style="red")
    if cleanup:
        text = (f"kept namespace {result.namespace} in every cluster; delete it with "
                + "; ".join(f"`{command}`" for command in cleanup))
        console.print(escape(redact(fit(console, text))))


def _block(console: Console, message: str, hint: str) -> None:
    line = fit(console, message, "✗ ")
    console.print("[red]✗[/]" + escape(redact(line[1:])))
    console.print(escape(redact(fit(console, hint, "  hint: ", indent="    "))))


def _matrix(result: VerifyResult) -> Table:
    table = Table(header_style="bold")
    table.add_column("from \\ to")
    for name in result.clusters:
        table.add_column(escape(name), justify="center")
    by_pair = {(p.source, p.target): p for p in result.pairs}
    for source in result.clusters:
        cells = []
        for target in result.clusters:
            pair = by_pair[(source, target)]
            cells.append(f"[green]✓ {pair.answers}[/]" if pair.reached else "[red]✗[/]")
        table.add_row(escape(source), *cells)
    return table


def print_dry_run(mesh: Mesh, tools: Tools, plan: dict[str, list[dict]], options, labels: str, reads: str,
                  notes: list[str], reporter: Reporter) -> None:
    """What verify would read, create, call and delete, per cluster. ``options``: verify's Options;
    ``labels``: how its namespace joins the mesh; ``reads``: what it reads besides status's reading."""
    topology = mesh.topology
    reporter.info(f"verify on mesh {topology.mesh_id}: {len(topology.clusters)} cluster(s), namespace "
                  f"{options.namespace} ({labels}) (dry run: nothing is created)")
    for note in notes:
        reporter.warn(note)
    reporter.info(f"reads first what status reads, plus per cluster: {reads}")
    for cluster in topology.clusters:
        _dry_run_cluster(mesh, tools, cluster, plan[cluster.context], options, reporter.info)


def _dry_run_cluster(mesh: Mesh, tools: Tools, cluster, items: list[dict], options, out) -> None:
    out("")
    member = mesh.member(cluster.context)
    plane = mesh.control_plane_of(member)
    out(f"== {cluster.context}" + (f" (remote of {plane.context}: its sidecars are injected and configured by "
                                   f"{plane.context}'s istiod)" if member.is_remote else ""))
    kinds = ", ".join(f"{m['kind']} {m['metadata']['name']}" for m in items)
    out(f"  create: {kinds} (helloworld answers version {cluster.name}; images {options.images.helloworld}, "
        f"{options.images.curl})")
    out("  $ " + tools.apply(cluster, dump(manifest_list(items)), shown=True).pasteable(with_stdin=True)
        .replace("\n", "\n    "))
    out(f"  wait up to {options.ready_timeout:g}s for the pods: "
        f"$ {pods_command(tools, cluster, options.namespace).pasteable()}")
    calls = calls_per_round(len(mesh.members))
    out(f"  call (up to {ROUNDS} times, until every cluster answered): "
        f"$ {call_command(tools, cluster, options.namespace, calls).pasteable()}")
    if options.keep:
        out("  keep the namespace (--keep)")
    else:
        out(f"  clean up: $ {cleanup_command(tools, cluster, options.namespace).pasteable()}")
