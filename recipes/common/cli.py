"""Command-line helpers shared by the recipes."""

from __future__ import annotations

import dataclasses
import math
from typing import Any


def option(default: Any, help: str, **metadata: Any) -> Any:
    """A dataclass field for ``HfArgumentParser``: its default and ``--help`` text (a literal ``%`` written ``%%``:
    argparse %-formats help strings)."""
    return dataclasses.field(default=default, metadata={"help": help, **metadata})


def parse_weights(value: str, name: str) -> list[float]:
    """Comma-separated penalty weights, each finite and >= 0; a clear error naming ``--name`` otherwise."""
    try:
        weights = [float(w) for w in str(value).split(",") if w.strip()]
    except ValueError:
        raise ValueError(f"--{name} must be a number or comma-separated numbers, got {value!r}") from None
    if any(not math.isfinite(w) or w < 0 for w in weights):
        raise ValueError(f"--{name} must be finite numbers >= 0, got {value!r}")
    return weights
