"""
The algorithms that the conformance matrix (tests/test_conformance.py) runs, with small settings.

Each algorithm adds one ``AlgoCase`` to ``ALGO_CASES``; every conformance test is then parametrised over it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from stable_baselines3.common.base_class import BaseAlgorithm

from sb3_pg_ext import REINFORCE


@dataclass
class AlgoCase:
    """
    :param name: test id
    :param algo: the algorithm class
    :param kwargs: small, fast settings used in every conformance test (a few hundred env steps suffice)
    :param budget: env steps for one conformance training run
    :param logged_keys: logger keys the algorithm itself writes (checked in TensorBoard)
    :param invalid: (keyword, bad value, words the error message must contain) triples
    """

    name: str
    algo: type[BaseAlgorithm]
    kwargs: dict[str, Any]
    budget: int = 300
    logged_keys: tuple[str, ...] = ()
    invalid: list[tuple[str, Any, tuple[str, ...]]] = field(default_factory=list)

    def __str__(self) -> str:
        return self.name


ALGO_CASES: list[AlgoCase] = [
    AlgoCase(
        name="reinforce",
        algo=REINFORCE,
        kwargs=dict(n_episodes=2, learning_rate=3e-3),
        logged_keys=("train/policy_gradient_loss", "train/entropy_loss", "train/value_loss", "train/return_mean"),
        invalid=[
            ("baseline", "median", ("baseline", "'none'", "'mean'", "'loo'", "'optimal'", "'value'")),
            ("discount_weighting", "both", ("discount_weighting", "'return'", "'gradient'")),
            ("n_episodes", 0, ("n_episodes", ">= 1")),
            ("n_episodes", 2.5, ("n_episodes", "integer")),
            ("min_steps", -1, ("min_steps", ">= 0")),
            ("gamma", 1.5, ("gamma", "[0.0, 1.0]")),
            ("learning_rate", -1.0, ("learning_rate",)),
            ("ent_coef", float("nan"), ("ent_coef",)),
            ("vf_coef", -0.5, ("vf_coef",)),
            ("max_grad_norm", 0.0, ("max_grad_norm",)),
            ("reward_to_go", "yes", ("reward_to_go", "True or False")),
            ("normalize_advantage", 1, ("normalize_advantage", "True or False")),
        ],
    ),
]
