# Copyright (c) kvmhost.ksm contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Benchmark: the kvmhost.ksm.ksm role converging on N container hosts at once, against a naive playbook.

For each N in --sizes (default 1,5,10,20), with forks = N, on N Debian 12 systemd-nspawn containers booted from
the molecule scenarios' cached image (tests/hosts/molecule-image, tests/hosts/nspawn-hosts) and reached as molecule
reaches them (ssh through `nspawn-hosts proxy`, the inventory variables of extensions/molecule/inventory), it
measures in one run:

- first:  the role's first converge: the containers are booted fresh for it, so the role has never run on them;
- rerun:  the role again on the same hosts (converged): changed=0 on every host, or the bench fails;
- naive:  a playbook of three ansible.builtin.shell tasks that echo run=1 and the pages_to_scan and
          sleep_millisecs the role left into /sys/kernel/mm/ksm (the same values; shell reports changed);
- tasks per host: from the play recap of the first converge and the re-run (ok + failed, and skipped).

Each repetition (--runs, default 3) boots fresh containers for every N, in the order N = sizes, so the sizes
interleave in time; per N and repetition: boot, an untimed ping (opens the ssh connections that every timed run
then reuses, ControlPersist), first, naive, rerun. Figures are medians over the repetitions; the ratios are
rerun / naive and first / naive (targets at N = 20: 2x and 3x). Wall time of the whole ansible-playbook process.

The containers drive the HOST's KSM, so everything runs inside tests/support/ksm_guard.py's guard (lock, save,
restore); every container is stopped by pid at the end, also on failure, Ctrl-C or SIGTERM.

    sudo bench/fleet                       # N = 1, 5, 10, 20, 3 runs each
    sudo bench/fleet --sizes 1,5 --runs 1  # a quick look
    sudo bench/fleet --profile             # also the slowest tasks of the role (a small timing callback)
    sudo bench/fleet --ref HEAD            # the collection as committed, not the work tree's edits

