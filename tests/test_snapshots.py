"""
Env snapshots (``sb3_pg_ext.common.snapshots``): from a restored state, the same actions give the same observations,
rewards, termination and truncation flags (and Monitor's episode returns) as from the original, for 50 steps, per
env family, through DummyVecEnv, SubprocVecEnv and VecNormalize; restores are verified; what cannot be saved is
refused by name; the replay fallback reports the steps it played.
"""

from __future__ import annotations

import importlib.util
import pickle
from dataclasses import replace
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.wrappers import FrameStackObservation
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv, VecEnv, VecMonitor, VecNormalize

import sb3_pg_ext  # noqa: F401  (registers the token envs)
from sb3_pg_ext.common.snapshots import EnvSnapshot, SnapshotError, SnapshotWrapper, restore, snapshot

HAS_MUJOCO = importlib.util.find_spec("mujoco") is not None
needs_mujoco = pytest.mark.skipif(not HAS_MUJOCO, reason="needs the mujoco package (pip install sb3-pg-ext[mujoco])")
WINDOW = 50


def random_actions(venv: VecEnv, n: int, seed: int) -> list[np.ndarray]:
    space = venv.action_space
    space.seed(seed)
    return [np.array([space.sample() for _ in range(venv.num_envs)]) for _ in range(n)]


def play(venv: VecEnv, actions: list[np.ndarray], indices: tuple[int, ...] = (0,)) -> list[list[dict[str, Any]]]:
    """Step ``venv`` with ``actions``; keep what each env of ``indices`` returned at each step (the raw observation
    and reward under VecNormalize)."""
    steps: list[list[dict[str, Any]]] = [[] for _ in indices]
    for action in actions:
        obs, rewards, dones, infos = venv.step(action)
        normalised = isinstance(venv, VecNormalize)
        if normalised:
            obs, rewards = venv.get_original_obs(), venv.get_original_reward()
        for kept, index in zip(steps, indices, strict=True):
            info = infos[index]
            episode = info.get("episode")
            kept.append(
                {
                    "obs": np.array(obs[index], copy=True),
                    "reward": float(rewards[index]),
                    "done": bool(dones[index]),
                    "truncated": bool(info.get("TimeLimit.truncated", False)),
                    # VecNormalize normalises it with statistics that move on
                    "terminal_observation": None if normalised else info.get("terminal_observation"),
                    "episode": None if episode is None else (episode["r"], episode["l"]),
                }
            )
    return steps


def assert_same_steps(original: list[dict[str, Any]], replayed: list[dict[str, Any]]) -> None:
    assert len(original) == len(replayed)
    for t, (a, b) in enumerate(zip(original, replayed, strict=True)):
        np.testing.assert_array_equal(a["obs"], b["obs"], err_msg=f"observation at step {t}")
        assert a["reward"] == b["reward"], f"reward at step {t}"
        assert (a["done"], a["truncated"]) == (b["done"], b["truncated"]), f"termination flags at step {t}"
        if a["terminal_observation"] is not None or b["terminal_observation"] is not None:
            np.testing.assert_array_equal(a["terminal_observation"], b["terminal_observation"], err_msg=f"step {t}")
        assert a["episode"] == b["episode"], f"Monitor's episode return/length at step {t}"


# (env id, gym.make kwargs, steps before the snapshot, wrapper, whether the window must hold a time-limit truncation)
FAMILIES = [
    pytest.param("CartPole-v1", {"max_episode_steps": 15}, 10, None, True, id="CartPole-v1"),
    pytest.param("Acrobot-v1", {"max_episode_steps": 20}, 16, None, True, id="Acrobot-v1"),
    pytest.param("Pendulum-v1", {"max_episode_steps": 20}, 16, None, True, id="Pendulum-v1"),
    pytest.param("MountainCar-v0", {"max_episode_steps": 20}, 16, None, True, id="MountainCar-v0"),
    pytest.param("MountainCarContinuous-v0", {"max_episode_steps": 20}, 16, None, True, id="MountainCarContinuous-v0"),
    pytest.param("LunarLander-v3", {"max_episode_steps": 40}, 30, SnapshotWrapper, True, id="LunarLander-v3-replay"),
    pytest.param("sb3_pg_ext/DigitReverse-v0", {}, 2, None, False, id="DigitReverse-v0"),
    pytest.param("sb3_pg_ext/DigitAdd-v0", {}, 1, None, False, id="DigitAdd-v0"),
    pytest.param("Hopper-v5", {"max_episode_steps": 20}, 16, None, True, id="Hopper-v5", marks=needs_mujoco),
    pytest.param("Ant-v5", {"max_episode_steps": 20}, 16, None, True, id="Ant-v5", marks=needs_mujoco),
]


