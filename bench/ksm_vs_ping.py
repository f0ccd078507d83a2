# Copyright (c) kvmhost.ksm contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Benchmark: a converged kvmhost.ksm.ksm run (every knob set, nothing changes) against ansible.builtin.ping.

Both run on localhost in the same session, interleaved (ping, ksm, ping, ksm, ...), so load from other work hits
both alike. Two shapes are measured and reported as the ratio of medians (target: ksm <= 1.3 x ping):

- adhoc:    one `ansible localhost -m <module>` process per run (what an operator types);
- playbook: one playbook run of --tasks tasks of the same module (per-task cost, less process start-up).

Every knob this kernel has is passed with the value it already holds (pages_to_scan only while advisor_mode is
none), so the module reads, validates and compares everything and writes nothing; a warm-up run checks that it
reports changed=false. Real KSM is used under the test guard (lock, save, restore); where it is not writable,
a fake tree in a temporary directory stands in (printed).

    python3 bench/ksm_vs_ping.py [--runs 7] [--tasks 10]

Run it with the project's venv Python (it uses the `ansible` commands beside that Python, or on PATH).
Not a test: it prints figures and never fails on them.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import typing as t

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(REPO, "tests"))

from support import collection, ksm_guard, tools  # noqa: E402  (tests/support)

collection.import_collection()

from ansible_collections.kvmhost.ksm.plugins.module_utils import _plan, _sysfs  # noqa: E402


def tool(name: str) -> str:
    found = tools.find_tool(name)
    if not found:
        sys.exit(f"{name} not found beside {sys.executable} or on PATH")
    return found


def converged_args(root: str) -> dict[str, t.Any]:
    """Every knob of this kernel at the value it holds now (state for run)."""
    values = _plan.restorable(_sysfs.Sysfs(root).read_tunables())  # no pages_to_scan under the advisor
    args = dict(("state" if k == "run" else k, v) for k, v in values.items())
    args["sysfs_path"] = root
    return args


def timed(argv: list[str], env: dict[str, str]) -> tuple[float, str]:
    start = time.perf_counter()
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"{' '.join(argv)} failed (rc {proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return elapsed, proc.stdout


def playbook(path: str, module: str, args: dict[str, t.Any], tasks: int) -> str:
    play = [{"hosts": "localhost", "gather_facts": False,
             "tasks": [{"name": f"{module} {i}", module: args} for i in range(tasks)]}]
    with open(path, "w") as f:
        json.dump(play, f)  # JSON is YAML
    return path


def measure(runs: int, tasks: int, root: str, workdir: str) -> dict[str, tuple[float, float]]:
    env = collection.ansible_env()
    args = converged_args(root)
    adhoc = {
        "ping": [tool("ansible"), "localhost", "-m", "ansible.builtin.ping"],
        "ksm": [tool("ansible"), "localhost", "-m", "kvmhost.ksm.ksm", "-a", json.dumps(args)],
    }
    books = {
        "ping": [tool("ansible-playbook"), "-i", "localhost,", "-c", "local",
                 playbook(os.path.join(workdir, "ping.yml"), "ansible.builtin.ping", {}, tasks)],
        "ksm": [tool("ansible-playbook"), "-i", "localhost,", "-c", "local",
                playbook(os.path.join(workdir, "ksm.yml"), "kvmhost.ksm.ksm", args, tasks)],
    }
    _elapsed, out = timed(adhoc["ksm"], env)  # warm-up, and proof that the run is converged
    if "CHANGED" in out or '"changed": true' in out:
        sys.exit(f"the ksm run is not converged:\n{out}")
    print(f"ksm arguments ({len(args) - 1} knobs): {json.dumps(args, sort_keys=True)}")
    results = {}
    for shape, commands in (("adhoc", adhoc), ("playbook", books)):
        times: dict[str, list[float]] = {"ping": [], "ksm": []}
        for _run in range(runs):
            for name in ("ping", "ksm"):
                times[name].append(timed(commands[name], env)[0])
        results[shape] = (statistics.median(times["ping"]), statistics.median(times["ksm"]))
    return results


def report(results: dict[str, tuple[float, float]], runs: int, tasks: int) -> None:
    for shape, (ping, ksm) in results.items():
        unit = f"{tasks} tasks" if shape == "playbook" else "1 run"
        print(f"{shape:9} median of {runs} ({unit}): ping {ping:.3f} s, ksm {ksm:.3f} s, ratio ksm/ping "
              f"{ksm / ping:.2f}x (target <= 1.3x)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=7, help="runs of each command per shape (default 7)")
    parser.add_argument("--tasks", type=int, default=10, help="tasks per playbook (default 10)")
    options = parser.parse_args()
    ok, why = ksm_guard.writable()
    with tempfile.TemporaryDirectory(prefix="kvmhost-bench-") as workdir:
        if ok:
            print("using the real KSM of this machine under the test guard")
            with ksm_guard.guarded():
                results = measure(options.runs, options.tasks, _sysfs.DEFAULT_ROOT, workdir)
        else:
            print(f"real KSM not usable ({why}); using a fake tree")
            root = os.path.join(workdir, "ksm")
            os.makedirs(root)
            for knob in _sysfs.TUNABLES:
                with open(os.path.join(root, knob.name), "w") as f:
                    f.write({"run": "0", "advisor_mode": "[none] scan-time"}.get(knob.name, str(max(knob.minimum, 2))))
            for name in _sysfs.STATISTIC_NAMES:
                with open(os.path.join(root, name), "w") as f:
                    f.write("0")
            results = measure(options.runs, options.tasks, root, workdir)
    report(results, options.runs, options.tasks)
    return 0


if __name__ == "__main__":
    sys.exit(main())
