"""OAuth token endpoint, bearer checks, scopes, quotas and request logging of the athena emulator."""

from __future__ import annotations

import logging
import time
import uuid

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from athena_pipeline.sandbox.emulator.config import (
    DEFAULT_ALLOWED_SCOPES,
    ClientConfig,
    EmulatorConfig,
    QuotaHeaderNames,
)
from tests.sandbox.conftest import get_token, practice_of, query

JWT_CLIENT = "jwt-client"
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


class FakeClock:
    """A wall clock the test moves by hand (epoch seconds)."""

    def __init__(self, start: float) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture(scope="module")
def keys():
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ec_key = ec.generate_private_key(ec.SECP384R1())
    other_rsa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    rsa_pem = rsa_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    ec_jwk = jwt.algorithms.ECAlgorithm.to_jwk(ec_key.public_key(), as_dict=True)
    ec_jwk["kid"] = "ec-1"
    return {"rsa": rsa_key, "ec": ec_key, "other": other_rsa, "rsa_pem": rsa_pem, "ec_jwk": ec_jwk}


@pytest.fixture
def jwt_server(start_emulator, keys):
    clients = (
        ClientConfig("sandbox-client", secret="sandbox-secret"),
        ClientConfig(JWT_CLIENT, public_keys=(keys["rsa_pem"], keys["ec_jwk"]),
                     allowed_scopes=("system/*.read",)),
    )
    return start_emulator(clients=clients)


def assertion(key, alg: str, aud: str, *, iss: str = JWT_CLIENT, sub: str | None = None,
              exp_in: float = 240, jti: str | None = None, kid: str | None = None,
              drop: tuple[str, ...] = ()) -> str:
    claims = {"iss": iss, "sub": sub or iss, "aud": aud, "exp": int(time.time() + exp_in),
              "jti": jti or str(uuid.uuid4())}
    for name in drop:
        claims.pop(name)
    headers = {"kid": kid} if kid else None
    return jwt.encode(claims, key, algorithm=alg, headers=headers)


def jwt_form(token: str, scope: str = "system/Patient.read system/Encounter.read") -> dict:
    return {"grant_type": "client_credentials", "scope": scope,
            "client_assertion_type": ASSERTION_TYPE, "client_assertion": token}


# --- client_credentials with a secret ------------------------------------------------------------
def test_basic_grant_returns_a_bearer_token(emulator):
    r = httpx.post(emulator.token_url, auth=("sandbox-client", "sandbox-secret"),
                   data={"grant_type": "client_credentials",
                         "scope": "athena/service/Athenanet.MDP.* system/Patient.read"})
    assert r.status_code == 200
    body = r.json()
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 3600
    assert body["scope"] == "athena/service/Athenanet.MDP.* system/Patient.read"
    assert len(body["access_token"]) >= 32
    assert r.headers["cache-control"] == "no-store"


def test_no_scope_requested_grants_the_clients_scopes(emulator):
    r = httpx.post(emulator.token_url, auth=("sandbox-client", "sandbox-secret"),
                   data={"grant_type": "client_credentials"})
    assert r.status_code == 200
    assert set(r.json()["scope"].split()) == set(DEFAULT_ALLOWED_SCOPES)


def test_expires_in_as_string_knob_and_lifetime(start_emulator):
    server = start_emulator(expires_in_as_string=True, token_lifetime_seconds=120)
    r = httpx.post(server.token_url, auth=("sandbox-client", "sandbox-secret"),
                   data={"grant_type": "client_credentials"})
    assert r.json()["expires_in"] == "120"


def test_client_secret_post_is_accepted(emulator):
    r = httpx.post(emulator.token_url, data={"grant_type": "client_credentials",
                                             "client_id": "sandbox-client",
                                             "client_secret": "sandbox-secret"})
    assert r.status_code == 200


@pytest.mark.parametrize("user,password", [("sandbox-client", "wrong"), ("nobody", "sandbox-secret")])
def test_bad_basic_credentials_are_401_invalid_client(emulator, user, password):
    r = httpx.post(emulator.token_url, auth=(user, password), data={"grant_type": "client_credentials"})
    assert r.status_code == 401
    assert r.json()["error"] == "invalid_client"
    assert "error_description" in r.json()
    assert r.headers["www-authenticate"].startswith("Basic")
    assert password not in r.text


