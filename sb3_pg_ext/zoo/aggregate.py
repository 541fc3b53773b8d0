"""
How a robust trial (``--eval-seeds K``) turns the evaluations of its K training runs into one number.

At every evaluation point each of the K runs plays ``--eval-episodes`` E episodes; the aggregate is computed over
the K x E episode returns of that point (a list of K lists, one per seed):

- ``iqm`` (default): the interquartile mean of the pooled K E returns, rliable's ``metrics.aggregate_iqm`` (the mean
  of what is left after dropping ``floor(0.25 n)`` values at each end). With K E < 4 nothing is dropped.
- ``mean``: the plain mean of the pooled returns (with K = 1, rl-zoo3's own objective).
- ``bootstrap_lower``: the lower end of a 95% percentile-bootstrap interval of the IQM, two-level: each of the
  ``BOOTSTRAP_SAMPLES`` resamples draws K seeds with replacement, then E returns with replacement from each drawn
  seed, and takes rliable's IQM of the K E drawn returns (a two-level bootstrap, which rliable's stratified
  bootstrap over runs does not offer); the result is the 2.5th percentile of those IQMs
  (``numpy.percentile``, linear interpolation). The random generator is ``numpy.random.default_rng(0)``, so the
  same returns always give the same number. Seed-to-seed spread lowers it, so a study maximising it prefers
  settings that work on every seed.
- ``worst_seed``: the lowest of the K seeds' mean returns. A study maximising it asks for a setting whose every run
  ends well (the bar of CartPole-v1's entries: each seed's final policy at 475 or more); at the last point of a
  trial it judges the K final policies of ``learn()``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from rliable.metrics import aggregate_iqm

BOOTSTRAP_SAMPLES = 1000
BOOTSTRAP_CONFIDENCE = 0.95


def _as_runs(returns: Sequence[Sequence[float]]) -> list[np.ndarray]:
    runs = [np.asarray(run, dtype=np.float64).reshape(-1) for run in returns]
    if not runs or any(run.size == 0 for run in runs):
        raise ValueError("Need at least one seed with at least one episode return")
    return runs


def interquartile_mean(returns: Sequence[Sequence[float]]) -> float:
    """IQM of the pooled episode returns of all seeds."""
    return float(aggregate_iqm(np.concatenate(_as_runs(returns))))


def pooled_mean(returns: Sequence[Sequence[float]]) -> float:
    """Mean of the pooled episode returns of all seeds."""
    return float(np.concatenate(_as_runs(returns)).mean())


def bootstrap_lower(
    returns: Sequence[Sequence[float]],
    n_samples: int = BOOTSTRAP_SAMPLES,
    confidence: float = BOOTSTRAP_CONFIDENCE,
    seed: int = 0,
) -> float:
    """Lower end of the two-level (seeds, then episodes) percentile-bootstrap interval of the IQM."""
    runs = _as_runs(returns)
    rng = np.random.default_rng(seed)
    n_runs = len(runs)
    sizes = [run.size for run in runs]
    statistics = np.empty(n_samples)
    for b in range(n_samples):
        chosen = rng.integers(n_runs, size=n_runs)
        drawn = [runs[k][rng.integers(sizes[k], size=sizes[k])] for k in chosen]
        statistics[b] = aggregate_iqm(np.concatenate(drawn))
    return float(np.percentile(statistics, 100 * (1 - confidence) / 2))


def worst_seed(returns: Sequence[Sequence[float]]) -> float:
    """The lowest of the seeds' mean returns."""
    return float(min(run.mean() for run in _as_runs(returns)))


AGGREGATES: dict[str, Callable[[Sequence[Sequence[float]]], float]] = {
    "iqm": interquartile_mean,
    "mean": pooled_mean,
    "bootstrap_lower": bootstrap_lower,
    "worst_seed": worst_seed,
}

__all__ = [
    "AGGREGATES",
    "BOOTSTRAP_CONFIDENCE",
    "BOOTSTRAP_SAMPLES",
    "bootstrap_lower",
    "interquartile_mean",
    "pooled_mean",
    "worst_seed",
]
