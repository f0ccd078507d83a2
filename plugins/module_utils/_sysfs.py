# -*- coding: utf-8 -*-
# Copyright (c) kvmhost.ksm contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

# Note that this module util is **PRIVATE** to the collection. It can have breaking changes at any time.
# Do not use this from other collections or standalone plugins/modules!

"""The KSM sysfs directory: which files exist, how to parse and format them, and how to read and write them.

Mechanics only: no decisions about what to write (see _plan), nothing from /proc (see _procfs) and no AnsibleModule.
Stdlib only (tests and benchmarks import this file by path too). Runs on Python 3.6+.
Facts come from the kernel's mm/ksm.c and Documentation/admin-guide/mm/ksm.rst.
"""

import errno
import os
import platform
import time
import typing as t

DEFAULT_ROOT = "/sys/kernel/mm/ksm"
UINT_MAX = 4294967295
INT_MAX = 2147483647
ULONG_MAX = 18446744073709551615

RUN_STATES = ("stopped", "running", "unmerged")  # index == value written to <root>/run
ADVISOR_MODES = ("none", "scan-time")

Value = t.Union[int, bool, str]


class Knob(t.NamedTuple):
    """A writable file of the KSM sysfs directory."""

    name: str
    kind: str  # "uint", "int", "ulong", "bool", "enum" or "run"
    minimum: int
    maximum: int
    since: str  # upstream kernel that introduced it (informational only; presence is decided by the file)
    busy: bool  # refused with EBUSY while pages are merged (and the value changes)


# Every writable knob, in the safe order of writes (advisor numbers, advisor_mode, pages_to_scan,
# the free knobs, the EBUSY knobs, run). The planner keeps this order.
TUNABLES = (
    Knob("advisor_min_pages_to_scan", "ulong", 0, ULONG_MAX, "6.8", False),
    Knob("advisor_max_pages_to_scan", "ulong", 0, ULONG_MAX, "6.8", False),
    Knob("advisor_target_scan_time", "ulong", 1, ULONG_MAX, "6.8", False),
    Knob("advisor_max_cpu", "uint", 1, 100, "6.8", False),
    Knob("advisor_mode", "enum", 0, 0, "6.8", False),
    Knob("pages_to_scan", "uint", 0, UINT_MAX, "2.6.32", False),
    Knob("sleep_millisecs", "uint", 0, UINT_MAX, "2.6.32", False),
    Knob("use_zero_pages", "bool", 0, 1, "4.11", False),
    Knob("smart_scan", "bool", 0, 1, "6.7", False),
    Knob("stable_node_chains_prune_millisecs", "uint", 0, UINT_MAX, "4.13", False),
    Knob("merge_across_nodes", "bool", 0, 1, "3.9", True),
    Knob("max_page_sharing", "int", 2, INT_MAX, "4.13", True),
    Knob("run", "run", 0, 2, "2.6.32", False),
)
KNOBS = dict((k.name, k) for k in TUNABLES)  # type: t.Dict[str, Knob]

# Read-only statistics and whether the kernel prints them signed (%ld).
STATISTICS = (
    ("pages_shared", False),
    ("pages_sharing", False),
    ("pages_unshared", False),
    ("pages_volatile", True),
    ("full_scans", False),
    ("stable_node_chains", False),
    ("stable_node_dups", False),
    ("general_profit", True),
    ("ksm_zero_pages", True),
    ("pages_scanned", False),
    ("pages_skipped", False),
)
STATISTIC_NAMES = tuple(name for name, _signed in STATISTICS)


class KsmError(Exception):
    """An expected problem, worded as one sentence for the operator (what, where, remedy)."""

    def __init__(self, message, err=None):
        # type: (str, t.Optional[int]) -> None
        super(KsmError, self).__init__(message)
        self.errno = err  # the kernel's errno when a write failed


def kernel_release():
    # type: () -> str
    return platform.release()


def parse_advisor_mode(text):
    # type: (str) -> str
    """'[none] scan-time' -> 'none'; a plain word is returned as it is."""
    text = text.strip()
    if "[" in text and "]" in text:
        return text[text.index("[") + 1:text.index("]")]
    return text


def parse(name, text):
    # type: (str, str) -> Value
    """Parse the text of a KSM file into a typed value (run as its state name, masked with & 3)."""
    text = text.strip()
    knob = KNOBS.get(name)
    if knob is None:
        return int(text)
    if knob.kind == "run":
        return RUN_STATES[min(int(text) & 3, 2)]  # bit 4 = memory offlining in progress
    if knob.kind == "bool":
        return int(text) != 0
    if knob.kind == "enum":
        return parse_advisor_mode(text)
    return int(text)


