"""A running studio against malformed and hostile requests across /sdapi/v1, /v1, /api/queue and
/api/gallery: each gets a 4xx with a JSON error within a few seconds, nothing lands in the gallery
or the queue, and the studio still serves a valid request afterwards.

One studio (no login) serves every case; a second one with a login serves the credential cases.
Cases that need a part another engineer owns (the model allow-list at enqueue, the A1111 request
checks) are marked xfail with the reason until that part lands.
"""
from __future__ import annotations

import base64
import json
import socket
import time
from dataclasses import dataclass, field
from typing import Any

import pytest
import requests
from conftest import StudioProcess
from hostile_payloads import bomb_png, image_bytes, png_with_text

TIME_LIMIT_S = 5.0
MAX_BODY_MB = 8  # the studio under test is started with --max-request-mb 8


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


BOMB = b64(bomb_png(20_000))
TIFF = b64(image_bytes("TIFF"))
TRUNCATED = b64(image_bytes("PNG", 64)[:-40])
TINY_PNG = b64(image_bytes("PNG", 64))
TRAVERSALS = ("../../../../etc/passwd", "/etc/passwd", "..\\..\\windows\\win.ini", "~/.ssh/id_rsa",
              "file:///etc/passwd", "models/../../studio.sqlite3")


def _black_png() -> str:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("L", (64, 64), 0).save(buffer, format="PNG")
    return b64(buffer.getvalue())


BLACK_MASK = _black_png()


@dataclass
class Case:
    name: str
    method: str
    path: str
    json: Any = None
    body: bytes | None = None
    headers: dict = field(default_factory=dict)
    xfail: str | None = None  # "lead: ..." while another engineer's part is not landed


def J(name, path, payload, xfail=None, method="POST", **headers) -> Case:
    return Case(name, method, path, json=payload, headers=headers, xfail=xfail)


# ------------------------------------------------------------------ the cases
def security_cases() -> list[Case]:
    cases = []
    posts = [("/sdapi/v1/txt2img", {"prompt": "a red star", "steps": 2}),
             ("/sdapi/v1/options", {"sd_model_checkpoint": "genstudio-tiny-sd"}),
             ("/v1/chat/completions", {"model": "smollm2-135m-instruct", "messages": [{"role": "user", "content": "hi"}]}),
             ("/v1/completions", {"model": "smollm2-135m-instruct", "prompt": "hi"}),
             ("/api/queue", {"task": "txt2img", "params": {"prompt": "a red star", "steps": 2}}),
             ("/api/queue/pause", None), ("/api/queue/clear", None), ("/sdapi/v1/interrupt", None)]
    gets = ["/sdapi/v1/sd-models", "/sdapi/v1/progress", "/v1/models", "/api/queue", "/api/gallery",
            "/docs", "/openapi.json"]
    for path in gets:  # DNS rebinding: the attacker's name resolves to 127.0.0.1
        cases.append(Case(f"rebinding GET {path}", "GET", path, headers={"Host": "attacker.example:7860"}))
    for path, payload in posts:
        text = json.dumps(payload or {}).encode()
        cases.append(Case(f"rebinding POST {path}", "POST", path, body=text,
                          headers={"Host": "rebind.attacker.example", "Content-Type": "application/json"}))
        # A web page's form or fetch without preflight: cross-site Origin, text/plain body.
        cases.append(Case(f"cross-site text/plain {path}", "POST", path, body=text,
                          headers={"Origin": "https://evil.example", "Content-Type": "text/plain"}))
        cases.append(Case(f"cross-site JSON {path}", "POST", path, body=text,
                          headers={"Origin": "http://localhost:8000", "Content-Type": "application/json"}))
        cases.append(Case(f"sec-fetch-site cross-site {path}", "POST", path, body=text,
                          headers={"Sec-Fetch-Site": "cross-site", "Content-Type": "application/json"}))
        cases.append(Case(f"origin null {path}", "POST", path, body=text,
                          headers={"Origin": "null", "Content-Type": "application/json"}))
        if payload is not None:  # a JSON endpoint fed a form or plain text by a non-browser
            cases.append(Case(f"text/plain no origin {path}", "POST", path, body=text,
                              headers={"Content-Type": "text/plain"}))
            cases.append(Case(f"form-urlencoded {path}", "POST", path, body=b"prompt=x",
                              headers={"Content-Type": "application/x-www-form-urlencoded"}))
    cases.append(Case("gallery delete cross-site", "DELETE", "/api/gallery/1",
                      headers={"Origin": "https://evil.example"}))
    return cases


