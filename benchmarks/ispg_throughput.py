"""
Throughput of ISPG next to SB3's SAC on Pendulum-v1, with the same actor network size ([256, 256], SAC's default).

Both train from scratch with their defaults apart from the network (ISPG: ``net_arch=[256, 256]``; SAC: its
default actor and critics of [256, 256]); each repetition trains a fresh model for ``--timesteps`` env steps after
``--warmup`` untimed steps (SAC's ``learning_starts=100`` falls in the warm-up, so both are timed while training).
The contenders alternate (ISPG, SAC, ISPG, SAC, ...) and the figures are medians over repetitions, in env steps per
CPU second of this process (one torch thread) and per wall-clock second (``benchmarks/harness.py``).

Note what is compared: SAC does one gradient step on 256 transitions per env step (and updates 2 critics and
their targets); ISPG with its defaults does ``gradient_steps`` steps on ``batch_size`` whole episodes every
``train_freq`` episodes. Throughput is the cost of one env step of training, not of learning Pendulum (ISPG, a
critic-free Monte-Carlo method, does not solve Pendulum in this budget; SAC does in about 20k steps).

Run from the repository root (about 5 min of one CPU core):

    python -m benchmarks.ispg_throughput
    python -m benchmarks.ispg_throughput --timesteps 2000 --repetitions 2   # quicker

Results: ``benchmarks/results/ispg_throughput.json`` and a Markdown table on stdout.
"""

from __future__ import annotations

import argparse

from stable_baselines3 import SAC
from stable_baselines3.common.env_util import make_vec_env

from benchmarks.harness import markdown_throughput_table, measure_throughput, save_results
from sb3_pg_ext import ISPG

NET_ARCH = [256, 256]


def make_ispg(seed: int = 0) -> ISPG:
    return ISPG(
        "MlpPolicy", make_vec_env("Pendulum-v1", n_envs=1, seed=seed), policy_kwargs=dict(net_arch=NET_ARCH), seed=seed
    )


def make_sac(seed: int = 0) -> SAC:
    return SAC("MlpPolicy", make_vec_env("Pendulum-v1", n_envs=1, seed=seed), policy_kwargs=dict(net_arch=NET_ARCH), seed=seed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--timesteps", type=int, default=5_000)
    parser.add_argument("--warmup", type=int, default=1_000)
    parser.add_argument("--repetitions", type=int, default=3)
    args = parser.parse_args()

    results = measure_throughput(
        {"ISPG": make_ispg, "SAC": make_sac},
        total_timesteps=args.timesteps,
        repetitions=args.repetitions,
        warmup_timesteps=args.warmup,
    )
    table = markdown_throughput_table(results)
    print(table)
    path = save_results(
        "ispg_throughput",
        {
            "command": f"python -m benchmarks.ispg_throughput --timesteps {args.timesteps} --warmup {args.warmup} "
            f"--repetitions {args.repetitions}",
            "env": "Pendulum-v1",
            "net_arch": NET_ARCH,
            "table": table,
            "results": [r.summary() for r in results],
        },
    )
    print(f"saved {path}")


if __name__ == "__main__":
    main()
