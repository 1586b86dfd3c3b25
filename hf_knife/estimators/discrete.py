"""DiscreteConditionalKernel: the KNIFE estimate of h(X | S) for a discrete S."""

from __future__ import annotations

import torch
from torch import Tensor

from .base import KernelBase
from .functional import class_mixture_log_probs, discrete_mixture_log_prob
from .validation import check_labels

__all__ = ["DiscreteConditionalKernel"]


class DiscreteConditionalKernel(KernelBase):
    """One KNIFE mixture per class, parameters stacked as ``[C, K, d]`` and selected by label.

    ``forward(x, labels) = -mean_b log q(x_b | s_b)`` estimates ``h(X|S) = sum_s p(s) h(X|S=s)`` with the batch
    frequencies as ``p(s)``. All classes are evaluated in one GEMM (cost grows with ``C``); a batch that misses
    a class is fine. Options as in :class:`~hf_knife.MarginalKernel`, plus ``num_classes``.
    """

    def __init__(
        self,
        dim: int,
        num_classes: int,
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
        if num_classes < 1:
            raise ValueError(f"num_classes must be a positive integer, got {num_classes}")
        self.num_classes = num_classes
        self._make_mixture(
            (num_classes,), dim, num_components, covariance, rank, learn_means, learn_weights, init_std,
            init_bandwidth, bandwidth_bounds,
        )  # fmt: skip
        self.chunk_size = chunk_size

    def _check_labels(self, x: Tensor, labels: Tensor) -> Tensor:
        if labels.dim() != 1 or labels.shape[0] != x.shape[0]:
            raise ValueError(f"labels must have shape [{x.shape[0]}] to match x, got {tuple(labels.shape)}")
        if torch.is_floating_point(labels):
            raise ValueError(
                f"labels must be integer class ids in [0, {self.num_classes - 1}], got dtype {labels.dtype}"
            )
        return labels.long()

    def log_prob(self, x: Tensor, labels: Tensor) -> Tensor:
        """``log q(x | s)`` per sample: ``x [B, d]``, ``labels [B]`` -> ``[B]``."""
        self._check_x(x)
        labels = self._check_labels(x, labels)
        args, kwargs = self._density_parameters()
        with self._fp32(x) as x:
            return discrete_mixture_log_prob(x, labels, *args, **kwargs)

    def log_prob_per_class(self, x: Tensor) -> Tensor:
        """``log q(x | s = c)`` for every class: ``x [B, d] -> [B, C]``."""
        self._check_x(x)
        args, kwargs = self._density_parameters()
        with self._fp32(x) as x:
            return class_mixture_log_probs(x, *args, **kwargs)

    def forward(self, x: Tensor, labels: Tensor) -> Tensor:
        """Cross-entropy estimate of h(X|S) in nats: ``[]``."""
        return -self.log_prob(x, labels).mean()

    @torch.no_grad()
    def init_from_samples(self, x: Tensor, labels: Tensor) -> DiscreteConditionalKernel:
        """Initialise each class's mixture from that class's samples (all samples for unseen classes; a class with a
        single distinct sample takes its bandwidths from all samples)."""
        self._check_x(x)
        labels = check_labels(labels, "labels", self.num_classes, length=x.shape[0])
        for c in range(self.num_classes):
            x_c = x[labels == c]  # [N_c, d]
            if x_c.shape[0] == 0:
                x_c = x
            self._init_mixture_from_samples(
                x_c, self.loc[c], self.log_diag[c], self.mixture_logits[c], reference=x
            )
        return self
