"""
Env snapshots: save the state of one env of a VecEnv and put it back later, so that an algorithm can play several
continuations from a state the policy visited mid-episode (TRPO's vine rollouts, VinePPO, GRPO's branch groups).

``snapshot(venv, i)`` returns a picklable :class:`EnvSnapshot` of env ``i``; ``restore(venv, i, snapshot)`` puts it
into env ``i`` (the same env or another env of the same kind) and returns the observation the VecEnv stack would
return there, with the number of env steps the restore played (non-zero only for the replay fallback; a caller
counts them into its budget). Every restore is verified: the restored observation must equal the one recorded at
snapshot time, else :class:`SnapshotError` names the env and what differed. An env with no known implementation
is refused at snapshot time with a :class:`SnapshotError` naming it and listing :data:`SUPPORTED_FAMILIES`.

What a snapshot holds, per family (chosen by inspecting ``env.unwrapped``):

- ``"classic_control"`` (CartPole, Acrobot, Pendulum, MountainCar, MountainCarContinuous; the gymnasium classes
  themselves, not subclasses): a copy of the env's ``state`` plus the other attributes that change what a step
  does (CartPole's ``steps_beyond_terminated``, Pendulum's ``last_u``) and the env's random generator state.
- ``"mujoco"`` (any gymnasium ``MujocoEnv``): MuJoCo's integration state (``mjSTATE_INTEGRATION``: time, qpos,
  qvel, act, warm start, controls, applied forces, mocap), put back through the env's ``set_state``; the derived
  quantities the gymnasium envs read between steps (body positions, contact forces, ...), copied as they were after
  the last step, so observations and rewards match exactly; and the random generator state.
- ``"token"`` (``sb3_pg_ext/DigitReverse-v0``, ``sb3_pg_ext/DigitAdd-v0``): the prompt, the target, the answer
  so far and the random generator state.
- ``"replay"`` (any env that is deterministic given its reset seed, e.g. Box2D's ``LunarLander-v3``; needs
  :class:`SnapshotWrapper`, which records the episode's reset seed and the actions played since): the reset seed,
  the reset options and the actions; a restore resets with that seed and replays the actions. Box2D's
  ``BipedalWalker`` and ``CarRacing`` are refused: they reuse their Box2D world across resets, so an episode depends
  on the ones before it.

Around the env, a snapshot also holds the state of the wrappers that have some: the ``TimeLimit``'s step count,
``OrderEnforcing``'s reset flag, SB3 ``Monitor``'s current-episode rewards (so the return a Monitor logs for an
episode that ends after a restore is the restored episode's: its steps before the snapshot plus those after the
restore; its history of finished episodes and its step total are a log of what was played and are not rewound),
and, at the VecEnv level, ``VecMonitor``'s current-episode return and length in the same way. Wrappers known to be
stateless (``PassiveEnvChecker``, the transform/clip/rescale wrappers of gymnasium) are passed through; any other
wrapper is refused at snapshot time, since its state is unknown.

``VecNormalize``'s running statistics (and its running discounted return) are not env state: a restore leaves them
alone. The observation a restore verifies is the raw one; the one it returns is normalised with the current
statistics, without updating them, as the next ``step`` would return it (and ``get_original_obs()`` returns the raw
one for the restored env).

``DummyVecEnv`` needs nothing more. ``SubprocVecEnv`` needs :class:`SnapshotWrapper` as the outermost wrapper of
each env (e.g. ``make_vec_env(..., wrapper_class=SnapshotWrapper)``): the snapshot and the restore then run in the
worker process through ``env_method``.

This module imports SB3, gymnasium and numpy only (and ``mujoco``, lazily, for MuJoCo envs).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import gymnasium as gym
import numpy as np
from gymnasium import wrappers as gym_wrappers
from gymnasium.envs.classic_control import (
    AcrobotEnv,
    CartPoleEnv,
    Continuous_MountainCarEnv,
    MountainCarEnv,
    PendulumEnv,
)
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.vec_env import (
    DummyVecEnv,
    VecCheckNan,
    VecEnv,
    VecEnvWrapper,
    VecExtractDictObs,
    VecMonitor,
    VecNormalize,
    VecTransposeImage,
)

#: What :func:`snapshot` can save, for error messages and the docs.
SUPPORTED_FAMILIES = (
    "classic control (CartPole-v1, Acrobot-v1, Pendulum-v1, MountainCar-v0, MountainCarContinuous-v0)",
    "MuJoCo (any gymnasium MujocoEnv, e.g. HalfCheetah-v5, Ant-v5)",
    "token envs (sb3_pg_ext/DigitReverse-v0, sb3_pg_ext/DigitAdd-v0)",
    "seed-and-replay for any env that is deterministic given its reset seed, wrapped in SnapshotWrapper "
    "(e.g. Box2D's LunarLander-v3)",
)

#: Wrappers whose step depends on nothing but their arguments: a snapshot passes through them.
STATELESS_WRAPPERS: tuple[type[gym.Wrapper], ...] = (
    gym_wrappers.PassiveEnvChecker,
    gym_wrappers.ClipAction,
    gym_wrappers.RescaleAction,
    gym_wrappers.TransformAction,
    gym_wrappers.DiscretizeAction,
    gym_wrappers.TransformObservation,
    gym_wrappers.FilterObservation,
    gym_wrappers.FlattenObservation,
    gym_wrappers.GrayscaleObservation,
    gym_wrappers.ResizeObservation,
    gym_wrappers.ReshapeObservation,
    gym_wrappers.RescaleObservation,
    gym_wrappers.DtypeObservation,
    gym_wrappers.DiscretizeObservation,
    gym_wrappers.TransformReward,
    gym_wrappers.ClipReward,
)

#: VecEnv wrappers a snapshot passes through (VecNormalize: its statistics are not env state; VecMonitor: see above).
SUPPORTED_VEC_WRAPPERS: tuple[type[VecEnvWrapper], ...] = (
    VecNormalize,
    VecMonitor,
    VecTransposeImage,
    VecExtractDictObs,
    VecCheckNan,
)

CLASSIC_CONTROL = "classic_control"
MUJOCO = "mujoco"
TOKEN = "token"
REPLAY = "replay"


class SnapshotError(RuntimeError):
    """An env that cannot be snapshotted, or a restore that did not reproduce the recorded observation."""


@dataclass(frozen=True)
class EnvSnapshot:
    """
    The saved state of one env (picklable: numpy arrays, lists and dicts only).

    :param env_id: the env's id (its spec's id, else its class name), checked at restore
    :param family: ``"classic_control"``, ``"mujoco"``, ``"token"`` or ``"replay"``
    :param state: the family's state (see the module docstring)
    :param layers: one ``(wrapper class name, state or None)`` per gym wrapper, outermost first: the stack a
        restore expects, and the state of the wrappers that have some
    :param observation: the observation recorded at snapshot time, at the level a restore verifies: the unwrapped
        env's for the direct families, the observation below :class:`SnapshotWrapper` for ``"replay"``
    :param vec_layers: one ``(VecEnv wrapper class name, state or None)`` per VecEnv wrapper, outermost first
    """

    env_id: str
    family: str
    state: dict[str, Any]
    layers: tuple[tuple[str, dict[str, Any] | None], ...]
    observation: Any
    vec_layers: tuple[tuple[str, dict[str, Any] | None], ...] = field(default=())

    @property
    def replay_steps(self) -> int:
        """Env steps a restore of this snapshot plays (the recorded actions for ``"replay"``, else 0)."""
        return len(self.state["actions"]) if self.family == REPLAY else 0


class Restored(NamedTuple):
    """What :func:`restore` returns: the observation the VecEnv stack would return for the restored env, and the
    number of env steps the restore played (the replay fallback's; 0 for the other families)."""

    observation: Any
    replay_steps: int


# -- observations ---------------------------------------------------------------------------------------------------


def observation_difference(expected: Any, actual: Any, where: str = "observation") -> str | None:
    """
    The first difference between two observations (arrays compared exactly, dtype and shape included; dicts and
    tuples entry by entry), or None when they are equal.

    :param expected: the recorded observation
    :param actual: the restored observation
    :param where: the name of the part compared, for the message
    :return: a description of the first difference, or None
    """
    if isinstance(expected, dict) or isinstance(actual, dict):
        if not (isinstance(expected, dict) and isinstance(actual, dict)) or set(expected) != set(actual):
            return f"{where}: keys {sorted(expected) if isinstance(expected, dict) else type(expected).__name__} " + (
                f"against {sorted(actual) if isinstance(actual, dict) else type(actual).__name__}"
            )
        for key in expected:
            diff = observation_difference(expected[key], actual[key], f"{where}[{key!r}]")
            if diff is not None:
                return diff
        return None
    if isinstance(expected, tuple) or isinstance(actual, tuple):
        if not (isinstance(expected, tuple) and isinstance(actual, tuple)) or len(expected) != len(actual):
            return f"{where}: {expected!r} against {actual!r}"
        for k, (a, b) in enumerate(zip(expected, actual, strict=True)):
            diff = observation_difference(a, b, f"{where}[{k}]")
            if diff is not None:
                return diff
        return None
    a, b = np.asarray(expected), np.asarray(actual)
    if a.shape != b.shape or a.dtype != b.dtype:
        return f"{where}: shape/dtype {a.shape} {a.dtype} recorded, {b.shape} {b.dtype} restored"
    equal = np.array_equal(a, b, equal_nan=True) if a.dtype.kind in "fc" else np.array_equal(a, b)
    if equal:
        return None
    if a.ndim == 0:
        return f"{where}: {a.item()!r} recorded, {b.item()!r} restored"
    index = tuple(int(k) for k in np.argwhere(a != b)[0])
    return f"{where}{list(index)}: {a[index]!r} recorded, {b[index]!r} restored ({int(np.sum(a != b))} entries differ)"


def _copy_observation(obs: Any) -> Any:
    return copy.deepcopy(obs)


def _batch(obs: Any) -> Any:
    if isinstance(obs, dict):
        return {key: np.asarray(value)[None] for key, value in obs.items()}
    return np.asarray(obs)[None]


def _unbatch(obs: Any) -> Any:
    if isinstance(obs, dict):
        return {key: value[0] for key, value in obs.items()}
    return obs[0]


# -- random generators ----------------------------------------------------------------------------------------------


def _generator_state(env: gym.Env) -> dict[str, Any]:
    return {
        "bit_generator": copy.deepcopy(env.np_random.bit_generator.state),
        "seed": getattr(env, "_np_random_seed", None),
    }


def _set_generator_state(env: gym.Env, saved: dict[str, Any]) -> None:
    state = copy.deepcopy(saved["bit_generator"])
    generator = env.np_random
    if type(generator.bit_generator).__name__ == state["bit_generator"]:
        generator.bit_generator.state = state
    else:
        bit_generator = getattr(np.random, state["bit_generator"])()
        bit_generator.state = state
        env.np_random = np.random.Generator(bit_generator)
    env._np_random_seed = saved["seed"]


# -- the families ---------------------------------------------------------------------------------------------------


class _Family(NamedTuple):
    name: str
    save: Callable[[Any], dict[str, Any]]
    load: Callable[[Any, dict[str, Any]], None]
    observe: Callable[[Any], Any]


def _classic_family(extra: tuple[str, ...], observe: Callable[[Any], Any]) -> _Family:
    def save(env: Any) -> dict[str, Any]:
        if env.state is None:
            raise SnapshotError("the env has no state yet: reset it before taking a snapshot")
        return {
            "state": copy.deepcopy(env.state),
            "extra": {name: copy.deepcopy(getattr(env, name)) for name in extra},
            "rng": _generator_state(env),
        }

    def load(env: Any, state: dict[str, Any]) -> None:
        env.state = copy.deepcopy(state["state"])
        for name, value in state["extra"].items():
            setattr(env, name, copy.deepcopy(value))
        _set_generator_state(env, state["rng"])

    return _Family(CLASSIC_CONTROL, save, load, observe)


def _state_as_float32(env: Any) -> np.ndarray:
    return np.array(env.state, dtype=np.float32)


#: Exact classes (a subclass may add state): the attributes besides ``state`` that a step reads or writes.
_CLASSIC_CONTROL: dict[type, _Family] = {
    CartPoleEnv: _classic_family(("steps_beyond_terminated",), _state_as_float32),
    AcrobotEnv: _classic_family((), lambda env: env._get_ob()),
    PendulumEnv: _classic_family(("last_u",), lambda env: env._get_obs()),
    MountainCarEnv: _classic_family((), _state_as_float32),
    Continuous_MountainCarEnv: _classic_family((), _state_as_float32),
}

#: MjData fields derived from the state that gymnasium's MuJoCo envs read between steps (observations, the position
#: before a step in the rewards): after a step they hold the values of the last substep's forward pass, which a
#: forward pass at the restored state would not reproduce, so they are copied as they were.
_MUJOCO_DERIVED = (
    "xpos",
    "xquat",
    "xipos",
    "ximat",
    "xmat",
    "site_xpos",
    "subtree_com",
    "cinert",
    "cvel",
    "cfrc_ext",
    "cfrc_int",
    "qfrc_actuator",
    "qfrc_constraint",
    "ten_length",
    "ten_velocity",
    "actuator_length",
    "actuator_velocity",
    "actuator_force",
    "sensordata",
)


def _mujoco_save(env: Any) -> dict[str, Any]:
    import mujoco

    spec = int(mujoco.mjtState.mjSTATE_INTEGRATION)
    integration = np.empty(mujoco.mj_stateSize(env.model, spec), dtype=np.float64)
    mujoco.mj_getState(env.model, env.data, integration, spec)
    derived = {name: np.array(getattr(env.data, name), copy=True) for name in _MUJOCO_DERIVED if hasattr(env.data, name)}
    return {
        "integration": integration,
        "qpos": env.data.qpos.copy(),
        "qvel": env.data.qvel.copy(),
        "derived": derived,
        "rng": _generator_state(env),
    }


def _mujoco_load(env: Any, state: dict[str, Any]) -> None:
    import mujoco

    env.set_state(state["qpos"], state["qvel"])  # qpos, qvel and a forward pass
    # the rest of the integration state (time, act, warm start, controls, applied forces, ...): set after the forward
    # pass, which must not change it
    mujoco.mj_setState(env.model, env.data, state["integration"], int(mujoco.mjtState.mjSTATE_INTEGRATION))
    for name, value in state["derived"].items():
        getattr(env.data, name)[...] = value
    _set_generator_state(env, state["rng"])


def _token_save(env: Any) -> dict[str, Any]:
    if not env._prompt:
        raise SnapshotError("the env has no prompt yet: reset it before taking a snapshot")
    return {
        "prompt": list(env._prompt),
        "target": list(env._target),
        "answer": list(env._answer),
        "version": env._version,
        "printed_version": env._printed_version,
        "rng": _generator_state(env),
    }


def _token_load(env: Any, state: dict[str, Any]) -> None:
    env._prompt = list(state["prompt"])
    env._target = list(state["target"])
    env._answer = list(state["answer"])
    env._version = state["version"]
    env._printed_version = state["printed_version"]
    _set_generator_state(env, state["rng"])


_MUJOCO_FAMILY = _Family(MUJOCO, _mujoco_save, _mujoco_load, lambda env: env._get_obs())
_TOKEN_FAMILY = _Family(TOKEN, _token_save, _token_load, lambda env: env._observation())


def _has_base_class(env: gym.Env, module_prefix: str, name: str) -> bool:
    return any(cls.__name__ == name and cls.__module__.startswith(module_prefix) for cls in type(env).__mro__)


def _direct_family(env: gym.Env) -> _Family | None:
    """The family that saves ``env`` (an unwrapped env) directly, or None."""
    family = _CLASSIC_CONTROL.get(type(env))
    if family is not None:
        return family
    # by class name: importing gymnasium's MuJoCo module needs mujoco, and common/ does not import sb3_pg_ext.envs
    if _has_base_class(env, "gymnasium.envs.mujoco", "MujocoEnv"):
        return _MUJOCO_FAMILY
    if _has_base_class(env, "sb3_pg_ext.envs.token_tasks", "DigitTaskEnv"):
        return _TOKEN_FAMILY
    return None


#: Envs that the replay cannot restore: not deterministic given their reset seed and actions.
_NOT_REPLAYABLE = {
    ("gymnasium.envs.box2d.bipedal_walker", "BipedalWalker"): "it reuses its Box2D world across resets",
    ("gymnasium.envs.box2d.car_racing", "CarRacing"): "it reuses its Box2D world across resets",
}


def _not_replayable(env: gym.Env) -> str | None:
    """Why ``env`` (an unwrapped env) cannot be replayed from its reset seed, or None."""
    for cls in type(env).__mro__:
        why = _NOT_REPLAYABLE.get((cls.__module__, cls.__name__))
        if why is not None:
            return f"{why}, so an episode depends on the episodes before it, not only on its reset seed"
    return None


def env_id(env: gym.Env) -> str:
    """
    The env's id, for messages: its spec's id, else the unwrapped env's class name.

    :param env: an env, wrapped or not
    """
    spec = env.spec if env.spec is not None else env.unwrapped.spec
    return spec.id if spec is not None else type(env.unwrapped).__name__


def _unsupported(name: str, why: str) -> SnapshotError:
    families = "; ".join(SUPPORTED_FAMILIES)
    return SnapshotError(f"Cannot snapshot env {name}: {why}. Supported: {families}.")


# -- the recorder ---------------------------------------------------------------------------------------------------


class SnapshotWrapper(gym.Wrapper):
    """
    Makes an env snapshottable from outside its process, and records what the replay fallback needs.

    As the outermost wrapper of each env (``make_vec_env(..., wrapper_class=SnapshotWrapper)``), it gives
    ``SubprocVecEnv`` the two methods :func:`snapshot` and :func:`restore` call through ``env_method``. For an env
    with no direct implementation (see :data:`SUPPORTED_FAMILIES`), or with ``mode="replay"``, it also records the
    reset seed and options of the current episode and the actions played since, so a restore can reset with that
    seed and replay them. So that every episode is reproducible from a seed, a reset without a seed then gets one
    drawn from the wrapper's own generator, which is seeded by the last explicit reset seed (from entropy before the
    first): the env's random stream differs from the unwrapped env's, its distribution does not. The replay needs
    the env to be deterministic given its reset seed and actions, wrappers below this one included.

    :param env: the env to wrap
    :param mode: ``"auto"`` (default: save the env's state directly where a family knows how, else record for the
        replay) or ``"replay"`` (always record and replay)
    """

    def __init__(self, env: gym.Env, mode: str = "auto"):
        super().__init__(env)
        if mode not in ("auto", "replay"):
            raise ValueError(f"`mode` must be 'auto' or 'replay'; got {mode!r}")
        self.mode = mode
        self.records = mode == "replay" or _direct_family(env.unwrapped) is None
        self._seed_rng: np.random.Generator | None = None
        self._episode_seed: int | None = None
        self._episode_options: dict[str, Any] | None = None
        self._actions: list[Any] = []
        self._last_obs: Any = None

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Any, dict[str, Any]]:
        if not self.records:
            return self.env.reset(seed=seed, options=options)
        if seed is None:
            if self._seed_rng is None:
                self._seed_rng = np.random.default_rng()
            seed = int(self._seed_rng.integers(0, 2**31 - 1))
        else:
            self._seed_rng = np.random.default_rng(seed)
        obs, info = self.env.reset(seed=seed, options=options)
        self._episode_seed = seed
        self._episode_options = copy.deepcopy(options)
        self._actions = []
        self._last_obs = _copy_observation(obs)
        return obs, info

    def step(self, action: Any) -> tuple[Any, Any, bool, bool, dict[str, Any]]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        if self.records:
            self._actions.append(copy.deepcopy(action))
            self._last_obs = _copy_observation(obs)
        return obs, reward, terminated, truncated, info

    def recorder_state(self) -> dict[str, Any]:
        """The wrapper's own state: the recorded episode and the seed generator."""
        return {
            "seed_rng": None if self._seed_rng is None else copy.deepcopy(self._seed_rng.bit_generator.state),
            "episode_seed": self._episode_seed,
            "episode_options": copy.deepcopy(self._episode_options),
            "actions": list(self._actions),
            "last_obs": _copy_observation(self._last_obs),
        }

    def set_recorder_state(self, state: dict[str, Any]) -> None:
        """Put back what :meth:`recorder_state` returned."""
        if state["seed_rng"] is None:
            self._seed_rng = None
        else:
            self._seed_rng = np.random.default_rng()
            self._seed_rng.bit_generator.state = copy.deepcopy(state["seed_rng"])
        self._episode_seed = state["episode_seed"]
        self._episode_options = copy.deepcopy(state["episode_options"])
        self._actions = list(state["actions"])
        self._last_obs = _copy_observation(state["last_obs"])

    def replay(self, state: dict[str, Any]) -> tuple[Any, int]:
        """Reset the env below with the recorded seed and replay the recorded actions; return the last observation
        and the number of steps played."""
        obs, _ = self.env.reset(seed=state["episode_seed"], options=copy.deepcopy(state["episode_options"]))
        for action in state["actions"]:
            obs, *_ = self.env.step(copy.deepcopy(action))
        return obs, len(state["actions"])

    # the two methods SubprocVecEnv's workers call through env_method: errors travel back as values, since an
    # exception raised in a worker would end it
    def snapshot_state(self) -> EnvSnapshot | SnapshotError:
        """:func:`snapshot` of this env (run where the env lives); an error is returned, not raised."""
        try:
            return snapshot_env(self)
        except SnapshotError as error:
            return error
        except Exception as error:
            return SnapshotError(f"Snapshot of env {env_id(self)} failed: {type(error).__name__}: {error}")

    def restore_state(self, snapshot: EnvSnapshot) -> tuple[Any, int] | SnapshotError:
        """:func:`restore_env` on this env (run where the env lives); an error is returned, not raised."""
        try:
            return restore_env(self, snapshot)
        except SnapshotError as error:
            return error
        except Exception as error:
            return SnapshotError(f"Restore of env {env_id(self)} failed: {type(error).__name__}: {error}")


