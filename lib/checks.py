"""The checks status and verify report, by name: each with an id, a description, a severity and a hint.

The ids are the ``code`` of every problem in ``status -o json`` (docs/status-json.md lists the same
table for users); a problem's own message and hint name the cluster, peer and command in full. Also
the words both commands use for a peer's secret and istiod's view of it, so that status, its view and
verify share them without importing one another.
"""
from __future__ import annotations

from dataclasses import dataclass

ERROR, WARNING = "error", "warning"
# Secret states in the peer matrix and in the JSON document.
PRESENT, MISSING, STALE, LOCAL, OUTDATED = "present", "missing", "stale", "local", "outdated"
UNNEEDED = "unneeded"  # of a cluster in the topology that this one (a remote) needs no secret of
# What istiod reports per remote cluster (istioctl remote-clusters).
SYNCED = "synced"
EXPIRY_WARN_DAYS = 30  # a certificate expiring sooner is a warning


CLUSTER, MESH = "cluster", "mesh"  # where a check's problem is reported: per cluster, or once at the top level


@dataclass(frozen=True)
class Check:
    id: str
    severity: str  # ERROR makes the mesh unhealthy; WARNING is reported only
    description: str  # when it is reported
    hint: str  # what to do, in general terms (a problem's own hint is concrete)
    scope: str = CLUSTER