Writes build/bench/fleet/results.{md,json} and logs/ (every playbook run's output).
"""

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import typing as t

import yaml  # ansible-core's dependency, in the venv

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(REPO, "tests"))

from support import collection, ksm_guard, plots, tools  # noqa: E402  (tests/support)
from support.machine import describe  # noqa: E402

collection.import_collection()

from ansible_collections.kvmhost.ksm.plugins.module_utils import _procfs  # noqa: E402

HOSTS = os.path.join(REPO, "tests", "hosts")
NSPAWN_HOSTS = os.path.join(HOSTS, "nspawn-hosts")
MOLECULE_INVENTORY = os.path.join(REPO, "extensions", "molecule", "inventory", "hosts.yml")
KSM = "/sys/kernel/mm/ksm"
RECAP = re.compile(r"^(\S+)\s*: ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)\s+skipped=(\d+)"
                   r"\s+rescued=(\d+)\s+ignored=(\d+)", re.M)
INOTIFY_PER_CONTAINER = 5  # measured: systemd 3, dbus-daemon 1, systemd-logind 1 (tests/hosts/nspawn_hosts.py)
TARGETS = {"rerun": 2.0, "first": 3.0}

# A timing callback for --profile: seconds per task name summed over the run (tasks run host-parallel, so this is
# the wall time from one task's start to the next one's).
PROFILE_CALLBACK = '''
import json, os, time
from ansible.plugins.callback import CallbackBase

class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "fleet_profile"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self):
        super().__init__()
        self.times, self.current, self.start = {}, None, None

    def _close(self):
        if self.current is not None:
            self.times[self.current] = self.times.get(self.current, 0.0) + time.monotonic() - self.start

    def v2_playbook_on_task_start(self, task, is_conditional):
        self._close()
        self.current, self.start = task.get_name(), time.monotonic()

    v2_playbook_on_handler_task_start = lambda self, task: self.v2_playbook_on_task_start(task, False)

    def v2_playbook_on_stats(self, stats):
        self._close()
        with open(os.environ["FLEET_PROFILE_OUT"], "w") as f:
            json.dump(self.times, f)
'''


class Fail(Exception):
    """An expected failure of the bench: one sentence for the user."""


def playbook_tool() -> str:
    found = tools.find_tool("ansible-playbook")
    if not found:
        raise Fail(f"ansible-playbook not found beside {sys.executable} or on PATH; run ./scripts/bootstrap --main.")
    return found


def host_names(n: int) -> list[str]:
    return [f"ksm-fleet-{i:02d}" for i in range(1, n + 1)]


def write_inventory(path: str, names: list[str], state: str) -> None:
    """The fleet group with the molecule inventory's connection variables (its `nspawn` group), the two paths that
    molecule derives from its inventory's folder given absolutely."""
    with open(MOLECULE_INVENTORY) as f:
        nspawn_vars = dict(yaml.safe_load(f)["all"]["children"]["nspawn"]["vars"])
    nspawn_vars["__ksm_hosts_dir"] = HOSTS
    nspawn_vars["__ksm_hosts_state"] = state
    inventory = {"all": {"children": {"fleet": {"vars": nspawn_vars, "hosts": {n: None for n in names}}}}}
    with open(path, "w") as f:
        yaml.safe_dump(inventory, f, sort_keys=False)


def write_config(path: str, forks: int, workdir: str, profile: bool) -> None:
    """ansible.cfg as extensions/molecule/config.yml sets it, forks = N."""
    lines = ["[defaults]", "host_key_checking = False", "interpreter_python = auto_silent", f"forks = {forks}",
             "retry_files_enabled = False"]
    if profile:
        lines += [f"callback_plugins = {workdir}/callbacks", "callbacks_enabled = fleet_profile"]
    lines += ["[ssh_connection]", "pipelining = True"]
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def write_playbook(path: str, play: dict[str, t.Any]) -> str:
    with open(path, "w") as f:
        json.dump([dict(play, hosts="fleet", gather_facts=False)], f)  # JSON is YAML
    return path


def role_playbook(workdir: str) -> str:
    """The role with its defaults, as the molecule scenarios converge it."""
    return write_playbook(os.path.join(workdir, "role.yml"),
                          {"name": "Converge the role", "roles": [{"role": "kvmhost.ksm.ksm"}]})


def naive_playbook(workdir: str, values: dict[str, str]) -> str:
    """Three shell tasks writing the values the role left."""
    return write_playbook(os.path.join(workdir, "naive.yml"), {"name": "Set KSM by hand", "tasks": [
        {"name": f"Write {knob}", "ansible.builtin.shell": f"echo {values[knob]} > {KSM}/{knob}"}
        for knob in ("run", "pages_to_scan", "sleep_millisecs")]})


def ping_playbook(workdir: str) -> str:
    return write_playbook(os.path.join(workdir, "ping.yml"), {"name": "Reach the hosts", "tasks": [
        {"name": "Wait for ssh", "ansible.builtin.wait_for_connection": {"timeout": 60}}]})


def nspawn(args: list[str], env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen([NSPAWN_HOSTS] + args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


def finish(proc: subprocess.Popen) -> tuple[int, str]:
    out = proc.communicate()[0]
    return proc.returncode, out


def in_batches(names: list[str], parallel: int) -> list[list[str]]:
    return [names[i::parallel] for i in range(min(parallel, len(names)))]


def boot(names: list[str], env: dict[str, str], parallel: int) -> float:
    """Boot the containers with `parallel` nspawn-hosts processes at once; seconds until all are running."""
    start = time.perf_counter()
    batches = in_batches(names, parallel)
    for attempt in (1, 2):
        procs = [(batch, nspawn(["up"] + batch, env)) for batch in batches]
        outputs = [(batch, *finish(p)) for batch, p in procs]
        batches = [batch for batch, rc, _out in outputs if rc != 0]  # nspawn-hosts stopped a failed batch
        if not batches:
            return time.perf_counter() - start
        why = next(out for _batch, rc, out in outputs if rc != 0).strip()
        if attempt == 1:
            # Under heavy load a oneshot unit (systemd-update-utmp) can fail its boot: once more, as one batch.
            print(f"boot of {' '.join(sum(batches, []))} failed once, retrying: {why.splitlines()[0]}", flush=True)
            batches = [sum(batches, [])]
    raise Fail(f"booting the containers failed twice: {why}")


def stop(names: list[str], env: dict[str, str], parallel: int) -> None:
    procs = [nspawn(["down"] + batch, env) for batch in in_batches(names, parallel)]
    for p in procs:
        p.wait()


def play(argv: list[str], env: dict[str, str], log: str) -> tuple[float, dict[str, list[int]]]:
    """Run ansible-playbook; wall seconds and the recap per host (ok, changed, unreachable, failed, skipped,
    rescued, ignored). A failed run is a Fail naming its log."""
    start = time.perf_counter()
    proc = subprocess.run(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, check=False)
    elapsed = time.perf_counter() - start
    with open(log, "w") as f:
        f.write(proc.stdout)
    recap = {m.group(1): [int(x) for x in m.groups()[1:]] for m in RECAP.finditer(proc.stdout)}
    if proc.returncode != 0:
        raise Fail(f"{os.path.basename(argv[-1])} failed (rc {proc.returncode}); its output is in {log}.")
    return elapsed, recap


def read_values() -> dict[str, str]:
    values = {}
    for knob in ("run", "pages_to_scan", "sleep_millisecs"):
        with open(os.path.join(KSM, knob)) as f:
            values[knob] = f.read().strip()
    return values


def one_size(n: int, rep: int, ctx: dict[str, t.Any]) -> dict[str, t.Any]:
    """Boot n fresh containers, measure first, naive and rerun on them, stop them."""
    names = host_names(n)
    workdir, env, out = ctx["workdir"], ctx["env"], ctx["out"]
    inventory = os.path.join(workdir, f"hosts-{n}.yml")
    write_inventory(inventory, names, ctx["state"])
    env = dict(env, ANSIBLE_CONFIG=os.path.join(workdir, f"ansible-{n}.cfg"))
    write_config(env["ANSIBLE_CONFIG"], n, workdir, ctx["profile"])
    row: dict[str, t.Any] = {"n": n, "rep": rep}
    try:
        row["boot"] = boot(names, env, ctx["parallel"])
        base = [ctx["ansible_playbook"], "-i", inventory]
        play(base + [ctx["playbooks"]["ping"]], env, os.path.join(out, "logs", f"ping-N{n}-r{rep}.log"))
        env["FLEET_PROFILE_OUT"] = os.path.join(out, "logs", f"profile-first-N{n}-r{rep}.json")
        row["first"], recap = play(base + [ctx["playbooks"]["role"]], env,
                                   os.path.join(out, "logs", f"first-N{n}-r{rep}.log"))
        row["tasks_first"] = tasks_per_host(recap, names, "first converge")
        values = read_values()
        row["values"] = values
        log = os.path.join(out, "logs", f"naive-N{n}-r{rep}.log")
        env["FLEET_PROFILE_OUT"] = os.path.join(out, "logs", f"profile-naive-N{n}-r{rep}.json")
        row["naive"], _recap = play(base + [naive_playbook(workdir, values)], env, log)
        env["FLEET_PROFILE_OUT"] = os.path.join(out, "logs", f"profile-rerun-N{n}-r{rep}.json")
        log = os.path.join(out, "logs", f"rerun-N{n}-r{rep}.log")
        row["rerun"], recap = play(base + [ctx["playbooks"]["role"]], env, log)
        row["tasks_rerun"] = tasks_per_host(recap, names, "re-run")
        changed = sorted(h for h in names if recap[h][1] != 0)
        if changed:
            raise Fail(f"the converged re-run on {n} hosts changed something on {', '.join(changed)} "
                       f"(changed={recap[changed[0]][1]} on {changed[0]}); see {log}.")
    finally:
        stop(names, env, ctx["parallel"])
    return row


def tasks_per_host(recap: dict[str, list[int]], names: list[str], what: str) -> tuple[int, int]:
    """(ok + failed, skipped), the same on every host, else the most frequent pair."""
    missing = [h for h in names if h not in recap]
    if missing:
        raise Fail(f"the {what} printed no recap line for {', '.join(missing)}.")
    pairs = [(recap[h][0] + recap[h][3], recap[h][4]) for h in names]
    return max(set(pairs), key=pairs.count)


def summarise(rows: list[dict[str, t.Any]], sizes: list[int]) -> list[dict[str, t.Any]]:
    table = []
    for n in sizes:
        mine = [r for r in rows if r["n"] == n]
        if not mine:
            continue
        med = {k: statistics.median(r[k] for r in mine) for k in ("boot", "first", "rerun", "naive")}
        table.append(dict(med, n=n, runs=len(mine), tasks_first=list(mine[0]["tasks_first"]),
                          tasks_rerun=list(mine[0]["tasks_rerun"]),
                          rerun_ratio=med["rerun"] / med["naive"], first_ratio=med["first"] / med["naive"],
                          values=mine[0]["values"]))
    return table


def markdown(table: list[dict[str, t.Any]], machine: dict[str, t.Any]) -> str:
    lines = [f"Machine: {machine['cpu']}, {machine['cores']} cores, {machine['ram_gib']} GiB, kernel "
             f"{machine['kernel']}, ansible-core {machine['ansible']}, load before the run {machine['load']}; "
             f"{machine['date']}.", "",
             "| N (forks) | runs | first converge | converged re-run | naive (3 shell tasks) | re-run / naive "
             "| first / naive | tasks/host first (skipped) | tasks/host re-run (skipped) | boot |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in table:
        lines.append(f"| {r['n']} | {r['runs']} | {r['first']:.1f} s | {r['rerun']:.1f} s | {r['naive']:.1f} s "
                     f"| **{r['rerun_ratio']:.2f}x** | **{r['first_ratio']:.2f}x** "
                     f"| {r['tasks_first'][0]} ({r['tasks_first'][1]}) | {r['tasks_rerun'][0]} "
                     f"({r['tasks_rerun'][1]}) | {r['boot']:.1f} s |")
    top = max(table, key=lambda r: r["n"])
    lines.append("")
    for kind, limit in TARGETS.items():
        ratio = top[f"{kind}_ratio"]
        verdict = "met" if ratio <= limit else "MISSED"
        lines.append(f"- {kind} / naive at N = {top['n']}: {ratio:.2f}x (target <= {limit:g}x): {verdict}")
    lines.append(f"- values the naive playbook wrote: {json.dumps(top['values'], sort_keys=True)}")
    return "\n".join(lines) + "\n"


def machine_info() -> dict[str, t.Any]:
    version = subprocess.run([playbook_tool(), "--version"], capture_output=True, text=True, check=False).stdout
    match = re.search(r"core ([\d.]+)", version)
    return dict(describe(), ansible=match.group(1) if match else "?", load=round(os.getloadavg()[0], 2),
                date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))


def preflight(sizes: list[int]) -> None:
    if os.geteuid() != 0:
        raise Fail("bench/fleet boots systemd-nspawn containers that share this machine's KSM; run it as root.")
    if not os.path.isfile(os.path.join(KSM, "run")):
        raise Fail(f"{KSM}/run does not exist: this kernel has no KSM for the containers to share.")
    avail = (_procfs.mem_available() or 0) // (1024 * 1024)
    need = 80 * max(sizes) + 512  # a booted container with sshd uses about 30-60 MiB
    if avail < need:
        raise Fail(f"only {avail} MiB of memory are available, {need} MiB are needed for {max(sizes)} containers; "
                   "pass smaller --sizes.")
    with open("/proc/sys/fs/inotify/max_user_instances") as f:
        limit = int(f.read())
    used = inotify_instances()
    need = INOTIFY_PER_CONTAINER * max(sizes)
    if used + need > limit:
        raise Fail(f"{max(sizes)} containers need about {need} inotify instances of root (their systemd, dbus and "
                   f"logind), and fs.inotify.max_user_instances is {limit} with {used} in use; pass smaller --sizes "
                   f"or raise that limit to {used + need + 16} or more.")


def inotify_instances() -> int:
    """inotify instances open now (every process here runs as root: the limit is per user)."""
    count = 0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                count += os.readlink(f"/proc/{pid}/fd/{fd}") == "anon_inode:inotify"
            except OSError:
                pass
    return count


def export(ref: str, workdir: str) -> str:
    """A collections folder holding the collection as committed at ref (git archive), instead of the work tree."""
    top = os.path.join(workdir, "collections")
    tree = os.path.join(top, "ansible_collections", "kvmhost", "ksm")
    os.makedirs(tree)
    archive = subprocess.run(["git", "-C", REPO, "archive", ref], stdout=subprocess.PIPE, check=False)
    if archive.returncode != 0:
        raise Fail(f"git archive {ref} failed in {REPO}; pass a commit that exists.")
    subprocess.run(["tar", "-x", "-C", tree], input=archive.stdout, check=True)
    return top


def run(args: argparse.Namespace) -> int:
    sizes = [int(s) for s in args.sizes.split(",")]
    preflight(sizes)
    os.makedirs(os.path.join(args.out, "logs"), exist_ok=True)
    image = subprocess.run([os.path.join(HOSTS, "molecule-image")], env=dict(os.environ, MOLECULE_DISTRO="debian12"),
                           stdout=subprocess.PIPE, text=True, check=False)
    if image.returncode != 0:
        raise Fail("building or finding the molecule test image failed (tests/hosts/molecule-image; output above).")
    subprocess.run([os.path.join(HOSTS, "setup-host")], check=True)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="kvmhost-fleet-", dir=os.path.join(REPO, ".cache")) as workdir:
        state = os.path.join(workdir, "state")
        env = collection.ansible_env(base=dict(os.environ, ANSIBLE_COLLECTIONS_PATH=export(args.ref, workdir))
                                     if args.ref else None)
        env.update(KSM_HOSTS_STATE=state, KSM_HOSTS_ROOTFS=image.stdout.strip(), ANSIBLE_FORCE_COLOR="false")
        subprocess.run([NSPAWN_HOSTS, "key"], env=env, check=True, stdout=subprocess.DEVNULL)
        os.makedirs(os.path.join(workdir, "callbacks"))
        with open(os.path.join(workdir, "callbacks", "fleet_profile.py"), "w") as f:
            f.write(PROFILE_CALLBACK)
        ctx = {"workdir": workdir, "env": env, "out": args.out, "state": state, "profile": args.profile,
               "parallel": args.parallel, "ansible_playbook": playbook_tool(),
               "playbooks": {"role": role_playbook(workdir), "ping": ping_playbook(workdir)}}
        machine = machine_info()
        rows = []
        try:
            with ksm_guard.guarded():
                for rep in range(1, args.runs + 1):
                    for n in sizes:
                        row = one_size(n, rep, ctx)
                        rows.append(row)
                        with open(os.path.join(args.out, "rows.json"), "w") as f:  # so far, in case of a failure
                            json.dump(rows, f, indent=1)
                        print(f"run {rep} N={n}: boot {row['boot']:.1f} s, first {row['first']:.1f} s, naive "
                              f"{row['naive']:.1f} s, rerun {row['rerun']:.1f} s (changed=0 on every host)",
                              flush=True)
        finally:
            subprocess.run([NSPAWN_HOSTS, "down"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           check=False)
    table = summarise(rows, sizes)
    text = markdown(table, machine)
    duration = time.perf_counter() - started
    text += f"- whole run: {duration:.0f} s ({args.runs} runs of N = {args.sizes})\n"
    with open(os.path.join(args.out, "results.md"), "w") as f:
        f.write(text)
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump({"machine": machine, "args": vars(args), "rows": rows, "table": table, "seconds": duration}, f,
                  indent=1)
    print(text)
    if args.profile:
        print_profile(args.out, rows)
    plot(table, machine, os.path.join(args.out, "results.png"))
    print(f"written: {args.out}/results.md, results.json, results.png, logs/")
    return 0


def plot(table: list[dict[str, t.Any]], machine: dict[str, t.Any], out: str) -> None:
    """Wall time and ratio against N (bench/lines_plot.py in the bench venv)."""
    ns = [row["n"] for row in table]
    times = [{"label": label, "x": ns, "y": [row[key] for row in table]}
             for key, label in (("first", "first converge"), ("rerun", "converged re-run"),
                                ("naive", "naive (3 shell tasks)"))]
    ratios = [{"label": f"{key} / naive", "x": ns, "y": [row[f"{key}_ratio"] for row in table]} for key in TARGETS]
    plots.lines({"title": f"kvmhost.ksm role across N hosts; {machine['cpu']}, {machine['cores']} cores, "
                          f"ansible-core {machine['ansible']}",
                 "panels": [{"title": "wall time", "xlabel": "hosts (forks = N)", "ylabel": "seconds",
                             "series": times},
                            {"title": "ratio to the naive playbook", "xlabel": "hosts (forks = N)",
                             "ylabel": "x naive", "series": ratios,
                             "hlines": [{"y": v, "label": f"target {k} {v:g}x"} for k, v in TARGETS.items()]}]},
                out)


def print_profile(out: str, rows: list[dict[str, t.Any]]) -> None:
    """The slowest tasks of the largest N's last first converge and re-run."""
    last = rows[-1]
    for kind in ("first", "rerun", "naive"):
        path = os.path.join(out, "logs", f"profile-{kind}-N{last['n']}-r{last['rep']}.json")
        if not os.path.exists(path):
            continue
        with open(path) as f:
            times = json.load(f)
        total = sum(times.values())
        print(f"slowest tasks of the {kind} run, N={last['n']} ({len(times)} task names, {total:.1f} s):")
        for name, secs in sorted(times.items(), key=lambda kv: -kv[1])[:12]:
            print(f"  {secs:6.2f} s  {name}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1,5,10,20", help="host counts N, comma-separated (default 1,5,10,20)")
    parser.add_argument("--runs", type=int, default=3, help="repetitions per N, fresh containers each (default 3)")
    parser.add_argument("--parallel", type=int, default=4, help="nspawn-hosts processes booting at once (default 4)")
    parser.add_argument("--profile", action="store_true", help="time every task and print the slowest")
    parser.add_argument("--ref", help="measure the collection as committed at this git revision (default: the "
                        "work tree as it is)")
    parser.add_argument("--out", default=os.path.join(REPO, "build", "bench", "fleet"))
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # SIGTERM unwinds like Ctrl-C: containers stopped
    try:
        return run(args)
    except Fail as exc:
        print(f"bench/fleet: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("bench/fleet: interrupted; the containers were stopped.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
