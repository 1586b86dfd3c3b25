"""Dataset columns as the trainer reads them: the sensitive column and task labels checked before training, and the
number of classes of a column (one home for both the trainer and the recipes).

Works on ``datasets.Dataset`` (every value of a column is checked) and on other map-style datasets of dicts (their
first example is checked); iterable datasets are checked where the values are seen.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

if TYPE_CHECKING:
    from .config import KNIFEConfig

__all__ = [
    "IGNORE_INDEX",
    "check_sensitive_column",
    "check_task_labels",
    "column_names",
    "count_classes",
    "dataset_length",
    "full_column",
]

#: Label value that the task losses ignore (``CrossEntropyLoss(ignore_index=-100)``).
IGNORE_INDEX = -100


def dataset_length(dataset: Any) -> int | None:
    """``len(dataset)``, or None for an iterable dataset."""
    try:
        return len(dataset)
    except TypeError:
        return None


def _first_example(dataset: Any) -> Mapping | None:
    """The first example of a map-style dataset of dicts that is not a ``datasets.Dataset`` (else None)."""
    if hasattr(dataset, "column_names") or not dataset_length(dataset):
        return None
    try:
        example = dataset[0]
    except Exception:  # not indexable by position: nothing to check up front
        return None
    return example if isinstance(example, Mapping) else None


def column_names(dataset: Any) -> list[str] | None:
    """The dataset's columns (a ``datasets`` dataset's, or the keys of the first example), None when unknown."""
    names = getattr(dataset, "column_names", None)
    if names is None:
        example = _first_example(dataset)
        names = list(example) if example is not None else None
    return list(names) if names is not None else None


def full_column(dataset: Any, column: str) -> np.ndarray | None:
    """Every value of ``column`` of a map-style ``datasets.Dataset``, flattened; None for other datasets."""
    import datasets

    if not isinstance(dataset, datasets.Dataset) or column not in dataset.column_names:
        return None
    return _flatten(dataset.with_format("numpy")[column])


def _flatten(values: Any) -> np.ndarray:
    """A flat numpy array of (possibly nested or ragged) values."""
    array = np.asarray(values) if not isinstance(values, np.ndarray) else values
    if array.dtype == object and array.size and isinstance(array.flat[0], (np.ndarray, list, tuple)):
        return np.concatenate([_flatten(v) for v in array.flat]) if array.size else array
    return array.reshape(-1)


def _column_sample(dataset: Any, column: str) -> tuple[np.ndarray | None, str]:
    """The values of ``column`` to check (all of a ``datasets.Dataset``, else the first example's) and where
    they come from."""
    values = full_column(dataset, column)
    if values is not None:
        return values, ""
    example = _first_example(dataset)
    if example is None or column not in example:
        return None, ""
    value = example[column]
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    return _flatten([value] if np.ndim(value) == 0 else value), " in its first example"


def _is_text(values: np.ndarray) -> bool:
    if values.dtype.kind in "USa":
        return True
    return values.dtype == object and values.size > 0 and isinstance(values.flat[0], (str, bytes))


def _examples(values: np.ndarray, limit: int = 3) -> str:
    """Up to ``limit`` distinct values, as a readable list."""
    distinct = list(dict.fromkeys(v.item() if hasattr(v, "item") else v for v in values.flat))
    shown = ", ".join(repr(v) for v in distinct[:limit])
    return shown + (", ..." if len(distinct) > limit else "")


def check_sensitive_column(config: KNIFEConfig, dataset: Any, names: list[str] | None) -> None:
    """The sensitive column exists and holds numbers: class ids in range (discrete S) or finite values."""
    column = config.sensitive_column
    if column is None:
        raise ValueError(
            f"the {config.penalty} penalty needs sensitive_column (the dataset column holding S): "
            "KNIFEConfig(sensitive_column=...) or --knife_sensitive_column"
        )
    if names is not None and column not in names:
        raise ValueError(
            f"sensitive column {column!r} is not in the training dataset; its columns are: {', '.join(names)}"
        )
    values, where = _column_sample(dataset, column)
    if values is None:
        return
    if _is_text(values):
        raise ValueError(
            f"sensitive column {column!r} holds strings{where} (e.g. {_examples(values)}); the {config.penalty} "
            f"penalty needs {'integer class ids 0..C-1' if config.sensitive_type == 'discrete' else 'numbers'}: "
            f"encode them, e.g. dataset = dataset.class_encode_column({column!r}) (a ClassLabel, from which "
            "KNIFETrainer also reads the number of classes)"
        )
    if values.dtype.kind not in "biuf":
        raise ValueError(
            f"sensitive column {column!r} holds values of type {values.dtype}{where}; expected "
            f"{'integer class ids' if config.sensitive_type == 'discrete' else 'numbers'}"
        )
    if config.sensitive_type != "discrete":
        finite = np.isfinite(values.astype(np.float64))
        if not finite.all():
            raise FloatingPointError(
                f"sensitive column {column!r} holds {int((~finite).sum())} NaN or Inf values{where} (first at "
                f"position {int(np.argmin(finite))}); a continuous S must be finite"
            )
        return
    if values.dtype.kind == "f" and not bool((values == np.round(values)).all()):
        raise ValueError(
            f"sensitive column {column!r} holds non-integer values{where} (e.g. {values[values != np.round(values)][0]}); "
            "use integer class ids, or sensitive_type='continuous'"
        )
    if values.size and int(values.min()) < 0:
        raise ValueError(
            f"sensitive column {column!r} holds negative class ids ({int(values.min())}){where}; expected ids in "
            "[0, C-1] for C classes"
        )
    classes = config.num_sensitive_classes
    if classes is not None and values.size and int(values.max()) >= classes:
        raise ValueError(
            f"sensitive column {column!r} holds class id {int(values.max())}{where}, expected ids in "
            f"[0, {classes - 1}] (num_sensitive_classes={classes})"
        )


#: Model heads whose ``labels`` are class ids in ``[0, config.num_labels)``.
CLASS_ID_HEADS = ("ForSequenceClassification", "ForTokenClassification")


def check_task_labels(
    model: nn.Module, dataset: Any, names: list[str] | None, label_names: list[str] | None
) -> None:
    """The task labels of a sequence / token classifier are class ids in ``[0, num_labels)`` (or -100)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = getattr(base, "config", None)
    head = type(base).__name__
    if config is None or not head.endswith(CLASS_ID_HEADS):
        return
    num_labels = getattr(config, "num_labels", None)
    if (
        not num_labels
        or num_labels < 2
        or getattr(config, "problem_type", None) in ("regression", "multi_label_classification")
    ):
        return
    if label_names is not None and "labels" not in label_names:
        return
    # the default collators rename 'label' and 'label_ids' to 'labels'
    column = next((c for c in ("labels", "label", "label_ids") if names is not None and c in names), None)
    if column is None:
        return
    values, where = _column_sample(dataset, column)
    if values is None:
        return
    if _is_text(values):
        raise ValueError(
            f"label column {column!r} holds strings{where} (e.g. {_examples(values)}); {head} expects class ids "
            f"0..{num_labels - 1}: encode them, e.g. dataset = dataset.class_encode_column({column!r})"
        )
    if values.dtype.kind not in "iu":  # float labels: regression or multi-label, checked by the model
        return
    bad = ((values < 0) & (values != IGNORE_INDEX)) | (values >= num_labels)
    if bad.any():
        used = values[values != IGNORE_INDEX]
        raise ValueError(
            f"label column {column!r} holds class ids {_examples(np.unique(values[bad]), 5)} outside [0, "
            f"{num_labels - 1}]{where} ({int(bad.sum())} of {values.size} labels): {head} has num_labels="
            f"{num_labels}. Build the model with the number of classes (e.g. num_labels={int(used.max()) + 1}) or "
            f"fix the labels ({IGNORE_INDEX} marks ignored positions)"
        )


def count_classes(dataset: Any, column: str) -> int | None:
    """The number of classes of ``column``: its ClassLabel's ``num_classes``, else the largest id + 1 (at least 2);
    None when neither can be read (an iterable dataset, a missing column)."""
    features = getattr(dataset, "features", None)
    feature = features.get(column) if features is not None else None
    if feature is not None and hasattr(feature, "num_classes"):
        return int(feature.num_classes)
    values = full_column(dataset, column)
    if values is None or not values.size:
        return None
    return max(2, int(values.max()) + 1)
