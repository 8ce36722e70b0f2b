"""The Caspio emulator against the checklist of ``caspio-api.md`` §14, one test per rule.

Every test talks plain HTTP (httpx) to a real emulator on an ephemeral loopback port, started
with :func:`run_caspio_in_thread` over a state directory in ``tmp_path``. Rows are seeded
through the emulator's own v4 bulk endpoint (one call per 1000 rows) to keep the file fast.
"""

from __future__ import annotations

import base64
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest

from athena_pipeline.sandbox.caspio.config import (
    SANDBOX_CASPIO_CLIENT_ID,
    SANDBOX_CASPIO_CLIENT_SECRET,
    CaspioConfig,
)
from athena_pipeline.sandbox.caspio.faults import CaspioFaults
from athena_pipeline.sandbox.caspio.meter import meter_period
from athena_pipeline.sandbox.caspio.server import RunningCaspio, run_caspio_in_thread

CREDS = {"client_id": SANDBOX_CASPIO_CLIENT_ID, "client_secret": SANDBOX_CASPIO_CLIENT_SECRET}
ERROR_KEYS = {"Code", "Message", "Resource", "RequestId"}

FIELDS = [
    {"Name": "row_key", "Type": "STRING", "Unique": True},
    {"Name": "region", "Type": "STRING"},
    {"Name": "notes", "Type": "TEXT"},
    {"Name": "sales", "Type": "NUMBER"},
    {"Name": "visits", "Type": "INTEGER"},
    {"Name": "balance", "Type": "CURRENCY"},
    {"Name": "day", "Type": "DATE/TIME"},
    {"Name": "active", "Type": "YES/NO"},
]


# --- fixtures and helpers ------------------------------------------------------------------------
class Clock:
    """A settable wall clock for token expiry and meter periods."""

    def __init__(self, now: float = 1_790_000_000.0) -> None:  # 2026-09-21, mid-period
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Any]:
    servers: list[RunningCaspio] = []

    def _start(config: CaspioConfig | None = None, faults: CaspioFaults | str | None = None,
               state: Path | None = None) -> RunningCaspio:
        srv = run_caspio_in_thread(state or tmp_path / "state", config, faults=faults)
        servers.append(srv)
        return srv

    yield _start
    for srv in servers:
        srv.stop()


@pytest.fixture
def srv(start: Any) -> RunningCaspio:
    return start()


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningCaspio]:
    """One emulator for the parametrised rejection tests (each case only sends refused calls)."""
    server = run_caspio_in_thread(tmp_path_factory.mktemp("caspio-shared"))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def shared_api(shared: RunningCaspio) -> Iterator[httpx.Client]:
    """A client of ``shared`` with an empty ``ap_sales`` table that the rejection tests keep empty."""
    with api(shared) as c:
        make_table(c)
        yield c
        assert rows(c) == []


def token(srv: RunningCaspio) -> dict:
    r = httpx.post(srv.token_url, data={"grant_type": "client_credentials", **CREDS}, timeout=10)
    assert r.status_code == 200, r.text
    return r.json()


def api(srv: RunningCaspio) -> httpx.Client:
    """A client for v3 with a fresh bearer token."""
    return httpx.Client(base_url=srv.v3, timeout=10,
                        headers={"Authorization": f"Bearer {token(srv)['access_token']}"})


def make_table(c: httpx.Client, name: str = "ap_sales", fields: list[dict] | None = None) -> None:
    r = c.post("/tables", json={"Name": name, "Fields": fields or FIELDS})
    assert r.status_code == 201, r.text


def seed(srv: RunningCaspio, c: httpx.Client, table: str, rows: list[dict]) -> None:
    tables = c.get(f"{srv.v4}/tables").json()["data"]
    tid = next(t["tableId"] for t in tables if t["name"].lower() == table.lower())
    for i in range(0, len(rows), 1000):
        r = c.post(f"{srv.v4}/tables/{tid}/records/bulk", json=rows[i:i + 1000])
        assert r.status_code == 201, r.text


def sample_rows(n: int) -> list[dict]:
    regions = ["NW", "SE", "nw", None]
    return [{"row_key": f"k{i:05d}", "region": regions[i % 4], "sales": i * 1.5, "visits": i,
             "balance": i * 2.25, "day": f"2024-05-{1 + i % 28:02d}", "active": i % 2 == 0}
            for i in range(n)]


def rows(c: httpx.Client, table: str = "ap_sales", **params: Any) -> list[dict]:
    r = c.get(f"/tables/{table}/records", params=params)
    assert r.status_code == 200, r.text
    return r.json()["Result"]


def assert_error(r: httpx.Response, status: int, code: str) -> dict:
    assert r.status_code == status, r.text
    body = r.json()
    assert ERROR_KEYS <= set(body), body
    assert body["Code"] == code, body
    assert body["RequestId"] == r.headers["X-Caspio-Request-ID"]
    return body


def stats(srv: RunningCaspio) -> dict:
    return httpx.get(f"{srv.base_url}/_emulator/stats", timeout=10).json()


# --- routing and auth ------------------------------------------------------------------------------
def test_v3_is_under_integrations_rest_and_rest_v3_is_404(srv: RunningCaspio) -> None:
    c = api(srv)
    assert c.get("/tables").status_code == 200
    r = c.get(f"{srv.base_url}/rest/v3/tables")
    assert_error(r, 404, "ObjectNotFound")
    assert c.get(f"{srv.base_url}/rest/v2/tables").status_code == 200  # v2 still served


def test_token_by_form_body_or_basic_auth_with_the_documented_shape(srv: RunningCaspio) -> None:
    body = token(srv)
    assert set(body) == {"access_token", "token_type", "expires_in", "refresh_token"}
    assert body["token_type"] == "bearer" and body["expires_in"] == 86399
    basic = base64.b64encode(f"{CREDS['client_id']}:{CREDS['client_secret']}".encode()).decode()
    r = httpx.post(srv.token_url, data={"grant_type": "client_credentials"},
                   headers={"Authorization": f"Basic {basic}"}, timeout=10)
    assert r.status_code == 200 and r.json()["access_token"] != body["access_token"]
    # a newer token does not revoke the older one; lowercase "bearer" works too
    for t in (body["access_token"], r.json()["access_token"]):
        assert httpx.get(f"{srv.v3}/tables", headers={"Authorization": f"bearer {t}"},
                         timeout=10).status_code == 200
    bad = httpx.post(srv.token_url, data={"grant_type": "client_credentials",
                                          "client_id": CREDS["client_id"], "client_secret": "nope"},
                     timeout=10)
    assert bad.status_code == 401 and bad.json()["error"] == "invalid_client"
    assert "nope" not in bad.text
    json_body = httpx.post(srv.token_url, json={"grant_type": "client_credentials", **CREDS}, timeout=10)
    assert json_body.status_code == 400  # form-encoded only
    assert httpx.post(srv.token_url, data={"grant_type": "password", **CREDS},
                      timeout=10).json()["error"] == "unsupported_grant_type"


