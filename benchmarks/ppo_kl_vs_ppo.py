"""
PPOKL vs SB3 PPO on CartPole-v1 and Pendulum-v1, 100k env steps each, rl-zoo3's PPO hyperparameters for both
(read from rl-zoo3's ``hyperparams/ppo.yml``: same network, same n_envs). PPOKL keeps every zoo setting except the
clipping: it runs its defaults, the paper's pure penalty (``clip_range=None``, analytic forward KL, beta from 1.0
adapted per rollout towards ``kl_target=0.01``).

Three parts, in one run:
1. learning: 3 seeds per algorithm and env, deterministic evaluation mean (10 episodes, eval seeds disjoint from
   training) after 100k steps;
2. training throughput, PPO and PPOKL alternated (``benchmarks.harness.measure_throughput``);
3. the cost of keeping pi_old for the analytic KL: one no-grad pass per update to store its parameters in the rollout
   (what PPOKL does) vs a frozen copy of the old policy run on every minibatch of every epoch (the alternative).

    python -m benchmarks.ppo_kl_vs_ppo            # full run (about 10 minutes on 2 shared cores)
    python -m benchmarks.ppo_kl_vs_ppo --quick    # smoke run

Writes benchmarks/results/ppo_kl_vs_ppo.json and prints README-ready tables.

    python -m benchmarks.ppo_kl_vs_ppo --defaults-throughput [--repetitions 8] [--steps 16384]

measures only the throughput of the two algorithms' defaults (CartPole-v1, 8 envs: one 16,384-step rollout and
update per timed ``learn``), alternated, and writes benchmarks/results/ppo_kl_defaults_throughput.json.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import rl_zoo3
import torch as th
import yaml
from rl_zoo3.utils import linear_schedule
from stable_baselines3 import PPO
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.policies import ActorCriticPolicy

from benchmarks.harness import evaluate, markdown_throughput_table, measure_throughput, save_results, single_thread
from sb3_pg_ext import PPOKL
from sb3_pg_ext.ppo_kl.buffers import distribution_parameters

ENV_IDS = ("CartPole-v1", "Pendulum-v1")
SCHEDULED = ("learning_rate", "clip_range")


def zoo_hyperparams(env_id: str) -> tuple[int, int, dict[str, Any]]:
    """(n_envs, n_timesteps, PPO keyword arguments) from rl-zoo3's ppo.yml, ``lin_<x>`` strings made schedules."""
    path = Path(rl_zoo3.__file__).parent / "hyperparams" / "ppo.yml"
    params = dict(yaml.safe_load(path.read_text())[env_id])
    n_envs, n_timesteps = int(params.pop("n_envs")), int(params.pop("n_timesteps"))
    assert params.pop("policy") == "MlpPolicy"
    handled = {"n_steps", "batch_size", "gae_lambda", "gamma", "n_epochs", "ent_coef", "use_sde", "sde_sample_freq"}
    handled |= set(SCHEDULED)
    assert set(params) <= handled, f"zoo settings not handled here: {set(params) - handled}"
    for key in SCHEDULED:
        if isinstance(params.get(key), str) and params[key].startswith("lin_"):
            params[key] = linear_schedule(float(params[key][len("lin_") :]))
    return n_envs, n_timesteps, params


def factories(env_id: str, seed: int) -> dict[str, Callable[[], BaseAlgorithm]]:
    n_envs, _, ppo_kwargs = zoo_hyperparams(env_id)
    ppokl_kwargs = {key: value for key, value in ppo_kwargs.items() if key != "clip_range"}
    return {
        "PPO": lambda: PPO("MlpPolicy", make_vec_env(env_id, n_envs=n_envs, seed=seed), seed=seed, device="cpu", **ppo_kwargs),
        "PPOKL": lambda: PPOKL(
            "MlpPolicy", make_vec_env(env_id, n_envs=n_envs, seed=seed), seed=seed, device="cpu", **ppokl_kwargs
        ),
    }


def learning(env_id: str, seeds: list[int], timesteps: int) -> dict[str, list[dict[str, float]]]:
    runs: dict[str, list[dict[str, float]]] = {"PPO": [], "PPOKL": []}
    for seed in seeds:
        for name, factory in factories(env_id, seed).items():
            model = factory()
            start = time.perf_counter()
            model.learn(timesteps)
            run = {"seed": seed, "eval_mean": evaluate(model, env_id, n_eval_episodes=10, seed=10_000 + seed)}
            run["train_wall_s"] = time.perf_counter() - start
            if isinstance(model, PPOKL):
                run["final_kl_coef"] = model.kl_coef
            runs[name].append(run)
            print(f"{env_id} {name} seed {seed}: {run}", flush=True)
            model.get_env().close()  # type: ignore[union-attr]
    return runs


