"""
Score normalisation of the benchmark report, in one place: :data:`SCORE_RANGES` maps an env id to its
``(random, solved)`` pair of returns, and a score ``s`` on that env is normalised as
``(s - random) / (solved - random)`` (0: a uniformly random policy, 1: solved).

Every random score is measured, one convention for every env: :func:`random_score` (uniformly random actions, 100
episodes, seed 0) to four significant digits, i.e. what the command

    python -m sb3_pg_ext.benchmark.normalisation ENV_ID

prints for ``ENV_ID`` (tests/test_benchmark.py checks each entry against it).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import gymnasium as gym
import numpy as np

#: env id -> (random score, solved / reference score): the one normalisation of the report (docs/benchmark.md); every
#: random score is :func:`random_score`'s measurement to four significant digits.
SCORE_RANGES: dict[str, tuple[float, float]] = {
    # solved: 500, the maximum return (the 500-step time limit), above gymnasium's reward_threshold of 475
    "CartPole-v1": (21.61, 500.0),
    # random: nearly the time limit without a swing-up; solved: -100, gymnasium's reward_threshold
    "Acrobot-v1": (-499.9, -100.0),
    # solved: -150, about what a tuned SAC or TD3 reaches (rl-zoo3's benchmark table); gymnasium gives Pendulum no
    # reward_threshold
    "Pendulum-v1": (-1234.0, -150.0),
    # solved: 200, gymnasium's reward_threshold
    "LunarLander-v3": (-192.5, 200.0),
    # random: the action cost of uniform actions over the 999-step limit, the flag never reached; solved: 90,
    # gymnasium's reward_threshold
    "MountainCarContinuous-v0": (-33.25, 90.0),
    # solved: 200, gymnasium's reward_threshold
    "LunarLanderContinuous-v3": (-199.2, 200.0),
    # the package's token tasks (sb3_pg_ext.envs, default "partial" reward: the fraction of the answer's positions
    # right); solved: 1.0, an exact answer to every prompt
    "sb3_pg_ext/DigitReverse-v0": (0.099, 1.0),
    "sb3_pg_ext/DigitAdd-v0": (0.0975, 1.0),
}


def score_range(env: str) -> tuple[float, float]:
    """
    The ``(random, solved)`` scores of ``env``.

    :param env: a gymnasium env id
    :return: the pair from :data:`SCORE_RANGES`
    :raises ValueError: when :data:`SCORE_RANGES` has no entry for ``env``
    """
    if env not in SCORE_RANGES:
        raise ValueError(f"no normalisation for env {env!r}; known envs: {', '.join(sorted(SCORE_RANGES))}")
    return SCORE_RANGES[env]


def normalise(env: str, scores: float | Sequence[float] | np.ndarray) -> np.ndarray:
    """
    Normalised scores on ``env``: ``(score - random) / (solved - random)``.

    :param env: a gymnasium env id with an entry in :data:`SCORE_RANGES`
    :param scores: one return or an array of returns on ``env``
    :return: the normalised scores, as a float64 array of the shape of ``scores``
    """
    random, solved = score_range(env)
    return (np.asarray(scores, dtype=np.float64) - random) / (solved - random)


def random_score(env_id: str, n_episodes: int = 100, seed: int = 0) -> float:
    """
    The mean return of a uniformly random policy: how the random scores of :data:`SCORE_RANGES` were measured.

    :param env_id: a gymnasium env id (the package's token tasks are registered on import of ``sb3_pg_ext``)
    :param n_episodes: episodes to average over
    :param seed: seed of the env (first reset) and of the action space
    :return: the mean undiscounted return over ``n_episodes`` episodes
    """
    if n_episodes < 1:
        raise ValueError(f"n_episodes must be at least 1; got {n_episodes}")
    import sb3_pg_ext.envs  # noqa: F401  (registers the token tasks)

    env = gym.make(env_id)
    env.action_space.seed(seed)
    returns = []
    try:
        env.reset(seed=seed)
        for _ in range(n_episodes):
            total, done = 0.0, False
            while not done:
                _, reward, terminated, truncated, _ = env.step(env.action_space.sample())
                total += float(reward)
                done = terminated or truncated
            returns.append(total)
            env.reset()
    finally:
        env.close()
    return float(np.mean(returns))


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m sb3_pg_ext.benchmark.normalisation ENV_ID [ENV_ID ...]``: print each env's random score."""
    env_ids = list(sys.argv[1:] if argv is None else argv)
    if not env_ids:
        print("usage: python -m sb3_pg_ext.benchmark.normalisation ENV_ID [ENV_ID ...]", file=sys.stderr)
        return 2
    for env_id in env_ids:
        print(f"{env_id}: {random_score(env_id):.4g}")
    return 0


__all__ = ["SCORE_RANGES", "main", "normalise", "random_score", "score_range"]

if __name__ == "__main__":
    raise SystemExit(main())
