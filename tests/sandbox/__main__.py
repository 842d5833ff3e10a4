"""Start and stop a sandbox of emulated clusters by hand.

    python -m tests.sandbox up --clusters 2 --dir /tmp/mesh      # contexts cluster1, cluster2
    python -m tests.sandbox up --contexts east,west --dir /tmp/mesh --lb-delay 2
    source /tmp/mesh/env                                          # kubectl, istioctl and KUBECONFIG
    python -m tests.sandbox status --dir /tmp/mesh
    python -m tests.sandbox down --dir /tmp/mesh
    python -m tests.sandbox release --version 1.29.6 --out /tmp/releases    # a stand-in release and its archive

Run from the project root (the directory holding tests/).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import LB_DELAY, NAMESPACE_DELETE_DELAY, READY_DELAY, Sandbox


def _parse_lb_delay(text: str):
    """``2`` or ``never`` for every cluster, or ``ctx=2,ctx2=never`` per cluster."""

    def one(value: str):
        value = value.strip()
        if value.lower() in ("never", "none"):
            return None
        seconds = float(value)
        if seconds < 0:
            raise ValueError("negative delay")
        return seconds

    try:
        if "=" in text:
            out = {}
            for item in text.split(","):
                ctx, _, value = item.partition("=")
                out[ctx.strip()] = one(value)
            return out
        return one(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, 'never', or CTX=SECONDS[,CTX=never...]: {text!r}")


def _parse_namespaces(text: str) -> dict[str, str]:
    """``ctx=ns,ctx2=ns2``: the default namespace each kubeconfig context names."""
    out = {}
    for item in text.split(","):
        ctx, eq, namespace = item.partition("=")
        if not eq or not ctx.strip() or not namespace.strip():
            raise argparse.ArgumentTypeError(f"expected CTX=NAMESPACE[,CTX=NAMESPACE...]: {text!r}")
        out[ctx.strip()] = namespace.strip()
    return out


def _contexts(args) -> list[str]:
    if args.contexts:
        names = [c.strip() for c in args.contexts.split(",") if c.strip()]
        if not names:
            raise SystemExit("error: --contexts needs at least one name")
        return names
    if args.clusters < 1:
        raise SystemExit("error: --clusters must be at least 1")
    return [f"cluster{i}" for i in range(1, args.clusters + 1)]


def cmd_up(args) -> int:
    directory = Path(args.dir).resolve()
    try:
        sandbox = Sandbox.up(directory, _contexts(args), lb_delay=args.lb_delay, namespaces=args.namespaces,
                             ready_delay=args.ready_delay, namespace_delete_delay=args.namespace_delete_delay,
                             istio_version=args.istio_version)
    except (RuntimeError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"started {len(sandbox.contexts)} emulated cluster(s) in {directory}:")
    for ctx in sandbox.contexts:
        print(f"  {ctx:<20} {sandbox.url(ctx):<28} pid {sandbox.pid(ctx)}")
    print("API server addresses for topology.yaml (api_server:), as peers' control planes reach them "
          f"(also in {directory / 'api_servers.json'}):")
    for ctx in sandbox.contexts:
        print(f"  {ctx:<20} {sandbox.api_server(ctx)}")
    if sandbox.istio_dir:
        print(f"stand-in Istio release: {sandbox.istio_dir}")
    else:
        print("no stand-in Istio release (tests/sandbox/release.py is absent)")
    print(f"kubeconfig: {sandbox.kubeconfig} (current context {sandbox.contexts[0]})")
    print(f"use them:   source {directory / 'env'}")
    print(f"stop them:  python -m tests.sandbox down --dir {directory}")
    return 0


def cmd_down(args) -> int:
    directory = Path(args.dir).resolve()
    try:
        sandbox = Sandbox.load(directory)
    except FileNotFoundError:
        print(f"nothing to stop: no sandbox in {directory}")
        return 0
    stopped = sandbox.down()
    if stopped:
        print(f"stopped {len(stopped)} emulated cluster(s) in {directory}: {', '.join(stopped)}")
    else:
        print(f"nothing to stop: no emulated cluster of {directory} is running")
    return 0


def cmd_status(args) -> int:
    directory = Path(args.dir).resolve()
    try:
        sandbox = Sandbox.load(directory)
    except FileNotFoundError:
        print(f"no sandbox in {directory}")
        return 1
    running = set(sandbox.running_contexts())
    for ctx in sandbox.contexts:
        state = "running" if ctx in running else "stopped"
        print(f"  {ctx:<20} {sandbox.url(ctx):<28} pid {sandbox.pid(ctx):<8} {state}")
    return 0 if running else 3


def cmd_release(args) -> int:
    from .release import VERSION, archive_release, check_version
    try:
        version = check_version(args.version or VERSION)
    except ValueError as exc:
        print(f"error: --version: {exc}", file=sys.stderr)
        return 2
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    archive, checksum = archive_release(out, version)
    print(f"stand-in Istio {version} release: {out / f'istio-{version}'}")
    print(f"archive: {archive}")
    print(f"checksum: {checksum}")
    return 0


def _version_arg(text: str) -> str:
    from .release import check_version
    try:
        return check_version(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.sandbox",
        description="Emulated Kubernetes clusters (one local API server process per context) for trying "
                    "setup-mesh without real clusters. The processes keep running after 'up' returns.",
        epilog="After 'up', 'source DIR/env' puts the pinned kubectl and the stand-in istioctl on PATH and points "
               "KUBECONFIG at DIR/kubeconfig.")
    sub = parser.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="start emulated clusters and write DIR/kubeconfig and DIR/env")
    which = up.add_mutually_exclusive_group(required=True)
    which.add_argument("--contexts", help="comma-separated context names, e.g. east,west")
    which.add_argument("--clusters", type=int, help="number of clusters, named cluster1..clusterN")
    up.add_argument("--dir", required=True, help="directory for kubeconfig, env, bin/, logs and state")
    up.add_argument("--lb-delay", type=_parse_lb_delay, default=LB_DELAY, metavar="SECONDS|never|CTX=S,...",
                    help=f"delay before LoadBalancer Services get an address (default {LB_DELAY}); 'never' keeps them "
                         "pending; CTX=S sets it per context")
    up.add_argument("--namespaces", type=_parse_namespaces, default=None, metavar="CTX=NS,...",
                    help="give these kubeconfig contexts a default namespace, as many users' contexts have")
    up.add_argument("--ready-delay", type=float, default=READY_DELAY, metavar="SECONDS",
                    help=f"delay before a new Deployment's replicas are ready (default {READY_DELAY})")
    up.add_argument("--namespace-delete-delay", type=float, default=NAMESPACE_DELETE_DELAY, metavar="SECONDS",
                    help=f"how long a deleted namespace stays Terminating (default {NAMESPACE_DELETE_DELAY})")
    up.add_argument("--istio-version", type=_version_arg, default=None, metavar="X.Y.Z",
                    help="the stand-in Istio release's version (1.28.x to 1.31.x; default 1.30.3)")
    up.set_defaults(func=cmd_up)

    down = sub.add_parser("down", help="stop every emulated cluster of DIR (safe to repeat)")
    down.add_argument("--dir", required=True)
    down.set_defaults(func=cmd_down)

    status = sub.add_parser("status", help="show the clusters of DIR and whether they run")
    status.add_argument("--dir", required=True)
    status.set_defaults(func=cmd_status)

    release = sub.add_parser("release", help="write a stand-in Istio release: OUT/istio-X/, "
                                             "OUT/istio-X-linux-amd64.tar.gz and its .sha256")
    release.add_argument("--version", default=None, metavar="X.Y.Z",
                         help="1.28.x, 1.29.x, 1.30.x or 1.31.x (default 1.30.3)")
    release.add_argument("--out", required=True, help="directory to write into")
    release.set_defaults(func=cmd_release)

    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
