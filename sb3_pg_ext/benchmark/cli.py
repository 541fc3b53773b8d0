"""
``python -m sb3_pg_ext.benchmark <run|status|reuse|report|presets> ...``

    python -m sb3_pg_ext.benchmark run --preset readme --store benchmarks/results/grid --workers 2
    python -m sb3_pg_ext.benchmark run --preset readme --chunk lunar-200 --store benchmarks/results/grid
    python -m sb3_pg_ext.benchmark run --algos reinforce ppo --envs CartPole-v1 --seeds 0 1 2 \\
        --budget CartPole-v1=100000 --store DIR --workers 2
    python -m sb3_pg_ext.benchmark run ... --ray-address auto      # the same grid as Ray tasks (pip install "sb3-pg-ext[ray]")
    python -m sb3_pg_ext.benchmark run ... --rerun-stale           # also rerun finished cells whose settings changed
    python -m sb3_pg_ext.benchmark run --algos grpo --envs CartPole-v1 --seeds 300 301 \\
        --conf-file grpo=candidate.yml --store DIR                 # grpo's cells read candidate.yml (rl-zoo3's format)
    python -m sb3_pg_ext.benchmark status --preset readme --store benchmarks/results/grid
    python -m sb3_pg_ext.benchmark reuse --preset protocol --store benchmarks/results/protocol \\
        --from benchmarks/results/grid  # copy the grid's runs of cells the protocol shares (same settings)
    python -m sb3_pg_ext.benchmark report --store DIR [--out DIR] [--with DIR:ALGO=NAME ...]
    python -m sb3_pg_ext.benchmark presets [NAME --chunks]        # the named grids (sb3_pg_ext.benchmark.presets)

The launcher runs the same commands: ``sb3-pg-zoo benchmark run|status|reuse|report ...``.

Exit status: 0; 1 when cells failed or were interrupted (a worker died); 2 for bad input (an unknown algorithm, env
or ``--budget`` key, named with the valid ones), a missing Ray, or a store that ``report`` cannot use (missing, or
damaged files, which it names); 130 after Ctrl-C and 143 after SIGTERM (the cells in flight leave no record, the
worker processes are ended; a second signal exits at once).
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import multiprocessing
import os
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import FrameType

import yaml

from sb3_pg_ext.benchmark.cells import (
    Cell,
    CellTrainer,
    grid_cells,
    reuse_records,
    split_untuned,
    stale_reasons,
    train_cell,
    tuned_envs,
)
from sb3_pg_ext.benchmark.grid import run_grid
from sb3_pg_ext.benchmark.presets import PRESETS
from sb3_pg_ext.benchmark.store import DAMAGED, FAILED, FINISHED, DamagedRecordError, ResultStore
from sb3_pg_ext.zoo.registry import register

PROG = "python -m sb3_pg_ext.benchmark"
#: The exit status after Ctrl-C (128 + SIGINT, as a shell reports it).
INTERRUPTED_EXIT = 130


def _budget(text: str) -> tuple[str, int]:
    env, sep, steps = text.rpartition("=")
    if not sep or not env:
        raise argparse.ArgumentTypeError(f"expected ENV=STEPS, got {text!r}")
    try:
        return env, int(float(steps))
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"expected ENV=STEPS with an integer STEPS, got {text!r}") from error


def _conf_file(text: str) -> tuple[str, str]:
    algo, sep, path = text.partition("=")
    if not sep or not algo or not path:
        raise argparse.ArgumentTypeError(f"expected ALGO=PATH, got {text!r}")
    return algo, path


#: The options of a grid given on the command line, which ``--preset`` replaces, and their defaults.
GRID_OPTIONS: dict[str, int | None] = {
    "algos": None,
    "envs": None,
    "seeds": None,
    "budget": None,
    "conf_file": None,
    "n_evaluations": 10,
    "eval_episodes": 5,
    "final_episodes": 10,
}


def _grid_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        default=None,
        help="a named grid of sb3_pg_ext.benchmark.presets (its algorithms, envs, seeds and budgets), instead of "
        "--algos, --envs, --seeds and --budget",
    )
    parser.add_argument("--chunk", default=None, help="with --preset: only this chunk of it (see the presets command)")
    parser.add_argument("--algos", nargs="+", help="rl-zoo3 algorithm names (reinforce ppo ...)")
    parser.add_argument("--envs", nargs="+", help="gymnasium env ids")
    parser.add_argument("--seeds", nargs="+", type=int, help="training seeds")
    parser.add_argument(
        "--budget",
        nargs="*",
        type=_budget,
        metavar="ENV=STEPS",
        help="env-step budget per env (default: each hyperparameter file's n_timesteps)",
    )
    parser.add_argument(
        "--conf-file",
        nargs="*",
        type=_conf_file,
        metavar="ALGO=PATH",
        help="a hyperparameter file (rl-zoo3's format) that ALGO's cells read instead of the algorithm's own, e.g. "
        "candidate entries (the store should be the candidate's own)",
    )
    parser.add_argument("--store", required=True, help="results directory (one JSON file per cell)")
    parser.add_argument("--n-evaluations", type=int, help="evaluation points along training (default: 10)")
    parser.add_argument("--eval-episodes", type=int, help="episodes per evaluation point (default: 5)")
    parser.add_argument("--final-episodes", type=int, help="episodes of the final evaluation (default: 10)")


def _cells(parser: argparse.ArgumentParser, args: argparse.Namespace) -> list[Cell]:
    """The cells the arguments name: the preset's (or one chunk of it), or the grid of ``--algos`` etc."""
    given = [f"--{name.replace('_', '-')}" for name in GRID_OPTIONS if getattr(args, name) is not None]
    if args.preset is not None:
        if given:
            parser.error(f"--preset sets the grid: {', '.join(given)} cannot be given with it")
        preset = PRESETS[args.preset]
        if args.chunk is None:
            return preset.cells()
        try:
            return preset.chunk_cells(args.chunk)
        except KeyError as error:
            parser.error(str(error.args[0]))
    if args.chunk is not None:
        parser.error("--chunk needs --preset")
    missing = [f"--{name}" for name in ("algos", "envs", "seeds") if getattr(args, name) is None]
    if missing:
        parser.error(f"the following arguments are required without --preset: {', '.join(missing)}")
    configs = dict(args.conf_file or [])
    _check_names(parser, args.algos, args.envs, dict(args.budget or []), configs)
    settings = {name: GRID_OPTIONS[name] if getattr(args, name) is None else getattr(args, name) for name in GRID_OPTIONS}
    return grid_cells(
        args.algos,
        args.envs,
        args.seeds,
        dict(args.budget or []),
        configs,
        n_evaluations=settings["n_evaluations"],
        n_eval_episodes=settings["eval_episodes"],
        n_final_episodes=settings["final_episodes"],
    )


