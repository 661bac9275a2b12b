#!/usr/bin/env bash
# Several trainings side by side on one GPU (each: $WORKERS loader workers, default 3, and 2 torch
# threads), same data and recipe except the flags given per run; each is stopped after $TRAIN_TIMEOUT
# seconds if set (its best.pt so far stays); $TRAIN_FLAGS are added to every run. Usage:
#   benchmarks/train_parallel.sh DATASET_YAML RUNS_DIR EPOCHS NAME "FLAGS" [NAME "FLAGS" ...]
# e.g. the missing-label comparison in BENCHMARKS.md:
#   benchmarks/train_parallel.sh datasets/bccd-dense.yaml runs/missing 60 \
#     plain "--missing-labels plain" ignore "--missing-labels ignore --missing-tau 0.3" ...
# Then score every RUNS_DIR/NAME/best.pt with benchmarks/counting.py and benchmarks/robustness.py.
set -euo pipefail
data=$1 runs=$2 epochs=$3
shift 3
mkdir -p "$runs"
limit=()
[[ -n ${TRAIN_TIMEOUT:-} ]] && limit=(timeout "$TRAIN_TIMEOUT")
pids=() names=()
while (($#)); do
  name=$1 flags=$2
  shift 2
  # shellcheck disable=SC2086  # FLAGS is a list of words
  "${limit[@]}" python -m bloodcell train --data "$data" --epochs "$epochs" --batch 8 --workers "${WORKERS:-3}" \
    --threads 2 --val-every 5 --device "${DEVICE:-cuda}" --out "$runs/$name" $flags ${TRAIN_FLAGS:-} > "$runs/$name.log" 2>&1 &
  pids+=($!) names+=("$name")
done
failed=0  # each run's exit code, said (a bare `wait` returned 0 whatever they did)
for i in "${!pids[@]}"; do
  wait "${pids[$i]}" || {
    echo "run ${names[$i]} failed (exit $?): see $runs/${names[$i]}.log" >&2
    failed=1
  }
done
exit "$failed"
