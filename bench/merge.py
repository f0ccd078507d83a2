# Copyright (c) kvmhost.ksm contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Benchmark: how fast each KSM configuration merges duplicate memory on this machine's real kernel, and at what
ksmd CPU cost, all configurations side by side in one run.

For every configuration: a fresh workload (--processes processes holding --mib MiB in total of identical
anonymous pages, MADV_MERGEABLE, content --shape, --unique % never merging; tests/support/merge_workload.py), KSM
reset (run=2, wait until nothing is merged, the scan knobs back to the kernel defaults), the configuration applied,
then sampled every --interval s: saved bytes ((pages_sharing + ksm_zero_pages) x page size) and ksmd CPU time
(utime + stime of /proc/<ksmd>/stat). Reported: time to 50 % and 90 % of the saveable memory ((processes - 1) x
the pages per process that are not unique), ksmd CPU seconds and average ksmd CPU share up to 90 % (the merge
window), the share once merged, and whether the budget target holds (see --budget). A configuration that does not
reach a mark within --timeout seconds shows "not reached" and the saving it had.

Configurations: the kernel defaults; the real Debian ksmtuned script under simulated memory pressure (a private
mount namespace whose /proc/meminfo reports little free memory; nothing else on the host sees it); the kernel's
scan-time advisor with its defaults; the role's profiles auto, advisor and static applied by the real role
(ansible-playbook on localhost, ksm_persist and ksm_manage_packages false); the old fixed budget rate (static,
2300 pages / 20 ms); the budget governor run directly from this work tree (plugins/module_utils/_governor.py,
--budget passed on); an unthrottled run (the physical limit). --extra NAME:knob=value,... adds sysfs
configurations; --only picks some. --guests N runs the same configurations over N identical VM lab guests
(tests/vmlab) instead of the process workload; their saveable memory is not known in advance, so the marks are
taken against the most any configuration saved.

