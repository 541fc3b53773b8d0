"""
What the lab varies per algorithm (the options that change the gradient estimate), how it configures each algorithm
so that ``train()`` takes exactly one gradient step on the whole batch, and how it draws one batch.

Every option is a set of constructor keywords; the options of an algorithm share the checkpoint's policy, its
``policy_kwargs`` and the keywords in :attr:`Adapter.kept` (e.g. ``gamma``). The regularisers that are not part of
the estimator are switched off for the measurement (``ent_coef=0``, no gradient clipping; GRPO: ``beta=0``).
"""

from __future__ import annotations

import inspect
import itertools
from typing import Any, ClassVar

import numpy as np
import torch as th
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.type_aliases import TrainFreq, TrainFrequencyUnit

from sb3_pg_ext.grpo import GRPO
from sb3_pg_ext.ispg import ISPG
from sb3_pg_ext.lab.gradients import read_gradient
from sb3_pg_ext.reinforce import REINFORCE


class Adapter:
    """
    How the lab measures one algorithm. Subclasses set the class attributes and implement :meth:`options`,
    :meth:`fixed_kwargs` and :meth:`sample`.
    """

    algo: ClassVar[str]
    algo_class: ClassVar[type[BaseAlgorithm]]
    #: Constructor keywords copied from the checkpoint (when it has the attribute).
    kept: ClassVar[tuple[str, ...]] = ("gamma",)
    #: The option whose variance the others are compared with at equal env steps.
    plain: ClassVar[str]
    #: The option whose mean is the reference gradient (unbiased for the gradient the options estimate).
    unbiased: ClassVar[str]
    #: What a batch size counts.
    batch_unit: ClassVar[str] = "episodes"

    def options(self) -> dict[str, dict[str, Any]]:
        """Every option of the algorithm that changes the gradient estimate: name -> constructor keywords."""
        raise NotImplementedError

    def fixed_kwargs(self, batch_size: int, option: dict[str, Any]) -> dict[str, Any]:
        """
        Constructor keywords that make ``train()`` one gradient step on the whole batch of ``batch_size``.

        :param batch_size: batch size (in :attr:`batch_unit`)
        :param option: the option's keywords
        """
        raise NotImplementedError

    def check(self, model: BaseAlgorithm) -> None:
        """Refuse a model whose ``train()`` would not take exactly one unclipped step on the whole batch."""
        if getattr(model, "max_grad_norm", None) is not None:
            raise ValueError(f"{self.algo}: the lab needs max_grad_norm=None (clipping distorts the gradient)")

    def plain_option(self, names: list[str]) -> str:
        """The plain option among ``names`` (the options measured)."""
        return self.plain

    def unbiased_option(self, names: list[str]) -> str:
        """The unbiased option among ``names`` (the options measured)."""
        return self.unbiased

    def reference_scale(self, option: dict[str, Any]) -> float:
        """Factor applied to the unbiased option's mean to make it the reference (1 unless it is known to shrink)."""
        return 1.0

    def prepare(self, model: BaseAlgorithm, context: dict[str, Any]) -> None:
        """Called once per model before its batches (e.g. to load the target policy). Does nothing here."""

    def sample(self, model: BaseAlgorithm, callback: BaseCallback, batch_size: int) -> tuple[np.ndarray, int, int]:
        """
        Draw one batch with the algorithm's own collector and read the gradient its ``train()`` computes.

        :return: the flattened gradient, the env steps played, the episodes in the batch
        """
        raise NotImplementedError


class ReinforceAdapter(Adapter):
    """
    REINFORCE: whole return ("whole") or reward-to-go ("rtg") x baseline x discount weighting. With the whole
    return both weightings are the same estimator (w_t = 1), so only ``return`` is listed; ``optimal`` is defined
    for the whole return only. A batch is ``n_episodes`` complete episodes.
    """

    algo = "reinforce"
    algo_class = REINFORCE
    plain = "whole-none"
    unbiased = "rtg-loo-gradient"

    def options(self) -> dict[str, dict[str, Any]]:
        grid: dict[str, dict[str, Any]] = {}
        for baseline in ("none", "mean", "loo", "optimal", "value"):
            grid[f"whole-{baseline}"] = {"reward_to_go": False, "baseline": baseline, "discount_weighting": "return"}
        for baseline, weighting in itertools.product(("none", "mean", "loo", "value"), ("return", "gradient")):
            grid[f"rtg-{baseline}-{weighting}"] = {
                "reward_to_go": True,
                "baseline": baseline,
                "discount_weighting": weighting,
            }
        return grid

    def fixed_kwargs(self, batch_size: int, option: dict[str, Any]) -> dict[str, Any]:
        return {
            "n_episodes": batch_size,
            "min_steps": 0,
            "max_grad_norm": None,
            "ent_coef": 0.0,
            "normalize_advantage": False,
        }

    def sample(self, model: BaseAlgorithm, callback: BaseCallback, batch_size: int) -> tuple[np.ndarray, int, int]:
        assert isinstance(model, REINFORCE)
        return _sample_episodes("reinforce", model, callback, batch_size)


