from typing import Any, ClassVar, TypeVar

import torch as th
from gymnasium import spaces
from stable_baselines3.common.policies import ActorCriticCnnPolicy, ActorCriticPolicy, BasePolicy, MultiInputActorCriticPolicy
from stable_baselines3.common.type_aliases import GymEnv, MaybeCallback, Schedule
from stable_baselines3.common.utils import LinearSchedule, explained_variance
from torch.nn import functional as F

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
from sb3_pg_ext.common.episodic import EpisodicOnPolicyAlgorithm
from sb3_pg_ext.estimators import (
    batch_mean_baseline,
    discounted_returns,
    leave_one_out_baseline,
    optimal_baseline,
    reward_to_go,
    step_index,
)

SelfREINFORCE = TypeVar("SelfREINFORCE", bound="REINFORCE")

BASELINES = ("none", "mean", "loo", "optimal", "value")
DISCOUNT_WEIGHTINGS = ("return", "gradient")
#: Linear decay from 5e-4 to 0 over ``learn()``'s budget (see ``learning_rate`` below).
DEFAULT_LEARNING_RATE = LinearSchedule(5e-4, 0.0, 1.0)


class REINFORCE(EpisodicOnPolicyAlgorithm):
    """
    REINFORCE: Monte-Carlo policy gradient over complete episodes (Williams, 1992).

    Paper: https://link.springer.com/article/10.1007/BF00992696

    One gradient step per rollout of ``n_episodes`` complete episodes:

        g = (1/N) sum_i sum_t  w_t * grad log pi(a_{i,t}|s_{i,t}) * (psi_{i,t} - b_{i,t})

    with psi the reward-to-go (or the whole-episode return), w_t = 1 or gamma^t, and b one of five baselines.
    Rollouts are complete episodes from any number of envs: see
    :class:`~sb3_pg_ext.common.episodic.EpisodicOnPolicyAlgorithm` for which episodes are kept. In short, an
    episode is never cut short; episodes that envs start after the rollout has ``n_episodes`` are played but
    not trained on (they are counted in ``num_timesteps``), and the envs are reset before the next rollout if
    one of them is still running.

    ``learn(total_timesteps)`` starts no new episode once ``num_timesteps >= total_timesteps``: the episodes
    already running are finished and the last rollout is trained on them (it may hold fewer than ``n_episodes``;
    with one env, ``num_timesteps`` ends at most one episode above the budget). A last rollout of a single
    episode has no other episode to take ``"loo"`` or ``"optimal"`` from: that update uses b = 0 (unbiased).

    Episodes that a time limit ends (``truncated``) are bootstrapped with V(s_T) when ``baseline="value"``
    (the only setting with a critic) and otherwise use the observed rewards only.

    Discounting (J_gamma = E[sum_k gamma^k r_k]): ``discount_weighting="gradient"`` gives E[g] = grad J_gamma
    with both psi (w_t = gamma^t with reward-to-go; w_t = 1 with the whole return, already discounted from
    step 0). ``"return"`` (w_t = 1) with the whole return is the same estimator; with reward-to-go it estimates
    sum_k sum_{t <= k} gamma^(k-t) d_t E[r_k] (d_t: the derivative through the decision at step t only), each
    reward discounted from the step it credits: the usual deep-RL choice, not the gradient of J_gamma for
    gamma < 1 (for gamma = 1 all four combinations estimate grad E[sum_k r_k]).

    :param policy: The policy model to use (MlpPolicy, CnnPolicy, MultiInputPolicy)
    :param env: The environment to learn from (if registered in Gym, can be str)
    :param learning_rate: The learning rate, it can be a function of the current progress remaining (from 1 to 0).
        Default: linear decay from 5e-4 to 0 over ``learn()``'s budget (``LinearSchedule(5e-4, 0.0, 1.0)``)
    :param n_episodes: Number of complete episodes per gradient step (N >= 2 for ``"loo"`` and ``"optimal"``)
    :param min_steps: Keep starting episodes until the rollout also holds at least this many steps
        (0: exactly ``n_episodes`` episodes)
    :param gamma: Discount factor
    :param reward_to_go: psi_t = discounted reward-to-go from t (True) or the whole episode's return (False)
    :param discount_weighting: ``"return"``: w_t = 1 (discount inside the return only);
        ``"gradient"``: the discounted objective's exact gradient (w_t = gamma^t with reward-to-go, w_t = 1 with
        the whole return)
    :param baseline: ``"none"``; ``"mean"`` (the batch mean of psi, includes each episode itself: shrinks the
        gradient by (N-1)/N on one-step episodes); ``"loo"`` (leave-one-out: the same mean over the other N-1
        episodes; unbiased); ``"optimal"`` (variance-minimising constant per parameter, leave-one-out so unbiased;
        needs ``reward_to_go=False``) or ``"value"`` (a learned V(s) regressed on psi). What ``"mean"`` and
        ``"loo"`` average: with ``reward_to_go=False``, the episodes' returns, each once, b = (1/N) sum_i R_i
        (leave-one-out: (1/(N-1)) sum_{j != i} R_j); with ``reward_to_go=True``, the reward-to-go of every step,
        b = (1/T) sum_{i,t} psi_{i,t} over the T steps of the batch (leave-one-out: over the other episodes' steps)
    :param normalize_advantage: Standardise psi - b over the batch (changes the gradient's scale and biases it)
    :param ent_coef: Entropy coefficient for the loss calculation
    :param vf_coef: Value function coefficient (``baseline="value"`` only)
    :param max_grad_norm: The maximum value for the gradient clipping (None: no clipping)
    :param use_sde: Whether to use generalized State Dependent Exploration (gSDE)
    :param sde_sample_freq: Sample a new noise matrix every n steps when using gSDE (-1: once per rollout)
    :param stats_window_size: Window size for the rollout logging, specifying the number of episodes to average
        the reported success rate, mean episode length, and mean reward over
    :param tensorboard_log: the log location for tensorboard (if None, no logging)
    :param policy_kwargs: additional arguments to be passed to the policy on creation
    :param verbose: Verbosity level: 0 for no output, 1 for info messages, 2 for debug messages
    :param seed: Seed for the pseudo random generators
    :param device: Device (cpu, cuda, ...) on which the code should be run.
    :param _init_setup_model: Whether or not to build the network at the creation of the instance
    """

    policy_aliases: ClassVar[dict[str, type[BasePolicy]]] = {
        "MlpPolicy": ActorCriticPolicy,
        "CnnPolicy": ActorCriticCnnPolicy,
        "MultiInputPolicy": MultiInputActorCriticPolicy,
    }

    def __init__(
        self,
        policy: str | type[ActorCriticPolicy],
        env: GymEnv | str,
        learning_rate: float | Schedule = DEFAULT_LEARNING_RATE,
        n_episodes: int = 8,
        min_steps: int = 0,
        gamma: float = 0.99,
        reward_to_go: bool = True,
        discount_weighting: str = "return",
        baseline: str = "value",
        normalize_advantage: bool = False,
        ent_coef: float = 0.0,
        vf_coef: float = 0.5,
        max_grad_norm: float | None = None,
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
        check_int("n_episodes", n_episodes, minimum=1)
        check_int("min_steps", min_steps, minimum=0)
        check_float("gamma", gamma, 0.0, 1.0)
        check_bool("reward_to_go", reward_to_go)
        check_choice("discount_weighting", discount_weighting, DISCOUNT_WEIGHTINGS)
        check_choice("baseline", baseline, BASELINES)
        check_bool("normalize_advantage", normalize_advantage)
        check_float("ent_coef", ent_coef, low=0.0)
        check_float("vf_coef", vf_coef, low=0.0)
        check_float("max_grad_norm", max_grad_norm, low=0.0, low_inclusive=False, allow_none=True)
        check_int("sde_sample_freq", sde_sample_freq, minimum=-1)
        if baseline in ("loo", "optimal") and n_episodes < 2:
            raise ValueError(f"`baseline={baseline!r}` needs `n_episodes` >= 2 (got {n_episodes})")
        if baseline == "optimal" and reward_to_go:
            raise ValueError(
                "`baseline='optimal'` is defined for whole-episode returns: set `reward_to_go=False` "
                "(accepted baselines with reward_to_go=True: 'none', 'mean', 'loo', 'value')"
            )
        if baseline == "optimal" and normalize_advantage:
            raise ValueError("`baseline='optimal'` is a per-parameter baseline: it needs `normalize_advantage=False`")

        super().__init__(
            policy,
            env,
            learning_rate=learning_rate,
            n_steps=0,  # SB3 steps per env: unused, a rollout is n_episodes complete episodes
            gamma=gamma,
            gae_lambda=1.0,
            ent_coef=ent_coef,
            vf_coef=vf_coef,
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
            supported_action_spaces=(
                spaces.Box,
                spaces.Discrete,
                spaces.MultiDiscrete,
                spaces.MultiBinary,
            ),
        )
        self.n_episodes = n_episodes
        self.min_steps = min_steps
        self.reward_to_go = reward_to_go
        self.discount_weighting = discount_weighting
        self.baseline = baseline
        self.normalize_advantage = normalize_advantage

        if _init_setup_model:
            self._setup_model()

    @property
    def _collect_values(self) -> bool:  # type: ignore[override]
        return self.baseline == "value"

    def _returns(self, batch: EpisodeBatch) -> th.Tensor:
        """psi: reward-to-go or whole-episode return (bootstrapped at time limits when there is a critic)."""
        bootstrap = batch.bootstrap_values if self._collect_values else None
        estimator = reward_to_go if self.reward_to_go else discounted_returns
        return estimator(batch.rewards, batch.episode_starts, self.gamma, bootstrap)

    def _step_weights(self, batch: EpisodeBatch) -> th.Tensor:
        """
        w_t: 1 with ``"return"``; with ``"gradient"``, gamma^t for reward-to-go and 1 for whole-episode returns
        (psi = R = sum_k gamma^k r_k is already discounted from the episode's first step: a further gamma^t
        would discount twice).
        """
        if self.discount_weighting == "gradient" and self.reward_to_go:
            return self.gamma ** step_index(batch.episode_starts).to(batch.rewards.dtype)
        return th.ones_like(batch.rewards)

    @property
    def _baseline_weighting(self) -> str:
        """How ``"mean"`` and ``"loo"`` average psi: over episodes for whole-episode returns, over steps otherwise."""
        return "step" if self.reward_to_go else "episode"

    def _baseline(self, psi: th.Tensor, batch: EpisodeBatch) -> th.Tensor:
        """b_{i,t} for the scalar baselines (``"none"``, ``"mean"``, ``"loo"``, ``"value"``)."""
        if self.baseline == "mean":
            return batch_mean_baseline(psi, batch.episode_starts, weighting=self._baseline_weighting)
        if self.baseline == "loo":
            if batch.n_episodes < 2:
                # Only the last rollout of learn() can hold a single episode (see the class docstring).
                return th.zeros_like(psi)
            return leave_one_out_baseline(psi, batch.episode_starts, weighting=self._baseline_weighting)
        if self.baseline == "value":
            return batch.values
        return th.zeros_like(psi)

    def train(self) -> None:
        """
        One REINFORCE gradient step on the complete episodes of the last rollout.
        """
        self.policy.set_training_mode(True)
        self._update_learning_rate(self.policy.optimizer)
        name, update = self.__class__.__name__, self._n_updates + 1

        batch = self.rollout_buffer.get()
        psi = self._returns(batch)
        assert_finite(psi, "returns (psi)", name, update)
        weights = self._step_weights(batch)

        if self.baseline == "optimal" and batch.n_episodes >= 2:
            policy_loss, entropy_loss, value_loss, loss = self._optimal_baseline_step(batch, psi, weights)
            advantages = psi  # for the logs only
        else:
            advantages = psi - self._baseline(psi, batch)
            if self.normalize_advantage and advantages.numel() > 1:
                advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
            assert_finite(advantages, "advantages", name, update)

            if self.baseline == "value":
                values, log_prob, entropy = self.policy.evaluate_actions(batch.observations, batch.actions)
                value_loss = F.mse_loss(values.flatten(), psi)
            else:
                distribution = self.policy.get_distribution(batch.observations)
                log_prob, entropy = distribution.log_prob(batch.actions), distribution.entropy()
                value_loss = th.zeros((), device=self.device)

            # g = (1/N) sum_i sum_t w_t grad log pi(a|s) (psi - b)  <=>  loss = -(1/N) sum w log pi (psi - b)
            policy_loss = -(weights * log_prob * advantages).sum() / batch.n_episodes
            entropy_loss = -th.mean(-log_prob) if entropy is None else -th.mean(entropy)
            loss = policy_loss + self.ent_coef * entropy_loss + self.vf_coef * value_loss
            assert_finite(loss, "loss", name, update)

            self.policy.optimizer.zero_grad()
            loss.backward()

        # Before clipping (which would spread one non-finite entry over every gradient) and before the step, so
        # that a non-finite gradient leaves the parameters as they were.
        assert_finite_gradients(self.policy, name, update)
        if self.max_grad_norm is not None:
            th.nn.utils.clip_grad_norm_(self.policy.parameters(), self.max_grad_norm)
        self.policy.optimizer.step()
        self._n_updates += 1

        self._record_rollout_stats()
        self.logger.record("train/policy_gradient_loss", policy_loss.item())
        self.logger.record("train/entropy_loss", entropy_loss.item())
        self.logger.record("train/loss", loss.item())
        self.logger.record("train/return_mean", psi.mean().item())
        self.logger.record("train/advantage_std", advantages.std().item() if advantages.numel() > 1 else 0.0)
        if self.baseline == "value":
            self.logger.record("train/value_loss", value_loss.item())
            self.logger.record("train/explained_variance", explained_variance(batch.values.cpu().numpy(), psi.cpu().numpy()))
        if hasattr(self.policy, "log_std"):
            self.logger.record("train/std", th.exp(self.policy.log_std).mean().item())
        self.logger.record("train/n_updates", self._n_updates, exclude="tensorboard")

    def _optimal_baseline_step(
        self, batch: EpisodeBatch, psi: th.Tensor, weights: th.Tensor
    ) -> tuple[th.Tensor, th.Tensor, th.Tensor, th.Tensor]:
        """
        Gradient with the per-coordinate optimal baseline: per-episode scores g_i = sum_t w_t grad log pi
        (one forward/backward per episode, so the whole batch is processed once), then
        grad = -(1/N) sum_i g_i * (R_i - b_i) with b_i the leave-one-out optimal baseline.
        Leaves the gradient of the full loss in ``.grad``.
        """
        name, update = self.__class__.__name__, self._n_updates + 1
        params = [p for p in self.policy.parameters() if p.requires_grad]
        ends = th.cumsum(batch.episode_lengths, 0).tolist()
        starts = [0, *ends[:-1]]
        scores = []
        for start, end in zip(starts, ends, strict=True):
            distribution = self.policy.get_distribution(select_steps(batch.observations, slice(start, end)))
            log_prob = distribution.log_prob(batch.actions[start:end])
            grads = th.autograd.grad((weights[start:end] * log_prob).sum(), params, allow_unused=True)
            flat = [(th.zeros_like(p) if g is None else g).reshape(-1) for g, p in zip(grads, params, strict=True)]
            scores.append(th.cat(flat))
        score_matrix = th.stack(scores)  # (N, P)
        episode_returns = psi[th.tensor(starts, device=psi.device)]  # (N,)
        baseline = optimal_baseline(score_matrix, episode_returns, leave_one_out=True)  # (N, P)
        policy_grad = -(score_matrix * (episode_returns.unsqueeze(1) - baseline)).mean(0)
        assert_finite(policy_grad, "policy gradient", name, update)

        distribution = self.policy.get_distribution(batch.observations)
        entropy = distribution.entropy()
        log_prob = distribution.log_prob(batch.actions)
        entropy_loss = -th.mean(-log_prob) if entropy is None else -th.mean(entropy)
        # Surrogate whose value is logged: the scalar-baseline form with the mean baseline of each episode.
        policy_loss = -(weights * log_prob * (psi - baseline.mean(1).repeat_interleave(batch.episode_lengths))).sum()
        policy_loss = policy_loss.detach() / batch.n_episodes
        loss = policy_loss + self.ent_coef * entropy_loss
        assert_finite(loss, "loss", name, update)

        self.policy.optimizer.zero_grad()
        (self.ent_coef * entropy_loss).backward()
        offset = 0
        for p in params:
            n = p.numel()
            grad = policy_grad[offset : offset + n].view_as(p)
            p.grad = grad.clone() if p.grad is None else p.grad + grad
            offset += n
        self.logger.record("train/optimal_baseline_mean", baseline.mean().item())
        return policy_loss, entropy_loss, th.zeros((), device=self.device), loss

    def learn(
        self: SelfREINFORCE,
        total_timesteps: int,
        callback: MaybeCallback = None,
        log_interval: int = 1,
        tb_log_name: str = "REINFORCE",
        reset_num_timesteps: bool = True,
        progress_bar: bool = False,
    ) -> SelfREINFORCE:
        return super().learn(
            total_timesteps=total_timesteps,
            callback=callback,
            log_interval=log_interval,
            tb_log_name=tb_log_name,
            reset_num_timesteps=reset_num_timesteps,
            progress_bar=progress_bar,
        )


__all__ = ["REINFORCE"]
