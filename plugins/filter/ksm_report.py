# -*- coding: utf-8 -*-
# Copyright (c) kvmhost.ksm contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

DOCUMENTATION = r"""
name: ksm_report
short_description: The KSM fleet report from the registered results of kvmhost.ksm.ksm_facts
version_added: 1.0.0
description:
  - Turns the results of one M(kvmhost.ksm.ksm_facts) task per host into the report that the playbook
    C(kvmhost.ksm.report) writes as JSON, Markdown and HTML; fleet totals, a row per host and the top guests.
  - A host whose task was unreachable or failed, and a host without KSM, get a row with the reason.
  - The queries over the facts are JMESPath expressions (the C(jmespath) Python package, on the controller).
  - "Row fields: C(mode) is what the facts show (V(ksmtuned) when ksmtuned runs, V(advisor) when the scan-time advisor
    is on, V(running) or V(stopped) otherwise); C(ksmd_share) is the host's share of the fleet's ksmd CPU seconds;
    C(numa_ok) is V(false) when C(merge_across_nodes) differs from the NUMA recommendation; C(ksmtuned_fighting) is
    V(true) when ksmtuned runs while the advisor is on (both set C(pages_to_scan)) or when more than one ksmtuned runs;
    C(advisor_stalled) is V(true) when KSM runs under the advisor with C(pages_to_scan) below
    C(advisor_min_pages_to_scan)."
author:
  - kvmhost.ksm maintainers (!UNKNOWN)
options:
  _input:
    description: A mapping of host name to the registered result of its M(kvmhost.ksm.ksm_facts) task.
    type: dict
    required: true
  top:
    description: How many guests (processes with a QEMU guest name) to list, most merged memory first.
    type: int
    default: 10
  generated:
    description: When the facts were gathered (shown on the report), for example C(now(utc=true\).isoformat(\)).
    type: str
    default: ""
"""

EXAMPLES = r"""
---
- name: Build the report from the registered results of every host
  ansible.builtin.set_fact:
    report: "{{ dict(hosts | zip(hosts | map('extract', hostvars, 'ksm_result'))) | kvmhost.ksm.ksm_report(top=5) }}"
  vars:
    hosts: "{{ ansible_play_hosts_all }}"
"""

RETURN = r"""
_value:
  description: The report.
  type: dict
  contains:
    generated:
      description: The O(generated) text.
      type: str
    totals:
      description: Fleet totals over the hosts with KSM (C(hosts), C(available), C(saved_bytes), C(profit_bytes),
        C(ksmd_cpu_seconds), C(guests)).
      type: dict
    hosts:
      description: One row per host, sorted by name, with C(host), C(status) (V(ok), V(unavailable), V(unreachable),
        V(failed)), C(reason) and the fields above.
      type: list
      elements: dict
    top_guests:
      description: The O(top) guests across the fleet with C(host), C(guest), C(pid), C(comm), C(merged_bytes) and
        C(profit_bytes).
      type: list
      elements: dict
"""

import json
import typing as t

from ansible.errors import AnsibleFilterError

try:
    import jmespath  # type: ignore[import-untyped]
except ImportError:  # checked when the filter is used: a clear message instead of an import error
    jmespath = None

Row = t.Dict[str, t.Any]

# One host's facts -> its row fields (JMESPath multiselect over ansible_facts.ksm).
ROW = (
    "{kernel_release: kernel_release, state: state, saved_bytes: saved_bytes, profit_bytes: profit_bytes,"
    " profit_source: profit_source, ksmd_cpu_seconds: ksmd.cpu_seconds,"
    " merge_across_nodes: tunables.merge_across_nodes,"
    " recommended_merge_across_nodes: numa.recommended_merge_across_nodes,"
    " memory_nodes: length(numa.memory_nodes || `[]`),"
    " ksmtuned_pids: services.ksmtuned_pids || `[]`, advisor_mode: tunables.advisor_mode,"
    " pages_to_scan: tunables.pages_to_scan, advisor_min_pages_to_scan: tunables.advisor_min_pages_to_scan}"
)
GUESTS = "reverse(sort_by([?guest], &merged_bytes))"
TOTALS = (
    "{hosts: length(@), available: length([?status == 'ok']), saved_bytes: sum([?status == 'ok'].saved_bytes),"
    " profit_bytes: sum([?status == 'ok'].profit_bytes), ksmd_cpu_seconds: sum([?ksmd_cpu_seconds].ksmd_cpu_seconds)}"
)


