# Shared by benchmarks/tune_campaign.sh and tune_stability.sh: one `python -m benchmarks.tune` step, then a commit
# of its results.
RESULT_DIRS="benchmarks/results/tuning benchmarks/results/grid"  # compare at the benchmark's budget writes the grid's
commit() {  # commit the tuning results of one step (retried: the other lane may hold git's index lock)
    for _ in 1 2 3 4 5 6 7 8 9 10; do
        # shellcheck disable=SC2086
        git add $RESULT_DIRS >/dev/null 2>&1 && \
            git commit -q -m "Tuning: $1" -- $RESULT_DIRS >/dev/null 2>&1 && return 0
        # shellcheck disable=SC2086
        git diff --cached --quiet -- $RESULT_DIRS && return 0
        sleep 7
    done
}
step() {  # step <description> <python -m benchmarks.tune arguments...>
    local what=$1
    shift
    echo "[$(date -u +%FT%TZ)] start $what"
    if python -m benchmarks.tune "$@"; then echo "[$(date -u +%FT%TZ)] done $what"; else echo "[$(date -u +%FT%TZ)] FAILED $what"; fi
    commit "$what"
}
