"""
ISPG: off-policy policy gradient with importance sampling on a replay buffer of complete episodes.

The weights, returns and baselines are in :mod:`sb3_pg_ext.estimators` (importance-sampling section), the episode
replay buffer in :mod:`sb3_pg_ext.common.replay_buffers`. This file is longer than SB3's 200-450 lines per algorithm
(about 530) because ISPG is an ``OffPolicyAlgorithm`` that needs its own collection (SB3's acts without recording
the behaviour log-probabilities, and counts episodes per env, not across envs), ~90 lines used by no other
algorithm, and because its constructor validates every SB3 off-policy argument it accepts; the estimator itself
(:meth:`ISPG._importance_weighted_returns`, :meth:`ISPG.train`) reads like the formula.
"""

from __future__ import annotations

import warnings
from typing import Any, ClassVar, TypeVar

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3.common.buffers import ReplayBuffer
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.noise import ActionNoise
from stable_baselines3.common.off_policy_algorithm import OffPolicyAlgorithm
from stable_baselines3.common.policies import BasePolicy
from stable_baselines3.common.type_aliases import GymEnv, MaybeCallback, RolloutReturn, Schedule, TrainFreq, TrainFrequencyUnit
from stable_baselines3.common.utils import LinearSchedule
from stable_baselines3.common.vec_env import VecEnv

from sb3_pg_ext.common.buffers import EpisodeBatch
from sb3_pg_ext.common.checks import (
    assert_finite,
    assert_finite_gradients,
    check_bool,
    check_choice,
    check_float,
    check_int,
    check_learning_rate,
    check_rewards,
)
from sb3_pg_ext.common.progress import BoundedProgressMixin
from sb3_pg_ext.common.replay_buffers import DictEpisodeReplayBuffer, EpisodeReplayBuffer
from sb3_pg_ext.estimators import (
    batch_mean_baseline,
    clipped_log_ratios,
    effective_sample_size,
    episode_ids_from_starts,
    leave_one_out_baseline,
    per_decision_log_weights,
    per_decision_returns,
    reward_to_go,
    self_normalized_log_weights,
)
from sb3_pg_ext.ispg.policies import ActorCnnPolicy, ActorPolicy, MultiInputActorPolicy

SelfISPG = TypeVar("SelfISPG", bound="ISPG")

IMPORTANCE_WEIGHTS = ("per_decision", "prefix", "one_step")
BASELINES = ("none", "mean", "loo")
TRAIN_FREQ_UNITS = ("step", "episode")
#: 5e-4 decayed linearly to 0 over ``learn(total_timesteps)`` (see ``learning_rate`` in the class docstring).
DEFAULT_LEARNING_RATE = LinearSchedule(5e-4, 0.0, 1.0)


def _check_train_freq(train_freq: Any) -> None:
    if train_freq is None:
        return
    if isinstance(train_freq, tuple):
        if len(train_freq) != 2:
            raise ValueError(f"`train_freq` must be an int or a tuple (frequency, unit); got {train_freq!r}")
        check_int("train_freq", train_freq[0], minimum=1)
        check_choice("train_freq unit", train_freq[1], TRAIN_FREQ_UNITS)
    else:
        check_int("train_freq", train_freq, minimum=1)


