"""
The benchmark grid: :func:`run_grid` runs the cells ``(algo, env, seed)`` that a results store does not hold as
finished (:func:`~sb3_pg_ext.benchmark.cells.stale_reasons` tells a finished cell whose budget, options or
hyperparameters have changed since it ran), on one of two executors side by side:

- local (:mod:`sb3_pg_ext.benchmark.local`): in this process (``workers <= 1``) or in ``workers`` spawned processes,
  each cell's record written to the store by the process that ran it, the moment it ends;
- Ray (:mod:`sb3_pg_ext.benchmark.ray_backend`, ``ray_address``): each cell a Ray task whose record comes back to
  the calling process, which writes it the moment the task ends, so that a cluster needs no shared filesystem.

A finished cell whose settings have changed since it ran is run again only when asked (``rerun_stale``); a damaged
file is set aside (renamed, kept) before its cell runs again.

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
    IncompleteTrainingError,
    TimedEvalCallback,
    cell_record,
    effective_hyperparams,
    grid_cells,
    hyperparams_file,
    is_stale,
    package_versions,
    split_untuned,
    stale_reasons,
    train_cell,
    tuned_envs,
)
from sb3_pg_ext.benchmark.local import run_cell, run_cells_locally
from sb3_pg_ext.benchmark.ray_backend import run_cells_on_ray
from sb3_pg_ext.benchmark.store import FINISHED, DamagedRecordError, ResultStore


def run_grid(
    cells: Iterable[Cell],
    store: ResultStore,
    workers: int = 1,
    progress: bool = True,
    ray_address: str | None = None,
    train: CellTrainer = train_cell,
    rerun_stale: bool = False,
) -> GridResult:
    """
    Run the cells that ``store`` does not hold as finished (failed, missing and damaged ones), with a progress bar
    of cells done, running, failed and the time left. A damaged file is set aside first
    (:meth:`~sb3_pg_ext.benchmark.store.ResultStore.set_aside`: renamed, kept). A finished cell whose settings have
    changed (:func:`stale_reasons`) is run again, overwriting its record, only with ``rerun_stale``; otherwise it
    is listed in :attr:`GridResult.stale` and skipped.

    Ctrl-C (``KeyboardInterrupt``) stops the grid: the queued cells are cancelled, the worker processes ended, and
    the cells in flight leave no record; the ``KeyboardInterrupt`` is raised again to the caller.

    :param cells: the grid
    :param store: the results store; finished cells in it are skipped unless stale and ``rerun_stale``
    :param workers: local executor: ``<= 1`` runs the cells in this process, ``N`` in N spawned worker processes
        (one torch thread each); each record is written by the process that ran the cell, the moment it ends
    :param progress: show the progress bar
    :param ray_address: run the cells as Ray tasks instead (``ray.init(address=...)``: ``"auto"``, ``"local"``,
        ``"ray://host:port"``, ``"host:port"``); the records come back to this process, which writes them
        (:func:`sb3_pg_ext.benchmark.ray_backend.run_cells_on_ray`). ``workers`` must then be 1: the cluster's
        CPUs set the parallelism
    :param train: what trains a cell and returns its finished record (:func:`train_cell`); it must pickle for
        worker processes and Ray tasks
    :param rerun_stale: run the stale cells again (their records are overwritten)
    :return: what the call did
    """
    if ray_address is not None and workers > 1:
        raise ValueError(f"workers={workers} and ray_address={ray_address!r} are exclusive: Ray schedules the cells")
    cells = list(cells)
    store.clean_temporary()  # only the temporary files of crashed writes: another lane may be writing
    result = GridResult()
    todo: list[Cell] = []
    for cell in cells:
        try:
            record = store.read(*cell.key)
        except DamagedRecordError as damaged:
            result.damaged.append((cell.key, damaged.reason, store.set_aside(*cell.key)))
            todo.append(cell)
            continue
        if record is None or record["status"] != FINISHED:
            todo.append(cell)
            continue
        reasons = stale_reasons(record, cell)
        if reasons:
            result.stale.append(cell.key)
            result.stale_reasons[cell.key] = reasons
            if rerun_stale:
                todo.append(cell)
                continue
        result.skipped.append(cell.key)
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
    "IncompleteTrainingError",
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
    "stale_reasons",
    "train_cell",
    "tuned_envs",
]
