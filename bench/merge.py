# Copyright (c) kvmhost.ksm contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Benchmark: how fast each KSM configuration merges duplicate memory on this machine's real kernel, and at what
ksmd CPU cost, all configurations side by side in one run.

For every configuration: a fresh workload (--processes processes holding --mib MiB in total of identical
anonymous pages, MADV_MERGEABLE; tests/support/merge_workload.py), KSM reset (run=2, wait until nothing is
merged, the scan knobs back to the kernel defaults), the configuration applied, then sampled every --interval s:
saved bytes ((pages_sharing + ksm_zero_pages) x page size) and ksmd CPU time (utime + stime of
/proc/<ksmd>/stat). Reported: time to 50 % and 90 % of the saveable memory ((processes - 1) x pages per
process), ksmd CPU seconds and average ksmd CPU share up to 90 % (the merge window), the share once merged, and
whether the budget target holds (see --budget). A configuration that does not reach a mark within --timeout
seconds shows "not reached" and the saving it had.

Configurations: the kernel defaults; the real Debian ksmtuned script under simulated memory pressure (a private
mount namespace whose /proc/meminfo reports little free memory; nothing else on the host sees it); the kernel's
scan-time advisor with its defaults; the role's profiles auto, advisor and static applied by the real role
(ansible-playbook on localhost, ksm_persist and ksm_manage_packages false); an unthrottled run (the physical
limit). --extra NAME:knob=value,... adds sysfs configurations; --only picks some. --guests N runs the same
configurations over N identical VM lab guests (tests/vmlab) instead of the process workload; their saveable
memory is not known in advance, so the marks are taken against the most any configuration saved.

    bench/merge [--mib 1024] [--processes 4] [--timeout 240] [--budget 25] [--only NAME,...] [--guests 3]

Writes build/bench/merge/results.{md,json} and results.png (via bench/merge_plot.py in its own venv).
Everything that writes KSM runs under tests/support/ksm_guard.py's guard (lock, save, restore, also on Ctrl-C).
Not a test: it prints figures and never fails on them.
"""

import argparse
import contextlib
import glob
import json
import os
import platform
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

from support import collection, ksm_guard, merge_workload, tools, venvs  # noqa: E402  (tests/support)

collection.import_collection()

from ansible_collections.kvmhost.ksm.plugins.module_utils import _apply, _procfs, _sysfs  # noqa: E402

PAGE = _procfs.page_size()
MIB = 1024 * 1024

# The knobs the benchmark moves; before each configuration they go back to these kernel defaults (ksm-kernel.md).
KERNEL_DEFAULTS = [
    ("advisor_max_cpu", 70), ("advisor_min_pages_to_scan", 500), ("advisor_max_pages_to_scan", 30000),
    ("advisor_target_scan_time", 200), ("advisor_mode", "none"), ("pages_to_scan", 100), ("sleep_millisecs", 20),
]


class Config(t.NamedTuple):
    name: str
    kind: str          # sysfs | ksmtuned | role
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
    return int(_procfs.read_process_file(pid, "schedstat").split()[0])


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
    model = ""
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    total = dict((k, v) for k, v, _unit in meminfo())["MemTotal"]
    with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
        thp = f.read().strip()
    return {"kernel": platform.release(), "cores": os.cpu_count(), "cpu": model,
            "ram_gib": round(total / 1024 / 1024, 1), "page_size": PAGE, "thp": thp, "load": loadavg()}


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

    def __init__(self, ksm: _sysfs.Sysfs, pid: int, interval: float) -> None:
        super().__init__(daemon=True)
        self.ksm = ksm
        self.pid = pid
        self.interval = interval
        self.fields = [f for f in self.FIELDS if ksm.has(f)]
        self.samples: list[dict[str, t.Any]] = []
        self.halt = threading.Event()

    def sample(self) -> dict[str, t.Any]:
        row: dict[str, t.Any] = {"t": time.monotonic(), "cpu": cpu_seconds(self.pid), "ns": sched_ns(self.pid)}
        for name in self.fields:
            row[name] = self.ksm.read(name)
        row["saved"] = row["pages_sharing"] + max(row.get("ksm_zero_pages", 0), 0)
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


class ProcessLoad:
    """The default workload, one fresh tests/support/merge_workload.py set per configuration."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.workload = merge_workload.Workload(processes=args.processes, mib=args.mib // args.processes)

    def __enter__(self) -> "ProcessLoad":
        self.workload.__enter__()
        return self

    @property
    def pids(self) -> list[int]:
        return self.workload.pids

    @property
    def saveable(self) -> int:
        return (self.workload.processes - 1) * self.workload.pages

    def __exit__(self, *exc: t.Any) -> None:
        self.workload.stop()


