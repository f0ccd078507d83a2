# Copyright (c) kvmhost.ksm contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Property-based tests of plan + execute (``_apply.converge``) against a model of the kernel (tests/unit/kernel_model).

For any state a kernel can be in and any request the module accepts: applying reaches the request without one
write the kernel refuses, leaves every knob it was not asked to manage as it was (but for the kernel's own reset of
pages_to_scan on a mode switch) and is idempotent. For a fault (EIO, ENOMEM, EBUSY, EINTR) injected at any write of
that run: the run either still reaches the request (a transient EBUSY is retried) or fails with one sentence and
leaves every knob as it was before (nobody else writes in this test, so all of them are still this run's).

Needs hypothesis (Python 3.11+ for the pinned version); without it the module is skipped with the reason shown.
"""

import errno
import inspect
import os
import shutil
import tempfile

import pytest

hypothesis = pytest.importorskip(
    "hypothesis", reason="hypothesis is not installed for this Python (tests/unit/requirements.txt pins it for "
    "Python 3.11+ only): the property-based tests of the planner do not run here")
st = pytest.importorskip("hypothesis.strategies")

from ansible_collections.kvmhost.ksm.plugins.module_utils import _apply, _sysfs  # noqa: E402
from ansible_collections.kvmhost.ksm.plugins.module_utils._sysfs import KNOBS, KsmError  # noqa: E402
from ansible_collections.kvmhost.ksm.tests.unit.kernel_model import KernelModel, layout_files  # noqa: E402

EXAMPLES = 200
FAULTS = (errno.EIO, errno.ENOMEM, errno.EBUSY, errno.EINTR)
SETTINGS = hypothesis.settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=False,
                               suppress_health_check=[hypothesis.HealthCheck.too_slow,
                                                      hypothesis.HealthCheck.filter_too_much])
FIGURES = {"examples": 0, "writes": 0, "faults": 0, "rolled_back": 0, "survived": 0}


def kernel_values(name):
    """Every value the kernel can hold in knob name (wider than what the module may request)."""
    knob = KNOBS[name]
    if knob.kind == "run":
        return st.sampled_from(_sysfs.RUN_STATES)
    if knob.kind == "enum":
        return st.sampled_from(_sysfs.ADVISOR_MODES)
    if knob.kind == "bool":
        return st.booleans()
    if name == "advisor_max_cpu":
        return st.integers(0, _sysfs.UINT_MAX)  # the kernel takes 0 and > 100
    return st.integers(knob.minimum, knob.maximum)


def requestable(name):
    """Every value the module accepts for knob name."""
    knob = KNOBS[name]
    if knob.kind in ("run", "enum", "bool"):
        return kernel_values(name)
    small = st.integers(knob.minimum, min(knob.maximum, knob.minimum + 1000))  # near the edge, often
    return st.one_of(small, st.integers(knob.minimum, knob.maximum), st.just(knob.maximum))


@st.composite
def hosts(draw):
    """(layout, numa, offline, tunables, pages_shared, pages_sharing) of a kernel in any reachable state."""
    layout = draw(st.sampled_from(("6.1", "6.8")))
    numa = draw(st.booleans())
    names = [n for n in layout_files(layout, numa) if n in KNOBS]
    values = dict((n, draw(kernel_values(n))) for n in names)
    shared = 0 if values["run"] == "unmerged" else draw(st.sampled_from((0, 0, 1, 37, 250)))
    sharing = shared * draw(st.integers(1, 4))
    return layout, numa, draw(st.booleans()), values, shared, sharing


@st.composite
def requests(draw, current):
    """A request the module must accept on a host whose knobs read current (ksm module rules, issue #10)."""
    names = draw(st.lists(st.sampled_from(sorted(current)), unique=True, max_size=len(current)))
    request = dict((n, draw(requestable(n))) for n in names)
    final = dict(current, **request)
    if final.get("advisor_mode", "none") != "none":
        request.pop("pages_to_scan", None)  # the module refuses it under the advisor
    low, high = "advisor_min_pages_to_scan", "advisor_max_pages_to_scan"
    if (low in request or high in request) and final[low] > final[high]:
        if low in request:
            request[low] = final[high]
        else:
            request[high] = final[low]
    return request


def fresh(top, host):
    layout, numa, offline, values, shared, sharing = host
    root = os.path.join(top, "ksm")
    shutil.rmtree(root, ignore_errors=True)
    return KernelModel.build(root, layout, numa, offline, pages_shared=shared, pages_sharing=sharing, **values)


def converge(model, request, lock):
    kwargs = {"allow_unmerge": True, "timeout": 1.0}
    if "lock_file" in inspect.signature(_apply.converge).parameters:
        kwargs["lock_file"] = lock  # the host lock, taken and released by each run
    return _apply.converge(model, request, **kwargs)


def expected_after(before, request):
    """The knobs after a successful run: the request, the rest as before but pages_to_scan moved by a mode switch."""
    expected = dict(before, **request)
    mode = request.get("advisor_mode")
    if mode is not None and mode != before.get("advisor_mode") and "pages_to_scan" not in request:
        expected["pages_to_scan"] = 100 if mode == "none" else expected["advisor_min_pages_to_scan"]
    return expected


def restored(model, before, touched_mode):
    """The knobs differ from before only where the kernel itself moved them (pages_to_scan when advisor_mode was
    switched and switched back: the kernel resets it to advisor_min_pages_to_scan)."""
    now = model.state()
    wrong = dict((n, (before[n], now[n])) for n in before if now[n] != before[n])
    if touched_mode and before.get("advisor_mode") == "scan-time" and "pages_to_scan" in wrong:
        if now["pages_to_scan"] == before["advisor_min_pages_to_scan"]:
            del wrong["pages_to_scan"]
    return wrong


@hypothesis.given(data=st.data())
@SETTINGS
def test_any_valid_request_reaches_its_values_and_survives_a_fault_at_any_write(data):
    top = tempfile.mkdtemp(prefix="kvmhost-model.")
    delay, _apply.EBUSY_DELAY = _apply.EBUSY_DELAY, 0  # the model has no lingering stable nodes to wait for
    try:
        host = data.draw(hosts(), label="host")
        model = fresh(top, host)
        before = model.state()
        request = data.draw(requests(before), label="request")
        lock = os.path.join(top, "ksm.lock")

        converge(model, request, lock)
        assert model.refused == [], "the kernel refused {0}".format(model.refused)
        assert model.state() == expected_after(before, request)
        clean_writes = model.writes
        FIGURES["examples"] += 1
        FIGURES["writes"] += clean_writes
        converge(model, request, lock)
        assert model.writes == clean_writes, "a second run wrote {0}".format(model.log[clean_writes:])

        fault = data.draw(st.sampled_from(FAULTS), label="errno")
        for k in range(1, clean_writes + 1):
            model = fresh(top, host)
            model.fail_at = (k, fault)
            FIGURES["faults"] += 1
            try:
                converge(model, request, lock)
            except KsmError as exc:
                message = str(exc)
                assert "\n" not in message and model.root in message, message
                touched_mode = any(n == "advisor_mode" for n, _t, _e in model.log)
                assert restored(model, before, touched_mode) == {}, (k, fault, message, model.log)
                FIGURES["rolled_back"] += 1
            else:
                assert model.state() == expected_after(before, request), (k, fault, model.log)
                FIGURES["survived"] += 1
            assert model.refused == [], (k, fault, model.refused)
    finally:
        _apply.EBUSY_DELAY = delay
        shutil.rmtree(top, ignore_errors=True)


def teardown_module(module):
    """The figures of the property test (plain pytest -s shows them; ansible-test forks each test away)."""
    if FIGURES["examples"]:
        print("\nmodel: {examples} hosts x requests, {writes} writes, {faults} faults injected ({rolled_back} rolled "
              "back to the before state, {survived} retried to the request)".format(**FIGURES))


def test_model_enforces_the_kernel_rules(tmp_path):
    """The model itself: a refusal for each rule the planner must respect."""
    model = KernelModel.build(str(tmp_path / "ksm"), "6.8", run="running", pages_shared=5, advisor_mode="scan-time",
                              advisor_min_pages_to_scan=700, offline=True)
    assert model.read("run") == "running" and model.read_text("run") == "5"
    refusals = [("merge_across_nodes", "0", errno.EBUSY), ("max_page_sharing", "300", errno.EBUSY),
                ("pages_to_scan", "100", errno.EINVAL), ("run", "3", errno.EINVAL),
                ("sleep_millisecs", " 5", errno.EINVAL),
                ("max_page_sharing", "1", errno.EINVAL), ("advisor_mode", "fast", errno.EINVAL),
                ("advisor_target_scan_time", "0", errno.EINVAL), ("use_zero_pages", "maybe", errno.EINVAL),
                ("sleep_millisecs", "4294967296", errno.EINVAL), ("merge_across_nodes", "99999999999999999999",
                                                                  errno.ERANGE)]
    for name, text, err in refusals:
        with pytest.raises(KsmError) as info:
            model.write_text(name, text)
        assert info.value.errno == err, (name, text)
    assert len(model.refused) == len(refusals)
    model.write_text("merge_across_nodes", "1\n")  # the value it holds: no EBUSY
    model.write_text("use_zero_pages", "on")
    model.write_text("advisor_mode", "none")
    assert model.value("pages_to_scan") == 100 and model.value("use_zero_pages") is True
    model.write_text("advisor_min_pages_to_scan", "800")
    model.write_text("advisor_mode", "scan-time")
    assert model.value("pages_to_scan") == 800
    model.write_text("run", "2")
    assert model.statistic("pages_shared") == 0 and model.value("run") == "unmerged"
    model.write_text("merge_across_nodes", "0")
    model.write_text("run", "1")
    model.fail_at = (model.writes + 1, errno.ENOMEM)
    with pytest.raises(KsmError):
        model.write_text("run", "2")
    assert model.value("run") == "stopped"  # a failed unmerge leaves run at 0
