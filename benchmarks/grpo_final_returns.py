"""
GRPO's final-policy returns (``benchmarks.final_returns``) with learning-rate schedules, which JSON cannot express:
``"learning_rate": "lin_<x>"`` in ``--kwargs`` is a linear decay from x to 0 over ``learn()``'s budget
(``LinearSchedule(x, 0.0, 1.0)``); the result files keep the string.

    python -m benchmarks.grpo_final_returns --n-envs 8 --tag lin1e-3 --kwargs '{"learning_rate": "lin_1e-3"}'

Everything else (seeds, budget, evaluation, result files) is ``benchmarks.final_returns``'s.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from stable_baselines3.common.utils import LinearSchedule

from benchmarks import final_returns
from benchmarks.harness import single_thread
from sb3_pg_ext import GRPO


def with_schedules(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Replace a ``"lin_<x>"`` learning rate by the linear decay from x to 0."""
    learning_rate = kwargs.get("learning_rate")
    if isinstance(learning_rate, str):
        if not learning_rate.startswith("lin_"):
            raise ValueError(f"learning_rate strings must be 'lin_<initial value>'; got {learning_rate!r}")
        return {**kwargs, "learning_rate": LinearSchedule(float(learning_rate[4:]), 0.0, 1.0)}
    return kwargs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--steps", type=int, default=200_000)
    parser.add_argument("--env", default="CartPole-v1")
    parser.add_argument("--n-envs", type=int, default=8)
    parser.add_argument("--kwargs", type=json.loads, default={}, help="constructor keyword arguments as JSON")
    parser.add_argument("--tag", default=None, help="name of this setting in the result file names")
    args = parser.parse_args()
    single_thread()
    # The result file records the kwargs as given (strings); the model gets the schedules.
    final_returns.ALGOS["grpo"] = lambda *a, **kw: GRPO(*a, **with_schedules(kw))  # type: ignore[assignment]
    for seed in args.seeds:
        final_returns.run("grpo", seed, args.steps, args.env, args.n_envs, args.kwargs, args.tag)


if __name__ == "__main__":
    main()
