# -*- coding: utf-8 -*-
# Copyright (c) kvmhost.ksm contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

# Note that this module util is **PRIVATE** to the collection. It can have breaking changes at any time.
# Do not use this from other collections or standalone plugins/modules!

"""The budget governor: steers pages_to_scan so that ksmd uses a set share of one core.

A fixed pages_to_scan is a number of pages per second, not a CPU budget: what a page costs ksmd depends on its
content (memcmp walks pages that differ late), on the share of unique pages and on the CPU. The governor measures
instead. Every interval it reads ksmd's CPU time (/proc/<ksmd>/schedstat, nanoseconds) and rescales
pages_to_scan by the ratio of the wanted to the measured busy/idle odds: ksmd alternates a batch of
pages_to_scan pages (cost proportional to the batch) with a sleep of sleep_millisecs, so its share s satisfies
s / (1 - s) = pages_to_scan x cost per page / sleep, which is linear in pages_to_scan whatever the cost.

Two budgets: ``budget`` while merging, ``settled_budget`` once a full scan merged less than 1 % of the pages KSM
tracks (after at least two full scans: the first only records checksums). New mergeable memory (the tracked pages
grow by that much) or a full scan that merges again switches back to merging. What ksmd spends above (or below)
the budget in a phase is paid back over the next seconds, so that the phase's average holds the budget even where
the cost per page jumps (the second full scan, which merges, costs more per page than the first, which only takes
checksums).

It writes only pages_to_scan, each write under the collection's host lock (skipped for a tick while a module run
holds it), and yields to any other writer: when pages_to_scan is not what it last wrote it says so and exits 0.
It does nothing while run is not 1 (running) or the kernel's advisor owns pages_to_scan. ``Controller`` is the pure
decision (unit tests drive it with a model of ksmd); ``main(argv)`` is the command the role installs
(roles/ksm/templates/kvmhost-ksm-governor.j2). Stdlib only. Runs on Python 3.6+.
"""

import argparse
import errno
import os
import signal
import sys
import time
import typing as t

from ansible_collections.kvmhost.ksm.plugins.module_utils import _procfs
from ansible_collections.kvmhost.ksm.plugins.module_utils._governor_state import DEFAULT_STATE, NAME, write_state
from ansible_collections.kvmhost.ksm.plugins.module_utils._lock import DEFAULT_PATH as DEFAULT_LOCK, host_lock
from ansible_collections.kvmhost.ksm.plugins.module_utils._sysfs import DEFAULT_ROOT, KsmError, Sysfs, root_problem

SETTLE_SHARE = 0.01  # a full scan that merges less than this share of the tracked pages: settled
SETTLE_MIN_PAGES = 64  # ... and never less than this many pages (small hosts)
SETTLE_SCANS = 2  # full scans in the merging phase before it may settle (the first one only takes checksums)
GAIN = 0.8  # exponent on each correction: a little under the model's full step, against noise
STEP_LIMITS = (0.25, 4.0)  # the most one tick may shrink or grow pages_to_scan
IDLE_SHARE = 0.0005  # below this share ksmd had nothing to scan (no information) where pages_scanned is missing
WRITE_TOLERANCE = 0.01  # rates within 1 % of the current one are not written
STARVED_SLACK = 0.020  # seconds per batch of waiting that timer slack and wake-up latency explain (a sleep)
HORIZON = 2.0  # seconds over which CPU spent above (or below) the budget is paid back


class Sample(t.NamedTuple):
    """What one tick reads. cpu: ksmd's CPU seconds so far (None where ksmd is not visible); scanned:
    pages_scanned (None before 6.6); saved: pages_sharing + ksm_zero_pages; tracked: the pages KSM has seen
    (pages_shared + pages_sharing + pages_unshared + pages_volatile)."""

    now: float
    run: str
    advisor: str
    pages_to_scan: int
    sleep: float
    cpu: t.Optional[float]
    scanned: t.Optional[int]
    full_scans: int
    saved: int
    tracked: int


