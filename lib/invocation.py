"""How the user started setup-mesh, so that hints name commands they can paste as they are.

The CLI records the program as invoked (``setup-mesh`` when installed, ``./setup_mesh.py`` from a
checkout) and the ``--workdir`` spelling given on the command line (none when it came from the
environment or the default, which a pasted command gets the same way).
"""
from __future__ import annotations

import os
import shlex
from dataclasses import dataclass

SCRIPT_NAME = "setup_mesh.py"
INSTALLED_NAME = "setup-mesh"


@dataclass(frozen=True)
class Invocation:
    program: str = INSTALLED_NAME
    workdir: str | None = None  # as given on the command line

    def command(self, *args: str) -> str:
        """``<program> ARGS [--workdir W]``, pasteable."""
        argv = [*args]
        if self.workdir is not None:
            argv += ["--workdir", self.workdir]
        return " ".join([self.program, *(shlex.quote(a) for a in argv)])


def program_from_argv0(argv0: str) -> str:
    """The script run from a checkout keeps its path (``./`` added when bare); an installed entry point
    is named by its base name, since it is on PATH."""
    base = os.path.basename(argv0)
    if base == SCRIPT_NAME:
        return argv0 if os.sep in argv0 else f".{os.sep}{argv0}"
    if base in ("", "__main__.py", "-c") or base.startswith("python"):
        return INSTALLED_NAME
    return base


_current = Invocation()


def set_current(invocation: Invocation) -> None:
    global _current
    _current = invocation


def command(*args: str) -> str:
    """A setup-mesh command line as the user would paste it now."""
    return _current.command(*args)


def prep_hint() -> str:
    if _current.workdir is None:
        return f"run `{command('prep-mesh')}` in the workdir first (or pass --workdir)"
    return f"run `{command('prep-mesh')}` first"
