# Copyright (c) kvmhost.ksm contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The ksm module through AnsibleModule on fake KSM trees: results, check and diff mode, persistence, errors."""

import errno
import os

import pytest

from ansible.module_utils import basic
from ansible_collections.kvmhost.ksm.plugins.module_utils import _procfs, _sysfs
from ansible_collections.kvmhost.ksm.plugins.modules import ksm as module
from ansible_collections.kvmhost.ksm.tests.unit.module_args import patch_module_args


class Exit(Exception):
    pass


class Fail(Exception):
    pass


LOCK_FILE = []


@pytest.fixture(autouse=True)
def exits(monkeypatch, tmp_path):
    warned = []
    LOCK_FILE[:] = [str(tmp_path / "kvmhost-ksm.lock")]  # not the host's lock under /run/lock

    def exit_json(self, **result):
        raise Exit(dict(result, warnings=list(warned)))

    def fail_json(self, msg, **result):
        raise Fail(dict(result, msg=msg))

    monkeypatch.setattr(basic.AnsibleModule, "exit_json", exit_json)
    monkeypatch.setattr(basic.AnsibleModule, "fail_json", fail_json)
    monkeypatch.setattr(basic.AnsibleModule, "warn", lambda self, warning: warned.append(warning))
    monkeypatch.setattr(_sysfs, "kernel_release", lambda: "4.18.0-553.el8.x86_64")


def call(args, check=False, diff=False):
    """Run main() and return (ok, result)."""
    args = dict(dict(lock_file=LOCK_FILE[0]), **dict(args, _ansible_check_mode=check, _ansible_diff=diff))
    with patch_module_args(args):
        try:
            module.main()
        except Exit as exc:
            return True, exc.args[0]
        except Fail as exc:
            return False, exc.args[0]
    raise AssertionError("main() returned without exit_json or fail_json")


def ok(args, **flags):
    success, result = call(args, **flags)
    assert success, result["msg"]
    return result


def fail(args, **flags):
    success, result = call(args, **flags)
    assert not success, result
    assert "\n" not in result["msg"] and "Traceback" not in result["msg"]
    return result["msg"]


def files(root):
    texts = {}
    for name in sorted(os.listdir(root)):
        with open(os.path.join(root, name)) as f:
            texts[name] = f.read()
    return texts


def test_argument_spec_matches_documentation():
    import yaml
    documented = yaml.safe_load(module.DOCUMENTATION)["options"]
    spec = module.argument_spec()
    assert sorted(documented) == sorted(spec)
    for name, option in spec.items():
        assert documented[name]["type"] == option["type"], name
        assert documented[name].get("default") == option.get("default"), name
        assert documented[name].get("choices") == option.get("choices"), name


KNOB_CASES = [  # option, value, file, text written
    ("state", "running", "run", "1"),
    ("state", "unmerged", "run", "2"),
    ("pages_to_scan", 5000, "pages_to_scan", "5000"),
    ("sleep_millisecs", 0, "sleep_millisecs", "0"),
    ("stable_node_chains_prune_millisecs", 4000, "stable_node_chains_prune_millisecs", "4000"),
    ("max_page_sharing", 2, "max_page_sharing", "2"),
    ("merge_across_nodes", False, "merge_across_nodes", "0"),
    ("use_zero_pages", True, "use_zero_pages", "1"),
    ("smart_scan", False, "smart_scan", "0"),
    ("advisor_mode", "scan-time", "advisor_mode", "scan-time"),
    ("advisor_max_cpu", 100, "advisor_max_cpu", "100"),
    ("advisor_min_pages_to_scan", 10, "advisor_min_pages_to_scan", "10"),
    ("advisor_max_pages_to_scan", 600, "advisor_max_pages_to_scan", "600"),
    ("advisor_target_scan_time", 1, "advisor_target_scan_time", "1"),
]


@pytest.mark.parametrize("option, value, name, text", KNOB_CASES)
def test_each_knob_check_apply_idempotent(ksm_tree, option, value, name, text):
    root = ksm_tree("6.8")
    args = {option: value, "sysfs_path": root}
    untouched = files(root)
    results = [ok(args, check=True)]
    assert files(root) == untouched
    results += [ok(args), ok(args), ok(args, check=True)]
    assert [r["changed"] for r in results] == [True, True, False, False]
    assert files(root)[name].strip() == text
    assert results[1]["after"] == {option: value} and results[2]["before"] == {option: value}
    assert results[0]["after"] == results[1]["after"]
    assert "diff" not in results[1]


@pytest.mark.parametrize("layout, numa", [("4.18", True), ("6.1", True), ("6.8", True), ("6.8", False)])
def test_every_knob_of_a_layout_at_once(ksm_tree, layout, numa):
    root = ksm_tree(layout, numa)
    present = set(os.listdir(root))
    args = dict((o, v) for o, v, n, _t in KNOB_CASES if n in present and not (o == "state" and v == "unmerged"))
    args.pop("advisor_mode", None)  # keep pages_to_scan legal
    args["sysfs_path"] = root
    first, second = ok(args), ok(args)
    assert first["changed"] and not second["changed"]
    assert second["before"] == second["after"] == dict((k, v) for k, v in args.items() if k != "sysfs_path")


