"""
PPOKL: the adaptive rule, the KL estimators, the stored old distribution, save/load of beta, the
equivalence with SB3's PPO when the penalty is off, and learning CartPole-v1, judged on the policy at the end of
learn() (100k steps with the zoo settings in the default suite; the defaults over 5 seeds x 200k steps marked slow).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch as th
from gymnasium import spaces
from stable_baselines3 import PPO
from stable_baselines3.common.env_util import make_vec_env

from sb3_pg_ext import PPOKL
from sb3_pg_ext.estimators import analytic_kl, analytic_kl_from_parameters, kl_parameters
from sb3_pg_ext.ppo_kl.buffers import (
    KLRolloutBuffer,
    action_distributions,
    distribution_parameters,
    distributions_from_parameters,
)
from tests.conftest import ENV_FACTORIES, flat_parameters, policy_for
from tests.learning import final_return

FAST = dict(n_steps=32, batch_size=32, n_epochs=2)


def cartpole(n_envs: int = 1, seed: int = 0):
    return make_vec_env("CartPole-v1", n_envs=n_envs, seed=seed)


# ---------------------------------------------------------------------------------------------------------------------
# The adaptive rule, through training (the rule itself: tests/test_estimators.py)
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("settings", "kl", "expected"),
    [
        ({}, 0.01, 1.0),
        ({}, 0.03, 2.0),
        ({}, 0.001, 0.5),
        ({"kl_adaptation_threshold": 4.0}, 0.03, 1.0),
        ({"kl_adaptation_factor": 3.0}, 0.03, 3.0),
        ({"kl_adaptation_factor": 3.0}, 0.001, 1 / 3),
        ({"adaptive_kl": False}, 0.03, 1.0),
    ],
)
def test_training_applies_the_rule_to_the_measured_rollout_kl(settings: dict, kl: float, expected: float, monkeypatch):
    """A controlled d (the rollout KL stubbed) drives beta once per rollout, with the configured factor/threshold."""
    model = PPOKL("MlpPolicy", cartpole(), seed=0, **FAST, **settings)
    monkeypatch.setattr(model, "_rollout_kl", lambda: kl)
    model.learn(32)  # one rollout, one update
    assert model.kl_coef == pytest.approx(expected)
    assert model.logger.name_to_value["train/kl_coef"] == pytest.approx(expected)
    assert model.logger.name_to_value["train/kl"] == pytest.approx(kl)


def test_tiny_learning_rate_halves_beta_and_large_one_doubles_it():
    """Real KLs: a 1e-10 step leaves pi_theta = pi_old (d ~ 0); 0.03 Adam steps move it far (d >> 1.5 d_targ)."""
    tiny = PPOKL("MlpPolicy", cartpole(), learning_rate=1e-10, seed=0, **FAST)
    for rollout in range(1, 4):
        tiny.learn(32, reset_num_timesteps=False)
        assert tiny.logger.name_to_value["train/kl"] < 1e-6
        assert tiny.kl_coef == 0.5**rollout

    large = PPOKL("MlpPolicy", cartpole(), learning_rate=0.03, kl_coef=0.01, seed=0, **FAST)
    for rollout in range(1, 4):
        large.learn(32, reset_num_timesteps=False)
        assert large.logger.name_to_value["train/kl"] > 1.5 * 0.01
        assert large.kl_coef == pytest.approx(0.01 * 2**rollout)


def test_minibatch_interval_adapts_after_every_step():
    settings = dict(learning_rate=1e-10, n_steps=64, batch_size=16, n_epochs=2, seed=0)  # 4 minibatches x 2 epochs
    per_rollout = PPOKL("MlpPolicy", cartpole(), **settings).learn(64)
    per_minibatch = PPOKL("MlpPolicy", cartpole(), kl_adaptation_interval="minibatch", **settings).learn(64)
    assert per_rollout.kl_coef == 0.5
    assert per_minibatch.kl_coef == 0.5**8


def test_beta_stays_within_its_bounds_and_logs_the_clamp(monkeypatch):
    """Low KL for ever: beta halves down to the lower bound, stays there (logged), and doubles back up from it."""
    model = PPOKL("MlpPolicy", cartpole(), kl_coef_bounds=(0.1, 0.4), kl_coef=0.4, seed=0, **FAST)
    kls = iter([0.0] * 4 + [1.0] * 3)
    monkeypatch.setattr(model, "_rollout_kl", lambda: next(kls))
    betas, clipped = [], []
    for _ in range(7):
        model.learn(32, reset_num_timesteps=False)
        betas.append(model.kl_coef)
        clipped.append(model.logger.name_to_value["train/kl_coef_clipped"])
    assert betas == [0.2, 0.1, 0.1, 0.1, 0.2, 0.4, 0.4]  # 0.05 and 0.8 clamped
    assert clipped == [0, 0, 1, 1, 0, 0, 1]


def test_default_bounds_keep_beta_recoverable(monkeypatch):
    """Before the bounds, 1,075 low-KL rollouts left beta at exactly 0.0, which doubling never leaves."""
    model = PPOKL("MlpPolicy", cartpole(), seed=0, **FAST)
    assert model.kl_coef_bounds == (1e-8, 1e8)
    model.kl_coef = 1.5e-8
    monkeypatch.setattr(model, "_rollout_kl", lambda: 0.0)
    model.learn(32)
    assert model.kl_coef == 1e-8
    monkeypatch.setattr(model, "_rollout_kl", lambda: 1.0)
    model.learn(32, reset_num_timesteps=False)
    assert model.kl_coef == 2e-8
    model.kl_coef = 7e7
    model.learn(32, reset_num_timesteps=False)
    assert model.kl_coef == 1e8


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(kl_coef_bounds=(0.0, 1.0)), r"kl_coef_bounds\[0\]"),
        (dict(kl_coef_bounds=(2.0, 1.0)), r"kl_coef_bounds\[1\]"),
        (dict(kl_coef_bounds=(1.0, math.inf)), r"kl_coef_bounds\[1\]"),
        (dict(kl_coef_bounds=1.0), "pair"),
        (dict(kl_coef_bounds=(1e-3, 1e-2)), r"`kl_coef` must lie within `kl_coef_bounds` \[0.001, 0.01\]"),
    ],
)
def test_bad_kl_coef_bounds_are_rejected(kwargs: dict, match: str):
    with pytest.raises((ValueError, TypeError), match=match):
        PPOKL("MlpPolicy", cartpole(), **kwargs)


def test_bounds_are_unused_without_adaptation_and_saved(tmp_path):
    fixed = PPOKL("MlpPolicy", cartpole(), adaptive_kl=False, kl_coef=0.0, seed=0, **FAST).learn(32)
    assert fixed.kl_coef == 0.0 and "train/kl_coef_clipped" not in fixed.logger.name_to_value
    model = PPOKL("MlpPolicy", cartpole(), kl_coef_bounds=(0.5, 2.0), seed=0, **FAST).learn(32)
    model.save(tmp_path / "bounded.zip")
    assert tuple(PPOKL.load(tmp_path / "bounded.zip").kl_coef_bounds) == (0.5, 2.0)


class TanhDropout(th.nn.Module):
    """An activation with dropout: the policy's output differs between training and eval mode."""

    def __init__(self) -> None:
        super().__init__()
        self.dropout = th.nn.Dropout(0.5)

    def forward(self, x: th.Tensor) -> th.Tensor:
        return self.dropout(th.tanh(x))


