"""What the CLI commands share: errors as one message, prep-mesh's wiring, and the parts of the workspace and
of a cluster's uninstall that apply, teardown and rotate-certs each use. The run those three go through
(refusal, confirmation, run log, progress, summary) is lib/driver.py; each lives in a module of its own
(lib/apply.py, lib/teardown.py, lib/rotate.py, lib/rootmove.py); setup_mesh.py only wires options to them."""
from __future__ import annotations

import traceback
from contextlib import nullcontext
from pathlib import Path
from typing import Callable

import typer

from . import certs, carotation, invocation
from . import polling
from .assess import CacertsFinding, CacertsState
from .assesscerts import assess_cacerts
from .baseconfig import AMBIENT
from .casteps import workspace_certs
from .errors import ConfigError, MeshError
from .executor import RERUN_HINT
from .fsutil import workspace_lock
from .invocation import prep_hint
from .kube import Observed
from .istiousage import IstioUsage
from .names import ISTIO_NAMESPACE
from .plan import Uninstall
from .prep import parse_context_options, prep_mesh as _prep_mesh, report as _report_prep
from .release import Release, find_release
from .reporter import Reporter
from .runner import ShRunner
from .workspace import Workspace

DEFAULT_PARALLEL = 8
DEFAULT_TIMEOUT = 600.0


def run_guarded(debug: bool, quiet: bool, verbose: bool, body: Callable[[ShRunner, Reporter], int | None],
                locking: Path | None = None) -> None:
    """Runs a command body; errors become one message and an exit code, never a traceback. ``locking``: the
    workspace the run changes, held for the run (a second run there is refused)."""
    reporter = Reporter(quiet=quiet, verbose=verbose)
    runner = ShRunner()
    runner.listeners.append(reporter.command)
    try:
        polling.check()
        with workspace_lock(locking) if locking is not None else nullcontext():
            code = body(runner, reporter) or 0
    except MeshError as exc:
        reporter.error(exc)
        code = exc.exit_code
    except (KeyboardInterrupt, typer.Abort):  # Ctrl-C, also at a confirmation prompt (typer.Abort is
        # click's own class in typers that depend on click, and typer's in those that vendor it)
        runner.terminate_all()
        reporter.error(MeshError("interrupted", hint=RERUN_HINT))
        code = 130
    except Exception as exc:  # noqa: BLE001 - the last line of defence against tracebacks
        if debug:
            traceback.print_exc()
        reporter.error(MeshError(f"internal error: {exc!r}", hint="re-run with --debug for the traceback, and report it"))
        code = 1
    finally:
        reporter.stop_progress()
    raise typer.Exit(code)


# --- prep-mesh -------------------------------------------------------------------------------

def prep_mesh(workdir: Path, *, contexts: list[str], reporter: Reporter, **kwargs) -> int:
    result = _prep_mesh(workdir, contexts=parse_context_options(contexts), reporter=reporter, **kwargs)
    _report_prep(result, workdir, reporter)
    return 0


def other_roots_refusal(other_roots: dict[str, CacertsFinding], replace: bool,
                        command: str = "apply") -> ConfigError | None:
    """Clusters whose cacerts chains to another root are never replaced unasked, whoever made it: workloads
    holding certificates of the old root and of the new one cannot talk until they restart. ``command``:
    the one refused (apply, rotate-certs), named in the hint."""
    if not other_roots or replace:
        return None
    lines = "".join(f"\n  {context}: {finding.describe()}" for context, finding in other_roots.items())
    message = (f"secret cacerts chains to another root than this workspace's in {', '.join(other_roots)}; replacing "
               f"it breaks mTLS between workloads until they restart, so nothing was changed:{lines}")
    states = {f.state for f in other_roots.values()}
    if states == {CacertsState.OTHER_MOVE}:
        # Putting this workspace's cacerts back mid-move undoes the stages of the workspace that moves the mesh.
        return ConfigError(message, hint="leave the mesh to the workspace that is moving it: its `rotate-certs --root` "
                                         "finishes the move, and from then on the mesh runs on that workspace's root")
    # Another workspace's mesh (not somebody's own CA) can be moved to this workspace's root in stages.
    move = (f"or, when every cluster runs on that one root, `{invocation.command('rotate-certs', '--root')}` moves "
            f"the mesh to this workspace's root without downtime; " if states == {CacertsState.OTHER_ROOT} else "")
    return ConfigError(message, hint=f"run {command} from the workspace that holds that root; {move}or "
                                     f"`{invocation.command('apply', '--replace-foreign-ca')}` replaces it at once "
                                     f"(then restart every workload: `kubectl rollout restart deployment -n <namespace>`)")



# --- shared set-up -----------------------------------------------------------------------------

def uninstalls_for(workdir: Path, ours: frozenset[str], usage: dict[str, IstioUsage | MeshError],
                   observed: dict[str, Observed], remove_crds: bool = False) -> dict[str, Uninstall]:
    """How to remove setup-mesh from each cluster whose Istio users were read (``usage``), from who else uses
    Istio there and whose CA cacerts holds: a cacerts the assessment finds foreign (not labelled by
    setup-mesh, on none of the workspace's roots) stays. The workspace's roots are read once."""
    roots = workspace_certs(workdir, carotation.load_transition(workdir), []).roots
    uninstall = {}
    for context, found in usage.items():
        if isinstance(found, IstioUsage):
            seen = observed.get(context)
            finding = assess_cacerts(seen.cacerts if seen else None, bool(seen and seen.cacerts_labelled), None, roots)
            uninstall[context] = Uninstall(workdir, ours, found, remove_crds,
                                           finding.issuer if finding.state is CacertsState.FOREIGN else None,
                                           bool(seen and seen.recorded_data_plane == AMBIENT))
    return uninstall