def test_refresh_token_grant_issues_a_new_access_token(srv: RunningCaspio) -> None:
    first = token(srv)
    r = httpx.post(srv.token_url, data={"grant_type": "refresh_token",
                                        "refresh_token": first["refresh_token"], **CREDS}, timeout=10)
    assert r.status_code == 200, r.text
    fresh = r.json()
    assert fresh["access_token"] != first["access_token"] and fresh["expires_in"] == 86399
    for t in (first, fresh):
        assert httpx.get(f"{srv.v3}/tables", headers={"Authorization": f"Bearer {t['access_token']}"},
                         timeout=10).status_code == 200
    bad = httpx.post(srv.token_url, data={"grant_type": "refresh_token", "refresh_token": "forged",
                                          **CREDS}, timeout=10)
    assert bad.status_code == 400 and bad.json()["error"] == "invalid_grant"


def test_missing_invalid_and_expired_tokens_get_401(start: Any) -> None:
    clock = Clock()
    srv = start(CaspioConfig(token_lifetime_seconds=60, wall_clock=clock))
    t = token(srv)
    assert t["expires_in"] == 60
    url = f"{srv.v3}/tables"
    assert_error(httpx.get(url, timeout=10), 401, "Unauthorized")
    assert_error(httpx.get(url, headers={"Authorization": "Bearer not-a-token"}, timeout=10),
                 401, "Unauthorized")
    ok = httpx.get(url, headers={"Authorization": f"Bearer {t['access_token']}"}, timeout=10)
    assert ok.status_code == 200
    clock.now += 61
    assert_error(httpx.get(url, headers={"Authorization": f"Bearer {t['access_token']}"}, timeout=10),
                 401, "Unauthorized")
    # the refresh token outlives the access token
    r = httpx.post(srv.token_url, data={"grant_type": "refresh_token",
                                        "refresh_token": t["refresh_token"], **CREDS}, timeout=10)
    assert r.status_code == 200


def test_stale_token_quirk_answers_400_incorrect_query_parameter(start: Any) -> None:
    clock = Clock()
    srv = start(CaspioConfig(token_lifetime_seconds=60, stale_token_400=True, wall_clock=clock))
    t = token(srv)["access_token"]
    clock.now += 120
    r = httpx.get(f"{srv.v3}/tables", headers={"Authorization": f"Bearer {t}"}, timeout=10)
    assert_error(r, 400, "IncorrectQueryParameter")
    # as a fault on a live token: the token is revoked, so only a new token helps
    srv.faults.set("stale_token", 1)
    t2 = token(srv)["access_token"]
    h = {"Authorization": f"Bearer {t2}"}
    assert_error(httpx.get(f"{srv.v3}/tables", headers=h, timeout=10), 400, "IncorrectQueryParameter")
    assert httpx.get(f"{srv.v3}/tables", headers=h, timeout=10).status_code == 400
    t3 = token(srv)["access_token"]
    assert httpx.get(f"{srv.v3}/tables", headers={"Authorization": f"Bearer {t3}"},
                     timeout=10).status_code == 200
    srv.faults.set("expire_token", 1)
    assert_error(httpx.get(f"{srv.v3}/tables", headers={"Authorization": f"Bearer {t3}"}, timeout=10),
                 401, "Unauthorized")


# --- table design ---------------------------------------------------------------------------------
def test_tables_list_create_describe_and_case_insensitive_names(srv: RunningCaspio) -> None:
    c = api(srv)
    assert c.get("/tables").json() == {"Result": []}
    r = c.post("/tables", json={"Name": "ap_sales", "Note": "sales by region", "Fields": FIELDS})
    assert r.status_code == 201 and r.content == b""
    assert c.get("/tables").json() == {"Result": ["ap_sales"]}
    assert c.get("/tables/AP_SALES").json() == {"Result": {"Name": "ap_sales", "Note": "sales by region"}}
    assert_error(c.post("/tables", json={"Name": "AP_Sales", "Fields": FIELDS}), 400,
                 "IncorrectBodyParameter")
    assert_error(c.get("/tables/nope"), 404, "ObjectNotFound")


def test_v3_create_table_rejects_columns_and_v2_takes_them(srv: RunningCaspio) -> None:
    c = api(srv)
    assert_error(c.post("/tables", json={"Name": "t_cols", "Columns": FIELDS}), 400,
                 "IncorrectBodyParameter")
    assert c.get("/tables").json()["Result"] == []
    v2 = c.post(f"{srv.base_url}/rest/v2/tables", json={"Name": "t_cols", "Columns": FIELDS[:2]})
    assert v2.status_code == 201
    assert [f["Name"] for f in c.get("/tables/t_cols/fields").json()["Result"]] == ["row_key", "region"]
    # v2 field updates prefix every property with New
    assert c.put(f"{srv.base_url}/rest/v2/tables/t_cols/fields/region",
                 json={"NewName": "area", "NewLabel": "Area"}).status_code == 200
    assert c.get("/tables/t_cols/fields/area").json()["Result"]["Label"] == "Area"


def test_pk_id_is_added_automatically_and_left_out_of_fields(srv: RunningCaspio) -> None:
    c = api(srv)
    make_table(c)
    fields = c.get("/tables/ap_sales/fields").json()["Result"]
    assert [f["Name"] for f in fields] == [f["Name"] for f in FIELDS]
    assert fields[0]["Type"] == "STRING" and fields[0]["Unique"] is True and fields[0]["Length"] == 255
    r = c.post("/tables/ap_sales/fields", json={"Name": "extra", "Type": "INTEGER"})
    assert r.status_code == 201 and r.content == b""
    assert c.get("/tables/ap_sales/fields/EXTRA").json()["Result"]["Type"] == "INTEGER"
    c.post("/tables/ap_sales/records", json={"row_key": "a"})
    assert rows(c)[0]["PK_ID"] == 1
    assert_error(c.post("/tables", json={"Name": "t2", "Fields": [{"Name": "PK_ID", "Type": "INTEGER"}]}),
                 400, "IncorrectBodyParameter")


@pytest.mark.parametrize("token_", ["TEXT(255)", "string", "Text", "VARCHAR", "DATE", "BOOLEAN", ""])
def test_only_exact_type_tokens_are_accepted(shared_api: httpx.Client, token_: str) -> None:
    c = shared_api
    assert_error(c.post("/tables", json={"Name": "t_types", "Fields": [{"Name": "f", "Type": token_}]}),
                 400, "IncorrectBodyParameter")


def test_every_documented_type_token_creates_a_field(srv: RunningCaspio) -> None:
    c = api(srv)
    fields = [{"Name": f"f{i}", "Type": t, "Unique": t in ("AUTONUMBER", "PREFIXED AUTONUMBER", "GUID",
                                                           "RANDOM ID")}
              for i, t in enumerate(["STRING", "TEXT", "NUMBER", "INTEGER", "CURRENCY", "DATE/TIME",
                                     "YES/NO", "AUTONUMBER", "PREFIXED AUTONUMBER", "GUID", "RANDOM ID",
                                     "TIMESTAMP", "PASSWORD", "FILE", "ATTACHMENT", "LIST-STRING",
                                     "LIST-NUMBER", "LIST-DATE/TIME"])]
    make_table(c, "t_all", fields)
    got = c.get("/tables/t_all/fields").json()["Result"]
    assert [f["Type"] for f in got] == [f["Type"] for f in fields]
    assert c.post("/tables/t_all/records", json={"f0": "x", "f15": "[1], [3]", "f16": [2]}).status_code == 201
    row = rows(c, "t_all")[0]
    assert row["f7"] == 1 and isinstance(row["f9"], str) and row["f11"] is not None
    assert row["f15"] == [1, 3] and row["f16"] == [2]  # list keys, in either form
    assert "f12" not in row  # password fields are left out of *


