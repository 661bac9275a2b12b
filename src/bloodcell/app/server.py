"""`bloodcell serve`: a FastAPI app (JSON API + one offline page) around a predictor it is given.

Uploads are untrusted: the body is read in chunks up to a size limit by Starlette's multipart
parser, held in memory (never spooled to disk: patient images), decoded only when Pillow recognises
it as an image of at most ``max_pixels`` (read from its header first), and the client's file name
is only echoed (its last path component, without control characters), never used as a path.
Inference runs in a worker thread behind one lock, because predictors are not thread-safe; a pixel
budget bounds how many pixels are decoded and held at once (decoded images waiting for that lock
would otherwise pile up in memory).

Only loopback pages may use it by default: the Host header must name the bound address (or an
allowed host), which defeats DNS rebinding, and a POST whose Origin is another site is refused,
so a web page the user visits cannot post to the local API. Every answer forbids framing and
MIME sniffing.
"""

from __future__ import annotations

import io
import ipaddress
import math
import re
import threading
from collections import deque
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from PIL import Image, UnidentifiedImageError
from python_multipart.multipart import parse_options_header
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers, MutableHeaders, UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import ClientDisconnect

from bloodcell import __version__
from bloodcell.app.api_schema import DETECT_RESPONSES
from bloodcell.errors import ConfigError
from bloodcell.palette import class_hex
from bloodcell.runtime.counting import Conf, class_thresholds, parse_conf, resolve_conf
from bloodcell.runtime.images import OTHER_IMAGE_SUFFIXES, VIDEO_SUFFIXES, StackError, read_pixels
from bloodcell.runtime.metadata import model_ref as metadata_model_ref
from bloodcell.runtime.predict import Predictor, api_cell_size, predict_image
from bloodcell.runtime.scaling import check_cell_size, parse_cell_size

STATIC_DIR = Path(__file__).resolve().parent / "static"
MAX_PIXELS = 50_000_000  # default cap: larger images are refused with 413 (decompression bombs)
FORMATS = ("JPEG", "PNG", "TIFF", "BMP", "WEBP", "GIF")  # Pillow plugins allowed to decode uploads (JPEG covers MPO)
FORM_OVERHEAD = 64 * 1024  # multipart boundaries and part headers allowed beyond the file itself
MAX_FORM_FIELDS = 16  # non-file parts parsed in an upload form (and then refused: options go in the query)
MAX_FIELD_BYTES = 16 * 1024  # size of each non-file part
PAGE_CSP = "default-src 'self'; img-src 'self' blob: data:; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
SECURITY_HEADERS = {
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "content-security-policy": "frame-ancestors 'none'",  # unless the answer has its own (the page's includes it)
}
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "[::1]")
QUERY_OPTIONS = ("conf", "cell_size", "min_score")  # what /api/v1/detect takes; anything else is refused
QUERY_HELP = "?conf=0.5 or ?conf=RBC=0.4,WBC=0.6, ?cell_size=auto|none|PX, ?min_score=0.1"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
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
class DetectOptions:
    """One request's settings: operating points, lowest score listed, cell size."""

    conf: Conf
    min_score: float | None
    cell_size: float | str | None


@dataclass
class Upload:
    filename: str
    data: bytes


def safe_name(filename: str | None) -> str:
    """The last path component of a client's file name without control characters (only ever echoed, as
    JSON: a lab's names like ``patient#12 slide+3.jpg`` come back as they were sent)."""
    # browsers, curl and httpx write " CR LF in a part's filename as %22 %0D %0A (the HTML form encoding)
    name = re.sub("%(22|0D|0A)", lambda m: chr(int(m.group(1), 16)), filename or "", flags=re.IGNORECASE)
    name = re.split(r"[/\\]", name)[-1]
    name = re.sub(r"[\x00-\x1f\x7f]", "", name).strip()[:255]
    return name if name.strip(".") else "upload"


