"""
REINFORCE's defaults on CartPole-v1 (one env), with the final-policy protocol of ``tests/learning.py``: train for the
whole budget, then evaluate the policy that ``learn()`` returns (deterministic, 10 episodes, an env seeded
10_000 + seed), never the best evaluation on the way.

- Default suite: seed 0, 50k steps (the default learning rate decays to 0 over that budget), final return >= 150:
  a policy that has learned most of the task (a random one scores about 20). Measured with a final-policy script
  retired in 0.2.0 (in the git history before commit 78297a0): 361.8, 252.9, 186.0 for seeds 0, 1, 2 (about 35 CPU s
  each); the bar leaves room below the weakest seed, since another machine's floating point can change a run's
  trajectory.
- ``slow``: 5 seeds x 200k steps, each final policy >= 475. The same runs, measured with that retired script, ended
  at 500.0, 494.5, 500.0, 500.0, 500.0 (about 125 CPU s each).

Today's figures of the defaults: the ``final-policies`` preset of ``python -m sb3_pg_ext.benchmark``, in
docs/benchmark.md (Final policies of the defaults).
"""

from __future__ import annotations

import pytest
from stable_baselines3.common.env_util import make_vec_env

from sb3_pg_ext import REINFORCE
from tests.learning import final_return

CI_BUDGET, CI_THRESHOLD = 50_000, 150.0


def defaults_model(seed: int) -> REINFORCE:
    return REINFORCE("MlpPolicy", make_vec_env("CartPole-v1", n_envs=1, seed=seed), seed=seed, device="cpu")


def test_reinforce_defaults_learn_cartpole_in_a_short_budget():
    final = final_return(defaults_model(0), "CartPole-v1", CI_BUDGET, seed=0)
    print(f"REINFORCE seed 0: final deterministic eval {final:.1f} after {CI_BUDGET} steps")
    assert final >= CI_THRESHOLD


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(5))
def test_reinforce_defaults_solve_cartpole_at_the_end_of_200k_steps(seed: int):
    model = defaults_model(seed)
    final = final_return(model, "CartPole-v1", 200_000, seed)
    print(f"REINFORCE seed {seed}: final deterministic eval {final:.1f} after {model.num_timesteps} steps")
    assert final >= 475
    assert model.num_timesteps < 200_000 + 500  # no new episode after the budget (CartPole episodes: <= 500 steps)
