"""Generic text-classification data: load a Hub or local dataset, encode labels, stratified seeded splits.

Every function is pure (returns new ``datasets`` objects) and seeded. Loaded datasets use fixed column names:
``text``, optional ``text_pair``, ``label``, and the sensitive attribute (if any) under the requested name.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np
import pandas as pd
from datasets import ClassLabel, Dataset, DatasetDict, Features, Value

logger = logging.getLogger(__name__)

Size = int | float | None
TaskType = Literal["classification", "regression", "auto"]

__all__ = [
    "encode_labels",
    "load_text_classification",
    "make_splits",
    "stratified_sample",
    "stratified_split",
    "stratified_subsample",
    "validate_text_classification",
]

_VALIDATION_ALIASES = ("validation", "dev", "valid", "val")

_DATA_FILE_BUILDERS = {
    ".csv": ("csv", {}),
    ".tsv": ("csv", {"sep": "\t"}),
    ".json": ("json", {}),
    ".jsonl": ("json", {}),
    ".parquet": ("parquet", {}),
}


# ----------------------------------------------------------------------------------------------------------------------
# Stratified index sampling (numpy core)
# ----------------------------------------------------------------------------------------------------------------------


def _values(dataset: Dataset, column: str) -> list[Any]:
    """All values of ``column`` as a Python list (fast path through Arrow; respects ``select`` indices)."""
    return dataset.with_format("arrow")[column].to_pylist()


def _strata(dataset: Dataset, columns: str | Sequence[str] | None) -> np.ndarray:
    """Integer stratum id per row (one stratum per distinct combination of ``columns``)."""
    if columns is None:
        return np.zeros(len(dataset), dtype=np.int64)
    cols = [columns] if isinstance(columns, str) else list(columns)
    _require_columns(dataset, cols, what="stratification")
    codes = np.stack([_codes_of(_values(dataset, c)) for c in cols], axis=1)  # [N, C]
    _, inverse = np.unique(codes, axis=0, return_inverse=True)
    return inverse.reshape(-1).astype(np.int64)


def _codes_of(values: list[Any]) -> np.ndarray:
    """Integer codes of hashable values, in sorted order of the values when they are sortable."""
    try:
        codes, _ = pd.factorize(pd.Series(values, dtype=object), sort=True, use_na_sentinel=False)
    except TypeError:  # mixed, unsortable types
        codes, _ = pd.factorize(pd.Series([repr(v) for v in values]), sort=True)
    return np.asarray(codes, dtype=np.int64)


def _allocate(counts: np.ndarray, n: int, min_one: bool = True) -> np.ndarray:
    """Proportional allocation of ``n`` draws over strata of sizes ``counts`` (largest remainder).

    With ``min_one`` and ``n`` at least the number of non-empty strata, every non-empty stratum gets one draw.
    """
    total = int(counts.sum())
    if n > total:
        raise ValueError(f"cannot draw {n} examples from {total}")
    if n == 0 or total == 0:
        return np.zeros_like(counts)
    exact = counts * (n / total)
    alloc = np.floor(exact).astype(np.int64)
    remainder = n - int(alloc.sum())
    order = np.argsort(-(exact - alloc), kind="stable")
    alloc[order[:remainder]] += 1
    if min_one and n >= int((counts > 0).sum()):
        for k in np.flatnonzero((alloc == 0) & (counts > 0)):
            donor = int(np.argmax(alloc))
            alloc[donor] -= 1
            alloc[k] += 1
    return alloc


def _draw(strata: np.ndarray, pool: np.ndarray, alloc: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Draw ``alloc[k]`` indices of stratum ``k`` from ``pool`` (prefix of a seeded permutation, so nested in n)."""
    chosen = []
    for k in range(len(alloc)):
        members = pool[strata[pool] == k]
        perm = rng.permutation(len(members))
        chosen.append(members[perm[: alloc[k]]])
    return np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, dtype=np.int64)


