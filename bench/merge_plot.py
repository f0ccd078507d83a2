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
    fig, ax = plt.subplots(figsize=(10, 6), dpi=100)
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
        ax.text(0, saveable * 0.9, " 90 %", va="bottom", color="grey")
    target = data.get("target") or {}
    if target.get("t90_limit"):
        ax.axvline(target["t90_limit"], color="red", linestyle="--", linewidth=0.8)
        ax.text(target["t90_limit"], 0, f" target t90 {target['t90_limit']} s", color="red", rotation=90,
                va="bottom")
    args = data["args"]
    ax.set_title(f"KSM merge: {args['processes']} x {args['mib'] // args['processes']} MiB identical pages; "
                 f"kernel {info['kernel']}, {info['cores']} cores, {info['ram_gib']} GiB")
    ax.set_xlabel("seconds since the configuration was applied")
    ax.set_ylabel("saved MiB ((pages_sharing + ksm_zero_pages) x page size)")
    ax.set_xlim(left=0)
    ax.set_ylim(bottom=0)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(target)
    print(f"plot: {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
