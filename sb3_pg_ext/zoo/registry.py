"""The package's algorithms under their rl-zoo3 names, and :func:`register`, which adds them to rl-zoo3."""

from __future__ import annotations

from rl_zoo3 import hyperparams_opt
from rl_zoo3.utils import ALGOS
from stable_baselines3.common.base_class import BaseAlgorithm

from sb3_pg_ext import GRPO, ISPG, PPOKL, REINFORCE
from sb3_pg_ext.zoo.samplers import HYPERPARAMS_CONVERTER, HYPERPARAMS_SAMPLER

#: rl-zoo3 name -> class (``--algo reinforce`` ...).
ZOO_ALGOS: dict[str, type[BaseAlgorithm]] = {
    "reinforce": REINFORCE,
    "ispg": ISPG,
    "ppo_kl": PPOKL,
    "grpo": GRPO,
}


def register() -> None:
    """
    Add the four algorithms to ``rl_zoo3.ALGOS`` and their samplers and converters to
    ``rl_zoo3.hyperparams_opt.HYPERPARAMS_SAMPLER`` / ``HYPERPARAMS_CONVERTER``, in place: rl-zoo3's modules hold
    references to these same dicts (``from rl_zoo3.utils import ALGOS``), so only mutating them reaches
    ``train``, ``enjoy`` and the ``ExperimentManager``. Idempotent.
    """
    ALGOS.update(ZOO_ALGOS)
    hyperparams_opt.HYPERPARAMS_SAMPLER.update(HYPERPARAMS_SAMPLER)
    hyperparams_opt.HYPERPARAMS_CONVERTER.update(HYPERPARAMS_CONVERTER)


__all__ = ["ZOO_ALGOS", "register"]
