"""Rotating the mesh's CAs: the move to a new root in three stages, and the backups and times every
rotation shares (which intermediates to re-issue, and a rotation left unfinished, are in lib/reissue.py).

Deciding is pure (functions of what the workspace and the clusters hold); the few file moves are here
too, so that every place that touches certs/ keeps the same layout and modes.
"""
from __future__ import annotations

import datetime as dt
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from . import certs
from .errors import ConfigError
from .fsutil import write_atomic
from .names import TRANSITION_ANNOTATION

BACKUP_DIR = "backups"  # <workdir>/backups/<stamp>/...: what a rotation replaced, 0700, keys 0600


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


# --- moving the mesh to a new root ----------------------------------------------------------------

NEXT_DIR = "certs-next"  # the new root and its intermediates, made by the Makefile in a folder of its own
# A move to the workspace's own root from the root the clusters run on, whose key this workspace does not
# hold (another workspace made the mesh): that root and each cluster's intermediate, public parts only.
FORMER_DIR = "certs-former"
PUBLIC_FILES = ("ca-cert.pem", "cert-chain.pem")  # an intermediate's certificates, without its key
TRANSITION_FILE = "transition.json"  # in certs-next/ (certs-former/): the stage the workspace has reached
LAST_STAGE = 3
# The default --min-wait: istiod issues workload certificates for 24 h and the agents renew them after
# about half of that, so a stage in place for this long is what every workload presents.
WORKLOAD_CERT_LIFETIME = dt.timedelta(hours=24)
MAX_WAIT = dt.timedelta(days=3650)  # the Makefile's root lifetime: no stage needs to last longer
STAGES = {
    1: "trust both roots, keep the old intermediate",
    2: "switch to an intermediate of the new root, trust both roots",
    3: "trust only the new root",
}


@dataclass
class Transition:
    stage: int
    old_root: str  # SHA-256 fingerprints
    new_root: str
    started: str
    foreign_start: bool = False  # from the clusters' root (key not held here) to the workspace's own root

    @property
    def backup_name(self) -> str:
        return stamp(parse_iso(self.started) or utc_now()) + "-root"

    def annotation(self, since: str) -> str:
        return f"stage={self.stage} root={self.new_root[:16]} since={since}"


def next_root_name(current: str | None, when: dt.datetime) -> str:
    """The new root's common name: the current one (without the time an earlier move added) and when
    this move started. During the move the clusters trust both roots; made by the same Makefile they
    would share one name, and a verifier that looks a trust anchor up by name (openssl verify of the
    root itself, for one) could pick the other root."""
    base = re.sub(r" \d{8}T\d{6}Z$", "", current or "") or "Root CA"
    return f"{base} {stamp(when)}"


def next_dir(workdir: Path) -> Path:
    return workdir / NEXT_DIR


def former_dir(workdir: Path) -> Path:
    return workdir / FORMER_DIR


def load_transition(workdir: Path) -> Transition | None:
    found = [folder / TRANSITION_FILE for folder in (next_dir(workdir), former_dir(workdir))
             if (folder / TRANSITION_FILE).exists()]
    if len(found) > 1:
        raise ConfigError(f"two moves to a new root are recorded ({found[0]}, {found[1]})",
                          hint="restore the workspace from a copy: only one move can be under way")
    if not found:
        return None
    path = found[0]
    try:
        data = json.loads(path.read_text())
        transition = Transition(int(data["stage"]), str(data["old_root"]), str(data["new_root"]), str(data["started"]),
                                data.get("foreign_start") is True)
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"cannot read the root transition's record {path}: {exc}",
                          hint=f"restore it from a copy of the workspace; {next_dir(workdir)} holds the new root") from None
    if not 1 <= transition.stage <= LAST_STAGE:
        raise ConfigError(f"{path}: stage {transition.stage} is not one of 1..{LAST_STAGE}",
                          hint="restore it from a copy of the workspace")
    return transition


def save_transition(workdir: Path, transition: Transition) -> None:
    folder = former_dir(workdir) if transition.foreign_start else next_dir(workdir)
    record = {"stage": transition.stage, "old_root": transition.old_root, "new_root": transition.new_root,
              "started": transition.started, **({"foreign_start": True} if transition.foreign_start else {})}
    write_atomic(folder / TRANSITION_FILE, json.dumps(record, indent=2) + "\n", mode=0o600)


def issuing_dir(workdir: Path, transition: Transition | None) -> Path:
    """Where the intermediates the clusters must run on live: the new root's folder from stage 2 on (a move
    from the clusters' root to the workspace's own: certs/ throughout)."""
    if transition is not None and transition.stage >= 2 and not transition.foreign_start:
        return next_dir(workdir)
    return certs.certs_dir(workdir)


def root_paths(workdir: Path, transition: Transition) -> tuple[Path, Path]:
    """Where the move's old and new root certificates are."""
    if transition.foreign_start:
        return former_dir(workdir) / certs.ROOT_CERT, certs.certs_dir(workdir) / certs.ROOT_CERT
    return certs.certs_dir(workdir) / certs.ROOT_CERT, next_dir(workdir) / certs.ROOT_CERT


