"""Helpers for end-to-end tests: a workspace made by prep-mesh over a sandbox of emulated clusters."""
from __future__ import annotations

import base64
import json
import math
import re
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import yaml

from tests import cliserver

ROOT = Path(__file__).resolve().parent.parent
# The smallest keys setup-mesh makes (lib/certs.py MIN_KEY_BITS; Go's crypto/rsa accepts 1024 bits and up): a
# 2048-bit key costs openssl a quarter of a second of CPU, a 1024-bit one a sixtieth, and tests make hundreds.
FAST_KEY_BITS = 1024
FAST_KEYS = {"ROOTCA_KEYSZ": str(FAST_KEY_BITS), "INTERMEDIATE_KEYSZ": str(FAST_KEY_BITS)}


@dataclass
class Mesh:
    sandbox: object
    workdir: Path

    @property
    def env(self) -> dict:
        env = dict(self.sandbox.env)
        env.update(FAST_KEYS)
        return env

    def run(self, *args: str, env: dict | None = None, timeout: float = 300, stdin: str | None = None):
        full_env = self.env
        full_env.update(env or {})
        return cliserver.run([sys.executable, str(ROOT / "setup_mesh.py"), *args, "--workdir", str(self.workdir)],
                             env=full_env, cwd=ROOT, timeout=timeout, input=stdin if stdin is not None else "")

    def apply(self, *args: str, env: dict | None = None, ok: bool = True):
        """``ok``: apply did all it was asked (exit 0, or 3 with the line naming the loopback clusters)."""
        result = self.run("apply", "-y", *args, env={"COLUMNS": "160", **(env or {})})
        if ok:
            assert result.returncode == self.applied_code(), f"apply failed:\n{result.stdout}\n{result.stderr}"
        return result

    def apply_checked(self, *args: str, env: dict | None = None):
        """apply, held to what its dry run said: every object ``apply -v`` changes on a cluster is named in that
        cluster's part of the preceding ``apply --dry-run`` (short form); afterwards status calls the mesh
        healthy (but for the loopback API servers apply's exit code 3 names) and a second dry run plans nothing.
        Returns apply's result."""
        columns = {"COLUMNS": "160", **(env or {})}
        dry = self.run("apply", "--dry-run", *args, env=columns)
        assert dry.returncode == self.applied_code(), f"dry run failed:\n{dry.stdout}\n{dry.stderr}"
        planned = plan_sections(dry.stdout)
        result = self.apply("-v", *args, env=env)
        changed = changed_steps(result.stdout)
        assert sorted(changed) == sorted(planned), \
            f"the dry run named {sorted(planned)}, apply changed {sorted(changed)}:\n{dry.stdout}\n{result.stdout}"
        for ctx, titles in changed.items():
            section = planned.get(ctx)
            assert section is not None, f"apply changed {ctx} ({titles}), the dry run did not name it:\n{dry.stdout}"
            for title in titles:
                noun = plan_noun(title)
                assert any(re.search(noun, line) for line in section), \
                    f"apply changed {ctx}: {title!r}; its dry run names no {noun!r}:\n{dry.stdout}"
        status = self.run("status", "--output", "json", env=columns)
        assert status.stdout.startswith("{"), f"status --output json printed no report:\n{status.stdout}\n{status.stderr}"
        report = json.loads(status.stdout)
        errors = sorted({p["code"] for p in report["problems"] + [p for c in report["clusters"] for p in c["problems"]]
                         if p["severity"] == "error"})
        # apply's exit code 3 says peers were told loopback API servers (README): status names only that.
        assert errors == (["remote_secret_local"] if self.applied_code() == 3 else []), \
            f"status after apply:\n{status.stdout}\n{status.stderr}"
        assert (status.returncode == 0) == (not errors), status.stderr
        again = self.run("apply", "--dry-run", *args, env=columns)
        assert NOTHING_PLANNED in again.stdout.splitlines(), f"a second dry run plans more:\n{again.stdout}"
        return result

    def loopback_contexts(self) -> list[str]:
        """The contexts whose remote secret another cluster must hold, without api_server: (the sandbox's
        kubeconfig names 127.0.0.1, which no other cluster reaches)."""
        contexts = yaml.safe_load((self.workdir / "topology.yaml").read_text())["contexts"]
        primaries = {ctx for ctx, spec in contexts.items() if not (spec or {}).get("primary")}
        return [ctx for ctx, spec in contexts.items() if not (spec or {}).get("api_server") and primaries - {ctx}]

    def applied_code(self) -> int:
        """apply's exit code when it did everything: 3 while peers are told loopback addresses (README)."""
        return 3 if self.loopback_contexts() else 0

    def results(self, stdout: str) -> dict[str, str]:
        """Each cluster's result as apply's summary reports it (run with COLUMNS=160: one line a row)."""
        table = stdout.split("\ncluster ")[-1].splitlines()[1:]
        rows = [re.split(r"\s{2,}", line.strip()) for line in table if re.search(r"\d+\.\ds$", line)]
        return {row[0]: row[-2] for row in rows}

    def write_topology(self, networks: dict[str, str], mesh_id: str = "mesh1", extra: dict | None = None) -> None:
        contexts = {ctx: {"network": net, **((extra or {}).get(ctx, {}))} for ctx, net in networks.items()}
        (self.workdir / "topology.yaml").write_text(yaml.safe_dump({"mesh_id": mesh_id, "contexts": contexts}))

    # --- reading the clusters ---------------------------------------------------------------
    def kubectl(self, ctx: str, *args: str, stdin: str | None = None) -> str:
        return self.sandbox.kubectl(ctx, *args, stdin=stdin).stdout

    def get(self, ctx: str, *args: str, check: bool = True):
        result = self.sandbox.kubectl(ctx, "get", *args, "-o", "json", check=check)
        return json.loads(result.stdout) if result.returncode == 0 else None

    def remote_secrets(self, ctx: str) -> dict[str, dict]:
        items = self.get(ctx, "secrets", "-n", "istio-system", "-l", "istio/multiCluster=true")["items"]
        return {s["metadata"]["annotations"]["networking.istio.io/cluster"]: s for s in items}

    def secret_kubeconfig(self, secret: dict) -> dict:
        (name, value), = secret["data"].items()
        return yaml.safe_load(base64.b64decode(value))

    def installs(self) -> list[dict]:
        """istioctl install calls the stand-in received, oldest first."""
        return [c for c in self.sandbox.istioctl_calls() if c["argv"][1:2] in (["install"], ["apply"])]

    def control_plane_installs(self) -> list[dict]:
        return [c for c in self.installs() if (c.get("merged") or {}).get("spec", {}).get("profile") != "empty"]


