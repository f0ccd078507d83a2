# Copyright (c) kvmhost.ksm contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Scratch venvs built from the project's lock files: <repo>/.venv-NAME from requirements/NAME.txt.

    python3 tests/support/venvs.py NAME      # build or reuse, print the venv's path

A venv is rebuilt when its lock file or the Python that builds it changes (the stamp file .kvmhost-stamp,
computed as scripts/bootstrap computes it). No package version is named anywhere else.
"""

from __future__ import annotations  # the system python3 of older hosts runs these too

import argparse
import hashlib
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
STAMP = ".kvmhost-stamp"


class VenvError(Exception):
    """A venv could not be built; the message says why and what to do."""


def stamp(lock: str, python: str) -> str:
    """sha256 of the lock file's sha256 and the builder's sys.version (the same value as scripts/bootstrap's)."""
    with open(lock, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    version = subprocess.run([python, "-c", "import sys; print(sys.version)"], capture_output=True, text=True,
                             check=True).stdout
    return hashlib.sha256(f"{digest}\n{version}".encode()).hexdigest()


def ensure_venv(name: str, python: str = sys.executable) -> str:
    """The path of <repo>/.venv-NAME, built first from requirements/NAME.txt when missing or out of date."""
    lock = os.path.join(REPO, "requirements", f"{name}.txt")
    venv = os.path.join(REPO, f".venv-{name}")
    if not os.path.isfile(lock):
        raise VenvError(f"no lock file requirements/{name}.txt for the venv .venv-{name}; add it (see requirements/).")
    wanted = stamp(lock, python)
    try:
        with open(os.path.join(venv, STAMP)) as f:
            if f.read().strip() == wanted and os.access(os.path.join(venv, "bin", "python"), os.X_OK):
                return venv
    except OSError:
        pass
    print(f"venvs: building .venv-{name} from requirements/{name}.txt ...", file=sys.stderr, flush=True)
    steps = ([python, "-m", "venv", "--clear", venv],
             [os.path.join(venv, "bin", "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check",
              "-r", lock])
    for step in steps:
        if subprocess.run(step, check=False).returncode:
            raise VenvError(f"could not build .venv-{name} from requirements/{name}.txt ({step[2]} failed, "
                            "output above); check that PyPI is reachable.")
    with open(os.path.join(venv, STAMP), "w") as f:
        f.write(wanted + "\n")
    return venv


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name", help="requirements/NAME.txt -> .venv-NAME")
    args = parser.parse_args(argv)
    try:
        print(ensure_venv(args.name))
    except VenvError as exc:
        print(f"venvs: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
