"""Caspio's OAuth 2 token endpoint (client credentials and refresh tokens) and bearer checks.

What the spec fixes (``caspio-api.md`` §2): ``POST /oauth/token``, form-encoded, client
credentials in the body *or* HTTP Basic; the answer
``{"access_token","token_type":"bearer","expires_in":86399,"refresh_token"}``; a refresh grant;
new tokens never revoke old ones; refresh tokens live a year (60 days unused), at most 1,000
per account. Error bodies of the token endpoint are not documented, so they follow RFC 6749
(``invalid_client`` 401, ``invalid_grant``/``invalid_request``/``unsupported_grant_type`` 400).

Tokens are persisted (hashed) in the store, so a client's token keeps working across an
emulator restart, as it does across Caspio deployments. Only SHA-256 hashes are stored.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import unquote

from athena_pipeline.sandbox.caspio.config import CaspioConfig
from athena_pipeline.sandbox.caspio.store import CaspioStore


@dataclass
class _Token:
    kind: str
    client_id: str
    issued_at: float
    expires_at: float
    last_used: float
    revoked: bool = False


@dataclass(frozen=True)
class TokenOutcome:
    status: int
    body: dict
    client_id: str | None = None
    headers: dict | None = None


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _oauth_error(status: int, error: str, description: str, **headers: str) -> TokenOutcome:
    return TokenOutcome(status, {"error": error, "error_description": description},
                        headers=headers or None)


class TokenService:
    """Issues, refreshes, checks and revokes tokens for one emulated account."""

    def __init__(self, store: CaspioStore, config: Callable[[], CaspioConfig]) -> None:
        self.store = store
        self._config = config
        self._lock = threading.Lock()
        self._tokens: dict[str, _Token] = {}
        for h, kind, client, issued, expires, used, revoked in store.execute(
                "SELECT token_hash, kind, client_id, issued_at, expires_at, last_used, revoked "
                "FROM caspio_tokens"):
            self._tokens[h] = _Token(kind, client, issued, expires, used, bool(revoked))

    @property
    def config(self) -> CaspioConfig:
        return self._config()

    def _now(self) -> float:
        return self.config.wall_clock()

    def _save(self, h: str, t: _Token) -> None:
        self.store.execute(
            "INSERT INTO caspio_tokens (token_hash, kind, client_id, issued_at, expires_at, "
            "last_used, revoked) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (token_hash) DO UPDATE "
            "SET last_used = excluded.last_used, revoked = excluded.revoked",
            (h, t.kind, t.client_id, t.issued_at, t.expires_at, t.last_used, int(t.revoked)))

    # --- issuing ----------------------------------------------------------------------------
    def _client(self, form: dict[str, str], authorization: str | None
                ) -> tuple[str | None, TokenOutcome | None]:
        """The authenticated client id, or the error to answer."""
        basic = None
        if authorization and authorization[:6].lower() == "basic ":
            try:
                raw = base64.b64decode(authorization[6:].strip(), validate=True).decode()
            except (binascii.Error, UnicodeDecodeError):
                return None, _oauth_error(401, "invalid_client", "Malformed Basic credentials.",
                                          **{"WWW-Authenticate": 'Basic realm="caspio"'})
            client_id, sep, secret = raw.partition(":")
            if not sep:
                return None, _oauth_error(401, "invalid_client", "Malformed Basic credentials.",
                                          **{"WWW-Authenticate": 'Basic realm="caspio"'})
            basic = (unquote(client_id), unquote(secret))
        client_id, secret = basic or (form.get("client_id"), form.get("client_secret"))
        if not client_id or secret is None:
            return None, _oauth_error(401, "invalid_client", "Client authentication is required.")
        expected = self.config.client_secret(client_id)
        if expected is None or not hmac.compare_digest(expected.encode(), secret.encode()):
            headers = {"WWW-Authenticate": 'Basic realm="caspio"'} if basic else {}
            return None, _oauth_error(401, "invalid_client", "Client authentication failed.", **headers)
        return client_id, None

    def _issue_access(self, client_id: str) -> tuple[str, int]:
        now = self._now()
        lifetime = self.config.token_lifetime_seconds
        token = secrets.token_urlsafe(48)
        t = _Token("access", client_id, now, now + lifetime, now)
        with self._lock:
            self._tokens[_hash(token)] = t
        self._save(_hash(token), t)
        return token, int(lifetime)

    def _issue_refresh(self, client_id: str) -> str:
        now = self._now()
        cfg = self.config
        token = secrets.token_urlsafe(48)
        t = _Token("refresh", client_id, now, now + cfg.refresh_token_lifetime_seconds, now)
        with self._lock:
            self._tokens[_hash(token)] = t
            live = sorted(((v.issued_at, h) for h, v in self._tokens.items()
                           if v.kind == "refresh" and not v.revoked and self._refresh_ok(v, now)))
            excess = live[:max(0, len(live) - cfg.max_refresh_tokens)]
            for _, h in excess:  # the account's oldest refresh tokens are revoked
                self._tokens[h].revoked = True
        self._save(_hash(token), t)
        for _, h in excess:
            self._save(h, self._tokens[h])
        return token

    def _refresh_ok(self, t: _Token, now: float) -> bool:
        return (not t.revoked and now < t.expires_at
                and now - t.last_used < self.config.refresh_token_idle_seconds)

    def token_request(self, form: dict[str, str], authorization: str | None) -> TokenOutcome:
        grant = form.get("grant_type")
        if not grant:
            return _oauth_error(400, "invalid_request", "grant_type is required.")
        if grant not in ("client_credentials", "refresh_token"):
            return _oauth_error(400, "unsupported_grant_type",
                                "Use client_credentials or refresh_token.")
        client_id, error = self._client(form, authorization)
        if error is not None:
            return error
        assert client_id is not None
        if grant == "client_credentials":
            access, lifetime = self._issue_access(client_id)
            refresh = self._issue_refresh(client_id)
        else:
            refresh = form.get("refresh_token") or ""
            if not refresh:
                return _oauth_error(400, "invalid_request", "refresh_token is required.")
            h, now = _hash(refresh), self._now()
            with self._lock:
                t = self._tokens.get(h)
                ok = (t is not None and t.kind == "refresh" and t.client_id == client_id
                      and self._refresh_ok(t, now))
                if ok:
                    t.last_used = now
            if not ok:
                return _oauth_error(400, "invalid_grant",
                                    "The refresh token is invalid, expired or revoked.")
            self._save(h, t)
            access, lifetime = self._issue_access(client_id)
        return TokenOutcome(200, {"access_token": access, "token_type": "bearer",
                                  "expires_in": lifetime, "refresh_token": refresh},
                            client_id=client_id)

    # --- checking ---------------------------------------------------------------------------
    def check(self, authorization: str | None) -> tuple[str | None, str]:
        """(client id, "") for a valid bearer token, else (None, reason): missing, invalid,
        expired (stale tokens: expired or revoked)."""
        if not authorization:
            return None, "missing"
        scheme, _, token = authorization.strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return None, "missing"
        with self._lock:
            t = self._tokens.get(_hash(token.strip()))
            if t is None or t.kind != "access":
                return None, "invalid"
            if t.revoked or self._now() >= t.expires_at:
                return None, "expired"
            return t.client_id, ""

    def revoke(self, authorization: str | None) -> None:
        """Revoke the bearer token in ``authorization`` (the ``expire_token`` fault)."""
        token = (authorization or "").strip().partition(" ")[2].strip()
        h = _hash(token)
        with self._lock:
            t = self._tokens.get(h)
            if t is None:
                return
            t.revoked = True
        self._save(h, t)
