#!/usr/bin/env python
"""Synthetic validation of the KNIFE estimators against exact ground truths (KNIFE paper, arXiv 2202.06618, §3).

Protocol: every training step draws a *fresh* batch from the true distribution (no fixed dataset), and every
method is run on the same samples. Sub-commands:

    entropy     DE of N(0, I_d), d = 10 and 64: KNIFE (full, diagonal), Schraudolph, DoE, Kozachenko-Leonenko
    tracking    d = 64, covariance halved every 1,000 steps; the KNIFE estimate traced against the truth
    triangles   mixtures of triangles with exact entropy: d = 1 (10 triangles, fitted density plot), d = 8, 20
    staircase   MI staircase, d = 20, I = 2, 4, 6, 8, 10 nats, Gaussian / cubic / uniform pairs: KNIFE (and
                ``knife_gauss``, KNIFE after a fixed marginal Gaussianisation of each variable) beside KSG, DoE,
                InfoNCE, MINE, NWJ and CLUB; bias, variance and MSE per level, estimate traces
    discrete    I(Z; S) for Gaussian class-conditional data with 2 .. 10 classes (Monte-Carlo truth)
    all         everything above

    python recipes/synthetic.py all --jobs 2       # the full protocol: 85 min wall on 2 cores
    python recipes/synthetic.py all --seeds 0 1 2 --output_dir results/synthetic
    python recipes/synthetic.py staircase --kinds gaussian --estimators knife infonce --seeds 0 --quick
    python recipes/synthetic.py report --output_dir results/synthetic    # README_section.md from the tables

Each experiment is split into independent units (a seed; a staircase kind x seed x estimator), each seeding its
own generators; ``--jobs N`` runs them in N worker processes with the same results. Without ``--seeds`` every
experiment runs its protocol seeds (``PROTOCOL_SEEDS``). Each experiment writes ``<name>.json`` (configuration, truths, per-seed rows and the summary), ``<name>.csv``
(summary: mean and std over seeds) and PNG plots into ``--output_dir``. Any non-finite loss raises
:class:`NonFiniteError` naming the method and step.
"""


from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from common.estimation import (  # noqa: E402
    Gaussianized,
    MarginalGaussianizer,
    check_finite,
    cross_entropy,
    fit_marginal,
    make_optimizer,
    seed_generator,
    train_on_stream,
)
from common.experiments import Experiment, RunRecord, finish_table, progress, run_experiments  # noqa: E402
from common.stats import error_stats  # noqa: E402
from common.synthetic_configs import (  # noqa: E402
    STAIRCASE_ESTIMATORS,
    DiscreteConfig,
    EntropyConfig,
    StaircaseConfig,
    TrackingConfig,
    TrianglesConfig,
    quick_configs,
)
from common.synthetic_report import (  # noqa: E402
    plot_tracking,
    plot_triangles,
    write_report,
    write_staircase,
)

from hf_knife.estimators import KNIFEEstimator, MarginalKernel  # noqa: E402
from hf_knife.estimators.baselines import (  # noqa: E402
    DoEEstimator,
    SchraudolphKernel,
    doe_mutual_information,
    knn_entropy,
    ksg_mutual_information,
)
from hf_knife.estimators.variational import VARIATIONAL_ESTIMATORS  # noqa: E402
from hf_knife.synthetic import (  # noqa: E402
    PAIR_KINDS,
    CorrelatedPairSampler,
    GaussianMixtureClassSampler,
    GaussianSampler,
    TriangleMixtureSampler,
    halving_schedule_entropies,
)

EXPERIMENTS = ("entropy", "tracking", "triangles", "staircase", "discrete")


# ----------------------------------------------------------------------------------------------------------------
# experiments: units (common.experiments) return rows; finish steps summarise them, write the tables, draw the plots


