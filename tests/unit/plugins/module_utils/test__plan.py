# Copyright (c) kvmhost.ksm contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Decision tables of the planner, and its execution on fake kernels with injected write faults."""

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


# ------------------------------------------------------------------------------------------------ persistence

def test_persist_text_new_file_in_safe_order_run_last():
    text = _plan.persist_text("", {"run": "running", "max_page_sharing": 512, "pages_to_scan": 1000,
                                   "advisor_mode": "none", "use_zero_pages": True}, ROOT)
    assert text.splitlines() == [
        _plan.PERSIST_HEADER,
        "w /sys/kernel/mm/ksm/advisor_mode - - - - none",
        "w /sys/kernel/mm/ksm/pages_to_scan - - - - 1000",
        "w /sys/kernel/mm/ksm/use_zero_pages - - - - 1",
        "w /sys/kernel/mm/ksm/max_page_sharing - - - - 512",
        "w /sys/kernel/mm/ksm/run - - - - 1",
    ]


def test_persist_text_merges_with_existing_entries():
    old = ("# my notes\n"
           "w /sys/kernel/mm/ksm/run - - - - 1\n"
           "w /sys/kernel/mm/ksm/sleep_millisecs - - - - 50\n"
           "w /sys/kernel/mm/transparent_hugepage/enabled - - - - never\n"
           "d /run/foo 0755 root root -\n")
    text = _plan.persist_text(old, {"sleep_millisecs": 10, "merge_across_nodes": False}, ROOT)
    assert text.splitlines() == [
        "# my notes",
        "w /sys/kernel/mm/ksm/sleep_millisecs - - - - 10",
        "w /sys/kernel/mm/ksm/merge_across_nodes - - - - 0",
        "w /sys/kernel/mm/ksm/run - - - - 1",
        "w /sys/kernel/mm/transparent_hugepage/enabled - - - - never",
        "d /run/foo 0755 root root -",
    ]
    assert _plan.persist_text(text, {"sleep_millisecs": 10}, ROOT) == text  # idempotent


def test_persist_text_drops_pages_to_scan_under_the_advisor():
    old = "w /sys/kernel/mm/ksm/pages_to_scan - - - - 1000\n"
    assert _plan.persist_text(old, {"advisor_mode": "scan-time"}, ROOT) == \
        "w /sys/kernel/mm/ksm/advisor_mode - - - - scan-time\n"


def test_persist_text_nothing_requested():
    assert _plan.persist_text("", {}, ROOT) == ""
    assert _plan.persist_text("# mine\n", {}, ROOT) == "# mine\n"


def test_persist_text_other_root_is_left_alone():
    old = "w /sys/kernel/mm/ksm/run - - - - 0\n"
    text = _plan.persist_text(old, {"run": "running"}, "/tmp/fake/ksm")
    assert text.splitlines() == ["w /sys/kernel/mm/ksm/run - - - - 0", "w /tmp/fake/ksm/run - - - - 1"]


def test_diff_shape():
    result = _plan.diff({"a": 1}, {"a": 2}, ROOT, ("/etc/x.conf", "", "w\n"))
    assert result == [dict(before={"a": 1}, after={"a": 2}, before_header=ROOT, after_header=ROOT),
                      dict(before="", after="w\n", before_header="/etc/x.conf", after_header="/etc/x.conf")]
    assert len(_plan.diff({}, {}, ROOT)) == 1


# ------------------------------------------------------------------------------------------------ execution

def run(ksm, request_, allow=False, shared=None, timeout=5):
    before = ksm.read_tunables()
    shared = ksm.read("pages_shared") if shared is None else shared
    plan = _plan.make_plan(request_, before, shared, 0, None, allow, ksm.root)
    return _plan.execute(ksm, plan, request_, before, timeout)


def test_execute_writes_in_plan_order_and_verifies(ksm_kernel):
    ksm = ksm_kernel("6.8")
    request_ = {"run": "running", "advisor_mode": "scan-time", "advisor_min_pages_to_scan": 700,
                "sleep_millisecs": 5, "max_page_sharing": 300}
    after, unmerged = run(ksm, request_)
    assert ksm.written() == ["advisor_min_pages_to_scan", "advisor_mode", "sleep_millisecs", "max_page_sharing",
                             "run"]
    assert dict((n, after[n]) for n in request_) == request_
    assert after["pages_to_scan"] == 700  # the kernel's reset on entering scan-time
    assert unmerged is False


def test_execute_ebusy_change_with_allow_unmerge(ksm_kernel):
    ksm = ksm_kernel("6.1", run="running", pages_shared=100, pages_sharing=300)
    after, unmerged = run(ksm, {"merge_across_nodes": False, "max_page_sharing": 1024}, allow=True)
    assert unmerged is True
    assert ksm.log == [("run", "2"), ("merge_across_nodes", "0"), ("max_page_sharing", "1024"), ("run", "1")]
    assert (after["merge_across_nodes"], after["max_page_sharing"], after["run"]) == (False, 1024, "running")


def test_execute_retries_transient_ebusy(ksm_kernel, monkeypatch):
    monkeypatch.setattr(_plan, "EBUSY_DELAY", 0)
    ksm = ksm_kernel("6.8", faults={"max_page_sharing": [errno.EBUSY, errno.EBUSY]})
    after, _unmerged = run(ksm, {"max_page_sharing": 100})
    assert ksm.written() == ["max_page_sharing"] * 3 and after["max_page_sharing"] == 100


