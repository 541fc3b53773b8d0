"""
Collection of *groups* of complete episodes that share their start (GRPO's rollouts), beside the episodic collector.

A rollout is ``n_groups`` groups of ``group_size`` complete episodes, collected in *waves*: episode k of the
rollout (group-major order: group k // G) is played by env ``k mod n_envs`` in wave ``k // n_envs``. Each wave
starts every env's episode (envs without an episode get none), plays every kept episode to its end with the
episodic collector's step loop (:meth:`EpisodicOnPolicyAlgorithm._play_kept_episodes`), and the next wave starts
again. An env that finishes early keeps stepping (a VecEnv steps all its envs together): those steps are counted in
``num_timesteps`` but not trained on. With ``n_envs`` = 1 no step is wasted.

How the episodes of a group start is the one seam, a :class:`GroupStart`: :meth:`GroupStart.start_wave` starts the
episodes of a wave, :meth:`GroupStart.check` checks that the episodes of each group started alike. Two ways:
:class:`SeededGroupStart` resets every episode of a group with the group's seed (``group_start="reset"``);
:class:`BranchGroupStart` (``group_start="branch"``) first plays *trunk* episodes, one per env, draws ``n_groups``
branch states uniformly from the trunk's steps, and restores each into the envs of its group
(:mod:`sb3_pg_ext.common.snapshots`), whose episodes are then *continuations* of at most ``branch_horizon`` steps.

Branch groups, what is trained and what is counted: the trunk's steps are played with the current policy and not
trained on; the continuations are the rollout's episodes (each one a new episode of the rollout buffer, although
the env's own episode goes on: the episode-start flag is set for it). Every env step counts in ``num_timesteps``:
the trunk's, the continuations' (and those the other envs play meanwhile) and the steps a replay snapshot plays to
restore a state; each rollout logs them as ``rollout/trunk_steps``, ``rollout/branch_steps`` and
``rollout/replay_steps``. ``rollout/ep_rew_mean`` and ``rollout/ep_len_mean`` describe the trunk's episodes only:
they are whole episodes of the current policy from a reset, whereas a continuation that reaches the episode's end
is logged by the ``Monitor`` with the whole episode's return (its trunk part and its own) and would weigh the
statistics towards the branch states near an episode's end.

VinePPO's value estimates (``branch_advantage="vine"``): every state s_t the trunk visits is a branch state (no
draw), its ``group_size`` continuations go to a scratch buffer, and their mean truncated discounted return is
V(s_t) (:meth:`GroupedOnPolicyAlgorithm._trunk_values`, kept in ``_vine_values``). The trunk's episodes are then the
rollout's, trained on with those values; the continuations are counted (``rollout/branch_steps``), not trained on.

Common random numbers (``branch_noise="common"``, TRPO's vine): while the continuations are played, :meth:`_act`
draws every action from uniform noise (:mod:`sb3_pg_ext.common.noise`), shared by the continuations of a group
after their first step; the trunk's actions are drawn as usual.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch as th
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.vec_env import VecEnv
from stable_baselines3.common.vec_env.base_vec_env import VecEnvObs

from sb3_pg_ext.common.buffers import EpisodeRolloutBuffer
from sb3_pg_ext.common.episodic import EpisodicOnPolicyAlgorithm
from sb3_pg_ext.common.noise import CommonNoise, actions_from_uniforms, noise_size
from sb3_pg_ext.common.snapshots import EnvSnapshot, SnapshotError, restore, snapshot
from sb3_pg_ext.estimators import episode_discounted_returns

#: What :meth:`EpisodicOnPolicyAlgorithm._play_kept_episodes` calls after every step: ``(dones, n_kept_envs)``.
AfterStep = Callable[[np.ndarray, int], None]

#: Training groups are reset with seeds in [0, GROUP_SEED_LIMIT); evaluate on seeds >= GROUP_SEED_LIMIT to keep
#: evaluation prompts/start states drawn from seeds disjoint from training.
GROUP_SEED_LIMIT = 2**30


class GroupStartError(RuntimeError):
    """The episodes of a group did not start from the same observation."""


class BranchStartError(SnapshotError, ValueError):
    """
    ``group_start="branch"`` on an env that cannot be snapshotted: a :class:`SnapshotError` naming the env, and a
    ``ValueError`` too, since the setting does not fit the env (so rl-zoo3's tuning prunes such a trial instead of
    stopping the study).
    """


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


def _set_env_observation(obs: VecEnvObs, env_idx: int, value: Any) -> None:
    """Write the observation of env ``env_idx`` into a batch of observations (an array or a dict of arrays)."""
    if isinstance(obs, dict):
        for key in obs:
            obs[key][env_idx] = value[key]
    else:
        obs[env_idx] = value  # type: ignore[index]


def _copy_observations(obs: VecEnvObs) -> VecEnvObs:
    if isinstance(obs, dict):
        return {key: np.array(value, copy=True) for key, value in obs.items()}
    return np.array(obs, copy=True)


class BranchGroupStart(GroupStart):
    """
    Every continuation of group i starts from branch state i: a snapshot of a state of the trunk, drawn uniformly
    without replacement from the trunk's steps (with replacement if the trunk has fewer than ``n_groups`` steps).

    The draw is a reservoir sample taken while the trunk is played (:meth:`offer` at every trunk step), so that
    only the drawn states are snapshotted. :meth:`start_wave` restores each env's branch state (the snapshot
    verifies the restored observation) and counts the steps a replay snapshot played in :attr:`replay_steps`.

    With ``every_state`` (VinePPO's value estimates) there is no draw: every state the trunk visits is a branch
    state, in the order offered, and ``n_groups`` becomes their number at :meth:`finish_trunk`.

    :param n_groups: B, branch states to draw (unused with ``every_state``)
    :param group_size: G, continuations per branch state
    :param algorithm: name of the algorithm, for error messages
    :param rng: the generator of the draw
    :param every_state: keep every offered state instead of drawing ``n_groups``
    """

    def __init__(self, n_groups: int, group_size: int, algorithm: str, rng: np.random.Generator, every_state: bool = False):
        super().__init__(group_size, algorithm)
        self.n_groups = n_groups
        self.every_state = every_state
        self.rng = rng
        #: the drawn branch states, and (env index, trunk step) of each
        self.branch_states: list[EnvSnapshot] = []
        self.origins: list[tuple[int, int]] = []
        self.n_offered = 0
        #: env steps that restoring a replay snapshot played, since this group start was made
        self.replay_steps = 0
        #: the observations of every env before the next wave (set by the collector): envs without a continuation
        #: in a wave keep theirs
        self.last_obs: VecEnvObs | None = None

    def _snapshot(self, env: VecEnv, env_idx: int) -> EnvSnapshot:
        try:
            return snapshot(env, env_idx)
        except SnapshotError as error:
            raise BranchStartError(
                f"{self.algorithm}(group_start='branch') cannot branch from env {env_idx}: {error}"
            ) from error

    def offer(self, env: VecEnv, env_idx: int, step: int) -> None:
        """
        Offer the current state of env ``env_idx`` (step ``step`` of its trunk episode) to the draw: algorithm R's
        reservoir sample, which keeps each of the states offered so far with probability n_groups / n_offered.
        """
        position = self.n_offered
        self.n_offered += 1
        if self.every_state:
            self.branch_states.append(self._snapshot(env, env_idx))
            self.origins.append((env_idx, step))
            return
        if position >= self.n_groups:
            position = int(self.rng.integers(0, position + 1))
            if position >= self.n_groups:
                return
        state = self._snapshot(env, env_idx)
        if position == len(self.branch_states):
            self.branch_states.append(state)
            self.origins.append((env_idx, step))
        else:
            self.branch_states[position] = state
            self.origins[position] = (env_idx, step)

    def finish_trunk(self) -> None:
        """After the trunk: complete the draw with replacement if the trunk had fewer than ``n_groups`` steps."""
        if not self.branch_states:
            raise RuntimeError(f"{self.algorithm}: the trunk played no step to branch from")
        if self.every_state:
            self.n_groups = len(self.branch_states)
            return
        extra = self.rng.integers(0, len(self.branch_states), size=self.n_groups - len(self.branch_states)).tolist()
        self.branch_states += [self.branch_states[k] for k in extra]
        self.origins += [self.origins[k] for k in extra]

    def start_wave(self, env: VecEnv, slots: np.ndarray) -> VecEnvObs:
        assert self.last_obs is not None, "set last_obs before a wave"
        obs = _copy_observations(self.last_obs)
        for env_idx in np.flatnonzero(slots >= 0).tolist():
            restored = restore(env, env_idx, self.branch_states[int(slots[env_idx]) // self.group_size])
            _set_env_observation(obs, env_idx, restored.observation)
            self.replay_steps += restored.replay_steps
        return obs

    def how(self, group: int, env_idx: int) -> str:
        origin_env, step = self.origins[group]
        return f"was restored from branch state {group} (step {step} of the trunk episode of env {origin_env})"

    def hint(self) -> str:
        return (
            "a restored env does not return the observation of the state it was restored to. Check the env's "
            "snapshot support (sb3_pg_ext.common.snapshots), or pass verify_group_starts=False."
        )


class GroupedOnPolicyAlgorithm(EpisodicOnPolicyAlgorithm):
    """
    An :class:`EpisodicOnPolicyAlgorithm` whose rollouts are ``n_groups`` groups of ``group_size`` complete
    episodes, collected in waves (see the module docstring); :meth:`_group_start` says how a group starts.

    The budget: ``learn(total_timesteps)`` starts no new group once ``num_timesteps`` has reached
    ``total_timesteps``; the groups already started are played to their end (a group is never cut), so a rollout
    may hold fewer than ``n_groups`` groups, and ``learn`` may run past its budget by the rest of the started groups.

    With ``group_start="branch"`` a rollout first plays the trunk (one episode per env, each reset with a seed from
    ``_group_seed_rng``), then its groups of continuations, each cut after ``branch_horizon`` steps (closed as
    truncated in the buffer). The budget check before the first wave is skipped, so that a trunk is always followed
    by its groups.

    Subclasses set ``group_size``, ``n_groups``, ``n_episodes = group_size * n_groups``, ``verify_group_starts``,
    ``group_start`` (``"reset"`` or ``"branch"``), ``branch_horizon`` (None: to the episode's end) and
    ``_group_seed_rng`` (the generator of the groups' reset seeds and of the branch draws) and implement ``train``.
    """

    group_size: int
    n_groups: int
    verify_group_starts: bool
    _group_seed_rng: np.random.Generator | None
    group_start: str = "reset"
    branch_horizon: int | None = None
    #: ``"group"``: the continuations are trained on; ``"vine"``: they only estimate V at every trunk state, and the
    #: trunk is trained on (see :meth:`collect_rollouts`)
    branch_advantage: str = "group"
    #: With ``branch_advantage="vine"``: V(s_t) of every step of the rollout's trunk episodes, in the order of
    #: ``rollout_buffer.get()`` (NaN where the budget ended the rollout before its continuations were played)
    _vine_values: th.Tensor | None = None
    #: ``"independent"``: every action of every continuation is drawn independently; ``"common"``: the continuations
    #: of a group share their noise after their first action (:mod:`sb3_pg_ext.common.noise`)
    branch_noise: str = "independent"
    #: the shared noise while the continuations of a ``branch_noise="common"`` rollout are played, else None
    _common_noise: CommonNoise | None = None
    #: False while continuations are played: the Monitor's end-of-episode records then stay out of ep_info_buffer
    _record_episodes: bool = True

    def _group_start(self) -> GroupStart:
        """
        How the groups of the next rollout start: reset with one seed per group, drawn from ``_group_seed_rng``
        (``group_start="reset"``), or from branch states drawn from a trunk (``"branch"``: the trunk is played by
        :meth:`collect_rollouts`).
        """
        assert self._group_seed_rng is not None
        if self.group_start == "branch":
            every_state = self.branch_advantage == "vine"
            return BranchGroupStart(
                self.n_groups, self.group_size, self.__class__.__name__, self._group_seed_rng, every_state=every_state
            )
        seeds = self._group_seed_rng.integers(0, GROUP_SEED_LIMIT, size=self.n_groups).tolist()
        return SeededGroupStart(seeds, self.group_size, self.__class__.__name__)

    def _update_info_buffer(self, infos: list[dict[str, Any]], dones: np.ndarray | None = None) -> None:
        if self._record_episodes:
            super()._update_info_buffer(infos, dones)

    def _act(self, obs_tensor: th.Tensor | dict[str, th.Tensor]) -> tuple[th.Tensor, th.Tensor | None, th.Tensor]:
        """Sample actions; while common noise is set, from its uniforms (:mod:`sb3_pg_ext.common.noise`)."""
        noise = self._common_noise
        if noise is None or noise.slots is None:
            return super()._act(obs_tensor)
        distribution = self.policy.get_distribution(obs_tensor)
        actions = actions_from_uniforms(distribution, noise.uniforms().to(self.device))
        values = self.policy.predict_values(obs_tensor) if self._collect_values else None
        return actions, values, distribution.log_prob(actions)

    def _scratch_buffer(self, n_envs: int) -> EpisodeRolloutBuffer:
        """A buffer for steps that are played but not trained on (a trunk, or vine's value continuations), on CPU."""
        return EpisodeRolloutBuffer(self.observation_space, self.action_space, device="cpu", n_envs=n_envs)

    def _play_trunk(
        self, env: VecEnv, callback: BaseCallback, branch: BranchGroupStart, buffer: EpisodeRolloutBuffer | None = None
    ) -> bool:
        """
        Play one trunk episode per env with the current policy (reset with seeds from ``_group_seed_rng``), offering
        every state it visits to ``branch``'s draw.

        :param buffer: where the trunk's steps go (episode k: env k); None: a scratch buffer (not trained on)
        :return: False if a callback stopped training
        """
        assert self._group_seed_rng is not None
        n_envs = env.num_envs
        seed_next_reset(env, self._group_seed_rng.integers(0, GROUP_SEED_LIMIT, size=n_envs).tolist())
        self._last_obs = env.reset()  # type: ignore[assignment]
        self._last_episode_starts = np.ones((n_envs,), dtype=bool)
        if self.use_sde:
            self.policy.reset_noise(n_envs)
        trunk = buffer or self._scratch_buffer(n_envs)
        slots = np.arange(n_envs)
        steps = np.zeros(n_envs, dtype=np.int64)
        for env_idx in range(n_envs):
            branch.offer(env, env_idx, 0)

        def offer_states(dones: np.ndarray, n_kept_envs: int) -> None:
            """Offer the state every trunk episode still running has reached."""
            for env_idx in np.flatnonzero(slots >= 0).tolist():
                steps[env_idx] += 1
                branch.offer(env, env_idx, int(steps[env_idx]))

        if not self._play_kept_episodes(env, callback, trunk, slots, offer_states):
            return False
        branch.finish_trunk()
        return True

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

        branch = group_start if isinstance(group_start, BranchGroupStart) else None
        vine = branch is not None and self.branch_advantage == "vine"
        # Where the groups' episodes go: the rollout, or (vine) a scratch buffer whose returns estimate V
        groups_buffer = rollout_buffer
        horizon_cut = None
        if branch is not None:
            if not self._play_trunk(env, callback, branch, rollout_buffer if vine else None):
                return False
            trunk_steps = self.num_timesteps - start_timesteps
            if vine:
                groups_buffer = self._scratch_buffer(n_envs)
                n_episodes = branch.n_groups * self.group_size
            horizon_cut = self._horizon_cut(groups_buffer)
        n_planned = n_episodes
        self._record_episodes = branch is None
        if branch is not None and self.branch_noise == "common":
            assert self._group_seed_rng is not None
            seed = int(self._group_seed_rng.integers(0, GROUP_SEED_LIMIT))
            self._common_noise = CommonNoise(seed, self.group_size, noise_size(self.policy.action_dist))
        try:
            for wave_start in range(0, n_planned, n_envs):
                if self._budget_reached() and (branch is None or wave_start > 0):
                    # Budget reached: finish the groups already started, start no new one.
                    n_episodes = min(n_episodes, -(-wave_start // self.group_size) * self.group_size)
                if wave_start >= n_episodes:
                    break
                slots = np.arange(wave_start, wave_start + n_envs)
                slots[slots >= n_episodes] = -1
                if branch is not None:
                    branch.last_obs = self._last_obs
                    replayed = branch.replay_steps
                self._last_obs = group_start.start_wave(env, slots)  # type: ignore[assignment]
                if branch is not None:
                    # A restore that replays actions plays env steps: they count towards the budget.
                    self.num_timesteps += branch.replay_steps - replayed
                # A continuation is a new episode of the rollout (the env's own episode goes on).
                self._last_episode_starts = np.ones((n_envs,), dtype=bool)
                if self.verify_group_starts:
                    # Compare the observations before VecNormalize's running scaling, which changes from wave to wave.
                    raw = self._vec_normalize_env.get_original_obs() if self._vec_normalize_env is not None else self._last_obs
                    group_start.check(env, raw, slots)  # type: ignore[arg-type]
                if self.use_sde:
                    self.policy.reset_noise(n_envs)
                after_step = None if horizon_cut is None else horizon_cut(slots)
                if self._common_noise is not None:
                    self._common_noise.start_wave(slots)
                    after_step = self._common_noise.counting(after_step)
                if not self._play_kept_episodes(env, callback, groups_buffer, slots, after_step):
                    return False
        finally:
            self._record_episodes = True
            self._common_noise = None
        if vine:
            assert branch is not None
            self._vine_values = self._trunk_values(branch, groups_buffer, n_episodes // self.group_size, n_envs)

        if branch is not None:
            self.logger.record("rollout/trunk_steps", trunk_steps)
            self.logger.record("rollout/replay_steps", branch.replay_steps)
            self.logger.record(
                "rollout/branch_steps", self.num_timesteps - start_timesteps - trunk_steps - branch.replay_steps
            )
        # Steps that envs without a kept episode played while a wave finished (0 with n_envs = 1), and the trunk's.
        self.logger.record(
            "rollout/kept_step_fraction", rollout_buffer.n_stored_steps / max(self.num_timesteps - start_timesteps, 1)
        )
        callback.update_locals(locals())
        callback.on_rollout_end()
        return True

    def _trunk_values(
        self, branch: BranchGroupStart, continuations: EpisodeRolloutBuffer, n_estimated: int, n_envs: int
    ) -> th.Tensor:
        """
        V(s_t) of every trunk step, in the order of the rollout buffer (episode k: env k's trunk, in time order): the
        mean truncated discounted return of the ``group_size`` continuations from s_t (VinePPO's Monte-Carlo value),
        NaN for the states whose continuations the budget left unplayed (the last ``n_groups - n_estimated``).
        """
        values = th.full((branch.n_groups,), math.nan, dtype=th.float64)
        if n_estimated > 0:
            batch = continuations.get()
            returns = episode_discounted_returns(batch.rewards.to(th.float64), batch.episode_starts, self.gamma)
            values[:n_estimated] = returns.cpu().view(n_estimated, self.group_size).mean(dim=1)
        by_env: list[list[float]] = [[] for _ in range(n_envs)]
        for (env_idx, step), value in zip(branch.origins, values.tolist(), strict=True):
            assert step == len(by_env[env_idx]), "trunk states are offered in time order"
            by_env[env_idx].append(value)
        return th.tensor([value for env_values in by_env for value in env_values], dtype=th.float64)

    def _horizon_cut(
        self, rollout_buffer: EpisodeRolloutBuffer
    ) -> Callable[[np.ndarray], Callable[[np.ndarray, int], None] | None]:
        """
        For a wave's ``slots``: the ``after_step`` of :meth:`_play_kept_episodes` that closes every continuation
        still running after ``branch_horizon`` steps (as truncated), or None without a horizon.
        """

        def for_wave(slots: np.ndarray) -> AfterStep | None:
            if self.branch_horizon is None:
                return None
            horizon = self.branch_horizon
            lengths = np.zeros(len(slots), dtype=np.int64)

            def cut(dones: np.ndarray, n_kept_envs: int) -> None:
                lengths[:] += 1
                for env_idx in np.flatnonzero((slots >= 0) & (lengths >= horizon)).tolist():
                    rollout_buffer.end_episode(int(slots[env_idx]), env_idx, truncated=True)
                    self._on_kept_episode_end(int(slots[env_idx]), {})
                    slots[env_idx] = -1

            return cut

        return for_wave


__all__ = [
    "GROUP_SEED_LIMIT",
    "BranchGroupStart",
    "BranchStartError",
    "GroupStart",
    "GroupStartError",
    "GroupedOnPolicyAlgorithm",
    "SeededGroupStart",
    "env_name",
    "same_observation",
    "seed_next_reset",
]
