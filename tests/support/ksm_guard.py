# Copyright (c) kvmhost.ksm contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Save, restore and guard the real KSM state of the test machine.

Every test step that writes the machine's /sys/kernel/mm/ksm (real-host tests, molecule scenarios whose
containers share the host's KSM, benchmarks) holds one machine-wide lock while it runs and puts the saved values
back afterwards, also on failure:

    python3 tests/support/ksm_guard.py guard -- <command ...>   # lock, save, run, restore, exit with its code
    python3 tests/support/ksm_guard.py save FILE | restore FILE | show

From Python: ``with guarded(): ...``. The lock file is $KSM_TEST_LOCK (default /run/lock/kvmhost-ksm-tests.lock);
a process tree that already holds it has KSM_TEST_LOCK_HELD set to its path, and nested guards do not lock again.
Restoring goes through the collection's own planner (``_apply.converge``): the same write order, unmerge and
EBUSY handling as the ksm module, with the values ``_plan.restorable`` says can be written back.
"""

from __future__ import annotations  # the system python3 of older hosts runs these too

import argparse
import contextlib
import fcntl
import json
import os
import subprocess
import sys
import typing as t

if __package__ in (None, ""):  # run as a script: make the support package importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from support.collection import import_collection  # noqa: E402  (after the path set-up above)

import_collection()

from ansible_collections.kvmhost.ksm.plugins.module_utils import _apply, _plan, _sysfs  # noqa: E402

LOCK_FILE = os.environ.get("KSM_TEST_LOCK", "/run/lock/kvmhost-ksm-tests.lock")
UNMERGE_TIMEOUT = 120.0  # seconds to wait for run=2 before a busy knob is written (or reported)
Values = dict[str, t.Any]


def writable(root: str = _sysfs.DEFAULT_ROOT) -> tuple[bool, str]:
    """Whether this machine's KSM can be driven by tests, and why not."""
    if not os.path.isfile(os.path.join(root, "run")):
        return False, f"{root} does not exist (kernel without CONFIG_KSM)"
    if os.geteuid() != 0:
        return False, "tests that change the real KSM need root"
    if not os.access(os.path.join(root, "run"), os.W_OK):
        return False, f"{root} is not writable here (read-only /sys)"
    try:
        if os.statvfs(root).f_flag & os.ST_RDONLY:
            return False, f"{root} is on a read-only file system (a container?)"
    except OSError:
        pass
    return True, ""


def save(root: str = _sysfs.DEFAULT_ROOT) -> Values:
    """Every tunable of this kernel, parsed."""
    return _sysfs.Sysfs(root).read_tunables()


def restore(saved: Values, root: str = _sysfs.DEFAULT_ROOT) -> list[str]:
    """Put the saved values back through the planner (unmerging when an EBUSY knob must change).
    Returns the problems, one sentence each; empty when KSM holds the saved values again."""
    ksm = _sysfs.Sysfs(root)
    request = _plan.restorable(saved)
    problems = []
    try:
        _apply.converge(ksm, request, allow_unmerge=True, timeout=UNMERGE_TIMEOUT)
    except _sysfs.KsmError as exc:
        problems.append(str(exc))
    now = ksm.read_tunables()
    left = {k: f"{now.get(k)} (saved {v})" for k, v in sorted(request.items()) if now.get(k) != v}
    if left:
        problems.append(f"KSM in {root} not restored: " + ", ".join(f"{k} {v}" for k, v in left.items()) + ".")
    return problems


@contextlib.contextmanager
def locked() -> t.Iterator[None]:
    """The machine-wide lock; a no-op inside a process tree that a guard already holds it for."""
    if os.environ.get("KSM_TEST_LOCK_HELD") == LOCK_FILE:
        yield
        return
    os.makedirs(os.path.dirname(LOCK_FILE), exist_ok=True)
    with open(LOCK_FILE, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        os.environ["KSM_TEST_LOCK_HELD"] = LOCK_FILE
        try:
            yield
        finally:
            del os.environ["KSM_TEST_LOCK_HELD"]
            fcntl.flock(lock, fcntl.LOCK_UN)


@contextlib.contextmanager
def guarded(root: str = _sysfs.DEFAULT_ROOT) -> t.Iterator[Values]:
    """Hold the machine-wide lock, save KSM, and restore it on the way out whatever happened."""
    with locked():
        saved = save(root)
        try:
            yield saved
        finally:
            for problem in restore(saved, root):
                print(f"ksm_guard: {problem}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("show", help="print the saved form of KSM now (JSON)")
    sub.add_parser("save", help="write the saved form to FILE").add_argument("file")
    sub.add_parser("restore", help="put the values of FILE back").add_argument("file")
    guard = sub.add_parser("guard", help="lock, save, run COMMAND, restore; exit with its status")
    guard.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    if args.cmd == "show":
        print(json.dumps(save(), indent=1, sort_keys=True))
        return 0
    if args.cmd == "save":
        with open(args.file, "w") as f:
            json.dump(save(), f, indent=1, sort_keys=True)
        return 0
    if args.cmd == "restore":
        with open(args.file) as f:
            problems = restore(json.load(f))
        for problem in problems:
            print(f"ksm_guard: {problem}", file=sys.stderr)
        return 1 if problems else 0
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("guard needs a command: ksm_guard.py guard -- COMMAND ...")
    if not writable()[0]:
        return subprocess.call(command)
    with guarded():
        return subprocess.call(command)


if __name__ == "__main__":
    sys.exit(main())
