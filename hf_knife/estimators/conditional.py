"""ConditionalKernel: the KNIFE estimate of h(X | Y) for a continuous Y."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .base import KernelBase, init_functions
from .degenerate import relative_floor
from .functional import COVARIANCE_TYPES, mixture_log_prob
from .validation import check_choice

__all__ = ["ConditionalKernel"]


class ConditionalKernel(KernelBase):
    """A Gaussian mixture ``q(x | y)`` whose means, bandwidths, weights (and low-rank factors) are an MLP of ``y``.

    The MLP maps ``y [B, cond_dim]`` to ``loc [B, K, dim]``, ``log_diag [B, K, dim]`` (``[B, 1, dim]`` for
    ``shared_diagonal``), ``mixture_logits [B, K]`` and, for ``low_rank``, ``factor [B, K, dim, rank]``. With
    ``full`` covariance the strictly-lower factor ``tril [K, dim, dim]`` is learned but does not depend on ``y``.
    The output layer starts at zero, so before training ``q(x | y)`` is the same mixture for every ``y``
    (set by :meth:`init_from_samples`).

    Args:
        dim: dimension of ``x``. cond_dim: dimension of ``y``.
        hidden_dims: widths of the MLP's hidden layers.
        Other options as in :class:`~hf_knife.MarginalKernel`.
    """

    def __init__(
        self,
        dim: int,
        cond_dim: int,
        num_components: int = 16,
        covariance: str = "diagonal",
        rank: int | None = None,
        hidden_dims: Sequence[int] = (128, 128),
        init_bandwidth: float = 1.0,
        bandwidth_bounds: tuple[float, float] | None = None,
    ) -> None:
        super().__init__()
        check_choice(covariance, "covariance", COVARIANCE_TYPES)
        if cond_dim < 1:
            raise ValueError(f"cond_dim must be a positive integer, got {cond_dim}")
        self.cond_dim = cond_dim
        # The mixture built by _make_mixture holds the y-independent part (the output biases).
        self._make_mixture(
            (), dim, num_components, covariance, rank, True, True, 1.0, init_bandwidth, bandwidth_bounds
        )
        diag_components = 1 if covariance == "shared_diagonal" else num_components
        self._sizes = {
            "loc": num_components * dim,
            "log_diag": diag_components * dim,
            "mixture_logits": num_components,
            "factor": num_components * dim * self.rank if covariance == "low_rank" else 0,
        }
        layers: list[nn.Module] = []
        width = cond_dim
        for hidden in hidden_dims:
            layers += [nn.Linear(width, hidden), nn.SiLU()]
            width = hidden
        self.trunk = nn.Sequential(*layers)
        self.head = nn.Linear(width, sum(self._sizes.values()))
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)
        self.skip = nn.Linear(cond_dim, num_components * dim, bias=False)  # linear path for the means
        nn.init.zeros_(self.skip.weight)
        # y is standardised at the MLP input (set by init_from_samples). Folding the statistics into the first
        # layer's weights instead keeps the forward right but not the training: an Adam step of lr on a weight
        # then moves its output by lr * |y|, which blows the density up when y has a large offset or scale.
        self.register_buffer("y_mean", torch.zeros(cond_dim))
        self.register_buffer("y_scale", torch.ones(cond_dim))

    @torch.no_grad()
    def reset_parameters(self, init_std: float = 1.0, init_bandwidth: float = 1.0) -> None:
        """The constructor's initialisation, in place: the mixture as in :meth:`KernelBase.reset_parameters`, the
        trunk as ``nn.Linear`` does it (Kaiming-uniform weights, uniform biases), the head and skip at zero."""
        super().reset_parameters(init_std, init_bandwidth)
        init = init_functions()
        for module in self.trunk.modules():
            if isinstance(module, nn.Linear):
                init.kaiming_uniform_(module.weight, a=math.sqrt(5))
                bound = 1.0 / math.sqrt(module.in_features)
                init.uniform_(module.bias, -bound, bound)
        for tensor in (self.head.weight, self.head.bias, self.skip.weight):
            init.zeros_(tensor)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, *args) -> None:
        # checkpoints written before y_mean / y_scale existed had the standardisation folded into the weights
        for name in ("y_mean", "y_scale"):
            state_dict.setdefault(prefix + name, getattr(self, name).clone())
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, *args)

    def mixture_parameters(self, y: Tensor) -> dict[str, Tensor]:
        """Per-sample mixture parameters for ``y [B, cond_dim]``."""
        batch, k, d = y.shape[0], self.num_components, self.dim
        y = (y - self.y_mean.to(y.dtype)) / self.y_scale.to(y.dtype)  # [B, cond_dim]
        out = self.head(self.trunk(y))  # [B, total]
        parts = dict(zip(self._sizes, out.split(list(self._sizes.values()), dim=-1)))
        loc = self.loc + (parts["loc"] + self.skip(y)).view(batch, k, d)  # [B, K, d]
        log_diag = self.log_diag + parts["log_diag"].view(batch, -1, d)  # [B, K or 1, d]
        params = {
            "loc": loc,
            "log_diag": self._bounded_log_diag(log_diag),
            "mixture_logits": self.mixture_logits + parts["mixture_logits"],  # [B, K]
            "tril": self.tril,
            "factor": None,
        }
        if self.factor is not None:
            params["factor"] = self.factor + parts["factor"].view(batch, k, d, self.rank)  # [B, K, d, r]
        return params

    def log_prob(self, x: Tensor, y: Tensor) -> Tensor:
        """``log q(x | y)`` per sample: ``x [B, dim]``, ``y [B, cond_dim]`` -> ``[B]``."""
        self._check_x(x)
        if y.dim() != 2 or y.shape != (x.shape[0], self.cond_dim):
            raise ValueError(
                f"y must have shape [{x.shape[0]}, {self.cond_dim}] to match x, got {tuple(y.shape)}"
            )
        with self._fp32(x) as x:
            params = self.mixture_parameters(y.to(x.dtype))
            return mixture_log_prob(
                x,
                params["loc"],
                params["log_diag"],
                params["mixture_logits"],
                tril=params["tril"],
                factor=params["factor"],
            )

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        """Cross-entropy estimate of h(X|Y) in nats: ``[]``."""
        return -self.log_prob(x, y).mean()

    @torch.no_grad()
    def init_from_samples(self, x: Tensor, y: Tensor | None = None) -> ConditionalKernel:
        """Start as the unconditional mixture of ``x [N, dim]`` (means at samples, Scott bandwidths)."""
        self._check_x(x)
        self._init_mixture_from_samples(x, self.loc, self.log_diag, self.mixture_logits)
        if y is not None and y.shape[0] > 1:
            # Standardise y at the MLP input so that hidden units start in their useful range; spreads are floored
            # relative to the typical spread (a constant column is not amplified by 1e6).
            y = y.detach().to(torch.float64)
            std = y.std(0)  # [cond_dim]
            self.y_mean.copy_(y.mean(0))
            self.y_scale.copy_(std.clamp_min(relative_floor(std)))
        return self

    def extra_repr(self) -> str:
        return super().extra_repr() + f", cond_dim={self.cond_dim}"
