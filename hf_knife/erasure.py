"""Linear concept erasure (LEACE, INLP) as a layer inside a Transformers classifier.

Post-hoc linear erasure on frozen features is the first thing a practitioner tries (docs/design.md §4): fit an
affine map on training representations Z and the sensitive attribute S so that no *linear* classifier reads S from
the erased Z better than a constant. This module

- fits such maps: :func:`fit_leace` (LEACE, through EleutherAI's ``concept-erasure`` package: the optional extra
  ``pip install "hf-knife[erasure]"``) and :func:`fit_inlp` (iterative nullspace projection, Ravfogel et al. 2020,
  implemented here over scikit-learn: no package provides it);
- holds the map as an ``nn.Module`` with buffers (:class:`ErasureLayer`, ``x -> x - ((x - bias) right^T) left^T``);
- puts it inside a model (:func:`add_erasure`): Z is pooled from the representation source (as for the KNIFE
  penalty), erased, and fed to the linear classifier head in place of the head's usual input; a linear head
  refitted on erased training representations (:func:`fit_linear_head`) can be installed at the same time. The
  model's logits are then a linear function of the erased Z, so no linear classifier reads S from them either.
  ``save_pretrained`` stores the layer's buffers with the weights and its settings in ``config.json``
  (``config.erasure``); :class:`AutoErasedModelForSequenceClassification` loads it back (with a KNIFE penalty when
  the checkpoint has one). Loading such a checkpoint with the plain ``AutoModelForSequenceClassification`` drops the
  layer: the model is then no longer erased.

    layer = fit_leace(z_train, s_train)                     # z_train [N, d], s_train [N]
    head = fit_linear_head(layer.erase(z_train), y_train, layer.erase(z_val), y_val, num_labels=10)
    model = add_erasure(model, layer, representation="mean", head=head)
    model.save_pretrained(folder)
    AutoErasedModelForSequenceClassification.from_pretrained(folder)
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

__all__ = [
    "ERASURE_EXTRA_HINT",
    "ERASURE_METHODS",
    "AutoErasedModelForSequenceClassification",
    "ErasureLayer",
    "ErasureModelMixin",
    "LinearHead",
    "MissingErasurePackageError",
    "add_erasure",
    "erased_model_class",
    "fit_eraser",
    "fit_inlp",
    "fit_leace",
    "fit_linear_head",
    "pool_into_head",
    "require_concept_erasure",
]

ERASURE_METHODS = ("leace", "inlp")
ERASURE_EXTRA_HINT = 'pip install "hf-knife[erasure]" (or pip install "concept-erasure>=0.2")'


class MissingErasurePackageError(ImportError):
    """``concept-erasure`` is needed (LEACE) but not installed; the message names the extra to install."""


def require_concept_erasure() -> Any:
    """Import ``concept_erasure`` or raise :class:`MissingErasurePackageError` naming the extra to install."""
    try:
        import concept_erasure
    except ImportError as error:
        raise MissingErasurePackageError(
            f"LEACE erasure needs the 'concept-erasure' package, which is not installed: {ERASURE_EXTRA_HINT}"
        ) from error
    return concept_erasure


# --------------------------------------------------------------------------------------------------- the layer
class ErasureLayer(nn.Module):
    """An affine erasure ``x [..., d] -> x - ((x - bias) @ right.T) @ left.T`` held in buffers.

    ``left [d, r]``, ``right [r, d]``, ``bias [d]``: ``I - left @ right`` is the (oblique for LEACE, orthogonal for
    INLP) projection. The buffers are saved with the model; ``config_dict()`` records ``method``, ``dim``, ``rank``.
    """

    def __init__(self, dim: int, rank: int, method: str = "leace", **settings: Any) -> None:
        super().__init__()
        if dim < 1 or rank < 0:
            raise ValueError(f"ErasureLayer needs dim >= 1 and rank >= 0, got dim={dim}, rank={rank}")
        self.dim, self.rank, self.method = int(dim), int(rank), method
        self.settings = dict(settings)
        self.register_buffer("left", torch.zeros(dim, rank))
        self.register_buffer("right", torch.zeros(rank, dim))
        self.register_buffer("bias", torch.zeros(dim))

    @classmethod
    def from_matrices(cls, left: Any, right: Any, bias: Any | None, method: str, **settings: Any) -> ErasureLayer:
        """A layer holding ``left [d, r]``, ``right [r, d]`` and ``bias [d]`` (None: zeros), stored in float32."""
        left, right = torch.as_tensor(np.asarray(left)), torch.as_tensor(np.asarray(right))
        layer = cls(left.shape[0], left.shape[1], method=method, **settings)
        layer.left.copy_(left.float())
        layer.right.copy_(right.float())
        if bias is not None:
            layer.bias.copy_(torch.as_tensor(np.asarray(bias)).float())
        return layer

    def forward(self, x: Tensor) -> Tensor:
        """``[..., d] -> [..., d]`` (computed in the buffers' dtype, returned in ``x``'s)."""
        if x.shape[-1] != self.dim:
            raise ValueError(f"ErasureLayer was fitted on {self.dim} features, got input of shape {tuple(x.shape)}")
        h = x.to(self.left.dtype)
        return (h - ((h - self.bias) @ self.right.T) @ self.left.T).to(x.dtype)

    @torch.no_grad()
    def erase(self, x: Any) -> np.ndarray:
        """Numpy in, numpy out: ``[N, d] -> [N, d]`` float32, exactly what the layer computes in a model."""
        tensor = torch.as_tensor(np.asarray(x, dtype=np.float32), device=self.left.device)
        return self(tensor).cpu().numpy()

    @property
    def projection(self) -> Tensor:
        """The linear part ``I - left @ right`` ``[d, d]``."""
        return torch.eye(self.dim, device=self.left.device) - self.left @ self.right

    def config_dict(self) -> dict[str, Any]:
        return {"method": self.method, "dim": self.dim, "rank": self.rank, **self.settings}

    def extra_repr(self) -> str:
        return f"method={self.method!r}, dim={self.dim}, rank={self.rank}"


def _group_codes(sensitive: Any, name: str = "sensitive") -> tuple[np.ndarray, np.ndarray]:
    """``(codes [N] in 0..G-1, groups [G])``; at least two groups."""
    values = np.asarray(sensitive.cpu() if isinstance(sensitive, Tensor) else sensitive)
    if values.ndim != 1:
        raise ValueError(f"{name} must have shape [N] (one group id per example), got {values.shape}")
    groups, codes = np.unique(values, return_inverse=True)
    if groups.size < 2:
        raise ValueError(f"{name} has a single value ({groups[0]!r}); erasure needs at least two groups")
    return codes.reshape(-1), groups


def _features(z: Any, n: int) -> np.ndarray:
    x = np.asarray(z.detach().cpu().float() if isinstance(z, Tensor) else z, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] != n:
        raise ValueError(f"representations must have shape [N, d] with N = {n} (one per group id), got {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("representations contain NaN or Inf values")
    return x


def fit_leace(z: Any, sensitive: Any, **fitter_kwargs: Any) -> ErasureLayer:
    """LEACE (``concept_erasure.LeaceFitter``, fitted in float64) on ``z [N, d]`` and group ids ``sensitive [N]``.

    S is one-hot encoded (``G`` columns); ``fitter_kwargs`` go to ``LeaceFitter`` (e.g. ``shrinkage``).
    Needs the ``erasure`` extra (:class:`MissingErasurePackageError` otherwise).
    """
    concept_erasure = require_concept_erasure()
    codes, groups = _group_codes(sensitive)
    x = torch.from_numpy(_features(z, codes.size))  # [N, d]
    onehot = torch.nn.functional.one_hot(torch.from_numpy(codes), groups.size).double()  # [N, G]
    eraser = concept_erasure.LeaceFitter.fit(x, onehot, **fitter_kwargs).eraser
    return ErasureLayer.from_matrices(
        eraser.proj_left.numpy(), eraser.proj_right.numpy(), None if eraser.bias is None else eraser.bias.numpy(),
        method="leace", num_groups=int(groups.size),
    )  # fmt: skip


def fit_inlp(
    z: Any,
    sensitive: Any,
    *,
    num_iterations: int = 40,
    stop_at_majority: bool = False,
    held_out_fraction: float = 0.2,
    C: float = 1.0,
    seed: int = 0,
) -> ErasureLayer:
    """INLP (iterative nullspace projection; Ravfogel et al., ACL 2020) on ``z [N, d]`` and ``sensitive [N]``.

    Each iteration fits a standardised logistic regression predicting S from the currently projected
    representations (on ``1 - held_out_fraction`` of them), takes its weight directions in the original
    coordinates, and adds them to the removed subspace; the projection is the orthogonal one onto the complement of
    all the directions found. It runs ``num_iterations`` iterations (as in the paper; fewer when the directions span
    every live coordinate); with ``stop_at_majority`` it keeps ``held_out_fraction`` of the examples aside and stops
    once the classifier's accuracy there is no better than predicting the majority group (noisy on small splits:
    on BUG it stopped after 23 iterations with test leakage left for logistic regression). The layer's bias is
    the mean of ``z`` (the mean is kept). Costs one logistic regression per iteration (about 0.5 s on 3,000 x 384).
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split

    codes, groups = _group_codes(sensitive)
    x = _features(z, codes.size)
    n, d = x.shape
    mean = x.mean(0)
    centred = x - mean  # [N, d]
    std = centred.std(0)
    live = std > 1e-12 * max(float(np.median(std[std > 0])) if (std > 0).any() else 1.0, 1e-300)
    fit_idx, held_idx = np.arange(n), np.arange(0)
    _, counts = np.unique(codes, return_counts=True)
    if stop_at_majority and counts.min() >= 5 and n >= 50:
        fit_idx, held_idx = train_test_split(
            np.arange(n), test_size=held_out_fraction, stratify=codes, random_state=seed
        )
    majority = np.bincount(codes[held_idx]).max() / held_idx.size if held_idx.size else 1.0
    basis = np.zeros((d, 0))  # [d, r], orthonormal columns
    history = []
    done = 0
    for done in range(1, num_iterations + 1):  # noqa: B007 - ``done`` is reported
        projected = centred - (centred @ basis) @ basis.T  # [N, d]
        scale = projected[:, live].std(0)
        scale = np.where(scale > 0, scale, 1.0)
        features = projected[:, live] / scale  # [N, L]
        clf = LogisticRegression(C=C, max_iter=1000, random_state=seed).fit(features[fit_idx], codes[fit_idx])
        if held_idx.size:
            accuracy = float((clf.predict(features[held_idx]) == codes[held_idx]).mean())
            history.append(accuracy)
            if stop_at_majority and accuracy <= majority:
                break
        directions = np.zeros((clf.coef_.shape[0], d))
        directions[:, live] = clf.coef_ / scale  # [k, d]: weight directions in the original coordinates
        directions -= (directions @ basis) @ basis.T  # in the current space
        stacked = np.concatenate([basis, directions.T], axis=1)  # [d, r + k]
        u, s, _ = np.linalg.svd(stacked, full_matrices=False)
        basis = u[:, s > 1e-8 * s.max()] if s.size and s.max() > 0 else basis
        if basis.shape[1] >= int(live.sum()):
            break
    return ErasureLayer.from_matrices(
        basis, basis.T, mean, method="inlp", num_groups=int(groups.size), iterations=done,
        held_out_accuracy=history[-1] if history else None,
    )  # fmt: skip


