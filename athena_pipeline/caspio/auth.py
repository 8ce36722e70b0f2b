"""Caspio OAuth 2.0 client credentials: one cached bearer token per client, refreshed ahead of expiry.

Caspio's token endpoint is ``{integration URL}/oauth/token`` (not under ``/rest/v3``). The client
id and secret go in the form body (Caspio's documented way) or in an HTTP Basic header
(``credentials="basic"``). The answer carries ``access_token`` (24 h), ``expires_in`` and a
``refresh_token`` (1 year).

Why the cache works this way:

- every Caspio call costs money on the account's monthly meter, token calls included, so a token
  is fetched once and reused until 60 s before it expires (half its life if it is shorter);
- a renewal first tries ``grant_type=refresh_token`` (what Caspio hands the refresh token out
  for), and falls back to client credentials when Caspio refuses it: a refresh token dies after
  60 days unused and an account keeps at most 1,000 of them;
- one lock means one token call in flight: concurrent writer threads that all need a token wait
  for the same call;
- a 401 (or Caspio's stale-token ``400 IncorrectQueryParameter``) invalidates the token that was
  used, only if it is still the cached one, so a burst of failures on one token renews it once.

Secrets, tokens and refresh tokens never appear in logs, exceptions or ``repr``.
"""

from __future__ import annotations

import base64
import logging
import threading
import time
from collections.abc import Callable, Mapping
from urllib.parse import quote_plus, urlsplit

from athena_pipeline.caspio.errors import CaspioAuthError, CaspioError
from athena_pipeline.http import ApiError, HttpPolicy

log = logging.getLogger("athena_pipeline.caspio.auth")

#: Renew this long before a token expires (NWCA's measured-safe margin).
REFRESH_MARGIN_SECONDS = 60.0
#: Assumed lifetime when a token response has no (or a malformed) ``expires_in``.
DEFAULT_TOKEN_LIFETIME_SECONDS = 300.0
CREDENTIAL_MODES = ("body", "basic")


def token_url_for(base_url: str) -> str:
    """``{base_url}/oauth/token``: Caspio's token endpoint for an Integration URL."""
    return base_url.rstrip("/") + "/oauth/token"


class CaspioAuth:
    """Bearer tokens for one Caspio Web Services profile (an :class:`Authenticator`)."""

    def __init__(self, token_url: str, client_id: str, client_secret: str, *, policy: HttpPolicy,
                 credentials: str = "body", clock: Callable[[], float] = time.time,
                 refresh_margin: float = REFRESH_MARGIN_SECONDS) -> None:
        if not token_url:
            raise ValueError("a Caspio token URL is required")
        if not client_id or not client_secret:
            raise ValueError("CASPIO_CLIENT_ID and CASPIO_CLIENT_SECRET are required")
        if credentials not in CREDENTIAL_MODES:
            raise ValueError(f"credentials must be one of {', '.join(CREDENTIAL_MODES)}")
        self.token_url = token_url
        self.client_id = client_id
        self.credentials = credentials
        self.policy = policy
        self.template = urlsplit(token_url).path or "/"
        self._clock = clock
        self._margin = refresh_margin
        self._lock = threading.Lock()
        self.__secret = client_secret
        self.__token: str | None = None
        self.__refresh_token: str | None = None
        self._refresh_at = 0.0
        self.fetches = 0     # token calls that succeeded (client credentials + refreshes)
        self.refreshes = 0   # of which refresh_token grants

    def __repr__(self) -> str:
        return f"CaspioAuth(client_id={self.client_id!r}, token_url={self.token_url!r})"

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
                self._obtain()
            assert self.__token is not None
            return self.__token

    def _obtain(self) -> None:
        if self.__refresh_token is not None:
            try:
                self._grant({"grant_type": "refresh_token", "refresh_token": self.__refresh_token})
                self.refreshes += 1
                return
            except CaspioAuthError:
                # expired, revoked or over Caspio's 1,000-per-account cap: start over
                log.info("caspio refresh token refused; requesting a new token with client credentials")
                self.__refresh_token = None
        self._grant({"grant_type": "client_credentials"})

    def _grant(self, form: dict[str, str]) -> None:
        started = self._clock()
        headers = {"Accept": "application/json"}
        if self.credentials == "basic":
            raw = f"{quote_plus(self.client_id)}:{quote_plus(self.__secret)}".encode()
            headers["Authorization"] = "Basic " + base64.b64encode(raw).decode("ascii")
        else:
            form = {**form, "client_id": self.client_id, "client_secret": self.__secret}
        try:
            response = self.policy.request("POST", self.token_url, path_template=self.template,
                                           data=form, headers=headers)
        except ApiError as exc:
            if exc.transient or isinstance(exc, CaspioError):  # incl. the call budget
                raise
            raise CaspioAuthError(str(exc), method=exc.method, url=exc.url,
                                  path_template=exc.path_template, status=exc.status,
                                  detail=exc.detail, request_id=exc.request_id,
                                  transient=False) from None
        try:
            body = response.json()
        except ValueError:
            body = None
        token = body.get("access_token") if isinstance(body, dict) else None
        if not isinstance(token, str) or not token:
            raise CaspioAuthError(
                f"caspio token endpoint {self.template} answered {response.status_code} "
                "without an access_token", method="POST", path_template=self.template,
                status=response.status_code, transient=False)
        lifetime = _seconds(body.get("expires_in"))
        refresh = body.get("refresh_token")
        self.__token = token
        if isinstance(refresh, str) and refresh:
            self.__refresh_token = refresh
        self._refresh_at = started + lifetime - min(self._margin, lifetime / 2)
        self.fetches += 1
        log.info("caspio access token obtained (%s), valid %.0fs", form["grant_type"], lifetime)


def _seconds(value: object) -> float:
    """``expires_in`` as seconds: an int, a float or a numeric string; a default otherwise."""
    try:
        seconds = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return DEFAULT_TOKEN_LIFETIME_SECONDS
    return seconds if seconds > 0 else DEFAULT_TOKEN_LIFETIME_SECONDS
