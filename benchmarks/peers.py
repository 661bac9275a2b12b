"""Network (and whole-pipeline) latency of CellNet beside YOLO11n, YOLOv8n and torchvision detectors on this CPU.

Setup (once; ultralytics is AGPL and stays in its own venv, never a bloodcell dependency):

    bash benchmarks/peers_setup.sh

Run (from the repository root; exports are cached under --out/models, --reexport redoes them):

    .venv/bin/python benchmarks/peers.py [--threads 2] [--rounds 2] [--iters 30] [--out runs/peers]
        [--cellnet-model A.pt B.pt ...] [--pipeline N]

What is timed: the network only, ``session.run`` / ``interpreter.invoke`` / ``module(x)`` on one fixed
preprocessed tensor (the first BCCD val image, letterboxed to the model's input), median over the
iterations after warm-up. Each model file runs in its own subprocess; the rounds alternate over all
files (odd rounds in reverse order) so slow drift of a shared machine hits every model alike.

- CellNet: every bloodcell export format of the shipped model (``bloodcell export``: ONNX fp32 and
  int8, TFLite fp32 and full-int8) and the shipped .pt in torch eager. bloodcell's ONNX int8 is
  onnxruntime's ``quantize_static``, the recipe of the YOLO ONNX int8 rows, with a uint8 input.
  Timed with the main venv's python.
- YOLO11n / YOLOv8n: built from their architecture YAMLs with nc=3 and random init (latency only, no
  weight download), exported by ultralytics at imgsz=(480, 640), i.e. a 640x480 network input like
  CellNet's: ONNX fp32, ONNX int8 (``quantize_static``), LiteRT/TFLite fp32 and int8 (ultralytics'
  litert-torch export: int8 weights and activations, fp32 input/output). Built in .venv-peers only.
- torchvision (BSD-3): ssdlite320_mobilenet_v3_large at its native 320x320, fcos_resnet50_fpn and
  retinanet_resnet50_fpn at 640x480 (no resize to 800 px), num_classes=4, no weights; backbone+head
  exported to ONNX fp32 (no torchvision transform, anchor decoding or NMS, like the other rows).
  A model whose ONNX export fails is timed in torch eager instead, and the table says so.

``--cellnet-model`` times these CellNet files (each at its own input size) instead of the shipped one.
``--pipeline N`` adds a second table: each model's int8 files (TFLite, ONNX) as whole pipelines on N decoded
BCCD val frames (bloodcell's ``predict_image``, with its scale handling, decoding, NMS and counts;
ultralytics' ``predict`` with its letterbox and NMS), also in alternating rounds.

Params and GFLOPs (2 FLOPs per multiply-add, torch.utils.flop_counter.FlopCounterMode) are counted
on the torch models at the timed input size. Writes ``peers.md`` and ``peers.json`` to --out.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    import torch

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "BCCD"
MAIN_PYTHON = ROOT / ".venv" / "bin" / "python"
PEERS_PYTHON = ROOT / ".venv-peers" / "bin" / "python"
CPU_FLAGS = (
    "avx2",
    "fma",
    "avx512f",
    "avx512bw",
    "avx512_vnni",
    "avx512_bf16",
    "avx_vnni",
    "amx_tile",
    "amx_int8",
    "amx_bf16",
)
YOLO_ARCHS = ("yolo11n", "yolov8n")
TV_ARCHS = ("ssdlite320_mobilenet_v3_large", "fcos_resnet50_fpn", "retinanet_resnet50_fpn")
ALL_MODELS = ("cellnet", *YOLO_ARCHS, *TV_ARCHS)


def licence(model: str) -> str:
    return LICENCES.get("cellnet" if model.startswith("cellnet") else model, "")


LICENCES = {
    "cellnet": "Apache-2.0 (bloodcell)",
    **dict.fromkeys(YOLO_ARCHS, "AGPL-3.0"),
    **dict.fromkeys(TV_ARCHS, "BSD-3"),
}
RESULT_FILE_ENV = "PEERS_RESULT_FILE"

# Input spec (JSON-friendly): layout NHWC/NCHW, width, height, scale (pixel multiplier), mean/std or None.
Spec = dict[str, Any]


@dataclasses.dataclass
class Entry:
    """One row: a model in one format, and where and how to run it."""

    model: str
    format: str
    python: str  # "main" or "peers"
    spec: Spec
    path: str | None = None  # model file; for torch eager the CellNet .pt (None: shipped model or a peer)
    status: str = "ok"  # otherwise why it was not timed
    note: str = ""
    params_m: float | None = None
    gflops: float | None = None
    times_ms: list[list[float]] = dataclasses.field(default_factory=list)  # one list per round
    runtime: str = ""


# ---------------------------------------------------------------- shared helpers (any venv)


def cpu_info() -> dict[str, Any]:
    """CPU model and which of the ISA flags that matter for int8/fp32 kernels it has."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and model in ("", platform.machine(), platform.processor()):
                model = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = set(value.split())
    except OSError:
        pass
    return {
        "model": model,
        "cores": os.cpu_count(),
        "flags": {f: f in flags for f in CPU_FLAGS},
    }


