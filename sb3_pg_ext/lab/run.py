"""
The lab's run: for one (algorithm, env, checkpoint), the reference gradient and, per (option, batch size), the
statistics of R independent batch gradients, each in its own file written atomically, so that an interrupted run
resumes where it stopped and recomputes nothing already stored. A folder belongs to one checkpoint: ``context.json``
records its digest, and a run at another checkpoint is refused (:class:`CheckpointMismatchError`) before it writes
anything.

Layout of a run folder::

    context.json                    algorithm, env, checkpoint (label, digest, source), settings of the run
    reference.json                  the reference gradient (exact, or the mean of K batch gradients)
    reference_gradients.npy         the K batch gradients (policy parameters), for the bias's standard error
    target_policy.pt                ISPG only: the target policy pi (mu = the checkpoint)
    options/<option>__n<batch>.json the statistics of one (option, batch size)
"""

from __future__ import annotations

import json
import os
import tempfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch as th
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.vec_env import DummyVecEnv, VecEnv

from sb3_pg_ext.ispg import ISPG
from sb3_pg_ext.lab.checkpoints import policy_digest
from sb3_pg_ext.lab.gradients import group_slices
from sb3_pg_ext.lab.options import ADAPTERS, Adapter, ISPGAdapter, ispg_target_state
from sb3_pg_ext.lab.stats import (
    array_digest,
    bias_statistics,
    gradient_statistics,
    policy_indices,
    save_array_atomically,
    write_json_atomically,
)

#: A function of the policy giving the exact gradient of the objective (policy parameters, flattened order).
ExactGradient = Callable[[BaseAlgorithm], np.ndarray]


class CheckpointMismatchError(ValueError):
    """A run folder's ``context.json`` does not record the checkpoint the run was given (or records none)."""


