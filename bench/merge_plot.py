# Copyright (c) kvmhost.ksm contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Plot bench/merge results.

A single run: saved MiB against seconds, one line per configuration. --shapes: ksmd's share of one core over time
for auto on each workload (and its saving). --scale: t90 against the size (log-log), the share to t90 against the
unique share (from the --shapes results, when given), and ksmd's share over time for auto at each size.

    .venv-bench/bin/python bench/merge_plot.py build/bench/merge/results.json build/bench/merge/results.png
    .venv-bench/bin/python bench/merge_plot.py scale/results.json scale/results.png [shapes/results.json]

Runs in the bench venv (requirements/bench.txt: matplotlib); bench/merge calls it after a run.
"""

import json
import sys
import typing as t

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)


def title(info: dict[str, t.Any]) -> str:
    return f"kernel {info['kernel']}, {info['cores']} cores, {info['ram_gib']} GiB"


def share_over_time(ax: t.Any, rows: list[dict[str, t.Any]], label: t.Callable[[dict[str, t.Any]], str],
                    budget: float) -> None:
    for r in rows:
        series = r.get("share_series") or []
        ax.plot([p[0] for p in series], [p[1] for p in series], label=label(r), linewidth=1.4)
    ax.axhline(budget, color="red", linestyle="--", linewidth=0.8)
    ax.axhline(budget * 1.1, color="red", linestyle=":", linewidth=0.8)
    ax.text(0.01, budget * 1.1, f"budget {budget:g} % + 10 %", va="bottom", color="red",
            transform=ax.get_yaxis_transform())
    ax.set_xlabel("seconds since the configuration was applied")
    ax.set_ylabel("ksmd share of one core, % (0.5 s windows)")
    ax.set_ylim(bottom=0)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper right", fontsize=7)


def shapes(data: dict[str, t.Any], target: str) -> None:
    args, results = data["args"], data["results"]
    auto = [r for r in results if r["name"] == args["auto_config"]]
    fig, axes = plt.subplots(1, 2, figsize=(15, 6), dpi=100)
    fig.suptitle(f"KSM merge, workload shapes: auto = {args['auto_config']}; {title(data['machine'])}")
    share_over_time(axes[0], auto, lambda r: f"{r['workload']}: t90 {r['t90']} s, share {r['share']} %",
                    args["budget"])
    axes[0].set_title("ksmd share over time, auto")
    for r in auto:
        axes[1].plot([p[0] for p in r["series"]], [100 * p[1] / r["saveable_mib"] for p in r["series"]],
                     label=r["workload"], linewidth=1.4)
    axes[1].axhline(90, color="grey", linestyle="--", linewidth=0.8)
    axes[1].set_xlabel("seconds since the configuration was applied")
    axes[1].set_ylabel("saved, % of the saveable memory")
    axes[1].grid(True, alpha=0.3)
    axes[1].legend(loc="lower right", fontsize=7)
    axes[1].set_title("saving over time, auto")
    fig.tight_layout()
    fig.savefig(target)


def scale(data: dict[str, t.Any], target: str, shapes_data: dict[str, t.Any] | None) -> None:
    args, results = data["args"], data["results"]
    fig, axes = plt.subplots(1, 3, figsize=(20, 6), dpi=100)
    fig.suptitle(f"KSM merge, scaling: 4 processes, shape start, {args['unique']} % unique; "
                 f"{title(data['machine'])}")
    names = list(dict.fromkeys(r["name"] for r in results))
    for name in names:
        rows = [r for r in results if r["name"] == name and r.get("t90") is not None]
        axes[0].plot([r["spec"]["mib"] / 1024 for r in rows], [r["t90"] for r in rows], marker="o", label=name)
    axes[0].set_xscale("log")
    axes[0].set_yscale("log")
    axes[0].set_xlabel("workload size, GiB (all processes)")
    axes[0].set_ylabel("t90, s (sizes that reached 90 %)")
    axes[0].grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=8)
    axes[0].set_title("t90 against size")
    if shapes_data:
        rows = [r for r in shapes_data["results"]
                if r["spec"]["shape"] == "start" and r["spec"]["processes"] == 4 and r.get("share") is not None]
        for name in dict.fromkeys(r["name"] for r in rows):
            mine = sorted((r["spec"]["unique"], r["share"]) for r in rows if r["name"] == name)
            axes[1].plot([m[0] for m in mine], [m[1] for m in mine], marker="o", label=name)
        axes[1].axhline(shapes_data["args"]["budget"] * 1.1, color="red", linestyle=":", linewidth=0.8)
        axes[1].legend(fontsize=8)
    else:
        axes[1].text(0.5, 0.5, "no --shapes results", ha="center", transform=axes[1].transAxes)
    axes[1].set_xlabel("unique share, % (--shapes, shape start, 4 processes)")
    axes[1].set_ylabel("ksmd share to t90, %")
    axes[1].set_ylim(bottom=0)
    axes[1].grid(True, alpha=0.3)
    axes[1].set_title("share against unique share")
    auto = [r for r in results if r["name"] == args["auto_config"]]
    share_over_time(axes[2], auto, lambda r: f"{r['spec']['mib']} MiB: t90 {r['t90']} s", args["budget"])
    axes[2].set_title(f"ksmd share over time, {args['auto_config']}")
    fig.tight_layout()
    fig.savefig(target)


def main(source: str, target: str, extra: str | None = None) -> int:
    with open(source) as f:
        data = json.load(f)
    if data.get("mode") == "shapes":
        shapes(data, target)
        print(f"plot: {target}")
        return 0
    if data.get("mode") == "scale":
        shapes_data = None
        if extra:
            with open(extra) as f:
                shapes_data = json.load(f)
        scale(data, target, shapes_data)
        print(f"plot: {target}")
        return 0
    info, results = data["machine"], data["results"]
    goal = data.get("target") or {}
    fast = [r["t90"] for r in results if r.get("t90") is not None and r["t90"] < 30]
    zoom = max(fast + [goal.get("t90_limit") or 0]) * 1.6 if fast else None
    fig, axes = plt.subplots(1, 2 if zoom else 1, figsize=(14 if zoom else 10, 6), dpi=100, squeeze=False)
    args = data["args"]
    content = f", shape {args.get('shape', 'start')}, {args.get('unique') or 0} % unique"
    shape = (f"{args['guests']} identical VM lab guests" if args.get("guests")
             else f"{args['processes']} x {args['mib'] // args['processes']} MiB identical pages{content}")
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
    sys.exit(main(*sys.argv[1:4]))