# -- one gym env ----------------------------------------------------------------------------------------------------


def _layers(env: gym.Env) -> list[gym.Wrapper]:
    """The wrappers of ``env``, outermost first."""
    layers: list[gym.Wrapper] = []
    while isinstance(env, gym.Wrapper):
        layers.append(env)
        env = env.env
    return layers


def _layer_state(layer: gym.Wrapper) -> dict[str, Any] | None:
    if isinstance(layer, gym_wrappers.TimeLimit):
        return {"elapsed_steps": layer._elapsed_steps}
    if isinstance(layer, gym_wrappers.OrderEnforcing):
        return {"has_reset": layer._has_reset}
    if isinstance(layer, Monitor):
        return {"rewards": list(layer.rewards), "needs_reset": layer.needs_reset}
    if isinstance(layer, SnapshotWrapper):
        return layer.recorder_state()
    return None


def _set_layer_state(layer: gym.Wrapper, state: dict[str, Any] | None) -> None:
    if state is None:
        return
    if isinstance(layer, gym_wrappers.TimeLimit):
        layer._elapsed_steps = state["elapsed_steps"]
    elif isinstance(layer, gym_wrappers.OrderEnforcing):
        layer._has_reset = state["has_reset"]
    elif isinstance(layer, Monitor):
        layer.rewards = list(state["rewards"])
        layer.needs_reset = state["needs_reset"]
    elif isinstance(layer, SnapshotWrapper):
        layer.set_recorder_state(state)


