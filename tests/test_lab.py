"""
The estimator lab (sb3_pg_ext.lab): the gradient it reads is the one the algorithm's update applies; on the bandit
its variance and bias agree with the exact values within their standard errors; an interrupted run resumes without
recomputing what is stored; a folder is tied to the checkpoint it was measured at (a run at another one is refused and
writes nothing); --conf-file supplies the --train-fraction entry; the report rebuilds from the stored files alone; bad
command lines exit with status 2.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch as th
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.vec_env import DummyVecEnv

from sb3_pg_ext import GRPO, ISPG, REINFORCE
from sb3_pg_ext.lab import LabRun, read_gradient
from sb3_pg_ext.lab.checkpoints import load_model, policy_digest
from sb3_pg_ext.lab.cli import main
from sb3_pg_ext.lab.options import GRPOAdapter, ReinforceAdapter
from sb3_pg_ext.lab.report import build_report
from sb3_pg_ext.lab.run import CheckpointMismatchError
from sb3_pg_ext.lab.stats import bias_statistics
from tests.pg_envs import GaussianBandit, IndependentStepsEnv

SGD = {"optimizer_class": th.optim.SGD, "optimizer_kwargs": {}}


def _flat_parameters(model) -> np.ndarray:
    return th.cat([p.detach().reshape(-1).double() for p in model.policy.parameters() if p.requires_grad]).numpy()


def _collect(model, batch_size: int) -> None:
    """One batch with the algorithm's own collector."""
    _, callback = model._setup_learn(10**9, None)
    if isinstance(model, ISPG):
        from stable_baselines3.common.type_aliases import TrainFreq, TrainFrequencyUnit

        model.collect_rollouts(model.env, callback, TrainFreq(batch_size, TrainFrequencyUnit.EPISODE), model.replay_buffer)
    else:
        model.collect_rollouts(model.env, callback, model.rollout_buffer)


def _models(seed: int):
    env = lambda: make_vec_env(IndependentStepsEnv, n_envs=1, seed=seed, vec_env_cls=DummyVecEnv)  # noqa: E731
    common = {"learning_rate": 1.0, "max_grad_norm": None, "policy_kwargs": SGD, "seed": seed, "device": "cpu"}
    return {
        "reinforce": (REINFORCE("MlpPolicy", env(), n_episodes=6, baseline="value", **common), lambda m: m.train()),
        "reinforce-optimal": (
            REINFORCE("MlpPolicy", env(), n_episodes=6, reward_to_go=False, baseline="optimal", **common),
            lambda m: m.train(),
        ),
        "ispg": (ISPG("MlpPolicy", env(), batch_size=6, **common), lambda m: m.train(gradient_steps=1, batch_size=6)),
        "grpo": (
            GRPO("MlpPolicy", env(), group_size=3, n_groups=2, n_epochs=1, batch_size=None, **common),
            lambda m: m.train(),
        ),
    }


@pytest.mark.parametrize("name", ["reinforce", "reinforce-optimal", "ispg", "grpo"])
def test_read_gradient_is_the_gradient_the_update_applies(name: str) -> None:
    """Same parameters, same batch: a real SGD step with lr = 1 moves the parameters by exactly -g."""
    model, train = _models(3)[name]
    _collect(model, 6)
    before = _flat_parameters(model)
    gradient = read_gradient(model, lambda: train(model))
    np.testing.assert_array_equal(_flat_parameters(model), before)  # the lab's read changed nothing
    assert np.linalg.norm(gradient) > 0
    train(model)  # the algorithm's own step with plain SGD, lr = 1
    np.testing.assert_allclose(before - _flat_parameters(model), gradient, rtol=1e-5, atol=1e-6)


def test_read_gradient_refuses_several_steps() -> None:
    model = GRPO(
        "MlpPolicy",
        make_vec_env(IndependentStepsEnv, n_envs=1, seed=0),
        group_size=2,
        n_groups=2,
        n_epochs=2,
        seed=0,
        device="cpu",
    )
    _collect(model, 4)
    with pytest.raises(RuntimeError, match="took 2 optimiser steps"):
        read_gradient(model, model.train)


# ---------------------------------------------------------------------------------------------------------------------
# Exact values on the bandit
# ---------------------------------------------------------------------------------------------------------------------

