# -*- coding: utf-8 -*-
# Copyright (c) kvmhost.ksm contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

# Note that this module util is **PRIVATE** to the collection. It can have breaking changes at any time.
# Do not use this from other collections or standalone plugins/modules!

"""What KSM is doing and saving on a host: small pure parsers and the collectors of the ksm_facts module.

Read-only: nothing here writes anywhere. Every collector takes its root (KSM sysfs directory, /proc, the NUMA node
directory, the systemd runtime directory) as a parameter so that unit tests run on fake trees. Runs on Python 3.6+.
Every /proc read goes through _procfs. Formulas: the kernel's Documentation/admin-guide/mm/ksm.rst, each repeated
in the ksm_facts module documentation.
"""

import errno
import heapq
import os
import platform
import sys
import typing as t

from ansible_collections.kvmhost.ksm.plugins.module_utils import _governor_state, _managers, _memory, _procfs
from ansible_collections.kvmhost.ksm.plugins.module_utils._procfs import PROC_ROOT
from ansible_collections.kvmhost.ksm.plugins.module_utils._sysfs import (
    DEFAULT_ROOT,
    KNOBS,
    STATISTIC_NAMES,
    TUNABLES,
    KsmError,
    Sysfs,
    kernel_release,
)

NODE_ROOT = "/sys/devices/system/node"
SYSTEMD_ROOT = "/run/systemd/system"  # exists only while systemd is the running service manager
GOVERNOR_UNIT = _governor_state.NAME + ".service"  # the role's budget governor (auto mode)
SERVICE_UNITS = ("ksm.service", "ksmtuned.service", "qemu-kvm.service", "tuned.service", GOVERNOR_UNIT)
# qemu-kvm.service (Ubuntu), tuned and the governor only where they exist
ALWAYS_REPORTED_UNITS = ("ksm.service", "ksmtuned.service")
UNIT_PROPERTIES = ("Id", "LoadState", "ActiveState", "UnitFileState")
UNKNOWN = "unknown"

Facts = t.Dict[str, t.Any]
RunCommand = t.Callable[[t.List[str]], t.Tuple[int, str, str]]


# ---------------------------------------------------------------------------------------------------------------
# Pure parsers


def parse_range_list(text: str) -> t.List[int]:
    """A kernel range list such as '0-1,3' (has_memory, online) -> [0, 1, 3]; '' -> []."""
    result: t.List[int] = []
    for part in text.strip().split(","):
        part = part.strip()
        if not part:
            continue
        if "-" in part:
            low, high = part.split("-", 1)
            result.extend(range(int(low), int(high) + 1))
        else:
            result.append(int(part))
    return result


def _split_qemu_opts(text: str) -> t.List[str]:
    """Split a QEMU option string on ',' where ',,' is an escaped comma."""
    parts: t.List[str] = []
    current: t.List[str] = []
    i = 0
    while i < len(text):
        if text[i] == ",":
            if text[i + 1:i + 2] == ",":
                current.append(",")
                i += 2
                continue
            parts.append("".join(current))
            current = []
        else:
            current.append(text[i])
        i += 1
    parts.append("".join(current))
    return parts


def qemu_guest_name(argv: t.List[str]) -> t.Optional[str]:
    """The guest name of a QEMU command line: '-name guest=foo,debug-threads=on' or '-name foo' -> 'foo'."""
    for i, arg in enumerate(argv[1:], 1):
        if arg not in ("-name", "--name") or i + 1 >= len(argv):
            continue
        parts = _split_qemu_opts(argv[i + 1])
        for n, part in enumerate(parts):
            if n == 0 and "=" not in part:
                return part or None  # the implied key of -name is guest
            key, _sep, value = part.partition("=")
            if key == "guest":
                return value or None
        return None
    return None


def is_qemu(comm: str, argv: t.List[str]) -> bool:
    """QEMU by command name (qemu-system-x86, qemu-kvm, qemu:<name>, Proxmox kvm) or by argv[0]."""
    names = [comm]
    if argv:
        names.append(os.path.basename(argv[0]))
    return any(n.startswith("qemu") or n == "kvm" for n in names)