@dataclass
class LabRun:
    """
    One lab run.

    :param algo: ``reinforce``, ``ispg`` or ``grpo``
    :param env: a gymnasium env id, or a function returning a new env (e.g. a test MDP)
    :param checkpoint: the policy to measure at (a model of ``algo``'s class)
    :param out: the run folder (see the module docstring)
    :param batch_sizes: batch sizes, in episodes
    :param options: option names (None: every option of the algorithm, see :mod:`sb3_pg_ext.lab.options`)
    :param n_batches: R, batches per (option, batch size)
    :param reference_factor: K: the reference is the mean of K batch gradients of the largest batch size
    :param seed: base seed (each file's seed is derived from it, the option and the batch size)
    :param behind: ISPG only: optimiser steps between the behaviour policy (the checkpoint) and the target policy
    :param exact_gradient: the exact gradient, when known; it replaces the sampled reference
    :param checkpoint_label: how the report names the checkpoint
    :param checkpoint_source: where the checkpoint came from (e.g. the ``--train-fraction`` entry and its file), recorded
        in ``context.json`` as ``checkpoint_source``
    """

    algo: str
    env: str | Callable[[], gym.Env]
    checkpoint: BaseAlgorithm
    out: Path
    batch_sizes: list[int]
    options: list[str] | None = None
    n_batches: int = 32
    reference_factor: int = 64
    seed: int = 0
    behind: int = 0
    exact_gradient: ExactGradient | None = None
    checkpoint_label: str = "checkpoint"
    checkpoint_source: dict[str, Any] | None = None
    adapter: Adapter = field(init=False)

    def __post_init__(self) -> None:
        if self.algo not in ADAPTERS:
            raise ValueError(f"unknown algorithm {self.algo!r}; the lab measures: {', '.join(sorted(ADAPTERS))}")
        self.adapter = ADAPTERS[self.algo]()
        if not isinstance(self.checkpoint, self.adapter.algo_class):
            raise TypeError(
                f"the checkpoint is a {type(self.checkpoint).__name__}, expected a {self.adapter.algo_class.__name__}"
            )
        grid = self.adapter.options()
        if self.options is None:
            self.options = list(grid)
        unknown = [name for name in self.options if name not in grid]
        if unknown:
            raise ValueError(f"unknown {self.algo} options {unknown}; valid: {', '.join(grid)}")
        if self.n_batches < 3:
            raise ValueError(f"n_batches must be >= 3 (the bias's standard error needs three), got {self.n_batches}")
        if self.reference_factor < 3:
            raise ValueError(f"reference_factor must be >= 3, got {self.reference_factor}")
        if not self.batch_sizes or min(self.batch_sizes) < 2:
            raise ValueError(f"batch sizes must be >= 2 episodes, got {self.batch_sizes}")
        if self.behind < 0:
            raise ValueError(f"behind must be >= 0, got {self.behind}")
        if self.behind and not isinstance(self.adapter, ISPGAdapter):
            raise ValueError(f"behind={self.behind} applies to ispg only (algo {self.algo!r})")
        self.out = Path(self.out)

    # ------------------------------------------------------------------------------------------------------------

    @property
    def env_name(self) -> str:
        """The env's name in the report."""
        return self.env if isinstance(self.env, str) else getattr(self.env, "__name__", type(self.env).__name__)

    def make_env(self, seed: int) -> VecEnv:
        """A fresh single VecEnv, seeded."""
        if isinstance(self.env, str):
            return make_vec_env(self.env, n_envs=1, seed=seed)
        env = DummyVecEnv([self.env])
        env.seed(seed)
        return env

    def file_seed(self, *parts: Any) -> int:
        """A seed derived from the base seed and ``parts`` (stable across runs and processes)."""
        return (self.seed * 1_000_003 + zlib.crc32("|".join(map(str, parts)).encode())) % (2**31)

    def build(self, option: str, batch_size: int, seed: int) -> BaseAlgorithm:
        """
        A model of the option at the checkpoint's parameters, set up for one gradient step on ``batch_size``.

        :param option: option name
        :param batch_size: batch size in episodes
        :param seed: the model's seed (its env, actions and draws)
        """
        checkpoint = self.checkpoint
        option_kwargs = self.adapter.options()[option]
        kwargs = {key: getattr(checkpoint, key) for key in self.adapter.kept if hasattr(checkpoint, key)}
        kwargs.update(option_kwargs)
        kwargs.update(self.adapter.fixed_kwargs(batch_size, option_kwargs))
        model = self.adapter.algo_class(
            checkpoint.policy_class,
            self.make_env(seed),
            policy_kwargs=checkpoint.policy_kwargs,
            seed=seed,
            device="cpu",
            **kwargs,
        )
        model.policy.load_state_dict(checkpoint.policy.state_dict())
        self.adapter.check(model)
        return model

    def gradients(
        self, option: str, batch_size: int, n: int, seed: int
    ) -> tuple[np.ndarray, list[int], list[int], BaseAlgorithm]:
        """
        ``n`` gradient estimates of independent batches of ``option`` at ``batch_size``: g = -grad(loss) of the
        algorithm's update, the ascent direction of the objective (the estimate of grad J).

        :return: ``(n, P)`` gradients, env steps and episodes per batch, the model
        """
        model = self.build(option, batch_size, seed)
        _, callback = model._setup_learn(10**12, None)
        self.adapter.prepare(model, {"target_state": self.target_state()})
        rows, steps, episodes = [], [], []
        for _ in range(n):
            gradient, n_steps, n_episodes = self.adapter.sample(model, callback, batch_size)
            rows.append(-gradient)  # -grad(loss): the estimate of grad J
            steps.append(n_steps)
            episodes.append(n_episodes)
        return np.stack(rows), steps, episodes, model

    # ------------------------------------------------------------------------------------------------------------

    def target_state(self) -> dict[str, th.Tensor] | None:
        """ISPG: the target policy pi (computed once, stored in ``target_policy.pt``); None for the others."""
        if not isinstance(self.adapter, ISPGAdapter):
            return None
        path = self.out / "target_policy.pt"
        if path.exists():
            return th.load(path, weights_only=True)
        assert isinstance(self.checkpoint, ISPG)
        seed = self.file_seed("target")
        state = ispg_target_state(self.checkpoint, self.make_env(seed), self.behind, seed)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".target_policy.", suffix=".tmp")
        os.close(fd)
        th.save(state, tmp)
        os.replace(tmp, path)
        return state

    def write_context(self) -> None:
        """
        ``context.json``: what the run measures, with the checkpoint's digest (:func:`policy_digest`) and source.
        Written once; a folder that has one is checked instead (:meth:`check_context`).
        """
        path = self.out / "context.json"
        digest = policy_digest(self.checkpoint)
        if path.exists():
            self.check_context(json.loads(path.read_text()), digest)
            return
        context = {
            "algo": self.algo,
            "env": self.env_name,
            "checkpoint": self.checkpoint_label,
            "checkpoint_digest": digest,
            "behind": self.behind,
            "gamma": getattr(self.checkpoint, "gamma", None),
            "plain": self.adapter.plain_option(self.options or []),
            "unbiased": self.adapter.unbiased_option(self.options or []),
            "batch_unit": self.adapter.batch_unit,
        }
        if self.checkpoint_source is not None:
            context["checkpoint_source"] = self.checkpoint_source
        write_json_atomically(path, context)

    def check_context(self, context: dict[str, Any], digest: str) -> None:
        """
        Refuse a folder measured at another checkpoint: its reference and option files would be reused (or compared
        with new ones) as if they belonged to this one.

        :param context: the folder's stored ``context.json``
        :param digest: the digest of this run's checkpoint
        :raises CheckpointMismatchError: when the stored ``checkpoint_digest`` differs from ``digest``, or is missing
        """
        stored = context.get("checkpoint_digest")
        if stored == digest:
            return
        if stored is None:
            raise CheckpointMismatchError(
                f"run folder {self.out} predates checkpoint records: its context.json has no checkpoint_digest, so "
                f"nothing says it was measured at this checkpoint (digest {digest}). Measure this checkpoint in a new "
                "folder (another --label or --out); or, after checking that this checkpoint reproduces one of the "
                f'folder\'s option files exactly, record it by adding "checkpoint_digest": "{digest}" to its context.json'
            )
        source = context.get("checkpoint_source")
        origin = ""
        if source and "entry_file" in source:
            origin = (
                f" (the folder's checkpoint: --train-fraction {source.get('train_fraction')} --seed "
                f"{source.get('seed')} of the {source.get('entry_key')} entry of {source['entry_file']})"
            )
        elif source:
            origin = f" (the folder's checkpoint: {source})"
        raise CheckpointMismatchError(
            f"run folder {self.out} was measured at checkpoint {stored}{origin}, but this checkpoint's digest is "
            f"{digest}: its stored reference and option files do not belong to this checkpoint. Measure this "
            "checkpoint in another folder (another --label or --out), or rebuild the folder's checkpoint (with "
            "--train-fraction, the --conf-file holding the entry that produced the folder)"
        )

    def reference(self) -> tuple[np.ndarray, np.ndarray | None, dict[str, Any]]:
        """
        The reference gradient (policy parameters): the exact gradient when known, else the mean of K batch gradients
        of the unbiased option at the largest batch size (times the adapter's scale). Stored once.

        :return: the reference, the K batch gradients (None when exact), the stored record
        """
        path, grads_path = self.out / "reference.json", self.out / "reference_gradients.npy"
        if path.exists():
            record = json.loads(path.read_text())
            # Without its K gradients (they are not needed by the report, and may be left out of a results folder),
            # a sampled reference is drawn again below: its seed is fixed, so it comes back with the same digest.
            if record["exact"] or grads_path.exists():
                reference = np.asarray(record["mean"])
                return reference, None if record["exact"] else np.load(grads_path), record
        option = self.adapter.unbiased_option(self.options or [])
        batch_size = max(self.batch_sizes)
        if self.exact_gradient is not None:
            model = self.build(option, batch_size, self.file_seed("reference"))
            target = self.target_state()
            if target is not None:  # ISPG: the gradient of the target policy pi
                model.policy.load_state_dict(target)
            reference = np.asarray(self.exact_gradient(model), dtype=np.float64)
            gradients = None
            record = {"exact": True, "option": None, "batch_size": None, "K": 0}
        else:
            seed = self.file_seed("reference", option, batch_size)
            all_gradients, steps, _, model = self.gradients(option, batch_size, self.reference_factor, seed)
            index = policy_indices(group_slices(model))
            gradients = all_gradients[:, index] * self.adapter.reference_scale(self.adapter.options()[option])
            reference = gradients.mean(0)
            save_array_atomically(grads_path, gradients)
            record = {
                "exact": False,
                "option": option,
                "batch_size": batch_size,
                "K": self.reference_factor,
                "env_steps": float(np.sum(steps)),
                "scale": self.adapter.reference_scale(self.adapter.options()[option]),
            }
        record.update(
            {"digest": array_digest(reference), "norm": float(np.linalg.norm(reference)), "mean": reference.tolist()}
        )
        write_json_atomically(path, record)
        return reference, gradients, record

    def option_path(self, option: str, batch_size: int) -> Path:
        """The file of one (option, batch size)."""
        return self.out / "options" / f"{option}__n{batch_size}.json"

    def run(self, log: Callable[[str], None] | None = None) -> list[Path]:
        """
        Compute every missing (option, batch size) file (a file computed against another reference is recomputed).

        :param log: called with a line per file computed or skipped
        :return: the option files
        """
        self.write_context()
        reference, reference_gradients, record = self.reference()
        paths = []
        for batch_size in self.batch_sizes:
            for option in self.options or []:
                path = self.option_path(option, batch_size)
                paths.append(path)
                if path.exists() and json.loads(path.read_text()).get("reference") == record["digest"]:
                    if log:
                        log(f"stored  {path.name}")
                    continue
                seed = self.file_seed(option, batch_size)
                gradients, steps, episodes, model = self.gradients(option, batch_size, self.n_batches, seed)
                groups = group_slices(model)
                stats = gradient_statistics(gradients, groups, steps, episodes)
                stats["bias"] = bias_statistics(gradients[:, policy_indices(groups)], reference, reference_gradients)
                stats.update(
                    {
                        "option": option,
                        "settings": self.adapter.options()[option],
                        "batch_size": batch_size,
                        "seed": seed,
                        "reference": record["digest"],
                    }
                )
                write_json_atomically(path, stats)
                if log:
                    log(f"wrote   {path.name}: trace {stats['policy']['trace']:.4g}, cosine {stats['bias']['cosine']:.3f}")
        return paths
