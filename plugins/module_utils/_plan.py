# -*- coding: utf-8 -*-
# Copyright (c) kvmhost.ksm contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

# Note that this module util is **PRIVATE** to the collection. It can have breaking changes at any time.
# Do not use this from other collections or standalone plugins/modules!

"""Decisions of the ksm module: what is requested, whether it is valid, what to write in which order, how to undo it.

Pure: everything here works on typed values (dicts of knob name -> value as _sysfs parses them), with no I/O and
no sleeps; _apply executes the plans against a ``_sysfs.Sysfs``. The order and its reasons are in the kernel's
mm/ksm.c: advisor numbers, advisor_mode, pages_to_scan, the free knobs, the EBUSY knobs, run. Runs on Python 3.6+.
"""

import errno
import os
import typing as t

from ansible_collections.kvmhost.ksm.plugins.module_utils._sysfs import (
    KNOBS,
    TUNABLES,
    ADVISOR_MODES,
    RUN_STATES,
    KsmError,
    Value,
    format_value,
)

Values = t.Dict[str, Value]
OPTION_OF = {"run": "state"}  # module option of a knob; every other knob is its own option
ADVISOR_NUMBERS = ("advisor_min_pages_to_scan", "advisor_max_pages_to_scan", "advisor_target_scan_time",
                   "advisor_max_cpu")
KSMTUNED_KNOBS = ("run", "pages_to_scan", "sleep_millisecs")  # ksmtuned rewrites these every minute


class Plan(t.NamedTuple):
    """What to write: run first (unmerge or pause), the other knobs in safe order, then run's final state."""

    first: t.Optional[str]  # "unmerged" (unmerge first) or "stopped" (pause ksmd) or None
    writes: t.List[t.Tuple[str, Value]]  # knobs other than run, in safe order
    final_run: str  # run state to leave KSM in
    allow_unmerge: bool  # whether a transient EBUSY may be cured by unmerging

    @property
    def unmerge(self) -> bool:
        return self.first == "unmerged"

    def changes(self, current: Values) -> bool:
        return bool(self.writes) or self.first is not None or self.final_run != current.get("run")


def option(name: str) -> str:
    return OPTION_OF.get(name, name)


def requested(params: t.Dict[str, t.Any]) -> Values:
    """The managed knobs: every knob option that is set (state as run)."""
    return dict((k.name, params[option(k.name)]) for k in TUNABLES if params.get(option(k.name)) is not None)


def by_option(values: Values, names: t.Iterable[str]) -> t.Dict[str, Value]:
    """values of the named knobs, keyed by module option (run as state)."""
    return dict((option(n), values[n]) for n in names if n in values)


def final_mode(request: Values, current: Values) -> str:
    return str(request.get("advisor_mode", current.get("advisor_mode", "none")))


def advisor_owns_pages_to_scan(mode: t.Optional[Value]) -> bool:
    """Whether advisor_mode `mode` sets pages_to_scan itself: the kernel then refuses every write to it (EINVAL).

    The one place of this rule: validation, rollback, restoring a snapshot and the persist file all ask here.
    """
    return mode is not None and mode != "none"


def restorable(values: Values) -> Values:
    """The part of a tunables snapshot that can be written back: all of it but pages_to_scan under the advisor."""
    if advisor_owns_pages_to_scan(values.get("advisor_mode")):
        return dict((n, v) for n, v in values.items() if n != "pages_to_scan")
    return dict(values)


def unmerge_bytes(statistics: Values, page: int) -> int:
    """Memory that unmerging every KSM page needs: (pages_sharing + ksm_zero_pages) x page size."""
    return (int(statistics.get("pages_sharing", 0)) + max(int(statistics.get("ksm_zero_pages", 0)), 0)) * page


# ---------------------------------------------------------------------------------------------- validation

def _missing(root: str, name: str, release: str) -> str:
    return ("Cannot manage {0}: kernel {1} has no {2} (upstream added it in {3}); leave {0} unset on this host; "
            "nothing was written.".format(option(name), release, os.path.join(root, name), KNOBS[name].since))


def _out_of_range(root: str, name: str, value: Value) -> str:
    knob = KNOBS[name]
    if knob.kind == "enum":
        allowed = "one of " + ", ".join(ADVISOR_MODES)
    elif knob.kind == "run":
        allowed = "one of " + ", ".join(RUN_STATES)
    else:
        allowed = "between {0} and {1}".format(knob.minimum, knob.maximum)
    return ("Cannot write {0}={1!r} to {2}: the value must be {3}; nothing was written."
            .format(option(name), value, os.path.join(root, name), allowed))


