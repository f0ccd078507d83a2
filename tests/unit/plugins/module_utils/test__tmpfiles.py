# Copyright (c) kvmhost.ksm contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The persist file format (tmpfiles.d 'w' lines): new files, merging with existing entries, reading and staging."""

import os

import pytest

from ansible_collections.kvmhost.ksm.plugins.module_utils import _tmpfiles
from ansible_collections.kvmhost.ksm.plugins.module_utils._sysfs import KsmError

ROOT = "/sys/kernel/mm/ksm"


def test_persist_text_new_file_in_safe_order_run_last():
    text = _tmpfiles.persist_text("", {"run": "running", "max_page_sharing": 512, "pages_to_scan": 1000,
                                       "advisor_mode": "none", "use_zero_pages": True}, ROOT)
    assert text.splitlines() == [
        _tmpfiles.PERSIST_HEADER,
        "w /sys/kernel/mm/ksm/advisor_mode - - - - none",
        "w /sys/kernel/mm/ksm/pages_to_scan - - - - 1000",
        "w /sys/kernel/mm/ksm/use_zero_pages - - - - 1",
        "w /sys/kernel/mm/ksm/max_page_sharing - - - - 512",
        "w /sys/kernel/mm/ksm/run - - - - 1",
    ]


def test_persist_text_merges_with_existing_entries():
    old = ("# my notes\n"
           "w /sys/kernel/mm/ksm/run - - - - 1\n"
           "w /sys/kernel/mm/ksm/sleep_millisecs - - - - 50\n"
           "w /sys/kernel/mm/transparent_hugepage/enabled - - - - never\n"
           "d /run/foo 0755 root root -\n")
    text = _tmpfiles.persist_text(old, {"sleep_millisecs": 10, "merge_across_nodes": False}, ROOT)
    assert text.splitlines() == [
        "# my notes",
        "w /sys/kernel/mm/ksm/sleep_millisecs - - - - 10",
        "w /sys/kernel/mm/ksm/merge_across_nodes - - - - 0",
        "w /sys/kernel/mm/ksm/run - - - - 1",
        "w /sys/kernel/mm/transparent_hugepage/enabled - - - - never",
        "d /run/foo 0755 root root -",
    ]
    assert _tmpfiles.persist_text(text, {"sleep_millisecs": 10}, ROOT) == text  # idempotent


def test_persist_text_drops_pages_to_scan_under_the_advisor():
    old = "w /sys/kernel/mm/ksm/pages_to_scan - - - - 1000\n"
    assert _tmpfiles.persist_text(old, {"advisor_mode": "scan-time"}, ROOT) == \
        "w /sys/kernel/mm/ksm/advisor_mode - - - - scan-time\n"


def test_persist_text_nothing_requested():
    assert _tmpfiles.persist_text("", {}, ROOT) == ""
    assert _tmpfiles.persist_text("# mine\n", {}, ROOT) == "# mine\n"


def test_persist_text_other_root_is_left_alone():
    old = "w /sys/kernel/mm/ksm/run - - - - 0\n"
    text = _tmpfiles.persist_text(old, {"run": "running"}, "/tmp/fake/ksm")
    assert text.splitlines() == ["w /sys/kernel/mm/ksm/run - - - - 0", "w /tmp/fake/ksm/run - - - - 1"]


@pytest.mark.parametrize("line, entry", [
    ("w /sys/kernel/mm/ksm/run - - - - 1", ("run", "1")),
    ("w+ /sys/kernel/mm/ksm/sleep_millisecs - - - - 20", ("sleep_millisecs", "20")),
    ("w /sys/kernel/mm/ksm/run", ("run", "")),
    ("w /sys/kernel/mm/ksm/pages_shared - - - - 0", None),  # a statistic, not a knob
    ("w /sys/kernel/mm/transparent_hugepage/enabled - - - - never", None),
    ("d /sys/kernel/mm/ksm/run 0755 root root -", None),
    ("# w /sys/kernel/mm/ksm/run - - - - 1", None),
    ("", None),
])
def test_parse_entry(line, entry):
    assert _tmpfiles.parse_entry(line, ROOT) == entry


def test_change_of_a_new_file(tmp_path):
    path = str(tmp_path / "k.conf")
    assert _tmpfiles.change(path, {"run": "running"}, ROOT) == (path, "", _tmpfiles.PERSIST_HEADER + "\n"
                                                                "w /sys/kernel/mm/ksm/run - - - - 1\n")


def test_stage_file_next_to_the_target(tmp_path):
    path = str(tmp_path / "tmpfiles.d" / "k.conf")
    tmp = _tmpfiles.stage_file(path, "w x\n")
    assert os.path.dirname(tmp) == os.path.dirname(path) and os.path.basename(tmp).startswith(".kvmhost-ksm.")
    assert open(tmp).read() == "w x\n" and oct(os.stat(tmp).st_mode & 0o777) == oct(0o644)


def test_unreadable_persist_file_is_one_sentence(tmp_path):
    with pytest.raises(KsmError, match="^Cannot read persist_file .*: it is a directory, not a file; set "
                                       "persist_file to a file in it; nothing was written.$"):
        _tmpfiles.read_file(str(tmp_path))
