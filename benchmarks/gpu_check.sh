#!/usr/bin/env bash
# The GPU checks of the scale-out issue in one run on a lent GPU machine (device tool), ~8 minutes:
#   1. GPU prediction equals CPU prediction (tests/runtime/test_batched_predict.py's CUDA test);
#   2. archive throughput on the GPU: `predict --batch 32` and the local engine, 364 BCCD images;
#   3. 40 epochs of the default recipe on one GPU (the "<= 2 minutes" target), 8 loader workers.
# Needs pyarrow and pycocotools wheels in .whl/ and a data copy in .gpu/data (carry both), e.g.
#   run: pip install --no-index --target /tmp/site .whl/*.whl && PYTHONPATH=/tmp/site:$PWD/src bash benchmarks/gpu_check.sh
# Results go to $OUT (or runs/gpu_check).
set -euo pipefail
out=${OUT:-runs/gpu_check}
data=${DATA:-.gpu/data}
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total --format=csv > "$out/gpu.txt"
python -m pytest -q tests/runtime/test_batched_predict.py > "$out/equivalence.txt" 2>&1 || true
python benchmarks/throughput.py --data "$data/BCCD" --device cuda --batch 32 --configs predict,local1 \
  --out "$out" > "$out/throughput.txt" 2>&1 || true
sed "s#../../shared/data#$PWD/$data#" datasets/bccd-dense.yaml > /tmp/ds.yaml
/usr/bin/time -v python -m bloodcell train --data /tmp/ds.yaml --epochs 40 --workers 8 --device cuda \
  --out "$out/train40" > "$out/train40.log" 2> "$out/train40.time" || true
tail -3 "$out"/*.txt "$out/train40.log"
