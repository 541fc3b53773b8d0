"""
The Ray backend of the benchmark grid (``python -m sb3_pg_ext.benchmark run ... --ray-address ADDR``).

Each cell is one Ray task (``num_cpus=1``, one torch thread) that runs :func:`~sb3_pg_ext.benchmark.cells.cell_record`
(the same code as the local executor, :mod:`sb3_pg_ext.benchmark.local`) and returns the record; the calling process
(the driver) writes each record to the store, atomically, the moment its task ends. The workers never touch the store,
so a multi-machine cluster needs no shared filesystem; every node needs this package (and the same versions of its
dependencies) installed.

- A cell whose training raises comes back as a failed record (:func:`cell_record` catches the error) and is
  written as in the local backend; a task that raises outside the training (the package missing on a node) is
  recorded as failed too, with Ray's error.
- A task whose worker process or node dies leaves no record (tasks are submitted with ``max_retries=0``): the cell
  is listed in :attr:`GridResult.interrupted` and runs again at the next call, while the other cells go on.

Ray is an optional dependency (``pip install "sb3-pg-ext[ray]"``), imported only when this backend runs.
"""

from __future__ import annotations

import datetime
import socket
from collections.abc import Callable, Sequence
from dataclasses import asdict
from types import ModuleType
from typing import Any

from sb3_pg_ext.benchmark.cells import Cell, GridProgress, GridResult, cell_record, package_versions
from sb3_pg_ext.benchmark.store import FAILED, ResultStore

#: The install command that the error of a missing Ray names.
RAY_INSTALL = 'pip install "sb3-pg-ext[ray]"'

RecordFunction = Callable[[Cell], dict[str, Any]]


def import_ray() -> ModuleType:
    """
    Import Ray.

    :return: the ``ray`` module
    :raises ImportError: naming the install command when Ray is not installed
    """
    try:
        import ray
    except ImportError as error:
        raise ImportError(f"the Ray backend (--ray-address) needs Ray, an optional dependency: {RAY_INSTALL}") from error
    return ray


def _run_task(cell: Cell, record_function: RecordFunction) -> dict[str, Any]:
    """The body of a cell's Ray task, run in a Ray worker: one torch thread, the package's algorithms registered."""
    import torch as th

    from sb3_pg_ext.zoo.registry import register

    th.set_num_threads(1)
    register()
    return record_function(cell)


def _task_error_record(cell: Cell, error: BaseException) -> dict[str, Any]:
    """The failed record of a task that raised outside :func:`cell_record` (Ray's error, with the remote traceback)."""
    now = datetime.datetime.now(datetime.timezone.utc).isoformat()
    cause = getattr(error, "cause", None) or error
    return {
        "algo": cell.algo,
        "env": cell.env,
        "seed": cell.seed,
        "status": FAILED,
        "error": f"{type(cause).__name__}: {cause}",
        "traceback": str(error),
        "config": {"cell": asdict(cell)},
        "started": now,
        "ended": now,
        "host": socket.gethostname(),
        "versions": package_versions(),
    }


def run_cells_on_ray(
    cells: Sequence[Cell],
    store: ResultStore,
    result: GridResult,
    address: str,
    progress: bool = True,
    record_function: RecordFunction = cell_record,
) -> GridResult:
    """
    Run ``cells`` as Ray tasks and write each returned record to ``store`` the moment its task ends.

    Connects with ``ray.init(address=address)`` unless Ray is already initialised in this process (then the
    existing connection is used and left open); a connection opened here is shut down on return.

    :param cells: the cells to run (:func:`~sb3_pg_ext.benchmark.grid.run_grid` passes the ones not finished)
    :param store: the results store, written by this process only
    :param result: filled in with the finished, failed and interrupted cells
    :param address: Ray's ``address``: ``"auto"`` (a running cluster), ``"local"`` (start a local instance),
        ``"ray://host:port"`` (Ray client) or ``"host:port"`` (a cluster's GCS)
    :param progress: show the progress bar
    :param record_function: what a task runs on its cell (pickled to the workers); the default is
        :func:`~sb3_pg_ext.benchmark.cells.cell_record` (:func:`~sb3_pg_ext.benchmark.grid.run_grid` binds its cell
        trainer to it)
    :return: ``result``
    """
    if not isinstance(address, str) or not address:
        raise ValueError(f"address must be a non-empty string (auto, local, ray://host:port, host:port); got {address!r}")
    ray = import_ray()
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address=address)
    task = ray.remote(num_cpus=1, max_retries=0)(_run_task)
    bar = GridProgress(len(cells), result, enabled=progress)
    in_flight: dict[Any, Cell] = {}
    try:
        cpus = max(int(ray.cluster_resources().get("CPU", 1)), 1)
        in_flight = {task.remote(cell, record_function): cell for cell in cells}
        bar.running(min(cpus, len(in_flight)))
        while in_flight:
            ready, _ = ray.wait(list(in_flight), num_returns=1)
            for ref in ready:
                cell = in_flight.pop(ref)
                try:
                    record = ray.get(ref)
                except ray.exceptions.RayTaskError as error:  # raised in the task, outside cell_record
                    record = _task_error_record(cell, error)
                except ray.exceptions.RayError:  # the worker or its node died, the task was cancelled
                    result.interrupted.append(cell.key)
                    continue
                if (record.get("algo"), record.get("env"), record.get("seed")) != cell.key:
                    raise RuntimeError(f"the task of cell {cell.key} returned the record of another cell")
                store.write(record)
                bar.done(cell.key, str(record["status"]), running=min(cpus, len(in_flight)))
    finally:
        for ref, cell in in_flight.items():  # an interrupted driver (Ctrl-C): the cells in flight have no record
            if not started_here:
                # A connection this call did not open stays open, so its tasks are cancelled. One opened here is shut
                # down below, which ends the tasks it owns; force-cancelling them first races with their replies on
                # Ctrl-C (Ray 2.x aborts the driver: "Tried to complete task that was not pending").
                ray.cancel(ref, force=True)
            result.interrupted.append(cell.key)
        bar.close()
        if started_here:
            ray.shutdown()
    return result


__all__ = ["RAY_INSTALL", "import_ray", "run_cells_on_ray"]
