#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) kvmhost.ksm contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

DOCUMENTATION = r"""
module: ksm
short_description: Configure Kernel Same-page Merging (KSM)
version_added: 1.0.0
author:
  - kvmhost.ksm maintainers (!UNKNOWN)
description:
  - Sets the KSM tunables under O(sysfs_path) and the KSM run state, idempotently and in the order the kernel requires.
  - An option that is not set is not managed. Values are compared parsed, and a value that already holds is never written.
  - The whole request is validated before the first write (ranges, whether this kernel has each requested file,
    conflicts such as O(pages_to_scan) with O(advisor_mode=scan-time)); if any part is invalid, nothing is written.
  - Writes happen in a safe order (advisor numbers, O(advisor_mode), O(pages_to_scan), the other knobs,
    O(merge_across_nodes) and O(max_page_sharing), then the run state; C(run=2) first when unmerging) and are read back
    and verified. If a write fails midway (for any reason), the values already written are rolled back and the error
    says what was rolled back. Rollback restores a knob only while it still holds the value this task wrote; a knob
    another writer changed meanwhile is left alone and named in the error.
  - Every problem of a request is reported at once, in one message of one sentence per problem.
  - Runs on one host apply one after the other; see O(lock_file).
  - O(merge_across_nodes) and O(max_page_sharing) cannot change while pages are merged (the kernel answers C(EBUSY)).
    Without O(allow_unmerge) the module then fails and says how many bytes are merged. With O(allow_unmerge=true) it
    checks that C(MemAvailable) covers the memory unmerging needs, unmerges every page, changes the knob, restores the
    previous run state and returns RV(unmerged=true).
  - Warns when C(ksmtuned) runs while O(state), O(pages_to_scan) or O(sleep_millisecs) are managed (it rewrites them
    every minute), and when C(advisor_*) numbers are set while O(advisor_mode) is V(none) (they do nothing then).
  - The module writes only the KSM files named by its own options under O(sysfs_path), and O(persist_file).
  - Containers share the host's KSM, and container runtimes usually mount C(/sys) read-only; run this module on the host.
extends_documentation_fragment:
  - kvmhost.ksm._attributes
  - kvmhost.ksm._attributes.platform
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
    details: The diff shows the managed values before and after and, with O(persist=true), the text of O(persist_file).
  idempotent:
    support: full
  platform:
    platforms: linux
options:
  state:
    description:
      - V(running) writes C(1) to C(run) (start C(ksmd)), V(stopped) writes C(0) (stop C(ksmd); merged pages stay merged),
        V(unmerged) writes C(2) (stop C(ksmd) and unmerge every merged page).
      - Before V(unmerged) the module checks that C(MemAvailable) covers the memory unmerging needs.
    type: str
    choices: [running, stopped, unmerged]
  pages_to_scan:
    description:
      - Pages scanned per wake-up of C(ksmd) (kernel default 100).
      - The kernel refuses every write while O(advisor_mode) is V(scan-time), so it cannot be set together with a final
        O(advisor_mode) of V(scan-time).
    type: int
  sleep_millisecs:
    description: Milliseconds C(ksmd) sleeps between scans (kernel default 20). V(0) scans continuously.
    type: int
  stable_node_chains_prune_millisecs:
    description: How often stale stable node chains are pruned, in milliseconds (kernel default 2000). Linux 4.13 and later.
    type: int
  max_page_sharing:
    description:
      - Maximum number of mappings of one KSM page, at least V(2) (kernel default 256). Linux 4.13 and later.
      - Cannot change while pages are merged; see O(allow_unmerge).
    type: int
  merge_across_nodes:
    description:
      - Whether pages of different NUMA nodes are merged into one copy (kernel default V(true)). Only on NUMA kernels.
      - Cannot change while pages are merged; see O(allow_unmerge).
    type: bool
  use_zero_pages:
    description: Merge empty pages with the kernel zero page (kernel default V(false)). Linux 4.11 and later.
    type: bool
  smart_scan:
    description: Skip pages that repeatedly failed to merge (kernel default V(true)). Linux 6.7 and later.
    type: bool
  advisor_mode:
    description:
      - V(scan-time) lets the kernel's advisor set O(pages_to_scan) to reach O(advisor_target_scan_time); V(none) turns it
        off. Linux 6.8 and later.
      - A change resets C(pages_to_scan) (to 100 for V(none), to O(advisor_min_pages_to_scan) for V(scan-time)).
    type: str
    choices: [none, scan-time]
  advisor_max_cpu:
    description: Maximum CPU share of C(ksmd) in percent that the advisor aims for, V(1) to V(100) (kernel default 70).
    type: int
  advisor_min_pages_to_scan:
    description:
      - Initial O(pages_to_scan) of the advisor (kernel default 500).
      - Must not exceed O(advisor_max_pages_to_scan), the requested one or the one already on the host.
    type: int
  advisor_max_pages_to_scan:
    description: Upper limit of O(pages_to_scan) for the advisor (kernel default 30000).
    type: int
  advisor_target_scan_time:
    description: Seconds one full scan should take under the advisor, at least V(1) (kernel default 200).
    type: int
  allow_unmerge:
    description:
      - Allow the module to unmerge every KSM page (C(run=2)) when O(merge_across_nodes) or O(max_page_sharing) must
        change while pages are merged; the previous run state is restored afterwards and pages merge again.
      - Unmerging needs free memory for every merged page; the module refuses when C(MemAvailable) is too small.
    type: bool
    default: false
  unmerge_timeout:
    description:
      - Seconds to wait for C(pages_shared) to reach 0 after writing C(2) to C(run). The write itself returns when the
        kernel has unmerged, so V(0) checks once.
    type: int
    default: 120
  persist:
    description:
      - Keep the managed values across reboots in O(persist_file), a systemd-tmpfiles drop-in of C(w) lines in the safe
        order (the run state last), merged with the entries already in that file and written atomically.
    type: bool
    default: false
  persist_file:
    description:
      - The systemd-tmpfiles drop-in that O(persist=true) writes. Must be an absolute path.
      - A symbolic link or any other file that is not a regular file at this path is refused before anything is
        written, in check mode too, and is never read or shown; so is a regular file that holds no tmpfiles lines.
      - Before any KSM write the module checks that the file can be replaced (its directory exists or can be made
        and is writable, and neither the file nor the directory has the immutable or append-only attribute). If the
        final atomic rename still fails, the KSM writes of the task are rolled back.
      - As for C(systemd-tmpfiles), the first line for a KSM file is the one that applies; the module updates that
        one, keeps its type (C(w), C(w+), C(w-), ...), drops later lines for the same file and keeps every other line.
    type: path
    default: /etc/tmpfiles.d/kvmhost-ksm.conf
  sysfs_path:
    description:
      - The KSM sysfs directory. Change it only for tests.
      - Must be an absolute path to a directory; it is normalised (no C(..), doubled or trailing slashes) before use,
        so O(persist_file) never holds relative or duplicate paths.
    type: path
    default: /sys/kernel/mm/ksm
  lock_file:
    description:
      - The lock file of the host lock. Every run of this module holds an exclusive C(flock) on it for its whole
        read, validate, plan, write, verify and persist sequence, in check mode too (a check that reads while another
        run writes could report a half-applied state), so overlapping runs on one host apply one after the other.
      - The holder writes its pid into the file; the lock itself is released by the kernel when the run ends, even
        when it dies, so a stale file does not block anyone.
      - The lock is advisory. C(ksmtuned), other tools and a hand-typed C(echo) into C(/sys/kernel/mm/ksm) do not take
        it. Change it only for tests, or to share one lock between hosts that share one KSM (containers).
      - Must be an absolute path; its directory is created when missing.
    type: path
    default: /run/lock/kvmhost-ksm.lock
  lock_timeout:
    description:
      - Seconds to wait for another run to release O(lock_file), polling every 0.1 s; V(0) tries once. On timeout the
        module fails, names the lock file and the holder's pid, and writes nothing.
      - The default covers a typical run including an unmerge of a few GiB; raise it when runs queue up behind long
        unmerges (see O(unmerge_timeout)).
    type: int
    default: 60
notes:
  - Needs root on the managed host (C(become=true)).
seealso:
  - name: KSM in the kernel documentation
    description: Every knob and its meaning.
    link: https://docs.kernel.org/admin-guide/mm/ksm.html
  - name: tmpfiles.d(5)
    description: The format of O(persist_file).
    link: https://www.freedesktop.org/software/systemd/man/latest/tmpfiles.d.html
"""

