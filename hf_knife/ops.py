"""Small autograd operations used to route gradients in the min-max (docs/design.md §2)."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["scale_gradient"]


class _ScaleGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, scale: float) -> Tensor:  # noqa: D102
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad_output: Tensor) -> tuple[Tensor, None]:  # noqa: D102
        return grad_output * ctx.scale, None


def scale_gradient(x: Tensor, scale: float) -> Tensor:
    """Identity in the forward pass; multiplies the incoming gradient by ``scale`` in the backward pass.

    ``scale_gradient(z, -1.0)`` is a gradient-reversal layer; ``scale_gradient(z, 0.0)`` equals ``z.detach()``
    for the gradient but keeps the graph.
    """
    return _ScaleGradient.apply(x, float(scale))
