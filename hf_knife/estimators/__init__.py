"""KNIFE estimators of differential entropy and mutual information."""

from .baselines import DoEEstimator, SchraudolphKernel, knn_entropy, ksg_mutual_information
from .conditional import ConditionalKernel
from .discrete import DiscreteConditionalKernel
from .fitting import FitOptions, fit
from .functional import (
    COVARIANCE_TYPES,
    class_mixture_log_probs,
    component_log_prob,
    discrete_mixture_log_prob,
    mixture_log_prob,
)
from .marginal import MarginalKernel
from .memory import MemoryMixture
from .mutual_information import (
    CalibratedMixtureMIEstimator,
    KNIFEEstimator,
    KNIFEOutput,
    MIEstimator,
    MixtureMIEstimator,
    build_mi_estimator,
    fit_temperature,
)
from .variational import CLUB, MINE, NWJ, VARIATIONAL_ESTIMATORS, InfoNCE

__all__ = [
    "CLUB",
    "InfoNCE",
    "MINE",
    "NWJ",
    "VARIATIONAL_ESTIMATORS",
    "COVARIANCE_TYPES",
    "CalibratedMixtureMIEstimator",
    "ConditionalKernel",
    "DiscreteConditionalKernel",
    "DoEEstimator",
    "FitOptions",
    "KNIFEEstimator",
    "KNIFEOutput",
    "MIEstimator",
    "MarginalKernel",
    "MemoryMixture",
    "MixtureMIEstimator",
    "SchraudolphKernel",
    "build_mi_estimator",
    "class_mixture_log_probs",
    "component_log_prob",
    "discrete_mixture_log_prob",
    "fit",
    "fit_temperature",
    "knn_entropy",
    "ksg_mutual_information",
    "mixture_log_prob",
]
