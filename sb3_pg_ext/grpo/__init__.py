from sb3_pg_ext.grpo.grpo import GRPO, GroupStartError
from sb3_pg_ext.grpo.policies import CnnPolicy, MlpPolicy, MultiInputPolicy, TokenPolicy

__all__ = ["GRPO", "CnnPolicy", "GroupStartError", "MlpPolicy", "MultiInputPolicy", "TokenPolicy"]
