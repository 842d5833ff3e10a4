"""How a plan reads: by default per cluster what changes, diff-like, and a counts line; with -v
every command and manifest, pasteable. Works from the plan's data (each step's change, details,
commands), so any step renders the same way."""
from __future__ import annotations

import shlex
from collections.abc import Collection

from . import invocation
from .config import Topology
from .executor import Step
from .kube import Observed
from .mesh import mesh_model
from .plan import ApplyPlan
from .reporter import Reporter
from .wrapping import fit

NOTHING = "nothing to do: every cluster matches topology.yaml and base.yaml"


def print_plan(plan: ApplyPlan, topology: Topology, observed: dict[str, Observed] | None, notes: list[str],
               reporter: Reporter, title: str = "Plan", nothing: str = NOTHING,
               command: str | tuple[str, ...] = "apply", replace_other_roots: bool = False,
               sitting_out: Collection[str] = ()) -> None:
    """``command``: the command (with its options) whose --dry-run -v shows every command and manifest;
    ``replace_other_roots``: --replace-foreign-ca was given (else apply refuses such clusters);
    ``sitting_out``: unread clusters whose error the dry run reports after the plan (not said twice)."""
    out = _wrapped(reporter)
    count = len(topology.clusters)
    out(f"{title} (dry run, changes nothing): mesh {topology.mesh_id}, {count} cluster{'s' * (count != 1)} on "
        f"{', '.join(topology.networks)}")
    for note in notes:
        reporter.warn(note)
    if observed is None:
        reporter.warn("could not read the clusters' current state: the plan assumes they hold nothing yet")
    unread = [c.context for c in topology.clusters
              if (seen := (observed or {}).get(c.context)) is not None and not seen.reachable]
    for context in (c for c in unread if c not in sitting_out):
        reporter.warn(f"could not read current state of {context}: {observed[context].error}")
    if unread:  # not a claim about clusters it could not read
        nothing = ("nothing to do: no cluster could be read" if len(unread) == len(topology.clusters) else
                   f"nothing to do in the clusters that could be read (not {', '.join(unread)})" if nothing == NOTHING
                   else f"{nothing}, of the clusters that could be read (not {', '.join(unread)})")
    _body(plan, topology, reporter, nothing, command, replace_other_roots, out)


def _wrapped(reporter: Reporter):
    """Prints a plan line; on a terminal, wrapped at words under its own indent (no command split)."""
    def out(text: str) -> None:
        lead = text[:len(text) - len(text.lstrip(" "))]
        reporter.info(fit(reporter.console, text.lstrip(" "), lead, indent=lead + "    "))
    return out


def print_changes(plan: ApplyPlan, topology: Topology, reporter: Reporter, title: str,
                  command: str | tuple[str, ...], nothing: str = NOTHING) -> None:
    """What a run is about to change, per cluster (-v: every command), read as its dry run reads, before
    it asks to go ahead."""
    out = _wrapped(reporter)
    count = len(topology.clusters)
    out(f"{title}: mesh {topology.mesh_id}, {count} cluster{'s' * (count != 1)} on {', '.join(topology.networks)}")
    _body(plan, topology, reporter, nothing, command, False, out)


def _body(plan: ApplyPlan, topology: Topology, reporter: Reporter, nothing: str, command: str | tuple[str, ...],
          replace_other_roots: bool, out=None) -> None:
    out = out or reporter.info
    # -v lists commands to paste: printed as they are, never broken at a word.
    (_full(plan, topology, reporter.info) if reporter.verbose else _changes(plan, topology, out))
    for context, what in plan.replacements.items():
        out("")
        for line in what:
            out(f"{context} replaces (apply asks first): {line}")
    for context, finding in plan.other_roots.items():
        out("")
        out(f"{context}: {finding.describe()}")
        out(f"  {other_root_consequence(replace_other_roots)}")
    steps = _by_cluster(plan, topology)
    if not steps:
        out("")
        out(nothing)
        return
    out("")
    out(counts_line(plan, steps))
    if not reporter.verbose:
        args = (command,) if isinstance(command, str) else command
        out(f"Every command and manifest: {invocation.command(*args, '--dry-run', '-v')}")


