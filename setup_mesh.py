#!/usr/bin/env python3
"""setup-mesh: build and keep a multi-cluster Istio service mesh across Kubernetes clusters.

This file is wiring only: it parses options and hands over to lib/.
"""
# No `from __future__ import annotations`: typer reads each option's annotation on every run, and a string
# annotation is compiled again each time (about 8 ms of every run, for some 45 options).

import signal
import sys


def _interrupted_while_starting(signum, frame) -> None:
    print("error: interrupted", file=sys.stderr)
    sys.exit(130)


# Ctrl-C while the modules load (most of a second on a busy machine): the same quiet exit as later on.
signal.signal(signal.SIGINT, _interrupted_while_starting)

import importlib  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Annotated, List, Optional  # noqa: E402

import typer  # noqa: E402

# From a checkout (./setup_mesh.py, or an editable install) the code is the checkout's lib/. A wheel
# installs lib/ as the package setup_mesh_lib, so that it never claims the generic top-level name
# `lib` in site-packages; in this process it then answers to `lib` as well, so imports read the same.
_CHECKOUT = Path(__file__).resolve().parent
if (_CHECKOUT / "lib" / "__init__.py").is_file():
    if str(_CHECKOUT) not in sys.path:
        sys.path.insert(0, str(_CHECKOUT))
else:
    sys.modules.setdefault("lib", importlib.import_module("setup_mesh_lib"))

from lib import __version__, commands, invocation, carotation  # noqa: E402 - after the choice above
from lib import apply as apply_command, teardown as teardown_command  # noqa: E402
from lib.errors import ConfigError  # noqa: E402
from lib.kube import READ_TIMEOUT  # noqa: E402

signal.signal(signal.SIGINT, signal.default_int_handler)  # from here a Ctrl-C is a KeyboardInterrupt, as lib/ expects

app = typer.Typer(
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},
    rich_markup_mode=None,
    help=(
        "Build and keep a multi-cluster Istio service mesh.\n\n"
        "prep-mesh writes a workspace (topology.yaml, base.yaml, the root CA); edit topology.yaml to list "
        "your kube contexts and their networks; apply makes the clusters match it; status shows the "
        "mesh's health; teardown removes it again."
    ),
)



def _version(value: bool) -> None:
    if value:
        print(f"setup-mesh {__version__}")
        raise typer.Exit(0)


@app.callback()
def _main(version: Annotated[bool, typer.Option("--version", is_eager=True, callback=_version,
                                                help="Print the version and exit.")] = False) -> None:
    pass


def _record_workdir(ctx: typer.Context, param: typer.CallbackParam, value: Path) -> Path:
    """Hints repeat --workdir only when it was given on the command line (env and default carry over)."""
    given = str(value) if ctx.get_parameter_source(param.name).name == "COMMANDLINE" else None
    invocation.set_current(invocation.Invocation(invocation.program_from_argv0(sys.argv[0]), given))
    return value


def _env(name: str) -> list[str]:
    """SETUP_MESH_NAME first, then the original script's plain NAME."""
    return [f"SETUP_MESH_{name}", name]


Workdir = Annotated[Path, typer.Option("--workdir", "-w", envvar=_env("WORKDIR"), show_envvar=True, metavar="DIR",
                                       callback=_record_workdir,
                                       help="The workspace folder holding topology.yaml, base.yaml and certs/.")]
Kubeconfig = Annotated[Optional[str], typer.Option("--kubeconfig", metavar="FILE", help="Kubeconfig file (default: KUBECONFIG, else ~/.kube/config).")]
IstioDir = Annotated[Optional[str], typer.Option("--istio-dir", envvar=_env("ISTIO_DIR"), show_envvar=True, metavar="DIR",
                                                 help="Unpacked Istio release (default: the one holding istioctl on PATH, else istio-* in the workdir).")]
IstioMirror = Annotated[Optional[str], typer.Option(
    "--istio-mirror", metavar="URL|DIR",
    help="Where to fetch the pinned Istio release from: an http(s) server or a folder holding "
         "istio-<version>-<os>-<arch>.tar.gz and its .sha256 [env var: SETUP_MESH_ISTIO_MIRROR; "
         "default: Istio's GitHub releases].")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="Print only warnings, errors and the final result.")]