def _mode(row):
    # type: (Row) -> str
    if row["ksmtuned_pids"]:
        return "ksmtuned"
    if row["advisor_mode"] == "scan-time":
        return "advisor"
    return row["state"] or "unknown"


def host_row(host, result):
    # type: (str, t.Dict[str, t.Any]) -> Row
    """The report row of one host from its registered ksm_facts result."""
    row = {"host": host, "status": "ok", "reason": ""}  # type: Row
    facts = (result.get("ansible_facts") or {}).get("ksm")
    if result.get("unreachable"):
        return dict(row, status="unreachable", reason=result.get("msg") or "the host could not be reached")
    if result.get("failed") or not facts:
        return dict(row, status="failed", reason=result.get("msg") or "kvmhost.ksm.ksm_facts returned no facts")
    if not facts.get("available"):
        return dict(row, status="unavailable", reason=facts.get("reason") or "KSM is not available",
                    kernel_release=facts.get("kernel_release"))
    row.update(jmespath.search(ROW, facts))
    row["mode"] = _mode(row)
    row["ksmtuned_running"] = bool(row["ksmtuned_pids"])
    both = row["ksmtuned_running"] and row["advisor_mode"] == "scan-time"  # both set pages_to_scan
    row["ksmtuned_fighting"] = len(row["ksmtuned_pids"]) > 1 or both
    recommended = row["recommended_merge_across_nodes"]
    row["numa_ok"] = None if recommended is None else row["merge_across_nodes"] == recommended
    row["advisor_stalled"] = (row["advisor_mode"] == "scan-time" and row["state"] == "running"
                              and row["pages_to_scan"] is not None and row["advisor_min_pages_to_scan"] is not None
                              and row["pages_to_scan"] < row["advisor_min_pages_to_scan"])
    row["processes"] = [dict(p, host=host) for p in facts.get("processes") or []]
    return row


def ksm_report(results, top=10, generated=""):
    # type: (t.Dict[str, t.Dict[str, t.Any]], int, str) -> t.Dict[str, t.Any]
    """The fleet report: totals, rows sorted by host, top guests by merged memory."""
    if jmespath is None:
        raise AnsibleFilterError("kvmhost.ksm.ksm_report needs the Python package jmespath on the controller; "
                                 "install it (pip install jmespath, or Debian's python3-jmespath).")
    if not isinstance(results, dict):
        raise AnsibleFilterError("kvmhost.ksm.ksm_report expects a mapping of host name to the registered result of "
                                 "kvmhost.ksm.ksm_facts, got {0}.".format(type(results).__name__))
    results = json.loads(json.dumps(results))  # plain types: jmespath does not know ansible-core 2.19's tagged ones
    rows = [host_row(host, results[host] or {}) for host in sorted(results)]
    processes = [p for row in rows for p in row.pop("processes", [])]
    guests = [{"host": p["host"], "guest": p["guest"], "pid": p["pid"], "comm": p.get("comm"),
               "merged_bytes": p.get("merged_bytes", 0), "profit_bytes": p.get("profit_bytes")}
              for p in jmespath.search(GUESTS, processes) or []][:max(top, 0)]
    totals = jmespath.search(TOTALS, rows)
    totals["guests"] = len([p for p in processes if p.get("guest")])
    cpu = totals["ksmd_cpu_seconds"] or 0
    for row in rows:
        row.pop("ksmtuned_pids", None)
        if row["status"] == "ok":
            row["ksmd_share"] = round(row["ksmd_cpu_seconds"] / cpu, 4) if cpu and row["ksmd_cpu_seconds"] else 0.0
    totals["ksmd_cpu_seconds"] = round(cpu, 2)
    return {"generated": generated, "totals": totals, "hosts": rows, "top_guests": guests}


class FilterModule(object):
    def filters(self):
        # type: () -> t.Dict[str, t.Callable[..., t.Any]]
        return {"ksm_report": ksm_report}
