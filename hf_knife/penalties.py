"""Penalties: features ``Z [B, d]`` (+ sensitive labels) -> a routed loss and named components.

This is the one place penalties live; the model mixins and the trainer only call :func:`build_penalty` and
``penalty(z, sensitive)``. Gradient routing (DESIGN.md §2) happens here: with ``gs = scale_gradient`` and
the current weight ``lam``,

    loss_est = -mean log q(gs(z, +lam)) - mean log q(gs(z, -lam) | s)

gives the estimator parameters the maximum-likelihood fitting gradient and ``z`` the gradient of
``lam * I_hat(Z; S)``. The returned loss has the *value* ``lam * I_hat`` (so the logged loss stays
``task + lam * I_hat``) and the gradient of ``loss_est``.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import Tensor, nn
from transformers import initialization as hf_init

from .budget import BudgetController
from .config import PENALTY_REGISTRY, KNIFEConfig
from .distributed import all_gather_with_grad, broadcast_module, is_distributed
from .estimators import (
    ConditionalKernel,
    KNIFEEstimator,
    MarginalKernel,
    MixtureMIEstimator,
)
from .estimators.base import KernelBase
from .estimators.degenerate import find_degenerate_directions, relative_floor
from .estimators.validation import check_labels
from .ops import scale_gradient

__all__ = [
    "AdversarialPenalty",
    "EntropyPenalty",
    "InformationBottleneckPenalty",
    "KNIFEPenalty",
    "MutualInformationPenalty",
    "PenaltyOutput",
    "build_penalty",
]

#: Resolution of the estimator on standardised features. Running variances are floored at (10% of the typical
#: spread)^2 and kernel bandwidths at 10% of each coordinate's (floored) spread: maximum likelihood drives the
#: bandwidth of a constant or duplicated direction to zero, after which any movement there makes the density
#: explode (a dead unit of MiniLM moving by 1e-5 gave an NLL of 1e16). With these floors a coordinate that wakes
#: up by 2% of the typical spread costs about 2 nats, and the kernels stay well below Scott's rule (about 1).
VARIANCE_FLOOR_FRACTION = 0.1
STANDARDIZED_BANDWIDTH_BOUNDS = (1e-1, 1e2)


@dataclass
class PenaltyOutput:
    """Result of a penalty on one batch.

    Attributes:
        loss: ``[]``; value ``weight * penalty`` (e.g. ``lam * I_hat``), gradient routed as in DESIGN.md §2
            (estimator: fitting NLL; features: ``weight * grad penalty``). Add it to the task loss.
        metrics: detached ``[]`` scalars, logged as ``knife/<name>``.
    """

    loss: Tensor
    metrics: dict[str, Tensor] = field(default_factory=dict)


def _scale_rows(z: Tensor, scale: Tensor) -> Tensor:
    """Identity forward; the gradient of row ``n`` of ``z [B, d]`` is multiplied by ``scale[n]``."""
    return z.detach() + (z - z.detach()) * scale.unsqueeze(1)  # [B, d]


def _value_with_grad(value: Tensor, *grad_terms: Tensor) -> Tensor:
    """A scalar whose value is ``value`` and whose gradient is that of ``sum(grad_terms)``."""
    out = value.detach()
    for term in grad_terms:
        out = out + (term - term.detach())
    return out


def _variance_floor(var: Tensor) -> Tensor:
    """Floor of the running variances ``var [dim]``: (10% of the typical standard deviation)^2, relative to the
    data's own scale, so a dead coordinate that starts to move is measured against the live ones."""
    return relative_floor(var.clamp_min(0).sqrt(), VARIANCE_FLOOR_FRACTION).square()


def _reset_kernel(kernel: KernelBase, init_std: float = 1.0, init_bandwidth: float = 1.0) -> None:
    """Constructor initialisation of a KNIFE kernel (HF init functions: tensors loaded from a checkpoint are kept)."""
    hf_init.normal_(kernel.loc, 0.0, init_std)
    hf_init.constant_(kernel.log_diag, -math.log(init_bandwidth))
    hf_init.zeros_(kernel.mixture_logits)
    if kernel.tril is not None:
        hf_init.zeros_(kernel.tril)
    if kernel.factor is not None:
        hf_init.normal_(kernel.factor, 0.0, 0.01 / math.sqrt(kernel.dim))
    if isinstance(kernel, ConditionalKernel):
        for module in kernel.trunk.modules():
            if isinstance(module, nn.Linear):
                hf_init.kaiming_uniform_(module.weight, a=math.sqrt(5))
                bound = 1.0 / math.sqrt(module.in_features)
                hf_init.uniform_(module.bias, -bound, bound)
        for tensor in (kernel.head.weight, kernel.head.bias, kernel.skip.weight):
            hf_init.zeros_(tensor)


