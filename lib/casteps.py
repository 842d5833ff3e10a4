"""The steps that give a cluster its CA: the intermediate made from the workspace's root, and istio-system
with secret cacerts as the CA rotation says."""
from __future__ import annotations

import base64
import copy
import dataclasses
import json
from pathlib import Path

from . import carotation, certs
from .assesscerts import WorkspaceCerts
from .carotation import Transition
from .config import Cluster
from .errors import MeshError
from .executor import RunContext, Step
from .fsutil import read_if_present
from .kube import Tools
from .names import ISTIO_NAMESPACE, TRANSITION_ANNOTATION
from .overlay import cacerts_manifest, manifest_list, namespace_manifest
from .release import Release
from .yamlfile import dump


def cacerts_step(tools: Tools, cluster: Cluster, workdir: Path, namespace: dict | None = None,
                  transition: Transition | None = None) -> Step:
    """istio-system as ``namespace`` says (default: labelled with the cluster's network) and secret cacerts
    as the CA rotation (lib/carotation.py) says; during a root transition istio-system also records the stage."""
    namespace = namespace or namespace_manifest(cluster)
    if carotation.kept_intermediate(workdir, cluster.name, transition) is not None:
        return root_bundle_step(tools, cluster, workdir, namespace, transition)
    folder = carotation.issuing_dir(workdir, transition) / cluster.name
    annotations = namespace["metadata"].get("annotations") or {}
    annotated = "".join(f", annotated {k}={v}" for k, v in annotations.items())

    def action(ctx: RunContext) -> None:
        files = carotation.desired_cacerts(workdir, cluster.name, transition)
        if files is None:
            raise MeshError(f"the intermediate CA in {folder} is incomplete",
                            hint=f"delete {folder} and run the same command again: it makes a new one")
        manifest_ns = copy.deepcopy(namespace)
        if transition is not None:
            since = carotation.iso(carotation.utc_now())
            manifest_ns["metadata"].setdefault("annotations", {})[TRANSITION_ANNOTATION] = \
                transition.annotation(since)
        manifest = dump(manifest_list([manifest_ns, cacerts_manifest(files)]))
        ctx.run(tools.apply(cluster, manifest, shown=False))

    stage = (f" and the root bundle of stage {transition.stage} ({carotation.STAGES[transition.stage]})"
             if transition is not None and transition.stage < carotation.LAST_STAGE else "")
    return Step(f"namespace {ISTIO_NAMESPACE} (network {cluster.network}) and secret cacerts",
                commands=[tools.apply(cluster, None, shown=False)], action=action,
                note=f"stdin: Namespace {ISTIO_NAMESPACE} labelled {cluster.network}{annotated} and Secret cacerts "
                     f"made from {folder}/*.pem{stage} (holds the CA key: not shown)")


