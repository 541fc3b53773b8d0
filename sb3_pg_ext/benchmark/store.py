"""
The results store: a directory of small JSON files, one per cell ``(algo, env, seed)``, that can be committed.

- A cell's file is written atomically the moment the cell ends: the JSON goes to a temporary file of the writer's
  own, ``<name>.<pid>.<random>.tmp`` in the same directory, is flushed and fsynced, then ``os.replace``-d onto
  ``<name>.json``. A crash leaves at most a ``*.tmp`` file, which is never read as a result. Several processes
  (two lanes of a campaign) may write to one store: each removes only its own temporary files, and
  :meth:`ResultStore.clean_temporary` only those older than :data:`TEMPORARY_MAX_AGE` (a write takes milliseconds).
- A record has ``status`` ``"finished"`` (a result, with its ``final`` evaluation) or ``"failed"`` (the error and
  its traceback).
- A ``<name>.json`` that is not such a record (truncated or empty JSON, a finished record without ``final``, the
  record of another cell) is *damaged*: :meth:`ResultStore.read` raises :class:`DamagedRecordError` naming the file,
  :meth:`ResultStore.status` lists it apart, and :meth:`ResultStore.set_aside` renames it to
  ``<name>.damaged-<UTC time>`` (kept, never overwritten) before its cell runs again.
- A rerun of a grid skips finished cells and retries failed, missing and damaged ones (:meth:`ResultStore.pending`).
"""

from __future__ import annotations

import datetime
import json
import os
import re
import secrets
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

FINISHED = "finished"
FAILED = "failed"
STATUSES = (FINISHED, FAILED)
#: The state of a cell whose file exists but holds no valid record (:class:`DamagedRecordError`).
DAMAGED = "damaged"
MISSING = "missing"
#: Seconds after which a ``*.tmp`` file of the store counts as left by a crashed write (:meth:`ResultStore.clean_temporary`).
TEMPORARY_MAX_AGE = 3600.0

CellKey = tuple[str, str, int]


def cell_name(algo: str, env: str, seed: int) -> str:
    """File stem of a cell: ``<algo>__<env>__seed<seed>``, with characters other than ``[A-Za-z0-9_.-]`` as ``_``."""
    safe_env = re.sub(r"[^A-Za-z0-9_.-]", "_", env)
    return f"{algo}__{safe_env}__seed{seed}"


class DamagedRecordError(ValueError):
    """
    A cell's file exists but holds no valid record.

    :param path: the file
    :param reason: what is wrong with it
    """

    def __init__(self, path: Path, reason: str):
        super().__init__(f"damaged result file {path}: {reason}")
        self.path = path
        self.reason = reason


def check_record(record: Any, name: str | None = None) -> str | None:
    """
    What is wrong with ``record`` as a record of the store, or None when nothing is.

    :param record: the parsed JSON of a cell's file
    :param name: the file's stem, when the record must be that cell's
    :return: the problem, in words, or None
    """
    if not isinstance(record, dict):
        return f"not a JSON object but {type(record).__name__}"
    if record.get("status") not in STATUSES:
        return f"status {record.get('status')!r} is none of {', '.join(STATUSES)}"
    missing = [key for key in ("algo", "env", "seed") if key not in record]
    if missing:
        return f"no {', '.join(missing)}"
    if name is not None:
        try:
            own = cell_name(str(record["algo"]), str(record["env"]), int(record["seed"]))
        except (TypeError, ValueError):
            return f"seed {record['seed']!r} is not an integer"
        if own != name:
            return f"the record of another cell ({own})"
    if record["status"] == FINISHED:
        final = record.get("final")
        if not isinstance(final, dict) or "mean" not in final:
            return "finished without its final evaluation (no final.mean)"
        if not isinstance(final["mean"], int | float) or isinstance(final["mean"], bool):
            return f"final.mean {final['mean']!r} is not a number"
    return None


