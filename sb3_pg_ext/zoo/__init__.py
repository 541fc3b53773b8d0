"""
The rl-zoo3 launcher (``sb3-pg-zoo`` / ``python -m sb3_pg_ext.zoo``) and the Optuna samplers of the four
algorithms; see docs/zoo.md. This package imports the algorithms; nothing in the algorithms imports it.
"""

from sb3_pg_ext.zoo.aggregate import AGGREGATES, bootstrap_lower, interquartile_mean, pooled_mean, worst_seed
from sb3_pg_ext.zoo.cli import main
from sb3_pg_ext.zoo.exp_manager import PGExperimentManager, trial_seeds
from sb3_pg_ext.zoo.registry import ZOO_ALGOS, register
from sb3_pg_ext.zoo.samplers import HYPERPARAMS_CONVERTER, HYPERPARAMS_SAMPLER

__all__ = [
    "AGGREGATES",
    "HYPERPARAMS_CONVERTER",
    "HYPERPARAMS_SAMPLER",
    "ZOO_ALGOS",
    "PGExperimentManager",
    "bootstrap_lower",
    "interquartile_mean",
    "main",
    "pooled_mean",
    "register",
    "trial_seeds",
    "worst_seed",
]