@pytest.mark.parametrize("estimator", ["analytic", "k3"])
def test_rollout_kl_is_measured_in_the_mode_pi_old_acted_in(estimator: str):
    """
    With dropout and a 1e-10 step the policy does not change, so d ~ 0: measured in eval mode, as pi_old acted and
    was stored. Measured in training mode (before the fix) d was the dropout's noise (about 0.004 here).
    """
    model = PPOKL(
        "MlpPolicy",
        cartpole(),
        learning_rate=1e-10,
        kl_estimator=estimator,
        policy_kwargs=dict(activation_fn=TanhDropout, ortho_init=False),  # unscaled action_net: dropout shows
        seed=0,
        **FAST,
    )
    model.learn(32)
    assert model.logger.name_to_value["train/kl"] < 1e-6
    assert not model.policy.training  # left in eval mode, as collect_rollouts needs it


# ---------------------------------------------------------------------------------------------------------------------
# The stored old distribution (analytic KL)
# ---------------------------------------------------------------------------------------------------------------------


def rollout_log_prob(distributions: list, actions: th.Tensor, action_space: spaces.Space) -> th.Tensor:
    """log pi(a|s) of SB3's distributions, from the rebuilt torch distributions."""
    if isinstance(action_space, spaces.Discrete):
        return distributions[0].log_prob(actions.long().flatten())
    if isinstance(action_space, spaces.MultiDiscrete):
        return th.stack([d.log_prob(actions[:, i].long()) for i, d in enumerate(distributions)]).sum(0)
    return distributions[0].log_prob(actions).sum(1)


