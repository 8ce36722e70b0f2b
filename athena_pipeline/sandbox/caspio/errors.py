"""The one exception every layer of the Caspio emulator raises for a client-visible error.

Why a single type: Caspio answers every failure with the same body,
``{"Code", "Message", "Resource", "RequestId"}``; the store, the where-clause parser and the
handlers only know the status, the code and the message, and the app adds the rest. Messages
name tables and fields but never echo a value a client sent (values can be PHI).
"""

from __future__ import annotations


class CaspioApiError(Exception):
    """A Caspio error response: HTTP ``status``, Caspio ``code`` and a ``message``."""

    def __init__(self, status: int, code: str, message: str, *,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}


def bad_query(message: str) -> CaspioApiError:
    """400 IncorrectQueryParameter: a bad ``q.*`` parameter (or a clause we cannot parse)."""
    return CaspioApiError(400, "IncorrectQueryParameter", message)


def bad_body(message: str) -> CaspioApiError:
    """400 IncorrectBodyParameter: a missing, malformed or wrongly shaped body."""
    return CaspioApiError(400, "IncorrectBodyParameter", message)


def sql_error(message: str, status: int = 400) -> CaspioApiError:
    """SqlServerError: what SQL Server itself refused (unknown column, conversion, unique)."""
    return CaspioApiError(status, "SqlServerError", message)


def not_found(message: str) -> CaspioApiError:
    return CaspioApiError(404, "ObjectNotFound", message)
