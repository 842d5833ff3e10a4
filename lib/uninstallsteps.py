"""The steps that remove what setup-mesh installed in a cluster, decided from what the cluster holds."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .config import Cluster
from .executor import Step
from .kube import GATEWAY_RESOURCE, Observed, Tools
from .istiousage import IstioUsage
from .names import (APPLIED_ANNOTATION, COMPONENT_LABEL, CONTROL_PLANE_CLUSTERS, CROSS_NETWORK_GATEWAY,
                    DATA_PLANE_ANNOTATION, EASTWEST_NAME, FIELD_MANAGER, ISTIO_NAMESPACE, MANAGED_BY_LABEL,
                    MANAGED_GATEWAY_LABEL, OWNER_LABEL, OWNER_NAMESPACE_LABEL, REVISION_LABEL,
                    TRANSITION_ANNOTATION)
from .runner import Command
from .yamlfile import dump

UNINSTALL_DIR = Path(".setup-mesh") / "uninstall"


@dataclass(frozen=True)
class Uninstall:
    """How to remove setup-mesh from one cluster, decided from what the cluster holds."""

    workdir: Path
    ours: frozenset[str]  # the IstioOperator names setup-mesh installs (control plane, east-west gateway)
    usage: IstioUsage  # Istio objects others made
    remove_crds: bool = False  # delete Istio's CRDs even though others' resources exist (and go with them)
    foreign_cacerts: str | None = None  # a cacerts setup-mesh did not make (whose CA): it and istio-system stay
    # The cluster ran an ambient mesh: the Gateway API CRDs it needed stay (apply installed them only where
    # none were, and other Gateway API resources may use them; Istio's uninstall does not remove them).
    gateway_api_kept: bool = False

    @property
    def purge(self) -> bool:
        return self.remove_crds or not self.usage.foreign

    @property
    def keeps_namespace(self) -> bool:
        """Deleting istio-system would delete what others keep there: their CA, their objects, or their Istio
        resources (unless --remove-crds deletes those anyway)."""
        return bool(self.foreign_cacerts or self.usage.namespace_objects
                    or (not self.purge and self.usage.in_namespace(ISTIO_NAMESPACE)))


def _our_components(seen: Observed, ours: frozenset[str]) -> list[tuple[str | None, str | None, str]]:
    """(IstioOperator name, its namespace, revision) of each istio-system Deployment and istiod Service that
    setup-mesh's IstioOperators installed; the name is None for a control plane earlier versions installed
    unnamed. The Services count because a remote's install runs no Deployment: without them its
    IstioOperator would not be uninstalled, and its injector (failurePolicy Fail) would stay, calling an
    istiod Service that is gone."""
    found = []
    for item in [*seen.deployments.values(), *seen.istiod_services.values()]:
        labels = (item.get("metadata") or {}).get("labels") or {}
        if COMPONENT_LABEL not in labels:
            continue
        owner, revision = labels.get(OWNER_LABEL), labels.get(REVISION_LABEL) or "default"
        if owner in ours:
            found.append((owner, labels.get(OWNER_NAMESPACE_LABEL), revision))
        elif owner in (None, "", "unknown"):
            found.append((None, None, revision))
    return found


def _installed_operators(seen: Observed, ours: frozenset[str]) -> tuple[list[tuple[str, str | None]], list[str]]:
    """setup-mesh's IstioOperators (name, namespace) found on istio-system's deployments, and the
    revisions of control planes installed unnamed by earlier versions."""
    components = _our_components(seen, ours)
    named = {(name, namespace) for name, namespace, _ in components if name is not None}
    return (sorted(named, key=lambda n: (n[0], n[1] or "")),
            sorted({revision for name, _, revision in components if name is None}))


def _our_revisions(seen: Observed, ours: frozenset[str]) -> set[str]:
    """The revisions of what setup-mesh's IstioOperators (or earlier versions' unnamed ones) installed here."""
    return {revision for _, _, revision in _our_components(seen, ours)}


def uninstall_operator(tools: Tools, workdir: Path, cluster: Cluster, name: str,
                        namespace: str | None = None) -> tuple[tuple[Path, str], Command]:
    """The file and command that remove what one IstioOperator installed: `uninstall -f` selects by the
    file's metadata.name (and namespace); nothing else in the file matters."""
    path = workdir / UNINSTALL_DIR / f"{cluster.name}-{name}.yaml"
    metadata = {"name": name, **({"namespace": namespace} if namespace else {})}
    manifest = dump({"apiVersion": "install.istio.io/v1alpha1", "kind": "IstioOperator", "metadata": metadata})
    return (path, manifest), tools.istioctl_cmd(cluster, "uninstall", "-y", "-f", str(path))


def ambient_gateway_removal(tools: Tools, cluster: Cluster) -> list[Command]:
    return [tools.kubectl_cmd(cluster, "delete", GATEWAY_RESOURCE, EASTWEST_NAME, "-n", ISTIO_NAMESPACE,
                              "--ignore-not-found"),
            tools.kubectl_cmd(cluster, "delete", "deployment,service,serviceaccount", "-n", ISTIO_NAMESPACE,
                              "-l", f"gateway.networking.k8s.io/gateway-name={EASTWEST_NAME},{MANAGED_GATEWAY_LABEL}",
                              "--ignore-not-found")]


def await_namespace_deleted_step(tools: Tools, cluster: Cluster) -> Step:
    """Nothing can be created in a namespace being deleted (kube-apiserver answers 403 Forbidden)."""
    return Step(f"{ISTIO_NAMESPACE} is being deleted: wait until it is gone", commands=[tools.kubectl_cmd(
        cluster, "wait", "--for=delete", f"namespace/{ISTIO_NAMESPACE}", f"--timeout={tools.timeout:g}s")])