def fit_eraser(method: str, z: Any, sensitive: Any, seed: int = 0, **kwargs: Any) -> ErasureLayer:
    """``fit_leace`` or ``fit_inlp`` by name (``method`` in :data:`ERASURE_METHODS`)."""
    if method == "leace":
        return fit_leace(z, sensitive, **kwargs)
    if method == "inlp":
        return fit_inlp(z, sensitive, seed=seed, **kwargs)
    raise ValueError(f"unknown erasure method {method!r}; expected one of {', '.join(map(repr, ERASURE_METHODS))}")


# --------------------------------------------------------------------------------------------------- linear head
@dataclass
class LinearHead:
    """A linear classifier ``logits = z @ weight.T + bias`` (``weight [C, d]``, ``bias [C]``) and how it was chosen."""

    weight: np.ndarray
    bias: np.ndarray
    C: float
    validation_accuracy: float

    def predict(self, z: Any) -> np.ndarray:
        """``[N, d] -> [N]`` class ids."""
        return (np.asarray(z, dtype=np.float64) @ self.weight.T + self.bias).argmax(-1)


def fit_linear_head(
    z_train: Any,
    y_train: Any,
    z_val: Any,
    y_val: Any,
    num_labels: int,
    Cs: tuple[float, ...] = (0.01, 0.1, 1.0, 10.0),
    seed: int = 0,
) -> LinearHead:
    """Standardised multinomial logistic regression on ``z_train [N, d]``, ``C`` chosen on ``(z_val, y_val)``.

    Refitted on the training split with the chosen ``C``; returned in the original coordinates (the scaler folded
    into ``weight`` and ``bias``), over ``num_labels`` classes (a class absent from training gets a bias of -1e4).
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    x_train, x_val = np.asarray(z_train, dtype=np.float64), np.asarray(z_val, dtype=np.float64)
    y_train, y_val = np.asarray(y_train), np.asarray(y_val)
    scaler = StandardScaler().fit(x_train)
    a_train, a_val = scaler.transform(x_train), scaler.transform(x_val)
    best = None
    for C in Cs:
        clf = LogisticRegression(C=C, max_iter=2000, random_state=seed).fit(a_train, y_train)
        accuracy = float((clf.predict(a_val) == y_val).mean())
        if best is None or accuracy > best[0]:
            best = (accuracy, C, clf)
    accuracy, C, clf = best
    coef, intercept = clf.coef_, clf.intercept_
    if coef.shape[0] == 1:  # binary: sigmoid(w x + b) == softmax([-w x - b, w x + b] / 2)
        coef, intercept = np.concatenate([-coef, coef]) / 2, np.concatenate([-intercept, intercept]) / 2
    weight = np.zeros((num_labels, x_train.shape[1]))
    bias = np.full(num_labels, -1e4)
    scale = np.where(scaler.scale_ > 0, scaler.scale_, 1.0)
    for row, label in enumerate(clf.classes_):
        weight[int(label)] = coef[row] / scale
        bias[int(label)] = intercept[row] - float(np.sum(coef[row] * scaler.mean_ / scale))
    return LinearHead(weight=weight, bias=bias, C=float(C), validation_accuracy=accuracy)


# --------------------------------------------------------------------------------------------------- in a model
ERASURE_CONFIG_KEY = "erasure"


def _representation(model: nn.Module, settings: dict[str, Any]) -> Any:
    """Where the erasure layer reads Z in ``model`` (a :class:`~hf_knife.representation.Representation`)."""
    from .representation import Representation

    kind = settings.get("representation", "pooler")
    return Representation.resolve(model, kind, settings.get("module_name"), settings.get("layer"))


def _check_head(model: nn.Module, name: str, dim: int) -> str:
    """``name`` when ``model.<name>`` is an ``nn.Linear`` reading ``dim`` features; a clear ValueError otherwise."""
    try:
        module = model.get_submodule(name)
    except AttributeError:
        raise ValueError(
            f"{type(model).__name__} has no head module {name!r}; an erasure layer feeds a linear head "
            "(pass head_module=... naming an nn.Linear)"
        ) from None
    if not isinstance(module, nn.Linear) or module.in_features != dim:
        raise ValueError(
            f"the head {name!r} of {type(model).__name__} must be an nn.Linear reading {dim} features (the "
            f"erased representation), got {module}; pass head_module=... naming such a layer"
        )
    return name


class ErasureModelMixin:
    """Mixed in before a ``PreTrainedModel`` subclass by :func:`erased_model_class`.

    Adds the ``erasure`` submodule (an :class:`ErasureLayer` built from ``config.erasure``) and, in ``forward``,
    replaces the input of the linear head (``config.erasure["head"]``, default ``classifier``) by the erased Z,
    where Z is pooled from the representation source (``representation``, ``layer``, ``module_name``).
    """

    erasure: ErasureLayer
    config: Any

    def _erasure_attach(self, settings: dict[str, Any]) -> None:
        settings = dict(settings)
        missing = [key for key in ("method", "dim", "rank") if key not in settings]
        if missing:
            raise ValueError(f"config.erasure lacks {missing}; expected the dict written by add_erasure")
        reserved = {"method", "dim", "rank", "representation", "layer", "module_name", "head"}
        extra = {k: v for k, v in settings.items() if k not in reserved}
        self.erasure = ErasureLayer(settings["dim"], settings["rank"], method=settings["method"], **extra)
        head = _check_head(self, settings.get("head", "classifier"), settings["dim"])
        settings.setdefault("head", head)
        settings.setdefault("representation", "pooler")
        self.config.erasure = settings
        _representation(self, settings)  # a clear error now rather than at the first forward

    def _erasure_forward(self, args: tuple, kwargs: dict) -> Any:
        from .representation import attention_mask_of

        settings = self.config.erasure
        head = self.get_submodule(settings["head"])
        mask = attention_mask_of(self._erasure_parent_forward, args, kwargs)
        capture = _representation(self, settings).capture(self, mask)

        def feed_erased(module: nn.Module, inputs: tuple) -> tuple:
            if capture.features is None:
                raise RuntimeError(
                    f"the representation source of the erasure layer ({settings['representation']}) did not run "
                    f"before the head {settings['head']!r}"
                )
            erased = self.erasure(capture.features.float())  # [B, d]
            return (erased.to(inputs[0].dtype), *inputs[1:])

        handle = head.register_forward_pre_hook(feed_erased)
        try:
            with capture:
                return self._erasure_parent_forward(*args, **kwargs)
        finally:
            handle.remove()


def _make_erased_forward(parent: Any) -> Any:
    @functools.wraps(parent)  # the same signature: Trainer's column inspection is unchanged
    def forward(self: ErasureModelMixin, *args: Any, **kwargs: Any) -> Any:
        return self._erasure_forward(args, kwargs)

    return forward


_ERASED_CLASSES: dict[type, type] = {}


def erased_model_class(base_cls: type) -> type:
    """The erased subclass of a model class, e.g. ``ErasedBertForSequenceClassification`` (cached).

    Its ``__init__(config)`` builds the erasure layer from ``config.erasure``.
    """
    if issubclass(base_cls, ErasureModelMixin):
        return base_cls
    if base_cls in _ERASED_CLASSES:
        return _ERASED_CLASSES[base_cls]

    def __init__(self, config: Any, *args: Any, **kwargs: Any) -> None:
        base_cls.__init__(self, config, *args, **kwargs)
        if not getattr(config, ERASURE_CONFIG_KEY, None):
            raise ValueError(f"{type(self).__name__} needs a config with an 'erasure' entry (see add_erasure)")
        self._erasure_attach(config.erasure)

    from .modeling import derived_model_class

    namespace = {
        "__init__": __init__,
        "forward": _make_erased_forward(base_cls.forward),
        "_erasure_parent_forward": base_cls.forward,
        "__doc__": f"{base_cls.__name__} whose head reads an erased representation (see ErasureModelMixin).",
    }
    cls = derived_model_class("Erased", ErasureModelMixin, base_cls, namespace, fp32_module="erasure")
    _ERASED_CLASSES[base_cls] = cls
    return cls


@torch.no_grad()
def add_erasure(
    model: Any,
    layer: ErasureLayer,
    representation: str = "pooler",
    *,
    layer_index: int | None = None,
    module_name: str | None = None,
    head: LinearHead | None = None,
    head_module: str = "classifier",
) -> Any:
    """Put ``layer`` into ``model`` (in place; its class becomes the erased subclass) and return it.

    Z is pooled as ``representation`` (``layer_index`` / ``module_name`` as in :class:`~hf_knife.KNIFEConfig`),
    erased, and fed to the linear ``head_module`` instead of its usual input. ``head`` (e.g. from
    :func:`fit_linear_head` on erased training representations) replaces the head's weights; without it the head
    is kept, which only makes sense when it already reads Z (``representation="pooler"`` for BERT, or a model
    prepared by :func:`pool_into_head`, whose identity layer ``layer`` replaces).
    """
    if isinstance(model, ErasureModelMixin) and model.config.erasure.get("rank") != 0:
        raise ValueError(f"{type(model).__name__} already has an erasure layer ({model.config.erasure['method']})")
    settings = {**layer.config_dict(), "representation": representation, "layer": layer_index,
                "module_name": module_name, "head": head_module}  # fmt: skip
    _check_head(model, head_module, layer.dim)  # before changing anything
    linear = model.get_submodule(head_module)
    if head is not None and tuple(head.weight.shape) != tuple(linear.weight.shape):
        raise ValueError(
            f"the refitted head has shape {tuple(head.weight.shape)}, the model's {head_module!r} "
            f"{tuple(linear.weight.shape)}"
        )
    if not isinstance(model, ErasureModelMixin):
        model.__class__ = erased_model_class(type(model))
    model._erasure_attach(settings)  # replaces the identity layer of pool_into_head, if any
    device = next(model.parameters()).device
    model.erasure.to(device=device, dtype=torch.float32)
    model.erasure.load_state_dict(layer.state_dict())
    if head is not None:
        linear.weight.copy_(torch.as_tensor(head.weight, dtype=linear.weight.dtype))
        linear.bias.copy_(torch.as_tensor(head.bias, dtype=linear.bias.dtype))
    if hasattr(model, "add_model_tags") and layer.rank > 0:
        model.add_model_tags(["hf_knife", "concept-erasure", layer.method])
    return model


def pool_into_head(
    model: Any,
    representation: str = "mean",
    *,
    layer_index: int | None = None,
    module_name: str | None = None,
    head_module: str = "classifier",
) -> Any:
    """Make the linear ``head_module`` of ``model`` read the pooled Z instead of its usual input (in place).

    For an encoder trained for mean pooling (a sentence-transformers checkpoint) the classifier should read the
    mean-pooled Z, as a sentence-transformers probe does, not BERT's untrained-for-it pooler; and a penalty or an
    eraser on Z then constrains exactly what the classifier reads. The model gets an erasure layer of rank 0 (the
    identity), so it saves, reloads (:class:`AutoErasedModelForSequenceClassification`) and pushes like an erased
    model, and a later :func:`add_erasure` replaces the identity with a fitted eraser.
    """
    try:
        dim = model.get_submodule(head_module).in_features
    except AttributeError:  # no such module, or not a linear one: add_erasure's check says which
        dim = 1
    return add_erasure(model, ErasureLayer(dim, 0, method="identity"), representation, layer_index=layer_index,
                       module_name=module_name, head_module=head_module)  # fmt: skip


class AutoErasedModelForSequenceClassification:
    """Load a checkpoint saved by an erased model (``config.erasure``), with its KNIFE penalty when it has one."""

    @staticmethod
    def _class_for(config: Any, has_knife: bool) -> type:
        from transformers import AutoModelForSequenceClassification

        base = AutoModelForSequenceClassification._model_mapping[type(config)]
        if has_knife:
            from .modeling import knife_model_class

            base = knife_model_class(base)
        return erased_model_class(base)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, **kwargs: Any) -> Any:
        from transformers import AutoConfig

        config = kwargs.pop("config", None)
        if config is None:
            config, kwargs = AutoConfig.from_pretrained(path, return_unused_kwargs=True, **kwargs)
        if not getattr(config, ERASURE_CONFIG_KEY, None):
            raise ValueError(f"{path} has no erasure layer (no 'erasure' entry in its config.json)")
        from .modeling import find_knife_config

        knife_config = find_knife_config(path, kwargs, config)
        if knife_config is not None:
            kwargs["knife_config"] = knife_config
        return cls._class_for(config, knife_config is not None).from_pretrained(path, config=config, **kwargs)

