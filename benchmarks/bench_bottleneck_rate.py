"""The bottleneck's rate I(X;Z) against its exact value: the fitted kernel marginal vs the memory marginal (issue 15).

    python benchmarks/bench_bottleneck_rate.py [--steps 150] [--batch 8] [--dim 64] [--sigma 0.1]

Data: N training examples whose head means ``mu_n`` are fixed Gaussian vectors (spread 1: separated clusters, I = log N;
spread 0.02: overlapping ones), the stochastic head ``z = mu + sigma * eps`` at its initial noise ``sigma``, batches
as in low-resource fine-tuning. The truth is a Monte-Carlo average of ``log p(z|x) - log (1/N) sum_j p(z|x_j)``. The
penalty runs as under KNIFETrainer (``begin_step`` / forward / ``end_step``, 10 inner fitting steps); the estimate is
the mean logged ``knife/mutual_information`` over the last third of the steps.
"""

from __future__ import annotations

import argparse
import math
import time

import torch

from hf_knife.config import BottleneckOptions, KNIFEConfig
from hf_knife.penalties import build_penalty
from hf_knife.synthetic import gaussian_channel_mutual_information


def estimate(mu: torch.Tensor, sigma: float, options: BottleneckOptions, steps: int, batch: int, **config) -> float:
    torch.manual_seed(0)
    penalty = build_penalty(KNIFEConfig(penalty="information_bottleneck", information_bottleneck=options, **config),
                            mu.shape[1])  # fmt: skip
    penalty.init_from_samples(mu[torch.randint(0, mu.shape[0], (256,))])
    penalty.train()
    values = []
    for step in range(steps):
        penalty.begin_step(step)
        z, extra = penalty.transform(mu[torch.randint(0, mu.shape[0], (batch,))])
        values.append(float(penalty(z, **extra).metrics["mutual_information"]))
        penalty.end_step()
    tail = values[-max(1, steps // 3) :]
    return sum(tail) / len(tail)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--sigma", type=float, default=0.1)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"d={args.dim}, sigma={args.sigma}, batch {args.batch}, {args.steps} steps; nats")
    print(f"{'N':>5} {'spread':>6} {'truth':>7} {'log N':>6} | {'kernel K=16':>11} {'kernel K=128':>12} "
          f"{'memory 1024':>11} | memory error")  # fmt: skip
    for n in (25, 100):
        for spread in (1.0, 0.02):
            mu = spread * torch.randn(n, args.dim, generator=torch.Generator().manual_seed(n))
            started = time.perf_counter()
            exact = gaussian_channel_mutual_information(mu.double(), args.sigma)
            kernel16 = estimate(mu, args.sigma, BottleneckOptions(init_sigma=args.sigma), args.steps, args.batch)
            kernel128 = estimate(mu, args.sigma, BottleneckOptions(init_sigma=args.sigma), args.steps, args.batch,
                                 num_components=128)  # fmt: skip
            memory = estimate(mu, args.sigma, BottleneckOptions(init_sigma=args.sigma, marginal="memory"), args.steps,
                              args.batch)  # fmt: skip
            print(f"{n:5d} {spread:6.2f} {exact:7.3f} {math.log(n):6.3f} | {kernel16:11.2f} {kernel128:12.2f} "
                  f"{memory:11.3f} | {100 * (memory - exact) / exact:+.1f}%  ({time.perf_counter() - started:.0f} s)",
                  flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