def load_input(image: Path, spec: Spec) -> np.ndarray:
    """The fixed network input: ``image`` letterboxed (grey 114) to the spec's size, scaled and laid out."""
    import numpy as np
    from PIL import Image

    w, h = spec["width"], spec["height"]
    im = Image.open(image).convert("RGB")
    r = min(w / im.width, h / im.height)
    nw, nh = round(im.width * r), round(im.height * r)
    canvas = np.full((h, w, 3), 114, np.uint8)
    top, left = (h - nh) // 2, (w - nw) // 2
    canvas[top : top + nh, left : left + nw] = np.asarray(im.resize((nw, nh), Image.BILINEAR))
    x = canvas.astype(np.float32) * spec["scale"]
    if spec.get("mean"):
        x = (x - np.array(spec["mean"], np.float32)) / np.array(spec["std"], np.float32)
    if spec["layout"] == "NCHW":
        x = x.transpose(2, 0, 1)
    return np.ascontiguousarray(x[None])


def count_flops(module: torch.nn.Module, example: torch.Tensor) -> tuple[float, float]:
    """(params in millions, GFLOPs for one forward of ``example``)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    params = sum(p.numel() for p in module.parameters())
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        module(example)
    return params / 1e6, counter.get_total_flops() / 1e9


def write_result(result: dict[str, Any]) -> None:
    Path(os.environ[RESULT_FILE_ENV]).write_text(json.dumps(result))


def error_text(e: BaseException) -> str:
    return f"{type(e).__name__}: {' '.join(str(e).split())[:240]}"


# ---------------------------------------------------------------- torch models (workers)


def build_torch(model: str, work: Path, cellnet_model: str | None = None) -> tuple[torch.nn.Module, Spec]:
    """(eval module taking the spec's layout, spec) for a model name; no weights are downloaded.
    ``cellnet_model``: the CellNet .pt file (default: the shipped model)."""
    import torch

    torch.manual_seed(0)
    if model == "cellnet":
        from bloodcell.export.graph import ExportGraph
        from bloodcell.models.checkpoint import load_model
        from bloodcell.weights import default_model

        path, sha = (cellnet_model, None) if cellnet_model else default_model()
        net, info = load_model(path, sha)
        w, h = info.input_size
        return ExportGraph(net).eval(), {"layout": "NHWC", "width": w, "height": h, "scale": 1.0}
    if model in YOLO_ARCHS:
        return yolo(model, work).model.eval(), {"layout": "NCHW", "width": 640, "height": 480, "scale": 1 / 255}
    if model in TV_ARCHS:
        import torchvision.models.detection as det

        net = getattr(det, model)(weights=None, weights_backbone=None, num_classes=4).eval()
        size = 320 if model.startswith("ssdlite320") else None
        spec = {
            "layout": "NCHW",
            "width": size or 640,
            "height": size or 480,
            "scale": 1 / 255,
            "mean": list(net.transform.image_mean),
            "std": list(net.transform.image_std),
        }
        return network_only(net).eval(), spec
    raise ValueError(f"unknown model {model!r}")


def network_only(detector: torch.nn.Module) -> torch.nn.Module:
    """torchvision detector -> backbone + head on a normalized tensor (no transform, decoding or NMS)."""
    from torch import nn

    class NetworkOnly(nn.Module):  # defined here: torch is imported by workers only
        def __init__(self) -> None:
            super().__init__()
            self.backbone, self.head = detector.backbone, detector.head

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
            outputs = self.head(list(self.backbone(x).values()))
            return tuple(outputs[k] for k in sorted(outputs))

    return NetworkOnly()


def yolo(arch: str, work: Path) -> Any:  # ultralytics.YOLO
    """An ultralytics YOLO built from its architecture YAML with nc=3 (random init)."""
    from ultralytics import YOLO
    from ultralytics.nn.tasks import yaml_model_load
    from ultralytics.utils import YAML

    cfg = yaml_model_load(f"{arch}.yaml")  # the package's own YAML, scale from the name
    cfg["nc"] = 3
    for key in ("scale", "yaml_file"):
        cfg.pop(key, None)
    work.mkdir(parents=True, exist_ok=True)
    YAML.save(work / f"{arch}.yaml", cfg)  # same stem: ultralytics still picks scale "n"
    return YOLO(str(work / f"{arch}.yaml"))


def worker_info(args: argparse.Namespace) -> None:
    """Params/GFLOPs and input spec of a torch model (CellNet, in the main venv)."""
    import torch

    module, spec = build_torch(args.model, Path(args.work), args.cellnet_model)
    example = torch.from_numpy(load_input(Path(args.image), spec))
    params, gflops = count_flops(module, example)
    write_result({"spec": spec, "params_m": params, "gflops": gflops})


def worker_export_yolo(args: argparse.Namespace) -> None:
    """Export one YOLO to ONNX fp32 and LiteRT fp32/int8; a failed format is reported, not fatal."""
    import torch

    work, models = Path(args.work), Path(args.models)
    os.chdir(work)  # ultralytics writes its exports beside the working directory's YAML name
    model = yolo(args.model, work)
    spec = {"layout": "NCHW", "width": 640, "height": 480, "scale": 1 / 255}
    example = torch.from_numpy(load_input(Path(args.image), spec))
    params, gflops = count_flops(copy.deepcopy(model.model).eval(), example)  # the exporter gets the untouched one
    common = {"imgsz": (spec["height"], spec["width"]), "batch": 1, "device": "cpu"}
    jobs = {
        "onnx fp32": ({"format": "onnx", "opset": 17, "simplify": True}, ".onnx"),
        "tflite fp32": ({"format": "litert"}, "_fp32.tflite"),
        "tflite int8": ({"format": "litert", "quantize": 8, "data": args.calib_yaml}, "_int8.tflite"),
    }
    files: dict[str, dict[str, str]] = {}
    for fmt, (kwargs, suffix) in jobs.items():
        try:
            out = Path(model.export(**common, **kwargs))
            dst = models / f"{args.model}{suffix}"
            shutil.move(out, dst)
            files[fmt] = {"path": str(dst)}
        except Exception as e:  # exporters raise many types; the row reports it
            files[fmt] = {"error": f"conversion fails: {error_text(e)}"}
    import ultralytics

    write_result(
        {"spec": spec, "params_m": params, "gflops": gflops, "files": files, "ultralytics": ultralytics.__version__}
    )


def worker_export_torchvision(args: argparse.Namespace) -> None:
    """Backbone+head of a torchvision detector to ONNX fp32, checked by one onnxruntime run."""
    import torch

    module, spec = build_torch(args.model, Path(args.work))
    x = torch.from_numpy(load_input(Path(args.image), spec))
    params, gflops = count_flops(module, x)
    dst = Path(args.models) / f"{args.model}.onnx"
    result: dict[str, Any] = {"spec": spec, "params_m": params, "gflops": gflops}
    try:
        torch.onnx.export(module, (x,), str(dst), dynamo=False, opset_version=17, input_names=["images"])
        import onnxruntime as ort

        ort.InferenceSession(str(dst), providers=["CPUExecutionProvider"]).run(None, {"images": x.numpy()})
        result["files"] = {"onnx fp32": {"path": str(dst)}}
    except Exception as e:  # torch.onnx raises many types
        dst.unlink(missing_ok=True)
        result["files"] = {"onnx fp32": {"error": f"ONNX export fails: {error_text(e)}"}}
    write_result(result)


def worker_quantize(args: argparse.Namespace) -> None:
    """ONNX fp32 -> int8 with bloodcell's recipe (onnxruntime quantize_static: QDQ, u8 activations, s8
    per-channel weights); the input stays float, as the peer's own pipeline feeds it."""
    from bloodcell.export.onnx_int8 import quantize_qdq

    spec = json.loads(args.spec)
    src, dst = Path(args.src), Path(args.dst)
    feeds = [{args.input_name: load_input(Path(p), spec)} for p in args.calib]
    try:
        try:  # shape inference + graph cleanup first, as onnxruntime recommends; optional here
            quantize_qdq(src, dst, feeds)
        except Exception as e:  # best effort: quantize the plain graph
            print(f"prepared graph not quantized ({error_text(e)}); quantizing it as it is", file=sys.stderr)
            quantize_qdq(src, dst, feeds, prepare=False)
        write_result({"path": str(dst)})
    except Exception as e:
        write_result({"error": f"quantization fails: {error_text(e)}"})


