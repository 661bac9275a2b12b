"""`bloodcell serve`: the JSON API, the page, bad uploads, and 50 concurrent requests on loopback (tiny model)."""

import asyncio
import io
import re
import struct
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import uvicorn
from fastapi.testclient import TestClient
from PIL import Image

from bloodcell.app import server
from bloodcell.app.server import ApiError, create_app, read_upload, safe_name
from bloodcell.cli import main
from bloodcell.runtime.images import load_image
from bloodcell.runtime.loader import load_predictor
from bloodcell.runtime.predict import predict_image
from bloodcell.types import CLASS_NAMES

LIMIT_MB = 0.25
METRICS = {"val": {"voc_map50": 0.5}}


@pytest.fixture(scope="module")
def model_file(tiny_model):
    # raise the class prior so some scores pass conf=0.3 and counts differ between images
    return tiny_model(conf=0.3, cls_bias=3.5, metrics=METRICS)


@pytest.fixture(scope="module")
def predictor(model_file):
    return load_predictor(model_file)


@pytest.fixture(scope="module")
def client(predictor):
    with TestClient(create_app(predictor, max_upload_mb=LIMIT_MB, model_name="tiny.pt")) as c:
        yield c


@pytest.fixture(scope="module")
def bccd_images(bccd_root):
    return [bccd_root / "JPEGImages" / f"BloodImage_0000{i}.jpg" for i in (1, 2)]


def expected_record(predictor, path: Path, min_score: float) -> dict:
    return predict_image(predictor, load_image(path), Path(path.name), predictor.conf, min_score).to_record()


def post(client, data: bytes, name: str = "x.jpg", **params):
    return client.post("/api/v1/detect", files={"file": (name, data, "application/octet-stream")}, params=params)


