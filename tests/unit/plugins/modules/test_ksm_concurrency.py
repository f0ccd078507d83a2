# Copyright (c) kvmhost.ksm contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Overlapping runs of the ksm module on one fake tree: two real processes per pair, released at the same instant.

Each pair runs the module as Ansible does (tests/unit/module_process: a process per run, JSON in and out), with the
host lock pointed into the test's directory (lock_file). Whatever the order the lock gives them, a pair must end
with: both runs reporting success; every knob both runs manage holding the later run's value (one run's complete
request, never a mix); the later run's read-back (after) equal to the tree, and its before equal to what the
earlier run reported (it waited, then saw the finished state: no reported success undone); and with persist, a
drop-in holding every key of both runs (none lost), with the later run's values where both persisted one knob.
"""

import os

import pytest

from ansible_collections.kvmhost.ksm.plugins.modules import ksm as module
from ansible_collections.kvmhost.ksm.tests.unit import module_process
from ansible_collections.kvmhost.ksm.tests.unit.kernel_model import KernelModel

PAIRS = 6  # per kind: 4 kinds, 24 overlapping pairs
KINDS = {  # kind -> (persist, requests of run A and run B for pair i)
    "same knobs": (False, lambda i: ({"sleep_millisecs": 100 + i, "pages_to_scan": 1000 + i, "state": "running"},
                                     {"sleep_millisecs": 200 + i, "pages_to_scan": 2000 + i, "state": "stopped"})),
    "same knobs, persist": (True, lambda i: ({"sleep_millisecs": 100 + i, "pages_to_scan": 1000 + i,
                                              "state": "running"},
                                             {"sleep_millisecs": 200 + i, "pages_to_scan": 2000 + i,
                                              "state": "stopped"})),
    "different knobs, persist": (True, lambda i: ({"sleep_millisecs": 100 + i, "state": "running"},
                                                  {"pages_to_scan": 2000 + i, "use_zero_pages": True})),
    "overlapping knobs, persist": (True, lambda i: ({"sleep_millisecs": 100 + i, "pages_to_scan": 1000 + i},
                                                    {"sleep_millisecs": 200 + i, "smart_scan": False})),
}
OPTION_FILE = {"state": "run"}
ATTEMPTS = 5  # per pair, until its two runs overlap in time
FIGURES = {"pairs": 0, "runs": 0}


def tree_values(model, request):
    """The values the tree holds for the options of request, typed like the module's options."""
    return dict((o, model.value(OPTION_FILE.get(o, o))) for o in request)


def drop_in(path, root):
    """{option: text} of the w lines for root in the tmpfiles drop-in at path."""
    entries = {}
    with open(path) as f:
        for line in f:
            fields = line.split()
            if fields and fields[0].startswith("w") and os.path.dirname(fields[1]) == root:
                name = os.path.basename(fields[1])
                entries[{"run": "state"}.get(name, name)] = fields[6]
    return entries


def text_of(option, value):
    if option == "state":
        return str(("stopped", "running", "unmerged").index(value))
    if isinstance(value, bool):
        return "1" if value else "0"
    return str(value)


def one_pair(tmp_path, name, persist, first, second, top):
    """Run one overlapping pair on a fresh tree, check everything it must end with; whether it overlapped."""
    model = KernelModel.build(str(tmp_path / name), "6.8")
    common = {"sysfs_path": model.root, "lock_file": str(tmp_path / "ksm.lock"), "lock_timeout": 60}
    if persist:
        common.update(persist=True, persist_file=str(tmp_path / "tmpfiles.d" / "{0}.conf".format(name)))
    runs = module_process.overlapping("ksm", [dict(common, **first), dict(common, **second)], top)
    for run in runs:
        assert "Traceback" not in run.output, run.output
        assert not run.failed, (name, run.result.get("msg"), run.stderr)
    a, b = runs
    (earlier, early_req), (later, late_req) = module_process.in_order([(a, first), (b, second)])
    final = dict(early_req, **late_req)
    assert tree_values(model, final) == final, (name, "a mix of both requests")
    assert later.result["after"] == tree_values(model, late_req), (name, "the later run's read-back")
    assert earlier.result["after"] == dict(early_req), (name, "the earlier run's read-back")
    if persist:
        expected = dict((o, text_of(o, v)) for o, v in final.items())
        assert drop_in(common["persist_file"], model.root) == expected, (name, "a persisted entry lost")
        leftovers = [n for n in os.listdir(os.path.dirname(common["persist_file"])) if n.startswith(".")]
        assert leftovers == [], (name, "temporary files left")
    return a.start < b.end and b.start < a.end


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_overlapping_pairs_end_in_one_complete_request(tmp_path, kind):
    """PAIRS pairs that overlapped in time; a pair the scheduler let run one after the other (a loaded machine)
    is checked all the same, and repeated, up to ATTEMPTS times, until it overlaps."""
    persist, requests = KINDS[kind]
    top = module_process.top_of(module)
    attempts = 0
    for i in range(PAIRS):
        for attempt in range(ATTEMPTS):
            attempts += 1
            if one_pair(tmp_path, "ksm{0}.{1}".format(i, attempt), persist, *requests(i), top=top):
                break
        else:
            pytest.fail("pair {0} never overlapped in time in {1} attempts: the barrier did not hold".format(
                i, ATTEMPTS))
    FIGURES["pairs"] += PAIRS
    FIGURES["runs"] += 2 * attempts
    print("{0}: {1} overlapping pairs ({2} attempts), none mixed, none lost".format(kind, PAIRS, attempts))


def test_lock_timeout_names_the_lock_file_and_its_holder(tmp_path):
    """A run that cannot get the lock within lock_timeout fails with one sentence naming the file and the pid."""
    import fcntl
    model = KernelModel.build(str(tmp_path / "ksm"), "6.8")
    before = model.state()
    lock = str(tmp_path / "ksm.lock")
    with open(lock, "w") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)
        held.write("{0}\n".format(os.getpid()))
        held.flush()
        run = module_process.run("ksm", {"sysfs_path": model.root, "lock_file": lock, "lock_timeout": 1,
                                         "sleep_millisecs": 5}, module_process.top_of(module))
    assert run.failed and "Traceback" not in run.output, run.output
    msg = run.result["msg"]
    assert lock in msg and str(os.getpid()) in msg and "lock_timeout" in msg and "\n" not in msg, msg
    assert model.state() == before