# ---------------------------------------------------------------- timing (worker)


def timed_loop(run: Callable[[], object], warmup: int, iters: int, budget_s: float) -> list[float]:
    """Per-call ms after ``warmup`` calls; stops early past ``budget_s`` (keeping at least 5)."""
    for _ in range(warmup):
        run()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < iters:
        t0 = time.perf_counter()
        run()
        times.append((time.perf_counter() - t0) * 1e3)
        if time.perf_counter() - start > budget_s and len(times) >= min(5, iters):
            break
    return times


def worker_time(args: argparse.Namespace) -> None:
    """Time one entry: ONNX in onnxruntime, .tflite in LiteRT, or a torch module in eager mode."""
    import numpy as np

    entry = Entry(**json.loads(Path(args.entry).read_text()))
    x = load_input(Path(args.image), entry.spec)
    path = Path(entry.path) if entry.path else None
    if path is not None and path.suffix == ".onnx":
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = args.threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        graph_input = session.get_inputs()[0]
        if graph_input.type == "tensor(uint8)":  # bloodcell's int8 ONNX takes uint8 levels (same cost per value)
            x = np.clip(np.round(x), 0, 255).astype(np.uint8)
        feed = {graph_input.name: x}
        times = timed_loop(lambda: session.run(None, feed), args.warmup, args.iters, args.budget_s)
        runtime = f"onnxruntime {ort.__version__}"
    elif path is not None and path.suffix == ".tflite":
        from ai_edge_litert import __version__ as litert_version
        from ai_edge_litert.interpreter import Interpreter

        it = Interpreter(str(path), num_threads=args.threads)
        it.allocate_tensors()
        inp = it.get_input_details()[0]
        if inp["dtype"] != np.float32:  # full-int8 model: quantize the input with its own scale
            scale, zero = inp["quantization"]
            info = np.iinfo(inp["dtype"])
            x = np.clip(np.round(x / scale + zero), info.min, info.max).astype(inp["dtype"])
        if tuple(inp["shape"]) != x.shape:
            raise SystemExit(f"{path}: input {tuple(inp['shape'])} differs from the prepared {x.shape}")
        it.set_tensor(inp["index"], x)
        times = timed_loop(it.invoke, args.warmup, args.iters, args.budget_s)
        runtime = f"ai-edge-litert {litert_version}"
    else:
        import torch

        torch.set_num_threads(args.threads)
        # a CellNet row other than the shipped model keeps its .pt file in ``path``
        arch = "cellnet" if entry.model.startswith("cellnet") else entry.model
        module, _ = build_torch(arch, Path(args.work), entry.path)
        tensor = torch.from_numpy(x)

        def run() -> None:
            with torch.inference_mode():
                module(tensor)

        times = timed_loop(run, args.warmup, args.iters, args.budget_s)
        runtime = f"torch {torch.__version__} eager"
    write_result({"times_ms": times, "runtime": runtime})


