"""Demographic-parity difference as an ``evaluate.Metric`` over
:func:`hf_knife.metrics.demographic_parity_difference` (fairlearn; one-vs-rest for more than two classes).

    metric = evaluate.load(hf_knife.metrics.evaluate_module_path("demographic_parity_difference"))
    metric.compute(predictions=..., references=..., sensitive=...)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import evaluate

from hf_knife.metrics.evaluate._common import CITATION, as_array, label_features
from hf_knife.metrics.fairness import demographic_parity_difference

_DESCRIPTION = """\
Demographic-parity difference: the largest between-group gap in selection rate P(prediction = c | group). Two
classes: fairlearn's demographic_parity_difference. More classes: the maximum over classes c of fairlearn's value for
the binary problem "predicted c". 0 is parity. Computed by hf_knife.metrics.demographic_parity_difference.
"""

_KWARGS_DESCRIPTION = """\
Args:
    predictions (list of int or str): predicted classes [N].
    references (list of int or str): true classes [N] (only used to find and validate the classes).
    sensitive (list of int or str): group of each example [N] (two or more groups).
    labels (list, optional): the full class list.
Returns:
    demographic_parity_difference (float): in [0, 1].
Examples:
    >>> metric = evaluate.load(hf_knife.metrics.evaluate_module_path("demographic_parity_difference"))
    >>> metric.compute(predictions=[0, 0, 1, 0, 0, 0, 1, 1], references=[0, 0, 1, 1, 0, 0, 1, 1],
    ...                sensitive=["a", "a", "a", "a", "b", "b", "b", "b"])
    {'demographic_parity_difference': 0.25}
"""


class DemographicParityDifference(evaluate.Metric):
    """``evaluate`` module for the DP difference; inputs ``predictions``, ``references``, ``sensitive`` ``[N]``."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=label_features("predictions", "references", "sensitive"),
            reference_urls=["https://fairlearn.org/main/user_guide/assessment/common_fairness_metrics.html"],
        )

    def _compute(
        self, predictions: Any, references: Any, sensitive: Any, labels: Sequence[Any] | None = None
    ) -> dict[str, float]:
        value = demographic_parity_difference(
            as_array(references), as_array(predictions), as_array(sensitive), labels=labels
        )
        return {"demographic_parity_difference": value}
