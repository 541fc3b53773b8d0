#!/usr/bin/env bash
# Tune GRPO on CartPole-v1 with several worker processes sharing one Optuna study (docs/zoo.md).
#
#   bash examples/tune_shared_storage.sh                       # journal file, 2 workers on this machine
#   STORAGE=postgresql+psycopg2://user:password@db-host:5432/optuna bash examples/tune_shared_storage.sh
#   N_TIMESTEPS=300 N_TRIALS=1 bash examples/tune_shared_storage.sh   # a smoke run
#
# Each worker runs N_TRIALS trials of the one study; start the same command on other machines (with a database
# URL) to add workers. --eval-seeds 3 trains every trial on 3 seeds and reports their interquartile mean.
set -euo pipefail

STORAGE=${STORAGE:-studies/grpo_CartPole-v1.log}   # *.log: an Optuna journal file (one machine, no server)
STUDY=${STUDY:-grpo-CartPole-v1}
N=${N_TIMESTEPS:-50000}
N_TRIALS=${N_TRIALS:-20}
WORKERS=${WORKERS:-2}

if [[ "$STORAGE" != *.log ]]; then
  # a database: create the study once, before the workers, so that they do not race to create the tables
  optuna create-study --storage "$STORAGE" --study-name "$STUDY" --direction maximize --skip-if-exists
fi

for worker in $(seq 1 "$WORKERS"); do
  sb3-pg-zoo train --algo grpo --env CartPole-v1 -optimize -n "$N" --n-trials "$N_TRIALS" \
    --n-evaluations 5 --eval-episodes 10 --eval-seeds 3 --eval-aggregate iqm \
    --storage "$STORAGE" --study-name "$STUDY" --seed "$worker" --no-optim-plots --verbose 0 \
    -f "logs/worker_$worker" &
done
wait

# the study's best trial, then a training run with its settings (--trial-id N reloads trial N of the study)
BEST=$(python - "$STORAGE" "$STUDY" <<'PY'
import sys

import optuna

storage, study_name = sys.argv[1:]
if storage.endswith(".log"):
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(storage))
study = optuna.load_study(study_name=study_name, storage=storage)
print(f"{len(study.trials)} trials; best: #{study.best_trial.number} value {study.best_value:.1f}", file=sys.stderr)
print(study.best_trial.number)
PY
)
sb3-pg-zoo train --algo grpo --env CartPole-v1 -n "$N" --storage "$STORAGE" --study-name "$STUDY" --trial-id "$BEST" \
  --eval-freq -1 --verbose 0 -f logs/best
# watch the study live:  optuna-dashboard "$STORAGE"   (pip install optuna-dashboard)
