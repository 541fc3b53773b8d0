"""
The benchmark grid (sb3_pg_ext.benchmark): its durable results store, its local and Ray runners, its command line
(also as the launcher's ``benchmark`` subcommand) and its report (statistics against direct rliable calls, the
markdown tables and the PNGs).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from scipy import stats
from stable_baselines3.common.callbacks import BaseCallback, EvalCallback

from sb3_pg_ext import cli as launcher_cli
from sb3_pg_ext.benchmark import cli, grid, presets, report
from sb3_pg_ext.benchmark.cells import (
    EVAL_SEED_OFFSET,
    BenchmarkExperimentManager,
    Cell,
    GridResult,
    TimedEvalCallback,
    effective_hyperparams,
    grid_cells,
    hyperparams_file,
    is_stale,
    split_untuned,
    stale_reasons,
    train_cell,
)
from sb3_pg_ext.benchmark.grid import run_grid
from sb3_pg_ext.benchmark.normalisation import SCORE_RANGES, normalise, random_score
from sb3_pg_ext.benchmark.report import budget_rows, iqm_intervals, markdown_table, write_report
from sb3_pg_ext.benchmark.store import FAILED, FINISHED, ResultStore

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def fake_record(cell: Cell, final_mean: float = 1.0) -> dict[str, Any]:
    return {
        "algo": cell.algo,
        "env": cell.env,
        "seed": cell.seed,
        "status": FINISHED,
        "final": {"returns": [final_mean], "mean": final_mean, "std": 0.0},
        "config": {
            "cell": asdict(cell),
            "hyperparams": effective_hyperparams(cell),
            "final_eval_seed": cell.seed + EVAL_SEED_OFFSET,
        },
    }


class CountingTrainer:
    """Stands in for train_cell (``train=``): counts calls per cell, raises for the cells in ``failing`` (once each)."""

    def __init__(self, failing: set[tuple[str, str, int]] | None = None):
        self.calls: list[tuple[str, str, int]] = []
        self.failing = set(failing or ())

    def __call__(self, cell: Cell) -> dict[str, Any]:
        self.calls.append(cell.key)
        if cell.key in self.failing:
            self.failing.discard(cell.key)
            raise RuntimeError(f"diverged on seed {cell.seed}")
        return fake_record(cell, final_mean=float(cell.seed))


def test_store_write_is_atomic_and_leaves_no_temporary_file(tmp_path: Path) -> None:
    store = ResultStore(tmp_path)
    path = store.write(fake_record(Cell("ppo", "ALE/Pong-v5", 3)))
    assert path.parent == tmp_path and path.suffix == ".json" and "/" not in path.name
    assert list(tmp_path.glob("*.tmp")) == []
    assert store.read("ppo", "ALE/Pong-v5", 3) == json.loads(path.read_text())
    with pytest.raises(ValueError, match="status"):
        store.write({"algo": "ppo", "env": "CartPole-v1", "seed": 0, "status": "running"})


def test_a_temporary_file_is_never_read_and_only_old_ones_are_removed(tmp_path: Path) -> None:
    """Another lane's write in progress keeps its temporary file; a crashed write's (older than an hour) is removed."""
    store = ResultStore(tmp_path)
    cell = Cell("ppo", "CartPole-v1", 0)
    in_progress = tmp_path / f"{store.path(*cell.key).stem}.99999.abcd1234.tmp"
    in_progress.write_text(json.dumps(fake_record(cell))[:30])
    crashed = tmp_path / f"{store.path(*cell.key).stem}.88888.ef567890.tmp"
    crashed.write_text(json.dumps(fake_record(cell)))
    old = time.time() - 2 * 3600
    os.utime(crashed, (old, old))
    assert list(store.records()) == [] and store.status([cell.key])["missing"] == [cell.key]
    run_grid([Cell("ppo", "CartPole-v1", 1)], store, progress=False, train=CountingTrainer())
    assert in_progress.exists(), "a lane deleted another lane's write in progress"
    assert not crashed.exists()


def test_each_write_goes_through_its_own_temporary_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = ResultStore(tmp_path)
    sources: list[str] = []
    replace = os.replace

    def recording_replace(source: Any, target: Any) -> None:
        sources.append(Path(source).name)
        replace(source, target)

    monkeypatch.setattr(os, "replace", recording_replace)
    record = fake_record(Cell("ppo", "CartPole-v1", 0))
    store.write(record)
    store.write(record)
    assert len(set(sources)) == 2, sources
    assert all(re.fullmatch(rf"ppo__CartPole-v1__seed0\.{os.getpid()}\.[0-9a-f]{{8}}\.tmp", name) for name in sources)


def test_a_write_that_fails_midway_leaves_the_previous_record_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = ResultStore(tmp_path)
    cell = Cell("ppo", "CartPole-v1", 0)
    store.write(fake_record(cell, final_mean=7.0))

    def dump_then_fail(obj: Any, f: Any, **kwargs: Any) -> None:
        f.write('{"algo": "ppo", "env": ')
        f.flush()
        raise OSError("No space left on device")

    monkeypatch.setattr(json, "dump", dump_then_fail)
    with pytest.raises(OSError, match="No space left"):
        store.write(fake_record(cell, final_mean=8.0))
    monkeypatch.undo()
    record = store.read(*cell.key)
    assert record is not None and record["final"]["mean"] == 7.0, "a failed write damaged the previous record"
    assert list(tmp_path.glob("*.tmp")) == [], "the failed write left its temporary file"


def _damage(store: ResultStore, cells: list[Cell]) -> dict[str, bytes]:
    """Truncated JSON, zero bytes and a finished record without ``final`` for the first three cells; their bytes."""
    truncated, empty, no_final = (store.path(*c.key) for c in cells[:3])
    truncated.write_text(json.dumps(fake_record(cells[0]))[:40])
    empty.write_bytes(b"")
    record = fake_record(cells[2])
    del record["final"]
    no_final.write_text(json.dumps(record))
    return {path.name: path.read_bytes() for path in (truncated, empty, no_final)}


def test_damaged_files_are_named_by_status_report_and_run_and_kept_aside(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = ResultStore(tmp_path)
    cells = grid_cells(["ppo"], ["CartPole-v1"], [0, 1, 2, 3], {"CartPole-v1": 500})
    store.write(fake_record(cells[3]))
    damaged = _damage(store, cells)
    argv = ["--algos", "ppo", "--envs", "CartPole-v1", "--seeds", "0", "1", "2", "3", "--budget", "CartPole-v1=500"]
    argv += ["--store", str(tmp_path)]

    assert cli.main(["status", *argv]) == 0
    out = capsys.readouterr().out
    assert "missing: 0\ndamaged: 3\n" in out, out
    for name, reason in zip(damaged, ("not valid JSON", "empty file", "finished without its final evaluation"), strict=True):
        assert re.search(rf"{re.escape(name)} \({reason}", out), (name, out)

    assert cli.main(["report", "--store", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "3 damaged result files" in err and all(name in err for name in damaged) and "KeyError" not in err
    assert not (tmp_path / "report").exists()

    trainer = CountingTrainer()
    assert cli.main(["run", *argv, "--no-progress"], train=trainer) == 0
    out = capsys.readouterr().out
    assert sorted(trainer.calls) == sorted(c.key for c in cells[:3]), "the damaged cells run again, the finished not"
    kept = {path.name.split(".damaged-")[0] + ".json": path for path in tmp_path.glob("*.damaged-*")}
    assert sorted(kept) == sorted(damaged)
    for name, content in damaged.items():
        assert kept[name].read_bytes() == content, "a damaged file was not kept as it was"
        assert f"kept as {kept[name]}" in out
    assert store.status(c.key for c in cells)[FINISHED] == [c.key for c in cells]
    assert cli.main(["report", "--store", str(tmp_path)]) == 0


def test_pending_retries_failed_missing_and_damaged_cells_only(tmp_path: Path) -> None:
    store = ResultStore(tmp_path)
    finished, failed, missing, damaged = (("ppo", "CartPole-v1", seed) for seed in range(4))
    store.write(fake_record(Cell(*finished)))
    store.write({**fake_record(Cell(*failed)), "status": FAILED, "error": "RuntimeError: diverged"})
    store.path(*damaged).write_text("{")
    keys = [finished, failed, missing, damaged]
    assert store.pending(keys) == [failed, missing, damaged]
    assert store.status(keys) == {FINISHED: [finished], FAILED: [failed], "missing": [missing], "damaged": [damaged]}


def test_rerun_skips_finished_cells_without_rewriting_them(tmp_path: Path) -> None:
    trainer = CountingTrainer()
    store = ResultStore(tmp_path)
    cells = grid_cells(["reinforce", "ppo"], ["CartPole-v1"], [0, 1], {"CartPole-v1": 500})
    first = run_grid(cells, store, workers=1, progress=False, train=trainer)
    assert sorted(first.finished) == sorted(c.key for c in cells) and first.failed == []
    mtimes = {p.name: p.stat().st_mtime_ns for p in tmp_path.glob("*.json")}
    assert len(mtimes) == 4

    second = run_grid(cells, store, workers=1, progress=False, train=trainer)
    assert len(trainer.calls) == 4, "the rerun trained a finished cell again"
    assert sorted(second.skipped) == sorted(c.key for c in cells) and second.finished == []
    assert {p.name: p.stat().st_mtime_ns for p in tmp_path.glob("*.json")} == mtimes


def test_a_finished_cell_runs_again_when_its_entry_or_budget_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    trainer = CountingTrainer()
    conf = tmp_path / "reinforce.yml"
    entries = yaml.safe_load(hyperparams_file("reinforce").read_text())
    conf.write_text(yaml.safe_dump({env: entries[env] for env in ("CartPole-v1", "Acrobot-v1")}))
    store = ResultStore(tmp_path / "store")
    budgets = {"CartPole-v1": 500, "Acrobot-v1": 500}
    cells = grid_cells(["reinforce"], ["CartPole-v1", "Acrobot-v1"], [0], budgets, config=str(conf))
    run_grid(cells, store, workers=1, progress=False, train=trainer)
    assert run_grid(cells, store, workers=1, progress=False, train=trainer).stale == [] and len(trainer.calls) == 2

    # re-tuning the Acrobot-v1 entry makes its cell stale; the CartPole-v1 cell stays finished
    entries["Acrobot-v1"]["learning_rate"] = 1.234e-4
    conf.write_text(yaml.safe_dump({env: entries[env] for env in ("CartPole-v1", "Acrobot-v1")}))
    argv = ["--algos", "reinforce", "--envs", "CartPole-v1", "Acrobot-v1", "--seeds", "0"]
    monkeypatch.setattr(grid, "grid_cells", lambda *a, **k: cells)  # the command line, on this grid's file
    monkeypatch.setattr(cli, "grid_cells", lambda *a, **k: cells)
    assert cli.main(["status", *argv, "--store", str(store.root)]) == 0
    assert "stale: 1\n  reinforce Acrobot-v1 seed 0  hyperparams learning_rate: " in capsys.readouterr().out
    # without --rerun-stale a stale cell is listed and skipped, its record untouched
    before = store.path("reinforce", "Acrobot-v1", 0).read_bytes()
    assert cli.main(["run", *argv, "--store", str(store.root), "--no-progress"], train=trainer) == 0
    out = capsys.readouterr().out
    assert "stale, skipped (rerun them with --rerun-stale): 1" in out and "hyperparams learning_rate: " in out
    assert len(trainer.calls) == 2 and store.path("reinforce", "Acrobot-v1", 0).read_bytes() == before
    again = run_grid(cells, store, workers=1, progress=False, train=trainer, rerun_stale=True)
    assert again.stale == [("reinforce", "Acrobot-v1", 0)] and again.finished == again.stale
    assert again.skipped == [("reinforce", "CartPole-v1", 0)] and len(trainer.calls) == 3
    record = store.read("reinforce", "Acrobot-v1", 0)
    assert record is not None and record["config"]["hyperparams"]["learning_rate"] == 1.234e-4

    # the file's n_timesteps is not a setting of a cell that sets its own budget
    entries["CartPole-v1"]["n_timesteps"] = 12345
    conf.write_text(yaml.safe_dump({env: entries[env] for env in ("CartPole-v1", "Acrobot-v1")}))
    assert run_grid(cells, store, workers=1, progress=False, train=trainer).stale == [] and len(trainer.calls) == 3

    # the same file somewhere else (another checkout) is the same experiment
    moved = tmp_path / "elsewhere" / "reinforce.yml"
    moved.parent.mkdir()
    moved.write_text(conf.read_text())
    relocated = grid_cells(["reinforce"], ["CartPole-v1", "Acrobot-v1"], [0], budgets, config=str(moved))
    assert run_grid(relocated, store, workers=1, progress=False, train=trainer).stale == [] and len(trainer.calls) == 3

    # another budget is another experiment
    longer = grid_cells(["reinforce"], ["CartPole-v1"], [0], {"CartPole-v1": 1000}, config=str(conf))
    rerun = run_grid(longer, store, workers=1, progress=False, train=trainer, rerun_stale=True)
    assert rerun.stale == [("reinforce", "CartPole-v1", 0)] and len(trainer.calls) == 4
    assert rerun.stale_reasons[("reinforce", "CartPole-v1", 0)] == ["budget n_timesteps: 500 -> 1000"]


def test_stale_reasons_name_each_changed_field(tmp_path: Path) -> None:
    cell = Cell("reinforce", "CartPole-v1", 3, 500)
    record = fake_record(cell)
    assert stale_reasons(record, cell) == [] and not is_stale(record, cell)
    # an older final-evaluation protocol: the final episodes were drawn without reseeding the eval env
    for final_eval_seed in (None, 3):
        older = json.loads(json.dumps(record))
        older["config"].pop("final_eval_seed")
        if final_eval_seed is not None:
            older["config"]["final_eval_seed"] = final_eval_seed
        reasons = stale_reasons(older, cell)
        assert len(reasons) == 1 and reasons[0].startswith("protocol final_eval_seed: ") and is_stale(older, cell)
    assert stale_reasons(record, Cell("reinforce", "CartPole-v1", 3)) == [
        "budget n_timesteps: 500 -> None (the hyperparameter file's n_timesteps)"
    ]
    assert stale_reasons(record, Cell("reinforce", "CartPole-v1", 3, 500, n_final_episodes=20)) == [
        "protocol n_final_episodes: 10 -> 20"
    ]
    retuned = json.loads(json.dumps(record))
    retuned["config"]["hyperparams"]["gamma"] = 0.5
    (reason,) = stale_reasons(retuned, cell)
    assert reason.startswith("hyperparams gamma: 0.5 -> ")
    assert stale_reasons({"config": {}}, cell) == ["the record holds no config of its cell and hyperparameters"]


def test_reuse_copies_only_the_runs_of_the_grids_cells_as_they_are_now(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source, target = ResultStore(tmp_path / "grid"), ResultStore(tmp_path / "protocol")
    cells = {c.seed: c for c in grid_cells(["reinforce"], ["CartPole-v1"], [0, 1, 2, 3], {"CartPole-v1": 500})}
    source.write(fake_record(cells[0], 10.0))  # a run of the cell as it is: copied
    source.write(fake_record(Cell("reinforce", "CartPole-v1", 1, 1000), 11.0))  # another budget: not copied
    source.write({**fake_record(cells[2], 12.0), "status": FAILED})  # failed: not copied
    target.write(fake_record(cells[3], 33.0))  # already up to date: kept
    source.write(fake_record(cells[3], 13.0))
    argv = ["--algos", "reinforce", "--envs", "CartPole-v1", "--seeds", "0", "1", "2", "3", "--budget", "CartPole-v1=500"]
    assert cli.main(["reuse", *argv, "--store", str(target.root), "--from", str(source.root)]) == 0
    out = capsys.readouterr().out
    assert "copied: reinforce CartPole-v1 seed 0\n" in out and "copied 1 from" in out and "2 cells have no up-to-date" in out
    copy = target.read("reinforce", "CartPole-v1", 0)
    assert (
        copy is not None and copy["final"]["mean"] == 10.0 and copy["copied_from"] == "grid/reinforce__CartPole-v1__seed0.json"
    )
    assert not stale_reasons(copy, cells[0])
    assert target.read("reinforce", "CartPole-v1", 1) is None and target.read("reinforce", "CartPole-v1", 2) is None
    assert target.read("reinforce", "CartPole-v1", 3)["final"]["mean"] == 33.0
    # a second call copies nothing more; bad sources are errors (status 2) that create no store
    assert cli.main(["reuse", *argv, "--store", str(target.root), "--from", str(source.root)]) == 0
    assert "copied 0 from" in capsys.readouterr().out
    for bad, message in [(tmp_path / "nowhere", "no results store there"), (target.root, "is the store itself")]:
        with pytest.raises(SystemExit) as exit_info:
            cli.main(
                ["reuse", *argv, "--store", str(tmp_path / "new"), "--from", str(bad)]
                if bad != target.root
                else ["reuse", *argv, "--store", str(target.root), "--from", str(bad)]
            )
        assert exit_info.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "new").exists()


def test_a_cell_that_raises_is_recorded_as_failed_and_retried(tmp_path: Path) -> None:
    failing = ("reinforce", "CartPole-v1", 1)
    trainer = CountingTrainer(failing={failing})
    store = ResultStore(tmp_path)
    cells = grid_cells(["reinforce"], ["CartPole-v1"], [0, 1])
    first = run_grid(cells, store, workers=1, progress=False, train=trainer)
    assert first.failed == [failing] and first.finished == [("reinforce", "CartPole-v1", 0)]
    record = store.read(*failing)
    assert record is not None and record["status"] == FAILED
    assert record["error"] == "RuntimeError: diverged on seed 1"
    assert "CountingTrainer" not in record["error"] and "in __call__" in record["traceback"]
    assert store.status(c.key for c in cells)[FAILED] == [failing]

    second = run_grid(cells, store, workers=1, progress=False, train=trainer)
    assert trainer.calls == [c.key for c in cells] + [failing], "only the failed cell is retried"
    assert second.finished == [failing]
    retried = store.read(*failing)
    assert retried is not None and retried["status"] == FINISHED


def test_command_line_runs_reports_and_exits_nonzero_on_failures(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    trainer = CountingTrainer(failing={("ppo", "CartPole-v1", 2)})
    argv = ["--algos", "ppo", "--envs", "CartPole-v1", "--seeds", "0", "1", "2", "--store", str(tmp_path)]
    assert cli.main(["run", *argv, "--budget", "CartPole-v1=1e3", "--no-progress"], train=trainer) == 1
    assert "finished 2, failed 1" in capsys.readouterr().out
    assert cli.main(["status", *argv]) == 0
    assert "failed: 1" in capsys.readouterr().out
    assert cli.main(["report", "--store", str(tmp_path)]) == 0
    assert "| ppo | 2 |" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        cli.main(["run", *argv, "--budget", "CartPole-v1"])


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"--algos": ["ppo", "reinforse"]}, r"unknown algorithm 'reinforse'; algorithms: .*\breinforce\b.*"),
        (
            {"--envs": ["Cartpole-v1"]},
            r"no hyperparameter entry of ppo for env 'Cartpole-v1'; their envs: .*\bCartPole-v1\b.*",
        ),
        ({"--budget": ["Cartpole-v1=1000"]}, r"--budget names env 'Cartpole-v1', not in --envs; the grid's envs: CartPole-v1"),
        ({"--algos": ["sac"]}, r"no hyperparameter entry of sac for env 'CartPole-v1'; their envs: .*\bPendulum-v1\b.*"),
    ],
)
@pytest.mark.parametrize("command", ["run", "status"])
def test_unknown_algorithms_envs_and_budget_keys_are_errors_naming_the_valid_ones(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], options: dict[str, list[str]], message: str, command: str
) -> None:
    store = ResultStore(tmp_path)
    store.write(fake_record(Cell("ppo", "CartPole-v1", 0, 500)))
    before = store.path("ppo", "CartPole-v1", 0).read_bytes()
    grid = {"--algos": ["ppo"], "--envs": ["CartPole-v1"], "--seeds": ["0"], "--budget": ["CartPole-v1=500"], **options}
    argv = [command, *(item for name, values in grid.items() for item in (name, *values)), "--store", str(tmp_path)]
    trainer = CountingTrainer()
    with pytest.raises(SystemExit) as error:
        cli.main(argv, train=trainer)
    err = capsys.readouterr().err
    assert error.value.code == 2
    (line,) = [line for line in err.splitlines() if "error:" in line]
    assert re.fullmatch(rf".* {command}: error: {message}", line), line
    assert trainer.calls == [] and store.path("ppo", "CartPole-v1", 0).read_bytes() == before


def test_conf_file_gives_an_algorithm_another_hyperparameter_file_and_bad_ones_are_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--conf-file ALGO=PATH``: ALGO's cells read PATH (candidate entries), the other algorithms their own files."""
    entries = yaml.safe_load(hyperparams_file("reinforce").read_text())
    conf = tmp_path / "candidate.yml"
    conf.write_text(yaml.safe_dump({"Pendulum-v1": dict(entries["Pendulum-v1"], learning_rate=1.5e-4)}))
    seen: list[Cell] = []

    def trainer(cell: Cell) -> dict[str, Any]:
        seen.append(cell)
        return fake_record(cell)

    grid = ["--algos", "reinforce", "ppo", "--envs", "Pendulum-v1", "--seeds", "0", "--budget", "Pendulum-v1=500"]
    store = str(tmp_path / "store")
    assert cli.main(["run", *grid, "--conf-file", f"reinforce={conf}", "--store", store, "--no-progress"], train=trainer) == 0
    assert {cell.algo: cell.config for cell in seen} == {"reinforce": str(conf), "ppo": None}
    assert effective_hyperparams(seen[0])["learning_rate"] == 1.5e-4
    # the candidate's file has no CartPole-v1 entry: its cells are left out, as for an algorithm's own file
    seen.clear()
    grid = ["--algos", "reinforce", "ppo", "--envs", "CartPole-v1", "--seeds", "0", "--budget", "CartPole-v1=500"]
    assert cli.main(["run", *grid, "--conf-file", f"reinforce={conf}", "--store", store, "--no-progress"], train=trainer) == 0
    assert [cell.algo for cell in seen] == ["ppo"] and "reinforce on CartPole-v1" in capsys.readouterr().out

    listed = tmp_path / "list.yml"
    listed.write_text("- Pendulum-v1\n")
    bad = {
        f"grpo={conf}": "--conf-file names algorithm 'grpo', not in --algos: reinforce",
        f"reinforce={tmp_path / 'missing.yml'}": f"--conf-file reinforce={tmp_path / 'missing.yml'}: no such file",
        f"reinforce={listed}": rf"--conf-file reinforce={listed}: not a hyperparameter file \(TypeError: .* a list, .*\)",
        "reinforce": r"argument --conf-file: expected ALGO=PATH, got 'reinforce'",
    }
    for value, message in bad.items():
        with pytest.raises(SystemExit) as error:
            cli.main(["status", *grid[:2], "--envs", "Pendulum-v1", "--seeds", "0", "--conf-file", value, "--store", store])
        (line,) = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
        assert error.value.code == 2 and re.fullmatch(rf".* status: error: {message}", line), line
    with pytest.raises(SystemExit):
        cli.main(["status", "--preset", "protocol", "--conf-file", f"reinforce={conf}", "--store", store])
    assert "--preset sets the grid: --conf-file cannot be given with it" in capsys.readouterr().err


