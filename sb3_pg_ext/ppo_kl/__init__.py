from sb3_pg_ext.ppo_kl.buffers import KLDictRolloutBuffer, KLRolloutBuffer
from sb3_pg_ext.ppo_kl.policies import CnnPolicy, MlpPolicy, MultiInputPolicy
from sb3_pg_ext.ppo_kl.ppo_kl import PPOKL

__all__ = ["PPOKL", "CnnPolicy", "KLDictRolloutBuffer", "KLRolloutBuffer", "MlpPolicy", "MultiInputPolicy"]
