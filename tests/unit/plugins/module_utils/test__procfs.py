# Copyright (c) kvmhost.ksm contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The /proc layer: parsers of the kernel's formats, and the readers on fake trees and on this machine's /proc."""

import os
import time
import typing as t

import pytest

from ansible_collections.kvmhost.ksm.plugins.module_utils import _procfs

from ansible_collections.kvmhost.ksm.tests.unit.fake_host import OBSERVED_6_18, ksm_stat_text, make_proc

HOST_HAS_KSMD = os.path.isdir("/sys/kernel/mm/ksm")

KTHREADS = [
    {"pid": 2, "comm": "kthreadd", "ppid": 0},
    {"pid": 37, "comm": "ksmd", "ppid": 2, "utime": 250, "stime": 50},
]


# --- parsers ----------------------------------------------------------------------------------------------------

def test_parse_ksm_stat_both_line_formats():
    assert _procfs.parse_ksm_stat(OBSERVED_6_18) == {
        "ksm_rmap_items": 0, "ksm_zero_pages": 0, "ksm_merging_pages": 0, "ksm_process_profit": 0,
        "ksm_merge_any": False, "ksm_mergeable": False,
    }
    text = "ksm_rmap_items 120\nksm_merging_pages 100\nksm_process_profit -3072\nksm_merge_any: yes\n"
    assert _procfs.parse_ksm_stat(text) == {
        "ksm_rmap_items": 120, "ksm_merging_pages": 100, "ksm_process_profit": -3072, "ksm_merge_any": True,
    }


def test_parse_ksm_stat_tolerates_unknown_and_odd_lines():
    text = "ksm_rmap_items 5\nksm_future_counter 7\nksm_future_flag: yes\nnonsense\nksm_bad x\n\n"
    assert _procfs.parse_ksm_stat(text) == {"ksm_rmap_items": 5, "ksm_future_counter": 7, "ksm_future_flag": True}
    assert _procfs.parse_ksm_stat("") == {}  # kernel threads and zombies have no mm


@pytest.mark.parametrize("text", [OBSERVED_6_18, "", "0\n", ksm_stat_text(), ksm_stat_text(zero=0, profit=0),
                                  "ksm_rmap_items 0\n", "ksm_merge_any: no\nksm_mergeable: no\n"])
def test_ksm_idle_texts_parse_to_nothing(text):
    assert _procfs.ksm_idle(text)
    assert not any(_procfs.parse_ksm_stat(text).values())  # what the collector skips would have said nothing


@pytest.mark.parametrize("text", ["12\n", "10\n", ksm_stat_text(merging=1), ksm_stat_text(rmap=3),
                                  ksm_stat_text(zero=2), ksm_stat_text(profit=-64), ksm_stat_text(merge_any=True),
                                  ksm_stat_text(mergeable=True), "ksm_future_counter 0\nksm_future_flag: yes\n"])
def test_ksm_idle_is_false_for_anything_to_report(text):
    assert not _procfs.ksm_idle(text)


def test_parse_proc_stat_takes_fields_after_the_last_parenthesis():
    line = "4242 (qemu (x) y) S 17 4242 4242 0 -1 4194560 1 0 0 0 150 25 0 0 20 0 5 0 100 0 0\n"
    stat = _procfs.parse_proc_stat(line)
    assert stat == _procfs.ProcStat(4242, "qemu (x) y", 17, 150, 25)


def test_parse_proc_stat_of_ksmd_as_observed():
    line = ("37 (ksmd) S 2 0 0 0 -1 2097216 0 0 0 0 0 14 0 0 25 5 1 0 26 0 0 18446744073709551615 0 0 0 0 0 0 0 "
            "2147483647 0 1 0 0 17 1 0 0 0 0 0 0 0 0 0 0 0 0 0")
    assert _procfs.parse_proc_stat(line) == _procfs.ProcStat(37, "ksmd", 2, 0, 14)


