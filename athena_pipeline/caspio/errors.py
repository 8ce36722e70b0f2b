"""Errors of the Caspio client and the helpers that keep them free of PHI and secrets.

Why Caspio gets its own error type: a publisher must tell *which table and field* a failure is
about ("ap_ar_aging.open_balance: InvalidInputValue") and quote Caspio's own ``Code`` and
``RequestId`` when asking Caspio support, while never echoing a value: a where-clause holds row
keys, a record holds (for patient-level tables) PHI. Caspio's ``Message`` can quote the offending
value (SQL Server's "The duplicate key value is (…)"), so every message is scrubbed before it is
stored: quoted literals, parenthesised lists and any value we sent are replaced by ``…``.

The classes mirror :mod:`athena_pipeline.http.errors` so generic callers (a Dagster retry
policy, the CLI) keep working: :class:`CaspioAuthError` is an :class:`AuthError`,
:class:`CaspioRetryExhausted` a :class:`RetryExhausted` (``transient=True``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from typing import Any

import httpx

from athena_pipeline.http import ApiError, AuthError, RetryExhausted

_MAX_MESSAGE = 300
#: A quoted literal (``'…'``, ``N'…'``, ``"…"``) or a parenthesised list. An apostrophe inside a
#: word ("doesn't") does not open a literal.
_QUOTED = re.compile(r"(?<![A-Za-z0-9])N?'(?:[^']|'')*'|\"[^\"]*\"|\([^()]*\)")
#: Shorter values are not scrubbed by value (they would eat ordinary words); quoting catches them.
_MIN_SCRUB_LEN = 3


class CaspioError(ApiError):
    """A Caspio call failed.

    Beyond :class:`ApiError` (``status``, ``method``, ``path_template``, ``request_id`` = the
    ``X-Request-Id`` we sent, ``transient``) it carries Caspio's error body: ``code``
    (``IncorrectQueryParameter``, ``FieldNotFound``, ...), ``message`` (scrubbed of values) and
    ``caspio_request_id`` (Caspio's ``RequestId`` / ``X-Caspio-Request-ID``), plus the ``table``
    and ``field`` concerned when known. ``partial`` holds what a batch call completed before it
    stopped (an ``InsertResult`` or ``WriteResult``), so a caller can record the rows that did land.
    """

    def __init__(self, message: str, *, code: str | None = None, caspio_message: str | None = None,
                 caspio_request_id: str | None = None, table: str | None = None,
                 field: str | None = None, partial: Any = None, **kwargs: Any) -> None:
        kwargs.setdefault("system", "caspio")
        super().__init__(message, **kwargs)
        self.code = code
        self.message = caspio_message
        self.caspio_request_id = caspio_request_id
        self.table = table
        self.field = field
        self.partial = partial


class CaspioAuthError(CaspioError, AuthError):
    """Credentials refused: the token endpoint said no, or a call got 401/403 after a refresh."""


class CaspioRetryExhausted(CaspioError, RetryExhausted):
    """Caspio kept answering 429/5xx (or the network kept failing) past the retry budget."""


class CaspioBudgetExceeded(CaspioError):
    """The next call would exceed the run's call budget; it was *not* sent.

    ``calls_made`` is what the client had spent (token calls and retries included) and
    ``budget`` the configured limit.
    """

    def __init__(self, calls_made: int, budget: int, *, table: str | None = None,
                 partial: Any = None) -> None:
        where = f" (table {table})" if table else ""
        super().__init__(
            f"caspio call budget exhausted{where}: {calls_made} call(s) made, budget {budget}; "
            "the next call was not sent. Raise CASPIO_CALL_BUDGET or publish fewer tables.",
            code="CallBudgetExceeded", table=table, partial=partial, transient=False)
        self.calls_made = calls_made
        self.budget = budget


class SchemaConflict(CaspioError):
    """A Caspio table cannot take the mart's shape without losing data (type or key change).

    Raised before anything is written; the message names the table, the field and what to do.
    """

    def __init__(self, message: str, *, table: str, field: str | None = None) -> None:
        super().__init__(message, code="SchemaConflict", table=table, field=field, transient=False)


def scrub(text: str | None, values: Iterable[object] = (), keep: Iterable[str] = ()) -> str | None:
    """``text`` with quoted literals, parenthesised lists and each of ``values`` replaced by ``…``.

    ``values`` are the record values and where-clause literals of the call that failed; a value
    shorter than 3 characters is only caught when quoted (it would erase ordinary words).
    ``keep`` are names (tables, fields, type tokens) that may stay when quoted or parenthesised:
    Caspio writes "field(s) 'open_balance' (CURRENCY)", and the name is what a reader needs.
    """
    if text is None:
        return None
    kept = {k.lower() for k in keep}

    def hide(match: re.Match[str]) -> str:
        inner = match.group(0).lstrip("N")[1:-1]
        if inner.lower() in kept or (match.group(0)[0] == "(" and re.fullmatch(r"[a-z]{1,2}", inner)):
            return match.group(0)  # a name we sent, or a plural marker like "field(s)"
        return "…"

    out = _QUOTED.sub(hide, str(text))
    needles = sorted({str(v) for v in values if v is not None and not isinstance(v, bool)
                      and len(str(v)) >= _MIN_SCRUB_LEN}, key=len, reverse=True)
    for needle in needles:
        out = out.replace(needle, "…")
    out = " ".join(out.split())
    return out if len(out) <= _MAX_MESSAGE else out[: _MAX_MESSAGE - 1] + "…"


def error_body(response: httpx.Response) -> dict[str, Any]:
    """Caspio's error body ``{Code, Message, Resource, RequestId}`` (v4 lower-case too); {} if none."""
    try:
        body = json.loads(response.content or b"null")
    except (ValueError, UnicodeDecodeError):
        return {}
    if not isinstance(body, dict):
        return {}
    if isinstance(body.get("error"), dict):  # v4 wraps some errors as {"error": {...}}
        body = {**body, **body["error"]}
    return {"Code": _first(body, "Code", "code", "error"),
            "Message": _first(body, "Message", "message", "error_description"),
            "RequestId": _first(body, "RequestId", "requestId")}


def _first(body: dict, *keys: str) -> str | None:
    for key in keys:
        value = body.get(key)
        if isinstance(value, str) and value:
            return value
    return None


def describe_caspio_error(response: httpx.Response) -> str | None:
    """``Code: Message`` (scrubbed) for the HTTP policy's own error texts (401, retry exhaustion)."""
    body = error_body(response)
    code, message = body.get("Code"), scrub(body.get("Message"))
    if code and message:
        return f"{code}: {message}"
    return code or message


def field_named(message: str | None, fields: Iterable[str]) -> str | None:
    """The one of ``fields`` that Caspio's (unscrubbed) ``message`` names, if exactly one is found."""
    if not message:
        return None
    hits = [f for f in fields if re.search(rf"(?<![A-Za-z0-9_]){re.escape(f)}(?![A-Za-z0-9_])",
                                           message, re.IGNORECASE)]
    return hits[0] if len(hits) == 1 else None
