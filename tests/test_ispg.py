"""
ISPG: importance weights, unbiasedness on an enumerable MDP, the episode replay buffer, learning.

The conformance matrix (tests/test_conformance.py) covers the SB3 contract; these tests cover the estimator and
the buffer. Statistical tests use fixed seeds and tolerances in units of the estimate's standard error.
"""

from __future__ import annotations

import itertools

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from gymnasium import spaces
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.logger import configure
from stable_baselines3.common.type_aliases import TrainFrequencyUnit
from stable_baselines3.common.utils import set_random_seed
from stable_baselines3.common.vec_env import DummyVecEnv

from sb3_pg_ext import ISPG, REINFORCE
from sb3_pg_ext.common.buffers import EpisodeBatch
from sb3_pg_ext.common.replay_buffers import DictEpisodeReplayBuffer, EpisodeReplayBuffer
from sb3_pg_ext.estimators import (
    reward_to_go,
)
from tests.conftest import ENV_FACTORIES, flat_parameters
from tests.learning import final_return, steps_to_threshold

# ---------------------------------------------------------------------------------------------------------------------
# Unbiasedness on an enumerable multi-step MDP
# ---------------------------------------------------------------------------------------------------------------------

# States 0, 1, 2; actions 0, 1. TRANSITIONS[s][a] = (next state or -1 for terminal, reward). Episodes take 2 or 3
# decisions, and the reward of the last decision depends on the action taken there.
TRANSITIONS = {0: {0: (1, 0.0), 1: (2, 0.5)}, 1: {0: (-1, 1.0), 1: (2, 0.0)}, 2: {0: (-1, 0.0), 1: (-1, 2.0)}}
TARGET_P1 = th.tensor([0.7, 0.3, 0.8])  # pi(a=1|s)
BEHAVIOUR_P1 = np.array([0.5, 0.5, 0.5])  # mu(a=1|s), fixed and != pi
GAMMA = 0.9


class ChainMDP(gym.Env):
    """The MDP above as a gym env (only its spaces are used: the tests sample episodes directly)."""

    observation_space = spaces.Discrete(3)
    action_space = spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.state = 0
        return self.state, {}

    def step(self, action):
        self.state, reward = TRANSITIONS[self.state][int(action)]
        done = self.state == -1
        self.state = max(self.state, 0)
        return self.state, reward, done, False, {}


def chain_model(**kwargs) -> ISPG:
    """An ISPG whose policy is pi above: a linear softmax on one-hot states (net_arch=[])."""
    model = ISPG(
        "MlpPolicy", DummyVecEnv([ChainMDP]), gamma=GAMMA, policy_kwargs=dict(net_arch=[]), seed=0, device="cpu", **kwargs
    )
    logits = th.log(th.stack([1 - TARGET_P1, TARGET_P1]))  # (2 actions, 3 states)
    with th.no_grad():
        model.policy.action_net.weight.copy_(logits)
        model.policy.action_net.bias.zero_()
    return model


def enumerate_trajectories():
    """Every trajectory as a list of (state, action, reward)."""
    trajectories = []
    for actions in itertools.product((0, 1), repeat=3):
        s, traj = 0, []
        for a in actions:
            nxt, r = TRANSITIONS[s][a]
            traj.append((s, a, r))
            if nxt == -1:
                break
            s = nxt
        if traj not in trajectories:
            trajectories.append(traj)
    return trajectories


def analytic_gradient(model: ISPG, gamma: float = GAMMA) -> th.Tensor:
    """E_pi[ sum_t grad log pi(a_t|s_t) G_t ] by enumeration, G_t = sum_{t'>=t} gamma^{t'-t} r_{t'}."""
    surrogate = th.zeros(())
    for traj in enumerate_trajectories():
        states, actions = th.tensor([s for s, _, _ in traj]), th.tensor([a for _, a, _ in traj])
        log_prob = model.policy.get_distribution(states).log_prob(actions)
        returns = [sum(gamma ** (k - t) * traj[k][2] for k in range(t, len(traj))) for t in range(len(traj))]
        surrogate = surrogate + th.exp(log_prob.sum()).detach() * (log_prob * th.tensor(returns)).sum()
    model.policy.zero_grad()
    surrogate.backward()
    return th.cat([p.grad.reshape(-1).clone() for p in model.policy.parameters()])


NEXT_STATE = np.array([[TRANSITIONS[s][a][0] for a in (0, 1)] for s in range(3)])
REWARD = np.array([[TRANSITIONS[s][a][1] for a in (0, 1)] for s in range(3)])


def sample_behaviour_episodes(n_episodes: int, seed: int) -> EpisodeBatch:
    """Episodes of the fixed behaviour policy mu, laid end to end as ISPG's replay buffer returns them."""
    rng = np.random.default_rng(seed)
    state = np.zeros(n_episodes, dtype=int)
    alive = np.ones(n_episodes, dtype=bool)
    columns: dict[str, list[np.ndarray]] = {"s": [], "a": [], "r": [], "alive": []}
    for _ in range(3):
        action = (rng.random(n_episodes) < BEHAVIOUR_P1[state]).astype(int)
        for key, value in (("s", state), ("a", action), ("r", REWARD[state, action]), ("alive", alive.copy())):
            columns[key].append(value)
        alive &= NEXT_STATE[state, action] != -1
        state = np.maximum(NEXT_STATE[state, action], 0)
    present = np.stack(columns["alive"], axis=1)  # (N, 3): boolean indexing keeps episode-major order
    states, actions, rewards = (np.stack(columns[key], axis=1)[present] for key in ("s", "a", "r"))
    lengths = present.sum(1)
    starts = np.zeros(len(states), dtype=bool)
    starts[np.cumsum(lengths) - lengths] = True
    behaviour_log_prob = np.log(np.where(actions == 1, BEHAVIOUR_P1[states], 1 - BEHAVIOUR_P1[states]))
    return EpisodeBatch(
        observations=th.as_tensor(states),
        actions=th.as_tensor(actions),
        rewards=th.as_tensor(rewards, dtype=th.float32),
        episode_starts=th.as_tensor(starts),
        behaviour_log_probs=th.as_tensor(behaviour_log_prob, dtype=th.float32),
        values=th.zeros(len(states)),
        bootstrap_values=th.zeros(len(states)),
        episode_lengths=th.as_tensor(lengths),
        episode_truncated=th.zeros(n_episodes, dtype=th.bool),
        episode_env_indices=th.zeros(n_episodes, dtype=th.long),
    )