def test_no_options_reports_nothing(ksm_tree):
    result = ok({"sysfs_path": ksm_tree()}, diff=True)
    assert (result["changed"], result["before"], result["after"], result["unmerged"]) == (False, {}, {}, False)
    assert len(result["diff"]) == 1


def test_diff_shape(ksm_tree, tmp_path):
    root = ksm_tree("6.8")
    persist = str(tmp_path / "tmpfiles.d" / "ksm.conf")
    args = {"sysfs_path": root, "pages_to_scan": 1000, "state": "running", "persist": True, "persist_file": persist}
    result = ok(args, check=True, diff=True)
    values, text = result["diff"]
    assert values == {"before": {"pages_to_scan": 100, "state": "stopped"},
                      "after": {"pages_to_scan": 1000, "state": "running"},
                      "before_header": root, "after_header": root}
    assert text["before"] == "" and text["before_header"] == text["after_header"] == persist
    assert text["after"].splitlines()[1:] == ["w {0}/pages_to_scan - - - - 1000".format(root),
                                              "w {0}/run - - - - 1".format(root)]
    assert not os.path.exists(persist)


def test_persist_writes_merges_and_is_idempotent(ksm_tree, tmp_path):
    root = ksm_tree("6.1")
    persist = tmp_path / "ksm.conf"
    persist.write_text(u"# mine\nw {0}/run - - - - 1\nw /sys/kernel/mm/transparent_hugepage/enabled - - - - never\n"
                       .format(root))
    args = {"sysfs_path": root, "merge_across_nodes": False, "persist": True, "persist_file": str(persist)}
    results = [ok(args, check=True), ok(args), ok(args), ok(args, check=True)]
    assert [r["changed"] for r in results] == [True, True, False, False]
    assert persist.read_text().splitlines() == [
        "# mine",
        "w {0}/merge_across_nodes - - - - 0".format(root),
        "w {0}/run - - - - 1".format(root),
        "w /sys/kernel/mm/transparent_hugepage/enabled - - - - never",
    ]
    assert oct(os.stat(str(persist)).st_mode & 0o777) == oct(0o644)
    assert [n for n in os.listdir(str(tmp_path)) if n.startswith(".kvmhost")] == []


def test_persist_only_file_changes(ksm_tree, tmp_path):
    root = ksm_tree("6.8", sleep_millisecs=10)
    args = {"sysfs_path": root, "sleep_millisecs": 10, "persist": True, "persist_file": str(tmp_path / "k.conf")}
    first = ok(args)
    assert first["changed"] and first["before"] == first["after"] == {"sleep_millisecs": 10}
    assert not ok(args)["changed"]


def test_persist_file_unwritable_writes_nothing(ksm_tree, tmp_path):
    root = ksm_tree("6.8")
    blocker = tmp_path / "file"
    blocker.write_text(u"")
    before = files(root)
    msg = fail({"sysfs_path": root, "sleep_millisecs": 1, "persist": True,
                "persist_file": str(blocker / "sub" / "k.conf")})
    assert msg.startswith("Cannot write persist_file " + str(blocker / "sub" / "k.conf"))
    assert files(root) == before


@pytest.mark.parametrize("args, words", [
    ({"advisor_mode": "scan-time"}, ["kernel 4.18.0-553.el8.x86_64 has no", "/advisor_mode", "leave advisor_mode"]),
    ({"smart_scan": True}, ["has no", "/smart_scan"]),
])
def test_missing_knob_names_the_kernel_release(ksm_tree, args, words):
    root = ksm_tree("4.18")
    before = files(root)
    msg = fail(dict(args, sysfs_path=root, sleep_millisecs=1))
    for word in words:
        assert word in msg
    assert files(root) == before


@pytest.mark.parametrize("args, words", [
    ({"max_page_sharing": 1}, ["max_page_sharing=1", "between 2 and"]),
    ({"advisor_max_cpu": 0}, ["between 1 and 100"]),
    ({"advisor_target_scan_time": 0}, ["advisor_target_scan_time=0"]),
    ({"pages_to_scan": -5}, ["pages_to_scan=-5"]),
    ({"sleep_millisecs": 4294967296}, ["between 0 and 4294967295"]),
    ({"pages_to_scan": 10, "advisor_mode": "scan-time"}, ["pages_to_scan while advisor_mode is scan-time"]),
    ({"advisor_min_pages_to_scan": 30001}, ["above advisor_max_pages_to_scan=30000"]),
    ({"advisor_mode": "fast"}, ["advisor_mode", "fast"]),  # argspec choices
    ({"state": "on"}, ["state", "on"]),
    ({"pages_to_scan": "many"}, ["pages_to_scan", "int"]),
    ({"merge_across_nodes": "maybe"}, ["merge_across_nodes"]),
    ({"no_such_option": 1}, ["no_such_option"]),
])
def test_bad_input_writes_nothing(ksm_tree, args, words):
    root = ksm_tree("6.8")
    before = files(root)
    msg = fail(dict(dict(sysfs_path=root, sleep_millisecs=1, use_zero_pages=True, state="running"), **args))
    for word in words:
        assert word in msg
    assert files(root) == before


