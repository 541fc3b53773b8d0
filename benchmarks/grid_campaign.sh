#!/usr/bin/env bash
# The README's benchmark grid (issue 10), one seed at a time, committing the store after each chunk so that an
# interrupted session continues from what is committed (finished cells are skipped, stale ones rerun).
# Run with the venv active:
#   nohup bash benchmarks/grid_campaign.sh stock > /tmp/grid.txt 2>&1 &    # cells whose entries are final
#   nohup bash benchmarks/grid_campaign.sh all > /tmp/grid.txt 2>&1 &      # the whole grid
# or the grid split over two lanes (two cores), e.g.
#   nohup bash benchmarks/grid_campaign.sh seeds 200 201 202 > /tmp/grid-a.txt 2>&1 &   # the three small envs
#   nohup bash benchmarks/grid_campaign.sh seeds 203 204 > /tmp/grid-b.txt 2>&1 &
#   nohup bash benchmarks/grid_campaign.sh lunar 200 201 202 > /tmp/grid-c.txt 2>&1 &   # LunarLander-v3
set -u
cd "$(dirname "$0")/.."
STORE=benchmarks/results/grid
OURS="reinforce ispg ppo_kl grpo"
STOCK="ppo a2c sac trpo"
# budgets and seeds: benchmarks/tune.py (GRID_BUDGETS, GRID_SEEDS), where the tuned-versus-default comparison reuses
# the grid's cells; the seeds are disjoint from every tuning (trial numbers from 0), retraining (100-104) seed
BUDGET=$(python -c "from benchmarks.tune import GRID_BUDGETS as b; print(' '.join(f'{e}={n}' for e, n in b.items()))")
SEEDS="200 201 202 203 204"
LL_SEEDS="200 201 202"

chunk() {  # chunk <description> <algos> <envs> <seeds>
    echo "[$(date -u +%FT%TZ)] start $1"
    # shellcheck disable=SC2086
    python -m sb3_pg_ext.benchmark run --algos $2 --envs $3 --seeds $4 --budget $BUDGET --store "$STORE" \
        --workers 1 --no-progress
    echo "[$(date -u +%FT%TZ)] end $1"
    for _ in 1 2 3 4 5 6 7 8 9 10; do
        git add "$STORE" >/dev/null 2>&1 && git commit -q -m "Benchmark grid: $1" -- "$STORE" >/dev/null 2>&1 && return 0
        git diff --cached --quiet -- "$STORE" && return 0
        sleep 7
    done
}

case "${1:-}" in
stock)  # CartPole-v1 for all eight (every CartPole entry is tuned), the stock four on Acrobot-v1 and Pendulum-v1
    for seed in $SEEDS; do
        chunk "CartPole-v1 seed $seed" "$OURS $STOCK" CartPole-v1 "$seed"
        chunk "stock Acrobot-v1 Pendulum-v1 seed $seed" "$STOCK" "Acrobot-v1 Pendulum-v1" "$seed"
    done
    ;;
all)
    for seed in $SEEDS; do
        chunk "CartPole-v1 Acrobot-v1 Pendulum-v1 seed $seed" "$OURS $STOCK" "CartPole-v1 Acrobot-v1 Pendulum-v1" "$seed"
    done
    for seed in $LL_SEEDS; do
        chunk "LunarLander-v3 seed $seed" "$OURS $STOCK" LunarLander-v3 "$seed"
    done
    ;;
seeds)  # seeds ...: CartPole-v1, Acrobot-v1 and Pendulum-v1 for all eight, on the given seeds
    shift
    for seed in "$@"; do
        chunk "CartPole-v1 Acrobot-v1 Pendulum-v1 seed $seed" "$OURS $STOCK" "CartPole-v1 Acrobot-v1 Pendulum-v1" "$seed"
    done
    ;;
lunar)  # lunar seeds ...: LunarLander-v3 for all eight that fit, on the given seeds
    shift
    for seed in "$@"; do
        chunk "LunarLander-v3 seed $seed" "$OURS $STOCK" LunarLander-v3 "$seed"
    done
    ;;
*)  echo "usage: $0 stock|all|seeds SEED...|lunar SEED..." >&2; exit 2 ;;
esac