@pytest.mark.parametrize(("env_id", "env_kwargs", "k", "wrapper", "truncates"), FAMILIES)
def test_restored_state_replays_the_same_50_steps(env_id, env_kwargs, k, wrapper, truncates):
    venv = make_vec_env(env_id, n_envs=2, seed=3, env_kwargs=env_kwargs, wrapper_class=wrapper)
    venv.reset()
    last_obs = None
    for action in random_actions(venv, k, seed=1):
        last_obs, *_ = venv.step(action)
    saved = pickle.loads(pickle.dumps(snapshot(venv, 1)))  # what crosses a process boundary
    assert isinstance(saved, EnvSnapshot)

    actions = random_actions(venv, WINDOW, seed=2)
    (original,) = play(venv, actions, indices=(1,))
    # the window exercises the env's random generator (a reset inside it) and, where asked, the time limit
    assert any(step["done"] for step in original), "no reset inside the window"
    assert not truncates or any(step["truncated"] for step in original), "no time-limit truncation inside the window"

    # into the env it came from and into the other env of the VecEnv
    for index in (1, 0):
        restored = restore(venv, index, saved)
        np.testing.assert_array_equal(restored.observation, last_obs[1])
        assert restored.replay_steps == saved.replay_steps
    env_1_actions_for_both = [np.stack([action[1], action[1]]) for action in actions]
    from_env_1, from_env_0 = play(venv, env_1_actions_for_both, indices=(1, 0))
    assert_same_steps(original, from_env_1)
    assert_same_steps(original, from_env_0)


def test_snapshots_work_through_subproc_vec_env():
    # one worker: starting one costs seconds (it imports SB3); the replay family, so the recorder's state crosses too
    venv = make_vec_env(
        "LunarLander-v3",
        n_envs=1,
        seed=5,
        env_kwargs={"max_episode_steps": 40},
        wrapper_class=SnapshotWrapper,
        vec_env_cls=SubprocVecEnv,
        vec_env_kwargs={"start_method": "forkserver"},
    )
    try:
        venv.reset()
        for action in random_actions(venv, 30, seed=1):
            last_obs, *_ = venv.step(action)
        saved = snapshot(venv, 0)
        actions = random_actions(venv, WINDOW, seed=2)
        (original,) = play(venv, actions)
        assert any(step["done"] for step in original)
        restored = restore(venv, 0, saved)
        np.testing.assert_array_equal(restored.observation, last_obs[0])
        assert restored.replay_steps == saved.replay_steps > 0
        assert_same_steps(original, play(venv, actions)[0])
        # an error in the worker comes back as an error, and the worker lives on
        with pytest.raises(SnapshotError, match=r"LunarLander-v3.*did not reproduce"):
            restore(venv, 0, replace(saved, state={**saved.state, "actions": saved.state["actions"][:-1]}))
        restore(venv, 0, saved)
    finally:
        venv.close()


def test_vec_normalize_statistics_are_left_alone_and_the_observation_normalised():
    venv = VecNormalize(VecMonitor(DummyVecEnv([lambda: gym.make("Pendulum-v1", max_episode_steps=20)] * 2)), gamma=0.9)
    venv.seed(0)
    venv.reset()
    for action in random_actions(venv, 15, seed=1):
        venv.step(action)
    raw_at_snapshot = venv.get_original_obs()[1].copy()
    saved = snapshot(venv, 1)

    actions = random_actions(venv, WINDOW, seed=2)
    (original,) = play(venv, actions, indices=(1,))  # raw observations and rewards: the statistics keep moving
    assert any(step["episode"] is not None for step in original)

    count, mean = venv.obs_rms.count, venv.obs_rms.mean.copy()
    restored = restore(venv, 1, saved)
    assert venv.obs_rms.count == count and np.array_equal(venv.obs_rms.mean, mean), "the restore changed the statistics"
    np.testing.assert_array_equal(restored.observation, venv.normalize_obs(raw_at_snapshot))
    np.testing.assert_array_equal(venv.get_original_obs()[1], raw_at_snapshot)
    assert_same_steps(original, play(venv, actions, indices=(1,))[0])