def score_table(model: ISPG) -> th.Tensor:
    """grad log pi(a|s) for every (s, a) pair, by autograd on the policy: ``(3, 2, n_parameters)``."""
    scores = th.zeros(3, 2, sum(p.numel() for p in model.policy.parameters()))
    for s, a in itertools.product(range(3), range(2)):
        model.policy.zero_grad()
        model.policy.get_distribution(th.tensor([s])).log_prob(th.tensor([a])).sum().backward()
        scores[s, a] = th.cat([p.grad.reshape(-1) for p in model.policy.parameters()])
    return scores


def per_episode_gradients(model: ISPG, batch: EpisodeBatch, scores: th.Tensor) -> th.Tensor:
    """g_i = sum_t grad log pi(a_{i,t}|s_{i,t}) psi_{i,t} for every episode, psi from ISPG's own code."""
    with th.no_grad():
        log_prob = model.policy.get_distribution(batch.observations).log_prob(batch.actions)
    psi, _ = model._importance_weighted_returns(log_prob, batch)
    step_gradients = psi.unsqueeze(1).float() * scores[batch.observations, batch.actions]
    episode_ids = th.cumsum(batch.episode_starts.long(), 0) - 1
    return th.zeros(batch.n_episodes, scores.shape[-1]).index_add_(0, episode_ids, step_gradients)


def split_batches(batch: EpisodeBatch, n_per_batch: int):
    """Consecutive batches of ``n_per_batch`` episodes."""
    bounds = th.cumsum(batch.episode_lengths, 0)
    for first in range(0, batch.n_episodes - n_per_batch + 1, n_per_batch):
        lo = 0 if first == 0 else int(bounds[first - 1])
        hi = int(bounds[first + n_per_batch - 1])
        episodes = slice(first, first + n_per_batch)
        yield EpisodeBatch(
            observations=batch.observations[lo:hi],
            actions=batch.actions[lo:hi],
            rewards=batch.rewards[lo:hi],
            episode_starts=batch.episode_starts[lo:hi],
            behaviour_log_probs=batch.behaviour_log_probs[lo:hi],
            values=batch.values[lo:hi],
            bootstrap_values=batch.bootstrap_values[lo:hi],
            episode_lengths=batch.episode_lengths[episodes],
            episode_truncated=batch.episode_truncated[episodes],
            episode_env_indices=batch.episode_env_indices[episodes],
        )


class FixedBatchBuffer:
    """Stands in for the replay buffer in ``ISPG.train``: every draw returns the same batch."""

    def __init__(self, batch: EpisodeBatch):
        self.batch = batch
        self.n_episodes = batch.n_episodes
        self.full = False

    def choose_episodes(self, n_episodes: int) -> np.ndarray:
        return np.arange(self.n_episodes)

    def get_episodes(self, chosen: np.ndarray, env=None) -> EpisodeBatch:
        return self.batch

    def sample_episodes(self, n_episodes: int, env=None) -> EpisodeBatch:
        return self.batch

    def describe_episode(self, chosen: np.ndarray, k: int) -> str:
        return f"fixed episode {k}"


def one_sgd_step_of_train(model: ISPG, batch: EpisodeBatch) -> th.Tensor:
    """Run ISPG's own ``train`` for one gradient step on ``batch`` with plain SGD of step 1: returns the step."""
    model.policy.optimizer = th.optim.SGD(model.policy.parameters(), lr=1.0)
    model.lr_schedule = lambda _: 1.0
    model.max_grad_norm = None
    model.replay_buffer = FixedBatchBuffer(batch)  # type: ignore[assignment]
    model.set_logger(configure(None, []))
    before = th.cat([p.detach().reshape(-1).clone() for p in model.policy.parameters()])
    model.train(gradient_steps=1, batch_size=batch.n_episodes)
    return th.cat([p.detach().reshape(-1) for p in model.policy.parameters()]) - before


@pytest.mark.parametrize("baseline", ["none", "mean", "loo"])
@pytest.mark.parametrize("importance_weights", ["per_decision", "prefix"])
def test_train_steps_along_the_mean_per_episode_estimate(baseline, importance_weights):
    # ISPG's own train(): the surrogate loss -(1/N) sum log pi * stopgrad(psi) has gradient -g, g the mean of the
    # per-episode estimates sum_t score_t psi_t, so one SGD step of size 1 moves the parameters by exactly g.
    model = chain_model(baseline=baseline, importance_weights=importance_weights)
    batch = sample_behaviour_episodes(64, seed=5)
    expected = per_episode_gradients(model, batch, score_table(model)).mean(0)
    step = one_sgd_step_of_train(model, batch)
    th.testing.assert_close(step, expected, rtol=1e-5, atol=1e-6)
    assert step.abs().max() > 1e-3  # the step is not trivially zero