CHECKS: dict[str, Check] = {c.id: c for c in (
    Check('root_ca_missing', ERROR,
          'certs/root-cert.pem is missing from the workdir',
          'run setup-mesh prep-mesh', scope=MESH),
    Check('root_ca_unreadable', ERROR,
          'certs/root-cert.pem is not a PEM certificate',
          'restore it, or start a new root (rm -r certs, prep-mesh, apply)', scope=MESH),
    Check('intermediate_key_mismatch', ERROR,
          "certs/<cluster>/ca-key.pem is not the key of the ca-cert.pem beside it: apply refuses it, and istiod "
          "would not start on that cacerts",
          'rm -r certs/<cluster>, then setup-mesh apply (a new intermediate), or put back the key made with it',
          scope=MESH),
    Check('unreachable', ERROR,
          'kubectl could not read the cluster',
          ('kubectl --context <context> get namespace istio-system to check access, or remove the context from '
           'topology.yaml')),
    Check('namespace_missing', ERROR,
          ('namespace istio-system does not exist: the cluster was never set up (no further checks '
           'are reported for it)'),
          'setup-mesh apply'),
    Check('network_label_missing', ERROR,
          'istio-system has no topology.istio.io/network label',
          'setup-mesh apply'),
    Check('network_label_wrong', ERROR,
          "the label differs from the cluster's network in topology.yaml",
          'setup-mesh apply, or set network: in topology.yaml if the label is right'),
    Check('istio_unreadable', ERROR,
          'the istiod Deployment could not be read (the first read worked)',
          'kubectl --context <context> get deployment -n istio-system'),
    Check('istio_missing', ERROR,
          'istio-system exists but there is no istiod Deployment (a remote: no istiod Service)',
          'setup-mesh apply'),
    Check('control_plane_annotation_wrong', ERROR,
          ("a remote's istio-system lacks topology.istio.io/controlPlaneClusters=<its primary's "
           "cluster name>, so its primary's istiod does not configure it"),
          'setup-mesh apply'),
    Check('control_plane_annotation_left', ERROR,
          ("a primary's istio-system still names a control plane in topology.istio.io/controlPlaneClusters "
           "(left from when it was a remote): an istiod that runs remotes and holds this cluster's secret "
           "also patches its injector webhook and writes its istio-ca-root-cert ConfigMaps"),
          'setup-mesh apply (removes the annotation)'),
    Check('injection_path_wrong', ERROR,
          ("a remote's sidecar injector webhook does not call "
           '/inject/cluster/<cluster>/net/<network>'),
          'setup-mesh apply'),
    Check('primary_lacks_secret', ERROR,
          "a remote's primary holds no current remote secret of it",
          'setup-mesh apply'),
    Check('remote_secret_unneeded', WARNING,
          'a remote holds a remote secret of a cluster of the mesh (remotes hold none)',
          'setup-mesh apply (prunes it)'),
    Check('istiod_not_ready', ERROR,
          'istiod has no ready replica',
          'kubectl --context <context> get pods -n istio-system -l app=istiod'),
    Check('cluster_name_wrong', ERROR,
          "istiod's CLUSTER_ID differs from the cluster's name in topology.yaml",
          'setup-mesh apply'),
    Check('cacerts_missing', ERROR,
          'no secret cacerts: istiod signs with a self-made CA no other cluster trusts',
          'setup-mesh apply'),
    Check('cacerts_unreadable', ERROR,
          'cacerts has no readable ca-cert.pem',
          'rm -r certs/<cluster_name>, then setup-mesh apply'),
    Check('cacerts_foreign_root', ERROR,
          ("cacerts does not chain to the workspace's root (another root certificate, or an intermediate "
           "the root did not sign)"),
          ("setup-mesh apply when certs/<cluster_name>/ was issued by the workspace's root, otherwise "
           "rm -r certs/<cluster_name> first; with --replace-foreign-ca when its root-cert.pem is another "
           "root (replaced at once: mTLS between workloads breaks until they restart)")),
    Check('cacerts_expired', ERROR,
          'the intermediate CA has expired',
          ('setup-mesh rotate-certs --context <context>; during a move to a new root setup-mesh '
           'rotate-certs --root (its stage 2 re-issues every intermediate)')),
    Check('cacerts_expiring', WARNING,
          'the intermediate CA expires in fewer than 30 days',
          ('setup-mesh rotate-certs --context <context>, or rotate-certs --expiring-within 30; '
           'during a move to a new root setup-mesh rotate-certs --root')),
    Check('root_ca_expired', ERROR,
          ("the workspace's root CA (certs/root-cert.pem; during a move to a new root, the old one) "
           'has expired'),
          'setup-mesh rotate-certs --root (starts or continues the move)', scope=MESH),
    Check('root_ca_expiring', WARNING,
          ("the workspace's root CA (during a move to a new root, the old one) expires in fewer than"
           ' 30 days'),
          ('setup-mesh rotate-certs --root (three runs, at least --min-wait apart; continues a move '
           'under way)'), scope=MESH),
    Check('rotation_unfinished', WARNING,
          ('an intermediate rotation (rotate-certs) was interrupted or failed: clusters may still run on the '
           'intermediates it replaces'),
          'setup-mesh rotate-certs (finishes it)', scope=MESH),
    Check('root_moved_elsewhere', ERROR,
          ("istio-system records a move to a root this workspace does not hold: another workspace is moving the "
           "mesh off this workspace's root; drift and cacerts_foreign_root are not reported meanwhile"),
          'leave the mesh to the workspace that is moving it (apply and rotate-certs refuse here)'),
    Check('root_transition_behind', ERROR,
          ("during a move to a new root, the cluster's cacerts is not what the current stage says "
           '(or istio-system does not record the stage); cacerts_foreign_root is not reported '
           'meanwhile'),
          'setup-mesh rotate-certs --root (brings every cluster to the stage, advances no further)'),
    Check('gateway_missing', ERROR,
          ('several networks, and service istio-eastwestgateway does not exist (ambient: the Gateway'
           ' istio-eastwestgateway of class istio-east-west)'),
          'setup-mesh apply'),
    Check('istio_objects_missing', ERROR,
          ("a Gateway or VirtualService setup-mesh applies in istio-system is gone (the cross-network Gateway "
           "of the east-west gateway, or istiod-gateway and istiod-vs of a primary with remotes): read where "
           "this workspace installed Istio"),
          'setup-mesh apply (applies them again, and nothing else)'),
    Check('gateway_api_crds_missing', ERROR,
          'ambient: the Gateway API CRDs are not installed',
          'setup-mesh apply (installs them)'),
    Check('gateway_api_crds_old', WARNING,
          ("ambient: the cluster's own Gateway API CRDs are older than the release the installed "
           'Istio expects (istiod ignores kinds they do not serve); apply installs the CRDs only where '
           'a cluster has none and leaves existing ones alone'),
          'upgrade them: kubectl apply --server-side -f <standard-install.yaml of that release>'),
    Check('istiod_service_selects_pods', ERROR,
          "a remote's istiod Service has a selector: it leads to pods that run no istiod, so the injector refuses new pods",
          'setup-mesh apply (istioctl drops a selector it set); else remove spec.selector with kubectl patch'),
    Check('istiod_service_selects_nothing', ERROR,
          "a primary's istiod Service has no selector: it does not lead to the cluster's istiod",
          'setup-mesh apply'),
    Check('istiod_roots_not_taken', ERROR,
          'istiod did not take the root bundle cacerts holds (istio-ca-root-cert differs)',
          'kubectl rollout restart deployment/istiod -n istio-system, then status'),
    Check('istiod_roots_unread', WARNING,
          'the root bundle istiod publishes (istio-ca-root-cert) could not be read: whether it took cacerts is not known',
          'kubectl get configmap istio-ca-root-cert -n istio-system to check access, then status'),
    Check('injector_untrusted', ERROR,
          "a remote's sidecar injector webhook has no caBundle: the API server refuses every new pod, gateways included",
          "make its primary hold the remote's current secret and its istio-system name that primary: setup-mesh apply"),
    Check('ztunnel_missing', ERROR,
          'ambient: Istio is installed but the ztunnel DaemonSet is not there: ambient workloads have no data plane',
          'setup-mesh apply (installs it)'),
    Check('ztunnel_not_ready', ERROR,
          'ambient: fewer ztunnel pods are ready than scheduled: workloads on those nodes have no data plane',
          'look at its pods: kubectl get pods -n istio-system -l app=ztunnel'),
    Check('gateway_sidecar_mode', ERROR,
          ('ambient: service istio-eastwestgateway belongs to a sidecar-mode gateway IstioOperator, '
           'so istiod cannot deploy the ambient gateway of that name'),
          'setup-mesh apply (replaces it)'),
    Check('gateway_not_programmed', ERROR,
          ('ambient: istiod reports the east-west Gateway as not Programmed (e.g. AddressNotAssigned'
           ' while its LoadBalancer is pending), or no istiod has taken it up (NoController: no '
           'istiod with AMBIENT_ENABLE_MULTI_NETWORK for its revision)'),
          ('kubectl --context <context> get gateways.gateway.networking.k8s.io istio-eastwestgateway'
           ' -n istio-system -o yaml')),
    Check('gateway_pending', ERROR,
          'several networks, and the east-west gateway service has no address',
          ('check the LoadBalancer: kubectl --context <context> get service istio-eastwestgateway -n'
           ' istio-system')),
    Check('remote_secret_missing', ERROR,
          'no remote secret of a peer (one problem per peer)',
          'setup-mesh apply'),
    Check('remote_secret_local', ERROR,
          "a peer's remote secret names a loopback API server",
          ('set api_server: for <peer context> in topology.yaml, then setup-mesh apply; when '
           'api_server is already set, setup-mesh apply replaces the secret')),
    Check('remote_secret_outdated', ERROR,
          "a peer's remote secret carries credentials the peer no longer issues",
          'setup-mesh apply (replaces it)'),
    Check('remote_secret_stale', ERROR,
          'a remote secret names a cluster not in topology.yaml',
          ('setup-mesh apply (prunes it) or kubectl --context <context> delete secret -n '
           'istio-system <name>')),
    Check('remote_cluster_timeout', ERROR,
          ('istiod reports a peer as timeout while its remote secret is present and the peer is '
           'reachable (otherwise the cause is already reported)'),
          ("check that this cluster reaches the peer's api_server, then setup-mesh apply; istiod's "
           'log: kubectl --context <context> logs -n istio-system deploy/istiod')),
    Check('remote_cluster_syncing', ERROR,
          'istiod reports a peer as syncing (same conditions)',
          'wait, setup-mesh status --wait'),
    Check('remote_cluster_closed', ERROR,
          'istiod reports a peer as closed (same conditions)',
          'setup-mesh apply'),
    Check('remote_cluster_not_loaded', ERROR,
          'istiod lists no remote cluster for a peer whose secret is present',
          'check again in a moment, then setup-mesh apply'),
    Check('istiod_view_unreadable', WARNING,
          'istioctl remote-clusters failed',
          'kubectl --context <context> get pods -n istio-system -l app=istiod'),
    Check('drift', ERROR,
          'Istio is installed and drift is true',
          'setup-mesh apply --dry-run to see the change, then setup-mesh apply'),
    Check('proxies_without_control_plane', ERROR,
          ("proxies run a revision whose control plane is gone (for a remote: gone from its primary): they "
           "get no new configuration or certificates"),
          'kubectl --context <context> rollout restart deployment -n <namespace> for each namespace named'),
    Check('proxies_on_old_revision', WARNING,
          ("proxies outside istio-system run another revision than the one new pods get (the default tag's): "
           "an upgrade waits for their restart before the old revision can go"),
          'kubectl --context <context> rollout restart deployment -n <namespace> for each namespace named'),
    Check('proxy_skew', WARNING,
          ("proxies of a revision run an Istio version newer than its control plane, or more than one minor "
           "version older"),
          'kubectl --context <context> rollout restart deployment -n <namespace> (they get the current revision)'),
    Check('kubernetes_unsupported', WARNING,
          "the cluster's Kubernetes version is outside the range the installed Istio minor supports",
          "upgrade the cluster's Kubernetes, or pin an Istio release that supports it in topology.yaml"),
)}


def check(check_id: str) -> Check:
    """The registered check of that id (KeyError for an id nobody documented)."""
    return CHECKS[check_id]

