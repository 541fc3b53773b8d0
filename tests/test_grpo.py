"""GRPO (SPEC §4): group advantages, same-seed groups, the KL term and its gradient, loss normalisation, learning."""

from __future__ import annotations

import time

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.envs import IdentityEnv
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.logger import KVWriter, Logger
from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv, VecNormalize

from sb3_pg_ext import GRPO
from sb3_pg_ext.envs import success_rate
from sb3_pg_ext.estimators import (
    group_advantages,
    group_process_advantages,
    kl_k1,
    kl_k3,
    loss_aggregation_weights,
)
from sb3_pg_ext.grpo.grpo import GROUP_SEED_LIMIT, GroupStartError, UpdateData

CARTPOLE = "CartPole-v1"


def make_grpo(env_id: str = CARTPOLE, n_envs: int = 1, vec_env_cls=None, seed: int = 0, **kwargs) -> GRPO:
    # "fork" starts SubprocVecEnv workers in a fraction of the default start method's time
    vec_env_kwargs = dict(start_method="fork") if vec_env_cls is SubprocVecEnv else None
    env = make_vec_env(env_id, n_envs=n_envs, seed=seed, vec_env_cls=vec_env_cls, vec_env_kwargs=vec_env_kwargs)
    defaults = dict(group_size=4, n_groups=3, n_epochs=1, batch_size=None)
    return GRPO("MlpPolicy", env, seed=seed, device="cpu", **{**defaults, **kwargs})


def collect(model: GRPO) -> None:
    """One rollout into ``model.rollout_buffer``, as ``learn`` does it."""
    _, callback = model._setup_learn(1, None)
    assert model.collect_rollouts(model.env, callback, model.rollout_buffer)


def initial_observations(model: GRPO) -> np.ndarray:
    batch = model.rollout_buffer.get()
    starts = batch.observations[batch.episode_starts].cpu().numpy()
    return starts.reshape(model.n_groups, model.group_size, -1)


def flat_grad(model: GRPO, loss: th.Tensor) -> th.Tensor:
    params = [p for p in model.policy.parameters() if p.requires_grad]
    grads = th.autograd.grad(loss, params, allow_unused=True)
    return th.cat([(th.zeros_like(p) if g is None else g).reshape(-1) for g, p in zip(grads, params, strict=True)])


# ---------------------------------------------------------------------------------------------------------------------
# Group-relative advantages
# ---------------------------------------------------------------------------------------------------------------------


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


def test_zero_variance_groups_get_zero_advantage_and_are_counted():
    model = make_grpo(group_size=4, n_groups=3)
    collect(model)
    batch = model.rollout_buffer.get()
    # Make group 1's episodes all score the same (one reward of 1 at the last step, 0 elsewhere).
    rewards = th.zeros_like(batch.rewards)
    ends = th.cumsum(batch.episode_lengths, 0) - 1
    rewards[ends[4:8]] = 1.0
    rewards[ends[0]], rewards[ends[9]] = 2.0, 3.0
    model.rollout_buffer._batch = batch._replace(rewards=rewards)
    data = model._prepare_update(model.rollout_buffer.get())
    episode_of_step = th.repeat_interleave(th.arange(12), batch.episode_lengths)
    assert th.all(data.advantages[(episode_of_step >= 4) & (episode_of_step < 8)] == 0)
    assert th.any(data.advantages[episode_of_step < 4] != 0)
    assert model.logger.name_to_value["rollout/zero_std_groups"] == pytest.approx(1 / 3)


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


# ---------------------------------------------------------------------------------------------------------------------
# Same-seed groups
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("vec_env_cls", "n_envs"),
    [(DummyVecEnv, 1), (DummyVecEnv, 2), (DummyVecEnv, 4), (SubprocVecEnv, 2), (SubprocVecEnv, 4)],
    ids=["dummy-1", "dummy-2", "dummy-4", "subproc-2", "subproc-4"],
)
def test_every_group_starts_from_one_state(vec_env_cls, n_envs: int):
    """G = 3: n_envs below G (a group spans waves) and above G (a wave holds parts of two groups)."""
    model = make_grpo(n_envs=n_envs, vec_env_cls=vec_env_cls, group_size=3, n_groups=3)
    try:
        collect(model)
        starts = initial_observations(model)
        for group in starts:
            assert np.all(group == group[0]), "episodes of one group started from different states"
        assert len({tuple(group[0]) for group in starts}) == 3, "different groups should start from different states"
        batch = model.rollout_buffer.get()
        assert batch.n_episodes == 9
        # Episode k of the rollout is played by env k mod n_envs.
        np.testing.assert_array_equal(batch.episode_env_indices.numpy(), np.arange(9) % n_envs)
    finally:
        model.env.close()


