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
import json
import os
import shutil
import typing
from collections import defaultdict
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Subset
from transformers import Trainer, TrainerCallback, TrainingArguments

from .config import KNIFE_CONFIG_NAME, KNIFEConfig
from .distributed import check_launch
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
            self._knife_check_dataset(knife_config, bound.get("train_dataset"))
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
    def _knife_check_dataset(config: KNIFEConfig, dataset: Any) -> None:
        column = config.sensitive_column
        if not config.needs_sensitive:
            return
        if column is None:
            raise ValueError(
                "the mutual_information penalty needs sensitive_column (the dataset column holding S)"
            )
        names = getattr(dataset, "column_names", None)
        if names is not None and column not in names:
            raise ValueError(
                f"sensitive column {column!r} is not in the training dataset; its columns are: {', '.join(names)}"
            )
        if names is not None and config.sensitive_type == "discrete":
            values = torch.as_tensor(dataset.with_format("numpy")[column])
            if torch.is_floating_point(values) and not bool((values == values.round()).all()):
                raise ValueError(
                    f"sensitive column {column!r} holds non-integer values (e.g. {values[values != values.round()][0]}); "
                    "use integer class ids, or sensitive_type='continuous'"
                )
            if values.numel() and int(values.min()) < 0:
                raise ValueError(
                    f"sensitive column {column!r} holds negative class ids ({int(values.min())})"
                )
            if (
                config.num_sensitive_classes is not None
                and values.numel()
                and int(values.max()) >= config.num_sensitive_classes
            ):
                raise ValueError(
                    f"sensitive column {column!r} holds class id {int(values.max())}, expected ids in "
                    f"[0, {config.num_sensitive_classes - 1}] (num_sensitive_classes={config.num_sensitive_classes})"
                )

    @staticmethod
    def _knife_infer_classes(config: KNIFEConfig, dataset: Any) -> KNIFEConfig:
        """Fill ``num_sensitive_classes`` from a ClassLabel feature or the largest id in the column."""
        if not config.needs_sensitive or config.sensitive_type != "discrete" or config.num_sensitive_classes:
            return config
        features = getattr(dataset, "features", None)
        column = config.sensitive_column
        feature = features.get(column) if features is not None else None
        if feature is not None and hasattr(feature, "num_classes"):
            num_classes = feature.num_classes
        elif getattr(dataset, "column_names", None) is not None:
            num_classes = int(torch.as_tensor(dataset.with_format("numpy")[column]).max()) + 1
        else:
            raise ValueError("set num_sensitive_classes: it cannot be inferred from this training dataset")
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
        dataset = self.train_dataset
        n = min(config.init_num_samples, len(dataset))
        if isinstance(dataset, datasets.Dataset):
            subset = self._remove_unused_columns(dataset.select(range(n)), description="knife init")
        else:
            subset = Subset(dataset, range(n))
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
        features, sensitive = [], []
        for batch in loader:
            batch = self._prepare_inputs(batch)
            s = batch.pop(config.sensitive_column, None) if config.sensitive_column else None
            with self.compute_loss_context_manager():
                features.append(model.knife_features(**batch).float())
            if config.needs_sensitive:
                sensitive.append(s)
        model.train(was_training)
        knife.init_from_samples(torch.cat(features), torch.cat(sensitive) if sensitive else None)

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