# --- what a dry run names and what apply -v did -------------------------------------------
NOTHING_PLANNED = "nothing to do: every cluster matches topology.yaml and base.yaml"  # lib/planview.py NOTHING
_PLAN_HEADER = re.compile(r"^(\S+)(?: \(.*\))?: (install|change|remove\b.*)$")
_REPLACES = re.compile(r"^(\S+) replaces \(apply asks first\): (.*)$")
_STEP_START = re.compile(r"^\d\d:\d\d:\d\d (\S+): (.*) \.\.\.$")
_COMMAND = re.compile(r"^  \$ \[(\S+)\] (.*)  \((?:exit \d+|timed out), [\d.]+s\)$")
# Commands that write to a cluster (kubectl's and istioctl's verbs); reads, waits and exports are not changes.
_WRITES = {"kubectl": {"apply", "create", "delete", "label", "annotate", "patch", "replace"},
           "istioctl": {"install", "uninstall", "apply"}}
_BOOKKEEPING = "setup-mesh.io/applied="  # the record of what was applied (the plan shows it with -v only)
# What a step's title is called in the plan's short form (lib/plan.py's Step.change); a step not listed here
# must be named by its title. A step that removes (its title says so) needs a removal line ("- ..."), or its title
# after "·" (a step the plan names by its title).
_NOUNS = [(r"^install Istio$", r"[+~] Istio \("),
          (r"^namespace istio-system \(network .*\) and secret cacerts$",
           r"namespace istio-system|network label|secret cacerts|annotation "),
          (r"^make intermediate CA$", r"intermediate CA"),
          (r"^remove the ambient east-west gateway", r"ambient east-west gateway"),
          (r"east-west gateway", r"east-west gateway"),
          (r"^import .*secret", r"remote secret"),
          (r"^delete \d+ stale remote secret", r"stale remote secrets"),
          (r"^stop being a remote", r"annotation topology.istio.io/controlPlaneClusters"),
          (r"^stop exposing istiod", r"Gateway istiod-gateway"),
          (r"^install the Gateway API CRDs", r"Gateway API CRDs"),
          (r"^uninstall Istio and its CRDs$", r"Istio \(istioctl uninstall"),
          (r"^uninstall setup-mesh's IstioOperators", r"setup-mesh's IstioOperators"),
          (r"^delete (cacerts and )?remote secrets$", r"secret cacerts|\d+ remote secret"),
          (r"^delete namespace istio-system$", r"namespace istio-system")]
