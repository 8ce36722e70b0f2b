"""Build Caspio ``q.where`` clauses safely: quoted literals and IN-lists that fit in a URI.

Why this matters: Caspio's PUT and DELETE are set-based (``q.where`` is T-SQL without the
``WHERE``), so one bad quote turns "delete row X" into a syntax error, or worse, into a
different filter. Strings are single-quoted with ``'`` doubled (``N'…'`` when they hold non-ASCII
characters, so SQL Server keeps them as Unicode). And Caspio refuses URIs over 2047 characters
(414), so deleting a few hundred keys must be split into several ``IN (…)`` clauses, each sized by
its *encoded* length, exactly as httpx will put it on the wire.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from collections.abc import Sequence
from decimal import Decimal

import httpx

#: Caspio's URI limit (special considerations page); longer requests get 414.
MAX_URI = 2047
_FIELD = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,63}$")


def quote_literal(value: object) -> str:
    """``value`` as a T-SQL literal: strings quoted with ``'`` doubled, numbers bare, bools 1/0.

    Dates and datetimes become quoted ISO strings (``'2026-11-23T08:30:00'``); ``None`` becomes
    ``NULL`` (use ``IS NULL`` to compare with it). Floats must be finite.
    """
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError("a where-clause number must be finite")
        return repr(value)
    if isinstance(value, Decimal):
        if not value.is_finite():
            raise ValueError("a where-clause number must be finite")
        return format(value, "f")
    if isinstance(value, dt.datetime):
        text = value.replace(tzinfo=None).isoformat(timespec="seconds")
    elif isinstance(value, dt.date):
        text = value.isoformat()
    elif isinstance(value, str):
        text = value
    else:
        raise TypeError(f"cannot quote a {type(value).__name__} for a Caspio where clause")
    if "\x00" in text:
        raise ValueError("a where-clause string must not contain NUL")
    prefix = "" if text.isascii() else "N"
    return prefix + "'" + text.replace("'", "''") + "'"


def check_field(field: str) -> str:
    """``field`` if it is a plain Caspio field name (letters, digits, ``_``); ValueError otherwise."""
    if not _FIELD.fullmatch(field):
        raise ValueError(f"{field!r} is not a Caspio field name")
    return field


def equals(field: str, value: object) -> str:
    """``field = literal`` (``field IS NULL`` for None)."""
    check_field(field)
    return f"{field} IS NULL" if value is None else f"{field} = {quote_literal(value)}"


def encoded_length(text: str) -> int:
    """Length of ``text`` once httpx encodes it as a query value (``+`` for space, ``%XX``)."""
    return len(str(httpx.QueryParams({"": text}))) - 1


def in_clauses(field: str, values: Sequence[object], max_uri: int = MAX_URI, *,
               prefix_length: int = 0) -> list[str]:
    """``field IN (…)`` clauses covering ``values``, each short enough for one request.

    ``prefix_length`` is the length of everything in the URI before the clause's encoded value
    (scheme, host, path, ``?q.where=``); each clause satisfies
    ``prefix_length + encoded_length(clause) <= max_uri``. Duplicates are dropped, order is kept.
    Raises ValueError if a single value cannot fit (the message never quotes the value).
    """
    check_field(field)
    head = f"{field} IN ("
    fixed = prefix_length + encoded_length(head) + encoded_length(")")
    comma = encoded_length(",")
    room = max_uri - fixed
    clauses: list[str] = []
    current: list[str] = []
    used = 0
    for value in dict.fromkeys(values):
        if value is None:
            raise ValueError(f"{field} IN (…) cannot match NULL; filter with IS NULL instead")
        literal = quote_literal(value)
        size = encoded_length(literal)
        if size > room:
            raise ValueError(f"a {field} value is too long for one Caspio request "
                             f"({size} encoded characters; at most {room} fit)")
        extra = size + (comma if current else 0)
        if current and used + extra > room:
            clauses.append(head + ",".join(current) + ")")
            current, used, extra = [], 0, size
        current.append(literal)
        used += extra
    if current:
        clauses.append(head + ",".join(current) + ")")
    return clauses