def _is_known(layer: gym.Wrapper) -> bool:
    return type(layer) in STATELESS_WRAPPERS or isinstance(
        layer, (gym_wrappers.TimeLimit, gym_wrappers.OrderEnforcing, Monitor, SnapshotWrapper)
    )


def _plan(env: gym.Env) -> tuple[_Family | None, int]:
    """The family saving ``env`` directly (None: replay) and how many of its layers a snapshot saves itself (all of
    them for a direct family; those above the recorder for the replay). Raises when ``env`` cannot be saved."""
    layers = _layers(env)
    name = env_id(env)
    recorders = [k for k, layer in enumerate(layers) if isinstance(layer, SnapshotWrapper) and layer.records]
    family = None if recorders else _direct_family(env.unwrapped)
    if family is None and not recorders:
        raise _unsupported(
            name, f"no snapshot implementation for {type(env.unwrapped).__name__} and no SnapshotWrapper recording it"
        )
    if family is None and _not_replayable(env.unwrapped) is not None:
        raise _unsupported(name, f"the replay cannot restore it: {_not_replayable(env.unwrapped)}")
    n_saved = len(layers) if family is not None else recorders[0]
    unknown = [type(layer).__name__ for layer in layers[:n_saved] if not _is_known(layer)]
    if unknown:
        hint = (
            " (if their state depends on the current episode only, wrap them in SnapshotWrapper(env, mode='replay') "
            "to rebuild it by replay)"
        )
        raise _unsupported(name, f"wrappers with unknown state: {', '.join(unknown)}{hint}")
    return family, n_saved


