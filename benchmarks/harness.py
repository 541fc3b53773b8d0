"""
Measurement helpers shared by the benchmark scripts in this folder.

Rules these helpers implement (the machines are shared; one run's wall-clock varies by 15% or more):
- throughput is compared inside one script run, alternating the contenders (A, B, A, B, ...) over repetitions;
- each measurement counts env steps per CPU second of this process (``time.process_time``, one torch thread)
  next to env steps per wall-clock second;
- the figures reported are medians over repetitions, with min and max.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch as th
from stable_baselines3.common.base_class import BaseAlgorithm

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def single_thread() -> None:
    """One torch thread, so CPU seconds measure the algorithm, not thread spinning."""
    th.set_num_threads(1)


@dataclass
class Throughput:
    name: str
    steps_per_cpu_second: list[float] = field(default_factory=list)
    steps_per_wall_second: list[float] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        def stats(values: list[float]) -> dict[str, float]:
            return {"median": statistics.median(values), "min": min(values), "max": max(values)}

        return {
            "name": self.name,
            "repetitions": len(self.steps_per_cpu_second),
            "steps_per_cpu_second": stats(self.steps_per_cpu_second),
            "steps_per_wall_second": stats(self.steps_per_wall_second),
        }


def measure_throughput(
    contenders: dict[str, Callable[[], BaseAlgorithm]],
    total_timesteps: int,
    repetitions: int = 3,
    warmup_timesteps: int = 0,
) -> list[Throughput]:
    """
    Train each contender for ``total_timesteps`` env steps, alternating the contenders, ``repetitions`` times.

    :param contenders: name -> factory building a fresh model (env included); building is not timed
    :param total_timesteps: steps per timed ``learn`` call
    :param repetitions: rounds of (A, B, ...)
    :param warmup_timesteps: untimed ``learn`` steps before the timed call (JIT/allocator warm-up)
    :return: one :class:`Throughput` per contender, in the order given
    """
    single_thread()
    results = {name: Throughput(name) for name in contenders}
    for _ in range(repetitions):
        for name, factory in contenders.items():
            model = factory()
            if warmup_timesteps:
                model.learn(warmup_timesteps)
            start_steps = model.num_timesteps
            cpu0, wall0 = time.process_time(), time.perf_counter()
            model.learn(total_timesteps, reset_num_timesteps=not warmup_timesteps)
            cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
            steps = model.num_timesteps - start_steps
            results[name].steps_per_cpu_second.append(steps / cpu)
            results[name].steps_per_wall_second.append(steps / wall)
            env = model.get_env()
            if env is not None:
                env.close()
    return list(results.values())


def save_results(name: str, payload: dict[str, Any], directory: Path | None = None) -> Path:
    """Write ``<directory>/<name>.json`` (default directory: ``benchmarks/results``) and return its path."""
    directory = RESULTS_DIR if directory is None else Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.json"

    def default(obj: Any) -> Any:
        if isinstance(obj, np.generic):
            return obj.item()
        if isinstance(obj, Throughput):
            return asdict(obj)
        raise TypeError(type(obj))

    path.write_text(json.dumps(payload, indent=2, default=default) + "\n")
    return path


def markdown_throughput_table(results: list[Throughput]) -> str:
    """A README-ready table of median (min-max) throughput."""
    lines = [
        "| algorithm | env steps / CPU s (median, min-max) | env steps / wall s (median, min-max) |",
        "|---|---|---|",
    ]
    for r in results:
        s = r.summary()
        cpu, wall = s["steps_per_cpu_second"], s["steps_per_wall_second"]
        lines.append(
            f"| {r.name} | {cpu['median']:.0f} ({cpu['min']:.0f}-{cpu['max']:.0f}) "
            f"| {wall['median']:.0f} ({wall['min']:.0f}-{wall['max']:.0f}) |"
        )
    return "\n".join(lines)