class Controller(object):
    """The decisions of the governor, from one Sample per tick. Pure: no I/O."""

    def __init__(self, budget: float, settled_budget: float, start_pages: int,
                 min_pages: int, max_pages: int) -> None:
        self.budget = budget
        self.settled_budget = settled_budget
        self.start_pages = start_pages
        self.min_pages = min_pages
        self.max_pages = max_pages
        self.phase = "starting"
        self.written: t.Optional[int] = None  # what this governor last wrote
        self.share: t.Optional[float] = None  # ksmd's share over the last tick
        self.note = ""  # why the phase is what it is, for the log
        self._prev: t.Optional[Sample] = None
        self._mark: t.Optional[Sample] = None  # the sample at the last full-scan boundary
        self._scans = 0  # full scans seen in the merging phase
        self._debt = 0.0  # CPU seconds ksmd spent above the target in this phase (negative: below)

    @property
    def target(self) -> float:
        return self.settled_budget if self.phase == "settled" else self.budget

    def commit(self, pages: int) -> None:
        """pages was written to pages_to_scan."""
        self.written = pages

    def step(self, sample: Sample) -> t.Optional[int]:
        """The pages_to_scan to write now, or None. Sets phase (yielded: stop, another manager wrote)."""
        if self.written is not None and sample.pages_to_scan != self.written:
            self._enter("yielded", "pages_to_scan is {0}, not the {1} this governor wrote: another manager (the "
                        "kvmhost.ksm.ksm module, ksmtuned or an operator) changed it, and the governor leaves it "
                        "to them".format(sample.pages_to_scan, self.written))
            return None
        if sample.run != "running" or sample.advisor == "scan-time":
            why = "the kernel's advisor sets pages_to_scan" if sample.run == "running" else "KSM is {0}".format(
                sample.run)
            self._enter("idle", "{0}; nothing to steer".format(why))
            self._prev = self._mark = None
            return None
        prev, self._prev = self._prev, sample
        if self.phase in ("starting", "idle"):
            self._enter("merging", "ksmd runs; budget {0:g} % of one core".format(self.budget * 100))
            self._mark, self._scans = sample, 0
            return self._propose(self.written if self.written is not None else self.start_pages, sample)
        if sample.cpu is None:
            self._enter("blind", "ksmd is not visible here (a container's PID namespace?), so its CPU time cannot "
                        "be measured; pages_to_scan stays at {0}".format(sample.pages_to_scan))
            return None
        self._follow_scans(sample)
        if prev is None or prev.cpu is None or sample.now <= prev.now:
            return None
        share = max(0.0, (sample.cpu - prev.cpu) / (sample.now - prev.now))
        self.share = share
        if self.target <= 0:
            return self._propose(self.min_pages, sample)
        if sample.scanned is not None and prev.scanned is not None:
            if sample.scanned == prev.scanned:
                return None  # ksmd scanned nothing (no mergeable memory): nothing learnt
            if share < self.target and self._starved(sample, prev):
                return None
        elif share < IDLE_SHARE:
            return None
        aim = self._aim(share, sample.now - prev.now)
        return self._propose(self._rescale(sample.pages_to_scan, share, aim), sample)

    @staticmethod
    def _starved(sample: Sample, prev: Sample) -> bool:
        """Whether ksmd waited for a CPU: per batch, the time it neither slept nor ran exceeds its running time
        (and timer slack). Then the scheduler, not pages_to_scan, limits it, and a larger pages_to_scan would only
        pile up for later."""
        batches = (t.cast(int, sample.scanned) - t.cast(int, prev.scanned)) / float(max(sample.pages_to_scan, 1))
        work = (t.cast(float, sample.cpu) - t.cast(float, prev.cpu)) / batches
        waiting = (sample.now - prev.now) / batches - sample.sleep - work
        return waiting > max(work, STARVED_SLACK)

    @classmethod
    def odds(cls, share: float) -> float:
        share = min(max(share, 0.002), 0.98)
        return share / (1.0 - share)

    def _rescale(self, pages: int, share: float, target: float) -> int:
        factor = (self.odds(target) / self.odds(share)) ** GAIN
        factor = min(max(factor, STEP_LIMITS[0]), STEP_LIMITS[1])
        return int(round(pages * factor))

    def _propose(self, pages: int, sample: Sample) -> t.Optional[int]:
        pages = min(max(pages, self.min_pages), self.max_pages)
        current = sample.pages_to_scan
        if self.written is not None and abs(pages - current) <= max(1, current * WRITE_TOLERANCE):
            return None
        return pages

    def _follow_scans(self, sample: Sample) -> None:
        mark = self._mark
        if mark is None or sample.full_scans < mark.full_scans:  # first sample, or run=2 restarted the count
            self._mark = sample
            return
        threshold = max(SETTLE_MIN_PAGES, int(mark.tracked * SETTLE_SHARE))
        if self.phase == "settled" and sample.tracked - mark.tracked >= threshold:
            self._enter("merging", "KSM tracks {0} more pages (new mergeable memory); budget {1:g} %".format(
                sample.tracked - mark.tracked, self.budget * 100))
            self._mark, self._scans = sample, 0
            return
        if sample.full_scans == mark.full_scans:
            return
        gain = sample.saved - mark.saved
        self._scans += sample.full_scans - mark.full_scans
        self._mark = sample
        if self.phase == "merging" and self._scans >= SETTLE_SCANS and gain < threshold:
            self._enter("settled", "the last full scan merged {0} pages (under {1}, 1 % of the {2} pages KSM "
                        "tracks); budget {3:g} %".format(gain, threshold, sample.tracked,
                                                         self.settled_budget * 100))
        elif self.phase == "settled" and gain >= threshold:
            self._enter("merging", "the last full scan merged {0} pages; budget {1:g} %".format(
                gain, self.budget * 100))
            self._scans = 1

    def _enter(self, phase: str, note: str) -> None:
        if phase != self.phase:
            self.phase = phase
            self.note = note
            self._debt = 0.0

    def _aim(self, share: float, seconds: float) -> float:
        """The share to aim at next: the target, less what was spent over it in this phase (paid back over
        HORIZON seconds), so that the phase's average holds the target; within half and 1.5 x the target."""
        limit = self.target * HORIZON / 2
        self._debt = min(max(self._debt + (share - self.target) * seconds, -limit), limit)
        return self.target - self._debt / HORIZON


