"""Per-op profiles of CellNet and YOLO11n on this CPU: onnxruntime's profiler and LiteRT's.

    .venv/bin/python benchmarks/profile_ops.py [--models-dir runs/peers/models] [--threads 2] [--iters 20]

Profiles the files that benchmarks/peers.py exported (run it first; ``--files`` takes any .onnx/.tflite):
ONNX with ``SessionOptions.enable_profiling`` (node kernel times of the optimized graph), .tflite with
LiteRT's CompiledModel profiler (runtime option ``enable_profiling``, the XNNPACK delegate's per-op
events), which ai_edge_litert's Python API does not expose: it is reached through the C API of the
libLiteRt.so that the wheel ships (ctypes; the CompiledModel API, where bloodcell and peers.py run
the older Interpreter API, both on XNNPACK). Each file is profiled in its own subprocess, warm-up
runs left out. Tables: time by op type and the top nodes, in ms per run and % of the summed op time;
written to --out as markdown and JSON. Profiling adds overhead: take latencies from peers.py.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from peers import DEFAULT_DATA, ROOT, cpu_info, default_image, load_input

DEFAULT_FILES = (
    "cellnet.onnx",
    "yolo11n.onnx",
    "cellnet_int8.onnx",
    "yolo11n_int8.onnx",
    "cellnet_fp32.tflite",
    "yolo11n_fp32.tflite",
    "cellnet_int8.tflite",
    "yolo11n_int8.tflite",
)


@dataclass
class Profile:
    file: str
    runtime: str
    runs: int = 0
    wall_ms: float | None = None  # median wall time of a profiled run
    ops: dict[str, dict[str, float]] = field(default_factory=dict)  # op type -> {ms, nodes}
    nodes: list[dict[str, Any]] = field(default_factory=list)  # name, op, ms (per run), shape
    error: str = ""

    @property
    def total_ms(self) -> float:
        return sum(v["ms"] for v in self.ops.values())


def spec_for(shape: Sequence[int]) -> dict[str, Any]:
    """Input spec from the model's input shape: NHWC is bloodcell's (0..255), NCHW YOLO's (0..1)."""
    if shape[-1] == 3:
        return {"layout": "NHWC", "width": int(shape[2]), "height": int(shape[1]), "scale": 1.0}
    return {"layout": "NCHW", "width": int(shape[3]), "height": int(shape[2]), "scale": 1 / 255}


def aggregate(profile: Profile, events: list[tuple[str, str, float, str]], runs: int) -> None:
    """(node, op type, ms, shape) events of ``runs`` runs -> per-run totals by op type and by node."""
    by_op: dict[str, float] = defaultdict(float)
    nodes_of: dict[str, set[str]] = defaultdict(set)
    by_node: dict[str, list[Any]] = {}
    for node, op, ms, shape in events:
        by_op[op] += ms / runs
        nodes_of[op].add(node)
        row = by_node.setdefault(node, [op, 0.0, shape])
        row[1] += ms / runs
    profile.runs = runs
    profile.ops = {
        op: {"ms": ms, "nodes": len(nodes_of[op])} for op, ms in sorted(by_op.items(), key=lambda kv: -kv[1])
    }
    profile.nodes = [
        {"name": n, "op": op, "ms": ms, "shape": shape}
        for n, (op, ms, shape) in sorted(by_node.items(), key=lambda kv: -kv[1][1])
    ]


# ---------------------------------------------------------------- onnxruntime


