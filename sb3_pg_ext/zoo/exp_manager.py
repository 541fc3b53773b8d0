"""
rl-zoo3's ``ExperimentManager`` with three changes, everything else inherited:

1. Without ``--conf-file``, the four algorithms of this package read ``sb3_pg_ext.HYPERPARAMS_DIR / <algo>.yml``
   (rl-zoo3 looks for ``hyperparams/<algo>.yml`` inside its own package, where our files are not); stock
   algorithms keep rl-zoo3's files.
2. ``--trial-id 0`` reloads trial 0: rl-zoo3 2.9.2 tests ``self.trial_id`` for truth, so the first trial of a study
   was silently ignored.
3. Robust trials (``--eval-seeds K``, ``--eval-aggregate``): :meth:`~PGExperimentManager.robust_objective` trains
   the trial's settings on K seeds, each evaluated by SB3's ``EvalCallback`` (:class:`SeedEvaluationCallback`), and
   reports the aggregate of their evaluations (see :mod:`sb3_pg_ext.zoo.aggregate`). Without either flag,
   rl-zoo3's own objective runs unchanged.
"""

from __future__ import annotations

import argparse
import copy
import inspect
import os
import random
import tempfile
import threading
from collections.abc import Callable, Sequence
from pprint import pprint
from typing import Any

import numpy as np
import optuna
import torch as th
from rl_zoo3.exp_manager import ExperimentManager
from rl_zoo3.hyperparams_opt import HYPERPARAMS_SAMPLER
from rl_zoo3.utils import ALGOS, get_callback_list
from stable_baselines3 import HerReplayBuffer
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import EvalCallback
from stable_baselines3.common.vec_env import VecEnv

from sb3_pg_ext import HYPERPARAMS_DIR
from sb3_pg_ext.zoo.aggregate import AGGREGATES
from sb3_pg_ext.zoo.registry import ZOO_ALGOS

#: Errors that prune a trial instead of ending the study: rl-zoo3's (AssertionError, ValueError) and the
#: FloatingPointError that the package's algorithms raise on non-finite losses, gradients or parameters.
PRUNED_ERRORS = (AssertionError, ValueError, FloatingPointError)


class LauncherUsageError(ValueError):
    """Bad launcher input (an unknown hyperparameter, study or trial): ``sb3-pg-zoo`` prints it on one line, exit 2."""


def _optuna_storage(storage: str) -> Any:
    """rl-zoo3's storage argument: a ``.log`` path is a journal file, anything else an RDB URL."""
    if storage.endswith(".log"):
        return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(storage))  # type: ignore[attr-defined]
    return storage


class _TrialNumber(int):
    """A trial number that is true even when it is 0 (rl-zoo3 checks ``if ... and self.trial_id:``)."""

    def __bool__(self) -> bool:
        return True


def trial_seeds(base_seed: int, trial_number: int, n_seeds: int) -> list[int]:
    """The K training seeds of a robust trial: ``SeedSequence([base_seed, trial_number]).generate_state(K)``."""
    return [int(s) for s in np.random.SeedSequence([base_seed, trial_number]).generate_state(n_seeds)]


RandomState = tuple[Any, dict[str, Any], th.Tensor]

#: Held by a robust trial from building its K models to the end of their training: the runs seed and swap the
#: process-global random generators, so two trials of one process (``--n-jobs`` > 1: Optuna's threads) must not
#: interleave, or each would draw the other's numbers. Robust trials of one process therefore run one at a time
#: (their K runs already take turns); run several processes on one ``--storage`` for parallel trials.
SEEDED_SECTION = threading.Lock()


def get_global_rng_state() -> RandomState:
    """The global generators that SB3 seeds (``set_random_seed``): Python's ``random``, NumPy's and PyTorch's (CPU)."""
    return random.getstate(), np.random.get_state(), th.get_rng_state()  # noqa: NPY002 (SB3 seeds the legacy generator)


def set_global_rng_state(state: RandomState) -> None:
    random.setstate(state[0])
    np.random.set_state(state[1])  # noqa: NPY002
    th.set_rng_state(state[2])