_REMOVES = re.compile(r"^(remove|uninstall|delete|stop) ")


def make_other_ca(makefile: Path, folder: Path, cluster: str, *variables: str) -> Path:
    """A root and ``cluster``'s intermediate made in ``folder`` with an Istio release's certs Makefile, as a
    user makes them by hand; the keys are made first at FAST_KEY_BITS (make keeps a key that exists, and
    Istio's recipes would make 4096-bit ones). Returns the folder of the cluster's cacerts files."""
    (folder / cluster).mkdir(parents=True, exist_ok=True)
    for key in (folder / "root-key.pem", folder / cluster / "ca-key.pem"):
        subprocess.run(["openssl", "genrsa", "-out", str(key), str(FAST_KEY_BITS)], check=True, capture_output=True)
    subprocess.run(["make", "-f", str(makefile), "root-ca", f"{cluster}-cacerts", *variables],
                   cwd=folder, check=True, capture_output=True)
    return folder / cluster


def key_bits(path) -> int:
    """The size of the RSA key in ``path`` (PEM), as openssl made it."""
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    return load_pem_private_key(Path(path).read_bytes(), password=None).key_size


def plan_sections(stdout: str) -> dict[str, list[str]]:
    """A dry run's short form, per cluster: its header line and the lines under it."""
    sections: dict[str, list[str]] = {}
    current = None
    for line in stdout.splitlines():
        header, replaces = _PLAN_HEADER.match(line), _REPLACES.match(line)
        if header:
            current = sections.setdefault(header.group(1), [line])
        elif replaces:
            sections.setdefault(replaces.group(1), []).append(line)
            current = None
        elif current is not None and line.startswith("  "):
            current.append(line)
        else:
            current = None
    return sections


def changed_steps(stdout: str) -> dict[str, list[str]]:
    """The steps of ``apply -v`` that wrote to a cluster, per cluster, by title (a command is printed under the
    last step its cluster started)."""
    running: dict[str, str] = {}
    changed: dict[str, list[str]] = {}
    for line in stdout.splitlines():
        start, command = _STEP_START.match(line), _COMMAND.match(line)
        if start:
            running[start.group(1)] = start.group(2)
        elif command:
            ctx, argv = command.group(1), command.group(2).split()
            tool = Path(argv[0]).name
            verb = next((a for a in argv[1:] if not a.startswith("-") and a not in (ctx,)
                         and argv[argv.index(a) - 1] != "--context"), "")
            if verb in _WRITES.get(tool, ()) and _BOOKKEEPING not in command.group(2):
                titles = changed.setdefault(ctx, [])
                title = running.get(ctx, "?")
                if title not in titles:
                    titles.append(title)
    return changed


def plan_noun(title: str) -> str:
    """The pattern a dry-run line naming this step's change matches."""
    noun = next((noun for pattern, noun in _NOUNS if re.search(pattern, title)), re.escape(title))
    if _REMOVES.match(title):
        return rf"^\s*- .*(?:{noun})|^\s*· {re.escape(title)}$"
    return noun


def make_mesh(sandbox, workdir: Path, networks: dict[str, str], base_extra: str = "") -> Mesh:
    mesh = Mesh(sandbox, workdir)
    result = mesh.run("prep-mesh", "--org", "Test Org")
    assert result.returncode == 0, result.stderr
    mesh.write_topology(networks)
    if base_extra:
        with open(workdir / "base.yaml", "a") as handle:
            handle.write(base_extra)
    return mesh


def workdir_snapshot(workdir: Path) -> dict[str, bytes]:
    return {str(p.relative_to(workdir)): p.read_bytes() for p in sorted(workdir.rglob("*")) if p.is_file()}


