#!/usr/bin/env bash
# Builds .venv-peers, the environment of benchmarks/peers.py's peer models (run from anywhere):
#
#     bash benchmarks/peers_setup.sh
#
# ultralytics is AGPL-3.0: it lives only here, never in bloodcell's dependencies or in .venv.
# torch/torchvision/onnx/onnxruntime/TensorFlow/litert-torch are the main venv's (a .pth file adds
# .venv's site-packages after .venv-peers' own), so no multi-GB torch wheel is downloaded again.
# The versions are the ones the benchmark was written against.
set -euo pipefail
cd "$(dirname "$0")/.."

main_py=.venv/bin/python
[ -x "$main_py" ] || { echo "no $main_py: create the main venv first" >&2; exit 1; }
base=$("$main_py" -c 'import sys; print(sys._base_executable)')  # same interpreter, same ABI
[ -x .venv-peers/bin/python ] || "$base" -m venv .venv-peers

main_site=$("$main_py" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
peers_site=$(.venv-peers/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
# addsitedir, not a bare path line: the main venv's own .pth files (bloodcell's editable install) must run too
"$main_py" -c 'import sys; print(f"import site; site.addsitedir({sys.argv[1]!r})")' "$main_site" > "$peers_site/_main_venv.pth"

# --no-deps: ultralytics would pull opencv-python (the main venv has opencv-python-headless) and
# nvidia-ml-py; its light runtime deps are installed by name instead (not polars, ~180 MB, which
# only its DataFrame/CSV/plot helpers import).
.venv-peers/bin/pip install --no-deps ultralytics==8.4.190
.venv-peers/bin/pip install psutil==7.2.2 ultralytics-thop==2.2.3 onnxslim==0.1.98

exclude=$(git rev-parse --git-path info/exclude 2>/dev/null || true)
if [ -n "$exclude" ] && ! grep -qx '/.venv-peers/' "$exclude" 2>/dev/null; then
    echo '/.venv-peers/' >> "$exclude"
fi

YOLO_OFFLINE=1 YOLO_CONFIG_DIR=/tmp/peers-ultralytics-config .venv-peers/bin/python -c \
    'import onnxruntime, torch, torchvision, ultralytics; print("ok: ultralytics", ultralytics.__version__, "torch", torch.__version__, "onnxruntime", onnxruntime.__version__)'
