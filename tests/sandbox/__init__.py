"""A sandbox of emulated Kubernetes clusters for tests and for trying setup-mesh by hand.

``Sandbox.up(directory, ["cluster1", "cluster2"])`` starts one emulated API server per context
(``tests/sandbox/apiserver.py``) and writes, in ``directory``:

- ``kubeconfig``: one cluster, user (bearer token) and context per name; current context is the first.
  A context may name a default namespace (``namespaces=``), as many users' contexts do.
  The servers speak TLS (kubectl only sends credentials over TLS); the CA is embedded in the kubeconfig.
- ``bin/kubectl``: a link to the pinned kubectl.
- ``istio-<version>/``: the stand-in Istio release, when ``tests/sandbox/release.py`` is present.
- ``env``: a file to ``source`` (KUBECONFIG, KUBECACHEDIR, PATH, ISTIO_DIR).
- ``sandbox.json``: process ids, ports and tokens, so ``Sandbox.load(directory).down()`` works from any process.
- ``api_servers.json``: context -> the API server URL its peers' control planes use (``https://<name>.sandbox.test:6443``),
  for ``api_server:`` in topology.yaml. Like a kind cluster's container IP, the address is not loopback; only the
  sandbox's own stand-ins (the emulators' mesh model, the istioctl stand-in through them) know it, from
  ``hosts.json`` (name -> loopback port). ``.test`` is reserved (RFC 6761): nothing resolves it by accident, and
  nothing sends traffic anywhere but loopback.
- ``clusters/<name>/``: each emulator's ``requests.jsonl``, ``ca.crt`` and logs.

The emulators keep running until ``down()`` (or ``python -m tests.sandbox down --dir DIR``).

``sandbox.save(saved)`` copies a running sandbox (its files and every emulator's state: objects, UIDs,
resource versions, LoadBalancer addresses, the tokens it accepts, its CA) into ``saved``;
``Sandbox.restore(saved, directory, ports)`` starts a copy from it, so tests start from a mesh built
once. The copy is the same sandbox to every client only when it listens on the same ports (kubeconfig,
kube cache and what setup-mesh records of each API server name them): ``reserve_port()`` holds a port
for that, and ``up(..., ports=)`` builds the original on held ports.
"""
from __future__ import annotations

import base64
import importlib
import importlib.util
import json
import os
import re
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Mapping, Sequence

import yaml

from . import emulatorserver, reads
from .kubectl import pinned_kubectl

APISERVER = Path(__file__).resolve().parent / "apiserver.py"
APISERVER_LAUNCHER = APISERVER.with_name("run_apiserver.py")  # apiserver.py's main, from cached bytecode
STATE_FILE = "sandbox.json"
SAVED_FILE = "saved.json"  # in a saved copy: where it was saved from
RESTORE_FILE = "restore.json"  # in a saved copy, per cluster: the emulator's state and TLS material
SETTLE_TIMEOUT = 20.0
HOSTS_FILE = "hosts.json"
API_SERVERS_FILE = "api_servers.json"
API_DOMAIN = "sandbox.test"  # RFC 6761: reserved for testing, never resolves outside the sandbox
API_PORT = 6443
START_TIMEOUT = 20.0
# What a real cluster takes, scaled down so tests stay fast but every wait is exercised.
LB_DELAY = 0.2  # a LoadBalancer Service gets its address
READY_DELAY = 0.2  # a new Deployment's replicas are ready
NAMESPACE_DELETE_DELAY = 0.2  # a deleted namespace is Terminating
STOP_TIMEOUT = 5.0
_LISTENING = re.compile(r"listening on http://127\.0\.0\.1:(\d+)")


class KubectlFailed(subprocess.CalledProcessError):
    """A kubectl run that exited non-zero; the message carries its stderr."""

    def __str__(self) -> str:
        return f"{super().__str__()}\nstderr:\n{self.stderr}"


def _safe_dir_name(name: str) -> str:
    cleaned = re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._") or "cluster"
    if cleaned != name:
        cleaned += "-" + base64.b32encode(name.encode()).decode().lower().rstrip("=")[-6:]
    return cleaned