def _check_names(
    parser: argparse.ArgumentParser,
    algos: Sequence[str],
    envs: Sequence[str],
    budgets: dict[str, int],
    configs: dict[str, str],
) -> None:
    """
    Exit with an error (status 2) naming the valid names when an algorithm is not one of rl-zoo3's (the package's
    four included), when a ``--conf-file`` names an algorithm outside ``--algos`` or a file that cannot be read as
    hyperparameter entries, when no algorithm's hyperparameter file has an entry for an env, or when a ``--budget``
    key is not an env of the grid.
    """
    from rl_zoo3.utils import ALGOS

    register()
    unknown = [algo for algo in algos if algo not in ALGOS]
    if unknown:
        parser.error(f"unknown algorithm {', '.join(map(repr, unknown))}; algorithms: {', '.join(sorted(ALGOS))}")
    unknown = [algo for algo in configs if algo not in algos]
    if unknown:
        parser.error(f"--conf-file names algorithm {', '.join(map(repr, unknown))}, not in --algos: {', '.join(algos)}")
    for algo, path in configs.items():
        if not Path(path).is_file():
            parser.error(f"--conf-file {algo}={path}: no such file")
        try:
            names = tuned_envs(algo, path)
        except (OSError, TypeError, yaml.YAMLError) as error:
            parser.error(f"--conf-file {algo}={path}: not a hyperparameter file ({type(error).__name__}: {error})")
        if not names:
            parser.error(f"--conf-file {algo}={path}: the file names no env (rl-zoo3's format: ENV_ID: {{...}})")
    known = sorted(set().union(*(tuned_envs(algo, configs.get(algo)) for algo in algos)))
    unknown = [env for env in envs if env not in known]
    if unknown:
        parser.error(
            f"no hyperparameter entry of {', '.join(algos)} for env {', '.join(map(repr, unknown))}; "
            f"their envs: {', '.join(known)}"
        )
    unknown = [env for env in budgets if env not in envs]
    if unknown:
        parser.error(f"--budget names env {', '.join(map(repr, unknown))}, not in --envs; the grid's envs: {', '.join(envs)}")


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    """
    The parser of the benchmark's command line.

    :param prog: the program name of the usage lines (``sb3-pg-zoo benchmark`` from the launcher)
    :return: the parser, with the ``run``, ``status``, ``report`` and ``presets`` subcommands
    """
    parser = argparse.ArgumentParser(prog=prog, description="Benchmark grid of algorithms x envs x seeds")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run the cells of the grid the store does not hold as finished (or stale)")
    run.set_defaults(subparser=run)
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
    run.add_argument(
        "--rerun-stale",
        action="store_true",
        help="also run the finished cells whose settings changed since they ran (overwriting their records); "
        "without it they are listed and skipped",
    )
    reuse = commands.add_parser(
        "reuse",
        help="copy into the store the finished records of another store that are runs of the grid's cells as they are "
        "now (same hyperparameters, budget, seeds and evaluation), instead of training them again",
    )
    reuse.set_defaults(subparser=reuse)
    _grid_arguments(reuse)
    reuse.add_argument("--from", dest="source", required=True, metavar="DIR", help="the results store to copy from")
    status = commands.add_parser("status", help="finished, failed, missing and stale cells of the grid")
    status.set_defaults(subparser=status)
    _grid_arguments(status)
    report = commands.add_parser(
        "report",
        help="the report from the store alone: markdown tables (IQM with 95%% stratified-bootstrap CIs, normalised "
        "aggregate, probability of improvement over PPO, throughput relative to PPO) and PNG plots",
    )
    report.add_argument("--store", required=True, help="results directory")
    report.add_argument("--out", default=None, help="where report.md and the PNGs go (default: STORE/report)")
    report.add_argument(
        "--with",
        dest="extra",
        action="append",
        default=[],
        metavar="DIR:ALGO=NAME",
        help="also report the cells of ALGO from the store DIR, as NAME (repeatable), e.g. "
        "benchmarks/results/protocol_grpo_branch:grpo=grpo_branch",
    )
    presets = commands.add_parser("presets", help="the named grids (--preset) and their chunks")
    presets.add_argument("name", nargs="?", choices=sorted(PRESETS), help="only this preset")
    presets.add_argument("--chunks", action="store_true", help="print the preset's chunks only, one per line")
    return parser


