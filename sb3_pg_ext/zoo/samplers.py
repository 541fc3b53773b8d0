"""
Optuna samplers and converters for rl-zoo3's ``-optimize`` (``rl_zoo3.hyperparams_opt`` conventions).

Each ``sample_<algo>_params(trial, n_actions, n_envs, additional_args)`` draws the trial's raw parameters (the names
Optuna stores, e.g. ``one_minus_gamma``, ``n_episodes_pow``) and returns the model's keyword arguments. Each
``convert_<algo>_params(params)`` maps stored raw parameters to the keyword arguments in the form of an rl-zoo3
hyperparameter file (``learning_rate: lin_0.001`` for a linear schedule): rl-zoo3 calls it when ``--trial-id``
reloads a trial into a training run, before it turns strings into schedules; the sampler applies the same step
itself (``ExperimentManager._preprocess_schedules``), so a trial trains exactly what its reload trains.

Parameters that exist only in some branches (e.g. ``vf_coef`` only with a value baseline) are sampled only there
(Optuna's define-by-run spaces); options that the algorithm would reject together are never drawn together.

The ranges, per option (shared ones first):

- ``learning_rate`` log-uniform in [1e-5, 3e-3]: rl-zoo3's PPO range (1e-5..2e-3) widened to 3e-3, since the
  package defaults of GRPO and ISPG (1e-3) sit near its top; ``lr_schedule`` linear (to 0, REINFORCE's default) or
  constant.
- ``one_minus_gamma`` log-uniform in [1e-4, 0.05]: gamma from 0.95 (Pendulum's horizon) to 0.9999 (rl-zoo3's PPO
  range reaches 0.97; the lower end is extended for the Monte-Carlo returns of REINFORCE and ISPG, whose variance
  grows with the horizon).
- ``ent_coef`` log-uniform in [1e-8, 0.1] (rl-zoo3's PPO range; the token tasks needed 0.01).
- ``max_grad_norm`` in {None, 0.5, 1, 5}: off (REINFORCE's default), ISPG's 0.5, GRPO's 1.0, and a loose clip
  (PPOKL: {0.3, 0.5, 1, 2}, rl-zoo3's PPO range 0.3..2 in steps; like PPO it always clips).
- ``net_arch`` tiny/small/medium = [64] / [64, 64] / [256, 256] (rl-zoo3's sizes; actor-only lists for ISPG and
  GRPO, pi/vf dicts for REINFORCE and PPOKL) and ``activation_fn`` tanh/relu (rl-zoo3's PPO choices).
"""

from __future__ import annotations

from typing import Any

import optuna
from rl_zoo3.exp_manager import ExperimentManager
from torch import nn

NET_ARCH = {"tiny": [64], "small": [64, 64], "medium": [256, 256]}
ACTIVATION_FN: dict[str, type[nn.Module]] = {"tanh": nn.Tanh, "relu": nn.ReLU}
GRAD_NORMS = [None, 0.5, 1.0, 5.0]


# -- shared pieces -------------------------------------------------------------------------------------------------


def _sample_common(trial: optuna.Trial, gamma: bool = True, grad_norms: list[float | None] = GRAD_NORMS) -> dict[str, Any]:
    params: dict[str, Any] = {
        "learning_rate": trial.suggest_float("learning_rate", 1e-5, 3e-3, log=True),
        "lr_schedule": trial.suggest_categorical("lr_schedule", ["linear", "constant"]),
        "ent_coef": trial.suggest_float("ent_coef", 1e-8, 0.1, log=True),
        "max_grad_norm": trial.suggest_categorical("max_grad_norm", grad_norms),
        "net_arch": trial.suggest_categorical("net_arch", list(NET_ARCH)),
        "activation_fn": trial.suggest_categorical("activation_fn", list(ACTIVATION_FN)),
    }
    if gamma:
        params["one_minus_gamma"] = trial.suggest_float("one_minus_gamma", 1e-4, 0.05, log=True)
        trial.set_user_attr("gamma", 1 - params["one_minus_gamma"])
    return params


def _convert_common(params: dict[str, Any], actor_critic: bool) -> dict[str, Any]:
    """The shared raw parameters -> keyword arguments; the rest of ``params`` is passed through unchanged."""
    hyperparams = dict(params)
    learning_rate = float(hyperparams.pop("learning_rate"))
    schedule = hyperparams.pop("lr_schedule", "constant")
    hyperparams["learning_rate"] = f"lin_{learning_rate!r}" if schedule == "linear" else learning_rate
    if "one_minus_gamma" in hyperparams:
        hyperparams["gamma"] = 1 - hyperparams.pop("one_minus_gamma")
    layers = NET_ARCH[hyperparams.pop("net_arch")]
    net_arch: list[int] | dict[str, list[int]] = dict(pi=list(layers), vf=list(layers)) if actor_critic else list(layers)
    hyperparams["policy_kwargs"] = dict(net_arch=net_arch, activation_fn=ACTIVATION_FN[hyperparams.pop("activation_fn")])
    for name in [key for key in hyperparams if key.endswith("_pow")]:
        hyperparams[name[: -len("_pow")]] = 2 ** hyperparams.pop(name)
    return hyperparams