def test_loo_baseline_leaves_each_episode_out():
    # b_i = mean of Q_t over the steps of the other episodes; "mean" = over all steps, episode i included.
    model = chain_model(baseline="loo")
    batch = sample_behaviour_episodes(5, seed=11)
    q = reward_to_go(batch.rewards.double(), batch.episode_starts, GAMMA)
    ids = th.cumsum(batch.episode_starts.long(), 0) - 1
    expected = th.stack([q[ids != i].mean() for i in range(5)])[ids]
    th.testing.assert_close(model._baseline(q, batch.episode_starts), expected)
    model.baseline = "mean"
    th.testing.assert_close(model._baseline(q, batch.episode_starts), q.mean().expand(len(q)))
    model.baseline = "loo"  # a single episode has no other episode to average: b = 0
    single = next(split_batches(batch, 1))
    q1 = reward_to_go(single.rewards.double(), single.episode_starts, GAMMA)
    assert th.equal(model._baseline(q1, single.episode_starts), th.zeros_like(q1))


def test_default_baseline_is_the_unbiased_loo():
    assert chain_model().baseline == "loo"


# The variants whose bias is measured (and printed; docs/ispg.md "Bias of the weight variants" holds the figures),
# with the number of episodes per batch: per-episode estimators (N=1) are averaged over independent episodes,
# batch-dependent ones (self-normalised weights, the batch baselines) over independent batches of N episodes.
# Every variant uses the same 64,000 episodes (4,000 batches of 16 for the N=16 rows).
BIAS_VARIANTS: dict[str, tuple[dict, int]] = {
    "per_decision": (dict(importance_weights="per_decision"), 1),
    "prefix": (dict(importance_weights="prefix"), 1),
    "one_step": (dict(importance_weights="one_step"), 1),
    "per_decision, clip_ratio=1.5": (dict(importance_weights="per_decision", clip_ratio=1.5), 1),
    "per_decision, clip_ratio=1": (dict(importance_weights="per_decision", clip_ratio=1.0), 1),
    "per_decision, self_normalize, N=16": (dict(importance_weights="per_decision", self_normalize=True), 16),
    "per_decision, self_normalize, N=1000": (dict(importance_weights="per_decision", self_normalize=True), 1000),
    "per_decision, baseline=mean, N=16": (dict(importance_weights="per_decision", baseline="mean"), 16),
    "per_decision, baseline=loo, N=16": (dict(importance_weights="per_decision", baseline="loo"), 16),
}
N_EPISODES = 64_000


@pytest.fixture(scope="module")
def bias_table() -> dict[str, dict[str, float]]:
    episodes = sample_behaviour_episodes(N_EPISODES, seed=7)
    table = {}
    for name, (kwargs, n_per_batch) in BIAS_VARIANTS.items():
        model = chain_model(**{"baseline": "none", **kwargs})
        true_gradient, scores = analytic_gradient(model), score_table(model)
        if n_per_batch == 1:
            samples = per_episode_gradients(model, episodes, scores)
        else:
            batches = split_batches(episodes, n_per_batch)
            samples = th.stack([per_episode_gradients(model, b, scores).mean(0) for b in batches])
        mean = samples.mean(0)
        standard_error = samples.std(0) / np.sqrt(samples.shape[0])
        table[name] = {
            "max_abs_z": ((mean - true_gradient) / standard_error).abs().max().item(),
            "relative_bias": ((mean - true_gradient).norm() / true_gradient.norm()).item(),
            "relative_standard_error": (standard_error.norm() / true_gradient.norm()).item(),
            "episodes": samples.shape[0] * n_per_batch,
        }
    print("\nBias of the ISPG gradient estimate on the 3-state chain MDP (behaviour mu(a=1|s) = 0.5, target pi != mu):")
    print("| variant | episodes | max abs z (8 coordinates) | norm(bias) / norm(grad) | norm(SE) / norm(grad) |")
    print("|---|---|---|---|---|")
    for name, row in table.items():
        print(
            f"| {name} | {row['episodes']:,} | {row['max_abs_z']:.1f} | {row['relative_bias']:.3f} "
            f"| {row['relative_standard_error']:.3f} |"
        )
    return table


def test_analytic_gradient_is_the_gradient_of_the_expected_return_when_undiscounted():
    # Sanity check of the reference: with gamma = 1, E_pi[sum_t score_t G_t] = grad J, J = sum_tau P(tau) R(tau).
    model = chain_model()
    expected_estimator = analytic_gradient(model, gamma=1.0)
    objective = th.zeros(())
    for traj in enumerate_trajectories():
        states, actions = th.tensor([s for s, _, _ in traj]), th.tensor([a for _, a, _ in traj])
        objective = objective + th.exp(model.policy.get_distribution(states).log_prob(actions).sum()) * sum(
            r for *_, r in traj
        )
    model.policy.zero_grad()
    objective.backward()
    grad_j = th.cat([p.grad.reshape(-1) for p in model.policy.parameters()])
    th.testing.assert_close(expected_estimator, grad_j)


def test_per_decision_gradient_is_unbiased(bias_table):
    # 8 coordinates, each within 4 standard errors (a false alarm has probability < 1e-3).
    assert bias_table["per_decision"]["max_abs_z"] < 4.0


def test_prefix_weights_are_measurably_biased(bias_table):
    # The textbook prefix form keeps mu's future in the return: on this MDP its bias is many standard errors wide, so
    # the exact default cannot silently regress into it.
    assert bias_table["prefix"]["max_abs_z"] > 10.0
    assert bias_table["prefix"]["relative_bias"] > 5 * bias_table["prefix"]["relative_standard_error"]


def test_truncated_and_one_step_weights_are_biased(bias_table):
    # Truncating the ratios at 1 and dropping the earlier ratios both change the expectation here.
    assert bias_table["one_step"]["max_abs_z"] > 5.0
    assert bias_table["per_decision, clip_ratio=1"]["max_abs_z"] > 5.0


