"""Seed statistics shared by the recipes: one home for the mean, std, Student-t interval and paired differences."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Described:
    """``n`` values: their mean, sample std (ddof 1) and the half-width of a Student-t interval for the mean.

    With no value everything is NaN; with one value ``std`` and ``half_width`` are NaN.
    """

    n: int
    mean: float
    std: float
    half_width: float

    @property
    def low(self) -> float:
        return self.mean - self.half_width

    @property
    def high(self) -> float:
        return self.mean + self.half_width


def describe(values: Iterable[float], level: float = 0.95) -> Described:
    """Mean, std and t-interval half-width at ``level`` of ``values`` (taken as given: filter them first)."""
    from scipy.stats import t

    x = np.asarray(list(values), dtype=np.float64)
    if x.size == 0:
        return Described(0, math.nan, math.nan, math.nan)
    mean = float(x.mean())
    if x.size < 2:
        return Described(1, mean, math.nan, math.nan)
    std = float(x.std(ddof=1))
    return Described(int(x.size), mean, std, float(t.ppf(0.5 + level / 2, x.size - 1)) * std / math.sqrt(x.size))


def t_interval(values: Iterable[float], level: float = 0.95) -> tuple[float, float, float, float]:
    """(mean, std, low, high) of a Student-t interval for the mean of the finite ``values`` (NaN bounds with fewer
    than 2 values)."""
    d = describe([v for v in values if math.isfinite(v)], level)
    return d.mean, d.std, d.low, d.high


def paired_difference(a: dict[Any, float], b: dict[Any, float], level: float = 0.95) -> dict[str, Any]:
    """``a - b`` on the keys (seeds) both have: the differences, their mean, std and t-interval."""
    seeds = sorted(set(a) & set(b))
    diffs = [a[s] - b[s] for s in seeds]
    mean, std, low, high = t_interval(diffs, level)
    return {"n": len(diffs), "seeds": seeds, "differences": diffs, "mean": mean, "std": std, "ci95": [low, high],
            "above_zero": bool(math.isfinite(low) and low > 0)}  # fmt: skip


def group_by(rows: Iterable[dict], keys: Sequence[str]) -> dict[tuple, list[dict]]:
    """Rows by their values of ``keys`` (missing keys count as None), groups in order of first appearance."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault(tuple(row.get(k) for k in keys), []).append(row)
    return groups


def summarise(rows: list[dict], keys: list[str], values: list[str]) -> list[dict]:
    """Per combination of ``keys``: ``num_seeds`` and the mean and std (0 for one seed) of each of ``values``."""
    out = []
    for group_key, members in group_by(rows, keys).items():
        entry = dict(zip(keys, group_key, strict=False))
        entry["num_seeds"] = len(members)
        for v in values:
            d = describe(m[v] for m in members if m.get(v) is not None)
            if d.n == 0:
                continue
            entry[f"{v}_mean"] = d.mean
            entry[f"{v}_std"] = d.std if d.n > 1 else 0.0
        out.append(entry)
    return out


def error_stats(values: np.ndarray, truth: float) -> dict[str, float]:
    """Bias, variance and mean squared error of estimates ``values`` of ``truth``."""
    return dict(bias=float(values.mean() - truth), variance=float(values.var()),
                mse=float(np.mean((values - truth) ** 2)))  # fmt: skip
