#!/usr/bin/env bash
# A benchmark preset (sb3_pg_ext/benchmark/presets.py: its algorithms, envs, seeds and budgets) run chunk by chunk,
# committing the store after each chunk, so that an interrupted session continues from what is committed (finished
# cells are skipped; stale ones, whose settings changed since they ran, are listed and skipped unless RERUN_STALE=1;
# damaged files are kept aside as <name>.damaged-<time> and their cells rerun). Run with the venv active:
#   nohup bash benchmarks/grid_campaign.sh readme > /tmp/grid.txt 2>&1 &              # the README's grid
#   nohup bash benchmarks/grid_campaign.sh final-policies > /tmp/final.txt 2>&1 &     # the final policies of the defaults
# or some chunks of a preset (python -m sb3_pg_ext.benchmark presets readme --chunks lists them), e.g. two lanes:
#   nohup bash benchmarks/grid_campaign.sh readme classic-200 classic-201 classic-202 > /tmp/grid-a.txt 2>&1 &
#   nohup bash benchmarks/grid_campaign.sh readme classic-203 classic-204 lunar-200 lunar-201 lunar-202 > /tmp/grid-b.txt 2>&1 &
# (two lanes may share the store: each write has its own temporary file, and a lane removes only old ones).
# Ctrl-C (or SIGINT to the process group) stops the campaign: the run exits 130 without recording the cell in flight.
set -u
cd "$(dirname "$0")/.."
# shellcheck source=benchmarks/campaign_lib.sh
source benchmarks/campaign_lib.sh
if [ $# -lt 1 ]; then
    echo "usage: $0 PRESET [CHUNK...]   (presets: python -m sb3_pg_ext.benchmark presets)" >&2
    exit 2
fi
PRESET=$1
shift
STORE=$(python -c "import sys; from sb3_pg_ext.benchmark.presets import get_preset; print(get_preset(sys.argv[1]).store)" "$PRESET") || exit 2
if [ $# -gt 0 ]; then
    CHUNKS="$*"
else
    CHUNKS=$(python -m sb3_pg_ext.benchmark presets "$PRESET" --chunks) || exit 2
fi

# While a chunk runs (a long one takes hours), its finished cells are committed every COMMIT_EVERY seconds (default
# 600), so that a session stopped mid-chunk loses at most the cells in flight.
committer=""
stop_committer() {
    if [ -n "$committer" ]; then
        kill "$committer" 2>/dev/null
        wait "$committer" 2>/dev/null
        committer=""
    fi
}
trap stop_committer EXIT

for chunk in $CHUNKS; do
    echo "[$(date -u +%FT%TZ)] start $PRESET $chunk"
    (while sleep "${COMMIT_EVERY:-600}"; do commit_results "Benchmark $PRESET: finished cells of $chunk" "$STORE"; done) &
    committer=$!
    python -m sb3_pg_ext.benchmark run --preset "$PRESET" --chunk "$chunk" --store "$STORE" --workers 1 --no-progress \
        ${RERUN_STALE:+--rerun-stale}
    status=$?
    stop_committer
    echo "[$(date -u +%FT%TZ)] end $PRESET $chunk (exit status $status)"
    if [ "$status" -eq 130 ]; then
        exit 130
    fi
    commit_results "Benchmark $PRESET: $chunk" "$STORE"
done
