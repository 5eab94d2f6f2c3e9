"""Credentials out of anything shown or stored: one helper for URIs and for text that may contain them.

`postgresql://user:secret@host/db` -> `postgresql://user:***@host/db`; query parameters that carry secrets
(`?password=`, `token=`, `api_key=`, `sig=`, ...) keep their name and lose their value. Errors, success
lines, MLflow params and tags, tune's storage URL and the registry's output all pass through `redact`.
"""

from __future__ import annotations

import re

MASK = "***"
# scheme://user:password@  (up to the last '@' before any '/' or whitespace: a password may hold '@')
_USERINFO = re.compile(r"(?P<head>\b[A-Za-z][A-Za-z0-9+.\-]*://[^\s:/@?#]*):(?P<secret>[^\s/]+)@")
_SECRET_NAMES = (r"password|passwd|pwd|pass|secret|token|access[_-]?token|auth[_-]?token|api[_-]?key|apikey|"
                 r"access[_-]?key|secret[_-]?key|client[_-]?secret|sig|signature|credentials?|session[_-]?token|"
                 r"x-amz-signature|x-amz-credential|x-amz-security-token")
# ?password=...  &token=...  (a query parameter of any URL, or key=value in a connection string)
_QUERY = re.compile(rf"(?P<head>[?&;](?:{_SECRET_NAMES})=)(?P<secret>[^&;#\s'\"]+)", re.IGNORECASE)


def redact(text: object) -> str:
    """`text` (a URI, a message, a traceback) with every credential replaced by '***'."""
    out = _USERINFO.sub(lambda m: f"{m['head']}:{MASK}@", str(text))
    return _QUERY.sub(lambda m: f"{m['head']}{MASK}", out)


def has_secret(text: object) -> bool:
    """Whether `redact` would change `text`."""
    return redact(text) != str(text)


def redact_exception(exc: BaseException) -> None:
    """Redact the string arguments of `exc` and of the exceptions it was raised from, in place, so a
    traceback printed later shows no credential."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        try:
            current.args = tuple(redact(a) if isinstance(a, str) and has_secret(a) else a for a in current.args)
        except (AttributeError, TypeError):  # an exception type with read-only args: its text stays as raised
            pass
        for name in ("message", "hint"):  # FoundryError and MlflowException keep their text here too
            value = getattr(current, name, None)
            if isinstance(value, str) and has_secret(value):
                try:
                    setattr(current, name, redact(value))
                except (AttributeError, TypeError):
                    pass
        current = current.__cause__ or current.__context__
