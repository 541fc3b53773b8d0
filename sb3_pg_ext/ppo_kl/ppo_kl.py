"""
PPOKL: PPO with a KL penalty (PPO-Penalty), fixed or adaptive coefficient.

The KL math (sample estimators, the analytic KL on stored parameters, the adaptive rule) lives in
:mod:`sb3_pg_ext.estimators`; the rollout buffers that keep pi_old's parameters in :mod:`sb3_pg_ext.ppo_kl.buffers`.
This file is PPO's ``train`` with the penalty term, and the adaptation of beta.

It is longer than SB3's 200-450 lines per algorithm (about 490) because ``train`` is SB3's ``PPO.train`` in full:
PPO offers no hook between its loss terms, so the penalty, the checks before ``backward`` and the two-halves
gradient clipping are written into a copy of the loop, and the class documents and validates every PPO argument.
"""

import math
from typing import Any, ClassVar, TypeVar

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3 import PPO
from stable_baselines3.common.buffers import RolloutBuffer
from stable_baselines3.common.distributions import (
    BernoulliDistribution,
    CategoricalDistribution,
    DiagGaussianDistribution,
    Distribution,
    MultiCategoricalDistribution,
    StateDependentNoiseDistribution,
)
from stable_baselines3.common.on_policy_algorithm import OnPolicyAlgorithm
from stable_baselines3.common.policies import ActorCriticCnnPolicy, ActorCriticPolicy, BasePolicy, MultiInputActorCriticPolicy
from stable_baselines3.common.type_aliases import GymEnv, MaybeCallback, PyTorchObs, RolloutBufferSamples, Schedule
from stable_baselines3.common.utils import FloatSchedule, explained_variance
from torch.nn import functional as F

from sb3_pg_ext.common.checks import (
    assert_finite,
    assert_finite_gradients,
    check_bool,
    check_choice,
    check_float,
    clip_grads_with_norm,
    total_grad_norm,
)
from sb3_pg_ext.common.progress import BoundedProgressMixin
from sb3_pg_ext.estimators import (
    adapted_kl_coef,
    analytic_kl,
    analytic_kl_from_parameters,
    kl_k3,
    kl_parameters,
    sampled_kl,
)
from sb3_pg_ext.ppo_kl.buffers import (
    KLDictRolloutBuffer,
    KLRolloutBuffer,
    KLRolloutBufferSamples,
    action_distributions,
    distribution_parameters,
)

SelfPPOKL = TypeVar("SelfPPOKL", bound="PPOKL")

#: ``kl_estimator`` choices: the analytic KL, or a sample estimator of :data:`sb3_pg_ext.estimators.KL_ESTIMATORS`
#: that is unbiased in both directions (k2 is not).
KL_ESTIMATOR_CHOICES = ("analytic", "k1", "k3")
KL_DIRECTIONS = ("forward", "reverse")
KL_ADAPTATION_INTERVALS = ("rollout", "minibatch")
#: Default ``kl_coef_bounds``: the adaptive beta stays within [1e-8, 1e8] (27 halvings or doublings from 1; below
#: the smallest beta, 1e-7, seen in the recorded CartPole-v1 runs, which the bound therefore leaves unchanged).
KL_COEF_BOUNDS = (1e-8, 1e8)
# SB3 action distributions whose parameters the rollout can store (DiagGaussian covers the tanh-squashed one).
ANALYTIC_KL_DISTRIBUTIONS = (
    DiagGaussianDistribution,
    StateDependentNoiseDistribution,
    CategoricalDistribution,
    MultiCategoricalDistribution,
    BernoulliDistribution,
)


