"""Loading and validating topology.yaml, before any cluster is touched (base.yaml: in lib/baseconfig.py, whose
names stay importable from here; the kubeconfig: in lib/kubeconfig.py)."""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from .baseconfig import (AMBIENT, MULTI_NETWORK_ENV, MULTIROOT_ENV, MULTIROOT_VALUE, OPERATOR_KEYS,  # noqa: F401
                         OPERATOR_SPEC_KEYS, PILOT_ENV_SWITCH, PILOT_ENV_VALUES, PILOT_K8S_ENV, RESERVED_VALUES,
                         SIDECAR, Base, data_plane_mode, load_base, ztunnel_namespace)
from .errors import ConfigError
from .invocation import prep_hint
from .versions import version_problem
from .yamlcheck import did_you_mean, is_dns1123_label, type_name  # noqa: F401
from .yamlfile import LocatedDoc, load_located

TOPOLOGY_FILE = "topology.yaml"
BASE_FILE = "base.yaml"

# Kubernetes label values: a network name ends up as the value of topology.istio.io/network.
LABEL_VALUE = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")


def is_label_value(value: object) -> bool:
    """A valid Kubernetes label value (what mesh ids and network names end up as)."""
    return isinstance(value, str) and bool(LABEL_VALUE.fullmatch(value)) and len(value) <= 63


CONTEXT_KEYS = {
    "network": "the network this cluster sits on (clusters on one network reach each other's pods directly)",
    "cluster_name": "Istio's name for the cluster (DNS-1123 label; default: the context name)",
    "api_server": "API server URL other clusters use to reach this one (create-remote-secret --server)",
    "kubeconfig": "a kubeconfig file for this context only (default: --kubeconfig, KUBECONFIG, ~/.kube/config)",
    "primary": "the context whose control plane runs this cluster: makes it a remote of that primary",
    "istio_version": "the Istio release this cluster runs, overriding the top-level istio_version (a staged move)",
}
TOP_KEYS = {"mesh_id", "contexts", "istio_version"}
ISTIO_VERSION_KEY = "istio_version"

LOCAL_HOSTS = {"localhost", "127.0.0.1", "::1", "0.0.0.0"}


@dataclass(frozen=True)
class Cluster:
    context: str
    network: str
    name: str  # Istio's cluster name
    api_server: str | None = None
    kubeconfig: str | None = None  # explicit kubeconfig file for this context, if any
    server: str | None = None  # the API server URL the kubeconfig names
    primary: str | None = None  # context of the primary whose istiod configures this cluster (a remote)
    istio_version: str | None = None  # this context's own istio_version (overrides the top-level one)

    @property
    def remote_server(self) -> str | None:
        return self.api_server or self.server

    @property
    def server_is_local(self) -> bool:
        """True when peers would be told to reach this cluster at a loopback address."""
        url = self.remote_server
        if not url:
            return False
        host = urlparse(url).hostname or ""
        return host in LOCAL_HOSTS or host.startswith("127.")


@dataclass(frozen=True)
class Topology:
    mesh_id: str
    clusters: tuple[Cluster, ...]
    path: Path
    istio_version: str | None = None  # the mesh's pinned Istio release (top-level istio_version), if any

    def istio_version_of(self, context: str) -> str | None:
        """The release pinned for one context: its own istio_version, else the mesh's, else None."""
        return self.by_context(context).istio_version or self.istio_version

    @property
    def istio_versions(self) -> list[str]:
        """Every pinned release, in topology order, each once."""
        pinned = [self.istio_version_of(c.context) for c in self.clusters]
        return list(dict.fromkeys(v for v in pinned if v))

    @property
    def networks(self) -> list[str]:
        return sorted({c.network for c in self.clusters})

    @property
    def multi_network(self) -> bool:
        return len(self.networks) > 1

    def by_context(self, context: str) -> Cluster:
        for c in self.clusters:
            if c.context == context:
                return c
        raise KeyError(context)