class KNIFEPenalty(nn.Module):
    """Base class: holds the estimator, an optional fixed projection, the weight schedule and the input checks.

    Submodules: ``estimator`` (fitted by maximum likelihood; its own optimizer group), ``inner_state`` (Adam
    moments of the inner fitting steps) and, for the information bottleneck, ``head`` (trained with the model).
    Buffers: ``projection [hidden, p]`` (fixed random orthonormal map, if ``projection_dim``), ``initialized``
    (whether the estimator was initialised at data), ``feature_mean [p]`` / ``feature_var [p]`` (running
    standardisation; entropies are reported in the units of Z).

    Per optimizer step: ``forward`` on each micro-batch (penalty with routed gradients; features stored), then
    :meth:`end_of_step` (inner fitting steps on the stored features, then the running statistics). Without
    KNIFETrainer (``global_step`` unset) every training forward counts as one optimizer step.
    """

    name: ClassVar[str] = ""
    estimator: nn.Module

    def __init__(self, config: KNIFEConfig, hidden_size: int, source: str = "Z") -> None:
        super().__init__()
        self.config, self.hidden_size, self.source = config, hidden_size, source
        self.dim = config.projection_dim or hidden_size
        if config.projection_dim is not None:
            self.register_buffer("projection", torch.empty(hidden_size, config.projection_dim))
        else:
            self.projection = None
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))
        # running standardisation (buffers); the sums of the current optimizer step are plain attributes, folded
        # at the end of the step (not buffers: DDP would overwrite them with rank 0's at every forward)
        self.register_buffer("feature_mean", torch.zeros(self.dim))
        self.register_buffer("feature_var", torch.ones(self.dim))
        self._stats_sums: Tensor | None = None  # [2, dim] float64: sum, sum of squares
        self._stats_count = 0
        self.global_step: int | None = None  # set by KNIFETrainer; otherwise counted in training forwards
        self._forward_count = 0
        self._inner_batches: list[tuple[Tensor, Tensor | None]] = []
        self._stats_gathered = False
        self._known_initialized = False
        # budget (config.target): the multiplier's state is in the controller's buffers; the sums of the current
        # optimizer step are a plain attribute, all-reduced in end_of_step (like the feature sums)
        self.budget: BudgetController | None = None
        if config.target is not None:
            raising = config.penalty == "entropy" and config.entropy_direction == "raise"
            self.budget = BudgetController(
                config.target, config.weight, rate=config.budget_rate, smoothing=config.budget_smoothing,
                sign=-1.0 if raising else 1.0,
            )  # fmt: skip
        self._budget_sums: Tensor | None = None  # [k] float64, see budget_statistics

    # ------------------------------------------------------------------ parameters
    def kernel_options(self) -> dict:
        c = self.config
        bounds = tuple(c.bandwidth_bounds) if c.bandwidth_bounds else None
        if bounds is None and c.standardize:  # in units of Z's running standard deviation
            bounds = STANDARDIZED_BANDWIDTH_BOUNDS
        return dict(
            num_components=c.num_components, covariance=c.covariance, rank=c.rank, bandwidth_bounds=bounds
        )

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Constructor-time initialisation (also called from the model's ``_init_weights``)."""
        if self.projection is not None:
            q, _ = torch.linalg.qr(torch.randn(self.hidden_size, self.hidden_size))  # [d, d]
            hf_init.copy_(self.projection, q[:, : self.dim].to(self.projection.dtype))
        hf_init.zeros_(self.initialized)
        self._known_initialized = False
        hf_init.zeros_(self.feature_mean)
        hf_init.ones_(self.feature_var)
        self._stats_sums, self._stats_count = None, 0
        self._inner_batches = []
        for tensor in getattr(self, "inner_state", nn.Module()).buffers():
            hf_init.zeros_(tensor)
        for module in self.estimator.modules():
            if isinstance(module, KernelBase):
                _reset_kernel(module)
            elif isinstance(module, MixtureMIEstimator):
                hf_init.constant_(module.log_prior, -math.log(module.num_classes))

    def estimator_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.estimator.parameters() if p.requires_grad]

    # ------------------------------------------------------------------ schedule and checks
    @property
    def step(self) -> int:
        return self.global_step if self.global_step is not None else self._forward_count

    def current_weight(self, step: int | None = None) -> float:
        """``0`` during warm-up, then a linear ramp to ``weight`` over ``anneal_steps``; with a budget
        (``target``), the controller's multiplier after warm-up."""
        step = self.step if step is None else step
        c = self.config
        if step < c.warmup_steps:
            return 0.0
        if self.budget is not None:
            return float(self.budget.multiplier)
        if c.anneal_steps > 0:
            return c.weight * min(1.0, (step - c.warmup_steps + 1) / c.anneal_steps)
        return c.weight

    def check_features(self, z: Tensor) -> Tensor:
        if z.dim() != 2 or z.shape[1] != self.hidden_size:
            raise ValueError(
                f"the representation Z ({self.source}) must have shape [B, {self.hidden_size}], got {tuple(z.shape)}"
            )
        if self.config.check_finite:
            finite = torch.isfinite(z)
            if not bool(finite.all()):
                n_nan, n_inf = int(torch.isnan(z).sum()), int(torch.isinf(z).sum())
                raise FloatingPointError(
                    f"non-finite values in the representation Z ({self.source}) at step {self.step}: {n_nan} NaN and "
                    f"{n_inf} Inf of {z.numel()} values (shape {tuple(z.shape)}); the model diverged or its input is bad"
                )
        return z

    def prepare(self, z: Tensor) -> Tensor:
        """Checks, fp32, projection: ``[B, hidden] -> [B, dim]``."""
        z = self.check_features(z).float()
        if self.projection is not None:
            z = z @ self.projection.float()  # [B, p]
        return z

    def check_sensitive(self, sensitive: Tensor | None, batch: int) -> Tensor | None:
        return sensitive

    # ------------------------------------------------------------------ running standardisation
    STATS_MOMENTUM: ClassVar[float] = 0.1

    def standardize(self, z: Tensor, gathered: bool = False) -> Tensor:
        """``[B, dim] -> [B, dim]``: ``(z - mean) / std`` with the running statistics (tracked in training)."""
        if not self.config.standardize:
            return z
        if self.training:
            self._track(z.detach(), gathered)
        return (z - self.feature_mean) * self.feature_var.rsqrt()  # [B, dim]

    def log_scale(self) -> Tensor:
        """``sum_j log std_j``: entropy in the original units = entropy of the standardised Z + this."""
        if not self.config.standardize:
            return self.feature_var.new_zeros(())
        return 0.5 * self.feature_var.log().sum()

    @torch.no_grad()
    def _track(self, z: Tensor, gathered: bool) -> None:
        """Accumulate this micro-batch's feature sums (folded into the statistics by :meth:`fold_statistics`)."""
        z = z.double()
        sums = torch.stack([z.sum(0), z.pow(2).sum(0)])  # [2, dim]
        self._stats_sums = sums if self._stats_sums is None else self._stats_sums + sums
        self._stats_count += z.shape[0]
        if self.global_step is None:  # no trainer: every forward is an optimizer step
            self.fold_statistics()

    @torch.no_grad()
    def fold_statistics(self) -> None:
        """Fold the sums of the finished optimizer step into the running mean and variance.

        KNIFETrainer calls it once per optimizer step on every process (sums all-reduced), which makes the
        statistics independent of gradient accumulation and of the number of processes.
        """
        if not self.config.standardize:
            return
        device = self.feature_mean.device
        sums = (
            self._stats_sums
            if self._stats_sums is not None
            else torch.zeros(2, self.dim, dtype=torch.float64)
        )
        packed = torch.cat(
            [
                sums.flatten().to(device),
                torch.tensor([float(self._stats_count)], device=device, dtype=torch.float64),
            ]
        )
        if is_distributed() and not self._stats_gathered:
            torch.distributed.all_reduce(packed)
        self._stats_sums, self._stats_count = None, 0
        count = float(packed[-1])
        if count == 0:
            return
        sums = packed[:-1].view(2, self.dim)
        mean = sums[0] / count  # [dim]
        var = (sums[1] / count - mean.pow(2)).clamp_min(0.0)  # [dim]
        m = self.STATS_MOMENTUM
        self.feature_mean.mul_(1 - m).add_(m * mean.to(self.feature_mean.dtype))
        self.feature_var.mul_(1 - m).add_(m * var.to(self.feature_var.dtype))
        self.feature_var.clamp_(min=float(_variance_floor(self.feature_var)))

    @torch.no_grad()
    def _set_statistics(self, z: Tensor) -> None:
        if self.config.standardize:
            self.feature_mean.copy_(z.mean(0))
            var = z.var(0, unbiased=False) if z.shape[0] > 1 else torch.ones_like(z[0])  # [dim]
            self.feature_var.copy_(var.clamp_min(float(_variance_floor(var))))

    # ------------------------------------------------------------------ fitting
    def fitting_loss(self, z: Tensor, sensitive: Tensor | None) -> Tensor:
        """Maximum-likelihood loss of the estimator on (detached) prepared features ``z [B, dim]``."""
        raise NotImplementedError

    def _init_estimator(self, z: Tensor, sensitive: Tensor | None) -> None:
        raise NotImplementedError

    @torch.no_grad()
    def init_from_samples(self, features: Tensor, sensitive: Tensor | None = None) -> KNIFEPenalty:
        """Initialise the estimator at samples of raw features ``[N, hidden]`` (means at samples, Scott bandwidths)."""
        z = self.prepare(features)
        sensitive = self.check_sensitive(sensitive, z.shape[0])
        self.init_from_samples_prepared(z, sensitive)
        return self

    def _make_inner_state(self) -> None:
        """Adam moments of the inner fitting steps, as buffers so that checkpoints hold them (call after the
        estimator exists)."""
        self.inner_state = nn.Module()
        self.inner_state.register_buffer("step", torch.zeros((), dtype=torch.long))
        for i, p in enumerate(self.estimator_parameters()):
            self.inner_state.register_buffer(f"exp_avg_{i}", torch.zeros_like(p))
            self.inner_state.register_buffer(f"exp_avg_sq_{i}", torch.zeros_like(p))

    def _store_for_inner_fit(self, z: Tensor, sensitive: Tensor | None) -> None:
        """Keep this micro-batch's detached standardised features for the fitting steps at the end of the step."""
        if self.config.inner_steps == 0:
            return
        self._inner_batches.append((z.detach(), None if sensitive is None else sensitive.detach()))
        if self.global_step is None:  # no trainer: every forward is an optimizer step
            self.inner_fit()

    @torch.no_grad()
    def inner_fit(self) -> None:
        """``inner_steps`` Adam steps (lr ``estimator_lr``) of the estimator's fitting loss on the features of the
        optimizer step that just finished; gradients are averaged over processes.

        KNIFETrainer calls it once per optimizer step, so the result does not depend on gradient accumulation
        or on the number of processes, and the Adam moments (buffers) make resumed runs exact.
        """
        batches, self._inner_batches = self._inner_batches, []
        if not batches or self.config.inner_steps == 0:
            return
        z = torch.cat([b[0] for b in batches])  # [N, dim]
        sensitive = None if batches[0][1] is None else torch.cat([b[1] for b in batches])
        params = self.estimator_parameters()
        state = self.inner_state
        beta1, beta2, eps, lr = 0.9, 0.999, 1e-8, self.config.estimator_lr
        for _ in range(self.config.inner_steps):
            with torch.enable_grad():
                grads = torch.autograd.grad(self.fitting_loss(z, sensitive), params, allow_unused=True)
            grads = [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]
            if is_distributed() and not self._stats_gathered:
                flat = torch.cat([g.flatten() for g in grads])
                torch.distributed.all_reduce(flat)
                flat /= torch.distributed.get_world_size()
                grads = list(flat.split([g.numel() for g in grads]))
            state.step += 1
            step = state.step.to(torch.float64)  # bias corrections on the device: no host sync
            correction1, correction2 = 1 - beta1**step, 1 - beta2**step
            for i, (p, g) in enumerate(zip(params, grads)):
                g = g.view_as(p)
                m, v = getattr(state, f"exp_avg_{i}"), getattr(state, f"exp_avg_sq_{i}")
                m.mul_(beta1).add_(g, alpha=1 - beta1)
                # saturate instead of overflowing: an inf second moment would freeze the parameter for good
                v.mul_(beta2).addcmul_(g, g, value=1 - beta2).clamp_(max=torch.finfo(v.dtype).max)
                denom = (v / correction2.to(v.dtype)).sqrt_().add_(eps)
                p.sub_(lr * m / correction1.to(m.dtype) / denom)
        if self.config.check_finite and not all(bool(torch.isfinite(p).all()) for p in params):
            raise FloatingPointError(
                f"the KNIFE estimator's parameters became non-finite in its inner fitting steps at step {self.step} "
                f"(estimator_lr={lr:g}); lower estimator_lr or inner_steps, or set bandwidth_bounds"
            )

    def end_of_step(self) -> None:
        """Called once per optimizer step by KNIFETrainer: inner fitting steps, the running statistics, then the
        budget's multiplier."""
        self.inner_fit()
        self.fold_statistics()
        self.update_budget()

    # ------------------------------------------------------------------ budget (config.target)
    #: whether the penalty defines an estimate that a ``target`` can bound (checked by KNIFEConfig.validate)
    supports_target: ClassVar[bool] = False
    #: the metric of :meth:`compute` that the budget bounds (a per-sample mean)
    budget_metric: ClassVar[str] = ""

    def budget_statistics(self, metrics: dict[str, Tensor], sensitive: Tensor | None, n: int) -> Tensor:
        """``[k]`` float64 sums of one micro-batch of ``n`` rows, additive over micro-batches and processes:
        ``[n * estimate, n]`` here (the estimate is a per-sample mean)."""
        estimate = metrics[self.budget_metric].detach().double()
        return torch.stack([estimate * n, estimate.new_tensor(float(n))])

    def budget_estimate(self, sums: Tensor) -> Tensor:
        """The estimate of the rows summed in ``sums`` (see :meth:`budget_statistics`)."""
        return sums[0] / sums[1]

    @torch.no_grad()
    def update_budget(self) -> None:
        """Feed the optimizer step's estimate (mean over its micro-batches and processes) to the controller.

        Once per optimizer step on every process (one all-reduce), so the multiplier does not depend on gradient
        accumulation or the number of processes. Nothing happens during warm-up.
        """
        sums, self._budget_sums = self._budget_sums, None
        if self.budget is None or self.step < self.config.warmup_steps:
            return
        if is_distributed():
            if sums is None:  # no training forward on this process: contribute nothing
                sums = torch.zeros(self._budget_width(), dtype=torch.float64, device=self.budget.multiplier.device)
            torch.distributed.all_reduce(sums)
        if sums is not None and float(sums[1]) > 0:
            self.budget.update(self.budget_estimate(sums))

    def _budget_width(self) -> int:
        return 2

    # ------------------------------------------------------------------ forward
    def compute(self, z: Tensor, sensitive: Tensor | None, weight: float) -> PenaltyOutput:
        raise NotImplementedError

    def forward(self, features: Tensor, sensitive: Tensor | None = None) -> PenaltyOutput:
        """``features [B, hidden]`` (and ``sensitive [B]`` or ``[B, c]``) -> :class:`PenaltyOutput`."""
        z = self.prepare(features)
        sensitive = self.check_sensitive(sensitive, z.shape[0])
        gathered = self._stats_gathered = self.config.gather_features and is_distributed()
        if gathered:
            z = all_gather_with_grad(z)  # [sum B_r, dim]
            sensitive = all_gather_with_grad(sensitive) if sensitive is not None else None
        if self.training and self.config.init_from_data and not self._known_initialized:
            self._known_initialized = bool(self.initialized)  # one host sync until it is True
            if not self._known_initialized:
                self.init_from_samples_prepared(z.detach(), sensitive)
        z = self.standardize(z, gathered)
        if self.training:
            self._store_for_inner_fit(z, sensitive)
        weight = self.current_weight()
        out = self.compute(z, sensitive, weight)
        out.metrics["weight"] = torch.tensor(weight, device=z.device)
        if self.budget is not None:
            sums = self.budget_statistics(out.metrics, sensitive, z.shape[0])  # [k]
            out.metrics["multiplier"] = self.budget.multiplier.detach().clone()
            out.metrics["constraint"] = self.budget.constraint(self.budget_estimate(sums)).float()
            if self.training and self.step >= self.config.warmup_steps:
                self._budget_sums = sums if self._budget_sums is None else self._budget_sums + sums
                if self.global_step is None:  # no trainer: every forward is an optimizer step
                    self.update_budget()
        if self.training and self.global_step is None:
            self._forward_count += 1
        return out

    @torch.no_grad()
    def init_from_samples_prepared(self, z: Tensor, sensitive: Tensor | None) -> None:
        """Initialise from prepared (projected, not standardised) features ``[N, dim]``; same on every process."""
        degenerate = find_degenerate_directions(z)
        if degenerate and (not is_distributed() or torch.distributed.get_rank() == 0):
            warnings.warn(
                degenerate.describe(f"the representation Z ({self.source})")
                + ". The estimator measures them on a variance floor of 10% of the typical spread, with kernel "
                "bandwidths of at least 10% of that, so they stay finite if they start to move; consider "
                "projection_dim or another representation if many coordinates are dead.",
                stacklevel=2,
            )
        self._set_statistics(z)
        z = (z - self.feature_mean) * self.feature_var.rsqrt() if self.config.standardize else z  # [N, dim]
        self._init_estimator(z, sensitive)
        self.initialized.fill_(True)
        self._known_initialized = True
        broadcast_module(self)


