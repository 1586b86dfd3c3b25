"""One process vs two (torchrun, CPU/gloo, half the per-device batch): the same parameters, in float64 to 1e-10."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).parent / "scripts" / "train_distributed.py"
IN_FLOAT64 = Path(__file__).parent / "scripts" / "in_float64.py"  # rounding far below the tolerance, see there


def _run(args: list[str], tmp_path: Path) -> None:
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": str(Path(__file__).parents[1]),
    }
    result = subprocess.run(args, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]


def _compare(a: dict, b: dict) -> None:
    for name, value in a.items():
        if value.is_floating_point():
            assert value.dtype == torch.float64, name  # the runs were float64 end to end
        torch.testing.assert_close(b[name], value, atol=1e-10, rtol=1e-8, msg=name)


@pytest.mark.parametrize("gather, budget, calibrate", [(0, 0, 0), (1, 0, 0), (0, 1, 0), (0, 1, 1)])
def test_two_processes_match_one(tmp_path, gather, budget, calibrate):
    """budget=1: the multiplier (all-reduced estimate, one update per step) is the same too; calibrate=1: the
    batch's temperature is fitted on both processes' rows."""
    torchrun = shutil.which("torchrun") or str(Path(sys.executable).parent / "torchrun")
    one, two = tmp_path / "one.pt", tmp_path / "two.pt"
    flags = [str(gather), str(budget), str(calibrate)]
    batch = 32 if calibrate else 8  # the likelihood-ratio test keeps T > 0 on batches of 32 here, not of 8
    _run([sys.executable, str(IN_FLOAT64), str(SCRIPT), str(one), str(batch), *flags], tmp_path)
    _run([torchrun, "--standalone", "--nproc_per_node", "2", str(IN_FLOAT64), str(SCRIPT), str(two), str(batch // 2),
          *flags], tmp_path)  # fmt: skip
    assert json.loads(Path(str(two) + ".json").read_text())["world_size"] == 2
    _compare(torch.load(one), torch.load(two))
    logs_one = json.loads(Path(str(one) + ".json").read_text())["logs"]
    logs_two = json.loads(Path(str(two) + ".json").read_text())["logs"]
    assert len(logs_one) == len(logs_two) == 3
    for a, b in zip(logs_one, logs_two):  # knife/* scalars are averaged over processes
        assert b["knife/estimator_nll"] == pytest.approx(a["knife/estimator_nll"], rel=1e-3, abs=1e-3)
    if calibrate:
        temperatures = [[e["knife/temperature"] for e in logs] for logs in (logs_one, logs_two)]
        assert max(temperatures[0]) > 0 and temperatures[1] == pytest.approx(temperatures[0], rel=1e-4)
    if budget:
        one_state, two_state = torch.load(one), torch.load(two)
        assert int(one_state["knife.budget.count"]) == int(two_state["knife.budget.count"]) == 3
        multipliers = [float(s["knife.budget.multiplier"]) for s in (one_state, two_state)]
        assert multipliers[1] == pytest.approx(multipliers[0], rel=1e-5) and multipliers[0] != 1.0
        for a, b in zip(logs_one, logs_two):
            assert b["knife/multiplier"] == pytest.approx(a["knife/multiplier"], rel=1e-5)