def sdapi_cases() -> list[Case]:
    t2i, i2i = "/sdapi/v1/txt2img", "/sdapi/v1/img2img"
    base = {"prompt": "a red star", "steps": 2}
    cases = [J(f"txt2img {k}={v!r}", t2i, {**base, k: v}) for k, v in (
        ("steps", -1), ("steps", 0), ("steps", 10**9), ("steps", "many"), ("steps", None),
        ("width", 7), ("width", 100_000), ("height", -64), ("height", 0), ("cfg_scale", "loud"), ("batch_size", 10**6), ("batch_size", 0), ("seed", 2**70),
        ("prompt", "x" * 5000), ("prompt", 12), ("negative_prompt", ["a"]), ("sampler_name", "Euler z"),
        ("scheduler", "sideways"), ("denoising_strength", "x"))]
    cases += [J(f"txt2img sampler traversal {t}", t2i, {**base, "sampler_name": t}) for t in TRAVERSALS[:2]]
    cases += [J(f"txt2img checkpoint traversal {t}", t2i,
                {**base, "override_settings": {"sd_model_checkpoint": t}}) for t in TRAVERSALS]
    cases += [J(f"options checkpoint traversal {t}", "/sdapi/v1/options", {"sd_model_checkpoint": t})
              for t in TRAVERSALS]
    cases += [J("txt2img lora traversal", t2i, {**base, "prompt": "a star <lora:../../../../etc/passwd:1>"}),
              J("txt2img n_iter huge, random seed", t2i, {**base, "n_iter": 10**11, "seed": -1}),
              J("txt2img n_iter negative", t2i, {**base, "n_iter": -3}),
              J("txt2img body is a list", t2i, [base]), J("txt2img body is a string", t2i, "prompt"),
              Case("txt2img cfg_scale 1e999", "POST", t2i, body=b'{"prompt": "x", "steps": 2, "cfg_scale": 1e999}',
                   headers={"Content-Type": "application/json"}),
              Case("txt2img invalid JSON", "POST", t2i, body=b'{"prompt": ', headers={"Content-Type": "application/json"}),
              Case("txt2img empty body", "POST", t2i, body=b"", headers={"Content-Type": "application/json"}),
              Case("txt2img JSON nested 100,000 deep", "POST", t2i, body=b"[" * 100_000 + b"]" * 100_000,
                   headers={"Content-Type": "application/json"})]
    image_fields = {"bomb": BOMB, "tiff": TIFF, "truncated": TRUNCATED, "not base64": "%%%not base64%%%",
                    "empty": "", "data-url bomb": "data:image/png;base64," + BOMB}
    cases += [J(f"img2img init {k}", i2i, {**base, "init_images": [v]}) for k, v in image_fields.items()]
    cases += [J("img2img no init images", i2i, {**base, "init_images": []}),
              J("img2img init not a list", i2i, {**base, "init_images": TINY_PNG})]
    cases += [J(f"img2img mask {k}", i2i, {**base, "init_images": [TINY_PNG], "mask": v})
              for k, v in (("bomb", BOMB), ("tiff", TIFF), ("not base64", "@@"), ("all black", BLACK_MASK))]
    cases += [J("img2img inpainting_fill 9", i2i, {**base, "init_images": [TINY_PNG], "mask": TINY_PNG,
                                                   "inpainting_fill": 9}),
              J("img2img strength 5", i2i, {**base, "init_images": [TINY_PNG], "denoising_strength": 5})]
    cases += [J(f"png-info {k}", "/sdapi/v1/png-info", {"image": v}) for k, v in image_fields.items()]
    cases += [J("png-info no image", "/sdapi/v1/png-info", {})]
    extra, batch = "/sdapi/v1/extra-single-image", "/sdapi/v1/extra-batch-images"
    cases += [J(f"extras image {k}", extra, {"image": v}) for k, v in image_fields.items() if k != "empty"]
    cases += [J(f"extras upscaler traversal {t}", extra, {"image": TINY_PNG, "upscaler_1": t}) for t in TRAVERSALS[:3]]
    cases += [J("extras resize 1000x", extra, {"image": TINY_PNG, "upscaling_resize": 1000}),
              J("extras face restorer", extra, {"image": TINY_PNG, "gfpgan_visibility": 1}),
              J("extras batch bomb", batch, {"imageList": [{"data": BOMB, "name": "a.png"}]}),
              J("extras batch empty", batch, {"imageList": []}),
              J("extras batch name traversal + tiff", batch, {"imageList": [{"data": TIFF, "name": "../../x.png"}]})]
    return cases