def _as_model_kwargs(hyperparams: dict[str, Any]) -> dict[str, Any]:
    """What the trial trains: the file form with its schedules built, as rl-zoo3 builds them for a file."""
    return ExperimentManager._preprocess_schedules(dict(hyperparams))


# -- REINFORCE ------------------------------------------------------------------------------------------------------


def convert_reinforce_params(params: dict[str, Any]) -> dict[str, Any]:
    hyperparams = dict(params)
    if hyperparams["baseline"] == "optimal":
        # not sampled in this branch; set here so that a file's reward_to_go/normalize_advantage cannot override
        hyperparams.update(reward_to_go=False, normalize_advantage=False)
    return _convert_common(hyperparams, actor_critic=True)


def sample_reinforce_params(trial: optuna.Trial, n_actions: int, n_envs: int, additional_args: dict) -> dict[str, Any]:
    """
    REINFORCE: ``n_episodes`` = 2 ** ``n_episodes_pow`` in 2..32 (default 8; >= 2 so that every baseline is
    defined); every ``baseline``; ``reward_to_go`` and ``normalize_advantage`` only when the baseline allows them
    (``"optimal"`` needs whole-episode returns and no normalisation); ``discount_weighting`` return/gradient;
    ``vf_coef`` uniform in [0.1, 1] with the value baseline only (SB3's default 0.5 in the middle).
    """
    params = _sample_common(trial)
    params["n_episodes_pow"] = trial.suggest_int("n_episodes_pow", 1, 5)
    baseline = trial.suggest_categorical("baseline", ["none", "mean", "loo", "value", "optimal"])
    params["baseline"] = baseline
    if baseline != "optimal":
        params["reward_to_go"] = trial.suggest_categorical("reward_to_go", [True, False])
        params["normalize_advantage"] = trial.suggest_categorical("normalize_advantage", [False, True])
    params["discount_weighting"] = trial.suggest_categorical("discount_weighting", ["return", "gradient"])
    if baseline == "value":
        params["vf_coef"] = trial.suggest_float("vf_coef", 0.1, 1.0)
    trial.set_user_attr("n_episodes", 2 ** params["n_episodes_pow"])
    return _as_model_kwargs(convert_reinforce_params(params))


# -- ISPG -----------------------------------------------------------------------------------------------------------


def convert_ispg_params(params: dict[str, Any]) -> dict[str, Any]:
    return _convert_common(params, actor_critic=False)


def sample_ispg_params(trial: optuna.Trial, n_actions: int, n_envs: int, additional_args: dict) -> dict[str, Any]:
    """
    ISPG: ``buffer_size`` in {1k, 2k, 5k, 20k, 100k} transitions (default 5k; older episodes carry weights far from
    1, so the buffer's age is the main knob); ``batch_size`` = 2 ** ``batch_size_pow`` episodes in 4..64 (default
    16); ``train_every_episodes`` and ``gradient_steps`` in {1, 2, 4, 8, 16} (default 4 each: the replay ratio);
    every ``importance_weights`` and ``baseline``; ``clip_ratio`` in {None, 1, 2, 5} (exact weights, V-trace's 1,
    looser truncations); ``self_normalize`` on/off.
    """
    params = _sample_common(trial)
    params["buffer_size"] = trial.suggest_categorical("buffer_size", [1_000, 2_000, 5_000, 20_000, 100_000])
    params["batch_size_pow"] = trial.suggest_int("batch_size_pow", 2, 6)
    params["train_every_episodes"] = trial.suggest_categorical("train_every_episodes", [1, 2, 4, 8, 16])
    params["gradient_steps"] = trial.suggest_categorical("gradient_steps", [1, 2, 4, 8, 16])
    params["importance_weights"] = trial.suggest_categorical("importance_weights", ["per_decision", "prefix", "one_step"])
    params["clip_ratio"] = trial.suggest_categorical("clip_ratio", [None, 1.0, 2.0, 5.0])
    params["baseline"] = trial.suggest_categorical("baseline", ["none", "mean", "loo"])
    params["self_normalize"] = trial.suggest_categorical("self_normalize", [False, True])
    trial.set_user_attr("batch_size", 2 ** params["batch_size_pow"])
    return _as_model_kwargs(convert_ispg_params(params))


