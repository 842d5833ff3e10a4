"""Benchmark of apply on sandboxes of emulated clusters. Prints figures; asserts nothing.

    python3 -m tests.bench [--sizes 2,4,8,16,32 | --quick] [--keys 2048,4096] [--json PATH] [--keep] [--timeout S]

For each size N it starts N emulated clusters (cluster1..N, the first half on network1, the rest on
network2, so east-west gateways are needed), with the latencies of a real mesh scaled down: istioctl
install 2 s, create-remote-secret 0.3 s (the stand-in's ISTIOCTL_STANDIN_LATENCY), LoadBalancer
address 1 s after the east-west gateway's Service is created (the emulator's lb_delay). The workspace
is made as a user makes it (`setup_mesh.py prep-mesh --context cluster1=network1 ...`). Each N is run
once per key size: 2048 bits (ROOTCA_KEYSZ, INTERMEDIATE_KEYSZ set), which keeps key generation small,
and 4096 bits, what Istio's certs Makefile makes by default, measured as users get it: with neither
variable set, so the Makefile makes the keys itself.

Measured per N, each apply being `setup_mesh.py apply -y -q` run as a user runs it:

- apply at the default --parallel, then again with nothing changed (no-op), then with one more
  cluster started and added to topology.yaml (add one); one sandbox and workspace;
- apply --parallel 1 on a fresh sandbox and workspace (serial);
- the critical path: the shortest time apply could take with unlimited parallelism, i.e. one
  cluster's chain (its first read, make, cacerts, install, east-west install, what is left of the
  LoadBalancer delay, which starts when the east-west install creates the Service and so runs beside that
  install's own wait, overlapping the Gateway apply and the annotation, one read of the address) plus one
  exchange (create-remote-secret, one apply of the secrets). Per-command times come from the --parallel 1 run's log, where every
  command ran alone (injected latency + uncontended start-up cost); the 1 s LoadBalancer delay is
  added as injected. The median over the clusters is used.
- the tool processes apply spawned: the command lines of its run log (one per command);
- the CPU the apply used (setup_mesh.py, its tools, the emulated API servers): divided by the
  cores, a second lower bound on the wall time, which is what a small machine runs into first.

Targets (shown next to the figures): at N=8, apply within 1.3x of the critical path and at least 6x
faster than --parallel 1; at N=32, within 2x of the critical path; processes <= 8*N; the no-op apply
<= 5% of the first apply.

setup_mesh.py runs from cached bytecode, as an installed copy does (pip compiles it at install time):
the cache is kept in the benchmark's temporary folder (PYTHONPYCACHEPREFIX), never in the source tree.

Every sandbox is stopped (try/finally) and every apply runs in its own process group, which is ended
if the benchmark is interrupted.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from rich.console import Console
from rich.markup import escape
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
CLI = ROOT / "setup_mesh.py"

DEFAULT_SIZES = (2, 4, 8, 16, 32)
QUICK_SIZES = (2, 4)
INSTALL_LATENCY = 2.0
SECRET_LATENCY = 0.3
LB_DELAY = 1.0
LATENCY_ENV = f"install={INSTALL_LATENCY:g},create-remote-secret={SECRET_LATENCY:g}"
DEFAULT_KEY_SIZES = (2048, 4096)  # small keys; the certs Makefile's default (common.mk: ROOTCA_KEYSZ, INTERMEDIATE_KEYSZ)
MAKEFILE_KEY_SIZE = 4096
DEFAULT_PARALLEL = 8  # setup_mesh.py's default, stated in the output (apply is run without --parallel)

TARGET_N = 8
TARGET_RATIO = 1.3
TARGET_SPEEDUP = 6.0
TARGET_LARGE_N = 32
TARGET_LARGE_RATIO = 2.0
TARGET_PROCS_PER_CLUSTER = 8
TARGET_NOOP_PCT = 5.0

STDERR_TAIL = 25


# --- running the CLI ---------------------------------------------------------------------------------

@dataclass
class CliRun:
    argv: list[str]
    code: int | None  # None: timed out
    seconds: float
    stdout: str
    stderr: str
    started: float  # time.time() when it was started
    log: Path | None = None  # the run log it wrote, if any
    cpu_s: float = 0.0  # user + system CPU of setup_mesh.py and every tool it ran

    @property
    def ok(self) -> bool:
        return self.code == 0

    def failure(self) -> str:
        what = "timed out" if self.code is None else f"exit code {self.code}"
        tail = "\n".join((self.stderr.strip() or self.stdout.strip()).splitlines()[-STDERR_TAIL:])
        text = f"`{' '.join(self.argv)}` failed ({what}) after {self.seconds:.1f}s\n{tail}"
        if self.log and self.log.exists():
            log_tail = "\n".join(self.log.read_text(errors="replace").splitlines()[-STDERR_TAIL:])
            text += f"\n--- end of its run log {self.log}:\n{log_tail}"
        return text


def _end_group(proc: subprocess.Popen) -> None:
    """Ends a CLI run and the tools it started (they share its process group): Ctrl-C first, as a user would."""
    for sig, grace in ((signal.SIGINT, 5.0), (signal.SIGTERM, 3.0), (signal.SIGKILL, 3.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            continue
        # The CLI is gone; its group may still hold a straggler.
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.5)


def run_cli(args: list[str], env: dict[str, str], timeout: float, workdir: Path | None = None) -> CliRun:
    argv = [sys.executable, str(CLI), *args]
    shown = ["./setup_mesh.py", *args]
    logs_before = set(_apply_logs(workdir)) if workdir else set()
    cpu_before = _children_cpu()
    started = time.time()
    start = time.monotonic()
    proc = subprocess.Popen(argv, env=env, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
        code: int | None = proc.returncode
    except subprocess.TimeoutExpired:
        _end_group(proc)
        out, err = proc.communicate()
        code = None
    except BaseException:
        _end_group(proc)
        proc.communicate()
        raise
    seconds = time.monotonic() - start
    cpu = _children_cpu() - cpu_before
    new_logs = sorted(set(_apply_logs(workdir)) - logs_before) if workdir else []
    return CliRun(shown, code, seconds, out or "", err or "", started, new_logs[-1] if new_logs else None, cpu)


def _children_cpu() -> float:
    """CPU time of the waited-for child processes (and theirs): setup_mesh.py and the tools it ran."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def emulator_cpu(box) -> float:
    """CPU seconds the sandbox's emulated API servers have used so far (from /proc)."""
    total = 0.0
    ticks = os.sysconf("SC_CLK_TCK")
    for ctx in box.running_contexts():
        try:
            with open(f"/proc/{box.pid(ctx)}/stat", "rb") as fh:
                fields = fh.read().rsplit(b")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / ticks  # utime, stime
        except (OSError, IndexError, ValueError):
            pass
    return total


def _apply_logs(workdir: Path) -> list[Path]:
    return sorted((workdir / ".setup-mesh" / "logs").glob("apply-*.log"))


# --- the run log -----------------------------------------------------------------------------------------

_LOG_LINE = re.compile(r"^(?P<ts>\S+) \[(?P<ctx>[^\]]*)\] (?P<state>exit=-?\d+|timeout) (?P<secs>[\d.]+)s (?P<cmd>.*)$")
_CACERTS_TARGET = re.compile(r"\s(\S+)-cacerts(\s|$)")

KINDS = ("read", "make", "cacerts", "install", "eastwest", "gateway", "annotate", "address", "export", "import", "other")
KIND_TITLES = {
    "read": "kubectl get (read the cluster)",
    "make": "make <cluster>-cacerts (intermediate CA)",
    "cacerts": "kubectl apply namespace + cacerts",
    "install": "istioctl install (control plane)",
    "eastwest": "istioctl install (east-west gateway)",
    "gateway": "kubectl apply Gateway",
    "annotate": "kubectl annotate (record)",
    "address": "kubectl get east-west Service (poll)",
    "export": "istioctl create-remote-secret",
    "import": "kubectl apply remote secrets",
    "other": "other",
}


@dataclass
class LogEntry:
    cluster: str
    kind: str
    seconds: float
    ok: bool
    command: str


def parse_log(path: Path | None) -> list[LogEntry]:
    """One entry per command line; continuation lines (stderr tails) start with spaces and are skipped."""
    if path is None or not path.exists():
        return []
    entries: list[LogEntry] = []
    for line in path.read_text(errors="replace").splitlines():
        if not line or line[0].isspace():
            continue
        match = _LOG_LINE.match(line)
        if not match:
            entries.append(LogEntry("-", "other", 0.0, False, line))
            continue
        kind, ctx = command_kind(match["cmd"])
        entries.append(LogEntry(ctx or match["ctx"], kind, float(match["secs"]), match["state"] == "exit=0", match["cmd"]))
    # A secret apply is cacerts when its cluster's install comes after it, else remote secrets: in an added
    # cluster's run the others install nothing and apply only its secret.
    installed_at = {e.cluster: i for i, e in enumerate(entries) if e.kind == "install"}
    for i, e in enumerate(entries):
        if e.kind == "secrets":
            e.kind = "cacerts" if i < installed_at.get(e.cluster, -1) else "import"
    return entries


def command_kind(cmd: str) -> tuple[str, str | None]:
    """(kind, the cluster when the command line names it otherwise than the log's tag) of a logged command;
    "secrets" for an apply of Secrets, which parse_log tells apart."""
    if " make -f " in f" {cmd}" and (target := _CACERTS_TARGET.search(cmd)):
        return "make", target.group(1)
    if "istioctl" in cmd and " install " in cmd:
        return ("eastwest" if "-eastwest.yaml" in cmd else "install"), None
    if "istioctl" in cmd and " create-remote-secret " in cmd:
        return "export", None
    if " apply " in cmd and cmd.endswith("< SECRET-MANIFEST"):
        return "secrets", None
    if " apply " in cmd and cmd.endswith("< MANIFEST"):
        return "gateway", None
    if " annotate " in cmd:
        return "annotate", None
    if " get service " in cmd:
        return "address", None
    if " get " in cmd and "namespaces," in cmd:
        return "read", None
    return "other", None


def by_kind(entries: list[LogEntry]) -> dict[str, dict]:
    out = {}
    for kind in KINDS:
        times = [e.seconds for e in entries if e.kind == kind]
        if times:
            out[kind] = {"count": len(times), "median_s": round(statistics.median(times), 3),
                         "max_s": round(max(times), 3), "total_s": round(sum(times), 2)}
    return out


def critical_path(entries: list[LogEntry], contexts: list[str]) -> dict | None:
    """One cluster's chain plus one exchange, from per-command times in a log; the median over clusters.

    chain = read (when the log has it) + make + cacerts + install + east-west install
            + max(LoadBalancer delay - install latency, Gateway apply + annotate) + the read that sees the address

    The stand-in install applies its objects and then spends its latency waiting, as a real one waits for
    its pods, so the gateway's Service, and the LoadBalancer's delay, start that long before it ends.
    exchange = create-remote-secret + one apply of remote secrets
    """
    per: dict[str, dict[str, list[float]]] = {}
    for e in entries:
        per.setdefault(e.cluster, {}).setdefault(e.kind, []).append(e.seconds)
    chains, exchanges, totals = [], [], []
    for ctx in contexts:
        got = per.get(ctx, {})
        need = ("make", "cacerts", "install", "eastwest", "gateway", "annotate", "address", "export", "import")
        if any(k not in got for k in need):
            continue
        chain = (sum(got.get("read", [])[:1]) + got["make"][0] + got["cacerts"][0] + got["install"][0] + got["eastwest"][0]
                 + max(LB_DELAY - INSTALL_LATENCY, got["gateway"][0] + got["annotate"][0])  # LB_DELAY after the Service
                 + got["address"][-1])  # the read that sees the address
        exchange = got["export"][0] + got["import"][0]
        chains.append(chain)
        exchanges.append(exchange)
        totals.append(chain + exchange)
    if not totals:
        return None
    return {"seconds": round(statistics.median(totals), 2), "chain_s": round(statistics.median(chains), 2),
            "exchange_s": round(statistics.median(exchanges), 2), "min_s": round(min(totals), 2),
            "max_s": round(max(totals), 2), "clusters": len(totals)}


def istioctl_timeline(calls: list[dict], run: CliRun, entries: list[LogEntry]) -> dict:
    """When, from the start of an apply, the stand-in istioctl was started for each kind of call
    (its call log has start times); east-west installs' ends add the durations in apply's run log."""
    mine = [c for c in calls if run.started <= c.get("time", 0) <= run.started + run.seconds]
    ew_took = {e.cluster: e.seconds for e in entries if e.kind == "eastwest"}

    def at(pred, pick):
        times = [c["time"] - run.started for c in mine if pred(c)]
        return round(pick(times), 2) if times else None

    def is_ew(c):
        return c.get("command") == "install" and any(str(a).endswith("-eastwest.yaml") for a in c.get("argv", []))

    def is_cp(c):
        return c.get("command") == "install" and not is_ew(c)

    def is_export(c):
        return c.get("command") == "create-remote-secret"

    ew_ends = [c["time"] - run.started + ew_took[c["context"]] for c in mine if is_ew(c) and c.get("context") in ew_took]
    return {"first_install_s": at(is_cp, min), "last_install_s": at(is_cp, max),
            "first_eastwest_s": at(is_ew, min), "last_eastwest_s": at(is_ew, max),
            "last_eastwest_end_s": round(max(ew_ends), 2) if ew_ends else None,
            "first_export_s": at(is_export, min), "last_export_s": at(is_export, max),
            "total_s": round(run.seconds, 2)}


# --- sandboxes and workspaces ------------------------------------------------------------------------------

def contexts_for(n: int) -> dict[str, str]:
    half = n // 2
    return {f"cluster{i}": ("network1" if i <= half else "network2") for i in range(1, n + 1)}


@contextmanager
def sandbox(directory: Path, contexts: list[str]):
    from tests.sandbox import Sandbox

    box = Sandbox.up(directory, contexts, lb_delay=LB_DELAY)
    try:
        yield box
    finally:
        box.down()


def cli_env(box, keys: int, pycache: Path) -> dict[str, str]:
    env = dict(box.env)
    env.pop("ROOTCA_KEYSZ", None)
    env.pop("INTERMEDIATE_KEYSZ", None)
    if keys != MAKEFILE_KEY_SIZE:  # the Makefile's own size is measured as users get it: nothing set
        env.update({"ROOTCA_KEYSZ": str(keys), "INTERMEDIATE_KEYSZ": str(keys)})
    env["ISTIOCTL_STANDIN_LATENCY"] = LATENCY_ENV
    env.pop("ISTIOCTL_STANDIN_FAIL", None)
    # Bytecode cached as an installed copy has it, outside the source tree.
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPYCACHEPREFIX"] = str(pycache)
    return env


@dataclass(frozen=True)
class Setting:
    """What every run of one row shares: the key size, the per-call time out, where bytecode is cached."""

    keys: int
    timeout: float
    pycache: Path


def prep(box, workdir: Path, networks: dict[str, str], how: Setting) -> CliRun:
    args = ["prep-mesh", "--workdir", str(workdir), "-q"]
    for ctx, net in networks.items():
        args += ["--add-context", f"{ctx}={net}"]
    made = run_cli(args, cli_env(box, how.keys, how.pycache), how.timeout)
    if made.ok:
        add_contexts(box, workdir, {})
    return made


def add_contexts(box, workdir: Path, networks: dict[str, str]) -> None:
    """Adds ``networks`` to topology.yaml, and gives every context the address the other clusters reach its
    API server at (`api_server:`), as a user of clusters on loopback addresses must: without it apply ends
    with exit code 3, a mesh that cannot work."""
    path = workdir / "topology.yaml"
    topo = yaml.safe_load(path.read_text())
    for ctx, net in networks.items():
        topo["contexts"][ctx] = {"network": net}
    for ctx, entry in topo["contexts"].items():
        entry["api_server"] = box.api_server(ctx)
    path.write_text(yaml.safe_dump(topo, sort_keys=False))


def apply(box, workdir: Path, how: Setting, *extra: str) -> CliRun:
    return run_cli(["apply", "--workdir", str(workdir), "-y", "-q", *extra], cli_env(box, how.keys, how.pycache),
                   how.timeout, workdir)


# --- one size ----------------------------------------------------------------------------------------------

@dataclass
class SizeResult:
    n: int
    keys: int = MAKEFILE_KEY_SIZE
    figures: dict = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)

    def fail(self, what: str, detail: str) -> None:
        self.failures.append(f"N={self.n} ({self.keys}-bit keys) {what}: {detail}")