def entropy_unit(cfg: EntropyConfig, seed: int) -> dict:
    rows = []
    for dim in cfg.dims:
        sampler = GaussianSampler(dim)
        truth = sampler.entropy
        torch.manual_seed(seed)
        train_gen, eval_gen = seed_generator(seed, 1), seed_generator(seed, 2)
        batches = sampler.sample(cfg.steps * cfg.batch_size, train_gen).view(cfg.steps, cfg.batch_size, dim)
        x_eval = sampler.sample(cfg.eval_samples, eval_gen)
        for method in cfg.methods:
            start = time.perf_counter()
            if method.startswith("knife_"):
                kernel = MarginalKernel(dim, cfg.num_components, covariance=method.split("_", 1)[1])
                kernel.init_from_samples(batches[0])
                fit_marginal(kernel, batches, cfg.lr, cfg.final_lr_fraction, method, cfg.tril_lr_factor)
                estimate = cross_entropy(kernel, x_eval)
            elif method == "schraudolph":  # centres at the first batch, bandwidths fitted on the others
                kernel = SchraudolphKernel(dim, cfg.num_components).init_from_samples(batches[0][: cfg.num_components])
                fit_marginal(kernel, batches[1:], cfg.schraudolph_lr, cfg.final_lr_fraction, method)
                estimate = cross_entropy(kernel, x_eval)
            elif method == "doe":  # closed-form Gaussian fit on all training samples
                kernel = DoEEstimator(dim).init_from_samples(batches.reshape(-1, dim))  # [steps * B, d]
                estimate = cross_entropy(kernel, x_eval)
            elif method == "knn":
                estimate = knn_entropy(x_eval.numpy(), k=cfg.knn_k)
            else:
                raise ValueError(f"unknown entropy method {method!r}")
            estimate = check_finite(estimate, method, cfg.steps)
            rows.append(dict(dim=dim, method=method, seed=seed, truth=truth, estimate=estimate,
                             error=estimate - truth, seconds=time.perf_counter() - start))  # fmt: skip
    return {"rows": rows}


def entropy_finish(cfg: EntropyConfig, seeds: list[int], outputs: list[dict], output_dir: Path) -> dict:
    keys, values = ["dim", "method"], ["truth", "estimate", "error", "seconds"]
    return {"summary": finish_table("entropy", cfg, seeds, outputs, output_dir, keys, values, sort=("dim", "seed"))}