def openai_cases() -> list[Case]:
    chat, completions = "/v1/chat/completions", "/v1/completions"
    ok = {"model": "smollm2-135m-instruct", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    cases = [J(f"chat model {t}", chat, {**ok, "model": t}) for t in TRAVERSALS]
    cases += [J(f"completions model {t}", completions, {"model": t, "prompt": "hi"}) for t in TRAVERSALS[:3]]
    cases += [J(f"chat {k}={v!r}", chat, {**ok, k: v}) for k, v in (
        ("messages", []), ("messages", "hi"), ("messages", [{"role": "hacker", "content": "x"}]),
        ("messages", [{"role": "user"}]), ("messages", [{"role": "user", "content": {"a": 1}}]),
        ("max_tokens", -1), ("max_tokens", 10**12), ("temperature", -5), ("temperature", "hot"),
        ("top_p", 2), ("n", 10**6), ("stop", [1, 2]), ("seed", "x"),
        ("model", 5), ("model", ["a"]))]
    cases += [J("chat without messages", chat, {"model": "smollm2-135m-instruct"}),
              J("chat body is a list", chat, [ok]),
              J("completions prompt is an object", completions, {"model": "smollm2-135m-instruct", "prompt": {"a": 1}}),
              J("completions max_tokens -5", completions, {"model": "smollm2-135m-instruct", "prompt": "x", "max_tokens": -5}),
              Case("chat presence_penalty 1e999", "POST", chat, headers={"Content-Type": "application/json"},
                   body=json.dumps(ok).encode()[:-1] + b', "presence_penalty": 1e999}'),
              J("embeddings model traversal", "/v1/embeddings", {"model": "../../../../etc/passwd", "input": "x"}),
              J("embeddings input an object", "/v1/embeddings", {"input": {"a": 1}}),
              J("embeddings input empty", "/v1/embeddings", {"input": []}),
              Case("chat invalid JSON", "POST", chat, body=b"{", headers={"Content-Type": "application/json"}),
              Case("chat JSON nested 100,000 deep", "POST", chat, body=b"[" * 100_000 + b"]" * 100_000,
                   headers={"Content-Type": "application/json"}),
              Case("chat text/plain as a page would send", "POST", chat, body=json.dumps(ok).encode(),
                   headers={"Content-Type": "text/plain;charset=UTF-8"})]
    return cases


def queue_cases() -> list[Case]:
    q = "/api/queue"
    star = {"prompt": "a red star", "steps": 2}
    cases = [J(f"queue {name}", q, body) for name, body in (
        ("no task", {"params": star}), ("unknown task", {"task": "rm -rf", "params": star}),
        ("task traversal", {"task": "../txt2img", "params": star}), ("params a list", {"task": "txt2img", "params": [1]}),
        ("prompt a number", {"task": "txt2img", "params": {"prompt": 5}}),
        ("steps negative", {"task": "txt2img", "params": {**star, "steps": -2}}),
        ("unknown parameter", {"task": "txt2img", "params": {**star, "rm": "-rf"}}),
        ("priority huge", {"task": "txt2img", "params": star, "priority": 10**30}),
        ("priority text", {"task": "txt2img", "params": star, "priority": "high"}),
        ("task and jobs", {"task": "txt2img", "params": star, "jobs": []}),
        ("batch not a list", {"jobs": "all"}),
        ("batch with one bad job", {"jobs": [{"task": "txt2img", "params": star}, {"task": "txt2img", "params": {"steps": 2}}]}),
        ("a million jobs by expansion", {"task": "txt2img", "params": {**star, "prompt": "{a|b} " * 20}, "expand": True}),
        ("matrix of 2^40", {"task": "txt2img", "params": {**star, "prompt": "|".join("x" * 41)}, "matrix": True}),
        ("braces 5,000 deep", {"task": "txt2img", "params": {**star, "prompt": "{" * 5000 + "a" + "}" * 5000}, "expand": True}),
        ("expansion of 8M+ characters", {"task": "txt2img", "params": {**star, "prompt": "y" * 3000 + " {a|b}" * 12}, "expand": True}),
        ("unbalanced brace", {"task": "txt2img", "params": {**star, "prompt": "a {b|c"}, "expand": True}),
        ("code run & fix without the switch", {"task": "code", "params": {"mode": "write", "description": "fork bomb", "run_and_fix": True}}),
        ("style name traversal", {"task": "style", "params": {"style": "../../../../etc/passwd", "image": TINY_PNG}}),
        ("style image bomb", {"task": "style", "params": {"style": "vintage", "image": BOMB}}),
        ("img2img init bomb", {"task": "img2img", "params": {**star, "init_image": BOMB}}),
        ("inpaint mask of another size", {"task": "inpaint", "params": {**star, "init_image": TINY_PNG, "mask": b64(image_bytes("PNG", 8))}}),
        ("gallery id of 80 bits", {"task": "img2img", "params": {**star, "init_image_id": 2**80}}),
        ("a batch of 10,001 jobs", {"jobs": [{"task": "txt2img", "params": {"prompt": "x"}}] * 10_001}),
        ("params of 3 MB", {"task": "txt2img", "params": {**star, "negative_prompt": "n" * (3 << 20)}}),
    )]
    cases += [J(f"queue wildcard traversal {t}", q, {"task": "txt2img", "params": {**star, "prompt": f"a __{t}__"}, "expand": True})
              for t in ("../../../../etc/passwd", "/etc/passwd", "../secret", "./../../x")]
    cases += [J(f"queue model {t}", q, {"task": "txt2img", "params": {**star, "model": t}}) for t in TRAVERSALS[:3]]
    cases += [J(f"queue chat model {t}", q, {"task": "chat", "params": {"model": t, "messages": [{"role": "user", "content": "x"}]}})
              for t in TRAVERSALS[:2]]
    for path in ("?status=bogus", "?limit=0", "?limit=1000000000", "?offset=-1", "/abc", "/999999", "/-1",
                 "/99999999999999999999999", "/..%2F..%2Fetc%2Fpasswd"):
        cases.append(Case(f"queue GET {path}", "GET", q + path))
    for path in ("/999999/cancel", "/999999/retry", "/999999/move?where=up", "/1/move?where=sideways",
                 "/99999999999999999999999/cancel", "/abc/retry"):
        cases.append(Case(f"queue POST {path}", "POST", q + path))
    return cases


def gallery_cases() -> list[Case]:
    g = "/api/gallery"
    cases = [Case(f"gallery GET {p}", "GET", g + p) for p in (
        "?page=0", "?page=-5", "?page_size=100000", "?page_size=0", "?date_from=yesterday",
        "?date_to=2026-13-45", "?favourites_only=maybe", "/abc", "/0", "/999999", "/-1",
        "/99999999999999999999999", "/999999/file", "/..%2F..%2Fstudio.sqlite3/file", "/1/file")]
    cases += [Case(f"gallery POST {p}", "POST", g + p) for p in ("/999999/favourite", "/1/favourite?value=maybe",
                                                                   "/99999999999999999999999/favourite")]
    cases += [Case(f"gallery DELETE {p}", "DELETE", g + p) for p in ("/999999", "/abc", "/99999999999999999999999")]
    return cases


LEAKED_BY_XFAIL: set[int] = set()  # jobs that xfail cases managed to enqueue
ALL_CASES = security_cases() + sdapi_cases() + openai_cases() + queue_cases() + gallery_cases()


# ------------------------------------------------------------------ the studio under attack
@pytest.fixture(scope="module")
def studio(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("hostile") / "data"
    data_dir.mkdir()
    server = StudioProcess(data_dir=data_dir, args=("--max-request-mb", str(MAX_BODY_MB)))
    server.start()
    yield server
    server.stop()


def send(studio: StudioProcess, case: Case) -> requests.Response:
    kwargs: dict[str, Any] = {"headers": dict(case.headers), "timeout": 30}
    if case.json is not None:
        kwargs["json"] = case.json
    elif case.body is not None:
        kwargs["data"] = case.body
    return requests.request(case.method, studio.url + case.path, **kwargs)


def test_there_are_at_least_150_cases():
    assert len(ALL_CASES) >= 150, len(ALL_CASES)
    assert len({c.name for c in ALL_CASES}) == len(ALL_CASES)  # names are the test ids


@pytest.mark.parametrize("case", [pytest.param(c, id=c.name, marks=[pytest.mark.xfail(reason=c.xfail, strict=False)]
                                               if c.xfail else []) for c in ALL_CASES])
def test_hostile_request_gets_a_json_4xx_fast(studio, case):
    started = time.perf_counter()
    response = send(studio, case)
    elapsed = time.perf_counter() - started
    if case.xfail and response.ok and isinstance(response.json(), dict):
        LEAKED_BY_XFAIL.update(response.json().get("ids", []))  # a known gap: excused below
    assert 400 <= response.status_code < 500, (response.status_code, response.text[:300])
    assert response.headers.get("content-type", "").startswith("application/json"), response.text[:200]
    assert response.json()  # a message a client can show
    assert elapsed < TIME_LIMIT_S, elapsed


def _raw(studio: StudioProcess, request: bytes, send_more: bytes = b"") -> tuple[int, bytes]:
    """Send bytes over a socket (a body larger than the limit: requests would keep writing)."""
    with socket.create_connection(("127.0.0.1", studio.port), timeout=10) as sock:
        sock.sendall(request)
        try:
            sock.sendall(send_more)
        except OSError:  # the studio answered and closed before reading it all: fine
            pass
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    status = int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/") else 0
    return status, data


@pytest.mark.parametrize("path", ["/sdapi/v1/img2img", "/v1/chat/completions", "/api/queue"])
def test_oversized_bodies_are_refused_before_they_are_read(studio, path):
    declared = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                f"Content-Length: {200 << 20}\r\n\r\n").encode()
    started = time.perf_counter()
    status, head = _raw(studio, declared, b"{" + b" " * (1 << 20))
    assert status == 413 and b"application/json" in head and time.perf_counter() - started < TIME_LIMIT_S
    chunked = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
               "Transfer-Encoding: chunked\r\n\r\n").encode()
    piece = b"%x\r\n%s\r\n" % (1 << 20, b" " * (1 << 20))
    status, _ = _raw(studio, chunked, piece * (MAX_BODY_MB + 2))
    assert status == 413


