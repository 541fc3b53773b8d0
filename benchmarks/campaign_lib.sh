# Shared by the campaign scripts (grid_campaign.sh, lab_campaign.sh, tune_lib.sh): commit finished results.
# commit_results MESSAGE PATH...: commit PATHs (only those) with MESSAGE, retried while another lane holds git's
# index lock; nothing to commit is success.
commit_results() {
    local message=$1
    shift
    for _ in 1 2 3 4 5 6 7 8 9 10; do
        git add "$@" >/dev/null 2>&1 && git commit -q -m "$message" -- "$@" >/dev/null 2>&1 && return 0
        git diff --cached --quiet -- "$@" && return 0
        sleep 7
    done
    return 1
}
