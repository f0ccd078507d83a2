# Copyright (c) kvmhost.ksm contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The memory verdict (can the host absorb a full unshare?) and the guests' memory from QEMU command lines.

The real host's figures are checked by tests/real_hosts/test_ksm_facts.py; these cover the cases it cannot show.
"""

import pytest

from ansible_collections.kvmhost.ksm.plugins.module_utils import _memory, _procfs

MIB = 1024 ** 2
GIB = 1024 ** 3


@pytest.mark.parametrize("argv, given", [
    (["qemu-system-x86_64", "-m", "2048"], 2048 * MIB),
    (["qemu-system-x86_64", "-m", "2G"], 2 * GIB),
    (["qemu-kvm", "-name", "a", "-m", "size=2097152k,slots=4,maxmem=8G"], 2 * GIB),
    (["kvm", "-m", "1.5G"], int(1.5 * GIB)),
    (["qemu-system-x86_64"], 128 * MIB),  # QEMU's default
    (["qemu-system-x86_64", "-m", "lots"], 128 * MIB),
    (["qemu-system-x86_64", "-m"], 128 * MIB),
])
def test_qemu_memory(argv, given):
    assert _memory.qemu_memory(argv) == given


def test_parse_meminfo_bytes():
    info = _procfs.parse_meminfo("MemTotal:       16318976 kB\nHugePages_Total:       4\nbroken line\n")
    assert info == {"MemTotal": 16318976 * 1024, "HugePages_Total": 4}


def test_verdict_ram_covers():
    ok, reason = _memory.verdict(4 * GIB, 0, 1 * GIB)
    assert ok is True
    assert reason == "unsharing every merged page would need 1.00 GiB, which MemAvailable (4.00 GiB) covers"


def test_verdict_swap_covers_the_rest():
    ok, reason = _memory.verdict(1 * GIB, 2 * GIB, 2 * GIB)
    assert ok is True and "swapping out 1.00 GiB of its 2.00 GiB free swap" in reason


def test_verdict_short_names_the_shortfall():
    ok, reason = _memory.verdict(1 * GIB, 512 * MIB, 2 * GIB)
    assert ok is False
    assert "512.0 MiB short" in reason and "only because of KSM" in reason


def test_verdict_unknown_names_what_is_missing():
    assert _memory.verdict(None, 0, 0) == (None, "unknown: MemAvailable could not be read")


def test_memory_facts_committed_and_swap_advice():
    info = {"MemTotal": 8 * GIB, "MemAvailable": 2 * GIB, "SwapTotal": 1 * GIB, "SwapFree": 1 * GIB}
    # two guests given 4 GiB each, holding 2.5 GiB each: the host itself uses 8 - 2 - 5 = 1 GiB
    facts = _memory.memory_facts(info, 3 * GIB, [(4 * GIB, int(2.5 * GIB)), (4 * GIB, int(2.5 * GIB))])
    assert facts["guests"] == {"count": 2, "given_bytes": 8 * GIB, "resident_bytes": 5 * GIB}
    assert facts["committed_bytes"] == 9 * GIB and facts["swap_advised_bytes"] == 1 * GIB
    assert facts["swap_sufficient"] is True
    assert facts["unshare_absorbable"] is True and facts["headroom_bytes"] == 0


def test_memory_facts_without_meminfo():
    facts = _memory.memory_facts({}, 0, [])
    assert facts["unshare_absorbable"] is None and facts["headroom_bytes"] is None
    assert facts["committed_bytes"] is None and facts["swap_sufficient"] is None
