"""
The protocol of every learning test: train for the whole budget, then evaluate the policy that ``learn()`` returns,
as a user gets it (never the best evaluation on the way, which hides a collapse at the end).

One exception, for sample efficiency rather than the end result: :func:`steps_to_threshold`, env steps until the
first deterministic evaluation reaches a bar.
"""

from __future__ import annotations

import time
from typing import Any

from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.logger import KVWriter, Logger


def final_return(model: BaseAlgorithm, env_id: str, budget: int, seed: int, n_eval_episodes: int = 10) -> float:
    """``model.learn(budget)``, then the mean return of the deterministic policy over ``n_eval_episodes`` episodes
    on a fresh env seeded ``10_000 + seed`` (disjoint from the training seeds)."""
    model.learn(budget)
    eval_env = make_vec_env(env_id, n_envs=1, seed=10_000 + seed)
    mean_return, _ = evaluate_policy(model, eval_env, n_eval_episodes=n_eval_episodes, deterministic=True)
    eval_env.close()
    return float(mean_return)


class RecordingWriter(KVWriter):
    """A logger output that keeps every dump (``{"timesteps": step, key: value, ...}``) of the given keys in memory."""

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

    def __init__(self, env_id: str, eval_env_seed: int, eval_freq: int, threshold: float, n_eval_episodes: int = 10) -> None:
        super().__init__()
        self.eval_env = make_vec_env(env_id, n_envs=1, seed=eval_env_seed)
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
    algo: type[BaseAlgorithm],
    seed: int,
    kwargs: dict[str, Any] | None = None,
    max_steps: int = 200_000,
    eval_freq: int = 2_500,
    threshold: float = 475.0,
    env_id: str = "CartPole-v1",
) -> dict[str, Any]:
    """
    Train ``algo("MlpPolicy", env, seed=seed, **kwargs)`` on one env seeded ``seed`` until the deterministic
    evaluation mean (10 episodes on an env seeded ``10_000 + seed``, every ``eval_freq`` env steps) reaches
    ``threshold``, or for ``max_steps``.

    :return: ``steps`` (env steps at the first evaluation >= threshold, None if never), ``final_timesteps``, the
        evaluation curve, the logged curve of ISPG's importance-weight diagnostics (``train/is_ess``,
        ``train/is_weight_max``, ``train/is_clip_fraction``) and ``rollout/ep_rew_mean``, CPU seconds
    """
    env = make_vec_env(env_id, n_envs=1, seed=seed)
    model = algo("MlpPolicy", env, seed=seed, **(kwargs or {}))
    writer = RecordingWriter(("train/is_ess", "train/is_weight_max", "train/is_clip_fraction", "rollout/ep_rew_mean"))
    model.set_logger(Logger(folder=None, output_formats=[writer]))
    callback = EvaluateUntil(env_id, 10_000 + seed, eval_freq, threshold)
    start = time.process_time()
    model.learn(max_steps, callback=callback)
    cpu = time.process_time() - start
    env.close()
    callback.eval_env.close()
    return {
        "algo": algo.__name__,
        "seed": seed,
        "kwargs": kwargs or {},
        "steps": callback.reached_at,
        "final_timesteps": model.num_timesteps,
        "cpu_seconds": cpu,
        "eval_curve": callback.curve,
        "logged_curve": writer.rows,
    }