def snapshot_env(env: gym.Env) -> EnvSnapshot:
    """
    Snapshot of a gym env (wrappers included), in this process.

    :param env: the env, as a VecEnv holds it
    :return: its snapshot
    """
    family, n_saved = _plan(env)
    layers = _layers(env)
    saved_layers = tuple(
        (type(layer).__name__, _layer_state(layer) if k < n_saved else None) for k, layer in enumerate(layers)
    )
    if family is not None:
        if any(isinstance(layer, gym_wrappers.OrderEnforcing) and not layer._has_reset for layer in layers):
            raise SnapshotError(f"Cannot snapshot env {env_id(env)}: it was not reset yet")
        state = family.save(env.unwrapped)
        observation = _copy_observation(family.observe(env.unwrapped))
        return EnvSnapshot(env_id(env), family.name, state, saved_layers, observation)
    recorder = layers[n_saved]
    assert isinstance(recorder, SnapshotWrapper)
    if recorder._episode_seed is None:
        raise SnapshotError(f"Cannot snapshot env {env_id(env)}: it was not reset since SnapshotWrapper wraps it")
    state = recorder.recorder_state()
    return EnvSnapshot(env_id(env), REPLAY, state, saved_layers, _copy_observation(recorder._last_obs))


def restore_env(env: gym.Env, snapshot: EnvSnapshot) -> tuple[Any, int]:
    """
    Restore a gym env (wrappers included) in this process, and verify it.

    :param env: the env, as a VecEnv holds it
    :param snapshot: a snapshot of an env of the same id and wrapper stack
    :return: the env's observation after the restore, as its outermost wrapper would return it, and the number of
        env steps the restore played (the replay's)
    :raises SnapshotError: when the snapshot does not fit the env, or the restored observation is not the recorded one
    """
    name = env_id(env)
    layers = _layers(env)
    names = tuple(type(layer).__name__ for layer in layers)
    if snapshot.env_id != name or tuple(n for n, _ in snapshot.layers) != names:
        raise SnapshotError(
            f"Cannot restore env {name} (wrappers {list(names)}) from a snapshot of env {snapshot.env_id} "
            f"(wrappers {[n for n, _ in snapshot.layers]})"
        )
    family, n_saved = _plan(env)
    if (family.name if family is not None else REPLAY) != snapshot.family:
        raise SnapshotError(f"Cannot restore env {name} from a snapshot of family {snapshot.family!r}")
    replay_steps = 0
    if family is not None:
        family.load(env.unwrapped, snapshot.state)
        observation = family.observe(env.unwrapped)
    else:
        recorder = layers[n_saved]
        assert isinstance(recorder, SnapshotWrapper)
        observation, replay_steps = recorder.replay(snapshot.state)
        recorder.set_recorder_state(snapshot.state)
    for layer, (_, state) in zip(layers[:n_saved], snapshot.layers[:n_saved], strict=True):
        _set_layer_state(layer, state)
    diff = observation_difference(snapshot.observation, observation)
    if diff is not None:
        how = f"replaying {replay_steps} actions from reset seed {snapshot.state['episode_seed']}" if family is None else ""
        raise SnapshotError(
            f"Restoring env {name} ({snapshot.family}{', ' + how if how else ''}) did not reproduce the recorded "
            f"observation: {diff}"
        )
    # the wrappers above the verified level transform the observation as a step would
    for layer in reversed(layers[:n_saved]):
        if isinstance(layer, gym.ObservationWrapper):
            observation = layer.observation(observation)
    return observation, replay_steps


