# Copyright (c) kvmhost.ksm contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Bad inputs and broken trees, table-driven: the ksm module run as Ansible runs it (a process of its own).

Every case must fail with a message that names the file or option at fault (and every one of them when there are
several), with no traceback anywhere in the output and no line break in the message (several problems are one
sentence each, in one line); the KSM tree (every entry's kind and content) and the persist file (its kind, link
target and content, and the file a link points to) must be exactly as before. A persist file that is a link or not
a drop-in is never read: its target's content appears nowhere in the output, in check and diff mode too.
"""

import os
import shutil
import stat
import subprocess

import pytest

from ansible_collections.kvmhost.ksm.plugins.modules import ksm as module
from ansible_collections.kvmhost.ksm.tests.unit import module_process
from ansible_collections.kvmhost.ksm.tests.unit.kernel_model import KernelModel

SECRET = "root:$6$kvmhost-ksm-secret$NOT-FOR-OUTPUT:19000:0:99999:7:::"


def put(name, text):
    def setup(tree, tmp):
        with open(os.path.join(tree, name), "w") as f:
            f.write(text)
    return setup


def kind(name, make):
    def setup(tree, tmp):
        path = os.path.join(tree, name)
        os.unlink(path)
        make(path, tmp)
    return setup


def as_dir(path, tmp):
    os.mkdir(path)


def as_fifo(path, tmp):
    os.mkfifo(path)


def as_link(path, tmp):
    target = os.path.join(tmp, "elsewhere")
    with open(target, "w") as f:
        f.write("1\n")
    os.symlink(target, path)


def remove(name):
    def setup(tree, tmp):
        os.unlink(os.path.join(tree, name))
    return setup


def secret(tmp):
    path = os.path.join(tmp, "shadow")
    with open(path, "w") as f:
        f.write(SECRET + "\n")
    os.chmod(path, 0o600)
    return path


def persist_link(tree, tmp):
    os.symlink(secret(tmp), os.path.join(tmp, "persist.conf"))


def persist_dangling(tree, tmp):
    os.symlink(os.path.join(tmp, "missing"), os.path.join(tmp, "persist.conf"))


def persist_dir(tree, tmp):
    os.mkdir(os.path.join(tmp, "persist.conf"))


def persist_fifo(tree, tmp):
    os.mkfifo(os.path.join(tmp, "persist.conf"))


def persist_foreign(tree, tmp):
    shutil.copy(secret(tmp), os.path.join(tmp, "persist.conf"))


def chattr(path):
    try:
        done = subprocess.call(["chattr", "+i", path], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) == 0
    except OSError:
        done = False
    if not done:
        print("skipping: chattr +i does not work on {0} (not root, no chattr, or tmpfs without it)".format(path))
        pytest.skip("chattr +i does not work on {0} (not root, no chattr, or a file system without it)".format(path))


def persist_immutable(tree, tmp):
    path = os.path.join(tmp, "persist.conf")
    with open(path, "w") as f:
        f.write("w {0}/run - - - - 1\n".format(tree))
    chattr(path)


def persist_dir_immutable(tree, tmp):
    os.mkdir(os.path.join(tmp, "locked"))
    chattr(os.path.join(tmp, "locked"))


def a_file(tree, tmp):
    with open(os.path.join(tmp, "file"), "w") as f:
        f.write("1\n")


PERSIST = {"persist": True, "persist_file": "{tmp}/persist.conf"}
BAD = [  # id, args (added to sysfs_path, lock_file and sleep_millisecs=7), words the message holds, setup, flags
    # values the kernel would take or refuse, checked before any write
    ("max_page_sharing below 2", {"max_page_sharing": 1}, ["max_page_sharing", "{tree}/max_page_sharing"]),
    ("max_page_sharing above INT_MAX", {"max_page_sharing": 2147483648}, ["max_page_sharing", "2147483647"]),
    ("advisor_max_cpu 0", {"advisor_max_cpu": 0}, ["advisor_max_cpu", "{tree}/advisor_max_cpu"]),
    ("advisor_max_cpu 101", {"advisor_max_cpu": 101}, ["advisor_max_cpu", "100"]),
    ("advisor_target_scan_time 0", {"advisor_target_scan_time": 0}, ["advisor_target_scan_time"]),
    ("pages_to_scan negative", {"pages_to_scan": -1}, ["pages_to_scan", "{tree}/pages_to_scan"]),
    ("pages_to_scan above UINT_MAX", {"pages_to_scan": 4294967296}, ["pages_to_scan", "4294967295"]),
    ("sleep_millisecs negative", {"sleep_millisecs": -20}, ["sleep_millisecs", "{tree}/sleep_millisecs"]),
    ("prune above UINT_MAX", {"stable_node_chains_prune_millisecs": 4294967296}, ["stable_node_chains_prune"]),
    ("advisor_min negative", {"advisor_min_pages_to_scan": -1}, ["advisor_min_pages_to_scan"]),
    ("advisor_max above ULONG_MAX", {"advisor_max_pages_to_scan": 18446744073709551616},
     ["advisor_max_pages_to_scan"]),
    ("advisor_min above the host's max", {"advisor_min_pages_to_scan": 40000}, ["advisor_min_pages_to_scan", "30000"]),
    ("advisor_min above the requested max", {"advisor_min_pages_to_scan": 100, "advisor_max_pages_to_scan": 50},
     ["advisor_min_pages_to_scan", "advisor_max_pages_to_scan"]),
    ("pages_to_scan under scan-time", {"pages_to_scan": 10, "advisor_mode": "scan-time"},
     ["pages_to_scan", "scan-time"]),
    ("knob missing on this kernel", {"smart_scan": False}, ["smart_scan", "{tree}/smart_scan"], remove("smart_scan")),
    # wrong types and choices (the argument spec)
    ("pages_to_scan a word", {"pages_to_scan": "many"}, ["pages_to_scan"]),
    ("merge_across_nodes maybe", {"merge_across_nodes": "maybe"}, ["merge_across_nodes"]),
    ("sleep_millisecs a list", {"sleep_millisecs": [1]}, ["sleep_millisecs"]),
    ("state on", {"state": "on"}, ["state", "on"]),
    ("advisor_mode fast", {"advisor_mode": "fast"}, ["advisor_mode", "fast"]),
    ("use_zero_pages 2", {"use_zero_pages": 2}, ["use_zero_pages"]),
    ("pages_to_scan 1.5", {"pages_to_scan": 1.5}, ["pages_to_scan"]),
    ("unknown option", {"no_such_option": 1}, ["no_such_option"]),
    ("lock_timeout a word", {"lock_timeout": "soon"}, ["lock_timeout"]),
    # what a broken tree or an odd kernel can show
    ("run 7 (run & 3 = 3)", {"state": "running"}, ["{tree}/run", "7"], put("run", "7\n")),
    ("run a word", {"state": "running"}, ["{tree}/run", "running"], put("run", "running\n")),
    ("run empty", {"state": "running"}, ["{tree}/run"], put("run", "")),
    ("statistic a word", {}, ["{tree}/pages_shared", "lots"], put("pages_shared", "lots\n")),
    ("statistic a dash", {"state": "unmerged"}, ["{tree}/pages_sharing"], put("pages_sharing", "-\n")),
    ("statistic in e notation", {}, ["{tree}/full_scans", "1e5"], put("full_scans", "1e5\n")),
    ("knob a word", {"pages_to_scan": 200}, ["{tree}/pages_to_scan", "abc"], put("pages_to_scan", "abc\n")),
    ("knob two numbers", {}, ["{tree}/sleep_millisecs", "12 34"], put("sleep_millisecs", "12 34\n")),
    ("bool knob a word", {"merge_across_nodes": False}, ["{tree}/merge_across_nodes", "yes"],
     put("merge_across_nodes", "yes\n")),
    ("knob empty", {"max_page_sharing": 300}, ["{tree}/max_page_sharing"], put("max_page_sharing", "")),
    ("knob a directory", {"pages_to_scan": 200}, ["{tree}/pages_to_scan"], kind("pages_to_scan", as_dir)),
    ("run a directory", {"state": "running"}, ["{tree}/run"], kind("run", as_dir)),
    ("statistic a directory", {}, ["{tree}/pages_shared"], kind("pages_shared", as_dir)),
    ("knob a FIFO", {}, ["{tree}/sleep_millisecs"], kind("sleep_millisecs", as_fifo)),
    ("run a symlink", {"state": "running"}, ["{tree}/run"], kind("run", as_link)),
    # sysfs_path
    ("sysfs_path empty", {"sysfs_path": ""}, ["sysfs_path"]),
    ("sysfs_path relative", {"sysfs_path": "relative/ksm"}, ["sysfs_path", "relative/ksm"]),
    ("sysfs_path relative, persist", dict(PERSIST, sysfs_path="ksm"), ["sysfs_path"]),
    ("sysfs_path a file", {"sysfs_path": "{tmp}/file"}, ["{tmp}/file"], a_file),
    ("sysfs_path /", {"sysfs_path": "/", "sleep_millisecs": None, "state": "stopped"}, ["/run"]),
    ("sysfs_path missing", {"sysfs_path": "{tmp}/nothing"}, ["{tmp}/nothing"]),
    # persist_file
    ("persist_file a symlink to a 0600 file", PERSIST, ["{tmp}/persist.conf", "link"], persist_link),
    ("persist_file a symlink, check and diff", PERSIST, ["{tmp}/persist.conf", "link"], persist_link, "check"),
    ("persist_file a dangling symlink", PERSIST, ["{tmp}/persist.conf"], persist_dangling),
    ("persist_file a directory", PERSIST, ["{tmp}/persist.conf", "directory"], persist_dir),
    ("persist_file a FIFO, check and diff", PERSIST, ["{tmp}/persist.conf"], persist_fifo, "check"),
    ("persist_file not a drop-in", PERSIST, ["{tmp}/persist.conf"], persist_foreign, "check"),
    ("persist_file relative", dict(PERSIST, persist_file="ksm.conf"), ["persist_file", "ksm.conf"]),
    ("persist_file empty", dict(PERSIST, persist_file=""), ["persist_file"]),
    ("persist_file immutable", PERSIST, ["{tmp}/persist.conf", "immutable"], persist_immutable),
    ("persist_file in an immutable directory", dict(PERSIST, persist_file="{tmp}/locked/ksm.conf"),
     ["{tmp}/locked"], persist_dir_immutable),
    # lock_file
    ("lock_file relative", {"lock_file": "ksm.lock"}, ["lock_file", "ksm.lock"]),
    ("lock_file a directory", {"lock_file": "{tmp}"}, ["{tmp}"]),
    # several at once: every one named
    ("three bad values", {"max_page_sharing": 1, "advisor_max_cpu": 0, "advisor_target_scan_time": 0},
     ["3 problems", "max_page_sharing", "advisor_max_cpu", "advisor_target_scan_time"]),
    ("bad values, a missing knob and a bad persist_file",
     dict(PERSIST, pages_to_scan=-1, smart_scan=True, advisor_max_cpu=500),
     ["pages_to_scan", "{tree}/smart_scan", "advisor_max_cpu", "{tmp}/persist.conf"],
     lambda tree, tmp: (remove("smart_scan")(tree, tmp), persist_link(tree, tmp))),
]


def snapshot(path):
    """Kind, link target and content of path and of every entry below it (FIFOs are never opened)."""
    found = {}
    if not os.path.lexists(path):
        return {path: None}
    paths = [path]
    if os.path.isdir(path) and not os.path.islink(path):
        paths += sorted(os.path.join(base, n) for base, dirs, files in os.walk(path) for n in dirs + files)
    for entry in paths:
        mode = os.lstat(entry).st_mode
        if stat.S_ISLNK(mode):
            found[entry] = ("link", os.readlink(entry), snapshot(os.path.realpath(entry)))
        elif stat.S_ISREG(mode):
            with open(entry, "rb") as f:
                found[entry] = ("file", stat.S_IMODE(mode), f.read())
        else:
            found[entry] = (stat.S_IFMT(mode), None)
    return found


@pytest.fixture
def undo_immutable(tmp_path):
    yield
    subprocess.call(["chattr", "-R", "-i", str(tmp_path)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def fill(value, tree, tmp):
    if isinstance(value, str):
        return value.format(tree=tree, tmp=tmp)
    return value


def test_the_table_is_big_enough():
    assert len(BAD) >= 40
    assert len(set(case[0] for case in BAD)) == len(BAD)


@pytest.mark.parametrize("case", BAD, ids=[case[0] for case in BAD])
def test_bad_input_fails_with_one_sentence_and_changes_nothing(tmp_path, undo_immutable, case):
    name, args, words = case[:3]
    setup = case[3] if len(case) > 3 else None
    check = len(case) > 4 and case[4] == "check"
    tmp = str(tmp_path)
    tree = KernelModel.build(os.path.join(tmp, "ksm"), "6.8").root
    if setup is not None:
        setup(tree, tmp)
    full = {"sysfs_path": tree, "lock_file": os.path.join(tmp, "ksm.lock"), "sleep_millisecs": 7}
    full.update((k, fill(v, tree, tmp)) for k, v in args.items())
    full = dict((k, v) for k, v in full.items() if v is not None)
    watched = [tree, os.path.join(tmp, "persist.conf"), os.path.join(tmp, "shadow"), os.path.join(tmp, "locked"),
               os.path.join(tmp, "elsewhere")]
    before = dict((p, snapshot(p)) for p in watched)

    run = module_process.run("ksm", full, module_process.top_of(module), check=check, diff=True, timeout=30)

    assert "Traceback" not in run.output, run.output
    assert run.failed and run.result, (name, run.result, run.stderr)
    msg = run.result["msg"]
    assert isinstance(msg, str) and msg and "\n" not in msg, msg
    for word in words:
        assert fill(word, tree, tmp) in msg, (name, word, msg)
    assert SECRET not in run.output and "NOT-FOR-OUTPUT" not in run.output, run.output
    assert dict((p, snapshot(p)) for p in watched) == before, (name, "the tree or the persist file changed")


def test_dotdot_and_slashes_in_sysfs_path_give_one_normalised_line(tmp_path):
    """sysfs_path with .., doubled and trailing slashes: the drop-in holds the normalised path, once."""
    tree = KernelModel.build(str(tmp_path / "ksm"), "6.8").root
    persist = str(tmp_path / "persist.conf")
    odd = str(tmp_path) + "//sub/../ksm/"
    common = {"lock_file": str(tmp_path / "ksm.lock"), "persist": True, "persist_file": persist}
    top = module_process.top_of(module)
    first = module_process.run("ksm", dict(common, sysfs_path=odd, sleep_millisecs=7), top)
    assert not first.failed, first.result.get("msg") or first.stderr
    second = module_process.run("ksm", dict(common, sysfs_path=tree, sleep_millisecs=7), top)
    assert not second.failed and not second.result["changed"], second.result
    with open(persist) as f:
        lines = [line for line in f.read().splitlines() if line.startswith("w")]
    assert lines == ["w {0}/sleep_millisecs - - - - 7".format(tree)]
