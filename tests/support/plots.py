# Copyright (c) kvmhost.ksm contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Run a benchmark's plot script in the bench venv (.venv-bench, matplotlib; built from PyPI on first use).

Without the venv (no PyPI) the benchmark still has its table and JSON: ``draw`` says the plot was skipped.
"""

import json
import os
import subprocess
import typing as t

from support import venvs

BENCH = os.path.join(venvs.REPO, "bench")


def draw(script: str, *args: str) -> bool:
    """Run bench/<script> ARGS with the bench venv's Python; False (and a sentence) when there is no venv."""
    try:
        venv = venvs.ensure_venv("bench")
    except venvs.VenvError as exc:
        print(f"no plot: {exc}")
        return False
    return subprocess.run([os.path.join(venv, "bin", "python"), os.path.join(BENCH, script), *args],
                          check=False).returncode == 0


def lines(spec: dict[str, t.Any], out_png: str) -> bool:
    """Draw bench/lines_plot.py's panels of spec into out_png (the spec is kept next to it as JSON)."""
    spec_path = os.path.splitext(out_png)[0] + "-plot.json"
    with open(spec_path, "w") as f:
        json.dump(spec, f, indent=1)
    return draw("lines_plot.py", spec_path, out_png)
