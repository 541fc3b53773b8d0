"""
Replay buffers that keep episode structure and the behaviour policy's log-probabilities (off-policy policy gradients).

SB3's ``ReplayBuffer`` stores transitions in a ring of shape ``(buffer_size // n_envs, n_envs)``: row ``pos`` holds
one vectorised step, column ``j`` is env ``j``'s own time series. The buffers here add, per stored transition,

- ``behaviour_log_probs[pos, j]`` (float32): log mu(a|s) of the policy that acted, recorded at collection;
- ``episode_starts[pos, j]`` (bool): True at the first step of an episode;

and an :class:`EpisodeIndex` of the *complete* episodes (env, first row, length); they drop SB3's next observations,
which the Monte-Carlo estimator never reads. Since every env writes its own
column, episodes that several envs play at the same time never mix, and an episode is contiguous in its column
(modulo the ring's wrap-around). :meth:`EpisodeReplayBuffer.sample_episodes` draws whole episodes, each from its
first step to its last, as an :class:`~sb3_pg_ext.common.buffers.EpisodeBatch`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3.common.buffers import DictReplayBuffer, ReplayBuffer
from stable_baselines3.common.type_aliases import TensorDict
from stable_baselines3.common.vec_env import VecNormalize

from sb3_pg_ext.common.buffers import EpisodeBatch


class EpisodeIndex:
    """
    The complete episodes held by a ring buffer of ``n_rows`` rows and ``n_envs`` columns.

    Rows are counted in absolute terms (the k-th row ever written is row k; it lives at ring position
    ``k % n_rows``). An episode is *complete* once its env reported ``done`` for its last step, and *held* while its
    first step has not been overwritten (its later steps were written after the first, so they are still there).
    Episodes still running, episodes that were abandoned (the env was reset before they ended, e.g. by
    ``learn(reset_num_timesteps=True)``) and episodes whose first step was overwritten are never sampled: the
    per-decision importance weight needs every ratio from the first step on.

    Memory: three int64 (24 bytes) per complete episode, at most one episode per stored transition.

    :param n_rows: ring length (rows)
    :param n_envs: number of columns (envs)
    """

    def __init__(self, n_rows: int, n_envs: int) -> None:
        self.n_rows = n_rows
        self.n_envs = n_envs
        self.reset()

    def reset(self) -> None:
        """Forget every episode."""
        #: Absolute number of rows written so far.
        self.rows_written = 0
        #: Absolute first row of the episode each env is playing, -1 when none is being recorded.
        self.running_first_row = np.full(self.n_envs, -1, dtype=np.int64)
        # Complete episodes, in completion order: env, absolute first row, length.
        self._env = np.zeros(0, dtype=np.int64)
        self._first_row = np.zeros(0, dtype=np.int64)
        self._length = np.zeros(0, dtype=np.int64)

    def add_row(self, episode_starts: np.ndarray, dones: np.ndarray) -> None:
        """
        Record the structure of the row being written (absolute row ``rows_written``).

        :param episode_starts: ``(n_envs,)`` bool, True where this step is the first of an episode
        :param dones: ``(n_envs,)`` bool, True where this step is the last of an episode
        """
        row = self.rows_written
        starts = np.asarray(episode_starts, dtype=bool).reshape(self.n_envs)
        ends = np.asarray(dones, dtype=bool).reshape(self.n_envs)
        # A start while an episode is still running abandons that episode (the env was reset under it).
        self.running_first_row[starts] = row
        finished = np.flatnonzero(ends & (self.running_first_row >= 0))
        first = self.running_first_row[finished]
        self.rows_written = row + 1
        # Keep only episodes whose first step is still in the ring (an episode longer than the ring is lost).
        kept = first > self.rows_written - 1 - self.n_rows
        if np.any(kept):
            self._env = np.concatenate([self._env, finished[kept]])
            self._first_row = np.concatenate([self._first_row, first[kept]])
            self._length = np.concatenate([self._length, row - first[kept] + 1])
        self.running_first_row[ends] = -1

    def _drop_overwritten(self) -> None:
        held = self._first_row >= self.rows_written - self.n_rows
        if not np.all(held):
            self._env, self._first_row, self._length = self._env[held], self._first_row[held], self._length[held]

    @property
    def n_episodes(self) -> int:
        """Number of complete episodes that can be sampled."""
        self._drop_overwritten()
        return int(self._env.shape[0])

    def episodes(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(env, absolute first row, length)`` of every complete, held episode, in completion order."""
        self._drop_overwritten()
        return self._env.copy(), self._first_row.copy(), self._length.copy()

    def locate(self, chosen: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """
        Ring positions of the steps of the chosen episodes, laid end to end.

        :param chosen: indices into :meth:`episodes`
        :return: ``rows (T,)``, ``envs (T,)`` to index the ``(n_rows, n_envs)`` arrays, and ``lengths (N,)``
        """
        self._drop_overwritten()
        lengths = self._length[chosen]
        first = np.repeat(self._first_row[chosen], lengths)
        offsets = np.arange(int(lengths.sum())) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        rows = (first + offsets) % self.n_rows
        envs = np.repeat(self._env[chosen], lengths)
        return rows, envs, lengths


class EpisodeReplayBuffer(ReplayBuffer):
    """
    SB3 ``ReplayBuffer`` that also keeps episode boundaries and each step's behaviour log-probability, and samples
    whole episodes (for off-policy policy gradients with importance sampling).

    **Memory.** Next observations are not stored: the Monte-Carlo estimator never reads them (it needs no
    bootstrap target), so the buffer keeps only the observation of each step. Storage per transition:

    - the observation (``observation_space``'s shape and dtype, e.g. 16 bytes for CartPole's 4 float32) and the
      action (``action_dim`` values of the action space's dtype, float64 cast to float32, as in SB3; e.g. 8 bytes for
      a ``Discrete`` action stored as int64);
    - 17 bytes: reward, done and timeout flags (float32 each, as in SB3), the behaviour log-probability log mu(a|s)
      (float32) and an episode-start flag (bool);

    plus the :class:`EpisodeIndex`, 24 bytes per complete episode. On CartPole-v1 that is 41 bytes per transition,
    where SB3's ``ReplayBuffer`` takes 52 (it stores the next observation too) and its ``optimize_memory_usage``
    layout 36 (which this buffer cannot use: writing the next observation into the following row would overwrite
    the first step of the oldest held episode). ``sample`` (single transitions with next observations) is therefore
    not available; :meth:`sample_episodes` is the sampling method.

    Each ``add`` needs the behaviour log-probabilities and episode starts of its step, either as keyword arguments
    or staged just before with :meth:`set_behaviour` (``OffPolicyAlgorithm._store_transition`` calls ``add`` with
    SB3's fixed arguments, so the algorithm stages them).

    :param buffer_size: Max number of transitions (split evenly between the envs, as in SB3)
    :param observation_space: Observation space
    :param action_space: Action space
    :param device: PyTorch device of the sampled tensors
    :param n_envs: Number of parallel environments
    :param optimize_memory_usage: Must be False (next observations are not stored at all, see above)
    :param handle_timeout_termination: As in SB3; here it only fills ``EpisodeBatch.episode_truncated``
    """

    def __init__(
        self,
        buffer_size: int,
        observation_space: spaces.Space,
        action_space: spaces.Space,
        device: th.device | str = "auto",
        n_envs: int = 1,
        optimize_memory_usage: bool = False,
        handle_timeout_termination: bool = True,
    ):
        if optimize_memory_usage:
            raise ValueError(
                f"{type(self).__name__} does not support `optimize_memory_usage=True`; it needs no such layout, since "
                "it stores no next observations at all"
            )
        super().__init__(
            buffer_size,
            observation_space,
            action_space,
            device=device,
            n_envs=n_envs,
            optimize_memory_usage=False,
            handle_timeout_termination=handle_timeout_termination,
        )
        # SB3 allocates the next observations (np.zeros: no page is touched yet); they are never written or read.
        del self.next_observations
        self.behaviour_log_probs = np.zeros((self.buffer_size, self.n_envs), dtype=np.float32)
        self.episode_starts = np.zeros((self.buffer_size, self.n_envs), dtype=bool)
        self.episode_index = EpisodeIndex(self.buffer_size, self.n_envs)
        self._staged: tuple[np.ndarray, np.ndarray] | None = None

    def reset(self) -> None:
        super().reset()
        self.episode_index.reset()
        self._staged = None

    def set_behaviour(self, behaviour_log_probs: np.ndarray, episode_starts: np.ndarray) -> None:
        """
        Stage the behaviour log-probabilities and episode starts of the next :meth:`add`.

        :param behaviour_log_probs: ``(n_envs,)`` log mu(a_t|s_t) of the actions about to be stored
        :param episode_starts: ``(n_envs,)`` bool, True where the step about to be stored starts an episode
        """
        self._staged = (
            np.asarray(behaviour_log_probs, dtype=np.float32).reshape(self.n_envs).copy(),
            np.asarray(episode_starts, dtype=bool).reshape(self.n_envs).copy(),
        )

    def add(
        self,
        obs: Any,
        next_obs: Any,
        action: np.ndarray,
        reward: np.ndarray,
        done: np.ndarray,
        infos: list[dict[str, Any]],
        behaviour_log_probs: np.ndarray | None = None,
        episode_starts: np.ndarray | None = None,
    ) -> None:
        """
        Store one vectorised step: SB3's arguments, plus the behaviour log-probabilities and episode starts
        (passed here or staged with :meth:`set_behaviour`). ``next_obs`` is not stored.
        """
        if behaviour_log_probs is not None and episode_starts is not None:
            self.set_behaviour(behaviour_log_probs, episode_starts)
        if self._staged is None:
            raise ValueError(
                f"{type(self).__name__}.add needs `behaviour_log_probs` and `episode_starts` "
                "(as arguments or staged with `set_behaviour`)"
            )
        log_probs, starts = self._staged
        self._staged = None
        # SB3's ReplayBuffer.add, without the next observation (never read)
        self._store_observation(obs)
        # Reshape to handle multi-dim and discrete action spaces, see SB3 GH #970 #1392
        self.actions[self.pos] = np.array(np.asarray(action).reshape((self.n_envs, self.action_dim)))
        self.rewards[self.pos] = np.array(reward)
        self.dones[self.pos] = np.array(done)
        if self.handle_timeout_termination:
            self.timeouts[self.pos] = np.array([info.get("TimeLimit.truncated", False) for info in infos])
        self.behaviour_log_probs[self.pos] = log_probs
        self.episode_starts[self.pos] = starts
        self.episode_index.add_row(starts, np.asarray(done, dtype=bool))
        self.pos += 1
        if self.pos == self.buffer_size:
            self.full = True
            self.pos = 0

    def _store_observation(self, obs: np.ndarray) -> None:
        # Reshape needed when using multiple envs with discrete observations (as in SB3)
        if isinstance(self.observation_space, spaces.Discrete):
            obs = obs.reshape((self.n_envs, *self.obs_shape))
        self.observations[self.pos] = np.array(obs)

    def _get_samples(self, batch_inds: np.ndarray, env: VecNormalize | None = None) -> Any:
        raise NotImplementedError(
            f"{type(self).__name__} stores no next observations, so it cannot sample single transitions; use `sample_episodes`"
        )

    @property
    def n_episodes(self) -> int:
        """Number of complete episodes that :meth:`sample_episodes` can draw from."""
        return self.episode_index.n_episodes

    def sample_episodes(self, n_episodes: int, env: VecNormalize | None = None) -> EpisodeBatch:
        """
        Draw ``n_episodes`` complete episodes uniformly without replacement (all of them when the buffer holds
        fewer) and return their steps laid end to end, each episode from its first step to its last.

        :param n_episodes: number of episodes N
        :param env: VecNormalize to normalise the observations and rewards with (as SB3's ``sample``)
        :return: an :class:`EpisodeBatch` whose ``behaviour_log_probs`` are the stored behaviour log-probabilities
        :raises RuntimeError: if the buffer holds no complete episode
        """
        return self.get_episodes(self.choose_episodes(n_episodes), env)

    def choose_episodes(self, n_episodes: int) -> np.ndarray:
        """
        The first half of :meth:`sample_episodes`: ``min(n_episodes, held)`` distinct episodes, uniformly.

        :param n_episodes: number of episodes N
        :return: indices into :meth:`EpisodeIndex.episodes`, for :meth:`get_episodes` and :meth:`describe_episode`
        :raises RuntimeError: if the buffer holds no complete episode
        """
        available = self.episode_index.n_episodes
        if available == 0:
            raise RuntimeError("The replay buffer holds no complete episode yet")
        # The global numpy RNG, as SB3's ReplayBuffer.sample: seeded by the algorithm's set_random_seed.
        return np.random.choice(available, size=min(n_episodes, available), replace=False)  # noqa: NPY002

    def describe_episode(self, chosen: np.ndarray, k: int) -> str:
        """
        Where the ``k``-th episode of a batch drawn by :meth:`choose_episodes` is stored, for error messages.

        :param chosen: the batch's indices from :meth:`choose_episodes`
        :param k: the episode's position in the batch
        :return: e.g. ``"env 1, buffer rows 40-47"`` (ring positions in that env's column; ``first-last``)
        """
        envs, first_rows, lengths = self.episode_index.episodes()
        index = int(chosen[k])
        first = int(first_rows[index]) % self.buffer_size
        last = (int(first_rows[index]) + int(lengths[index]) - 1) % self.buffer_size
        return f"env {int(envs[index])}, buffer rows {first}-{last}, {int(lengths[index])} steps"

    def get_episodes(self, chosen: np.ndarray, env: VecNormalize | None = None) -> EpisodeBatch:
        """
        The second half of :meth:`sample_episodes`: the chosen episodes as an :class:`EpisodeBatch`.

        :param chosen: indices into :meth:`EpisodeIndex.episodes` (from :meth:`choose_episodes`)
        :param env: VecNormalize to normalise the observations and rewards with (as SB3's ``sample``)
        :return: an :class:`EpisodeBatch` whose ``behaviour_log_probs`` are the stored behaviour log-probabilities
        """
        episode_envs = self.episode_index.episodes()[0][chosen]
        rows, envs, lengths = self.episode_index.locate(chosen)

        episode_starts = np.zeros(len(rows), dtype=bool)
        episode_starts[np.cumsum(lengths) - lengths] = True
        last = np.cumsum(lengths) - 1
        actions = self.actions[rows, envs]
        if isinstance(self.action_space, spaces.Discrete):
            actions_t = self.to_torch(actions).long().reshape(-1)
        elif isinstance(self.action_space, spaces.MultiDiscrete):
            actions_t = self.to_torch(actions).long()
        else:
            actions_t = self.to_torch(actions).float()
        rewards = self._normalize_reward(self.rewards[rows, envs].reshape(-1, 1), env).reshape(-1)
        zeros = th.zeros(len(rows), dtype=th.float32, device=self.device)
        return EpisodeBatch(
            observations=self._episode_observations(rows, envs, env),
            actions=actions_t,
            rewards=self.to_torch(rewards.astype(np.float32)),
            episode_starts=self.to_torch(episode_starts),
            behaviour_log_probs=self.to_torch(self.behaviour_log_probs[rows, envs]),
            values=zeros,
            bootstrap_values=zeros.clone(),
            episode_lengths=self.to_torch(lengths),
            episode_truncated=self.to_torch(self.timeouts[rows[last], envs[last]] > 0),
            episode_env_indices=self.to_torch(episode_envs),
        )

    def _episode_observations(self, rows: np.ndarray, envs: np.ndarray, env: VecNormalize | None) -> th.Tensor | TensorDict:
        obs = self._normalize_obs(self.observations[rows, envs], env)
        assert isinstance(obs, np.ndarray)
        return self.to_torch(obs)


class DictEpisodeReplayBuffer(EpisodeReplayBuffer, DictReplayBuffer):
    """
    :class:`EpisodeReplayBuffer` for ``Dict`` observation spaces: storage as SB3's ``DictReplayBuffer`` without the
    next observations, i.e. per transition every key's observation, the action and the same 17 bytes, plus 24
    bytes per complete episode.

    :param buffer_size: Max number of transitions (split evenly between the envs, as in SB3)
    :param observation_space: Observation space (a ``spaces.Dict``)
    :param action_space: Action space
    :param device: PyTorch device of the sampled tensors
    :param n_envs: Number of parallel environments
    :param optimize_memory_usage: Must be False
    :param handle_timeout_termination: As in SB3; here it only fills ``EpisodeBatch.episode_truncated``
    """

    observations: dict[str, np.ndarray]
    obs_shape: dict[str, tuple[int, ...]]

    def _store_observation(self, obs: dict[str, np.ndarray]) -> None:  # type: ignore[override]
        assert isinstance(self.observation_space, spaces.Dict)
        for key in self.observations:
            # Reshape needed when using multiple envs with discrete observations (as in SB3's DictReplayBuffer)
            value = obs[key]
            if isinstance(self.observation_space.spaces[key], spaces.Discrete):
                value = value.reshape((self.n_envs, *self.obs_shape[key]))
            self.observations[key][self.pos] = np.array(value)

    def _episode_observations(self, rows: np.ndarray, envs: np.ndarray, env: VecNormalize | None) -> th.Tensor | TensorDict:
        obs = self._normalize_obs({key: value[rows, envs] for key, value in self.observations.items()}, env)
        assert isinstance(obs, dict)
        return {key: self.to_torch(value) for key, value in obs.items()}


__all__ = ["DictEpisodeReplayBuffer", "EpisodeIndex", "EpisodeReplayBuffer"]