def _resolve_size(size: Size, available: int, name: str) -> int:
    """Turn an int count or a float fraction into a count, checking it fits."""
    if size is None:
        return 0
    if isinstance(size, bool):
        raise ValueError(f"{name} must be an int count or a float fraction, got {size!r}")
    if isinstance(size, float):
        if not 0.0 <= size < 1.0:
            raise ValueError(f"{name} as a fraction must be in [0, 1), got {size}")
        return int(math.floor(size * available + 0.5))
    if size < 0:
        raise ValueError(f"{name} must be non-negative, got {size}")
    if size > available:
        raise ValueError(f"{name}={size} exceeds the {available} examples available")
    return int(size)


# ----------------------------------------------------------------------------------------------------------------------
# Public sampling helpers
# ----------------------------------------------------------------------------------------------------------------------


def stratified_sample(
    dataset: Dataset,
    column: str | Sequence[str],
    num_per_class: int,
    seed: int = 0,
    allow_fewer: bool = False,
) -> Dataset:
    """Exactly ``num_per_class`` examples of every class of ``column`` (seeded; smaller n gives a nested subset).

    Raises ``ValueError`` when a class has fewer examples, unless ``allow_fewer`` (then that class is taken whole).
    """
    if num_per_class < 1:
        raise ValueError(f"num_per_class must be >= 1, got {num_per_class}")
    _check_not_empty(dataset, "dataset")
    strata = _strata(dataset, column)
    counts = np.bincount(strata)
    short = np.flatnonzero(counts < num_per_class)
    if len(short) and not allow_fewer:
        names = _stratum_names(dataset, column, strata)
        detail = ", ".join(f"{names[k]}: {counts[k]}" for k in short[:10])
        raise ValueError(
            f"stratified_sample: {len(short)} class(es) of {column!r} have fewer than {num_per_class} examples ({detail})"
        )
    alloc = np.minimum(counts, num_per_class)
    rng = np.random.default_rng(seed)
    return dataset.select(_draw(strata, np.arange(len(dataset)), alloc, rng))


def stratified_subsample(
    dataset: Dataset, column: str | Sequence[str] | None, num_samples: int, seed: int = 0
) -> Dataset:
    """``num_samples`` examples with class proportions kept (every class present when ``num_samples`` allows)."""
    n = _resolve_size(num_samples, len(dataset), "num_samples")
    strata = _strata(dataset, column)
    rng = np.random.default_rng(seed)
    return dataset.select(_draw(strata, np.arange(len(dataset)), _allocate(np.bincount(strata), n), rng))


def stratified_split(
    dataset: Dataset, column: str | Sequence[str] | None, test_size: int | float, seed: int = 0
) -> DatasetDict:
    """Disjoint stratified ``train`` / ``test`` split (``test_size``: count or fraction)."""
    n = _resolve_size(test_size, len(dataset), "test_size")
    strata = _strata(dataset, column)
    rng = np.random.default_rng(seed)
    test_idx = _draw(strata, np.arange(len(dataset)), _allocate(np.bincount(strata), n), rng)
    train_idx = np.setdiff1d(np.arange(len(dataset)), test_idx)
    return DatasetDict(train=dataset.select(train_idx), test=dataset.select(test_idx))


