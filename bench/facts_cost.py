# Copyright (c) kvmhost.ksm contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""What a kvmhost.ksm.ksm_facts run costs next to ansible.builtin.ping and ansible.builtin.setup (default subset).

Targets (issue 3): ksm_facts <= 1.2 x ping and <= 0.5 x setup on the same host. Not a test: it prints figures.

Three measurements on localhost, each interleaved (the order of the three modules rotates every round) and reduced
to the median (the verdict uses the median of the per-round ratios: the three runs of a round are next to each
other in time, so a load change on a shared machine cancels out):
  task     wall time of each module task inside one ansible-playbook run (a small callback records task start and
           end): what a module costs a play; the controller's start-up is paid once and left out.
  ad hoc   wall time and CPU time (user + system, all processes) of a whole `ansible localhost -m MODULE` command,
           controller start-up included.
  payload  wall and CPU time of each module's AnsiballZ payload run directly with the managed host's Python: the
           cost on the managed host alone (Python start-up, module_utils import, the module's work), no controller.
  in-proc  the module's own work (the collector, without Ansible) in this Python, for scale.

    python3 bench/facts_cost.py [--rounds 9] [--adhoc-rounds 5] [--payload-rounds 15] [--processes 10]
                                [--pipelining off|on|both]
    python3 bench/facts_cost.py --processes-axis [0,100,1000,5000] [--merged both|without|with]

The process-count axis (issue 14; targets ksm_facts <= 1.2 x ping at 1000 extra processes, <= 1.5 x at 5000):
ping and ksm_facts only, in the payload (wall, CPU) and task shapes, with COUNTS extra idle processes on the host
(tests/support/idle_processes.py: forked children of one small helper, started before and stopped by pid after),
each count without and with merged pages. "With": under the KSM guard (machine-wide lock, KSM saved and restored), the
merge workload of tests/support/merge_workload.py (4 x 16 MiB) runs too and every extra process holds 2 mergeable
pages (page i the same in all of them); ksmd merges fast (5000 pages every 10 ms) until a full scan adds nothing,
then stops with run=0, which keeps the merged pages: the measurement runs with every extra process's ksm_stat
reporting merged pages, and without ksmd's CPU in the way.

Ansible's fixed cost per task (temporary directory, file transfer, several /bin/sh commands) is the same for the
three modules and shrinks with ANSIBLE_PIPELINING=true; both settings are measured by default.

Uses the ansible next to this Python and the collection environment of tests/support/collection.py
(ANSIBLE_COLLECTIONS_PATH from the environment, else this work tree). It only reads KSM, so it needs no guard,
except for the merged cases of the process axis, which take it.
"""

import argparse
import contextlib
import json
import os
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import typing as t

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "tests"))

from support import collection, ksm_guard, plots, tools  # noqa: E402  (tests/support)
from support.idle_processes import IdleProcesses  # noqa: E402
from support.merge_workload import Workload  # noqa: E402

collection.import_collection()

from ansible_collections.kvmhost.ksm.plugins.module_utils import _apply, _procfs, _sysfs  # noqa: E402

MODULES = ("ansible.builtin.ping", "kvmhost.ksm.ksm_facts", "ansible.builtin.setup")
AXIS_MODULES = ("ansible.builtin.ping", "kvmhost.ksm.ksm_facts")
AXIS_COUNTS = "0,100,1000,5000"
AXIS_TARGETS = {1000: 1.2, 5000: 1.5}  # issue 14 (ksm_facts / ping); elsewhere issue 3's 1.2
EXTRA_PAGES = 2  # mergeable pages each extra process holds in the merged case
WORKLOAD = (4, 16)  # the merge workload of the merged case: processes, MiB each
MERGE_SETTINGS = {"pages_to_scan": 5000, "sleep_millisecs": 10}  # fast merging before the measurement
SHORT = {"ansible.builtin.ping": "ping", "kvmhost.ksm.ksm_facts": "ksm_facts", "ansible.builtin.setup": "setup"}

CALLBACK = '''
import json
import os
import time

from ansible.plugins.callback import CallbackBase

DOCUMENTATION = """
name: task_times
type: aggregate
short_description: record the wall time of every task
description: Writes the seconds of every task (JSON) to the file named by TASK_TIMES_FILE at the end of the play.
options: {}
"""


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "task_times"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self, *args, **kwargs):
        super(CallbackModule, self).__init__(*args, **kwargs)
        self.started = {}
        self.times = {}

    def v2_playbook_on_task_start(self, task, is_conditional):
        self.started[task.get_name()] = time.perf_counter()

    def v2_runner_on_ok(self, result):
        name = result._task.get_name()
        self.times[name] = time.perf_counter() - self.started[name]

    def v2_playbook_on_stats(self, stats):
        with open(os.environ["TASK_TIMES_FILE"], "w") as f:
            json.dump(self.times, f)
'''


def tool(name: str) -> str:
    return tools.find_tool(name) or name


def rotated(round_no: int, modules: tuple[str, ...] = MODULES) -> list[str]:
    shift = round_no % len(modules)
    return list(modules[shift:] + modules[:shift])


def module_args(module: str, processes: int) -> dict[str, int]:
    return {"processes": processes} if module == "kvmhost.ksm.ksm_facts" else {}


def task_times(env: dict[str, str], work: str, rounds: int, processes: int,
               modules: tuple[str, ...] = MODULES) -> dict[str, list[float]]:
    """Per-task wall times of the modules inside one playbook run (plus one warm-up round)."""
    cb_dir = os.path.join(work, "callback_plugins")
    os.makedirs(cb_dir, exist_ok=True)
    with open(os.path.join(cb_dir, "task_times.py"), "w") as f:
        f.write(CALLBACK)
    tasks = []
    for n in range(rounds + 1):
        for module in rotated(n, modules):
            tasks.append({"name": f"{n} {module}", module: module_args(module, processes)})
    play = [{"hosts": "localhost", "gather_facts": False, "tasks": tasks}]
    playbook = os.path.join(work, "bench.yml")
    with open(playbook, "w") as f:
        json.dump(play, f)  # JSON is YAML
    out = os.path.join(work, "times.json")
    run_env = dict(env, ANSIBLE_CALLBACK_PLUGINS=cb_dir, ANSIBLE_CALLBACKS_ENABLED="task_times",
                   TASK_TIMES_FILE=out)
    subprocess.run([tool("ansible-playbook"), playbook], env=run_env, check=True, stdout=subprocess.DEVNULL)
    with open(out) as f:
        times = json.load(f)
    result: dict[str, list[float]] = {m: [] for m in modules}
    for name, seconds in times.items():
        n, module = name.split(" ", 1)
        if n != "0":  # round 0 warms caches up
            result[module].append(seconds)
    return result


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def adhoc_times(env: dict[str, str], rounds: int, processes: int) -> tuple[dict[str, list[float]], ...]:
    """Wall time and CPU time (user + system of the command and every process it waited for) per ad hoc run."""
    wall: dict[str, list[float]] = {m: [] for m in MODULES}
    cpu: dict[str, list[float]] = {m: [] for m in MODULES}
    for n in range(rounds + 1):
        for module in rotated(n):
            cmd = [tool("ansible"), "localhost", "-m", module]
            if module == "kvmhost.ksm.ksm_facts":
                cmd += ["-a", f"processes={processes}"]
            start, start_cpu = time.perf_counter(), cpu_seconds()
            subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL)
            if n:
                wall[module].append(time.perf_counter() - start)
                cpu[module].append(cpu_seconds() - start_cpu)
    return wall, cpu


def keep_payloads(env: dict[str, str], work: str, processes: int,
                  modules: tuple[str, ...] = MODULES) -> dict[str, str]:
    """Run each module once with ANSIBLE_KEEP_REMOTE_FILES and return the path of its AnsiballZ payload."""
    remote = os.path.join(work, "remote")
    keep = dict(env, ANSIBLE_KEEP_REMOTE_FILES="1", ANSIBLE_REMOTE_TMP=remote, ANSIBLE_PIPELINING="false")
    payloads = {}
    for module in modules:
        cmd = [tool("ansible"), "localhost", "-m", module]
        if module == "kvmhost.ksm.ksm_facts":
            cmd += ["-a", f"processes={processes}"]
        before = set(os.listdir(remote)) if os.path.isdir(remote) else set()
        subprocess.run(cmd, env=keep, check=True, stdout=subprocess.DEVNULL)
        new = sorted(set(os.listdir(remote)) - before)
        files = [os.path.join(remote, d, f) for d in new for f in os.listdir(os.path.join(remote, d))
                 if f.startswith("AnsiballZ_")]
        payloads[module] = files[0]
    return payloads


def payload_times(env: dict[str, str], payloads: dict[str, str], rounds: int,
                  modules: tuple[str, ...] = MODULES) -> tuple[dict[str, list[float]], ...]:
    """Wall and CPU time of each module's AnsiballZ payload run directly on this host: the managed host's share."""
    python = env["ANSIBLE_PYTHON_INTERPRETER"]
    wall: dict[str, list[float]] = {m: [] for m in modules}
    cpu: dict[str, list[float]] = {m: [] for m in modules}
    for n in range(rounds + 1):
        for module in rotated(n, modules):
            start, start_cpu = time.perf_counter(), cpu_seconds()
            subprocess.run([python, payloads[module]], check=True, stdout=subprocess.DEVNULL)
            if n:
                wall[module].append(time.perf_counter() - start)
                cpu[module].append(cpu_seconds() - start_cpu)
    return wall, cpu


def inproc_time(rounds: int, processes: int) -> float:
    collection.import_collection()
    from ansible_collections.kvmhost.ksm.plugins.module_utils import _facts as facts

    samples = []
    for _round in range(rounds):
        start = time.perf_counter()
        facts.collect(processes=processes)  # no systemctl here: service_facts is the one subprocess when used
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def report(title: str, times: dict[str, list[float]]) -> dict[str, float]:
    med = {m: statistics.median(v) for m, v in times.items()}
    print(f"\n{title} (median of {len(times[MODULES[0]])} runs each, interleaved)")
    for module in MODULES:
        print(f"  {SHORT[module]:<10} {med[module] * 1000:8.0f} ms   "
              f"(min {min(times[module]) * 1000:.0f}, max {max(times[module]) * 1000:.0f})")
    facts = times["kvmhost.ksm.ksm_facts"]
    ping = times["ansible.builtin.ping"]
    setup = times["ansible.builtin.setup"]
    for other, name, target in ((ping, "ping ", 1.2), (setup, "setup", 0.5)):
        of_medians = statistics.median(facts) / statistics.median(other)
        paired = statistics.median(f / o for f, o in zip(facts, other, strict=True))  # same round: load drift cancels
        verdict = "ok" if paired <= target else "MISSED"
        print(f"  ksm_facts / {name} = {paired:.2f} median of per-round ratios, {of_medians:.2f} ratio of medians, "
              f"{min(facts) / min(other):.2f} ratio of minimums   (target <= {target:.2f}) {verdict}")
    return med


# ---------------------------------------------------------------------------------------------------------------
# The process-count axis (issue 14)


def merge_now(ksm: t.Any, timeout: float = 180.0) -> int:
    """Run ksmd fast until a full scan merges nothing new (at least three full scans: a page joins the unstable
    tree only when its checksum held for one scan), then stop it with run=0, which keeps the merged pages.
    Returns pages_sharing. Call inside the KSM guard."""
    request: dict[str, t.Any] = dict(MERGE_SETTINGS, run="running")
    if ksm.has("advisor_mode"):
        request["advisor_mode"] = "none"  # the advisor would own pages_to_scan
    _apply.converge(ksm, request, allow_unmerge=True, timeout=120)
    first = int(ksm.read("full_scans"))
    scans, sharing = first, -1
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        time.sleep(0.2)
        now = int(ksm.read("full_scans"))
        if now == scans:
            continue
        scans, before, sharing = now, sharing, int(ksm.read("pages_sharing"))
        if scans - first >= 3 and sharing == before:
            break
    else:
        print(f"  KSM still merging after {timeout:.0f} s; measuring what it merged so far")
    _apply.converge(ksm, {"run": "stopped"}, allow_unmerge=False, timeout=120)
    return int(ksm.read("pages_sharing"))


def merged_processes(pids: list[int]) -> int:
    """How many of pids have merged pages now (ksm_merging_pages of ksm_stat, or of its own file on 5.19-6.3)."""
    source = _procfs.process_source()
    count = 0
    for pid in pids:
        try:
            text = _procfs.read_process_file(pid, source or "ksm_stat")
        except OSError:
            continue
        pages = (_procfs.parse_ksm_stat(text).get("ksm_merging_pages", 0) if source == "ksm_stat"
                 else int(text.strip() or 0))
        count += bool(pages)
    return count


def measure_case(env: dict[str, str], work: str, payloads: dict[str, str],
                 args: argparse.Namespace) -> dict[str, dict[str, list[float]]]:
    """The payload (wall, CPU) and task shapes of ping and ksm_facts on the host as it is now."""
    shapes: dict[str, dict[str, list[float]]] = {}
    if args.payload_rounds:
        wall, cpu = payload_times(env, payloads, args.payload_rounds, AXIS_MODULES)
        shapes["payload, wall"], shapes["payload, CPU"] = wall, cpu
    for setting in (("off", "on") if args.pipelining == "both" else (args.pipelining,)) if args.rounds else ():
        run_env = dict(env, ANSIBLE_PIPELINING="true" if setting == "on" else "false")
        shapes[f"task (pipelining {setting})"] = task_times(run_env, work, args.rounds, args.processes,
                                                            AXIS_MODULES)
    return shapes


def paired_ratio(facts: list[float], ping: list[float]) -> float:
    """The median of the per-round ratios (the two runs of a round are next to each other: load drift cancels)."""
    return statistics.median(f / p for f, p in zip(facts, ping, strict=True))


def processes_axis(env: dict[str, str], work: str, args: argparse.Namespace) -> list[tuple[t.Any, ...]]:
    """Every count of extra idle processes, without and with merged pages; rows for the table."""
    counts = [int(word) for word in args.processes_axis.split(",")]
    payloads = keep_payloads(env, work, args.processes, AXIS_MODULES)
    cases = {"both": (False, True), "without": (False,), "with": (True,)}[args.merged]
    can_merge, why = ksm_guard.writable()
    if not can_merge and True in cases:
        print(f"merged cases skipped: {why}")
        cases = tuple(c for c in cases if not c)
    ksm = _sysfs.Sysfs(_sysfs.DEFAULT_ROOT)
    rows = []
    for merged in cases:  # the cases without merged pages first: they need no lock
        with contextlib.ExitStack() as guard:
            if merged:
                print("\nwaiting for the KSM guard (other KSM benchmarks and tests hold it while they run)", flush=True)
                guard.enter_context(ksm_guard.guarded())  # lock, save; restore after the last processes stopped
            for count in counts:
                rows += axis_case(env, work, payloads, args, ksm, count, merged)
    return rows


def axis_case(env: dict[str, str], work: str, payloads: dict[str, str], args: argparse.Namespace, ksm: t.Any,
              count: int, merged: bool) -> list[tuple[t.Any, ...]]:
    """One point of the axis: start the processes (and merge), measure, stop them; its rows."""
    print(f"\n{count} extra processes, {'with' if merged else 'without'} merged pages", flush=True)
    with contextlib.ExitStack() as stack:
        if merged:
            stack.enter_context(Workload(*WORKLOAD))
        idle = stack.enter_context(IdleProcesses(count, EXTRA_PAGES if merged else 0))
        if merged:
            sharing = merge_now(ksm)
            print(f"  merged: pages_sharing {sharing}, extra processes with merged pages "
                  f"{merged_processes(idle.pids)}/{count}", flush=True)
        shapes = measure_case(env, work, payloads, args)
    rows = []
    for shape, times in shapes.items():
        ping, facts = times["ansible.builtin.ping"], times["kvmhost.ksm.ksm_facts"]
        target = AXIS_TARGETS.get(count, 1.2)
        ratio = paired_ratio(facts, ping)
        rows.append((count, merged, shape, statistics.median(ping), statistics.median(facts), ratio, target))
        print(f"  {shape:<24} ping {statistics.median(ping) * 1000:6.0f} ms   ksm_facts "
              f"{statistics.median(facts) * 1000:6.0f} ms   ratio {ratio:.2f} (target <= {target})", flush=True)
    return rows


def axis_table(rows: list[tuple[t.Any, ...]]) -> str:
    lines = ["| extra processes | merged pages | shape | ping | ksm_facts | facts / ping | target |",
             "|---|---|---|---|---|---|---|"]
    for count, merged, shape, ping, facts, ratio, target in rows:
        verdict = f"**{ratio:.2f}**" if ratio <= target else f"{ratio:.2f} (missed)"
        lines.append(f"| {count} | {'yes' if merged else 'no'} | {shape} | {ping * 1000:.0f} ms | "
                     f"{facts * 1000:.0f} ms | {verdict} | {target} |")
    return "\n".join(lines)


def write_axis(rows: list[tuple[t.Any, ...]], out: str) -> None:
    """results.md, results.json and the plot of the process axis (ratio to ping against extra processes)."""
    os.makedirs(out, exist_ok=True)
    keys = ("processes", "merged", "shape", "ping", "ksm_facts", "ratio", "target")
    with open(os.path.join(out, "results.md"), "w") as f:
        f.write(axis_table(rows) + "\n")
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump([dict(zip(keys, row, strict=True)) for row in rows], f, indent=1)
    series = []
    for merged in (False, True):
        for shape in dict.fromkeys(row[2] for row in rows):
            points = [(row[0], row[5]) for row in rows if row[1] == merged and row[2] == shape]
            if points:
                series.append({"label": f"{shape}, {'with' if merged else 'without'} merged pages",
                               "x": [p[0] for p in points], "y": [p[1] for p in points]})
    targets = sorted({(row[0], row[6]) for row in rows if row[0] in AXIS_TARGETS})
    plots.lines({"title": f"ksm_facts against ping, extra idle processes; kernel {os.uname().release}, "
                          f"{os.cpu_count()} CPUs",
                 "panels": [{"title": "ksm_facts / ping (median of per-round ratios)", "xlabel": "extra processes",
                             "ylabel": "x ping", "logx": True, "series": series,
                             "hlines": [{"y": v, "label": f"target at {n}: {v:g}x"} for n, v in targets]}]},
                os.path.join(out, "results.png"))
    print(f"written: {out}/results.md, results.json, results.png")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=9, help="rounds of the playbook measurement")
    parser.add_argument("--adhoc-rounds", type=int, default=5, help="rounds of the ad hoc measurement (0 skips)")
    parser.add_argument("--payload-rounds", type=int, default=15,
                        help="rounds of the module payload measurement (0 skips)")
    parser.add_argument("--processes", type=int, default=10, help="the processes option of ksm_facts")
    parser.add_argument("--pipelining", choices=("off", "on", "both"), default="both",
                        help="ANSIBLE_PIPELINING for the runs (default: both, one after the other)")
    parser.add_argument("--processes-axis", nargs="?", const=AXIS_COUNTS, metavar="COUNTS",
                        help=f"instead: ping and ksm_facts with COUNTS extra idle processes (default {AXIS_COUNTS}), "
                             "each without and with merged pages")
    parser.add_argument("--out", default=os.path.join(REPO, "build", "bench", "facts_cost"),
                        help="--processes-axis: folder for results.md, results.json and results.png")
    parser.add_argument("--merged", choices=("both", "without", "with"), default="both",
                        help="the axis cases to run: without merged pages, with them (under the KSM guard), or both")
    args = parser.parse_args()
    if args.processes_axis:
        for number in (signal.SIGTERM, signal.SIGHUP):  # unwind: stop the processes, restore KSM
            signal.signal(number, lambda signum, _frame: sys.exit(128 + signum))
        with tempfile.TemporaryDirectory(prefix="facts-cost-") as work:
            print(f"kernel {os.uname().release}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}, "
                  f"Python {sys.version.split()[0]}, ksm_facts processes={args.processes}")
            rows = processes_axis(collection.ansible_env(), work, args)
        print(f"\nload {os.getloadavg()[0]:.2f} at the end\n\n" + axis_table(rows))
        write_axis(rows, args.out)
        return 0
    with tempfile.TemporaryDirectory(prefix="facts-cost-") as work:
        base = collection.ansible_env()
        print(f"kernel {os.uname().release}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}, "
              f"Python {sys.version.split()[0]}, ksm_facts processes={args.processes}")
        if args.payload_rounds:
            wall, cpu = payload_times(base, keep_payloads(base, work, args.processes), args.payload_rounds)
            report("module payload alone on this host (AnsiballZ run directly), wall time", wall)
            report("module payload alone on this host (AnsiballZ run directly), CPU time", cpu)
        settings = ("off", "on") if args.pipelining == "both" else (args.pipelining,)
        for setting in settings if args.rounds or args.adhoc_rounds else ():
            env = dict(base, ANSIBLE_PIPELINING="true" if setting == "on" else "false")
            if args.rounds:
                report(f"[pipelining {setting}] per task inside one playbook",
                       task_times(env, work, args.rounds, args.processes))
            if args.adhoc_rounds:
                wall, cpu = adhoc_times(env, args.adhoc_rounds, args.processes)
                report(f"[pipelining {setting}] whole ad hoc command, wall time", wall)
                report(f"[pipelining {setting}] whole ad hoc command, CPU time (less sensitive to load)", cpu)
    print(f"\nin-process collector (no Ansible): {inproc_time(20, args.processes) * 1000:.1f} ms median of 20")
    return 0


if __name__ == "__main__":
    sys.exit(main())
