"""
Policy-gradient estimators as pure, vectorised torch functions, one section per topic: the episode structure and
returns, baselines, importance sampling, group-relative advantages and loss aggregation (GRPO), and KL divergences
(sample estimators, the analytic KL, the adaptive-penalty rule).

Every function here works on *flat* batches: the steps of several episodes laid end to end in one tensor of
shape ``(T,)``, with the episode boundaries passed explicitly as ``episode_starts`` (``True`` at the first step of
each episode, as in SB3's rollout buffers). No function loops over time steps in Python: discounted suffix sums
use a segmented doubling scan (``O(T log L)`` for episodes of length at most ``L``, with ``log2(L)`` tensor
operations), segment sums use ``index_add``/``cumsum``.

Notation: episode i, steps t = 0..T_i-1, reward r_t, discount gamma, log-ratio
``log pi(a_t|s_t) - log mu(a_t|s_t)``.

This module imports torch only; it knows nothing of SB3.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch as th
from torch.distributions import Bernoulli, Categorical, Normal

__all__ = [
    "BASELINE_WEIGHTINGS",
    "KL_ESTIMATORS",
    "adapted_kl_coef",
    "analytic_kl",
    "analytic_kl_from_parameters",
    "batch_mean_baseline",
    "categorical_kl",
    "clipped_log_ratios",
    "discounted_returns",
    "effective_sample_size",
    "episode_discounted_returns",
    "episode_ids_from_starts",
    "episode_sums",
    "group_advantages",
    "group_process_advantages",
    "group_reward_to_go_advantages",
    "kl_importance_weight",
    "kl_k1",
    "kl_k2",
    "kl_k3",
    "kl_k3_linear_from",
    "kl_parameters",
    "leave_one_out_baseline",
    "loss_aggregation_weights",
    "normal_kl",
    "optimal_baseline",
    "per_decision_log_weights",
    "per_decision_returns",
    "ratio_corrected_kl",
    "reward_to_go",
    "sampled_kl",
    "self_normalized_log_weights",
    "step_index",
    "vine_advantages",
]


# ---------------------------------------------------------------------------------------------------------------------
# Episode structure and returns
# ---------------------------------------------------------------------------------------------------------------------


def _check_flat(name: str, tensor: th.Tensor, length: int | None = None) -> None:
    if tensor.dim() != 1:
        raise ValueError(f"`{name}` must be a 1-D tensor of per-step values, got shape {tuple(tensor.shape)}")
    if length is not None and tensor.shape[0] != length:
        raise ValueError(f"`{name}` has {tensor.shape[0]} entries but the batch has {length} steps")


def _first_steps(episode_starts: th.Tensor) -> th.Tensor:
    """Bool mask of each episode's first step; the batch's first step always opens an episode."""
    starts = episode_starts.to(th.bool).clone()
    if starts.numel() > 0:
        starts[0] = True
    return starts


def episode_ids_from_starts(episode_starts: th.Tensor) -> th.Tensor:
    """
    Episode index of every step: ``id_t = (number of episode starts at or before t) - 1``.

    The first step always opens an episode, whether or not ``episode_starts[0]`` is set.

    :param episode_starts: ``(T,)`` bool, True at the first step of each episode
    :return: ``(T,)`` long tensor with values ``0..N-1``
    """
    _check_flat("episode_starts", episode_starts)
    return th.cumsum(_first_steps(episode_starts).long(), dim=0) - 1


def step_index(episode_starts: th.Tensor) -> th.Tensor:
    """
    Position of every step inside its episode: ``t`` for the t-th step (0-based).

    :param episode_starts: ``(T,)`` bool, True at the first step of each episode
    :return: ``(T,)`` long tensor
    """
    ids = episode_ids_from_starts(episode_starts)
    positions = th.arange(ids.numel(), device=ids.device)
    first = th.zeros(int(ids.max().item()) + 1 if ids.numel() else 0, dtype=th.long, device=ids.device)
    # The first step of episode i is the smallest position with id i (scatter_reduce "amin").
    first = first.scatter_reduce(0, ids, positions, reduce="amin", include_self=False)
    return positions - first[ids]


def episode_sums(values: th.Tensor, episode_starts: th.Tensor) -> th.Tensor:
    """
    Sum of a per-step quantity over each episode: ``S_i = sum_t x_{i,t}``.

    :param values: ``(T, ...)`` per-step values (extra dimensions are summed independently)
    :param episode_starts: ``(T,)`` bool episode boundaries
    :return: ``(N, ...)`` one sum per episode
    """
    ids = episode_ids_from_starts(episode_starts)
    n_episodes = int(ids.max().item()) + 1 if ids.numel() else 0
    out = th.zeros((n_episodes, *values.shape[1:]), dtype=values.dtype, device=values.device)
    return out.index_add_(0, ids, values)


def _last_step_mask(episode_starts: th.Tensor) -> th.Tensor:
    """True at the last step of each episode (the step before the next start, and the final step)."""
    starts = episode_starts.to(th.bool)
    last = th.ones_like(starts)
    if starts.numel() > 1:
        last[:-1] = starts[1:]
    return last


def _segmented_scan(x: th.Tensor, episode_ids: th.Tensor, gamma: float = 1.0, reverse: bool = False) -> th.Tensor:
    """
    Discounted sums inside each episode by a segmented Hillis-Steele scan:

        reverse=True:   y_t = sum_{k >= t, same episode} gamma^{k-t} x_k     (suffix sums: returns)
        reverse=False:  y_t = sum_{k <= t, same episode} gamma^{t-k} x_k     (prefix sums: cumulative log-ratios)

    After the round with offset d, ``y_t`` covers ``[t, t + 2d)`` (or ``(t - 2d, t]``) restricted to the episode of
    t; every multiplier is ``gamma^d <= 1``, so there is no overflow and no cancellation however long the episode,
    and each episode's sums depend on that episode's values alone (a non-finite value never reaches another).
    """
    y = x.clone()
    if y.shape[0] == 0:
        return y
    max_len = int(th.bincount(episode_ids).max().item())
    offset = 1
    while offset < max_len:
        same_episode = episode_ids[offset:] == episode_ids[:-offset]
        shifted = th.zeros_like(y)
        if reverse:
            shifted[:-offset] = th.where(same_episode, y[offset:], th.zeros_like(y[offset:]))
        else:
            shifted[offset:] = th.where(same_episode, y[:-offset], th.zeros_like(y[offset:]))
        y = y + (gamma**offset) * shifted
        offset *= 2
    return y


def _with_bootstrap(
    rewards: th.Tensor, episode_starts: th.Tensor, gamma: float, bootstrap_values: th.Tensor | None
) -> th.Tensor:
    _check_flat("rewards", rewards)
    _check_flat("episode_starts", episode_starts, rewards.shape[0])
    if bootstrap_values is None:
        return rewards
    _check_flat("bootstrap_values", bootstrap_values, rewards.shape[0])
    last = _last_step_mask(episode_starts)
    return rewards + gamma * th.where(last, bootstrap_values.to(rewards.dtype), th.zeros_like(rewards))


def _checked_episode_ids(rewards: th.Tensor, episode_starts: th.Tensor, group_ids: th.Tensor) -> th.Tensor:
    """Episode index of every step, after checking that rewards, starts and one group id per episode line up."""
    _check_flat("rewards", rewards)
    _check_flat("episode_starts", episode_starts, rewards.shape[0])
    episode_ids = episode_ids_from_starts(episode_starts)
    _check_flat("group_ids", group_ids, int(episode_ids.max().item()) + 1 if episode_ids.numel() else 0)
    return episode_ids


def reward_to_go(
    rewards: th.Tensor,
    episode_starts: th.Tensor,
    gamma: float,
    bootstrap_values: th.Tensor | None = None,
) -> th.Tensor:
    """
    Discounted reward-to-go of every step (``reward_to_go=True``):

        psi_t = sum_{k=t}^{T-1} gamma^{k-t} r_k  +  gamma^{T-t} V(s_T)

    where the last term is present only for episodes cut by a time limit (``bootstrap_values``).

    :param rewards: ``(T,)`` rewards of the concatenated episodes
    :param episode_starts: ``(T,)`` bool, True at the first step of each episode
    :param gamma: discount factor
    :param bootstrap_values: optional ``(T,)`` tensor; its entry at the *last* step of an episode is the value
        ``V(s_T)`` of the state after that step (0 for terminated episodes); other entries are ignored
    :return: ``(T,)`` reward-to-go
    """
    x = _with_bootstrap(rewards, episode_starts, gamma, bootstrap_values)
    return _segmented_scan(x, episode_ids_from_starts(episode_starts), gamma, reverse=True)


def discounted_returns(
    rewards: th.Tensor,
    episode_starts: th.Tensor,
    gamma: float,
    bootstrap_values: th.Tensor | None = None,
) -> th.Tensor:
    """
    Whole-episode discounted return, broadcast to every step of its episode (``reward_to_go=False``):

        psi_t = R = sum_{k=0}^{T-1} gamma^k r_k  +  gamma^T V(s_T)

    (the bootstrap term only for episodes cut by a time limit).

    :param rewards: ``(T,)`` rewards of the concatenated episodes
    :param episode_starts: ``(T,)`` bool, True at the first step of each episode
    :param gamma: discount factor
    :param bootstrap_values: optional ``(T,)``, see :func:`reward_to_go`
    :return: ``(T,)`` the return of each step's episode
    """
    ids = episode_ids_from_starts(episode_starts)
    rtg = _segmented_scan(_with_bootstrap(rewards, episode_starts, gamma, bootstrap_values), ids, gamma, reverse=True)
    return rtg[_first_steps(episode_starts)][ids]


# ---------------------------------------------------------------------------------------------------------------------
# Baselines
# ---------------------------------------------------------------------------------------------------------------------


BASELINE_WEIGHTINGS = ("episode", "step")


def _episode_means(psi: th.Tensor, episode_starts: th.Tensor) -> tuple[th.Tensor, th.Tensor, th.Tensor]:
    """Per-episode sums of psi, episode lengths and episode ids of every step."""
    _check_flat("psi", psi)
    _check_flat("episode_starts", episode_starts, psi.shape[0])
    ids = episode_ids_from_starts(episode_starts)
    return episode_sums(psi, episode_starts), episode_sums(th.ones_like(psi), episode_starts), ids


def batch_mean_baseline(psi: th.Tensor, episode_starts: th.Tensor | None = None, weighting: str = "step") -> th.Tensor:
    """
    The average-return baseline, the same constant b for every step of the batch:

    - ``weighting="episode"``: the mean over the N **episodes** of each episode's mean psi,
      ``b = (1/N) sum_i (1/T_i) sum_t psi_{i,t}``. For whole-episode returns (psi_{i,t} = R_i at every step) this is
      ``b = (1/N) sum_i R_i``: every return counts once, whatever its episode's length.
    - ``weighting="step"``: the mean over all T steps of the batch, ``b = (1/T) sum_{i,t} psi_{i,t}``. For
      whole-episode returns this weights R_i by its episode's length T_i (returns 10, 2, 30 of lengths 10, 2, 30
      give b = 23.9 instead of 14.0); for reward-to-go it is the mean reward-to-go of the batch's steps.

    It includes each episode's own psi, so the estimator's expectation is shrunk: for one-step episodes
    ``E[g] = (N-1)/N * grad J`` exactly. Use :func:`leave_one_out_baseline` for an unbiased batch baseline.

    :param psi: ``(T,)`` per-step returns
    :param episode_starts: ``(T,)`` bool episode boundaries (needed by ``weighting="episode"``)
    :param weighting: ``"episode"`` or ``"step"`` (see above)
    :return: ``(T,)`` baseline (a constant)
    """
    _check_flat("psi", psi)
    if weighting not in BASELINE_WEIGHTINGS:
        raise ValueError(f"`weighting` must be one of 'episode', 'step', got {weighting!r}")
    if weighting == "step":
        return psi.mean().expand_as(psi)
    if episode_starts is None:
        raise ValueError("`weighting='episode'` needs `episode_starts`")
    sums, counts, _ = _episode_means(psi, episode_starts)
    return (sums / counts).mean().expand_as(psi)


def leave_one_out_baseline(psi: th.Tensor, episode_starts: th.Tensor, weighting: str = "step") -> th.Tensor:
    """
    Leave-one-out baseline: for every step of episode i, a mean of psi over the *other* N-1 episodes of the batch,

    - ``weighting="episode"``: ``b_i = (1/(N-1)) sum_{j != i} (1/T_j) sum_t psi_{j,t}``; for whole-episode returns
      ``b_i = (1/(N-1)) sum_{j != i} R_j``, every other return counted once;
    - ``weighting="step"``: ``b_i = (sum_{j != i} sum_t psi_{j,t}) / (sum_{j != i} T_j)``, the mean over the other
      episodes' steps (for reward-to-go: their mean reward-to-go per step).

    Either way b_i does not depend on episode i, hence ``E[grad log pi * b_i] = 0``: unbiased. Needs N >= 2.

    :param psi: ``(T,)`` per-step returns
    :param episode_starts: ``(T,)`` bool episode boundaries
    :param weighting: ``"episode"`` or ``"step"`` (see above)
    :return: ``(T,)`` baseline
    """
    if weighting not in BASELINE_WEIGHTINGS:
        raise ValueError(f"`weighting` must be one of 'episode', 'step', got {weighting!r}")
    sums, counts, ids = _episode_means(psi, episode_starts)
    n_episodes = sums.shape[0]
    if n_episodes < 2:
        raise ValueError("The leave-one-out baseline needs at least 2 episodes in the batch")
    if weighting == "episode":
        means = sums / counts
        return ((means.sum() - means) / (n_episodes - 1))[ids]
    return ((sums.sum() - sums) / (counts.sum() - counts))[ids]


def optimal_baseline(scores: th.Tensor, returns: th.Tensor, leave_one_out: bool = True) -> th.Tensor:
    """
    Variance-minimising constant baseline per parameter coordinate k (``baseline="optimal"``):

        b_k = sum_i g_{i,k}^2 R_i / sum_i g_{i,k}^2

    with ``g_i`` the per-episode score ``sum_t grad log pi(a_{i,t}|s_{i,t})`` and ``R_i`` the episode return.
    With ``leave_one_out=True`` (default) episode i's baseline is computed from the other episodes only,
    ``b_{i,k} = sum_{j != i} g_{j,k}^2 R_j / sum_{j != i} g_{j,k}^2``, which keeps the estimator unbiased;
    with ``False`` all episodes share the batch formula above (biased by the episode's own term).
    Coordinates whose squared scores sum to zero get ``b = 0``.

    :param scores: ``(N, K)`` per-episode score vectors
    :param returns: ``(N,)`` per-episode returns
    :param leave_one_out: exclude episode i from its own baseline
    :return: ``(N, K)`` baseline per episode and coordinate
    """
    if scores.dim() != 2 or returns.dim() != 1 or scores.shape[0] != returns.shape[0]:
        raise ValueError(f"Expected scores (N, K) and returns (N,), got {tuple(scores.shape)} and {tuple(returns.shape)}")
    sq = scores.pow(2)
    num = sq * returns.unsqueeze(1)
    if leave_one_out:
        if scores.shape[0] < 2:
            raise ValueError("The leave-one-out optimal baseline needs at least 2 episodes in the batch")
        numerator = num.sum(0, keepdim=True) - num
        denominator = sq.sum(0, keepdim=True) - sq
    else:
        numerator = num.sum(0, keepdim=True).expand_as(num)
        denominator = sq.sum(0, keepdim=True).expand_as(sq)
    safe = denominator > 0
    return th.where(safe, numerator / th.where(safe, denominator, th.ones_like(denominator)), th.zeros_like(numerator))


# ---------------------------------------------------------------------------------------------------------------------
# Importance sampling (ISPG): per-step and per-decision weights, their self-normalisation, the weighted returns
# ---------------------------------------------------------------------------------------------------------------------


def clipped_log_ratios(log_prob: th.Tensor, behaviour_log_prob: th.Tensor, clip_ratio: float | None = None) -> th.Tensor:
    """
    Per-step log importance ratio, optionally truncated, in float64:

        log rho_t = log( min(c, pi(a_t|s_t) / mu(a_t|s_t)) )

    the single-ratio weight of ``importance_weights="one_step"``; :func:`per_decision_log_weights` is its
    cumulative sum inside each episode.

    :param log_prob: ``(T,)`` log pi(a_t|s_t) under the target policy
    :param behaviour_log_prob: ``(T,)`` log mu(a_t|s_t) stored when the action was taken
    :param clip_ratio: per-step truncation level c > 0, or None (exact)
    :return: ``(T,)`` float64 log-ratios
    """
    _check_flat("log_prob", log_prob)
    _check_flat("behaviour_log_prob", behaviour_log_prob, log_prob.shape[0])
    log_ratio = log_prob.to(th.float64) - behaviour_log_prob.to(th.float64)
    if clip_ratio is None:
        return log_ratio
    if clip_ratio <= 0:
        raise ValueError(f"`clip_ratio` must be > 0 or None, got {clip_ratio}")
    return th.clamp(log_ratio, max=float(th.log(th.tensor(clip_ratio, dtype=th.float64))))


def per_decision_log_weights(
    log_prob: th.Tensor,
    behaviour_log_prob: th.Tensor,
    episode_starts: th.Tensor,
    clip_ratio: float | None = None,
) -> th.Tensor:
    """
    Log of the per-decision importance weight of every step, accumulated in float64:

        log rho_{0:t} = sum_{k=0}^{t} log( min(c, pi(a_k|s_k) / mu(a_k|s_k)) )

    ``c = clip_ratio`` truncates each per-step ratio before the product (Retrace/V-trace style); ``None`` keeps
    the exact product. The sums restart at every episode start. Exponentiate the float64 result: a float32
    cumulative sum overflows on long episodes.

    :param log_prob: ``(T,)`` log pi(a_t|s_t) under the target policy
    :param behaviour_log_prob: ``(T,)`` log mu(a_t|s_t) stored when the action was taken
    :param episode_starts: ``(T,)`` bool episode boundaries
    :param clip_ratio: per-step truncation level c > 0, or None
    :return: ``(T,)`` float64 cumulative log-weights
    """
    log_ratio = clipped_log_ratios(log_prob, behaviour_log_prob, clip_ratio)
    _check_flat("episode_starts", episode_starts, log_prob.shape[0])
    # A segmented scan, not a global cumsum minus its value before each episode: with a global cumsum one
    # non-finite ratio would turn every later episode's weights into inf - inf = NaN.
    return _segmented_scan(log_ratio, episode_ids_from_starts(episode_starts))


def self_normalized_log_weights(log_weights: th.Tensor, episode_starts: th.Tensor, cumulative: bool = True) -> th.Tensor:
    """
    Weighted (self-normalised) importance sampling per time step, in log space: every weight at step index t is
    divided by the mean weight at t over the N episodes of the batch,

        w~_{i,t} = w_{i,t} / D_t,    D_t = (1/N) sum_{j=1}^{N} w_{j, min(t, T_j - 1)}     (``cumulative=True``)

    For cumulative weights w_{j,t} = rho_{0:t} an episode that has ended keeps its final weight rho_{0:T_j-1} in
    the normaliser (the weighted per-decision estimator; Precup et al. 2000, Mahmood et al. 2014): since
    E_mu[rho_{0:min(t, T-1)}] = 1, D_t -> 1 and the estimate is consistent, slightly biased for finite N, with far
    lower variance. Averaging over the episodes still running at t only would be inconsistent when episode
    lengths vary (E_mu[rho_{0:t} | T > t] = P_pi(T > t) / P_mu(T > t), not 1).

    For per-step ratios w_{j,t} = rho_t (``cumulative=False``), E_mu[rho_t | s_t] = 1, so the mean is taken over
    the episodes still running at t: D_t = (1/n_t) sum_{j : T_j > t} w_{j,t}.

    The normaliser is a log-mean-exp, so weights whose exponential overflows are still normalised exactly.

    :param log_weights: ``(T,)`` log w_{i,t} (e.g. from :func:`per_decision_log_weights`)
    :param episode_starts: ``(T,)`` bool episode boundaries
    :param cumulative: whether the weights are products up to t (ended episodes keep their last weight)
    :return: ``(T,)`` log w~_{i,t}, same dtype
    """
    _check_flat("log_weights", log_weights)
    _check_flat("episode_starts", episode_starts, log_weights.shape[0])
    if log_weights.numel() == 0:
        return log_weights
    t = step_index(episode_starts)
    n_steps = int(t.max().item()) + 1
    dtype, device = log_weights.dtype, log_weights.device

    def log_sum_exp_by_step(values: th.Tensor, index: th.Tensor) -> th.Tensor:
        """log sum_{k : index_k = t} exp(values_k) for every t (-inf where there is none)."""
        group_max = th.full((n_steps,), float("-inf"), dtype=dtype, device=device)
        group_max = group_max.scatter_reduce(0, index, values, reduce="amax")
        shift = th.where(th.isfinite(group_max), group_max, th.zeros_like(group_max))
        sums = th.zeros(n_steps, dtype=dtype, device=device).index_add_(0, index, th.exp(values - shift[index]))
        return th.log(sums) + shift

    log_total = log_sum_exp_by_step(log_weights, t)  # episodes running at t
    if cumulative:
        # Episode j ends at T_j: its last weight joins every D_t with t >= T_j.
        last = _last_step_mask(episode_starts)
        ended_at = t[last] + 1
        in_range = ended_at < n_steps
        log_ended = log_sum_exp_by_step(log_weights[last][in_range], ended_at[in_range])
        log_total = th.logaddexp(log_total, th.logcumsumexp(log_ended, dim=0))
        count = th.full((n_steps,), float(int(last.sum().item())), dtype=dtype, device=device)
    else:
        count = th.bincount(t, minlength=n_steps).to(dtype)
    return log_weights - (log_total - th.log(count))[t]


def per_decision_returns(
    rewards: th.Tensor,
    log_weights: th.Tensor,
    episode_starts: th.Tensor,
    gamma: float,
) -> th.Tensor:
    """
    Per-decision importance-weighted reward-to-go (Precup et al. 2000; ``importance_weights="per_decision"``):

        psi_t = sum_{t'=t}^{T-1} gamma^{t'-t} rho_{0:t'} r_{t'}

    each reward weighted by the ratios up to its *own* step, computed as a reverse discounted cumulative sum of
    ``rho_{0:t'} r_{t'}`` (a :func:`reward_to_go` of the weighted rewards), in float64.

    :param rewards: ``(T,)`` rewards of the concatenated episodes
    :param log_weights: ``(T,)`` log rho_{0:t} (:func:`per_decision_log_weights`, optionally
        :func:`self_normalized_log_weights`)
    :param episode_starts: ``(T,)`` bool episode boundaries
    :param gamma: discount factor
    :return: ``(T,)`` float64 psi_t
    """
    _check_flat("rewards", rewards)
    _check_flat("log_weights", log_weights, rewards.shape[0])
    weighted = th.exp(log_weights.to(th.float64)) * rewards.to(th.float64)
    return reward_to_go(weighted, episode_starts, gamma)


def effective_sample_size(weights: th.Tensor) -> th.Tensor:
    """
    Effective sample size of importance weights as a fraction of their number:

        ESS / n = (sum_j w_j)^2 / (n * sum_j w_j^2)      in (0, 1]

    1 when all weights are equal; close to 1/n when one weight dominates.

    :param weights: ``(n,)`` non-negative weights
    :return: scalar tensor
    """
    w = weights.reshape(-1).to(th.float64)
    if w.numel() == 0:
        raise ValueError("effective_sample_size needs at least one weight")
    denom = w.numel() * w.pow(2).sum()
    if denom <= 0:
        return th.zeros((), dtype=th.float64, device=w.device)
    return w.sum().pow(2) / denom


# ---------------------------------------------------------------------------------------------------------------------
# Group-relative advantages and loss aggregation (GRPO)
# ---------------------------------------------------------------------------------------------------------------------


def group_advantages(
    returns: th.Tensor,
    group_ids: th.Tensor,
    scale_rewards: str = "group",
    eps: float = 1e-4,
    min_std: float = 0.0,
) -> th.Tensor:
    """
    Group-relative advantage of every episode (GRPO's step 2):

        A_{i,g} = (R_{i,g} - mu_i) / (max(sigma, min_std) + eps)

    with ``mu_i`` the mean of group i's returns and ``sigma`` chosen by ``scale_rewards``:
    ``"group"`` the *population* std (1/G) of group i's returns, ``"batch"`` the population std over all
    episodes of the batch, ``"none"`` no division (``A = R - mu_i``). ``min_std`` floors the std so that
    near-constant groups cannot blow the advantages up; a group whose returns are all equal gets A = 0.

    :param returns: ``(E,)`` one return per episode
    :param group_ids: ``(E,)`` long, the group of each episode (any labels; groups may have different sizes)
    :param scale_rewards: ``"group"``, ``"batch"`` or ``"none"``
    :param eps: added to the std
    :param min_std: floor of the std
    :return: ``(E,)`` advantages
    """
    if scale_rewards not in ("group", "batch", "none"):
        raise ValueError(f"`scale_rewards` must be one of 'group', 'batch', 'none', got {scale_rewards!r}")
    _check_flat("returns", returns)
    _check_flat("group_ids", group_ids, returns.shape[0])
    _, labels = th.unique(group_ids, return_inverse=True)
    n_groups = int(labels.max().item()) + 1 if labels.numel() else 0
    counts = th.zeros(n_groups, dtype=returns.dtype, device=returns.device).index_add_(0, labels, th.ones_like(returns))
    means = th.zeros(n_groups, dtype=returns.dtype, device=returns.device).index_add_(0, labels, returns) / counts
    # Groups whose returns are all equal get exactly zero advantage (the mean may differ from them by rounding).
    g_min = th.full((n_groups,), float("inf"), dtype=returns.dtype, device=returns.device)
    g_max = th.full((n_groups,), float("-inf"), dtype=returns.dtype, device=returns.device)
    constant = (g_min.scatter_reduce(0, labels, returns, "amin") == g_max.scatter_reduce(0, labels, returns, "amax"))[labels]
    centred = th.where(constant, th.zeros_like(returns), returns - means[labels])
    if scale_rewards == "none":
        return centred
    if scale_rewards == "group":
        var = th.zeros(n_groups, dtype=returns.dtype, device=returns.device).index_add_(0, labels, centred.pow(2)) / counts
        std = var.sqrt()[labels]
    else:
        std = returns.std(unbiased=False).expand_as(returns)
    denominator = th.clamp(std, min=min_std) + eps
    # 0/0 (a constant group with eps = 0 and no floor) is 0, never NaN.
    return th.where(denominator > 0, centred / th.where(denominator > 0, denominator, th.ones_like(denominator)), centred)


def group_process_advantages(
    rewards: th.Tensor,
    episode_starts: th.Tensor,
    group_ids: th.Tensor,
    scale_rewards: str = "group",
    eps: float = 1e-4,
    min_std: float = 0.0,
) -> th.Tensor:
    """
    Process-supervision advantage of every step (DeepSeekMath, ``advantage="process"``):

        r~_{i,g,t} = (r_{i,g,t} - mean_i) / (max(sigma, min_std) + eps)        A_{i,g,t} = sum_{t' >= t} r~_{i,g,t'}

    with ``mean_i`` the mean of *all step rewards* of group i's episodes and ``sigma`` their population std
    (``scale_rewards="group"``), the population std of all step rewards of the batch (``"batch"``) or no division
    (``"none"``). Each step reward is normalised like one return in :func:`group_advantages` (so a group whose
    step rewards are all equal gets zero advantage), then summed from t to the episode's end, undiscounted.

    :param rewards: ``(T,)`` rewards of the concatenated episodes
    :param episode_starts: ``(T,)`` bool, True at the first step of each episode
    :param group_ids: ``(N,)`` long, the group of each episode
    :param scale_rewards: ``"group"``, ``"batch"`` or ``"none"``
    :param eps: added to the std
    :param min_std: floor of the std
    :return: ``(T,)`` advantages
    """
    episode_ids = _checked_episode_ids(rewards, episode_starts, group_ids)
    normalised = group_advantages(rewards, group_ids[episode_ids], scale_rewards, eps, min_std)
    return reward_to_go(normalised, episode_starts, 1.0)


def episode_discounted_returns(rewards: th.Tensor, episode_starts: th.Tensor, gamma: float) -> th.Tensor:
    """
    Discounted return of every episode from its first step (GRPO's branch groups: the truncated discounted return
    of a continuation of at most H steps):

        R_i = sum_{k=0}^{L_i-1} gamma^k r_{i,k}

    :param rewards: ``(T,)`` rewards of the concatenated episodes
    :param episode_starts: ``(T,)`` bool, True at the first step of each episode
    :param gamma: discount factor
    :return: ``(N,)`` one return per episode
    """
    return reward_to_go(rewards, episode_starts, gamma)[_first_steps(episode_starts)]


def group_reward_to_go_advantages(
    rewards: th.Tensor,
    episode_starts: th.Tensor,
    group_ids: th.Tensor,
    gamma: float = 1.0,
    scale_rewards: str = "group",
    eps: float = 1e-4,
    min_std: float = 0.0,
) -> th.Tensor:
    """
    Reward-to-go advantage of every step of groups of episodes that share their start (GRPO's
    ``advantage="reward_to_go"``: reset groups from one reset seed, or branch groups' continuations from one
    restored state, where ``advantage="process"`` means the same): the discounted reward-to-go from offset k,
    normalised across the episodes of the group still running at offset k,

        G_{i,g,k} = sum_{j >= k} gamma^{j-k} r_{i,g,j}
        A_{i,g,k} = (G_{i,g,k} - mean_{g' in S_{i,k}} G_{i,g',k}) / (max(sigma, min_std) + eps)

    with S_{i,k} the episodes of group i that have a step at offset k, and sigma the population std of
    ``{G_{i,g',k}: g' in S_{i,k}}`` (``scale_rewards="group"``), of every step's reward-to-go of the batch
    (``"batch"``), or no division (``"none"``); as in :func:`group_advantages`, equal values (in particular a
    single episode still running at k) get A = 0.

    :param rewards: ``(T,)`` rewards of the concatenated episodes
    :param episode_starts: ``(T,)`` bool, True at the first step of each episode
    :param group_ids: ``(N,)`` long, the group of each episode
    :param gamma: discount factor
    :param scale_rewards: ``"group"``, ``"batch"`` or ``"none"``
    :param eps: added to the std
    :param min_std: floor of the std
    :return: ``(T,)`` advantages
    """
    episode_ids = _checked_episode_ids(rewards, episode_starts, group_ids)
    to_go = reward_to_go(rewards, episode_starts, gamma)
    offsets = step_index(episode_starts)
    # One label per (group, offset): the continuations of a group that are still running at offset k.
    labels = group_ids.long()[episode_ids] * (int(offsets.max().item()) + 1 if offsets.numel() else 1) + offsets
    return group_advantages(to_go, labels, scale_rewards, eps, min_std)


def vine_advantages(rewards: th.Tensor, episode_starts: th.Tensor, values: th.Tensor, gamma: float) -> th.Tensor:
    """
    VinePPO's advantages of a trunk episode's own actions, from Monte-Carlo value estimates of its states (GRPO's
    ``branch_advantage="vine"``: V(s_t) is the mean discounted return of K continuations restored at s_t):

        A_t = r_t + gamma * V(s_{t+1}) - V(s_t)           V(s_T) = 0 after an episode's last step

    A value that was not estimated (NaN: the budget ended the rollout first) makes the advantages that use it NaN,
    so that the caller can leave those steps out.

    :param rewards: ``(T,)`` rewards of the concatenated trunk episodes
    :param episode_starts: ``(T,)`` bool, True at the first step of each episode
    :param values: ``(T,)`` V(s_t) of the state each step acts in (NaN where not estimated)
    :param gamma: discount factor
    :return: ``(T,)`` advantages
    """
    _check_flat("rewards", rewards)
    _check_flat("episode_starts", episode_starts, len(rewards))
    _check_flat("values", values, len(rewards))
    next_values = th.zeros_like(values)
    next_values[:-1] = values[1:]
    next_values[th.nonzero(episode_starts.to(th.bool)[1:]).squeeze(1)] = 0.0  # the last step of each episode
    return rewards + gamma * next_values - values


def loss_aggregation_weights(
    episode_lengths: th.Tensor,
    loss_aggregation: str,
    episode_mask: th.Tensor | None = None,
    max_length: int | None = None,
) -> th.Tensor:
    """
    Per-step weights w_{e,t} that turn per-step objective terms l_{e,t} into GRPO's objective
    ``J = sum_{e,t} w_{e,t} l_{e,t}``, over the N' episodes that ``episode_mask`` keeps:

    - ``"seq_sum"``:    w = 1 / N'                  (J = (1/N') sum_e sum_t l, the DeepSeekMath formula)
    - ``"seq_mean"``:   w = 1 / (N' T_e)            (each episode's mean over its steps; DeepSeekMath)
    - ``"token_mean"``: w = 1 / sum_{e kept} T_e    (mean over every kept step of the batch; DAPO)
    - ``"constant"``:   w = 1 / (N' L)              (L = ``max_length``, a fixed maximum length; Dr. GRPO)

    Steps of masked-out episodes get w = 0. The weights depend on the whole batch only, never on a minibatch,
    so the minibatch losses ``sum_{(e,t) in mb} w_{e,t} l_{e,t}`` of one epoch add up to J exactly, and their
    gradients to J's gradient.

    :param episode_lengths: ``(N,)`` long, T_e of the concatenated episodes
    :param loss_aggregation: ``"seq_sum"``, ``"seq_mean"``, ``"token_mean"`` or ``"constant"``
    :param episode_mask: ``(N,)`` bool, the episodes that enter the loss (None: all)
    :param max_length: L, required by ``"constant"``
    :return: ``(T,)`` float weights, ``T = sum_e T_e``
    """
    if loss_aggregation not in ("seq_sum", "seq_mean", "token_mean", "constant"):
        raise ValueError(
            f"`loss_aggregation` must be one of 'seq_sum', 'seq_mean', 'token_mean', 'constant', got {loss_aggregation!r}"
        )
    _check_flat("episode_lengths", episode_lengths)
    lengths = episode_lengths.to(th.float64)
    if episode_mask is None:
        episode_mask = th.ones_like(episode_lengths, dtype=th.bool)
    _check_flat("episode_mask", episode_mask, episode_lengths.shape[0])
    kept = episode_mask.to(th.float64)
    n_kept = kept.sum()
    if loss_aggregation == "seq_sum":
        per_episode = kept / n_kept
    elif loss_aggregation == "seq_mean":
        per_episode = kept / (n_kept * lengths)
    elif loss_aggregation == "token_mean":
        per_episode = kept / (kept * lengths).sum()
    else:
        if max_length is None or max_length <= 0:
            raise ValueError(f"`loss_aggregation='constant'` needs a positive `max_length`, got {max_length!r}")
        per_episode = kept / (n_kept * max_length)
    # No kept episode: every weight is 0 (not 0/0).
    per_episode = th.where(kept > 0, per_episode, th.zeros_like(per_episode))
    return th.repeat_interleave(per_episode, episode_lengths.long())


# ---------------------------------------------------------------------------------------------------------------------
# KL divergence: sample estimators (Schulman, "Approximating KL divergence", http://joschu.net/blog/kl-approx.html),
# the analytic KL, the adaptive-penalty rule (PPO-Penalty)
# ---------------------------------------------------------------------------------------------------------------------


def kl_k1(log_p: th.Tensor, log_q: th.Tensor) -> th.Tensor:
    """
    k1 estimate of KL(p || q) from samples x ~ p:  ``k1 = log p(x) - log q(x)``.
    Unbiased, high variance, can be negative.

    :param log_p: log-probabilities of the samples under p (the sampling distribution)
    :param log_q: log-probabilities of the same samples under q
    :return: per-sample estimates
    """
    return log_p - log_q


def kl_k2(log_p: th.Tensor, log_q: th.Tensor) -> th.Tensor:
    """
    k2 estimate of KL(p || q) from samples x ~ p:  ``k2 = 0.5 * (log q(x) - log p(x))^2``.
    Biased (second-order accurate when p and q are close), low variance, non-negative.

    :param log_p: log-probabilities of the samples under p (the sampling distribution)
    :param log_q: log-probabilities of the same samples under q
    :return: per-sample estimates
    """
    return 0.5 * (log_q - log_p).pow(2)


def kl_k3(log_p: th.Tensor, log_q: th.Tensor) -> th.Tensor:
    """
    k3 estimate of KL(p || q) from samples x ~ p, with r = q(x)/p(x):

        k3 = r - 1 - log r = q/p - log(q/p) - 1

    Unbiased (E_p[r] = 1) and non-negative (r - 1 >= log r). This is GRPO's D_t with p = pi_theta, q = pi_ref.

    Finite wherever the log-probabilities are: r overflows once log r exceeds log of the dtype's largest number
    (88.7 in float32: ``kl_k3(-95, -5)`` was inf), so above c = :func:`kl_k3_linear_from` (a quarter of that: 22.2 in
    float32, 177.4 in float64) k3 continues along its tangent at c,

        k3 = e^c (1 + log r - c) - 1 - log r        (log r > c)

    which is convex, increasing, non-negative and has the gradient e^c - 1 w.r.t. log r (a quarter, so that the
    squares of many such gradients still sum to a finite norm). For log r <= c the value and gradient are the plain
    formula's, bit for bit.

    :param log_p: log-probabilities of the samples under p (the sampling distribution)
    :param log_q: log-probabilities of the same samples under q
    :return: per-sample estimates
    """
    log_r = log_q - log_p
    c = kl_k3_linear_from(log_r.dtype)
    # expm1 keeps precision when r is close to 1; beyond c, the tangent line (its extra term is exactly 0 below c).
    r_minus_1 = th.expm1(th.clamp(log_r, max=c))
    tangent_excess = (r_minus_1 + 1) * th.relu(log_r - c)  # relu: no gradient at log r = c, as below it
    # clamp at 0 against rounding.
    return th.clamp(r_minus_1 - log_r + tangent_excess, min=0.0)


def kl_k3_linear_from(dtype: th.dtype) -> float:
    """c, the log r above which :func:`kl_k3` continues linearly: a quarter of log(largest finite ``dtype``)."""
    return math.log(th.finfo(dtype).max) / 4


#: The sample estimators of KL(p || q) by name: what ``kl_estimator="k1" | "k2" | "k3"`` selects in GRPO's loss
#: term and in PPOKL's sampled penalty (:func:`sampled_kl`).
KL_ESTIMATORS: dict[str, Callable[[th.Tensor, th.Tensor], th.Tensor]] = {"k1": kl_k1, "k2": kl_k2, "k3": kl_k3}


def kl_importance_weight(log_ratio: th.Tensor) -> th.Tensor:
    """
    r = exp(log r), the importance weight that turns a KL estimate on pi_old's samples into one for pi_theta's
    (:func:`sampled_kl`'s reverse direction, GRPO's ``kl_ratio_correction``), capped at e^c with c =
    :func:`kl_k3_linear_from` (e^22.2 = 4.3e9 in float32) so that it stays finite wherever log r is (``exp`` of
    float32 overflows above 88.7). For log r <= c the plain weight, bit for bit; above c it is the constant e^c (no
    gradient through the weight, the estimate it multiplies keeps its own).

    :param log_ratio: log r = log pi_theta(a|s) - log pi_old(a|s), per step
    :return: the per-step weights
    """
    return th.exp(th.clamp(log_ratio, max=kl_k3_linear_from(log_ratio.dtype)))


def sampled_kl(old_log_prob: th.Tensor, log_prob: th.Tensor, estimator: str = "k3", direction: str = "forward") -> th.Tensor:
    """
    Sample estimate of the KL between pi_old and pi_theta from actions a_t ~ pi_old (the rollout's), per step.
    With r = pi_theta(a|s) / pi_old(a|s) and k the estimator ``KL_ESTIMATORS[estimator]``:

        forward: KL[pi_old || pi_theta] ~ k(log pi_old(a), log pi_theta(a))           k1 = -log r,   k3 = r - 1 - log r
        reverse: KL[pi_theta || pi_old] ~ r * k(log pi_theta(a), log pi_old(a))       k1 = r log r,  k3 = r log r - r + 1

    The reverse form importance-weights the estimator for samples of pi_theta. With k1 or k3 each is unbiased for
    its KL, and so is its gradient with respect to theta; k3 is never negative (k2 is biased). Both are finite
    wherever the log-probabilities are: k3 continues linearly for large log r (:func:`kl_k3`), and the reverse
    weight r is capped at e^c (:func:`kl_importance_weight`).

    :param old_log_prob: ``(batch,)`` log pi_old(a_t|s_t), stored at collection
    :param log_prob: ``(batch,)`` log pi_theta(a_t|s_t)
    :param estimator: a key of :data:`KL_ESTIMATORS` (``"k1"``, ``"k2"`` or ``"k3"``)
    :param direction: ``"forward"`` or ``"reverse"``
    :return: ``(batch,)`` per-step estimates
    """
    estimate = KL_ESTIMATORS[estimator]
    if direction == "forward":
        return estimate(old_log_prob, log_prob)
    return kl_importance_weight(log_prob - old_log_prob) * estimate(log_prob, old_log_prob)


def ratio_corrected_kl(
    log_prob: th.Tensor, old_log_prob: th.Tensor, ref_log_prob: th.Tensor, estimator: str = "k3"
) -> th.Tensor:
    """
    GRPO's KL term D_t with the importance correction for samples of pi_old (``kl_ratio_correction``), per step,
    with D = ``KL_ESTIMATORS[estimator](log pi_theta, log pi_ref)`` and r = pi_theta / pi_old
    (:func:`kl_importance_weight`, finite for any log r):

        k1, k3:  r * D            E_{pi_old}[grad (r D)] = grad E_{pi_theta}[D] = grad KL(pi_theta || pi_ref)
        k2:      sg(r) * D        E_{pi_theta}[k2] is not the KL, but E_{pi_theta}[grad k2] is its gradient, so the
                                  ratio is a detached importance weight: E_{pi_old}[sg(r) grad k2] = grad KL

    :param log_prob: ``(batch,)`` log pi_theta(a_t|s_t)
    :param old_log_prob: ``(batch,)`` log pi_old(a_t|s_t), the acting policy's
    :param ref_log_prob: ``(batch,)`` log pi_ref(a_t|s_t)
    :param estimator: a key of :data:`KL_ESTIMATORS`
    :return: ``(batch,)`` per-step terms
    """
    ratio = kl_importance_weight(log_prob - old_log_prob)
    return (ratio.detach() if estimator == "k2" else ratio) * KL_ESTIMATORS[estimator](log_prob, ref_log_prob)


def analytic_kl(
    old: Sequence[th.distributions.Distribution], new: Sequence[th.distributions.Distribution], direction: str = "forward"
) -> th.Tensor:
    """
    Exact KL between two action distributions, per state, summed over independent action dimensions/components:

        forward: KL[pi_old(.|s) || pi_theta(.|s)] = sum_j KL[old_j || new_j]
        reverse: KL[pi_theta(.|s) || pi_old(.|s)] = sum_j KL[new_j || old_j]

    :param old: torch distributions of pi_old, one per independent component (e.g. one Categorical per dimension of
        a MultiDiscrete action), each with a leading batch dimension
    :param new: torch distributions of pi_theta, same layout
    :param direction: ``"forward"`` or ``"reverse"``
    :return: ``(batch,)`` KL per state
    """
    kls = []
    for p_old, p_new in zip(old, new, strict=True):
        p, q = (p_old, p_new) if direction == "forward" else (p_new, p_old)
        kl = th.distributions.kl_divergence(p, q)
        kls.append(kl.reshape(kl.shape[0], -1).sum(dim=1))
    return th.stack(kls).sum(dim=0)


def categorical_kl(p_logits: th.Tensor, p_probs: th.Tensor, q_logits: th.Tensor, q_probs: th.Tensor) -> th.Tensor:
    """
    KL between Categorical distributions given by normalised logits and probabilities, over the last dimension:

        KL(p || q) = sum_a p(a) (log p(a) - log q(a))        (inf where q(a) = 0 < p(a); terms with p(a) = 0 are 0)

    torch's ``kl_divergence(Categorical, Categorical)``, the same values and gradients, with its in-place masked
    assignments written as ``masked_fill``.
    """
    t = p_probs * (p_logits - q_logits)
    return t.masked_fill(q_probs == 0, math.inf).masked_fill(p_probs == 0, 0.0).sum(-1)


def normal_kl(p_loc: th.Tensor, p_scale: th.Tensor, q_loc: th.Tensor, q_scale: th.Tensor) -> th.Tensor:
    """
    KL between univariate Normal distributions, elementwise (torch's ``kl_divergence(Normal, Normal)``):

        KL(p || q) = 0.5 * ( (s_p / s_q)^2 + ((m_p - m_q) / s_q)^2 - 1 - log (s_p / s_q)^2 )
    """
    var_ratio = (p_scale / q_scale).pow(2)
    t1 = ((p_loc - q_loc) / q_scale).pow(2)
    return 0.5 * (var_ratio + t1 - 1 - var_ratio.log())


def kl_parameters(params: th.Tensor, like: Sequence[th.distributions.Distribution]) -> th.Tensor:
    """
    The layout :func:`analytic_kl_from_parameters` reads, from a distribution's parameters laid end to end
    (``[loc, scale]`` for a Normal, the logits for a Categorical or a Bernoulli, in the order of the components of
    ``like``): a Categorical's logits become ``[normalised logits, probabilities]`` (what ``Categorical(logits=...)``
    computes), the rest is unchanged. Computed once per rollout for pi_old, so that the minibatches of every epoch
    read them instead of normalising again.

    :param params: ``(batch, P)`` parameters
    :param like: torch distributions with the layout of ``params`` (any batch size)
    :return: ``(batch, P + sum of the Categorical sizes)`` parameters
    """
    parts = []
    offset = 0
    for component in like:
        if isinstance(component, Normal):
            size = component.loc.shape[1] * 2
        elif isinstance(component, Categorical | Bernoulli):
            size = component.logits.shape[1]
        else:
            raise NotImplementedError(
                f"kl_parameters supports Normal, Categorical and Bernoulli, got {type(component).__name__}"
            )
        part = params[:, offset : offset + size]
        if isinstance(component, Categorical):
            logits = part - part.logsumexp(dim=-1, keepdim=True)
            parts += [logits, th.softmax(logits, dim=-1)]
        else:
            parts.append(part)
        offset += size
    if offset != params.shape[1]:
        raise ValueError(f"Got {params.shape[1]} distribution parameters per step, the policy has {offset}")
    return th.cat(parts, dim=1)


def analytic_kl_from_parameters(
    old_params: th.Tensor, new: Sequence[th.distributions.Distribution], direction: str = "forward"
) -> th.Tensor:
    """
    :func:`analytic_kl` between pi_old, given by its parameters laid end to end in one ``(batch, P)`` tensor in the
    layout of :func:`kl_parameters`, and pi_theta, given by its torch distributions (Normal, Categorical or Bernoulli
    components). The layout of ``old_params`` follows the components of ``new``: ``[loc, scale]`` for a Normal,
    ``[normalised logits, probabilities]`` for a Categorical, the logits for a Bernoulli. The same values and
    gradients as :func:`analytic_kl` on distributions rebuilt from the parameters.

    :func:`categorical_kl` and :func:`normal_kl` are applied to the parameter tensors, without building a torch
    distribution for pi_old or going through ``kl_divergence``'s dispatch and its in-place masked assignments.

    :param old_params: ``(batch, P)`` parameters of pi_old (:func:`kl_parameters`)
    :param new: torch distributions of pi_theta for the same states
    :param direction: ``"forward"`` (KL[pi_old || pi_theta]) or ``"reverse"``
    :return: ``(batch,)`` KL per state
    """
    forward = direction == "forward"
    kls = []
    offset = 0
    for component in new:
        if isinstance(component, Categorical):
            size = component.logits.shape[1]
            old_logits = old_params[:, offset : offset + size]
            old_probs = old_params[:, offset + size : offset + 2 * size]
            new_logits, new_probs = component.logits, component.probs
            if forward:
                kl = categorical_kl(old_logits, old_probs, new_logits, new_probs)
            else:
                kl = categorical_kl(new_logits, new_probs, old_logits, old_probs)
            offset += 2 * size
        elif isinstance(component, Normal):
            size = component.loc.shape[1]
            old_loc, old_scale = old_params[:, offset : offset + size], old_params[:, offset + size : offset + 2 * size]
            if forward:
                kl = normal_kl(old_loc, old_scale, component.loc, component.scale).sum(dim=1)
            else:
                kl = normal_kl(component.loc, component.scale, old_loc, old_scale).sum(dim=1)
            offset += 2 * size
        elif isinstance(component, Bernoulli):  # through torch's kl_divergence
            size = component.logits.shape[1]
            old = Bernoulli(logits=old_params[:, offset : offset + size], validate_args=False)
            kl = analytic_kl([old], [component], direction)
            offset += size
        else:
            raise NotImplementedError(
                f"analytic_kl_from_parameters supports Normal, Categorical and Bernoulli components, got "
                f"{type(component).__name__}"
            )
        kls.append(kl)
    if offset != old_params.shape[1]:
        raise ValueError(f"Stored {old_params.shape[1]} distribution parameters per step, the policy has {offset}")
    return kls[0] if len(kls) == 1 else th.stack(kls).sum(dim=0)


def adapted_kl_coef(kl_coef: float, kl: float, kl_target: float, factor: float = 2.0, threshold: float = 1.5) -> float:
    """
    The adaptive-penalty rule of Schulman et al. (2017), Section 4:

        d < d_targ / threshold  ->  beta / factor
        d > d_targ * threshold  ->  beta * factor
        otherwise                ->  beta

    :param kl_coef: beta
    :param kl: d, the measured mean KL
    :param kl_target: d_targ
    :param factor: multiplicative step (2 in the paper)
    :param threshold: width of the dead band around d_targ (1.5 in the paper)
    :return: the new beta
    """
    if kl < kl_target / threshold:
        return kl_coef / factor
    if kl > kl_target * threshold:
        return kl_coef * factor
    return kl_coef