def parse_systemctl_show(text: str) -> t.Dict[str, t.Dict[str, str]]:
    """Output of 'systemctl show -p Id,... unit...' (blocks separated by empty lines) -> {Id: {property: value}}."""
    units: t.Dict[str, t.Dict[str, str]] = {}
    block: t.Dict[str, str] = {}
    for line in text.splitlines() + [""]:
        if not line.strip():
            if block.get("Id"):
                units[block["Id"]] = block
            block = {}
            continue
        key, _sep, value = line.partition("=")
        block[key.strip()] = value.strip()
    return units


def word_bits(machine: t.Optional[str] = None) -> int:
    """64 on a 64-bit kernel (x86_64, aarch64, ppc64le, s390x, riscv64, ...), else 32."""
    machine = platform.machine() if machine is None else machine
    if machine:
        return 64 if ("64" in machine or machine == "s390x") else 32
    return 64 if sys.maxsize > 2 ** 32 else 32


def rmap_item_size(bits: int) -> int:
    """sizeof(struct ksm_rmap_item): 64 bytes on 64-bit kernels, 32 on 32-bit (ksm.rst)."""
    return 64 if bits == 64 else 32


def _ratio(numerator: t.Optional[int], denominator: t.Optional[int]) -> t.Optional[float]:
    if numerator is None or not denominator:
        return None
    return round(float(numerator) / denominator, 3)


def _sum(values: t.List[t.Optional[int]]) -> t.Optional[int]:
    """The sum, or None when any value is None (a file that could not be read)."""
    return None if any(v is None for v in values) else sum(t.cast(t.List[int], values))


def derive(tunables: t.Dict[str, t.Any], statistics: t.Dict[str, t.Any], page_size: int, bits: int = 64) -> Facts:
    """The derived figures (kernel Documentation/admin-guide/mm/ksm.rst); every formula is repeated in the module
    documentation. A statistic this kernel does not have counts as 0; one that could not be read (None) makes every
    figure that needs it None."""
    stat = statistics.get
    saved_pages = _sum([stat("pages_sharing", 0), stat("ksm_zero_pages", 0)])
    saved_bytes = None if saved_pages is None else saved_pages * page_size
    rmap_items = _sum([stat("pages_shared", 0), stat("pages_sharing", 0), stat("pages_unshared", 0),
                       stat("pages_volatile", 0)])
    if "general_profit" in statistics:
        profit_bytes = statistics["general_profit"]
        profit_source: t.Optional[str] = "general_profit"
    else:
        profit_bytes = None if saved_bytes is None or rmap_items is None else \
            saved_bytes - rmap_items * rmap_item_size(bits)
        profit_source = "estimate"
    if profit_bytes is None:
        profit_source = None
    pages_to_scan = tunables.get("pages_to_scan")
    sleep = tunables.get("sleep_millisecs")
    scan_rate: t.Optional[float] = None
    if pages_to_scan is not None and sleep:
        scan_rate = round(pages_to_scan * 1000.0 / sleep, 1)
    full_scan_seconds: t.Optional[float] = None
    if scan_rate and rmap_items is not None:
        full_scan_seconds = round(rmap_items / scan_rate, 3)
    return {
        "saved_pages": saved_pages,
        "saved_bytes": saved_bytes,
        "rmap_items": rmap_items,
        "profit_bytes": profit_bytes,
        "profit_source": profit_source,
        "sharing_ratio": _ratio(stat("pages_sharing", 0), stat("pages_shared", 0)),
        "unshared_ratio": _ratio(stat("pages_unshared", 0), stat("pages_sharing", 0)),
        "scan_rate": scan_rate,
        "full_scan_seconds": full_scan_seconds,
    }


def read_values(ksm: Sysfs,
                names: t.Iterable[str],
                warn: t.Optional[t.Callable[[str], None]] = None) -> t.Dict[str, t.Any]:
    """Typed values of the named KSM files this kernel has; a file that cannot be read or parsed becomes None and
    one warning (naming the file) through warn."""
    values: t.Dict[str, t.Any] = {}
    for name in names:
        try:
            values[name] = ksm.read(name)
        except KsmError as exc:
            if exc.errno == errno.ENOENT:
                continue
            values[name] = None
            if warn is not None:
                warn("{0}; ksm_facts reports it as null.".format(str(exc).rstrip(".")))
    return values


