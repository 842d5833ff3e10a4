"""base.yaml: the IstioOperator every cluster's overlay starts from, loaded and checked (setup-mesh owns
some of its values), and the data-plane mode its profile sets."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .basenames import check_control_plane_namespace, check_operator_name, check_revision
from .invocation import prep_hint
from .names import EASTWEST_NAME
from .yamlcheck import did_you_mean, type_name, value_at
from .yamlfile import LocatedDoc, load_located

OPERATOR_KEYS = ("apiVersion", "kind", "metadata", "spec")
OPERATOR_API_DOCS = "https://istio.io/latest/docs/reference/config/istio.operator.v1alpha1/"
OPERATOR_SPEC_KEYS = ("profile", "installPackagePath", "namespace", "hub", "tag", "revision", "compatibilityVersion",
                      "meshConfig", "components", "values", "unvalidatedValues")

# istiod accepts a changed root bundle only with this set; rotate-certs --root sets it while it needs it.
MULTIROOT_ENV = "ISTIO_MULTIROOT_MESH"
MULTIROOT_VALUE = ("spec", "values", "pilot", "env", MULTIROOT_ENV)

# Values setup-mesh owns in every cluster's IstioOperator: where each comes from.
RESERVED_VALUES = {
    ("spec", "values", "global", "meshID"): "topology.yaml mesh_id",
    ("spec", "values", "global", "multiCluster", "clusterName"): "topology.yaml contexts.<context>.cluster_name (default: the context name)",
    ("spec", "values", "global", "network"): "topology.yaml contexts.<context>.network",
    ("spec", "values", "global", "meshNetworks"): "the networks in topology.yaml (Istio finds each network's gateway by its topology.istio.io/network label)",
    MULTIROOT_VALUE: "rotate-certs --root (set while a root transition needs istiod to accept a second root)",
    ("spec", "values", "global", "externalIstiod"): "the role of each cluster (true on a primary that has remotes)",
    ("spec", "values", "pilot", "env", "EXTERNAL_ISTIOD"): "the role of each cluster (the same setting as values.global.externalIstiod)",
    ("spec", "values", "global", "remotePilotAddress"): "the address of the east-west gateway of the remote's primary (topology.yaml contexts.<context>.primary)",
    ("spec", "values", "istiodRemote", "injectionPath"): "the remote's cluster name and network",
    ("spec", "values", "istiodRemote", "injectionURL"): "the remote's cluster name and network (through istiodRemote.injectionPath)",
}

# Data-plane modes: base.yaml's spec.profile ambient makes the whole mesh ambient.
AMBIENT = "ambient"
SIDECAR = "sidecar"
MULTI_NETWORK_ENV = "AMBIENT_ENABLE_MULTI_NETWORK"
# Where base.yaml could set the ambient multi-network switch itself; setup-mesh owns it in an ambient mesh.
PILOT_ENV_SWITCH = ("spec", "values", "pilot", "env", MULTI_NETWORK_ENV)
PILOT_K8S_ENV = ("spec", "components", "pilot", "k8s", "env")
PILOT_ENV_VALUES = ("spec", "values", "pilot", "env")


# Istio's profiles that install ambient mode (manifests/profiles/ in 1.30.3: both set values.profile ambient).
AMBIENT_PROFILES = (AMBIENT, "openshift-ambient")

# Where the charts read the profile whose defaults they take: values.profile, else values.global.profile
# (1.30.3 istio-discovery templates/zzz_profile.yaml: `coalesce .Values.profile .Values.global.profile`). A
# spec.profile reaches them as the values.profile its manifests/profiles/<name>.yaml sets, which base.yaml's
# own values override: values.profile ambient makes istiod ambient's, values.profile remote makes it a remote's.
CHART_PROFILE_KEYS = (("spec", "values", "profile"), ("spec", "values", "global", "profile"))
# The charts' profiles in 1.30.3 (istio-discovery files/profile-<name>.yaml); any other name fails the install
# ("unknown profile"). Only near misses are refused here: a later release may add profiles.
CHART_PROFILES = ("ambient", "demo", "preview", "remote", "stable", "platform-gke", "platform-k3d", "platform-k3s",
                  "platform-microk8s", "platform-minikube", "platform-openshift")


def chart_profile(operator: dict[str, Any]) -> tuple[tuple[str, ...], str] | None:
    """Where base.yaml itself names the charts' profile, and the name; None when only spec.profile decides."""
    for keys in CHART_PROFILE_KEYS:
        present, value = value_at(operator, keys)
        if present and value:
            return keys, str(value)
    return None


