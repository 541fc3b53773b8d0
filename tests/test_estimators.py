"""
sb3_pg_ext.estimators, every public estimator: hand-computed values, slow loop references on random episodes, and
the sample KL estimators against the analytic KL.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch as th
from torch.distributions import Categorical, Normal

from sb3_pg_ext.estimators import (
    KL_ESTIMATORS,
    adapted_kl_coef,
    analytic_kl,
    analytic_kl_from_parameters,
    batch_mean_baseline,
    categorical_kl,
    clipped_log_ratios,
    discounted_returns,
    effective_sample_size,
    episode_ids_from_starts,
    episode_sums,
    group_advantages,
    group_process_advantages,
    kl_importance_weight,
    kl_k1,
    kl_k2,
    kl_k3,
    kl_k3_linear_from,
    kl_parameters,
    leave_one_out_baseline,
    loss_aggregation_weights,
    normal_kl,
    optimal_baseline,
    per_decision_log_weights,
    per_decision_returns,
    ratio_corrected_kl,
    reward_to_go,
    sampled_kl,
    self_normalized_log_weights,
    step_index,
)

# --------------------------------------------------------------------------------------------------------------------
# Slow references: explicit Python loops over episodes and steps.
# --------------------------------------------------------------------------------------------------------------------


def split_episodes(starts: np.ndarray) -> list[tuple[int, int]]:
    begin = [0, *[i for i in range(1, len(starts)) if starts[i]]]
    end = [*begin[1:], len(starts)]
    return list(zip(begin, end, strict=True))


def loop_reward_to_go(rewards, starts, gamma, bootstrap=None):
    out = np.zeros(len(rewards))
    for b, e in split_episodes(starts):
        running = 0.0 if bootstrap is None else bootstrap[e - 1]
        for t in reversed(range(b, e)):
            running = rewards[t] + gamma * running
            out[t] = running
    return out


def loop_episode_return(rewards, starts, gamma, bootstrap=None):
    out = np.zeros(len(rewards))
    for b, e in split_episodes(starts):
        ret = sum(gamma ** (t - b) * rewards[t] for t in range(b, e))
        if bootstrap is not None:
            ret += gamma ** (e - b) * bootstrap[e - 1]
        out[b:e] = ret
    return out


def loop_log_weights(log_pi, log_mu, starts, clip=None):
    out = np.zeros(len(log_pi))
    for b, e in split_episodes(starts):
        product = 1.0
        for t in range(b, e):
            ratio = math.exp(log_pi[t] - log_mu[t])
            product *= ratio if clip is None else min(clip, ratio)
            out[t] = math.log(product)
    return out


def random_episodes(rng: np.random.Generator, n_episodes: int, max_len: int = 40):
    """Random rewards with random episode boundaries; about half the episodes truncated (bootstrapped)."""
    lengths = rng.integers(1, max_len, size=n_episodes)
    starts = np.zeros(lengths.sum(), dtype=bool)
    starts[np.cumsum(lengths) - lengths] = True
    rewards = rng.normal(size=lengths.sum())
    truncated = rng.random(n_episodes) < 0.5
    bootstrap = np.zeros(lengths.sum())
    bootstrap[np.cumsum(lengths) - 1] = np.where(truncated, rng.normal(size=n_episodes) * 5, 0.0)
    return rewards, starts, bootstrap


def t64(x) -> th.Tensor:
    return th.as_tensor(np.asarray(x), dtype=th.float64)


# --------------------------------------------------------------------------------------------------------------------
# Hand-computed values
# --------------------------------------------------------------------------------------------------------------------


def test_returns_match_hand_computed_values():
    # Two episodes: [1, 2, 3] (terminated) and [4, 5] (truncated, V(s_T) = 10), gamma = 0.5.
    rewards = t64([1, 2, 3, 4, 5])
    starts = th.tensor([True, False, False, True, False])
    bootstrap = t64([0, 0, 0, 0, 10])
    # rtg: 1 + .5*2 + .25*3 = 2.75 ; 2 + .5*3 = 3.5 ; 3 ; 4 + .5*5 + .25*10 = 9 ; 5 + .5*10 = 10
    np.testing.assert_allclose(reward_to_go(rewards, starts, 0.5, bootstrap).numpy(), [2.75, 3.5, 3.0, 9.0, 10.0])
    np.testing.assert_allclose(discounted_returns(rewards, starts, 0.5, bootstrap).numpy(), [2.75, 2.75, 2.75, 9, 9])
    np.testing.assert_allclose(reward_to_go(rewards, starts, 1.0).numpy(), [6, 5, 3, 9, 5])
    np.testing.assert_array_equal(step_index(starts).numpy(), [0, 1, 2, 0, 1])
    np.testing.assert_array_equal(episode_ids_from_starts(starts).numpy(), [0, 0, 0, 1, 1])
    np.testing.assert_allclose(episode_sums(rewards, starts).numpy(), [6, 9])


def test_baselines_match_hand_computed_values():
    psi = t64([1, 1, 1, 4, 4, 10])
    starts = th.tensor([True, False, False, True, False, True])
    np.testing.assert_allclose(batch_mean_baseline(psi).numpy(), np.full(6, 21 / 6))
    # Episode sums 3, 8, 10 over lengths 3, 2, 1: leave-one-out means (18/3, 13/4, 11/5).
    np.testing.assert_allclose(leave_one_out_baseline(psi, starts).numpy(), [6, 6, 6, 13 / 4, 13 / 4, 11 / 5])
    with pytest.raises(ValueError, match="at least 2 episodes"):
        leave_one_out_baseline(psi[:3], starts[:3])


def test_episode_weighted_baselines_match_hand_computed_values():
    psi = t64([1, 1, 1, 4, 4, 10])
    starts = th.tensor([True, False, False, True, False, True])
    # Episode means 1, 4, 10: every episode counts once, whatever its length.
    np.testing.assert_allclose(batch_mean_baseline(psi, starts, weighting="episode").numpy(), np.full(6, 5.0))
    np.testing.assert_allclose(batch_mean_baseline(psi, starts, weighting="step").numpy(), np.full(6, 21 / 6))
    np.testing.assert_allclose(leave_one_out_baseline(psi, starts, weighting="episode").numpy(), [7, 7, 7, 5.5, 5.5, 2.5])
    # The review's case: whole returns 10, 2, 30 of lengths 10, 2, 30 (each return at every step of its episode).
    lengths = [10, 2, 30]
    returns = t64(np.repeat([10.0, 2.0, 30.0], lengths))
    long_starts = th.as_tensor(np.concatenate([np.eye(1, n, dtype=bool)[0] for n in lengths]))
    assert batch_mean_baseline(returns, long_starts, weighting="episode")[0].item() == pytest.approx(14.0)
    assert batch_mean_baseline(returns, long_starts, weighting="step")[0].item() == pytest.approx(1004 / 42)  # 23.9
    np.testing.assert_allclose(
        leave_one_out_baseline(returns, long_starts, weighting="episode").numpy(), np.repeat([16.0, 20.0, 6.0], lengths)
    )
    with pytest.raises(ValueError, match="`weighting` must be one of 'episode', 'step'"):
        batch_mean_baseline(psi, starts, weighting="batch")
    with pytest.raises(ValueError, match="`weighting` must be one of 'episode', 'step'"):
        leave_one_out_baseline(psi, starts, weighting="batch")
    with pytest.raises(ValueError, match="needs `episode_starts`"):
        batch_mean_baseline(psi, weighting="episode")


def test_optimal_baseline_matches_hand_computed_values():
    scores = t64([[1.0, 0.0], [2.0, 1.0], [0.0, 3.0]])
    returns = t64([10.0, 20.0, 30.0])
    # Batch formula: b_0 = (1*10 + 4*20) / 5 = 18 ; b_1 = (1*20 + 9*30) / 10 = 29.
    full = optimal_baseline(scores, returns, leave_one_out=False)
    np.testing.assert_allclose(full.numpy(), [[18, 29]] * 3)
    loo = optimal_baseline(scores, returns, leave_one_out=True)
    # Episode 0 leaves itself out: b_0 = 80/4 = 20, b_1 = 290/10 = 29 ; episode 2: b_0 = 90/5 = 18, b_1 = 20/1 = 20.
    np.testing.assert_allclose(loo[0].numpy(), [20, 29])
    np.testing.assert_allclose(loo[2].numpy(), [18, 20])
    # Episode 1: coordinate 0 from episodes 0 and 2: 10/1 = 10 ; coordinate 1: 270/9 = 30.
    np.testing.assert_allclose(loo[1].numpy(), [10, 30])


def test_kl_estimators_match_hand_computed_values():
    log_p, log_q = t64([math.log(0.5)]), t64([math.log(0.25)])
    assert kl_k1(log_p, log_q).item() == pytest.approx(math.log(2))
    assert kl_k2(log_p, log_q).item() == pytest.approx(0.5 * math.log(2) ** 2)
    assert kl_k3(log_p, log_q).item() == pytest.approx(0.5 - 1 - math.log(0.5))
    assert kl_k3(log_p, log_p).item() == 0.0


@pytest.mark.parametrize("dtype", [th.float32, th.float64])
def test_k3_is_finite_where_the_log_probabilities_are(dtype: th.dtype):
    """kl_k3(-95, -5) was inf in float32 (r = e^90); now the tangent at c continues it: finite, increasing, convex."""
    c = kl_k3_linear_from(dtype)
    assert c == pytest.approx(math.log(th.finfo(dtype).max) / 4)
    assert math.isfinite(kl_k3(th.tensor([-95.0], dtype=dtype), th.tensor([-5.0], dtype=dtype)).item())
    log_p = th.tensor([-5.0 - 2 * c, -1e6, -1e20], dtype=dtype, requires_grad=True)
    log_q = th.tensor([-5.0, 0.0, 0.0], dtype=dtype)
    k3 = kl_k3(log_p, log_q)
    k3.sum().backward()
    assert bool(th.isfinite(k3).all()) and bool(th.isfinite(log_p.grad).all())
    log_r = (log_q - log_p).double()
    expected = math.exp(c) * (1 + log_r - c) - 1 - log_r  # the tangent line at c
    th.testing.assert_close(k3.double(), expected, rtol=1e-6, atol=0.0)
    th.testing.assert_close(log_p.grad.double(), th.full_like(log_r, -(math.exp(c) - 1)), rtol=1e-6, atol=0.0)
    assert bool((k3[1:] > k3[:-1]).all())
    # continuous at c
    at_c = kl_k3(th.tensor([0.0], dtype=dtype), th.tensor([c], dtype=dtype)).item()
    assert at_c == pytest.approx(math.expm1(c) - c, rel=1e-6)


@pytest.mark.parametrize("dtype", [th.float32, th.float64])
@pytest.mark.parametrize("estimator", ["k1", "k2", "k3"])
def test_importance_weighted_kls_are_finite_where_the_log_probabilities_are(dtype: th.dtype, estimator: str):
    """
    The reverse sampled KL and GRPO's ratio-corrected term multiply by r = exp(log r): e^90 was inf in float32
    (old -95, new -5). Now r is capped at e^c: values and gradients finite, the plain product bit for bit below c.
    """
    c = kl_k3_linear_from(dtype)
    old = th.tensor([-95.0, -5.0 - 2 * c, -1e6], dtype=dtype)
    new = th.tensor([-5.0, -5.0, 0.0], dtype=dtype, requires_grad=True)
    ref = th.tensor([-3.0, -2.0, -1.0], dtype=dtype)
    assert not math.isfinite(th.exp(new - old)[0].item()) or dtype == th.float64
    for value in (sampled_kl(old, new, estimator, "reverse"), ratio_corrected_kl(new, old, ref, estimator)):
        (grad,) = th.autograd.grad(value.sum(), new)
        assert bool(th.isfinite(value).all()), value
        assert bool(th.isfinite(grad).all()), grad
    # above c the weight is the constant e^c
    log_r = (new - old).detach()
    assert int((log_r > c).sum()) >= 2
    th.testing.assert_close(kl_importance_weight(log_r)[log_r > c], th.full_like(log_r[log_r > c], math.exp(c)))
    # below c: the plain products, values and gradients bit for bit
    gen = th.Generator().manual_seed(0)
    old = (th.rand(500, generator=gen) * -10).to(dtype)
    new = (old + th.linspace(-30, c - 0.01, 500, dtype=dtype)).requires_grad_(True)
    assert float((new - old).max()) <= c
    ref = (th.rand(500, generator=gen) * -10).to(dtype)
    estimate = KL_ESTIMATORS[estimator]
    pairs = [
        (lambda: sampled_kl(old, new, estimator, "reverse"), lambda: th.exp(new - old) * estimate(new, old)),
        (
            lambda: ratio_corrected_kl(new, old, ref, estimator),
            lambda: (th.exp(new - old).detach() if estimator == "k2" else th.exp(new - old)) * estimate(new, ref),
        ),
    ]
    for ours_fn, plain_fn in pairs:
        ours, plain = ours_fn(), plain_fn()
        assert th.equal(ours, plain)
        assert th.equal(th.autograd.grad(ours.sum(), new)[0], th.autograd.grad(plain.sum(), new)[0])


@pytest.mark.parametrize("dtype", [th.float32, th.float64])
def test_k3_is_the_plain_formula_bit_for_bit_below_the_overflow_guard(dtype: th.dtype):
    """Values and gradients for log r <= c are exactly clamp(expm1(log r) - log r, 0) and its gradient."""
    c = kl_k3_linear_from(dtype)
    log_r = th.cat(
        [th.linspace(-80, c, 20001, dtype=dtype), th.randn(1000, generator=th.Generator().manual_seed(0)).to(dtype)]
    )
    log_p = th.zeros_like(log_r).requires_grad_(True)
    plain_p = th.zeros_like(log_r).requires_grad_(True)
    ours = kl_k3(log_p, log_r)
    plain = th.clamp(th.expm1(log_r - plain_p) - (log_r - plain_p), min=0.0)
    assert th.equal(ours, plain)
    ours.sum().backward()
    plain.sum().backward()
    assert th.equal(log_p.grad, plain_p.grad)


def test_grpo_kl_term_is_finite_on_box_actions_where_the_kl_is_large():
    """
    GRPO's loss with beta > 0 on Pendulum-v1 (Box): log pi_ref - log pi_theta = 90 made the k3 term inf in float32
    and the update raised FloatingPointError; the loss and its gradient are now finite.
    """
    from stable_baselines3.common.env_util import make_vec_env

    from sb3_pg_ext import GRPO
    from sb3_pg_ext.grpo.grpo import UpdateData

    model = GRPO("MlpPolicy", make_vec_env("Pendulum-v1", n_envs=1, seed=0), beta=0.04, seed=0, device="cpu")
    n = 8
    observations = th.randn(n, 3, generator=th.Generator().manual_seed(0))
    actions = th.zeros(n, 1)
    with th.no_grad():
        log_prob = model.policy.get_distribution(observations).log_prob(actions)
    data = UpdateData(observations, actions, log_prob, log_prob + 90.0, th.zeros(n), th.full((n,), 1.0 / n))
    loss, stats = model._loss(data, th.arange(n), 0.2, 0.2)
    assert math.isfinite(loss.item()) and bool(th.isfinite(stats["kl_ref"]).all())
    loss.backward()
    assert all(bool(th.isfinite(p.grad).all()) for p in model.policy.parameters() if p.grad is not None)


def test_kl_estimators_are_unbiased_or_nonnegative_as_documented():
    gen = th.Generator().manual_seed(0)
    p_logits, q_logits = th.randn(6, generator=gen), th.randn(6, generator=gen)
    p, q = th.distributions.Categorical(logits=p_logits), th.distributions.Categorical(logits=q_logits)
    exact = th.distributions.kl_divergence(p, q).item()
    samples = p.sample((200_000,))
    log_p, log_q = p.log_prob(samples).double(), q.log_prob(samples).double()
    for estimator in (kl_k1, kl_k3):
        values = estimator(log_p, log_q)
        stderr = values.std().item() / math.sqrt(len(values))
        assert abs(values.mean().item() - exact) < 4 * stderr
    assert bool((kl_k3(log_p, log_q) >= 0).all())
    assert bool((kl_k2(log_p, log_q) >= 0).all())


def test_per_decision_log_weights_hand_values_and_clipping():
    log_pi = t64(np.log([2.0, 0.5, 4.0, 3.0]))
    log_mu = t64(np.zeros(4))
    starts = th.tensor([True, False, False, True])
    np.testing.assert_allclose(per_decision_log_weights(log_pi, log_mu, starts).exp().numpy(), [2, 1, 4, 3])
    clipped = per_decision_log_weights(log_pi, log_mu, starts, clip_ratio=2.5).exp().numpy()
    np.testing.assert_allclose(clipped, [2, 1, 2.5, 2.5])
    assert per_decision_log_weights(log_pi, log_mu, starts).dtype == th.float64
    with pytest.raises(ValueError, match="clip_ratio"):
        per_decision_log_weights(log_pi, log_mu, starts, clip_ratio=0.0)


def test_per_decision_weights_are_one_on_policy_and_finite_on_long_episodes():
    log_pi = th.randn(1000, dtype=th.float32)
    starts = th.zeros(1000, dtype=th.bool)
    assert bool((per_decision_log_weights(log_pi, log_pi, starts).exp() == 1).all())
    # 1000 steps with log-ratio 0.2 each: exp(200) overflows float32 but not float64.
    log_w = per_decision_log_weights(th.full((1000,), 0.2), th.zeros(1000), starts)
    assert math.isfinite(log_w.exp()[-1].item())
    assert log_w[-1].item() == pytest.approx(200.0, rel=1e-5)


def test_effective_sample_size():
    assert effective_sample_size(th.ones(10)).item() == pytest.approx(1.0)
    assert effective_sample_size(th.tensor([1.0, 0, 0, 0])).item() == pytest.approx(0.25)
    assert effective_sample_size(t64([1, 3])).item() == pytest.approx(16 / (2 * 10))


def test_group_advantages_hand_values():
    returns = t64([1, 2, 3, 5, 5, 5])
    groups = th.tensor([0, 0, 0, 1, 1, 1])
    adv = group_advantages(returns, groups, eps=0.0)
    std = math.sqrt(2 / 3)  # population std of (1, 2, 3)
    np.testing.assert_allclose(adv.numpy(), [-1 / std, 0, 1 / std, 0, 0, 0])
    np.testing.assert_allclose(group_advantages(returns, groups, scale_rewards="none").numpy(), [-1, 0, 1, 0, 0, 0])
    batch = group_advantages(returns, groups, scale_rewards="batch", eps=0.0)
    np.testing.assert_allclose(batch.numpy(), np.array([-1, 0, 1, 0, 0, 0]) / returns.numpy().std())
    # Floored std: a near-constant group cannot blow up.
    tiny = group_advantages(t64([0, 1e-9]), th.tensor([0, 0]), eps=0.0, min_std=0.1)
    assert tiny.abs().max().item() < 1e-8
    # A constant group gives exactly zero, whatever the rounding of its mean.
    assert bool((group_advantages(t64([0.1, 0.1, 0.1]), th.tensor([7, 7, 7])) == 0).all())
    with pytest.raises(ValueError, match="scale_rewards"):
        group_advantages(returns, groups, scale_rewards="median")


# --------------------------------------------------------------------------------------------------------------------
# Against the loop references on random episodes with random boundaries (terminated and truncated)
# --------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("gamma", [0.0, 0.9, 0.99, 1.0])
def test_returns_match_loop_reference(seed: int, gamma: float):
    rng = np.random.default_rng(seed)
    rewards, starts, bootstrap = random_episodes(rng, n_episodes=int(rng.integers(1, 30)))
    r, s, b = t64(rewards), th.as_tensor(starts), t64(bootstrap)
    np.testing.assert_allclose(reward_to_go(r, s, gamma, b).numpy(), loop_reward_to_go(rewards, starts, gamma, bootstrap))
    np.testing.assert_allclose(reward_to_go(r, s, gamma).numpy(), loop_reward_to_go(rewards, starts, gamma))
    np.testing.assert_allclose(
        discounted_returns(r, s, gamma, b).numpy(), loop_episode_return(rewards, starts, gamma, bootstrap), rtol=1e-10
    )


def test_reward_to_go_on_a_long_episode_is_exact():
    rng = np.random.default_rng(0)
    rewards = rng.normal(size=5000)
    starts = np.zeros(5000, dtype=bool)
    starts[[0, 4000]] = True
    expected = loop_reward_to_go(rewards, starts, 0.9)
    np.testing.assert_allclose(reward_to_go(t64(rewards), th.as_tensor(starts), 0.9).numpy(), expected, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("clip", [None, 1.0, 2.0])
def test_per_decision_log_weights_match_loop_reference(seed: int, clip: float | None):
    rng = np.random.default_rng(seed)
    _, starts, _ = random_episodes(rng, n_episodes=20)
    log_pi, log_mu = rng.normal(size=len(starts)) * 0.3, rng.normal(size=len(starts)) * 0.3
    got = per_decision_log_weights(t64(log_pi), t64(log_mu), th.as_tensor(starts), clip_ratio=clip).numpy()
    np.testing.assert_allclose(got, loop_log_weights(log_pi, log_mu, starts, clip), atol=1e-10)


@pytest.mark.parametrize("seed", range(3))
def test_baselines_and_sums_match_loop_reference(seed: int):
    rng = np.random.default_rng(seed)
    psi, starts, _ = random_episodes(rng, n_episodes=12)
    episodes = split_episodes(starts)
    sums = np.array([psi[b:e].sum() for b, e in episodes])
    counts = np.array([e - b for b, e in episodes])
    expected = np.concatenate(
        [np.full(e - b, (sums.sum() - sums[i]) / (counts.sum() - counts[i])) for i, (b, e) in enumerate(episodes)]
    )
    np.testing.assert_allclose(leave_one_out_baseline(t64(psi), th.as_tensor(starts)).numpy(), expected)
    means = sums / counts
    expected_episode = np.concatenate(
        [np.full(e - b, (means.sum() - means[i]) / (len(means) - 1)) for i, (b, e) in enumerate(episodes)]
    )
    np.testing.assert_allclose(
        leave_one_out_baseline(t64(psi), th.as_tensor(starts), weighting="episode").numpy(), expected_episode
    )
    np.testing.assert_allclose(
        batch_mean_baseline(t64(psi), th.as_tensor(starts), weighting="episode").numpy(), np.full(len(psi), means.mean())
    )
    np.testing.assert_allclose(episode_sums(t64(psi), th.as_tensor(starts)).numpy(), sums)
    np.testing.assert_array_equal(
        step_index(th.as_tensor(starts)).numpy(), np.concatenate([np.arange(e - b) for b, e in episodes])
    )


@pytest.mark.parametrize("seed", range(3))
def test_group_advantages_match_loop_reference(seed: int):
    rng = np.random.default_rng(seed)
    groups = rng.integers(0, 5, size=40)
    returns = rng.normal(size=40)
    adv = group_advantages(t64(returns), th.as_tensor(groups), eps=1e-4).numpy()
    for g in np.unique(groups):
        members = returns[groups == g]
        expected = (members - members.mean()) / (members.std() + 1e-4) if members.std() > 0 else 0 * members
        np.testing.assert_allclose(adv[groups == g], expected, atol=1e-12)
        assert abs(adv[groups == g].mean()) < 1e-10


@pytest.mark.parametrize("seed", range(3))
def test_optimal_baseline_matches_loop_reference(seed: int):
    rng = np.random.default_rng(seed)
    scores, returns = rng.normal(size=(7, 5)), rng.normal(size=7)
    got = optimal_baseline(t64(scores), t64(returns)).numpy()
    for i in range(7):
        others = [j for j in range(7) if j != i]
        for k in range(5):
            num = sum(scores[j, k] ** 2 * returns[j] for j in others)
            den = sum(scores[j, k] ** 2 for j in others)
            assert got[i, k] == pytest.approx(num / den)


def test_estimators_reject_malformed_inputs():
    with pytest.raises(ValueError, match="1-D"):
        reward_to_go(th.zeros(3, 2), th.ones(3, dtype=th.bool), 0.9)
    with pytest.raises(ValueError, match="steps"):
        reward_to_go(th.zeros(3), th.ones(4, dtype=th.bool), 0.9)
    with pytest.raises(ValueError, match=r"\(N, K\)"):
        optimal_baseline(th.zeros(3), th.zeros(3))


# --------------------------------------------------------------------------------------------------------------------
# Importance sampling against slow references (random episodes, some of length 1)
# --------------------------------------------------------------------------------------------------------------------


def random_ratio_episodes(n_steps: int, seed: int) -> tuple[th.Tensor, th.Tensor, th.Tensor, th.Tensor]:
    """Random log-probabilities, rewards and episode boundaries (episodes of random lengths, some of length 1)."""
    gen = th.Generator().manual_seed(seed)
    starts = th.rand(n_steps, generator=gen) < 0.15
    starts[0] = True
    log_prob = -th.rand(n_steps, generator=gen) * 2.0
    behaviour = -th.rand(n_steps, generator=gen) * 2.0
    rewards = th.randn(n_steps, generator=gen)
    return log_prob, behaviour, rewards, starts


def slow_running_products(log_prob, behaviour, starts, clip=None) -> list[float]:
    out, product = [], 1.0
    for t in range(len(log_prob)):
        if starts[t]:
            product = 1.0
        ratio = float(np.exp(float(log_prob[t]) - float(behaviour[t])))
        product *= ratio if clip is None else min(clip, ratio)
        out.append(product)
    return out


@pytest.mark.parametrize("clip", [None, 1.0, 1.5])
def test_per_decision_weights_equal_slow_running_product(clip):
    log_prob, behaviour, _, starts = random_ratio_episodes(400, seed=1)
    weights = th.exp(per_decision_log_weights(log_prob, behaviour, starts, clip))
    assert weights.dtype == th.float64
    np.testing.assert_allclose(weights.numpy(), slow_running_products(log_prob, behaviour, starts, clip), rtol=1e-10)


def test_per_decision_weights_are_exactly_one_on_policy():
    log_prob, _, _, starts = random_ratio_episodes(400, seed=2)
    weights = th.exp(per_decision_log_weights(log_prob, log_prob.clone(), starts))
    assert th.equal(weights, th.ones_like(weights))
    assert th.equal(th.exp(clipped_log_ratios(log_prob, log_prob.clone())), th.ones(400, dtype=th.float64))


def test_per_decision_weights_do_not_overflow_on_long_episodes():
    # 500 steps with ratio e^2 each: rho_{0:T} = e^1000 overflows, but the log-weights and the self-normalised
    # weights (normalised in log space) stay finite.
    log_prob, behaviour = th.zeros(500), th.full((500,), -2.0)
    starts = th.zeros(500, dtype=th.bool)
    starts[0] = True
    log_w = per_decision_log_weights(log_prob, behaviour, starts)
    assert th.isfinite(log_w).all() and log_w[-1].item() == pytest.approx(1000.0)
    normalized = self_normalized_log_weights(log_w, starts)
    assert th.isfinite(normalized).all()
    assert th.allclose(normalized, th.zeros_like(normalized))  # one episode: each weight is its own mean


def test_per_decision_returns_equal_slow_double_sum():
    log_prob, behaviour, rewards, starts = random_ratio_episodes(300, seed=3)
    gamma = 0.9
    log_w = per_decision_log_weights(log_prob, behaviour, starts)
    psi = per_decision_returns(rewards, log_w, starts, gamma)
    weights = slow_running_products(log_prob, behaviour, starts)
    ends = [*[t for t in range(1, 300) if starts[t]], 300]
    expected = []
    for t in range(300):
        end = next(e for e in ends if e > t)
        expected.append(sum(gamma ** (k - t) * weights[k] * float(rewards[k]) for k in range(t, end)))
    np.testing.assert_allclose(psi.numpy(), expected, rtol=1e-9, atol=1e-12)


def test_self_normalized_weights_divide_by_mean_over_the_batch():
    log_prob, behaviour, _, starts = random_ratio_episodes(300, seed=4)
    step = np.zeros(300, dtype=int)
    for t in range(1, 300):
        step[t] = 0 if starts[t] else step[t - 1] + 1
    episode = np.cumsum(starts.numpy()) - 1
    last_weight_step = {i: np.flatnonzero(episode == i)[-1] for i in np.unique(episode)}

    # Cumulative weights rho_{0:t}: D_t averages over all N episodes, an ended one at its last weight.
    w = th.exp(per_decision_log_weights(log_prob, behaviour, starts)).numpy()
    normalized = th.exp(self_normalized_log_weights(th.log(th.as_tensor(w)), starts)).numpy()
    for k in np.unique(step):
        per_episode = [
            w[np.flatnonzero((episode == i) & (step == min(k, step[last])))[0]] for i, last in last_weight_step.items()
        ]
        np.testing.assert_allclose(normalized[step == k], w[step == k] / np.mean(per_episode), rtol=1e-10)

    # Per-step ratios rho_t: D_t averages over the episodes still running at t.
    ratios = th.exp(clipped_log_ratios(log_prob, behaviour)).numpy()
    normalized = th.exp(self_normalized_log_weights(th.log(th.as_tensor(ratios)), starts, cumulative=False)).numpy()
    for k in np.unique(step):
        np.testing.assert_allclose(normalized[step == k], ratios[step == k] / ratios[step == k].mean(), rtol=1e-10)


# --------------------------------------------------------------------------------------------------------------------
# Group-relative advantages and loss aggregation
# --------------------------------------------------------------------------------------------------------------------


def test_group_advantages_have_zero_mean_and_unit_population_std_per_group():
    gen = th.Generator().manual_seed(0)
    returns = th.randn(6 * 5, generator=gen, dtype=th.float64) * 10 + 3
    groups = th.arange(30) // 5
    adv = group_advantages(returns, groups, "group", eps=0.0).view(6, 5)
    th.testing.assert_close(adv.mean(1), th.zeros(6, dtype=th.float64), atol=1e-12, rtol=0)
    # population std (1/G): exactly 1 after the division; the sample std (1/(G-1)) would give sqrt(G/(G-1))
    th.testing.assert_close(adv.std(1, unbiased=False), th.ones(6, dtype=th.float64))
    grouped = returns.view(6, 5)
    expected = (grouped - grouped.mean(1, keepdim=True)) / (grouped.std(1, unbiased=False, keepdim=True) + 1e-4)
    th.testing.assert_close(group_advantages(returns, groups, "group", eps=1e-4).view(6, 5), expected)


def test_scale_rewards_variants():
    returns = th.tensor([1.0, 3.0, 10.0, 30.0], dtype=th.float64)
    groups = th.tensor([0, 0, 1, 1])
    th.testing.assert_close(group_advantages(returns, groups, "none"), th.tensor([-1.0, 1.0, -10.0, 10.0], dtype=th.float64))
    th.testing.assert_close(
        group_advantages(returns, groups, "group", eps=0.0), th.tensor([-1.0, 1.0, -1.0, 1.0], dtype=th.float64)
    )
    batch_std = returns.std(unbiased=False)
    th.testing.assert_close(
        group_advantages(returns, groups, "batch", eps=0.0), th.tensor([-1.0, 1.0, -10.0, 10.0], dtype=th.float64) / batch_std
    )


def test_std_floor_bounds_near_constant_groups():
    returns = th.tensor([5.0, 5.0 + 1e-9, 7.0, 8.0], dtype=th.float64)
    groups = th.tensor([0, 0, 1, 1])
    unfloored = group_advantages(returns, groups, "group", eps=0.0, min_std=0.0)
    floored = group_advantages(returns, groups, "group", eps=0.0, min_std=1e-3)
    assert unfloored[:2].abs().max() == pytest.approx(1.0)  # rounding noise blown up to a full unit
    assert floored[:2].abs().max() < 1e-5


def test_process_advantages_normalise_step_rewards_across_the_group_and_sum_the_future():
    # group 0: episodes [1, 0] and [0, 0, 2]; group 1: [1] and [1] (constant: zero advantage)
    rewards = th.tensor([1.0, 0.0, 0.0, 0.0, 2.0, 1.0, 1.0], dtype=th.float64)
    starts = th.tensor([1, 0, 1, 0, 0, 1, 1], dtype=th.bool)
    groups = th.tensor([0, 0, 1, 1])
    group0 = rewards[:5]
    normalised = (group0 - group0.mean()) / group0.std(unbiased=False)
    expected = th.stack(
        [normalised[0] + normalised[1], normalised[1], normalised[2:5].sum(), normalised[3:5].sum(), normalised[4]]
    )
    adv = group_process_advantages(rewards, starts, groups, "group", eps=0.0)
    th.testing.assert_close(adv[:5], expected)
    assert th.all(adv[5:] == 0)


def test_loss_aggregation_weights_match_their_formulas():
    lengths = th.tensor([2, 3, 5])
    mask = th.tensor([True, False, True])
    expected = {
        "seq_sum": [1 / 2] * 2 + [0.0] * 3 + [1 / 2] * 5,
        "seq_mean": [1 / 4] * 2 + [0.0] * 3 + [1 / 10] * 5,
        "token_mean": [1 / 7] * 2 + [0.0] * 3 + [1 / 7] * 5,
        "constant": [1 / 20] * 2 + [0.0] * 3 + [1 / 20] * 5,
    }
    for mode, weights in expected.items():
        th.testing.assert_close(
            loss_aggregation_weights(lengths, mode, mask, max_length=10), th.tensor(weights, dtype=th.float64)
        )
    assert th.all(loss_aggregation_weights(lengths, "seq_sum", th.zeros(3, dtype=th.bool)) == 0)


# --------------------------------------------------------------------------------------------------------------------
# KL: sample estimators against the analytic KL, the adaptive rule
# --------------------------------------------------------------------------------------------------------------------


def random_categorical(gen: th.Generator, k: int, scale: float = 1.0) -> th.Tensor:
    return th.log_softmax(th.randn(k, generator=gen, dtype=th.float64) * scale, dim=0)


def test_k3_is_unbiased_non_negative_and_zero_at_the_reference():
    gen = th.Generator().manual_seed(0)
    n = 200_000
    for _ in range(5):
        log_p, log_q = random_categorical(gen, 6), random_categorical(gen, 6)
        exact_kl = (log_p.exp() * (log_p - log_q)).sum()
        samples = th.multinomial(log_p.exp(), n, replacement=True, generator=gen)
        k3 = kl_k3(log_p[samples], log_q[samples])
        assert th.all(k3 >= 0)
        standard_error = k3.std() / n**0.5
        assert abs(k3.mean() - exact_kl) < 4 * standard_error
        assert th.all(kl_k3(log_p[samples], log_p[samples]) == 0)


# A two-sided z-test at 4 standard errors: false alarm probability 6e-5 per check.
Z = 4.0


def random_pairs(family: str, n_states: int, generator: th.Generator) -> tuple[list, list, th.Tensor]:
    """
    pi_old, pi_theta and pi_theta's parameter (logits or mean) for a batch of states, close enough that the
    importance weights have finite variance.
    """
    if family == "categorical":
        old_logits = th.randn(n_states, 6, generator=generator)
        new_logits = (old_logits + 0.5 * th.randn(n_states, 6, generator=generator)).requires_grad_()
        return [Categorical(logits=old_logits)], [Categorical(logits=new_logits)], new_logits
    loc = th.randn(n_states, 3, generator=generator)
    scale = th.exp(0.3 * th.randn(n_states, 3, generator=generator))
    new_loc = (loc + 0.3 * th.randn(n_states, 3, generator=generator)).requires_grad_()
    new_scale = scale * th.exp(0.1 * th.randn(n_states, 3, generator=generator))  # < sqrt(2) * scale: finite variance
    return [Normal(loc, scale)], [Normal(new_loc, new_scale)], new_loc


def log_prob(distribution: th.distributions.Distribution, actions: th.Tensor) -> th.Tensor:
    lp = distribution.log_prob(actions)
    return lp.sum(-1) if isinstance(distribution, Normal) else lp


@pytest.mark.parametrize("family", ["categorical", "gaussian"])
@pytest.mark.parametrize("direction", ["forward", "reverse"])
def test_sample_estimators_agree_with_the_analytic_kl_in_expectation(family: str, direction: str):
    generator = th.Generator().manual_seed(0)
    n_states, n_samples = 8, 50_000
    old, new, _ = random_pairs(family, n_states, generator)
    exact = analytic_kl(old, new, direction).detach()  # (n_states,)
    th.manual_seed(1)
    actions = old[0].sample((n_samples,))  # (n_samples, n_states[, 3]) ~ pi_old
    old_lp, new_lp = log_prob(old[0], actions), log_prob(new[0], actions).detach()
    assert exact.min() > 0.01  # the pairs differ: the check has power
    for estimator in ("k1", "k3"):
        estimates = sampled_kl(old_lp, new_lp, estimator, direction)  # (n_samples, n_states)
        mean, std_error = estimates.mean(0), estimates.std(0) / math.sqrt(n_samples)
        assert th.all((mean - exact).abs() < Z * std_error), f"{estimator}: {mean} vs {exact} (se {std_error})"
        if estimator == "k3":
            assert estimates.min() >= 0


@pytest.mark.parametrize("family", ["categorical", "gaussian"])
@pytest.mark.parametrize("direction", ["forward", "reverse"])
@pytest.mark.parametrize("estimator", ["k1", "k3"])
def test_sample_estimators_give_unbiased_gradients_of_the_kl(family: str, direction: str, estimator: str):
    """The penalty's gradient, not only its value: E[grad k] = grad KL, checked over independent sample groups."""
    generator = th.Generator().manual_seed(2)
    old, new, leaf = random_pairs(family, 4, generator)
    exact = th.autograd.grad(analytic_kl(old, new, direction).sum(), leaf, retain_graph=True)[0]
    th.manual_seed(3)
    n_groups, group_size = 50, 4_000
    gradients = []
    for _ in range(n_groups):
        actions = old[0].sample((group_size,))
        estimate = sampled_kl(log_prob(old[0], actions), log_prob(new[0], actions), estimator, direction).mean(0).sum()
        gradients.append(th.autograd.grad(estimate, leaf, retain_graph=True)[0])
    stacked = th.stack(gradients)
    mean, std_error = stacked.mean(0), stacked.std(0) / math.sqrt(n_groups)
    assert exact.abs().max() > 0.05
    assert th.all((mean - exact).abs() < Z * std_error + 1e-6), f"{mean} vs {exact} (se {std_error})"


