"""OAuth 2.0 token endpoint, bearer checks, scopes and usage quotas of the emulator.

Why this is plain Python with no web framework: the rules (which grants, which JWT claims,
when a token is over its limit) are what tests and the spec care about; ``app.py`` only
turns the outcomes into HTTP responses.

Grants (``POST /oauth2/v1/token``, form-encoded, ``grant_type=client_credentials``):

- secret: HTTP Basic ``client_id:client_secret`` (or both in the form, ``client_secret_post``);
- ``private_key_jwt`` (SMART Backend Services / RFC 7523): ``client_assertion_type`` =
  ``urn:ietf:params:oauth:client-assertion-type:jwt-bearer`` and a ``client_assertion`` signed
  RS384/ES384 with a key registered for the client; ``iss`` = ``sub`` = client id, ``aud`` =
  the token URL the client called, ``exp`` in the future but at most 5 minutes ahead, and a
  ``jti`` never seen before (until its ``exp``).

Errors are RFC 6749 §5.2 JSON: ``{"error": ..., "error_description": ...}``; 401 for a failed
Basic login, 400 otherwise. Descriptions never echo secrets, assertions or tokens.

Quotas (athena: 50 token requests/min in production, 5 in preview, 429 for the rest of
that clock minute; a daily API call allowance reset at midnight GMT) are counted per client
in :class:`UsageMeter`, which also produces the quota headers every response carries.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import secrets
import threading
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import jwt
from cryptography.hazmat.primitives import serialization

from athena_pipeline.sandbox.emulator.config import ClientConfig, EmulatorConfig

JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
ANONYMOUS = "anonymous"

_SCOPE_RE = re.compile(r"system/(\*|[A-Za-z]+)\.(\*|read|write|[cruds]+)")


# --- scopes --------------------------------------------------------------------------------
def _reads(permission: str) -> bool:
    return permission in ("read", "*") or (permission not in ("write",) and "r" in permission)


def scope_allows_read(granted: frozenset[str] | set[str], resource_type: str) -> bool:
    """True when a granted SMART system scope lets the client read ``resource_type``."""
    for scope in granted:
        m = _SCOPE_RE.fullmatch(scope)
        if m and m.group(1) in ("*", resource_type) and _reads(m.group(2)):
            return True
    return False


def _may_grant(allowed: tuple[str, ...], requested: str) -> bool:
    if requested in allowed:
        return True
    m = _SCOPE_RE.fullmatch(requested)
    if not m:
        return False
    return f"system/*.{m.group(2)}" in allowed or "system/*.*" in allowed


# --- results -------------------------------------------------------------------------------
@dataclass(frozen=True)
class AccessToken:
    token: str
    client_id: str
    scopes: frozenset[str]
    expires_at: float  # wall-clock epoch seconds
    environment: str


@dataclass
class TokenOutcome:
    """What the token endpoint answers: status, JSON body, extra headers, claimed client."""

    status: int
    body: dict
    headers: dict[str, str] = field(default_factory=dict)
    client_id: str = ANONYMOUS
    retry_after: float | None = None  # seconds, for a 429 (app.py renders the header form)


def _oauth_error(status: int, error: str, description: str, client_id: str,
                 headers: dict[str, str] | None = None) -> TokenOutcome:
    return TokenOutcome(status, {"error": error, "error_description": description},
                        dict(headers or {}), client_id)


# --- usage meter -----------------------------------------------------------------------------
class UsageMeter:
    """Per-client counters: token requests per clock minute, API calls per UTC day and second.

    Each counter keeps only its current window, so memory stays bounded by the client count.
    """

    def __init__(self, config: EmulatorConfig) -> None:
        self.config = config
        self._lock = threading.Lock()
        self._minute: dict[str, tuple[int, int]] = {}
        self._day: dict[str, tuple[int, int]] = {}
        self._second: dict[str, tuple[int, int]] = {}

    @staticmethod
    def _bump(table: dict[str, tuple[int, int]], client: str, window: int) -> int:
        current, n = table.get(client, (window, 0))
        n = n + 1 if current == window else 1
        table[client] = (window, n)
        return n

    @staticmethod
    def _peek(table: dict[str, tuple[int, int]], client: str, window: int) -> int:
        current, n = table.get(client, (window, 0))
        return n if current == window else 0

    def token_request(self, client_id: str) -> float | None:
        """Count one token request; seconds until the minute ends if over the limit, else None."""
        now = self.config.wall_clock()
        with self._lock:
            n = self._bump(self._minute, client_id, int(now // 60))
        if n > self.config.token_rate_limit:
            return 60 - (now % 60)
        return None

    def api_call(self, client_id: str) -> tuple[str, float] | None:
        """Count one authenticated API call; (reason, retry-after seconds) when refused."""
        now = self.config.wall_clock()
        with self._lock:
            if self._peek(self._day, client_id, int(now // 86400)) >= self.config.daily_api_limit:
                return ("daily", 86400 - (now % 86400))
            limit = self.config.per_second_limit
            if limit is not None and self._peek(self._second, client_id, int(now)) >= limit:
                return ("second", 1.0)
            self._bump(self._day, client_id, int(now // 86400))
            self._bump(self._second, client_id, int(now))
        return None

    def headers(self, client_id: str) -> dict[str, str]:
        """The quota headers for this client as of now."""
        now = self.config.wall_clock()
        names = self.config.quota_headers
        with self._lock:
            used_day = self._peek(self._day, client_id, int(now // 86400))
            used_minute = self._peek(self._minute, client_id, int(now // 60))
        limit_minute = self.config.token_rate_limit
        return {
            names.limit_day: str(self.config.daily_api_limit),
            names.remaining_day: str(max(0, self.config.daily_api_limit - used_day)),
            names.reset_day: str(int(86400 - (now % 86400))),
            names.limit_minute: str(limit_minute),
            names.remaining_minute: str(max(0, limit_minute - used_minute)),
        }

    def reset(self) -> None:
        with self._lock:
            self._minute.clear()
            self._day.clear()
            self._second.clear()


# --- token service ---------------------------------------------------------------------------
def _load_key(key: str | dict):
    if isinstance(key, dict):
        return jwt.PyJWK(key).key
    return serialization.load_pem_public_key(key.encode())


# --- public keys of external clients (``sandbox serve --jwt-client ID=PATH``) -----------------
#: JWK members that describe the public half of a key (RFC 7517/7518); the rest are private.
_PUBLIC_JWK_MEMBERS = {
    "RSA": ("kty", "n", "e"), "EC": ("kty", "crv", "x", "y"),
}
_JWK_METADATA = ("kid", "alg", "use")


def public_jwk(jwk: dict) -> dict:
    """The public part of a JWK (private members such as ``d`` dropped).

    Why: users often keep one JWKS holding their key pair (the SMART bulk-data-client's config
    does); the emulator must only ever hold the public half. Raises ValueError when the JWK is
    not a usable RSA/EC/OKP key.
    """
    kty = jwk.get("kty") if isinstance(jwk, dict) else None
    if kty not in _PUBLIC_JWK_MEMBERS:
        raise ValueError(f"unsupported JWK key type {kty!r} (use RSA or EC)")
    missing = [m for m in _PUBLIC_JWK_MEMBERS[kty] if not jwk.get(m)]
    if missing:
        raise ValueError(f"JWK lacks {', '.join(missing)}")
    public = {m: jwk[m] for m in (*_PUBLIC_JWK_MEMBERS[kty], *_JWK_METADATA) if m in jwk}
    try:
        jwt.PyJWK(public)
    except (jwt.PyJWTError, ValueError, TypeError) as exc:
        raise ValueError(f"not a usable public key: {exc}") from None
    return public


def load_public_keys(path: Path | str) -> tuple[str | dict, ...]:
    """Public key(s) of an external OAuth client from a file, for ``ClientConfig.public_keys``.

    Accepts a PEM public key (a PEM private key is reduced to its public key), a JWKS JSON file
    (``{"keys": [...]}``) or a single JWK. Raises ValueError naming the file when it holds
    nothing usable, FileNotFoundError when it does not exist.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such key file")
    raw = path.read_bytes()
    text = raw.decode("utf-8", errors="replace").strip()
    if text.startswith("{"):
        try:
            doc = json.loads(text)
        except ValueError as exc:
            raise ValueError(f"{path}: not valid JSON ({exc.msg})") from None
        jwks = doc.get("keys") if isinstance(doc, dict) and "keys" in doc else [doc]
        if not isinstance(jwks, list) or not jwks:
            raise ValueError(f"{path}: a JWKS needs a non-empty \"keys\" array")
        keys: list[str | dict] = []
        for i, jwk in enumerate(jwks):
            try:
                keys.append(public_jwk(jwk))
            except ValueError as exc:
                raise ValueError(f"{path}: key {i}: {exc}") from None
        return tuple(keys)
    if "-----BEGIN" in text:
        try:
            key = serialization.load_pem_public_key(raw)
        except ValueError:
            try:
                key = serialization.load_pem_private_key(raw, password=None).public_key()
            except (ValueError, TypeError):
                raise ValueError(f"{path}: not a readable PEM public key") from None
        pem = key.public_bytes(serialization.Encoding.PEM,
                               serialization.PublicFormat.SubjectPublicKeyInfo).decode()
        return (pem,)
    raise ValueError(f"{path}: expected a PEM public key or a JWKS JSON file ({{\"keys\": [...]}})")


