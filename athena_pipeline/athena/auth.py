"""athenahealth OAuth 2.0 client credentials: a shared secret, a SMART private_key_jwt, or none.

Modes (``ATHENA_AUTH``):

- ``client_secret``: ``POST {token_url}`` with HTTP Basic ``client_id:client_secret`` (each
  form-urlencoded first, as RFC 6749 §2.3.1 says) and ``grant_type=client_credentials&scope=…``;
- ``private_key_jwt`` (SMART Backend Services / RFC 7523): the form carries a fresh
  ``client_assertion`` JWT signed with our PEM key: header ``alg`` (RS384 for RSA keys, ES384
  for P-384 keys; ES256/ES512 for other curves) and ``kid``; claims ``iss`` = ``sub`` = client id,
  ``aud`` = the token URL, ``exp`` 4 minutes ahead (the limit is 5), a unique ``jti`` (uuid4);
- ``none``: no credentials at all, for open test servers.

Why the token cache works this way: athena allows only 50 token requests a minute in
production (5 in preview) and 429s the rest of that minute, so a token is fetched once and
reused until 60 s before it expires (half its lifetime for very short-lived tokens). One lock
means one fetch in flight: concurrent download threads that all need a token wait for the same
fetch. ``expires_in`` may arrive as a string (athena's newer platform). A 401 from an API call
invalidates the token that was used, only if it is still the cached one, so a burst of 401s
on the same token causes a single refresh. The cache itself is
:class:`athena_pipeline.oauth_token.TokenCache`, shared with the Caspio client.

Secrets, assertions and tokens never appear in logs, exceptions or ``repr``.
"""

from __future__ import annotations

import base64
import logging
import time
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from urllib.parse import quote_plus

from athena_pipeline.http import HttpPolicy
from athena_pipeline.oauth_token import REFRESH_MARGIN_SECONDS, TokenCache

log = logging.getLogger("athena_pipeline.athena.auth")

AUTH_MODES = ("none", "client_secret", "private_key_jwt")
JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
#: Lifetime of our client assertions; SMART caps it at 5 minutes, we stay clear of clock skew.
ASSERTION_LIFETIME_SECONDS = 240

