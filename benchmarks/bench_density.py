"""Speed and peak memory of the KNIFE density, forward + backward: hf_knife's GEMM path vs a naive broadcast.

Each (implementation, configuration) runs in a fresh subprocess, so peak memory is that process's own:
``torch.cuda.max_memory_allocated`` on a GPU, the growth of peak RSS (``ru_maxrss``) over the baseline after
the inputs were allocated on a CPU. Times are the median of ``--repeats`` forward + backward passes after a
warm-up. Both implementations of one configuration run back to back, so their ratio is measured side by side.

    python benchmarks/bench_density.py                  # CPU grid (a few minutes)
    python benchmarks/bench_density.py --device cuda    # GPU grid, up to B=4096, K=1024, d=768
    python benchmarks/bench_density.py --quick          # tiny grid, seconds
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time

# (covariance, B, K, d)
CPU_GRID = [
    ("diagonal", 256, 128, 768),
    ("diagonal", 1024, 1024, 768),
    ("diagonal", 4096, 512, 768),
    ("diagonal", 4096, 1024, 768),
    ("low_rank", 1024, 1024, 768),
    ("full", 256, 128, 64),
    ("full", 1024, 128, 64),
    ("full", 256, 128, 768),
]
GPU_GRID = [
    ("diagonal", 4096, 512, 768),
    ("diagonal", 1024, 1024, 768),
    ("diagonal", 4096, 1024, 768),
    ("low_rank", 4096, 1024, 768),
    ("full", 4096, 512, 64),
    ("full", 256, 128, 768),
    ("full", 4096, 512, 768),
]
QUICK_GRID = [("diagonal", 64, 32, 16), ("full", 32, 8, 16), ("low_rank", 64, 32, 16)]


def naive_log_prob(x, loc, log_diag, logits, tril, factor):
    """The textbook broadcast: ``[B, K, d]`` differences, ``[B, K, d, d]`` matrices for ``full``."""
    import torch

    d = x.shape[-1]
    diff = x[:, None, :] - loc[None]  # [B, K, d]
    if tril is not None:
        a = (torch.eye(d, device=x.device) + torch.tril(tril, -1)) * log_diag.exp()[:, None, :]  # [K, d, d]
        y = torch.matmul(a[None], diff[..., None]).squeeze(-1)  # [B, K, d] via a broadcast [B, K, d, d]
        quad = y.square().sum(-1)
        half_log_det = log_diag.sum(-1)
    else:
        quad = (diff * log_diag.exp()[None]).square().sum(-1)  # [B, K]
        half_log_det = log_diag.expand_as(loc).sum(-1)
        if factor is not None:
            quad = quad + torch.einsum("bkd,kdr->bkr", diff, factor).square().sum(-1)
            r = factor.shape[-1]
            scaled = factor * (-log_diag).exp()[..., None]
            cap = torch.eye(r, device=x.device) + scaled.transpose(-1, -2) @ scaled
            half_log_det = half_log_det + 0.5 * torch.logdet(cap)
    comp = half_log_det - 0.5 * quad - 0.5 * d * math.log(2 * math.pi)
    return torch.logsumexp(torch.log_softmax(logits, -1) + comp, -1)


def needed_bytes_naive(cov: str, b: int, k: int, d: int) -> int:
    if cov == "full":
        return 4 * b * k * d * d * 3  # the broadcast [B, K, d, d] tensor, its product and a gradient
    return 4 * b * k * d * (5 if cov == "diagonal" else 6)  # measured: ~5 (~6) [B, K, d] tensors alive at peak


def run_one(impl: str, cov: str, b: int, k: int, d: int, device: str, repeats: int) -> dict:
    import torch

    from hf_knife.estimators.functional import mixture_log_prob

    torch.manual_seed(0)
    dev = torch.device(device)
    rank = 16
    x = torch.randn(b, d, device=dev) + 3.0
    params = {
        "loc": torch.randn(k, d, device=dev),
        "log_diag": 0.1 * torch.randn(k, d, device=dev),
        "logits": torch.zeros(k, device=dev),
        "tril": 0.01 * torch.randn(k, d, d, device=dev) if cov == "full" else None,
        "factor": 0.01 * torch.randn(k, d, rank, device=dev) if cov == "low_rank" else None,
    }
    leaves = [t.requires_grad_() for t in params.values() if t is not None]
    x.requires_grad_()

    def step():
        if impl == "naive":
            value = naive_log_prob(x, *params.values())
        else:
            value = mixture_log_prob(x, params["loc"], params["log_diag"], params["logits"],
                                     tril=params["tril"], factor=params["factor"])  # fmt: skip
        torch.autograd.grad(value.mean(), [x, *leaves])

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    step()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - start)
    if dev.type == "cuda":
        peak = torch.cuda.max_memory_allocated() - base
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    return {"ms": 1000 * statistics.median(times), "peak_gb": peak / 1e9}


def spawn(impl, cov, b, k, d, device, repeats, timeout) -> dict:
    cmd = [sys.executable, __file__, "--child", impl, cov, str(b), str(k), str(d), "--device", device,
           "--repeats", str(repeats)]  # fmt: skip
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timeout>{timeout}s"}
    if out.returncode != 0:
        tail = (out.stderr.strip().splitlines() or ["?"])[-1]
        return {"error": "out of memory" if "memory" in tail.lower() or out.returncode == -9 else tail[:80]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument(
        "--naive_memory_limit_gb",
        type=float,
        default=12.0,
        help="skip the naive path where it would need more than this (it would only swap or die)",
    )
    parser.add_argument("--timeout", type=int, default=600)
    parser.add_argument("--child", nargs=5, metavar=("IMPL", "COV", "B", "K", "D"))
    args = parser.parse_args()

    if args.child:
        impl, cov, b, k, d = args.child
        torch_threads = os.environ.get("BENCH_THREADS")
        if torch_threads:
            import torch

            torch.set_num_threads(int(torch_threads))
        print(json.dumps(run_one(impl, cov, int(b), int(k), int(d), args.device, args.repeats)))
        return

    grid = QUICK_GRID if args.quick else GPU_GRID if args.device.startswith("cuda") else CPU_GRID
    header = f"{'covariance':<10} {'B':>5} {'K':>5} {'d':>4} | {'naive ms':>9} {'naive GB':>9} | {'knife ms':>9} {'knife GB':>9} | {'speed-up':>8} {'mem ratio':>9}"
    print(f"device={args.device}  repeats={args.repeats}  (forward + backward, fp32)")
    print(header)
    print("-" * len(header))
    rows = []
    for cov, b, k, d in grid:
        ours = spawn("knife", cov, b, k, d, args.device, args.repeats, args.timeout)
        needed = needed_bytes_naive(cov, b, k, d) / 1e9
        if needed > args.naive_memory_limit_gb and not args.device.startswith("cuda"):
            naive = {"error": f"skipped (needs ~{needed:.0f} GB)"}
        else:
            naive = spawn("naive", cov, b, k, d, args.device, args.repeats, args.timeout)

        def fmt(result, key, width=9):
            return f"{result[key]:>{width}.2f}" if key in result else f"{'-':>{width}}"

        speed = f"{naive['ms'] / ours['ms']:>7.1f}x" if "ms" in naive and "ms" in ours else f"{'-':>8}"
        memory = (f"{naive['peak_gb'] / max(ours['peak_gb'], 1e-3):>8.1f}x" if "peak_gb" in naive and "peak_gb" in ours
                  else f"{'-':>9}")  # fmt: skip
        note = "  ".join(r["error"] for r in (naive, ours) if "error" in r)
        print(f"{cov:<10} {b:>5} {k:>5} {d:>4} | {fmt(naive, 'ms')} {fmt(naive, 'peak_gb')} | {fmt(ours, 'ms')} "
              f"{fmt(ours, 'peak_gb')} | {speed} {memory}  {note}", flush=True)  # fmt: skip
        rows.append({"covariance": cov, "B": b, "K": k, "d": d, "naive": naive, "knife": ours})
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
