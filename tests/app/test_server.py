"""`bloodcell serve`: the JSON API, the page, bad uploads, and 50 concurrent requests on loopback.

On the numpy FakePredictor and synthetic slides; the model card is checked on real predictors too."""

import asyncio
import io
import re
import struct
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from bloodcell.app import server
from bloodcell.app.api_schema import DetectRecord, ErrorBody
from bloodcell.app.server import ApiError, create_app, read_upload, safe_name
from bloodcell.cli import main
from bloodcell.errors import ConfigError
from bloodcell.runtime.images import load_image
from bloodcell.runtime.loader import load_predictor
from bloodcell.runtime.metadata import model_ref
from bloodcell.runtime.predict import predict_image
from bloodcell.types import CLASS_NAMES
from fakes import FakePredictor, save_slide, use_fake_model

LIMIT_MB = 0.25
BASE = "http://localhost:8000"  # TestClient's default Host, "testserver", is not one the app answers
METRICS = {"val": {"voc_map50": 0.5}}


@pytest.fixture(scope="module")
def predictor():
    return FakePredictor(conf=0.3, metrics=METRICS)


@pytest.fixture
def model_file(predictor, monkeypatch, tmp_path):
    """A --model file that `bloodcell serve` loads as ``predictor``."""
    return use_fake_model(monkeypatch, predictor, tmp_path / "fake.pt")


@pytest.fixture(scope="module")
def client(predictor):
    with TestClient(create_app(predictor, max_upload_mb=LIMIT_MB, model_name="fake.pt"), base_url=BASE) as c:
        yield c


@pytest.fixture(scope="module")
def slides(tmp_path_factory):
    """Two 640x480 JPEGs with different counts."""
    folder = tmp_path_factory.mktemp("slides")
    return [save_slide(folder / f"slide{i}.jpg", seed=i) for i in (1, 2)]


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


@pytest.mark.parametrize("min_score", [None, 0.001, 0.0])  # 0: as --min-score 0 takes it
def test_detect_answers_the_predict_record(client, predictor, slides, min_score):
    path = slides[0]
    params = {} if min_score is None else {"min_score": min_score}
    r = post(client, path.read_bytes(), path.name, **params)
    assert r.status_code == 200, r.text
    expected = expected_record(predictor, path, predictor.conf if min_score is None else min_score)
    assert r.json() == expected
    assert expected["detections"] and sum(expected["counts"].values()) and expected["image"] == path.name
    DetectRecord.model_validate(r.json())  # the published schema is what is sent (extra keys forbidden)


@pytest.mark.parametrize(
    ("given", "echoed"),
    [
        ("../../etc/passwd.jpg", "passwd.jpg"),
        ("C:\\x\\a<b>.jpg", "a<b>.jpg"),
        ("patient#12 slide+3.jpg", "patient#12 slide+3.jpg"),  # a lab's names come back as sent
        ("día 1 [40x].jpg", "día 1 [40x].jpg"),
        ("..", "upload"),
        ("", "upload"),
        ("a%22b%0A.jpg", 'a"b.jpg'),  # what clients write for " and a newline in a filename (form encoding)
    ],
)
def test_client_file_names_are_only_echoed_as_their_last_component(client, slides, given, echoed):
    assert safe_name(given) == echoed
    r = post(client, slides[0].read_bytes(), given)
    assert r.status_code == 200 and r.json()["image"] == echoed
    assert safe_name("a\x00b\x1b[31m.jpg\n") == "ab[31m.jpg"  # no control characters


