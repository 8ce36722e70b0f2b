"""Using your own bulk client against the emulator: open mode (no auth at all) and external
SMART Backend Services clients registered from a PEM or JWKS file (``--jwt-client``)."""

from __future__ import annotations

import json
import time
import uuid

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from athena_pipeline.sandbox.emulator.auth import load_public_keys, public_jwk
from athena_pipeline.sandbox.emulator.config import EmulatorConfig
from athena_pipeline.sandbox.server import build_config
from athena_pipeline.sandbox.world import World
from tests.sandbox.conftest import get_token, practice_of, query
from tests.sandbox.test_emulator_v1 import build_dataview_world

KICKOFF = {"Prefer": "respond-async", "Accept": "application/fhir+json"}
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


def run_export(server, headers: dict[str, str], types: str = "Patient,Encounter") -> dict:
    """Kick off, poll until done and return the manifest, sending ``headers`` every time."""
    r = httpx.get(f"{server.fhir_base}/Group/a-1.c-{practice_of(server)}/$export",
                  params={"_type": types}, headers={**KICKOFF, **headers})
    assert r.status_code == 202, r.text
    status_url = r.headers["content-location"]
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        poll = httpx.get(status_url, headers=headers)
        if poll.status_code == 200:
            return poll.json()
        assert poll.status_code == 202, poll.text
        time.sleep(0.05)
    raise AssertionError("export did not finish")


def some_id(server, rtype: str) -> str:
    return query(server.emulator.world_dir,
                 "SELECT min(id) FROM fhir.resources WHERE resource_type = ?", [rtype])[0][0]


# --- open mode ------------------------------------------------------------------------------------------
@pytest.fixture
def open_server(start_emulator):
    return start_emulator(auth_required=False)


def test_open_mode_exports_and_downloads_without_any_token(open_server):
    manifest = run_export(open_server, {})
    assert manifest["requiresAccessToken"] is False
    assert {o["type"] for o in manifest["output"]} == {"Patient", "Encounter"}
    for entry in manifest["output"]:
        r = httpx.get(entry["url"])  # no Authorization header at all
        assert r.status_code == 200, r.text
        assert r.headers["content-type"].startswith("application/fhir+ndjson")
        lines = r.text.splitlines()
        assert len(lines) == entry["count"]
        assert all(json.loads(line)["resourceType"] == entry["type"] for line in lines)


def test_open_mode_reads_fhir_and_ignores_bad_tokens(open_server):
    pid = some_id(open_server, "Patient")
    for headers in ({}, {"Authorization": "Bearer not-a-token"}, {"Authorization": "Basic Zm9vOmJhcg=="}):
        assert httpx.get(f"{open_server.fhir_base}/Patient/{pid}", headers=headers).status_code == 200
        r = httpx.get(f"{open_server.fhir_base}/Encounter", params={"_count": 2}, headers=headers)
        assert r.status_code == 200 and r.json()["resourceType"] == "Bundle"
        assert "x-ratelimit-remaining-day" in r.headers


def test_open_mode_still_issues_tokens_and_serves_discovery(open_server):
    token = get_token(open_server)  # clients that always fetch a token keep working
    smart = httpx.get(f"{open_server.fhir_base}/.well-known/smart-configuration")
    assert smart.status_code == 200 and smart.json()["token_endpoint"] == open_server.token_url
    assert httpx.get(f"{open_server.fhir_base}/metadata").json()["resourceType"] == "CapabilityStatement"
    # a job kicked off with a token may be polled and downloaded without one (and vice versa)
    manifest = run_export(open_server, {"Authorization": f"Bearer {token}"}, types="Patient")
    assert manifest["requiresAccessToken"] is False
    assert httpx.get(manifest["output"][0]["url"]).status_code == 200


def test_tokens_are_still_required_by_default(emulator):
    manifest = run_export(emulator, {"Authorization": f"Bearer {get_token(emulator)}"}, types="Patient")
    assert manifest["requiresAccessToken"] is True
    assert httpx.get(manifest["output"][0]["url"]).status_code == 401
    assert httpx.get(f"{emulator.fhir_base}/Patient").status_code == 401


def test_open_mode_serves_v1_without_a_token(start_emulator, tmp_path_factory):
    world = build_dataview_world(tmp_path_factory.mktemp("open_v1_world"), patients=60)
    server = start_emulator(world=world, auth_required=False)
    practice = World.load(world).practice_id
    assert httpx.get(f"{server.base_url}/v1/{practice}/ping").json() == {"pong": "true"}
    body = httpx.get(f"{server.base_url}/v1/{practice}/patients", params={"limit": 5}).json()
    assert body["totalcount"] > 5 and len(body["patients"]) == 5
    assert httpx.get(f"{server.base_url}/v1/{practice + 1}/patients").status_code == 404


# --- external SMART Backend Services clients ---------------------------------------------------------------
@pytest.fixture(scope="module")
def rsa_key():
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def assertion(key, alg: str, token_url: str, client_id: str, kid: str | None = None) -> str:
    claims = {"iss": client_id, "sub": client_id, "aud": token_url, "exp": int(time.time()) + 240,
              "jti": str(uuid.uuid4())}
    return jwt.encode(claims, key, algorithm=alg, headers={"kid": kid} if kid else None)


def jwt_token(server, key, alg: str, client_id: str, kid: str | None = None) -> httpx.Response:
    return httpx.post(server.token_url, data={
        "grant_type": "client_credentials", "scope": "system/*.read",
        "client_assertion_type": ASSERTION_TYPE,
        "client_assertion": assertion(key, alg, server.token_url, client_id, kid)})


