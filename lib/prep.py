"""prep-mesh: the workspace (topology.yaml, base.yaml) and the mesh's root CA. Touches no cluster."""
from __future__ import annotations

import os
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from . import certs, invocation
from .config import BASE_FILE, PILOT_ENV_SWITCH, RESERVED_VALUES, TOPOLOGY_FILE, cluster_names_for, is_label_value
from .kubeconfig import kubeconfig_files
from .errors import ConfigError
from .fsutil import write_atomic
from .fetch import checked_istio_dir, choose_source, fetch_release
from .release import Release, find_release
from .versions import version_problem
from .reporter import Reporter
from .runner import Runner

DEFAULT_MESH_ID = "mesh1"

def topology_header() -> str:
    """The comment at the top of a new topology.yaml; its commands name the program as it was run."""
    apply = invocation.command("apply")
    return f"""\
# topology.yaml: which clusters form the mesh and how they are connected.
#
# mesh_id   the mesh's name (Istio's meshID); the same in every cluster.
# contexts  one entry per cluster, keyed by its kube context name (`kubectl config get-contexts`):
#   network       required. Clusters whose pods reach each other directly share a network; clusters
#                 on different networks talk through east-west gateways that setup-mesh installs.
#   primary       optional. The context whose control plane runs this cluster: it makes this cluster
#                 a remote of that primary (no istiod of its own). Without it the cluster is a primary.
#   cluster_name  optional. Istio's name for the cluster (a DNS-1123 label); default: the context name.
#                 Set it when the context name is not a valid label (e.g. gke_project_zone_name).
#   api_server    optional. The API server URL other clusters use to reach this one, when the
#                 kubeconfig names a local or private address (passed to create-remote-secret --server).
#   kubeconfig    optional. A kubeconfig file for this context only.
#   istio_version optional. This cluster's own Istio release, overriding the top-level one.
#
# istio_version (top level, optional) pins the mesh's Istio release, e.g. 1.30.3: apply fetches it
# (--istio-mirror for an internal copy), checks its sha256 and uses its istioctl.
#
# To add a cluster: add its context here and run `{apply}`.
# To remove one: delete its entry and run `{apply}` (it asks before removing).
"""


def reserved_values_comment() -> str:
    """base.yaml's list of the values setup-mesh owns, from the one table apply checks them against."""
    lines = []
    for keys, source in [*RESERVED_VALUES.items(),
                         (PILOT_ENV_SWITCH, "in an ambient mesh (spec.profile: ambient): on in every istiod")]:
        lines.append(f"#   {'.'.join(keys)}")
        lines += textwrap.wrap(source, width=100, initial_indent="#       <- ", subsequent_indent="#          ")
    return "\n".join(lines) + "\n"


BASE_TEMPLATE = """\
# base.yaml: the IstioOperator every cluster's installation is derived from.
# Edit it freely (profile, meshConfig, components, values): it reaches every cluster unchanged.
#
# Reserved: setup-mesh sets these for each cluster, so they are never set here (apply refuses to
# run while base.yaml sets any of them; istiod env entries are reserved in components.pilot.k8s.env too):
""" + reserved_values_comment() + """\
apiVersion: install.istio.io/v1alpha1
kind: IstioOperator
spec:
  profile: default
  meshConfig:
    accessLogFile: /dev/stdout
"""


@dataclass
class PrepResult:
    created: list[Path] = field(default_factory=list)
    kept: list[Path] = field(default_factory=list)
    listed: bool = False  # the new topology.yaml lists the contexts given with --add-context


def topology_text(mesh_id: str, contexts: list[tuple[str, str]], known_contexts: list[str],
                  istio_version: str | None = None) -> str:
    top = {"mesh_id": mesh_id, **({"istio_version": istio_version} if istio_version else {})}
    text = topology_header() + "\n" + yaml.safe_dump(top, sort_keys=False)
    if contexts:
        # A context whose name is no valid Istio cluster name (an EKS ARN, a GKE context) gets one.
        named = cluster_names_for([c for c, _ in contexts])
        text += yaml.safe_dump({"contexts": {c: {"network": n, **({"cluster_name": named[c]} if c in named else {})}
                                             for c, n in contexts}}, sort_keys=False)
        return text
    text += "contexts:\n"
    text += "  # Uncomment the contexts that join the mesh and set their networks, e.g.\n"
    examples = known_contexts or ["cluster1", "cluster2"]
    named = cluster_names_for(examples)
    for i, name in enumerate(examples):
        entry = yaml.safe_dump({name: {"network": f"network{1 if i == 0 else 2}",
                                       **({"cluster_name": named[name]} if name in named else {})}}, sort_keys=False)
        text += "".join(f"  # {line}\n" for line in entry.splitlines())
    return text