Verbose = Annotated[bool, typer.Option("--verbose", "-v", help="Print every command it runs (pasteable), with its exit code and time.")]
Debug = Annotated[bool, typer.Option("--debug", help="Show Python tracebacks for unexpected errors.")]
Yes = Annotated[bool, typer.Option("--yes", "-y", help="Answer yes to confirmations (for scripts).")]
Parallel = Annotated[int, typer.Option("--parallel", "-p", min=1, metavar="N", help="How many clusters are worked on at once.")]
Timeout = Annotated[float, typer.Option("--timeout", min=1, metavar="SECONDS", help="Seconds any one command may take.")]
def _check_output(value: str) -> str:
    if value not in ("table", "json"):
        raise typer.BadParameter("use table or json")
    return value


def _check_min_wait(value: Optional[str]) -> Optional[str]:
    if value is not None:
        try:
            carotation.parse_duration(value)
        except ConfigError as exc:
            raise typer.BadParameter(f"{exc.message}: {exc.hint}") from None
    return value


Output = Annotated[str, typer.Option("--output", "-o", metavar="FORMAT", callback=_check_output,
                                     help="table or json (a stable document for scripts).")]
Contexts = Annotated[Optional[List[str]], typer.Option("--context", metavar="CONTEXT",
                                                       help="Only this kube context (repeatable; default: every cluster in topology.yaml).")]


@app.command("prep-mesh")
def prep_mesh(
    workdir: Workdir = Path("."),
    mesh_id: Annotated[Optional[str], typer.Option("--mesh-id", envvar=_env("MESH_ID"), show_envvar=True, metavar="ID",
                                                   help="The mesh's id (Istio meshID) for a new topology.yaml [default: mesh1].")] = None,
    org: Annotated[Optional[str], typer.Option("--org", envvar=_env("ORG_NAME"), show_envvar=True, metavar="NAME",
                                               help="Organisation (O=) of the new root CA and the clusters' intermediate CAs [default: the Makefile's, Istio].")] = None,
    istio_dir: IstioDir = None,
    istio_version: Annotated[Optional[str], typer.Option("--istio-version", metavar="VERSION",
                                                         help="Pin this Istio release (istio_version in a new topology.yaml) and fetch it for the root CA's Makefile.")] = None,
    istio_mirror: IstioMirror = None,
    add_context: Annotated[Optional[List[str]], typer.Option("--add-context", metavar="NAME[=NETWORK]",
                                                             help="A kube context to list in a new topology.yaml (repeatable).")] = None,
    old_context: Annotated[Optional[List[str]], typer.Option("--context", hidden=True)] = None,  # the earlier spelling
    root_days: Annotated[Optional[int], typer.Option("--root-days", min=1, metavar="DAYS", help="Validity of a new root CA in days [default: the Makefile's, 3650].")] = None,
    key_size: Annotated[Optional[int], typer.Option("--key-size", min=1024, metavar="BITS", help="RSA key size of a new root CA [default: the Makefile's, 4096].")] = None,
    quiet: Quiet = False,
    debug: Debug = False,
) -> None:
    """Prepare a workspace: topology.yaml, base.yaml and the mesh's root CA (certs/).

    Each file is written only if missing; nothing is ever overwritten, so a second run changes
    nothing. The root CA is made by the Istio release's tools/certs/Makefile.selfsigned.mk.
    Touches no cluster.
    """
    commands.run_guarded(debug, quiet, False, lambda r, rep: commands.prep_mesh(
        workdir, mesh_id=mesh_id, org=org, istio_dir=istio_dir, contexts=[*(add_context or []), *(old_context or [])],
        root_days=root_days, key_size=key_size, istio_version=istio_version, istio_mirror=istio_mirror, runner=r,
        reporter=rep))


