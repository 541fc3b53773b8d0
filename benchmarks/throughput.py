"""
Training throughput pairings and per-update costs, which the benchmark grid (``python -m sb3_pg_ext.benchmark``,
docs/benchmark.md: learning results next to SB3's algorithms) does not measure.

Every pairing trains fresh models side by side in this one run, alternating the contenders (A, B, A, B, ...) over
the repetitions, and reports env steps per CPU second of this process (one torch thread) and per wall-clock second,
median (min-max) over the repetitions (``benchmarks/harness.py::measure_throughput``). Building a model is not timed.

Measurements (one subcommand each; run from the repository root):

    python -m benchmarks.throughput reinforce
        REINFORCE vs SB3 PPO on CartPole-v1, both with their defaults and SB3's default MlpPolicy, at n_envs=1 and
        at n_envs=8; 40,000 steps x 3 repetitions (about 3 min of one core).
        Writes benchmarks/results/reinforce_vs_ppo.json.

    python -m benchmarks.throughput grpo
        GRPO (its defaults, n_envs=1 and n_envs=8) vs SB3 PPO at rl-zoo3's CartPole-v1 hyperparameters (8 envs,
        n_steps 32, 20 epochs, linear lr/clip schedules) on CartPole-v1; 20,000 steps x 3 repetitions (about a minute).
        Writes benchmarks/results/grpo_vs_ppo.json (``--name`` for another file).

    python -m benchmarks.throughput ppo-kl [--parts throughput old-policy-cost]
        On CartPole-v1 and Pendulum-v1 with rl-zoo3's PPO hyperparameters (rl_zoo3/hyperparams/ppo.yml) for both,
        PPOKL keeping every zoo setting but the clipping (its defaults: pure KL penalty):
        - throughput: PPO vs PPOKL, 32,768 steps (whole rollouts) x 3 repetitions per env;
        - old-policy-cost: CPU seconds per update of the two ways to keep pi_old for the analytic KL, median of 3:
          one no-grad pass storing its parameters in the rollout (what PPOKL does) vs a frozen copy of the old
          policy run on every minibatch of every epoch, next to a whole rollout + update for scale.
        Writes benchmarks/results/ppo_kl_vs_ppo.json (a few minutes of one core).

    python -m benchmarks.throughput ispg [--warmup 1000]
        ISPG next to SB3's SAC on Pendulum-v1 with the same actor network size ([256, 256], SAC's default): both
        with their defaults apart from the network (ISPG: ``net_arch=[256, 256]``; SAC: its default actor and
        critics of [256, 256]); each repetition trains a fresh model for ``--steps`` env steps (5,000) after
        ``--warmup`` untimed steps (SAC's ``learning_starts=100`` falls in the warm-up, so both are timed while
        training); 3 repetitions (about 5 min of one core). SAC does one gradient step on 256 transitions per env
        step (and updates 2 critics and their targets); ISPG does ``gradient_steps`` steps on ``batch_size`` whole
        episodes every ``train_freq`` episodes: this is the cost of one env step of training, not of learning
        Pendulum. Writes benchmarks/results/ispg_throughput.json.

    python -m benchmarks.throughput ppo-kl --defaults-throughput [--repetitions 8] [--steps 16384]
        PPO() vs PPOKL() with their defaults on CartPole-v1 with 8 envs (one 16,384-step rollout and update per
        timed learn), 8 repetitions, with the per-repetition PPOKL / PPO ratios and the load average.
        Writes benchmarks/results/ppo_kl_defaults_throughput.json.

Options of every subcommand: ``--quick`` (smoke run: 1 repetition, a few thousand steps; the file name gets a
``_quick`` suffix), ``--repetitions``, ``--steps`` (env steps per timed ``learn``), ``--name`` (result file name
without ``.json``) and ``--out-dir`` (default ``benchmarks/results``).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import rl_zoo3
import torch as th
import yaml
from rl_zoo3.utils import linear_schedule
from stable_baselines3 import PPO, SAC
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.policies import ActorCriticPolicy

from benchmarks.harness import (
    RESULTS_DIR,
    Throughput,
    markdown_throughput_table,
    measure_throughput,
    save_results,
    single_thread,
)
from sb3_pg_ext import GRPO, ISPG, PPOKL, REINFORCE

# ----------------------------------------------------------------------------------------------------------------
# REINFORCE vs PPO


def reinforce_throughput(steps: int, repetitions: int) -> dict[str, Any]:
    """REINFORCE() vs PPO() with their defaults on CartPole-v1, at n_envs=1 then n_envs=8."""

    def reinforce(n_envs: int) -> Callable[[], BaseAlgorithm]:
        return lambda: REINFORCE("MlpPolicy", make_vec_env("CartPole-v1", n_envs=n_envs, seed=0), seed=0)

    def ppo(n_envs: int) -> Callable[[], BaseAlgorithm]:
        return lambda: PPO("MlpPolicy", make_vec_env("CartPole-v1", n_envs=n_envs, seed=0), seed=0)

    throughput = {}
    for n_envs in (1, 8):
        contenders = {f"REINFORCE (n_envs={n_envs})": reinforce(n_envs), f"PPO (n_envs={n_envs})": ppo(n_envs)}
        results = measure_throughput(contenders, steps, repetitions=repetitions)
        throughput[n_envs] = [r.summary() for r in results]
        print(markdown_throughput_table(results), flush=True)
    return {"env_id": "CartPole-v1", "throughput": throughput, "throughput_steps": steps, "repetitions": repetitions}


# ----------------------------------------------------------------------------------------------------------------
# GRPO vs PPO


def grpo_throughput(steps: int, repetitions: int) -> dict[str, Any]:
    """GRPO() at 1 and at 8 envs vs PPO at rl-zoo3's CartPole-v1 settings (8 envs), on CartPole-v1."""

    def grpo(n_envs: int) -> Callable[[], BaseAlgorithm]:
        return lambda: GRPO("MlpPolicy", make_vec_env("CartPole-v1", n_envs=n_envs, seed=0), seed=0, device="cpu")

    # rl-zoo3's PPO entry (rl_zoo3/hyperparams/ppo.yml), read as the PPOKL pairing reads it
    ppo_envs, _, ppo_settings = zoo_hyperparams("CartPole-v1")

    def ppo() -> BaseAlgorithm:
        return PPO("MlpPolicy", make_vec_env("CartPole-v1", n_envs=ppo_envs, seed=0), seed=0, device="cpu", **ppo_settings)

    contenders = {"GRPO (n_envs=1)": grpo(1), "GRPO (n_envs=8)": grpo(8), "PPO rl-zoo3 (n_envs=8)": ppo}
    results = measure_throughput(contenders, steps, repetitions=repetitions)
    print(markdown_throughput_table(results), flush=True)
    return {
        "env_id": "CartPole-v1",
        "ppo_settings": {"n_envs": ppo_envs, **{k: str(v) for k, v in ppo_settings.items()}},
        "throughput": [r.summary() for r in results],
        "throughput_steps": steps,
        "repetitions": repetitions,
    }


