# Copyright (c) kvmhost.ksm contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Fake KSM sysfs trees shaped like real kernels, for layouts and faults this machine cannot produce.

``ksm_tree(layout="6.8", numa=True, **values)`` builds <tmp>/ksm with the files of that kernel at their defaults
(values override them, as typed or text) and returns its path. Layouts: "4.18" (RHEL 8: the 14 files of 4.13),
"5.14" (RHEL 9, same 14), "6.1" (Debian 12, same 14), "6.8" (all 24; also 6.12 and 6.18).
"""

import os

import pytest

BASE = {  # 2.6.32 .. 4.13: the 14 files of RHEL 8/9 and Debian 12 kernels
    "run": "0",
    "pages_to_scan": "100",
    "sleep_millisecs": "20",
    "pages_shared": "0",
    "pages_sharing": "0",
    "pages_unshared": "0",
    "pages_volatile": "0",
    "full_scans": "0",
    "merge_across_nodes": "1",
    "use_zero_pages": "0",
    "max_page_sharing": "256",
    "stable_node_chains_prune_millisecs": "2000",
    "stable_node_chains": "0",
    "stable_node_dups": "0",
}
NEW = {  # 6.4 .. 6.8
    "general_profit": "0",
    "ksm_zero_pages": "0",
    "pages_scanned": "0",
    "smart_scan": "1",
    "pages_skipped": "0",
    "advisor_mode": "[none] scan-time",
    "advisor_max_cpu": "70",
    "advisor_min_pages_to_scan": "500",
    "advisor_max_pages_to_scan": "30000",
    "advisor_target_scan_time": "200",
}
LAYOUTS = {"4.18": BASE, "5.14": BASE, "6.1": BASE, "6.8": dict(BASE, **NEW)}


def _text(name, value):
    if isinstance(value, bool):
        return "1" if value else "0"
    if name == "advisor_mode" and "[" not in str(value):
        return " ".join("[%s]" % m if m == value else m for m in ("none", "scan-time"))
    if name == "run" and not str(value).isdigit():
        return str(("stopped", "running", "unmerged").index(value))
    return str(value)


def make_tree(root, layout="6.8", numa=True, **values):
    files = dict(LAYOUTS[layout])
    if not numa:
        del files["merge_across_nodes"]
    for name, value in values.items():
        files[name] = _text(name, value)
    os.makedirs(str(root))
    for name, text in files.items():
        with open(os.path.join(str(root), name), "w") as f:
            f.write(text + "\n")
    return str(root)


@pytest.fixture
def ksm_tree(tmp_path):
    def build(layout="6.8", numa=True, **values):
        return make_tree(tmp_path / "ksm", layout, numa, **values)
    return build
