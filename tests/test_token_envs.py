"""The token-generation environments and the token features extractor."""

from __future__ import annotations

import warnings

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from stable_baselines3.common.env_checker import check_env
from stable_baselines3.common.preprocessing import preprocess_obs

import sb3_pg_ext  # noqa: F401  (registers the envs)
from sb3_pg_ext.common.token_policies import TokenExtractor
from sb3_pg_ext.envs import EOS, PAD, PLUS, DigitAddEnv, DigitReverseEnv, grade, success_rate

ENV_IDS = ["sb3_pg_ext/DigitReverse-v0", "sb3_pg_ext/DigitAdd-v0"]


def play(env: gym.Env, tokens: list[int]) -> tuple[list[float], bool, bool, dict]:
    rewards, terminated, truncated, info = [], False, False, {}
    for token in tokens:
        _, reward, terminated, truncated, info = env.step(token)
        rewards.append(float(reward))
        if terminated or truncated:
            break
    return rewards, terminated, truncated, info


def target_of(env: gym.Env) -> list[int]:
    return list(env.unwrapped._target)


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_registered_envs_pass_sb3_env_checker(env_id: str):
    env = gym.make(env_id)
    check_env(env.unwrapped, warn=False)
    assert env.unwrapped.action_space.n == 11  # ten digits and EOS
    assert EOS == 10


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_prompt_is_a_function_of_the_reset_seed(env_id: str):
    a, b = gym.make(env_id), gym.make(env_id)
    for seed in range(20):
        obs_a, _ = a.reset(seed=seed)
        a.step(3)  # the episode state must not leak into the next prompt
        obs_b, _ = b.reset(seed=seed)
        obs_a2, _ = a.reset(seed=seed)
        np.testing.assert_array_equal(obs_a2, obs_b)
        np.testing.assert_array_equal(obs_a, obs_b)
    prompts = {tuple(a.reset(seed=seed)[0]) for seed in range(50)}
    assert len(prompts) > 40, "different seeds should mostly draw different prompts"


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_exact_answer_scores_one_and_succeeds_in_both_modes(env_id: str):
    for mode in ("partial", "binary"):
        env = gym.make(env_id, reward_mode=mode)
        for seed in range(10):
            env.reset(seed=seed)
            rewards, terminated, truncated, info = play(env, [*target_of(env), EOS])
            assert rewards[:-1] == [0.0] * (len(rewards) - 1), "the reward is sparse: only at the end"
            assert rewards[-1] == 1.0
            assert terminated and not truncated
            assert info["is_success"] is True


def test_partial_credit_counts_answer_positions_with_the_eos_position():
    assert grade([3, 2, 1, EOS], [3, 2, 1], "partial") == (1.0, True)
    assert grade([3, 2, 9, EOS], [3, 2, 1], "partial") == (0.75, False)  # 3 of 4 positions, EOS included
    assert grade([3, 2, 1, 5, EOS], [3, 2, 1], "partial") == (0.75, False)  # EOS late: its position is wrong
    assert grade([3, EOS], [3, 2, 1], "partial") == (0.25, False)
    assert grade([EOS], [3, 2, 1], "partial") == (0.0, False)
    assert grade([3, 2, 9, EOS], [3, 2, 1], "binary") == (0.0, False)


def test_reverse_env_reward_and_success_flag_follow_the_verifier():
    env = gym.make("sb3_pg_ext/DigitReverse-v0")
    env.reset(seed=1)
    target = target_of(env)
    wrong_last = [*target[:-1], (target[-1] + 1) % 10, EOS]
    rewards, terminated, _, info = play(env, wrong_last)
    assert terminated
    assert rewards[-1] == pytest.approx(len(target) / (len(target) + 1))
    assert info["is_success"] is False
    assert info["target"] == target