@PENALTY_REGISTRY.register("mutual_information")
class MutualInformationPenalty(KNIFEPenalty):
    """Minimise ``I(Z; S) = h(Z) - h(Z | S)`` for a discrete (any number of classes) or continuous S."""

    name = "mutual_information"
    supports_target = True
    budget_metric = "mutual_information"

    def __init__(self, config: KNIFEConfig, hidden_size: int, source: str = "Z") -> None:
        super().__init__(config, hidden_size, source)
        if config.sensitive_type == "discrete":
            if config.num_sensitive_classes is None:
                raise ValueError(
                    "mutual_information with a discrete S needs num_sensitive_classes (KNIFETrainer infers it from "
                    "the sensitive column of the training data)"
                )
            if config.discrete_marginal == "mixture":
                self.estimator = MixtureMIEstimator(
                    self.dim, config.num_sensitive_classes, fit=config.discrete_fit, **self.kernel_options()
                )
            else:
                self.estimator = KNIFEEstimator(
                    self.dim, num_classes=config.num_sensitive_classes, **self.kernel_options()
                )
        else:
            self.estimator = KNIFEEstimator(
                self.dim,
                cond_dim=config.sensitive_dim,
                hidden_dims=tuple(config.hidden_dims),
                **self.kernel_options(),
            )
        self._make_inner_state()
        self.reset_parameters()

    def check_sensitive(self, sensitive: Tensor | None, batch: int) -> Tensor:
        column = self.config.sensitive_column or "sensitive"
        if sensitive is None:
            raise ValueError(
                f"the mutual_information penalty needs the sensitive variable: pass sensitive=... to the model "
                f"(KNIFETrainer reads the dataset column {column!r})"
            )
        if not isinstance(sensitive, Tensor):
            sensitive = torch.as_tensor(sensitive)
        if self.config.sensitive_type == "discrete":
            return check_labels(
                sensitive, f"sensitive column {column!r}", self.config.num_sensitive_classes, length=batch
            )
        if not torch.is_floating_point(sensitive):
            sensitive = sensitive.float()
        y = sensitive.reshape(batch, -1).float()  # [B, c]
        if y.shape[1] != self.config.sensitive_dim:
            raise ValueError(
                f"sensitive column {column!r} has {y.shape[1]} values per example, expected "
                f"sensitive_dim={self.config.sensitive_dim}"
            )
        if not bool(torch.isfinite(y).all()):
            raise FloatingPointError(f"sensitive column {column!r} holds NaN or Inf at step {self.step}")
        return y

    def _init_estimator(self, z: Tensor, sensitive: Tensor | None) -> None:
        self.estimator.init_from_samples(z, sensitive)

    def fitting_loss(self, z: Tensor, sensitive: Tensor | None) -> Tensor:
        return self.estimator(z, sensitive).loss

    def compute(self, z: Tensor, sensitive: Tensor | None, weight: float) -> PenaltyOutput:
        if isinstance(self.estimator, MixtureMIEstimator):
            marginal_log_prob = self.estimator.marginal_log_prob
        else:
            marginal_log_prob = self.estimator.marginal.log_prob
        conditional = self.estimator.conditional
        scale = torch.full(z.shape[:1], weight, device=z.device)  # [B]
        if self.config.positive_part:
            with torch.no_grad():  # which samples have a positive pointwise MI (invariant to standardisation)
                pointwise = conditional.log_prob(z, sensitive) - marginal_log_prob(z)  # [B]
            scale = scale * (pointwise > 0)
        # the estimator gets the gradient of its fitting loss a h(Z) + b h(Z|S); the rows of z are scaled so that
        # z gets w * grad (h(Z) - h(Z|S)) whatever (a, b) are
        a, b = self.estimator.fit_coefficients
        marginal_nll = -marginal_log_prob(_scale_rows(z, scale / a))  # [B]: z gets +w * grad h
        conditional_nll = -conditional.log_prob(
            _scale_rows(z, -scale / b), sensitive
        )  # [B]: z gets -w * grad h(.|S)
        h_marginal, h_conditional = marginal_nll.mean(), conditional_nll.mean()
        mutual_information = h_marginal - h_conditional
        fit = a * h_marginal + b * h_conditional
        penalty = (
            (marginal_nll - conditional_nll).clamp_min(0).mean()
            if self.config.positive_part
            else mutual_information
        )
        loss = _value_with_grad(weight * penalty, fit)
        log_scale = self.log_scale()
        metrics = {
            "marginal_entropy": (h_marginal + log_scale).detach(),
            "conditional_entropy": (h_conditional + log_scale).detach(),
            "mutual_information": mutual_information.detach(),
            "estimator_nll": fit.detach(),
        }
        return PenaltyOutput(loss=loss, metrics=metrics)


