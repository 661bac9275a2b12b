"""`bloodcell benchmark`: every deployable format of one model, scored and timed the same way.

For each format: file size, VOC mAP@0.5 on a split (the same evaluator as `bloodcell val`) and
the median latency per image after warm-up (the whole deployed pipeline), like Ultralytics'
benchmark. Exports are written to the output folder and reused by nothing else.

It lives in ``export`` (not ``engine``): it exports, and only a later stage may import an earlier
one (data -> models -> engine -> export -> app; tests/test_layering.py).
"""

from __future__ import annotations

import csv
import io
import shlex
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from bloodcell.atomic import write_text
from bloodcell.data.check import findings_note
from bloodcell.data.sources import load_dataset
from bloodcell.engine.evaluate import predict_records, score
from bloodcell.errors import BloodcellError, ConfigError, DatasetError, missing_model
from bloodcell.export.formats import CALIB_IMAGES, FORMATS, ExportFormat
from bloodcell.runtime.images import load_image
from bloodcell.runtime.loader import load_predictor
from bloodcell.runtime.predict import predict_image
from bloodcell.weights import model_file

if TYPE_CHECKING:
    from bloodcell.data.voc import VOCRecord
    from bloodcell.runtime.predict import Predictor


@dataclass
class BenchmarkRow:
    format: str
    file: str
    size_mb: float
    map50: float | None
    median_ms: float | None
    error: str = ""


@dataclass(frozen=True)
class Variant:
    """One export to benchmark: a format of the table, fp32 or int8 (post-training quantized)."""

    format: ExportFormat
    int8: bool

    @property
    def label(self) -> str:
        return f"{self.format.name} {'int8 (PTQ)' if self.int8 else 'fp32'}"

    def file_name(self, stem: str) -> str:
        return f"{stem}{'_int8' if self.int8 else ''}{self.format.suffix}"


def variants() -> list[Variant]:
    """Every format of ``bloodcell.export.formats.FORMATS`` in fp32, and in int8 where it allows it."""
    return [Variant(fmt, int8) for fmt in FORMATS.values() for int8 in (False, True) if fmt.int8 or not int8]


def latencies_ms(predictor: Predictor, images: list, warmup: int = 3) -> list[float]:
    """Per-image wall time of the deployed pipeline (``predict_image``: scale estimate and resizing,
    network, decode + NMS at the operating points, counts and intervals), after warm-up."""
    path = Path("image")
    for im in images[:warmup]:
        predict_image(predictor, im, path, predictor.conf)
    times = []
    for im in images:
        t0 = time.perf_counter()
        predict_image(predictor, im, path, predictor.conf)
        times.append((time.perf_counter() - t0) * 1000)
    return times


def time_and_score(predictor: Predictor, records: list[VOCRecord], warmup: int = 3) -> tuple[float, float]:
    """mAP from the full ranked list (min score 0.001, the deployed scale handling); median latency
    from ``latencies_ms``."""
    preds = predict_records(predictor, records, cell_size="auto")
    metrics = score(preds, records, tuple(predictor.class_names), predictor.conf, predictor.calibration)
    images = [load_image(r.image_path) for r in records]
    return metrics.voc_map50, statistics.median(latencies_ms(predictor, images, warmup))


