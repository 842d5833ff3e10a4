"""The certificates' lifecycle: which intermediates to re-issue, backups, and a rotation left unfinished.

Deciding is pure (functions of what the workspace and the clusters hold); the few file moves are here
too, so that every place that touches certs/ keeps the same layout and modes.
"""
from __future__ import annotations

import datetime as dt
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from . import certs
from .errors import ConfigError
from .fsutil import write_atomic
from .state import STATE_DIR

BACKUP_DIR = "backups"  # <workdir>/backups/<stamp>/...: what a rotation replaced, 0700, keys 0600
ROTATION_FILE = "rotation.json"  # <workdir>/.setup-mesh/rotation.json: an intermediate rotation under way


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(microsecond=0)


def stamp(moment: dt.datetime) -> str:
    """A folder name that sorts by time: 20261129T080000Z."""
    return moment.astimezone(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")


def iso(moment: dt.datetime) -> str:
    return moment.astimezone(dt.timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def parse_iso(text: str | None) -> dt.datetime | None:
    if not text:
        return None
    try:
        value = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return value if value.tzinfo else value.replace(tzinfo=dt.timezone.utc)


def backup_dir(workdir: Path, when: str) -> Path:
    return workdir / BACKUP_DIR / when


def secure_dir(path: Path) -> None:
    """A folder holding keys: 0700 all the way down from <workdir>/backups, keys 0600."""
    certs.secure_tree(path)
    parent = path.parent
    while parent.name and parent != parent.parent and BACKUP_DIR in parent.parts:
        os.chmod(parent, 0o700)
        parent = parent.parent


def move_to_backup(source: Path, target: Path) -> None:
    """Moves a folder of certificates (and keys) into a backup folder, private before and after."""
    target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    secure_dir(target.parent)
    os.replace(source, target)
    secure_dir(target)


# --- re-issuing intermediates -------------------------------------------------------------------

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
