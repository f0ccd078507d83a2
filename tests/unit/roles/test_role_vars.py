# Copyright (c) kvmhost.ksm contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The kvmhost.ksm.ksm role's data: the modes table in vars/main.yml, the platform files, the exported fact.

Every mode of the argument spec has one row of __ksm_modes with the same keys and values the tasks understand;
auto's fallback (no systemd, or the governor switched off) is a row; only auto runs the governor, which owns
pages_to_scan; no two platform files are copies (an identical one is a symlink); the exported ksm_effective_mode is
set by the role, documented in its README and is not an input variable.
"""

import hashlib
import os
import re

import pytest
import yaml

ROLE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "roles", "ksm")
VARS = os.path.join(ROLE, "vars")
JINJA = re.compile(r"^\{\{.*\}\}$", re.S)

# What the tasks accept in each column (tasks/tunables.yml, tasks/services.yml); a Jinja expression is allowed
# where the row depends on a variable (disabled mode's ksm_unmerge_on_disable and ksm_mask_services).
COLUMNS = {
    "packages": (True, False),
    "tunables_first": (True, False),
    "state": (None, "running", "stopped", "unmerged"),
    "pages_to_scan": ("pinned", "optional", "owned"),
    "sleep_millisecs": ("pinned", "optional", "owned"),
    "advisor_mode": (None, "none", "scan-time"),
    "persist_drop": None,  # a list of knob names
    "units": None,  # a list of ksm / ksmtuned
    "units_state": ("started", "stopped"),
    "units_enabled": (True, False),
    "units_mask": ("unmask", "mask", "keep"),
    "verb": None,  # free text
    "governor": (True, False),
}


def load(*path):
    with open(os.path.join(ROLE, *path)) as f:
        return yaml.safe_load(f)


def modes():
    return load("vars", "main.yml")["__ksm_modes"]


def test_every_mode_has_one_row():
    choices = load("meta", "argument_specs.yml")["argument_specs"]["main"]["options"]["ksm_mode"]["choices"]
    assert sorted(modes()) == sorted(choices)
    fallback = load("vars", "main.yml")["__ksm_auto_fallback"]
    assert fallback in modes() and not modes()[fallback]["governor"]


def test_only_auto_runs_the_governor_which_owns_pages_to_scan():
    assert [mode for mode, row in modes().items() if row["governor"]] == ["auto"]
    row = modes()["auto"]
    assert row["pages_to_scan"] == "owned" and row["sleep_millisecs"] == "pinned", row
    assert row["state"] == "running" and row["advisor_mode"] == "none", row
    # the governor writes its start value at boot: a pages_to_scan line another mode persisted is dropped
    assert row["persist_drop"] == ["pages_to_scan"], row


def test_every_row_has_the_columns_the_tasks_read():
    for mode, row in modes().items():
        assert sorted(row) == sorted(COLUMNS), mode
        for column, allowed in COLUMNS.items():
            value = row[column]
            if allowed is not None and not (isinstance(value, str) and JINJA.match(value)):
                assert value in allowed, "{0}.{1} = {2!r}".format(mode, column, value)
        assert set(row["units"]) <= {"ksm", "ksmtuned"}, mode
        assert set(row["persist_drop"]) <= {"run", "pages_to_scan", "sleep_millisecs"}, mode


def test_modes_that_own_run_leave_the_daemons_knobs_to_nobody():
    for mode, row in modes().items():
        if row["state"] is None:  # the daemon owns run: it owns the scan rate too, and the persisted lines
            assert row["pages_to_scan"] == row["sleep_millisecs"] == "owned", mode
            assert row["persist_drop"] and row["packages"] and row["units_state"] == "started", mode
        else:
            assert row["persist_drop"] == (["pages_to_scan"] if row["governor"] else []), mode
            assert row["units_state"] == "stopped", mode


def test_identical_platform_files_are_symlinks():
    seen = {}
    for name in sorted(os.listdir(VARS)):
        path = os.path.join(VARS, name)
        if os.path.islink(path):
            target = os.readlink(path)
            assert "/" not in target, "{0} -> {1}: link to a file in vars/ by its name".format(name, target)
            assert os.path.isfile(os.path.join(VARS, target)), "{0} -> {1} is dangling".format(name, target)
            continue
        with open(path, "rb") as f:
            digest = hashlib.sha256(f.read()).hexdigest()
        assert digest not in seen, "{0} is a copy of {1}: make it a symlink".format(name, seen.get(digest))
        seen[digest] = name


def test_the_exported_fact_is_set_documented_and_not_an_input():
    name = "ksm_effective_mode"
    assert name not in load("defaults", "main.yml")
    assert name not in load("meta", "argument_specs.yml")["argument_specs"]["main"]["options"]
    exported = [t for t in load("tasks", "main.yml") if name in t.get("ansible.builtin.set_fact", {})]
    assert len(exported) == 1, "tasks/main.yml sets {0} once".format(name)
    with open(os.path.join(ROLE, "README.md")) as f:
        readme = f.read()
    section = readme.split("## Variables exported by the role", 1)
    assert len(section) == 2, "the README has no 'Variables exported by the role' section"
    assert "`{0}`".format(name) in section[1].split("\n## ", 1)[0]


def test_the_governor_service_passes_what_the_governor_parses():
    """__ksm_governor_argv (the unit's ExecStart) renders, with the role's defaults, to options _governor accepts:
    the variables' values, the module's host lock and the state file ksm_facts reads."""
    jinja2 = pytest.importorskip("jinja2")
    from ansible_collections.kvmhost.ksm.plugins.module_utils import _governor, _lock

    role_vars = load("vars", "main.yml")
    context = dict(load("defaults", "main.yml"), **role_vars)
    expression = JINJA.match(role_vars["__ksm_governor_argv"].strip())
    assert expression, "__ksm_governor_argv is one Jinja expression"
    argv = jinja2.Environment().compile_expression(expression.group(0)[2:-2])(**context)
    assert argv[0] == role_vars["__ksm_governor_command"]
    args = _governor.parse_args(argv[1:])
    assert (args.budget, args.settled_budget, args.interval) == (25, 5, 0.5)
    assert args.start_pages == role_vars["__ksm_static_profile"]["pages_to_scan"]
    assert args.lock_file == _lock.DEFAULT_PATH == role_vars["__ksm_governor_lock"]
    assert args.state_file == _governor.DEFAULT_STATE == role_vars["__ksm_governor_state_file"]
    assert role_vars["__ksm_governor_unit"] == _governor.NAME + ".service"
