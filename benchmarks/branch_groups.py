"""
GRPO with branch groups against reset groups on Pendulum-v1, with the same code: the final policy of ``learn()``.

Each run trains GRPO for ``--budget`` env steps (every step counted: trunk, continuations, replay), then evaluates
the deterministic policy that ``learn()`` returned on 10 episodes of an env seeded ``GROUP_SEED_LIMIT + seed``
(training resets use seeds below ``GROUP_SEED_LIMIT``, so evaluation starts are disjoint from training ones). One
torch thread. Each finished run is written to its own JSON file under ``--out``, atomically; a run whose file
exists is skipped.

    nice -n 5 python -m benchmarks.branch_groups --seeds 0 1 2 --budget 100000

Settings (the best of a first exploration): 16 branch states x 4 continuations (``n_groups=16``,
``group_size=4``), ``branch_horizon=16``, ``gamma=0.9``, minibatch 64, 10 epochs, learning rate 1e-3, initial
log std 0, outcome advantages, one env. ``reset``: the same, with reset groups (undiscounted episode returns).
``vine`` and ``vine_g2_h8``: VinePPO's per-state values (``branch_advantage="vine"``) with G x H = 4 x 16 and
2 x 8. ``first`` and ``first_common``: TRPO's vine (``branch_advantage="first"``: only the continuations' first
actions train), G = 2 x B = 32, with independent noise or common random numbers (``branch_noise="common"``).
``untrained``: the initial policy of the same seed, not trained.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch as th
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.utils import LinearSchedule

from sb3_pg_ext import GRPO
from sb3_pg_ext.common.groups import GROUP_SEED_LIMIT

ENV_ID = "Pendulum-v1"
COMMON: dict[str, Any] = dict(
    group_size=4,
    n_groups=16,
    batch_size=64,
    n_epochs=10,
    learning_rate=1e-3,
    policy_kwargs=dict(log_std_init=0.0),
)
#: Branch groups with the first exploration's best settings: H = 16, gamma = 0.9
BRANCH: dict[str, Any] = dict(COMMON, group_start="branch", branch_horizon=16, gamma=0.9)
#: VinePPO's values with G = 2 continuations of H = 8 steps (about 3,400 env steps per 200-step trunk)
VINE_G2_H8: dict[str, Any] = dict(
    COMMON, group_size=2, group_start="branch", branch_advantage="vine", branch_horizon=8, gamma=0.9
)
#: TRPO's vine: the first action of each of G = 2 continuations from B = 32 branch states trains (returns scaled by
#: each group's std: with G = 2 the advantages are +-1, the sign of the two returns' difference)
FIRST: dict[str, Any] = dict(BRANCH, group_size=2, n_groups=32, branch_advantage="first")
#: Against the std's collapse: gSDE, resampled every 4 steps (rl-zoo3's PPO setting on Pendulum-v1)
GSDE: dict[str, Any] = dict(use_sde=True, sde_sample_freq=4)
SETTINGS: dict[str, dict[str, Any]] = {
    "branch": BRANCH,
    "reset": dict(COMMON, group_start="reset"),
    # the same branch groups with the per-step mean as the loss aggregation (DAPO's token_mean)
    "branch_token_mean": dict(BRANCH, loss_aggregation="token_mean"),
    "branch_token_mean_gsde": dict(BRANCH, loss_aggregation="token_mean", **GSDE),
    # what the estimator lab measured on Pendulum-v1 (docs/lab.md): groups of 8 branch continuations have a third of
    # the noise-to-signal of groups of 4, and dividing by each group's std inflates it; the same env steps per update
    "branch_token_mean_batch": dict(BRANCH, loss_aggregation="token_mean", scale_rewards="batch"),
    "branch_g8_token_mean": dict(BRANCH, group_size=8, n_groups=8, loss_aggregation="token_mean"),
    # VinePPO's values: G = 4 continuations of H = 16 steps from every trunk state, the trunk trained with
    # A_t = r_t + gamma V(s_{t+1}) - V(s_t) (about 13,000 env steps per 200-step trunk)
    "vine": dict(BRANCH, branch_advantage="vine"),
    "vine_g2_h8": VINE_G2_H8,
    "vine_g2_h8_token_mean": dict(VINE_G2_H8, loss_aggregation="token_mean"),
    "vine_g2_h8_gsde": dict(VINE_G2_H8, **GSDE),
    # TRPO's vine: only the continuations' first actions train (G = 2 from each of B = 32 branch states), with
    # independent noise or common random numbers after the first action
    "first": FIRST,
    "first_common": dict(FIRST, branch_noise="common"),
    # the same with the returns' differences divided by the batch's std of the returns (not each group's): the
    # between-state spread of the returns then shrinks the advantages, and learning slows (measured)
    "first_batch": dict(FIRST, scale_rewards="batch"),
    "first_common_batch": dict(FIRST, branch_noise="common", scale_rewards="batch"),
    "first_common_g4_batch": dict(FIRST, branch_noise="common", group_size=4, n_groups=16, scale_rewards="batch"),
    # common noise, faster learning within the 1e5 budget: a larger step, more epochs per rollout, continuations of
    # H = 8 steps (twice the updates, the discounted return truncated at gamma^8 = 0.43), a smaller initial std
    "first_common_lr3e-3": dict(FIRST, branch_noise="common", learning_rate=3e-3),
    "first_common_e30": dict(FIRST, branch_noise="common", n_epochs=30),
    "first_common_e100": dict(FIRST, branch_noise="common", n_epochs=100),
    "first_common_e50": dict(FIRST, branch_noise="common", n_epochs=50),
    "first_common_e70": dict(FIRST, branch_noise="common", n_epochs=70),
    # 50 epochs with an entropy bonus on the trained actions, against the std's collapse
    "first_common_e50_ent": dict(FIRST, branch_noise="common", n_epochs=50, ent_coef=0.01),
    # 30 epochs on twice the branch states per update (B = 64: 128 trained actions, half the updates)
    "first_common_e30_b64": dict(FIRST, branch_noise="common", n_epochs=30, n_groups=64),
    "first_common_h8": dict(FIRST, branch_noise="common", branch_horizon=8),
    "first_common_std037": dict(FIRST, branch_noise="common", policy_kwargs=dict(log_std_init=-1.0)),
    # 50 epochs with the learning rate decaying linearly to 0 (1e-3 and 2e-3 at the start): the final policy moves
    # less in the last updates
    "first_common_e50_lin": dict(FIRST, branch_noise="common", n_epochs=50, learning_rate=LinearSchedule(1e-3, 0.0, 1.0)),
    "first_common_e50_lin2": dict(FIRST, branch_noise="common", n_epochs=50, learning_rate=LinearSchedule(2e-3, 0.0, 1.0)),
    # 50 epochs, the returns' differences kept at their size (no std division): with G = 2 the group's std turns
    # every advantage into +-1, whatever the difference
    "first_common_e50_none": dict(FIRST, branch_noise="common", n_epochs=50, scale_rewards="none"),
    # 50 epochs, G = 4 continuations from B = 16 branch states (the same env steps per update)
    "first_common_e50_g4": dict(FIRST, branch_noise="common", n_epochs=50, group_size=4, n_groups=16),
    # 50 epochs with shorter continuations (H = 8 and 12): more updates in the budget, returns cut earlier
    "first_common_e50_h8": dict(FIRST, branch_noise="common", n_epochs=50, branch_horizon=8),
    "first_common_e50_h12": dict(FIRST, branch_noise="common", n_epochs=50, branch_horizon=12),
    # a std that is not learned (log std frozen at 0.5 or 0.3: FROZEN_LOG_STD), against the std's collapse with many epochs
    "first_common_e50_std05_fixed": dict(FIRST, branch_noise="common", n_epochs=50, policy_kwargs=dict(log_std_init=-0.693)),
    "first_common_e100_std05_fixed": dict(FIRST, branch_noise="common", n_epochs=100, policy_kwargs=dict(log_std_init=-0.693)),
    "first_common_e100_std03_fixed": dict(FIRST, branch_noise="common", n_epochs=100, policy_kwargs=dict(log_std_init=-1.204)),
    "first_common_e200_std05_fixed": dict(FIRST, branch_noise="common", n_epochs=200, policy_kwargs=dict(log_std_init=-0.693)),
    # the initial policy (no training), evaluated the same way: what "learned nothing" scores on each seed
    "untrained": dict(COMMON),
}
#: Settings whose policy's log std is not trained (``requires_grad`` off after construction: the optimiser skips it):
#: those named ``*_fixed``
FROZEN_LOG_STD = {name for name in SETTINGS if name.endswith("_fixed")}


def write_atomically(path: Path, record: dict[str, Any]) -> None:
    """Write ``record`` as JSON to ``path`` through a temporary file in the same folder and ``os.replace``."""
    with tempfile.NamedTemporaryFile("w", dir=path.parent, suffix=".tmp", delete=False) as handle:
        try:
            # settings that are objects (a learning-rate schedule) are written as their repr
            json.dump(record, handle, indent=2, default=repr)
        except BaseException:
            handle.close()
            os.unlink(handle.name)
            raise
    os.replace(handle.name, path)


def run(setting: str, seed: int, budget: int, n_eval_episodes: int) -> dict[str, Any]:
    """Train one GRPO run and evaluate its final deterministic policy."""
    th.set_num_threads(1)
    kwargs = SETTINGS[setting]
    start, cpu_start = time.time(), time.process_time()
    env = make_vec_env(ENV_ID, n_envs=1, seed=seed)
    model = GRPO("MlpPolicy", env, seed=seed, device="cpu", **kwargs)
    if setting in FROZEN_LOG_STD:
        model.policy.log_std.requires_grad_(False)
    if setting != "untrained":
        model.learn(budget)
    train_seconds, train_cpu_seconds = time.time() - start, time.process_time() - cpu_start
    eval_env = make_vec_env(ENV_ID, n_envs=1, seed=GROUP_SEED_LIMIT + seed)
    returns, _ = evaluate_policy(
        model, eval_env, n_eval_episodes=n_eval_episodes, deterministic=True, return_episode_rewards=True
    )
    assert isinstance(returns, list)  # return_episode_rewards=True: one return per episode
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=False).stdout.strip()
    return {
        "env_id": ENV_ID,
        "setting": setting,
        "seed": seed,
        "budget": budget,
        "num_timesteps": model.num_timesteps,
        "kwargs": kwargs,
        "eval_env_seed": GROUP_SEED_LIMIT + seed,
        "eval_returns": [float(r) for r in returns],
        "eval_mean": float(np.mean(returns)),
        "final_std": float(th.exp(model.policy.log_std).mean().item()),
        "train_seconds": round(train_seconds, 1),
        "train_cpu_seconds": round(train_cpu_seconds, 1),
        "torch_threads": th.get_num_threads(),
        "commit": commit,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--budget", type=int, default=100_000)
    parser.add_argument("--n-eval-episodes", type=int, default=10)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/branch_groups"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for seed in args.seeds:
        for setting in args.settings:
            path = args.out / f"{ENV_ID}_{setting}_{args.budget}_seed{seed}.json"
            if path.exists():
                continue
            record = run(setting, seed, args.budget, args.n_eval_episodes)
            write_atomically(path, record)
            print(f"{setting} seed {seed}: {record['eval_mean']:.1f} ({record['train_seconds']} s)", flush=True)


if __name__ == "__main__":
    main()
