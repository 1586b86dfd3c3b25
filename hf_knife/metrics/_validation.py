"""Array conversion and input checks shared by the metric modules (numpy only; torch tensors are duck-typed)."""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["to_numpy", "check_1d", "check_same_length", "check_representations"]


def to_numpy(x: Any, name: str) -> np.ndarray:
    """Turn a list, numpy array or torch tensor (any device / dtype, bf16 included) into a numpy array."""
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # torch.Tensor without importing torch
        x = x.detach().cpu()
        if getattr(x, "is_floating_point", lambda: False)():
            x = x.float()
        x = x.numpy()
    try:
        array = np.asarray(x)
    except Exception as error:  # pragma: no cover - exotic inputs
        raise TypeError(
            f"{name} must be array-like (list, numpy array or torch tensor), got {type(x).__name__}"
        ) from error
    if array.dtype == object:
        raise TypeError(f"{name} must hold numbers or strings, got an object array (ragged or mixed types?)")
    return array


def check_1d(x: Any, name: str, min_len: int = 1) -> np.ndarray:
    """Return ``x`` as a 1-D array ``[N]`` (a ``[N, 1]`` column is flattened) with no NaN and at least ``min_len`` items."""
    array = to_numpy(x, name)
    if array.ndim == 2 and array.shape[1] == 1:
        array = array[:, 0]
    if array.ndim != 1:
        raise ValueError(
            f"{name} must have shape [N] (one value per example), got shape {tuple(array.shape)}"
        )
    if array.shape[0] < min_len:
        raise ValueError(f"{name} is empty; expected at least {min_len} example(s)")
    if array.dtype.kind == "f":
        bad = ~np.isfinite(array)
        if bad.any():
            raise ValueError(
                f"{name} contains {int(bad.sum())} NaN or Inf values (first at index {int(np.argmax(bad))}); "
                "expected class or group ids"
            )
        if np.any(array != np.round(array)):
            raise ValueError(
                f"{name} holds non-integer floats; expected class or group ids (ints or strings)"
            )
        array = array.astype(np.int64)
    return array


def check_same_length(**arrays: np.ndarray) -> int:
    """Raise a ValueError listing all lengths if the arrays do not share the same first dimension."""
    lengths = {name: int(a.shape[0]) for name, a in arrays.items()}
    if len(set(lengths.values())) > 1:
        listing = ", ".join(f"{name}={n}" for name, n in lengths.items())
        raise ValueError(f"length mismatch: {listing}; expected one entry per example in each")
    return next(iter(lengths.values()))


def check_representations(x: Any, name: str, dim: int | None = None) -> np.ndarray:
    """Return ``x`` as a finite float array ``[N, d]``; ``dim`` fixes ``d``."""
    array = to_numpy(x, name)
    if array.ndim != 2:
        hint = " (pool the token states to one vector per example first)" if array.ndim == 3 else ""
        raise ValueError(
            f"{name} must have shape [N, d] (one row per example), got shape {tuple(array.shape)}{hint}"
        )
    if array.shape[0] == 0:
        raise ValueError(f"{name} is empty; expected at least one example")
    if array.dtype.kind not in "fiub":
        raise ValueError(f"{name} must be numeric, got dtype {array.dtype}")
    array = array.astype(np.float64, copy=False)
    if dim is not None and array.shape[1] != dim:
        raise ValueError(
            f"{name} has {array.shape[1]} features per example, expected {dim} (as in the train split)"
        )
    bad = ~np.isfinite(array)
    if bad.any():
        row, col = np.argwhere(bad)[0]
        raise ValueError(
            f"{name} contains {int(bad.sum())} NaN or Inf values (first at row {row}, column {col}); "
            "expected finite representations"
        )
    return array