# ---------------------------------------------------------------- orchestration


class Runner:
    """Runs workers (this file, hidden subcommands) in a chosen venv, one subprocess each."""

    def __init__(self, args: argparse.Namespace, out: Path) -> None:
        self.args, self.out = args, out
        self.pythons = {"main": Path(args.main_python), "peers": Path(args.peers_python)}
        self.logs = out / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.env = {
            **os.environ,
            "OMP_NUM_THREADS": str(args.threads),
            "YOLO_OFFLINE": "1",
            "YOLO_AUTOINSTALL": "false",  # ultralytics must never pip-install from inside the benchmark
            "YOLO_CONFIG_DIR": str(out / "work" / "ultralytics-config"),
            "TF_CPP_MIN_LOG_LEVEL": "2",
        }

    def run(self, python: str, argv: Sequence[str], log: str, timeout: float = 3600) -> dict[str, Any]:
        """Result dict of a worker, or {"error": ...} when it failed (its log has the details)."""
        result_file = self.logs / f"{log}.result.json"
        result_file.unlink(missing_ok=True)
        env = {**self.env, RESULT_FILE_ENV: str(result_file)}
        cmd = [str(self.pythons[python]), str(Path(__file__).resolve()), *argv]
        with open(self.logs / f"{log}.log", "w") as f:
            try:
                rc = subprocess.run(
                    cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=ROOT, timeout=timeout
                ).returncode
            except subprocess.TimeoutExpired:
                return {"error": f"timed out after {timeout:.0f} s (see {f.name})"}
        if result_file.exists():
            return json.loads(result_file.read_text())
        tail = (self.logs / f"{log}.log").read_text().strip().splitlines()[-1:] or ["no output"]
        return {"error": f"worker exited {rc}: {tail[0][:200]} (log: {self.logs / (log + '.log')})"}

    def cached(self, python: str, argv: Sequence[str], log: str) -> dict[str, Any]:
        """Like run(), but reuses the last successful result (exports) unless --reexport."""
        cache = self.out / "models" / f"{log}.json"
        if cache.exists() and not self.args.reexport:
            result = json.loads(cache.read_text())
            paths = [f["path"] for f in result.get("files", {}).values() if "path" in f]
            if "path" in result:
                paths.append(result["path"])
            if all(Path(p).exists() for p in paths):
                return result
        result = self.run(python, argv, log)
        if "error" not in result:
            cache.write_text(json.dumps(result, indent=1))
        return result


def read_json(path: Path) -> dict[str, Any]:
    """The JSON object in ``path``; {} when it is missing or not JSON."""
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def calibration_images(data: Path, count: int) -> list[Path]:
    names = (data / "ImageSets" / "Main" / "train.txt").read_text().split()[:count]
    return [data / "JPEGImages" / f"{n}.jpg" for n in names]


def default_image(data: Path) -> Path:
    return data / "JPEGImages" / f"{(data / 'ImageSets' / 'Main' / 'val.txt').read_text().split()[0]}.jpg"