# ---------------------------------------------------------------------------------------------------------------
# Collectors


def writable(root: str = DEFAULT_ROOT, euid: t.Optional[int] = None) -> t.Tuple[bool, str]:
    """Whether KSM under root can be changed from here, and why not. Never writes to find out."""
    euid = os.geteuid() if euid is None else euid
    run = os.path.join(root, "run")
    if euid != 0:
        return False, "KSM settings can only be changed by root (use become: true)"
    try:
        if os.statvfs(root).f_flag & os.ST_RDONLY:
            return False, "{0} is on a read-only file system, which looks like a container".format(root)
    except OSError:
        pass
    if not os.access(run, os.W_OK):
        return False, "{0} is not writable here".format(run)
    return True, ""


def numa_facts(node_root: str = NODE_ROOT, merge_across_nodes: t.Optional[bool] = None) -> Facts:
    """Nodes, memory nodes and distances, and the merge_across_nodes value the RHEL guidance recommends.

    Recommendation: false with more than one memory node, else true; None where the kernel has no
    merge_across_nodes file (merge_across_nodes is None: a kernel without CONFIG_NUMA).
    """
    facts: Facts = {"nodes": [], "memory_nodes": [], "distances": {},
                    "merge_across_nodes": merge_across_nodes,
                    "recommended_merge_across_nodes": None}
    try:
        facts["nodes"] = parse_range_list(_procfs.read_text(os.path.join(node_root, "online")))
    except (IOError, OSError, ValueError):
        pass
    try:
        facts["memory_nodes"] = parse_range_list(_procfs.read_text(os.path.join(node_root, "has_memory")))
    except (IOError, OSError, ValueError):
        facts["memory_nodes"] = list(facts["nodes"])
    for node in facts["nodes"]:
        try:
            text = _procfs.read_text(os.path.join(node_root, "node{0}".format(node), "distance"))
            facts["distances"][str(node)] = [int(d) for d in text.split()]
        except (IOError, OSError, ValueError):
            continue
    if merge_across_nodes is not None:
        facts["recommended_merge_across_nodes"] = len(facts["memory_nodes"]) <= 1
    return facts


def service_facts(run_command: t.Optional[RunCommand],
                  systemctl: t.Optional[str],
                  systemd_root: str = SYSTEMD_ROOT,
                  units: t.Sequence[str] = SERVICE_UNITS) -> Facts:
    """States of the KSM units from one 'systemctl show' call; 'unknown' where systemd is not the service manager.

    qemu-kvm.service (Ubuntu) is reported only where systemd knows it.
    """
    unknown = dict((name, {"load_state": UNKNOWN, "active_state": UNKNOWN, "unit_file_state": UNKNOWN})
                   for name in units if name in ALWAYS_REPORTED_UNITS)
    if not os.path.isdir(systemd_root) or not systemctl or run_command is None:
        return {"manager": UNKNOWN, "units": unknown}
    cmd = [systemctl, "show", "-p", ",".join(UNIT_PROPERTIES)] + list(units)
    try:
        rc, out, _err = run_command(cmd)
    except (IOError, OSError):
        return {"manager": UNKNOWN, "units": unknown}
    if rc != 0:
        return {"manager": UNKNOWN, "units": unknown}
    shown = parse_systemctl_show(out)
    result: t.Dict[str, t.Dict[str, str]] = {}
    for name in units:
        props = shown.get(name, {})
        load_state = props.get("LoadState") or UNKNOWN
        if name not in ALWAYS_REPORTED_UNITS and load_state in ("not-found", UNKNOWN):
            continue
        result[name] = {
            "load_state": load_state,
            "active_state": props.get("ActiveState") or UNKNOWN,
            "unit_file_state": props.get("UnitFileState") or UNKNOWN,
        }
    return {"manager": "systemd", "units": result}


