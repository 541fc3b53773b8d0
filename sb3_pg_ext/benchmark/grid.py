"""
The benchmark grid: :func:`run_grid` runs the cells ``(algo, env, seed)`` that a results store does not hold as
finished, and reruns a finished cell whose settings have changed since it ran
(:func:`~sb3_pg_ext.benchmark.cells.is_stale`: its budget and options, or the hyperparameters it trains with), on
one of two executors side by side:

- local (:mod:`sb3_pg_ext.benchmark.local`): in this process (``workers <= 1``) or in ``workers`` spawned processes,
  each cell's record written to the store by the process that ran it, the moment it ends;
- Ray (:mod:`sb3_pg_ext.benchmark.ray_backend`, ``ray_address``): each cell a Ray task whose record comes back to
  the calling process, which writes it the moment the task ends, so that a cluster needs no shared filesystem.

The cells and their records (what a cell trains, what it records, when it is stale) live in
:mod:`sb3_pg_ext.benchmark.cells`; their names are importable from here too.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable

from sb3_pg_ext.benchmark.cells import (
    EVAL_SEED_OFFSET,
    BenchmarkExperimentManager,
    Cell,
    CellTrainer,
    GridProgress,
    GridResult,
    TimedEvalCallback,
    cell_record,
    effective_hyperparams,
    grid_cells,
    hyperparams_file,
    is_stale,
    package_versions,
    split_untuned,
    train_cell,
    tuned_envs,
)
from sb3_pg_ext.benchmark.local import run_cell, run_cells_locally
from sb3_pg_ext.benchmark.ray_backend import run_cells_on_ray
from sb3_pg_ext.benchmark.store import ResultStore


def run_grid(
    cells: Iterable[Cell],
    store: ResultStore,
    workers: int = 1,
    progress: bool = True,
    ray_address: str | None = None,
    train: CellTrainer = train_cell,
) -> GridResult:
    """
    Run the cells that ``store`` does not hold as finished (failed and missing ones) and the finished ones whose
    settings have changed (:func:`is_stale`), with a progress bar of cells done, running, failed and the time left.

    :param cells: the grid
    :param store: the results store; finished cells in it are skipped unless stale
    :param workers: local executor: ``<= 1`` runs the cells in this process, ``N`` in N spawned worker processes
        (one torch thread each); each record is written by the process that ran the cell, the moment it ends
    :param progress: show the progress bar
    :param ray_address: run the cells as Ray tasks instead (``ray.init(address=...)``: ``"auto"``, ``"local"``,
        ``"ray://host:port"``, ``"host:port"``); the records come back to this process, which writes them
        (:func:`sb3_pg_ext.benchmark.ray_backend.run_cells_on_ray`). ``workers`` must then be 1: the cluster's
        CPUs set the parallelism
    :param train: what trains a cell and returns its finished record (:func:`train_cell`); it must pickle for
        worker processes and Ray tasks
    :return: what the call did
    """
    if ray_address is not None and workers > 1:
        raise ValueError(f"workers={workers} and ray_address={ray_address!r} are exclusive: Ray schedules the cells")
    cells = list(cells)
    store.clean_temporary()
    pending_keys = set(store.pending(c.key for c in cells))
    stale = [c.key for c in cells if c.key not in pending_keys and is_stale(store.read(*c.key) or {}, c)]
    pending_keys.update(stale)
    result = GridResult(skipped=[c.key for c in cells if c.key not in pending_keys], stale=stale)
    todo = [c for c in cells if c.key in pending_keys]
    if ray_address is not None:
        record_function = functools.partial(cell_record, train=train)
        return run_cells_on_ray(todo, store, result, address=ray_address, progress=progress, record_function=record_function)
    return run_cells_locally(todo, store, result, workers=workers, progress=progress, train=train)


__all__ = [
    "EVAL_SEED_OFFSET",
    "BenchmarkExperimentManager",
    "Cell",
    "CellTrainer",
    "GridProgress",
    "GridResult",
    "TimedEvalCallback",
    "cell_record",
    "effective_hyperparams",
    "grid_cells",
    "hyperparams_file",
    "is_stale",
    "package_versions",
    "run_cell",
    "run_grid",
    "split_untuned",
    "train_cell",
    "tuned_envs",
]
