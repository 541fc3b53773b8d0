"""
ISPG vs REINFORCE on CartPole-v1: env steps to a deterministic evaluation mean >= 475, and ISPG's effective
sample size over training.

Protocol: each (algorithm, seed) trains with one env (seed = the seed) for at most ``--max-steps`` env steps; every
``--eval-freq`` env steps the deterministic policy is evaluated on 10 episodes of a separate env (seed 10_000 +
seed); the run stops at the first evaluation with mean >= 475, and that evaluation's ``num_timesteps`` is the
"steps to 475" (resolution: ``--eval-freq``). Both algorithms use their defaults and the same actor network
(MLP [64, 64], Tanh, orthogonal init; REINFORCE's default ``baseline="value"`` adds its critic). ISPG's
``train/is_ess``, ``train/is_weight_max`` and ``train/is_clip_fraction`` are recorded from the logger at every dump.

Run from the repository root (about 2 min of one CPU core with the defaults: runs stop at 475):

    python -m benchmarks.ispg_cartpole                      # 3 seeds each, defaults
    python -m benchmarks.ispg_cartpole --seeds 0 --max-steps 50000 --algos ispg --name ispg_cartpole_smoke

Results: ``benchmarks/results/ispg_cartpole.json`` (per run: steps to 475 or null, the evaluation curve, the ESS
curve) and a Markdown summary on stdout.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any

import numpy as np
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.logger import KVWriter, Logger

from benchmarks.harness import save_results, single_thread
from sb3_pg_ext import ISPG, REINFORCE

ALGOS: dict[str, type[BaseAlgorithm]] = {"ispg": ISPG, "reinforce": REINFORCE}
THRESHOLD = 475.0


class RecordingWriter(KVWriter):
    """A logger output that keeps every dump (``{"timesteps": step, key: value, ...}``) in memory."""

    def __init__(self, keys: tuple[str, ...]) -> None:
        self.keys = keys
        self.rows: list[dict[str, float]] = []

    def write(self, key_values: dict[str, Any], key_excluded: dict[str, Any], step: int = 0) -> None:
        row = {key: float(key_values[key]) for key in self.keys if key in key_values}
        if row:
            self.rows.append({"timesteps": step, **row})

    def close(self) -> None:
        pass


class EvaluateUntil(BaseCallback):
    """Evaluate the deterministic policy every ``eval_freq`` env steps; stop training once the mean reaches ``threshold``."""

    def __init__(self, eval_env_seed: int, eval_freq: int, threshold: float, n_eval_episodes: int = 10) -> None:
        super().__init__()
        self.eval_env = make_vec_env("CartPole-v1", n_envs=1, seed=eval_env_seed)
        self.eval_freq = eval_freq
        self.threshold = threshold
        self.n_eval_episodes = n_eval_episodes
        self.next_eval = eval_freq
        self.curve: list[dict[str, float]] = []
        self.reached_at: int | None = None

    def _on_step(self) -> bool:
        if self.num_timesteps < self.next_eval:
            return True
        self.next_eval += self.eval_freq
        mean, _ = evaluate_policy(self.model, self.eval_env, n_eval_episodes=self.n_eval_episodes, deterministic=True)
        self.curve.append({"timesteps": self.num_timesteps, "eval_mean": float(mean)})
        if mean >= self.threshold:
            self.reached_at = self.num_timesteps
            return False
        return True


def steps_to_threshold(
    algo: str,
    seed: int,
    kwargs: dict[str, Any] | None = None,
    max_steps: int = 200_000,
    eval_freq: int = 2_500,
    threshold: float = THRESHOLD,
) -> dict[str, Any]:
    """
    Train ``algo`` on CartPole-v1 until the deterministic evaluation mean reaches ``threshold`` or ``max_steps``.

    :return: ``steps`` (env steps at the first evaluation >= threshold, None if never), the evaluation curve,
        the logged ESS curve (ISPG), CPU seconds
    """
    single_thread()
    env = make_vec_env("CartPole-v1", n_envs=1, seed=seed)
    model = ALGOS[algo]("MlpPolicy", env, seed=seed, **(kwargs or {}))
    writer = RecordingWriter(("train/is_ess", "train/is_weight_max", "train/is_clip_fraction", "rollout/ep_rew_mean"))
    model.set_logger(Logger(folder=None, output_formats=[writer]))
    callback = EvaluateUntil(10_000 + seed, eval_freq, threshold)
    start = time.process_time()
    model.learn(max_steps, callback=callback)
    cpu = time.process_time() - start
    env.close()
    return {
        "algo": algo,
        "seed": seed,
        "kwargs": kwargs or {},
        "steps": callback.reached_at,
        "final_timesteps": model.num_timesteps,
        "cpu_seconds": cpu,
        "eval_curve": callback.curve,
        "logged_curve": writer.rows,
    }


def summarise(runs: list[dict[str, Any]]) -> str:
    """Markdown: steps to 475 per seed and the median per algorithm."""
    lines = ["| algorithm | steps to 475 per seed | median | reached |", "|---|---|---|---|"]
    for algo in dict.fromkeys(r["algo"] for r in runs):
        mine = [r for r in runs if r["algo"] == algo]
        steps = [r["steps"] for r in mine]
        shown = ", ".join(
            f"{s:,}" if s is not None else f"> {r['final_timesteps']:,}" for s, r in zip(steps, mine, strict=True)
        )
        reached = [s for s in steps if s is not None]
        median = f"{statistics.median(reached):,.0f}" if len(reached) == len(steps) else "n/a"
        lines.append(f"| {algo} | {shown} | {median} | {len(reached)}/{len(steps)} |")
    return "\n".join(lines)


def ess_summary(run: dict[str, Any], n_points: int = 8) -> str:
    """A few points of the ESS curve: ``timesteps: ess (max weight)``."""
    rows = [r for r in run["logged_curve"] if "train/is_ess" in r]
    if not rows:
        return "no ESS logged"
    picks = np.unique(np.linspace(0, len(rows) - 1, n_points).round().astype(int))
    points = [rows[i] for i in picks]
    return ", ".join(
        f"{r['timesteps']:,}: {r['train/is_ess']:.2f} (max w {r.get('train/is_weight_max', np.nan):.1f})" for r in points
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--algos", nargs="+", default=["ispg", "reinforce"], choices=sorted(ALGOS))
    parser.add_argument("--max-steps", type=int, default=200_000)
    parser.add_argument("--eval-freq", type=int, default=2_500)
    parser.add_argument("--ispg-kwargs", type=json.loads, default={}, help="JSON dict of ISPG keyword arguments")
    parser.add_argument("--name", default="ispg_cartpole", help="results file name (without .json)")
    args = parser.parse_args()

    runs = []
    for seed in args.seeds:
        for algo in args.algos:  # alternate the algorithms, as the harness does
            kwargs = args.ispg_kwargs if algo == "ispg" else {}
            run = steps_to_threshold(algo, seed, kwargs, args.max_steps, args.eval_freq)
            runs.append(run)
            print(f"{algo} seed {seed}: steps to 475 = {run['steps']} ({run['cpu_seconds']:.0f} CPU s)", flush=True)
    table = summarise(runs)
    print(table)
    for run in runs:
        if run["algo"] == "ispg":
            print(f"ISPG seed {run['seed']} ESS (fraction of N) over training: {ess_summary(run)}")
    path = save_results(
        args.name,
        {
            "command": "python -m benchmarks.ispg_cartpole "
            + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items()),
            "threshold": THRESHOLD,
            "table": table,
            "runs": runs,
        },
    )
    print(f"saved {path}")


if __name__ == "__main__":
    main()
