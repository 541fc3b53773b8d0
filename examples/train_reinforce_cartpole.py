"""
Train REINFORCE (package defaults) on CartPole-v1 for the whole budget, evaluate the final policy deterministically
and save it.

    python examples/train_reinforce_cartpole.py [--timesteps 200000] [--seed 0] [--output reinforce_cartpole]

A deterministic evaluation (10 episodes, on seeds disjoint from training) is printed every 20k steps so that the
run shows its progress; training never stops early: the model saved is the policy that ``learn()`` returns.
"""

from __future__ import annotations

import argparse

import torch as th
from stable_baselines3.common.callbacks import EvalCallback
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.evaluation import evaluate_policy

from sb3_pg_ext import REINFORCE


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--timesteps", type=int, default=200_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default="reinforce_cartpole")
    args = parser.parse_args()
    th.set_num_threads(1)

    env = make_vec_env("CartPole-v1", n_envs=1, seed=args.seed)
    eval_env = make_vec_env("CartPole-v1", n_envs=1, seed=args.seed + 10_000)
    eval_callback = EvalCallback(eval_env, eval_freq=20_000, n_eval_episodes=10, verbose=1)

    model = REINFORCE("MlpPolicy", env, seed=args.seed, verbose=0)
    model.learn(total_timesteps=args.timesteps, callback=eval_callback, progress_bar=True)
    model.save(args.output)

    loaded = REINFORCE.load(args.output)
    mean_return, std_return = evaluate_policy(loaded, eval_env, n_eval_episodes=20, deterministic=True)
    steps = model.num_timesteps
    print(f"REINFORCE on CartPole-v1, final policy after {steps} env steps: {mean_return:.1f} +/- {std_return:.1f}")
    print(f"saved to {args.output}.zip")


if __name__ == "__main__":
    main()