# A kubeconfig or Secret field holding a token, with its value (not "[redacted]").
_TOKEN_FIELD = re.compile(r"""token["']?\s*:\s*["']?(?!\[redacted)[A-Za-z0-9._~+/=-]{16,}""")


def scan_for_secrets(text: str) -> list[str]:
    """Key material or tokens that must never be printed or logged."""
    found = [marker for marker in ("PRIVATE KEY", "BEGIN CERTIFICATE", "client-key-data", "eyJ") if marker in text]
    if _TOKEN_FIELD.search(text):
        found.append("token:")
    return found


# Istio configuration a user made themselves, in a namespace of their own and in istio-system: teardown
# keeps it, scoped or not.
FOREIGN_VS = """apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: shop}
spec: {hosts: [reviews], http: [{route: [{destination: {host: reviews}}]}]}
"""
FOREIGN_PA = """apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: istio-system}
spec: {mtls: {mode: STRICT}}
"""


@contextmanager
def applied_mesh(root: Path, networks: dict[str, str], *, lb_delay: float, profile: str | None = None,
                 primaries: dict[str, str] | None = None, apply_args: tuple[str, ...] = ()):
    """A mesh a module's tests share: a sandbox of ``networks``' contexts, a workspace by prep-mesh whose
    topology names the API server addresses peers reach (so status can call the mesh healthy), base.yaml's
    ``profile`` when given, remotes as ``primaries`` says (remote -> primary), then one apply. Yields
    (mesh, apply's result); the sandbox stops afterwards."""
    from tests.sandbox import Sandbox

    sandbox = Sandbox.up(root / "sandbox", list(networks), lb_delay=lb_delay)
    try:
        mesh = make_mesh(sandbox, root / "ws", networks)
        mesh.write_topology(networks, extra={
            ctx: {"api_server": sandbox.api_server(ctx), **({"primary": primaries[ctx]} if ctx in (primaries or {})
                                                            else {})} for ctx in networks})
        if profile:
            base = mesh.workdir / "base.yaml"
            base.write_text(base.read_text().replace("profile: default", f"profile: {profile}"))
        yield mesh, mesh.apply(*apply_args)
    finally:
        sandbox.down()


@contextmanager
def running_mesh(root: Path, mesh_class, contexts: list[str]):
    """A sandbox of these contexts and a mesh on it, made by prep-mesh and apply with the API server
    addresses peers reach (``mesh_class.write_topology`` writes them); the sandbox stops afterwards."""
    from tests.sandbox import Sandbox

    sandbox = Sandbox.up(root / "sandbox", contexts)
    try:
        mesh = mesh_class(sandbox, root / "ws")
        assert mesh.run("prep-mesh").returncode == 0
        mesh.write_topology({ctx: sandbox.api_server(ctx) for ctx in contexts})
        mesh.apply()
        yield mesh
    finally:
        sandbox.down()


def rollout_restart(sandbox, ctx: str, deployment: str, namespace: str = "istio-system") -> None:
    """`kubectl rollout restart`, as a user runs it. kubectl stamps the pod template with the time to the
    second and refuses a second restart within the same second: when the last restart was in this second,
    wait for the next one, as that user would."""
    stamp = sandbox.kubectl(ctx, "get", "deployment", deployment, "-n", namespace, "-o",
                            r"jsonpath={.spec.template.metadata.annotations.kubectl\.kubernetes\.io/restartedAt}"
                            ).stdout.strip()
    if stamp and datetime.fromisoformat(stamp).timestamp() >= math.floor(time.time()):
        time.sleep(1.05 - time.time() % 1)
    sandbox.kubectl(ctx, "rollout", "restart", f"deployment/{deployment}", "-n", namespace)


def injected_workload(sandbox, ctx: str, namespace: str = "app", name: str = "web") -> None:
    """A namespace labelled for injection (the default revision tag) and one Deployment in it, as a user
    makes them with kubectl."""
    sandbox.kubectl(ctx, "create", "namespace", namespace)
    sandbox.kubectl(ctx, "label", "namespace", namespace, "istio-injection=enabled")
    sandbox.kubectl(ctx, "create", "deployment", name, "--image=nginx", "-n", namespace)
