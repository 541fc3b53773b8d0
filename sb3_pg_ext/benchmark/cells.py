"""
The cells of the benchmark grid and their records: a cell ``(algo, env, seed)`` trained through the zoo's experiment
machinery, and the record a cell leaves in the results store.

A cell trains ``algo`` on ``env`` with the algorithm's tuned hyperparameters, read as ``sb3-pg-zoo train`` reads
them (:class:`~sb3_pg_ext.zoo.exp_manager.PGExperimentManager`: the package's ``hyperparams/<algo>.yml`` for its
four algorithms, rl-zoo3's own files for ``ppo``, ``a2c``, ``sac``, ``trpo``...), for the env's budget of env steps
(the file's ``n_timesteps`` when no budget is given). It records:

- an evaluation curve: ``n_evaluations`` deterministic evaluations of ``n_eval_episodes`` episodes at fixed step
  intervals (rl-zoo3's ``EvalCallback``), on an eval env seeded ``seed + EVAL_SEED_OFFSET`` (training envs are
  seeded ``seed, seed + 1, ...``, one per parallel env, so the two seed sets are disjoint);
- the final evaluation: ``n_final_episodes`` deterministic episodes after training, on the same eval env;
- throughput: env steps per CPU second (``time.process_time``, one torch thread) and per wall second of the
  training, evaluation time excluded (:class:`TimedEvalCallback` times the evaluations);
- the exact config (hyperparameters, file, budget, seeds) and the package versions.

:func:`is_stale` tells a finished record whose settings have changed since it ran (its budget and options, or the
hyperparameters it trains with). The executors (:mod:`sb3_pg_ext.benchmark.local`,
:mod:`sb3_pg_ext.benchmark.ray_backend`) run :func:`cell_record` with a cell trainer (:data:`CellTrainer`,
:func:`train_cell` by default) and share :class:`GridResult` and :class:`GridProgress`.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import functools
import importlib.metadata
import io
import json
import platform
import socket
import tempfile
import time
import traceback
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import rl_zoo3
import torch as th
import yaml
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import EvalCallback
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.vec_env import VecEnv, sync_envs_normalization

from sb3_pg_ext import HYPERPARAMS_DIR
from sb3_pg_ext.benchmark.store import FAILED, FINISHED, CellKey, ResultStore
from sb3_pg_ext.zoo.exp_manager import PGExperimentManager
from sb3_pg_ext.zoo.registry import ZOO_ALGOS, register

#: The eval env of seed s is seeded s + EVAL_SEED_OFFSET (training envs use s, s + 1, ..., s + n_envs - 1).
EVAL_SEED_OFFSET = 1_000_000
#: The packages whose versions each record carries.
VERSIONED_PACKAGES = (
    "sb3-pg-ext",
    "stable-baselines3",
    "sb3-contrib",
    "rl_zoo3",
    "gymnasium",
    "torch",
    "numpy",
)


@dataclass(frozen=True)
class Cell:
    """One run of the grid. ``n_timesteps`` None: the hyperparameter file's budget."""

    algo: str
    env: str
    seed: int
    n_timesteps: int | None = None
    n_evaluations: int = 10
    n_eval_episodes: int = 5
    n_final_episodes: int = 10
    #: another hyperparameter file than the algorithm's (``--conf-file``)
    config: str | None = None
    #: settings of an Optuna trial on top of the file's entry (``--storage``, ``--study-name``, ``--trial-id``)
    storage: str | None = None
    study_name: str | None = None
    trial_id: int | None = None

    @property
    def key(self) -> tuple[str, str, int]:
        return (self.algo, self.env, self.seed)


def grid_cells(
    algos: Sequence[str],
    envs: Sequence[str],
    seeds: Sequence[int],
    budgets: dict[str, int] | None = None,
    configs: Mapping[str, str] | None = None,
    **settings: Any,
) -> list[Cell]:
    """
    The cells of ``algos x envs x seeds``, seed by seed, then env by env, the algorithms alternating: a grid stopped
    partway holds the same seeds for every algorithm, and the contenders take turns as the load of a shared machine
    drifts. ``budgets`` maps an env to its env-step budget, ``configs`` an algorithm to the hyperparameter file its
    cells read instead of its own (``--conf-file``).
    """
    budgets = budgets or {}
    configs = configs or {}
    per_algo = [dict(settings, config=configs[a]) if a in configs else settings for a in algos]
    return [
        Cell(a, e, int(s), budgets.get(e), **algo_settings)
        for s in seeds
        for e in envs
        for a, algo_settings in zip(algos, per_algo, strict=True)
    ]


