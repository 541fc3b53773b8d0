"""
Policy checkpoints for the lab: a saved model (``.zip``), an rl-zoo3 run folder, or a hyperparameter entry (the
package's, or one of a ``--conf-file``) trained for a fraction of its budget (plainly, with the entry's keyword
arguments). A checkpoint is identified by the digest of its policy's parameters (:func:`policy_digest`), which a run
folder's ``context.json`` records.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch as th
import yaml
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.utils import LinearSchedule

from sb3_pg_ext.lab.options import ADAPTERS
from sb3_pg_ext.lab.stats import array_digest

#: Entry keys the plain trainer cannot honour (they change the env the policy sees or the training loop).
UNSUPPORTED_KEYS = ("normalize", "env_wrapper", "frame_stack", "callback", "vec_env_wrapper")

#: The model attribute (saved in the ``.zip``) that records where a ``--train-fraction`` checkpoint came from.
SOURCE_ATTRIBUTE = "lab_checkpoint_source"

#: What identifies a ``--train-fraction`` checkpoint's training: two sources equal on these trained the same policy.
TRAINING_KEYS = ("train_fraction", "seed", "entry")


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


def hyperparams_entry(algo: str, env_id: str, conf_file: Path | None = None) -> dict[str, Any]:
    """
    The hyperparameter entry of ``env_id``: from ``conf_file`` when given (an rl-zoo3 yml; its ``env_id`` entry, which
    must be there), else from the package's ``sb3_pg_ext/hyperparams/<algo>.yml`` (its ``env_id`` entry, or
    ``default``).

    :param algo: the lab's algorithm name
    :param env_id: the env id
    :param conf_file: an rl-zoo3 hyperparameter file to read the entry from instead of the package's
    """
    return entry_source(algo, env_id, conf_file)["entry"]


def entry_source(algo: str, env_id: str, conf_file: Path | None = None) -> dict[str, Any]:
    """
    The entry :func:`hyperparams_entry` reads, with where it came from: ``{"entry_file", "entry_key", "entry"}``
    (``entry_file`` is ``sb3_pg_ext/hyperparams/<algo>.yml`` for the package's entries, else ``conf_file`` as given;
    ``entry_key`` is ``env_id`` or ``default``).

    :param algo: the lab's algorithm name
    :param env_id: the env id
    :param conf_file: an rl-zoo3 hyperparameter file to read the entry from instead of the package's
    :raises FileNotFoundError: for a ``conf_file`` that does not exist
    :raises KeyError: for a ``conf_file`` without an ``env_id`` entry, or a package file without it and ``default``
    """
    if conf_file is not None:
        conf_file = Path(conf_file)
        if not conf_file.is_file():
            raise FileNotFoundError(f"no --conf-file at {conf_file}")
        entries = yaml.safe_load(conf_file.read_text()) or {}
        if not isinstance(entries, dict) or not isinstance(entries.get(env_id), dict):
            found = ", ".join(map(str, entries)) if isinstance(entries, dict) else "none"
            raise KeyError(f"--conf-file {conf_file} has no entry for {env_id} (entries: {found})")
        return {"entry_file": str(conf_file), "entry_key": env_id, "entry": dict(entries[env_id])}
    text = (resources.files("sb3_pg_ext") / "hyperparams" / f"{algo}.yml").read_text()
    entries = yaml.safe_load(text)
    for key in (env_id, "default"):
        if key in entries:
            return {"entry_file": f"sb3_pg_ext/hyperparams/{algo}.yml", "entry_key": key, "entry": dict(entries[key])}
    raise KeyError(f"{algo}.yml has no entry for {env_id} and no default (entries: {', '.join(entries)})")


def training_source(algo: str, env_id: str, fraction: float, seed: int, conf_file: Path | None = None) -> dict[str, Any]:
    """
    Where a ``--train-fraction`` checkpoint comes from: the fraction, the seed and :func:`entry_source`'s record.

    :param algo: the lab's algorithm name
    :param env_id: the env id
    :param fraction: the fraction of the entry's budget
    :param seed: the training seed
    :param conf_file: an rl-zoo3 hyperparameter file to read the entry from instead of the package's
    """
    return {"train_fraction": fraction, "seed": seed, **entry_source(algo, env_id, conf_file)}


def same_training(recorded: dict[str, Any] | None, source: dict[str, Any]) -> bool:
    """
    Whether a recorded checkpoint source names the same training as ``source`` (:data:`TRAINING_KEYS`).

    :param recorded: a stored source (a zip's or a ``context.json``'s), or None when nothing was recorded
    :param source: :func:`training_source`'s record
    """
    return recorded is not None and all(recorded.get(key) == source[key] for key in TRAINING_KEYS)


def policy_digest(model: BaseAlgorithm) -> str:
    """
    The digest of a checkpoint: :func:`~sb3_pg_ext.lab.stats.array_digest` of its policy's ``state_dict`` (every
    tensor as float64, flattened, in sorted key order). Two checkpoints with the same digest have the same policy.

    :param model: the checkpoint
    """
    state = model.policy.state_dict()
    parts = [state[key].detach().cpu().to(th.float64).reshape(-1).numpy() for key in sorted(state)]
    return array_digest(np.concatenate(parts) if parts else np.zeros(0))


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


def train_fraction(
    algo: str, env_id: str, fraction: float, seed: int, path: Path, conf_file: Path | None = None
) -> BaseAlgorithm:
    """
    Train the entry of ``env_id`` (the package's, or ``conf_file``'s: see :func:`hyperparams_entry`) as for its whole
    ``n_timesteps`` (its learning-rate schedule over the whole budget) and stop after ``fraction`` of it: the policy a
    full run has at that point. Saved to ``path``, with where it came from (the model's ``lab_checkpoint_source``:
    fraction, seed and :func:`entry_source`'s record); a model already saved there is loaded instead, if it was
    trained from the same entry, fraction and seed.

    :param algo: the lab's algorithm name
    :param env_id: the env id
    :param fraction: the fraction of the entry's budget, in (0, 1]
    :param seed: the training seed
    :param path: where the trained model is saved (``.zip``)
    :param conf_file: an rl-zoo3 hyperparameter file to read the entry from instead of the package's
    :raises ValueError: for a model saved at ``path`` from another entry, fraction or seed, or with no such record
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"--train-fraction must be in (0, 1], got {fraction}")
    path = Path(path)
    source = training_source(algo, env_id, fraction, seed, conf_file)
    if path.is_file():
        model = load_model(algo, path)
        saved = getattr(model, SOURCE_ATTRIBUTE, None)
        if not same_training(saved, source):
            what = "records no entry (saved before the lab recorded them)" if saved is None else f"was trained from {saved}"
            raise ValueError(
                f"the checkpoint saved at {path} {what}, not from {source}; delete it to train this entry, "
                "or choose another --label"
            )
        return model
    n_timesteps, n_envs, kwargs = entry_kwargs(source["entry"])
    policy = kwargs.pop("policy", "MlpPolicy")
    env = make_vec_env(env_id, n_envs=n_envs, seed=seed)
    model = ADAPTERS[algo].algo_class(policy, env, seed=seed, device="cpu", **kwargs)
    model.learn(n_timesteps, callback=_StopAt(max(int(fraction * n_timesteps), 1)))
    setattr(model, SOURCE_ATTRIBUTE, source)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.zip")
    model.save(tmp)
    tmp.replace(path)
    return model
