#!/usr/bin/env bash
# The GPU checks of the scale-out issue in one run on a lent GPU machine (device tool), ~4.5 minutes:
#   1. archive throughput on the GPU: `predict --batch 32` and the local engine, 364 BCCD images;
#   2. 40 epochs of the default recipe on one GPU (the "<= 2 minutes" target), 8 loader workers;
#   3. GPU prediction equals CPU prediction: the CUDA test of tests/runtime/test_batched_predict.py,
#      and per-image counts of all 364 BCCD images (compare with a CPU run of the same command).
# Needs the efficientnet-lite0 and pycocotools wheels in .whl/ and a data copy in .gpu/data (carry both):
#   pip install --no-index --no-deps --target /tmp/site .whl/*.whl && PYTHONPATH=/tmp/site:$PWD/src bash benchmarks/gpu_check.sh
# ONLY_ARCHIVE=1: step 1 alone, on $COPIES copies of the images (default 5: 1820 images, so the steady
# rate is not a second's worth) with the local engine at 1, 2 and 4 workers sharing the GPU, each with
# its share of the cores for reading and decoding (as `bloodcell batch`).
# Everything lands in $OUT/check.tgz (or runs/gpu_check), repacked after each step so a cut-off run
# still returns what it finished.
set -uo pipefail
out=${OUT:-runs/gpu_check}
data=${DATA:-.gpu/data}
check=/tmp/gpu_check
mkdir -p "$out" "$check"
pack() { tar czf "$out/check.tgz" -C "$check" . ; }
nvidia-smi --query-gpu=name,memory.total --format=csv > "$check/gpu.txt" 2>&1
if [[ ${ONLY_ARCHIVE:-0} == 1 ]]; then
  rm -rf /tmp/archive && mkdir -p /tmp/archive/JPEGImages  # a rerun with fewer COPIES counts no old ones
  for i in $(seq "${COPIES:-5}"); do
    for f in "$data"/BCCD/JPEGImages/*.jpg; do cp "$f" "/tmp/archive/JPEGImages/c${i}_${f##*/}"; done
  done
  timeout 120 python benchmarks/throughput.py --data /tmp/archive --images 100000 --device "${DEVICE:-cuda}" --batch 32 \
    --configs local1,local2,local4 --threads 0 --out "$check" > "$check/throughput.txt" 2>&1
  rc=$?
  pack
  tail -n 30 "$check/throughput.txt"
  exit "$rc"
fi
timeout 60 python benchmarks/throughput.py --data "$data/BCCD" --device cuda --batch 32 --configs predict,local1 \
  --out "$check" > "$check/throughput.txt" 2>&1
pack
sed "s#../../shared/data#$PWD/$data#" datasets/bccd-dense.yaml > "$check/ds.yaml"
/usr/bin/time -v timeout "${TRAIN_LIMIT:-165}" python -m bloodcell train --data "$check/ds.yaml" --epochs 40 \
  --workers 8 --device cuda --out "$check/train40" > "$check/train40.log" 2> "$check/train40.time"
rm -f "$check"/train40/*.pt
pack
timeout 30 python -m pytest -q -p no:cacheprovider tests/runtime/test_batched_predict.py > "$check/equivalence.txt" 2>&1
pack
timeout 45 python -m bloodcell predict "$data"/BCCD/JPEGImages --device cuda --batch 32 --csv "$check/counts_gpu.csv" \
  > "$check/predict_gpu.txt" 2>&1
pack
tail -n 4 "$check"/*.txt "$check/train40.log"
