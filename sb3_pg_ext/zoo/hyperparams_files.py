"""
Changing one entry of an rl-zoo3 hyperparameter file (``hyperparams/<algo>.yml``) and nothing else.

An rl-zoo3 file is a mapping of entries, one per env id (and ``default``), each a mapping of hyperparameters; in
this package a block of ``#`` comment lines directly above each entry says how it was obtained. :func:`set_entry`
rewrites one entry and its comment block and leaves every other byte of the file as it was (other entries, their
comments, the file's header, blank lines), which a YAML dump of the whole file would not (it drops the comments).

The file is split into top-level entries by its lines: an entry starts at an unindented ``key:`` line and runs to
the next one, less the blank lines and unindented ``#`` lines before that next one; its comment block is the run of
unindented ``#`` lines directly above its key line (no blank line in between). The result is checked with
``yaml.safe_load`` before it is written: every other entry reads back unchanged and the new one reads back as given.
"""

from __future__ import annotations

import math
import os
import re
import stat
import tempfile
from collections.abc import Mapping
from numbers import Integral, Real
from pathlib import Path
from typing import Any

import yaml

# a line of a YAML scalar that single quotes cannot carry unchanged (line breaks fold, control characters)
_NEEDS_DOUBLE_QUOTES = re.compile(r"[\x00-\x1f\x7f]")


def _string(value: str) -> str:
    """A YAML string scalar, always quoted (as the package's files write them): single quotes unless it needs escapes."""
    if _NEEDS_DOUBLE_QUOTES.search(value):
        return yaml.safe_dump(value, default_style='"', width=math.inf).strip()
    return "'" + value.replace("'", "''") + "'"


def _float(value: float) -> str:
    """A float that PyYAML reads back as the same float: ``!!float`` where the plain text would read as a string."""
    text = repr(float(value))
    if math.isnan(value) or yaml.safe_load(text) != value:  # e.g. 1e-05 (no dot: a string to PyYAML), inf
        return f"!!float {text}"
    return text


def _value(value: Any) -> str:
    """The YAML text of one hyperparameter value (flow style for a mapping or a list)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "True" if value else "False"
    if isinstance(value, Integral):
        return str(int(value))
    if isinstance(value, Real):
        return _float(float(value))
    if isinstance(value, str):
        return _string(value)
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{_value(k)}: {_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    raise TypeError(f"Cannot write a {type(value).__name__} as a YAML value: {value!r}")


def _key(key: Any) -> str:
    """A mapping key as the package's files write it: plain (``CartPole-v1``, ``n_timesteps``) unless YAML needs it
    quoted to read it back as the same string."""
    if isinstance(key, str):
        try:
            if yaml.safe_load(f"{key}: 0") == {key: 0}:
                return key
        except yaml.YAMLError:
            pass
    return _value(key)


def _entry_text(env_id: str, hyperparams: Mapping[str, Any], comment: str) -> str:
    """The comment block and the entry, one line each, every line ended by a newline."""
    lines = ["#" if not line else f"# {line}" for line in comment.splitlines()]
    if hyperparams:
        lines.append(f"{_key(env_id)}:")
        lines += [f"  {_key(key)}: {_value(value)}" for key, value in hyperparams.items()]
    else:
        lines.append(f"{_key(env_id)}: {{}}")
    return "".join(f"{line}\n" for line in lines)


def _plain(value: Any) -> Any:
    """What ``yaml.safe_load`` gives back for a value written by :func:`_value` (tuples come back as lists)."""
    if isinstance(value, Mapping):
        return {_plain(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _is_key_line(line: str) -> bool:
    return bool(line.strip()) and not line[0].isspace() and not line.startswith("#")


def _split(path: Path, lines: list[str]) -> dict[str, tuple[int, int, int]]:
    """
    The top-level entries of a file: key -> (first line of its comment block, its key line, the line after its
    body). Raises ValueError when a top-level line is not the key of a mapping entry.
    """
    starts: list[tuple[str, int]] = []
    for i, line in enumerate(lines):
        if not _is_key_line(line):
            continue
        try:
            parsed = yaml.safe_load(line)
        except yaml.YAMLError:
            parsed = None
        if not isinstance(parsed, dict) or len(parsed) != 1:
            raise ValueError(f"{path}: line {i + 1} is not the key of a top-level entry: {line.rstrip()!r}")
        starts.append((str(next(iter(parsed))), i))
    entries: dict[str, tuple[int, int, int]] = {}
    for n, (key, start) in enumerate(starts):
        end = starts[n + 1][1] if n + 1 < len(starts) else len(lines)
        while end > start + 1 and (not lines[end - 1].strip() or lines[end - 1].startswith("#")):
            end -= 1
        first = start
        while first > 0 and lines[first - 1].startswith("#"):
            first -= 1
        if key in entries:
            raise ValueError(f"{path}: the entry {key!r} appears twice")
        entries[key] = (first, start, end)
    return entries


def _load(path: Path, text: str) -> dict[Any, Any]:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ValueError(f"{path} is not a YAML file: {e}") from e
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"{path} is not a mapping of entries (rl-zoo3's format): it holds a {type(data).__name__}")
    return data


def _write_atomically(path: Path, text: str) -> None:
    """Write ``text`` to a temporary file beside ``path``, then rename it over ``path`` (same permissions)."""
    mode = stat.S_IMODE(path.stat().st_mode)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(text.encode("utf-8"))
            file.flush()
            os.fsync(file.fileno())
        os.chmod(temporary, mode)
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise


def set_entry(path: str | Path, env_id: str, hyperparams: dict[str, Any], comment: str) -> None:
    """
    Replace the top-level entry ``env_id`` of the rl-zoo3 hyperparameter file ``path`` (or append it, when the file
    has none) and the comment block above it; every other byte of the file stays as it was.

    :param path: an existing rl-zoo3 yml file (a mapping of entries)
    :param env_id: the entry's key (an env id, or ``default``)
    :param hyperparams: the entry's hyperparameters, written in this order: strings quoted, booleans as
        ``True``/``False``, floats so that PyYAML reads back the same float (``!!float`` where needed), mappings
        and lists in flow style; ``yaml.safe_load`` (what rl-zoo3 reads the file with) gives back exactly these
        values (tuples as lists)
    :param comment: the text of the comment block written directly above the entry, each line as ``# `` + line
        (``#`` for an empty line); it replaces the entry's old block; empty: no block
    :raises ValueError: when the file is not a mapping of entries (the message names the file), or the result would
        not read back as intended (nothing is written then)
    """
    path = Path(path)
    text = path.read_bytes().decode("utf-8")
    old = _load(path, text)
    lines = text.splitlines(keepends=True)
    entries = _split(path, lines)
    if set(entries) != {str(key) for key in old} or len(entries) != len(old):
        raise ValueError(f"{path}: its top-level lines ({sorted(entries)}) do not match its entries ({sorted(old)})")
    new_entry = _entry_text(env_id, hyperparams, comment)
    if env_id in entries:
        first, _, end = entries[env_id]
        new_text = "".join(lines[:first]) + new_entry + "".join(lines[end:])
    else:
        head = text if not text or text.endswith("\n") else text + "\n"
        separator = "\n" if head.strip() and not head.endswith("\n\n") else ""
        new_text = head + separator + new_entry
    expected = {**old, env_id: _plain(hyperparams)}
    new = _load(path, new_text)
    if new != expected or list(new[env_id] or {}) != list(hyperparams):
        raise ValueError(f"{path}: the entry {env_id!r} would not read back as given; the file is left unchanged")
    _write_atomically(path, new_text)


__all__ = ["set_entry"]
