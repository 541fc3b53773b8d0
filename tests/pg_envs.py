"""Small environments with known policy gradients, for the statistical tests."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
from gymnasium import spaces


class GaussianBandit(gym.Env):
    """
    One-step bandit: constant observation [1.0], ``Discrete(K)`` actions, reward ``means[a] + noise_std * N(0, 1)``.
    With a linear softmax policy, J = sum_a pi(a) means[a] and dJ/dlogit_a = pi(a) (means[a] - J).
    """

    def __init__(self, means: tuple[float, ...] = (10.0, 11.0, 12.5), noise_std: float = 1.0):
        self.means = np.asarray(means, dtype=np.float64)
        self.noise_std = noise_std
        self.observation_space = spaces.Box(0.0, 1.0, shape=(1,), dtype=np.float32)
        self.action_space = spaces.Discrete(len(means))

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        return np.ones(1, dtype=np.float32), {}

    def step(self, action):
        reward = float(self.means[int(action)] + self.noise_std * self.np_random.normal())
        return np.ones(1, dtype=np.float32), reward, True, False, {}


class IndependentStepsEnv(gym.Env):
    """
    ``horizon`` decisions; observation one-hot(t); ``Discrete(2)`` actions; reward
    ``r_t = offset + scales[t] * a_t + noise_std * N(0, 1)``. Each reward depends on its own action only, so
    late rewards do not depend on early actions: E[sum_t w_t grad log pi_t * psi_t] = sum_t w_t grad E[r_t].
    """

    def __init__(
        self, horizon: int = 4, scales: tuple[float, ...] = (1.0, -1.0, 2.0, 0.5), offset: float = 1.0, noise_std: float = 1.0
    ):
        assert len(scales) == horizon
        self.horizon = horizon
        self.scales = np.asarray(scales, dtype=np.float64)
        self.offset = offset
        self.noise_std = noise_std
        self.observation_space = spaces.Box(0.0, 1.0, shape=(horizon,), dtype=np.float32)
        self.action_space = spaces.Discrete(2)
        self.t = 0

    def _obs(self) -> np.ndarray:
        obs = np.zeros(self.horizon, dtype=np.float32)
        obs[min(self.t, self.horizon - 1)] = 1.0
        return obs

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self.t = 0
        return self._obs(), {}

    def step(self, action):
        reward = float(self.offset + self.scales[self.t] * int(action) + self.noise_std * self.np_random.normal())
        self.t += 1
        return self._obs(), reward, self.t >= self.horizon, False, {}


class RandomLengthEnv(gym.Env):
    """
    Episodes of random length, uniform on {1..max_len}. The observation is (episode uid, step), so a test can check
    which episodes a rollout kept and whether each was kept whole. ``lengths[uid]`` records every episode played.
    """

    _next_uid = 0

    def __init__(self, max_len: int = 20, truncate_prob: float = 0.5, env_tag: int = 0):
        self.max_len = max_len
        self.truncate_prob = truncate_prob
        self.env_tag = env_tag
        self.observation_space = spaces.Box(-np.inf, np.inf, shape=(2,), dtype=np.float32)
        self.action_space = spaces.Discrete(2)
        self.lengths: dict[int, int] = {}
        self.steps_played = 0
        self.uid = -1
        self.t = 0
        self.length = 0
        self.truncates = False

    def _obs(self) -> np.ndarray:
        return np.array([self.uid, self.t], dtype=np.float32)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self.uid = self.env_tag * 1_000_000 + len(self.lengths)
        self.length = int(self.np_random.integers(1, self.max_len + 1))
        self.truncates = bool(self.np_random.random() < self.truncate_prob)
        self.lengths[self.uid] = self.length
        self.t = 0
        return self._obs(), {}

    def step(self, action):
        self.t += 1
        self.steps_played += 1
        done = self.t >= self.length
        return self._obs(), 1.0, done and not self.truncates, done and self.truncates, {}