class UploadParser(MultiPartParser):
    """Starlette's parser, taking a part named ``field`` as a file even without a filename (as httpx sends "")."""

    def __init__(self, *args, field: str, memory_limit: int, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.field = field.encode()
        self.spool_max_size = memory_limit  # Starlette writes file parts over 1 MB to a temporary file
        self.ended = False  # the closing boundary came: a body cut off drops its last part without a word

    def on_end(self) -> None:
        self.ended = True
        super().on_end()

    def on_headers_finished(self) -> None:
        disposition = self._current_part.content_disposition
        if disposition:
            _, options = parse_options_header(disposition)
            if options.get(b"name") == self.field and b"filename" not in options:
                self._current_part.content_disposition = disposition + b'; filename=""'
        super().on_headers_finished()


async def read_upload(chunks: AsyncIterator[bytes], content_type: str, limit: int, field: str = "file") -> Upload:
    """Parse a multipart body with Starlette's parser, keeping only ``field``; 413 as soon as it passes ``limit`` bytes.

    The stream is cut off just past ``limit`` plus the form overhead (whatever the Content-Length said, or
    with none: chunked bodies), and only one file part and a few small fields are accepted.
    """
    ctype, params = parse_options_header(content_type)
    if ctype != b"multipart/form-data":
        raise ApiError(415, f"send the image as multipart/form-data in a field named {field!r}")
    if not params.get(b"boundary"):  # a client that set the header by hand, without the parts' separator
        raise ApiError(400, "malformed multipart body (its Content-Type has no boundary=...)")
    too_big = ApiError(413, f"upload larger than the {limit / 2**20:.3g} MB limit")

    async def capped() -> AsyncIterator[bytes]:
        received = 0
        try:
            async for chunk in chunks:
                received += len(chunk)
                if received > limit + FORM_OVERHEAD:
                    raise too_big
                yield chunk
        except ClientDisconnect:  # the client went away mid-upload (Ctrl-C, a dropped link): no one to answer
            raise ApiError(400, "upload cut off: the client disconnected before the body ended") from None

    parser = UploadParser(
        Headers({"content-type": content_type}),
        capped(),
        field=field,
        memory_limit=limit + 1,
        max_files=1,
        max_fields=MAX_FORM_FIELDS,
        max_part_size=MAX_FIELD_BYTES,
    )
    try:
        form = await parser.parse()
    except MultiPartException as e:
        if e.message.startswith("Too many files"):
            raise ApiError(422, f"send one image per request (one file part named {field!r})") from None
        if e.message.startswith(("Too many fields", "Part exceeded maximum size")):  # form fields: refused anyway
            raise ApiError(
                422,
                f"unexpected form field(s) ({e.message}): send only the image as {field!r}; options go in the "
                f"query string ({QUERY_HELP})",
            ) from None
        raise ApiError(400, f"malformed multipart body ({e.message})") from None
    if not parser.ended:
        await form.close()
        raise ApiError(400, "malformed multipart body (it ends before its closing boundary: cut off in transit?)")
    try:
        other = sorted({key for key in form if key != field})
        if other:
            raise ApiError(
                422,
                f"unexpected form field(s) {', '.join(map(repr, other))}: send only the image as {field!r}; "
                f"options go in the query string ({QUERY_HELP})",
            )
        values = form.getlist(field)
        if not values:
            raise ApiError(422, f"missing multipart field {field!r}")
        if len(values) > 1:
            raise ApiError(422, f"send one image per request (got {len(values)} {field!r} fields)")
        upload = values[0]
        if not isinstance(upload, UploadFile):
            raise ApiError(422, f"multipart field {field!r} must be a file part (with a filename)")
        if upload.size is not None and upload.size > limit:
            raise too_big
        data = await upload.read()
        if len(data) > limit:
            raise too_big
        return Upload(upload.filename or "", data)
    finally:
        await form.close()


@contextmanager
def open_image(data: bytes, max_pixels: int = MAX_PIXELS, name: str = "") -> Iterator[Image.Image]:
    """Pillow's image over ``data`` with only its header read; any failure, here or in the block, is an ApiError.
    ``name``: the upload's file name, which tells a video or an iPhone's HEIC apart (said as predict says them)."""
    if not data:
        raise ApiError(400, "empty file")
    try:
        with Image.open(io.BytesIO(data), formats=FORMATS) as im:
            yield im
    except ApiError:
        raise
    except UnidentifiedImageError:
        suffix = Path(name).suffix.lower()
        if suffix in VIDEO_SUFFIXES:
            raise ApiError(415, "a video, not an image; `bloodcell predict --source FILE` counts its frames") from None
        if kind := OTHER_IMAGE_SUFFIXES.get(suffix):
            raise ApiError(
                415, f"{kind}, a kind of image bloodcell does not read: save it as JPEG, PNG or TIFF"
            ) from None
        raise ApiError(415, f"not an image Pillow can read ({', '.join(FORMATS)})") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:  # past Pillow's own limit
        found = re.search(r"\((\d+) pixels\)", str(e))
        size = f"{int(found[1]):,} pixels" if found else "more pixels than Pillow opens"
        raise ApiError(413, f"image of {size} is over the limit of {max_pixels:,} pixels") from None
    except StackError as e:  # a multi-page TIFF: its own message says what to do
        raise ApiError(422, str(e)) from None
    except Exception as e:  # truncated or corrupt data: Pillow raises OSError, SyntaxError, ValueError, struct.error...
        raise ApiError(422, f"cannot decode image ({type(e).__name__}: {e})") from None


def _check_pixels(im: Image.Image, max_pixels: int) -> int:
    pixels = im.width * im.height
    if pixels > max_pixels:
        raise ApiError(
            413, f"image of {im.width}x{im.height} = {pixels:,} pixels is over the limit of {max_pixels:,} pixels"
        )
    return pixels


def image_pixels(data: bytes, max_pixels: int = MAX_PIXELS, name: str = "") -> int:
    """Width x height from the header alone (nothing decoded); 413 above ``max_pixels``, 4xx if not an image."""
    with open_image(data, max_pixels, name) as im:
        return _check_pixels(im, max_pixels)


def decode_image(data: bytes, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Bytes -> (H, W, 3) uint8 if Pillow decodes them as an image of at most ``max_pixels``; else an ApiError."""
    with open_image(data, max_pixels) as im:
        _check_pixels(im, max_pixels)
        return read_pixels(im, lambda: data)


class PixelBudget:
    """A weighted semaphore, first come first served: at most ``capacity`` pixels held at once.

    A request larger than the whole budget waits until it can run alone.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.free = capacity
        self._cond = threading.Condition()
        self._queue: deque[object] = deque()

    @contextmanager
    def hold(self, pixels: int) -> Iterator[None]:
        need = min(pixels, self.capacity)
        ticket = object()
        with self._cond:
            self._queue.append(ticket)
            self._cond.wait_for(lambda: self._queue[0] is ticket and self.free >= need)
            self._queue.popleft()
            self.free -= need
            self._cond.notify_all()
        try:
            yield
        finally:
            with self._cond:
                self.free += need
                self._cond.notify_all()


def _host_name(value: str) -> str:
    """'Example.org:8000' -> 'example.org', '[::1]:80' and '::1' -> '[::1]': the host part, lower case."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[: value.find("]") + 1] if "]" in value else value
    if value.count(":") > 1:  # a bare IPv6 address (as --host takes it)
        return f"[{value}]"
    return value.split(":", 1)[0].rstrip(".")


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name.strip("[]"))
    except ValueError:
        return False
    return True


class GuardMiddleware:
    """Host and Origin checks (DNS rebinding, cross-site POSTs) and security headers on every answer (pure ASGI)."""

    def __init__(self, app, host: str, allowed_hosts: Iterable[str] = ()) -> None:
        self.app = app
        self.extra = {_host_name(h) for h in allowed_hosts if h.strip()}
        self.hosts = {*LOOPBACK_HOSTS, _host_name(host), *self.extra}
        # Bound to every address (0.0.0.0 / ::): any of the machine's IP addresses may be asked for by number;
        # a name that is not listed is still refused (a rebound DNS name is never an IP literal).
        self.any_ip = _host_name(host) in ("0.0.0.0", "[::]", "")

    def host_allowed(self, host: str) -> bool:
        name = _host_name(host)
        return bool(name) and (name in self.hosts or (self.any_ip and _is_ip(name)))

    @staticmethod
    def same_origin(origin: str, host: str) -> bool:
        return urlsplit(origin.strip().lower()).netloc == host.strip().lower()

    def origin_allowed(self, origin: str, host: str) -> bool:
        parts = urlsplit(origin.strip().lower())
        if parts.scheme not in ("http", "https") or not parts.netloc:
            return False  # "null" (sandboxed frames, file: pages) and anything odd
        return parts.netloc == host.strip().lower() or _host_name(parts.netloc) in self.extra

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        headers = Headers(scope=scope)
        host = headers.get("host", "")
        origin = headers.get("origin")
        # a page of a site --allowed-host names may read the answers (CORS), as it may POST
        shared = origin if origin and self.origin_allowed(origin, host) and not self.same_origin(origin, host) else None

        async def send_guarded(message) -> None:
            if message["type"] == "http.response.start":
                out = MutableHeaders(scope=message)
                if out.get("content-type", "").startswith("text/html"):  # the page under any URL (/static/index.html)
                    out.setdefault("content-security-policy", PAGE_CSP)
                for key, value in SECURITY_HEADERS.items():
                    out.setdefault(key, value)
                if shared:
                    out["access-control-allow-origin"] = shared
                if self.extra:  # answers differ by Origin: a shared cache must keep them apart
                    out.add_vary_header("Origin")
            await send(message)

        if not self.host_allowed(host):
            error = (
                f"Host {host!r} is not this server's; if you reach it under that name, "
                "start bloodcell serve with --allowed-host NAME"
            )
            await JSONResponse({"error": error}, status_code=400)(scope, receive, send_guarded)
            return
        cross = origin is not None and not self.same_origin(origin, host)
        preflight = scope["method"] == "OPTIONS" and cross and "access-control-request-method" in headers
        if preflight and shared:  # a browser's preflight (a request with headers beyond a form's)
            allowed = {
                "access-control-allow-methods": "GET, HEAD, POST",
                "access-control-allow-headers": headers.get("access-control-request-headers", ""),
                "access-control-max-age": "600",
            }
            await Response(status_code=204, headers=allowed)(scope, receive, send_guarded)
            return
        unsafe = scope["method"] not in SAFE_METHODS and origin is not None and not self.origin_allowed(origin, host)
        if preflight or unsafe:
            error = f"cross-origin request from {origin!r} refused (allow a site with --allowed-host NAME)"
            await JSONResponse({"error": error}, status_code=403)(scope, receive, send_guarded)
            return
        await self.app(scope, receive, send_guarded)


def model_card(predictor: Predictor, name: str | None = None, conf: Conf | None = None) -> dict:
    """What /api/v1/model tells: the predictor's ``describe()`` plus classes, input size and thresholds
    (``conf``: the operating points counted with, default the predictor's)."""
    described = predictor.describe()
    classes = [str(c) for c in predictor.class_names]
    return {
        "name": name or described.get("name"),
        "architecture": described.get("architecture"),
        "format": described.get("format"),
        "classes": classes,
        "colors": {c: class_hex(c, i) for i, c in enumerate(classes)},
        "input_size": [int(v) for v in predictor.input_size],
        "conf": [float(v) for v in class_thresholds(conf or predictor.conf, len(classes))],  # one per class
        "nms_iou": [float(v) for v in class_thresholds(predictor.post.iou_threshold, len(classes))],  # per class
        "metrics": described.get("metrics") or None,
        "notes": list(predictor.notes),  # e.g. an int8 file whose operating points were not refitted
    }


def create_app(
    predictor: Predictor,
    max_upload_mb: float = 20,
    model_name: str | None = None,
    cell_size: float | str | None = "auto",
    *,
    model_ref: str | None = None,
    conf: Conf | Mapping[str, float] | str | None = None,
    max_pixels: int = MAX_PIXELS,
    max_decoding_pixels: int | None = None,
    host: str = "127.0.0.1",
    allowed_hosts: Iterable[str] = (),
) -> FastAPI:
    """The web app around ``predictor`` (which it never builds); uploads over ``max_upload_mb`` get 413.

    ``max_pixels``: larger images get 413 (it must stay under Pillow's decompression-bomb limit).
    ``max_decoding_pixels``: at most that many pixels decoded at once, from decoding until inference ends
    (default ``max_pixels``: one image at the cap, or many small ones). ``conf``: the operating points the
    page and the API count with (default: the model's). ``host``: the address uvicorn binds;
    with ``allowed_hosts`` (names or addresses), the only Host headers answered, and the only other sites
    allowed to POST. ``model_ref``: how each record names the model that counted (``model_ref()`` of its
    file, as `predict --json` names it; default: the predictor's file's), so a slide report of the page's
    results says which model counted. ``conf`` as ``bloodcell.predict`` takes it.
    """
    bomb = Image.MAX_IMAGE_PIXELS  # Pillow's own guard (process-wide; None if someone turned it off)
    if max_pixels <= 0 or (bomb is not None and max_pixels > bomb):
        limit_text = f" and at most Pillow's decompression-bomb limit of {bomb / 1e6:g} MP" if bomb else ""
        raise ConfigError(f"max pixels {max_pixels / 1e6:g} MP (--max-megapixels): must be positive{limit_text}")
    if max_decoding_pixels is not None and max_decoding_pixels <= 0:
        raise ConfigError(f"max decoding pixels {max_decoding_pixels}: must be positive")
    budget = PixelBudget(max_decoding_pixels or max_pixels)
    limit = int(max_upload_mb * 2**20)
    lock = threading.Lock()
    # the server's operating points: the model card tells them, the page and the API count with them
    points = resolve_conf(conf, tuple(predictor.class_names), predictor.conf)
    cell_size = api_cell_size(predictor, cell_size)
    if model_ref is None and (path := predictor.path) is not None:
        model_ref = metadata_model_ref(Path(path))
    card = model_card(predictor, model_name, points)
    # what a client may send and how it is counted, before it learns it from a refusal
    card["server"] = {"max_upload_mb": max_upload_mb, "max_megapixels": max_pixels / 1e6, "cell_size": cell_size}
    app = FastAPI(title="bloodcell", version=__version__, description="Detect and count blood cells in images.")
    # the outermost layer (add_middleware would put it inside Starlette's error layer, whose 500s then went out
    # without the security and CORS headers)
    inner = app.build_middleware_stack
    app.build_middleware_stack = lambda: GuardMiddleware(inner(), host=host, allowed_hosts=tuple(allowed_hosts))

    @app.exception_handler(Exception)
    async def internal(request: Request, exc: Exception) -> JSONResponse:  # a bug: JSON like every other error
        return JSONResponse({"error": f"internal error ({type(exc).__name__}); the server's log has the details"}, 500)

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

    def detect_sync(upload: Upload, options: DetectOptions) -> dict:
        name = safe_name(upload.filename)
        try:
            pixels = image_pixels(upload.data, max_pixels, name)  # the header only: refused before decoding
            with budget.hold(pixels):  # decoded pixels are held until inference is done
                image = decode_image(upload.data, max_pixels)
                with lock:
                    result = predict_image(
                        predictor, image, Path(name), options.conf, options.min_score, cell_size=options.cell_size
                    )
                del image
        except ApiError as e:  # which upload: a page or script sending many needs to know
            raise ApiError(e.status, f"{name}: {e.message}") from None
        result.image = None
        record = result.to_record()
        if model_ref:  # as predict --json names it: a slide report says which model counted (and mixed ones)
            record["model"] = model_ref
        return record

    def detect_options(request: Request) -> DetectOptions:
        """The query's options for this request, each checked; unknown or repeated ones are refused (422)."""
        params = request.query_params
        unknown = sorted(set(params.keys()) - set(QUERY_OPTIONS))
        if unknown:
            raise ApiError(422, f"unknown option(s) {', '.join(map(repr, unknown))}; this API takes {QUERY_HELP}")
        repeated = sorted(k for k in set(params.keys()) if len(params.getlist(k)) > 1)
        if repeated:
            raise ApiError(422, f"option(s) {', '.join(map(repr, repeated))} given more than once")
        options = DetectOptions(points, None, cell_size)
        try:
            if "min_score" in params:  # a score in [0, 1], as --min-score and the Python API take it
                options.min_score = _min_score(params["min_score"])
            if "conf" in params:
                options.conf = parse_conf(params["conf"], tuple(predictor.class_names), points, "conf")
        except ConfigError as e:
            raise ApiError(422, str(e)) from None
        try:
            if "cell_size" in params:
                options.cell_size = parse_cell_size(params["cell_size"], "cell_size")
                check_cell_size(predictor, options.cell_size, "cell_size")
        except ConfigError as e:
            raise ApiError(422, str(e)) from None
        return options

    @app.post(
        "/api/v1/detect",
        openapi_extra=UPLOAD_SCHEMA,
        summary="Detect and count cells in one image",
        response_model=None,  # the record as predict --json writes it; DETECT_RESPONSES documents it
        responses=DETECT_RESPONSES,
    )
    async def detect(
        request: Request,
        min_score: str | None = Query(
            None,
            description="lowest score listed in detections, in [0, 1] (default: the lowest class operating point; "
            "a box under its own class's point is listed, not counted)",
        ),
        conf: str | None = Query(
            None, description="operating points: one value, or per class like RBC=0.4,WBC=0.6 (default: the server's)"
        ),
        cell_size: str | None = Query(
            None, description="red-cell diameter in pixels, 'auto' (estimate) or 'none' (default: the server's)"
        ),
    ) -> dict:
        """The record of one image, as in `bloodcell predict --json`: counts use the server's operating
        points unless ``conf`` gives others."""
        options = detect_options(request)  # before the body is read: a typo costs no upload
        length = request.headers.get("content-length", "")
        if length.isdigit() and int(length) > limit + FORM_OVERHEAD:
            raise ApiError(413, f"upload larger than the {max_upload_mb:g} MB limit")
        upload = await read_upload(request.stream(), request.headers.get("content-type", ""), limit)
        return await run_in_threadpool(detect_sync, upload, options)

    @app.get("/api/v1/health", summary="Liveness")
    async def health() -> dict:
        return {"status": "ok", "version": __version__}

    app.head("/api/v1/health", include_in_schema=False)(health)  # uptime monitors and load balancers send HEAD

    @app.get("/api/v1/model", summary="Model name, classes, input size, threshold, metrics")
    async def model() -> dict:
        return card

    app.head("/api/v1/model", include_in_schema=False)(model)

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", headers={"Content-Security-Policy": PAGE_CSP})

    app.head("/", include_in_schema=False)(page)

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app


def _min_score(text: str) -> float:
    """?min_score=: a score from 0 to 1 (0: every candidate), as ``--min-score`` reads it; ConfigError else."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0.0 <= value <= 1.0:  # nan and inf too
        raise ConfigError(f"min_score {text}: expected a score from 0 to 1")
    return value