def hyperparams_file(algo: str, config: str | None = None) -> Path:
    """
    The file a cell of ``algo`` reads: ``config`` where given (``--conf-file``), else the package's for its four
    algorithms and rl-zoo3's for the others.
    """
    if config is not None:
        return Path(config)
    if algo in ZOO_ALGOS:
        return HYPERPARAMS_DIR / f"{algo}.yml"
    return Path(rl_zoo3.__file__).resolve().parent / "hyperparams" / f"{algo}.yml"


@functools.cache
def tuned_envs(algo: str, config: str | None = None) -> frozenset[str]:
    """
    The envs that ``algo``'s hyperparameter file (or ``config``) names (an ``atari`` or ``default`` entry does not
    count).
    """
    path = hyperparams_file(algo, config)
    if not path.is_file():
        return frozenset()
    with open(path, encoding="utf-8") as f:
        entries = yaml.safe_load(f) or {}
    if not isinstance(entries, dict):
        raise TypeError(f"{path} holds a {type(entries).__name__}, not entries by env id")
    return frozenset(str(name) for name in entries if name not in ("atari", "default"))


def _experiment_manager(cell: Cell, log_folder: str) -> BenchmarkExperimentManager:
    """The experiment manager of ``cell``, as ``sb3-pg-zoo train`` would build it for the same arguments."""
    return BenchmarkExperimentManager(
        argparse.Namespace(**asdict(cell)),
        cell.algo,
        cell.env,
        log_folder,
        n_timesteps=cell.n_timesteps or 0,
        n_eval_episodes=cell.n_eval_episodes,
        n_evaluation_points=cell.n_evaluations,
        seed=cell.seed,
        config=cell.config,
        storage=cell.storage,
        study_name=cell.study_name,
        trial_id=cell.trial_id,
        log_interval=-2,  # rl-zoo3: below -1, no SB3 log output
        verbose=0,
        device="cpu",
    )


def _comparable(hyperparams: dict[str, Any], cell: Cell) -> Any:
    """Hyperparameters as a record stores them (JSON), less the file's budget where the cell sets its own."""
    kept = {k: v for k, v in hyperparams.items() if not (k == "n_timesteps" and cell.n_timesteps)}
    return json.loads(json.dumps(kept, sort_keys=True, default=str))


def effective_hyperparams(cell: Cell) -> dict[str, Any]:
    """
    The hyperparameters ``cell`` trains with, as rl-zoo3 saves them in a run's ``config.yml``: the file's entry for
    the env (the algorithm's file or ``cell.config``), with the settings of ``cell.trial_id`` on top.
    """
    register()
    # rl-zoo3 prints them
    with tempfile.TemporaryDirectory(prefix="sb3-pg-benchmark-") as log_folder, contextlib.redirect_stdout(io.StringIO()):
        _, saved = _experiment_manager(cell, log_folder).read_hyperparameters()
    return dict(saved)


def _changes(then: Any, now: Any, prefix: str) -> list[str]:
    """The keys whose values differ between two JSON-like dicts, as ``prefix key: then -> now``."""
    if not isinstance(then, dict) or not isinstance(now, dict):
        return [] if then == now else [f"{prefix}: {then!r} -> {now!r}"]
    missing = object()
    changes = []
    for key in sorted(set(then) | set(now), key=str):
        old, new = then.get(key, missing), now.get(key, missing)
        if old != new:
            old_text = "(absent)" if old is missing else repr(old)
            new_text = "(absent)" if new is missing else repr(new)
            changes.append(f"{prefix} {key}: {old_text} -> {new_text}")
    return changes


