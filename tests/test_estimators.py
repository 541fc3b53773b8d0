"""sb3_pg_ext.estimators against hand-computed values and slow loop references on random episodes."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch as th

from sb3_pg_ext.estimators import (
    batch_mean_baseline,
    discounted_returns,
    effective_sample_size,
    episode_ids_from_starts,
    episode_sums,
    group_advantages,
    kl_k1,
    kl_k2,
    kl_k3,
    leave_one_out_baseline,
    optimal_baseline,
    per_decision_log_weights,
    reward_to_go,
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