def test_png_info_reads_a_one_megabyte_text_chunk_fast(studio):
    text = "a castle" + ", x" * 10 + "\nSteps: 2, " + "long: " + "y" * (1 << 20)
    started = time.perf_counter()
    response = requests.post(studio.url + "/sdapi/v1/png-info", json={"image": b64(png_with_text(text))}, timeout=30)
    assert response.status_code == 200 and time.perf_counter() - started < 2.0
    assert response.json()["info"] == text


def test_gradio_never_serves_the_database(studio):
    for name in ("studio.sqlite3", "studio.sqlite3-wal", "a1111-options.json"):
        response = requests.get(f"{studio.url}/gradio_api/file={studio.data_dir / name}", timeout=10)
        assert response.status_code in (403, 404), (name, response.status_code)
    assert (studio.data_dir / "studio.sqlite3").exists()


def test_health_says_ready(studio):
    assert requests.get(studio.url + "/api/health", timeout=10).json() == {"ready": True}


def test_nothing_was_written_and_a_valid_request_still_works(studio):
    """Runs after every hostile case above (pytest keeps file order within a module)."""
    gallery = requests.get(studio.url + "/api/gallery", timeout=10).json()
    assert gallery["total"] == 0, [i["task"] for i in gallery["items"]]
    queue = requests.get(studio.url + "/api/queue", timeout=10).json()
    jobs = [j for j in queue["jobs"] if j["id"] not in LEAKED_BY_XFAIL]
    assert jobs == [], [(j["task"], j["status"], j["params"]) for j in jobs]
    response = requests.post(studio.url + "/sdapi/v1/txt2img", timeout=300,
                             json={"prompt": "a large red star on a blue background", "steps": 2, "seed": 1})
    assert response.status_code == 200, response.text[:300]
    assert len(response.json()["images"]) == 1
    assert requests.get(studio.url + "/api/gallery", timeout=10).json()["total"] == 1