def test_self_normalized_weights_are_consistent(bias_table):
    # Biased for small batches (N = 16: at least 5 standard errors; measured 10), but the bias vanishes as N grows:
    # with N = 1000 it is within 4 standard errors. (Normalising by the mean over the episodes still running at t
    # only, instead of over all N, is inconsistent here: relative bias 0.40 whatever N.)
    assert bias_table["per_decision, self_normalize, N=16"]["max_abs_z"] > 5.0
    assert (
        bias_table["per_decision, self_normalize, N=16"]["relative_bias"]
        > 3 * (bias_table["per_decision, self_normalize, N=16"]["relative_standard_error"])
    )
    assert bias_table["per_decision, self_normalize, N=1000"]["max_abs_z"] < 4.0


def test_clipped_ratios_are_biased_even_at_1_5(bias_table):
    # c-bar = 1.5 bites rarely on this MDP (ratios are at most 1.6) but still shifts the mean by many SEs.
    row = bias_table["per_decision, clip_ratio=1.5"]
    assert row["max_abs_z"] > 5.0 and row["relative_bias"] > 3 * row["relative_standard_error"]


def test_mean_baseline_is_biased_and_loo_is_not(bias_table):
    # The batch mean includes each episode's own return (biased by O(1/N): measured 4% of the gradient at N = 16,
    # many SEs with 4,000 batches); the leave-one-out mean does not depend on the episode it multiplies, so its
    # estimate is unbiased: all 8 coordinates within 4 SEs (a false alarm has probability < 1e-3).
    mean, loo = bias_table["per_decision, baseline=mean, N=16"], bias_table["per_decision, baseline=loo, N=16"]
    assert mean["max_abs_z"] > 5.0 and mean["relative_bias"] > 3 * mean["relative_standard_error"]
    assert loo["max_abs_z"] < 4.0
    # and it still does a baseline's job: its standard error is below the no-baseline estimate's on the same
    # 64,000 episodes (measured 0.006 against 0.010; each SE is itself known to about 1%)
    assert loo["relative_standard_error"] < 0.8 * bias_table["per_decision"]["relative_standard_error"]


# ---------------------------------------------------------------------------------------------------------------------
# The episode replay buffer
# ---------------------------------------------------------------------------------------------------------------------


class LabelledEpisodes(gym.Env):
    """
    Observation = (env id, episode number, step in episode, episode length): every stored step says where it
    belongs. Episode lengths are drawn from the env's own RNG (1 to 9 steps).
    """

    action_space = spaces.Discrete(2)
    observation_space = spaces.Box(0.0, 1e6, shape=(4,), dtype=np.float32)

    def __init__(self, env_id: int):
        self.env_id = env_id
        self.episode = -1

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.episode += 1
        self.t = 0
        self.length = int(self.np_random.integers(1, 10))
        return self._obs(), {}

    def _obs(self):
        return np.array([self.env_id, self.episode, self.t, self.length], dtype=np.float32)

    def step(self, action):
        self.t += 1
        return self._obs(), float(action), self.t >= self.length, False, {}


def labelled_model(n_envs: int = 3, buffer_size: int = 120) -> ISPG:
    env = DummyVecEnv([lambda i=i: LabelledEpisodes(i) for i in range(n_envs)])
    env.seed(0)
    return ISPG("MlpPolicy", env, buffer_size=buffer_size, batch_size=8, train_freq=(8, "step"), gradient_steps=1, seed=0)


def check_whole_episodes(batch: EpisodeBatch) -> None:
    obs = batch.observations.numpy()
    bounds = np.concatenate([[0], np.cumsum(batch.episode_lengths.numpy())])
    assert np.array_equal(np.flatnonzero(batch.episode_starts.numpy()), bounds[:-1])
    for lo, hi in itertools.pairwise(bounds):
        episode = obs[lo:hi]
        assert len(np.unique(episode[:, 0])) == 1, "an episode mixes envs"
        assert len(np.unique(episode[:, 1])) == 1, "an episode crosses an episode boundary"
        assert np.array_equal(episode[:, 2], np.arange(hi - lo)), "an episode does not start at its first step"
        assert hi - lo == episode[0, 3], "an incomplete episode was sampled"


def test_buffer_samples_whole_episodes_of_one_env_after_wrapping():
    model = labelled_model()
    model.learn(400)
    model.learn(200, reset_num_timesteps=True)  # resets the envs under running episodes: those are abandoned
    buffer = model.replay_buffer
    assert buffer.full and buffer.episode_index.rows_written > buffer.buffer_size  # the ring wrapped
    set_random_seed(0)
    for _ in range(50):
        check_whole_episodes(buffer.sample_episodes(8))
    # Every held complete episode is sampleable, and nothing else.
    envs, first_rows, _ = buffer.episode_index.episodes()
    assert np.all(first_rows >= buffer.episode_index.rows_written - buffer.buffer_size)
    batch = buffer.sample_episodes(10_000)
    assert batch.n_episodes == len(envs)
    check_whole_episodes(batch)


