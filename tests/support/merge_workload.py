# Copyright (c) kvmhost.ksm contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A reproducible merging workload: several processes holding identical anonymous pages marked MADV_MERGEABLE.

Page i of every process has the same content, and the pages of one process all differ, so with N processes
KSM can share size/page_size pages, each mapped N times (pages_sharing = (N - 1) x pages_shared).

Content shapes (where the bytes that tell page i from page j sit; KSM compares pages with memcmp, so a late
difference costs more per comparison):

- ``start``: page i's index in its first 8 bytes (the rest is one template shared by all pages);
- ``end``: the index in its last 8 bytes;
- ``random``: the index at a per-page offset drawn from a seeded pseudo-random stream (SHAKE-128 of the seed), the
  same offsets in every process.

``unique`` (0-100 %): that share of each process's pages, spread evenly, also carries the process index next to
the page index, so those pages never merge. Saveable pages = (processes - 1) x (pages - unique pages).

    python3 tests/support/merge_workload.py --processes 4 --mib 64     # runs until stdin closes or SIGTERM
    python3 tests/support/merge_workload.py --processes 4 --mib 64 --shape end --unique 50

From Python: ``with Workload(processes=4, mib=64) as w: ...`` (w.pids, w.saveable).
Standard library only: the VM lab copies this file into its guests.
"""

import argparse
import hashlib
import mmap
import os
import signal
import struct
import subprocess
import sys
import time
import typing as t

PAGE = mmap.PAGESIZE
SHAPES = ("start", "end", "random")
CHUNK_PAGES = 256  # the template is copied in 1 MiB slices


def is_unique(index: int, unique: int) -> bool:
    """Whether page `index` is one of the `unique` % that never merge (spread evenly: floor(pages x unique / 100))."""
    return (index + 1) * unique // 100 > index * unique // 100


def unique_count(pages: int, unique: int) -> int:
    return pages * unique // 100


def offsets(pages: int, shape: str, seed: str) -> t.Callable[[int], int]:
    """The byte offset of page i's index inside the page, for one content shape."""
    if shape == "start":
        return lambda i: 0
    if shape == "end":
        return lambda i: PAGE - 8
    if shape != "random":
        raise ValueError(f"unknown content shape {shape!r}; known: {', '.join(SHAPES)}")
    slots = (PAGE - 16) // 8 + 1  # 8-byte aligned, room for the process mark after the index
    stream = hashlib.shake_128(("offsets:" + seed).encode()).digest(4 * pages)
    table = [8 * (v % slots) for (v,) in struct.iter_unpack("<I", stream)]
    return table.__getitem__


def fill(mib: int, seed: str = "kvmhost.ksm", shape: str = "start", unique: int = 0,
         process: int = 0) -> mmap.mmap:
    """Map mib MiB of private anonymous memory, give every page its own content, mark it mergeable.

    Every page is the seed's template with the page index written at the shape's offset; unique pages also carry
    process + 1 in the 8 bytes after it (before it for `end`)."""
    size = mib * 1024 * 1024
    pages = size // PAGE
    area = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    block = hashlib.sha256(seed.encode()).digest() * (PAGE // 32)
    chunk = block * CHUNK_PAGES
    for start in range(0, size, len(chunk)):
        area[start:start + len(chunk)] = chunk[:size - start]
    where = offsets(pages, shape, seed)
    mark = -8 if shape == "end" else 8
    pack = struct.Struct("<Q").pack_into
    for i in range(pages):
        at = i * PAGE + where(i)
        pack(area, at, i)
        if unique and is_unique(i, unique):
            pack(area, at + mark, process + 1)
    area.madvise(mmap.MADV_MERGEABLE)
    return area


def hold(mib: int, shape: str = "start", unique: int = 0, process: int = 0) -> None:
    area = fill(mib, shape=shape, unique=unique, process=process)
    print("ready", flush=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        sys.stdin.read()  # until the parent closes our stdin or dies
    finally:
        area.close()


class Workload:
    """Start `processes` holders of `mib` MiB each (content `shape`, `unique` % never merging); stop them on exit.
    They fill their memory in parallel."""

    def __init__(self, processes: int = 4, mib: int = 16, shape: str = "start", unique: int = 0) -> None:
        if shape not in SHAPES:
            raise ValueError(f"unknown content shape {shape!r}; known: {', '.join(SHAPES)}")
        if not 0 <= unique <= 100:
            raise ValueError(f"the unique share is a percentage from 0 to 100, not {unique}")
        self.processes = processes
        self.mib = mib
        self.shape = shape
        self.unique = unique
        self.procs: list[subprocess.Popen] = []

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    @property
    def pages(self) -> int:
        """Pages each process holds."""
        return self.mib * 1024 * 1024 // PAGE

    @property
    def unique_pages(self) -> int:
        """Pages of each process that never merge."""
        return unique_count(self.pages, self.unique)

    @property
    def saveable(self) -> int:
        """Pages KSM can save: (processes - 1) x (pages - unique pages)."""
        return (self.processes - 1) * (self.pages - self.unique_pages)

    def __enter__(self) -> "Workload":
        try:
            for index in range(self.processes):
                self.procs.append(subprocess.Popen(
                    [sys.executable, os.path.abspath(__file__), "--hold", str(self.mib), "--shape", self.shape,
                     "--unique", str(self.unique), "--index", str(index)],
                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True))
            for p in self.procs:
                if p.stdout is None or p.stdout.readline().strip() != "ready":
                    raise RuntimeError(f"workload process {p.pid} did not start")
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
        for p in self.procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
            for stream in (p.stdin, p.stdout):
                if stream:
                    stream.close()
        self.procs = []

    def __exit__(self, *exc: t.Any) -> None:
        self.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--mib", type=int, default=64, help="MiB per process")
    parser.add_argument("--shape", choices=SHAPES, default="start", help="where pages differ (default start)")
    parser.add_argument("--unique", type=int, default=0, help="%% of each process's pages that never merge")
    parser.add_argument("--hold", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--index", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if not 0 <= args.unique <= 100:
        parser.error(f"--unique is a percentage from 0 to 100, not {args.unique}")
    if args.hold:
        hold(args.hold, args.shape, args.unique, args.index)
        return 0
    with Workload(args.processes, args.mib, args.shape, args.unique) as w:
        print(" ".join(map(str, w.pids)), flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