def format_value(name, value):
    # type: (str, Value) -> str
    """The text written to a KSM file for a typed value."""
    knob = KNOBS[name]
    if knob.kind == "run":
        return str(RUN_STATES.index(str(value)))
    if knob.kind == "bool":
        return "1" if value else "0"
    if knob.kind == "enum":
        return str(value)
    return str(int(value))


def explain(path, text, err, release=None):
    # type: (str, str, t.Optional[int], t.Optional[str]) -> str
    """One sentence for a failed write of text to path: what happened and what to do."""
    release = release or kernel_release()
    name = os.path.basename(path)
    head = "Cannot write {0!r} to {1}".format(text, path)
    if err == errno.ENOENT:
        return "{0}: kernel {1} has no such KSM file; leave {2} unset on this host.".format(head, release, name)
    if err == errno.EROFS:
        return ("{0}: /sys is mounted read-only, which looks like a container; "
                "manage KSM from the host or bind-mount {1} writable.".format(head, os.path.dirname(path)))
    if err in (errno.EACCES, errno.EPERM):
        return "{0}: permission denied; KSM settings can only be changed by root (use become: true).".format(head)
    if err == errno.EBUSY:
        return ("{0}: the kernel refuses to change {1} while pages are merged; "
                "set allow_unmerge: true or unmerge first with state: unmerged.".format(head, name))
    if err == errno.EINVAL:
        if name == "pages_to_scan":
            return ("{0}: the kernel rejected the value (pages_to_scan cannot be written while advisor_mode is "
                    "scan-time); set advisor_mode: none or leave pages_to_scan unset.".format(head))
        return "{0}: the kernel rejected the value as invalid; check the allowed range of {1}.".format(head, name)
    if err == errno.ENOMEM:
        return ("{0}: the kernel ran out of memory; free memory on the host (unmerging needs room for every "
                "merged page) and try again.".format(head))
    if err == errno.EINTR:
        return ("{0}: the write was interrupted by a signal and KSM was left stopped with some pages still "
                "merged; run the task again.".format(head))
    return "{0}: {1}; check the host's kernel log.".format(head, os.strerror(err or 0))


class Sysfs(object):
    """The KSM directory under root. Unit tests point root at a fake tree."""

    def __init__(self, root=DEFAULT_ROOT):
        # type: (str) -> None
        self.root = root

    def path(self, name):
        # type: (str) -> str
        if name not in KNOBS and name not in STATISTIC_NAMES:
            raise ValueError("not a KSM file: {0!r}".format(name))
        return os.path.join(self.root, name)

    def available(self):
        # type: () -> bool
        return os.path.isfile(os.path.join(self.root, "run"))

    def has(self, name):
        # type: (str) -> bool
        return os.path.isfile(self.path(name))

    def read_text(self, name):
        # type: (str) -> str
        with open(self.path(name)) as f:
            return f.read().strip()

    def read(self, name):
        # type: (str) -> Value
        return parse(name, self.read_text(name))

    def read_present(self, names):
        # type: (t.Iterable[str]) -> t.Dict[str, Value]
        """Typed values of the named files that exist on this kernel."""
        values = {}  # type: t.Dict[str, Value]
        for name in names:
            try:
                values[name] = self.read(name)
            except (IOError, OSError) as exc:
                if exc.errno != errno.ENOENT:
                    raise
        return values

    def read_tunables(self):
        # type: () -> t.Dict[str, Value]
        return self.read_present(k.name for k in TUNABLES)

    def read_statistics(self):
        # type: () -> t.Dict[str, Value]
        return self.read_present(STATISTIC_NAMES)

    def write_text(self, name, text):
        # type: (str, str) -> None
        """One write(2) of text; a failure raises KsmError with the kernel's errno explained."""
        if name not in KNOBS:
            raise ValueError("not a writable KSM file: {0!r}".format(name))
        path = self.path(name)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_TRUNC)  # as `echo >`; truncates fake trees
            try:
                os.write(fd, text.encode("ascii"))
            finally:
                os.close(fd)
        except OSError as exc:
            raise KsmError(explain(path, text, exc.errno), exc.errno) from None

    def write(self, name, value):
        # type: (str, Value) -> None
        self.write_text(name, format_value(name, value))

    def wait_unmerged(self, timeout, interval=0.1):
        # type: (float, float) -> bool
        """Wait until pages_shared reads 0; False when timeout seconds pass first."""
        deadline = time.monotonic() + timeout
        while True:
            if not self.read("pages_shared"):
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(interval)
