"""Model mixins: a KNIFE penalty as a submodule of any ``AutoModelFor*``, computed inside ``forward``.

Computing the penalty inside the model's forward keeps one forward and one backward per step, so gradient
accumulation, bf16 autocast, checkpoints and DDP (with Trainer's default flags) all work unchanged.

    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2)
    model = add_knife(model, KNIFEConfig(penalty="mutual_information", num_sensitive_classes=2))
    out = model(input_ids=..., attention_mask=..., labels=y, sensitive=s)   # out.loss = task + lam * I_hat
    model.save_pretrained(folder)        # weights (estimator included), config.json, knife_config.json
    AutoKNIFEModelForSequenceClassification.from_pretrained(folder)          # back with its estimator
    AutoModelForSequenceClassification.from_pretrained(folder)               # or as the plain model
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import os
import sys
from typing import Any

import torch
from torch import Tensor, nn
from transformers import AutoConfig, AutoModelForSequenceClassification, PreTrainedModel
from transformers.utils import ModelOutput

from .budget import BudgetController
from .config import KNIFE_CONFIG_NAME, KNIFEConfig
from .penalties import GaussianHead, KNIFEPenalty, build_penalty, penalty_metric_names
from .representation import Representation, attention_mask_of

__all__ = [
    "AutoKNIFEModelForSequenceClassification",
    "KNIFEModelMixin",
    "add_knife",
    "find_knife_config",
    "get_knife_module",
    "knife_model_class",
    "knife_output_fields",
]


def knife_output_fields() -> tuple[str, ...]:
    """Scalar fields added to the model output (``None`` when the penalty did not run): ``knife_loss`` and
    ``knife_<metric>`` for every metric a registered penalty declares."""
    return ("knife_loss", *(f"knife_{name}" for name in penalty_metric_names()))


KNIFE_TAGS = ["knife", "hf_knife"]


def _unwrap_modules_to_save(module: nn.Module) -> nn.Module:
    """The active copy of a PEFT ``ModulesToSaveWrapper`` (the module itself otherwise)."""
    copies = getattr(module, "modules_to_save", None)
    if isinstance(copies, nn.ModuleDict) and hasattr(module, "original_module"):
        active = [name for name in getattr(module, "active_adapters", []) if name in copies]
        if getattr(module, "disable_adapters", False) or not active:
            return module.original_module
        return copies[active[0]]
    return module


def get_knife_module(model: nn.Module) -> KNIFEPenalty | None:
    """The penalty module of a KNIFE model, through DDP / PEFT wrappers; None for a plain model."""
    while hasattr(model, "module") and isinstance(model.module, nn.Module):  # DDP and friends
        model = model.module
    if hasattr(model, "get_base_model"):  # PEFT
        model = model.get_base_model()
    knife = getattr(model, "knife", None)
    return _unwrap_modules_to_save(knife) if isinstance(knife, nn.Module) else None


class KNIFEModelMixin:
    """Mixed in before a ``PreTrainedModel`` subclass by :func:`knife_model_class`.

    Adds the ``knife`` submodule (a :class:`~hf_knife.penalties.KNIFEPenalty`), the ``sensitive=`` keyword of
    ``forward`` (``[B]`` class ids or ``[B, c]`` floats), the ``knife_*`` output fields, estimator initialisation
    in ``_init_weights``, and ``knife_config.json`` in ``save_pretrained``.
    """

    knife: nn.Module
    config: Any

    def _knife_attach(self, knife_config: KNIFEConfig) -> None:
        knife_config.validate()
        options = knife_config.mutual_information
        if options.given == "labels" and options.num_label_classes is None:  # I(Z;S|Y): the task's classes
            num_labels = getattr(self.config, "num_labels", None)
            if not num_labels or num_labels < 2:
                raise ValueError(
                    f"mutual_information.given='labels' needs a classifier: {type(self).__name__} has num_labels="
                    f"{num_labels}; set mutual_information.num_label_classes"
                )
            knife_config = dataclasses.replace(
                knife_config, mutual_information=dataclasses.replace(options, num_label_classes=num_labels)
            )
        self.knife_representation = Representation.from_config(self, knife_config)
        rep = self.knife_representation
        if rep.dim is None:
            raise ValueError(
                f"the dimension of Z ({rep.description}) is unknown: {type(self).__name__}'s config has no hidden_size; "
                "set module_name to a module ending in an nn.Linear"
            )
        self.knife = build_penalty(knife_config, rep.dim, source=f"{rep.description} of {type(self).__name__}")
        self.add_model_tags(KNIFE_TAGS + [knife_config.penalty.replace("_", "-")])

    @property
    def knife_module(self) -> KNIFEPenalty:
        return _unwrap_modules_to_save(self.knife)

    @property
    def knife_config(self) -> KNIFEConfig:
        return self.knife_module.config

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)  # type: ignore[misc]
        if isinstance(module, (KNIFEPenalty, GaussianHead, BudgetController)):  # after its children: undo generic init
            module.reset_parameters()

    def save_pretrained(self, save_directory: str | os.PathLike, *args: Any, **kwargs: Any) -> Any:
        result = super().save_pretrained(save_directory, *args, **kwargs)  # type: ignore[misc]
        if kwargs.get("is_main_process", True):
            self.knife_config.save_pretrained(save_directory)
        return result

    @torch.no_grad()
    def knife_features(self, *args: Any, **kwargs: Any) -> Tensor:
        """Run the model and return the raw representation ``[B, hidden]`` (no penalty, no stochastic head)."""
        kwargs.pop("sensitive", None)
        with self.knife_representation.capture(self, self._knife_attention_mask(args, kwargs)) as capture:
            self._knife_parent_forward(*args, **kwargs)
        return capture.features

    def _knife_attention_mask(self, args: tuple, kwargs: dict) -> Tensor | None:
        return attention_mask_of(self._knife_parent_forward, args, kwargs)

    def _knife_forward(self, args: tuple, kwargs: dict, sensitive: Tensor | None) -> Any:
        knife = self.knife_module
        mask = self._knife_attention_mask(args, kwargs)
        with self.knife_representation.capture(self, mask, getattr(knife, "transform", None)) as capture:
            outputs = self._knife_parent_forward(*args, **kwargs)
        if capture.features is None:
            raise RuntimeError(
                f"the representation source ({knife.source}) was not called during the forward pass"
            )
        needs_labels = getattr(knife, "needs_labels", False)
        if not self.training and knife.config.needs_sensitive and (
            sensitive is None or (needs_labels and kwargs.get("labels") is None)
        ):
            return outputs  # inference without S (or without the labels I(Z;S|Y) needs): no penalty
        extra = {**capture.extra, "labels": kwargs.get("labels")} if needs_labels else capture.extra
        penalty = self.knife(capture.features, sensitive, **extra)
        fields = knife_output_fields()
        values = {f"knife_{k}": v for k, v in penalty.metrics.items() if f"knife_{k}" in fields}
        values["knife_loss"] = penalty.loss.detach()
        if isinstance(outputs, ModelOutput):
            loss = outputs.get("loss")
            loss = penalty.loss if loss is None and self.training else loss
            if loss is not None and outputs.get("loss") is not None:
                loss = outputs["loss"] + penalty.loss
            output_cls = _knife_output_class(type(outputs), fields)
            return output_cls(**{**outputs, "loss": loss, **values})
        if kwargs.get("labels") is not None:  # tuple output: (loss, logits, ...)
            return (outputs[0] + penalty.loss, *outputs[1:])
        return outputs


@functools.cache
def _knife_output_class(base: type, names: tuple[str, ...]) -> type:
    """``base`` (a ModelOutput dataclass) plus the fields ``names``, all defaulting to None."""
    fields = [(name, Tensor | None, dataclasses.field(default=None)) for name in names]
    return dataclasses.make_dataclass(
        f"KNIFE{base.__name__}", fields, bases=(base,), namespace={"__module__": __name__}
    )


def _make_forward(parent: Any) -> Any:
    @functools.wraps(parent)
    def forward(self: KNIFEModelMixin, *args: Any, sensitive: Tensor | None = None, **kwargs: Any) -> Any:
        return self._knife_forward(args, kwargs, sensitive)

    signature = inspect.signature(parent)
    params = list(signature.parameters.values())
    new = inspect.Parameter(
        "sensitive", inspect.Parameter.KEYWORD_ONLY, default=None, annotation="Tensor | None"
    )
    index = next((i for i, p in enumerate(params) if p.kind == inspect.Parameter.VAR_KEYWORD), len(params))
    params.insert(index, new)
    forward.__signature__ = signature.replace(
        parameters=params
    )  # keeps Trainer's column and label inspection
    forward.__doc__ = (
        parent.__doc__ or ""
    ) + "\n\nsensitive: the sensitive variable S for the KNIFE penalty."
    return forward


_CLASSES: dict[type, type] = {}


#: Weights saved by hf_knife 0.1 (before the penalty owned a standardiser and an inner fitter) -> today's names;
#: ``from_pretrained`` renames them (transformers' ``key_mapping``), so older checkpoints keep their estimator state.
LEGACY_STATE_KEYS = {
    r"knife\.feature_mean$": "knife.standardizer.mean",
    r"knife\.feature_var$": "knife.standardizer.var",
    r"knife\.inner_state\.": "knife.fitter.",
}


def find_knife_config(
    path: str | os.PathLike, hub_kwargs: dict[str, Any] | None = None, config: Any = None
) -> KNIFEConfig | None:
    """The ``knife_config.json`` beside the weights at ``path`` (a folder or a Hub id), else the ``knife`` entry of
    an hf_knife 0.1 ``config`` (model config); None when there is neither."""
    return _knife_config_file(path, hub_kwargs or {}) or _legacy_knife_config(config)


def _knife_config_file(path: str | os.PathLike, hub_kwargs: dict[str, Any]) -> KNIFEConfig | None:
    folder = str(path)
    if os.path.isdir(folder):
        local = os.path.join(folder, KNIFE_CONFIG_NAME)
        return KNIFEConfig.from_pretrained(local) if os.path.isfile(local) else None
    keys = ("revision", "cache_dir", "token", "local_files_only", "subfolder")
    try:
        return KNIFEConfig.from_pretrained(folder, **{k: hub_kwargs[k] for k in keys if k in hub_kwargs})
    except OSError:  # not on the Hub, or offline: the caller says what is missing
        return None


def _legacy_knife_config(config: Any) -> KNIFEConfig | None:
    """The KNIFE config that hf_knife < 0.2 stored inside ``config.json`` (a ``knife`` entry), if any."""
    values = getattr(config, "knife", None)
    return KNIFEConfig.from_dict(values) if values else None


def knife_model_class(base_cls: type[PreTrainedModel]) -> type:
    """The KNIFE subclass of a model class, e.g. ``KNIFEBertForSequenceClassification`` (cached).

    ``__init__(config, knife_config=...)``; ``from_pretrained(path)`` reads the ``knife_config.json`` saved beside
    the weights (or the ``knife`` entry of an older ``config.json``).
    """
    if issubclass(base_cls, KNIFEModelMixin):
        return base_cls
    if base_cls in _CLASSES:
        return _CLASSES[base_cls]

    def __init__(self, config: Any, *args: Any, knife_config: KNIFEConfig | None = None, **kwargs: Any) -> None:
        base_cls.__init__(self, config, *args, **kwargs)
        knife_config = knife_config if knife_config is not None else _legacy_knife_config(config)
        if knife_config is None:
            raise ValueError(
                f"{type(self).__name__} needs knife_config=KNIFEConfig(...) (from_pretrained reads the "
                f"{KNIFE_CONFIG_NAME} saved beside the weights)"
            )
        self._knife_attach(knife_config)

    def from_pretrained(cls: type, path: str | os.PathLike, *args: Any, knife_config: KNIFEConfig | None = None,
                        **kwargs: Any) -> PreTrainedModel:  # fmt: skip
        """``from_pretrained`` of the base class, with the ``knife_config.json`` found beside the weights."""
        if knife_config is None:
            knife_config = _knife_config_file(path, kwargs)
        if knife_config is not None:
            kwargs["knife_config"] = knife_config
        kwargs["key_mapping"] = {**LEGACY_STATE_KEYS, **(kwargs.get("key_mapping") or {})}
        return super(new_cls, cls).from_pretrained(path, *args, **kwargs)

    namespace = {
        "__init__": __init__,
        "from_pretrained": classmethod(from_pretrained),
        "forward": _make_forward(base_cls.forward),
        "_knife_parent_forward": base_cls.forward,
        "__doc__": f"{base_cls.__name__} with a KNIFE penalty computed inside forward (see KNIFEModelMixin).",
    }
    new_cls = derived_model_class("KNIFE", KNIFEModelMixin, base_cls, namespace, fp32_module="knife")
    _CLASSES[base_cls] = new_cls
    return new_cls


def derived_model_class(prefix: str, mixin: type, base_cls: type, namespace: dict[str, Any], fp32_module: str) -> type:
    """``<prefix><Base>``: ``mixin`` mixed in before ``base_cls`` with the attributes ``namespace``; the submodule
    ``fp32_module`` stays in fp32 when the model is loaded in another dtype. The class is registered in the mixin's
    module under its name, so models pickle by name."""
    strict = set(getattr(base_cls, "_keep_in_fp32_modules_strict", None) or []) | {fp32_module}
    namespace = {**namespace, "_keep_in_fp32_modules_strict": sorted(strict), "__module__": mixin.__module__}
    cls = type(f"{prefix}{base_cls.__name__}", (mixin, base_cls), namespace)
    setattr(sys.modules[mixin.__module__], cls.__name__, cls)
    return cls


def add_knife(model: PreTrainedModel, knife_config: KNIFEConfig) -> PreTrainedModel:
    """Turn ``model`` into its KNIFE subclass in place and attach the penalty (on the model's device; fp32, or fp64
    for a float64 model; never half precision).

    Call it before ``peft.get_peft_model`` and pass ``modules_to_save=["knife"]`` to the PEFT config.
    """
    if hasattr(model, "get_base_model"):
        raise TypeError(
            "add_knife needs the plain model: call it before get_peft_model(..., modules_to_save=['knife'])"
        )
    if isinstance(model, KNIFEModelMixin):
        raise ValueError(f"{type(model).__name__} already has a KNIFE penalty ({model.knife_config.penalty})")
    model.__class__ = knife_model_class(type(model))
    model._knife_attach(knife_config)
    reference = next(model.parameters())
    model.knife.to(device=reference.device, dtype=torch.promote_types(reference.dtype, torch.float32))
    return model


class AutoKNIFEModelForSequenceClassification:
    """``AutoModelForSequenceClassification`` with a KNIFE penalty (any architecture the Auto class knows)."""

    @staticmethod
    def _class_for(config: Any) -> type:
        return knife_model_class(AutoModelForSequenceClassification._model_mapping[type(config)])

    @classmethod
    def from_config(cls, config: Any, knife_config: KNIFEConfig | None = None, **kwargs: Any) -> PreTrainedModel:
        """A freshly initialised model with the penalty of ``knife_config``."""
        return cls._class_for(config)(config, knife_config=knife_config, **kwargs)

    @classmethod
    def from_pretrained(
        cls, path: str | os.PathLike, knife_config: KNIFEConfig | None = None, **kwargs: Any
    ) -> PreTrainedModel:
        """Load a KNIFE model (estimator included), or a plain checkpoint plus ``knife_config`` (fresh estimator)."""
        config = kwargs.pop("config", None)
        if config is None:
            config, kwargs = AutoConfig.from_pretrained(path, return_unused_kwargs=True, **kwargs)
        knife_config = knife_config or find_knife_config(path, kwargs, config)
        if knife_config is None:
            raise ValueError(f"{path} has no KNIFE configuration ({KNIFE_CONFIG_NAME}): pass knife_config=KNIFEConfig(...)")
        return cls._class_for(config).from_pretrained(path, config=config, knife_config=knife_config, **kwargs)
