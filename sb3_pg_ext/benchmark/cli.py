"""
``python -m sb3_pg_ext.benchmark <run|status|report> ...``

    python -m sb3_pg_ext.benchmark run --algos reinforce ppo --envs CartPole-v1 --seeds 0 1 2 \\
        --budget CartPole-v1=100000 --store benchmarks/results/grid --workers 2
    python -m sb3_pg_ext.benchmark run ... --ray-address auto      # the same grid as Ray tasks (pip install "sb3-pg-ext[ray]")
    python -m sb3_pg_ext.benchmark status --algos ... --envs ... --seeds ... --store DIR
    python -m sb3_pg_ext.benchmark report --store DIR [--out DIR]

The launcher runs the same commands: ``sb3-pg-zoo benchmark run|status|report ...``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from sb3_pg_ext.benchmark.grid import grid_cells, is_stale, run_grid, split_untuned
from sb3_pg_ext.benchmark.store import FAILED, FINISHED, ResultStore

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


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    """
    The parser of the benchmark's command line.

    :param prog: the program name of the usage lines (``sb3-pg-zoo benchmark`` from the launcher)
    :return: the parser, with the ``run``, ``status`` and ``report`` subcommands
    """
    parser = argparse.ArgumentParser(prog=prog, description="Benchmark grid of algorithms x envs x seeds")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run the cells of the grid the store does not hold as finished")
    _grid_arguments(run)
    backend = run.add_mutually_exclusive_group()
    backend.add_argument("--workers", type=int, default=1, help="local worker processes (1: in this process)")
    backend.add_argument(
        "--ray-address",
        default=None,
        metavar="ADDR",
        help="run the cells as Ray tasks, one CPU each, on the cluster at ADDR as ray.init(address=ADDR) reads it: "
        "auto (a running cluster), local (start a local instance), ray://HOST:PORT, HOST:PORT; this process writes "
        'the records, so the store needs no shared filesystem (needs Ray: pip install "sb3-pg-ext[ray]")',
    )
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    status = commands.add_parser("status", help="finished, failed and missing cells of the grid")
    _grid_arguments(status)
    report = commands.add_parser(
        "report",
        help="the report from the store alone: markdown tables (IQM with 95%% stratified-bootstrap CIs, normalised "
        "aggregate, probability of improvement over PPO, throughput relative to PPO) and PNG plots",
    )
    report.add_argument("--store", required=True, help="results directory")
    report.add_argument("--out", default=None, help="where report.md and the PNGs go (default: STORE/report)")
    return parser


def main(argv: Sequence[str] | None = None, prog: str = PROG) -> int:
    """
    Run a command of the benchmark's command line.

    :param argv: the arguments (default: ``sys.argv[1:]``)
    :param prog: the program name of the usage lines and error messages
    :return: the exit status: 0; 1 when cells failed or were interrupted; 2 when Ray is missing for ``--ray-address``
        or the store of ``report`` does not exist
    """
    args = build_parser(prog).parse_args(list(sys.argv[1:] if argv is None else argv))
    if args.command == "run" and args.ray_address is not None:
        from sb3_pg_ext.benchmark.ray_backend import import_ray

        try:
            import_ray()
        except ImportError as missing:
            print(f"{prog}: error: {missing}", file=sys.stderr)
            return 2
    if args.command == "report" and not Path(args.store).is_dir():
        print(f"{prog} report: error: no results store at {args.store!r}", file=sys.stderr)
        return 2
    store = ResultStore(args.store)
    if args.command == "report":
        from sb3_pg_ext.benchmark.report import write_report

        written = write_report(store, args.out)
        print(written.markdown)
        print(f"written: {', '.join(str(path) for path in written.paths)}")
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
        by_key = {c.key: c for c in cells}
        states["stale"] = [k for k in states[FINISHED] if is_stale(store.read(*k) or {}, by_key[k])]
        for state, keys in states.items():
            print(f"{state}: {len(keys)}")
            for key in keys if state != FINISHED else []:
                record = store.read(*key)
                error = f"  {record['error']}" if record is not None and record["status"] == FAILED else ""
                print(f"  {key[0]} {key[1]} seed {key[2]}{error}")
        return 0
    result = run_grid(cells, store, workers=args.workers, progress=not args.no_progress, ray_address=args.ray_address)
    if result.stale:
        print("run again, settings changed since they ran: " + ", ".join(f"{a} {e} seed {s}" for a, e, s in result.stale))
    print(f"skipped {len(result.skipped)} finished, finished {len(result.finished)}, failed {len(result.failed)}")
    for key in result.failed:
        record = store.read(*key)
        print(f"failed: {key[0]} {key[1]} seed {key[2]}: {record['error'] if record else '?'}")
    if result.interrupted:
        print(f"interrupted: {len(result.interrupted)} cells (a worker process died); rerun the command to run them")
        for key in result.interrupted:
            print(f"interrupted: {key[0]} {key[1]} seed {key[2]}")
    return 1 if result.failed or result.interrupted else 0


__all__ = ["build_parser", "main"]