@pytest.mark.parametrize(
    ("env_name", "extra"),
    [(name, {}) for name in ENV_FACTORIES] + [("box", {"use_sde": True, "sde_sample_freq": 4})],
    ids=[*ENV_FACTORIES, "box_gsde"],
)
def test_stored_old_distribution_is_the_acting_policy(env_name: str, extra: dict):
    """
    The parameters stored for each step rebuild pi_old: they give the log-probabilities that SB3 stored when
    acting, sit next to the right observation after the buffer's shuffling, and have KL 0 to the unchanged policy.
    """
    env = make_vec_env(lambda: ENV_FACTORIES[env_name](0), n_envs=2, seed=0)
    model = PPOKL(policy_for(env_name), env, n_steps=16, batch_size=8, seed=0, **extra)
    _, callback = model._setup_learn(32, None)
    assert model.collect_rollouts(model.env, callback, model.rollout_buffer, n_rollout_steps=model.n_steps)
    buffer = model.rollout_buffer
    assert isinstance(buffer, KLRolloutBuffer)

    def parameters(obs):
        return distribution_parameters(model.policy.get_distribution(obs))

    buffer.store_old_distributions(parameters, batch_size=5)  # chunks that do not divide the rollout
    n_seen = 0
    with th.no_grad():
        for data in buffer.get(batch_size=8):
            current = model.policy.get_distribution(data.observations)
            old = distributions_from_parameters(data.old_distribution_params, like=current)
            lp = rollout_log_prob(old, data.actions, model.action_space)
            np.testing.assert_allclose(lp.numpy(), data.old_log_prob.numpy(), rtol=0, atol=1e-5)
            np.testing.assert_allclose(data.old_distribution_params.numpy(), parameters(data.observations).numpy(), atol=1e-6)
            kl = analytic_kl(old, distributions_from_parameters(parameters(data.observations), like=current))
            assert kl.abs().max() < 1e-6
            n_seen += len(data.old_log_prob)
    assert n_seen == 32


@pytest.mark.parametrize(
    ("env_name", "extra"),
    [(name, {}) for name in ("discrete", "multidiscrete", "multibinary", "box")] + [("box", {"use_sde": True})],
    ids=["discrete", "multidiscrete", "multibinary", "box", "box_gsde"],
)
@pytest.mark.parametrize("direction", ["forward", "reverse"])
def test_kl_on_stored_parameters_is_torchs_kl_divergence_bit_for_bit(env_name: str, extra: dict, direction: str):
    """
    What train() computes on every minibatch (the KL formulas on the parameter tensors) gives exactly the values and
    gradients of torch's ``kl_divergence`` on rebuilt distributions, zero-probability actions included (inf where
    pi_theta has none, 0 where pi_old has none).
    """
    env = make_vec_env(lambda: ENV_FACTORIES[env_name](0), n_envs=1, seed=0)
    model = PPOKL(policy_for(env_name), env, n_steps=16, batch_size=8, seed=0, **extra)
    obs = th.as_tensor(np.stack([model.observation_space.sample() for _ in range(16)])).float()
    with th.no_grad():  # pi_old: the policy's parameters, each scaled by a random positive factor (scales stay > 0)
        old_params = distribution_parameters(model.policy.get_distribution(obs))
        old_params *= th.exp(0.5 * th.randn(old_params.shape, generator=th.Generator().manual_seed(1)))
        old_params += 0.5 * th.randn(old_params.shape, generator=th.Generator().manual_seed(2)).clamp(min=0)
    if env_name in ("discrete", "multidiscrete"):  # zero probabilities on either side (exp underflows at -200)
        old_params[0, 0] = -200.0
    results = []
    for fast in (True, False):
        model.policy.zero_grad()
        distribution = model.policy.get_distribution(obs)
        if fast:
            components = action_distributions(distribution)
            kl = analytic_kl_from_parameters(kl_parameters(old_params, components), components, direction)
        else:
            old = distributions_from_parameters(old_params, like=distribution)
            kl = analytic_kl(old, action_distributions(distribution), direction)
        finite = th.isfinite(kl)
        kl[finite].sum().backward()
        grads = [p.grad.clone() for p in model.policy.parameters() if p.grad is not None]
        results.append((kl.detach(), grads))
    (kl_fast, grads_fast), (kl_torch, grads_torch) = results
    assert th.equal(kl_fast, kl_torch)
    assert grads_fast and all(th.equal(a, b) for a, b in zip(grads_fast, grads_torch, strict=True))
    assert kl_fast[th.isfinite(kl_fast)].max() > 1e-3  # the pairs differ
    if env_name in ("discrete", "multidiscrete"):  # the zero-probability case was exercised
        assert bool(th.isinf(kl_fast[0])) == (direction == "reverse")