def read_sample(ksm: Sysfs, ksmd: t.Optional[int]) -> Sample:
    """One tick's reading of the KSM files and ksmd's CPU time. KsmError when a KSM file cannot be read."""
    values = ksm.read_present(["run", "advisor_mode", "pages_to_scan", "sleep_millisecs", "pages_scanned", "full_scans",
                               "pages_shared", "pages_sharing", "pages_unshared", "pages_volatile",
                               "ksm_zero_pages"])
    for name in ("run", "pages_to_scan"):
        if name not in values:
            raise KsmError("{0} vanished; the governor stops (check the kernel and --sysfs-path).".format(
                ksm.path(name)))
    cpu = _procfs.sched_cpu_seconds(ksmd) if ksmd is not None else None
    sharing = int(values.get("pages_sharing", 0))
    return Sample(
        now=time.monotonic(),
        run=str(values["run"]),
        advisor=str(values.get("advisor_mode", "none")),
        pages_to_scan=int(values["pages_to_scan"]),
        sleep=int(values.get("sleep_millisecs", 20)) / 1000.0,
        cpu=cpu,
        scanned=int(values["pages_scanned"]) if "pages_scanned" in values else None,
        full_scans=int(values.get("full_scans", 0)),
        saved=sharing + int(values.get("ksm_zero_pages", 0)),
        tracked=sum(int(values.get(name, 0)) for name in ("pages_shared", "pages_unshared", "pages_volatile"))
        + sharing,
    )


