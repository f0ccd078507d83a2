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
import stat
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
KNOBS: t.Dict[str, Knob] = dict((k.name, k) for k in TUNABLES)

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

    def __init__(self, message: str, err: t.Optional[int] = None) -> None:
        super(KsmError, self).__init__(message)
        self.errno = err  # the kernel's errno when a write failed


def kernel_release() -> str:
    return platform.release()


def parse_advisor_mode(text: str) -> str:
    """'[none] scan-time' -> 'none'; a plain word is returned as it is; no word at all raises ValueError."""
    text = text.strip()
    if "[" in text and "]" in text:
        text = text[text.index("[") + 1:text.index("]")].strip()
    if not text or " " in text:
        raise ValueError("no advisor mode in {0!r}".format(text))
    return text


def parse(name: str, text: str) -> Value:
    """Parse the text of a KSM file into a typed value (run as its state name, masked with & 3).

    Raises ValueError for text the kernel never prints there, including a run value whose low bits are 3.
    """
    text = text.strip()
    knob = KNOBS.get(name)
    if knob is None:
        return int(text)
    if knob.kind == "run":
        value = int(text) & 3  # bit 4 = memory offlining in progress
        if value >= len(RUN_STATES):
            raise ValueError("unknown run state {0}".format(value))
        return RUN_STATES[value]
    if knob.kind == "bool":
        return int(text) != 0
    if knob.kind == "enum":
        return parse_advisor_mode(text)
    return int(text)


def expected_text(name: str) -> str:
    """What a KSM file holds, in words, for a message about text that does not parse."""
    knob = KNOBS.get(name)
    if knob is None:
        return "a number"
    if knob.kind == "run":
        return "0 (stopped), 1 (running) or 2 (unmerged), possibly with bit 4 set"
    if knob.kind == "bool":
        return "0 or 1"
    if knob.kind == "enum":
        return "the advisor modes with the active one in brackets, such as '[none] scan-time'"
    return "a number"


def shown(text: str, limit: int = 40) -> str:
    """text quoted for a message, cut to limit characters."""
    return repr(text if len(text) <= limit else text[:limit] + "...")


def format_value(name: str, value: Value) -> str:
    """The text written to a KSM file for a typed value."""
    knob = KNOBS[name]
    if knob.kind == "run":
        return str(RUN_STATES.index(str(value)))
    if knob.kind == "bool":
        return "1" if value else "0"
    if knob.kind == "enum":
        return str(value)
    return str(int(value))


def is_under_sys(path: str) -> bool:
    return path == "/sys" or path.startswith("/sys/")


def os_remedy(path: str, err: t.Optional[int], euid: t.Optional[int] = None) -> t.Optional[str]:
    """The cause and remedy of a permission or read-only failure on path, or None for other errors.

    EPERM/EACCES as root are an immutable attribute or a security module, not a missing become; EROFS looks like a
    container only under /sys.
    """
    euid = os.geteuid() if euid is None else euid
    if err in (errno.EACCES, errno.EPERM):
        if euid != 0:
            return "permission denied; only root can change it (use become: true)"
        return ("permission denied although running as root, so the file or its directory has the immutable or "
                "append-only attribute (check with lsattr, clear with chattr -i or chattr -a) or a security module "
                "(SELinux, AppArmor) refuses it (check the audit log)")
    if err == errno.EROFS:
        if is_under_sys(path):
            return ("/sys is mounted read-only, which looks like a container; manage KSM from the host or "
                    "bind-mount {0} writable".format(os.path.dirname(path)))
        return "{0} is on a file system mounted read-only; remount it read-write or choose another path".format(
            os.path.dirname(path) or path)
    return None


def explain(path: str,
            text: str,
            err: t.Optional[int],
            release: t.Optional[str] = None,
            euid: t.Optional[int] = None) -> str:
    """One sentence for a failed write of text to path: what happened and what to do."""
    release = release or kernel_release()
    name = os.path.basename(path)
    head = "Cannot write {0!r} to {1}".format(text, path)
    remedy = os_remedy(path, err, euid)
    if remedy is not None:
        if err in (errno.EACCES, errno.EPERM) and (os.geteuid() if euid is None else euid) != 0:
            remedy = "permission denied; KSM settings can only be changed by root (use become: true)"
        return "{0}: {1}.".format(head, remedy)
    if err == errno.ENOENT:
        return "{0}: kernel {1} has no such KSM file; leave {2} unset on this host.".format(head, release, name)
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
    if err == errno.EISDIR:
        return "{0}: it is a directory, not a KSM file; point sysfs_path at {1}.".format(head, DEFAULT_ROOT)
    return "{0}: {1}; check the host's kernel log.".format(head, os.strerror(err or 0))


def kind_of(mode: int) -> str:
    """'a directory', 'a symbolic link', ... for a stat mode (messages about files that are not regular)."""
    for test, kind in ((stat.S_ISDIR, "a directory"), (stat.S_ISLNK, "a symbolic link"), (stat.S_ISFIFO, "a FIFO"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISREG, "a regular file")):
        if test(mode):
            return kind
    return "not a regular file"


