"""An in-memory ClusterClient (lib/cluster.py): clusters filled with the same typed values the real one
parses out of kubectl and istioctl, answered as the real one answers.

A context the fake does not hold is answered as kubectl answers for a context missing from the
kubeconfig: unreachable, with kubectl's message. A read of a cluster returns a copy, so a judgment cannot
change what the fake holds; without ``ambient`` the Gateway API fields stay unread, as the real read leaves
them; the namespaces and their labels always come together, as kubectl's listing gives them. Every read is recorded in ``reads`` (what, context), in order.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field, replace
from typing import Sequence

from lib.config import Cluster
from lib.errors import MeshError
from lib.kube import Observed
from lib.istiousage import IstioUsage
from lib.names import APPLIED_ANNOTATION, ISTIO_NAMESPACE, NETWORK_LABEL
from lib.statusread import InjectorWebhook, IstiodView
from lib.statusrevisions import Revisions


@dataclass
class FakeCluster:
    state: Observed
    istiod: IstiodView | None = None  # what `istioctl remote-clusters` reports (None: istioctl fails)
    injector: InjectorWebhook = field(default_factory=InjectorWebhook)
    published: bytes | None = None  # istio-ca-root-cert's root-cert.pem (None: istiod has not written it)
    roots_readable: bool = True  # False: the user may not list ConfigMaps, so the read goes without them
    usage: IstioUsage | MeshError = field(default_factory=IstioUsage)
    revisions: Revisions | None = None  # None: the read failed (not judged)


def _as_listed(seen: Observed) -> Observed:
    """The real read lists every namespace with istio-system's objects (`kubectl get namespaces,...`): a
    reachable cluster's read always has the namespaces and their labels, istio-system among them when it
    exists, one being deleted left out of the namespaces (lib/kube.parse_inspect). A test gives either."""
    labels = {name: dict(value) for name, value in (seen.namespace_labels or {}).items()}
    for name in seen.namespaces or ():
        labels.setdefault(name, {})
    if seen.namespace:
        labels.setdefault(ISTIO_NAMESPACE, {NETWORK_LABEL: seen.network_label} if seen.network_label else {})
    seen.namespace_labels = labels
    present = set(labels if seen.namespaces is None else seen.namespaces) - {ISTIO_NAMESPACE}
    if seen.namespace and not seen.namespace_terminating:
        present.add(ISTIO_NAMESPACE)
    seen.namespaces = frozenset(present)
    return seen


def _missing(context: str) -> str:
    return f'error: context "{context}" does not exist'


class FakeClient:
    def __init__(self, clusters: dict[str, FakeCluster | Observed]):
        self.clusters = {ctx: held if isinstance(held, FakeCluster) else FakeCluster(held)
                         for ctx, held in clusters.items()}
        self.reads: list[tuple[str, str]] = []

    def _each(self, what: str, clusters: Sequence[Cluster]):
        for cluster in clusters:
            self.reads.append((what, cluster.context))
            yield cluster.context, self.clusters.get(cluster.context)

    def read_state(self, clusters: Sequence[Cluster], *, ambient: bool = False,
                   title: str = "read current state", ztunnel_namespace: str = "istio-system",
                   istio_objects_in: frozenset[str] = frozenset(), published_roots: bool = False) -> dict[str, Observed]:
        found = {}
        names = {c.context: c.name for c in clusters}
        for context, held in self._each("state", clusters):
            if held is None or not held.state.reachable:
                found[context] = Observed(reachable=False, error=held.state.error if held else _missing(context))
                continue
            seen = _as_listed(copy.deepcopy(held.state))
            if names[context] not in istio_objects_in:  # as kubectl's read: listed only when asked for
                seen.istio_objects, seen.istio_gateways = None, None
            listed = published_roots and held.roots_readable  # the read narrowed as workspace._inspect narrows it
            seen.published_root, seen.roots_read = (held.published, True) if listed else (None, False)
            # As the real read: Gateways are listed only in ambient mode, and only where the Gateway CRD is installed.
            listed_gateways = ambient and seen.gateway_api is not None and seen.gateway_api.installed
            found[context] = replace(seen, gateway_api=seen.gateway_api if ambient else None,
                                     eastwest_gateway=seen.eastwest_gateway if listed_gateways else None)
        return found

    def istio_usage(self, clusters: Sequence[Cluster], ours: frozenset[str]) -> dict[str, IstioUsage | MeshError]:
        return {context: copy.deepcopy(held.usage) if held else MeshError(_missing(context))
                for context, held in self._each("usage", clusters)}

    def istiod_views(self, clusters: Sequence[Cluster], revision: str | None) -> dict[str, IstiodView]:
        return {context: copy.deepcopy(held.istiod) if held and held.istiod else
                IstiodView(error=_missing(context) if not held else "Error: no running Istio pods in \"istio-system\"")
                for context, held in self._each("istiod", clusters)}

    def injection_paths(self, clusters: Sequence[Cluster], revision: str | None) -> dict[str, InjectorWebhook]:
        return {context: held.injector if held else InjectorWebhook()
                for context, held in self._each("injector", clusters)}

    def published_roots(self, clusters: Sequence[Cluster]) -> dict[str, bytes | None]:
        return {context: held.published for context, held in self._each("published", clusters) if held}

    def revisions(self, clusters: Sequence[Cluster], observed: dict[str, Observed]) -> dict[str, Revisions]:
        return {context: copy.deepcopy(held.revisions) for context, held in self._each("revisions", clusters)
                if held and held.revisions is not None and held.state.reachable}

    def quiet(self) -> "FakeClient":
        return self


ISTIOD_SELECTOR = {"app": "istiod", "istio": "pilot"}  # a primary's istiod Service selects its pods


def istiod_services(selectors: dict[str, dict[str, str]]) -> dict[str, dict]:
    """istio-system's istiod Services as read, from each one's selector ({}: none, as a remote's)."""
    return {name: {"kind": "Service", "metadata": {"name": name, "namespace": "istio-system"},
                   "spec": {"selector": selector} if selector else {}} for name, selector in selectors.items()}


def istiod_service_of(cluster: Cluster) -> dict[str, dict]:
    """The istiod Service the install made: a primary's selects its istiod pods, a remote's nothing."""
    return istiod_services({"istiod": {} if cluster.primary else ISTIOD_SELECTOR})


def installed(cluster: Cluster, fingerprint: str, **fields) -> Observed:
    """A cluster as apply leaves it set up: istio-system labelled with its network, the install recorded."""
    annotations = {APPLIED_ANNOTATION: fingerprint, **fields.pop("annotations", {})}
    return Observed(reachable=True, namespace=True, network_label=cluster.network, applied=fingerprint,
                    annotations=annotations, **{"istiod_services": istiod_service_of(cluster), **fields})
