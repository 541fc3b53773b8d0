"""
Read the gradient that an algorithm's own ``train()`` computes, without letting it step the optimiser.

For the duration of one measurement, ``model.policy.optimizer`` is replaced by a :class:`GradientRecorder`: its
``zero_grad()`` clears the gradients, and its ``step()`` copies them (the flattened gradient of every policy
parameter) instead of changing the parameters. The parameters and the real optimiser's state are compared with a
copy taken before, and restored, after every measurement.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch as th
from stable_baselines3.common.base_class import BaseAlgorithm

#: Parameter groups, by parameter name: the critic's parameters (a name containing "value"), the Gaussian policy's
#: ``log_std``, and every other parameter (the actor, and a features extractor shared with the critic).
GROUPS = ("actor", "log_std", "value")


def parameter_group(name: str) -> str:
    """
    The group of a policy parameter: ``"value"`` (a name containing ``value``, e.g. ``value_net.weight`` or
    ``mlp_extractor.value_net.0.bias``), ``"log_std"``, or ``"actor"`` (every other parameter).

    :param name: the parameter's name in ``policy.named_parameters()``
    :return: one of :data:`GROUPS`
    """
    if "value" in name:
        return "value"
    if name.split(".")[-1] == "log_std":
        return "log_std"
    return "actor"


class GradientRecorder:
    """
    A stand-in for a torch optimiser whose ``step()`` records the gradients of the parameters instead of
    updating them. ``param_groups`` are copies of the real optimiser's (learning-rate schedules write into them
    without touching the real optimiser).

    :param named_parameters: the policy's named parameters, in ``policy.named_parameters()`` order
    :param optimizer: the real optimiser, whose ``param_groups`` are copied
    """

    def __init__(self, named_parameters: list[tuple[str, th.nn.Parameter]], optimizer: th.optim.Optimizer):
        self.named_parameters = named_parameters
        self.param_groups = [dict(group) for group in optimizer.param_groups]
        self.steps: list[np.ndarray] = []

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Clear the parameters' gradients (as ``Optimizer.zero_grad``)."""
        for _, parameter in self.named_parameters:
            parameter.grad = None

    def step(self, closure: Callable[[], Any] | None = None) -> None:
        """Record the flattened gradient (zeros for a parameter without one); the parameters are not changed."""
        flat = [
            (th.zeros_like(p) if p.grad is None else p.grad).detach().reshape(-1).to(th.float64)
            for _, p in self.named_parameters
        ]
        self.steps.append(th.cat(flat).cpu().numpy())


def group_slices(model: BaseAlgorithm) -> dict[str, np.ndarray]:
    """
    The indices of each parameter group in the flattened gradient (groups without parameters left out).

    :param model: the algorithm
    :return: group name -> indices into the flattened gradient
    """
    indices: dict[str, list[np.ndarray]] = {}
    offset = 0
    for name, parameter in model.policy.named_parameters():
        n = parameter.numel()
        indices.setdefault(parameter_group(name), []).append(np.arange(offset, offset + n))
        offset += n
    return {group: np.concatenate(indices[group]) for group in GROUPS if group in indices}


def read_gradient(model: BaseAlgorithm, train: Callable[[], None]) -> np.ndarray:
    """
    Run ``train()`` (the algorithm's own update) with the optimiser replaced by a :class:`GradientRecorder` and
    return the flattened gradient of its single optimiser step. The parameters, the real optimiser's state and
    ``_n_updates`` are checked unchanged and restored afterwards.

    :param model: the algorithm, configured so that ``train()`` takes exactly one optimiser step
    :param train: calls the algorithm's ``train`` (e.g. ``model.train``)
    :return: the gradient, float64, in ``policy.named_parameters()`` order
    :raises RuntimeError: if ``train()`` took no step or more than one, or changed a parameter
    """
    policy = model.policy
    optimizer = policy.optimizer
    named = [(name, p) for name, p in policy.named_parameters() if p.requires_grad]
    before = {name: p.detach().clone() for name, p in named}
    optimizer_state = optimizer.state_dict()
    n_updates = model._n_updates
    recorder = GradientRecorder(named, optimizer)
    policy.optimizer = recorder  # type: ignore[assignment]
    try:
        train()
    finally:
        policy.optimizer = optimizer
        optimizer.load_state_dict(optimizer_state)
        model._n_updates = n_updates
        for _, p in named:
            p.grad = None
    changed = [name for name, p in named if not th.equal(p.detach(), before[name])]
    if changed:
        with th.no_grad():
            for name, p in named:
                p.copy_(before[name])
        raise RuntimeError(f"{type(model).__name__}.train() changed parameters {changed[:3]} without an optimiser step")
    if len(recorder.steps) != 1:
        raise RuntimeError(
            f"{type(model).__name__}.train() took {len(recorder.steps)} optimiser steps; the lab needs exactly one "
            "gradient step on the whole batch"
        )
    return recorder.steps[0]
