"""hf_knife: KNIFE differential entropy and mutual information as training-time penalties for Transformers."""

from .api import EstimationResult, estimate_entropy, estimate_mutual_information
from .estimators import (
    ConditionalKernel,
    DiscreteConditionalKernel,
    DoEEstimator,
    KNIFEEstimator,
    KNIFEOutput,
    MarginalKernel,
    SchraudolphKernel,
)

__version__ = "0.1.0"

__all__ = [
    "EstimationResult",
    "estimate_entropy",
    "estimate_mutual_information",
    "ConditionalKernel",
    "DiscreteConditionalKernel",
    "DoEEstimator",
    "KNIFEEstimator",
    "KNIFEOutput",
    "MarginalKernel",
    "SchraudolphKernel",
    "__version__",
]
