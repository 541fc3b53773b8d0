"""
The rl-zoo3 launcher (sb3_pg_ext.zoo, docs/zoo.md): every command with each of the four algorithms on tiny budgets,
the hyperparameter files, the samplers, robust trials and the aggregates. The multi-process storage tests (journal
file, PostgreSQL) are in tests/test_zoo_storage.py.
"""

from __future__ import annotations

import argparse
import itertools
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import matplotlib
import numpy as np
import optuna
import pytest
import torch as th
import yaml
from rl_zoo3 import hyperparams_opt
from rl_zoo3.utils import ALGOS

import sb3_pg_ext
from sb3_pg_ext import GRPO, ISPG, PPOKL, REINFORCE
from sb3_pg_ext.zoo import (
    AGGREGATES,
    HYPERPARAMS_CONVERTER,
    ZOO_ALGOS,
    PGExperimentManager,
    bootstrap_lower,
    interquartile_mean,
    main,
    pooled_mean,
    register,
    trial_seeds,
    worst_seed,
)

matplotlib.use("Agg")

ALGO_NAMES = ["reinforce", "ispg", "ppo_kl", "grpo"]
ENV = "CartPole-v1"


@pytest.fixture(autouse=True)
def registered():
    """Tests that use rl-zoo3's dicts directly must not depend on a launcher call earlier in the same process."""
    register()


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def run_dir(root: Path, algo: str, env: str = ENV) -> Path:
    runs = sorted((root / "logs" / algo).glob(f"{env.replace('/', '-')}_*"))
    assert runs, f"no run folder under {root / 'logs' / algo}"
    return runs[-1]


def load_config(run: Path, env: str = ENV) -> dict:
    return dict(yaml.load((run / env.replace("/", "-") / "config.yml").read_text(), Loader=yaml.UnsafeLoader))


def package_entry(algo: str, env: str) -> dict:
    return yaml.safe_load((sb3_pg_ext.HYPERPARAMS_DIR / f"{algo}.yml").read_text())[env]


# -- registration ----------------------------------------------------------------------------------------------------


def test_register_adds_the_four_algorithms_to_rl_zoo_dicts_in_place():
    import rl_zoo3.exp_manager
    import rl_zoo3.train

    register()
    assert {name: ALGOS[name] for name in ALGO_NAMES} == {
        "reinforce": REINFORCE,
        "ispg": ISPG,
        "ppo_kl": PPOKL,
        "grpo": GRPO,
    }
    # the dicts rl-zoo3's modules imported by name are the same objects
    assert rl_zoo3.train.ALGOS is ALGOS and rl_zoo3.exp_manager.ALGOS is ALGOS
    assert rl_zoo3.exp_manager.HYPERPARAMS_SAMPLER is hyperparams_opt.HYPERPARAMS_SAMPLER
    for name in ALGO_NAMES:
        assert name in hyperparams_opt.HYPERPARAMS_SAMPLER and name in hyperparams_opt.HYPERPARAMS_CONVERTER
    assert ALGOS["ppo"].__name__ == "PPO"  # stock entries untouched


# -- train / enjoy / plots -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("algo", ALGO_NAMES)
def test_train_saves_model_eval_log_and_config_then_enjoy_loads_it(algo, in_tmp, capsys, monkeypatch):
    main(
        [
            "train",
            "--algo",
            algo,
            "--env",
            ENV,
            "-n",
            "256",
            "--eval-freq",
            "128",
            "--eval-episodes",
            "2",
            "-f",
            "logs",
            "--seed",
            "0",
            "--verbose",
            "0",
            "--save-freq",
            "128",
        ]
    )
    run = run_dir(in_tmp, algo)
    model_file = run / f"{ENV}.zip"
    assert model_file.is_file()
    model = ZOO_ALGOS[algo].load(model_file, buffer_size=1) if algo == "ispg" else ZOO_ALGOS[algo].load(model_file)
    assert type(model) is ZOO_ALGOS[algo] and model.num_timesteps >= 256
    evaluations = np.load(run / "evaluations.npz")
    # at least two evaluations of 2 episodes (GRPO's CartPole entry runs 8 envs and whole groups, so it can pass
    # one more evaluation point than the others before its last group ends)
    n_evaluations, n_episodes = evaluations["results"].shape
    assert n_evaluations >= 2 and n_episodes == 2 and list(evaluations["timesteps"][:1]) in ([128], [256])
    assert sorted(p.name for p in run.glob("rl_model_*_steps.zip")), "--save-freq wrote no checkpoint"
    # without --conf-file, the package's own file for the algorithm (not rl-zoo3's, which has none for it)
    config = load_config(run)
    entry = package_entry(algo, ENV)
    assert {key: config[key] for key in entry} == entry
    args = yaml.load((run / ENV / "args.yml").read_text(), Loader=yaml.UnsafeLoader)
    assert args["algo"] == algo and args["n_timesteps"] == 256

    loaded_with: dict = {}
    original_load = ZOO_ALGOS[algo].load.__func__  # type: ignore[attr-defined]

    def spy(cls, path, **kwargs):
        loaded_with.update(kwargs)
        return original_load(cls, path, **kwargs)

    monkeypatch.setattr(ZOO_ALGOS[algo], "load", classmethod(spy))
    capsys.readouterr()
    main(["enjoy", "--algo", algo, "--env", ENV, "-f", "logs", "-n", "300", "--no-render", "--deterministic"])
    out = capsys.readouterr().out
    assert f"Loading logs/{algo}/{run.name}/{ENV}.zip" in out
    assert re.search(r"Mean reward: \d", out), out[-2000:]
    # ISPG is off-policy: loaded with a 1-transition buffer, as rl-zoo3 loads SAC; the others as rl-zoo3 does
    assert ("buffer_size" in loaded_with) == (algo == "ispg")
    if algo == "ispg":
        assert loaded_with["buffer_size"] == 1
    assert ALGOS[algo] is ZOO_ALGOS[algo], "enjoy left its stand-in in rl_zoo3.ALGOS"


