"""Which namespaces an install needs to exist before `istioctl install` runs."""
from lib.config import Cluster
from lib.executor import Phase, Step
from lib.installnamespaces import component_namespaces, missing_namespaces_refusal
from lib.kube import Observed, Tools


def _operator(profile: str = "default", **components) -> dict:
    return {"apiVersion": "install.istio.io/v1alpha1", "kind": "IstioOperator",
            "spec": {"profile": profile, "components": components}}


def test_only_enabled_components_outside_istio_system_are_named():
    operator = _operator(
        "ambient",
        cni={"namespace": "kube-system"},  # on in the ambient profile
        ztunnel={"namespace": "istio-system"},  # istioctl makes this one
        ingressGateways=[{"name": "public", "namespace": "edge"}, {"name": "off", "namespace": "gone", "enabled": False},
                         {"name": "plain"}],
        egressGateways=[{"name": "out", "namespace": "edge", "enabled": True}])
    assert component_namespaces(operator) == {"kube-system": ["components.cni"],
                                              "edge": ["ingress gateway public", "egress gateway out"]}
    # cni is not installed by the default profile: its namespace is not needed.
    assert component_namespaces(_operator(cni={"namespace": "istio-cni"})) == {}
    assert component_namespaces(_operator(cni={"namespace": "istio-cni", "enabled": True})) == {
        "istio-cni": ["components.cni"]}


def test_only_clusters_the_plan_installs_and_that_lack_the_namespace_are_refused():
    operator = _operator(ingressGateways=[{"name": "public", "namespace": "edge"}])
    clusters = {name: Cluster(name, "n1", name) for name in ("a", "b", "c", "d")}
    phase = Phase("install")
    for name in ("a", "b", "d"):
        phase.add(name, Step("install Istio"))
    phase.add("c", Step("import 1 peer's secrets"))  # not installed in this run
    lacking = Observed(reachable=True, namespaces=frozenset({"istio-system", "default"}))
    observed = {"a": lacking, "b": Observed(reachable=True, namespaces=frozenset({"edge"})), "c": lacking,
                "d": lacking}
    refusal = missing_namespaces_refusal([phase], {n: operator for n in clusters}, observed, Tools(), clusters)
    assert refusal is not None
    assert refusal.message.splitlines()[1:] == ["  edge (ingress gateway public): not in a, d"]
    assert "`kubectl --context a create namespace edge`; `kubectl --context d create namespace edge`" in refusal.hint
    observed.update(a=Observed(reachable=True, namespaces=frozenset({"edge"})), d=observed["b"])
    assert missing_namespaces_refusal([phase], {n: operator for n in clusters}, observed, Tools(), clusters) is None