def _print_presets(name: str | None, chunks_only: bool) -> None:
    for preset in [PRESETS[name]] if name is not None else PRESETS.values():
        if chunks_only:
            print("\n".join(preset.chunks()))
            continue
        print(f"{preset.name}: {preset.description} (store: {preset.store})")
        for grid in preset.grids:
            budgets = " ".join(f"{env}={grid.budgets[env]}" for env in grid.envs if env in grid.budgets)
            print(f"  {grid.name}: --algos {' '.join(grid.algos)} --envs {' '.join(grid.envs)}")
            print(f"    --seeds {' '.join(map(str, grid.seeds))} --budget {budgets}")
            for algo, config in grid.configs.items():
                print(f"    {algo}: {config}")
        print(f"  chunks: {' '.join(preset.chunks())}")


#: The signals that stop ``run`` as Ctrl-C does: SIGINT (Ctrl-C) and SIGTERM (``kill``, ``pkill``, a scheduler).
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
#: The stop signal ``run`` received (its exit status is 128 + its number), None before one arrives.
_received: int | None = None


def _exit_at_once(signum: int, frame: FrameType | None) -> None:
    """The stop signals' handler after the first one: kill the worker processes and exit now, without clean-up."""
    for child in multiprocessing.active_children():
        child.kill()
    os.write(2, b"interrupted again: exiting at once\n")
    os._exit(128 + (_received or signum))


