# Copyright (c) kvmhost.ksm contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Fixtures for every test that drives the REAL KSM of this machine through the collection's modules.

Fixtures and helpers (all function-scoped unless noted):

``real_ksm``
    Skips the test, printing why, when this machine's KSM cannot be driven (no CONFIG_KSM, not root, read-only
    /sys: ``ksm_state.writable()``). Otherwise holds the machine-wide KSM test lock, saves every tunable, yields a
    ``_sysfs.Sysfs`` on /sys/kernel/mm/ksm, and restores the saved values afterwards, also when the test fails
    (``ksm_state.guarded``). The advisor is switched off at the start (``advisor_mode: none``) so tests start
    from the kernel's default scanning mode; the restore puts the machine's own mode back.

``workload``
    Needs ``real_ksm``. Starts ``merge_workload.Workload(processes=4, mib=16)`` (identical pages marked
    MADV_MERGEABLE), drives KSM fast (pages_to_scan=5000, sleep_millisecs=10, run=1) until pages_shared > 0, and
    yields the Workload; its processes are stopped afterwards. KSM stays running: the test decides what's next.

``run_module(name, check=False, diff=False, **args)``
    Runs one collection module (``"ksm"`` means ``kvmhost.ksm.ksm``; any FQCN works, e.g. ``ansible.builtin.ping``)
    on localhost with ``ansible localhost -m <fqcn> -a <json>`` and returns its raw result dict, with ``diff``
    and ``warnings`` kept and ``failed: true`` on failure. ``check``/``diff`` add ``--check``/``--diff``.
    It uses a test-only stdout callback (callback_plugins/kvmhost_result.py) and pins the module's interpreter to
    ``ANSIBLE_PYTHON_INTERPRETER`` or, if unset, to the Python running pytest (a pyenv shim can be picked otherwise).
    ``ANSIBLE_COLLECTIONS_PATH`` is used when set; otherwise a session-wide temporary directory whose
    ``ansible_collections/kvmhost/ksm`` links to this repository. pytest-ansible's own ``localhost`` fixture is not
    used: it cannot switch check or diff mode per call.

``ksm_values(sysfs)``
    Plain function: every tunable as typed values, for before/after comparisons.
"""

import json
import os
import shutil
import subprocess
import sys
import time
import typing as t

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, os.path.join(REPO, "tests", "support"))

import ksm_state  # noqa: E402  (tests/support, imported by path)
import merge_workload  # noqa: E402

_sysfs = ksm_state._sysfs  # the collection's sysfs layer, as ksm_state loaded it

MERGE_TIMEOUT = 60.0


def ksm_values(sysfs: "_sysfs.Sysfs") -> t.Dict[str, t.Any]:
    return sysfs.read_tunables()


@pytest.fixture
def real_ksm() -> t.Iterator["_sysfs.Sysfs"]:
    ok, why = ksm_state.writable()
    if not ok:
        print(f"skipping real-KSM test: {why}")
        pytest.skip(f"real KSM not usable here: {why}")
    with ksm_state.guarded():
        sysfs = _sysfs.Sysfs()
        if sysfs.has("advisor_mode") and sysfs.read("advisor_mode") != "none":
            sysfs.write("advisor_mode", "none")
        yield sysfs


@pytest.fixture
def workload(real_ksm: "_sysfs.Sysfs") -> t.Iterator[merge_workload.Workload]:
    with merge_workload.Workload(processes=4, mib=16) as load:
        real_ksm.write("pages_to_scan", 5000)
        real_ksm.write("sleep_millisecs", 10)
        real_ksm.write("run", "running")
        deadline = time.monotonic() + MERGE_TIMEOUT
        while not real_ksm.read("pages_shared"):
            if time.monotonic() > deadline:
                pytest.fail(f"the merge workload did not merge within {MERGE_TIMEOUT} s")
            time.sleep(0.1)
        yield load


@pytest.fixture(scope="session")
def collections_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    if os.environ.get("ANSIBLE_COLLECTIONS_PATH"):
        return os.environ["ANSIBLE_COLLECTIONS_PATH"]
    base = tmp_path_factory.mktemp("collections")
    (base / "ansible_collections" / "kvmhost").mkdir(parents=True)
    (base / "ansible_collections" / "kvmhost" / "ksm").symlink_to(REPO)
    return str(base)


def _ansible_command() -> str:
    beside = os.path.join(os.path.dirname(sys.executable), "ansible")
    found = beside if os.path.exists(beside) else shutil.which("ansible")
    if not found:
        pytest.skip("the ansible command is not installed in this environment")
    return found


@pytest.fixture(scope="session")
def run_module(collections_path: str) -> t.Callable[..., t.Dict[str, t.Any]]:
    env = dict(
        os.environ,
        ANSIBLE_COLLECTIONS_PATH=collections_path,
        ANSIBLE_PYTHON_INTERPRETER=os.environ.get("ANSIBLE_PYTHON_INTERPRETER", sys.executable),
        ANSIBLE_CALLBACK_PLUGINS=os.path.join(HERE, "callback_plugins"),
        ANSIBLE_LOAD_CALLBACK_PLUGINS="1",
        ANSIBLE_STDOUT_CALLBACK="kvmhost_result",
        ANSIBLE_LOCALHOST_WARNING="false",
        ANSIBLE_INVENTORY_UNPARSED_WARNING="false",
        ANSIBLE_NOCOLOR="1",
    )
    command = _ansible_command()

    def run(name: str, check: bool = False, diff: bool = False, **args: t.Any) -> t.Dict[str, t.Any]:
        fqcn = name if "." in name else f"kvmhost.ksm.{name}"
        argv = [command, "localhost", "-m", fqcn] + (["-a", json.dumps(args)] if args else [])  # 2.19 rejects -a '{}'
        argv += ["--check"] * check + ["--diff"] * diff
        proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600, check=False)
        lines = [line for line in proc.stdout.splitlines() if line.startswith('{"host"')]
        if len(lines) != 1:
            raise AssertionError(f"{' '.join(argv)} gave no result (rc {proc.returncode}):\n"
                                 f"{proc.stdout}\n{proc.stderr}")
        event = json.loads(lines[0])
        result = event["result"]
        result["failed"] = event["status"] == "failed"
        return result

    return run