def record_former(workdir: Path, root_pem: bytes, intermediates: dict[str, dict[str, bytes]]) -> None:
    """Keeps the clusters' root and, by cluster name, their intermediates' certificates (never a key): stage 1
    keeps each cluster's intermediate, and its root bundle starts with the root they run on."""
    folder = former_dir(workdir)
    folder.mkdir(mode=0o700, exist_ok=True)
    write_atomic(folder / certs.ROOT_CERT, root_pem, mode=0o644)
    for name, files in intermediates.items():
        (folder / name).mkdir(mode=0o700, exist_ok=True)
        for file in PUBLIC_FILES:
            write_atomic(folder / name / file, files[file], mode=0o644)


def kept_intermediate(workdir: Path, cluster_name: str, transition: Transition | None) -> dict[str, bytes] | None:
    """Stage 1 of a move from the clusters' root: the certificates of the intermediate the cluster keeps (its
    key is the cluster's only); None otherwise, or for a cluster the move's start did not find."""
    if transition is None or not transition.foreign_start or transition.stage != 1:
        return None
    folder = former_dir(workdir) / cluster_name
    if not all((folder / file).is_file() for file in PUBLIC_FILES):
        return None
    return {file: (folder / file).read_bytes() for file in PUBLIC_FILES}


def split_pems(bundle: bytes | None) -> list[bytes]:
    """The certificates in a PEM bundle, each normalised to end with one newline."""
    marker = b"-----END CERTIFICATE-----"
    found = []
    for part in (bundle or b"").split(marker)[:-1]:
        start = part.find(b"-----BEGIN CERTIFICATE-----")
        if start >= 0:
            found.append(part[start:].strip() + b"\n" + marker + b"\n")
    return found


def stage_roots(stage: int | None, old_root: bytes, new_root: bytes) -> bytes:
    """The root-cert.pem a cluster holds at a stage.

    istiod takes a changed root bundle only when one contains the other (pilot/pkg/bootstrap/istio_ca.go
    handleEvent): byte for byte up to 1.29 (``bytes.Contains``, so order matters), as a set of
    certificates from 1.30. So every stage contains the one before it, or is contained in it, as bytes:
    stage 1 is the single old root followed by the new one; stage 2 adds the new root once more
    ([old, new, new], the sequence of Istio's own tests/integration/security/cacert_rotation), so it
    contains stage 1 and still differs from it: the bundle istiod publishes then shows it took stage 2
    (its new intermediate is loaded in the same reload); stage 3, the new root alone, is inside stage 2.
    """
    first = _joined(old_root, new_root)
    if stage == 1:
        return first
    if stage == 2:
        return _joined(first, new_root)
    return new_root


def _joined(first: bytes, second: bytes) -> bytes:
    """Two PEM bundles, one after the other, the first kept byte for byte (a PEM block starts a line)."""
    return first + (b"" if not first or first.endswith(b"\n") else b"\n") + second


def cacerts_for_stage(stage: int | None, intermediate: dict[str, bytes], old_root: bytes,
                      new_root: bytes) -> dict[str, bytes]:
    """Secret cacerts: the intermediate's files as the Makefile made them, with the stage's root bundle
    (at stage 3 the new root's very bytes, the ones stage 2 holds)."""
    files = dict(intermediate)
    if stage in (1, 2, 3):
        files["root-cert.pem"] = stage_roots(stage, old_root, new_root)
    return files


def desired_cacerts(workdir: Path, cluster_name: str, transition: Transition | None) -> dict[str, bytes] | None:
    """What the cluster's cacerts must hold now; None while its intermediate is still to be made (at stage 1
    of a move from the clusters' root, the certificates of the intermediate it keeps, without a key)."""
    files = kept_intermediate(workdir, cluster_name, transition)
    if files is None:
        folder = issuing_dir(workdir, transition)
        if not certs.has_cacerts(folder, cluster_name):
            return None
        files = {name: path.read_bytes() for name, path in certs.cacerts_files(folder, cluster_name).items()}
    if transition is None:
        return files
    old_path, new_path = root_paths(workdir, transition)
    return cacerts_for_stage(transition.stage, files, _transition_root(old_path, "old"),
                             _transition_root(new_path, "new"))


def _transition_root(path: Path, which: str) -> bytes:
    """One of the two roots a move to a new root needs until it completes."""
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"the {which} root of the move to a new root cannot be read ({path}: "
                          f"{exc.strerror or exc})",
                          hint=f"restore certs/ and {path.parent.name}/ from a copy of the workspace: the clusters "
                               f"trust both roots until the move completes") from None


def holds(seen: dict[str, bytes] | None, want: dict[str, bytes] | None) -> bool:
    """The cluster's cacerts (public parts) is what ``want`` says, byte for byte: istiod up to 1.29 takes
    a root bundle by its bytes (the same roots in another order may be refused; see stage_roots)."""
    if not seen or not want:
        return False
    return all(seen.get(name) == want[name] for name in ("ca-cert.pem", "cert-chain.pem", "root-cert.pem"))


def parse_annotation(value: str | None) -> dict[str, str]:
    return dict(part.split("=", 1) for part in (value or "").split() if "=" in part)


