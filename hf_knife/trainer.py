"""KNIFETrainer and KNIFETrainingArguments: a drop-in ``Trainer`` with a KNIFE penalty on hidden states.

    trainer = KNIFETrainer(model=model, args=args, train_dataset=train, knife_config=KNIFEConfig(
        penalty="mutual_information", weight=1.0, sensitive_column="gender"))

The penalty is computed inside the model's forward (see :mod:`hf_knife.modeling`); the trainer keeps the
sensitive column, passes it as ``sensitive=``, gives the estimator its own optimizer group, initialises the
estimator at data before training, logs ``knife/*`` scalars, and saves ``knife_config.json``. Without a
``knife_config`` it behaves as ``Trainer`` (with the gradient-accumulation loss scaling fixed, see ``model_accepts_loss_kwargs`` below).
"""

from __future__ import annotations

import dataclasses
import inspect
import itertools
import json
import os
import shutil
from collections import defaultdict
from typing import Any, Literal

import torch
from torch import nn
from torch.utils.data import DataLoader, Subset
from transformers import Trainer, TrainerCallback, TrainingArguments

from .checkpoints import resolve_resume_checkpoint
from .columns import check_sensitive_column, check_task_labels, column_names, count_classes, dataset_length
from .config import FLAT_KEYS, KNIFE_CONFIG_NAME, OPTION_GROUPS, KNIFEConfig
from .distributed import check_gather, check_launch
from .modeling import KNIFE_TAGS, KNIFEModelMixin, add_knife, get_knife_module, knife_output_fields

__all__ = ["KNIFE_CITATION", "KNIFETrainer", "KNIFETrainingArguments"]

KNIFE_CITATION = """@inproceedings{pichler2022knife,
  title     = {A Differential Entropy Estimator for Training Neural Networks},
  author    = {Pichler, Georg and Colombo, Pierre and Boudiaf, Malik and Koliander, G{\\\"u}nther and Piantanida, Pablo},
  booktitle = {Proceedings of the 39th International Conference on Machine Learning},
  year      = {2022},
  note      = {arXiv:2202.06618}
}"""


# --------------------------------------------------------------------------- arguments
def _option(name: str, group: str | None = None) -> Any:
    """A ``knife_<name>`` field with the default and help of KNIFEConfig's field ``name`` (or of the option ``name``
    of the nested options ``group``)."""
    owner = OPTION_GROUPS[group] if group else KNIFEConfig
    f = next(f for f in dataclasses.fields(owner) if f.name == name)
    metadata = {"help": f"KNIFE{' ' + group if group else ''}: " + f.metadata.get("help", "")}
    if f.default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=f.default_factory, metadata=metadata)
    return dataclasses.field(default=f.default, metadata=metadata)


def _flat(key: str) -> Any:
    return _option(FLAT_KEYS[key][1], FLAT_KEYS[key][0])


@dataclasses.dataclass
class KNIFETrainingArguments(TrainingArguments):
    """``TrainingArguments`` plus one ``knife_<option>`` per KNIFEConfig option (``--knife_penalty ...`` on the
    command line); :meth:`to_knife_config` builds the config. The nested options keep flat names
    (``--knife_discrete_fit`` is ``mutual_information.fit``, see ``hf_knife.config.FLAT_KEYS``)."""

    knife_penalty: str | None = dataclasses.field(
        default=None, metadata={"help": "KNIFE: the penalty (None: plain Trainer). " + _option("penalty").metadata["help"]}
    )
    knife_weight: float = _option("weight")
    knife_target: float | None = _option("target")
    knife_representation: str = _option("representation")
    knife_module_name: str | None = _option("module_name")
    knife_layer: int | None = _option("layer")
    knife_sensitive_column: str | None = _option("sensitive_column")
    knife_sensitive_type: Literal["discrete", "continuous"] = _option("sensitive_type")
    knife_num_sensitive_classes: int | None = _option("num_sensitive_classes")
    knife_sensitive_dim: int = _option("sensitive_dim")
    knife_num_components: int = _option("num_components")
    knife_covariance: Literal["shared_diagonal", "diagonal", "full", "low_rank"] = _option("covariance")
    knife_rank: int | None = _option("rank")
    knife_hidden_dims: list[int] = _option("hidden_dims")
    knife_bandwidth_bounds: list[float] | None = _option("bandwidth_bounds")
    knife_projection_dim: int | None = _option("projection_dim")
    knife_estimator_lr: float = _option("estimator_lr")
    knife_inner_steps: int = _option("inner_steps")
    knife_warmup_steps: int = _option("warmup_steps")
    knife_anneal_steps: int = _option("anneal_steps")
    knife_standardize: bool = _option("standardize")
    knife_init_from_data: bool = _option("init_from_data")
    knife_init_num_samples: int = _option("init_num_samples")
    knife_gather_features: bool = _option("gather_features")
    knife_check_finite: bool = _option("check_finite")
    knife_discrete_marginal: Literal["mixture", "kernel"] = _flat("discrete_marginal")
    knife_discrete_fit: Literal["likelihood", "posterior"] = _flat("discrete_fit")
    knife_positive_part: bool = _flat("positive_part")
    knife_entropy_direction: Literal["lower", "raise"] = _flat("entropy_direction")
    knife_ib_estimator: Literal["knife", "vib"] = _flat("ib_estimator")
    knife_ib_init_sigma: float = _flat("ib_init_sigma")
    knife_budget_rate: float = _flat("budget_rate")
    knife_budget_smoothing: float = _flat("budget_smoothing")
    knife_ib_marginal: Literal["kernel", "memory"] = _flat("ib_marginal")
    knife_ib_memory_size: int = _flat("ib_memory_size")
    knife_ib_head_lr: float | None = _flat("ib_head_lr")
    knife_mi_calibrate: bool = _flat("mi_calibrate")
    knife_mi_given: Literal["nothing", "labels"] = _flat("mi_given")
    knife_mi_num_label_classes: int | None = _flat("mi_num_label_classes")

    def to_knife_config(self) -> KNIFEConfig | None:
        """The KNIFEConfig described by the ``knife_*`` arguments, or None when ``knife_penalty`` is unset."""
        if self.knife_penalty is None:
            return None
        groups: dict[str, dict[str, Any]] = {name: {} for name in OPTION_GROUPS}
        for key, (group, option) in FLAT_KEYS.items():
            groups[group][option] = getattr(self, f"knife_{key}")
        values = {f.name: getattr(self, f"knife_{f.name}") for f in dataclasses.fields(KNIFEConfig) if f.name not in groups}
        return KNIFEConfig(**values, **{name: OPTION_GROUPS[name](**options) for name, options in groups.items()})


