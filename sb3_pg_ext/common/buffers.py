"""Buffers that keep episode structure."""

from __future__ import annotations

import warnings
from typing import NamedTuple

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3.common.type_aliases import TensorDict
from stable_baselines3.common.utils import get_device


class EpisodeBatch(NamedTuple):
    """
    Complete episodes laid end to end, in the order they were started.

    ``T`` = total number of steps, ``N`` = number of episodes.
    """

    observations: th.Tensor | TensorDict  # (T, *obs_shape) or dict of those
    actions: th.Tensor  # (T, *action_shape); long for Discrete/MultiDiscrete, float otherwise
    rewards: th.Tensor  # (T,)
    episode_starts: th.Tensor  # (T,) bool, True at each episode's first step
    behaviour_log_probs: th.Tensor  # (T,) log pi_old(a_t|s_t) (log mu(a_t|s_t)) of the policy that acted
    values: th.Tensor  # (T,) V_old(s_t) when the algorithm asked for values, else zeros
    bootstrap_values: th.Tensor  # (T,) V_old(s_T) at the last step of time-limit-truncated episodes, else 0
    episode_lengths: th.Tensor  # (N,) long
    episode_truncated: th.Tensor  # (N,) bool, True when a time limit (not a terminal state) ended the episode
    episode_env_indices: th.Tensor  # (N,) long, the env that played the episode

    @property
    def n_episodes(self) -> int:
        return int(self.episode_lengths.shape[0])

    @property
    def n_steps(self) -> int:
        return int(self.rewards.shape[0])

    @property
    def log_probs(self) -> th.Tensor:
        """Deprecated name of :attr:`behaviour_log_probs` (kept for one release, with a ``DeprecationWarning``)."""
        warnings.warn(
            "`EpisodeBatch.log_probs` is deprecated and will be removed in the next release: use `behaviour_log_probs`",
            DeprecationWarning,
            stacklevel=2,
        )
        return self.behaviour_log_probs


def select_steps(observations: th.Tensor | TensorDict, index: th.Tensor | slice) -> th.Tensor | TensorDict:
    """The steps ``index`` (an index tensor or a slice) of a batch of observations, a tensor or a dict of tensors."""
    if isinstance(observations, dict):
        return {key: value[index] for key, value in observations.items()}
    return observations[index]


