"""One-call estimators: ``estimate_entropy(x)`` and ``estimate_mutual_information(x, y)`` on arrays.

Both split the samples into a fitting split, a validation split (early stopping, learning-rate decay) and a
held-out test split on which the estimate and its standard error are reported: a cross-entropy evaluated on the
samples it was fitted to is biased low. Samples are standardised first (entropy is corrected by
``sum_j log std_j``, MI is invariant), which makes the defaults independent of the data's scale.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from .estimators import DoEEstimator, KNIFEEstimator, MarginalKernel, MixtureMIEstimator, SchraudolphKernel
from .estimators.baselines import doe_mutual_information, knn_entropy, ksg_mutual_information
from .estimators.functional import COVARIANCE_TYPES
from .estimators.validation import as_tensor, check_choice, check_labels, check_samples

__all__ = ["EstimationResult", "estimate_entropy", "estimate_mutual_information"]

ENTROPY_METHODS = ("knife", "schraudolph", "doe", "knn")
MI_METHODS = ("knife", "doe", "ksg")


@dataclass
class EstimationResult:
    """An entropy or mutual-information estimate in nats; ``float(result)`` is the held-out estimate.

    Attributes:
        estimate: held-out estimate in nats.
        stderr: standard error of ``estimate`` over held-out samples (``nan`` where not defined).
        method: the estimator used.
        estimator: the fitted module (``None`` for kNN / KSG / DoE-MI); it works on *standardised* samples,
            see ``standardization``.
        num_samples: ``{"train": ..., "validation": ..., "test": ...}``.
        history: one dict per validation check (``step``, ``train_loss``, ``validation_loss``, ``lr``).
        details: extra numbers, e.g. ``marginal_entropy`` and ``conditional_entropy`` for MI.
        standardization: ``(mean, std)`` of ``x`` used before fitting.
    """

    estimate: float
    stderr: float
    method: str
    estimator: nn.Module | None = None
    num_samples: dict[str, int] = field(default_factory=dict)
    history: list[dict[str, float]] = field(default_factory=list)
    details: dict[str, float] = field(default_factory=dict)
    standardization: tuple[Tensor, Tensor] | None = None

    def __float__(self) -> float:
        return float(self.estimate)

    def __repr__(self) -> str:
        return f"EstimationResult({self.estimate:.4f} ± {self.stderr:.4f} nats, method={self.method!r})"


# ----------------------------------------------------------------------------------------------- input handling
def _resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _prepare_x(x: Any, name: str = "x") -> Tensor:
    x = as_tensor(x, name)
    if x.dim() == 1:
        raise ValueError(f"{name} must have shape [N, d]; got a 1-D array of shape {tuple(x.shape)} "
                         f"(use x.reshape(-1, 1) for one-dimensional samples)")  # fmt: skip
    if not torch.is_floating_point(x):
        x = x.to(torch.float64)
    return check_samples(x, name, min_samples=2)


def _prepare_y(y: Any, num_samples: int, discrete: bool | None) -> tuple[Tensor, bool]:
    y = as_tensor(y, "y")
    if discrete is None:
        discrete = y.dim() == 1 and not torch.is_floating_point(y)
    if y.shape[0] != num_samples:
        raise ValueError(
            f"y has {y.shape[0]} samples but x has {num_samples}; they must be paired row by row"
        )
    if discrete:
        labels = check_labels(y, "y")
        _, labels = labels.unique(return_inverse=True)  # [N] dense ids 0..C-1
        return labels, True
    if y.dim() == 1:
        y = y.reshape(-1, 1)  # [N, 1]
    if not torch.is_floating_point(y):
        y = y.to(torch.float64)
    return check_samples(y, "y", min_samples=2), False


def _split(
    num: int, validation_fraction: float, test_fraction: float, generator: torch.Generator
) -> tuple[Tensor, ...]:
    for name, value in (("validation_fraction", validation_fraction), ("test_fraction", test_fraction)):
        if not 0.0 < value < 1.0:
            raise ValueError(f"{name} must be in (0, 1), got {value}")
    if validation_fraction + test_fraction >= 0.9:
        raise ValueError(
            "validation_fraction + test_fraction must leave at least 10% of the samples for fitting"
        )
    num_test = max(1, round(test_fraction * num))
    num_validation = max(1, round(validation_fraction * num))
    if num - num_test - num_validation < 1:
        raise ValueError(
            f"{num} samples are too few to split into fitting, validation and test sets; pass at least 3"
        )
    order = torch.randperm(num, generator=generator)
    return order[num_test + num_validation :], order[num_test : num_test + num_validation], order[:num_test]


def _standardize(x: Tensor, train_index: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    mean = x[train_index].mean(0)  # [d]
    std = x[train_index].std(0, unbiased=len(train_index) > 1)  # [d]
    if bool((std <= 0).any()) or len(train_index) < 2:
        constant = (std <= 0).nonzero().flatten().tolist()
        raise ValueError(f"x has zero variance in dimension(s) {constant[:10]}: its differential entropy is -inf; "
                         "drop constant features first")  # fmt: skip
    return (x - mean) / std, mean, std


def _stderr(values: Tensor) -> float:
    return float(values.std() / math.sqrt(values.numel())) if values.numel() > 1 else float("nan")


# ----------------------------------------------------------------------------------------------- fitting loop
def _fit(
    module: nn.Module,
    loss_fn: Callable[[Tensor], Tensor],
    train_index: Tensor,
    validation_index: Tensor,
    *,
    max_steps: int,
    batch_size: int,
    lr: float,
    eval_every: int,
    patience: int,
    generator: torch.Generator,
    progress: bool | None,
    description: str,
) -> list[dict[str, float]]:
    """Minimise ``loss_fn(batch_index)`` with Adam; keep the parameters with the best validation loss."""
    parameters = [p for p in module.parameters() if p.requires_grad]
    if not parameters:
        return []
    optimizer = torch.optim.Adam(parameters, lr=lr)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, factor=0.5, patience=max(1, patience // 3)
    )
    best_loss, best_state, stale, history = math.inf, copy.deepcopy(module.state_dict()), 0, []
    batch_size = min(batch_size, len(train_index))
    order, cursor, running = train_index[torch.randperm(len(train_index), generator=generator)], 0, []
    with tqdm(
        total=max_steps, desc=description, disable=None if progress is None else not progress, leave=False
    ) as bar:
        for step in range(1, max_steps + 1):
            if cursor + batch_size > len(order):
                order, cursor = train_index[torch.randperm(len(train_index), generator=generator)], 0
            batch = order[cursor : cursor + batch_size]
            cursor += batch_size
            loss = loss_fn(batch)
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"the fitting loss became {loss.item()} at step {step}; lower lr (now "
                    f"{optimizer.param_groups[0]['lr']:.2g}) or set bandwidth_bounds"
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            running.append(loss.item())
            bar.update(1)
            if step % eval_every == 0 or step == max_steps:
                with torch.no_grad():
                    validation_loss = float(loss_fn(validation_index))
                history.append({"step": step, "train_loss": float(np.mean(running)), "validation_loss": validation_loss,
                                "lr": optimizer.param_groups[0]["lr"]})  # fmt: skip
                running = []
                bar.set_postfix(validation=f"{validation_loss:.4f}")
                if validation_loss < best_loss - 1e-4:
                    best_loss, best_state, stale = validation_loss, copy.deepcopy(module.state_dict()), 0
                else:
                    stale += 1
                scheduler.step(validation_loss)
                if stale >= patience:
                    break
    module.load_state_dict(best_state)
    return history


def _component_grid(num_train: int) -> list[int]:
    """Mixture sizes tried when ``num_components`` is not given; the best on the validation split is kept."""
    return [k for k in (1, 4, 16, 64) if k == 1 or 32 * k <= num_train]


def _default_covariance(dim: int) -> str:
    return "full" if dim <= 16 else "diagonal"


def _fit_marginal(
    method: str,
    z: Tensor,
    train_index: Tensor,
    validation_index: Tensor,
    dim: int,
    num_components: int,
    covariance: str,
    rank: int | None,
    device: torch.device,
    generator: torch.Generator,
    fit_options: dict[str, Any],
) -> tuple[nn.Module, list[dict[str, float]]]:
    """Build and fit one entropy estimator on the standardised samples ``z``."""
    if method == "doe":
        return DoEEstimator(dim).to(device).init_from_samples(z[train_index]), []
    if method == "schraudolph":
        num_components = min(num_components, len(train_index) - 1)
        centres, train_index = train_index[:num_components], train_index[num_components:]
        module = SchraudolphKernel(dim, num_components, covariance, rank=rank).to(device)
        module.init_from_samples(z[centres])
    else:
        module = MarginalKernel(dim, num_components, covariance, rank=rank).to(device)
        module.init_from_samples(z[train_index])
    history = _fit(module, lambda index: module(z[index]), train_index, validation_index, generator=generator,
                   description=f"fitting {method} (K={num_components})", **fit_options)  # fmt: skip
    return module, history


# ----------------------------------------------------------------------------------------------- public API
def estimate_entropy(
    x: Any,
    *,
    method: str = "knife",
    num_components: int | None = None,
    covariance: str = "auto",
    rank: int | None = None,
    k: int = 3,
    device: str | torch.device | None = None,
    seed: int = 0,
    max_steps: int = 4000,
    batch_size: int = 512,
    lr: float = 0.01,
    eval_every: int = 50,
    patience: int = 10,
    validation_fraction: float = 0.1,
    test_fraction: float = 0.2,
    progress: bool | None = None,
) -> EstimationResult:
    """Estimate the differential entropy h(X) in nats from samples ``x [N, d]`` (numpy or torch).

    Args:
        method: ``"knife"`` (default), ``"schraudolph"`` (kernels fixed at samples, bandwidth learned),
            ``"doe"`` (one Gaussian) or ``"knn"`` (Kozachenko-Leonenko, uses all samples).
        num_components: mixture size ``K``. By default ``K`` in (1, 4, 16, 64) (those with at least 32 fitting
            samples per component) are each fitted and the best on the validation split is kept.
        covariance: ``"auto"`` (``"full"`` for d <= 16, else ``"diagonal"``) or one of
            ``shared_diagonal``, ``diagonal``, ``full``, ``low_rank``.
        rank: rank of the ``low_rank`` precision term.
        k: neighbours for ``method="knn"``.
        device: where to fit (default: CUDA if available).
        seed: seeds the split, the initialisation and the batches.
        max_steps, batch_size, lr, eval_every, patience: Adam fitting with early stopping on the validation
            split (stop after ``patience`` checks without improvement; the learning rate halves on plateaus).
        validation_fraction, test_fraction: sizes of the early-stopping and reporting splits.
        progress: show a progress bar (default: only on a terminal).

    Returns:
        :class:`EstimationResult` with the held-out estimate, its standard error and the fitted estimator.
    """
    check_choice(method, "method", ENTROPY_METHODS)
    x = _prepare_x(x)
    n, d = x.shape
    if method == "knn":
        if n <= k:
            raise ValueError(f"method='knn' with k={k} needs more than {k} samples, got {n}")
        std = x.std(0)
        if bool((std <= 0).any()):
            raise ValueError("x has a constant dimension: its differential entropy is -inf")
        z = ((x - x.mean(0)) / std).double().numpy()
        value = knn_entropy(z, k=k) + float(std.double().log().sum())
        return EstimationResult(value, float("nan"), method, num_samples={"test": n})

    device = _resolve_device(device)
    generator = torch.Generator().manual_seed(seed)
    train_index, validation_index, test_index = _split(n, validation_fraction, test_fraction, generator)
    z, mean, std = _standardize(x, train_index)
    z = z.to(device=device, dtype=torch.float32)
    log_jacobian = float(std.double().log().sum())  # h(x) = h(z) + sum_j log std_j
    covariance = _default_covariance(d) if covariance == "auto" else covariance
    check_choice(covariance, "covariance", COVARIANCE_TYPES)

    fit_options = dict(max_steps=max_steps, batch_size=batch_size, lr=lr, eval_every=eval_every, patience=patience,
                       progress=progress)  # fmt: skip
    candidates = [num_components] if num_components else _component_grid(len(train_index))
    if method == "doe":
        candidates = [1]
    best: tuple[float, nn.Module, list] | None = None
    selection: dict[str, float] = {}
    for candidate in candidates:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(seed)
            module, history = _fit_marginal(
                method, z, train_index, validation_index, d, candidate, covariance, rank, device,
                torch.Generator().manual_seed(seed + 1), fit_options,
            )  # fmt: skip
        with torch.no_grad():
            validation_loss = float(module(z[validation_index]))
        selection[f"validation_loss_K{candidate}"] = validation_loss
        if best is None or validation_loss < best[0]:
            best = (validation_loss, module, history)
    assert best is not None
    _, module, history = best
    selection["num_components"] = float(module.num_components)
    module.eval()
    with torch.no_grad():
        nll = -module.log_prob(z[test_index]).double().cpu()  # [N_test]
    return EstimationResult(
        estimate=float(nll.mean()) + log_jacobian,
        stderr=_stderr(nll),
        method=method,
        estimator=module,
        num_samples={"train": len(train_index), "validation": len(validation_index), "test": len(test_index)},
        history=history,
        details=selection,
        standardization=(mean, std),
    )


def estimate_mutual_information(
    x: Any,
    y: Any,
    *,
    method: str = "knife",
    discrete: bool | None = None,
    discrete_marginal: str = "mixture",
    num_components: int | None = None,
    covariance: str = "auto",
    rank: int | None = None,
    hidden_dims: tuple[int, ...] = (128, 128),
    k: int = 3,
    device: str | torch.device | None = None,
    seed: int = 0,
    max_steps: int = 4000,
    batch_size: int = 512,
    lr: float = 0.005,
    eval_every: int = 50,
    patience: int = 10,
    validation_fraction: float = 0.1,
    test_fraction: float = 0.2,
    progress: bool | None = None,
) -> EstimationResult:
    """Estimate I(X; Y) = h(X) - h(X|Y) in nats from paired samples.

    Args:
        x: ``[N, d]`` continuous samples (numpy or torch).
        y: ``[N, d_y]`` continuous, or ``[N]`` integer class labels (discrete; any number of classes).
        method: ``"knife"`` (default), ``"doe"`` (Gaussian) or ``"ksg"`` (Kraskov et al., continuous ``y``).
        discrete: force the type of ``y`` (default: integer ``[N]`` arrays are discrete).
        discrete_marginal: for discrete ``y``, ``"mixture"`` (default) estimates h(X) with the class kernels
            weighted by the class frequencies (:class:`~hf_knife.MixtureMIEstimator`: the estimate cannot exceed
            H(Y) by more than the prior's error, and shares the kernels' errors, hence a low variance);
            ``"kernel"`` fits a separate marginal kernel (:class:`~hf_knife.KNIFEEstimator`).
        num_components: mixture size ``K`` of both kernels (default 16).
        hidden_dims: MLP widths of the continuous conditional kernel.
        Other options as in :func:`estimate_entropy`.

    Returns:
        :class:`EstimationResult`; ``details`` holds the held-out ``marginal_entropy`` and ``conditional_entropy``
        of the standardised ``x``.
    """
    check_choice(method, "method", MI_METHODS)
    check_choice(discrete_marginal, "discrete_marginal", ("mixture", "kernel"))
    x = _prepare_x(x)
    y, discrete = _prepare_y(y, x.shape[0], discrete)
    n, d = x.shape
    if method == "ksg":
        if discrete:
            raise ValueError(
                "method='ksg' needs a continuous y; use method='knife' or 'doe' for class labels"
            )
        return EstimationResult(ksg_mutual_information(x.numpy(), y.numpy(), k=k), float("nan"), method,
                                num_samples={"test": n})  # fmt: skip

    device = _resolve_device(device)
    generator = torch.Generator().manual_seed(seed)
    train_index, validation_index, test_index = _split(n, validation_fraction, test_fraction, generator)
    z, mean, std = _standardize(x, train_index)
    if not discrete:
        y, _, _ = _standardize(y, train_index)
    if method == "doe":
        value = doe_mutual_information(z[train_index], y[train_index])
        return EstimationResult(value, float("nan"), method, num_samples={"train": len(train_index)})

    z = z.to(device=device, dtype=torch.float32)
    y = y.to(device) if discrete else y.to(device=device, dtype=torch.float32)
    covariance = _default_covariance(d) if covariance == "auto" else covariance
    check_choice(covariance, "covariance", COVARIANCE_TYPES)
    num_components = num_components or int(min(16, max(1, len(train_index) // 32)))
    num_classes = int(y.max()) + 1 if discrete else None
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        options = dict(num_components=num_components, covariance=covariance, rank=rank)
        if discrete and discrete_marginal == "mixture":
            estimator = MixtureMIEstimator(d, num_classes, **options).to(device)
        else:
            estimator = KNIFEEstimator(
                d, cond_dim=None if discrete else y.shape[1], num_classes=num_classes, hidden_dims=tuple(hidden_dims),
                **options,
            ).to(device)  # fmt: skip
        estimator.init_from_samples(z[train_index], y[train_index])
        history = _fit(
            estimator, lambda index: estimator(z[index], y[index]).loss, train_index, validation_index,
            max_steps=max_steps, batch_size=batch_size, lr=lr, eval_every=eval_every, patience=patience,
            generator=generator, progress=progress, description="fitting knife MI",
        )  # fmt: skip
    estimator.eval()
    with torch.no_grad():
        marginal_nll, conditional_nll = (
            t.double().cpu() for t in estimator.pointwise(z[test_index], y[test_index])
        )
    pointwise_mi = marginal_nll - conditional_nll  # [N_test]
    return EstimationResult(
        estimate=float(pointwise_mi.mean()),
        stderr=_stderr(pointwise_mi),
        method=method,
        estimator=estimator,
        num_samples={"train": len(train_index), "validation": len(validation_index), "test": len(test_index)},
        history=history,
        details={
            "marginal_entropy": float(marginal_nll.mean()),
            "conditional_entropy": float(conditional_nll.mean()),
        },
        standardization=(mean, std),
    )
