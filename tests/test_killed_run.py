"""A KNIFETrainer run killed by SIGKILL resumes bit-exactly, also when killed while writing a checkpoint.

tests/scripts/killable_run.py trains a tiny BERT with the mutual_information penalty (discrete S, inner_steps=2,
dropout 0.1, 10 steps over 2.5 epochs, a checkpoint every 3 steps) and SIGKILLs itself at a chosen point; then a new
process resumes with ``train(resume_from_checkpoint=True)``. Oracle: an uninterrupted run of the same script. The
final state dicts (estimator, its inner Adam state and running statistics included) must be ``torch.equal``, and
the logged loss, grad norm, learning rate and ``knife/*`` values equal at every step.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

SCRIPT = Path(__file__).parent / "scripts" / "killable_run.py"
MAX_STEPS = 10
COMPLETE = [
    "config.json", "knife_config.json", "model.safetensors", "optimizer.pt", "rng_state.pth", "scheduler.pt",
    "trainer_state.json", "training_args.bin",
]  # fmt: skip
# scenario -> the runs in its output folder, in order: (mode, step)
SCENARIOS: dict[str, list[tuple[str, int | None]]] = {
    "full": [("full", None)],
    "killed": [("kill_after", 8), ("resume", None)],  # killed at step 8: resumes from checkpoint-6
    "killed_in_save": [("kill_in_save", 6), ("resume_stock", None), ("resume", None)],  # checkpoint-6 torn
    "killed_in_state": [("kill_in_state", 9), ("resume_stock", None), ("resume", None)],  # checkpoint-9 torn
}


def _launch(runs: list[str], cwd: Path) -> None:
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "PYTHONPATH": str(Path(__file__).parents[1]),
    }
    result = subprocess.run(
        [sys.executable, str(SCRIPT), *runs], env=env, cwd=cwd, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-4000:]


def _run_spec(folder: Path, mode: str, step: int | None) -> str:
    return f"{folder},{mode}" + (f",{step}" if step is not None else "")


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """All scenarios, run by one launcher process that forks one process per run (one import for all)."""
    root = tmp_path_factory.mktemp("killed_runs")
    _launch([_run_spec(root / name, *run) for name, scenario in SCENARIOS.items() for run in scenario], root)
    return root


def _status(folder: Path, mode: str) -> dict[str, Any]:
    return json.loads((folder / f"{mode}.status.json").read_text())


def _result(folder: Path, mode: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    return torch.load(folder / f"{mode}.pt"), json.loads((folder / f"{mode}.json").read_text())


def _train_logs(result: dict[str, Any]) -> dict[int, dict[str, Any]]:
    return {entry["step"]: entry for entry in result["log_history"] if "loss" in entry}


def _assert_same_as_full(root: Path, folder: Path) -> None:
    """Bit-exact final state dict and identical per-step logs, against the uninterrupted run."""
    full_state, full = _result(root / "full", "full")
    state, resumed = _result(folder, "resume")
    assert set(state) == set(full_state)
    assert any(k.startswith("knife.estimator.") for k in state)  # the estimator ...
    assert any(k.startswith("knife.fitter.exp_avg") for k in state)  # ... its inner Adam state
    assert "knife.standardizer.mean" in state and "knife.initialized" in state  # ... and running statistics
    different = [name for name, value in full_state.items() if not torch.equal(value, state[name])]
    assert not different, f"resumed parameters differ from the uninterrupted run: {different}"
    full_logs, resumed_logs = _train_logs(full), _train_logs(resumed)
    assert sorted(full_logs) == sorted(resumed_logs) == list(range(1, MAX_STEPS + 1))
    for step, entry in full_logs.items():
        assert any(key.startswith("knife/") for key in entry)
        assert resumed_logs[step] == entry, f"step {step}"


def test_killed_after_a_checkpoint_resumes_bit_exactly(runs: Path) -> None:
    folder = runs / "killed"
    killed = _status(folder, "kill_after")
    assert killed["signal"] == 9, killed["error"]
    assert killed["checkpoints"] == {"checkpoint-3": COMPLETE, "checkpoint-6": COMPLETE}
    status, (_, resumed) = _status(folder, "resume"), _result(folder, "resume")
    assert status["exitcode"] == 0, status["error"]
    assert resumed["resumed_from"] == str(folder / "checkpoint-6")
    assert not resumed["warnings"]
    _assert_same_as_full(runs, folder)


@pytest.mark.parametrize(
    "scenario, torn, previous, torn_files, stock_error",
    [
        # killed after the model weights, before optimizer / scheduler / RNG state / trainer_state.json
        ("killed_in_save", "checkpoint-6", "checkpoint-3",
         ["config.json", "knife_config.json", "model.safetensors", "training_args.bin"], "FileNotFoundError"),
        # killed while writing trainer_state.json, the last file: every file present, the JSON cut in half
        ("killed_in_state", "checkpoint-9", "checkpoint-6", COMPLETE, "JSONDecodeError"),
    ],
)  # fmt: skip
def test_killed_while_writing_a_checkpoint_resumes_from_the_previous_one(
    runs: Path, scenario: str, torn: str, previous: str, torn_files: list[str], stock_error: str
) -> None:
    folder = runs / scenario
    killed = _status(folder, SCENARIOS[scenario][0][0])
    assert killed["signal"] == 9, killed["error"]
    assert killed["checkpoints"][previous] == COMPLETE and killed["checkpoints"][torn] == torn_files
    # transformers alone picks the torn folder and crashes: this is what KNIFETrainer fixes
    assert killed["get_last_checkpoint"] == torn
    stock = _status(folder, "resume_stock")
    assert stock["exitcode"] == 1 and stock_error in stock["error"]
    status, (_, resumed) = _status(folder, "resume"), _result(folder, "resume")
    assert status["exitcode"] == 0, status["error"]
    assert resumed["resumed_from"] == str(folder / previous)
    assert len(resumed["warnings"]) == 1 and str(folder / torn) in resumed["warnings"][0]
    _assert_same_as_full(runs, folder)


@pytest.mark.slow
def test_killed_in_save_with_fresh_interpreters(runs: Path, tmp_path: Path) -> None:
    """As above, but the killed and the resumed runs each in a new interpreter (no fork)."""
    folder = tmp_path / "fresh"
    _launch([_run_spec(folder, "kill_in_save", 6)], tmp_path)
    assert _status(folder, "kill_in_save")["signal"] == 9
    _launch([_run_spec(folder, "resume", None)], tmp_path)
    assert _result(folder, "resume")[1]["resumed_from"] == str(folder / "checkpoint-3")
    _assert_same_as_full(runs, folder)


def _write_checkpoint(folder: Path, files: list[str], state: str = '{"global_step": 1}') -> None:
    folder.mkdir(parents=True)
    for name in files:
        (folder / name).write_text(state if name == "trainer_state.json" else "x")


def test_last_complete_checkpoint_skips_torn_folders(tmp_path: Path) -> None:
    from hf_knife.checkpoints import checkpoint_problems, last_complete_checkpoint

    _write_checkpoint(tmp_path / "checkpoint-2", COMPLETE)
    _write_checkpoint(tmp_path / "checkpoint-4", COMPLETE, state='{"global_step": 4, "log_hi')  # torn JSON
    _write_checkpoint(tmp_path / "checkpoint-10", ["model.safetensors", "trainer_state.json"])  # 10 > 4 > 2
    _write_checkpoint(tmp_path / "checkpoint-12", ["optimizer.pt", "scheduler.pt", "rng_state.pth"])
    (tmp_path / "checkpoint-99.tmp").mkdir()  # not a checkpoint name
    path, skipped = last_complete_checkpoint(str(tmp_path))
    assert path == str(tmp_path / "checkpoint-2")
    assert list(skipped) == [str(tmp_path / f"checkpoint-{n}") for n in (12, 10, 4)]
    assert skipped[str(tmp_path / "checkpoint-4")] == ["trainer_state.json is not valid JSON (truncated?)"]
    assert skipped[str(tmp_path / "checkpoint-10")] == [
        "no optimizer.pt",
        "no scheduler.pt",
        "no rng_state.pth",
    ]
    assert checkpoint_problems(str(tmp_path / "checkpoint-12"))[:2] == [
        "no trainer_state.json",
        "no model weights (model.safetensors or pytorch_model.bin)",
    ]
    # save_only_model checkpoints hold no optimizer, scheduler or RNG state
    assert last_complete_checkpoint(str(tmp_path), require_training_state=False)[0] == str(
        tmp_path / "checkpoint-10"
    )
    assert last_complete_checkpoint(str(tmp_path / "missing")) == (None, {})


def test_resume_true_without_a_complete_checkpoint_raises(tmp_path: Path) -> None:
    from hf_knife.checkpoints import resolve_resume_checkpoint

    _write_checkpoint(tmp_path / "checkpoint-5", ["model.safetensors"])
    with pytest.raises(ValueError, match=r"No valid checkpoint.*checkpoint-5 \(no trainer_state.json"):
        resolve_resume_checkpoint(True, str(tmp_path))
    with pytest.raises(ValueError, match="No valid checkpoint"):
        resolve_resume_checkpoint(True, str(tmp_path / "missing"))
    assert resolve_resume_checkpoint("some/path", str(tmp_path)) == "some/path"  # explicit paths pass through
    assert resolve_resume_checkpoint(None, str(tmp_path)) is None
    _write_checkpoint(tmp_path / "checkpoint-3", COMPLETE)
    with pytest.warns(UserWarning, match="skipping the incomplete .*checkpoint-5"):
        assert resolve_resume_checkpoint(True, str(tmp_path)) == str(tmp_path / "checkpoint-3")