def uninstall_steps(tools: Tools, cluster: Cluster, secrets: list[str], seen: Observed, how: Uninstall) -> list[Step]:
    """setup-mesh's Istio, then its secrets, then istio-system. Istio's CRDs (and with them every Istio
    resource) go only when nobody else uses Istio there, or when asked to with --remove-crds."""
    steps = []
    if how.purge:
        steps.append(Step("uninstall Istio and its CRDs", commands=[tools.istioctl_cmd(cluster, "uninstall", "--purge", "-y")],
                          change="- Istio (istioctl uninstall --purge)"))
    else:
        named, revisions = _installed_operators(seen, how.ours)
        files, commands = [], []
        for name, namespace in named:
            file, command = uninstall_operator(tools, how.workdir, cluster, name, namespace)
            files.append(file)
            commands.append(command)
        for revision in revisions:
            commands.append(tools.istioctl_cmd(cluster, "uninstall", "-y", "-r", revision))
        commands.append(tools.kubectl_cmd(cluster, "delete", "gateways.networking.istio.io", CROSS_NETWORK_GATEWAY,
                                          "-n", ISTIO_NAMESPACE, "--ignore-not-found"))
        # What exposes istiod to remotes carries setup-mesh's label (Istio's CRDs, and so the kinds, stay).
        commands.append(tools.kubectl_cmd(cluster, "delete", "gateways.networking.istio.io,virtualservices.networking.istio.io",
                                          "-n", ISTIO_NAMESPACE, "-l", f"{MANAGED_BY_LABEL}={FIELD_MANAGER}",
                                          "--ignore-not-found"))
        if seen.eastwest_made_by == "gateway":
            # istiod made this one for the ambient Gateway; with istiod gone nothing would reconcile it.
            commands.extend(ambient_gateway_removal(tools, cluster))
        steps.append(Step("uninstall setup-mesh's IstioOperators (Istio's CRDs are kept)", commands=commands,
                          files=files, change="- setup-mesh's IstioOperators and Gateway (Istio's CRDs are kept: "
                                              f"others use Istio here: {how.usage.describe()})"))
    # A default tag no uninstall removes (IstioUsage.default_tag), left pointing at a revision removed here,
    # would send every pod of an istio-injection=enabled namespace to an injector that is gone, and the API
    # server would refuse them.
    tag = how.usage.default_tag
    if tag and (how.purge or tag in _our_revisions(seen, how.ours)):
        steps.append(Step(f"remove the default revision tag ({tag})", commands=[
            tools.istioctl_cmd(cluster, "tag", "remove", "default", "-y")],
            change=f"- default revision tag → {tag}"))
    names = secrets if how.foreign_cacerts else ["cacerts", *secrets]
    if names:
        some = f"{len(secrets)} remote secret{'s' * (len(secrets) != 1)}"
        steps.append(Step("delete cacerts and remote secrets" if not how.foreign_cacerts else "delete remote secrets",
                          commands=[tools.kubectl_cmd(cluster, "delete", "secret", "-n", ISTIO_NAMESPACE,
                                                      "--ignore-not-found", *names)],
                          change=f"- {some}" if how.foreign_cacerts else
                          "- secret cacerts" + (f" and {some}" if secrets else "")))
    if seen.namespace_terminating:
        # An earlier delete is under way (kube-apiserver refuses a second one with 409 Conflict).
        step = await_namespace_deleted_step(tools, cluster)
        step.done, step.change = "removed", f"- namespace {ISTIO_NAMESPACE} (already being deleted: waited for)"
        steps.append(step)
    elif how.keeps_namespace:  # without setup-mesh's marks, so that nothing of setup-mesh's is left in it
        steps.append(unmark_namespace_step(tools, cluster))
    else:
        steps.append(Step(f"delete namespace {ISTIO_NAMESPACE}", commands=[tools.kubectl_cmd(
            cluster, "delete", "namespace", ISTIO_NAMESPACE, "--ignore-not-found")], done="removed",
            change=f"- namespace {ISTIO_NAMESPACE}"))
    return steps


# What apply writes on istio-system besides Istio's network label: its record, the data plane, a root move's
# stage, and a remote's control plane (Istio's annotation).
NAMESPACE_MARKS = (APPLIED_ANNOTATION, DATA_PLANE_ANNOTATION, TRANSITION_ANNOTATION, CONTROL_PLANE_CLUSTERS)


def unmark_namespace_step(tools: Tools, cluster: Cluster) -> Step:
    """istio-system stays (others' objects are in it): setup-mesh's annotations go, so that it holds nothing
    of setup-mesh's and a later teardown finds nothing to remove."""
    return Step(f"remove setup-mesh's annotations from namespace {ISTIO_NAMESPACE} (kept)", commands=[
        tools.kubectl_cmd(cluster, "annotate", "namespace", ISTIO_NAMESPACE, *(f"{key}-" for key in NAMESPACE_MARKS))],
        done=f"removed ({ISTIO_NAMESPACE} kept)",
        change=f"~ namespace {ISTIO_NAMESPACE} kept, without setup-mesh's annotations")


def holds_setup_mesh(seen: Observed, ours: frozenset[str]) -> bool:
    """Whether a read cluster holds anything setup-mesh made (what teardown removes): its Istio, remote
    secrets, its cacerts, its east-west gateway, or its marks on istio-system. Others' Istio, CA or objects
    in a kept istio-system are not setup-mesh's."""
    return bool(_our_components(seen, ours) or seen.remote_secrets or seen.cacerts_labelled
                or seen.eastwest_made_by is not None
                or (seen.namespace and any(key in seen.annotations for key in NAMESPACE_MARKS)))