class ResultStore:
    """A directory of one JSON record per cell."""

    def __init__(self, root: str | os.PathLike[str]):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, algo: str, env: str, seed: int) -> Path:
        return self.root / f"{cell_name(algo, env, seed)}.json"

    def write(self, record: dict[str, Any]) -> Path:
        """
        Write ``record`` (with ``algo``, ``env``, ``seed`` and ``status``) atomically, through a temporary file of
        this call's own (``<name>.<pid>.<random>.tmp``, removed if the write fails); returns its path.
        """
        problem = check_record(record)
        if problem is not None:
            raise ValueError(f"not a record of the store: {problem}")
        target = self.path(record["algo"], record["env"], int(record["seed"]))
        temporary = target.with_name(f"{target.stem}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
        try:
            with open(temporary, "x", encoding="utf-8") as f:
                json.dump(record, f, indent=1, sort_keys=True, default=str)
                f.write("\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(temporary, target)
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise
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
        """
        The cell's record, or None when it has no file.

        :raises DamagedRecordError: naming the file when it exists but holds no valid record
        """
        return self._load(self.path(algo, env, seed))

    @staticmethod
    def _load(path: Path) -> dict[str, Any] | None:
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError) as error:
            raise DamagedRecordError(path, f"unreadable ({error})") from error
        if not text.strip():
            raise DamagedRecordError(path, "empty file")
        try:
            record = json.loads(text)
        except ValueError as error:
            raise DamagedRecordError(path, f"not valid JSON ({error})") from error
        problem = check_record(record, path.stem)
        if problem is not None:
            raise DamagedRecordError(path, problem)
        return record

    def damaged(self) -> list[DamagedRecordError]:
        """Every damaged ``*.json`` file of the store, as the errors that name them."""
        found = []
        for path in sorted(self.root.glob("*.json")):
            try:
                self._load(path)
            except DamagedRecordError as error:
                found.append(error)
        return found

    def records(self) -> Iterator[dict[str, Any]]:
        """
        Every record in the store (``*.tmp`` and set-aside ``*.damaged-*`` files are never read).

        :raises DamagedRecordError: at the first damaged file (:meth:`damaged` lists them all)
        """
        for path in sorted(self.root.glob("*.json")):
            record = self._load(path)
            if record is not None:
                yield record

    def state(self, algo: str, env: str, seed: int) -> str:
        """The cell's state: ``finished``, ``failed``, ``missing`` or ``damaged``."""
        try:
            record = self.read(algo, env, seed)
        except DamagedRecordError:
            return DAMAGED
        return MISSING if record is None else str(record["status"])

    def status(self, cells: Iterable[CellKey]) -> dict[str, list[CellKey]]:
        """The cells of a grid by state: ``finished``, ``failed``, ``missing`` and ``damaged``."""
        states: dict[str, list[CellKey]] = {FINISHED: [], FAILED: [], MISSING: [], DAMAGED: []}
        for key in cells:
            states[self.state(*key)].append(key)
        return states

    def pending(self, cells: Iterable[CellKey]) -> list[CellKey]:
        """The cells still to run: failed, missing and damaged ones, in grid order."""
        return [key for key in cells if self.state(*key) != FINISHED]

    def set_aside(self, algo: str, env: str, seed: int) -> Path:
        """
        Rename the cell's (damaged) file to ``<name>.damaged-<UTC time>`` so that it is kept and never overwritten.

        :return: the new path
        """
        source = self.path(algo, env, seed)
        stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
        target = source.with_name(f"{source.stem}.damaged-{stamp}")
        os.replace(source, target)
        return target

    def clean_temporary(self, max_age: float = TEMPORARY_MAX_AGE) -> list[Path]:
        """
        Remove the ``*.tmp`` files left by crashed writes: those not modified for ``max_age`` seconds (a temporary
        file younger than that may be another process's write in progress); returns them.
        """
        now = time.time()
        removed = []
        for path in self.root.glob("*.tmp"):
            try:
                if now - path.stat().st_mtime < max_age:
                    continue
            except FileNotFoundError:  # its writer renamed it meanwhile
                continue
            path.unlink(missing_ok=True)
            removed.append(path)
        return removed


__all__ = [
    "DAMAGED",
    "FAILED",
    "FINISHED",
    "MISSING",
    "TEMPORARY_MAX_AGE",
    "DamagedRecordError",
    "ResultStore",
    "cell_name",
    "check_record",
]
