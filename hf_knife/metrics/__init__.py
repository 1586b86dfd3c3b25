"""Evaluation metrics: group fairness (TPR-GAP, DP, EO), the leakage audit, and ``compute_metrics`` for Trainer.

The same metrics are also ``evaluate`` modules (``TPRGap``, ``DemographicParityDifference``,
``EqualizedOddsDifference``, ``LeakageAudit``; ``evaluate.load(evaluate_module_path("tpr_gap"))``). Those classes are
imported lazily: ``import hf_knife.metrics`` does not import ``evaluate``.
"""

from __future__ import annotations

import importlib
from typing import Any

from .evaluate import EVALUATE_MODULES, evaluate_module_path, make_evaluate_compute_metrics
from .fairness import (
    IntervalEstimate,
    bootstrap_ci,
    demographic_parity_difference,
    equalized_odds_difference,
    fairness_report,
    tpr_gap_by_class,
    tpr_gap_ci,
    tpr_gap_permutation_test,
    tpr_gap_rms,
)
from .leakage import (
    ATTACKERS,
    AttackerResult,
    LeakageReport,
    audit_leakage,
    make_attacker,
    wilson_interval,
)
from .trainer_metrics import make_compute_metrics

#: evaluate module classes, imported on first access: class name -> module name
_EVALUATE_CLASSES = {cls: name for name, cls in EVALUATE_MODULES.items()}

__all__ = [
    "ATTACKERS",
    "AttackerResult",
    "DemographicParityDifference",
    "EVALUATE_MODULES",
    "EqualizedOddsDifference",
    "IntervalEstimate",
    "LeakageAudit",
    "LeakageReport",
    "TPRGap",
    "audit_leakage",
    "bootstrap_ci",
    "demographic_parity_difference",
    "equalized_odds_difference",
    "evaluate_module_path",
    "fairness_report",
    "make_attacker",
    "make_compute_metrics",
    "make_evaluate_compute_metrics",
    "tpr_gap_by_class",
    "tpr_gap_ci",
    "tpr_gap_permutation_test",
    "tpr_gap_rms",
    "wilson_interval",
]


def __getattr__(name: str) -> Any:
    if name in _EVALUATE_CLASSES:
        module = _EVALUATE_CLASSES[name]
        value = getattr(importlib.import_module(f".evaluate.{module}.{module}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'hf_knife.metrics' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
