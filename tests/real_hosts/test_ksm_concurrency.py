# Copyright (c) kvmhost.ksm contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Overlapping runs of kvmhost.ksm.ksm on this machine's real KSM, with the module's default host lock.

Five pairs of module processes (tests/unit/module_process: one process per run, JSON in and out, released from a
barrier at the same instant) write different values to /sys/kernel/mm/ksm, every other pair with persist (into a
drop-in under the test's tmp_path). Each pair must end with both runs successful, the real KSM holding the later
run's complete request where both manage a knob (never a mix), the later run's read-back equal to the kernel's
values and its before equal to the earlier run's request (it waited for it), and no persisted entry lost. Runs on
localhost only, under the guard of the ``host`` fixture (KSM saved before, restored after).
"""

import os
import typing as t

from ansible_collections.kvmhost.ksm.tests.unit import module_process
from conftest import local_only
from real_host import RealHost

PAIRS = 5
ATTEMPTS = 5  # per pair, until its two runs overlap in time
OPTION_FILE = {"state": "run"}


def requests(i: int) -> tuple[bool, dict[str, t.Any], dict[str, t.Any]]:
    """(persist, request A, request B) of pair i: the same knobs, or with persist partly different ones."""
    first = {"sleep_millisecs": 30 + i, "pages_to_scan": 300 + i}
    if i % 2:
        return True, first, {"sleep_millisecs": 60 + i, "use_zero_pages": bool(i % 4 == 1)}
    return False, first, {"sleep_millisecs": 60 + i, "pages_to_scan": 600 + i}


def drop_in(path: str) -> dict[str, str]:
    entries = {}
    with open(path) as f:
        for line in f:
            fields = line.split()
            if fields and fields[0].startswith("w"):
                entries[os.path.basename(fields[1])] = fields[6]
    return entries


def text_of(value: t.Any) -> str:
    return ("1" if value else "0") if isinstance(value, bool) else str(value)


def one_pair(host: RealHost, i: int, attempt: int, top: str, tmp_path: t.Any) -> bool:
    """Run pair i once and check how it ended; whether its two runs overlapped in time."""
    persist, first, second = requests(i)
    common: dict[str, t.Any] = {}
    if persist:
        common = {"persist": True, "persist_file": str(tmp_path / f"ksm{i}.{attempt}.conf")}
    runs = module_process.overlapping("ksm", [dict(common, **first), dict(common, **second)], top)
    for run in runs:
        assert "Traceback" not in run.output, run.output
        assert not run.failed, (i, run.result.get("msg"), run.stderr)
    a, b = runs
    (earlier, early_req), (later, late_req) = module_process.in_order([(a, first), (b, second)])
    final = dict(early_req, **late_req)
    assert dict((o, host.sysfs.read(OPTION_FILE.get(o, o))) for o in final) == final, (i, "a mix")
    assert later.result["after"] == dict((o, final[o]) for o in late_req), (i, "the later run's read-back")
    assert earlier.result["after"] == early_req, (i, "the earlier run's read-back")
    if persist:
        assert drop_in(common["persist_file"]) == dict((o, text_of(v)) for o, v in final.items()), (
            i, "a persisted entry lost")
    return a.start < b.end and b.start < a.end


def test_overlapping_pairs_on_the_real_ksm(host: RealHost, tmp_path: t.Any) -> None:
    """PAIRS pairs that overlapped in time (a pair run one after the other is checked too, and repeated)."""
    local_only(host, "the pairs run as processes of this machine against its own KSM")
    top = os.environ["ANSIBLE_COLLECTIONS_PATH"].split(os.pathsep)[0]
    attempts = 0
    for i in range(PAIRS):
        for attempt in range(ATTEMPTS):
            attempts += 1
            if one_pair(host, i, attempt, top, tmp_path):
                break
        else:
            raise AssertionError(f"pair {i} never overlapped in time in {ATTEMPTS} attempts")
    print(f"real KSM: {PAIRS} overlapping pairs ({attempts} attempts), none mixed, none lost")