# -- PPOKL ----------------------------------------------------------------------------------------------------------


def convert_ppo_kl_params(params: dict[str, Any]) -> dict[str, Any]:
    hyperparams = dict(params)
    hyperparams["gae_lambda"] = 1 - hyperparams.pop("one_minus_gae_lambda")
    if hyperparams.get("clip_range", 0.0) is None:
        # None is PPOKL's default (no clipping); rl-zoo3's file form cannot hold None for a schedule key
        del hyperparams["clip_range"]
    return _convert_common(hyperparams, actor_critic=True)


def sample_ppo_kl_params(trial: optuna.Trial, n_actions: int, n_envs: int, additional_args: dict) -> dict[str, Any]:
    """
    PPOKL: rl-zoo3's PPO ranges for what PPOKL shares with PPO (``n_steps`` = 2 ** 5..12 per env, capped at a
    4096-transition rollout over all envs; ``batch_size`` = 2 ** 5..10; ``n_epochs`` in {1, 5, 10, 20};
    ``one_minus_gae_lambda`` log-uniform in [1e-4, 0.1]) and the KL penalty's own: ``kl_target`` log-uniform in
    [1e-3, 0.1] (around the paper's 0.003..0.03), ``kl_coef`` (the initial beta when adaptive, the fixed beta
    otherwise) log-uniform in [0.01, 10], ``adaptive_kl`` on/off, every ``kl_estimator`` and ``kl_direction``, and
    ``clip_range`` in {None, 0.1, 0.2, 0.3} (None: the pure KL-penalty objective, the default; the others combine
    the penalty with PPO's clip).
    """
    # max_grad_norm: rl-zoo3's PPO range 0.3..2, in steps (PPOKL, like PPO, always clips)
    params = _sample_common(trial, grad_norms=[0.3, 0.5, 1.0, 2.0])
    # n_steps per env from 32 up to a rollout of 4096 transitions in all (rl-zoo3's range is per env: with 16 envs,
    # n_steps 4096 made a 65,536-step rollout, 1.5 updates in a 100k-step trial, and every Acrobot-v1 trial scored
    # about -500); one env keeps rl-zoo3's 32..4096
    max_pow = max(5, 12 - (max(n_envs, 1).bit_length() - 1))
    params["n_steps_pow"] = trial.suggest_int("n_steps_pow", 5, max_pow)
    # batch_size from 32, not rl-zoo3's 8: the CartPole-v1 study's pick (batch 8, 20 epochs) trained at 164 env
    # steps per CPU second against about 1,100 for batch 64, and a trial that slow costs the budget of a study
    params["batch_size_pow"] = trial.suggest_int("batch_size_pow", 5, 10)
    params["n_epochs"] = trial.suggest_categorical("n_epochs", [1, 5, 10, 20])
    params["one_minus_gae_lambda"] = trial.suggest_float("one_minus_gae_lambda", 1e-4, 0.1, log=True)
    params["kl_target"] = trial.suggest_float("kl_target", 1e-3, 0.1, log=True)
    params["kl_coef"] = trial.suggest_float("kl_coef", 0.01, 10.0, log=True)
    params["adaptive_kl"] = trial.suggest_categorical("adaptive_kl", [True, False])
    params["kl_estimator"] = trial.suggest_categorical("kl_estimator", ["analytic", "k1", "k3"])
    params["kl_direction"] = trial.suggest_categorical("kl_direction", ["forward", "reverse"])
    params["clip_range"] = trial.suggest_categorical("clip_range", [None, 0.1, 0.2, 0.3])
    trial.set_user_attr("n_steps", 2 ** params["n_steps_pow"])
    trial.set_user_attr("batch_size", 2 ** params["batch_size_pow"])
    return _as_model_kwargs(convert_ppo_kl_params(params))


# -- GRPO -----------------------------------------------------------------------------------------------------------


def convert_grpo_params(params: dict[str, Any]) -> dict[str, Any]:
    hyperparams = dict(params)
    if not hyperparams.pop("use_kl", False):
        hyperparams["beta"] = 0.0
    for name in ("branch_gamma", "reward_to_go_gamma"):
        if name in hyperparams:
            hyperparams["gamma"] = hyperparams.pop(name)
    return _convert_common(hyperparams, actor_critic=False)


