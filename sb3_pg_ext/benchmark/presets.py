"""
The named grids of the benchmark (``python -m sb3_pg_ext.benchmark run|status --preset NAME``): the algorithms, envs,
seeds and env-step budgets of every grid the docs report, in this one place.

- ``readme``: the README's grid. The package's four algorithms and SB3's ``ppo``, ``a2c``, ``sac``, sb3-contrib's
  ``trpo``, each with its hyperparameter file's entry; CartPole-v1, Acrobot-v1 and Pendulum-v1 on training seeds
  200-204 and LunarLander-v3 on seeds 200-202 (disjoint from every tuning seed, trial numbers from 0, and retraining
  seed, 100-104), at :data:`GRID_BUDGETS`. Its store is ``benchmarks/results/grid``.
- ``protocol``: the benchmark protocol: the eight algorithms with their hyperparameter files' entries, every env at
  :data:`PROTOCOL_BUDGETS` (rl-zoo3's PPO budget), training seeds 200-204 everywhere. Chunks run the short envs
  (CartPole-v1, Pendulum-v1) before the long ones (Acrobot-v1, LunarLander-v3), SAC last. Store
  ``benchmarks/results/protocol``.
- ``protocol-defaults``: the package's four algorithms with their constructor defaults (:data:`DEFAULTS_DIR`) on the
  same cells, the yardstick every shipped entry must match (``benchmarks/results/protocol_defaults``).
- ``protocol-grpo-branch``: GRPO with branch groups (:data:`GRPO_BRANCH_CONFIG`) on the protocol's cells, beside
  the ``protocol`` grid's reset-group GRPO (``benchmarks/results/protocol_grpo_branch``).
- ``final-policies``: the final policies of the package's defaults: the four algorithms with their constructor
  defaults (not the tuned entries: the files of :data:`DEFAULTS_DIR`; GRPO on 8 envs, the others on one), CartPole-v1,
  200,000 env steps, training seeds 0-4.

A preset is one or more :class:`Grid` rectangles; its chunks (one seed of one rectangle, :meth:`Preset.chunks`) are
what a campaign runs and commits at a time (``benchmarks/grid_campaign.sh``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from sb3_pg_ext.benchmark.cells import Cell

#: The package's four algorithms.
PACKAGE_ALGOS = ("reinforce", "ispg", "ppo_kl", "grpo")
#: The algorithms of SB3 and sb3-contrib they are compared with.
STOCK_ALGOS = ("ppo", "a2c", "sac", "trpo")
#: The README grid's env-step budget per env (also the budget at which ``benchmarks/tune.py compare`` reuses the
#: grid's cells).
GRID_BUDGETS: Mapping[str, int] = {
    "CartPole-v1": 100_000,
    "Acrobot-v1": 300_000,
    "Pendulum-v1": 100_000,
    "LunarLander-v3": 500_000,
}
#: The benchmark protocol's env-step budget per env: rl-zoo3's budget for PPO on that env, the same for every
#: algorithm (the ``protocol`` presets).
PROTOCOL_BUDGETS: Mapping[str, int] = {
    "CartPole-v1": 100_000,
    "Acrobot-v1": 1_000_000,
    "Pendulum-v1": 100_000,
    "LunarLander-v3": 1_000_000,
}
#: The protocol's training seeds: disjoint from every tuning seed (trial numbers from 0), retraining seed (100-104),
#: baseline seed (300-302) and test seed.
PROTOCOL_SEEDS = (200, 201, 202, 203, 204)
#: The hyperparameter files of the algorithms' constructor defaults (``<algo>.yml``), for the final-policy preset
#: and the protocol's defaults.
DEFAULTS_DIR = Path(__file__).resolve().parent / "defaults"
#: GRPO's branch-group entries (``group_start: branch``), for the ``protocol-grpo-branch`` preset.
GRPO_BRANCH_CONFIG = Path(__file__).resolve().parent / "branch" / "grpo.yml"


@dataclass(frozen=True)
class Grid:
    """
    One rectangle ``algos x envs x seeds`` of a preset.

    :param name: the rectangle's name in its chunks' names
    :param algos: rl-zoo3 algorithm names
    :param envs: gymnasium env ids
    :param seeds: training seeds
    :param budgets: env -> env-step budget (an env left out: its hyperparameter file's ``n_timesteps``)
    :param configs: algo -> hyperparameter file its cells read instead of the algorithm's (``--conf-file``)
    """

    name: str
    algos: tuple[str, ...]
    envs: tuple[str, ...]
    seeds: tuple[int, ...]
    budgets: Mapping[str, int] = field(default_factory=dict)
    configs: Mapping[str, str] = field(default_factory=dict)

    def cells(self, seeds: Sequence[int] | None = None) -> list[Cell]:
        """
        The rectangle's cells in :func:`~sb3_pg_ext.benchmark.cells.grid_cells`' order (seed by seed, then env by
        env, the algorithms alternating).

        :param seeds: only these of the rectangle's seeds (default: all)
        :return: the cells
        """
        wanted = frozenset(self.seeds if seeds is None else seeds)
        chosen = [seed for seed in self.seeds if seed in wanted]
        return [
            Cell(algo, env, seed, self.budgets.get(env), config=self.configs.get(algo))
            for seed in chosen
            for env in self.envs
            for algo in self.algos
        ]


@dataclass(frozen=True)
class Preset:
    """
    A named grid: one or more :class:`Grid` rectangles, run in order.

    :param name: the name of ``--preset``
    :param description: one line for ``python -m sb3_pg_ext.benchmark presets``
    :param store: the results store the docs report it from (relative to the repository root)
    :param grids: its rectangles
    """

    name: str
    description: str
    store: str
    grids: tuple[Grid, ...]

    def cells(self) -> list[Cell]:
        """Every cell of the preset, rectangle by rectangle."""
        return [cell for grid in self.grids for cell in grid.cells()]

    def chunks(self) -> list[str]:
        """The names of the preset's chunks, ``<grid>-<seed>``, in the order of :meth:`cells`."""
        return [f"{grid.name}-{seed}" for grid in self.grids for seed in grid.seeds]

    def chunk_cells(self, chunk: str) -> list[Cell]:
        """
        The cells of one chunk: one seed of one rectangle.

        :param chunk: a name of :meth:`chunks`
        :return: the cells
        :raises KeyError: naming the preset's chunks when ``chunk`` is not one of them
        """
        for grid in self.grids:
            for seed in grid.seeds:
                if chunk == f"{grid.name}-{seed}":
                    return grid.cells([seed])
        raise KeyError(f"preset {self.name!r} has no chunk {chunk!r}; its chunks: {' '.join(self.chunks())}")


#: The protocol's envs that train in minutes (run first) and those that train in an hour or more.
SHORT_ENVS = ("CartPole-v1", "Pendulum-v1")
LONG_ENVS = ("Acrobot-v1", "LunarLander-v3")
_DEFAULT_CONFIGS = {algo: str(DEFAULTS_DIR / f"{algo}.yml") for algo in PACKAGE_ALGOS}

PRESETS: dict[str, Preset] = {
    preset.name: preset
    for preset in (
        Preset(
            name="readme",
            description="the README's grid: 8 algorithms, CartPole-v1 Acrobot-v1 Pendulum-v1 on seeds 200-204, "
            "LunarLander-v3 on seeds 200-202",
            store="benchmarks/results/grid",
            grids=(
                Grid(
                    name="classic",
                    algos=PACKAGE_ALGOS + STOCK_ALGOS,
                    envs=("CartPole-v1", "Acrobot-v1", "Pendulum-v1"),
                    seeds=(200, 201, 202, 203, 204),
                    budgets=GRID_BUDGETS,
                ),
                Grid(
                    name="lunar",
                    algos=PACKAGE_ALGOS + STOCK_ALGOS,
                    envs=("LunarLander-v3",),
                    seeds=(200, 201, 202),
                    budgets=GRID_BUDGETS,
                ),
            ),
        ),
        Preset(
            name="protocol",
            description="the benchmark protocol: 8 algorithms with their entries, rl-zoo3's PPO budget per env, "
            "seeds 200-204 on CartPole-v1 Pendulum-v1 Acrobot-v1 LunarLander-v3",
            store="benchmarks/results/protocol",
            grids=(
                Grid("short", (*PACKAGE_ALGOS, "ppo", "a2c", "trpo"), SHORT_ENVS, PROTOCOL_SEEDS, PROTOCOL_BUDGETS),
                Grid("long", (*PACKAGE_ALGOS, "ppo", "a2c", "trpo"), LONG_ENVS, PROTOCOL_SEEDS, PROTOCOL_BUDGETS),
                Grid("sac", ("sac",), SHORT_ENVS + LONG_ENVS, PROTOCOL_SEEDS, PROTOCOL_BUDGETS),
            ),
        ),
        Preset(
            name="protocol-defaults",
            description="the protocol's cells of the 4 package algorithms with their constructor defaults",
            store="benchmarks/results/protocol_defaults",
            grids=(
                Grid("short", PACKAGE_ALGOS, SHORT_ENVS, PROTOCOL_SEEDS, PROTOCOL_BUDGETS, _DEFAULT_CONFIGS),
                Grid("long", PACKAGE_ALGOS, LONG_ENVS, PROTOCOL_SEEDS, PROTOCOL_BUDGETS, _DEFAULT_CONFIGS),
            ),
        ),
        Preset(
            name="protocol-grpo-branch",
            description="the protocol's cells of GRPO with branch groups (hand-set entries from Pendulum-v1)",
            store="benchmarks/results/protocol_grpo_branch",
            grids=(
                Grid("short", ("grpo",), SHORT_ENVS, PROTOCOL_SEEDS, PROTOCOL_BUDGETS, {"grpo": str(GRPO_BRANCH_CONFIG)}),
                Grid("long", ("grpo",), LONG_ENVS, PROTOCOL_SEEDS, PROTOCOL_BUDGETS, {"grpo": str(GRPO_BRANCH_CONFIG)}),
            ),
        ),
        Preset(
            name="final-policies",
            description="the final policies of the package's defaults: 4 algorithms, CartPole-v1, 200k steps, seeds 0-4",
            store="benchmarks/results/final_policies",
            grids=(
                Grid(
                    name="defaults",
                    algos=PACKAGE_ALGOS,
                    envs=("CartPole-v1",),
                    seeds=(0, 1, 2, 3, 4),
                    budgets={"CartPole-v1": 200_000},
                    configs=_DEFAULT_CONFIGS,
                ),
            ),
        ),
    )
}


def get_preset(name: str) -> Preset:
    """
    The preset ``name``.

    :param name: a key of :data:`PRESETS`
    :return: the preset
    :raises KeyError: naming the presets when there is none of that name
    """
    try:
        return PRESETS[name]
    except KeyError:
        raise KeyError(f"no preset {name!r}; presets: {', '.join(PRESETS)}") from None


__all__ = [
    "DEFAULTS_DIR",
    "GRID_BUDGETS",
    "GRPO_BRANCH_CONFIG",
    "LONG_ENVS",
    "PACKAGE_ALGOS",
    "PRESETS",
    "PROTOCOL_BUDGETS",
    "PROTOCOL_SEEDS",
    "SHORT_ENVS",
    "STOCK_ALGOS",
    "Grid",
    "Preset",
    "get_preset",
]
