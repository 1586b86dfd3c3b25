"""One-call estimators: ``estimate_entropy(x)`` and ``estimate_mutual_information(x, y)`` on arrays.

Both split the samples into a fitting split, a validation split (early stopping, learning-rate decay, model
selection) and a held-out test split on which the estimate and its standard error are reported: a cross-entropy
evaluated on the samples it was fitted to is biased low. (The calibrated readout of I(X; S) for class labels
reports on every sample outside the validation split instead, by cross-fitting: see
:func:`estimate_mutual_information`.) Samples are standardised first (entropy is corrected by
``sum_j log std_j``, MI is invariant), which makes the defaults independent of the data's scale.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import Tensor, nn

from .estimators import DoEEstimator, MarginalKernel, SchraudolphKernel
from .estimators.baselines import doe_mutual_information, knn_entropy, ksg_mutual_information
from .estimators.degenerate import find_degenerate_directions
from .estimators.fitting import FitOptions, fit
from .estimators.functional import COVARIANCE_TYPES
from .estimators.mutual_information import (
    CalibratedMixtureMIEstimator,
    build_mi_estimator,
    calibrated_log_posterior,
    fit_temperature,
    pooled_whitening,
)
from .estimators.validation import as_tensor, check_choice, check_labels, check_samples

__all__ = ["EstimationResult", "estimate_entropy", "estimate_mutual_information"]

ENTROPY_METHODS = ("knife", "schraudolph", "doe", "knn")
MI_METHODS = ("knife", "doe", "ksg")
#: How a discrete-label MI is read out: ``calibrated`` (default) selects a configuration of the class kernels on
#: validation data and calibrates their posterior; ``likelihood`` is the raw mixture fit of earlier versions.
DISCRETE_READOUTS = ("calibrated", "likelihood")
#: Configurations of the class kernels the calibrated readout chooses from, as (input map, kernels):
#: ``standardize`` (per-coordinate) or ``whiten`` (pooled within-class covariance, Ledoit-Wolf; see
#: :func:`~hf_knife.estimators.mutual_information.pooled_whitening`); ``tied`` (K = 1, one diagonal shared by all
#: classes, closed form: linear discriminant analysis), ``class`` (K = 1, a diagonal per class, closed form),
#: ``spiked`` (K = 1, the whitened identity plus each class's eigen-directions that leave the Marchenko-Pastur
#: bulk, closed form: :func:`~hf_knife.estimators.mutual_information.spiked_covariance`), ``full`` (K = 1, a
#: Ledoit-Wolf shrunk full covariance per class, closed form: regularised quadratic discriminant analysis) or
#: ``mixture`` (the KNIFE mixture of ``num_components`` / ``covariance``, fitted by likelihood with Adam). Listed
#: from the fewest fitted parameters to the most: the first configuration whose validation cross-entropy is within
#: one standard error of the best one's is kept (the one-standard-error rule).
READOUT_CONFIGURATIONS = (
    ("standardize", "tied"),
    ("whiten", "tied"),
    ("standardize", "class"),
    ("whiten", "class"),
    ("whiten", "spiked"),
    ("whiten", "full"),
    ("whiten", "mixture"),
)
#: Kernel bandwidth bounds (min, max) in units of each standardised coordinate's spread: maximum likelihood
#: shrinks kernels onto duplicated rows without limit; the floor keeps every estimate finite.
BANDWIDTH_BOUNDS = (1e-3, 1e3)


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


def _warn_duplicated_rows(x: Tensor, name: str) -> None:
    """Warn when ``x [N, d]`` repeats rows: a distribution with atoms has entropy -inf (the estimate then reflects
    the bandwidth floor)."""
    repeated = x.shape[0] - torch.unique(x, dim=0).shape[0]
    if repeated:
        warnings.warn(
            f"{name} has {repeated} duplicated rows of {x.shape[0]}: samples with atoms have differential entropy "
            f"-inf; kernels are kept at a bandwidth of at least {BANDWIDTH_BOUNDS[0]:g} of each coordinate's spread, "
            "so the estimate stays finite but depends on that floor",
            stacklevel=3,
        )


def _check_entropy_degenerate(x: Tensor, train_index: Tensor) -> None:
    """h(X) is -inf on constant or linearly dependent coordinates: refuse them, naming the coordinates."""
    found = find_degenerate_directions(x[train_index])
    if found.constant or found.duplicated or found.rank_deficient:
        raise ValueError(
            found.describe("x") + " (zero variance or linear dependence): its differential entropy is -inf (the "
            "samples lie on a lower-dimensional set); drop those coordinates, or estimate the entropy of a PCA of x"
        )
    if found.near_constant:
        warnings.warn(found.describe("x") + "; their entropy is very negative but finite", stacklevel=3)
    _warn_duplicated_rows(x[train_index], "x")


def _reduce_degenerate(x: Tensor, train_index: Tensor, name: str) -> Tensor:
    """For MI: drop constant coordinates of ``x [N, d]`` and keep the principal subspace of linearly dependent
    ones (an invertible map of the data, so I(X; Y) is unchanged); warns naming them. ``[N, d'] `` with d' <= d."""
    found = find_degenerate_directions(x[train_index])
    if found.near_constant:
        warnings.warn(found.describe(name) + "; they are kept", stacklevel=3)
    if not (found.constant or found.duplicated or found.rank_deficient):
        return x
    keep = [j for j in range(x.shape[1]) if j not in set(found.constant) | {j for _, j in found.duplicated}]
    x = x[:, keep]  # [N, L]
    remaining = find_degenerate_directions(x[train_index])
    if remaining.rank_deficient and remaining.rank is not None:  # dependent beyond duplicated pairs
        train = x[train_index]
        mean, std = train.mean(0), train.std(0)  # [L]
        _, _, vh = torch.linalg.svd((train - mean) / std, full_matrices=False)  # vh [L, L]
        x = ((x - mean) / std) @ vh[: remaining.rank].T  # [N, rank]
    warnings.warn(
        found.describe(name) + f"; I(X; Y) does not change when they are removed: estimating on {x.shape[1]} "
        f"coordinates of {name} instead of {found.dim}",
        stacklevel=3,
    )
    return x


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


# ----------------------------------------------------------------------------------------------- fitting
def _fit_candidates(
    candidates: list[int],
    fit_candidate: Callable[[int], tuple[nn.Module, list[dict[str, float]]]],
    validation_loss: Callable[[nn.Module], Tensor],
    seed: int,
    device: torch.device,
) -> tuple[nn.Module, list[dict[str, float]], dict[str, float]]:
    """Fit one estimator per mixture size ``K`` in ``candidates`` (each from the torch seed ``seed``) and keep the
    one with the lowest ``validation_loss``. Returns it, its history and the ``validation_loss_K<K>`` of each
    candidate with the ``num_components`` kept."""
    best: tuple[float, nn.Module, list] | None = None
    selection: dict[str, float] = {}
    for candidate in candidates:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(seed)
            module, history = fit_candidate(candidate)
        module.eval()
        with torch.no_grad():
            loss = float(validation_loss(module))
        selection[f"validation_loss_K{candidate}"] = loss
        if best is None or loss < best[0]:
            best = (loss, module, history)
    assert best is not None
    _, module, history = best
    selection["num_components"] = float(module.num_components)
    return module, history, selection


def _held_out_result(
    values: Tensor,
    method: str,
    estimator: nn.Module,
    splits: tuple[Tensor, Tensor],
    history: list[dict[str, float]],
    details: dict[str, float],
    standardization: tuple[Tensor, Tensor],
    offset: float = 0.0,
) -> EstimationResult:
    """The estimate ``mean(values) + offset`` and its standard error from per-sample held-out values
    ``[N_report]``; ``splits`` are the ``(train, validation)`` indices."""
    train_index, validation_index = splits
    return EstimationResult(
        estimate=float(values.mean()) + offset,
        stderr=_stderr(values),
        method=method,
        estimator=estimator,
        num_samples={"train": len(train_index), "validation": len(validation_index), "test": len(values)},
        history=history,
        details=details,
        standardization=standardization,
    )


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
    options: FitOptions,
) -> tuple[nn.Module, list[dict[str, float]]]:
    """Build and fit one entropy estimator on the standardised samples ``z``."""
    if method == "doe":
        return DoEEstimator(dim).to(device).init_from_samples(z[train_index]), []
    if method == "schraudolph":
        num_components = min(num_components, len(train_index) - 1)
        centres, train_index = train_index[:num_components], train_index[num_components:]
        module = SchraudolphKernel(dim, num_components, covariance, rank=rank, bandwidth_bounds=BANDWIDTH_BOUNDS)
        module = module.to(device)
        module.init_from_samples(z[centres])
    else:
        module = MarginalKernel(dim, num_components, covariance, rank=rank, bandwidth_bounds=BANDWIDTH_BOUNDS)
        module = module.to(device)
        module.init_from_samples(z[train_index])
    history = fit(module, lambda index: module(z[index]), train_index, validation_index, options=options,
                  generator=generator, description=f"fitting {method} (K={num_components})")  # fmt: skip
    return module, history


# ----------------------------------------------------------------------------------------------- discrete readout
def _default_num_components(num_train: int) -> int:
    return int(min(16, max(1, num_train // 32)))


def _mi_component_grid(num_train: int) -> list[int]:
    """Mixture sizes tried for a continuous ``y`` when ``num_components`` is not given (best validation loss)."""
    return [k for k in (1, 4, 16) if k == 1 or 32 * k <= num_train]


def _build_readout(
    configuration: tuple[str, str],
    z: Tensor,
    labels: Tensor,
    fit_index: Tensor,
    validation_index: Tensor | None,
    num_classes: int,
    mixture_options: dict[str, Any],
    fit_options: FitOptions,
    seed: int,
    device: torch.device,
    fixed_steps: int | None = None,
) -> tuple[CalibratedMixtureMIEstimator, list[dict[str, float]]]:
    """Fit one :data:`READOUT_CONFIGURATIONS` entry on ``z[fit_index]`` (temperature left at 1).

    The closed-form kernels need no iterations; the ``mixture`` stops early on ``validation_index``, or runs
    ``fixed_steps`` Adam steps when it is ``None`` (the cross-fitted refits, which have no validation split).
    """
    transform, kernels = configuration
    if kernels == "mixture":
        kernel_options = dict(mixture_options)
    else:
        covariance = "full" if kernels in ("full", "spiked") else "diagonal"
        kernel_options = dict(num_components=1, covariance=covariance, bandwidth_bounds=BANDWIDTH_BOUNDS)
    z_fit, labels_fit = z[fit_index], labels[fit_index]  # [N_fit, d], [N_fit]
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        estimator = build_mi_estimator(z.shape[1], num_classes=num_classes, readout="calibrated", **kernel_options)
        estimator = estimator.to(device)
        if transform == "whiten":
            estimator.set_transform(*pooled_whitening(z_fit, labels_fit, num_classes))
        estimator.init_from_samples(z_fit, labels_fit)
        if kernels != "mixture":
            shrinkage = "spiked" if kernels == "spiked" else "ledoit_wolf"
            return estimator.fit_gaussians(z_fit, labels_fit, tied=kernels == "tied", shrinkage=shrinkage), []
        generator = torch.Generator().manual_seed(seed + 1)

        def loss_fn(index: Tensor) -> Tensor:
            return estimator(z[index], labels[index]).loss

        description = f"fitting knife MI readout ({transform}, K={estimator.conditional.num_components})"
        if fixed_steps is not None:  # no validation split: the parameters after fixed_steps are kept
            fit_options, validation_index = replace(fit_options, max_steps=fixed_steps), None
        history = fit(estimator, loss_fn, fit_index, validation_index, options=fit_options, generator=generator,
                      description=description)  # fmt: skip
    return estimator, history


def _log_prior(estimator: CalibratedMixtureMIEstimator) -> Tensor:
    """The estimator's class log-prior, renormalised in float64 on the CPU: ``[C]`` (a float32 prior sums to 1 only
    to 1e-8, which would put T = 0 readouts at 1e-9 instead of 0)."""
    log_prior = estimator.log_prior.detach().double().cpu()  # [C]
    return log_prior - torch.logsumexp(log_prior, 0)


def _best_step(history: list[dict[str, float]]) -> int:
    """Step of the lowest validation loss of a fit (the parameters :func:`~hf_knife.estimators.fitting.fit`
    keeps)."""
    return int(min(history, key=lambda entry: entry["validation_loss"])["step"]) if history else 1


def _label_cross_entropy(log_likelihoods: Tensor, labels: Tensor, log_prior: Tensor, temperature: float) -> Tensor:
    """Per-sample ``-log q_T(s_n | x_n)``: ``[N]``."""
    log_posterior = calibrated_log_posterior(log_likelihoods, log_prior, temperature)  # [N, C]
    return -log_posterior.gather(1, labels.view(-1, 1)).squeeze(1)


def _discrete_readout(
    z: Tensor,
    labels: Tensor,
    train_index: Tensor,
    validation_index: Tensor,
    test_index: Tensor,
    num_classes: int,
    *,
    folds: int,
    mixture_options: dict[str, Any],
    fit_options: FitOptions,
    seed: int,
    device: torch.device,
    generator: torch.Generator,
) -> tuple[Tensor, CalibratedMixtureMIEstimator, list[dict[str, float]], dict[str, float]]:
    """The calibrated estimate of I(Z; S) for labels ``[N]`` and standardised ``z [N, d]``.

    1. *Selection*: every :data:`READOUT_CONFIGURATIONS` entry is fitted on the training split; a temperature is
       fitted on the validation split (:func:`fit_temperature`), and of the configurations whose calibrated
       validation cross-entropy of ``S`` given ``Z`` is within one standard error of the lowest, the first
       (simplest) is kept.
    2. *Report*: with ``folds == 1``, on the test split. Otherwise the samples outside the validation split are
       cross-fitted: cut into ``folds`` folds, each is scored by the kept configuration refitted on everything
       else (the validation split included), so each sample is scored by kernels that never saw it; the
       temperature of each random half is fitted on the other half (both 0 unless both pass the likelihood-ratio
       test of :func:`fit_temperature`). The estimate is the mean over all of them.

    Returns per-sample ``log q_T(s|x) - log p(s)`` ``[N_report]`` (float64, CPU), the selected estimator
    (fitted on the training split, temperature from the validation split), its history, and details.
    """
    validation_labels = labels[validation_index].cpu()
    details: dict[str, float] = {}
    fitted = []  # (configuration, estimator, history, per-sample validation cross-entropy [N_val])
    for offset, configuration in enumerate(READOUT_CONFIGURATIONS):
        estimator, history = _build_readout(
            configuration, z, labels, train_index, validation_index, num_classes, mixture_options, fit_options,
            seed + 7 * offset, device,
        )  # fmt: skip
        estimator.eval()
        with torch.no_grad():
            log_likelihoods = estimator.all_log_probs(z[validation_index]).double().cpu()  # [N_val, C]
        log_prior = _log_prior(estimator)  # [C]
        temperature = fit_temperature(log_likelihoods, validation_labels, log_prior)
        estimator.temperature.fill_(temperature)
        cross_entropy = _label_cross_entropy(log_likelihoods, validation_labels, log_prior, temperature)  # [N_val]
        details["validation_cross_entropy/" + "+".join(configuration)] = float(cross_entropy.mean())
        fitted.append((configuration, estimator, history, cross_entropy))
        if offset == 0:
            prior_ce = _label_cross_entropy(log_likelihoods, validation_labels, log_prior, 0.0).mean()
            details["validation_cross_entropy/prior"] = float(prior_ce)
    best = min(range(len(fitted)), key=lambda i: float(fitted[i][3].mean()))
    # one-standard-error rule on the paired per-sample differences: the simplest configuration not worse than the
    # best by more than the noise of the validation split
    keep = next(
        i for i in range(len(fitted))
        if float((fitted[i][3] - fitted[best][3]).mean()) <= _stderr(fitted[i][3] - fitted[best][3]) or i == best
    )  # fmt: skip
    configuration, selected, history, _ = fitted[keep]
    details.update(
        configuration=float(READOUT_CONFIGURATIONS.index(configuration)),
        whiten=float(configuration[0] == "whiten"),
        tied=float(configuration[1] == "tied"),
        num_components=float(selected.conditional.num_components),
        folds=float(folds),
        validation_temperature=float(selected.temperature),
    )

    if folds <= 1:
        report = test_index
        with torch.no_grad():
            log_likelihoods = selected.all_log_probs(z[report]).double().cpu()  # [N_test, C]
        log_prior = _log_prior(selected).expand_as(log_likelihoods)  # [N_test, C]
        temperatures = torch.full((len(report),), float(selected.temperature), dtype=torch.float64)  # [N_test]
    else:
        report = torch.cat([train_index, test_index])
        report = report[torch.randperm(len(report), generator=generator)]  # [N_report]
        fold_of = torch.arange(len(report)) % folds  # [N_report]
        log_likelihoods = torch.empty(len(report), num_classes, dtype=torch.float64)  # [N_report, C]
        log_prior = torch.empty_like(log_likelihoods)  # [N_report, C]
        fixed_steps = _best_step(history) if configuration[1] == "mixture" else None
        for fold in range(folds):
            held = fold_of == fold  # [N_report]
            fitting = torch.cat([report[~held], validation_index])
            estimator, _ = _build_readout(
                configuration, z, labels, fitting, None, num_classes, mixture_options, fit_options,
                seed + 1009 * (fold + 1), device, fixed_steps=fixed_steps,
            )  # fmt: skip
            estimator.eval()
            with torch.no_grad():
                log_likelihoods[held] = estimator.all_log_probs(z[report[held]]).double().cpu()
            log_prior[held] = _log_prior(estimator)
        half = torch.randperm(len(report), generator=generator) % 2  # [N_report]  two random halves
        report_labels = labels[report].cpu()
        temperatures = torch.empty(len(report), dtype=torch.float64)  # [N_report]
        fitted_temperatures = []
        for side in (0, 1):
            calibrate, apply = half == side, half != side
            temperature = fit_temperature(log_likelihoods[calibrate], report_labels[calibrate], log_prior[calibrate])
            temperatures[apply] = temperature
            fitted_temperatures.append(temperature)
            details[f"temperature_fitted_on_half{side}"] = temperature
        if min(fitted_temperatures) == 0.0:
            # dependence must pass the likelihood-ratio test on both halves: a temperature fitted to noise on one
            # half reads slightly below zero on the other (about one time in ten under independence otherwise)
            temperatures.zero_()

    report_labels = labels[report].cpu()
    own_prior = log_prior.gather(1, report_labels.view(-1, 1)).squeeze(1)  # [N_report]
    log_posterior = torch.log_softmax(log_prior + temperatures.unsqueeze(1) * log_likelihoods, dim=1)  # [N, C]
    own_posterior = log_posterior.gather(1, report_labels.view(-1, 1)).squeeze(1)  # [N_report]
    own_likelihood = log_likelihoods.gather(1, report_labels.view(-1, 1)).squeeze(1)  # [N_report]
    marginal_nll = -torch.logsumexp(log_prior + log_likelihoods, dim=1)  # [N_report]  untempered kernels
    details.update(
        label_entropy=float(-own_prior.mean()),
        conditional_label_entropy=float(-own_posterior.mean()),
        temperature=float(temperatures.mean()),
        marginal_entropy=float(marginal_nll.mean()),
        conditional_entropy=float(-own_likelihood.mean()),
        uncalibrated_mutual_information=float((marginal_nll + own_likelihood).mean()),
        num_reported=float(len(report)),
    )
    return own_posterior - own_prior, selected, history, details


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
    _check_entropy_degenerate(x, train_index)
    z, mean, std = _standardize(x, train_index)
    z = z.to(device=device, dtype=torch.float32)
    log_jacobian = float(std.double().log().sum())  # h(x) = h(z) + sum_j log std_j
    covariance = _default_covariance(d) if covariance == "auto" else covariance
    check_choice(covariance, "covariance", COVARIANCE_TYPES)

    options = FitOptions(max_steps=max_steps, batch_size=batch_size, lr=lr, eval_every=eval_every, patience=patience,
                         progress=progress)  # fmt: skip
    candidates = [num_components] if num_components else _component_grid(len(train_index))
    if method == "doe":
        candidates = [1]

    def fit_candidate(candidate: int) -> tuple[nn.Module, list[dict[str, float]]]:
        return _fit_marginal(
            method, z, train_index, validation_index, d, candidate, covariance, rank, device,
            torch.Generator().manual_seed(seed + 1), options,
        )  # fmt: skip

    module, history, selection = _fit_candidates(
        candidates, fit_candidate, lambda module: module(z[validation_index]), seed, device
    )
    with torch.no_grad():
        nll = -module.log_prob(z[test_index]).double().cpu()  # [N_test]
    return _held_out_result(nll, method, module, (train_index, validation_index), history, selection, (mean, std),
                            offset=log_jacobian)  # fmt: skip


def estimate_mutual_information(
    x: Any,
    y: Any,
    *,
    method: str = "knife",
    discrete: bool | None = None,
    discrete_marginal: str = "mixture",
    readout: str = "calibrated",
    folds: int = 5,
    num_components: int | None = None,
    covariance: str = "auto",
    rank: int | None = None,
    hidden_dims: tuple[int, ...] = (32, 32),
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

    For class labels ``y`` the default readout is calibrated (``readout="calibrated"``): KNIFE class kernels
    q(x | s) give the class posterior q(s | x) = p(s) q(x | s) / q(x), and I(X; Y) = h(X) - h(X|Y) is read as
    ``mean log q(s|x) / p(s)`` on samples the kernels never saw. In high dimension, kernels fitted by likelihood
    are over-confident off their fitting samples and that mean falls far below zero; so a temperature T on the
    class log-likelihoods, ``q_T(s|x) ∝ p(s) q(x|s)^T``, is fitted on held-out samples (T = 0 is the prior, so the
    estimate is then >= 0 up to noise), and the kernel configuration (:data:`READOUT_CONFIGURATIONS`: whitening by
    the pooled within-class covariance or not; one Gaussian per class, tied or not, with a spiked or Ledoit-Wolf
    full covariance, in closed form; or the KNIFE mixture) is chosen by the calibrated cross-entropy on the
    validation split. This is the Barber-Agakov bound: in expectation it does not exceed the truth, and it falls
    short by what the kernels miss (in d = 384 from 4,000 samples, about 10 to 25% of I for Gaussian classes, and
    up to half of it when much of I lies in class-specific variances along a few directions: from a few hundred
    samples of a class those directions are hardly distinguishable from sampling noise; with 16,000 samples the
    spiked covariances recover them).

    Args:
        x: ``[N, d]`` continuous samples (numpy or torch).
        y: ``[N, d_y]`` continuous, or ``[N]`` integer class labels (discrete; any number of classes).
        method: ``"knife"`` (default), ``"doe"`` (Gaussian) or ``"ksg"`` (Kraskov et al., continuous ``y``).
        discrete: force the type of ``y`` (default: integer ``[N]`` arrays are discrete).
        discrete_marginal: for discrete ``y``, ``"mixture"`` (default) estimates h(X) with the class kernels
            weighted by the class frequencies (:class:`~hf_knife.MixtureMIEstimator`: the estimate cannot exceed
            H(Y) by more than the prior's error, and shares the kernels' errors, hence a low variance);
            ``"kernel"`` fits a separate marginal kernel (:class:`~hf_knife.KNIFEEstimator`; no calibration).
        readout: for ``discrete_marginal="mixture"``: ``"calibrated"`` (default, above; ``result.estimator`` is a
            :class:`~hf_knife.estimators.mutual_information.CalibratedMixtureMIEstimator`) or ``"likelihood"``
            (one mixture of ``num_components`` fitted by likelihood and read as is: the estimator of earlier
            versions, biased low in high dimension).
        folds: calibrated readout only. ``1``: report on the test split. ``> 1`` (default 5): report on every
            sample outside the validation split by cross-fitting (each fold scored by kernels refitted on the
            other samples, the temperature of each half fitted on the other); more fitting samples, a smaller
            error, and exactly 0 unless the dependence is significant on both halves.
        num_components: mixture size ``K`` of both kernels. Default: for a continuous ``y``, K in (1, 4, 16)
            (those with at least 32 fitting samples per component) are each fitted and the one with the lowest
            validation loss is kept; for class labels ``min(16, N_train // 32)``.
        hidden_dims: MLP widths of the continuous conditional kernel. The default (32, 32) is small on purpose:
            on a fixed sample a wider conditional memorises its fitting pairs (on 20,000 Gaussian pairs in 10
            dimensions, (128, 128) overestimated h(X|Y) by 0.26 nats on held-out pairs, (32, 32) with K = 1 by 0.04).
        Other options as in :func:`estimate_entropy`.

    Returns:
        :class:`EstimationResult`; ``details`` holds the held-out ``marginal_entropy`` and ``conditional_entropy``
        of the standardised ``x`` (for the calibrated readout: of the untempered kernels, whose difference is
        ``uncalibrated_mutual_information``), and for the calibrated readout ``label_entropy`` (H(S) from the
        prior), ``conditional_label_entropy`` (cross-entropy of q_T(s|x); the estimate is their difference),
        ``temperature``, the ``validation_cross_entropy/...`` of each configuration and the one kept
        (``whiten``, ``tied``, ``num_components``). ``stderr`` is over the reported samples; it leaves out the
        spread from refitting the kernels on other samples.
    """
    check_choice(method, "method", MI_METHODS)
    check_choice(discrete_marginal, "discrete_marginal", ("mixture", "kernel"))
    check_choice(readout, "readout", DISCRETE_READOUTS)
    if not isinstance(folds, int) or folds < 1:
        raise ValueError(f"folds must be a positive integer, got {folds!r}")
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
    x = _reduce_degenerate(x, train_index, "x")
    if not discrete:
        y = _reduce_degenerate(y, train_index, "y")
    constant = [name for name, v in (("x", x), ("y", y)) if v.dim() == 2 and v.shape[1] == 0]
    if constant:  # a constant variable shares no information with anything: I = 0 exactly
        warnings.warn(f"{' and '.join(constant)} is constant on the fitting split: I(X; Y) = 0", stacklevel=2)
        return EstimationResult(0.0, 0.0, method, num_samples={"train": len(train_index)},
                                details={"constant": float(len(constant))})  # fmt: skip
    _warn_duplicated_rows(x[train_index], "x")
    d = x.shape[1]
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
    if num_components is None and not discrete:
        candidates = _mi_component_grid(len(train_index))
    else:
        candidates = [num_components or _default_num_components(len(train_index))]
    num_components = candidates[-1]
    num_classes = int(y.max()) + 1 if discrete else None
    options = FitOptions(max_steps=max_steps, batch_size=batch_size, lr=lr, eval_every=eval_every, patience=patience,
                         progress=progress)  # fmt: skip
    kernel_options = dict(
        num_components=num_components, covariance=covariance, rank=rank, bandwidth_bounds=BANDWIDTH_BOUNDS
    )
    splits = (train_index, validation_index)
    if discrete and discrete_marginal == "mixture" and readout == "calibrated":
        assert num_classes is not None
        pointwise_mi, estimator, history, details = _discrete_readout(
            z, y, train_index, validation_index, test_index, num_classes, folds=folds,
            mixture_options=kernel_options, fit_options=options, seed=seed, device=device, generator=generator,
        )  # fmt: skip
        return _held_out_result(pointwise_mi, method, estimator, splits, history, details, (mean, std))

    def fit_candidate(candidate: int) -> tuple[nn.Module, list[dict[str, float]]]:
        estimator = build_mi_estimator(
            d, num_classes=num_classes, cond_dim=None if discrete else y.shape[1], marginal=discrete_marginal,
            hidden_dims=hidden_dims, **{**kernel_options, "num_components": candidate},
        ).to(device)  # fmt: skip
        estimator.init_from_samples(z[train_index], y[train_index])
        # one candidate: batches continue the split's generator (the estimates of earlier versions)
        batches = generator if len(candidates) == 1 else torch.Generator().manual_seed(seed + 1)
        history = fit(
            estimator, lambda index: estimator(z[index], y[index]).loss, train_index, validation_index,
            options=options, generator=batches, description=f"fitting knife MI (K={candidate})",
        )  # fmt: skip
        return estimator, history

    estimator, history, selection = _fit_candidates(
        candidates, fit_candidate, lambda module: module(z[validation_index], y[validation_index]).loss, seed, device
    )
    with torch.no_grad():
        marginal_nll, conditional_nll = (
            t.double().cpu() for t in estimator.pointwise(z[test_index], y[test_index])
        )  # [N_test] each
    details = {
        "marginal_entropy": float(marginal_nll.mean()),
        "conditional_entropy": float(conditional_nll.mean()),
        **selection,
    }
    return _held_out_result(marginal_nll - conditional_nll, method, estimator, splits, history, details, (mean, std))
