# Copyright (c) kvmhost.ksm contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""kvmhost.ksm.ksm against real hosts: this machine's KSM (root, writable /sys/kernel/mm/ksm) and VM lab guests.

Every test runs on each host of the inventory (fixture ``host``, conftest.py): on localhost under the machine-wide
lock with the KSM state saved first and restored afterwards; on a guest its KSM is put back through the ksm module.
Tests marked ``every_kernel`` run on the guests too; which files a kernel has comes from the host's facts.
Without root or KSM the tests are skipped with the reason printed.
"""

import shutil
import subprocess
import typing as t

import pytest
from conftest import local_only
from real_host import RealHost

OPTION = {"run": "state"}
every_kernel = pytest.mark.every_kernel


def other_value(name: str, current: t.Any) -> t.Any:
    """A legal value of knob name that differs from current."""
    if name == "run":
        return "stopped" if current == "running" else "running"
    if name == "advisor_mode":
        return "none" if current == "scan-time" else "scan-time"
    if isinstance(current, bool):
        return not current
    if name == "advisor_max_cpu":
        return 50 if current != 50 else 60
    if name == "advisor_min_pages_to_scan":
        return current - 1 if current else 1  # stays below the maximum
    if name == "advisor_max_pages_to_scan":
        return current + 1  # stays above the minimum
    return current + 7


KNOBS = ["run", "pages_to_scan", "sleep_millisecs", "stable_node_chains_prune_millisecs", "max_page_sharing",
         "merge_across_nodes", "use_zero_pages", "smart_scan", "advisor_mode", "advisor_max_cpu",
         "advisor_min_pages_to_scan", "advisor_max_pages_to_scan", "advisor_target_scan_time"]
# On every kernel: one knob every kernel has, and two that only newer kernels have (skipped from the facts on 6.1).
EVERY_KERNEL_KNOBS = ("pages_to_scan", "smart_scan", "advisor_mode")
# The kernel refuses these (EBUSY) while any page is merged, by any process of the host (QEMU guests, ...).
BUSY_KNOBS = ("merge_across_nodes", "max_page_sharing")


def present(host: RealHost, name: str) -> None:
    if not host.has(name):
        release = host.facts.get("kernel_release")
        print(f"skipping {name}: the kernel of {host.name} ({release}) has no {host.path(name)}")
        pytest.skip(f"the kernel of {host.name} ({release}) has no {host.path(name)}")


@pytest.mark.parametrize("name", [pytest.param(n, marks=every_kernel) if n in EVERY_KERNEL_KNOBS else n
                                  for n in KNOBS])
def test_knob_check_apply_idempotent(host, name):
    present(host, name)
    if name in BUSY_KNOBS:
        host.unmerge()  # this test is about the knob; the EBUSY path has tests of its own below
    before = host.read(name)
    target = other_value(name, before)
    args = {OPTION.get(name, name): target}
    check = host.run("ksm", check=True, **args)
    assert host.read(name) == before, "check mode wrote"
    results = [check, host.run("ksm", **args)]
    assert host.read(name) == target
    results += [host.run("ksm", **args), host.run("ksm", check=True, **args)]
    assert [r["failed"] for r in results] == [False] * 4, [r.get("msg") for r in results]
    assert [r["changed"] for r in results] == [True, True, False, False]
    assert results[0]["before"] == results[1]["before"] == {OPTION.get(name, name): before}
    assert results[0]["after"] == results[1]["after"] == results[2]["after"] == args
    assert host.read(name) == target


def test_state_unmerged_with_workload(host, workload):
    sysfs = host.sysfs
    assert sysfs.read("pages_shared") > 0
    check = host.run("ksm", check=True, state="unmerged")
    assert (check["changed"], check["unmerged"]) == (True, True) and sysfs.read("pages_shared") > 0
    result = host.run("ksm", state="unmerged")
    assert (result["changed"], result["unmerged"], result["after"]) == (True, True, {"state": "unmerged"})
    assert sysfs.read("pages_shared") == 0 and sysfs.read("run") == "unmerged"
    again = host.run("ksm", state="unmerged")
    assert (again["changed"], again["unmerged"]) == (False, False)


@pytest.mark.parametrize("name", ["merge_across_nodes", "max_page_sharing"])
def test_ebusy_knob_without_allow_unmerge_fails_and_changes_nothing(host, workload, name):
    present(host, name)
    sysfs = host.sysfs
    before = host.values()
    target = other_value(name, before[name])
    result = host.run("ksm", **{name: target, "sleep_millisecs": 33})
    assert result["failed"]
    assert "bytes are merged now" in result["msg"] and "allow_unmerge: true" in result["msg"]
    assert "EBUSY" in result["msg"] and name in result["msg"]
    assert host.values() == before
    assert sysfs.read("pages_shared") > 0


@pytest.mark.parametrize("name", ["merge_across_nodes", "max_page_sharing"])
def test_ebusy_knob_with_allow_unmerge(host, workload, name):
    present(host, name)
    sysfs = host.sysfs
    before = host.values()
    target = other_value(name, before[name])
    args = {name: target, "allow_unmerge": True}
    check = host.run("ksm", check=True, **args)
    assert (check["failed"], check["changed"], check["unmerged"]) == (False, True, True)
    assert host.values() == before and sysfs.read("pages_shared") > 0
    result = host.run("ksm", **args)
    assert not result["failed"], result.get("msg")
    assert (result["changed"], result["unmerged"], result["after"]) == (True, True, {name: target})
    assert sysfs.read(name) == target
    assert sysfs.read("run") == "running"  # the previous run state, restored
    assert dict(host.values(), **{name: before[name]}) == before
    again = host.run("ksm", **args)
    assert (again["changed"], again["unmerged"]) == (False, False)


BAD_INPUTS = [
    ({"max_page_sharing": 1}, "between 2 and"),
    ({"advisor_max_cpu": 0}, "between 1 and 100"),
    ({"advisor_max_cpu": 101}, "between 1 and 100"),
    ({"advisor_target_scan_time": 0}, "advisor_target_scan_time=0"),
    ({"pages_to_scan": -1}, "pages_to_scan=-1"),
    ({"sleep_millisecs": 4294967296}, "between 0 and 4294967295"),
    ({"pages_to_scan": 10, "advisor_mode": "scan-time"}, "pages_to_scan while advisor_mode is scan-time"),
    ({"advisor_min_pages_to_scan": 10 ** 9}, "above advisor_max_pages_to_scan"),
    ({"advisor_max_pages_to_scan": 1, "advisor_min_pages_to_scan": 2}, "above advisor_max_pages_to_scan=1"),
    ({"advisor_mode": "fast"}, "advisor_mode"),
    ({"state": "paused"}, "state"),
    ({"pages_to_scan": "lots"}, "pages_to_scan"),
    ({"merge_across_nodes": "perhaps"}, "merge_across_nodes"),
    ({"ksm_pages": 1}, "ksm_pages"),
    ({"sysfs_path": "/nonexistent/ksm"}, "KSM is not available"),
]


@pytest.mark.parametrize("bad, words", BAD_INPUTS)
def test_bad_input_leaves_every_value(host, bad, words):
    before = host.values()
    args = dict({"state": other_value("run", before["run"]), "sleep_millisecs": before["sleep_millisecs"] + 3,
                 "use_zero_pages": not before["use_zero_pages"]}, **bad)
    result = host.run("ksm", **args)
    assert result["failed"] and words in result["msg"]
    assert "Traceback" not in result["msg"] and "\n" not in result["msg"]
    assert host.values() == before


def test_pages_to_scan_refused_under_the_host_advisor(host):
    present(host, "advisor_mode")
    assert not host.run("ksm", advisor_mode="scan-time")["failed"]
    before = host.values()
    result = host.run("ksm", pages_to_scan=before["pages_to_scan"] + 1)
    assert result["failed"] and "leave pages_to_scan unset or set advisor_mode: none" in result["msg"]
    assert host.values() == before
    leave = host.run("ksm", advisor_mode="none", pages_to_scan=1234)
    assert (leave["failed"], leave["changed"]) == (False, True)
    assert (host.read("advisor_mode"), host.read("pages_to_scan")) == ("none", 1234)


def test_advisor_numbers_without_advisor_warn(host):
    present(host, "advisor_max_cpu")
    result = host.run("ksm", advisor_max_cpu=other_value("advisor_max_cpu", host.read("advisor_max_cpu")))
    assert result["changed"]
    assert any("takes effect only while advisor_mode is scan-time" in w for w in result["warnings"])


def test_persist_to_a_tmp_file(host, tmp_path):
    local_only(host, "the persist file is written to a temporary directory of this machine")
    persist = tmp_path / "tmpfiles.d" / "kvmhost-ksm.conf"
    sleep = host.read("sleep_millisecs") + 5
    args = {"sleep_millisecs": sleep, "state": "running", "persist": True, "persist_file": str(persist)}
    check = host.run("ksm", check=True, diff=True, **args)
    assert check["changed"] and not persist.exists()
    assert check["diff"][1]["before"] == "" and check["diff"][1]["before_header"] == str(persist)
    results = [host.run("ksm", **args), host.run("ksm", **args), host.run("ksm", check=True, **args)]
    assert [r["changed"] for r in results] == [True, False, False]
    lines = persist.read_text().splitlines()
    assert lines[1:] == [f"w /sys/kernel/mm/ksm/sleep_millisecs - - - - {sleep}", "w /sys/kernel/mm/ksm/run - - - - 1"]
    assert check["diff"][1]["after"] == persist.read_text()
    # the file alone changes: merged with what is there, run stays last
    more = host.run("ksm", diff=True, use_zero_pages=host.read("use_zero_pages"), persist=True,
                    persist_file=str(persist))
    assert more["changed"] and more["diff"][0]["before"] == more["diff"][0]["after"]
    assert persist.read_text().splitlines()[-1] == "w /sys/kernel/mm/ksm/run - - - - 1"
    assert len(persist.read_text().splitlines()) == 4


def test_diff_shape(host):
    before = {"pages_to_scan": host.read("pages_to_scan"), "state": host.read("run")}
    after = {"pages_to_scan": before["pages_to_scan"] + 11, "state": "running"}
    result = host.run("ksm", diff=True, **after)
    assert result["diff"] == [{"before": before, "after": after,
                               "before_header": "/sys/kernel/mm/ksm", "after_header": "/sys/kernel/mm/ksm"}]
    assert "diff" not in host.run("ksm", **after)


def test_persist_file_applies_with_systemd_tmpfiles(host, tmp_path):
    local_only(host, "systemd-tmpfiles applies the file to this machine's KSM")
    sysfs = host.sysfs
    tmpfiles = shutil.which("systemd-tmpfiles")
    if not tmpfiles:
        print("skipping: systemd-tmpfiles is not installed here")
        pytest.skip("systemd-tmpfiles is not installed here")
    persist = tmp_path / "kvmhost-ksm.conf"
    want = {"sleep_millisecs": sysfs.read("sleep_millisecs") + 9, "advisor_mode": "none",
            "pages_to_scan": sysfs.read("pages_to_scan") + 9, "state": "running"}
    assert host.run("ksm", persist=True, persist_file=str(persist), **want)["changed"]
    for name, value in (("run", "stopped"), ("sleep_millisecs", want["sleep_millisecs"] - 5),
                        ("pages_to_scan", want["pages_to_scan"] - 5)):
        sysfs.write(name, value)  # as after a reboot
    subprocess.run([tmpfiles, "--create", str(persist)], check=True)
    assert (sysfs.read("sleep_millisecs"), sysfs.read("pages_to_scan"), sysfs.read("run")) == \
        (want["sleep_millisecs"], want["pages_to_scan"], "running")
