"""Meshes built once per test session (per xdist worker), each test getting its own copy.

Building a mesh from nothing (emulated clusters, prep-mesh, a full apply) is most of what an end-to-end
test costs. A *shape* is such a starting point, named and built by a function; the first test that asks
for it builds it, saves the sandbox (``Sandbox.save``: every object, UID, LoadBalancer address, token and
CA) and the workspace, and every test then gets a restored copy of both in its own tmp_path.

A copy is the same mesh to every client: its emulators listen on the ports the original did (held by
this process with ``reserve_port`` between copies), so the kubeconfig, the kube cache and what setup-mesh
recorded of each API server (remote secrets, credential fingerprints) stay true. Two copies of one shape
alive at once (a module-scoped copy and a test's own) each get a template of their own, built on its
own ports.
"""
from __future__ import annotations

import shutil
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from tests.meshkit import Mesh
from tests.sandbox import Sandbox, reserve_port

# build(start, workdir) -> Mesh: ``start(contexts, **Sandbox.up options)`` starts the sandbox to build on.
Builder = Callable[[Callable[..., Sandbox], Path], Mesh]


@dataclass
class _Template:
    saved: Path  # Sandbox.save of the built mesh
    workdir: Path  # its workspace, as the build left it
    ports: dict[str, int]
    sockets: list = field(default_factory=list)  # the reservations that keep ``ports`` ours
    busy: bool = False


class Shapes:
    def __init__(self, root: Path):
        self.root = Path(root)
        self._templates: dict[str, list[_Template]] = {}

    @contextmanager
    def copy(self, name: str, build: Builder, dest: Path, mesh_class: type = Mesh) -> Iterator[Mesh]:
        """A running copy of shape ``name`` in ``dest`` (``sandbox/`` and ``ws/``), stopped afterwards."""
        template = self._free_template(name, build)
        template.busy = True
        try:
            sandbox = Sandbox.restore(template.saved, dest / "sandbox", ports=template.ports)
            try:
                workdir = dest / "ws"
                shutil.copytree(template.workdir, workdir, symlinks=True)
                _rename_paths(workdir, template.workdir, workdir)
                _rename_paths(sandbox.dir, template.workdir, workdir, only=["istioctl-calls.jsonl"])
                yield mesh_class(sandbox, workdir)
            finally:
                sandbox.down()
        finally:
            template.busy = False

    def _free_template(self, name: str, build: Builder) -> _Template:
        templates = self._templates.setdefault(name, [])
        for template in templates:
            if not template.busy:
                return template
        template = self._build(self.root / f"{name}-{len(templates) + 1}", build)
        templates.append(template)
        return template

    @staticmethod
    def _build(root: Path, build: Builder) -> _Template:
        sockets: dict[str, object] = {}
        started: list[Sandbox] = []

        def start(contexts, **options) -> Sandbox:
            for ctx in contexts:
                sockets.setdefault(ctx, reserve_port())
            sandbox = Sandbox.up(root / "sandbox", contexts,
                                 ports={ctx: sockets[ctx].getsockname()[1] for ctx in contexts}, **options)
            started.append(sandbox)
            return sandbox

        try:
            mesh = build(start, root / "ws")
            assert started and mesh.sandbox is started[-1], "a shape is built on the sandbox start() gave"
            mesh.sandbox.save(root / "saved")
        except BaseException:
            for sock in sockets.values():
                sock.close()
            raise
        finally:
            for sandbox in started:
                sandbox.down()
        return _Template(root / "saved", mesh.workdir, {c: s.getsockname()[1] for c, s in sockets.items()},
                         list(sockets.values()))

    def close(self) -> None:
        for templates in self._templates.values():
            for template in templates:
                for sock in template.sockets:
                    sock.close()


def _rename_paths(directory: Path, old: Path, new: Path, only: list[str] | None = None) -> None:
    """Text files under ``directory`` (or just those named) that name the template's workspace name the copy's."""
    paths = [directory / n for n in only] if only is not None else [p for p in directory.rglob("*") if p.is_file()]
    before, after = str(old).encode(), str(new).encode()
    for path in paths:
        if path.is_file() and not path.is_symlink():
            data = path.read_bytes()
            if before in data:
                path.write_bytes(data.replace(before, after))