BANDIT = {"means": (1.0, 2.0, 3.5), "noise_std": 1.0}


def _bandit() -> GaussianBandit:
    return GaussianBandit(**BANDIT)


def _policy_parameters(model):
    return [p for name, p in model.policy.named_parameters() if "value" not in name]


def bandit_exact_gradient(model) -> np.ndarray:
    """grad J, J = sum_a pi(a) means[a], by autograd through the policy (its policy parameters, flattened)."""
    probs = model.policy.get_distribution(th.ones(1, 1)).distribution.probs[0]
    objective = (probs * th.tensor(BANDIT["means"], dtype=probs.dtype)).sum()
    grads = th.autograd.grad(objective, _policy_parameters(model), allow_unused=True)
    return (
        th.cat(
            [(th.zeros_like(p) if g is None else g).reshape(-1) for g, p in zip(grads, _policy_parameters(model), strict=True)]
        )
        .double()
        .numpy()
    )


def bandit_exact_trace(model, batch_size: int) -> float:
    """
    tr Cov of the no-baseline estimator over N one-step episodes:
    (sum_a pi_a ||s_a||^2 (mu_a^2 + sigma^2) - ||grad J||^2) / N, with s_a = grad log pi(a).
    """
    probs = model.policy.get_distribution(th.ones(1, 1)).distribution.probs[0]
    second = 0.0
    for a, mean in enumerate(BANDIT["means"]):
        score = th.autograd.grad(th.log(probs[a]), _policy_parameters(model), retain_graph=True)
        norm_sq = sum(float((s.double() ** 2).sum()) for s in score)
        second += float(probs[a].detach()) * norm_sq * (mean**2 + BANDIT["noise_std"] ** 2)
    grad = bandit_exact_gradient(model)
    return (second - float(grad @ grad)) / batch_size


@pytest.fixture(scope="module")
def bandit_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[REINFORCE, dict[str, dict]]:
    checkpoint = REINFORCE("MlpPolicy", _bandit(), policy_kwargs={"net_arch": []}, seed=1, device="cpu")
    with th.no_grad():  # a policy away from uniform: pi = softmax(0.5, 0, -0.5)
        checkpoint.policy.action_net.bias.copy_(th.tensor([0.5, 0.0, -0.5]))
    lab = LabRun(
        "reinforce",
        _bandit,
        checkpoint,
        tmp_path_factory.mktemp("bandit"),
        batch_sizes=[3],
        options=["whole-none", "whole-mean", "whole-loo", "whole-optimal"],
        n_batches=300,
        exact_gradient=bandit_exact_gradient,
    )
    records = {path.stem.split("__")[0]: json.loads(path.read_text()) for path in lab.run()}
    return checkpoint, records


def test_lab_variance_matches_the_exact_variance_on_the_bandit(bandit_run) -> None:
    """tr(S) of the no-baseline estimator within 3 SE of the exact trace (R = 300: SE about 7% of the trace)."""
    checkpoint, records = bandit_run
    record = records["whole-none"]
    exact = bandit_exact_trace(checkpoint, 3)
    assert abs(record["policy"]["trace"] - exact) <= 3 * record["policy"]["trace_se"], (record["policy"], exact)


@pytest.mark.slow
def test_lab_variance_matches_the_exact_variance_sharply(bandit_run, tmp_path: Path) -> None:
    """The same with R = 1500 (SE about 2.5% of the trace: a 10% error in the variance fails it)."""
    checkpoint, _ = bandit_run
    lab = LabRun(
        "reinforce",
        _bandit,
        checkpoint,
        tmp_path,
        batch_sizes=[3],
        options=["whole-none"],
        n_batches=1500,
        exact_gradient=bandit_exact_gradient,
    )
    record = json.loads(lab.run()[0].read_text())
    exact = bandit_exact_trace(checkpoint, 3)
    assert abs(record["policy"]["trace"] - exact) <= 3 * record["policy"]["trace_se"], (record["policy"], exact)
    assert record["policy"]["trace_se"] < 0.035 * exact