EXAMPLES = r"""
---
- name: Start KSM with a faster scan rate
  kvmhost.ksm.ksm:
    state: running
    pages_to_scan: 1000
    sleep_millisecs: 20
  become: true

- name: Keep one copy per NUMA node, unmerging first if pages are merged, and keep it across reboots
  kvmhost.ksm.ksm:
    merge_across_nodes: false
    allow_unmerge: true
    state: running
    persist: true
  become: true

- name: Let the kernel's advisor choose the scan rate (Linux 6.8+)
  kvmhost.ksm.ksm:
    advisor_mode: scan-time
    advisor_target_scan_time: 200
    advisor_max_cpu: 70
    advisor_min_pages_to_scan: 500
    advisor_max_pages_to_scan: 30000
    state: running
  become: true

- name: Stop KSM and unmerge every page (for example on hosts of mutually untrusted tenants)
  kvmhost.ksm.ksm:
    state: unmerged
  become: true
"""

RETURN = r"""
before:
  description: The managed values before the task, keyed by option name (O(state) for the run state).
  returned: always
  type: dict
  sample: {"state": "stopped", "pages_to_scan": 100, "merge_across_nodes": true}
after:
  description:
    - The managed values after the task as read back from the kernel, keyed by option name.
    - In check mode, the values the task would set.
  returned: always
  type: dict
  sample: {"state": "running", "pages_to_scan": 1000, "merge_across_nodes": false}
unmerged:
  description:
    - Whether the task unmerged every KSM page (wrote C(2) to C(run)), for O(state=unmerged) or to change an EBUSY knob
      with O(allow_unmerge=true). In check mode, whether it would.
  returned: always
  type: bool
  sample: true
diff:
  description:
    - With C(--diff), the managed values before and after and, with O(persist=true), the old and new text of
      O(persist_file).
  returned: when diff mode is on
  type: list
  elements: dict
  sample:
    - {"before": {"pages_to_scan": 100}, "after": {"pages_to_scan": 1000},
       "before_header": "/sys/kernel/mm/ksm", "after_header": "/sys/kernel/mm/ksm"}
    - {"before": "", "after": "w /sys/kernel/mm/ksm/pages_to_scan - - - - 1000\n",
       "before_header": "/etc/tmpfiles.d/kvmhost-ksm.conf", "after_header": "/etc/tmpfiles.d/kvmhost-ksm.conf"}
"""

