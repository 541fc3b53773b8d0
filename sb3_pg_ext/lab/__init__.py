"""
The estimator lab: the bias and variance of every gradient-estimator option of REINFORCE, ISPG and GRPO, measured
through each algorithm's own collector and ``train()`` (``python -m sb3_pg_ext.lab``; docs/lab.md).
"""

from sb3_pg_ext.lab.gradients import GradientRecorder, read_gradient
from sb3_pg_ext.lab.run import LabRun

__all__ = ["GradientRecorder", "LabRun", "read_gradient"]
