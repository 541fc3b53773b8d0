from __future__ import annotations

from collections.abc import Callable

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from stable_baselines3.common.envs import (
    FakeImageEnv,
    IdentityEnv,
    IdentityEnvBox,
    IdentityEnvMultiBinary,
    IdentityEnvMultiDiscrete,
    SimpleMultiObsEnv,
)

th.set_num_threads(1)


def seeded(env: gym.Env, seed: int) -> gym.Env:
    """SB3's test envs sample states from their spaces' own RNGs: seed those too, for reproducible runs."""
    env.action_space.seed(seed)
    env.observation_space.seed(seed)
    return env


ENV_FACTORIES: dict[str, Callable[[int], gym.Env]] = {
    "discrete": lambda seed: seeded(IdentityEnv(dim=4, ep_length=8), seed),
    "multidiscrete": lambda seed: seeded(IdentityEnvMultiDiscrete(dim=2, ep_length=8), seed),
    "multibinary": lambda seed: seeded(IdentityEnvMultiBinary(dim=3, ep_length=8), seed),
    "box": lambda seed: seeded(IdentityEnvBox(ep_length=8), seed),
    "dict_obs": lambda seed: seeded(SimpleMultiObsEnv(random_start=True), seed),
    "image_obs": lambda seed: seeded(FakeImageEnv(screen_height=36, screen_width=36, n_channels=1), seed),
}


def policy_for(env_name: str) -> str:
    return {"dict_obs": "MultiInputPolicy", "image_obs": "CnnPolicy"}.get(env_name, "MlpPolicy")


def flat_parameters(model) -> np.ndarray:
    return th.cat([p.detach().reshape(-1).cpu() for p in model.policy.parameters()]).numpy()


class NaNRewardEnv(gym.Wrapper):
    """Returns a NaN reward at the given step of the first episode."""

    def __init__(self, env: gym.Env, at_step: int = 3):
        super().__init__(env)
        self.at_step = at_step
        self.steps = 0

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        self.steps += 1
        if self.steps == self.at_step:
            reward = float("nan")
        return obs, reward, terminated, truncated, info


@pytest.fixture
def cartpole_seed() -> int:
    return 0