def load_topology(path: Path) -> Topology:
    doc = load_located(path, "topology file", missing_hint=prep_hint())
    mesh_id, contexts = _mesh_id_and_contexts(doc, path)
    istio_version = _istio_version(doc, doc.data, (ISTIO_VERSION_KEY,), "the mesh")
    clusters: list[Cluster] = []
    seen: dict[str, str] = {}
    for context, spec in contexts.items():
        clusters.append(_load_context(doc, path, context, spec, seen))
    _check_primaries(doc, clusters)
    return Topology(mesh_id=mesh_id, clusters=tuple(clusters), path=path, istio_version=istio_version)


def _istio_version(doc: LocatedDoc, mapping: dict, keys: tuple, owner: str) -> str | None:
    """The istio_version in ``mapping`` (at ``keys`` in the file), checked; None when absent."""
    if ISTIO_VERSION_KEY not in mapping or mapping[ISTIO_VERSION_KEY] is None:
        return None
    value = mapping[ISTIO_VERSION_KEY]
    problem = version_problem(value)
    if problem:
        what, how = problem
        raise ConfigError(f"{doc.where(*keys)}: istio_version of {owner}: {what}", hint=how)
    return value.strip()


def _mesh_id_and_contexts(doc: LocatedDoc, path: Path) -> tuple[str, dict]:
    data = doc.data
    if data is None:
        raise ConfigError(f"{path}: topology file is empty", hint="it needs mesh_id: and contexts:; see prep-mesh's example")
    if not isinstance(data, dict):
        raise ConfigError(f"{doc.where()}: topology must be a mapping with mesh_id and contexts, not {type_name(data)}")
    for key in data:
        if key not in TOP_KEYS:
            raise ConfigError(f"{doc.where(key)}: unknown key {key!r} in topology",
                              hint=did_you_mean(key, TOP_KEYS) + "allowed top-level keys: " + ", ".join(sorted(TOP_KEYS)))
    mesh_id = data.get("mesh_id")
    if mesh_id is None or mesh_id == "":
        raise ConfigError(f"{doc.where('mesh_id') if 'mesh_id' in data else path}: mesh_id is required",
                          hint="add e.g. `mesh_id: mesh1` at the top of topology.yaml")
    if not is_label_value(mesh_id):
        raise ConfigError(f"{doc.where('mesh_id')}: invalid mesh_id {mesh_id!r}",
                          hint=_quote_hint("mesh_id", mesh_id)
                          or "use letters, digits, '-', '_' or '.', at most 63 characters, e.g. mesh1")
    contexts = data.get("contexts")
    if contexts is None or contexts == {}:
        raise ConfigError(f"{doc.where('contexts') if 'contexts' in data else path}: contexts is empty or missing",
                          hint="list each kube context under contexts:, e.g.\n  contexts:\n    my-context:\n      network: network1")
    if not isinstance(contexts, dict):
        raise ConfigError(f"{doc.where('contexts')}: contexts must be a mapping of kube context names, not {type_name(contexts)}")
    return mesh_id, contexts


def _quote_hint(key: str, value) -> str:
    """For a name YAML read as something else (``network: 5``, ``mesh_id: no``): put it in quotes."""
    if isinstance(value, bool):
        return (f"put the name in quotes, e.g. {key}: \"no\": unquoted, YAML reads yes, no, on, off, true and false "
                f"as true/false")
    if isinstance(value, (int, float)):
        return f"put the name in quotes, e.g. {key}: \"{value}\": unquoted, YAML reads it as a number"
    return ""


