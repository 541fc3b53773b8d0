"""
Actor-only policies: SB3's ``ActorCriticPolicy`` without the critic, for the critic-free algorithms (ISPG, GRPO).

The actor is built exactly like the actor half of ``ActorCriticPolicy``: a features extractor, an MLP
(default ``net_arch`` [64, 64], [] after a ``NatureCNN``; Tanh) and the action distribution's head, orthogonal
initialisation with gains sqrt(2) and 0.01 on the action layer, Adam with eps=1e-5 unless told otherwise. So an
actor-only policy and a REINFORCE/PPO actor with the same ``policy_kwargs`` are the same network. Nothing else is
built: no ``value_net``, no ``predict_values``.
"""

from __future__ import annotations

import collections
from functools import partial
from typing import Any

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3.common.distributions import (
    BernoulliDistribution,
    CategoricalDistribution,
    DiagGaussianDistribution,
    Distribution,
    MultiCategoricalDistribution,
    StateDependentNoiseDistribution,
    make_proba_distribution,
)
from stable_baselines3.common.policies import BasePolicy
from stable_baselines3.common.torch_layers import (
    BaseFeaturesExtractor,
    CombinedExtractor,
    FlattenExtractor,
    NatureCNN,
    create_mlp,
)
from stable_baselines3.common.type_aliases import PyTorchObs, Schedule
from torch import nn


def actor_net_arch(net_arch: list[int] | dict[str, list[int]] | None, default: list[int]) -> list[int]:
    """
    The actor's hidden layer sizes from a ``net_arch`` argument: a list, None (``default``), or a dict in
    ``ActorCriticPolicy``'s form with the actor's key only, ``dict(pi=[...])``. A ``"vf"`` key is refused rather
    than ignored: these policies build no value network, so a critic architecture would silently do nothing.
    """
    if isinstance(net_arch, dict):
        unknown = set(net_arch) - {"pi"}
        if unknown:
            raise ValueError(
                "Actor-only policies (GRPO, ISPG) have no value network: `net_arch` takes a list of the actor's "
                f"layer sizes or dict(pi=[...]); got the keys {sorted(net_arch)}"
            )
        return list(net_arch.get("pi", []))
    return list(default) if net_arch is None else list(net_arch)