def _sample_episodes(
    name: str, model: REINFORCE | GRPO, callback: BaseCallback, batch_size: int
) -> tuple[np.ndarray, int, int]:
    """One rollout of complete episodes through the algorithm's own collector, and the gradient its ``train()`` reads."""
    start = model.num_timesteps
    model.collect_rollouts(model.env, callback, model.rollout_buffer)  # type: ignore[arg-type]
    episodes = model.rollout_buffer.get().n_episodes
    if episodes != batch_size:
        raise RuntimeError(f"{name}: the rollout holds {episodes} episodes, expected {batch_size}")
    return read_gradient(model, model.train), model.num_timesteps - start, episodes


class ISPGAdapter(Adapter):
    """
    ISPG: importance weights (per_decision / prefix / one_step) x truncation (``clip_ratio`` None or 1) x
    self-normalisation, all with the unbiased leave-one-out baseline. Each batch is ``batch_size`` episodes played by
    the behaviour policy mu (the checkpoint); the gradient is the target policy pi's, pi being mu after ``behind``
    real optimiser steps of ISPG (the checkpoint's own settings, on a buffer of episodes that mu played), taken once
    per run so that every batch measures the same pair (pi, mu).
    """

    algo = "ispg"
    algo_class = ISPG
    kept = ("gamma",)
    plain = "per_decision"
    unbiased = "per_decision"

    def options(self) -> dict[str, dict[str, Any]]:
        grid: dict[str, dict[str, Any]] = {}
        for weights, clip, normalise in itertools.product(("per_decision", "prefix", "one_step"), (None, 1.0), (False, True)):
            name = weights + ("" if clip is None else f"-clip{clip:g}") + ("-sn" if normalise else "")
            grid[name] = {"importance_weights": weights, "clip_ratio": clip, "self_normalize": normalise}
        return grid

    def fixed_kwargs(self, batch_size: int, option: dict[str, Any]) -> dict[str, Any]:
        return {
            "batch_size": batch_size,
            "gradient_steps": 1,
            "baseline": "loo",
            "max_grad_norm": None,
            "ent_coef": 0.0,
            "learning_starts": 0,
            "buffer_size": 1_000_000,
        }

    def prepare(self, model: BaseAlgorithm, context: dict[str, Any]) -> None:
        model._lab_mu = {k: v.clone() for k, v in model.policy.state_dict().items()}  # type: ignore[attr-defined]
        model._lab_pi = context["target_state"]  # type: ignore[attr-defined]

    def sample(self, model: BaseAlgorithm, callback: BaseCallback, batch_size: int) -> tuple[np.ndarray, int, int]:
        assert isinstance(model, ISPG)
        model.policy.load_state_dict(model._lab_mu)  # type: ignore[attr-defined]
        model.replay_buffer.reset()
        start = model.num_timesteps
        model.collect_rollouts(
            model.env,  # type: ignore[arg-type]
            callback,
            TrainFreq(batch_size, TrainFrequencyUnit.EPISODE),
            model.replay_buffer,
            learning_starts=0,
        )
        episodes = model.replay_buffer.n_episodes
        if episodes != batch_size:
            raise RuntimeError(f"ispg: the replay buffer holds {episodes} complete episodes, expected {batch_size}")
        model.policy.load_state_dict(model._lab_pi)  # type: ignore[attr-defined]
        gradient = read_gradient(model, lambda: model.train(gradient_steps=1, batch_size=batch_size))
        return gradient, model.num_timesteps - start, episodes


def ispg_target_state(checkpoint: ISPG, env: Any, behind: int, seed: int) -> dict[str, th.Tensor]:
    """
    The target policy pi of the ISPG measurements: the checkpoint after ``behind`` real optimiser steps (its own
    settings and optimiser state, ``batch_size`` episodes per step) on a replay buffer of ``train_every_episodes *
    behind`` episodes (at least ``batch_size``) that the checkpoint played.

    :param checkpoint: the ISPG checkpoint (mu); not modified
    :param env: the VecEnv to play in
    :param behind: k, the number of optimiser steps between mu and pi (0: pi = mu)
    :param seed: seed of the episodes and of the episode draws
    :return: pi's state dict
    """
    if behind == 0:
        return {k: v.clone() for k, v in checkpoint.policy.state_dict().items()}
    n_fill = max(checkpoint.batch_size, checkpoint.train_every_episodes * behind)
    driver = ISPG(
        checkpoint.policy_class,  # type: ignore[arg-type]
        env,
        learning_rate=checkpoint.lr_schedule(1.0),
        buffer_size=1_000_000,
        batch_size=checkpoint.batch_size,
        gamma=checkpoint.gamma,
        importance_weights=checkpoint.importance_weights,
        clip_ratio=checkpoint.clip_ratio,
        baseline=checkpoint.baseline,
        self_normalize=checkpoint.self_normalize,
        ent_coef=checkpoint.ent_coef,
        max_grad_norm=checkpoint.max_grad_norm,
        policy_kwargs=checkpoint.policy_kwargs,
        seed=seed,
        device="cpu",
    )
    driver.policy.load_state_dict(checkpoint.policy.state_dict())
    driver.policy.optimizer.load_state_dict(checkpoint.policy.optimizer.state_dict())
    _, callback = driver._setup_learn(10**12, None)
    driver.collect_rollouts(
        driver.env,  # type: ignore[arg-type]
        callback,
        TrainFreq(n_fill, TrainFrequencyUnit.EPISODE),
        driver.replay_buffer,
        learning_starts=0,
    )
    driver.train(gradient_steps=behind, batch_size=checkpoint.batch_size)
    return {k: v.detach().clone() for k, v in driver.policy.state_dict().items()}


