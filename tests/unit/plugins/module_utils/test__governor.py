# Copyright (c) kvmhost.ksm contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The budget governor's decisions (_governor.Controller) against a model of ksmd, its options and its state file.

The model: ksmd alternates a batch of pages_to_scan pages (cost per page given by the test, so content shapes and
CPUs that cost 1 to 100 us per page are all tried) with a sleep of sleep_millisecs; the first full scan only takes
checksums, the second merges. The real kernel is covered by tests/real_hosts/test_governor.py and bench/merge.
"""

import json
import os
import subprocess
import sys

import pytest

from ansible_collections.kvmhost.ksm.plugins.module_utils import _governor, _governor_state

from ansible_collections.kvmhost.ksm.tests.unit.conftest import make_tree

SLEEP = 0.020
TICK = 0.25


class Ksmd(object):
    """ksmd scanning `pages` mergeable pages of which `dupes` merge, at `cost(scan)` seconds per page."""

    def __init__(self, pages, dupes, cost):
        self.pages, self.dupes, self.cost = pages, dupes, cost
        self.now = self.cpu = 0.0
        self.scanned = self.saved = self.full_scans = self.position = self.seen = 0
        self.pages_to_scan = 100
        self.run = "running"
        self.speed = 1.0  # the share of a core ksmd gets while it runs (other processes compete for the CPU)
        self.counts_scanned = True  # pages_scanned exists (6.6+)
        self.slept = SLEEP  # what one sleep really takes (the kernel rounds up to jiffies and wakes late)

    def advance(self, seconds):
        end = self.now + seconds
        while self.now < end:
            if self.run != "running":
                self.now = end
                break
            batch = self.pages_to_scan
            work = batch * self.cost(self.full_scans)
            self.cpu += work
            self.now += work / self.speed + self.slept
            self.scanned += batch
            self.seen = min(self.pages, self.seen + batch)
            if self.full_scans >= 1:
                self.saved = min(self.dupes, self.saved + batch * self.dupes // self.pages)
            self.position += batch
            if self.position >= self.pages:
                self.full_scans += 1
                self.position = 0

    def sample(self):
        return _governor.Sample(now=self.now, run=self.run, advisor="none", pages_to_scan=self.pages_to_scan,
                                sleep=SLEEP, cpu=self.cpu, scanned=self.scanned if self.counts_scanned else None,
                                full_scans=self.full_scans, saved=self.saved, tracked=self.seen)


def controller(budget=0.25, settled=0.05):
    return _governor.Controller(budget, settled, start_pages=2300, min_pages=10, max_pages=100000)


def drive(ksmd, control, seconds):
    """Run the loop for seconds; the shares of each tick."""
    shares = []
    for _tick in range(int(seconds / TICK)):
        pages = control.step(ksmd.sample())
        if pages is not None:
            ksmd.pages_to_scan = pages
            control.commit(pages)
        if control.phase == "yielded":
            break
        cpu = ksmd.cpu
        ksmd.advance(TICK)
        shares.append((ksmd.cpu - cpu) / TICK)
    return shares


@pytest.mark.parametrize("us_per_page", [1, 5, 20, 100])
def test_holds_the_budget_whatever_a_page_costs(us_per_page):
    """From 1 to 100 us per page (100x apart), ksmd's share settles within 10 % of the 25 % budget while merging."""
    ksmd = Ksmd(pages=10 ** 7, dupes=10 ** 6, cost=lambda scan: us_per_page * 1e-6)
    control = controller()
    shares = drive(ksmd, control, 20)
    late = shares[20:]  # after 5 s
    assert control.phase == "merging"
    assert 0.225 <= sum(late) / len(late) <= 0.275, late
    assert max(late) <= 0.30, late


def test_holds_the_budget_without_pages_scanned():
    """Kernels before 6.6 (RHEL 8, 6.1) have no pages_scanned: the share alone steers."""
    ksmd = Ksmd(pages=10 ** 7, dupes=10 ** 6, cost=lambda scan: 20e-6)
    ksmd.counts_scanned = False
    shares = drive(ksmd, controller(), 20)[20:]
    assert 0.225 <= sum(shares) / len(shares) <= 0.275, shares