def test_episode_index_drops_abandoned_and_overwritten_episodes():
    buffer = EpisodeReplayBuffer(4, spaces.Box(-1, 1, (1,)), spaces.Discrete(2), device="cpu", n_envs=1)

    def add(start: bool, done: bool) -> None:
        buffer.add(
            np.zeros((1, 1)),
            np.zeros((1, 1)),
            np.zeros(1),
            np.zeros(1),
            np.array([done]),
            [{}],
            np.zeros(1),
            np.array([start]),
        )

    add(True, False)
    add(True, True)  # the first episode was abandoned (a new start before its end)
    assert buffer.n_episodes == 1
    add(True, False)
    add(False, False)
    add(False, False)
    assert buffer.n_episodes == 1
    add(False, True)  # 4 steps: complete, still held (ring of 4)
    assert buffer.n_episodes == 1 and buffer.episode_index.episodes()[2].tolist() == [4]
    add(True, False)  # overwrites the first step of the 4-step episode
    assert buffer.n_episodes == 0
    add(False, False)
    add(False, False)
    add(False, False)
    add(False, True)  # 5 steps do not fit in a ring of 4: never sampleable
    assert buffer.n_episodes == 0


def test_buffer_needs_behaviour_log_probs():
    buffer = EpisodeReplayBuffer(4, spaces.Box(-1, 1, (1,)), spaces.Discrete(2), device="cpu")
    with pytest.raises(ValueError, match="behaviour_log_probs"):
        buffer.add(np.zeros((1, 1)), np.zeros((1, 1)), np.zeros(1), np.zeros(1), np.array([False]), [{}])


def test_stored_log_probs_are_the_acting_policy_s():
    # Before any update the data are on-policy: recomputed log-probabilities equal the stored ones, weights are 1.
    env = make_vec_env(lambda: ENV_FACTORIES["box"](0), n_envs=2, seed=0)
    model = ISPG("MlpPolicy", env, train_freq=(64, "step"), gradient_steps=0, seed=0, device="cpu")
    model.learn(256)
    batch = model.replay_buffer.sample_episodes(8)
    with th.no_grad():
        log_prob = model.policy.get_distribution(batch.observations).log_prob(batch.actions)
    th.testing.assert_close(log_prob, batch.behaviour_log_probs, rtol=0, atol=1e-5)
    assert not th.equal(batch.actions, batch.actions.clamp(-1, 1)), "stored Box actions should be the unclipped samples"
    _, diagnostics = model._importance_weighted_returns(log_prob, batch)
    assert diagnostics["is_ess"] == pytest.approx(1.0, abs=1e-6)
    assert diagnostics["is_weight_max"] == pytest.approx(1.0, abs=1e-4)


@pytest.mark.parametrize("env_name", ["discrete", "dict_obs"])
def test_save_and_load_replay_buffer_restores_behaviour_log_probs(env_name, tmp_path):
    env = make_vec_env(lambda: ENV_FACTORIES[env_name](0), n_envs=2, seed=0)
    policy = "MultiInputPolicy" if env_name == "dict_obs" else "MlpPolicy"
    model = ISPG(policy, env, train_freq=(16, "step"), batch_size=4, seed=0, device="cpu")
    model.learn(300)
    expected_class = DictEpisodeReplayBuffer if env_name == "dict_obs" else EpisodeReplayBuffer
    assert type(model.replay_buffer) is expected_class
    model.save_replay_buffer(tmp_path / "buffer.pkl")

    other = ISPG(policy, env, train_freq=(16, "step"), batch_size=4, seed=1, device="cpu")
    other.load_replay_buffer(tmp_path / "buffer.pkl")
    assert isinstance(other.replay_buffer, expected_class)
    np.testing.assert_array_equal(other.replay_buffer.behaviour_log_probs, model.replay_buffer.behaviour_log_probs)
    np.testing.assert_array_equal(other.replay_buffer.episode_starts, model.replay_buffer.episode_starts)
    assert np.any(model.replay_buffer.behaviour_log_probs != 0)
    set_random_seed(3)
    a = model.replay_buffer.sample_episodes(4)
    set_random_seed(3)
    b = other.replay_buffer.sample_episodes(4)
    th.testing.assert_close(a.behaviour_log_probs, b.behaviour_log_probs, rtol=0, atol=0)
    th.testing.assert_close(a.episode_starts, b.episode_starts)
    other.learn(100, reset_num_timesteps=False)  # and training continues from the loaded buffer
    assert other._n_updates > 0


def test_loading_a_plain_replay_buffer_is_refused(tmp_path):
    from stable_baselines3 import SAC

    sac = SAC("MlpPolicy", make_vec_env(lambda: ENV_FACTORIES["box"](0), n_envs=1), buffer_size=100, device="cpu")
    sac.save_replay_buffer(tmp_path / "sac.pkl")
    model = ISPG("MlpPolicy", make_vec_env(lambda: ENV_FACTORIES["box"](0), n_envs=1), device="cpu")
    with pytest.raises(TypeError, match="EpisodeReplayBuffer"):
        model.load_replay_buffer(tmp_path / "sac.pkl")


def test_episode_train_freq_with_several_envs_is_refused():
    env = make_vec_env(lambda: ENV_FACTORIES["discrete"](0), n_envs=2)
    with pytest.raises(ValueError, match="train_freq"):
        ISPG("MlpPolicy", env, train_freq=(4, "episode"))


# ---------------------------------------------------------------------------------------------------------------------
# Training trigger: the defaults work with any number of envs
# ---------------------------------------------------------------------------------------------------------------------


class RecordDones(BaseCallback):
    """Keeps the ``dones`` of every vectorised step."""

    def __init__(self) -> None:
        super().__init__()
        self.dones: list[np.ndarray] = []

    def _on_step(self) -> bool:
        self.dones.append(np.asarray(self.locals["dones"], dtype=bool).copy())
        return True


def test_defaults_train_with_eight_envs():
    # make_vec_env(..., n_envs=8) is how most users (and rl-zoo3 files) build envs: the defaults must accept it.
    model = ISPG("MlpPolicy", make_vec_env("CartPole-v1", n_envs=8, seed=0), seed=0, device="cpu")
    assert model.train_freq.unit == TrainFrequencyUnit.EPISODE and model.count_episodes_across_envs
    model.learn(400)
    assert model._n_updates > 0
    assert model.replay_buffer.n_episodes >= 4


