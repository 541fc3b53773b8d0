"""
The protocol of every learning test: train for the whole budget, then evaluate the policy that ``learn()`` returns,
as a user gets it (never the best evaluation on the way, which hides a collapse at the end).
"""

from __future__ import annotations

from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.evaluation import evaluate_policy


def final_return(model: BaseAlgorithm, env_id: str, budget: int, seed: int, n_eval_episodes: int = 10) -> float:
    """``model.learn(budget)``, then the mean return of the deterministic policy over ``n_eval_episodes`` episodes
    on a fresh env seeded ``10_000 + seed`` (disjoint from the training seeds)."""
    model.learn(budget)
    eval_env = make_vec_env(env_id, n_envs=1, seed=10_000 + seed)
    mean_return, _ = evaluate_policy(model, eval_env, n_eval_episodes=n_eval_episodes, deterministic=True)
    eval_env.close()
    return float(mean_return)