def test_the_average_holds_when_the_cost_per_page_jumps():
    """The merging scan costs 4x the checksum scan: the overshoot is paid back, the average stays near 25 %."""
    ksmd = Ksmd(pages=200000, dupes=150000, cost=lambda scan: 2e-6 if scan == 0 else 8e-6)
    shares = drive(ksmd, controller(), 12)
    average = sum(shares) / len(shares)
    assert 0.2 <= average <= 0.275, shares


def test_does_not_wind_up_while_ksmd_waits_for_a_cpu():
    """ksmd gets only 15 % of a core (busy host): pages_to_scan is not raised without bound meanwhile, so when the
    CPU is free again ksmd does not burst far over the budget."""
    ksmd = Ksmd(pages=10 ** 7, dupes=10 ** 6, cost=lambda scan: 5e-6)
    control = controller()
    drive(ksmd, control, 3)
    calm = ksmd.pages_to_scan
    ksmd.speed = 0.15
    drive(ksmd, control, 20)
    assert ksmd.pages_to_scan <= 2 * calm
    ksmd.speed = 1.0
    shares = drive(ksmd, control, 5)
    assert shares[0] <= 0.5 and 0.2 <= sum(shares[8:]) / len(shares[8:]) <= 0.3, shares


def test_timer_slack_is_not_starvation():
    """Sleeps that last 24 ms instead of 20 (jiffies, wake-up latency) while ksmd scans little: the rate rises."""
    ksmd = Ksmd(pages=10 ** 7, dupes=10 ** 6, cost=lambda scan: 2e-6)
    ksmd.slept = 0.024
    control = controller()
    control.step(ksmd.sample())
    control.commit(100)  # as if the start value were the kernel default
    drive(ksmd, control, 3)
    assert ksmd.pages_to_scan > 1000


def test_settles_after_merging_and_wakes_for_new_memory():
    ksmd = Ksmd(pages=20000, dupes=15000, cost=lambda scan: 5e-6)
    control = controller()
    drive(ksmd, control, 10)
    assert ksmd.saved == 15000
    assert control.phase == "settled", control.note
    assert "1 %" in control.note
    late = drive(ksmd, control, 10)[10:]
    assert 0.04 <= sum(late) / len(late) <= 0.06, late
    ksmd.pages += 20000  # a new guest: KSM starts tracking its pages as it scans them
    ksmd.dupes += 15000
    drive(ksmd, control, 1)
    assert control.phase == "merging", control.note
    assert "new mergeable memory" in control.note
    drive(ksmd, control, 20)
    assert ksmd.saved == 30000
    assert control.phase == "settled"


def test_writes_the_start_rate_first_and_nothing_while_ksm_is_stopped():
    ksmd = Ksmd(pages=20000, dupes=0, cost=lambda scan: 5e-6)
    control = controller()
    assert control.step(ksmd.sample()) == 2300
    control.commit(2300)
    ksmd.pages_to_scan = 2300
    ksmd.run = "stopped"
    assert control.step(ksmd.sample()) is None
    assert control.phase == "idle" and "KSM is stopped" in control.note
    assert drive(ksmd, control, 2) == [0.0] * 8


def test_leaves_the_rate_alone_when_ksmd_scanned_nothing():
    ksmd = Ksmd(pages=20000, dupes=0, cost=lambda scan: 5e-6)
    control = controller()
    drive(ksmd, control, 1)
    ksmd.run = "stopped"  # as if no process had mergeable memory: no pages scanned
    sample = ksmd.sample()
    control._prev = sample._replace(now=sample.now - TICK, cpu=sample.cpu)
    assert control._rescale(1000, 0.0, 0.25) == 4000  # what it would do without the pages_scanned check
    running = sample._replace(run="running")
    assert control.step(running) is None


def test_yields_to_another_writer():
    ksmd = Ksmd(pages=20000, dupes=0, cost=lambda scan: 5e-6)
    control = controller()
    drive(ksmd, control, 1)
    ksmd.pages_to_scan = 777  # the module, ksmtuned or an operator
    assert control.step(ksmd.sample()) is None
    assert control.phase == "yielded"
    assert "pages_to_scan is 777" in control.note


