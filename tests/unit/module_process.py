# Copyright (c) kvmhost.ksm contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Run a module of this collection the way Ansible runs it: a Python process of its own, arguments as JSON, the
result as JSON on stdout (what an AnsiballZ payload does once unpacked; ``python <module> <args file>`` is
ansible-core's own entry for that, used by its test-module tool).

``run(module, args, collections_top, ...)`` runs one and returns a ``Run`` (rc, result, stdout, stderr, start, end).
``overlapping(module, [args, ...], collections_top, ...)`` starts one process per args list, lets each import
everything, holds them at a barrier and releases them at the same instant, so the module bodies really overlap
(on a 2-core machine within about a millisecond). ``in_order(pair)`` tells which run of a pair went first.
``top_of(module)`` is the directory holding ansible_collections/ for an imported module of the collection (unit
tests); a real-host test passes ANSIBLE_COLLECTIONS_PATH's first entry. Python 3.6+ (ansible-test runs the unit tests on 3.6 too).
"""

import json
import os
import subprocess
import sys
import tempfile
import time
import typing as t

PACKAGE = "ansible_collections.kvmhost.ksm.plugins.modules."
TIMEOUT = 120  # seconds for one module run; the module's own lock_timeout stays below it

# The process: import the module's dependencies, say so, wait for the barrier, then run the module as __main__.
# Start and end times go to a side file (time.time(): one clock for every process of the machine).
BOOTSTRAP = r"""
import atexit, json, os, runpy, sys, time
name, ready, go, times = sys.argv[1:5]
del sys.argv[1:5]
import ansible.module_utils.basic
import ansible_collections.kvmhost.ksm.plugins.module_utils._apply
open(ready, "w").close()
while go != "-" and not os.path.exists(go):
    time.sleep(0.0002)
start = time.time()
def done():
    with open(times, "w") as f:
        json.dump([start, time.time()], f)
atexit.register(done)
runpy.run_module(name, run_name="__main__", alter_sys=True)
"""


class Run(t.NamedTuple):
    rc: int
    result: t.Dict[str, t.Any]  # the module's JSON result ({} when stdout was not JSON)
    stdout: str
    stderr: str
    start: float  # when the module body started (after the barrier)
    end: float  # when the process exited

    @property
    def output(self) -> str:
        return self.stdout + self.stderr

    @property
    def failed(self) -> bool:
        return self.rc != 0 or bool(self.result.get("failed")) or not self.result


def in_order(pair: t.Sequence[t.Tuple[Run, t.Dict[str, t.Any]]]) -> t.List[t.Tuple[Run, t.Dict[str, t.Any]]]:
    """Two (run, request) of an overlapping pair as [earlier, later]: the later run's before holds the earlier
    run's request for the options both manage (it saw the finished state). Without shared options, by end time.
    AssertionError when neither or both saw the other's values: the runs were not one after the other."""
    (a, request_a), (b, request_b) = pair
    shared = [o for o in request_a if o in request_b]
    if not shared:
        return sorted(pair, key=lambda item: item[0].end)
    b_saw_a = all(b.result.get("before", {}).get(o) == request_a[o] for o in shared)
    a_saw_b = all(a.result.get("before", {}).get(o) == request_b[o] for o in shared)
    if b_saw_a == a_saw_b:
        raise AssertionError("of two overlapping runs, {0} saw the other's finished values for {1} (before: {2!r} and "
                             "{3!r}): they did not run one after the other".format(
                                 "both" if b_saw_a else "neither", ", ".join(shared), a.result.get("before"),
                                 b.result.get("before")))
    return [(a, request_a), (b, request_b)] if b_saw_a else [(b, request_b), (a, request_a)]


def top_of(imported: t.Any) -> str:
    """The directory that holds ansible_collections/ for an imported module of this collection."""
    path = os.path.abspath(imported.__file__)
    top = path
    for _level in imported.__name__.split("."):
        top = os.path.dirname(top)
    if not os.path.isfile(os.path.join(top, *imported.__name__.split(".")) + ".py"):
        raise RuntimeError("cannot find ansible_collections/ above {0}".format(path))
    return top


def payload(args: t.Dict[str, t.Any],
            check: bool = False,
            diff: bool = False,
            tmpdir: t.Optional[str] = None) -> t.Dict[str, t.Any]:
    """The JSON a module receives: the task's arguments plus the internal ones Ansible adds (2.16 .. 2.21)."""
    internal = {"_ansible_check_mode": check, "_ansible_diff": diff, "_ansible_verbosity": 0,
                "_ansible_debug": False, "_ansible_no_log": False, "_ansible_keep_remote_files": False}
    if tmpdir:
        internal.update(_ansible_tmpdir=tmpdir, _ansible_remote_tmp=tmpdir)
    return {"ANSIBLE_MODULE_ARGS": dict(args, **internal)}


def _start(module: str,
           args: t.Dict[str, t.Any],
           top: str,
           work: str,
           index: int,
           check: bool,
           diff: bool,
           barrier: str,
           python: str) -> t.Tuple[subprocess.Popen, str, str]:
    tmp = os.path.join(work, "tmp{0}".format(index))
    os.makedirs(tmp)
    args_file = os.path.join(work, "args{0}.json".format(index))
    with open(args_file, "w") as f:
        json.dump(payload(args, check, diff, tmp), f)
    ready, times = os.path.join(work, "ready{0}".format(index)), os.path.join(work, "times{0}".format(index))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([top] + [p for p in sys.path if p and os.path.isdir(p)]),
               LC_ALL="C.UTF-8", ANSIBLE_MODULE_DEBUG="0")
    command = [python, "-c", BOOTSTRAP, PACKAGE + module, ready, barrier, times, args_file]
    proc = subprocess.Popen(command, env=env, cwd=tmp, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    return proc, ready, times


def _finish(proc: subprocess.Popen, times: str, timeout: float) -> Run:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        err += "\n(killed after {0} s)".format(timeout).encode()
    stdout, stderr = out.decode("utf-8", "replace"), err.decode("utf-8", "replace")
    try:
        result = json.loads(stdout)
    except ValueError:
        result = {}
    try:
        with open(times) as f:
            start, end = json.load(f)
    except (IOError, OSError, ValueError):
        start = end = 0.0
    return Run(proc.returncode, result if isinstance(result, dict) else {}, stdout, stderr, start, end)


def overlapping(module: str,
                arg_lists: t.Sequence[t.Dict[str, t.Any]],
                top: str,
                check: bool = False,
                diff: bool = False,
                timeout: float = TIMEOUT,
                python: str = sys.executable) -> t.List[Run]:
    """Run the module once per args, all released at one instant from a barrier; the Runs in args order."""
    work = tempfile.mkdtemp(prefix="kvmhost-module.")
    barrier = os.path.join(work, "go")
    started = [_start(module, a, top, work, i, check, diff, barrier, python) for i, a in enumerate(arg_lists)]
    deadline = time.monotonic() + timeout
    while not all(os.path.exists(ready) for _p, ready, _t in started):
        if time.monotonic() > deadline or any(p.poll() is not None for p, _r, _t in started):
            break  # one died before the barrier: its output says why
        time.sleep(0.001)
    open(barrier, "w").close()
    runs = [_finish(p, times, timeout) for p, _r, times in started]
    _remove(work)
    return runs


def run(module: str,
        args: t.Dict[str, t.Any],
        top: str,
        check: bool = False,
        diff: bool = False,
        timeout: float = TIMEOUT,
        python: str = sys.executable) -> Run:
    """Run the module once in a process of its own."""
    work = tempfile.mkdtemp(prefix="kvmhost-module.")
    proc, _ready, times = _start(module, args, top, work, 0, check, diff, "-", python)
    result = _finish(proc, times, timeout)
    _remove(work)
    return result


def _remove(path: str) -> None:
    for base, dirs, files in os.walk(path, topdown=False):
        for name in files:
            os.unlink(os.path.join(base, name))
        for name in dirs:
            os.rmdir(os.path.join(base, name))
    os.rmdir(path)