def _interrupt_once(signum: int, frame: FrameType | None) -> None:
    """The stop signals' handler of ``run``: the first one stops the grid (``KeyboardInterrupt``), a second exits."""
    global _received
    _received = signum
    for stop in STOP_SIGNALS:
        signal.signal(stop, _exit_at_once)
    raise KeyboardInterrupt


@contextlib.contextmanager
def _interruptible() -> Iterator[None]:
    """
    Within the block, Ctrl-C (SIGINT) or SIGTERM raises ``KeyboardInterrupt`` and a second one exits the process at
    once. After one, the process is on its way out: the exit-at-once handler stays installed (a signal while the
    message is printed or the interpreter shuts down still exits with status 128 + its number); otherwise the
    previous handlers are restored.
    """
    global _received
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _received = None
    previous = {stop: signal.signal(stop, _interrupt_once) for stop in STOP_SIGNALS}
    try:
        yield
    except KeyboardInterrupt:
        for stop in STOP_SIGNALS:
            signal.signal(stop, _exit_at_once)
            # Python's finalization puts SIGINT back to its default action (death by signal, not status 130): from
            # the exit handlers on, a stop signal is ignored instead, and the process ends with its status
            atexit.register(signal.signal, stop, signal.SIG_IGN)
        raise
    except BaseException:
        for stop, handler in previous.items():
            signal.signal(stop, handler)
        raise
    for stop, handler in previous.items():
        signal.signal(stop, handler)


def _report_damaged(prog: str, command: str, store: ResultStore) -> int:
    damaged = store.damaged()
    names = "; ".join(f"{error.path.name} ({error.reason})" for error in damaged)
    print(
        f"{prog} {command}: error: {len(damaged)} damaged result files in {store.root}: {names}; `run` sets them "
        "aside (renamed <name>.damaged-<time>) and reruns their cells",
        file=sys.stderr,
    )
    return 2