# -- VecEnvs --------------------------------------------------------------------------------------------------------


def _vec_layers(venv: VecEnv) -> tuple[list[VecEnvWrapper], VecEnv]:
    wrappers = []
    while isinstance(venv, VecEnvWrapper):
        wrappers.append(venv)
        venv = venv.venv
    return wrappers, venv


def _check_vec_wrappers(wrappers: Sequence[VecEnvWrapper]) -> None:
    unknown = [type(w).__name__ for w in wrappers if not isinstance(w, SUPPORTED_VEC_WRAPPERS)]
    if unknown:
        supported = ", ".join(cls.__name__ for cls in SUPPORTED_VEC_WRAPPERS)
        raise SnapshotError(f"Cannot snapshot through VecEnv wrappers {', '.join(unknown)}: supported are {supported}")


def _check_index(venv: VecEnv, env_index: int) -> None:
    if not 0 <= env_index < venv.num_envs:
        raise IndexError(f"env_index {env_index} out of range for a VecEnv of {venv.num_envs} envs")


def snapshot(venv: VecEnv, env_index: int) -> EnvSnapshot:
    """
    Save the state of env ``env_index`` of ``venv`` (see the module docstring for what is saved).

    :param venv: a ``DummyVecEnv`` or ``SubprocVecEnv`` (the latter with :class:`SnapshotWrapper` outermost),
        possibly wrapped in ``VecNormalize``, ``VecMonitor``, ``VecTransposeImage``, ``VecExtractDictObs`` or
        ``VecCheckNan``
    :param env_index: which env
    :return: a picklable snapshot
    :raises SnapshotError: naming the env when it cannot be saved
    """
    _check_index(venv, env_index)
    wrappers, base = _vec_layers(venv)
    _check_vec_wrappers(wrappers)
    if isinstance(base, DummyVecEnv):
        saved = snapshot_env(base.envs[env_index])
    else:
        if not base.env_method("has_wrapper_attr", "snapshot_state", indices=[env_index])[0]:
            name = base.get_attr("spec", indices=[env_index])[0]
            raise SnapshotError(
                f"Cannot snapshot env {getattr(name, 'id', name)} in a {type(base).__name__}: wrap each env in "
                "SnapshotWrapper (e.g. make_vec_env(..., wrapper_class=SnapshotWrapper)) so that its worker can save it"
            )
        result = base.env_method("snapshot_state", indices=[env_index])[0]
        if isinstance(result, Exception):
            raise result
        saved = result
    vec_layers = tuple((type(w).__name__, _vec_layer_state(w, env_index)) for w in wrappers)
    return EnvSnapshot(saved.env_id, saved.family, saved.state, saved.layers, saved.observation, vec_layers)