def profile_onnx(path: Path, image: Path, threads: int, warmup: int, iters: int) -> Profile:
    import numpy as np
    import onnxruntime as ort

    profile = Profile(path.name, f"onnxruntime {ort.__version__}")
    with tempfile.TemporaryDirectory() as tmp:
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(tmp) / path.stem)
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        inp = session.get_inputs()[0]
        x = load_input(image, spec_for(inp.shape))
        if inp.type == "tensor(uint8)":  # bloodcell's int8 ONNX takes uint8 levels
            x = np.clip(np.round(x), 0, 255).astype(np.uint8)
        feed = {inp.name: x}
        for _ in range(warmup + iters):
            session.run(None, feed)
        trace = json.loads(Path(session.end_profiling()).read_text())
    runs = sorted(
        (e for e in trace if e.get("cat") == "Session" and e.get("name") == "model_run"), key=lambda e: e["ts"]
    )
    timed = runs[-iters:]  # the warm-up runs come first
    profile.wall_ms = statistics.median(e["dur"] for e in timed) / 1e3
    events = []
    for e in trace:
        if e.get("cat") != "Node" or not e["name"].endswith("_kernel_time"):
            continue
        if not any(r["ts"] <= e["ts"] <= r["ts"] + r["dur"] for r in timed):
            continue
        args = e.get("args", {})
        first_output = (args.get("output_type_shape") or [{}])[0]  # e.g. {"float": [1, 16, 240, 320]}
        shape = str(next(iter(first_output.values()), ""))
        events.append((e["name"].removesuffix("_kernel_time"), args.get("op_name", "?"), e["dur"] / 1e3, shape))
    aggregate(profile, events, len(timed))
    return profile


# ---------------------------------------------------------------- LiteRT (C API through ctypes)


class LiteRtError(RuntimeError):
    pass


class LiteRt:
    """The few C functions of libLiteRt.so needed to run a CompiledModel with its profiler."""

    CPU = 1  # kLiteRtHwAcceleratorCpu
    LOCK_WRITE = 1  # kLiteRtTensorBufferLockModeWrite

    def __init__(self) -> None:
        import ai_edge_litert

        self.version = getattr(ai_edge_litert, "__version__", "?")
        self.lib = ctypes.CDLL(str(Path(ai_edge_litert.__file__).parent / "libLiteRt.so"))
        self.libc = ctypes.CDLL(None)
        self.libc.strdup.restype = ctypes.c_void_p
        self.libc.strdup.argtypes = [ctypes.c_char_p]
        self.libc.free.argtypes = [ctypes.c_void_p]
        p, sz, idx = ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t
        out = ctypes.POINTER(ctypes.c_void_p)
        signatures: dict[str, list[Any]] = {
            "LiteRtCreateEnvironment": [ctypes.c_int, p, out],
            "LiteRtCreateModelFromFile": [p, ctypes.c_char_p, out],
            "LiteRtCreateOptions": [out],
            "LiteRtSetOptionsHardwareAccelerators": [p, ctypes.c_int],
            "LiteRtCreateOpaqueOptions": [ctypes.c_char_p, p, p, out],
            "LiteRtAddOpaqueOptions": [p, p],
            "LiteRtCreateCompiledModel": [p, p, p, out],
            "LiteRtGetModelSignature": [p, idx, out],
            "LiteRtGetNumSignatureInputs": [p, ctypes.POINTER(sz)],
            "LiteRtGetNumSignatureOutputs": [p, ctypes.POINTER(sz)],
            "LiteRtGetSignatureInputTensorByIndex": [p, idx, out],
            "LiteRtGetSignatureOutputTensorByIndex": [p, idx, out],
            "LiteRtGetRankedTensorType": [p, p],
            "LiteRtGetCompiledModelInputBufferRequirements": [p, idx, idx, out],
            "LiteRtGetCompiledModelOutputBufferRequirements": [p, idx, idx, out],
            "LiteRtCreateManagedTensorBufferFromRequirements": [p, p, p, out],
            "LiteRtGetTensorBufferPackedSize": [p, ctypes.POINTER(sz)],
            "LiteRtLockTensorBuffer": [p, out, ctypes.c_int],
            "LiteRtUnlockTensorBuffer": [p],
            "LiteRtRunCompiledModel": [p, idx, sz, p, sz, p],
            "LiteRtCompiledModelGetProfiler": [p, out],
            "LiteRtResetProfiler": [p],
            "LiteRtStartProfiler": [p],
            "LiteRtStopProfiler": [p],
            "LiteRtGetProfileSummary": [p, p, out],
        }
        for name, argtypes in signatures.items():
            fn = getattr(self.lib, name)  # AttributeError: this LiteRT lacks it
            fn.argtypes, fn.restype = argtypes, ctypes.c_int
        for name in ("LiteRtDestroyTensorBuffer", "LiteRtDestroyCompiledModel", "LiteRtDestroyOptions"):
            getattr(self.lib, name).argtypes = [p]
        self.lib.LiteRtDestroyModel.argtypes = [p]
        self.lib.LiteRtDestroyEnvironment.argtypes = [p]

    def __call__(self, name: str, *args: Any) -> None:
        status = getattr(self.lib, name)(*args)
        if status != 0:
            raise LiteRtError(f"{name} returned status {status}")

    def opaque_option(self, options: ctypes.c_void_p, identifier: bytes, toml: str) -> None:
        """Add an options payload (a TOML string the runtime parses and frees) to ``options``."""
        opaque = ctypes.c_void_p()
        payload = self.libc.strdup(toml.encode())
        free = ctypes.cast(self.libc.free, ctypes.c_void_p)
        self("LiteRtCreateOpaqueOptions", identifier, payload, free, ctypes.byref(opaque))
        self("LiteRtAddOpaqueOptions", options, opaque)


