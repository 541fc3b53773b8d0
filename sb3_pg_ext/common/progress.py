"""
The progress remaining of SB3's schedules, kept in [0, 1].

SB3 computes ``progress_remaining = 1 - num_timesteps / total_timesteps`` before each update. The package's
algorithms train on complete episodes (REINFORCE, ISPG), complete groups (GRPO) or complete rollouts (PPOKL), so
the last update of ``learn()`` can run past the budget, where that number is negative. SB3's own schedule classes
(``LinearSchedule``) stop at their end value there, but rl-zoo3's ``lin_<value>`` schedules
(``progress_remaining * value``) do not: the last update ran with a negative learning rate (and a negative clip
range), a gradient ascent that undid the training in one update (a GRPO run on CartPole-v1 went from 500 at its
last evaluation to 9 after ``learn()``). Past the budget, every schedule is now read at its end, progress 0.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from stable_baselines3.common.base_class import BaseAlgorithm

    _Base = BaseAlgorithm
else:
    _Base = object


class BoundedProgressMixin(_Base):
    """Put before the SB3 base class: ``class REINFORCE(BoundedProgressMixin, OnPolicyAlgorithm)``."""

    def _update_current_progress_remaining(self, num_timesteps: int, total_timesteps: int) -> None:
        super()._update_current_progress_remaining(num_timesteps, total_timesteps)
        self._current_progress_remaining = max(0.0, self._current_progress_remaining)


__all__ = ["BoundedProgressMixin"]