def test_enjoy_renders_a_token_task_as_text(in_tmp, capsys):
    env = "sb3_pg_ext/DigitReverse-v0"
    main(
        [
            "train",
            "--algo",
            "grpo",
            "--env",
            env,
            "-n",
            "64",
            "--eval-freq",
            "-1",
            "-f",
            "logs",
            "--verbose",
            "0",
            "--env-kwargs",
            "reward_mode:'binary'",
            "-params",
            "n_envs:2",
            "group_size:2",
            "n_groups:2",
            "batch_size:None",
            "--seed",
            "0",
        ]
    )
    run = run_dir(in_tmp, "grpo", env)
    assert (run / f"{env.replace('/', '-')}.zip").is_file()
    args = yaml.load((run / env.replace("/", "-") / "args.yml").read_text(), Loader=yaml.UnsafeLoader)
    assert args["env_kwargs"] == {"reward_mode": "binary"}
    capsys.readouterr()
    main(["enjoy", "--algo", "grpo", "--env", env, "-f", "logs", "-n", "12", "--deterministic"])
    out = capsys.readouterr().out
    # "human" rendering prints the prompt and the answer so far: "4321 -> 12", "<eos>" at the end
    assert re.search(r"^\d{3,4} -> [\d<eos>]*$", out, re.MULTILINE), out[-2000:]
    # each state once: step() prints in "human" mode and enjoy's render() after it must not print it again
    lines = [line for line in out.splitlines() if re.fullmatch(r"\d{3,4} -> [\d<eos>]*", line)]
    assert len(lines) >= 12
    assert all(a != b for a, b in itertools.pairwise(lines)), out[-2000:]


def test_rl_zoo_flags_keep_their_meaning(in_tmp):
    """--vec-env subproc, -tb, -P, --device; then --trained-agent continues from the saved model and its replay
    buffer (--save-replay-buffer), for the off-policy ISPG."""
    main(
        [
            *["train", "--algo", "ispg", "--env", ENV, "-n", "200", "--eval-freq", "-1", "-f", "logs", "--verbose", "0"],
            *["--vec-env", "subproc", "-params", "n_envs:2", "-tb", "tb", "-P", "--device", "cpu", "--save-replay-buffer"],
        ]
    )
    first = run_dir(in_tmp, "ispg")
    assert (first / "replay_buffer.pkl").is_file()
    assert list((in_tmp / "tb" / ENV).glob("ISPG_*/events.out.tfevents.*")), "no tensorboard log"
    args = yaml.load((first / ENV / "args.yml").read_text(), Loader=yaml.UnsafeLoader)
    assert args["vec_env"] == "subproc" and args["progress"] is True
    trained = ISPG.load(first / f"{ENV}.zip", buffer_size=1)
    main(
        [
            *["train", "--algo", "ispg", "--env", ENV, "-n", "100", "--eval-freq", "-1", "-f", "logs", "--verbose", "0"],
            *["-i", str(first / f"{ENV}.zip"), "-params", "n_envs:2"],
        ]
    )
    second = run_dir(in_tmp, "ispg")
    assert second != first
    continued = ISPG.load(second / f"{ENV}.zip", buffer_size=1)
    # continued from the trained weights, then trained further: parameters differ from a fresh init and moved
    fresh = ISPG("MlpPolicy", ENV, seed=0)

    def distance(a, b) -> float:
        return sum(float((x - y).abs().sum()) for x, y in zip(a.policy.parameters(), b.policy.parameters(), strict=True))

    assert 0 < distance(continued, trained) < distance(continued, fresh)


def test_stock_ppo_trains_through_the_launcher_with_rl_zoo_file(in_tmp):
    main(["train", "--algo", "ppo", "--env", ENV, "-n", "256", "--eval-freq", "-1", "-f", "logs", "--verbose", "0"])
    run = run_dir(in_tmp, "ppo")
    assert (run / f"{ENV}.zip").is_file()
    # rl-zoo3's own ppo.yml entry for CartPole-v1 (n_steps 32, 8 envs)
    config = load_config(run)
    assert config["n_steps"] == 32 and config["n_envs"] == 8