def test_an_env_without_implementation_is_refused_by_name():
    venv = make_vec_env("FrozenLake-v1", n_envs=1, seed=0)
    venv.reset()
    with pytest.raises(SnapshotError, match=r"FrozenLake-v1.*SnapshotWrapper.*CartPole-v1.*LunarLander-v3"):
        snapshot(venv, 0)


def test_an_env_that_is_not_deterministic_given_its_seed_is_refused_by_name():
    # BipedalWalker reuses its Box2D world across resets: a replay passes its check, then drifts episodes later
    venv = make_vec_env("BipedalWalker-v3", n_envs=1, seed=0, wrapper_class=SnapshotWrapper)
    venv.reset()
    with pytest.raises(SnapshotError, match=r"BipedalWalker-v3.*reuses its Box2D world"):
        snapshot(venv, 0)


def test_a_wrapper_with_unknown_state_is_refused_by_name():
    venv = DummyVecEnv([lambda: FrameStackObservation(gym.make("CartPole-v1"), stack_size=3)])
    venv.reset()
    with pytest.raises(SnapshotError, match=r"CartPole-v1.*FrameStackObservation"):
        snapshot(venv, 0)
    # recording outside it: the replay rebuilds the wrapper's state, which depends on the episode only
    venv = DummyVecEnv([lambda: SnapshotWrapper(FrameStackObservation(gym.make("CartPole-v1"), stack_size=3), mode="replay")])
    venv.seed(0)
    venv.reset()
    obs = venv.step(np.array([1]))[0]
    saved = snapshot(venv, 0)
    assert saved.family == "replay" and saved.replay_steps == 1
    venv.step(np.array([0]))
    restored = restore(venv, 0, saved)
    np.testing.assert_array_equal(restored.observation, obs[0])
    assert restored.replay_steps == 1


def test_a_snapshot_of_another_env_is_refused():
    cartpole = make_vec_env("CartPole-v1", n_envs=1, seed=0)
    pendulum = make_vec_env("Pendulum-v1", n_envs=1, seed=0)
    cartpole.reset()
    pendulum.reset()
    with pytest.raises(SnapshotError, match=r"Pendulum-v1.*CartPole-v1"):
        restore(pendulum, 0, snapshot(cartpole, 0))


def test_a_restore_that_does_not_reproduce_the_observation_fails_naming_the_env():
    venv = make_vec_env("CartPole-v1", n_envs=1, seed=0)
    venv.reset()
    venv.step(np.array([0]))
    saved = snapshot(venv, 0)
    tampered = replace(saved, state={**saved.state, "state": saved.state["state"] + 0.01})
    with pytest.raises(SnapshotError, match=r"CartPole-v1.*did not reproduce the recorded observation"):
        restore(venv, 0, tampered)

    venv = make_vec_env("LunarLander-v3", n_envs=1, seed=0, wrapper_class=SnapshotWrapper)
    venv.reset()
    for _ in range(5):
        venv.step(np.array([2]))
    saved = snapshot(venv, 0)
    tampered = replace(saved, state={**saved.state, "actions": saved.state["actions"][:-1]})
    with pytest.raises(SnapshotError, match=r"LunarLander-v3.*replaying 4 actions.*did not reproduce"):
        restore(venv, 0, tampered)


class StepCounter(gym.Wrapper):
    """Counts the steps and resets that reach the env."""

    def __init__(self, env: gym.Env):
        super().__init__(env)
        self.steps = 0
        self.resets = 0

    def reset(self, **kwargs):
        self.resets += 1
        return self.env.reset(**kwargs)

    def step(self, action):
        self.steps += 1
        return self.env.step(action)


def test_the_replay_fallback_reports_the_steps_it_played():
    venv = DummyVecEnv([lambda: SnapshotWrapper(StepCounter(gym.make("LunarLander-v3")))])
    counter = venv.envs[0].env
    assert isinstance(counter, StepCounter)
    venv.seed(7)
    venv.reset()
    for _ in range(17):  # no-op: the lander falls, no episode ends this early
        venv.step(np.array([0]))
    saved = snapshot(venv, 0)
    assert saved.replay_steps == 17
    for _ in range(5):
        venv.step(np.array([1]))
    steps, resets = counter.steps, counter.resets
    restored = restore(venv, 0, saved)
    assert restored.replay_steps == 17
    assert (counter.steps - steps, counter.resets - resets) == (17, 1)
    # the recorder goes on from the restored episode: three more steps make a snapshot of 20
    for _ in range(3):
        venv.step(np.array([0]))
    assert snapshot(venv, 0).replay_steps == 20
