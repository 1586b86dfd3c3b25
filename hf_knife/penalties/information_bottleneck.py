"""The information-bottleneck penalty: minimise ``I(X; Z) = h_KNIFE(Z) - h(Z | X)`` through a stochastic Gaussian
head (or VIB's KL to N(0, I), the baseline)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from ..estimators import MarginalKernel, MemoryMixture
from ..estimators.base import init_functions
from ..ops import scale_gradient
from ..registry import PENALTY_REGISTRY
from .base import KNIFEPenalty, PenaltyOutput, value_with_grad

if TYPE_CHECKING:
    from ..config import KNIFEConfig

__all__ = ["GaussianHead", "InformationBottleneckPenalty"]


class GaussianHead(nn.Module):
    """Stochastic head ``z = mu + sigma * eps`` with ``mu = h`` and ``log sigma = W h + b``.

    ``W`` starts at zero and ``b`` at ``log(init_sigma)``, so the head starts as ``h`` plus small isotropic noise.
    In eval mode ``z = mu``.
    """

    def __init__(self, dim: int, init_sigma: float) -> None:
        super().__init__()
        self.init_sigma = init_sigma
        self.log_sigma = nn.Linear(dim, dim)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        init_functions().zeros_(self.log_sigma.weight)
        init_functions().constant_(self.log_sigma.bias, math.log(self.init_sigma))

    def forward(self, h: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``h [B, d]`` -> ``(z, mu, log_sigma)``, each ``[B, d]`` (``z = mu`` in eval mode)."""
        mu = h
        log_sigma = self.log_sigma(h.to(self.log_sigma.weight.dtype)).to(h.dtype)  # [B, d]
        if not self.training:
            return mu, mu, log_sigma
        return mu + log_sigma.exp() * torch.randn_like(mu), mu, log_sigma


@PENALTY_REGISTRY.register("information_bottleneck")
class InformationBottleneckPenalty(KNIFEPenalty):
    """``h(Z|X) = mean_n sum_j log sigma_nj + d/2 log(2 pi e)`` in closed form; options in
    ``config.information_bottleneck`` (estimator "knife" or "vib", init_sigma).

    The representation's transform is :meth:`transform`: the classifier reads the noisy ``z``, and the penalty gets
    ``z`` with the head's ``mu`` and ``log_sigma``: ``z, extra = penalty.transform(h); penalty(z, **extra)``.
    """

    name = "information_bottleneck"
    supports_target = True  # on the rate I(X;Z) (the KL for estimator="vib")
    metric_names = ("mutual_information", "marginal_entropy", "conditional_entropy", "estimator_nll", "vib_kl")

    @classmethod
    def check_config(cls, config: KNIFEConfig) -> None:
        if config.representation == "mean":
            raise ValueError(
                "information_bottleneck needs a representation the classifier reads directly: use 'cls', "
                "'pooler' or 'module', not 'mean'"
            )
        if config.projection_dim is not None:
            raise ValueError("information_bottleneck does not support projection_dim (h(Z|X) is closed-form in Z)")

    def __init__(self, config: KNIFEConfig, hidden_size: int, source: str = "Z") -> None:
        super().__init__(config, hidden_size, source)
        options = config.information_bottleneck
        self.budget_metric = "vib_kl" if options.estimator == "vib" else "mutual_information"
        self.head = GaussianHead(hidden_size, options.init_sigma)
        self.memory = options.estimator == "knife" and options.marginal == "memory"
        if self.memory:  # h(Z) from the head's own Gaussians over recent examples: nothing to fit
            self.estimator = MemoryMixture(self.dim, options.memory_size)
        else:
            self.estimator = MarginalKernel(self.dim, **self.kernel_options())
        self._finish_init()

    def reset_parameters(self) -> None:
        super().reset_parameters()
        self.head.reset_parameters()

    def optimizer_groups(self) -> list[dict]:
        """The estimator's group, and with ``head_lr`` one for the head's noise scale (the model's schedule)."""
        groups = super().optimizer_groups()
        head_lr = self.config.information_bottleneck.head_lr
        if head_lr is not None:
            groups.append({"params": list(self.head.parameters()), "lr": head_lr, "knife_head": True})
        return groups

    def transform(self, h: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """``h [B, d]`` -> the sampled ``z [B, d]`` and ``{"mu", "log_sigma"}`` (each ``[B, d]``) for the penalty."""
        z, mu, log_sigma = self.head(h)
        return z, {"mu": mu, "log_sigma": log_sigma}

    def init_estimator(self, z: Tensor, sensitive: Tensor | None) -> None:
        if not self.memory:  # the memory fills with the head's outputs during training
            self.estimator.init_from_samples(z)

    def fitting_loss(self, z: Tensor, sensitive: Tensor | None) -> Tensor:
        return self.estimator(z)

    def compute(
        self,
        z: Tensor,
        sensitive: Tensor | None,
        weight: float,
        mu: Tensor | None = None,
        log_sigma: Tensor | None = None,
    ) -> PenaltyOutput:
        if mu is None or log_sigma is None:
            raise ValueError(
                "information_bottleneck needs the head's output: z, extra = penalty.transform(h); penalty(z, **extra)"
            )
        mu, log_sigma = mu.to(z.dtype), log_sigma.to(z.dtype)  # [B, d]
        d = z.shape[1]
        h_conditional = log_sigma.sum(1).mean() + 0.5 * d * math.log(2 * math.pi * math.e)  # h(Z|X), closed form
        kl = 0.5 * (mu.pow(2) + (2 * log_sigma).exp() - 1.0 - 2 * log_sigma).sum(1).mean()  # KL(q(z|x) || N(0, I))
        metrics = {"conditional_entropy": h_conditional.detach(), "vib_kl": kl.detach()}
        if self.config.information_bottleneck.estimator == "vib":
            return PenaltyOutput(loss=weight * kl, metrics=metrics)
        if self.memory:
            # q = the mixture of N(mu_m, sigma_m^2) over the memory and this batch, in the units of Z; I(X;Z) is read
            # pointwise, mean_n [log p(z_n | x_n) - log q(z_n)]: the same expectation as h(Z) - h(Z|X), without the
            # sampling noise of -log q(z) (about sqrt(d/2) nats per sample). Plain autograd (nothing to fit): z, mu
            # and log sigma get weight * grad I
            z_raw = self.standardizer.invert(z)  # [B, d]
            log_p, log_q = self.estimator.rate(z_raw, mu, log_sigma)  # [B] each; log p - log q <= log M exactly
            h_marginal = -log_q.mean()
            mutual_information = (log_p - log_q).mean()
            if self.training:
                self.estimator.push(mu, log_sigma)
            metrics.update(marginal_entropy=h_marginal.detach(), mutual_information=mutual_information.detach())
            return PenaltyOutput(loss=weight * mutual_information, metrics=metrics)
        nll = -self.estimator.log_prob(scale_gradient(z, weight)).mean()  # h_KNIFE(Z): fit + weight * grad to z
        h_marginal = nll + self.standardizer.log_scale()  # in the units of Z
        mutual_information = h_marginal - h_conditional
        loss = value_with_grad(weight * mutual_information, nll, -weight * h_conditional)
        metrics.update(
            marginal_entropy=h_marginal.detach(), mutual_information=mutual_information.detach(), estimator_nll=nll.detach()
        )
        return PenaltyOutput(loss=loss, metrics=metrics)