@pytest.mark.parametrize("direction", ["forward", "reverse"])
def test_k3_is_never_negative(direction: str):
    old_lp = th.zeros(2_001, dtype=th.float32)
    new_lp = th.cat([th.linspace(-30.0, 30.0, 2_000), th.tensor([1e-7])])
    assert sampled_kl(old_lp, new_lp, "k3", direction).min() >= 0
    assert sampled_kl(new_lp, old_lp, "k3", direction).min() >= 0
    # ... while k1 can be: it is unbiased only on average
    assert sampled_kl(old_lp, new_lp, "k1", direction).min() < 0


@pytest.mark.parametrize(
    ("kl", "expected"),
    [
        (0.0, 0.5),  # d < d_targ / 1.5: halve
        (0.0066, 0.5),
        (0.01 / 1.5, 1.0),  # on the band's edges: keep
        (0.01, 1.0),
        (0.015, 1.0),
        (0.0151, 2.0),  # d > 1.5 d_targ: double
        (1.0, 2.0),
    ],
)
def test_adaptive_rule_halves_keeps_or_doubles_beta(kl: float, expected: float):
    assert adapted_kl_coef(1.0, kl, kl_target=0.01) == pytest.approx(expected)


def test_adaptation_factor_and_threshold_settings_change_the_rule():
    # factor: beta is divided / multiplied by it
    assert adapted_kl_coef(1.0, 0.0, 0.01, factor=3.0) == pytest.approx(1 / 3)
    assert adapted_kl_coef(1.0, 1.0, 0.01, factor=3.0) == pytest.approx(3.0)
    # threshold: d = 3 d_targ doubles beta with the paper's 1.5 but is inside the band [d/4, 4d]
    assert adapted_kl_coef(1.0, 0.03, 0.01) == pytest.approx(2.0)
    assert adapted_kl_coef(1.0, 0.03, 0.01, threshold=4.0) == pytest.approx(1.0)
    assert adapted_kl_coef(1.0, 0.003, 0.01) == pytest.approx(0.5)
    assert adapted_kl_coef(1.0, 0.003, 0.01, threshold=4.0) == pytest.approx(1.0)