class GRPOAdapter(Adapter):
    """
    GRPO: group size x ``scale_rewards`` x ``advantage`` (x ``group_start`` when the installed GRPO has it;
    ``reward_to_go`` on reset groups only, undiscounted, where it estimates the same gradient), and
    TRPO's vine (``-first[-common]-branch``: ``branch_advantage="first"`` with independent or common noise). A batch
    is ``batch_size`` episodes: ``batch_size / group_size`` groups (group sizes that do not divide it are skipped).
    One epoch on the whole rollout with pi = pi_old, so the clipped ratio is 1 and the gradient is
    sum_e w_e sum_t A_{e,t} grad log pi; ``beta=0`` (the KL term is a regulariser, not the estimator).

    The reference is ``scale_rewards="none"``, outcome advantages, the largest group size G, times G/(G-1): the group
    mean includes the episode itself, which shrinks the expected gradient by (G-1)/G.
    """

    algo = "grpo"
    algo_class = GRPO
    kept = ("loss_aggregation", "max_length", "mask_truncated", "advantage_eps", "min_std")
    group_sizes: ClassVar[tuple[int, ...]] = (2, 4, 8, 16)
    plain = "G16-none-outcome"
    unbiased = "G16-none-outcome"

    def options(self) -> dict[str, dict[str, Any]]:
        starts = ["reset"]
        if "group_start" in inspect.signature(GRPO.__init__).parameters:
            starts.append("branch")
        grid: dict[str, dict[str, Any]] = {}
        for size, scale, advantage, group_start in itertools.product(
            self.group_sizes, ("group", "batch", "none"), ("outcome", "process", "reward_to_go"), starts
        ):
            if advantage == "reward_to_go" and group_start == "branch":
                continue  # branch groups' "process" advantage is this one
            name = f"G{size}-{scale}-{advantage}" + ("" if group_start == "reset" else f"-{group_start}")
            option: dict[str, Any] = {"group_size": size, "scale_rewards": scale, "advantage": advantage}
            if group_start != "reset":
                option["group_start"] = group_start
            grid[name] = option
        if "branch_noise" in inspect.signature(GRPO.__init__).parameters:
            # TRPO's vine: only each continuation's first action trains, the later noise independent or common
            noises = ("independent", "common")
            for size, scale, noise in itertools.product(self.group_sizes, ("group", "batch", "none"), noises):
                name = f"G{size}-{scale}-first" + ("-common" if noise == "common" else "") + "-branch"
                grid[name] = {
                    "group_size": size,
                    "scale_rewards": scale,
                    "group_start": "branch",
                    "branch_advantage": "first",
                    "branch_noise": noise,
                }
        return grid

    def fixed_kwargs(self, batch_size: int, option: dict[str, Any]) -> dict[str, Any]:
        size = int(option["group_size"])
        if batch_size % size:
            raise ValueError(f"grpo: batch size {batch_size} episodes is not a multiple of group_size={size}")
        return {
            "n_groups": batch_size // size,
            "n_epochs": 1,
            "batch_size": None,
            "max_grad_norm": None,
            "ent_coef": 0.0,
            "beta": 0.0,
            "drop_zero_std_groups": False,
        }

    def check(self, model: BaseAlgorithm) -> None:
        super().check(model)
        assert isinstance(model, GRPO)
        if model.n_epochs != 1 or model.batch_size is not None:
            raise ValueError("grpo: the lab needs n_epochs=1 and batch_size=None (one step on the whole rollout)")

    def plain_option(self, names: list[str]) -> str:
        """``scale_rewards="none"``, outcome advantages, the largest group size measured."""
        sizes = [int(name.split("-")[0][1:]) for name in names if name.endswith("-none-outcome")]
        return f"G{max(sizes) if sizes else max(self.group_sizes)}-none-outcome"

    def unbiased_option(self, names: list[str]) -> str:
        """As :meth:`plain_option` (rescaled by G/(G-1), see the class docstring)."""
        return self.plain_option(names)

    def reference_scale(self, option: dict[str, Any]) -> float:
        size = int(option["group_size"])
        return size / (size - 1)

    def sample(self, model: BaseAlgorithm, callback: BaseCallback, batch_size: int) -> tuple[np.ndarray, int, int]:
        assert isinstance(model, GRPO)
        return _sample_episodes("grpo", model, callback, batch_size)


ADAPTERS: dict[str, type[Adapter]] = {"reinforce": ReinforceAdapter, "ispg": ISPGAdapter, "grpo": GRPOAdapter}
