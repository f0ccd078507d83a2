# Copyright (c) kvmhost.ksm contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Fixtures for the module tests against real hosts: this machine's real KSM and VM lab guests with their own kernel.

Run them with ``tests/real_hosts/run [--inventory FILE] [pytest args]`` (collection environment, guard, inventory).
pytest-ansible reads the inventory (``--ansible-inventory``) and the host pattern (``--ansible-host-pattern``);
every test that takes ``host`` runs once per matching host, with the host name as its id.

``host`` (a ``real_host.RealHost``)
    localhost (``ansible_connection: local``): skipped, printing why, when this machine's KSM cannot be driven;
    otherwise the KSM state is saved first and restored afterwards, also when the test fails
    (``support.ksm_guard.guarded``), and the advisor is switched off at the start (``advisor_mode: none``).
    Any other host (a VM guest, whose KSM is its own): its KSM facts are read at its first test, and after every
    test that ran ``kvmhost.ksm.ksm`` outside check mode the ksm module puts those values back.
    A module call on an emulated guest takes seconds, so on such hosts only tests marked ``every_kernel`` run;
    the others are skipped with that reason printed.

``workload`` (localhost only)
    ``support.merge_workload.Workload(processes=4, mib=16)`` (identical pages marked MADV_MERGEABLE), KSM driven
    fast (pages_to_scan=5000, sleep_millisecs=10, run=1) until pages_shared > 0. Its processes are stopped
    afterwards; KSM stays running: the test decides what's next.
"""

import os
import time
import typing as t

import pytest
from ansible.constants import COLLECTIONS_PATHS
from ansible.plugins.loader import init_plugin_loader

if not os.environ.get("ANSIBLE_COLLECTIONS_PATH"):
    pytest.exit("ANSIBLE_COLLECTIONS_PATH is not set: run these tests with tests/real_hosts/run.", returncode=4)
# Ansible's collection loader first: conftest is imported before pytest-ansible installs it (pytest_configure), and
# the collection's module_utils imported below must come through it or Ansible cannot find the collection later.
init_plugin_loader(COLLECTIONS_PATHS)

from real_host import RealHost  # noqa: E402
from support import ksm_guard, merge_workload  # noqa: E402

MERGE_TIMEOUT = 60.0


_MANAGER = pytest.StashKey[t.Any]()


def _plugin(config: pytest.Config) -> t.Any:
    return config.pluginmanager.getplugin("ansible")


def _inventory(config: pytest.Config) -> t.Any:
    """pytest-ansible's host manager for the command line's inventory (one per session)."""
    manager = config.stash.get(_MANAGER, None)
    if manager is None:
        manager = _plugin(config).initialize(config=config)
        config.stash[_MANAGER] = manager
    return manager


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Every test taking ``host`` runs on each inventory host matching --ansible-host-pattern."""
    if "host" not in metafunc.fixturenames:
        return
    manager = _inventory(metafunc.config)
    pattern = metafunc.config.getoption("ansible_host_pattern")
    names = [h.name for h in manager.options["inventory_manager"].list_hosts(pattern)]
    if not names:
        raise pytest.UsageError(f"no host of the inventory matches --ansible-host-pattern {pattern!r}.")
    metafunc.parametrize("host", names, indirect=True, ids=names)


@pytest.fixture(scope="session")
def facts_cache() -> dict[str, dict[str, t.Any]]:
    return {}


def _is_local(config: pytest.Config, name: str) -> bool:
    manager = _inventory(config)
    inventory_host = manager.options["inventory_manager"].get_host(name)
    variables = manager.options["variable_manager"].get_vars(host=inventory_host, include_hostvars=False)
    return variables.get("ansible_connection") == "local"


def _skip(why: str) -> None:
    print(f"skipping: {why}")
    pytest.skip(why)


@pytest.fixture
def host(request: pytest.FixtureRequest, ansible_adhoc: t.Callable[..., t.Any],
         facts_cache: dict[str, dict[str, t.Any]]) -> t.Iterator[RealHost]:
    name: str = request.param
    local = _is_local(request.config, name)
    if not local and request.node.get_closest_marker("every_kernel") is None:
        _skip(f"{name} is remote (a module call takes seconds on an emulated guest); this test runs on "
              "localhost only (mark it every_kernel to run it on every host)")
    if local:
        ok, why = ksm_guard.writable()
        if not ok:
            _skip(f"real KSM not usable here: {why}")
        with ksm_guard.guarded():
            real = RealHost(name, ansible_adhoc, True, facts_cache)
            if real.sysfs.has("advisor_mode") and real.sysfs.read("advisor_mode") != "none":
                real.sysfs.write("advisor_mode", "none")
            yield real
        return
    remote = RealHost(name, ansible_adhoc, False, facts_cache)
    _facts = remote.facts  # the values to put back, read before the test changes anything
    yield remote
    if remote.dirty:
        result = remote.run("ksm", **remote.restore_args())
        assert not result["failed"], f"could not put back the KSM values of {name}: {result.get('msg')}"


def local_only(host: RealHost, why: str) -> None:
    """Skip (printing why) unless host is this machine."""
    if not host.local:
        _skip(f"{host.name} is not this machine: {why}")


@pytest.fixture
def workload(host: RealHost) -> t.Iterator[merge_workload.Workload]:
    local_only(host, "the merge workload runs in this machine's memory")
    sysfs = host.sysfs
    with merge_workload.Workload(processes=4, mib=16) as load:
        sysfs.write("pages_to_scan", 5000)
        sysfs.write("sleep_millisecs", 10)
        sysfs.write("run", "running")
        deadline = time.monotonic() + MERGE_TIMEOUT
        while not sysfs.read("pages_shared"):
            if time.monotonic() > deadline:
                pytest.fail(f"the merge workload did not merge within {MERGE_TIMEOUT} s")
            time.sleep(0.1)
        yield load
