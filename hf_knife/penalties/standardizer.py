"""RunningStandardizer: per-coordinate running mean and variance of Z, folded once per optimizer step.

The estimator works on ``(z - mean) / std`` so that it follows features whose scale changes during training;
entropies are reported back in the units of Z by adding ``sum_j log std_j`` (:meth:`RunningStandardizer.log_scale`).
The sums of the current optimizer step are plain attributes, not buffers (DDP would overwrite buffers with rank 0's
at every forward); :meth:`RunningStandardizer.fold` all-reduces them once per step, which makes the statistics
independent of gradient accumulation and of the number of processes.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..distributed import is_distributed
from ..estimators.base import init_functions
from ..estimators.degenerate import relative_floor

__all__ = ["VARIANCE_FLOOR_FRACTION", "RunningStandardizer"]

#: Running variances are floored at (10% of the typical spread)^2: maximum likelihood drives the bandwidth of a
#: constant or duplicated direction to zero, after which any movement there makes the density explode (a dead unit
#: of MiniLM moving by 1e-5 gave an NLL of 1e16). With the floor a coordinate that wakes up by 2% of the typical
#: spread costs about 2 nats.
VARIANCE_FLOOR_FRACTION = 0.1


def variance_floor(var: Tensor) -> Tensor:
    """``[]``: floor of the variances ``var [dim]``, (10% of the typical standard deviation)^2, relative to the data's
    own scale, so a dead coordinate that starts to move is measured against the live ones."""
    return relative_floor(var.clamp_min(0).sqrt(), VARIANCE_FLOOR_FRACTION).square()


class RunningStandardizer(nn.Module):
    """Buffers ``mean [dim]`` and ``var [dim]`` (exponential moving averages, momentum 0.1); ``enabled=False`` makes
    every method the identity."""

    MOMENTUM = 0.1

    def __init__(self, dim: int, enabled: bool = True) -> None:
        super().__init__()
        self.dim, self.enabled = dim, enabled
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("var", torch.ones(dim))
        self._sums: Tensor | None = None  # [2, dim] float64: sum, sum of squares of the current step
        self._count = 0
        self.gathered = False  # the current step's features were all-gathered: no all-reduce of the sums

    @torch.no_grad()
    def reset_parameters(self) -> None:
        init = init_functions()  # keeps statistics loaded from a checkpoint
        init.zeros_(self.mean)
        init.ones_(self.var)
        self._sums, self._count = None, 0

    def forward(self, z: Tensor) -> Tensor:
        """``[B, dim] -> [B, dim]``: ``(z - mean) / std`` with the current statistics."""
        if not self.enabled:
            return z
        return (z - self.mean) * self.var.rsqrt()  # [B, dim]

    def invert(self, z: Tensor) -> Tensor:
        """``[B, dim] -> [B, dim]``: back to the units of Z (the inverse of :meth:`forward`)."""
        if not self.enabled:
            return z
        return z * self.var.sqrt() + self.mean  # [B, dim]

    def log_scale(self) -> Tensor:
        """``[]``: ``sum_j log std_j``; entropy in the units of Z = entropy of the standardised Z + this."""
        if not self.enabled:
            return self.var.new_zeros(())
        return 0.5 * self.var.log().sum()

    @torch.no_grad()
    def track(self, z: Tensor) -> None:
        """Add the detached rows ``z [B, dim]`` to the current step's sums (folded by :meth:`fold`)."""
        if not self.enabled:
            return
        z = z.detach().double()
        sums = torch.stack([z.sum(0), z.pow(2).sum(0)])  # [2, dim]
        self._sums = sums if self._sums is None else self._sums + sums
        self._count += z.shape[0]

    @torch.no_grad()
    def fold(self) -> None:
        """Fold the finished step's sums (all-reduced over processes) into the running mean and variance."""
        if not self.enabled:
            return
        device = self.mean.device
        sums = self._sums if self._sums is not None else torch.zeros(2, self.dim, dtype=torch.float64)
        count = torch.tensor([float(self._count)], device=device, dtype=torch.float64)
        packed = torch.cat([sums.flatten().to(device), count])  # [2 * dim + 1]
        if is_distributed() and not self.gathered:
            torch.distributed.all_reduce(packed)
        self._sums, self._count = None, 0
        total = float(packed[-1])
        if total == 0:
            return
        sums = packed[:-1].view(2, self.dim)
        mean = sums[0] / total  # [dim]
        var = (sums[1] / total - mean.pow(2)).clamp_min(0.0)  # [dim]
        m = self.MOMENTUM
        self.mean.mul_(1 - m).add_(m * mean.to(self.mean.dtype))
        self.var.mul_(1 - m).add_(m * var.to(self.var.dtype))
        self.var.clamp_(min=float(variance_floor(self.var)))

    @torch.no_grad()
    def set(self, z: Tensor) -> None:
        """Set the statistics to those of the rows ``z [N, dim]`` (at initialisation)."""
        if not self.enabled:
            return
        self.mean.copy_(z.mean(0))
        var = z.var(0, unbiased=False) if z.shape[0] > 1 else torch.ones_like(z[0])  # [dim]
        self.var.copy_(var.clamp_min(float(variance_floor(var))))