def parse_context_options(values: list[str]) -> list[tuple[str, str]]:
    """``--context NAME[=NETWORK]`` values; the network defaults to network1."""
    parsed = []
    for value in values:
        name, _, network = value.partition("=")
        network = network or "network1"
        if not name:
            raise ConfigError(f"--context {value!r}: the context name is empty", hint="use --context NAME or NAME=NETWORK")
        if not is_label_value(network):
            raise ConfigError(f"--context {value!r}: invalid network {network!r}",
                              hint="letters, digits, '-', '_', '.' (a Kubernetes label value)")
        parsed.append((name, network))
    return parsed


def _known_contexts() -> list[str]:
    """Context names from the user's kubeconfig, offered as commented examples (no cluster is contacted)."""
    names: list[str] = []
    for path in kubeconfig_files(None):
        try:
            data = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError):
            continue
        entries = data.get("contexts") if isinstance(data, dict) else None
        for entry in entries if isinstance(entries, list) else []:
            if isinstance(entry, dict) and isinstance(entry.get("name"), str) and entry["name"] not in names:
                names.append(entry["name"])
    return names


def prep_mesh(workdir: Path, *, mesh_id: str | None, org: str | None, istio_dir: str | None,
              contexts: list[tuple[str, str]], root_days: int | None, key_size: int | None,
              runner: Runner, reporter: Reporter, istio_version: str | None = None,
              istio_mirror: str | None = None) -> PrepResult:
    result = PrepResult()
    _check_arguments(workdir, mesh_id)
    cert_dir = certs.certs_dir(workdir)
    root_files = [cert_dir / certs.ROOT_CERT, cert_dir / certs.ROOT_KEY]
    need_root = not all(p.is_file() for p in root_files)

    # Everything that can fail is checked before the first file is written.
    release = _release(workdir, istio_dir, istio_version, istio_mirror, need_root, reporter)
    if need_root:
        for tool in ("make", "openssl"):
            runner.require(tool)

    workdir.mkdir(parents=True, exist_ok=True)
    _write_topology(workdir / TOPOLOGY_FILE, mesh_id, contexts, istio_version, reporter, result)
    _write_if_absent(workdir / BASE_FILE, BASE_TEMPLATE, result)

    cert_dir.mkdir(mode=0o700, exist_ok=True)
    certs.secure_tree(cert_dir)
    if need_root:
        _make_root_ca(release, cert_dir, root_files, _root_variables(org, root_days, key_size), runner, reporter)
        result.created.extend(root_files)
    else:
        result.kept.extend(root_files)
        existing_org = certs.root_organization(cert_dir)
        if org and existing_org != org:
            reporter.warn(f"kept the existing root CA (organisation {existing_org!r}); --org {org!r} applies only to a new root CA")
    return result


def _check_arguments(workdir: Path, mesh_id: str | None) -> None:
    if workdir.exists() and not workdir.is_dir():
        raise ConfigError(f"workdir {workdir} is not a folder", hint="pass --workdir with a folder path")
    if mesh_id is not None and not is_label_value(mesh_id):
        raise ConfigError(f"invalid mesh id {mesh_id!r}", hint="letters, digits, '-', '_' or '.', at most 63 characters, e.g. mesh1")


def _write_topology(topology_path: Path, mesh_id: str | None, contexts: list[tuple[str, str]],
                    istio_version: str | None, reporter: Reporter, result: PrepResult) -> None:
    """A new topology.yaml; an existing one is kept as it is, with a warning where it differs from the
    options given."""
    if topology_path.exists():
        result.kept.append(topology_path)
        if mesh_id is not None:
            _warn_if_differs(topology_path, mesh_id, reporter)
        if istio_version is not None and _pinned_version(topology_path) != istio_version:
            reporter.warn(f"kept {topology_path} as it is: set `istio_version: {istio_version}` in it to pin that "
                          f"release (prep-mesh never edits an existing file)")
    else:
        write_atomic(topology_path, topology_text(mesh_id or DEFAULT_MESH_ID, contexts, _known_contexts(), istio_version))
        result.created.append(topology_path)
        result.listed = bool(contexts)