def test_health_and_model_info(client):
    assert client.get("/api/v1/health").json()["status"] == "ok"
    assert client.head("/api/v1/health").status_code == 200  # uptime monitors and load balancers
    card = client.get("/api/v1/model").json()
    assert card["name"] == "fake.pt" and card["architecture"] == "fake" and card["format"] == "numpy"
    assert card["classes"] == list(CLASS_NAMES) and set(card["colors"]) == set(CLASS_NAMES)
    assert card["input_size"] == [320, 256] and card["conf"] == [0.3, 0.3, 0.3] and card["metrics"] == METRICS
    assert card["nms_iou"] == [0.5, 0.5, 0.5]
    assert card["server"] == {"max_upload_mb": LIMIT_MB, "max_megapixels": server.MAX_PIXELS / 1e6, "cell_size": "auto"}


@pytest.mark.parametrize("fmt", ["pytorch", "onnx"])
def test_model_card_is_what_the_predictor_describes(tiny_model, tmp_path, fmt):
    """The real predictors (torch, ONNX) describe themselves; the card passes it on."""
    model_file = tiny_model(conf=0.3, metrics=METRICS)
    if fmt == "onnx":
        pytest.importorskip("onnxruntime")
        from bloodcell.export.exporter import export_model

        model_file = export_model(model_file, "onnx", tmp_path / "tiny.onnx").path
    predictor = load_predictor(model_file)
    described = predictor.describe()
    assert described == {"name": "cellnet", "architecture": "cellnet", "format": fmt, "metrics": METRICS}
    with TestClient(create_app(predictor), base_url=BASE) as c:
        card = c.get("/api/v1/model").json()
    assert {k: card[k] for k in described} == described
    assert card["classes"] == list(CLASS_NAMES) and card["input_size"] == [320, 256] and card["notes"] == []


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
    detect = spec["paths"]["/api/v1/detect"]["post"]
    assert "multipart/form-data" in detect["requestBody"]["content"]
    # every status the endpoint answers is documented with the body it really has
    schema = {code: r["content"]["application/json"]["schema"]["$ref"] for code, r in detect["responses"].items()}
    assert schema == {"200": "#/components/schemas/DetectRecord"} | {
        code: "#/components/schemas/ErrorBody" for code in ("400", "403", "413", "415", "422")
    }
    assert spec["components"]["schemas"]["ErrorBody"]["required"] == ["error"]
    for params in ({"confidence": "0.5"}, {}):  # an unknown option (422), and an empty upload (400): the body
        r = client.post("/api/v1/detect", files={"file": ("e.jpg", b"")}, params=params)
        assert r.status_code in (400, 422)
        ErrorBody.model_validate(r.json())


def _jpeg_head(slides) -> bytes:
    return slides[0].read_bytes()[:3000]


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
def test_bad_uploads_get_4xx_and_the_server_keeps_serving(client, slides, kind):
    make, status = BAD_UPLOADS[kind]
    r = post(client, make(slides), "evil.jpg")
    assert r.status_code == status, r.text
    assert set(r.json()) == {"error"} and r.json()["error"]
    if kind.startswith("bomb"):  # past Pillow's own limit too: the server's limit named, not Pillow's words
        assert "pixels is over the limit of" in r.json()["error"] and "DOS" not in r.json()["error"], r.text
    assert post(client, slides[0].read_bytes()).status_code == 200


def test_a_video_or_heic_upload_says_what_it_is(client, slides):
    r = post(client, b"\0\0\0\x18ftypmp42" + b"\0" * 64, "clip.mp4")
    assert r.status_code == 415 and "a video, not an image; `bloodcell predict --source FILE`" in r.json()["error"]
    r = post(client, b"\0\0\0\x18ftypheic" + b"\0" * 64, "IMG_0001.HEIC")
    assert r.status_code == 415 and r.json()["error"].startswith(
        "IMG_0001.HEIC: HEIC, a kind of image bloodcell does not"
    )