class TokenService:
    """Issues and checks access tokens. Thread-safe; all state is in memory."""

    def __init__(self, config: EmulatorConfig, meter: UsageMeter) -> None:
        self.config = config
        self.meter = meter
        self._lock = threading.Lock()
        self._tokens: dict[str, AccessToken] = {}
        self._seen_jti: dict[tuple[str, str], float] = {}

    # --- token endpoint ------------------------------------------------------------------------
    def token_request(self, form: Mapping[str, str], authorization: str | None,
                      token_url: str) -> TokenOutcome:
        """Handle one ``POST /oauth2/v1/token`` (form already parsed)."""
        basic = self._parse_basic(authorization)
        claimed = self._claimed_client(form, basic)
        wait = self.meter.token_request(claimed)
        if wait is not None:
            out = _oauth_error(429, "rate_limit_exceeded",
                               "Too many token requests this minute; retry when it ends.",
                               claimed)
            out.retry_after = wait
            return out

        grant_type = form.get("grant_type")
        if not grant_type:
            return _oauth_error(400, "invalid_request", "grant_type is required.", claimed)
        if grant_type != "client_credentials":
            return _oauth_error(400, "unsupported_grant_type",
                                "Only client_credentials is supported.", claimed)

        if form.get("client_assertion_type") or form.get("client_assertion"):
            client, err = self._authenticate_jwt(form, token_url)
        elif authorization is not None:
            client, err = self._authenticate_basic(basic)
        elif form.get("client_id") is not None and form.get("client_secret") is not None:
            client, err = self._authenticate_secret(form["client_id"], form["client_secret"])
            if err is not None:
                err.status = 400  # no Authorization header used: RFC 6749 allows 400
        else:
            client, err = None, _oauth_error(
                401, "invalid_client", "Client authentication is required.", claimed,
                {"WWW-Authenticate": 'Basic realm="athenahealth"'})
        if err is not None or client is None:
            assert err is not None
            err.client_id = claimed
            return err

        requested = (form.get("scope") or "").split()
        if requested:
            refused = [s for s in requested if not _may_grant(client.allowed_scopes, s)]
            if refused:
                return _oauth_error(400, "invalid_scope",
                                    "The requested scope is invalid, unknown, or not granted "
                                    "to this client.", client.client_id)
            granted = list(dict.fromkeys(requested))
        else:
            granted = list(client.allowed_scopes)
        token = self.issue(client.client_id, granted)
        lifetime = round(self.config.token_lifetime_seconds)
        return TokenOutcome(
            200,
            {
                "access_token": token.token,
                "token_type": "Bearer",
                "expires_in": str(lifetime) if self.config.expires_in_as_string else lifetime,
                "scope": " ".join(granted),
            },
            {"Cache-Control": "no-store", "Pragma": "no-cache"},
            client.client_id,
        )

    def issue(self, client_id: str, scopes: list[str]) -> AccessToken:
        """Mint a token (also used by tests that need one without the HTTP round trip)."""
        now = self.config.wall_clock()
        token = AccessToken(
            token=secrets.token_urlsafe(32), client_id=client_id, scopes=frozenset(scopes),
            expires_at=now + self.config.token_lifetime_seconds,
            environment=self.config.environment,
        )
        with self._lock:
            if len(self._tokens) > 10_000:
                self._tokens = {k: v for k, v in self._tokens.items() if v.expires_at > now}
            self._tokens[token.token] = token
        return token

    # --- bearer checks ---------------------------------------------------------------------------
    def check_bearer(self, authorization: str | None) -> tuple[AccessToken | None, str]:
        """(token, "") when valid, else (None, reason) with reason missing|unknown|expired."""
        if not authorization:
            return None, "missing"
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            return None, "missing"
        with self._lock:
            token = self._tokens.get(value.strip())
        if token is None or token.environment != self.config.environment:
            return None, "unknown"
        if token.expires_at <= self.config.wall_clock():
            return None, "expired"
        return token, ""

    def client_of(self, authorization: str | None) -> str | None:
        """The client owning a bearer token (valid or not yet pruned), for quota headers."""
        if not authorization:
            return None
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() == "bearer":
            with self._lock:
                token = self._tokens.get(value.strip())
            return token.client_id if token else None
        if scheme.lower() == "basic":
            parsed = self._parse_basic(authorization)
            return parsed[0] if parsed else None
        return None

    # --- client authentication ---------------------------------------------------------------------
    @staticmethod
    def _parse_basic(authorization: str | None) -> tuple[str, str] | None:
        if not authorization:
            return None
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() != "basic":
            return None
        try:
            decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return None
        user, sep, password = decoded.partition(":")
        if not sep:
            return None
        return urllib.parse.unquote_plus(user), urllib.parse.unquote_plus(password)

    @staticmethod
    def _claimed_client(form: Mapping[str, str], basic: tuple[str, str] | None) -> str:
        if basic:
            return basic[0]
        if form.get("client_id"):
            return form["client_id"]
        assertion = form.get("client_assertion")
        if assertion:
            try:
                iss = jwt.decode(assertion, options={"verify_signature": False}).get("iss")
                if isinstance(iss, str) and iss:
                    return iss
            except jwt.PyJWTError:
                pass
        return ANONYMOUS

    def _authenticate_basic(self, basic: tuple[str, str] | None
                            ) -> tuple[ClientConfig | None, TokenOutcome | None]:
        if basic is None:
            return None, _oauth_error(401, "invalid_client", "Malformed Basic credentials.",
                                      ANONYMOUS, {"WWW-Authenticate": 'Basic realm="athenahealth"'})
        client, err = self._authenticate_secret(*basic)
        if err is not None:
            err.headers["WWW-Authenticate"] = 'Basic realm="athenahealth"'
        return client, err

    def _authenticate_secret(self, client_id: str, secret: str
                             ) -> tuple[ClientConfig | None, TokenOutcome | None]:
        client = self.config.client(client_id)
        if client is None or client.secret is None or not secrets.compare_digest(
                client.secret.encode(), secret.encode()):
            return None, _oauth_error(401, "invalid_client", "Client authentication failed.",
                                      client_id)
        return client, None

    def _authenticate_jwt(self, form: Mapping[str, str], token_url: str
                          ) -> tuple[ClientConfig | None, TokenOutcome | None]:
        def fail(why: str) -> tuple[None, TokenOutcome]:
            return None, _oauth_error(400, "invalid_client", why, ANONYMOUS)

        if form.get("client_assertion_type") != JWT_BEARER:
            return fail(f"client_assertion_type must be {JWT_BEARER}.")
        assertion = form.get("client_assertion") or ""
        try:
            header = jwt.get_unverified_header(assertion)
            claims = jwt.decode(assertion, options={"verify_signature": False})
        except jwt.PyJWTError:
            return fail("client_assertion is not a well-formed JWT.")
        alg = header.get("alg")
        if alg not in self.config.jwt_algorithms:
            return fail(f"Unsupported signing algorithm; use one of "
                        f"{', '.join(self.config.jwt_algorithms)}.")
        iss, sub = claims.get("iss"), claims.get("sub")
        if not iss or iss != sub:
            return fail("iss and sub must both equal the client id.")
        if form.get("client_id") and form["client_id"] != iss:
            return fail("client_id does not match the assertion issuer.")
        client = self.config.client(iss)
        if client is None or not client.public_keys:
            return fail("Unknown client or no public key registered for it.")
        kid = header.get("kid")
        keys = [k for k in client.public_keys
                if kid is None or not isinstance(k, dict) or k.get("kid") in (None, kid)]
        verified = None
        for key in keys:
            try:
                verified = jwt.decode(
                    assertion, _load_key(key), algorithms=[alg], audience=token_url,
                    options={"verify_exp": False, "verify_iat": False, "verify_nbf": False,
                             "require": ["iss", "sub", "aud", "exp", "jti"]},
                )
                break
            except jwt.InvalidAudienceError:
                return fail("aud must be the token endpoint URL.")
            except jwt.MissingRequiredClaimError as exc:
                return fail(f"The assertion lacks the required claim {exc.claim!r}.")
            except (jwt.PyJWTError, ValueError, TypeError):
                continue
        if verified is None:
            return fail("The assertion signature does not verify with any registered key.")
        now = self.config.wall_clock()
        exp = verified.get("exp")
        if not isinstance(exp, (int, float)):
            return fail("exp must be a NumericDate.")
        if exp <= now:
            return fail("The assertion has expired.")
        if exp - now > self.config.jwt_max_lifetime_seconds:
            return fail("exp must be no more than 5 minutes in the future.")
        jti = verified.get("jti")
        if not isinstance(jti, str) or not jti:
            return fail("jti must be a non-empty string.")
        with self._lock:
            self._seen_jti = {k: v for k, v in self._seen_jti.items() if v > now}
            if (iss, jti) in self._seen_jti:
                return fail("This jti was already used.")
            self._seen_jti[(iss, jti)] = float(exp)
        return client, None
