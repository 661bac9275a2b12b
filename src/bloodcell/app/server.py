"""`bloodcell serve`: a FastAPI app (JSON API + one offline page) around a predictor it is given.

Uploads are untrusted: the body is read in chunks up to a size limit, decoded from memory only
when Pillow recognises it as an image, and the client's file name is only echoed (sanitized) in
the JSON answer, never used as a path. Inference runs in a worker thread behind one lock,
because predictors are not thread-safe.
"""

from __future__ import annotations

import io
import re
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from PIL import Image, UnidentifiedImageError
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from bloodcell import __version__
from bloodcell.app.annotate import class_color
from bloodcell.runtime.images import to_rgb_uint8
from bloodcell.runtime.predict import predict_image

STATIC_DIR = Path(__file__).resolve().parent / "static"
MAX_PIXELS = 50_000_000  # larger images are refused (decompression bombs)
FORMATS = ("JPEG", "PNG", "TIFF", "BMP", "WEBP")  # Pillow plugins allowed to decode uploads (JPEG covers MPO)
FORM_OVERHEAD = 64 * 1024  # multipart boundaries and part headers allowed beyond the file itself
PAGE_CSP = "default-src 'self'; img-src 'self' blob: data:; object-src 'none'; base-uri 'none'"
UPLOAD_SCHEMA = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {"file": {"type": "string", "format": "binary"}},
                }
            }
        },
    }
}


class ApiError(Exception):
    """A request the client must fix: answered as ``{"error": message}`` with ``status``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class Upload:
    filename: str
    data: bytes


def safe_name(filename: str | None) -> str:
    """The last path component of a client's file name, reduced to harmless characters (only ever echoed)."""
    name = re.split(r"[/\\]", filename or "")[-1]
    name = re.sub(r"[^\w.\-() ]", "_", name).strip(". ")[:128]
    return name or "upload"


async def read_upload(chunks: AsyncIterator[bytes], content_type: str, limit: int, field: str = "file") -> Upload:
    """Stream a multipart body into memory, keeping only ``field``; 413 as soon as it passes ``limit`` bytes."""
    ctype, params = parse_options_header(content_type)
    if ctype != b"multipart/form-data" or not params.get(b"boundary"):
        raise ApiError(415, f"send the image as multipart/form-data in a field named {field!r}")
    too_big = ApiError(413, f"upload larger than the {limit / 2**20:g} MB limit")
    parts: list[dict] = []
    header = {"field": b"", "value": b""}

    def on_part_begin() -> None:
        parts.append({"headers": {}, "data": bytearray()})

    def on_header_field(data: bytes, start: int, end: int) -> None:
        header["field"] += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        header["value"] += data[start:end]

    def on_header_end() -> None:
        parts[-1]["headers"][header["field"].lower()] = header["value"]
        header["field"] = header["value"] = b""

    def on_part_data(data: bytes, start: int, end: int) -> None:
        buffer = parts[-1]["data"]
        buffer += data[start:end]
        if len(buffer) > limit:
            raise too_big

    parser = MultipartParser(
        params[b"boundary"],
        {
            "on_part_begin": on_part_begin,
            "on_header_field": on_header_field,
            "on_header_value": on_header_value,
            "on_header_end": on_header_end,
            "on_part_data": on_part_data,
        },
    )
    received = 0
    try:
        async for chunk in chunks:
            received += len(chunk)
            if received > limit + FORM_OVERHEAD:
                raise too_big
            parser.write(chunk)
        parser.finalize()
    except FormParserError as e:
        raise ApiError(400, f"malformed multipart body ({e})") from None
    found = []
    for part in parts:
        _, options = parse_options_header(part["headers"].get(b"content-disposition", b""))
        if options.get(b"name") == field.encode():
            found.append(Upload(options.get(b"filename", b"").decode("utf-8", "replace"), bytes(part["data"])))
    if not found:
        raise ApiError(422, f"missing multipart field {field!r}")
    if len(found) > 1:
        raise ApiError(422, f"send one image per request (got {len(found)} {field!r} fields)")
    return found[0]