# ----------------------------------------------------------------------------------------------------------------
# PPOKL vs PPO

PPO_KL_ENV_IDS = ("CartPole-v1", "Pendulum-v1")
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


def zoo_factories(env_id: str, seed: int = 0) -> dict[str, Callable[[], BaseAlgorithm]]:
    """PPO at rl-zoo3's settings, and PPOKL at the same settings without ``clip_range`` (its pure penalty)."""
    n_envs, _, ppo_kwargs = zoo_hyperparams(env_id)
    ppokl_kwargs = {key: value for key, value in ppo_kwargs.items() if key != "clip_range"}
    return {
        "PPO": lambda: PPO("MlpPolicy", make_vec_env(env_id, n_envs=n_envs, seed=seed), seed=seed, device="cpu", **ppo_kwargs),
        "PPOKL": lambda: PPOKL(
            "MlpPolicy", make_vec_env(env_id, n_envs=n_envs, seed=seed), seed=seed, device="cpu", **ppokl_kwargs
        ),
    }


def old_policy_cost(env_id: str, repetitions: int) -> dict[str, float]:
    """CPU seconds per update of the two ways to keep pi_old for the analytic KL, on one full rollout."""
    model = zoo_factories(env_id)["PPOKL"]()
    assert isinstance(model, PPOKL)
    model.learn(model.n_steps * model.n_envs)  # one rollout and update: a full (flattened) buffer to replay
    buffer, policy = model.rollout_buffer, model.policy

    def store() -> None:  # what PPOKL does: one pass over the rollout, parameters kept
        with th.no_grad():
            for data in buffer.get(model._no_grad_batch_size()):
                model._old_kl_parameters(data.observations)

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