def test_parse_cmdline():
    assert _procfs.parse_cmdline(b"qemu-system-x86_64\0-name\0guest=a\0") == ["qemu-system-x86_64", "-name", "guest=a"]
    assert _procfs.parse_cmdline(b"") == []


@pytest.mark.parametrize("ksm_file, source", [
    ("ksm_stat", "ksm_stat"), ("6.1", "ksm_merging_pages"), ("ksm_merging_pages", "ksm_merging_pages"), (None, None),
])
def test_process_source(tmp_path, ksm_file, source):
    assert _procfs.process_source(make_proc(tmp_path / "proc", [], ksm_file)) == source


def test_mem_available(tmp_path):
    (tmp_path / "meminfo").write_text(u"MemTotal:       1000 kB\nMemAvailable:     512 kB\n")
    assert _procfs.mem_available(str(tmp_path)) == 512 * 1024
    (tmp_path / "meminfo").write_text(u"MemTotal:       1000 kB\n")  # kernels before 3.14
    assert _procfs.mem_available(str(tmp_path)) is None
    assert _procfs.mem_available(str(tmp_path / "missing")) is None


def test_processes_named(tmp_path):
    for pid, comm in (("1", "systemd"), ("42", "ksmtuned"), ("77", "ksmtuned"), ("self", "ksmtuned")):
        os.makedirs(str(tmp_path / pid))
        (tmp_path / pid / "comm").write_text(comm + u"\n")
    os.makedirs(str(tmp_path / "99"))  # a process that exited while we looked
    assert _procfs.processes_named("ksmtuned", str(tmp_path)) == [42, 77]
    assert _procfs.processes_named("ksmd", str(tmp_path)) == []
    assert _procfs.processes_named("ksmd", str(tmp_path / "missing")) == []


def test_processes_named_on_this_host():
    assert os.getpid() in _procfs.processes_named(open("/proc/self/comm").read().strip())


def test_page_size():
    assert _procfs.page_size() >= 4096


# --- readers on fake trees ----------------------------------------------------------------------------------------

def test_read_proc_stat(tmp_path):
    proc = make_proc(tmp_path / "proc", KTHREADS)
    assert _procfs.read_proc_stat(37, proc) == _procfs.ProcStat(37, "ksmd", 2, 250, 50)
    assert _procfs.read_proc_stat(99, proc) is None  # exited
    os.makedirs(os.path.join(proc, "98"))
    with open(os.path.join(proc, "98", "stat"), "w") as f:
        f.write("98 (half")  # cut short: not a stat line
    assert _procfs.read_proc_stat(98, proc) is None


def test_read_comm(tmp_path):
    proc = make_proc(tmp_path / "proc", KTHREADS + [{"pid": 5, "comm": "qemu:web 1"}])
    assert _procfs.read_comm(37, proc) == "ksmd"
    assert _procfs.read_comm(5, proc) == "qemu:web 1"  # spaces kept, like stat's
    assert _procfs.read_comm(99, proc) is None  # exited
    with open(os.path.join(proc, "5", "comm"), "w") as f:
        f.write("a\\b")  # no newline, a backslash: as it is (stat would escape the backslash)
    assert _procfs.read_comm(5, proc) == "a\\b"


def test_process_texts(tmp_path):
    proc = make_proc(tmp_path / "proc", KTHREADS + [{"pid": 5, "comm": "bash", "ksm": OBSERVED_6_18},
                                                    {"pid": 6, "comm": "sleep"}])  # 6: no ksm_stat (exited)
    os.makedirs(os.path.join(proc, "7"))  # exited before its comm was read: left out
    with open(os.path.join(proc, "8"), "w") as f:  # not a directory
        f.write("")
    assert sorted(_procfs.process_texts("ksm_stat", proc)) == [
        (2, "kthreadd", None), (5, "bash", OBSERVED_6_18), (6, "sleep", None), (37, "ksmd", None)]
    assert sorted(_procfs.process_texts(None, proc)) == [
        (2, "kthreadd", None), (5, "bash", None), (6, "sleep", None), (37, "ksmd", None)]
    assert list(_procfs.process_texts("ksm_stat", str(tmp_path / "missing"))) == []