# Where a profile puts ztunnel when base.yaml does not say (1.30.3: openshift-ambient, kube-system).
_ZTUNNEL_NAMESPACE_OF_PROFILE = {"openshift-ambient": "kube-system"}


def ztunnel_namespace(operator: dict[str, Any]) -> str:
    """The namespace istioctl installs ztunnel in: components.ztunnel.namespace, else the profile's, else
    spec.namespace, else istio-system."""
    spec = (operator or {}).get("spec")
    spec = spec if isinstance(spec, dict) else {}
    component = (spec.get("components") or {}).get("ztunnel")
    given = component.get("namespace") if isinstance(component, dict) else None
    return str(given or _ZTUNNEL_NAMESPACE_OF_PROFILE.get(spec.get("profile")) or spec.get("namespace")
               or "istio-system")


def data_plane_mode(operator: dict[str, Any]) -> str:
    """ambient when the charts' profile is ambient: base.yaml's values.profile (as in Istio's own
    manifests/profiles/ambient.yaml), else that of spec.profile (one of Istio's ambient profiles); else sidecar."""
    named = chart_profile(operator or {})
    if named is not None:
        return AMBIENT if named[1] == AMBIENT else SIDECAR
    spec = (operator or {}).get("spec")
    return AMBIENT if isinstance(spec, dict) and spec.get("profile") in AMBIENT_PROFILES else SIDECAR


# What `istioctl install` installs for each of Istio's profiles: manifests/profiles/default.yaml's components
# overlaid with the profile's own file (1.30.3; empty.yaml turns base and pilot off). A profile not listed here
# (a later release's) is taken to install every component unless base.yaml turns one off.
PROFILE_COMPONENTS = {
    "empty": set(), "minimal": {"base", "pilot"}, "remote": {"base", "pilot"},
    "default": {"base", "pilot", "ingressGateways"}, "preview": {"base", "pilot", "ingressGateways"},
    "demo": {"base", "pilot", "ingressGateways", "egressGateways"}, "ambient": {"base", "pilot", "cni", "ztunnel"},
    "stable": {"base", "pilot", "ingressGateways"}, "openshift": {"base", "pilot", "cni", "ingressGateways"},
    "openshift-ambient": {"base", "pilot", "cni", "ztunnel"},
}
ALL_COMPONENTS = {"base", "pilot", "cni", "ztunnel", "ingressGateways", "egressGateways"}
SWITCHED_COMPONENTS = ("base", "pilot", "cni", "ztunnel")  # components.<name>.enabled
GATEWAY_COMPONENTS = ("ingressGateways", "egressGateways")  # lists of gateways, each with its own enabled

# What setup-mesh's own steps need every cluster's install to hold, and why (the remote profile keeps both).
NEEDED_COMPONENTS = {
    "base": "Istio's CRDs, which the Gateway that exposes services needs",
    "pilot": "istiod: a primary's control plane, a remote's injector",
}
# What an ambient data plane needs besides (Istio's ambient profiles turn both on).
AMBIENT_COMPONENTS = {"cni": "istio-cni: ambient's traffic redirection", "ztunnel": "ztunnel: ambient's node proxy"}
# Profiles named to users, in this order, when base.yaml's profile leaves out a needed component.
_SUGGESTED_PROFILES = ("default", "minimal", "ambient", "openshift", "openshift-ambient")


def enabled_components(operator: dict[str, Any]) -> set[str]:
    """The components `istioctl install` installs for this IstioOperator: its spec.profile's (default when
    none), then components.<name>.enabled, and any gateway listed without enabled: false."""
    spec = operator.get("spec") if isinstance(operator.get("spec"), dict) else {}
    components = spec.get("components") if isinstance(spec.get("components"), dict) else {}
    enabled = set(PROFILE_COMPONENTS.get(spec.get("profile") or "default", ALL_COMPONENTS))
    for key in SWITCHED_COMPONENTS:
        component = components.get(key)
        if isinstance(component, dict) and component.get("enabled") is not None:
            (enabled.add if component["enabled"] else enabled.discard)(key)
    for key in GATEWAY_COMPONENTS:
        gateways = components.get(key)
        if isinstance(gateways, list) and any(isinstance(g, dict) and g.get("enabled") is not False for g in gateways):
            enabled.add(key)
    return enabled


