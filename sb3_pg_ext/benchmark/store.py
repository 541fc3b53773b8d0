"""
The results store: a directory of small JSON files, one per cell ``(algo, env, seed)``, that can be committed.

- A cell's file is written atomically the moment the cell ends: the JSON goes to ``<name>.<pid>.tmp`` in the same
  directory, is flushed and fsynced, then ``os.replace``-d onto ``<name>.json``. A crash leaves at most a ``*.tmp``
  file, which is never read as a result (and is removed by :meth:`ResultStore.clean_temporary`).
- A record has ``status`` ``"finished"`` (a result) or ``"failed"`` (the error and its traceback).
- A rerun of a grid skips finished cells and retries failed and missing ones (:meth:`ResultStore.pending`).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

FINISHED = "finished"
FAILED = "failed"
STATUSES = (FINISHED, FAILED)

CellKey = tuple[str, str, int]


def cell_name(algo: str, env: str, seed: int) -> str:
    """File stem of a cell: ``<algo>__<env>__seed<seed>``, with characters other than ``[A-Za-z0-9_.-]`` as ``_``."""
    safe_env = re.sub(r"[^A-Za-z0-9_.-]", "_", env)
    return f"{algo}__{safe_env}__seed{seed}"


class ResultStore:
    """A directory of one JSON record per cell."""

    def __init__(self, root: str | os.PathLike[str]):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, algo: str, env: str, seed: int) -> Path:
        return self.root / f"{cell_name(algo, env, seed)}.json"

    def write(self, record: dict[str, Any]) -> Path:
        """Write ``record`` (with ``algo``, ``env``, ``seed`` and ``status``) atomically; returns its path."""
        if record.get("status") not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}; got {record.get('status')!r}")
        target = self.path(record["algo"], record["env"], int(record["seed"]))
        temporary = target.with_name(f"{target.stem}.{os.getpid()}.tmp")
        with open(temporary, "w", encoding="utf-8") as f:
            json.dump(record, f, indent=1, sort_keys=True, default=str)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, target)
        try:  # make the rename itself durable where the platform allows it
            fd = os.open(self.root, os.O_RDONLY)
        except OSError:
            return target
        try:
            os.fsync(fd)
        except OSError:
            pass
        finally:
            os.close(fd)
        return target

    def read(self, algo: str, env: str, seed: int) -> dict[str, Any] | None:
        """The cell's record, or None when it is missing or unreadable (an unreadable file counts as missing)."""
        return self._load(self.path(algo, env, seed))

    @staticmethod
    def _load(path: Path) -> dict[str, Any] | None:
        try:
            with open(path, encoding="utf-8") as f:
                record = json.load(f)
        except (OSError, ValueError):
            return None
        if not isinstance(record, dict) or record.get("status") not in STATUSES:
            return None
        return record

    def records(self) -> Iterator[dict[str, Any]]:
        """Every readable record in the store (``*.tmp`` files are never read)."""
        for path in sorted(self.root.glob("*.json")):
            record = self._load(path)
            if record is not None:
                yield record

    def status(self, cells: Iterable[CellKey]) -> dict[str, list[CellKey]]:
        """The cells of a grid by state: ``finished``, ``failed`` and ``missing``."""
        states: dict[str, list[CellKey]] = {FINISHED: [], FAILED: [], "missing": []}
        for algo, env, seed in cells:
            record = self.read(algo, env, seed)
            states["missing" if record is None else record["status"]].append((algo, env, seed))
        return states

    def pending(self, cells: Iterable[CellKey]) -> list[CellKey]:
        """The cells still to run: failed or missing ones, in grid order."""
        return [cell for cell in cells if (r := self.read(*cell)) is None or r["status"] != FINISHED]

    def clean_temporary(self) -> list[Path]:
        """Remove the ``*.tmp`` files left by interrupted writes; returns them."""
        removed = list(self.root.glob("*.tmp"))
        for path in removed:
            path.unlink(missing_ok=True)
        return removed


__all__ = ["FAILED", "FINISHED", "ResultStore", "cell_name"]