def bench_size(n: int, root: Path, say, how: Setting) -> SizeResult:
    res = SizeResult(n, how.keys)
    networks = contexts_for(n)
    res.figures.update({"n": n, "keys": how.keys,
                        "networks": {net: list(networks.values()).count(net) for net in sorted(set(networks.values()))},
                        "target_processes": TARGET_PROCS_PER_CLUSTER * n, "load_1min_at_start": _load()})
    for what, runs in (("default --parallel", _parallel_runs), ("--parallel 1", _serial_run)):
        try:
            runs(res, networks, root, say, how)
        except Exception as exc:  # e.g. a sandbox that would not start: report it, go on with the next run
            res.fail(f"sandbox ({what})", repr(exc))
    f = res.figures
    if f.get("parallel_s") and f.get("serial_s"):
        f["speedup"] = round(f["serial_s"] / f["parallel_s"], 2)
    if f.get("parallel_s") and f.get("critical_path"):
        f["ratio_to_critical_path"] = round(f["parallel_s"] / f["critical_path"]["seconds"], 2)
    return res


def _parallel_runs(res: SizeResult, networks: dict[str, str], root: Path, say, how: Setting) -> None:
    """Default --parallel on one sandbox: first apply, no-op re-apply, then one more cluster."""
    n, f, contexts = res.n, res.figures, list(networks)
    with sandbox(root / "parallel" / "sandbox", contexts) as box:
        workdir = root / "parallel" / "mesh"
        made = prep(box, workdir, networks, how)
        f["prep_s"] = round(made.seconds, 2)
        if not made.ok:
            res.fail("prep-mesh", made.failure())
            return
        emulators_before = emulator_cpu(box)
        first = apply(box, workdir, how)
        emulators = emulator_cpu(box) - emulators_before
        entries = parse_log(first.log)
        if not first.ok:
            f["parallel_failed_after_s"] = round(first.seconds, 2)
            res.fail("apply (default --parallel)", first.failure())
            return
        f["parallel_s"] = round(first.seconds, 2)
        say(f"N={n}: apply {first.seconds:.1f}s ({len(entries)} commands)")
        f["processes"] = len(entries)
        f["processes_by_kind"] = {k: v["count"] for k, v in by_kind(entries).items()}
        f["parallel_commands"] = by_kind(entries)
        f["parallel_log_critical_path"] = critical_path(entries, contexts)
        f["parallel_timeline"] = istioctl_timeline(box.istioctl_calls(), first, entries)
        f["cpu"] = {"apply_tree_s": round(first.cpu_s, 1), "emulators_s": round(emulators, 1),
                    "floor_s": round((first.cpu_s + emulators) / _cpus(), 1)}

        again = apply(box, workdir, how)
        f["noop_processes"] = len(parse_log(again.log))
        if not again.ok:
            res.fail("no-op apply", again.failure())
        else:
            f["noop_s"] = round(again.seconds, 2)
            f["noop_pct"] = round(100.0 * again.seconds / first.seconds, 1)
            say(f"N={n}: no-op apply {again.seconds:.2f}s")

        extra = f"cluster{n + 1}"
        box.start_cluster(extra, lb_delay=LB_DELAY)
        add_contexts(box, workdir, {extra: "network2"})
        grown = apply(box, workdir, how)
        grown_entries = parse_log(grown.log)
        f["add_one_processes"] = len(grown_entries)
        f["add_one_commands"] = by_kind(grown_entries)
        if not grown.ok:
            res.fail("apply after adding one cluster", grown.failure())
        else:
            f["add_one_s"] = round(grown.seconds, 2)
            say(f"N={n}: add one cluster {grown.seconds:.1f}s ({len(grown_entries)} commands)")


