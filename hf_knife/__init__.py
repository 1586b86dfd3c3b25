"""hf_knife: KNIFE differential entropy and mutual information as training-time penalties for Transformers.

Estimators work on their own (``estimate_entropy``, ``estimate_mutual_information``, the kernel modules);
``KNIFETrainer`` / ``KNIFEConfig`` and the model mixins turn them into penalties on hidden states. The
Transformers-dependent names are imported lazily, so ``import hf_knife`` stays fast for estimator users.
"""

from __future__ import annotations

import importlib
from typing import Any

from . import penalties, representation  # noqa: F401  (register the built-in penalties and representations)
from .api import EstimationResult, estimate_entropy, estimate_mutual_information
from .estimators import (
    ConditionalKernel,
    DiscreteConditionalKernel,
    DoEEstimator,
    KNIFEEstimator,
    KNIFEOutput,
    MarginalKernel,
    MixtureMIEstimator,
    SchraudolphKernel,
)

__version__ = "0.3.2"

_LAZY = {
    "KNIFEConfig": "config",
    "MutualInformationOptions": "config",
    "EntropyOptions": "config",
    "BottleneckOptions": "config",
    "BudgetOptions": "config",
    "PENALTY_REGISTRY": "registry",
    "REPRESENTATION_REGISTRY": "registry",
    "Representation": "representation",
    "extract_features": "representation",
    "KNIFETrainer": "trainer",
    "KNIFETrainingArguments": "trainer",
    "AutoKNIFEModelForSequenceClassification": "modeling",
    "KNIFEModelMixin": "modeling",
    "add_knife": "modeling",
    "get_knife_module": "modeling",
    "knife_output_fields": "modeling",
    "knife_model_class": "modeling",
    "AdversarialPenalty": "penalties",
    "EntropyPenalty": "penalties",
    "InformationBottleneckPenalty": "penalties",
    "KNIFEPenalty": "penalties",
    "MutualInformationPenalty": "penalties",
    "PenaltyOutput": "penalties",
    "build_penalty": "penalties",
    "all_gather_with_grad": "distributed",
    "KNIFEMonitorCallback": "callbacks",
}

__all__ = [
    "ConditionalKernel",
    "DiscreteConditionalKernel",
    "DoEEstimator",
    "EstimationResult",
    "KNIFEEstimator",
    "KNIFEOutput",
    "MarginalKernel",
    "MixtureMIEstimator",
    "SchraudolphKernel",
    "__version__",
    "estimate_entropy",
    "estimate_mutual_information",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'hf_knife' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
