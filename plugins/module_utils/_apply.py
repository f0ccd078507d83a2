# -*- coding: utf-8 -*-
# Copyright (c) kvmhost.ksm contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

# Note that this module util is **PRIVATE** to the collection. It can have breaking changes at any time.
# Do not use this from other collections or standalone plugins/modules!

"""Applying a request to a KSM sysfs directory: read, validate, plan (_plan decides), then execute the plan.

Execution writes in the plan's order, retries a transient EBUSY, unmerges when the plan (or a race) needs it,
reads back and verifies, and on any failure (any exception, not only KsmError) rolls back what it wrote and raises
one KsmError that says what happened and what was rolled back. Rollback restores only what is still this run's: a
knob is put back only while it still holds the value this run wrote, so it never undoes another writer.
``converge`` is the whole sequence in one call (the test guard restores through it; with ``lock_file`` under the
host lock of _lock); the ksm module holds the lock itself and uses ``prepare`` and ``execute`` so that check mode
and the persist file fit between them. Runs on Python 3.6+.
"""

import errno
import os
import time
import typing as t

from ansible_collections.kvmhost.ksm.plugins.module_utils import _plan, _procfs, _sysfs
from ansible_collections.kvmhost.ksm.plugins.module_utils._lock import DEFAULT_TIMEOUT, host_lock, maybe_lock
from ansible_collections.kvmhost.ksm.plugins.module_utils._plan import Plan, Values, option, verify
from ansible_collections.kvmhost.ksm.plugins.module_utils._sysfs import KNOBS, KsmError, Sysfs, Value, format_value

__all__ = ["prepare", "converge", "execute", "rollback", "host_lock", "Record"]

EBUSY_ATTEMPTS = 5
EBUSY_DELAY = 0.2  # seconds between attempts: stable nodes of exiting processes can linger

Record = t.Dict[str, Value]  # knob -> the value this run wrote last (what rollback may still call its own)


def prepare(ksm: Sysfs,
            request: Values,
            allow_unmerge: bool,
            proc_root: str = _procfs.PROC_ROOT,
            problems: t.Optional[t.List[str]] = None) -> t.Tuple[Values, Plan]:
    """Read the current values, validate the whole request against them and plan; (current, plan). Writes nothing.

    problems: what the caller already found wrong with its other options; reported in the same message as the
    request's problems (every problem at once).
    """
    found = list(problems or [])
    release = _sysfs.kernel_release()
    current: t.Optional[Values] = None
    broken = _sysfs.root_problem(ksm.root)
    if broken is not None:
        found.append(broken)
    else:
        try:
            current = ksm.read_tunables()
        except KsmError as exc:
            found.append(str(exc))
    _plan.validate(request, current, ksm.root, release, found)  # raises unless current was read
    current = t.cast(Values, current)
    try:
        stats = ksm.read_statistics()
    except KsmError as exc:
        raise KsmError(_plan.refusal([str(exc)]), exc.errno) from None
    plan = _plan.make_plan(request, current, int(stats.get("pages_shared", 0)),
                           _plan.unmerge_bytes(stats, _procfs.page_size()), _procfs.mem_available(proc_root),
                           allow_unmerge, ksm.root)
    return current, plan


def converge(ksm: Sysfs, request: Values, allow_unmerge: bool = True, timeout: float = 120.0,
             proc_root: str = _procfs.PROC_ROOT, lock_file: t.Optional[str] = None,
             lock_timeout: float = DEFAULT_TIMEOUT) -> t.Tuple[Values, Values, bool]:
    """Make KSM under ksm.root hold the requested values; (before, after, unmerged). Raises KsmError.

    With lock_file, the whole sequence holds the host lock (waiting at most lock_timeout seconds); without it, no lock.
    """
    with maybe_lock(lock_file, lock_timeout):
        before, plan = prepare(ksm, request, allow_unmerge, proc_root)
        if not plan.changes(before):
            return before, before, False
        after, unmerged = execute(ksm, plan, request, before, timeout)
        return before, after, unmerged


def _write(ksm: Sysfs, name: str, value: Value, written: Record) -> None:
    """Write and record the value as this run's; after a failed write, what the kernel left is this run's too
    (a failed unmerge leaves run stopped)."""
    try:
        ksm.write(name, value)
    except Exception:
        try:
            written[name] = ksm.read(name)
        except Exception:  # the write's error is the one to report
            pass
        raise
    written[name] = value


