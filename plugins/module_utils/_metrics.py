# -*- coding: utf-8 -*-
# Copyright (c) kvmhost.ksm contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

# Note that this module util is **PRIVATE** to the collection. It can have breaking changes at any time.
# Do not use this from other collections or standalone plugins/modules!

"""KSM metrics for node_exporter's textfile collector, made from the facts of _facts.collect (one collector).

``render(facts, ...)`` is pure: the Prometheus text exposition of a facts dict (HELP and TYPE lines, no
timestamps). ``write_textfile(directory, text)`` writes it the textfile collector's way (a temporary file in the
same directory, renamed over kvmhost_ksm.prom). ``main(argv)`` is the command the role installs on hosts
(roles/ksm/templates/kvmhost-ksm-metrics.j2 puts this directory's files on sys.path and calls it).
Stdlib only. Runs on Python 3.6+. Every metric is listed in the role README ("Metrics").
"""

import argparse
import os
import sys
import tempfile
import time
import typing as t

from ansible_collections.kvmhost.ksm.plugins.module_utils._facts import collect
from ansible_collections.kvmhost.ksm.plugins.module_utils._sysfs import DEFAULT_ROOT, RUN_STATES

PREFIX = "kvmhost_ksm_"
TEXTFILE_NAME = "kvmhost_ksm.prom"
DEFAULT_TEXTFILE_DIR = "/var/lib/prometheus/node-exporter"  # what Debian's prometheus-node-exporter reads

Facts = t.Dict[str, t.Any]
Labels = t.List[t.Tuple[str, str]]


class Family(t.NamedTuple):
    """A metric family: its name without PREFIX, TYPE and HELP."""

    name: str
    kind: str  # "gauge" or "counter"
    help: str


# statistic file -> its family. Counters only where the kernel counts up (full_scans restarts at run=2).
STATISTICS = {
    "pages_shared": Family("shared_pages", "gauge", "KSM pages in use, the copies kept (pages_shared)."),
    "pages_sharing": Family("sharing_pages", "gauge",
                            "Further mappings of the KSM pages, the pages saved (pages_sharing)."),
    "pages_unshared": Family("unshared_pages", "gauge", "Unique pages checked repeatedly (pages_unshared)."),
    "pages_volatile": Family("volatile_pages", "gauge", "Pages changing too fast to merge (pages_volatile)."),
    "full_scans": Family("full_scans_total", "counter", "Completed full scans; restarts at run=2 (full_scans)."),
    "stable_node_chains": Family("stable_node_chains", "gauge",
                                 "KSM pages that reached max_page_sharing (stable_node_chains)."),
    "stable_node_dups": Family("stable_node_dups", "gauge", "Duplicated KSM pages in those chains (stable_node_dups)."),
    "general_profit": Family("general_profit_bytes", "gauge",
                             "Bytes saved minus KSM's metadata cost, signed, as the kernel reports it "
                             "(general_profit)."),
    "ksm_zero_pages": Family("zero_pages", "gauge", "Empty pages merged with the kernel zero page (ksm_zero_pages)."),
    "pages_scanned": Family("scanned_pages_total", "counter", "Pages scanned since boot (pages_scanned)."),
    "pages_skipped": Family("skipped_pages_total", "counter", "Pages skipped by smart scan (pages_skipped)."),
}

# tunable file -> its family and the factor to the family's unit (milliseconds and percent to base units).
TUNABLES = {
    "pages_to_scan": (Family("scan_batch_pages", "gauge", "Pages scanned per ksmd wake-up (pages_to_scan)."), 1),
    "sleep_millisecs": (Family("sleep_seconds", "gauge", "Time ksmd sleeps between batches (sleep_millisecs)."), 0.001),
    "merge_across_nodes": (Family("merge_across_nodes", "gauge",
                                  "1 when pages merge across NUMA nodes (merge_across_nodes)."), 1),
    "use_zero_pages": (Family("use_zero_pages", "gauge",
                              "1 when empty pages merge with the kernel zero page (use_zero_pages)."), 1),
    "max_page_sharing": (Family("max_page_sharing", "gauge", "Most mappings of one KSM page (max_page_sharing)."), 1),
    "stable_node_chains_prune_millisecs": (
        Family("stable_node_chains_prune_seconds", "gauge",
               "How often stale stable node chains are pruned (stable_node_chains_prune_millisecs)."), 0.001),
    "smart_scan": (Family("smart_scan", "gauge",
                          "1 when pages that repeatedly failed to merge are skipped (smart_scan)."), 1),
    "advisor_max_cpu": (Family("advisor_max_cpu_ratio", "gauge",
                               "Most CPU the scan-time advisor lets ksmd use, 1 = one core (advisor_max_cpu / 100)."),
                        0.01),
    "advisor_min_pages_to_scan": (Family("advisor_min_scan_batch_pages", "gauge",
                                         "Initial pages_to_scan of the advisor (advisor_min_pages_to_scan)."), 1),
    "advisor_max_pages_to_scan": (Family("advisor_max_scan_batch_pages", "gauge",
                                         "Upper limit of pages_to_scan under the advisor (advisor_max_pages_to_scan)."),
                                  1),
    "advisor_target_scan_time": (Family("advisor_target_scan_time_seconds", "gauge",
                                        "Time one full scan should take under the advisor (advisor_target_scan_time)."),
                                 1),
}

