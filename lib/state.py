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

    def record(self, cluster: Cluster, fingerprint: str | None) -> None:
        self.clusters[cluster.context] = {
            "cluster_name": cluster.name,
            "network": cluster.network,
            "kubeconfig": cluster.kubeconfig,
            "fingerprint": fingerprint,
            "applied_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        }

    def forget(self, context: str) -> None:
        self.clusters.pop(context, None)

    def save(self, mesh_id: str | None) -> None:
        self.mesh_id = mesh_id
        data = {"mesh_id": mesh_id, "clusters": dict(sorted(self.clusters.items()))}
        write_atomic(self.path, json.dumps(data, indent=2) + "\n", mode=0o600)
