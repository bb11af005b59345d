#!/bin/bash
# A research cohort pulled by a SLURM job array: 16 tasks, at most 8 running at once.
#
# SLURM gives each task SLURM_ARRAY_TASK_ID (here 0..15) and SLURM_ARRAY_TASK_COUNT (16);
# `--shard auto` turns them into shard K = index + 1 of N (an array like --array=1-16 or
# --array=0-30:2 works too: the index counts from SLURM_ARRAY_TASK_MIN in SLURM_ARRAY_TASK_STEP).
# Every task reads the same list and downloads only its own studies, each exactly once overall.
# A failed task can be resubmitted alone (sbatch --array=5 slurm-array.sh): it resumes.
#
#   sbatch slurm-array.sh cohort.txt
#SBATCH --job-name=dlstudy-cohort
#SBATCH --array=0-15%8
#SBATCH --cpus-per-task=2
#SBATCH --mem=1G
#SBATCH --time=24:00:00
#SBATCH --output=dlstudy-%A_%a.log
set -euo pipefail

cohort=${1:-cohort.txt}
out=${DLSTUDY_COHORT_DIR:-/scratch/$USER/cohort}
mkdir -p "$out"

# The server, its CA and the token command come from the `pacs` profile of
# ~/.config/dlstudy/config.toml, so no secret is on the command line or in this script.
dlstudy download \
    --server pacs \
    --from-file "$cohort" \
    --shard auto \
    --output "$out/shard-$SLURM_ARRAY_TASK_ID" \
    --json > "$out/summary-$SLURM_ARRAY_TASK_ID.json"
