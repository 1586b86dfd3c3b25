"""MarginalKernel: the KNIFE estimate of h(X)."""

from __future__ import annotations

import torch
from torch import Tensor

from .base import KernelBase
from .functional import mixture_log_prob

__all__ = ["MarginalKernel"]


class MarginalKernel(KernelBase):
    """A learnable Gaussian mixture ``q(x)``; ``forward(x)`` is the cross-entropy estimate ``-mean log q(x)``.

    Fitting it by maximum likelihood (minimising ``forward``) makes the estimate an upper bound on h(X) that
    tightens as ``q`` fits.

    Args:
        dim: feature dimension ``d``.
        num_components: number of mixture components ``K``.
        covariance: ``"shared_diagonal"``, ``"diagonal"``, ``"full"`` or ``"low_rank"``.
        rank: rank of the low-rank precision term (``covariance="low_rank"`` only; default ``min(8, dim)``).
        learn_means: learn the component means (False with means at samples and uniform weights gives
            Schraudolph's estimator).
        learn_weights: learn the mixture weights (uniform when False).
        init_std: standard deviation of the random initial means (before :meth:`init_from_samples`).
        init_bandwidth: initial kernel bandwidth, ``exp(-log_diag)``.
        bandwidth_bounds: optional ``(min, max)`` clamp of the bandwidth, a guard against collapse onto
            duplicated samples.
        chunk_size: evaluate at most this many samples at a time (see :func:`~.functional.mixture_log_prob`).
    """

    def __init__(
        self,
        dim: int,
        num_components: int = 16,
        covariance: str = "diagonal",
        rank: int | None = None,
        learn_means: bool = True,
        learn_weights: bool = True,
        init_std: float = 1.0,
        init_bandwidth: float = 1.0,
        bandwidth_bounds: tuple[float, float] | None = None,
        chunk_size: int | None = None,
    ) -> None:
        super().__init__()
        self._make_mixture(
            (), dim, num_components, covariance, rank, learn_means, learn_weights, init_std, init_bandwidth,
            bandwidth_bounds,
        )  # fmt: skip
        self.chunk_size = chunk_size

    def log_prob(self, x: Tensor) -> Tensor:
        """``log q(x)`` per sample: ``x [B, d] -> [B]``."""
        self._check_x(x)
        args, kwargs = self._density_parameters()
        with self._fp32(x) as x:
            return mixture_log_prob(x, *args, **kwargs)

    def forward(self, x: Tensor) -> Tensor:
        """Cross-entropy estimate of h(X) in nats: ``x [B, d] -> []``."""
        return -self.log_prob(x).mean()

    @torch.no_grad()
    def init_from_samples(self, x: Tensor) -> MarginalKernel:
        """Put the means at random samples of ``x [N, d]`` and set bandwidths by Scott's rule; returns self."""
        self._check_x(x)
        self._init_mixture_from_samples(x, self.loc, self.log_diag, self.mixture_logits)
        return self
