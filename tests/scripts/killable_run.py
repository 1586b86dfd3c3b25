"""KNIFETrainer runs with checkpoints that SIGKILL themselves at a chosen point; launched by tests/test_killed_run.py.

Usage: killable_run.py RUN [RUN ...]        RUN = OUTPUT_DIR,MODE[,STEP]

Each RUN is one training process, forked from this one after the imports (so several runs pay the ~10 s import
once) and waited for before the next starts. Runs share nothing but the files in OUTPUT_DIR: a resumed run is a
sibling of the killed one, never its descendant. MODE:
    full            train to the end (MAX_STEPS)
    kill_after      SIGKILL at the end of optimizer step STEP (checkpoints before STEP are complete)
    kill_in_save    SIGKILL while writing checkpoint-STEP: after the model weights, before the optimizer,
                    scheduler, RNG state and trainer_state.json
    kill_in_state   SIGKILL while writing checkpoint-STEP's trainer_state.json (the last file): half of it written
    resume          train(resume_from_checkpoint=True) in OUTPUT_DIR to the end
    resume_stock    the same with transformers' own choice of checkpoint (``get_last_checkpoint``, no KNIFETrainer
                    fallback to the newest complete one)

A run that finishes writes OUTPUT_DIR/MODE.pt (the final state dict, estimator and buffers included) and
OUTPUT_DIR/MODE.json (``log_history``, ``resumed_from``: the checkpoint loaded or null, ``warnings``). After each
run this process writes OUTPUT_DIR/MODE.status.json: ``signal`` (9 for a SIGKILL) or ``exitcode``, ``error`` (the
traceback of a run that raised), the files of every ``checkpoint-*`` folder, and what
``transformers.trainer_utils.get_last_checkpoint`` would resume from.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import traceback
import warnings
from typing import Any

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from conftest import synthetic_dataset, tiny_model, training_args  # noqa: E402
from transformers import TrainerCallback, TrainerState, default_data_collator  # noqa: E402
from transformers.trainer_utils import get_last_checkpoint  # noqa: E402

from hf_knife.config import KNIFEConfig  # noqa: E402
from hf_knife.trainer import KNIFETrainer  # noqa: E402

MAX_STEPS = 10  # 32 examples, batch 8: 4 steps per epoch, so a resume lands inside epoch 1 or 2
SAVE_STEPS = 3  # checkpoint-3, checkpoint-6, checkpoint-9


def _die() -> None:
    """A real SIGKILL: no exception handler, atexit hook or buffered-file flush runs."""
    sys.stdout.flush()
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


class _KillAfterStep(TrainerCallback):
    """SIGKILL at the end of optimizer step ``step`` (before its log and checkpoint)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, args: Any, state: TrainerState, control: Any, **kwargs: Any) -> None:
        if state.global_step == self.step:
            _die()


class _KillableTrainer(KNIFETrainer):
    """SIGKILL inside ``_save_checkpoint`` at step ``kill_in_save`` (the model is written, nothing after it)."""

    kill_in_save: int | None = None
    resumed_from: str | None = None
    stock_resume: bool = False

    def _resolve_resume_checkpoint(self, resume_from_checkpoint: str | bool | None) -> str | bool | None:
        if self.stock_resume:
            return resume_from_checkpoint  # Trainer.train turns True into get_last_checkpoint(output_dir)
        return super()._resolve_resume_checkpoint(resume_from_checkpoint)

    def _save_optimizer_and_scheduler(self, output_dir: str) -> None:
        if self.state.global_step == self.kill_in_save:
            _die()
        super()._save_optimizer_and_scheduler(output_dir)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: Any = None) -> None:
        self.resumed_from = resume_from_checkpoint
        super()._load_from_checkpoint(resume_from_checkpoint, model)