def test_bias_estimate_is_unbiased_with_a_calibrated_standard_error() -> None:
    """
    Synthetic gradients g_r ~ N(ref + b, diag(v)) against a reference from K draws of N(ref, diag(v)): over 400
    repetitions, the mean of B^2 is ||b||^2 (the plain ||m - ref||^2 would add tr(C), here 10x ||b||^2) and the
    spread of B^2 matches the reported standard error.
    """
    rng = np.random.default_rng(0)
    p, n, k = 200, 8, 16
    reference, bias = np.ones(p), np.zeros(p)
    bias[:5] = 0.5  # ||b||^2 = 1.25
    scale = np.linspace(0.5, 1.5, p)
    estimates, errors = [], []
    for _ in range(400):
        gradients = reference + bias + scale * rng.standard_normal((n, p))
        reference_gradients = reference + scale * rng.standard_normal((k, p))
        stats = bias_statistics(gradients, reference_gradients.mean(0), reference_gradients)
        ref_sq = float(reference_gradients.mean(0) @ reference_gradients.mean(0))
        estimates.append(stats["bias_sq_rel"] * ref_sq)
        errors.append(stats["bias_sq_rel_se"] * ref_sq)
    estimates_arr = np.asarray(estimates)
    assert abs(estimates_arr.mean() - 1.25) <= 3 * estimates_arr.std() / np.sqrt(len(estimates))
    assert 0.8 < np.mean(errors) / estimates_arr.std() < 1.25


def test_lab_bias_matches_the_exact_bias_on_the_bandit(bandit_run) -> None:
    """Unbiased options: B^2 = 0 within 3 SE; the batch mean baseline shrinks E[g] to (N-1)/N grad J: B^2 = 1/N^2 (N = 3)."""
    _, records = bandit_run
    for option in ("whole-none", "whole-loo", "whole-optimal"):
        bias = records[option]["bias"]
        assert abs(bias["bias_sq_rel"]) <= 3 * bias["bias_sq_rel_se"], (option, bias)
    bias = records["whole-mean"]["bias"]
    assert abs(bias["bias_sq_rel"] - 1 / 9) <= 3 * bias["bias_sq_rel_se"], bias
    assert bias["bias_sq_rel"] > 3 * bias["bias_sq_rel_se"]  # the bias is detected, not lost in the noise


def test_lab_sees_baselines_cut_variance_on_the_bandit(bandit_run) -> None:
    """
    The leave-one-out and optimal baselines cut the variance well below no baseline. (Not asserted: the optimal
    baseline below the leave-one-out mean; with N = 3 its per-coordinate estimate from 2 other episodes is noisy
    enough to lose, which docs/lab.md reports.)
    """
    _, records = bandit_run
    trace = {option: record["policy"]["trace"] for option, record in records.items()}
    se = {option: record["policy"]["trace_se"] for option, record in records.items()}
    for option in ("whole-loo", "whole-optimal"):
        assert trace[option] + 3 * se[option] < trace["whole-none"] - 3 * se["whole-none"], (option, trace)


def independent_steps_exact_gradient(model) -> np.ndarray:
    """
    On IndependentStepsEnv each reward depends on its own action only, so per-decision, prefix and one-step weights
    (and reward-to-go) all estimate grad J, J = sum_t scales[t] pi(1|s_t) (+ a constant), whatever gamma.
    """
    env = IndependentStepsEnv()
    obs = th.eye(env.horizon)
    probs = model.policy.get_distribution(obs).distribution.probs[:, 1]
    objective = (probs * th.tensor(env.scales, dtype=probs.dtype)).sum()
    params = _policy_parameters(model)
    grads = th.autograd.grad(objective, params, allow_unused=True)
    return (
        th.cat([(th.zeros_like(p) if g is None else g).reshape(-1) for g, p in zip(grads, params, strict=True)])
        .double()
        .numpy()
    )