def _check_components(doc: LocatedDoc) -> None:
    """Every cluster's install holds what setup-mesh's steps and the data plane need: refused here, before a
    cluster is touched, instead of failing halfway through apply."""
    needed = dict(NEEDED_COMPONENTS)
    if data_plane_mode(doc.data) == AMBIENT:
        needed.update(AMBIENT_COMPONENTS)
    missing = [name for name in needed if name not in enabled_components(doc.data)]
    if not missing:
        return
    given, profile = value_at(doc.data, ("spec", "profile"))
    installs = f"spec.profile {profile or 'default (not set)'} does not install it"
    named = chart_profile(doc.data)
    lines, by_profile = [], False
    for name in missing:
        switch = ("spec", "components", name, "enabled")
        present, value = value_at(doc.data, switch)
        if present and value is not None:
            cause = f"{doc.where(*switch)}: components.{name}.enabled is {str(value).lower()}"
        elif name in AMBIENT_COMPONENTS and named and not given:
            # values.profile ambient made the mesh ambient; spec.profile decides what is installed.
            cause = f"{doc.where(*named[0])}: {_profile_key(named[0])} {named[1]} makes the mesh ambient, but {installs}"
        else:
            cause = f"{doc.where('spec', 'profile') if given else doc.where('spec')}: {installs}"
        by_profile |= not (present and value is not None)
        lines.append(f"  components.{name} ({needed[name]}): {cause}")
    profiles = [p for p in _SUGGESTED_PROFILES if set(needed) <= PROFILE_COMPONENTS[p]]
    raise ConfigError("base.yaml leaves out components every cluster of the mesh needs:\n" + "\n".join(lines),
                      hint="set " + ", ".join(f"components.{name}.enabled: true" for name in missing) + " in base.yaml"
                           + (f", or use a profile that installs them ({', '.join(profiles)})" if by_profile else ""))


def _listed_gateways(data: dict):
    """(components key, index, gateway) of each gateway base.yaml lists."""
    for key in GATEWAY_COMPONENTS:
        for index, gateway in enumerate(value_at(data, ("spec", "components", key))[1] or []):
            yield key, index, gateway


def _check_gateway_names(doc: LocatedDoc) -> None:
    """base.yaml's own gateways may not take the name of the east-west gateway setup-mesh installs (its
    IstioOperator `eastwest`): two IstioOperators would own one Deployment."""
    for key, index, gateway in _listed_gateways(doc.data):
        if gateway.get("name") == EASTWEST_NAME:
            raise ConfigError(f"{doc.where('spec', 'components', key, index, 'name')}: {EASTWEST_NAME} is the "
                              f"east-west gateway setup-mesh installs where clusters are on several networks",
                              hint="delete this gateway from base.yaml (setup-mesh installs it), or give yours "
                                   "another name")


@dataclass
class Base:
    path: Path
    operator: dict[str, Any]
    doc: LocatedDoc | None = field(default=None, repr=False)


def load_base(path: Path) -> Base:
    doc = load_located(path, "base IstioOperator", missing_hint=prep_hint())
    data = doc.data
    hint = "base.yaml must be an IstioOperator: apiVersion: install.istio.io/v1alpha1, kind: IstioOperator, spec: {...}"
    _check_operator(doc, path, hint)
    check_operator_name(doc)
    _check_profile(doc)
    problems, hint = _reserved_in_base(doc)
    if problems:
        raise ConfigError("base.yaml sets values that setup-mesh owns:\n" + "\n".join(problems), hint=hint)
    _check_components(doc)
    check_control_plane_namespace(doc)
    check_revision(doc)
    _check_gateway_names(doc)
    return Base(path=path, operator=data, doc=doc)


