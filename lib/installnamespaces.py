"""The namespaces an install needs to exist: `istioctl install` creates only the control plane's
(istio-system; Istio's operator/pkg/install/install.go, installSystemNamespace) and applies every other
component's objects into the namespace the IstioOperator names, which fails ("namespaces ... not found")
when that namespace does not exist: after istiod is installed, halfway through the install. Found
before any cluster is touched instead."""
from __future__ import annotations

from typing import Any

from .baseconfig import GATEWAY_COMPONENTS, SWITCHED_COMPONENTS, enabled_components
from .errors import ConfigError
from .executor import Phase
from .kube import Observed, Tools
from .names import ISTIO_NAMESPACE

INSTALL_TITLES = ("install Istio",)  # the steps that run `istioctl install` with a cluster's own IstioOperator
REVISION_INSTALL = "install revision "  # a canary upgrade's install of a revision
_GATEWAY_KIND = {"ingressGateways": "ingress gateway", "egressGateways": "egress gateway"}


def component_namespaces(operator: dict[str, Any]) -> dict[str, list[str]]:
    """namespace -> the components the IstioOperator installs there, for each namespace other than
    istio-system that an enabled component names (components.<name>.namespace, a gateway's namespace)."""
    spec = operator.get("spec") if isinstance(operator.get("spec"), dict) else {}
    components = spec.get("components") if isinstance(spec.get("components"), dict) else {}
    enabled = enabled_components(operator)
    found: dict[str, list[str]] = {}
    for key in SWITCHED_COMPONENTS:
        component = components.get(key)
        if key in enabled and isinstance(component, dict) and component.get("namespace"):
            found.setdefault(str(component["namespace"]), []).append(f"components.{key}")
    for key in GATEWAY_COMPONENTS:
        for gateway in components.get(key) or []:
            if isinstance(gateway, dict) and gateway.get("enabled") is not False and gateway.get("namespace"):
                found.setdefault(str(gateway["namespace"]), []).append(
                    f"{_GATEWAY_KIND[key]} {gateway.get('name', '')}".strip())
    found.pop(ISTIO_NAMESPACE, None)
    return found


def _installs(phases: list[Phase]) -> set[str]:
    """The clusters the plan runs `istioctl install` in with their own IstioOperator."""
    return {context for phase in phases for context, steps in phase.steps.items()
            if any(s.title in INSTALL_TITLES or s.title.startswith(REVISION_INSTALL) for s in steps)}


def missing_namespaces_refusal(phases: list[Phase], operators: dict[str, dict], observed: dict[str, Observed | None],
                               tools: Tools, clusters: dict) -> ConfigError | None:
    """The refusal, naming each namespace, what goes there and the clusters that lack it, when a cluster the
    plan installs lacks a namespace its IstioOperator (``operators``, by context) puts components in.
    ``clusters``: context -> Cluster, for the commands that create them."""
    lacking: dict[str, tuple[list[str], list[str]]] = {}  # namespace -> (components, contexts)
    installs = _installs(phases)
    for context in (c for c in clusters if c in installs):
        seen = observed.get(context)
        if seen is None or seen.namespaces is None or context not in operators:
            continue  # not read whole: istioctl says it, if it comes to that
        for namespace, what in component_namespaces(operators[context]).items():
            if namespace not in seen.namespaces:
                lacking.setdefault(namespace, (what, []))[1].append(context)
    if not lacking:
        return None
    lines = [f"  {namespace} ({', '.join(what)}): not in {', '.join(contexts)}"
             for namespace, (what, contexts) in lacking.items()]
    commands = [tools.kubectl_cmd(clusters[context], "create", "namespace", namespace).pasteable()
                for namespace, (_, contexts) in lacking.items() for context in contexts]
    return ConfigError("base.yaml puts components in namespaces that `istioctl install` does not create (it "
                       "creates istio-system only), and these clusters lack them:\n" + "\n".join(lines),
                       hint="create them, then run apply again: " + "; ".join(f"`{c}`" for c in commands)
                            + " (or drop namespace: from base.yaml: the component then goes into istio-system)")