def _vec_layer_state(wrapper: VecEnvWrapper, env_index: int) -> dict[str, Any] | None:
    if isinstance(wrapper, VecMonitor) and hasattr(wrapper, "episode_returns"):
        return {
            "episode_return": float(wrapper.episode_returns[env_index]),
            "episode_length": int(wrapper.episode_lengths[env_index]),
        }
    return None


def restore(venv: VecEnv, env_index: int, snapshot: EnvSnapshot) -> Restored:
    """
    Put a snapshot into env ``env_index`` of ``venv`` and verify it: the restored observation must equal the one
    recorded at snapshot time. The next ``venv.step`` continues from the restored state.

    The caller replaces its last observation of env ``env_index`` with the returned one (and its episode-start flag
    by the snapshot's: a restore does not start an episode). ``VecNormalize``'s statistics are left as they are.

    :param venv: the VecEnv stack :func:`snapshot` was given, or one of the same kind
    :param env_index: which env to restore into (any env of the same id and wrapper stack)
    :param snapshot: what :func:`snapshot` returned
    :return: the observation the VecEnv stack would return for that env (normalised with ``VecNormalize``'s current
        statistics, not updating them), and the number of env steps the restore played (replay only)
    :raises SnapshotError: naming the env when the snapshot does not fit it or the restored observation differs
    """
    _check_index(venv, env_index)
    wrappers, base = _vec_layers(venv)
    _check_vec_wrappers(wrappers)
    names = tuple(type(w).__name__ for w in wrappers)
    if tuple(n for n, _ in snapshot.vec_layers) != names:
        raise SnapshotError(
            f"Cannot restore env {snapshot.env_id}: the snapshot was taken through VecEnv wrappers "
            f"{[n for n, _ in snapshot.vec_layers]}, this VecEnv has {list(names)}"
        )
    if isinstance(base, DummyVecEnv):
        observation, replay_steps = restore_env(base.envs[env_index], snapshot)
        base._save_obs(env_index, observation)
    else:
        result = base.env_method("restore_state", snapshot, indices=[env_index])[0]
        if isinstance(result, Exception):
            raise result
        observation, replay_steps = result
    for wrapper, (_, state) in zip(reversed(wrappers), reversed(snapshot.vec_layers), strict=True):
        observation = _restore_vec_layer(wrapper, env_index, state, observation)
    return Restored(observation, replay_steps)


def _restore_vec_layer(wrapper: VecEnvWrapper, env_index: int, state: dict[str, Any] | None, observation: Any) -> Any:
    """Put back a VecEnv wrapper's state for one env and transform the observation as its step would."""
    if isinstance(wrapper, VecMonitor):
        if state is not None and hasattr(wrapper, "episode_returns"):
            wrapper.episode_returns[env_index] = state["episode_return"]
            wrapper.episode_lengths[env_index] = state["episode_length"]
        return observation
    if isinstance(wrapper, VecNormalize):
        old_obs = getattr(wrapper, "old_obs", None)
        if isinstance(old_obs, dict):
            for key in old_obs:
                old_obs[key][env_index] = observation[key]
        elif isinstance(old_obs, np.ndarray):
            old_obs[env_index] = observation
        return _unbatch(wrapper.normalize_obs(_batch(observation)))
    if isinstance(wrapper, VecTransposeImage):
        return _unbatch(wrapper.transpose_observations(_batch(observation)))
    if isinstance(wrapper, VecExtractDictObs):
        return observation[wrapper.key]
    return observation
