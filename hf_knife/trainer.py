"""KNIFETrainer and KNIFETrainingArguments: a drop-in ``Trainer`` with a KNIFE penalty on hidden states.

    trainer = KNIFETrainer(model=model, args=args, train_dataset=train, knife_config=KNIFEConfig(
        penalty="mutual_information", weight=1.0, sensitive_column="gender"))

The penalty is computed inside the model's forward (see :mod:`hf_knife.modeling`); the trainer keeps the
sensitive column, passes it as ``sensitive=``, gives the estimator its own optimizer group, initialises the
estimator at data before training, logs ``knife/*`` scalars, and saves ``knife_config.json``. Without a
``knife_config`` it behaves as ``Trainer`` (with the gradient-accumulation loss scaling of HF_NOTES.md fixed).
"""

from __future__ import annotations

import dataclasses
import inspect
import itertools
import json
import os
import shutil
import typing
from collections import defaultdict
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Subset
from transformers import Trainer, TrainerCallback, TrainingArguments

from .checkpoints import resolve_resume_checkpoint
from .config import KNIFE_CONFIG_NAME, KNIFEConfig
from .distributed import check_gather, check_launch
from .modeling import KNIFE_OUTPUT_FIELDS, KNIFE_TAGS, KNIFEModelMixin, add_knife, get_knife_module

__all__ = ["KNIFE_CITATION", "KNIFETrainer", "KNIFETrainingArguments"]

KNIFE_CITATION = """@inproceedings{pichler2022knife,
  title     = {A Differential Entropy Estimator for Training Neural Networks},
  author    = {Pichler, Georg and Colombo, Pierre and Boudiaf, Malik and Koliander, G{\\\"u}nther and Piantanida, Pablo},
  booktitle = {Proceedings of the 39th International Conference on Machine Learning},
  year      = {2022},
  note      = {arXiv:2202.06618}
}"""


# --------------------------------------------------------------------------- arguments
def _knife_argument_fields() -> list[tuple[str, Any, Any]]:
    """One ``knife_<name>`` field per KNIFEConfig field (so every option exists on the command line)."""
    hints = typing.get_type_hints(KNIFEConfig)
    out = []
    for f in dataclasses.fields(KNIFEConfig):
        metadata = {"help": "KNIFE: " + f.metadata.get("help", "")}
        if f.name == "penalty":  # None = no penalty (plain Trainer)
            out.append(("knife_penalty", str | None, dataclasses.field(default=None, metadata=metadata)))
        elif f.default_factory is not dataclasses.MISSING:
            out.append(
                (
                    f"knife_{f.name}",
                    hints[f.name],
                    dataclasses.field(default_factory=f.default_factory, metadata=metadata),
                )
            )
        else:
            out.append(
                (f"knife_{f.name}", hints[f.name], dataclasses.field(default=f.default, metadata=metadata))
            )
    return out


def _to_knife_config(self: TrainingArguments) -> KNIFEConfig | None:
    """The KNIFEConfig described by the ``knife_*`` arguments, or None when ``knife_penalty`` is unset."""
    if self.knife_penalty is None:
        return None
    values = {f.name: getattr(self, f"knife_{f.name}") for f in dataclasses.fields(KNIFEConfig)}
    return KNIFEConfig(**values)


KNIFETrainingArguments = dataclasses.make_dataclass(
    "KNIFETrainingArguments",
    _knife_argument_fields(),
    bases=(TrainingArguments,),
    namespace={
        "to_knife_config": _to_knife_config,
        "__module__": __name__,
        "__doc__": "TrainingArguments plus one ``knife_<option>`` per KNIFEConfig field (``--knife_penalty ...``).",
    },
)


def _constant_lr(step: int) -> float:
    return 1.0


class _EndOfStepCallback(TrainerCallback):
    """After every optimizer step: the penalty's inner fitting steps and running statistics (on every process)."""

    def __init__(self, trainer: Trainer) -> None:
        self.trainer = trainer

    def on_step_end(self, args: TrainingArguments, state: Any, control: Any, **kwargs: Any) -> None:
        knife = get_knife_module(self.trainer.model)
        if knife is not None:
            knife.end_of_step()


