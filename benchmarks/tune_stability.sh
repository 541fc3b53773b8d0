#!/usr/bin/env bash
# K = 1 (rl-zoo3's single run per trial) against K = 3 (--eval-seeds 3) on one env: GRPO on CartPole-v1 (the
# fastest of the four), three repetitions of a 30-trial study for each K (repetition R seeds the sampler with
# 1000 R, the same for both K), the best trial of each retrained on 5 fresh seeds. Resumable; commits each step.
#   bash benchmarks/tune_stability.sh > /tmp/lane-c.txt 2>&1 &
set -u
cd "$(dirname "$0")/.."
source benchmarks/tune_lib.sh
for repeat in 1 2 3; do
    for k in 1 3; do
        step "grpo CartPole-v1 K=$k r$repeat" study --algo grpo --env CartPole-v1 --eval-seeds $k -n 50000 --trials 30 --repeat $repeat
        step "grpo CartPole-v1 K=$k r$repeat retrain" retrain --algo grpo --env CartPole-v1 --eval-seeds $k -n 50000 --seeds 100-104 --repeat $repeat
    done
done