# ---------------------------------------------------------------------------------------------------------------------
# Hand-computed values of the estimators that the slow references above do not pin down
# ---------------------------------------------------------------------------------------------------------------------


def test_per_decision_returns_match_hand_computed_values():
    # Episodes [1, 2, 3] with rho_{0:t} = [2, 0.5, 1] and [4] with rho_0 = 3; gamma = 0.5:
    # psi_2 = 1 * 3 = 3, psi_1 = 0.5 * 2 + 0.5 * 3 = 2.5, psi_0 = 2 * 1 + 0.5 * 2.5 = 3.25; psi_3 = 3 * 4 = 12.
    rewards = t64([1, 2, 3, 4])
    log_weights = t64(np.log([2.0, 0.5, 1.0, 3.0]))
    starts = th.tensor([True, False, False, True])
    psi = per_decision_returns(rewards, log_weights, starts, gamma=0.5)
    assert psi.dtype == th.float64
    np.testing.assert_allclose(psi.numpy(), [3.25, 2.5, 3.0, 12.0], rtol=1e-12)


def test_self_normalized_log_weights_match_hand_computed_values():
    # Episode A: weights [2, 4, 8]; episode B: [0.5] (length 1).
    log_weights = t64(np.log([2.0, 4.0, 8.0, 0.5]))
    starts = th.tensor([True, False, False, True])
    # Cumulative: B keeps its last weight in every later D_t. D_0 = (2 + 0.5)/2, D_1 = (4 + 0.5)/2, D_2 = (8 + 0.5)/2.
    cumulative = self_normalized_log_weights(log_weights, starts).exp().numpy()
    np.testing.assert_allclose(cumulative, [2 / 1.25, 4 / 2.25, 8 / 4.25, 0.5 / 1.25], rtol=1e-12)
    # Per-step ratios: D_t averages the episodes still running at t. D_0 = 1.25, D_1 = 4, D_2 = 8.
    per_step = self_normalized_log_weights(log_weights, starts, cumulative=False).exp().numpy()
    np.testing.assert_allclose(per_step, [2 / 1.25, 1.0, 1.0, 0.5 / 1.25], rtol=1e-12)