class EpisodeRolloutBuffer:
    """
    Rollout buffer for on-policy algorithms that learn from *complete* episodes (REINFORCE, GRPO).

    It is filled one vectorised step at a time. Each env is either playing a kept episode (its ``slot``, the
    episode's index in start order) or running steps that are not kept (slot ``-1``); :meth:`get` returns the
    kept episodes, each contiguous and in start order, as an :class:`EpisodeBatch`.

    Memory: the observations of every vectorised step are stored whole, so a rollout of S vectorised steps costs
    what an SB3 ``RolloutBuffer`` of ``n_steps=S`` costs, plus one int per step and env (the slot).

    :param observation_space: Observation space
    :param action_space: Action space
    :param device: PyTorch device of the returned tensors
    :param n_envs: Number of parallel environments
    """

    def __init__(
        self,
        observation_space: spaces.Space,
        action_space: spaces.Space,
        device: th.device | str = "auto",
        n_envs: int = 1,
    ) -> None:
        self.observation_space = observation_space
        self.action_space = action_space
        self.device = get_device(device)
        self.n_envs = n_envs
        self.reset()

    def reset(self) -> None:
        """Forget everything collected."""
        self._obs: list[np.ndarray | dict[str, np.ndarray]] = []
        self._actions: list[np.ndarray] = []
        self._rewards: list[np.ndarray] = []
        self._log_probs: list[np.ndarray] = []
        self._values: list[np.ndarray] = []
        self._slots: list[np.ndarray] = []
        self._episode_truncated: dict[int, bool] = {}
        self._episode_bootstrap: dict[int, float] = {}
        self._episode_env: dict[int, int] = {}
        self._batch: EpisodeBatch | None = None

    @property
    def n_stored_steps(self) -> int:
        """Number of kept steps so far."""
        return int(sum((s >= 0).sum() for s in self._slots))

    def add(
        self,
        obs: np.ndarray | dict[str, np.ndarray],
        actions: np.ndarray,
        rewards: np.ndarray,
        log_probs: np.ndarray,
        values: np.ndarray | None,
        slots: np.ndarray,
    ) -> None:
        """
        Store one vectorised step.

        :param obs: observations the actions were taken in, ``(n_envs, *obs_shape)`` (or a dict of those)
        :param actions: actions taken, ``(n_envs, *action_shape)``
        :param rewards: rewards received, ``(n_envs,)``
        :param log_probs: log-probabilities of the actions under the acting policy, ``(n_envs,)``
        :param values: value estimates ``(n_envs,)``, or None
        :param slots: kept-episode index per env, -1 for steps not kept
        """
        self._batch = None
        if isinstance(obs, dict):
            self._obs.append({key: np.array(value, copy=True) for key, value in obs.items()})
        else:
            self._obs.append(np.array(obs, copy=True))
        self._actions.append(np.array(actions, copy=True))
        self._rewards.append(np.asarray(rewards, dtype=np.float32).reshape(self.n_envs).copy())
        self._log_probs.append(np.asarray(log_probs, dtype=np.float32).reshape(self.n_envs).copy())
        if values is None:
            values = np.zeros(self.n_envs, dtype=np.float32)
        self._values.append(np.asarray(values, dtype=np.float32).reshape(self.n_envs).copy())
        self._slots.append(np.array(slots, dtype=np.int64, copy=True))

    def end_episode(self, slot: int, env_index: int, truncated: bool, bootstrap_value: float = 0.0) -> None:
        """
        Close a kept episode.

        :param slot: the episode's index in start order
        :param env_index: the env that played it
        :param truncated: whether a time limit ended it
        :param bootstrap_value: ``V(s_T)`` of the state after its last step (used only when truncated)
        """
        self._episode_truncated[slot] = bool(truncated)
        self._episode_bootstrap[slot] = float(bootstrap_value) if truncated else 0.0
        self._episode_env[slot] = int(env_index)

    def get(self) -> EpisodeBatch:
        """
        The kept, closed episodes as one flat :class:`EpisodeBatch` on ``device``.

        :raises RuntimeError: if an episode is still open (collection stopped early)
        """
        if self._batch is not None:
            return self._batch
        if not self._slots:
            raise RuntimeError("The episode buffer is empty: collect a rollout first")
        slots = np.stack(self._slots)  # (S, n_envs)
        open_slots = set(np.unique(slots[slots >= 0]).tolist()) - set(self._episode_truncated)
        if open_slots:
            raise RuntimeError(f"Episodes {sorted(open_slots)} were not finished; only complete episodes can be used")
        step_idx, env_idx = np.nonzero(slots >= 0)  # step-major order, so time order inside each slot
        order = np.argsort(slots[step_idx, env_idx], kind="stable")
        step_idx, env_idx = step_idx[order], env_idx[order]
        episode_of_step = slots[step_idx, env_idx]
        episode_starts = np.ones_like(episode_of_step, dtype=bool)
        episode_starts[1:] = episode_of_step[1:] != episode_of_step[:-1]
        kept = np.unique(episode_of_step)  # sorted slot ids
        lengths = np.bincount(np.searchsorted(kept, episode_of_step), minlength=len(kept))
        last_step = np.cumsum(lengths) - 1
        bootstrap = np.zeros(len(step_idx), dtype=np.float32)
        bootstrap[last_step] = [self._episode_bootstrap[int(s)] for s in kept]

        if isinstance(self._obs[0], dict):
            observations: th.Tensor | TensorDict = {
                key: th.as_tensor(np.stack([o[key] for o in self._obs])[step_idx, env_idx], device=self.device)
                for key in self._obs[0]
            }
        else:
            observations = th.as_tensor(np.stack(self._obs)[step_idx, env_idx], device=self.device)  # type: ignore[arg-type]
        actions = np.stack(self._actions)[step_idx, env_idx]
        if isinstance(self.action_space, spaces.Discrete | spaces.MultiDiscrete):
            actions_t = th.as_tensor(actions, device=self.device).long()
        else:
            actions_t = th.as_tensor(actions, device=self.device).float()
        if isinstance(self.action_space, spaces.Discrete):
            actions_t = actions_t.reshape(-1)

        def flat(arrays: list[np.ndarray]) -> th.Tensor:
            return th.as_tensor(np.stack(arrays)[step_idx, env_idx], device=self.device)

        self._batch = EpisodeBatch(
            observations=observations,
            actions=actions_t,
            rewards=flat(self._rewards),
            episode_starts=th.as_tensor(episode_starts, device=self.device),
            behaviour_log_probs=flat(self._log_probs),
            values=flat(self._values),
            bootstrap_values=th.as_tensor(bootstrap, device=self.device),
            episode_lengths=th.as_tensor(lengths, device=self.device),
            episode_truncated=th.as_tensor([self._episode_truncated[int(s)] for s in kept], device=self.device),
            episode_env_indices=th.as_tensor([self._episode_env[int(s)] for s in kept], device=self.device),
        )
        return self._batch
