#!/usr/bin/env bash
# The estimator lab's measurements of docs/lab.md that are not in the CartPole-v1 tables yet, one lab run per line,
# committing benchmarks/results/lab after each (a lab run resumes from its stored files, so an interrupted campaign
# continues where it stopped). Run with the venv active:
#   OMP_NUM_THREADS=1 nohup bash benchmarks/lab_campaign.sh > /tmp/lab.txt 2>&1 &
# or some of its steps by number (bash benchmarks/lab_campaign.sh 2 3).
set -u
cd "$(dirname "$0")/.."
# shellcheck source=benchmarks/campaign_lib.sh
source benchmarks/campaign_lib.sh
OUT=benchmarks/results/lab
# the entries the stored folders were measured at, where the package's entry has changed since (a folder refuses a
# checkpoint other than its own)
ENTRIES=benchmarks/lab_entries
RTG_OPTIONS="G4-group-reward_to_go G4-none-reward_to_go G8-group-reward_to_go"
GRPO_OPTIONS="G4-group-outcome G4-group-outcome-branch G4-group-process G4-group-process-branch G4-batch-outcome G4-none-outcome G8-group-outcome G8-group-outcome-branch"
STEPS=(
    "--algo reinforce --env Acrobot-v1 --train-fraction 0.05 --batch-sizes 4 --batches 12 --reference-factor 50"
    "--algo grpo --env Pendulum-v1 --train-fraction 0.05 --conf-file $ENTRIES/grpo-Pendulum-v1.yml --batch-sizes 16 --batches 8 --reference-factor 32 --options $GRPO_OPTIONS"
    "--algo reinforce --env Acrobot-v1 --train-fraction 0.3 --batch-sizes 4 --batches 12 --reference-factor 50"
    "--algo reinforce --env Acrobot-v1 --train-fraction 1 --batch-sizes 4 --batches 12 --reference-factor 50"
    "--algo grpo --env CartPole-v1 --train-fraction 0.3 --conf-file $ENTRIES/grpo-CartPole-v1.yml --batch-sizes 16 --batches 8 --reference-factor 32 --options $GRPO_OPTIONS"
    "--algo grpo --env sb3_pg_ext/DigitReverse-v0 --train-fraction 0.05 --batch-sizes 32 --batches 8 --reference-factor 32 --options G4-group-outcome G4-batch-outcome G4-none-outcome G16-group-outcome G16-none-outcome"
    "--algo grpo --env CartPole-v1 --train-fraction 1 --conf-file $ENTRIES/grpo-CartPole-v1.yml --batch-sizes 16 --batches 8 --reference-factor 32 --options $GRPO_OPTIONS"
    "--algo grpo --env Pendulum-v1 --train-fraction 0.05 --conf-file $ENTRIES/grpo-Pendulum-v1.yml --batch-sizes 16 --batches 8 --reference-factor 32 --options $RTG_OPTIONS"
    "--algo grpo --env CartPole-v1 --train-fraction 0.3 --conf-file $ENTRIES/grpo-CartPole-v1.yml --batch-sizes 16 --batches 8 --reference-factor 32 --options $RTG_OPTIONS"
)
WANTED=("$@")
for i in "${!STEPS[@]}"; do
    n=$((i + 1))
    if [ ${#WANTED[@]} -gt 0 ] && [[ ! " ${WANTED[*]} " == *" $n "* ]]; then
        continue
    fi
    echo "[$(date -u +%FT%TZ)] start step $n: ${STEPS[$i]}"
    # shellcheck disable=SC2086
    python -m sb3_pg_ext.lab run ${STEPS[$i]} --out "$OUT"
    status=$?
    echo "[$(date -u +%FT%TZ)] end step $n (exit status $status)"
    if [ "$status" -eq 130 ]; then
        exit 130
    fi
    python -m sb3_pg_ext.lab report --out "$OUT" --markdown "$OUT/report.md" > /dev/null
    commit_results "Estimator lab: step $n of benchmarks/lab_campaign.sh" "$OUT"
done
