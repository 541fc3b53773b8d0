"""
The benchmark grid (``python -m sb3_pg_ext.benchmark``): algorithms x envs x seeds trained through the zoo's
experiment machinery (locally or as Ray tasks), one small JSON file per finished cell in a results store, and a
report regenerated from the store alone; see docs/benchmark.md.
This package imports the zoo and the algorithms; nothing in the package imports it.
"""

from sb3_pg_ext.benchmark.grid import Cell, GridResult, cell_record, run_grid, train_cell
from sb3_pg_ext.benchmark.store import ResultStore

__all__ = ["Cell", "GridResult", "ResultStore", "cell_record", "run_grid", "train_cell"]
