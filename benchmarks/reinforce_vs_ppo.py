"""
REINFORCE on CartPole-v1: deterministic evaluation at 50k/100k/200k env steps for 3 seeds, and training throughput
next to SB3 PPO with the same network (SB3's default MlpPolicy: pi [64, 64], vf [64, 64]) and the same n_envs,
measured in this one run, alternating the contenders.

    python -m benchmarks.reinforce_vs_ppo            # full run (about 15 minutes on one core)
    python -m benchmarks.reinforce_vs_ppo --quick    # smoke run

Writes benchmarks/results/reinforce_vs_ppo.json and prints README-ready tables.
"""

from __future__ import annotations

import argparse

from stable_baselines3 import PPO
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.env_util import make_vec_env

from benchmarks.harness import evaluate, markdown_throughput_table, measure_throughput, save_results, single_thread
from sb3_pg_ext import REINFORCE


class CheckpointEvaluations(BaseCallback):
    """Deterministic evaluations (``benchmarks.harness.evaluate``) when ``num_timesteps`` first passes each checkpoint."""

    def __init__(self, checkpoints: list[int], env_id: str, eval_seed: int) -> None:
        super().__init__()
        self.pending = sorted(checkpoints)
        self.env_id, self.eval_seed = env_id, eval_seed
        self.curve: list[dict[str, float]] = []

    def _on_step(self) -> bool:
        while self.pending and self.num_timesteps >= self.pending[0]:
            self.pending.pop(0)
            self.curve.append(
                {"timesteps": self.num_timesteps, "eval_mean": evaluate(self.model, self.env_id, 10, self.eval_seed)}
            )
        return True


def one_run_curve(seed: int, checkpoints: list[int]) -> list[dict[str, float]]:
    """
    One ``learn(max(checkpoints))`` with the defaults (so that the default learning-rate decay spans the whole run),
    evaluated at the earlier checkpoints on the way and, for the last one, on the final policy that ``learn()`` returns.
    """
    model = REINFORCE("MlpPolicy", make_vec_env("CartPole-v1", n_envs=1, seed=seed), seed=seed)
    callback = CheckpointEvaluations(checkpoints[:-1], "CartPole-v1", 10_000 + seed)
    model.learn(checkpoints[-1], callback=callback)
    final = {"timesteps": model.num_timesteps, "eval_mean": evaluate(model, "CartPole-v1", 10, 10_000 + seed)}
    return [*callback.curve, final]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    single_thread()

    checkpoints = [5_000, 10_000] if args.quick else [50_000, 100_000, 200_000]
    seeds = [0] if args.quick else [0, 1, 2]
    curves = {}
    for seed in seeds:
        curves[seed] = one_run_curve(seed, checkpoints)
        print(f"REINFORCE seed {seed}: {curves[seed]}", flush=True)

    throughput = {}
    steps = 5_000 if args.quick else 40_000
    repetitions = 1 if args.quick else 3
    for n_envs in (1, 8):
        contenders = {
            f"REINFORCE (n_envs={n_envs})": lambda n=n_envs: REINFORCE(
                "MlpPolicy", make_vec_env("CartPole-v1", n_envs=n, seed=0), seed=0
            ),
            f"PPO (n_envs={n_envs})": lambda n=n_envs: PPO("MlpPolicy", make_vec_env("CartPole-v1", n_envs=n, seed=0), seed=0),
        }
        results = measure_throughput(contenders, steps, repetitions=repetitions)
        throughput[n_envs] = [r.summary() for r in results]
        print(markdown_throughput_table(results), flush=True)

    lines = ["| seed | " + " | ".join(f"{c // 1000}k" for c in checkpoints) + " |", "|---" * (len(checkpoints) + 1) + "|"]
    for seed, curve in curves.items():
        lines.append(f"| {seed} | " + " | ".join(f"{p['eval_mean']:.1f}" for p in curve) + " |")
    print("\n".join(lines))
    path = save_results(
        "reinforce_vs_ppo" + ("_quick" if args.quick else ""),
        {"curves": curves, "throughput": throughput, "throughput_steps": steps, "repetitions": repetitions},
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
