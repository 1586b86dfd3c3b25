"""Paired-seed results of ``recipes/fine_tuning.py``: the summary (per method, paired differences to ``none``), the
printed and Markdown tables, the plot, the result files, ``--resume`` and ``--report_only``."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from .reporting import pyplot, read_results, write_frame, write_json
from .stats import paired_difference, t_interval


def summarize(rows: list[dict[str, Any]], methods: list[str], metric: str) -> dict[str, Any]:
    """Per method: n, mean, std and 95% t-interval of the test metric; paired differences to 'none' (and knife - vib)."""
    key = f"test_{metric}"
    by = {m: {r["seed"]: r[key] for r in rows if r["method"] == m} for m in methods}
    summary: dict[str, Any] = {"metric": metric, "methods": {}, "paired_difference_to_none": {}}
    for m in methods:
        mean, std, low, high = t_interval(list(by[m].values()))
        summary["methods"][m] = {"n": len(by[m]), "mean": mean, "std": std, "ci95": [low, high]}
    if "none" in by:
        for m in methods:
            if m != "none":
                summary["paired_difference_to_none"][m] = paired_difference(by[m], by["none"])
    if "knife" in by and "vib" in by:
        diff = paired_difference(by["knife"], by["vib"])
        summary["paired_difference_knife_minus_vib"] = {k: diff[k] for k in ("n", "mean", "std", "ci95")}
    return summary


def _fmt(x: float, scale: float) -> str:
    return "n/a" if not math.isfinite(x) else f"{x * scale:.2f}"


def _interval(d: dict[str, Any], scale: float) -> str:
    return f"[{_fmt(d['ci95'][0], scale)}, {_fmt(d['ci95'][1], scale)}]"


def format_table(summary: dict[str, Any]) -> str:
    """The printed summary: per method n, mean, std, and the paired difference to 'none' with its interval."""
    metric = summary["metric"]
    scale = 100.0  # accuracy / F1 in points; correlations x100
    lines = [
        f"test {metric} (x100), mean +- std over seeds; paired difference to 'none' with its 95% t-interval",
        f"{'method':<8} {'n':>3} {'mean':>8} {'std':>7} {'diff vs none':>13}  95% CI",
    ]
    for m, s in summary["methods"].items():
        d = summary["paired_difference_to_none"].get(m)
        diff = "" if d is None else f"{_fmt(d['mean'], scale):>13}  {_interval(d, scale)}"
        lines.append(f"{m:<8} {s['n']:>3} {_fmt(s['mean'], scale):>8} {_fmt(s['std'], scale):>7} {diff}")
    kv = summary.get("paired_difference_knife_minus_vib")
    if kv:
        lines.append(f"knife - vib: {_fmt(kv['mean'], scale)} {_interval(kv, scale)}")
    return "\n".join(lines)


def markdown_table(summary: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    """A Markdown version of the summary, with the per-seed test metric of every method."""
    metric, scale = summary["metric"], 100.0
    seeds = sorted({r["seed"] for r in rows})
    by = {(r["method"], r["seed"]): r[f"test_{metric}"] for r in rows}
    head = (
        "| method | "
        + " | ".join(f"seed {s}" for s in seeds)
        + " | mean | std | paired diff to none [95% CI] |"
    )
    lines = [head, "|" + "---|" * (len(seeds) + 4)]
    for m, st in summary["methods"].items():
        d = summary["paired_difference_to_none"].get(m)
        diff = "-" if d is None else f"{_fmt(d['mean'], scale)} {_interval(d, scale)}"
        cells = " | ".join(_fmt(by.get((m, s), math.nan), scale) for s in seeds)
        lines.append(f"| {m} | {cells} | {_fmt(st['mean'], scale)} | {_fmt(st['std'], scale)} | {diff} |")
    kv = summary.get("paired_difference_knife_minus_vib")
    if kv:
        lines.append(f"\nknife - vib (paired): {_fmt(kv['mean'], scale)} {_interval(kv, scale)}")
    return "\n".join(lines) + "\n"


def plot_results(
    rows: list[dict[str, Any]], summary: dict[str, Any], methods: list[str], path: Path, title: str
):
    """``results.png``: per-seed metric and mean +- std per method; paired differences to none with intervals."""
    plt = pyplot()
    metric = summary["metric"]
    key = f"test_{metric}"
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.2), dpi=90)
    ax = axes[0]
    seeds = sorted({r["seed"] for r in rows})
    for s in seeds:
        ys = [
            next((100 * r[key] for r in rows if r["method"] == m and r["seed"] == s), np.nan) for m in methods
        ]
        ax.plot(range(len(methods)), ys, "o-", color="0.75", lw=0.8, ms=3)
    for i, m in enumerate(methods):
        st = summary["methods"][m]
        ax.errorbar(i, 100 * st["mean"], yerr=100 * (st["std"] if math.isfinite(st["std"]) else 0), fmt="s",
                    color="C0", capsize=4)  # fmt: skip
    ax.set_xticks(range(len(methods)), methods)
    ax.set_ylabel(f"test {metric} (x100)")
    ax.set_title("per seed (grey) and mean +- std", fontsize=9)
    ax = axes[1]
    diffs = summary["paired_difference_to_none"]
    names = [m for m in methods if m in diffs]
    for i, m in enumerate(names):
        d = diffs[m]
        low, high = d["ci95"]
        err = [[100 * (d["mean"] - low)], [100 * (high - d["mean"])]] if math.isfinite(low) else None
        ax.errorbar(i, 100 * d["mean"], yerr=err, fmt="o", color="C1", capsize=4)
        ax.plot([i] * len(d["differences"]), [100 * v for v in d["differences"]], ".", color="0.6")
    ax.axhline(0, color="k", lw=0.8)
    ax.set_xticks(range(len(names)), names)
    ax.set_xlim(-0.5, max(len(names), 1) - 0.5)
    ax.set_ylabel("paired difference to none (points)")
    ax.set_title("mean and 95% t-interval", fontsize=9)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_title(setting: dict[str, Any], num_seeds: int) -> str:
    return f"{setting['dataset']}, {setting['num_train']} training examples, {num_seeds} paired seeds"


def write_results(
    output_dir: Path, payload: dict[str, Any], rows: list[dict[str, Any]], summary_rows: list[dict[str, Any]] | None = None
) -> None:
    """results.json (everything), results.csv (one row per run) and summary.md (``summary_rows``, default all)."""
    output_dir.mkdir(parents=True, exist_ok=True)
    write_json(output_dir / "results.json", payload, indent=2, default=float, newline=True)
    write_frame(rows, output_dir / "results.csv")
    summary_rows = rows if summary_rows is None else summary_rows
    if summary_rows:
        (output_dir / "summary.md").write_text(markdown_table(payload["summary"], summary_rows), encoding="utf-8")


#: Script arguments that may differ between a resumed run and the one it continues.
_RESUME_FREE = {"methods", "seeds", "beta", "vib_beta", "resume", "push_method", "plot", "report_only", "monitor",
                "monitor_every_n_steps"}  # fmt: skip


def previous_rows(output_dir: Path, setting: dict[str, Any]) -> dict[tuple[str, int], dict[str, Any]]:
    """Rows of ``<output_dir>/results.json`` by (method, seed) when its setting matches (``--resume``)."""
    path = output_dir / "results.json"
    if not path.is_file():
        return {}
    old = read_results(output_dir, "--resume")
    old_setting = old["setting"]
    keys = ("dataset", "dataset_config_name", "task", "metric", "num_labels", "model", "num_train",
            "num_train_per_class", "num_validation", "num_test", "training")  # fmt: skip
    differ = [k for k in keys if old_setting.get(k) != setting.get(k)]
    old_script, new_script = old_setting["script_arguments"], setting["script_arguments"]
    differ += [k for k in new_script if k not in _RESUME_FREE and old_script.get(k) != new_script[k]]
    if "knife_arguments" in old_setting and old_setting["knife_arguments"] != setting["knife_arguments"]:
        differ.append("knife_arguments")
    if differ:
        raise ValueError(f"--resume: {path} was made with a different setting ({', '.join(differ)})")
    return {(r["method"], r["seed"]): r for r in old["rows"]}


def report(output_dir: Path, plot: bool = True) -> dict[str, Any]:
    """Summary, table and plot from a (possibly interrupted) ``results.json``, on the seeds all methods finished."""
    payload = read_results(output_dir, "--report_only")
    setting, rows = payload["setting"], payload["rows"]
    methods = setting["methods"]
    done = {m: {r["seed"] for r in rows if r["method"] == m} for m in methods}
    complete = sorted(set.intersection(*done.values())) if done else []
    kept = [r for r in rows if r["seed"] in complete]
    summary = summarize(kept, methods, setting["metric"])
    # every row stays in results.json / .csv; the summary uses the complete seeds
    summary["complete_seeds"] = complete
    payload.update(summary=summary)
    write_results(output_dir, payload, rows, kept)
    if plot and kept:
        plot_results(kept, summary, methods, output_dir / "results.png", plot_title(setting, len(complete)))
    print(format_table(summary))
    return payload