def test_group_starts_are_compared_before_vec_normalize_scaling():
    env = VecNormalize(make_vec_env(CARTPOLE, n_envs=1, seed=0))
    model = GRPO("MlpPolicy", env, seed=0, device="cpu", group_size=4, n_groups=2, n_epochs=1)
    model.learn(1_000)  # the running statistics change between the waves of a group; the check still passes
    assert model.num_timesteps >= 1_000


class SeedIgnoringEnv(gym.Env):
    """Draws its initial state from an RNG that reset(seed=...) does not touch."""

    def __init__(self):
        self.observation_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
        self.action_space = gym.spaces.Discrete(2)
        self._own_rng = np.random.default_rng()

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return self._own_rng.uniform(-1, 1, 2).astype(np.float32), {}

    def step(self, action):
        return np.zeros(2, np.float32), 1.0, True, False, {}


@pytest.mark.parametrize("n_envs", [1, 4])
def test_env_that_ignores_its_seed_raises_a_clear_error(n_envs: int):
    env = make_vec_env(SeedIgnoringEnv, n_envs=n_envs)
    model = GRPO("MlpPolicy", env, seed=0, device="cpu", group_size=4, n_groups=2)
    with pytest.raises(GroupStartError, match=r"SeedIgnoringEnv.*ignores the seed.*verify_group_starts=False"):
        model.learn(100)
    model = GRPO("MlpPolicy", env, seed=0, device="cpu", group_size=4, n_groups=2, verify_group_starts=False)
    model.learn(100)


def test_group_seeds_are_reproducible_survive_save_load_and_stay_below_the_evaluation_range(monkeypatch, tmp_path):
    import sb3_pg_ext.grpo.grpo as grpo_module

    resets: list[list[int | None]] = []
    seed_next_reset = grpo_module._seed_next_reset
    monkeypatch.setattr(
        grpo_module, "_seed_next_reset", lambda env, seeds: (resets.append(seeds), seed_next_reset(env, seeds))
    )
    first, second = make_grpo(seed=3, n_envs=2), make_grpo(seed=3, n_envs=2)
    collect(first)
    collect(second)
    np.testing.assert_array_equal(initial_observations(first), initial_observations(second))
    # 12 episodes on 2 envs: 6 waves, each group's seed used by its G = 4 episodes, all below the evaluation range
    rollout = [seed for wave in resets[:6] for seed in wave]
    assert resets[:6] == resets[6:12]
    assert all(rollout[4 * g : 4 * g + 4] == [rollout[4 * g]] * 4 for g in range(3))
    assert all(0 <= seed < GROUP_SEED_LIMIT for seed in rollout)
    # The seed generator is saved: a reloaded model draws the same next groups as the original.
    first.save(tmp_path / "grpo")
    loaded = GRPO.load(tmp_path / "grpo", env=first.get_env(), device="cpu")
    resets.clear()
    collect(first)
    collect(loaded)
    assert resets[:6] == resets[6:12]
    assert [seed for wave in resets[:6] for seed in wave] != rollout


@pytest.mark.parametrize(
    "options",
    [
        dict(advantage="process"),
        dict(scale_rewards="batch", loss_aggregation="token_mean"),
        dict(scale_rewards="none", loss_aggregation="seq_mean", clip_range_high=0.28),
        dict(beta=0.1, kl_in_reward=True, drop_zero_std_groups=True, mask_truncated=True),
        dict(beta=0.1, kl_estimator="k2", ref_update_interval=2, ref_mixup_alpha=0.5),
        dict(beta=0.1, kl_estimator="k1", kl_ratio_correction=True, loss_aggregation="constant"),
    ],
    ids=str,
)
def test_every_option_trains(options: dict):
    model = make_grpo(n_epochs=2, batch_size=32, **options)
    before = th.cat([p.detach().reshape(-1).clone() for p in model.policy.parameters()])
    model.learn(500)
    after = th.cat([p.detach().reshape(-1) for p in model.policy.parameters()])
    assert th.all(th.isfinite(after))
    assert not th.equal(before, after)