def yolo_calib_yaml(work: Path, images: list[Path]) -> Path:
    """A YOLO-layout dataset of the calibration images (empty labels) for ultralytics' int8 export."""
    root = work / "calib"
    for sub in ("images", "labels"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for im in images:
        link = root / "images" / im.name
        if not link.exists():
            link.symlink_to(im)
        (root / "labels" / f"{im.stem}.txt").touch()
    yaml = work / "calib.yaml"
    yaml.write_text(f"path: {root}\ntrain: images\nval: images\nnames:\n  0: RBC\n  1: WBC\n  2: Platelets\n")
    return yaml


def peers_ready(runner: Runner) -> str | None:
    """None when .venv-peers imports ultralytics, else why not."""
    py = runner.pythons["peers"]
    if not py.exists():
        return f"{py} missing (bash benchmarks/peers_setup.sh)"
    r = subprocess.run([str(py), "-c", "import ultralytics"], capture_output=True, text=True, env=runner.env)
    return None if r.returncode == 0 else f"ultralytics not importable by {py}: {r.stderr.strip()[-160:]}"


def quantized_entry(runner: Runner, base: Entry, calib: list[Path], note: str) -> Entry:
    """An ONNX int8 row made from ``base`` (an ONNX fp32 row) with onnxruntime's quantize_static."""
    entry = dataclasses.replace(base, format="onnx int8", path=None, note=note, times_ms=[])
    if base.status != "ok" or base.path is None:
        entry.status = f"not made: fp32 ONNX missing ({base.status})"
        return entry
    src = Path(base.path)
    dst = src.with_name(f"{src.stem}_int8.onnx")
    argv = ["_quantize", "--src", str(src), "--dst", str(dst), "--spec", json.dumps(base.spec)]
    argv += ["--input-name", "images", "--calib", *map(str, calib)]
    result = runner.cached(base.python, argv, f"quantize-{src.stem}")
    entry.path, entry.status = result.get("path"), result.get("error", "ok")
    return entry


def cellnet_entries(runner: Runner, own: str | None, common: list[str]) -> list[Entry]:
    """Rows for one CellNet model file (None: the shipped model): torch eager and every bloodcell format."""
    args, models_dir = runner.args, runner.out / "models"
    stem = Path(own).stem if own else "cellnet"
    name = f"cellnet-{stem}" if own else "cellnet"
    chosen = ["--cellnet-model", str(Path(own).resolve())] if own else []
    info = runner.cached("main", ["_info", "--model", "cellnet", *common, *chosen], f"info-{stem}")
    if "error" in info:
        return [Entry(name, "all", "main", {}, status=f"not run: {info['error']}")]
    spec, stats = info["spec"], {"params_m": info["params_m"], "gflops": info["gflops"]}
    what = f"{Path(own).name}, {spec['width']}x{spec['height']}" if own else "shipped cellnet_bccd.pt"
    pt = str(Path(own).resolve()) if own else None
    entries = [Entry(name, "torch eager (.pt)", "main", spec, pt, **stats, note=what)]
    for fmt, extra, file in (
        ("onnx fp32", [], f"{stem}.onnx"),
        ("tflite fp32", [], f"{stem}_fp32.tflite"),
        ("tflite int8", ["--int8", "--data", str(args.data)], f"{stem}_int8.tflite"),
        ("onnx int8", ["--int8", "--data", str(args.data)], f"{stem}_int8.onnx"),
    ):
        dst = models_dir / file
        row = Entry(name, fmt, "main", spec, str(dst), **stats, note="bloodcell export")
        if fmt == "tflite int8":
            row.note += " (int8 I/O, 32 calibration images)"
        elif fmt == "onnx int8":
            row.note += " (QDQ u8/s8 per-channel, uint8 input, 32 calibration images)"
        # a cellnet_int8.onnx from before bloodcell exported int8 ONNX was this script's float-input quantization
        stale = fmt == "onnx int8" and dst.exists() and "onnx_input" not in read_json(dst.with_name(dst.name + ".json"))
        if args.reexport or not dst.exists() or stale:
            argv = ["-m", "bloodcell", "export", "--format", fmt.split()[0], *extra, "--out", str(dst)]
            argv += ["--model", str(Path(own).resolve())] if own else []
            with open(runner.logs / f"export-{dst.stem}.log", "w") as f:
                rc = subprocess.run([str(runner.pythons["main"]), *argv], stdout=f, stderr=subprocess.STDOUT).returncode
            if rc != 0:
                row.status = f"conversion fails: bloodcell export exited {rc} (log: {f.name})"
        entries.append(row)
    return entries


def prepare(runner: Runner, models: list[str], image: Path, calib: list[Path]) -> list[Entry]:
    """Export every format of every model (cached) and return the rows to time."""
    args, out = runner.args, runner.out
    models_dir, work = out / "models", out / "work"
    models_dir.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    common = ["--image", str(image), "--work", str(work), "--models", str(models_dir)]
    entries: list[Entry] = []
    qnote = f"ORT quantize_static QDQ u8/s8 per-channel, {len(calib)} BCCD train images"

    if "cellnet" in models:
        for own in args.cellnet_model or [None]:  # None: the shipped model
            entries += cellnet_entries(runner, own, common)

    yolos = [m for m in models if m in YOLO_ARCHS]
    why_not = peers_ready(runner) if yolos else None
    calib_yaml = yolo_calib_yaml(work, calib) if yolos and why_not is None else None
    for arch in yolos:
        if why_not is not None:
            entries.append(Entry(arch, "all", "peers", {}, status=f"not run: {why_not}"))
            continue
        argv = ["_export_yolo", "--model", arch, "--calib-yaml", str(calib_yaml), *common]
        result = runner.cached("peers", argv, f"export-{arch}")
        spec, stats = result.get("spec", {}), {"params_m": result.get("params_m"), "gflops": result.get("gflops")}
        if "error" in result:
            entries.append(Entry(arch, "all", "peers", spec, status=f"export fails: {result['error']}"))
            continue
        version = f"ultralytics {result.get('ultralytics')}"
        rows = {}
        for fmt, file in result["files"].items():
            note = version + (" (litert-torch; int8 weights+activations, fp32 I/O)" if fmt == "tflite int8" else "")
            rows[fmt] = Entry(arch, fmt, "peers", spec, file.get("path"), file.get("error", "ok"), note, **stats)
        entries.append(rows["onnx fp32"])
        entries.append(quantized_entry(runner, rows["onnx fp32"], calib, qnote))
        entries += [rows["tflite fp32"], rows["tflite int8"]]
        if args.eager:
            entries.append(Entry(arch, "torch eager", "peers", spec, **stats, note=version))

    for arch in (m for m in models if m in TV_ARCHS):
        python = "peers" if runner.pythons["peers"].exists() else "main"
        result = runner.cached(python, ["_export_torchvision", "--model", arch, *common], f"export-{arch}")
        spec, stats = result.get("spec", {}), {"params_m": result.get("params_m"), "gflops": result.get("gflops")}
        if "error" in result:
            entries.append(Entry(arch, "onnx fp32", python, spec, status=f"export fails: {result['error']}"))
            continue
        file = result["files"]["onnx fp32"]
        if "path" in file:
            entries.append(Entry(arch, "onnx fp32", python, spec, file["path"], note="backbone+head", **stats))
        if "error" in file or args.eager:
            note = f"{file['error']}; timed in torch eager instead" if "error" in file else "backbone+head"
            entries.append(Entry(arch, "torch eager", python, spec, note=note, **stats))
    return entries


def run_rounds(runner: Runner, todo: list[Entry], worker: str, extra: list[str], label: str) -> None:
    """Alternating rounds: every entry once per round (odd rounds in reverse), each in a fresh
    subprocess running ``worker`` with the entry and ``extra``; its times go into the entry."""
    rounds = runner.args.rounds
    for r in range(rounds):
        for i, e in enumerate(todo if r % 2 == 0 else todo[::-1]):
            entry_file = runner.logs / "entry.json"
            entry_file.write_text(json.dumps(dataclasses.asdict(e)))
            fmt_slug = "".join(c if c.isalnum() else "_" for c in e.format)
            result = runner.run(
                e.python, [worker, "--entry", str(entry_file), *extra], f"{label}-{e.model}-{fmt_slug}-r{r}"
            )
            if "error" in result:
                e.status = f"timing fails: {result['error']}"
                continue
            e.times_ms.append(result["times_ms"])
            e.runtime = result["runtime"]
            med = statistics.median(result["times_ms"])
            print(
                f"{label} round {r + 1}/{rounds} [{i + 1}/{len(todo)}] {e.model} {e.format}: {med:.1f} ms", flush=True
            )


def time_all(runner: Runner, entries: list[Entry], image: Path) -> None:
    """Network only: every runnable entry on one fixed input tensor."""
    args = runner.args
    extra = ["--image", str(image), "--work", str(runner.out / "work"), "--threads", str(args.threads)]
    extra += ["--warmup", str(args.warmup), "--iters", str(args.iters), "--budget-s", str(args.budget_s)]
    run_rounds(runner, [e for e in entries if e.status == "ok"], "_time", extra, "time")


def worker_pipeline(args: argparse.Namespace) -> None:
    """Time one model's whole pipeline, decoded RGB frame in, final boxes out: bloodcell's
    ``predict_image`` (scale handling, network, decode + NMS, counts) for CellNet files, ultralytics'
    ``predict`` (letterbox, network, NMS) for YOLO files."""
    import numpy as np
    from PIL import Image

    entry = Entry(**json.loads(Path(args.entry).read_text()))
    images = [np.asarray(Image.open(p).convert("RGB")) for p in args.images]
    if entry.model.startswith("cellnet"):
        from bloodcell.export.benchmark import latencies_ms
        from bloodcell.runtime.loader import load_predictor

        predictor = load_predictor(entry.path, threads=args.threads)
        times = latencies_ms(predictor, images, warmup=args.warmup)
        runtime = "bloodcell predict_image (cell size auto)"
    else:
        import ultralytics
        from ultralytics import YOLO

        model = YOLO(entry.path, task="detect")
        frames = [np.ascontiguousarray(im[..., ::-1]) for im in images]  # ultralytics takes BGR arrays

        def run(frame: np.ndarray) -> None:
            model.predict(frame, imgsz=(480, 640), verbose=False)

        for frame in frames[: args.warmup]:
            run(frame)
        times = []
        for frame in frames:
            t0 = time.perf_counter()
            run(frame)
            times.append((time.perf_counter() - t0) * 1000)
        runtime = f"ultralytics {ultralytics.__version__} predict"
    write_result({"times_ms": times, "runtime": runtime})


def time_pipelines(runner: Runner, entries: list[Entry], images: list[Path]) -> list[Entry]:
    """The int8 files (TFLite and ONNX) of every model, timed as whole pipelines in alternating rounds."""
    args = runner.args
    todo = [
        dataclasses.replace(e, times_ms=[], runtime="", note="")
        for e in entries
        if e.status == "ok" and e.format in ("tflite int8", "onnx int8")
    ]
    extra = ["--images", *map(str, images), "--threads", str(args.threads), "--warmup", str(args.warmup)]
    run_rounds(runner, todo, "_pipeline", extra, "pipeline")
    return todo


def pipeline_markdown(rows: list[Entry], images: int) -> str:
    lines = [
        f"Full pipeline, decoded 640x480 RGB frame in, final boxes out; median over {images} BCCD val images per "
        "round:",
        "",
        "| model | file | median ms | round medians | pipeline |",
        "|---|---|---|---|---|",
    ]
    for e in rows:
        pooled = [t for rnd in e.times_ms for t in rnd]
        median = f"**{statistics.median(pooled):.1f}**" if pooled and e.status == "ok" else "—"
        rounds = " / ".join(f"{statistics.median(rnd):.1f}" for rnd in e.times_ms) or "—"
        what = e.runtime if e.status == "ok" else e.status
        lines.append(f"| {e.model} | {Path(e.path or '').name} | {median} | {rounds} | {what} |")
    return "\n".join(lines) + "\n"


def fmt_num(v: float | None, digits: int) -> str:
    return "—" if v is None else f"{v:.{digits}f}"


def markdown(entries: list[Entry], cpu: dict[str, Any], args: argparse.Namespace) -> str:
    flags = ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in cpu["flags"].items())
    lines = [
        f"CPU: {cpu['model']}, {cpu['cores']} logical cores visible; {flags}",
        f"threads {args.threads}, {args.rounds} rounds, warm-up {args.warmup}, up to {args.iters} iterations "
        f"(or {args.budget_s:.0f} s) per round; network only, batch 1; "
        f"{time.strftime('%Y-%m-%d %H:%M')}",
        "",
        "| model | licence | format | input WxH | params (M) | GFLOPs | file (MB) | median ms | round medians "
        "| notes |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for e in entries:
        size = Path(e.path).stat().st_size / 1e6 if e.path and Path(e.path).exists() else None
        pooled = [t for rnd in e.times_ms for t in rnd]
        median = f"**{statistics.median(pooled):.1f}**" if pooled and e.status == "ok" else "—"
        rounds = " / ".join(f"{statistics.median(rnd):.1f}" for rnd in e.times_ms) or "—"
        size_txt = fmt_num(size, 1)
        wh = f"{e.spec['width']}x{e.spec['height']}" if e.spec else "—"
        notes = "; ".join(x for x in (e.note, e.runtime, "" if e.status == "ok" else e.status) if x)
        lines.append(
            f"| {e.model} | {licence(e.model)} | {e.format} | {wh} | {fmt_num(e.params_m, 2)} | "
            f"{fmt_num(e.gflops, 2)} | {size_txt} | {median} | {rounds} | {notes.replace('|', '/')} |"
        )
    return "\n".join(lines) + "\n"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    sub = p.add_subparsers(dest="worker")
    # hidden worker subcommands, run by the orchestrator in the right venv
    w_info = sub.add_parser("_info")
    w_yolo = sub.add_parser("_export_yolo")
    w_tv = sub.add_parser("_export_torchvision")
    for w in (w_info, w_yolo, w_tv):
        w.add_argument("--model", required=True)
        w.add_argument("--image", required=True)
        w.add_argument("--work", required=True)
        w.add_argument("--models", required=True)
    w_info.add_argument("--cellnet-model")
    w_yolo.add_argument("--calib-yaml", required=True)
    w_q = sub.add_parser("_quantize")
    for name in ("--src", "--dst", "--spec", "--input-name"):
        w_q.add_argument(name, required=True)
    w_q.add_argument("--calib", nargs="+", required=True)
    w_p = sub.add_parser("_pipeline")
    w_p.add_argument("--entry", required=True)
    w_p.add_argument("--images", nargs="+", required=True)
    w_p.add_argument("--threads", type=int, required=True)
    w_p.add_argument("--warmup", type=int, required=True)
    w_t = sub.add_parser("_time")
    w_t.add_argument("--entry", required=True)
    w_t.add_argument("--image", required=True)
    w_t.add_argument("--work", required=True)
    w_t.add_argument("--threads", type=int, required=True)
    w_t.add_argument("--warmup", type=int, required=True)
    w_t.add_argument("--iters", type=int, required=True)
    w_t.add_argument("--budget-s", type=float, required=True)

    p.add_argument("--threads", type=int, default=2, help="intra-op threads of every runtime (default 2)")
    p.add_argument("--rounds", type=int, default=2, help="alternating rounds over all files (default 2)")
    p.add_argument("--iters", type=int, default=30, help="timed iterations per file per round (default 30)")
    p.add_argument("--warmup", type=int, default=5, help="untimed iterations first (default 5)")
    p.add_argument("--budget-s", type=float, default=30.0, help="stop a round of one file after this (min 5 iters)")
    p.add_argument("--models", default=",".join(ALL_MODELS), help=f"comma list from {', '.join(ALL_MODELS)}")
    p.add_argument(
        "--cellnet-model", nargs="+", help="CellNet .pt files to export and time (default: the shipped model)"
    )
    p.add_argument("--eager", action="store_true", help="also time every peer in torch eager mode")
    p.add_argument(
        "--pipeline", type=int, default=0, metavar="N",
        help="also time each model's int8 files (TFLite, ONNX) as whole pipelines on N BCCD val images (default 0: no)",
    )  # fmt: skip
    p.add_argument("--calib", type=int, default=8, help="BCCD train images to calibrate the YOLO int8 files")
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="BCCD VOC folder")
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "peers")
    p.add_argument("--reexport", action="store_true", help="redo the exports instead of reusing --out/models")
    p.add_argument("--main-python", default=str(MAIN_PYTHON), help="python with bloodcell (default .venv)")
    p.add_argument("--peers-python", default=str(PEERS_PYTHON), help="python with ultralytics (.venv-peers)")
    return p.parse_args(argv)


