"""serve/security.py: hashed API keys, the per-key rate limiter, and the body size middleware."""

import asyncio
import stat

import pytest
from fastapi import FastAPI, Request
from fastapi.testclient import TestClient

from modelfoundry.errors import ConfigError
from modelfoundry.serve.security import (ApiKeys, AuthError, BodySizeLimit, PayloadTooLarge, RateLimited,
                                         RateLimiter, create_key, hash_key, key_from_headers)


def test_create_key_round_trip(tmp_path):
    path = tmp_path / "keys.txt"
    path.write_text("# operators\n\n")
    alice, bob = create_key(path, "alice"), create_key(path, "bob")
    text = path.read_text()
    assert alice.startswith("mf_") and len(alice) > 40 and alice != bob
    assert alice not in text and bob not in text
    assert text == f"# operators\n\nalice:{hash_key(alice)}\nbob:{hash_key(bob)}\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    keys = ApiKeys.from_file(path)
    assert keys.verify(alice) == "alice" and keys.verify(bob) == "bob"


def test_create_key_refuses_duplicate_and_bad_names(tmp_path):
    path = tmp_path / "keys.txt"
    create_key(path, "alice")
    with pytest.raises(ConfigError, match="already has a key named 'alice'"):
        create_key(path, "alice")
    with pytest.raises(ConfigError, match="Got 'a:b' instead"):
        create_key(path, "a:b")
    assert len(ApiKeys.from_file(path).hashes) == 1


def test_malformed_or_missing_keys_file(tmp_path):
    path = tmp_path / "keys.txt"
    path.write_text(f"# comment\nalice:{hash_key('x')}\nmf_pasted_plaintext_key\n")
    with pytest.raises(ConfigError, match=r"keys.txt, line 3: expected NAME:SHA256_HEX") as info:
        ApiKeys.from_file(path)
    assert "mf_pasted" not in str(info.value)  # a pasted key is not echoed into logs
    path.write_text(f"alice:{hash_key('x')}\nalice:{hash_key('y')}\n")
    with pytest.raises(ConfigError, match="line 2: a second key named 'alice'"):
        ApiKeys.from_file(path)
    with pytest.raises(ConfigError, match="nope.txt does not exist"):
        ApiKeys.from_file(tmp_path / "nope.txt")


def test_verify_refuses_missing_and_invalid_keys():
    keys = ApiKeys({"alice": hash_key("mf_secret")})
    for presented, message in [(None, "missing API key"), ("", "missing API key"), ("mf_wrong", "invalid API key")]:
        with pytest.raises(AuthError, match=message) as info:
            keys.verify(presented)
        assert info.value.http_status == 401 and info.value.exit_code == 8


def test_key_from_headers():
    assert key_from_headers({"authorization": "Bearer mf_a"}) == "mf_a"
    assert key_from_headers({"Authorization": "bearer  mf_a "}) == "mf_a"
    assert key_from_headers({"X-API-Key": "mf_b"}) == "mf_b"
    assert key_from_headers({"authorization": "Basic dXNlcg==", "x-api-key": "mf_b"}) == "mf_b"
    assert key_from_headers({"authorization": "Bearer "}) is None
    assert key_from_headers({}) is None


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_rate_limiter_burst_refill_and_independent_keys():
    clock = FakeClock()
    limiter = RateLimiter(rate_per_s=2.0, burst=3, clock=clock)
    for _ in range(3):
        limiter.acquire("alice")
    with pytest.raises(RateLimited) as info:
        limiter.acquire("alice")
    assert info.value.http_status == 429 and info.value.retry_after_s == pytest.approx(0.5)
    limiter.acquire("bob")  # bob's bucket is his own
    clock.now += 0.25
    with pytest.raises(RateLimited) as info:
        limiter.acquire("alice")
    assert info.value.retry_after_s == pytest.approx(0.25)
    clock.now += 0.25
    limiter.acquire("alice")  # one token refilled
    clock.now += 60
    for _ in range(3):  # refills up to burst, never beyond
        limiter.acquire("alice")
    with pytest.raises(RateLimited):
        limiter.acquire("alice")


def test_rate_limiter_rejects_bad_parameters():
    with pytest.raises(ConfigError, match="'rate_per_s' parameter of RateLimiter must be > 0. Got 0 instead"):
        RateLimiter(rate_per_s=0, burst=1)
    with pytest.raises(ConfigError, match="'burst'"):
        RateLimiter(rate_per_s=1, burst=0)


@pytest.fixture
def client():
    app = FastAPI()

    @app.post("/echo")
    async def echo(request: Request) -> dict:
        return {"size": len(await request.body())}

    app.add_middleware(BodySizeLimit, max_bytes=100)
    with TestClient(app) as c:
        yield c


def test_body_size_limit_passes_small_bodies(client):
    assert client.post("/echo", content=b"x" * 100).json() == {"size": 100}
    assert client.post("/echo", content=(b"x" * 10 for _ in range(5))).json() == {"size": 50}


def test_body_size_limit_refuses_declared_length(client):
    response = client.post("/echo", content=b"x" * 101)
    assert response.status_code == 413
    body = response.json()
    assert body["error"] == "The request body of 101 bytes exceeds the limit of 100 bytes." and body["hint"]


def test_body_size_limit_refuses_streamed_body(client):
    response = client.post("/echo", content=(b"x" * 60 for _ in range(3)))  # chunked: no Content-Length
    assert response.status_code == 413
    assert "exceeds the limit of 100 bytes" in response.json()["error"]


def test_body_size_limit_stops_reading_after_the_limit():
    chunks_read, sent = [], []

    async def receive():  # a 600-byte upload in ten chunks
        chunks_read.append(1)
        return {"type": "http.request", "body": b"x" * 60, "more_body": len(chunks_read) < 10}

    async def send(message):
        sent.append(message)

    async def app(scope, receive, send):
        while (await receive())["more_body"]:
            pass
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    scope = {"type": "http", "method": "POST", "path": "/", "headers": []}
    asyncio.run(BodySizeLimit(app, max_bytes=100)(scope, receive, send))
    assert len(chunks_read) == 2 and sent[0]["status"] == 413 and PayloadTooLarge.http_status == 413


def test_body_size_limit_passes_other_scopes_through():
    seen = []

    async def app(scope, receive, send):
        seen.append(scope["type"])

    asyncio.run(BodySizeLimit(app, max_bytes=0)({"type": "lifespan"}, None, None))
    assert seen == ["lifespan"]
