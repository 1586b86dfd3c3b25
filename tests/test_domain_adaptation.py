"""recipes/domain_adaptation.py: a tiny end-to-end run, save/reload, one vs two processes, bad input, --help."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

os.environ["HF_HUB_OFFLINE"] = "1"
ROOT = Path(__file__).parents[1]
RECIPE = ROOT / "recipes" / "domain_adaptation.py"
IN_FLOAT64 = ROOT / "tests" / "scripts" / "in_float64.py"
_spec = importlib.util.spec_from_file_location("domain_adaptation", RECIPE)
da = importlib.util.module_from_spec(_spec)
sys.modules["domain_adaptation"] = da
_spec.loader.exec_module(da)

#: 48 source + 48 target training images of 8x8, batches of 32: 3 steps per epoch, 2 epochs
TINY = ["--seeds", "0", "--image_size", "8", "--max_train_samples", "48", "--max_eval_samples", "40",
        "--num_train_epochs", "2", "--per_device_train_batch_size", "32", "--disable_tqdm", "true",
        "--knife_num_components", "4", "--knife_init_num_samples", "32", "--use_cpu", "true"]  # fmt: skip


def test_end_to_end_all_methods(tmp_path):
    result = da.main(["--output_dir", str(tmp_path), *TINY])
    assert {row["method"] for row in result["rows"]} == set(da.METHODS)
    for row in result["rows"]:
        for key in ("target_test_accuracy", "target_val_accuracy", "source_test_accuracy"):
            assert 0.0 <= row[key] <= 1.0, (row["method"], key)
        assert row["best_epoch"] in (1.0, 2.0)
    for name in ("results.json", "results.csv", "results.png"):
        assert (tmp_path / name).stat().st_size > 0
    saved = json.loads((tmp_path / "results.json").read_text())
    knife = saved["summary"]["knife"]
    assert math.isfinite(knife["target_test_accuracy"]["mean"]) and "minus_source_only" in knife
    assert saved["rows"][0]["knife_config"] is None  # source_only
    for method in da.METHODS:
        folder = tmp_path / "models" / f"{method}-seed0"
        assert (folder / "config.json").is_file()
        assert (folder / "knife_config.json").is_file() == (method != "source_only")


@pytest.mark.parametrize("method", ["knife", "club"])
def test_save_and_reload(tmp_path, method):
    script, args = da.HfArgumentParser((da.DomainAdaptationArguments, da.DomainAdaptationTrainingArguments)) \
        .parse_args_into_dataclasses(["--output_dir", str(tmp_path), "--image_size", "8"])  # fmt: skip
    torch.manual_seed(0)
    model = da.build_model(method, script, args, num_labels=10, total_steps=10)
    x, domain = torch.rand(16, 3, 8, 8) * 2 - 1, torch.arange(16) % 2
    model.train()
    model(x, labels=torch.arange(16) % 10, sensitive=domain).loss.backward()  # initialises the estimator at data
    model.eval()
    model.save_pretrained(tmp_path / "model")
    assert json.loads((tmp_path / "model" / "knife_config.json").read_text())["penalty"] == (
        "mutual_information" if method == "knife" else "club"
    )
    again = da.DomainAdaptationModel.from_pretrained(tmp_path / "model").eval()
    assert bool(again.knife.initialized)
    with torch.no_grad():
        torch.testing.assert_close(again(x).logits, model(x).logits, rtol=0, atol=0)
        torch.testing.assert_close(again.penalty_inputs(x, domain)[1], model.penalty_inputs(x, domain)[1])
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(again.state_dict()[name], tensor, rtol=0, atol=0, msg=name)


def _launch(command: list[str], cwd: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    result = subprocess.run(command, env=env, cwd=cwd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]


def test_two_processes_match_one(tmp_path):
    """ConvNeXt (LayerNorm) and per-example losses: the same global batch gives the same parameters (in float64,
    see tests/scripts/in_float64.py)."""
    from safetensors.torch import load_file

    torchrun = shutil.which("torchrun") or str(Path(sys.executable).parent / "torchrun")
    common = [*TINY, "--methods", "knife", "--seeds", "0", "--num_train_epochs", "1"]
    _launch([sys.executable, str(IN_FLOAT64), str(RECIPE), "--output_dir", str(tmp_path / "one"), *common], tmp_path)
    _launch([torchrun, "--standalone", "--nproc_per_node", "2", str(IN_FLOAT64), str(RECIPE), "--output_dir",
             str(tmp_path / "two"), *common, "--per_device_train_batch_size", "16"], tmp_path)  # fmt: skip
    one, two = (json.loads((tmp_path / n / "results.json").read_text()) for n in ("one", "two"))
    assert two["settings"]["world_size"] == 2
    weights = [load_file(tmp_path / n / "models" / "knife-seed0" / "model.safetensors") for n in ("one", "two")]
    assert weights[0]["classifier.weight"].dtype == torch.float64  # the run was float64 end to end
    for name, tensor in weights[0].items():  # measured: 5e-15 at most (float32 runs: one element off by 8e-5)
        torch.testing.assert_close(weights[1][name], tensor, atol=1e-10, rtol=1e-8, msg=name)
    assert two["rows"][0]["target_test_accuracy"] == pytest.approx(one["rows"][0]["target_test_accuracy"])


def _npz(path: Path, images: np.ndarray, labels: np.ndarray | None) -> str:
    np.savez(path, images=images, **({} if labels is None else {"labels": labels}))
    return str(path)


def test_bad_input_is_refused_before_training(tmp_path):
    rng = np.random.default_rng(0)
    labels = np.arange(60) % 10
    source = _npz(tmp_path / "s.npz", rng.integers(0, 255, (60, 8, 8, 3), dtype=np.uint8), labels)
    bigger = _npz(tmp_path / "big.npz", rng.integers(0, 255, (60, 10, 10, 3), dtype=np.uint8), labels)
    gray = _npz(tmp_path / "gray.npz", rng.integers(0, 255, (60, 8, 8), dtype=np.uint8), labels)
    unlabelled = _npz(tmp_path / "u.npz", rng.integers(0, 255, (60, 8, 8, 3), dtype=np.uint8), None)
    base = ["--output_dir", str(tmp_path / "out"), "--source", source, "--val_size", "10"]
    with pytest.raises(ValueError, match=r"same \[channels, height, width\].*\(3, 10, 10\)"):
        da.main([*base, "--target", bigger])
    with pytest.raises(ValueError, match=r"same \[channels, height, width\].*\(1, 8, 8\)"):
        da.main([*base, "--target", gray])
    with pytest.raises(ValueError, match="target_val split has no labels"):
        da.main([*base, "--target", unlabelled])
    with pytest.raises(ValueError, match="unknown method.*'dan'.*source_only, dann, knife"):
        da.main(["--output_dir", str(tmp_path / "out"), "--methods", "source_only,dan"])
    with pytest.raises(ValueError, match="unknown target 'mnist-m'"):
        da.main(["--output_dir", str(tmp_path / "out"), "--source", source, "--target", "mnist-m"])
    with pytest.raises(RuntimeError, match="could not load 'usps'.*network access"):
        da.main(["--output_dir", str(tmp_path / "out"), "--source", source, "--target", "usps"])
    assert not (tmp_path / "out").exists()  # nothing trained, nothing written


def test_help(capsys):
    with pytest.raises(SystemExit) as exit_info:
        da.main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "--methods" in out and "--weight" in out and "--knife_num_components" in out and "--push_to_hub" in out