def tracking_unit(cfg: TrackingConfig, seed: int) -> dict:
    truths = halving_schedule_entropies(cfg.dim, cfg.num_phases)
    torch.manual_seed(seed)
    gen = seed_generator(seed, 3)
    kernel = MarginalKernel(cfg.dim, cfg.num_components, covariance=cfg.covariance)
    kernel.init_from_samples(torch.randn(cfg.batch_size, cfg.dim, generator=gen))
    optimizer, _ = make_optimizer(kernel, cfg.lr, 1, 1.0, cfg.tril_lr_factor)  # constant rate
    trace, rows = [], []
    bar = progress(cfg.num_phases * cfg.steps_per_phase, f"tracking seed {seed}")
    for phase in range(cfg.num_phases):
        sampler = GaussianSampler(cfg.dim, scale=0.5 ** (phase / 2))  # covariance 2^-phase I
        for step in range(cfg.steps_per_phase):
            loss = kernel(sampler.sample(cfg.batch_size, gen))  # estimate on the fresh batch, before the update
            trace.append(check_finite(loss, "tracking", phase * cfg.steps_per_phase + step))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            bar.update()
        tail = np.array(trace[-max(1, cfg.steps_per_phase // 5) :])  # last 20% of the phase
        rows.append(dict(seed=seed, phase=phase, truth=truths[phase], estimate=float(tail.mean()),
                         error=float(tail.mean()) - truths[phase]))  # fmt: skip
    bar.close()
    return {"rows": rows, "trace": trace}


def tracking_finish(cfg: TrackingConfig, seeds: list[int], outputs: list[dict], output_dir: Path) -> dict:
    truths = halving_schedule_entropies(cfg.dim, cfg.num_phases)
    summary = finish_table("tracking", cfg, seeds, outputs, output_dir, ["phase"], ["truth", "estimate", "error"],
                           truths=truths)  # fmt: skip
    plot_tracking(output_dir, cfg, truths, np.array([o["trace"] for o in outputs]), len(seeds))
    return {"summary": summary}


def triangles_unit(cfg: TrianglesConfig, seed: int, plot: bool = False) -> dict:
    """Rows for every setting; with ``plot``, also the fitted and true 1-D densities on a grid."""
    rows, curves = [], None
    for dim, num_triangles in cfg.settings:
        torch.manual_seed(seed)
        sampler = TriangleMixtureSampler(dim, num_triangles, seed=seed)
        truth = sampler.entropy
        train_gen, eval_gen = seed_generator(seed, 4), seed_generator(seed, 5)
        batches = sampler.sample(cfg.steps * cfg.batch_size, train_gen).view(cfg.steps, cfg.batch_size, dim)
        x_eval = sampler.sample(cfg.eval_samples, eval_gen)
        kernel = MarginalKernel(dim, cfg.num_components, covariance=cfg.covariance)
        kernel.init_from_samples(batches[0])
        fit_marginal(kernel, batches, cfg.lr, cfg.final_lr_fraction, f"knife triangles d={dim}")
        estimates = {
            "knife": cross_entropy(kernel, x_eval),
            "doe": cross_entropy(DoEEstimator(dim).init_from_samples(batches.reshape(-1, dim)), x_eval),
            "knn": knn_entropy(x_eval.numpy(), k=cfg.knn_k),
        }
        for method, estimate in estimates.items():
            estimate = check_finite(estimate, method, cfg.steps)
            rows.append(dict(dim=dim, num_triangles=num_triangles, method=method, seed=seed, truth=truth,
                             estimate=estimate, error=estimate - truth))  # fmt: skip
        if plot and dim == 1 and curves is None:
            grid = torch.linspace(-0.3, num_triangles + 0.3, 4000)  # [G]
            with torch.no_grad():
                fitted = kernel.log_prob(grid.view(-1, 1)).exp()  # [G]
            curves = dict(grid=grid.tolist(), fitted=fitted.tolist(), true=sampler.log_prob_1d(grid).exp().tolist(),
                          num_triangles=num_triangles, seed=seed)  # fmt: skip
    return {"rows": rows, "curves": curves}


def triangles_finish(cfg: TrianglesConfig, seeds: list[int], outputs: list[dict], output_dir: Path) -> dict:
    summary = finish_table("triangles", cfg, seeds, outputs, output_dir, ["dim", "num_triangles", "method"],
                           ["truth", "estimate", "error"], sort=("dim", "seed"))  # fmt: skip
    curves = next((o["curves"] for o in outputs if o.get("curves")), None)
    if curves is not None:
        plot_triangles(output_dir, cfg, curves)
    return {"summary": summary}


def _make_mi_estimator(name: str, cfg: StaircaseConfig, x0: torch.Tensor, y0: torch.Tensor, reference=None):
    if name == "knife_gauss":
        gx, gy = MarginalGaussianizer(reference[0]), MarginalGaussianizer(reference[1])
        model, optimizer = _make_mi_estimator("knife", cfg, gx(x0), gy(y0))
        return Gaussianized(model, gx, gy), optimizer
    if name == "knife":
        model = KNIFEEstimator(cfg.dim, cond_dim=cfg.dim, num_components=cfg.num_components,
                               covariance=cfg.covariance, hidden_dims=cfg.knife_hidden)  # fmt: skip
        model.init_from_samples(x0, y0)
        return model, torch.optim.Adam(model.parameters(), lr=cfg.knife_lr)
    kwargs = {"ema_rate": cfg.mine_ema_rate} if name == "mine" else {}
    model = VARIATIONAL_ESTIMATORS[name](cfg.dim, cfg.dim, hidden_dims=cfg.critic_hidden, **kwargs)
    return model, torch.optim.Adam(model.parameters(), lr=cfg.critic_lr)


def _staircase_estimators(cfg: StaircaseConfig) -> tuple[list[str], list[str]]:
    """``(trained, closed_form)`` estimator names of the configuration, checked."""
    unknown = set(cfg.estimators) - set(STAIRCASE_ESTIMATORS)
    if unknown:
        raise ValueError(f"unknown staircase estimators {sorted(unknown)}; choose from {STAIRCASE_ESTIMATORS}")
    trained = [e for e in cfg.estimators if e in ("knife", "knife_gauss", *VARIATIONAL_ESTIMATORS)]
    return trained, [e for e in cfg.estimators if e in ("ksg", "doe")]


def staircase_unit(cfg: StaircaseConfig, kind: str, seed: int, estimator: str) -> dict:
    """One trained estimator through all levels on one seed's stream, or (``estimator="closed_form"``) KSG and DoE
    once per level on fresh samples. Returns rows and, for a trained estimator, the per-step trace."""
    samplers = [CorrelatedPairSampler(kind, cfg.dim, mi) for mi in cfg.levels]
    truths = [s.mutual_information for s in samplers]
    if estimator == "closed_form":
        rows = []
        for name in _staircase_estimators(cfg)[1]:
            for level, (sampler, truth) in enumerate(zip(samplers, truths, strict=True)):
                x, y = sampler.sample(cfg.ksg_samples, seed_generator(seed, 100 + level))
                start = time.perf_counter()
                if name == "ksg":
                    estimate = ksg_mutual_information(x.numpy(), y.numpy(), k=cfg.ksg_k)
                else:
                    estimate = doe_mutual_information(x, y)
                estimate = check_finite(estimate, f"{kind}/{name}", level)
                rows.append(dict(kind=kind, estimator=name, seed=seed, level=cfg.levels[level], truth=truth,
                                 estimate=estimate, bias=estimate - truth, variance=None,
                                 mse=(estimate - truth) ** 2, seconds=time.perf_counter() - start))  # fmt: skip
        return {"rows": rows}

    n, burn = cfg.steps_per_level, int(cfg.burn_in_fraction * cfg.steps_per_level)
    gen = seed_generator(seed, 6)
    # one stream of batches per level, the same for every estimator of this seed
    level_batches = [s.sample(n * cfg.batch_size, gen) for s in samplers]  # per level: ([n*B, d], [n*B, d])
    torch.manual_seed(seed)
    x0, y0 = level_batches[0][0][: cfg.batch_size], level_batches[0][1][: cfg.batch_size]
    reference = tuple(v[: cfg.reference_samples] for v in level_batches[0])  # the first batches seen
    model, optimizer = _make_mi_estimator(estimator, cfg, x0, y0, reference)
    start = time.perf_counter()
    with progress(len(cfg.levels) * n, f"{kind} {estimator} seed {seed}") as bar:
        trace = train_on_stream(model, optimizer, level_batches, cfg.batch_size, f"{kind}/{estimator}", bar.update)
    seconds = time.perf_counter() - start
    rows = []
    for level, truth in enumerate(truths):
        values = trace[level * n : (level + 1) * n].astype(np.float64)
        stats, stats_all = error_stats(values[burn:], truth), error_stats(values, truth)
        rows.append(dict(kind=kind, estimator=estimator, seed=seed, level=cfg.levels[level], truth=truth,
                         estimate=float(values[burn:].mean()), **stats, bias_all_steps=stats_all["bias"],
                         mse_all_steps=stats_all["mse"], seconds=seconds / len(truths)))  # fmt: skip
    return {"rows": rows, "trace": trace}


def staircase_units(cfg: StaircaseConfig, seeds: list[int]) -> list[tuple]:
    trained, closed = _staircase_estimators(cfg)
    names = trained + (["closed_form"] if closed else [])
    return [(kind, seed, name) for kind in cfg.kinds for seed in seeds for name in names]


def staircase_finish(cfg: StaircaseConfig, seeds: list[int], outputs: list[dict], output_dir: Path) -> dict:
    results = {}
    for kind in cfg.kinds:
        truths = [CorrelatedPairSampler(kind, cfg.dim, mi).mutual_information for mi in cfg.levels]
        rows = [r for o in outputs for r in o["rows"] if r["kind"] == kind]
        traces: dict[str, list] = {}  # estimator -> per seed (in seed order) [levels * steps_per_level]
        for o in outputs:
            if "trace" in o and o["rows"][0]["kind"] == kind:
                traces.setdefault(o["rows"][0]["estimator"], []).append(o["trace"])
        results[kind] = write_staircase(output_dir, cfg, kind, seeds, truths, rows, traces, STAIRCASE_ESTIMATORS)
    return results


def discrete_unit(cfg: DiscreteConfig, seed: int) -> dict:
    rows = []
    for num_classes in cfg.class_counts:
        torch.manual_seed(seed)
        sampler = GaussianMixtureClassSampler(num_classes, cfg.dim, cfg.separation, seed=seed)
        truth = sampler.mutual_information(cfg.truth_samples, seed=10_000 + seed)
        gen, eval_gen = seed_generator(seed, 7), seed_generator(seed, 8)
        model = KNIFEEstimator(cfg.dim, num_classes=num_classes, num_components=cfg.num_components,
                               covariance=cfg.covariance)  # fmt: skip
        z0, s0 = sampler.sample(cfg.batch_size * 4, gen)
        model.init_from_samples(z0, s0)
        optimizer, scheduler = make_optimizer(model, cfg.lr, cfg.steps, cfg.final_lr_fraction, cfg.tril_lr_factor)
        for step in range(cfg.steps):
            z, s = sampler.sample(cfg.batch_size, gen)
            out = model(z, s)
            check_finite(out.loss, f"discrete C={num_classes}", step)
            optimizer.zero_grad(set_to_none=True)
            out.loss.backward()
            optimizer.step()
            scheduler.step()
        z, s = sampler.sample(cfg.eval_samples, eval_gen)
        with torch.no_grad():
            marginal_nll, conditional_nll = model.pointwise(z, s)  # [N], [N]
        estimates = {"knife": float((marginal_nll - conditional_nll).mean()), "doe": doe_mutual_information(z, s)}
        for method, estimate in estimates.items():
            estimate = check_finite(estimate, method, cfg.steps)
            rows.append(dict(num_classes=num_classes, method=method, seed=seed, truth=truth.value,
                             truth_stderr=truth.stderr, estimate=estimate, error=estimate - truth.value))  # fmt: skip
    return {"rows": rows}


def discrete_finish(cfg: DiscreteConfig, seeds: list[int], outputs: list[dict], output_dir: Path) -> dict:
    keys, values = ["num_classes", "method"], ["truth", "truth_stderr", "estimate", "error"]
    return {"summary": finish_table("discrete", cfg, seeds, outputs, output_dir, keys, values,
                                    sort=("num_classes", "seed"))}  # fmt: skip


# ----------------------------------------------------------------------------------------------------------------
# driver

_STAIRCASE_UNIT_COST = {"knife": 180.0, "knife_gauss": 180.0, "club": 10.0, "closed_form": 30.0}
EXPERIMENT_REGISTRY: dict[str, Experiment] = {
    "entropy": Experiment(EntropyConfig, entropy_unit, entropy_finish, cost=lambda args: 14.0),
    "tracking": Experiment(TrackingConfig, tracking_unit, tracking_finish, cost=lambda args: 70.0),
    "triangles": Experiment(TrianglesConfig, triangles_unit, triangles_finish, cost=lambda args: 13.0,
                            units=lambda cfg, seeds: [(seed, seed == seeds[0]) for seed in seeds]),  # fmt: skip
    "staircase": Experiment(StaircaseConfig, staircase_unit, staircase_finish, units=staircase_units,
                            cost=lambda args: _STAIRCASE_UNIT_COST.get(args[2], 105.0)),  # fmt: skip
    "discrete": Experiment(DiscreteConfig, discrete_unit, discrete_finish, cost=lambda args: 10.0),
}
# seeds of the full protocol (`all` without --seeds); the staircase costs ~14 core-minutes per (kind, seed)
PROTOCOL_SEEDS = {"entropy": 20, "tracking": 20, "triangles": 20, "staircase": 3, "discrete": 20}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("experiment", choices=[*EXPERIMENTS, "all", "report"],
                        help="an experiment, all of them, or 'report' (render README_section.md from the tables)")
    parser.add_argument("--seeds", type=int, nargs="+",
                        help=f"seeds of every experiment (default: the protocol's first N seeds, N = {PROTOCOL_SEEDS})")
    parser.add_argument("--quick", action="store_true", help="small sizes (seconds per experiment)")
    parser.add_argument("--output_dir", type=Path, default=Path("results/synthetic"))
    parser.add_argument("--kinds", nargs="+", choices=PAIR_KINDS, help="staircase: pair kinds (default all)")
    parser.add_argument("--estimators", nargs="+", choices=STAIRCASE_ESTIMATORS, help="staircase: estimators")
    parser.add_argument("--steps_per_level", type=int, help="staircase: override the steps per level")
    parser.add_argument("--levels", type=float, nargs="+", help="staircase: override the MI levels (nats)")
    parser.add_argument("--tag", default="", help="staircase: suffix of the output file names")
    parser.add_argument("--dims", type=int, nargs="+", help="entropy: override the dimensions")
    parser.add_argument("--jobs", type=int, default=1, help="worker processes; units (seeds, staircase estimators) "
                        "are spread over them (default 1: in-process)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process (default 1)")
    args = parser.parse_args(argv)
    if args.jobs < 1 or args.threads < 1:
        parser.error(f"--jobs and --threads must be >= 1, got {args.jobs} and {args.threads}")
    return args  # fmt: skip


def configure(args: argparse.Namespace) -> dict[str, object]:
    """The configuration of every requested experiment, with the command line's overrides."""
    quick = quick_configs() if args.quick else {}
    configs = {}
    for name in list(EXPERIMENTS) if args.experiment == "all" else [args.experiment]:
        cfg = quick.get(name, EXPERIMENT_REGISTRY[name].config_cls())
        if name == "staircase":
            cfg.kinds = tuple(args.kinds) if args.kinds else cfg.kinds
            cfg.estimators = tuple(args.estimators) if args.estimators else cfg.estimators
            cfg.steps_per_level = args.steps_per_level or cfg.steps_per_level
            cfg.levels = tuple(args.levels) if args.levels else cfg.levels
            cfg.tag = args.tag or cfg.tag
            _staircase_estimators(cfg)  # unknown names fail now, not after the other experiments
        if name == "entropy" and args.dims:
            cfg.dims = tuple(args.dims)
        configs[name] = cfg
    return configs


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.experiment == "report":
        print(f"[synthetic] wrote {write_report(args.output_dir, EXPERIMENTS, PROTOCOL_SEEDS)}")
        return {}
    configs = configure(args)
    seeds = {name: list(args.seeds) if args.seeds else list(range(PROTOCOL_SEEDS[name])) for name in configs}
    record = RunRecord(" ".join(["python recipes/synthetic.py", *(argv if argv is not None else sys.argv[1:])]),
                       list(configs), seeds, args.quick, args.jobs, args.threads)  # fmt: skip
    start = time.perf_counter()
    results, record.seconds = run_experiments(EXPERIMENT_REGISTRY, configs, seeds, args.output_dir, args.jobs,
                                              args.threads)  # fmt: skip
    record.wall_seconds = round(time.perf_counter() - start, 1)
    print(f"[synthetic] done in {record.wall_seconds:.0f} s wall ({args.jobs} process(es)) -> {args.output_dir}")
    record.append_to(args.output_dir)
    return results


if __name__ == "__main__":
    main()
