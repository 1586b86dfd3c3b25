"""Shared pieces of the ``evaluate`` modules: input features, column conversion, texts (no metric formula here).

Not an evaluate module itself; the module scripts import it with an absolute import (``evaluate.load`` copies only
the script into its module cache, so relative imports would not resolve there).
"""

from __future__ import annotations

import itertools
from typing import Any

import datasets
import evaluate
import numpy as np

__all__ = [
    "CITATION",
    "LABEL_TYPES",
    "as_array",
    "group_inputs_description",
    "group_metric_info",
    "label_features",
    "representation_features",
]

#: Value types accepted for class labels and group ids; strings first, so that ``"3"`` stays a string.
LABEL_TYPES = ("string", "int64")

CITATION = """\
@inproceedings{pichler2022knife,
  title     = {{KNIFE}: Kernelized-Neural Differential Entropy Estimation},
  author    = {Pichler, Georg and Colombo, Pierre and Boudiaf, Malik and Koliander, G{\"u}nther and Piantanida, Pablo},
  booktitle = {International Conference on Machine Learning},
  year      = {2022}
}
@inproceedings{de-arteaga2019bias,
  title     = {Bias in Bios: A Case Study of Semantic Representation Bias in a High-Stakes Setting},
  author    = {De-Arteaga, Maria and others},
  booktitle = {Conference on Fairness, Accountability, and Transparency},
  year      = {2019}
}
"""


def label_features(*names: str) -> list[datasets.Features]:
    """One ``datasets.Features`` per combination of int / string columns ``names`` (evaluate picks the first match).

    evaluate infers the option from the first example: a string schema rejects non-strings, an int schema rejects
    strings that are not numbers, so each column keeps its type.
    """
    return [
        datasets.Features({name: datasets.Value(kind) for name, kind in zip(names, kinds)})
        for kinds in itertools.product(LABEL_TYPES, repeat=len(names))
    ]


def representation_features() -> list[datasets.Features]:
    """Features of the leakage measurement: ``representations`` ``[N, d]`` float64 rows, ``sensitive`` ``[N]``."""
    return [
        datasets.Features(
            {
                "representations": datasets.Sequence(datasets.Value("float64")),
                "sensitive": datasets.Value(kind),
            }
        )
        for kind in LABEL_TYPES
    ]


def as_array(column: Any) -> np.ndarray:
    """An evaluate input column (a list, or a datasets ``Column``) as a numpy array: ``[N]`` or ``[N, d]``."""
    if hasattr(column, "tolist") and not isinstance(column, np.ndarray):
        column = column.tolist()
    return np.asarray(list(column))


def group_inputs_description(
    name: str,
    returns: str,
    example_output: str,
    *,
    references: str = "true classes [N]",
    labels: str = "the full class list",
    extra_args: str = "",
) -> str:
    """``inputs_description`` of a group-fairness module ``name``: the shared inputs (``predictions``,
    ``references``, ``sensitive``, ``labels``), then ``extra_args``, ``returns`` and a worked example."""
    return f"""\
Args:
    predictions (list of int or str): predicted classes [N].
    references (list of int or str): {references}.
    sensitive (list of int or str): group of each example [N] (two or more groups).
    labels (list, optional): {labels}.
{extra_args}Returns:
{returns}
Examples:
    >>> metric = evaluate.load(hf_knife.metrics.evaluate_module_path("{name}"))
    >>> metric.compute(predictions=[0, 0, 1, 0, 0, 0, 1, 1], references=[0, 0, 1, 1, 0, 0, 1, 1],
    ...                sensitive=["a", "a", "a", "a", "b", "b", "b", "b"])
    {example_output}
"""


def group_metric_info(description: str, inputs_description: str, reference_url: str) -> evaluate.MetricInfo:
    """``MetricInfo`` of a group-fairness module: inputs ``predictions``, ``references``, ``sensitive`` ``[N]``
    (int or string columns)."""
    return evaluate.MetricInfo(
        description=description,
        citation=CITATION,
        inputs_description=inputs_description,
        features=label_features("predictions", "references", "sensitive"),
        reference_urls=[reference_url],
    )
