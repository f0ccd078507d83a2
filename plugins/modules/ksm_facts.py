#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) kvmhost.ksm contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

DOCUMENTATION = r"""
module: ksm_facts
short_description: What Kernel Same-page Merging (KSM) is doing and saving on a host
version_added: 1.0.0
description:
  - Returns C(ansible_facts.ksm) with whether the kernel has KSM, its run state, every tunable and statistic this
    kernel has (typed), how much memory KSM saves and what it costs, the NUMA topology with the recommended
    C(merge_across_nodes), the C(ksmd) thread, the KSM services, and the processes (guests) with the most merged pages.
  - For operations it also reports the host's memory figures with a verdict on whether the host could absorb
    unsharing every merged page (RV(ansible_facts.ksm.memory)), whether numad runs, every other program that writes
    the KSM files (RV(ansible_facts.ksm.managers)) and the services that merge all their memory
    (RV(ansible_facts.ksm.merging_services), systemd C(MemoryKSM=yes)).
  - Never changes anything. On a kernel without KSM, or when O(sysfs_path) does not exist, it does not fail but
    returns RV(ansible_facts.ksm.available=false) with a RV(ansible_facts.ksm.reason).
  - A KSM file other than C(run) that cannot be read or parsed is reported as V(null), with a warning that names the
    file; the host stays RV(ansible_facts.ksm.available=true) while C(run) reads, and every derived figure that needs
    the missing value is V(null) too. A C(run) file that cannot be read makes KSM unavailable, with a reason naming it.
  - Decides by the files present, never by kernel version (distribution kernels backport).
  - Cheap, so it can run with every fact gathering. It reads the KSM sysfs files, the NUMA node files,
    C(/proc/<pid>/stat) and one per-process KSM file per process in a single pass over C(/proc), the command line of the
    top O(processes) processes only, and runs one C(systemctl show) for all units when systemd is the service manager.
  - "Use it as a facts module of C(gather_facts): set C(FACTS_MODULES) through
    C(facts_modules = smart, kvmhost.ksm.ksm_facts) in C(ansible.cfg) (section C([defaults])), the environment variable
    C(ANSIBLE_FACTS_MODULES=smart,kvmhost.ksm.ksm_facts), or the variable
    C(ansible_facts_modules: [smart, kvmhost.ksm.ksm_facts]) (inventory, group or play vars). Options for it come from
    C(module_defaults) of C(kvmhost.ksm.ksm_facts)."
  - "Formulas (P = RV(ansible_facts.ksm.page_size); R = the size of C(struct ksm_rmap_item), 64 bytes on 64-bit kernels and 32 on
    32-bit kernels):"
  - "RV(ansible_facts.ksm.saved_pages) = C(pages_sharing + ksm_zero_pages) (C(ksm_zero_pages) counts as 0 before
    kernel 6.5). RV(ansible_facts.ksm.saved_bytes) = RV(ansible_facts.ksm.saved_pages) x P. Not C(pages_shared):
    those are the pages KSM keeps."
  - "RV(ansible_facts.ksm.rmap_items) = C(pages_shared + pages_sharing + pages_unshared + pages_volatile), an estimate
    of the pages KSM tracks (the kernel keeps the exact count internally)."
  - "RV(ansible_facts.ksm.profit_bytes) = C(general_profit) where the kernel has it (6.4+), else the estimate
    RV(ansible_facts.ksm.saved_bytes) - RV(ansible_facts.ksm.rmap_items) x R. Can be negative early in a run."
  - "RV(ansible_facts.ksm.sharing_ratio) = C(pages_sharing / pages_shared) (null while C(pages_shared) is 0);
    RV(ansible_facts.ksm.unshared_ratio) = C(pages_unshared / pages_sharing) (null while C(pages_sharing) is 0)."
  - "RV(ansible_facts.ksm.scan_rate) = C(pages_to_scan x 1000 / sleep_millisecs) pages per second, the nominal rate and an
    upper bound (scanning time adds to the sleep); null when C(sleep_millisecs) is 0 (ksmd then scans continuously,
    bounded by CPU)."
  - "RV(ansible_facts.ksm.full_scan_seconds) = RV(ansible_facts.ksm.rmap_items) / RV(ansible_facts.ksm.scan_rate), the
    estimated time of one full scan over the mergeable memory KSM has seen; null when the scan rate is null or 0."
  - "Per process: C(merged_bytes) = (C(ksm_merging_pages) + C(ksm_zero_pages)) x P; C(profit_bytes) is the kernel's
    C(ksm_process_profit) = (C(ksm_merging_pages) + C(ksm_zero_pages)) x P - C(ksm_rmap_items) x R. Every process
    that maps a KSM page counts it, the one that would keep the copy included, so the figures of all processes add
    up to more than RV(ansible_facts.ksm.saved_bytes)."
  - "Recommended C(merge_across_nodes) (RHEL guidance): V(false) with more than one memory node, else V(true); null
    on kernels without the file (no C(CONFIG_NUMA))."
author:
  - kvmhost.ksm maintainers (!UNKNOWN)
extends_documentation_fragment:
  - kvmhost.ksm._attributes
  - kvmhost.ksm._attributes.platform
  - kvmhost.ksm._attributes.facts
attributes:
  check_mode:
    support: full
    details: The module only reads, so check mode returns the same facts.
  diff_mode:
    support: none
  facts:
    support: full
  idempotent:
    support: full
  platform:
    platforms: linux
options:
  processes:
    description:
      - How many processes to report in RV(ansible_facts.ksm.processes), those with the most merged pages first.
      - V(0) skips reading the per-process KSM files.
    type: int
    default: 10
  sysfs_path:
    description:
      - The KSM sysfs directory. Change only for tests.
    type: path
    default: /sys/kernel/mm/ksm
notes:
  - C(/sys/kernel/mm/ksm) is not namespaced. Inside a container the facts describe the host's KSM;
    RV(ansible_facts.ksm.writable) is V(false) where C(/sys) is mounted read-only.
  - Without root, other users' C(/proc/<pid>) files may be unreadable; such processes are left out of
    RV(ansible_facts.ksm.processes).
seealso:
  - module: kvmhost.ksm.ksm
  - name: Kernel Samepage Merging (kernel documentation)
    description: The KSM sysfs interface and the savings formulas.
    link: https://docs.kernel.org/admin-guide/mm/ksm.html
"""