def test_auto_id_types_require_unique_true(srv: RunningCaspio) -> None:
    c = api(srv)
    for t in ("AUTONUMBER", "PREFIXED AUTONUMBER", "GUID", "RANDOM ID"):
        assert_error(c.post("/tables", json={"Name": "t_auto", "Fields": [{"Name": "n", "Type": t}]}),
                     400, "IncorrectBodyParameter")
    make_table(c, "t_auto", [{"Name": "n", "Type": "AUTONUMBER", "Unique": True}])


@pytest.mark.parametrize("name", ["a" * 33, "1abc", "_abc", "has space", "has-dash", "Order", "key",
                                  "PERCENT", "é"])
def test_field_names_follow_caspio_rules(shared_api: httpx.Client, name: str) -> None:
    c = shared_api
    assert_error(c.post("/tables", json={"Name": "t_names", "Fields": [{"Name": name, "Type": "STRING"}]}),
                 400, "IncorrectBodyParameter")


def test_valid_field_names_up_to_32_characters(srv: RunningCaspio) -> None:
    c = api(srv)
    make_table(c, "t_names", [{"Name": "a" * 32, "Type": "STRING"}, {"Name": "Z9_x", "Type": "STRING"}])


def test_field_changes_add_rename_and_delete_keep_data(srv: RunningCaspio) -> None:
    c = api(srv)
    make_table(c)
    seed(srv, c, "ap_sales", sample_rows(3))
    assert c.post("/tables/ap_sales/fields", json={"Name": "later", "Type": "STRING"}).status_code == 201
    assert all(r["later"] is None for r in rows(c))
    # a Unique field on a table with rows: all those empty values are duplicates
    assert_error(c.post("/tables/ap_sales/fields", json={"Name": "uk", "Type": "STRING", "Unique": True}),
                 400, "SqlServerError")
    assert c.put("/tables/ap_sales/fields/region", json={"Name": "area", "Label": "Area"}).status_code == 200
    assert rows(c, **{"q.orderBy": "PK_ID"})[0]["area"] == "NW"
    assert c.put("/tables/ap_sales/fields/visits", json={"Type": "NUMBER"}).status_code == 200
    assert_error(c.put("/tables/ap_sales/fields/area", json={"Type": "INTEGER"}), 400, "InvalidInputValue")
    assert c.delete("/tables/ap_sales/fields/area").status_code == 200
    assert "area" not in rows(c)[0]
    assert_error(c.get("/tables/ap_sales/fields/area"), 404, "FieldNotFound")


# --- reads ----------------------------------------------------------------------------------------
def test_query_parameter_names_are_case_insensitive(srv: RunningCaspio) -> None:
    c = api(srv)
    make_table(c)
    seed(srv, c, "ap_sales", sample_rows(20))
    got = rows(c, **{"Q.ORDERBY": "visits DESC", "q.LIMIT": "3", "q.Where": "visits < 10"})
    assert [r["visits"] for r in got] == [9, 8, 7]


def test_limit_defaults_to_100_and_is_capped_silently_at_1000(srv: RunningCaspio) -> None:
    c = api(srv)
    make_table(c)
    seed(srv, c, "ap_sales", sample_rows(1100))
    assert len(rows(c)) == 100
    assert len(rows(c, **{"q.limit": "5000"})) == 1000
    assert len(rows(c, **{"q.limit": "7"})) == 7
    assert_error(c.get("/tables/ap_sales/records", params={"q.limit": "ten"}), 400, "IncorrectQueryParameter")


@pytest.mark.parametrize("size", ["4", "1001", "5000", "0", "-5", "x"])
def test_page_size_outside_5_to_1000_is_400(shared_api: httpx.Client, size: str) -> None:
    c = shared_api
    r = c.get("/tables/ap_sales/records", params={"q.pageSize": size, "q.pageNumber": "1"})
    assert_error(r, 400, "IncorrectQueryParameter")


def test_paging_defaults_limit_ignored_and_past_the_end_is_empty(srv: RunningCaspio) -> None:
    c = api(srv)
    make_table(c)
    seed(srv, c, "ap_sales", sample_rows(60))
    assert len(rows(c, **{"q.pageNumber": "1"})) == 25  # pageSize defaults to 25
    page1 = rows(c, **{"q.pageSize": "5", "q.orderBy": "PK_ID"})  # pageNumber defaults to 1
    assert [r["PK_ID"] for r in page1] == [1, 2, 3, 4, 5]
    assert len(rows(c, **{"q.pageSize": "10", "q.pageNumber": "2", "q.limit": "3"})) == 10
    assert rows(c, **{"q.pageSize": "50", "q.pageNumber": "2", "q.orderBy": "PK_ID"})[-1]["PK_ID"] == 60
    assert c.get("/tables/ap_sales/records", params={"q.pageSize": "50", "q.pageNumber": "9"}).json() == {
        "Result": []}
    assert_error(c.get("/tables/ap_sales/records", params={"q.pageSize": "5", "q.pageNumber": "0"}),
                 400, "IncorrectQueryParameter")


def test_paging_without_order_by_duplicates_and_loses_rows(srv: RunningCaspio) -> None:
    """The measured quirk: pages without q.orderBy are not a partition of the table, and page 1
    is not the q.limit row set; with q.orderBy=PK_ID every row comes exactly once."""
    c = api(srv)
    make_table(c)
    seed(srv, c, "ap_sales", sample_rows(1100))
    unordered = [r["PK_ID"] for p in (1, 2) for r in rows(c, **{"q.pageSize": "1000", "q.pageNumber": str(p)})]
    assert len(unordered) == 1100 and len(set(unordered)) < 1100
    limit_ids = {r["PK_ID"] for r in rows(c, **{"q.limit": "1000"})}
    page1 = {r["PK_ID"] for r in rows(c, **{"q.pageSize": "1000", "q.pageNumber": "1"})}
    assert limit_ids != page1
    ordered = [r["PK_ID"] for p in (1, 2)
               for r in rows(c, **{"q.pageSize": "1000", "q.pageNumber": str(p), "q.orderBy": "PK_ID"})]
    assert ordered == list(range(1, 1101))


def test_rows_are_serialised_with_pk_id_booleans_dates_and_numbers(srv: RunningCaspio) -> None:
    c = api(srv)
    make_table(c)
    c.post("/tables/ap_sales/records", json={"row_key": "a", "region": "NW", "sales": 10.5, "visits": 3,
                                             "balance": 1.23456, "day": "2024-05-01", "active": True})
    c.post("/tables/ap_sales/records", json={"row_key": "b", "day": "2024-05-01T13:45:10.607",
                                             "active": False})
    a, b = rows(c, **{"q.orderBy": "PK_ID"})
    assert a == {"PK_ID": 1, "row_key": "a", "region": "NW", "notes": None, "sales": 10.5, "visits": 3,
                 "balance": 1.2346, "day": "2024-05-01T00:00:00", "active": True}
    assert b["day"] == "2024-05-01T13:45:10.607" and b["active"] is False and b["sales"] is None


