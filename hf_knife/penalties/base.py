"""KNIFEPenalty: features ``Z [B, d]`` (+ the sensitive variable) -> a routed loss and named metrics.

Gradient routing happens in the subclasses' :meth:`KNIFEPenalty.compute` (docs/design.md §2):
with ``gs = scale_gradient`` and the current weight ``lam``,

    loss_est = -mean log q(gs(z, +lam)) - mean log q(gs(z, -lam) | s)

gives the estimator parameters the maximum-likelihood fitting gradient and ``z`` the gradient of
``lam * I_hat(Z; S)``. The returned loss has the *value* ``lam * I_hat`` (so the logged loss stays
``task + lam * I_hat``) and the gradient of ``loss_est``.

One optimizer step, as KNIFETrainer drives it (through a callback):

    penalty.begin_step(step)             # the step number: warm-up, annealing, messages
    penalty(z, s)                        # per micro-batch: routed loss; features kept for the step's updates
    penalty.end_step()                   # inner fitting steps, running statistics, budget multiplier

Used on its own (``begin_step`` never called), every training forward is one optimizer step and does all of this
itself.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import Tensor, nn

from ..budget import BudgetController
from ..distributed import all_gather_with_grad, broadcast_module, is_distributed
from ..estimators.base import init_functions
from ..estimators.degenerate import find_degenerate_directions
from .fitter import InnerFitter
from .standardizer import RunningStandardizer

if TYPE_CHECKING:
    from ..config import KNIFEConfig

__all__ = ["STANDARDIZED_BANDWIDTH_BOUNDS", "KNIFEPenalty", "PenaltyOutput", "scale_rows", "upcast", "value_with_grad"]

#: Default clamp of the kernel bandwidths on standardised features: at least 10% of each coordinate's (floored)
#: spread, so a dead or duplicated coordinate stays finite when it starts to move (well below Scott's rule, ~1).
STANDARDIZED_BANDWIDTH_BOUNDS = (1e-1, 1e2)


def upcast(x: Tensor) -> Tensor:
    """``x`` in at least float32: half precision (and integers) go to float32, float32 and float64 stay."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


@dataclass
class PenaltyOutput:
    """Result of a penalty on one batch.

    Attributes:
        loss: ``[]``; value ``weight * penalty`` (e.g. ``lam * I_hat``), gradient routed (estimator: fitting NLL;
            features: ``weight * grad penalty``). Add it to the task loss.
        metrics: detached ``[]`` scalars, logged as ``knife/<name>``; the names are the penalty's ``metric_names``.
    """

    loss: Tensor
    metrics: dict[str, Tensor] = field(default_factory=dict)


def scale_rows(z: Tensor, scale: Tensor) -> Tensor:
    """Identity forward; the gradient of row ``n`` of ``z [B, d]`` is multiplied by ``scale[n]`` (``[B]``)."""
    return z.detach() + (z - z.detach()) * scale.unsqueeze(1)  # [B, d]


def value_with_grad(value: Tensor, *grad_terms: Tensor) -> Tensor:
    """``[]``: a scalar whose value is ``value`` and whose gradient is that of ``sum(grad_terms)``."""
    out = value.detach()
    for term in grad_terms:
        out = out + (term - term.detach())
    return out


