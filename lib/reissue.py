"""rotate-certs' decisions: which intermediates to re-issue, and the record of a rotation under way, so
that one left unfinished is completed by the next run. Pure, but for that record's file."""
from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field
from pathlib import Path

from . import certs
from .carotation import parse_iso, stamp, utc_now
from .errors import ConfigError
from .fsutil import write_atomic
from .state import STATE_DIR

ROTATION_FILE = "rotation.json"  # <workdir>/.setup-mesh/rotation.json: an intermediate rotation under way


@dataclass(frozen=True)
class Intermediate:
    """An intermediate CA in the workspace (certs/<name>/ca-cert.pem)."""

    name: str
    fingerprint: str | None  # None: not made yet
    not_after: dt.datetime | None = None

    def days_left(self, now: dt.datetime) -> int | None:
        return None if self.not_after is None else (self.not_after - now).days


def read_intermediate(cert_dir: Path, name: str) -> Intermediate:
    path = cert_dir / name / "ca-cert.pem"
    if not certs.has_cacerts(cert_dir, name):
        return Intermediate(name, None)
    try:
        info = certs.read_cert(path.read_bytes())
    except ValueError:
        return Intermediate(name, "unreadable")
    return Intermediate(name, info.fingerprint, info.not_after)


@dataclass
class Rotation:
    """An intermediate rotation under way: for each context, the fingerprint of the intermediate it replaces.

    Written before anything changes and removed once every cluster runs on its new intermediate, so a
    run that was interrupted or failed is finished by the next one instead of starting over.
    """

    started: str
    replaced: dict[str, str | None] = field(default_factory=dict)  # context -> old fingerprint (None: none)

    @property
    def backup_name(self) -> str:
        return stamp(parse_iso(self.started) or utc_now()) + "-intermediates"


def rotation_path(workdir: Path) -> Path:
    return workdir / STATE_DIR / ROTATION_FILE


def load_rotation(workdir: Path) -> Rotation | None:
    path = rotation_path(workdir)
    try:
        data = json.loads(path.read_text())
        return Rotation(str(data["started"]), dict(data["replaced"]))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"cannot read the unfinished rotation {path}: {exc}",
                          hint=f"delete {path}; rotate-certs then starts a new rotation") from None


def save_rotation(workdir: Path, rotation: Rotation | None) -> None:
    path = rotation_path(workdir)
    if rotation is None:
        path.unlink(missing_ok=True)
        return
    write_atomic(path, json.dumps({"started": rotation.started, "replaced": rotation.replaced}, indent=2) + "\n",
                 mode=0o600)


def select_for_rotation(local: dict[str, Intermediate], expiring_within: int | None,
                        now: dt.datetime) -> list[str]:
    """The contexts whose intermediate a new rotation re-issues: all, or those expiring within N days."""
    chosen = []
    for context, inter in local.items():
        days = inter.days_left(now)
        if expiring_within is None or days is None or days <= expiring_within:
            chosen.append(context)
    return chosen


def needs_reissue(rotation: Rotation, context: str, current: Intermediate) -> bool:
    """Still to re-issue in this rotation: the workspace holds the intermediate it replaces, or none."""
    if context not in rotation.replaced:
        return False
    return current.fingerprint is None or current.fingerprint == rotation.replaced[context]