def test_plot_commands_read_the_launcher_logs(in_tmp):
    import matplotlib.pyplot as plt

    for seed in ("1", "2"):  # plot_from_file needs two runs
        main(
            [
                "train",
                "--algo",
                "grpo",
                "--env",
                ENV,
                "-n",
                "200",
                "--eval-freq",
                "100",
                "--eval-episodes",
                "2",
                "-f",
                "logs",
                "--verbose",
                "0",
                "--seed",
                seed,
            ]
        )
    plt.close("all")
    main(["plot_train", "-a", "grpo", "-e", ENV, "-f", "logs", "-w", "2"])
    # no display (Agg): the figure is saved rather than shown
    assert (in_tmp / "logs" / f"plot_train_grpo_{ENV}.png").stat().st_size > 0
    plt.close("all")
    main(["all_plots", "-a", "grpo", "-e", ENV, "-f", "logs", "-o", "grpo_results", "--no-display", "-max", "200"])
    assert (in_tmp / "grpo_results.pkl").is_file()
    plt.close("all")
    main(["plot_from_file", "-i", "grpo_results.pkl", "-o", "grpo_plot.png", "--format", "png"])
    assert (in_tmp / "grpo_plot.png").stat().st_size > 0
    plt.close("all")


def test_plots_of_one_run_per_algorithm_and_without_a_display(in_tmp, capsys):
    """
    One run per algorithm: all_plots stored each run's last evaluations as a scalar, which plot_from_file skipped
    and then failed on (``min() arg is an empty sequence``). Without a display, plot_train and all_plots showed
    their figures nowhere: they are saved, and the path printed.
    """
    import matplotlib
    import matplotlib.pyplot as plt

    assert matplotlib.get_backend().lower() == "agg"
    for algo in ("reinforce", "grpo"):
        main(f"train --algo {algo} --env {ENV} -n 200 --eval-freq 100 --eval-episodes 2 -f logs --verbose 0 --seed 1".split())
    capsys.readouterr()
    main(["plot_train", "-a", "grpo", "-e", ENV, "-f", "logs", "-w", "2"])
    figure = in_tmp / "logs" / f"plot_train_grpo_{ENV}.png"
    assert figure.stat().st_size > 0 and f"figure saved to {Path('logs') / figure.name}" in capsys.readouterr().out
    main(["all_plots", "-a", "reinforce", "grpo", "-e", ENV, "-f", "logs", "-o", "both", "-max", "200"])
    assert (in_tmp / "both.pkl").is_file() and (in_tmp / "both.png").stat().st_size > 0
    main(["plot_from_file", "-i", "both.pkl", "-o", "both_curves.png", "--format", "png"])
    assert (in_tmp / "both_curves.png").stat().st_size > 0
    assert not plt.get_fignums()


def test_version_names_the_package_rl_zoo3_and_sb3(capsys):
    import rl_zoo3

    from sb3_pg_ext import __version__

    main(["--version"])
    out = capsys.readouterr().out.strip()
    assert out == f"sb3-pg-zoo {__version__} (sb3-pg-ext; rl-zoo3 {rl_zoo3.__version__}, stable-baselines3 2.9.2)"


def test_console_script_is_declared():
    from importlib.metadata import entry_points

    from sb3_pg_ext import cli

    (script,) = [e for e in entry_points(group="console_scripts") if e.name == "sb3-pg-zoo"]
    assert script.value == "sb3_pg_ext.cli:main" and script.load() is cli.main


def test_unknown_command_is_refused():
    with pytest.raises(SystemExit, match="unknown command"):
        main(["fly", "--algo", "grpo"])


def test_console_entry_lists_every_command_and_routes_benchmark_to_its_command_line(capsys):
    from sb3_pg_ext import cli

    assert cli.COMMANDS == ("train", "enjoy", "plot_train", "plot_from_file", "all_plots", "benchmark", "lab")
    cli.main(["--help"])
    assert "usage: sb3-pg-zoo {train,enjoy,plot_train,plot_from_file,all_plots,benchmark,lab}" in capsys.readouterr().out
    main(["--help"])  # python -m sb3_pg_ext.zoo: the launcher's own commands
    assert "usage: sb3-pg-zoo {train,enjoy,plot_train,plot_from_file,all_plots} " in capsys.readouterr().out
    with pytest.raises(SystemExit) as done:
        cli.main(["benchmark", "-h"])
    assert done.value.code == 0 and "usage: sb3-pg-zoo benchmark" in capsys.readouterr().out
    with pytest.raises(SystemExit) as done:
        cli.main(["lab", "-h"])
    assert done.value.code == 0 and "usage: sb3-pg-zoo lab" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="use one of train, enjoy, plot_train, plot_from_file, all_plots, benchmark, lab"):
        cli.main(["fly"])
    with pytest.raises(SystemExit, match="unknown command 'benchmark'"):
        main(["benchmark", "status"])