def _constant_lr(step: int) -> float:
    return 1.0


class _StepCallback(TrainerCallback):
    """Drives the penalty's step protocol on every process: ``begin_step(global_step)`` before an optimizer step's
    forwards, ``end_step()`` (inner fitting steps, running statistics, budget) after the optimizer."""

    def __init__(self, trainer: Trainer) -> None:
        self.trainer = trainer

    def on_step_begin(self, args: TrainingArguments, state: Any, control: Any, **kwargs: Any) -> None:
        knife = get_knife_module(self.trainer.model)
        if knife is not None:
            knife.begin_step(state.global_step)

    def on_step_end(self, args: TrainingArguments, state: Any, control: Any, **kwargs: Any) -> None:
        knife = get_knife_module(self.trainer.model)
        if knife is not None:
            knife.end_step()


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
        # the loss by the accumulation steps and process count: turn that off.
        self.model_accepts_loss_kwargs = False
        if knife_config is not None:
            check_gather(knife_config.gather_features, self.args.world_size)
        self._knife_metrics: dict[str, dict[str, list[torch.Tensor]]] = {
            "train": defaultdict(list),
            "eval": defaultdict(list),
        }
        knife = get_knife_module(self.model)
        if knife is not None:
            self.add_callback(_StepCallback(self))
        estimator = list(knife.estimator.parameters()) if knife is not None else []
        if estimator and not any(p.requires_grad for p in estimator):
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
        if dataset_length(dataset) == 0:
            raise ValueError(
                f"the training dataset is empty (0 examples, {type(dataset).__name__}): KNIFETrainer needs training "
                "examples to train on and to initialise the KNIFE estimator from"
            )
        names = column_names(dataset)
        if config.needs_sensitive:
            check_sensitive_column(config, dataset, names)
        if model is not None:
            check_task_labels(model, dataset, names, label_names)

    @staticmethod
    def _knife_infer_classes(config: KNIFEConfig, dataset: Any) -> KNIFEConfig:
        """Fill ``num_sensitive_classes`` from a ClassLabel feature or the largest id in the column."""
        if not config.needs_sensitive or config.sensitive_type != "discrete" or config.num_sensitive_classes:
            return config
        column = config.sensitive_column
        num_classes = count_classes(dataset, column)
        if num_classes is None:
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
        loss, outputs = super().compute_loss(
            model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch
        )
        if isinstance(outputs, dict):
            metrics = self._knife_metrics["train" if model.training else "eval"]
            for name in knife_output_fields():
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
        ignore_keys = [*ignore_keys, *knife_output_fields(), "hidden_states", "attentions"]
        return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys=ignore_keys)

    # ------------------------------------------------------------------ optimizer and scheduler
    def create_optimizer(self, model: nn.Module | None = None) -> torch.optim.Optimizer:
        """Trainer's groups, minus the penalty's own groups (:meth:`KNIFEPenalty.optimizer_groups`: the estimator, own
        lr and no weight decay; the bottleneck head's noise scale with ``head_lr``), plus those groups."""
        optimizer = super().create_optimizer(model)
        knife = get_knife_module(self.model)
        if knife is None or any(group.get("knife_estimator") for group in optimizer.param_groups):
            return optimizer
        groups = knife.optimizer_groups()
        ids = {id(p) for group in groups for p in group["params"]}
        for group in optimizer.param_groups:
            group["params"] = [p for p in group["params"] if id(p) not in ids]
        for group in groups:
            optimizer.add_param_group(group)
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
        features, sensitive, labels = [], [], []
        needs_labels = getattr(knife, "needs_labels", False)
        for batch in loader:
            batch = self._prepare_inputs(batch)
            s = batch.pop(config.sensitive_column, None) if config.sensitive_column else None
            with self.compute_loss_context_manager():
                features.append(model.knife_features(**batch).float())
            if config.needs_sensitive:
                sensitive.append(s)
            if needs_labels:
                labels.append(batch.get("labels"))
        extra = {"labels": torch.cat(labels) if None not in labels else None} if needs_labels else {}
        try:
            knife.init_from_samples(torch.cat(features), torch.cat(sensitive) if sensitive else None, **extra)
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