def test_request_errors(emulator):
    auth = ("sandbox-client", "sandbox-secret")
    r = httpx.post(emulator.token_url, auth=auth, data={"scope": "system/*.read"})
    assert (r.status_code, r.json()["error"]) == (400, "invalid_request")
    r = httpx.post(emulator.token_url, auth=auth, data={"grant_type": "password"})
    assert (r.status_code, r.json()["error"]) == (400, "unsupported_grant_type")
    r = httpx.post(emulator.token_url, data={"grant_type": "client_credentials"})
    assert (r.status_code, r.json()["error"]) == (401, "invalid_client")
    r = httpx.post(emulator.token_url, auth=auth, json={"grant_type": "client_credentials"})
    assert (r.status_code, r.json()["error"]) == (400, "invalid_request")


@pytest.mark.parametrize("scope", ["system/Patient.write", "user/*.read", "system/Subscription.write"])
def test_scopes_the_client_may_not_have_are_invalid_scope(emulator, scope):
    r = httpx.post(emulator.token_url, auth=("sandbox-client", "sandbox-secret"),
                   data={"grant_type": "client_credentials", "scope": scope})
    assert (r.status_code, r.json()["error"]) == (400, "invalid_scope")


def test_each_environment_rejects_the_others_client(start_emulator):
    clients = (ClientConfig("preview-only", secret="s3", environments=("preview",)),)
    prod = start_emulator(clients=clients, environment="production")
    preview = start_emulator(clients=clients, environment="preview")
    form = {"grant_type": "client_credentials"}
    assert httpx.post(prod.token_url, auth=("preview-only", "s3"), data=form).status_code == 401
    r = httpx.post(preview.token_url, auth=("preview-only", "s3"), data=form)
    assert r.status_code == 200
    # and a token from one emulator means nothing to the other
    headers = {"Authorization": f"Bearer {r.json()['access_token']}"}
    assert httpx.get(f"{prod.fhir_base}/Patient", headers=headers).status_code == 401


# --- private_key_jwt ---------------------------------------------------------------------------------
@pytest.mark.parametrize("alg,key_name,kid", [("RS384", "rsa", None), ("ES384", "ec", "ec-1"),
                                              ("ES384", "ec", None)])
def test_jwt_assertion_grants_a_token(jwt_server, keys, alg, key_name, kid):
    token = assertion(keys[key_name], alg, jwt_server.token_url, kid=kid)
    r = httpx.post(jwt_server.token_url, data=jwt_form(token))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["scope"] == "system/Patient.read system/Encounter.read"
    pid = query(jwt_server.emulator.world_dir, "SELECT id FROM fhir.resources WHERE resource_type='Patient' LIMIT 1")[0][0]
    read = httpx.get(f"{jwt_server.fhir_base}/Patient/{pid}",
                     headers={"Authorization": f"Bearer {body['access_token']}"})
    assert read.status_code == 200


REJECTIONS = {
    "wrong aud": {"aud": "http://127.0.0.1:1/oauth2/v1/token"},
    "missing exp": {"drop": ("exp",)},
    "missing jti": {"drop": ("jti",)},
    "expired": {"exp_in": -5},
    "exp too far ahead": {"exp_in": 400},
    "iss differs from sub": {"sub": "someone-else"},
    "unknown client": {"iss": "stranger"},
    "client without keys": {"iss": "sandbox-client"},
    "wrong key": {"key": "other"},
    "HS256": {"alg": "HS256"},
    "RS256 not allowed": {"alg": "RS256"},
}


@pytest.mark.parametrize("case", sorted(REJECTIONS))
def test_jwt_assertion_rejections(jwt_server, keys, case):
    opts = dict(REJECTIONS[case])
    alg = opts.pop("alg", "RS384")
    key = keys[opts.pop("key", "rsa")]
    if alg == "HS256":
        key = "a-shared-secret-that-is-long-enough-for-hs256"
    aud = opts.pop("aud", jwt_server.token_url)
    token = assertion(key, alg, aud, **opts)
    r = httpx.post(jwt_server.token_url, data=jwt_form(token))
    assert r.status_code == 400, (case, r.text)
    assert r.json()["error"] == "invalid_client"
    assert token not in r.text


def test_jwt_jti_cannot_be_reused(jwt_server, keys):
    token = assertion(keys["rsa"], "RS384", jwt_server.token_url, jti="once")
    assert httpx.post(jwt_server.token_url, data=jwt_form(token)).status_code == 200
    again = assertion(keys["rsa"], "RS384", jwt_server.token_url, jti="once")
    r = httpx.post(jwt_server.token_url, data=jwt_form(again))
    assert (r.status_code, r.json()["error"]) == (400, "invalid_client")
    assert "jti" in r.json()["error_description"]


