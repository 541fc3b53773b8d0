"""
The conformance matrix: every algorithm of the package behaves like an SB3 algorithm.

Parametrised over ``tests/algos.py::ALGO_CASES``; each case asserts an outcome.
"""

from __future__ import annotations

import copy
import glob
import os

import numpy as np
import pytest
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback, CheckpointCallback, EvalCallback
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.logger import configure
from stable_baselines3.common.off_policy_algorithm import OffPolicyAlgorithm
from stable_baselines3.common.utils import set_random_seed
from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv, VecNormalize

from tests.algos import ALGO_CASES, AlgoCase
from tests.conftest import ENV_FACTORIES, NaNRewardEnv, flat_parameters, policy_for

algo_cases = pytest.mark.parametrize("case", ALGO_CASES, ids=str)

# Run the matrix on another device with e.g. SB3_PG_EXT_DEVICE=cuda, to catch tensors left on the CPU.
DEVICE = os.environ.get("SB3_PG_EXT_DEVICE", "cpu")


def make_model(case: AlgoCase, env_name: str = "discrete", seed: int = 0, n_envs: int = 1, vec_env_cls=None, **extra):
    env = make_vec_env(lambda: ENV_FACTORIES[env_name](seed), n_envs=n_envs, seed=seed, vec_env_cls=vec_env_cls)
    kwargs = {**case.kwargs, **extra}
    return case.algo(policy_for(env_name), env, seed=seed, device=DEVICE, **kwargs)


@algo_cases
@pytest.mark.parametrize("env_name", list(ENV_FACTORIES))
def test_learning_updates_parameters_on_every_space(case: AlgoCase, env_name: str):
    model = make_model(case, env_name)
    before = flat_parameters(model)
    model.learn(case.budget)
    after = flat_parameters(model)
    assert model.num_timesteps >= case.budget
    assert model._n_updates >= 1
    assert np.all(np.isfinite(after))
    assert not np.allclose(before, after), "training did not change the policy"
    assert len(model.ep_info_buffer) > 0, "no complete episode was recorded by the Monitor"


def zero_gradients_before_every_step(model: BaseAlgorithm) -> None:
    """Wrap the policy optimiser's ``step`` so that it always sees a zero gradient."""
    optimizer = model.policy.optimizer
    step = optimizer.step

    def zeroed_step(*args, **kwargs):
        for group in optimizer.param_groups:
            for param in group["params"]:
                if param.grad is not None:
                    param.grad.zero_()
        return step(*args, **kwargs)

    optimizer.step = zeroed_step  # type: ignore[method-assign]


@algo_cases
@pytest.mark.parametrize("env_name", ["discrete", "box"])
def test_parameters_move_only_through_their_gradient(case: AlgoCase, env_name: str):
    """What makes the test above meaningful: with a zero gradient at every step, no parameter moves (no weight
    decay or other update that acts without a gradient, log_std included)."""
    model = make_model(case, env_name)
    zero_gradients_before_every_step(model)
    before = flat_parameters(model)
    model.learn(case.budget)
    assert model._n_updates >= 1
    np.testing.assert_array_equal(before, flat_parameters(model))


@algo_cases
def test_non_finite_gradient_raises_before_the_step_and_leaves_parameters_unchanged(case: AlgoCase):
    model = make_model(case, "discrete")
    first = next(model.policy.parameters())
    first.register_hook(lambda grad: grad * float("nan"))
    before = flat_parameters(model)
    with pytest.raises(FloatingPointError) as info:
        model.learn(case.budget)
    message = str(info.value)
    assert case.algo.__name__ in message and "gradient" in message and "update" in message, message
    np.testing.assert_array_equal(before, flat_parameters(model))


class KeepLastRollout(BaseCallback):
    """Keeps a copy of the rollout buffer as it is when each rollout ends, before ``train`` consumes it."""

    def __init__(self) -> None:
        super().__init__()
        self.rollout_buffer = None

    def _on_step(self) -> bool:
        return True

    def _on_rollout_end(self) -> None:
        if not isinstance(self.model, OffPolicyAlgorithm):
            self.rollout_buffer = copy.deepcopy(self.model.rollout_buffer)


def one_more_update(model: BaseAlgorithm, data: KeepLastRollout, data_from: BaseAlgorithm) -> None:
    """One ``train()`` call on a copy of the last rollout (or of ``data_from``'s replay buffer), from a fixed RNG
    state."""
    model.set_logger(configure(folder=None, format_strings=[]))
    set_random_seed(123)
    if isinstance(model, OffPolicyAlgorithm):
        model.replay_buffer = copy.deepcopy(data_from.replay_buffer)
        model.train(gradient_steps=1, batch_size=model.batch_size)
    else:
        model.rollout_buffer = copy.deepcopy(data.rollout_buffer)
        model.train()


