"""
``sb3-pg-zoo`` / ``python -m sb3_pg_ext.zoo``: rl-zoo3's command line with REINFORCE, ISPG, PPOKL and GRPO
registered (the launcher pattern of rl-zoo3's SBX guide).

    sb3-pg-zoo train --algo grpo --env CartPole-v1 [every rl-zoo3 train flag] [--eval-seeds K] [--eval-aggregate A]
    sb3-pg-zoo enjoy --algo grpo --env CartPole-v1 -f logs/ [every rl-zoo3 enjoy flag]
    sb3-pg-zoo plot_train | plot_from_file | all_plots [rl-zoo3's flags]

(``sb3-pg-zoo benchmark`` is routed to the benchmark's command line by :mod:`sb3_pg_ext.cli`, the console entry, so
that the zoo does not import the benchmark, the floor above it.)

Each command parses its arguments with rl-zoo3's own parser and runs rl-zoo3's own function; the launcher adds:

- ``train``: :class:`~sb3_pg_ext.zoo.exp_manager.PGExperimentManager` in place of rl-zoo3's ``ExperimentManager``
  (the package's hyperparameter files by default, ``--trial-id 0``, and the two robust-trial flags below, which
  rl-zoo3's parser does not know and which are taken out of the arguments before it sees them);
- ``enjoy``: every off-policy algorithm (its class is an ``OffPolicyAlgorithm``) is loaded with ``buffer_size=1``,
  as rl-zoo3 loads the ones its hard-coded list names (SAC, DQN, ...), so that no replay buffer is allocated to
  watch an agent: ISPG, which the list does not name, too.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib
import os
import pickle
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from typing import Any, cast

import numpy as np
import rl_zoo3
import stable_baselines3
import torch as th
from rl_zoo3.utils import ALGOS
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.off_policy_algorithm import OffPolicyAlgorithm

from sb3_pg_ext import __version__
from sb3_pg_ext.zoo.aggregate import AGGREGATES
from sb3_pg_ext.zoo.exp_manager import LauncherUsageError, PGExperimentManager
from sb3_pg_ext.zoo.registry import ZOO_ALGOS, register

PROG = "sb3-pg-zoo"
COMMANDS = ("train", "enjoy", "plot_train", "plot_from_file", "all_plots")


def _robust_trial_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"{PROG} train", add_help=False, allow_abbrev=False)
    group = parser.add_argument_group("robust trials (sb3-pg-ext; with -optimize)")
    group.add_argument(
        "--eval-seeds",
        type=int,
        default=None,
        metavar="K",
        help="train every trial on K seeds and report an aggregate of their evaluations (default: rl-zoo3's single "
        "unseeded run and the mean of its last evaluation)",
    )
    group.add_argument(
        "--eval-aggregate",
        choices=sorted(AGGREGATES),
        default=None,
        help="aggregate of the K x --eval-episodes returns at each evaluation point, reported for pruning and, at "
        "the last point, as the trial's value: iqm (default), mean, bootstrap_lower (lower end of a 95%% "
        "two-level bootstrap interval of the IQM), worst_seed (the lowest of the K seeds' mean returns)",
    )
    return parser


@functools.cache
def _rl_zoo_function(module: str, name: str) -> Callable[[], None]:
    return cast(Callable[[], None], getattr(importlib.import_module(module), name))


def train(args: Sequence[str]) -> None:
    """rl-zoo3's ``train`` with :class:`PGExperimentManager` (and the robust-trial flags) swapped in."""
    parser = _robust_trial_parser()
    if "-h" in args or "--help" in args:
        parser.print_help()
        print()
    ours, rest = parser.parse_known_args(list(args))
    check_hyperparams_flag(rest)
    rest = with_cpu_thread_default(rest)
    zoo_train = importlib.import_module("rl_zoo3.train")
    manager = functools.partial(PGExperimentManager, eval_seeds=ours.eval_seeds, eval_aggregate=ours.eval_aggregate)
    # rl_zoo3.train.train() looks the name up in its module when it runs: rebinding it there for the call swaps
    # the manager without copying train()
    original = zoo_train.ExperimentManager
    zoo_train.ExperimentManager = manager  # type: ignore[attr-defined]
    try:
        _run(f"{PROG} train", rest, zoo_train.train)
    finally:
        zoo_train.ExperimentManager = original  # type: ignore[attr-defined]


#: ``--num-threads`` when the user gives none and training runs on the CPU (see :func:`with_cpu_thread_default`).
CPU_THREADS_DEFAULT = 1


