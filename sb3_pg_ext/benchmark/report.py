"""
The report, computed from the store alone: per env, the final return (mean of each finished cell's final
evaluation episodes, one score per seed) of each algorithm as IQM with a 95% stratified-bootstrap confidence interval
(rliable's ``get_interval_estimates``, percentile method, ``REPS`` resamples, numpy's global generator seeded 0
for the call), next to the mean +- std over seeds. A first cut of issue 10's report: normalised aggregates,
probability of improvement, throughput relative to PPO and the plots are still to come.
"""

from __future__ import annotations

import warnings
from collections import defaultdict
from typing import Any

import numpy as np

from sb3_pg_ext.benchmark.store import FINISHED, ResultStore

REPS = 2000
CONFIDENCE = 0.95


def final_scores(store: ResultStore) -> dict[str, dict[str, dict[int, float]]]:
    """env -> algo -> seed -> final mean return, over the store's finished cells."""
    scores: dict[str, dict[str, dict[int, float]]] = defaultdict(lambda: defaultdict(dict))
    for record in store.records():
        if record["status"] == FINISHED:
            scores[record["env"]][record["algo"]][int(record["seed"])] = float(record["final"]["mean"])
    return {env: dict(algos) for env, algos in scores.items()}


def iqm_intervals(per_algo: dict[str, list[float]], reps: int = REPS, seed: int = 0) -> dict[str, dict[str, Any]]:
    """algo -> {iqm, low, high, mean, std, n}: rliable's IQM and stratified-bootstrap CI over one env's seeds."""
    from rliable import library as rly
    from rliable import metrics

    score_dict = {algo: np.asarray(values, dtype=np.float64).reshape(-1, 1) for algo, values in per_algo.items()}
    # rliable 1.2's StratifiedBootstrap draws its indices from numpy's global generator (np.random.choice) and
    # ignores random_state for them: seed the global generator for the call and restore it afterwards
    saved_state = np.random.get_state()  # noqa: NPY002
    np.random.seed(seed)  # noqa: NPY002
    try:
        with warnings.catch_warnings():  # arch (under rliable) deprecates the random_state that rliable passes it
            warnings.simplefilter("ignore", FutureWarning)
            points, intervals = rly.get_interval_estimates(
                score_dict,
                lambda scores: np.array([metrics.aggregate_iqm(scores)]),
                reps=reps,
                confidence_interval_size=CONFIDENCE,
                random_state=np.random.RandomState(seed),
            )
    finally:
        np.random.set_state(saved_state)  # noqa: NPY002
    return {
        algo: {
            "iqm": float(points[algo][0]),
            "low": float(intervals[algo][0][0]),
            "high": float(intervals[algo][1][0]),
            "mean": float(score_dict[algo].mean()),
            "std": float(score_dict[algo].std()),
            "n": int(score_dict[algo].size),
        }
        for algo in score_dict
    }


def markdown_table(store: ResultStore) -> str:
    """One markdown table per env: algo | seeds | IQM [95% CI] | mean +- std."""
    lines: list[str] = []
    for env, algos in sorted(final_scores(store).items()):
        stats = iqm_intervals({algo: [seeds[s] for s in sorted(seeds)] for algo, seeds in sorted(algos.items())})
        lines += [f"### {env}", "", "| algo | seeds | IQM [95% CI] | mean +- std |", "|---|---|---|---|"]
        for algo, s in stats.items():
            lines.append(
                f"| {algo} | {s['n']} | {s['iqm']:.1f} [{s['low']:.1f}, {s['high']:.1f}] | {s['mean']:.1f} +- {s['std']:.1f} |"
            )
        lines.append("")
    return "\n".join(lines) if lines else "(no finished cells)"


__all__ = ["CONFIDENCE", "REPS", "final_scores", "iqm_intervals", "markdown_table"]
