"""How long setup-mesh waits between two looks at a cluster it is waiting for.

Each wait has its own default: a gateway's address, istiod after a cacerts change and verify's pods
are looked at every second, ``status --wait`` every two. ``SETUP_MESH_POLL_INTERVAL`` (seconds)
replaces all of them: larger for a slow or rate-limited API server, smaller where clusters answer at
once (the emulated clusters of the tests). This module is the only reader of that variable.
"""
from __future__ import annotations

import math
import os

from .errors import ConfigError

ENV = "SETUP_MESH_POLL_INTERVAL"


def _setting() -> float | None:
    raw = os.environ.get(ENV, "").strip()
    if not raw:
        return None
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0 or value > 3600:
        raise ConfigError(f"environment variable {ENV}={raw!r} is not a number of seconds between 0 and 3600",
                          hint="set it to e.g. 0.5, or unset it for the defaults (1 s; status --wait: 2 s)")
    return value


def check() -> None:
    """Refuse a bad setting at start, before any cluster is touched."""
    _setting()


def interval(default: float) -> float:
    """Seconds between two looks: the setting when there is one, else this wait's ``default``."""
    try:
        value = _setting()
    except ConfigError:  # check() refused it at start; never fail in the middle of a wait
        value = None
    return default if value is None else value
