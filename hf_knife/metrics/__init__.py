"""Evaluation metrics: group fairness (TPR-GAP, DP, EO), the leakage audit, and ``compute_metrics`` for Trainer."""

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
from .leakage import AttackerResult, LeakageReport, audit_leakage, make_attacker, wilson_interval
from .trainer_metrics import make_compute_metrics

__all__ = [
    "AttackerResult",
    "IntervalEstimate",
    "LeakageReport",
    "audit_leakage",
    "bootstrap_ci",
    "demographic_parity_difference",
    "equalized_odds_difference",
    "fairness_report",
    "make_attacker",
    "make_compute_metrics",
    "tpr_gap_by_class",
    "tpr_gap_ci",
    "tpr_gap_permutation_test",
    "tpr_gap_rms",
    "wilson_interval",
]
