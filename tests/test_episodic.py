"""
The complete-episode collection shared by REINFORCE and GRPO (``EpisodicOnPolicyAlgorithm._collect_step``):
what it logs about the episodes, with several envs; the deprecated names.
"""

from __future__ import annotations

import math
import warnings
from functools import partial

import gymnasium as gym
import numpy as np
import pytest
from gymnasium import spaces
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.vec_env import DummyVecEnv

from sb3_pg_ext import GRPO, REINFORCE

MAX_LEN = 20
#: Mean and variance of the uniform distribution on {1..MAX_LEN}.
TRUE_MEAN, TRUE_VAR = (MAX_LEN + 1) / 2, (MAX_LEN**2 - 1) / 12


class UniformLengthEnv(gym.Env):
    """
    Episodes of length uniform on {1..max_len}, drawn from the env's own generator (not from the reset seed, so that
    the episodes of a GRPO group, which share a reset seed, still have different lengths); reward 1 per step.
    """

    def __init__(self, length_seed: int, max_len: int = MAX_LEN):
        self.max_len = max_len
        self.length_rng = np.random.default_rng(length_seed)
        self.observation_space = spaces.Box(0.0, 1.0, shape=(2,), dtype=np.float32)
        self.action_space = spaces.Discrete(2)
        self.t = 0
        self.length = 1

    def _obs(self) -> np.ndarray:
        return np.array([self.t / self.max_len, 1.0], dtype=np.float32)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self.t = 0
        self.length = int(self.length_rng.integers(1, self.max_len + 1))
        return self._obs(), {}

    def step(self, action):
        self.t += 1
        return self._obs(), 1.0, self.t >= self.length, False, {}


class KeptEpisodeLengths(BaseCallback):
    """Records the lengths of the episodes each rollout kept (the ones trained on)."""

    def __init__(self) -> None:
        super().__init__()
        self.lengths: list[int] = []

    def _on_step(self) -> bool:
        return True

    def _on_rollout_end(self) -> None:
        self.lengths.extend(self.model.rollout_buffer.get().episode_lengths.tolist())


def uniform_length_vec_env(n_envs: int) -> DummyVecEnv:
    return DummyVecEnv([lambda i=i: Monitor(UniformLengthEnv(length_seed=i)) for i in range(n_envs)])


ALGOS = {
    "reinforce": partial(REINFORCE, n_episodes=8, baseline="mean"),
    # verify_group_starts=False: the group's envs share their reset seed but, by design, not their lengths.
    "grpo": partial(GRPO, group_size=8, n_groups=2, verify_group_starts=False),
}


@pytest.mark.parametrize("algo", sorted(ALGOS))
def test_logged_episode_statistics_describe_the_kept_episodes(algo: str):
    """
    With 8 envs, the envs whose kept episode ends early play further episodes until the rollout's last kept episode
    ends; those are short more often than not (measured before the fix, this test's setting: logged mean length 9.2
    over 973 episodes, the 664 kept ones 10.8, true mean 10.5). ``ep_info_buffer`` (hence ``rollout/ep_len_mean``,
    ``rollout/ep_rew_mean``) must hold exactly the kept episodes, whose mean length is the true mean within sampling
    error.
    """
    model = ALGOS[algo]("MlpPolicy", uniform_length_vec_env(8), stats_window_size=100_000, seed=0, device="cpu")
    kept = KeptEpisodeLengths()
    model.learn(12_000, callback=kept)
    logged_lengths = [int(info["l"]) for info in model.ep_info_buffer]
    logged_returns = [float(info["r"]) for info in model.ep_info_buffer]
    assert len(kept.lengths) >= 600
    assert sorted(logged_lengths) == sorted(kept.lengths)
    assert sorted(logged_returns) == sorted(float(length) for length in kept.lengths)  # reward 1 per step
    stderr = math.sqrt(TRUE_VAR / len(logged_lengths))
    assert abs(np.mean(logged_lengths) - TRUE_MEAN) < 4 * stderr, f"logged mean length {np.mean(logged_lengths):.2f}"


# ---------------------------------------------------------------------------------------------------------------------
# Names: the episode count is n_episodes, the acting policy's log-probabilities are behaviour_log_probs
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("algo", "kwargs", "n_episodes"),
    [(REINFORCE, dict(n_episodes=3), 3), (GRPO, dict(group_size=2, n_groups=3, verify_group_starts=False), 6)],
)
def test_n_steps_is_a_deprecated_alias_of_the_episode_count(algo, kwargs: dict, n_episodes: int, tmp_path):
    model = algo("MlpPolicy", DummyVecEnv([partial(UniformLengthEnv, 0)]), seed=0, device="cpu", **kwargs)
    assert model.n_episodes == n_episodes
    with pytest.warns(DeprecationWarning, match="n_episodes"):
        assert model.n_steps == n_episodes
    # learn() (SB3's loop reads n_steps) and save/load warn about nothing
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        model.learn(60)
        model.save(tmp_path / "model")
        loaded = algo.load(tmp_path / "model", env=model.get_env(), device="cpu")
    assert loaded.n_episodes == n_episodes
    with pytest.warns(DeprecationWarning):
        assert loaded.n_steps == n_episodes


def test_episode_batch_log_probs_is_a_deprecated_alias_of_behaviour_log_probs():
    model = REINFORCE("MlpPolicy", DummyVecEnv([partial(UniformLengthEnv, 0)]), n_episodes=2, seed=0, device="cpu")
    model.learn(10)
    batch = model.rollout_buffer.get()
    assert batch.behaviour_log_probs.shape == (batch.n_steps,)
    with pytest.warns(DeprecationWarning, match="behaviour_log_probs"):
        assert batch.log_probs is batch.behaviour_log_probs
