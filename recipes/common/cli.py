"""Command-line helpers shared by the recipes."""

from __future__ import annotations

import dataclasses
from typing import Any


def option(default: Any, help: str, **metadata: Any) -> Any:
    """A dataclass field for ``HfArgumentParser``: its default and ``--help`` text (a literal ``%`` written ``%%``:
    argparse %-formats help strings)."""
    return dataclasses.field(default=default, metadata={"help": help, **metadata})