def _write_busy(ksm: Sysfs, name: str, value: Value, plan: Plan, timeout: float, written: Record) -> bool:
    """Write an EBUSY knob, retrying a transient EBUSY; returns whether it had to unmerge."""
    unmerged = False
    for attempt in range(EBUSY_ATTEMPTS):
        try:
            _write(ksm, name, value, written)
            return unmerged
        except KsmError as exc:
            if exc.errno != errno.EBUSY or attempt == EBUSY_ATTEMPTS - 1:
                raise
        if plan.allow_unmerge and ksm.read("pages_shared"):
            _unmerge(ksm, timeout, written)
            unmerged = True
        time.sleep(EBUSY_DELAY)
    return unmerged


def _unmerge(ksm: Sysfs, timeout: float, written: Record) -> None:
    _write(ksm, "run", "unmerged", written)
    if not ksm.wait_unmerged(timeout):
        raise KsmError("Cannot unmerge KSM pages in {0}: pages_shared was still {1} after unmerge_timeout={2} s; "
                       "raise unmerge_timeout or retry when the host is less busy.".format(
                           ksm.root, ksm.read("pages_shared"), timeout), errno.ETIMEDOUT)


def execute(ksm: Sysfs,
            plan: Plan,
            request: Values,
            before: Values,
            timeout: float,
            finish: t.Optional[t.Callable[[], None]] = None) -> t.Tuple[Values, bool]:
    """Write the plan, read back and verify, then call finish (the persist file's move); on any failure of these,
    roll back what this run wrote and raise one KsmError. Returns (after, unmerged)."""
    touched: t.List[str] = []
    written: Record = {}
    unmerged = False
    try:
        if plan.first is not None:
            touched.append("run")
            if plan.unmerge:
                _unmerge(ksm, timeout, written)
                unmerged = True
            else:
                _write(ksm, "run", plan.first, written)
        for name, value in plan.writes:
            touched.append(name)
            if KNOBS[name].busy:
                touched.append("run")  # a retry may unmerge
                unmerged = _write_busy(ksm, name, value, plan, timeout, written) or unmerged
            else:
                _write(ksm, name, value, written)
                if name == "advisor_mode":
                    written["pages_to_scan"] = ksm.read("pages_to_scan")  # the kernel reset it: ours too
        if ksm.read("run") != plan.final_run:
            touched.append("run")
            _write(ksm, "run", plan.final_run, written)
        after = ksm.read_tunables()
        verify(request, after, ksm.root)
        if finish is not None:
            finish()
    except KsmError as exc:
        raise KsmError(_with_rollback(str(exc), rollback(ksm, touched, before, written)), exc.errno) from None
    except Exception as exc:  # anything else still rolls back (a broken tree, a bug): one sentence, no traceback
        happened = "Unexpected {0} while writing KSM in {1}: {2}".format(type(exc).__name__, ksm.root, exc)
        raise KsmError(_with_rollback(happened, rollback(ksm, touched, before, written)),
                       getattr(exc, "errno", None)) from None
    return after, unmerged


def rollback(ksm: Sysfs,
             touched: t.List[str],
             before: Values,
             written: t.Optional[Record] = None) -> t.Tuple[t.List[str], t.List[str], t.List[str]]:
    """Put touched knobs back while they still hold what this run wrote (written; None: treat every touched knob
    as ours). Returns (restored names, failures as 'name (reason)', knobs left alone as 'name (value)')."""
    restored: t.List[str] = []
    failed: t.List[str] = []
    foreign: t.List[str] = []
    for name, value in _plan.rollback_writes(touched, before):
        try:
            now = ksm.read(name)
            if now == value:
                continue
            if written is not None and (name not in written or now != written[name]):
                foreign.append("{0} alone: another writer changed it to {1}".format(
                    option(name), format_value(name, now)))
                continue
            ksm.write(name, value)
            restored.append("{0}={1}".format(option(name), format_value(name, value)))
            if name == "advisor_mode" and written is not None:
                written["pages_to_scan"] = ksm.read("pages_to_scan")  # this write reset it: still ours
        except KsmError as exc:
            failed.append("{0} ({1})".format(option(name), _reason(exc)))
        except Exception as exc:  # a rollback must try every knob
            failed.append("{0} ({1})".format(option(name), getattr(exc, "strerror", None) or exc))
    return restored, failed, foreign


def _reason(exc: KsmError) -> str:
    return os.strerror(exc.errno) if exc.errno else str(exc).rstrip(".")


def _with_rollback(message: str, outcome: t.Tuple[t.List[str], t.List[str], t.List[str]]) -> str:
    restored, failed, foreign = outcome
    message = message.rstrip(".")
    if restored:
        message += "; rolled back " + ", ".join(restored)
    if failed:
        message += "; could NOT roll back " + ", ".join(failed)
    if foreign:
        message += "; left " + ", left ".join(foreign)
    if not restored and not failed and not foreign:
        message += "; nothing had been changed"
    return message + "."
