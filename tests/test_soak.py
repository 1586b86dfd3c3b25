"""Issue 11 soak (slow): 1,000 steps per penalty at weight 10, fp32 and bf16, with and without a budget, on a
tiny BERT with dead units, huge offsets and duplicated rows (`benchmarks/soak.py`; the README table is its output).
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

_spec = importlib.util.spec_from_file_location("soak", Path(__file__).parents[1] / "benchmarks" / "soak.py")
soak = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(soak)


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
@pytest.mark.parametrize("penalty", soak.PENALTIES)
@pytest.mark.parametrize("budget", [False, True])
def test_soak_1000_steps(penalty, dtype, budget, tmp_path):
    if budget and penalty not in soak.BUDGET_TARGETS:
        pytest.skip("the soak's adversarial run takes no budget")
    row = soak.soak(penalty, dtype, steps=1000, weight=10.0, budget=budget, output_dir=tmp_path)
    assert row["error"] is None
    assert row["survived"] == 1000 and row["parameters_finite"]
    if row["nll_max"] is not None:
        assert math.isfinite(row["nll_max"]) and row["nll_max"] < 10 * 32 * 10  # bounded: 32 coordinates
