# -*- coding: utf-8 -*-
# Copyright (c) kvmhost.ksm contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

# Note that this module util is **PRIVATE** to the collection. It can have breaking changes at any time.
# Do not use this from other collections or standalone plugins/modules!

"""What the KSM modules read from /proc: page size, meminfo, processes, ksmd, per-process KSM files.

Read-only mechanics. Every reader takes its /proc root as a parameter (unit tests pass a fake tree), and a process
that exits or is unreadable while it is read gives None or an empty value instead of an exception.
Stdlib only (tests and benchmarks import this file by path too). Runs on Python 3.6+.
Facts come from the kernel's Documentation/filesystems/proc.rst and Documentation/admin-guide/mm/ksm.rst.
"""

import os
import re
import typing as t

PROC_ROOT = "/proc"
KTHREADD_PID = 2  # the parent of every kernel thread, ksmd included

Pid = t.Union[int, str]  # a process id, or "self"


class ProcStat(t.NamedTuple):
    """The fields of /proc/<pid>/stat the collection uses."""

    pid: int
    comm: str
    ppid: int
    utime: int  # clock ticks (field 14)
    stime: int  # clock ticks (field 15)


def page_size() -> int:
    """The page size of this host in bytes (never assume 4096: arm64 and ppc64 may use 64 KiB)."""
    return os.sysconf("SC_PAGE_SIZE")


def clock_ticks() -> int:
    """Clock ticks per second, the unit of utime and stime in /proc/<pid>/stat."""
    return os.sysconf("SC_CLK_TCK")


# ---------------------------------------------------------------------------------------------- file readers

def read_bytes(path: str) -> bytes:
    """The whole file with raw os.open/os.read: several times cheaper than open() for the many small /proc files."""
    fd = os.open(path, os.O_RDONLY)
    try:
        chunks: t.List[bytes] = []
        while True:
            chunk = os.read(fd, 65536)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)
    finally:
        os.close(fd)


def read_text(path: str) -> str:
    """A /proc or sysfs file as text (undecodable bytes replaced)."""
    return read_bytes(path).decode("utf-8", "replace")


def read_small(path: str, dir_fd: t.Optional[int] = None) -> str:
    """A /proc or sysfs file that the kernel hands out whole in one read of a page (stat, ksm_stat, ...).
    dir_fd: an open directory that a relative path starts from (openat: no walk from / for each file)."""
    fd = os.open(path, os.O_RDONLY, dir_fd=dir_fd)
    try:
        return os.read(fd, 4096).decode("utf-8", "replace")
    finally:
        os.close(fd)


def process_path(pid: Pid, name: str, proc_root: str = PROC_ROOT) -> str:
    """<proc_root>/<pid>/<name> (formatted, not os.path.join: this runs twice per process on every host)."""
    return "{0}/{1}/{2}".format(proc_root, pid, name)


def has_process_file(pid: Pid, name: str, proc_root: str = PROC_ROOT) -> bool:
    return os.path.exists(process_path(pid, name, proc_root))


def read_process_file(pid: Pid, name: str, proc_root: str = PROC_ROOT) -> str:
    """<proc_root>/<pid>/<name> in one read; raises IOError/OSError when the process is gone or unreadable."""
    return read_small(process_path(pid, name, proc_root))


# ---------------------------------------------------------------------------------------------- parsers

def parse_proc_stat(text: str) -> ProcStat:
    """/proc/<pid>/stat; comm may contain spaces and parentheses, so split after the last ')'."""
    head, _sep, tail = text.rpartition(")")
    pid_text, _sep, comm = head.partition("(")
    fields = tail.split()  # fields[0] is field 3 (state)
    return ProcStat(int(pid_text), comm, int(fields[1]), int(fields[11]), int(fields[12]))


def parse_cmdline(raw: bytes) -> t.List[str]:
    """/proc/<pid>/cmdline (NUL-separated) -> argv."""
    text = raw.decode("utf-8", "replace")
    if text.endswith("\0"):
        text = text[:-1]
    return text.split("\0") if text else []


_NOT_IDLE = re.compile(r"[1-9]|yes")  # a count other than 0, or a yes (ksm_merge_any, ksm_mergeable)


def ksm_idle(text: str) -> bool:
    """Whether a per-process KSM file (ksm_stat or ksm_merging_pages) says nothing at all: every count 0, every flag
    no, or empty (kernel threads). One regular expression search, for the many processes KSM never saw, instead of
    parsing: parse_ksm_stat would give only zeros and False for such a text."""
    return _NOT_IDLE.search(text) is None