def test_full_answer_slots_without_eos_end_the_episode_as_terminal_with_the_length_limit_flag():
    env = gym.make("sb3_pg_ext/DigitReverse-v0", min_digits=3, max_digits=3)
    env.reset(seed=0)
    target = target_of(env)
    rewards, terminated, truncated, info = play(env, [*target, target[0], target[0], target[0]])
    assert len(rewards) == env.unwrapped.answer_length == 4
    # Graded and over: terminal, not a time limit (a critic must not bootstrap V(s_T) on top of the grade).
    assert terminated and not truncated
    assert info["length_limit"] is True
    assert rewards[-1] == pytest.approx(3 / 4)  # three digits right, the EOS position missed
    assert info["is_success"] is False
    env.reset(seed=0)
    _, terminated, truncated, info = play(env, [*target, EOS])
    assert terminated and not truncated and info["length_limit"] is False


def answer_length_hits(batch, answer_length: int) -> th.Tensor:
    """Which episodes of an episode batch filled the answer slots without EOS."""
    ends = th.cumsum(batch.episode_lengths, 0) - 1
    return (batch.episode_lengths == answer_length) & (batch.actions[ends] != EOS)


def test_a_critic_does_not_bootstrap_at_the_length_limit():
    """REINFORCE's value baseline (its default) and SB3's PPO see the length limit as terminal: no gamma V(s_T)."""
    from stable_baselines3 import PPO
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.vec_env import VecEnvWrapper

    from sb3_pg_ext import REINFORCE

    env = make_vec_env("sb3_pg_ext/DigitReverse-v0", n_envs=4, seed=0)
    model = REINFORCE("MlpPolicy", env, n_episodes=32, seed=0, device="cpu")
    assert model.baseline == "value"
    _, callback = model._setup_learn(10**9, None)
    assert model.collect_rollouts(model.env, callback, model.rollout_buffer)
    batch = model.rollout_buffer.get()
    limited = answer_length_hits(batch, env.get_attr("answer_length")[0])
    assert limited.sum() >= 10  # a random policy mostly fills the slots: the case is exercised
    assert not batch.episode_truncated.any()
    assert th.all(batch.bootstrap_values == 0)

    class RecordRewards(VecEnvWrapper):
        def __init__(self, venv):
            super().__init__(venv)
            self.rewards: list[np.ndarray] = []

        def reset(self):
            return self.venv.reset()

        def step_wait(self):
            obs, rewards, dones, infos = self.venv.step_wait()
            self.rewards.append(rewards.copy())
            return obs, rewards, dones, infos

    recorder = RecordRewards(make_vec_env("sb3_pg_ext/DigitReverse-v0", n_envs=4, seed=0))
    ppo = PPO("MlpPolicy", recorder, n_steps=64, seed=0, device="cpu")
    _, callback = ppo._setup_learn(10**9, None)
    assert ppo.collect_rollouts(ppo.env, callback, ppo.rollout_buffer, n_rollout_steps=64)
    # PPO adds gamma V(s_T) to the reward of every truncated step; at a terminal step it adds nothing.
    np.testing.assert_array_equal(ppo.rollout_buffer.rewards, np.stack(recorder.rewards))
    assert np.count_nonzero(np.stack(recorder.rewards)) > 0


def test_make_vec_env_builds_the_token_envs_without_a_warning():
    from stable_baselines3.common.env_util import make_vec_env

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for env_id in ENV_IDS:
            env = make_vec_env(env_id, n_envs=2, seed=0)  # asks each env for render_mode="rgb_array"
            env.reset()
            image = env.render()
            assert image is not None and image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
            env.close()


def test_render_modes():
    env = DigitReverseEnv(render_mode="ansi")
    env.reset(seed=0)
    prompt = "".join(map(str, env._prompt))
    env.step(4)
    env.step(EOS)
    assert env.render() == f"{prompt} -> 4<eos>"
    image_env = DigitReverseEnv(render_mode="rgb_array")
    image_env.reset(seed=0)
    before = image_env.render()
    image_env.step(4)
    after = image_env.render()
    assert before.shape == after.shape and not np.array_equal(before, after)  # the image shows the answer
    assert DigitReverseEnv().render() is None
    assert set(DigitReverseEnv.metadata["render_modes"]) == {"ansi", "human", "rgb_array"}