def _rmap_items(pid: int, proc_root: str) -> t.Optional[int]:
    """ksm_rmap_items from a 6.1-style ksm_stat next to ksm_merging_pages; None when unreadable or absent."""
    try:
        value = _procfs.parse_ksm_stat(_procfs.read_process_file(pid, "ksm_stat", proc_root)).get("ksm_rmap_items")
    except (IOError, OSError):
        return None
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _process_record(pid: int, source: str, text: str) -> t.Optional[Facts]:
    if source == "ksm_stat":
        stat = _procfs.parse_ksm_stat(text)
        if not stat:
            return None  # kernel thread or zombie: no mm
        record: Facts = {"pid": pid, "merging_pages": stat.get("ksm_merging_pages", 0)}
        for key, name in (("ksm_zero_pages", "zero_pages"), ("ksm_rmap_items", "rmap_items"),
                          ("ksm_process_profit", "profit_bytes"), ("ksm_merge_any", "merge_any"),
                          ("ksm_mergeable", "mergeable")):
            if key in stat:
                record[name] = stat[key]
        return record
    text = text.strip()
    if not text:
        return None
    return {"pid": pid, "merging_pages": int(text)}


def scan_proc(proc_root: str = PROC_ROOT,
              limit: int = 10,
              page_size: int = 4096,
              source: t.Optional[str] = None) -> Facts:
    """One pass over proc_root: the processes of other KSM managers and numad (by comm), QEMU guests (command line
    and VmRSS), the ksmd kernel thread, the top `limit` processes by merged pages and the services whose processes
    merge all their memory (ksm_merge_any). Entries that vanish or cannot be read are skipped. Returns
    {"ksmtuned_pids": [...], "comm_pids": {comm: [...]}, "guests": [(given, resident), ...], "processes": [...],
    "merging_services": [...], "source": ..., "ksmd_pid": ...} (processes sorted).

    Cost, for hosts with thousands of processes: per pid it reads comm and, when limit > 0, the per-process KSM file
    (_procfs.process_texts; kernel threads give an empty one); stat only for the few whose comm is ksmd or looks
    like QEMU (to tell kernel threads) and for the top `limit` (the comm reported is stat's, escaped as before); a
    KSM file that says nothing (ksm_idle: all zero, no flag set, the usual case) is not parsed; command lines and
    cgroups only for the top `limit` and the merge_any processes."""
    if limit > 0 and source is None:
        source = _procfs.process_source(proc_root)
    per_process = limit > 0 and source is not None
    # 6.1: merged pages from ksm_merging_pages, rmap items from ksm_stat (read only for processes with merged pages)
    stat_too = source == "ksm_merging_pages" and _procfs.has_process_file("self", "ksm_stat", proc_root)
    comm_pids: t.Dict[str, t.List[int]] = dict((comm, []) for comm in _managers.WATCHED_COMMS)
    guests: t.List[t.Tuple[int, t.Optional[int]]] = []
    records: t.List[Facts] = []
    merge_any: t.List[Facts] = []
    ksmd: t.List[int] = []
    for pid, comm, text in _procfs.process_texts(source if per_process else None, proc_root):
        if comm in comm_pids:
            comm_pids[comm].append(pid)
        if comm == "ksmd" or comm.startswith("qemu") or comm == "kvm":
            stat = _procfs.read_proc_stat(pid, proc_root)  # its parent tells a kernel thread
            if stat is None:
                continue
            if _procfs.is_ksmd(stat):
                ksmd.append(pid)
            elif stat.ppid != _procfs.KTHREADD_PID and (stat.comm.startswith("qemu") or stat.comm == "kvm"):
                argv = _procfs.read_cmdline(pid, proc_root)
                if is_qemu(stat.comm, argv):
                    guests.append((_memory.qemu_memory(argv), _procfs.process_rss(pid, proc_root)))
        if text is None or _procfs.ksm_idle(text):
            continue  # not read, unreadable, a kernel thread (empty) or a process KSM never saw: nothing to report
        try:
            record = _process_record(pid, t.cast(str, source), text)
        except ValueError:
            continue
        if record and record.get("merge_any"):
            merge_any.append(record)
        if record and (record["merging_pages"] or record.get("zero_pages")):
            if stat_too:
                rmap = _rmap_items(pid, proc_root)
                if rmap is not None:
                    record["rmap_items"] = rmap
            records.append(record)
    top = heapq.nlargest(limit, records, key=lambda r: (r["merging_pages"], r.get("zero_pages", 0), -r["pid"])) \
        if limit > 0 else []
    processes: t.List[Facts] = []
    for record in top:
        pid = record["pid"]
        stat = _procfs.read_proc_stat(pid, proc_root)
        if stat is None:
            continue  # exited since its KSM file was read
        record["comm"] = stat.comm
        record["merged_bytes"] = (record["merging_pages"] + record.get("zero_pages", 0)) * page_size
        argv = _procfs.read_cmdline(pid, proc_root)
        record["guest"] = qemu_guest_name(argv) if is_qemu(record["comm"], argv) else None
        unit = _procfs.process_unit(pid, proc_root)
        if unit:
            record["unit"] = unit  # the systemd service or scope, where it has one
        processes.append(record)
    return {"ksmtuned_pids": sorted(comm_pids["ksmtuned"]),
            "comm_pids": dict((comm, sorted(found)) for comm, found in comm_pids.items()),
            "guests": guests, "processes": processes, "source": source,
            "ksmd_pid": min(ksmd) if ksmd else None,
            "merging_services": merging_services(merge_any, page_size, proc_root)}


