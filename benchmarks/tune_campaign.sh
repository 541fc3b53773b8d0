#!/usr/bin/env bash
# The tuning campaign of hyperparams/*.yml, in two lanes (one process each: the machine has 2 cores).
# Every step is resumable (python -m benchmarks.tune skips finished trials and retrained seeds) and commits its
# files when it ends, so rerunning a lane after an interrupted session continues where it stopped.
#   bash benchmarks/tune_campaign.sh a > /tmp/lane-a.txt 2>&1 &
#   bash benchmarks/tune_campaign.sh b > /tmp/lane-b.txt 2>&1 &
# then, once an env's studies have ended, write their best trials into the files and compare them with the defaults:
#   bash benchmarks/tune_campaign.sh c Acrobot-v1 300000 > /tmp/lane-c.txt 2>&1 &
set -u
cd "$(dirname "$0")/.."
ALGOS="reinforce ispg ppo_kl grpo"

source benchmarks/tune_lib.sh

case "${1:-}" in
a)  # CartPole-v1 with robust trials (K = 3), then Acrobot-v1
    for algo in $ALGOS; do step "$algo CartPole-v1 K=3" study --algo "$algo" --env CartPole-v1 --eval-seeds 3 -n 50000 --trials 10; done
    for algo in $ALGOS; do step "$algo Acrobot-v1 K=3" study --algo "$algo" --env Acrobot-v1 --eval-seeds 3 -n 100000 --trials 8; done
    ;;
b)  # CartPole-v1 with rl-zoo3's single seed (K = 1), the stability retraining of both, then Pendulum-v1
    for algo in $ALGOS; do step "$algo CartPole-v1 K=1" study --algo "$algo" --env CartPole-v1 --eval-seeds 1 -n 50000 --trials 10; done
    for algo in $ALGOS; do
        step "$algo CartPole-v1 K=1 retrain" retrain --algo "$algo" --env CartPole-v1 --eval-seeds 1 -n 50000 --seeds 100-104
        step "$algo CartPole-v1 K=3 retrain" retrain --algo "$algo" --env CartPole-v1 --eval-seeds 3 -n 50000 --seeds 100-104
    done
    for algo in $ALGOS; do step "$algo Pendulum-v1 K=3" study --algo "$algo" --env Pendulum-v1 --eval-seeds 3 -n 100000 --trials 8; done
    ;;
c)  # for each finished K = 3 study of env $2: the hand-set entry under the trial protocol, then apply (the best trial,
    # unless the hand-set entry scored higher; entry budget $3); then tuned vs default on seeds 200-202 at $3
    env=$2 budget=$3
    for algo in $ALGOS; do
        summary="benchmarks/results/tuning/$algo-$env-k3.json"
        if [ -f "$summary" ]; then
            per_run=$(python -c "import json, sys; print(json.load(open(sys.argv[1]))['n_timesteps_per_run'])" "$summary")
            step "$algo $env hand-set entry under the trial protocol" baseline --algo "$algo" --env "$env" -n "$per_run"
            python -m benchmarks.tune apply --algo "$algo" --env "$env" --eval-seeds 3 -n "$budget" &&
                git commit -q -m "$algo.yml: $env tuned" -- "hyperparams/$algo.yml"
        fi
    done
    for algo in $ALGOS; do
        step "$algo $env tuned vs default" compare --algo "$algo" --env "$env" -n "$budget" --seeds 200-202
    done
    ;;
*)  echo "usage: $0 a|b|c ENV BUDGET" >&2; exit 2 ;;
esac