HOST = (
    Family("available", "gauge", "1 when this kernel has KSM and its sysfs directory could be read."),
    Family("info", "gauge", "Always 1; the labels say the role's mode, the run state, the advisor mode, "
                            "merge_across_nodes and its recommendation, and the kernel release."),
    Family("run_state", "gauge", "The KSM run state: 0 stopped, 1 running, 2 stopped with every page unmerged."),
    Family("advisor_active", "gauge", "1 when the scan-time advisor sets pages_to_scan (advisor_mode scan-time)."),
    Family("saved_bytes", "gauge", "Memory KSM saves, (pages_sharing + ksm_zero_pages) x page size."),
    Family("profit_bytes", "gauge", "Memory saved minus KSM's metadata cost, signed: general_profit where the "
                                    "kernel has it, else an estimate."),
    Family("rmap_items", "gauge", "Pages KSM tracks, pages_shared + pages_sharing + pages_unshared + "
                                  "pages_volatile."),
    Family("ksmd_cpu_seconds_total", "counter", "CPU time the ksmd kernel thread used since boot."),
    Family("ksmtuned_running", "gauge", "Number of ksmtuned processes running."),
    Family("numa_memory_nodes", "gauge", "NUMA nodes with memory."),
    Family("recommended_merge_across_nodes", "gauge",
           "The merge_across_nodes the RHEL guidance recommends: 0 with more than one memory node, else 1."),
    Family("multi_tenant", "gauge", "1 when the host is marked multi-tenant (role variable ksm_metrics_multi_tenant)."),
    Family("page_size_bytes", "gauge", "The host's page size."),
    Family("collect_interval_seconds", "gauge",
           "How often this file is rewritten (role variable ksm_metrics_interval)."),
    Family("collect_timestamp_seconds", "gauge", "When this file was written, seconds since the epoch."),
)

PROCESS = (
    ("merged_bytes", Family("process_merged_bytes", "gauge",
                            "Memory of a process backed by KSM pages, (ksm_merging_pages + ksm_zero_pages) x "
                            "page size; top processes only.")),
    ("profit_bytes", Family("process_profit_bytes", "gauge",
                            "Net saving of a process (ksm_process_profit), signed; top processes only.")),
    ("rmap_items", Family("process_rmap_items", "gauge",
                          "Pages of a process KSM tracks (ksm_rmap_items); top processes only.")),
)


def escape(value: str) -> str:
    """A label value for the text format: backslash, double quote and newline escaped."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def number(value: t.Any) -> str:
    """A sample value: bools as 1/0, integers as they are, floats without a trailing .0 noise."""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    return repr(float(value))


def sample(family: Family, value: t.Any, labels: t.Optional[Labels] = None) -> str:
    text = ",".join('{0}="{1}"'.format(k, escape(v)) for k, v in labels or [])
    return "{0}{1}{2} {3}".format(PREFIX, family.name, "{" + text + "}" if text else "", number(value))


def _flag(value: t.Any) -> str:
    return "" if value is None else ("true" if value else "false")


def samples(facts: Facts,
            mode: str = "",
            multi_tenant: bool = False,
            interval: t.Optional[float] = None,
            now: t.Optional[float] = None) -> t.List[t.Tuple[Family, t.Any, Labels]]:
    """Every sample of a facts dict, in family order; per process the facts' processes with an optional 'unit'."""
    by_name = dict((f.name, f) for f in HOST)
    out: t.List[t.Tuple[Family, t.Any, Labels]] = []

    def add(name: str, value: t.Any, labels: t.Optional[Labels] = None) -> None:
        out.append((by_name[name], value, labels or []))

    available = bool(facts.get("available"))
    tunables = facts.get("tunables") or {}
    numa = facts.get("numa") or {}
    add("available", available)
    add("info", 1, [("mode", mode or ""), ("state", facts.get("state") or ""),
                    ("advisor_mode", str(tunables.get("advisor_mode", ""))),
                    ("merge_across_nodes", _flag(tunables.get("merge_across_nodes"))),
                    ("recommended_merge_across_nodes", _flag(numa.get("recommended_merge_across_nodes"))),
                    ("profit_source", facts.get("profit_source") or ""),
                    ("kernel_release", facts.get("kernel_release") or "")])
    if available:
        add("run_state", RUN_STATES.index(facts["state"]))
        if "advisor_mode" in tunables:
            add("advisor_active", tunables["advisor_mode"] == "scan-time")
        for name in ("saved_bytes", "profit_bytes", "rmap_items"):
            add(name, facts[name])
        if facts.get("ksmd"):
            add("ksmd_cpu_seconds_total", facts["ksmd"]["cpu_seconds"])
        add("ksmtuned_running", len((facts.get("services") or {}).get("ksmtuned_pids") or []))
        add("numa_memory_nodes", len(numa.get("memory_nodes") or []))
        if numa.get("recommended_merge_across_nodes") is not None:
            add("recommended_merge_across_nodes", numa["recommended_merge_across_nodes"])
    add("multi_tenant", multi_tenant)
    add("page_size_bytes", facts.get("page_size") or 0)
    if interval:
        add("collect_interval_seconds", interval)
    add("collect_timestamp_seconds", round(time.time() if now is None else now, 3))
    statistics = facts.get("statistics") or {}
    for name, family in STATISTICS.items():
        if name in statistics:
            out.append((family, statistics[name], []))
    for name, (family, factor) in TUNABLES.items():
        if name in tunables:
            value = tunables[name]
            out.append((family, value if factor == 1 else round(value * factor, 6), []))
    for key, family in PROCESS:
        for record in facts.get("processes") or []:
            if key not in record:
                continue
            labels = [("pid", str(record["pid"])), ("comm", record.get("comm") or "")]
            if record.get("guest"):
                labels.append(("guest", record["guest"]))
            if record.get("unit"):
                labels.append(("unit", record["unit"]))
            out.append((family, record[key], labels))
    return out


