"""Istio's version rules for moving a mesh, as pure functions: what a canary upgrade may do, which
Kubernetes versions a release supports, and which proxy/control-plane pairs are out of skew.

Sources (Istio's documentation and source; the table below is theirs, the wording ours):
- canary upgrades may skip one minor version (istio.io docs/setup/upgrade/canary); revision names
  are DNS-1123 labels, so a release's dots become dashes (``1.31.0`` -> ``1-31-0``; istioctl install
  refuses anything else, operator/cmd/mesh/install.go "invalid revision specified").
- the control plane may be one minor version ahead of the proxies, never behind them
  (istio.io docs/releases/supported-releases).
- the Kubernetes versions each minor supports: istio.io data/compatibility/supportStatus.yml; the
  lower bound is also istioctl's MinK8SVersion (istioctl/pkg/install/k8sversion/version.go: 29 at
  1.28, 30 at 1.29, 32 at 1.30.x and 1.31.0-rc.0). 1.31 is not in that table yet: it takes 1.30's
  range, which its MinK8SVersion matches.

Nothing here reads a cluster: callers hand in what they read (versions as strings), so every rule is
checked before any cluster is touched, and tested without one.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable, Mapping

# Istio minor -> (oldest, newest) Kubernetes minor it supports (both 1.x).
KUBERNETES_SUPPORT: dict[tuple[int, int], tuple[int, int]] = {
    (1, 28): (30, 34),
    (1, 29): (31, 35),
    (1, 30): (32, 36),
    (1, 31): (32, 36),
}

_VERSION = re.compile(r"v?(\d+)\.(\d+)(?:\.(\d+))?(?:[-+]([0-9A-Za-z.-]+))?")


@dataclass(frozen=True, order=True)
class Version:
    major: int
    minor: int
    patch: int = 0
    pre: str = ""  # "rc.0", "beta.1": sorts by text only among equal major.minor.patch

    @property
    def minor_line(self) -> tuple[int, int]:
        return self.major, self.minor

    def __str__(self) -> str:
        return f"{self.major}.{self.minor}.{self.patch}" + (f"-{self.pre}" if self.pre else "")


def parse_version(text: str) -> Version | None:
    """``1.31.0``, ``1.31.0-rc.0``, ``v1.33.4`` (Kubernetes' gitVersion) or ``1.33``; None otherwise."""
    m = _VERSION.fullmatch((text or "").strip())
    if not m:
        return None
    return Version(int(m.group(1)), int(m.group(2)), int(m.group(3) or 0), m.group(4) or "")


def revision_name(version: str) -> str:
    """The canary revision Istio's docs name a release by: ``1.31.0`` -> ``1-31-0``."""
    return re.sub(r"[^0-9a-z]+", "-", version.strip().lower()).strip("-")


def minors_between(old: Version, new: Version) -> int:
    """How many minor versions ``new`` is ahead of ``old`` (negative: behind); majors count 100 apart."""
    return (new.major - old.major) * 100 + new.minor - old.minor


@dataclass(frozen=True)
class ClusterVersions:
    """What one cluster runs and is asked to run. ``control_planes``: the Istio versions of the control
    planes serving it now (a remote: its primary's); ``proxies``: the versions its proxies run;
    ``kubernetes``: its API server's version; ``primary``: a remote's primary (None: a primary)."""
    context: str
    target: str
    control_planes: tuple[str, ...] = ()
    proxies: tuple[str, ...] = ()
    kubernetes: str | None = None
    primary: str | None = None


@dataclass(frozen=True)
class Refusal:
    context: str
    rule: str  # skew_version_invalid, skew_skips_minor, skew_downgrade, skew_proxies_ahead, skew_remote_apart,
    #            skew_kubernetes_unsupported
    message: str
    hint: str

    def __str__(self) -> str:
        return f"{self.message}\n  fix: {self.hint}"


def _target_rules(c: ClusterVersions, target: Version) -> list[Refusal]:
    out = []
    for text in sorted(set(c.control_planes)):
        current = parse_version(text)
        if current is None:
            continue
        ahead = minors_between(current, target)
        if ahead > 2:
            skipped = ", ".join(f"{current.major}.{current.minor + i}" for i in range(1, ahead))
            out.append(Refusal(c.context, "skew_skips_minor",
                               f"{c.context}: moving Istio {current} -> {target} skips {ahead - 1} minor versions "
                               f"({skipped}); a canary upgrade may skip at most one",
                               f"pin istio_version to a {current.major}.{current.minor + 2}.x release in "
                               f"topology.yaml, apply, then pin {target}"))
        elif ahead < 0:
            out.append(Refusal(c.context, "skew_downgrade",
                               f"{c.context}: moving Istio {current} -> {target} is a downgrade across minor "
                               "versions, which Istio does not support",
                               f"pin istio_version to a {current.major}.{current.minor}.x release (or newer) in "
                               "topology.yaml; within one minor a patch may go back"))
    return out


def _proxy_rules(c: ClusterVersions, target: Version) -> list[Refusal]:
    ahead = sorted({p for p in c.proxies if (v := parse_version(p)) is not None and minors_between(target, v) > 0},
                   key=parse_version)
    if not ahead:
        return []
    return [Refusal(c.context, "skew_proxies_ahead",
                    f"{c.context}: proxies run Istio {', '.join(ahead)}, newer than the {target} control plane "
                    "pinned for it; a control plane may lead its proxies by one minor version, never trail them",
                    f"pin istio_version for {c.context} to {ahead[-1]} or newer in topology.yaml")]


def _kubernetes_rule(c: ClusterVersions, target: Version) -> list[Refusal]:
    kube = parse_version(c.kubernetes or "")
    supported = KUBERNETES_SUPPORT.get(target.minor_line)
    if kube is None or supported is None:
        return []
    low, high = supported
    if kube.major == 1 and low <= kube.minor <= high:
        return []
    return [Refusal(c.context, "skew_kubernetes_unsupported",
                    f"{c.context}: Kubernetes {kube} is outside what Istio {target.major}.{target.minor} supports "
                    f"(1.{low} to 1.{high})",
                    f"upgrade {c.context}'s Kubernetes to 1.{low}-1.{high}, or pin an Istio release that "
                    f"supports 1.{kube.minor} for it")]


def check_targets(clusters: Iterable[ClusterVersions]) -> list[Refusal]:
    """Every rule a move to the pinned versions breaks, cluster by cluster, in the order given."""
    clusters = list(clusters)
    targets = {c.context: c.target for c in clusters}
    out: list[Refusal] = []
    for c in clusters:
        target = parse_version(c.target)
        if target is None:
            out.append(Refusal(c.context, "skew_version_invalid",
                               f"{c.context}: istio_version {c.target!r} is not an Istio release (X.Y.Z)",
                               "set istio_version to a release such as 1.31.0 in topology.yaml"))
            continue
        if c.primary is not None and c.primary in targets and targets[c.primary] != c.target:
            out.append(Refusal(c.context, "skew_remote_apart",
                               f"{c.context}: a remote runs its primary's control plane, but it is pinned to "
                               f"{c.target} and its primary {c.primary} to {targets[c.primary]}",
                               f"remove istio_version under {c.context} in topology.yaml (a remote moves with "
                               "its primary)"))
        out += _target_rules(c, target) + _proxy_rules(c, target) + _kubernetes_rule(c, target)
    return out


@dataclass(frozen=True)
class ProxySkew:
    """Proxies of one revision out of skew with that revision's control plane."""
    revision: str
    control_plane: str
    proxy_version: str
    proxies: int
    ahead: bool  # the proxies are newer than the control plane (else it leads them by more than one minor)


def proxy_skew(control_planes: Mapping[str, str], proxies: Mapping[tuple[str, str], int]) -> list[ProxySkew]:
    """``control_planes``: revision -> Istio version; ``proxies``: (revision, proxy version) -> count. The
    pairs Istio does not support: a proxy newer than its control plane, or more than one minor behind."""
    out = []
    for (revision, version), count in sorted(proxies.items()):
        cp, proxy = parse_version(control_planes.get(revision, "")), parse_version(version)
        if cp is None or proxy is None:
            continue
        lead = minors_between(proxy, cp)
        if lead < 0 or lead > 1:
            out.append(ProxySkew(revision, str(cp), str(proxy), count, ahead=lead < 0))
    return out
