# Copyright (c) kvmhost.ksm contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""kvmhost.ksm.ksm against the REAL KSM of this machine (root, writable /sys/kernel/mm/ksm).

Every test runs under the machine-wide lock with the KSM state saved first and restored afterwards (fixture
real_ksm); without root or KSM the tests are skipped with the reason printed.
"""

import shutil
import subprocess
import typing as t

import pytest

from conftest import ksm_values

OPTION = {"run": "state"}


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


def present(real_ksm, name: str) -> None:
    if not real_ksm.has(name):
        print(f"skipping {name}: this kernel has no {real_ksm.path(name)}")
        pytest.skip(f"this kernel has no {real_ksm.path(name)}")


@pytest.mark.parametrize("name", KNOBS)
def test_knob_check_apply_idempotent(real_ksm, run_module, name):
    present(real_ksm, name)
    before = real_ksm.read(name)
    target = other_value(name, before)
    args = {OPTION.get(name, name): target}
    check = run_module("ksm", check=True, **args)
    assert real_ksm.read(name) == before, "check mode wrote"
    results = [check, run_module("ksm", **args)]
    assert real_ksm.read(name) == target
    results += [run_module("ksm", **args), run_module("ksm", check=True, **args)]
    assert [r["failed"] for r in results] == [False] * 4, [r.get("msg") for r in results]
    assert [r["changed"] for r in results] == [True, True, False, False]
    assert results[0]["before"] == results[1]["before"] == {OPTION.get(name, name): before}
    assert results[0]["after"] == results[1]["after"] == results[2]["after"] == args
    assert real_ksm.read(name) == target


def test_state_unmerged_with_workload(real_ksm, workload, run_module):
    assert real_ksm.read("pages_shared") > 0
    check = run_module("ksm", check=True, state="unmerged")
    assert (check["changed"], check["unmerged"]) == (True, True) and real_ksm.read("pages_shared") > 0
    result = run_module("ksm", state="unmerged")
    assert (result["changed"], result["unmerged"], result["after"]) == (True, True, {"state": "unmerged"})
    assert real_ksm.read("pages_shared") == 0 and real_ksm.read("run") == "unmerged"
    again = run_module("ksm", state="unmerged")
    assert (again["changed"], again["unmerged"]) == (False, False)


@pytest.mark.parametrize("name", ["merge_across_nodes", "max_page_sharing"])
def test_ebusy_knob_without_allow_unmerge_fails_and_changes_nothing(real_ksm, workload, run_module, name):
    present(real_ksm, name)
    before = ksm_values(real_ksm)
    target = other_value(name, before[name])
    result = run_module("ksm", **{name: target, "sleep_millisecs": 33})
    assert result["failed"]
    assert "bytes are merged now" in result["msg"] and "allow_unmerge: true" in result["msg"]
    assert "EBUSY" in result["msg"] and name in result["msg"]
    assert ksm_values(real_ksm) == before
    assert real_ksm.read("pages_shared") > 0


@pytest.mark.parametrize("name", ["merge_across_nodes", "max_page_sharing"])
def test_ebusy_knob_with_allow_unmerge(real_ksm, workload, run_module, name):
    present(real_ksm, name)
    before = ksm_values(real_ksm)
    target = other_value(name, before[name])
    args = {name: target, "allow_unmerge": True}
    check = run_module("ksm", check=True, **args)
    assert (check["failed"], check["changed"], check["unmerged"]) == (False, True, True)
    assert ksm_values(real_ksm) == before and real_ksm.read("pages_shared") > 0
    result = run_module("ksm", **args)
    assert not result["failed"], result.get("msg")
    assert (result["changed"], result["unmerged"], result["after"]) == (True, True, {name: target})
    assert real_ksm.read(name) == target
    assert real_ksm.read("run") == "running"  # the previous run state, restored
    assert dict(ksm_values(real_ksm), **{name: before[name]}) == before
    again = run_module("ksm", **args)
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
def test_bad_input_leaves_every_value(real_ksm, run_module, bad, words):
    before = ksm_values(real_ksm)
    args = dict({"state": other_value("run", before["run"]), "sleep_millisecs": before["sleep_millisecs"] + 3,
                 "use_zero_pages": not before["use_zero_pages"]}, **bad)
    result = run_module("ksm", **args)
    assert result["failed"] and words in result["msg"]
    assert "Traceback" not in result["msg"] and "\n" not in result["msg"]
    assert ksm_values(real_ksm) == before


def test_pages_to_scan_refused_under_the_host_advisor(real_ksm, run_module):
    present(real_ksm, "advisor_mode")
    assert not run_module("ksm", advisor_mode="scan-time")["failed"]
    before = ksm_values(real_ksm)
    result = run_module("ksm", pages_to_scan=before["pages_to_scan"] + 1)
    assert result["failed"] and "leave pages_to_scan unset or set advisor_mode: none" in result["msg"]
    assert ksm_values(real_ksm) == before
    leave = run_module("ksm", advisor_mode="none", pages_to_scan=1234)
    assert (leave["failed"], leave["changed"]) == (False, True)
    assert (real_ksm.read("advisor_mode"), real_ksm.read("pages_to_scan")) == ("none", 1234)


def test_advisor_numbers_without_advisor_warn(real_ksm, run_module):
    present(real_ksm, "advisor_max_cpu")
    result = run_module("ksm", advisor_max_cpu=other_value("advisor_max_cpu", real_ksm.read("advisor_max_cpu")))
    assert result["changed"]
    assert any("takes effect only while advisor_mode is scan-time" in w for w in result["warnings"])


def test_persist_to_a_tmp_file(real_ksm, run_module, tmp_path):
    persist = tmp_path / "tmpfiles.d" / "kvmhost-ksm.conf"
    sleep = real_ksm.read("sleep_millisecs") + 5
    args = {"sleep_millisecs": sleep, "state": "running", "persist": True, "persist_file": str(persist)}
    check = run_module("ksm", check=True, diff=True, **args)
    assert check["changed"] and not persist.exists()
    assert check["diff"][1]["before"] == "" and check["diff"][1]["before_header"] == str(persist)
    results = [run_module("ksm", **args), run_module("ksm", **args), run_module("ksm", check=True, **args)]
    assert [r["changed"] for r in results] == [True, False, False]
    lines = persist.read_text().splitlines()
    assert lines[1:] == [f"w /sys/kernel/mm/ksm/sleep_millisecs - - - - {sleep}", "w /sys/kernel/mm/ksm/run - - - - 1"]
    assert check["diff"][1]["after"] == persist.read_text()
    # the file alone changes: merged with what is there, run stays last
    more = run_module("ksm", diff=True, use_zero_pages=real_ksm.read("use_zero_pages"), persist=True,
                      persist_file=str(persist))
    assert more["changed"] and more["diff"][0]["before"] == more["diff"][0]["after"]
    assert persist.read_text().splitlines()[-1] == "w /sys/kernel/mm/ksm/run - - - - 1"
    assert len(persist.read_text().splitlines()) == 4


def test_diff_shape(real_ksm, run_module):
    before = {"pages_to_scan": real_ksm.read("pages_to_scan"), "state": real_ksm.read("run")}
    after = {"pages_to_scan": before["pages_to_scan"] + 11, "state": "running"}
    result = run_module("ksm", diff=True, **after)
    assert result["diff"] == [{"before": before, "after": after,
                               "before_header": "/sys/kernel/mm/ksm", "after_header": "/sys/kernel/mm/ksm"}]
    assert "diff" not in run_module("ksm", **after)


def test_persist_file_applies_with_systemd_tmpfiles(real_ksm, run_module, tmp_path):
    tmpfiles = shutil.which("systemd-tmpfiles")
    if not tmpfiles:
        print("skipping: systemd-tmpfiles is not installed here")
        pytest.skip("systemd-tmpfiles is not installed here")
    persist = tmp_path / "kvmhost-ksm.conf"
    want = {"sleep_millisecs": real_ksm.read("sleep_millisecs") + 9, "advisor_mode": "none",
            "pages_to_scan": real_ksm.read("pages_to_scan") + 9, "state": "running"}
    assert run_module("ksm", persist=True, persist_file=str(persist), **want)["changed"]
    for name, value in (("run", "stopped"), ("sleep_millisecs", want["sleep_millisecs"] - 5),
                        ("pages_to_scan", want["pages_to_scan"] - 5)):
        real_ksm.write(name, value)  # as after a reboot
    subprocess.run([tmpfiles, "--create", str(persist)], check=True)
    assert (real_ksm.read("sleep_millisecs"), real_ksm.read("pages_to_scan"), real_ksm.read("run")) == \
        (want["sleep_millisecs"], want["pages_to_scan"], "running")
