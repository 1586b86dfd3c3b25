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


#: Script arguments that may differ between a resumed run and the one it continues (or between merged runs).
_RESUME_FREE = {"methods", "seeds", "beta", "vib_beta", "resume", "push_method", "plot", "report_only", "monitor",
                "monitor_every_n_steps", "merge_from"}  # fmt: skip


def _setting_differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """The names of what differs between two runs' settings, other than methods, seeds and weights."""
    keys = ("dataset", "dataset_config_name", "task", "metric", "num_labels", "model", "num_train",
            "num_train_per_class", "num_validation", "num_test", "training")  # fmt: skip
    differ = [k for k in keys if old.get(k) != new.get(k)]
    old_script, new_script = old["script_arguments"], new["script_arguments"]
    differ += [k for k in new_script if k not in _RESUME_FREE and old_script.get(k) != new_script[k]]
    if old.get("knife_arguments") != new.get("knife_arguments"):
        differ.append("knife_arguments")
    return differ


def select_betas(rows: list[dict[str, Any]], metric: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Per method, the weight (row key ``beta``) with the best mean validation metric over the seeds that every
    weight of that method finished (ties: the first weight run); returns the rows of the chosen weights and
    ``{method: {"chosen": beta, "validation_mean": {beta: mean}, "seeds": [...]}}``. The test metric is not read."""
    key = f"validation_{metric}"
    selection: dict[str, Any] = {}
    chosen_rows: list[dict[str, Any]] = []
    for method in dict.fromkeys(r["method"] for r in rows):
        mine = [r for r in rows if r["method"] == method]
        betas = list(dict.fromkeys(r["beta"] for r in mine))
        seeds_of = [{r["seed"] for r in mine if r["beta"] == b} for b in betas]
        common = sorted(set.intersection(*seeds_of))
        means = {b: float(np.mean([r[key] for r in mine if r["beta"] == b and r["seed"] in common])) if common
                 else math.nan for b in betas}  # fmt: skip
        best = max(betas, key=lambda b: (means[b] if math.isfinite(means[b]) else -math.inf))
        selection[method] = {"chosen": best, "validation_mean": means, "seeds": common}
        chosen_rows += [r for r in mine if r["beta"] == best]
    return chosen_rows, selection


def previous_rows(output_dir: Path, setting: dict[str, Any]) -> dict[tuple[str, int, float | None], dict[str, Any]]:
    """Rows of ``<output_dir>/results.json`` by (method, seed, beta) when its setting matches (``--resume``)."""
    path = output_dir / "results.json"
    if not path.is_file():
        return {}
    old = read_results(output_dir, "--resume")
    differ = _setting_differences(old["setting"], setting)
    if differ:
        raise ValueError(f"--resume: {path} was made with a different setting ({', '.join(differ)})")
    return {(r["method"], r["seed"], r.get("beta")): r for r in old["rows"]}


def report(output_dir: Path, plot: bool = True) -> dict[str, Any]:
    """Summary, table and plot from a (possibly interrupted) ``results.json``, on the seeds all methods finished."""
    payload = read_results(output_dir, "--report_only")
    setting, rows = payload["setting"], payload["rows"]
    methods = setting["methods"]
    done = {(r["method"], r.get("beta")): set() for r in rows}
    for r in rows:
        done[r["method"], r.get("beta")].add(r["seed"])
    missing = [m for m in methods if not any(k[0] == m for k in done)]
    complete = [] if missing or not done else sorted(set.intersection(*done.values()))
    kept, selection = select_betas([r for r in rows if r["seed"] in complete], setting["metric"])
    summary = summarize(kept, methods, setting["metric"])
    # every row stays in results.json / .csv; the summary uses the complete seeds (every method and weight)
    summary["complete_seeds"] = complete
    payload.update(summary=summary, beta_selection=selection)
    write_results(output_dir, payload, rows, kept)
    if plot and kept:
        plot_results(kept, summary, methods, output_dir / "results.png", plot_title(setting, len(complete)))
    print(format_table(summary))
    return payload


def merge(folders: list[Path], output_dir: Path, plot: bool = True) -> dict[str, Any]:
    """``--merge_from``: the rows of several runs of one setting (e.g. methods run in parallel processes) in one
    ``<output_dir>/results.json``, then the summary of :func:`report` (weights chosen on validation)."""
    if not folders:
        raise ValueError("--merge_from needs at least one output folder")
    payloads = [read_results(folder, "--merge_from") for folder in folders]
    setting = dict(payloads[0]["setting"])
    rows: list[dict[str, Any]] = []
    seen: set[tuple[Any, ...]] = set()
    for folder, payload in zip(folders, payloads):
        differ = _setting_differences(setting, payload["setting"])
        if differ:
            raise ValueError(f"--merge_from: {folder} was made with a different setting ({', '.join(differ)})")
        for row in payload["rows"]:
            key = (row["method"], row["seed"], row.get("beta"))
            if key in seen:
                raise ValueError(f"--merge_from: {folder} repeats the run {key} (method, seed, beta)")
            seen.add(key)
            rows.append(row)
    setting["methods"] = list(dict.fromkeys(m for p in payloads for m in p["setting"]["methods"]))
    setting["seeds"] = sorted({r["seed"] for r in rows})
    setting["merged_from"] = [str(folder) for folder in folders]
    output_dir.mkdir(parents=True, exist_ok=True)
    write_json(output_dir / "results.json", {"setting": setting, "rows": rows, "complete": True}, indent=2,
               default=float, newline=True)  # fmt: skip
    return report(output_dir, plot)
