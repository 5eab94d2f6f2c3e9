"""Guards for the inference server: hashed API keys, a per-key rate limit, and a request body size limit.

The keys file holds one key per line as `NAME:SHA256_HEX` (blank lines and `#` comments allowed); the
plaintext key is shown once by `create_key` and never stored. Everything here is plain Python except
`BodySizeLimit`, a pure ASGI middleware, so the checks can be tested without a server.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import secrets
import threading
import time
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from pathlib import Path
from typing import Any

from modelfoundry.errors import AuthError, ConfigError, FoundryError, PayloadTooLarge, RateLimited
from modelfoundry.storage import write_bytes_atomic

# the command that makes a key, quoted in hints; keep in step with cli.py
CREATE_KEY_COMMAND = "foundry keys create NAME --file KEYS_FILE"
KEY_PREFIX = "mf_"
_NAME = re.compile(r"[A-Za-z0-9_.-]+")
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def hash_key(key: str) -> str:
    """The SHA-256 hex digest stored in the keys file in place of `key`.

    A plain (unsalted, fast) hash is enough because keys are 256-bit random tokens, not passwords.
    """
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def create_key(path: Path, name: str) -> str:
    """Make a new random API key, append `name:hash` to the keys file, and return the plaintext key.

    The file is rewritten atomically (created if missing, existing lines and comments kept) and made
    readable by its owner only (mode 0600).

    Args:
        path: The keys file.
        name: A label for the key (letters, digits, `_`, `.`, `-`), unique in the file.

    Returns:
        The key, `mf_` followed by 43 URL-safe characters. It is not stored anywhere: show it once.

    Raises:
        ConfigError: `name` is not a valid name or is already in the file, or the file is malformed.
    """
    path = Path(path)
    if not _NAME.fullmatch(name):
        raise ConfigError(f"The API key name must use only letters, digits, '_', '.' and '-'. Got '{name}' instead.",
                          "Pick a name such as 'ci-bot' or 'alice'.")
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    if name in _parse_keys(text, path):
        raise ConfigError(f"The keys file {path} already has a key named '{name}'.",
                          "Pick another name, or delete that key's line from the file to replace it.")
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    if text and not text.endswith("\n"):
        text += "\n"
    write_bytes_atomic(path, f"{text}{name}:{hash_key(key)}\n".encode("utf-8"))
    os.chmod(path, 0o600)  # the file holds hashes only, so the moment before this chmod exposes no key
    return key


class ApiKeys:
    """The API keys a server accepts, as a mapping of key name to SHA-256 hex digest."""

    def __init__(self, hashes: Mapping[str, str]):
        self.hashes = dict(hashes)

    @classmethod
    def from_file(cls, path: Path) -> ApiKeys:
        """Read a keys file of `NAME:SHA256_HEX` lines.

        Raises:
            ConfigError: The file is missing, holds no key, or has a malformed or duplicate line (named by
                its line number).
        """
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"The API keys file {path} does not exist.",
                              f"Create it with a first key: {CREATE_KEY_COMMAND}")
        hashes = _parse_keys(path.read_text(encoding="utf-8"), path)
        if not hashes:
            raise ConfigError(f"The API keys file {path} holds no keys, so every request would be refused.",
                              f"Add one: {CREATE_KEY_COMMAND}")
        return cls(hashes)

    def verify(self, presented: str | None) -> str:
        """The name of the key `presented`; every stored hash is compared, each in constant time.

        Raises:
            AuthError: No key was presented, or it matches no stored key.
        """
        if not presented:
            raise AuthError("missing API key: send it as 'Authorization: Bearer KEY' or 'X-API-Key: KEY'",
                            "Ask the server's operator for a key.")
        digest = hash_key(presented)
        found = None
        for name, stored in self.hashes.items():  # no early exit: the time taken does not say which key matched
            if hmac.compare_digest(digest, stored) and found is None:
                found = name
        if found is None:
            raise AuthError("invalid API key", "Check the key you send; keys are shown once, when created.")
        return found


def _parse_keys(text: str, path: Path) -> dict[str, str]:
    """Key name -> hash from a keys file's text; a bad line raises ConfigError naming `path` and its number."""
    hashes: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, _, digest = line.partition(":")
        name, digest = name.strip(), digest.strip().lower()
        # the line itself is not echoed: it could be a plaintext key pasted by mistake
        if not _NAME.fullmatch(name) or not _SHA256_HEX.fullmatch(digest):
            raise ConfigError(f"{path}, line {number}: expected NAME:SHA256_HEX (a name, a colon and 64 hex "
                              "digits).", f"Fix or delete the line; make new keys with {CREATE_KEY_COMMAND}")
        if name in hashes:
            raise ConfigError(f"{path}, line {number}: a second key named '{name}'.",
                              "Key names must be unique; delete or rename one of the lines.")
        hashes[name] = digest
    return hashes


