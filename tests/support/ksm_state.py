# Copyright (c) kvmhost.ksm contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Save, restore and guard the real KSM state of the test machine.

Every test step that writes the machine's /sys/kernel/mm/ksm (pytest integration tests, molecule scenarios
whose containers share the host's KSM, benchmarks) holds one machine-wide lock while it runs and puts the
saved values back afterwards, also on failure:

    python3 tests/support/ksm_state.py guard -- <command ...>   # lock, save, run, restore, exit with its code
    python3 tests/support/ksm_state.py save FILE | restore FILE | show

From Python: ``with guarded(): ...``.
"""

import argparse
import contextlib
import fcntl
import json
import os
import subprocess
import sys
import time
import typing as t

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "plugins", "module_utils"))

import _sysfs  # noqa: E402  (the collection's own sysfs layer, imported by path)

LOCK_FILE = os.environ.get("KSM_TEST_LOCK", "/run/lock/kvmhost-ksm-tests.lock")


def writable(root: str = _sysfs.DEFAULT_ROOT) -> t.Tuple[bool, str]:
    """Whether this machine's KSM can be driven by tests, and why not."""
    if not os.path.isfile(os.path.join(root, "run")):
        return False, f"{root} does not exist (kernel without CONFIG_KSM)"
    if os.geteuid() != 0:
        return False, "tests that change the real KSM need root"
    if not os.access(os.path.join(root, "run"), os.W_OK):
        return False, f"{root} is not writable here (read-only /sys)"
    try:
        st = os.statvfs(root)
        if st.f_flag & os.ST_RDONLY:
            return False, f"{root} is on a read-only file system (a container?)"
    except OSError:
        pass
    return True, ""


def save(root: str = _sysfs.DEFAULT_ROOT) -> t.Dict[str, t.Any]:
    return _sysfs.Sysfs(root).read_tunables()


UNMERGE_TIMEOUT = 120.0  # seconds to wait for run=2 before a busy knob is written (or reported)


def restore(saved: t.Dict[str, t.Any], root: str = _sysfs.DEFAULT_ROOT) -> t.List[str]:
    """Put saved values back in the safe order; unmerge first if an EBUSY knob must change. Returns problems."""
    ksm = _sysfs.Sysfs(root)
    problems = []
    current = ksm.read_tunables()
    busy_change = any(k.busy and k.name in saved and saved[k.name] != current.get(k.name) for k in _sysfs.TUNABLES)
    if busy_change and ksm.read("pages_shared"):
        ksm.write("run", "unmerged")
        ksm.wait_unmerged(UNMERGE_TIMEOUT)
    for knob in _sysfs.TUNABLES:
        name = knob.name
        if name not in saved or name == "run":
            continue
        if name == "pages_to_scan" and saved.get("advisor_mode", "none") != "none":
            continue  # the kernel refuses it under the advisor; the mode switch set it
        if ksm.read(name) == saved[name]:
            continue
        for attempt in range(20):
            try:
                ksm.write(name, saved[name])
                break
            except _sysfs.KsmError as exc:
                if knob.busy and attempt < 19:
                    ksm.write("run", "unmerged")
                    ksm.wait_unmerged(UNMERGE_TIMEOUT)
                    time.sleep(0.2)
                    continue
                problems.append(str(exc))
                break
    if "run" in saved and ksm.read("run") != saved["run"]:
        ksm.write("run", saved["run"])
    left = {k: v for k, v in ksm.read_tunables().items() if saved.get(k, v) != v}
    if left:
        problems.append(f"KSM not restored: {left}")
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
def guarded(root: str = _sysfs.DEFAULT_ROOT) -> t.Iterator[t.Dict[str, t.Any]]:
    """Hold the machine-wide lock, save KSM, and restore it on the way out whatever happened."""
    with locked():
        saved = save(root)
        try:
            yield saved
        finally:
            for problem in restore(saved, root):
                print(f"ksm_state: {problem}", file=sys.stderr)


def main(argv: t.Optional[t.List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("show")
    sub.add_parser("save").add_argument("file")
    sub.add_parser("restore").add_argument("file")
    guard = sub.add_parser("guard")
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
            print(f"ksm_state: {problem}", file=sys.stderr)
        return 1 if problems else 0
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    ok, _why = writable()
    if not ok:
        return subprocess.call(command)
    with guarded():
        return subprocess.call(command)


if __name__ == "__main__":
    sys.exit(main())
