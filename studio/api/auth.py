"""One check for every HTTP API: the same credentials as the UI.

Accepted: HTTP Basic (what A1111's clients send with --api-auth), or `Authorization: Bearer
<password>` / `Bearer <user>:<password>` (what OpenAI clients send as the API key). When the
studio runs without auth, the APIs are open, like the UI.
"""
from __future__ import annotations

import base64
import binascii
import hmac
from typing import TYPE_CHECKING, Callable

from fastapi import HTTPException, Request

if TYPE_CHECKING:
    from studio.context import StudioContext


def _same(given: str, known: str) -> bool:
    """Constant-time comparison of any text: compare_digest refuses non-ASCII str (a 500 for a
    password like 'pässword'), so both sides are compared as UTF-8 bytes."""
    return hmac.compare_digest(given.encode("utf-8", "surrogateescape"), known.encode("utf-8", "surrogateescape"))


def _credentials_ok(pairs: tuple[tuple[str, str], ...], user: str | None, password: str) -> bool:
    for known_user, known_password in pairs:
        if user is not None and not _same(user, known_user):
            continue
        if _same(password, known_password):
            return True
    return False


def check_authorization(pairs: tuple[tuple[str, str], ...], header: str | None) -> bool:
    if not pairs:
        return True
    if not header or " " not in header:
        return False
    scheme, _, value = header.partition(" ")
    value = value.strip()
    if scheme.lower() == "basic":
        try:
            decoded = base64.b64decode(value, validate=True).decode("utf-8")
        except (binascii.Error, ValueError):  # not base64 (non-ASCII too), or not UTF-8
            return False
        user, sep, password = decoded.partition(":")
        return bool(sep) and _credentials_ok(pairs, user, password)
    if scheme.lower() == "bearer":
        try:  # HTTP headers arrive decoded as Latin-1; a UTF-8 key reads back as sent
            value = value.encode("latin-1").decode("utf-8")
        except (UnicodeEncodeError, UnicodeDecodeError):
            pass
        user, sep, password = value.partition(":")
        if sep and _credentials_ok(pairs, user, password):
            return True
        return _credentials_ok(pairs, None, value)
    return False


def require_auth(ctx: "StudioContext") -> Callable[[Request], None]:
    """A FastAPI dependency: `APIRouter(dependencies=[Depends(require_auth(ctx))])`."""

    def dependency(request: Request) -> None:
        if not check_authorization(ctx.config.auth, request.headers.get("authorization")):
            raise HTTPException(
                status_code=401, detail="authentication required: use the studio's user and password",
                headers={"WWW-Authenticate": 'Basic realm="GenStudio"'})

    return dependency
