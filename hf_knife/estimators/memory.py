"""MemoryMixture: h(Z) of a stochastic Gaussian encoder as the mixture of its own Gaussians over recent examples.

A Gaussian head gives ``Z | X = x ~ N(mu(x), diag sigma(x)^2)``. Over a training set of N examples the marginal of
Z is the N-component mixture ``(1/N) sum_n N(z; mu_n, sigma_n^2)``, so ``I(X; Z) <= log N``. A KNIFE kernel with
K << N components fitted on a few batches cannot represent it and over-estimates h(Z) by orders of magnitude (a
synthetic check in ``tests/test_penalties.py``: 139 nats where the truth is log 100 = 4.6). This module keeps the
head's ``(mu, log sigma)`` of the last ``size`` examples and uses their mixture (the KNIFE density of
:func:`~hf_knife.estimators.functional.mixture_log_prob` with components at the memory and bandwidths from the
head, uniform weights) as the marginal: exact when the memory holds the whole training set with the current head,
and never above ``log M`` for I(X; Z). Nothing is fitted: the memory is a record, kept in buffers (so checkpoints
resume it). Being exact has a price: when the examples' Gaussians do not overlap, I(X; Z) sits at log N and is flat,
so as a penalty it passes almost no gradient (README, "A tight rate is not a training signal"); and means stored by
earlier versions of a moving encoder make the estimate drift upwards.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .base import init_functions
from .functional import component_log_prob, mixture_log_prob

__all__ = ["MemoryMixture"]


class MemoryMixture(nn.Module):
    """Buffers ``loc [size, d]`` and ``log_scale [size, d]`` (the head's ``mu`` and ``log sigma`` of recent
    examples, a ring) and ``count []`` (how many were ever pushed)."""

    def __init__(self, dim: int, size: int) -> None:
        super().__init__()
        if size < 1:
            raise ValueError(f"the memory size must be >= 1, got {size}")
        self.dim, self.size = dim, size
        self.register_buffer("loc", torch.zeros(size, dim))
        self.register_buffer("log_scale", torch.zeros(size, dim))
        self.register_buffer("count", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def reset_parameters(self) -> None:
        init = init_functions()  # keeps a memory loaded from a checkpoint
        for tensor in (self.loc, self.log_scale, self.count):
            init.zeros_(tensor)

    def components(self, loc: Tensor | None = None, log_scale: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """The stored components (detached), followed by ``loc [B, d]`` / ``log_scale [B, d]`` when given:
        ``[M, d]`` each."""
        filled = min(int(self.count), self.size)
        locs, scales = [self.loc[:filled]], [self.log_scale[:filled]]
        if loc is not None:
            locs.append(loc.to(self.loc.dtype))
            scales.append(log_scale.to(self.log_scale.dtype))
        return torch.cat(locs), torch.cat(scales)  # [M, d] each

    def log_prob(self, z: Tensor, loc: Tensor | None = None, log_scale: Tensor | None = None) -> Tensor:
        """``[B]`` log of the mixture density at ``z [B, d]``, over the memory plus the components ``loc`` /
        ``log_scale`` (e.g. the current batch's, with their gradients)."""
        centres, log_scales = self.components(loc, log_scale)  # [M, d]
        if centres.shape[0] == 0:
            raise ValueError("the memory is empty and no components were given")
        logits = centres.new_zeros(centres.shape[0])  # [M] uniform weights
        return mixture_log_prob(z.to(centres.dtype), centres, -log_scales, logits)  # [B]

    def rate(self, z: Tensor, loc: Tensor, log_scale: Tensor) -> tuple[Tensor, Tensor]:
        """``(log p(z_n | x_n), log q(z_n))``, each ``[B]``, for samples ``z [B, d]`` of the batch's own components
        ``loc`` / ``log_scale`` ``[B, d]``, with ``q`` the mixture over the memory and the batch.

        Both come from one ``[B, M]`` matrix of component log-densities, the own density being the batch's diagonal
        block, so the pointwise rate ``log p - log q`` stays at or below ``log M`` in floating point too (``q``
        holds the own component with weight ``1/M``); two formulas for the same density would differ by rounding.
        """
        centres, log_scales = self.components(loc, log_scale)  # [M, d]
        batch, total = z.shape[0], centres.shape[0]
        log_densities = component_log_prob(z.to(centres.dtype), centres, -log_scales)  # [B, M]
        own = log_densities[torch.arange(batch), total - batch + torch.arange(batch)]  # [B]
        log_q = torch.logsumexp(log_densities, dim=1) - math.log(total)  # [B]
        return own, log_q

    @torch.no_grad()
    def push(self, loc: Tensor, log_scale: Tensor) -> None:
        """Store the rows of ``loc`` / ``log_scale`` ``[B, d]`` (detached), overwriting the oldest."""
        loc, log_scale = loc.detach()[-self.size :], log_scale.detach()[-self.size :]  # [n, d], n <= size
        index = (self.count + torch.arange(loc.shape[0], device=self.count.device)) % self.size  # [n], on device
        self.loc[index] = loc.to(self.loc.dtype)
        self.log_scale[index] = log_scale.to(self.log_scale.dtype)
        self.count += loc.shape[0]