def ppo_kl_zoo(steps: int | None, repetitions: int, parts: list[str], quick: bool) -> dict[str, Any]:
    """Per env of ``PPO_KL_ENV_IDS``: the zoo-settings throughput pairing and/or the cost of keeping pi_old."""
    results: dict[str, Any] = {"repetitions": repetitions, "parts": parts, "envs": {}}
    for env_id in PPO_KL_ENV_IDS:
        n_envs, _, params = zoo_hyperparams(env_id)
        rollout = params["n_steps"] * n_envs
        # whole rollouts: 128 x 256 steps on CartPole, 8 x 4096 on Pendulum
        throughput_steps = steps if steps is not None else (2 * rollout if quick else 32_768)
        entry: dict[str, Any] = {"n_envs": n_envs}
        if "throughput" in parts:
            throughput = measure_throughput(zoo_factories(env_id), throughput_steps, repetitions=repetitions)
            entry["throughput_steps"] = throughput_steps
            entry["throughput"] = [r.summary() for r in throughput]
            print(f"{env_id} throughput ({throughput_steps} steps x {repetitions}, alternated)")
            print(markdown_throughput_table(throughput), flush=True)
        if "old-policy-cost" in parts:
            entry["old_policy_cost"] = old_policy_cost(env_id, repetitions)
            print(f"{env_id} keeping pi_old: {entry['old_policy_cost']}", flush=True)
        results["envs"][env_id] = entry

    if "throughput" in parts:
        print("\n| env | PPO steps / CPU s | PPOKL steps / CPU s | PPOKL / PPO |\n|---|---|---|---|")
        for env_id, entry in results["envs"].items():
            ppo, ppokl = (r["steps_per_cpu_second"]["median"] for r in entry["throughput"])
            print(f"| {env_id} | {ppo:.0f} | {ppokl:.0f} | {ppokl / ppo:.2f} |")
    if "old-policy-cost" in parts:
        print("\n| env (rl-zoo3 settings) | stored in the rollout | frozen copy | whole rollout + update |\n|---|---|---|---|")
        for env_id, entry in results["envs"].items():
            cost = entry["old_policy_cost"]
            whole = cost["rollout_and_update_s"]
            print(
                f"| {env_id} | {cost['store_in_rollout_s'] * 1e3:.2f} ms ({cost['store_in_rollout_s'] / whole:.1%}) "
                f"| {cost['frozen_copy_s'] * 1e3:.2f} ms ({cost['frozen_copy_s'] / whole:.1%}) | {whole * 1e3:.0f} ms |"
            )
    return results


def ppo_kl_defaults(steps: int, repetitions: int) -> dict[str, Any]:
    """PPO() vs PPOKL() with their defaults on CartPole-v1 with 8 envs, alternated."""
    env_id, n_envs = "CartPole-v1", 8
    contenders: dict[str, Callable[[], BaseAlgorithm]] = {
        "PPO": lambda: PPO("MlpPolicy", make_vec_env(env_id, n_envs=n_envs, seed=0), seed=0, device="cpu"),
        "PPOKL": lambda: PPOKL("MlpPolicy", make_vec_env(env_id, n_envs=n_envs, seed=0), seed=0, device="cpu"),
    }
    throughput = measure_throughput(contenders, steps, repetitions=repetitions)
    ppo, ppokl = throughput
    results = {
        "env_id": env_id,
        "n_envs": n_envs,
        "steps_per_learn": steps,
        "repetitions": repetitions,
        "throughput": [r.summary() for r in throughput],
        "raw": throughput,
        "ppokl_over_ppo_cpu": ratios(ppo, ppokl, "steps_per_cpu_second"),
        "ppokl_over_ppo_wall": ratios(ppo, ppokl, "steps_per_wall_second"),
        "load_average_at_end": list(os.getloadavg()),
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }
    print(markdown_throughput_table(throughput))
    print(f"PPOKL / PPO, steps per CPU s: {results['ppokl_over_ppo_cpu']}")
    print(f"PPOKL / PPO, steps per wall s: {results['ppokl_over_ppo_wall']}")
    return results


#: The network of both contenders of the ISPG measurement (SAC's default size).
ISPG_NET_ARCH = [256, 256]