def test_the_zoo_runs_without_loading_the_benchmark():
    # the benchmark imports the zoo; the zoo (and the console entry's zoo commands) must not load the benchmark
    code = (
        "import sys; from sb3_pg_ext.zoo import cli; import sb3_pg_ext.zoo.hyperparams_files; "
        "from sb3_pg_ext.cli import main; main(['--help']); "
        "print(sorted(m for m in sys.modules if m.startswith('sb3_pg_ext.benchmark')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "[]"


def test_enjoy_loads_every_off_policy_algorithm_without_a_replay_buffer():
    from stable_baselines3 import PPO, SAC

    from sb3_pg_ext.zoo.cli import off_policy_algos

    names = off_policy_algos()
    # rl-zoo3's own list (enjoy.py), as far as rl_zoo3.ALGOS holds those names, plus the package's ISPG
    assert {"dqn", "ddpg", "sac", "td3", "qrdqn", "tqc", "ispg"} <= set(names)
    assert not {"ppo", "a2c", "reinforce", "ppo_kl", "grpo"} & set(names)
    # derived from the classes: a new off-policy algorithm is found without a list to edit
    ALGOS["my_sac"], ALGOS["my_ppo"] = SAC, PPO
    try:
        assert "my_sac" in off_policy_algos() and "my_ppo" not in off_policy_algos()
    finally:
        del ALGOS["my_sac"], ALGOS["my_ppo"]


# -- hyperparameter files --------------------------------------------------------------------------------------------


def yml_entries() -> list[tuple[str, str]]:
    return [
        (algo, env) for algo in ALGO_NAMES for env in yaml.safe_load((sb3_pg_ext.HYPERPARAMS_DIR / f"{algo}.yml").read_text())
    ]


def test_every_file_covers_the_envs_its_algorithm_supports():
    needed = {"default", "CartPole-v1", "Acrobot-v1", "LunarLander-v3", "Pendulum-v1", "MountainCarContinuous-v0"}
    needed |= {"LunarLanderContinuous-v3"}
    token_tasks = {"sb3_pg_ext/DigitReverse-v0", "sb3_pg_ext/DigitAdd-v0"}
    for algo in ALGO_NAMES:
        entries = set(yaml.safe_load((sb3_pg_ext.HYPERPARAMS_DIR / f"{algo}.yml").read_text()))
        assert needed <= entries, (algo, needed - entries)
        if algo != "ispg":
            assert token_tasks <= entries, (algo, token_tasks - entries)


def test_every_entry_says_how_it_was_obtained():
    for algo in ALGO_NAMES:
        lines = (sb3_pg_ext.HYPERPARAMS_DIR / f"{algo}.yml").read_text().splitlines()
        for index, line in enumerate(lines):
            if re.match(r"^[^\s#][^:]*:\s*$", line):
                comments = []
                for previous in reversed(lines[:index]):
                    if not previous.startswith("#"):
                        break
                    comments.append(previous)
                assert any("hand-set" in c or "tuned with" in c for c in comments), f"{algo}.yml {line!r}"


@pytest.mark.parametrize(("algo", "env"), yml_entries(), ids=[f"{a}:{e}" for a, e in yml_entries()])
def test_every_yml_entry_builds_its_model(algo, env, tmp_path):
    """Through rl-zoo3's own pipeline (read, preprocess, make the envs, construct); no training."""
    import gymnasium as gym

    env_id = "CartPole-v1" if env == "default" else env
    if "LunarLander" in env_id:
        pytest.importorskip("Box2D", reason="LunarLander needs the box2d extra")
    register()
    manager = PGExperimentManager(argparse.Namespace(), algo, env_id, str(tmp_path), eval_freq=-1, verbose=0)
    if env == "default":
        # read the default entry itself, whatever env it would serve
        config = yaml.safe_load(Path(manager.config).read_text())
        assert "default" in config
        manager.config = str(tmp_path / "default_only.yml")
        Path(manager.config).write_text(yaml.safe_dump({"default": config["default"]}))
    result = manager.setup_experiment()
    assert result is not None
    model, _ = result
    assert isinstance(model, ZOO_ALGOS[algo])
    assert model.observation_space == gym.make(env_id).observation_space
    assert model.env is not None
    model.env.close()


# -- samplers, -optimize, --trial-id ---------------------------------------------------------------------------------


@pytest.mark.parametrize("algo", ALGO_NAMES)
def test_sampler_output_builds_the_model_and_converter_reproduces_it(algo):
    """Many random draws: every sampled combination is accepted by the constructor, and the converter (what
    --trial-id applies) gives the same settings in the file form."""
    import gymnasium as gym

    env = gym.make(ENV)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0), direction="maximize")
    for _ in range(25):
        trial = study.ask()
        kwargs = hyperparams_opt.HYPERPARAMS_SAMPLER[algo](trial, 0, 1, {})
        model = ZOO_ALGOS[algo]("MlpPolicy", env, device="cpu", **kwargs)
        converted = HYPERPARAMS_CONVERTER[algo](trial.params)
        assert set(converted) == set(kwargs)
        for key, value in converted.items():
            if isinstance(value, str) and value.startswith("lin_"):
                assert kwargs[key](1.0) == pytest.approx(float(value[4:])) and kwargs[key](0.0) == 0.0
            elif key in ("learning_rate", "clip_range"):
                assert kwargs[key](0.5) == pytest.approx(value)
            else:
                assert kwargs[key] == value, key
        assert model is not None
        study.tell(trial, 0.0)