@app.command()
def apply(
    workdir: Workdir = Path("."),
    kubeconfig: Kubeconfig = None,
    istio_dir: IstioDir = None,
    istio_mirror: IstioMirror = None,
    context: Contexts = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print per cluster what would change (-v: every command) and change nothing.")] = False,
    yes: Yes = False,
    parallel: Annotated[Optional[int], typer.Option("--parallel", "-p", min=1, metavar="N", help=f"How many clusters are worked on at once (default {commands.DEFAULT_PARALLEL}); an upgrade of istio_version moves this many primaries at a time (default 1).", show_default=False)] = None,
    restart_workloads: Annotated[bool, typer.Option("--restart-workloads", help="During an upgrade of istio_version: once a cluster's default tag has moved, restart the workloads still on the old revision (kubectl rollout restart deployment, namespace by namespace) instead of listing them.")] = False,
    gateway_timeout: Annotated[float, typer.Option("--gateway-timeout", min=1, metavar="SECONDS", help="Seconds to wait for east-west gateways to get an address.")] = 300.0,
    gateway_api_crds: Annotated[Optional[str], typer.Option("--gateway-api-crds", metavar="PATH|URL", help="Ambient meshes: the Gateway API CRDs to install where a cluster has none (default: the standard channel of the release your Istio expects).")] = None,
    replace_foreign_ca: Annotated[bool, typer.Option("--replace-foreign-ca", help="Replace a cacerts that chains to another root than this workspace's at once (mTLS between workloads breaks until they restart); without it apply refuses.")] = False,
    timeout: Timeout = commands.DEFAULT_TIMEOUT,
    quiet: Quiet = False,
    verbose: Verbose = False,
    debug: Debug = False,
) -> None:
    """Make the clusters match topology.yaml and base.yaml.

    Per cluster: intermediate CA and secret cacerts, namespace istio-system with its network label,
    the cluster's IstioOperator (base.yaml plus meshID, clusterName and network) installed with
    istioctl; across networks, east-west gateways; then every cluster's remote secret in every other
    cluster. Clusters removed from topology.yaml are uninstalled after confirmation. Unchanged
    clusters are not reinstalled.
    """
    commands.run_guarded(debug, quiet, verbose, lambda r, rep: apply_command.apply(
        workdir, kubeconfig=kubeconfig, istio_dir=istio_dir, dry_run=dry_run, yes=yes,
        parallel=parallel or commands.DEFAULT_PARALLEL, gateway_timeout=gateway_timeout, timeout=timeout, runner=r,
        reporter=rep, contexts=context or [], gateway_api_crds=gateway_api_crds, replace_foreign_ca=replace_foreign_ca,
        istio_mirror=istio_mirror, restart_workloads=restart_workloads, upgrade_parallel=parallel or 1),
        locking=None if dry_run else workdir)


@app.command()
def teardown(
    workdir: Workdir = Path("."),
    kubeconfig: Kubeconfig = None,
    istio_dir: IstioDir = None,
    yes: Yes = False,
    purge_certs: Annotated[bool, typer.Option("--purge-certs", help="Also delete certs/ (the root CA and every intermediate) from the workdir.")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="List what would be removed, per cluster, and change nothing.")] = False,
    remove_crds: Annotated[bool, typer.Option("--remove-crds", help="Delete Istio's CRDs even where others' Istio resources exist (they are deleted with them).")] = False,
    parallel: Parallel = commands.DEFAULT_PARALLEL,
    timeout: Timeout = commands.DEFAULT_TIMEOUT,
    quiet: Quiet = False,
    verbose: Verbose = False,
    debug: Debug = False,
) -> None:
    """Remove what setup-mesh created from every cluster in topology.yaml and in the recorded state.

    Its IstioOperators (control plane, east-west gateway), the cross-network Gateway, remote secrets,
    cacerts and istio-system. Istio's CRDs go too where no other Istio resources exist; otherwise they
    are kept and named (--remove-crds deletes them anyway). Keeps certs/ unless --purge-certs. Reads
    the clusters first: with nothing to remove it says so without asking; otherwise it asks first unless -y.
    """
    commands.run_guarded(debug, quiet, verbose, lambda r, rep: teardown_command.teardown(
        workdir, kubeconfig=kubeconfig, istio_dir=istio_dir, yes=yes, purge_certs=purge_certs,
        parallel=parallel, timeout=timeout, runner=r, reporter=rep, dry_run=dry_run, remove_crds=remove_crds),
        locking=None if dry_run else workdir)


