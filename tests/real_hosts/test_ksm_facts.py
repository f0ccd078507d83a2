# Copyright (c) kvmhost.ksm contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""kvmhost.ksm.ksm_facts against real hosts: this machine's kernel KSM with a real merging workload, and VM lab guests.

Fixtures from conftest.py: ``host`` (one run per inventory host; on localhost skip with the reason when KSM cannot be
driven, machine-wide lock, KSM saved first and restored after, also on failure; guests only for tests marked
``every_kernel``) and ``workload`` (localhost: 4 processes x 16 MiB of identical mergeable pages, KSM running fast).
The module also runs in check mode and as a FACTS_MODULES module of gather_facts.
KSM statistics move while ksmd runs, and other processes on the machine may unmerge pages at any time, so every
comparison is made within one sample: sysfs is read before and after the module run, and only a run whose before
and after readings agree is compared (retried a few times otherwise).
"""

import hashlib
import json
import os
import shutil
import subprocess
import time
import typing as t

import jmespath
import pytest
from ansible_collections.kvmhost.ksm.plugins.module_utils import _procfs, _sysfs  # through conftest's loader
from conftest import local_only
from real_host import FACTS, RealHost
from support import collection, tools
from support.collection import REPO

PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
NODE_ROOT = "/sys/devices/system/node"


def facts_of(result: dict[str, t.Any]) -> dict[str, t.Any]:
    assert result["failed"] is False, result.get("msg")
    assert result["changed"] is False
    return result["ansible_facts"]["ksm"]


def sysfs_sample(sysfs: "_sysfs.Sysfs") -> dict[str, t.Any]:
    return {"tunables": sysfs.read_tunables(), "statistics": sysfs.read_statistics()}


def in_one_sample(sysfs, run: t.Callable[[], dict[str, t.Any]], attempts: int = 6):
    """Run the module between two sysfs readings until both readings agree; return (reading, result)."""
    for _attempt in range(attempts):
        before = sysfs_sample(sysfs)
        result = run()
        if sysfs_sample(sysfs) == before:
            return before, result
        time.sleep(1)
    pytest.fail(f"KSM statistics kept moving during {attempts} module runs; cannot compare them")


def merging_pages(pid: int) -> int:
    with open(f"/proc/{pid}/ksm_merging_pages") as f:
        return int(f.read())


def merged_then_stopped(sysfs, w, timeout: float = 90.0) -> None:
    """Wait until every page of the workload is merged, then stop ksmd (run=0): merged pages stay merged."""
    deadline = time.monotonic() + timeout
    while any(merging_pages(pid) < w.pages for pid in w.pids):
        if time.monotonic() > deadline:
            pytest.fail(f"the workload did not merge within {timeout} s: "
                        f"{[merging_pages(pid) for pid in w.pids]} of {w.pages} pages")
        time.sleep(0.2)
    sysfs.write("run", "stopped")


# --- tests ----------------------------------------------------------------------------------------------------------

def test_facts_equal_sysfs_with_a_merging_workload(host, workload):
    w, sysfs = workload, host.sysfs
    merged_then_stopped(sysfs, w)
    sample, result = in_one_sample(sysfs, lambda: host.run(FACTS, processes=100))
    facts = facts_of(result)

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
        assert by_pid[pid]["merged_bytes"] == w.pages * PAGE_SIZE
    pages = [p["merging_pages"] for p in facts["processes"]]
    assert pages == sorted(pages, reverse=True)
    # ksmd and NUMA as the kernel shows them
    assert facts["ksmd"]["pid"] == _procfs.ksmd_pid()
    assert facts["ksmd"]["cpu_seconds"] >= 0
    with open(os.path.join(NODE_ROOT, "has_memory")) as f:
        memory_nodes = f.read().strip()
    assert facts["numa"]["memory_nodes"] == _parse_ranges(memory_nodes)
    assert facts["numa"]["merge_across_nodes"] == tunables.get("merge_across_nodes")
    assert facts["numa"]["recommended_merge_across_nodes"] == (len(facts["numa"]["memory_nodes"]) <= 1)


def _parse_ranges(text: str) -> list[int]:
    nodes: list[int] = []
    for part in filter(None, text.split(",")):
        low, _sep, high = part.partition("-")
        nodes.extend(range(int(low), int(high or low) + 1))
    return nodes


def test_top_n_limits_the_process_list(host, workload):
    sysfs = host.sysfs
    merged_then_stopped(sysfs, workload)
    facts = facts_of(host.run(FACTS, processes=1))
    assert len(facts["processes"]) == 1
    assert facts["processes"][0]["merging_pages"] >= workload.pages
    facts = facts_of(host.run(FACTS, processes=0))
    assert facts["processes"] == []
    assert facts["features"]["process_file"] in ("ksm_stat", "ksm_merging_pages")


def test_changes_nothing_in_normal_and_check_mode(host):
    assert not host.run("ksm", state="running")["failed"]  # a state a facts run must not disturb
    before = host.values()
    normal = facts_of(host.run(FACTS, processes=10))
    check = facts_of(host.run(FACTS, check=True, processes=10))
    assert host.values() == before
    assert normal["tunables"] == check["tunables"]
    assert normal["state"] == check["state"] == "running"


@pytest.mark.every_kernel
def test_features_list_the_kernel_files(host):
    """The facts name every file of the host's KSM directory, and what a kernel lacks is absent, not guessed."""
    facts = host.facts
    listed = host.run("ansible.builtin.find", paths=_sysfs.DEFAULT_ROOT, file_type="file")
    assert not listed["failed"], listed.get("msg")
    files = sorted(os.path.basename(p) for p in jmespath.search("files[].path", listed))
    assert sorted(jmespath.search("features.[knobs, statistics, other_files][]", facts)) == files
    assert facts["kernel_release"] == host.facts["kernel_release"] != ""
    assert sorted(facts["tunables"]) == sorted(set(jmespath.search("features.knobs", facts)) - {"run"})
    assert sorted(facts["statistics"]) == sorted(jmespath.search("features.statistics", facts))
    assert facts["profit_source"] == ("general_profit" if "general_profit" in files else "estimate")
    if host.local:
        assert facts["kernel_release"] == os.uname().release


