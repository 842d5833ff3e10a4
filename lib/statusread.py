"""status, reading: what status reads from a cluster beyond the shared cluster read (lib/kube.py), and how
it parses it: istiod's Deployment, istiod's own view of its remote clusters (`istioctl remote-clusters`), a
remote's sidecar injector webhook and the root bundle istiod publishes. Reads, never judges."""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, replace

from .checks import SYNCED
from .config import Cluster
from .errors import MeshError
from .executor import RunContext, read_clusters
from .kube import Tools, parse_published_roots
from .names import REVISION_LABEL, ZTUNNEL_DAEMONSET
from .reporter import Reporter


ISTIOD_CONTAINER = "discovery"
ZTUNNEL = ZTUNNEL_DAEMONSET
# Image tag suffixes that name a build flavour, not a version.
_TAG_VARIANTS = ("-distroless", "-debug")
# Istio release tags: 1.29.0, 1.30.0-beta.1, 1.29.0-rc.0 (and istio's own dev builds, 1.30-dev).
_RELEASE_TAG = re.compile(r"^\d+\.\d+(\.\d+)?(-[0-9A-Za-z.]+)?$")
UNKNOWN_VERSION = "unknown"


# --- what one cluster shows ----------------------------------------------------------------------

@dataclass
class Istiod:
    """The istiod Deployment, as far as status needs it."""

    read: bool = False  # False when the read failed (see error)
    installed: bool = False
    version: str | None = None
    ready: bool | None = None  # at least one ready replica
    cluster_id: str | None = None  # its CLUSTER_ID env: the cluster name Istio runs under
    error: str | None = None
    revision: str | None = None  # its istio.io/rev label; None for the default revision


def image_version(image: str | None) -> str | None:
    """``docker.io/istio/pilot:1.29.0`` -> ``1.29.0``; None without an image; UNKNOWN_VERSION when the
    image is pinned by digest alone or its tag is not a version (``latest``, a custom build): a tag
    like that says nothing reliable about what runs."""
    if not image:
        return None
    image = image.split("@", 1)[0]
    last = image.rsplit("/", 1)[-1]
    if ":" not in last:
        return UNKNOWN_VERSION
    tag = last.rsplit(":", 1)[1]
    for variant in _TAG_VARIANTS:
        tag = tag.removesuffix(variant)
    return tag if _RELEASE_TAG.match(tag) else UNKNOWN_VERSION


def parse_istiod(deployment: dict | None) -> Istiod:
    """The istiod Deployment as the cluster read returned it (None: not there)."""
    if not deployment:
        return Istiod(read=True, installed=False)
    data = deployment
    containers = (((data.get("spec") or {}).get("template") or {}).get("spec") or {}).get("containers") or []
    container = next((c for c in containers if c.get("name") == ISTIOD_CONTAINER), containers[0] if containers else {})
    cluster_id = None
    for env in container.get("env") or []:
        if env.get("name") == "CLUSTER_ID" and env.get("value"):
            cluster_id = env["value"]
    ready = int((data.get("status") or {}).get("readyReplicas") or 0) > 0
    revision = ((data.get("metadata") or {}).get("labels") or {}).get(REVISION_LABEL)
    return Istiod(read=True, installed=True, version=image_version(container.get("image")), ready=ready,
                  cluster_id=cluster_id, revision=None if revision in (None, "", "default") else revision)


# --- istiod's own view: istioctl remote-clusters -----------------------------------------------------

@dataclass(frozen=True)
class RemoteClusterRow:
    name: str  # the cluster id istiod knows the remote by
    secret: str  # "<namespace>/<secret>"; empty for istiod's own cluster
    status: str  # synced | syncing | timeout | closed
    istiod: str  # the istiod pod reporting it
    revision: str = ""


def parse_remote_clusters(output: str) -> list[RemoteClusterRow]:
    """The table ``istioctl remote-clusters`` prints: NAME SECRET STATUS ISTIOD (1.30), plus REVISION (1.31).

    Columns are padded to their widest cell and SECRET is empty for istiod's own cluster, so cells are
    cut at the header's column starts rather than split on blanks.
    """
    lines = [line for line in output.splitlines() if line.strip()]
    header = next((i for i, line in enumerate(lines) if line.split()[:1] == ["NAME"]), None)
    if header is None:
        raise ValueError("no NAME SECRET STATUS ISTIOD header in the output of istioctl remote-clusters")
    columns = lines[header].split()
    if columns[:4] != ["NAME", "SECRET", "STATUS", "ISTIOD"]:
        raise ValueError(f"unexpected columns {' '.join(columns)} from istioctl remote-clusters")
    starts, at = [], 0
    for column in columns:
        at = lines[header].index(column, at)
        starts.append(at)
        at += len(column)
    rows = []
    for line in lines[header + 1:]:
        cells = [line[start:end].strip() for start, end in zip(starts, starts[1:] + [len(line)])]
        cells += [""] * (len(columns) - len(cells))
        values = dict(zip(columns, cells))
        rows.append(RemoteClusterRow(values["NAME"], values["SECRET"], values["STATUS"], values["ISTIOD"],
                                     values.get("REVISION", "")))
    return rows