def decode_image(data: bytes) -> np.ndarray:
    """Bytes -> (H, W, 3) uint8 if Pillow decodes them as an image of at most MAX_PIXELS; else an ApiError."""
    if not data:
        raise ApiError(400, "empty file")
    try:
        with Image.open(io.BytesIO(data), formats=FORMATS) as im:
            if im.width * im.height > MAX_PIXELS:
                raise ApiError(413, f"image of {im.width}x{im.height} pixels is over the {MAX_PIXELS / 1e6:g} MP limit")
            im.load()
            return np.ascontiguousarray(to_rgb_uint8(im))
    except ApiError:
        raise
    except UnidentifiedImageError:
        raise ApiError(415, f"not an image Pillow can read ({', '.join(FORMATS)})") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ApiError(413, f"image too large ({e})") from None
    except Exception as e:  # truncated or corrupt data: Pillow raises OSError, SyntaxError, ValueError, struct.error...
        raise ApiError(422, f"cannot decode image ({type(e).__name__}: {e})") from None


def model_card(predictor, name: str | None = None) -> dict:
    """What /api/v1/model tells: from a .pt model's ModelInfo or an exported model's metadata."""
    info, meta = getattr(predictor, "info", None), getattr(predictor, "meta", None)
    if info is not None:
        architecture, fmt, metrics = info.name, "pytorch", info.metrics
    elif meta is not None:
        architecture, fmt, metrics = meta.get("architecture"), meta.get("model_format"), meta.get("source_metrics")
    else:
        architecture = fmt = metrics = None
    classes = [str(c) for c in predictor.class_names]
    return {
        "name": name or architecture,
        "architecture": architecture,
        "format": fmt,
        "classes": classes,
        "colors": {c: "#{:02x}{:02x}{:02x}".format(*class_color(c, i)) for i, c in enumerate(classes)},
        "input_size": [int(v) for v in predictor.input_size],
        "conf": float(predictor.conf),
        "metrics": metrics or None,
    }


def create_app(predictor, max_upload_mb: float = 20, model_name: str | None = None) -> FastAPI:
    """The web app around ``predictor`` (which it never builds); uploads over ``max_upload_mb`` get 413."""
    Image.MAX_IMAGE_PIXELS = MAX_PIXELS  # Pillow's own bomb guard, process-wide: warns above, raises above 2x
    limit = int(max_upload_mb * 2**20)
    lock = threading.Lock()
    card = model_card(predictor, model_name)
    app = FastAPI(title="bloodcell", version=__version__, description="Detect and count blood cells in images.")

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse({"error": exc.message}, status_code=exc.status)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        text = "; ".join(f"{'.'.join(str(v) for v in e['loc'][1:])}: {e['msg']}" for e in exc.errors())
        return JSONResponse({"error": text}, status_code=422)

    def detect_sync(upload: Upload, min_score: float | None) -> dict:
        image = decode_image(upload.data)
        conf = predictor.conf
        low = conf if min_score is None else min_score
        with lock:
            result = predict_image(predictor, image, Path(safe_name(upload.filename)), conf, low)
        return result.to_record()

    @app.post("/api/v1/detect", openapi_extra=UPLOAD_SCHEMA, summary="Detect and count cells in one image")
    async def detect(
        request: Request,
        min_score: float | None = Query(None, gt=0, le=1, description="lowest score listed (default: conf)"),
    ) -> dict:
        """The record of one image, as in `bloodcell predict --json`: counts use the model's threshold."""
        length = request.headers.get("content-length", "")
        if length.isdigit() and int(length) > limit + FORM_OVERHEAD:
            raise ApiError(413, f"upload larger than the {max_upload_mb:g} MB limit")
        upload = await read_upload(request.stream(), request.headers.get("content-type", ""), limit)
        return await run_in_threadpool(detect_sync, upload, min_score)

    @app.get("/api/v1/health", summary="Liveness")
    async def health() -> dict:
        return {"status": "ok", "version": __version__}

    @app.get("/api/v1/model", summary="Model name, classes, input size, threshold, metrics")
    async def model() -> dict:
        return card

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", headers={"Content-Security-Policy": PAGE_CSP})

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app