def parse_ksm_stat(text: str) -> t.Dict[str, t.Union[int, bool]]:
    """/proc/<pid>/ksm_stat: lines 'ksm_rmap_items 5' and 'ksm_merge_any: yes' -> {name: int or bool}.

    Unknown lines of either form are kept; lines that fit neither are ignored. Kernel threads give ''.
    """
    values: t.Dict[str, t.Union[int, bool]] = {}
    for line in text.splitlines():
        parts = line.replace(":", " ", 1).split() if ":" in line else line.split()
        if len(parts) != 2:
            continue
        key, word = parts
        if word in ("yes", "no"):
            values[key] = word == "yes"
            continue
        try:
            values[key] = int(word)
        except ValueError:
            continue
    return values


# ---------------------------------------------------------------------------------------------- host and processes

def mem_available(proc_root: str = PROC_ROOT) -> t.Optional[int]:
    """MemAvailable of <proc_root>/meminfo in bytes, or None when the kernel does not report it."""
    try:
        with open(os.path.join(proc_root, "meminfo")) as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (IOError, OSError):
        pass
    return None


def parse_meminfo(text: str) -> t.Dict[str, int]:
    """/proc/meminfo -> {field: bytes} ('MemTotal:  16318976 kB' -> 16710631424); fields without a unit stay counts."""
    values: t.Dict[str, int] = {}
    for line in text.splitlines():
        key, _sep, rest = line.partition(":")
        parts = rest.split()
        if not parts:
            continue
        try:
            number = int(parts[0])
        except ValueError:
            continue
        values[key.strip()] = number * 1024 if parts[1:2] == ["kB"] else number
    return values


def meminfo(proc_root: str = PROC_ROOT) -> t.Dict[str, int]:
    """<proc_root>/meminfo parsed (parse_meminfo); {} when it cannot be read."""
    try:
        return parse_meminfo(read_text(os.path.join(proc_root, "meminfo")))
    except (IOError, OSError):
        return {}


def process_rss(pid: Pid, proc_root: str = PROC_ROOT) -> t.Optional[int]:
    """The resident memory of a process in bytes (VmRSS of /proc/<pid>/status), or None when gone or unreadable."""
    try:
        return parse_meminfo(read_text(process_path(pid, "status", proc_root))).get("VmRSS")
    except (IOError, OSError):
        return None


def pids(proc_root: str = PROC_ROOT) -> t.List[int]:
    """The process ids listed in proc_root now (unsorted; [] when proc_root cannot be listed)."""
    try:
        entries = os.listdir(proc_root)
    except OSError:
        return []
    return [int(entry) for entry in entries if entry.isdigit()]


def processes_named(comm: str, proc_root: str = PROC_ROOT) -> t.List[int]:
    """Process ids whose <proc_root>/<pid>/comm is comm, sorted (processes may vanish while we look)."""
    found: t.List[int] = []
    for pid in pids(proc_root):
        try:
            if read_process_file(pid, "comm", proc_root).strip() == comm:
                found.append(pid)
        except (IOError, OSError):
            continue
    return sorted(found)


def parse_comm(text: str) -> str:
    """/proc/<pid>/comm -> the command name (its newline dropped). Unlike stat's comm it is not escaped: a name
    with a backslash or a newline reads as it is."""
    return text[:-1] if text.endswith("\n") else text


def read_comm(pid: Pid, proc_root: str = PROC_ROOT) -> t.Optional[str]:
    """The command name of a process (parse_comm; half the cost of reading stat), or None when it is gone or
    unreadable."""
    try:
        return parse_comm(read_small(process_path(pid, "comm", proc_root)))
    except (IOError, OSError):
        return None


