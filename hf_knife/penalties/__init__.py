"""Penalties on a model's representation Z, one file each; they register in :data:`hf_knife.registry.PENALTY_REGISTRY`.

- :mod:`.base`: :class:`KNIFEPenalty` (checks, projection, schedule, budget, the step protocol) and the routing
  helpers; :mod:`.standardizer` and :mod:`.fitter`: the running statistics and the inner fitting steps it owns;
- :mod:`.mutual_information`, :mod:`.entropy`, :mod:`.information_bottleneck`, :mod:`.adversarial`: the penalties.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..registry import PENALTY_REGISTRY

# the registry lists the penalties in the order of these imports
# isort: off
from .mutual_information import MutualInformationPenalty
from .entropy import EntropyPenalty
from .information_bottleneck import GaussianHead, InformationBottleneckPenalty
from .adversarial import AdversarialPenalty
from .base import KNIFEPenalty, PenaltyOutput

# isort: on

if TYPE_CHECKING:
    from ..config import KNIFEConfig

__all__ = [
    "AdversarialPenalty",
    "EntropyPenalty",
    "GaussianHead",
    "InformationBottleneckPenalty",
    "KNIFEPenalty",
    "MutualInformationPenalty",
    "PenaltyOutput",
    "build_penalty",
    "penalty_metric_names",
]


def build_penalty(config: KNIFEConfig, hidden_size: int, source: str = "Z") -> KNIFEPenalty:
    """The penalty registered under ``config.penalty``, for features of size ``hidden_size``."""
    return PENALTY_REGISTRY.get(config.penalty)(config, hidden_size, source)


def penalty_metric_names() -> tuple[str, ...]:
    """Every metric name a registered penalty may return (the ``knife_<name>`` fields of model outputs)."""
    names: dict[str, None] = {}
    for cls in PENALTY_REGISTRY.values():
        names.update(dict.fromkeys(cls.metric_names))
    names.update(dict.fromkeys(KNIFEPenalty.COMMON_METRICS))
    return tuple(names)