# one line of the profile summary's "Run Order" table (TFLite's profile summarizer format)
SUMMARY_ROW = re.compile(
    r"^\s*(?P<op>\S.*?)\s+[\d.]+\s+[\d.]+\s+(?P<avg>[\d.]+)\s+[\d.]+%\s+[\d.]+%\s+[\d.]+\s+(?P<calls>\d+)\s+(?P<name>\S.*)$"
)


def parse_summary(text: str) -> list[tuple[str, str, float, int]]:
    """(name, op, avg ms per call, calls) of each node in the summary's Run Order section."""
    rows = []
    section = ""
    for line in text.splitlines():
        if line.startswith("====="):
            section = line.strip("= ").lower()
            continue
        if section == "run order" and (m := SUMMARY_ROW.match(line)):
            rows.append((m["name"].strip(), m["op"], float(m["avg"]), int(m["calls"])))
    return rows


def profile_tflite(path: Path, image: Path, threads: int, warmup: int, iters: int) -> Profile:
    import numpy as np
    from ai_edge_litert.interpreter import Interpreter

    try:
        rt = LiteRt()
    except (OSError, AttributeError, ImportError) as e:
        return Profile(path.name, "ai-edge-litert", error=f"LiteRT op profiling unavailable: {e}")
    profile = Profile(path.name, f"ai-edge-litert {rt.version} (CompiledModel, XNNPACK, C API profiler)")
    detail = Interpreter(str(path)).get_input_details()[0]  # input shape and quantization
    x = load_input(image, spec_for(detail["shape"]))
    if detail["dtype"] != np.float32:
        scale, zero = detail["quantization"]
        info = np.iinfo(detail["dtype"])
        x = np.clip(np.round(x / scale + zero), info.min, info.max).astype(detail["dtype"])
    v = ctypes.c_void_p
    env, model, options, compiled, sig, profiler = v(), v(), v(), v(), v(), v()
    buffers: list[v] = []
    try:
        rt("LiteRtCreateEnvironment", 0, None, ctypes.byref(env))
        rt("LiteRtCreateModelFromFile", env, str(path).encode(), ctypes.byref(model))
        rt("LiteRtCreateOptions", ctypes.byref(options))
        rt("LiteRtSetOptionsHardwareAccelerators", options, LiteRt.CPU)
        rt.opaque_option(options, b"runtime_options_string", "enable_profiling = true\n")
        rt.opaque_option(options, b"xnnpack", f"num_threads = {threads}\n")
        rt("LiteRtCreateCompiledModel", env, model, options, ctypes.byref(compiled))
        rt("LiteRtGetModelSignature", model, 0, ctypes.byref(sig))
        counts = {}
        for kind in ("Input", "Output"):
            n = ctypes.c_size_t()
            rt(f"LiteRtGetNumSignature{kind}s", sig, ctypes.byref(n))
            counts[kind] = n.value
            for i in range(n.value):
                tensor, req, buf = v(), v(), v()
                tensor_type = ctypes.create_string_buffer(512)  # LiteRtRankedTensorType, filled by LiteRT
                rt(f"LiteRtGetSignature{kind}TensorByIndex", sig, i, ctypes.byref(tensor))
                rt("LiteRtGetRankedTensorType", tensor, tensor_type)
                rt(f"LiteRtGetCompiledModel{kind}BufferRequirements", compiled, 0, i, ctypes.byref(req))
                rt("LiteRtCreateManagedTensorBufferFromRequirements", env, tensor_type, req, ctypes.byref(buf))
                buffers.append(buf)
        ins = (v * counts["Input"])(*buffers[: counts["Input"]])
        outs = (v * counts["Output"])(*buffers[counts["Input"] :])
        size, addr = ctypes.c_size_t(), v()
        rt("LiteRtGetTensorBufferPackedSize", ins[0], ctypes.byref(size))
        if size.value == x.nbytes:  # the fixed image; otherwise the buffer keeps its zeros
            rt("LiteRtLockTensorBuffer", ins[0], ctypes.byref(addr), LiteRt.LOCK_WRITE)
            ctypes.memmove(addr.value, x.ctypes.data, x.nbytes)
            rt("LiteRtUnlockTensorBuffer", ins[0])

        def run() -> None:
            rt("LiteRtRunCompiledModel", compiled, 0, counts["Input"], ins, counts["Output"], outs)

        for _ in range(warmup):
            run()
        rt("LiteRtCompiledModelGetProfiler", compiled, ctypes.byref(profiler))
        rt("LiteRtResetProfiler", profiler)
        rt("LiteRtStartProfiler", profiler)
        walls = []
        for _ in range(iters):
            t0 = time.perf_counter()
            run()
            walls.append((time.perf_counter() - t0) * 1e3)
        rt("LiteRtStopProfiler", profiler)
        text_ptr = v()
        rt("LiteRtGetProfileSummary", profiler, compiled, ctypes.byref(text_ptr))
        text = ctypes.string_at(text_ptr.value).decode() if text_ptr.value else ""
        rt.libc.free(text_ptr)
    except LiteRtError as e:
        profile.error = f"LiteRT op profiling failed: {e}"
        return profile
    finally:
        for buf in buffers:
            rt.lib.LiteRtDestroyTensorBuffer(buf)
        for name, handle in (
            ("LiteRtDestroyCompiledModel", compiled),
            ("LiteRtDestroyOptions", options),
            ("LiteRtDestroyModel", model),
            ("LiteRtDestroyEnvironment", env),
        ):
            if handle.value:
                getattr(rt.lib, name)(handle)
    rows = parse_summary(text)
    if not rows:
        profile.error = "LiteRT returned a profile summary without per-op rows"
        return profile
    profile.wall_ms = statistics.median(walls)
    aggregate(profile, [(name, op, avg * calls, "") for name, op, avg, calls in rows], iters)
    return profile


