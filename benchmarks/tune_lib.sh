# Shared by benchmarks/tune_campaign.sh and tune_stability.sh: one `python -m benchmarks.tune` step, then a commit
# of its results.
RESULT_DIRS="benchmarks/results/tuning benchmarks/results/grid"  # compare at the benchmark's budget writes the grid's
# shellcheck source=benchmarks/campaign_lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/campaign_lib.sh"
commit() {  # commit the tuning results of one step
    # shellcheck disable=SC2086
    commit_results "Tuning: $1" $RESULT_DIRS
}
step() {  # step <description> <python -m benchmarks.tune arguments...>
    local what=$1
    shift
    echo "[$(date -u +%FT%TZ)] start $what"
    if python -m benchmarks.tune "$@"; then echo "[$(date -u +%FT%TZ)] done $what"; else echo "[$(date -u +%FT%TZ)] FAILED $what"; fi
    commit "$what"
}