# ---------------------------------------------------------------------------------------------------------------------
# The KL term
# ---------------------------------------------------------------------------------------------------------------------


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


def kl_only_model(beta: float, kl_ratio_correction: bool, k: int = 4) -> GRPO:
    """A GRPO whose policy is one Categorical: logits = action_net.bias (no hidden layer, weights zeroed)."""
    env = make_vec_env(lambda: IdentityEnv(dim=k), n_envs=1)
    model = GRPO(
        "MlpPolicy",
        env,
        beta=beta,
        kl_ratio_correction=kl_ratio_correction,
        policy_kwargs=dict(net_arch=[]),
        device="cpu",
        seed=0,
    )
    with th.no_grad():
        model.policy.action_net.weight.zero_()
    return model


def kl_term_gradient_per_action(model: GRPO, theta, old, ref) -> tuple[th.Tensor, th.Tensor]:
    """d(loss)/d(theta) of GRPO's KL term for one sample of each action (advantages 0, so only beta*D_t remains)."""
    k = theta.shape[0]
    with th.no_grad():
        model.policy.action_net.bias.copy_(theta)
    observations = th.zeros(k, dtype=th.long)  # any fixed state
    actions = th.arange(k)
    data = UpdateData(observations, actions, old[actions].float(), ref[actions].float(), th.zeros(k), th.ones(k))
    per_action = []
    for a in range(k):
        loss, _ = model._loss(data, th.tensor([a]), 0.2, 0.2)
        per_action.append(th.autograd.grad(loss, model.policy.action_net.bias)[0].double())
    return th.stack(per_action), old.exp()


def test_kl_term_gradient_is_biased_without_ratio_correction_and_unbiased_with_it():
    """
    Samples come from pi_old != pi_theta. The exact gradient of KL(pi_theta || pi_ref) comes from autograd on the
    closed form; the sample-mean gradient of the loss term (N draws) is compared to it with a 4-sigma tolerance
    derived from the per-sample gradients' standard error.
    """
    gen = th.Generator().manual_seed(1)
    k, n = 4, 20_000
    theta = th.randn(k, generator=gen, dtype=th.float64)
    old = random_categorical(gen, k)
    ref = random_categorical(gen, k)
    theta_var = theta.clone().requires_grad_(True)
    log_pi = th.log_softmax(theta_var, 0)
    exact = th.autograd.grad((log_pi.exp() * (log_pi - ref)).sum(), theta_var)[0]

    samples = th.multinomial(old.exp(), n, replacement=True, generator=gen)
    counts = th.bincount(samples, minlength=k).double()
    for correction in (False, True):
        model = kl_only_model(beta=1.0, kl_ratio_correction=correction, k=k)
        per_action, p_old = kl_term_gradient_per_action(model, theta, old, ref)
        estimate = (counts[:, None] * per_action).sum(0) / n
        second_moment = (counts[:, None] * per_action.pow(2)).sum(0) / n
        standard_error = ((second_moment - estimate.pow(2)).clamp(min=0) / n).sqrt()
        expectation = (p_old[:, None] * per_action).sum(0)
        if correction:
            assert th.all((estimate - exact).abs() < 4 * standard_error + 1e-6)
            th.testing.assert_close(expectation, exact, rtol=1e-4, atol=1e-5)
        else:
            assert th.any((estimate - exact).abs() > 10 * standard_error), "the uncorrected k3 gradient should be biased"
            assert (expectation - exact).abs().max() > 0.05