def describe_kept(context: str, how: Uninstall) -> str | None:
    """What teardown keeps in one cluster, and why; None when it removes everything of Istio's."""
    lines = []
    if how.foreign_cacerts:
        lines.append(f"{context}: keeps secret cacerts and namespace {ISTIO_NAMESPACE}: that cacerts was not made by "
                     f"setup-mesh ({how.foreign_cacerts}); delete them yourself once nothing needs them")
    if how.usage.foreign and how.remove_crds:
        lines.append(f"{context}: --remove-crds: Istio's CRDs are deleted, and with them these resources that "
                     f"setup-mesh did not make: {how.usage.describe()}")
    elif how.usage.foreign:
        kept = "Istio's CRDs"  # istioctl uninstall -f removes the rest of base (webhooks, reader roles)
        if how.usage.in_namespace(ISTIO_NAMESPACE):
            kept += f" and namespace {ISTIO_NAMESPACE}"
        lines.append(f"{context}: keeps {kept}, because Istio resources setup-mesh did not make exist: "
                     f"{how.usage.describe()}. --remove-crds deletes the CRDs anyway, and those resources with them")
    if how.usage.namespace_objects:
        lines.append(f"{context}: keeps namespace {ISTIO_NAMESPACE}: it holds what setup-mesh and Istio did not make: "
                     f"{', '.join(how.usage.namespace_objects)}; delete them, then the namespace, yourself once nothing "
                     f"needs them")
    if how.gateway_api_kept:
        lines.append(f"{context}: keeps the Gateway API CRDs (gateway.networking.k8s.io) its ambient mesh needed: "
                     f"other Gateway API resources may use them; delete them yourself once nothing does (the "
                     f"GatewayClasses istiod made stay with them, served by nothing: istio-east-west for the "
                     f"east-west gateway, and those of Istio's own Gateway API support such as istio and "
                     f"istio-waypoint; `kubectl get gatewayclasses` lists them)")
    return "\n".join(lines) or None


def intermediates_refusal(ws: Workspace, transition: "carotation.Transition | None") -> ConfigError | None:
    """An intermediate CA in certs/<cluster>/ that the workspace's root did not issue would be installed as it
    is (or kept, where the cluster holds it already), and the other clusters would not trust that cluster's
    workloads; one whose ca-key.pem is not its key would keep istiod from starting ("failed to create an
    istiod CA"). apply refuses both before any cluster is touched. (Mid-move the stages decide what each
    cluster holds; rotate-certs re-issues intermediates, which repairs them.)"""
    cert_dir = certs.certs_dir(ws.workdir)
    flaws = certs.intermediate_flaws(cert_dir, [c.name for c in ws.topology.clusters], moving=transition is not None)
    foreign, unkeyed = flaws.foreign, flaws.unkeyed
    folders = " ".join(str(cert_dir / name) for name in foreign or unkeyed)
    repair = f"`rm -r {folders}`, then run apply again: it issues new intermediate CAs from the workspace's root"
    if foreign:
        return ConfigError(
            f"the intermediate CA in {', '.join(str(cert_dir / n) for n in foreign)} was not issued by this "
            f"workspace's root CA ({cert_dir / certs.ROOT_CERT}): the other clusters would not trust the workloads "
            f"of {', '.join(foreign)}", hint=f"{repair} (or put back the root CA that issued them)")
    if unkeyed:
        return ConfigError(
            f"{', '.join(str(cert_dir / n / 'ca-key.pem') for n in unkeyed)} is not the key of the intermediate "
            f"CA beside it (ca-cert.pem): istiod would not start on that cacerts (\"failed to create an istiod "
            f"CA\")", hint=f"{repair} (or put back the ca-key.pem made with it)")
    return None


def certs_prerequisites(ws: Workspace, istio_dir: str | None, runner: ShRunner,
                         dry_run: bool, force: bool = False,
                         transition: "carotation.Transition | None" = None) -> tuple[Release | None, dict[str, str]]:
    """What making missing intermediate CAs (``force``: any) needs: the root CA, the Istio release, make, openssl.

    During a root transition the intermediates come from the root that the stage runs on."""
    cert_dir = carotation.issuing_dir(ws.workdir, transition)
    release: Release | None = None
    if force or any(not certs.has_cacerts(cert_dir, c.name)
                    and carotation.kept_intermediate(ws.workdir, c.name, transition) is None for c in ws.topology.clusters):
        if not ((cert_dir / certs.ROOT_CERT).is_file() and (cert_dir / certs.ROOT_KEY).is_file()):
            # Mid-transition a new root from prep-mesh would be trusted by no cluster: only the one they hold will do.
            hint = (prep_hint() if transition is None else
                    "restore certs/ and certs-next/ from a copy of the workspace: the clusters trust both roots "
                    "until the move to the new root completes")
            problem = ConfigError(f"the mesh's root CA is missing ({cert_dir / certs.ROOT_CERT})", hint=hint)
            if not dry_run:
                raise problem
            ws.notes.append(f"{problem.message}: {problem.hint}")
        try:
            release = find_release(istio_dir, ws.workdir)
        except ConfigError:
            if not dry_run:
                raise
            ws.notes.append("no Istio release found (--istio-dir, ISTIO_DIR, istioctl on PATH, istio-* in the workdir): "
                            "the plan names the Makefile as <istio>/tools/certs/Makefile.selfsigned.mk")
        if not dry_run:
            for tool in ("make", "openssl"):
                runner.require(tool)
        # Intermediates are issued under the root's organisation, as the original script used one ORG_NAME.
        org = certs.root_organization(cert_dir)
        if org:
            return release, {"INTERMEDIATE_ORG": org}
    return release, {}