@algo_cases
def test_updates_past_the_budget_use_the_schedule_at_its_end(case: AlgoCase):
    # Complete episodes, groups or rollouts end past the budget, so the last update runs at a negative progress
    # remaining (1 - num_timesteps / total_timesteps). rl-zoo3's "lin_" schedules (progress * initial) are not
    # clamped: that update would run with a negative learning rate, an ascent that undid the training.
    model = make_model(case, "discrete", learning_rate=lambda progress: 1e-3 * progress)
    rates: list[float] = []
    progress: list[float] = []
    train = model.train

    def recording_train(*args, **kwargs):
        train(*args, **kwargs)
        rates.append(model.policy.optimizer.param_groups[0]["lr"])
        progress.append(model._current_progress_remaining)

    model.train = recording_train  # type: ignore[method-assign]
    budget = case.budget + 1
    model.learn(budget)
    assert model.num_timesteps > budget, "the case must end past the budget for this test to mean anything"
    assert len(rates) >= 2 and rates[0] > 0.0
    assert min(progress) >= 0.0 and min(rates) >= 0.0, (progress, rates)
    assert rates[-1] == 0.0  # the last update ran past the budget: the schedule's end


@algo_cases
def test_predict_deterministic_and_stochastic(case: AlgoCase):
    model = make_model(case, "discrete")
    env = model.get_env()
    obs = env.reset()
    deterministic = [model.predict(obs, deterministic=True)[0].item() for _ in range(20)]
    assert len(set(deterministic)) == 1
    stochastic = [model.predict(obs, deterministic=False)[0].item() for _ in range(100)]
    assert len(set(stochastic)) > 1, "a freshly initialised stochastic policy should sample several actions"
    assert all(model.action_space.contains(a) for a in stochastic)


@algo_cases
@pytest.mark.parametrize("env_name", ["discrete", "box", "dict_obs"])
def test_save_load_roundtrip(case: AlgoCase, env_name: str, tmp_path):
    model = make_model(case, env_name)
    last_rollout = KeepLastRollout()
    model.learn(case.budget, callback=last_rollout)
    path = tmp_path / "model.zip"
    model.save(path)
    loaded = case.algo.load(path, env=model.get_env(), device=DEVICE)
    np.testing.assert_array_equal(flat_parameters(model), flat_parameters(loaded))
    obs = model.get_env().reset()
    for _ in range(5):
        np.testing.assert_array_equal(model.predict(obs, deterministic=True)[0], loaded.predict(obs, deterministic=True)[0])
        obs, *_ = model.get_env().step(model.predict(obs, deterministic=True)[0])
    # The optimiser state travels too.
    opt_a = model.policy.optimizer.state_dict()["state"]
    opt_b = loaded.policy.optimizer.state_dict()["state"]
    assert opt_a.keys() == opt_b.keys()
    for key in opt_a:
        for name in opt_a[key]:
            np.testing.assert_array_equal(np.asarray(opt_a[key][name]), np.asarray(opt_b[key][name]))
    # Everything that shapes an update travels: one more update of each, on the same data from the same RNG state,
    # gives identical parameters (and moves them, so the comparison is not vacuous).
    before_update = flat_parameters(model)
    one_more_update(model, last_rollout, data_from=model)
    one_more_update(loaded, last_rollout, data_from=model)
    assert not np.array_equal(before_update, flat_parameters(model)), "the extra update did not change the policy"
    np.testing.assert_array_equal(flat_parameters(model), flat_parameters(loaded))


@algo_cases
def test_same_seed_gives_same_parameters(case: AlgoCase):
    first = make_model(case, "box", seed=3).learn(case.budget)
    second = make_model(case, "box", seed=3).learn(case.budget)
    other = make_model(case, "box", seed=4).learn(case.budget)
    np.testing.assert_array_equal(flat_parameters(first), flat_parameters(second))
    assert not np.allclose(flat_parameters(first), flat_parameters(other))


@algo_cases
def test_dummy_and_subproc_vec_env_agree(case: AlgoCase):
    dummy = make_model(case, "discrete", seed=5, n_envs=2, vec_env_cls=DummyVecEnv).learn(case.budget)
    subproc_model = make_model(case, "discrete", seed=5, n_envs=2, vec_env_cls=SubprocVecEnv)
    try:
        subproc_model.learn(case.budget)
        assert subproc_model.num_timesteps == dummy.num_timesteps
        np.testing.assert_allclose(flat_parameters(dummy), flat_parameters(subproc_model), rtol=0, atol=1e-6)
    finally:
        subproc_model.get_env().close()