def _serial_run(res: SizeResult, networks: dict[str, str], root: Path, say, how: Setting) -> None:
    """--parallel 1 on a fresh sandbox and workspace; its log gives the uncontended per-command times."""
    n, f, contexts = res.n, res.figures, list(networks)
    with sandbox(root / "serial" / "sandbox", contexts) as box:
        workdir = root / "serial" / "mesh"
        made = prep(box, workdir, networks, how)
        if not made.ok:
            res.fail("prep-mesh (serial)", made.failure())
            return
        serial = apply(box, workdir, how, "--parallel", "1")
        entries = parse_log(serial.log)
        if not serial.ok:
            f["serial_failed_after_s"] = round(serial.seconds, 2)
            res.fail("apply --parallel 1", serial.failure())
            return
        f["serial_s"] = round(serial.seconds, 2)
        say(f"N={n}: apply --parallel 1 {serial.seconds:.1f}s")
        f["serial_processes"] = len(entries)
        f["serial_commands"] = by_kind(entries)
        f["critical_path"] = critical_path(entries, contexts)


# --- output -------------------------------------------------------------------------------------------------

def machine() -> dict:
    model = None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cpus = _cpus()
    kubectl = None
    try:
        from tests.sandbox import pinned_kubectl

        out = subprocess.run([str(pinned_kubectl()), "version", "--client", "-o", "json"], capture_output=True,
                             text=True, timeout=30)
        kubectl = json.loads(out.stdout)["clientVersion"]["gitVersion"]
    except Exception:  # noqa: BLE001 - only informative
        pass
    return {"nproc": cpus, "cpu": model or platform.processor() or "unknown", "python": platform.python_version(),
            "system": f"{platform.system()} {platform.release()}", "kubectl": kubectl}


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def _load() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def _mark(ok: bool | None) -> str:
    return "" if ok is None else (" [green]✓[/]" if ok else " [red]✗[/]")