# --------------------------------------------------------------------------- data checks
#: Label value that the task losses ignore (``CrossEntropyLoss(ignore_index=-100)``).
IGNORE_INDEX = -100


def _dataset_length(dataset: Any) -> int | None:
    """``len(dataset)``, or None for an iterable dataset."""
    try:
        return len(dataset)
    except TypeError:
        return None


def _first_example(dataset: Any) -> Mapping | None:
    """The first example of a map-style dataset of dicts that is not a ``datasets.Dataset`` (else None)."""
    if hasattr(dataset, "column_names") or not _dataset_length(dataset):
        return None
    try:
        example = dataset[0]
    except Exception:  # not indexable by position: nothing to check up front
        return None
    return example if isinstance(example, Mapping) else None


def _column_names(dataset: Any) -> list[str] | None:
    """The dataset's columns (a ``datasets`` dataset's, or the keys of the first example), None when unknown."""
    names = getattr(dataset, "column_names", None)
    if names is None:
        example = _first_example(dataset)
        names = list(example) if example is not None else None
    return list(names) if names is not None else None


def _full_column(dataset: Any, column: str) -> np.ndarray | None:
    """Every value of ``column`` of a map-style ``datasets.Dataset``, flattened; None for other datasets."""
    import datasets

    if not isinstance(dataset, datasets.Dataset) or column not in dataset.column_names:
        return None
    return _flatten(dataset.with_format("numpy")[column])


def _flatten(values: Any) -> np.ndarray:
    """A flat numpy array of (possibly nested or ragged) values."""
    array = np.asarray(values) if not isinstance(values, np.ndarray) else values
    if array.dtype == object and array.size and isinstance(array.flat[0], (np.ndarray, list, tuple)):
        return np.concatenate([_flatten(v) for v in array.flat]) if array.size else array
    return array.reshape(-1)


def _column_sample(dataset: Any, column: str) -> tuple[np.ndarray | None, str]:
    """The values of ``column`` to check (all of a ``datasets.Dataset``, else the first example's) and where
    they come from."""
    values = _full_column(dataset, column)
    if values is not None:
        return values, ""
    example = _first_example(dataset)
    if example is None or column not in example:
        return None, ""
    value = example[column]
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    return _flatten([value] if np.ndim(value) == 0 else value), " in its first example"


def _is_text(values: np.ndarray) -> bool:
    if values.dtype.kind in "USa":
        return True
    return values.dtype == object and values.size > 0 and isinstance(values.flat[0], (str, bytes))


def _examples(values: np.ndarray, limit: int = 3) -> str:
    """Up to ``limit`` distinct values, as a readable list."""
    distinct = list(dict.fromkeys(v.item() if hasattr(v, "item") else v for v in values.flat))
    shown = ", ".join(repr(v) for v in distinct[:limit])
    return shown + (", ..." if len(distinct) > limit else "")


