# Copyright (c) kvmhost.ksm contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Executing plans on fake kernels with injected write faults: order, EBUSY retries, unmerging, rollback, converge."""

import errno

import pytest

from ansible_collections.kvmhost.ksm.plugins.module_utils import _apply, _plan
from ansible_collections.kvmhost.ksm.plugins.module_utils._sysfs import KsmError, Sysfs


# ------------------------------------------------------------------------------------------------ execute

def run(ksm, request_, allow=False, shared=None, timeout=5):
    before = ksm.read_tunables()
    shared = ksm.read("pages_shared") if shared is None else shared
    plan = _plan.make_plan(request_, before, shared, 0, None, allow, ksm.root)
    return _apply.execute(ksm, plan, request_, before, timeout)


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
    monkeypatch.setattr(_apply, "EBUSY_DELAY", 0)
    ksm = ksm_kernel("6.8", faults={"max_page_sharing": [errno.EBUSY, errno.EBUSY]})
    after, _unmerged = run(ksm, {"max_page_sharing": 100})
    assert ksm.written() == ["max_page_sharing"] * 3 and after["max_page_sharing"] == 100


def test_execute_ebusy_race_unmerges_when_allowed(ksm_kernel, monkeypatch):
    monkeypatch.setattr(_apply, "EBUSY_DELAY", 0)
    ksm = ksm_kernel("6.8", run="running", pages_shared=5)
    after, unmerged = run(ksm, {"max_page_sharing": 100}, allow=True, shared=0)  # merged after we looked
    assert unmerged is True and after["max_page_sharing"] == 100 and after["run"] == "running"
    assert ksm.written() == ["run", "max_page_sharing", "run", "max_page_sharing", "run"]


def test_execute_ebusy_race_then_failure_restores_run(ksm_kernel, monkeypatch):
    monkeypatch.setattr(_apply, "EBUSY_DELAY", 0)
    ksm = ksm_kernel("6.8", run="stopped", pages_shared=5, faults={"max_page_sharing": errno.EIO})
    with pytest.raises(KsmError) as info:
        run(ksm, {"merge_across_nodes": False, "max_page_sharing": 100}, allow=True, shared=0)
    assert ksm.written()[:3] == ["merge_across_nodes", "run", "merge_across_nodes"]  # EBUSY, unmerge, retry
    assert str(info.value).endswith("; rolled back merge_across_nodes=1, state=0.")
    assert ksm.read("run") == "stopped"


def test_execute_persistent_ebusy_rolls_back(ksm_kernel, monkeypatch):
    monkeypatch.setattr(_apply, "EBUSY_DELAY", 0)
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
    (errno.EROFS, "advisor_max_cpu", "on a file system mounted read-only", None),  # not under /sys: no container
    (errno.EACCES, "advisor_max_cpu", "permission denied", None),  # the remedy by euid: test__sysfs
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


def test_execute_unmerge_timeout(ksm_tree):
    # a plain Sysfs over a fake tree: writing run=2 leaves pages_shared as it is, like an unmerge that never ends
    ksm = Sysfs(ksm_tree("6.8", run="running", pages_shared=3))
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


# ------------------------------------------------------------------------------------------------ converge

def test_converge_restores_a_snapshot_through_the_planner(ksm_kernel, tmp_path):
    ksm = ksm_kernel("6.8", run="running", pages_shared=10, pages_sharing=30, advisor_mode="scan-time",
                     pages_to_scan=500)
    saved = ksm.read_tunables()
    ksm.write("advisor_mode", "none")  # the kernel resets pages_to_scan to 100
    ksm.write("sleep_millisecs", 5)
    ksm._set("merge_across_nodes", "0")  # changed while nothing was merged; EBUSY to change back now
    ksm.log = []
    before, after, unmerged = _apply.converge(ksm, _plan.restorable(saved), proc_root=str(tmp_path))
    assert (before["advisor_mode"], before["pages_to_scan"], before["merge_across_nodes"]) == ("none", 100, False)
    assert after == saved and unmerged is True
    assert ksm.log == [("run", "2"), ("advisor_mode", "scan-time"), ("sleep_millisecs", "20"),
                       ("merge_across_nodes", "1"), ("run", "1")]


def test_converge_without_changes_writes_nothing(ksm_kernel, tmp_path):
    ksm = ksm_kernel("6.8", run="running")
    saved = ksm.read_tunables()
    assert _apply.converge(ksm, saved, proc_root=str(tmp_path)) == (saved, saved, False)
    assert ksm.log == []


def test_converge_validates_the_whole_request_first(ksm_kernel, tmp_path):
    ksm = ksm_kernel("6.8")
    with pytest.raises(KsmError, match="nothing was written"):
        _apply.converge(ksm, {"sleep_millisecs": 5, "advisor_mode": "scan-time", "pages_to_scan": 10},
                        proc_root=str(tmp_path))
    assert ksm.log == []


def test_converge_refuses_ebusy_change_without_allow_unmerge(ksm_kernel, tmp_path):
    ksm = ksm_kernel("6.8", run="running", pages_shared=10, pages_sharing=30)
    with pytest.raises(KsmError) as info:
        _apply.converge(ksm, {"max_page_sharing": 512}, allow_unmerge=False, proc_root=str(tmp_path))
    assert info.value.errno == errno.EBUSY and ksm.log == []


def test_converge_checks_memory_before_unmerging(ksm_kernel, tmp_path):
    (tmp_path / "meminfo").write_text(u"MemAvailable:       4 kB\n")
    ksm = ksm_kernel("6.8", run="running", pages_shared=10, pages_sharing=30)
    with pytest.raises(KsmError, match="MemAvailable is only 4096 bytes"):
        _apply.converge(ksm, {"run": "unmerged"}, proc_root=str(tmp_path))
    assert ksm.log == []


@pytest.mark.parametrize("name, text", [
    ("run", "3"), ("merge_across_nodes", "2"), ("max_page_sharing", "1"), ("advisor_mode", "fast"),
    ("sleep_millisecs", "-1"), ("pages_to_scan", "10\n"), ("use_zero_pages", "yes"),
])
def test_fake_kernel_refuses_what_the_kernel_refuses(ksm_kernel, name, text):
    ksm = ksm_kernel("6.8")
    before = ksm.read_tunables()
    with pytest.raises(KsmError) as info:
        ksm.write_text(name, text)
    assert info.value.errno == errno.EINVAL and ksm.read_tunables() == before
