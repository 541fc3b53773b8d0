"""
Statistics of R independent gradient estimates, and their comparison with a reference gradient.

With g_1..g_R the flattened gradients of R independent batches, m their mean and S their sample covariance
(divisor R-1):

- variance: tr(S) = (1/(R-1)) sum_r ||g_r - m||^2 (the expected squared distance of one estimate from its mean),
  per parameter group and over the policy's parameters (every group but the critic's); its standard error is the
  standard deviation of the R terms ||g_r - m||^2 (scaled by R/(R-1)) over sqrt(R);
- variance at equal env steps: tr(S) times the mean number of env steps per batch (a variance that falls as
  1/steps gives the same number at every batch size), relative to the plain estimator's;
- cosine to the reference: <m, g_ref> / (||m|| ||g_ref||);
- bias: with X = m - g_ref, C = S/R + S_ref/K (the reference, the mean of K batch gradients, has covariance
  S_ref/K; C = S/R for an exact reference),
  B^2 = ||X||^2 - tr(S)/R - tr(S_ref)/K is an unbiased estimate of ||E[g] - g_ref_true||^2, with variance
  2 tr(C^2) + 4 b^T C b (Gaussian approximation; tr(C^2) from the unbiased estimate of tr(Sigma^2), b^T C b from
  X^T C X - tr(C^2)). The relative bias is sqrt(max(B^2, 0)) / ||g_ref||, with the
  standard error half the width of the interval sqrt(max(B^2 -/+ SE(B^2), 0)) / ||g_ref||.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np


def write_json_atomically(path: Path, data: dict[str, Any]) -> None:
    """
    Write ``data`` as JSON to ``path`` through a temporary file in the same folder and ``os.replace``: a reader
    (or a resumed run) sees the old file or the new one, never a partial one.

    :param path: destination
    :param data: JSON-serialisable mapping
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(data, handle, indent=1)
            handle.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_array_atomically(path: Path, array: np.ndarray) -> None:
    """
    Save ``array`` with ``np.save`` through a temporary file and ``os.replace``.

    :param path: destination (``.npy``)
    :param array: the array
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            np.save(handle, array)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def array_digest(array: np.ndarray) -> str:
    """A short digest of an array's bytes (which reference an option's statistics were computed against)."""
    return hashlib.sha256(np.ascontiguousarray(array, dtype=np.float64).tobytes()).hexdigest()[:16]


def trace_statistics(gradients: np.ndarray) -> tuple[float, float]:
    """
    tr(S) and its standard error from R gradients.

    :param gradients: ``(R, P)``
    :return: (trace of the sample covariance, its standard error)
    """
    n = gradients.shape[0]
    centred = gradients - gradients.mean(0)
    terms = (centred**2).sum(1) * n / (n - 1)  # mean of the terms = tr(S)
    return float(terms.mean()), float(terms.std(ddof=1) / math.sqrt(n))


def bias_statistics(gradients: np.ndarray, reference: np.ndarray, reference_gradients: np.ndarray | None) -> dict[str, float]:
    """
    Cosine to the reference, B^2 (the unbiased estimate of the squared bias) and its standard error (see the module
    docstring), relative to ||g_ref||^2.

    :param gradients: ``(R, P)`` the option's gradients (policy parameters)
    :param reference: ``(P,)`` the reference gradient
    :param reference_gradients: ``(K, P)`` the batch gradients whose mean is the reference; None when the reference
        is exact
    :return: ``cosine``, ``bias_sq_rel`` (B^2 / ||g_ref||^2), ``bias_sq_rel_se``, ``bias_rel``, ``bias_rel_se``,
        ``distance_rel`` (||m - g_ref|| / ||g_ref||, not corrected for noise)
    """
    n = gradients.shape[0]
    mean = gradients.mean(0)
    centred = gradients - mean
    x = mean - reference
    ref_sq = float(reference @ reference)
    # tr(C), tr(C^2) and X^T C X, from Gram matrices (never a P x P matrix)
    trace_c = float((centred**2).sum()) / (n - 1) / n
    trace_c2 = unbiased_trace_of_square(centred) / n**2
    xcx = float(((centred @ x) ** 2).sum()) / (n - 1) / n
    if reference_gradients is not None:
        k = reference_gradients.shape[0]
        ref_centred = reference_gradients - reference_gradients.mean(0)
        trace_c += float((ref_centred**2).sum()) / (k - 1) / k
        trace_c2 += unbiased_trace_of_square(ref_centred) / k**2
        # tr(S S_ref) is unbiased for tr(Sigma Sigma_ref): the two samples are independent
        trace_c2 += 2 * float(((centred @ ref_centred.T) ** 2).sum()) / ((n - 1) * (k - 1)) / (n * k)
        xcx += float(((ref_centred @ x) ** 2).sum()) / (k - 1) / k
    bias_sq = float(x @ x) - trace_c
    # Var(||X||^2) = 2 tr(C^2) + 4 b^T C b, and E[X^T C X] = b^T C b + tr(C^2)
    bias_sq_se = math.sqrt(2 * trace_c2 + 4 * max(xcx - trace_c2, 0.0))
    low, high = max(bias_sq - bias_sq_se, 0.0), max(bias_sq + bias_sq_se, 0.0)
    norm_mean = float(np.linalg.norm(mean))
    return {
        "cosine": float(mean @ reference) / max(norm_mean * math.sqrt(ref_sq), 1e-300),
        "bias_sq_rel": bias_sq / ref_sq,
        "bias_sq_rel_se": bias_sq_se / ref_sq,
        "bias_rel": math.sqrt(max(bias_sq, 0.0) / ref_sq),
        "bias_rel_se": (math.sqrt(high) - math.sqrt(low)) / 2 / math.sqrt(ref_sq),
        "distance_rel": math.sqrt(float(x @ x) / ref_sq),
    }


def unbiased_trace_of_square(centred: np.ndarray) -> float:
    """
    An unbiased estimate of tr(Sigma^2) from n centred samples (Gaussian case; n >= 3): the plain tr(S^2) adds about
    tr(Sigma)^2 / (n - 1), which dominates when the dimension is large.

        tr(Sigma^2) ~ (n-1)^2 / ((n-2)(n+1)) * (tr(S^2) - tr(S)^2 / (n-1))

    :param centred: ``(n, P)`` samples minus their mean
    :return: the estimate, clipped at 0
    """
    n = centred.shape[0]
    trace_s = float((centred**2).sum()) / (n - 1)
    trace_s2 = float(((centred @ centred.T) ** 2).sum()) / (n - 1) ** 2
    return max((n - 1) ** 2 / ((n - 2) * (n + 1)) * (trace_s2 - trace_s**2 / (n - 1)), 0.0)


def gradient_statistics(
    gradients: np.ndarray,
    groups: dict[str, np.ndarray],
    env_steps: list[int],
    episodes: list[int],
) -> dict[str, Any]:
    """
    The statistics of R gradients that the lab stores for one (option, batch size).

    :param gradients: ``(R, P_all)`` flattened gradients of every policy parameter
    :param groups: group name -> indices into the flattened gradient
    :param env_steps: env steps of each batch
    :param episodes: episodes of each batch
    :return: ``R``, ``env_steps`` (mean per batch), ``episodes`` (mean per batch), ``groups`` (per group: size,
        trace, trace_se, mean vector), ``policy`` (the same over every group but ``value``)
    """
    per_group: dict[str, Any] = {}
    for name, index in groups.items():
        trace, trace_se = trace_statistics(gradients[:, index])
        per_group[name] = {"size": len(index), "trace": trace, "trace_se": trace_se}
    policy_index = policy_indices(groups)
    trace, trace_se = trace_statistics(gradients[:, policy_index])
    return {
        "R": int(gradients.shape[0]),
        "env_steps": float(np.mean(env_steps)),
        "episodes": float(np.mean(episodes)),
        "groups": per_group,
        "policy": {
            "size": len(policy_index),
            "trace": trace,
            "trace_se": trace_se,
            "mean": gradients[:, policy_index].mean(0).tolist(),
        },
    }


def policy_indices(groups: dict[str, np.ndarray]) -> np.ndarray:
    """Indices of the policy's parameters (every group but ``value``), in flattened order."""
    return np.sort(np.concatenate([index for name, index in groups.items() if name != "value"]))