def old_policy_cost(env_id: str, repetitions: int) -> dict[str, float]:
    """CPU seconds per update of the two ways to keep pi_old for the analytic KL, on one full rollout."""
    model = factories(env_id, seed=0)["PPOKL"]()
    assert isinstance(model, PPOKL)
    model.learn(model.n_steps * model.n_envs)  # one rollout and update: a full (flattened) buffer to replay
    buffer, policy = model.rollout_buffer, model.policy

    def store() -> None:  # what PPOKL does: one pass over the rollout, parameters kept
        with th.no_grad():
            for data in buffer.get(model._no_grad_batch_size()):
                distribution_parameters(policy.get_distribution(data.observations))

    def frozen_copy() -> None:  # the alternative: copy the policy, run it on every minibatch of every epoch
        old = model.policy_class(
            model.observation_space, model.action_space, model.lr_schedule, use_sde=model.use_sde, **model.policy_kwargs
        )
        assert isinstance(old, ActorCriticPolicy)
        old.load_state_dict(policy.state_dict())
        with th.no_grad():
            for _ in range(model.n_epochs):
                for data in buffer.get(model.batch_size):
                    old.get_distribution(data.observations)

    def update() -> None:  # for scale: a whole rollout + update
        model.learn(model.n_steps * model.n_envs, reset_num_timesteps=False)

    costs = {}
    for name, fn in (("store_in_rollout_s", store), ("frozen_copy_s", frozen_copy), ("rollout_and_update_s", update)):
        times = []
        for _ in range(repetitions):
            start = time.process_time()
            fn()
            times.append(time.process_time() - start)
        costs[name] = statistics.median(times)
    model.get_env().close()  # type: ignore[union-attr]
    return costs


def defaults_throughput(repetitions: int, steps: int) -> None:
    """PPO() vs PPOKL() with their defaults on CartPole-v1 with 8 envs, alternated (benchmarks.harness)."""
    env_id, n_envs = "CartPole-v1", 8
    contenders: dict[str, Callable[[], BaseAlgorithm]] = {
        "PPO": lambda: PPO("MlpPolicy", make_vec_env(env_id, n_envs=n_envs, seed=0), seed=0, device="cpu"),
        "PPOKL": lambda: PPOKL("MlpPolicy", make_vec_env(env_id, n_envs=n_envs, seed=0), seed=0, device="cpu"),
    }
    throughput = measure_throughput(contenders, steps, repetitions=repetitions)
    ppo, ppokl = throughput
    ratios = [b / a for a, b in zip(ppo.steps_per_cpu_second, ppokl.steps_per_cpu_second, strict=True)]
    wall_ratios = [b / a for a, b in zip(ppo.steps_per_wall_second, ppokl.steps_per_wall_second, strict=True)]
    results = {
        "env_id": env_id,
        "n_envs": n_envs,
        "steps_per_learn": steps,
        "repetitions": repetitions,
        "throughput": [r.summary() for r in throughput],
        "raw": throughput,
        "ppokl_over_ppo_cpu": {
            "ratio_of_medians": statistics.median(ppokl.steps_per_cpu_second) / statistics.median(ppo.steps_per_cpu_second),
            "per_repetition": ratios,
        },
        "ppokl_over_ppo_wall": {
            "ratio_of_medians": statistics.median(ppokl.steps_per_wall_second) / statistics.median(ppo.steps_per_wall_second),
            "per_repetition": wall_ratios,
        },
        "load_average_at_end": list(os.getloadavg()),
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }
    print(markdown_throughput_table(throughput))
    print(f"PPOKL / PPO, steps per CPU s: {results['ppokl_over_ppo_cpu']}")
    print(f"PPOKL / PPO, steps per wall s: {results['ppokl_over_ppo_wall']}")
    print(f"wrote {save_results('ppo_kl_defaults_throughput', results)}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 seed, few steps, 1 repetition")
    parser.add_argument("--defaults-throughput", action="store_true", help="only the defaults' throughput pairing")
    parser.add_argument("--repetitions", type=int, default=8, help="with --defaults-throughput")
    parser.add_argument("--steps", type=int, default=16_384, help="steps per timed learn, with --defaults-throughput")
    args = parser.parse_args()
    single_thread()
    if args.defaults_throughput:
        defaults_throughput(args.repetitions, args.steps)
        return

    seeds = [0] if args.quick else [0, 1, 2]
    repetitions = 1 if args.quick else 3
    results: dict[str, Any] = {"seeds": seeds, "repetitions": repetitions, "envs": {}}
    for env_id in ENV_IDS:
        n_envs, zoo_timesteps, params = zoo_hyperparams(env_id)
        rollout = params["n_steps"] * n_envs
        timesteps = 2 * rollout if args.quick else zoo_timesteps
        # whole rollouts: 128 x 256 steps on CartPole, 8 x 4096 on Pendulum
        throughput_steps = 2 * rollout if args.quick else 32_768
        entry: dict[str, Any] = {"n_envs": n_envs, "timesteps": timesteps, "throughput_steps": throughput_steps}
        entry["learning"] = learning(env_id, seeds, timesteps)
        throughput = measure_throughput(factories(env_id, seed=0), throughput_steps, repetitions=repetitions)
        entry["throughput"] = [r.summary() for r in throughput]
        entry["old_policy_cost"] = old_policy_cost(env_id, repetitions)
        results["envs"][env_id] = entry
        print(f"{env_id} throughput ({throughput_steps} steps x {repetitions}, alternated)")
        print(markdown_throughput_table(throughput), flush=True)
        print(f"{env_id} keeping pi_old: {entry['old_policy_cost']}", flush=True)

    print("\n| env | algorithm | " + " | ".join(f"seed {s}" for s in seeds) + " | mean |")
    print("|---|---|" + "---|" * (len(seeds) + 1))
    for env_id, entry in results["envs"].items():
        for name, runs in entry["learning"].items():
            means = [run["eval_mean"] for run in runs]
            cells = " | ".join(f"{m:.1f}" for m in means)
            print(f"| {env_id} | {name} | {cells} | {statistics.mean(means):.1f} |")
    path = save_results("ppo_kl_vs_ppo" + ("_quick" if args.quick else ""), results)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
