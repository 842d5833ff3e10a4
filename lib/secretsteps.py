"""The steps of the remote-secret exchange: export a cluster's secret, import its peers', prune stale ones."""
from __future__ import annotations

from types import MappingProxyType
from typing import Mapping

from .config import Cluster
from .errors import MeshError
from .executor import After, RunContext, Step
from .kube import Tools, parse_remote_secret
from .names import ISTIO_NAMESPACE
from .overlay import manifest_list
from .yamlfile import dump

EXPORT_KEY = "export its remote secret"
IMPORT_KEY = "import remote secrets"


def export_step(tools: Tools, cluster: Cluster) -> Step:
    # Without -n, istioctl makes the reader account and its token in the namespace of the kubeconfig's
    # current context (whatever --context says), where neither Istio nor setup-mesh looks for them.
    args = ["create-remote-secret", "--namespace", ISTIO_NAMESPACE, "--name", cluster.name]
    if cluster.api_server:
        args += ["--server", cluster.api_server]
    command = tools.istioctl_cmd(cluster, *args)

    def action(ctx: RunContext) -> None:
        result = ctx.run(command)
        try:
            secret, _ = parse_remote_secret(result.stdout, cluster.name)
        except ValueError as exc:
            raise MeshError(f"`{command.pasteable()}` printed no usable Secret: {exc}",
                            hint="run it by hand to see what istioctl printed") from None
        with ctx.lock:
            ctx.shared.setdefault("remote_secrets", {})[cluster.context] = secret

    return Step("create its remote secret", commands=[command], action=action, key=EXPORT_KEY, change="")


def import_step(tools: Tools, target: Cluster, peers: list[Cluster], copies: dict[str, dict],
                replacing: Mapping[str, str] = MappingProxyType({})) -> Step:
    """Apply the peers' secrets in one go; ``copies`` are current ones read from other clusters;
    ``replacing``: the peers whose (outdated) secret the target already holds, with what changed."""
    names = ", ".join(p.name for p in peers)

    def action(ctx: RunContext) -> str:
        # A peer whose export failed is reported on its own; the next apply brings its secret.
        available = {**copies, **ctx.shared.get("remote_secrets", {})}
        brought = [p for p in peers if p.context in available]
        if brought:
            ctx.run(tools.apply(target, dump(manifest_list([available[p.context] for p in brought])), shown=False))
        replaced = sum(1 for p in brought if p.context in replacing)
        return secrets_done(len(brought) - replaced, replaced, 0)

    title = f"import {peers[0].name}'s secret" if len(peers) == 1 else f"import {len(peers)} peers' secrets"
    added = [p.name for p in peers if p.context not in replacing]
    renewed = [p for p in peers if p.context in replacing]
    why = {replacing[p.context] for p in renewed}
    change = "; ".join(filter(None, [
        added and f"+ remote secret{'s' * (len(added) > 1)} of " + ", ".join(added),
        renewed and ("~ " if not added else "replace ") + f"remote secret{'s' * (len(renewed) > 1)} of "
        + (", ".join(p.name for p in renewed) + f" ({why.pop()})" if len(why) == 1 else
           ", ".join(f"{p.name} ({replacing[p.context]})" for p in renewed))]))
    # Waits for the peers' exports, but goes ahead without a peer whose export failed.
    return Step(title, commands=[tools.apply(target, None, shown=False)], action=action, change=change, key=IMPORT_KEY,
                note=f"stdin: the remote secrets of {names}, from create-remote-secret or copied from a peer "
                     f"(hold tokens: not shown)",
                after=[After(p.context, EXPORT_KEY, required=False) for p in peers])


def secrets_done(added: int, replaced: int, pruned: int) -> str:
    """`2 secrets imported, 1 replaced`: the words a cluster's result uses for its remote secrets."""
    parts = []
    if added:
        parts.append(f"{added} secret{'s' * (added != 1)} imported")
    if replaced:
        parts.append(f"{replaced} secret{'s' * (replaced != 1)} replaced" if not added else f"{replaced} replaced")
    if pruned:
        parts.append(f"{pruned} stale secret{'s' * (pruned != 1)} pruned")
    return ", ".join(parts)


def prune_step(tools: Tools, target: Cluster, names: list[str]) -> Step:
    return Step(f"delete {len(names)} stale remote secret{'s' * (len(names) != 1)}", commands=[tools.kubectl_cmd(
        target, "delete", "secret", "-n", ISTIO_NAMESPACE, "--ignore-not-found", *names)],
        done=secrets_done(0, 0, len(names)), change="- stale remote secrets: " + ", ".join(names))