@pytest.mark.parametrize(("n_envs", "largest"), [(1, 4096), (8, 4096), (16, 4096), (256, 8192)])
def test_ppo_kl_sampler_caps_the_rollout_over_all_envs(n_envs, largest):
    """n_steps is drawn per env like rl-zoo3's, but n_steps x n_envs stays within 4096 transitions (n_steps >= 32)."""
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0), direction="maximize")
    rollouts = set()
    for _ in range(60):
        trial = study.ask()
        kwargs = hyperparams_opt.HYPERPARAMS_SAMPLER["ppo_kl"](trial, 0, n_envs, {})
        assert kwargs["n_steps"] >= 32 and kwargs["batch_size"] >= 32
        rollouts.add(kwargs["n_steps"] * n_envs)
        study.tell(trial, 0.0)
    assert max(rollouts) == largest and min(rollouts) == 32 * n_envs


@pytest.mark.parametrize("algo", ALGO_NAMES)
def test_optimize_runs_two_trials_in_memory(algo, in_tmp):
    main(
        [
            "train",
            "--algo",
            algo,
            "--env",
            ENV,
            "-n",
            "200",
            "-optimize",
            "--n-trials",
            "2",
            "--n-evaluations",
            "1",
            "--eval-episodes",
            "2",
            "-f",
            "logs",
            "--seed",
            "0",
            "--no-optim-plots",
            "--verbose",
            "0",
        ]
    )
    reports = list((in_tmp / "logs" / algo).glob("report_*.csv"))
    assert len(reports) == 1
    import pandas as pd

    trials = pd.read_csv(reports[0])
    assert len(trials) == 2
    assert set(trials["state"]) <= {"COMPLETE", "PRUNED"} and (trials["state"] == "COMPLETE").any()
    assert trials["value"].notna().any()


def test_trial_id_zero_reloads_the_first_trial(in_tmp):
    storage = str(in_tmp / "study.log")
    main(
        [
            "train",
            "--algo",
            "grpo",
            "--env",
            ENV,
            "-n",
            "200",
            "-optimize",
            "--n-trials",
            "2",
            "--n-evaluations",
            "1",
            "--eval-episodes",
            "2",
            "-f",
            "opt",
            "--seed",
            "3",
            "--no-optim-plots",
            "--verbose",
            "0",
            "--storage",
            storage,
            "--study-name",
            "reload",
        ]
    )
    study = optuna.load_study(
        study_name="reload",
        storage=optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(storage)),
    )
    expected = HYPERPARAMS_CONVERTER["grpo"](study.trials[0].params)
    assert study.trials[0].params != study.trials[1].params
    main(
        [
            "train",
            "--algo",
            "grpo",
            "--env",
            ENV,
            "-n",
            "64",
            "--eval-freq",
            "-1",
            "-f",
            "logs",
            "--verbose",
            "0",
            "--storage",
            storage,
            "--study-name",
            "reload",
            "--trial-id",
            "0",
        ]
    )
    config = load_config(run_dir(in_tmp, "grpo"))
    for key, value in expected.items():
        assert config[key] == value, key


# -- robust trials -----------------------------------------------------------------------------------------------------


def robust_trial(n_timesteps: int, eval_seeds: int, log_path: str, *extra: str) -> None:
    """One REINFORCE trial (--seed 5, 2 evaluation points of 3 episodes) with --eval-seeds K."""
    main(
        [
            "train",
            "--algo",
            "reinforce",
            "--env",
            ENV,
            "-n",
            str(n_timesteps),
            "-optimize",
            "--n-trials",
            "1",
            "--n-evaluations",
            "2",
            "--eval-episodes",
            "3",
            "-f",
            "logs",
            "--seed",
            "5",
            "--no-optim-plots",
            "--verbose",
            "0",
            "--eval-seeds",
            str(eval_seeds),
            "--optimization-log-path",
            log_path,
            *extra,
        ]
    )


def test_eval_seeds_reports_the_iqm_of_all_seeds_at_every_evaluation(in_tmp):
    storage = str(in_tmp / "robust.log")
    robust_trial(240, 3, "trials", "--storage", storage, "--study-name", "robust")
    study = optuna.load_study(
        study_name="robust",
        storage=optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(storage)),
    )
    (trial,) = study.trials
    assert trial.user_attrs["eval_seeds"] == trial_seeds(5, 0, 3)
    assert trial.user_attrs["eval_aggregate"] == "iqm"
    runs = [np.load(in_tmp / "trials" / "trial_0" / f"seed_{k}" / "evaluations.npz") for k in range(3)]
    assert all(run["results"].shape == (2, 3) for run in runs)
    # the pruner saw the aggregate of the 3 seeds at each evaluation point; the value is the last one
    for step in (1, 2):
        assert trial.intermediate_values[step] == interquartile_mean([run["results"][step - 1] for run in runs])
    assert trial.value == trial.intermediate_values[2]
    assert trial.user_attrs["seed_returns"] == [float(np.mean(run["results"][-1])) for run in runs]


