# Copyright (c) kvmhost.ksm contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Decision tables of the planner: validation, warnings, order, the unmerge plan, rollback and restore sets."""

import errno

import pytest

from ansible_collections.kvmhost.ksm.plugins.module_utils import _plan
from ansible_collections.kvmhost.ksm.plugins.module_utils._sysfs import KsmError, Sysfs

ROOT = "/sys/kernel/mm/ksm"
RELEASE = "4.18.0-553.el8.x86_64"


def current_of(ksm_tree, layout="6.8", numa=True, **values):
    return Sysfs(ksm_tree(layout, numa, **values)).read_tunables()


def test_requested_maps_state_to_run_and_skips_unset():
    params = dict(state="running", pages_to_scan=0, merge_across_nodes=False, smart_scan=None,
                  allow_unmerge=True, persist=False, sysfs_path=ROOT)
    assert _plan.requested(params) == {"run": "running", "pages_to_scan": 0, "merge_across_nodes": False}


def test_by_option_names_run_state():
    assert _plan.by_option({"run": "running", "use_zero_pages": True, "x": 1}, ["run", "use_zero_pages"]) == \
        {"state": "running", "use_zero_pages": True}


# ------------------------------------------------------------------------------------------------ validation

@pytest.mark.parametrize("layout, numa, request_, values, words", [
    ("6.8", True, {"pages_to_scan": 1000, "run": "running"}, {}, None),
    ("6.8", True, {"advisor_mode": "scan-time", "advisor_max_cpu": 100}, {}, None),
    ("4.18", True, {"advisor_mode": "scan-time"}, {},
     ["advisor_mode", RELEASE, ROOT + "/advisor_mode", "6.8", "leave advisor_mode unset"]),
    ("6.1", True, {"smart_scan": False}, {}, ["kernel " + RELEASE + " has no " + ROOT + "/smart_scan"]),
    ("6.8", False, {"merge_across_nodes": False}, {}, ["has no " + ROOT + "/merge_across_nodes"]),
    ("6.8", True, {"advisor_max_cpu": 0}, {}, ["advisor_max_cpu=0", "between 1 and 100"]),
    ("6.8", True, {"advisor_max_cpu": 101}, {}, ["between 1 and 100"]),
    ("6.8", True, {"max_page_sharing": 1}, {}, ["max_page_sharing=1", "between 2 and 2147483647"]),
    ("6.8", True, {"pages_to_scan": 4294967296}, {}, ["between 0 and 4294967295"]),
    ("6.8", True, {"pages_to_scan": -1}, {}, ["pages_to_scan=-1"]),
    ("6.8", True, {"sleep_millisecs": True}, {}, ["sleep_millisecs=True"]),
    ("6.8", True, {"advisor_target_scan_time": 0}, {}, ["advisor_target_scan_time=0"]),
    ("6.8", True, {"advisor_mode": "fast"}, {}, ["one of none, scan-time"]),
    ("6.8", True, {"run": "on"}, {}, ["state='on'", "one of stopped, running, unmerged"]),
    ("6.8", True, {"use_zero_pages": 1}, {}, ["use_zero_pages=1"]),
    # pages_to_scan conflicts with the FINAL advisor mode
    ("6.8", True, {"pages_to_scan": 100, "advisor_mode": "scan-time"}, {}, ["pages_to_scan while advisor_mode"]),
    ("6.8", True, {"pages_to_scan": 100}, {"advisor_mode": "scan-time"}, ["leave pages_to_scan unset"]),
    ("6.8", True, {"pages_to_scan": 100, "advisor_mode": "none"}, {"advisor_mode": "scan-time"}, None),
    # advisor min <= max, also against the host's current value
    ("6.8", True, {"advisor_min_pages_to_scan": 40000}, {}, ["40000 above advisor_max_pages_to_scan=30000",
                                                             "current value"]),
    ("6.8", True, {"advisor_max_pages_to_scan": 400}, {}, ["advisor_min_pages_to_scan=500 above",
                                                           "requested value"]),
    ("6.8", True, {"advisor_min_pages_to_scan": 40000, "advisor_max_pages_to_scan": 50000}, {}, None),
    ("6.8", True, {"advisor_max_pages_to_scan": 100}, {"advisor_min_pages_to_scan": 100}, None),
])
def test_problems(ksm_tree, layout, numa, request_, values, words):
    found = _plan.problems(request_, current_of(ksm_tree, layout, numa, **values), ROOT, RELEASE)
    if words is None:
        assert found == []
        return
    assert len(found) == 1
    for word in words:
        assert word in found[0]
    assert found[0].endswith("nothing was written.")


def test_problems_lists_every_problem(ksm_tree):
    found = _plan.problems({"advisor_max_cpu": 0, "smart_scan": True, "max_page_sharing": 1},
                           current_of(ksm_tree, "4.18"), ROOT, RELEASE)
    assert len(found) == 3


def test_validate_without_ksm():
    with pytest.raises(KsmError, match="KSM is not available: /x/run does not exist, so kernel 5.0 was built "
                                       "without CONFIG_KSM") as info:
        _plan.validate({}, {}, "/x", "5.0")
    assert info.value.errno == errno.ENOENT


