"""
Collection of *groups* of complete episodes that share their start (GRPO's rollouts), beside the episodic collector.

A rollout is ``n_groups`` groups of ``group_size`` complete episodes, collected in *waves*: episode k of the
rollout (group-major order: group k // G) is played by env ``k mod n_envs`` in wave ``k // n_envs``. Each wave
starts every env's episode (envs without an episode get none), plays every kept episode to its end with the
episodic collector's step loop (:meth:`EpisodicOnPolicyAlgorithm._play_kept_episodes`), and the next wave starts
again. An env that finishes early keeps stepping (a VecEnv steps all its envs together): those steps are counted in
``num_timesteps`` but not trained on. With ``n_envs`` = 1 no step is wasted.

How the episodes of a group start is the one seam, a :class:`GroupStart`: :meth:`GroupStart.start_wave` starts the
episodes of a wave, :meth:`GroupStart.check` checks that the episodes of each group started alike. Today's way,
:class:`SeededGroupStart`, resets every episode of a group with the group's seed.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.vec_env import VecEnv
from stable_baselines3.common.vec_env.base_vec_env import VecEnvObs

from sb3_pg_ext.common.buffers import EpisodeRolloutBuffer
from sb3_pg_ext.common.episodic import EpisodicOnPolicyAlgorithm

#: Training groups are reset with seeds in [0, GROUP_SEED_LIMIT); evaluate on seeds >= GROUP_SEED_LIMIT to keep
#: evaluation prompts/start states drawn from seeds disjoint from training.
GROUP_SEED_LIMIT = 2**30


class GroupStartError(RuntimeError):
    """The episodes of a group did not start from the same observation."""


def seed_next_reset(env: VecEnv, seeds: list[int | None]) -> None:
    """
    Make the next ``env.reset()`` reset env i with ``seeds[i]`` (None: unseeded).

    ``VecEnv.seed(s)`` can only give env i the seed ``s + i``; a group needs the *same* seed in several envs.
    SB3's VecEnvs keep the seeds of their next reset in ``_seeds`` of the innermost VecEnv (which ``seed()`` itself
    writes and ``reset()`` consumes), so the seeds are set there and the reset goes through every VecEnv wrapper
    (VecNormalize, VecTransposeImage, VecFrameStack, ...) as usual.

    :param env: the VecEnv to reset next
    :param seeds: one seed (or None) per env
    """
    base = env.unwrapped
    if len(seeds) != base.num_envs:
        raise ValueError(f"Expected {base.num_envs} seeds, got {len(seeds)}")
    base._seeds = list(seeds)


def env_name(env: VecEnv, index: int) -> str:
    """The ``str()`` of env ``index`` of ``env`` (or ``"env <index>"`` for a VecEnv without ``env_method``)."""
    try:
        return str(env.env_method("__str__", indices=[index])[0])
    except Exception:  # a custom VecEnv without env_method: the index alone still names it
        return f"env {index}"


def same_observation(a: Any, b: Any) -> bool:
    """Whether two observations (arrays, or dicts of arrays) are equal."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(np.array_equal(a[key], b[key]) for key in a)
    return bool(np.array_equal(a, b))


class GroupStart:
    """
    How the episodes of a group start, for one rollout: the seam of the group collector.

    :meth:`start_wave` starts the episodes of a wave; :meth:`check` raises :class:`GroupStartError` unless every
    episode starts like the first episode of its group. Subclasses implement :meth:`start_wave` and :meth:`how`.

    :param group_size: G, episodes per group
    :param algorithm: name of the algorithm, for error messages
    """

    def __init__(self, group_size: int, algorithm: str):
        self.group_size = group_size
        self.algorithm = algorithm
        #: group -> (member, env index, start observation) of the group's first episode
        self._firsts: dict[int, tuple[int, int, Any]] = {}

    def start_wave(self, env: VecEnv, slots: np.ndarray) -> VecEnvObs:
        """
        Start the episodes of a wave: env i plays episode ``slots[i]`` of the rollout (-1: no kept episode).

        :return: the first observations of every env
        """
        raise NotImplementedError

    def how(self, group: int, env_idx: int) -> str:
        """How the episodes of ``group`` were started (completes "every episode of group g ..."), for messages."""
        raise NotImplementedError

    def hint(self) -> str:
        """What may cause episodes of a group to start differently, and the way out, for messages."""
        return "pass verify_group_starts=False to train on groups with different starts."

    def check(self, env: VecEnv, raw_obs: VecEnvObs, slots: np.ndarray) -> None:
        """
        Raise :class:`GroupStartError` unless every episode of the wave starts like the first episode of its group
        (over the whole rollout).

        :param env: the training VecEnv (to name the env at fault)
        :param raw_obs: the wave's first observations, before any VecNormalize scaling
        :param slots: the episode of every env in this wave (-1: none)
        """
        for env_idx in np.flatnonzero(slots >= 0).tolist():
            if isinstance(raw_obs, dict):
                start: Any = {k: np.array(v[env_idx]) for k, v in raw_obs.items()}
            else:
                start = np.array(raw_obs[env_idx])
            group, member = divmod(int(slots[env_idx]), self.group_size)
            if group not in self._firsts:
                self._firsts[group] = (member, env_idx, start)
                continue
            first_member, first_env, first_start = self._firsts[group]
            if not same_observation(start, first_start):
                played_by = f"env {env_idx}: {env_name(env, env_idx)}"
                first_played_by = "the same env" if first_env == env_idx else f"env {first_env}"
                raise GroupStartError(
                    f"{self.algorithm}: every episode of group {group} {self.how(group, env_idx)}, "
                    f"but episode {member} of the group ({played_by}) started from a different observation than "
                    f"its episode {first_member} ({first_played_by}): {self.hint()}"
                )


