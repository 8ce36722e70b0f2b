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

The cache is :class:`athena_pipeline.oauth_token.TokenCache`, shared with the athenahealth client;
the 60 s renewal margin is its ``REFRESH_MARGIN_SECONDS`` (NWCA's measured-safe margin).

Secrets, tokens and refresh tokens never appear in logs, exceptions or ``repr``.
"""

from __future__ import annotations

import base64
import logging
import time
from collections.abc import Callable
from urllib.parse import quote_plus

from athena_pipeline.caspio.errors import CaspioAuthError, CaspioError
from athena_pipeline.http import HttpPolicy
from athena_pipeline.oauth_token import REFRESH_MARGIN_SECONDS, TokenCache

log = logging.getLogger("athena_pipeline.caspio.auth")

CREDENTIAL_MODES = ("body", "basic")


def token_url_for(base_url: str) -> str:
    """``{base_url}/oauth/token``: Caspio's token endpoint for an Integration URL."""
    return base_url.rstrip("/") + "/oauth/token"


class CaspioAuth(TokenCache):
    """Bearer tokens for one Caspio Web Services profile (an :class:`Authenticator`).

    The cache, single-flight renewal and invalidation are :class:`TokenCache`'s; Caspio adds the
    refresh-token grant and its own error classes.
    """

    auth_error = CaspioAuthError
    passthrough = CaspioError  # incl. the call budget

    def __init__(self, token_url: str, client_id: str, client_secret: str, *, policy: HttpPolicy,
                 credentials: str = "body", clock: Callable[[], float] = time.time,
                 refresh_margin: float = REFRESH_MARGIN_SECONDS) -> None:
        if not token_url:
            raise ValueError("a Caspio token URL is required")
        if not client_id or not client_secret:
            raise ValueError("CASPIO_CLIENT_ID and CASPIO_CLIENT_SECRET are required")
        if credentials not in CREDENTIAL_MODES:
            raise ValueError(f"credentials must be one of {', '.join(CREDENTIAL_MODES)}")
        super().__init__(token_url, client_id, policy=policy, clock=clock,
                         refresh_margin=refresh_margin)
        self.credentials = credentials
        self.__secret = client_secret
        self.__refresh_token: str | None = None
        self.refreshes = 0  # of the fetches (client credentials + refreshes), the refresh_token grants

    def _renew(self) -> None:
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
        headers = {"Accept": "application/json"}
        if self.credentials == "basic":
            raw = f"{quote_plus(self.client_id)}:{quote_plus(self.__secret)}".encode()
            headers["Authorization"] = "Basic " + base64.b64encode(raw).decode("ascii")
        else:
            form = {**form, "client_id": self.client_id, "client_secret": self.__secret}
        body, lifetime = self._request_token(form, headers)
        refresh = body.get("refresh_token")
        if isinstance(refresh, str) and refresh:
            self.__refresh_token = refresh
        log.info("caspio access token obtained (%s), valid %.0fs", form["grant_type"], lifetime)
