"""KNIFEConfig: the penalty and estimator settings, saved as ``knife_config.json`` beside the model.

Options every penalty shares are top-level fields; each penalty's own options are a nested dataclass
(``KNIFEConfig(penalty="entropy", entropy=EntropyOptions(direction="raise"))``), rebuilt from dicts when loaded
(the PEFT way). Files written before the nesting (flat ``discrete_fit``, ``entropy_direction``, ``ib_estimator``,
``budget_rate``... keys) still load: :data:`FLAT_KEYS` maps them. What each penalty accepts is checked by the
penalty class itself (``check_config``, found through :data:`~hf_knife.registry.PENALTY_REGISTRY`).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, get_args, get_type_hints

from .estimators.functional import COVARIANCE_TYPES
from .registry import PENALTY_REGISTRY, REPRESENTATION_REGISTRY

__all__ = [
    "KNIFE_CONFIG_NAME",
    "FLAT_KEYS",
    "OPTION_GROUPS",
    "BottleneckOptions",
    "BudgetOptions",
    "EntropyOptions",
    "KNIFEConfig",
    "MutualInformationOptions",
]

KNIFE_CONFIG_NAME = "knife_config.json"


def _help(text: str) -> dict[str, str]:
    return {"help": text}


def _check_literals(options: Any, prefix: str = "") -> None:
    """Raise a ValueError naming the field when a ``Literal``-typed field of the dataclass ``options`` holds a value
    outside its choices."""
    hints = get_type_hints(type(options))
    for f in dataclasses.fields(options):
        choices = get_args(hints[f.name]) if getattr(hints[f.name], "__origin__", None) is Literal else ()
        value = getattr(options, f.name)
        if choices and value not in choices:
            raise ValueError(
                f"unknown {prefix}{f.name} {value!r}; expected one of {', '.join(map(repr, choices))}"
            )


def _check_number(value: Any, name: str, low: float | None = None, *, positive: bool = False) -> None:
    """A finite number (not a bool), ``> 0`` with ``positive``, ``>= low`` with ``low``; else a ValueError."""
    bound = " > 0" if positive else f" >= {low:g}" if low is not None else ""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number{bound}, got {value!r}")
    if (positive and value <= 0) or (low is not None and value < low):
        raise ValueError(f"{name} must be a finite number{bound}, got {value}")


@dataclass
class MutualInformationOptions:
    """Options of the ``mutual_information`` penalty with a discrete S (a continuous S ignores them, except
    ``given``, which needs a discrete S)."""

    marginal: Literal["mixture", "kernel"] = field(
        default="mixture",
        metadata=_help("'mixture' estimates h(Z) with the mixture of the class kernels weighted by the class "
                       "frequencies (I(Z;S) <= H(S), low variance); 'kernel' fits a separate marginal KNIFE"),
    )  # fmt: skip
    fit: Literal["likelihood", "posterior"] = field(
        default="posterior",
        metadata=_help("with the 'mixture' marginal, how the class kernels are fitted. 'likelihood': h(Z) + h(Z|S), "
                       "both NLLs (the KNIFE fit); 'posterior': the cross-entropy of the class posterior q(s|z), i.e. "
                       "maximise the estimate I(Z;S) = H(S) - CE (a Barber-Agakov bound), the objective an "
                       "adversary is trained on"),
    )  # fmt: skip
    positive_part: bool = field(
        default=False,
        metadata=_help("penalise mean_n max(0, pointwise MI) instead of its mean, so the model gains nothing by "
                       "pushing estimates below zero while the estimator lags (the logged I(Z;S) stays the raw "
                       "difference)"),
    )  # fmt: skip
    calibrate: bool = field(
        default=True,
        metadata=_help("with the 'mixture' marginal, read I(Z;S) through the class posterior tempered by the "
                       "temperature T that best predicts S on the current batch (fitted before the estimator sees the "
                       "batch; T = 0, the prior, unless a likelihood-ratio test at 5% says the batch shows leakage), "
                       "and penalise that: mean_n log q_T(s_n|z_n) / p(s_n). The raw posterior of kernels fitted "
                       "online is over-confident in hundreds of dimensions and reads several nats below zero; the "
                       "calibrated one reads ~0 when S is independent of Z, is never far below zero, and is what a "
                       "budget (target) can be set in. Needs marginal='mixture' and positive_part=False"),
    )  # fmt: skip
    given: Literal["nothing", "labels"] = field(
        default="nothing",
        metadata=_help("'nothing' penalises I(Z;S); 'labels' penalises I(Z;S | Y), the information about S beyond what "
                       "the task label Y carries (separation / equalised odds, the conditional adversary of Zhang et "
                       "al. 2018): one class kernel per (label, S) pair, the model's labels passed to the penalty. A "
                       "representation of the task alone costs ~0 however S and Y are correlated, and "
                       "I(Z;S) <= I(Z;S|Y) + I(Y;S) bounds the unconditional leakage"),
    )  # fmt: skip
    num_label_classes: int | None = field(
        default=None,
        metadata=_help("with given='labels', the number of task classes (add_knife takes the model's num_labels)"),
    )  # fmt: skip

    def validate(self) -> None:
        _check_literals(self, "mutual_information.")
        if self.num_label_classes is not None and (
            isinstance(self.num_label_classes, bool) or not isinstance(self.num_label_classes, int)
            or self.num_label_classes < 2
        ):
            raise ValueError(
                f"mutual_information.num_label_classes must be an integer >= 2, got {self.num_label_classes!r}"
            )
        if self.given == "labels" and self.marginal != "mixture":
            raise ValueError(
                "mutual_information.given='labels' needs marginal='mixture' (the class kernels of each label form "
                f"the label's marginal), got marginal={self.marginal!r}"
            )


@dataclass
class EntropyOptions:
    """Options of the ``entropy`` penalty."""

    direction: Literal["lower", "raise"] = field(default="lower", metadata=_help("'lower' or 'raise' h(Z)"))

    def validate(self) -> None:
        _check_literals(self, "entropy.")


@dataclass
class BottleneckOptions:
    """Options of the ``information_bottleneck`` penalty."""

    estimator: Literal["knife", "vib"] = field(
        default="knife", metadata=_help("'knife' (h_KNIFE(Z) - h(Z|X)) or 'vib' (KL to N(0, I))")
    )
    init_sigma: float = field(default=0.1, metadata=_help("initial noise scale of the stochastic Gaussian head"))
    marginal: Literal["kernel", "memory"] = field(
        default="kernel",
        metadata=_help("how h(Z) is estimated for estimator='knife': 'kernel', a KNIFE kernel fitted on the batches "
                       "(K = num_components; loose when K is below the number of training examples); 'memory', "
                       "the mixture of the head's own Gaussians over the last memory_size examples "
                       "(hf_knife.estimators.MemoryMixture: I(X;Z) <= log memory_size, exact when the memory holds "
                       "the training set; a measurement more than a training signal: with non-overlapping head "
                       "Gaussians the exact rate sits at log N and passes almost no gradient)"),
    )  # fmt: skip
    memory_size: int = field(default=1024, metadata=_help("examples kept by marginal='memory'"))
    head_lr: float | None = field(
        default=None,
        metadata=_help("learning rate of the head's noise scale (its log-sigma layer), in its own optimizer group with "
                       "the model's schedule; None: the model's learning rate (at which sigma barely moves)"),
    )  # fmt: skip

    def validate(self) -> None:
        _check_literals(self, "information_bottleneck.")
        _check_number(self.init_sigma, "information_bottleneck.init_sigma", positive=True)
        if isinstance(self.memory_size, bool) or not isinstance(self.memory_size, int) or self.memory_size < 1:
            raise ValueError(f"information_bottleneck.memory_size must be a positive integer, got {self.memory_size!r}")
        if self.head_lr is not None:
            _check_number(self.head_lr, "information_bottleneck.head_lr", positive=True)


@dataclass
class BudgetOptions:
    """Options of the budget controller (used with ``KNIFEConfig.target``; see :mod:`hf_knife.budget`)."""

    rate: float = field(
        default=1.0,
        metadata=_help("the controller's step per nat of constraint, in units of the initial weight: "
                       "multiplier <- clip(multiplier + rate * weight * average(estimate - target), 0, 1e4 * weight)"),
    )  # fmt: skip
    smoothing: float = field(
        default=0.9,
        metadata=_help("weight of the past in the exponential moving average of the constraint that drives the "
                       "controller, in [0, 1) (0: the current step only)"),
    )  # fmt: skip

    def validate(self) -> None:
        _check_number(self.rate, "budget.rate", positive=True)
        _check_number(self.smoothing, "budget.smoothing")
        if not 0 <= self.smoothing < 1:
            raise ValueError(f"budget.smoothing must be in [0, 1), got {self.smoothing}")


#: The nested options: field name of KNIFEConfig -> its dataclass.
OPTION_GROUPS: dict[str, type] = {
    "mutual_information": MutualInformationOptions,
    "entropy": EntropyOptions,
    "information_bottleneck": BottleneckOptions,
    "budget": BudgetOptions,
}
#: Flat names of the nested options -> (group, option): the ``--knife_<key>`` command-line names, and the keys of
#: knife_config.json files written before the nesting (hf_knife 0.1).
FLAT_KEYS: dict[str, tuple[str, str]] = {
    "discrete_marginal": ("mutual_information", "marginal"),
    "discrete_fit": ("mutual_information", "fit"),
    "positive_part": ("mutual_information", "positive_part"),
    "entropy_direction": ("entropy", "direction"),
    "ib_estimator": ("information_bottleneck", "estimator"),
    "ib_init_sigma": ("information_bottleneck", "init_sigma"),
    "budget_rate": ("budget", "rate"),
    "budget_smoothing": ("budget", "smoothing"),
    "ib_marginal": ("information_bottleneck", "marginal"),
    "ib_memory_size": ("information_bottleneck", "memory_size"),
    "ib_head_lr": ("information_bottleneck", "head_lr"),
    "mi_calibrate": ("mutual_information", "calibrate"),
    "mi_given": ("mutual_information", "given"),
    "mi_num_label_classes": ("mutual_information", "num_label_classes"),
}


#: Options whose default changed in 0.3 (the calibrated posterior-fitted MI penalty, measured in
#: results/shortcut/README.md): a knife_config.json written by an older version without them gets these values.
DEFAULTS_BEFORE_0_3: dict[str, dict[str, Any]] = {
    "mutual_information": {"fit": "likelihood", "positive_part": True, "calibrate": False},
}


def _older_than(version: str | None, reference: str) -> bool:
    """Whether a file's ``hf_knife_version`` (None: a 0.1 file, which had none) is older than ``reference``."""
    if version is None:
        return True
    from packaging.version import InvalidVersion, Version

    try:
        return Version(str(version)) < Version(reference)
    except InvalidVersion:
        return False


