"""Soak test: 1,000 optimizer steps per penalty at weight 10, fp32 and bf16 autocast, on a representation with the
pathologies of real hidden states.

    OMP_NUM_THREADS=1 python benchmarks/soak.py --steps 1000            # the README table (about 10 min on 2 cores)
    python benchmarks/soak.py --steps 50 --penalties entropy --dtypes bf16

The model is a tiny BERT built from a config (MiniLM at 2.6 s per step would need 6 hours for the grid) made to
look like MiniLM's [CLS]: three coordinates of the last LayerNorm have scale 0 (dead units, constant for every
input, as MiniLM's 127, 223 and 319), two have an offset of 1,000, and every sentence appears twice (duplicated
rows). A run *survives* a step when every logged scalar is finite; at the end the parameters must be finite and the
estimator's NLL bounded. With ``--budget`` each penalty also runs with ``target`` (the adaptive multiplier) where
the installed version has it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

PENALTIES = ("mutual_information", "entropy", "information_bottleneck", "adversarial")
DEAD, OFFSET = (5, 17, 29), (3, 11)
#: budget targets per penalty (nats): I(Z;S), the rate I(X;Z), h(Z); the adversary takes none
BUDGET_TARGETS = {"mutual_information": 0.05, "information_bottleneck": 5.0, "entropy": 10.0}


def make_model(seed: int = 0):
    """A 2-layer hidden-32 BERT whose [CLS] has dead units and huge offsets."""
    from transformers import AutoModelForSequenceClassification, BertConfig

    config = BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=40, hidden_dropout_prob=0.1,
                        attention_probs_dropout_prob=0.1, num_labels=2, initializer_range=0.2)  # fmt: skip
    torch.manual_seed(seed)
    model = AutoModelForSequenceClassification.from_config(config)
    norm = model.bert.encoder.layer[-1].output.LayerNorm
    with torch.no_grad():
        norm.weight[list(DEAD)] = 0.0  # dead units: constant for every input until training moves them
        norm.bias[list(DEAD)] = 0.25
        norm.bias[list(OFFSET)] = 1000.0  # huge offsets
    return model


def make_dataset(n: int = 256, seed: int = 0):
    """Token data with a label, a sensitive attribute that predicts it 80% of the time, each row twice."""
    from datasets import Dataset

    g = torch.Generator().manual_seed(seed)
    gender = torch.randint(0, 2, (n // 2,), generator=g)
    labels = torch.where(torch.rand(n // 2, generator=g) < 0.8, gender, 1 - gender)
    ids = torch.randint(10, 64, (n // 2, 12), generator=g)
    ids[:, 0], ids[:, 1] = 2, 5 + gender
    ids[torch.arange(n // 2), torch.randint(2, 12, (n // 2,), generator=g)] = 3 + labels
    ids, labels, gender = ids.repeat(2, 1), labels.repeat(2), gender.repeat(2)  # duplicated rows
    return Dataset.from_dict({"input_ids": ids.tolist(), "attention_mask": torch.ones_like(ids).tolist(),
                              "labels": labels.tolist(), "gender": gender.tolist()})  # fmt: skip


def soak(penalty: str, dtype: str, steps: int, weight: float, budget: bool, output_dir: Path) -> dict:
    """Train ``steps`` steps; return steps survived, the extremes of the estimator NLL and the wall time."""
    from hf_knife import KNIFEConfig, KNIFETrainer
    from hf_knife.trainer import KNIFETrainingArguments

    options = dict(penalty=penalty, weight=weight, sensitive_column="gender", representation="cls")
    if budget:
        options["target"] = BUDGET_TARGETS[penalty]
    config = KNIFEConfig(**options)
    args = KNIFETrainingArguments(
        output_dir=str(output_dir), per_device_train_batch_size=16, max_steps=steps, learning_rate=5e-4,
        report_to="none", logging_steps=1, save_strategy="no", use_cpu=True, seed=0, disable_tqdm=True,
        bf16=dtype == "bf16", dataloader_num_workers=0,
    )  # fmt: skip
    trainer = KNIFETrainer(model=make_model(), args=args, train_dataset=make_dataset(), knife_config=config)
    start, error = time.perf_counter(), None
    try:
        trainer.train()
    except (FloatingPointError, RuntimeError, ValueError) as caught:  # a non-finite Z is refused by name
        error = f"{type(caught).__name__}: {caught}"
    wall = time.perf_counter() - start
    logs = [entry for entry in trainer.state.log_history if "loss" in entry and "step" in entry]
    survived = 0
    for entry in logs:
        if not all(math.isfinite(v) for v in entry.values() if isinstance(v, (int, float))):
            break
        survived = entry["step"]
    parameters_finite = all(bool(torch.isfinite(p).all()) for p in trainer.model.parameters())
    nll = [entry["knife/estimator_nll"] for entry in logs if "knife/estimator_nll" in entry]
    multiplier = [entry["knife/multiplier"] for entry in logs if "knife/multiplier" in entry]
    return {
        "penalty": penalty, "dtype": dtype, "budget": budget, "steps": steps, "survived": survived,
        "parameters_finite": parameters_finite, "error": error, "wall_s": round(wall, 1),
        "nll_max": max(nll) if nll else None, "nll_min": min(nll) if nll else None,
        "nll_last": nll[-1] if nll else None, "grad_norm_max": max(e.get("grad_norm", 0.0) for e in logs),
        "multiplier_last": multiplier[-1] if multiplier else None,
    }  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--weight", type=float, default=10.0)
    parser.add_argument("--penalties", nargs="+", default=list(PENALTIES), choices=PENALTIES)
    parser.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    parser.add_argument("--budget", action="store_true", help="also run each penalty with a target (budget)")
    parser.add_argument("--budget_only", action="store_true", help="run only the budgeted runs")
    parser.add_argument("--output", type=Path, default=None, help="write the rows as JSON here")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    from hf_knife import KNIFEConfig

    has_budget = "target" in {f.name for f in dataclasses.fields(KNIFEConfig)}
    if (args.budget or args.budget_only) and not has_budget:
        print("note: this version of KNIFEConfig has no `target`; budget runs skipped", file=sys.stderr)
    rows = []
    runs = [] if args.budget_only else [(p, t, False) for p in args.penalties for t in args.dtypes]
    if (args.budget or args.budget_only) and has_budget:
        runs += [(p, t, True) for p in args.penalties if p in BUDGET_TARGETS for t in args.dtypes]
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        for penalty, dtype, budget in runs:
            row = soak(penalty, dtype, args.steps, args.weight, budget, Path(tmp))
            rows.append(row)
            print(json.dumps(row), flush=True)
    print(f"\nsoak: {args.steps} steps, weight {args.weight}, tiny BERT with dead units, offsets and duplicated rows")
    print(f"{'penalty':24s} {'dtype':5s} {'budget':6s} {'survived':>9s} {'params':>7s} {'NLL min':>9s} "
          f"{'NLL max':>9s} {'NLL last':>9s} {'grad max':>10s} {'time':>7s}")  # fmt: skip
    for r in rows:
        fmt = lambda v: f"{v:9.1f}" if v is not None else f"{'-':>9s}"  # noqa: E731
        print(f"{r['penalty']:24s} {r['dtype']:5s} {str(r['budget']):6s} {r['survived']:5d}/{r['steps']:<4d}"
              f"{'finite' if r['parameters_finite'] else 'NaN':>7s} {fmt(r['nll_min'])} {fmt(r['nll_max'])} "
              f"{fmt(r['nll_last'])} {r['grad_norm_max']:10.3g} {r['wall_s']:6.0f}s"
              + (f"  {r['error']}" if r["error"] else ""))  # fmt: skip
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(rows, indent=2) + "\n")
    ok = all(r["survived"] == r["steps"] and r["parameters_finite"] for r in rows)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
