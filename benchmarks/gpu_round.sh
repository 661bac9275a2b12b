#!/usr/bin/env bash
# One lent-GPU session (device tool), most valuable first:
#   1. candidate trainings side by side (train_parallel.sh), each stopped after $TRAIN_TIMEOUT s (default
#      300): the runs given as NAME "FLAGS" pairs, or by default the fourth session's input-scale
#      candidates (the shipped recipe at --scale 0.75 seeds 0-2, 0.6 and 0.5 seed 1; 60 epochs, about
#      250 s of training each on an H100);
#   2. the scale-out checks (gpu_check.sh): CHECKS=1 (default) all of them (~5 minutes; with both steps
#      ask the device tool for its 10-minute limit and TRAIN_TIMEOUT=270), CHECKS=archive the archive
#      throughput alone (~1.5 minutes), CHECKS=0 none.
# e.g. the tenth session's round (BENCHMARKS.md): TRAIN_TIMEOUT=430 CHECKS=archive COPIES=8 bash benchmarks/gpu_round.sh \
#   s3 "--scale 0.75 --seed 3" s4 "--scale 0.75 --seed 4" s5 "--scale 0.75 --seed 5" \
#   e80-2 "--scale 0.75 --seed 2 --epochs 80" e80-3 "--scale 0.75 --seed 3 --epochs 80" \
#   mild-3 "--scale 0.75 --seed 3 --augment train-mild"
# Needs the efficientnet-lite0 and pycocotools wheels in .whl/ and a data copy in .gpu/data (carry both):
#   pip install --no-index --no-deps --target /tmp/site .whl/*.whl && PYTHONPATH=/tmp/site:$PWD/src bash benchmarks/gpu_round.sh
# What comes back (the device tool returns at most 8 files, 64 MiB: so at most six runs): each run's best.pt as fp16 weights
# (load_model reads them back as fp32), runs.tgz (logs, metrics.csv, config.yaml), check.tgz.
# (This session's run had step 2's checks inline, with a 130 s limit on the 40-epoch training.)
set -uo pipefail
(($# % 2 == 0)) || { echo "gpu_round.sh: give the runs as NAME \"FLAGS\" pairs" >&2; exit 2; }
[[ ${CHECKS:-1} =~ ^(0|1|archive)$ ]] || { echo "gpu_round.sh: CHECKS is 1, archive or 0, not '$CHECKS'" >&2; exit 2; }
out=${OUT:-runs/gpu_round}
data=${DATA:-.gpu/data}
runs=/tmp/round/runs
mkdir -p "$out" "$runs"
sed "s#../../shared/data#$PWD/$data#" datasets/bccd-dense.yaml > /tmp/round/ds.yaml
(($#)) || set -- s075-0 "--scale 0.75 --seed 0" s075-1 "--scale 0.75 --seed 1" s075-2 "--scale 0.75 --seed 2" \
  s06-1 "--scale 0.6 --seed 1" s05-1 "--scale 0.5 --seed 1"
start=$(date +%s)
TRAIN_TIMEOUT=${TRAIN_TIMEOUT:-300} WORKERS=${WORKERS:-2} bash benchmarks/train_parallel.sh /tmp/round/ds.yaml "$runs" \
  "${EPOCHS:-60}" "$@"
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
# Step 2, in the same lease: the scale-out checks (their own time limits), into $OUT/check.tgz.
[[ ${CHECKS:-1} == 1 ]] && OUT=$out DATA=$data bash benchmarks/gpu_check.sh
[[ ${CHECKS:-1} == archive ]] && OUT=$out DATA=$data ONLY_ARCHIVE=1 bash benchmarks/gpu_check.sh
tail -n 3 "$runs"/*.log
