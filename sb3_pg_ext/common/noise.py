"""
Common random numbers for the continuations of a branch group (TRPO's vine rollouts, Schulman et al. 2015, 5.2).

The ``group_size`` continuations of a group start from one restored state. Their first actions are drawn
independently, and every later action is drawn from the *same* standard noise for all of them: the k-th action of
every continuation of group i uses the noise of (i, k). Each continuation is still a sample of the policy
(its actions are distributed as the policy's: only their dependence across continuations changes), so its return
is an unbiased sample of Q(s, a_first). The differences between the returns of a group then come from the first
actions (and the states they lead to), not from the later noise: the group-relative advantage of a first action
has a far smaller variance on an env that is deterministic given the actions. Only the first actions may be
trained on (``branch_advantage="first"``): a later action's noise is shared with the baseline's continuations.

An action is a function of the policy's distribution and uniform noise u in [0, 1)^d, by inverse CDF
(:func:`actions_from_uniforms`): a diagonal Gaussian gives ``mean + std * Phi^-1(u)``, a categorical gives
``argmax(logits - log(-log u))`` (the Gumbel-max trick). The noise of (i, k) comes from a generator seeded with
(the rollout's seed, i, k), so continuations of one group played in different waves (fewer envs than
``group_size``) share it too.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch as th
from stable_baselines3.common.distributions import CategoricalDistribution, DiagGaussianDistribution, Distribution

#: The distributions whose samples :func:`actions_from_uniforms` can drive (not gSDE, whose noise is a matrix
#: resampled every ``sde_sample_freq`` steps, and not the squashed Gaussian)
COMMON_NOISE_DISTRIBUTIONS = (DiagGaussianDistribution, CategoricalDistribution)


def check_common_noise_distribution(distribution: Distribution, algorithm: str) -> None:
    """
    Raise ``ValueError`` naming the distribution and the supported ones when ``distribution`` cannot draw its
    actions from given noise.
    """
    if type(distribution) not in COMMON_NOISE_DISTRIBUTIONS:
        supported = ", ".join(cls.__name__ for cls in COMMON_NOISE_DISTRIBUTIONS)
        raise ValueError(
            f"{algorithm}(branch_noise='common') draws actions from shared noise, which supports {supported} "
            f"(Box actions without gSDE, Discrete actions); the policy's action distribution is "
            f"{type(distribution).__name__}"
        )


def noise_size(distribution: Distribution) -> int:
    """The number of uniforms one action of ``distribution`` takes: its action dimension or number of actions."""
    check_common_noise_distribution(distribution, "noise_size")
    return int(distribution.action_dim)  # type: ignore[attr-defined]


def actions_from_uniforms(distribution: Distribution, uniforms: th.Tensor) -> th.Tensor:
    """
    Actions of ``distribution`` (one row per env) by inverse CDF from ``uniforms`` in (0, 1), shape
    ``(n_envs, noise_size)``: with independent uniform noise they are distributed as the distribution's samples;
    with the same noise, equal distributions give equal actions.

    :param distribution: a diagonal Gaussian or categorical distribution with its parameters set
    :param uniforms: the noise, one row per env
    :return: the actions, as ``distribution.get_actions()`` shapes them
    """
    # keep u away from 0 and 1, where the inverse CDFs are infinite
    u = uniforms.to(th.float64).clamp(min=th.finfo(th.float64).tiny, max=1.0 - th.finfo(th.float64).eps)
    if type(distribution) is CategoricalDistribution:
        gumbel = -th.log(-th.log(u))
        return th.argmax(distribution.distribution.logits + gumbel, dim=-1)
    if type(distribution) is DiagGaussianDistribution:
        normal = distribution.distribution
        standard = th.erfinv(2.0 * u - 1.0) * np.sqrt(2.0)
        return normal.mean + normal.stddev * standard.to(normal.mean.dtype)
    raise TypeError(f"no inverse-CDF sampling for {type(distribution).__name__}")


class CommonNoise:
    """
    The noise of the continuations of one rollout's branch groups: for each env of a wave, the uniforms of its
    continuation's next step, shared by the continuations of a group after their first step.

    :param seed: the rollout's noise seed (drawn from the algorithm's seeded generator)
    :param group_size: G: continuation k belongs to group k // G
    :param size: uniforms per action (:func:`noise_size`)
    """

    def __init__(self, seed: int, group_size: int, size: int):
        self.seed = seed
        self.group_size = group_size
        self.size = size
        #: per env: the continuation it plays (-1: none), and the steps that continuation has played
        self.slots: np.ndarray | None = None
        self.depths: np.ndarray | None = None

    def start_wave(self, slots: np.ndarray) -> None:
        """A wave starts: ``slots`` (the collector's array, updated in place as continuations end)."""
        self.slots = slots
        self.depths = np.zeros(len(slots), dtype=np.int64)

    def counting(self, after_step: Callable[[np.ndarray, int], None] | None) -> Callable[[np.ndarray, int], None]:
        """The collector's ``after_step`` that first counts the step in every env's depth, then calls ``after_step``."""

        def count_then(dones: np.ndarray, n_kept_envs: int) -> None:
            assert self.depths is not None
            self.depths += 1
            if after_step is not None:
                after_step(dones, n_kept_envs)

        return count_then

    def shared(self, group: int, depth: int) -> np.ndarray:
        """The uniforms of step ``depth`` of every continuation of group ``group``."""
        return np.random.default_rng([self.seed, group, depth]).random(self.size)

    def uniforms(self) -> th.Tensor:
        """
        The uniforms of every env's next step: the shared ones of its group for a continuation past its first step,
        independent ones (torch's generator) otherwise.
        """
        assert self.slots is not None and self.depths is not None, "start a wave first"
        uniforms = th.rand(len(self.slots), self.size, dtype=th.float64)
        for env_idx in np.flatnonzero((self.slots >= 0) & (self.depths >= 1)).tolist():
            group = int(self.slots[env_idx]) // self.group_size
            uniforms[env_idx] = th.from_numpy(self.shared(group, int(self.depths[env_idx])))
        return uniforms


__all__ = [
    "COMMON_NOISE_DISTRIBUTIONS",
    "CommonNoise",
    "actions_from_uniforms",
    "check_common_noise_distribution",
    "noise_size",
]