def benchmark(
    model: str | Path | None,
    data: str | Path,
    split: str = "val",
    threads: int = 2,
    out: str | Path = "runs/benchmark",
    extra: list[str | Path] | None = None,
    calib_images: int = CALIB_IMAGES,
) -> list[BenchmarkRow]:
    """Export ``model`` to every format, then score and time each (plus ``extra`` files, e.g. a QAT export)."""
    # imported here: the exporter brings torch, and ``latencies_ms`` times .tflite/.onnx models without it
    from bloodcell.export.exporter import calibration_shortfall, export_model
    from bloodcell.models.checkpoint import load_model, read_checkpoint
    from bloodcell.models.registry import MODELS

    if model is not None and Path(model).suffix.lower() != ".pt":
        raise ConfigError(f"--model {model}: benchmark exports a .pt model to every format (add exports with --extra)")
    out = Path(out)
    source = model_file(model)
    # a missing, broken or not exportable --model: one error now, not a row per format
    arch = (read_checkpoint(source).get("info") or {}).get("name")
    if arch in MODELS and MODELS[arch].kind != "dense":
        raise ConfigError(f"--model {source}: a {arch} model, which cannot be exported; benchmark needs cellnet")
    load_model(source)  # its settings and weights build the network (a file with a header but no weights: now)
    for path in extra or []:  # a missing or broken --extra (not a model, another export's sidecar): now
        if not Path(path).is_file():
            raise missing_model(Path(path))
        if Path(path).name.lower().endswith((".onnx.json", ".tflite.json")):
            exported = Path(path).with_suffix("")
            raise ConfigError(f"--extra {path}: the metadata of an export; give the model itself: {exported}")
        if Path(path).suffix.lower() == ".pt":  # read, not loaded: loading sets torch's threads for the exports
            read_checkpoint(Path(path))
        else:
            load_predictor(path, threads=1)  # its ModelError names the file; a second, not the exports' minutes
    names = {v.file_name(source.stem) for v in variants()}  # the exports written into --out (and their sidecars)
    for path in extra or []:
        if Path(path).parent.resolve() == out.resolve() and Path(path).name.removesuffix(".json") in names:
            raise ConfigError(f"--extra {path}: benchmark writes its own export there (--out {out}); move it out")
    dataset = load_dataset(data, split=split)
    records = dataset.records
    if note := findings_note(dataset):
        print(note, file=sys.stderr)
    if not records:  # nothing to score: said now, not as an error in every row after every export
        raise DatasetError(
            f"{data}: split {split!r} has no image to score ({sum(f.skips_image for f in dataset.findings)} listed "
            f"images left out; `bloodcell data check {shlex.quote(str(data))}` says why)"
        )
    print(f"exporting {source.name} to {len(variants())} formats, then timing each", file=sys.stderr, flush=True)
    candidates: list[tuple[str, Path | None, str]] = [("torch (.pt)", source, "")]
    for variant in variants():
        path = out / variant.file_name(source.stem)
        try:
            calibration = {"calib_images": calib_images, "data": data} if variant.int8 else {}
            result = export_model(model, variant.format.name, path, int8=variant.int8, **calibration)
            if shortfall := calibration_shortfall(result, calib_images):  # as `export --int8` says it
                print(f"note: {variant.label}: {shortfall}", file=sys.stderr)
            candidates.append((variant.label, path, ""))
        except Exception as e:  # one failed export must not hide the others
            candidates.append((variant.label, None, _reason(e)))
    candidates += [(f"extra: {Path(p).name}", Path(p).absolute(), "") for p in extra or []]

    rows = []
    for name, path, error in candidates:
        if path is None:
            rows.append(BenchmarkRow(name, "", 0.0, None, None, error))
            continue
        try:
            # the CPU for every row (the table is per thread count; a .pt would otherwise take a GPU)
            cpu = {"device": "cpu"} if path.suffix.lower() == ".pt" else {}
            predictor = load_predictor(path if path != source or model else None, threads=threads, **cpu)
            map50, ms = time_and_score(predictor, records)
            rows.append(
                BenchmarkRow(name, str(path), round(path.stat().st_size / 2**20, 2), round(map50, 4), round(ms, 1))
            )
        except Exception as e:
            rows.append(BenchmarkRow(name, str(path), 0.0, None, None, _reason(e)))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(asdict(rows[0])))
    writer.writeheader()
    writer.writerows(asdict(r) for r in rows)
    write_text(out / "benchmark.csv", buffer.getvalue())
    return rows


def _reason(e: Exception) -> str:
    """A failed row's reason: bloodcell's own message in full, another exception's type and first line."""
    if isinstance(e, BloodcellError):
        return str(e)
    first = next((line for line in str(e).splitlines() if line.strip()), "")
    return f"{type(e).__name__}: {first}"


def format_table(rows: list[BenchmarkRow], split: str, threads: int) -> str:
    w = max([22, *(len(r.format) for r in rows)])  # long --extra names keep the columns aligned
    plural = "" if threads == 1 else "s"
    lines = [f"{'format':<{w}} {'size MB':>8} {f'mAP50 {split}':>11} {'ms/img':>8}  ({threads} thread{plural})"]
    for r in rows:
        m = "-" if r.map50 is None else f"{r.map50:.4f}"
        t = "-" if r.median_ms is None else f"{r.median_ms:.1f}"
        lines.append(f"{r.format:<{w}} {r.size_mb:>8.2f} {m:>11} {t:>8}  {r.error}")
    return "\n".join(lines)