def _kill_in_state_json(step: int) -> None:
    """Make ``TrainerState.save_to_json`` write half of checkpoint-``step``'s JSON, then SIGKILL (a torn write)."""
    original = TrainerState.save_to_json

    def save_to_json(self: TrainerState, json_path: str) -> None:
        if self.global_step != step:
            return original(self, json_path)
        text = json.dumps(self.__dict__, indent=2, sort_keys=True) + "\n"
        with open(json_path, "w", encoding="utf-8") as f:
            f.write(text[: len(text) // 2])
        _die()

    TrainerState.save_to_json = save_to_json


def train(output_dir: str, mode: str, step: int | None) -> None:
    """One run (see the module docstring)."""
    config = KNIFEConfig(
        penalty="mutual_information", sensitive_column="gender", sensitive_type="discrete", num_components=4,
        inner_steps=2, weight=0.5, warmup_steps=2,
    )  # fmt: skip
    trainer = _KillableTrainer(
        model=tiny_model("bert", dropout=0.1),  # dropout: the resumed run must also restore the RNG state
        args=training_args(
            output_dir, max_steps=MAX_STEPS, save_strategy="steps", save_steps=SAVE_STEPS, logging_steps=1
        ),
        train_dataset=synthetic_dataset(32),
        data_collator=default_data_collator,
        knife_config=config,
    )
    if mode == "kill_after":
        trainer.add_callback(_KillAfterStep(step))
    elif mode == "kill_in_save":
        trainer.kill_in_save = step
    elif mode == "kill_in_state":
        _kill_in_state_json(step)
    elif mode == "resume_stock":
        trainer.stock_resume = True
    elif mode not in ("full", "resume"):
        raise ValueError(f"unknown mode {mode!r}")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.train(resume_from_checkpoint=mode.startswith("resume") or None)
    state = {k: v.detach().cpu().clone() for k, v in trainer.model.state_dict().items()}
    torch.save(state, os.path.join(output_dir, f"{mode}.pt"))
    result = {
        "log_history": trainer.state.log_history,
        "resumed_from": trainer.resumed_from,
        "warnings": [str(w.message) for w in caught],
    }
    with open(os.path.join(output_dir, f"{mode}.json"), "w", encoding="utf-8") as f:
        json.dump(result, f)


def _checkpoint_files(output_dir: str) -> dict[str, list[str]]:
    return {
        name: sorted(os.listdir(os.path.join(output_dir, name)))
        for name in sorted(os.listdir(output_dir))
        if name.startswith("checkpoint-")
    }


def run_in_child(output_dir: str, mode: str, step: int | None) -> None:
    """Fork, train in the child, wait, and write ``MODE.status.json`` (how the child ended, the checkpoints)."""
    os.makedirs(output_dir, exist_ok=True)
    error_file = os.path.join(output_dir, f"{mode}.error.txt")
    pid = os.fork()
    if pid == 0:  # the child: never return into the parent's code, never run its atexit hooks
        code = 0
        try:
            train(output_dir, mode, step)
        except BaseException:  # noqa: BLE001 - reported to the test through the status file
            with open(error_file, "w", encoding="utf-8") as f:
                f.write(traceback.format_exc())
            code = 1
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    last = get_last_checkpoint(output_dir)
    report = {
        "signal": os.WTERMSIG(status) if os.WIFSIGNALED(status) else None,
        "exitcode": os.WEXITSTATUS(status) if os.WIFEXITED(status) else None,
        "error": open(error_file, encoding="utf-8").read() if os.path.isfile(error_file) else None,
        "checkpoints": _checkpoint_files(output_dir),
        "get_last_checkpoint": os.path.basename(last) if last else None,
    }
    with open(os.path.join(output_dir, f"{mode}.status.json"), "w", encoding="utf-8") as f:
        json.dump(report, f, indent=1)


def main() -> None:
    torch.set_num_threads(1)  # before any fork: no intra-op thread pool to inherit
    for run in sys.argv[1:]:
        output_dir, mode, *rest = run.split(",")
        run_in_child(output_dir, mode, int(rest[0]) if rest else None)


if __name__ == "__main__":
    main()