def ispg_throughput(steps: int, repetitions: int, warmup: int) -> dict[str, Any]:
    """ISPG vs SAC on Pendulum-v1 with the same network size, alternated, after ``warmup`` untimed steps each."""

    def ispg(seed: int = 0) -> ISPG:
        env = make_vec_env("Pendulum-v1", n_envs=1, seed=seed)
        return ISPG("MlpPolicy", env, policy_kwargs=dict(net_arch=ISPG_NET_ARCH), seed=seed)

    def sac(seed: int = 0) -> SAC:
        env = make_vec_env("Pendulum-v1", n_envs=1, seed=seed)
        return SAC("MlpPolicy", env, policy_kwargs=dict(net_arch=ISPG_NET_ARCH), seed=seed)

    results = measure_throughput(
        {"ISPG": ispg, "SAC": sac}, total_timesteps=steps, repetitions=repetitions, warmup_timesteps=warmup
    )
    table = markdown_throughput_table(results)
    print(table)
    return {"env": "Pendulum-v1", "net_arch": ISPG_NET_ARCH, "table": table, "results": [r.summary() for r in results]}


def ratios(a: Throughput, b: Throughput, field: str) -> dict[str, Any]:
    """b / a: the ratio of the medians, and the ratio within each repetition (the two ran next to each other)."""
    a_values, b_values = getattr(a, field), getattr(b, field)
    return {
        "ratio_of_medians": statistics.median(b_values) / statistics.median(a_values),
        "per_repetition": [y / x for x, y in zip(a_values, b_values, strict=True)],
    }


# ----------------------------------------------------------------------------------------------------------------
# command line


def main(argv: list[str] | None = None) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--quick", action="store_true", help="smoke run: 1 repetition, few steps; file name + '_quick'")
    common.add_argument("--repetitions", type=int, default=None, help="rounds of alternated contenders")
    common.add_argument("--steps", type=int, default=None, help="env steps per timed learn()")
    common.add_argument("--name", default=None, help="result file name without .json (default: per measurement)")
    common.add_argument("--out-dir", type=Path, default=RESULTS_DIR, help="folder of the result file")

    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.throughput", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="measurement", required=True)
    commands.add_parser("reinforce", parents=[common], help="REINFORCE vs PPO, CartPole-v1, n_envs 1 and 8")
    commands.add_parser("grpo", parents=[common], help="GRPO (n_envs 1, 8) vs PPO at rl-zoo3's CartPole settings")
    ispg = commands.add_parser("ispg", parents=[common], help="ISPG vs SAC on Pendulum-v1, same network size")
    ispg.add_argument("--warmup", type=int, default=1_000, help="untimed env steps before each timed learn()")
    ppo_kl = commands.add_parser(
        "ppo-kl", parents=[common], help="PPOKL vs PPO at rl-zoo3's settings, cost of keeping pi_old; or the defaults"
    )
    ppo_kl.add_argument(
        "--parts",
        nargs="+",
        choices=["throughput", "old-policy-cost"],
        default=["throughput", "old-policy-cost"],
        help="zoo-settings measurements to run (default: both)",
    )
    ppo_kl.add_argument(
        "--defaults-throughput",
        action="store_true",
        help="only PPO() vs PPOKL() with their defaults (CartPole-v1, 8 envs; default 8 repetitions of 16,384 steps)",
    )
    args = parser.parse_args(argv)
    single_thread()

    def setting(value: int | None, full: int, quick: int) -> int:
        return value if value is not None else (quick if args.quick else full)

    if args.measurement == "reinforce":
        name = "reinforce_vs_ppo"
        results = reinforce_throughput(setting(args.steps, 40_000, 5_000), setting(args.repetitions, 3, 1))
    elif args.measurement == "grpo":
        name = "grpo_vs_ppo"
        results = grpo_throughput(setting(args.steps, 20_000, 5_000), setting(args.repetitions, 3, 1))
    elif args.measurement == "ispg":
        name = "ispg_throughput"
        results = ispg_throughput(setting(args.steps, 5_000, 2_000), setting(args.repetitions, 3, 1), args.warmup)
    elif args.defaults_throughput:
        name = "ppo_kl_defaults_throughput"
        # PPO's default rollout is 2048 x 8 = 16,384 steps: a smaller budget still runs one rollout and update
        results = ppo_kl_defaults(setting(args.steps, 16_384, 16_384), setting(args.repetitions, 8, 1))
    else:
        name = "ppo_kl_vs_ppo"
        results = ppo_kl_zoo(args.steps, setting(args.repetitions, 3, 1), args.parts, args.quick)

    results["command"] = "python -m benchmarks.throughput " + " ".join(argv if argv is not None else sys.argv[1:])
    name = args.name or name + ("_quick" if args.quick else "")
    print(f"wrote {save_results(name, results, args.out_dir)}")


if __name__ == "__main__":
    main()
