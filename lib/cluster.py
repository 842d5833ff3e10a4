"""Reading the clusters: one typed client for every read apply, teardown, status, verify and rotate-certs make.

``ClusterClient`` is what the commands ask: what each cluster holds (istio-system, its labels and
annotations, cacerts, what was installed, the east-west gateway and its address, remote secrets), who
else uses Istio there, istiod's own view of its remote clusters, a remote's sidecar injector (its
injection path and trust) and the root bundle istiod publishes. Each read takes a list of clusters and
answers per context with typed values; a cluster that cannot be read is an answer too (``Observed`` with
an error, an ``IstiodView`` with an error, ...), never an exception.

``KubeClient`` is the real one: kubectl and istioctl through the runner, clusters read in parallel
(executor.read_clusters), the answers parsed by lib/kube.py and lib/statusread.py. Tests fill
an in-memory client (tests/fakecluster.py) with the same types, so every judgment made of these answers
(lib/assess.py, status) is tested without a cluster or a program.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Protocol, Sequence

from .config import Cluster
from .errors import MeshError
from .kube import Observed, Tools
from .istiousage import IstioUsage
from .names import ISTIO_NAMESPACE
from .reporter import Reporter
from .statusread import InjectorWebhook, IstiodView, read_injection_paths, read_istiod_views, read_published_roots
from .statusrevisions import Revisions, read_revisions
from .workspace import inspect_clusters, read_istio_usage

READ_STATE_TITLE = "read current state"


class ClusterClient(Protocol):
    def read_state(self, clusters: Sequence[Cluster], *, ambient: bool = False,
                   title: str = READ_STATE_TITLE, ztunnel_namespace: str = ISTIO_NAMESPACE,
                   istio_objects_in: frozenset[str] = frozenset(), published_roots: bool = False) -> dict[str, Observed]:
        """What each cluster holds (``ambient``: also the Gateway API CRDs, the east-west Gateway, and
        ztunnel in ``ztunnel_namespace``; ``istio_objects_in``: the clusters whose Istio objects in
        istio-system are read too; ``published_roots``: also the root bundle istiod publishes, as
        ``published_roots`` reads it)."""

    def istio_usage(self, clusters: Sequence[Cluster], ours: frozenset[str]) -> dict[str, IstioUsage | MeshError]:
        """The Istio resources and control planes others made (``ours``: setup-mesh's IstioOperator names)."""

    def istiod_views(self, clusters: Sequence[Cluster], revision: str | None) -> dict[str, IstiodView]:
        """What each cluster's istiod reports about its remote clusters (istioctl remote-clusters)."""

    def injection_paths(self, clusters: Sequence[Cluster], revision: str | None) -> dict[str, InjectorWebhook]:
        """Each (remote) cluster's sidecar injector webhook: the path it calls, whether it has its caBundle."""

    def published_roots(self, clusters: Sequence[Cluster]) -> dict[str, bytes | None]:
        """The root bundle each istiod publishes (istio-ca-root-cert); a cluster not read is left out."""

    def revisions(self, clusters: Sequence[Cluster], observed: dict[str, Observed]) -> dict[str, Revisions]:
        """Each reachable cluster's control-plane revisions, default tag, proxies per revision and Kubernetes
        version; a cluster whose read failed is left out."""

    def quiet(self) -> "ClusterClient":
        """The same client, its reads reporting no progress."""


@dataclass(frozen=True)
class KubeClient:
    """The clusters through kubectl and istioctl, ``parallel`` at a time; progress goes to ``reporter``."""

    tools: Tools
    runner: object
    reporter: Reporter
    parallel: int

    def read_state(self, clusters: Sequence[Cluster], *, ambient: bool = False,
                   title: str = READ_STATE_TITLE, ztunnel_namespace: str = ISTIO_NAMESPACE,
                   istio_objects_in: frozenset[str] = frozenset(), published_roots: bool = False) -> dict[str, Observed]:
        return inspect_clusters(list(clusters), self.tools, self.runner, self.reporter, self.parallel, title=title,
                                ambient=ambient, ztunnel_namespace=ztunnel_namespace, istio_objects_in=istio_objects_in,
                                published_roots=published_roots)

    def istio_usage(self, clusters: Sequence[Cluster], ours: frozenset[str]) -> dict[str, IstioUsage | MeshError]:
        return read_istio_usage(list(clusters), self.tools, self.runner, self.reporter, self.parallel, ours)

    def istiod_views(self, clusters: Sequence[Cluster], revision: str | None) -> dict[str, IstiodView]:
        return read_istiod_views(list(clusters), revision, self.tools, self.runner, self.reporter, self.parallel)

    def injection_paths(self, clusters: Sequence[Cluster], revision: str | None) -> dict[str, InjectorWebhook]:
        return read_injection_paths(list(clusters), revision, self.tools, self.runner, self.reporter, self.parallel)

    def published_roots(self, clusters: Sequence[Cluster]) -> dict[str, bytes | None]:
        return read_published_roots(list(clusters), self.tools, self.runner, self.reporter, self.parallel)

    def revisions(self, clusters: Sequence[Cluster], observed: dict[str, Observed]) -> dict[str, Revisions]:
        return read_revisions(list(clusters), observed, self.tools, self.runner, self.reporter, self.parallel)

    def quiet(self) -> "KubeClient":
        return replace(self, reporter=Reporter(console=self.reporter.console, err_console=self.reporter.err,
                                               quiet=True))