def test_eval_aggregate_worst_seed_values_a_trial_by_its_worst_seed(in_tmp):
    storage = str(in_tmp / "worst.log")
    robust_trial(240, 3, "trials", "--storage", storage, "--study-name", "worst", "--eval-aggregate", "worst_seed")
    study = optuna.load_study(
        study_name="worst",
        storage=optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(storage)),
    )
    (trial,) = study.trials
    assert trial.user_attrs["eval_aggregate"] == "worst_seed"
    runs = [np.load(in_tmp / "trials" / "trial_0" / f"seed_{k}" / "evaluations.npz")["results"] for k in range(3)]
    for step in (1, 2):
        assert trial.intermediate_values[step] == min(float(np.mean(run[step - 1])) for run in runs)
    assert trial.value == min(trial.user_attrs["seed_returns"])


def test_robust_trial_runs_are_reproducible_and_independent_of_each_other(in_tmp):
    # The runs take turns and each keeps its own global random state: run 0 of a K = 3 trial draws exactly what
    # the single run of a K = 1 trial with the same first seed draws (trial_seeds(5, 0, 3)[0] ==
    # trial_seeds(5, 0, 1)[0]), and a rerun reproduces every run bit for bit.
    def evaluations(folder: str, eval_seeds: int) -> list[np.ndarray]:
        robust_trial(3000, eval_seeds, folder, "--sampler", "random")
        return [np.load(in_tmp / folder / "trial_0" / f"seed_{k}" / "evaluations.npz")["results"] for k in range(eval_seeds)]

    three = evaluations("three", 3)
    again = evaluations("again", 3)
    (one,) = evaluations("one", 1)
    for run, rerun in zip(three, again, strict=True):
        np.testing.assert_array_equal(run, rerun)
    np.testing.assert_array_equal(three[0], one)
    # the runs differ from each other (different seeds), so the equalities above are not trivial
    assert not np.array_equal(three[0], three[1]) or not np.array_equal(three[1], three[2])


def test_parallel_robust_trials_give_the_values_of_serial_ones(in_tmp):
    """
    --n-jobs 2 runs two trials in threads of one process; each robust trial seeds and swaps the process-global
    random state, so without the process-wide lock the two trials drew each other's numbers. The same four trials
    (enqueued: fixed numbers and settings) give the same values with 1 and 2 jobs.
    """

    def values(n_jobs: int) -> dict[int, float]:
        storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(in_tmp / f"{n_jobs}.log")))
        study = optuna.create_study(storage=storage, study_name="par", direction="maximize")
        for learning_rate in (3e-4, 3e-3):  # inside the sampler's range
            study.enqueue_trial(
                dict(
                    learning_rate=learning_rate,
                    lr_schedule="constant",
                    ent_coef=1e-3,
                    max_grad_norm=0.5,
                    net_arch="tiny",
                    activation_fn="tanh",
                    one_minus_gamma=0.01,
                    n_episodes_pow=1,
                    baseline="mean",
                    reward_to_go=True,
                    normalize_advantage=False,
                    discount_weighting="return",
                )
            )
        robust_trial(
            400, 2, f"jobs{n_jobs}", "--n-trials", "2", "--n-jobs", str(n_jobs), "--storage", str(in_tmp / f"{n_jobs}.log"),
            "--study-name", "par", "--pruner", "none",
        )  # fmt: skip
        trials = optuna.load_study(study_name="par", storage=storage).trials
        assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 2
        return {t.number: t.value for t in trials}

    serial, parallel = values(1), values(2)
    assert serial == parallel
    assert len(set(serial.values())) > 1  # the trials differ, so the equality is not trivial


def test_robust_trial_without_log_path_writes_no_files(in_tmp, monkeypatch):
    # SB3's EvalCallback keeps the returns only with a log_path: a scratch folder, deleted with the trial
    scratch = in_tmp / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    storage = str(in_tmp / "robust.log")
    main(
        [
            *f"train --algo reinforce --env {ENV} -n 240 -optimize --n-trials 1 --n-evaluations 2 --eval-episodes 2".split(),
            *[
                "-f",
                "logs",
                "--seed",
                "5",
                "--no-optim-plots",
                "--verbose",
                "0",
                "--eval-seeds",
                "2",
                "--study-name",
                "robust",
                "--storage",
            ],
            storage,
        ]
    )
    (trial,) = optuna.load_study(
        study_name="robust",
        storage=optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(storage)),
    ).trials
    assert trial.state == optuna.trial.TrialState.COMPLETE and len(trial.intermediate_values) == 2
    # neither in the working folder nor in the temporary folder (scratch is inside in_tmp)
    assert not list(in_tmp.rglob("evaluations.npz"))


class FakeTrial:
    def __init__(self, prune_at: int):
        self.prune_at = prune_at
        self.reports: list[tuple[float, int]] = []

    def report(self, value: float, step: int) -> None:
        self.reports.append((value, step))

    def should_prune(self) -> bool:
        return len(self.reports) >= self.prune_at


