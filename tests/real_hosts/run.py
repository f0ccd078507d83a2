# Copyright (c) kvmhost.ksm contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Run the module tests against real hosts (tests/real_hosts) with pytest-ansible.

    tests/real_hosts/run [--inventory FILE] [--venv DIR] [pytest args...]

Without --inventory the only host is localhost (local connection, modules run by the venv's Python). An inventory
may add other hosts (the VM lab writes one with its guests); every test runs on each host it matches
(--ansible-host-pattern, default all). pytest runs in the venv (default <repo>/.venv) with the collection
environment (support.collection.ansible_env) under the machine-wide KSM guard (support.ksm_guard: lock, save,
restore). Exit status: pytest's, except that "no tests collected" (5) is a failure (1).
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import typing as t

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # tests/: the support package

from support import collection  # noqa: E402

NO_TESTS = 5


def local_inventory(python: str) -> dict[str, t.Any]:
    """localhost only: local connection, modules run by python (never a discovered pyenv shim)."""
    return {"all": {"hosts": {"localhost": {"ansible_connection": "local", "ansible_python_interpreter": python}}}}


def names_a_test_path(args: t.Sequence[str]) -> bool:
    return any(os.path.exists(a.split("::")[0]) for a in args if not a.startswith("-"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     allow_abbrev=False)
    parser.add_argument("--inventory", help="Ansible inventory of the hosts to test (default: localhost only)")
    parser.add_argument("--venv", default=os.path.join(collection.REPO, ".venv"),
                        help="venv with pytest-ansible and ansible-core (default: %(default)s)")
    args, pytest_args = parser.parse_known_args(argv)
    python = os.path.join(os.path.abspath(args.venv), "bin", "python")
    if not os.access(python, os.X_OK):
        print(f"real_hosts: no venv at {args.venv}; build it with ./scripts/bootstrap or pass --venv DIR.",
              file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="kvmhost-real-hosts.") as tmp:
        inventory = args.inventory
        if inventory is None:
            inventory = os.path.join(tmp, "inventory.json")
            with open(inventory, "w") as f:
                json.dump(local_inventory(python), f, indent=1)
        if not any(a.startswith(("--ansible-host-pattern", "--host-pattern")) for a in pytest_args):
            pytest_args = ["--ansible-host-pattern", "all"] + pytest_args
        if not names_a_test_path(pytest_args):
            pytest_args = pytest_args + [HERE]
        command = [python, os.path.join(collection.REPO, "tests", "support", "ksm_guard.py"), "guard", "--",
                   python, "-m", "pytest", "-c", os.path.join(HERE, "pytest.ini"), "--rootdir", HERE,
                   "--ansible-inventory", os.path.abspath(inventory)] + pytest_args
        status = subprocess.call(command, env=collection.ansible_env(args.venv), cwd=collection.REPO)
    if status == NO_TESTS:
        print("real_hosts: FAILED: pytest collected no tests.", file=sys.stderr)
        return 1
    return status


if __name__ == "__main__":
    sys.exit(main())
