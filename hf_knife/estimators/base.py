"""Shared machinery of the KNIFE kernels: parameter creation, initialisation, fp32 execution, save/load."""

from __future__ import annotations

import contextlib
import math

import torch
from huggingface_hub import PyTorchModelHubMixin
from torch import Tensor, nn

from .degenerate import relative_floor
from .functional import COVARIANCE_TYPES
from .validation import check_choice, check_full_covariance_fits

__all__ = ["KernelBase", "init_functions", "scott_bandwidth"]


def init_functions():
    """The in-place initialisers (``normal_``, ``constant_``, ``zeros_``, ``uniform_``, ``kaiming_uniform_``, ...):
    ``transformers.initialization``, whose functions keep tensors already loaded from a checkpoint, or
    ``torch.nn.init`` where transformers is not installed (imported lazily: ``import hf_knife`` does not load it)."""
    try:
        from transformers import initialization
    except ImportError:
        return nn.init
    return initialization


def scott_bandwidth(x: Tensor, num_components: int) -> Tensor:
    """Per-dimension Scott bandwidth for a mixture of ``num_components`` kernels on samples ``x [N, d]``: ``[d]``.

    Spreads are floored at 1% of the typical spread (:func:`~.degenerate.relative_floor`), so a constant coordinate
    gets a bandwidth on the data's own scale, not an absolute 1e-6 that makes its density explode once it moves.
    """
    d = x.shape[1]
    std = x.std(0, unbiased=x.shape[0] > 1)  # [d]
    std = std.clamp_min(relative_floor(std))  # [d]
    return std * num_components ** (-1.0 / (d + 4))