@PENALTY_REGISTRY.register("entropy")
class EntropyPenalty(KNIFEPenalty):
    """Lower (``entropy_direction="lower"``) or raise (``"raise"``) the KNIFE estimate of h(Z)."""

    name = "entropy"
    supports_target = True
    budget_metric = "marginal_entropy"  # in the units of Z

    def __init__(self, config: KNIFEConfig, hidden_size: int, source: str = "Z") -> None:
        super().__init__(config, hidden_size, source)
        self.estimator = MarginalKernel(self.dim, **self.kernel_options())
        self.sign = 1.0 if config.entropy_direction == "lower" else -1.0
        self._make_inner_state()
        self.reset_parameters()

    def _init_estimator(self, z: Tensor, sensitive: Tensor | None) -> None:
        self.estimator.init_from_samples(z)

    def fitting_loss(self, z: Tensor, sensitive: Tensor | None) -> Tensor:
        return self.estimator(z)

    def compute(self, z: Tensor, sensitive: Tensor | None, weight: float) -> PenaltyOutput:
        nll = -self.estimator.log_prob(scale_gradient(z, self.sign * weight)).mean()
        entropy = nll + self.log_scale()  # in the units of Z
        loss = _value_with_grad(self.sign * weight * entropy, nll)
        return PenaltyOutput(
            loss=loss, metrics={"marginal_entropy": entropy.detach(), "estimator_nll": nll.detach()}
        )


