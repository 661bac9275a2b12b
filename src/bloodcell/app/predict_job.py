"""`bloodcell predict` on files: run the predictor, feed the sinks, report failures."""

from __future__ import annotations

import sys
from pathlib import Path

from bloodcell.app.annotate import BoxAnnotator
from bloodcell.app.sinks import save_annotated, write_counts_csv, write_json
from bloodcell.runtime.loader import load_predictor
from bloodcell.runtime.predict import predict_paths
from bloodcell.runtime.sources import expand_sources


def run_predict(
    sources: list[str],
    model: str | None = None,
    conf: float | None = None,
    min_score: float | None = None,
    out: str | None = None,
    json_path: str | None = None,
    csv_path: str | None = None,
    threads: int | None = None,
    edgetpu: bool = False,
) -> int:
    """Returns the exit code: 0 when every image was processed, 1 when any failed or none was found."""
    paths, problems = expand_sources(sources)
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    predictor = load_predictor(model, threads=threads, edgetpu=edgetpu)
    annotator = BoxAnnotator(predictor.class_names) if out else None
    results, failed = [], len(problems)
    for r in predict_paths(predictor, paths, conf=conf, min_score=min_score, keep_image=out is not None):
        if r.error:
            print(f"error: {r.error}", file=sys.stderr)
            failed += 1
            continue
        if annotator is not None:
            save_annotated(r, annotator, out)
        r.image = None
        counts = ", ".join(f"{v} {k}" for k, v in r.counts.items())
        print(f"{r.path.name}: {counts} ({r.timing_ms['inference']:.0f} ms)")
        results.append(r)
    if json_path:
        write_json(results, json_path)
    if csv_path:
        write_counts_csv(results, tuple(predictor.class_names), csv_path)
    if out and results:
        print(f"annotated images in {Path(out)}")
    print(f"{len(results)} images processed, {failed} failed", file=sys.stderr if failed else sys.stdout)
    return 1 if failed or not results else 0
