"""
ISPG's policies: an actor only (features extractor, MLP, action distribution), no critic; the shared actor-only
family of :mod:`sb3_pg_ext.common.policies`, built exactly like the actor half of SB3's ``ActorCriticPolicy``.
"""

from sb3_pg_ext.common.policies import ActorCnnPolicy, ActorPolicy, MultiInputActorPolicy

MlpPolicy = ActorPolicy
CnnPolicy = ActorCnnPolicy
MultiInputPolicy = MultiInputActorPolicy

__all__ = ["ActorCnnPolicy", "ActorPolicy", "CnnPolicy", "MlpPolicy", "MultiInputActorPolicy", "MultiInputPolicy"]
