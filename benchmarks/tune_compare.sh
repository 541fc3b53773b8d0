#!/usr/bin/env bash
# Tuned entries of hyperparams/*.yml against the untuned defaults (each file's `default` entry) on 3 fresh seeds
# (200-202) at the benchmark's budget per env. Resumable; commits each step. Run with the venv active:
#   bash benchmarks/tune_compare.sh CartPole-v1 100000 reinforce ispg grpo ppo_kl > /tmp/lane-d.txt 2>&1 &
set -u
cd "$(dirname "$0")/.."
source benchmarks/tune_lib.sh
env=$1 budget=$2
shift 2
for algo in "$@"; do
    step "$algo $env tuned vs default" compare --algo "$algo" --env "$env" -n "$budget" --seeds 200-202
done
