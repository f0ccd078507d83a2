# Copyright (c) kvmhost.ksm contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A reproducible merging workload: several processes holding identical anonymous pages marked MADV_MERGEABLE.

Page i of every process has the same content, and the pages of one process all differ, so with N processes
KSM can share size/page_size pages, each mapped N times (pages_sharing = (N - 1) x pages_shared).

    python3 tests/support/merge_workload.py --processes 4 --mib 64     # runs until stdin closes or SIGTERM

From Python: ``with Workload(processes=4, mib=64) as w: ...`` (w.pids).
"""

import argparse
import hashlib
import mmap
import os
import signal
import subprocess
import sys
import time
import typing as t

PAGE = mmap.PAGESIZE


def fill(mib: int, seed: str = "kvmhost.ksm") -> mmap.mmap:
    """Map mib MiB of private anonymous memory, give every page its own content, mark it mergeable."""
    size = mib * 1024 * 1024
    area = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    block = hashlib.sha256(seed.encode()).digest() * (PAGE // 32)
    for i in range(size // PAGE):
        area[i * PAGE:(i + 1) * PAGE] = i.to_bytes(8, "little") + block[8:]
    area.madvise(mmap.MADV_MERGEABLE)
    return area


def hold(mib: int) -> None:
    area = fill(mib)
    print("ready", flush=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        sys.stdin.read()  # until the parent closes our stdin or dies
    finally:
        area.close()


class Workload:
    """Start `processes` holders of `mib` MiB each; stop them on exit."""

    def __init__(self, processes: int = 4, mib: int = 16) -> None:
        self.processes = processes
        self.mib = mib
        self.procs: list[subprocess.Popen] = []

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    @property
    def pages(self) -> int:
        """Pages each process holds (so KSM can save (processes - 1) x pages)."""
        return self.mib * 1024 * 1024 // PAGE

    def __enter__(self) -> "Workload":
        try:
            for _index in range(self.processes):
                self.procs.append(subprocess.Popen(
                    [sys.executable, os.path.abspath(__file__), "--hold", str(self.mib)],
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
    parser.add_argument("--mib", type=int, default=64)
    parser.add_argument("--hold", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.hold:
        hold(args.hold)
        return 0
    with Workload(args.processes, args.mib) as w:
        print(" ".join(map(str, w.pids)), flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
