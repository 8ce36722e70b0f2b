"""athenahealth auth against the emulator: client_secret, private_key_jwt (RS384/ES384), none."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from athena_pipeline.athena.auth import (
    ClientSecretAuth,
    NoAuth,
    PrivateKeyJwtAuth,
    build_authenticator,
)
from athena_pipeline.athena.bulk import BulkExportConfig, run_export
from athena_pipeline.http import AuthError, CallRecord, HttpPolicy
from athena_pipeline.sandbox.emulator.config import ClientConfig
from athena_pipeline.settings import Settings
from tests.athena import CLIENT_ID, SECRET, athena_client, bulk_config, read_ndjson
from tests.sandbox import conftest as sandbox
from tests.sandbox.conftest import query

# the emulator fixtures of tests/sandbox, registered in this module by name
fhir_world = sandbox.fhir_world
resources_per_file = sandbox.resources_per_file
test_config = sandbox.test_config
start_emulator = sandbox.start_emulator

JWT_CLIENT = "jwt-client"
TOKEN = "/oauth2/v1/token"


def token_calls(records: list[CallRecord]) -> list[CallRecord]:
    return [r for r in records if r.path_template == TOKEN]


# --- client_secret ----------------------------------------------------------------------------------------
def test_token_is_cached_and_reused(start_emulator):
    server = start_emulator()
    records: list[CallRecord] = []
    with athena_client(server, on_call=records.append) as client:
        for _ in range(5):
            client.fhir_get("Patient", {"_count": "1"})
        assert client.auth.fetches == 1
    assert len(token_calls(records)) == 1


def test_string_expires_in_and_refresh_before_expiry(start_emulator):
    # a 3 s token sent as "3": refreshed at half its life (the 60 s margin cannot apply)
    server = start_emulator(expires_in_as_string=True, token_lifetime_seconds=3)
    with athena_client(server) as client:
        first = client.auth.token()
        assert client.auth.token() == first
        time.sleep(1.7)
        second = client.auth.token()
        assert second != first and client.auth.fetches == 2
        client.fhir_get("Patient", {"_count": "1"})  # the refreshed token works


def test_one_token_fetch_in_flight_whatever_the_thread_count(start_emulator):
    server = start_emulator(faults="slow_token=1:0.5")
    records: list[CallRecord] = []
    with athena_client(server, on_call=records.append) as client:
        tokens: list[str] = []
        barrier = threading.Barrier(16)

        def worker() -> None:
            barrier.wait()
            tokens.append(client.auth.token())

        threads = [threading.Thread(target=worker) for _ in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert len(tokens) == 16 and len(set(tokens)) == 1
    assert len(token_calls(records)) == 1


def test_token_endpoint_429_is_respected(start_emulator):
    server = start_emulator(faults="token_429=2")
    records: list[CallRecord] = []
    with athena_client(server, on_call=records.append) as client:
        t0 = time.monotonic()
        client.auth.token()
        elapsed = time.monotonic() - t0
    assert [r.status for r in token_calls(records)] == [429, 429, 200]
    assert elapsed >= 1.9  # Retry-After: 1, twice


def test_the_per_minute_token_limit_is_respected(start_emulator):
    # the emulator's own limit (athena: 5/min in preview): the 3rd request in a minute is 429
    # until the minute ends; the client waits (Retry-After clamped to the policy's maximum)
    clock = {"t": 1_800_000_000.0 - 0.5}  # half a second before a minute boundary
    server = start_emulator(token_rate_limit_per_minute=2, wall_clock=lambda: clock["t"])
    records: list[CallRecord] = []
    with athena_client(server, on_call=records.append) as client:
        client.auth.token()
        client.auth.invalidate({"Authorization": f"Bearer {client.auth.token()}"})
        client.auth.token()
        client.auth.invalidate({"Authorization": f"Bearer {client.auth.token()}"})

        def advance() -> None:
            time.sleep(0.3)
            clock["t"] += 1.0  # the minute ends

        threading.Thread(target=advance).start()
        client.auth.token()
    assert [r.status for r in token_calls(records)][:3] == [200, 200, 429]
    assert token_calls(records)[-1].status == 200


def test_wrong_secret_is_an_auth_error_without_the_secret(start_emulator):
    server = start_emulator()
    records: list[CallRecord] = []
    with athena_client(server, client_secret="very-wrong-secret-123",
                       on_call=records.append) as client, pytest.raises(AuthError) as info:
        client.fhir_get("Patient")
    exc = info.value
    assert exc.transient is False and exc.status == 401
    assert "invalid_client" in str(exc) and TOKEN in str(exc)
    assert "very-wrong-secret-123" not in str(exc) + repr(exc) + repr(client.auth)
    assert len(token_calls(records)) == 1  # a refused login is not retried


def test_invalid_scope_is_an_auth_error(start_emulator):
    server = start_emulator()
    with athena_client(server, scopes="system/Patient.write") as client, pytest.raises(AuthError) as info:
        client.auth.token()
    assert info.value.status == 400 and "invalid_scope" in str(info.value)


# --- private_key_jwt ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("keys")
    out = {}
    for name, key in (("rsa", rsa.generate_private_key(public_exponent=65537, key_size=2048)),
                      ("ec", ec.generate_private_key(ec.SECP384R1())),
                      ("ec256", ec.generate_private_key(ec.SECP256R1()))):
        path = root / f"{name}.pem"
        path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
        out[name] = path
        out[f"{name}_public"] = key.public_key()
    return out


@pytest.fixture
def jwt_server(start_emulator, keys):
    rsa_pem = keys["rsa_public"].public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    ec_jwk = jwt.algorithms.ECAlgorithm.to_jwk(keys["ec_public"], as_dict=True)
    ec_jwk["kid"] = "ec-1"
    clients = (ClientConfig(CLIENT_ID, secret=SECRET),
               ClientConfig(JWT_CLIENT, public_keys=(rsa_pem, ec_jwk),
                            allowed_scopes=("system/*.read",)))
    return start_emulator(clients=clients)


@pytest.mark.parametrize("key,kid,alg", [("rsa", "rsa-1", "RS384"), ("ec", "ec-1", "ES384")])
def test_private_key_jwt_assertion_claims(jwt_server, keys, key, kid, alg):
    with HttpPolicy("athena", timeout=5) as policy:
        auth = build_authenticator("private_key_jwt", policy=policy, token_url=jwt_server.token_url,
                                   client_id=JWT_CLIENT, private_key_path=keys[key], key_id=kid,
                                   scopes="system/Patient.read")
        assert isinstance(auth, PrivateKeyJwtAuth) and auth.algorithm == alg
        a1, a2 = auth.assertion(), auth.assertion()
    header = jwt.get_unverified_header(a1)
    assert header["alg"] == alg and header["kid"] == kid
    claims = jwt.decode(a1, keys[f"{key}_public"], algorithms=[alg], audience=jwt_server.token_url)
    assert claims["iss"] == claims["sub"] == JWT_CLIENT
    assert claims["aud"] == jwt_server.token_url
    assert 0 < claims["exp"] - time.time() <= 300
    assert claims["jti"] != jwt.decode(a2, options={"verify_signature": False})["jti"]


@pytest.mark.parametrize("key,kid", [("rsa", "rsa-1"), ("ec", "ec-1")])
def test_private_key_jwt_bulk_export_against_the_emulator(jwt_server, keys, key, kid, tmp_path,
                                                          fhir_world):
    config = bulk_config(jwt_server, tmp_path, auth="private_key_jwt", client_id=JWT_CLIENT,
                         client_secret=None, private_key_path=keys[key], key_id=kid,
                         scopes="system/Patient.read system/Encounter.read")
    records: list[CallRecord] = []
    result = run_export(config, types=["Patient", "Encounter"], on_call=records.append)
    expected = dict(query(fhir_world, "SELECT resource_type, count(*) FROM fhir.resources "
                          "WHERE resource_type IN ('Patient','Encounter') GROUP BY 1"))
    assert result.counts == expected
    assert [r.status for r in token_calls(records)] == [200]
    # a second token (new jti) is accepted too: the emulator rejects a reused jti
    with athena_client(jwt_server, auth_mode="private_key_jwt", client_id=JWT_CLIENT,
                       client_secret=None, private_key_path=keys[key], key_id=kid,
                       scopes="system/Patient.read") as client:
        client.auth.token()
        client.auth.invalidate(client.auth.auth_headers())
        client.auth.token()
        assert client.auth.fetches == 2
        assert client.fhir_get("Patient", {"_count": "1"})["resourceType"] == "Bundle"
    patients = read_ndjson(result.export_dir / "Patient.000.ndjson")
    assert all(p["resourceType"] == "Patient" for p in patients)


def test_private_key_jwt_rejected_key_is_an_auth_error(jwt_server, keys):
    # P-256 signs ES256, which the emulator (like SMART) does not accept
    with athena_client(jwt_server, auth_mode="private_key_jwt", client_id=JWT_CLIENT,
                       client_secret=None, private_key_path=keys["ec256"],
                       scopes="system/Patient.read") as client:
        assert client.auth.algorithm == "ES256"
        with pytest.raises(AuthError) as info:
            client.auth.token()
    assert info.value.status == 400 and "invalid_client" in str(info.value)


# --- none ----------------------------------------------------------------------------------------------------
def test_none_auth_sends_no_credentials(start_emulator):
    # The emulator has no open mode: every data endpoint needs a bearer token. So "none" is
    # shown working on its anonymous endpoints, and failing loudly (without a token request)
    # on a protected one.
    server = start_emulator()
    records: list[CallRecord] = []
    with athena_client(server, auth_mode="none", on_call=records.append) as client:
        assert isinstance(client.auth, NoAuth)
        assert client.fhir_get("metadata")["resourceType"] == "CapabilityStatement"
        assert "token_endpoint" in client.fhir_get(".well-known/smart-configuration")
        with pytest.raises(AuthError) as info:
            client.fhir_get("Patient")
    assert info.value.status == 401 and info.value.transient is False
    assert not token_calls(records)


# --- configuration -----------------------------------------------------------------------------------------
def test_secrets_stay_out_of_reprs(tmp_path):
    settings = Settings(athena_client_secret="s3cr3t-from-env", landing_dir=tmp_path)
    config = BulkExportConfig.from_settings(settings)
    assert config.client_secret == "s3cr3t-from-env"
    assert "s3cr3t-from-env" not in repr(config)
    with HttpPolicy("athena", timeout=5) as policy:
        auth = ClientSecretAuth("http://127.0.0.1:9/oauth2/v1/token", "cid", "s3cr3t-from-env",
                                scopes=None, policy=policy)
        assert "s3cr3t-from-env" not in repr(auth)
    assert config.group_id == "a-1.c-195900" and config.landing_dir == Path(tmp_path)
    with pytest.raises(ValueError):
        build_authenticator("kerberos", policy=None)  # type: ignore[arg-type]
