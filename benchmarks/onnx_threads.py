"""ONNX network time with more threads than cores: onnxruntime's spinning worker threads, and bloodcell's way.

    python benchmarks/onnx_threads.py FILE.onnx [--threads 1,2,16,64] [--iters 5]

For each thread count: onnxruntime as configured by default (idle threads spin) and with spinning off, which
bloodcell's ONNX predictor does when --threads exceeds the cores this process may use. One row per count, in
ms per pass (the mean of --iters after one warm-up pass), with the CPU's ISA flags above the table.
"""

from __future__ import annotations

import argparse
import re
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from bloodcell.runtime.timing import available_cores


def network_ms(model: Path, threads: int, spinning: bool, iters: int) -> float:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    graph_input = session.get_inputs()[0]
    dtype = np.uint8 if graph_input.type == "tensor(uint8)" else np.float32
    feed = {graph_input.name: np.zeros([d if isinstance(d, int) else 1 for d in graph_input.shape], dtype)}
    session.run(None, feed)  # warm-up: allocations and thread start
    t0 = time.perf_counter()
    for _ in range(iters):
        session.run(None, feed)
    return (time.perf_counter() - t0) / iters * 1000


def isa_flags() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "unknown (no /proc/cpuinfo)"
    flags = sorted(set(re.findall(r"\b(avx512[a-z_0-9]*|avx_vnni|avx2|amx[a-z_]*)\b", text)))
    return " ".join(flags) or "no AVX2"


def main() -> None:
    p = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    p.add_argument("model", type=Path, help="an ONNX export (bloodcell export --format onnx)")
    p.add_argument("--threads", default="1,2,16,64", help="comma-separated thread counts (default: 1,2,16,64)")
    p.add_argument("--iters", type=int, default=5, help="timed passes per setting (default: 5)")
    args = p.parse_args()
    print(f"CPU ISA: {isa_flags()}; cores this process may use: {available_cores()}")
    print("| threads | spinning (onnxruntime's default) | spinning off | bloodcell uses |")
    print("|---|---|---|---|")
    for threads in (int(t) for t in args.threads.split(",")):
        spin = network_ms(args.model, threads, True, args.iters)
        calm = network_ms(args.model, threads, False, args.iters)
        ours = "spinning off" if threads > available_cores() else "spinning"
        print(f"| {threads} | {spin:.1f} ms | {calm:.1f} ms | {ours} |")


if __name__ == "__main__":
    main()
