"""Command lines: every recipe's ``--help`` works, and every KNIFEConfig field is a ``--knife_*`` option that
round-trips through ``HfArgumentParser`` into ``KNIFETrainingArguments.to_knife_config()``."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from transformers import HfArgumentParser

from hf_knife.config import (
    FLAT_KEYS,
    OPTION_GROUPS,
    BottleneckOptions,
    BudgetOptions,
    EntropyOptions,
    KNIFEConfig,
    MutualInformationOptions,
)
from hf_knife.trainer import KNIFETrainingArguments

ROOT = Path(__file__).resolve().parents[1]

#: recipe -> options its --help must list (its own, and the KNIFE / Trainer ones it inherits)
RECIPE_OPTIONS = {
    "fine_tuning.py": ["--methods", "--beta", "--vib_beta", "--bottleneck_dim", "--validation_size", "--test_size",
                       "--knife_num_components", "--knife_estimator_lr", "--learning_rate"],
    "fair_classification.py": ["--methods", "--weights", "--seeds", "--sensitive_column", "--merge_from",
                               "--knife_weight", "--knife_discrete_fit", "--num_train_epochs"],
    "synthetic.py": ["--quick", "--seeds", "--jobs", "--threads", "--kinds", "--levels", "staircase", "report"],
    "estimate_demo.py": ["--num_samples", "--seed"],
    "domain_adaptation.py": ["--source", "--target", "--methods", "--seeds", "--knife_num_components", "--learning_rate"],
}  # fmt: skip


def _run_help(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run(
        [sys.executable, *args, "--help"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )


def test_every_recipe_is_covered():
    assert sorted(RECIPE_OPTIONS) == sorted(p.name for p in (ROOT / "recipes").glob("*.py"))


@pytest.mark.parametrize("recipe", sorted(RECIPE_OPTIONS))
def test_recipe_help(recipe):
    """``python recipes/<recipe> --help`` exits 0 and lists its options (a bare '%' in a help string crashed it)."""
    result = _run_help(f"recipes/{recipe}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.startswith("usage:"), result.stdout[:500]
    missing = [option for option in RECIPE_OPTIONS[recipe] if option not in result.stdout]
    assert not missing, f"{recipe} --help does not mention {missing}:\n{result.stdout}"
    assert "Traceback" not in result.stderr, result.stderr[-3000:]


def test_synthetic_help_after_every_experiment(capsys):
    """``recipes/synthetic.py <experiment> --help`` for every experiment choice (in-process: the parser is shared)."""
    sys.path.insert(0, str(ROOT / "recipes"))
    try:
        import synthetic
    finally:
        sys.path.remove(str(ROOT / "recipes"))
    choices = [*synthetic.EXPERIMENTS, "all", "report"]
    assert len(choices) >= 4
    for experiment in choices:
        with pytest.raises(SystemExit) as exit_info:
            synthetic.main([experiment, "--help"])
        assert exit_info.value.code == 0
        out = capsys.readouterr().out
        assert out.startswith("usage: ") and "--quick" in out and experiment in out, out[:500]


# ---------------------------------------------------------------------------- --knife_* options
def test_every_knife_option_in_stock_parser_help():
    """A stock ``HfArgumentParser(KNIFETrainingArguments)`` formats its help and lists one option per field."""
    text = HfArgumentParser(KNIFETrainingArguments).format_help()
    fields = [*(f.name for f in dataclasses.fields(KNIFEConfig) if f.name not in OPTION_GROUPS), *FLAT_KEYS]
    assert len(fields) >= 30
    missing = [name for name in fields if f"--knife_{name} " not in text and f"--knife_{name}\n" not in text]
    assert not missing, f"options missing from the help: {missing}"
    assert "--output_dir" in text and "--learning_rate" in text  # the TrainingArguments are still there
    knife_fields = {f.name for f in dataclasses.fields(KNIFETrainingArguments) if f.name.startswith("knife_")}
    assert knife_fields == {f"knife_{name}" for name in fields}


def _flat(config: KNIFEConfig) -> dict[str, Any]:
    """``config`` as command-line names -> values (the nested options under their flat ``FLAT_KEYS`` names)."""
    values = {f.name: getattr(config, f.name) for f in dataclasses.fields(KNIFEConfig) if f.name not in OPTION_GROUPS}
    values.update({key: getattr(getattr(config, group), option) for key, (group, option) in FLAT_KEYS.items()})
    return values


def _argv(config: KNIFEConfig) -> list[str]:
    """Command-line tokens that describe ``config`` (None values left at their default)."""
    argv: list[str] = []
    for name, value in _flat(config).items():
        if value is None:
            continue
        if isinstance(value, bool):
            argv += [f"--knife_{name}", str(value).lower()]
        elif isinstance(value, list):
            argv += [f"--knife_{name}", *map(str, value)]
        else:
            argv += [f"--knife_{name}", str(value)]
    return argv


def _parse(argv: list[str], tmp_path: Path) -> Any:
    parser = HfArgumentParser(KNIFETrainingArguments)
    (args,) = parser.parse_args_into_dataclasses(args=[*argv, "--output_dir", str(tmp_path)])
    return args


def test_knife_penalty_entropy_round_trips(tmp_path):
    args = _parse(["--knife_penalty", "entropy", "--knife_weight", "0.1", "--knife_entropy_direction", "raise",
                   "--knife_num_components", "8", "--knife_hidden_dims", "64", "32"], tmp_path)  # fmt: skip
    config = args.to_knife_config()
    assert isinstance(config, KNIFEConfig)
    expected = KNIFEConfig(penalty="entropy", weight=0.1, entropy=EntropyOptions(direction="raise"), num_components=8,
                           hidden_dims=[64, 32])  # fmt: skip
    assert config.to_dict() == expected.to_dict()
    assert _parse([], tmp_path).to_knife_config() is None  # no --knife_penalty: plain Trainer


NON_DEFAULT = [
    KNIFEConfig(
        penalty="mutual_information", weight=0.1, representation="cls", layer=-2, sensitive_column="gender",
        sensitive_type="continuous", num_sensitive_classes=3, sensitive_dim=2, num_components=7,
        covariance="low_rank", rank=2, hidden_dims=[64, 32], bandwidth_bounds=[0.01, 10.0], projection_dim=8,
        estimator_lr=0.05, inner_steps=3, warmup_steps=4, anneal_steps=5,
        mutual_information=MutualInformationOptions(fit="likelihood", positive_part=True, calibrate=False),
        standardize=False,
        init_from_data=False, init_num_samples=17, entropy=EntropyOptions(direction="raise"),
        information_bottleneck=BottleneckOptions(estimator="vib", init_sigma=0.3, marginal="memory", memory_size=64,
                                                 head_lr=0.01),
        gather_features=True,
        check_finite=False,
    ),
    KNIFEConfig(penalty="information_bottleneck", representation="module", module_name="bert.pooler",
                mutual_information=MutualInformationOptions(marginal="kernel", fit="likelihood", calibrate=False),
                target=0.02,
                budget=BudgetOptions(rate=0.3, smoothing=0.5)),
    KNIFEConfig(sensitive_column="gender", mutual_information=MutualInformationOptions(
        fit="posterior", given="labels", num_label_classes=4)),
]  # fmt: skip


@pytest.mark.parametrize("index", range(len(NON_DEFAULT)))
def test_every_knife_option_round_trips(index, tmp_path):
    config = NON_DEFAULT[index]
    parsed = _parse(_argv(config), tmp_path).to_knife_config()
    assert parsed.to_dict() == config.to_dict()


def test_round_trip_configs_cover_every_field():
    """Every KNIFEConfig field takes a non-default value in NON_DEFAULT (a new field must be added there)."""
    default = _flat(KNIFEConfig())
    changed = {name for config in NON_DEFAULT for name, value in _flat(config).items() if value != default[name]}
    assert changed == set(default), f"not exercised: {sorted(set(default) - changed)}"
