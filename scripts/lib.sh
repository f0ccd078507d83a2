# shellcheck shell=bash disable=SC2034
# (sourced: the scripts that source it use the variables)
# Shared by scripts/bootstrap and scripts/run (sourced, not executed).
# Paths are computed from this file's location; nothing here depends on what an earlier run left in $HOME.

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYENV_DIR="${PYENV_ROOT:-$HOME/.pyenv}"
PYBIN="$REPO/.cache/pybin"            # real pythonX.Y symlinks, first on PATH for ansible-test
ANSIBLE_TEST_CACHE="$HOME/.ansible/test/cache"

# Virtual environments: name, Python minor version, requirements lock (relative to requirements/).
# The main venv (.venv) carries the tools and nox; .venv-2.16/.venv-2.21 are extra ansible-test controllers;
# .venv-importer holds galaxy-importer and ansible-builder, which pin their own ansible-core and ansible-lint.
VENVS=(".venv:3.11:main.txt" ".venv-2.16:3.12:core-2.16.txt" ".venv-2.21:3.13:core-2.21.txt"
    ".venv-importer:3.11:importer.txt")

# pip versions whose get-pip bootstrap script ansible-test 2.16 .. 2.21 asks for (toolchain guide, section 1);
# bootstrap also adds whatever the installed ansible-test versions name.
GET_PIP_VERSIONS=(20.3.4 21.3.1 23.1.2 24.2 25.2)

# Python minor versions that may serve as module targets (compile/import, units) when present.
TARGET_PYTHONS=(3.6 3.7 3.8 3.9 3.10 3.11 3.12 3.13 3.14)

say() { printf '%s\n' "$*"; }
warn() { printf '%s\n' "$*" >&2; }
die() { warn "ERROR: $*"; exit 1; }

# find_python X.Y: print the path of a real (non-shim) Python X.Y interpreter, or nothing.
# Order: the newest pyenv build X.Y.Z under $PYENV_ROOT/versions, then /usr/bin and /usr/local/bin.
find_python() {
    local minor="$1" best="" dir
    if [ -d "$PYENV_DIR/versions" ]; then
        best="$(cd "$PYENV_DIR/versions" && for dir in "$minor".*; do
                    case "$dir" in *[!0-9.]*) continue ;; esac
                    [ "${dir%.*}" = "$minor" ] && [ -x "$dir/bin/python$minor" ] && printf '%s\n' "$dir"
                done | sort -t. -k3,3n | tail -n1)"
        if [ -n "$best" ]; then
            printf '%s\n' "$PYENV_DIR/versions/$best/bin/python$minor"
            return 0
        fi
    fi
    for dir in /usr/bin /usr/local/bin; do
        if [ -x "$dir/python$minor" ] && "$dir/python$minor" -c 'import sys' >/dev/null 2>&1; then
            printf '%s\n' "$dir/python$minor"
            return 0
        fi
    done
    return 1
}

# PATH without pyenv shims: ansible-test cleans the environment, and a shim for another version then exits 127.
clean_path() {
    local out="" part
    local IFS=:
    for part in $PATH; do
        case "$part" in */shims | */shims/ | "") continue ;; esac
        out="${out:+$out:}$part"
    done
    printf '%s\n' "$out"
}

# use_venv DIR: put DIR/bin and the pythonX.Y links first on PATH (venv's own pythonX.Y wins).
use_venv() {
    export VIRTUAL_ENV="$1"
    PATH="$1/bin:$PYBIN:$(clean_path)"
    export PATH
    unset PYTHONHOME
}

# collections_link DIR: make DIR/ansible_collections/kvmhost/ksm a symlink to the work tree; print DIR.
collections_link() {
    mkdir -p "$1/ansible_collections/kvmhost"
    ln -sfn "$REPO" "$1/ansible_collections/kvmhost/ksm"
    printf '%s\n' "$1"
}

venv_stamp() {  # venv_stamp LOCKFILE PYTHON
    { sha256sum "$REPO/requirements/$1" | cut -d' ' -f1; "$2" -c 'import sys; print(sys.version)'; } | sha256sum | cut -d' ' -f1
}
