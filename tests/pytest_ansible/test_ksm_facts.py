# Copyright (c) kvmhost.ksm contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""kvmhost.ksm.ksm_facts against the REAL kernel KSM of this machine, with a real merging workload.

Everything runs under tests/support/ksm_state.py's guard (machine-wide lock, KSM saved first and restored after, also
on failure). The module runs through Ansible (ad hoc, check mode, and as a FACTS_MODULES module of gather_facts).
KSM statistics move while ksmd runs, and other processes on the machine may unmerge pages at any time, so every
comparison is made within one sample: sysfs is read before and after the module run, and only a run whose before
and after readings agree is compared (retried a few times otherwise).
"""

import json
import os
import subprocess
import sys
import time
import typing as t

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(REPO, "tests", "support"))

import ksm_state  # noqa: E402
from ksm_state import _sysfs  # noqa: E402  (the collection's sysfs layer, imported by path)
from merge_workload import Workload  # noqa: E402

PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
NODE_ROOT = "/sys/devices/system/node"

ok, why = ksm_state.writable()
pytestmark = pytest.mark.skipif(not ok, reason=f"the real KSM of this machine cannot be driven: {why}")


# --- running the module through Ansible ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ansible_env(tmp_path_factory) -> t.Dict[str, str]:
    """The environment for ansible commands: the collection on ANSIBLE_COLLECTIONS_PATH, this Python on the host."""
    env = dict(os.environ)
    if not env.get("ANSIBLE_COLLECTIONS_PATH"):
        root = tmp_path_factory.mktemp("collections")
        os.makedirs(root / "ansible_collections" / "kvmhost")
        os.symlink(REPO, root / "ansible_collections" / "kvmhost" / "ksm")
        env["ANSIBLE_COLLECTIONS_PATH"] = str(root)
    env.setdefault("ANSIBLE_PYTHON_INTERPRETER", sys.executable)
    env.setdefault("ANSIBLE_LOCALHOST_WARNING", "false")
    env.setdefault("ANSIBLE_INVENTORY_UNPARSED_WARNING", "false")
    return env


def ansible_bin(name: str) -> str:
    path = os.path.join(os.path.dirname(sys.executable), name)
    return path if os.path.exists(path) else name


def facts_module(env: t.Dict[str, str], check: bool = False, **args: t.Any) -> t.Dict[str, t.Any]:
    """Run kvmhost.ksm.ksm_facts ad hoc on localhost and return its result."""
    cmd = [ansible_bin("ansible"), "localhost", "-m", "kvmhost.ksm.ksm_facts"]
    if args:
        cmd += ["-a", json.dumps(args)]
    if check:
        cmd.append("--check")
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert " => " in proc.stdout, f"no module result from {cmd}: {proc.stdout}{proc.stderr}"
    result = json.loads(proc.stdout.split(" => ", 1)[1])
    assert proc.returncode == 0, f"{cmd} failed: {result}"
    return result


# --- KSM helpers --------------------------------------------------------------------------------------------------

def ksm() -> _sysfs.Sysfs:
    return _sysfs.Sysfs()


def sysfs_sample() -> t.Dict[str, t.Any]:
    k = ksm()
    return {"tunables": k.read_tunables(), "statistics": k.read_statistics()}


def in_one_sample(run: t.Callable[[], t.Dict[str, t.Any]], attempts: int = 6):
    """Run the module between two sysfs readings until both readings agree; return (reading, result)."""
    for _attempt in range(attempts):
        before = sysfs_sample()
        result = run()
        if sysfs_sample() == before:
            return before, result
        time.sleep(1)
    pytest.fail(f"KSM statistics kept moving during {attempts} module runs; cannot compare them")


def merging_pages(pid: int) -> int:
    with open(f"/proc/{pid}/ksm_merging_pages") as f:
        return int(f.read())


def merge(w: Workload, timeout: float = 90.0) -> None:
    """Let ksmd merge the workload fast, wait until every page of it is merged, then stop ksmd (run=0)."""
    k = ksm()
    if k.has("advisor_mode"):
        k.write("advisor_mode", "none")  # pages_to_scan is refused under the advisor
    k.write("pages_to_scan", 5000)
    k.write("sleep_millisecs", 10)
    k.write("run", "running")
    deadline = time.monotonic() + timeout
    while any(merging_pages(pid) < w.pages for pid in w.pids):
        if time.monotonic() > deadline:
            pytest.fail(f"the workload did not merge within {timeout} s: "
                        f"{[merging_pages(pid) for pid in w.pids]} of {w.pages} pages")
        time.sleep(0.2)
    k.write("run", "stopped")  # merged pages stay merged; the numbers hold still (but for other processes)


def ksmd_pid() -> t.Optional[int]:
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    text = f.read()
            except OSError:
                continue
            fields = text.rpartition(")")[2].split()
            if text[text.index("(") + 1:text.rindex(")")] == "ksmd" and fields[1] == "2":
                return int(entry)
    return None


# --- tests ----------------------------------------------------------------------------------------------------------

def test_facts_equal_sysfs_with_a_merging_workload(ansible_env):
    with ksm_state.guarded(), Workload(processes=4, mib=16) as w:
        merge(w)
        sample, result = in_one_sample(lambda: facts_module(ansible_env, processes=100))
        assert result["changed"] is False
        facts = result["ansible_facts"]["ksm"]

        assert facts["available"] is True and facts["reason"] == ""
        assert facts["writable"] is True
        assert facts["page_size"] == PAGE_SIZE
        assert facts["kernel_release"] == os.uname().release
        # every tunable and statistic equals the sysfs file read in the same sample
        tunables = dict(sample["tunables"])
        assert facts["state"] == tunables.pop("run") == "stopped"
        assert facts["tunables"] == tunables
        assert facts["statistics"] == sample["statistics"]
        assert sorted(facts["features"]["knobs"] + facts["features"]["statistics"] + facts["features"]["other_files"]) \
            == sorted(os.listdir(_sysfs.DEFAULT_ROOT))
        # savings: pages_sharing (+ ksm_zero_pages) times the page size
        stats = sample["statistics"]
        saved = stats["pages_sharing"] + stats.get("ksm_zero_pages", 0)
        assert facts["saved_pages"] == saved
        assert facts["saved_bytes"] == saved * PAGE_SIZE
        assert facts["saved_bytes"] >= (len(w.pids) - 1) * w.pages * PAGE_SIZE
        if "general_profit" in stats:
            assert facts["profit_bytes"] == stats["general_profit"]
        assert facts["sharing_ratio"] == round(stats["pages_sharing"] / stats["pages_shared"], 3)
        assert facts["scan_rate"] == 5000 * 1000 / 10
        # the workload's processes, with their merged pages
        by_pid = {p["pid"]: p for p in facts["processes"]}
        for pid in w.pids:
            assert pid in by_pid, f"workload process {pid} missing from {sorted(by_pid)}"
            assert by_pid[pid]["merging_pages"] == w.pages  # ksmd is stopped: all w.pages stay merged
            assert by_pid[pid]["comm"].startswith("python")
            assert by_pid[pid]["guest"] is None
            assert by_pid[pid]["saved_bytes"] >= w.pages * PAGE_SIZE
        pages = [p["merging_pages"] for p in facts["processes"]]
        assert pages == sorted(pages, reverse=True)
        # ksmd and NUMA as the kernel shows them
        assert facts["ksmd"]["pid"] == ksmd_pid()
        assert facts["ksmd"]["cpu_seconds"] >= 0
        with open(os.path.join(NODE_ROOT, "has_memory")) as f:
            memory_nodes = f.read().strip()
        assert facts["numa"]["memory_nodes"] == _parse_ranges(memory_nodes)
        assert facts["numa"]["merge_across_nodes"] == tunables.get("merge_across_nodes")
        assert facts["numa"]["recommended_merge_across_nodes"] == (len(facts["numa"]["memory_nodes"]) <= 1)


def _parse_ranges(text: str) -> t.List[int]:
    nodes: t.List[int] = []
    for part in filter(None, text.split(",")):
        low, _sep, high = part.partition("-")
        nodes.extend(range(int(low), int(high or low) + 1))
    return nodes


def test_top_n_limits_the_process_list(ansible_env):
    with ksm_state.guarded(), Workload(processes=3, mib=8) as w:
        merge(w)
        facts = facts_module(ansible_env, processes=1)["ansible_facts"]["ksm"]
        assert len(facts["processes"]) == 1
        assert facts["processes"][0]["merging_pages"] >= w.pages
        facts = facts_module(ansible_env, processes=0)["ansible_facts"]["ksm"]
        assert facts["processes"] == []
        assert facts["features"]["process_file"] in ("ksm_stat", "ksm_merging_pages")


def test_changes_nothing_in_normal_and_check_mode(ansible_env):
    with ksm_state.guarded():
        k = ksm()
        k.write("run", "running")  # the state a facts run must not disturb
        before = k.read_tunables()
        normal = facts_module(ansible_env)
        check = facts_module(ansible_env, check=True)
        assert k.read_tunables() == before
        assert normal["changed"] is False and check["changed"] is False
        assert normal["ansible_facts"]["ksm"]["tunables"] == check["ansible_facts"]["ksm"]["tunables"]
        assert normal["ansible_facts"]["ksm"]["state"] == "running"


def test_gather_facts_with_facts_modules(ansible_env, tmp_path):
    playbook = tmp_path / "play.yml"
    playbook.write_text(
        "- hosts: localhost\n"
        "  gather_facts: true\n"
        "  module_defaults:\n"
        "    kvmhost.ksm.ksm_facts:\n"
        "      processes: 0\n"
        "  tasks:\n"
        "    - ansible.builtin.assert:\n"
        "        that:\n"
        "          - ansible_facts.ksm.available\n"
        "          - ansible_facts.ksm.state in ['running', 'stopped', 'unmerged']\n"
        "          - ansible_facts.ksm.processes == []\n"
        "          - ansible_facts.ksm.saved_bytes == (ansible_facts.ksm.statistics.pages_sharing\n"
        "            + ansible_facts.ksm.statistics.ksm_zero_pages | default(0)) * ansible_facts.ksm.page_size\n"
        "          - ansible_facts.distribution is not defined\n"  # only ksm_facts ran, not setup
    )
    env = dict(ansible_env, ANSIBLE_FACTS_MODULES="kvmhost.ksm.ksm_facts")
    with ksm_state.guarded():
        proc = subprocess.run([ansible_bin("ansible-playbook"), "-i", "localhost,", "-c", "local", str(playbook)],
                              env=env, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "ok=2" in proc.stdout and "failed=0" in proc.stdout