def stale_reasons(record: dict[str, Any], cell: Cell) -> list[str]:
    """
    Why the finished ``record`` was trained for other settings than ``cell`` gives now, one line per changed field:
    the record's config missing, another final-evaluation protocol (the eval env reseeded at
    ``seed + EVAL_SEED_OFFSET`` before the final episodes), another budget (``budget``) or cell setting
    (``protocol``: evaluations, episodes, trial), or other effective hyperparameters (``hyperparams KEY``: an entry
    re-tuned since; the file's ``n_timesteps`` does not count when the cell sets the budget). Empty: not stale.

    :param record: a finished record of the store
    :param cell: the cell as the grid gives it now
    :return: the reasons, empty when the record is up to date
    """
    config = record.get("config", {})
    if not isinstance(config, dict) or "cell" not in config or "hyperparams" not in config:
        return ["the record holds no config of its cell and hyperparameters"]
    reasons = []
    if config.get("final_eval_seed") != cell.seed + EVAL_SEED_OFFSET:
        reasons.append(
            f"protocol final_eval_seed: {config.get('final_eval_seed', '(absent)')!r} -> {cell.seed + EVAL_SEED_OFFSET} "
            "(the final episodes now start from the reseeded eval env)"
        )
    # the file and study paths themselves do not count (a checkout elsewhere has other absolute paths): what they
    # hold does, through the effective hyperparameters
    paths = ("config", "storage")
    then = {k: v for k, v in config["cell"].items() if k not in paths}
    now = {k: v for k, v in json.loads(json.dumps(asdict(cell))).items() if k not in paths}
    for change in _changes(then, now, "cell"):
        field_name = change.split(":")[0].removeprefix("cell ")
        kind = "budget" if field_name == "n_timesteps" else "protocol"
        if field_name == "n_timesteps" and change.endswith("-> None"):
            change = change.removesuffix("None") + "None (the hyperparameter file's n_timesteps)"
        reasons.append(change.replace(f"cell {field_name}", f"{kind} {field_name}", 1))
    try:
        current = effective_hyperparams(cell)
    except Exception as error:  # the entry is gone or unreadable: the record cannot be up to date
        return [*reasons, f"hyperparams: cannot be read now ({type(error).__name__}: {error})"]
    reasons += _changes(_comparable(config["hyperparams"], cell), _comparable(current, cell), "hyperparams")
    return reasons


def is_stale(record: dict[str, Any], cell: Cell) -> bool:
    """
    True when the finished ``record`` was trained for other settings than ``cell`` gives now (:func:`stale_reasons`:
    another budget or protocol, the final evaluation's reseeded eval env included, or other effective
    hyperparameters). A table then never mixes old settings with new ones.
    """
    return bool(stale_reasons(record, cell))


def reuse_records(cells: Iterable[Cell], source: ResultStore, target: ResultStore) -> tuple[list[Cell], list[Cell]]:
    """
    Copy into ``target`` the finished records of ``source`` that are runs of ``cells`` as they are now (not stale for
    them, :func:`stale_reasons`: the same effective hyperparameters, budget, seeds and evaluation protocol; only the
    paths of the hyperparameter file and study may differ), instead of training those cells again. Each copy holds
    the target's cell in its config and ``copied_from`` naming the source file. A cell whose ``target`` record is
    already finished and up to date is left alone.

    :param cells: the cells to fill
    :param source: the store that may hold runs of them (another grid's, e.g. a preset sharing some cells)
    :param target: the store to fill
    :return: the cells copied, and the cells still missing or stale in ``target`` (no usable source record)
    """
    copied: list[Cell] = []
    left: list[Cell] = []

    def up_to_date(record: dict[str, Any] | None, cell: Cell) -> bool:
        return record is not None and record["status"] == FINISHED and not stale_reasons(record, cell)

    for cell in cells:
        if up_to_date(target.read(*cell.key), cell):
            continue
        record = source.read(*cell.key)
        if record is None or not up_to_date(record, cell):
            left.append(cell)
            continue
        config = dict(record["config"], cell=json.loads(json.dumps(asdict(cell))))
        origin = source.path(*cell.key)
        target.write(dict(record, config=config, copied_from=f"{origin.parent.name}/{origin.name}"))
        copied.append(cell)
    return copied, left


