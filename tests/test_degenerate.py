"""Degenerate directions of real representations: detection, relative floors, and every path staying finite."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

import hf_knife
from hf_knife import KNIFEConfig
from hf_knife.estimators.base import scott_bandwidth
from hf_knife.estimators.degenerate import find_degenerate_directions, relative_floor
from hf_knife.penalties import build_penalty


def _features(n: int = 400, d: int = 12, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_detection_names_each_kind_of_degeneracy():
    x = _features()
    x[:, 3] = 7.0  # constant
    x[:, 5] = 2.0 + 1e-7 * x[:, 5]  # near-constant (spread 1e-7 of the others)
    x[:, 8] = 3.0 * x[:, 1] - 1.0  # duplicated up to an affine map
    found = find_degenerate_directions(x)
    assert found.constant == [3]
    assert found.near_constant == [5]
    assert found.duplicated == [(1, 8)]
    assert found.rank == found.live - 1 and found.rank_deficient
    message = found.describe("Z")
    assert "constant coordinate(s) (3)" in message and "(5;" in message and "(1, 8)" in message


def test_clean_data_and_large_offsets_are_not_degenerate():
    x = _features()
    assert not find_degenerate_directions(x)
    # float64 resolves a spread of 1e-6 on an offset of 1e6; float32 cannot (it is constant there)
    shifted = 1e6 + 1e-6 * x
    assert not find_degenerate_directions(shifted)
    assert find_degenerate_directions(shifted.float()).constant == list(range(x.shape[1]))


def test_rank_deficiency_from_a_low_rank_map():
    w = _features(500, 3)
    x = w @ torch.randn(3, 10, generator=torch.Generator().manual_seed(1), dtype=torch.float64)  # rank 3
    found = find_degenerate_directions(x)
    assert found.rank == 3 and found.live == 10


def test_floors_are_relative_to_the_data_scale():
    std = torch.tensor([0.0, 1e-9, 2.0, 4.0, 6.0, 8.0, 10.0])
    assert float(relative_floor(std)) == pytest.approx(0.01 * 4.0)  # (lower) median of the positive spreads
    assert float(relative_floor(torch.zeros(3))) == pytest.approx(0.01)
    for scale in (1e-6, 1.0, 1e6):
        x = scale * _features().float()
        x[:, 0] = 0.5 * scale  # constant coordinate
        bandwidth = scott_bandwidth(x, 16)
        # the constant coordinate's bandwidth is 1% of the typical one, whatever the scale
        assert float(bandwidth[0] / bandwidth[1:].median()) == pytest.approx(0.01, rel=0.2)


@pytest.mark.parametrize("penalty", ["entropy", "mutual_information", "information_bottleneck", "adversarial"])
@pytest.mark.parametrize("movement", [1e-5, 1e-2, 1.0])
def test_penalty_stays_finite_when_a_dead_coordinate_wakes_up(penalty, movement):
    """The issue-11 failure: constant coordinates at initialisation, then moving after one optimizer step."""
    torch.manual_seed(0)
    d, dead = 16, [3, 7, 11]
    z = 0.1 * torch.randn(256, d) + 5.0
    z[:, dead] = 0.25  # dead units: the same value for every input
    s = torch.randint(0, 2, (256,))
    config = KNIFEConfig(penalty=penalty, num_sensitive_classes=2, sensitive_column="s", num_components=8)
    module = build_penalty(config, d).train()
    with pytest.warns(UserWarning, match=r"3 constant coordinate\(s\) \(3, 7, 11\)"):
        module.init_from_samples(z, s)
    baseline = None
    for step in range(20):  # the dead coordinates start to move
        moved = z.clone()
        moved[:, dead] += movement * torch.randn(256, len(dead)) * min(1.0, (step + 1) / 5)
        moved.requires_grad_(True)
        features, extra = module.transform(moved) if penalty == "information_bottleneck" else (moved, {})
        out = module(features, s, **extra)
        out.loss.backward()
        assert torch.isfinite(out.loss)
        assert torch.isfinite(moved.grad).all()
        for name, value in out.metrics.items():
            assert torch.isfinite(value), (name, step)
        for p in module.parameters():
            assert p.grad is None or torch.isfinite(p.grad).all()
        nll = out.metrics.get("estimator_nll")
        if nll is not None:
            baseline = float(nll) if baseline is None else baseline
            # bounded: a wake-up costs at most a few nats per coordinate, never 1e11 as with absolute floors
            assert float(nll) < baseline + 50.0 * len(dead), (step, float(nll), baseline)
        module.zero_grad()
        module.end_step()


def test_estimate_entropy_refuses_constant_and_duplicated_coordinates_by_name():
    x = _features()
    x[:, 4] = 1.0
    with pytest.raises(ValueError, match=r"constant coordinate\(s\) \(4\).*-inf"):
        hf_knife.estimate_entropy(x, max_steps=5)
    x = _features()
    x[:, 6] = x[:, 2]
    with pytest.raises(ValueError, match=r"duplicated coordinates \(pairs \(2, 6\)\)"):
        hf_knife.estimate_entropy(x, max_steps=5)


def test_estimate_mutual_information_drops_coordinates_that_carry_nothing():
    """I(X; Y) is unchanged by constant or duplicated columns: the same estimate as without them, bit for bit."""
    x = _features(600, 4)
    y = x[:, :2] + 0.5 * _features(600, 2, seed=1)
    options = dict(max_steps=60, eval_every=20, num_components=2, progress=False)
    reference = hf_knife.estimate_mutual_information(x, y, **options)
    padded = torch.cat([x, torch.full((600, 1), 3.0, dtype=x.dtype), x[:, :1]], dim=1)  # constant + duplicate
    with pytest.warns(UserWarning, match=r"1 constant coordinate\(s\) \(4\).*estimating on 4 coordinates"):
        result = hf_knife.estimate_mutual_information(padded, y, **options)
    assert float(result) == float(reference)
    assert math.isfinite(result.stderr)


def test_estimate_mutual_information_on_rank_deficient_features():
    w = _features(600, 3)
    x = w @ torch.randn(3, 8, generator=torch.Generator().manual_seed(2), dtype=torch.float64)  # rank 3 in 8-d
    labels = (w[:, 0] > 0).long()
    with pytest.warns(UserWarning, match=r"rank 3 of 8"):
        result = hf_knife.estimate_mutual_information(x, labels, max_steps=60, eval_every=20, progress=False)
    assert math.isfinite(float(result)) and math.isfinite(result.stderr)


def test_duplicated_rows_warn_and_stay_finite():
    x = _features(300, 3).repeat(2, 1)  # every sentence twice
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = hf_knife.estimate_entropy(x, max_steps=200, eval_every=20, num_components=4, progress=False)
    assert any("duplicated rows" in str(w.message) for w in caught)
    assert math.isfinite(float(result)) and math.isfinite(result.stderr)
