# Copyright (c) kvmhost.ksm contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Install the Debian/Ubuntu packages a test host needs, only the missing ones, with apt-get.

    python3 tests/support/host_packages.py PKG...    # quiet when everything is installed

Exit status: 0 installed (or nothing to do), 1 apt-get failed, 77 packages are missing and cannot be installed
here (no apt-get, not root). Runs with the system python3 before any venv exists: standard library only.
apt-get update runs at most once per process: first when the host has no package lists, else only when an
install fails (stale lists).
"""

from __future__ import annotations  # the system python3 of older hosts runs these too

import glob
import os
import shutil
import subprocess
import sys
import typing as t


class CannotInstall(Exception):
    """Packages are missing and this host cannot install them (no apt-get, not root)."""


class InstallFailed(Exception):
    """apt-get ran and failed."""


_updated = False


def missing(packages: t.Sequence[str]) -> list[str]:
    """The packages dpkg does not list as installed, sorted, without duplicates."""
    if not shutil.which("dpkg-query"):
        return sorted(set(packages))
    out = []
    for pkg in sorted(set(packages)):
        status = subprocess.run(["dpkg-query", "-W", "-f=${Status}", pkg], capture_output=True, text=True,
                                check=False).stdout
        if status.strip() != "install ok installed":
            out.append(pkg)
    return out


def _apt(args: list[str]) -> bool:
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    return subprocess.run(["apt-get", "-q"] + args, env=env, stdout=sys.stderr, check=False).returncode == 0


def _update() -> bool:
    global _updated  # pylint: disable=global-statement  # once per process
    if _updated:
        return False
    _updated = True
    print("host_packages: apt-get update", file=sys.stderr, flush=True)
    return _apt(["update"])


def install(packages: t.Sequence[str]) -> None:
    """Install the packages that are not installed yet; raise CannotInstall or InstallFailed with one sentence."""
    todo = missing(packages)
    if not todo:
        return
    names = " ".join(todo)
    if not shutil.which("apt-get") or not shutil.which("dpkg-query"):
        raise CannotInstall(f"missing host packages {names} and no apt-get/dpkg here; install them with this "
                            "host's package manager (the test hosts need a Debian or Ubuntu host).")
    if os.geteuid() != 0:
        raise CannotInstall(f"missing host packages {names}; install them as root (apt-get install {names}).")
    if not glob.glob("/var/lib/apt/lists/*_Packages*"):
        _update()
    print(f"host_packages: apt-get install {names}", file=sys.stderr, flush=True)
    command = ["install", "-y", "--no-install-recommends"] + todo
    if not _apt(command) and not (_update() and _apt(command)):
        raise InstallFailed(f"apt-get could not install {names} (its output is above); check the host's apt "
                            "sources and try again.")


def main(argv: list[str] | None = None) -> int:
    packages = sys.argv[1:] if argv is None else argv
    if not packages or packages[0] in ("-h", "--help"):
        print(__doc__.strip())
        return 0 if packages else 2
    try:
        install(packages)
    except CannotInstall as exc:
        print(f"host_packages: {exc}", file=sys.stderr)
        return 77
    except InstallFailed as exc:
        print(f"host_packages: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