def _check_sensitive_column(config: KNIFEConfig, dataset: Any, names: list[str] | None) -> None:
    """The sensitive column exists and holds numbers: class ids in range (discrete S) or finite values."""
    column = config.sensitive_column
    if column is None:
        raise ValueError(
            f"the {config.penalty} penalty needs sensitive_column (the dataset column holding S): "
            "KNIFEConfig(sensitive_column=...) or --knife_sensitive_column"
        )
    if names is not None and column not in names:
        raise ValueError(
            f"sensitive column {column!r} is not in the training dataset; its columns are: {', '.join(names)}"
        )
    values, where = _column_sample(dataset, column)
    if values is None:
        return
    if _is_text(values):
        raise ValueError(
            f"sensitive column {column!r} holds strings{where} (e.g. {_examples(values)}); the {config.penalty} "
            f"penalty needs {'integer class ids 0..C-1' if config.sensitive_type == 'discrete' else 'numbers'}: "
            f"encode them, e.g. dataset = dataset.class_encode_column({column!r}) (a ClassLabel, from which "
            "KNIFETrainer also reads the number of classes)"
        )
    if values.dtype.kind not in "biuf":
        raise ValueError(
            f"sensitive column {column!r} holds values of type {values.dtype}{where}; expected "
            f"{'integer class ids' if config.sensitive_type == 'discrete' else 'numbers'}"
        )
    if config.sensitive_type != "discrete":
        finite = np.isfinite(values.astype(np.float64))
        if not finite.all():
            raise FloatingPointError(
                f"sensitive column {column!r} holds {int((~finite).sum())} NaN or Inf values{where} (first at "
                f"position {int(np.argmin(finite))}); a continuous S must be finite"
            )
        return
    if values.dtype.kind == "f" and not bool((values == np.round(values)).all()):
        raise ValueError(
            f"sensitive column {column!r} holds non-integer values{where} (e.g. {values[values != np.round(values)][0]}); "
            "use integer class ids, or sensitive_type='continuous'"
        )
    if values.size and int(values.min()) < 0:
        raise ValueError(
            f"sensitive column {column!r} holds negative class ids ({int(values.min())}){where}; expected ids in "
            "[0, C-1] for C classes"
        )
    classes = config.num_sensitive_classes
    if classes is not None and values.size and int(values.max()) >= classes:
        raise ValueError(
            f"sensitive column {column!r} holds class id {int(values.max())}{where}, expected ids in "
            f"[0, {classes - 1}] (num_sensitive_classes={classes})"
        )


#: Model heads whose ``labels`` are class ids in ``[0, config.num_labels)``.
CLASS_ID_HEADS = ("ForSequenceClassification", "ForTokenClassification")


