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
from stable_baselines3.common.env_util import make_vec_env

from benchmarks.harness import learning_curve, markdown_throughput_table, measure_throughput, save_results, single_thread
from sb3_pg_ext import REINFORCE


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    single_thread()

    checkpoints = [5_000, 10_000] if args.quick else [50_000, 100_000, 200_000]
    seeds = [0] if args.quick else [0, 1, 2]
    curves = {}
    for seed in seeds:
        curves[seed] = learning_curve(
            lambda seed=seed: REINFORCE("MlpPolicy", make_vec_env("CartPole-v1", n_envs=1, seed=seed), seed=seed),
            "CartPole-v1",
            checkpoints,
        )
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
