"""Secret tokens of the web pages: confirmation links, CSRF fields and calendar feeds.

Pure functions. A raw token travels only in a URL; the database keeps `token_hash(token,
secret)`, an HMAC keyed with `[web] secret`, so a leaked database (or backup) yields no usable
link, and a token cannot be forged without the secret. The CSRF value of a confirmation form is
derived from the link's token in the same way: only someone who could read the page (that is,
who holds the link) can post the form, and no session or cookie is needed.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets

__all__ = [
    "TOKEN_BYTES",
    "check_csrf",
    "csrf_token",
    "looks_like_token",
    "new_token",
    "token_hash",
]

#: Random bytes of a token (256 bits; at least 128 are required).
TOKEN_BYTES = 32
# `secrets.token_urlsafe(32)` gives 43 characters; anything far from that is not ours.
_TOKEN_SHAPE = re.compile(r"[A-Za-z0-9_-]{22,128}")
# Distinct HMAC inputs per use, so a value computed for one purpose is useless for another.
_HASH_CONTEXT = b"support-bot/token\x00"
_CSRF_CONTEXT = b"support-bot/csrf\x00"


def new_token() -> str:
    """A fresh URL-safe random token (256 bits)."""
    return secrets.token_urlsafe(TOKEN_BYTES)


def looks_like_token(value: str) -> bool:
    """Whether `value` has the shape of a token (a cheap filter before any database lookup)."""
    return _TOKEN_SHAPE.fullmatch(value) is not None


def _mac(context: bytes, token: str, secret: str) -> str:
    if not secret:
        raise ValueError("an empty secret cannot sign tokens")
    return hmac.new(secret.encode(), context + token.encode(), hashlib.sha256).hexdigest()


def token_hash(token: str, secret: str) -> str:
    """What the database stores for `token`: HMAC-SHA256 keyed with the secret, hex (64)."""
    return _mac(_HASH_CONTEXT, token, secret)


def csrf_token(token: str, secret: str) -> str:
    """The hidden form field that must come back with the POST of the page of `token`."""
    return _mac(_CSRF_CONTEXT, token, secret)


def check_csrf(token: str, secret: str, candidate: str | None) -> bool:
    """Whether `candidate` is the CSRF value of `token` (constant-time comparison)."""
    if not candidate:
        return False
    return hmac.compare_digest(csrf_token(token, secret), candidate)