# ---------------------------------------------------------------------------------------------------------------------
# Save / load, and the equivalence with SB3's PPO
# ---------------------------------------------------------------------------------------------------------------------


def test_save_load_and_continued_learning_keep_beta(tmp_path):
    # A tiny step keeps d ~ 0, so beta halves once per rollout: beta tells how many rollouts it has seen.
    model = PPOKL("MlpPolicy", cartpole(), learning_rate=1e-10, seed=0, **FAST).learn(3 * 32)
    assert model.kl_coef == 1 / 8
    model.save(tmp_path / "ppokl.zip")

    loaded = PPOKL.load(tmp_path / "ppokl.zip", env=cartpole(seed=1))
    assert loaded.kl_coef == 1 / 8
    loaded.learn(2 * 32, reset_num_timesteps=False)
    assert loaded.num_timesteps == 5 * 32
    assert loaded.kl_coef == 1 / 32  # continued from the saved beta, not from kl_coef=1.0

    model.learn(2 * 32, reset_num_timesteps=False)  # the same holds without a save
    assert model.kl_coef == 1 / 32


@pytest.mark.parametrize("target_kl", [None, 0.0005])
def test_penalty_free_clipped_update_equals_ppo(target_kl: float | None):
    """kl_coef=0, adaptive_kl=False, clip_range=0.2: one update is SB3 PPO's update (same data, same start)."""
    settings = dict(n_steps=64, batch_size=32, n_epochs=4, learning_rate=1e-3, clip_range=0.2, target_kl=target_kl, seed=0)
    # Each model is built (which seeds torch) and trained before the next: they share torch's global generator.
    ppo = PPO("MlpPolicy", cartpole(n_envs=2), **settings)
    start = flat_parameters(ppo)
    ppo.learn(128)  # one rollout of 2 x 64 steps, then one train() call
    ppokl = PPOKL("MlpPolicy", cartpole(n_envs=2), kl_coef=0.0, adaptive_kl=False, **settings)
    np.testing.assert_array_equal(start, flat_parameters(ppokl))
    ppokl.learn(128)
    penalised = PPOKL("MlpPolicy", cartpole(n_envs=2), kl_coef=1.0, adaptive_kl=False, **settings).learn(128)

    np.testing.assert_array_equal(ppo.rollout_buffer.observations, ppokl.rollout_buffer.observations)
    np.testing.assert_array_equal(ppo.rollout_buffer.actions, ppokl.rollout_buffer.actions)
    assert ppo._n_updates == ppokl._n_updates
    if target_kl is not None:
        assert ppo._n_updates < 4, "the early stop did not trigger: the check would not cover it"

    after_ppo, after_ppokl = flat_parameters(ppo), flat_parameters(ppokl)
    assert np.abs(after_ppo - start).max() > 1e-3
    np.testing.assert_allclose(after_ppokl, after_ppo, rtol=0, atol=1e-6)
    # The check has power: the same update with the penalty on lands elsewhere.
    assert np.abs(flat_parameters(penalised) - after_ppo).max() > 1e-4


def test_pure_penalty_is_the_default_and_never_clips():
    model = PPOKL("MlpPolicy", cartpole(), seed=0, **FAST)
    assert model.clip_range is None
    model.learn(64)
    assert model.logger.name_to_value["train/clip_fraction"] == 0.0
    assert model.logger.name_to_value["train/approx_kl"] > 0


def test_penalty_in_train_restrains_the_update():
    """PPOKL's own train(): the same rollout and steps move pi_theta away from pi_old far less with a large beta."""

    def rollout_kl(kl_coef: float) -> float:
        model = PPOKL("MlpPolicy", cartpole(), learning_rate=3e-3, kl_coef=kl_coef, adaptive_kl=False, seed=0, **FAST)
        model.n_epochs = 10
        model.learn(32)
        return model.logger.name_to_value["train/kl"]

    free, penalised = rollout_kl(0.0), rollout_kl(100.0)
    assert free > 1e-3  # the unpenalised steps do move the policy: the check has power
    assert penalised < free / 10