def test_a_bulk_client_with_its_own_jwks_key_pair_can_export(start_emulator, rsa_key, tmp_path):
    """Like the SMART bulk-data-client: one JWKS file holding the key pair; the emulator keeps
    only the public half and the client authenticates with private_key_jwt (RS384)."""
    private_jwk = jwt.algorithms.RSAAlgorithm.to_jwk(rsa_key, as_dict=True)
    private_jwk.update(kid="my-key-1", alg="RS384", key_ops=["sign"])
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": [private_jwk]}))
    keys = load_public_keys(path)
    assert len(keys) == 1 and "d" not in keys[0] and keys[0]["kid"] == "my-key-1"

    server = start_emulator(clients=build_config(jwt_clients={"my-bulk-client": keys}).clients)
    r = jwt_token(server, rsa_key, "RS384", "my-bulk-client", kid="my-key-1")
    assert r.status_code == 200, r.text
    headers = {"Authorization": f"Bearer {r.json()['access_token']}"}
    manifest = run_export(server, headers, types="Patient")
    assert manifest["requiresAccessToken"] is True
    assert httpx.get(manifest["output"][0]["url"], headers=headers).status_code == 200
    # a different key, or another client id, is refused
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    assert jwt_token(server, other, "RS384", "my-bulk-client", kid="my-key-1").status_code == 400
    assert jwt_token(server, rsa_key, "RS384", "someone-else").status_code == 400
    # the sandbox client still logs in with its secret
    assert get_token(server)


def test_pem_and_ec_jwks_files_register_clients(start_emulator, rsa_key, tmp_path):
    pem_path = tmp_path / "public.pem"
    pem_path.write_bytes(rsa_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    ec_key = ec.generate_private_key(ec.SECP384R1())
    ec_jwk = {**jwt.algorithms.ECAlgorithm.to_jwk(ec_key.public_key(), as_dict=True), "kid": "ec"}
    ec_path = tmp_path / "ec.jwks"
    ec_path.write_text(json.dumps({"keys": [ec_jwk]}))
    clients = build_config(jwt_clients={"pem-client": load_public_keys(pem_path),
                                        "ec-client": load_public_keys(ec_path)}).clients
    server = start_emulator(clients=clients)
    assert jwt_token(server, rsa_key, "RS384", "pem-client").status_code == 200
    assert jwt_token(server, ec_key, "ES384", "ec-client", kid="ec").status_code == 200


def test_a_private_pem_is_reduced_to_its_public_key(rsa_key, tmp_path):
    path = tmp_path / "private.pem"
    path.write_bytes(rsa_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    (pem,) = load_public_keys(path)
    assert pem.startswith("-----BEGIN PUBLIC KEY-----") and "PRIVATE" not in pem


@pytest.mark.parametrize(("content", "message"), [
    ("{not json", "not valid JSON"),
    ('{"keys": []}', "non-empty"),
    ('{"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}', "unsupported JWK key type"),
    ('{"keys": [{"kty": "RSA", "e": "AQAB"}]}', "lacks n"),
    ("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n", "not a readable PEM"),
    ("just some text", "expected a PEM public key or a JWKS"),
])
def test_unusable_key_files_are_errors_naming_the_file(tmp_path, content, message):
    path = tmp_path / "bad-key-file.txt"
    path.write_text(content)
    with pytest.raises(ValueError, match=message) as info:
        load_public_keys(path)
    assert str(path) in str(info.value)


def test_a_missing_key_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.pem"):
        load_public_keys(tmp_path / "missing.pem")


def test_public_jwk_keeps_only_public_members(rsa_key):
    full = jwt.algorithms.RSAAlgorithm.to_jwk(rsa_key, as_dict=True)
    assert set(public_jwk({**full, "kid": "k", "use": "sig"})) == {"kty", "n", "e", "kid", "use"}


# --- build_config ---------------------------------------------------------------------------------------
def test_build_config_maps_every_serve_option():
    config = build_config(open_mode=True, environment="preview", token_lifetime=120,
                          expires_in_string=True, resources_per_file=7, file_expiry=30,
                          export_delay=0.5, per_second_limit=9)
    assert config.auth_required is False and config.environment == "preview"
    assert config.token_rate_limit == 5
    assert (config.token_lifetime_seconds, config.expires_in_as_string) == (120, True)
    assert (config.resources_per_file, config.file_expiry_seconds) == (7, 30)
    assert (config.export_processing_delay_seconds, config.per_second_limit) == (0.5, 9)
    assert build_config() == EmulatorConfig()  # no options: the defaults, unchanged


def test_build_config_adds_clients_after_the_sandbox_client():
    config = build_config(jwt_clients={"a": ("PEM-A",), "sandbox-client": ("PEM-S",)},
                          client_secrets={"b": "secret-b", "a": "secret-a"})
    assert [c.client_id for c in config.clients] == ["sandbox-client", "a", "b"]
    sandbox, a, b = config.clients
    assert (sandbox.secret, sandbox.public_keys) == ("sandbox-secret", ("PEM-S",))
    assert (a.secret, a.public_keys) == ("secret-a", ("PEM-A",))
    assert (b.secret, b.public_keys) == ("secret-b", ())
    with pytest.raises(ValueError, match="environment"):
        build_config(environment="staging")
    with pytest.raises(ValueError):
        build_config(resources_per_file=0)


def test_an_extra_secret_client_gets_tokens(start_emulator):
    server = start_emulator(clients=build_config(client_secrets={"etl": "s3cret"}).clients)
    assert get_token(server, client_id="etl", secret="s3cret")
    r = httpx.post(server.token_url, data={"grant_type": "client_credentials"}, auth=("etl", "wrong"))
    assert r.status_code == 401