def merging_services(records: t.List[Facts], page_size: int, proc_root: str = PROC_ROOT) -> t.List[Facts]:
    """Per systemd unit, its processes that merge all their memory (ksm_merge_any: MemoryKSM=yes or a prctl):
    pids, merged pages and bytes, and the kernel's profit where it has one; sorted by unit ('' for no unit)."""
    units: t.Dict[str, Facts] = {}
    for record in records:
        unit = _procfs.process_unit(record["pid"], proc_root) or ""
        entry = units.setdefault(unit, {"unit": unit or None, "pids": [], "merging_pages": 0, "merged_bytes": 0,
                                        "profit_bytes": 0 if "profit_bytes" in record else None})
        entry["pids"].append(record["pid"])
        pages = record["merging_pages"] + record.get("zero_pages", 0)
        entry["merging_pages"] += pages
        entry["merged_bytes"] += pages * page_size
        if entry["profit_bytes"] is not None and "profit_bytes" in record:
            entry["profit_bytes"] += record["profit_bytes"]
    for entry in units.values():
        entry["pids"].sort()
    return [units[unit] for unit in sorted(units)]


def ksmd_facts(proc_root: str = PROC_ROOT, clock_ticks: t.Optional[int] = None,
               pid: t.Optional[int] = None) -> t.Optional[Facts]:
    """The ksmd kernel thread's pid and CPU time so far; None without one (it exited meanwhile, or no KSM).
    pid: ksmd's pid when the caller found it already (scan_proc's ksmd_pid), else it is looked up."""
    pid = _procfs.ksmd_pid(proc_root) if pid is None else pid
    seconds = None if pid is None else _procfs.cpu_seconds(pid, proc_root, clock_ticks)
    if seconds is None:
        return None
    return {"pid": pid, "cpu_seconds": round(seconds, 2)}


def unavailable(sysfs_root: str, release: str, page_size: int, reason: str) -> Facts:
    """The facts of a host whose KSM cannot be read: every key present, empty."""
    return {
        "available": False,
        "reason": reason,
        "sysfs_path": sysfs_root,
        "kernel_release": release,
        "page_size": page_size,
        "writable": False,
        "writable_reason": reason,
        "state": None,
        "tunables": {},
        "statistics": {},
        "features": {"knobs": [], "statistics": [], "other_files": [], "process_file": None},
        "saved_pages": None,
        "saved_bytes": None,
        "rmap_items": None,
        "profit_bytes": None,
        "profit_source": None,
        "sharing_ratio": None,
        "unshared_ratio": None,
        "scan_rate": None,
        "full_scan_seconds": None,
        "numa": None,
        "ksmd": None,
        "services": None,
        "processes": [],
        "memory": None,
        "managers": [],
        "merging_services": [],
        "governor": None,
    }