def make_splits(
    dataset: Dataset | DatasetDict,
    *,
    train_size: Size = None,
    validation_size: Size = None,
    test_size: Size = None,
    num_train_per_class: int | None = None,
    stratify_by: str | Sequence[str] | None = "label",
    split_seed: int = 0,
    seed: int = 42,
    label_column: str | None = "label",
) -> DatasetDict:
    """Train / validation / test splits, stratified and seeded.

    ``dataset`` is one pool or a ``DatasetDict`` with a ``train`` split and optionally ``validation`` / ``test``.
    A missing ``test`` (then ``validation``) split is carved from ``train`` with ``test_size`` (``validation_size``);
    an existing one is subsampled to that size when a size is given. Validation and test depend only on
    ``split_seed``; the training subset (``train_size`` total or ``num_train_per_class`` per class of
    ``label_column``, never both) depends on ``seed``. Splits are disjoint by construction.
    """
    if train_size is not None and num_train_per_class is not None:
        raise ValueError("give either train_size or num_train_per_class, not both")
    splits = DatasetDict(train=dataset) if isinstance(dataset, Dataset) else DatasetDict(dict(dataset))
    if "train" not in splits:
        raise ValueError(f"no 'train' split; splits present: {sorted(splits)}")
    unknown = sorted(set(splits) - {"train", "validation", "test"})
    if unknown:
        raise ValueError(f"unexpected split(s) {unknown}; expected train / validation / test")
    for name, split in splits.items():
        _check_not_empty(split, f"split {name!r}")

    out: dict[str, Dataset] = {}
    pool = splits["train"]
    for offset, (name, size) in enumerate((("test", test_size), ("validation", validation_size))):
        if name in splits:
            held = splits[name]
            if size is not None:
                held = stratified_subsample(
                    held,
                    stratify_by,
                    _resolve_size(size, len(held), f"{name}_size"),
                    seed=split_seed + offset,
                )
            out[name] = held
        elif size is not None:
            parts = stratified_split(
                pool, stratify_by, _resolve_size(size, len(pool), f"{name}_size"), seed=split_seed + offset
            )
            pool, out[name] = parts["train"], parts["test"]
            _check_not_empty(pool, "train split (after carving validation/test)")
        if name in out:
            _check_not_empty(out[name], f"split {name!r}")

    if num_train_per_class is not None:
        if label_column is None:
            raise ValueError("num_train_per_class needs a label_column")
        pool = stratified_sample(pool, label_column, num_train_per_class, seed=seed)
    elif train_size is not None:
        pool = stratified_subsample(
            pool, stratify_by, _resolve_size(train_size, len(pool), "train_size"), seed=seed
        )
    _check_not_empty(pool, "split 'train'")
    result = {"train": pool}
    for name in ("validation", "test"):
        if name in out:
            result[name] = out[name]
    return DatasetDict(result)


# ----------------------------------------------------------------------------------------------------------------------
# Label encoding
# ----------------------------------------------------------------------------------------------------------------------


def _column_values(dataset: Dataset | DatasetDict, column: str) -> list[Any]:
    splits = dataset.values() if isinstance(dataset, DatasetDict) else [dataset]
    values: list[Any] = []
    for split in splits:
        values.extend(_values(split, column))
    return values


def _features_of(dataset: Dataset | DatasetDict) -> Features:
    return next(iter(dataset.values())).features if isinstance(dataset, DatasetDict) else dataset.features


def _is_integral(value: Any) -> bool:
    return isinstance(value, (bool, int, np.integer)) or (
        isinstance(value, (float, np.floating)) and math.isfinite(value) and float(value).is_integer()
    )