def other_root_consequence(replacing: bool) -> str:
    """What apply does with a cacerts under another root, with and without --replace-foreign-ca."""
    if replacing:
        return ("replaced at once (--replace-foreign-ca): mTLS between workloads breaks until every workload "
                "restarts and gets a certificate of this workspace's root")
    return "apply refuses to replace it (see the error below)"


def _by_cluster(plan: ApplyPlan, topology: Topology) -> dict[str, list[Step]]:
    """Each cluster's steps across the phases, in the order they run; clusters in topology order,
    then the removed ones."""
    found: dict[str, list[Step]] = {c.context: [] for c in topology.clusters}
    for phase in plan.phases:
        for context, steps in phase.steps.items():
            found.setdefault(context, []).extend(steps)
    for gone in plan.removals:
        found.setdefault(gone.context, [])
    return {context: steps for context, steps in found.items() if steps or plan.actions.get(context)}


def _action(plan: ApplyPlan, context: str, steps: list[Step]) -> str:
    if context in plan.actions:
        return plan.actions[context]
    return "change" if any(s.change != "" for s in steps) else "unchanged"


def _changes(plan: ApplyPlan, topology: Topology, out) -> None:
    networks = {c.context: c.network for c in topology.clusters}
    roles = _roles(topology)
    unchanged = []
    by_cluster = _by_cluster(plan, topology)
    for context, steps in by_cluster.items():
        action = _action(plan, context, steps)
        if action == "unchanged":
            unchanged.append(context)
            continue
        where = f" ({networks[context]}, {roles[context]})" if context in networks else ""
        removal = next((r for r in plan.removals if r.context == context), None)
        if removal is not None and not removal.reachable:
            action = "remove (unreachable: only its secrets in the other clusters are deleted)"
        out("")
        out(f"{context}{where}: {action}")
        for step in steps:
            if step.change == "":
                continue
            out(f"  {step.change if step.change is not None else '· ' + step.title}")
            for need in (a for a in step.after if a.required):
                out(f"      (after {need.cluster}: {need.key})")
            for line in step.details:
                out(f"      {line}")
    unchanged += [c for c in plan.unchanged if c not in unchanged and c not in by_cluster]
    if unchanged:
        out("")
        out("unchanged: " + ", ".join(c.context for c in topology.clusters if c.context in unchanged))


def counts_line(plan: ApplyPlan, steps: dict[str, list[Step]]) -> str:
    actions = [_action(plan, context, s) for context, s in steps.items()]
    clusters = ", ".join(f"{actions.count(a)} {a}" for a in ("install", "change", "remove")
                         if actions.count(a) or plan.secrets is not None)
    line = f"Plan: {clusters or 'nothing to change'}"
    if plan.secrets is not None:
        line += "; secrets: " + ", ".join(f"{plan.secrets[k]} {k}" for k in ("add", "replace", "prune"))
    return line + "."


def _full(plan: ApplyPlan, topology: Topology, out) -> None:
    """Every step with its files, commands and notes, pasteable in order."""
    roles = _roles(topology)
    for phase in plan.phases:
        if not phase:
            continue
        out("")
        out(f"== {phase.name}")
        for context, steps in phase.steps.items():
            out(f"-- {context}" + (f" ({roles[context]})" if context in roles else ""))
            for step in steps:
                out(f"   # {step.title}")
                for need in (a for a in step.after if a.required):
                    out(f"   # after {need.cluster}: {need.key}")
                for path, content in step.files:
                    write = f"mkdir -p {shlex.quote(str(path.parent))} && cat > {shlex.quote(str(path))} <<'EOF'"
                    out(_indent(f"{write}\n{content.rstrip()}\nEOF", 3))
                for command in step.commands:
                    out(_indent(command.pasteable(with_stdin=True), 3))
                if step.note:
                    out(f"   # {step.note}")
    if plan.unchanged:
        out("")
        out("unchanged: " + ", ".join(plan.unchanged))


def _roles(topology: Topology) -> dict[str, str]:
    """Each cluster's role as the plan names it: "primary", or "remote of <its primary>"."""
    return {m.context: m.role.value if m.is_primary else f"remote of {m.control_plane}"
            for m in mesh_model(topology).members}


def _indent(text: str, n: int) -> str:
    return "\n".join(" " * n + line for line in text.splitlines())