def collect(sysfs_root: str = DEFAULT_ROOT, processes: int = 10, proc_root: str = PROC_ROOT,
            node_root: str = NODE_ROOT, systemd_root: str = SYSTEMD_ROOT,
            run_command: t.Optional[RunCommand] = None, systemctl: t.Optional[str] = None,
            page_size: t.Optional[int] = None, clock_ticks: t.Optional[int] = None, euid: t.Optional[int] = None,
            release: t.Optional[str] = None, bits: t.Optional[int] = None,
            warn: t.Optional[t.Callable[[str], None]] = None, root: str = "/") -> Facts:
    """Everything ansible_facts.ksm holds. Never writes; never fails on a host without KSM. A KSM file other than
    run that cannot be read is null, with a warning through warn; an unreadable run makes KSM unavailable.
    root: the file system root of the configuration files the manager detection reads (tests pass a fake tree)."""
    page_size = page_size or _procfs.page_size()
    clock_ticks = clock_ticks or _procfs.clock_ticks()
    release = release or kernel_release()
    bits = bits or word_bits()
    ksm = Sysfs(sysfs_root)
    if not os.path.isdir(sysfs_root):
        return unavailable(sysfs_root, release, page_size,
                           "{0} does not exist: kernel {1} was built without KSM (CONFIG_KSM) or /sys is not "
                           "mounted here".format(sysfs_root, release))
    if not ksm.available():
        return unavailable(sysfs_root, release, page_size,
                           "{0} has no run file: this is not a KSM sysfs directory".format(sysfs_root))
    try:
        names = sorted(os.listdir(sysfs_root))
        state = ksm.read("run")
    except KsmError as exc:
        return unavailable(sysfs_root, release, page_size, str(exc).rstrip("."))
    except (IOError, OSError) as exc:
        return unavailable(sysfs_root, release, page_size,
                           "cannot read {0}: {1}".format(sysfs_root, getattr(exc, "strerror", None) or exc))
    tunables = read_values(ksm, (k.name for k in TUNABLES if k.name != "run"), warn)
    statistics = read_values(ksm, STATISTIC_NAMES, warn)
    can_write, why_not = writable(sysfs_root, euid)
    scan = scan_proc(proc_root, processes, page_size)
    services = service_facts(run_command, systemctl, systemd_root)
    facts: Facts = {
        "available": True,
        "reason": "",
        "sysfs_path": sysfs_root,
        "kernel_release": release,
        "page_size": page_size,
        "writable": can_write,
        "writable_reason": why_not,
        "state": state,
        "tunables": tunables,
        "statistics": statistics,
        "features": {
            "knobs": [n for n in names if n in KNOBS],
            "statistics": [n for n in names if n in STATISTIC_NAMES],
            "other_files": [n for n in names if n not in KNOBS and n not in STATISTIC_NAMES],
            "process_file": scan["source"] if processes > 0 else _procfs.process_source(proc_root),
        },
        "numa": numa_facts(node_root, t.cast(t.Optional[bool], tunables.get("merge_across_nodes"))),
        "ksmd": ksmd_facts(proc_root, clock_ticks, scan["ksmd_pid"]),
        "services": services,
        "processes": scan["processes"],
        "merging_services": scan["merging_services"],
        "managers": _managers.detect(services["units"], scan["comm_pids"], root),
        # the role's own budget governor (not one of the managers): its state file, null where it never ran
        "governor": _governor_state.read_state(os.path.join(root, _governor_state.DEFAULT_STATE.lstrip("/"))),
    }
    facts["numa"]["numad_pids"] = scan["comm_pids"]["numad"]
    facts["numa"]["numad_running"] = bool(scan["comm_pids"]["numad"])
    facts["services"]["ksmtuned_running"] = bool(scan["ksmtuned_pids"])
    facts["services"]["ksmtuned_pids"] = scan["ksmtuned_pids"]
    facts.update(derive(tunables, statistics, page_size, bits))
    facts["memory"] = _memory.memory_facts(_procfs.meminfo(proc_root), facts["saved_bytes"], scan["guests"])
    return facts
