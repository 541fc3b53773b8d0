"""
``sb3-pg-zoo``, the console entry: ``benchmark`` goes to the benchmark's command line
(:func:`sb3_pg_ext.benchmark.cli.main`), ``lab`` to the estimator lab's (:func:`sb3_pg_ext.lab.cli.main`), every
other command to the rl-zoo3 launcher (:func:`sb3_pg_ext.zoo.cli.main`).

    sb3-pg-zoo train | enjoy | plot_train | plot_from_file | all_plots ...   (also: python -m sb3_pg_ext.zoo ...)
    sb3-pg-zoo benchmark run | status | report ...                          (also: python -m sb3_pg_ext.benchmark ...)
    sb3-pg-zoo lab run | report | options ...                               (also: python -m sb3_pg_ext.lab ...)

The dispatch lives here, above all three, because the benchmark imports the zoo and the zoo must not import the
benchmark or the lab.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from sb3_pg_ext.zoo import cli as zoo_cli

PROG = zoo_cli.PROG
BENCHMARK = "benchmark"
LAB = "lab"
#: Every command of ``sb3-pg-zoo``: the launcher's, then the benchmark and the lab.
COMMANDS = (*zoo_cli.COMMANDS, BENCHMARK, LAB)


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
    if argv and argv[0] == LAB:
        from sb3_pg_ext.lab.cli import main as lab_main

        status = lab_main(argv[1:], prog=f"{PROG} {LAB}")
        if status:
            raise SystemExit(status)
        return
    zoo_cli.main(argv, commands=COMMANDS)


__all__ = ["BENCHMARK", "COMMANDS", "LAB", "PROG", "main"]
