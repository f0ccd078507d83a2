# -*- coding: utf-8 -*-
# Copyright (c) kvmhost.ksm contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

# Note that this module util is **PRIVATE** to the collection. It can have breaking changes at any time.
# Do not use this from other collections or standalone plugins/modules!

"""Whether a host could absorb a full unshare of its KSM pages: memory figures, guests' memory, the verdict.

Pure decisions on figures read by _procfs (meminfo, QEMU command lines, VmRSS). The RHEL guide: "Ensure the swap
size is sufficient for the committed RAM even without taking KSM into account ... guest virtual machine memory use
can result in pages becoming unshared." Every formula is repeated in the ksm_facts module documentation.
Runs on Python 3.6+.
"""

import typing as t

Facts = t.Dict[str, t.Any]

QEMU_DEFAULT_MEMORY = 128 * 1024 * 1024  # QEMU's RAM size without -m
_UNITS = {"": 1024 * 1024, "b": 1, "k": 1024, "m": 1024 ** 2, "g": 1024 ** 3, "t": 1024 ** 4}  # no suffix: MiB


def parse_size(text: str) -> t.Optional[int]:
    """A QEMU size ('2048' MiB, '2G', '2097152k', '1.5G') in bytes, or None when it is not one."""
    text = text.strip()
    suffix = text[-1:].lower() if text[-1:].isalpha() else ""
    number = text[:-1] if suffix else text
    if suffix not in _UNITS:
        return None
    try:
        return int(float(number) * _UNITS[suffix])
    except ValueError:
        return None


def qemu_memory(argv: t.List[str]) -> int:
    """The RAM a QEMU command line gives its guest in bytes: '-m 2048', '-m 2G', '-m size=2097152k,slots=..';
    QEMU's default (128 MiB) without -m or with a value it cannot read."""
    for i, arg in enumerate(argv[1:-1], 1):
        if arg not in ("-m", "--m"):
            continue
        for part in argv[i + 1].split(","):
            key, sep, value = part.partition("=")
            size = parse_size(value if sep and key == "size" else part if not sep else "")
            if size is not None:
                return size
        break
    return QEMU_DEFAULT_MEMORY


def size_text(value: int) -> str:
    """Bytes in words for messages: '512.0 MiB', '3.25 GiB'."""
    if abs(value) >= 1024 ** 3:
        return "{0:.2f} GiB".format(value / 1024.0 ** 3)
    return "{0:.1f} MiB".format(value / 1024.0 ** 2)


def verdict(mem_available: t.Optional[int], swap_free: t.Optional[int], unshare: t.Optional[int]
            ) -> t.Tuple[t.Optional[bool], str]:
    """Whether the host could absorb a full unshare (MemAvailable + SwapFree >= unshare), and why, in words."""
    if mem_available is None or swap_free is None or unshare is None:
        missing = [name for name, value in (("MemAvailable", mem_available), ("SwapFree", swap_free),
                                            ("the KSM statistics", unshare)) if value is None]
        return None, "unknown: {0} could not be read".format(" and ".join(missing))
    need = "unsharing every merged page would need {0}".format(size_text(unshare))
    if unshare <= mem_available:
        return True, "{0}, which MemAvailable ({1}) covers".format(need, size_text(mem_available))
    if unshare <= mem_available + swap_free:
        swapped = size_text(unshare - mem_available)
        return True, ("{0}, more than MemAvailable ({1}): the host would absorb it only by swapping out {2} of "
                      "its {3} free swap".format(need, size_text(mem_available), swapped, size_text(swap_free)))
    return False, ("{0}, but MemAvailable ({1}) and free swap ({2}) hold only {3}: {4} short; the host fits its "
                   "guests only because of KSM (add swap or memory, or run fewer guests)"
                   .format(need, size_text(mem_available), size_text(swap_free),
                           size_text(mem_available + swap_free), size_text(unshare - mem_available - swap_free)))


def memory_facts(info: t.Dict[str, int], unshare: t.Optional[int], guests: t.List[t.Tuple[int, t.Optional[int]]]
                 ) -> Facts:
    """ansible_facts.ksm.memory from meminfo (bytes), the bytes a full unshare needs and the guests' (given,
    resident) bytes. committed = given to guests + the host's own use (MemTotal - MemAvailable - the guests'
    resident memory, at least 0); swap_advised = committed - MemTotal (at least 0), the RHEL guide's swap."""
    total = info.get("MemTotal")
    available = info.get("MemAvailable")
    swap_total = info.get("SwapTotal")
    swap_free = info.get("SwapFree")
    given = sum(g for g, _r in guests)
    resident = sum(r or 0 for _g, r in guests)
    committed: t.Optional[int] = None
    swap_advised: t.Optional[int] = None
    if total is not None and available is not None:
        committed = given + max(0, total - available - resident)
        swap_advised = max(0, committed - total)
    absorbable, reason = verdict(available, swap_free, unshare)
    return {
        "mem_total_bytes": total,
        "mem_available_bytes": available,
        "swap_total_bytes": swap_total,
        "swap_free_bytes": swap_free,
        "unshare_bytes": unshare,
        "headroom_bytes": None if absorbable is None else t.cast(int, available) + t.cast(int, swap_free) - t.cast(
            int, unshare),
        "unshare_absorbable": absorbable,
        "reason": reason,
        "guests": {"count": len(guests), "given_bytes": given, "resident_bytes": resident},
        "committed_bytes": committed,
        "swap_advised_bytes": swap_advised,
        "swap_sufficient": None if swap_advised is None or swap_total is None else swap_total >= swap_advised,
    }
