"""Representation: where a model's Z is read and how it is pooled, resolved once when a penalty is attached.

Kinds (``KNIFEConfig.representation``; pooling rules registered in :data:`~hf_knife.registry.REPRESENTATION_REGISTRY`):

- ``"cls"``: token 0 of a ``[B, T, d]`` source (the last transformer layer by default, ``layer`` picks another);
- ``"mean"``: the mean over the attention mask of the same source;
- ``"pooler"``: the output ``[B, d]`` of the base model's pooler;
- ``"module"``: the ``[B, d]`` output of the submodule named ``module_name``.

Z is read by a forward hook on the source module (:meth:`Representation.capture`), which may also *replace* the
pooled part of the module's output (the stochastic head of the information bottleneck), so that the classifier reads
the transformed representation. :func:`extract_features` runs a model over a data loader and stacks Z.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from .registry import REPRESENTATION_REGISTRY

if TYPE_CHECKING:
    from .config import KNIFEConfig

__all__ = ["FeatureCapture", "Representation", "attention_mask_of", "extract_features", "num_transformer_layers"]

#: ``transform(pooled [B, d])`` -> new features ``[B, d]``, or ``(new features, extra)`` where ``extra`` (a dict of
#: tensors) is handed to the penalty with the features.
Transform = Callable[[Tensor], "Tensor | tuple[Tensor, dict[str, Tensor]]"]


# --------------------------------------------------------------------------- pooling rules
@REPRESENTATION_REGISTRY.register("cls")
def pool_cls(hidden: Tensor, attention_mask: Tensor | None) -> Tensor:
    """``[B, T, d] -> [B, d]``: the first token."""
    _check_rank(hidden, 3, "cls")
    return hidden[:, 0]  # [B, d]


@REPRESENTATION_REGISTRY.register("mean")
def pool_mean(hidden: Tensor, attention_mask: Tensor | None) -> Tensor:
    """``[B, T, d] -> [B, d]``: mean over the positions where ``attention_mask`` is 1 (all when None)."""
    _check_rank(hidden, 3, "mean")
    if attention_mask is None:
        return hidden.mean(1)  # [B, d]
    mask = attention_mask[:, : hidden.shape[1]].to(hidden.dtype).unsqueeze(-1)  # [B, T, 1]
    return (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)  # [B, d]


@REPRESENTATION_REGISTRY.register("pooler")
def pool_identity(hidden: Tensor, attention_mask: Tensor | None) -> Tensor:
    """``[B, d] -> [B, d]``: the source already is one vector per example."""
    _check_rank(hidden, 2, "pooler/module")
    return hidden


REPRESENTATION_REGISTRY.register("module")(pool_identity)


def _check_rank(hidden: Tensor, rank: int, name: str) -> None:
    if hidden.dim() != rank:
        hint = "use representation='cls' or 'mean' for [B, T, d] outputs" if hidden.dim() == 3 else ""
        raise ValueError(
            f"representation {name!r} expects a tensor of rank {rank} from its source module, got shape "
            f"{tuple(hidden.shape)}. {hint}"
        )


def attention_mask_of(forward: Callable, args: tuple, kwargs: dict) -> Tensor | None:
    """The ``attention_mask`` of a call ``forward(*args, **kwargs)`` (by keyword or position), None if absent."""
    if "attention_mask" in kwargs:
        return kwargs["attention_mask"]
    names = list(inspect.signature(forward).parameters)
    if "attention_mask" in names and names.index("attention_mask") < len(args):
        return args[names.index("attention_mask")]
    return None


# --------------------------------------------------------------------------- source modules
def _base_model(model: nn.Module) -> nn.Module:
    base = getattr(model, "base_model", None)
    return base if isinstance(base, nn.Module) else model


def _num_layers(model: nn.Module) -> int | None:
    config = getattr(model, "config", None)
    return getattr(config.get_text_config(), "num_hidden_layers", None) if config is not None else None


def _qualified_name(model: nn.Module, target: nn.Module) -> str:
    return next(name for name, module in model.named_modules() if module is target)


def _layer_list_name(model: nn.Module) -> str | None:
    """The qualified name of the ModuleList of transformer layers (length ``num_hidden_layers``)."""
    num_layers = _num_layers(model)
    base = _base_model(model)
    for _, module in base.named_modules():
        if isinstance(module, nn.ModuleList) and (num_layers is None or len(module) == num_layers):
            return _qualified_name(model, module)
    return None


def num_transformer_layers(model: nn.Module) -> int | None:
    """The number of transformer layers of ``model`` (so ``hidden_states`` has this + 1 entries); None if not found."""
    name = _layer_list_name(model)
    return None if name is None else len(model.get_submodule(name))


def _check_module_name(model: nn.Module, name: str) -> nn.Module:
    try:
        return model.get_submodule(name)
    except AttributeError:
        names = [n for n, _ in model.named_modules() if n]
        close = difflib.get_close_matches(name, names, n=5, cutoff=0.4) or names[:8]
        raise ValueError(
            f"module_name {name!r} does not exist in {type(model).__name__}; close names: {', '.join(close)}"
        ) from None


def _first_tensor(output: Any) -> Tensor:
    if isinstance(output, Tensor):
        return output
    if isinstance(output, (tuple, list)) or hasattr(output, "to_tuple"):
        return output[0]
    raise TypeError(f"cannot read a tensor from a module output of type {type(output).__name__}")


def _replace_first(output: Any, tensor: Tensor) -> Any:
    if isinstance(output, Tensor):
        return tensor
    if hasattr(output, "to_tuple"):  # ModelOutput
        output[next(iter(output.keys()))] = tensor
        return output
    return type(output)((tensor, *output[1:]))


@dataclass(frozen=True)
class Representation:
    """Z of one model: the pooling rule ``kind``, the qualified name of the source module, what it is in words, and
    its dimension. Build it with :meth:`resolve` (or :meth:`from_config`); it holds no reference to the model."""

    kind: str
    module_name: str
    description: str
    dim: int | None

    @classmethod
    def resolve(
        cls, model: nn.Module, kind: str = "cls", module_name: str | None = None, layer: int | None = None
    ) -> Representation:
        """Find the source module of ``kind`` in ``model`` (a clear ValueError when it has none)."""
        REPRESENTATION_REGISTRY.check(kind)
        try:
            hidden_size = int(model.config.get_text_config().hidden_size)
        except AttributeError:  # no (text) config with a hidden size: the dimension is unknown until Z is seen
            hidden_size = None
        if module_name:
            module = _check_module_name(model, module_name)
            linears = [m for m in module.modules() if isinstance(m, nn.Linear)]
            dim = module.out_features if isinstance(module, nn.Linear) else linears[-1].out_features if linears else hidden_size
            return cls(kind, module_name, f"output of {module_name!r}", dim)
        if kind == "module":
            raise ValueError("representation='module' needs module_name (e.g. 'bert.pooler' or 'pre_classifier')")
        if kind == "pooler":
            pooler = getattr(_base_model(model), "pooler", None)
            if not isinstance(pooler, nn.Module):
                raise ValueError(
                    f"representation='pooler' needs a pooler module, but {type(model).__name__} has none; "
                    "use representation 'cls' or 'mean', or 'module' with module_name"
                )
            return cls(kind, _qualified_name(model, pooler), "pooler output", hidden_size)
        layers_name = _layer_list_name(model)
        if layers_name is None:
            raise ValueError(
                f"could not find the transformer layers of {type(model).__name__}; pass module_name to choose the source"
            )
        num_layers = num_transformer_layers(model)
        index = num_layers if layer is None else layer
        if index < 0:
            index += num_layers + 1
        if not 0 <= index <= num_layers:
            raise ValueError(f"layer {layer} is out of range for a model with {num_layers} layers")
        if index == 0:
            embeddings = getattr(_base_model(model), "embeddings", None)
            if not isinstance(embeddings, nn.Module):
                raise ValueError(f"layer 0 needs an 'embeddings' module, which {type(model).__name__} does not have")
            return cls(kind, _qualified_name(model, embeddings), f"{kind} of the embeddings", hidden_size)
        return cls(kind, f"{layers_name}.{index - 1}", f"{kind} of layer {index}", hidden_size)

    @classmethod
    def from_config(cls, model: nn.Module, config: KNIFEConfig) -> Representation:
        return cls.resolve(model, config.representation, config.module_name, config.layer)

    def module(self, model: nn.Module) -> nn.Module:
        """The source module in ``model`` (or in a copy of it with the same structure)."""
        return model.get_submodule(self.module_name)

    def pool(self, hidden: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """``[B, T, d]`` or ``[B, d]`` -> ``[B, d]`` by the registered rule of ``kind``."""
        return REPRESENTATION_REGISTRY.get(self.kind)(hidden, attention_mask)

    def capture(
        self, model: nn.Module, attention_mask: Tensor | None = None, transform: Transform | None = None
    ) -> FeatureCapture:
        """A context manager that reads Z during one forward pass of ``model`` (see :class:`FeatureCapture`)."""
        return FeatureCapture(self.module(model), self.kind, attention_mask, transform)


class FeatureCapture:
    """Context manager that hooks ``module`` for one forward pass and pools Z from its output into ``features``.

    ``transform`` (optional) maps pooled ``[B, d]`` features to new ones that replace the pooled part of the
    module's output (token 0 for ``cls``; the whole output for ``pooler`` / ``module``); when it returns
    ``(features, extra)``, ``extra`` is kept in :attr:`extra`.
    """

    def __init__(
        self,
        module: nn.Module,
        kind: str,
        attention_mask: Tensor | None = None,
        transform: Transform | None = None,
    ) -> None:
        self.module, self.kind = module, kind
        self.pool = REPRESENTATION_REGISTRY.get(kind)
        self.attention_mask, self.transform = attention_mask, transform
        self.features: Tensor | None = None
        self.extra: dict[str, Tensor] = {}
        self._handle = None

    def _hook(self, module: nn.Module, args: Any, output: Any) -> Any:
        hidden = _first_tensor(output)
        pooled = self.pool(hidden, self.attention_mask)  # [B, d]
        if self.transform is None:
            self.features = pooled
            return None
        new = self.transform(pooled)
        new, self.extra = new if isinstance(new, tuple) else (new, {})  # [B, d]
        self.features = new
        if self.kind == "cls":
            new = torch.cat([new.unsqueeze(1).to(hidden.dtype), hidden[:, 1:]], dim=1)  # [B, T, d]
        return _replace_first(output, new.to(hidden.dtype))

    def __enter__(self) -> FeatureCapture:
        self.features, self.extra = None, {}
        self._handle = self.module.register_forward_hook(self._hook)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None


@torch.no_grad()
def extract_features(
    model: nn.Module,
    batches: Iterable[Mapping[str, Any]],
    representation: Representation,
    device: torch.device | str | None = None,
    drop: Iterable[str] = (),
    return_logits: bool = False,
    progress: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """``[N, d]`` float32 Z of every example of ``batches`` (dicts of model inputs, e.g. a DataLoader), on the CPU;
    with ``return_logits`` also the model's ``[N, C]`` logits from the same forward passes.

    The model runs in eval mode under ``torch.no_grad``; keys in ``drop`` (e.g. labels, the sensitive column) are
    not passed to it. Restores the model's training mode.
    """
    from tqdm.auto import tqdm

    device = torch.device(device) if device is not None else next(model.parameters()).device
    drop = set(drop) | {"labels", "label"}
    was_training = model.training
    model.eval()
    chunks, logits = [], []
    try:
        for batch in tqdm(batches, desc="extracting Z", leave=False, disable=not progress):
            inputs = {k: v.to(device) if isinstance(v, Tensor) else v for k, v in batch.items() if k not in drop}
            with representation.capture(model, inputs.get("attention_mask")) as capture:
                output = model(**inputs)
            chunks.append(capture.features.float().cpu())
            if return_logits:
                logits.append((output.logits if hasattr(output, "logits") else output[0]).float().cpu())
    finally:
        model.train(was_training)
    return (torch.cat(chunks), torch.cat(logits)) if return_logits else torch.cat(chunks)