def encode_labels(
    dataset: Dataset | DatasetDict, column: str, names: Sequence[str] | None = None
) -> Dataset | DatasetDict:
    """Turn ``column`` into a ``ClassLabel`` (ids ``0..K-1``) consistently across all splits.

    Strings are sorted (or ordered as ``names``); integers ``0..K-1`` keep their ids; other integers are mapped in
    sorted order. Missing values and non-integer numbers (regression targets) raise ``ValueError``.
    """
    splits = list(dataset.values()) if isinstance(dataset, DatasetDict) else [dataset]
    for split in splits:
        _require_columns(split, [column], what="label encoding")
    feature = _features_of(dataset)[column]
    if isinstance(feature, ClassLabel):
        if names is not None and list(names) != list(feature.names):
            raise ValueError(
                f"column {column!r} is already a ClassLabel with names {feature.names}, not {list(names)}"
            )
        return dataset
    values = _column_values(dataset, column)
    missing = sum(v is None or (isinstance(v, float) and math.isnan(v)) for v in values)
    if missing:
        raise ValueError(f"column {column!r} has {missing} missing value(s); drop or fill them first")
    if not values:
        raise ValueError(f"column {column!r} is empty")
    if all(isinstance(v, str) for v in values):
        distinct = sorted(set(values))
        if names is None:
            names = distinct
        unknown = sorted(set(distinct) - set(names))
        if unknown:
            raise ValueError(f"column {column!r} has values {unknown[:10]} not in names {list(names)}")
        mapping: dict[Any, int] = {name: i for i, name in enumerate(names)}
    elif all(_is_integral(v) and not isinstance(v, str) for v in values):
        distinct_int = sorted({int(v) for v in values})
        if names is not None:
            if distinct_int[0] < 0 or distinct_int[-1] >= len(names):
                raise ValueError(
                    f"column {column!r} has ids outside 0..{len(names) - 1}: {distinct_int[:10]}"
                )
            mapping = {i: i for i in distinct_int}
        elif distinct_int == list(range(len(distinct_int))):
            names = [str(i) for i in distinct_int]
            mapping = {i: i for i in distinct_int}
        else:
            names = [str(i) for i in distinct_int]
            mapping = {v: i for i, v in enumerate(distinct_int)}
    else:
        example = next((v for v in values if not _is_integral(v) or isinstance(v, str)), values[0])
        raise ValueError(
            f"column {column!r} holds values that are not class labels (e.g. {example!r}, type "
            f"{type(example).__name__}); for a real-valued target use a regression task"
        )

    names = [str(n) for n in names]

    def _encode(split: Dataset) -> Dataset:
        features = split.features.copy()
        features[column] = ClassLabel(names=names)
        is_str = isinstance(split.features[column], Value) and split.features[column].dtype in (
            "string",
            "large_string",
        )
        key = (lambda v: v) if is_str else (lambda v: int(v))
        return split.map(
            lambda batch: {column: [mapping[key(v)] for v in batch[column]]},
            batched=True,
            features=features,
            desc=f"Encoding {column}",
        )

    if isinstance(dataset, DatasetDict):
        return DatasetDict({name: _encode(split) for name, split in dataset.items()})
    return _encode(dataset)


# ----------------------------------------------------------------------------------------------------------------------
# Validation
# ----------------------------------------------------------------------------------------------------------------------


def _require_columns(
    dataset: Dataset, columns: Sequence[str], what: str = "", split: str | None = None
) -> None:
    missing = [c for c in columns if c not in dataset.column_names]
    if missing:
        where = f" in split {split!r}" if split else ""
        purpose = f" (needed for {what})" if what else ""
        raise ValueError(
            f"column(s) {missing} not found{where}{purpose}; columns present: {dataset.column_names}"
        )


def _check_not_empty(dataset: Dataset, name: str) -> None:
    if len(dataset) == 0:
        raise ValueError(f"{name} is empty")


def _stratum_names(dataset: Dataset, column: str | Sequence[str], strata: np.ndarray) -> dict[int, str]:
    cols = [column] if isinstance(column, str) else list(column)
    values = [_values(dataset, c) for c in cols]
    names: dict[int, str] = {}
    for i, k in enumerate(strata.tolist()):
        if k not in names:
            names[k] = "/".join(_value_name(dataset, c, v[i]) for c, v in zip(cols, values, strict=True))
    return names


def _value_name(dataset: Dataset, column: str, value: Any) -> str:
    feature = dataset.features[column]
    return feature.int2str(value) if isinstance(feature, ClassLabel) else repr(value)