def settled(samples: list[dict[str, t.Any]], seconds: float) -> bool:
    """Guests: saved is above 0 and grew by less than 1 % over the last `seconds`."""
    if not samples or samples[-1]["saved"] <= 0 or samples[-1]["t"] - samples[0]["t"] < seconds:
        return False
    old = next(s for s in reversed(samples) if samples[-1]["t"] - s["t"] >= seconds)
    return samples[-1]["saved"] - old["saved"] < 0.01 * samples[-1]["saved"]


def measure(cfg: Config, args: argparse.Namespace, ksm: _sysfs.Sysfs, pid: int, work: str,
            guests: Guests | None) -> dict[str, t.Any]:
    result: dict[str, t.Any] = {"name": cfg.name, "what": cfg.what, "load_before": loadavg()}
    tuned = None
    workload: contextlib.AbstractContextManager[Guests | ProcessLoad] = (
        contextlib.nullcontext(guests) if guests else ProcessLoad(args))
    with workload as load:
        saveable = None if isinstance(load, Guests) else load.saveable
        others = other_mergeable(load.pids)
        if others:
            result["warning"] = "other processes with mergeable memory: " + ", ".join(others)
            print(f"  WARNING: {result['warning']}", flush=True)
        reset(ksm)
        sampler = Sampler(ksm, pid, args.interval)
        sampler.start()
        try:
            t_apply = time.monotonic()
            if cfg.kind == "sysfs":
                write_sysfs(ksm, cfg.settings)
                t0 = t_apply
            elif cfg.kind == "ksmtuned":
                tuned = Ksmtuned(work)
                tuned.start()
                result["what"] += f" ({tuned.version})"
                t0 = t_apply  # ksmtuned owns run: deciding when to start is part of what it does
            else:
                result["chose"] = run_role(work, cfg.settings)
                result["what"] += f": chose {result['chose']}"
                on = [s["t"] for s in sampler.samples if s["t"] >= t_apply and s["run"] == "running"]
                t0 = on[0] if on else time.monotonic()
            full_at = None
            while True:
                now = time.monotonic()
                last = sampler.last()
                if full_at is None and (settled(sampler.samples, 10) if guests
                                        else last["saved"] >= saveable * args.full / 100):
                    full_at = now
                if full_at is not None and now - full_at >= args.tail:
                    break
                if now - t0 >= args.timeout:
                    break
                time.sleep(args.interval)
        finally:
            sampler.stop()
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


def analyse(samples: list[dict[str, t.Any]], t0: float, t_apply: float, saveable: int,
            args: argparse.Namespace) -> dict[str, t.Any]:
    base = [s for s in samples if s["t"] <= t0]
    cpu0 = (base[-1] if base else samples[0])["cpu"]
    ns0 = (base[-1] if base else samples[0])["ns"]
    rows = [s for s in samples if s["t"] >= t0]
    series = [[round(s["t"] - t0, 2), round(s["saved"] * PAGE / MIB, 1)] for s in rows]
    out: dict[str, t.Any] = {"series": series, "saveable_mib": round(saveable * PAGE / MIB, 1),
                             "apply_s": round(t0 - t_apply, 1)}
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
    full = next((s for s in rows if s["saved"] >= saveable * args.full / 100), None)
    last = rows[-1]
    if full and last["t"] - full["t"] >= 1:
        out["after_share"] = round(100 * (last["cpu"] - full["cpu"]) / (last["t"] - full["t"]), 1)
    else:
        out["after_share"] = None
    out["final_pct"] = round(100 * last["saved"] / saveable, 1)
    out["pages_to_scan_end"] = last.get("pages_to_scan")
    out["sleep_end"] = last.get("sleep_millisecs")
    out["full_scans"] = last.get("full_scans")
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