def key_from_headers(headers: Mapping[str, str]) -> str | None:
    """The API key sent as `Authorization: Bearer KEY` or `X-API-Key: KEY` (names case-insensitive), or None."""
    lowered = {name.lower(): value for name, value in headers.items()}
    scheme, _, token = lowered.get("authorization", "").strip().partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return lowered.get("x-api-key", "").strip() or None


class RateLimiter:
    """A token bucket per key name: `burst` requests at once, then `rate_per_s` on average. Thread-safe.

    One bucket is kept per name ever seen, so pass verified key names, not anything a client sends.
    """

    def __init__(self, rate_per_s: float, burst: int, clock: Callable[[], float] = time.monotonic):
        if rate_per_s <= 0:
            raise ConfigError(f"The 'rate_per_s' parameter of RateLimiter must be > 0. Got {rate_per_s} instead.")
        if burst < 1:
            raise ConfigError(f"The 'burst' parameter of RateLimiter must be >= 1. Got {burst} instead.")
        self.rate_per_s = rate_per_s
        self.burst = burst
        self.clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # name -> (tokens, time of last refill)
        self._lock = threading.Lock()

    def acquire(self, name: str) -> None:
        """Take one token from `name`'s bucket.

        Raises:
            RateLimited: The bucket is empty; `retry_after_s` is the time until it holds one token.
        """
        with self._lock:
            now = self.clock()
            tokens, last = self._buckets.get(name, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - last) * self.rate_per_s)
            if tokens >= 1:
                self._buckets[name] = (tokens - 1, now)
                return
            self._buckets[name] = (tokens, now)
        retry_after_s = (1 - tokens) / self.rate_per_s
        raise RateLimited(f"Key '{name}' sent more than {self.rate_per_s:g} requests/s (bursts of {self.burst}).",
                          f"Retry after {retry_after_s:.2f} s, or spread requests out.", retry_after_s=retry_after_s)


class BodySizeLimit:
    """ASGI middleware answering 413 to HTTP requests whose body exceeds `max_bytes`.

    A request declaring a larger Content-Length is refused before the app runs. Otherwise the body is
    counted as the app reads it, and reading stops once the count passes the limit (chunked uploads
    carry no Content-Length): the app's own answer is dropped and a 413 sent in its place, and the rest
    of the body is never read.
    """

    def __init__(self, app: ASGIApp, max_bytes: int):
        if max_bytes < 0:
            raise ConfigError(f"The 'max_bytes' parameter of BodySizeLimit must be >= 0. Got {max_bytes} instead.")
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            await _send_error(send, self._too_large(f"of {declared} bytes"))
            return
        if declared is not None:  # the HTTP server reads exactly Content-Length bytes: nothing more can arrive
            await self.app(scope, receive, send)
            return
        received = 0
        too_large: PayloadTooLarge | None = None
        app_started = False  # the app began its answer before the limit was passed: it must go on

        async def counting_receive() -> Message:
            nonlocal received, too_large
            if too_large is not None:
                raise too_large
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    too_large = self._too_large(f"of at least {received} bytes")
                    raise too_large
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal app_started
            if too_large is not None and not app_started:
                return  # the app's answer to a body it could not read whole; ours goes out instead
            app_started = app_started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, guarded_send)
        except Exception:
            # apps may wrap the error (FastAPI turns it into a 400); once the body was cut off, any failure is ours
            if too_large is None or app_started:
                raise
        if too_large is not None and not app_started:
            await _send_error(send, too_large)

    def _too_large(self, size: str) -> PayloadTooLarge:
        return PayloadTooLarge(f"The request body {size} exceeds the limit of {self.max_bytes} bytes.",
                               "Send fewer records per request (split them into batches).")


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", []):
        if name.lower() == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None  # the server rejects a malformed length; counting still guards the body
    return None


async def _send_error(send: Send, error: FoundryError) -> None:
    body = json.dumps({"error": error.message, "hint": error.hint}).encode("utf-8")
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
               (b"connection", b"close")]  # the unread rest of the body makes the connection unusable
    await send({"type": "http.response.start", "status": error.http_status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