def validate_text_classification(
    dataset: DatasetDict,
    *,
    label_column: str = "label",
    sensitive_column: str | None = None,
    text_columns: Sequence[str] = ("text",),
    task: Literal["classification", "regression"] = "classification",
) -> None:
    """Check a prepared ``DatasetDict`` before training; raise a clear ``ValueError`` on the first problem.

    Checks: a non-empty ``train`` split, all columns present in every split, classification labels that are a
    ``ClassLabel`` with at least two classes and at least as many training examples as classes (regression labels
    numeric), and a sensitive attribute with at least two values in the training split.
    """
    if "train" not in dataset:
        raise ValueError(f"no 'train' split; splits present: {sorted(dataset)}")
    needed = [*text_columns, label_column] + ([sensitive_column] if sensitive_column else [])
    for name, split in dataset.items():
        _require_columns(split, needed, split=name)
        _check_not_empty(split, f"split {name!r}")
    train = dataset["train"]
    feature = train.features[label_column]
    if task == "classification":
        if not isinstance(feature, ClassLabel):
            raise ValueError(
                f"classification needs class labels but {label_column!r} is {feature}; "
                "encode it with encode_labels() or use a regression task"
            )
        if feature.num_classes < 2:
            raise ValueError(
                f"classification needs at least 2 classes, {label_column!r} has {feature.num_classes}"
            )
        if len(train) < feature.num_classes:
            raise ValueError(
                f"the training split has {len(train)} examples but there are {feature.num_classes} classes; "
                "use at least one example per class"
            )
    elif task == "regression":
        if isinstance(feature, ClassLabel) or not (
            isinstance(feature, Value)
            and (feature.dtype.startswith("float") or feature.dtype.startswith("int"))
        ):
            raise ValueError(f"regression needs a numeric label, {label_column!r} is {feature}")
    else:
        raise ValueError(f"unknown task {task!r}; expected 'classification' or 'regression'")
    if sensitive_column is not None:
        values = set(_values(train, sensitive_column))
        if len(values) < 2:
            only = _value_name(train, sensitive_column, next(iter(values)))
            raise ValueError(
                f"sensitive attribute {sensitive_column!r} takes a single value ({only}) in the training split; "
                "an attribute needs at least two groups"
            )


# ----------------------------------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------------------------------


def _normalise_data_files(
    data_files: str | os.PathLike | Sequence[Any] | Mapping[str, Any],
) -> dict[str, Any]:
    if isinstance(data_files, (str, os.PathLike)):
        return {"train": [os.fspath(data_files)]}
    if isinstance(data_files, Mapping):
        return {
            str(k): [os.fspath(v)] if isinstance(v, (str, os.PathLike)) else [os.fspath(x) for x in v]
            for k, v in data_files.items()
        }
    return {"train": [os.fspath(x) for x in data_files]}


def _load_raw(
    dataset_name: str | None,
    dataset_config_name: str | None,
    data_files: Any,
    cache_dir: str | None,
    load_kwargs: Mapping[str, Any] | None,
) -> DatasetDict:
    import datasets

    kwargs = dict(load_kwargs or {})
    if dataset_name is None:
        if data_files is None:
            raise ValueError(
                "give dataset_name (a Hub id or local folder) or data_files (local csv/json/parquet)"
            )
        files = _normalise_data_files(data_files)
        for split, paths in files.items():
            for p in paths:
                if not os.path.exists(p):
                    raise ValueError(f"data file {p!r} for split {split!r} does not exist")
        exts = {os.path.splitext(p)[1].lower() for paths in files.values() for p in paths}
        builders = {_DATA_FILE_BUILDERS.get(e, (None, {}))[0] for e in exts}
        if len(builders) != 1 or None in builders:
            raise ValueError(
                f"cannot infer the format of data_files with extensions {sorted(exts)}; "
                f"supported: {sorted(_DATA_FILE_BUILDERS)} (one format per call)"
            )
        builder, extra = _DATA_FILE_BUILDERS[exts.pop()]
        for k, v in extra.items():
            kwargs.setdefault(k, v)
        try:
            raw = datasets.load_dataset(builder, data_files=files, cache_dir=cache_dir, **kwargs)
        except Exception as err:  # noqa: BLE001 - rewrap any loader failure (empty or malformed files)
            raise ValueError(f"could not load data_files {files} (empty or malformed?): {err}") from err
    else:
        try:
            raw = datasets.load_dataset(
                dataset_name, dataset_config_name, data_files=data_files, cache_dir=cache_dir, **kwargs
            )
        except Exception as err:  # noqa: BLE001 - rewrap any loader failure with a hint
            offline = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("HF_DATASETS_OFFLINE")
            hint = (
                " (HF_HUB_OFFLINE is set: Hub datasets are unavailable; use data_files or an offline loader)"
                if (offline)
                else ""
            )
            raise ValueError(
                f"could not load dataset {dataset_name!r} config {dataset_config_name!r}{hint}: {err}"
            ) from err
    if isinstance(raw, Dataset):
        raw = DatasetDict(train=raw)
    return raw