def with_cpu_thread_default(args: Sequence[str]) -> list[str]:
    """
    ``args`` with ``--num-threads 1`` added when they give no ``--num-threads`` and the run is on the CPU
    (``--device cpu``, or ``auto`` without CUDA). rl-zoo3 leaves torch's default (one thread per core), which on
    these small networks is no faster on an idle machine and several times slower on a busy one (figures:
    docs/zoo.md). ``--num-threads -1`` keeps torch's default.
    """
    args = list(args)
    if "--num-threads" in args or any(arg.startswith("--num-threads=") for arg in args):
        return args
    device = _option_value(args, "--device") or "auto"
    on_cpu = device.startswith("cpu") or (device == "auto" and not th.cuda.is_available())
    return [*args, "--num-threads", str(CPU_THREADS_DEFAULT)] if on_cpu else args


HYPERPARAMS_FLAGS = ("-params", "--hyperparams")


def check_hyperparams_flag(args: Sequence[str]) -> None:
    """
    Raise :class:`LauncherUsageError` unless every value of ``-params``/``--hyperparams`` is a ``key:value`` pair
    whose value is a Python expression (rl-zoo3 ``eval``s it; a file name gave a raw ``SyntaxError``).
    """
    values: list[str] = []
    taking = False
    for arg in args:
        if arg in HYPERPARAMS_FLAGS:
            taking = True
            continue
        if taking and arg.startswith("-") and not _is_number(arg):
            taking = False
        if taking:
            values.append(arg)
    for value in values:
        key, sep, expression = value.partition(":")
        hint = (
            "-params takes key:value pairs, e.g. -params n_episodes:16 learning_rate:0.001 "
            'policy_kwargs:"dict(net_arch=[64])" (a hyperparameter file goes to --conf-file)'
        )
        if not sep or not key:
            raise LauncherUsageError(f"-params {value!r} is not a key:value pair; {hint}")
        try:
            compile(expression, "<-params>", "eval")
        except SyntaxError:
            raise LauncherUsageError(
                f"-params {value!r}: the value {expression!r} is not a Python expression (quote strings: "
                f"{key}:\"'text'\"); {hint}"
            ) from None


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def off_policy_algos() -> list[str]:
    """The names in ``rl_zoo3.ALGOS`` whose class is an ``OffPolicyAlgorithm`` (the package's ISPG included)."""
    return [name for name, cls in ALGOS.items() if isinstance(cls, type) and issubclass(cls, OffPolicyAlgorithm)]


class _ReplayFreeLoader:
    """
    Stands in for an off-policy class in ``rl_zoo3.ALGOS`` while ``enjoy`` runs: ``load`` passes ``buffer_size=1``
    unless rl-zoo3 passed one (the model is only used to act; rl-zoo3 passes 1 for the algorithms of its own list).

    :param algo_class: the off-policy algorithm class it stands in for
    """

    def __init__(self, algo_class: type[BaseAlgorithm]):
        self.algo_class = algo_class

    def load(self, path: Any, **kwargs: Any) -> BaseAlgorithm:
        kwargs.setdefault("buffer_size", 1)
        return self.algo_class.load(path, **kwargs)


def enjoy(args: Sequence[str]) -> None:
    """rl-zoo3's ``enjoy``, with every off-policy algorithm loaded without a replay buffer."""
    replaced = {name: ALGOS[name] for name in off_policy_algos()}
    for name, cls in replaced.items():
        ALGOS[name] = cast(type[BaseAlgorithm], _ReplayFreeLoader(cls))
    try:
        _run(f"{PROG} enjoy", args, _rl_zoo_function("rl_zoo3.enjoy", "enjoy"))
    finally:
        ALGOS.update(replaced)


#: matplotlib backends that cannot show a window (matplotlib picks ``agg`` where there is no display).
NON_INTERACTIVE_BACKENDS = frozenset({"agg", "cairo", "pdf", "pgf", "ps", "svg", "template"})


def _option_value(args: Sequence[str], *flags: str) -> str | None:
    """The value after the last of ``flags`` in ``args`` (None if absent)."""
    value = None
    for i, arg in enumerate(args[:-1]):
        if arg in flags:
            value = args[i + 1]
    return value


def _default_figure_path(name: str, args: Sequence[str]) -> str:
    """Where a plot command's figures go when there is no display: beside ``-o`` or in the experiment folder."""
    if name == "plot_train":
        folder = _option_value(args, "-f", "--exp-folder") or "."
        algo = _option_value(args, "-a", "--algo") or "algo"
        env = _option_value(args, "-e", "--env") or "env"
        return os.path.join(folder, f"plot_train_{algo}_{env}.png")
    output = _option_value(args, "-o", "--output")
    if output is None:
        return f"{name}.png"
    # all_plots: -o names the results file (without suffix); plot_from_file: the image it saves itself
    return f"{output}.png" if name == "all_plots" else f"{os.path.splitext(output)[0]}_figure.png"