import os
import typing as t

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.kvmhost.ksm.plugins.module_utils import _apply, _options, _plan, _procfs, _tmpfiles
from ansible_collections.kvmhost.ksm.plugins.module_utils._lock import host_lock
from ansible_collections.kvmhost.ksm.plugins.module_utils._options import argument_spec
from ansible_collections.kvmhost.ksm.plugins.module_utils._sysfs import KsmError, Sysfs, normalise_root

Values = _plan.Values


def stage(module: AnsibleModule, path: str, text: str) -> str:
    """The new persist file staged next to path (removed at exit whatever happens), with path's SELinux context."""
    tmp = _tmpfiles.stage_file(path, text)
    module.add_cleanup_file(tmp)
    if module.selinux_enabled():
        context = module.selinux_context(path) if os.path.exists(path) else module.selinux_default_context(path)
        module.set_context_if_different(tmp, context, False)
    return tmp


def write(module: AnsibleModule,
          ksm: Sysfs,
          plan: _plan.Plan,
          request: Values,
          current: Values,
          persist: t.Optional[_tmpfiles.Change]) -> t.Tuple[Values, bool]:
    """Stage the persist file, write KSM, then move the file in place; a failure of any step rolls KSM back."""
    tmp = stage(module, persist[0], persist[2]) if persist else None

    def finish() -> None:
        if tmp is not None and persist is not None:
            _tmpfiles.replace(tmp, persist[0])

    try:
        if plan.changes(current) or tmp is not None:
            return _apply.execute(ksm, plan, request, current, module.params["unmerge_timeout"], finish)
        return current, False
    finally:
        if tmp is not None and os.path.lexists(tmp):
            os.unlink(tmp)


def apply(module: AnsibleModule,
          ksm: Sysfs,
          proc_root: str = _procfs.PROC_ROOT,
          problems: t.Optional[t.List[str]] = None) -> t.Dict[str, t.Any]:
    """Read, validate, plan, write (unless check mode), persist; the result dict. The caller holds the host lock."""
    params = module.params
    request = _plan.requested(params)
    found = list(problems or [])
    persist_file = params["persist_file"] if params["persist"] else None
    if persist_file is not None:
        found.extend(_tmpfiles.problems(persist_file))
    current, plan = _apply.prepare(ksm, request, params["allow_unmerge"], proc_root, found)
    for warning in _plan.warnings(request, current, _procfs.processes_named("ksmtuned", proc_root)):
        module.warn(warning)
    persist = _tmpfiles.change(persist_file, request, ksm.root) if persist_file is not None else None
    file_changed = persist is not None and persist[1] != persist[2]
    after, unmerged = dict(current, **request), plan.unmerge
    if not module.check_mode:
        after, unmerged = write(module, ksm, plan, request, current, persist if file_changed else None)
    before, after = _plan.by_option(current, request), _plan.by_option(after, request)
    result: t.Dict[str, t.Any] = dict(changed=plan.changes(current) or file_changed, unmerged=unmerged,
                                      before=before, after=after)
    if module._diff:
        result["diff"] = _plan.diff(before, after, ksm.root, persist)
    return result


def run(module: AnsibleModule, proc_root: str = _procfs.PROC_ROOT) -> t.Dict[str, t.Any]:
    """Check the options, then apply under the host lock (check mode too: a read while another run writes could
    report a half state)."""
    params = module.params
    params["sysfs_path"] = normalise_root(params["sysfs_path"])
    for name in ("persist_file", "lock_file"):
        params[name] = _options.normalise_path(params[name])
    found = _options.problems(params)
    if _options.lock_problems(params):
        raise KsmError(_plan.refusal(found))
    with host_lock(params["lock_file"], params["lock_timeout"]):
        return apply(module, Sysfs(params["sysfs_path"]), proc_root, found)


def main() -> None:
    module = AnsibleModule(argument_spec=argument_spec(), supports_check_mode=True)
    try:
        result = run(module)
    except KsmError as exc:
        module.fail_json(msg=str(exc))
    except Exception as exc:  # no traceback, whatever the host holds
        module.fail_json(msg="kvmhost.ksm.ksm stopped on an unexpected {0} in {1}: {2}; report it with the task's "
                             "arguments.".format(type(exc).__name__, module.params.get("sysfs_path"), exc))
    module.exit_json(**result)


if __name__ == "__main__":
    main()