@dataclass
class KNIFEConfig:
    """Settings of a KNIFE penalty on a model's hidden representation Z.

    Example: ``KNIFEConfig(penalty="mutual_information", weight=1.0, sensitive_column="gender")`` minimises
    ``I(Z; gender)`` where Z is the [CLS] hidden state of the last layer.

    The total loss is ``task_loss + w(step) * penalty`` where ``w(step)`` is 0 for the first ``warmup_steps``
    (the estimator still fits), then rises linearly to ``weight`` over ``anneal_steps``.

    With ``target`` (a budget), ``w`` is instead a Lagrange multiplier that starts at ``weight`` after warm-up and is
    adapted once per optimizer step so that the penalty's estimate stays at or below ``target`` (see
    :mod:`hf_knife.budget`); e.g. ``KNIFEConfig(sensitive_column="gender", target=0.005)`` keeps ``I(Z; gender)``
    near 0.005 nats, which limits the Bayes attacker to at most 5 points above the majority rate (if the estimate
    is right).
    """

    penalty: str = field(
        default="mutual_information",
        metadata=_help("penalty kind: 'mutual_information' (minimise I(Z;S)), 'entropy' (raise or lower h(Z)), "
                       "'information_bottleneck' (minimise I(X;Z) through a stochastic Gaussian head), "
                       "'adversarial' (gradient-reversal adversary predicting S: the baseline)"),
    )  # fmt: skip
    weight: float = field(default=1.0, metadata=_help("penalty weight (lambda or beta), >= 0"))
    representation: str = field(
        default="cls",
        metadata=_help("what Z is: 'cls' (first token), 'mean' (mean over the attention mask), 'pooler' (the "
                       "model's pooler output) or 'module' (the output of `module_name`)"),
    )  # fmt: skip
    module_name: str | None = field(
        default=None,
        metadata=_help("submodule whose output is used: required for representation='module'; for 'cls'/'mean' "
                       "it replaces the last layer as the source of token states"),
    )  # fmt: skip
    layer: int | None = field(
        default=None,
        metadata=_help(
            "for 'cls'/'mean': hidden-states index (0 = embeddings, i = output of layer i, -1 = last)"
        ),
    )
    sensitive_column: str | None = field(
        default=None, metadata=_help("dataset column holding the sensitive variable S (mutual_information)")
    )
    sensitive_type: Literal["discrete", "continuous"] = field(
        default="discrete", metadata=_help("'discrete' (class ids) or 'continuous' S")
    )
    num_sensitive_classes: int | None = field(
        default=None,
        metadata=_help("number of classes of a discrete S (KNIFETrainer infers it from the data)"),
    )
    sensitive_dim: int = field(default=1, metadata=_help("dimension of a continuous S"))
    num_components: int = field(default=16, metadata=_help("mixture components K of each KNIFE kernel"))
    covariance: Literal["shared_diagonal", "diagonal", "full", "low_rank"] = field(
        default="diagonal", metadata=_help("kernel covariance: " + ", ".join(COVARIANCE_TYPES))
    )
    rank: int | None = field(default=None, metadata=_help("rank of the 'low_rank' covariance term"))
    hidden_dims: list[int] = field(
        default_factory=lambda: [128, 128], metadata=_help("MLP widths of the continuous conditional kernel")
    )
    bandwidth_bounds: list[float] | None = field(
        default=None,
        metadata=_help("[min, max] clamp of the kernel bandwidths; default with standardize: [0.1, 100] in units of "
                       "each coordinate's running standard deviation (keeps dead or duplicated coordinates finite)"),
    )
    projection_dim: int | None = field(
        default=None,
        metadata=_help(
            "project Z to this dimension with a fixed random orthonormal map before the estimator"
        ),
    )
    estimator_lr: float = field(default=1e-2, metadata=_help("learning rate of the estimator parameters"))
    inner_steps: int = field(
        default=10,
        metadata=_help("extra estimator fitting steps (Adam) on the detached features of each optimizer step, so the "
                       "estimator keeps up with the model; 0 turns them off"),
    )  # fmt: skip
    warmup_steps: int = field(
        default=0, metadata=_help("optimizer steps that fit the estimator before the penalty starts")
    )
    anneal_steps: int = field(
        default=0, metadata=_help("after warm-up, raise the weight linearly over this many steps")
    )
    target: float | None = field(
        default=None,
        metadata=_help("a budget instead of a fixed weight: the weight becomes a Lagrange multiplier, adapted once per "
                       "optimizer step (hf_knife/budget.py) so that the penalty's estimate stays at or below target: "
                       "I(Z;S) in nats (mutual_information), the rate I(X;Z) in nats (information_bottleneck; the KL "
                       "for ib_estimator='vib'), h(Z) in nats (entropy, entropy.direction 'lower': h <= target; 'raise': h >= target; "
                       "any finite value, entropies can be negative), the adversary's bound H(S) - CE on I(Z;S) in "
                       "nats (adversarial). > 0 except for entropy. weight is then the initial multiplier (> 0, "
                       "also the unit of the controller's steps); "
                       "warm-up keeps the multiplier at 0 and the controller starts after it; anneal_steps is "
                       "refused. Logged as knife/multiplier and knife/constraint (estimate - target; target - h for "
                       "'raise': > 0 means over budget). What a budget on I(Z;S) buys: the Bayes attacker's "
                       "accuracy exceeds the majority-class rate by at most sqrt(I(Z;S)/2) (Pinsker and Jensen), "
                       "so 0.005 nats allows at most 5 points, 0.02 nats at most 10; this holds for the true "
                       "I(Z;S), and the budget holds the estimate, so check with a fresh attacker. With a discrete S "
                       "budget with mutual_information.fit='posterior' (and positive_part=false): with the likelihood fit the model "
                       "can push the estimate below zero while an attacker still reads S"),
    )  # fmt: skip
    mutual_information: MutualInformationOptions = field(
        default_factory=lambda: MutualInformationOptions(),
        metadata=_help("options of the mutual_information penalty (MutualInformationOptions)"),
    )
    entropy: EntropyOptions = field(
        default_factory=lambda: EntropyOptions(), metadata=_help("options of the entropy penalty (EntropyOptions)")
    )
    information_bottleneck: BottleneckOptions = field(
        default_factory=lambda: BottleneckOptions(),
        metadata=_help("options of the information_bottleneck penalty (BottleneckOptions)"),
    )
    budget: BudgetOptions = field(
        default_factory=lambda: BudgetOptions(), metadata=_help("options of the budget controller (BudgetOptions)")
    )
    standardize: bool = field(
        default=True,
        metadata=_help("estimate on Z standardised by running per-dimension statistics (updated once per optimizer "
                       "step), so the estimator follows features whose scale changes during training"),
    )  # fmt: skip
    init_from_data: bool = field(
        default=True,
        metadata=_help("initialise the estimator at samples of Z before training (means at samples)"),
    )
    init_num_samples: int = field(
        default=256, metadata=_help("number of training examples used to initialise")
    )
    gather_features: bool = field(
        default=False,
        metadata=_help("all-gather Z and S across processes (with gradient) before the penalty"),
    )
    check_finite: bool = field(
        default=True, metadata=_help("raise on NaN/Inf features (one device sync per step)")
    )

    def __post_init__(self) -> None:
        for name, cls in OPTION_GROUPS.items():  # rebuilt from dicts (a loaded file, a model config)
            value = getattr(self, name)
            if isinstance(value, dict):
                setattr(self, name, cls(**value))
            elif not isinstance(value, cls):
                raise TypeError(f"{name} must be a {cls.__name__} or a dict, got {type(value).__name__}")
        self.validate()

    # ------------------------------------------------------------------ validation
    def validate(self) -> KNIFEConfig:
        """Raise a ValueError naming the bad field and the valid values; returns self."""
        penalty_cls = PENALTY_REGISTRY.get(self.penalty)
        REPRESENTATION_REGISTRY.check(self.representation)
        _check_literals(self)
        if self.covariance not in COVARIANCE_TYPES:
            raise ValueError(f"unknown covariance {self.covariance!r}; expected one of {COVARIANCE_TYPES}")
        for name in OPTION_GROUPS:
            getattr(self, name).validate()
        _check_number(self.weight, "weight", 0)
        for name in ("num_components", "sensitive_dim", "init_num_samples"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)}")
        for name in ("inner_steps", "warmup_steps", "anneal_steps"):
            if int(getattr(self, name)) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        _check_number(self.estimator_lr, "estimator_lr", positive=True)
        if self.projection_dim is not None and self.projection_dim < 1:
            raise ValueError(f"projection_dim must be a positive integer or None, got {self.projection_dim}")
        if self.num_sensitive_classes is not None and self.num_sensitive_classes < 2:
            raise ValueError(f"num_sensitive_classes must be >= 2, got {self.num_sensitive_classes}")
        if self.bandwidth_bounds is not None:
            bounds = list(self.bandwidth_bounds)
            if len(bounds) != 2 or not 0 < bounds[0] < bounds[1]:
                raise ValueError(f"bandwidth_bounds must be [min, max] with 0 < min < max, got {self.bandwidth_bounds}")
            self.bandwidth_bounds = [float(b) for b in bounds]
        self.hidden_dims = [int(h) for h in self.hidden_dims]
        if self.representation == "module" and not self.module_name:
            raise ValueError("representation='module' needs module_name (e.g. 'bert.pooler' or 'pre_classifier')")
        if self.representation in ("pooler", "module") and self.layer is not None:
            raise ValueError(f"layer applies to representation 'cls' or 'mean' only, not {self.representation!r}")
        if self.module_name and self.layer is not None:
            raise ValueError("pass either module_name or layer, not both")
        self._validate_target(penalty_cls)
        penalty_cls.check_config(self)
        return self

    def _validate_target(self, penalty_cls: type) -> None:
        """Checks of ``target`` (see its help)."""
        target = self.target
        if target is None:
            return
        if isinstance(target, bool) or not isinstance(target, (int, float)) or not math.isfinite(target):
            raise ValueError(f"target must be a finite number (nats) or None, got {target!r}")
        if not penalty_cls.supports_target:
            raise ValueError(
                f"penalty {self.penalty!r} cannot take a target (it defines no estimate to budget); use a fixed weight"
            )
        if self.penalty != "entropy" and target <= 0:
            raise ValueError(
                f"target must be > 0 nats for the {self.penalty} penalty (its estimate is an information, >= 0), "
                f"got {target}; only entropy targets may be zero or negative"
            )
        if self.weight <= 0:
            raise ValueError(
                f"with target, weight is the initial multiplier and must be > 0 (the controller scales it), "
                f"got {self.weight}"
            )
        if self.anneal_steps > 0:
            raise ValueError(
                f"target and anneal_steps={self.anneal_steps} do not combine: the budget controller sets the "
                "multiplier after warm-up; drop anneal_steps (warmup_steps is allowed: the multiplier is 0 during it)"
            )

    @property
    def needs_sensitive(self) -> bool:
        """True when the penalty reads the sensitive column (declared by the penalty class)."""
        return bool(PENALTY_REGISTRY.get(self.penalty).needs_sensitive)

    # ------------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json_string(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> KNIFEConfig:
        """Build from a dict (nested or legacy flat keys, see :data:`FLAT_KEYS`); unknown keys (from a newer
        version) are ignored with a warning."""
        values = dict(values)
        version = values.pop("hf_knife_version", None)
        groups = {name: dict(values.pop(name, None) or {}) for name in OPTION_GROUPS}
        for key, (group, option) in FLAT_KEYS.items():
            if key in values:
                groups[group].setdefault(option, values.pop(key))
        if _older_than(version, "0.3.0"):  # a file written before the defaults changed keeps its behaviour
            for group, options in DEFAULTS_BEFORE_0_3.items():
                for option, value in options.items():
                    groups[group].setdefault(option, value)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        for name, options in groups.items():
            option_names = {f.name for f in dataclasses.fields(OPTION_GROUPS[name])}
            unknown += [f"{name}.{key}" for key in sorted(set(options) - option_names)]
            groups[name] = {k: v for k, v in options.items() if k in option_names}
        if unknown:
            warnings.warn(f"KNIFEConfig: ignoring unknown keys {unknown}", stacklevel=2)
        return cls(**{k: v for k, v in values.items() if k in known}, **groups)

    def save_pretrained(self, save_directory: str | os.PathLike) -> str:
        """Write ``knife_config.json`` into ``save_directory``; returns the file path."""
        from . import __version__

        os.makedirs(save_directory, exist_ok=True)
        path = os.path.join(save_directory, KNIFE_CONFIG_NAME)
        with open(path, "w", encoding="utf-8") as f:
            json.dump({**self.to_dict(), "hf_knife_version": __version__}, f, indent=2, sort_keys=True)
            f.write("\n")
        return path

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, **kwargs: Any) -> KNIFEConfig:
        """Load from a folder, a ``knife_config.json`` file, or a Hub repo id (kwargs go to ``hf_hub_download``)."""
        path = str(path)
        if os.path.isdir(path):
            path = os.path.join(path, KNIFE_CONFIG_NAME)
        if not os.path.isfile(path):
            if os.path.sep in path and not path.count("/") == 1:
                raise FileNotFoundError(f"no {KNIFE_CONFIG_NAME} at {path}")
            from huggingface_hub import hf_hub_download

            path = hf_hub_download(path, KNIFE_CONFIG_NAME, **kwargs)
        with open(path, encoding="utf-8") as f:
            return cls.from_dict(json.load(f))
