"""
GRPO: the group-relative objective and its update.

The rollout, groups of complete episodes that share their start, is collected by
:class:`~sb3_pg_ext.common.groups.GroupedOnPolicyAlgorithm`; the advantages, loss weights and KL estimators are in
:mod:`sb3_pg_ext.estimators`. This file turns a rollout into the update's data (:meth:`GRPO._prepare_update`), writes
the clipped, KL-penalised objective (:meth:`GRPO._loss`) and runs its epochs (:meth:`GRPO.train`).

It is longer than SB3's 200-450 lines per algorithm (about 720): the class docstring documents 40 keyword
arguments and the constructor validates each of them and builds the reference policy; with collection and formulas
elsewhere, what remains here is the objective and its update.
"""

import warnings
from typing import Any, ClassVar, NamedTuple, TypeVar

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3.common.policies import BasePolicy
from stable_baselines3.common.type_aliases import GymEnv, MaybeCallback, Schedule, TensorDict
from stable_baselines3.common.utils import FloatSchedule

from sb3_pg_ext.common.buffers import EpisodeBatch, select_steps
from sb3_pg_ext.common.checks import (
    assert_finite,
    assert_finite_gradients,
    check_bool,
    check_choice,
    check_float,
    check_int,
    check_learning_rate,
)
from sb3_pg_ext.common.groups import GROUP_SEED_LIMIT, GroupedOnPolicyAlgorithm, GroupStartError
from sb3_pg_ext.common.noise import check_common_noise_distribution
from sb3_pg_ext.estimators import (
    KL_ESTIMATORS,
    episode_discounted_returns,
    episode_ids_from_starts,
    episode_sums,
    group_advantages,
    group_process_advantages,
    group_reward_to_go_advantages,
    kl_k1,
    loss_aggregation_weights,
    ratio_corrected_kl,
    vine_advantages,
)
from sb3_pg_ext.grpo.policies import ActorCnnPolicy, ActorPolicy, MultiInputActorPolicy, TokenPolicy

SelfGRPO = TypeVar("SelfGRPO", bound="GRPO")

SCALE_REWARDS = ("group", "batch", "none")
GROUP_STARTS = ("reset", "branch")
BRANCH_ADVANTAGES = ("group", "vine", "first")
BRANCH_NOISES = ("independent", "common")
ADVANTAGES = ("outcome", "process", "reward_to_go")
LOSS_AGGREGATIONS = ("seq_sum", "seq_mean", "token_mean", "constant")


class UpdateData(NamedTuple):
    """What one GRPO update trains on: the rollout's steps and their fixed per-step quantities."""

    observations: th.Tensor | TensorDict  # (T, *obs_shape)
    actions: th.Tensor  # (T, *action_shape)
    old_log_prob: th.Tensor  # (T,) log pi_old(a_t|s_t), the policy that acted
    ref_log_prob: th.Tensor | None  # (T,) log pi_ref(a_t|s_t); None without a reference policy
    advantages: th.Tensor  # (T,) A_{i,g,t}
    weights: th.Tensor  # (T,) w_{e,t} of the loss aggregation; 0 for steps left out of the loss

    @property
    def trained_steps(self) -> th.Tensor:
        """Indices of the steps that enter the loss."""
        return th.nonzero(self.weights > 0).squeeze(1)


def _default_optimizer(policy_kwargs: dict[str, Any] | None) -> dict[str, Any]:
    """
    GRPO's optimiser defaults: AdamW, with ``weight_decay=0`` unless the user sets it (torch's default
    0.01 would shrink every parameter, ``log_std`` and token embeddings included, even when every advantage is 0).
    """
    policy_kwargs = {"optimizer_class": th.optim.AdamW, **(policy_kwargs or {})}
    optimizer_class = policy_kwargs["optimizer_class"]
    if isinstance(optimizer_class, type) and issubclass(optimizer_class, th.optim.AdamW):
        policy_kwargs["optimizer_kwargs"] = {"weight_decay": 0.0, **(policy_kwargs.get("optimizer_kwargs") or {})}
    return policy_kwargs