class EvaluationBoard:
    """
    Where the K runs of one trial take turns and meet at each evaluation point.

    The runs train one at a time, in a fixed order: run 0 trains up to its first evaluation point and posts its
    episode returns, then run 1 does, ..., then run K-1; when the last one has posted, the aggregate is computed,
    reported to the trial (``trial.report(value, step)``, step = 1, 2, ...) and the pruner asked; then run 0 goes
    on to the next point, or all stop. At each hand-over the global random generators (Python, NumPy, PyTorch) of
    the run that stops are saved and those of the run that goes on restored, so each run draws the random numbers
    it would draw alone: a trial's runs do not depend on each other, on K or on thread scheduling.
    """

    def __init__(self, n_runs: int, trial: optuna.Trial, aggregate: Callable[[Sequence[Sequence[float]]], float]):
        self.n_runs = n_runs
        self.trial = trial
        self.aggregate = aggregate
        self.step = 0
        self.values: list[float] = []
        self.pruned = False
        self.aborted = False
        self._returns: list[list[float]] = [[] for _ in range(n_runs)]
        self._posts = [0] * n_runs
        self._finished = [False] * n_runs
        self._rng: list[RandomState | None] = [None] * n_runs
        self._turn = 0
        self._condition = threading.Condition()

    @property
    def stopped(self) -> bool:
        return self.pruned or self.aborted

    def save_rng(self, run: int) -> None:
        """Keep the current global random state as run ``run``'s (after its model was built with its seed)."""
        self._rng[run] = get_global_rng_state()

    def _wait_for_turn(self, run: int) -> bool:
        """Block until it is ``run``'s turn (restoring its random state) or the trial stopped; returns go on."""
        self._condition.wait_for(lambda: self._turn == run or self.stopped)
        if self.stopped:
            return False
        state = self._rng[run]
        if state is not None:
            set_global_rng_state(state)
        return True

    def _pass_turn(self, run: int) -> None:
        self._rng[run] = get_global_rng_state()
        for offset in range(1, self.n_runs + 1):
            nxt = (run + offset) % self.n_runs
            if not self._finished[nxt]:
                self._turn = nxt
                break
        self._condition.notify_all()

    def start(self, run: int) -> bool:
        """Wait for run ``run``'s first turn. Returns whether to train (False: the trial stopped)."""
        with self._condition:
            return self._wait_for_turn(run)

    def post(self, run: int, episode_returns: Sequence[float]) -> bool:
        """Post run ``run``'s returns of this evaluation point, hand over, wait for the next turn. Returns whether
        to go on."""
        with self._condition:
            if not self._wait_for_turn(run):
                return False
            self._returns[run] = [float(r) for r in episode_returns]
            self._posts[run] += 1
            if all(n == self._posts[run] for n in self._posts):
                self.step += 1
                value = self.aggregate(self._returns)
                self.values.append(value)
                self.trial.report(value, self.step)
                self.pruned = self.trial.should_prune()
            self._pass_turn(run)
            return self._wait_for_turn(run)

    def done(self, run: int) -> None:
        """Run ``run`` ended (trained out, stopped or failed): hand over for good."""
        with self._condition:
            self._finished[run] = True
            if self._turn == run:
                self._pass_turn(run)
            self._condition.notify_all()

    def abort(self) -> None:
        """A run failed: release the others (their next ``post`` returns False)."""
        with self._condition:
            self.aborted = True
            self._condition.notify_all()


