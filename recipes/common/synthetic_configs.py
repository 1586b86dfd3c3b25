"""Configurations of the synthetic experiments of ``recipes/synthetic.py``: the protocol's sizes and the ``--quick``
ones (seconds per experiment on one core, used by the tests)."""

from __future__ import annotations

from dataclasses import dataclass

from hf_knife.synthetic import PAIR_KINDS

STAIRCASE_ESTIMATORS = ("knife", "knife_gauss", "infonce", "mine", "nwj", "club", "ksg", "doe")

@dataclass
class EntropyConfig:
    dims: tuple[int, ...] = (10, 64)
    num_components: int = 128
    steps: int = 200
    batch_size: int = 128
    eval_samples: int = 25_600
    lr: float = 0.1
    final_lr_fraction: float = 0.05
    tril_lr_factor: float = 0.03
    schraudolph_lr: float = 0.1
    knn_k: int = 3
    methods: tuple[str, ...] = ("knife_full", "knife_diagonal", "schraudolph", "doe", "knn")


@dataclass
class TrackingConfig:
    dim: int = 64
    num_components: int = 128
    covariance: str = "full"
    steps_per_phase: int = 1000
    num_phases: int = 5
    batch_size: int = 128
    lr: float = 0.01
    tril_lr_factor: float = 0.03


@dataclass
class TrianglesConfig:
    settings: tuple[tuple[int, int], ...] = ((1, 10), (8, 2), (20, 2))  # (dim, triangles per coordinate)
    num_components: int = 128
    covariance: str = "diagonal"
    steps: int = 2000
    batch_size: int = 128
    eval_samples: int = 25_600
    lr: float = 0.01
    final_lr_fraction: float = 0.05
    knn_k: int = 3


@dataclass
class StaircaseConfig:
    kinds: tuple[str, ...] = PAIR_KINDS
    estimators: tuple[str, ...] = STAIRCASE_ESTIMATORS
    dim: int = 20
    levels: tuple[float, ...] = (2.0, 4.0, 6.0, 8.0, 10.0)
    steps_per_level: int = 2000
    batch_size: int = 128
    burn_in_fraction: float = 0.5  # bias / variance / MSE use the estimates after this fraction of each level
    num_components: int = 128
    covariance: str = "full"
    knife_hidden: tuple[int, ...] = (128, 128)
    knife_lr: float = 0.003
    critic_hidden: tuple[int, ...] = (64, 64)
    critic_lr: float = 0.001
    mine_ema_rate: float = 0.01
    tag: str = ""  # suffix of the output files (staircase_<kind><tag>.json), to keep partial runs apart
    reference_samples: int = 8192  # knife_gauss: the marginal maps use the first samples of the stream
    ksg_samples: int = 5000
    ksg_k: int = 3


@dataclass
class DiscreteConfig:
    class_counts: tuple[int, ...] = (2, 4, 6, 8, 10)
    dim: int = 8
    separation: float = 1.5
    num_components: int = 16
    covariance: str = "full"
    steps: int = 1000
    batch_size: int = 128
    eval_samples: int = 10_000
    lr: float = 0.01
    final_lr_fraction: float = 0.05
    tril_lr_factor: float = 1.0
    truth_samples: int = 200_000


def quick_configs() -> dict[str, object]:
    """Small versions of every experiment (seconds each on one core), used by the tests."""
    return {
        "entropy": EntropyConfig(dims=(4,), num_components=16, steps=150, batch_size=128, eval_samples=4000),
        "tracking": TrackingConfig(
            dim=4, num_components=8, steps_per_phase=150, num_phases=3, batch_size=128, lr=0.03
        ),
        "triangles": TrianglesConfig(
            settings=((1, 3), (2, 2)), num_components=16, steps=300, eval_samples=4000, lr=0.02
        ),
        "staircase": StaircaseConfig(
            kinds=("gaussian",),
            dim=4,
            levels=(1.0, 2.0),
            steps_per_level=250,
            batch_size=64,
            num_components=8,
            knife_hidden=(32,),
            critic_hidden=(32,),
            knife_lr=0.01,
            critic_lr=0.003,
            ksg_samples=1000,
        ),  # fmt: skip
        "discrete": DiscreteConfig(
            class_counts=(2, 4), dim=2, num_components=4, steps=300, eval_samples=4000, truth_samples=20_000
        ),
    }
