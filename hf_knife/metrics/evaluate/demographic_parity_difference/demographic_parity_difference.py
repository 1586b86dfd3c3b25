"""Demographic-parity difference as an ``evaluate.Metric`` over
:func:`hf_knife.metrics.demographic_parity_difference` (fairlearn; one-vs-rest for more than two classes).

    metric = evaluate.load(hf_knife.metrics.evaluate_module_path("demographic_parity_difference"))
    metric.compute(predictions=..., references=..., sensitive=...)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import evaluate

from hf_knife.metrics.evaluate._common import as_array, group_inputs_description, group_metric_info
from hf_knife.metrics.fairness import demographic_parity_difference

_DESCRIPTION = """\
Demographic-parity difference: the largest between-group gap in selection rate P(prediction = c | group). Two
classes: fairlearn's demographic_parity_difference. More classes: the maximum over classes c of fairlearn's value for
the binary problem "predicted c". 0 is parity. Computed by hf_knife.metrics.demographic_parity_difference.
"""

_KWARGS_DESCRIPTION = group_inputs_description(
    "demographic_parity_difference",
    "    demographic_parity_difference (float): in [0, 1].",
    "{'demographic_parity_difference': 0.25}",
    references="true classes [N] (only used to find and validate the classes)",
)


class DemographicParityDifference(evaluate.Metric):
    """``evaluate`` module for the DP difference; inputs ``predictions``, ``references``, ``sensitive`` ``[N]``."""

    def _info(self) -> evaluate.MetricInfo:
        return group_metric_info(
            _DESCRIPTION,
            _KWARGS_DESCRIPTION,
            "https://fairlearn.org/main/user_guide/assessment/common_fairness_metrics.html",
        )

    def _compute(
        self, predictions: Any, references: Any, sensitive: Any, labels: Sequence[Any] | None = None
    ) -> dict[str, float]:
        value = demographic_parity_difference(
            as_array(references), as_array(predictions), as_array(sensitive), labels=labels
        )
        return {"demographic_parity_difference": value}
