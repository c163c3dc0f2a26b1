"""The security middleware on a small app (in process): Host, Origin / Sec-Fetch-Site, JSON
content type, body size (declared and streamed), login on /docs, readiness, non-ASCII logins."""
from __future__ import annotations

import base64

import pytest
from fastapi import Depends, FastAPI, Request, WebSocket
from starlette.websockets import WebSocketDisconnect
from fastapi.testclient import TestClient

from studio.api.auth import check_authorization, require_auth
from studio.config import StudioConfig
from studio.security import Guard


def make_client(ready: bool = True, **config) -> tuple[TestClient, Guard]:
    cfg = StudioConfig(**config)
    guard = Guard.from_config(cfg)
    guard.ready = ready
    guard.max_body_bytes = 1 << 20  # 1 MB for the tests
    app = FastAPI(docs_url="/docs", openapi_url="/openapi.json", middleware=[guard.middleware()])

    class Ctx:
        config = cfg

    @app.post("/v1/chat/completions", dependencies=[Depends(require_auth(Ctx))])
    async def chat(request: Request) -> dict:
        return {"got": len(await request.body())}

    @app.post("/api/queue/pause")
    def pause() -> dict:
        return {"paused": True}

    @app.post("/gradio_api/queue/join")
    def join() -> dict:
        return {"ok": True}

    @app.post("/gradio_api/upload")
    async def upload(request: Request) -> dict:
        return {"got": len(await request.body())}

    @app.websocket("/gradio_api/ws")
    async def socket(websocket: WebSocket) -> None:
        await websocket.accept()
        await websocket.send_text("hello")
        await websocket.close()

    @app.get("/api/gallery")
    def gallery() -> dict:
        return {"items": []}

    return TestClient(app, base_url="http://127.0.0.1:7860"), guard


JSON = {"content-type": "application/json"}


def test_dns_rebinding_host_is_refused_everywhere():
    client, _ = make_client()
    for path in ("/api/gallery", "/docs", "/api/health"):
        response = client.get(path, headers={"host": "attacker.example:7860"})
        assert response.status_code == 403 and "host name 'attacker.example'" in response.json()["detail"]
    for host in ("127.0.0.1:7860", "localhost:7860", "[::1]:7860", "LOCALHOST"):
        assert client.get("/api/gallery", headers={"host": host}).status_code == 200
    lan, _ = make_client(host="studio.lan", auth=(("a", "b"),))
    assert lan.get("/api/gallery", headers={"host": "studio.lan:7860"}).status_code == 200
    assert lan.get("/api/gallery", headers={"host": "evil.lan"}).status_code == 403
    anywhere, _ = make_client(host="0.0.0.0", auth=(("a", "b"),))  # every interface: any name
    assert anywhere.get("/api/gallery", headers={"host": "10.1.2.3:7860"}).status_code == 200


def test_cross_site_posts_are_refused_same_origin_and_non_browsers_pass():
    client, _ = make_client()
    cross = client.post("/api/queue/pause", headers={"origin": "https://evil.example"})
    assert cross.status_code == 403 and "cross-site" in cross.json()["detail"]
    other_port = client.post("/gradio_api/queue/join", headers={"origin": "http://127.0.0.1:8000"})
    assert other_port.status_code == 403  # another local site is another origin
    assert client.post("/gradio_api/queue/join", headers={"origin": "null"}).status_code == 403
    assert client.post("/api/queue/pause", headers={"sec-fetch-site": "cross-site"}).status_code == 403
    assert client.post("/api/queue/pause", headers={"sec-fetch-site": "same-site"}).status_code == 403
    assert client.post("/api/queue/pause", headers={"origin": "http://127.0.0.1:7860"}).status_code == 200
    assert client.post("/api/queue/pause", headers={"sec-fetch-site": "same-origin"}).status_code == 200
    assert client.post("/api/queue/pause").status_code == 200  # curl, SDKs: no Origin
    assert client.get("/api/gallery", headers={"origin": "https://evil.example"}).status_code == 200


def test_text_plain_body_to_a_json_endpoint_is_refused():
    client, _ = make_client()
    body = '{"model": "x", "messages": [{"role": "user", "content": "rm -rf"}]}'
    for kind in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"):
        response = client.post("/v1/chat/completions", content=body, headers={"content-type": kind})
        assert response.status_code == 415
        assert "application/json" in response.json()["error"]["message"]  # OpenAI's shape on /v1
    assert client.post("/v1/chat/completions", content=body).status_code == 415  # no type at all
    assert client.post("/v1/chat/completions", content=body, headers=JSON).status_code == 200
    assert client.post("/v1/chat/completions", content=body,
                       headers={"content-type": "application/merge-patch+json"}).status_code == 200