class PPOKL(BoundedProgressMixin, PPO):
    """
    Proximal Policy Optimization with a KL penalty (PPO-Penalty), fixed or adaptive coefficient.

    Paper: https://arxiv.org/abs/1707.06347 (Section 4, "Adaptive KL Penalty Coefficient")

    Maximises, over ``n_epochs`` of minibatches of a GAE rollout,

        L = E_t[ r_t(theta) A_t ] - beta * KL[pi_old(.|s_t) || pi_theta(.|s_t)] - vf_coef * L_V + ent_coef * H

    with r_t = pi_theta(a_t|s_t) / pi_old(a_t|s_t). A ``clip_range`` replaces the first term by PPO's clipped
    surrogate E_t[min(r_t A_t, clip(r_t, 1 - eps, 1 + eps) A_t)]. With ``adaptive_kl``, once per rollout, after all
    epochs, d = the mean KL between pi_old and the updated policy over the rollout sets beta for the next rollout:
    d < d_targ / 1.5 -> beta / 2, d > 1.5 * d_targ -> beta * 2 (factor and threshold are settings), and beta is then
    clamped to ``kl_coef_bounds`` (default [1e-8, 1e8]), so that a long run of low (or high) KLs can neither drive it
    to 0.0 (from which doubling never recovers) nor to inf; ``train/kl_coef_clipped`` logs 1 for an update whose
    adaptation hit a bound (else 0).

    A drop-in for SB3's ``PPO``: every ``PPO`` argument keeps its meaning and validation; only ``clip_range``'s
    default differs (None: the pure penalty objective). beta is the plain attribute ``kl_coef``, so it is saved
    with the model and carries over ``learn(reset_num_timesteps=False)``.

    The analytic KL needs pi_old(.|s) for the whole update: its parameters are stored in the rollout
    (:class:`~sb3_pg_ext.ppo_kl.buffers.KLRolloutBuffer`), which costs one no-grad pass over the rollout per update,
    rather than recomputed from a frozen copy of the old policy, which costs one pass per epoch.

    Non-finite values raise ``FloatingPointError`` naming PPOKL, the update and the quantity: advantages and returns
    before the epochs, the loss before each ``backward()``, the gradients (their total norm, and then the parameter
    at fault) after it and before the clipping and ``optimizer.step()``, so the parameters are left as they were.

    :param policy: The policy model to use (MlpPolicy, CnnPolicy, MultiInputPolicy)
    :param env: The environment to learn from (if registered in Gym, can be str)
    :param learning_rate: The learning rate, it can be a function of the current progress remaining (from 1 to 0)
    :param n_steps: The number of steps to run for each environment per update
        (i.e. rollout buffer size is n_steps * n_envs where n_envs is number of environment copies running in parallel)
    :param batch_size: Minibatch size
    :param n_epochs: Number of epoch when optimizing the surrogate loss
    :param gamma: Discount factor
    :param gae_lambda: Factor for trade-off of bias vs variance for Generalized Advantage Estimator
    :param clip_range: None (default): no clipping, the pure KL-penalty objective; a float or a schedule (function of
        the current progress remaining): clip the probability ratio as PPO does, on top of the penalty
    :param clip_range_vf: Clipping parameter for the value function, as in PPO (None: no clipping)
    :param normalize_advantage: Whether to normalize or not the advantage
    :param ent_coef: Entropy coefficient for the loss calculation
    :param vf_coef: Value function coefficient for the loss calculation
    :param max_grad_norm: The maximum value for the gradient clipping
    :param use_sde: Whether to use generalized State Dependent Exploration (gSDE)
        instead of action noise exploration (default: False)
    :param sde_sample_freq: Sample a new noise matrix every n steps when using gSDE
        Default: -1 (only sample at the beginning of the rollout)
    :param rollout_buffer_class: Rollout buffer class to use. If ``None``, :class:`KLRolloutBuffer` (or its Dict
        version); with ``kl_estimator="analytic"`` it must be a subclass of :class:`KLRolloutBuffer`
    :param rollout_buffer_kwargs: Keyword arguments to pass to the rollout buffer on creation
    :param target_kl: SB3 PPO's early stopping: stop the epochs of this update when the approximate KL of a
        minibatch exceeds 1.5 * target_kl (None: never). Not the adaptation target (that is ``kl_target``)
    :param kl_coef: beta, the KL penalty coefficient (its initial value when ``adaptive_kl``)
    :param adaptive_kl: Adapt beta towards ``kl_target`` with the rule above
    :param kl_target: d_targ, the KL that the adaptive rule aims at
    :param kl_adaptation_factor: beta is multiplied or divided by this factor when d leaves the band
    :param kl_adaptation_threshold: the band is [d_targ / threshold, d_targ * threshold]
    :param kl_coef_bounds: ``(low, high)`` with 0 < low <= high: the adaptive beta is clamped to [low, high] after
        every adaptation (and the initial ``kl_coef`` must lie in it when ``adaptive_kl``); unused without
        ``adaptive_kl``
    :param kl_adaptation_interval: ``"rollout"`` (default, the paper's): adapt once per rollout, after all epochs,
        with the mean KL of the updated policy over the rollout; ``"minibatch"``: adapt after every minibatch step
        with that minibatch's KL (TorchRL's choice; noisier)
    :param kl_estimator: ``"analytic"`` (exact KL from the stored old distribution), or the sample estimators
        ``"k1"`` and ``"k3"`` from the log-probabilities of the rollout's actions (see
        :func:`~sb3_pg_ext.estimators.sampled_kl`)
    :param kl_direction: ``"forward"``: KL[pi_old || pi_theta] (the paper's); ``"reverse"``: KL[pi_theta || pi_old]
    :param stats_window_size: Window size for the rollout logging, specifying the number of episodes to average
        the reported success rate, mean episode length, and mean reward over
    :param tensorboard_log: the log location for tensorboard (if None, no logging)
    :param policy_kwargs: additional arguments to be passed to the policy on creation
    :param verbose: Verbosity level: 0 for no output, 1 for info messages (such as device or wrappers used), 2 for
        debug messages
    :param seed: Seed for the pseudo random generators
    :param device: Device (cpu, cuda, ...) on which the code should be run.
        Setting it to auto, the code will be run on the GPU if possible.
    :param _init_setup_model: Whether or not to build the network at the creation of the instance
    """

    policy_aliases: ClassVar[dict[str, type[BasePolicy]]] = {
        "MlpPolicy": ActorCriticPolicy,
        "CnnPolicy": ActorCriticCnnPolicy,
        "MultiInputPolicy": MultiInputActorCriticPolicy,
    }
    #: Steps per forward pass (at least ``batch_size``) of the two no-grad passes over the rollout of each update:
    #: storing pi_old's parameters before the epochs and measuring d after them. Larger chunks cost less Python per
    #: step and give the same numbers (bit for bit on the CPUs measured: the forward pass is row by row); lower it (as
    #: a class or instance attribute) for large image observations.
    no_grad_batch_size: int = 2048

    def __init__(
        self,
        policy: str | type[ActorCriticPolicy],
        env: GymEnv | str,
        learning_rate: float | Schedule = 3e-4,
        n_steps: int = 2048,
        batch_size: int = 64,
        n_epochs: int = 10,
        gamma: float = 0.99,
        gae_lambda: float = 0.95,
        clip_range: float | Schedule | None = None,
        clip_range_vf: float | Schedule | None = None,
        normalize_advantage: bool = True,
        ent_coef: float = 0.0,
        vf_coef: float = 0.5,
        max_grad_norm: float = 0.5,
        use_sde: bool = False,
        sde_sample_freq: int = -1,
        rollout_buffer_class: type[RolloutBuffer] | None = None,
        rollout_buffer_kwargs: dict[str, Any] | None = None,
        target_kl: float | None = None,
        kl_coef: float = 1.0,
        adaptive_kl: bool = True,
        kl_target: float = 0.01,
        kl_adaptation_factor: float = 2.0,
        kl_adaptation_threshold: float = 1.5,
        kl_adaptation_interval: str = "rollout",
        kl_coef_bounds: tuple[float, float] = KL_COEF_BOUNDS,
        kl_estimator: str = "analytic",
        kl_direction: str = "forward",
        stats_window_size: int = 100,
        tensorboard_log: str | None = None,
        policy_kwargs: dict[str, Any] | None = None,
        verbose: int = 0,
        seed: int | None = None,
        device: th.device | str = "auto",
        _init_setup_model: bool = True,
    ):
        if not callable(clip_range):
            check_float("clip_range", clip_range, low=0.0, low_inclusive=False, allow_none=True)
        check_float("kl_coef", kl_coef, low=0.0)
        check_bool("adaptive_kl", adaptive_kl)
        check_float("kl_target", kl_target, low=0.0, low_inclusive=False)
        check_float("kl_adaptation_factor", kl_adaptation_factor, low=1.0, low_inclusive=False)
        check_float("kl_adaptation_threshold", kl_adaptation_threshold, low=1.0)
        check_choice("kl_adaptation_interval", kl_adaptation_interval, KL_ADAPTATION_INTERVALS)
        check_choice("kl_estimator", kl_estimator, KL_ESTIMATOR_CHOICES)
        check_choice("kl_direction", kl_direction, KL_DIRECTIONS)
        if adaptive_kl and kl_coef == 0:
            raise ValueError("`kl_coef` must be > 0 with `adaptive_kl=True` (0 cannot be adapted multiplicatively)")
        kl_coef_bounds = _check_kl_coef_bounds(kl_coef_bounds)
        if adaptive_kl and not kl_coef_bounds[0] <= kl_coef <= kl_coef_bounds[1]:
            raise ValueError(
                f"`kl_coef` must lie within `kl_coef_bounds` {list(kl_coef_bounds)} with `adaptive_kl=True`; got {kl_coef}"
            )
        stores_old_distributions = rollout_buffer_class is None or issubclass(rollout_buffer_class, KLRolloutBuffer)
        if kl_estimator == "analytic" and not stores_old_distributions:
            raise ValueError(
                "`rollout_buffer_class` must be a subclass of KLRolloutBuffer or KLDictRolloutBuffer with "
                f"`kl_estimator='analytic'` (it stores pi_old's parameters); got {rollout_buffer_class}"
            )

        super().__init__(
            policy,
            env,
            learning_rate=learning_rate,
            n_steps=n_steps,
            batch_size=batch_size,
            n_epochs=n_epochs,
            gamma=gamma,
            gae_lambda=gae_lambda,
            clip_range=clip_range,  # type: ignore[arg-type]
            clip_range_vf=clip_range_vf,
            normalize_advantage=normalize_advantage,
            ent_coef=ent_coef,
            vf_coef=vf_coef,
            max_grad_norm=max_grad_norm,
            use_sde=use_sde,
            sde_sample_freq=sde_sample_freq,
            rollout_buffer_class=rollout_buffer_class,
            rollout_buffer_kwargs=rollout_buffer_kwargs,
            target_kl=target_kl,
            stats_window_size=stats_window_size,
            tensorboard_log=tensorboard_log,
            policy_kwargs=policy_kwargs,
            verbose=verbose,
            seed=seed,
            device=device,
            _init_setup_model=False,
        )
        self.kl_coef = float(kl_coef)
        self.adaptive_kl = adaptive_kl
        self.kl_target = kl_target
        self.kl_adaptation_factor = kl_adaptation_factor
        self.kl_adaptation_threshold = kl_adaptation_threshold
        self.kl_adaptation_interval = kl_adaptation_interval
        self.kl_coef_bounds = kl_coef_bounds
        self._kl_coef_clipped = False  # whether this update's adaptation hit a bound (logged, not saved)
        self.kl_estimator = kl_estimator
        self.kl_direction = kl_direction

        if _init_setup_model:
            self._setup_model()

    def _excluded_save_params(self) -> list[str]:
        return [*super()._excluded_save_params(), "_kl_coef_clipped"]

    def _setup_model(self) -> None:
        if self.rollout_buffer_class is None:
            dict_obs = isinstance(self.observation_space, spaces.Dict)
            self.rollout_buffer_class = KLDictRolloutBuffer if dict_obs else KLRolloutBuffer
        # PPO._setup_model would wrap clip_range=None in a schedule: build the model, then the schedules, here.
        OnPolicyAlgorithm._setup_model(self)
        if self.clip_range is not None:
            self.clip_range = FloatSchedule(self.clip_range)
        if self.clip_range_vf is not None:
            if isinstance(self.clip_range_vf, float | int):
                assert self.clip_range_vf > 0, "`clip_range_vf` must be positive, pass `None` to deactivate vf clipping"
            self.clip_range_vf = FloatSchedule(self.clip_range_vf)
        if self.kl_estimator == "analytic" and not isinstance(self.policy.action_dist, ANALYTIC_KL_DISTRIBUTIONS):
            raise ValueError(
                f"`kl_estimator='analytic'` supports the action distributions "
                f"{', '.join(cls.__name__ for cls in ANALYTIC_KL_DISTRIBUTIONS)}; the policy has "
                f"{type(self.policy.action_dist).__name__}: use kl_estimator='k1' or 'k3'"
            )

    def _evaluate(self, observations: PyTorchObs, actions: th.Tensor) -> tuple[th.Tensor, Distribution]:
        """V(s) and pi_theta(.|s) in one forward pass: ``policy.evaluate_actions``, returning the distribution."""
        policy = self.policy
        features = policy.extract_features(observations)
        if policy.share_features_extractor:
            latent_pi, latent_vf = policy.mlp_extractor(features)
        else:
            pi_features, vf_features = features
            latent_pi = policy.mlp_extractor.forward_actor(pi_features)
            latent_vf = policy.mlp_extractor.forward_critic(vf_features)
        return policy.value_net(latent_vf).flatten(), policy._get_action_dist_from_latent(latent_pi)

    def _kl(self, rollout_data: RolloutBufferSamples, distribution: Distribution, log_prob: th.Tensor | None) -> th.Tensor:
        """Per-step KL between pi_old and pi_theta (``distribution``), with the configured estimator and direction."""
        if self.kl_estimator == "analytic":
            assert isinstance(rollout_data, KLRolloutBufferSamples)
            return analytic_kl_from_parameters(
                rollout_data.old_distribution_params, action_distributions(distribution), self.kl_direction
            )
        assert log_prob is not None
        return sampled_kl(rollout_data.old_log_prob, log_prob, self.kl_estimator, self.kl_direction)

    def _old_kl_parameters(self, observations: PyTorchObs) -> th.Tensor:
        """pi_old's parameters for a batch of observations, in the layout the analytic KL reads (normalised once)."""
        distribution = self.policy.get_distribution(observations)
        return kl_parameters(distribution_parameters(distribution), action_distributions(distribution))

    def _no_grad_batch_size(self) -> int:
        """Steps per forward pass of the two no-grad passes over the rollout (storing pi_old, measuring d)."""
        return max(self.batch_size, self.no_grad_batch_size)

    def _rollout_kl(self) -> float:
        """
        d: the mean KL between pi_old and the current policy over the whole rollout (no gradient), with the policy in
        eval mode, the mode pi_old acted and was stored in (dropout and batch norm would otherwise make the two
        differ by more than the update). The policy is left in eval mode, as ``collect_rollouts`` needs it.
        """
        kls = []
        analytic = self.kl_estimator == "analytic"
        self.policy.set_training_mode(False)
        with th.no_grad():
            for rollout_data in self.rollout_buffer.get(self._no_grad_batch_size()):
                distribution = self.policy.get_distribution(rollout_data.observations)
                log_prob = None if analytic else distribution.log_prob(self._action_tensor(rollout_data.actions))
                kls.append(self._kl(rollout_data, distribution, log_prob))
        return th.cat(kls).mean().item()

    def _action_tensor(self, actions: th.Tensor) -> th.Tensor:
        # Convert discrete action from float to long
        return actions.long().flatten() if isinstance(self.action_space, spaces.Discrete) else actions

    def train(self) -> None:
        """
        Update policy using the currently gathered rollout buffer: ``n_epochs`` of minibatch steps on -L, then the
        adaptation of beta.
        """
        name = self.__class__.__name__
        # A NaN/inf reward poisons the GAE advantages: stop before any step.
        assert_finite(self.rollout_buffer.advantages, "advantages", name, self._n_updates + 1)
        assert_finite(self.rollout_buffer.returns, "returns", name, self._n_updates + 1)
        if self.kl_estimator == "analytic":
            # pi_old = the acting policy, in the mode it acted in (collect_rollouts left it in eval mode).
            assert isinstance(self.rollout_buffer, KLRolloutBuffer)
            self.policy.set_training_mode(False)
            self.rollout_buffer.store_old_distributions(self._old_kl_parameters, self._no_grad_batch_size())

        # Switch to train mode (this affects batch norm / dropout)
        self.policy.set_training_mode(True)
        # Update optimizer learning rate
        self._update_learning_rate(self.policy.optimizer)
        # Compute current clip range (None: pure penalty)
        clip_range = None if self.clip_range is None else self.clip_range(self._current_progress_remaining)  # type: ignore[operator]
        # Optional: clip range for the value function
        if self.clip_range_vf is not None:
            clip_range_vf = self.clip_range_vf(self._current_progress_remaining)  # type: ignore[operator]

        entropy_losses, pg_losses, value_losses, kl_penalties = [], [], [], []
        self._kl_coef_clipped = False
        clip_fractions = []

        continue_training = True
        # train for n_epochs epochs
        for epoch in range(self.n_epochs):
            approx_kl_divs = []
            # Do a complete pass on the rollout buffer
            for rollout_data in self.rollout_buffer.get(self.batch_size):
                actions = self._action_tensor(rollout_data.actions)
                values, distribution = self._evaluate(rollout_data.observations, actions)
                log_prob, entropy = distribution.log_prob(actions), distribution.entropy()
                # Normalize advantage
                advantages = rollout_data.advantages
                # Normalization does not make sense if mini batchsize == 1, see GH issue #325
                if self.normalize_advantage and len(advantages) > 1:
                    advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)

                # r_t(theta) = pi_theta(a_t|s_t) / pi_old(a_t|s_t)
                ratio = th.exp(log_prob - rollout_data.old_log_prob)
                # E_t[r_t A_t], or with clipping E_t[min(r_t A_t, clip(r_t, 1 - eps, 1 + eps) A_t)]
                surrogate = ratio * advantages
                if clip_range is not None:
                    surrogate = th.min(surrogate, th.clamp(ratio, 1 - clip_range, 1 + clip_range) * advantages)
                policy_loss = -surrogate.mean()
                # beta * E_t[KL[pi_old(.|s_t) || pi_theta(.|s_t)]] (or the reverse KL)
                kl = self._kl(rollout_data, distribution, log_prob)
                kl_penalty = self.kl_coef * kl.mean()

                # Logging
                pg_losses.append(policy_loss.item())
                kl_penalties.append(kl_penalty.item())
                clip_fraction = 0.0 if clip_range is None else th.mean((th.abs(ratio - 1) > clip_range).float()).item()
                clip_fractions.append(clip_fraction)

                if self.clip_range_vf is None:
                    # No clipping
                    values_pred = values
                else:
                    # Clip the difference between old and new value
                    # NOTE: this depends on the reward scaling
                    values_pred = rollout_data.old_values + th.clamp(
                        values - rollout_data.old_values, -clip_range_vf, clip_range_vf
                    )
                # Value loss using the TD(gae_lambda) target
                value_loss = F.mse_loss(rollout_data.returns, values_pred)
                value_losses.append(value_loss.item())

                # Entropy loss favor exploration (approximated by -log_prob when there is no analytical form)
                entropy_loss = -th.mean(-log_prob) if entropy is None else -th.mean(entropy)
                entropy_losses.append(entropy_loss.item())

                # -L = -E_t[r_t A_t] + beta * KL + vf_coef * L_V - ent_coef * H
                loss = policy_loss + self.ent_coef * entropy_loss + self.vf_coef * value_loss + kl_penalty
                if not math.isfinite(loss.item()):  # before backward: nothing is touched
                    raise FloatingPointError(self._non_finite_message("loss", name))

                # SB3's approximate KL (k3 of KL[pi_old || pi_theta]) for the target_kl early stopping
                with th.no_grad():
                    approx_kl_div = kl_k3(rollout_data.old_log_prob, log_prob).mean().cpu().numpy()
                    approx_kl_divs.append(approx_kl_div)

                if self.target_kl is not None and approx_kl_div > 1.5 * self.target_kl:
                    continue_training = False
                    if self.verbose >= 1:
                        print(f"Early stopping at step {epoch} due to reaching max kl: {approx_kl_div:.2f}")
                    break

                # Optimization step
                self.policy.optimizer.zero_grad()
                loss.backward()
                # Clip grad norm (clip_grad_norm_ in its two halves): the total norm, before any gradient is
                # scaled, is the finiteness check of every gradient (one test rather than one per parameter); a
                # NaN/inf raises before the clipping and the optimiser step: parameters and Adam state stay as they were.
                parameters = list(self.policy.parameters())
                grad_norm = total_grad_norm(parameters)
                if not math.isfinite(grad_norm.item()):
                    assert_finite_gradients(self.policy, name, self._n_updates + 1)  # names the parameter, raises
                    raise FloatingPointError(self._non_finite_message("gradient norm", name))
                clip_grads_with_norm(parameters, self.max_grad_norm, grad_norm)
                self.policy.optimizer.step()

                if self.adaptive_kl and self.kl_adaptation_interval == "minibatch":
                    self.kl_coef = self._adapted_kl_coef(kl.mean().item())

            self._n_updates += 1
            if not continue_training:
                break

        # d = mean over the rollout of KL[pi_old || pi_theta] for the updated policy (the paper's d)
        rollout_kl = self._rollout_kl()
        if self.adaptive_kl and self.kl_adaptation_interval == "rollout":
            self.kl_coef = self._adapted_kl_coef(rollout_kl)

        explained_var = explained_variance(self.rollout_buffer.values.flatten(), self.rollout_buffer.returns.flatten())

        # Logs
        self.logger.record("train/entropy_loss", np.mean(entropy_losses))
        self.logger.record("train/policy_gradient_loss", np.mean(pg_losses))
        self.logger.record("train/value_loss", np.mean(value_losses))
        self.logger.record("train/kl_penalty", np.mean(kl_penalties))
        self.logger.record("train/kl", rollout_kl)
        self.logger.record("train/kl_coef", self.kl_coef)
        if self.adaptive_kl:
            self.logger.record("train/kl_coef_clipped", int(self._kl_coef_clipped))
        self.logger.record("train/approx_kl", np.mean(approx_kl_divs))
        self.logger.record("train/clip_fraction", np.mean(clip_fractions))
        self.logger.record("train/loss", loss.item())
        self.logger.record("train/explained_variance", explained_var)
        if hasattr(self.policy, "log_std"):
            self.logger.record("train/std", th.exp(self.policy.log_std).mean().item())

        self.logger.record("train/n_updates", self._n_updates, exclude="tensorboard")
        if clip_range is not None:
            self.logger.record("train/clip_range", clip_range)
        if self.clip_range_vf is not None:
            self.logger.record("train/clip_range_vf", clip_range_vf)

    def _non_finite_message(self, quantity: str, name: str) -> str:
        return (
            f"{name}: non-finite {quantity} at update {self._n_updates + 1} (the optimiser step was not taken; the "
            "parameters are unchanged). Check the environment's rewards and observations (VecNormalize / VecCheckNan "
            "help), or lower the learning rate."
        )

    def _adapted_kl_coef(self, kl: float) -> float:
        """The adaptive rule's next beta, clamped to ``kl_coef_bounds`` (a clamp is logged as ``train/kl_coef_clipped``)."""
        adapted = adapted_kl_coef(self.kl_coef, kl, self.kl_target, self.kl_adaptation_factor, self.kl_adaptation_threshold)
        low, high = self.kl_coef_bounds
        bounded = min(max(adapted, low), high)
        if bounded != adapted:
            self._kl_coef_clipped = True
            if self.verbose >= 1:
                print(f"{self.__class__.__name__}: kl_coef {adapted:.3g} clamped to its bound {bounded:.3g}")
        return bounded

    def learn(
        self: SelfPPOKL,
        total_timesteps: int,
        callback: MaybeCallback = None,
        log_interval: int = 1,
        tb_log_name: str = "PPOKL",
        reset_num_timesteps: bool = True,
        progress_bar: bool = False,
    ) -> SelfPPOKL:
        return super().learn(
            total_timesteps=total_timesteps,
            callback=callback,
            log_interval=log_interval,
            tb_log_name=tb_log_name,
            reset_num_timesteps=reset_num_timesteps,
            progress_bar=progress_bar,
        )


def _check_kl_coef_bounds(bounds: Any) -> tuple[float, float]:
    """``kl_coef_bounds`` as a ``(low, high)`` pair of floats with 0 < low <= high < inf, or a ``ValueError``."""
    if isinstance(bounds, str) or not hasattr(bounds, "__len__") or len(bounds) != 2:
        raise ValueError(f"`kl_coef_bounds` must be a pair (low, high) with 0 < low <= high; got {bounds!r}")
    low, high = bounds
    check_float("kl_coef_bounds[0]", low, low=0.0, low_inclusive=False)
    check_float("kl_coef_bounds[1]", high, low=float(low))
    return float(low), float(high)


# adapted_kl_coef, analytic_kl, analytic_kl_from_parameters, sampled_kl: re-exported from sb3_pg_ext.estimators,
# where they moved (importable from here as before).
__all__ = ["PPOKL", "adapted_kl_coef", "analytic_kl", "analytic_kl_from_parameters", "sampled_kl"]