def sample_grpo_params(trial: optuna.Trial, n_actions: int, n_envs: int, additional_args: dict) -> dict[str, Any]:
    """
    GRPO: ``group_size`` G in {2, 4, 8, 16, 32} (default 8; the token benchmark used 16), ``n_groups`` B in
    {1, 2, 4, 8, 16, 32} (default 4; 32 on the token tasks), ``n_epochs`` in {1, 2, 4, 8} (default 4),
    ``batch_size`` in {64, 256, 1024, None} steps (None: one step per epoch on the whole rollout), ``clip_range``
    in {0.1, 0.2, 0.3}, ``clip_range_high`` in {None, 0.28} (DAPO's asymmetric clip), a KL penalty (``use_kl``;
    then ``beta`` log-uniform in [1e-4, 0.3] and every ``kl_estimator``), every ``scale_rewards``,
    ``loss_aggregation`` among seq_sum/seq_mean/token_mean (``"constant"`` needs a length bound that not every env
    has), ``drop_zero_std_groups`` on/off.

    Drawn last (so that the draws above keep their order): ``group_start`` reset/branch; with branch groups,
    ``branch_horizon`` H in {8, 16, 32, 64} and ``branch_gamma`` in {0.9, 0.95, 0.98, 0.99} (the continuations'
    discount; H = 16 with gamma = 0.9 was the best of a first exploration on Pendulum-v1) and ``branch_advantage``
    group/vine (vine: continuations from every trunk state, so a rollout costs about G x H env steps per trunk
    step; first: only the continuations' first actions are trained, then ``branch_noise`` independent/common).
    With reset groups: ``advantage`` outcome/process/reward_to_go, and with reward_to_go ``reward_to_go_gamma``
    in {0.95, 0.98, 0.99, 1.0} (its discount; the other advantages of reset groups are undiscounted). Branch
    groups need env snapshots: on an env without them a branch trial raises a ``ValueError`` at its first
    rollout, which rl-zoo3 prunes.
    """
    params = _sample_common(trial, gamma=False)
    params["group_size"] = trial.suggest_categorical("group_size", [2, 4, 8, 16, 32])
    params["n_groups"] = trial.suggest_categorical("n_groups", [1, 2, 4, 8, 16, 32])
    params["n_epochs"] = trial.suggest_categorical("n_epochs", [1, 2, 4, 8])
    params["batch_size"] = trial.suggest_categorical("batch_size", [64, 256, 1024, None])
    params["clip_range"] = trial.suggest_categorical("clip_range", [0.1, 0.2, 0.3])
    params["clip_range_high"] = trial.suggest_categorical("clip_range_high", [None, 0.28])
    params["use_kl"] = trial.suggest_categorical("use_kl", [False, True])
    if params["use_kl"]:
        params["beta"] = trial.suggest_float("beta", 1e-4, 0.3, log=True)
        params["kl_estimator"] = trial.suggest_categorical("kl_estimator", ["k1", "k2", "k3"])
    params["scale_rewards"] = trial.suggest_categorical("scale_rewards", ["group", "batch", "none"])
    params["loss_aggregation"] = trial.suggest_categorical("loss_aggregation", ["seq_sum", "seq_mean", "token_mean"])
    params["drop_zero_std_groups"] = trial.suggest_categorical("drop_zero_std_groups", [False, True])
    params["group_start"] = trial.suggest_categorical("group_start", ["reset", "branch"])
    if params["group_start"] == "branch":
        params["branch_horizon"] = trial.suggest_categorical("branch_horizon", [8, 16, 32, 64])
        params["branch_gamma"] = trial.suggest_categorical("branch_gamma", [0.9, 0.95, 0.98, 0.99])
        params["branch_advantage"] = trial.suggest_categorical("branch_advantage", ["group", "vine", "first"])
        if params["branch_advantage"] == "first":
            params["branch_noise"] = trial.suggest_categorical("branch_noise", ["independent", "common"])
    else:
        params["advantage"] = trial.suggest_categorical("advantage", ["outcome", "process", "reward_to_go"])
        if params["advantage"] == "reward_to_go":
            params["reward_to_go_gamma"] = trial.suggest_categorical("reward_to_go_gamma", [0.95, 0.98, 0.99, 1.0])
    return _as_model_kwargs(convert_grpo_params(params))


HYPERPARAMS_SAMPLER = {
    "reinforce": sample_reinforce_params,
    "ispg": sample_ispg_params,
    "ppo_kl": sample_ppo_kl_params,
    "grpo": sample_grpo_params,
}
HYPERPARAMS_CONVERTER = {
    "reinforce": convert_reinforce_params,
    "ispg": convert_ispg_params,
    "ppo_kl": convert_ppo_kl_params,
    "grpo": convert_grpo_params,
}

__all__ = [
    "HYPERPARAMS_CONVERTER",
    "HYPERPARAMS_SAMPLER",
    "convert_grpo_params",
    "convert_ispg_params",
    "convert_ppo_kl_params",
    "convert_reinforce_params",
    "sample_grpo_params",
    "sample_ispg_params",
    "sample_ppo_kl_params",
    "sample_reinforce_params",
]