class KernelBase(
    nn.Module, PyTorchModelHubMixin, library_name="hf_knife", tags=["knife", "entropy-estimation"]
):
    """Base class of the KNIFE kernels.

    Subclasses call :meth:`_make_mixture` to create ``loc``, ``log_diag``, ``mixture_logits`` and, for ``full`` and
    ``low_rank`` covariances, ``tril`` / ``factor``, with an optional leading shape (``[C]`` for one mixture per
    class). ``save_pretrained`` / ``from_pretrained`` (from :class:`huggingface_hub.PyTorchModelHubMixin`) write the
    constructor arguments to ``config.json`` and the weights to ``model.safetensors``.
    """

    dim: int
    num_components: int
    covariance: str

    def _make_mixture(
        self,
        prefix: tuple[int, ...],
        dim: int,
        num_components: int,
        covariance: str,
        rank: int | None,
        learn_means: bool,
        learn_weights: bool,
        init_std: float,
        init_bandwidth: float,
        bandwidth_bounds: tuple[float, float] | None,
    ) -> None:
        check_choice(covariance, "covariance", COVARIANCE_TYPES)
        if dim < 1 or num_components < 1:
            raise ValueError(
                f"dim and num_components must be positive, got dim={dim}, num_components={num_components}"
            )
        rank = min(8, dim) if rank is None else rank
        if covariance == "low_rank" and not 1 <= rank <= dim:
            raise ValueError(f"rank must be in [1, dim={dim}] for covariance='low_rank', got {rank}")
        if init_bandwidth <= 0 or init_std < 0:
            raise ValueError(
                f"init_bandwidth must be > 0 and init_std >= 0, got {init_bandwidth} and {init_std}"
            )
        if bandwidth_bounds is not None:
            low, high = bandwidth_bounds
            if not 0 < low < high:
                raise ValueError(
                    f"bandwidth_bounds must be (min, max) with 0 < min < max, got {bandwidth_bounds}"
                )
        if covariance == "full":
            num_mixtures = math.prod(prefix) if prefix else 1
            check_full_covariance_fits(dim, num_components * num_mixtures)
        self.dim, self.num_components, self.covariance, self.rank = dim, num_components, covariance, rank
        self.bandwidth_bounds = tuple(bandwidth_bounds) if bandwidth_bounds is not None else None

        diag_components = 1 if covariance == "shared_diagonal" else num_components
        self.loc = nn.Parameter(
            init_std * torch.randn(*prefix, num_components, dim), requires_grad=learn_means
        )
        self.log_diag = nn.Parameter(torch.full((*prefix, diag_components, dim), -math.log(init_bandwidth)))
        self.mixture_logits = nn.Parameter(torch.zeros(*prefix, num_components), requires_grad=learn_weights)
        self.tril = (
            nn.Parameter(torch.zeros(*prefix, num_components, dim, dim)) if covariance == "full" else None
        )
        self.factor = (
            nn.Parameter(torch.randn(*prefix, num_components, dim, rank) * (0.01 / math.sqrt(dim)))
            if covariance == "low_rank"
            else None
        )

    @torch.no_grad()
    def reset_parameters(self, init_std: float = 1.0, init_bandwidth: float = 1.0) -> None:
        """The constructor's initialisation, in place: ``loc ~ N(0, init_std^2)``, bandwidths ``init_bandwidth``,
        uniform weights, ``tril = 0``, ``factor ~ N(0, 0.01^2 / dim)``. Tensors loaded from a checkpoint are kept
        (:func:`init_functions`)."""
        init = init_functions()
        init.normal_(self.loc, 0.0, init_std)
        init.constant_(self.log_diag, -math.log(init_bandwidth))
        init.zeros_(self.mixture_logits)
        if self.tril is not None:
            init.zeros_(self.tril)
        if self.factor is not None:
            init.normal_(self.factor, 0.0, 0.01 / math.sqrt(self.dim))

    def _bounded_log_diag(self, log_diag: Tensor) -> Tensor:
        """Clamp ``log_diag`` to the bandwidth bounds (bandwidth = exp(-log_diag)), if any, and always below the
        representable limit of its dtype: the GEMM form squares ``exp(log_diag)``, which overflows to inf (and
        ``0 * inf = NaN``) above ``log(max) / 2`` (about 44 in fp32: bandwidths below 1e-19, far below any data
        scale, reached only on constant samples)."""
        representable = 0.5 * math.log(torch.finfo(log_diag.dtype).max) - 1.0
        if self.bandwidth_bounds is None:
            return log_diag.clamp(max=representable)
        low, high = self.bandwidth_bounds
        return log_diag.clamp(-math.log(high), min(-math.log(low), representable))

    def _density_parameters(self) -> tuple[tuple[Tensor, Tensor, Tensor], dict]:
        """Positional ``(loc, log_diag, mixture_logits)`` and keyword arguments of the functional density."""
        chunk_size = getattr(self, "chunk_size", None)
        return (self.loc, self._bounded_log_diag(self.log_diag), self.mixture_logits), dict(
            tril=self.tril, factor=self.factor, chunk_size=chunk_size
        )

    @contextlib.contextmanager
    def _fp32(self, x: Tensor):
        """Run the density in the parameters' dtype (fp32 or fp64), never under half-precision autocast."""
        with torch.autocast(device_type=x.device.type, enabled=False):
            yield x.to(self.loc.dtype)

    def _check_x(self, x: Tensor) -> None:
        if x.dim() != 2 or x.shape[1] != self.dim:
            raise ValueError(f"x must have shape [B, {self.dim}], got {tuple(x.shape)}")

    @torch.no_grad()
    def _init_mixture_from_samples(
        self,
        x: Tensor,
        loc: Tensor,
        log_diag: Tensor,
        mixture_logits: Tensor,
        reference: Tensor | None = None,
    ) -> None:
        """Set means to random samples of ``x [N, d]`` and bandwidths by Scott's rule (in place, one mixture).

        ``reference [M, d]`` (e.g. the samples of every class) sets the spreads instead when ``x`` has a single
        distinct sample: it has no scale of its own, and an absolute bandwidth (1, or a floor of 0.01) is off by
        orders of magnitude on data of scale 1e6 or 1e-6.
        """
        x = x.to(loc.dtype)
        k = loc.shape[-2]
        spread_source = x
        if reference is not None and (x.shape[0] < 2 or not bool((x != x[:1]).any())):
            spread_source = reference.to(loc.dtype)  # [M, d]
        generator = torch.Generator().manual_seed(int(torch.randint(0, 2**31 - 1, ()).item()))
        if x.shape[0] >= k:
            index = torch.randperm(x.shape[0], generator=generator)[:k]
            loc.copy_(x[index])
        else:  # fewer samples than components: jitter repeated samples
            index = torch.randint(0, x.shape[0], (k,), generator=generator)
            spread = spread_source.std(0, unbiased=spread_source.shape[0] > 1)  # [d]
            loc.copy_(x[index] + 0.1 * spread * torch.randn(k, x.shape[1]))
        bandwidth = (
            scott_bandwidth(spread_source, k) if spread_source.shape[0] > 1 else torch.ones(x.shape[1])
        )  # [d]
        log_diag.copy_(-bandwidth.log().expand_as(log_diag))
        mixture_logits.zero_()

    def extra_repr(self) -> str:
        return f"dim={self.dim}, num_components={self.num_components}, covariance={self.covariance!r}"
