"""KNIFEConfig: validation with clear errors, save/load, registries, command-line arguments."""

from __future__ import annotations

import dataclasses
import json
import math
import warnings

import pytest
from conftest import LEGACY_FILE

from hf_knife.config import (
    FLAT_KEYS,
    KNIFE_CONFIG_NAME,
    OPTION_GROUPS,
    BottleneckOptions,
    BudgetOptions,
    EntropyOptions,
    KNIFEConfig,
    MutualInformationOptions,
)
from hf_knife.registry import PENALTY_REGISTRY, REPRESENTATION_REGISTRY


def test_defaults_and_round_trip(tmp_path):
    config = KNIFEConfig(
        penalty="mutual_information", weight=0.5, sensitive_column="gender", bandwidth_bounds=[0.01, 10]
    )
    path = config.save_pretrained(tmp_path)
    assert path.endswith(KNIFE_CONFIG_NAME)
    saved = json.loads((tmp_path / KNIFE_CONFIG_NAME).read_text())
    assert saved["weight"] == 0.5 and "hf_knife_version" in saved
    assert KNIFEConfig.from_pretrained(tmp_path) == config
    assert KNIFEConfig.from_pretrained(path) == config


def _library_entries(registry) -> set[str]:
    """The names registered by hf_knife itself (recipes and users register their own, e.g. the domain-adaptation
    recipe's ``club`` and ``infonce`` once it is imported in the same process)."""
    return {name for name in registry if registry.get(name).__module__.startswith("hf_knife.")}


def test_registries_list_builtins():
    assert _library_entries(PENALTY_REGISTRY) == {"mutual_information", "entropy", "information_bottleneck",
                                                  "adversarial"}  # fmt: skip
    assert _library_entries(REPRESENTATION_REGISTRY) == {"cls", "mean", "pooler", "module"}
    assert list(PENALTY_REGISTRY)[:4] == ["mutual_information", "entropy", "information_bottleneck", "adversarial"]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(penalty="mi"), "unknown penalty 'mi'; expected one of 'mutual_information', 'entropy'"),
        (
            dict(representation="avg"),
            "unknown representation 'avg'; expected one of 'cls', 'mean', 'pooler', 'module'",
        ),
        (dict(covariance="dense"), "unknown covariance 'dense'"),
        (dict(weight=-1.0), "weight must be a finite number >= 0, got -1.0"),
        (dict(weight=math.nan), "weight must be a finite number >= 0, got nan"),
        (dict(weight="big"), "weight must be a finite number >= 0, got 'big'"),
        (dict(num_components=0), "num_components must be a positive integer"),
        (dict(representation="module"), "representation='module' needs module_name"),
        (dict(penalty="information_bottleneck", representation="mean"), "information_bottleneck needs"),
        (dict(entropy=dict(direction="up")), "unknown entropy.direction 'up'; expected one of 'lower', 'raise'"),
        (dict(bandwidth_bounds=[1.0, 0.1]), "bandwidth_bounds must be [min, max]"),
        (dict(num_sensitive_classes=1), "num_sensitive_classes must be >= 2"),
        (dict(estimator_lr=0.0), "estimator_lr must be a finite number > 0"),
        (dict(mutual_information=dict(fit="ce")), "unknown mutual_information.fit 'ce'; expected one of 'likelihood', 'posterior'"),
        (
            dict(mutual_information=dict(fit="posterior", marginal="kernel")),
            "mutual_information.marginal='kernel' (a separate marginal kernel) is fitted by likelihood",
        ),
    ],
)
def test_bad_values_raise_clear_errors(kwargs, message):
    with pytest.raises(ValueError) as error:
        KNIFEConfig(**kwargs)
    assert message in str(error.value)


def test_unknown_keys_in_json_are_ignored_with_warning(tmp_path):
    (tmp_path / KNIFE_CONFIG_NAME).write_text(json.dumps({"penalty": "entropy", "from_the_future": 1}))
    with pytest.warns(UserWarning, match="from_the_future"):
        assert KNIFEConfig.from_pretrained(tmp_path).penalty == "entropy"