EXAMPLES = r"""
---
- name: Read the KSM facts
  kvmhost.ksm.ksm_facts:

- name: Show how much memory KSM saves
  ansible.builtin.debug:
    msg: >-
      KSM is {{ ansible_facts.ksm.state }} and saves
      {{ (ansible_facts.ksm.saved_bytes / 1048576) | round(1) }} MiB
      (net {{ (ansible_facts.ksm.profit_bytes / 1048576) | round(1) }} MiB)
  when: ansible_facts.ksm.available

- name: Read the KSM facts with the top 3 processes by merged pages
  kvmhost.ksm.ksm_facts:
    processes: 3

- name: List the guests that share the most memory
  ansible.builtin.debug:
    msg: "{{ item.guest | default(item.comm, true) }} (pid {{ item.pid }}): {{ item.merged_bytes }} bytes merged"
  loop: "{{ ansible_facts.ksm.processes }}"

- name: Warn when merge_across_nodes differs from the recommendation for this NUMA topology
  ansible.builtin.debug:
    msg: "merge_across_nodes should be {{ ansible_facts.ksm.numa.recommended_merge_across_nodes }}"
  when:
    - ansible_facts.ksm.available
    - ansible_facts.ksm.numa.recommended_merge_across_nodes is not none
    - ansible_facts.ksm.numa.recommended_merge_across_nodes != ansible_facts.ksm.tunables.merge_across_nodes

# Gather KSM facts with every fact gathering of a play, without the per-process part:
#
# - name: Hypervisors
#   hosts: hypervisors
#   vars:
#     ansible_facts_modules: [smart, kvmhost.ksm.ksm_facts]
#   module_defaults:
#     kvmhost.ksm.ksm_facts:
#       processes: 0
#   tasks:
#     - name: Show the KSM state
#       ansible.builtin.debug:
#         var: ansible_facts.ksm.state
"""