def _load_context(doc: LocatedDoc, path: Path, context, spec, seen: dict[str, str]) -> Cluster:
    """One entry of contexts:, checked; ``seen`` maps the cluster names so far to their contexts."""
    where = doc.where("contexts", context)
    if not isinstance(context, str) or not context:
        raise ConfigError(f"{where}: context names must be non-empty strings, got {context!r}",
                          hint="quote the context name as it appears in `kubectl config get-contexts`")
    if not isinstance(spec, dict):
        raise ConfigError(f"{where}: context {context!r} must be a mapping with at least network:, not {type_name(spec)}",
                          hint=f"write it as\n  {context}:\n    network: network1")
    for key in spec:
        if key not in CONTEXT_KEYS:
            raise ConfigError(f"{doc.where('contexts', context, key)}: unknown key {key!r} in context {context!r}",
                              hint=did_you_mean(key, CONTEXT_KEYS) + "allowed keys: " + ", ".join(CONTEXT_KEYS))
    network = spec.get("network")
    if network is None or network == "":
        raise ConfigError(f"{where}: context {context!r} has no network",
                          hint="add `network: NAME` (clusters that reach each other's pods directly share a network)")
    if not is_label_value(network):
        raise ConfigError(f"{doc.where('contexts', context, 'network')}: invalid network {network!r} for context {context!r}",
                          hint=_quote_hint("network", network)
                          or "a network is a Kubernetes label value: letters, digits, '-', '_', '.', at most 63 characters")
    name = spec.get("cluster_name", context)
    if not is_cluster_name(name):
        if "cluster_name" in spec:
            raise ConfigError(f"{doc.where('contexts', context, 'cluster_name')}: invalid cluster_name {name!r}",
                              hint="a cluster name is a DNS-1123 label: lower-case letters, digits and '-', at most 63 characters")
        raise ConfigError(f"{where}: context {context!r} is not a valid Istio cluster name",
                          hint=f"set `cluster_name:` under {context!r} to a DNS-1123 label (lower-case letters, digits, '-'), e.g. cluster_name: {cluster_names_for([context])[context]}")
    if name in seen:
        raise ConfigError(f"{where}: cluster name {name!r} of context {context!r} is already used by context {seen[name]!r}",
                          hint="give each context its own cluster_name")
    seen[name] = context
    api_server, kubeconfig, primary = _context_options(doc, path, context, spec)
    own_version = _istio_version(doc, spec, ("contexts", context, ISTIO_VERSION_KEY), f"context {context!r}")
    return Cluster(context=context, network=network, name=name, api_server=api_server,
                   kubeconfig=kubeconfig, primary=primary, istio_version=own_version)


def _context_options(doc: LocatedDoc, path: Path, context: str, spec: dict) -> tuple[str | None, str | None, str | None]:
    """A context's optional api_server, kubeconfig (made absolute) and primary."""
    api_server = spec.get("api_server")
    if api_server is not None:
        parsed = urlparse(str(api_server))
        if not isinstance(api_server, str) or parsed.scheme not in ("https", "http") or not parsed.hostname:
            raise ConfigError(f"{doc.where('contexts', context, 'api_server')}: invalid api_server {api_server!r}",
                              hint="use the URL other clusters can reach, e.g. https://203.0.113.10:6443")
    kubeconfig = spec.get("kubeconfig")
    if kubeconfig is not None:
        if not isinstance(kubeconfig, str) or not kubeconfig:
            raise ConfigError(f"{doc.where('contexts', context, 'kubeconfig')}: kubeconfig must be a file path")
        kubeconfig = str((path.parent / os.path.expanduser(kubeconfig)).resolve())
    primary = spec.get("primary")
    if primary is not None and (not isinstance(primary, str) or not primary):
        raise ConfigError(f"{doc.where('contexts', context, 'primary')}: primary of context {context!r} must be "
                          f"the name of another context, not {type_name(primary)}",
                          hint="name the context whose control plane runs this cluster, or delete the line to "
                               "make it a primary")
    return api_server, kubeconfig, primary


