"""
REINFORCE: the estimator's statistical properties through the algorithm's own gradient path, and the
complete-episode collection.

Statistical tests draw M independent gradient estimates at fixed parameters (the optimiser step is replaced by a
recorder), with fixed seeds; tolerances are multiples of the standard error of the mean (4 sigma) or of the
sampling error of a variance ratio, derived from M.
"""

from __future__ import annotations

import itertools
import math

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from gymnasium import spaces
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.logger import configure
from stable_baselines3.common.vec_env import DummyVecEnv

from sb3_pg_ext import REINFORCE
from sb3_pg_ext.common.buffers import EpisodeRolloutBuffer
from sb3_pg_ext.common.checks import assert_finite, assert_finite_gradients, assert_finite_parameters
from tests.pg_envs import GaussianBandit, IndependentStepsEnv, RandomLengthEnv

LINEAR_SOFTMAX = {"net_arch": {"pi": [], "vf": []}}


def record_gradients(model: REINFORCE, n_estimates: int, train_value: bool = False) -> np.ndarray:
    """
    Run ``n_estimates`` rollouts + ``train()`` calls and record the gradient of the loss w.r.t. the policy head
    (``action_net``) at every update, without moving the policy. With ``train_value`` the critic is still updated
    (so a value baseline is learned online from earlier batches only, which keeps it unbiased).
    """
    head = list(model.policy.action_net.parameters())
    others = [p for p in model.policy.parameters() if all(p is not h for h in head)]
    optimizer = model.policy.optimizer
    real_step = optimizer.step
    records: list[th.Tensor] = []

    def recording_step(*args, **kwargs):
        records.append(th.cat([p.grad.reshape(-1).clone() for p in head]))
        if train_value:
            for p in head:
                p.grad = None
            real_step(*args, **kwargs)
        for p in others:
            p.grad = None if not train_value else p.grad

    optimizer.step = recording_step  # type: ignore[method-assign]
    while len(records) < n_estimates:
        model.learn(model.n_episodes * 8, reset_num_timesteps=False)
    optimizer.step = real_step  # type: ignore[method-assign]
    # The recorded quantity is grad(loss) = -g.
    return -th.stack(records[:n_estimates]).double().numpy()


def bandit_model(
    baseline: str,
    n_episodes: int,
    seed: int = 0,
    means: tuple[float, ...] = (10.0, 11.0, 12.5),
    noise_std: float = 1.0,
    **kwargs,
) -> REINFORCE:
    env_kwargs = {"means": means, "noise_std": noise_std}
    env = make_vec_env(GaussianBandit, n_envs=n_episodes, seed=seed, vec_env_cls=DummyVecEnv, env_kwargs=env_kwargs)
    model = REINFORCE(
        "MlpPolicy",
        env,
        n_episodes=n_episodes,
        baseline=baseline,
        reward_to_go=baseline != "optimal",
        policy_kwargs=LINEAR_SOFTMAX,
        seed=seed,
        device="cpu",
        **kwargs,
    )
    with th.no_grad():  # a non-uniform policy, so that every coordinate of the gradient is non-zero
        model.policy.action_net.weight.copy_(th.tensor([[0.5], [-0.3], [0.2]]))
        model.policy.action_net.bias.copy_(th.tensor([0.1, 0.4, -0.2]))
    return model


def bandit_gradient(model: REINFORCE) -> np.ndarray:
    """Exact grad J for the bandit, by autograd on J = sum_a pi(a) means[a]."""
    head = model.policy.action_net
    means = th.as_tensor(model.get_env().envs[0].unwrapped.means)  # type: ignore[attr-defined]
    params = list(head.parameters())
    probs = th.softmax(head(th.ones(1, 1)), dim=-1).squeeze(0).double()
    grads = th.autograd.grad((probs * means).sum(), params)
    return th.cat([g.reshape(-1) for g in grads]).double().numpy()


def one_update(model: REINFORCE) -> None:
    """Exactly one rollout and one ``train()`` (``learn(n)`` stops starting episodes after n steps)."""
    _, callback = model._setup_learn(10**9, reset_num_timesteps=False)
    callback.on_training_start(locals(), globals())
    assert model.collect_rollouts(model.env, callback, model.rollout_buffer)  # type: ignore[arg-type]
    model.train()