def completed_here(current_root: str | None, annotations: dict[str, str]) -> bool:
    """The cluster still records a transition to the root the workspace now holds: that transition's
    completion was cut short there (its istiod may still accept a second root)."""
    fields = parse_annotation(annotations.get(TRANSITION_ANNOTATION))
    return bool(current_root) and fields.get("root") == current_root[:16]


def stage_since(transition: Transition, annotations: dict[str, str]) -> dt.datetime | None:
    """When the cluster got the transition's current stage, from its istio-system annotation."""
    fields = parse_annotation(annotations.get(TRANSITION_ANNOTATION))
    if fields.get("stage") != str(transition.stage) or fields.get("root") != transition.new_root[:16]:
        return None
    return parse_iso(fields.get("since"))


@dataclass
class ClusterView:
    context: str
    reachable: bool
    in_place: bool  # holds the stage's cacerts and says so on istio-system
    since: dt.datetime | None = None
    completing: bool = False  # no transition in the workspace, but the cluster records one to its root


@dataclass
class Move:
    """What a `rotate-certs --root` run does next."""

    kind: str  # start | converge | wait | advance | finish | complete (a finish cut short, in ``behind``)
    stage: int
    behind: list[str] = field(default_factory=list)  # contexts to bring to the stage
    unreachable: list[str] = field(default_factory=list)
    ready_at: dt.datetime | None = None  # wait: when the next stage may start


def decide(transition: Transition | None, views: list[ClusterView], now: dt.datetime,
           min_wait: dt.timedelta) -> Move:
    """At most one stage per run, and only once the current one is in place everywhere and has lasted."""
    if transition is None:
        completing = [v.context for v in views if v.reachable and v.completing]
        if completing:  # the last run's completion first; a new transition is another run's decision
            return Move("complete", LAST_STAGE, behind=completing)
        return Move("start", 1, behind=[v.context for v in views])
    unreachable = [v.context for v in views if not v.reachable]
    behind = [v.context for v in views if v.reachable and not v.in_place]
    if behind or unreachable:
        return Move("converge", transition.stage, behind=behind, unreachable=unreachable)
    if transition.stage == LAST_STAGE:
        return Move("finish", LAST_STAGE)
    since = max((v.since or now for v in views), default=now)
    if now < since + min_wait:
        return Move("wait", transition.stage, ready_at=since + min_wait)
    return Move("advance", transition.stage + 1, behind=[v.context for v in views])


def finish_transition(workdir: Path, transition: Transition) -> Path:
    """The new root becomes the workspace's; the old root, its key and intermediates go to a dated backup.

    Two renames, each resumable: a run interrupted between them finds certs/ gone and completes. A move from
    the clusters' root ends with one: that root's certificates (and the record of the move) go to the backup.
    """
    backup = backup_dir(workdir, transition.backup_name)
    if transition.foreign_start:
        if former_dir(workdir).is_dir():
            move_to_backup(former_dir(workdir), backup)
        return backup
    current = certs.certs_dir(workdir)
    if current.is_dir() and next_dir(workdir).is_dir():
        move_to_backup(current, backup)
    resume_finish(workdir)
    return backup


def resume_finish(workdir: Path) -> None:
    """Completes a finish that was interrupted after the old root went to its backup.

    Only then: a certs/ missing for another reason (deleted by hand, say) must not make the new root
    the mesh's while the clusters still need the old one; loading the transition then says so."""
    current, new = certs.certs_dir(workdir), next_dir(workdir)
    if not current.exists() and new.is_dir():
        transition = load_transition(workdir)
        if transition is None or transition.stage != LAST_STAGE or not backup_dir(workdir, transition.backup_name).is_dir():
            return
        os.replace(new, current)
    if current.is_dir():
        (current / TRANSITION_FILE).unlink(missing_ok=True)


def parse_duration(text: str) -> dt.timedelta:
    """--min-wait's value: a number with a unit (30s, 90m, 24h, 2d); a bare number is hours."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    raw = text.strip().lower()
    unit = raw[-1:] if raw[-1:] in units else "h"
    number = raw[:-1] if raw[-1:] in units else raw
    try:
        value = float(number)
    except ValueError:
        raise ConfigError(f"{text!r} is not a duration",
                          hint="give a number with a unit: 24h (the default), 90m, 0") from None
    if value < 0:
        raise ConfigError(f"{text!r} is negative", hint="give 0 or more, e.g. 24h or 0")
    seconds = value * units[unit]
    if not math.isfinite(seconds) or seconds > MAX_WAIT.total_seconds():
        raise ConfigError(f"{text!r} is longer than a root lives",
                          hint="give at most 3650d; the default, 24h, is the workload certificate lifetime")
    return dt.timedelta(seconds=seconds)


def format_duration(delta: dt.timedelta) -> str:
    """A duration as --min-wait takes it back: 0, 45s, 90m, 24h, 2d."""
    seconds = int(delta.total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s" if seconds else "0"


def describe_wait(delta: dt.timedelta) -> str:
    minutes = max(0, int(delta.total_seconds() // 60))
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m"