def _num(value, fmt: str, suffix: str = "") -> str:
    return "—" if value is None else f"{value:{fmt}}{suffix}"


def ratio_target(n: int) -> float | None:
    """The most apply may take over the critical path at this N (None: no target)."""
    return {TARGET_N: TARGET_RATIO, TARGET_LARGE_N: TARGET_LARGE_RATIO}.get(n)


def figures_table(results: list[SizeResult]) -> Table:
    table = Table(title=f"apply on emulated clusters (default --parallel {DEFAULT_PARALLEL}; "
                        f"targets at N={TARGET_N}, N={TARGET_LARGE_N} and for every N as headed)", title_justify="left")
    table.add_column("N", justify="right")
    table.add_column("keys (bits)", justify="right")
    table.add_column("parallel (s)", justify="right")
    table.add_column("serial --parallel 1 (s)", justify="right")
    table.add_column(f"speed-up (≥{TARGET_SPEEDUP:g}× at N={TARGET_N})", justify="right")
    table.add_column("critical path (s)", justify="right")
    table.add_column(f"÷ critical path (≤{TARGET_RATIO:g}× at N={TARGET_N}, ≤{TARGET_LARGE_RATIO:g}× at "
                     f"N={TARGET_LARGE_N})", justify="right")
    table.add_column(f"processes (≤{TARGET_PROCS_PER_CLUSTER}·N)", justify="right")
    table.add_column(f"{TARGET_PROCS_PER_CLUSTER}·N", justify="right")
    table.add_column(f"no-op (≤{TARGET_NOOP_PCT:g}%)", justify="right")
    table.add_column("add one (s)", justify="right")
    for res in results:
        f = res.figures
        n = res.n
        speedup, ratio, procs, noop = f.get("speedup"), f.get("ratio_to_critical_path"), f.get("processes"), f.get("noop_pct")
        cp = (f.get("critical_path") or {}).get("seconds")
        most = ratio_target(n)
        table.add_row(
            str(n),
            str(res.keys),
            "[red]failed[/]" if "parallel_failed_after_s" in f else _num(f.get("parallel_s"), ".1f"),
            "[red]failed[/]" if "serial_failed_after_s" in f else _num(f.get("serial_s"), ".1f"),
            _num(speedup, ".1f", "×") + (_mark(speedup >= TARGET_SPEEDUP) if n == TARGET_N and speedup else ""),
            _num(cp, ".1f"),
            _num(ratio, ".2f", "×") + (_mark(ratio <= most) if most and ratio else ""),
            _num(procs, "d") + (_mark(procs <= TARGET_PROCS_PER_CLUSTER * n) if procs is not None else ""),
            str(TARGET_PROCS_PER_CLUSTER * n),
            _num(noop, ".1f", "%") + (_mark(noop <= TARGET_NOOP_PCT) if noop is not None else ""),
            _num(f.get("add_one_s"), ".1f"),
        )
    return table