def test_every_option_is_a_command_line_flag(tmp_path):
    from transformers import HfArgumentParser

    from hf_knife.trainer import KNIFETrainingArguments

    names = {f.name for f in dataclasses.fields(KNIFETrainingArguments)}
    flat = {f.name for f in dataclasses.fields(KNIFEConfig) if f.name not in OPTION_GROUPS} | set(FLAT_KEYS)
    assert {f"knife_{name}" for name in flat} <= names
    (args,) = HfArgumentParser(KNIFETrainingArguments).parse_args_into_dataclasses(
        [
            "--output_dir", str(tmp_path), "--knife_penalty", "entropy", "--knife_weight", "0.3",
            "--knife_entropy_direction", "raise", "--knife_layer", "-2", "--knife_hidden_dims", "16", "8",
            "--knife_init_from_data", "false", "--report_to", "none",
        ]
    )  # fmt: skip
    config = args.to_knife_config()
    assert config.penalty == "entropy" and config.weight == 0.3 and config.entropy.direction == "raise"
    assert config.layer == -2 and config.hidden_dims == [16, 8] and config.init_from_data is False
    (plain,) = HfArgumentParser(KNIFETrainingArguments).parse_args_into_dataclasses(
        ["--output_dir", str(tmp_path)]
    )
    assert plain.to_knife_config() is None
    with pytest.raises(ValueError, match="unknown representation 'first'"):
        HfArgumentParser(KNIFETrainingArguments).parse_args_into_dataclasses(
            ["--output_dir", str(tmp_path), "--knife_penalty", "entropy", "--knife_representation", "first"]
        )[0].to_knife_config()


def test_files_of_the_flat_format_still_load(tmp_path):
    (tmp_path / KNIFE_CONFIG_NAME).write_text(json.dumps(LEGACY_FILE))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every legacy key is understood: no "ignoring unknown keys"
        config = KNIFEConfig.from_pretrained(tmp_path)
    assert config.mutual_information == MutualInformationOptions(
        marginal="mixture", fit="posterior", positive_part=False, calibrate=False  # 0.1 had no calibration
    )
    assert config.entropy == EntropyOptions(direction="raise")
    assert config.information_bottleneck == BottleneckOptions(estimator="vib", init_sigma=0.2)
    assert config.budget == BudgetOptions(rate=0.3, smoothing=0.5)
    assert (config.target, config.sensitive_column, config.num_sensitive_classes) == (0.2, "gender", 2)
    # and the new format round-trips through a file, nested options included
    config.save_pretrained(tmp_path / "new")
    saved = json.loads((tmp_path / "new" / KNIFE_CONFIG_NAME).read_text())
    assert saved["mutual_information"] == {
        "marginal": "mixture", "fit": "posterior", "positive_part": False, "calibrate": False, "given": "nothing",
        "num_label_classes": None,
    }  # fmt: skip
    assert not set(FLAT_KEYS) & set(saved)  # one format written
    assert KNIFEConfig.from_pretrained(tmp_path / "new") == config


def test_nested_options_are_rebuilt_from_dicts_and_checked():
    config = KNIFEConfig(penalty="entropy", entropy={"direction": "raise"})
    assert config.entropy == EntropyOptions(direction="raise")
    with pytest.raises(TypeError, match="entropy must be a EntropyOptions or a dict"):
        KNIFEConfig(entropy="raise")
    with pytest.warns(UserWarning, match=r"ignoring unknown keys \['entropy.speed'\]"):
        KNIFEConfig.from_dict({"penalty": "entropy", "entropy": {"direction": "lower", "speed": 2}})


def test_files_of_0_2_keep_the_defaults_they_were_trained_with(tmp_path):
    """0.3 changed the MI defaults (posterior fit, no positive part, calibrated); a 0.2 file that relied on the old
    defaults (it does not list the options) loads with them, a file written now keeps the new ones."""
    old = {"hf_knife_version": "0.2.0", "penalty": "mutual_information", "mutual_information": {"marginal": "mixture"}}
    (tmp_path / KNIFE_CONFIG_NAME).write_text(json.dumps(old))
    config = KNIFEConfig.from_pretrained(tmp_path)
    assert config.mutual_information == MutualInformationOptions(fit="likelihood", positive_part=True, calibrate=False)
    KNIFEConfig().save_pretrained(tmp_path / "new")
    assert KNIFEConfig.from_pretrained(tmp_path / "new").mutual_information == MutualInformationOptions()
    assert MutualInformationOptions() == MutualInformationOptions(fit="posterior", positive_part=False, calibrate=True)