@pytest.mark.parametrize(
    ("request_kw", "status"),
    [
        ({"files": {"image": ("a.jpg", b"x")}}, 422),  # wrong field name
        ({"data": {"file": "not a file part"}}, 415),  # urlencoded form, not multipart
        ({"json": {"file": "x"}}, 415),
        ({"content": b"garbage", "headers": {"content-type": "multipart/form-data; boundary=B"}}, 400),
        ({"content": b"--B\r\n", "headers": {"content-type": "multipart/form-data"}}, 400),  # no boundary=
        ({"files": {"file": ("a.jpg", b"x")}, "params": {"min_score": 2}}, 422),
    ],
)
def test_malformed_requests_get_json_errors(client, request_kw, status):
    r = client.post("/api/v1/detect", **request_kw)
    assert r.status_code == status and set(r.json()) == {"error"}, r.text


def test_a_body_cut_off_before_its_closing_boundary_is_malformed_not_missing_a_field(client, slides):
    body = (
        b'--B\r\nContent-Disposition: form-data; name="file"; filename="a.jpg"\r\n'
        b"Content-Type: image/jpeg\r\n\r\n" + slides[0].read_bytes()[:5000]
    )  # no "\r\n--B--": the connection dropped mid-upload
    r = client.post("/api/v1/detect", content=body, headers={"content-type": "multipart/form-data; boundary=B"})
    assert r.status_code == 400 and "ends before its closing boundary" in r.json()["error"], r.text
    whole = body + slides[0].read_bytes()[5000:] + b"\r\n--B--\r\n"
    assert (
        client.post(
            "/api/v1/detect", content=whole, headers={"content-type": "multipart/form-data; boundary=B"}
        ).status_code
        == 200
    )


def test_two_file_fields_are_refused(client, slides):
    data = slides[0].read_bytes()
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


def test_fifty_concurrent_requests_on_loopback(predictor, slides, serving):
    expected = {p.name: expected_record(predictor, p, 0.05) for p in slides}
    counts = [r["counts"] for r in expected.values()]
    assert counts[0] != counts[1] and all(sum(c.values()) for c in counts)  # a mixed-up answer would show
    with serving(create_app(predictor), limit_concurrency=200) as url:
        payloads = [(p.name, p.read_bytes()) for p in slides]

        def one(i: int) -> tuple[str, int, dict]:
            name, data = payloads[i % 2]
            r = httpx.post(f"{url}/api/v1/detect", params={"min_score": 0.05}, files={"file": (name, data)}, timeout=30)
            return name, r.status_code, r.json()

        with ThreadPoolExecutor(max_workers=50) as pool:  # a hang ends in httpx's timeout; speed: benchmarks/
            answers = list(pool.map(one, range(50)))
        assert all(status == 200 for _, status, _ in answers)
        assert all(record == expected[name] for name, _, record in answers)
        bad = httpx.post(f"{url}/api/v1/detect", files={"file": ("a.txt", b"hello")}, timeout=10)
        assert bad.status_code == 415
        assert httpx.get(f"{url}/api/v1/health", timeout=10).json()["status"] == "ok"


def fake_server(monkeypatch) -> list:
    """`bloodcell serve` up to the server: the socket is bound (and closed at once), the app recorded."""
    import bloodcell.cli.apps as cli

    calls, bind = [], cli._listening_socket
    monkeypatch.setattr(cli, "_listening_socket", lambda host, port: bind(host, 0))

    def record(app, sock, **kw) -> None:
        with sock:
            calls.append((app, sock.getsockname(), kw))

    monkeypatch.setattr(cli, "_run_server", record)
    return calls


