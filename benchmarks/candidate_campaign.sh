#!/usr/bin/env bash
# Candidate entries of one algorithm on one env, trained through the benchmark's cells (the launcher's path, the
# final policy of learn(), 10 deterministic episodes on an eval env seeded apart) on selection seeds that are not
# the protocol's (200-204): benchmarks/candidates/<ALGO>-<ENV>/<NAME>.yml, each into its own store
# benchmarks/results/candidates/<ALGO>-<ENV>/<NAME>, committed after each candidate. Finished seeds are skipped, so
# an interrupted campaign continues. Run with the venv active, e.g.:
#   OMP_NUM_THREADS=1 nohup nice -n 5 bash benchmarks/candidate_campaign.sh grpo CartPole-v1 100000 "300-309" \
#       entry beta0 > /tmp/candidates.txt 2>&1 &
#   python -m benchmarks.tune candidate-table --algo grpo --env CartPole-v1
# The candidate that wins on the selection seeds is then written into hyperparams/<ALGO>.yml and judged on the
# protocol's seeds against the defaults (python -m benchmarks.tune protocol-table).
set -u
cd "$(dirname "$0")/.."
# shellcheck source=benchmarks/campaign_lib.sh
source benchmarks/campaign_lib.sh
if [ $# -lt 5 ]; then
    echo "usage: $0 ALGO ENV STEPS FIRST-LAST NAME...   (candidates: benchmarks/candidates/ALGO-ENV/NAME.yml)" >&2
    exit 2
fi
ALGO=$1 ENV=$2 STEPS=$3 SEEDS=$(seq -s ' ' "${4%-*}" "${4#*-}")
shift 4
for name in "$@"; do
    conf=benchmarks/candidates/$ALGO-$ENV/$name.yml
    store=benchmarks/results/candidates/$ALGO-$ENV/$name
    echo "[$(date -u +%FT%TZ)] start $ALGO $ENV $name (seeds $SEEDS)"
    # shellcheck disable=SC2086
    python -m sb3_pg_ext.benchmark run --algos "$ALGO" --envs "$ENV" --seeds $SEEDS --budget "$ENV=$STEPS" \
        --conf-file "$ALGO=$conf" --store "$store" --workers 1 --no-progress
    status=$?
    echo "[$(date -u +%FT%TZ)] end $ALGO $ENV $name (exit status $status)"
    if [ "$status" -eq 130 ] || [ "$status" -eq 143 ] || [ "$status" -eq 2 ]; then
        exit "$status"
    fi
    commit_results "Candidates $ALGO $ENV: $name" "$store"
done