def test_body_size_is_limited_declared_or_streamed():
    client, _ = make_client()
    big = b"[" + b"0," * (600 << 10) + b"0]"  # 1.2 MB
    declared = client.post("/v1/chat/completions", content=big, headers=JSON)
    assert declared.status_code == 413 and "larger than 1 MB" in declared.json()["error"]["message"]

    def chunks():  # no Content-Length: counted as it arrives
        for _ in range(20):
            yield b"0" * (100 << 10)

    streamed = client.post("/v1/chat/completions", content=chunks(), headers=JSON)
    assert streamed.status_code == 413
    upload = client.post("/gradio_api/upload", content=chunks(), headers={"content-type": "image/png"})
    assert upload.status_code == 413 and "larger than 1 MB" in upload.json()["detail"]
    assert client.post("/gradio_api/upload", content=b"x" * 1000).json() == {"got": 1000}
    small = client.post("/v1/chat/completions", content=b"[1]", headers=JSON)
    assert small.status_code == 200 and small.json() == {"got": 3}


def test_docs_need_the_login_when_auth_is_on():
    client, _ = make_client(auth=(("ann", "pässwörd"),))
    for path in ("/docs", "/openapi.json"):
        response = client.get(path)
        assert response.status_code == 401 and response.headers["www-authenticate"].startswith("Basic")
        assert client.get(path, auth=("ann", "pässwörd")).status_code == 200
    open_client, _ = make_client()
    assert open_client.get("/openapi.json").status_code == 200


def test_not_ready_answers_503_with_retry_after_and_health_says_so():
    client, guard = make_client(ready=False)
    response = client.get("/api/gallery")
    assert response.status_code == 503 and response.headers["retry-after"] == "1"
    assert client.get("/api/health").json() == {"ready": False}
    guard.ready = True
    assert client.get("/api/gallery").status_code == 200
    assert client.get("/api/health").json() == {"ready": True}


def test_non_ascii_credentials_are_401_not_500():
    pairs = (("ann", "pässwörd"),)
    assert check_authorization(pairs, "Basic " + base64.b64encode("ann:pässwörd".encode()).decode())
    assert not check_authorization(pairs, "Basic " + base64.b64encode("ännchen:ü".encode()).decode())
    assert not check_authorization(pairs, "Basic " + base64.b64encode(b"\xff\xfe:\x80").decode())
    client, _ = make_client(auth=pairs)
    for header in ("Bearer pässwort".encode("utf-8"), "Bearer ünknown".encode("latin-1"),
                   b"Basic \xc3\xa4\xc3\xb6", "Bearer pässwörd".encode("utf-8")):
        response = client.post("/v1/chat/completions", content=b"[]",
                               headers={"authorization": header, **JSON})
        assert response.status_code == (200 if header.endswith("pässwörd".encode()) else 401), header


@pytest.mark.parametrize("host,share,expected", [("127.0.0.1", False, False), ("0.0.0.0", False, True),
                                                 ("127.0.0.1", True, True)])
def test_any_host_only_when_reachable_from_everywhere(host, share, expected):
    assert Guard.from_config(StudioConfig(host=host, share=share)).any_host is expected


def test_deeply_nested_json_is_a_400_not_a_500():
    client, _ = make_client()
    deep = b"[" * 100_000 + b"]" * 100_000
    response = client.post("/v1/chat/completions", content=deep, headers=JSON)
    assert response.status_code == 400 and "nested too deeply" in response.json()["error"]["message"]
    fine = b'{"a": ' + b"[" * 200 + b"]" * 200 + b"}"
    assert client.post("/v1/chat/completions", content=fine, headers=JSON).json() == {"got": len(fine)}


def test_cross_site_websockets_are_refused():
    client, _ = make_client()
    own = {"host": "127.0.0.1:7860", "origin": "http://127.0.0.1:7860"}
    with client.websocket_connect("/gradio_api/ws", headers=own) as ws:
        assert ws.receive_text() == "hello"  # the studio's own page
    for headers in ({**own, "origin": "https://evil.example"}, {**own, "host": "attacker.example"}):
        with pytest.raises(WebSocketDisconnect) as closed:
            with client.websocket_connect("/gradio_api/ws", headers=headers) as ws:
                ws.receive_text()
        assert closed.value.code == 1008
