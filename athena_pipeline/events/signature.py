"""WebSub-style webhook signatures: ``X-Hub-Signature: sha256=<hex HMAC-SHA256 of the raw body>``.

athenahealth signs each notification with the ``X-Hub-Secret`` given when the Subscription was
created (spec ``athenahealth-api.md`` §3.2, sample HmacUtil.java): HMAC-SHA256 over the **raw body
bytes**, lowercase hex, prefixed with the method name. The emulator signs with :func:`sign`; the
receiver checks with :func:`verify`, in constant time, against every secret it currently accepts
(more than one only while a secret is being rotated).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence

HEADER = "X-Hub-Signature"
SECRET_HEADER = "X-Hub-Secret"
METHOD = "sha256"


def sign(secret: str, body: bytes) -> str:
    """The header value for ``body`` signed with ``secret``: ``sha256=<64 lowercase hex>``."""
    digest = hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()
    return f"{METHOD}={digest}"


def verify(secrets: Sequence[str], body: bytes, header: str | None) -> bool:
    """True when ``header`` is a valid ``sha256=`` signature of ``body`` under one of ``secrets``.

    Every secret is compared (no early exit on a match) with :func:`hmac.compare_digest`, so the
    time taken says nothing about which secret or how many leading characters matched. A missing
    header, another method (``sha1=``) or a malformed value is simply False.
    """
    if not header or not secrets:
        return False
    method, sep, given = header.strip().partition("=")
    if not sep or method.strip().lower() != METHOD:
        return False
    try:
        given_bytes = given.strip().lower().encode("ascii")
    except UnicodeEncodeError:
        return False
    ok = False
    for secret in secrets:
        expected = hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest().encode("ascii")
        ok |= hmac.compare_digest(expected, given_bytes)
    return ok
