"""Degenerate directions of real representations: constant, near-constant and linearly dependent coordinates.

Hidden states of trained transformers are full of them: dead units (a LayerNorm scale near 0 makes a coordinate
constant for every input), coordinates whose spread is a millionth of the others', duplicated columns, and rank
deficiency (mean pooling of short inputs, projections). A density estimator that treats every coordinate alike
breaks on them: an absolute variance or bandwidth floor of 1e-12 turns a coordinate that starts to move by 1e-5
into a log-density of -1e14. Everything here is *relative* to the data's own scale:

* ``scale``: the median standard deviation of the non-constant coordinates (the typical spread of ``x``);
* a coordinate is **constant** when its spread is at the rounding level of its dtype (relative to ``|mean|`` and
  to ``scale``): it carries no information, and its differential entropy is ``-inf``;
* **near-constant** when its spread is below ``near_constant_tol * scale`` (finite, but a hazard: standardising
  it amplifies noise by ``1 / spread``);
* the data are **rank deficient** when the correlation matrix of the non-constant coordinates has eigenvalues
  below ``rank_tol`` times its largest (only checked when there are more samples than coordinates); exactly
  duplicated columns (up to an affine map) are named.

:func:`relative_floor` is the one home of the floors used by the running standardisation of the penalties and by
the kernels' Scott bandwidths.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

__all__ = ["DegenerateDirections", "find_degenerate_directions", "relative_floor"]

#: spreads below this fraction of the typical spread are floored (variance floor = its square times the typical
#: variance): a coordinate that wakes up after being constant is then measured in units of 1% of the others.
RELATIVE_FLOOR = 1e-2


def relative_floor(std: Tensor, fraction: float = RELATIVE_FLOOR) -> Tensor:
    """``fraction`` times the typical (median positive) spread of ``std [d]``: a ``[]`` floor in the units of ``std``.

    Falls back to ``fraction`` when every spread is zero (no scale to be relative to).
    """
    positive = std[std > 0]
    if positive.numel() == 0:
        return std.new_tensor(fraction)
    return fraction * positive.median()


@dataclass
class DegenerateDirections:
    """What :func:`find_degenerate_directions` found in ``x [N, d]``.

    Attributes:
        dim: number of coordinates ``d``.
        scale: typical spread (median standard deviation of the non-constant coordinates).
        constant: coordinates whose spread is at the rounding level (no information).
        near_constant: coordinates with a spread below ``near_constant_tol * scale``.
        duplicated: pairs ``(i, j)``, ``i < j``, of coordinates equal up to an affine map.
        rank: numerical rank of the non-constant coordinates' correlation (``None`` when not checked: N <= d).
        live: number of non-constant coordinates.
    """

    dim: int
    scale: float
    constant: list[int] = field(default_factory=list)
    near_constant: list[int] = field(default_factory=list)
    duplicated: list[tuple[int, int]] = field(default_factory=list)
    rank: int | None = None
    live: int = 0
    near_constant_tol: float = 1e-4

    @property
    def rank_deficient(self) -> bool:
        return self.rank is not None and self.rank < self.live

    def __bool__(self) -> bool:
        return bool(self.constant or self.near_constant or self.duplicated or self.rank_deficient)

    def describe(self, name: str = "x") -> str:
        """One sentence per kind of degeneracy, naming the coordinates (at most 10 of each)."""

        def listed(items: list) -> str:
            more = f", ... ({len(items)} in all)" if len(items) > 10 else ""
            return ", ".join(map(str, items[:10])) + more

        parts = []
        if self.constant:
            parts.append(f"{len(self.constant)} constant coordinate(s) ({listed(self.constant)})")
        if self.near_constant:
            parts.append(
                f"{len(self.near_constant)} near-constant coordinate(s) ({listed(self.near_constant)}; spread "
                f"below {self.near_constant_tol:g} of the typical {self.scale:.3g})"
            )
        if self.duplicated:
            parts.append(f"duplicated coordinates (pairs {listed(self.duplicated)})")
        if self.rank_deficient:
            parts.append(f"linearly dependent coordinates (rank {self.rank} of {self.live} non-constant)")
        return f"{name} has " + "; ".join(parts) if parts else f"{name} has no degenerate directions"


@torch.no_grad()
def find_degenerate_directions(
    x: Tensor, *, near_constant_tol: float = 1e-4, rank_tol: float = 1e-9, max_dim_for_rank: int = 4096
) -> DegenerateDirections:
    """Find constant, near-constant, duplicated and linearly dependent coordinates of ``x [N, d]``.

    Args:
        x: ``[N, d]`` samples (any float dtype; statistics in float64).
        near_constant_tol: spread, relative to the typical spread, below which a coordinate is near-constant.
        rank_tol: eigenvalue of the correlation matrix, relative to the largest, below which a direction is
            dependent.
        max_dim_for_rank: skip the ``[d, d]`` correlation check above this many live coordinates.

    Returns:
        :class:`DegenerateDirections`.
    """
    n, d = x.shape
    eps = torch.finfo(x.dtype).eps if torch.is_floating_point(x) else torch.finfo(torch.float64).eps
    x64 = x.detach().double()
    mean = x64.mean(0)  # [d]
    std = x64.std(0, unbiased=False) if n > 1 else torch.zeros(d, dtype=torch.float64)  # [d]
    # rounding level of a coordinate: its dtype's eps times its magnitude (x - mean cannot be resolved below it)
    magnitude = x64.abs().amax(0)  # [d]
    constant_mask = std <= 16 * eps * magnitude  # [d]
    live_std = std[~constant_mask]
    scale = float(live_std.median()) if live_std.numel() else 0.0
    constant_mask |= std <= 1e-12 * scale  # spread negligible against the other coordinates' too
    near_mask = ~constant_mask & (std < near_constant_tol * scale)  # [d]
    out = DegenerateDirections(
        dim=d,
        scale=scale,
        constant=constant_mask.nonzero().flatten().tolist(),
        near_constant=near_mask.nonzero().flatten().tolist(),
        live=int((~constant_mask).sum()),
        near_constant_tol=near_constant_tol,
    )
    live = (~constant_mask).nonzero().flatten()  # [L]
    if n > 2 and 2 <= live.numel() <= max_dim_for_rank:
        z = (x64[:, live] - mean[live]) / std[live]  # [N, L]
        corr = (z.T @ z) / n  # [L, L]
        off = corr.abs().triu(diagonal=1)  # [L, L]
        pairs = (off > 1.0 - 1e-9).nonzero()  # [P, 2]
        out.duplicated = [(int(live[i]), int(live[j])) for i, j in pairs.tolist()]
        if n > live.numel():
            eigenvalues = torch.linalg.eigvalsh(corr)  # [L] ascending
            out.rank = int((eigenvalues > rank_tol * eigenvalues[-1].clamp_min(math.ulp(1.0))).sum())
    return out
