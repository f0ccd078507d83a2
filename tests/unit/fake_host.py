# Copyright (c) kvmhost.ksm contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Fake /proc and NUMA node trees for the ksm_facts unit tests (kernels and processes this machine cannot show).

``make_proc(root, processes, ksm_file)`` and ``make_nodes(root, distances, memory)`` build the trees under root and
return its path; ``ksm_stat_text(...)`` is a /proc/<pid>/ksm_stat in the kernel's two line formats, and
``OBSERVED_6_18`` the one of an idle process as read on the 6.18 test machine.
"""

import os

OBSERVED_6_18 = (  # /proc/self/ksm_stat of an idle process on the 6.18 test machine
    "ksm_rmap_items 0\nksm_zero_pages 0\nksm_merging_pages 0\nksm_process_profit 0\n"
    "ksm_merge_any: no\nksm_mergeable: no\n"
)


def proc_stat_line(pid, comm, ppid=1, utime=0, stime=0):
    """A /proc/<pid>/stat line: fields 1-2, then 3.. with ppid (4), utime (14), stime (15)."""
    rest = ["S", str(ppid)] + ["0"] * 9 + [str(utime), str(stime)] + ["0"] * 37
    return "{0} ({1}) {2}\n".format(pid, comm, " ".join(rest))


def ksm_stat_text(merging=0, rmap=0, zero=None, profit=None, merge_any=None, mergeable=None):
    """/proc/<pid>/ksm_stat as the kernel prints it (both line formats); None leaves a line out (older kernels)."""
    lines = ["ksm_rmap_items %d" % rmap]
    if zero is not None:
        lines.append("ksm_zero_pages %d" % zero)
    lines.append("ksm_merging_pages %d" % merging)
    if profit is not None:
        lines.append("ksm_process_profit %d" % profit)
    if merge_any is not None:
        lines.append("ksm_merge_any: %s" % ("yes" if merge_any else "no"))
    if mergeable is not None:
        lines.append("ksm_mergeable: %s" % ("yes" if mergeable else "no"))
    return "\n".join(lines) + "\n"


def make_proc(root, processes, ksm_file="ksm_stat"):
    """A fake /proc: processes is a list of dicts with pid, comm, and optionally ppid, utime, stime, ksm (text of the
    per-process KSM file, None for no file), ksm_stat (text of a second file, ksm_file "6.1" only), cmdline (argv).
    ksm_file: "ksm_stat" (6.4+), "ksm_merging_pages" (5.19-6.0), "6.1" (ksm_merging_pages in "ksm", plus a ksm_stat
    with ksm_rmap_items only) or None (a kernel with neither file); 'self' gets the same files."""
    root = str(root)
    os.makedirs(os.path.join(root, "self"))
    selfs = {"ksm_stat": {"ksm_stat": ksm_stat_text()}, "ksm_merging_pages": {"ksm_merging_pages": "0\n"},
             "6.1": {"ksm_merging_pages": "0\n", "ksm_stat": "ksm_rmap_items 0\n"}, None: {}}[ksm_file]
    for name, text in selfs.items():
        with open(os.path.join(root, "self", name), "w") as f:
            f.write(text)
    for proc in processes:
        base = os.path.join(root, str(proc["pid"]))
        os.makedirs(base)
        with open(os.path.join(base, "stat"), "w") as f:
            f.write(proc_stat_line(proc["pid"], proc["comm"], proc.get("ppid", 1), proc.get("utime", 0),
                                   proc.get("stime", 0)))
        with open(os.path.join(base, "comm"), "w") as f:
            f.write(proc["comm"] + "\n")
        if ksm_file and proc.get("ksm") is not None:
            with open(os.path.join(base, "ksm_merging_pages" if ksm_file == "6.1" else ksm_file), "w") as f:
                f.write(proc["ksm"])
        if ksm_file == "6.1" and proc.get("ksm_stat") is not None:
            with open(os.path.join(base, "ksm_stat"), "w") as f:
                f.write(proc["ksm_stat"])
        with open(os.path.join(base, "cmdline"), "wb") as f:
            argv = proc.get("cmdline", [])
            f.write("".join(a + "\0" for a in argv).encode("utf-8"))
    return root


def make_nodes(root, distances, memory=None):
    """A fake /sys/devices/system/node: distances[i] is node i's distance row; memory lists the memory nodes."""
    root = str(root)
    os.makedirs(root)
    nodes = list(range(len(distances)))
    memory = nodes if memory is None else memory

    def ranges(items):
        return ",".join(str(i) for i in items)

    for name, items in (("online", nodes), ("possible", nodes), ("has_memory", memory)):
        with open(os.path.join(root, name), "w") as f:
            f.write(ranges(items) + "\n")
    for node, row in zip(nodes, distances):
        os.makedirs(os.path.join(root, "node%d" % node))
        with open(os.path.join(root, "node%d" % node, "distance"), "w") as f:
            f.write(" ".join(str(d) for d in row) + "\n")
    return root
