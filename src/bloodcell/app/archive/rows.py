"""One Parquet row per image: what it is (path, content hash, size), what was found, and by which model."""

from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bloodcell.app.archive.sources import read_bytes
from bloodcell.errors import ImageError
from bloodcell.runtime.counting import Conf
from bloodcell.runtime.images import decode_image
from bloodcell.runtime.loader import load_predictor
from bloodcell.runtime.predict import ImageResult, Predictor, predict_images

if TYPE_CHECKING:
    import pyarrow as pa


def schema(class_names: tuple[str, ...]) -> pa.Schema:
    """The dataset's columns; per-class counts are structs so a query reads ``counts.RBC``."""
    import pyarrow as pa

    per_class = pa.struct([(name, pa.int32()) for name in class_names])
    detection = pa.struct([("label", pa.string()), ("score", pa.float32()), ("box", pa.list_(pa.float32(), 4))])
    return pa.schema(
        [
            ("path", pa.string()),
            ("sha256", pa.string()),  # null when the file could not be read
            ("width", pa.int32()),
            ("height", pa.int32()),
            ("counts", per_class),
            ("count_lo90", per_class),
            ("count_hi90", per_class),
            ("scale", pa.float32()),
            ("exposure_gains", pa.list_(pa.float32(), 3)),  # R, G, B multipliers before detection (runtime.exposure)
            ("detections", pa.list_(detection)),
            ("model", pa.string()),
            ("error", pa.string()),  # null when the image was processed
            ("run_id", pa.string()),
            ("inference_ms", pa.float32()),
            ("warnings", pa.list_(pa.string())),  # what makes a count doubtful (grayscale, an unmeasured scale)
        ]
    )


@dataclass(frozen=True)
class PredictorSpec:
    """What a worker needs to build its own predictor (picklable: sent to processes and Ray actors)."""

    model: str | None
    model_id: str
    run_id: str
    device: str = "cpu"
    threads: int | None = None
    batch: int = 1
    conf: Conf | None = None
    cell_size: float | str | None = "auto"


def content_hash(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _row(uri: str, digest: str | None, spec: PredictorSpec, **values: Any) -> dict:
    base = {"path": uri, "sha256": digest, "model": spec.model_id, "run_id": spec.run_id, "error": None}
    return {**base, "warnings": [], **values}  # an error row too: an empty list, as readers expect of a list column


def result_row(uri: str, digest: str, result: ImageResult, spec: PredictorSpec) -> dict:
    names = result.class_names
    lo = {n: (result.intervals or {}).get(n, (None, None))[0] for n in names}
    hi = {n: (result.intervals or {}).get(n, (None, None))[1] for n in names}
    counted = result.counted
    return _row(
        uri,
        digest,
        spec,
        width=result.width,
        height=result.height,
        counts=result.counts,
        count_lo90=lo if result.intervals else None,
        count_hi90=hi if result.intervals else None,
        scale=result.scale,
        exposure_gains=list(result.exposure_gains),
        detections=[
            {"label": names[int(label)], "score": float(score), "box": [float(v) for v in box]}
            for box, label, score in zip(counted.boxes, counted.labels, counted.scores, strict=True)
        ],
        inference_ms=result.timing_ms.get("inference"),
        warnings=list(result.warnings),
    )


class ImageWorker:
    """Holds one predictor (loaded once per process or actor) and turns URIs into rows.

    A file that cannot be read or decoded becomes a row with ``error`` set; nothing is raised."""

    def __init__(self, spec: PredictorSpec) -> None:
        self.spec = spec
        self.predictor: Predictor = load_predictor(
            spec.model, device=spec.device, threads=spec.threads, batch=spec.batch
        )
        self.conf = self.predictor.conf if spec.conf is None else spec.conf
        # Reading, hashing and JPEG decoding release the GIL: on a GPU, one thread per core keeps
        # the network fed. One pool for the worker's life, not one per task.
        self._loaders = ThreadPoolExecutor(max(1, spec.threads or 1))

    def _predict(self, part: list[tuple[int, str, str, Any]]) -> list[ImageResult | str]:
        images, paths = [g[3] for g in part], [Path(g[1]) for g in part]
        return list(predict_images(self.predictor, images, paths, self.conf, cell_size=self.spec.cell_size))

    def _load(self, uri: str) -> tuple[str | None, Any, str | None]:
        """(content hash, decoded image, error) of one URI; never raises."""
        try:
            data = read_bytes(uri)
        except OSError as e:
            return None, None, f"{uri}: cannot read ({e})"
        digest = content_hash(data)
        try:
            return digest, decode_image(data, uri), None
        except ImageError as e:
            return digest, None, str(e)

    def rows(self, uris: list[str]) -> list[dict]:
        out: dict[int, dict] = {}
        good: list[tuple[int, str, str, Any]] = []
        loaded = list(self._loaders.map(self._load, uris))
        for i, (uri, (digest, image, error)) in enumerate(zip(uris, loaded, strict=True)):
            if error is not None:
                out[i] = _row(uri, digest, self.spec, error=error)
            else:
                good.append((i, uri, digest, image))
        for start in range(0, len(good), self.spec.batch):
            part = good[start : start + self.spec.batch]
            try:
                results = self._predict(part)
            except Exception:
                results = []
                for one in part:  # alone, so the failure lands on the image that caused it
                    try:
                        results += self._predict([one])
                    except Exception as e:
                        results.append(f"{one[1]}: prediction failed ({type(e).__name__}: {str(e)[:200]})")
            for (i, uri, digest, _), result in zip(part, results, strict=True):
                if isinstance(result, str):  # no hash: the job keeps no row, a rerun tries it again
                    out[i] = _row(uri, None, self.spec, error=result)
                else:
                    out[i] = result_row(uri, digest, result, self.spec)
        return [out[i] for i in range(len(uris))]