def istiod_view(rows: list[RemoteClusterRow]) -> dict[str, str]:
    """Remote cluster -> what istiod reports for it; with several istiod pods, the worst report wins."""
    rank = {SYNCED: 0, "syncing": 1, "closed": 2, "timeout": 3}
    view: dict[str, str] = {}
    for row in rows:
        if not row.secret:  # istiod's own cluster
            continue
        if row.name not in view or rank.get(row.status, 4) > rank.get(view[row.name], 4):
            view[row.name] = row.status
    return view


@dataclass
class IstiodView:
    """What one cluster's istiod reports about its remote clusters; None fields when it was not asked."""

    remotes: dict[str, str] | None = None  # cluster name -> synced | syncing | timeout | closed
    error: str | None = None


@dataclass(frozen=True)
class InjectorWebhook:
    """A remote's sidecar injector webhook as read: the path it calls (None: none, or it calls a URL), and
    whether every webhook has a caBundle (None: no webhook read). The chart leaves caBundle empty; the
    primary's istiod patches it in, and until then kube-apiserver cannot trust istiod and refuses pods."""

    path: str | None = None
    trusted: bool | None = None


def read_injection_paths(clusters: list[Cluster], revision: str | None, tools: Tools, runner, reporter: Reporter,
                         parallel: int) -> dict[str, InjectorWebhook]:
    """Each remote's sidecar injector webhook: the path it calls and whether it has its caBundle."""
    name = f"istio-sidecar-injector-{revision}" if revision else "istio-sidecar-injector"

    def read(ctx: RunContext, cluster: Cluster) -> InjectorWebhook:
        command = replace(tools.kubectl_cmd(cluster, "get", "mutatingwebhookconfiguration", name, "-o", "json",
                                            "--ignore-not-found"), check=False)
        try:
            result = ctx.run(command)
            hooks = (json.loads(result.stdout or "{}").get("webhooks") or []) if result.ok else []
        except (MeshError, ValueError):
            return InjectorWebhook()
        paths = {((h.get("clientConfig") or {}).get("service") or {}).get("path") for h in hooks}
        trusted = all((h.get("clientConfig") or {}).get("caBundle") for h in hooks) if hooks else None
        return InjectorWebhook(paths.pop() if len(paths) == 1 else None, trusted)

    return read_clusters(clusters, runner, reporter, parallel, "read the sidecar injector", read)


def read_published_roots(clusters: list[Cluster], tools: Tools, runner, reporter: Reporter,
                         parallel: int) -> dict[str, bytes | None]:
    """The root bundle each cluster's istiod publishes (istio-ca-root-cert in istio-system); a cluster whose
    ConfigMap could not be read is left out (not judged)."""

    def read(ctx: RunContext, cluster: Cluster) -> bytes | None | MeshError:
        try:
            result = ctx.run(tools.published_roots(cluster, tools.timeout))
            return parse_published_roots(result.stdout) if result.ok else MeshError(result.stderr_tail())
        except ValueError as exc:
            return MeshError(str(exc))
        except MeshError as exc:
            return exc

    found = read_clusters(clusters, runner, reporter, parallel, "read the roots istiod publishes", read)
    return {ctx: value for ctx, value in found.items() if not isinstance(value, MeshError)}


def read_istiod_views(clusters: list[Cluster], revision: str | None, tools: Tools, runner, reporter: Reporter,
                      parallel: int) -> dict[str, IstiodView]:
    """``istioctl remote-clusters`` against each cluster's istiod, in parallel."""
    args = ["remote-clusters"] + (["--revision", revision] if revision else [])

    def read(ctx: RunContext, cluster: Cluster) -> IstiodView:
        command = replace(tools.istioctl_cmd(cluster, *args), check=False)
        try:
            result = ctx.run(command)
            if result.ok:
                return IstiodView(remotes=istiod_view(parse_remote_clusters(result.stdout)))
            return IstiodView(error=result.stderr_tail() or f"exit code {result.exit_code}")
        except ValueError as exc:
            return IstiodView(error=str(exc))
        except MeshError as exc:
            return IstiodView(error=exc.message)

    return read_clusters(clusters, runner, reporter, parallel, "read istiod's remote clusters", read)