def test_where_clause_tsql_subset(srv: RunningCaspio) -> None:
    c = api(srv)
    make_table(c)
    seed(srv, c, "ap_sales", sample_rows(12) + [{"row_key": "o'brien", "region": "O'Brien", "visits": 100}])

    def keys(where: str) -> list[int]:
        return [r["visits"] for r in rows(c, **{"q.where": where, "q.orderBy": "visits"})]

    assert keys("visits = 3") == [3]
    assert keys("visits <> 3 AND visits != 4 AND visits < 6") == [0, 1, 2, 5]
    assert keys("visits >= 10") == [10, 11, 100]
    assert keys("visits > 9 AND visits <= 10") == [10]
    assert keys("region = 'nw'") == [0, 2, 4, 6, 8, 10]  # case-insensitive, like SQL Server
    assert keys("region = N'SE' OR visits = 0") == [0, 1, 5, 9]
    assert keys("region = 'O''Brien'") == [100]
    assert keys("row_key LIKE 'k0000_'") == list(range(10))
    assert keys("row_key NOT LIKE 'k%'") == [100]
    assert keys("row_key LIKE 'k0001[01]'") == [10, 11]
    assert keys("visits IN (1, 3, '5')") == [1, 3, 5]
    assert keys("visits NOT IN (0,1,2,3,4,5,6,7,8,9)") == [10, 11, 100]
    assert keys("visits BETWEEN 2 AND 4") == [2, 3, 4]
    assert keys("visits NOT BETWEEN 1 AND 100") == [0]
    assert keys("region IS NULL AND visits < 10") == [3, 7]
    assert keys("notes IS NOT NULL") == []
    assert keys("active = 1 AND visits < 5") == [0, 2, 4]
    assert keys("active = 0 AND NOT (visits > 5 OR visits = 1)") == [3, 5]
    assert keys("day = '2024-05-03'") == [2]
    assert keys("day > '2024-05-10T00:00:00' AND visits < 100") == [10, 11]
    assert keys("(visits = 1 OR visits = 2) AND (active = 1)") == [2]
    assert keys("[visits] = 1 AND PK_ID = 2") == [1]
    assert keys("visits = -1 OR sales >= 15.5") == [11]
    assert keys("1 = 1 AND visits < 2") == [0, 1]


@pytest.mark.parametrize("where", [
    "visits = 1; DROP TABLE ap_sales", "visits = 1 -- comment", "visits = ", "(visits = 1",
    "visits = 1)", "LEN(region) = 2", "visits == 1", "visits = 1 AND", "region = 'unterminated",
    "visits = @p", "visits = 1 /* x */", "SELECT 1", "visits IN ()", "region LIKE region",
    "visits = 1 2", "`visits` = 1",
])
def test_where_outside_the_subset_is_400_incorrect_query_parameter(shared_api: httpx.Client,
                                                                    where: str) -> None:
    c = shared_api
    assert_error(c.get("/tables/ap_sales/records", params={"q.where": where}), 400, "IncorrectQueryParameter")
    assert_error(c.delete("/tables/ap_sales/records", params={"q.where": where}), 400,
                 "IncorrectQueryParameter")
    assert "ap_sales" in c.get("/tables").json()["Result"]


def test_where_with_unknown_column_or_bad_conversion_is_sql_server_error(srv: RunningCaspio) -> None:
    c = api(srv)
    make_table(c)
    for where in ("nope = 1", 'region = "NW"', "day = 'yesterday'", "visits = 'abc'", "active = 'maybe'"):
        assert_error(c.get("/tables/ap_sales/records", params={"q.where": where}), 400, "SqlServerError")


def test_select_group_by_order_by(srv: RunningCaspio) -> None:
    c = api(srv)
    make_table(c)
    seed(srv, c, "ap_sales", sample_rows(8))
    got = rows(c, **{"q.select": "active, COUNT(*) AS n, SUM(visits) total, MAX(day)",
                     "q.groupBy": "active", "q.orderBy": "active DESC"})
    assert got == [{"active": True, "n": 4, "total": 12, "MAX(day)": "2024-05-07T00:00:00"},
                   {"active": False, "n": 4, "total": 16, "MAX(day)": "2024-05-08T00:00:00"}]
    assert rows(c, **{"q.select": "row_key AS k, visits", "q.limit": "2", "q.orderBy": "k DESC"}) == [
        {"k": "k00007", "visits": 7}, {"k": "k00006", "visits": 6}]
    assert_error(c.get("/tables/ap_sales/records", params={"q.select": "region, COUNT(*)"}), 400,
                 "SqlServerError")
    assert_error(c.get("/tables/ap_sales/records", params={"q.select": "nope"}), 500, "SqlServerError")
    assert_error(c.get("/tables/ap_sales/records", params={"q.select": "region; x"}), 400,
                 "IncorrectQueryParameter")


def test_password_fields_are_left_out_and_cannot_be_selected(srv: RunningCaspio) -> None:
    c = api(srv)
    make_table(c, "t_pw", [{"Name": "login", "Type": "STRING"}, {"Name": "pw", "Type": "PASSWORD"}])
    assert c.post("/tables/t_pw/records", json={"login": "a", "pw": "s3cret"}).status_code == 201
    assert rows(c, "t_pw") == [{"PK_ID": 1, "login": "a"}]
    assert_error(c.get("/tables/t_pw/records", params={"q.select": "pw"}), 400, "IncorrectQueryParameter")
    assert_error(c.put("/tables/t_pw/records", params={"q.where": "PK_ID = 1"}, json={"pw": "x"}),
                 400, "IncorrectBodyParameter")


# --- writes ---------------------------------------------------------------------------------------
def test_post_takes_one_object_and_answers_201_with_an_empty_body(srv: RunningCaspio) -> None:
    c = api(srv)
    make_table(c)
    r = c.post("/tables/ap_sales/records", json={"row_key": "a", "visits": 1})
    assert r.status_code == 201 and r.content == b""
    assert r.headers["Location"].endswith("/integrations/rest/v3/tables/ap_sales/records")
    assert_error(c.post("/tables/ap_sales/records", json=[{"row_key": "b"}]), 400, "IncorrectBodyParameter")
    assert_error(c.post("/tables/ap_sales/records", content=b"{not json",
                        headers={"Content-Type": "application/json"}), 400, "IncorrectBodyParameter")
    assert_error(c.post("/tables/ap_sales/records", content=b'{"row_key": "c"}'), 415,
                 "UnsupportedMediaType")
    r = c.post("/tables/ap_sales/records", params={"response": "rows"}, json={"row_key": "d", "visits": 4})
    assert r.status_code == 201
    assert r.json()["Result"][0]["PK_ID"] == 2 and r.json()["Result"][0]["row_key"] == "d"
    assert [x["row_key"] for x in rows(c)] == ["a", "d"]


def test_unknown_field_in_a_write_is_404_field_not_found(srv: RunningCaspio) -> None:
    c = api(srv)
    make_table(c)
    body = assert_error(c.post("/tables/ap_sales/records", json={"row_key": "a", "nope": 1}), 404,
                        "FieldNotFound")
    assert "nope" in body["Message"] and body["Resource"] == "/v3/tables/ap_sales/records"
    assert_error(c.put("/tables/ap_sales/records", params={"q.where": "PK_ID = 1"}, json={"nope": 1}),
                 404, "FieldNotFound")
    assert rows(c) == []
    assert c.post("/tables/ap_sales/records", json={"ROW_KEY": "a"}).status_code == 201  # names ignore case


