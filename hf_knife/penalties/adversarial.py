"""The gradient-reversal baseline (Ganin & Lempitsky, 2015): an MLP adversary predicts a discrete S from Z."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from ..estimators.base import init_functions
from ..ops import scale_gradient
from ..registry import PENALTY_REGISTRY
from .base import KNIFEPenalty, PenaltyOutput, value_with_grad
from .mutual_information import check_sensitive_labels

if TYPE_CHECKING:
    from ..config import KNIFEConfig

__all__ = ["AdversarialPenalty"]


class Adversary(nn.Sequential):
    """MLP ``[B, d] -> [B, C]`` logits with ReLU hidden layers of widths ``hidden_dims``."""

    def __init__(self, dim: int, hidden_dims: list[int], num_classes: int) -> None:
        layers: list[nn.Module] = []
        for hidden in hidden_dims:
            layers += [nn.Linear(dim, hidden), nn.ReLU()]
            dim = hidden
        super().__init__(*layers, nn.Linear(dim, num_classes))

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """PyTorch's default Linear initialisation (through HF init functions: loaded tensors are kept)."""
        init = init_functions()
        for module in self.modules():
            if isinstance(module, nn.Linear):
                init.kaiming_uniform_(module.weight, a=math.sqrt(5))
                bound = 1.0 / math.sqrt(module.in_features)
                init.uniform_(module.bias, -bound, bound)


@PENALTY_REGISTRY.register("adversarial")
class AdversarialPenalty(KNIFEPenalty):
    """The adversary minimises its cross-entropy CE(S | Z); through a gradient-reversal layer the features get
    ``-weight * grad CE``, i.e. the model maximises the adversary's loss. The loss *value* is ``-weight * CE``;
    ``hidden_dims`` sets the adversary's width and ``estimator_lr`` its learning rate. A ``target`` bounds the
    adversary's estimate ``H(S) - CE`` of I(Z;S) (Barber-Agakov)."""

    name = "adversarial"
    needs_sensitive = True
    supports_target = True
    metric_names = ("adversary_loss", "adversary_accuracy")

    @classmethod
    def check_config(cls, config: KNIFEConfig) -> None:
        if config.sensitive_type != "discrete":
            raise ValueError("the adversarial penalty needs a discrete S (sensitive_type='discrete')")

    def __init__(self, config: KNIFEConfig, hidden_size: int, source: str = "Z") -> None:
        super().__init__(config, hidden_size, source)
        if config.num_sensitive_classes is None:
            raise ValueError(
                "the adversarial penalty needs a discrete S with num_sensitive_classes (KNIFETrainer infers it from "
                "the sensitive column of the training data)"
            )
        self.estimator = Adversary(self.dim, config.hidden_dims, config.num_sensitive_classes)
        self._finish_init()

    def check_sensitive(self, sensitive: Tensor | None, batch: int) -> Tensor:
        return check_sensitive_labels(self, sensitive, batch)

    def init_estimator(self, z: Tensor, sensitive: Tensor | None) -> None:
        """The adversary starts from its random initialisation (only the feature statistics are set)."""

    def fitting_loss(self, z: Tensor, sensitive: Tensor | None) -> Tensor:
        return nn.functional.cross_entropy(self.estimator(z), sensitive)

    def compute(self, z: Tensor, sensitive: Tensor | None, weight: float) -> PenaltyOutput:
        logits = self.estimator(scale_gradient(z, -weight))  # [B, C]
        cross_entropy = nn.functional.cross_entropy(logits, sensitive)
        accuracy = (logits.detach().argmax(-1) == sensitive).float().mean()
        loss = value_with_grad(-weight * cross_entropy, cross_entropy)
        return PenaltyOutput(loss=loss, metrics={"adversary_loss": cross_entropy.detach(), "adversary_accuracy": accuracy})

    def budget_statistics(self, metrics: dict[str, Tensor], sensitive: Tensor | None, n: int) -> Tensor:
        """``[n * CE, n, count_0, ..., count_{C-1}]``: the budget bounds ``H(S) - CE``, with ``H(S)`` from the
        class frequencies of the whole optimizer step."""
        cross_entropy = metrics["adversary_loss"].detach().double()
        counts = torch.bincount(sensitive.long(), minlength=self.config.num_sensitive_classes).double()  # [C]
        return torch.cat([torch.stack([cross_entropy * n, cross_entropy.new_tensor(float(n))]), counts])

    def budget_estimate(self, sums: Tensor) -> Tensor:
        p = sums[2:] / sums[1]  # [C] class frequencies
        entropy = -(p * p.clamp_min(1e-300).log()).sum()
        return entropy - sums[0] / sums[1]

    def budget_width(self) -> int:
        return 2 + int(self.config.num_sensitive_classes)
