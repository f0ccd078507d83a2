# Copyright (c) kvmhost.ksm contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The ksm_facts collectors on fake trees: kernel layouts 4.18, 6.1, 6.8+, non-NUMA, no KSM, fake /proc and nodes.

The real kernel is covered by tests/real_hosts/test_ksm_facts.py; these cover what this machine cannot show.
"""

import os

import pytest

from ansible_collections.kvmhost.ksm.plugins.module_utils import _facts, _managers, _procfs
from ansible_collections.kvmhost.ksm.plugins.module_utils._sysfs import KNOBS, STATISTIC_NAMES

from ansible_collections.kvmhost.ksm.tests.unit.fake_host import OBSERVED_6_18, ksm_stat_text, make_nodes, make_proc


def collect(sysfs, proc, nodes, **kwargs):
    kwargs.setdefault("systemd_root", os.path.join(str(proc), "no-systemd"))
    kwargs.setdefault("page_size", 4096)
    kwargs.setdefault("clock_ticks", 100)
    kwargs.setdefault("euid", 0)
    kwargs.setdefault("release", "6.8.0-test")
    kwargs.setdefault("bits", 64)
    return _facts.collect(sysfs_root=sysfs, proc_root=proc, node_root=nodes, **kwargs)


@pytest.fixture
def fake_proc(tmp_path):
    def build(processes, ksm_file="ksm_stat"):
        return make_proc(tmp_path / "proc", processes, ksm_file)
    return build


@pytest.fixture
def node_tree(tmp_path):
    def build(distances, memory=None):
        return make_nodes(tmp_path / "node", distances, memory)
    return build


# --- parsers ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, nodes", [
    ("0\n", [0]),
    ("0-1\n", [0, 1]),
    ("0-1,3,5-6\n", [0, 1, 3, 5, 6]),
    ("\n", []),
])
def test_parse_range_list(text, nodes):
    assert _facts.parse_range_list(text) == nodes


@pytest.mark.parametrize("argv, guest", [
    (["/usr/bin/qemu-system-x86_64", "-name", "guest=web1,debug-threads=on", "-m", "1024"], "web1"),
    (["qemu-kvm", "-name", "web2"], "web2"),
    (["qemu-kvm", "-name", "web3,process=qemu:web3"], "web3"),
    (["qemu-kvm", "-name", "debug-threads=on,guest=web4"], "web4"),
    (["qemu-kvm", "--name", "guest=a,,b,debug-threads=on"], "a,b"),  # ',,' escapes a comma
    (["qemu-kvm", "-name", "process=qemu:x"], None),
    (["qemu-kvm", "-m", "512"], None),
    (["qemu-kvm", "-name"], None),
    ([], None),
])
def test_qemu_guest_name(argv, guest):
    assert _facts.qemu_guest_name(argv) == guest


@pytest.mark.parametrize("comm, argv, expected", [
    ("qemu-system-x86", [], True),
    ("qemu-kvm", [], True),
    ("qemu:web1", [], True),
    ("kvm", [], True),  # Proxmox
    ("CPU 0/KVM", ["/usr/libexec/qemu-kvm", "-name", "x"], True),
    ("python3", ["python3", "-name", "x"], False),
])
def test_is_qemu(comm, argv, expected):
    assert _facts.is_qemu(comm, argv) is expected


def test_parse_systemctl_show():
    text = ("Id=ksm.service\nLoadState=loaded\nActiveState=active\nUnitFileState=enabled\n\n"
            "Id=ksmtuned.service\nLoadState=not-found\nActiveState=inactive\nUnitFileState=\n")
    assert _facts.parse_systemctl_show(text) == {
        "ksm.service": {"Id": "ksm.service", "LoadState": "loaded", "ActiveState": "active",
                        "UnitFileState": "enabled"},
        "ksmtuned.service": {"Id": "ksmtuned.service", "LoadState": "not-found", "ActiveState": "inactive",
                             "UnitFileState": ""},
    }


@pytest.mark.parametrize("machine, bits", [
    ("x86_64", 64), ("aarch64", 64), ("ppc64le", 64), ("s390x", 64), ("riscv64", 64), ("i686", 32), ("armv7l", 32),
])
def test_word_bits(machine, bits):
    assert _facts.word_bits(machine) == bits


# --- derived figures ----------------------------------------------------------------------------------------------

def test_derive_with_general_profit_and_zero_pages():
    stats = {"pages_shared": 100, "pages_sharing": 300, "pages_unshared": 30, "pages_volatile": 5,
             "ksm_zero_pages": 20, "general_profit": 1000000}
    d = _facts.derive({"pages_to_scan": 100, "sleep_millisecs": 20}, stats, 4096)
    assert d["saved_pages"] == 320  # pages_sharing + ksm_zero_pages, never pages_shared
    assert d["saved_bytes"] == 320 * 4096
    assert d["rmap_items"] == 435
    assert (d["profit_bytes"], d["profit_source"]) == (1000000, "general_profit")
    assert d["sharing_ratio"] == 3.0
    assert d["unshared_ratio"] == 0.1
    assert d["scan_rate"] == 5000.0
    assert d["full_scan_seconds"] == 0.087  # 435 / 5000, to the millisecond


@pytest.mark.parametrize("bits, size", [(64, 64), (32, 32)])
def test_derive_estimates_profit_without_general_profit(bits, size):
    stats = {"pages_shared": 10, "pages_sharing": 40, "pages_unshared": 5, "pages_volatile": 0}
    d = _facts.derive({"pages_to_scan": 100, "sleep_millisecs": 20}, stats, 65536, bits)
    assert d["saved_bytes"] == 40 * 65536  # the host's page size, not 4096
    assert (d["profit_bytes"], d["profit_source"]) == (40 * 65536 - 55 * size, "estimate")


def test_derive_negative_general_profit_is_kept():
    d = _facts.derive({}, {"pages_shared": 0, "pages_sharing": 0, "general_profit": -8192}, 4096)
    assert d["profit_bytes"] == -8192


def test_derive_undefined_ratios_and_rates_are_none():
    d = _facts.derive({"pages_to_scan": 100, "sleep_millisecs": 0}, {"pages_shared": 0, "pages_sharing": 0}, 4096)
    assert d["sharing_ratio"] is None
    assert d["unshared_ratio"] is None
    assert d["scan_rate"] is None  # sleep_millisecs 0: CPU-bound, no nominal rate
    assert d["full_scan_seconds"] is None
    d = _facts.derive({"pages_to_scan": 0, "sleep_millisecs": 20}, {"pages_shared": 1, "pages_sharing": 0}, 4096)
    assert d["scan_rate"] == 0.0
    assert d["full_scan_seconds"] is None


# --- collect on kernel layouts ------------------------------------------------------------------------------------

@pytest.mark.parametrize("layout, count", [("4.18", 14), ("6.1", 14), ("6.8", 24)])
def test_collect_reports_every_file_of_the_layout_typed(ksm_tree, fake_proc, node_tree, layout, count):
    sysfs = ksm_tree(layout, run="running", pages_to_scan=1250, pages_shared=10, pages_sharing=30)
    facts = collect(sysfs, fake_proc([]), node_tree([[10]]))
    assert facts["available"] is True and facts["reason"] == ""
    assert facts["state"] == "running"
    files = sorted(os.listdir(sysfs))
    assert len(files) == count
    assert sorted(facts["features"]["knobs"] + facts["features"]["statistics"]) == files
    assert facts["features"]["other_files"] == []
    assert sorted(facts["tunables"]) == sorted(n for n in files if n in KNOBS and n != "run")
    assert sorted(facts["statistics"]) == sorted(n for n in files if n in STATISTIC_NAMES)
    assert facts["tunables"]["pages_to_scan"] == 1250
    assert facts["tunables"]["merge_across_nodes"] is True
    assert facts["tunables"]["use_zero_pages"] is False
    assert facts["statistics"]["pages_sharing"] == 30
    assert facts["saved_bytes"] == 30 * 4096
    if layout == "6.8":
        assert facts["tunables"]["advisor_mode"] == "none"
        assert facts["tunables"]["smart_scan"] is True
        assert facts["profit_source"] == "general_profit"
    else:
        assert "advisor_mode" not in facts["tunables"] and "general_profit" not in facts["statistics"]
        assert facts["profit_source"] == "estimate"
        assert facts["profit_bytes"] == 30 * 4096 - 40 * 64


def test_collect_advisor_mode_is_a_plain_word(ksm_tree, fake_proc, node_tree):
    facts = collect(ksm_tree("6.8", advisor_mode="scan-time"), fake_proc([]), node_tree([[10]]))
    assert facts["tunables"]["advisor_mode"] == "scan-time"


def test_collect_run_masks_the_offline_bit(ksm_tree, fake_proc, node_tree):
    facts = collect(ksm_tree("6.8", run="17"), fake_proc([]), node_tree([[10]]))  # 16 = memory offlining
    assert facts["state"] == "running"


def test_collect_signed_statistics(ksm_tree, fake_proc, node_tree):
    facts = collect(ksm_tree("6.8", general_profit="-4096", ksm_zero_pages="3"), fake_proc([]), node_tree([[10]]))
    assert facts["statistics"]["general_profit"] == -4096
    assert facts["profit_bytes"] == -4096
    assert facts["saved_pages"] == 3


def test_collect_non_numa_kernel(ksm_tree, fake_proc, tmp_path):
    facts = collect(ksm_tree("6.8", numa=False), fake_proc([]), str(tmp_path / "no-node-dir"))
    assert "merge_across_nodes" not in facts["tunables"]
    assert "merge_across_nodes" not in facts["features"]["knobs"]
    assert facts["numa"] == {"nodes": [], "memory_nodes": [], "distances": {}, "merge_across_nodes": None,
                             "recommended_merge_across_nodes": None, "numad_pids": [], "numad_running": False}


def test_collect_tolerates_unknown_files(ksm_tree, fake_proc, node_tree):
    sysfs = ksm_tree("5.14")
    with open(os.path.join(sysfs, "redhat_only_zero_pages"), "w") as f:
        f.write("0\n")
    facts = collect(sysfs, fake_proc([]), node_tree([[10]]))
    assert facts["available"] is True
    assert facts["features"]["other_files"] == ["redhat_only_zero_pages"]


def test_collect_without_ksm_does_not_fail(tmp_path, fake_proc, node_tree):
    missing = str(tmp_path / "ksm")
    facts = collect(missing, fake_proc([]), node_tree([[10]]), release="5.10.0-custom")
    assert facts["available"] is False
    assert missing in facts["reason"] and "5.10.0-custom" in facts["reason"] and "CONFIG_KSM" in facts["reason"]
    assert facts["kernel_release"] == "5.10.0-custom"
    assert facts["page_size"] == 4096
    assert facts["writable"] is False
    assert facts["state"] is None and facts["tunables"] == {} and facts["processes"] == []


def test_collect_directory_without_run_file(tmp_path, fake_proc, node_tree):
    (tmp_path / "ksm").mkdir()
    facts = collect(str(tmp_path / "ksm"), fake_proc([]), node_tree([[10]]))
    assert facts["available"] is False
    assert "no run file" in facts["reason"]


def test_unavailable_facts_have_every_key(ksm_tree, fake_proc, node_tree, tmp_path):
    full = collect(ksm_tree("6.8"), fake_proc([]), node_tree([[10]]))
    empty = collect(str(tmp_path / "missing"), str(tmp_path), str(tmp_path))
    assert set(full) == set(empty)


def test_collect_never_writes(ksm_tree, fake_proc, node_tree):
    sysfs = ksm_tree("6.8", run="running")
    before = dict((n, open(os.path.join(sysfs, n)).read()) for n in os.listdir(sysfs))
    mtimes = dict((n, os.stat(os.path.join(sysfs, n)).st_mtime_ns) for n in os.listdir(sysfs))
    collect(sysfs, fake_proc([]), node_tree([[10]]))
    assert dict((n, open(os.path.join(sysfs, n)).read()) for n in os.listdir(sysfs)) == before
    assert dict((n, os.stat(os.path.join(sysfs, n)).st_mtime_ns) for n in os.listdir(sysfs)) == mtimes


# --- writable -------------------------------------------------------------------------------------------------------

def test_writable_as_root_on_a_writable_tree(ksm_tree):
    assert _facts.writable(ksm_tree("6.8"), euid=0) == (True, "")


def test_not_writable_without_root(ksm_tree):
    ok, why = _facts.writable(ksm_tree("6.8"), euid=1000)
    assert ok is False and "root" in why


def test_not_writable_on_a_read_only_mount(ksm_tree, monkeypatch):
    # A read-only /sys (containers) cannot be mounted here without touching the host: fake statvfs's flag only.
    class ReadOnly(object):
        f_flag = os.ST_RDONLY
    monkeypatch.setattr(_facts.os, "statvfs", lambda path: ReadOnly())
    ok, why = _facts.writable(ksm_tree("6.8"), euid=0)
    assert ok is False and "read-only" in why


# --- NUMA -----------------------------------------------------------------------------------------------------------

def test_numa_one_node_keeps_merge_across_nodes(node_tree):
    numa = _facts.numa_facts(node_tree([[10]]), True)
    assert numa == {"nodes": [0], "memory_nodes": [0], "distances": {"0": [10]}, "merge_across_nodes": True,
                    "recommended_merge_across_nodes": True}


def test_numa_two_memory_nodes_recommend_false(node_tree):
    numa = _facts.numa_facts(node_tree([[10, 21], [21, 10]]), True)
    assert numa["nodes"] == [0, 1] and numa["memory_nodes"] == [0, 1]
    assert numa["distances"] == {"0": [10, 21], "1": [21, 10]}
    assert numa["recommended_merge_across_nodes"] is False


def test_numa_two_nodes_one_with_memory(node_tree):
    numa = _facts.numa_facts(node_tree([[10, 21], [21, 10]], memory=[0]), True)
    assert numa["memory_nodes"] == [0]
    assert numa["recommended_merge_across_nodes"] is True


def test_collect_two_nodes(ksm_tree, fake_proc, node_tree):
    facts = collect(ksm_tree("4.18"), fake_proc([]), node_tree([[10, 32], [32, 10]]))
    assert facts["numa"]["recommended_merge_across_nodes"] is False
    assert facts["numa"]["merge_across_nodes"] is True


# --- /proc: ksmd, ksmtuned, processes ---------------------------------------------------------------------------------

KTHREADS = [
    {"pid": 2, "comm": "kthreadd", "ppid": 0, "ksm": ""},
    {"pid": 37, "comm": "ksmd", "ppid": 2, "utime": 250, "stime": 50, "ksm": ""},
]


def test_ksmd_pid_and_cpu_seconds(fake_proc, tmp_path):
    proc = fake_proc(KTHREADS + [{"pid": 900, "comm": "ksmd", "ppid": 1, "ksm": ""}])
    assert _procfs.ksmd_pid(proc) == 37  # a user process called ksmd is not the kernel thread
    assert _facts.ksmd_facts(proc, 100) == {"pid": 37, "cpu_seconds": 3.0}
    assert _facts.ksmd_facts(str(tmp_path / "no-proc"), 100) is None


def test_ksmtuned_process(fake_proc):
    scan = _facts.scan_proc(fake_proc(KTHREADS + [{"pid": 812, "comm": "ksmtuned", "ksm": OBSERVED_6_18}]), 0)
    assert scan["ksmtuned_pids"] == [812]


def qemu(pid, merging, name_arg, **stat):
    return {"pid": pid, "comm": "qemu-system-x86", "cmdline": ["/usr/bin/qemu-system-x86_64", "-name", name_arg],
            "ksm": ksm_stat_text(merging=merging, rmap=merging + 10, **stat)}


def test_processes_top_n_from_ksm_stat(fake_proc):
    proc = fake_proc(KTHREADS + [
        qemu(1001, 500, "guest=web1,debug-threads=on", zero=0, profit=500 * 4096 - 510 * 64,
             merge_any=False, mergeable=True),
        qemu(1002, 900, "web2", zero=4, profit=1, merge_any=False, mergeable=True),
        {"pid": 1003, "comm": "python3", "cmdline": ["python3", "-name", "x"],
         "ksm": ksm_stat_text(merging=700, rmap=700, zero=0, profit=2)},
        {"pid": 1004, "comm": "bash", "ksm": OBSERVED_6_18},  # nothing merged: left out
    ])
    scan = _facts.scan_proc(proc, 2, page_size=4096)
    assert [p["pid"] for p in scan["processes"]] == [1002, 1003]
    first = scan["processes"][0]
    assert first == {"pid": 1002, "comm": "qemu-system-x86", "guest": "web2", "merging_pages": 900,
                     "zero_pages": 4, "rmap_items": 910, "profit_bytes": 1, "merge_any": False,
                     "mergeable": True, "merged_bytes": 904 * 4096}
    assert scan["processes"][1]["guest"] is None  # not qemu, even with a -name argument
    everything = _facts.scan_proc(proc, 10)["processes"]
    assert [p["pid"] for p in everything] == [1002, 1003, 1001]
    assert everything[2]["guest"] == "web1"
    assert everything[2]["profit_bytes"] == 500 * 4096 - 510 * 64


def test_processes_6_1_merged_pages_from_ksm_merging_pages_rmap_items_from_ksm_stat(fake_proc):
    # 6.1 (observed in a Debian 12 guest, 6.1.0-56): ksm_stat has only ksm_rmap_items; ksm_merging_pages has the pages
    proc = fake_proc(KTHREADS + [
        {"pid": 1001, "comm": "qemu-kvm", "cmdline": ["qemu-kvm", "-name", "guest=db"], "ksm": "300\n",
         "ksm_stat": "ksm_rmap_items 512\n"},
        {"pid": 1002, "comm": "qemu-kvm", "ksm": "200\n"},  # its ksm_stat vanished: no rmap_items
        {"pid": 1003, "comm": "bash", "ksm": "0\n", "ksm_stat": "ksm_rmap_items 0\n"},
    ], ksm_file="6.1")
    assert _procfs.process_source(proc) == "ksm_merging_pages"
    scan = _facts.scan_proc(proc, 10, page_size=4096)
    assert scan["processes"] == [
        {"pid": 1001, "comm": "qemu-kvm", "guest": "db", "merging_pages": 300, "rmap_items": 512,
         "merged_bytes": 300 * 4096},
        {"pid": 1002, "comm": "qemu-kvm", "guest": None, "merging_pages": 200, "merged_bytes": 200 * 4096},
    ]


def test_processes_from_ksm_merging_pages_only(fake_proc):
    proc = fake_proc(KTHREADS + [
        {"pid": 1001, "comm": "qemu-kvm", "cmdline": ["qemu-kvm", "-name", "guest=db"], "ksm": "300\n"},
        {"pid": 1002, "comm": "qemu-kvm", "ksm": "0\n"},
    ], ksm_file="ksm_merging_pages")
    scan = _facts.scan_proc(proc, 10, page_size=4096)
    assert scan["source"] == "ksm_merging_pages"
    assert scan["processes"] == [{"pid": 1001, "comm": "qemu-kvm", "guest": "db", "merging_pages": 300,
                                  "merged_bytes": 300 * 4096}]


def test_processes_on_a_kernel_with_neither_file(fake_proc, ksm_tree, node_tree):
    proc = fake_proc(KTHREADS + [{"pid": 1001, "comm": "qemu-kvm"}], ksm_file=None)
    scan = _facts.scan_proc(proc, 10)
    assert scan["source"] is None and scan["processes"] == []
    facts = collect(ksm_tree("4.18"), proc, node_tree([[10]]))
    assert facts["ksmd"]["pid"] == 37
    assert facts["features"]["process_file"] is None and facts["processes"] == []


def test_processes_vanishing_and_unreadable_entries_are_skipped(fake_proc):
    proc = fake_proc(KTHREADS + [
        qemu(1001, 50, "a"),
        {"pid": 1002, "comm": "qemu-kvm", "ksm": None},  # exited between reading stat and ksm_stat
        qemu(1003, 60, "c"),
        qemu(1004, 70, "d"),
    ])
    os.makedirs(os.path.join(proc, "1005"))  # exited before its stat was read: an empty directory
    os.remove(os.path.join(proc, "1003", "cmdline"))  # exited before its command line was read
    os.remove(os.path.join(proc, "1004", "ksm_stat"))
    os.makedirs(os.path.join(proc, "1004", "ksm_stat"))  # read fails with EISDIR, like an unreadable entry
    with open(os.path.join(proc, "1006"), "w") as f:  # not a directory at all
        f.write("")
    scan = _facts.scan_proc(proc, 10)
    assert [(p["pid"], p["guest"]) for p in scan["processes"]] == [(1003, None), (1001, "a")]


def test_processes_zero_skips_the_per_process_files(fake_proc):
    proc = fake_proc(KTHREADS + [qemu(1001, 50, "a"), {"pid": 812, "comm": "ksmtuned", "ksm": OBSERVED_6_18}])
    scan = _facts.scan_proc(proc, 0)
    assert scan["processes"] == [] and scan["source"] is None
    assert _procfs.ksmd_pid(proc) == 37 and scan["ksmtuned_pids"] == [812]


def test_collect_processes_option(ksm_tree, fake_proc, node_tree):
    proc = fake_proc(KTHREADS + [qemu(1001, 50, "a", zero=0, profit=9)])
    sysfs, nodes = ksm_tree("6.8"), node_tree([[10]])
    facts = collect(sysfs, proc, nodes, processes=5)
    assert [p["guest"] for p in facts["processes"]] == ["a"]
    assert facts["ksmd"] == {"pid": 37, "cpu_seconds": 3.0}
    assert facts["features"]["process_file"] == "ksm_stat"
    facts = collect(sysfs, proc, nodes, processes=0)
    assert facts["processes"] == [] and facts["features"]["process_file"] == "ksm_stat"


# --- services -------------------------------------------------------------------------------------------------------

class FakeSystemctl(object):
    def __init__(self, out, rc=0):
        self.out = out
        self.rc = rc
        self.calls = []

    def __call__(self, cmd):
        self.calls.append(cmd)
        return self.rc, self.out, ""


SHOW = (
    "Id=ksm.service\nLoadState=loaded\nActiveState=active\nUnitFileState=enabled\n\n"
    "Id=ksmtuned.service\nLoadState=loaded\nActiveState=inactive\nUnitFileState=disabled\n\n"
    "Id=qemu-kvm.service\nLoadState=not-found\nActiveState=inactive\nUnitFileState=\n"
)


def test_services_without_systemd_are_unknown(tmp_path):
    run = FakeSystemctl(SHOW)
    facts = _facts.service_facts(run, "/bin/systemctl", str(tmp_path / "no-systemd"))
    assert facts["manager"] == "unknown"
    assert sorted(facts["units"]) == ["ksm.service", "ksmtuned.service"]
    assert set(facts["units"]["ksm.service"].values()) == {"unknown"}
    assert run.calls == []  # no command at all


def test_services_from_one_systemctl_call(tmp_path):
    run = FakeSystemctl(SHOW)
    facts = _facts.service_facts(run, "/bin/systemctl", str(tmp_path))
    assert run.calls == [["/bin/systemctl", "show", "-p", "Id,LoadState,ActiveState,UnitFileState",
                          "ksm.service", "ksmtuned.service", "qemu-kvm.service", "tuned.service",
                          "kvmhost-ksm-governor.service"]]
    assert facts == {"manager": "systemd", "units": {
        "ksm.service": {"load_state": "loaded", "active_state": "active", "unit_file_state": "enabled"},
        "ksmtuned.service": {"load_state": "loaded", "active_state": "inactive", "unit_file_state": "disabled"},
    }}  # qemu-kvm.service is not installed: left out


def test_services_ubuntu_qemu_kvm_service_when_present(tmp_path):
    out = SHOW.replace("Id=qemu-kvm.service\nLoadState=not-found\nActiveState=inactive\nUnitFileState=\n",
                       "Id=qemu-kvm.service\nLoadState=loaded\nActiveState=active\nUnitFileState=enabled\n")
    facts = _facts.service_facts(FakeSystemctl(out), "/bin/systemctl", str(tmp_path))
    assert facts["units"]["qemu-kvm.service"] == {"load_state": "loaded", "active_state": "active",
                                                  "unit_file_state": "enabled"}


def test_services_when_systemctl_fails(tmp_path):
    facts = _facts.service_facts(FakeSystemctl("", rc=1), "/bin/systemctl", str(tmp_path))
    assert facts["manager"] == "unknown"
    assert facts["units"]["ksmtuned.service"]["active_state"] == "unknown"
    facts = _facts.service_facts(FakeSystemctl(SHOW), None, str(tmp_path))  # no systemctl binary
    assert facts["manager"] == "unknown"


def test_collect_services_and_ksmtuned(ksm_tree, fake_proc, node_tree, tmp_path):
    proc = fake_proc(KTHREADS + [{"pid": 812, "comm": "ksmtuned", "ksm": OBSERVED_6_18}])
    run = FakeSystemctl(SHOW)
    facts = collect(ksm_tree("6.8"), proc, node_tree([[10]]), systemd_root=str(tmp_path), run_command=run,
                    systemctl="/bin/systemctl")
    assert len(run.calls) == 1
    assert facts["services"]["manager"] == "systemd"
    assert facts["services"]["ksmtuned_running"] is True
    assert facts["services"]["ksmtuned_pids"] == [812]


def test_collect_reads_the_role_governors_state_file_and_lists_it_as_no_manager(ksm_tree, fake_proc, node_tree,
                                                                                tmp_path):
    proc, sysfs, nodes = fake_proc(KTHREADS), ksm_tree("6.8"), node_tree([[10]])
    root = tmp_path / "root"
    facts = collect(sysfs, proc, nodes, root=str(root))
    assert facts["governor"] is None  # never ran since boot
    (root / "run").mkdir(parents=True)
    (root / "run" / "kvmhost-ksm-governor.json").write_text(
        '{"pid": 77, "phase": "blind", "pages_to_scan": 2300, "share": null}')
    units = {"kvmhost-ksm-governor.service": {"load_state": "loaded", "active_state": "active",
                                              "unit_file_state": "enabled"}}
    facts = collect(sysfs, proc, nodes, root=str(root))
    assert facts["governor"] == {"pid": 77, "phase": "blind", "pages_to_scan": 2300, "share": None}
    assert _managers.detect(units, {}, str(root)) == []  # the role's own governor is not another manager


def test_scan_finds_numad_guests_and_merging_services(fake_proc):
    proc = fake_proc(KTHREADS + [
        {"pid": 300, "comm": "numad", "ksm": ksm_stat_text()},
        {"pid": 400, "comm": "qemu-system-x86", "cmdline": ["/usr/bin/qemu-system-x86_64", "-m", "1024"],
         "ksm": ksm_stat_text(merging=10)},
        {"pid": 501, "comm": "python3", "ksm": ksm_stat_text(merging=100, profit=300000, merge_any=True)},
        {"pid": 502, "comm": "python3", "ksm": ksm_stat_text(profit=0, merge_any=True)},  # nothing merged yet: listed
    ])
    with open(os.path.join(proc, "400", "status"), "w") as f:
        f.write("Name:\tqemu-system-x86\nVmRSS:\t  524288 kB\n")
    for pid in ("501", "502"):
        with open(os.path.join(proc, pid, "cgroup"), "w") as f:
            f.write("0::/system.slice/web.service\n")
    scan = _facts.scan_proc(proc, 10, page_size=4096)
    assert scan["comm_pids"]["numad"] == [300]
    assert scan["guests"] == [(1024 * 1024 * 1024, 512 * 1024 * 1024)]
    assert scan["merging_services"] == [{"unit": "web.service", "pids": [501, 502], "merging_pages": 100,
                                         "merged_bytes": 100 * 4096, "profit_bytes": 300000}]
    assert [p.get("unit") for p in scan["processes"]] == ["web.service", None]


def test_scan_reads_stat_only_for_ksmd_qemu_and_the_top_processes(fake_proc):
    # the pass reads comm and the KSM file of every pid, stat only where comm asks for it: with the stat files of
    # the other processes gone, everything is still found
    proc = fake_proc(KTHREADS + [
        {"pid": 812, "comm": "ksmtuned", "ksm": OBSERVED_6_18},
        {"pid": 900, "comm": "ksmd", "ppid": 1, "ksm": OBSERVED_6_18},  # a user process called ksmd
        {"pid": 1001, "comm": "bash", "ksm": OBSERVED_6_18},
        qemu(1002, 40, "web"),
        {"pid": 1003, "comm": "python3", "ksm": ksm_stat_text(merging=7, mergeable=True)},
    ])
    for pid in (812, 1001):
        os.remove(os.path.join(proc, str(pid), "stat"))
    scan = _facts.scan_proc(proc, 10, page_size=4096)
    assert scan["ksmtuned_pids"] == [812] and scan["ksmd_pid"] == 37
    assert [(p["pid"], p["comm"], p["guest"]) for p in scan["processes"]] == [
        (1002, "qemu-system-x86", "web"), (1003, "python3", None)]
    os.remove(os.path.join(proc, "1003", "stat"))  # exited after its KSM file was read: not reported
    assert [p["pid"] for p in _facts.scan_proc(proc, 10)["processes"]] == [1002]


def test_ksmd_facts_of_a_known_pid(fake_proc):
    proc = fake_proc(KTHREADS)
    assert _facts.ksmd_facts(proc, 100, 37) == {"pid": 37, "cpu_seconds": 3.0}
    assert _facts.ksmd_facts(proc, 100, 99) is None  # exited since it was found
