"""The bearer-token cache shared by the athenahealth and Caspio OAuth clients.

Why one class for both: the rules are the same for every client-credentials API we call. A token
is fetched once and reused until ``refresh_margin`` (60 s) before it expires (half its lifetime
for very short-lived tokens), because token calls are rate limited (athena: 50 a minute) or
metered (Caspio: every call costs). One lock means one token call in flight: concurrent threads
that all need a token wait for the same call. A refused token (401, or Caspio's stale-token 400)
is forgotten only if it is still the cached one, so a burst of failures on one token renews it
once. ``expires_in`` may arrive as a string (athena's newer platform).

What differs stays in the subclasses: how a token is asked for (:meth:`TokenCache._renew`: a
shared secret, a signed JWT assertion, Caspio's refresh-token grant first) and which error class
a refusal becomes (:attr:`TokenCache.auth_error`, :attr:`TokenCache.passthrough`).

The token never appears in logs, exceptions or ``repr``.
"""

from __future__ import annotations

import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from typing import Any, ClassVar
from urllib.parse import urlsplit

from athena_pipeline.http import ApiError, AuthError, HttpPolicy
from athena_pipeline.http.policy import Data

#: Refresh this long before a token expires.
REFRESH_MARGIN_SECONDS = 60.0
#: Assumed lifetime when a token response has no (or a malformed) ``expires_in``.
DEFAULT_TOKEN_LIFETIME_SECONDS = 300.0


class TokenCache(ABC):
    """An :class:`~athena_pipeline.http.Authenticator` that caches one bearer token.

    Subclasses implement :meth:`_renew` (called under the lock when there is no valid token),
    which asks the token endpoint through :meth:`_request_token`.
    """

    #: What a refused token request raises (an :class:`AuthError` subclass).
    auth_error: ClassVar[type[AuthError]] = AuthError
    #: Errors from the policy that are re-raised as they are (transient ones always are).
    passthrough: ClassVar[type[ApiError]] = AuthError

    def __init__(self, token_url: str, client_id: str, *, policy: HttpPolicy,
                 clock: Callable[[], float] = time.time,
                 refresh_margin: float = REFRESH_MARGIN_SECONDS) -> None:
        self.token_url = token_url
        self.client_id = client_id
        self.policy = policy
        self.template = urlsplit(token_url).path or "/"
        self._clock = clock
        self._margin = refresh_margin
        self._lock = threading.Lock()
        self.__token: str | None = None
        self._refresh_at = 0.0
        self.fetches = 0  # tokens obtained so far (for tests and metrics)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(client_id={self.client_id!r}, token_url={self.token_url!r})"

    # --- Authenticator -----------------------------------------------------------------------
    def auth_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token()}"}

    def invalidate(self, used: Mapping[str, str]) -> None:
        """The token in ``used`` was refused: forget it (if still cached) so the next call renews."""
        value = used.get("Authorization") or used.get("authorization") or ""
        with self._lock:
            if self.__token is not None and value == f"Bearer {self.__token}":
                self.__token = None

    # --- the cache ---------------------------------------------------------------------------
    def token(self) -> str:
        """A valid access token, obtained (once, whatever the thread count) when needed."""
        with self._lock:
            if self.__token is None or self._clock() >= self._refresh_at:
                self._renew()
            assert self.__token is not None
            return self.__token

    @abstractmethod
    def _renew(self) -> None:
        """Obtain a new token with :meth:`_request_token` (runs under the lock)."""

    def _request_token(self, form: Data, headers: Mapping[str, str]
                       ) -> tuple[dict[str, Any], float]:
        """POST ``form`` to the token endpoint and cache the ``access_token`` it answers.

        ``form`` may be a callable, evaluated per attempt (a JWT assertion must be fresh each
        time the policy retries). Returns the response body (for fields such as
        ``refresh_token``) and the token's lifetime in seconds. A non-transient failure is
        raised as :attr:`auth_error`.
        """
        started = self._clock()
        system, template = self.policy.system, self.template
        try:
            response = self.policy.request("POST", self.token_url, path_template=template,
                                           data=form, headers=headers)
        except ApiError as exc:
            if exc.transient or isinstance(exc, self.passthrough):
                raise
            raise self.auth_error(str(exc), system=exc.system, method=exc.method, url=exc.url,
                                  path_template=exc.path_template, status=exc.status,
                                  detail=exc.detail, request_id=exc.request_id,
                                  transient=False) from None
        try:
            body = response.json()
        except ValueError:
            body = None
        token = body.get("access_token") if isinstance(body, dict) else None
        if not isinstance(token, str) or not token:
            raise self.auth_error(f"{system} token endpoint {template} answered "
                                  f"{response.status_code} without an access_token",
                                  system=system, method="POST", path_template=template,
                                  status=response.status_code, transient=False)
        lifetime = expires_in_seconds(body.get("expires_in"))
        self.__token = token
        self._refresh_at = started + lifetime - min(self._margin, lifetime / 2)
        self.fetches += 1
        return body, lifetime


def expires_in_seconds(value: object) -> float:
    """``expires_in`` as seconds: an int, a float or a numeric string; a default otherwise."""
    try:
        seconds = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return DEFAULT_TOKEN_LIFETIME_SECONDS
    return seconds if seconds > 0 else DEFAULT_TOKEN_LIFETIME_SECONDS