# ------------------------------------------------------------------------------------------------ warnings

@pytest.mark.parametrize("request_, values, pids, words", [
    ({"sleep_millisecs": 10}, {}, [812], ["ksmtuned is running (pid 812)", "sleep_millisecs"]),
    ({"run": "running", "pages_to_scan": 5}, {}, [1, 2], ["pid 1, 2", "state, pages_to_scan"]),
    ({"use_zero_pages": True}, {}, [812], []),
    ({"sleep_millisecs": 10}, {}, [], []),
    ({"advisor_max_cpu": 20}, {}, [], ["advisor_max_cpu takes effect only while advisor_mode is scan-time"]),
    ({"advisor_max_cpu": 20, "advisor_mode": "none"}, {"advisor_mode": "scan-time"}, [], ["advisor_max_cpu"]),
    ({"advisor_max_cpu": 20, "advisor_mode": "scan-time"}, {}, [], []),
    ({"advisor_max_cpu": 20}, {"advisor_mode": "scan-time"}, [], []),
])
def test_warnings(ksm_tree, request_, values, pids, words):
    found = " ".join(_plan.warnings(request_, current_of(ksm_tree, **values), pids))
    for word in words:
        assert word in found
    if not words:
        assert found == ""


# ------------------------------------------------------------------------------------------------ planning

@pytest.mark.parametrize("request_, values, expected", [
    ({"pages_to_scan": 100, "sleep_millisecs": 20}, {}, []),
    ({"pages_to_scan": 1000, "advisor_max_cpu": 20, "run": "running"}, {}, ["advisor_max_cpu", "pages_to_scan"]),
    ({"advisor_mode": "none"}, {"advisor_mode": "scan-time"}, ["advisor_mode"]),
    # leaving the advisor resets pages_to_scan to 100, so an equal value is written again after the switch
    ({"advisor_mode": "none", "pages_to_scan": 500}, {"advisor_mode": "scan-time", "pages_to_scan": 500},
     ["advisor_mode", "pages_to_scan"]),
    ({"advisor_mode": "none", "pages_to_scan": 100}, {"advisor_mode": "scan-time", "pages_to_scan": 500},
     ["advisor_mode"]),
    ({"merge_across_nodes": True, "max_page_sharing": 256, "use_zero_pages": False, "smart_scan": True}, {}, []),
    ({"max_page_sharing": 512, "merge_across_nodes": False, "sleep_millisecs": 5, "advisor_min_pages_to_scan": 1},
     {}, ["advisor_min_pages_to_scan", "sleep_millisecs", "merge_across_nodes", "max_page_sharing"]),
])
def test_differences_in_safe_order(ksm_tree, request_, values, expected):
    assert _plan.differences(request_, current_of(ksm_tree, **values)) == expected


MIB = 1024 * 1024


@pytest.mark.parametrize("request_, values, shared, allow, first, writes, final", [
    # nothing to do
    ({"run": "running", "pages_to_scan": 100}, {"run": "running"}, 10, False, None, [], "running"),
    # start: knobs first, run last
    ({"run": "running", "sleep_millisecs": 5}, {}, 0, False, None, ["sleep_millisecs"], "running"),
    # stop: run first
    ({"run": "stopped", "sleep_millisecs": 5}, {"run": "running"}, 0, False, "stopped", ["sleep_millisecs"],
     "stopped"),
    # unmerge: run=2 first, even with EBUSY knobs and without allow_unmerge
    ({"run": "unmerged", "merge_across_nodes": False}, {"run": "running"}, 10, False, "unmerged",
     ["merge_across_nodes"], "unmerged"),
    ({"run": "unmerged"}, {"run": "unmerged"}, 0, False, None, [], "unmerged"),
    # EBUSY knob while merged, allowed: unmerge first, restore the previous run state last
    ({"max_page_sharing": 512}, {"run": "running"}, 10, True, "unmerged", ["max_page_sharing"], "running"),
    ({"max_page_sharing": 512}, {"run": "stopped"}, 10, True, "unmerged", ["max_page_sharing"], "stopped"),
    ({"max_page_sharing": 512, "run": "stopped"}, {"run": "running"}, 10, True, "unmerged",
     ["max_page_sharing"], "stopped"),
    # EBUSY knob with nothing merged while ksmd runs: pause ksmd around it, no unmerge
    ({"merge_across_nodes": False}, {"run": "running"}, 0, False, "stopped", ["merge_across_nodes"], "running"),
    ({"merge_across_nodes": False}, {"run": "stopped"}, 0, False, None, ["merge_across_nodes"], "stopped"),
    # EBUSY knob unchanged: merged pages do not matter
    ({"merge_across_nodes": True, "max_page_sharing": 256}, {"run": "running"}, 10, False, None, [], "running"),
])
def test_make_plan(ksm_tree, request_, values, shared, allow, first, writes, final):
    current = current_of(ksm_tree, **values)
    plan = _plan.make_plan(request_, current, shared, 40 * MIB, 1024 * MIB, allow, ROOT)
    assert (plan.first, [n for n, _v in plan.writes], plan.final_run) == (first, writes, final)
    assert plan.unmerge == (first == "unmerged")
    assert plan.changes(current) == bool(first or writes or final != current["run"])