@contextlib.contextmanager
def _figures_saved_without_display(path: str) -> Iterator[list[str]]:
    """
    Where matplotlib cannot show a window, ``plt.show()`` saves every open figure instead (``path``, then
    ``path`` with ``_2``, ``_3``, ... before the suffix) and prints where; elsewhere it shows them as usual.
    """
    import matplotlib
    import matplotlib.pyplot as plt

    saved: list[str] = []
    if matplotlib.get_backend().lower() not in NON_INTERACTIVE_BACKENDS:
        yield saved
        return
    original = plt.show

    def show(*args: Any, **kwargs: Any) -> None:
        root, ext = os.path.splitext(path)
        for figure_number in plt.get_fignums():
            target = path if not saved else f"{root}_{len(saved) + 1}{ext}"
            os.makedirs(os.path.dirname(target) or ".", exist_ok=True)
            plt.figure(figure_number).savefig(target)
            saved.append(target)
            print(f"{PROG}: no display (matplotlib backend {matplotlib.get_backend()}): figure saved to {target}")
        plt.close("all")

    plt.show = show
    try:
        yield saved
    finally:
        plt.show = original


def _single_runs_as_lists(path: str, target: str) -> None:
    """
    Copy the results file of ``all_plots`` at ``path`` to ``target`` with every ``last_evals`` made a 1-D array:
    with one run, ``all_plots`` stores it as a scalar, which ``plot_from_file`` skips, and with every entry skipped
    it fails with ``min() arg is an empty sequence``.
    """
    with open(path, "rb") as file:
        results = pickle.load(file)
    for env, entries in results.items():
        if env == "results_table" or not isinstance(entries, dict):
            continue
        for entry in entries.values():
            if isinstance(entry, dict) and "last_evals" in entry:
                entry["last_evals"] = np.atleast_1d(entry["last_evals"])
    with open(target, "wb") as file:
        pickle.dump(results, file)


def _plots(name: str) -> Callable[[Sequence[str]], None]:
    def command(args: Sequence[str]) -> None:
        args = list(args)
        function = _rl_zoo_function(f"rl_zoo3.plots.{name}", name)
        with contextlib.ExitStack() as stack:
            source = _option_value(args, "-i", "--input")
            if name == "plot_from_file" and source is not None and os.path.isfile(source):
                folder = stack.enter_context(tempfile.TemporaryDirectory(prefix="sb3-pg-zoo-"))
                copy = os.path.join(folder, os.path.basename(source))
                _single_runs_as_lists(source, copy)
                args[len(args) - 1 - args[::-1].index(source)] = copy
            stack.enter_context(_figures_saved_without_display(_default_figure_path(name, args)))
            _run(f"{PROG} {name}", args, function)

    command.__doc__ = (
        f"rl-zoo3's ``{name}``; without a display, the figures are saved (and their paths printed) instead of shown."
    )
    return command


def _run(prog: str, args: Sequence[str], function: Callable[[], None]) -> None:
    """Run an rl-zoo3 command function (they parse ``sys.argv``) on ``args``."""
    saved = sys.argv
    sys.argv = [prog, *args]
    try:
        function()
    finally:
        sys.argv = saved


RUNNERS: dict[str, Callable[[Sequence[str]], None]] = {
    "train": train,
    "enjoy": enjoy,
    "plot_train": _plots("plot_train"),
    "plot_from_file": _plots("plot_from_file"),
    "all_plots": _plots("all_plots"),
}


def version() -> str:
    """The ``--version`` line: the package's version and those of rl-zoo3 and SB3 it runs."""
    return (
        f"{PROG} {__version__} (sb3-pg-ext; rl-zoo3 {rl_zoo3.__version__}, stable-baselines3 {stable_baselines3.__version__})"
    )


def main(argv: Sequence[str] | None = None, commands: Sequence[str] = COMMANDS) -> None:
    """
    Entry point of ``python -m sb3_pg_ext.zoo`` (and, through :mod:`sb3_pg_ext.cli`, of ``sb3-pg-zoo``).

    :param argv: the command and its arguments (default: ``sys.argv[1:]``)
    :param commands: the commands the usage line and the unknown-command message name (the console entry adds
        ``benchmark``, which it runs itself)
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("--version", "-V"):
        print(version())
        return
    if not argv or argv[0] in ("-h", "--help"):
        print(f"usage: {PROG} {{{','.join(commands)}}} [rl-zoo3 arguments]")
        print(f"algorithms added to rl-zoo3's: {', '.join(ZOO_ALGOS)}")
        print(f"'{PROG} <command> -h' lists a command's arguments; '{PROG} --version' the versions")
        if not argv:
            raise SystemExit(2)
        return
    command, args = argv[0], argv[1:]
    if command not in RUNNERS:
        raise SystemExit(f"{PROG}: unknown command {command!r}; use one of {', '.join(commands)}")
    register()
    try:
        RUNNERS[command](args)
    except LauncherUsageError as error:
        print(f"{PROG} {command}: error: {error}", file=sys.stderr)
        raise SystemExit(2) from None


__all__ = [
    "COMMANDS",
    "PROG",
    "RUNNERS",
    "check_hyperparams_flag",
    "enjoy",
    "main",
    "off_policy_algos",
    "train",
    "version",
]
