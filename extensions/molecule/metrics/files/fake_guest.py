# Copyright (c) kvmhost.ksm contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A process that looks like a QEMU guest to ksm_facts and costs KSM more than it saves.

Run as: exec -a qemu-system-x86_64 python3 fake_guest.py -name guest=NAME. It renames itself (comm
qemu-system-x86), maps 100 identical pages and 64 MiB of pages that all differ, marks them MADV_MERGEABLE, prints
"ready" and sleeps: KSM merges 99 pages and tracks about 16 500, so the host's profit goes negative.
"""
import mmap
import os
import sys
import time

with open("/proc/self/comm", "w") as comm:
    comm.write("qemu-system-x86")
PAGE = mmap.PAGESIZE
SAME, UNIQUE = 100, 64 * 1024 * 1024 // PAGE
area = mmap.mmap(-1, (SAME + UNIQUE) * PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
for i in range(SAME):
    area[i * PAGE:(i + 1) * PAGE] = b"\x5a" * PAGE
for i in range(UNIQUE):
    area[(SAME + i) * PAGE:(SAME + i + 1) * PAGE] = os.urandom(PAGE)
area.madvise(mmap.MADV_MERGEABLE)
print("ready", sys.argv[1:], flush=True)
while True:
    time.sleep(3600)
