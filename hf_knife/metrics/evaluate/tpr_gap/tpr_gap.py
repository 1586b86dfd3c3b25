"""TPR-GAP as an ``evaluate.Metric``: a thin wrapper of :func:`hf_knife.metrics.tpr_gap_rms` / ``tpr_gap_ci``.

import evaluate
from hf_knife.metrics import evaluate_module_path

metric = evaluate.load(evaluate_module_path("tpr_gap"))     # works offline: a local folder
metric.compute(predictions=[0, 1, 1, 0], references=[0, 1, 0, 0], sensitive=["a", "a", "b", "b"])
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import evaluate

from hf_knife.metrics.evaluate._common import as_array, group_inputs_description, group_metric_info
from hf_knife.metrics.fairness import tpr_gap_by_class, tpr_gap_ci, tpr_gap_rms

_DESCRIPTION = """\
TPR-GAP (the Bias-in-Bios fairness metric): the root mean square over classes of the gap in true-positive rate
(recall of the class) between groups of a sensitive attribute; max minus min over groups when there are more than
two. Cells (class, group) without examples are skipped, never counted as a rate of 0. 0 is perfectly fair; 1 is the
maximum. Computed by hf_knife.metrics.tpr_gap_rms.
"""

_KWARGS_DESCRIPTION = group_inputs_description(
    "tpr_gap",
    """\
    tpr_gap (float): the RMS gap (NaN, with a warning, when no class has examples in two groups).
    tpr_gap_ci_low, tpr_gap_ci_high (float): with n_boot > 0.
    tpr_gap_by_class (dict): with per_class=True, {class: gap}.""",
    "{'tpr_gap': 0.3535533905932738}",
    labels="the full class list (only used to validate the values)",
    extra_args="""\
    n_boot (int, default 0): if > 0, also a bias-corrected bootstrap interval with this many replicates.
    alpha (float, default 0.05): the interval is at level 1 - alpha.
    seed (int, default 0): seeds the bootstrap.
    per_class (bool, default False): also return the gap of each class.
""",
)


class TPRGap(evaluate.Metric):
    """``evaluate`` module for TPR-GAP; inputs ``predictions``, ``references``, ``sensitive`` (each ``[N]``)."""

    def _info(self) -> evaluate.MetricInfo:
        return group_metric_info(_DESCRIPTION, _KWARGS_DESCRIPTION, "https://arxiv.org/abs/1901.09451")

    def _compute(
        self,
        predictions: Any,
        references: Any,
        sensitive: Any,
        labels: Sequence[Any] | None = None,
        n_boot: int = 0,
        alpha: float = 0.05,
        seed: int = 0,
        per_class: bool = False,
    ) -> dict[str, Any]:
        y_true, y_pred, groups = as_array(references), as_array(predictions), as_array(sensitive)
        if n_boot > 0:
            est = tpr_gap_ci(y_true, y_pred, groups, n_boot=n_boot, alpha=alpha, seed=seed, labels=labels)
            result: dict[str, Any] = {
                "tpr_gap": est.value,
                "tpr_gap_ci_low": est.low,
                "tpr_gap_ci_high": est.high,
            }
        else:
            result = {"tpr_gap": tpr_gap_rms(y_true, y_pred, groups, labels=labels)}
        if per_class:
            result["tpr_gap_by_class"] = tpr_gap_by_class(y_true, y_pred, groups, labels=labels)
        return result
