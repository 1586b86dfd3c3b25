"""Choose the representation Z: a forward hook on one module of the model, then a pooling rule.

Representations (``KNIFEConfig.representation``):

- ``"cls"``: token 0 of a ``[B, T, d]`` source (the last layer by default, ``layer`` picks another one);
- ``"mean"``: the mean over the attention mask of the same source;
- ``"pooler"``: the output ``[B, d]`` of the base model's pooler;
- ``"module"``: the ``[B, d]`` output of the submodule named ``module_name``.

The hook may also *replace* the pooled part of the output (the stochastic head of the information bottleneck),
so the classifier reads the transformed representation.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from .config import REPRESENTATION_REGISTRY, KNIFEConfig

__all__ = ["FeatureCapture", "resolve_source", "feature_dim"]


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


# --------------------------------------------------------------------------- source modules
def _base_model(model: nn.Module) -> nn.Module:
    base = getattr(model, "base_model", None)
    return base if isinstance(base, nn.Module) else model


def _layer_list(model: nn.Module) -> nn.ModuleList | None:
    """The ModuleList of transformer layers (length ``num_hidden_layers``) under the base model."""
    config = getattr(model, "config", None)
    num_layers = getattr(config.get_text_config(), "num_hidden_layers", None) if config is not None else None
    for _, module in _base_model(model).named_modules():
        if isinstance(module, nn.ModuleList) and (num_layers is None or len(module) == num_layers):
            return module
    return None


def _get_submodule(model: nn.Module, name: str) -> nn.Module:
    try:
        return model.get_submodule(name)
    except AttributeError:
        names = [n for n, _ in model.named_modules() if n]
        close = difflib.get_close_matches(name, names, n=5, cutoff=0.4) or names[:8]
        raise ValueError(
            f"module_name {name!r} does not exist in {type(model).__name__}; close names: {', '.join(close)}"
        ) from None


def resolve_source(model: nn.Module, config: KNIFEConfig) -> tuple[nn.Module, str]:
    """The module whose output holds Z, and a human-readable description of it."""
    if config.module_name:
        return _get_submodule(model, config.module_name), f"output of {config.module_name!r}"
    if config.representation == "pooler":
        pooler = getattr(_base_model(model), "pooler", None)
        if not isinstance(pooler, nn.Module):
            raise ValueError(
                f"representation='pooler' needs a pooler module, but {type(model).__name__} has none; "
                "use representation 'cls' or 'mean', or 'module' with module_name"
            )
        return pooler, "pooler output"
    layers = _layer_list(model)
    if layers is None:
        raise ValueError(
            f"could not find the transformer layers of {type(model).__name__}; pass module_name to choose the source"
        )
    index = len(layers) if config.layer is None else config.layer
    if index < 0:
        index += len(layers) + 1
    if not 0 <= index <= len(layers):
        raise ValueError(f"layer {config.layer} is out of range for a model with {len(layers)} layers")
    if index == 0:
        embeddings = getattr(_base_model(model), "embeddings", None)
        if not isinstance(embeddings, nn.Module):
            raise ValueError(
                f"layer 0 needs an 'embeddings' module, which {type(model).__name__} does not have"
            )
        return embeddings, f"{config.representation} of the embeddings"
    return layers[index - 1], f"{config.representation} of layer {index}"


def feature_dim(model: nn.Module, config: KNIFEConfig) -> int:
    """The dimension of Z (hidden size, or the output size of a named Linear module)."""
    if config.module_name:
        module = _get_submodule(model, config.module_name)
        if isinstance(module, nn.Linear):
            return module.out_features
        linears = [m for m in module.modules() if isinstance(m, nn.Linear)]
        if linears:
            return linears[-1].out_features
    return int(model.config.get_text_config().hidden_size)


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
        key = next(iter(output.keys()))
        output[key] = tensor
        return output
    return type(output)((tensor, *output[1:]))


class FeatureCapture:
    """Context manager that hooks the source module for one forward pass and pools Z from it.

    ``transform`` (optional) maps pooled ``[B, d]`` features to new ones that replace the pooled part of the
    module's output (token 0 for ``cls``; the whole output for ``pooler`` / ``module``).
    """

    def __init__(
        self,
        module: nn.Module,
        representation: str,
        attention_mask: Tensor | None = None,
        transform: Callable[[Tensor], Tensor] | None = None,
    ) -> None:
        self.module, self.representation = module, representation
        self.pool = REPRESENTATION_REGISTRY.get(representation)
        self.attention_mask, self.transform = attention_mask, transform
        self.features: Tensor | None = None
        self._handle = None

    def _hook(self, module: nn.Module, args: Any, output: Any) -> Any:
        hidden = _first_tensor(output)
        pooled = self.pool(hidden, self.attention_mask)  # [B, d]
        if self.transform is None:
            self.features = pooled
            return None
        new = self.transform(pooled)  # [B, d]
        self.features = new
        if self.representation == "cls":
            new = torch.cat([new.unsqueeze(1).to(hidden.dtype), hidden[:, 1:]], dim=1)  # [B, T, d]
        return _replace_first(output, new.to(hidden.dtype))

    def __enter__(self) -> FeatureCapture:
        self.features = None
        self._handle = self.module.register_forward_hook(self._hook)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