def _check_operator(doc: LocatedDoc, path: Path, hint: str) -> None:
    """base.yaml is an IstioOperator whose keys and mappings istioctl would take."""
    data = doc.data
    if not isinstance(data, dict):
        raise ConfigError(f"{doc.where()}: base.yaml is not an IstioOperator (it is {type_name(data)})", hint=hint)
    if data.get("kind") != "IstioOperator":
        raise ConfigError(f"{doc.where('kind') if 'kind' in data else path}: base.yaml has kind {data.get('kind')!r}, expected IstioOperator", hint=hint)
    api = data.get("apiVersion")
    if api != "install.istio.io/v1alpha1":
        raise ConfigError(f"{doc.where('apiVersion') if 'apiVersion' in data else path}: base.yaml has apiVersion {api!r}, expected install.istio.io/v1alpha1", hint=hint)
    for key in data:
        if key not in OPERATOR_KEYS:
            raise ConfigError(f"{doc.where(key)}: unknown key {key!r} in base.yaml",
                              hint=did_you_mean(key, OPERATOR_KEYS) + "an IstioOperator has " + ", ".join(OPERATOR_KEYS))
    spec = data.get("spec")
    if spec is not None and not isinstance(spec, dict):
        raise ConfigError(f"{doc.where('spec')}: spec must be a mapping, not {type_name(spec)}", hint=hint)
    for key in spec or {}:
        # Only near misses are refused: istioctl knows the full list, which grows with Istio releases.
        suggestion = did_you_mean(key, OPERATOR_SPEC_KEYS) if key not in OPERATOR_SPEC_KEYS else ""
        if suggestion:
            raise ConfigError(f"{doc.where('spec', key)}: unknown key {key!r} in spec", hint=suggestion.rstrip())
    _check_shapes(doc)


def _check_shapes(doc: LocatedDoc) -> None:
    """The shapes setup-mesh reads (_SHAPES), and each listed gateway a mapping with a boolean enabled."""
    data = doc.data
    shape_hint = f"write it as the IstioOperator API has it: {OPERATOR_API_DOCS}"
    for keys, kind in _SHAPES:
        present, value = value_at(data, keys)
        if present and value is not None and not isinstance(value, kind):
            raise ConfigError(f"{doc.where(*keys)}: {'.'.join(keys)} must be {_KIND_NAMES[kind]}, not {type_name(value)}",
                              hint=shape_hint)
    for key, index, gateway in _listed_gateways(data):
        keys = ("spec", "components", key, index)
        if not isinstance(gateway, dict):
            raise ConfigError(f"{doc.where(*keys)}: spec.components.{key}[{index}] must be a mapping (name:, "
                              f"enabled:, ...), not {type_name(gateway)}", hint=shape_hint)
        if gateway.get("enabled") is not None and not isinstance(gateway["enabled"], bool):
            raise ConfigError(f"{doc.where(*keys, 'enabled')}: spec.components.{key}[{index}].enabled must be "
                              f"true or false, not {type_name(gateway['enabled'])}", hint=shape_hint)


# The shapes istioctl takes where setup-mesh reads base.yaml (Istio's operator API, IstioOperatorSpec and its
# component specs): anything else istioctl refuses too, and here it is refused before a cluster is touched.
_SHAPES = (
    (("metadata",), dict),
    *((("spec", key), str) for key in ("profile", "installPackagePath", "namespace", "hub", "revision",
                                       "compatibilityVersion")),
    *((("spec", key), dict) for key in ("meshConfig", "components", "values", "unvalidatedValues")),
    *(shape for key in (*SWITCHED_COMPONENTS, "istiodRemote")
      for shape in ((("spec", "components", key), dict), (("spec", "components", key, "enabled"), bool),
                    (("spec", "components", key, "k8s"), dict), (("spec", "components", key, "k8s", "env"), list))),
    *((("spec", "components", key), list) for key in GATEWAY_COMPONENTS),
    *((("spec", "values", *keys), dict) for keys in (("global",), ("global", "multiCluster"), ("istiodRemote",),
                                                      ("pilot",), ("pilot", "env"))),
    *((("spec", "values", *keys), str) for keys in (("profile",), ("global", "profile"), ("revision",))),
)
_KIND_NAMES = {str: "a string", dict: "a mapping", list: "a list", bool: "true or false"}


# Profiles for a cluster's role, which topology.yaml decides: every primary installs base.yaml as it is.
_ROLE_PROFILES = {
    "remote": "setup-mesh installs the remote profile on the contexts topology.yaml gives a `primary:`",
    "external": "an external control plane is a topology setup-mesh does not build",
}


