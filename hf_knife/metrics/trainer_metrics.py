"""``compute_metrics`` for ``transformers.Trainer``: accuracy, macro-F1 and group fairness from ``(labels, sensitive)``.

Give the Trainer ``label_names=["labels", "<sensitive column>"]`` so that ``EvalPrediction.label_ids`` arrives as a
tuple ``(labels [N], sensitive [N])``. transformers is not imported here: the prediction is duck-typed (anything with
``.predictions`` and ``.label_ids``, or a ``(predictions, label_ids)`` pair).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ._validation import check_1d, check_same_length, to_numpy

__all__ = ["make_compute_metrics"]


def _first(x: Any) -> Any:
    """The first array of a (possibly nested) tuple/list of outputs, e.g. ``(logits, hidden_states)``."""
    while isinstance(x, (tuple, list)):
        if not x:
            raise ValueError("EvalPrediction.predictions is an empty tuple; expected logits [N, num_labels]")
        x = x[0]
    return x


def make_compute_metrics(
    num_groups: int | None = None,
    *,
    num_labels: int | None = None,
    n_boot: int = 0,
    alpha: float = 0.05,
    seed: int = 0,
    ignore_index: int = -100,
) -> Callable[[Any], dict[str, float]]:
    """Build a ``compute_metrics(eval_pred) -> dict[str, float]`` for ``Trainer``.

    The function takes ``predictions`` as logits ``[N, num_labels]`` (first element if a tuple; a single binary logit
    ``[N, 1]`` is thresholded at 0) or class ids ``[N]``,
    and ``label_ids`` as ``(labels [N], sensitive [N])`` or just ``labels [N]``. Examples whose label is
    ``ignore_index`` are dropped. It returns ``accuracy`` and ``macro_f1``, and when the sensitive attribute is given
    and has two or more groups in the evaluation set also ``tpr_gap``, ``dp_diff``, ``eo_diff`` (plus
    ``tpr_gap_ci_low`` / ``tpr_gap_ci_high`` if ``n_boot > 0``); the Trainer prefixes them with ``eval_``.

    Args:
        num_groups: if given, sensitive ids must lie in ``[0, num_groups)`` (catches a wrong column early).
        num_labels: if given, macro-F1 averages over all ``num_labels`` classes (absent ones score 0) and label ids
            must lie in ``[0, num_labels)``; otherwise over the classes seen in labels or predictions.
        n_boot: bootstrap replicates for the TPR-GAP interval (0: none; it costs time at every evaluation).
    """
    from .fairness import fairness_report

    def compute_metrics(eval_pred: Any) -> dict[str, float]:
        if hasattr(eval_pred, "predictions") and hasattr(eval_pred, "label_ids"):
            predictions, label_ids = eval_pred.predictions, eval_pred.label_ids
        elif isinstance(eval_pred, (tuple, list)) and len(eval_pred) >= 2:
            predictions, label_ids = eval_pred[0], eval_pred[1]
        else:
            raise ValueError(
                f"compute_metrics expected an EvalPrediction (or a (predictions, label_ids) pair), got "
                f"{type(eval_pred).__name__}"
            )
        preds = to_numpy(_first(predictions), "predictions")
        if preds.ndim == 2 and preds.shape[1] == 1:
            preds = (preds[:, 0] > 0).astype(np.int64)  # one binary logit [N, 1] -> class ids [N]
        elif preds.ndim == 2:
            preds = preds.argmax(axis=-1)  # logits [N, C] -> class ids [N]
        elif preds.ndim != 1:
            raise ValueError(
                f"predictions must be logits [N, num_labels] or class ids [N], got shape {tuple(preds.shape)}"
            )
        sensitive = None
        if isinstance(label_ids, (tuple, list)):
            if len(label_ids) == 0:
                raise ValueError("label_ids is an empty tuple; expected (labels, sensitive) or labels")
            labels = label_ids[0]
            if len(label_ids) >= 2:
                sensitive = label_ids[1]
        else:
            labels = label_ids
        labels = check_1d(labels, "labels")
        preds = check_1d(preds, "predictions")
        check_same_length(predictions=preds, labels=labels)
        keep = labels != ignore_index
        labels, preds = labels[keep], preds[keep]
        if labels.size == 0:
            raise ValueError(f"every label is ignore_index={ignore_index}; nothing to evaluate")
        if num_labels is not None and (labels.min() < 0 or labels.max() >= num_labels):
            raise ValueError(
                f"labels range over [{labels.min()}, {labels.max()}], expected class ids in [0, {num_labels})"
            )
        class_list: Sequence[int] | None = list(range(num_labels)) if num_labels is not None else None
        if sensitive is not None:
            sensitive = check_1d(sensitive, "sensitive")
            check_same_length(labels=keep, sensitive=sensitive)
            sensitive = sensitive[keep]
            if num_groups is not None and (sensitive.min() < 0 or sensitive.max() >= num_groups):
                raise ValueError(
                    f"sensitive ids range over [{sensitive.min()}, {sensitive.max()}], expected group ids in "
                    f"[0, {num_groups}) (is label_names[1] the sensitive column?)"
                )
            if np.unique(sensitive).size >= 2:
                if class_list is not None:
                    class_list = sorted(set(class_list) | set(np.unique(preds).tolist()))
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", RuntimeWarning)  # undefined gaps come back as NaN
                    report = fairness_report(
                        labels,
                        preds,
                        sensitive,
                        labels=class_list,
                        n_boot=n_boot,
                        n_perm=0,
                        alpha=alpha,
                        seed=seed,
                    )
                keys = ["accuracy", "macro_f1", "tpr_gap", "dp_diff", "eo_diff"]
                if n_boot > 0:
                    keys += ["tpr_gap_ci_low", "tpr_gap_ci_high"]
                return {k: float(report[k]) for k in keys}
            warnings.warn(
                "the evaluation set has a single sensitive group; reporting accuracy and macro-F1 only",
                RuntimeWarning,
                stacklevel=2,
            )
        from sklearn.metrics import f1_score

        return {
            "accuracy": float(np.mean(preds == labels)),
            "macro_f1": float(f1_score(labels, preds, labels=class_list, average="macro", zero_division=0)),
        }

    return compute_metrics