def test_loss_aggregation_weights_hand_values_without_a_mask():
    lengths = th.tensor([1, 3])
    np.testing.assert_allclose(loss_aggregation_weights(lengths, "seq_sum").numpy(), [1 / 2] * 4)
    np.testing.assert_allclose(loss_aggregation_weights(lengths, "seq_mean").numpy(), [1 / 2, 1 / 6, 1 / 6, 1 / 6])
    np.testing.assert_allclose(loss_aggregation_weights(lengths, "token_mean").numpy(), [1 / 4] * 4)
    np.testing.assert_allclose(loss_aggregation_weights(lengths, "constant", max_length=5).numpy(), [1 / 10] * 4)
    with pytest.raises(ValueError, match="max_length"):
        loss_aggregation_weights(lengths, "constant")
    with pytest.raises(ValueError, match="loss_aggregation"):
        loss_aggregation_weights(lengths, "sum")


def test_sampled_kl_matches_hand_computed_values_in_both_directions():
    # pi_old(a) = 0.5, pi_theta(a) = 0.25: r = 0.5
    old_lp, lp = t64([math.log(0.5)]), t64([math.log(0.25)])
    ln2 = math.log(2)
    assert sampled_kl(old_lp, lp, "k1", "forward").item() == pytest.approx(ln2)  # -log r
    assert sampled_kl(old_lp, lp, "k2", "forward").item() == pytest.approx(0.5 * ln2**2)  # (log r)^2 / 2
    assert sampled_kl(old_lp, lp, "k3", "forward").item() == pytest.approx(0.5 - 1 + ln2)  # r - 1 - log r
    assert sampled_kl(old_lp, lp, "k1", "reverse").item() == pytest.approx(-0.5 * ln2)  # r log r
    assert sampled_kl(old_lp, lp, "k3", "reverse").item() == pytest.approx(-0.5 * ln2 - 0.5 + 1)  # r log r - r + 1


