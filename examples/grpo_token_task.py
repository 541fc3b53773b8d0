"""
GRPO on a token-generation task: reverse a string of 3-4 digits (``sb3_pg_ext/DigitReverse-v0``), printing the
greedy success rate on 200 held-out prompts as it trains.

    python examples/grpo_token_task.py [--env sb3_pg_ext/DigitReverse-v0] [--timesteps 300000] [--seed 0]

The settings are those of ``hyperparams/grpo.yml`` for the token tasks (TokenPolicy, G = 16 answers per prompt,
B = 32 prompts per update, 16 envs; from benchmarks/grpo_token_task.py). Evaluation prompts come from reset seeds
>= ``GROUP_SEED_LIMIT``, which training groups never use. The same run from the rl-zoo3 launcher:

    sb3-pg-zoo train --algo grpo --env sb3_pg_ext/DigitReverse-v0 -n 300000
    sb3-pg-zoo enjoy --algo grpo --env sb3_pg_ext/DigitReverse-v0 -f logs -n 30 --deterministic
"""

from __future__ import annotations

import argparse
import time

import gymnasium as gym
import torch as th
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.env_util import make_vec_env

from sb3_pg_ext import GRPO
from sb3_pg_ext.envs import success_rate
from sb3_pg_ext.grpo.grpo import GROUP_SEED_LIMIT

SETTINGS = dict(group_size=16, n_groups=32, n_epochs=2, batch_size=512, ent_coef=0.01)
N_ENVS = 16


class PrintProgress(BaseCallback):
    """Every ``every`` env steps: greedy success rate on the held-out prompts, the mean training reward, time."""

    def __init__(self, env_id: str, every: int, n_prompts: int = 200):
        super().__init__()
        self.eval_env = gym.make(env_id)
        self.every = every
        self.seeds = range(GROUP_SEED_LIMIT, GROUP_SEED_LIMIT + n_prompts)
        self.next_report = every
        self.start = time.perf_counter()

    def _on_step(self) -> bool:
        return True

    def _on_rollout_end(self) -> None:
        if self.num_timesteps < self.next_report:
            return
        self.next_report += self.every
        rate = success_rate(lambda obs: self.model.predict(obs, deterministic=True)[0], self.eval_env, self.seeds)
        rewards = [info["r"] for info in self.model.ep_info_buffer]
        mean_reward = sum(rewards) / max(len(rewards), 1)
        elapsed = time.perf_counter() - self.start
        print(
            f"{self.num_timesteps:>8d} steps  greedy success {rate:6.1%}  train reward {mean_reward:.3f}  {elapsed:5.0f} s",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", default="sb3_pg_ext/DigitReverse-v0")
    parser.add_argument("--timesteps", type=int, default=300_000)
    parser.add_argument("--eval-every", type=int, default=25_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    th.set_num_threads(1)

    env = make_vec_env(args.env, n_envs=N_ENVS, seed=args.seed)
    model = GRPO("TokenPolicy", env, seed=args.seed, **SETTINGS)
    model.learn(total_timesteps=args.timesteps, callback=PrintProgress(args.env, args.eval_every))
    model.save("grpo_digit_task")
    demo = gym.make(args.env, render_mode="ansi")
    for seed in range(GROUP_SEED_LIMIT, GROUP_SEED_LIMIT + 5):
        obs, _ = demo.reset(seed=seed)
        done = False
        while not done:
            action, _ = model.predict(obs, deterministic=True)
            obs, _, done, _, _ = demo.step(action)
        print(demo.render())


if __name__ == "__main__":
    main()