@pytest.mark.parametrize(("n_envs", "every"), [(8, 4), (3, 5), (1, 4)])
def test_default_trigger_counts_complete_episodes_across_envs(n_envs, every):
    # Each update follows the first vectorised step at which at least `every` episodes (in any env) have ended
    # since the previous update; with random episode lengths several envs sometimes end at the same step.
    env = DummyVecEnv([lambda i=i: LabelledEpisodes(i) for i in range(n_envs)])
    env.seed(0)
    model = ISPG("MlpPolicy", env, train_every_episodes=every, gradient_steps=1, batch_size=4, seed=0, device="cpu")
    recorder = RecordDones()
    train_at: list[int] = []  # number of env steps recorded when each update starts
    original_train = model.train

    def train(gradient_steps: int, batch_size: int = 16) -> None:
        train_at.append(len(recorder.dones))
        original_train(gradient_steps, batch_size)

    model.train = train
    model.learn(600, callback=recorder)
    assert len(train_at) >= 10
    ended = np.array([d.sum() for d in recorder.dones])
    for lo, hi in itertools.pairwise([0, *train_at]):
        assert ended[lo:hi].sum() >= every, "an update came before `train_every_episodes` episodes ended"
        assert ended[lo : hi - 1].sum() < every, "the update came later than the step that completed the count"
    assert model._n_updates == len(train_at)


def test_default_trigger_with_one_env_is_sb3_episode_unit():
    # With one env, train_freq=None is SB3's (train_every_episodes, "episode"): seeded runs are identical.
    def trained(**kwargs) -> np.ndarray:
        model = ISPG("MlpPolicy", make_vec_env("CartPole-v1", n_envs=1, seed=0), seed=0, device="cpu", **kwargs)
        model.learn(600)
        return flat_parameters(model)

    default, every_two = trained(), trained(train_every_episodes=2)
    np.testing.assert_array_equal(default, trained(train_freq=(4, "episode")))
    np.testing.assert_array_equal(every_two, trained(train_freq=(2, "episode")))
    assert not np.array_equal(default, every_two)  # the comparison can tell runs apart