def test_cells_without_a_hyperparameter_entry_are_left_out_of_the_grid() -> None:
    cells = grid_cells(["sac", "reinforce"], ["CartPole-v1", "Pendulum-v1"], [0])
    tuned, untuned = split_untuned(cells)
    assert [c.key for c in untuned] == [("sac", "CartPole-v1", 0)], "SAC has no discrete-action entry"
    assert [c.key for c in tuned] == [
        ("reinforce", "CartPole-v1", 0),
        ("sac", "Pendulum-v1", 0),
        ("reinforce", "Pendulum-v1", 0),
    ]


def test_grid_order_alternates_the_algorithms_seed_by_seed() -> None:
    cells = grid_cells(["reinforce", "ppo"], ["CartPole-v1", "Acrobot-v1"], [0, 1])
    assert [c.key for c in cells[:4]] == [
        ("reinforce", "CartPole-v1", 0),
        ("ppo", "CartPole-v1", 0),
        ("reinforce", "Acrobot-v1", 0),
        ("ppo", "Acrobot-v1", 0),
    ]
    assert {c.seed for c in cells[4:]} == {1} and len(cells) == 8


def test_iqm_and_interval_are_rliables_on_fixed_scores() -> None:
    scores = [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 100.0]
    result = iqm_intervals({"a": scores})["a"]
    assert result["iqm"] == pytest.approx(stats.trim_mean(scores, 0.25)) == pytest.approx(3.5)
    assert result["low"] < result["iqm"] < result["high"] < 100.0
    assert result["mean"] == pytest.approx(np.mean(scores)) and result["n"] == 8
    assert iqm_intervals({"a": scores}) == iqm_intervals({"a": scores}), "the bootstrap is seeded"