def split_untuned(cells: Iterable[Cell]) -> tuple[list[Cell], list[Cell]]:
    """
    (cells whose env has an entry in the algorithm's hyperparameter file, the others). The files name an env only
    where the action space fits (rl-zoo3's ``sac.yml`` has no CartPole-v1), so the second list holds the cells
    the benchmark does not run.
    """
    tuned: list[Cell] = []
    untuned: list[Cell] = []
    for cell in cells:
        (tuned if cell.env in tuned_envs(cell.algo, cell.config) else untuned).append(cell)
    return tuned, untuned


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in VERSIONED_PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


class TimedEvalCallback(EvalCallback):
    """
    SB3's ``EvalCallback`` that adds up the time its own steps take (the evaluations along the way), so that a cell's
    throughput can leave them out: process time (``time.process_time``) in :attr:`cpu_seconds`, wall time
    (``time.perf_counter``) in :attr:`wall_seconds`. Takes ``EvalCallback``'s arguments.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.cpu_seconds = 0.0
        self.wall_seconds = 0.0

    def _on_step(self) -> bool:
        cpu, wall = time.process_time(), time.perf_counter()
        try:
            return super()._on_step()
        finally:
            self.cpu_seconds += time.process_time() - cpu
            self.wall_seconds += time.perf_counter() - wall


class _InterruptNotingModel:
    """
    A model as rl-zoo3's ``ExperimentManager.learn`` uses it, whose ``learn`` notes a ``KeyboardInterrupt`` before
    rl-zoo3 swallows it (the model itself is left untouched: it is pickled when the best model is saved).
    """

    def __init__(self, model: BaseAlgorithm):
        self.model = model
        self.interrupted = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self.model, name)

    def learn(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return self.model.learn(*args, **kwargs)
        except KeyboardInterrupt:
            self.interrupted = True
            raise


class BenchmarkExperimentManager(PGExperimentManager):
    """
    :class:`PGExperimentManager` for one benchmark cell: ``n_evaluations`` evaluations evenly spread over the
    budget, timed (:class:`TimedEvalCallback`), and an eval env seeded apart from the training envs.
    """

    def __init__(self, *args: Any, n_evaluation_points: int = 10, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.n_evaluation_points = n_evaluation_points

    def create_callbacks(self) -> None:
        # n_timesteps is known here (read from the file or the budget); rl-zoo3 then divides by n_envs
        self.eval_freq = max(int(self.n_timesteps) // self.n_evaluation_points, 1)
        super().create_callbacks()
        # rl-zoo3 builds its EvalCallback inline (no hook for the class): the same one, built as a
        # TimedEvalCallback on the eval env rl-zoo3 created, with the arguments rl-zoo3 gave it
        for index, callback in enumerate(self.callbacks):
            if type(callback) is EvalCallback:
                self.callbacks[index] = TimedEvalCallback(
                    callback.eval_env,
                    callback_on_new_best=callback.callback_on_new_best,
                    best_model_save_path=callback.best_model_save_path,
                    n_eval_episodes=callback.n_eval_episodes,
                    log_path=self.save_path,
                    eval_freq=callback.eval_freq,
                    deterministic=callback.deterministic,
                    render=callback.render,
                    verbose=callback.verbose,
                    warn=callback.warn,
                )

    def learn(self, model: BaseAlgorithm) -> None:
        """
        rl-zoo3's ``learn`` (its callbacks, logging and clean-up), except that a ``KeyboardInterrupt`` during
        training is raised again once rl-zoo3 has closed the envs: rl-zoo3 catches it and carries on as if training
        had ended, and a benchmark cell must never be recorded as finished with part of its budget.
        """
        noting = _InterruptNotingModel(model)
        super().learn(noting)  # type: ignore[arg-type]
        if noting.interrupted:
            raise KeyboardInterrupt

    def create_envs(self, n_envs: int, eval_env: bool = False, no_log: bool = False) -> VecEnv:
        if not eval_env:
            return super().create_envs(n_envs, eval_env=eval_env, no_log=no_log)
        train_seed = self.seed
        self.seed = train_seed + EVAL_SEED_OFFSET
        try:
            return super().create_envs(n_envs, eval_env=eval_env, no_log=no_log)
        finally:
            self.seed = train_seed


class IncompleteTrainingError(RuntimeError):
    """Training ended before the cell's budget of env steps (the cell is then recorded as failed, never finished)."""


