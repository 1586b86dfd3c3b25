"""InnerFitter: extra Adam steps of the estimator's fitting loss on the detached features of one optimizer step.

The estimator is trained with the model (its own group in the trainer's optimizer, fed the routed fitting
gradient); the model moves Z at every step, so a few more steps on the same features let the estimator keep up.
The steps use ``torch.optim.Adam`` whose moments live in this module's buffers: they are in the model's state dict,
so checkpoints resume them exactly and ``save_pretrained`` keeps them. Gradients are averaged over processes, so
the result is the same with 1 or N processes.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from ..distributed import is_distributed
from ..estimators.base import init_functions

__all__ = ["InnerFitter"]


class InnerFitter(nn.Module):
    """``steps`` Adam steps (lr ``lr``, default betas) of ``loss_fn(z, s)`` on the batches handed to :meth:`store`.

    Buffers: ``step []`` (Adam's step count) and ``exp_avg_i`` / ``exp_avg_sq_i`` (the moments of parameter ``i``).
    """

    def __init__(self, parameters: list[nn.Parameter], lr: float, steps: int) -> None:
        super().__init__()
        self.lr, self.steps = lr, steps
        self._parameters_list = parameters  # a plain list: the parameters belong to the estimator
        self.register_buffer("step", torch.zeros(()))
        for i, p in enumerate(parameters):
            self.register_buffer(f"exp_avg_{i}", torch.zeros_like(p))
            self.register_buffer(f"exp_avg_sq_{i}", torch.zeros_like(p))
        self._batches: list[tuple[Tensor, Tensor | None]] = []
        self.gathered = False  # the current step's features were all-gathered: no all-reduce of the gradients

    @torch.no_grad()
    def reset_parameters(self) -> None:
        init = init_functions()  # keeps a state loaded from a checkpoint
        for tensor in self.buffers():
            init.zeros_(tensor)
        self._batches = []

    def store(self, z: Tensor, sensitive: Tensor | None) -> None:
        """Keep one micro-batch's detached features ``z [B, dim]`` (and ``sensitive``) for :meth:`fit`."""
        if self.steps > 0:
            self._batches.append((z.detach(), None if sensitive is None else sensitive.detach()))

    def _optimizer(self) -> torch.optim.Adam:
        """Adam over the estimator's parameters with this module's buffers as its state (looked up at each call:
        ``.to()`` replaces buffer tensors)."""
        params = self._parameters_list
        capturable = params[0].device.type == "cuda"  # bias corrections on the device: no host sync
        optimizer = torch.optim.Adam(params, lr=self.lr, capturable=capturable)
        for i, p in enumerate(params):
            optimizer.state[p] = {
                "step": self.step,
                "exp_avg": getattr(self, f"exp_avg_{i}"),
                "exp_avg_sq": getattr(self, f"exp_avg_sq_{i}"),
            }
        return optimizer

    @torch.no_grad()
    def fit(self, loss_fn: Callable[[Tensor, Tensor | None], Tensor], check_finite: bool = True, step: int = 0) -> None:
        """Run the steps on the stored batches (then forget them); the parameters' ``.grad`` are left untouched."""
        batches, self._batches = self._batches, []
        if not batches or self.steps == 0 or not self._parameters_list:  # nothing to fit (e.g. a memory marginal)
            return
        z = torch.cat([b[0] for b in batches])  # [N, dim]
        sensitive = None if batches[0][1] is None else torch.cat([b[1] for b in batches])
        params = self._parameters_list
        saved = [p.grad for p in params]
        optimizer = self._optimizer()
        try:
            for _ in range(self.steps):
                with torch.enable_grad():
                    grads = torch.autograd.grad(loss_fn(z, sensitive), params, allow_unused=True)
                grads = [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]
                if is_distributed() and not self.gathered:
                    flat = torch.cat([g.flatten() for g in grads])  # [P]
                    torch.distributed.all_reduce(flat)
                    flat /= torch.distributed.get_world_size()
                    grads = list(flat.split([g.numel() for g in grads]))
                for p, g in zip(params, grads):
                    p.grad = g.view_as(p)
                optimizer.step()
                for i in range(len(params)):  # saturate: an inf second moment would freeze the parameter for good
                    v = getattr(self, f"exp_avg_sq_{i}")
                    v.clamp_(max=torch.finfo(v.dtype).max)
        finally:
            for p, g in zip(params, saved):
                p.grad = g
        if check_finite and not all(bool(torch.isfinite(p).all()) for p in params):
            raise FloatingPointError(
                f"the KNIFE estimator's parameters became non-finite in its inner fitting steps at step {step} "
                f"(estimator_lr={self.lr:g}); lower estimator_lr or inner_steps, or set bandwidth_bounds"
            )