def test_gather_facts_with_facts_modules(host, tmp_path):
    """FACTS_MODULES is a play setting: this runs ansible-playbook, which pytest-ansible's ad hoc runs cannot."""
    local_only(host, "the play targets this machine")
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
    env = dict(collection.ansible_env(), ANSIBLE_FACTS_MODULES=FACTS)
    playbook_command = tools.find_tool("ansible-playbook")
    if not playbook_command:
        pytest.skip("ansible-playbook is not installed beside this Python or on PATH")
    proc = subprocess.run([playbook_command, "-i", "localhost,", "-c", "local", str(playbook)],
                          env=env, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "ok=2" in proc.stdout and "failed=0" in proc.stdout


# --- services from a real systemd: a booted systemd-nspawn container (tests/hosts) ------------------------------------

HOSTS = os.path.join(REPO, "tests", "hosts")
PROBE = "ksm-facts-probe"


def cached_rootfs() -> str | None:
    """The Debian 12 test rootfs tests/hosts/rootfs would print, if it is already built (never build it here)."""
    with open(os.path.join(HOSTS, "build-rootfs"), "rb") as f:
        key = hashlib.sha256(f.read() + b"\n").hexdigest()[:16]
    cache = os.environ.get("KSM_HOSTS_CACHE", os.path.join(REPO, ".cache", "hosts"))
    path = os.path.join(cache, f"rootfs-{key}")
    return path if os.path.isdir(path) else None


def test_services_from_systemd_in_a_container(host, ansible_adhoc, tmp_path):
    """ksm.service, ksmtuned.service and the ksmtuned process as systemd shows them, before and after installing
    ksmtuned (from the image's offline apt repository). The container drives the host's KSM (under the guard)."""
    local_only(host, "the container runs on this machine and shares its KSM")
    missing = [c for c in ("systemd-nspawn", "socat", "nsenter", "unshare", "ssh") if not shutil.which(c)]
    if missing:
        pytest.skip(f"container test hosts need {', '.join(missing)} (tests/hosts/setup-host installs them)")
    rootfs = cached_rootfs()
    if not rootfs:
        pytest.skip("no cached test rootfs; build it with tests/hosts/rootfs (the molecule step does)")
    nspawn = [os.path.join(HOSTS, "nspawn-hosts")]
    state = os.environ.get("KSM_HOSTS_STATE", os.path.join(REPO, ".cache", "hosts", "run"))
    inventory = tmp_path / "hosts.yml"
    inventory.write_text(json.dumps({"all": {"hosts": {PROBE: {
        "ansible_user": "root",
        "ansible_host_key_checking": False,
        "ansible_python_interpreter": "/usr/bin/python3",
        "ansible_ssh_private_key_file": os.path.join(state, "id_ed25519"),
        "ansible_ssh_common_args": f'-o ProxyCommand="{" ".join(nspawn)} proxy {PROBE}" -o StrictHostKeyChecking=no '
                                   "-o UserKnownHostsFile=/dev/null -o LogLevel=ERROR",
    }}}}))
    probe = RealHost(PROBE, lambda **kw: ansible_adhoc(inventory=str(inventory), **kw), False, {})

    def on_probe(module: str, **args: t.Any) -> dict[str, t.Any]:
        result = probe.run(module, **args)
        assert not result["failed"], f"{module} on {PROBE}: {result.get('msg')}"
        return result

    subprocess.run(nspawn + ["up", PROBE], check=True, timeout=300)
    try:
        facts = on_probe(FACTS, processes=0)["ansible_facts"]["ksm"]
        assert facts["available"] is True and facts["writable"] is True  # /sys/kernel/mm/ksm bound in writable
        services = facts["services"]
        assert services["manager"] == "systemd"
        assert services["units"]["ksm.service"]["load_state"] == "not-found"  # no ksmtuned package yet
        assert "qemu-kvm.service" not in services["units"]
        assert services["ksmtuned_running"] is False

        on_probe("ansible.builtin.apt", name="ksmtuned", state="present")
        facts = on_probe(FACTS, processes=0)["ansible_facts"]["ksm"]
        services = facts["services"]
        expected = {"load_state": "loaded", "active_state": "active", "unit_file_state": "enabled"}
        assert services["units"] == {"ksm.service": expected, "ksmtuned.service": expected}  # Debian enables both
        assert services["ksmtuned_running"] is True and len(services["ksmtuned_pids"]) == 1
        assert facts["state"] == "running"  # ksm.service ran ksmctl start: run=1 on the host's KSM
    finally:
        subprocess.run(nspawn + ["down", PROBE], check=False, timeout=120)


@pytest.mark.every_kernel
def test_memory_verdict_from_the_hosts_meminfo(host):
    """The memory figures are the host's /proc/meminfo, unshare is the saved memory, and the verdict follows the
    documented formula (MemAvailable + SwapFree >= unshare) on the figures it reports; numad and the QEMU guests are
    the host's processes by name."""
    read = host.run("ansible.builtin.shell", cmd="cat /proc/meminfo; echo; pgrep -c -x numad; pgrep -c '^(qemu|kvm$)'")
    assert not read["failed"] or read.get("rc") == 1, read.get("msg")  # pgrep -c exits 1 when it counts 0
    meminfo_text, _sep, counts = read["stdout"].partition("\n\n")
    meminfo = _procfs.parse_meminfo(meminfo_text)
    numad, qemu = (int(n) for n in counts.split())
    facts = host.ksm_facts()
    memory = facts["memory"]
    print(f"{host.name}: {memory['reason']}; guests {memory['guests']}; swap advised {memory['swap_advised_bytes']}")
    assert memory["mem_total_bytes"] == meminfo["MemTotal"]
    assert memory["swap_total_bytes"] == meminfo["SwapTotal"]
    assert abs(memory["mem_available_bytes"] - meminfo["MemAvailable"]) < meminfo["MemTotal"] // 10
    assert memory["unshare_bytes"] == facts["saved_bytes"]
    absorbable = memory["mem_available_bytes"] + memory["swap_free_bytes"]
    assert memory["headroom_bytes"] == absorbable - memory["unshare_bytes"]
    assert memory["unshare_absorbable"] is (absorbable >= memory["unshare_bytes"])
    assert memory["reason"].startswith("unsharing every merged page would need ")
    assert memory["swap_sufficient"] is (memory["swap_total_bytes"] >= memory["swap_advised_bytes"])
    assert abs(memory["guests"]["count"] - qemu) <= 1  # a lab guest may start or stop between the two reads
    assert facts["numa"]["numad_running"] is (numad > 0)
