"""sb3-pg-ext: policy-gradient algorithms for Stable-Baselines3."""

from pathlib import Path

from sb3_pg_ext.reinforce import REINFORCE

__version__ = "0.1.0"

#: Folder of the rl-zoo3 hyperparameter files shipped with the package.
HYPERPARAMS_DIR = Path(__file__).resolve().parent / "hyperparams"

__all__ = ["HYPERPARAMS_DIR", "REINFORCE", "__version__"]