RETURN = r"""
ansible_facts:
  description: Facts to add to C(ansible_facts).
  returned: always
  type: complex
  contains:
    ksm:
      description:
        - What KSM is doing and saving on the host.
        - When RV(ansible_facts.ksm.available) is V(false), every other key is still present but empty
          (V(null), V({}) or V([])), except RV(ansible_facts.ksm.kernel_release) and RV(ansible_facts.ksm.page_size).
      returned: always
      type: complex
      contains:
        available:
          description: Whether this kernel has KSM and its sysfs directory could be read.
          returned: always
          type: bool
          sample: true
        reason:
          description: Why KSM is not available; empty when it is.
          returned: always
          type: str
          sample: ""
        sysfs_path:
          description: The KSM sysfs directory that was read (O(sysfs_path)).
          returned: always
          type: str
          sample: /sys/kernel/mm/ksm
        kernel_release:
          description: The running kernel (C(uname -r)).
          returned: always
          type: str
          sample: 6.8.0-49-generic
        page_size:
          description: The host's page size in bytes (C(_SC_PAGE_SIZE) from C(sysconf)); 65536 on some arm64 and ppc64 hosts.
          returned: always
          type: int
          sample: 4096
        writable:
          description:
            - Whether KSM can be changed from here, that is with root and a C(/sys) that is not mounted read-only
              (most containers mount it read-only). Decided with C(access) and C(statvfs), never by a write.
          returned: always
          type: bool
          sample: true
        writable_reason:
          description: Why RV(ansible_facts.ksm.writable) is V(false); empty when it is V(true).
          returned: always
          type: str
          sample: ""
        state:
          description:
            - The KSM run state from C(run) (masked with 3); V(unmerged) means stopped with every page unmerged (C(run=2)).
            - V(null) when KSM is not available.
          returned: always
          type: str
          sample: running
          choices: [running, stopped, unmerged]
        tunables:
          description:
            - Every writable KSM file this kernel has except C(run) (see RV(ansible_facts.ksm.state)), typed; the keys
              are the option names of M(kvmhost.ksm.ksm). Files the kernel lacks are absent; a file that cannot be read
              or parsed is V(null) (with a warning naming it).
          returned: always
          type: dict
          sample:
            advisor_max_cpu: 70
            advisor_max_pages_to_scan: 30000
            advisor_min_pages_to_scan: 500
            advisor_mode: none
            advisor_target_scan_time: 200
            max_page_sharing: 256
            merge_across_nodes: true
            pages_to_scan: 100
            sleep_millisecs: 20
            smart_scan: true
            stable_node_chains_prune_millisecs: 2000
            use_zero_pages: false
          contains:
            pages_to_scan:
              description: Pages scanned per wake-up of ksmd.
              type: int
            sleep_millisecs:
              description: Milliseconds ksmd sleeps between batches.
              type: int
            merge_across_nodes:
              description: Merge pages across NUMA nodes (kernels with C(CONFIG_NUMA), 3.9+).
              type: bool
            use_zero_pages:
              description: Merge empty pages with the kernel zero page (4.11+).
              type: bool
            max_page_sharing:
              description: Most mappings of one KSM page (4.13+).
              type: int
            stable_node_chains_prune_millisecs:
              description: How often stale stable node chains are pruned (4.13+).
              type: int
            smart_scan:
              description: Skip pages that repeatedly failed to merge (6.7+).
              type: bool
            advisor_mode:
              description: The scan advisor, V(none) or V(scan-time) (6.8+).
              type: str
            advisor_max_cpu:
              description: Most CPU percent the advisor lets ksmd use (6.8+).
              type: int
            advisor_min_pages_to_scan:
              description: Initial pages_to_scan of the advisor (6.8+).
              type: int
            advisor_max_pages_to_scan:
              description: Upper limit of pages_to_scan under the advisor (6.8+).
              type: int
            advisor_target_scan_time:
              description: Seconds one full scan should take under the advisor (6.8+).
              type: int
        statistics:
          description:
            - Every read-only KSM statistic this kernel has, as integers. Files the kernel lacks are absent.
            - A statistic that cannot be read or parsed is V(null), with a warning naming its file.
          returned: always
          type: dict
          sample:
            full_scans: 12
            general_profit: 201199616
            ksm_zero_pages: 0
            pages_scanned: 1290100
            pages_shared: 16384
            pages_sharing: 49152
            pages_skipped: 0
            pages_unshared: 0
            pages_volatile: 0
            stable_node_chains: 0
            stable_node_dups: 0
          contains:
            pages_shared:
              description: KSM pages in use (the copies kept).
              type: int
            pages_sharing:
              description: Further mappings of those pages, that is pages saved.
              type: int
            pages_unshared:
              description: Unique pages checked repeatedly.
              type: int
            pages_volatile:
              description: Pages changing too fast to merge.
              type: int
            full_scans:
              description: Completed full scans; reset by C(run=2).
              type: int
            stable_node_chains:
              description: KSM pages that reached C(max_page_sharing) (4.13+).
              type: int
            stable_node_dups:
              description: Duplicated KSM pages in those chains (4.13+).
              type: int
            general_profit:
              description: Bytes saved minus KSM's metadata cost; signed (6.4+).
              type: int
            ksm_zero_pages:
              description: Empty pages merged with the kernel zero page (6.5+).
              type: int
            pages_scanned:
              description: Pages scanned since boot (6.6+).
              type: int
            pages_skipped:
              description: Pages skipped by smart scan (6.7+).
              type: int
        features:
          description: Which KSM files this kernel has.
          returned: always
          type: dict
          contains:
            knobs:
              description: The writable files present, C(run) included, sorted.
              type: list
              elements: str
              sample: [max_page_sharing, merge_across_nodes, pages_to_scan, run, sleep_millisecs]
            statistics:
              description: The statistics files present, sorted.
              type: list
              elements: str
              sample: [full_scans, pages_shared, pages_sharing, pages_unshared, pages_volatile]
            other_files:
              description: Files in O(sysfs_path) this collection does not know, such as RHEL's C(redhat_only_zero_pages).
              type: list
              elements: str
              sample: []
            process_file:
              description:
                - The per-process file that tells merged pages on this kernel, V(ksm_stat) where it has a
                  C(ksm_merging_pages) line (6.4+), else V(ksm_merging_pages) (5.19+; on 6.1 the C(ksm_stat) file
                  holds only C(ksm_rmap_items), which is then read as well for processes with merged pages).
                - V(null) when the kernel has neither file (then RV(ansible_facts.ksm.processes) is always empty).
              type: str
              sample: ksm_stat
        saved_pages:
          description: Pages saved, C(pages_sharing + ksm_zero_pages).
          returned: always
          type: int
          sample: 49152
        saved_bytes:
          description: Bytes saved, RV(ansible_facts.ksm.saved_pages) x RV(ansible_facts.ksm.page_size).
          returned: always
          type: int
          sample: 201326592
        rmap_items:
          description: Estimated pages KSM tracks, C(pages_shared + pages_sharing + pages_unshared + pages_volatile).
          returned: always
          type: int
          sample: 65536
        profit_bytes:
          description:
            - Net saving in bytes, C(general_profit) where the kernel has it, else
              RV(ansible_facts.ksm.saved_bytes) - RV(ansible_facts.ksm.rmap_items) x R (R = 64 on 64-bit kernels, 32 on
              32-bit). May be negative.
          returned: always
          type: int
          sample: 197132288
        profit_source:
          description: Where RV(ansible_facts.ksm.profit_bytes) comes from.
          returned: always
          type: str
          choices: [general_profit, estimate]
          sample: general_profit
        sharing_ratio:
          description: C(pages_sharing / pages_shared); high is good. V(null) while C(pages_shared) is 0.
          returned: always
          type: float
          sample: 3.0
        unshared_ratio:
          description: C(pages_unshared / pages_sharing); high means wasted scanning. V(null) while C(pages_sharing) is 0.
          returned: always
          type: float
          sample: 0.0
        scan_rate:
          description:
            - Nominal scan rate in pages per second, C(pages_to_scan x 1000 / sleep_millisecs); an upper bound.
            - V(null) when C(sleep_millisecs) is 0 (ksmd scans continuously, bounded by CPU).
          returned: always
          type: float
          sample: 5000.0
        full_scan_seconds:
          description:
            - Estimated seconds of one full scan at the current settings,
              RV(ansible_facts.ksm.rmap_items) / RV(ansible_facts.ksm.scan_rate).
            - V(null) when the scan rate is V(null) or 0.
          returned: always
          type: float
          sample: 13.1
        numa:
          description: NUMA topology from C(/sys/devices/system/node); V(null) when KSM is not available.
          returned: always
          type: dict
          contains:
            nodes:
              description: Online nodes; empty on kernels without NUMA.
              type: list
              elements: int
              sample: [0, 1]
            memory_nodes:
              description: Nodes with memory (C(has_memory)).
              type: list
              elements: int
              sample: [0, 1]
            distances:
              description: Per node (as a string key), its distances to the online nodes in the order of C(nodes).
              type: dict
              sample: {"0": [10, 21], "1": [21, 10]}
            merge_across_nodes:
              description: The current C(merge_across_nodes); V(null) on kernels without the file.
              type: bool
              sample: true
            recommended_merge_across_nodes:
              description:
                - The value the RHEL guidance recommends, V(false) with more than one memory node, else V(true).
                - V(null) on kernels without C(merge_across_nodes).
              type: bool
              sample: false
            numad_running:
              description:
                - Whether C(numad) runs (by process name). The RHEL guide warns that numad "can become confused after
                  the KSM daemon merges large amounts of memory" when C(merge_across_nodes) is V(true) on a NUMA host.
              type: bool
              sample: false
            numad_pids:
              description: The process ids of the C(numad) processes.
              type: list
              elements: int
              sample: []
        ksmd:
          description: The C(ksmd) kernel thread; V(null) when it was not found.
          returned: always
          type: dict
          contains:
            pid:
              description: Its process id.
              type: int
              sample: 37
            cpu_seconds:
              description: CPU time it used since boot, (utime + stime) / C(SC_CLK_TCK) from C(/proc/<pid>/stat).
              type: float
              sample: 12.34
        services:
          description: The KSM services; V(null) when KSM is not available.
          returned: always
          type: dict
          contains:
            manager:
              description: V(systemd) when systemd runs the host (C(/run/systemd/system) exists), else V(unknown).
              type: str
              sample: systemd
            units:
              description:
                - Per unit (C(ksm.service), C(ksmtuned.service), and where systemd knows them Ubuntu's
                  C(qemu-kvm.service), C(tuned.service) and the role's C(kvmhost-ksm-governor.service)), its
                  C(load_state) (V(loaded), V(not-found), ...), C(active_state) (V(active), V(inactive), ...) and
                  C(unit_file_state) (V(enabled), V(disabled), V(masked), ...).
                - Every state is V(unknown) without systemd.
              type: dict
              sample:
                ksm.service: {load_state: loaded, active_state: active, unit_file_state: enabled}
                ksmtuned.service: {load_state: loaded, active_state: active, unit_file_state: enabled}
            ksmtuned_running:
              description: Whether a C(ksmtuned) process runs (by process name, with or without systemd).
              type: bool
              sample: true
            ksmtuned_pids:
              description: The process ids of the C(ksmtuned) processes.
              type: list
              elements: int
              sample: [812]
        processes:
          description:
            - Up to O(processes) processes with merged pages, most merged pages first (C(/proc/<pid>/ksm_stat) or
              C(/proc/<pid>/ksm_merging_pages)). Processes without merged pages are left out, as are processes
              that exit while being read and entries that cannot be read.
          returned: always
          type: list
          elements: dict
          contains:
            pid:
              description: Process id.
              type: int
              sample: 4242
            comm:
              description: Command name (C(/proc/<pid>/stat)).
              type: str
              sample: qemu-system-x86
            guest:
              description: The guest name of a QEMU process (from C(-name guest=NAME,...) or C(-name NAME)), else V(null).
              type: str
              sample: web1
            merging_pages:
              description: Pages of the process currently merged (C(ksm_merging_pages)).
              type: int
              sample: 16384
            zero_pages:
              description: Its empty pages merged with the zero page (kernels whose C(ksm_stat) has C(ksm_zero_pages)).
              type: int
              sample: 0
            rmap_items:
              description: Its pages KSM tracks (C(ksm_rmap_items); kernels with C(ksm_stat), 6.1+).
              type: int
              sample: 16384
            profit_bytes:
              description: Its net saving (C(ksm_process_profit), 6.4+); absent on older kernels.
              type: int
              sample: 66060288
            merge_any:
              description: Whether the whole process was made mergeable (C(prctl PR_SET_MEMORY_MERGE)); newer kernels only.
              type: bool
              sample: false
            mergeable:
              description: Whether it has mergeable memory (C(ksm_mergeable)); newer kernels only.
              type: bool
              sample: true
            merged_bytes:
              description:
                - Memory of the process backed by KSM pages, (C(merging_pages) + C(zero_pages)) x
                  RV(ansible_facts.ksm.page_size).
                - Not its saving alone; the figures of all processes add up to more than
                  RV(ansible_facts.ksm.saved_bytes).
              type: int
              sample: 67108864
            unit:
              description: Its systemd unit (service or scope, from C(/proc/<pid>/cgroup)); absent where it has none.
              type: str
              sample: machine-qemu\x2d1\x2dweb1.scope
        merging_services:
          description:
            - Per systemd unit, its processes that made all their memory mergeable (C(ksm_merge_any) in
              C(/proc/<pid>/ksm_stat); systemd C(MemoryKSM=yes) or C(prctl PR_SET_MEMORY_MERGE)), merged pages or not,
              sorted by unit. Kernels whose C(ksm_stat) has no C(ksm_merge_any), and O(processes=0), give V([]).
          returned: always
          type: list
          elements: dict
          contains:
            unit:
              description: The systemd unit; V(null) for processes outside any service or scope.
              type: str
              sample: web@1.service
            pids:
              description: Its processes that merge all their memory.
              type: list
              elements: int
              sample: [901, 902]
            merging_pages:
              description: Their merged pages, C(ksm_merging_pages + ksm_zero_pages) summed.
              type: int
              sample: 5120
            merged_bytes:
              description: RV(ansible_facts.ksm.merging_services[].merging_pages) x RV(ansible_facts.ksm.page_size).
              type: int
              sample: 20971520
            profit_bytes:
              description: What the service saves, its processes' C(ksm_process_profit) summed; V(null) before 6.4.
              type: int
              sample: 18874368
        memory:
          description:
            - The memory figures that matter for KSM and whether the host could absorb a full unshare (the RHEL guide
              asks for swap that covers the committed RAM even without KSM, because guest memory use can unshare pages).
            - V(null) when KSM is not available.
            - "unshare = C((pages_sharing + ksm_zero_pages) x page_size) (RV(ansible_facts.ksm.saved_bytes)); the host
              can absorb it when C(MemAvailable + SwapFree >= unshare); headroom = C(MemAvailable + SwapFree -
              unshare)."
            - "committed = the memory given to the guests + the host's own use (C(MemTotal - MemAvailable) - the
              guests' resident memory, at least 0); advised swap = C(committed - MemTotal), at least 0."
          returned: always
          type: dict
          contains:
            mem_total_bytes:
              description: C(MemTotal) of C(/proc/meminfo) in bytes; V(null) when unreadable (so for every figure).
              type: int
              sample: 67108864000
            mem_available_bytes:
              description: C(MemAvailable) in bytes.
              type: int
              sample: 21474836480
            swap_total_bytes:
              description: C(SwapTotal) in bytes.
              type: int
              sample: 8589934592
            swap_free_bytes:
              description: C(SwapFree) in bytes.
              type: int
              sample: 8589934592
            unshare_bytes:
              description: The memory unsharing every merged page would need.
              type: int
              sample: 4294967296
            headroom_bytes:
              description: C(MemAvailable + SwapFree - unshare); negative when the host could not absorb it.
              type: int
              sample: 25769803776
            unshare_absorbable:
              description: Whether the host could absorb a full unshare; V(null) when a figure could not be read.
              type: bool
              sample: true
            reason:
              description: The verdict in words, with the figures.
              type: str
              sample: unsharing every merged page would need 4.00 GiB, which MemAvailable (20.00 GiB) covers
            guests:
              description:
                - The QEMU processes (by command name, as in RV(ansible_facts.ksm.processes)), their C(count),
                  C(given_bytes) (the RAM of each C(-m); QEMU's default 128 MiB without it) and C(resident_bytes)
                  (C(VmRSS) of C(/proc/<pid>/status)).
              type: dict
              sample: {count: 2, given_bytes: 8589934592, resident_bytes: 6442450944}
            committed_bytes:
              description: The guests' given memory plus the host's own use.
              type: int
              sample: 10737418240
            swap_advised_bytes:
              description: The swap the RHEL guide asks for, C(committed - MemTotal) (at least 0).
              type: int
              sample: 0
            swap_sufficient:
              description: Whether C(SwapTotal) reaches RV(ansible_facts.ksm.memory.swap_advised_bytes).
              type: bool
              sample: true
        managers:
          description:
            - Every other program found that writes the KSM files; V([]) when there is none or KSM is not available.
            - C(ksmtuned) (or C(proxmox) where C(/usr/bin/pveversion) exists, its C(ksm-control-daemon)), C(ksm.service),
              C(qemu-kvm) (Ubuntu's C(qemu-kvm.service) and C(KSM_ENABLED) of C(/etc/default/qemu-kvm)), C(tuned)
              (only when the profiles of C(/etc/tuned/active_profile) or the ones they include set a C(/sys/kernel/mm/ksm)
              file in C([sysfs]) or call C(disable_ksm) in a script), C(kubevirt) (a C(virt-handler) process).
          returned: always
          type: list
          elements: dict
          contains:
            name:
              description: V(ksmtuned), V(proxmox), V(ksm.service), V(qemu-kvm), V(tuned) or V(kubevirt).
              type: str
              sample: ksmtuned
            active:
              description: Whether it runs now (a process or an active unit; for C(qemu-kvm), C(KSM_ENABLED) not C(0) too).
              type: bool
              sample: true
            enabled:
              description: Whether its unit starts at boot; V(null) when unknown (no systemd, no unit).
              type: bool
              sample: true
            files:
              description: The KSM files it writes.
              type: list
              elements: str
              sample: [run, pages_to_scan, sleep_millisecs]
            detail:
              description: What was found, in words.
              type: str
              sample: ksmtuned.service active, enabled; processes 812
            ksm_enabled:
              description: C(qemu-kvm) only, the C(KSM_ENABLED) value (V(AUTO) when unset).
              type: str
              sample: AUTO
            profile:
              description: C(tuned) only, the active profile.
              type: str
              sample: realtime-virtual-host
            settings:
              description: C(tuned) only, its KSM settings (V(run=2), V(disable_ksm), ...).
              type: list
              elements: str
              sample: [run=2]
        governor:
          description:
            - The state file of the kvmhost.ksm.ksm role's budget governor (C(ksm_mode=auto); C(/run/kvmhost-ksm-governor.json),
              rewritten every interval); V(null) where it never ran since boot or the file cannot be read. The governor
              is not listed in RV(ansible_facts.ksm.managers), being the role's own; it stops by itself (phase
              V(yielded)) when anything else writes C(pages_to_scan).
            - Its unit is C(kvmhost-ksm-governor.service) in RV(ansible_facts.ksm.services.units).
          returned: always
          type: dict
          contains:
            pid:
              description: The governor's process id.
              type: int
              sample: 1234
            phase:
              description:
                - V(starting) (its first interval), V(merging) (holding C(budget)), V(settled) (a full scan merged little; holding C(settled_budget)),
                  V(idle) (C(run) is not 1 or the advisor owns C(pages_to_scan)), V(yielded) (another writer set
                  C(pages_to_scan); the governor exited), V(blind) (ksmd is not visible, as in a container; it holds its
                  start value).
              type: str
              sample: merging
            note:
              description: Why it is in that phase, in words.
              type: str
              sample: ksmd runs; budget 25 % of one core
            budget:
              description: The CPU budget while merging, a share of one core (0.25 = 25 %).
              type: float
              sample: 0.25
            settled_budget:
              description: The CPU budget once merging settled, a share of one core.
              type: float
              sample: 0.05
            pages_to_scan:
              description: The value it last wrote.
              type: int
              sample: 2300
            share:
              description: ksmd's share of one core over the last interval (0-1); V(null) when unknown.
              type: float
              sample: 0.248
            updated:
              description: When the file was written (Unix time).
              type: float
              sample: 1764587700.5
"""

import typing as t

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.kvmhost.ksm.plugins.module_utils._facts import collect
from ansible_collections.kvmhost.ksm.plugins.module_utils._sysfs import DEFAULT_ROOT


def argument_spec() -> dict:
    return dict(
        processes=dict(type="int", default=10),
        sysfs_path=dict(type="path", default=DEFAULT_ROOT),
    )


def main() -> None:
    module = AnsibleModule(argument_spec=argument_spec(), supports_check_mode=True)
    processes = module.params["processes"]
    if processes < 0:
        module.fail_json(msg="processes is {0}, but it must be 0 (skip the per-process part) or more; "
                             "set processes: 0 or a positive number.".format(processes))

    def run_command(cmd: t.List[str]) -> t.Tuple[int, str, str]:
        return module.run_command(cmd, environ_update={"LC_ALL": "C"})

    facts = collect(
        sysfs_root=module.params["sysfs_path"],
        processes=processes,
        run_command=run_command,
        systemctl=module.get_bin_path("systemctl"),
        warn=module.warn,
    )
    module.exit_json(changed=False, ansible_facts={"ksm": facts})


if __name__ == "__main__":
    main()