class SeedEvaluationCallback(EvalCallback):
    """
    SB3's ``EvalCallback`` for one run of a robust trial (as rl-zoo3's ``TrialEvalCallback`` is for its single
    run): it evaluates every ``eval_freq`` calls, at most ``n_evaluations`` times, writes ``evaluations.npz`` in
    ``log_path`` (so rl-zoo3's plots can read it), and after each evaluation posts the episode returns to the board,
    whose answer (go on or stop) it returns.

    :param board: where the K runs of the trial meet at each evaluation point
    :param run: this run's index among the K
    :param eval_env: the run's evaluation env
    :param n_eval_episodes: episodes per evaluation (``--eval-episodes``)
    :param eval_freq: evaluate every ``eval_freq`` calls (env steps of the vectorized env)
    :param n_evaluations: evaluation points of the trial (``--n-evaluations``)
    :param deterministic: deterministic actions at evaluation
    :param log_path: folder of ``evaluations.npz``; ``EvalCallback`` keeps the returns of its evaluations
        (``evaluations_results``), which the board needs, only when it has one
    """

    def __init__(
        self,
        board: EvaluationBoard,
        run: int,
        eval_env: VecEnv,
        n_eval_episodes: int,
        eval_freq: int,
        n_evaluations: int,
        deterministic: bool,
        log_path: str,
    ):
        super().__init__(
            eval_env,
            n_eval_episodes=n_eval_episodes,
            eval_freq=eval_freq,
            log_path=log_path,
            deterministic=deterministic,
            verbose=0,
            warn=False,
        )
        self.board = board
        self.run = run
        self.n_evaluations = n_evaluations

    def _on_step(self) -> bool:
        if self.n_calls % self.eval_freq != 0 or len(self.evaluations_results) >= self.n_evaluations:
            return True
        return self.evaluate_and_post()

    def evaluate_and_post(self) -> bool:
        """Evaluate now (``EvalCallback``'s evaluation), post the returns to the board; returns whether to go on."""
        self.num_timesteps = self.model.num_timesteps
        # EvalCallback evaluates when n_calls is a multiple of eval_freq: 1 makes it evaluate at this call too (the
        # evaluation points that finish() adds after learn())
        eval_freq, self.eval_freq = self.eval_freq, 1
        try:
            super()._on_step()
        finally:
            self.eval_freq = eval_freq
        return self.board.post(self.run, self.evaluations_results[-1])

    def finish(self) -> None:
        """After ``learn()``: evaluate the final policy for the evaluation points it did not reach (never when the
        trial stopped), so that the other runs are never left waiting."""
        while len(self.evaluations_results) < self.n_evaluations and not self.board.stopped:
            self.evaluate_and_post()


