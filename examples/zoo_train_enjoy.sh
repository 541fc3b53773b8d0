#!/usr/bin/env bash
# Train and watch the package's algorithms with the rl-zoo3 launcher (docs/zoo.md).
#
#   bash examples/zoo_train_enjoy.sh              # the budgets of hyperparams/<algo>.yml (minutes per algorithm)
#   N_TIMESTEPS=2000 bash examples/zoo_train_enjoy.sh   # a smoke run
#
# Every rl-zoo3 flag keeps its meaning; `python -m sb3_pg_ext.zoo` is the same command as `sb3-pg-zoo`.
set -euo pipefail

N=${N_TIMESTEPS:--1}           # -1: the n_timesteps of the hyperparameter file
LOGS=${LOGS:-logs}

for algo in reinforce ispg ppo_kl grpo; do
  # hyperparameters from the package's hyperparams/$algo.yml (no --conf-file needed); evaluation every 10k
  # steps into $LOGS/$algo/CartPole-v1_<run>/evaluations.npz, a checkpoint every 50k steps, a progress bar
  sb3-pg-zoo train --algo "$algo" --env CartPole-v1 -n "$N" -f "$LOGS" --seed 0 \
    --eval-freq 10000 --eval-episodes 10 --save-freq 50000 --verbose 0 ${PROGRESS:+-P}
  # watch the last run (remove --no-render to see the window); the best model: --load-best
  sb3-pg-zoo enjoy --algo "$algo" --env CartPole-v1 -f "$LOGS" -n 1000 --deterministic --no-render
done

# rl-zoo3's plots read the same folders
sb3-pg-zoo plot_train -a grpo -e CartPole-v1 -f "$LOGS" || true   # needs a display or MPLBACKEND=Agg

# a token task: GRPO answers in text ("human" rendering prints "prompt -> answer")
sb3-pg-zoo train --algo grpo --env sb3_pg_ext/DigitReverse-v0 -n "$N" -f "$LOGS" --seed 0 --eval-freq -1 --verbose 0
sb3-pg-zoo enjoy --algo grpo --env sb3_pg_ext/DigitReverse-v0 -f "$LOGS" -n 30 --deterministic
