"""Equalised-odds difference as an ``evaluate.Metric`` over :func:`hf_knife.metrics.equalized_odds_difference`
(fairlearn rates; one-vs-rest for more than two classes).

    metric = evaluate.load(hf_knife.metrics.evaluate_module_path("equalized_odds_difference"))
    metric.compute(predictions=..., references=..., sensitive=...)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import evaluate

from hf_knife.metrics.evaluate._common import as_array, group_inputs_description, group_metric_info
from hf_knife.metrics.fairness import equalized_odds_difference

_DESCRIPTION = """\
Equalised-odds difference: the larger of the between-group gaps in true-positive and false-positive rate, for the
worst class (one-vs-rest). Two classes and no empty (class, group) cell: fairlearn's equalized_odds_difference; a
group without positives (negatives) of a class is left out of that class's TPR (FPR) gap instead of counting as a
rate of 0. Computed by hf_knife.metrics.equalized_odds_difference.
"""

_KWARGS_DESCRIPTION = group_inputs_description(
    "equalized_odds_difference",
    "    equalized_odds_difference (float): in [0, 1] (NaN, with a warning, when no gap can be formed).",
    "{'equalized_odds_difference': 0.5}",
)


class EqualizedOddsDifference(evaluate.Metric):
    """``evaluate`` module for the EO difference; inputs ``predictions``, ``references``, ``sensitive`` ``[N]``."""

    def _info(self) -> evaluate.MetricInfo:
        return group_metric_info(
            _DESCRIPTION,
            _KWARGS_DESCRIPTION,
            "https://fairlearn.org/main/user_guide/assessment/common_fairness_metrics.html",
        )

    def _compute(
        self, predictions: Any, references: Any, sensitive: Any, labels: Sequence[Any] | None = None
    ) -> dict[str, float]:
        value = equalized_odds_difference(
            as_array(references), as_array(predictions), as_array(sensitive), labels=labels
        )
        return {"equalized_odds_difference": value}