def test_cli_serve_binds_loopback_by_default(model_file, monkeypatch, capsys):
    calls = fake_server(monkeypatch)
    assert main(["serve", "--model", str(model_file), "--max-upload-mb", "1"]) == 0
    app, (host, _), kw = calls[0]
    assert host == "127.0.0.1"  # the socket uvicorn serves on (port 0 here: any free one)
    assert kw == {"host": "127.0.0.1", "port": 8000, "server_header": False}  # no "server: uvicorn" banner
    with TestClient(app, base_url=BASE) as c:
        assert c.get("/api/v1/model").json()["name"] == "fake.pt"
        # each record names the model file as predict --json does, so a report of the page's JSON says it
        record = c.post("/api/v1/detect", files={"file": ("a.png", png(64, 48))}).json()
        assert record["model"] == model_ref(model_file)
        big = io.BytesIO(b"\xff" * (2 << 20))
        assert c.post("/api/v1/detect", files={"file": ("a.jpg", big)}).status_code == 413
    with pytest.raises(SystemExit, match="2"):  # checked while parsing (tests/test_cli.py)
        main(["serve", "--model", str(model_file), "--max-upload-mb", "0"])
    assert main(["serve", "--model", str(model_file.with_name("missing.pt"))]) == 2
    assert "missing.pt" in capsys.readouterr().err


def test_bomb_png_is_cheap_but_real():
    data = png_bomb(2_000, 1_000)
    with Image.open(io.BytesIO(data)) as im:
        assert im.size == (2_000, 1_000)
        im.load()


# -- issue 11: pixel cap and decode budget, Host/Origin checks, security headers, Starlette's multipart parser


def png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.effect_noise((width, height), 40).convert("RGB").save(buffer, format="PNG")
    return buffer.getvalue()


def test_images_over_max_pixels_get_413_before_decoding(predictor, slides, monkeypatch):
    decoded = []
    real = server.decode_image
    monkeypatch.setattr(server, "decode_image", lambda data, max_pixels: decoded.append(1) or real(data, max_pixels))
    with TestClient(create_app(predictor, max_pixels=200_000), base_url=BASE) as c:
        r = post(c, slides[0].read_bytes())  # 640x480 = 0.31 MP
        assert r.status_code == 413 and r.json()["error"] == (
            "x.jpg: image of 640x480 = 307,200 pixels is over the limit of 200,000 pixels"
        )
        assert decoded == []  # refused from the header alone
        assert post(c, png(400, 300), "small.png").status_code == 200 and decoded == [1]


def test_max_pixels_must_stay_under_pillows_bomb_limit(predictor):
    with pytest.raises(ConfigError, match="decompression-bomb limit"):
        create_app(predictor, max_pixels=Image.MAX_IMAGE_PIXELS + 1)
    with pytest.raises(ConfigError, match="positive"):
        create_app(predictor, max_pixels=0)


def test_cli_max_megapixels_and_allowed_host(model_file, monkeypatch, slides, capsys):
    calls = fake_server(monkeypatch)
    argv = ["serve", "--model", str(model_file), "--max-megapixels", "0.2", "--allowed-host", "lab.example"]
    assert main([*argv, "--allowed-host", "scope.local:8443"]) == 0
    with TestClient(calls[0][0], base_url="http://lab.example") as c:
        assert c.get("/api/v1/health").status_code == 200
        assert c.get("/api/v1/health", headers={"host": "scope.local"}).status_code == 200
        assert c.get("/api/v1/health", headers={"host": "evil.example"}).status_code == 400
        assert post(c, slides[0].read_bytes()).status_code == 413
    capsys.readouterr()
    assert main(["serve", "--model", str(model_file), "--max-megapixels", "500"]) == 2
    err = capsys.readouterr().err  # refused before the server says it is serving
    assert "serving" not in err and err.startswith("error: max pixels 500 MP")


@pytest.mark.parametrize(("budget_images", "most"), [(2, 2), (8, 8)])
def test_concurrent_decodes_stay_within_the_pixel_budget(predictor, monkeypatch, budget_images, most):
    """8 uploads at once: with a budget of 2 images, never more than 2 decoded (and held) at a time."""
    side, active, peak, guard = 96, [0], [0], threading.Lock()
    real = server.decode_image

    def slow_decode(data, max_pixels):
        with guard:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        try:
            time.sleep(0.15)
            return real(data, max_pixels)
        finally:
            with guard:
                active[0] -= 1

    monkeypatch.setattr(server, "decode_image", slow_decode)
    data = png(side, side)
    app = create_app(predictor, max_decoding_pixels=budget_images * side * side)
    with TestClient(app, base_url=BASE) as c, ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(lambda i: post(c, data, f"{i}.png").status_code, range(8)))
    assert answers == [200] * 8
    if most == 2:
        assert 1 <= peak[0] <= 2
    else:
        assert peak[0] > 2  # the harness does overlap requests: the bound above is the budget's doing


