# Copyright (c) kvmhost.ksm contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Many cheap idle processes for benchmarks: one parent forks `count` children that sleep until it stops them.

With pages > 0 every child also holds that many private anonymous pages marked MADV_MERGEABLE, page i the same in
every child (and all pages of one child different), so once KSM has scanned them each child has merged pages of its
own and /proc/<pid>/ksm_stat shows them. A child is forked from a small Python without threading and creates no
objects, so it copies little of the parent (measured on this machine: about 200 KiB of its own memory per child,
plus about 110 KiB of page tables and kernel structures). The parent stops its children by pid when its stdin
closes (also when the benchmark dies) or it gets SIGTERM, so nothing outlives the benchmark, also on failure or
Ctrl-C.

    python3 tests/support/idle_processes.py --count 1000 [--pages 2]   # prints "ready", runs until stdin closes

From Python: ``with IdleProcesses(count=1000, pages=2) as idle: ...`` (idle.pids).
"""

import argparse
import gc
import mmap
import os
import signal
import sys
import typing as t

PAGE = mmap.PAGESIZE
# No threading here (nor subprocess, which imports it): its at-fork hook alone makes each child copy about 400 KiB.


def mergeable_area(pages: int) -> mmap.mmap | None:
    """pages private anonymous pages, page i starting with i + 1 and zero after, marked MADV_MERGEABLE (children
    inherit the mapping and the mark)."""
    if not pages:
        return None
    area = mmap.mmap(-1, pages * PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    for i in range(pages):
        area[i * PAGE:i * PAGE + 8] = (i + 1).to_bytes(8, "little")
    area.madvise(mmap.MADV_MERGEABLE)
    return area


def child(area: mmap.mmap | None, offsets: list[int]) -> None:
    """The body of one idle child: own copies of the mergeable pages (one byte written to each), then sleep until
    killed. Never returns. It creates no Python objects, so it copies almost nothing of the parent's heap (not even
    signal.signal, which costs 100-300 KiB here: the parent's SIGTERM handler, inherited, ends a child too)."""
    try:
        if area is not None:
            for offset in offsets:
                area[offset] = 1  # the same byte in every child: page i stays identical across children
        while True:
            signal.pause()
    finally:
        os._exit(0)


def hold(count: int, pages: int) -> None:
    """Fork the children, print 'ready', wait until stdin closes or SIGTERM, then stop and reap every child."""
    children: list[int] = []
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    area = mergeable_area(pages)
    offsets = [i * PAGE + 8 for i in range(pages)]
    gc.disable()  # a collection in a child would write to every object's header: copies of the whole heap
    gc.freeze()
    try:
        for _index in range(count):
            pid = os.fork()
            if pid == 0:
                child(area, offsets)
            children.append(pid)
        print("ready", flush=True)
        sys.stdin.read()
    finally:
        for pid in children:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for pid in children:
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass


class IdleProcesses:
    """Start `count` idle processes (each holding `pages` mergeable pages) in one helper; stop them on exit."""

    def __init__(self, count: int, pages: int = 0) -> None:
        self.count = count
        self.pages = pages
        self.proc: t.Any = None  # the helper's subprocess.Popen

    @property
    def pids(self) -> list[int]:
        """The children's pids (read from /proc: the helper's children)."""
        if self.proc is None:
            return []
        path = f"/proc/{self.proc.pid}/task/{self.proc.pid}/children"
        with open(path) as f:
            return [int(word) for word in f.read().split()]

    def __enter__(self) -> "IdleProcesses":
        import subprocess  # here only: the helper itself must not import threading

        self.proc = subprocess.Popen([sys.executable, "-S", "-I", os.path.abspath(__file__), "--count",
                                      str(self.count), "--pages", str(self.pages)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                     start_new_session=True)
        try:
            if self.proc.stdout is None or self.proc.stdout.readline().strip() != "ready":
                raise RuntimeError(f"idle process helper {self.proc.pid} did not start {self.count} processes "
                                   f"(see ulimit -u and /proc/sys/kernel/pid_max)")
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Close the helper's stdin: it kills and reaps its children and exits. A helper that does not exit within
        a minute (or a Ctrl-C while waiting) gets SIGKILL for its whole process group before it is reaped: it leads
        a session of its own, so the group is the helper and its children, and its id cannot be reused yet."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        try:
            if proc.stdin:
                proc.stdin.close()
            proc.wait(timeout=60)
        except BaseException:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise
        finally:
            if proc.stdout:
                proc.stdout.close()

    def __exit__(self, *exc: t.Any) -> None:
        self.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, required=True, help="idle processes to start")
    parser.add_argument("--pages", type=int, default=0, help="mergeable pages each one holds (default 0)")
    args = parser.parse_args()
    try:
        hold(args.count, args.pages)
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