def root_bundle_step(tools: Tools, cluster: Cluster, workdir: Path, namespace: dict, transition: Transition) -> Step:
    """Stage 1 of a move from the clusters' root: the cluster keeps its intermediate, whose key this workspace
    never holds, so only root-cert.pem of its cacerts is patched (and only while it still holds the
    intermediate the move started from); then istio-system records the stage."""
    patch = tools.kubectl_cmd(cluster, "patch", "secret", "cacerts", "-n", ISTIO_NAMESPACE, "--type", "json",
                              "--patch-file", "/dev/stdin")  # the patch on stdin, made when the step runs

    def action(ctx: RunContext) -> None:
        files = carotation.kept_intermediate(workdir, cluster.name, transition) and \
            carotation.desired_cacerts(workdir, cluster.name, transition)
        if not files:
            raise MeshError(f"the move's record of the intermediate {cluster.context} keeps is missing "
                            f"({carotation.former_dir(workdir) / cluster.name})",
                            hint=f"restore {carotation.former_dir(workdir)} from a copy of the workspace")
        encoded = {name: base64.b64encode(files[name]).decode() for name in ("ca-cert.pem", "root-cert.pem")}
        ops = [{"op": "test", "path": "/data/ca-cert.pem", "value": encoded["ca-cert.pem"]},
               {"op": "replace", "path": "/data/root-cert.pem", "value": encoded["root-cert.pem"]}]
        try:
            ctx.run(dataclasses.replace(patch, stdin=json.dumps(ops), stdin_shown=True))
        except MeshError as exc:
            raise MeshError(f"secret cacerts was not patched: {exc.message}",
                            hint="if its intermediate CA changed since the move started, the move cannot keep it: "
                                 f"restore {carotation.former_dir(workdir)} from a copy of the workspace, or move the "
                                 f"cluster back to the intermediate recorded there") from None
        manifest_ns = copy.deepcopy(namespace)
        manifest_ns["metadata"].setdefault("annotations", {})[TRANSITION_ANNOTATION] = \
            transition.annotation(carotation.iso(carotation.utc_now()))
        ctx.run(tools.apply(cluster, dump(manifest_list([manifest_ns])), shown=True))

    return Step(f"namespace {ISTIO_NAMESPACE} (network {cluster.network}) and secret cacerts",
                commands=[patch, tools.apply(cluster, None, shown=True)], action=action,
                note=f"stdin: a JSON patch of secret cacerts that replaces only root-cert.pem (stage 1: the clusters' "
                     f"root, then this workspace's), applied only while ca-cert.pem is the intermediate recorded in "
                     f"{carotation.FORMER_DIR}/{cluster.name}/; the cluster keeps that intermediate and its key, which "
                     f"is never read; then Namespace {ISTIO_NAMESPACE} records the stage")


def workspace_certs(workdir: Path, transition: Transition | None, cluster_names) -> WorkspaceCerts:
    """The certificates the clusters' cacerts is judged against (lib/assesscerts.py), read from the workspace
    once: its root, mid-move the new one (or the clusters' former one), and what each cluster must hold now."""
    return WorkspaceCerts(
        read_if_present(certs.certs_dir(workdir) / certs.ROOT_CERT),
        {name: carotation.desired_cacerts(workdir, name, transition) for name in cluster_names}, transition,
        read_if_present(carotation.next_dir(workdir) / certs.ROOT_CERT) if transition else None,
        read_if_present(carotation.former_dir(workdir) / certs.ROOT_CERT)
        if transition and transition.foreign_start else None)


def intermediate_step(release: Release | None, cert_dir: Path, cluster: Cluster, variables: dict[str, str]) -> Step:
    """One make per cluster, in a folder of its own (a serial file of its own): clusters sign side by side."""
    release = release or Release(Path("<istio>"))
    stage = certs.signing_dir(cert_dir, cluster.name)
    make = certs.cacerts_command(release, stage, cluster.name, variables)
    key = stage / cluster.name / "ca-key.pem"
    bits = certs.requested_key_bits(certs.INTERMEDIATE_KEY_BITS, variables)  # a bad value: refused while planning

    def action(ctx: RunContext) -> None:
        certs.prepare_signing(cert_dir, cluster.name)
        if not certs.has_cacerts(stage, cluster.name):  # else a run cut short after make: only the move is left
            try:
                certs.make_key_if_asked(ctx.run, key, bits)
                ctx.run(make)
            except MeshError:
                certs.discard_incomplete(stage, cluster.name)  # an empty file would look made to make
                raise
        certs.finish_signing(cert_dir, cluster.name)

    return Step("make intermediate CA", commands=[*([certs.key_command(key, bits)] if bits else []), make], action=action,
                note=f"in {cert_dir.name}/{stage.name}/: a copy of {certs.ROOT_CERT} and a link to {certs.ROOT_KEY} "
                     f"(a serial file of its own); then moved to {cert_dir.name}/{cluster.name}/",
                change=f"+ intermediate CA ({cert_dir.name}/{cluster.name}/)")