def commands_table(res: SizeResult) -> Table:
    f = res.figures
    par, ser = f.get("parallel_commands") or {}, f.get("serial_commands") or {}
    table = Table(title=f"where apply's time goes at N={res.n}, {res.keys}-bit keys (from the run logs)",
                  title_justify="left")
    for name, justify in (("command", "left"), ("count", "right"), ("per cluster", "right"),
                          ("alone, median (s)", "right"), ("parallel, median (s)", "right"),
                          ("parallel, sum (s)", "right")):
        table.add_column(name, justify=justify)
    for kind in KINDS:
        if kind not in par and kind not in ser:
            continue
        p, s = par.get(kind, {}), ser.get(kind, {})
        count = p.get("count", s.get("count", 0))
        table.add_row(KIND_TITLES[kind], str(count), f"{count / res.n:.1f}", _num(s.get("median_s"), ".2f"),
                      _num(p.get("median_s"), ".2f"), _num(p.get("total_s"), ".1f"))
    return table


def timeline_table(results: list[SizeResult]) -> Table:
    table = Table(title="the parallel apply: seconds from its start (istioctl stand-in's call log), chains, CPU",
                  title_justify="left")
    for name in ("N", "keys", "1st install starts", "last install starts", "last east-west ends",
                 "1st create-remote-secret", "end", "chain + exchange, alone", "chain + exchange, in this run",
                 "CPU s: apply + emulators", f"CPU ÷ {_cpus()} cores"):
        table.add_column(name, justify="right")
    for res in results:
        f = res.figures
        t, cpu = f.get("parallel_timeline") or {}, f.get("cpu") or {}
        alone, here = f.get("critical_path") or {}, f.get("parallel_log_critical_path") or {}
        table.add_row(str(res.n), str(res.keys), _num(t.get("first_install_s"), ".1f"), _num(t.get("last_install_s"), ".1f"),
                      _num(t.get("last_eastwest_end_s"), ".1f"), _num(t.get("first_export_s"), ".1f"),
                      _num(t.get("total_s"), ".1f"),
                      f"{alone['chain_s']:.1f} + {alone['exchange_s']:.1f}" if alone else "—",
                      f"{here['chain_s']:.1f} + {here['exchange_s']:.1f}" if here else "—",
                      f"{cpu['apply_tree_s']:.1f} + {cpu['emulators_s']:.1f}" if cpu else "—",
                      _num(cpu.get("floor_s"), ".1f"))
    return table


