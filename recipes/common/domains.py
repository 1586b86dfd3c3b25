"""The data of ``recipes/domain_adaptation.py``: scikit-learn's digits and their MNIST-M-style textured copies
(offline), Hub digit datasets, ``.npz`` files, the checks before training and the image dataset (see the recipe's
docstring for the construction)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .da_model import IGNORE_INDEX

#: name -> (datasets id, config, image column, label column, train split, test split)
HUB_DATASETS = {
    "mnist": ("ylecun/mnist", None, "image", "label", "train", "test"),
    "usps": ("flwrlabs/usps", None, "image", "label", "train", "test"),
    "mnist_m": ("Mike0307/MNIST-M", None, "image", "label", "train", "test"),
    "svhn": ("ufldl-stanford/svhn", "cropped_digits", "image", "label", "train", "test"),
}
Split = tuple[np.ndarray, np.ndarray | None]  # images [N, C, H, W] float32 in [0, 1], labels [N] int64


def _resize(images: np.ndarray, size: int) -> np.ndarray:
    """``[N, C, h, w] -> [N, C, size, size]`` (bilinear), clipped to [0, 1]."""
    x = F.interpolate(torch.from_numpy(images).float(), size=(size, size), mode="bilinear", align_corners=False)
    return x.clamp(0, 1).numpy()


def textured(digits: np.ndarray, contrast: float, rng: np.random.Generator) -> np.ndarray:
    """MNIST-M-style target: ``|T - x|`` per channel, T a random smooth colour texture; ``[N, 1|3, S, S]``."""
    n, size = digits.shape[0], digits.shape[-1]
    low = torch.from_numpy(rng.random((n, 3, 4, 4), dtype=np.float32))  # [N, 3, 4, 4] colour field
    texture = F.interpolate(low, size=(size, size), mode="bicubic", align_corners=False).numpy()  # [N, 3, S, S]
    texture = np.clip(texture + 0.15 * rng.standard_normal(texture.shape, dtype=np.float32), 0, 1) * contrast
    return np.abs(texture - digits).astype(np.float32)


def digits_splits(image_size: int, contrast: float, seed: int, copies: int = 3) -> dict[str, Split]:
    """The offline pair (module docstring): source = white digits on black, target = digits on colour textures."""
    from sklearn.datasets import load_digits

    data = load_digits()
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(data.target))
    images = _resize((data.images[order] / 16.0)[:, None].astype(np.float32), image_size)  # [N, 1, S, S]
    labels = data.target[order].astype(np.int64)
    test, val, source, target = np.split(np.arange(len(labels)), [400, 600, 1200])
    gray = np.repeat(images, 3, axis=1)  # [N, 3, S, S]
    return {
        "source_train": (gray[source], labels[source]),
        "target_train": (textured(images[target], contrast, rng), None),
        "target_val": (textured(np.repeat(images[val], copies, 0), contrast, rng), np.repeat(labels[val], copies)),
        "target_test": (textured(np.repeat(images[test], copies, 0), contrast, rng), np.repeat(labels[test], copies)),
        "source_test": (gray[test], labels[test]),
    }


def load_hub(name: str, image_size: int, split: str) -> Split:
    """One split of a Hub digits dataset, every image resized to ``image_size`` RGB."""
    import datasets

    repo, config, image_column, label_column, train, test = HUB_DATASETS[name]
    try:
        data = datasets.load_dataset(repo, config, split=train if split == "train" else test)
    except Exception as error:  # offline, or the id moved
        raise RuntimeError(
            f"could not load {name!r} ({repo}) from the Hub: {type(error).__name__}: {error}. These datasets need "
            "network access (unset HF_HUB_OFFLINE); the offline default is --source digits --target digits_m"
        ) from error
    images = [np.asarray(im.convert("RGB").resize((image_size, image_size))) for im in data[image_column]]
    return (np.stack(images).transpose(0, 3, 1, 2) / 255.0).astype(np.float32), np.asarray(data[label_column])


def load_npz(path: str) -> Split:
    with np.load(path) as f:
        images = f["images"].astype(np.float32)
        labels = f["labels"].astype(np.int64) if "labels" in f else None
    images = images / 255.0 if images.max() > 1.0 else images
    return (images[:, None] if images.ndim == 3 else images.transpose(0, 3, 1, 2)), labels


def _take(split: Split, index: np.ndarray) -> Split:
    return split[0][index], None if split[1] is None else split[1][index]


def load_splits(script: Any) -> dict[str, Split]:
    """source_train, target_train (labels dropped), target_val, target_test and source_test."""
    if script.source == "digits" and script.target == "digits_m":
        return digits_splits(script.image_size, script.texture_contrast, script.split_seed, script.eval_textures)
    if script.source == "digits" or script.target == "digits_m":
        raise ValueError("the offline pair is --source digits --target digits_m (both); got "
                         f"--source {script.source} --target {script.target}")  # fmt: skip
    rng = np.random.default_rng(script.split_seed)
    domains = {}
    for role, name in (("source", script.source), ("target", script.target)):
        if name.endswith(".npz"):
            data = load_npz(name)
            train, test = np.split(rng.permutation(len(data[0])), [int(0.8 * len(data[0]))])
            domains[role] = (_take(data, train), _take(data, test))
        elif name in HUB_DATASETS:
            domains[role] = (load_hub(name, script.image_size, "train"), load_hub(name, script.image_size, "test"))
        else:
            raise ValueError(f"unknown {role} {name!r}: expected a .npz file, one of {', '.join(HUB_DATASETS)}, or "
                             "the offline pair --source digits --target digits_m")  # fmt: skip
    (source_train, source_test), (target_train, target_test) = domains["source"], domains["target"]
    order = rng.permutation(len(target_train[0]))
    val, train = order[: script.val_size], order[script.val_size :]
    return {
        "source_train": source_train,
        "target_train": (target_train[0][train], None),
        "target_val": _take(target_train, val),
        "target_test": target_test,
        "source_test": source_test,
    }


def check_splits(splits: dict[str, Split]) -> int:
    """Refuse, before training, data the recipe cannot use; returns the number of classes."""
    shapes = {name: tuple(x.shape[1:]) for name, (x, _) in splits.items()}
    if len(set(shapes.values())) > 1:
        raise ValueError(
            "source and target images must have the same [channels, height, width]; got "
            + ", ".join(f"{k} {v}" for k, v in shapes.items())
            + " (resize them, e.g. --image_size with a Hub dataset, and convert gray to RGB or the reverse)"
        )
    for name, (x, y) in splits.items():
        if len(x) == 0:
            raise ValueError(f"the {name} split is empty")
        if name != "target_train" and (y is None or (y < 0).any()):
            raise ValueError(
                f"the {name} split has no labels (or negative ones): source training needs labels, and the target "
                "validation and test splits need labels for evaluation (target training labels are never used)"
            )
    return int(max(y.max() for _, y in splits.values() if y is not None)) + 1


class ImageDataset(torch.utils.data.Dataset):
    """Rows of ``pixel_values [C, H, W]`` in [-1, 1], ``labels`` (-100: unlabelled) and ``domain`` (0 source, 1
    target); ``dataset[a:b]`` gives a batch."""

    def __init__(self, *parts: tuple[Split, int]) -> None:
        self.pixel_values = torch.from_numpy(np.concatenate([x for (x, _), _ in parts]) * 2 - 1).float()
        labels = [y if y is not None else np.full(len(x), IGNORE_INDEX) for (x, y), _ in parts]
        self.labels = torch.from_numpy(np.concatenate(labels)).long()
        self.domain = torch.cat([torch.full((len(x),), d) for (x, _), d in parts]).long()

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int | slice) -> dict[str, Tensor]:
        return {"pixel_values": self.pixel_values[i], "labels": self.labels[i], "domain": self.domain[i]}