@algo_cases
def test_vec_normalize(case: AlgoCase, tmp_path):
    env = VecNormalize(make_vec_env(lambda: ENV_FACTORIES["box"](0), n_envs=2, seed=0), gamma=0.99)
    model = case.algo("MlpPolicy", env, seed=0, device=DEVICE, **case.kwargs)
    model.learn(case.budget)
    assert env.obs_rms.count > case.budget  # statistics were updated from every env step
    assert np.all(np.isfinite(flat_parameters(model)))
    env.save(str(tmp_path / "vecnormalize.pkl"))
    restored = VecNormalize.load(str(tmp_path / "vecnormalize.pkl"), make_vec_env(lambda: ENV_FACTORIES["box"](0), n_envs=2))
    np.testing.assert_array_equal(restored.obs_rms.mean, env.obs_rms.mean)


@algo_cases
def test_eval_and_checkpoint_callbacks(case: AlgoCase, tmp_path):
    model = make_model(case, "discrete")
    eval_env = make_vec_env(lambda: ENV_FACTORIES["discrete"](1), n_envs=1)
    eval_cb = EvalCallback(eval_env, eval_freq=100, n_eval_episodes=2, log_path=str(tmp_path / "eval"), verbose=0)
    ckpt_cb = CheckpointCallback(save_freq=100, save_path=str(tmp_path / "ckpt"), name_prefix="m")
    model.learn(case.budget, callback=[eval_cb, ckpt_cb])
    evaluations = np.load(tmp_path / "eval" / "evaluations.npz")
    assert len(evaluations["timesteps"]) >= 2
    checkpoints = sorted(glob.glob(str(tmp_path / "ckpt" / "m_*_steps.zip")))
    assert len(checkpoints) >= 2
    reloaded = case.algo.load(checkpoints[-1], device=DEVICE)
    assert reloaded.num_timesteps > 0


@algo_cases
def test_progress_bar(case: AlgoCase, capsys):
    model = make_model(case, "discrete")
    model.learn(case.budget, progress_bar=True)
    out = capsys.readouterr()
    assert f"/{case.budget}" in out.out + out.err, "the progress bar did not render the total"


@algo_cases
def test_tensorboard_logs_algorithm_keys(case: AlgoCase, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    model = make_model(case, "discrete", tensorboard_log=str(tmp_path))
    model.learn(case.budget, tb_log_name="run")
    run_dirs = glob.glob(str(tmp_path / "run_*"))
    assert len(run_dirs) == 1
    accumulator = EventAccumulator(run_dirs[0])
    accumulator.Reload()
    scalars = set(accumulator.Tags()["scalars"])
    missing = set(case.logged_keys) - scalars
    assert not missing, f"keys not written to TensorBoard: {sorted(missing)}"
    assert "rollout/ep_rew_mean" in scalars


@algo_cases
def test_invalid_hyperparameters_raise(case: AlgoCase):
    assert case.invalid, "every algorithm lists its invalid settings"
    env = make_vec_env(lambda: ENV_FACTORIES["discrete"](0), n_envs=1)
    for key, value, words in case.invalid:
        with pytest.raises((ValueError, TypeError)) as info:
            case.algo("MlpPolicy", env, **{**case.kwargs, key: value})
        message = str(info.value)
        for word in words:
            assert word in message, f"{key}={value!r}: {word!r} not in error message {message!r}"


@algo_cases
def test_non_finite_reward_raises_clear_error(case: AlgoCase):
    env = make_vec_env(lambda: NaNRewardEnv(ENV_FACTORIES["discrete"](0), at_step=3), n_envs=1)
    model = case.algo("MlpPolicy", env, seed=0, device=DEVICE, **case.kwargs)
    before = flat_parameters(model)
    with pytest.raises((ValueError, FloatingPointError), match="non-finite"):
        model.learn(case.budget)
    after = flat_parameters(model)
    assert np.all(np.isfinite(after))
    np.testing.assert_array_equal(before, after)


def test_conformance_covers_every_exported_algorithm():
    import sb3_pg_ext

    exported = {
        getattr(sb3_pg_ext, name)
        for name in sb3_pg_ext.__all__
        if isinstance(getattr(sb3_pg_ext, name), type) and issubclass(getattr(sb3_pg_ext, name), BaseAlgorithm)
    }
    assert len(exported) == 4
    tested = {case.algo for case in ALGO_CASES}
    assert exported <= tested, f"not in the conformance matrix: {exported - tested}"
