"""``evaluate`` modules of the fairness metrics and of the leakage audit, shipped inside the package.

Each module is a folder ``<name>/<name>.py`` holding one ``evaluate.Metric`` (``evaluate.Measurement`` for the
leakage audit) that wraps the function of :mod:`hf_knife.metrics` (one implementation). ``evaluate.load`` takes the
folder path and needs no network (also with ``HF_HUB_OFFLINE=1``):

    import evaluate
    from hf_knife.metrics import evaluate_module_path

    tpr_gap = evaluate.load(evaluate_module_path("tpr_gap"))
    tpr_gap.compute(predictions=preds, references=labels, sensitive=groups)   # {"tpr_gap": ...}

The classes are also importable directly: ``hf_knife.metrics.TPRGap()`` etc. For ``Trainer`` (the pattern of
transformers' ``run_classification.py``), :func:`make_evaluate_compute_metrics` passes the sensitive values along.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["EVALUATE_MODULES", "evaluate_module_path", "make_evaluate_compute_metrics"]

#: module name -> class name (the folder ``<name>`` holds ``<name>.py`` defining the class).
EVALUATE_MODULES: dict[str, str] = {
    "tpr_gap": "TPRGap",
    "demographic_parity_difference": "DemographicParityDifference",
    "equalized_odds_difference": "EqualizedOddsDifference",
    "leakage_audit": "LeakageAudit",
}


def evaluate_module_path(name: str) -> str:
    """The folder of the evaluate module ``name`` (pass it to ``evaluate.load``), e.g. ``"tpr_gap"``."""
    if name not in EVALUATE_MODULES:
        raise ValueError(f"unknown evaluate module {name!r}; expected one of {', '.join(EVALUATE_MODULES)}")
    return str(Path(__file__).resolve().parent / name)


def _feature_names(module: Any) -> list[str]:
    features = module.features
    return list((features[0] if isinstance(features, list) else features).keys())


def make_evaluate_compute_metrics(
    *metrics: Any, ignore_index: int = -100, **compute_kwargs: Any
) -> Callable[[Any], dict[str, Any]]:
    """A ``Trainer`` ``compute_metrics`` that runs evaluate modules the way ``run_classification.py`` does.

    As in the example script: predictions are the first output if a tuple, logits ``[N, C]`` become class ids
    ``[N]`` (argmax), and each module gets ``compute(predictions=..., references=...)``. In addition, modules with a
    ``sensitive`` input get the sensitive values: give the Trainer ``label_names=["labels", "<sensitive column>"]``
    so that ``EvalPrediction.label_ids`` is ``(labels [N], sensitive [N])``. Examples labelled ``ignore_index`` are
    dropped. The results of all modules are merged into one dict.

    Args:
        metrics: loaded evaluate modules, or paths / names for ``evaluate.load``.
        compute_kwargs: passed to every ``compute`` call (e.g. ``labels=list(range(num_labels))``).
    """
    if not metrics:
        raise ValueError("give at least one evaluate module (or a path for evaluate.load)")
    loaded: list[Any] = []
    for metric in metrics:
        if isinstance(metric, (str, Path)):
            import evaluate

            metric = evaluate.load(str(metric))
        loaded.append(metric)
    needs = [("sensitive" in _feature_names(m)) for m in loaded]

    def compute_metrics(eval_pred: Any) -> dict[str, Any]:
        predictions, label_ids = eval_pred.predictions, eval_pred.label_ids
        preds = predictions[0] if isinstance(predictions, tuple) else predictions
        preds = np.asarray(preds)
        if preds.ndim == 2:
            preds = np.argmax(preds, axis=1)  # logits [N, C] -> class ids [N]
        sensitive: Sequence[Any] | None = None
        if isinstance(label_ids, (tuple, list)):
            labels = label_ids[0]
            sensitive = label_ids[1] if len(label_ids) > 1 else None
        else:
            labels = label_ids
        labels = np.asarray(labels).reshape(-1)
        keep = labels != ignore_index
        result: dict[str, Any] = {}
        for metric, wants_sensitive in zip(loaded, needs):
            kwargs: dict[str, Any] = {"predictions": preds[keep], "references": labels[keep]}
            if wants_sensitive:
                if sensitive is None:
                    raise ValueError(
                        f"the evaluate module {metric.name!r} needs the sensitive values: give the Trainer "
                        "label_names=['labels', '<sensitive column>'] so that label_ids is (labels, sensitive)"
                    )
                kwargs["sensitive"] = np.asarray(sensitive).reshape(-1)[keep]
            result.update(metric.compute(**kwargs, **compute_kwargs))
        return result

    return compute_metrics
