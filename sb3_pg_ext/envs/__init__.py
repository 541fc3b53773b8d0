"""
Token-generation environments, registered under the ``sb3_pg_ext/`` gymnasium namespace when
``sb3_pg_ext`` is imported:

- ``sb3_pg_ext/DigitReverse-v0``: reverse a string of 3-4 digits (11,000 distinct prompts);
- ``sb3_pg_ext/DigitAdd-v0``: add two numbers of 1-2 digits (10,100 distinct prompts).

Both take ``min_digits``, ``max_digits`` and ``reward_mode`` (``"partial"`` default, or ``"binary"``) through
``gym.make(..., **kwargs)``.
"""

import gymnasium as gym

from sb3_pg_ext.envs.token_tasks import (
    EOS,
    N_ACTIONS,
    N_TOKENS,
    PAD,
    PLUS,
    DigitAddEnv,
    DigitReverseEnv,
    DigitTaskEnv,
    grade,
    success_rate,
)

for _name, _entry_point in (("DigitReverse-v0", DigitReverseEnv), ("DigitAdd-v0", DigitAddEnv)):
    if f"sb3_pg_ext/{_name}" not in gym.registry:
        gym.register(id=f"sb3_pg_ext/{_name}", entry_point=f"sb3_pg_ext.envs.token_tasks:{_entry_point.__name__}")

__all__ = [
    "EOS",
    "N_ACTIONS",
    "N_TOKENS",
    "PAD",
    "PLUS",
    "DigitAddEnv",
    "DigitReverseEnv",
    "DigitTaskEnv",
    "grade",
    "success_rate",
]