def test_k1_in_the_reward_gives_the_gradient_of_the_kl_regularised_objective():
    """
    One-step episodes, actions from pi_theta (first epoch: ratio 1): with A(a) = r(a) - beta * k1(a), the expected
    surrogate gradient sum_a pi(a) grad[r_t A] equals grad (E_pi[r] - beta KL(pi || pi_ref)) exactly.
    """
    gen = th.Generator().manual_seed(2)
    k, beta = 5, 0.7
    theta = th.randn(k, generator=gen, dtype=th.float64)
    ref = random_categorical(gen, k)
    reward = th.randn(k, generator=gen, dtype=th.float64)
    theta_var = theta.clone().requires_grad_(True)
    log_pi = th.log_softmax(theta_var, 0)
    objective = (log_pi.exp() * reward).sum() - beta * (log_pi.exp() * (log_pi - ref)).sum()
    exact = th.autograd.grad(objective, theta_var)[0]

    model = kl_only_model(beta=beta, kl_ratio_correction=False, k=k)
    with th.no_grad():
        model.policy.action_net.bias.copy_(theta)
    log_pi_now = th.log_softmax(theta, 0)
    shaped = reward - beta * kl_k1(log_pi_now, ref)  # what kl_in_reward does to each step's reward
    actions = th.arange(k)
    data = UpdateData(th.zeros(k, dtype=th.long), actions, log_pi_now.float(), None, shaped.float(), th.ones(k))
    expected_gradient = th.zeros(k, dtype=th.float64)
    for a in range(k):
        loss, _ = model._loss(data, th.tensor([a]), 0.2, 0.2)
        expected_gradient -= log_pi_now[a].exp() * th.autograd.grad(loss, model.policy.action_net.bias)[0].double()
    th.testing.assert_close(expected_gradient, exact, rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------------------------------------------------------------
# Loss aggregation and minibatches
# ---------------------------------------------------------------------------------------------------------------------


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


@pytest.mark.parametrize("loss_aggregation", ["seq_sum", "seq_mean", "token_mean", "constant"])
def test_minibatch_gradients_of_one_epoch_add_up_to_the_full_batch_gradient(loss_aggregation: str):
    model = make_grpo(
        group_size=4,
        n_groups=3,
        n_epochs=2,
        batch_size=16,
        beta=0.1,
        ent_coef=0.01,
        loss_aggregation=loss_aggregation,
        max_length=500,
    )
    model.learn(600)  # the last rollout's pi_old now differs from pi_theta: ratios != 1, some clipped
    data = model._prepare_update(model.rollout_buffer.get())
    steps = data.trained_steps
    full_loss, stats = model._loss(data, steps, 0.1, 0.1)
    assert stats["clipped"].any()
    full = flat_grad(model, full_loss)
    summed = th.zeros_like(full)
    total = 0.0
    for minibatch in th.randperm(len(steps)).split(16):
        loss, _ = model._loss(data, steps[minibatch], 0.1, 0.1)
        summed += flat_grad(model, loss)
        total += loss.item()
    th.testing.assert_close(summed, full, rtol=1e-4, atol=1e-6)
    assert total == pytest.approx(full_loss.item(), rel=1e-5)


# ---------------------------------------------------------------------------------------------------------------------
# Options
# ---------------------------------------------------------------------------------------------------------------------


def test_no_value_network_is_built():
    model = make_grpo()
    names = [name for name, _ in model.policy.named_parameters()]
    assert not any("value" in name or "vf" in name for name in names), names
    assert not hasattr(model.policy, "value_net") and not hasattr(model.policy, "predict_values")
    optimised = {id(p) for group in model.policy.optimizer.param_groups for p in group["params"]}
    assert optimised == {id(p) for p in model.policy.parameters()}
    assert isinstance(model.policy.optimizer, th.optim.AdamW)
    with pytest.raises(ValueError, match="no value network"):
        make_grpo(policy_kwargs=dict(net_arch=dict(pi=[32], vf=[32])))


def test_beta_zero_builds_and_evaluates_no_reference(monkeypatch):
    model = make_grpo(beta=0.0)
    assert model.ref_policy is None
    assert "ref_policy" not in model._get_torch_save_params()[0]
    model.learn(300)
    assert "train/kl_ref" not in model.logger.name_to_value


def test_reference_is_frozen_initial_policy_and_survives_save_load(tmp_path):
    model = make_grpo(beta=0.1)
    initial = [p.detach().clone() for p in model.policy.parameters()]
    model.learn(600)
    for ref_param, initial_param in zip(model.ref_policy.parameters(), initial, strict=True):
        assert th.equal(ref_param, initial_param)
        assert not ref_param.requires_grad
    assert not all(th.equal(a, b) for a, b in zip(initial, model.policy.parameters(), strict=True))
    model.save(tmp_path / "grpo")
    loaded = GRPO.load(tmp_path / "grpo", env=model.get_env(), device="cpu")
    for a, b in zip(model.ref_policy.parameters(), loaded.ref_policy.parameters(), strict=True):
        assert th.equal(a, b)


def test_reference_refresh_by_hard_copy_and_by_mixing():
    model = make_grpo(beta=0.1, ref_update_interval=1)
    model.learn(300)
    for a, b in zip(model.ref_policy.parameters(), model.policy.parameters(), strict=True):
        assert th.equal(a, b)
    model = make_grpo(beta=0.1, ref_update_interval=1, ref_mixup_alpha=0.25)
    ref_before = [p.detach().clone() for p in model.ref_policy.parameters()]
    with th.no_grad():
        for p in model.policy.parameters():
            p.add_(1.0)
    model._refresh_reference()
    for after, before, param in zip(model.ref_policy.parameters(), ref_before, model.policy.parameters(), strict=True):
        th.testing.assert_close(after, 0.25 * param + 0.75 * before)


def test_user_reference_policy_is_copied_and_checked():
    pretrained = make_grpo(seed=7)
    model = make_grpo(seed=0, beta=0.1, reference_policy=pretrained.policy)
    for a, b in zip(model.ref_policy.parameters(), pretrained.policy.parameters(), strict=True):
        assert th.equal(a, b)
    other = make_grpo(policy_kwargs=dict(net_arch=[8]))
    with pytest.raises(ValueError, match="architecture"):
        make_grpo(beta=0.1, reference_policy=other.policy)


def test_kl_in_reward_shapes_the_returns_with_k1():
    model = make_grpo(beta=0.5, kl_in_reward=True, scale_rewards="none")
    model.learn(600)
    batch = model.rollout_buffer.get()
    data = model._prepare_update(batch)
    with th.no_grad():
        ref = model.ref_policy.get_distribution(batch.observations).log_prob(batch.actions)
    shaped = batch.rewards.double() - 0.5 * (batch.log_probs - ref).double()
    returns = th.stack([seg.sum() for seg in shaped.split(batch.episode_lengths.tolist())])
    expected = group_advantages(returns, th.arange(12) // 4, "none")
    th.testing.assert_close(
        data.advantages.double(), th.repeat_interleave(expected, batch.episode_lengths), rtol=1e-5, atol=1e-5
    )
    assert model.logger.name_to_value["train/kl_ref"] != 0.0


def test_drop_zero_std_groups_and_mask_truncated_remove_episodes_from_the_loss():
    model = make_grpo(drop_zero_std_groups=True, mask_truncated=True)
    collect(model)
    batch = model.rollout_buffer.get()
    rewards = th.zeros_like(batch.rewards)  # every group constant -> every group dropped
    model.rollout_buffer._batch = batch._replace(rewards=rewards)
    before = [p.detach().clone() for p in model.policy.parameters()]
    model.train()
    assert all(th.equal(a, b) for a, b in zip(before, model.policy.parameters(), strict=True))
    assert model.logger.name_to_value["train/episodes_in_loss"] == 0

    model = make_grpo(mask_truncated=True)
    collect(model)
    batch = model.rollout_buffer.get()
    truncated = th.zeros(12, dtype=th.bool)
    truncated[[1, 5]] = True
    data = model._prepare_update(batch._replace(episode_truncated=truncated))
    episode_of_step = th.repeat_interleave(th.arange(12), batch.episode_lengths)
    assert th.all(data.weights[(episode_of_step == 1) | (episode_of_step == 5)] == 0)
    kept = data.weights[(episode_of_step != 1) & (episode_of_step != 5)]
    th.testing.assert_close(kept, th.full_like(kept, 1 / 10))  # seq_sum over the 10 episodes left


def test_clip_range_high_clips_only_above_its_own_bound():
    model = kl_only_model(beta=0.0, kl_ratio_correction=False)
    observations = th.zeros(3, dtype=th.long)
    actions = th.zeros(3, dtype=th.long)
    log_pi = model.policy.get_distribution(observations).log_prob(actions).detach()
    ratios = th.tensor([1.25, 0.75, 1.5])
    data = UpdateData(observations, actions, log_pi - th.log(ratios), None, th.ones(3), th.ones(3) / 3)
    _, stats = model._loss(data, th.arange(3), 0.2, 0.3)
    np.testing.assert_allclose(stats["ratio"].numpy(), ratios.numpy(), rtol=1e-5)
    assert stats["clipped"].tolist() == [False, True, True]


class CaptureWriter(KVWriter):
    def __init__(self) -> None:
        self.rows: list[dict] = []

    def write(self, key_values, key_excluded, step=0) -> None:
        self.rows.append(dict(key_values))


@pytest.mark.parametrize("architecture", ["mlp", "transformer"])
def test_token_task_logs_success_rate_and_group_statistics(architecture: str):
    env = make_vec_env("sb3_pg_ext/DigitReverse-v0", n_envs=8, seed=0)
    policy_kwargs = dict(features_extractor_kwargs=dict(architecture=architecture))
    model = GRPO("TokenPolicy", env, seed=0, device="cpu", group_size=8, n_groups=2, beta=0.01, policy_kwargs=policy_kwargs)
    writer = CaptureWriter()
    model.set_logger(Logger(None, [writer]))
    model.learn(800)
    logged = {key: value for row in writer.rows for key, value in row.items()}
    for key in ("train/kl_ref", "train/clip_fraction", "rollout/group_return_std", "rollout/zero_std_groups"):
        assert np.isfinite(logged[key]), key
    assert 0.0 <= logged["rollout/success_rate"] <= 1.0
    assert 0.0 <= logged["rollout/zero_std_groups"] <= 1.0


# ---------------------------------------------------------------------------------------------------------------------
# Learning: each test stops at the first evaluation that reaches its threshold (about 45 CPU s for the three
# CartPole seeds, 25 CPU s for the token task on one core), so both run in the default suite
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_grpo_defaults_solve_cartpole(seed: int):
    env = make_vec_env(CARTPOLE, n_envs=1, seed=seed)
    eval_env = make_vec_env(CARTPOLE, n_envs=1, seed=10_000 + seed)
    model = GRPO("MlpPolicy", env, seed=seed, device="cpu")
    start, best = time.process_time(), -np.inf
    while model.num_timesteps < 200_000 and best < 475:
        model.learn(10_000, reset_num_timesteps=False)
        best = max(best, evaluate_policy(model, eval_env, n_eval_episodes=10, deterministic=True)[0])
    cpu_seconds = time.process_time() - start
    print(f"GRPO seed {seed}: deterministic eval {best:.1f} after {model.num_timesteps} steps, {cpu_seconds:.0f} CPU s")
    assert best >= 475
    assert model.num_timesteps <= 200_000 + 10_000


def test_grpo_learns_digit_reversal_in_minutes():
    """Greedy success >= 0.9 on 200 held-out prompts (seeds disjoint from training) within 10 CPU minutes."""
    env = make_vec_env("sb3_pg_ext/DigitReverse-v0", n_envs=16, seed=0)
    model = GRPO(
        "TokenPolicy", env, seed=0, device="cpu", group_size=16, n_groups=32, n_epochs=2, batch_size=512, ent_coef=0.01
    )
    eval_env = gym.make("sb3_pg_ext/DigitReverse-v0")
    eval_seeds = range(GROUP_SEED_LIMIT, GROUP_SEED_LIMIT + 200)
    start, greedy = time.process_time(), 0.0
    while greedy < 0.9 and model.num_timesteps < 1_000_000 and time.process_time() - start < 600:
        model.learn(50_000, reset_num_timesteps=False)
        greedy = success_rate(lambda obs: model.predict(obs, deterministic=True)[0], eval_env, eval_seeds)
    cpu_seconds = time.process_time() - start
    print(f"GRPO DigitReverse: greedy success {greedy:.3f} after {model.num_timesteps} steps, {cpu_seconds:.0f} CPU s")
    assert greedy >= 0.9
    assert cpu_seconds < 600
