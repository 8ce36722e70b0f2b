"""Settings: sandbox defaults, environment overrides, validation, and secrets kept out of output."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

from athena_pipeline.settings import ENV_VARS, Settings

ROOT = Path(__file__).resolve().parents[1]

REAL_ENV = {
    "ATHENA_FHIR_BASE_URL": "https://api.preview.platform.athenahealth.com/fhir/r4",
    "ATHENA_TOKEN_URL": "https://api.preview.platform.athenahealth.com/oauth2/v1/token",
    "ATHENA_AUTH": "private_key_jwt",
    "ATHENA_CLIENT_ID": "0oa-real-client",
    "ATHENA_CLIENT_SECRET": "athena-very-secret-value",
    "ATHENA_PRIVATE_KEY_PATH": "/etc/athena/key.pem",
    "ATHENA_KEY_ID": "key-2026",
    "ATHENA_PRACTICE_ID": "80000",
    "ATHENA_SCOPES": "system/Patient.read system/Encounter.read",
    "ATHENA_REQUESTS_PER_SECOND": "100",
    "ATHENA_BULK_CONCURRENCY": "8",
    "ATHENA_BULK_POLL_SECONDS": "30",
    "ATHENA_JWT_ALGORITHM": "es384",
    "DATAVIEW_KIND": "snowflake",
    "SNOWFLAKE_ACCOUNT": "xy12345",
    "SNOWFLAKE_USER": "PIPELINE",
    "SNOWFLAKE_PASSWORD": "snowflake-very-secret-value",
    "SNOWFLAKE_ROLE": "DATAVIEW_READER",
    "SNOWFLAKE_WAREHOUSE": "COMPUTE_WH",
    "DATAVIEW_CONTEXT_IDS": "80000, 80001",
    "DATAVIEW_PARTITION_START": "2024-01-01",
    "DATAVIEW_SOFT_DELETE_MAX_RATIO": "0.05",
    "PIPELINE_TIMEZONE": "America/Chicago",
    "WAREHOUSE_PATH": "/srv/athena/warehouse.duckdb",
    "LANDING_DIR": "/srv/athena/landing",
    "WAREHOUSE_MEMORY_LIMIT": "4GB",
    "SANDBOX_WORLD": "/tmp/world",
    "CASPIO_BASE_URL": "https://c1abc123.caspio.com",
    "CASPIO_CLIENT_SECRET": "caspio-very-secret-value",
    "CASPIO_CALL_BUDGET": "1200",
    "CASPIO_PUBLISH_PATIENT_LEVEL": "yes",
}
SECRETS = ("athena-very-secret-value", "snowflake-very-secret-value", "caspio-very-secret-value")


def test_defaults_point_at_the_sandbox() -> None:
    s = Settings.from_env({})
    assert s.is_sandbox
    assert s.athena_fhir_base_url == "http://127.0.0.1:8765/fhir/r4"
    assert s.athena_token_url == "http://127.0.0.1:8765/oauth2/v1/token"
    assert (s.athena_auth, s.athena_client_id, s.athena_client_secret) == (
        "client_secret",
        "sandbox-client",
        "sandbox-secret",
    )
    assert s.athena_practice_id == 195900
    assert s.athena_group_id == "a-1.c-195900"
    assert s.dataview_kind == "duckdb"
    assert s.dataview_duckdb_path == Path(".sandbox/world/dataview.duckdb")
    assert (s.dataview_database, s.dataview_schema) == ("ATHENAHEALTH", "ATHENAONE")
    assert s.warehouse_path == Path("data/warehouse.duckdb")
    assert s.landing_dir == Path("data/landing")
    assert s.sandbox_world == Path(".sandbox/world")
    assert s.sandbox_port == 8765
    assert s.caspio_base_url.startswith("http://127.0.0.1:8765/")
    assert s.caspio_publish_patient_level is False
    assert s.snowflake_password is None
    assert (s.athena_bulk_concurrency, s.athena_bulk_poll_seconds, s.athena_jwt_algorithm) == (4, 60.0, None)
    assert s.context_ids == (195900,)  # the practice itself
    assert s.dataview_partition_start.isoformat() == "2023-11-01"
    assert (s.pipeline_timezone, s.dataview_soft_delete_max_ratio) == ("America/New_York", 0.2)
    assert s.warehouse_memory_limit is None


def test_environment_overrides_every_default() -> None:
    s = Settings.from_env(REAL_ENV)
    assert not s.is_sandbox
    assert s.athena_fhir_base_url == REAL_ENV["ATHENA_FHIR_BASE_URL"]
    assert s.athena_auth == "private_key_jwt"
    assert s.athena_private_key_path == Path("/etc/athena/key.pem")
    assert s.athena_key_id == "key-2026"
    assert s.athena_practice_id == 80000
    assert s.athena_group_id == "a-1.c-80000"  # follows the practice id unless set
    assert s.athena_requests_per_second == 100.0
    assert s.dataview_kind == "snowflake"
    assert s.snowflake_account == "xy12345"
    assert s.warehouse_path == Path("/srv/athena/warehouse.duckdb")
    assert s.dataview_duckdb_path == Path("/tmp/world/dataview.duckdb")  # follows SANDBOX_WORLD
    assert s.caspio_base_url == "https://c1abc123.caspio.com"
    assert s.caspio_call_budget == 1200
    assert s.caspio_publish_patient_level is True
    assert (s.athena_bulk_concurrency, s.athena_bulk_poll_seconds, s.athena_jwt_algorithm) == (8, 30.0, "ES384")
    assert s.context_ids == (80000, 80001)
    assert s.dataview_partition_start.isoformat() == "2024-01-01"
    assert (s.pipeline_timezone, s.dataview_soft_delete_max_ratio) == ("America/Chicago", 0.05)
    assert s.warehouse_memory_limit == "4GB"


def test_sandbox_urls_follow_the_sandbox_port_and_explicit_values_win() -> None:
    s = Settings.from_env({"SANDBOX_PORT": "9911", "ATHENA_GROUP_ID": "a-1.c-42"})
    assert s.athena_fhir_base_url == "http://127.0.0.1:9911/fhir/r4"
    assert s.athena_token_url == "http://127.0.0.1:9911/oauth2/v1/token"
    assert s.caspio_base_url.startswith("http://127.0.0.1:9911/")
    assert s.athena_group_id == "a-1.c-42"
    assert s.is_sandbox


@pytest.mark.parametrize(("base_url", "expected"), [
    ("https://api.preview.platform.athenahealth.com/fhir/r4", 5.0),   # athena preview: go-athenahealth's 5
    ("https://api.platform.athenahealth.com/fhir/r4", 100.0),         # athena production: its 100
    ("https://bulk-data.smarthealthit.org/eyJ9/fhir", 100.0),         # any other Bulk Data server
    ("https://preview.example.org/fhir", 100.0),                      # "preview" alone is not athena's
    (None, 100.0),                                                    # the sandbox
])
def test_the_request_throttle_defaults_to_the_hosts_known_pace(base_url: str | None, expected: float) -> None:
    """5 requests per second would cap a 200-file bulk download at 40 s on any server; only athena's
    preview host is known to want that little. An explicit value always wins."""
    env = {"ATHENA_FHIR_BASE_URL": base_url} if base_url else {}
    assert Settings.from_env(env).athena_requests_per_second == expected
    assert Settings.from_env({**env, "ATHENA_REQUESTS_PER_SECOND": "7"}).athena_requests_per_second == 7.0


def test_empty_variables_count_as_unset() -> None:
    s = Settings.from_env({"ATHENA_CLIENT_ID": "", "WAREHOUSE_PATH": "  ", "ATHENA_PRACTICE_ID": ""})
    assert s == Settings.from_env({})


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"ATHENA_AUTH": "kerberos"}, "ATHENA_AUTH"),
        ({"ATHENA_AUTH": "private_key_jwt"}, "ATHENA_PRIVATE_KEY_PATH"),
        ({"ATHENA_PRACTICE_ID": "not-a-number"}, "ATHENA_PRACTICE_ID"),
        ({"ATHENA_REQUESTS_PER_SECOND": "fast"}, "ATHENA_REQUESTS_PER_SECOND"),
        ({"ATHENA_REQUESTS_PER_SECOND": "0"}, "ATHENA_REQUESTS_PER_SECOND"),
        ({"DATAVIEW_KIND": "oracle"}, "DATAVIEW_KIND"),
        ({"SANDBOX_PORT": "70000"}, "SANDBOX_PORT"),
        ({"CASPIO_PUBLISH_PATIENT_LEVEL": "maybe"}, "CASPIO_PUBLISH_PATIENT_LEVEL"),
        ({"CASPIO_CALL_BUDGET": "-1"}, "CASPIO_CALL_BUDGET"),
        ({"ATHENA_BULK_CONCURRENCY": "0"}, "ATHENA_BULK_CONCURRENCY"),
        ({"ATHENA_BULK_POLL_SECONDS": "-1"}, "ATHENA_BULK_POLL_SECONDS"),
        ({"ATHENA_JWT_ALGORITHM": "HS256"}, "ATHENA_JWT_ALGORITHM"),
        ({"DATAVIEW_CONTEXT_IDS": "195900,abc"}, "DATAVIEW_CONTEXT_IDS"),
        ({"DATAVIEW_CONTEXT_IDS": ","}, "DATAVIEW_CONTEXT_IDS"),
        ({"DATAVIEW_PARTITION_START": "11/01/2023"}, "DATAVIEW_PARTITION_START"),
        ({"DATAVIEW_SOFT_DELETE_MAX_RATIO": "1.5"}, "DATAVIEW_SOFT_DELETE_MAX_RATIO"),
        ({"PIPELINE_TIMEZONE": "Mars/Olympus_Mons"}, "PIPELINE_TIMEZONE"),
        ({"WAREHOUSE_MEMORY_LIMIT": "lots"}, "WAREHOUSE_MEMORY_LIMIT"),
    ],
)
def test_malformed_values_name_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Settings.from_env(env)


def test_a_malformed_secret_is_not_echoed() -> None:
    with pytest.raises(ValueError) as info:
        Settings.from_env({"CASPIO_CALL_BUDGET": "caspio-very-secret-value"})
    assert "caspio-very-secret-value" not in str(info.value)


def test_secrets_never_appear_in_repr_or_redacted() -> None:
    s = Settings.from_env(REAL_ENV)
    text = repr(s) + str(s) + repr(s.redacted())
    for secret in SECRETS:
        assert secret not in text
    red = s.redacted()
    assert red["athena_client_secret"] == "***"
    assert red["snowflake_password"] == "***"
    assert red["caspio_client_secret"] == "***"
    assert red["snowflake_user"] == "PIPELINE"  # only secrets are hidden
    assert red["warehouse_path"] == "/srv/athena/warehouse.duckdb"
    # an unset secret reads as unset, not as a hidden value
    assert Settings.from_env({}).redacted()["snowflake_password"] is None


def test_settings_are_immutable() -> None:
    s = Settings.from_env({})
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.athena_client_id = "other"  # type: ignore[misc]


class _Recording(Mapping[str, str]):
    """An empty environment that remembers which names were looked up."""

    def __init__(self) -> None:
        self.asked: list[str] = []

    def __getitem__(self, key: str) -> str:
        self.asked.append(key)
        raise KeyError(key)

    def get(self, key: str, default: str | None = None) -> str | None:  # type: ignore[override]
        self.asked.append(key)
        return default

    def __iter__(self) -> Iterator[str]:
        return iter(())

    def __len__(self) -> int:
        return 0


def test_env_vars_lists_exactly_what_from_env_reads() -> None:
    env = _Recording()
    Settings.from_env(env)
    assert set(env.asked) == set(ENV_VARS)


def test_every_variable_is_documented_in_env_example_and_readme() -> None:
    example = (ROOT / ".env.example").read_text()
    readme = (ROOT / "README.md").read_text()
    in_example = set(re.findall(r"^# ([A-Z][A-Z0-9_]+)=", example, flags=re.MULTILINE))
    assert in_example == set(ENV_VARS)
    missing = [name for name in ENV_VARS if f"`{name}`" not in readme]
    assert not missing, f"README.md configuration table lacks {missing}"