def test_tiny_grid_of_two_algorithms_stores_curves_and_throughput(tmp_path: Path) -> None:
    store = ResultStore(tmp_path)
    cells = grid_cells(
        ["reinforce", "ppo"],
        ["CartPole-v1"],
        [0, 1],
        {"CartPole-v1": 500},
        n_evaluations=2,
        n_eval_episodes=2,
        n_final_episodes=3,
    )
    result = run_grid(cells, store, workers=2, progress=False)
    assert result.failed == [], [store.read(*key) for key in result.failed]
    records = list(store.records())
    assert sorted((r["algo"], r["seed"]) for r in records) == [("ppo", 0), ("ppo", 1), ("reinforce", 0), ("reinforce", 1)]
    for record in records:
        curve = record["curve"]
        assert len(curve["timesteps"]) == 2 and curve["timesteps"][0] < curve["timesteps"][1] <= 500
        assert [len(row) for row in curve["returns"]] == [2, 2]
        assert len(record["final"]["returns"]) == 3 and record["n_timesteps"] >= 500
        assert record["throughput"]["steps_per_cpu_second"] > 0 and record["throughput"]["steps_per_wall_second"] > 0
        assert record["throughput"]["torch_threads"] == 1
        config = record["config"]
        assert config["n_timesteps"] == 500
        assert config["eval_seed"] == record["seed"] + EVAL_SEED_OFFSET not in config["train_seeds"]
        assert record["versions"]["stable-baselines3"].startswith("2.")
    files = {r["algo"]: Path(r["config"]["hyperparams_file"]) for r in records}
    assert files["reinforce"].parent.name == "hyperparams" and files["reinforce"].name == "reinforce.yml"
    assert "rl_zoo3" in files["ppo"].parts and files["ppo"].name == "ppo.yml"
    assert all(path == hyperparams_file(algo) for algo, path in files.items())
    assert "| reinforce | 2 |" in markdown_table(store)

    # the report, from the store alone: the markdown file and the PNGs
    out = tmp_path / "report"
    assert cli.main(["report", "--store", str(tmp_path), "--out", str(out)]) == 0
    markdown = (out / report.REPORT_FILE).read_text()
    for algo in ("reinforce", "ppo"):
        finals = np.array([r["final"]["mean"] for r in records if r["algo"] == algo])
        # two seeds: the IQM is their mean; mean +- population std over the seeds
        row = f"| {algo} | 2 | {finals.mean():.1f} ["
        assert row in markdown, (row, markdown)
        assert f"| {finals.mean():.1f} +- {finals.std():.1f} |" in markdown.split(f"| {algo} | 2 |")[1].split("\n")[0]
        normalised = normalise("CartPole-v1", finals)
        assert f"| {algo} | 2 | {stats.trim_mean(normalised, 0.25):.3f} [" in markdown, "aggregate of normalised scores"
        assert f"| CartPole-v1 | {algo} |" in markdown, "throughput row"
    assert "| CartPole-v1 | ppo | " in markdown and "| 1.00 |" in markdown, "PPO's throughput is 1.00 x PPO's"
    improvement = markdown.split("## Probability of improvement")[1].split("\n## ")[0]
    assert re.search(r"\| CartPole-v1 \| \d\.\d\d \[\d\.\d\d, \d\.\d\d\] \| - \| - \| - \|", improvement), improvement
    pngs = [out / "curves_CartPole-v1.png", out / report.PROFILE_FILE]
    for png in pngs:
        assert png.stat().st_size > 1000 and png.read_bytes()[:8] == PNG_SIGNATURE, png
        assert f"]({png.name})" in markdown
    assert sorted(out.iterdir()) == sorted([out / report.REPORT_FILE, *pngs])