class PGExperimentManager(ExperimentManager):
    """
    :param eval_seeds: K, training runs per trial (``--eval-seeds``); None: rl-zoo3's objective
    :param eval_aggregate: how the K runs' evaluations become the trial's value (``--eval-aggregate``:
        ``iqm``, ``mean``, ``bootstrap_lower`` or ``worst_seed``); None: ``iqm`` when ``eval_seeds`` is given
    All other arguments are rl-zoo3's (see ``rl_zoo3.train``).
    """

    def __init__(
        self, args: argparse.Namespace, algo: str, env_id: str, log_folder: str, *positional: Any, **kwargs: Any
    ) -> None:
        eval_seeds = kwargs.pop("eval_seeds", None)
        eval_aggregate = kwargs.pop("eval_aggregate", None)
        if algo in ZOO_ALGOS and kwargs.get("config") is None:
            kwargs["config"] = str(HYPERPARAMS_DIR / f"{algo}.yml")
        if kwargs.get("trial_id") is not None:
            kwargs["trial_id"] = _TrialNumber(kwargs["trial_id"])
        super().__init__(args, algo, env_id, log_folder, *positional, **kwargs)
        self.robust_trials = eval_seeds is not None or eval_aggregate is not None
        self.eval_seeds = 1 if eval_seeds is None else int(eval_seeds)
        self.eval_aggregate = "iqm" if eval_aggregate is None else eval_aggregate
        if self.eval_seeds < 1:
            raise LauncherUsageError(f"--eval-seeds must be >= 1; got {self.eval_seeds}")
        if self.eval_aggregate not in AGGREGATES:
            raise LauncherUsageError(f"--eval-aggregate must be one of {sorted(AGGREGATES)}; got {self.eval_aggregate!r}")
        if self.robust_trials and not self.optimize_hyperparameters:
            flags = " and ".join(
                flag
                for flag, value in (("--eval-seeds", eval_seeds), ("--eval-aggregate", eval_aggregate))
                if value is not None
            )
            raise LauncherUsageError(
                f"{flags} {'apply' if ' and ' in flags else 'applies'} only to -optimize (robust trials); a training "
                "run without -optimize trains one seed (--seed): add -optimize or drop the flag"
            )
        if self.robust_trials and algo == "ars":
            raise LauncherUsageError(
                "--eval-seeds does not support ARS (its asynchronous evaluation needs rl-zoo3's objective)"
            )
        # saved in args.yml with the run's other arguments
        args.eval_seeds = eval_seeds
        args.eval_aggregate = eval_aggregate

    def _preprocess_hyperparams(self, hyperparams: dict[str, Any]) -> tuple[dict[str, Any], Any, Any, Any]:
        """rl-zoo3's, then: every key left for the constructor must be one of its keywords (else a clear error)."""
        preprocessed = super()._preprocess_hyperparams(hyperparams)
        check_constructor_keywords(ALGOS[self.algo], preprocessed[0], self.algo, self.env_name.gym_id)
        return preprocessed

    def load_trial(self, storage: str, study_name: str, trial_id: int | None = None, convert: bool = True) -> dict[str, Any]:
        """rl-zoo3's, with an unknown study or a trial number out of range named in a clear error."""
        optuna_storage = _optuna_storage(storage)
        names = optuna.get_all_study_names(storage=optuna_storage)
        if study_name not in names:
            raise LauncherUsageError(
                f"--study-name {study_name!r} is not in {storage}; its studies: {', '.join(sorted(names)) or 'none'}"
            )
        if trial_id is not None:
            n_trials = len(optuna.load_study(storage=optuna_storage, study_name=study_name).trials)
            if not 0 <= int(trial_id) < n_trials:
                valid = f"0 to {n_trials - 1}" if n_trials else "none: the study has no trial"
                raise LauncherUsageError(f"--trial-id {int(trial_id)} is out of range for study {study_name!r}: {valid}")
        return super().load_trial(storage, study_name, trial_id, convert)

    def objective(self, trial: optuna.Trial) -> float:
        """
        rl-zoo3's objective (one unseeded run), or with ``--eval-seeds`` / ``--eval-aggregate`` the robust one
        (:meth:`robust_objective`). Either way a ``FloatingPointError`` prunes the trial.

        :param trial: the Optuna trial
        :return: the trial's value
        """
        if self.robust_trials:
            return self.robust_objective(trial)
        try:
            return super().objective(trial)
        except FloatingPointError as e:
            # the package's algorithms raise FloatingPointError on non-finite values, where SB3's assert
            # (which rl-zoo3 prunes): prune too, rather than end the study
            print(e)
            raise optuna.exceptions.TrialPruned() from e

    def robust_objective(self, trial: optuna.Trial) -> float:
        """
        Train the trial's settings on K seeds (:func:`trial_seeds`) and return the aggregate of their last
        evaluations; the running aggregate is reported at each evaluation point for the pruner.

        Why this is not rl-zoo3's ``objective`` through a hook: that method builds its one model (``seed=None``
        written in), its one ``TrialEvalCallback`` (which reports each run's own mean to the trial) and its
        ``learn()`` call inline, with no method to override in between; K seeded runs that report one aggregate at
        each evaluation point need their own loop. What it offers is reused: rl-zoo3's sampler table,
        ``create_envs``, the ``--callback`` list, and SB3's ``EvalCallback`` (:class:`SeedEvaluationCallback`).

        :param trial: the Optuna trial
        :return: the aggregate (``--eval-aggregate``) of the K runs' returns at the last evaluation point
        """
        kwargs = self._hyperparams.copy()
        # the sampler arguments as rl-zoo3's objective builds them
        additional_args = {
            "using_her_replay_buffer": kwargs.get("replay_buffer_class") == HerReplayBuffer,
            "her_kwargs": kwargs.get("replay_buffer_kwargs", {}),
        }
        sampled_hyperparams = HYPERPARAMS_SAMPLER[self.algo](trial, self.n_actions, self.n_envs, additional_args)
        kwargs.update(sampled_hyperparams)

        seeds = trial_seeds(self.seed, trial.number, self.eval_seeds)
        trial.set_user_attr("eval_seeds", seeds)
        trial.set_user_attr("eval_aggregate", self.eval_aggregate)
        assert self.n_evaluations is not None
        eval_freq = max(int(self.n_timesteps / self.n_evaluations) // self.n_envs, 1)
        board = EvaluationBoard(self.eval_seeds, trial, AGGREGATES[self.eval_aggregate])
        trial_verbosity = self.verbose if self.verbose >= 2 else 0
        # EvalCallback keeps the returns the board needs only with a log_path: without --optimization-log-path,
        # the runs' evaluations.npz go to a folder deleted with the trial
        scratch = tempfile.TemporaryDirectory(prefix="sb3-pg-zoo-") if self.optimization_log_path is None else None
        log_root = scratch.name if scratch is not None else self.optimization_log_path
        assert log_root is not None

        models, callbacks, eval_envs = [], [], []
        with SEEDED_SECTION:  # seeding and swapping the global generators: one robust trial at a time
            try:
                try:
                    for run, seed in enumerate(seeds):
                        model = ALGOS[self.algo](
                            env=self.create_envs(self.n_envs, no_log=True),
                            tensorboard_log=None,
                            seed=seed,
                            verbose=trial_verbosity,
                            device=self.device,
                            **copy.deepcopy(kwargs),
                        )
                        models.append(model)
                        eval_env = self.create_envs(n_envs=self.n_eval_envs, eval_env=True)
                        eval_envs.append(eval_env)
                        board.save_rng(run)
                        callbacks.append(
                            SeedEvaluationCallback(
                                board,
                                run,
                                eval_env,
                                self.n_eval_episodes,
                                eval_freq,
                                self.n_evaluations,
                                self.deterministic_eval,
                                os.path.join(log_root, f"trial_{trial.number!s}", f"seed_{run}"),
                            )
                        )
                except PRUNED_ERRORS as e:
                    # settings the algorithm refuses at construction: pruned, as rl-zoo3 prunes a failing trial
                    for env in [*(m.env for m in models), *eval_envs]:
                        if env is not None:
                            env.close()
                    print(e)
                    raise optuna.exceptions.TrialPruned() from e
                errors = self._train_runs(trial, board, models, callbacks, eval_envs)
            finally:
                if scratch is not None:
                    scratch.cleanup()

        trial.set_user_attr(
            "seed_returns",
            [float(np.mean(cb.evaluations_results[-1])) if cb.evaluations_results else None for cb in callbacks],
        )
        error = next((e for e in errors if e is not None), None)
        if error is not None:
            if isinstance(error, PRUNED_ERRORS):
                # as rl-zoo3: sampled settings that diverge (NaN) are pruned
                print(error)
                print("============")
                print("Sampled hyperparams:")
                pprint(sampled_hyperparams)
                raise optuna.exceptions.TrialPruned() from error
            raise error
        if board.pruned:
            raise optuna.exceptions.TrialPruned()
        return board.values[-1]

    def _train_runs(
        self,
        trial: optuna.Trial,
        board: EvaluationBoard,
        models: list[BaseAlgorithm],
        callbacks: list[SeedEvaluationCallback],
        eval_envs: list[VecEnv],
    ) -> list[BaseException | None]:
        """Train the K runs, one thread each, taking turns on the board; close their envs. Returns each run's error."""
        errors: list[BaseException | None] = [None] * len(models)

        def train(run: int) -> None:
            try:
                if board.start(run):
                    run_callbacks = get_callback_list({"callback": self.specified_callbacks})
                    models[run].learn(self.n_timesteps, callback=[*run_callbacks, callbacks[run]])
                    callbacks[run].finish()
            except BaseException as e:  # re-raised by the caller, in the study's thread
                errors[run] = e
                board.abort()
            finally:
                board.done(run)

        threads = [
            threading.Thread(target=train, args=(run,), name=f"trial-{trial.number}-seed-{run}") for run in range(len(models))
        ]
        try:
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        finally:
            for model, eval_env in zip(models, eval_envs, strict=True):
                assert model.env is not None
                model.env.close()
                eval_env.close()
        return errors


def check_constructor_keywords(algo_class: Any, hyperparams: dict[str, Any], algo: str, env_id: str) -> None:
    """
    Raise :class:`LauncherUsageError` naming the keys of ``hyperparams`` that ``algo_class``'s constructor does not
    take, and listing the ones it does (nothing to check when it takes ``**kwargs``).
    """
    parameters = inspect.signature(algo_class.__init__).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return
    valid = sorted(name for name in parameters if name not in ("self", "env", "_init_setup_model"))
    unknown = sorted(key for key in hyperparams if key not in parameters or key in ("self", "_init_setup_model"))
    if unknown:
        raise LauncherUsageError(
            f"unknown hyperparameter{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))} for {algo} on "
            f"{env_id} (from the hyperparameter file or -params); {algo_class.__name__} takes: {', '.join(valid)}"
        )


__all__ = [
    "EvaluationBoard",
    "LauncherUsageError",
    "PGExperimentManager",
    "SeedEvaluationCallback",
    "check_constructor_keywords",
    "trial_seeds",
]