def test_jwt_form_checks(jwt_server, keys):
    token = assertion(keys["rsa"], "RS384", jwt_server.token_url)
    bad_type = {**jwt_form(token), "client_assertion_type": "urn:example:other"}
    assert httpx.post(jwt_server.token_url, data=bad_type).status_code == 400
    mismatched = {**jwt_form(token), "client_id": "sandbox-client"}
    assert httpx.post(jwt_server.token_url, data=mismatched).status_code == 400
    garbage = jwt_form("not.a.jwt")
    assert httpx.post(jwt_server.token_url, data=garbage).json()["error"] == "invalid_client"


# --- token rate limit ------------------------------------------------------------------------------
def test_token_rate_limit_blocks_until_the_minute_ends(start_emulator):
    clock = FakeClock(1_800_000_000.0 + 10)  # 10 s into a clock minute
    server = start_emulator(token_rate_limit_per_minute=3, wall_clock=clock)
    form = {"grant_type": "client_credentials"}
    auth = ("sandbox-client", "sandbox-secret")
    for remaining in (2, 1, 0):
        r = httpx.post(server.token_url, auth=auth, data=form)
        assert r.status_code == 200
        assert r.headers["x-ratelimit-remaining-minute"] == str(remaining)
        assert r.headers["x-ratelimit-limit-minute"] == "3"
    r = httpx.post(server.token_url, auth=auth, data=form)
    assert r.status_code == 429
    assert r.headers["retry-after"] == "50"
    clock.advance(49)  # still the same minute: still blocked, even with valid credentials
    assert httpx.post(server.token_url, auth=auth, data=form).status_code == 429
    clock.advance(2)  # the next minute
    assert httpx.post(server.token_url, auth=auth, data=form).status_code == 200


def test_preview_allows_five_tokens_a_minute(start_emulator):
    assert EmulatorConfig(environment="preview").token_rate_limit == 5
    assert EmulatorConfig(environment="production").token_rate_limit == 50
    clock = FakeClock(1_800_000_000.0)
    server = start_emulator(environment="preview", token_rate_limit_per_minute=None, wall_clock=clock)
    codes = [httpx.post(server.token_url, auth=("sandbox-client", "sandbox-secret"),
                        data={"grant_type": "client_credentials"}).status_code for _ in range(6)]
    assert codes == [200] * 5 + [429]


# --- bearer checks and scopes ------------------------------------------------------------------------
def some_id(server, rtype: str) -> str:
    return query(server.emulator.world_dir,
                 "SELECT min(id) FROM fhir.resources WHERE resource_type = ?", [rtype])[0][0]


def test_missing_or_unknown_token_is_401(emulator, client):
    pid = some_id(emulator, "Patient")
    for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": "Basic abc"}):
        r = client.get(f"/fhir/r4/Patient/{pid}", headers=headers)
        assert r.status_code == 401
        assert r.headers["content-type"].startswith("application/fhir+json")
        assert r.json()["resourceType"] == "OperationOutcome"
        assert r.headers["www-authenticate"].startswith("Bearer")
    r = client.get(f"/v1/{practice_of(emulator)}/ping")
    assert r.status_code == 401
    assert r.json() == {"error": "Incorrect permissions.", "detailedmessage": "Bad auth."}
    for path in ("/fhir/r4/Patient", f"/fhir/r4/Group/a-1.c-{practice_of(emulator)}/$export", "/bulkstatus/x",
                 "/bulkfiles/x/y"):
        assert client.get(path).status_code == 401, path


def test_expired_token_is_401(start_emulator):
    clock = FakeClock(1_800_000_000.0)
    server = start_emulator(token_lifetime_seconds=60, wall_clock=clock)
    headers = {"Authorization": f"Bearer {get_token(server)}"}
    pid = some_id(server, "Patient")
    assert httpx.get(f"{server.fhir_base}/Patient/{pid}", headers=headers).status_code == 200
    clock.advance(61)
    r = httpx.get(f"{server.fhir_base}/Patient/{pid}", headers=headers)
    assert r.status_code == 401
    assert "expired" in r.json()["issue"][0]["diagnostics"]


def test_scopes_limit_what_a_token_reads(emulator, client):
    headers = {"Authorization": f"Bearer {get_token(emulator, 'system/Patient.read')}"}
    assert client.get(f"/fhir/r4/Patient/{some_id(emulator, 'Patient')}", headers=headers).status_code == 200
    for path in (f"/fhir/r4/Encounter/{some_id(emulator, 'Encounter')}", "/fhir/r4/Encounter"):
        r = client.get(path, headers=headers)
        assert r.status_code == 403
        assert r.json()["issue"][0]["code"] == "forbidden"
    export = client.get(f"/fhir/r4/Group/a-1.c-{practice_of(emulator)}/$export", params={"_type": "Encounter"},
                        headers={**headers, "Prefer": "respond-async"})
    assert export.status_code == 403
    assert client.get(f"/v1/{practice_of(emulator)}/ping", headers=headers).status_code == 403