def main(argv: Sequence[str] | None = None, prog: str = PROG, *, train: CellTrainer = train_cell) -> int:
    """
    Run a command of the benchmark's command line.

    :param argv: the arguments (default: ``sys.argv[1:]``)
    :param prog: the program name of the usage lines and error messages
    :param train: what ``run`` trains a cell with (:func:`~sb3_pg_ext.benchmark.cells.train_cell`)
    :return: the exit status: 0; 1 when cells failed or were interrupted; 2 when Ray is missing for
        ``--ray-address`` or the store of ``report`` does not exist or holds damaged files; 130 after Ctrl-C, 143
        after SIGTERM (bad arguments exit with status 2 through argparse)
    """
    args = build_parser(prog).parse_args(list(sys.argv[1:] if argv is None else argv))
    if args.command == "presets":
        _print_presets(args.name, args.chunks)
        return 0
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
    if args.command == "report":
        from sb3_pg_ext.benchmark.report import ExtraCells, write_report

        store = ResultStore(args.store)
        try:
            extra = [ExtraCells.parse(spec) for spec in args.extra]
        except ValueError as error:
            print(f"{prog} report: error: --with {error}", file=sys.stderr)
            return 2
        try:
            written = write_report(store, args.out, extra=extra)
        except DamagedRecordError as error:
            damaged = next((cells.store for cells in extra if error.path.parent == cells.store.root), store)
            return _report_damaged(prog, "report", damaged)
        except ValueError as error:  # an extra's name is taken
            print(f"{prog} report: error: --with {error}", file=sys.stderr)
            return 2
        print(written.markdown)
        print(f"written: {', '.join(str(path) for path in written.paths)}")
        return 0
    if args.command == "reuse" and not Path(args.source).is_dir():
        args.subparser.error(f"--from {args.source}: no results store there")
    cells, untuned = split_untuned(_cells(args.subparser, args))
    store = ResultStore(args.store)
    if untuned:
        skipped = sorted({(c.algo, c.env) for c in untuned})
        print("not in the grid (no entry in the hyperparameter file): " + ", ".join(f"{a} on {e}" for a, e in skipped))
    if not cells:
        args.subparser.error("no cell left to run: no algorithm of the grid has an entry for any of its envs")
    if args.command == "status":
        return _status(store, cells)
    if args.command == "reuse":
        return _reuse(args, store, cells)
    try:
        with _interruptible():
            result = run_grid(
                cells,
                store,
                workers=args.workers,
                progress=not args.no_progress,
                ray_address=args.ray_address,
                train=train,
                rerun_stale=args.rerun_stale,
            )
    except KeyboardInterrupt:
        sys.stdout.flush()
        by = "" if _received in (None, signal.SIGINT) else f" by {signal.Signals(_received).name}"
        print(
            f"{prog} run: interrupted{by}: the cells in flight left no record and run again at the next call",
            file=sys.stderr,
            flush=True,
        )
        return INTERRUPTED_EXIT if _received is None else 128 + _received
    for key, reason, kept in result.damaged:
        print(f"damaged: {key[0]} {key[1]} seed {key[2]} ({reason}): kept as {kept}, the cell ran again")
    if result.stale:
        verb = "ran again" if args.rerun_stale else "skipped (rerun them with --rerun-stale)"
        print(f"stale, {verb}: {len(result.stale)} finished cells whose settings changed since they ran")
        for key in result.stale:
            print(f"  {key[0]} {key[1]} seed {key[2]}: {'; '.join(result.stale_reasons[key])}")
    print(f"skipped {len(result.skipped)} finished, finished {len(result.finished)}, failed {len(result.failed)}")
    for key in result.failed:
        record = store.read(*key)
        print(f"failed: {key[0]} {key[1]} seed {key[2]}: {record['error'] if record else '?'}")
    if result.interrupted:
        print(f"interrupted: {len(result.interrupted)} cells (a worker process died); rerun the command to run them")
        for key in result.interrupted:
            print(f"interrupted: {key[0]} {key[1]} seed {key[2]}")
    return 1 if result.failed or result.interrupted else 0


def _reuse(args: argparse.Namespace, store: ResultStore, cells: list[Cell]) -> int:
    """Copy the up-to-date runs of ``cells`` from ``--from`` into ``store`` and print what was copied; returns 0."""
    if Path(args.source).resolve() == store.root.resolve():
        args.subparser.error(f"--from {args.source} is the store itself")
    copied, left = reuse_records(cells, ResultStore(args.source), store)
    for cell in copied:
        print(f"copied: {cell.algo} {cell.env} seed {cell.seed}")
    print(f"copied {len(copied)} from {args.source}; {len(left)} cells have no up-to-date run there")
    return 0


def _status(store: ResultStore, cells: list[Cell]) -> int:
    """Print the cells of the grid by state (damaged and stale ones with why); returns 0."""
    states = store.status(c.key for c in cells)
    by_key = {c.key: c for c in cells}
    reasons: dict[tuple[str, str, int], list[str]] = {}
    for key in states[FINISHED]:
        record = store.read(*key)
        if record is not None and (why := stale_reasons(record, by_key[key])):
            reasons[key] = why
    states["stale"] = list(reasons)
    for state, keys in states.items():
        print(f"{state}: {len(keys)}")
        for key in keys if state != FINISHED else []:
            detail = ""
            if state == FAILED:
                record = store.read(*key)
                detail = f"  {record['error']}" if record is not None else ""
            elif state == DAMAGED:
                try:
                    store.read(*key)
                except DamagedRecordError as error:
                    detail = f"  {error.path} ({error.reason}); `run` sets it aside and reruns the cell"
            elif state == "stale":
                detail = f"  {'; '.join(reasons[key])}"
            print(f"  {key[0]} {key[1]} seed {key[2]}{detail}")
    return 0


__all__ = ["build_parser", "main"]
