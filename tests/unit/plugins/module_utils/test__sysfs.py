# Copyright (c) kvmhost.ksm contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The sysfs layer on fake trees: parsing, formatting, layouts, errors, waiting for unmerging."""

import errno

import pytest

from ansible_collections.kvmhost.ksm.plugins.module_utils import _sysfs


@pytest.mark.parametrize("name, text, value", [
    ("run", "0", "stopped"),
    ("run", "1\n", "running"),
    ("run", "2", "unmerged"),
    ("run", "17", "running"),  # bit 4: memory offlining in progress
    ("advisor_mode", "[none] scan-time", "none"),
    ("advisor_mode", "none [scan-time]\n", "scan-time"),
    ("advisor_mode", "scan-time", "scan-time"),
    ("merge_across_nodes", "1", True),
    ("use_zero_pages", "0", False),
    ("pages_to_scan", "100\n", 100),
    ("general_profit", "-4096", -4096),
])
def test_parse(name, text, value):
    assert _sysfs.parse(name, text) == value


@pytest.mark.parametrize("name, value, text", [
    ("run", "unmerged", "2"),
    ("run", "stopped", "0"),
    ("smart_scan", True, "1"),
    ("merge_across_nodes", False, "0"),
    ("advisor_mode", "scan-time", "scan-time"),
    ("max_page_sharing", 256, "256"),
])
def test_format_value(name, value, text):
    assert _sysfs.format_value(name, value) == text


@pytest.mark.parametrize("layout, numa, present, absent", [
    ("4.18", True, {"max_page_sharing", "merge_across_nodes"}, {"smart_scan", "advisor_mode"}),
    ("6.1", True, {"use_zero_pages", "stable_node_chains_prune_millisecs"}, {"smart_scan", "advisor_max_cpu"}),
    ("6.8", True, {"smart_scan", "advisor_mode", "advisor_target_scan_time"}, set()),
    ("6.8", False, {"advisor_mode"}, {"merge_across_nodes"}),
])
def test_read_tunables_follows_the_files(ksm_tree, layout, numa, present, absent):
    values = _sysfs.Sysfs(ksm_tree(layout, numa)).read_tunables()
    assert present <= set(values)
    assert not absent & set(values)
    assert values["run"] == "stopped"


def test_write_then_read_back(ksm_tree):
    ksm = _sysfs.Sysfs(ksm_tree("6.8"))
    ksm.write("advisor_mode", "scan-time")
    ksm.write("use_zero_pages", True)
    ksm.write("run", "running")
    assert (ksm.read("advisor_mode"), ksm.read("use_zero_pages"), ksm.read("run")) == ("scan-time", True, "running")


def test_write_missing_knob_is_one_sentence(ksm_tree):
    ksm = _sysfs.Sysfs(ksm_tree("4.18"))
    with pytest.raises(_sysfs.KsmError) as info:
        ksm.write("smart_scan", True)
    assert info.value.errno == errno.ENOENT
    assert "has no such KSM file" in str(info.value) and "smart_scan" in str(info.value)
    assert str(info.value).count(". ") == 0 and str(info.value).endswith(".")


def test_only_ksm_files_can_be_named(ksm_tree):
    ksm = _sysfs.Sysfs(ksm_tree())
    for name in ("../../etc/passwd", "pages_shared", "/etc/shadow"):
        with pytest.raises(ValueError):
            ksm.write_text(name, "1")


@pytest.mark.parametrize("err, name, words", [
    (errno.ENOENT, "advisor_mode", ["kernel 4.18.0-fake has no such KSM file", "leave advisor_mode unset"]),
    (errno.EROFS, "run", ["read-only", "container"]),
    (errno.EACCES, "run", ["root", "become: true"]),
    (errno.EPERM, "run", ["root", "become: true"]),
    (errno.EBUSY, "merge_across_nodes", ["pages are merged", "allow_unmerge"]),
    (errno.EINVAL, "pages_to_scan", ["advisor_mode", "scan-time"]),
    (errno.EINVAL, "max_page_sharing", ["invalid", "range of max_page_sharing"]),
    (errno.ENOMEM, "run", ["out of memory"]),
    (errno.EINTR, "run", ["interrupted", "run the task again"]),
    (errno.EIO, "run", ["kernel log"]),
])
def test_explain(err, name, words):
    message = _sysfs.explain("/sys/kernel/mm/ksm/" + name, "2", err, "4.18.0-fake", euid=1000)
    assert message.startswith("Cannot write '2' to /sys/kernel/mm/ksm/" + name)
    for word in words:
        assert word in message
    assert message.endswith(".") and "\n" not in message


@pytest.mark.parametrize("err", [errno.EACCES, errno.EPERM])
def test_explain_permission_denied_as_root_names_the_causes(err):
    message = _sysfs.explain("/sys/kernel/mm/ksm/run", "1", err, "6.18", euid=0)
    for word in ("although running as root", "immutable", "lsattr", "chattr -i", "SELinux", "AppArmor"):
        assert word in message
    assert "become" not in message and message.endswith(".") and "\n" not in message


def test_explain_read_only_outside_sys_is_no_container():
    message = _sysfs.explain("/srv/fake/ksm/run", "1", errno.EROFS, "6.18")
    assert "/srv/fake/ksm is on a file system mounted read-only" in message and "container" not in message


def test_wait_unmerged(ksm_tree):
    done = _sysfs.Sysfs(ksm_tree("6.1", pages_shared=0))
    assert done.wait_unmerged(0) is True


def test_wait_unmerged_times_out(tmp_path, ksm_tree):
    busy = _sysfs.Sysfs(ksm_tree("6.1", pages_shared=7))
    assert busy.wait_unmerged(0.05, interval=0.01) is False
