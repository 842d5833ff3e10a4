"""What apply last did, kept in the workdir so removed clusters can be found and cleaned up."""
from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field
from pathlib import Path

from .config import Cluster
from .errors import ConfigError
from .fsutil import write_atomic

STATE_DIR = ".setup-mesh"
STATE_FILE = "state.json"


@dataclass
class State:
    path: Path
    mesh_id: str | None = None
    clusters: dict[str, dict] = field(default_factory=dict)  # context -> what was applied there

    @classmethod
    def load(cls, workdir: Path) -> "State":
        path = workdir / STATE_DIR / STATE_FILE
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            return cls(path)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot read the recorded state {path}: {exc}",
                              hint="delete the file; apply rebuilds it (stale remote secrets are still pruned)") from None
        return cls(path, data.get("mesh_id"), dict(data.get("clusters") or {}))

    def has(self, context: str) -> bool:
        return context in self.clusters

    def record(self, cluster: Cluster, fingerprint: str | None, serves_remotes: bool = False) -> None:
        """``serves_remotes``: the primary's install serves remotes (istiod exposed through its gateway); kept
        until the cluster is recorded again, so that a run cut short after its remotes moved away still
        removes that exposure next time."""
        entry = {"cluster_name": cluster.name, "network": cluster.network, "kubeconfig": cluster.kubeconfig,
                 "fingerprint": fingerprint}
        if cluster.primary:
            entry["primary"] = cluster.primary  # a remote is removed before its primary
        if serves_remotes:
            entry["serves_remotes"] = True
        old = self.clusters.get(cluster.context) or {}
        if {k: v for k, v in old.items() if k != "applied_at"} == entry:
            return  # nothing new was applied: keep when it was
        entry["applied_at"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        self.clusters[cluster.context] = entry

    def serving_remotes(self) -> frozenset[str]:
        """The cluster names of primaries recorded as serving remotes."""
        return frozenset(entry.get("cluster_name", ctx) for ctx, entry in self.clusters.items()
                         if entry.get("serves_remotes"))

    def forget(self, context: str) -> None:
        self.clusters.pop(context, None)

    def save(self, mesh_id: str | None) -> None:
        """Write the state, unless the file already says exactly this (a no-op run writes nothing)."""
        self.mesh_id = mesh_id
        text = json.dumps({"mesh_id": mesh_id, "clusters": dict(sorted(self.clusters.items()))}, indent=2) + "\n"
        try:
            if self.path.read_text() == text:
                return
        except OSError:
            pass
        write_atomic(self.path, text, mode=0o600)
