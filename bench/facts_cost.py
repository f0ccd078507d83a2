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

Ansible's fixed cost per task (temporary directory, file transfer, several /bin/sh commands) is the same for the
three modules and shrinks with ANSIBLE_PIPELINING=true; both settings are measured by default.

Uses the ansible next to this Python and the collection environment of tests/support/collection.py
(ANSIBLE_COLLECTIONS_PATH from the environment, else this work tree). It only reads KSM, so it needs no guard.
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "tests"))

from support import collection, tools  # noqa: E402  (tests/support)

MODULES = ("ansible.builtin.ping", "kvmhost.ksm.ksm_facts", "ansible.builtin.setup")
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


def rotated(round_no: int) -> list[str]:
    shift = round_no % len(MODULES)
    return list(MODULES[shift:] + MODULES[:shift])


def task_times(env: dict[str, str], work: str, rounds: int, processes: int) -> dict[str, list[float]]:
    """Per-task wall times of the three modules inside one playbook run (plus one warm-up round)."""
    cb_dir = os.path.join(work, "callback_plugins")
    os.makedirs(cb_dir, exist_ok=True)
    with open(os.path.join(cb_dir, "task_times.py"), "w") as f:
        f.write(CALLBACK)
    tasks = []
    for n in range(rounds + 1):
        for module in rotated(n):
            args = {"processes": processes} if module == "kvmhost.ksm.ksm_facts" else {}
            tasks.append({"name": f"{n} {module}", module: args})
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
    result: dict[str, list[float]] = {m: [] for m in MODULES}
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


def payload_times(env: dict[str, str], work: str, rounds: int,
                  processes: int) -> tuple[dict[str, list[float]], ...]:
    """Wall and CPU time of each module's AnsiballZ payload run directly on this host: the managed host's share."""
    remote = os.path.join(work, "remote")
    keep = dict(env, ANSIBLE_KEEP_REMOTE_FILES="1", ANSIBLE_REMOTE_TMP=remote, ANSIBLE_PIPELINING="false")
    payloads = {}
    for module in MODULES:
        cmd = [tool("ansible"), "localhost", "-m", module]
        if module == "kvmhost.ksm.ksm_facts":
            cmd += ["-a", f"processes={processes}"]
        before = set(os.listdir(remote)) if os.path.isdir(remote) else set()
        subprocess.run(cmd, env=keep, check=True, stdout=subprocess.DEVNULL)
        new = sorted(set(os.listdir(remote)) - before)
        files = [os.path.join(remote, d, f) for d in new for f in os.listdir(os.path.join(remote, d))
                 if f.startswith("AnsiballZ_")]
        payloads[module] = files[0]
    python = env["ANSIBLE_PYTHON_INTERPRETER"]
    wall: dict[str, list[float]] = {m: [] for m in MODULES}
    cpu: dict[str, list[float]] = {m: [] for m in MODULES}
    for n in range(rounds + 1):
        for module in rotated(n):
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=9, help="rounds of the playbook measurement")
    parser.add_argument("--adhoc-rounds", type=int, default=5, help="rounds of the ad hoc measurement (0 skips)")
    parser.add_argument("--payload-rounds", type=int, default=15,
                        help="rounds of the module payload measurement (0 skips)")
    parser.add_argument("--processes", type=int, default=10, help="the processes option of ksm_facts")
    parser.add_argument("--pipelining", choices=("off", "on", "both"), default="both",
                        help="ANSIBLE_PIPELINING for the runs (default: both, one after the other)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="facts-cost-") as work:
        base = collection.ansible_env()
        print(f"kernel {os.uname().release}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}, "
              f"Python {sys.version.split()[0]}, ksm_facts processes={args.processes}")
        if args.payload_rounds:
            wall, cpu = payload_times(base, work, args.payload_rounds, args.processes)
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