Two matrix modes: --shapes runs unthrottled, auto and static over the content shapes, unique shares and process
counts (one table with the budget verdicts, a plot of ksmd's share over time); --scale runs kernel-default, auto,
advisor-budget and unthrottled over workload sizes and adds the steady-state share once merging settled
(smart_scan 1, then 0).

    bench/merge [--mib 1024] [--processes 4] [--shape start] [--unique 0] [--timeout 240] [--budget 25]
                [--only NAME,...] [--guests 3]
    bench/merge --shapes [--mib 1024] [--auto-config role-auto|governor]
    bench/merge --scale [--sizes 256,1024,2048,4096,8192] [--unique 50] [--timeout 240]

Writes build/bench/merge/results.{md,json} and results.png (via bench/merge_plot.py in its own venv); the matrix
modes write to its shapes/ and scale/ folders.
Everything that writes KSM runs under tests/support/ksm_guard.py's guard (lock, save, restore, also on Ctrl-C).
Not a test: it prints figures and never fails on them.
"""

import argparse
import contextlib
import glob
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import typing as t

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(REPO, "tests"))

from support import collection, ksm_guard, merge_workload, plots, tools  # noqa: E402  (tests/support)
from support.machine import describe  # noqa: E402

collection.import_collection()

from ansible_collections.kvmhost.ksm.plugins.module_utils import _apply, _governor_state, _procfs, _sysfs  # noqa: E402

PAGE = _procfs.page_size()
MIB = 1024 * 1024

# The knobs the benchmark moves; before each configuration they go back to these kernel defaults (ksm-kernel.md).
KERNEL_DEFAULTS = [
    ("advisor_max_cpu", 70), ("advisor_min_pages_to_scan", 500), ("advisor_max_pages_to_scan", 30000),
    ("advisor_target_scan_time", 200), ("advisor_mode", "none"), ("pages_to_scan", 100), ("sleep_millisecs", 20),
    ("smart_scan", True),
]
MATRIX_SHAPES = [("start", 0, 4), ("end", 0, 4), ("random", 0, 4), ("start", 50, 4), ("start", 90, 4),
                 ("start", 0, 32)]  # --shapes: (content shape, unique %, processes)
SCALE_SIZES = "256,1024,2048,4096,8192"
GOVERNOR_UNIT = "/etc/systemd/system/kvmhost-ksm-governor.service"  # the role's auto mode installs it
GOVERNOR_MAIN = ("import sys; from ansible_collections.kvmhost.ksm.plugins.module_utils._governor import main; "
                 "sys.exit(main())")


class Config(t.NamedTuple):
    name: str
    kind: str          # sysfs | ksmtuned | role | governor
    settings: dict[str, t.Any]
    what: str


CONFIGS = [
    Config("kernel-default", "sysfs", {"pages_to_scan": 100, "sleep_millisecs": 20},
           "kernel defaults: 100 pages / 20 ms, advisor off"),
    Config("ksmtuned", "ksmtuned", {},
           "the real Debian ksmtuned script, packaged defaults, simulated memory pressure"),
    Config("advisor-kernel", "sysfs", {"advisor_mode": "scan-time"},
           "advisor_mode=scan-time with the kernel's advisor defaults (max cpu 70 %, min 500, target 200 s)"),
    Config("advisor-budget", "sysfs", {"advisor_mode": "scan-time", "advisor_target_scan_time": 1,
                                       "advisor_max_cpu": 25, "advisor_min_pages_to_scan": 2300},
           "advisor aimed at the budget: target scan time 1 s, max cpu 25 %, min 2300 pages"),
    Config("role-auto", "role", {"ksm_mode": "auto"}, "role, ksm_mode auto (defaults)"),
    Config("role-advisor", "role", {"ksm_mode": "advisor"}, "role, ksm_mode advisor (defaults)"),
    Config("role-static", "role", {"ksm_mode": "static"}, "role, ksm_mode static (defaults)"),
    Config("static", "sysfs", {"pages_to_scan": 2300, "sleep_millisecs": 20},
           "the old fixed budget rate: 2300 pages / 20 ms"),
    Config("governor", "governor", {"pages_to_scan": 2300, "sleep_millisecs": 20},
           "the budget governor from this work tree (starts at 2300 pages / 20 ms)"),
    Config("unthrottled", "sysfs", {"pages_to_scan": 100000, "sleep_millisecs": 0},
           "unthrottled: 100000 pages / 0 ms (ksmd scans without pause)"),
]


class Interrupted(Exception):
    pass


def on_signal(signum: int, frame: t.Any) -> None:
    raise Interrupted(f"signal {signum}")


# ---------------------------------------------------------------------------------------------------------------
# Machine and process helpers


def ksmd_pid() -> int:
    pid = _procfs.ksmd_pid()
    if pid is None:
        raise SystemExit("no ksmd kernel thread found (kernel without CONFIG_KSM?)")
    return pid


def cpu_seconds(pid: int) -> float:
    """ksmd's CPU time so far ((utime + stime) / clock ticks of /proc/<pid>/stat)."""
    seconds = _procfs.cpu_seconds(pid)
    if seconds is None:
        raise SystemExit(f"the ksmd kernel thread (pid {pid}) is gone")
    return seconds


def sched_ns(pid: int) -> int:
    """ksmd's time on a CPU in ns (/proc/<pid>/schedstat), a cross-check of the tick-based utime + stime."""
    return round((_procfs.sched_cpu_seconds(pid) or 0.0) * 1e9)


def loadavg() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def meminfo() -> list[tuple[str, int, str]]:
    rows = []
    with open("/proc/meminfo") as f:
        for line in f:
            key, rest = line.split(":", 1)
            parts = rest.split()
            rows.append((key, int(parts[0]), parts[1] if len(parts) > 1 else ""))
    return rows


def machine() -> dict[str, t.Any]:
    with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
        thp = f.read().strip()
    return dict(describe(), page_size=PAGE, thp=thp, load=loadavg())


def other_mergeable(exclude: t.Iterable[int]) -> list[str]:
    """Processes besides the workload with mergeable memory (their pages would count in pages_sharing too)."""
    skip = set(exclude)
    found = []
    for pid in sorted(_procfs.pids()):
        if pid in skip:
            continue
        try:
            items = _procfs.parse_ksm_stat(_procfs.read_process_file(pid, "ksm_stat"))
            comm = _procfs.read_process_file(pid, "comm").strip()
        except OSError:
            continue
        if items.get("ksm_rmap_items", 0) or items.get("ksm_mergeable") is True:
            found.append(f"{pid} ({comm})")
    return found


# ---------------------------------------------------------------------------------------------------------------
# Sampling


class Sampler(threading.Thread):
    """Reads the KSM counters and ksmd's CPU time every interval seconds until stopped."""

    FIELDS = ("run", "pages_sharing", "ksm_zero_pages", "pages_to_scan", "sleep_millisecs", "full_scans")

    def __init__(self, ksm: _sysfs.Sysfs, pid: int, interval: float, state_file: str | None = None) -> None:
        super().__init__(daemon=True)
        self.ksm = ksm
        self.pid = pid
        self.interval = interval
        self.fields = [f for f in self.FIELDS if ksm.has(f)]
        self.samples: list[dict[str, t.Any]] = []
        self.halt = threading.Event()
        self.state_file = state_file  # a governor's JSON status: its phase is recorded when fresh
        self.since = time.time()

    def phase(self) -> str | None:
        """The governor's phase from its state file, if it was written since this sampler started."""
        if not self.state_file:
            return None
        state = _governor_state.read_state(self.state_file) or {}
        fresh = isinstance(state.get("updated"), (int, float))
        return str(state.get("phase")) if fresh and state["updated"] >= self.since else None

    def sample(self) -> dict[str, t.Any]:
        row: dict[str, t.Any] = {"t": time.monotonic(), "cpu": cpu_seconds(self.pid), "ns": sched_ns(self.pid)}
        for name in self.fields:
            row[name] = self.ksm.read(name)
        row["saved"] = row["pages_sharing"] + max(row.get("ksm_zero_pages", 0), 0)
        row["phase"] = self.phase()
        return row

    def run(self) -> None:
        while not self.halt.is_set():
            self.samples.append(self.sample())
            self.halt.wait(self.interval)

    def last(self) -> dict[str, t.Any]:
        return self.samples[-1] if self.samples else self.sample()

    def stop(self) -> None:
        self.halt.set()
        self.join()


# ---------------------------------------------------------------------------------------------------------------
# Applying configurations


def converge(ksm: _sysfs.Sysfs, request: dict[str, t.Any]) -> None:
    """Make KSM hold request through the collection's planner (its write order, unmerging when needed)."""
    try:
        _apply.converge(ksm, request, allow_unmerge=True, timeout=300)
    except _sysfs.KsmError as exc:
        raise SystemExit(f"{exc} (drop the configuration with --only if this kernel cannot take it)") from None


def reset(ksm: _sysfs.Sysfs) -> None:
    """Unmerge everything (run=2), wait until nothing is merged, put the scan knobs back to the kernel defaults."""
    converge(ksm, dict([(name, value) for name, value in KERNEL_DEFAULTS if ksm.has(name)], run="unmerged"))
    if not ksm.wait_unmerged(300, interval=0.2):
        raise SystemExit("KSM did not unmerge within 300 s (run=2); is another KSM manager running?")


def write_sysfs(ksm: _sysfs.Sysfs, settings: dict[str, t.Any]) -> None:
    """Apply a sysfs configuration and start KSM (run=1)."""
    converge(ksm, dict(settings, run="running"))


def ksmtuned_package(work: str) -> tuple[str, str]:
    """The real Debian ksmtuned package: a cached .deb of the test images, else `apt-get download ksmtuned`."""
    candidates = sorted(glob.glob(os.path.join(REPO, ".cache", "hosts", "*", "opt", "localrepo", "ksmtuned_*.deb")))
    candidates += sorted(glob.glob("/var/cache/apt/archives/ksmtuned_*.deb"))
    if not candidates:
        subprocess.run(["apt-get", "download", "ksmtuned"], cwd=work, check=False,
                       stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        candidates = sorted(glob.glob(os.path.join(work, "ksmtuned_*.deb")))
    if not candidates:
        raise SystemExit("no ksmtuned .deb: run `apt-get update` (Debian/Ubuntu apt sources) or build the test "
                         "images (tests/hosts/build-rootfs), or leave ksmtuned out with --only")
    unpacked = os.path.join(work, "ksmtuned-deb")
    subprocess.run(["dpkg-deb", "-x", candidates[-1], unpacked], check=True)
    return candidates[-1], unpacked


class Ksmtuned:
    """The packaged ksmtuned script, unchanged, in a private mount namespace (unshare -m) where a bind-mounted
    copy of /proc/meminfo reports MemFree + Buffers + Cached at 5 % of MemTotal, under its 20 % threshold, so it
    boosts from its first check on. Its KSM writes go to the real /sys/kernel/mm/ksm. Stopped by process group."""

    def __init__(self, work: str) -> None:
        self.work = work
        self.deb, self.unpacked = ksmtuned_package(work)
        self.script = os.path.join(self.unpacked, "usr", "sbin", "ksmtuned")
        self.conf = os.path.join(self.unpacked, "etc", "ksmtuned.conf")
        self.version = os.path.basename(self.deb)[:-len(".deb")].replace("_", " ")
        self.group: int | None = None
        self.log = os.path.join(work, "ksmtuned.log")

    def fake_meminfo(self) -> str:
        rows = meminfo()
        total = dict((k, v) for k, v, _unit in rows)["MemTotal"]
        low = total * 5 // 100
        fake = {"MemFree": low, "MemAvailable": low, "Buffers": 0, "Cached": 0}
        path = os.path.join(self.work, "meminfo")
        with open(path, "w") as f:
            for key, value, unit in rows:
                f.write(f"{key + ':':<16}{fake.get(key, value):>8}{' ' + unit if unit else ''}\n")
        return path

    def start(self) -> None:
        pidfile = os.path.join(self.work, "ksmtuned.pid")
        shell = ('mount --bind "$1" /proc/meminfo && '
                 '{ [ ! -e /etc/ksmtuned.conf ] || mount --bind "$2" /etc/ksmtuned.conf; } && exec bash "$3"')
        env = dict(os.environ, PIDFILE=pidfile, DEBUG="1", LOGFILE=self.log)
        proc = subprocess.Popen(["unshare", "--mount", "--propagation", "private", "sh", "-c", shell, "sh",
                                 self.fake_meminfo(), self.conf, self.script],
                                env=env, start_new_session=True, stdin=subprocess.DEVNULL)
        self.group = proc.pid
        if proc.wait(timeout=30) != 0:  # the script forks its loop and exits
            raise SystemExit(f"ksmtuned did not start (exit {proc.returncode}); see {self.log}")

    def stop(self) -> None:
        if self.group is None:
            return
        try:
            os.killpg(self.group, signal.SIGTERM)
        except ProcessLookupError:
            pass
        self.group = None


def run_role(work: str, role_vars: dict[str, t.Any]) -> str:
    """Apply the real role to localhost with ansible-playbook from the project's .venv; return the mode it chose."""
    venv = os.path.join(REPO, ".venv")
    playbook_tool = tools.find_tool("ansible-playbook", venv)
    if not playbook_tool:
        raise SystemExit("no .venv/bin/ansible-playbook: run ./scripts/bootstrap --main first")
    chosen = os.path.join(work, "mode")
    playbook = os.path.join(work, "role.yml")
    all_vars = dict(role_vars, ksm_persist=False, ksm_manage_packages=False)
    with open(playbook, "w") as f:
        json.dump([{"hosts": "localhost", "connection": "local", "gather_facts": False,
                    "roles": [{"role": "kvmhost.ksm.ksm", "vars": all_vars}],
                    "post_tasks": [{"name": "Record the mode", "ansible.builtin.copy": {
                        "content": "{{ ksm_effective_mode }}", "dest": chosen, "mode": "0644"}}]}], f)
    with open(os.path.join(work, "role.log"), "a") as log:
        done = subprocess.run([playbook_tool, "-i", "localhost,", playbook], env=collection.ansible_env(venv),
                              stdout=log, stderr=subprocess.STDOUT, check=False)
    if done.returncode:
        raise SystemExit(f"the role failed (exit {done.returncode}); see {os.path.join(work, 'role.log')}")
    with open(chosen) as f:
        return f.read().strip()


# ---------------------------------------------------------------------------------------------------------------
# One configuration


class Guests:
    """--guests N: N identical VM lab guests (tests/vmlab/vmlab clone, one booted snapshot) as the workload, started
    once for all configurations in a private state directory and stopped by the lab (by pid) at the end."""

    def __init__(self, count: int, work: str) -> None:
        self.names = [f"bench-merge-{i + 1}" for i in range(count)]
        self.env = dict(os.environ, VMLAB_STATE_DIR=os.path.join(work, "guests"))
        self.lab = os.path.join(REPO, "tests", "vmlab", "vmlab")
        self.pids: list[int] = []

    def __enter__(self) -> "Guests":
        done = subprocess.run([self.lab, "clone", "--flavor", "uni"] + self.names, env=self.env, check=False,
                              stdout=subprocess.PIPE, text=True)
        if done.returncode:
            self.stop()
            raise SystemExit(f"the VM lab could not start the guests (exit {done.returncode}); "
                             "see tests/vmlab/README.md")
        self.pids = [g["pid"] for g in json.loads(done.stdout)]
        return self

    def stop(self) -> None:
        subprocess.run([self.lab, "stop"] + self.names, env=self.env, check=False)

    def __exit__(self, *exc: t.Any) -> None:
        self.stop()


class Spec(t.NamedTuple):
    """One process workload: mib MiB in all, over `processes` processes, content `shape`, `unique` % never merging."""
    mib: int
    processes: int
    shape: str = "start"
    unique: int = 0

    @property
    def label(self) -> str:
        return f"{self.shape}, {self.unique} % unique, {self.processes} processes, {size_text(self.mib)}"


def size_text(mib: int) -> str:
    return f"{mib // 1024} GiB" if mib >= 1024 and mib % 1024 == 0 else f"{mib} MiB"


class ProcessLoad:
    """The default workload, one fresh tests/support/merge_workload.py set per configuration."""

    def __init__(self, spec: Spec) -> None:
        self.workload = merge_workload.Workload(processes=spec.processes, mib=spec.mib // spec.processes,
                                                shape=spec.shape, unique=spec.unique)

    def __enter__(self) -> "ProcessLoad":
        self.workload.__enter__()
        return self

    @property
    def pids(self) -> list[int]:
        return self.workload.pids

    @property
    def saveable(self) -> int:
        return self.workload.saveable

    def __exit__(self, *exc: t.Any) -> None:
        self.workload.stop()


def memory_refusal(mib: int) -> str | None:
    """Why a workload of mib MiB must not start here (MemAvailable < 2 x its size + 2 GiB), or None."""
    available = dict((k, v) for k, v, _unit in meminfo())["MemAvailable"] // 1024
    need = 2 * mib + 2048
    if available >= need:
        return None
    return (f"a {size_text(mib)} workload needs MemAvailable >= 2 x {mib} + 2048 = {need} MiB (room to fill it and "
            f"to unmerge it again), but this machine has {available} MiB available; use a smaller size or free memory")


class Governor:
    """The budget governor (plugins/module_utils/_governor.py of this work tree) as a plain process, stopped by pid."""

    def __init__(self, work: str, budget: float) -> None:
        if not os.path.exists(os.path.join(REPO, "plugins", "module_utils", "_governor.py")):
            raise SystemExit("this work tree has no plugins/module_utils/_governor.py, so there is no governor to "
                             "run; leave `governor` out with --only")
        self.state = os.path.join(work, "governor.json")
        self.log = os.path.join(work, "governor.log")
        self.command = [sys.executable, "-c", GOVERNOR_MAIN, "--budget", f"{budget:g}", "--state-file", self.state,
                        "--log-every", "5"]
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        env = dict(os.environ, PYTHONPATH=collection.collections_dir())
        with open(self.log, "a") as log:
            log.write("== governor " + " ".join(self.command[3:]) + "\n")
            log.flush()
            self.proc = subprocess.Popen(self.command, env=env, stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT)
        time.sleep(0.3)
        if self.proc.poll() is not None:
            raise SystemExit(f"the governor exited at once (exit {self.proc.returncode}); see governor.log")

    def stop(self) -> int | None:
        """SIGTERM by pid, then the exit status (None if it had to be killed)."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                return None
        return self.proc.returncode


def settled(samples: list[dict[str, t.Any]], seconds: float) -> bool:
    """Guests: saved is above 0 and grew by less than 1 % over the last `seconds`."""
    if not samples or samples[-1]["saved"] <= 0 or samples[-1]["t"] - samples[0]["t"] < seconds:
        return False
    old = next(s for s in reversed(samples) if samples[-1]["t"] - s["t"] >= seconds)
    return samples[-1]["saved"] - old["saved"] < 0.01 * samples[-1]["saved"]


class ScanWatch:
    """Merging has settled when the saving grew by less than 1 % over the last full scan (full_scans)."""

    def __init__(self) -> None:
        self.scans: int | None = None
        self.saved_at_scan: int | None = None

    def settled(self, row: dict[str, t.Any]) -> bool:
        scans = row.get("full_scans")
        if scans is None or scans == self.scans:
            return False
        before, self.scans = self.saved_at_scan, scans
        self.saved_at_scan = row["saved"]
        return before is not None and row["saved"] > 0 and row["saved"] - before < 0.01 * row["saved"]


def steady_windows(ksm: _sysfs.Sysfs, sampler: Sampler, args: argparse.Namespace) -> dict[str, t.Any]:
    """ksmd's share in --steady seconds once merging settled: with smart_scan 1, then 0 (where the kernel has it).
    A governor still in its merging phase gets up to 30 s to settle first."""
    out: dict[str, t.Any] = {}
    deadline = time.monotonic() + 30
    while sampler.last().get("phase") == "merging" and time.monotonic() < deadline:
        time.sleep(args.interval)
    out["steady_phase"] = sampler.last().get("phase")
    settings: list[tuple[str, bool | None]] = [("smart1", True), ("smart0", False)] if ksm.has("smart_scan") \
        else [("smart1", None)]
    for key, value in settings:
        if value is not None:
            ksm.write("smart_scan", value)
        first = sampler.last()
        time.sleep(args.steady)
        last = sampler.last()
        out[f"steady_{key}"] = round(100 * (last["cpu"] - first["cpu"]) / (last["t"] - first["t"]), 1)
        out[f"steady_{key}_pages"] = last.get("pages_to_scan")
    return out


def measure(cfg: Config, spec: Spec | None, args: argparse.Namespace, ksm: _sysfs.Sysfs, pid: int, work: str,
            guests: Guests | None, timeout: float, steady: bool = False) -> dict[str, t.Any]:
    result: dict[str, t.Any] = {"name": cfg.name, "what": cfg.what, "load_before": loadavg(), "timeout": timeout}
    if spec:
        result.update(workload=spec.label, spec=spec._asdict())
    tuned = governor = None
    workload: contextlib.AbstractContextManager[Guests | ProcessLoad] = (
        contextlib.nullcontext(guests) if guests else ProcessLoad(t.cast(Spec, spec)))
    with workload as load:
        saveable = None if isinstance(load, Guests) else load.saveable
        others = other_mergeable(load.pids)
        if others:
            result["warning"] = (f"{len(others)} other processes with mergeable memory: " + ", ".join(others[:8])
                                 + (", ..." if len(others) > 8 else "") + " (their pages count in the figures)")
            print(f"  WARNING: {result['warning']}", flush=True)
        reset(ksm)
        sampler = Sampler(ksm, pid, args.interval, _governor_state.DEFAULT_STATE if cfg.kind == "role" else None)
        if cfg.kind == "governor":
            governor = Governor(work, args.budget)
            sampler.state_file = governor.state
        sampler.start()
        try:
            t_apply = time.monotonic()
            if cfg.kind == "sysfs":
                write_sysfs(ksm, cfg.settings)
                t0 = t_apply
            elif cfg.kind == "governor":
                write_sysfs(ksm, cfg.settings)
                t0 = t_apply
                t.cast(Governor, governor).start()
            elif cfg.kind == "ksmtuned":
                tuned = Ksmtuned(work)
                tuned.start()
                result["what"] += f" ({tuned.version})"
                t0 = t_apply  # ksmtuned owns run: deciding when to start is part of what it does
            else:
                role_vars = dict(cfg.settings)
                if role_vars.get("ksm_mode") == "auto":
                    role_vars["ksm_cpu_budget"] = int(args.budget) if args.budget == int(args.budget) else args.budget
                result["chose"] = run_role(work, role_vars)
                result["what"] += f": chose {result['chose']}"
                on = [s["t"] for s in sampler.samples if s["t"] >= t_apply and s["run"] == "running"]
                t0 = on[0] if on else time.monotonic()
            full_at = None
            watch = ScanWatch()
            while True:
                now = time.monotonic()
                last = sampler.last()
                if guests:
                    done = settled(sampler.samples, 10)
                else:
                    done = last["saved"] >= t.cast(int, saveable) * args.full / 100
                    if steady and watch.settled(last):  # a saving that stopped growing short of --full
                        done = True
                if full_at is None and done:
                    full_at = now
                    if steady:
                        result["settled_at"] = round(now - t0, 1)
                        result.update(steady_windows(ksm, sampler, args))
                        break
                if full_at is not None and now - full_at >= args.tail:
                    break
                if now - t0 >= timeout:
                    break
                time.sleep(args.interval)
        finally:
            sampler.stop()
            if governor:
                result["governor_exit"] = governor.stop()
            if tuned:
                tuned.stop()
                with open(tuned.log) as f:
                    result["ksmtuned_log"] = f.read().splitlines()[-12:]
        result["load_after"] = loadavg()
    result.update({"_samples": sampler.samples, "_t0": t0, "_t_apply": t_apply, "_saveable": saveable})
    return result


def crossing(rows: list[dict[str, t.Any]], level: float) -> dict[str, float] | None:
    """Time, CPU seconds and ns where saved first reaches level, interpolated between the two samples around it."""
    for before, after in zip(rows, rows[1:], strict=False):
        if after["saved"] >= level:
            if before["saved"] >= level:
                return {"t": before["t"], "cpu": before["cpu"], "ns": before["ns"]}
            f = (level - before["saved"]) / (after["saved"] - before["saved"])
            return {k: before[k] + f * (after[k] - before[k]) for k in ("t", "cpu", "ns")}
    return None


def share_series(rows: list[dict[str, t.Any]], t0: float, step: float = 0.5) -> list[list[float]]:
    """ksmd's share of one core (%) over consecutive windows of about `step` seconds, at each window's end."""
    out = []
    prev = rows[0] if rows else None
    for row in rows[1:]:
        if prev and row["t"] - prev["t"] >= step:
            out.append([round(row["t"] - t0, 1), round(100 * (row["cpu"] - prev["cpu"]) / (row["t"] - prev["t"]), 1)])
            prev = row
    return out


def analyse(samples: list[dict[str, t.Any]], t0: float, t_apply: float, saveable: int,
            args: argparse.Namespace) -> dict[str, t.Any]:
    base = [s for s in samples if s["t"] <= t0]
    cpu0 = (base[-1] if base else samples[0])["cpu"]
    ns0 = (base[-1] if base else samples[0])["ns"]
    rows = [s for s in samples if s["t"] >= t0]
    series = [[round(s["t"] - t0, 2), round(s["saved"] * PAGE / MIB, 1)] for s in rows]
    out: dict[str, t.Any] = {"series": series, "saveable_mib": round(saveable * PAGE / MIB, 1),
                             "apply_s": round(t0 - t_apply, 1), "share_series": share_series(rows, t0)}
    on = [s for s in rows if s["run"] == "running"]
    out["on_at"] = round(on[0]["t"] - t0, 1) if on else None
    for mark in (50, 90):
        hit = crossing(rows, saveable * mark / 100)
        out[f"t{mark}"] = round(hit["t"] - t0, 1) if hit else None
        if mark == 90:
            end = hit or rows[-1]
            span = end["t"] - t0
            out["cpu"] = round(end["cpu"] - cpu0, 2)
            out["cpu_schedstat"] = round((end["ns"] - ns0) / 1e9, 2)
            out["share"] = round(100 * (end["cpu"] - cpu0) / span, 1) if span > 0 else None
            out["window"] = round(span, 1)
            merged_gib = (saveable * 0.9 if hit else rows[-1]["saved"]) * PAGE / MIB / 1024
            out["cpu_per_gib"] = round((end["cpu"] - cpu0) / merged_gib, 2) if merged_gib > 0 else None
    full = next((s for s in rows if s["saved"] >= saveable * args.full / 100), None)
    last = rows[-1]
    if full and last["t"] - full["t"] >= 1:
        out["after_share"] = round(100 * (last["cpu"] - full["cpu"]) / (last["t"] - full["t"]), 1)
    else:
        out["after_share"] = None
    out["final_pct"] = round(100 * last["saved"] / saveable, 1) if saveable else None
    out["final_mib"] = round(last["saved"] * PAGE / MIB, 1)
    out["pages_to_scan_end"] = last.get("pages_to_scan")
    out["sleep_end"] = last.get("sleep_millisecs")
    out["full_scans"] = last.get("full_scans")
    phases = [s["phase"] for s in rows if s.get("phase")]
    out["phases"] = sorted(set(phases)) if phases else None
    return out


# ---------------------------------------------------------------------------------------------------------------
# Report


def verdicts(results: list[dict[str, t.Any]], budget: float) -> dict[str, t.Any]:
    limit = next((r for r in results if r["name"] == "unthrottled" and r.get("t90") is not None), None)
    if not limit:
        return {}
    allowed = limit["cpu"] / (budget / 100)
    target = {"unthrottled_cpu": limit["cpu"], "budget_time": round(allowed, 1),
              "t90_limit": round(1.25 * allowed, 1), "share_limit": round(1.1 * budget, 1)}
    for r in results:
        if r["name"] == "unthrottled":
            r["meets"] = "(limit)"
            continue
        fast = r.get("t90") is not None and r["t90"] <= target["t90_limit"]
        light = r.get("share") is not None and r["share"] <= target["share_limit"]
        r["meets"] = "yes" if fast and light else "no (" + ", ".join(
            w for w, bad in (("slow", not fast), ("over budget", not light)) if bad) + ")"
    return target


def fmt(value: t.Any, unit: str = "") -> str:
    return "not reached" if value is None else f"{value}{unit}"


def dash(value: t.Any, unit: str = "") -> str:
    return "-" if value is None else f"{value}{unit}"


def table(results: list[dict[str, t.Any]], args: argparse.Namespace) -> str:
    lines = ["| configuration | KSM on at | t50 | t90 | ksmd CPU to t90 | ksmd share to t90 | share once merged "
             "| saved at end | pages_to_scan / sleep at end | budget target |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        cpu_note = "" if r.get("t90") is not None else f" (in {r['window']} s)"
        lines.append(
            f"| **{r['name']}**: {r['what']} | {fmt(r['on_at'], ' s')} | {fmt(r['t50'], ' s')} | {fmt(r['t90'], ' s')} "
            f"| {r['cpu']} s{cpu_note} | {fmt(r['share'], ' %')}{cpu_note} | {dash(r['after_share'], ' %')} "
            f"| {r['final_pct']} % | {r['pages_to_scan_end']} / {r['sleep_end']} ms | {r.get('meets', '-')} |")
    return "\n".join(lines)


def machine_line(info: dict[str, t.Any]) -> str:
    return (f"Machine: kernel {info['kernel']}, {info['cores']} cores ({info['cpu']}), {info['ram_gib']} GiB RAM, "
            f"page {info['page_size']} B, THP {info['thp']}; load average at start {info['load']}, at end "
            f"{info.get('load_end', '?')}; run took {info.get('minutes', '?')} min.")


def budget_line(target: dict[str, t.Any], budget: float) -> str:
    return (f"Budget {budget:g} % of one core. Unthrottled ksmd needed {target['unthrottled_cpu']} CPU s to "
            f"reach 90 %, so the budget allows {target['budget_time']} s; the target is t90 <= 1.25 x that = "
            f"{target['t90_limit']} s with an average ksmd share <= {target['share_limit']} % (budget + 10 %).")


def warnings_lines(results: list[dict[str, t.Any]], notes: list[str]) -> list[str]:
    lines = [f"- {r['name']} ({r.get('workload', '')}): {r['warning']}" for r in results if r.get("warning")]
    lines += [f"- {note}" for note in notes]
    return ["", "Warnings and skips:"] + lines if lines else []


def report(results: list[dict[str, t.Any]], info: dict[str, t.Any], args: argparse.Namespace,
           target: dict[str, t.Any], notes: list[str]) -> str:
    saveable = results[0]["saveable_mib"] if results else 0
    spec = single_spec(args)
    head = [machine_line(info),
            (f"Workload: {args.guests} identical VM lab guests (1 vCPU, 768 MiB, from one booted snapshot); saveable "
             f"taken as the most any configuration saved, {saveable} MiB." if args.guests else
             f"Workload: {args.processes} processes x {args.mib // args.processes} MiB ({args.mib} MiB in all), "
             f"content shape {spec.shape}, {spec.unique} % unique pages; saveable {saveable} MiB.")
            + f" Timeout {args.timeout:g} s per configuration; "
            f"times from the moment the configuration was applied (KSM on; for ksmtuned, the daemon's start).",
            ""]
    tail = ["", budget_line(target, args.budget)] if target else []
    return "\n".join(head + [table(results, args)] + tail + warnings_lines(results, notes)) + "\n"


def grouped(results: list[dict[str, t.Any]]) -> dict[str, list[dict[str, t.Any]]]:
    groups: dict[str, list[dict[str, t.Any]]] = {}
    for r in results:
        groups.setdefault(r["workload"], []).append(r)
    return groups


def shapes_report(results: list[dict[str, t.Any]], info: dict[str, t.Any], args: argparse.Namespace,
                  targets: dict[str, dict[str, t.Any]], notes: list[str]) -> str:
    auto = args.auto_config
    head = [machine_line(info),
            f"Workloads: {size_text(args.mib)} in all; configurations unthrottled (defines each workload's budget "
            f"time), auto (`{auto}`) and static (the old fixed 2300 pages / 20 ms). Budget {args.budget:g} % of one "
            f"core: a configuration meets it when its ksmd share to t90 <= {round(1.1 * args.budget, 1)} % "
            f"(budget + 10 %) and t90 <= 1.25 x unthrottled CPU s / budget. Timeout {args.timeout:g} s.",
            "",
            "| workload | unthrottled t90 / CPU s | target t90 | auto t90 | auto share | auto meets | static t90 "
            "| static share | static meets |",
            "|---|---|---|---|---|---|---|---|---|"]
    for label, rows in grouped(results).items():
        by = {r["name"]: r for r in rows}
        limit = by.get("unthrottled", {})
        cells = [label, f"{fmt(limit.get('t90'), ' s')} / {dash(limit.get('cpu'), ' s')}",
                 dash(targets.get(label, {}).get("t90_limit"), " s")]
        for name in (auto, "static"):
            r = by.get(name)
            cells += ["-", "-", "-"] if r is None else [
                fmt(r["t90"], " s"), f"{fmt(r['share'], ' %')}" + ("" if r["t90"] is not None
                                                                   else f" (in {r['window']} s)"),
                r.get("meets", "-")]
        head.append("| " + " | ".join(cells) + " |")
    return "\n".join(head + warnings_lines(results, notes)) + "\n"


def slope(points: list[tuple[float, float]]) -> float | None:
    """Least-squares slope of log(y) against log(x): y grows as x to that power."""
    pts = [(math.log(x), math.log(y)) for x, y in points if x > 0 and y and y > 0]
    if len(pts) < 2:
        return None
    mx = sum(p[0] for p in pts) / len(pts)
    my = sum(p[1] for p in pts) / len(pts)
    var = sum((p[0] - mx) ** 2 for p in pts)
    return round(sum((p[0] - mx) * (p[1] - my) for p in pts) / var, 2) if var else None


def scaling(results: list[dict[str, t.Any]]) -> dict[str, dict[str, t.Any]]:
    """Per configuration: the exponents of t90 and of ksmd CPU to t90 against the workload size."""
    out: dict[str, dict[str, t.Any]] = {}
    for name in dict.fromkeys(r["name"] for r in results):
        rows = [r for r in results if r["name"] == name]
        out[name] = {"t90": slope([(r["spec"]["mib"], r["t90"]) for r in rows if r.get("t90")]),
                     "cpu": slope([(r["spec"]["mib"], r["cpu"]) for r in rows if r.get("t90")]),
                     "sizes_reached": [r["spec"]["mib"] for r in rows if r.get("t90")]}
    return out


def scale_report(results: list[dict[str, t.Any]], info: dict[str, t.Any], args: argparse.Namespace,
                 exponents: dict[str, dict[str, t.Any]], notes: list[str]) -> str:
    head = [machine_line(info),
            f"Workloads: 4 processes, shape start, {args.unique} % unique, sizes {args.sizes} MiB in all; timeout "
            f"per size {args.timeout:g} s x size / 8 GiB, at least {args.min_timeout:g} s. Merging counts as settled "
            f"at {args.full:g} % of the saveable memory or when the saving grew < 1 % over the last full scan; the "
            f"steady share is ksmd's share over the {args.steady:g} s after that, first with smart_scan 1, then 0.",
            "",
            "| size | configuration | t50 | t90 | ksmd CPU s per GiB merged | share to t90 "
            "| steady share, smart_scan 1 | steady share, smart_scan 0 | saved at end |",
            "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        note = "" if r.get("t90") is not None else f" (in {r['window']} s)"
        head.append(f"| {size_text(r['spec']['mib'])} | {r['name']} | {fmt(r['t50'], ' s')} | {fmt(r['t90'], ' s')} "
                    f"| {dash(r.get('cpu_per_gib'))}{note} | {fmt(r['share'], ' %')}{note} "
                    f"| {dash(r.get('steady_smart1'), ' %')} | {dash(r.get('steady_smart0'), ' %')} "
                    f"| {r['final_mib']} MiB ({r['final_pct']} %) |")
    head += ["", "How each configuration scales with the size (exponent k of size^k, least squares over the sizes "
             "that reached 90 %):", ""]
    for name, e in exponents.items():
        head.append(f"- {name}: t90 ~ size^{dash(e['t90'])}, ksmd CPU to t90 ~ size^{dash(e['cpu'])} "
                    f"(sizes reached: {', '.join(size_text(m) for m in e['sizes_reached']) or 'none'})")
    return "\n".join(head + warnings_lines(results, notes)) + "\n"


def plot(out: str, extra: list[str] | None = None) -> None:
    """Draw results.png with bench/merge_plot.py in the bench venv (matplotlib), built on first use."""
    plots.draw("merge_plot.py", os.path.join(out, "results.json"), os.path.join(out, "results.png"), *(extra or []))


# ---------------------------------------------------------------------------------------------------------------
# Plans: which configurations on which workloads


def remove_role_governor(work: str) -> None:
    """The role's auto mode installs the governor service on a systemd host; a role run in static mode removes it."""
    print(f"- removing the governor service the role installed ({GOVERNOR_UNIT}): the role in static mode", flush=True)
    try:
        run_role(work, {"ksm_mode": "static"})
    except SystemExit as exc:
        print(f"  could not remove it: {exc}", flush=True)


def single_spec(args: argparse.Namespace) -> Spec:
    return Spec(args.mib, args.processes, args.shape, 0 if args.unique is None else args.unique)


def find_config(configs: list[Config], name: str) -> Config:
    return next(c for c in configs if c.name == name)


def scale_timeout(args: argparse.Namespace, mib: int) -> float:
    return max(args.min_timeout, args.timeout * mib / 8192)


def plan(args: argparse.Namespace, configs: list[Config]) -> list[tuple[Spec | None, Config, float, bool]]:
    """(workload, configuration, timeout, steady) in the order they run."""
    if args.shapes:
        names = ["unthrottled", args.auto_config, "static"]
        return [(Spec(args.mib, processes, shape, unique), find_config(configs, name), args.timeout, False)
                for shape, unique, processes in MATRIX_SHAPES for name in names]
    if args.scale:
        names = ["kernel-default", args.auto_config, "advisor-budget", "unthrottled"]
        return [(Spec(mib, 4, "start", args.unique), find_config(configs, name), scale_timeout(args, mib), True)
                for mib in args.sizes for name in names]
    spec = None if args.guests else single_spec(args)
    return [(spec, cfg, args.timeout, False) for cfg in configs]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mib", type=int, default=1024, help="workload size in MiB, all processes together")
    parser.add_argument("--processes", type=int, default=4, help="processes sharing the identical pages")
    parser.add_argument("--shape", choices=merge_workload.SHAPES, default="start",
                        help="where pages differ: start, end or random offsets (default start)")
    parser.add_argument("--unique", type=int, default=None,
                        help="%% of each process's pages that never merge (default 0; 50 with --scale)")
    parser.add_argument("--timeout", type=float, default=240,
                        help="seconds per configuration (with --scale: at 8 GiB, smaller sizes proportionally less)")
    parser.add_argument("--min-timeout", type=float, default=90, help="--scale: the shortest per-size timeout")
    parser.add_argument("--budget", type=float, default=25, help="ksmd CPU budget, %% of one core (also the "
                        "governor's --budget)")
    parser.add_argument("--interval", type=float, default=0.1, help="sampling period in seconds")
    parser.add_argument("--full", type=float, default=99, help="%% of the saveable memory that counts as merged")
    parser.add_argument("--tail", type=float, default=5, help="seconds to keep sampling once merged")
    parser.add_argument("--steady", type=float, default=10, help="--scale: seconds of each steady-state window")
    parser.add_argument("--only", help="comma-separated configuration names (default: all)")
    parser.add_argument("--extra", action="append", default=[], metavar="NAME:KNOB=V,...",
                        help="an extra sysfs configuration, e.g. fast:pages_to_scan=1000,sleep_millisecs=20")
    parser.add_argument("--shapes", action="store_true", help="the workload matrix: shapes, unique shares, 32 "
                        "processes; unthrottled, auto and static on each")
    parser.add_argument("--scale", action="store_true", help="kernel-default, auto, advisor-budget and unthrottled "
                        "over --sizes, with the steady-state share")
    parser.add_argument("--sizes", default=SCALE_SIZES, help=f"--scale: MiB in all, comma-separated "
                        f"(default {SCALE_SIZES})")
    parser.add_argument("--auto-config", choices=["role-auto", "governor"],
                        help="--shapes and --scale: what `auto` is, the real role or the governor run directly "
                        "(default role-auto on a booted systemd host, where the role runs the governor service; "
                        "elsewhere the role falls back to static, so governor)")
    parser.add_argument("--out", help="output folder (default build/bench/merge, and its shapes/ or scale/)")
    parser.add_argument("--no-plot", action="store_true")
    parser.add_argument("--guests", type=int, default=0, metavar="N",
                        help="VM variant: N identical VM lab guests instead of the process workload")
    args = parser.parse_args()
    if args.shapes and args.scale or (args.shapes or args.scale) and (args.guests or args.only or args.extra):
        parser.error("--shapes and --scale run fixed matrices: use one of them, without --guests, --only or --extra")
    try:
        args.sizes = [int(v) for v in args.sizes.split(",")]
    except ValueError:
        parser.error(f"--sizes takes MiB as comma-separated integers, not {args.sizes!r}")
    if args.auto_config is None:
        args.auto_config = "role-auto" if os.path.isdir("/run/systemd/system") else "governor"
        if args.shapes or args.scale:
            why = ("" if args.auto_config == "role-auto" else
                   ": this host does not run systemd, so the role's auto mode would fall back to the static "
                   "profile; the governor runs directly instead (--auto-config role-auto to measure the role)")
            print(f"auto = {args.auto_config}{why}", flush=True)
    if args.scale and args.unique is None:
        args.unique = 50
    if args.unique is not None and not 0 <= args.unique <= 100:
        parser.error(f"--unique is a percentage from 0 to 100, not {args.unique}")
    mibs = args.sizes if args.scale else [args.mib]
    counts = [p for _s, _u, p in MATRIX_SHAPES] if args.shapes else [4] if args.scale else [args.processes]
    bad = [(m, p) for m in mibs for p in counts if p < 2 or m % p]
    if bad and not args.guests:
        parser.error(f"the process count must be >= 2 and divide the size in MiB ({bad[0][0]} MiB over "
                     f"{bad[0][1]} processes does not)")
    base = os.path.join(REPO, "build", "bench", "merge")
    args.out = args.out or (os.path.join(base, "shapes") if args.shapes else os.path.join(base, "scale")
                            if args.scale else base)
    return args


def select(args: argparse.Namespace) -> list[Config]:
    configs = list(CONFIGS)
    for extra in args.extra:
        name, _colon, spec = extra.partition(":")
        settings = {}
        for item in filter(None, spec.split(",")):
            key, value = item.split("=", 1)
            settings[key] = value if key == "advisor_mode" else int(value)
        configs.append(Config(name, "sysfs", settings, "extra: " + ", ".join(f"{k}={v}" for k, v in settings.items())))
    if args.only:
        names = args.only.split(",")
        unknown = set(names) - {c.name for c in configs}
        if unknown:
            raise SystemExit(f"unknown configurations {sorted(unknown)}; known: {[c.name for c in configs]}")
        configs = [c for c in configs if c.name in names]
    return configs


def main() -> int:
    args = parse_args()
    configs = select(args)
    steps = plan(args, configs)
    ok, why = ksm_guard.writable()
    if not ok:
        print(f"bench/merge needs the real, writable KSM of this machine: {why}", file=sys.stderr)
        return 77
    if not args.guests and not args.scale:
        refusal = memory_refusal(max((spec.mib for spec, *_rest in steps if spec), default=0))
        if refusal:
            print(f"bench/merge: {refusal}.", file=sys.stderr)
            return 1
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    os.makedirs(args.out, exist_ok=True)
    info = machine()
    pid = ksmd_pid()
    ksm = _sysfs.Sysfs()
    results: list[dict[str, t.Any]] = []
    notes: list[str] = []
    work = tempfile.mkdtemp(prefix="kvmhost-bench-merge.")
    started = time.monotonic()
    had_unit = os.path.exists(GOVERNOR_UNIT)
    mode = "shapes" if args.shapes else "scale" if args.scale else "single"
    what = (f"{args.guests} VM lab guests" if args.guests else
            f"{len({s for s, *_r in steps})} workloads" if mode != "single" else t.cast(Spec, steps[0][0]).label
            if steps else "nothing")
    print(f"kernel {info['kernel']}, {info['cores']} cores, {info['ram_gib']} GiB, load {info['load']}; {what}; "
          f"{len(steps)} runs", flush=True)
    try:
        with ksm_guard.guarded(), (Guests(args.guests, work) if args.guests else contextlib.nullcontext()) as guests:
            for spec, cfg, timeout, steady in steps:
                print(f"- {cfg.name}{' on ' + spec.label if spec and mode != 'single' else ''}: {cfg.what} "
                      f"(timeout {timeout:g} s) ...", flush=True)
                refusal = memory_refusal(spec.mib) if spec else None
                if refusal:
                    print(f"  skipped: {refusal}", flush=True)
                    notes.append(f"{cfg.name} on {spec.label if spec else '?'} skipped: {refusal}")
                    continue
                try:
                    r = measure(cfg, spec, args, ksm, pid, work, guests, timeout, steady)
                except SystemExit as exc:  # one configuration that cannot run (no ksmtuned .deb, role failure)
                    print(f"  skipped: {exc}", flush=True)
                    notes.append(f"{cfg.name}{' on ' + spec.label if spec else ''} skipped: {exc}")
                    continue
                results.append(r)
                if not guests:
                    r.update(analyse(r.pop("_samples"), r.pop("_t0"), r.pop("_t_apply"), r.pop("_saveable"), args))
                else:
                    r["t50"] = r["t90"] = r["cpu"] = r["share"] = r["final_pct"] = "?"
                steady_text = (f", steady {dash(r.get('steady_smart1'), ' %')} / {dash(r.get('steady_smart0'), ' %')}"
                               if steady else "")
                print(f"  t50 {fmt(r['t50'], ' s')}, t90 {fmt(r['t90'], ' s')}, ksmd {r['cpu']} CPU s, "
                      f"share {fmt(r['share'], ' %')}, saved {r['final_pct']} %{steady_text}", flush=True)
            if not had_unit and os.path.exists(GOVERNOR_UNIT):
                remove_role_governor(work)
            ksm.write("run", "unmerged")
    except (KeyboardInterrupt, Interrupted) as exc:
        print(f"interrupted ({exc or 'Ctrl-C'}): KSM restored by the guard; partial results follow", file=sys.stderr)
    finally:
        for name in ("role.log", "ksmtuned.log", "governor.log"):
            if os.path.exists(os.path.join(work, name)):
                shutil.copy(os.path.join(work, name), os.path.join(args.out, name))
        shutil.rmtree(work, ignore_errors=True)
    if args.guests:  # the saveable memory of guests is not known in advance: the most any configuration saved
        most = max((s["saved"] for r in results for s in r["_samples"]), default=0)
        for r in results:
            r.update(analyse(r.pop("_samples"), r.pop("_t0"), r.pop("_t_apply"), most, args))
    info["load_end"] = loadavg()
    info["minutes"] = round((time.monotonic() - started) / 60, 1)
    data: dict[str, t.Any] = {"mode": mode, "machine": info, "args": vars(args), "results": results, "notes": notes}
    extra_plot: list[str] = []
    if mode == "shapes":
        data["targets"] = {label: verdicts(rows, args.budget) for label, rows in grouped(results).items()}
        text = shapes_report(results, info, args, data["targets"], notes)
    elif mode == "scale":
        data["scaling"] = scaling(results)
        text = scale_report(results, info, args, data["scaling"], notes)
        shapes_json = os.path.join(os.path.dirname(args.out), "shapes", "results.json")
        extra_plot = [shapes_json] if os.path.exists(shapes_json) else []
    else:
        data["target"] = verdicts(results, args.budget)
        text = report(results, info, args, data["target"], notes)
    with open(os.path.join(args.out, "results.md"), "w") as f:
        f.write(text)
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(data, f, indent=1)
    print()
    print(text)
    if results and not args.no_plot:
        plot(args.out, extra_plot)
    print(f"written: {args.out}/results.md, results.json" + ("" if args.no_plot else ", results.png"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
