"""Result files shared by the recipes: JSON and CSV writers, the headless pyplot, earlier ``results.json`` files."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any


def pyplot():
    """``matplotlib.pyplot`` on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def write_json(path: Path, payload: Any, indent: int = 2, default: Any = None, newline: bool = False) -> None:
    text = json.dumps(payload, indent=indent, default=default)
    Path(path).write_text(text + ("\n" if newline else ""), encoding="utf-8")


def scalar_columns(rows: list[dict[str, Any]]) -> list[str]:
    """Keys of ``rows`` whose values are not lists or dicts, in order of first appearance."""
    return list(dict.fromkeys(k for r in rows for k, v in r.items() if not isinstance(v, (dict, list))))


def write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    """One line per row, the scalar columns only (``csv`` module: values as ``str`` writes them)."""
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=scalar_columns(rows), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def write_frame(rows: list[dict[str, Any]], path: Path, float_format: str | None = None) -> None:
    """One line per row through pandas (missing values empty), the scalar values of each row only."""
    import pandas as pd

    flat = [{k: v for k, v in r.items() if not isinstance(v, (list, dict))} for r in rows]
    pd.DataFrame(flat).to_csv(path, index=False, float_format=float_format)


def read_results(folder: Path, option: str, name: str = "results.json", missing: type = ValueError) -> dict:
    """The JSON results an earlier run wrote to ``folder``; ``missing`` is raised (naming ``option``) without it."""
    path = Path(folder) / name
    if not path.is_file():
        raise missing(f"{option}: no {name} in {folder}")
    return json.loads(path.read_text())