def test_read_only_fields_cannot_be_written(srv: RunningCaspio) -> None:
    c = api(srv)
    make_table(c, "t_ro", [{"Name": "n", "Type": "AUTONUMBER", "Unique": True},
                           {"Name": "s", "Type": "TIMESTAMP"}, {"Name": "v", "Type": "STRING"}])
    for body in ({"PK_ID": 5, "v": "x"}, {"n": 5}, {"s": "2024-01-01"}):
        assert_error(c.post("/tables/t_ro/records", json=body), 400, "IncorrectBodyParameter")
    assert rows(c, "t_ro") == []


@pytest.mark.parametrize("body", [
    {"row_key": "x" * 256}, {"notes": "x" * 64001}, {"sales": "12.5"}, {"visits": 1.5},
    {"visits": 2**31}, {"balance": True}, {"day": "05/01/2024"}, {"day": "2024-13-01"}, {"active": "yes"},
    {"active": 2}, {"region": {"a": 1}}, {"region": ["NW"]},
])
def test_type_and_length_violations_are_400_invalid_input_value(shared_api: httpx.Client,
                                                                 body: dict) -> None:
    c = shared_api
    assert_error(c.post("/tables/ap_sales/records", json={"row_key": "a", **body}), 400, "InvalidInputValue")
    assert rows(c) == []


def test_maximum_lengths_are_accepted(srv: RunningCaspio) -> None:
    c = api(srv)
    make_table(c)
    r = c.post("/tables/ap_sales/records", json={"row_key": "x" * 255, "notes": "y" * 64000,
                                                 "visits": 2.0, "region": 12})
    assert r.status_code == 201, r.text
    row = rows(c)[0]
    assert len(row["notes"]) == 64000 and row["visits"] == 2 and row["region"] == "12"


def test_invalid_input_status_knob_models_v3s_500(start: Any) -> None:
    srv = start(CaspioConfig(invalid_input_status=500))
    c = api(srv)
    make_table(c)
    assert_error(c.post("/tables/ap_sales/records", json={"visits": "many"}), 500, "InvalidInputValue")


def test_unique_is_enforced_case_insensitively_with_one_empty_value(srv: RunningCaspio) -> None:
    c = api(srv)
    make_table(c, "t_u", [{"Name": "k", "Type": "STRING", "Unique": True},
                          {"Name": "n", "Type": "INTEGER", "UniqueAllowNulls": True},
                          {"Name": "v", "Type": "STRING"}])
    assert c.post("/tables/t_u/records", json={"k": "abc", "n": 1}).status_code == 201
    body = assert_error(c.post("/tables/t_u/records", json={"k": "ABC"}), 400, "SqlServerError")
    assert "'k'" in body["Message"] and "abc" not in body["Message"].lower().replace("'k'", "")
    assert_error(c.post("/tables/t_u/records", json={"k": "x", "n": 1}), 400, "SqlServerError")
    assert c.post("/tables/t_u/records", json={"v": "1"}).status_code == 201  # one empty k
    assert_error(c.post("/tables/t_u/records", json={"v": "2"}), 400, "SqlServerError")
    assert c.post("/tables/t_u/records", json={"k": "y"}).status_code == 201  # n empty again: allowed
    # an update that would duplicate changes nothing
    assert_error(c.put("/tables/t_u/records", params={"q.where": "k IS NOT NULL"}, json={"k": "same"}),
                 400, "SqlServerError")
    assert sorted(r["k"] or "" for r in rows(c, "t_u")) == ["", "abc", "y"]


def test_put_and_delete_filter_with_where_and_report_records_affected(srv: RunningCaspio) -> None:
    c = api(srv)
    make_table(c)
    seed(srv, c, "ap_sales", sample_rows(10))
    r = c.put("/tables/ap_sales/records", params={"q.where": "region = 'NW'"}, json={"sales": 11})
    assert r.status_code == 200 and r.json() == {"RecordsAffected": 5, "Result": []}
    assert {x["sales"] for x in rows(c, **{"q.where": "region = 'nw'"})} == {11}
    r = c.put("/tables/ap_sales/records", params={"where": "visits = 3", "response": "rows"},
              json={"region": "ZZ"})  # plain 'where' is accepted too
    assert r.json()["RecordsAffected"] == 1 and r.json()["Result"][0]["region"] == "ZZ"
    assert c.put("/tables/ap_sales/records", params={"q.where": "visits = 999"},
                 json={"sales": 1}).json() == {"RecordsAffected": 0, "Result": []}
    assert_error(c.put("/tables/ap_sales/records", json={"sales": 1}), 400, "IncorrectQueryParameter")
    assert_error(c.delete("/tables/ap_sales/records"), 400, "IncorrectQueryParameter")
    assert_error(c.put("/tables/ap_sales/records", params={"q.where": "visits = 1"}, json=[{"sales": 1}]),
                 400, "IncorrectBodyParameter")
    r = c.delete("/tables/ap_sales/records", params={"q.where": "PK_ID IN (1, 2, 3)"})
    assert r.status_code == 200 and r.json() == {"RecordsAffected": 3}
    assert c.delete("/tables/ap_sales/records", params={"q.where": "PK_ID = 1"}).json() == {"RecordsAffected": 0}
    assert len(rows(c)) == 7


def test_writes_without_where_apply_to_all_rows_when_the_guess_is_switched_off(start: Any) -> None:
    srv = start(CaspioConfig(require_where_for_writes=False))
    c = api(srv)
    make_table(c)
    seed(srv, c, "ap_sales", sample_rows(4))
    assert c.delete("/tables/ap_sales/records").json() == {"RecordsAffected": 4}


# --- errors, headers, limits ----------------------------------------------------------------------
def test_every_response_has_a_request_id_and_errors_the_caspio_body(srv: RunningCaspio) -> None:
    c = api(srv)
    responses = [
        httpx.post(srv.token_url, data={"grant_type": "client_credentials", **CREDS}, timeout=10),
        c.get("/tables"), c.get("/tables/none/records"), c.get(f"{srv.base_url}/nowhere"),
        c.patch("/tables"), httpx.get(f"{srv.v3}/tables", timeout=10),
    ]
    ids = [r.headers["X-Caspio-Request-ID"] for r in responses]
    assert len(set(ids)) == len(ids) and all(re.fullmatch(r"[0-9a-f-]{36}", i) for i in ids)
    body = assert_error(responses[2], 404, "ObjectNotFound")
    assert set(body) == ERROR_KEYS and body["Resource"] == "/v3/tables/none/records"
    assert_error(responses[4], 405, "MethodNotAllowed")