def test_evaluation_board_reports_the_running_aggregate_and_stops_every_run_at_once():
    import threading

    from sb3_pg_ext.zoo.exp_manager import EvaluationBoard

    trial = FakeTrial(prune_at=2)
    board = EvaluationBoard(2, trial, interquartile_mean)  # type: ignore[arg-type]
    returns = {0: [[1.0, 2.0], [3.0, 4.0], [9.0, 9.0]], 1: [[5.0, 6.0], [7.0, 8.0], [9.0, 9.0]]}
    went_on: dict[int, list[bool]] = {0: [], 1: []}

    def run(k: int) -> None:
        for point in returns[k]:
            go_on = board.post(k, point)
            went_on[k].append(go_on)
            if not go_on:
                return

    threads = [threading.Thread(target=run, args=(k,)) for k in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    # point 1: IQM of 1, 2, 5, 6 = 3.5 (the middle 2, 5); point 2: IQM of 3, 4, 7, 8 = 5.5; pruned there: both stop
    assert trial.reports == [(3.5, 1), (5.5, 2)]
    assert went_on == {0: [True, False], 1: [True, False]}
    assert board.pruned and board.stopped and board.values == [3.5, 5.5]


def test_evaluation_board_abort_releases_the_waiting_runs():
    import threading

    from sb3_pg_ext.zoo.exp_manager import EvaluationBoard

    board = EvaluationBoard(2, FakeTrial(prune_at=99), interquartile_mean)  # type: ignore[arg-type]
    result: list[bool] = []
    waiting = threading.Thread(target=lambda: result.append(board.post(0, [1.0])))
    waiting.start()
    board.abort()  # the other run failed
    waiting.join(timeout=30)
    assert result == [False] and board.stopped


def test_trial_seeds_are_fixed_by_base_seed_and_trial_number():
    seeds = trial_seeds(0, 4, 3)
    assert seeds == trial_seeds(0, 4, 3) and len(set(seeds)) == 3
    assert seeds != trial_seeds(0, 5, 3) and seeds != trial_seeds(1, 4, 3)
    assert trial_seeds(0, 4, 5)[:3] == seeds


def test_interquartile_mean_matches_hand_values_and_scipy():
    from scipy.stats import trim_mean

    assert interquartile_mean([[1, 2, 3, 4, 5, 6, 7, 8]]) == 4.5  # middle half: 3, 4, 5, 6
    assert interquartile_mean([[1, 2, 3, 4], [5, 6, 7, 8]]) == 4.5  # the seeds' returns are pooled
    assert interquartile_mean([[0, 0, 0, 100]]) == 0.0  # one outlier does not move it
    assert interquartile_mean([[10, 20, 30]]) == 20.0  # n < 4: nothing is cut
    assert pooled_mean([[0, 0, 0, 100]]) == 25.0
    rng = np.random.default_rng(1)
    for n in range(1, 30):
        values = rng.normal(size=n)
        assert interquartile_mean([values]) == pytest.approx(trim_mean(values, 0.25))


@pytest.mark.parametrize("shape", [(3, 5), (1, 5), (2, 5), (5, 10)])
def test_interquartile_mean_is_rliables(shape):
    # the IQM is rliable's (the benchmark report's), exactly
    from rliable.metrics import aggregate_iqm

    rng = np.random.default_rng(3)
    for _ in range(200):
        integers = rng.integers(-500, 500, size=shape).astype(float)
        assert interquartile_mean(list(integers)) == aggregate_iqm(integers)
        floats = rng.normal(-200, 100, size=shape)
        assert interquartile_mean(list(floats)) == aggregate_iqm(floats)


def test_bootstrap_lower_bound_hand_values():
    assert bootstrap_lower([[7.0, 7.0], [7.0, 7.0, 7.0]]) == 7.0  # no spread: the bound is the value
    # seeds scoring 0 and 10: a quarter of the resamples draw the first seed twice (IQM 0), so the 2.5th
    # percentile is exactly 0 although the IQM is 5
    assert bootstrap_lower([[0.0] * 4, [10.0] * 4]) == 0.0
    assert interquartile_mean([[0.0] * 4, [10.0] * 4]) == 5.0
    rng = np.random.default_rng(2)
    returns = [rng.normal(100, 20, size=5) for _ in range(3)]
    low = bootstrap_lower(returns)
    assert low == bootstrap_lower(returns)  # fixed generator: the same returns, the same number
    assert low < interquartile_mean(returns)
    assert set(AGGREGATES) == {"iqm", "mean", "bootstrap_lower", "worst_seed"}


def test_worst_seed_is_the_lowest_seed_mean():
    # seed means 2.5, 480 and 500: the worst is the first, though the pooled IQM and mean are far above it
    returns = [[0.0, 5.0], [470.0, 490.0, 480.0], [500.0]]
    assert worst_seed(returns) == 2.5
    assert worst_seed([returns[1]]) == 480.0
    assert worst_seed(list(reversed(returns))) == 2.5
    assert AGGREGATES["worst_seed"] is worst_seed
    with pytest.raises(ValueError, match="at least one episode"):
        worst_seed([[1.0], []])


def test_bootstrap_lower_is_the_two_and_a_half_percentile_of_the_two_level_bootstrap():
    """
    The bound replayed by hand: the same generator, seeds then episodes with replacement, rliable's IQM of each
    resample, and the 2.5th percentile of the 1000 IQMs (not the 5th, which is about 3 higher here).
    """
    from rliable.metrics import aggregate_iqm

    returns = [list(np.random.default_rng(k).normal(10 * k, 5, size=6)) for k in range(4)]
    rng = np.random.default_rng(0)
    iqms = []
    for _ in range(1000):
        seeds = rng.integers(4, size=4)
        iqms.append(aggregate_iqm(np.concatenate([np.asarray(returns[k])[rng.integers(6, size=6)] for k in seeds])))
    assert bootstrap_lower(returns) == pytest.approx(np.percentile(iqms, 2.5), abs=1e-12)
    assert np.percentile(iqms, 5.0) - np.percentile(iqms, 2.5) > 1.0
    assert bootstrap_lower(returns, confidence=0.9) == pytest.approx(np.percentile(iqms, 5.0), abs=1e-12)


def test_eval_flags_are_validated():
    with pytest.raises(ValueError, match="eval-seeds"):
        PGExperimentManager(argparse.Namespace(), "grpo", ENV, "logs", eval_seeds=0)
    with pytest.raises(ValueError, match="eval-aggregate"):
        PGExperimentManager(argparse.Namespace(), "grpo", ENV, "logs", eval_aggregate="median")


# -- bad launcher input: one line naming the value and the valid ones, exit 2 ------------------------------------------


def launcher_error(capsys, *args: str) -> str:
    """Run ``sb3-pg-zoo train`` on ``args``; assert exit 2 and one error line; return that line."""
    with pytest.raises(SystemExit) as info:
        main(["train", "--algo", "reinforce", "--env", ENV, "-n", "64", "-f", "logs", "--verbose", "0", *args])
    assert info.value.code == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("sb3-pg-zoo train: error: "), lines
    return lines[0]


def test_unknown_hyperparameter_lists_the_constructor_keywords(in_tmp, capsys):
    line = launcher_error(capsys, "-params", "n_episode:4")
    assert "unknown hyperparameter 'n_episode' for reinforce on CartPole-v1" in line
    assert "REINFORCE takes: " in line and "n_episodes" in line and "baseline" in line


def test_params_given_a_file_name_says_what_it_expects(in_tmp, capsys):
    line = launcher_error(capsys, "-params", "my.yml")
    assert "-params 'my.yml' is not a key:value pair" in line and "--conf-file" in line
    line = launcher_error(capsys, "-params", "baseline:mean value")
    assert "-params 'baseline:mean value': the value 'mean value' is not a Python expression" in line


def test_unknown_study_and_trial_out_of_range_name_the_valid_ones(in_tmp, capsys):
    storage = str(in_tmp / "studies.log")
    journal = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(storage))
    study = optuna.create_study(storage=journal, study_name="known", direction="maximize")
    study.add_trial(optuna.trial.create_trial(params={}, distributions={}, value=1.0))
    study.add_trial(optuna.trial.create_trial(params={}, distributions={}, value=2.0))
    optuna.create_study(storage=journal, study_name="other")
    line = launcher_error(capsys, "--storage", storage, "--study-name", "unknown", "--trial-id", "0")
    assert f"--study-name 'unknown' is not in {storage}; its studies: known, other" in line
    line = launcher_error(capsys, "--storage", storage, "--study-name", "known", "--trial-id", "9")
    assert "--trial-id 9 is out of range for study 'known': 0 to 1" in line


