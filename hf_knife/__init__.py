"""hf_knife: KNIFE differential entropy and mutual information as training-time penalties for Transformers."""

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
    "ConditionalKernel",
    "DiscreteConditionalKernel",
    "DoEEstimator",
    "KNIFEEstimator",
    "KNIFEOutput",
    "MarginalKernel",
    "SchraudolphKernel",
    "__version__",
]
