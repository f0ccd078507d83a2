# Copyright (c) kvmhost.ksm contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The kvmhost.ksm.ksm role: defaults/main.yml, meta/argument_specs.yml and README.md agree.

Every variable has a default in defaults/main.yml (null where the role leaves a value alone), an entry in the
argument spec with the same default (no `default:` there means null), and a line in the README naming its default.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os
import re

import yaml

ROLE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "roles", "ksm")


def load(*path):
    with open(os.path.join(ROLE, *path)) as f:
        return yaml.safe_load(f)


def spec_options():
    specs = load("meta", "argument_specs.yml")["argument_specs"]
    assert specs["main"]["description"], "entry_points.main needs a description"
    return specs["main"]["options"]


def test_defaults_and_argument_specs_list_the_same_variables():
    defaults = set(load("defaults", "main.yml"))
    options = set(spec_options())
    assert defaults - options == set(), "in defaults/main.yml but not in meta/argument_specs.yml"
    assert options - defaults == set(), "in meta/argument_specs.yml but not in defaults/main.yml"


def test_defaults_and_argument_specs_agree_on_each_default():
    defaults = load("defaults", "main.yml")
    for name, option in spec_options().items():
        assert option.get("default") == defaults[name], name
        assert option.get("description"), name + " has no description"
        assert option.get("type"), name + " has no type"
        if "choices" in option and defaults[name] is not None:
            assert defaults[name] in option["choices"], name


def test_every_variable_is_namespaced():
    for name in load("defaults", "main.yml"):
        assert name.startswith("ksm_"), name


def test_readme_documents_every_variable_with_its_default():
    with open(os.path.join(ROLE, "README.md")) as f:
        readme = f.read()
    rows = dict(re.findall(r"^\| `(ksm_\w+)` \| `([^`]*)` \|", readme, re.M))
    for name, value in load("defaults", "main.yml").items():
        assert name in rows, name + " is not in the README's variable table"
        shown = "null" if value is None else (str(value).lower() if isinstance(value, bool) else str(value))
        assert rows[name] == shown, "README shows {0} for {1}, defaults/main.yml {2}".format(rows[name], name, shown)