def _is_unlabelled(split: Dataset, label_column: str) -> bool:
    """True when every label is missing or -1 (e.g. GLUE test splits)."""
    values = _values(split, label_column)
    return all(v is None or (not isinstance(v, str) and _is_integral(v) and int(v) == -1) for v in values)


def load_text_classification(
    dataset_name: str | None = None,
    dataset_config_name: str | None = None,
    data_files: str | os.PathLike | Sequence[Any] | Mapping[str, Any] | None = None,
    *,
    text_column: str = "text",
    text_pair_column: str | None = None,
    label_column: str = "label",
    sensitive_column: str | None = None,
    sensitive_name: str | None = None,
    task: TaskType = "classification",
    train_split: str = "train",
    validation_split: str | None = "validation",
    test_split: str | None = "test",
    validation_size: Size = 0.1,
    test_size: Size = 0.2,
    train_size: Size = None,
    num_train_per_class: int | None = None,
    max_validation_samples: int | None = None,
    max_test_samples: int | None = None,
    stratify: bool = True,
    split_seed: int = 0,
    seed: int = 42,
    cache_dir: str | None = None,
    load_kwargs: Mapping[str, Any] | None = None,
) -> DatasetDict:
    """Load a (Hub or local) text classification/regression dataset as train / validation / test.

    Output columns: ``text``, ``text_pair`` (if ``text_pair_column``), ``label`` and the sensitive attribute
    (renamed to ``sensitive_name`` when given). String labels and sensitive values are encoded as ``ClassLabel``.
    Existing ``validation`` (or ``dev`` / ``valid``) / ``test`` splits are used when present (a test split whose labels are all -1, as in
    GLUE, is replaced by the validation split, and validation is then carved from train); otherwise they are carved
    from train with ``validation_size`` / ``test_size`` (stratified by label and sensitive attribute). ``task``:
    ``"classification"``, ``"regression"`` or ``"auto"`` (non-integer numeric labels mean regression).
    Raises ``ValueError`` for missing columns, empty splits, too few training examples, a single-valued sensitive
    attribute or labels that do not fit the task.
    """
    if task not in ("classification", "regression", "auto"):
        raise ValueError(f"unknown task {task!r}; expected 'classification', 'regression' or 'auto'")
    raw = _load_raw(dataset_name, dataset_config_name, data_files, cache_dir, load_kwargs)
    source = dataset_name or "data_files"
    if train_split not in raw:
        raise ValueError(f"split {train_split!r} not found in {source}; splits present: {sorted(raw)}")

    columns = {text_column: "text"}
    if text_pair_column is not None:
        columns[text_pair_column] = "text_pair"
    columns[label_column] = "label"
    if sensitive_column is not None:
        columns[sensitive_column] = sensitive_name or sensitive_column
    if len(columns) != 2 + (text_pair_column is not None) + (sensitive_column is not None):
        raise ValueError("text, text pair, label and sensitive columns must be distinct")
    targets = list(columns.values())
    if len(set(targets)) != len(targets):
        raise ValueError(f"sensitive_name {sensitive_name!r} collides with another output column")

    picked: dict[str, Dataset] = {"train": raw[train_split]}
    for out_name, split_name in (("validation", validation_split), ("test", test_split)):
        if (
            split_name == "validation" and split_name not in raw
        ):  # common alternative names (e.g. bias_in_bios)
            split_name = next((alias for alias in _VALIDATION_ALIASES if alias in raw), split_name)
        if split_name is not None and split_name in raw:
            picked[out_name] = raw[split_name]
    for name, split in picked.items():
        _require_columns(split, list(columns), split=name)
        _check_not_empty(split, f"split {name!r} of {source}")

    # keep only the used columns, under the standard names; drop rows with missing values
    prepared: dict[str, Dataset] = {}
    for name, split in picked.items():
        split = split.select_columns(list(columns)).rename_columns(
            {k: v for k, v in columns.items() if k != v}
        )
        if name != "train" and _is_unlabelled(split, "label"):
            logger.info("split %r has no labels (all -1 or missing); it is not used", name)
            continue
        before = len(split)
        split = split.filter(lambda row: all(row[c] is not None for c in targets), desc="Dropping missing")
        if len(split) < before:
            logger.warning("split %r: dropped %d row(s) with missing values", name, before - len(split))
        _check_not_empty(split, f"split {name!r} of {source} (after dropping missing values)")
        prepared[name] = split
    if "test" not in prepared and "validation" in prepared:
        prepared["test"] = prepared.pop("validation")  # GLUE style: labelled validation becomes the test set
    dataset = DatasetDict(prepared)

    label_feature = dataset["train"].features["label"]
    label_values = _column_values(dataset, "label")
    looks_regression = (
        not isinstance(label_feature, ClassLabel)
        and all(
            isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)
            for v in label_values
        )
        and not all(_is_integral(v) for v in label_values)
    )
    if task == "auto":
        task = "regression" if looks_regression else "classification"
    if task == "classification":
        if looks_regression:
            raise ValueError(
                f"column {label_column!r} holds non-integer numbers (e.g. "
                f"{next(v for v in label_values if not _is_integral(v))!r}): a regression target, "
                "but a classification task was requested (use task='regression')"
            )
        dataset = encode_labels(dataset, "label")
    else:
        if isinstance(label_feature, ClassLabel) or any(
            isinstance(v, (str, bool)) or not isinstance(v, (int, float, np.integer, np.floating))
            for v in label_values
        ):
            raise ValueError(
                f"regression needs numeric labels but {label_column!r} holds class labels ({label_feature}); "
                "use task='classification'"
            )
        dataset = dataset.cast_column("label", Value("float32"))
    sens = sensitive_name or sensitive_column
    if sens is not None:
        dataset = encode_labels(dataset, sens)

    strat: list[str] = []
    if stratify and task == "classification":
        strat.append("label")
    if stratify and sens is not None:
        strat.append(sens)
    dataset = make_splits(
        dataset,
        train_size=train_size,
        validation_size=validation_size if "validation" not in dataset else None,
        test_size=test_size if "test" not in dataset else None,
        num_train_per_class=num_train_per_class,
        stratify_by=strat or None,
        split_seed=split_seed,
        seed=seed,
        label_column="label" if task == "classification" else None,
    )
    if (
        "validation" in dataset
        and max_validation_samples is not None
        and len(dataset["validation"]) > max_validation_samples
    ):
        dataset["validation"] = stratified_subsample(
            dataset["validation"], strat or None, max_validation_samples, seed=split_seed + 2
        )
    if "test" in dataset and max_test_samples is not None and len(dataset["test"]) > max_test_samples:
        dataset["test"] = stratified_subsample(
            dataset["test"], strat or None, max_test_samples, seed=split_seed + 3
        )
    text_columns = ["text"] + (["text_pair"] if text_pair_column else [])
    validate_text_classification(
        dataset, label_column="label", sensitive_column=sens, text_columns=text_columns, task=task
    )
    return dataset
