"""
The algorithms that the conformance matrix (tests/test_conformance.py) runs, with small settings.

Each algorithm adds one ``AlgoCase`` to ``ALGO_CASES``; every conformance test is then parametrised over it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.buffers import RolloutBuffer

from sb3_pg_ext import GRPO, ISPG, PPOKL, REINFORCE


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
    AlgoCase(
        name="ppo_kl",
        algo=PPOKL,
        kwargs=dict(n_steps=32, batch_size=32, n_epochs=2),
        logged_keys=(
            "train/kl_coef",
            "train/kl",
            "train/clip_fraction",
            "train/approx_kl",
            "train/policy_gradient_loss",
            "train/value_loss",
            "train/entropy_loss",
        ),
        invalid=[
            ("kl_coef", -1.0, ("kl_coef", "[0.0, inf]")),
            ("kl_coef", 0.0, ("kl_coef", "adaptive_kl")),
            ("adaptive_kl", "yes", ("adaptive_kl", "True or False")),
            ("kl_target", 0.0, ("kl_target", "(0.0, inf]")),
            ("kl_adaptation_factor", 1.0, ("kl_adaptation_factor", "(1.0, inf]")),
            ("kl_adaptation_threshold", 0.5, ("kl_adaptation_threshold", "[1.0, inf]")),
            ("kl_adaptation_interval", "epoch", ("kl_adaptation_interval", "'rollout'", "'minibatch'")),
            ("kl_estimator", "k2", ("kl_estimator", "'analytic'", "'k1'", "'k3'")),
            ("kl_direction", "both", ("kl_direction", "'forward'", "'reverse'")),
            ("clip_range", -0.2, ("clip_range", "or None")),
            ("clip_range", "0.2", ("clip_range", "number")),
            ("rollout_buffer_class", RolloutBuffer, ("rollout_buffer_class", "KLRolloutBuffer", "analytic")),
        ],
    ),
    AlgoCase(
        name="ispg",
        algo=ISPG,
        # ent_coef > 0: FakeImageEnv's rewards are all 0, so the policy gradient alone is exactly 0 there.
        # learning_rate: a constant (the default decays to 0 over the budget, so the save/load test's extra update
        # after learn() would not move the parameters).
        kwargs=dict(
            buffer_size=2_000,
            learning_starts=0,
            batch_size=2,
            train_freq=(16, "step"),
            gradient_steps=1,
            ent_coef=0.01,
            learning_rate=1e-3,
        ),
        logged_keys=("train/is_ess", "train/is_weight_mean", "train/is_weight_max", "train/is_clip_fraction", "train/loss"),
        invalid=[
            ("importance_weights", "full", ("importance_weights", "'per_decision'", "'prefix'", "'one_step'")),
            ("baseline", "value", ("baseline", "'none'", "'mean'", "'loo'")),
            ("train_every_episodes", 0, ("train_every_episodes", ">= 1")),
            ("clip_ratio", 0.0, ("clip_ratio", "(0.0, inf]", "or None")),
            ("clip_ratio", "2", ("clip_ratio", "number")),
            ("self_normalize", 1, ("self_normalize", "True or False")),
            ("batch_size", 0, ("batch_size", ">= 1")),
            ("buffer_size", 0, ("buffer_size", ">= 1")),
            ("learning_starts", -1, ("learning_starts", ">= 0")),
            ("gradient_steps", -2, ("gradient_steps", ">= -1")),
            ("train_freq", 0, ("train_freq", ">= 1")),
            ("train_freq", (4, "epoch"), ("train_freq", "'step'", "'episode'")),
            ("gamma", 1.5, ("gamma", "[0.0, 1.0]")),
            ("learning_rate", -1.0, ("learning_rate",)),
            ("max_grad_norm", 0.0, ("max_grad_norm",)),
            ("ent_coef", -0.1, ("ent_coef", "[0.0, inf]")),
        ],
    ),
    AlgoCase(
        name="grpo",
        algo=GRPO,
        # verify_group_starts=False: SB3's test envs draw their initial states from a space's RNG or the global
        # numpy RNG, which reset(seed=...) does not reseed (tests/test_grpo.py checks the groups on envs that honour
        # their seed). ent_coef > 0: FakeImageEnv's rewards are all 0, so every advantage is 0 there.
        kwargs=dict(
            group_size=2,
            n_groups=2,
            n_epochs=2,
            batch_size=8,
            beta=0.05,
            ent_coef=0.01,
            learning_rate=3e-3,
            verify_group_starts=False,
        ),
        logged_keys=(
            "train/kl_ref",
            "train/clip_fraction",
            "train/approx_kl",
            "train/loss",
            "rollout/group_return_std",
            "rollout/zero_std_groups",
        ),
        invalid=[
            ("group_size", 1, ("group_size", ">= 2")),
            ("n_groups", 0, ("n_groups", ">= 1")),
            ("n_epochs", 0, ("n_epochs", ">= 1")),
            ("batch_size", 0, ("batch_size", ">= 1")),
            ("clip_range", 0.0, ("clip_range", "(0.0, 1.0)")),
            ("clip_range_high", -0.1, ("clip_range_high", "or None")),
            ("beta", -0.1, ("beta", "[0.0, inf]")),
            ("reference_policy", "MlpPolicy", ("reference_policy", "SB3 policy")),
            ("ref_update_interval", 0, ("ref_update_interval", ">= 1")),
            ("ref_mixup_alpha", 0.0, ("ref_mixup_alpha", "(0.0, 1.0]")),
            ("kl_estimator", "k4", ("kl_estimator", "'k1'", "'k2'", "'k3'")),
            ("kl_ratio_correction", "yes", ("kl_ratio_correction", "True or False")),
            ("kl_in_reward", 1, ("kl_in_reward", "True or False")),
            ("scale_rewards", "std", ("scale_rewards", "'group'", "'batch'", "'none'")),
            ("advantage", "value", ("advantage", "'outcome'", "'process'", "'reward_to_go'")),
            ("loss_aggregation", "sum", ("loss_aggregation", "'seq_sum'", "'seq_mean'", "'token_mean'", "'constant'")),
            ("loss_aggregation", "constant", ("max_length",)),
            ("max_length", 0, ("max_length", ">= 1")),
            ("drop_zero_std_groups", "no", ("drop_zero_std_groups", "True or False")),
            ("mask_truncated", None, ("mask_truncated", "True or False")),
            ("advantage_eps", -1.0, ("advantage_eps", "[0.0, inf]")),
            ("min_std", -1.0, ("min_std", "[0.0, inf]")),
            ("ent_coef", float("nan"), ("ent_coef",)),
            ("max_grad_norm", 0.0, ("max_grad_norm",)),
            ("verify_group_starts", "x", ("verify_group_starts", "True or False")),
            ("learning_rate", -1.0, ("learning_rate",)),
        ],
    ),
]