# --- quotas, request ids, logs ---------------------------------------------------------------------------
def test_quota_headers_on_every_response(emulator, client, auth):
    ping = f"/v1/{practice_of(emulator)}/ping"
    names = ["x-ratelimit-limit-day", "x-ratelimit-remaining-day", "x-ratelimit-reset-day",
             "x-ratelimit-limit-minute", "x-ratelimit-remaining-minute"]
    responses = [
        client.post("/oauth2/v1/token", auth=("sandbox-client", "x"), data={"grant_type": "client_credentials"}),
        client.get("/fhir/r4/metadata"),
        client.get(ping, headers=auth),
        client.get("/fhir/r4/Patient", headers=auth),
        client.get("/fhir/r4/Patient/nope", headers=auth),
        client.get("/no/such/path"),
    ]
    for r in responses:
        assert all(n in r.headers for n in names), (r.request.url, r.headers)
        assert 0 < int(r.headers["x-ratelimit-reset-day"]) <= 86400
    before = int(client.get(ping, headers=auth).headers["x-ratelimit-remaining-day"])
    after = int(client.get(ping, headers=auth).headers["x-ratelimit-remaining-day"])
    assert after == before - 1


def test_quota_header_names_are_configurable(start_emulator):
    names = QuotaHeaderNames(limit_day="X-Quota-Day", remaining_day="X-Quota-Day-Left",
                             reset_day="X-Quota-Day-Reset", limit_minute="X-Token-Limit",
                             remaining_minute="X-Token-Left")
    server = start_emulator(quota_headers=names)
    r = httpx.post(server.token_url, auth=("sandbox-client", "sandbox-secret"),
                   data={"grant_type": "client_credentials"})
    assert r.headers["x-token-limit"] == "1000" and r.headers["x-token-left"] == "999"
    assert {"x-quota-day", "x-quota-day-left", "x-quota-day-reset"} <= set(r.headers)
    assert "x-ratelimit-limit-day" not in r.headers


def test_daily_quota_and_per_second_limit(start_emulator):
    clock = FakeClock(1_800_000_000.0)
    server = start_emulator(daily_api_limit=3, wall_clock=clock)
    headers = {"Authorization": f"Bearer {get_token(server)}"}
    ping = f"{server.base_url}/v1/{practice_of(server)}/ping"
    codes = [httpx.get(ping, headers=headers).status_code for _ in range(4)]
    assert codes == [200, 200, 200, 429]
    clock.advance(86400)  # past midnight GMT (the old token has expired by now)
    headers = {"Authorization": f"Bearer {get_token(server)}"}
    assert httpx.get(ping, headers=headers).status_code == 200

    fast = start_emulator(per_second_limit=2, wall_clock=FakeClock(1_800_000_000.0))
    headers = {"Authorization": f"Bearer {get_token(fast)}"}
    codes = [httpx.get(f"{fast.fhir_base}/Patient", headers=headers).status_code for _ in range(3)]
    assert codes == [200, 200, 429]


def test_request_id_is_echoed_or_generated(client):
    r = client.get("/fhir/r4/metadata", headers={"X-Request-Id": "abc-123"})
    assert r.headers["x-request-id"] == "abc-123"
    generated = client.get("/fhir/r4/metadata").headers["x-request-id"]
    assert uuid.UUID(generated)


def test_requests_are_logged_by_template_without_ids_or_tokens(emulator, client, auth, caplog):
    pid = some_id(emulator, "Patient")
    with caplog.at_level(logging.INFO, logger="athena_pipeline.sandbox.athena"):
        client.get(f"/fhir/r4/Patient/{pid}", headers=auth)
        client.get("/fhir/r4/Patient", params={"patient": pid}, headers=auth)
        client.post("/oauth2/v1/token", auth=("sandbox-client", "sandbox-secret"),
                    data={"grant_type": "client_credentials"})
        deadline = time.monotonic() + 5  # the server logs just after the response is sent
        while time.monotonic() < deadline:
            lines = [r.getMessage() for r in caplog.records if r.name == "athena_pipeline.sandbox.athena"]
            if len(lines) >= 3:
                break
            time.sleep(0.02)
    assert any(line.startswith("GET /fhir/r4/{type}/{id} 200 ") and line.endswith("ms") for line in lines)
    assert any(line.startswith("GET /fhir/r4/{type} 200 ") for line in lines)
    assert any(line.startswith("POST /oauth2/v1/token 200 ") for line in lines)
    token = auth["Authorization"].split()[1]
    for line in lines:
        assert pid not in line and token not in line and "sandbox-secret" not in line