def _check_profile(doc: LocatedDoc) -> None:
    present, profile = value_at(doc.data, ("spec", "profile"))
    named = chart_profile(doc.data)
    for keys, name in ([(("spec", "profile"), profile)] if present else []) + ([named] if named else []):
        if name in _ROLE_PROFILES:
            raise ConfigError(f"{doc.where(*keys)}: {_profile_key(keys)} {name} cannot be base.yaml's: "
                              f"{_ROLE_PROFILES[name]}",
                              hint="use a profile for primaries (default, minimal, ambient, ...) and name each "
                                   "remote's primary in topology.yaml (contexts.<context>.primary)")
    if named and named[1] not in CHART_PROFILES and (guess := did_you_mean(named[1], CHART_PROFILES)):
        raise ConfigError(f"{doc.where(*named[0])}: {_profile_key(named[0])} {named[1]} is no profile of Istio's "
                          f"charts: istioctl install would fail with `unknown profile {named[1]}`",
                          hint=guess + "or delete the line")
    if present and profile in AMBIENT_PROFILES and named and named[1] != AMBIENT:
        keys, name = named
        raise ConfigError(f"{doc.where(*keys)}: {_profile_key(keys)} {name} with spec.profile {profile}: istioctl "
                          f"would install ztunnel and istio-cni, but the charts would run istiod with the {name} "
                          f"profile's defaults, without ambient",
                          hint=f"delete {_profile_key(keys)} (spec.profile {profile} sets it to ambient), or use a "
                               f"sidecar profile")


def _profile_key(keys: tuple[str, ...]) -> str:
    """How the profile's key is named to users: spec.profile, or values.profile as Istio's docs write it."""
    return ".".join(keys if keys == ("spec", "profile") else keys[1:])


def _reserved_in_base(doc: LocatedDoc) -> tuple[list[str], str]:
    """The values base.yaml sets that setup-mesh owns (one line each), and the hint for them."""
    data = doc.data
    problems, fixes = [], []
    for keys, source in RESERVED_VALUES.items():
        # istioctl lays spec.unvalidatedValues over spec.values (Istio's operator/pkg/render/manifest.go): a
        # value reserved in one is reserved in the other.
        for where in (keys, ("spec", "unvalidatedValues", *keys[2:])):
            present, _ = value_at(data, where)
            if present:
                problems.append(f"  {doc.where(*where)}: {'.'.join(where)} is set by setup-mesh from {source}")
                fixes.append(_FIX_OF_RESERVED.get(keys, _FIX_FROM_TOPOLOGY))
    # istiod's env may also be given as a list in components.pilot.k8s.env, where it overrides values.pilot.env:
    # every reserved values.pilot.env entry is reserved there too.
    for keys, source in RESERVED_VALUES.items():
        if keys[:-1] == PILOT_ENV_VALUES:
            found = _k8s_env_entries(data, doc, keys[-1], f"is set by setup-mesh from {source}")
            problems += found
            fixes += [_FIX_OF_RESERVED.get(keys, _FIX_FROM_TOPOLOGY)] * len(found)
    ambient_problems = _ambient_reserved(data, doc)
    if ambient_problems:
        problems += ambient_problems
        fixes.append("setup-mesh sets AMBIENT_ENABLE_MULTI_NETWORK for every istiod of an ambient mesh")
    return problems, "delete those lines from base.yaml: " + "; ".join(dict.fromkeys(fixes))


_FIX_FROM_TOPOLOGY = "set mesh_id, network, cluster_name and primary in topology.yaml instead"
_FIX_OF_RESERVED = {MULTIROOT_VALUE: "rotate-certs --root sets ISTIO_MULTIROOT_MESH while a move to a new root needs it"}


def _ambient_reserved(data: dict, doc: LocatedDoc) -> list[str]:
    """In an ambient mesh the multi-network switch is setup-mesh's, wherever base.yaml would put it."""
    if data_plane_mode(data) != AMBIENT:
        return []
    keys, name = chart_profile(data) or (("spec", "profile"), data["spec"]["profile"])
    why = f"is set by setup-mesh: {_profile_key(keys)} {name} ({doc.where(*keys)}) turns it on in every istiod"
    problems = []
    present, _ = value_at(data, PILOT_ENV_SWITCH)
    if present:
        problems.append(f"  {doc.where(*PILOT_ENV_SWITCH)}: {'.'.join(PILOT_ENV_SWITCH)} {why}")
    return problems + _k8s_env_entries(data, doc, MULTI_NETWORK_ENV, why)


def _k8s_env_entries(data: dict, doc: LocatedDoc, name: str, why: str) -> list[str]:
    """Each entry of components.pilot.k8s.env named ``name``, located, with why base.yaml may not set it."""
    present, env = value_at(data, PILOT_K8S_ENV)
    return [f"  {doc.where(*PILOT_K8S_ENV, i)}: {'.'.join(PILOT_K8S_ENV)}[{i}] ({name}) {why}"
            for i, entry in enumerate(env if present and isinstance(env, list) else [])
            if isinstance(entry, dict) and entry.get("name") == name]

