"""KNIFEEstimator: I(X; Y) = h(X) - h(X | Y) from a marginal and a conditional kernel."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from huggingface_hub import PyTorchModelHubMixin
from torch import Tensor, nn

from .conditional import ConditionalKernel
from .discrete import DiscreteConditionalKernel
from .marginal import MarginalKernel

__all__ = ["FIT_OBJECTIVES", "KNIFEEstimator", "KNIFEOutput", "MixtureMIEstimator"]

# How MixtureMIEstimator fits its class kernels: coefficients (a, b) of the loss a * h_hat(X) + b * h_hat(X | S).
#   likelihood: h(X) + h(X|S), both NLLs (the KNIFE fit; it equals 2 h(X|S) + I_hat, so it also pulls I_hat down)
#   posterior:  h(X|S) - h(X) = -I_hat = CE(S | X) - H(S), the cross-entropy of the class posterior q(s|x): the
#               tightest Barber-Agakov bound I >= H(S) - CE, the objective of a classifier (an adversary)
FIT_OBJECTIVES: dict[str, tuple[float, float]] = {"likelihood": (1.0, 1.0), "posterior": (-1.0, 1.0)}


@dataclass
class KNIFEOutput:
    """Result of :class:`KNIFEEstimator` on a batch (all scalars, in nats).

    Attributes:
        mutual_information: ``h_hat(X) - h_hat(X|Y)``, the raw difference (it can be negative; never ``abs()``).
        marginal_entropy: ``h_hat(X)``.
        conditional_entropy: ``h_hat(X|Y)``.
        loss: the fitting loss of the estimator, ``h_hat(X) + h_hat(X|Y)`` (both NLLs).
    """

    mutual_information: Tensor
    marginal_entropy: Tensor
    conditional_entropy: Tensor
    loss: Tensor


class KNIFEEstimator(
    nn.Module, PyTorchModelHubMixin, library_name="hf_knife", tags=["knife", "mutual-information"]
):
    """Mutual information between ``x [B, dim]`` and a continuous ``y [B, cond_dim]`` or discrete ``y [B]``.

    Pass exactly one of ``cond_dim`` (continuous: :class:`ConditionalKernel`) or ``num_classes`` (discrete:
    :class:`DiscreteConditionalKernel`). The remaining options are shared by both kernels; ``hidden_dims``
    applies to the continuous conditional only. The fitting loss is the likelihood fit of both kernels
    (:data:`FIT_OBJECTIVES`).
    """

    fit_coefficients: tuple[float, float] = FIT_OBJECTIVES["likelihood"]

    def __init__(
        self,
        dim: int,
        cond_dim: int | None = None,
        num_classes: int | None = None,
        num_components: int = 16,
        covariance: str = "diagonal",
        rank: int | None = None,
        init_bandwidth: float = 1.0,
        bandwidth_bounds: tuple[float, float] | None = None,
        hidden_dims: tuple[int, ...] = (128, 128),
        chunk_size: int | None = None,
    ) -> None:
        super().__init__()
        if (cond_dim is None) == (num_classes is None):
            raise ValueError(
                "pass exactly one of cond_dim (continuous Y of shape [B, cond_dim]) or num_classes "
                f"(discrete Y of shape [B]), got cond_dim={cond_dim}, num_classes={num_classes}"
            )
        options = dict(
            num_components=num_components, covariance=covariance, rank=rank, init_bandwidth=init_bandwidth,
            bandwidth_bounds=bandwidth_bounds,
        )  # fmt: skip
        self.marginal = MarginalKernel(dim, chunk_size=chunk_size, **options)
        self.conditional: ConditionalKernel | DiscreteConditionalKernel
        if cond_dim is not None:
            self.conditional = ConditionalKernel(dim, cond_dim, hidden_dims=hidden_dims, **options)
        else:
            self.conditional = DiscreteConditionalKernel(dim, num_classes, chunk_size=chunk_size, **options)
        self.dim, self.cond_dim, self.num_classes = dim, cond_dim, num_classes

    @property
    def is_discrete(self) -> bool:
        return self.num_classes is not None

    def pointwise(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """Per-sample ``(-log q(x), -log q(x|y))``, each ``[B]``."""
        return -self.marginal.log_prob(x), -self.conditional.log_prob(x, y)

    def forward(self, x: Tensor, y: Tensor) -> KNIFEOutput:
        """Estimate on a batch; ``loss`` fits both kernels by maximum likelihood."""
        marginal_nll, conditional_nll = self.pointwise(x, y)
        marginal_entropy, conditional_entropy = marginal_nll.mean(), conditional_nll.mean()
        a, b = self.fit_coefficients
        return KNIFEOutput(
            mutual_information=marginal_entropy - conditional_entropy,
            marginal_entropy=marginal_entropy,
            conditional_entropy=conditional_entropy,
            loss=a * marginal_entropy + b * conditional_entropy,
        )

    @torch.no_grad()
    def init_from_samples(self, x: Tensor, y: Tensor) -> KNIFEEstimator:
        """Initialise both kernels from samples (means at samples, Scott bandwidths); returns self."""
        self.marginal.init_from_samples(x)
        self.conditional.init_from_samples(x, y)
        return self


class MixtureMIEstimator(nn.Module):
    """I(X; S) for a discrete S with one KNIFE mixture per class and the marginal ``q(x) = sum_s p(s) q(x | s)``.

    ``p(s)`` is a buffer (smoothed class frequencies of the initialisation samples). The estimate
    ``mean_n [log q(x_n | s_n) - log q(x_n)] = mean_n log q(s_n | x_n) / p(s_n)`` is at most ``H(S)``, and both
    entropies share the same kernels, so its variance is far lower than that of two separate entropy estimates.
    Same interface as :class:`KNIFEEstimator` (``conditional``, ``pointwise``, ``forward``, ``init_from_samples``);
    the fitting loss is ``h_hat(X) + h_hat(X | S)`` (``fit="likelihood"``) or the cross-entropy of the class
    posterior, ``h_hat(X | S) - h_hat(X)`` (``fit="posterior"``); see :data:`FIT_OBJECTIVES`.
    """

    def __init__(self, dim: int, num_classes: int, fit: str = "likelihood", **options) -> None:
        super().__init__()
        if fit not in FIT_OBJECTIVES:
            raise ValueError(f"fit must be one of {tuple(FIT_OBJECTIVES)}, got {fit!r}")
        self.num_classes, self.fit = num_classes, fit
        self.fit_coefficients = FIT_OBJECTIVES[fit]
        self.conditional = DiscreteConditionalKernel(dim, num_classes, **options)
        self.register_buffer("log_prior", torch.full((num_classes,), -math.log(num_classes)))

    def all_log_probs(self, x: Tensor) -> Tensor:
        """``log q(x | s)`` for every class: ``[B, d] -> [B, C]`` (one GEMM for all classes)."""
        return self.conditional.log_prob_per_class(x)

    def marginal_log_prob(self, x: Tensor) -> Tensor:
        """``log q(x) = logsumexp_s(log p(s) + log q(x | s))``: ``[B]``."""
        return torch.logsumexp(self.all_log_probs(x) + self.log_prior.to(x.dtype), dim=1)

    def pointwise(self, x: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        """Per-sample ``(-log q(x), -log q(x | s))``, each ``[B]``."""
        all_log_probs = self.all_log_probs(x)  # [B, C]
        marginal = torch.logsumexp(all_log_probs + self.log_prior.to(all_log_probs.dtype), dim=1)  # [B]
        conditional = all_log_probs.gather(1, labels.long().unsqueeze(1)).squeeze(1)  # [B]
        return -marginal, -conditional

    def forward(self, x: Tensor, labels: Tensor) -> KNIFEOutput:
        marginal_nll, conditional_nll = self.pointwise(x, labels)
        h, h_conditional = marginal_nll.mean(), conditional_nll.mean()
        a, b = self.fit_coefficients
        return KNIFEOutput(h - h_conditional, h, h_conditional, a * h + b * h_conditional)

    @torch.no_grad()
    def init_from_samples(self, x: Tensor, labels: Tensor) -> MixtureMIEstimator:
        """Class priors from (add-one smoothed) frequencies; each class kernel from its samples."""
        counts = torch.bincount(labels.long(), minlength=self.num_classes).double() + 1.0  # [C]
        self.log_prior.copy_((counts / counts.sum()).log().to(self.log_prior.dtype))
        self.conditional.init_from_samples(x, labels)
        return self