def test_explicit_step_train_freq_keeps_sb3_meaning_with_several_envs():
    model = ISPG("MlpPolicy", make_vec_env("CartPole-v1", n_envs=4, seed=0), train_freq=(25, "step"), seed=0, device="cpu")
    model.learn(1_000)  # 4 envs x 25 steps = 100 env steps per rollout
    assert model._n_updates == 4 * (1_000 // 100)


def test_train_every_episodes_is_validated():
    with pytest.raises(ValueError, match="train_every_episodes"):
        ISPG("MlpPolicy", "CartPole-v1", train_every_episodes=0)


# ---------------------------------------------------------------------------------------------------------------------
# Non-finite values: named episode, no step taken
# ---------------------------------------------------------------------------------------------------------------------


def episode_slice(batch: EpisodeBatch, k: int) -> slice:
    bounds = [0, *th.cumsum(batch.episode_lengths, 0).tolist()]
    return slice(bounds[k], bounds[k + 1])


@pytest.mark.parametrize("baseline", ["none", "mean", "loo"])
@pytest.mark.parametrize("importance_weights", ["per_decision", "prefix"])
def test_non_finite_behaviour_log_prob_affects_only_its_episode(baseline, importance_weights):
    # ISPG's own psi: a -inf log mu at one step of episode 5 makes that episode's psi non-finite, and every other
    # episode's psi exactly what it was (the baselines use the stored rewards only; the weights restart per episode).
    model = chain_model(baseline=baseline, importance_weights=importance_weights)
    batch = sample_behaviour_episodes(32, seed=12)
    with th.no_grad():
        log_prob = model.policy.get_distribution(batch.observations).log_prob(batch.actions)
    clean, _ = model._importance_weighted_returns(log_prob, batch)
    behaviour = batch.behaviour_log_probs.clone()
    bad = episode_slice(batch, 5)
    behaviour[bad.start] = -float("inf")
    psi, _ = model._importance_weighted_returns(log_prob, batch._replace(behaviour_log_probs=behaviour))
    others = th.ones(batch.n_steps, dtype=th.bool)
    others[bad] = False
    assert th.isfinite(clean).all() and not th.isfinite(psi[bad]).all()
    assert th.equal(psi[others], clean[others])


def buffer_model(n_envs: int = 3) -> ISPG:
    """An ISPG whose buffer holds complete LabelledEpisodes episodes and whose optimiser has taken steps."""
    env = DummyVecEnv([lambda i=i: LabelledEpisodes(i) for i in range(n_envs)])
    env.seed(0)
    model = ISPG("MlpPolicy", env, buffer_size=300, batch_size=4, train_freq=(16, "step"), gradient_steps=1, seed=0)
    model.learn(200)
    assert model._n_updates > 0
    return model


def snapshot(model: ISPG) -> tuple[list[th.Tensor], dict]:
    import copy

    return [p.detach().clone() for p in model.policy.parameters()], copy.deepcopy(model.policy.optimizer.state_dict())


def assert_unchanged(model: ISPG, before: tuple[list[th.Tensor], dict]) -> None:
    params, optimizer_state = before
    for old, new in zip(params, model.policy.parameters(), strict=True):
        assert th.equal(old, new.detach())
    state = model.policy.optimizer.state_dict()["state"]
    assert state.keys() == optimizer_state["state"].keys()
    for key, value in state.items():
        for name, tensor in value.items():
            assert th.equal(th.as_tensor(tensor), th.as_tensor(optimizer_state["state"][key][name])), name


def corrupted_episode(model: ISPG, step: int, value: float) -> tuple[int, str]:
    """Write ``value`` into the stored log mu of step ``step`` of the longest held episode: its index, its place."""
    buffer = model.replay_buffer
    envs, first_rows, lengths = buffer.episode_index.episodes()
    index = int(np.argmax(lengths))
    assert lengths[index] > step
    buffer.behaviour_log_probs[(first_rows[index] + step) % buffer.buffer_size, envs[index]] = value
    first, last = first_rows[index] % buffer.buffer_size, (first_rows[index] + lengths[index] - 1) % buffer.buffer_size
    return index, f"env {envs[index]}, buffer rows {first}-{last}, {lengths[index]} steps"


@pytest.mark.parametrize(
    ("value", "quantity"),
    [(-float("inf"), "behaviour log-probability log mu"), (-120.0, "importance-weighted return psi")],
)
def test_non_finite_values_name_the_episode_and_leave_parameters(value, quantity):
    # -inf: the stored log mu itself. -120: finite, but its weight e^120 overflows float32, the loss's dtype.
    # Either way: the error names the update, the quantity, the episode's position in the sampled batch and where
    # it is stored, and neither the parameters nor the optimiser state move.
    model = buffer_model()
    index, place = corrupted_episode(model, step=1, value=value)
    before = snapshot(model)
    update = model._n_updates + 1
    held = model.replay_buffer.n_episodes
    set_random_seed(5)
    with pytest.raises(FloatingPointError) as error:
        model.train(gradient_steps=1, batch_size=10_000)  # every held episode, in the order of this draw:
    set_random_seed(5)
    position = int(np.flatnonzero(np.random.choice(held, size=held, replace=False) == index)[0])  # noqa: NPY002
    message = str(error.value)
    assert message.startswith(f"ISPG: non-finite {quantity}")
    assert f"at update {update}" in message
    assert f"in 1 of the batch's {held} episodes" in message
    assert f"episode {position} of the sampled batch ({place})" in message
    assert_unchanged(model, before)
    assert model._n_updates == update - 1


def test_non_finite_gradient_is_caught_before_clipping_and_the_step():
    # A finite loss whose gradient is NaN (injected by a hook): clip_grad_norm_ would spread it over every
    # parameter and Adam would write it into them. The check runs before both and names the parameter.
    model = buffer_model()
    before = snapshot(model)
    handle = model.policy.action_net.weight.register_hook(lambda grad: grad * float("nan"))
    try:
        with pytest.raises(FloatingPointError, match=r"ISPG: non-finite gradient of parameter 'action_net.weight'"):
            model.train(gradient_steps=1, batch_size=4)
    finally:
        handle.remove()
    assert_unchanged(model, before)
    model.train(gradient_steps=1, batch_size=4)  # and training goes on once the cause is gone
    assert all(th.isfinite(p).all() for p in model.policy.parameters())


# ---------------------------------------------------------------------------------------------------------------------
# Memory and policy arguments
# ---------------------------------------------------------------------------------------------------------------------


def array_bytes(buffer) -> int:
    """Bytes of every numpy array the buffer holds (dict observations included)."""
    total = 0
    for value in vars(buffer).values():
        if isinstance(value, np.ndarray):
            total += value.nbytes
        elif isinstance(value, dict):
            total += sum(v.nbytes for v in value.values() if isinstance(v, np.ndarray))
    return total


def test_buffer_stores_no_next_observations():
    # CartPole: observation 4 float32 (16 B) + Discrete action as int64 (8 B) + reward, done, timeout (float32,
    # 12 B) + log mu (float32, 4 B) + episode start (bool, 1 B) = 41 bytes per transition (SB3's ReplayBuffer: 52).
    env = make_vec_env("CartPole-v1", n_envs=2, seed=0)
    model = ISPG("MlpPolicy", env, buffer_size=1_000, train_freq=(16, "step"), device="cpu")
    buffer = model.replay_buffer
    assert not hasattr(buffer, "next_observations")
    assert array_bytes(buffer) == 1_000 * 41
    model.learn(300)  # storing works without them
    assert buffer.n_episodes > 0 and array_bytes(buffer) == 1_000 * 41
    with pytest.raises(NotImplementedError, match="sample_episodes"):
        buffer.sample(4)


def test_dict_buffer_stores_no_next_observations():
    env = make_vec_env(lambda: ENV_FACTORIES["dict_obs"](0), n_envs=2, seed=0)
    model = ISPG("MultiInputPolicy", env, buffer_size=1_000, train_freq=(16, "step"), gradient_steps=0, device="cpu")
    buffer = model.replay_buffer
    assert isinstance(buffer, DictEpisodeReplayBuffer) and not hasattr(buffer, "next_observations")
    space = env.observation_space
    obs_bytes = sum(int(np.prod(sub.shape)) * sub.dtype.itemsize for sub in space.spaces.values())
    action_bytes = buffer.actions.itemsize * buffer.action_dim
    assert array_bytes(buffer) == 1_000 * (obs_bytes + action_bytes + 17)
    model.learn(400)  # storing only (gradient_steps=0)
    batch = buffer.sample_episodes(2)
    assert batch.observations["img"].shape[0] == batch.n_steps


def test_vf_key_in_net_arch_is_refused():
    # ISPG has no critic: a `vf` entry used to be ignored silently.
    with pytest.raises(ValueError, match="vf"):
        ISPG("MlpPolicy", "CartPole-v1", policy_kwargs=dict(net_arch=dict(pi=[16], vf=[16])))
    ISPG("MlpPolicy", "CartPole-v1", policy_kwargs=dict(net_arch=dict(pi=[16])))  # the actor's own key is fine


def test_ispg_learns_identity_env():
    # With its defaults (heavy replay: every episode stays in the buffer) ISPG learns SB3's identity task (reward 1
    # for repeating the observation) in 4,000 steps; chance is 0.25.
    env = make_vec_env(lambda: ENV_FACTORIES["discrete"](0), n_envs=1, seed=0)
    model = ISPG("MlpPolicy", env, seed=0, device="cpu")
    model.learn(4_000)
    obs = env.reset()
    correct = 0
    for _ in range(200):
        action, _ = model.predict(obs, deterministic=True)
        correct += int(action[0] == obs[0])
        obs, *_ = env.step(action)
    assert correct / 200 > 0.9  # chance is 0.25


# ---------------------------------------------------------------------------------------------------------------------
# Learning: CartPole-v1, the final policy after the budget; and the speed against REINFORCE
# ---------------------------------------------------------------------------------------------------------------------


# The protocol of every learning test (tests/learning.py): the policy that learn() returns after the whole budget,
# deterministic 10-episode evaluation on an env seeded 10_000 + seed, never the best evaluation on the way. Budgets:
# docs/ispg.md. The bars below were set on runs of a final-policy script retired in 0.2.0 (in the git history before
# commit 78297a0); today's figures of the defaults: the final-policies preset, docs/benchmark.md.
CARTPOLE_CI_BUDGET = 50_000


@pytest.mark.parametrize("seed", [0, 1])
def test_ispg_defaults_end_solved_on_cartpole(seed: int):
    # The CI-sized run (about 35 CPU s per seed). The step size decays to 0 over the budget, so 50k steps is a
    # shorter schedule, not the first quarter of the 200k one: measured 500.0 / 454.9 / 483.3 on seeds 0 / 1 / 2
    # (with the retired script above). The bar here is 425, below the measured
    # minimum and far above a failed run (a random policy scores about 20); the 475 bar is the slow test's, at 200k.
    model = ISPG("MlpPolicy", make_vec_env("CartPole-v1", n_envs=1, seed=seed), seed=seed, device="cpu")
    final = final_return(model, "CartPole-v1", CARTPOLE_CI_BUDGET, seed)
    print(f"\nISPG seed {seed}: final deterministic eval {final:.1f} after {model.num_timesteps} steps")
    assert final >= 425


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_ispg_defaults_end_solved_on_cartpole_after_200k_steps(seed: int):
    # The bar: measured 500.0 on each of seeds 0-4 (with the retired script above).
    model = ISPG("MlpPolicy", make_vec_env("CartPole-v1", n_envs=1, seed=seed), seed=seed, device="cpu")
    final = final_return(model, "CartPole-v1", 200_000, seed)
    print(f"\nISPG seed {seed}: final deterministic eval {final:.1f} after {model.num_timesteps} steps")
    assert final >= 475


@pytest.mark.slow
def test_ispg_reaches_475_on_cartpole_in_fewer_steps_than_reinforce():
    # Sample efficiency, not the end result (the tests above judge the final policy): tests/learning.py's
    # steps_to_threshold, defaults of both algorithms (the same actor MLP), one env, deterministic evaluation on
    # 10 episodes every 2,500 env steps, the first mean >= 475 counts.
    max_steps, eval_freq = 200_000, 2_500
    runs = {
        name: [steps_to_threshold(algo, seed, max_steps=max_steps, eval_freq=eval_freq)["steps"] for seed in (0, 1, 2)]
        for name, algo in (("ispg", ISPG), ("reinforce", REINFORCE))
    }
    print(f"\nenv steps to a deterministic mean >= 475 on CartPole-v1 (seeds 0, 1, 2): {runs}")
    assert all(steps is not None and steps <= max_steps for steps in runs["ispg"]), runs
    # A REINFORCE run that never gets there counts as one evaluation past the budget.
    reinforce = [max_steps + eval_freq if steps is None else steps for steps in runs["reinforce"]]
    assert np.median(runs["ispg"]) < np.median(reinforce), runs
    assert sum(runs["ispg"]) < sum(reinforce), runs


# ---------------------------------------------------------------------------------------------------------------------
# Episodes longer than an env's share of the buffer: never sampled, warned once
# ---------------------------------------------------------------------------------------------------------------------


def test_episode_longer_than_the_buffer_share_warns_once_naming_env_length_share_and_fix():
    """Pendulum-v1 episodes last 200 steps; 300 rows // 2 envs = 150 per env: none can be held, one warning says so."""
    model = ISPG("MlpPolicy", make_vec_env("Pendulum-v1", n_envs=2, seed=0), buffer_size=300, seed=0, device="cpu")
    with pytest.warns(UserWarning, match=r"share of the replay buffer") as record:
        model.learn(1000)  # 5 episodes per env end, each longer than the share
    messages = [str(w.message) for w in record if "share of the replay buffer" in str(w.message)]
    assert len(messages) == 1, messages
    assert "Pendulum-v1 (env 0) lasted 200 steps" in messages[0]
    assert "(150 = buffer_size 300 // 2 envs)" in messages[0]
    assert "Increase `buffer_size` or use fewer envs" in messages[0]
    assert model.replay_buffer.n_episodes == 0  # what the warning is about: nothing to sample


def test_episodes_that_fit_the_buffer_share_do_not_warn(recwarn):
    model = ISPG("MlpPolicy", make_vec_env("Pendulum-v1", n_envs=2, seed=0), buffer_size=400, seed=0, device="cpu")
    model.learn(1000)
    assert not [w for w in recwarn if "share of the replay buffer" in str(w.message)]
    assert model.replay_buffer.n_episodes == 2  # 200-step episodes fill the 200 rows of each env exactly
