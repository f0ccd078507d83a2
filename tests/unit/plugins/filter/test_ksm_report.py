# Copyright (c) kvmhost.ksm contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The ksm_report filter on registered results: rows for every kind of host, totals, top guests, the findings.

The playbook and its page on real hosts: tests/report/check_report.py (nox session report, VM lab phase report).
"""

import pytest

pytest.importorskip("jmespath", reason="the ksm_report filter needs jmespath (tests/unit/requirements.txt)")

from ansible.errors import AnsibleFilterError  # noqa: E402

from ansible_collections.kvmhost.ksm.plugins.filter.ksm_report import FilterModule, ksm_report  # noqa: E402


def facts(saved=0, profit=0, cpu=1.0, state="running", advisor="none", pages=100, ksmtuned=(), merge=True,
          recommended=True, nodes=1, processes=()):
    return {"ansible_facts": {"ksm": {
        "available": True, "reason": "", "kernel_release": "6.8.0", "state": state, "saved_bytes": saved,
        "profit_bytes": profit, "profit_source": "general_profit", "ksmd": {"pid": 40, "cpu_seconds": cpu},
        "tunables": {"merge_across_nodes": merge, "advisor_mode": advisor, "pages_to_scan": pages,
                     "advisor_min_pages_to_scan": 500},
        "numa": {"memory_nodes": list(range(nodes)), "recommended_merge_across_nodes": recommended},
        "services": {"ksmtuned_pids": list(ksmtuned), "ksmtuned_running": bool(ksmtuned)},
        "processes": list(processes)}}}


def guest(pid, name, merged, profit=None):
    return {"pid": pid, "comm": "qemu-system-x86", "guest": name, "merged_bytes": merged, "profit_bytes": profit,
            "merging_pages": merged // 4096}


RESULTS = {
    "b-host": facts(saved=300, profit=-100, cpu=3.0, processes=[guest(7, "web", 4096, 10), guest(8, None, 99999)]),
    "a-host": facts(saved=700, profit=600, cpu=1.0, processes=[guest(9, "db", 8192)]),
    "no-ksm": {"ansible_facts": {"ksm": {"available": False, "reason": "no KSM here", "kernel_release": "5.0"}}},
    "gone": {"unreachable": True, "msg": "ssh: connection refused"},
    "broken": {"failed": True, "msg": "no python"},
}


def test_rows_for_every_host_sorted_with_status_and_reason():
    report = ksm_report(RESULTS, generated="now")
    rows = {row["host"]: row for row in report["hosts"]}
    assert [row["host"] for row in report["hosts"]] == sorted(RESULTS)
    assert rows["gone"] == {"host": "gone", "status": "unreachable", "reason": "ssh: connection refused"}
    assert rows["broken"]["status"] == "failed" and rows["broken"]["reason"] == "no python"
    assert rows["no-ksm"]["status"] == "unavailable" and rows["no-ksm"]["reason"] == "no KSM here"
    assert rows["a-host"]["status"] == "ok" and rows["a-host"]["reason"] == ""
    assert report["generated"] == "now"


def test_totals_and_ksmd_share():
    report = ksm_report(RESULTS)
    assert report["totals"] == {"hosts": 5, "available": 2, "saved_bytes": 1000, "profit_bytes": 500,
                                "ksmd_cpu_seconds": 4.0, "guests": 2}
    rows = {row["host"]: row for row in report["hosts"]}
    assert rows["b-host"]["ksmd_share"] == 0.75 and rows["a-host"]["ksmd_share"] == 0.25


def test_top_guests_across_the_fleet_by_merged_memory():
    report = ksm_report(RESULTS, top=5)
    assert [(g["host"], g["guest"], g["merged_bytes"]) for g in report["top_guests"]] == [
        ("a-host", "db", 8192), ("b-host", "web", 4096)]  # a process without a guest name is not a guest
    assert ksm_report(RESULTS, top=1)["top_guests"][0]["guest"] == "db"


@pytest.mark.parametrize("kwargs, field, expected", [
    ({}, "mode", "running"),
    ({"state": "stopped"}, "mode", "stopped"),
    ({"ksmtuned": [5]}, "mode", "ksmtuned"),
    ({"advisor": "scan-time"}, "mode", "advisor"),
    ({"ksmtuned": [5]}, "ksmtuned_fighting", False),
    ({"ksmtuned": [5, 6]}, "ksmtuned_fighting", True),
    ({"ksmtuned": [5], "advisor": "scan-time"}, "ksmtuned_fighting", True),
    ({"advisor": "scan-time", "pages": 10}, "advisor_stalled", True),
    ({"advisor": "scan-time", "pages": 500}, "advisor_stalled", False),
    ({"advisor": "scan-time", "pages": 10, "state": "stopped"}, "advisor_stalled", False),
    ({"merge": True, "recommended": False, "nodes": 2}, "numa_ok", False),
    ({"merge": False, "recommended": False, "nodes": 2}, "numa_ok", True),
    ({"recommended": None}, "numa_ok", None),
])
def test_findings(kwargs, field, expected):
    assert ksm_report({"h": facts(**kwargs)})["hosts"][0][field] == expected


def test_wrong_input_is_one_sentence():
    with pytest.raises(AnsibleFilterError, match="expects a mapping of host name"):
        ksm_report(["h"])


def test_registered_as_a_filter():
    assert FilterModule().filters()["ksm_report"] is ksm_report