@PENALTY_REGISTRY.register("adversarial")
class AdversarialPenalty(KNIFEPenalty):
    """Gradient-reversal baseline (Ganin & Lempitsky, 2015): an MLP adversary predicts a discrete S from Z.

    The adversary minimises its cross-entropy CE(S | Z); through a gradient-reversal layer the features get
    ``-weight * grad CE``, i.e. the model maximises the adversary's loss. The loss *value* is ``-weight * CE``
    (what the model optimises); ``hidden_dims`` sets the adversary's width and ``estimator_lr`` its learning rate.
    """

    name = "adversarial"
    supports_target = True  # on the adversary's bound I(Z;S) >= H(S) - CE (Barber-Agakov)

    def __init__(self, config: KNIFEConfig, hidden_size: int, source: str = "Z") -> None:
        super().__init__(config, hidden_size, source)
        if config.sensitive_type != "discrete" or config.num_sensitive_classes is None:
            raise ValueError(
                "the adversarial penalty needs a discrete S with num_sensitive_classes (KNIFETrainer infers it from "
                "the sensitive column of the training data)"
            )
        layers: list[nn.Module] = []
        width = self.dim
        for hidden in config.hidden_dims:
            layers += [nn.Linear(width, hidden), nn.ReLU()]
            width = hidden
        self.estimator = nn.Sequential(*layers, nn.Linear(width, config.num_sensitive_classes))
        self._make_inner_state()
        self.reset_parameters()

    check_sensitive = MutualInformationPenalty.check_sensitive

    @torch.no_grad()
    def reset_parameters(self) -> None:
        super().reset_parameters()
        for module in self.estimator.modules():
            if isinstance(module, nn.Linear):
                hf_init.kaiming_uniform_(module.weight, a=math.sqrt(5))
                bound = 1.0 / math.sqrt(module.in_features)
                hf_init.uniform_(module.bias, -bound, bound)

    def _init_estimator(self, z: Tensor, sensitive: Tensor | None) -> None:
        """The adversary starts from its random initialisation (only the feature statistics are set)."""

    def fitting_loss(self, z: Tensor, sensitive: Tensor | None) -> Tensor:
        return nn.functional.cross_entropy(self.estimator(z), sensitive)

    def compute(self, z: Tensor, sensitive: Tensor | None, weight: float) -> PenaltyOutput:
        logits = self.estimator(scale_gradient(z, -weight))  # [B, C]
        cross_entropy = nn.functional.cross_entropy(logits, sensitive)
        accuracy = (logits.detach().argmax(-1) == sensitive).float().mean()
        loss = _value_with_grad(-weight * cross_entropy, cross_entropy)
        return PenaltyOutput(
            loss=loss, metrics={"adversary_loss": cross_entropy.detach(), "adversary_accuracy": accuracy}
        )

    def budget_statistics(self, metrics: dict[str, Tensor], sensitive: Tensor | None, n: int) -> Tensor:
        """``[n * CE, n, count_0, ..., count_{C-1}]``: the budget bounds ``H(S) - CE``, with ``H(S)`` from the
        class frequencies of the whole optimizer step."""
        cross_entropy = metrics["adversary_loss"].detach().double()
        counts = torch.bincount(sensitive.long(), minlength=self.config.num_sensitive_classes).double()  # [C]
        return torch.cat([torch.stack([cross_entropy * n, cross_entropy.new_tensor(float(n))]), counts])

    def budget_estimate(self, sums: Tensor) -> Tensor:
        p = sums[2:] / sums[1]  # [C] class frequencies
        entropy = -(p * p.clamp_min(1e-300).log()).sum()
        return entropy - sums[0] / sums[1]

    def _budget_width(self) -> int:
        return 2 + int(self.config.num_sensitive_classes)