def test_one_table_of_sample_kl_estimators_serves_grpo_and_ppokl():
    import sb3_pg_ext.grpo.grpo as grpo_module
    import sb3_pg_ext.ppo_kl.ppo_kl as ppo_kl_module

    assert {"k1": kl_k1, "k2": kl_k2, "k3": kl_k3} == KL_ESTIMATORS
    assert grpo_module.KL_ESTIMATORS is KL_ESTIMATORS
    assert set(ppo_kl_module.KL_ESTIMATOR_CHOICES) - {"analytic"} <= set(KL_ESTIMATORS)
    # The functions that moved here are still importable from ppo_kl, as the same objects.
    for name in ("adapted_kl_coef", "analytic_kl", "analytic_kl_from_parameters", "sampled_kl"):
        assert getattr(ppo_kl_module, name) is globals()[name]


def test_categorical_and_normal_kl_match_hand_computed_values():
    p, q = th.tensor([[0.5, 0.5]]), th.tensor([[0.25, 0.75]])
    expected = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
    assert categorical_kl(p.log(), p, q.log(), q).item() == pytest.approx(expected)
    # q puts no mass where p does: inf; p puts none where q does: that term is 0.
    zero = th.tensor([[1.0, 0.0]])
    assert math.isinf(categorical_kl(p.log(), p, zero.log(), zero).item())
    assert categorical_kl(zero.log(), zero, p.log(), p).item() == pytest.approx(math.log(2))
    # KL(N(0, 1) || N(1, 2)) = log 2 + (1 + 1) / (2 * 4) - 1/2
    kl = normal_kl(th.tensor(0.0), th.tensor(1.0), th.tensor(1.0), th.tensor(2.0))
    assert kl.item() == pytest.approx(math.log(2) - 0.25)


