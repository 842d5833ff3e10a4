"""The Kubernetes Gateway API CRDs, which ambient multicluster needs: which release, from where, and
what a cluster already has. Pure, apart from reading a local CRD file's version.

Istio's docs install the standard channel of the Gateway API release the Istio release was built
against, and only where ``gateways.gateway.networking.k8s.io`` is missing (many managed clusters ship
the CRDs, and they belong to whoever installed them). istiod ignores CRDs older than it needs.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from .errors import ConfigError

GATEWAY_API_GROUP = "gateway.networking.k8s.io"
GATEWAY_CRD = f"gateways.{GATEWAY_API_GROUP}"
BUNDLE_VERSION_ANNOTATION = "gateway.networking.k8s.io/bundle-version"
CHANNEL_ANNOTATION = "gateway.networking.k8s.io/channel"
STANDARD_INSTALL_URL = "https://github.com/kubernetes-sigs/gateway-api/releases/download/{version}/standard-install.yaml"

# The Gateway API release each Istio minor pins in its go.mod (and installs in its docs); some patch
# releases moved to a newer one: (minor) -> [(first patch, version), ...] (go.mod at each tag).
ISTIO_GATEWAY_API = {
    (1, 28): [(0, "v1.4.0"), (7, "v1.4.1")],
    (1, 29): [(0, "v1.4.0"), (3, "v1.4.1")],
    (1, 30): [(0, "v1.5.1")],
    (1, 31): [(0, "v1.6.0")],
}
OPTION = "--gateway-api-crds"


def _numbers(version: str) -> tuple[int, ...] | None:
    match = re.match(r"^v?(\d+)\.(\d+)(?:\.(\d+))?", version.strip())
    if not match:
        return None
    return tuple(int(part or 0) for part in match.groups())


def expected_version(istio_version: str | None) -> str | None:
    """The standard-channel release an Istio release expects, e.g. "1.29.0" -> "v1.4.0", "1.29.3" -> "v1.4.1"."""
    numbers = _numbers(istio_version or "")
    if not numbers or numbers[:2] not in ISTIO_GATEWAY_API:
        return None
    return [version for first, version in ISTIO_GATEWAY_API[numbers[:2]] if numbers[2] >= first][-1]


def is_older(have: str, want: str) -> bool:
    """True when bundle version ``have`` is older than ``want`` (unparseable versions are not judged)."""
    a, b = _numbers(have), _numbers(want)
    return bool(a and b and a < b)


@dataclass(frozen=True)
class CrdSource:
    """Where apply takes the CRDs from: a file or URL kubectl reads, and the version it holds if known."""

    location: str
    version: str | None

    @property
    def is_url(self) -> bool:
        return self.location.startswith(("https://", "http://"))


def choose_source(option: str | None, istio_version: str | None) -> CrdSource:
    """--gateway-api-crds PATH|URL, else the standard channel of the release Istio expects."""
    if option:
        given = CrdSource(option, _version_in_url(option))
        if given.is_url:
            return given
        path = Path(option).expanduser()
        if not path.is_file():
            raise ConfigError(f"{OPTION} {option}: no such file",
                              hint="give the path of a Gateway API CRD file (standard-install.yaml) or its URL")
        return CrdSource(str(path.resolve()), file_version(path))
    want = expected_version(istio_version)
    if want is None:
        known = ", ".join(f"{a}.{b}" for a, b in sorted(ISTIO_GATEWAY_API))
        raise ConfigError(f"ambient mode needs the Gateway API CRDs, and the release Istio {istio_version or '(unknown)'} "
                          f"expects is not known to setup-mesh (it knows Istio {known})",
                          hint=f"pass {OPTION} with the file or URL of the standard-install.yaml your Istio release "
                               f"documents, e.g. {STANDARD_INSTALL_URL.format(version='vX.Y.Z')}")
    return CrdSource(STANDARD_INSTALL_URL.format(version=want), want)


def offline_crds_hint(source: CrdSource | None = None) -> str:
    """Where the CRDs come from when a cluster's apply cannot download them (no network, a proxy)."""
    where = f" (it downloads {source.location})" if source is not None and source.is_url else ""
    return (f"without network access{where}, download the standard-install.yaml of the Gateway API release "
            f"your Istio expects elsewhere and pass it with `{OPTION} PATH`; apply installs it where a cluster "
            f"has none")


def _version_in_url(url: str) -> str | None:
    match = re.search(r"/(v\d+\.\d+\.\d+)/", url)
    return match.group(1) if match else None


def file_version(path: Path) -> str | None:
    """The bundle-version annotation of the CRDs in a file (they all carry the same one)."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return None
    match = re.search(re.escape(BUNDLE_VERSION_ANNOTATION) + r"""["']?\s*:\s*["']?(v?[0-9][^"'\s]*)""", text)
    return match.group(1) if match else None


@dataclass(frozen=True)
class ClusterCrds:
    """What one cluster holds: the Gateway CRD's bundle version and channel (None: no CRD)."""

    installed: bool
    version: str | None = None
    channel: str | None = None


def parse_crd_annotations(output: str) -> ClusterCrds:
    """The answer of ``kubectl get crd gateways.gateway.networking.k8s.io --ignore-not-found -o
    jsonpath={.metadata.annotations}``: nothing when there is no CRD, else its annotations as JSON."""
    import json

    text = output.strip()
    if not text:
        return ClusterCrds(installed=False)
    try:
        annotations = json.loads(text)
    except ValueError:
        annotations = {}
    if not isinstance(annotations, dict):
        annotations = {}
    return ClusterCrds(installed=True, version=annotations.get(BUNDLE_VERSION_ANNOTATION),
                       channel=annotations.get(CHANNEL_ANNOTATION))


def older_than_needed(crds: ClusterCrds, want: str | None) -> str | None:
    """A note when a cluster's own CRDs are older than the Istio release expects (they are left alone)."""
    if not crds.installed or not want:
        return None
    if crds.version is None:
        return (f"its Gateway API CRDs carry no {BUNDLE_VERSION_ANNOTATION} annotation; Istio expects {want} "
                f"or newer (left as they are)")
    if is_older(crds.version, want):
        return (f"its Gateway API CRDs are {crds.version}, older than the {want} Istio expects: istiod ignores "
                f"kinds newer than the CRDs serve (left as they are; upgrade them with kubectl apply --server-side "
                f"-f {STANDARD_INSTALL_URL.format(version=want)})")
    return None
