"""Visual domain adaptation with disentangled features (the KNIFE paper's third experiment, CLUB's setup).

A content encoder E_c and a domain encoder E_d (Transformers image backbones, ConvNeXt built from a config by
default, or ``--backbone <AutoModel checkpoint>``) read every image of a batch that mixes labelled source and
unlabelled target images. A label head reads the content features Z = W_c pool(E_c(x)) (``--content_dim`` 16), a
domain head (source vs target) the domain features D = W_d pool(E_d(x)) (``--domain_dim`` 2), and Z is pushed to
carry no domain information by minimising ``lambda * I(Z; S)`` with S = D, detached and standardised with running
statistics (the estimator is fitted on detached features). ``--methods``, all on the same seeds, data and budget:

- ``source_only``: the label head only (no domain encoder);
- ``dann``: gradient reversal, a domain classifier on Z (hf_knife's ``adversarial`` penalty, S = the domain label);
- ``knife``: KNIFE's ``I(Z; S)`` with the continuous conditional kernel (``KNIFEConfig(penalty="mutual_information",
  sensitive_type="continuous", sensitive_dim=domain_dim)``);
- ``doe``: the same slot with one full-covariance Gaussian (KNIFE with ``num_components=1``): DoE;
- ``club`` / ``infonce``: the bounds of ``hf_knife.estimators.variational`` in the same slot.

The penalty weights rise linearly over the first 30% of the steps (``--anneal_fraction``); the defaults (lambda =
0.01, DANN 0.03) were chosen on target validation (results/domain_adaptation/README.md); the paper's 0.1 collapses Z.

Offline data (default, ``--source digits --target digits_m``): scikit-learn's 1,797 8x8 digits, shuffled once
(``--split_seed`` 0), scaled to [0, 1], resized bilinearly to ``--image_size`` (12) and copied to 3 channels. 400
digits are test digits, 200 validation digits; of the other 1,197, 600 form the source training set (white on
black) and 597 the target training set (labels never used). A target image is built as MNIST-M is from MNIST:
``|T - x|`` per channel, with T a random colour texture (a 4x4 uniform RGB field upsampled bicubically, plus
Gaussian noise of std 0.15, clipped to [0, 1], times ``--texture_contrast`` 0.6). Splits: source train (labelled),
target train (unlabelled), target validation (the 200 validation digits, ``--eval_textures`` 3 textures each: 600
images, model selection only), target test (the 400 test digits, 3 textures each: 1,200 images) and source test
(the 400 test digits in the source style: the gap to target test is the domain shift). With the Hub: ``--source
mnist --target usps|mnist_m|svhn`` (HUB_DATASETS; images resized to ``--image_size`` RGB; target validation =
``--val_size`` images held out of the target train split); or ``.npz`` files with ``images [N, H, W(, C)]`` and
``labels [N]`` (not resized: sizes and channels must match).

Metric (the paper's): target test accuracy at the epoch with the best target-validation accuracy; mean and 95%
t-interval over seeds, paired differences to ``source_only`` and ``dann``. Writes ``results.json``,
``results.csv`` and ``results.png`` to ``--output_dir``, and each run's model to ``models/<method>-seed<k>``
(with ``knife_config.json``; ``DomainAdaptationModel.from_pretrained`` reloads it).

    python recipes/domain_adaptation.py --output_dir runs/da
    python recipes/domain_adaptation.py --methods source_only,knife --seeds 0 --weight 0.003
    accelerate launch --multi_gpu --num_processes 2 recipes/domain_adaptation.py --use_cpu true  # or torchrun
    python recipes/domain_adaptation.py --source mnist --target mnist_m --image_size 28   # with Hub access

All ``TrainingArguments`` (``--learning_rate``, ``--push_to_hub``, ...) and ``--knife_*`` options are accepted.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from common.da_model import BACKBONES, DomainAdaptationConfig, DomainAdaptationModel, DomainAdaptationTrainer
from common.domains import ImageDataset, check_splits, load_splits
from common.reporting import pyplot, write_csv, write_json
from common.stats import describe
from transformers import AutoConfig, AutoModel, HfArgumentParser, set_seed

from hf_knife.config import KNIFEConfig
from hf_knife.distributed import end_distributed_run
from hf_knife.trainer import KNIFETrainingArguments

METHODS = ("source_only", "dann", "knife", "doe", "club", "infonce")
MI_METHODS = ("knife", "doe", "club", "infonce")  # I(Z; D) with the domain encoder's features D


# --------------------------------------------------------------------------- runs
@dataclass
class DomainAdaptationArguments:
    source: str = field(default="digits", metadata={"help": "'digits' (offline), 'mnist' (Hub) or a .npz file"})
    target: str = field(default="digits_m", metadata={"help": "'digits_m', 'usps', 'mnist_m', 'svhn' or a .npz"})
    methods: str = field(default=",".join(METHODS), metadata={"help": "comma-separated, from " + ", ".join(METHODS)})
    seeds: str = field(default="0,1,2", metadata={"help": "comma-separated training seeds"})
    weight: float = field(default=0.01, metadata={"help": "lambda on I(Z; D) for knife, doe, club, infonce (chosen on "
                                                          "target validation; README)"})
    dann_weight: float = field(default=0.03, metadata={"help": "gradient-reversal weight of dann (chosen on target "
                                                                "validation; README)"})
    backbone: str = field(default="convnext", metadata={"help": "'convnext' / 'resnet' (small, from a config) or "
                                                                "an AutoModel image checkpoint (Hub id or folder)"})
    image_size: int = field(default=12, metadata={"help": "side of the (square) images"})
    texture_contrast: float = field(default=0.6, metadata={"help": "digits_m: texture scale (shift strength)"})
    eval_textures: int = field(default=3, metadata={"help": "digits_m: textures per validation / test digit"})
    split_seed: int = field(default=0, metadata={"help": "seed of the data splits and textures (fixed over seeds)"})
    val_size: int = field(default=1000, metadata={"help": "Hub / npz: target validation images"})
    content_dim: int = field(default=16, metadata={"help": "dimension of the content features Z (a linear layer "
                                                            "on the backbone's pooled output)"})
    domain_dim: int = field(default=2, metadata={"help": "dimension of the domain features D (the S of I(Z; D))"})
    warmup_fraction: float = field(default=0.0, metadata={"help": "penalties start after this fraction of the steps "
                                                                   "(unless --knife_warmup_steps)"})
    anneal_fraction: float = field(default=0.3, metadata={"help": "then their weights rise linearly from 0 over "
                                                                   "this fraction (unless --knife_anneal_steps)"})
    max_train_samples: int | None = field(default=None, metadata={"help": "cap on each training split (tests)"})
    max_eval_samples: int | None = field(default=None, metadata={"help": "cap on each evaluation split (tests)"})
    push_method: str = field(default="knife", metadata={"help": "with --push_to_hub: the method pushed (seed 1)"})


@dataclass
class DomainAdaptationTrainingArguments(KNIFETrainingArguments):
    """TrainingArguments (and ``--knife_*``) with defaults sized for the 2-core offline default."""

    output_dir: str | None = field(default="runs/da", metadata={"help": "where results are written"})
    learning_rate: float = field(default=5e-3, metadata={"help": "AdamW learning rate"})
    num_train_epochs: float = field(default=15.0, metadata={"help": "epochs (the best is chosen on validation)"})
    per_device_train_batch_size: int = field(default=64, metadata={"help": "batch size per device"})
    per_device_eval_batch_size: int = field(default=256, metadata={"help": "evaluation batch size per device"})
    eval_strategy: str = field(default="epoch", metadata={"help": "evaluate every epoch"})
    save_strategy: str = field(default="no", metadata={"help": "the final model is saved by the recipe"})
    logging_strategy: str = field(default="epoch", metadata={"help": "log once per epoch"})
    report_to: str | None = field(default="none", metadata={"help": "no trackers by default"})
    knife_num_components: int = field(default=16, metadata={"help": "KNIFE: mixture components"})
    knife_hidden_dims: list[int] = field(default_factory=lambda: [64, 64], metadata={"help": "KNIFE: MLP widths"})
    knife_inner_steps: int = field(default=1, metadata={"help": "KNIFE: estimator fitting steps per optimizer step"})


def knife_config_for(
    method: str, script: DomainAdaptationArguments, args: Any, total_steps: int
) -> KNIFEConfig | None:
    """The penalty of ``method`` from the ``--knife_*`` options (S: the ``domain`` column); None for source_only."""
    if method == "source_only":
        return None
    options = copy.copy(args)
    options.knife_penalty, options.knife_sensitive_column = "mutual_information", "domain"
    if not options.knife_warmup_steps:  # off for warmup_fraction of the steps, then rising over anneal_fraction
        options.knife_warmup_steps = int(script.warmup_fraction * total_steps)
    if not options.knife_anneal_steps:
        options.knife_anneal_steps = int(script.anneal_fraction * total_steps)
    config = options.to_knife_config()
    if method == "dann":
        return dataclasses.replace(config, penalty="adversarial", weight=script.dann_weight,
                                   sensitive_type="discrete", num_sensitive_classes=2)  # fmt: skip
    config = dataclasses.replace(
        config, weight=script.weight, sensitive_type="continuous", sensitive_dim=script.domain_dim
    )
    if method == "doe":  # one Gaussian: the difference-of-entropies estimator
        return dataclasses.replace(config, num_components=1, covariance="full")
    return dataclasses.replace(config, penalty=method) if method in ("club", "infonce") else config


def build_model(method: str, script: DomainAdaptationArguments, args: Any, num_labels: int,
                total_steps: int = 1) -> DomainAdaptationModel:  # fmt: skip
    """Built after ``set_seed``: the content encoder and label head start the same for every method of a seed."""
    pretrained = script.backbone not in BACKBONES
    backbone = AutoConfig.from_pretrained(script.backbone).to_dict() if pretrained else BACKBONES[script.backbone]
    domain = None
    if method in MI_METHODS:  # the presets' domain encoder has half the widths (its task is easy)
        half = {"hidden_sizes": [w // 2 for w in backbone["hidden_sizes"]], "embedding_size": 16}
        domain = backbone if pretrained else {**backbone, **{k: v for k, v in half.items() if k in backbone}}
    knife = knife_config_for(method, script, args, total_steps)
    config = DomainAdaptationConfig(backbone=backbone, domain_backbone=domain, content_dim=script.content_dim,
                                    domain_dim=script.domain_dim,
                                    method=method, knife=knife.to_dict() if knife else None,
                                    num_labels=num_labels)  # fmt: skip
    model = DomainAdaptationModel(config)
    if domain is not None or knife is not None:  # the content path starts as source_only's (same seed)
        set_seed(args.seed)
        template = build_model("source_only", script, args, num_labels)
        model.load_state_dict(template.state_dict(), strict=False)
    if pretrained:
        weights = AutoModel.from_pretrained(script.backbone).state_dict()
        for name in ("content_encoder", "domain_encoder") if domain else ("content_encoder",):
            getattr(model, name).load_state_dict(weights)
    return model


def accuracy(eval_pred: Any) -> dict[str, float]:
    logits = eval_pred.predictions[0] if isinstance(eval_pred.predictions, tuple) else eval_pred.predictions
    return {"accuracy": float((np.asarray(logits).argmax(-1) == eval_pred.label_ids).mean())}


def run_one(method: str, seed: int, script: DomainAdaptationArguments, args: Any, data: dict, num_labels: int,
            output_dir: Path) -> dict[str, Any]:  # fmt: skip
    """Train one (method, seed); the target accuracies at the epoch with the best target-validation accuracy."""
    set_seed(seed)
    batches = math.ceil(len(data["train"]) / (args.per_device_train_batch_size * args.world_size))
    total_steps = math.ceil(batches / args.gradient_accumulation_steps * args.num_train_epochs)
    total_steps = args.max_steps if args.max_steps > 0 else total_steps
    model = build_model(method, script, args, num_labels, total_steps)
    push = bool(args.push_to_hub) and method == script.push_method and seed == int(script.seeds.split(",")[0])
    run_args = dataclasses.replace(args, output_dir=str(output_dir / "models" / f"{method}-seed{seed}"), seed=seed,
                                   push_to_hub=push, knife_penalty=None)  # fmt: skip
    trainer = DomainAdaptationTrainer(model=model, args=run_args, train_dataset=data["train"],
                                      eval_dataset=data["eval"], compute_metrics=accuracy)  # fmt: skip
    start = time.time()
    trainer.train()
    seconds = time.time() - start
    trainer.save_model()
    if push:
        trainer.push_to_hub(commit_message=f"domain_adaptation recipe: {method}, seed {seed}")
    epochs: dict[float, dict[str, float]] = {}  # one log entry per evaluation set: merged by epoch
    for entry in trainer.state.log_history:
        epochs.setdefault(entry["epoch"], {}).update({k: v for k, v in entry.items() if k.endswith("_accuracy")})
    history = [e for e in epochs.values() if "eval_target_val_accuracy" in e]
    evaluated = [(e, h) for e, h in epochs.items() if "eval_target_val_accuracy" in h]
    epoch, best = max(evaluated, key=lambda x: x[1]["eval_target_val_accuracy"])  # the first best epoch
    return {"method": method, "seed": seed, "best_epoch": epoch, "train_seconds": seconds,
            **{k[len("eval_"):]: v for k, v in best.items()},
            "final_target_test_accuracy": history[-1]["eval_target_test_accuracy"],
            "curve": [{k[len("eval_"):]: v for k, v in e.items()} for e in history],
            "knife_config": model.config.knife}  # fmt: skip


def _interval(values: list[float]) -> dict[str, float]:
    """Mean and 95% t-interval of ``values`` (common.stats), as stored in results.json."""
    d = describe(values)
    return {"mean": d.mean, "low": d.low, "high": d.high, "n": d.n}


def summarise(rows: list[dict[str, Any]], methods: list[str]) -> dict[str, Any]:
    """Per method: target test / val / source test accuracy intervals and paired differences (same seeds)."""
    by = {m: {r["seed"]: r for r in rows if r["method"] == m} for m in methods}
    summary = {}
    for m in methods:
        entry = {k: _interval([r[k] for r in by[m].values()]) for k in
                 ("target_test_accuracy", "target_val_accuracy", "source_test_accuracy")}  # fmt: skip
        for ref in ("source_only", "dann"):
            seeds = sorted(set(by[m]) & set(by.get(ref, {})))
            if ref != m and seeds:
                diffs = [by[m][s]["target_test_accuracy"] - by[ref][s]["target_test_accuracy"] for s in seeds]
                entry[f"minus_{ref}"] = _interval(diffs)
        summary[m] = entry
    return summary


def _ci(d: dict[str, float] | None) -> str:
    return "-" if d is None else f"{100 * d['mean']:.1f} [{100 * d['low']:.1f}, {100 * d['high']:.1f}]"


def table(summary: dict[str, Any]) -> str:
    lines = ["| method | target test acc. | source test acc. | minus source_only | minus dann |"]
    lines.append("|---|---|---|---|---|")
    for m, e in summary.items():
        lines.append(f"| {m} | {_ci(e['target_test_accuracy'])} | {_ci(e['source_test_accuracy'])} | "
                     f"{_ci(e.get('minus_source_only'))} | {_ci(e.get('minus_dann'))} |")  # fmt: skip
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], summary: dict[str, Any], path: Path) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.5))
    for i, (m, e) in enumerate(summary.items()):
        t = e["target_test_accuracy"]
        err = [[t["mean"] - t["low"]], [t["high"] - t["mean"]]] if math.isfinite(t["low"]) else None
        ax.bar(i, 100 * t["mean"], yerr=None if err is None else 100 * np.asarray(err), capsize=4, color="C0")
        ax.scatter([i] * sum(r["method"] == m for r in rows), [100 * r["target_test_accuracy"] for r in rows
                   if r["method"] == m], color="k", s=10, zorder=3)  # fmt: skip
    ax.set_xticks(range(len(summary)), list(summary))
    ax.set_ylabel("target test accuracy (%)")
    ax.set_title("target accuracy at the best target-validation epoch (mean, 95% CI, seeds)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = HfArgumentParser((DomainAdaptationArguments, DomainAdaptationTrainingArguments))
    script, args = parser.parse_args_into_dataclasses(argv)
    methods = [m.strip() for m in script.methods.split(",") if m.strip()]
    seeds = [int(s) for s in script.seeds.split(",")]
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise ValueError(
            f"unknown method(s) {unknown}: --methods takes a comma-separated list of {', '.join(METHODS)}"
        )
    if args.knife_penalty is not None:
        raise ValueError("--knife_penalty is set by the method (--methods), not on the command line")
    start = time.time()
    splits = load_splits(script)
    for name, (x, y) in splits.items():
        cap = script.max_train_samples if name.endswith("train") else script.max_eval_samples
        splits[name] = (x[:cap], None if y is None else y[:cap])
    num_labels = check_splits(splits)
    data = {"train": ImageDataset((splits["source_train"], 0), (splits["target_train"], 1)),
            "eval": {k: ImageDataset((splits[k], int(k.startswith("target")))) for k in
                     ("target_val", "target_test", "source_test")}}  # fmt: skip
    output_dir = Path(args.output_dir)
    rows = []
    for i, (method, seed) in enumerate((m, s) for s in seeds for m in methods):
        print(f"[domain_adaptation] run {i + 1}/{len(methods) * len(seeds)}: {method}, seed {seed} "
              f"({time.time() - start:.0f} s so far)", flush=True)  # fmt: skip
        rows.append(run_one(method, seed, script, args, data, num_labels, output_dir))
    summary = summarise(rows, methods)
    result = {"settings": {**dataclasses.asdict(script), "learning_rate": args.learning_rate,
                           "num_train_epochs": args.num_train_epochs, "batch_size": args.per_device_train_batch_size,
                           "world_size": args.world_size, "sizes": {k: len(v[0]) for k, v in splits.items()}},
              "rows": rows, "summary": summary, "wall_seconds": time.time() - start}  # fmt: skip
    if args.process_index == 0:
        output_dir.mkdir(parents=True, exist_ok=True)
        write_json(output_dir / "results.json", result, newline=True)
        write_csv([{k: v for k, v in r.items() if k != "knife_config"} for r in rows], output_dir / "results.csv")
        plot(rows, summary, output_dir / "results.png")
        print(table(summary) + f"\n\nwall time {result['wall_seconds']:.0f} s; results in {output_dir}", flush=True)
    return result


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
    end_distributed_run()
