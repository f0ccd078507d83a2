# -*- coding: utf-8 -*-
# Copyright (c) kvmhost.ksm contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

# Note that this module util is **PRIVATE** to the collection. It can have breaking changes at any time.
# Do not use this from other collections or standalone plugins/modules!

"""Applying a request to a KSM sysfs directory: read, validate, plan (_plan decides), then execute the plan.

Execution writes in the plan's order, retries a transient EBUSY, unmerges when the plan (or a race) needs it,
reads back and verifies, and on any failure rolls back what it touched and raises one KsmError that says what was
rolled back. ``converge`` is the whole sequence in one call (the test guard restores through it); the ksm module
uses ``prepare`` and ``execute`` so that check mode and the persist file fit between them. Runs on Python 3.6+.
"""

import errno
import os
import time
import typing as t

from ansible_collections.kvmhost.ksm.plugins.module_utils import _plan, _procfs, _sysfs
from ansible_collections.kvmhost.ksm.plugins.module_utils._plan import Plan, Values, option, verify
from ansible_collections.kvmhost.ksm.plugins.module_utils._sysfs import KNOBS, KsmError, Sysfs, Value, format_value

EBUSY_ATTEMPTS = 5
EBUSY_DELAY = 0.2  # seconds between attempts: stable nodes of exiting processes can linger


def prepare(ksm, request, allow_unmerge, proc_root=_procfs.PROC_ROOT):
    # type: (Sysfs, Values, bool, str) -> t.Tuple[Values, Plan]
    """Read the current values, validate the whole request against them and plan; (current, plan). Writes nothing."""
    current = ksm.read_tunables()
    _plan.validate(request, current, ksm.root, _sysfs.kernel_release())
    stats = ksm.read_statistics()
    plan = _plan.make_plan(request, current, int(stats.get("pages_shared", 0)),
                           _plan.unmerge_bytes(stats, _procfs.page_size()), _procfs.mem_available(proc_root),
                           allow_unmerge, ksm.root)
    return current, plan


def converge(ksm, request, allow_unmerge=True, timeout=120.0, proc_root=_procfs.PROC_ROOT):
    # type: (Sysfs, Values, bool, float, str) -> t.Tuple[Values, Values, bool]
    """Make KSM under ksm.root hold the requested values; (before, after, unmerged). Raises KsmError."""
    before, plan = prepare(ksm, request, allow_unmerge, proc_root)
    if not plan.changes(before):
        return before, before, False
    after, unmerged = execute(ksm, plan, request, before, timeout)
    return before, after, unmerged


def _write_busy(ksm, name, value, plan, timeout):
    # type: (Sysfs, str, Value, Plan, float) -> bool
    """Write an EBUSY knob, retrying a transient EBUSY; returns whether it had to unmerge."""
    unmerged = False
    for attempt in range(EBUSY_ATTEMPTS):
        try:
            ksm.write(name, value)
            return unmerged
        except KsmError as exc:
            if exc.errno != errno.EBUSY or attempt == EBUSY_ATTEMPTS - 1:
                raise
        if plan.allow_unmerge and ksm.read("pages_shared"):
            _unmerge(ksm, timeout)
            unmerged = True
        time.sleep(EBUSY_DELAY)
    return unmerged


def _unmerge(ksm, timeout):
    # type: (Sysfs, float) -> None
    ksm.write("run", "unmerged")
    if not ksm.wait_unmerged(timeout):
        raise KsmError("Cannot unmerge KSM pages in {0}: pages_shared was still {1} after unmerge_timeout={2} s; "
                       "raise unmerge_timeout or retry when the host is less busy.".format(
                           ksm.root, ksm.read("pages_shared"), timeout), errno.ETIMEDOUT)


def execute(ksm, plan, request, before, timeout):
    # type: (Sysfs, Plan, Values, Values, float) -> t.Tuple[Values, bool]
    """Write the plan, read back and verify; on any failure roll back and raise. Returns (after, unmerged)."""
    touched = []  # type: t.List[str]
    unmerged = False
    try:
        if plan.first is not None:
            touched.append("run")
            if plan.unmerge:
                _unmerge(ksm, timeout)
                unmerged = True
            else:
                ksm.write("run", plan.first)
        for name, value in plan.writes:
            touched.append(name)
            if KNOBS[name].busy:
                touched.append("run")  # a retry may unmerge
                unmerged = _write_busy(ksm, name, value, plan, timeout) or unmerged
            else:
                ksm.write(name, value)
        if ksm.read("run") != plan.final_run:
            touched.append("run")
            ksm.write("run", plan.final_run)
        after = ksm.read_tunables()
        verify(request, after, ksm.root)
    except KsmError as exc:
        raise KsmError(_with_rollback(str(exc), rollback(ksm, touched, before)), exc.errno)
    return after, unmerged


def rollback(ksm, touched, before):
    # type: (Sysfs, t.List[str], Values) -> t.Tuple[t.List[str], t.List[str]]
    """Put touched knobs back; returns (restored names, failures as 'name (reason)')."""
    restored, failed = [], []  # type: t.List[str], t.List[str]
    for name, value in _plan.rollback_writes(touched, before):
        try:
            if ksm.read(name) != value:
                ksm.write(name, value)
                restored.append("{0}={1}".format(option(name), format_value(name, value)))
        except (KsmError, IOError, OSError) as exc:
            failed.append("{0} ({1})".format(option(name), os.strerror(getattr(exc, "errno", 0) or 0)))
    return restored, failed


def _with_rollback(message, outcome):
    # type: (str, t.Tuple[t.List[str], t.List[str]]) -> str
    restored, failed = outcome
    message = message.rstrip(".")
    if restored:
        message += "; rolled back " + ", ".join(restored)
    if failed:
        message += "; could NOT roll back " + ", ".join(failed)
    if not restored and not failed:
        message += "; nothing had been changed"
    return message + "."
