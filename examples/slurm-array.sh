#!/bin/bash
# A research cohort pulled by a SLURM job array: 16 tasks, at most 8 running at once.
#
# SLURM gives each task SLURM_ARRAY_TASK_ID (here 0..15) and SLURM_ARRAY_TASK_COUNT (16);
# `--shard auto` turns them into shard K = index + 1 of N (an array like --array=1-16 or
# --array=0-30:2 works too: the index counts from SLURM_ARRAY_TASK_MIN in SLURM_ARRAY_TASK_STEP).
# Every task reads the same list and downloads only its own studies, each exactly once overall.
# To retry failed tasks, submit the same array again: every task finds what its folder already
# holds and fetches only what is missing. A task alone (--array=5) needs its shard given
# (DLSTUDY_SHARD=6/16 sbatch --array=5 slurm-array.sh cohort.txt): SLURM describes that as a
# one-task array (SLURM_ARRAY_TASK_COUNT=1), and `auto` would make it shard 1/1, everything.
#
#   sbatch slurm-array.sh cohort.txt
#   DLSTUDY_COHORT_DIR=/data/cohort sbatch --array=0-3 slurm-array.sh cohort.txt
#
# sbatch hands its environment to the tasks: DLSTUDY_COHORT_DIR (the output folder, default
# /scratch/$USER/cohort) and DLSTUDY_CONFIG (another config file) reach dlstudy.
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
    --shard "${DLSTUDY_SHARD:-auto}" \
    --output "$out/shard-$SLURM_ARRAY_TASK_ID" \
    --json > "$out/summary-$SLURM_ARRAY_TASK_ID.json"