def test_uri_longer_than_2047_characters_is_414(srv: RunningCaspio) -> None:
    c = api(srv)
    make_table(c)

    def target_length(where: str) -> int:  # path + query as sent, without the /caspio mount
        request = c.build_request("GET", "/tables/ap_sales/records", params={"q.where": where})
        return len(request.url.raw_path) - len("/caspio")

    def where_of_length(total: int) -> str:
        shortest = "visits IN (0)"
        return "visits IN (0" + "0" * (total - target_length(shortest)) + ")"

    assert target_length(where_of_length(2047)) == 2047
    ok = c.get("/tables/ap_sales/records", params={"q.where": where_of_length(2047)})
    assert ok.status_code == 200, ok.text
    assert_error(c.get("/tables/ap_sales/records", params={"q.where": where_of_length(2048)}),
                 414, "RequestUriTooLong")


def test_throttle_knob_answers_429_with_retry_after(srv: RunningCaspio) -> None:
    c = api(srv)
    assert httpx.post(f"{srv.base_url}/_emulator/config", json={"no_such_knob": 1},
                      timeout=10).status_code == 400
    r = httpx.post(f"{srv.base_url}/_emulator/config",
                   json={"rate_limit_per_second": 2, "rate_limit_burst": 2}, timeout=10)
    assert r.status_code == 200 and r.json()["rate_limit_per_second"] == 2
    statuses = [c.get("/tables").status_code for _ in range(4)]
    assert statuses[:2] == [200, 200] and 429 in statuses[2:]
    r = c.get("/tables")
    assert_error(r, 429, "TooManyRequests")
    assert int(r.headers["Retry-After"]) >= 1
    time.sleep(1.05)
    assert c.get("/tables").status_code == 200
    httpx.post(f"{srv.base_url}/_emulator/config", json={"rate_limit_per_second": None}, timeout=10)
    srv.faults.set("throttle", 2)
    assert [c.get("/tables").status_code for _ in range(3)] == [429, 429, 200]


def test_5xx_faults_by_count_and_by_seeded_probability(start: Any) -> None:
    srv = start(faults="server_error=2:503")
    c = api(srv)
    first = [c.get("/tables").status_code for _ in range(3)]
    assert first == [503, 503, 200]
    srv.faults.set("server_error", 1)  # the default status is 500
    assert_error(c.get("/tables"), 500, "InternalError")

    def pattern(seed: int) -> list[int]:
        srv.faults.reset()
        srv.faults.reseed(seed)
        srv.faults.set("server_error", probability=0.5)
        return [c.get("/tables").status_code for _ in range(20)]

    one = pattern(7)
    assert 500 in one and 200 in one and pattern(7) == one


def test_error_after_write_commits_then_answers_500(srv: RunningCaspio) -> None:
    c = api(srv)
    make_table(c)
    r = httpx.post(f"{srv.base_url}/_emulator/faults", json={"spec": "error_after_write=1"}, timeout=10)
    assert r.status_code == 200
    assert_error(c.post("/tables/ap_sales/records", json={"row_key": "a"}), 500, "InternalError")
    assert [x["row_key"] for x in rows(c)] == ["a"]  # the row landed anyway
    assert_error(c.post("/tables/ap_sales/records", json={"row_key": "a"}), 400, "SqlServerError")


def test_call_meter_counts_rest_calls_and_overage_without_blocking(start: Any) -> None:
    srv = start(CaspioConfig(monthly_allowance=5))
    c = api(srv)  # the token call is not metered
    for _ in range(7):
        assert c.get("/tables").status_code == 200
    meter = stats(srv)["meter"]
    assert meter["calls"] == 7 and meter["allowance"] == 5 and meter["overage"] == 2
    assert_error(httpx.get(f"{srv.v3}/tables", timeout=10), 401, "Unauthorized")  # not metered
    assert stats(srv)["meter"]["calls"] == 7
    httpx.post(f"{srv.base_url}/_emulator/config", json={"over_allowance": "throttle"}, timeout=10)
    assert_error(c.get("/tables"), 429, "TooManyRequests")


def test_meter_period_runs_27th_to_26th_pacific() -> None:
    import datetime as dt
    from zoneinfo import ZoneInfo

    def at(*args: int) -> float:
        return dt.datetime(*args, tzinfo=ZoneInfo("America/Los_Angeles")).timestamp()

    assert meter_period(at(2026, 5, 27, 0, 0, 1), 27, "America/Los_Angeles") == (
        dt.date(2026, 5, 27), dt.date(2026, 6, 26))
    assert meter_period(at(2026, 5, 26, 23, 59), 27, "America/Los_Angeles") == (
        dt.date(2026, 4, 27), dt.date(2026, 5, 26))
    assert meter_period(at(2026, 1, 3), 27, "America/Los_Angeles") == (
        dt.date(2025, 12, 27), dt.date(2026, 1, 26))


def test_stats_count_requests_per_method_and_route_template(srv: RunningCaspio) -> None:
    c = api(srv)
    make_table(c)
    for i in range(3):
        c.post("/tables/ap_sales/records", json={"row_key": f"k{i}"})
    c.get("/tables/ap_sales/records")
    s = stats(srv)
    assert s["by_route"]["POST /integrations/rest/v3/tables/{table}/records"] == 3
    assert s["requests"]["POST /oauth/token"] == {"200": 1}
    assert s["requests"]["GET /integrations/rest/v3/tables/{table}/records"] == {"200": 1}
    assert s["total"] == 1 + 1 + 3 + 1
    reset = httpx.post(f"{srv.base_url}/_emulator/reset", timeout=10).json()
    assert reset["total"] == 0 and reset["meter"]["calls"] == 0
    assert rows(c) != []  # data survives a counters reset
    httpx.post(f"{srv.base_url}/_emulator/reset", json={"data": True}, timeout=10)
    assert c.get("/tables").json() == {"Result": []}