@pytest.mark.parametrize(
    ("host", "status"),
    [
        ("localhost:8000", 200),
        ("127.0.0.1", 200),
        ("[::1]:8000", 200),
        ("LocalHost", 200),
        ("evil.example", 400),  # a DNS name rebound to 127.0.0.1
        ("evil.example:8000", 400),
        ("localhost.evil.example", 400),
        ("127.0.0.1.nip.io", 400),
        ("192.168.1.5:8000", 400),  # bound to loopback only
    ],
)
def test_host_header_must_be_the_bound_address(client, host, status):
    r = client.get("/api/v1/model", headers={"host": host})
    assert r.status_code == status, r.text
    if status == 400:
        assert "--allowed-host" in r.json()["error"] and set(r.json()) == {"error"}


def test_host_check_with_wildcard_bind_and_allowed_hosts(predictor):
    app = create_app(predictor, host="0.0.0.0", allowed_hosts=["Lab.Example"])
    with TestClient(app, base_url=BASE) as c:
        for host, status in [("lab.example:8000", 200), ("192.168.1.5:8000", 200), ("[fe80::1]", 200),
                             ("evil.example", 400), ("lab.example.evil.example", 400)]:  # fmt: skip
            assert c.get("/api/v1/health", headers={"host": host}).status_code == status, host
    with TestClient(create_app(predictor, host="192.168.1.5"), base_url=BASE) as c:
        assert c.get("/api/v1/health", headers={"host": "192.168.1.5:8000"}).status_code == 200
        assert c.get("/api/v1/health", headers={"host": "10.0.0.1:8000"}).status_code == 400


def test_cross_origin_posts_are_refused(predictor, slides, monkeypatch):
    ran = []
    real = server.predict_image
    monkeypatch.setattr(server, "predict_image", lambda *a, **k: ran.append(1) or real(*a, **k))
    data = slides[0].read_bytes()
    with TestClient(create_app(predictor, allowed_hosts=["lab.example"]), base_url=BASE) as c:
        for origin in ("http://evil.example", "null", "http://localhost:3000", "http://127.0.0.1:8000"):
            r = c.post("/api/v1/detect", files={"file": ("a.jpg", data)}, headers={"origin": origin})
            assert r.status_code == 403 and "cross-origin" in r.json()["error"], origin
        assert ran == []  # refused before reading the upload
        assert c.get("/api/v1/model", headers={"origin": "http://evil.example"}).status_code == 200  # reads are fine
        for origin in (BASE, "https://lab.example"):  # the page itself, and an allowed site (e.g. a proxy)
            r = c.post("/api/v1/detect", files={"file": ("a.jpg", data)}, headers={"origin": origin})
            assert r.status_code == 200, origin
        assert post(c, data).status_code == 200  # no Origin: curl, scripts
        assert len(ran) == 3
        # the allowed site's page may read its answers (CORS); the page itself and others get no such header
        shared = c.post("/api/v1/detect", files={"file": ("a.jpg", data)}, headers={"origin": "https://lab.example"})
        assert (
            shared.headers["access-control-allow-origin"] == "https://lab.example"
            and "Origin" in shared.headers["vary"]
        )
        own = c.post("/api/v1/detect", files={"file": ("a.jpg", data)}, headers={"origin": BASE})
        other = c.get("/api/v1/model", headers={"origin": "http://evil.example"})
        assert "access-control-allow-origin" not in own.headers and "access-control-allow-origin" not in other.headers
        ask = {"access-control-request-method": "POST", "access-control-request-headers": "x-trace"}
        preflight = c.options("/api/v1/detect", headers={"origin": "https://lab.example", **ask})
        assert preflight.status_code == 204 and preflight.headers["access-control-allow-headers"] == "x-trace"
        assert "POST" in preflight.headers["access-control-allow-methods"]
        refused = c.options("/api/v1/detect", headers={"origin": "http://evil.example", **ask})
        assert refused.status_code == 403 and "cross-origin" in refused.json()["error"]


