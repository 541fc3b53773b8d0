"""
The benchmark report, computed from the results store alone (``python -m sb3_pg_ext.benchmark report``).

A cell's score is its final return: the mean over its final evaluation's episodes, one score per seed. The report
(:func:`write_report`: ``report.md`` and PNGs) holds:

- per env: each algorithm's final return as IQM with a 95% stratified-bootstrap confidence interval, and mean +- std
  over seeds;
- the aggregate over envs: IQM with a 95% CI of the normalised final scores
  (:mod:`sb3_pg_ext.benchmark.normalisation`) over seeds x envs. The aggregate's envs are the store's envs that
  have a normalisation; an algorithm takes part only if it has finished cells on every one of them, with the seeds
  it has on all of them (the others are named in the report);
- per env: the probability of improvement of each of ``reinforce``, ``ispg``, ``ppo_kl`` and ``grpo`` over
  ``ppo``, with a 95% CI (the two algorithms' seeds resampled independently, as rliable's README does for
  algorithm pairs);
- per env: throughput relative to PPO: the median over seeds of env steps per CPU second, and per wall second, of
  each algorithm divided by PPO's;
- PNGs: a learning curve per env (x: env steps; each algorithm's IQM over seeds at each evaluation point, a seed's
  point being the mean over its evaluation episodes, with a 95% stratified-bootstrap band, seeds resampled at each
  point), and the performance profile of the normalised final scores of the aggregate (fraction of runs above each
  threshold, 95% CI band; rliable's ``create_performance_profile`` and ``plot_performance_profiles``).

Every interval is rliable's ``get_interval_estimates`` (percentile method, :data:`REPS` resamples), called once per
algorithm with its own seed, :func:`stable_seed` of (env or ``aggregate``, algorithm, statistic): an algorithm's
interval does not depend on which other algorithms share the table, and the same store always gives the same report.
rliable 1.2 draws its bootstrap indices from numpy's global generator whatever ``random_state`` it is given, so every
rliable call goes through :func:`seeded_global_rng`: the generator is seeded for the call and restored after it.

A store with damaged files (:class:`~sb3_pg_ext.benchmark.store.DamagedRecordError`) gives no report: the first one
is raised, and the command line names them all.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import re
import statistics
import warnings
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sb3_pg_ext.benchmark.normalisation import SCORE_RANGES, normalise
from sb3_pg_ext.benchmark.store import FAILED, FINISHED, ResultStore

#: Bootstrap resamples of every interval of the report.
REPS = 2000
#: Coverage of every interval of the report.
CONFIDENCE = 0.95
#: The base seed of the bootstrap; each rliable call is seeded with :func:`stable_seed` of it.
SEED = 0
#: The task name of the normalised aggregate over envs in :func:`stable_seed`.
AGGREGATE = "aggregate"
#: The algorithm the others are compared with (probability of improvement, throughput).
BASELINE = "ppo"
#: The package's algorithms, whose probability of improvement over :data:`BASELINE` the report gives.
CHALLENGERS = ("reinforce", "ispg", "ppo_kl", "grpo")
#: File name of the markdown report in the output directory.
REPORT_FILE = "report.md"
#: File name of the performance-profile plot.
PROFILE_FILE = "performance_profile.png"

#: env -> algo -> seed -> final return (the mean of the cell's final evaluation episodes)
Scores = dict[str, dict[str, dict[int, float]]]


# ---------------------------------------------------------------------------------------------------------- statistics


@contextlib.contextmanager
def seeded_global_rng(seed: int = SEED) -> Iterator[None]:
    """
    Seed numpy's global generator for the block and restore its state afterwards.

    rliable 1.2's ``StratifiedBootstrap`` and ``StratifiedIndependentBootstrap`` draw their indices with
    ``np.random.choice`` and ignore ``random_state`` for them, and ``create_performance_profile`` takes no random
    state at all: this makes every rliable call of the report deterministic without changing the caller's global
    random state. The ``FutureWarning`` of arch (under rliable) about the ``random_state`` that rliable passes it
    is silenced in the block.

    :param seed: the seed of the global generator in the block
    """
    saved_state = np.random.get_state()  # noqa: NPY002
    np.random.seed(seed)  # noqa: NPY002
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            yield
    finally:
        np.random.set_state(saved_state)  # noqa: NPY002


def stable_seed(seed: int, *parts: str) -> int:
    """
    A seed in ``[0, 2**32)`` derived from ``seed`` and ``parts`` (e.g. env, algorithm, statistic) by SHA-256: the same
    on every run, platform and Python (unlike ``hash``), and unrelated for different parts.

    :param seed: the base seed
    :param parts: what the seeded computation is for
    :return: the derived seed
    """
    text = "\x1f".join([str(seed), *parts])
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:4], "little")


def interval_estimates(
    score_dict: Mapping[str, np.ndarray | Sequence[np.ndarray]],
    func: Callable[..., np.ndarray],
    reps: int = REPS,
    seed: int = SEED,
    task: str = "",
    statistic: str = "",
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """
    rliable's ``get_interval_estimates`` (percentile method, :data:`CONFIDENCE` coverage), called once per name of
    ``score_dict``, seeded with ``stable_seed(seed, task, name, statistic)``: a name's interval depends on its own
    scores only, not on the other names of the call.

    :param score_dict: name -> scores of shape ``(runs, tasks, ...)`` (stratified bootstrap over runs), or a
        sequence of such arrays (each resampled independently; e.g. an algorithm pair)
    :param func: the statistic, returning a 1D array
    :param reps: bootstrap resamples
    :param seed: base seed of numpy's global generator (and of the ``random_state``) for each call
    :param task: what the scores are of (the env, or :data:`AGGREGATE`), part of each name's seed
    :param statistic: the statistic's name, part of each name's seed
    :return: (point estimates, intervals of shape ``(2, ...)``: lower row, upper row), per name
    """
    from rliable import library as rly

    if reps < 1:
        raise ValueError(f"reps must be at least 1; got {reps}")
    points: dict[str, np.ndarray] = {}
    intervals: dict[str, np.ndarray] = {}
    for name, scores in score_dict.items():
        own_seed = stable_seed(seed, task, name, statistic)
        with seeded_global_rng(own_seed):
            point, interval = rly.get_interval_estimates(
                {name: scores},
                func,
                reps=reps,
                confidence_interval_size=CONFIDENCE,
                random_state=np.random.RandomState(own_seed),
            )
        points[name], intervals[name] = point[name], interval[name]
    return points, intervals


def _iqm(scores: np.ndarray) -> np.ndarray:
    from rliable import metrics

    return np.array([metrics.aggregate_iqm(scores)])


def _runs(values: Sequence[float], name: str) -> np.ndarray:
    scores = np.asarray(values, dtype=np.float64).reshape(-1)
    if scores.size == 0:
        raise ValueError(f"no scores for {name!r}")
    if not np.all(np.isfinite(scores)):
        raise ValueError(f"non-finite scores for {name!r}: {scores.tolist()}")
    return scores


def iqm_intervals(
    per_algo: Mapping[str, Sequence[float]], reps: int = REPS, seed: int = SEED, env: str = ""
) -> dict[str, dict[str, Any]]:
    """
    rliable's IQM and 95% stratified-bootstrap CI of each algorithm's scores on one env (one score per seed).

    :param per_algo: algo -> its scores, one per seed
    :param reps: bootstrap resamples
    :param seed: base seed of the bootstrap
    :param env: the env (each algorithm's bootstrap is seeded with :func:`stable_seed` of env, algo, ``"iqm"``)
    :return: algo -> ``{iqm, low, high, mean, std, n}`` (std: population std over seeds)
    """
    score_dict = {algo: _runs(values, algo).reshape(-1, 1) for algo, values in per_algo.items()}
    points, intervals = interval_estimates(score_dict, _iqm, reps=reps, seed=seed, task=env, statistic="iqm")
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


def probability_of_improvement(
    per_algo: Mapping[str, Sequence[float]],
    baseline: str = BASELINE,
    algos: Sequence[str] = CHALLENGERS,
    reps: int = REPS,
    seed: int = SEED,
    env: str = "",
) -> dict[str, dict[str, Any]]:
    """
    rliable's probability of improvement ``P(X > Y)`` of each of ``algos`` over ``baseline`` on one env, with a 95%
    CI: ``get_interval_estimates`` on the pair ``[X scores, Y scores]`` (each resampled independently, so the two
    may have different numbers of seeds), as in rliable's README.

    :param per_algo: algo -> its scores on the env, one per seed; must contain ``baseline``
    :param baseline: the algorithm compared with
    :param algos: the algorithms compared; those absent from ``per_algo`` are left out
    :param reps: bootstrap resamples
    :param seed: base seed of the bootstrap
    :param env: the env (each pair's bootstrap is seeded with :func:`stable_seed` of env, algo,
        ``"probability_of_improvement"``)
    :return: algo -> ``{p, low, high, n, n_baseline}``
    """
    from rliable import metrics

    if baseline not in per_algo:
        raise ValueError(f"no scores of the baseline {baseline!r}; algorithms: {', '.join(sorted(per_algo))}")
    y = _runs(per_algo[baseline], baseline).reshape(-1, 1)
    pairs = {algo: [_runs(per_algo[algo], algo).reshape(-1, 1), y] for algo in algos if algo in per_algo}
    if not pairs:
        return {}
    points, intervals = interval_estimates(
        pairs, metrics.probability_of_improvement, reps=reps, seed=seed, task=env, statistic="probability_of_improvement"
    )
    return {
        algo: {
            "p": float(np.asarray(points[algo]).reshape(-1)[0]),
            "low": float(np.asarray(intervals[algo]).reshape(-1)[0]),
            "high": float(np.asarray(intervals[algo]).reshape(-1)[1]),
            "n": int(pairs[algo][0].shape[0]),
            "n_baseline": int(y.shape[0]),
        }
        for algo in pairs
    }


@dataclass
class Aggregate:
    """
    The aggregate over envs of the normalised final scores.

    :param envs: the envs of the aggregate (the store's envs with a normalisation), in column order
    :param scores: algo -> normalised scores, shape ``(seeds, envs)``
    :param seeds: algo -> the seeds of the rows of its scores (those it has on every env of the aggregate)
    :param stats: algo -> ``{iqm, low, high, n}``: IQM over seeds x envs and its 95% stratified-bootstrap CI
    :param left_out: algo -> why it is not in the aggregate (the envs it misses)
    :param unnormalised: the store's envs without a normalisation, not in the aggregate
    """

    envs: list[str]
    scores: dict[str, np.ndarray] = field(default_factory=dict)
    seeds: dict[str, list[int]] = field(default_factory=dict)
    stats: dict[str, dict[str, Any]] = field(default_factory=dict)
    left_out: dict[str, str] = field(default_factory=dict)
    unnormalised: list[str] = field(default_factory=list)


def normalised_aggregate(scores: Scores, reps: int = REPS, seed: int = SEED) -> Aggregate:
    """
    IQM with a 95% stratified-bootstrap CI of the normalised final scores over seeds x envs.

    The envs are those of ``scores`` with an entry in :data:`~sb3_pg_ext.benchmark.normalisation.SCORE_RANGES`;
    an algorithm takes part only if it has scores on every one of them, with the seeds it has on all of them (the
    bootstrap resamples runs within each env, so every env needs the same runs).

    :param scores: env -> algo -> seed -> final return
    :param reps: bootstrap resamples
    :param seed: base seed of the bootstrap (each algorithm's: :func:`stable_seed` of :data:`AGGREGATE`, algo,
        ``"iqm"``)
    :return: the aggregate
    """
    envs = sorted(env for env in scores if env in SCORE_RANGES)
    aggregate = Aggregate(envs=envs, unnormalised=sorted(env for env in scores if env not in SCORE_RANGES))
    if not envs:
        return aggregate
    for algo in sorted({algo for env in envs for algo in scores[env]}):
        missing = [env for env in envs if algo not in scores[env]]
        if missing:
            aggregate.left_out[algo] = f"no finished cells on {', '.join(missing)}"
            continue
        common = sorted(set.intersection(*(set(scores[env][algo]) for env in envs)))
        if not common:
            aggregate.left_out[algo] = "no seed finished on every env"
            continue
        aggregate.seeds[algo] = common
        aggregate.scores[algo] = np.stack([normalise(env, [scores[env][algo][s] for s in common]) for env in envs], axis=1)
    if aggregate.scores:
        points, intervals = interval_estimates(aggregate.scores, _iqm, reps=reps, seed=seed, task=AGGREGATE, statistic="iqm")
        aggregate.stats = {
            algo: {
                "iqm": float(points[algo][0]),
                "low": float(intervals[algo][0][0]),
                "high": float(intervals[algo][1][0]),
                "n": len(aggregate.seeds[algo]),
            }
            for algo in aggregate.scores
        }
    return aggregate


def curve_intervals(
    curves: Mapping[str, np.ndarray], reps: int = REPS, seed: int = SEED, env: str = ""
) -> dict[str, np.ndarray]:
    """
    IQM over seeds at each evaluation point, with a 95% stratified-bootstrap band (seeds resampled at each point).

    :param curves: algo -> returns of shape ``(seeds, points)``
    :param reps: bootstrap resamples
    :param seed: base seed of the bootstrap
    :param env: the env (each algorithm's bootstrap is seeded with :func:`stable_seed` of env, algo, ``"curve_iqm"``)
    :return: algo -> array of shape ``(3, points)``: IQM, lower end, upper end
    """
    from rliable import metrics

    def iqm_per_point(values: np.ndarray) -> np.ndarray:
        # rliable's aggregate_iqm over runs of values[..., k], for every evaluation point k
        return np.array([metrics.aggregate_iqm(values[..., k]) for k in range(values.shape[-1])])

    score_dict = {algo: np.asarray(c, dtype=np.float64)[:, None, :] for algo, c in curves.items()}
    points, intervals = interval_estimates(score_dict, iqm_per_point, reps=reps, seed=seed, task=env, statistic="curve_iqm")
    return {algo: np.vstack([points[algo], intervals[algo]]) for algo in score_dict}


# ------------------------------------------------------------------------------------------------------- store readers

#: What the readers below read: a store (every record of it, read once per call) or records already read from one
#: (:func:`write_report` reads the store once and passes the records to each of them).
Records = ResultStore | Iterable[dict[str, Any]]


def _records(source: Records) -> Iterable[dict[str, Any]]:
    return source.records() if isinstance(source, ResultStore) else source


def final_scores(store: Records) -> Scores:
    """
    The final returns of the store's finished cells.

    :param store: the results store, or its records
    :return: env -> algo -> seed -> final mean return
    """
    scores: dict[str, dict[str, dict[int, float]]] = defaultdict(lambda: defaultdict(dict))
    for record in _records(store):
        if record["status"] == FINISHED:
            scores[record["env"]][record["algo"]][int(record["seed"])] = float(record["final"]["mean"])
    return {env: dict(algos) for env, algos in scores.items()}


def throughput_ratios(store: Records, baseline: str = BASELINE) -> dict[str, dict[str, dict[str, float | None]]]:
    """
    Throughput of each algorithm relative to ``baseline``, per env.

    :param store: the results store, or its records
    :param baseline: the algorithm the others are divided by
    :return: env -> algo -> ``{cpu, wall, cpu_ratio, wall_ratio}``: the medians over seeds of env steps per CPU
        second and per wall second, and their ratios to the baseline's (None without baseline cells)
    """
    samples: dict[str, dict[str, dict[str, list[float]]]] = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    for record in _records(store):
        if record["status"] != FINISHED or "throughput" not in record:
            continue
        for kind in ("cpu", "wall"):
            value = record["throughput"].get(f"steps_per_{kind}_second")
            if value is not None and math.isfinite(value) and value > 0:
                samples[record["env"]][record["algo"]][kind].append(float(value))
    result: dict[str, dict[str, dict[str, float | None]]] = {}
    for env, algos in sorted(samples.items()):
        medians = {
            algo: {kind: statistics.median(values[kind]) if values[kind] else None for kind in ("cpu", "wall")}
            for algo, values in sorted(algos.items())
        }
        reference = medians.get(baseline, {})
        result[env] = {}
        for algo, median in medians.items():
            row: dict[str, float | None] = dict(median)
            for kind in ("cpu", "wall"):
                value, base = median[kind], reference.get(kind)
                row[f"{kind}_ratio"] = value / base if value is not None and base else None
            result[env][algo] = row
    return result


def learning_curves(store: Records) -> dict[str, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """
    The evaluation curves of the store's finished cells.

    :param store: the results store, or its records
    :return: env -> algo -> (env steps of the evaluation points all its seeds share, returns of shape
        ``(seeds, points)``: each seed's mean over the evaluation episodes at each point)
    """
    raw: dict[str, dict[str, list[dict[int, float]]]] = defaultdict(lambda: defaultdict(list))
    for record in _records(store):
        curve = record.get("curve")
        if record["status"] != FINISHED or not curve or not curve.get("timesteps"):
            continue
        points = {int(t): float(np.mean(r)) for t, r in zip(curve["timesteps"], curve["returns"], strict=False) if len(r) > 0}
        raw[record["env"]][record["algo"]].append(points)
    curves: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = {}
    for env, algos in sorted(raw.items()):
        for algo, runs in sorted(algos.items()):
            common = sorted(set.intersection(*(set(run) for run in runs)))
            if common:
                values = np.array([[run[t] for t in common] for run in runs], dtype=np.float64)
                curves.setdefault(env, {})[algo] = (np.array(common, dtype=np.int64), values)
    return curves


# --------------------------------------------------------------------------------------------------------------- plots


def file_stem(env: str) -> str:
    """A file-name-safe form of an env id (``sb3_pg_ext/DigitAdd-v0`` -> ``sb3_pg_ext_DigitAdd-v0``)."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", env)


def _colors(algos: Sequence[str]) -> dict[str, Any]:
    from matplotlib import colormaps

    palette = colormaps["tab10"]
    return {algo: palette(index % 10) for index, algo in enumerate(sorted(algos))}


def _figure(figsize: tuple[float, float]) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=figsize, layout="constrained")
    FigureCanvasAgg(figure)  # rendered by Agg, whatever pyplot's backend is
    return figure


def plot_learning_curves(
    env: str,
    curves: Mapping[str, tuple[np.ndarray, np.ndarray]],
    path: Path,
    colors: Mapping[str, Any],
    reps: int = REPS,
    seed: int = SEED,
) -> Path:
    """
    Write the learning-curve PNG of one env: IQM over seeds with its 95% stratified-bootstrap band, per algorithm.

    :param env: the env (the title)
    :param curves: algo -> (env steps, returns of shape ``(seeds, points)``)
    :param path: the PNG file
    :param colors: algo -> matplotlib color
    :param reps: bootstrap resamples of the band
    :param seed: seed of the bootstrap
    :return: ``path``
    """
    bands = curve_intervals({algo: values for algo, (_, values) in curves.items()}, reps=reps, seed=seed, env=env)
    figure = _figure((6.4, 4.2))
    ax = figure.subplots()
    for algo, (steps, values) in curves.items():
        iqm, low, high = bands[algo]
        ax.plot(steps, iqm, color=colors[algo], label=f"{algo} ({values.shape[0]} seeds)", linewidth=2)
        ax.fill_between(steps, low, high, color=colors[algo], alpha=0.2, linewidth=0)
    ax.set_title(f"{env}: IQM over seeds, 95% bootstrap CI")
    ax.set_xlabel("env steps")
    ax.set_ylabel("evaluation return")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")
    figure.savefig(path, dpi=110)
    return path


def plot_performance_profile(
    aggregate: Aggregate, path: Path, colors: Mapping[str, Any], reps: int = REPS, seed: int = SEED
) -> Path:
    """
    Write the performance-profile PNG of the aggregate's normalised final scores (rliable's
    ``create_performance_profile``: fraction of runs x envs above each threshold, with a 95% CI band, drawn by
    ``plot_utils.plot_performance_profiles``).

    :param aggregate: the aggregate (its ``scores`` must not be empty)
    :param path: the PNG file
    :param colors: algo -> matplotlib color
    :param reps: bootstrap resamples of the band
    :param seed: base seed of the bootstrap (each algorithm's: :func:`stable_seed` of :data:`AGGREGATE`, algo,
        ``"performance_profile"``)
    :return: ``path``
    """
    from rliable import library as rly
    from rliable import plot_utils

    if not aggregate.scores:
        raise ValueError("the aggregate has no algorithm: no performance profile to plot")
    everything = np.concatenate([s.reshape(-1) for s in aggregate.scores.values()])
    tau_list = np.linspace(min(0.0, float(everything.min())), max(1.0, float(everything.max())), 101)
    profiles: dict[str, np.ndarray] = {}
    profile_cis: dict[str, np.ndarray] = {}
    for algo, algo_scores in aggregate.scores.items():  # one seed per algorithm, as in interval_estimates
        with seeded_global_rng(stable_seed(seed, AGGREGATE, algo, "performance_profile")):
            profile, ci = rly.create_performance_profile({algo: algo_scores}, tau_list, reps=reps)
        profiles[algo], profile_cis[algo] = profile[algo], ci[algo]
    figure = _figure((6.4, 4.2))
    ax = figure.subplots()
    plot_utils.plot_performance_profiles(
        profiles,
        tau_list,
        performance_profile_cis=profile_cis,
        colors=dict(colors),
        ax=ax,
        xlabel=r"normalised final score $\tau$",
        ylabel=r"fraction of runs with score $> \tau$",
        labelsize="medium",
        ticklabelsize="small",
    )
    ax.set_title(f"performance profile over {len(aggregate.envs)} envs, 95% CI")
    ax.legend(fontsize="small")
    figure.savefig(path, dpi=110)
    return path


# ------------------------------------------------------------------------------------------------------------ markdown


def _number(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def markdown_table(store: Records, scores: Scores | None = None) -> str:
    """
    One markdown table per env: ``algo | seeds | IQM [95% CI] | mean +- std`` of the final returns.

    :param store: the results store, or its records
    :param scores: its final scores (:func:`final_scores`), when already read
    :return: the tables, or ``(no finished cells)``
    """
    scores = final_scores(store) if scores is None else scores
    lines: list[str] = []
    for env, algos in sorted(scores.items()):
        stats = iqm_intervals({algo: [seeds[s] for s in sorted(seeds)] for algo, seeds in sorted(algos.items())}, env=env)
        lines += [f"### {env}", "", "| algo | seeds | IQM [95% CI] | mean +- std |", "|---|---|---|---|"]
        for algo, s in stats.items():
            lines.append(
                f"| {algo} | {s['n']} | {s['iqm']:.1f} [{s['low']:.1f}, {s['high']:.1f}] | {s['mean']:.1f} +- {s['std']:.1f} |"
            )
        lines.append("")
    return "\n".join(lines) if lines else "(no finished cells)"


def _aggregate_section(aggregate: Aggregate) -> list[str]:
    lines = ["## Aggregate over envs (normalised final score)", ""]
    if not aggregate.envs:
        return [*lines, "No env of the store has a normalisation.", ""]
    lines += [
        "Normalised score = (score - random) / (solved - random), per env:",
        "",
        "| env | random | solved |",
        "|---|---|---|",
    ]
    lines += [f"| {env} | {SCORE_RANGES[env][0]:g} | {SCORE_RANGES[env][1]:g} |" for env in aggregate.envs]
    lines += [
        "",
        f"Envs of the aggregate: {', '.join(aggregate.envs)}. Only algorithms with finished cells on every one of "
        "them take part, with the seeds they have on all of them; IQM over seeds x envs, 95% stratified-bootstrap CI.",
        "",
        "| algo | seeds | IQM [95% CI] |",
        "|---|---|---|",
    ]
    for algo, s in aggregate.stats.items():
        lines.append(f"| {algo} | {s['n']} | {s['iqm']:.3f} [{s['low']:.3f}, {s['high']:.3f}] |")
    lines.append("")
    for algo, reason in aggregate.left_out.items():
        lines.append(f"- left out of the aggregate: {algo} ({reason})")
    if aggregate.unnormalised:
        lines.append(f"- envs without a normalisation, not in the aggregate: {', '.join(aggregate.unnormalised)}")
    if aggregate.left_out or aggregate.unnormalised:
        lines.append("")
    return lines


def _improvement_section(scores: Scores, challengers: Sequence[str] = CHALLENGERS) -> list[str]:
    lines = [
        f"## Probability of improvement over {BASELINE}",
        "",
        f"P(X > {BASELINE}) on the final returns, 95% CI (each algorithm's seeds resampled independently).",
        "",
        "| env | " + " | ".join(challengers) + " |",
        "|---|" + "---|" * len(challengers),
    ]
    for env, algos in sorted(scores.items()):
        if BASELINE not in algos:
            cells = [f"no {BASELINE} cells"] + [""] * (len(challengers) - 1)
        else:
            per_algo = {algo: [seeds[s] for s in sorted(seeds)] for algo, seeds in algos.items()}
            result = probability_of_improvement(per_algo, algos=challengers, env=env)
            cells = [
                f"{r['p']:.2f} [{r['low']:.2f}, {r['high']:.2f}]" if (r := result.get(algo)) else "-" for algo in challengers
            ]
        lines.append(f"| {env} | " + " | ".join(cells) + " |")
    return [*lines, ""]


def _throughput_section(store: Records) -> list[str]:
    lines = [
        f"## Throughput relative to {BASELINE}",
        "",
        f"Median over seeds of env steps per CPU second and per wall second of the training (one torch thread, "
        f"evaluation excluded), and its ratio to {BASELINE}'s on the same env.",
        "",
        f"| env | algo | steps / CPU s | x {BASELINE} | steps / wall s | x {BASELINE} |",
        "|---|---|---|---|---|---|",
    ]
    for env, algos in throughput_ratios(store).items():
        for algo, r in algos.items():
            lines.append(
                f"| {env} | {algo} | {_number(r['cpu'], 0)} | {_number(r['cpu_ratio'], 2)} "
                f"| {_number(r['wall'], 0)} | {_number(r['wall_ratio'], 2)} |"
            )
    return [*lines, ""]


def budget_rows(store: Records) -> list[dict[str, Any]]:
    """
    Each (env, algo)'s env-step budget in the grid next to its hyperparameter entry's own (``n_timesteps``), and the
    entry's linear schedules (values ``lin_<start>``) that a different budget rescales: rl-zoo3 decays them to 0
    over the budget a run trains, so a cell shorter than the entry's budget compresses them (a faster decay), a
    longer one stretches them.

    :param store: the results store, or its records
    :return: one row per (env, algo), sorted, with ``env``, ``algo``, ``cell`` (the cells' budgets, sorted),
        ``entry`` (the entry's budgets, sorted; empty where the records hold none), ``schedules`` (the keys of the
        ``lin_`` values) and ``flag`` (``"compressed"``, ``"stretched"`` or ``""``)
    """
    cells: dict[tuple[str, str], set[int]] = {}
    entries: dict[tuple[str, str], set[int]] = {}
    schedules: dict[tuple[str, str], set[str]] = {}
    for record in _records(store):
        if record["status"] != FINISHED:
            continue
        key = (record["env"], record["algo"])
        hyperparams = record.get("config", {}).get("hyperparams", {})
        cells.setdefault(key, set()).add(int(record["config"]["cell"]["n_timesteps"] or hyperparams["n_timesteps"]))
        if "n_timesteps" in hyperparams:
            entries.setdefault(key, set()).add(int(float(hyperparams["n_timesteps"])))
        schedules.setdefault(key, set()).update(
            name for name, value in hyperparams.items() if isinstance(value, str) and value.startswith("lin_")
        )
    rows = []
    for key in sorted(cells):
        cell, entry = sorted(cells[key]), sorted(entries.get(key, ()))
        flag = ""
        if schedules[key] and entry:
            if min(cell) < max(entry):
                flag = "compressed"
            elif max(cell) > min(entry):
                flag = "stretched"
        rows.append(
            {"env": key[0], "algo": key[1], "cell": cell, "entry": entry, "schedules": sorted(schedules[key]), "flag": flag}
        )
    return rows


def _budget_section(store: Records) -> list[str]:
    lines = [
        "## Budgets",
        "",
        "Each cell's env-step budget next to its hyperparameter entry's own `n_timesteps`. rl-zoo3 decays a `lin_` "
        "schedule to 0 over the budget a run trains: **compressed** marks a cell shorter than its entry's budget "
        "(the schedule decays faster than the entry was set for), **stretched** a longer one.",
        "",
        "| env | algo | cell budget | entry's budget | x entry | lin_ schedules | |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in budget_rows(store):
        cell = "/".join(f"{n:,}" for n in row["cell"])
        entry = "/".join(f"{n:,}" for n in row["entry"]) or "n/a"
        ratio = _number(row["cell"][0] / row["entry"][0], 2) if row["entry"] else "n/a"
        lines.append(
            f"| {row['env']} | {row['algo']} | {cell} | {entry} | {ratio} | {', '.join(row['schedules']) or '-'} "
            f"| {row['flag'] and '**' + row['flag'] + '**'} |"
        )
    return [*lines, ""]


@dataclass
class WrittenReport:
    """
    What :func:`write_report` wrote.

    :param markdown: the text of the markdown report
    :param paths: the files written: the markdown file, then the PNGs
    """

    markdown: str
    paths: list[Path]


@dataclass(frozen=True)
class ExtraCells:
    """
    The cells of one algorithm from another store, reported beside the main store's under a name of their own
    (e.g. GRPO with branch groups, ``protocol_grpo_branch``'s ``grpo`` cells, as ``grpo_branch``).

    :param store: the other results store
    :param algo: the algorithm whose cells are taken
    :param name: the name they are reported under
    """

    store: ResultStore
    algo: str
    name: str

    @classmethod
    def parse(cls, spec: str) -> ExtraCells:
        """
        ``DIR:ALGO=NAME`` -> the cells of ``ALGO`` in the store ``DIR``, reported as ``NAME``.

        :raises ValueError: naming the spec and the expected form, or the missing store
        """
        store, _, renaming = spec.rpartition(":")
        algo, _, name = renaming.partition("=")
        if not (store and algo and name) or not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
            raise ValueError(
                f"{spec!r} is not DIR:ALGO=NAME (e.g. benchmarks/results/protocol_grpo_branch:grpo=grpo_branch; NAME "
                "of letters, digits, '_', '.' and '-')"
            )
        if not Path(store).is_dir():
            raise ValueError(f"{spec!r}: no results store at {store!r}")
        return cls(ResultStore(store), algo, name)

    def records(self) -> list[dict[str, Any]]:
        """The other store's records of :attr:`algo`, renamed :attr:`name` (raises at a damaged file of the store)."""
        return [dict(record, algo=self.name) for record in self.store.records() if record["algo"] == self.algo]


def write_report(
    store: ResultStore, out: str | Path | None = None, reps: int = REPS, extra: Sequence[ExtraCells] = ()
) -> WrittenReport:
    """
    Write the report of ``store``: ``report.md`` and the PNGs it shows, regenerated from the stored records alone.

    :param store: the results store
    :param out: the output directory (created; default: ``<store>/report``)
    :param reps: bootstrap resamples of every interval
    :param extra: cells of other stores to report beside the store's, each under its own name
    :return: the markdown text and the files written
    :raises DamagedRecordError: naming the first damaged file of the store (nothing is written then)
    :raises ValueError: when an extra's name is an algorithm of the store, the baseline or a challenger, or two
        extras share a name
    """
    records = list(store.records())  # raises at a damaged file, before anything is written
    taken = {record["algo"] for record in records} | {BASELINE, *CHALLENGERS}
    for cells in extra:
        if cells.name in taken:
            raise ValueError(
                f"cells of {cells.algo!r} from {cells.store.root} cannot be reported as {cells.name!r}: the name is "
                f"taken (by an algorithm of {store.root}, one the report compares, or another extra); choose another"
            )
        taken.add(cells.name)
        records += cells.records()
    out_dir = Path(out) if out is not None else store.root / "report"
    out_dir.mkdir(parents=True, exist_ok=True)
    n_failed = sum(record["status"] == FAILED for record in records)
    scores = final_scores(records)
    lines = [
        "# Benchmark report",
        "",
        f"From {len(records) - n_failed} finished cells ({n_failed} failed, not counted) in `{store.root}`"
        + "".join(f", and `{cells.algo}` from `{cells.store.root}` as {cells.name}" for cells in extra)
        + ". A cell's "
        "score is its final return: the mean over its final deterministic evaluation episodes, one score per seed. "
        f"Intervals: 95% stratified bootstrap (rliable, percentile, {reps} resamples, seeded).",
        "",
    ]
    if not scores:
        markdown = "\n".join([*lines, "(no finished cells)", ""])
        (out_dir / REPORT_FILE).write_text(markdown, encoding="utf-8")
        return WrittenReport(markdown, [out_dir / REPORT_FILE])
    lines += ["## Final return per env", "", markdown_table(records, scores)]
    aggregate = normalised_aggregate(scores, reps=reps)
    lines += _aggregate_section(aggregate)
    lines += _improvement_section(scores, (*CHALLENGERS, *(cells.name for cells in extra)))
    lines += _budget_section(records)
    lines += _throughput_section(records)

    colors = _colors(sorted({algo for algos in scores.values() for algo in algos}))
    pngs: list[Path] = []
    lines += [
        "## Plots",
        "",
        "Learning curves: IQM over seeds of the evaluation return at each evaluation point (a seed's point: the "
        "mean over its evaluation episodes), band: 95% stratified-bootstrap CI of that IQM (seeds resampled at each "
        "point); x: env steps.",
        "",
    ]
    for env, curves in learning_curves(records).items():
        path = plot_learning_curves(env, curves, out_dir / f"curves_{file_stem(env)}.png", colors, reps=reps)
        pngs.append(path)
        lines += [f"![{env}]({path.name})", ""]
    if aggregate.scores:
        path = plot_performance_profile(aggregate, out_dir / PROFILE_FILE, colors, reps=reps)
        pngs.append(path)
        lines += [
            "Performance profile: fraction of runs (seeds x envs of the aggregate) whose normalised final score "
            "exceeds each threshold, 95% CI band.",
            "",
            f"![performance profile]({path.name})",
            "",
        ]
    markdown = "\n".join(lines)
    (out_dir / REPORT_FILE).write_text(markdown, encoding="utf-8")
    return WrittenReport(markdown, [out_dir / REPORT_FILE, *pngs])


__all__ = [
    "AGGREGATE",
    "BASELINE",
    "CHALLENGERS",
    "CONFIDENCE",
    "REPS",
    "Aggregate",
    "ExtraCells",
    "WrittenReport",
    "budget_rows",
    "curve_intervals",
    "final_scores",
    "interval_estimates",
    "iqm_intervals",
    "learning_curves",
    "markdown_table",
    "normalised_aggregate",
    "plot_learning_curves",
    "plot_performance_profile",
    "probability_of_improvement",
    "seeded_global_rng",
    "stable_seed",
    "throughput_ratios",
    "write_report",
]
