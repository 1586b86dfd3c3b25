"""The experiment runner of ``recipes/synthetic.py``: independent units spread over worker processes.

An experiment is split into independent *units* (a seed, or a (kind, seed, estimator) of the staircase) that return
rows, and a *finish* step that summarises the rows of all units, writes the tables and draws the plots. Units are what
``--jobs`` spreads over worker processes; a unit's result does not depend on where it ran (each seeds its own
generators). Units of every requested experiment go to one pool (costliest first); each experiment finishes when its
units are done.
"""

from __future__ import annotations

import json
import multiprocessing
import time
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .reporting import write_frame, write_json
from .stats import summarise


@dataclass(frozen=True)
class Experiment:
    config_cls: type
    unit: Callable[..., dict]  # unit(cfg, *args) -> {"rows": [...], ...}
    finish: Callable[[object, list[int], list[dict], Path], dict]
    units: Callable[[object, list[int]], list[tuple]] = lambda cfg, seeds: [(seed,) for seed in seeds]
    cost: Callable[[tuple], float] = lambda args: 1.0  # relative core-seconds of a unit, for scheduling


_SHOW_UNIT_PROGRESS = True  # per-unit step bars; off in worker processes, where only the parent's bar shows


def progress(total: int, desc: str) -> tqdm:
    """A step bar for one unit (silent in worker processes)."""
    return tqdm(total=total, desc=desc, leave=False, mininterval=2, disable=not _SHOW_UNIT_PROGRESS)


def _init_worker(threads: int) -> None:
    global _SHOW_UNIT_PROGRESS
    _SHOW_UNIT_PROGRESS = False
    torch.set_num_threads(threads)


def _timed_unit(unit: Callable[..., dict], cfg: object, args: tuple) -> dict:
    start = time.perf_counter()
    result = unit(cfg, *args)
    return dict(result, seconds=time.perf_counter() - start)


class _InlineExecutor:
    """``submit`` runs at once in this process (``--jobs 1``): same code path as the worker pool."""

    def submit(self, fn: Callable, *args) -> Future:
        future: Future = Future()
        future.set_result(fn(*args))
        return future

    def __enter__(self) -> _InlineExecutor:
        return self

    def __exit__(self, *exc) -> None:
        return None


def run_experiments(
    registry: dict[str, Experiment], configs: dict[str, object], seeds: dict[str, list[int]], output_dir: Path,
    jobs: int = 1, threads: int = 1,
) -> tuple[dict, dict[str, float]]:
    """Run every unit of the experiments named in ``configs`` on ``jobs`` processes; finish each in turn.

    Returns ``(results by experiment, core-seconds by experiment)``. With ``jobs == 1`` the units run in order
    in this process; otherwise in ``jobs`` fresh (spawned) processes of ``threads`` torch threads each, the
    costliest units first. Results are identical either way: every unit seeds its own generators.
    """
    work = [(name, index, args) for name, cfg in configs.items()
            for index, args in enumerate(registry[name].units(cfg, seeds[name]))]  # fmt: skip
    if jobs > 1:
        work.sort(key=lambda item: -registry[item[0]].cost(item[2]))
        executor = ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn"),
                                       initializer=_init_worker, initargs=(threads,))  # fmt: skip
    else:
        executor = _InlineExecutor()
    results, core_seconds = {}, {}
    futures: dict[str, dict[int, Future]] = {name: {} for name in configs}
    with executor, tqdm(total=len(work), desc="synthetic units", disable=jobs == 1) as bar:
        for name, index, args in work:
            future = executor.submit(_timed_unit, registry[name].unit, configs[name], args)
            future.add_done_callback(lambda _: bar.update())
            futures[name][index] = future
        for name, cfg in configs.items():
            outputs = [futures[name][i].result() for i in sorted(futures[name])]  # unit order, whatever the schedule
            core_seconds[name] = round(sum(o["seconds"] for o in outputs), 1)
            results[name] = registry[name].finish(cfg, seeds[name], outputs, output_dir)
            print(f"[synthetic] {name}: {core_seconds[name]:.0f} core-seconds -> {output_dir}", flush=True)
    return results, core_seconds


@dataclass
class RunRecord:
    """One line of ``runs.jsonl``: the command, what it ran and what it cost."""

    command: str
    experiments: list[str]
    seeds: dict[str, list[int]]
    quick: bool
    jobs: int = 1
    threads: int = 1
    seconds: dict = field(default_factory=dict)  # core-seconds per experiment (sum over its units)
    wall_seconds: float | None = None

    def append_to(self, output_dir: Path) -> None:
        output_dir.mkdir(parents=True, exist_ok=True)
        with (output_dir / "runs.jsonl").open("a") as f:
            f.write(json.dumps(asdict(self)) + "\n")


def write_tables(output_dir: Path, name: str, payload: dict, summary: list[dict]) -> None:
    """``<name>.json`` (``payload`` and the summary) and ``<name>.csv`` (the summary)."""
    output_dir.mkdir(parents=True, exist_ok=True)
    write_json(output_dir / f"{name}.json", dict(payload, summary=summary), indent=1, default=float)
    write_frame(summary, output_dir / f"{name}.csv", float_format="%.4f")


def finish_table(
    name: str, cfg: object, seeds: list[int], outputs: list[dict], output_dir: Path, keys: list[str],
    values: list[str], sort: tuple[str, ...] | None = None, **extra: object,
) -> list[dict]:
    """The usual finish: the rows of all units (sorted by ``sort``), their mean / std over seeds per ``keys``, and
    ``<name>.json`` (config, seeds, ``extra``, rows, summary) / ``<name>.csv``. Returns the summary."""
    rows = [r for o in outputs for r in o["rows"]]
    if sort:
        rows.sort(key=lambda r: tuple(r[k] for k in sort))
    summary = summarise(rows, keys, values)
    write_tables(output_dir, name, dict(config=asdict(cfg), seeds=seeds, **extra, rows=rows), summary)
    return summary
