"""Who else uses Istio in a cluster, and what others keep in istio-system (which keeps the namespace)."""
import json

from lib.istiousage import others_in_istio_system


def _item(kind, name, labels=None, **extra):
    meta = {"name": name, "namespace": "istio-system", "labels": labels or {}}
    meta.update(extra.pop("meta", {}))
    return {"kind": kind, "metadata": meta, **extra}


def test_only_what_neither_setup_mesh_istio_istiod_nor_kubernetes_made_is_named():
    made = [
        _item("Secret", "cacerts", {"app.kubernetes.io/managed-by": "setup-mesh"}),
        _item("Secret", "cacerts"),  # unlabelled (an earlier version's, or somebody's CA: decided apart)
        _item("Secret", "istio-remote-secret-c2", {"istio/multiCluster": "true"}),
        _item("Secret", "istio-reader-service-account-istio-remote-secret-token",
              type="kubernetes.io/service-account-token"),
        _item("Secret", "istio-ca-secret"),  # istiod's own CA, without cacerts
        _item("ConfigMap", "istio", {"install.operator.istio.io/owning-resource": "setup-mesh",
                                     "operator.istio.io/component": "Pilot"}),
        _item("ConfigMap", "kube-root-ca.crt"), _item("ConfigMap", "istio-ca-root-cert", {"istio.io/config": "true"}),
        _item("ConfigMap", "istio-leader", meta={"annotations": {"control-plane.alpha.kubernetes.io/leader": "{}"}}),
        _item("ServiceAccount", "default"),
        _item("Deployment", "istio-eastwestgateway", {"gateway.istio.io/managed": "istio.io-gateway-controller"}),
        _item("Service", "owned", meta={"ownerReferences": [{"kind": "Gateway", "name": "x"}]}),
        _item("Service", "istiod-revision-tag-default", {"istio.io/tag": "default", "istio.io/rev": "1-31-0"}),
    ]
    theirs = [_item("Secret", "my-ingress-cert", type="kubernetes.io/tls"), _item("ConfigMap", "my-settings"),
              _item("Deployment", "kiali", {"app": "kiali"}), _item("ServiceAccount", "kiali")]
    assert others_in_istio_system(json.dumps({"kind": "List", "items": made + theirs})) == [
        "ConfigMap my-settings", "Deployment kiali", "Secret my-ingress-cert", "ServiceAccount kiali"]
    assert others_in_istio_system(json.dumps({"kind": "List", "items": made})) == []
    assert others_in_istio_system("") == []