def test_ispg_lab_measures_the_target_policy_unbiasedly(tmp_path: Path) -> None:
    """
    ISPG, behaviour policy 3 updates behind: the target policy is stored and differs from the checkpoint, and the
    per-decision, prefix and one-step estimates of its gradient are unbiased within 3 SE (exact on this env).
    """

    def quiet_env() -> IndependentStepsEnv:
        return IndependentStepsEnv(noise_std=0.1)

    checkpoint = ISPG("MlpPolicy", quiet_env(), learning_rate=0.05, batch_size=4, seed=0, device="cpu")
    lab = LabRun(
        "ispg",
        quiet_env,
        checkpoint,
        tmp_path,
        batch_sizes=[8],
        options=["per_decision", "prefix", "one_step"],
        n_batches=40,
        behind=3,
        exact_gradient=independent_steps_exact_gradient,
    )
    records = {path.stem.split("__")[0]: json.loads(path.read_text()) for path in lab.run()}
    target = th.load(tmp_path / "target_policy.pt", weights_only=True)
    moved = sum(float((target[k] - v).abs().sum()) for k, v in checkpoint.policy.state_dict().items())
    assert moved > 1e-3
    for option, record in records.items():
        bias = record["bias"]
        assert abs(bias["bias_sq_rel"]) <= 3 * bias["bias_sq_rel_se"], (option, bias)
        assert bias["cosine"] > 0.5, (option, bias)


@pytest.mark.slow
def test_grpo_lab_sees_the_group_mean_shrink_the_gradient(tmp_path: Path) -> None:
    """
    GRPO on the bandit, scale_rewards="none": the group mean includes the episode itself, so E[g] = (G-1)/G grad J
    and B^2 / ||grad J||^2 = 1/G^2 (G = 4), within 3 SE, and above 3 SE.
    """
    checkpoint = GRPO("MlpPolicy", _bandit(), policy_kwargs={"net_arch": []}, seed=0, device="cpu")
    lab = LabRun(
        "grpo",
        _bandit,
        checkpoint,
        tmp_path,
        batch_sizes=[8],
        options=["G4-none-outcome"],
        n_batches=200,
        exact_gradient=bandit_exact_gradient,
    )
    bias = json.loads(lab.run()[0].read_text())["bias"]
    assert abs(bias["bias_sq_rel"] - 1 / 16) <= 3 * bias["bias_sq_rel_se"], bias
    assert bias["bias_sq_rel"] > 3 * bias["bias_sq_rel_se"], bias


def test_grpo_lab_offers_trpo_vine_options_that_build_the_estimator_they_name(tmp_path: Path) -> None:
    options = GRPOAdapter().options()
    assert options["G2-none-first-common-branch"] == {
        "group_size": 2,
        "scale_rewards": "none",
        "group_start": "branch",
        "branch_advantage": "first",
        "branch_noise": "common",
    }
    assert options["G4-group-first-branch"]["branch_noise"] == "independent"
    # reward-to-go advantages on reset groups; on branch groups "process" is that estimator already
    assert options["G4-group-reward_to_go"] == {"group_size": 4, "scale_rewards": "group", "advantage": "reward_to_go"}
    assert "G4-group-reward_to_go-branch" not in options and "G4-group-process-branch" in options
    checkpoint = GRPO("MlpPolicy", make_vec_env("Pendulum-v1", n_envs=1, seed=0), seed=0, device="cpu")
    lab = LabRun(
        "grpo", "Pendulum-v1", checkpoint, tmp_path, batch_sizes=[4], options=["G2-none-first-common-branch"], n_batches=3
    )
    gradients, steps, episodes, model = lab.gradients("G2-none-first-common-branch", 4, 2, seed=1)
    assert (model.group_start, model.branch_advantage, model.branch_noise) == ("branch", "first", "common")
    assert model.n_groups == 2 and model.group_size == 2
    assert gradients.shape[0] == 2 and np.isfinite(gradients).all() and (np.abs(gradients) > 0).any(axis=1).all()
    # every batch pays for its trunk and its 4 continuations (to the episode's end: no horizon in the lab)
    assert episodes == [4, 4]
    assert all(n > 200 for n in steps), steps


# ---------------------------------------------------------------------------------------------------------------------
# Resume, report, command line
# ---------------------------------------------------------------------------------------------------------------------


def _shift_parameter(model: BaseAlgorithm, shift: float) -> None:
    """Move the first output bias of the policy by ``shift``: another checkpoint of the same architecture."""
    with th.no_grad():
        dict(model.policy.named_parameters())["action_net.bias"][0] += shift


def _small_run(out: Path, shift: float = 0.0) -> LabRun:
    """A small run; ``shift`` moves one parameter of the checkpoint (another checkpoint, same architecture)."""
    checkpoint = REINFORCE("MlpPolicy", IndependentStepsEnv(), seed=0, device="cpu")
    _shift_parameter(checkpoint, shift)
    return LabRun(
        "reinforce",
        IndependentStepsEnv,
        checkpoint,
        out,
        batch_sizes=[2, 4],
        options=["whole-none", "rtg-loo-return"],
        n_batches=3,
        reference_factor=3,
    )


