"""The benchmark grid: its durable results store, its runner and its command line (sb3_pg_ext.benchmark)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from scipy import stats

from sb3_pg_ext.benchmark import cli, grid
from sb3_pg_ext.benchmark.grid import EVAL_SEED_OFFSET, Cell, grid_cells, hyperparams_file, run_grid, split_untuned
from sb3_pg_ext.benchmark.report import iqm_intervals, markdown_table
from sb3_pg_ext.benchmark.store import FAILED, FINISHED, ResultStore


def fake_record(cell: Cell, final_mean: float = 1.0) -> dict[str, Any]:
    return {
        "algo": cell.algo,
        "env": cell.env,
        "seed": cell.seed,
        "status": FINISHED,
        "final": {"returns": [final_mean], "mean": final_mean, "std": 0.0},
    }


class CountingTrainer:
    """Stands in for grid.train_cell: counts calls per cell, raises for the cells in ``failing`` (once each)."""

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


def test_half_written_files_are_never_read_as_results(tmp_path: Path) -> None:
    store = ResultStore(tmp_path)
    cell = Cell("ppo", "CartPole-v1", 0)
    # an interrupted write leaves a temporary file; a torn copy leaves an unparsable .json
    (tmp_path / f"{store.path(*cell.key).stem}.123.tmp").write_text(json.dumps(fake_record(cell)))
    torn = Cell("ppo", "CartPole-v1", 1)
    store.path(*torn.key).write_text(json.dumps(fake_record(torn))[:20])
    assert list(store.records()) == []
    assert store.status([cell.key, torn.key])["missing"] == [cell.key, torn.key]
    assert store.pending([cell.key, torn.key]) == [cell.key, torn.key]
    assert len(store.clean_temporary()) == 1 and list(tmp_path.glob("*.tmp")) == []


def test_rerun_skips_finished_cells_without_rewriting_them(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    trainer = CountingTrainer()
    monkeypatch.setattr(grid, "train_cell", trainer)
    store = ResultStore(tmp_path)
    cells = grid_cells(["reinforce", "ppo"], ["CartPole-v1"], [0, 1], {"CartPole-v1": 500})
    first = run_grid(cells, store, workers=1, progress=False)
    assert sorted(first.finished) == sorted(c.key for c in cells) and first.failed == []
    mtimes = {p.name: p.stat().st_mtime_ns for p in tmp_path.glob("*.json")}
    assert len(mtimes) == 4

    second = run_grid(cells, store, workers=1, progress=False)
    assert len(trainer.calls) == 4, "the rerun trained a finished cell again"
    assert sorted(second.skipped) == sorted(c.key for c in cells) and second.finished == []
    assert {p.name: p.stat().st_mtime_ns for p in tmp_path.glob("*.json")} == mtimes


def test_a_cell_that_raises_is_recorded_as_failed_and_retried(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    failing = ("reinforce", "CartPole-v1", 1)
    trainer = CountingTrainer(failing={failing})
    monkeypatch.setattr(grid, "train_cell", trainer)
    store = ResultStore(tmp_path)
    cells = grid_cells(["reinforce"], ["CartPole-v1"], [0, 1])
    first = run_grid(cells, store, workers=1, progress=False)
    assert first.failed == [failing] and first.finished == [("reinforce", "CartPole-v1", 0)]
    record = store.read(*failing)
    assert record is not None and record["status"] == FAILED
    assert record["error"] == "RuntimeError: diverged on seed 1"
    assert "CountingTrainer" not in record["error"] and "in __call__" in record["traceback"]
    assert store.status(c.key for c in cells)[FAILED] == [failing]

    second = run_grid(cells, store, workers=1, progress=False)
    assert trainer.calls == [c.key for c in cells] + [failing], "only the failed cell is retried"
    assert second.finished == [failing]
    retried = store.read(*failing)
    assert retried is not None and retried["status"] == FINISHED


def test_command_line_runs_reports_and_exits_nonzero_on_failures(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(grid, "train_cell", CountingTrainer(failing={("ppo", "CartPole-v1", 2)}))
    argv = ["--algos", "ppo", "--envs", "CartPole-v1", "--seeds", "0", "1", "2", "--store", str(tmp_path)]
    assert cli.main(["run", *argv, "--budget", "CartPole-v1=1e3", "--no-progress"]) == 1
    assert "finished 2, failed 1" in capsys.readouterr().out
    assert cli.main(["status", *argv]) == 0
    assert "failed: 1" in capsys.readouterr().out
    assert cli.main(["report", "--store", str(tmp_path)]) == 0
    assert "| ppo | 2 |" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        cli.main(["run", *argv, "--budget", "CartPole-v1"])


def test_cells_without_a_hyperparameter_entry_are_left_out_of_the_grid() -> None:
    cells = grid_cells(["sac", "reinforce"], ["CartPole-v1", "Pendulum-v1"], [0])
    tuned, untuned = split_untuned(cells)
    assert [c.key for c in untuned] == [("sac", "CartPole-v1", 0)], "SAC has no discrete-action entry"
    assert [c.key for c in tuned] == [
        ("sac", "Pendulum-v1", 0),
        ("reinforce", "CartPole-v1", 0),
        ("reinforce", "Pendulum-v1", 0),
    ]


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
    assert list(tmp_path.glob("*.tmp")) == []
