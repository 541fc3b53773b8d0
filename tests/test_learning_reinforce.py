"""
REINFORCE with its defaults reaches a deterministic evaluation mean >= 475 on CartPole-v1 within 200k steps, 3 of 3
seeds. Stops at the first evaluation (every 10k steps) that reaches it: about 20 s per seed on one core, so it runs
in the default test suite.
"""

from __future__ import annotations

import pytest
from stable_baselines3.common.callbacks import EvalCallback, StopTrainingOnRewardThreshold
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.evaluation import evaluate_policy

from sb3_pg_ext import REINFORCE


def train_until_threshold(model, env_id: str, budget: int, threshold: float, seed: int) -> tuple[int, float]:
    """Learn until a deterministic 10-episode evaluation (every 10k steps) reaches ``threshold`` or the budget ends."""
    eval_env = make_vec_env(env_id, n_envs=1, seed=10_000 + seed)
    stop = StopTrainingOnRewardThreshold(reward_threshold=threshold)
    callback = EvalCallback(eval_env, callback_on_new_best=stop, eval_freq=10_000, n_eval_episodes=10, verbose=0)
    model.learn(budget, callback=callback)
    mean_return, _ = evaluate_policy(model, eval_env, n_eval_episodes=10, deterministic=True)
    return model.num_timesteps, float(max(mean_return, callback.best_mean_reward))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_reinforce_defaults_solve_cartpole(seed: int):
    env = make_vec_env("CartPole-v1", n_envs=1, seed=seed)
    model = REINFORCE("MlpPolicy", env, seed=seed, device="cpu")
    steps, best = train_until_threshold(model, "CartPole-v1", 200_000, 475, seed)
    print(f"REINFORCE seed {seed}: eval {best:.1f} after {steps} steps")
    assert best >= 475
    assert steps <= 200_000 + 10_000  # the last rollout may overshoot by part of an episode batch