WORKERS: dict[str, Callable[[argparse.Namespace], None]] = {
    "_info": worker_info,
    "_export_yolo": worker_export_yolo,
    "_export_torchvision": worker_export_torchvision,
    "_quantize": worker_quantize,
    "_time": worker_time,
    "_pipeline": worker_pipeline,
}


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if args.worker:
        WORKERS[args.worker](args)
        return
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = sorted(set(models) - set(ALL_MODELS))
    if unknown:
        raise SystemExit(f"unknown --models {', '.join(unknown)}; choose from {', '.join(ALL_MODELS)}")
    out = args.out.resolve()
    runner = Runner(args, out)
    cpu = cpu_info()
    print(f"CPU: {cpu['model']}; " + ", ".join(f"{k}={'y' if v else 'n'}" for k, v in cpu["flags"].items()))
    image = default_image(args.data)
    t0 = time.perf_counter()
    entries = prepare(runner, models, image, calibration_images(args.data, args.calib))
    print(f"exports ready in {time.perf_counter() - t0:.0f} s; timing {sum(e.status == 'ok' for e in entries)} files")
    time_all(runner, entries, image)
    table = markdown(entries, cpu, args)
    pipelines: list[Entry] = []
    if args.pipeline:
        names = (args.data / "ImageSets" / "Main" / "val.txt").read_text().split()[: args.pipeline]
        pipelines = time_pipelines(runner, entries, [args.data / "JPEGImages" / f"{n}.jpg" for n in names])
        table += "\n" + pipeline_markdown(pipelines, len(names))
    (out / "peers.md").write_text(table)
    rows = []
    for e in entries:
        row = dataclasses.asdict(e)
        pooled = [t for rnd in e.times_ms for t in rnd]
        row["median_ms"] = round(statistics.median(pooled), 2) if pooled and e.status == "ok" else None
        rows.append(row)
    report = {
        "cpu": cpu,
        "python": sys.version.split()[0],
        "args": {k: str(v) for k, v in vars(args).items() if k != "worker"},
        "image": str(image),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "rows": rows,
        "pipelines": [dataclasses.asdict(e) for e in pipelines],
    }
    (out / "peers.json").write_text(json.dumps(report, indent=1))
    print()
    print(table)
    print(f"wrote {out / 'peers.md'} and {out / 'peers.json'}")


if __name__ == "__main__":
    main()