@app.command("rotate-certs")
def rotate_certs(
    workdir: Workdir = Path("."),
    kubeconfig: Kubeconfig = None,
    istio_dir: IstioDir = None,
    context: Contexts = None,
    expiring_within: Annotated[Optional[int], typer.Option("--expiring-within", min=0, metavar="DAYS", help="Only intermediates that expire within DAYS days.")] = None,
    root: Annotated[bool, typer.Option("--root", help="Move the whole mesh to a new root CA, one stage per run (three stages).")] = False,
    min_wait: Annotated[Optional[str], typer.Option("--min-wait", metavar="DURATION", callback=_check_min_wait, help="With --root: how long a stage must have been in place everywhere before the next starts (24h, 90m, 0) [default: 24h, the workload certificate lifetime].")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the plan (with --root: the next stage) and change nothing.")] = False,
    yes: Yes = False,
    parallel: Parallel = commands.DEFAULT_PARALLEL,
    timeout: Timeout = commands.DEFAULT_TIMEOUT,
    quiet: Quiet = False,
    verbose: Verbose = False,
    debug: Debug = False,
) -> None:
    """Re-issue the clusters' intermediate CAs under the workspace's root and update their cacerts.

    The replaced files are kept in backups/<time>-intermediates/ (0700, keys 0600); istiod reloads
    cacerts on its own, and each control plane is confirmed running afterwards. A run that failed or
    was interrupted is finished by the next one.

    With --root: move the mesh to a new root in three stages, one per run: (1) trust both roots with
    the old intermediates, (2) intermediates of the new root, trusting both, (3) trust only the new
    root. A stage starts only when the previous one is in place in every cluster and has been for
    --min-wait (default 24h, the workload certificate lifetime).

    Each run shows what it will change per cluster and asks first (-y: without asking).
    """
    from lib.rootmove import rotate_root
    from lib.rotate import rotate_intermediates

    if root:
        if context or expiring_within is not None:
            raise typer.BadParameter("a new root is introduced to every cluster at once",
                                     param_hint="--context/--expiring-within with --root")
        wait = carotation.parse_duration(min_wait) if min_wait is not None else carotation.WORKLOAD_CERT_LIFETIME
        commands.run_guarded(debug, quiet, verbose, lambda r, rep: rotate_root(
            workdir, kubeconfig=kubeconfig, istio_dir=istio_dir, min_wait=wait, dry_run=dry_run,
            parallel=parallel, timeout=timeout, runner=r, reporter=rep, yes=yes), locking=None if dry_run else workdir)
    elif min_wait is not None:
        raise typer.BadParameter("only a move to a new root waits between stages", param_hint="--min-wait without --root")
    else:
        commands.run_guarded(debug, quiet, verbose, lambda r, rep: rotate_intermediates(
            workdir, kubeconfig=kubeconfig, istio_dir=istio_dir, contexts=context or [],
            expiring_within=expiring_within, dry_run=dry_run, parallel=parallel, timeout=timeout,
            runner=r, reporter=rep, yes=yes), locking=None if dry_run else workdir)


def _status(workdir, kubeconfig, istio_dir, contexts, output, wait, wait_timeout, parallel, timeout, quiet, verbose,
            debug):
    from lib.status import run_status

    commands.run_guarded(debug, quiet or output == "json", verbose and output != "json", lambda r, rep: run_status(
        workdir, kubeconfig=kubeconfig, istio_dir=istio_dir, contexts=contexts, output=output, wait=wait,
        wait_timeout=wait_timeout, parallel=parallel, timeout=timeout, runner=r, reporter=rep))


STATUS_HELP = """Show the mesh's health, reading only.

Per cluster: reachable, Istio version, network label, cluster name, cacerts (chains to this
workspace's root? days left), east-west gateway address, remote secrets from every peer, and
whether the installed overlay matches what apply would install now. Exit 0 when healthy.
"""


def _status_command(name: str, help_text: str):
    @app.command(name, help=help_text)
    def _cmd(
        workdir: Workdir = Path("."),
        kubeconfig: Kubeconfig = None,
        istio_dir: IstioDir = None,
        context: Contexts = None,
        output: Output = "table",
        wait: Annotated[bool, typer.Option("--wait", help="Poll until the mesh is healthy or --wait-timeout passes.")] = False,
        wait_timeout: Annotated[float, typer.Option("--wait-timeout", min=1, metavar="SECONDS", help="Seconds --wait polls for.")] = 300.0,
        parallel: Parallel = commands.DEFAULT_PARALLEL,
        timeout: Annotated[float, typer.Option("--timeout", min=1, metavar="SECONDS", help="Seconds any one read may take.")] = READ_TIMEOUT,
        quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print only the problems and the verdict, not the tables.")] = False,
        verbose: Verbose = False,
        debug: Debug = False,
    ) -> None:
        _status(workdir, kubeconfig, istio_dir, context or [], output, wait, wait_timeout, parallel, timeout, quiet,
                verbose, debug)

    return _cmd


_status_command("status", STATUS_HELP)
_status_command("describe", "Same as status: show the mesh's health, reading only.")


@app.command()
def verify(
    workdir: Workdir = Path("."),
    kubeconfig: Kubeconfig = None,
    istio_dir: IstioDir = None,
    namespace: Annotated[str, typer.Option("--namespace", "-n", metavar="NAME", help="The throwaway namespace verify creates (and deletes) in every cluster.")] = "setup-mesh-verify",
    registry: Annotated[Optional[str], typer.Option("--registry", metavar="REGISTRY", help="Pull both images from this registry instead (an air-gapped mirror), e.g. mirror.example.com/istio.")] = None,
    helloworld_tag: Annotated[str, typer.Option("--helloworld-tag", metavar="TAG", help="Tag of the helloworld image (examples-helloworld-v1).")] = "1.0",
    curl_tag: Annotated[str, typer.Option("--curl-tag", metavar="TAG", help="Tag of the curl image (curlimages/curl).")] = "8.16.0",
    ready_timeout: Annotated[float, typer.Option("--ready-timeout", min=1, metavar="SECONDS", help="Seconds to wait for the pods to be ready.")] = 180.0,
    keep: Annotated[bool, typer.Option("--keep", help="Leave the namespace and its workloads in place (to look at them).")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="List what it would create and run; touch no cluster.")] = False,
    output: Output = "table",
    parallel: Parallel = commands.DEFAULT_PARALLEL,
    timeout: Timeout = commands.DEFAULT_TIMEOUT,
    quiet: Quiet = False,
    verbose: Verbose = False,
    debug: Debug = False,
) -> None:
    """Prove that traffic crosses the mesh: every cluster calls helloworld in every cluster.

    Deploys helloworld (answering with its cluster's name) and a curl client in a throwaway namespace
    of every cluster, calls helloworld.<namespace>:5000/hello from each, prints the matrix (row:
    calling cluster, column: answering cluster) and, for every pair that does not answer, the likely
    cause with a hint. Deletes what it created, also after a failure or Ctrl-C, unless --keep.
    Exit 0 only when every cluster reaches every cluster.
    """
    from lib.verify import Images, Options, run_verify

    options = Options(namespace=namespace, images=Images.from_options(registry, helloworld_tag, curl_tag),
                      ready_timeout=ready_timeout, keep=keep, dry_run=dry_run, output=output, parallel=parallel)
    commands.run_guarded(debug, quiet or output == "json", verbose, lambda r, rep: run_verify(
        workdir, kubeconfig=kubeconfig, istio_dir=istio_dir, options=options, timeout=timeout, runner=r, reporter=rep))