def parse_args(argv: t.Optional[t.List[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=NAME, description="Steer KSM's pages_to_scan so that ksmd uses a set "
                                     "share of one CPU core (kvmhost.ksm role, ksm_mode auto).")
    parser.add_argument("--budget", type=float, default=25.0, help="ksmd's share of one core while merging, %%")
    parser.add_argument("--settled-budget", type=float, default=5.0,
                        help="ksmd's share once merging has settled, %% (0: --min-pages)")
    parser.add_argument("--interval", type=float, default=0.5, help="seconds between measurements")
    parser.add_argument("--start-pages", type=int, default=2300, help="pages_to_scan written at the start")
    parser.add_argument("--min-pages", type=int, default=10, help="lowest pages_to_scan written")
    parser.add_argument("--max-pages", type=int, default=100000, help="highest pages_to_scan written")
    parser.add_argument("--sysfs-path", default=DEFAULT_ROOT, help="the KSM directory")
    parser.add_argument("--lock-file", default=DEFAULT_LOCK, help="the kvmhost.ksm host lock, held for every write")
    parser.add_argument("--state-file", default=DEFAULT_STATE, help="JSON status, rewritten every interval")
    parser.add_argument("--duration", type=float, default=0.0, help="stop after this many seconds (0: never)")
    parser.add_argument("--log-every", type=float, default=60.0, help="seconds between status lines")
    return parser.parse_args(argv)


def problems(args: argparse.Namespace) -> t.List[str]:
    """Every bad option, one sentence each."""
    found = []
    if not 0 < args.budget <= 100:
        found.append("--budget is {0:g}, but it must be more than 0 and at most 100 (% of one core)".format(
            args.budget))
    if not 0 <= args.settled_budget <= args.budget:
        found.append("--settled-budget is {0:g}, but it must be between 0 and --budget ({1:g})".format(
            args.settled_budget, args.budget))
    if not 0.05 <= args.interval <= 3600:
        found.append("--interval is {0:g}, but it must be between 0.05 and 3600 seconds".format(args.interval))
    if not 1 <= args.min_pages <= args.start_pages <= args.max_pages:
        found.append("--min-pages, --start-pages and --max-pages are {0}, {1} and {2}, but they must satisfy "
                     "1 <= min <= start <= max".format(args.min_pages, args.start_pages, args.max_pages))
    if args.duration < 0 or args.log_every <= 0:
        found.append("--duration must be 0 or more and --log-every more than 0 seconds")
    problem = root_problem(args.sysfs_path)
    if problem:
        found.append(problem.rstrip("."))
    elif not Sysfs(args.sysfs_path).has("pages_to_scan"):
        found.append("{0} has no KSM files (no run and pages_to_scan): the kernel lacks KSM (CONFIG_KSM) or "
                     "--sysfs-path is not the KSM directory, {1}".format(args.sysfs_path, DEFAULT_ROOT))
    return found


class Governor(object):
    """The loop: read, decide, write under the host lock, keep the state file, log."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.ksm = Sysfs(args.sysfs_path)
        self.ksmd = _procfs.ksmd_pid()
        self.control = Controller(args.budget / 100.0, args.settled_budget / 100.0, args.start_pages,
                                  args.min_pages, args.max_pages)
        self.stopping = False
        self.skipped = 0  # ticks whose write waited for a module run's lock

    def log(self, text: str) -> None:
        sys.stdout.write(text + "\n")
        sys.stdout.flush()

    def write(self, pages: int) -> None:
        """pages_to_scan = pages under the host lock, unless another writer got there first."""
        try:
            with host_lock(self.args.lock_file, 0):
                current = int(self.ksm.read("pages_to_scan"))
                if self.control.written is not None and current != self.control.written:
                    return  # the next tick sees it and yields
                self.ksm.write("pages_to_scan", pages)
                self.control.commit(pages)
        except KsmError as exc:
            if exc.errno == errno.ETIMEDOUT:
                self.skipped += 1
                return
            self.log("Cannot write pages_to_scan={0}: {1} The governor retries at the next interval.".format(
                pages, exc))

    def state(self, sample: Sample) -> t.Dict[str, t.Any]:
        times = os.times()
        return {"pid": os.getpid(), "phase": self.control.phase, "note": self.control.note,
                "budget": self.control.budget, "settled_budget": self.control.settled_budget,
                "pages_to_scan": self.control.written if self.control.written is not None else sample.pages_to_scan,
                "share": self.control.share, "saved_pages": sample.saved, "tracked_pages": sample.tracked,
                "own_cpu_seconds": round(times[0] + times[1], 3), "skipped_writes": self.skipped,
                "updated": round(time.time(), 3)}

    def status(self, sample: Sample) -> str:
        share = "unknown" if self.control.share is None else "{0:.1f} %".format(self.control.share * 100)
        return "{0}: ksmd {1} of one core (budget {2:g} %), pages_to_scan {3}, {4} pages saved.".format(
            self.control.phase, share, self.control.target * 100, self.state(sample)["pages_to_scan"], sample.saved)

    def run(self) -> int:
        args = self.args
        start = time.monotonic()
        next_log = start + args.log_every
        phase = ""
        self.log("{0} {1}: budget {2:g} % of one core while merging, {3:g} % once settled, every {4:g} s; ksmd "
                 "pid {5}.".format(NAME, os.getpid(), args.budget, args.settled_budget, args.interval, self.ksmd))
        while not self.stopping:
            tick = time.monotonic()
            sample = read_sample(self.ksm, self.ksmd)
            pages = self.control.step(sample)
            if pages is not None:
                self.write(pages)
            if self.control.phase != phase:
                phase = self.control.phase
                self.log("{0}: {1}.".format(phase, self.control.note))
            write_state(args.state_file, self.state(sample))
            if phase == "yielded":
                return 0
            if tick >= next_log:
                self.log(self.status(sample))
                next_log = tick + args.log_every
            if args.duration and tick - start >= args.duration:
                break
            time.sleep(max(0.0, tick + args.interval - time.monotonic()))
        self.log("Stopped; pages_to_scan stays {0}.".format(self.control.written))
        return 0


def main(argv: t.Optional[t.List[str]] = None) -> int:
    args = parse_args(argv)
    found = problems(args)
    if found:
        sys.stderr.write("{0}: {1}; nothing was written.\n".format(NAME, "; ".join(found)))
        return 2
    governor = Governor(args)

    def stop(signum: int, frame: t.Any) -> None:
        governor.stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        return governor.run()
    except KsmError as exc:
        sys.stderr.write("{0}: {1}\n".format(NAME, exc))
        return 1