def test_ksm_absent(tmp_path):
    msg = fail({"sysfs_path": str(tmp_path / "nothing"), "state": "running"})
    assert "KSM is not available" in msg and "CONFIG_KSM" in msg and "4.18.0-553.el8.x86_64" in msg


@pytest.fixture
def kernel(monkeypatch, ksm_kernel):
    """Make the module use a FakeKernel built like ksm_kernel(...)."""
    made = {}

    def build(*args, **kwargs):
        made["kernel"] = ksm_kernel(*args, **kwargs)
        monkeypatch.setattr(module, "Sysfs", lambda root: made["kernel"])
        return made["kernel"]
    return build


def test_ebusy_without_allow_unmerge_fails_and_says_why(kernel):
    ksm = kernel("6.8", run="running", pages_shared=100, pages_sharing=300)
    before = ksm.read_tunables()
    msg = fail({"sysfs_path": ksm.root, "merge_across_nodes": False, "sleep_millisecs": 5})
    assert "{0} bytes are merged now".format(300 * os.sysconf("SC_PAGE_SIZE")) in msg
    assert "EBUSY" in msg and "allow_unmerge: true" in msg
    assert ksm.log == [] and ksm.read_tunables() == before


def test_ebusy_with_allow_unmerge(kernel):
    ksm = kernel("6.8", run="running", pages_shared=100, pages_sharing=300)
    args = {"sysfs_path": ksm.root, "merge_across_nodes": False, "allow_unmerge": True}
    check = ok(args, check=True)
    assert (check["changed"], check["unmerged"], ksm.log) == (True, True, [])
    result = ok(args)
    assert (result["changed"], result["unmerged"], result["after"]) == (True, True, {"merge_across_nodes": False})
    assert ksm.log == [("run", "2"), ("merge_across_nodes", "0"), ("run", "1")]
    assert ksm.read("run") == "running"
    again = ok(args)
    assert (again["changed"], again["unmerged"]) == (False, False)


def test_ebusy_unmerge_refused_without_memory(kernel, monkeypatch):
    ksm = kernel("6.8", run="running", pages_shared=100, pages_sharing=300)
    monkeypatch.setattr(_procfs, "mem_available", lambda proc_root: 4096)
    msg = fail({"sysfs_path": ksm.root, "max_page_sharing": 100, "allow_unmerge": True})
    assert "MemAvailable is only 4096 bytes" in msg and ksm.log == []


def test_failure_midway_rolls_back_through_the_module(kernel):
    ksm = kernel("6.8", faults={"use_zero_pages": errno.EINVAL})
    before = ksm.read_tunables()
    msg = fail({"sysfs_path": ksm.root, "sleep_millisecs": 5, "use_zero_pages": True, "smart_scan": False})
    assert msg.endswith("check the allowed range of use_zero_pages; rolled back sleep_millisecs=20.")
    assert ksm.read_tunables() == before


def test_read_only_sysfs(kernel):
    ksm = kernel("6.8", faults={"run": errno.EROFS})
    msg = fail({"sysfs_path": ksm.root, "state": "running"})
    assert "mounted read-only" in msg and msg.endswith("nothing had been changed.")
    assert "container" not in msg  # only a read-only /sys looks like a container (test__sysfs)


def test_warnings(kernel, monkeypatch):
    ksm = kernel("6.8")
    monkeypatch.setattr(_procfs, "processes_named", lambda comm, proc_root: [4242] if comm == "ksmtuned" else [])
    result = ok({"sysfs_path": ksm.root, "sleep_millisecs": 5, "advisor_max_cpu": 20})
    assert len(result["warnings"]) == 2
    assert "ksmtuned is running (pid 4242)" in result["warnings"][0]
    assert "advisor_max_cpu takes effect only while advisor_mode is scan-time" in result["warnings"][1]


def test_leaving_the_advisor_restores_pages_to_scan(kernel):
    ksm = kernel("6.8", advisor_mode="scan-time", pages_to_scan=500)
    args = {"sysfs_path": ksm.root, "advisor_mode": "none", "pages_to_scan": 500}
    result = ok(args)
    assert result["changed"] and result["after"] == {"advisor_mode": "none", "pages_to_scan": 500}
    assert ksm.written() == ["advisor_mode", "pages_to_scan"]
    assert not ok(args)["changed"]
