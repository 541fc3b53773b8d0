"""
``python -m sb3_pg_ext.lab <run|report|options> ...``

    python -m sb3_pg_ext.lab run --algo reinforce --env CartPole-v1 --train-fraction 0.1 \\
        --batch-sizes 4 16 --batches 32 --reference-factor 64 --out benchmarks/results/lab
    python -m sb3_pg_ext.lab run --algo reinforce --env CartPole-v1 --train-fraction 0.1 \\
        --conf-file benchmarks/lab_entries/reinforce-CartPole-v1.yml --out benchmarks/results/lab
    python -m sb3_pg_ext.lab run --algo ispg --env CartPole-v1 --model path/to/model.zip --behind 4 --out DIR
    python -m sb3_pg_ext.lab run --algo grpo --env CartPole-v1 --zoo-folder logs/grpo/CartPole-v1_1 --out DIR
    python -m sb3_pg_ext.lab report --out DIR [--markdown DIR/report.md] [--no-plots]
    python -m sb3_pg_ext.lab options --algo reinforce

A run folder is ``<out>/<algo>/<env>/<checkpoint label>[-behind<k>]``; an interrupted run is resumed by running the
same command again (files already stored are not recomputed). A folder measured at another checkpoint (its
``context.json`` records the checkpoint's digest) is refused with exit status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sb3_pg_ext.lab.checkpoints import (
    SOURCE_ATTRIBUTE,
    load_model,
    same_training,
    train_fraction,
    training_source,
    zoo_model_path,
)
from sb3_pg_ext.lab.options import ADAPTERS
from sb3_pg_ext.lab.report import build_report
from sb3_pg_ext.lab.run import CheckpointMismatchError, LabRun

PROG = "python -m sb3_pg_ext.lab"


def _parser(prog: str = PROG) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description="Bias and variance of the gradient estimators' options.")
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="measure the options at a checkpoint (resumes an interrupted run)")
    run.add_argument("--algo", required=True, help=f"one of {', '.join(sorted(ADAPTERS))}")
    run.add_argument("--env", required=True, help="gymnasium env id")
    source = run.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", type=Path, help="a saved model (.zip)")
    source.add_argument("--zoo-folder", type=Path, help="an rl-zoo3 run folder (logs/<algo>/<env>_<n>)")
    source.add_argument(
        "--train-fraction",
        type=float,
        help="train the package's entry (or --conf-file's) for this fraction of its budget",
    )
    run.add_argument(
        "--conf-file", type=Path, help="with --train-fraction: read the env's entry from this rl-zoo3 yml instead"
    )
    run.add_argument("--label", help="the checkpoint's name in the report (default: from the source)")
    run.add_argument("--batch-sizes", type=int, nargs="+", default=[8], help="batch sizes in episodes")
    run.add_argument("--batches", type=int, default=32, help="R: batches per (option, batch size)")
    run.add_argument("--reference-factor", type=int, default=64, help="K: the reference averages K largest batches")
    run.add_argument("--options", nargs="+", help="option names (default: all; see the options command)")
    run.add_argument("--behind", type=int, default=0, help="ispg: updates between behaviour and target policy")
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--out", type=Path, required=True, help="the lab's results folder")

    report = commands.add_parser("report", help="tables and plots from the stored files")
    report.add_argument("--out", type=Path, required=True, help="a results folder or one run folder")
    report.add_argument("--markdown", type=Path, help="also write the markdown here")
    report.add_argument("--no-plots", action="store_true")

    options = commands.add_parser("options", help="list an algorithm's options")
    options.add_argument("--algo", required=True, help=f"one of {', '.join(sorted(ADAPTERS))}")
    return parser


def _check_algo(parser: argparse.ArgumentParser, algo: str) -> None:
    if algo not in ADAPTERS:
        parser.error(f"unknown --algo {algo!r}; valid: {', '.join(sorted(ADAPTERS))}")


def _folder(env_dir: Path, label: str, args: argparse.Namespace) -> Path:
    """The run folder of a checkpoint label (ISPG's also names how far behind the behaviour policy is)."""
    return env_dir / (label + (f"-behind{args.behind}" if args.algo == "ispg" else ""))


def _check_stored_entry(parser: argparse.ArgumentParser, folder: Path, source: dict[str, Any]) -> None:
    """
    Refuse, before training, a ``--train-fraction`` run into a folder whose ``context.json`` records a checkpoint
    trained from another entry, fraction or seed (the run would train a checkpoint and then be refused by its digest).
    """
    path = folder / "context.json"
    stored = (json.loads(path.read_text()).get("checkpoint_source") or {}) if path.exists() else {}
    if "entry" not in stored or same_training(stored, source):
        return
    parser.error(
        f"run folder {folder} was measured at --train-fraction {stored.get('train_fraction')} --seed "
        f"{stored.get('seed')} of the {stored.get('entry_key')} entry of {stored.get('entry_file')} "
        f"({stored['entry']}), not at --train-fraction {source['train_fraction']} --seed {source['seed']} of the "
        f"{source['entry_key']} entry of {source['entry_file']} ({source['entry']}). Pass the folder's entry with "
        "--conf-file, or measure this checkpoint in another folder (another --label or --out)"
    )


def _run(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    _check_algo(parser, args.algo)
    grid = ADAPTERS[args.algo]().options()
    if args.options:
        unknown = [name for name in args.options if name not in grid]
        if unknown:
            parser.error(f"unknown {args.algo} --options {unknown}; valid: {', '.join(grid)}")
    if any(size < 2 for size in args.batch_sizes):
        parser.error(f"--batch-sizes must be >= 2 episodes, got {args.batch_sizes}")
    if args.batches < 3:
        parser.error(f"--batches must be >= 3, got {args.batches}")
    if args.reference_factor < 3:
        parser.error(f"--reference-factor must be >= 3, got {args.reference_factor}")
    if args.behind < 0 or (args.behind and args.algo != "ispg"):
        parser.error(f"--behind {args.behind}: a count >= 0, for --algo ispg only")
    if args.conf_file is not None and args.train_fraction is None:
        parser.error(f"--conf-file {args.conf_file}: applies to --train-fraction only")
    env_dir = args.out / args.algo / args.env.replace("/", "-")
    source: dict[str, Any] | None = None
    try:
        if args.model is not None:
            label = args.label or args.model.stem
            checkpoint = load_model(args.algo, args.model)
            source = {"model": str(args.model)}
        elif args.zoo_folder is not None:
            label = args.label or args.zoo_folder.name
            model_path = zoo_model_path(args.zoo_folder, args.env)
            checkpoint = load_model(args.algo, model_path)
            source = {"zoo_folder": str(args.zoo_folder), "model": str(model_path)}
        else:
            if not 0.0 < args.train_fraction <= 1.0:
                parser.error(f"--train-fraction must be in (0, 1], got {args.train_fraction}")
            label = args.label or f"train{args.train_fraction:g}-seed{args.seed}"
            wanted = training_source(args.algo, args.env, args.train_fraction, args.seed, args.conf_file)
            _check_stored_entry(parser, _folder(env_dir, label, args), wanted)  # before a training it would refuse
            path = env_dir / "checkpoints" / f"{label}.zip"
            checkpoint = train_fraction(args.algo, args.env, args.train_fraction, args.seed, path, args.conf_file)
            source = getattr(checkpoint, SOURCE_ATTRIBUTE)
    except (FileNotFoundError, ValueError, KeyError) as error:
        parser.error(str(error.args[0]) if isinstance(error, KeyError) else str(error))
    folder = _folder(env_dir, label, args)
    lab = LabRun(
        algo=args.algo,
        env=args.env,
        checkpoint=checkpoint,
        out=folder,
        batch_sizes=args.batch_sizes,
        options=args.options,
        n_batches=args.batches,
        reference_factor=args.reference_factor,
        seed=args.seed,
        behind=args.behind,
        checkpoint_label=label,
        checkpoint_source=source,
    )
    try:
        lab.run(log=print)
    except CheckpointMismatchError as error:
        parser.error(str(error))
    print(f"run folder: {folder}")
    return 0


def main(argv: Sequence[str] | None = None, prog: str = PROG) -> int:
    """
    The lab's command line.

    :param argv: arguments (default: ``sys.argv[1:]``)
    :param prog: the program name in usage and error lines (``sb3-pg-zoo lab`` from the console entry)
    :return: the exit status (argparse exits with 2 on bad arguments)
    """
    parser = _parser(prog)
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if args.command == "run":
        return _run(parser, args)
    if args.command == "options":
        _check_algo(parser, args.algo)
        adapter = ADAPTERS[args.algo]()
        for name, settings in adapter.options().items():
            print(f"{name}: {settings}")
        return 0
    if not args.out.exists():
        parser.error(f"--out {args.out} does not exist")
    try:
        text = build_report(args.out, plots=not args.no_plots)
    except FileNotFoundError as error:
        parser.error(str(error))
    if args.markdown is not None:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(text)
    print(text)
    return 0