class GRPO(GroupedOnPolicyAlgorithm):
    """
    Group Relative Policy Optimisation: PPO's clipped surrogate without a critic, with the advantage of each
    episode taken relative to a group of episodes that start from the same state (DeepSeekMath, Shao et al., 2024).

    Paper: https://arxiv.org/abs/2402.03300

    One update: draw ``n_groups`` seeds; play ``group_size`` complete episodes from each, every one
    reset with its group's seed (so a group shares its initial state, or prompt), with any number of envs; then
    ``n_epochs`` epochs of minibatch steps maximising

        J = sum_{e,t} w_{e,t} [ min(r_t A_t, clip(r_t, 1 - eps_low, 1 + eps_high) A_t) - beta D_t ]

    with r_t = pi_theta(a_t|s_t) / pi_old(a_t|s_t), A_t the group-relative advantage
    ``(R_{i,g} - mean_i) / (std_i + eps)`` of the step's episode, D_t an estimate of KL(pi_theta || pi_ref) and
    w_{e,t} the loss aggregation's weight (``seq_sum``: w = 1/(B G), the DeepSeekMath formula).
    ``advantage="reward_to_go"`` gives each step credit for what follows it only: A_{i,g,t} = (G_{i,g,t} - mean) /
    (std + eps) with G_{i,g,t} = sum_{j >= t} gamma^{j-t} r_{i,g,j}, mean and std over the episodes of group i that
    have a step t. They share the initial state, so the mean is a per-step baseline estimated without a critic
    (the idea of the group policy gradient of Chen et al. 2025); it suits long episodes with dense rewards, where
    one return for every step of an episode credits each action with everything that happened before it.

    The rollout (:class:`~sb3_pg_ext.common.groups.GroupedOnPolicyAlgorithm`): groups collected in *waves* of one
    episode per env, with any number of envs, each episode reset with its group's seed; each wave checks that the
    episodes of a group start from equal observations and raises :class:`GroupStartError` otherwise. The budget of
    ``learn(total_timesteps)``: no new group starts once it is reached, and a started group is never cut, so a run
    may end past its budget by the rest of the groups under way and its last update may hold fewer than
    ``n_groups`` groups.

    Branch groups (``group_start="branch"``, TRPO's vine rollouts and VinePPO's Monte-Carlo advantages in group
    form): each rollout first plays one *trunk* episode per env with pi_old, draws ``n_groups`` branch states s_b
    uniformly from the trunk's steps, restores each into the ``group_size`` envs of its group
    (:mod:`sb3_pg_ext.common.snapshots`) and plays ``group_size`` continuations of at most ``branch_horizon``
    steps (fewer on termination or the env's own truncation). Continuation g of group i has the truncated
    discounted return R_{i,g} = sum_k gamma^k r_{g,k}; ``"outcome"`` advantages normalise it within the group as
    above; ``"process"`` and ``"reward_to_go"`` ones give the action at offset k its discounted reward-to-go from
    k, normalised across the continuations of its group still running at k. Only the continuations are trained
    on. Every env step counts in ``num_timesteps`` (trunk, continuations, replay), logged as
    ``rollout/trunk_steps``, ``rollout/branch_steps`` and ``rollout/replay_steps``; ``rollout/ep_rew_mean``
    describes the trunk episodes.

    No value network is built or trained: the policies are actor-only (:mod:`sb3_pg_ext.common.policies`). The
    optimiser is AdamW with ``weight_decay=0`` unless ``policy_kwargs=dict(optimizer_kwargs=dict(weight_decay=...))``
    says otherwise (torch's default 0.01 would move every parameter, ``log_std`` included, even when every advantage
    is 0).

    The KL term's expected gradient. Actions come from pi_old, so the loss term ``beta * D_t`` does not follow
    grad KL(pi_theta || pi_ref) in expectation (k1: no gradient on the first minibatch; k3: the forward KL's; the
    table per estimator, checked by exact enumeration through :meth:`_loss`, is in docs/grpo.md).
    ``kl_ratio_correction`` multiplies D_t by r_t = pi_theta/pi_old, not detached, for k1 and k3 (E_old[grad(r D)] =
    grad E_theta[D] = grad KL); for k2 by the *detached* r_t (E_theta[k2] is not the KL, but E_theta[grad k2] is
    its gradient, so E_old[sg(r) grad k2] = grad KL). ``kl_in_reward`` gives the exact gradient of the
    reverse-KL-regularised return instead.

    :param policy: The policy model to use (MlpPolicy, CnnPolicy, MultiInputPolicy, TokenPolicy)
    :param env: The environment to learn from (if registered in Gym, can be str)
    :param learning_rate: The learning rate, it can be a function of the current progress remaining (from 1 to 0)
    :param group_size: G, episodes per group (all reset with the group's seed); G >= 2
    :param n_groups: B, groups per update
    :param n_epochs: M, epochs over the rollout per update
    :param batch_size: Minibatch size in steps (None: the whole rollout, one gradient step per epoch)
    :param clip_range: eps_low: the ratio is clipped below at 1 - eps_low (and above at 1 + eps_low unless
        ``clip_range_high`` is set); a float or a schedule of the progress remaining
    :param clip_range_high: eps_high, the upper clip 1 + eps_high (DAPO's asymmetric clip); None: ``clip_range``
    :param beta: KL coefficient; 0 builds and evaluates no reference policy
    :param reference_policy: The reference policy pi_ref (a policy of the same class and architecture, e.g. a
        pretrained model's ``.policy``; its weights are copied); None: a frozen copy of the initial policy
    :param ref_update_interval: Refresh pi_ref every this many updates (None: never)
    :param ref_mixup_alpha: Refresh rule pi_ref <- alpha * pi_theta + (1 - alpha) * pi_ref, parameter-wise
        (1.0: hard copy)
    :param kl_estimator: D_t in the loss: ``"k3"`` (default: pi_ref/pi_theta - log(pi_ref/pi_theta) - 1),
        ``"k2"`` (0.5 log(pi_ref/pi_theta)^2) or ``"k1"`` (log(pi_theta/pi_ref))
    :param kl_ratio_correction: Multiply D_t by r_t (not detached for k1 and k3, detached for k2): the term's
        expected gradient is then grad KL(pi_theta || pi_ref) exactly, for every estimator, although actions come
        from pi_old (DeepSeek-V3.2; see above)
    :param kl_in_reward: Instead of a loss term, subtract beta * k1 = beta * log(pi_old/pi_ref) from every step's
        reward before the advantages (``kl_estimator`` is then unused)
    :param scale_rewards: Std that divides the centred returns: ``"group"`` (population std of the group),
        ``"batch"`` (of the whole rollout) or ``"none"``
    :param advantage: ``"outcome"`` (the episode's normalised return at every step), ``"process"``
        (DeepSeekMath process supervision: step rewards normalised across the group, summed from t to the end;
        with branch groups: as ``"reward_to_go"``) or ``"reward_to_go"`` (the step's discounted reward-to-go
        G_t = sum_{j >= t} gamma^{j-t} r_j, normalised across the group's episodes, or continuations, that have a
        step t: a per-step baseline from the group, with per-step credit)
    :param group_start: How a group starts: ``"reset"`` (every episode of the group reset with the group's seed)
        or ``"branch"`` (continuations from a state of a trunk episode, restored by env snapshots; the env must
        support them: :mod:`sb3_pg_ext.common.snapshots`, and ``SubprocVecEnv`` needs ``SnapshotWrapper``)
    :param branch_horizon: H, the most steps of a continuation (``group_start="branch"`` only; None: to the end of
        the episode)
    :param branch_advantage: What branch groups train: ``"group"`` (the continuations, with the group-relative
        advantages of ``advantage``) or ``"vine"`` (VinePPO: every trunk state s_t gets ``group_size``
        continuations whose mean discounted return estimates V(s_t), and the trunk's own actions are trained with
        A_t = r_t + gamma V(s_{t+1}) - V(s_t); ``n_groups`` is unused, ``scale_rewards`` other than ``"none"``
        divides by the rollout's std) or ``"first"`` (TRPO's vine: only each continuation's first action is
        trained, with the group-relative ``"outcome"`` advantage of the continuation's return; the loss is their
        mean). ``group_start="branch"`` only
    :param branch_noise: ``"independent"`` (every action drawn independently) or ``"common"`` (common random
        numbers: after their first action, the continuations of a group draw their k-th action from the same
        noise, so that their returns differ by what the first action did; needs ``branch_advantage="first"``, a
        diagonal Gaussian without gSDE or a categorical action distribution)
    :param gamma: Discount of the continuations' returns (``group_start="branch"``) and of the reward-to-go of
        ``advantage="reward_to_go"``; the other advantages of reset groups use undiscounted episode sums, so it
        must be 1 there
    :param loss_aggregation: ``"seq_sum"`` (1/(BG) sum_e sum_t), ``"seq_mean"`` (each episode divided by its
        length), ``"token_mean"`` (mean over all steps) or ``"constant"`` (divided by ``max_length``)
    :param max_length: L of ``"constant"`` aggregation; None: the env's ``spec.max_episode_steps``
    :param drop_zero_std_groups: Leave groups whose returns are all equal out of the loss and its normalisers
    :param mask_truncated: Leave cut-off episodes out of the loss and its normalisers (they still count in their
        group's statistics): those ended by a time limit (``truncated``, from ``TimeLimit``) and those that ended
        at an env's length limit, marked ``info["length_limit"]=True`` (the token tasks' answers that filled their
        slots without EOS; TRL's ``mask_truncated_completions``)
    :param advantage_eps: eps added to the std
    :param min_std: Floor of the std, so that near-constant groups cannot blow advantages up
    :param ent_coef: Entropy coefficient (the entropy is aggregated with the same weights as J)
    :param max_grad_norm: The maximum value for the gradient clipping (None: no clipping)
    :param verify_group_starts: Check at every wave that each group's episodes start from equal observations
    :param use_sde: Whether to use generalized State Dependent Exploration (gSDE)
    :param sde_sample_freq: Sample a new noise matrix every n steps when using gSDE (-1: once per wave)
    :param stats_window_size: Window size for the rollout logging, specifying the number of episodes to average
        the reported success rate, mean episode length, and mean reward over
    :param tensorboard_log: the log location for tensorboard (if None, no logging)
    :param policy_kwargs: additional arguments to be passed to the policy on creation (``optimizer_class``
        defaults to ``th.optim.AdamW``, whose ``optimizer_kwargs`` default to ``dict(weight_decay=0.0)``)
    :param verbose: Verbosity level: 0 for no output, 1 for info messages, 2 for debug messages
    :param seed: Seed for the pseudo random generators (it also seeds the generator of the group seeds)
    :param device: Device (cpu, cuda, ...) on which the code should be run.
    :param _init_setup_model: Whether or not to build the network at the creation of the instance
    """

    policy_aliases: ClassVar[dict[str, type[BasePolicy]]] = {
        "MlpPolicy": ActorPolicy,
        "CnnPolicy": ActorCnnPolicy,
        "MultiInputPolicy": MultiInputActorPolicy,
        "TokenPolicy": TokenPolicy,
    }
    policy: ActorPolicy  # type: ignore[assignment]
    clip_range: Schedule
    clip_range_high: Schedule | None

    def __init__(
        self,
        policy: str | type[ActorPolicy],
        env: GymEnv | str,
        learning_rate: float | Schedule = 1e-3,
        group_size: int = 8,
        n_groups: int = 8,
        n_epochs: int = 4,
        batch_size: int | None = 256,
        clip_range: float | Schedule = 0.2,
        clip_range_high: float | Schedule | None = None,
        beta: float = 0.0,
        reference_policy: BasePolicy | None = None,
        ref_update_interval: int | None = None,
        ref_mixup_alpha: float = 1.0,
        kl_estimator: str = "k3",
        kl_ratio_correction: bool = False,
        kl_in_reward: bool = False,
        scale_rewards: str = "group",
        advantage: str = "outcome",
        group_start: str = "reset",
        branch_horizon: int | None = None,
        branch_advantage: str = "group",
        branch_noise: str = "independent",
        gamma: float = 1.0,
        loss_aggregation: str = "seq_sum",
        max_length: int | None = None,
        drop_zero_std_groups: bool = False,
        mask_truncated: bool = False,
        advantage_eps: float = 1e-4,
        min_std: float = 1e-3,
        ent_coef: float = 0.0,
        max_grad_norm: float | None = 1.0,
        verify_group_starts: bool = True,
        use_sde: bool = False,
        sde_sample_freq: int = -1,
        stats_window_size: int = 100,
        tensorboard_log: str | None = None,
        policy_kwargs: dict[str, Any] | None = None,
        verbose: int = 0,
        seed: int | None = None,
        device: th.device | str = "auto",
        _init_setup_model: bool = True,
    ):
        check_learning_rate(learning_rate)
        check_int("group_size", group_size, minimum=2)
        check_int("n_groups", n_groups, minimum=1)
        check_int("n_epochs", n_epochs, minimum=1)
        if batch_size is not None:
            check_int("batch_size", batch_size, minimum=1)
        if not callable(clip_range):
            check_float("clip_range", clip_range, 0.0, 1.0, low_inclusive=False, high_inclusive=False)
        if not callable(clip_range_high):
            check_float("clip_range_high", clip_range_high, low=0.0, low_inclusive=False, allow_none=True)
        check_float("beta", beta, low=0.0)
        if reference_policy is not None:
            if not isinstance(reference_policy, BasePolicy):
                raise TypeError(
                    f"`reference_policy` must be an SB3 policy (e.g. a trained model's `.policy`) or None; "
                    f"got {type(reference_policy).__name__}"
                )
            if beta == 0:
                raise ValueError("`reference_policy` is only used with `beta` > 0 (beta = 0 builds no reference policy)")
        if ref_update_interval is not None:
            check_int("ref_update_interval", ref_update_interval, minimum=1)
        check_float("ref_mixup_alpha", ref_mixup_alpha, 0.0, 1.0, low_inclusive=False)
        check_choice("kl_estimator", kl_estimator, tuple(KL_ESTIMATORS))
        check_bool("kl_ratio_correction", kl_ratio_correction)
        check_bool("kl_in_reward", kl_in_reward)
        if kl_in_reward and kl_ratio_correction:
            raise ValueError("`kl_ratio_correction` corrects the KL loss term; with `kl_in_reward=True` there is none")
        check_choice("scale_rewards", scale_rewards, SCALE_REWARDS)
        check_choice("advantage", advantage, ADVANTAGES)
        check_choice("group_start", group_start, GROUP_STARTS)
        if branch_horizon is not None:
            check_int("branch_horizon", branch_horizon, minimum=1)
        check_choice("branch_advantage", branch_advantage, BRANCH_ADVANTAGES)
        check_choice("branch_noise", branch_noise, BRANCH_NOISES)
        if branch_advantage == "first" and (group_start != "branch" or advantage != "outcome"):
            raise ValueError(
                "`branch_advantage='first'` trains the first action of each continuation of a restored state with its "
                "group-relative return: it needs `group_start='branch'` and `advantage='outcome'` (got "
                f"{group_start!r}, {advantage!r})"
            )
        if branch_noise == "common" and branch_advantage != "first":
            raise ValueError(
                "`branch_noise='common'` shares the noise of a group's continuations after their first action, so a "
                "later action is correlated with the group's baseline: only the first actions can be trained, "
                f"set `branch_advantage='first'` (got {branch_advantage!r})"
            )
        check_float("gamma", gamma, 0.0, 1.0, low_inclusive=False)
        if branch_advantage == "vine":
            if group_start != "branch":
                raise ValueError(
                    "`branch_advantage='vine'` estimates values from continuations of restored states: it needs "
                    f"`group_start='branch'`, got {group_start!r}"
                )
            if advantage != "outcome" or kl_in_reward:
                raise ValueError(
                    "`branch_advantage='vine'` trains the trunk with A_t = r_t + gamma V(s_{t+1}) - V(s_t): leave "
                    f"`advantage='outcome'` and `kl_in_reward=False` (got {advantage!r}, {kl_in_reward})"
                )
        if group_start == "reset":
            if branch_horizon is not None:
                raise ValueError(
                    f"`branch_horizon={branch_horizon}` is only used with `group_start='branch'` (reset groups play "
                    "whole episodes): set `group_start='branch'` or leave `branch_horizon=None`"
                )
            if gamma != 1.0 and advantage != "reward_to_go":
                raise ValueError(
                    f"`gamma={gamma}` discounts the continuations of `group_start='branch'` and the reward-to-go of "
                    f"`advantage='reward_to_go'`; with `group_start='reset'` and `advantage={advantage!r}` the returns "
                    "are undiscounted episode sums: leave `gamma=1.0` or set `advantage='reward_to_go'`"
                )
        elif mask_truncated:
            raise ValueError(
                "`mask_truncated=True` leaves cut-off episodes out of the loss, but with `group_start='branch'` every "
                "continuation that reaches `branch_horizon` is cut off: use one or the other"
            )
        check_choice("loss_aggregation", loss_aggregation, LOSS_AGGREGATIONS)
        if max_length is not None:
            check_int("max_length", max_length, minimum=1)
        check_bool("drop_zero_std_groups", drop_zero_std_groups)
        check_bool("mask_truncated", mask_truncated)
        check_float("advantage_eps", advantage_eps, low=0.0)
        check_float("min_std", min_std, low=0.0)
        if advantage_eps == 0 and min_std == 0 and scale_rewards != "none":
            raise ValueError("`advantage_eps` and `min_std` cannot both be 0: the std of a group would be unbounded below")
        check_float("ent_coef", ent_coef, low=0.0)
        check_float("max_grad_norm", max_grad_norm, low=0.0, low_inclusive=False, allow_none=True)
        check_bool("verify_group_starts", verify_group_starts)
        check_int("sde_sample_freq", sde_sample_freq, minimum=-1)
        if ref_update_interval is not None and beta == 0:
            warnings.warn(
                f"`ref_update_interval={ref_update_interval}` has no effect with `beta=0`: no reference policy is "
                "built (set `beta` > 0 for a KL penalty to a refreshed reference, or leave `ref_update_interval=None`)",
                UserWarning,
                stacklevel=2,
            )
        policy_kwargs = _default_optimizer(policy_kwargs)

        super().__init__(
            policy,  # type: ignore[arg-type]
            env,
            learning_rate=learning_rate,
            n_steps=0,  # SB3 steps per env: unused, a rollout is n_groups groups of group_size episodes
            gamma=gamma,  # branch groups: the continuations' returns; reward_to_go: its discount; else 1
            gae_lambda=1.0,
            ent_coef=ent_coef,
            vf_coef=0.0,
            max_grad_norm=max_grad_norm,  # type: ignore[arg-type]
            use_sde=use_sde,
            sde_sample_freq=sde_sample_freq,
            stats_window_size=stats_window_size,
            tensorboard_log=tensorboard_log,
            policy_kwargs=policy_kwargs,
            verbose=verbose,
            device=device,
            seed=seed,
            _init_setup_model=False,
            supported_action_spaces=(spaces.Box, spaces.Discrete, spaces.MultiDiscrete, spaces.MultiBinary),
        )
        if loss_aggregation == "constant" and max_length is None and branch_horizon is not None:
            max_length = branch_horizon  # the longest continuation
        if loss_aggregation == "constant" and max_length is None:
            spec = self.env.get_attr("spec", indices=[0])[0] if self.env is not None else None
            max_length = getattr(spec, "max_episode_steps", None)
            if max_length is None:
                raise ValueError(
                    "`loss_aggregation='constant'` divides by a fixed maximum episode length: pass `max_length` "
                    "(the env's spec has no `max_episode_steps`)"
                )
        self.group_size = group_size
        self.n_groups = n_groups
        self.n_episodes = group_size * n_groups
        self.min_steps = 0
        self.n_epochs = n_epochs
        self.batch_size = batch_size
        self.clip_range = clip_range  # type: ignore[assignment]
        self.clip_range_high = clip_range_high  # type: ignore[assignment]
        self.beta = beta
        self.ref_update_interval = ref_update_interval
        self.ref_mixup_alpha = ref_mixup_alpha
        self.kl_estimator = kl_estimator
        self.kl_ratio_correction = kl_ratio_correction
        self.kl_in_reward = kl_in_reward
        self.scale_rewards = scale_rewards
        self.advantage = advantage
        self.group_start = group_start
        self.branch_horizon = branch_horizon
        self.branch_advantage = branch_advantage
        self.branch_noise = branch_noise
        self.loss_aggregation = loss_aggregation
        self.max_length = max_length
        self.drop_zero_std_groups = drop_zero_std_groups
        self.mask_truncated = mask_truncated
        self.advantage_eps = advantage_eps
        self.min_std = min_std
        self.verify_group_starts = verify_group_starts
        self._reference_source = reference_policy
        self.ref_policy: ActorPolicy | None = None
        #: Kept episode (slot) -> whether it ended at the env's length limit (``info["length_limit"]``).
        self._length_limited: dict[int, bool] = {}
        #: Draws the groups' reset seeds; saved with the model, so a reloaded model continues the sequence.
        self._group_seed_rng: np.random.Generator | None = None

        if _init_setup_model:
            self._setup_model()

    def _setup_model(self) -> None:
        super()._setup_model()
        self.clip_range = FloatSchedule(self.clip_range)
        if self.clip_range_high is not None:
            self.clip_range_high = FloatSchedule(self.clip_range_high)
        if self._group_seed_rng is None:
            self._group_seed_rng = np.random.default_rng(self.seed)
        if self.branch_noise == "common":
            check_common_noise_distribution(self.policy.action_dist, self.__class__.__name__)
        self.ref_policy = None
        if self.beta > 0:
            # pi_ref: a frozen copy of the initial policy, or of the weights of the policy the user passed. Built
            # from the policy's constructor and loaded with its weights: copy.deepcopy fails on a gSDE policy (its
            # sampled exploration matrix is a non-leaf tensor), and a loaded model rebuilds it the same way before
            # its saved state_dict is loaded into it.
            self.ref_policy = self.policy_class(  # type: ignore[assignment]
                self.observation_space, self.action_space, self.lr_schedule, use_sde=self.use_sde, **self.policy_kwargs
            )
            assert self.ref_policy is not None
            self.ref_policy = self.ref_policy.to(self.device)
            source = self.policy if self._reference_source is None else self._reference_source
            try:
                self.ref_policy.load_state_dict(source.state_dict())
            except RuntimeError as error:
                raise ValueError(
                    "`reference_policy` must have the policy's class and architecture (same `policy_kwargs`): "
                    f"its weights could not be loaded: {error}"
                ) from error
            self.ref_policy.set_training_mode(False)
            self.ref_policy.requires_grad_(False)

    def _get_torch_save_params(self) -> tuple[list[str], list[str]]:
        state_dicts, tensors = super()._get_torch_save_params()
        if self.ref_policy is not None:
            state_dicts = [*state_dicts, "ref_policy"]
        return state_dicts, tensors

    def _excluded_save_params(self) -> list[str]:
        return [
            *super()._excluded_save_params(),
            "ref_policy",
            "_reference_source",
            "_length_limited",
            "_vine_values",
            "_common_noise",
        ]

    # ------------------------------------------------------------------------------------------------------------
    # Rollouts: groups of episodes that share a reset seed (collected by GroupedOnPolicyAlgorithm)
    # ------------------------------------------------------------------------------------------------------------

    def _on_rollout_start(self) -> None:
        self._length_limited = {}

    def _on_kept_episode_end(self, slot: int, info: dict) -> None:
        """Record whether the kept episode ended at the env's length limit (``info["length_limit"]``), which
        ``mask_truncated`` leaves out."""
        self._length_limited[slot] = bool(info.get("length_limit", False))

    # ------------------------------------------------------------------------------------------------------------
    # Update
    # ------------------------------------------------------------------------------------------------------------

    def _prepare_update(self, batch: EpisodeBatch) -> UpdateData:
        """Rewards -> (KL in reward) -> returns -> group-relative advantages, loss weights; logs group statistics."""
        if self.branch_advantage == "vine":
            return self._prepare_vine_update(batch)
        name, update = self.__class__.__name__, self._n_updates + 1
        n_groups, incomplete = divmod(batch.n_episodes, self.group_size)
        if incomplete or not 0 < n_groups <= self.n_groups:
            raise RuntimeError(
                f"{name}: the rollout holds {batch.n_episodes} episodes, expected 1 to {self.n_groups} complete groups "
                f"of {self.group_size}"
            )
        n_episodes = batch.n_episodes
        group_ids = th.arange(n_episodes, device=self.device) // self.group_size
        rewards = batch.rewards.to(th.float64)

        ref_log_prob = self._reference_log_prob(batch)
        if ref_log_prob is not None and self.kl_in_reward:
            # r'_t = r_t - beta * k1, k1 = log pi_old(a_t|s_t) - log pi_ref(a_t|s_t), actions drawn from pi_old
            kl_per_step = kl_k1(batch.behaviour_log_probs, ref_log_prob)
            rewards = rewards - self.beta * kl_per_step.to(th.float64)
            self.logger.record("train/kl_ref", kl_per_step.mean().item())

        # R_{i,g}: the undiscounted return of each episode (reset groups) or the truncated discounted return
        # sum_k gamma^k r_k of each continuation (branch groups); A: relative to its group.
        if self.group_start == "branch":
            returns = episode_discounted_returns(rewards, batch.episode_starts, self.gamma)
        else:
            returns = episode_sums(rewards, batch.episode_starts)
        if self.advantage == "outcome":
            episode_advantages = group_advantages(returns, group_ids, self.scale_rewards, self.advantage_eps, self.min_std)
            advantages = episode_advantages[episode_ids_from_starts(batch.episode_starts)]
        elif self.advantage == "reward_to_go" or self.group_start == "branch":
            # G_k = sum_{j >= k} gamma^{j-k} r_j, normalised across the group's episodes (continuations) running at k
            advantages = group_reward_to_go_advantages(
                rewards, batch.episode_starts, group_ids, self.gamma, self.scale_rewards, self.advantage_eps, self.min_std
            )
        else:
            advantages = group_process_advantages(
                rewards, batch.episode_starts, group_ids, self.scale_rewards, self.advantage_eps, self.min_std
            )
        assert_finite(advantages, "advantages", name, update)

        grouped = returns.view(n_groups, self.group_size)
        zero_std = grouped.amax(dim=1) == grouped.amin(dim=1)
        # Episodes cut off, by a time limit (truncated) or at the env's answer-length limit (info["length_limit"],
        # a terminal state of the token tasks): graded, but not finished answers.
        length_limited = th.tensor(
            [self._length_limited.get(k, False) for k in range(n_episodes)], dtype=th.bool, device=self.device
        )
        cut_off = batch.episode_truncated.to(self.device) | length_limited
        in_loss = th.ones(n_episodes, dtype=th.bool, device=self.device)
        if self.drop_zero_std_groups:
            in_loss &= ~zero_std[group_ids]
        if self.mask_truncated:
            in_loss &= ~cut_off
        if self.branch_advantage == "first":
            # each continuation's first step, the mean over the continuations in the loss
            per_episode = loss_aggregation_weights(th.ones_like(batch.episode_lengths), "seq_sum", in_loss)
            weights = th.zeros(batch.n_steps, dtype=per_episode.dtype, device=per_episode.device)
            weights[batch.episode_starts.to(weights.device).bool()] = per_episode
        else:
            weights = loss_aggregation_weights(batch.episode_lengths, self.loss_aggregation, in_loss, self.max_length)

        self.logger.record("rollout/group_return_std", grouped.std(dim=1, unbiased=False).mean().item())
        self.logger.record("rollout/zero_std_groups", zero_std.float().mean().item())
        self._record_rollout_stats()
        self.logger.record("rollout/truncated_fraction", batch.episode_truncated.float().mean().item())
        self.logger.record("rollout/length_limit_fraction", length_limited.float().mean().item())
        self.logger.record("train/episodes_in_loss", int(in_loss.sum().item()))
        return UpdateData(
            observations=batch.observations,
            actions=batch.actions,
            old_log_prob=batch.behaviour_log_probs,
            ref_log_prob=ref_log_prob,
            advantages=advantages.to(batch.rewards.dtype),
            weights=weights.to(batch.rewards.dtype),
        )

    def _reference_log_prob(self, batch: EpisodeBatch) -> th.Tensor | None:
        """log pi_ref(a_t|s_t) of the rollout's actions, or None without a reference policy."""
        if self.ref_policy is None:
            return None
        with th.no_grad():
            return self.ref_policy.get_distribution(batch.observations).log_prob(batch.actions)

    def _prepare_vine_update(self, batch: EpisodeBatch) -> UpdateData:
        """
        ``branch_advantage="vine"``: the trunk's steps with A_t = r_t + gamma V(s_{t+1}) - V(s_t), V from the
        continuations (:meth:`~sb3_pg_ext.common.groups.GroupedOnPolicyAlgorithm._trunk_values`); the steps whose
        values the budget left unestimated are out of the loss.
        """
        name, update = self.__class__.__name__, self._n_updates + 1
        assert self._vine_values is not None and len(self._vine_values) == batch.n_steps, "collect a vine rollout first"
        values = self._vine_values.to(self.device)
        advantages = vine_advantages(batch.rewards.to(th.float64), batch.episode_starts, values, self.gamma)
        estimated = th.isfinite(advantages)
        advantages = th.where(estimated, advantages, th.zeros_like(advantages))
        if self.scale_rewards != "none" and int(estimated.sum()) > 1:
            std = advantages[estimated].std(unbiased=False).clamp(min=self.min_std)
            advantages = advantages / (std + self.advantage_eps)
        assert_finite(advantages, "advantages", name, update)
        in_loss = th.ones(batch.n_episodes, dtype=th.bool, device=self.device)
        weights = loss_aggregation_weights(batch.episode_lengths, self.loss_aggregation, in_loss, self.max_length)
        weights = weights * estimated.to(weights.dtype)
        self._record_rollout_stats()
        if bool(th.isfinite(values).any()):
            self.logger.record("rollout/vine_value_mean", values[th.isfinite(values)].mean().item())
        self.logger.record("rollout/vine_estimated_fraction", estimated.double().mean().item())
        self.logger.record("train/episodes_in_loss", batch.n_episodes)
        return UpdateData(
            observations=batch.observations,
            actions=batch.actions,
            old_log_prob=batch.behaviour_log_probs,
            ref_log_prob=self._reference_log_prob(batch),
            advantages=advantages.to(batch.rewards.dtype),
            weights=weights.to(batch.rewards.dtype),
        )

    def _loss(
        self, data: UpdateData, steps: th.Tensor, clip_low: float, clip_high: float
    ) -> tuple[th.Tensor, dict[str, th.Tensor]]:
        """
        ``-sum_{(e,t) in steps} w_{e,t} [ min(r A, clip(r, 1 - eps_low, 1 + eps_high) A) - beta D_t + c_H H_t ]``:
        over one epoch, the minibatch losses add up to -J (the weights are the whole rollout's).

        :return: the loss and detached per-step diagnostics (ratio, clipped indicator, D_t)
        """
        log_prob, entropy = self.policy.evaluate_actions(select_steps(data.observations, steps), data.actions[steps])
        advantages, weights = data.advantages[steps], data.weights[steps]
        ratio = th.exp(log_prob - data.old_log_prob[steps])
        objective = th.min(ratio * advantages, th.clamp(ratio, 1 - clip_low, 1 + clip_high) * advantages)

        stats = {"ratio": ratio.detach(), "clipped": ((ratio < 1 - clip_low) | (ratio > 1 + clip_high)).detach()}
        if data.ref_log_prob is not None and not self.kl_in_reward:
            # D_t: the kl_estimator's estimate of KL(pi_theta || pi_ref) (k3 = pi_ref/pi_theta - log(pi_ref/pi_theta) - 1)
            ref_log_prob = data.ref_log_prob[steps]
            if self.kl_ratio_correction:
                # r_t * D_t (r detached for k2): the gradient of KL(pi_theta || pi_ref) from pi_old's samples
                kl = ratio_corrected_kl(log_prob, data.old_log_prob[steps], ref_log_prob, self.kl_estimator)
            else:
                kl = KL_ESTIMATORS[self.kl_estimator](log_prob, ref_log_prob)
            objective = objective - self.beta * kl
            stats["kl_ref"] = kl.detach()
        if self.ent_coef > 0:
            objective = objective + self.ent_coef * (-log_prob if entropy is None else entropy)
        return -(weights * objective).sum(), stats

    def train(self) -> None:
        """
        One GRPO update: ``n_epochs`` epochs of minibatch steps on the groups of the last rollout (none if the
        budget was reached before a group started).

        Every minibatch step checks the loss (before ``backward``) and the gradients (after it, before gradient
        clipping and ``optimizer.step()``) and raises ``FloatingPointError`` naming the update and the quantity if
        one holds NaN/inf, so a non-finite value never reaches the parameters.
        """
        self.policy.set_training_mode(True)
        self._update_learning_rate(self.policy.optimizer)
        clip_low = self.clip_range(self._current_progress_remaining)
        clip_high = clip_low if self.clip_range_high is None else self.clip_range_high(self._current_progress_remaining)
        name, update = self.__class__.__name__, self._n_updates + 1

        if self.rollout_buffer.n_stored_steps == 0:
            # The budget was reached before a group started: nothing to train on.
            self.logger.record("train/n_updates", self._n_updates, exclude="tensorboard")
            return
        data = self._prepare_update(self.rollout_buffer.get())
        trained = data.trained_steps
        batch_size = self.batch_size or max(len(trained), 1)
        losses, clipped, kl_ref, log_ratios = [], [], [], []
        for _ in range(self.n_epochs if len(trained) else 0):
            for minibatch in th.randperm(len(trained), device=self.device).split(batch_size):
                loss, stats = self._loss(data, trained[minibatch], clip_low, clip_high)
                # Checked before the step, so that a non-finite value never reaches the parameters.
                assert_finite(loss, "loss", name, update)
                self.policy.optimizer.zero_grad()
                loss.backward()
                assert_finite_gradients(self.policy, name, update)
                if self.max_grad_norm is not None:
                    th.nn.utils.clip_grad_norm_(self.policy.parameters(), self.max_grad_norm)
                self.policy.optimizer.step()
                losses.append(loss.item())
                clipped.append(stats["clipped"])
                log_ratios.append(th.log(stats["ratio"]))
                if "kl_ref" in stats:
                    kl_ref.append(stats["kl_ref"])
        self._n_updates += 1

        if self.ref_policy is not None and self.ref_update_interval and self._n_updates % self.ref_update_interval == 0:
            self._refresh_reference()

        if losses:
            log_ratio = th.cat(log_ratios)
            self.logger.record("train/loss", float(np.mean(losses)))
            self.logger.record("train/clip_fraction", th.cat(clipped).float().mean().item())
            self.logger.record("train/approx_kl", ((th.exp(log_ratio) - 1) - log_ratio).mean().item())
            if kl_ref:
                self.logger.record("train/kl_ref", th.cat(kl_ref).mean().item())
        self.logger.record("train/clip_range", clip_low)
        if hasattr(self.policy, "log_std"):
            self.logger.record("train/std", th.exp(self.policy.log_std).mean().item())
        self.logger.record("train/n_updates", self._n_updates, exclude="tensorboard")

    def _refresh_reference(self) -> None:
        """pi_ref <- alpha * pi_theta + (1 - alpha) * pi_ref for every parameter and buffer (alpha = 1: a hard copy)."""
        assert self.ref_policy is not None
        policy_state = self.policy.state_dict()
        with th.no_grad():
            for key, ref_value in self.ref_policy.state_dict().items():
                if th.is_floating_point(ref_value):
                    ref_value.lerp_(policy_state[key], self.ref_mixup_alpha)
                else:
                    ref_value.copy_(policy_state[key])

    def learn(
        self: SelfGRPO,
        total_timesteps: int,
        callback: MaybeCallback = None,
        log_interval: int = 1,
        tb_log_name: str = "GRPO",
        reset_num_timesteps: bool = True,
        progress_bar: bool = False,
    ) -> SelfGRPO:
        return super().learn(
            total_timesteps=total_timesteps,
            callback=callback,
            log_interval=log_interval,
            tb_log_name=tb_log_name,
            reset_num_timesteps=reset_num_timesteps,
            progress_bar=progress_bar,
        )


__all__ = ["GROUP_SEED_LIMIT", "GRPO", "GroupStartError"]