def _process_alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            state = fh.read().rsplit(b")", 1)[1].split()[0]
        return state not in (b"Z", b"X")
    except (OSError, IndexError):
        return True


def _is_our_emulator(pid: int, name: str, state_dir: Path) -> bool:
    """Guard against a recycled pid: the process must be an emulator started for ``name``, by its own command
    line or, forked by a test process's emulator server (emulatorserver.py), by its output file."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            argv = fh.read().split(b"\0")
    except OSError:
        return _process_alive(pid)  # no /proc: trust the recorded pid
    if any(a.endswith(b"emulatorserver.py") for a in argv):
        try:
            return os.readlink(f"/proc/{pid}/fd/1") == str(state_dir / "stdout.log")
        except OSError:
            return False
    if not any(a.endswith(b"apiserver.py") or a.endswith(b"tests.sandbox.apiserver") for a in argv):
        return False
    if b"--name=" + name.encode() in argv:
        return True
    try:
        return argv[argv.index(b"--name") + 1] == name.encode()
    except (ValueError, IndexError):
        return False


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except (ChildProcessError, OSError):
        pass


class Sandbox:
    """Emulated clusters plus the files that point kubectl (and the stand-in istioctl) at them."""

    def __init__(self, directory: Path, state: dict):
        self.dir = Path(directory).resolve()
        self._state = state
        self._procs: dict[str, subprocess.Popen | emulatorserver.Forked] = {}
        self._readers: dict[tuple[str, str, str], reads.Reader] = {}

    # -- lifecycle ---------------------------------------------------------------------------------

    @classmethod
    def up(cls, directory: Path, contexts: Sequence[str],
           lb_delay: "float | None | Mapping[str, float | None]" = LB_DELAY,
           env: Mapping[str, str] | None = None, namespaces: Mapping[str, str] | None = None,
           ready_delay: float = READY_DELAY, namespace_delete_delay: float = NAMESPACE_DELETE_DELAY,
           istio_version: str | None = None,
           ports: Mapping[str, int] | None = None,
           kube_versions: Mapping[str, str] | None = None) -> "Sandbox":
        """Start one emulated cluster per context and write kubeconfig, env, bin/ and the stand-in release.

        ``lb_delay``: seconds before LoadBalancer Services get an address; None means never; a dict sets it
        per context (missing contexts: LB_DELAY). ``env``: extra variables for ``.env`` and the ``env`` file.
        ``namespaces``: context -> the default namespace its kubeconfig context names (missing: none).
        ``ready_delay``: seconds before a new Deployment is ready; ``namespace_delete_delay``: seconds a
        deleted namespace stays Terminating. ``istio_version``: the stand-in release's version (default: the
        release module's VERSION). ``ports``: context -> the port its emulator listens on (held by
        the caller with ``reserve_port``; missing contexts: any free port). ``kube_versions``: context -> the
        Kubernetes version (1.MINOR.PATCH) its API server reports (missing contexts: the emulator's default).
        """
        contexts = list(contexts)
        if not contexts:
            raise ValueError("at least one context is needed")
        if len(set(contexts)) != len(contexts):
            raise ValueError(f"duplicate context names: {contexts}")
        directory = Path(directory).resolve()
        directory.mkdir(parents=True, exist_ok=True)
        existing = directory / STATE_FILE
        if existing.exists():
            old = cls.load(directory)
            if old.running_contexts():
                raise RuntimeError(f"a sandbox is already running in {directory} "
                                   f"({', '.join(old.running_contexts())}); stop it first with down()")
        kubectl = pinned_kubectl()
        unknown = sorted(set(namespaces or {}) - set(contexts))
        if unknown:
            raise ValueError(f"namespaces given for unknown contexts: {unknown}")
        sandbox = cls(directory, {"version": 1, "clusters": {}, "order": [], "extra_env": dict(env or {}),
                                  "istio_dir": None, "context_namespaces": dict(namespaces or {}),
                                  "ready_delay": float(ready_delay),
                                  "namespace_delete_delay": float(namespace_delete_delay),
                                  "kube_versions": dict(kube_versions or {})})
        try:
            for ctx in contexts:
                sandbox._spawn(ctx, cls._delay_for(lb_delay, ctx), port=(ports or {}).get(ctx, 0))
            for ctx in contexts:
                sandbox._await_ready(ctx)
            bin_dir = directory / "bin"
            bin_dir.mkdir(exist_ok=True)
            link = bin_dir / "kubectl"
            if link.is_symlink() or link.exists():
                link.unlink()
            link.symlink_to(kubectl)
            (directory / ".kube-cache").mkdir(exist_ok=True)
            release = _materialize_release(directory, istio_version)
            sandbox._state["istio_dir"] = str(release) if release else None
            sandbox._write_files()
        except BaseException:
            sandbox.down()
            raise
        return sandbox

    @classmethod
    def restore(cls, saved: Path, directory: Path, ports: Mapping[str, int] | None = None) -> "Sandbox":
        """Start a copy of a saved sandbox (see ``save``) in ``directory``: the same objects, UIDs, resource
        versions, LoadBalancer addresses, tokens and CAs, the same files (kube cache, istioctl's call log,
        each cluster's request log). ``ports``: context -> the port its emulator listens on; give the ports
        the saved sandbox used (held with ``reserve_port``) for a copy no client can tell from the original;
        missing contexts get any free port (the kubeconfig then names it)."""
        saved, directory = Path(saved).resolve(), Path(directory).resolve()
        origin = json.loads((saved / SAVED_FILE).read_text())["directory"]
        if directory.exists() and any(directory.iterdir()):
            raise RuntimeError(f"{directory} is not empty: a sandbox is restored into a new directory")
        directory.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(saved, directory, symlinks=True, dirs_exist_ok=True)
        (directory / SAVED_FILE).unlink()
        for path in [directory / STATE_FILE, directory / "env", directory / "istioctl-calls.jsonl"]:
            if path.exists():  # files that name the sandbox's own folder
                path.write_text(path.read_text().replace(origin, str(directory)))
        sandbox = cls.load(directory)
        restores = {ctx: Path(info["state_dir"]) / RESTORE_FILE for ctx, info in sandbox._state["clusters"].items()}
        for ctx, info in sandbox._state["clusters"].items():
            if not restores[ctx].exists():  # stopped when it was saved: stays stopped (its pid is not ours)
                info.update(pid=None, running=False)
        try:
            for ctx in [c for c in sandbox.contexts if restores[c].exists()]:
                info = sandbox._state["clusters"][ctx]
                sandbox._spawn(ctx, info.get("lb_delay"), port=(ports or {}).get(ctx, 0), restore=restores[ctx],
                               token=info["token"])
            for ctx in list(sandbox._procs):
                sandbox._await_ready(ctx)
                restores[ctx].unlink()
            sandbox._write_files()
        except BaseException:
            sandbox.down()
            raise
        return sandbox

    def save(self, directory: Path) -> Path:
        """Copy this sandbox into ``directory`` (which must not exist) for ``restore``: its files, and the state
        of every running emulator once its controllers have settled. The sandbox keeps running."""
        directory = Path(directory).resolve()
        if directory.exists():
            raise RuntimeError(f"{directory} exists: a sandbox is saved into a new directory")
        states = {ctx: self._settled_state(ctx) for ctx in self.running_contexts()}
        shutil.copytree(self.dir, directory, symlinks=True,
                        ignore=shutil.ignore_patterns(STATE_FILE + ".tmp", "kubeconfig.tmp", "*.tmp"))
        for ctx, state in states.items():
            state_dir = Path(self._cluster(ctx)["state_dir"])
            tls = None
            if (state_dir / "tls.key").exists():
                tls = {"cert": (state_dir / "ca.crt").read_text(), "key": (state_dir / "tls.key").read_text()}
            target = directory / state_dir.relative_to(self.dir) / RESTORE_FILE
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # it holds the CA's key
            with os.fdopen(fd, "w") as fh:
                json.dump({**state, "tls": tls}, fh)
        _write_json(directory / SAVED_FILE, {"directory": str(self.dir)})
        return directory

    def _settled_state(self, ctx: str) -> dict:
        deadline = time.monotonic() + SETTLE_TIMEOUT
        while True:
            try:
                with urllib.request.urlopen(self.plain_url(ctx) + "/_sandbox/state", timeout=10) as resp:
                    return json.loads(resp.read())
            except urllib.error.HTTPError as exc:
                if exc.code != 409 or time.monotonic() > deadline:
                    raise RuntimeError(f"cannot save cluster {ctx!r}: HTTP {exc.code} {exc.read().decode()}") from None
            time.sleep(0.05)

    @classmethod
    def load(cls, directory: Path) -> "Sandbox":
        """A handle on a sandbox started elsewhere (for ``down`` from another process)."""
        directory = Path(directory).resolve()
        path = directory / STATE_FILE
        if not path.exists():
            raise FileNotFoundError(f"no sandbox in {directory} ({STATE_FILE} is missing)")
        return cls(directory, json.loads(path.read_text()))

    def down(self) -> list[str]:
        """Stop every emulator of this sandbox and wait for it; returns the contexts that were stopped."""
        stopped = []
        for proc in self._procs.values():  # signal all first, then wait: they stop in parallel
            if proc.poll() is None:
                proc.terminate()
        for ctx in list(self._state["clusters"]):
            if self._stop(ctx):
                stopped.append(ctx)
        if (self.dir / STATE_FILE).exists() or self._state["clusters"]:
            self._save_state()
        return stopped

    def __enter__(self) -> "Sandbox":
        return self

    def __exit__(self, *exc) -> None:
        self.down()

    # -- clusters ------------------------------------------------------------------------------------

    def stop_cluster(self, ctx: str) -> None:
        """Kill one emulator. The kubeconfig still names its port, so kubectl gets "connection refused"."""
        self._cluster(ctx)
        self._stop(ctx)
        self._save_state()

    def start_cluster(self, ctx: str, lb_delay: float | None = LB_DELAY) -> None:
        """Start a new (or restart a stopped) cluster in this sandbox, with a fresh, empty state."""
        info = self._state["clusters"].get(ctx)
        if info and info.get("running") and _process_alive(info["pid"]):
            raise RuntimeError(f"cluster {ctx!r} is already running")
        self._spawn(ctx, lb_delay)
        self._await_ready(ctx)
        self._write_files()

    def running_contexts(self) -> list[str]:
        return [c for c in self.contexts
                if self._state["clusters"][c].get("running") and _process_alive(self._state["clusters"][c]["pid"])]

    # -- accessors ------------------------------------------------------------------------------------

    @property
    def contexts(self) -> list[str]:
        return list(self._state["order"])

    @property
    def kubeconfig(self) -> Path:
        return self.dir / "kubeconfig"

    @property
    def istio_dir(self) -> Path | None:
        value = self._state.get("istio_dir")
        return Path(value) if value else None

    @property
    def env(self) -> dict[str, str]:
        """os.environ plus KUBECONFIG, KUBECACHEDIR, PATH (bin/ and the release's bin/ first), ISTIO_DIR."""
        env = dict(os.environ)
        env.update(self._state.get("extra_env") or {})
        env["KUBECONFIG"] = str(self.kubeconfig)
        env["KUBECACHEDIR"] = str(self.dir / ".kube-cache")
        path = [str(self.dir / "bin")]
        if self.istio_dir:
            path.append(str(self.istio_dir / "bin"))
            env["ISTIO_DIR"] = str(self.istio_dir)
        env["PATH"] = os.pathsep.join(path + [os.environ.get("PATH", "")])
        return env

    def api_host(self, ctx: str) -> str:
        """The non-loopback name peers use for ``ctx``'s API server (a DNS label under sandbox.test)."""
        return self._cluster(ctx).get("host") or _api_host(ctx, set())

    def api_server(self, ctx: str) -> str:
        """The URL to put in topology.yaml as ``api_server:`` for ``ctx``."""
        return f"https://{self.api_host(ctx)}:{API_PORT}"

    def url(self, ctx: str) -> str:
        """The server URL in the kubeconfig (TLS)."""
        return f"https://127.0.0.1:{self._cluster(ctx)['port']}"

    def plain_url(self, ctx: str) -> str:
        """The same server over plain HTTP (for Python clients; kubectl sends no token over plain HTTP)."""
        return f"http://127.0.0.1:{self._cluster(ctx)['port']}"

    def token(self, ctx: str) -> str:
        return self._cluster(ctx)["token"]

    def ca_file(self, ctx: str) -> Path:
        return Path(self._cluster(ctx)["state_dir"]) / "ca.crt"

    def pid(self, ctx: str) -> int:
        return self._cluster(ctx)["pid"]

    # -- using the clusters ------------------------------------------------------------------------

    def kubectl(self, ctx: str | None, *args: str, stdin: str | None = None, check: bool = True,
                timeout: float = 60.0) -> subprocess.CompletedProcess:
        """Run the pinned kubectl against ``ctx`` (None: the kubeconfig's current context). A plain
        ``get ... -o json`` of one cluster is answered without starting kubectl (``reads.py``)."""
        argv = [str(pinned_kubectl())]
        if ctx is not None:
            argv += ["--context", ctx]
        argv += [str(a) for a in args]
        request = reads.parse(tuple(argv[3:])) if ctx is not None and stdin is None else None
        answer = self._reader(ctx).get(argv, request) if request is not None else None
        if answer is not None:
            if check and answer.returncode != 0:
                raise KubectlFailed(answer.returncode, argv, answer.stdout, answer.stderr)
            return answer
        proc = subprocess.run(argv, input=stdin, capture_output=True, text=True, env=self.env, timeout=timeout)
        if check and proc.returncode != 0:
            raise KubectlFailed(proc.returncode, argv, proc.stdout, proc.stderr)
        return proc

    def _reader(self, ctx: str) -> reads.Reader:
        key = (ctx, self.plain_url(ctx), self.token(ctx))
        if key not in self._readers:
            self._readers[key] = reads.Reader(self.plain_url(ctx), self.token(ctx))
        return self._readers[key]

    def get_json(self, ctx: str | None, *args: str):
        """``kubectl get ARGS -o json``, parsed."""
        return json.loads(self.kubectl(ctx, "get", *args, "-o", "json").stdout)

    def read(self, ctx: str, api_path: str) -> dict | None:
        """One object by its API path (``/api/v1/namespaces/NS/secrets/NAME``) as the API server holds it, None
        when it does not exist: the same answer as ``kubectl get``, for a test that looks at a cluster many times
        without starting kubectl (and its discovery requests) at each look."""
        status, body = self._reader(ctx).request(api_path)
        if status == 404:
            return None
        if status != 200:
            raise RuntimeError(f"GET {api_path} on {ctx}: HTTP {status} {body.get('message', '')}")
        return body

    def requests(self, ctx: str) -> list[dict]:
        """Every request this cluster's emulator has answered, oldest first."""
        path = Path(self._cluster(ctx)["state_dir"]) / "requests.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def dump(self, ctx: str) -> str:
        """All objects stored in ``ctx`` as deterministic JSON (identical text means nothing changed)."""
        with urllib.request.urlopen(self.plain_url(ctx) + "/_sandbox/dump", timeout=10) as resp:
            return resp.read().decode()

    def istioctl_calls(self) -> list[dict]:
        """The stand-in istioctl's call log (one dict per invocation), empty when it never ran."""
        path = self.dir / "istioctl-calls.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    # -- internals ---------------------------------------------------------------------------------------

    @staticmethod
    def _delay_for(lb_delay, ctx: str) -> float | None:
        if isinstance(lb_delay, Mapping):
            return lb_delay.get(ctx, LB_DELAY)
        return lb_delay

    def _cluster(self, ctx: str) -> dict:
        try:
            return self._state["clusters"][ctx]
        except KeyError:
            raise KeyError(f"no cluster {ctx!r} in this sandbox (contexts: {', '.join(self.contexts)})") from None

    def _spawn(self, ctx: str, lb_delay: float | None, port: int = 0, restore: Path | None = None,
               token: str | None = None) -> None:
        """Start ``ctx``'s emulator: empty, or from a saved state (``restore``, keeping its request log)."""
        state_dir = self.dir / "clusters" / _safe_dir_name(ctx)
        state_dir.mkdir(parents=True, exist_ok=True)
        for stale in ("ca.crt", "stdout.log", "tls.key") + (() if restore else ("requests.jsonl",)):
            (state_dir / stale).unlink(missing_ok=True)
        if ctx not in self._state["order"]:
            self._state["order"].append(ctx)
        index = self._state["order"].index(ctx)
        token = token or secrets.token_urlsafe(24)
        # -S: the emulator needs only the standard library, so skip site-packages set-up (faster start).
        # NAME=VALUE forms: a token (or name) may start with "-".
        argv = [sys.executable, "-S", str(APISERVER_LAUNCHER), f"--name={ctx}", f"--token={token}", f"--state-dir={state_dir}",
                f"--lb-ip-start={10 + (index * 20) % 240}"]
        argv += ["--lb-never"] if lb_delay is None else ["--lb-delay", str(float(lb_delay))]
        taken = {c.get("host") for name, c in self._state["clusters"].items() if name != ctx}
        host = (self._state["clusters"].get(ctx) or {}).get("host") or _api_host(ctx, taken)
        argv += [f"--hostname={host}", f"--hosts={self.dir / HOSTS_FILE}"]
        argv += [f"--ready-delay={self._state.get('ready_delay', 0.0)}",
                 f"--namespace-delete-delay={self._state.get('namespace_delete_delay', 0.0)}"]
        argv += [f"--port={port}"] + ([f"--restore={restore}"] if restore else [])
        kube_version = (self._state.get("kube_versions") or {}).get(ctx)
        argv += [f"--kube-version={kube_version}"] if kube_version else []
        with open(state_dir / "stdout.log", "wb") as out, open(state_dir / "stderr.log", "ab") as err:
            proc = emulatorserver.spawn(argv, out, err) or subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err, start_new_session=True, close_fds=True)
        self._procs[ctx] = proc
        self._state["clusters"][ctx] = {"pid": proc.pid, "port": None, "token": token, "state_dir": str(state_dir),
                                        "lb_delay": lb_delay, "running": True, "host": host}

    def _await_ready(self, ctx: str) -> None:
        info = self._state["clusters"][ctx]
        state_dir = Path(info["state_dir"])
        proc = self._procs[ctx]
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            text = (state_dir / "stdout.log").read_text(errors="replace")
            match = _LISTENING.search(text)
            if match and (state_dir / "ca.crt").exists():
                info["port"] = int(match.group(1))
                return
            if proc.poll() is not None:
                err = (state_dir / "stderr.log").read_text(errors="replace")[-3000:]
                raise RuntimeError(f"the emulated cluster {ctx!r} exited with code {proc.returncode} before it was "
                                   f"ready; its stderr:\n{err}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the emulated cluster {ctx!r} did not print 'listening on ...' within "
                                   f"{START_TIMEOUT:.0f}s (see {state_dir}/stderr.log)")
            time.sleep(0.01)

    def _stop(self, ctx: str) -> bool:
        info = self._state["clusters"][ctx]
        pid = info.get("pid")
        was_running = bool(info.get("running"))
        info["running"] = False
        proc = self._procs.pop(ctx, None)
        if proc is not None:
            if proc.returncode is None:
                proc.terminate()
                try:
                    proc.wait(STOP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(STOP_TIMEOUT)
                return True
            return False
        if not pid or not _process_alive(pid) or not _is_our_emulator(pid, ctx, Path(info["state_dir"])):
            return False
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT
        while _process_alive(pid):
            _reap(pid)
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                deadline = time.monotonic() + STOP_TIMEOUT
            time.sleep(0.01)
        return was_running

    def _save_state(self) -> None:
        tmp = self.dir / (STATE_FILE + ".tmp")
        tmp.write_text(json.dumps(self._state, indent=2, sort_keys=True) + "\n")
        tmp.replace(self.dir / STATE_FILE)

    def _write_files(self) -> None:
        clusters, users, contexts = [], [], []
        for ctx in self.contexts:
            info = self._state["clusters"][ctx]
            ca = Path(info["state_dir"], "ca.crt").read_bytes()
            clusters.append({"name": ctx, "cluster": {"server": f"https://127.0.0.1:{info['port']}",
                                                      "certificate-authority-data": base64.b64encode(ca).decode()}})
            users.append({"name": ctx, "user": {"token": info["token"]}})
            context = {"cluster": ctx, "user": ctx}
            namespace = (self._state.get("context_namespaces") or {}).get(ctx)
            if namespace:
                context["namespace"] = namespace
            contexts.append({"name": ctx, "context": context})
        config = {"apiVersion": "v1", "kind": "Config", "preferences": {}, "clusters": clusters, "users": users,
                  "contexts": contexts, "current-context": self.contexts[0]}
        tmp = self.dir / "kubeconfig.tmp"
        tmp.write_text(yaml.safe_dump(config, sort_keys=False))
        os.chmod(tmp, 0o600)
        tmp.replace(self.kubeconfig)
        lines = ["# source this file to use the sandbox clusters",
                 f"export KUBECONFIG={shlex.quote(str(self.kubeconfig))}",
                 f"export KUBECACHEDIR={shlex.quote(str(self.dir / '.kube-cache'))}"]
        path = [str(self.dir / "bin")] + ([str(self.istio_dir / "bin")] if self.istio_dir else [])
        lines.append(f"export PATH={shlex.quote(os.pathsep.join(path))}{os.pathsep}\"$PATH\"")
        if self.istio_dir:
            lines.append(f"export ISTIO_DIR={shlex.quote(str(self.istio_dir))}")
        for key, value in sorted((self._state.get("extra_env") or {}).items()):
            lines.append(f"export {key}={shlex.quote(str(value))}")
        (self.dir / "env").write_text("\n".join(lines) + "\n")
        hosts = {self.api_host(c): self._state["clusters"][c]["port"] for c in self.contexts}
        _write_json(self.dir / HOSTS_FILE, hosts)
        _write_json(self.dir / API_SERVERS_FILE, {c: self.api_server(c) for c in self.contexts})
        self._save_state()


def reserve_port() -> socket.socket:
    """A loopback port held (bound, not listening: a connection to it is refused) for an emulator started
    with ``ports=``; close the socket to free it."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


def _api_host(ctx: str, taken: set) -> str:
    label = re.sub(r"[^a-z0-9-]+", "-", ctx.lower()).strip("-")[:50] or "cluster"
    name, n = label, 1
    while f"{name}.{API_DOMAIN}" in taken:
        n += 1
        name = f"{label}-{n}"
    return f"{name}.{API_DOMAIN}"


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)


def _materialize_release(directory: Path, version: str | None = None) -> Path | None:
    """Copy the stand-in Istio release into ``directory`` when tests/sandbox/release.py exists."""
    name = f"{__name__}.release"
    if importlib.util.find_spec(name) is None:
        return None
    module = importlib.import_module(name)
    if version:
        return Path(module.materialize_release(directory, version=version)).resolve()
    return Path(module.materialize_release(directory)).resolve()


__all__ = ["Sandbox", "KubectlFailed", "pinned_kubectl", "reserve_port", "LB_DELAY", "READY_DELAY", "NAMESPACE_DELETE_DELAY"]
