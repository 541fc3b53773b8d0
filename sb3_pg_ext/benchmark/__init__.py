"""
The benchmark grid (``python -m sb3_pg_ext.benchmark``): algorithms x envs x seeds trained through the zoo's
experiment machinery (locally or as Ray tasks), one small JSON file per finished cell in a results store, and a
report regenerated from the store alone; see docs/benchmark.md.

Modules, each importing only those above it: :mod:`~sb3_pg_ext.benchmark.store` (the results store),
:mod:`~sb3_pg_ext.benchmark.cells` (a cell, how it trains, its record), :mod:`~sb3_pg_ext.benchmark.local` and
:mod:`~sb3_pg_ext.benchmark.ray_backend` (the two executors, side by side), :mod:`~sb3_pg_ext.benchmark.grid`
(:func:`run_grid`, which dispatches to them), :mod:`~sb3_pg_ext.benchmark.presets` (the named grids),
:mod:`~sb3_pg_ext.benchmark.report` and :mod:`~sb3_pg_ext.benchmark.cli`.
This package imports the zoo and the algorithms; nothing in the package imports it.
"""

from sb3_pg_ext.benchmark.cells import Cell, GridResult, cell_record, train_cell
from sb3_pg_ext.benchmark.grid import run_grid
from sb3_pg_ext.benchmark.store import ResultStore

__all__ = ["Cell", "GridResult", "ResultStore", "cell_record", "run_grid", "train_cell"]
