# Copyright (c) kvmhost.ksm contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Draw line panels from a JSON spec: the plots of bench/fleet and bench/facts_cost (bench/merge has its own).

    .venv-bench/bin/python bench/lines_plot.py SPEC.json OUT.png

SPEC: {"title": str, "panels": [{"title", "xlabel", "ylabel", "logx": bool, "logy": bool,
       "series": [{"label", "x": [...], "y": [...]}], "hlines": [{"y", "label"}]}]}.
Runs in the bench venv (requirements/bench.txt: matplotlib); support.plots.draw calls it.
"""

import json
import sys
import typing as t

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)


def panel(ax: t.Any, spec: dict[str, t.Any]) -> None:
    for series in spec.get("series", []):
        ax.plot(series["x"], series["y"], marker="o", linewidth=1.4, label=series["label"])
    for line in spec.get("hlines", []):
        ax.axhline(line["y"], color="red", linestyle="--", linewidth=0.8)
        ax.text(0.01, line["y"], line["label"], va="bottom", color="red", transform=ax.get_yaxis_transform())
    if spec.get("logx"):
        ax.set_xscale("symlog", linthresh=1)
        ax.set_xlim(left=0, right=max(x for series in spec.get("series", []) for x in series["x"]) * 1.5)
    if spec.get("logy"):
        ax.set_yscale("log")
    ax.set_title(spec.get("title", ""))
    ax.set_xlabel(spec.get("xlabel", ""))
    ax.set_ylabel(spec.get("ylabel", ""))
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)


def main() -> int:
    with open(sys.argv[1]) as f:
        spec = json.load(f)
    panels = spec["panels"]
    fig, axes = plt.subplots(1, len(panels), figsize=(7 * len(panels), 5), dpi=100, squeeze=False)
    for ax, one in zip(axes[0], panels, strict=True):
        panel(ax, one)
    fig.suptitle(spec.get("title", ""))
    fig.tight_layout()
    fig.savefig(sys.argv[2])
    print(f"plot: {sys.argv[2]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