def test_make_plan_refuses_ebusy_change_without_allow_unmerge(ksm_tree):
    with pytest.raises(KsmError) as info:
        _plan.make_plan({"merge_across_nodes": False}, current_of(ksm_tree, run="running"), 10, 40 * MIB, None,
                        False, ROOT)
    message = str(info.value)
    assert info.value.errno == errno.EBUSY
    for word in ("merge_across_nodes in " + ROOT + " from 1 to 0", "41943040 bytes are merged now", "EBUSY",
                 "allow_unmerge: true", "nothing was written."):
        assert word in message


@pytest.mark.parametrize("request_, allow", [({"max_page_sharing": 300}, True), ({"run": "unmerged"}, False)])
def test_make_plan_refuses_unmerge_without_memory(ksm_tree, request_, allow):
    with pytest.raises(KsmError) as info:
        _plan.make_plan(request_, current_of(ksm_tree, run="running"), 10, 40 * MIB, 8 * MIB, allow, ROOT)
    assert "needs about 41943040 bytes but MemAvailable is only 8388608 bytes" in str(info.value)


def test_make_plan_unmerges_when_memory_unknown(ksm_tree):
    plan = _plan.make_plan({"run": "unmerged"}, current_of(ksm_tree), 10, 40 * MIB, None, False, ROOT)
    assert plan.unmerge


@pytest.mark.parametrize("touched, values, expected", [
    (["sleep_millisecs", "pages_to_scan"], {}, [("pages_to_scan", 100), ("sleep_millisecs", 20)]),
    (["run", "max_page_sharing", "run"], {"run": "running"}, [("max_page_sharing", 256), ("run", "running")]),
    # a mode switch moved pages_to_scan: put it back after the mode
    (["advisor_mode"], {"pages_to_scan": 3000}, [("advisor_mode", "none"), ("pages_to_scan", 3000)]),
    # back under the advisor, pages_to_scan is not writable
    (["advisor_mode", "pages_to_scan"], {"advisor_mode": "scan-time"}, [("advisor_mode", "scan-time")]),
])
def test_rollback_writes(ksm_tree, touched, values, expected):
    assert _plan.rollback_writes(touched, current_of(ksm_tree, **values)) == expected


# ------------------------------------------------------------------------------------------------ restoring

@pytest.mark.parametrize("values, expected", [
    ({"advisor_mode": "none", "pages_to_scan": 100, "run": "running"},
     {"advisor_mode": "none", "pages_to_scan": 100, "run": "running"}),
    # the advisor sets pages_to_scan and the kernel refuses writes to it
    ({"advisor_mode": "scan-time", "pages_to_scan": 500, "run": "running"},
     {"advisor_mode": "scan-time", "run": "running"}),
    ({"pages_to_scan": 100, "run": "stopped"}, {"pages_to_scan": 100, "run": "stopped"}),  # kernels before 6.8
])
def test_restorable(values, expected):
    assert _plan.restorable(values) == expected


def test_restorable_snapshot_validates_and_is_a_copy(ksm_tree):
    snapshot = current_of(ksm_tree, advisor_mode="scan-time", pages_to_scan=500)
    writable = _plan.restorable(snapshot)
    assert _plan.problems(snapshot, snapshot, ROOT, RELEASE) != []  # the raw snapshot is refused
    assert _plan.problems(writable, snapshot, ROOT, RELEASE) == []
    writable["run"] = "running"
    assert snapshot["run"] == "stopped"


@pytest.mark.parametrize("mode, owned", [("none", False), ("scan-time", True), (None, False)])
def test_advisor_owns_pages_to_scan(mode, owned):
    assert _plan.advisor_owns_pages_to_scan(mode) is owned


@pytest.mark.parametrize("stats, page, needed", [
    ({"pages_sharing": 10, "ksm_zero_pages": 5}, 4096, 15 * 4096),
    ({"pages_sharing": 10}, 65536, 10 * 65536),  # before 6.5 there is no ksm_zero_pages
    ({"pages_sharing": 0, "ksm_zero_pages": -1}, 4096, 0),  # printed signed; never count below 0
])
def test_unmerge_bytes(stats, page, needed):
    assert _plan.unmerge_bytes(stats, page) == needed


# ------------------------------------------------------------------------------------------------ checking

def test_diff_shape():
    result = _plan.diff({"a": 1}, {"a": 2}, ROOT, ("/etc/x.conf", "", "w\n"))
    assert result == [dict(before={"a": 1}, after={"a": 2}, before_header=ROOT, after_header=ROOT),
                      dict(before="", after="w\n", before_header="/etc/x.conf", after_header="/etc/x.conf")]
    assert len(_plan.diff({}, {}, ROOT)) == 1