def test_execute_ebusy_race_unmerges_when_allowed(ksm_kernel, monkeypatch):
    monkeypatch.setattr(_plan, "EBUSY_DELAY", 0)
    ksm = ksm_kernel("6.8", run="running", pages_shared=5)
    after, unmerged = run(ksm, {"max_page_sharing": 100}, allow=True, shared=0)  # merged after we looked
    assert unmerged is True and after["max_page_sharing"] == 100 and after["run"] == "running"
    assert ksm.written() == ["run", "max_page_sharing", "run", "max_page_sharing", "run"]


def test_execute_ebusy_race_then_failure_restores_run(ksm_kernel, monkeypatch):
    monkeypatch.setattr(_plan, "EBUSY_DELAY", 0)
    ksm = ksm_kernel("6.8", run="stopped", pages_shared=5, faults={"max_page_sharing": errno.EIO})
    with pytest.raises(KsmError) as info:
        run(ksm, {"merge_across_nodes": False, "max_page_sharing": 100}, allow=True, shared=0)
    assert ksm.written()[:3] == ["merge_across_nodes", "run", "merge_across_nodes"]  # EBUSY, unmerge, retry
    assert str(info.value).endswith("; rolled back merge_across_nodes=1, state=0.")
    assert ksm.read("run") == "stopped"


def test_execute_persistent_ebusy_rolls_back(ksm_kernel, monkeypatch):
    monkeypatch.setattr(_plan, "EBUSY_DELAY", 0)
    ksm = ksm_kernel("6.8", run="running", faults={"merge_across_nodes": errno.EBUSY})
    before = ksm.read_tunables()
    with pytest.raises(KsmError) as info:
        run(ksm, {"sleep_millisecs": 7, "merge_across_nodes": False})
    message = str(info.value)
    assert info.value.errno == errno.EBUSY
    assert "refuses to change merge_across_nodes" in message
    assert message.endswith("; rolled back sleep_millisecs=20, state=1.")
    assert ksm.read_tunables() == before


@pytest.mark.parametrize("fault, at, words, restored", [
    (errno.EINVAL, "use_zero_pages", "rejected the value", "advisor_max_cpu=70, advisor_mode=none, "
                                                           "sleep_millisecs=20"),
    (errno.EROFS, "advisor_max_cpu", "read-only, which looks like a container", None),
    (errno.EACCES, "advisor_max_cpu", "only be changed by root", None),
    (errno.EINTR, "run", "interrupted by a signal", "advisor_max_cpu=70, advisor_mode=none, "
                                                    "sleep_millisecs=20, use_zero_pages=0"),
])
def test_execute_fault_midway_rolls_back(ksm_kernel, fault, at, words, restored):
    ksm = ksm_kernel("6.8", faults={at: fault})
    before = ksm.read_tunables()
    with pytest.raises(KsmError) as info:
        run(ksm, {"advisor_max_cpu": 20, "advisor_mode": "scan-time", "sleep_millisecs": 1,
                  "use_zero_pages": True, "run": "running"})
    message = str(info.value)
    assert info.value.errno == fault and words in message
    if restored:
        assert message.endswith("; rolled back " + restored + ".")
    else:
        assert message.endswith("; nothing had been changed.")
    assert ksm.read_tunables() == before
    assert message.count(". ") == 0


def test_execute_unmerge_interrupted_leaves_previous_state(ksm_kernel):
    ksm = ksm_kernel("6.8", run="running", pages_shared=10, faults={"run": errno.EINTR})
    with pytest.raises(KsmError, match="interrupted by a signal.*nothing had been changed"):
        run(ksm, {"run": "unmerged"})
    assert ksm.read("run") == "running"


def test_execute_rollback_failure_is_reported(ksm_kernel):
    ksm = ksm_kernel("6.8", faults={"smart_scan": errno.EINVAL, "sleep_millisecs": [None, errno.EIO]})
    with pytest.raises(KsmError) as info:
        run(ksm, {"sleep_millisecs": 1, "smart_scan": False})
    assert str(info.value).endswith("; could NOT roll back sleep_millisecs (Input/output error).")


class StuckKernel(Sysfs):
    """A kernel whose unmerge never finishes."""

    def write_text(self, name, text):
        super(StuckKernel, self).write_text(name, text)


def test_execute_unmerge_timeout(ksm_tree):
    ksm = StuckKernel(ksm_tree("6.8", run="running", pages_shared=3))
    with pytest.raises(KsmError) as info:
        run(ksm, {"run": "unmerged"}, timeout=0)
    assert "pages_shared was still 3 after unmerge_timeout=0 s" in str(info.value)
    assert str(info.value).endswith("; rolled back state=1.")
    assert ksm.read("run") == "running"


def test_execute_verify_mismatch_rolls_back(ksm_tree):
    class Forgetful(Sysfs):
        def write_text(self, name, text):
            if name != "sleep_millisecs":
                super(Forgetful, self).write_text(name, text)

    ksm = Forgetful(ksm_tree("6.8"))
    with pytest.raises(KsmError) as info:
        run(ksm, {"sleep_millisecs": 1, "pages_to_scan": 9})
    assert "did not keep the written values (sleep_millisecs: wanted 1, read back 20)" in str(info.value)
    assert ksm.read("pages_to_scan") == 100