# ---------------------------------------------------------------- report


def markdown(profiles: list[Profile], top: int) -> str:
    out = []
    for p in profiles:
        out.append(f"### {p.file} — {p.runtime}")
        if p.error:
            out += [p.error, ""]
            continue
        out += [
            f"{p.runs} profiled runs: median wall {p.wall_ms:.1f} ms/run, summed op time {p.total_ms:.1f} ms/run",
            "",
            "| op type | nodes | ms/run | % |",
            "|---|---|---|---|",
        ]
        for op, v in list(p.ops.items())[:top]:
            out.append(f"| {op} | {v['nodes']:.0f} | {v['ms']:.2f} | {100 * v['ms'] / p.total_ms:.1f} |")
        if len(p.ops) > top:
            rest = sum(v["ms"] for v in list(p.ops.values())[top:])
            out.append(f"| ({len(p.ops) - top} more types) | | {rest:.2f} | {100 * rest / p.total_ms:.1f} |")
        out += ["", f"Top {top} nodes:", "", "| node | op type | output | ms/run | % |", "|---|---|---|---|---|"]
        for n in p.nodes[:top]:
            out.append(
                f"| {n['name']} | {n['op']} | {n['shape'] or '—'} | {n['ms']:.2f} | {100 * n['ms'] / p.total_ms:.1f} |"
            )
        share = sum(n["ms"] for n in p.nodes[:top]) / p.total_ms
        out += ["", f"Top {top} of {len(p.nodes)} nodes: {100 * share:.0f}% of the op time.", ""]
    return "\n".join(out) + "\n"


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    ap.add_argument("--models-dir", type=Path, default=ROOT / "runs" / "peers" / "models")
    ap.add_argument("--files", nargs="*", help=f"model files (default: {', '.join(DEFAULT_FILES)} in --models-dir)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--top", type=int, default=15)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="BCCD folder (its first val image is the input)")
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "profile")
    ap.add_argument("--single", nargs=2, metavar=("MODEL", "RESULT"), help=argparse.SUPPRESS)  # worker mode
    args = ap.parse_args(argv)

    image = default_image(args.data)
    if args.single:  # one file in this process; the parent survives a crash of the C API
        f, result = Path(args.single[0]), Path(args.single[1])
        run = profile_onnx if f.suffix == ".onnx" else profile_tflite
        result.write_text(json.dumps(asdict(run(f, image, args.threads, args.warmup, args.iters))))
        return

    files = [Path(f) for f in args.files] if args.files else [args.models_dir / f for f in DEFAULT_FILES]
    profiles = []
    for f in files:
        if not f.exists():
            profiles.append(Profile(f.name, "—", error=f"missing {f}: run benchmarks/peers.py first"))
            continue
        print(f"profiling {f} ...", flush=True)
        with tempfile.TemporaryDirectory() as tmp:
            result = Path(tmp) / "profile.json"
            cmd = [sys.executable, __file__, "--single", str(f), str(result), "--data", str(args.data)]
            cmd += ["--threads", str(args.threads), "--warmup", str(args.warmup), "--iters", str(args.iters)]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if result.exists():
                profiles.append(Profile(**json.loads(result.read_text())))
            else:
                tail = (proc.stderr.strip().splitlines() or ["no output"])[-1][:200]
                profiles.append(Profile(f.name, "—", error=f"profiling process exited {proc.returncode}: {tail}"))
    cpu = cpu_info()
    flags = ", ".join(k for k, v in cpu["flags"].items() if v)
    head = (
        f"CPU: {cpu['model']} ({flags}); {args.threads} threads, {args.warmup} warm-up + {args.iters} profiled "
        f"runs per file; {time.strftime('%Y-%m-%d %H:%M')}\n\n"
    )
    text = head + markdown(profiles, args.top)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "profile_ops.md").write_text(text)
    report = {"cpu": cpu, "args": {k: str(v) for k, v in vars(args).items()}, "profiles": [asdict(p) for p in profiles]}
    (args.out / "profile_ops.json").write_text(json.dumps(report, indent=1))
    print(text)
    print(f"wrote {args.out / 'profile_ops.md'} and {args.out / 'profile_ops.json'}")


if __name__ == "__main__":
    main()