def test_process_texts_on_this_host():
    mine = dict((pid, (comm, text)) for pid, comm, text in _procfs.process_texts("stat"))
    comm, text = mine[os.getpid()]
    assert comm == _procfs.read_comm(os.getpid())
    assert _procfs.parse_proc_stat(t.cast(str, text)).pid == os.getpid()


def test_process_path():
    assert _procfs.process_path(42, "ksm_stat") == "/proc/42/ksm_stat"
    assert _procfs.process_path("self", "comm", "/tmp/proc") == "/tmp/proc/self/comm"


def test_ksmd_pid_is_the_kernel_thread(tmp_path):
    proc = make_proc(tmp_path / "proc", [{"pid": 9, "comm": "ksmd", "ppid": 1}] + KTHREADS)
    assert _procfs.ksmd_pid(proc) == 37  # a user process called ksmd is not the kernel thread
    assert _procfs.processes_named("ksmd", proc) == [9, 37]


def test_ksmd_pid_without_ksm(tmp_path):
    assert _procfs.ksmd_pid(make_proc(tmp_path / "proc", KTHREADS[:1])) is None
    assert _procfs.ksmd_pid(str(tmp_path / "missing")) is None


def test_cpu_seconds(tmp_path):
    proc = make_proc(tmp_path / "proc", KTHREADS)
    assert _procfs.cpu_seconds(37, proc) == 300.0 / os.sysconf("SC_CLK_TCK")
    assert _procfs.stat_cpu_seconds(_procfs.ProcStat(37, "ksmd", 2, 250, 50), 100) == 3.0
    assert _procfs.cpu_seconds(99, proc) is None


def test_read_cmdline(tmp_path):
    proc = make_proc(tmp_path / "proc", [{"pid": 5, "comm": "qemu-kvm", "cmdline": ["qemu-kvm", "-name", "a b"]},
                                         {"pid": 6, "comm": "kworker/0:1"}])
    assert _procfs.read_cmdline(5, proc) == ["qemu-kvm", "-name", "a b"]
    assert _procfs.read_cmdline(6, proc) == []  # kernel threads have an empty command line
    assert _procfs.read_cmdline(7, proc) == []  # exited


def test_pids(tmp_path):
    proc = make_proc(tmp_path / "proc", KTHREADS)
    assert sorted(_procfs.pids(proc)) == [2, 37]  # not "self"
    assert _procfs.pids(str(tmp_path / "missing")) == []


# --- this machine's /proc -----------------------------------------------------------------------------------------

def test_this_process():
    me = os.getpid()
    assert me in _procfs.pids()
    assert _procfs.read_comm(me) == _procfs.read_proc_stat(me).comm
    stat = _procfs.read_proc_stat(me)
    assert stat is not None and stat.pid == me and stat.ppid == os.getppid()
    assert os.path.basename(_procfs.read_cmdline(me)[0]).startswith("python")
    assert _procfs.clock_ticks() > 0


def test_cpu_seconds_of_this_process_grow_while_it_computes():
    start = _procfs.cpu_seconds(os.getpid())
    assert start is not None and start >= 0
    deadline = time.monotonic() + 10
    while _procfs.cpu_seconds(os.getpid()) == start and time.monotonic() < deadline:
        sum(range(10000))
    assert _procfs.cpu_seconds(os.getpid()) > start


def test_mem_available_on_this_host():
    assert _procfs.mem_available() > 0


@pytest.mark.skipif(not HOST_HAS_KSMD, reason="this kernel has no KSM (/sys/kernel/mm/ksm), so no ksmd thread")
def test_ksmd_on_this_host():
    pid = _procfs.ksmd_pid()
    assert pid is not None and pid in _procfs.processes_named("ksmd")
    stat = _procfs.read_proc_stat(pid)
    assert stat is not None and stat.ppid == _procfs.KTHREADD_PID
    assert _procfs.cpu_seconds(pid) >= 0
