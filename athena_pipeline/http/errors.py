"""Typed errors of every outbound HTTP call, and the helpers that keep them free of secrets.

Why a hierarchy with ``.transient``: callers (a Dagster op, the CLI) must decide whether to
retry a whole step later. :class:`RetryExhausted` means "the server kept failing in ways that
usually pass" (``transient=True``); :class:`AuthError` and other 4xx are wrong credentials or a
wrong request and will fail again (``transient=False``).

Why messages use the *path template* (``/fhir/r4/Patient/{id}``) and not the concrete URL:
concrete paths carry patient ids and opaque bulk URLs may embed signed tokens; the template
names the call precisely enough to debug it. ``.url`` holds the same: origin, path template
and the query's parameter *names* (values replaced by ``…``), so an exception is safe to log,
store or show whole.
"""

from __future__ import annotations

import json
import re
from urllib.parse import parse_qsl, urlsplit, urlunsplit

import httpx

_MAX_DETAIL = 300
#: A path segment that reads as a word: letters (and ``_$.-``), optionally a short version
#: suffix (``v1``, ``r4``, ``oauth2``). Anything else (``12345``, ``a-1.c-195900``) is an id.
_WORD = re.compile(r"^(?:[A-Za-z_$.\-]{1,40}|[A-Za-z]{1,20}\d{1,2})$")


class ApiError(Exception):
    """An HTTP call failed. ``status`` is None for transport failures (no response)."""

    def __init__(self, message: str, *, system: str = "", method: str = "", url: str = "",
                 path_template: str = "", status: int | None = None, detail: str | None = None,
                 request_id: str | None = None, transient: bool = False) -> None:
        super().__init__(message)
        self.system = system
        self.method = method
        self.url = url
        self.path_template = path_template
        self.status = status
        self.detail = detail
        self.request_id = request_id
        self.transient = transient


class AuthError(ApiError):
    """Credentials refused (token endpoint error, or 401/403 after one re-authentication)."""


class RetryExhausted(ApiError):
    """Retries or the retry time budget ran out on transient failures (408/429/5xx/transport)."""

    def __init__(self, message: str, **kwargs) -> None:
        kwargs.setdefault("transient", True)
        super().__init__(message, **kwargs)


def redact_url(url: str | httpx.URL) -> str:
    """``url`` without user info and with every query value replaced by ``…``."""
    parts = urlsplit(str(url))
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = host + (f":{parts.port}" if parts.port else "")
    query = "&".join(f"{k}=…" for k, _ in parse_qsl(parts.query, keep_blank_values=True))
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))


def origin(url: str | httpx.URL) -> str:
    """``scheme://host[:port]`` of ``url`` (no user info)."""
    parts = urlsplit(str(url))
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    return f"{parts.scheme}://{host}" + (f":{parts.port}" if parts.port else "")


def template_path(path: str, *, keep: frozenset[str] | set[str] = frozenset(),
                  placeholder: str = "{id}") -> str:
    """``path`` with every id-like segment replaced by ``placeholder``.

    A segment is kept when it is in ``keep`` or looks like a word (letters and ``_$.-``, at most
    40 characters, or letters plus a one- or two-digit version like ``v1``/``r4``); anything
    else is treated as an id.
    Templates go into call records and error messages, so they must never carry identifiers.
    """
    out = []
    for seg in path.split("/"):
        if not seg or seg in keep or seg.startswith("{") or _WORD.fullmatch(seg):
            out.append(seg)
        else:
            out.append(placeholder)
    return "/".join(out)


def _clip(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _MAX_DETAIL else text[: _MAX_DETAIL - 1] + "…"


def error_detail(response: httpx.Response) -> str | None:
    """The server's own explanation from common JSON error shapes, clipped; None if absent.

    Understands FHIR OperationOutcome (issue code + diagnostics/details), OAuth 2.0
    (``error``/``error_description``), athenaOne v1 (``error``/``detailedmessage``) and plain
    ``message``/``Message`` bodies. Non-JSON bodies (gateway errors) give a short plain-text
    excerpt only when they are ``text/plain``; HTML pages are not echoed.
    """
    try:
        body = json.loads(response.content or b"null")
    except (ValueError, UnicodeDecodeError):
        body = None
    if isinstance(body, dict):
        if body.get("resourceType") == "OperationOutcome":
            parts = []
            for issue in body.get("issue") or []:
                if not isinstance(issue, dict):
                    continue
                text = issue.get("diagnostics") or (issue.get("details") or {}).get("text") or ""
                code = issue.get("code") or ""
                parts.append(f"{code}: {text}" if text else str(code))
            return _clip("; ".join(p for p in parts if p)) or None
        error = body.get("error")
        extra = (body.get("error_description") or body.get("detailedmessage")
                 or body.get("errormessage") or body.get("message") or body.get("Message"))
        if isinstance(error, str) and error:
            return _clip(f"{error}: {extra}" if isinstance(extra, str) and extra else error)
        if isinstance(extra, str) and extra:
            return _clip(extra)
        return None
    ctype = response.headers.get("content-type", "")
    if ctype.startswith("text/plain") and response.content:
        try:
            return _clip(response.content[:1000].decode("utf-8", "replace"))
        except Exception:  # noqa: BLE001 - best effort only
            return None
    return None


def is_transient_outcome(response: httpx.Response) -> bool:
    """True when the body is an OperationOutcome whose issues say ``transient``."""
    ctype = response.headers.get("content-type", "")
    if "json" not in ctype:
        return False
    try:
        body = json.loads(response.content or b"null")
    except (ValueError, UnicodeDecodeError):
        return False
    if not isinstance(body, dict) or body.get("resourceType") != "OperationOutcome":
        return False
    issues = [i for i in body.get("issue") or [] if isinstance(i, dict)]
    return bool(issues) and all(i.get("code") == "transient" for i in issues)