def _in_range(name: str, value: Value) -> bool:
    knob = KNOBS[name]
    if knob.kind == "bool":
        return isinstance(value, bool)
    if knob.kind == "enum":
        return value in ADVISOR_MODES
    if knob.kind == "run":
        return value in RUN_STATES
    return not isinstance(value, bool) and isinstance(value, int) and knob.minimum <= value <= knob.maximum


def problems(request: Values, current: t.Optional[Values], root: str, release: str) -> t.List[str]:
    """Every reason the request cannot be applied to a host whose KSM files read as current (None: they could not
    be read, so only the values themselves are checked)."""
    found: t.List[str] = []
    for knob in TUNABLES:
        if knob.name not in request:
            continue
        if current is not None and knob.name not in current:
            found.append(_missing(root, knob.name, release))
        elif not _in_range(knob.name, request[knob.name]):
            found.append(_out_of_range(root, knob.name, request[knob.name]))
    if current is None:
        return found
    if "pages_to_scan" in request and advisor_owns_pages_to_scan(final_mode(request, current)):
        found.append("Cannot manage pages_to_scan while advisor_mode is scan-time: the kernel refuses every write to "
                     "{0} then and the advisor sets it; leave pages_to_scan unset or set advisor_mode: none; "
                     "nothing was written.".format(os.path.join(root, "pages_to_scan")))
    found.extend(_advisor_bounds(request, current, root))
    return found


def _advisor_bounds(request: Values, current: Values, root: str) -> t.List[str]:
    low, high = "advisor_min_pages_to_scan", "advisor_max_pages_to_scan"
    if low not in request and high not in request:
        return []
    final = dict(current, **request)
    if low not in final or high not in final or int(final[low]) <= int(final[high]):
        return []
    return ["Cannot set advisor_min_pages_to_scan={0} above advisor_max_pages_to_scan={1} (the {2} value in {3}); "
            "make the minimum at most the maximum; nothing was written."
            .format(final[low], final[high], "requested" if high in request else "current", root)]


NOTHING_WRITTEN = "; nothing was written"


def refusal(found: t.List[str]) -> str:
    """One message for every problem found: the sentence itself for one, 'N problems: a; b; ...; nothing was
    written.' for more (each problem one sentence, without its own ending)."""
    if len(found) == 1:
        text = found[0].rstrip(".")
        return (text if text.endswith(NOTHING_WRITTEN) else text + NOTHING_WRITTEN) + "."
    parts: t.List[str] = []
    for problem in found:
        text = problem.rstrip(".")
        if text.endswith(NOTHING_WRITTEN):
            text = text[:-len(NOTHING_WRITTEN)]
        parts.append(text)
    return "{0} problems: {1}{2}.".format(len(found), "; ".join(parts), NOTHING_WRITTEN)


def validate(request: Values,
             current: t.Optional[Values],
             root: str,
             release: str,
             found: t.Optional[t.List[str]] = None) -> None:
    """Raise one KsmError naming every problem of the whole request (and the caller's found ones), before anything
    is written. current None: the KSM files could not be read (the reason is among found)."""
    found = list(found or [])
    if current is not None and "run" not in current:
        found.append("KSM is not available: {0} does not exist, so kernel {1} was built without CONFIG_KSM "
                     "(or sysfs_path is wrong); nothing was written.".format(os.path.join(root, "run"), release))
        current = None
        err: t.Optional[int] = errno.ENOENT
    else:
        err = None
    found.extend(problems(request, current, root, release))
    if found:
        raise KsmError(refusal(found), err if len(found) == 1 else errno.EINVAL)
    if current is None:
        raise KsmError(refusal(["Cannot read the KSM files in {0}".format(root)]), errno.EIO)


def warnings(request: Values, current: Values, ksmtuned_pids: t.List[int]) -> t.List[str]:
    """Legal requests that will not do what the operator probably wants."""
    found: t.List[str] = []
    managed = [option(n) for n in KSMTUNED_KNOBS if n in request]
    if ksmtuned_pids and managed:
        found.append("ksmtuned is running (pid {0}) and rewrites {1} every minute; stop and disable ksmtuned or "
                     "leave them unmanaged.".format(", ".join(map(str, ksmtuned_pids)), ", ".join(managed)))
    numbers = [n for n in ADVISOR_NUMBERS if n in request]
    if numbers and final_mode(request, current) == "none":
        found.append("{0} {1} effect only while advisor_mode is scan-time, and advisor_mode is none; set "
                     "advisor_mode: scan-time to use {2}.".format(", ".join(numbers), "takes" if len(numbers) == 1
                                                                  else "take", "it" if len(numbers) == 1 else "them"))
    return found