#: What trains a cell and returns its finished record (:func:`train_cell`; the executors take another one, e.g. in
#: tests). Raises whatever training raises; :func:`cell_record` records the error.
CellTrainer = Callable[["Cell"], dict[str, Any]]


def train_cell(cell: Cell) -> dict[str, Any]:
    """Train one cell and return its (finished) record. Raises whatever training raises."""
    register()
    th.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="sb3-pg-benchmark-") as log_folder:
        manager = _experiment_manager(cell, log_folder)
        with contextlib.redirect_stdout(io.StringIO()):  # rl-zoo3 prints the hyperparameters whatever verbose
            setup = manager.setup_experiment()
        assert setup is not None
        model, saved_hyperparams = setup
        evaluations = [c for c in manager.callbacks if isinstance(c, EvalCallback)]
        if len(evaluations) != 1 or not isinstance(evaluations[0], TimedEvalCallback):
            raise RuntimeError(f"expected one TimedEvalCallback in the experiment, found {evaluations}")
        evaluation = evaluations[0]
        evaluation.verbose = 0
        cpu, wall = time.process_time(), time.perf_counter()
        manager.learn(model)
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        train_cpu, train_wall = cpu - evaluation.cpu_seconds, wall - evaluation.wall_seconds
        steps = int(model.num_timesteps)
        if steps < int(manager.n_timesteps):  # a cell is finished only with its whole budget trained
            raise IncompleteTrainingError(f"trained {steps} of its {int(manager.n_timesteps)} env steps")

        eval_env = evaluation.eval_env
        if model.get_vec_normalize_env() is not None:
            sync_envs_normalization(model.get_env(), eval_env)  # type: ignore[arg-type]
        # the final episodes start from the eval seed again, so that they do not depend on how many episodes the
        # evaluations along the way played (the policy does not: deterministic evaluation draws no training RNG)
        eval_env.seed(cell.seed + EVAL_SEED_OFFSET)
        final_returns, final_lengths = evaluate_policy(
            model,
            eval_env,
            n_eval_episodes=cell.n_final_episodes,
            deterministic=True,
            return_episode_rewards=True,
            warn=False,
        )
        eval_env.close()
        final = np.asarray(final_returns, dtype=np.float64)
        return {
            "algo": cell.algo,
            "env": cell.env,
            "seed": cell.seed,
            "status": FINISHED,
            "n_timesteps": steps,
            "curve": {
                "timesteps": [int(t) for t in evaluation.evaluations_timesteps],
                "returns": [[float(r) for r in row] for row in evaluation.evaluations_results],
                "ep_lengths": [[int(n) for n in row] for row in evaluation.evaluations_length],
            },
            "final": {
                "returns": final.tolist(),
                "ep_lengths": np.asarray(final_lengths, dtype=np.int64).tolist(),
                "mean": float(final.mean()),
                "std": float(final.std()),
            },
            "throughput": {
                "steps_per_cpu_second": steps / train_cpu if train_cpu > 0 else None,
                "steps_per_wall_second": steps / train_wall if train_wall > 0 else None,
                "train_cpu_seconds": train_cpu,
                "train_wall_seconds": train_wall,
                "eval_cpu_seconds": evaluation.cpu_seconds,
                "eval_wall_seconds": evaluation.wall_seconds,
                "torch_threads": th.get_num_threads(),
            },
            "config": {
                "cell": asdict(cell),
                "hyperparams_file": manager.config,
                "hyperparams": dict(saved_hyperparams),
                "n_timesteps": int(manager.n_timesteps),
                "n_envs": int(manager.n_envs),
                "eval_freq_per_env": int(manager.eval_freq),
                "train_seeds": [cell.seed + i for i in range(int(manager.n_envs))],
                "eval_seed": cell.seed + EVAL_SEED_OFFSET,
                # the final evaluation reseeds the eval env (records without this key drew their final episodes
                # after the evaluations along the way)
                "final_eval_seed": cell.seed + EVAL_SEED_OFFSET,
                "deterministic_eval": True,
            },
        }