def test_eval_seeds_without_optimize_is_an_error(in_tmp, capsys):
    line = launcher_error(capsys, "--eval-seeds", "2")
    assert "--eval-seeds applies only to -optimize" in line
    line = launcher_error(capsys, "--eval-seeds", "2", "--eval-aggregate", "mean")
    assert "--eval-seeds and --eval-aggregate apply only to -optimize" in line


def test_train_defaults_to_one_torch_thread_on_cpu(in_tmp):
    """rl-zoo3 leaves torch's default (a thread per core); the launcher passes --num-threads 1 on CPU unless told."""
    from sb3_pg_ext.zoo.cli import with_cpu_thread_default

    assert with_cpu_thread_default(["--algo", "ppo"])[-2:] == ["--num-threads", "1"]
    assert with_cpu_thread_default(["--device", "cpu"])[-2:] == ["--num-threads", "1"]
    assert with_cpu_thread_default(["--num-threads", "4"]) == ["--num-threads", "4"]
    assert with_cpu_thread_default(["--num-threads=-1"]) == ["--num-threads=-1"]
    assert with_cpu_thread_default(["--device", "cuda"]) == ["--device", "cuda"]
    before = th.get_num_threads()
    try:
        for given, expected in (([], 1), (["--num-threads", "-1"], 2)):
            th.set_num_threads(2)
            main(["train", "--algo", "reinforce", "--env", ENV, "-n", "64", "-f", "logs", "--verbose", "0", *given])
            assert th.get_num_threads() == expected
    finally:
        th.set_num_threads(before)
