from sb3_pg_ext.ispg.ispg import ISPG
from sb3_pg_ext.ispg.policies import CnnPolicy, MlpPolicy, MultiInputPolicy

__all__ = ["ISPG", "CnnPolicy", "MlpPolicy", "MultiInputPolicy"]