def process_texts(name: t.Optional[str],
                  proc_root: str = PROC_ROOT) -> t.Iterator[t.Tuple[int, str, t.Optional[str]]]:
    """(pid, comm, text of <pid>/<name>) for every process in proc_root: the one pass over thousands of processes,
    so it opens each file relative to an open proc_root (read_small's dir_fd) and reads it once. comm as parse_comm
    gives it; text is None when name is None or the file cannot be read (the process exited meanwhile, or the entry
    is odd). Processes whose comm cannot be read are left out; nothing when proc_root cannot be opened."""
    try:
        root_fd = os.open(proc_root, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        for entry in os.listdir(root_fd):
            if not entry.isdigit():
                continue
            try:
                comm = parse_comm(read_small(entry + "/comm", root_fd))
            except (IOError, OSError):
                continue
            text = None
            if name is not None:
                try:
                    text = read_small(entry + "/" + name, root_fd)
                except (IOError, OSError):
                    pass
            yield int(entry), comm, text
    finally:
        os.close(root_fd)


def read_proc_stat(pid: Pid, proc_root: str = PROC_ROOT) -> t.Optional[ProcStat]:
    """/proc/<pid>/stat parsed, or None when the process is gone or the file is unreadable."""
    try:
        return parse_proc_stat(read_process_file(pid, "stat", proc_root))
    except (IOError, OSError, ValueError, IndexError):
        return None


def read_cmdline(pid: Pid, proc_root: str = PROC_ROOT) -> t.List[str]:
    """argv of a process; [] for kernel threads and for processes that are gone or unreadable."""
    try:
        return parse_cmdline(read_bytes(process_path(pid, "cmdline", proc_root)))
    except (IOError, OSError):
        return []


def is_ksmd(stat: ProcStat) -> bool:
    """Whether a process is the KSM kernel thread: comm ksmd and parent kthreadd (a user process may be named ksmd)."""
    return stat.comm == "ksmd" and stat.ppid == KTHREADD_PID


def ksmd_pid(proc_root: str = PROC_ROOT) -> t.Optional[int]:
    """The pid of the ksmd kernel thread, or None on a kernel without KSM."""
    for pid in sorted(pids(proc_root)):
        stat = read_proc_stat(pid, proc_root)
        if stat is not None and is_ksmd(stat):
            return pid
    return None


def stat_cpu_seconds(stat: ProcStat, ticks: t.Optional[int] = None) -> float:
    """CPU time of a process so far, (utime + stime) / clock ticks, in seconds."""
    return float(stat.utime + stat.stime) / (ticks or clock_ticks())


def cpu_seconds(pid: Pid, proc_root: str = PROC_ROOT, ticks: t.Optional[int] = None) -> t.Optional[float]:
    """CPU time of a process so far in seconds, or None when it is gone (ticks: clock ticks per second)."""
    stat = read_proc_stat(pid, proc_root)
    return None if stat is None else stat_cpu_seconds(stat, ticks)


def sched_cpu_seconds(pid: Pid, proc_root: str = PROC_ROOT) -> t.Optional[float]:
    """CPU time of a process so far in seconds from /proc/<pid>/schedstat (nanoseconds, where the kernel has
    schedstats), else from /proc/<pid>/stat (clock ticks); None when it is gone."""
    try:
        return int(read_small(process_path(pid, "schedstat", proc_root)).split()[0]) / 1e9
    except (IOError, OSError, ValueError, IndexError):
        return cpu_seconds(pid, proc_root)


def process_source(proc_root: str = PROC_ROOT) -> t.Optional[str]:
    """The per-process file that tells merged pages on this kernel, judged by /proc/self: 'ksm_stat' when it has a
    ksm_merging_pages line (6.4+), else 'ksm_merging_pages' (5.19+; 6.1's ksm_stat has ksm_rmap_items only), else None.
    """
    try:
        if "ksm_merging_pages" in parse_ksm_stat(read_text(process_path("self", "ksm_stat", proc_root))):
            return "ksm_stat"
    except (IOError, OSError):
        pass
    if has_process_file("self", "ksm_merging_pages", proc_root):
        return "ksm_merging_pages"
    return None


def parse_cgroup_unit(text: str) -> t.Optional[str]:
    """The systemd unit (service or scope) of a process from /proc/<pid>/cgroup, or None.

    The unified hierarchy's line ('0::/system.slice/libvirtd.service') first, then systemd's named v1 hierarchy
    ('1:name=systemd:/...'); the innermost path component ending in .service or .scope wins
    ('/machine.slice/machine-qemu\\x2d1\\x2dweb1.scope/libvirt/emulator' -> 'machine-qemu\\x2d1\\x2dweb1.scope').
    """
    paths: t.Dict[str, str] = {}
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) == 3:
            paths.setdefault(parts[1], parts[2])
    for hierarchy in ("", "name=systemd"):  # hybrid hosts: the unified line may be '0::/'
        units = [part for part in paths.get(hierarchy, "").split("/") if part.endswith((".service", ".scope"))]
        if units:
            return units[-1]
    return None


def process_unit(pid: Pid, proc_root: str = PROC_ROOT) -> t.Optional[str]:
    """The systemd unit of a process (parse_cgroup_unit), or None when it has none or is gone."""
    try:
        return parse_cgroup_unit(read_small(process_path(pid, "cgroup", proc_root)))
    except (IOError, OSError):
        return None
