# Copyright (c) kvmhost.ksm contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The budget governor (_governor, the command of the role's auto mode) on this machine's real KSM and ksmd.

It steers the real pages_to_scan from the real ksmd's CPU time, yields to the ksm module when that writes
pages_to_scan, waits while a module run holds the host lock, writes nothing while KSM is stopped, and stops on
SIGTERM. Whether it holds the budget on every workload is measured by bench/merge (a figure, not a test).
"""

import json
import os
import subprocess
import sys
import time
import typing as t

from ansible_collections.kvmhost.ksm.plugins.module_utils import _lock
from conftest import local_only
from real_host import RealHost

CODE = ("import sys; from ansible_collections.kvmhost.ksm.plugins.module_utils._governor import main; "
        "sys.exit(main())")


class Governor:
    """The governor command started from the collection under test, with a private state and lock file."""

    def __init__(self, tmp_path: t.Any, *args: str) -> None:
        self.state_file = str(tmp_path / "governor.json")
        self.lock_file = str(tmp_path / "governor.lock")
        top = os.environ["ANSIBLE_COLLECTIONS_PATH"].split(os.pathsep)[0]
        self.proc = subprocess.Popen(
            [sys.executable, "-c", CODE, "--state-file", self.state_file, "--lock-file", self.lock_file,
             "--interval", "0.2", "--log-every", "0.5", *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONPATH=top))

    def state(self) -> dict[str, t.Any]:
        try:
            with open(self.state_file) as f:
                return json.load(f)
        except (OSError, ValueError):
            return {}

    def wait_for(self, check: t.Callable[[dict[str, t.Any]], bool], timeout: float = 20.0) -> dict[str, t.Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = self.state()
            if state and check(state):
                return state
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        raise AssertionError(f"governor state never matched; last {self.state()}, exit {self.proc.poll()}")

    def finish(self, timeout: float = 20.0) -> tuple[int, str, str]:
        """Wait for the exit (SIGTERM first when it still runs after timeout); (code, stdout, stderr)."""
        try:
            out, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.terminate()
            out, err = self.proc.communicate(timeout=10)
        return self.proc.returncode, out, err

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.communicate()


def test_steers_the_real_ksmd_and_stops_on_sigterm(host: RealHost, workload: t.Any, tmp_path: t.Any) -> None:
    local_only(host, "the governor reads this machine's ksmd")
    host.sysfs.write("sleep_millisecs", 20)
    gov = Governor(tmp_path)
    try:
        state = gov.wait_for(lambda s: s.get("share") is not None and s["phase"] in ("merging", "settled"))
        assert 0 < state["share"] <= 1.0, state
        assert host.sysfs.read("pages_to_scan") == state["pages_to_scan"]
        gov.proc.terminate()
        code, out, err = gov.finish()
    finally:
        gov.stop()
    assert code == 0 and "Traceback" not in err, err
    assert "Stopped; pages_to_scan stays" in out
    assert host.sysfs.read("sleep_millisecs") == 20  # the governor writes pages_to_scan only


def test_yields_to_the_ksm_module(host: RealHost, workload: t.Any, tmp_path: t.Any) -> None:
    local_only(host, "the governor reads this machine's ksmd")
    gov = Governor(tmp_path)
    try:
        gov.wait_for(lambda s: s["phase"] in ("merging", "settled"))
        result = host.run("kvmhost.ksm.ksm", pages_to_scan=777)
        assert not result.get("failed"), result
        code, out, err = gov.finish()
    finally:
        gov.stop()
    assert code == 0, err
    assert gov.state()["phase"] == "yielded"
    assert "pages_to_scan is 777" in out
    time.sleep(0.5)
    assert host.sysfs.read("pages_to_scan") == 777


def test_waits_while_a_module_run_holds_the_lock(host: RealHost, workload: t.Any, tmp_path: t.Any) -> None:
    local_only(host, "the governor reads this machine's ksmd")
    host.sysfs.write("pages_to_scan", 100)
    gov = Governor(tmp_path, "--start-pages", "3000")
    try:
        with _lock.host_lock(gov.lock_file):
            state = gov.wait_for(lambda s: s.get("skipped_writes", 0) >= 2)
            assert host.sysfs.read("pages_to_scan") == 100, "a write while the lock was held"
        state = gov.wait_for(lambda s: s["pages_to_scan"] != 100 and s["phase"] == "merging")
        assert host.sysfs.read("pages_to_scan") == state["pages_to_scan"]
    finally:
        gov.stop()


def test_writes_nothing_while_ksm_is_stopped(host: RealHost, tmp_path: t.Any) -> None:
    local_only(host, "the governor reads this machine's ksmd")
    host.sysfs.write("run", "stopped")
    host.sysfs.write("pages_to_scan", 123)
    gov = Governor(tmp_path, "--duration", "1")
    try:
        code, out, err = gov.finish()
    finally:
        gov.stop()
    assert code == 0, err
    assert gov.state()["phase"] == "idle" and "KSM is stopped" in out
    assert host.sysfs.read("pages_to_scan") == 123