@pytest.mark.parametrize("direction", ["forward", "reverse"])
def test_analytic_kl_from_parameters_is_the_analytic_kl_of_the_rebuilt_distributions(direction: str):
    # pi_old: Categorical [0.5, 0.5] and N(0, 1), laid out as [logits, loc, scale]; pi_theta: [0.25, 0.75] and N(1, 2).
    old_params = th.tensor([[math.log(0.5), math.log(0.5), 0.0, 1.0]])
    new = [Categorical(probs=th.tensor([[0.25, 0.75]])), Normal(th.tensor([[1.0]]), th.tensor([[2.0]]))]
    old = [Categorical(probs=th.tensor([[0.5, 0.5]])), Normal(th.tensor([[0.0]]), th.tensor([[1.0]]))]
    expanded = kl_parameters(old_params, new)  # [normalised logits, probabilities, loc, scale]
    th.testing.assert_close(expanded, th.tensor([[math.log(0.5), math.log(0.5), 0.5, 0.5, 0.0, 1.0]]))
    kl = analytic_kl_from_parameters(expanded, new, direction)
    th.testing.assert_close(kl, analytic_kl(old, new, direction))
    if direction == "forward":
        expected = 0.5 * math.log(2) + 0.5 * math.log(2 / 3) + math.log(2) - 0.25
        assert kl.item() == pytest.approx(expected)
    with pytest.raises(ValueError, match="distribution parameters"):
        analytic_kl_from_parameters(old_params, new, direction)  # not expanded: 4 columns where 6 are read
    with pytest.raises(ValueError, match="distribution parameters"):
        kl_parameters(th.zeros(1, 5), new)