def _click_class(name: str) -> type:
    """click's exception class of that name, as this typer uses it (typer vendors click in newer
    releases and depends on it in older ones)."""
    return next(c for c in typer.BadParameter.__mro__ if c.__name__ == name)


def main(argv: Optional[List[str]] = None) -> None:
    """Runs the CLI. Usage errors print as every other error does (``error: ...`` and a hint), not as
    click's ``Error:`` block."""
    usage_error, click_exception = _click_class("UsageError"), _click_class("ClickException")
    try:
        code = app(args=argv, prog_name=invocation.program_from_argv0(sys.argv[0]), standalone_mode=False)
    except usage_error as exc:
        if type(exc).__name__ == "NoArgsIsHelpError":  # no command given: the help, as click shows it
            exc.show()
        else:
            _usage_error(exc)
        sys.exit(exc.exit_code)
    except click_exception as exc:  # e.g. a file option that cannot be opened
        print(f"error: {exc.format_message()}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except (KeyboardInterrupt, typer.Abort):  # Ctrl-C while click itself was parsing or prompting
        print("error: interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)


def _usage_error(exc) -> None:
    ctx = exc.ctx
    if ctx is not None:
        print(ctx.get_usage(), file=sys.stderr)
    print(f"error: {exc.format_message()}", file=sys.stderr)
    if ctx is not None:
        print(f"hint: `{ctx.command_path} --help` lists what it takes", file=sys.stderr)


if __name__ == "__main__":
    main()