def _write_if_absent(path: Path, text: str, result: PrepResult) -> None:
    if path.exists():
        result.kept.append(path)
    else:
        write_atomic(path, text)
        result.created.append(path)


def _root_variables(org: str | None, root_days: int | None, key_size: int | None) -> dict[str, str]:
    """The certs Makefile's variables for the root CA, from the options given."""
    variables = {}
    if org:
        variables["ROOTCA_ORG"] = org
    if root_days:
        variables["ROOTCA_DAYS"] = str(root_days)
    if key_size:
        variables["ROOTCA_KEYSZ"] = str(key_size)
    return variables


def _make_root_ca(release: Release, cert_dir: Path, root_files: list[Path], variables: dict[str, str], runner: Runner,
                  reporter: Reporter) -> None:
    reporter.info(f"making the root CA with {release.certs_makefile}")
    try:
        with reporter.activity("making the root CA (a 4096-bit key takes a few seconds) ..."):
            certs.make_key_if_asked(runner.run, cert_dir / certs.ROOT_KEY,
                                    certs.requested_key_bits(certs.ROOT_KEY_BITS, variables))
            runner.run(certs.root_ca_command(release, cert_dir, variables))
    finally:
        certs.secure_tree(cert_dir)
    missing = [p for p in root_files if not p.is_file()]
    if missing:
        raise ConfigError(f"make root-ca finished but did not write {', '.join(map(str, missing))}",
                          hint=f"check {release.certs_makefile} is Istio's certs Makefile")


def _release(workdir: Path, istio_dir: str | None, istio_version: str | None, mirror: str | None, need_root: bool,
             reporter: Reporter) -> Release | None:
    """The release whose Makefile makes the root CA: the pinned one (--istio-version, else an existing
    topology.yaml's), fetched unless --istio-dir holds it; else the one found as before. With --istio-version it
    is fetched even when the root exists, so that apply finds it."""
    if istio_version is not None:
        problem = version_problem(istio_version)
        if problem:
            raise ConfigError(f"--istio-version {istio_version}: {problem[0]}",
                              hint=problem[1].replace("istio_version: ", ""))
    topology_path = workdir / TOPOLOGY_FILE
    pinned = istio_version or _pinned_version(topology_path)
    if pinned and (istio_version or need_root):
        if istio_dir:
            return checked_istio_dir(istio_dir, [pinned], f"{topology_path} (or --istio-version)")
        return fetch_release(pinned, workdir, choose_source(mirror), reporter)
    return find_release(istio_dir, workdir) if need_root else None


def _pinned_version(topology_path: Path) -> str | None:
    """The top-level istio_version of an existing topology.yaml (apply validates the file; here it only tells
    which release prep-mesh's Makefile should come from)."""
    try:
        value = (yaml.safe_load(topology_path.read_text()) or {}).get("istio_version")
    except (OSError, yaml.YAMLError, AttributeError):
        return None
    return value if isinstance(value, str) and version_problem(value) is None else None


def _warn_if_differs(topology_path: Path, mesh_id: str, reporter: Reporter) -> None:
    try:
        current = (yaml.safe_load(topology_path.read_text()) or {}).get("mesh_id")
    except (OSError, yaml.YAMLError, AttributeError):
        return
    if current != mesh_id:
        reporter.warn(f"kept {topology_path} with mesh_id {current!r}; edit it to change the mesh id to {mesh_id!r}")


def report(result: PrepResult, workdir: Path, reporter: Reporter) -> None:
    for path in result.created:
        reporter.success(f"created {_rel(path, workdir)}")
    for path in result.kept:
        reporter.info(f"kept    {_rel(path, workdir)} (already there)")
    reporter.info("")
    reporter.info("Next:")
    topology = _shown(workdir / TOPOLOGY_FILE)
    reporter.info(f"  1. check the contexts and networks listed in {topology}" if result.listed else
                  f"  1. edit {topology}: list your kube contexts and their networks")
    reporter.info(f"  2. optionally customise {_shown(workdir / BASE_FILE)} (the IstioOperator every cluster gets)")
    reporter.info(f"  3. preview with `{invocation.command('apply', '--dry-run')}`, then run `{invocation.command('apply')}`")


def _shown(path: Path) -> str:
    """A path as the user can type it from here: relative within the current folder, else absolute."""
    relative = _rel(path, Path.cwd())
    return str(path.absolute()) if relative.startswith("..") else relative


def _rel(path: Path, base: Path) -> str:
    try:
        return os.path.relpath(path, base)
    except ValueError:
        return str(path)
