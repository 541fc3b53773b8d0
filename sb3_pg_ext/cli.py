"""
``sb3-pg-zoo``, the console entry: ``benchmark`` goes to the benchmark's command line
(:func:`sb3_pg_ext.benchmark.cli.main`), every other command to the rl-zoo3 launcher (:func:`sb3_pg_ext.zoo.cli.main`).

    sb3-pg-zoo train | enjoy | plot_train | plot_from_file | all_plots ...   (also: python -m sb3_pg_ext.zoo ...)
    sb3-pg-zoo benchmark run | status | report ...                          (also: python -m sb3_pg_ext.benchmark ...)

The dispatch lives here, above both, because the benchmark imports the zoo and the zoo must not import the
benchmark.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from sb3_pg_ext.zoo import cli as zoo_cli

PROG = zoo_cli.PROG
BENCHMARK = "benchmark"
#: Every command of ``sb3-pg-zoo``: the launcher's, then the benchmark.
COMMANDS = (*zoo_cli.COMMANDS, BENCHMARK)


def main(argv: Sequence[str] | None = None) -> None:
    """
    Entry point of ``sb3-pg-zoo``.

    :param argv: the command and its arguments (default: ``sys.argv[1:]``)
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == BENCHMARK:
        # imported only for this command: the launcher's commands do not load the benchmark
        from sb3_pg_ext.benchmark.cli import main as benchmark_main

        status = benchmark_main(argv[1:], prog=f"{PROG} {BENCHMARK}")
        if status:
            raise SystemExit(status)
        return
    zoo_cli.main(argv, commands=COMMANDS)


__all__ = ["BENCHMARK", "COMMANDS", "PROG", "main"]