# Cases that, until their owner's part lands, get through and write something: they run after
# the check above so that they cannot hide the rest.
LATE_CASES = [
    J("chat stream='sometimes'", "/v1/chat/completions",
      {"model": "smollm2-135m-instruct", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2,
       "stream": "sometimes"}),
    *(J(f"options vae traversal {t}", "/sdapi/v1/options", {"sd_vae": t}) for t in TRAVERSALS[:3]),
]


@pytest.mark.parametrize("case", [pytest.param(c, id=c.name, marks=[pytest.mark.xfail(reason=c.xfail, strict=False)]
                                               if c.xfail else []) for c in LATE_CASES])
def test_late_hostile_request_gets_a_json_4xx(studio, case):
    response = send(studio, case)
    assert 400 <= response.status_code < 500, (response.status_code, response.text[:200])


# ------------------------------------------------------------------ logins
@pytest.fixture(scope="module")
def locked_studio(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("hostile-auth") / "data"
    data_dir.mkdir()
    server = StudioProcess(data_dir=data_dir, extra_env={"GENSTUDIO_AUTH": "änn:pässwörd"})
    server.start()
    yield server
    server.stop()


@pytest.mark.parametrize("header", [
    "Basic " + b64("änn:wrong".encode()), "Basic " + b64("änn:pässwörd".encode("latin-1")),
    "Basic " + b64(b"\xff\xfe:\xfd"), "Basic äöü", "Bearer pässwort", "Bearer änn:falsch",
    "Bearer \u20ac", "Digest x", "Basic", ""], ids=lambda h: h[:14] or "empty")
@pytest.mark.parametrize("path", ["/api/gallery", "/v1/models", "/sdapi/v1/sd-models", "/api/queue", "/docs", "/openapi.json"])
def test_non_ascii_and_malformed_credentials_are_401(locked_studio, header, path):
    raw = header.encode("utf-8")  # sent as UTF-8 bytes, as a client would
    response = requests.get(locked_studio.url + path, headers={"Authorization": raw} if header else {}, timeout=10)
    assert response.status_code == 401 and response.headers["content-type"].startswith("application/json")


def test_the_right_non_ascii_login_works(locked_studio):
    for path in ("/api/gallery", "/docs", "/openapi.json"):
        assert requests.get(locked_studio.url + path, auth=("änn".encode(), "pässwörd".encode()), timeout=10).status_code == 200
    bearer = {"Authorization": "Bearer pässwörd".encode("utf-8")}
    assert requests.get(locked_studio.url + "/v1/models", headers=bearer, timeout=10).status_code == 200
    assert "pässwörd" not in locked_studio.log()


@pytest.mark.parametrize("user,password", [("änn", "falsch"), ("ännchen", "pässwörd"), ("\u0000", "\uffff"),
                                           ("a" * 10_000, "b")], ids=["wrong", "unknown", "controls", "long"])
def test_gradio_login_with_bad_non_ascii_credentials_is_a_4xx(locked_studio, user, password):
    response = requests.post(locked_studio.url + "/login", data={"username": user, "password": password}, timeout=10)
    assert 400 <= response.status_code < 500 and response.headers["content-type"].startswith("application/json")


def test_gradio_login_with_the_non_ascii_password_works(locked_studio):
    response = requests.post(locked_studio.url + "/login", data={"username": "änn", "password": "pässwörd"}, timeout=10)
    assert response.status_code == 200 and response.json() == {"success": True}
