# Copyright (c) kvmhost.ksm contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The host commands of the kvmhost.ksm.ksm role (templates/kvmhost-ksm-governor.j2, kvmhost-ksm-metrics.j2) run
from a library directory laid out as tasks/library.yml lays it out: the listed module_utils files side by side,
even with another ansible_collections package first on sys.path."""

import os
import shutil
import subprocess
import sys

import pytest
import yaml

ROLE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "roles", "ksm")
UTILS = os.path.join(ROLE, "..", "..", "plugins", "module_utils")


@pytest.mark.parametrize("command, listed_as", [("kvmhost-ksm-governor", "__ksm_governor_module_utils"),
                                                ("kvmhost-ksm-metrics", "__ksm_metrics_module_utils")])
def test_the_command_runs_from_the_flat_library(tmp_path, command, listed_as):
    jinja2 = pytest.importorskip("jinja2")
    with open(os.path.join(ROLE, "vars", "main.yml")) as f:
        files = yaml.safe_load(f)[listed_as]
    lib = tmp_path / "lib"
    lib.mkdir()
    for name in files:
        shutil.copy(os.path.join(UTILS, name), str(lib / name))
    decoy = tmp_path / "decoy" / "ansible_collections"  # a regular package elsewhere that has no kvmhost
    decoy.mkdir(parents=True)
    (decoy / "__init__.py").write_text("")
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(os.path.join(ROLE, "templates")),
                             keep_trailing_newline=True)
    env.filters["comment"] = lambda text: "# " + text
    script = tmp_path / command
    script.write_text(env.get_template(command + ".j2").render(
        __ksm_lib_python=sys.executable, ansible_managed="Ansible managed", __ksm_lib=str(lib)))
    result = subprocess.run([sys.executable, str(script), "--help"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            universal_newlines=True, env=dict(os.environ, PYTHONPATH=str(decoy.parent)),
                            cwd=str(tmp_path), check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: " + command), result.stdout