def _check_primaries(doc: LocatedDoc, clusters: list[Cluster]) -> None:
    """A remote's primary is another context of topology.yaml that is itself a primary (so no chains or
    cycles: every remote is one step from a control plane)."""
    by_context = {c.context: c for c in clusters}
    primaries = [c.context for c in clusters if not c.primary]
    for cluster in clusters:
        if not cluster.primary:
            continue
        where = doc.where("contexts", cluster.context, "primary")
        target = by_context.get(cluster.primary)
        if cluster.primary == cluster.context:
            raise ConfigError(f"{where}: context {cluster.context!r} names itself as its primary",
                              hint=f"delete `primary:` to make {cluster.context!r} a primary, or name the context "
                                   f"whose control plane runs it")
        if target is None:
            remotes = [c.context for c in clusters if c.primary == cluster.primary]
            raise ConfigError(
                f"{where}: primary {cluster.primary!r} of context {cluster.context!r} is not a context in "
                f"topology.yaml (it is the primary of {', '.join(remotes)})",
                hint=f"a primary that still has remotes cannot be removed: first point `primary:` of "
                     f"{', '.join(remotes)} at another primary ({', '.join(primaries) or 'none yet'}) or delete it "
                     f"to make them primaries; or fix the name")
        if target.primary:
            raise ConfigError(
                f"{where}: context {cluster.primary!r}, the primary of {cluster.context!r}, is itself a remote "
                f"(of {target.primary!r})",
                hint=f"a remote's primary runs its own control plane: set `primary: {target.primary}` for "
                     f"{cluster.context!r}, or delete `primary:` under {cluster.primary!r}")


# The context names the clouds' CLIs write (aws eks update-kubeconfig, gcloud container clusters
# get-credentials): the cluster's own name is their last part.
_CLOUD_CONTEXTS = (re.compile(r"arn:aws[a-z-]*:eks:[^:]*:[^:]*:cluster/(?P<name>.+)"),
                   re.compile(r"gke_[^_]+_[^_]+_(?P<name>.+)"))


def _suggest(context: str) -> str:
    s = re.sub(r"[^a-z0-9-]+", "-", context.lower()).strip("-")
    return (s[-63:].strip("-") or "cluster1")


def is_cluster_name(name: object) -> bool:
    """Istio's cluster names are DNS-1123 labels."""
    return is_dns1123_label(name)


def cluster_names_for(contexts: list[str]) -> dict[str, str]:
    """A valid Istio cluster name for each context whose own name is not one: the cluster's name out of an
    EKS or GKE context, else the context made a label; the whole context made a label where two would clash."""
    taken = {c for c in contexts if is_cluster_name(c)}
    names: dict[str, str] = {}
    for context in contexts:
        if context in taken:
            continue
        short = next((m.group("name") for m in (p.fullmatch(context) for p in _CLOUD_CONTEXTS) if m), context)
        for candidate in (_suggest(short), _suggest(context)):
            if candidate not in taken:
                break
        else:
            candidate = next(f"{candidate[:60]}-{i}" for i in range(2, len(contexts) + 2)
                             if f"{candidate[:60]}-{i}" not in taken)
        taken.add(candidate)
        names[context] = candidate
    return names


def check_data_plane(topology: Topology, base: Base) -> None:
    """What Istio does not support in ambient mode is refused before any cluster is touched: remote
    clusters (primary-remote), since ambient multicluster is multi-primary only."""
    if data_plane_mode(base.operator) != AMBIENT:
        return
    remotes = [c for c in topology.clusters if c.primary]
    if remotes:
        where = base.doc.where("spec", "profile") if base.doc else str(base.path)
        names = ", ".join(f"{c.context} (primary: {c.primary})" for c in remotes)
        raise ConfigError(f"{where}: profile ambient does not support remote clusters, and {topology.path} makes "
                          f"these remote: {names}",
                          hint="Istio's ambient multicluster is multi-primary only: drop `primary:` from those "
                               "contexts (each runs its own istiod), or use a sidecar profile such as default")


# --- kubeconfig -------------------------------------------------------------------------------

def select_clusters(topology: Topology, contexts: list[str]) -> list[Cluster]:
    """The clusters named with --context (context or cluster name; all when none), in topology order.
    A name not in topology.yaml is bad input."""
    if not contexts:
        return list(topology.clusters)
    known = [c.context for c in topology.clusters] + [c.name for c in topology.clusters]
    for name in contexts:
        if name not in known:
            raise ConfigError(f"--context {name}: not in {topology.path}",
                              hint=did_you_mean(name, known) + "name contexts listed there: "
                              + ", ".join(c.context for c in topology.clusters))
    return [c for c in topology.clusters if c.context in contexts or c.name in contexts]