@pytest.fixture
def count_batches(monkeypatch: pytest.MonkeyPatch):
    """Counts the batches the lab draws; ``fail_after`` makes the n-th + 1 draw raise (an interrupted run)."""
    state = {"calls": 0, "fail_after": None}
    original = ReinforceAdapter.sample

    def sample(self, model, callback, batch_size):
        if state["fail_after"] is not None and state["calls"] >= state["fail_after"]:
            raise KeyboardInterrupt
        state["calls"] += 1
        return original(self, model, callback, batch_size)

    monkeypatch.setattr(ReinforceAdapter, "sample", sample)
    return state


def test_resumed_run_recomputes_nothing_stored(tmp_path: Path, count_batches) -> None:
    count_batches["fail_after"] = 3 + 3 + 2  # the reference, the first file, and into the second
    with pytest.raises(KeyboardInterrupt):
        _small_run(tmp_path).run()
    stored = sorted((tmp_path / "options").glob("*.json"))
    assert [path.name for path in stored] == ["whole-none__n2.json"]
    assert not list((tmp_path / "options").glob(".*"))  # no partial file left behind
    first = stored[0].read_text()

    count_batches.update(calls=0, fail_after=None)
    _small_run(tmp_path).run()
    assert count_batches["calls"] == 3 * 3  # the three missing files only: neither the reference nor the first file
    assert stored[0].read_text() == first
    count_batches["calls"] = 0
    _small_run(tmp_path).run()
    assert count_batches["calls"] == 0
    # a results folder without the reference's K gradients: the reference is drawn again (same seed, same digest),
    # and no option file is recomputed
    (tmp_path / "reference_gradients.npy").unlink()
    _small_run(tmp_path).run()
    assert count_batches["calls"] == 3
    assert stored[0].read_text() == first


def _folder_files(folder: Path) -> dict[str, bytes]:
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


def test_context_records_the_checkpoint_digest(tmp_path: Path) -> None:
    lab = _small_run(tmp_path)
    lab.run()
    context = json.loads((tmp_path / "context.json").read_text())
    assert context["checkpoint_digest"] == policy_digest(lab.checkpoint)
    assert len(context["checkpoint_digest"]) == 16
    assert policy_digest(_small_run(tmp_path, shift=1e-3).checkpoint) != context["checkpoint_digest"]


def test_run_at_another_checkpoint_is_refused_and_writes_nothing(tmp_path: Path, count_batches) -> None:
    """
    A folder measured at one checkpoint refuses a run at another (one parameter moved by 1e-3), before it draws a
    batch or writes a file, naming the folder, both digests and the way out; the same checkpoint resumes.
    """
    lab = _small_run(tmp_path)
    lab.run()
    (tmp_path / "options" / "rtg-loo-return__n4.json").unlink()  # a file left to compute
    before = _folder_files(tmp_path)
    stored = json.loads((tmp_path / "context.json").read_text())["checkpoint_digest"]
    other = _small_run(tmp_path, shift=1e-3)
    count_batches["calls"] = 0
    with pytest.raises(CheckpointMismatchError) as error:
        other.run()
    message = str(error.value)
    assert str(tmp_path) in message and stored in message and policy_digest(other.checkpoint) in message
    assert "--label" in message and "--out" in message and "--conf-file" in message
    assert count_batches["calls"] == 0
    assert _folder_files(tmp_path) == before
    _small_run(tmp_path).run()  # the folder's own checkpoint: resumes, computing only the missing file
    assert count_batches["calls"] == 3
    assert sorted(_folder_files(tmp_path)) == sorted([*before, "options/rtg-loo-return__n4.json"])