def root_problem(root: str) -> t.Optional[str]:
    """Why root cannot be a KSM sysfs directory (one sentence), or None; a root that does not exist is left to
    validation, which says that KSM is not available."""
    hint = "point sysfs_path at the KSM directory, {0}".format(DEFAULT_ROOT)
    if not root or not os.path.isabs(root):
        return "sysfs_path must be an absolute path, got {0!r}; {1}.".format(root, hint)
    try:
        mode = os.stat(root).st_mode
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            return None
        return "Cannot read sysfs_path {0}: {1}; {2}.".format(root, exc.strerror, hint)
    if not stat.S_ISDIR(mode):
        return "sysfs_path {0} is {1}, not a directory; {2}.".format(root, kind_of(mode), hint)
    run = os.path.join(root, "run")
    try:
        mode = os.stat(run).st_mode
    except OSError:
        return None
    if not stat.S_ISREG(mode):
        return "sysfs_path {0} is not a KSM directory: {1} is {2}, not the KSM run file; {3}.".format(
            root, run, kind_of(mode), hint)
    return None


def normalise_root(root: str) -> str:
    """An absolute sysfs_path without '..', '.', doubled or trailing slashes (relative paths stay as they are)."""
    if not root or not os.path.isabs(root):
        return root
    return "/" + os.path.normpath(root).lstrip("/")


class Sysfs(object):
    """The KSM directory under root. Unit tests point root at a fake tree."""

    def __init__(self, root: str = DEFAULT_ROOT) -> None:
        self.root = root

    def path(self, name: str) -> str:
        if name not in KNOBS and name not in STATISTIC_NAMES:
            raise ValueError("not a KSM file: {0!r}".format(name))
        return os.path.join(self.root, name)

    def available(self) -> bool:
        return os.path.isfile(os.path.join(self.root, "run"))

    def has(self, name: str) -> bool:
        return os.path.isfile(self.path(name))

    def read_text(self, name: str) -> str:
        """The text of a KSM file. Raises KsmError naming the file for anything but a readable regular file
        (errno ENOENT: a file this kernel does not have, which read_present skips)."""
        path = self.path(name)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0))
        except OSError as exc:
            raise KsmError(self._unreadable(path, exc.errno, exc.strerror), exc.errno) from None
        try:
            mode = os.fstat(fd).st_mode
            if not stat.S_ISREG(mode):
                raise KsmError("Cannot read {0}: it is {1}, not a KSM file; point sysfs_path at the KSM "
                               "directory, {2}, or repair the tree.".format(path, kind_of(mode), DEFAULT_ROOT),
                               errno.EINVAL)
            data = os.read(fd, 4096)
        except OSError as exc:
            raise KsmError(self._unreadable(path, exc.errno, exc.strerror), exc.errno) from None
        finally:
            os.close(fd)
        return data.decode("ascii", "replace").strip()

    @staticmethod
    def _unreadable(path: str, err: t.Optional[int], strerror: t.Optional[str]) -> str:
        if err == errno.ENOENT:
            return ("Cannot read {0}: it does not exist (this kernel has no such KSM file, or it vanished "
                    "meanwhile); check sysfs_path and the kernel log.".format(path))
        if err == errno.ELOOP:
            return ("Cannot read {0}: it is a symbolic link, not a KSM file; point sysfs_path at the KSM "
                    "directory, {1}, or repair the tree.".format(path, DEFAULT_ROOT))
        remedy = os_remedy(path, err) or "{0}; check the host's kernel log".format(strerror)
        return "Cannot read {0}: {1}.".format(path, remedy)

    def read(self, name: str) -> Value:
        """The typed value of a KSM file; KsmError naming the file and the text found when it does not parse."""
        text = self.read_text(name)
        try:
            return parse(name, text)
        except ValueError:
            raise KsmError("Cannot parse {0}: found {1}, expected {2}; this is not a KSM file of a kernel this "
                           "collection knows, or sysfs_path points at a broken tree; check the file (and the "
                           "kernel log) or point sysfs_path at {3}."
                           .format(self.path(name), shown(text), expected_text(name), DEFAULT_ROOT),
                           errno.EINVAL) from None

    def read_present(self, names: t.Iterable[str]) -> t.Dict[str, Value]:
        """Typed values of the named files that exist on this kernel."""
        values: t.Dict[str, Value] = {}
        for name in names:
            try:
                values[name] = self.read(name)
            except KsmError as exc:
                if exc.errno != errno.ENOENT:
                    raise
        return values

    def read_tunables(self) -> t.Dict[str, Value]:
        return self.read_present(k.name for k in TUNABLES)

    def read_statistics(self) -> t.Dict[str, Value]:
        return self.read_present(STATISTIC_NAMES)

    def write_text(self, name: str, text: str) -> None:
        """One write(2) of text; a failure raises KsmError with the kernel's errno explained."""
        if name not in KNOBS:
            raise ValueError("not a writable KSM file: {0!r}".format(name))
        path = self.path(name)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_TRUNC | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0))
            try:
                os.write(fd, text.encode("ascii"))
            finally:
                os.close(fd)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise KsmError("Cannot write {0!r} to {1}: it is a symbolic link, not a KSM file; point sysfs_path at "
                               "the KSM directory, {2}, or repair the tree.".format(text, path, DEFAULT_ROOT),
                               exc.errno) from None
            raise KsmError(explain(path, text, exc.errno), exc.errno) from None

    def write(self, name: str, value: Value) -> None:
        self.write_text(name, format_value(name, value))

    def wait_unmerged(self, timeout: float, interval: float = 0.1) -> bool:
        """Wait until pages_shared reads 0; False when timeout seconds pass first."""
        deadline = time.monotonic() + timeout
        while True:
            if not self.read("pages_shared"):
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(interval)
