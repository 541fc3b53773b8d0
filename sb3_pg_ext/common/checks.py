"""Hyperparameter validation and numerical checks shared by the algorithms."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch as th


def check_choice(name: str, value: Any, choices: Iterable[Any]) -> None:
    """Raise ``ValueError`` naming ``name`` and the accepted values unless ``value`` is one of ``choices``."""
    choices = tuple(choices)
    if isinstance(value, bool) or value not in choices:
        accepted = ", ".join(repr(c) for c in choices)
        raise ValueError(f"`{name}` must be one of {accepted}; got {value!r}")


def check_bool(name: str, value: Any) -> None:
    """Raise ``TypeError`` unless ``value`` is a bool."""
    if not isinstance(value, bool | np.bool_):
        raise TypeError(f"`{name}` must be True or False; got {value!r} ({type(value).__name__})")


def check_int(name: str, value: Any, minimum: int | None = None) -> None:
    """Raise ``TypeError``/``ValueError`` unless ``value`` is an integer ``>= minimum``."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise TypeError(f"`{name}` must be an integer; got {value!r} ({type(value).__name__})")
    if minimum is not None and value < minimum:
        raise ValueError(f"`{name}` must be an integer >= {minimum}; got {value}")


def check_float(
    name: str,
    value: Any,
    low: float | None = None,
    high: float | None = None,
    low_inclusive: bool = True,
    high_inclusive: bool = True,
    allow_none: bool = False,
) -> None:
    """
    Raise ``TypeError``/``ValueError`` unless ``value`` is a finite real number in the given interval.

    :param allow_none: accept ``None`` as well
    """
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        suffix = " or None" if allow_none else ""
        raise TypeError(f"`{name}` must be a number{suffix}; got {value!r} ({type(value).__name__})")
    value = float(value)
    lo = "[" if low_inclusive else "("
    hi = "]" if high_inclusive else ")"
    interval = f"{lo}{'-inf' if low is None else low}, {'inf' if high is None else high}{hi}"
    ok = math.isfinite(value)
    if ok and low is not None:
        ok = value >= low if low_inclusive else value > low
    if ok and high is not None:
        ok = value <= high if high_inclusive else value < high
    if not ok:
        suffix = " or None" if allow_none else ""
        raise ValueError(f"`{name}` must be a finite number in {interval}{suffix}; got {value}")


def check_learning_rate(value: Any) -> None:
    """A positive float or a schedule (callable)."""
    if callable(value):
        return
    check_float("learning_rate", value, low=0.0, low_inclusive=False)


def assert_finite(tensor: th.Tensor | np.ndarray, quantity: str, algorithm: str, update: int) -> None:
    """
    Raise ``FloatingPointError`` naming the algorithm, the update and the quantity if ``tensor`` holds NaN/inf.
    """
    finite = bool(th.isfinite(tensor).all()) if isinstance(tensor, th.Tensor) else bool(np.isfinite(tensor).all())
    if not finite:
        raise FloatingPointError(
            f"{algorithm}: non-finite {quantity} at update {update}. "
            "Check the environment's rewards and observations (VecNormalize / VecCheckNan help), "
            "or lower the learning rate."
        )


def check_rewards(rewards: np.ndarray, algorithm: str, timestep: int) -> None:
    """Raise ``ValueError`` naming the algorithm, the envs and the timestep if an env returned a NaN/inf reward."""
    if not np.all(np.isfinite(rewards)):
        bad = np.flatnonzero(~np.isfinite(rewards)).tolist()
        raise ValueError(
            f"{algorithm}: the environment returned a non-finite reward {np.asarray(rewards)[bad].tolist()} "
            f"(env indices {bad}) at timestep {timestep}. Rewards must be finite numbers."
        )


def assert_finite_parameters(module: th.nn.Module, algorithm: str, update: int) -> None:
    """Raise ``FloatingPointError`` if an optimiser step left a NaN/inf in ``module``'s parameters."""
    for name, param in module.named_parameters():
        if not bool(th.isfinite(param).all()):
            raise FloatingPointError(
                f"{algorithm}: non-finite parameter {name!r} after the optimiser step of update {update}. "
                "Lower the learning rate or clip gradients (max_grad_norm)."
            )


def assert_finite_gradients(module: th.nn.Module, algorithm: str, update: int) -> None:
    """
    Raise ``FloatingPointError`` naming the algorithm, the update and the parameter if a gradient holds NaN/inf.

    Call it after ``loss.backward()`` and *before* ``optimizer.step()`` (and before gradient clipping, which would
    spread one non-finite entry over every gradient): the parameters are then left as they were.
    """
    for name, param in module.named_parameters():
        if param.grad is not None and not bool(th.isfinite(param.grad).all()):
            raise FloatingPointError(
                f"{algorithm}: non-finite gradient of parameter {name!r} at update {update} (the optimiser step was "
                "not taken; the parameters are unchanged). Check the environment's rewards and observations "
                "(VecNormalize / VecCheckNan help), or lower the learning rate."
            )


def total_grad_norm(parameters: list[th.nn.Parameter]) -> th.Tensor:
    """
    The 2-norm of all gradients, as ``th.nn.utils.clip_grad_norm_`` computes it (its first half; torch >= 2.6 names
    it ``get_total_norm``). With :func:`clip_grads_with_norm`, gradient clipping in two halves, so that the norm can
    be checked for NaN/inf (one test for every gradient) before any gradient is scaled.
    """
    grads = [param.grad for param in parameters if param.grad is not None]
    if hasattr(th.nn.utils, "get_total_norm"):
        return th.nn.utils.get_total_norm(grads, 2.0)
    return th.linalg.vector_norm(th.stack([th.linalg.vector_norm(grad, 2.0) for grad in grads]), 2.0)


def clip_grads_with_norm(parameters: list[th.nn.Parameter], max_norm: float, total_norm: th.Tensor) -> None:
    """``clip_grad_norm_``'s second half: scale every gradient by min(1, max_norm / (total_norm + 1e-6))."""
    if hasattr(th.nn.utils, "clip_grads_with_norm_"):
        th.nn.utils.clip_grads_with_norm_(parameters, max_norm, total_norm)
        return
    coef = th.clamp(max_norm / (total_norm + 1e-6), max=1.0)
    for param in parameters:
        if param.grad is not None:
            param.grad.detach().mul_(coef)