# --- main ---------------------------------------------------------------------------------------------------

def parse_sizes(text: str) -> list[int]:
    try:
        sizes = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of numbers: {text!r}") from None
    if not sizes or any(n < 2 for n in sizes):
        raise argparse.ArgumentTypeError("every size must be at least 2 (two networks need two clusters)")
    return sizes


def parse_key_sizes(text: str) -> list[int]:
    try:
        sizes = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of numbers: {text!r}") from None
    if not sizes or any(k < 1024 for k in sizes):
        raise argparse.ArgumentTypeError("every key size must be at least 1024 bits")
    return sizes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m tests.bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=parse_sizes, default=list(DEFAULT_SIZES),
                        help="comma-separated cluster counts (default: 2,4,8,16,32)")
    parser.add_argument("--keys", type=parse_key_sizes, default=list(DEFAULT_KEY_SIZES),
                        help="comma-separated key sizes in bits, one row each (default: 2048,4096; 4096 is what "
                             "Istio's certs Makefile makes)")
    parser.add_argument("--quick", action="store_true", help="only 2 and 4 clusters")
    parser.add_argument("--json", type=Path, default=Path("bench-results.json"),
                        help="where to write the figures as JSON (default: bench-results.json in the current folder)")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds any one setup_mesh.py run may take")
    parser.add_argument("--keep", action="store_true", help="keep the sandboxes' folders and workspaces (run logs)")
    args = parser.parse_args(argv)
    sizes = list(QUICK_SIZES) if args.quick else args.sizes

    console = Console(highlight=False, width=None if sys.stdout.isatty() else 150)
    host = machine()
    load_before = _load()
    date = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d")
    console.print(f"[bold]setup-mesh apply benchmark[/] {date}: {host['nproc']} CPU(s), {host['cpu']}, "
                  f"Python {host['python']}, kubectl {host['kubectl'] or '?'}")
    console.print(f"sizes {','.join(map(str, sizes))}; clusters cluster1..N, half on network1, half on network2; "
                  f"injected latency: istioctl install {INSTALL_LATENCY:g}s, create-remote-secret {SECRET_LATENCY:g}s "
                  f"(ISTIOCTL_STANDIN_LATENCY={LATENCY_ENV}), LoadBalancer address {LB_DELAY:g}s (lb_delay)")
    console.print(f"keys: ROOTCA_KEYSZ and INTERMEDIATE_KEYSZ {' and '.join(map(str, args.keys))} bits, a row each "
                  f"({MAKEFILE_KEY_SIZE}: what Istio's certs Makefile makes by default, run with neither variable set)")
    if load_before is not None and load_before > 0.5 * host["nproc"]:
        console.print(f"[yellow]warning[/]: the machine is busy (load average {load_before:.1f} on "
                      f"{host['nproc']} CPU(s)): the figures will be slower than on an idle machine")

    def stop(signum, frame):  # SIGTERM (or SIGINT when started in the background) ends it like Ctrl-C
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    root = Path(tempfile.mkdtemp(prefix="setup-mesh-bench-"))
    results: list[SizeResult] = []
    interrupted = False
    began = time.monotonic()
    try:
        for n in sizes:
            for keys in args.keys:
                console.print(f"[dim]N={n}, {keys}-bit keys: starting[/]")
                how = Setting(keys, args.timeout, root / "pycache")
                results.append(bench_size(n, root / f"n{n}-k{keys}", lambda m: console.print(f"[dim]{m}[/]"), how))
    except KeyboardInterrupt:
        interrupted = True
        console.print("[red]interrupted[/]: figures so far follow")
    elapsed = time.monotonic() - began
    load_after = _load()

    console.print()
    console.print(figures_table(results))
    console.print(timeline_table(results))
    detail = next((r for r in results if r.n == TARGET_N and r.figures.get("parallel_commands")), None) or \
        next((r for r in reversed(results) if r.figures.get("parallel_commands")), None)
    if detail:
        console.print(commands_table(detail))
    console.print(
        "critical path = one cluster's chain (read, make, cacerts, install, east-west install, "
        f"max({LB_DELAY:g}s LoadBalancer delay - the {INSTALL_LATENCY:g}s the east-west install waits after creating "
        "its Service, Gateway apply + annotate), the read that sees the address) + one "
        "exchange (create-remote-secret + one apply of secrets), per-command times from the --parallel 1 run's log "
        "(each command ran alone: injected latency + uncontended start-up), median over the clusters; setup_mesh.py's "
        "own start-up is not in it. \"in this run\": the same sum from the parallel run's own log (commands slowed by "
        "each other). CPU: user+system seconds of setup_mesh.py and the tools it ran, plus the emulated API servers; "
        "divided by the cores it is a second lower bound on the wall time.")
    reads_logged = any("read" in (r.figures.get("processes_by_kind") or {}) for r in results)
    console.print("processes = command lines in the first apply's run log (.setup-mesh/logs/apply-*.log), one per "
                  "tool process apply started" + ("" if reads_logged else
                  "; apply's first read of each cluster (kubectl get) happens before that log is opened and is not "
                  "counted") + "; the openssl runs make starts are not counted.")
    console.print(f"no-op = apply again with nothing changed, as % of the first apply; add one = start "
                  f"cluster<N+1> (network2), add it to topology.yaml, apply. Benchmark took {elapsed:.0f}s.")

    failures = [msg for r in results for msg in r.failures]
    for msg in failures:
        console.print(f"[red bold]FAILED[/] {escape(msg)}")

    document = {
        "date": date, "machine": host, "sizes": sizes, "default_parallel": DEFAULT_PARALLEL,
        "latency": {"istioctl_install_s": INSTALL_LATENCY, "create_remote_secret_s": SECRET_LATENCY,
                    "loadbalancer_s": LB_DELAY, "ISTIOCTL_STANDIN_LATENCY": LATENCY_ENV},
        "key_sizes": args.keys,
        "targets": {"at_n": TARGET_N, "max_ratio_to_critical_path": TARGET_RATIO, "min_speedup": TARGET_SPEEDUP,
                    "at_large_n": TARGET_LARGE_N, "max_ratio_to_critical_path_at_large_n": TARGET_LARGE_RATIO,
                    "max_processes_per_cluster": TARGET_PROCS_PER_CLUSTER, "max_noop_pct": TARGET_NOOP_PCT},
        "critical_path_method": "per-command times from the --parallel 1 run's log plus the injected LoadBalancer delay; "
                                "median over clusters of chain + exchange",
        "results": [r.figures for r in results],
        "failures": failures,
        "interrupted": interrupted,
        "elapsed_s": round(elapsed, 1),
        "load_average_1min": {"before": load_before, "after": load_after},
    }
    args.json.write_text(json.dumps(document, indent=2) + "\n")
    console.print(f"figures written to {args.json}")

    if args.keep or failures:
        console.print(f"sandbox folders and workspaces (run logs) kept in {root}")
    else:
        shutil.rmtree(root, ignore_errors=True)
    if interrupted:
        return 130
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
