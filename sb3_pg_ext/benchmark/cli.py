"""
``python -m sb3_pg_ext.benchmark <run|status|report> ...``

    python -m sb3_pg_ext.benchmark run --algos reinforce ppo --envs CartPole-v1 --seeds 0 1 2 \\
        --budget CartPole-v1=100000 --store benchmarks/results/grid --workers 2
    python -m sb3_pg_ext.benchmark status --algos ... --envs ... --seeds ... --store DIR
    python -m sb3_pg_ext.benchmark report --store DIR
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from sb3_pg_ext.benchmark.grid import grid_cells, run_grid, split_untuned
from sb3_pg_ext.benchmark.store import FAILED, ResultStore

PROG = "python -m sb3_pg_ext.benchmark"


def _budget(text: str) -> tuple[str, int]:
    env, sep, steps = text.rpartition("=")
    if not sep or not env:
        raise argparse.ArgumentTypeError(f"expected ENV=STEPS, got {text!r}")
    try:
        return env, int(float(steps))
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"expected ENV=STEPS with an integer STEPS, got {text!r}") from error


def _grid_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--algos", nargs="+", required=True, help="rl-zoo3 algorithm names (reinforce ppo ...)")
    parser.add_argument("--envs", nargs="+", required=True, help="gymnasium env ids")
    parser.add_argument("--seeds", nargs="+", type=int, required=True, help="training seeds")
    parser.add_argument(
        "--budget",
        nargs="*",
        type=_budget,
        default=[],
        metavar="ENV=STEPS",
        help="env-step budget per env (default: each hyperparameter file's n_timesteps)",
    )
    parser.add_argument("--store", required=True, help="results directory (one JSON file per cell)")
    parser.add_argument("--n-evaluations", type=int, default=10, help="evaluation points along training")
    parser.add_argument("--eval-episodes", type=int, default=5, help="episodes per evaluation point")
    parser.add_argument("--final-episodes", type=int, default=10, help="episodes of the final evaluation")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="Benchmark grid of algorithms x envs x seeds")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run the cells of the grid the store does not hold as finished")
    _grid_arguments(run)
    run.add_argument("--workers", type=int, default=1, help="worker processes (1: in this process)")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    status = commands.add_parser("status", help="finished, failed and missing cells of the grid")
    _grid_arguments(status)
    report = commands.add_parser("report", help="per-env IQM of the final returns with 95%% bootstrap CIs")
    report.add_argument("--store", required=True)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    store = ResultStore(args.store)
    if args.command == "report":
        from sb3_pg_ext.benchmark.report import markdown_table

        print(markdown_table(store))
        return 0
    cells = grid_cells(
        args.algos,
        args.envs,
        args.seeds,
        dict(args.budget),
        n_evaluations=args.n_evaluations,
        n_eval_episodes=args.eval_episodes,
        n_final_episodes=args.final_episodes,
    )
    cells, untuned = split_untuned(cells)
    if untuned:
        skipped = sorted({(c.algo, c.env) for c in untuned})
        print("not in the grid (no entry in the hyperparameter file): " + ", ".join(f"{a} on {e}" for a, e in skipped))
    if args.command == "status":
        states = store.status(c.key for c in cells)
        for state, keys in states.items():
            print(f"{state}: {len(keys)}")
            for key in keys if state != "finished" else []:
                record = store.read(*key)
                error = f"  {record['error']}" if record is not None and record["status"] == FAILED else ""
                print(f"  {key[0]} {key[1]} seed {key[2]}{error}")
        return 0
    result = run_grid(cells, store, workers=args.workers, progress=not args.no_progress)
    print(f"skipped {len(result.skipped)} finished, finished {len(result.finished)}, failed {len(result.failed)}")
    for key in result.failed:
        record = store.read(*key)
        print(f"failed: {key[0]} {key[1]} seed {key[2]}: {record['error'] if record else '?'}")
    if result.interrupted:
        print(f"interrupted: {len(result.interrupted)} cells (a worker process died); rerun the command to run them")
    return 1 if result.failed or result.interrupted else 0


__all__ = ["build_parser", "main"]
