# Copyright (c) kvmhost.ksm contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The collection environment: this work tree as the collection kvmhost.ksm, for Ansible and for plain Python.

    python3 tests/support/collection.py shell [--venv DIR]    # `export NAME=value` lines for bash to eval

From Python: ``ansible_env(venv)`` for subprocess environments, ``import_collection()`` before importing
``ansible_collections.kvmhost.ksm.plugins.module_utils.<name>``. The link lives in ``<repo>/.cache/collections``
(ignored by git): ``ansible_collections/kvmhost/ksm`` -> the work tree.
"""

from __future__ import annotations  # the system python3 of older hosts runs these too

import argparse
import os
import shlex
import sys
import typing as t

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Settings every Ansible run of the project's scripts and tests shares.
SETTINGS = {
    "ANSIBLE_NOCOLOR": "1",
    "ANSIBLE_LOCALHOST_WARNING": "false",
    "ANSIBLE_INVENTORY_UNPARSED_WARNING": "false",
}


def collections_dir() -> str:
    """A directory whose ansible_collections/kvmhost/ksm is a symlink to REPO (made or repaired on demand)."""
    top = os.path.join(REPO, ".cache", "collections")
    link = os.path.join(top, "ansible_collections", "kvmhost", "ksm")
    if os.path.islink(link) and os.readlink(link) == REPO:
        return top
    os.makedirs(os.path.dirname(link), exist_ok=True)
    tmp = f"{link}.{os.getpid()}.tmp"
    os.symlink(REPO, tmp)
    os.replace(tmp, link)  # atomic: a concurrent caller sees the old link or the new one, never none
    return top


def import_collection() -> None:
    """Make ansible_collections.kvmhost.ksm (this work tree) importable from plain Python."""
    top = collections_dir()
    if top not in sys.path:
        sys.path.insert(0, top)


def ansible_env(venv: str | None = None, base: t.Mapping[str, str] | None = None) -> dict[str, str]:
    """A copy of base (default os.environ) set up to run Ansible with this work tree as kvmhost.ksm.

    A non-empty ANSIBLE_COLLECTIONS_PATH in base is kept (the caller's choice, e.g. an installed build);
    the interpreter is the venv's python, else base's ANSIBLE_PYTHON_INTERPRETER, else this Python.
    With venv, its bin comes first on PATH and VIRTUAL_ENV names it."""
    env = dict(os.environ if base is None else base)
    env["ANSIBLE_COLLECTIONS_PATH"] = env.get("ANSIBLE_COLLECTIONS_PATH") or collections_dir()
    if venv:
        venv = os.path.abspath(venv)
        env["ANSIBLE_PYTHON_INTERPRETER"] = os.path.join(venv, "bin", "python")
        env["PATH"] = os.pathsep.join([os.path.join(venv, "bin")] + [p for p in env.get("PATH", "").split(os.pathsep)
                                                                     if p and p != os.path.join(venv, "bin")])
        env["VIRTUAL_ENV"] = venv
        env.pop("PYTHONHOME", None)
    else:
        env["ANSIBLE_PYTHON_INTERPRETER"] = env.get("ANSIBLE_PYTHON_INTERPRETER") or sys.executable
    for name, value in SETTINGS.items():
        env.setdefault(name, value)
    return env


def shell(venv: str | None = None) -> str:
    """The lines that turn this shell's environment into ansible_env(venv)."""
    env = ansible_env(venv)
    lines = [f"export {name}={shlex.quote(value)}" for name, value in sorted(env.items())
             if os.environ.get(name) != value]
    lines += [f"unset {name}" for name in sorted(set(os.environ) - set(env))]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    cmd = sub.add_parser("shell", help="print export lines for bash to eval")
    cmd.add_argument("--venv", help="the venv whose python and bin/ Ansible uses")
    sub.add_parser("path", help="print the collections directory")
    args = parser.parse_args(argv)
    if args.cmd == "path":
        print(collections_dir())
    else:
        print(shell(args.venv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
