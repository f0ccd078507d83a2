# Copyright (c) kvmhost.ksm contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What the benchmarks print about the machine they ran on: CPU model, cores, RAM, kernel, load.

    python3 tests/support/machine.py        # prints it as JSON
"""

import json
import os
import platform
import sys
import typing as t

if __package__ in (None, ""):  # run as a script: make the support package importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo, or 'unknown CPU'."""
    try:
        with open("/proc/cpuinfo", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def ram_gib() -> float:
    """MemTotal in GiB, one decimal (the collection's own /proc/meminfo parser)."""
    from support.collection import import_collection
    import_collection()
    from ansible_collections.kvmhost.ksm.plugins.module_utils import _procfs
    return round(_procfs.meminfo().get("MemTotal", 0) / 1024 ** 3, 1)


def describe() -> dict[str, t.Any]:
    """kernel, cores, cpu, ram_gib and the load averages (a string of three)."""
    return {"kernel": platform.release(), "cores": os.cpu_count(), "cpu": cpu_model(), "ram_gib": ram_gib(),
            "load": " ".join(f"{v:.2f}" for v in os.getloadavg())}


if __name__ == "__main__":
    json.dump(describe(), sys.stdout, indent=1)
    sys.stdout.write("\n")