class SeededGroupStart(GroupStart):
    """
    Every episode of group g is reset with the group's seed ``seeds[g]``, so a group shares its initial state
    (or prompt) when the env's ``reset(seed=...)`` determines it.

    :param seeds: one reset seed per group of the rollout
    :param group_size: G, episodes per group
    :param algorithm: name of the algorithm, for error messages
    """

    def __init__(self, seeds: list[int], group_size: int, algorithm: str):
        super().__init__(group_size, algorithm)
        self.seeds = seeds
        self._wave_seeds: list[int | None] = []

    def start_wave(self, env: VecEnv, slots: np.ndarray) -> VecEnvObs:
        self._wave_seeds = [int(self.seeds[s // self.group_size]) if s >= 0 else None for s in slots]
        seed_next_reset(env, self._wave_seeds)
        return env.reset()

    def how(self, group: int, env_idx: int) -> str:
        return f"was reset with seed {self._wave_seeds[env_idx]}"

    def hint(self) -> str:
        return (
            "the environment ignores the seed passed to "
            "reset(seed=...) (e.g. it draws its initial state from a global or a space's RNG), so the "
            "episodes of a group do not share their start. Make reset(seed=...) determine the initial state, "
            "or pass verify_group_starts=False to train on groups with different starts."
        )


class GroupedOnPolicyAlgorithm(EpisodicOnPolicyAlgorithm):
    """
    An :class:`EpisodicOnPolicyAlgorithm` whose rollouts are ``n_groups`` groups of ``group_size`` complete
    episodes, collected in waves (see the module docstring); :meth:`_group_start` says how a group starts.

    The budget: ``learn(total_timesteps)`` starts no new group once ``num_timesteps`` has reached
    ``total_timesteps``; the groups already started are played to their end (a group is never cut), so a rollout
    may hold fewer than ``n_groups`` groups, and ``learn`` may run past its budget by the rest of the started groups.

    Subclasses set ``group_size``, ``n_groups``, ``n_episodes = group_size * n_groups``, ``verify_group_starts``
    and ``_group_seed_rng`` (the generator of the groups' reset seeds) and implement ``train``.
    """

    group_size: int
    n_groups: int
    verify_group_starts: bool
    _group_seed_rng: np.random.Generator | None

    def _group_start(self) -> GroupStart:
        """How the groups of the next rollout start: reset with one seed per group, drawn from ``_group_seed_rng``."""
        assert self._group_seed_rng is not None
        seeds = self._group_seed_rng.integers(0, GROUP_SEED_LIMIT, size=self.n_groups).tolist()
        return SeededGroupStart(seeds, self.group_size, self.__class__.__name__)

    def _on_rollout_start(self) -> None:
        """Called at the start of :meth:`collect_rollouts`, after the buffer is reset. Does nothing here."""

    def collect_rollouts(  # type: ignore[override]
        self,
        env: VecEnv,
        callback: BaseCallback,
        rollout_buffer: EpisodeRolloutBuffer,
        n_rollout_steps: int = 0,
    ) -> bool:
        """
        Collect ``n_groups`` groups of ``group_size`` complete episodes, each group started by :meth:`_group_start`.

        Episode k (group-major order: group k // G) is played by env k mod n_envs in wave k // n_envs; each wave
        starts the episodes of its envs (envs without an episode: none). No new group is started once the budget
        of ``learn(total_timesteps)`` is reached; the groups already started are finished.

        :param env: The training environment
        :param callback: Callback called at every env step (and at the start and end of the rollout)
        :param rollout_buffer: Buffer to fill with complete episodes
        :param n_rollout_steps: Unused (rollouts are sized in groups)
        :return: True if the rollout is complete, False if a callback stopped training
        """
        self.policy.set_training_mode(False)
        rollout_buffer.reset()
        self._on_rollout_start()
        n_envs = env.num_envs
        group_start = self._group_start()
        start_timesteps = self.num_timesteps
        n_episodes = self.n_episodes  # lowered to the groups started so far once the budget is reached
        callback.on_rollout_start()

        for wave_start in range(0, self.n_episodes, n_envs):
            if self._budget_reached():
                # Budget reached: finish the groups already started, start no new one.
                n_episodes = min(n_episodes, -(-wave_start // self.group_size) * self.group_size)
            if wave_start >= n_episodes:
                break
            slots = np.arange(wave_start, wave_start + n_envs)
            slots[slots >= n_episodes] = -1
            self._last_obs = group_start.start_wave(env, slots)  # type: ignore[assignment]
            self._last_episode_starts = np.ones((n_envs,), dtype=bool)
            if self.verify_group_starts:
                # Compare the observations before VecNormalize's running scaling, which changes from wave to wave.
                raw = self._vec_normalize_env.get_original_obs() if self._vec_normalize_env is not None else self._last_obs
                group_start.check(env, raw, slots)  # type: ignore[arg-type]
            if self.use_sde:
                self.policy.reset_noise(n_envs)
            if not self._play_kept_episodes(env, callback, rollout_buffer, slots):
                return False

        # Steps that envs without a kept episode played while a wave finished (0 with n_envs = 1).
        self.logger.record(
            "rollout/kept_step_fraction", rollout_buffer.n_stored_steps / max(self.num_timesteps - start_timesteps, 1)
        )
        callback.update_locals(locals())
        callback.on_rollout_end()
        return True


__all__ = [
    "GROUP_SEED_LIMIT",
    "GroupStart",
    "GroupStartError",
    "GroupedOnPolicyAlgorithm",
    "SeededGroupStart",
    "env_name",
    "same_observation",
    "seed_next_reset",
]