def test_security_headers_on_every_answer(client, slides):
    answers = [
        client.get("/"),
        client.get("/static/app.js"),
        client.get("/api/v1/model"),
        client.get("/missing"),
        post(client, b"not an image"),
        client.get("/api/v1/health", headers={"host": "evil.example"}),
        client.post("/api/v1/detect", headers={"origin": "http://evil.example"}),
    ]
    assert [r.status_code for r in answers] == [200, 200, 200, 404, 415, 400, 403]
    for r in answers:
        assert r.headers["x-content-type-options"] == "nosniff", r.url
        assert r.headers["x-frame-options"] == "DENY"
        assert "frame-ancestors 'none'" in r.headers["content-security-policy"]
        assert "server" not in r.headers
    page_csp = answers[0].headers["content-security-policy"]
    assert "default-src 'self'" in page_csp and "script-src" not in page_csp  # static/app.js still loads
    assert client.get("/static/index.html").headers["content-security-policy"] == page_csp  # the page at its other URL


@pytest.mark.parametrize(
    ("files", "data", "status", "message"),
    [
        ({"file": ("a.jpg", b"x")}, {f"f{i}": "v" for i in range(100)}, 422, "unexpected form field(s) (Too many"),
        ({"file": ("a.jpg", b"x")}, {"note": "x" * 100_000}, 422, "exceeded maximum size"),
        ({"file": ("a.jpg", b"x")}, {"file": "a second part"}, 422, "one image"),
    ],
)
def test_multipart_forms_are_parsed_by_starlette_with_caps(client, files, data, status, message):
    r = client.post("/api/v1/detect", files=files, data=data)
    assert r.status_code == status and message in r.json()["error"], r.text


def test_chunked_upload_without_length_is_cut_at_the_limit(client):
    def body():
        yield b"--B\r\nContent-Disposition: form-data; name=file; filename=a.png\r\n\r\n"
        for _ in range(64):  # 4 MB, far over the 0.25 MB limit
            yield b"\0" * 65536

    r = client.post("/api/v1/detect", content=body(), headers={"content-type": "multipart/form-data; boundary=B"})
    assert r.status_code == 413 and "upload larger than the 0.25 MB limit" in r.json()["error"]  # as configured