class ActorPolicy(BasePolicy):
    """
    Stochastic policy without a value function: features extractor -> MLP -> action distribution.

    :param observation_space: Observation space
    :param action_space: Action space
    :param lr_schedule: Learning rate schedule (``lr_schedule(1)`` is the initial learning rate)
    :param net_arch: Hidden layer sizes of the actor MLP (default [64, 64]; [] after a ``NatureCNN``); a dict
        ``dict(pi=[...])`` is accepted (a ``"vf"`` key is refused, see :func:`actor_net_arch`)
    :param activation_fn: Activation function
    :param ortho_init: Whether to use orthogonal initialisation (gain sqrt(2), 0.01 for the action head)
    :param use_sde: Whether to use State Dependent Exploration or not
    :param log_std_init: Initial value for the log standard deviation (Box actions)
    :param full_std: Whether to use (n_features x n_actions) parameters for the std instead of only (n_features,)
        when using gSDE
    :param use_expln: Use ``expln()`` function instead of ``exp()`` to ensure a positive standard deviation (gSDE)
    :param squash_output: Whether to squash the output using a tanh function (gSDE only)
    :param features_extractor_class: Features extractor to use
    :param features_extractor_kwargs: Keyword arguments to pass to the features extractor
    :param normalize_images: Whether to normalize images or not, dividing by 255.0 (True by default)
    :param optimizer_class: The optimizer to use, ``th.optim.Adam`` by default
    :param optimizer_kwargs: Additional keyword arguments, excluding the learning rate, to pass to the optimizer
        (None: ``eps=1e-5`` for Adam, as ``ActorCriticPolicy``; nothing for any other optimizer)
    """

    def __init__(
        self,
        observation_space: spaces.Space,
        action_space: spaces.Space,
        lr_schedule: Schedule,
        net_arch: list[int] | dict[str, list[int]] | None = None,
        activation_fn: type[nn.Module] = nn.Tanh,
        ortho_init: bool = True,
        use_sde: bool = False,
        log_std_init: float = 0.0,
        full_std: bool = True,
        use_expln: bool = False,
        squash_output: bool = False,
        features_extractor_class: type[BaseFeaturesExtractor] = FlattenExtractor,
        features_extractor_kwargs: dict[str, Any] | None = None,
        normalize_images: bool = True,
        optimizer_class: type[th.optim.Optimizer] = th.optim.Adam,
        optimizer_kwargs: dict[str, Any] | None = None,
    ):
        if optimizer_kwargs is None:
            optimizer_kwargs = {}
            # Small values to avoid NaN in Adam optimizer (as ActorCriticPolicy)
            if optimizer_class == th.optim.Adam:
                optimizer_kwargs["eps"] = 1e-5
        super().__init__(
            observation_space,
            action_space,
            features_extractor_class,
            features_extractor_kwargs,
            optimizer_class=optimizer_class,
            optimizer_kwargs=optimizer_kwargs,
            squash_output=squash_output,
            normalize_images=normalize_images,
        )
        assert not (squash_output and not use_sde), "squash_output=True is only available when using gSDE (use_sde=True)"
        self.net_arch = actor_net_arch(net_arch, [] if features_extractor_class == NatureCNN else [64, 64])
        self.activation_fn = activation_fn
        self.ortho_init = ortho_init
        self.use_sde = use_sde
        self.log_std_init = log_std_init
        self.dist_kwargs: dict[str, Any] | None = None
        if use_sde:
            self.dist_kwargs = dict(full_std=full_std, squash_output=squash_output, use_expln=use_expln, learn_features=False)
        self.features_extractor = self.make_features_extractor()
        self.features_dim = self.features_extractor.features_dim
        self.action_dist = make_proba_distribution(action_space, use_sde=use_sde, dist_kwargs=self.dist_kwargs)
        self._build(lr_schedule)

    def _get_constructor_parameters(self) -> dict[str, Any]:
        data = super()._get_constructor_parameters()
        dist_kwargs: dict[str, Any] = self.dist_kwargs or collections.defaultdict(lambda: None)
        data.update(
            dict(
                net_arch=self.net_arch,
                activation_fn=self.activation_fn,
                use_sde=self.use_sde,
                log_std_init=self.log_std_init,
                squash_output=dist_kwargs["squash_output"],
                full_std=dist_kwargs["full_std"],
                use_expln=dist_kwargs["use_expln"],
                lr_schedule=self._dummy_schedule,  # not needed to load the policy alone
                ortho_init=self.ortho_init,
                optimizer_class=self.optimizer_class,
                optimizer_kwargs=self.optimizer_kwargs,
                features_extractor_class=self.features_extractor_class,
                features_extractor_kwargs=self.features_extractor_kwargs,
            )
        )
        return data

    def _build(self, lr_schedule: Schedule) -> None:
        """Create the actor network, the action head and the optimizer (lr_schedule(1) is the initial rate)."""
        self.latent_pi = nn.Sequential(*create_mlp(self.features_dim, -1, self.net_arch, self.activation_fn))
        latent_dim = self.net_arch[-1] if self.net_arch else self.features_dim
        if isinstance(self.action_dist, DiagGaussianDistribution):
            self.action_net, self.log_std = self.action_dist.proba_distribution_net(
                latent_dim=latent_dim, log_std_init=self.log_std_init
            )
        elif isinstance(self.action_dist, StateDependentNoiseDistribution):
            self.action_net, self.log_std = self.action_dist.proba_distribution_net(
                latent_dim=latent_dim, latent_sde_dim=latent_dim, log_std_init=self.log_std_init
            )
        elif isinstance(self.action_dist, CategoricalDistribution | MultiCategoricalDistribution | BernoulliDistribution):
            self.action_net = self.action_dist.proba_distribution_net(latent_dim=latent_dim)
        else:
            raise NotImplementedError(f"Unsupported distribution '{self.action_dist}'.")

        if self.ortho_init:
            module_gains = {self.features_extractor: np.sqrt(2), self.latent_pi: np.sqrt(2), self.action_net: 0.01}
            for module, gain in module_gains.items():
                module.apply(partial(self.init_weights, gain=gain))

        self.optimizer = self.optimizer_class(self.parameters(), lr=lr_schedule(1), **self.optimizer_kwargs)  # type: ignore[call-arg]

    def reset_noise(self, n_envs: int = 1) -> None:
        """Sample new weights for the exploration matrix (gSDE only)."""
        assert isinstance(self.action_dist, StateDependentNoiseDistribution), "reset_noise() is only available when using gSDE"
        self.action_dist.sample_weights(self.log_std, batch_size=n_envs)

    def get_distribution(self, obs: PyTorchObs) -> Distribution:
        """
        The action distribution pi(.|s) for a batch of observations.

        :param obs: Observation
        :return: the action distribution
        """
        latent_pi = self.latent_pi(self.extract_features(obs, self.features_extractor))
        mean_actions = self.action_net(latent_pi)
        if isinstance(self.action_dist, DiagGaussianDistribution):
            return self.action_dist.proba_distribution(mean_actions, self.log_std)
        if isinstance(self.action_dist, StateDependentNoiseDistribution):
            return self.action_dist.proba_distribution(mean_actions, self.log_std, latent_pi)
        # Categorical, MultiCategorical, Bernoulli: mean_actions are logits.
        return self.action_dist.proba_distribution(action_logits=mean_actions)

    def forward(self, obs: PyTorchObs, deterministic: bool = False) -> tuple[th.Tensor, th.Tensor]:
        """
        Sample (or take the mode of) actions and return their log-probabilities.

        :param obs: Observation
        :param deterministic: Whether to take the mode instead of sampling
        :return: actions (in the action space's shape) and log pi(a|s)
        """
        distribution = self.get_distribution(obs)
        actions = distribution.get_actions(deterministic=deterministic)
        log_prob = distribution.log_prob(actions)
        return actions.reshape((-1, *self.action_space.shape)), log_prob  # type: ignore[misc]

    def _predict(self, observation: PyTorchObs, deterministic: bool = False) -> th.Tensor:
        return self.get_distribution(observation).get_actions(deterministic=deterministic)

    def evaluate_actions(self, obs: PyTorchObs, actions: th.Tensor) -> tuple[th.Tensor, th.Tensor | None]:
        """
        :param obs: Observation
        :param actions: Actions
        :return: log likelihood of the actions and entropy of the action distribution (None when it has no
            closed form)
        """
        distribution = self.get_distribution(obs)
        return distribution.log_prob(actions), distribution.entropy()


