"""Input checks shared by the estimators and the one-call API: clear errors, never a silent NaN."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = ["as_tensor", "check_choice", "check_samples", "check_labels", "check_full_covariance_fits"]


def check_choice(value: Any, name: str, valid: Iterable[Any]) -> Any:
    """Return ``value`` if it is one of ``valid``; otherwise raise a ValueError listing the valid values."""
    valid = tuple(valid)
    if value not in valid:
        raise ValueError(f"unknown {name} {value!r}; expected one of {', '.join(repr(v) for v in valid)}")
    return value


def as_tensor(x: Any, name: str, dtype: torch.dtype | None = None) -> Tensor:
    """Turn numpy arrays, lists and tensors into a tensor (no copy when possible)."""
    if isinstance(x, Tensor):
        return x if dtype is None else x.to(dtype)
    try:
        array = np.asarray(x)
    except Exception as error:  # pragma: no cover - exotic inputs
        raise TypeError(f"{name} must be a numpy array or torch tensor, got {type(x).__name__}") from error
    if array.dtype == object:
        raise TypeError(f"{name} must be numeric, got an object array (ragged or mixed types?)")
    tensor = torch.from_numpy(np.ascontiguousarray(array))
    return tensor if dtype is None else tensor.to(dtype)


def check_samples(x: Tensor, name: str = "x", dim: int | None = None, min_samples: int = 1) -> Tensor:
    """Check a ``[N, d]`` float sample matrix: rank, feature dim, sample count, finiteness."""
    if not torch.is_floating_point(x):
        raise ValueError(f"{name} must hold floating-point values, got dtype {x.dtype}")
    if x.dim() != 2:
        raise ValueError(f"{name} must have shape [N, d] (one row per sample), got shape {tuple(x.shape)}")
    if dim is not None and x.shape[1] != dim:
        raise ValueError(f"{name} has {x.shape[1]} features per sample, expected {dim} (shape [N, {dim}])")
    if x.shape[0] < min_samples:
        raise ValueError(f"{name} has {x.shape[0]} samples; at least {min_samples} are needed")
    finite = torch.isfinite(x)
    if not bool(finite.all()):
        bad = (~finite).nonzero()[0].tolist()
        count = int((~finite).sum())
        raise ValueError(
            f"{name} contains {count} NaN or Inf values (first at row {bad[0]}, column {bad[1]})"
        )
    return x


def check_labels(
    labels: Tensor, name: str = "labels", num_classes: int | None = None, length: int | None = None
) -> Tensor:
    """Check integer class labels ``[N]`` in ``[0, num_classes)``; returns them as int64."""
    if labels.dim() == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]  # [N]
    if labels.dim() != 1:
        raise ValueError(
            f"{name} must have shape [N] (one class id per sample), got shape {tuple(labels.shape)}"
        )
    if length is not None and labels.shape[0] != length:
        raise ValueError(f"{name} has {labels.shape[0]} entries but there are {length} samples")
    if torch.is_floating_point(labels):
        if not bool(torch.isfinite(labels).all()):
            raise ValueError(f"{name} contains NaN or Inf; expected integer class ids")
        if not bool((labels == labels.round()).all()):
            raise ValueError(
                f"{name} must be integer class ids, got non-integer values such as {labels[labels != labels.round()][0].item()}"
            )
    elif labels.dtype == torch.bool or labels.is_complex():
        raise ValueError(f"{name} must be integer class ids, got dtype {labels.dtype}")
    labels = labels.long()
    if labels.numel() and int(labels.min()) < 0:
        raise ValueError(f"{name} must be non-negative class ids, got {int(labels.min())}")
    if num_classes is not None and labels.numel() and int(labels.max()) >= num_classes:
        raise ValueError(
            f"{name} contains class id {int(labels.max())}, expected ids in [0, {num_classes - 1}]"
        )
    return labels


def check_full_covariance_fits(
    dim: int, num_components: int, device: torch.device | str | None = None
) -> None:
    """Refuse a ``full`` covariance whose parameters (and their gradient and Adam state) cannot fit in memory."""
    needed = 4 * 4 * num_components * dim * dim  # fp32 parameter, gradient, two Adam moments
    device = torch.device(device) if device is not None else torch.device("cpu")
    if device.type == "cuda" and torch.cuda.is_available():
        available = torch.cuda.mem_get_info(device)[0]
    else:
        try:
            import os

            available = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):  # pragma: no cover - non-POSIX
            return
    if needed > 0.5 * available:
        raise ValueError(
            f"covariance='full' with dim={dim} and num_components={num_components} needs about "
            f"{needed / 2**30:.1f} GiB for its [K, d, d] factors (with gradients and optimizer state), more than "
            f"half of the {available / 2**30:.1f} GiB of memory on {device}; use covariance='low_rank' or "
            f"'diagonal', or fewer components"
        )