def train_on_episodes(model: REINFORCE, episodes: list[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> np.ndarray:
    """
    Fill the rollout buffer (one env) with the given complete episodes, each ``(observations, actions, rewards)``,
    run REINFORCE's own ``train()`` once and return its gradient estimate g = -grad(loss) w.r.t. the policy head
    (``action_net``). The optimiser step is replaced by a recorder, so the parameters do not move.
    """
    buffer = EpisodeRolloutBuffer(model.observation_space, model.action_space, device=model.device, n_envs=1)
    model.rollout_buffer = buffer
    for slot, (observations, actions, rewards) in enumerate(episodes):
        for t in range(len(rewards)):
            buffer.add(
                observations[t][None], np.array([actions[t]]), np.array([rewards[t]]), np.zeros(1), None, np.array([slot])
            )
        buffer.end_episode(slot, 0, truncated=False)
    if model._custom_logger is False:
        model.set_logger(configure(None, []))
    head = list(model.policy.action_net.parameters())
    records: list[th.Tensor] = []
    optimizer = model.policy.optimizer
    optimizer.step = lambda *args, **kwargs: records.append(th.cat([p.grad.reshape(-1).clone() for p in head]))  # type: ignore[method-assign]
    try:
        model.train()
    finally:
        del optimizer.step  # back to the class's method
    assert len(records) == 1
    return -records[0].double().numpy()


def assert_mean_close(estimates: np.ndarray, expected: np.ndarray, n_sigma: float = 4.0) -> None:
    stderr = estimates.std(axis=0, ddof=1) / math.sqrt(len(estimates))
    error = np.abs(estimates.mean(axis=0) - expected)
    assert np.all(error <= n_sigma * stderr + 1e-9), f"mean {estimates.mean(0)} vs expected {expected} (stderr {stderr})"


N_ESTIMATES = 1500


#: Arm means whose average return is near 0 (J = -0.08 under the test policy): without a baseline, the estimator's
#: variance then leaves the test the power to see a 10% bias.
CENTRED_MEANS = (-1.0, 0.0, 1.5)


@pytest.mark.parametrize("baseline", ["none", "loo", "optimal", "value"])
def test_gradient_is_unbiased_for_every_unbiased_baseline(baseline: str):
    """
    E[g] = grad J within 4 standard errors of the mean of M = 1500 estimates, N = 8; the test checks its own power:
    on the gradient's largest coordinate, 10% of it exceeds 6 standard errors, so a 10% bias (a shrink factor 0.9,
    say) would fail with probability above 97%.
    """
    model = bandit_model(baseline, n_episodes=8, learning_rate=0.05, means=CENTRED_MEANS)
    estimates = record_gradients(model, N_ESTIMATES, train_value=baseline == "value")
    exact = bandit_gradient(model)
    assert_mean_close(estimates, exact)
    stderr = estimates.std(axis=0, ddof=1) / math.sqrt(len(estimates))
    largest = int(np.argmax(np.abs(exact)))
    assert 0.1 * abs(exact[largest]) >= 6 * stderr[largest], f"10% of {exact[largest]:.3f} vs stderr {stderr[largest]:.4f}"


def test_mean_baseline_shrinks_the_gradient_by_n_minus_one_over_n():
    n = 2
    model = bandit_model("mean", n_episodes=n)
    estimates = record_gradients(model, N_ESTIMATES)
    exact = bandit_gradient(model)
    assert_mean_close(estimates, (n - 1) / n * exact)
    # ... and that bias is measurable: the mean is not the exact gradient.
    stderr = estimates.std(axis=0, ddof=1) / math.sqrt(N_ESTIMATES)
    assert np.max(np.abs(estimates.mean(0) - exact) / stderr) > 4


def total_variance(estimates: np.ndarray) -> float:
    return float(estimates.var(axis=0, ddof=1).sum())


def variance_ratio_margin(m: int) -> float:
    """4 sigma of the relative sampling error of a variance estimate from m draws, for a ratio of two of them."""
    return 4 * math.sqrt(2 * 2 / (m - 1))


VARIANCE_N, VARIANCE_M = 8, 1500


@pytest.fixture(scope="module")
def paired_bandit_gradients() -> dict[str, np.ndarray]:
    """
    ``VARIANCE_M`` gradient estimates of train() with N = 8 for several baselines, all on the *same* action and reward
    draws (same seeds; training never consumes the random streams), so that variances can be compared pairwise.
    ``"unit"``: rewards all exactly 1, whose estimate is the batch's mean score s = (1/N) sum_i g_i; by linearity,
    train()'s estimate with a constant baseline c is then ``none - c * unit``.
    """
    runs = {
        baseline: record_gradients(bandit_model(baseline, VARIANCE_N, learning_rate=0.05), VARIANCE_M)
        for baseline in ("none", "loo", "optimal")
    }
    unit = bandit_model("none", VARIANCE_N, learning_rate=0.05, means=(1.0, 1.0, 1.0), noise_std=0.0)
    runs["unit"] = record_gradients(unit, VARIANCE_M)
    return runs


def bandit_moments(model: REINFORCE) -> dict[str, np.ndarray | float]:
    """Exact per-coordinate moments of the one-episode score g(a) = grad log pi(a) for the bandit."""
    head = model.policy.action_net
    env = model.get_env().envs[0].unwrapped  # type: ignore[union-attr]
    means, noise_var = np.asarray(env.means), env.noise_std**2
    params = list(head.parameters())
    log_pi = th.log_softmax(head(th.ones(1, 1)), dim=-1).squeeze(0)
    pi = log_pi.exp().detach().double().numpy()
    scores = np.stack(
        [
            th.cat([g.reshape(-1) for g in th.autograd.grad(log_pi[a], params, retain_graph=True)]).double().numpy()
            for a in range(3)
        ]
    )  # (action, coordinate)
    sq = pi @ scores**2
    value = float(pi @ means)
    return {
        "optimal_constant": (pi * means) @ scores**2 / sq,  # b*_k = E[g_k^2 R] / E[g_k^2]
        "score_sq": sq,  # E[g_k^2]
        "gradient": (pi * means) @ scores,  # E[g_k R] = grad_k J
        "value": value,  # J = E[R]
        "return_var": float(pi @ (means**2 + noise_var)) - value**2,  # Var(R)
    }


def paired_variance_gap(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Var(x) - Var(y) per coordinate from paired draws, and its standard error (from the M paired differences)."""
    d = (x - x.mean(0)) ** 2 - (y - y.mean(0)) ** 2
    return d.mean(0), d.std(0, ddof=1) / math.sqrt(len(d))


CONSTANTS = (0.0, 5.0, 9.0, 10.0, 10.5, 11.0, 11.5, 12.0, 12.5, 13.0, 15.0)


def test_the_optimal_constant_baseline_has_the_lowest_variance_per_coordinate(paired_bandit_gradients):
    """
    Theory: Var(g_k (R - c)) is a parabola in c with its minimum at b*_k = E[g_k^2 R] / E[g_k^2], per coordinate.
    train()'s estimates with the exact b*_k (by linearity from the paired runs) are at or below those of every
    constant of a grid, coordinate by coordinate, within 4 paired standard errors; and the b*_k differ by coordinate
    (11.0 to 12.0 here), so that no single scalar is optimal for all.
    """
    none, unit = paired_bandit_gradients["none"], paired_bandit_gradients["unit"]
    moments = bandit_moments(bandit_model("none", VARIANCE_N))
    optimal = none - moments["optimal_constant"] * unit
    for c in CONSTANTS:
        gap, stderr = paired_variance_gap(optimal, none - c * unit)
        assert np.all(gap <= 4 * stderr), f"c = {c}: Var(b*) - Var(c) = {gap} (stderr {stderr})"
    assert np.ptp(moments["optimal_constant"]) > 0.5


def test_leave_one_out_baseline_variance_matches_theory(paired_bandit_gradients):
    """
    b_i = mean of the other N-1 returns: independent of episode i, E[b_i] = J, Var(b_i) = Var(R)/(N-1). Then
    Var(g_loo,k) = Var(g_{c=J},k) + (E[g_k^2] Var(R) + (grad_k J)^2) / (N (N-1)) exactly (the second term from the
    covariance of two episodes through each other's baseline). Checked on train()'s estimates within 4 paired SE.
    """
    none, unit, loo = (paired_bandit_gradients[k] for k in ("none", "unit", "loo"))
    moments = bandit_moments(bandit_model("none", VARIANCE_N))
    n = VARIANCE_N
    excess = (moments["score_sq"] * moments["return_var"] + moments["gradient"] ** 2) / (n * (n - 1))
    gap, stderr = paired_variance_gap(loo, none - moments["value"] * unit)
    assert np.all(np.abs(gap - excess) <= 4 * stderr), f"excess {gap} vs theory {excess} (stderr {stderr})"
    assert np.all(excess > 4 * stderr), "the test must be able to see the estimation cost"


def test_estimated_optimal_baseline_is_bounded_by_the_exact_optimum_and_cuts_variance(paired_bandit_gradients):
    """
    The algorithm's "optimal" baseline estimates b*_k from the other N-1 episodes (unbiased), which costs
    E[g_k^2] E[(b_ik - b*_k)^2] per episode: at or above the exact optimum, per coordinate, within sampling error,
    and far below no baseline. (Measured here, N = 8: 1.3x to 2.3x the exact optimum's variance, more than a constant
    c = J on every coordinate, because few of the 8 episodes pick the rarest action; see docs/reinforce.md.)
    """
    none, unit, optimal = (paired_bandit_gradients[k] for k in ("none", "unit", "optimal"))
    moments = bandit_moments(bandit_model("none", VARIANCE_N))
    gap, stderr = paired_variance_gap(optimal, none - moments["optimal_constant"] * unit)
    assert np.all(gap >= -4 * stderr), f"below the exact optimum: {gap} (stderr {stderr})"
    ratio = optimal.var(0, ddof=1) / none.var(0, ddof=1)
    assert np.all(ratio < 1 / 20), f"variance ratio to no baseline {ratio}"


def test_value_baseline_cuts_variance():
    """V(s) regresses on psi, so V -> J = E[R]: the variance approaches that of c = J, about 1/67 of no baseline here."""
    none = record_gradients(bandit_model("none", n_episodes=4, learning_rate=0.05), N_ESTIMATES)
    model = bandit_model("value", n_episodes=4, learning_rate=0.05)
    # The value baseline learns online: discard the first estimates, taken while V was still far from E[r].
    with_baseline = record_gradients(model, N_ESTIMATES + 300, train_value=True)[300:]
    ratio = with_baseline.var(0, ddof=1) / none.var(0, ddof=1)
    assert np.all(ratio < 1 / 20), f"variance ratio {ratio}"


def multistep_model(reward_to_go: bool, discount_weighting: str, gamma: float, seed: int = 0) -> REINFORCE:
    env = make_vec_env(IndependentStepsEnv, n_envs=4, seed=seed, vec_env_cls=DummyVecEnv)
    model = REINFORCE(
        "MlpPolicy",
        env,
        n_episodes=4,
        gamma=gamma,
        baseline="none",
        reward_to_go=reward_to_go,
        discount_weighting=discount_weighting,
        policy_kwargs=LINEAR_SOFTMAX,
        seed=seed,
        device="cpu",
    )
    with th.no_grad():
        model.policy.action_net.weight.copy_(th.tensor([[0.3, -0.2, 0.5, 0.0], [-0.4, 0.6, -0.1, 0.2]]))
    return model


def multistep_gradient(model: REINFORCE, weights: np.ndarray) -> np.ndarray:
    """sum_t weights[t] * grad E[r_t] by autograd, with E[r_t] = offset + scales[t] * pi_t(1)."""
    env = model.get_env().envs[0].unwrapped  # type: ignore[attr-defined]
    head = model.policy.action_net
    params = list(head.parameters())
    probs = th.softmax(head(th.eye(env.horizon)), dim=-1)[:, 1].double()
    objective = (th.as_tensor(weights) * th.as_tensor(env.scales) * probs).sum()
    return th.cat([g.reshape(-1) for g in th.autograd.grad(objective, params)]).double().numpy()


def test_reward_to_go_cuts_variance_and_both_forms_are_unbiased():
    m = 1200
    rtg_model = multistep_model(reward_to_go=True, discount_weighting="return", gamma=1.0)
    full_model = multistep_model(reward_to_go=False, discount_weighting="return", gamma=1.0)
    rtg, full = record_gradients(rtg_model, m), record_gradients(full_model, m)
    exact = multistep_gradient(rtg_model, np.ones(4))
    assert_mean_close(rtg, exact)
    assert_mean_close(full, exact)
    ratio = total_variance(rtg) / total_variance(full)
    assert ratio < 1 - variance_ratio_margin(m), f"variance ratio {ratio:.3f}"


@pytest.mark.parametrize("discount_weighting", ["return", "gradient"])
def test_discounting_conventions_have_their_documented_expectation(discount_weighting: str):
    """
    "gradient" (w_t = gamma^t) estimates grad E[sum_t gamma^t r_t]; "return" (w_t = 1) estimates
    sum_t grad E[r_t] here, because each reward depends on its own action only. With gamma = 0.5 they differ.
    """
    gamma, m = 0.5, 1200
    model = multistep_model(reward_to_go=True, discount_weighting=discount_weighting, gamma=gamma)
    estimates = record_gradients(model, m)
    weights = gamma ** np.arange(4) if discount_weighting == "gradient" else np.ones(4)
    other = np.ones(4) if discount_weighting == "gradient" else gamma ** np.arange(4)
    assert_mean_close(estimates, multistep_gradient(model, weights))
    stderr = estimates.std(axis=0, ddof=1) / math.sqrt(m)
    assert np.max(np.abs(estimates.mean(0) - multistep_gradient(model, other)) / stderr) > 4


# --------------------------------------------------------------------------------------------------------------------
# Complete-episode collection
# --------------------------------------------------------------------------------------------------------------------


def random_length_model(n_envs: int, n_episodes: int, seed: int = 0, **kwargs) -> REINFORCE:
    def factory(tag: int):
        return lambda: RandomLengthEnv(max_len=20, env_tag=tag)

    env = DummyVecEnv([factory(i) for i in range(n_envs)])
    env.seed(seed)
    return REINFORCE("MlpPolicy", env, n_episodes=n_episodes, seed=seed, device="cpu", **kwargs)


@pytest.mark.parametrize("n_envs", [1, 3, 8])
def test_rollouts_are_complete_episodes_and_steps_are_counted(n_envs: int):
    model = random_length_model(n_envs, n_episodes=5, baseline="mean")
    envs = [e.unwrapped for e in model.get_env().envs]  # type: ignore[attr-defined]
    for _ in range(6):
        one_update(model)
        batch = model.rollout_buffer.get()
        assert batch.n_episodes == 5
        obs = batch.observations.numpy()
        starts = batch.episode_starts.numpy()
        bounds = [*np.flatnonzero(starts).tolist(), len(starts)]
        played = {uid: length for env in envs for uid, length in env.lengths.items()}
        uids = []
        for begin, end in itertools.pairwise(bounds):
            uid = int(obs[begin, 0])
            uids.append(uid)
            assert np.all(obs[begin:end, 0] == uid), "an episode in the batch mixes two env episodes"
            np.testing.assert_array_equal(obs[begin:end, 1], np.arange(end - begin))  # from its first step...
            assert end - begin == played[uid]  # ... to its natural end
        assert len(set(uids)) == 5
    # Every env step is counted, kept or not.
    assert model.num_timesteps == sum(env.steps_played for env in envs)


def test_single_env_wastes_no_steps():
    model = random_length_model(1, n_episodes=4, baseline="mean")
    kept = 0
    for _ in range(5):
        one_update(model)
        kept += model.rollout_buffer.get().n_steps
    assert model.num_timesteps == kept


def test_kept_episodes_are_not_biased_towards_short_ones():
    """
    Episode lengths are uniform on {1..20} (mean 10.5, variance 33.25). Keeping the first episodes to *finish*
    across 4 envs would favour short ones; keeping the first to *start* does not.
    """
    model = random_length_model(4, n_episodes=4, baseline="mean", seed=1)
    lengths: list[int] = []
    while len(lengths) < 800:
        one_update(model)
        lengths.extend(model.rollout_buffer.get().episode_lengths.tolist())
    stderr = math.sqrt(33.25 / len(lengths))
    assert abs(np.mean(lengths) - 10.5) < 4 * stderr


def test_min_steps_keeps_starting_episodes():
    model = random_length_model(2, n_episodes=2, min_steps=100, baseline="mean")
    one_update(model)
    batch = model.rollout_buffer.get()
    assert batch.n_steps >= 100
    assert batch.n_episodes >= 2
    assert batch.n_steps - int(batch.episode_lengths[-1]) < 100 + 20 * 2  # no episode started after 100 kept steps


def test_truncated_episodes_are_bootstrapped_only_with_a_critic():
    with_critic = random_length_model(2, n_episodes=6, baseline="value")
    one_update(with_critic)
    batch = with_critic.rollout_buffer.get()
    last = np.cumsum(batch.episode_lengths.numpy()) - 1
    boot = batch.bootstrap_values.numpy()
    truncated = batch.episode_truncated.numpy()
    assert truncated.any() and (~truncated).any()
    assert np.all(boot[last][truncated] != 0) and np.all(boot[last][~truncated] == 0)
    assert np.all(np.delete(boot, last) == 0)
    # The bootstrap enters the returns: psi at the last step = r + gamma * V(s_T).
    psi = with_critic._returns(batch).numpy()
    np.testing.assert_allclose(psi[last], 1.0 + with_critic.gamma * boot[last], rtol=1e-6)

    without = random_length_model(2, n_episodes=6, baseline="mean")
    one_update(without)
    batch = without.rollout_buffer.get()
    np.testing.assert_array_equal(without._returns(batch).numpy()[np.cumsum(batch.episode_lengths.numpy()) - 1], 1.0)


def test_invalid_combinations_are_rejected_at_construction():
    env = make_vec_env(GaussianBandit, n_envs=1)
    with pytest.raises(ValueError, match="reward_to_go=False"):
        REINFORCE("MlpPolicy", env, baseline="optimal")  # reward_to_go=True by default
    with pytest.raises(ValueError, match="n_episodes"):
        REINFORCE("MlpPolicy", env, baseline="loo", n_episodes=1)
    with pytest.raises(ValueError, match="normalize_advantage"):
        REINFORCE("MlpPolicy", env, baseline="optimal", reward_to_go=False, normalize_advantage=True)


def test_non_finite_loss_names_algorithm_update_and_quantity():
    """Finite rewards of 1e30 give a value loss of 1e60, beyond float32: a clear error, not NaN parameters."""
    env = make_vec_env(lambda: GaussianBandit(means=(1e30, 1e30, 1e30), noise_std=0.0), n_envs=2)
    model = REINFORCE("MlpPolicy", env, n_episodes=2, baseline="value", seed=0, device="cpu")
    before = [p.detach().clone() for p in model.policy.parameters()]
    with pytest.raises(FloatingPointError, match=r"REINFORCE: non-finite loss at update 1"):
        model.learn(4)
    for old, new in zip(before, model.policy.parameters(), strict=True):
        assert th.equal(old, new)


# --------------------------------------------------------------------------------------------------------------------
# Discounting conventions: exact expectations by enumeration, through train()
# --------------------------------------------------------------------------------------------------------------------


class DelayedRewardEnv(gym.Env):
    """
    Three decisions; observation one-hot(t); ``Discrete(2)`` actions; deterministic rewards that depend on earlier
    actions too: ``r_k = 1 + sum_{t <= k} EFFECTS[k, t] * a_t``. Small enough to enumerate its 8 action sequences.
    """

    HORIZON = 3
    EFFECTS = np.array([[1.0, 0.0, 0.0], [2.0, -1.0, 0.0], [-1.0, 1.5, 0.5]])

    def __init__(self):
        self.observation_space = spaces.Box(0.0, 1.0, shape=(self.HORIZON,), dtype=np.float32)
        self.action_space = spaces.Discrete(2)
        self.actions: list[int] = []

    @classmethod
    def rewards(cls, actions) -> np.ndarray:
        a = np.asarray(actions, dtype=np.float64)
        return np.array([1.0 + cls.EFFECTS[k, : k + 1] @ a[: k + 1] for k in range(len(a))])

    def _obs(self) -> np.ndarray:
        return np.eye(self.HORIZON, dtype=np.float32)[min(len(self.actions), self.HORIZON - 1)]

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self.actions = []
        return self._obs(), {}

    def step(self, action):
        self.actions.append(int(action))
        reward = float(self.rewards(self.actions)[-1])
        return self._obs(), reward, len(self.actions) == self.HORIZON, False, {}


def delayed_reward_model(reward_to_go: bool, discount_weighting: str, gamma: float = 0.5, **kwargs) -> REINFORCE:
    env = make_vec_env(DelayedRewardEnv, n_envs=1, seed=0)
    kwargs = {"baseline": "none", "n_episodes": 1, **kwargs}
    model = REINFORCE(
        "MlpPolicy",
        env,
        gamma=gamma,
        reward_to_go=reward_to_go,
        discount_weighting=discount_weighting,
        policy_kwargs=LINEAR_SOFTMAX,
        seed=0,
        device="cpu",
        **kwargs,
    )
    with th.no_grad():
        model.policy.action_net.weight.copy_(th.tensor([[0.3, -0.2, 0.5], [-0.4, 0.6, -0.1]]))
        model.policy.action_net.bias.copy_(th.tensor([0.1, -0.3]))
    return model


ACTION_SEQUENCES = [np.array(seq) for seq in itertools.product([0, 1], repeat=DelayedRewardEnv.HORIZON)]


def expected_train_gradient(model: REINFORCE) -> np.ndarray:
    """E[g] of REINFORCE's train() on one-episode batches, exactly: sum over the 8 action sequences of p(seq) g(seq)."""
    observations = np.eye(DelayedRewardEnv.HORIZON, dtype=np.float32)
    with th.no_grad():
        log_probs = th.log_softmax(model.policy.action_net(th.as_tensor(observations)), dim=-1).double()
    total = np.zeros(8)
    for actions in ACTION_SEQUENCES:
        probability = float(log_probs[np.arange(len(actions)), actions].sum().exp())
        total += probability * train_on_episodes(model, [(observations, actions, DelayedRewardEnv.rewards(actions))])
    return total


def step_gradients_of_expected_rewards(model: REINFORCE) -> np.ndarray:
    """
    D[t, k] = d E[r_k] / d theta^(t): the gradient of the expected reward at step k through the policy's decision at
    step t only (theta^(t) a copy of the head's parameters used at step t alone), by enumeration and autograd.
    Every expectation below is a combination of these: grad J_gamma = sum_k gamma^k sum_t D[t, k].
    """
    head = model.policy.action_net
    horizon = DelayedRewardEnv.HORIZON
    copies = [[p.detach().clone().double().requires_grad_(True) for p in head.parameters()] for _ in range(horizon)]
    eye = th.eye(horizon, dtype=th.float64)
    log_pi = th.stack([th.log_softmax(eye[t] @ w.T + b, dim=-1) for t, (w, b) in enumerate(copies)])  # (t, a)
    expected_rewards = sum(
        log_pi[np.arange(horizon), actions].sum().exp() * th.as_tensor(DelayedRewardEnv.rewards(actions))
        for actions in ACTION_SEQUENCES
    )
    out = np.zeros((horizon, horizon, 8))
    for k in range(horizon):
        grads = th.autograd.grad(expected_rewards[k], [p for copy in copies for p in copy], retain_graph=True)  # type: ignore[index]
        for t in range(horizon):
            out[t, k] = th.cat([g.reshape(-1) for g in grads[2 * t : 2 * t + 2]]).numpy()
    return out


@pytest.mark.parametrize("reward_to_go", [False, True])
@pytest.mark.parametrize("discount_weighting", ["return", "gradient"])
def test_discounting_conventions_exact_expectations(reward_to_go: bool, discount_weighting: str):
    """
    exact expectations (enumeration of every action sequence, REINFORCE's own train()), gamma = 0.5, on a
    task whose rewards depend on earlier actions:

    - ``"gradient"`` estimates the exact gradient of the discounted objective J = E[sum_k gamma^k r_k] with both
      psi: w_t = gamma^t for reward-to-go, w_t = 1 for the whole return R, which is already discounted from step 0
      (before the fix, gamma^t R discounted twice);
    - ``"return"`` with the whole return is the same estimator (w_t = 1), hence the same exact gradient;
    - ``"return"`` with reward-to-go estimates sum_k sum_{t <= k} gamma^(k-t) D[t, k]: each reward discounted from
      the decision being credited, not from the episode's start. That is not grad J (nor, in general, the
      gradient of any objective); with gamma = 1 both conventions are grad E[sum_k r_k].
    """
    gamma = 0.5
    model = delayed_reward_model(reward_to_go, discount_weighting, gamma)
    estimate = expected_train_gradient(model)
    steps = step_gradients_of_expected_rewards(model)
    horizon = DelayedRewardEnv.HORIZON
    exact = sum(gamma**k * steps[t, k] for t in range(horizon) for k in range(horizon))
    if reward_to_go and discount_weighting == "return":
        expected = sum(gamma ** (k - t) * steps[t, k] for t in range(horizon) for k in range(t, horizon))
        assert np.max(np.abs(expected - exact)) > 0.05  # the two quantities differ on this task
    else:
        expected = exact
    np.testing.assert_allclose(estimate, expected, rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------------------------------------------------
# Baselines "mean" and "loo": what they average
# --------------------------------------------------------------------------------------------------------------------


def unequal_episodes(returns: list[float] | None = None) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Bandit-shaped episodes of lengths 10, 2, 30 with reward 1 per step (returns 10, 2, 30 with gamma = 1), or
    with every reward of episode i scaled so that its return is ``returns[i]``."""
    rng = np.random.default_rng(0)
    episodes = []
    for i, length in enumerate((10, 2, 30)):
        scale = 1.0 if returns is None else returns[i] / length
        episodes.append((np.ones((length, 1), dtype=np.float32), rng.integers(0, 3, size=length), np.full(length, scale)))
    return episodes


@pytest.mark.parametrize("baseline", ["mean", "loo"])
def test_mean_and_loo_baselines_average_over_episodes_for_whole_returns(baseline: str):
    """
    Returns 10, 2, 30 of lengths 10, 2, 30: the mean baseline is (10 + 2 + 30) / 3 = 14.0 (a step mean, weighting
    each return by its length, gave 23.9), the leave-one-out baseline of episode i the mean of the other two returns.
    Checked on train()'s gradient: g_b = g_none - (1/N) sum_i b_i g_i, with (1/N) g_i measured by train() itself on
    the same batch with return 1 for episode i and 0 for the others.
    """
    model = bandit_model(baseline, n_episodes=3, gamma=1.0)
    model.reward_to_go = False
    none = bandit_model("none", n_episodes=3, gamma=1.0)
    none.reward_to_go = False
    episodes = unequal_episodes()
    batch_baseline = {"mean": [14.0, 14.0, 14.0], "loo": [16.0, 20.0, 6.0]}[baseline]
    # (1/N) g_i, one train() each
    scores = [train_on_episodes(none, unequal_episodes([float(j == i) for j in range(3)])) for i in range(3)]
    expected = train_on_episodes(none, episodes) - sum(b * s for b, s in zip(batch_baseline, scores, strict=True))
    np.testing.assert_allclose(train_on_episodes(model, episodes), expected, rtol=1e-5, atol=1e-5)
    # The baseline itself, step by step.
    batch = model.rollout_buffer.get()
    psi = model._returns(batch)
    np.testing.assert_allclose(model._baseline(psi, batch).numpy(), np.repeat(batch_baseline, [10, 2, 30]), rtol=1e-6)


def test_mean_and_loo_baselines_average_reward_to_go_over_steps():
    """
    With reward-to-go, "mean" is the mean of psi_t over every step of the batch and "loo" the mean over the steps of
    the other episodes (documented): episodes of lengths 10, 2, 30 with reward 1 have reward-to-go sums 55, 3, 465.
    """
    episodes = unequal_episodes()
    expected = {"mean": np.full(42, 523 / 42), "loo": np.repeat([468 / 32, 520 / 40, 58 / 12], [10, 2, 30])}
    for baseline, values in expected.items():
        model = bandit_model(baseline, n_episodes=3, gamma=1.0)
        train_on_episodes(model, episodes)
        batch = model.rollout_buffer.get()
        np.testing.assert_allclose(model._baseline(model._returns(batch), batch).numpy(), values, rtol=1e-6)


# --------------------------------------------------------------------------------------------------------------------
# Non-finite values: caught before the optimiser step
# --------------------------------------------------------------------------------------------------------------------


def nan_after(n_calls: int):
    """A gradient hook that passes the first ``n_calls`` gradients through and turns every later one into NaN."""
    calls = itertools.count()
    return lambda grad: grad if next(calls) < n_calls else grad * float("nan")


@pytest.mark.parametrize(
    ("baseline", "clean_calls"),
    [
        ("value", 0),
        ("none", 0),
        # "optimal": one autograd.grad per episode (2), then the entropy term's backward, whose gradient is poisoned.
        ("optimal", 2),
    ],
)
def test_non_finite_gradient_raises_before_the_step(baseline: str, clean_calls: int):
    """
    A NaN in one gradient (finite loss): the error names the algorithm, the update and the quantity, and no
    parameter moves (before the fix, the optimiser step wrote NaN into the parameters and a check after it raised).
    """
    env = make_vec_env(GaussianBandit, n_envs=2, seed=0)
    model = REINFORCE(
        "MlpPolicy",
        env,
        n_episodes=2,
        baseline=baseline,
        reward_to_go=baseline != "optimal",
        ent_coef=0.01,
        max_grad_norm=0.5,
        seed=0,
        device="cpu",
    )
    model.policy.action_net.weight.register_hook(nan_after(clean_calls))
    before = [p.detach().clone() for p in model.policy.parameters()]
    with pytest.raises(
        FloatingPointError, match=r"REINFORCE: non-finite gradient of parameter 'action_net.weight' at update 1"
    ):
        model.learn(4)
    for old, new in zip(before, model.policy.parameters(), strict=True):
        assert th.equal(old, new)
    assert model._n_updates == 0 and not model.policy.optimizer.state


def one_nan_element(grad: th.Tensor) -> th.Tensor:
    """A gradient hook that poisons ONE element and leaves the others finite."""
    poisoned = grad.clone()
    poisoned.view(-1)[-1] = float("nan")
    return poisoned


def test_one_non_finite_gradient_element_is_caught_naming_the_parameter():
    """One NaN among finite gradient elements is enough (a check with any() instead of all() would let it through)."""
    model = REINFORCE("MlpPolicy", make_vec_env(GaussianBandit, n_envs=2, seed=0), n_episodes=2, seed=0, device="cpu")
    model.policy.action_net.weight.register_hook(one_nan_element)
    before = [p.detach().clone() for p in model.policy.parameters()]
    with pytest.raises(
        FloatingPointError, match=r"REINFORCE: non-finite gradient of parameter 'action_net.weight' at update 1"
    ):
        model.learn(4)
    for old, new in zip(before, model.policy.parameters(), strict=True):
        assert th.equal(old, new)


def test_finiteness_checks_catch_one_bad_element():
    """Each check of sb3_pg_ext.common.checks raises for a single NaN/inf element among finite ones."""
    for bad in (math.nan, math.inf):
        values = th.ones(3, 4)
        values[2, 1] = bad
        with pytest.raises(FloatingPointError, match="non-finite advantages"):
            assert_finite(values, "advantages", "REINFORCE", 1)
        with pytest.raises(FloatingPointError, match="non-finite advantages"):
            assert_finite(values.numpy(), "advantages", "REINFORCE", 1)
        module = th.nn.Linear(4, 3)
        with th.no_grad():
            module.weight.copy_(values)
        with pytest.raises(FloatingPointError, match="non-finite parameter 'weight'"):
            assert_finite_parameters(module, "REINFORCE", 1)
        module = th.nn.Linear(4, 3)
        module.weight.grad = values.clone()
        with pytest.raises(FloatingPointError, match="non-finite gradient of parameter 'weight'"):
            assert_finite_gradients(module, "REINFORCE", 1)
    module.weight.grad = th.ones(3, 4)
    assert_finite_gradients(module, "REINFORCE", 1)  # all finite: no error


# --------------------------------------------------------------------------------------------------------------------
# learn(total_timesteps): no new episode once the budget is spent
# --------------------------------------------------------------------------------------------------------------------


def test_learn_starts_no_episode_after_the_budget():
    """Pendulum-v1 episodes last 200 steps; 8 per rollout. learn(2000) ran 3,200 steps before the fix."""
    model = REINFORCE("MlpPolicy", make_vec_env("Pendulum-v1", n_envs=1, seed=0), seed=0, device="cpu")
    model.learn(2000)
    assert model.num_timesteps == 2000
    assert model._n_updates == 2
    assert model.rollout_buffer.get().n_episodes == 2  # the last rollout trained on the episodes it had started


@pytest.mark.parametrize("n_envs", [1, 3])
@pytest.mark.parametrize("budget", [1, 37, 250])
def test_learn_overshoots_the_budget_by_less_than_the_running_episodes(n_envs: int, budget: int):
    model = random_length_model(n_envs, n_episodes=4, baseline="mean")
    model.learn(budget)
    # Each env may finish the (kept or not) episode it is playing: at most MAX_LEN = 20 more steps per env.
    assert budget <= model.num_timesteps < budget + 20 * n_envs
    assert model._n_updates >= 1


@pytest.mark.parametrize("baseline", ["loo", "optimal"])
def test_a_last_rollout_of_one_episode_uses_no_baseline(baseline: str):
    """
    "loo" and "optimal" need two episodes; the last rollout of learn() may hold one (Pendulum: 4 episodes of 200
    steps per rollout, learn(1000) = one rollout of 4 and one of 1). That update uses b = 0, still unbiased.
    """
    kwargs = {"baseline": baseline, "n_episodes": 4, "reward_to_go": baseline != "optimal"}
    model = REINFORCE("MlpPolicy", make_vec_env("Pendulum-v1", n_envs=1, seed=0), seed=0, device="cpu", **kwargs)
    model.learn(1000)
    assert model.num_timesteps == 1000 and model._n_updates == 2
    assert model.rollout_buffer.get().n_episodes == 1
    # On a one-episode batch, the gradient is that of baseline="none".
    episode = unequal_episodes()[:1]
    with_baseline = bandit_model(baseline, n_episodes=2, learning_rate=0.05)
    without = bandit_model("none", n_episodes=2, learning_rate=0.05)
    without.reward_to_go = with_baseline.reward_to_go
    np.testing.assert_allclose(train_on_episodes(with_baseline, episode), train_on_episodes(without, episode), rtol=1e-6)
