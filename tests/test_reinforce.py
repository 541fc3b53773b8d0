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

import numpy as np
import pytest
import torch as th
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.vec_env import DummyVecEnv

from sb3_pg_ext import REINFORCE
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


def bandit_model(baseline: str, n_episodes: int, seed: int = 0, **kwargs) -> REINFORCE:
    env = make_vec_env(GaussianBandit, n_envs=n_episodes, seed=seed, vec_env_cls=DummyVecEnv)
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


def assert_mean_close(estimates: np.ndarray, expected: np.ndarray, n_sigma: float = 4.0) -> None:
    stderr = estimates.std(axis=0, ddof=1) / math.sqrt(len(estimates))
    error = np.abs(estimates.mean(axis=0) - expected)
    assert np.all(error <= n_sigma * stderr + 1e-9), f"mean {estimates.mean(0)} vs expected {expected} (stderr {stderr})"


N_ESTIMATES = 1500


@pytest.mark.parametrize("baseline", ["none", "loo", "optimal", "value"])
def test_gradient_is_unbiased_for_every_unbiased_baseline(baseline: str):
    model = bandit_model(baseline, n_episodes=4, learning_rate=0.05)
    estimates = record_gradients(model, N_ESTIMATES, train_value=baseline == "value")
    assert_mean_close(estimates, bandit_gradient(model))


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


@pytest.mark.parametrize("baseline", ["mean", "loo", "optimal", "value"])
def test_baselines_cut_variance(baseline: str):
    none = record_gradients(bandit_model("none", n_episodes=4, learning_rate=0.05), N_ESTIMATES)
    model = bandit_model(baseline, n_episodes=4, learning_rate=0.05)
    # The value baseline learns online: discard the first estimates, taken while V was still far from E[r].
    warmup = 300 if baseline == "value" else 0
    with_baseline = record_gradients(model, N_ESTIMATES + warmup, train_value=baseline == "value")[warmup:]
    ratio = total_variance(with_baseline) / total_variance(none)
    assert ratio < 1 - variance_ratio_margin(N_ESTIMATES), f"variance ratio {ratio:.3f}"


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
        model.learn(1, reset_num_timesteps=False)  # exactly one rollout and one update
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
        model.learn(1, reset_num_timesteps=False)
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
        model.learn(1, reset_num_timesteps=False)
        lengths.extend(model.rollout_buffer.get().episode_lengths.tolist())
    stderr = math.sqrt(33.25 / len(lengths))
    assert abs(np.mean(lengths) - 10.5) < 4 * stderr


def test_min_steps_keeps_starting_episodes():
    model = random_length_model(2, n_episodes=2, min_steps=100, baseline="mean")
    model.learn(1)
    batch = model.rollout_buffer.get()
    assert batch.n_steps >= 100
    assert batch.n_episodes >= 2
    assert batch.n_steps - int(batch.episode_lengths[-1]) < 100 + 20 * 2  # no episode started after 100 kept steps


def test_truncated_episodes_are_bootstrapped_only_with_a_critic():
    with_critic = random_length_model(2, n_episodes=6, baseline="value")
    with_critic.learn(1)
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
    without.learn(1)
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