class ActorCnnPolicy(ActorPolicy):
    """:class:`ActorPolicy` with SB3's ``NatureCNN`` features extractor (image observations); same parameters."""

    def __init__(
        self,
        observation_space: spaces.Space,
        action_space: spaces.Space,
        lr_schedule: Schedule,
        net_arch: list[int] | dict[str, list[int]] | None = None,
        activation_fn: type[nn.Module] = nn.Tanh,
        ortho_init: bool = True,
        use_sde: bool = False,
        log_std_init: float = 0.0,
        full_std: bool = True,
        use_expln: bool = False,
        squash_output: bool = False,
        features_extractor_class: type[BaseFeaturesExtractor] = NatureCNN,
        features_extractor_kwargs: dict[str, Any] | None = None,
        normalize_images: bool = True,
        optimizer_class: type[th.optim.Optimizer] = th.optim.Adam,
        optimizer_kwargs: dict[str, Any] | None = None,
    ):
        super().__init__(
            observation_space,
            action_space,
            lr_schedule,
            net_arch,
            activation_fn,
            ortho_init,
            use_sde,
            log_std_init,
            full_std,
            use_expln,
            squash_output,
            features_extractor_class,
            features_extractor_kwargs,
            normalize_images,
            optimizer_class,
            optimizer_kwargs,
        )


class MultiInputActorPolicy(ActorPolicy):
    """:class:`ActorPolicy` with SB3's ``CombinedExtractor`` (``Dict`` observations); same parameters."""

    def __init__(
        self,
        observation_space: spaces.Dict,
        action_space: spaces.Space,
        lr_schedule: Schedule,
        net_arch: list[int] | dict[str, list[int]] | None = None,
        activation_fn: type[nn.Module] = nn.Tanh,
        ortho_init: bool = True,
        use_sde: bool = False,
        log_std_init: float = 0.0,
        full_std: bool = True,
        use_expln: bool = False,
        squash_output: bool = False,
        features_extractor_class: type[BaseFeaturesExtractor] = CombinedExtractor,
        features_extractor_kwargs: dict[str, Any] | None = None,
        normalize_images: bool = True,
        optimizer_class: type[th.optim.Optimizer] = th.optim.Adam,
        optimizer_kwargs: dict[str, Any] | None = None,
    ):
        super().__init__(
            observation_space,
            action_space,
            lr_schedule,
            net_arch,
            activation_fn,
            ortho_init,
            use_sde,
            log_std_init,
            full_std,
            use_expln,
            squash_output,
            features_extractor_class,
            features_extractor_kwargs,
            normalize_images,
            optimizer_class,
            optimizer_kwargs,
        )


__all__ = ["ActorCnnPolicy", "ActorPolicy", "MultiInputActorPolicy", "actor_net_arch"]
