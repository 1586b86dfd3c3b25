"""Command-line helpers shared by the recipes."""

from __future__ import annotations

import dataclasses
import math
import os
import sys
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


def end_distributed_run() -> None:
    """Under torchrun, leave once every rank has finished, skipping the interpreter's teardown of the live gloo
    group: that teardown sometimes aborts a rank after all the work is written ("terminate called without an active
    exception", about 1 run in 20 on CPU, with or without ``destroy_process_group``), so torchrun reports a failure.
    Nothing happens in a single process. Call it last in ``if __name__ == "__main__":``."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
