"""Base class for on-policy algorithms that learn from complete episodes."""

from __future__ import annotations

import sys
import warnings
from collections.abc import Callable

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.on_policy_algorithm import OnPolicyAlgorithm
from stable_baselines3.common.utils import obs_as_tensor
from stable_baselines3.common.vec_env import VecEnv

from sb3_pg_ext.common.buffers import EpisodeRolloutBuffer
from sb3_pg_ext.common.checks import check_rewards
from sb3_pg_ext.common.progress import BoundedProgressMixin


class EpisodicOnPolicyAlgorithm(BoundedProgressMixin, OnPolicyAlgorithm):
    """
    An ``OnPolicyAlgorithm`` whose rollouts are *complete episodes* instead of ``n_steps`` per env.

    Collection (:meth:`collect_rollouts`): every env starts an episode; each episode started while the rollout
    still wants more (fewer than ``n_episodes`` started, or fewer than ``min_steps`` kept steps so far) is *kept*
    and played to its natural end (terminated or truncated by the env's time limit); an episode is never cut
    short because the rollout has enough. The decision to keep an episode is taken when it starts, from what
    happened before, never from its own outcome, so the kept episodes are not biased towards short ones.

    Episodes that envs start after the rollout has enough are *not kept*: their steps are played (all envs of a
    ``VecEnv`` step together) and counted in ``num_timesteps``, but not trained on. If one of them is still
    running when the last kept episode ends, the ``VecEnv`` is reset before the next rollout, so that every
    kept episode is played from its first step by a single policy. With ``n_envs=1`` no step is ever wasted;
    with ``n_envs > 1`` the waste is at most one partial episode per env and rollout.

    Budget: ``learn(total_timesteps)`` never starts a new kept episode once ``num_timesteps >= total_timesteps``;
    the episodes already started are finished and the last rollout is trained on them, so it may hold fewer than
    ``n_episodes`` episodes (at least one per env that started the rollout, since a rollout only starts while the
    budget is not spent). This decision, too, depends on the past only. ``num_timesteps`` ends above
    ``total_timesteps`` by at most what the episodes running at that moment still need (with ``n_envs > 1``, plus
    the not-kept steps the other envs play meanwhile).

    Logging: ``rollout/ep_rew_mean``, ``rollout/ep_len_mean`` and ``rollout/success_rate`` (``ep_info_buffer``,
    ``ep_success_buffer``) describe the kept episodes only, the ones trained on. Episodes that are not kept are
    played again and again while the rollout's last kept episode runs, short ones more often than long ones, so
    counting them would bias these statistics towards short episodes.

    Subclasses set ``n_episodes`` and ``min_steps`` before ``_setup_model`` and implement ``train``.
    """

    rollout_buffer: EpisodeRolloutBuffer  # type: ignore[assignment]
    n_episodes: int
    min_steps: int
    #: Whether ``collect_rollouts`` evaluates V(s_t) and bootstraps truncated episodes with V(s_T).
    _collect_values: bool = False

    @property
    def n_steps(self) -> int:
        """
        Deprecated: the episode count of a rollout, which is ``n_episodes``. In SB3, ``n_steps`` is a number of steps
        per env per rollout, which an episodic rollout does not have; read ``n_episodes`` instead (``model.n_steps``
        keeps returning it, with a ``DeprecationWarning``, for one release).
        """
        # SB3's OnPolicyAlgorithm.learn reads it to pass collect_rollouts an n_rollout_steps that this class ignores.
        if sys._getframe(1).f_code is not OnPolicyAlgorithm.learn.__code__:
            warnings.warn(
                f"`{type(self).__name__}.n_steps` is deprecated and will be removed in the next release: it is the "
                "number of episodes per rollout, `n_episodes` (SB3's n_steps counts steps per env)",
                DeprecationWarning,
                stacklevel=2,
            )
        return self.n_episodes

    @n_steps.setter
    def n_steps(self, value: int) -> None:
        """``OnPolicyAlgorithm.__init__`` writes the ``n_steps`` it is given: a rollout here is sized by ``n_episodes``
        and ``min_steps``, so the value is not kept."""

    def _setup_model(self) -> None:
        self._setup_lr_schedule()
        self.set_random_seed(self.seed)
        self.rollout_buffer = EpisodeRolloutBuffer(
            self.observation_space,
            self.action_space,
            device=self.device,
            n_envs=self.n_envs,
        )
        self.policy = self.policy_class(  # type: ignore[assignment]
            self.observation_space, self.action_space, self.lr_schedule, use_sde=self.use_sde, **self.policy_kwargs
        )
        self.policy = self.policy.to(self.device)
        self._maybe_recommend_cpu()

    def _excluded_save_params(self) -> list[str]:
        return [*super()._excluded_save_params(), "rollout_buffer"]

    def _wants_more_episodes(self, n_started: int, n_kept_steps: int) -> bool:
        """Whether an episode starting now is kept (decided from the past only)."""
        return n_started < self.n_episodes or n_kept_steps < self.min_steps

    def _budget_reached(self) -> bool:
        """Whether ``learn(total_timesteps)``'s budget is spent: no new kept episode starts after that."""
        return self.num_timesteps >= self._total_timesteps

    def _act(self, obs_tensor: th.Tensor | dict[str, th.Tensor]) -> tuple[th.Tensor, th.Tensor | None, th.Tensor]:
        """Sample actions; returns ``(actions, values or None, log_probs)``. Skips the critic when not needed."""
        if self._collect_values:
            actions, values, log_probs = self.policy(obs_tensor)
            return actions, values, log_probs
        distribution = self.policy.get_distribution(obs_tensor)
        actions = distribution.get_actions()
        return actions, None, distribution.log_prob(actions)

    def _clip_actions(self, actions: np.ndarray) -> np.ndarray:
        if isinstance(self.action_space, spaces.Box):
            if self.policy.squash_output:
                return self.policy.unscale_action(actions)
            return np.clip(actions, self.action_space.low, self.action_space.high)
        return actions

    def _collect_step(
        self,
        env: VecEnv,
        callback: BaseCallback,
        rollout_buffer: EpisodeRolloutBuffer,
        slots: np.ndarray,
        n_steps: int,
    ) -> np.ndarray | None:
        """
        Play one vectorised step with the current policy and store it: count the env steps, call the callback,
        check the rewards, add the step to ``rollout_buffer`` under ``slots`` and close the kept episodes that
        ended (bootstrapping time-limit truncations with V(s_T) when ``_collect_values``). ``slots`` of envs whose
        episode ended are set to -1 in place; the caller decides which episode an env plays next.

        :param env: The training environment
        :param callback: Callback called after the step
        :param rollout_buffer: Buffer the step is added to
        :param slots: Kept-episode index per env (-1: the env's steps are not kept); updated in place
        :param n_steps: Vectorised steps played so far in this rollout (for gSDE resampling)
        :return: the ``dones`` of the step, or None if a callback stopped training
        """
        n_envs = env.num_envs
        if self.use_sde and self.sde_sample_freq > 0 and n_steps % self.sde_sample_freq == 0:
            self.policy.reset_noise(n_envs)

        with th.no_grad():
            obs_tensor = obs_as_tensor(self._last_obs, self.device)  # type: ignore[arg-type]
            actions_t, values_t, log_probs_t = self._act(obs_tensor)
        actions = actions_t.cpu().numpy()
        new_obs, rewards, dones, infos = env.step(self._clip_actions(actions))
        self.num_timesteps += n_envs

        callback.update_locals(locals())
        if not callback.on_step():
            return None

        # Log the kept episodes only: an env that is not playing a kept episode replays short episodes more often
        # than long ones (it stops when the rollout's last kept episode ends), which would bias
        # rollout/ep_rew_mean and rollout/ep_len_mean towards short episodes.
        kept_envs = np.flatnonzero(slots >= 0)
        self._update_info_buffer([infos[i] for i in kept_envs], dones[kept_envs])
        check_rewards(rewards, self.__class__.__name__, self.num_timesteps)

        rollout_buffer.add(
            self._last_obs,  # type: ignore[arg-type]
            actions,
            rewards,
            log_probs_t.cpu().numpy(),
            None if values_t is None else values_t.cpu().numpy(),
            slots,
        )

        for env_idx in np.flatnonzero(dones & (slots >= 0)).tolist():
            truncated = bool(infos[env_idx].get("TimeLimit.truncated", False))
            bootstrap = 0.0
            terminal_obs = infos[env_idx].get("terminal_observation")
            if truncated and self._collect_values and terminal_obs is not None:
                with th.no_grad():
                    terminal_tensor = self.policy.obs_to_tensor(terminal_obs)[0]
                    bootstrap = float(self.policy.predict_values(terminal_tensor)[0].item())
            rollout_buffer.end_episode(int(slots[env_idx]), env_idx, truncated, bootstrap)
            self._on_kept_episode_end(int(slots[env_idx]), infos[env_idx])
            slots[env_idx] = -1

        self._last_obs = new_obs  # type: ignore[assignment]
        self._last_episode_starts = dones
        return dones

    def _on_kept_episode_end(self, slot: int, info: dict) -> None:
        """
        Called by :meth:`_collect_step` when the kept episode ``slot`` ends, with the ``info`` of its last step
        (e.g. to read an env's own end-of-episode flags). Does nothing here.

        :param slot: the episode's index in start order
        :param info: the info dict of the episode's last step
        """

    def _play_kept_episodes(
        self,
        env: VecEnv,
        callback: BaseCallback,
        rollout_buffer: EpisodeRolloutBuffer,
        slots: np.ndarray,
        after_step: Callable[[np.ndarray, int], None] | None = None,
    ) -> bool:
        """
        The step loop of every episodic collector: play vectorised steps (:meth:`_collect_step`) until no env plays
        a kept episode.

        :param env: The training environment
        :param callback: Callback called after every step
        :param rollout_buffer: Buffer the steps are added to
        :param slots: Kept-episode index per env (-1: none); ended episodes are set to -1 in place
        :param after_step: called after every step with its ``dones`` and the number of envs that played a kept
            episode in it; it may give envs whose episode ended a new kept episode (by writing ``slots``)
        :return: False if a callback stopped training
        """
        n_steps = 0
        while np.any(slots >= 0):
            n_kept_envs = int(np.sum(slots >= 0))
            dones = self._collect_step(env, callback, rollout_buffer, slots, n_steps)
            if dones is None:
                return False
            n_steps += 1
            if after_step is not None:
                after_step(dones, n_kept_envs)
        return True

    def collect_rollouts(  # type: ignore[override]
        self,
        env: VecEnv,
        callback: BaseCallback,
        rollout_buffer: EpisodeRolloutBuffer,
        n_rollout_steps: int = 0,
    ) -> bool:
        """
        Collect complete episodes with the current policy (see the class docstring for which are kept).

        :param env: The training environment
        :param callback: Callback called at every env step (and at the start and end of the rollout)
        :param rollout_buffer: Buffer to fill with complete episodes
        :param n_rollout_steps: Unused (rollouts are sized in episodes by ``n_episodes`` / ``min_steps``)
        :return: True if the rollout is complete, False if a callback stopped training
        """
        assert self._last_obs is not None, "No previous observation was provided"
        self.policy.set_training_mode(False)
        rollout_buffer.reset()
        n_envs = env.num_envs

        # A not-kept episode still running from the last rollout: restart every env so that all kept
        # episodes begin at their first step under the current policy.
        if self._last_episode_starts is None or not np.all(self._last_episode_starts):
            self._last_obs = env.reset()  # type: ignore[assignment]
            self._last_episode_starts = np.ones((n_envs,), dtype=bool)

        if self.use_sde:
            self.policy.reset_noise(n_envs)

        callback.on_rollout_start()

        slots = np.full(n_envs, -1, dtype=np.int64)
        n_started = 0
        n_kept_steps = 0
        for first_env in range(n_envs):
            if self._wants_more_episodes(n_started, n_kept_steps):
                slots[first_env] = n_started
                n_started += 1

        def start_kept_episodes(dones: np.ndarray, n_kept_envs: int) -> None:
            """Keep the episodes that envs start after the step while the rollout wants more."""
            nonlocal n_started, n_kept_steps
            n_kept_steps += n_kept_envs
            for env_idx in np.flatnonzero(dones).tolist():
                if not self._budget_reached() and self._wants_more_episodes(n_started, n_kept_steps):
                    slots[env_idx] = n_started
                    n_started += 1

        if not self._play_kept_episodes(env, callback, rollout_buffer, slots, start_kept_episodes):
            return False

        callback.update_locals(locals())
        callback.on_rollout_end()
        return True

    def _record_rollout_stats(self) -> None:
        """Log the size of the rollout that was just trained on."""
        batch = self.rollout_buffer.get()
        self.logger.record("rollout/n_episodes", batch.n_episodes)
        self.logger.record("rollout/n_steps", batch.n_steps)