# ---------------------------------------------------------------------------------------------- planning

def expected_after_mode_switch(request: Values, current: Values) -> Values:
    """current as the kernel leaves it once advisor_mode is written: a change resets pages_to_scan."""
    expected = dict(current)
    mode = request.get("advisor_mode")
    if mode is not None and mode != current.get("advisor_mode"):
        if mode == "none":
            expected["pages_to_scan"] = 100
        else:
            expected["pages_to_scan"] = dict(current, **request).get("advisor_min_pages_to_scan", 0)
    return expected


def differences(request: Values, current: Values) -> t.List[str]:
    """Requested knobs (run excluded) whose value must be written, in safe order."""
    expected = expected_after_mode_switch(request, current)
    return [k.name for k in TUNABLES
            if k.name != "run" and k.name in request and request[k.name] != expected.get(k.name)]


def _busy_refusal(root: str, names: t.List[str], request: Values, current: Values, merged: int) -> str:
    name = names[0]
    return ("Cannot change {0} in {1} from {2} to {3}: {4} bytes are merged now and the kernel refuses the change "
            "(EBUSY) until every page is unmerged; set allow_unmerge: true to unmerge first, or state: unmerged; "
            "nothing was written."
            .format(name, root, format_value(name, current[name]), format_value(name, request[name]), merged))


def _headroom_refusal(root: str, needed: int, available: int) -> str:
    return ("Cannot unmerge KSM pages in {0}: unmerging needs about {1} bytes but MemAvailable is only {2} bytes; "
            "free memory on the host first (the kernel would OOM-kill processes); nothing was written."
            .format(root, needed, available))


def make_plan(request: Values,
              current: Values,
              shared: int,
              needed: int,
              available: t.Optional[int],
              allow_unmerge: bool,
              root: str) -> Plan:
    """Order the writes; refuse an EBUSY change it cannot make and an unmerge the host has no memory for.

    shared is pages_shared now, needed the bytes unmerging needs, available MemAvailable in bytes (None: unknown).
    """
    writes = [(n, request[n]) for n in differences(request, current)]
    busy = [n for n, _v in writes if KNOBS[n].busy]
    final_run = str(request.get("run", current["run"]))
    first: t.Optional[str] = None
    if final_run == "unmerged" and current["run"] != "unmerged":
        first = "unmerged"
    elif busy and shared:
        if not allow_unmerge:
            raise KsmError(_busy_refusal(root, busy, request, current, needed), errno.EBUSY)
        first = "unmerged"
    elif busy and current["run"] == "running" or final_run == "stopped" and current["run"] == "running":
        first = "stopped"  # stop ksmd before the EBUSY knobs, start it again last
    if first == "unmerged" and available is not None and needed > available:
        raise KsmError(_headroom_refusal(root, needed, available), errno.ENOMEM)
    return Plan(first, writes, final_run, allow_unmerge)


def rollback_writes(touched: t.Iterable[str], before: Values) -> t.List[t.Tuple[str, Value]]:
    """Writes that put the touched knobs back to their before values, in safe order with run last."""
    names = set(touched)
    if "advisor_mode" in names:
        names.add("pages_to_scan")  # a mode switch moved it
    writable = restorable(before)
    return [(k.name, writable[k.name]) for k in TUNABLES if k.name in names and k.name in writable]


# ---------------------------------------------------------------------------------------------- checking

def verify(request: Values, after: Values, root: str) -> None:
    wrong = ["{0}: wanted {1!r}, read back {2!r}".format(option(n), v, after.get(n))
             for n, v in sorted(request.items()) if after.get(n) != v]
    if wrong:
        raise KsmError("KSM in {0} did not keep the written values ({1}); something else on the host (ksmtuned?) "
                       "changes them.".format(root, "; ".join(wrong)))


def diff(before: t.Dict[str, Value],
         after: t.Dict[str, Value],
         root: str,
         persist: t.Optional[t.Tuple[str, str, str]] = None) -> t.List[dict]:
    """Ansible diff: the managed values, and the persist file (path, old text, new text) when managed."""
    result = [dict(before=before, after=after, before_header=root, after_header=root)]
    if persist is not None:
        path, old, new = persist
        result.append(dict(before=old, after=new, before_header=path, after_header=path))
    return result