def test_blind_without_ksmd():
    control = controller()
    sample = Ksmd(pages=20000, dupes=0, cost=lambda scan: 5e-6).sample()._replace(cpu=None)
    assert control.step(sample) == 2300
    control.commit(2300)
    assert control.step(sample._replace(pages_to_scan=2300, now=1.0)) is None
    assert control.phase == "blind" and "not visible" in control.note


def test_advisor_owns_the_rate():
    sample = Ksmd(pages=20000, dupes=0, cost=lambda scan: 5e-6).sample()._replace(advisor="scan-time")
    control = controller()
    assert control.step(sample) is None
    assert control.phase == "idle" and "advisor" in control.note


def test_settled_budget_zero_is_the_minimum_rate():
    ksmd = Ksmd(pages=20000, dupes=15000, cost=lambda scan: 5e-6)
    control = controller(settled=0.0)
    drive(ksmd, control, 12)
    assert control.phase == "settled"
    assert ksmd.pages_to_scan == 10


def test_state_file_round_trip(tmp_path):
    path = str(tmp_path / "state.json")
    assert _governor_state.read_state(path) is None
    _governor_state.write_state(path, {"phase": "merging", "pages_to_scan": 2300})
    assert _governor_state.read_state(path) == {"phase": "merging", "pages_to_scan": 2300}
    with open(path, "w") as f:
        f.write("[1, 2")
    assert _governor_state.read_state(path) is None
    assert os.listdir(str(tmp_path)) == ["state.json"]


@pytest.mark.parametrize("argv, words", [
    (["--budget", "0"], "--budget is 0"),
    (["--budget", "120"], "--budget is 120"),
    (["--settled-budget", "30"], "--settled-budget is 30"),
    (["--interval", "0"], "--interval is 0"),
    (["--min-pages", "5000"], "1 <= min <= start <= max"),
    (["--duration", "-1"], "--duration"),
])
def test_bad_options_are_one_sentence(argv, words, tmp_path, capsys):
    root = make_tree(tmp_path / "ksm")
    assert _governor.main(argv + ["--sysfs-path", root, "--state-file", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err
    assert words in err and err.count("\n") == 1 and "nothing was written" in err
    assert not os.path.exists(str(tmp_path / "s"))


def test_a_missing_ksm_directory_is_one_sentence(tmp_path, capsys):
    assert _governor.main(["--sysfs-path", str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr().err
    assert str(tmp_path / "nothing") in err and err.count("\n") == 1


def test_runs_on_a_fake_tree_and_stops_by_itself(tmp_path):
    """The command end to end on a fake tree (the real ksmd's CPU time is read, the fake pages_to_scan written)."""
    root = make_tree(tmp_path / "ksm", run="running", pages_to_scan=100)
    state = str(tmp_path / "state.json")
    code = ("import sys; from ansible_collections.kvmhost.ksm.plugins.module_utils._governor import main; "
            "sys.exit(main())")
    done = subprocess.run([sys.executable, "-c", code, "--sysfs-path", root, "--state-file", state,
                           "--lock-file", str(tmp_path / "lock"), "--duration", "0.6", "--interval", "0.2"],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True, timeout=60,
                          check=False, env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)))
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    with open(os.path.join(root, "pages_to_scan")) as f:
        assert f.read().strip() == "2300"
    with open(state) as f:
        assert json.load(f)["pages_to_scan"] == 2300
    assert "merging" in done.stdout or "blind" in done.stdout


def test_ksmd_cpu_time_in_nanoseconds(tmp_path):
    """The governor reads ksmd's CPU time from schedstat (ns); a process that is gone gives None."""
    from ansible_collections.kvmhost.ksm.plugins.module_utils import _procfs
    (tmp_path / "37").mkdir()
    (tmp_path / "37" / "schedstat").write_text("1500000001 20 30\n")
    assert _procfs.sched_cpu_seconds(37, str(tmp_path)) == pytest.approx(1.500000001)
    assert _procfs.sched_cpu_seconds(38, str(tmp_path)) is None
    assert _procfs.sched_cpu_seconds(os.getpid()) > 0