class KNIFEPenalty(nn.Module):
    """Base class: the estimator, an optional fixed projection, the running standardisation, the inner fitter, the
    weight schedule (or a budget controller) and the input checks.

    A subclass registers itself (``@PENALTY_REGISTRY.register(name)``), declares what it needs in the class
    attributes below, builds ``self.estimator`` and implements :meth:`compute`, :meth:`fitting_loss` and
    :meth:`init_estimator`.

    Submodules: ``estimator`` (its own optimizer group), ``standardizer`` (running mean/variance), ``fitter``
    (inner fitting steps, Adam state), ``budget`` (with ``config.target``). Buffers: ``projection [hidden, p]``
    (fixed random orthonormal map, with ``projection_dim``) and ``initialized`` (estimator placed at data).
    """

    #: the penalty's name in the registry (``KNIFEConfig.penalty``)
    name: ClassVar[str] = ""
    #: whether it reads the sensitive variable S (the trainer then keeps and checks ``sensitive_column``)
    needs_sensitive: ClassVar[bool] = False
    #: the metrics :meth:`compute` may return (logged as ``knife/<name>``; model outputs ``knife_<name>``)
    metric_names: ClassVar[tuple[str, ...]] = ()
    #: whether it defines an estimate that a ``target`` can bound
    supports_target: ClassVar[bool] = False
    #: the metric that the budget bounds (a per-sample mean)
    budget_metric: ClassVar[str] = ""
    #: metrics every penalty adds (the weight; with a budget, the multiplier and the constraint)
    COMMON_METRICS: ClassVar[tuple[str, ...]] = ("weight", "multiplier", "constraint")

    estimator: nn.Module

    @classmethod
    def check_config(cls, config: KNIFEConfig) -> None:
        """Raise a ValueError for settings this penalty cannot take (called by ``KNIFEConfig.validate``)."""

    def __init__(self, config: KNIFEConfig, hidden_size: int, source: str = "Z") -> None:
        super().__init__()
        self.config, self.hidden_size, self.source = config, hidden_size, source
        self.dim = config.projection_dim or hidden_size
        if config.projection_dim is not None:
            self.register_buffer("projection", torch.empty(hidden_size, config.projection_dim))
        else:
            self.projection = None
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))
        self.standardizer = RunningStandardizer(self.dim, enabled=config.standardize)
        self.budget: BudgetController | None = None
        if config.target is not None:
            self.budget = BudgetController(
                config.target, config.weight, rate=config.budget.rate, smoothing=config.budget.smoothing,
                sign=self.budget_sign(),
            )  # fmt: skip
        self._budget_sums: Tensor | None = None  # [k] float64 of the current step, see budget_statistics
        self._step = 0  # the optimizer step (begin_step), or the count of training forwards when used on its own
        self._managed = False  # begin_step was called: the caller ends the steps
        self._gathered = False
        self._known_initialized = False

    def _finish_init(self) -> None:
        """Subclasses call this once ``self.estimator`` exists: the inner fitter over its parameters, then the
        constructor-time initialisation."""
        self.fitter = InnerFitter(self.estimator_parameters(), self.config.estimator_lr, self.config.inner_steps)
        self.reset_parameters()

    # ------------------------------------------------------------------ parameters
    def kernel_options(self) -> dict[str, Any]:
        """Keyword arguments of the KNIFE kernels: components, covariance, rank and bandwidth clamp."""
        c = self.config
        bounds = tuple(c.bandwidth_bounds) if c.bandwidth_bounds else None
        if bounds is None and c.standardize:  # in units of Z's running standard deviation
            bounds = STANDARDIZED_BANDWIDTH_BOUNDS
        return dict(num_components=c.num_components, covariance=c.covariance, rank=c.rank, bandwidth_bounds=bounds)

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Constructor-time initialisation (also called from the model's ``_init_weights``)."""
        if self.projection is not None:
            q, _ = torch.linalg.qr(torch.randn(self.hidden_size, self.hidden_size))  # [d, d]
            init_functions().copy_(self.projection, q[:, : self.dim].to(self.projection.dtype))
        init_functions().zeros_(self.initialized)
        self._known_initialized = False
        self.standardizer.reset_parameters()
        self.fitter.reset_parameters()
        self.estimator.reset_parameters()

    def estimator_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.estimator.parameters() if p.requires_grad]

    def optimizer_groups(self) -> list[dict[str, Any]]:
        """Parameter groups of the trainer's optimizer that the penalty owns: the estimator's (``estimator_lr``, no
        weight decay, a constant schedule: ``knife_estimator``)."""
        return [{"params": self.estimator_parameters(), "lr": self.config.estimator_lr, "weight_decay": 0.0,
                 "knife_estimator": True}]  # fmt: skip

    # ------------------------------------------------------------------ steps and schedule
    def begin_step(self, step: int) -> None:
        """Called before the forwards of optimizer step ``step``; from then on :meth:`end_step` ends each step."""
        self._step, self._managed = int(step), True

    def end_step(self) -> None:
        """Called once per optimizer step, after the optimizer: inner fitting steps, running statistics, budget."""
        self.fitter.fit(self.fitting_loss, self.config.check_finite, self.step)
        self.standardizer.fold()
        self.update_budget()

    @property
    def step(self) -> int:
        return self._step

    @property
    def compute_dtype(self) -> torch.dtype:
        """The dtype the penalty computes in: its own (float64 after ``.double()``), never below float32."""
        parameter = next(self.parameters(), None)
        return torch.float32 if parameter is None else torch.promote_types(parameter.dtype, torch.float32)

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

    # ------------------------------------------------------------------ input checks
    def check_features(self, z: Tensor) -> Tensor:
        if z.dim() != 2 or z.shape[1] != self.hidden_size:
            raise ValueError(
                f"the representation Z ({self.source}) must have shape [B, {self.hidden_size}], got {tuple(z.shape)}"
            )
        if self.config.check_finite and not bool(torch.isfinite(z).all()):
            n_nan, n_inf = int(torch.isnan(z).sum()), int(torch.isinf(z).sum())
            raise FloatingPointError(
                f"non-finite values in the representation Z ({self.source}) at step {self.step}: {n_nan} NaN and "
                f"{n_inf} Inf of {z.numel()} values (shape {tuple(z.shape)}); the model diverged or its input is bad"
            )
        return z

    def prepare(self, z: Tensor) -> Tensor:
        """Checks, the penalty's compute dtype, projection: ``[B, hidden] -> [B, dim]``."""
        z = self.check_features(z).to(self.compute_dtype)
        if self.projection is not None:
            z = z @ self.projection.to(z.dtype)  # [B, p]
        return z

    def check_sensitive(self, sensitive: Tensor | None, batch: int) -> Tensor | None:
        return sensitive

    # ------------------------------------------------------------------ subclass API
    def compute(self, z: Tensor, sensitive: Tensor | None, weight: float, **extra: Tensor) -> PenaltyOutput:
        """The penalty on standardised features ``z [B, dim]`` at weight ``weight``."""
        raise NotImplementedError

    def fitting_loss(self, z: Tensor, sensitive: Tensor | None) -> Tensor:
        """``[]``: the estimator's fitting loss on (detached) standardised features ``z [B, dim]``."""
        raise NotImplementedError

    def init_estimator(self, z: Tensor, sensitive: Tensor | None) -> None:
        """Place the estimator at standardised samples ``z [N, dim]`` (means at samples, Scott bandwidths)."""
        raise NotImplementedError

    def budget_sign(self) -> float:
        """``+1``: the budget is a ceiling on the estimate; ``-1``: a floor."""
        return 1.0

    # ------------------------------------------------------------------ initialisation at data
    @torch.no_grad()
    def init_from_samples(self, features: Tensor, sensitive: Tensor | None = None) -> KNIFEPenalty:
        """Initialise the estimator at samples of raw features ``[N, hidden]`` (means at samples, Scott bandwidths)."""
        z = self.prepare(features)
        sensitive = self.check_sensitive(sensitive, z.shape[0])
        self.init_from_prepared(z, sensitive)
        return self

    @torch.no_grad()
    def init_from_prepared(self, z: Tensor, sensitive: Tensor | None) -> None:
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
        self.standardizer.set(z)
        self.init_estimator(self.standardizer(z), sensitive)
        self.initialized.fill_(True)
        self._known_initialized = True
        broadcast_module(self)

    # ------------------------------------------------------------------ budget (config.target)
    def budget_statistics(self, metrics: dict[str, Tensor], sensitive: Tensor | None, n: int) -> Tensor:
        """``[k]`` float64 sums of one micro-batch of ``n`` rows, additive over micro-batches and processes:
        ``[n * estimate, n]`` here (the estimate is a per-sample mean)."""
        estimate = metrics[self.budget_metric].detach().double()
        return torch.stack([estimate * n, estimate.new_tensor(float(n))])

    def budget_estimate(self, sums: Tensor) -> Tensor:
        """The estimate of the rows summed in ``sums`` (see :meth:`budget_statistics`)."""
        return sums[0] / sums[1]

    def budget_width(self) -> int:
        """``k``, the length of :meth:`budget_statistics`."""
        return 2

    @torch.no_grad()
    def update_budget(self) -> None:
        """Feed the step's estimate (mean over its micro-batches and processes, one all-reduce) to the controller;
        nothing during warm-up."""
        sums, self._budget_sums = self._budget_sums, None
        if self.budget is None or self.step < self.config.warmup_steps:
            return
        if is_distributed():
            if sums is None:  # no training forward on this process: contribute nothing
                sums = torch.zeros(self.budget_width(), dtype=torch.float64, device=self.budget.multiplier.device)
            torch.distributed.all_reduce(sums)
        if sums is not None and float(sums[1]) > 0:
            self.budget.update(self.budget_estimate(sums))

    # ------------------------------------------------------------------ forward
    def forward(self, features: Tensor, sensitive: Tensor | None = None, **extra: Tensor) -> PenaltyOutput:
        """``features [B, hidden]`` (and ``sensitive [B]`` or ``[B, c]``) -> :class:`PenaltyOutput`; ``extra`` (the
        representation transform's outputs, e.g. the bottleneck head's ``mu`` and ``log_sigma``) goes to
        :meth:`compute`."""
        z = self.prepare(features)
        sensitive = self.check_sensitive(sensitive, z.shape[0])
        gathered = self.config.gather_features and is_distributed()
        self.standardizer.gathered = self.fitter.gathered = gathered
        if gathered:
            z = all_gather_with_grad(z)  # [sum B_r, dim]
            sensitive = all_gather_with_grad(sensitive) if sensitive is not None else None
        if self.training and self.config.init_from_data and not self._known_initialized:
            self._known_initialized = bool(self.initialized)  # one host sync until it is True
            if not self._known_initialized:
                self.init_from_prepared(z.detach(), sensitive)
        alone = self.training and not self._managed  # used on its own: this forward is a whole optimizer step
        if self.training:
            self.standardizer.track(z)
            if alone:
                self.standardizer.fold()
        z = self.standardizer(z)  # [B, dim]
        if self.training:
            self.fitter.store(z, sensitive)
            if alone:
                self.fitter.fit(self.fitting_loss, self.config.check_finite, self.step)
        weight = self.current_weight()
        out = self.compute(z, sensitive, weight, **extra)
        out.metrics["weight"] = torch.tensor(weight, device=z.device)
        if self.budget is not None:
            sums = self.budget_statistics(out.metrics, sensitive, z.shape[0])  # [k]
            out.metrics["multiplier"] = self.budget.multiplier.detach().clone()
            out.metrics["constraint"] = self.budget.constraint(self.budget_estimate(sums)).float()
            if self.training and self.step >= self.config.warmup_steps:
                self._budget_sums = sums if self._budget_sums is None else self._budget_sums + sums
                if alone:
                    self.update_budget()
        if alone:
            self._step += 1
        return out
