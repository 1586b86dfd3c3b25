"""Accuracy of the one-call API's defaults on N(0, I_d), d = 10 and 64, 25,600 samples, several seeds.

    python benchmarks/bench_api_accuracy.py [--seeds 0,1,2] [--num_samples 25600]

Prints, per dimension and method, the error against the closed form (mean and std over seeds) and the time.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import torch

import hf_knife


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--num_samples", type=int, default=25_600)
    parser.add_argument("--dims", default="10,64")
    parser.add_argument("--methods", default="knife,doe,knn")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    print(f"estimate_entropy defaults, N(0, I_d), N={args.num_samples}, seeds={seeds}")
    print(
        f"{'d':>3} {'method':<8} {'truth':>8} {'mean error':>11} {'std':>7} {'max |error|':>11} {'time/seed':>9}"
    )
    for d in (int(v) for v in args.dims.split(",")):
        truth = 0.5 * d * math.log(2 * math.pi * math.e)
        for method in args.methods.split(","):
            errors, start = [], time.perf_counter()
            for seed in seeds:
                x = torch.randn(args.num_samples, d, generator=torch.Generator().manual_seed(1000 + seed))
                errors.append(float(hf_knife.estimate_entropy(x, method=method, seed=seed)) - truth)
            spread = statistics.stdev(errors) if len(errors) > 1 else float("nan")
            print(f"{d:>3} {method:<8} {truth:>8.3f} {statistics.mean(errors):>+11.4f} {spread:>7.4f} "
                  f"{max(abs(e) for e in errors):>11.4f} {(time.perf_counter() - start) / len(seeds):>8.1f}s",
                  flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
