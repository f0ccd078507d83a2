# Copyright (c) kvmhost.ksm contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Find the command-line tools the tests and benchmarks run (ansible, ansible-playbook, molecule, ...).

    python3 tests/support/tools.py NAME [--venv DIR]    # prints the path, or says why not and exits 1
"""

from __future__ import annotations  # the system python3 of older hosts runs these too

import argparse
import os
import shutil
import sys


def find_tool(name: str, venv: str | None = None) -> str | None:
    """The path of the executable name: in venv/bin when a venv is given (nowhere else), otherwise beside
    this Python (its venv), then on PATH. None when there is none."""
    if venv:
        path = os.path.join(os.path.abspath(venv), "bin", name)
        return path if os.access(path, os.X_OK) else None
    beside = os.path.join(os.path.dirname(sys.executable), name)
    if os.access(beside, os.X_OK):
        return beside
    return shutil.which(name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name")
    parser.add_argument("--venv", help="look only in this venv's bin/")
    args = parser.parse_args(argv)
    path = find_tool(args.name, args.venv)
    if path is None:
        where = f"{args.venv}/bin" if args.venv else f"{os.path.dirname(sys.executable)} or on PATH"
        print(f"tools: no {args.name} in {where}; build the venv first (./scripts/bootstrap --main).", file=sys.stderr)
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
