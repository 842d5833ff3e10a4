"""The kubeconfig, read as kubectl reads it: which files, what kubectl would refuse to load, and each
topology context's entry and API server, checked before any cluster is touched."""
from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

from .config import Topology
from .errors import ConfigError
from .yamlcheck import type_name
from .yamlfile import LocatedDoc, load_located


def kubeconfig_files(explicit: str | None) -> list[str]:
    """The kubeconfig files kubectl would read: --kubeconfig, else KUBECONFIG, else ~/.kube/config."""
    if explicit:
        return [explicit]
    env = os.environ.get("KUBECONFIG")
    if env:
        return [p for p in env.split(os.pathsep) if p]
    return [os.path.expanduser("~/.kube/config")]


def _read_kubeconfig(path: str) -> dict | None:
    doc = load_located(Path(path), "kubeconfig")
    _check_kubeconfig(doc, path)
    return doc.data if isinstance(doc.data, dict) else None


# A kubeconfig's named lists, as kubectl loads them (k8s.io/client-go/tools/clientcmd/api/v1 conversion: each
# a list of entries with a name, no name twice in one file; an empty file is an empty config).
_KUBECONFIG_LISTS = {"clusters": "cluster", "contexts": "context", "users": "user"}


def _check_kubeconfig(doc: LocatedDoc, path: str) -> None:
    """What kubectl refuses to load (``error loading config file``) is refused here, named, before any cluster
    is touched; otherwise setup-mesh would look for contexts in a file every kubectl call fails on."""
    data = doc.data
    hint = "fix the file (kubectl refuses to load it too: try `kubectl --kubeconfig " + path + " config view`)"
    if data is None:
        return
    if not isinstance(data, dict):
        raise ConfigError(f"{doc.where()}: {path} is not a kubeconfig (a mapping with clusters, contexts and users), "
                          f"it is {type_name(data)}", hint=hint)
    for key, kind in _KUBECONFIG_LISTS.items():
        entries = data.get(key)
        if entries is None:
            continue
        if not isinstance(entries, list):
            raise ConfigError(f"{doc.where(key)}: {key} must be a list of entries with a name, not {type_name(entries)}",
                              hint=hint)
        seen: set = set()
        for index, entry in enumerate(entries):
            if not isinstance(entry, dict):
                raise ConfigError(f"{doc.where(key, index)}: each of {key} must be a mapping (name: and {kind}:), "
                                  f"not {type_name(entry)}", hint=hint)
            name = entry.get("name") or ""  # kubectl takes an entry without a name as named ""
            if not isinstance(name, str):
                raise ConfigError(f"{doc.where(key, index, 'name')}: the name of each of {key} must be a string, not "
                                  f"{type_name(name)}", hint=hint)
            if entry.get(kind) is not None and not isinstance(entry[kind], dict):
                raise ConfigError(f"{doc.where(key, index, kind)}: the {kind} of {kind} {name!r} must be a mapping, "
                                  f"not {type_name(entry[kind])}", hint=hint)
            if name in seen:
                raise ConfigError(f"{doc.where(key, index)}: {kind} {name!r} is in {key} twice: kubectl refuses to "
                                  f"load {path} (duplicate name)", hint=hint)
            seen.add(name)


def resolve_contexts(topology: Topology, explicit_kubeconfig: str | None) -> Topology:
    """Check every context exists in its kubeconfig and note the API server it names."""
    default_files = kubeconfig_files(explicit_kubeconfig)
    cache: dict[str, dict | None] = {}

    def load(path: str, required: bool, origin: str, hint: str) -> dict | None:
        if path not in cache:
            try:
                os.stat(path)
            except FileNotFoundError:
                # kubectl skips a missing entry of a KUBECONFIG list, and fails on any other unreadable one.
                if required:
                    raise ConfigError(f"kubeconfig file not found: {path} ({origin})", hint=hint) from None
                cache[path] = None
                return None
            except OSError as exc:
                raise ConfigError(f"cannot read kubeconfig {path} ({origin}): {exc.strerror}",
                                  hint="check the file's and its folders' permissions for this user") from None
            cache[path] = _read_kubeconfig(path)
        return cache[path]

    resolved = []
    for cluster in topology.clusters:
        if cluster.kubeconfig:
            files = [cluster.kubeconfig]
            origin = f"kubeconfig of context {cluster.context!r} in {topology.path}"
            missing_hint = f"fix contexts.{cluster.context}.kubeconfig in {topology.path}"
            given = cluster.kubeconfig
        else:
            files = default_files
            origin = "--kubeconfig" if explicit_kubeconfig else ("KUBECONFIG" if os.environ.get("KUBECONFIG") else "default location")
            missing_hint = "check the path, or point --kubeconfig / KUBECONFIG at your kubeconfig"
            given = explicit_kubeconfig
        def kubectl_config(view: str) -> str:
            return f"kubectl --kubeconfig {given} config {view}" if given else f"kubectl config {view}"

        # kubectl tolerates missing entries in a KUBECONFIG list, but not a missing explicit file.
        explicit = bool(cluster.kubeconfig or explicit_kubeconfig) or len(files) == 1
        configs = [load(f, explicit, origin, missing_hint) for f in files]
        context_entry, cluster_entry = _find_context(configs, cluster.context)
        where = " or ".join(files)
        if context_entry is None:
            raise ConfigError(f"{topology.path}: context {cluster.context!r} is not in the kubeconfig ({where})",
                              hint=f"check `{kubectl_config('get-contexts')}`; fix the name in topology.yaml or add the context to "
                                   f"your kubeconfig")
        server = (cluster_entry or {}).get("server")
        if not server:
            # kubectl would call http://localhost:8080 (client-go clientcmd's default server), whatever answers there.
            named = context_entry.get("cluster")
            problem = ("names no cluster" if not named else
                       f"names cluster {named!r}, which has no server" if cluster_entry is not None else
                       f"names cluster {named!r}, which is not in the kubeconfig")
            raise ConfigError(f"{topology.path}: context {cluster.context!r} ({where}) {problem}: kubectl would send "
                              f"its requests to http://localhost:8080 instead",
                              hint=f"fix the context's cluster in the kubeconfig (`{kubectl_config('get-clusters')}`), "
                                   f"or remove the context from topology.yaml")
        # kubectl and istioctl must read the same file that was checked here.
        kubeconfig_file = cluster.kubeconfig or (os.path.abspath(explicit_kubeconfig) if explicit_kubeconfig else None)
        resolved.append(replace(cluster, server=server, kubeconfig=kubeconfig_file))
    return replace(topology, clusters=tuple(resolved))


def _find_context(configs: list[dict | None], name: str) -> tuple[dict | None, dict | None]:
    """The context entry and its cluster entry (None where the kubeconfig lacks one), first file first."""
    context = None
    for cfg in configs:
        for entry in (cfg or {}).get("contexts") or []:
            if isinstance(entry, dict) and entry.get("name") == name:
                context = entry.get("context") or {}
                break
        if context is not None:
            break
    if context is None:
        return None, None
    cluster_name = context.get("cluster")
    for cfg in configs:
        for entry in (cfg or {}).get("clusters") or []:
            if isinstance(entry, dict) and entry.get("name") == cluster_name:
                return context, entry.get("cluster") or {}
    return context, None