def png_bomb(width: int, height: int) -> bytes:
    """A real 1-bit PNG of width x height zeros, compressed to a few kB without ever holding the pixels."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    z, row = zlib.compressobj(9), b"\0" * (1 + (width + 7) // 8)
    idat = b"".join(z.compress(row) for _ in range(height)) + z.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


@pytest.mark.parametrize("min_score", [None, 0.001])
def test_detect_answers_the_predict_record(client, predictor, bccd_images, min_score):
    path = bccd_images[0]
    params = {} if min_score is None else {"min_score": min_score}
    r = post(client, path.read_bytes(), path.name, **params)
    assert r.status_code == 200, r.text
    expected = expected_record(predictor, path, predictor.conf if min_score is None else min_score)
    assert r.json() == expected
    assert expected["detections"] and sum(expected["counts"].values()) and expected["image"] == path.name


@pytest.mark.parametrize(
    ("given", "echoed"),
    [("../../etc/passwd.jpg", "passwd.jpg"), ("C:\\x\\a<b>.jpg", "a_b_.jpg"), ("..", "upload"), ("", "upload")],
)
def test_client_file_names_are_only_echoed_sanitized(client, bccd_images, given, echoed):
    assert safe_name(given) == echoed
    r = post(client, bccd_images[0].read_bytes(), given)
    assert r.status_code == 200 and r.json()["image"] == echoed


def test_health_and_model_info(client):
    assert client.get("/api/v1/health").json()["status"] == "ok"
    card = client.get("/api/v1/model").json()
    assert card["name"] == "tiny.pt" and card["architecture"] == "cellnet" and card["format"] == "pytorch"
    assert card["classes"] == list(CLASS_NAMES) and set(card["colors"]) == set(CLASS_NAMES)
    assert card["input_size"] == [320, 256] and card["conf"] == 0.3 and card["metrics"] == METRICS


def test_page_is_served_offline_and_api_documented(client):
    r = client.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in r.headers["content-security-policy"]
    assets = re.findall(r'(?:href|src)="([^"]+)"', r.text)
    assert sorted(assets) == ["static/app.js", "static/style.css"]
    texts = [r.text] + [client.get("/" + a).text for a in assets]
    for a in assets:
        assert client.get("/" + a).status_code == 200
    for text in texts:
        assert not re.search(r"https?://", text)
    assert sorted(p.name for p in server.STATIC_DIR.iterdir()) == ["app.js", "index.html", "style.css"]
    assert client.get("/docs").status_code == 200
    spec = client.get("/openapi.json").json()
    assert "multipart/form-data" in spec["paths"]["/api/v1/detect"]["post"]["requestBody"]["content"]


def _jpeg_head(bccd_images) -> bytes:
    return bccd_images[0].read_bytes()[:3000]


BAD_UPLOADS = {
    "text": (lambda imgs: b"patient notes, not an image\n" * 10, 415),
    "truncated jpeg": (_jpeg_head, 422),
    "empty": (lambda imgs: b"", 400),
    "oversized": (lambda imgs: b"\xff" * int(LIMIT_MB * 2**20 + 200_000), 413),
    "bomb 400 MP": (lambda imgs: png_bomb(20_000, 20_000), 413),
    "bomb 64 MP": (lambda imgs: png_bomb(8_000, 8_000), 413),
}


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
@pytest.mark.parametrize("kind", list(BAD_UPLOADS))
def test_bad_uploads_get_4xx_and_the_server_keeps_serving(client, bccd_images, kind):
    make, status = BAD_UPLOADS[kind]
    r = post(client, make(bccd_images), "evil.jpg")
    assert r.status_code == status, r.text
    assert set(r.json()) == {"error"} and r.json()["error"]
    assert post(client, bccd_images[0].read_bytes()).status_code == 200


@pytest.mark.parametrize(
    ("request_kw", "status"),
    [
        ({"files": {"image": ("a.jpg", b"x")}}, 422),  # wrong field name
        ({"data": {"file": "not a file part"}}, 415),  # urlencoded form, not multipart
        ({"json": {"file": "x"}}, 415),
        ({"content": b"garbage", "headers": {"content-type": "multipart/form-data; boundary=B"}}, 400),
        ({"files": {"file": ("a.jpg", b"x")}, "params": {"min_score": 2}}, 422),
    ],
)
def test_malformed_requests_get_json_errors(client, request_kw, status):
    r = client.post("/api/v1/detect", **request_kw)
    assert r.status_code == status and set(r.json()) == {"error"}, r.text


def test_two_file_fields_are_refused(client, bccd_images):
    data = bccd_images[0].read_bytes()
    r = client.post("/api/v1/detect", files=[("file", ("a.jpg", data)), ("file", ("b.jpg", data))])
    assert r.status_code == 422 and "one image" in r.json()["error"]


def test_upload_is_read_in_chunks_and_refused_at_the_limit():
    """An endless body is cut off just past the limit: never buffered whole."""
    sent = 0

    async def endless():
        nonlocal sent
        yield b"--B\r\nContent-Disposition: form-data; name=file; filename=a.png\r\n\r\n"
        while True:
            sent += 65536
            yield b"\0" * 65536

    with pytest.raises(ApiError) as e:
        asyncio.run(read_upload(endless(), "multipart/form-data; boundary=B", limit=1 << 20))
    assert e.value.status == 413 and (1 << 20) <= sent <= (1 << 20) + 2 * 65536


def test_fifty_concurrent_requests_on_loopback(predictor, bccd_images, serving):
    expected = {p.name: expected_record(predictor, p, 0.05) for p in bccd_images}
    counts = [r["counts"] for r in expected.values()]
    assert counts[0] != counts[1] and all(sum(c.values()) for c in counts)  # a mixed-up answer would show
    with serving(create_app(predictor), limit_concurrency=200) as url:
        payloads = [(p.name, p.read_bytes()) for p in bccd_images]

        def one(i: int) -> tuple[str, int, dict]:
            name, data = payloads[i % 2]
            r = httpx.post(f"{url}/api/v1/detect", params={"min_score": 0.05}, files={"file": (name, data)}, timeout=30)
            return name, r.status_code, r.json()

        t0 = time.monotonic()
        with ThreadPoolExecutor(max_workers=50) as pool:
            answers = list(pool.map(one, range(50)))
        assert all(status == 200 for _, status, _ in answers)
        assert all(record == expected[name] for name, _, record in answers)
        assert time.monotonic() - t0 < 30
        bad = httpx.post(f"{url}/api/v1/detect", files={"file": ("a.txt", b"hello")}, timeout=10)
        assert bad.status_code == 415
        assert httpx.get(f"{url}/api/v1/health", timeout=10).json()["status"] == "ok"


def test_cli_serve_binds_loopback_by_default(model_file, monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(uvicorn, "run", lambda app, host, port: calls.append((app, host, port)))
    assert main(["serve", "--model", str(model_file), "--max-upload-mb", "1"]) == 0
    app, host, port = calls[0]
    assert (host, port) == ("127.0.0.1", 8000)
    with TestClient(app) as c:
        assert c.get("/api/v1/model").json()["name"] == "tiny.pt"
        big = io.BytesIO(b"\xff" * (2 << 20))
        assert c.post("/api/v1/detect", files={"file": ("a.jpg", big)}).status_code == 413
    assert main(["serve", "--model", str(model_file), "--max-upload-mb", "0"]) == 2
    assert main(["serve", "--model", str(model_file.with_name("missing.pt"))]) == 2
    assert "missing.pt" in capsys.readouterr().err


def test_bomb_png_is_cheap_but_real():
    data = png_bomb(2_000, 1_000)
    with Image.open(io.BytesIO(data)) as im:
        assert im.size == (2_000, 1_000)
        im.load()