# ---------------------------------------------------------------------------------------------------------------------
# Non-finite values: the loss before backward, the gradients before the clipping and the step
# ---------------------------------------------------------------------------------------------------------------------


def _collected(**kwargs) -> PPOKL:
    """A model with one complete rollout, ready for train()."""
    model = PPOKL("MlpPolicy", cartpole(), seed=0, **FAST, **kwargs)
    _, callback = model._setup_learn(32, None)
    assert model.collect_rollouts(model.env, callback, model.rollout_buffer, n_rollout_steps=model.n_steps)
    return model


def test_non_finite_loss_raises_before_backward_and_leaves_the_parameters(monkeypatch):
    model = _collected()
    before = flat_parameters(model)
    monkeypatch.setattr(model, "_kl", lambda data, distribution, log_prob: th.full_like(data.old_log_prob, math.nan))
    with pytest.raises(FloatingPointError, match=r"PPOKL: non-finite loss at update 1 "):
        model.train()
    np.testing.assert_array_equal(flat_parameters(model), before)
    assert all(param.grad is None for param in model.policy.parameters())  # no backward ran
    assert not model.policy.optimizer.state  # no Adam step


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_non_finite_gradient_raises_before_the_step_naming_the_parameter(bad: float):
    """A finite loss whose gradient is NaN/inf in one parameter: the error names it; nothing was written."""
    model = _collected()
    before = flat_parameters(model)
    name, param = next((n, p) for n, p in model.policy.named_parameters() if n.startswith("action_net"))
    param.register_hook(lambda grad: grad * bad)
    with pytest.raises(FloatingPointError, match=rf"PPOKL: non-finite gradient of parameter '{name}' at update 1 "):
        model.train()
    np.testing.assert_array_equal(flat_parameters(model), before)
    assert not model.policy.optimizer.state
    # the other gradients were not scaled by the non-finite norm (the check runs before the clipping)
    others = [p.grad for n, p in model.policy.named_parameters() if n != name and p.grad is not None]
    assert others and all(bool(th.isfinite(grad).all()) for grad in others)


# ---------------------------------------------------------------------------------------------------------------------
# Learning: the policy that learn() returns after the whole budget (tests/learning.py), never the best evaluation on the
# way. Budgets and seeds: docs/ppo_kl.md; the bars were set on runs of a final-policy script retired in 0.2.0 (in the
# git history before commit 78297a0); today's figures of the defaults: the final-policies preset, docs/benchmark.md.
# ---------------------------------------------------------------------------------------------------------------------

#: rl-zoo3's PPO CartPole-v1 hyperparameters (n_envs=8, n_steps=32, batch_size=256, gae_lambda=0.8, gamma=0.98,
#: n_epochs=20, ent_coef=0, learning_rate=lin_0.001), without the clipping: PPOKL's pure penalty objective.
CARTPOLE_HYPERPARAMS = dict(
    n_steps=32,
    batch_size=256,
    gae_lambda=0.8,
    gamma=0.98,
    n_epochs=20,
    ent_coef=0.0,
    learning_rate=lambda progress_remaining: 1e-3 * progress_remaining,
)


CARTPOLE_CI_BUDGET = 100_000


@pytest.mark.parametrize("seed", [0, 1])
def test_ppokl_with_zoo_cartpole_settings_ends_solved(seed: int):
    """rl-zoo3's CartPole settings (8 envs, about 20 CPU seconds per seed): the final policy after 100k steps."""
    model = PPOKL("MlpPolicy", cartpole(n_envs=8, seed=seed), seed=seed, device="cpu", **CARTPOLE_HYPERPARAMS)
    final = final_return(model, "CartPole-v1", CARTPOLE_CI_BUDGET, seed)
    print(f"PPOKL (zoo settings) seed {seed}: final deterministic eval {final:.1f} after {model.num_timesteps} steps")
    assert final >= 475


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_ppokl_defaults_end_solved_on_cartpole_after_200k_steps(seed: int):
    """PPOKL's defaults on make_vec_env("CartPole-v1", n_envs=1): the final policy after learn(200_000)."""
    model = PPOKL("MlpPolicy", cartpole(n_envs=1, seed=seed), seed=seed, device="cpu")
    final = final_return(model, "CartPole-v1", 200_000, seed)
    print(f"PPOKL defaults seed {seed}: final deterministic eval {final:.1f} after {model.num_timesteps} steps")
    assert final >= 475