def test_folder_without_a_checkpoint_record_is_refused(tmp_path: Path, count_batches) -> None:
    """A context.json written before the lab recorded checkpoints: nothing says which checkpoint, so no run proceeds."""
    _small_run(tmp_path).run()
    context = json.loads((tmp_path / "context.json").read_text())
    del context["checkpoint_digest"]
    (tmp_path / "context.json").write_text(json.dumps(context))
    (tmp_path / "options" / "whole-none__n4.json").unlink()
    before = _folder_files(tmp_path)
    lab = _small_run(tmp_path)
    count_batches["calls"] = 0
    with pytest.raises(CheckpointMismatchError, match="predates checkpoint records") as error:
        lab.run()
    assert policy_digest(lab.checkpoint) in str(error.value) and "--label" in str(error.value)
    assert count_batches["calls"] == 0 and _folder_files(tmp_path) == before


def _conf_file(path: Path, learning_rate: float = 1e-3) -> Path:
    """A one-entry rl-zoo3 file for CartPole-v1: small, and unlike the package's entry (net_arch [7])."""
    path.write_text(
        "CartPole-v1:\n  n_timesteps: 120\n  policy: 'MlpPolicy'\n  n_episodes: 2\n"
        f'  learning_rate: {learning_rate}\n  policy_kwargs: "dict(net_arch=[7])"\n'
    )
    return path


def _train_fraction_args(out: Path, conf_file: Path | None) -> list[str]:
    args = ["run", "--algo", "reinforce", "--env", "CartPole-v1", "--train-fraction", "1", "--batch-sizes", "2"]
    args += ["--batches", "3", "--reference-factor", "3", "--options", "whole-none", "--out", str(out)]
    return args + (["--conf-file", str(conf_file)] if conf_file is not None else [])


def test_train_fraction_reads_the_entry_from_the_conf_file(tmp_path: Path, capsys, monkeypatch) -> None:
    """
    --conf-file: the checkpoint is trained from that file's entry, which context.json records with the file; a run
    into that folder from another entry is refused before it trains, and so is a saved checkpoint of another entry.
    """
    conf = _conf_file(tmp_path / "entry.yml")
    out = tmp_path / "lab"
    assert main(_train_fraction_args(out, conf)) == 0
    env_dir = out / "reinforce" / "CartPole-v1"
    model = load_model("reinforce", env_dir / "checkpoints" / "train1-seed0.zip")
    assert isinstance(model, REINFORCE) and model.policy_kwargs["net_arch"] == [7] and model.n_episodes == 2
    context = json.loads((env_dir / "train1-seed0" / "context.json").read_text())
    assert context["checkpoint_digest"] == policy_digest(model)
    assert context["checkpoint_source"] == {
        "train_fraction": 1.0,
        "seed": 0,
        "entry_file": str(conf),
        "entry_key": "CartPole-v1",
        "entry": {
            "n_timesteps": 120,
            "policy": "MlpPolicy",
            "n_episodes": 2,
            "learning_rate": 1e-3,
            "policy_kwargs": "dict(net_arch=[7])",
        },
    }
    capsys.readouterr()

    # the same folder from another entry: refused before any training, naming both entries
    import sb3_pg_ext.lab.cli as cli

    def no_training(*args, **kwargs):
        raise AssertionError("trained a checkpoint the folder refuses")

    monkeypatch.setattr(cli, "train_fraction", no_training)
    other = _conf_file(tmp_path / "other.yml", learning_rate=5e-3)
    with pytest.raises(SystemExit) as exit_info:
        main(_train_fraction_args(out, other))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"run folder {env_dir / 'train1-seed0'} was measured at" in err and str(conf) in err and str(other) in err
    assert "--conf-file" in err and "Traceback" not in err
    monkeypatch.undo()

    # a saved checkpoint of another entry is not reused for a new folder
    shutil.copytree(env_dir / "checkpoints", tmp_path / "elsewhere" / "reinforce" / "CartPole-v1" / "checkpoints")
    with pytest.raises(SystemExit) as exit_info:
        main(_train_fraction_args(tmp_path / "elsewhere", other))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "was trained from" in err and "learning_rate': 0.005" in err and "delete it" in err


def test_conf_file_without_the_env_entry_exits_2(tmp_path: Path, capsys) -> None:
    conf = tmp_path / "entries.yml"
    conf.write_text("Pendulum-v1:\n  n_timesteps: 100\n  policy: 'MlpPolicy'\n")
    with pytest.raises(SystemExit) as exit_info:
        main(_train_fraction_args(tmp_path / "lab", conf))
    assert exit_info.value.code == 2
    assert f"--conf-file {conf} has no entry for CartPole-v1 (entries: Pendulum-v1)" in capsys.readouterr().err
    assert not (tmp_path / "lab").exists()