def test_latency_is_per_call_and_concurrent_calls_overlap(start: Any) -> None:
    srv = start(CaspioConfig(latency_seconds=0.3))
    c = api(srv)
    t0 = time.perf_counter()
    c.get("/tables")
    assert time.perf_counter() - t0 >= 0.3
    results: list[int] = []
    threads = [threading.Thread(target=lambda: results.append(c.get("/tables").status_code))
               for _ in range(10)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    assert results == [200] * 10 and elapsed < 1.5, elapsed


def test_state_survives_a_restart(start: Any, tmp_path: Path) -> None:
    state = tmp_path / "world"
    srv = start(state=state)
    t = token(srv)
    c = httpx.Client(base_url=srv.v3, timeout=10, headers={"Authorization": f"Bearer {t['access_token']}"})
    make_table(c)
    seed(srv, c, "ap_sales", sample_rows(5))
    c.get("/tables")
    calls = stats(srv)["meter"]["calls"]
    srv.stop()
    assert (state / "caspio.sqlite").exists()
    again = start(state=state)
    c2 = httpx.Client(base_url=again.v3, timeout=10,
                      headers={"Authorization": f"Bearer {t['access_token']}"})  # the old token still works
    assert c2.get("/tables").json() == {"Result": ["ap_sales"]}
    assert [r["row_key"] for r in rows(c2)] == [f"k{i:05d}" for i in range(5)]
    assert stats(again)["meter"]["calls"] == calls + 2
    assert c2.post("/tables/ap_sales/records", params={"response": "rows"},
                   json={"row_key": "new"}).json()["Result"][0]["PK_ID"] == 6


# --- v4 bulk --------------------------------------------------------------------------------------
def test_v4_bulk_insert_201_and_207_partial_results(srv: RunningCaspio) -> None:
    c = api(srv)
    make_table(c)
    tables = c.get(f"{srv.v4}/tables").json()
    tid = tables["data"][0]["tableId"]
    assert re.fullmatch(r"[a-z0-9]{6}", tid)
    bulk = f"{srv.v4}/tables/{tid}/records/bulk"
    r = c.post(bulk, json=[{"row_key": "a"}, {"row_key": "b"}])
    assert r.status_code == 201 and r.json() == {"PK_ID": [1, 2]}
    r = c.post(bulk, json=[{"row_key": "c"}, {"row_key": "a"}, {"row_key": "d", "visits": "x"},
                           {"row_key": "e", "nope": 1}, {"row_key": "f"}])
    assert r.status_code == 207
    data = r.json()["data"]
    assert [d["status"] for d in data] == [201, 400, 400, 404, 201]
    assert data[0]["PK_ID"] is not None and data[1]["PK_ID"] is None
    assert [d["error"]["Code"] if d["error"] else None for d in data] == [
        None, "SqlServerError", "InvalidInputValue", "FieldNotFound", None]
    assert sorted(x["row_key"] for x in rows(c)) == ["a", "b", "c", "f"]
    assert c.post(bulk, json=[{"row_key": f"z{i}"} for i in range(1001)]).status_code == 400
    assert c.post(bulk, json={"row_key": "single"}).status_code == 400
    assert c.post(f"{srv.v4}/tables/ap_sales/records/bulk", json=[{"row_key": "q"}]).status_code == 404
    body = c.post(bulk, json=[]).json()
    assert {"DocumentationUrl", "Hint"} <= set(body)
    assert stats(srv)["by_route"]["POST /integrations/rest/v4/tables/{table_id}/records/bulk"] == 6


# --- views ---------------------------------------------------------------------------------------
def test_views_are_read_only_with_pk_id_as_joined_source_ids(srv: RunningCaspio) -> None:
    c = api(srv)
    make_table(c)
    make_table(c, "ap_regions", [{"Name": "code", "Type": "STRING", "Unique": True},
                                 {"Name": "label", "Type": "STRING"}])
    seed(srv, c, "ap_sales", sample_rows(4))
    seed(srv, c, "ap_regions", [{"code": "NW", "label": "North-West"}, {"code": "SE", "label": "South-East"}])
    r = httpx.post(f"{srv.base_url}/_emulator/views", timeout=10, json={
        "Name": "v_sales", "Tables": ["ap_sales", "ap_regions"],
        "Joins": [{"Left": "ap_sales.region", "Right": "ap_regions.code", "Type": "INNER"}],
        "Fields": ["ap_sales.row_key", "ap_sales.visits", "ap_regions.label"]})
    assert r.status_code == 201, r.text
    assert c.get("/views").json() == {"Result": ["v_sales"]}
    assert c.get("/views/V_SALES").json() == {"Result": {"Name": "v_sales", "Note": ""}}
    assert [f["Name"] for f in c.get("/views/v_sales/fields").json()["Result"]] == [
        "ap_sales_row_key", "ap_sales_visits", "ap_regions_label"]
    got = c.get("/views/v_sales/records", params={"q.orderBy": "ap_sales_visits"}).json()["Result"]
    assert got == [  # 'nw' joins 'NW': comparisons ignore case
        {"PK_ID": "1,1", "ap_sales_row_key": "k00000", "ap_sales_visits": 0, "ap_regions_label": "North-West"},
        {"PK_ID": "2,2", "ap_sales_row_key": "k00001", "ap_sales_visits": 1, "ap_regions_label": "South-East"},
        {"PK_ID": "3,1", "ap_sales_row_key": "k00002", "ap_sales_visits": 2, "ap_regions_label": "North-West"}]
    one = c.get("/views/v_sales/records", params={"q.where": "PK_ID = '2,2'"}).json()["Result"]
    assert [x["ap_sales_visits"] for x in one] == [1]
    assert_error(c.post("/views/v_sales/records", json={"ap_sales_row_key": "x"}), 405, "MethodNotAllowed")
    assert_error(c.get(f"{srv.base_url}/rest/v2/views/v_sales/fields"), 404, "ObjectNotFound")  # v3 only
    assert_error(c.delete("/tables/ap_regions"), 400, "IncorrectBodyParameter")  # used by the view


# --- outgoing webhooks ----------------------------------------------------------------------------
class Receiver:
    """A loopback HTTP endpoint that records webhook POSTs; the first ``fail`` answer 500."""

    def __init__(self, fail: int = 0) -> None:
        import http.server

        self.messages: list[tuple[dict, bytes]] = []
        self.fail = fail
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if outer.fail > 0:
                    outer.fail -= 1
                    self.send_response(500)
                else:
                    outer.messages.append((dict(self.headers), body))
                    self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait(self, n: int, timeout: float = 10.0) -> list[dict]:
        import json

        deadline = time.monotonic() + timeout
        while len(self.messages) < n and time.monotonic() < deadline:
            time.sleep(0.02)
        return [json.loads(b) for _, b in self.messages]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def test_webhook_crud_unique_name_and_url_and_secret_on_create(srv: RunningCaspio, receiver: Receiver) -> None:
    c = api(srv)
    make_table(c)
    r = c.post("/outgoingWebhooks", json={"Name": "hook", "OutgoingUrls": [receiver.url], "CallThrottling": 5})
    assert r.status_code == 201
    hook = r.json()
    assert re.fullmatch(r"[a-z0-9]{6}", hook["Id"]) and hook["Secret"]
    assert_error(c.post("/outgoingWebhooks", json={"Name": "HOOK", "OutgoingUrls": ["https://x.test/a"]}),
                 400, "IncorrectBodyParameter")
    assert_error(c.post("/outgoingWebhooks", json={"Name": "other", "OutgoingUrls": [receiver.url]}),
                 400, "IncorrectBodyParameter")
    assert_error(c.post("/outgoingWebhooks", json={"Name": "bad", "OutgoingUrls": ["ftp://x"]}),
                 400, "IncorrectBodyParameter")
    assert c.get("/outgoingWebhooks").json()["Result"] == [hook]
    ev = c.post(f"/outgoingWebhooks/{hook['Id']}/events",
                json={"EventType": "table.recordInsert", "ObjectName": "AP_SALES"})
    assert ev.status_code == 201 and ev.json()["ObjectName"] == "ap_sales"
    assert_error(c.post(f"/outgoingWebhooks/{hook['Id']}/events",
                        json={"EventType": "table.recordInsert", "ObjectName": "ap_sales"}),
                 400, "IncorrectBodyParameter")  # one insert event per table and webhook
    assert_error(c.post(f"/outgoingWebhooks/{hook['Id']}/events",
                        json={"EventType": "table.recordDelete", "ObjectName": "ap_sales",
                              "ObjectFields": ["sales"]}), 400, "IncorrectBodyParameter")
    assert_error(c.post(f"/outgoingWebhooks/{hook['Id']}/events",
                        json={"EventType": "table.recordChange", "ObjectName": "ap_sales"}),
                 400, "IncorrectBodyParameter")
    eid = ev.json()["Id"]
    assert c.put(f"/outgoingWebhooks/{hook['Id']}/events/{eid}", json={"Enabled": False}).status_code == 200
    assert c.get(f"/outgoingWebhooks/{hook['Id']}/events/{eid}").json()["Result"]["Enabled"] is False
    assert c.delete(f"/outgoingWebhooks/{hook['Id']}").status_code == 200
    assert_error(c.get(f"/outgoingWebhooks/{hook['Id']}/events"), 404, "ObjectNotFound")


def test_rest_writes_post_the_payload_to_subscribed_webhooks(srv: RunningCaspio, receiver: Receiver) -> None:
    c = api(srv)
    make_table(c)
    hook = c.post("/outgoingWebhooks", json={"Name": "hook", "OutgoingUrls": [receiver.url]}).json()
    events = f"/outgoingWebhooks/{hook['Id']}/events"
    for body in ({"EventType": "table.recordInsert", "ObjectName": "ap_sales"},
                 {"EventType": "table.recordUpdate", "ObjectName": "ap_sales", "ObjectFields": ["sales"]},
                 {"EventType": "table.recordDelete", "ObjectName": "ap_sales",
                  "EventSources": ["DataPages"]}):  # REST deletes do not fire this one
        assert c.post(events, json=body).status_code == 201
    c.post("/tables/ap_sales/records", json={"row_key": "a", "sales": 1, "region": "NW"})
    c.post("/tables/ap_sales/records", json={"row_key": "b", "sales": 2, "region": "NW"})
    c.put("/tables/ap_sales/records", params={"q.where": "region = 'NW'"}, json={"sales": 2})  # only 'a' changes
    c.put("/tables/ap_sales/records", params={"q.where": "row_key = 'a'"}, json={"region": "SE"})  # not watched
    c.delete("/tables/ap_sales/records", params={"q.where": "row_key = 'b'"})
    got = receiver.wait(3)
    time.sleep(0.2)  # anything else would have arrived by now
    assert len(receiver.messages) == 3
    by_type = sorted(got, key=lambda m: (m["eventType"], m["data"][0]["row_key"]))
    assert [(m["eventType"], [d["row_key"] for d in m["data"]]) for m in by_type] == [
        ("table.recordInsert", ["a"]), ("table.recordInsert", ["b"]), ("table.recordUpdate", ["a"])]
    first = by_type[0]
    assert set(first) == {"eventId", "messageId", "webhookId", "accountId", "secret", "eventDate",
                          "eventType", "objectName", "data"}
    assert first["secret"] == hook["Secret"] and first["webhookId"] == hook["Id"]
    assert first["objectName"] == "ap_sales" and first["data"][0]["PK_ID"] == 1
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d", first["eventDate"])
    assert by_type[2]["data"][0]["sales"] == 2
    assert stats(srv)["meter"]["calls"] == 10 + 3  # ten REST calls and the three deliveries


def test_webhook_custom_template_and_retries_are_logged(srv: RunningCaspio) -> None:
    receiver = Receiver(fail=2)
    try:
        httpx.post(f"{srv.base_url}/_emulator/config", json={"webhook_retry_delay_seconds": 0.05}, timeout=10)
        c = api(srv)
        make_table(c)
        hook = c.post("/outgoingWebhooks", json={"Name": "n8n-1", "OutgoingUrls": [receiver.url]}).json()
        template = ("{'secret': '[@out-hook:secret]', 'eventType': '[@out-hook:eventType]', "
                    "'data': [{'PK_ID': '[@field:PK_ID]', 'row_key': '[@field:row_key]'}]}")
        assert c.post(f"/outgoingWebhooks/{hook['Id']}/events", json={
            "EventType": "table.recordInsert", "ObjectName": "ap_sales",
            "CustomPayloadTemplate": template}).status_code == 201
        c.post("/tables/ap_sales/records", json={"row_key": "it's \"quoted\""})
        (msg,) = receiver.wait(1)
        assert msg == {"secret": hook["Secret"], "eventType": "table.recordInsert",
                       "data": [{"PK_ID": "1", "row_key": "it's \"quoted\""}]}
        attempts = httpx.get(f"{srv.base_url}/_emulator/webhooks", timeout=10).json()["attempts"]
        assert [(a["attempt"], a["status"], a["delivered"]) for a in attempts] == [
            (1, 500, False), (2, 500, False), (3, 200, True)]
    finally:
        receiver.close()


# --- the HTML view --------------------------------------------------------------------------------
def test_html_view_lists_tables_and_escapes_every_value(srv: RunningCaspio) -> None:
    c = api(srv)
    make_table(c, "ap_view", [{"Name": "label", "Type": "STRING", "Label": "<b>Label</b>"}])
    c.post("/tables/ap_view/records", json={"label": "<script>alert('x')</script> & more"})
    index = httpx.get(f"{srv.base_url}/_emulator/", timeout=10)
    assert index.status_code == 200 and "ap_view" in index.text and "text/html" in index.headers["content-type"]
    page = httpx.get(f"{srv.base_url}/_emulator/tables/ap_view", timeout=10).text
    assert "<script>" not in page and "<b>Label</b>" not in page
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; more" in page
    assert httpx.get(f"{srv.base_url}/_emulator/tables/%3Cx%3E", timeout=10).status_code == 404


# --- the sandbox CLI -----------------------------------------------------------------------------
def test_sandbox_serve_mounts_caspio_at_slash_caspio(tmp_path: Path) -> None:
    from athena_pipeline.sandbox.world import World, WorldOptions

    world = tmp_path / "world"
    World(root=world, options=WorldOptions(providers=1, patients=10), current_date=__import__(
        "datetime").date(2026, 1, 1)).save()
    exe = Path(sys.executable).with_name("athena-pipeline")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CASPIO_", "SANDBOX_"))}
    proc = subprocess.Popen(
        [str(exe), "--log-level", "warning", "sandbox", "serve", "--world", str(world), "--port", "0",
         "--caspio-latency", "0", "--caspio-allowance", "3", "--caspio-faults", "server_error=1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout is not None
        proc.stdout.readline()  # the athenahealth line
        line = proc.stdout.readline()
        m = re.search(r"caspio emulator: base=(http://127\.0\.0\.1:\d+/caspio) token=(\S+) .*"
                      r"client_id=sandbox-caspio-client client_secret=sandbox-caspio-secret", line)
        assert m, line
        base, token_url = m.groups()
        t = httpx.post(token_url, data={"grant_type": "client_credentials", **CREDS}, timeout=10).json()
        h = {"Authorization": f"Bearer {t['access_token']}"}
        assert httpx.get(f"{base}/integrations/rest/v3/tables", headers=h, timeout=10).status_code == 500
        assert httpx.get(f"{base}/integrations/rest/v3/tables", headers=h, timeout=10).json() == {"Result": []}
        assert httpx.get(f"{base}/_emulator/stats", timeout=10).json()["meter"]["allowance"] == 3
        assert httpx.get(f"{base[:-len('/caspio')]}/fhir/r4/metadata", timeout=10).status_code == 200
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    assert (world / "caspio.sqlite").exists()


def test_config_and_faults_reject_bad_values() -> None:
    with pytest.raises(ValueError):
        CaspioConfig(unordered_paging="random")
    with pytest.raises(ValueError):
        CaspioFaults("no_such_fault=1")
    assert replace(CaspioConfig(), latency_seconds=0.3).latency_seconds == 0.3