def test_a_busy_port_is_one_line_before_serving_is_announced(tmp_path, monkeypatch, capsys):
    import socket

    from fakes import FakePredictor, use_fake_model

    model = use_fake_model(monkeypatch, FakePredictor(), tmp_path / "fake.pt")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert main(["serve", "--model", str(model), "--port", str(port)]) == 2
    err = capsys.readouterr().err
    assert err == f"error: --host 127.0.0.1 --port {port}: cannot listen there (Address already in use); " + (
        "try another --port\n"
    )

    # a host that is no address here: the host is named, not the port, and no "others can reach it" warning
    def no_serving(*args, **kwargs):  # where the system lets a program bind any address: no hang, a failure
        raise AssertionError("bound 192.0.2.1: this machine allows non-local binds")

    monkeypatch.setattr("bloodcell.cli.apps._run_server", no_serving)
    assert main(["serve", "--model", str(model), "--host", "192.0.2.1", "--port", str(port)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --host 192.0.2.1: not an address of this computer (") and "warning" not in err
    assert err.count("\n") == 1


def test_options_are_honoured_or_refused_never_ignored(client, predictor, slides):
    """conf and cell_size per request; unknown, repeated or form-field options are a 422 naming them."""
    data = slides[0].read_bytes()
    default = post(client, data, "s.jpg").json()
    low = post(client, data, "s.jpg", conf="0.05").json()
    assert low["conf"] == [0.05] * 3 and sum(low["counts"].values()) > sum(default["counts"].values())
    per_class = post(client, data, "s.jpg", conf="WBC=0.9").json()
    assert per_class["conf"] == [0.3, 0.9, 0.3]
    for params, message in [
        ({"minscore": "0.9"}, "unknown option(s) 'minscore'"),
        ({"conf": "Monocyte=0.5"}, "unknown class 'Monocyte'"),
        ({"conf": "2"}, "conf 2: expected a value in (0, 1]"),
        ({"cell_size": "big"}, "cell_size 'big': expected 'auto', 'none' or a diameter"),
        ({"min_score": "nan"}, "min_score nan: expected a score from 0 to 1"),
    ]:
        r = post(client, data, "s.jpg", **params)
        assert r.status_code == 422 and message in r.json()["error"], r.text
    r = client.post("/api/v1/detect?min_score=0.1&min_score=0.9", files={"file": ("s.jpg", data)})
    assert r.status_code == 422 and "'min_score' given more than once" in r.json()["error"]
    r = client.post("/api/v1/detect", files={"file": ("s.jpg", data)}, data={"conf": "0.1"})
    assert r.status_code == 422 and "unexpected form field(s) 'conf'" in r.json()["error"]
    assert "options go in the query string" in r.json()["error"]


def test_cell_size_per_request_is_checked_against_the_model(slides):
    sized = FakePredictor(conf=0.3, cell_size=100.0)
    with TestClient(create_app(sized), base_url=BASE) as c:
        r = post(c, slides[0].read_bytes(), "s.jpg", cell_size="1000")
        assert r.status_code == 422 and r.json()["error"].startswith("cell_size=1000: the model sees red cells")
        assert "(cell_size=" in r.json()["error"] and "--cell-size" not in r.json()["error"]  # the API's spelling
        assert post(c, slides[0].read_bytes(), "s.jpg", cell_size="none").json()["scale"] == 1.0
    with TestClient(create_app(FakePredictor(conf=0.3, cell_size=None)), base_url=BASE) as c:
        r = post(c, slides[0].read_bytes(), "s.jpg", cell_size="80")
        assert r.status_code == 422 and r.json()["error"].startswith("cell_size needs a model that records")


def test_upload_errors_name_the_file_and_gif_is_an_image(client, slides):
    r = post(client, b"", "field 7.jpg")
    assert r.status_code == 400 and r.json()["error"] == "field 7.jpg: empty file"
    gif = io.BytesIO()
    Image.open(slides[0]).convert("P").save(gif, format="GIF")
    assert post(client, gif.getvalue(), "s.gif").status_code == 200  # as `bloodcell predict s.gif` counts it


def test_uploads_stay_in_memory(predictor, slides, monkeypatch):
    """Starlette spools file parts over 1 MB to a temporary file; patient images never touch the disk."""
    import tempfile

    rolled = []
    real = tempfile.SpooledTemporaryFile.rollover
    monkeypatch.setattr(tempfile.SpooledTemporaryFile, "rollover", lambda self: rolled.append(1) or real(self))
    big = png(1200, 1000)  # about 3.6 MB of noise
    assert len(big) > 2**21
    with TestClient(create_app(predictor, max_upload_mb=8), base_url=BASE) as c:
        assert post(c, big, "big.png").status_code == 200
    assert rolled == []


def test_cli_serve_conf_sets_the_servers_operating_points_and_allowed_host_is_a_name(model_file, monkeypatch, capsys):
    calls = fake_server(monkeypatch)
    assert main(["serve", "--model", str(model_file), "--conf", "RBC=0.4"]) == 0
    with TestClient(calls[0][0], base_url=BASE) as c:
        assert c.get("/api/v1/model").json()["conf"] == [0.4, 0.3, 0.3]  # what the page's slider starts from
    with pytest.raises(SystemExit, match="2"):
        main(["serve", "--model", str(model_file), "--allowed-host", "http://myscope.lab:8000/"])
    assert "expected a host name or address" in capsys.readouterr().err
    assert main(["serve", "--model", str(model_file), "--conf", "Monocyte=0.4"]) == 2


def test_a_python_app_takes_conf_as_predict_does_and_names_the_predictors_file(predictor, tmp_path, monkeypatch):
    with TestClient(create_app(predictor, conf={"WBC": 0.6}), base_url=BASE) as c:
        assert c.get("/api/v1/model").json()["conf"] == [0.3, 0.6, 0.3]
    with pytest.raises(ConfigError, match=r"conf=2\.0: expected values in \(0, 1\]"):
        create_app(predictor, conf=2.0)
    with pytest.raises(ConfigError, match="needs a model that records its trained cell size"):
        create_app(predictor, cell_size=60)
    model = tmp_path / "fake.pt"
    model.write_bytes(b"weights")
    monkeypatch.setattr(predictor, "path", model, raising=False)
    with TestClient(create_app(predictor), base_url=BASE) as c:
        record = c.post("/api/v1/detect", files={"file": ("a.png", png(64, 48))}).json()
    assert record["model"] == model_ref(model)  # a slide report of the page's results names it


def test_an_upload_cut_off_by_its_client_is_no_server_error(predictor, slides, serving):
    """A client that goes away mid-body (Ctrl-C on curl, a dropped link) leaves no traceback in the server log."""
    import contextlib
    import logging
    import socket
    from urllib.parse import urlsplit

    body = b"--b\r\nContent-Disposition: form-data; name=file; filename=a.jpg\r\n\r\n" + slides[0].read_bytes()
    logged: list[logging.LogRecord] = []
    catch = logging.Handler(logging.ERROR)
    catch.emit = logged.append  # uvicorn's loggers do not propagate to caplog's
    with contextlib.ExitStack() as stack, serving(create_app(predictor)) as url:
        logging.getLogger("uvicorn.error").addHandler(catch)
        stack.callback(logging.getLogger("uvicorn.error").removeHandler, catch)
        address = urlsplit(url)
        with socket.create_connection((address.hostname, address.port)) as sock:
            head = (
                f"POST /api/v1/detect HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; boundary=b\r\n"
                f"Content-Length: {len(body) + 100}\r\n\r\n"
            )
            sock.sendall(head.encode() + body[: len(body) // 2])
        time.sleep(1.0)  # the server reads on, meets the end of the stream, and answers no one
        assert httpx.get(f"{url}/api/v1/health", timeout=10).status_code == 200  # still serving
    assert not logged, [r.getMessage() for r in logged]


def test_an_internal_error_is_json_with_every_header(slides):
    """A bug in the model (here: predict raises) is a 500 {"error": ...} with the security and CORS headers, as
    every other answer; Starlette's own layer sent it as plain text without them."""

    class Broken(FakePredictor):
        def predict(self, image, min_score=0.001):
            raise RuntimeError("boom")

    app = create_app(Broken(conf=0.3), allowed_hosts=["lab.example"])
    with TestClient(app, base_url=BASE, raise_server_exceptions=False) as c:
        r = c.post(
            "/api/v1/detect",
            files={"file": ("a.jpg", slides[0].read_bytes())},
            headers={"origin": "https://lab.example"},
        )
    assert r.status_code == 500 and r.json() == {
        "error": "internal error (RuntimeError); the server's log has the details"
    }
    assert (
        r.headers["x-content-type-options"] == "nosniff"
        and r.headers["access-control-allow-origin"] == "https://lab.example"
    )
    assert "Origin" in r.headers["vary"]