_CURVE_ALGORITHMS = {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512"}


class NoAuth:
    """Sends no credentials (``ATHENA_AUTH=none``): for open FHIR test servers."""

    def auth_headers(self) -> dict[str, str]:
        return {}

    def invalidate(self, used: Mapping[str, str]) -> None:
        return None

    def __repr__(self) -> str:
        return "NoAuth()"


class TokenAuth(TokenCache):
    """Base of the client-credentials modes: the token request's form and headers per mode.

    The cache, single-flight refresh and 401 handling are :class:`TokenCache`'s.
    """

    mode = "token"

    def __init__(self, token_url: str, client_id: str, *, scopes: str | None,
                 policy: HttpPolicy, clock: Callable[[], float] = time.time,
                 refresh_margin: float = REFRESH_MARGIN_SECONDS) -> None:
        if not token_url:
            raise ValueError("a token URL is required")
        if not client_id:
            raise ValueError("a client id is required")
        super().__init__(token_url, client_id, policy=policy, clock=clock,
                         refresh_margin=refresh_margin)
        self.scopes = scopes

    def _renew(self) -> None:
        # the form is a callable: a retried request gets a fresh JWT assertion
        _, lifetime = self._request_token(
            self._form, {"Accept": "application/json", **self._headers()})
        log.info("%s access token obtained (%s auth), valid %.0fs", self.policy.system,
                 self.mode, lifetime)

    # --- per mode ----------------------------------------------------------------------------
    def _form(self) -> dict[str, str]:
        form = {"grant_type": "client_credentials"}
        if self.scopes:
            form["scope"] = self.scopes
        return form

    def _headers(self) -> dict[str, str]:
        return {}


class ClientSecretAuth(TokenAuth):
    """``client_secret_basic``: the secret goes in an HTTP Basic header."""

    mode = "client_secret"

    def __init__(self, token_url: str, client_id: str, client_secret: str, **kwargs) -> None:
        super().__init__(token_url, client_id, **kwargs)
        if not client_secret:
            raise ValueError("client_secret auth needs a client secret")
        self.__secret = client_secret

    def _headers(self) -> dict[str, str]:
        raw = f"{quote_plus(self.client_id)}:{quote_plus(self.__secret)}".encode()
        return {"Authorization": "Basic " + base64.b64encode(raw).decode("ascii")}


class PrivateKeyJwtAuth(TokenAuth):
    """SMART Backend Services: a signed JWT assertion per token request."""

    mode = "private_key_jwt"

    def __init__(self, token_url: str, client_id: str, private_key_pem: bytes | str, *,
                 key_id: str | None = None, algorithm: str | None = None, **kwargs) -> None:
        super().__init__(token_url, client_id, **kwargs)
        # jwt and cryptography are imported where they are used: ~45 ms of start-up that the
        # none and client_secret modes (and every `extract` against the sandbox) never need.
        from cryptography.hazmat.primitives import serialization

        pem = private_key_pem.encode() if isinstance(private_key_pem, str) else private_key_pem
        try:
            key = serialization.load_pem_private_key(pem, password=None)
        except (ValueError, TypeError) as exc:
            raise ValueError("the private key is not an unencrypted PEM private key") from exc
        self.algorithm = algorithm or _algorithm_for(key)
        self.key_id = key_id
        self.__key = key

    def assertion(self) -> str:
        """A fresh client assertion (new ``jti``, ``exp`` 4 minutes ahead)."""
        now = int(time.time())
        claims = {"iss": self.client_id, "sub": self.client_id, "aud": self.token_url,
                  "iat": now, "exp": now + ASSERTION_LIFETIME_SECONDS,
                  "jti": str(uuid.uuid4())}
        headers = {"kid": self.key_id} if self.key_id else None
        import jwt

        return jwt.encode(claims, self.__key, algorithm=self.algorithm, headers=headers)

    def _form(self) -> dict[str, str]:
        return {**super()._form(), "client_assertion_type": JWT_BEARER,
                "client_assertion": self.assertion()}


def _algorithm_for(key: object) -> str:
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    if isinstance(key, rsa.RSAPrivateKey):
        return "RS384"
    if isinstance(key, ec.EllipticCurvePrivateKey):
        alg = _CURVE_ALGORITHMS.get(key.curve.name)
        if alg:
            return alg
        raise ValueError(f"unsupported EC curve {key.curve.name}; use P-384 (ES384)")
    raise ValueError("private_key_jwt needs an RSA or EC private key")


def build_authenticator(mode: str, *, policy: HttpPolicy, token_url: str | None = None,
                        client_id: str | None = None, client_secret: str | None = None,
                        private_key_path: Path | str | None = None,
                        private_key_pem: bytes | str | None = None, key_id: str | None = None,
                        jwt_algorithm: str | None = None, scopes: str | None = None
                        ) -> NoAuth | ClientSecretAuth | PrivateKeyJwtAuth:
    """The authenticator for ``mode`` (none | client_secret | private_key_jwt).

    Token requests go through ``policy`` (same rate limiter, retries and call accounting as the
    API calls they serve).
    """
    if mode == "none":
        return NoAuth()
    if mode == "client_secret":
        return ClientSecretAuth(token_url or "", client_id or "", client_secret or "",
                                scopes=scopes, policy=policy)
    if mode == "private_key_jwt":
        if private_key_pem is None:
            if private_key_path is None:
                raise ValueError("private_key_jwt auth needs a private key path")
            private_key_pem = Path(private_key_path).read_bytes()
        return PrivateKeyJwtAuth(token_url or "", client_id or "", private_key_pem,
                                 key_id=key_id, algorithm=jwt_algorithm, scopes=scopes,
                                 policy=policy)
    raise ValueError(f"auth mode must be one of {', '.join(AUTH_MODES)}, got {mode!r}")