def cell_record(cell: Cell, train: CellTrainer = train_cell) -> dict[str, Any]:
    """
    Run one cell and return its record: finished (``train``'s record), or failed with the error and its
    traceback when training raises, with the start and end times, the host and the package versions added.

    :param cell: the cell to run
    :param train: what trains the cell and returns its finished record (:func:`train_cell`)
    :return: the record to write to the store
    """
    started = datetime.datetime.now(datetime.timezone.utc).isoformat()
    try:
        record = train(cell)
    except Exception as error:  # every error of a cell is recorded, not lost
        record = {
            "algo": cell.algo,
            "env": cell.env,
            "seed": cell.seed,
            "status": FAILED,
            "error": f"{type(error).__name__}: {error}",
            "traceback": traceback.format_exc(),
            "config": {"cell": asdict(cell)},
        }
    record["started"] = started
    record["ended"] = datetime.datetime.now(datetime.timezone.utc).isoformat()
    record["host"] = socket.gethostname()
    record["versions"] = package_versions()
    return record


@dataclass
class GridResult:
    """
    What one :func:`~sb3_pg_ext.benchmark.grid.run_grid` call did.

    :param skipped: finished cells not run (stale ones included unless they were rerun)
    :param stale: finished cells trained for other settings than the grid's now (run again only when asked:
        ``rerun_stale``)
    :param stale_reasons: stale cell -> why (:func:`stale_reasons`)
    :param damaged: cells whose file was damaged: (cell, why, where the file was set aside); they are run again
    :param interrupted: cells left without a record (a worker process died, or Ctrl-C); the next call runs them
    :param finished: cells finished now
    :param failed: cells failed now
    """

    skipped: list[CellKey] = field(default_factory=list)
    stale: list[CellKey] = field(default_factory=list)
    stale_reasons: dict[CellKey, list[str]] = field(default_factory=dict)
    damaged: list[tuple[CellKey, str, Path]] = field(default_factory=list)
    interrupted: list[CellKey] = field(default_factory=list)
    finished: list[CellKey] = field(default_factory=list)
    failed: list[CellKey] = field(default_factory=list)


class GridProgress:
    """
    The progress bar of a grid, the same for every executor: cells done out of those to run, with tqdm's elapsed
    and remaining time (``[elapsed<left]``), and the cells running, failed and skipped as a postfix.

    :param total: the cells to run
    :param result: the :class:`GridResult` that :meth:`done` fills in
    :param enabled: False: no bar (the counts are still kept)
    """

    def __init__(self, total: int, result: GridResult, enabled: bool = True):
        from tqdm.auto import tqdm

        self.result = result
        self.bar = tqdm(total=total, desc="cells", unit="cell", disable=not enabled)

    def running(self, running: int) -> None:
        """Show ``running`` cells in flight."""
        self.bar.set_postfix(running=running, failed=len(self.result.failed), skipped=len(self.result.skipped))

    def done(self, key: CellKey, status: str, running: int) -> None:
        """Count the cell ``key`` as ended with ``status``, ``running`` cells still in flight."""
        (self.result.finished if status == FINISHED else self.result.failed).append(key)
        self.bar.update(1)
        self.running(running)

    def close(self) -> None:
        self.bar.close()


__all__ = [
    "EVAL_SEED_OFFSET",
    "VERSIONED_PACKAGES",
    "BenchmarkExperimentManager",
    "Cell",
    "CellTrainer",
    "GridProgress",
    "GridResult",
    "IncompleteTrainingError",
    "TimedEvalCallback",
    "cell_record",
    "effective_hyperparams",
    "grid_cells",
    "hyperparams_file",
    "is_stale",
    "package_versions",
    "split_untuned",
    "stale_reasons",
    "train_cell",
    "tuned_envs",
]
