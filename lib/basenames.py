"""The names base.yaml gives the control plane: its namespace, its revision and its IstioOperator's name,
each refused before any cluster is touched where istioctl or the API server would refuse it halfway."""
from __future__ import annotations

import re

from .errors import ConfigError
from .names import ISTIO_NAMESPACE
from .yamlcheck import is_dns1123_label, value_at
from .yamlfile import LocatedDoc

# Where istioctl puts the control plane: spec.namespace, passed on to the charts as values.global.istioNamespace,
# which base.yaml may also set. istiod takes its CA (secret cacerts) and the remote secrets from its own
# namespace, where setup-mesh writes them: istio-system.
_CONTROL_PLANE_NAMESPACE_KEYS = (("spec", "namespace"), ("spec", "values", "global", "istioNamespace"))


def check_control_plane_namespace(doc: LocatedDoc) -> None:
    for keys in _CONTROL_PLANE_NAMESPACE_KEYS:
        present, value = value_at(doc.data, keys)
        if present and value is not None and value != ISTIO_NAMESPACE:
            raise ConfigError(f"{doc.where(*keys)}: {'.'.join(keys)} {value}: setup-mesh keeps the control plane "
                              f"in {ISTIO_NAMESPACE}, where it writes secret cacerts and the remote secrets; istiod "
                              f"in {value} would find neither (its own CA, no peers)",
                              hint=f"delete the line (or set it to {ISTIO_NAMESPACE})")


# A revision names istiod-<revision>, its webhook and its labels: istioctl refuses one that is no DNS-1123
# label ("invalid revision specified", Istio's operator/pkg/apis/validation: labels.IsDNS1123Label).
_REVISION_KEYS = (("spec", "revision"), ("spec", "values", "revision"))
# istiod's Service is istiod-<revision> (the istio-discovery chart's templates/service.yaml, and the remote
# chart's), and a Service name is a DNS-1035 label of at most 63 characters: istioctl accepts a longer
# revision, then the API server refuses the Service halfway through the install.
_REVISION_MAX = 63 - len("istiod-")


def check_revision(doc: LocatedDoc) -> None:
    for keys in _REVISION_KEYS:
        present, value = value_at(doc.data, keys)
        if present and value and not is_dns1123_label(value):
            raise ConfigError(f"{doc.where(*keys)}: {'.'.join(keys)} {value!r} is no valid revision: istioctl install "
                              f"would fail with `invalid revision specified`",
                              hint="a revision is a DNS-1123 label: lower-case letters, digits and '-', e.g. "
                                   + (re.sub(r"[^a-z0-9-]+", "-", value.lower()).strip("-")[:_REVISION_MAX].strip("-")
                                      or "canary"))
        if present and value and len(value) > _REVISION_MAX:
            raise ConfigError(f"{doc.where(*keys)}: {'.'.join(keys)} {value!r} has {len(value)} characters: istiod's "
                              f"Service istiod-{value} would be longer than the 63 a Service name may have, and the "
                              f"API server would refuse it halfway through istioctl install",
                              hint=f"use a revision of at most {_REVISION_MAX} characters")


def check_operator_name(doc: LocatedDoc) -> None:
    present, name = value_at(doc.data, ("metadata", "name"))
    if present and name is not None:
        # The name labels everything istioctl installs for it; the east-west gateway already uses `eastwest`.
        if not is_dns1123_label(name) or name == "eastwest":
            raise ConfigError(f"{doc.where('metadata', 'name')}: metadata.name {name!r} cannot name the control plane's IstioOperator",
                              hint="use a DNS-1123 label other than `eastwest` (the east-west gateway's), "
                                   "or delete the line to use `setup-mesh`")
