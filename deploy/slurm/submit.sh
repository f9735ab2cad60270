#!/bin/sh
# A cluster build of `dallage tile` on Slurm: makes the plan here, submits WORKERS array tasks
# (the last to end finishes the plan: --finish-if-last) and a finisher that starts once they all
# succeeded (--dependency=afterok), which has nothing left to do unless that last worker died.
#
#   deploy/slurm/submit.sh WORKERS PLAN TILE-ARGUMENTS...
#   deploy/slurm/submit.sh 16 /shared/plans/pcrs.json --tileset tilesets/pcrs.yaml --store /shared/store
#   AWS_ACCESS_KEY_ID=… AWS_SECRET_ACCESS_KEY=… AWS_ENDPOINT_URL=http://seaweed.internal:8333 TMPDIR=/scratch \
#     deploy/slurm/submit.sh 16 /shared/plans/pcrs.json --tileset tilesets/pcrs.yaml --store s3://ortho-pyramids/store
#
# Environment: DALLAGE (the executable, default `dallage` on PATH), SBATCH_OPTIONS (extra sbatch
# options for every job: partition, account, --cpus-per-task, --time…), LOG_DIR (where the jobs'
# output goes, default the current folder); for an s3:// store the AWS_* variables, and TMPDIR for
# the staging folder, which the jobs inherit. Prints the two job ids, the finisher's last.
set -eu
if [ $# -lt 3 ]; then
    echo "usage: $0 WORKERS PLAN TILE-ARGUMENTS... (e.g. --tileset T.yaml --store /shared/store)" >&2
    exit 64
fi
workers=$1
plan=$2
shift 2
case $workers in
'' | *[!0-9]* | 0) echo "$0: WORKERS must be a positive integer, not '$workers'" >&2; exit 64 ;;
esac
here=$(cd "$(dirname "$0")" && pwd)
dallage=${DALLAGE:-dallage}
logs=${LOG_DIR:-.}
mkdir -p "$logs"

# The plan: the sources indexed once, the shards and their estimated work.
"$dallage" tile "$@" --plan-out "$plan"

# shellcheck disable=SC2086 # SBATCH_OPTIONS is a list of options, split on purpose
array=$(sbatch --parsable ${SBATCH_OPTIONS:-} --array="0-$((workers - 1))" \
    --output="$logs/dallage-tile-%A_%a.out" "$here/dallage-tile.sbatch" worker "$plan")
array=${array%%;*}
# shellcheck disable=SC2086
finisher=$(sbatch --parsable ${SBATCH_OPTIONS:-} --dependency="afterok:$array" --kill-on-invalid-dep=yes \
    --output="$logs/dallage-tile-%j-finish.out" "$here/dallage-tile.sbatch" finish "$plan")
finisher=${finisher%%;*}
echo "workers: job $array ($workers task(s)); finisher: job $finisher"
