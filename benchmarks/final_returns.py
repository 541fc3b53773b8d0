"""
Final-policy returns of an algorithm's defaults: train for the whole budget, then evaluate the policy that
``learn()`` returns (not the best evaluation on the way).

    python -m benchmarks.final_returns --algo reinforce --seeds 0 1 2 3 4 --steps 200000
    python -m benchmarks.final_returns --algo grpo --n-envs 8 --tag n8 --kwargs '{"learning_rate": 5e-4}'
    python -m benchmarks.final_returns --algo grpo --n-envs 8 --tag lin1e-3 --kwargs '{"learning_rate": "lin_1e-3"}'

``"learning_rate": "lin_<x>"`` (rl-zoo3's notation, since JSON cannot hold a schedule) is a linear decay from x to 0
over ``learn()``'s budget; the result file keeps the string.

Each (algo, tag, seed) is written to ``benchmarks/results/final_returns/<algo>[-<tag>]-seed<k>.json`` the moment it
ends (atomically: a temporary file, then a rename); a rerun skips the files that exist, so an interrupted sweep
continues where it stopped. Evaluation: 10 deterministic episodes on an env seeded ``10_000 + seed`` (disjoint from
the training seeds), one torch thread.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import time
from pathlib import Path

from stable_baselines3 import PPO
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.utils import LinearSchedule

import sb3_pg_ext
from benchmarks.harness import RESULTS_DIR, evaluate, single_thread
from sb3_pg_ext import GRPO, ISPG, PPOKL, REINFORCE

ALGOS = {"reinforce": REINFORCE, "ispg": ISPG, "ppo_kl": PPOKL, "grpo": GRPO, "ppo": PPO}
OUT_DIR = RESULTS_DIR / "final_returns"


def code_version() -> str:
    """The commit the run used, with ``+dirty`` when the checkout had uncommitted changes (defaults may differ)."""
    root = Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True).stdout
        dirty = subprocess.run(["git", "status", "--porcelain", "sb3_pg_ext"], cwd=root, capture_output=True, text=True).stdout
    except OSError:
        return "unknown"
    return commit.strip() + ("+dirty" if dirty.strip() else "")


def with_schedules(kwargs: dict) -> dict:
    """Replace a ``"lin_<x>"`` learning rate by the linear decay from x to 0 (``LinearSchedule(x, 0.0, 1.0)``)."""
    learning_rate = kwargs.get("learning_rate")
    if isinstance(learning_rate, str):
        if not learning_rate.startswith("lin_"):
            raise ValueError(f"learning_rate strings must be 'lin_<initial value>'; got {learning_rate!r}")
        return {**kwargs, "learning_rate": LinearSchedule(float(learning_rate[4:]), 0.0, 1.0)}
    return kwargs


def run(algo: str, seed: int, steps: int, env_id: str, n_envs: int, kwargs: dict, tag: str | None) -> Path:
    name = f"{algo}-{tag}-seed{seed}" if tag else f"{algo}-seed{seed}"
    path = OUT_DIR / f"{name}.json"
    if path.exists():
        print(f"{name}: done already ({json.loads(path.read_text())['final_eval']:.1f})")
        return path
    env = make_vec_env(env_id, n_envs=n_envs, seed=seed)
    model = ALGOS[algo]("MlpPolicy", env, seed=seed, device="cpu", **with_schedules(kwargs))
    cpu0, wall0 = time.process_time(), time.perf_counter()
    model.learn(steps)
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    final = evaluate(model, env_id, n_eval_episodes=10, seed=10_000 + seed)
    env.close()
    payload = {
        "algo": algo,
        "env_id": env_id,
        "seed": seed,
        "n_envs": n_envs,
        "budget": steps,
        "num_timesteps": model.num_timesteps,
        "kwargs": kwargs,
        "final_eval": final,
        "cpu_seconds": cpu,
        "wall_seconds": wall,
        "package_version": sb3_pg_ext.__version__,
        "commit": code_version(),
        "date": time.strftime("%Y-%m-%d"),
    }
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(payload, indent=2) + "\n")
    os.replace(tmp, path)
    print(f"{name}: final deterministic eval {final:.1f} after {model.num_timesteps} steps ({cpu:.0f} CPU s)")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--algo", choices=sorted(ALGOS), required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--steps", type=int, default=200_000)
    parser.add_argument("--env", default="CartPole-v1")
    parser.add_argument("--n-envs", type=int, default=1)
    parser.add_argument("--kwargs", type=json.loads, default={}, help="constructor keyword arguments as JSON")
    parser.add_argument("--tag", default=None, help="name of this setting in the result file names")
    args = parser.parse_args()
    single_thread()
    for seed in args.seeds:
        run(args.algo, seed, args.steps, args.env, args.n_envs, args.kwargs, args.tag)


if __name__ == "__main__":
    main()
