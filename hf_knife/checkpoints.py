"""Find the newest *complete* Trainer checkpoint, so that a run killed while writing one resumes from the last.

transformers 5 writes a checkpoint in place, in ``output_dir/checkpoint-<step>`` (no temporary folder, no rename),
in this order (``Trainer._save_checkpoint``): the model (``model.safetensors``, ``config.json``, our
``knife_config.json``, ``training_args.bin``), then ``optimizer.pt`` and ``scheduler.pt``, the grad scaler, the
RNG state (``rng_state.pth``, or ``rng_state_<rank>.pth`` per process), and ``trainer_state.json`` last.
``transformers.trainer_utils.get_last_checkpoint`` returns the highest-numbered ``checkpoint-*`` folder, complete
or not, so ``train(resume_from_checkpoint=True)`` after a kill mid-write crashes on the missing
``trainer_state.json`` (or, killed mid-``trainer_state.json``, on its truncated JSON).

:func:`last_complete_checkpoint` skips such folders. A checkpoint is *complete* when ``trainer_state.json`` (written
last) parses as JSON with a ``global_step``, and the model weights, the optimizer and scheduler states and an RNG
state are present (the last three only when ``require_training_state``, i.e. unless ``save_only_model``). A crash
of the machine itself (not of the process) can still leave unflushed files behind: files are not fsynced.
"""

from __future__ import annotations

import json
import os
import re
import warnings

__all__ = [
    "checkpoint_problems",
    "is_complete_checkpoint",
    "last_complete_checkpoint",
    "resolve_resume_checkpoint",
]

_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")  # as transformers.trainer_utils._re_checkpoint
TRAINER_STATE_NAME = "trainer_state.json"
# One of these (or a sharded/FSDP/DeepSpeed folder, see _has_weights) holds the weights.
WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
    "adapter_model.safetensors",
    "adapter_model.bin",
)
OPTIMIZER_FILES = ("optimizer.pt", "optimizer.bin")
SCHEDULER_NAME = "scheduler.pt"


def _subfolders(folder: str) -> list[str]:
    return [name for name in os.listdir(folder) if os.path.isdir(os.path.join(folder, name))]


def _has_weights(folder: str, names: set[str]) -> bool:
    if names.intersection(WEIGHT_FILES):
        return True
    # FSDP (pytorch_model_fsdp_0/), DeepSpeed (global_step<N>/) and PEFT adapters in subfolders
    return any(
        name.startswith(("pytorch_model_fsdp", "global_step"))
        or os.path.isfile(os.path.join(folder, name, "adapter_model.safetensors"))
        for name in _subfolders(folder)
    )


def _has_optimizer(folder: str, names: set[str]) -> bool:
    if names.intersection(OPTIMIZER_FILES) or any(n.endswith("-" + OPTIMIZER_FILES[0]) for n in names):
        return True  # optimizer.pt, optimizer.bin, or XLA's rank<i>-of-<n>-optimizer.pt
    return any(name.startswith(("optimizer", "global_step")) for name in _subfolders(folder))


def _valid_trainer_state(path: str) -> bool:
    try:
        with open(path, encoding="utf-8") as f:
            state = json.load(f)
    except (OSError, ValueError):  # missing, unreadable, or truncated JSON
        return False
    return isinstance(state, dict) and "global_step" in state


def checkpoint_problems(folder: str, require_training_state: bool = True) -> list[str]:
    """Why ``folder`` is not a complete checkpoint, e.g. ``["no trainer_state.json"]``; empty when complete.

    Args:
        folder: a ``checkpoint-<step>`` folder.
        require_training_state: also require the optimizer, scheduler and RNG states (False for checkpoints
            written with ``save_only_model=True``).
    """
    if not os.path.isdir(folder):
        return ["not a folder"]
    names = set(os.listdir(folder))
    problems = []
    if TRAINER_STATE_NAME not in names:
        problems.append(f"no {TRAINER_STATE_NAME}")
    elif not _valid_trainer_state(os.path.join(folder, TRAINER_STATE_NAME)):
        problems.append(f"{TRAINER_STATE_NAME} is not valid JSON (truncated?)")
    if not _has_weights(folder, names):
        problems.append("no model weights (model.safetensors or pytorch_model.bin)")
    if require_training_state:
        if not _has_optimizer(folder, names):
            problems.append(f"no {OPTIMIZER_FILES[0]}")
        if SCHEDULER_NAME not in names:
            problems.append(f"no {SCHEDULER_NAME}")
        if not any(n.startswith("rng_state") and n.endswith(".pth") for n in names):
            problems.append("no rng_state.pth")
    return problems


def is_complete_checkpoint(folder: str, require_training_state: bool = True) -> bool:
    """True when ``folder`` holds everything ``Trainer`` writes for a checkpoint (see the module docstring)."""
    return not checkpoint_problems(folder, require_training_state)


def last_complete_checkpoint(
    output_dir: str, require_training_state: bool = True
) -> tuple[str | None, dict[str, list[str]]]:
    """The newest complete ``checkpoint-<step>`` folder in ``output_dir`` and the newer incomplete ones skipped.

    Returns:
        ``(path or None, {skipped folder path: its problems})``; ``path`` is None when ``output_dir`` holds
        no complete checkpoint (or does not exist).
    """
    if not os.path.isdir(output_dir):
        return None, {}
    steps = sorted(
        ((int(m.group(1)), name) for name in _subfolders(output_dir) if (m := _CHECKPOINT.match(name))),
        reverse=True,
    )
    skipped: dict[str, list[str]] = {}
    for _, name in steps:
        path = os.path.join(output_dir, name)
        problems = checkpoint_problems(path, require_training_state)
        if not problems:
            return path, skipped
        skipped[path] = problems
    return None, skipped


def resolve_resume_checkpoint(
    resume_from_checkpoint: str | bool | None,
    output_dir: str,
    require_training_state: bool = True,
    stacklevel: int = 2,
) -> str | bool | None:
    """``Trainer.train``'s ``resume_from_checkpoint`` with ``True`` replaced by the newest complete checkpoint.

    Anything but ``True`` (a path, None, False) passes through unchanged. Newer incomplete folders are skipped with a
    warning that names them; no complete checkpoint raises ``ValueError`` (as ``Trainer`` does for none at all).
    """
    if resume_from_checkpoint is not True:
        return resume_from_checkpoint
    path, skipped = last_complete_checkpoint(output_dir, require_training_state)
    described = "; ".join(f"{folder} ({', '.join(problems)})" for folder, problems in skipped.items())
    if path is None:
        raise ValueError(
            f"No valid checkpoint found in output directory ({output_dir})"
            + (f"; incomplete: {described}" if skipped else "")
        )
    if skipped:
        warnings.warn(
            f"resuming from {path}, the newest complete checkpoint; skipping the incomplete {described}, "
            "left by a run stopped while writing it",
            stacklevel=stacklevel + 1,
        )
    return path
