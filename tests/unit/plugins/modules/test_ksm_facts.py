# Copyright (c) kvmhost.ksm contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The ksm_facts module as Ansible runs it: argument handling, result shape, documentation in step with the code.

KSM comes from fake trees (sysfs_path); /proc, the NUMA nodes and systemd are this machine's, read-only.
"""

import json
import os

import pytest
import yaml

from ansible.module_utils import basic

from ansible_collections.kvmhost.ksm.plugins.modules import ksm_facts
from ansible_collections.kvmhost.ksm.tests.unit.module_args import patch_module_args


class Exit(Exception):
    def __init__(self, result, failed):
        super(Exit, self).__init__(result)
        self.result = result
        self.failed = failed


def run(monkeypatch, **args):
    def exit_json(self, **result):
        raise Exit(result, False)

    def fail_json(self, **result):
        raise Exit(result, True)

    monkeypatch.setattr(basic.AnsibleModule, "exit_json", exit_json)
    monkeypatch.setattr(basic.AnsibleModule, "fail_json", fail_json)
    with patch_module_args(args):
        with pytest.raises(Exit) as caught:
            ksm_facts.main()
    return caught.value


def snapshot(root):
    return dict((n, open(os.path.join(root, n)).read()) for n in sorted(os.listdir(root)))


DOC = yaml.safe_load(ksm_facts.DOCUMENTATION)
RETURN = yaml.safe_load(ksm_facts.RETURN)
KSM_DOC = RETURN["ansible_facts"]["contains"]["ksm"]["contains"]


def test_argument_spec_matches_documentation():
    spec = ksm_facts.argument_spec()
    assert sorted(spec) == sorted(DOC["options"])
    for name, option in DOC["options"].items():
        assert spec[name]["type"] == option["type"]
        assert spec[name].get("default") == option.get("default")


def test_examples_use_fqcn():
    examples = yaml.safe_load(ksm_facts.EXAMPLES)
    modules = [k for task in examples for k in task if k not in ("name", "when", "loop")]
    assert modules and all(m.count(".") == 2 for m in modules)


@pytest.mark.parametrize("layout", ["4.18", "6.1", "6.8"])
def test_returns_ksm_facts_and_changes_nothing(monkeypatch, ksm_tree, layout):
    sysfs = ksm_tree(layout, run="running", pages_sharing=30, pages_shared=10)
    before = snapshot(sysfs)
    out = run(monkeypatch, sysfs_path=sysfs)
    assert out.failed is False
    assert out.result["changed"] is False
    ksm = out.result["ansible_facts"]["ksm"]
    assert ksm["available"] is True
    assert ksm["sysfs_path"] == sysfs
    assert ksm["state"] == "running"
    assert ksm["saved_bytes"] == 30 * os.sysconf("SC_PAGE_SIZE")
    assert ksm["page_size"] == os.sysconf("SC_PAGE_SIZE")
    assert snapshot(sysfs) == before
    json.dumps(out.result)  # plain JSON types only


def test_every_returned_fact_is_documented_and_the_other_way_round(monkeypatch, ksm_tree):
    ksm = run(monkeypatch, sysfs_path=ksm_tree("6.8")).result["ansible_facts"]["ksm"]
    assert sorted(ksm) == sorted(KSM_DOC)
    for key in ("features", "numa", "ksmd", "services", "memory"):
        if ksm[key] is not None:
            assert sorted(ksm[key]) == sorted(KSM_DOC[key]["contains"]), key
    assert sorted(ksm["tunables"]) == sorted(KSM_DOC["tunables"]["contains"])
    assert sorted(ksm["statistics"]) == sorted(KSM_DOC["statistics"]["contains"])
    documented = set(KSM_DOC["processes"]["contains"])
    for process in ksm["processes"]:
        assert set(process) <= documented


def test_check_mode_returns_the_same_facts(monkeypatch, ksm_tree):
    sysfs = ksm_tree("6.8")
    out = run(monkeypatch, sysfs_path=sysfs, processes=0, _ansible_check_mode=True)
    assert out.failed is False and out.result["changed"] is False
    assert out.result["ansible_facts"]["ksm"]["tunables"]["pages_to_scan"] == 100


def test_missing_sysfs_path_is_not_a_failure(monkeypatch, tmp_path):
    out = run(monkeypatch, sysfs_path=str(tmp_path / "absent"))
    assert out.failed is False
    ksm = out.result["ansible_facts"]["ksm"]
    assert ksm["available"] is False
    assert str(tmp_path / "absent") in ksm["reason"]


def test_negative_processes_fails_in_one_sentence(monkeypatch, ksm_tree):
    out = run(monkeypatch, sysfs_path=ksm_tree("6.8"), processes=-1)
    assert out.failed is True
    assert out.result["msg"].startswith("processes is -1") and out.result["msg"].count(".") == 1


def test_unknown_option_is_rejected(monkeypatch, ksm_tree):
    out = run(monkeypatch, sysfs_path=ksm_tree("6.8"), gather_subset="all")
    assert out.failed is True
    assert "gather_subset" in out.result["msg"]
