"""
The local executor of the benchmark grid: the cells in this process, or in spawned worker processes (one torch
thread each), each record written to the store by the process that ran the cell, the moment it ends.

A worker process that dies (killed, out of memory) leaves its cell and the cells in flight without a record: they
are listed in :attr:`~sb3_pg_ext.benchmark.cells.GridResult.interrupted` and run again at the next call.

Ctrl-C: the worker processes ignore SIGINT (a terminal sends it to the whole process group), so only this process
sees it; it cancels the queued cells, terminates the workers (the cells in flight leave no record: a record is
written only when its cell has trained its whole budget) and raises the ``KeyboardInterrupt`` again.
"""

from __future__ import annotations

import concurrent.futures
import concurrent.futures.process
import multiprocessing
import signal
from collections.abc import Sequence

import torch as th

from sb3_pg_ext.benchmark.cells import Cell, CellTrainer, GridProgress, GridResult, cell_record, train_cell
from sb3_pg_ext.benchmark.store import CellKey, ResultStore
from sb3_pg_ext.zoo.registry import register


def run_cell(cell: Cell, store_root: str, train: CellTrainer = train_cell) -> tuple[CellKey, str]:
    """
    Run one cell and write its record (finished, or failed with the error) to the store, from the process that ran it.

    :param cell: the cell to run
    :param store_root: directory of the :class:`ResultStore`
    :param train: what trains the cell (:func:`~sb3_pg_ext.benchmark.cells.train_cell`); with worker processes it
        must pickle (a module-level function or an instance of a module-level class)
    :return: (the cell's key, the record's status)
    """
    record = cell_record(cell, train)
    ResultStore(store_root).write(record)
    return cell.key, str(record["status"])


#: Seconds a terminated worker process is given to exit before it is killed.
WORKER_EXIT_TIMEOUT = 5.0


def _init_worker() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle: it ends the workers
    th.set_num_threads(1)
    register()


def _stop_pool(pool: concurrent.futures.ProcessPoolExecutor) -> None:
    """Cancel the queued cells and end the worker processes now (their cells in flight leave no record)."""
    processes = list((getattr(pool, "_processes", None) or {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        if process.is_alive():
            process.terminate()
    for process in processes:
        process.join(WORKER_EXIT_TIMEOUT)
        if process.is_alive():
            process.kill()
            process.join()


def run_cells_locally(
    cells: Sequence[Cell],
    store: ResultStore,
    result: GridResult,
    workers: int = 1,
    progress: bool = True,
    train: CellTrainer = train_cell,
) -> GridResult:
    """
    Run ``cells`` in this process (``workers <= 1``) or in ``workers`` spawned processes.

    :param cells: the cells to run (:func:`~sb3_pg_ext.benchmark.grid.run_grid` passes the ones not finished)
    :param store: the results store, written by the process that runs each cell
    :param result: filled in with the finished, failed and interrupted cells
    :param workers: ``<= 1``: in this process; ``N``: in N spawned worker processes
    :param progress: show the progress bar
    :param train: what trains a cell (:func:`~sb3_pg_ext.benchmark.cells.train_cell`)
    :return: ``result``
    """
    bar = GridProgress(len(cells), result, enabled=progress)
    try:
        if workers <= 1:
            for index, cell in enumerate(cells):
                bar.running(1)
                bar.done(*run_cell(cell, str(store.root), train), running=int(index + 1 < len(cells)))
        else:
            context = multiprocessing.get_context("spawn")
            pool = concurrent.futures.ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker)
            try:
                futures = {pool.submit(run_cell, cell, str(store.root), train) for cell in cells}
                bar.running(min(workers, len(futures)))
                for future in concurrent.futures.as_completed(futures):
                    futures.discard(future)
                    try:
                        key, status = future.result()
                    except concurrent.futures.process.BrokenProcessPool:
                        # a worker died (killed, out of memory): its cell and the ones in flight have no record
                        # and run again on the next call
                        break
                    bar.done(key, status, running=min(workers, len(futures)))
            except BaseException:  # Ctrl-C: no cell more, and the cells in flight leave no record
                _stop_pool(pool)
                raise
            pool.shutdown(wait=True)
    finally:
        bar.close()
        recorded = set(result.finished) | set(result.failed)
        result.interrupted = [c.key for c in cells if c.key not in recorded]
    return result


__all__ = ["run_cell", "run_cells_locally"]
