"""The entropy penalty: lower (or raise) the KNIFE estimate of ``h(Z)``."""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import Tensor

from ..estimators import MarginalKernel
from ..ops import scale_gradient
from ..registry import PENALTY_REGISTRY
from .base import KNIFEPenalty, PenaltyOutput, value_with_grad

if TYPE_CHECKING:
    from ..config import KNIFEConfig

__all__ = ["EntropyPenalty"]


@PENALTY_REGISTRY.register("entropy")
class EntropyPenalty(KNIFEPenalty):
    """Lower (``config.entropy.direction="lower"``) or raise (``"raise"``) the KNIFE estimate of h(Z)."""

    name = "entropy"
    supports_target = True
    budget_metric = "marginal_entropy"  # in the units of Z
    metric_names = ("marginal_entropy", "estimator_nll")

    def __init__(self, config: KNIFEConfig, hidden_size: int, source: str = "Z") -> None:
        super().__init__(config, hidden_size, source)
        self.estimator = MarginalKernel(self.dim, **self.kernel_options())
        self.sign = self.budget_sign()  # +1: lower h(Z); -1: raise it
        self._finish_init()

    def budget_sign(self) -> float:
        return 1.0 if self.config.entropy.direction == "lower" else -1.0  # "raise": the target is a floor

    def init_estimator(self, z: Tensor, sensitive: Tensor | None) -> None:
        self.estimator.init_from_samples(z)

    def fitting_loss(self, z: Tensor, sensitive: Tensor | None) -> Tensor:
        return self.estimator(z)

    def compute(self, z: Tensor, sensitive: Tensor | None, weight: float) -> PenaltyOutput:
        nll = -self.estimator.log_prob(scale_gradient(z, self.sign * weight)).mean()
        entropy = nll + self.standardizer.log_scale()  # in the units of Z
        loss = value_with_grad(self.sign * weight * entropy, nll)
        return PenaltyOutput(loss=loss, metrics={"marginal_entropy": entropy.detach(), "estimator_nll": nll.detach()})
