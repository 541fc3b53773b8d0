"""
Policy checkpoints for the lab: a saved model (``.zip``), an rl-zoo3 run folder, or the package's hyperparameter entry
trained for a fraction of its budget (plainly, with the entry's keyword arguments).
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

import torch as th
import yaml
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.utils import LinearSchedule

from sb3_pg_ext.lab.options import ADAPTERS

#: Entry keys the plain trainer cannot honour (they change the env the policy sees or the training loop).
UNSUPPORTED_KEYS = ("normalize", "env_wrapper", "frame_stack", "callback", "vec_env_wrapper")


class _StopAt(BaseCallback):
    """Stop ``learn`` once ``num_timesteps`` reaches ``steps``."""

    def __init__(self, steps: int):
        super().__init__()
        self.steps = steps

    def _on_step(self) -> bool:
        return self.model.num_timesteps < self.steps


def load_model(algo: str, path: Path) -> BaseAlgorithm:
    """
    Load a saved model of ``algo`` on the CPU.

    :param algo: the lab's algorithm name
    :param path: the ``.zip`` file
    """
    if algo not in ADAPTERS:
        raise ValueError(f"unknown algorithm {algo!r}; the lab measures: {', '.join(sorted(ADAPTERS))}")
    if not Path(path).is_file():
        raise FileNotFoundError(f"no saved model at {path}")
    return ADAPTERS[algo].algo_class.load(path, device="cpu")


def zoo_model_path(folder: Path, env_id: str) -> Path:
    """
    The model file of an rl-zoo3 run folder (``logs/<algo>/<env>_<n>/``): ``<env>.zip``, else ``best_model.zip``.
    A run with ``normalize`` (a ``vecnormalize.pkl``) is refused: the lab plays the env unnormalised.

    :param folder: the run folder
    :param env_id: the env id (the file is named after it)
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"no zoo run folder at {folder}")
    if (folder / "vecnormalize.pkl").exists() or any(folder.glob("*/vecnormalize.pkl")):
        raise ValueError(f"{folder} holds a VecNormalize run (vecnormalize.pkl); the lab does not support normalised envs yet")
    for name in (f"{env_id}.zip", f"{env_id.replace('/', '-')}.zip", "best_model.zip"):
        if (folder / name).is_file():
            return folder / name
    found = sorted(path.name for path in folder.glob("*.zip"))
    raise FileNotFoundError(f"no {env_id}.zip or best_model.zip in the zoo run folder {folder} (zips there: {found})")


def hyperparams_entry(algo: str, env_id: str) -> dict[str, Any]:
    """
    The package's hyperparameter entry of ``env_id`` (``sb3_pg_ext/hyperparams/<algo>.yml``), or ``default``.

    :param algo: the lab's algorithm name
    :param env_id: the env id
    """
    text = (resources.files("sb3_pg_ext") / "hyperparams" / f"{algo}.yml").read_text()
    entries = yaml.safe_load(text)
    if env_id in entries:
        return dict(entries[env_id])
    if "default" in entries:
        return dict(entries["default"])
    raise KeyError(f"{algo}.yml has no entry for {env_id} and no default (entries: {', '.join(entries)})")


def entry_kwargs(entry: dict[str, Any]) -> tuple[int, int, dict[str, Any]]:
    """
    An rl-zoo3 entry as ``(n_timesteps, n_envs, constructor keywords)``: ``policy_kwargs`` strings evaluated as
    rl-zoo3 does (with ``nn`` and ``th``), ``lin_<x>`` learning rates as a linear decay from x to 0.

    :param entry: the entry
    :raises ValueError: for keys the lab's plain trainer does not support
    """
    entry = dict(entry)
    unsupported = [key for key in UNSUPPORTED_KEYS if entry.get(key)]
    if unsupported:
        raise ValueError(f"entry keys {unsupported} are not supported by the lab's trainer (supported: plain kwargs)")
    for key in UNSUPPORTED_KEYS:
        entry.pop(key, None)
    n_timesteps = int(float(entry.pop("n_timesteps")))
    n_envs = int(entry.pop("n_envs", 1))
    kwargs: dict[str, Any] = dict(entry)
    if isinstance(kwargs.get("policy_kwargs"), str):
        kwargs["policy_kwargs"] = eval(kwargs["policy_kwargs"], {"nn": th.nn, "th": th, "dict": dict})
    for key in ("learning_rate", "clip_range"):
        value = kwargs.get(key)
        if isinstance(value, str) and value.startswith("lin_"):
            kwargs[key] = LinearSchedule(float(value[4:]), 0.0, 1.0)
    return n_timesteps, n_envs, kwargs


def train_fraction(algo: str, env_id: str, fraction: float, seed: int, path: Path) -> BaseAlgorithm:
    """
    Train the package's entry of ``env_id`` as for its whole ``n_timesteps`` (its learning-rate schedule over the
    whole budget) and stop after ``fraction`` of it: the policy a full run has at that point. Saved to ``path``; a
    model already saved there is loaded instead.

    :param algo: the lab's algorithm name
    :param env_id: the env id
    :param fraction: the fraction of the entry's budget, in (0, 1]
    :param seed: the training seed
    :param path: where the trained model is saved (``.zip``)
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"--train-fraction must be in (0, 1], got {fraction}")
    path = Path(path)
    if path.is_file():
        return load_model(algo, path)
    n_timesteps, n_envs, kwargs = entry_kwargs(hyperparams_entry(algo, env_id))
    policy = kwargs.pop("policy", "MlpPolicy")
    env = make_vec_env(env_id, n_envs=n_envs, seed=seed)
    model = ADAPTERS[algo].algo_class(policy, env, seed=seed, device="cpu", **kwargs)
    model.learn(n_timesteps, callback=_StopAt(max(int(fraction * n_timesteps), 1)))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.zip")
    model.save(tmp)
    tmp.replace(path)
    return model
