"""
GRPO's policies: the shared actor-only family of :mod:`sb3_pg_ext.common.policies` (GRPO has no value function,
so its policies build none) and :class:`~sb3_pg_ext.common.token_policies.TokenPolicy` for the token tasks.

GRPO makes AdamW their default optimiser by passing it in ``policy_kwargs``.
"""

from sb3_pg_ext.common.policies import ActorCnnPolicy, ActorPolicy, MultiInputActorPolicy
from sb3_pg_ext.common.token_policies import TokenPolicy

MlpPolicy = ActorPolicy
CnnPolicy = ActorCnnPolicy
MultiInputPolicy = MultiInputActorPolicy

__all__ = [
    "ActorCnnPolicy",
    "ActorPolicy",
    "CnnPolicy",
    "MlpPolicy",
    "MultiInputActorPolicy",
    "MultiInputPolicy",
    "TokenPolicy",
]
