#!/usr/bin/env bash
# Re-run the experiments of docs/RESULTS.md (CPU-sized recipes in conf/experiment/results_*.yaml)
# and write each one's report. Usage:
#   scripts/results.sh [OUT=runs/results] [EXPERIMENT ...]      (default: all six)
#   extra Hydra overrides go through $OVERRIDES, e.g. OVERRIDES="trainer=gpu" scripts/results.sh
# Each experiment lands in OUT/<experiment>/ with report.md (or comparison.md for no_t).
set -uo pipefail
out=${1:-runs/results}
shift || true
all=(schedule no_t karras_samplers sigma_data scale_cosine scale_karras)
exps=("${@:-${all[@]}}")
py=${PYTHON:-python}
read -r -a extra <<< "${OVERRIDES:-logger=csv}"
failed=()
for e in "${exps[@]}"; do
  dir="$out/$e"
  start=$(date +%s)
  case $e in
    no_t)
      $py train.py experiment=results_no_t hydra.run.dir="$dir" "${extra[@]}" ;;
    karras_samplers)
      $py train.py experiment=results_karras_samplers hydra.run.dir="$dir" "${extra[@]}" &&
        $py -m diffexp.cli.report "$dir" > /dev/null ;;
    schedule|sigma_data|scale_cosine|scale_karras)
      # the report is written even when a job failed (it lists the failure)
      $py train.py -m experiment=results_$e hydra.sweep.dir="$dir" "${extra[@]}"
      rc=$?; $py -m diffexp.cli.report "$dir" > /dev/null; (exit $rc) ;;
    *)
      echo "error: unknown experiment '$e'; choose from: ${all[*]}" >&2; exit 2 ;;
  esac
  rc=$?
  if [ $rc -ne 0 ]; then failed+=("$e"); fi
  echo "[results] $e $([ $rc -eq 0 ] && echo done || echo FAILED) in $(( $(date +%s) - start )) s: $dir"
done
if [ ${#failed[@]} -gt 0 ]; then
  echo "[results] failed: ${failed[*]}" >&2
  exit 1
fi
