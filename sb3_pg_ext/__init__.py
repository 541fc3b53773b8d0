"""sb3-pg-ext: policy-gradient algorithms for Stable-Baselines3."""

from pathlib import Path

import sb3_pg_ext.envs  # noqa: F401  (registers the sb3_pg_ext/ token-generation envs with gymnasium)
from sb3_pg_ext.grpo import GRPO, GroupStartError
from sb3_pg_ext.ispg import ISPG
from sb3_pg_ext.ppo_kl import PPOKL
from sb3_pg_ext.reinforce import REINFORCE

__version__ = "0.2.0"

#: Folder of the rl-zoo3 hyperparameter files shipped with the package.
HYPERPARAMS_DIR = Path(__file__).resolve().parent / "hyperparams"

__all__ = ["GRPO", "HYPERPARAMS_DIR", "ISPG", "PPOKL", "REINFORCE", "GroupStartError", "__version__"]
