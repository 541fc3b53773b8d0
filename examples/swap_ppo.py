"""
Swapping PPO for the package's algorithms in existing Stable-Baselines3 code: the class is the one line that
changes. Every class takes SB3's ``(policy, env, ...)`` signature, ``learn``, ``predict``, ``save``/``load`` and
works with SB3's ``evaluate_policy``, callbacks and VecEnvs.

    python examples/swap_ppo.py [--env CartPole-v1] [--timesteps 50000] [--seed 0]

What differs from PPO, per class (the rest of the code stays):

- ``REINFORCE``: a rollout is ``n_episodes`` complete episodes (not ``n_steps`` steps); one gradient step each.
- ``ISPG``: off-policy (a replay buffer of complete episodes, importance-weighted); actor-only policy, so
  ``policy_kwargs=dict(net_arch=[64, 64])`` is a list (a ``vf`` key is refused).
- ``PPOKL``: PPO's arguments plus the KL penalty (``kl_target``, ``kl_coef``, ...); no clip unless ``clip_range``.
- ``GRPO``: no critic; a rollout is ``n_groups`` groups of ``group_size`` episodes, each group reset with one seed;
  actor-only policy as ISPG.
"""

from __future__ import annotations

import argparse
import time

import torch as th
from stable_baselines3 import PPO
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.evaluation import evaluate_policy

from sb3_pg_ext import GRPO, ISPG, PPOKL, REINFORCE

ALGORITHMS = {"PPO": PPO, "REINFORCE": REINFORCE, "ISPG": ISPG, "PPOKL": PPOKL, "GRPO": GRPO}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", default="CartPole-v1")
    parser.add_argument("--timesteps", type=int, default=50_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--algos", nargs="+", default=list(ALGORITHMS), choices=list(ALGORITHMS))
    args = parser.parse_args()
    th.set_num_threads(1)

    for name in args.algos:
        algo_class = ALGORITHMS[name]
        env = make_vec_env(args.env, n_envs=1, seed=args.seed)
        start = time.perf_counter()
        # the line that changes: PPO("MlpPolicy", env, ...) -> REINFORCE / ISPG / PPOKL / GRPO("MlpPolicy", env, ...)
        model = algo_class("MlpPolicy", env, seed=args.seed, verbose=0)
        model.learn(total_timesteps=args.timesteps)
        path = f"{name.lower()}_{args.env}"
        model.save(path)
        loaded = algo_class.load(path, env=env)
        eval_env = make_vec_env(args.env, n_envs=1, seed=args.seed + 10_000)
        mean, std = evaluate_policy(loaded, eval_env, n_eval_episodes=10, deterministic=True)
        seconds = time.perf_counter() - start
        print(f"{name:9s} {args.env}: {mean:8.1f} +/- {std:6.1f} after {model.num_timesteps} steps ({seconds:.0f} s)")


if __name__ == "__main__":
    main()