def _check_task_labels(
    model: nn.Module, dataset: Any, names: list[str] | None, label_names: list[str] | None
) -> None:
    """The task labels of a sequence / token classifier are class ids in ``[0, num_labels)`` (or -100)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = getattr(base, "config", None)
    head = type(base).__name__
    if config is None or not head.endswith(CLASS_ID_HEADS):
        return
    num_labels = getattr(config, "num_labels", None)
    if (
        not num_labels
        or num_labels < 2
        or getattr(config, "problem_type", None) in ("regression", "multi_label_classification")
    ):
        return
    if label_names is not None and "labels" not in label_names:
        return
    # the default collators rename 'label' and 'label_ids' to 'labels'
    column = next((c for c in ("labels", "label", "label_ids") if names is not None and c in names), None)
    if column is None:
        return
    values, where = _column_sample(dataset, column)
    if values is None:
        return
    if _is_text(values):
        raise ValueError(
            f"label column {column!r} holds strings{where} (e.g. {_examples(values)}); {head} expects class ids "
            f"0..{num_labels - 1}: encode them, e.g. dataset = dataset.class_encode_column({column!r})"
        )
    if values.dtype.kind not in "iu":  # float labels: regression or multi-label, checked by the model
        return
    bad = ((values < 0) & (values != IGNORE_INDEX)) | (values >= num_labels)
    if bad.any():
        used = values[values != IGNORE_INDEX]
        raise ValueError(
            f"label column {column!r} holds class ids {_examples(np.unique(values[bad]), 5)} outside [0, "
            f"{num_labels - 1}]{where} ({int(bad.sum())} of {values.size} labels): {head} has num_labels="
            f"{num_labels}. Build the model with the number of classes (e.g. num_labels={int(used.max()) + 1}) or "
            f"fix the labels ({IGNORE_INDEX} marks ignored positions)"
        )


# --------------------------------------------------------------------------- trainer
class KNIFETrainer(Trainer):
    """``Trainer`` with a KNIFE penalty; ``knife_config=None`` (and no ``--knife_penalty``) gives plain Trainer."""

    def __init__(self, *args: Any, knife_config: KNIFEConfig | None = None, **kwargs: Any) -> None:
        bound = inspect.signature(Trainer.__init__).bind_partial(None, *args, **kwargs).arguments
        training_args = bound.get("args")
        if knife_config is None and hasattr(training_args, "to_knife_config"):
            knife_config = training_args.to_knife_config()
        model = bound.get("model")
        existing = get_knife_module(model) if isinstance(model, nn.Module) else None
        if existing is not None:
            knife_config = existing.config  # the model's own penalty wins
        if knife_config is not None:
            self._knife_check_dataset(
                knife_config, bound.get("train_dataset"), model, getattr(training_args, "label_names", None)
            )
            if existing is None:
                if model is None:
                    raise ValueError(
                        "KNIFETrainer with knife_config needs model= (model_init is not supported)"
                    )
                knife_config = self._knife_infer_classes(knife_config, bound.get("train_dataset"))
                add_knife(model, knife_config)
        if training_args is not None:
            check_launch(training_args.world_size)
        self.knife_config = knife_config
        self.knife_model_card_extra: str | None = None  # markdown appended to the model card (e.g. an audit)
        super().__init__(*args, **kwargs)
        # BERT-style heads take **kwargs, so Trainer believes they normalise by num_items_in_batch and scales
        # the loss by the accumulation steps and process count: turn that off (HF_NOTES.md).
        self.model_accepts_loss_kwargs = False
        if knife_config is not None:
            check_gather(knife_config.gather_features, self.args.world_size)
        self._knife_metrics: dict[str, dict[str, list[torch.Tensor]]] = {
            "train": defaultdict(list),
            "eval": defaultdict(list),
        }
        knife = get_knife_module(self.model)
        if knife is not None:
            self.add_callback(_EndOfStepCallback(self))
        if knife is not None and not any(p.requires_grad for p in knife.estimator.parameters()):
            raise ValueError(
                "the KNIFE estimator is frozen (PEFT freezes modules it does not adapt): pass "
                "modules_to_save=['knife'] to the PEFT config"
            )

    # ------------------------------------------------------------------ data checks
    @staticmethod
    def _knife_check_dataset(
        config: KNIFEConfig,
        dataset: Any,
        model: nn.Module | None = None,
        label_names: list[str] | None = None,
    ) -> None:
        """Refuse, before training, a training dataset the penalty cannot use.

        Empty; without the sensitive column (or with strings, non-integer, negative or too large class ids in it);
        with ``model`` given, task labels outside the model's ``[0, num_labels)``. A ``datasets.Dataset`` is
        checked column by column, another map-style dataset of dicts on its first example.
        """
        if dataset is None:
            return
        if _dataset_length(dataset) == 0:
            raise ValueError(
                f"the training dataset is empty (0 examples, {type(dataset).__name__}): KNIFETrainer needs training "
                "examples to train on and to initialise the KNIFE estimator from"
            )
        names = _column_names(dataset)
        if config.needs_sensitive:
            _check_sensitive_column(config, dataset, names)
        if model is not None:
            _check_task_labels(model, dataset, names, label_names)

    @staticmethod
    def _knife_infer_classes(config: KNIFEConfig, dataset: Any) -> KNIFEConfig:
        """Fill ``num_sensitive_classes`` from a ClassLabel feature or the largest id in the column."""
        if not config.needs_sensitive or config.sensitive_type != "discrete" or config.num_sensitive_classes:
            return config
        features = getattr(dataset, "features", None)
        column = config.sensitive_column
        feature = features.get(column) if features is not None else None
        values = _full_column(dataset, column)
        if feature is not None and hasattr(feature, "num_classes"):
            num_classes = feature.num_classes
        elif values is not None and values.size:
            num_classes = int(values.max()) + 1
        else:
            raise ValueError(
                f"set num_sensitive_classes (KNIFEConfig(num_sensitive_classes=C) or --knife_num_sensitive_classes C): "
                f"it cannot be inferred from this training dataset ({type(dataset).__name__} has no ClassLabel "
                f"feature or readable column {column!r})"
            )
        return dataclasses.replace(config, num_sensitive_classes=max(2, num_classes))

    def _set_signature_columns_if_needed(self) -> None:
        super()._set_signature_columns_if_needed()
        column = self.knife_config.sensitive_column if self.knife_config is not None else None
        if column is not None and column not in self._signature_columns:
            self._signature_columns.append(column)  # keep the sensitive column in the batch

    # ------------------------------------------------------------------ loss, logging, predictions
    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> Any:
        knife = get_knife_module(model) if self.knife_config is not None else None
        if knife is None:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        inputs = dict(inputs)
        column = self.knife_config.sensitive_column
        if column is not None and column in inputs:
            sensitive = inputs.pop(column)
            if self.knife_config.needs_sensitive:
                inputs["sensitive"] = sensitive
        elif self.knife_config.needs_sensitive and model.training:
            raise ValueError(
                f"sensitive column {column!r} is missing from the batch; the batch has: {', '.join(inputs)}"
            )
        knife.global_step = self.state.global_step
        loss, outputs = super().compute_loss(
            model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch
        )
        if isinstance(outputs, dict):
            metrics = self._knife_metrics["train" if model.training else "eval"]
            for name in KNIFE_OUTPUT_FIELDS:
                value = outputs.get(name)
                if value is not None:
                    metrics[name[len("knife_") :]].append(value.detach().float())
        return (loss, outputs) if return_outputs else loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Add the means of the ``knife/*`` scalars since the last log, averaged over processes."""
        mode = "eval" if any(key.startswith("eval_") for key in logs) else "train"
        metrics = self._knife_metrics[mode] if hasattr(self, "_knife_metrics") else {}
        if metrics:
            names = sorted(metrics)
            local = torch.stack([torch.stack(metrics[n]).mean() for n in names]).to(self.args.device)  # [M]
            if self.accelerator.num_processes > 1:
                local = self.accelerator.reduce(local, reduction="mean")
            prefix = "eval_knife/" if mode == "eval" else "knife/"
            logs.update({prefix + n: float(v) for n, v in zip(names, local.tolist())})
            metrics.clear()
        super().log(logs, start_time)

    def prediction_step(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        prediction_loss_only: bool,
        ignore_keys: list[str] | None = None,
    ) -> Any:
        """As Trainer, but scalars and hidden states are not predictions."""
        if ignore_keys is None:
            config = getattr(self.accelerator.unwrap_model(self.model), "config", None)
            ignore_keys = list(getattr(config, "keys_to_ignore_at_inference", None) or [])
        ignore_keys = [*ignore_keys, *KNIFE_OUTPUT_FIELDS, "hidden_states", "attentions"]
        return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys=ignore_keys)

    # ------------------------------------------------------------------ optimizer and scheduler
    def create_optimizer(self, model: nn.Module | None = None) -> torch.optim.Optimizer:
        """Trainer's groups, minus the estimator, plus one estimator group (own lr, no weight decay)."""
        optimizer = super().create_optimizer(model)
        knife = get_knife_module(self.model)
        if knife is None or any(group.get("knife_estimator") for group in optimizer.param_groups):
            return optimizer
        estimator = knife.estimator_parameters()
        ids = {id(p) for p in estimator}
        for group in optimizer.param_groups:
            group["params"] = [p for p in group["params"] if id(p) not in ids]
        optimizer.add_param_group(
            {
                "params": estimator,
                "lr": self.knife_config.estimator_lr,
                "weight_decay": 0.0,
                "knife_estimator": True,
            }
        )
        return optimizer

    def _knife_split_parameters(self, model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]] | None:
        """``(model parameters, estimator parameters)`` when a KNIFE estimator trains with the model, else None."""
        knife = get_knife_module(model) if self.knife_config is not None else None
        if knife is None or self.accelerator.distributed_type.name in ("FSDP", "DEEPSPEED", "XLA"):
            return None
        estimator = knife.estimator_parameters()
        ids = {id(p) for p in estimator}
        return [p for p in model.parameters() if id(p) not in ids], estimator

    def _clip_grad_norm(self, model: nn.Module) -> Any:
        """Clip the model's and the estimator's gradients separately; returns the model's pre-clip norm.

        The estimator's fitting gradient is unrelated to the model's (and large while it fits a moving
        representation): clipped together, it would scale the model's gradients down and change training
        even at weight 0.
        """
        split = self._knife_split_parameters(model)
        if split is None:
            return super()._clip_grad_norm(model)
        model_parameters, estimator_parameters = split
        self.accelerator.clip_grad_norm_(estimator_parameters, self.args.max_grad_norm)
        return self.accelerator.clip_grad_norm_(model_parameters, self.args.max_grad_norm)

    def _get_grad_norm(self, model: nn.Module, grad_norm: Any = None) -> Any:
        """The logged ``grad_norm`` is the model's (without the estimator's fitting gradient)."""
        split = self._knife_split_parameters(model)
        if grad_norm is None and split is not None:
            grad_norm = self.accelerator.clip_grad_norm_(split[0], float("inf"))
        return super()._get_grad_norm(model, grad_norm=grad_norm)

    def create_scheduler(
        self, num_training_steps: int, optimizer: torch.optim.Optimizer | None = None
    ) -> Any:
        """Trainer's schedule for the model; a constant learning rate for the estimator."""
        scheduler = super().create_scheduler(num_training_steps, optimizer)
        if isinstance(scheduler, torch.optim.lr_scheduler.LambdaLR):
            for i, group in enumerate(scheduler.optimizer.param_groups):
                if group.get("knife_estimator"):
                    scheduler.lr_lambdas[i] = _constant_lr
                    group["lr"] = group["initial_lr"]
                    scheduler._last_lr[i] = group["lr"]
        return scheduler

    # ------------------------------------------------------------------ estimator initialisation
    def train(self, resume_from_checkpoint: str | bool | None = None, *args: Any, **kwargs: Any) -> Any:
        """As ``Trainer.train``; ``resume_from_checkpoint=True`` takes the newest *complete* checkpoint."""
        resume_from_checkpoint = self._resolve_resume_checkpoint(resume_from_checkpoint)
        knife = get_knife_module(self.model)
        if (
            knife is not None
            and knife.config.init_from_data
            and not resume_from_checkpoint
            and not bool(knife.initialized)
            and self.train_dataset is not None
        ):
            self.initialize_estimator()
        return super().train(resume_from_checkpoint, *args, **kwargs)

    @torch.no_grad()
    def initialize_estimator(self) -> None:
        """Put the estimator at the representations of the first ``init_num_samples`` training examples.

        The examples are taken in dataset order, so every process, accumulation setting and resumed run starts
        from the same estimator.
        """
        import datasets

        config, knife = self.knife_config, get_knife_module(self.model)
        dataset, n = self.train_dataset, config.init_num_samples
        if isinstance(dataset, datasets.Dataset):
            subset = self._remove_unused_columns(dataset.select(range(min(n, len(dataset)))), description="knife init")
        elif isinstance(dataset, datasets.IterableDataset):  # streamed: its first n examples
            subset = list(self._remove_unused_columns(dataset.take(n), description="knife init"))
        elif isinstance(dataset, torch.utils.data.IterableDataset):
            subset = list(itertools.islice(iter(dataset), n))
        else:
            subset = Subset(dataset, range(min(n, len(dataset))))
        loader = DataLoader(
            subset, batch_size=self.args.per_device_eval_batch_size, collate_fn=self.data_collator
        )
        model = self.accelerator.unwrap_model(self.model)
        if hasattr(model, "get_base_model"):
            model = model.get_base_model()
        if not isinstance(model, KNIFEModelMixin):
            raise TypeError(f"{type(model).__name__} has no KNIFE penalty")
        was_training = model.training
        model.eval()
        with torch.random.fork_rng(devices=[self.args.device] if self.args.device.type == "cuda" else []):
            self._knife_initialize_at(model, loader, config, knife)
        model.train(was_training)

    def _knife_initialize_at(self, model: nn.Module, loader: DataLoader, config: KNIFEConfig, knife: Any) -> None:
        """Collect the features of ``loader`` and initialise the estimator (inside a forked RNG: training then
        draws the same random numbers as a plain Trainer's)."""
        features, sensitive = [], []
        for batch in loader:
            batch = self._prepare_inputs(batch)
            s = batch.pop(config.sensitive_column, None) if config.sensitive_column else None
            with self.compute_loss_context_manager():
                features.append(model.knife_features(**batch).float())
            if config.needs_sensitive:
                sensitive.append(s)
        try:
            knife.init_from_samples(torch.cat(features), torch.cat(sensitive) if sensitive else None)
        except FloatingPointError as error:
            raise FloatingPointError(
                f"while initialising the KNIFE estimator from the first {len(loader.dataset)} training examples "
                f"(before step 0): {error}"
            ) from error

    # ------------------------------------------------------------------ resuming after a kill (see checkpoints.py)
    def _resolve_resume_checkpoint(self, resume_from_checkpoint: str | bool | None) -> str | bool | None:
        """Turn ``True`` into the newest *complete* checkpoint of ``output_dir``; anything else passes through.

        transformers' ``get_last_checkpoint`` takes the highest-numbered folder even when the run was killed while
        writing it (``trainer_state.json`` is written last), and ``train`` then crashes. Newer incomplete folders
        are skipped with a warning naming them; none complete raises ``ValueError`` as ``Trainer`` does.
        """
        return resolve_resume_checkpoint(
            resume_from_checkpoint,
            self.args.output_dir,
            require_training_state=not self.args.save_only_model,
            stacklevel=3,  # the caller of train()
        )

    # ------------------------------------------------------------------ saving and the Hub
    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        super()._save(output_dir, state_dict)
        if self.knife_config is not None and self.args.should_save:
            self.knife_config.save_pretrained(output_dir if output_dir is not None else self.args.output_dir)

    def _push_from_checkpoint(self, checkpoint_folder: str) -> None:
        source = os.path.join(checkpoint_folder, KNIFE_CONFIG_NAME)
        if self.is_world_process_zero() and os.path.isfile(source):
            os.makedirs(self.args.output_dir, exist_ok=True)
            shutil.copy(source, os.path.join(self.args.output_dir, KNIFE_CONFIG_NAME))
        super()._push_from_checkpoint(checkpoint_folder)

    def create_model_card(self, *args: Any, tags: str | list[str] | None = None, **kwargs: Any) -> None:
        """Trainer's card plus the KNIFE tags, a ``knife_config`` metadata entry, the config and the citation."""
        if self.knife_config is None:
            return super().create_model_card(*args, tags=tags, **kwargs)
        tags = [tags] if isinstance(tags, str) else list(tags or [])
        for tag in [*KNIFE_TAGS, self.knife_config.penalty.replace("_", "-")]:
            if tag not in tags:
                tags.append(tag)
        super().create_model_card(*args, tags=tags, **kwargs)
        if not self.is_world_process_zero():
            return
        from huggingface_hub import ModelCard

        path = os.path.join(self.args.output_dir, "README.md")
        card = ModelCard.load(path)
        card.data.tags = sorted(set(card.data.tags or []) | set(tags))
        card.data["knife_config"] = self.knife_config.to_dict()
        card.text += (
            "\n## KNIFE penalty\n\nTrained with hf_knife and this KNIFE configuration "
            f"(also in `{KNIFE_CONFIG_NAME}`):\n\n```json\n{json.dumps(self.knife_config.to_dict(), indent=2)}\n```\n"
        )
        if self.knife_model_card_extra:
            card.text += "\n" + self.knife_model_card_extra.strip() + "\n"
        card.text += f"\n## Citation\n\n```bibtex\n{KNIFE_CITATION}\n```\n"
        card.save(path)
