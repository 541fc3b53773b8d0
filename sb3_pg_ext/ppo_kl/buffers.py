"""
Rollout buffers that also keep pi_old(.|s_t), the distribution that acted, for PPOKL's analytic KL.

Why store pi_old's parameters in the rollout rather than keep a frozen copy of the old policy: the analytic KL needs
pi_old(.|s_t) at every state of every minibatch of every epoch. A frozen copy recomputes it with a forward pass of
the old actor on every minibatch, i.e. ``n_epochs`` passes over the rollout per update, and holds a second copy of
the network (``copy.deepcopy`` of a gSDE policy even fails: it holds non-leaf tensors). Storing the parameters costs
one no-grad pass over the rollout per update and ``P`` floats per step. The buffer stores whatever layout it is
given; PPOKL gives :func:`sb3_pg_ext.estimators.kl_parameters` of :func:`distribution_parameters` (Categorical and
MultiCategorical: normalised logits and probabilities; Bernoulli: logits; Gaussians, gSDE included: mean and std),
so that the minibatches of every epoch read pi_old without normalising it again. The costs of both, measured:
docs/ppo_kl.md.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import NamedTuple

import numpy as np
import torch as th
from stable_baselines3.common.buffers import DictRolloutBuffer, RolloutBuffer
from stable_baselines3.common.distributions import Distribution
from stable_baselines3.common.type_aliases import PyTorchObs
from stable_baselines3.common.vec_env import VecNormalize
from torch.distributions import Bernoulli, Categorical, Normal


class KLRolloutBufferSamples(NamedTuple):
    """
    SB3's ``RolloutBufferSamples`` plus the parameters of pi_old(.|s_t), in the layout
    :meth:`KLRolloutBuffer.store_old_distributions` stored them in.
    """

    observations: PyTorchObs
    actions: th.Tensor
    old_values: th.Tensor
    old_log_prob: th.Tensor
    advantages: th.Tensor
    returns: th.Tensor
    old_distribution_params: th.Tensor  # (batch, P); (batch, 0) when they were not stored


def action_distributions(distribution: Distribution) -> list[th.distributions.Distribution]:
    """
    The torch distributions behind an SB3 action distribution: one for Gaussian (diagonal or gSDE), Categorical
    and Bernoulli policies, one Categorical per action dimension for MultiCategorical policies.
    """
    inner = distribution.distribution
    components = list(inner) if isinstance(inner, list) else [inner]
    for component in components:
        if not isinstance(component, Normal | Categorical | Bernoulli):
            raise NotImplementedError(
                f"PPOKL's analytic KL supports Normal, Categorical and Bernoulli action distributions, got "
                f"{type(component).__name__} (from {type(distribution).__name__}); use kl_estimator='k1' or 'k3'"
            )
    return components


def distribution_parameters(distribution: Distribution) -> th.Tensor:
    """
    The parameters that define pi(.|s) for a batch of states, as one ``(batch, P)`` tensor:
    ``[mean, std]`` for a Gaussian (gSDE included: its per-state std), the normalised logits for Categorical
    (concatenated over the dimensions of a MultiCategorical) and Bernoulli distributions.
    A tanh-squashed Gaussian is stored as the Gaussian before the squashing (KL is invariant under that bijection).
    """
    parts: list[th.Tensor] = []
    for component in action_distributions(distribution):
        if isinstance(component, Normal):
            parts += [component.loc, component.scale]
        elif isinstance(component, Categorical | Bernoulli):
            parts.append(component.logits)
    return th.cat([part.reshape(part.shape[0], -1) for part in parts], dim=1)


def distributions_from_parameters(params: th.Tensor, like: Distribution) -> list[th.distributions.Distribution]:
    """
    Inverse of :func:`distribution_parameters`: rebuild the torch distributions from stored parameters, with the
    layout (types and sizes) of ``like``, an SB3 distribution of the same policy. The parameters come from a
    distribution that torch validated when it was built, so they are not validated again.
    """
    rebuilt: list[th.distributions.Distribution] = []
    offset = 0
    for component in action_distributions(like):
        if isinstance(component, Normal):
            size = component.loc.shape[1]
            loc, scale = params[:, offset : offset + size], params[:, offset + size : offset + 2 * size]
            rebuilt.append(Normal(loc, scale, validate_args=False))
            offset += 2 * size
        elif isinstance(component, Categorical | Bernoulli):
            size = component.logits.shape[1]
            rebuilt.append(type(component)(logits=params[:, offset : offset + size], validate_args=False))
            offset += size
    if offset != params.shape[1]:
        raise ValueError(f"Stored {params.shape[1]} distribution parameters per step, the policy has {offset}")
    return rebuilt


class KLRolloutBuffer(RolloutBuffer):
    """
    SB3's ``RolloutBuffer`` (GAE advantages and returns) that can also keep the parameters of pi_old(.|s_t) for
    every step (``old_distribution_params``, shape ``(n_steps, n_envs, P)``), returned with each minibatch.

    Call :meth:`store_old_distributions` once the rollout is complete and before :meth:`get`.
    Same constructor arguments as ``RolloutBuffer``.
    """

    old_distribution_params: np.ndarray

    def reset(self) -> None:
        super().reset()
        self.old_distribution_params = np.zeros((self.buffer_size, self.n_envs, 0), dtype=np.float32)

    def _observations_in_order(self, start: int, end: int) -> PyTorchObs:
        """Observations of flat steps ``start:end`` (step-major order), before :meth:`get` flattens the buffer."""
        if isinstance(self.observations, dict):
            return {key: self.to_torch(obs.reshape(-1, *obs.shape[2:])[start:end]) for key, obs in self.observations.items()}
        return self.to_torch(self.observations.reshape(-1, *self.observations.shape[2:])[start:end])

    def store_old_distributions(self, parameters_of: Callable[[PyTorchObs], th.Tensor], batch_size: int) -> None:
        """
        Keep pi_old's parameters for every stored step: one no-grad pass of ``parameters_of`` (observations ->
        ``(batch, P)`` parameters in any layout: PPOKL's is :func:`sb3_pg_ext.estimators.kl_parameters`) over the
        rollout, ``batch_size`` steps at a time.

        :param parameters_of: the acting policy's distribution parameters for a batch of observations
        :param batch_size: steps per forward pass
        """
        assert self.full and not self.generator_ready, "store_old_distributions() needs a complete, not yet flattened rollout"
        n_steps = self.buffer_size * self.n_envs
        with th.no_grad():
            starts = range(0, n_steps, batch_size)
            chunks = [parameters_of(self._observations_in_order(start, start + batch_size)) for start in starts]
        self.old_distribution_params = th.cat(chunks).cpu().numpy().reshape(self.buffer_size, self.n_envs, -1)

    def get(self, batch_size: int | None = None) -> Generator[KLRolloutBufferSamples, None, None]:  # type: ignore[override]
        if not self.generator_ready:
            self.old_distribution_params = self.swap_and_flatten(self.old_distribution_params)
        yield from super().get(batch_size)  # type: ignore[misc]

    def _get_samples(  # type: ignore[override]
        self,
        batch_inds: np.ndarray,
        env: VecNormalize | None = None,
    ) -> KLRolloutBufferSamples:
        samples = super()._get_samples(batch_inds, env)
        return KLRolloutBufferSamples(*samples, self.to_torch(self.old_distribution_params[batch_inds]))


class KLDictRolloutBuffer(KLRolloutBuffer, DictRolloutBuffer):  # type: ignore[misc]
    """:class:`KLRolloutBuffer` for Dict observation spaces (SB3's ``DictRolloutBuffer`` plus pi_old's parameters)."""


__all__ = [
    "KLDictRolloutBuffer",
    "KLRolloutBuffer",
    "KLRolloutBufferSamples",
    "action_distributions",
    "distribution_parameters",
    "distributions_from_parameters",
]