def table(results: list[dict[str, t.Any]], args: argparse.Namespace) -> str:
    lines = ["| configuration | KSM on at | t50 | t90 | ksmd CPU to t90 | ksmd share to t90 | share once merged "
             "| saved at end | pages_to_scan / sleep at end | budget target |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        cpu_note = "" if r.get("t90") is not None else f" (in {r['window']} s)"
        lines.append(
            f"| **{r['name']}**: {r['what']} | {fmt(r['on_at'], ' s')} | {fmt(r['t50'], ' s')} | {fmt(r['t90'], ' s')} "
            f"| {r['cpu']} s{cpu_note} | {fmt(r['share'], ' %')}{cpu_note} | "
            f"{'-' if r['after_share'] is None else str(r['after_share']) + ' %'} "
            f"| {r['final_pct']} % | {r['pages_to_scan_end']} / {r['sleep_end']} ms | {r.get('meets', '-')} |")
    return "\n".join(lines)


def report(results: list[dict[str, t.Any]], info: dict[str, t.Any], args: argparse.Namespace,
           target: dict[str, t.Any]) -> str:
    saveable = results[0]["saveable_mib"] if results else 0
    head = [f"Machine: kernel {info['kernel']}, {info['cores']} cores ({info['cpu']}), {info['ram_gib']} GiB RAM, "
            f"page {info['page_size']} B, THP {info['thp']}; load average at start {info['load']}, at end "
            f"{info.get('load_end', '?')}.",
            (f"Workload: {args.guests} identical VM lab guests (1 vCPU, 768 MiB, from one booted snapshot); saveable "
             f"taken as the most any configuration saved, {saveable} MiB." if args.guests else
             f"Workload: {args.processes} processes x {args.mib // args.processes} MiB of identical pages "
             f"({args.mib} MiB in all); saveable {saveable} MiB.")
            + f" Timeout {args.timeout} s per configuration; "
            f"times from the moment the configuration was applied (KSM on; for ksmtuned, the daemon's start).",
            ""]
    tail = []
    if target:
        tail = ["",
                f"Budget {args.budget:g} % of one core. Unthrottled ksmd needed {target['unthrottled_cpu']} CPU s to "
                f"reach 90 %, so the budget allows {target['budget_time']} s; the target is t90 <= 1.25 x that = "
                f"{target['t90_limit']} s with an average ksmd share <= {target['share_limit']} % (budget + 10 %)."]
    warnings = [f"- {r['name']}: {r['warning']}" for r in results if r.get("warning")]
    if warnings:
        tail += ["", "Warnings:"] + warnings
    return "\n".join(head + [table(results, args)] + tail) + "\n"


def plot(out: str) -> None:
    """Draw results.png with bench/merge_plot.py in the bench venv (matplotlib), built on first use."""
    try:
        venv = venvs.ensure_venv("bench")
    except venvs.VenvError as exc:
        print(f"no plot: {exc}")
        return
    python = os.path.join(venv, "bin", "python")
    subprocess.run([python, os.path.join(HERE, "merge_plot.py"), os.path.join(out, "results.json"),
                    os.path.join(out, "results.png")], check=False)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mib", type=int, default=1024, help="workload size in MiB, all processes together")
    parser.add_argument("--processes", type=int, default=4, help="processes sharing the identical pages")
    parser.add_argument("--timeout", type=float, default=240, help="seconds per configuration")
    parser.add_argument("--budget", type=float, default=25, help="ksmd CPU budget, %% of one core")
    parser.add_argument("--interval", type=float, default=0.1, help="sampling period in seconds")
    parser.add_argument("--full", type=float, default=99, help="%% of the saveable memory that counts as merged")
    parser.add_argument("--tail", type=float, default=5, help="seconds to keep sampling once merged")
    parser.add_argument("--only", help="comma-separated configuration names (default: all)")
    parser.add_argument("--extra", action="append", default=[], metavar="NAME:KNOB=V,...",
                        help="an extra sysfs configuration, e.g. fast:pages_to_scan=1000,sleep_millisecs=20")
    parser.add_argument("--out", default=os.path.join(REPO, "build", "bench", "merge"), help="output folder")
    parser.add_argument("--no-plot", action="store_true")
    parser.add_argument("--guests", type=int, default=0, metavar="N",
                        help="VM variant: N identical VM lab guests instead of the process workload")
    args = parser.parse_args()
    if args.processes < 2 or args.mib % args.processes:
        parser.error("--processes must be >= 2 and divide --mib")

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
            parser.error(f"unknown configurations {sorted(unknown)}; known: {[c.name for c in configs]}")
        configs = [c for c in configs if c.name in names]

    ok, why = ksm_guard.writable()
    if not ok:
        print(f"bench/merge needs the real, writable KSM of this machine: {why}", file=sys.stderr)
        return 77
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    os.makedirs(args.out, exist_ok=True)
    info = machine()
    pid = ksmd_pid()
    ksm = _sysfs.Sysfs()
    results: list[dict[str, t.Any]] = []
    work = tempfile.mkdtemp(prefix="kvmhost-bench-merge.")
    print(f"kernel {info['kernel']}, {info['cores']} cores, {info['ram_gib']} GiB, load {info['load']}; "
          + (f"{args.guests} VM lab guests; " if args.guests
             else f"{args.processes} x {args.mib // args.processes} MiB; ")
          + f"{len(configs)} configurations, "
          f"timeout {args.timeout:g} s each", flush=True)
    try:
        with ksm_guard.guarded(), (Guests(args.guests, work) if args.guests else contextlib.nullcontext()) as guests:
            for cfg in configs:
                print(f"- {cfg.name}: {cfg.what} ...", flush=True)
                try:
                    r = measure(cfg, args, ksm, pid, work, guests)
                except SystemExit as exc:  # one configuration that cannot run (no ksmtuned .deb, role failure)
                    print(f"  skipped: {exc}", flush=True)
                    continue
                results.append(r)
                if not guests:
                    r.update(analyse(r.pop("_samples"), r.pop("_t0"), r.pop("_t_apply"), r.pop("_saveable"), args))
                else:
                    r["t50"] = r["t90"] = r["cpu"] = r["share"] = r["final_pct"] = "?"
                print(f"  t50 {fmt(r['t50'], ' s')}, t90 {fmt(r['t90'], ' s')}, ksmd {r['cpu']} CPU s, "
                      f"share {fmt(r['share'], ' %')}, saved {r['final_pct']} %", flush=True)
            ksm.write("run", "unmerged")
    except (KeyboardInterrupt, Interrupted) as exc:
        print(f"interrupted ({exc or 'Ctrl-C'}): KSM restored by the guard; partial results follow", file=sys.stderr)
    finally:
        for name in ("role.log", "ksmtuned.log"):
            if os.path.exists(os.path.join(work, name)):
                shutil.copy(os.path.join(work, name), os.path.join(args.out, name))
        shutil.rmtree(work, ignore_errors=True)
    if args.guests:  # the saveable memory of guests is not known in advance: the most any configuration saved
        most = max((s["saved"] for r in results for s in r["_samples"]), default=0)
        for r in results:
            r.update(analyse(r.pop("_samples"), r.pop("_t0"), r.pop("_t_apply"), most, args))
    info["load_end"] = loadavg()
    target = verdicts(results, args.budget)
    text = report(results, info, args, target)
    with open(os.path.join(args.out, "results.md"), "w") as f:
        f.write(text)
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump({"machine": info, "args": vars(args), "target": target, "results": results}, f, indent=1)
    print()
    print(text)
    if results and not args.no_plot:
        plot(args.out)
    print(f"written: {args.out}/results.md, results.json" + ("" if args.no_plot else ", results.png"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