def render(facts: Facts,
           mode: str = "",
           multi_tenant: bool = False,
           interval: t.Optional[float] = None,
           now: t.Optional[float] = None) -> str:
    """The Prometheus text exposition of facts: each family once, with HELP and TYPE, then its samples."""
    lines: t.List[str] = []
    seen: t.Set[str] = set()
    for family, value, labels in samples(facts, mode, multi_tenant, interval, now):
        if family.name not in seen:
            seen.add(family.name)
            lines.append("# HELP {0}{1} {2}".format(PREFIX, family.name, family.help))
            lines.append("# TYPE {0}{1} {2}".format(PREFIX, family.name, family.kind))
        lines.append(sample(family, value, labels))
    return "\n".join(lines) + "\n"


def write_textfile(directory: str, text: str, name: str = TEXTFILE_NAME) -> str:
    """Write text to directory/name through a temporary file in the same directory (not ending in .prom, so the
    textfile collector never reads it half written) and a rename; mode 0644. Returns the path."""
    path = os.path.join(directory, name)
    fd, tmp = tempfile.mkstemp(prefix="." + name + ".", dir=directory)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.rename(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def parse_args(argv: t.Optional[t.List[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="kvmhost-ksm-metrics",
        description="Write the KSM metrics of this host for node_exporter's textfile collector "
                    "(kvmhost.ksm collection; the same collector as kvmhost.ksm.ksm_facts).")
    parser.add_argument("--textfile-dir", default=DEFAULT_TEXTFILE_DIR,
                        help="directory node_exporter's textfile collector reads (default: %(default)s)")
    parser.add_argument("--processes", type=int, default=10, help="top N processes by merged pages (default 10)")
    parser.add_argument("--mode", default="", help="the role's effective mode, for the info metric")
    parser.add_argument("--interval", type=float, default=None, help="seconds between runs, exported as a metric")
    parser.add_argument("--multi-tenant", action="store_true", help="mark the host multi-tenant")
    parser.add_argument("--sysfs-path", default=DEFAULT_ROOT, help=argparse.SUPPRESS)  # tests
    parser.add_argument("--stdout", action="store_true", help="print the metrics instead of writing the file")
    return parser.parse_args(argv)


def main(argv: t.Optional[t.List[str]] = None) -> int:
    args = parse_args(argv)
    if args.processes < 0:
        sys.stderr.write("kvmhost-ksm-metrics: --processes is {0}, but it must be 0 or more.\n".format(args.processes))
        return 2
    facts = collect(sysfs_root=args.sysfs_path, processes=args.processes)  # with each process's unit
    text = render(facts, mode=args.mode, multi_tenant=args.multi_tenant, interval=args.interval)
    if args.stdout:
        sys.stdout.write(text)
        return 0
    try:
        write_textfile(args.textfile_dir, text)
    except (IOError, OSError) as exc:
        sys.stderr.write("kvmhost-ksm-metrics: cannot write {0}: {1}; create the directory or pass the one "
                         "node_exporter's --collector.textfile.directory names.\n".format(
                             os.path.join(args.textfile_dir, TEXTFILE_NAME), exc.strerror or exc))
        return 1
    return 0