def test_cli_refuses_a_folder_of_another_checkpoint_with_status_2(tmp_path: Path, capsys) -> None:
    model = REINFORCE("MlpPolicy", "CartPole-v1", policy_kwargs={"net_arch": [8]}, seed=0, device="cpu")
    model.save(tmp_path / "early.zip")
    out = tmp_path / "lab"
    args = ["run", "--algo", "reinforce", "--env", "CartPole-v1", "--model", str(tmp_path / "early.zip")]
    args += ["--batch-sizes", "2", "--batches", "3", "--reference-factor", "3", "--options", "whole-none"]
    assert main([*args, "--out", str(out)]) == 0
    stored = policy_digest(model)
    _shift_parameter(model, 1e-3)
    model.save(tmp_path / "early.zip")
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main([*args, "--out", str(out)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"run folder {out / 'reinforce' / 'CartPole-v1' / 'early'} was measured at checkpoint {stored}" in err
    assert f"this checkpoint's digest is {policy_digest(model)}" in err and "Traceback" not in err


def test_report_rebuilds_from_the_stored_files_alone(tmp_path: Path) -> None:
    model = REINFORCE("MlpPolicy", "CartPole-v1", policy_kwargs={"net_arch": [8]}, seed=0, device="cpu")
    model.save(tmp_path / "early.zip")
    out = tmp_path / "lab"
    args = ["run", "--algo", "reinforce", "--env", "CartPole-v1", "--model", str(tmp_path / "early.zip")]
    args += ["--batch-sizes", "2", "3", "--batches", "3", "--reference-factor", "3"]
    args += ["--options", "whole-none", "rtg-mean-gradient"]
    assert main([*args, "--out", str(out)]) == 0
    before = build_report(out, plots=False)
    (tmp_path / "early.zip").unlink()
    for path in out.rglob("*.npy"):
        path.unlink()
    after = build_report(out)
    assert after.startswith(before.rstrip("\n"))
    assert "`rtg-mean-gradient`" in after and "checkpoint early" in after
    assert after.count("\n| 2 | `") == 2 and after.count("\n| 3 | `") == 2
    assert (out / "reinforce" / "CartPole-v1" / "early" / "plots" / "variance.png").stat().st_size > 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["run", "--algo", "ppo", "--env", "CartPole-v1", "--train-fraction", "0.1"],
            "unknown --algo 'ppo'; valid: grpo, ispg, reinforce",
        ),
        (
            ["run", "--algo", "reinforce", "--env", "CartPole-v1", "--train-fraction", "0.1", "--options", "bogus"],
            "valid: whole-none",
        ),
        (
            ["run", "--algo", "reinforce", "--env", "CartPole-v1", "--train-fraction", "0.1", "--batch-sizes", "1"],
            "--batch-sizes must be >= 2",
        ),
        (
            ["run", "--algo", "reinforce", "--env", "CartPole-v1", "--train-fraction", "2"],
            "--train-fraction must be in (0, 1]",
        ),
        (
            ["run", "--algo", "reinforce", "--env", "CartPole-v1", "--train-fraction", "0.5", "--behind", "2"],
            "for --algo ispg only",
        ),
        (["options", "--algo", "a2c"], "unknown --algo 'a2c'"),
        (["run", "--algo", "ispg", "--env", "CartPole-v1", "--model", "missing.zip"], "no saved model at missing.zip"),
        (
            ["run", "--algo", "reinforce", "--env", "CartPole-v1", "--train-fraction", "0.1", "--conf-file", "/no/such.yml"],
            "no --conf-file at /no/such.yml",
        ),
        (
            ["run", "--algo", "ispg", "--env", "CartPole-v1", "--model", "m.zip", "--conf-file", "entries.yml"],
            "--conf-file entries.yml: applies to --train-fraction only",
        ),
        (
            ["run", "--algo", "ispg", "--env", "CartPole-v1", "--zoo-folder", "/no/such/run"],
            "no zoo run folder at /no/such/run",
        ),
    ],
)
def test_cli_rejects_bad_values_with_status_2(args: list[str], message: str, tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([*args, "--out", str(tmp_path)] if args[0] == "run" else args)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