def test_final_evaluation_does_not_depend_on_the_evaluations_along_the_way() -> None:
    """Deterministic evaluations draw no training randomness, and the final one starts from the eval seed again."""
    finals = [
        train_cell(Cell("ppo", "CartPole-v1", 3, 2048, n_evaluations=n, n_eval_episodes=2, n_final_episodes=3)) for n in (1, 4)
    ]
    assert finals[0]["final"]["returns"] == finals[1]["final"]["returns"]
    assert finals[0]["curve"]["timesteps"] != finals[1]["curve"]["timesteps"]
    assert finals[0]["config"]["final_eval_seed"] == 3 + EVAL_SEED_OFFSET


def test_grid_killed_midway_completes_on_rerun_without_recomputing(tmp_path: Path) -> None:
    store = ResultStore(tmp_path)
    command = [
        sys.executable,
        "-m",
        "sb3_pg_ext.benchmark",
        "run",
        "--algos",
        "reinforce",
        "--envs",
        "CartPole-v1",
        "--seeds",
        "0",
        "1",
        "2",
        "--budget",
        "CartPole-v1=3000",
        "--n-evaluations",
        "2",
        "--eval-episodes",
        "2",
        "--final-episodes",
        "2",
        "--store",
        str(tmp_path),
        "--no-progress",
    ]
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(command, env=environment, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while not list(tmp_path.glob("*.json")) and time.monotonic() < deadline and process.poll() is None:
            time.sleep(0.05)
        os.killpg(process.pid, signal.SIGKILL)  # a real SIGKILL of the process training the next cell
    finally:
        process.wait()
    survivors = {p.name: p.stat().st_mtime_ns for p in tmp_path.glob("*.json")}
    assert 1 <= len(survivors) < 3, "the kill came too late to interrupt a cell"
    assert all(r["status"] == FINISHED for r in store.records())

    subprocess.run(command, env=environment, check=True, timeout=300)
    cells = [("reinforce", "CartPole-v1", seed) for seed in (0, 1, 2)]
    assert store.status(cells)[FINISHED] == cells
    assert {name: (tmp_path / name).stat().st_mtime_ns for name in survivors} == survivors, "a finished cell was rewritten"
    assert list(tmp_path.glob("*.tmp")) == []


def _benchmark_run(store: Path, seeds: int, *options: str) -> list[str]:
    """The command line of a tiny grid: REINFORCE on CartPole-v1, 1000 steps a cell."""
    return [
        sys.executable,
        *("-m", "sb3_pg_ext.benchmark", "run", "--algos", "reinforce", "--envs", "CartPole-v1"),
        *("--seeds", *map(str, range(seeds))),
        *("--budget", "CartPole-v1=1000", "--n-evaluations", "1", "--eval-episodes", "1", "--final-episodes", "1"),
        *("--store", str(store), "--no-progress", *options),
    ]


def _interrupt_after_first_record(
    command: list[str], store: Path, signals: int = 1, signum: int = signal.SIGINT, group: bool = True
) -> tuple[int, str, str]:
    """
    Start ``command`` in its own process group, send ``signum`` to the group (SIGINT: as Ctrl-C in a terminal does)
    or to the main process alone (``group=False``: as ``kill`` or ``pkill`` do) once the first cell is recorded and
    the next one is training, ``signals`` times; return the exit status, stdout, stderr.
    """
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(
        command, env=environment, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 240
        while not list(store.glob("*.json")) and time.monotonic() < deadline and process.poll() is None:
            time.sleep(0.05)
        time.sleep(0.2)  # the next cell is in flight
        for _ in range(signals):
            if group:
                os.killpg(process.pid, signum)
            else:
                os.kill(process.pid, signum)
            time.sleep(0.05)
        out, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    return process.returncode, out, err


@pytest.mark.parametrize("workers", [1, pytest.param(2, marks=pytest.mark.slow)])
def test_ctrl_c_stops_the_grid_records_no_cell_in_flight_and_the_rerun_trains_it(tmp_path: Path, workers: int) -> None:
    store = ResultStore(tmp_path)
    command = _benchmark_run(tmp_path, 3 + workers, "--workers", str(workers))
    returncode, out, err = _interrupt_after_first_record(command, tmp_path)
    assert returncode == 130, (returncode, out, err)
    assert err.strip().count("\n") == 0 and "interrupted" in err and "Traceback" not in err, err
    records = list(store.records())
    assert 1 <= len(records) < 3 + workers, "the grid went on after Ctrl-C"
    assert all(r["status"] == FINISHED and r["n_timesteps"] >= 1000 for r in records), "a cell in flight was recorded"
    survivors = {p.name: p.stat().st_mtime_ns for p in tmp_path.glob("*.json")}

    subprocess.run(command, env={**os.environ, "OMP_NUM_THREADS": "1"}, check=True, timeout=300, capture_output=True)
    cells = [("reinforce", "CartPole-v1", seed) for seed in range(3 + workers)]
    assert store.status(cells)[FINISHED] == cells
    assert all(r["n_timesteps"] >= 1000 for r in store.records())
    assert {name: (tmp_path / name).stat().st_mtime_ns for name in survivors} == survivors


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="finds the worker processes through /proc")
def test_sigterm_to_the_main_process_ends_the_workers_and_records_no_cell_in_flight(tmp_path: Path) -> None:
    """
    SIGTERM (``kill``, ``pkill``) reaches the main process alone: before, it died and left the pool's workers to
    train and record their cells on their own. Now it stops the grid as Ctrl-C does and exits 143.
    """
    store = ResultStore(tmp_path)
    command = _benchmark_run(tmp_path, 6, "--workers", "2")
    returncode, out, err = _interrupt_after_first_record(command, tmp_path, signum=signal.SIGTERM, group=False)
    assert returncode == 128 + signal.SIGTERM, (returncode, out, err)
    assert "interrupted by SIGTERM" in err and "Traceback" not in err, err
    recorded = sorted(p.name for p in tmp_path.glob("*.json"))
    assert 1 <= len(recorded) < 6
    time.sleep(3)  # a 1000-step cell trains in about a second: an orphaned worker would have recorded one by now
    assert sorted(p.name for p in tmp_path.glob("*.json")) == recorded, "a worker went on after its main process"
    assert all(r["status"] == FINISHED and r["n_timesteps"] >= 1000 for r in store.records())


def test_a_second_ctrl_c_exits_at_once(tmp_path: Path) -> None:
    returncode, out, err = _interrupt_after_first_record(_benchmark_run(tmp_path, 3), tmp_path, 2)
    assert returncode == 130 and "Traceback" not in err, (returncode, out, err)
    assert all(r["n_timesteps"] >= 1000 for r in ResultStore(tmp_path).records())


class InterruptAt(BaseCallback):
    """Raises KeyboardInterrupt (as Ctrl-C does) or stops training (``stop``) after ``steps`` env steps."""

    def __init__(self, steps: int, stop: bool = False):
        super().__init__()
        self.steps, self.stop = steps, stop

    def _on_step(self) -> bool:
        if self.num_timesteps >= self.steps:
            if self.stop:
                return False
            raise KeyboardInterrupt
        return True


@pytest.mark.parametrize("stop", [False, True])
def test_a_cell_is_finished_only_with_its_whole_budget(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stop: bool) -> None:
    """rl-zoo3 swallows a KeyboardInterrupt in learn(): the cell raises it again; a cut-short training is a failure."""
    create_callbacks = BenchmarkExperimentManager.create_callbacks

    def with_interrupt(self: BenchmarkExperimentManager) -> None:
        create_callbacks(self)
        self.callbacks.append(InterruptAt(200, stop=stop))

    monkeypatch.setattr(BenchmarkExperimentManager, "create_callbacks", with_interrupt)
    cell = Cell("reinforce", "CartPole-v1", 0, 500, n_evaluations=1, n_eval_episodes=1, n_final_episodes=1)
    store = ResultStore(tmp_path)
    if stop:
        result = run_grid([cell], store, progress=False)
        record = store.read(*cell.key)
        assert result.failed == [cell.key] and record is not None and record["status"] == FAILED
        assert re.fullmatch(r"IncompleteTrainingError: trained \d+ of its 500 env steps", record["error"]), record["error"]
    else:
        with pytest.raises(KeyboardInterrupt):
            run_grid([cell], store, progress=False)
        assert store.read(*cell.key) is None and list(tmp_path.iterdir()) == []


def _spawned_workers(pid: int) -> list[int]:
    """The pool's worker processes among ``pid``'s children (Linux /proc; not the resource tracker)."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    workers = []
    for child in children:
        try:
            cmdline = Path(f"/proc/{child}/cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if "spawn_main" in cmdline:
            workers.append(int(child))
    return workers


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="finds the worker processes through /proc")
def test_sigkill_of_a_worker_process_interrupts_the_grid_and_the_rerun_completes_it(tmp_path: Path) -> None:
    store = ResultStore(tmp_path)
    command = [
        sys.executable,
        "-m",
        "sb3_pg_ext.benchmark",
        "run",
        *("--algos", "reinforce", "--envs", "CartPole-v1", "--seeds", "0", "1", "2", "3"),
        *("--budget", "CartPole-v1=3000", "--n-evaluations", "2", "--eval-episodes", "2", "--final-episodes", "2"),
        *("--store", str(tmp_path), "--workers", "2", "--no-progress"),
    ]
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(command, env=environment, stdout=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        while not list(tmp_path.glob("*.json")) and time.monotonic() < deadline and process.poll() is None:
            time.sleep(0.05)
        workers = _spawned_workers(process.pid)
        assert workers, "no worker process to kill"
        os.kill(workers[0], signal.SIGKILL)
        out, _ = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 1 and "interrupted" in out, out
    survivors = {p.name: p.stat().st_mtime_ns for p in tmp_path.glob("*.json")}
    assert 1 <= len(survivors) < 4 and all(r["status"] == FINISHED for r in store.records())

    subprocess.run([*command[:-3], "--workers", "1", "--no-progress"], env=environment, check=True, timeout=300)
    cells = [("reinforce", "CartPole-v1", seed) for seed in range(4)]
    assert store.status(cells)[FINISHED] == cells
    assert {name: (tmp_path / name).stat().st_mtime_ns for name in survivors} == survivors
    # The killed worker may have died inside a write: its temporary file stays (never read; removed by a later run
    # once an hour old, as another lane's write in progress must not be). No other process leaves one.
    assert all(f".{workers[0]}." in path.name for path in tmp_path.glob("*.tmp")), list(tmp_path.glob("*.tmp"))


def _direct_rliable(
    score_dict: dict[str, Any], func: Any, task: str, statistic: str, reps: int = report.REPS
) -> tuple[dict, dict]:
    """
    rliable's get_interval_estimates called directly, once per name, numpy's global generator seeded as the report
    seeds it: SHA-256 of (base seed, task, name, statistic), the first four bytes little-endian.
    """
    import hashlib

    from rliable import library as rly

    points, intervals = {}, {}
    for name, scores in score_dict.items():
        text = "\x1f".join([str(report.SEED), task, name, statistic]).encode()
        seed = int.from_bytes(hashlib.sha256(text).digest()[:4], "little")
        state = np.random.get_state()  # noqa: NPY002
        np.random.seed(seed)  # noqa: NPY002
        try:
            point, interval = rly.get_interval_estimates(
                {name: scores}, func, reps=reps, confidence_interval_size=0.95, random_state=np.random.RandomState(seed)
            )
        finally:
            np.random.set_state(state)  # noqa: NPY002
        points[name], intervals[name] = point[name], interval[name]
    return points, intervals


@pytest.mark.filterwarnings("ignore:random_state is deprecated:FutureWarning")  # arch, under the direct rliable calls
def test_report_statistics_equal_direct_rliable_calls_on_fixed_scores() -> None:
    from rliable import metrics

    # continuous scores, so that the interval ends move with the bootstrap's draws (the seeding is tested too)
    a = [10.3, 12.9, 15.1, 30.7, 31.2, 7.7, 22.4, 18.8]
    b = [11.4, 9.2, 14.0, 8.1, 16.6, 12.5]
    np.random.seed(123)  # noqa: NPY002
    state = np.random.get_state()  # noqa: NPY002

    # IQM and its interval
    ours = iqm_intervals({"a": a, "b": b}, env="E-v0")
    points, intervals = _direct_rliable(
        {"a": np.array(a).reshape(-1, 1), "b": np.array(b).reshape(-1, 1)},
        lambda x: np.array([metrics.aggregate_iqm(x)]),
        "E-v0",
        "iqm",
    )
    for algo in ("a", "b"):
        assert ours[algo]["iqm"] == points[algo][0]
        assert (ours[algo]["low"], ours[algo]["high"]) == (intervals[algo][0][0], intervals[algo][1][0])
    assert ours["a"]["iqm"] == pytest.approx(stats.trim_mean(a, 0.25))

    # probability of improvement over ppo: by hand, the fraction of pairs (x, y) with x > y, a tie counting 1/2
    ppo = [9.2, 10.0, 14.0, 30.7, 13.3, 21.9, 8.8]
    poi = report.probability_of_improvement({"reinforce": a, "ppo": ppo, "grpo": b}, env="E-v0")
    assert set(poi) == {"reinforce", "grpo"}
    wins = sum((x > y) + 0.5 * (x == y) for x in a for y in ppo)
    assert poi["reinforce"]["p"] == pytest.approx(wins / (len(a) * len(ppo)))
    pairs = {name: [np.array(x).reshape(-1, 1), np.array(ppo).reshape(-1, 1)] for name, x in (("reinforce", a), ("grpo", b))}
    points, intervals = _direct_rliable(pairs, metrics.probability_of_improvement, "E-v0", "probability_of_improvement")
    for algo in ("reinforce", "grpo"):
        assert poi[algo]["p"] == pytest.approx(float(points[algo]))
        assert (poi[algo]["low"], poi[algo]["high"]) == (intervals[algo][0], intervals[algo][1])
    assert (poi["grpo"]["n"], poi["grpo"]["n_baseline"]) == (6, 7)
    with pytest.raises(ValueError, match="baseline 'ppo'"):
        report.probability_of_improvement({"reinforce": a})

    # normalised aggregate: CartPole and Acrobot, algo "x" on both (seed 3 on CartPole only), "y" on CartPole only
    scores = {
        "CartPole-v1": {"x": {0: 500.0, 1: 261.0, 2: 22.0, 3: 400.0}, "y": {0: 100.0}},
        "Acrobot-v1": {"x": {0: -100.0, 1: -300.0, 2: -80.0}},
        "NoNormalisation-v0": {"x": {0: 1.0}},
    }
    aggregate = report.normalised_aggregate(scores)
    assert aggregate.envs == ["Acrobot-v1", "CartPole-v1"] and aggregate.unnormalised == ["NoNormalisation-v0"]
    assert list(aggregate.scores) == ["x"] and "Acrobot-v1" in aggregate.left_out["y"]
    assert aggregate.seeds["x"] == [0, 1, 2]
    # rows: seeds 0-2; columns: Acrobot, CartPole
    by_hand = np.array([[(-100 + 499.9) / 399.9, 1.0], [(-300 + 499.9) / 399.9, (261 - 21.61) / 478.39]])
    by_hand = np.vstack([by_hand, [(-80 + 499.9) / 399.9, (22 - 21.61) / 478.39]])
    np.testing.assert_allclose(aggregate.scores["x"], by_hand)
    points, intervals = _direct_rliable({"x": by_hand}, lambda x: np.array([metrics.aggregate_iqm(x)]), "aggregate", "iqm")
    assert aggregate.stats["x"]["iqm"] == pytest.approx(points["x"][0]) == pytest.approx(stats.trim_mean(by_hand, 0.25, None))
    assert aggregate.stats["x"]["low"] == pytest.approx(intervals["x"][0][0])
    assert aggregate.stats["x"]["high"] == pytest.approx(intervals["x"][1][0])
    assert SCORE_RANGES["CartPole-v1"] == (21.61, 500.0) and SCORE_RANGES["Acrobot-v1"] == (-499.9, -100.0)
    with pytest.raises(ValueError, match="no normalisation"):
        normalise("NoNormalisation-v0", 1.0)

    # learning-curve bands: rliable's IQM at each point, with its per-point stratified-bootstrap interval
    curve = np.array([[0.0, 1.0, 5.0], [2.0, 3.0, 4.0], [4.0, 9.0, 1.0], [1.0, 1.0, 1.0], [7.0, 0.0, 2.0]])
    band = report.curve_intervals({"x": curve}, env="E-v0")["x"]
    points, intervals = _direct_rliable(
        {"x": curve[:, None, :]},
        lambda s: np.array([metrics.aggregate_iqm(s[..., k]) for k in range(s.shape[-1])]),
        "E-v0",
        "curve_iqm",
    )
    np.testing.assert_allclose(band, np.vstack([points["x"], intervals["x"]]))

    after = np.random.get_state()  # noqa: NPY002
    assert all(np.array_equal(x, y) for x, y in zip(after, state, strict=True)), "the global generator was changed"


def test_an_interval_does_not_depend_on_the_other_algorithms_of_the_table(tmp_path: Path) -> None:
    a = [10.3, 12.9, 15.1, 30.7, 31.2, 7.7, 22.4, 18.8]
    b = [11.4, 9.2, 14.0, 8.1, 16.6, 12.5]
    ppo = [9.2, 10.0, 14.0, 30.7, 13.3, 21.9, 8.8]
    reps = 300
    alone = iqm_intervals({"ppo_kl": a}, reps=reps, env="Pendulum-v1")["ppo_kl"]
    assert iqm_intervals({"a2c": b, "ppo_kl": a, "sac": ppo}, reps=reps, env="Pendulum-v1")["ppo_kl"] == alone
    assert iqm_intervals({"ppo_kl": a}, reps=reps, env="Acrobot-v1")["ppo_kl"] != alone, "each env has its own seed"
    pair = report.probability_of_improvement({"grpo": a, "ppo": ppo}, reps=reps, env="Pendulum-v1")["grpo"]
    three = report.probability_of_improvement({"reinforce": b, "grpo": a, "ppo": ppo}, reps=reps, env="Pendulum-v1")
    assert three["grpo"] == pair
    scores = {"CartPole-v1": {"x": dict(enumerate(a)), "w": dict(enumerate(b))}}
    with_w = report.normalised_aggregate(scores, reps=reps).stats["x"]
    assert report.normalised_aggregate({"CartPole-v1": {"x": dict(enumerate(a))}}, reps=reps).stats["x"] == with_w
    curve = np.array([[0.0, 1.0, 5.0], [2.0, 3.0, 4.0], [4.0, 9.0, 1.0], [1.0, 1.0, 1.0], [7.0, 0.0, 2.0]])
    with_a = report.curve_intervals({"a": curve[::-1], "x": curve}, reps=reps, env="E")["x"]
    np.testing.assert_array_equal(with_a, report.curve_intervals({"x": curve}, reps=reps, env="E")["x"])

    # the report's table: the row of an algorithm is the same with or without another one in the store
    def row(store: ResultStore, algo: str) -> str:
        return next(line for line in markdown_table(store).splitlines() if line.startswith(f"| {algo} |"))

    both, one = ResultStore(tmp_path / "both"), ResultStore(tmp_path / "one")
    for algo, values in (("a2c", b), ("ppo_kl", a)):
        for seed, value in enumerate(values):
            for store in (both, one) if algo == "ppo_kl" else (both,):
                store.write(fake_record(Cell(algo, "Pendulum-v1", seed), final_mean=value))
    assert row(both, "ppo_kl") == row(one, "ppo_kl")


@pytest.mark.parametrize(
    "env",
    [
        "CartPole-v1",
        "Acrobot-v1",
        "Pendulum-v1",
        "LunarLander-v3",
        pytest.param("MountainCarContinuous-v0", marks=pytest.mark.slow),
        pytest.param("LunarLanderContinuous-v3", marks=pytest.mark.slow),
        pytest.param("sb3_pg_ext/DigitReverse-v0", marks=pytest.mark.slow),
        pytest.param("sb3_pg_ext/DigitAdd-v0", marks=pytest.mark.slow),
    ],
)
def test_every_random_score_is_the_measured_one(env: str) -> None:
    """One convention: random_score (100 uniformly random episodes, seed 0) to four significant digits."""
    assert SCORE_RANGES[env][0] == float(f"{random_score(env):.4g}")


def test_throughput_relative_to_ppo_is_the_ratio_of_medians(tmp_path: Path) -> None:
    store = ResultStore(tmp_path)
    for algo, cpu in (("ppo", [100.0, 300.0, 200.0]), ("grpo", [50.0, 150.0, 60.0])):
        for seed, value in enumerate(cpu):
            record = fake_record(Cell(algo, "CartPole-v1", seed))
            record["throughput"] = {"steps_per_cpu_second": value, "steps_per_wall_second": 2 * value if seed else None}
            store.write(record)
    ratios = report.throughput_ratios(store)["CartPole-v1"]
    assert ratios["ppo"]["cpu"] == 200.0 and ratios["grpo"]["cpu"] == 60.0
    assert ratios["grpo"]["cpu_ratio"] == pytest.approx(0.3) and ratios["ppo"]["cpu_ratio"] == 1.0
    assert ratios["grpo"]["wall_ratio"] == pytest.approx(np.median([300.0, 120.0]) / np.median([600.0, 400.0]))


@pytest.fixture(scope="module")
def local_ray() -> Any:
    """A local Ray instance of 2 CPUs for the module's Ray tests, shut down after them."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def test_ray_backend_gives_the_cells_of_the_local_backend_and_the_driver_writes_them(
    tmp_path: Path, local_ray: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    cells = grid_cells(
        ["reinforce", "ppo"],
        ["CartPole-v1"],
        [0, 1],
        {"CartPole-v1": 300},
        n_evaluations=2,
        n_eval_episodes=2,
        n_final_episodes=2,
    )
    cells.append(Cell("reinforce", "NoSuchEnv-v0", 0, 300))  # training raises: recorded as failed by both backends
    local = ResultStore(tmp_path / "local")
    local_result = run_grid(cells, local, workers=1, progress=False)

    written: list[tuple[int, tuple[str, str, int]]] = []
    write = ResultStore.write

    def recording_write(self: ResultStore, record: dict[str, Any]) -> Path:
        written.append((os.getpid(), (record["algo"], record["env"], record["seed"])))
        return write(self, record)

    monkeypatch.setattr(ResultStore, "write", recording_write)  # only in this (the driver's) process
    on_ray = ResultStore(tmp_path / "ray")
    ray_result = run_grid(cells, on_ray, progress=False, ray_address="auto")

    failed = ("reinforce", "NoSuchEnv-v0", 0)
    for result in (local_result, ray_result):
        assert sorted(result.finished) == sorted(c.key for c in cells[:-1]) and result.failed == [failed]
    assert sorted(key for _, key in written) == sorted(c.key for c in cells)
    assert {pid for pid, _ in written} == {os.getpid()}, "the driver writes every record"

    def essentials(store: ResultStore) -> dict[tuple[str, str, int], Any]:
        return {
            (r["algo"], r["env"], r["seed"]): tuple(r.get(k) for k in ("status", "final", "curve", "n_timesteps", "error"))
            for r in store.records()
        }

    assert essentials(on_ray) == essentials(local)
    assert len(essentials(on_ray)) == 5 and essentials(on_ray)[failed][-1].startswith("KeyError")
    worker_records = [r for r in on_ray.records() if r["status"] == FINISHED]
    assert all(r["throughput"]["torch_threads"] == 1 for r in worker_records)

    second = run_grid(cells, on_ray, progress=False, ray_address="auto")
    assert sorted(second.skipped) == sorted(c.key for c in cells[:-1]) and second.failed == [failed]


def test_ctrl_c_on_the_ray_backend_records_no_cell_in_flight_and_exits_130(tmp_path: Path) -> None:
    """A real SIGINT to the process group of ``run --ray-address local`` (its own Ray instance), as Ctrl-C sends."""
    store = ResultStore(tmp_path)
    command = _benchmark_run(tmp_path, 8, "--ray-address", "local")
    returncode, out, err = _interrupt_after_first_record(command, tmp_path)
    assert returncode == 130, (returncode, out, err[-2000:])
    assert "interrupted" in err and "Traceback" not in err, err[-2000:]
    records = list(store.records())
    assert 1 <= len(records) < 8, "the grid went on after Ctrl-C"
    assert all(r["status"] == FINISHED and r["n_timesteps"] >= 1000 for r in records), "a cell in flight was recorded"
    assert list(tmp_path.glob("*.tmp")) == []


def test_ray_task_that_raises_is_recorded_and_a_dead_worker_leaves_no_record(tmp_path: Path, local_ray: Any) -> None:
    from sb3_pg_ext.benchmark.ray_backend import run_cells_on_ray

    died = str(tmp_path / "died")

    def record_or_die(cell: Cell) -> dict[str, Any]:  # pickled by value to the Ray workers
        if cell.seed == 1 and not os.path.exists(died):
            Path(died).touch()
            os._exit(1)  # the worker process dies (only the first time: a retry by Ray would succeed)
        if cell.seed == 2:
            raise RuntimeError("raised outside cell_record")
        return {"algo": cell.algo, "env": cell.env, "seed": cell.seed, "status": "finished", "final": {"mean": 1.0}}

    store = ResultStore(tmp_path)
    cells = grid_cells(["ppo"], ["CartPole-v1"], [0, 1, 2])
    result = run_cells_on_ray(cells, store, GridResult(), address="auto", progress=False, record_function=record_or_die)
    assert result.finished == [("ppo", "CartPole-v1", 0)] and result.failed == [("ppo", "CartPole-v1", 2)]
    assert result.interrupted == [("ppo", "CartPole-v1", 1)]
    assert store.read("ppo", "CartPole-v1", 1) is None, "a dead worker leaves no record"
    failed = store.read("ppo", "CartPole-v1", 2)
    assert failed is not None and failed["status"] == FAILED
    assert failed["error"] == "RuntimeError: raised outside cell_record" and "record_or_die" in failed["traceback"]
    assert store.pending(c.key for c in cells) == [("ppo", "CartPole-v1", 1), ("ppo", "CartPole-v1", 2)]
    assert os.path.exists(died)

    # the next run retries the interrupted cell (and the failed one)
    rerun = run_cells_on_ray(cells[1:2], store, GridResult(), address="auto", progress=False, record_function=record_or_die)
    assert rerun.finished == [("ppo", "CartPole-v1", 1)] and rerun.interrupted == []


def test_ray_address_without_ray_names_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray raises ImportError
    argv = ["run", "--algos", "ppo", "--envs", "CartPole-v1", "--seeds", "0", "--store", str(tmp_path)]
    assert cli.main([*argv, "--ray-address", "auto"]) == 2
    assert 'pip install "sb3-pg-ext[ray]"' in capsys.readouterr().err
    assert list(tmp_path.glob("*.json")) == []
    with pytest.raises(SystemExit):
        cli.main([*argv, "--ray-address", "auto", "--workers", "2"])
    with pytest.raises(ValueError, match="exclusive"):
        run_grid(grid_cells(["ppo"], ["CartPole-v1"], [0]), ResultStore(tmp_path), workers=2, ray_address="auto")


def test_launcher_benchmark_subcommand_reaches_the_benchmark_command_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = ResultStore(tmp_path)
    store.write(fake_record(Cell("ppo", "CartPole-v1", 0)))
    store.write({**fake_record(Cell("ppo", "CartPole-v1", 1)), "status": FAILED, "error": "RuntimeError: diverged"})
    assert "benchmark" in launcher_cli.COMMANDS
    argv = ["--algos", "ppo", "--envs", "CartPole-v1", "--seeds", "0", "1", "2", "--store", str(tmp_path)]
    launcher_cli.main(["benchmark", "status", *argv])
    out = capsys.readouterr().out
    assert "finished: 1" in out and "failed: 1" in out and "missing: 1" in out
    assert "ppo CartPole-v1 seed 1  RuntimeError: diverged" in out
    with pytest.raises(SystemExit) as error:
        launcher_cli.main(["benchmark", "status"])
    assert error.value.code == 2 and "sb3-pg-zoo benchmark status" in capsys.readouterr().err
    with pytest.raises(SystemExit) as error:
        launcher_cli.main(["benchmark", "report", "--store", str(tmp_path / "no-store")])
    assert error.value.code == 2 and "no results store" in capsys.readouterr().err
    assert not (tmp_path / "no-store").exists()


def test_readme_preset_is_the_committed_grid() -> None:
    """The preset's cells are the committed store's, with the settings they ran with (so none is missing or stale)."""
    root = Path(__file__).resolve().parent.parent
    preset = presets.get_preset("readme")
    store = ResultStore(root / preset.store)
    cells, _ = split_untuned(preset.cells())
    assert len(cells) == 131 and len({c.key for c in cells}) == 131
    assert store.status(c.key for c in cells)[FINISHED] == [c.key for c in cells]
    for cell in cells:
        record = store.read(*cell.key)
        assert record is not None and record["config"]["cell"] == asdict(cell), cell.key
    assert [c.key for c in preset.chunk_cells("lunar-201")] == [(a, "LunarLander-v3", 201) for a in preset.grids[1].algos]
    assert {c.n_timesteps for c in cells if c.env == "Acrobot-v1"} == {presets.GRID_BUDGETS["Acrobot-v1"]} == {300_000}


def test_final_policies_preset_trains_the_constructor_defaults() -> None:
    preset = presets.get_preset("final-policies")
    cells = preset.cells()
    assert {c.algo for c in cells} == set(presets.PACKAGE_ALGOS) and {c.seed for c in cells} == {0, 1, 2, 3, 4}
    for cell in cells[:4]:
        assert cell.env == "CartPole-v1" and cell.n_timesteps == 200_000
        n_envs = 8 if cell.algo == "grpo" else 1
        assert effective_hyperparams(cell) == {"n_envs": n_envs, "n_timesteps": 200_000, "policy": "MlpPolicy"}


def test_protocol_presets_follow_the_benchmark_protocol() -> None:
    """rl-zoo3's PPO budget per env for every algorithm, seeds 200-204 everywhere, short envs first, SAC last."""
    protocol = presets.get_preset("protocol")
    cells = protocol.cells()
    budgets = {"CartPole-v1": 100_000, "Acrobot-v1": 1_000_000, "Pendulum-v1": 100_000, "LunarLander-v3": 1_000_000}
    assert {(c.env, c.n_timesteps) for c in cells} == set(budgets.items())
    assert {c.seed for c in cells} == {200, 201, 202, 203, 204} and len({c.key for c in cells}) == len(cells) == 160
    assert {c.algo for c in cells} == set(presets.PACKAGE_ALGOS + presets.STOCK_ALGOS) and cells[-1].algo == "sac"
    assert protocol.chunks()[0] == "short-200" and {c.env for c in protocol.chunk_cells("short-200")} == {
        "CartPole-v1",
        "Pendulum-v1",
    }
    assert all(c.config is None for c in cells)  # each algorithm's own file
    defaults = presets.get_preset("protocol-defaults").cells()
    assert {c.key for c in defaults} == {c.key for c in cells if c.algo in presets.PACKAGE_ALGOS}
    for cell in defaults[:8]:  # the constructor defaults: only the policy and the number of envs are set
        n_envs = 8 if cell.algo == "grpo" else 1
        hyperparams = effective_hyperparams(cell)
        assert hyperparams.pop("n_timesteps") > 0 and hyperparams == {"n_envs": n_envs, "policy": "MlpPolicy"}
    branch = presets.get_preset("protocol-grpo-branch").cells()
    assert {c.key for c in branch} == {c.key for c in cells if c.algo == "grpo"}
    for env in budgets:
        hyperparams = effective_hyperparams(next(c for c in branch if c.env == env))
        assert hyperparams["group_start"] == "branch" and hyperparams["n_timesteps"] == budgets[env], env


@pytest.mark.parametrize("env", ["Pendulum-v1", "LunarLander-v3"])
def test_grpo_branch_entries_train_through_the_benchmark(tmp_path: Path, env: str) -> None:
    """A tiny cell of each branch entry trains through the launcher (LunarLander-v3 by seed and replay)."""
    cell = Cell("grpo", env, 0, 1_500, n_evaluations=1, n_eval_episodes=1, n_final_episodes=1)
    cell = Cell(**{**asdict(cell), "config": str(presets.GRPO_BRANCH_CONFIG)})
    record = run_grid([cell], ResultStore(tmp_path), progress=False) and ResultStore(tmp_path).read(*cell.key)
    assert record is not None and record["status"] == FINISHED, record
    assert record["config"]["hyperparams"]["group_start"] == "branch" and record["n_timesteps"] >= 1_500


def test_preset_on_the_command_line_runs_its_cells_in_order(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    trainer = CountingTrainer()
    store = ["--store", str(tmp_path)]
    assert cli.main(["run", "--preset", "readme", "--chunk", "lunar-200", *store, "--no-progress"], train=trainer) == 0
    assert trainer.calls == [(a, "LunarLander-v3", 200) for a in ("reinforce", "ispg", "ppo_kl", "grpo", "ppo", "a2c", "trpo")]
    assert "sac on LunarLander-v3" in capsys.readouterr().out
    assert cli.main(["status", "--preset", "readme", *store]) == 0
    assert "finished: 7\nfailed: 0\nmissing: 124\n" in capsys.readouterr().out
    assert cli.main(["presets", "readme", "--chunks"]) == 0
    assert capsys.readouterr().out.split() == presets.get_preset("readme").chunks()
    for wrong in (["--preset", "readme", "--seeds", "0"], ["--chunk", "lunar-200", "--algos", "ppo"], ["--algos", "ppo"]):
        with pytest.raises(SystemExit):
            cli.main(["run", *wrong, *store], train=trainer)
    with pytest.raises(SystemExit):
        cli.main(["run", "--preset", "readme", "--chunk", "lunar-299", *store], train=trainer)
    assert "its chunks: classic-200" in capsys.readouterr().err
    assert len(trainer.calls) == 7


def test_evaluations_are_timed_by_the_eval_callback_and_left_out_of_throughput() -> None:
    record = train_cell(Cell("reinforce", "CartPole-v1", 0, 600, n_evaluations=3, n_eval_episodes=3, n_final_episodes=1))
    throughput = record["throughput"]
    assert throughput["eval_cpu_seconds"] > 0 and throughput["eval_wall_seconds"] > 0
    assert len(record["curve"]["timesteps"]) == 3
    with tempfile.TemporaryDirectory() as folder:
        manager = BenchmarkExperimentManager(
            argparse.Namespace(), "ppo", "CartPole-v1", folder, n_timesteps=1000, n_evaluation_points=2, seed=0
        )
        manager.n_envs = 1
        manager.create_callbacks()
    assert [type(c) for c in manager.callbacks if isinstance(c, EvalCallback)] == [TimedEvalCallback]


def test_report_lists_each_entrys_budget_and_flags_rescaled_lin_schedules(tmp_path: Path) -> None:
    """
    The cells' budget against the entries' own, from rl-zoo3's real files: PPO's CartPole-v1 entry (1e5 steps, lin_
    learning rate and clip range) at 1e5 is unflagged, at 5e4 compressed; A2C's CartPole-v1 entry (5e5, no lin_)
    at 1e5 is shorter but has no schedule to compress; PPO's Pendulum-v1 entry (1e5, no lin_) stays unflagged.
    """
    store = ResultStore(tmp_path)
    cells = [
        Cell("ppo", "CartPole-v1", 0, 100_000),
        Cell("ppo", "Acrobot-v1", 0, 50_000),
        Cell("a2c", "CartPole-v1", 0, 100_000),
        Cell("ppo", "Pendulum-v1", 0, 300_000),
    ]
    for cell in cells:
        store.write(fake_record(cell))
    rows = {(r["env"], r["algo"]): r for r in budget_rows(store)}
    assert rows["CartPole-v1", "ppo"]["entry"] == [100_000] and rows["CartPole-v1", "ppo"]["flag"] == ""
    assert rows["CartPole-v1", "ppo"]["schedules"] == ["clip_range", "learning_rate"]
    assert rows["Acrobot-v1", "ppo"] == {
        "env": "Acrobot-v1",
        "algo": "ppo",
        "cell": [50_000],
        "entry": [1_000_000],
        "schedules": [],
        "flag": "",
    }
    assert rows["CartPole-v1", "a2c"]["entry"] == [500_000] and rows["CartPole-v1", "a2c"]["flag"] == ""
    assert rows["Pendulum-v1", "ppo"]["flag"] == ""
    store.write(fake_record(Cell("ppo", "CartPole-v1", 1, 50_000)))
    row = next(r for r in budget_rows(store) if (r["env"], r["algo"]) == ("CartPole-v1", "ppo"))
    assert row["cell"] == [50_000, 100_000] and row["flag"] == "compressed"
    store.write(fake_record(Cell("ppo", "CartPole-v1", 1, 200_000)))
    row = next(r for r in budget_rows(store) if (r["env"], r["algo"]) == ("CartPole-v1", "ppo"))
    assert row["cell"] == [100_000, 200_000] and row["flag"] == "stretched"
    markdown = write_report(store, tmp_path / "report", reps=50).markdown
    assert "| CartPole-v1 | ppo | 100,000/200,000 | 100,000 | 1.00 | clip_range, learning_rate | **stretched** |" in markdown
    assert "| CartPole-v1 | a2c | 100,000 | 500,000 | 0.20 | - |  |" in markdown


def test_the_report_reads_the_store_once_and_its_readers_take_records_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = ResultStore(tmp_path)
    for cell in grid_cells(["ppo", "a2c"], ["CartPole-v1"], [0, 1], {"CartPole-v1": 100_000}):
        store.write(fake_record(cell, final_mean=100.0 * cell.seed))
    records = list(store.records())
    assert report.final_scores(records) == report.final_scores(store)
    assert budget_rows(records) == budget_rows(store) and markdown_table(records) == markdown_table(store)
    reads: list[int] = []
    read = ResultStore.records
    monkeypatch.setattr(ResultStore, "records", lambda self: (reads.append(1), read(self))[1])
    markdown = write_report(store, tmp_path / "report", reps=50).markdown
    assert reads == [1], "every section of the report read the store again"
    assert "| ppo | 2 |" in markdown


def test_the_report_puts_another_stores_cells_beside_the_stores_under_their_own_name(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    main, branch = ResultStore(tmp_path / "protocol"), ResultStore(tmp_path / "branch")
    for cell in grid_cells(["ppo", "grpo"], ["CartPole-v1"], [0, 1, 2], {"CartPole-v1": 100_000}):
        main.write(fake_record(cell, final_mean=100.0 + cell.seed if cell.algo == "grpo" else 400.0))
    for cell in grid_cells(["grpo", "ppo"], ["CartPole-v1"], [0, 1, 2], {"CartPole-v1": 100_000}):
        branch.write(fake_record(cell, final_mean=450.0 + cell.seed if cell.algo == "grpo" else 1.0))
    extra = report.ExtraCells.parse(f"{branch.root}:grpo=grpo_branch")
    markdown = write_report(main, tmp_path / "report", reps=50, extra=[extra]).markdown
    # the branch store's grpo cells, renamed; its ppo cells are not taken
    assert "| grpo | 3 | 101.0 [100.0, 102.0] |" in markdown
    assert "| grpo_branch | 3 | 451.0 [450.0, 452.0] |" in markdown
    assert "| ppo | 3 | 400.0 [400.0, 400.0] |" in markdown and "1.0 [1.0, 1.0]" not in markdown
    # in the probability of improvement over PPO, beside grpo (always below PPO) as its own column (always above)
    assert "| env | reinforce | ispg | ppo_kl | grpo | grpo_branch |" in markdown
    assert "| CartPole-v1 | - | - | - | 0.00 [0.00, 0.00] | 1.00 [1.00, 1.00] |" in markdown
    for name in ("ppo", "reinforce"):  # an algorithm of the store, one of the report's columns without cells here
        with pytest.raises(ValueError, match=rf"'grpo'.*cannot be reported as '{name}'.*taken"):
            write_report(main, tmp_path / "report", reps=50, extra=[report.ExtraCells.parse(f"{branch.root}:grpo={name}")])
    assert cli.main(["report", "--store", str(main.root), "--with", f"{branch.root}:grpo=grpo_branch"]) == 0
    assert "| grpo_branch | 3 |" in capsys.readouterr().out
    for spec, message in (
        (f"{branch.root}:grpo", r"is not DIR:ALGO=NAME"),
        ("grpo=grpo_branch", r"is not DIR:ALGO=NAME"),
        (f"{tmp_path / 'nowhere'}:grpo=grpo_branch", r"no results store at .*nowhere"),
        (f"{branch.root}:grpo=ppo", r"cannot be reported as 'ppo'"),
    ):
        assert cli.main(["report", "--store", str(main.root), "--with", spec]) == 2
        assert re.search(message, capsys.readouterr().err), spec