class ISPG(BoundedProgressMixin, OffPolicyAlgorithm):
    """
    Off-policy policy gradient with importance sampling on a replay buffer of complete episodes.

    Papers: Precup, Sutton & Singh 2000, "Eligibility Traces for Off-Policy Policy Evaluation" (per-decision
    importance sampling), https://scholarworks.umass.edu/cs_faculty_pubs/80/ ; Degris, White & Sutton 2012,
    "Off-Policy Actor-Critic", https://arxiv.org/abs/1205.4839

    The current policy acts (it samples; no exploration noise is added) and every step is stored with its
    behaviour log-probability log mu(a_t|s_t) in an :class:`~sb3_pg_ext.common.replay_buffers.EpisodeReplayBuffer`.
    Each gradient step draws ``batch_size`` complete episodes and follows

        g = (1/N) sum_i sum_t  grad log pi(a_{i,t}|s_{i,t}) * psi_{i,t}

    through the surrogate loss ``-(1/N) sum log pi(a_t|s_t) * stopgrad(psi_t)``, with rho_{0:t} the product of
    the ratios pi/mu up to step t (float64 log space) and, by ``importance_weights``:

    - ``"per_decision"`` (exact, unbiased): psi_t = sum_{t'>=t} gamma^{t'-t} rho_{0:t'} r_{t'} - rho_{0:t} b
    - ``"prefix"`` (the textbook form; biased when episodes are longer than one step): psi_t = rho_{0:t} (Q_t - b)
    - ``"one_step"`` (single-ratio approximation): psi_t = rho_t (Q_t - b)

    where Q_t is the discounted reward-to-go of the stored rewards and b the baseline. Episodes that a time limit
    ends use the observed rewards only (there is no critic to bootstrap with).

    Non-finite values: at each gradient step the behaviour and current log-probabilities and psi are checked per
    episode, the loss before ``backward`` and the gradients after it, before clipping and the optimiser step. An
    error (``FloatingPointError``) names the update, the quantity and the episodes (position in the sampled batch,
    env, replay-buffer rows) and leaves the parameters and the optimiser state as they were. Each episode's
    weights depend on that episode alone (a segmented scan), so one bad episode never reaches another.

    Memory: the replay buffer stores no next observations (never read), i.e. observation + action + 17 bytes per
    transition (41 bytes on CartPole-v1, against 52 for SB3's ``ReplayBuffer``), plus 24 bytes per complete
    episode; see :class:`~sb3_pg_ext.common.replay_buffers.EpisodeReplayBuffer`.

    :param policy: The policy model to use (MlpPolicy, CnnPolicy, MultiInputPolicy); an actor without a critic
    :param env: The environment to learn from (if registered in Gym, can be str)
    :param learning_rate: The learning rate, it can be a function of the current progress remaining (from 1 to 0).
        Default: 5e-4 decayed linearly to 0 over each ``learn`` call (SB3's ``LinearSchedule(5e-4, 0.0, 1.0)``)
    :param buffer_size: Size of the replay buffer in transitions (split between the envs, as in SB3); an episode
        longer than ``buffer_size // n_envs`` steps can never be sampled. Older episodes carry importance weights
        far from 1
    :param learning_starts: How many env steps to collect before the first gradient step (the policy acts from
        the start: there is no uniform warm-up, the behaviour log-probabilities must be those of the actor)
    :param batch_size: Number of complete **episodes** N per gradient step (drawn uniformly without replacement;
        all held episodes when the buffer holds fewer)
    :param gamma: Discount factor
    :param train_freq: None (default): update the model every ``train_every_episodes`` complete episodes, counted
        across all envs (works with any number of envs; with one env it is SB3's ``(train_every_episodes,
        "episode")``). Otherwise SB3's meaning: every ``train_freq`` steps, or a tuple of frequency and unit like
        ``(4, "episode")`` (episode units need a single env, as in SB3)
    :param train_every_episodes: With ``train_freq=None``: collect until at least this many episodes have ended
        (in any env) since the last update, then update. Ignored when ``train_freq`` is given
    :param gradient_steps: How many gradient steps to do after each rollout (-1: as many as env steps collected)
    :param importance_weights: ``"per_decision"``, ``"prefix"`` or ``"one_step"`` (see above)
    :param clip_ratio: Truncate each per-step ratio at this level before the product (Retrace/V-trace style:
        bounded variance, biased); None keeps the exact weights
    :param baseline: ``"loo"`` (default, unbiased): for episode i, b_i = the mean of Q_t over the *steps* of the
        batch's other N-1 episodes, ``sum_{j != i} sum_t Q_{j,t} / sum_{j != i} T_j`` (the mean reward-to-go per
        step, not per episode: Q_t is a reward-to-go, and every step's psi carries its own b); b = 0 when the batch
        holds a single episode. ``"mean"``: the same mean over all the batch's steps, episode i included, which
        correlates b with episode i's own score and biases the estimate. ``"none"``: b = 0
    :param self_normalize: Weighted importance sampling per step index t: divide rho_{0:t} by its mean over the
        batch's N episodes, an episode that has ended counting with its final weight (for ``"one_step"``: rho_t by
        its mean over the episodes running at t); consistent, slightly biased, far lower variance
    :param ent_coef: Entropy coefficient: adds ``-ent_coef * mean_t H(pi(.|s_t))`` over the replayed states
        (not importance weighted; a regulariser, 0 keeps the pure estimator)
    :param max_grad_norm: The maximum value for the gradient clipping (None: no clipping). Clipping rescales a step
        without changing its direction; it tames the rare batches that one large importance weight dominates
    :param stats_window_size: Window size for the rollout logging, specifying the number of episodes to average
        the reported success rate, mean episode length, and mean reward over
    :param tensorboard_log: the log location for tensorboard (if None, no logging)
    :param policy_kwargs: additional arguments to be passed to the policy on creation
    :param verbose: Verbosity level: 0 for no output, 1 for info messages, 2 for debug messages
    :param seed: Seed for the pseudo random generators
    :param device: Device (cpu, cuda, ...) on which the code should be run.
    :param _init_setup_model: Whether or not to build the network at the creation of the instance
    """

    policy_aliases: ClassVar[dict[str, type[BasePolicy]]] = {
        "MlpPolicy": ActorPolicy,
        "CnnPolicy": ActorCnnPolicy,
        "MultiInputPolicy": MultiInputActorPolicy,
    }
    policy: ActorPolicy
    replay_buffer: EpisodeReplayBuffer

    def __init__(
        self,
        policy: str | type[ActorPolicy],
        env: GymEnv | str,
        learning_rate: float | Schedule = DEFAULT_LEARNING_RATE,
        buffer_size: int = 5_000,
        learning_starts: int = 0,
        batch_size: int = 16,
        gamma: float = 0.99,
        train_freq: int | tuple[int, str] | None = None,
        train_every_episodes: int = 4,
        gradient_steps: int = 4,
        importance_weights: str = "per_decision",
        clip_ratio: float | None = None,
        baseline: str = "loo",
        self_normalize: bool = False,
        ent_coef: float = 0.0,
        max_grad_norm: float | None = 0.5,
        stats_window_size: int = 100,
        tensorboard_log: str | None = None,
        policy_kwargs: dict[str, Any] | None = None,
        verbose: int = 0,
        seed: int | None = None,
        device: th.device | str = "auto",
        _init_setup_model: bool = True,
    ):
        check_learning_rate(learning_rate)
        check_int("buffer_size", buffer_size, minimum=1)
        check_int("learning_starts", learning_starts, minimum=0)
        check_int("batch_size", batch_size, minimum=1)
        check_float("gamma", gamma, 0.0, 1.0)
        _check_train_freq(train_freq)
        check_int("train_every_episodes", train_every_episodes, minimum=1)
        check_int("gradient_steps", gradient_steps, minimum=-1)
        check_choice("importance_weights", importance_weights, IMPORTANCE_WEIGHTS)
        check_float("clip_ratio", clip_ratio, low=0.0, low_inclusive=False, allow_none=True)
        check_choice("baseline", baseline, BASELINES)
        check_bool("self_normalize", self_normalize)
        check_float("ent_coef", ent_coef, low=0.0)
        check_float("max_grad_norm", max_grad_norm, low=0.0, low_inclusive=False, allow_none=True)

        super().__init__(
            policy,
            env,
            learning_rate,
            buffer_size=buffer_size,
            learning_starts=learning_starts,
            batch_size=batch_size,
            gamma=gamma,
            # None: SB3's episode unit, counted across all envs by collect_rollouts below
            train_freq=(train_every_episodes, "episode") if train_freq is None else train_freq,
            gradient_steps=gradient_steps,
            action_noise=None,
            replay_buffer_class=None,
            policy_kwargs=policy_kwargs,
            stats_window_size=stats_window_size,
            tensorboard_log=tensorboard_log,
            verbose=verbose,
            device=device,
            seed=seed,
            support_multi_env=True,
            sde_support=False,
            supported_action_spaces=(spaces.Box, spaces.Discrete, spaces.MultiDiscrete, spaces.MultiBinary),
        )
        if self.env is not None and self.n_envs > 1 and isinstance(train_freq, tuple) and train_freq[1] == "episode":
            raise ValueError(
                f"`train_freq={train_freq!r}` counts episodes, which SB3 supports with a single env only; "
                f"with n_envs={self.n_envs} keep the default `train_freq=None` (train every `train_every_episodes` "
                "complete episodes, counted across the envs) or give `train_freq` in steps, e.g. `(500, 'step')`"
            )
        self.train_every_episodes = train_every_episodes
        #: True when ``train_freq=None``: the episode unit counts complete episodes across all envs.
        self.count_episodes_across_envs = train_freq is None
        self.importance_weights = importance_weights
        self.clip_ratio = clip_ratio
        self.baseline = baseline
        self.self_normalize = self_normalize
        self.ent_coef = ent_coef
        self.max_grad_norm = max_grad_norm
        #: log mu(a_t|s_t) of the actions chosen by the last ``_sample_action`` (one per env).
        self._last_behaviour_log_probs: np.ndarray | None = None
        #: length so far of the episode each env is playing (to warn about episodes the buffer cannot hold).
        self._running_episode_lengths: np.ndarray | None = None
        self._warned_unsampleable_episode = False

        if _init_setup_model:
            self._setup_model()

    def _setup_model(self) -> None:
        self.replay_buffer_class = (
            DictEpisodeReplayBuffer if isinstance(self.observation_space, spaces.Dict) else EpisodeReplayBuffer
        )
        super()._setup_model()

    def _excluded_save_params(self) -> list[str]:
        return [
            *super()._excluded_save_params(),
            "_last_behaviour_log_probs",
            "_running_episode_lengths",
            "_warned_unsampleable_episode",
        ]

    def _get_torch_save_params(self) -> tuple[list[str], list[str]]:
        return ["policy", "policy.optimizer"], []

    def load_replay_buffer(self, path: Any, truncate_last_traj: bool = True) -> None:
        """
        Load a replay buffer saved with :meth:`save_replay_buffer` (it must be an episode replay buffer: a plain
        SB3 ``ReplayBuffer`` has no behaviour log-probabilities).

        :param path: Path to the pickled replay buffer
        :param truncate_last_traj: Unused (``HerReplayBuffer`` only)
        """
        super().load_replay_buffer(path, truncate_last_traj)
        if not isinstance(self.replay_buffer, EpisodeReplayBuffer):
            raise TypeError(
                f"ISPG needs an EpisodeReplayBuffer (it stores behaviour log-probabilities and episode starts); "
                f"the file holds a {type(self.replay_buffer).__name__}"
            )

    # -----------------------------------------------------------------------------------------------------------------
    # Data collection: the actor samples, and its log-probabilities are stored with the transitions
    # -----------------------------------------------------------------------------------------------------------------

    def _sample_action(
        self,
        learning_starts: int,
        action_noise: ActionNoise | None = None,
        n_envs: int = 1,
    ) -> tuple[np.ndarray, np.ndarray]:
        """
        Sample actions from the current policy (the behaviour policy mu) and keep their log-probabilities.

        :return: the actions sent to the env (clipped to a Box's bounds) and the actions stored in the buffer
            (the unclipped samples, whose log-probability was recorded)
        """
        assert self._last_obs is not None, "self._last_obs was not set"
        obs_tensor, _ = self.policy.obs_to_tensor(self._last_obs)
        with th.no_grad():
            actions_t, log_probs_t = self.policy(obs_tensor)
        self._last_behaviour_log_probs = log_probs_t.cpu().numpy().reshape(n_envs)
        buffer_actions = actions_t.cpu().numpy()
        actions = buffer_actions
        if isinstance(self.action_space, spaces.Box):
            actions = np.clip(buffer_actions, self.action_space.low, self.action_space.high)
        return actions, buffer_actions

    def _store_transition(
        self,
        replay_buffer: ReplayBuffer,
        buffer_action: np.ndarray,
        new_obs: np.ndarray | dict[str, np.ndarray],
        reward: np.ndarray,
        dones: np.ndarray,
        infos: list[dict[str, Any]],
    ) -> None:
        """SB3's ``_store_transition``, with the behaviour log-probabilities and episode starts staged first."""
        check_rewards(reward, self.__class__.__name__, self.num_timesteps)
        assert isinstance(replay_buffer, EpisodeReplayBuffer)
        assert self._last_behaviour_log_probs is not None and self._last_episode_starts is not None
        replay_buffer.set_behaviour(self._last_behaviour_log_probs, self._last_episode_starts)
        super()._store_transition(replay_buffer, buffer_action, new_obs, reward, dones, infos)
        self._warn_about_unsampleable_episodes(replay_buffer.buffer_size, np.asarray(dones, dtype=bool))
        self._last_episode_starts = np.array(dones, dtype=bool)

    def _warn_about_unsampleable_episodes(self, rows_per_env: int, dones: np.ndarray) -> None:
        """
        Warn (once per model) when an episode ends longer than an env's share of the buffer (``buffer_size //
        n_envs`` rows): its first steps were overwritten before it ended, so it can never be sampled, and training
        leans towards the short episodes.
        """
        assert self._last_episode_starts is not None
        previous = self._running_episode_lengths
        if previous is None or previous.shape != dones.shape:
            previous = np.zeros(dones.shape, dtype=np.int64)
        self._running_episode_lengths = np.where(self._last_episode_starts, 1, previous + 1)
        too_long = np.flatnonzero(dones & (self._running_episode_lengths > rows_per_env))
        if too_long.size == 0 or self._warned_unsampleable_episode:
            return
        self._warned_unsampleable_episode = True
        env_index = int(too_long[0])
        try:
            spec = self.env.get_attr("spec", [env_index])[0] if self.env is not None else None
        except AttributeError:
            spec = None
        env_name = getattr(spec, "id", None) or "the environment"
        warnings.warn(
            f"{self.__class__.__name__}: an episode of {env_name} (env {env_index}) lasted "
            f"{int(self._running_episode_lengths[env_index])} steps, more than each env's share of the replay buffer "
            f"({rows_per_env} = buffer_size {self.buffer_size} // {self.n_envs} envs): such episodes are never "
            "sampled, so training leans towards shorter ones. Increase `buffer_size` or use fewer envs. "
            "(Warned once.)",
            stacklevel=2,
        )

    def collect_rollouts(
        self,
        env: VecEnv,
        callback: BaseCallback,
        train_freq: TrainFreq,
        replay_buffer: ReplayBuffer,
        action_noise: ActionNoise | None = None,
        learning_starts: int = 0,
        log_interval: int | None = None,
    ) -> RolloutReturn:
        """
        SB3's ``collect_rollouts``; with ``train_freq=None`` and several envs, the episode unit counts the episodes
        that end in any env: collection stops at the first vectorised step after which at least
        ``train_every_episodes`` episodes have ended since the rollout began (several envs can end an episode at the
        same step, so a rollout may hold more). Envs are not reset between rollouts (as in SB3): the episodes still
        running continue in the next rollout. With one env, or ``train_freq`` in steps, this is SB3's method.
        """
        if env.num_envs == 1 or train_freq.unit == TrainFrequencyUnit.STEP or not self.count_episodes_across_envs:
            return super().collect_rollouts(
                env, callback, train_freq, replay_buffer, action_noise, learning_starts, log_interval
            )
        # SB3's loop (no gSDE, no action noise: the actor samples), counting episodes over all envs
        self.policy.set_training_mode(False)
        num_collected_steps, num_collected_episodes = 0, 0
        callback.on_rollout_start()
        while num_collected_episodes < train_freq.frequency:
            actions, buffer_actions = self._sample_action(learning_starts, action_noise, env.num_envs)
            new_obs, rewards, dones, infos = env.step(actions)
            self.num_timesteps += env.num_envs
            num_collected_steps += 1
            # Give access to local variables
            callback.update_locals(locals())
            # Only stop training if return value is False, not when it is None.
            if not callback.on_step():
                return RolloutReturn(num_collected_steps * env.num_envs, num_collected_episodes, continue_training=False)
            self._update_info_buffer(infos, dones)
            self._store_transition(replay_buffer, buffer_actions, new_obs, rewards, dones, infos)  # type: ignore[arg-type]
            self._update_current_progress_remaining(self.num_timesteps, self._total_timesteps)
            self._on_step()
            for done in dones:
                if done:
                    num_collected_episodes += 1
                    self._episode_num += 1
                    if log_interval is not None and self._episode_num % log_interval == 0:
                        self.dump_logs()
        callback.on_rollout_end()
        return RolloutReturn(num_collected_steps * env.num_envs, num_collected_episodes, continue_training=True)

    # -----------------------------------------------------------------------------------------------------------------
    # Training
    # -----------------------------------------------------------------------------------------------------------------

    def _baseline(self, q: th.Tensor, episode_starts: th.Tensor) -> th.Tensor:
        """
        The baseline b of every step, from the stored reward-to-go Q_t (see ``baseline`` in the class docstring).

        :param q: ``(T,)`` discounted reward-to-go of the stored rewards
        :param episode_starts: ``(T,)`` bool episode boundaries
        :return: ``(T,)`` b (a constant for ``"none"`` and ``"mean"``, constant per episode for ``"loo"``)
        """
        n_episodes = int(episode_starts.sum().item())
        if self.baseline == "mean":
            return batch_mean_baseline(q, episode_starts, weighting="step")
        if self.baseline == "loo" and n_episodes >= 2:
            return leave_one_out_baseline(q, episode_starts, weighting="step")
        # "none", or "loo" with a single episode in the batch: there is no other episode to average
        return th.zeros_like(q)

    def _importance_weighted_returns(self, log_prob: th.Tensor, batch: EpisodeBatch) -> tuple[th.Tensor, dict[str, float]]:
        """
        psi_t for the chosen ``importance_weights`` (float64), and the weights' diagnostics.

        :param log_prob: ``(T,)`` log pi(a_t|s_t) under the current policy (no gradient needed)
        :param batch: complete episodes, with ``batch.behaviour_log_probs`` = log mu(a_t|s_t)
        :return: psi ``(T,)`` and the diagnostics ``is_ess``, ``is_weight_mean``, ``is_weight_max``,
            ``is_clip_fraction``
        """
        starts, rewards = batch.episode_starts, batch.rewards.to(th.float64)
        # log rho_{0:t} (float64, restarting at each episode; each ratio truncated at clip_ratio first)
        log_rho_prefix = per_decision_log_weights(log_prob, batch.behaviour_log_probs, starts, self.clip_ratio)
        if self.importance_weights == "one_step":
            log_w = clipped_log_ratios(log_prob, batch.behaviour_log_probs, self.clip_ratio)  # log rho_t
        else:
            log_w = log_rho_prefix
        raw_w = th.exp(log_w)
        if self.self_normalize:
            log_w = self_normalized_log_weights(log_w, starts, cumulative=self.importance_weights != "one_step")
        w = th.exp(log_w)

        q = reward_to_go(rewards, starts, self.gamma)  # Q_t: discounted reward-to-go of the stored rewards
        b = self._baseline(q, starts)
        if self.importance_weights == "per_decision":
            # psi_t = sum_{t'>=t} gamma^{t'-t} rho_{0:t'} r_{t'} - rho_{0:t} b
            psi = per_decision_returns(rewards, log_w, starts, self.gamma) - w * b
        else:
            # psi_t = rho_{0:t} (Q_t - b)  ("prefix")  or  rho_t (Q_t - b)  ("one_step")
            psi = w * (q - b)

        # Diagnostics: ESS of the whole-episode weights rho_{0:T_i-1} (the longest product of each episode), as a
        # fraction of N; mean/max of the weights the estimator uses (before self-normalisation); truncated ratios.
        last_step = th.cumsum(batch.episode_lengths, 0) - 1
        log_ratio = log_prob.to(th.float64) - batch.behaviour_log_probs.to(th.float64)
        clip_fraction = 0.0 if self.clip_ratio is None else (log_ratio > np.log(self.clip_ratio)).double().mean().item()
        diagnostics = {
            "is_ess": effective_sample_size(th.exp(log_rho_prefix[last_step])).item(),
            "is_weight_mean": raw_w.mean().item(),
            "is_weight_max": raw_w.max().item(),
            "is_clip_fraction": clip_fraction,
        }
        return psi, diagnostics

    def _check_finite_episodes(
        self, values: th.Tensor, quantity: str, batch: EpisodeBatch, chosen: np.ndarray, update: int
    ) -> None:
        """
        Raise ``FloatingPointError`` naming the algorithm, the update, the quantity and the episodes (position in
        the sampled batch, env and replay-buffer rows) where ``values`` ``(T,)`` holds NaN/inf.
        """
        finite = th.isfinite(values)
        if bool(finite.all()):
            return
        episode_ids = episode_ids_from_starts(batch.episode_starts)
        bad = th.unique(episode_ids[~finite]).tolist()
        shown = "; ".join(
            f"episode {k} of the sampled batch ({self.replay_buffer.describe_episode(chosen, k)})" for k in bad[:3]
        )
        more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
        raise FloatingPointError(
            f"{self.__class__.__name__}: non-finite {quantity} at update {update}, in {len(bad)} of the batch's "
            f"{batch.n_episodes} episodes: {shown}{more} (the optimiser step was not taken; the parameters are "
            "unchanged). Each episode's weights depend on that episode alone, so the others are unaffected; check "
            "the environment's observations and rewards (VecCheckNan helps), or lower the learning rate or set "
            "`clip_ratio`."
        )

    def train(self, gradient_steps: int, batch_size: int = 16) -> None:
        """
        ``gradient_steps`` gradient steps, each on ``batch_size`` complete episodes drawn from the replay buffer.
        """
        self.policy.set_training_mode(True)
        self._update_learning_rate(self.policy.optimizer)
        name = self.__class__.__name__
        if self.replay_buffer.n_episodes == 0:
            if self.replay_buffer.full:
                warnings.warn(
                    f"{name}: the replay buffer is full but holds no complete episode; increase `buffer_size` "
                    f"(now {self.buffer_size} transitions for {self.n_envs} envs) above the longest episode"
                )
            return

        logs: dict[str, list[float]] = {key: [] for key in ("loss", "policy_gradient_loss", "entropy_loss", "batch_steps")}
        logs.update({key: [] for key in ("is_ess", "is_weight_mean", "is_weight_max", "is_clip_fraction")})
        for _ in range(gradient_steps):
            update = self._n_updates + 1
            chosen = self.replay_buffer.choose_episodes(batch_size)
            batch = self.replay_buffer.get_episodes(chosen, env=self._vec_normalize_env)
            self._check_finite_episodes(
                batch.behaviour_log_probs, "behaviour log-probability log mu(a|s)", batch, chosen, update
            )
            distribution = self.policy.get_distribution(batch.observations)
            log_prob = distribution.log_prob(batch.actions)
            self._check_finite_episodes(log_prob, "log-probability log pi(a|s)", batch, chosen, update)
            psi, diagnostics = self._importance_weighted_returns(log_prob.detach(), batch)
            # checked in the loss's dtype: a weight that float64 holds can overflow float32
            psi = psi.to(log_prob.dtype)
            self._check_finite_episodes(psi, "importance-weighted return psi", batch, chosen, update)

            # g = (1/N) sum_i sum_t grad log pi(a|s) psi  <=>  loss = -(1/N) sum log pi(a|s) stopgrad(psi)
            policy_loss = -(log_prob * psi).sum() / batch.n_episodes
            entropy = distribution.entropy()
            entropy_loss = -th.mean(-log_prob) if entropy is None else -th.mean(entropy)
            loss = policy_loss + self.ent_coef * entropy_loss
            assert_finite(loss, "loss", name, update)

            self.policy.optimizer.zero_grad()
            loss.backward()
            # before clipping (which would spread one non-finite entry over every gradient) and before the step:
            # an error leaves the parameters and the optimiser state as they were
            assert_finite_gradients(self.policy, name, update)
            if self.max_grad_norm is not None:
                th.nn.utils.clip_grad_norm_(self.policy.parameters(), self.max_grad_norm)
            self.policy.optimizer.step()
            self._n_updates += 1

            logs["loss"].append(loss.item())
            logs["policy_gradient_loss"].append(policy_loss.item())
            logs["entropy_loss"].append(entropy_loss.item())
            logs["batch_steps"].append(batch.n_steps)
            for key, value in diagnostics.items():
                logs[key].append(value)

        for key, values in logs.items():
            # the largest weight over the gradient steps, the mean of everything else
            self.logger.record(f"train/{key}", float(np.max(values) if key == "is_weight_max" else np.mean(values)))
        self.logger.record("train/buffer_episodes", self.replay_buffer.n_episodes)
        if hasattr(self.policy, "log_std"):
            self.logger.record("train/std", th.exp(self.policy.log_std).mean().item())
        self.logger.record("train/n_updates", self._n_updates, exclude="tensorboard")

    def learn(
        self: SelfISPG,
        total_timesteps: int,
        callback: MaybeCallback = None,
        log_interval: int = 4,
        tb_log_name: str = "ISPG",
        reset_num_timesteps: bool = True,
        progress_bar: bool = False,
    ) -> SelfISPG:
        return super().learn(
            total_timesteps=total_timesteps,
            callback=callback,
            log_interval=log_interval,
            tb_log_name=tb_log_name,
            reset_num_timesteps=reset_num_timesteps,
            progress_bar=progress_bar,
        )


__all__ = ["ISPG"]
