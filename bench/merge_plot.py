# Copyright (c) kvmhost.ksm contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Plot bench/merge results: saved MiB against seconds, one line per configuration.

    .venv-bench/bin/python bench/merge_plot.py build/bench/merge/results.json build/bench/merge/results.png

Runs in the bench venv (requirements/bench.txt: matplotlib); bench/merge calls it after a run.
"""

import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)


def main(source: str, target: str) -> int:
    with open(source) as f:
        data = json.load(f)
    info, results = data["machine"], data["results"]
    goal = data.get("target") or {}
    fast = [r["t90"] for r in results if r.get("t90") is not None and r["t90"] < 30]
    zoom = max(fast + [goal.get("t90_limit") or 0]) * 1.6 if fast else None
    fig, axes = plt.subplots(1, 2 if zoom else 1, figsize=(14 if zoom else 10, 6), dpi=100, squeeze=False)
    args = data["args"]
    shape = (f"{args['guests']} identical VM lab guests" if args.get("guests")
             else f"{args['processes']} x {args['mib'] // args['processes']} MiB identical pages")
    fig.suptitle(f"KSM merge: {shape}; kernel {info['kernel']}, {info['cores']} cores, {info['ram_gib']} GiB")
    for index, ax in enumerate(axes[0]):
        for r in results:
            xs = [p[0] for p in r["series"]]
            ys = [p[1] for p in r["series"]]
            t90 = "not reached" if r.get("t90") is None else f"{r['t90']} s"
            share = "-" if r.get("share") is None else f"{r['share']} %"
            ax.plot(xs, ys, label=f"{r['name']}: t90 {t90}, ksmd {share}", linewidth=1.6)
        if results:
            saveable = results[0]["saveable_mib"]
            ax.axhline(saveable, color="grey", linestyle=":", linewidth=1)
            ax.axhline(saveable * 0.9, color="grey", linestyle="--", linewidth=0.8)
            ax.text(0, saveable * 0.9, " 90 %", va="top", color="grey")
        if goal.get("t90_limit"):
            ax.axvline(goal["t90_limit"], color="red", linestyle="--", linewidth=0.8)
            ax.text(goal["t90_limit"], 0, f" target t90 {goal['t90_limit']} s", color="red", rotation=90,
                    va="bottom")
        ax.set_xlabel("seconds since the configuration was applied")
        ax.set_ylabel("saved MiB ((pages_sharing + ksm_zero_pages) x page size)")
        ax.set_xlim(0, zoom if index == 1 else None)
        ax.set_ylim(bottom=0)
        ax.grid(True, alpha=0.3)
        ax.set_title(f"first {zoom:.0f} s" if index == 1 else "whole run")
    axes[0][-1].legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(target)
    print(f"plot: {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