class GaussianHead(nn.Module):
    """Stochastic head ``z = mu + sigma * eps`` with ``mu = h`` and ``log sigma = W h + b``.

    ``W`` starts at zero and ``b`` at ``log(init_sigma)``, so the head starts as ``h`` plus small isotropic noise.
    In eval mode it returns ``mu``.
    """

    def __init__(self, dim: int, init_sigma: float) -> None:
        super().__init__()
        self.init_sigma = init_sigma
        self.log_sigma = nn.Linear(dim, dim)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        hf_init.zeros_(self.log_sigma.weight)
        hf_init.constant_(self.log_sigma.bias, math.log(self.init_sigma))

    def forward(self, h: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``h [B, d]`` -> ``(z, mu, log_sigma)``, each ``[B, d]`` (``z = mu`` in eval mode)."""
        mu = h
        log_sigma = self.log_sigma(h.to(self.log_sigma.weight.dtype)).to(h.dtype)  # [B, d]
        if not self.training:
            return mu, mu, log_sigma
        return mu + log_sigma.exp() * torch.randn_like(mu), mu, log_sigma


@PENALTY_REGISTRY.register("information_bottleneck")
class InformationBottleneckPenalty(KNIFEPenalty):
    """Minimise ``I(X; Z) = h_KNIFE(Z) - h(Z | X)`` through the stochastic head (or VIB's KL as the baseline).

    ``h(Z|X) = mean_n sum_j log sigma_nj + d/2 log(2 pi e)`` in closed form. Use :meth:`transform` as the
    representation hook's transform, so the classifier reads the noisy ``z``; ``forward`` then receives that ``z``.
    """

    name = "information_bottleneck"
    supports_target = True  # on the rate I(X;Z) (the KL for ib_estimator="vib")

    def __init__(self, config: KNIFEConfig, hidden_size: int, source: str = "Z") -> None:
        super().__init__(config, hidden_size, source)
        self.budget_metric = "vib_kl" if config.ib_estimator == "vib" else "mutual_information"
        self.head = GaussianHead(hidden_size, config.ib_init_sigma)
        self.estimator = MarginalKernel(self.dim, **self.kernel_options())
        self._last: tuple[Tensor, Tensor] | None = None
        self._make_inner_state()
        self.reset_parameters()

    def reset_parameters(self) -> None:
        super().reset_parameters()
        self.head.reset_parameters()

    def transform(self, h: Tensor) -> Tensor:
        """``[B, d] -> [B, d]``: sample the head; remembers ``mu`` and ``log sigma`` for :meth:`forward`."""
        z, mu, log_sigma = self.head(h)
        self._last = (mu, log_sigma)
        return z

    def _init_estimator(self, z: Tensor, sensitive: Tensor | None) -> None:
        self.estimator.init_from_samples(z)

    def fitting_loss(self, z: Tensor, sensitive: Tensor | None) -> Tensor:
        return self.estimator(z)

    def compute(self, z: Tensor, sensitive: Tensor | None, weight: float) -> PenaltyOutput:
        if self._last is None:
            raise RuntimeError(
                "information_bottleneck: call transform() on the representation before the penalty"
            )
        mu, log_sigma = (t.float() for t in self._last)
        self._last = None
        d = z.shape[1]
        h_conditional = log_sigma.sum(1).mean() + 0.5 * d * math.log(
            2 * math.pi * math.e
        )  # h(Z|X), closed form
        kl = (
            0.5 * (mu.pow(2) + (2 * log_sigma).exp() - 1.0 - 2 * log_sigma).sum(1).mean()
        )  # VIB: KL(q(z|x) || N(0, I))
        metrics = {"conditional_entropy": h_conditional.detach(), "vib_kl": kl.detach()}
        if self.config.ib_estimator == "vib":
            return PenaltyOutput(loss=weight * kl, metrics=metrics)
        nll = -self.estimator.log_prob(
            scale_gradient(z, weight)
        ).mean()  # h_KNIFE(Z): fit + weight * grad to z
        h_marginal = nll + self.log_scale()  # in the units of Z
        mutual_information = h_marginal - h_conditional
        loss = _value_with_grad(weight * mutual_information, nll, -weight * h_conditional)
        metrics.update(
            marginal_entropy=h_marginal.detach(),
            mutual_information=mutual_information.detach(),
            estimator_nll=nll.detach(),
        )
        return PenaltyOutput(loss=loss, metrics=metrics)


def build_penalty(config: KNIFEConfig, hidden_size: int, source: str = "Z") -> KNIFEPenalty:
    """Instantiate the penalty registered under ``config.penalty`` for features of size ``hidden_size``."""
    return PENALTY_REGISTRY.get(config.penalty)(config, hidden_size, source)