def test_observation_layout_right_aligned_prompt_answer_then_position():
    env = DigitReverseEnv(min_digits=2, max_digits=4)
    obs, _ = env.reset(seed=3)
    prompt = list(env._prompt)
    p, a = env.prompt_length, env.answer_length
    assert obs.shape == (p + a + 1,)
    np.testing.assert_array_equal(obs[p - len(prompt) : p], prompt)
    assert np.all(obs[: p - len(prompt)] == PAD)
    assert np.all(obs[p : p + a] == PAD) and obs[-1] == 0
    obs, *_ = env.step(7)
    obs, *_ = env.step(5)
    np.testing.assert_array_equal(obs[p : p + 2], [7, 5])
    assert obs[-1] == 2
    assert env.observation_space.contains(obs)


def test_transitions_are_deterministic():
    first, second = DigitAddEnv(), DigitAddEnv()
    actions = [1, 0, 4, EOS]
    for env in (first, second):
        env.reset(seed=11)
    for action in actions:
        out_a, out_b = first.step(action), second.step(action)
        np.testing.assert_array_equal(out_a[0], out_b[0])
        assert out_a[1:4] == out_b[1:4]


def test_add_env_targets_are_the_zero_padded_sums():
    env = DigitAddEnv(min_digits=1, max_digits=3)
    for seed in range(30):
        env.reset(seed=seed)
        prompt = env._prompt
        plus = prompt.index(PLUS)
        a, b = int("".join(map(str, prompt[:plus]))), int("".join(map(str, prompt[plus + 1 :])))
        n = plus
        assert len(prompt) == 2 * n + 1
        assert env._target == [int(c) for c in str(a + b).zfill(n + 1)]


def test_number_of_distinct_prompts():
    assert DigitReverseEnv(min_digits=3, max_digits=4).n_prompts == 11_000
    assert DigitAddEnv(min_digits=1, max_digits=2).n_prompts == 10_100
    tiny = DigitReverseEnv(min_digits=1, max_digits=1)
    assert tiny.n_prompts == 10
    assert len({tuple(tiny.reset(seed=s)[0]) for s in range(500)}) == 10


def test_invalid_settings_raise():
    with pytest.raises(ValueError, match="reward_mode"):
        DigitReverseEnv(reward_mode="dense")
    with pytest.raises(ValueError, match="min_digits"):
        DigitReverseEnv(min_digits=5, max_digits=4)
    env = DigitReverseEnv()
    env.reset(seed=0)
    with pytest.raises(ValueError, match="Invalid action"):
        env.step(11)
    env.step(EOS)
    with pytest.raises(RuntimeError, match="reset"):
        env.step(1)


def test_success_rate_of_an_oracle_is_one_and_of_a_constant_policy_zero():
    env = DigitReverseEnv()

    def oracle(obs: np.ndarray) -> np.ndarray:
        position = int(obs[0, -1])
        answer = [*env._target, EOS]
        return np.array([answer[position]])

    assert success_rate(oracle, env, range(100)) == 1.0
    assert success_rate(lambda obs: np.array([EOS]), env, range(20)) == 0.0


@pytest.mark.parametrize("architecture", ["mlp", "transformer"])
def test_token_extractor_embeds_token_ids(architecture: str):
    env = DigitAddEnv()
    extractor = TokenExtractor(env.observation_space, embed_dim=8, architecture=architecture, n_heads=2)
    observations = np.stack([env.reset(seed=s)[0] for s in range(5)])
    one_hot = preprocess_obs(th.as_tensor(observations), env.observation_space)
    features = extractor(one_hot)
    assert features.shape == (5, extractor.features_dim)
    if architecture == "mlp":
        # The one-hot product is an embedding lookup: slot 0's features are the embedding of its token id + slot 0.
        expected = extractor.token_embedding[th.as_tensor(observations[:, 0])] + extractor.slot_embedding[0]
        th.testing.assert_close(features[:, :8], expected)
    with pytest.raises(ValueError, match="MultiDiscrete"):
        TokenExtractor(gym.spaces.Box(0, 1, (3,)))
