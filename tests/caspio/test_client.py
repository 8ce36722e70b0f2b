"""The Caspio client against the Caspio emulator on loopback: each REST quirk, and the client
respecting it (what went over the wire is observed with httpx event hooks; what Caspio holds is
read back)."""

from __future__ import annotations

import datetime as dt
import threading
import time
import uuid
from collections.abc import Iterator
from decimal import Decimal

import duckdb
import httpx
import pytest

from athena_pipeline.caspio import (
    CaspioAuthError,
    CaspioBudgetExceeded,
    CaspioClient,
    CaspioError,
    CaspioRetryExhausted,
    FieldSpec,
    quote_literal,
)
from athena_pipeline.caspio.client import encode_record, encode_value
from athena_pipeline.caspio.where import MAX_URI, in_clauses
from athena_pipeline.http import RetryPolicy
from athena_pipeline.sandbox.caspio.server import RunningCaspio
from athena_pipeline.settings import Settings
from athena_pipeline.warehouse.audit import ensure_tables, record_api_calls
from tests.caspio import Wire, caspio_server, make_client

FIELDS = [FieldSpec("row_key", "STRING", unique=True), FieldSpec("name", "STRING"),
          FieldSpec("amount", "CURRENCY"), FieldSpec("visits", "INTEGER"), FieldSpec("day", "DATE/TIME"),
          FieldSpec("active", "YES/NO")]
#: A value that must never show up in an error message or a log line.
SECRET_VALUE = "Jane Q. Patient 1961-04-12"


def row(i: int, **extra) -> dict:
    return {"row_key": f"k{i:05d}", "name": f"n{i}", "amount": Decimal("12.50") + i, "visits": i,
            "day": dt.date(2026, 1, 1) + dt.timedelta(days=i), "active": i % 2 == 0, **extra}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningCaspio]:
    with caspio_server(tmp_path_factory.mktemp("caspio")) as srv:
        yield srv


@pytest.fixture
def caspio(server: RunningCaspio) -> Iterator[RunningCaspio]:
    """The shared emulator with faults disarmed and counters zeroed."""
    server.faults.reset()
    yield server
    server.faults.reset()


_tables = iter(range(10_000))


def new_table(client: CaspioClient, rows: list[dict] | None = None) -> str:
    """A fresh table (unique name per test) holding ``rows``, written through a v4 bulk insert."""
    name = f"t{next(_tables)}_{int(time.time() * 1000) % 100000}"
    client.create_table(name, FIELDS)
    if rows:
        with CaspioClient(client.base_url, "sandbox-caspio-client", "sandbox-caspio-secret",
                          api_version="v4") as bulk:
            assert bulk.insert_many(name, rows).failed == []
    return name


def all_rows(client: CaspioClient, table: str) -> list[dict]:
    return [r for page in client.iter_records(table) for r in page]


# --- auth ---------------------------------------------------------------------------------------------
def test_token_is_fetched_once_with_form_credentials_and_reused(caspio):
    with make_client(caspio) as client:
        wire = Wire().attach(client)
        for _ in range(4):
            client.list_tables()
        tokens = wire.calls("POST", "/oauth/token")
        assert len(tokens) == 1 and client.auth.fetches == 1
        assert tokens[0].body["grant_type"] == "client_credentials"
        assert tokens[0].body["client_id"] == "sandbox-caspio-client"
        assert all(s.authorization.startswith("Bearer ") for s in wire.calls("GET"))
        assert client.calls_made == 5


def test_basic_credentials_work_too(caspio):
    with make_client(caspio, credentials="basic") as client:
        wire = Wire().attach(client)
        client.list_tables()
        token = wire.calls("POST", "/oauth/token")[0]
        assert token.authorization.startswith("Basic ") and "client_secret" not in token.body


def test_token_is_renewed_ahead_of_expiry_with_the_refresh_token(tmp_path):
    with caspio_server(tmp_path, token_lifetime_seconds=2) as srv, make_client(srv) as client:
        wire = Wire().attach(client)
        client.list_tables()
        time.sleep(1.1)  # past lifetime - min(60 s, lifetime / 2)
        client.list_tables()
        grants = [s.body["grant_type"] for s in wire.calls("POST", "/oauth/token")]
        assert grants == ["client_credentials", "refresh_token"]
        assert client.auth.refreshes == 1
        assert [s.method for s in wire.sent].count("GET") == 2  # no 401 on the way


def test_a_refused_refresh_token_falls_back_to_client_credentials(tmp_path):
    with caspio_server(tmp_path, token_lifetime_seconds=2, refresh_token_lifetime_seconds=0.5) as srv, \
            make_client(srv) as client:
        wire = Wire().attach(client)
        client.list_tables()
        time.sleep(1.1)
        assert client.list_tables() == []
        grants = [s.body["grant_type"] for s in wire.calls("POST", "/oauth/token")]
        assert grants == ["client_credentials", "refresh_token", "client_credentials"]


def test_one_token_call_in_flight_whatever_the_thread_count(caspio):
    with make_client(caspio) as client:
        wire = Wire().attach(client)
        barrier = threading.Barrier(12)
        tokens: list[str] = []

        def worker() -> None:
            barrier.wait()
            tokens.append(client.auth.token())

        threads = [threading.Thread(target=worker) for _ in range(12)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(set(tokens)) == 1 and len(wire.calls("POST", "/oauth/token")) == 1


def test_a_401_gets_one_new_token_and_one_retry(caspio):
    with make_client(caspio) as client:
        client.list_tables()
        wire = Wire().attach(client)
        caspio.faults.set("expire_token", 1)
        assert client.list_tables() == client.list_tables()
        statuses = [r.status for r in client.call_records()]
        assert statuses.count(401) == 1
        assert len(wire.calls("POST", "/oauth/token")) == 1


def test_the_stale_token_400_gets_one_new_token_and_one_retry(caspio):
    with make_client(caspio) as client:
        client.list_tables()
        wire = Wire().attach(client)
        caspio.faults.set("stale_token", 1)
        client.list_tables()
        gets = wire.calls("GET", "/tables")
        assert len(gets) == 2 and gets[0].authorization != gets[1].authorization
        assert len(wire.calls("POST", "/oauth/token")) == 1


def test_expired_token_answered_400_by_config_is_refreshed(tmp_path):
    with caspio_server(tmp_path, token_lifetime_seconds=2, stale_token_400=True) as srv, \
            make_client(srv) as client:
        client.list_tables()
        client.auth._refresh_at = time.time() + 3600  # pretend we did not notice the expiry
        time.sleep(2.1)
        assert client.list_tables() == []
        assert [r.status for r in client.call_records()].count(400) == 1


def test_a_second_401_is_an_auth_error(caspio):
    with make_client(caspio) as client:
        client.list_tables()
        caspio.faults.set("expire_token", 2)
        with pytest.raises(CaspioAuthError) as info:
            client.list_tables()
        assert info.value.status == 401 and not info.value.transient


def test_wrong_secret_is_an_auth_error_without_the_secret(caspio):
    with CaspioClient(caspio.base_url, "sandbox-caspio-client", "not-the-secret-xyz",
                      retry=RetryPolicy(max_attempts=2, backoff_base=0.01)) as client, \
            pytest.raises(CaspioAuthError) as info:
        client.list_tables()
    assert "not-the-secret-xyz" not in str(info.value) and "oauth/token" in str(info.value)


# --- reads ---------------------------------------------------------------------------------------------
def test_paging_orders_by_pk_id_with_page_size_and_never_sends_limit(caspio):
    with make_client(caspio) as client:
        table = new_table(client, [row(i) for i in range(23)])
        wire = Wire().attach(client)
        pages = list(client.iter_records(table, page_size=5))
        assert [len(p) for p in pages] == [5, 5, 5, 5, 3]
        rows = [r for p in pages for r in p]
        assert [r["row_key"] for r in rows] == [f"k{i:05d}" for i in range(23)]
        assert [r["PK_ID"] for r in rows] == sorted(r["PK_ID"] for r in rows)
        gets = wire.calls("GET", "/records")
        for n, sent in enumerate(gets, 1):
            params = dict(sent.params)
            assert params["q.orderBy"] == "PK_ID" and params["q.pageSize"] == "5"
            assert params["q.pageNumber"] == str(n)
            assert not any(k.lower() == "q.limit" for k, _ in sent.params)
        # values come back typed the Caspio way
        assert rows[0]["day"] == "2026-01-01T00:00:00" and rows[0]["active"] is True
        assert rows[1]["amount"] == 13.5


def test_an_exact_multiple_of_the_page_size_ends_on_an_empty_page(caspio):
    with make_client(caspio) as client:
        table = new_table(client, [row(i) for i in range(10)])
        wire = Wire().attach(client)
        assert [len(p) for p in client.iter_records(table, page_size=5)] == [5, 5]
        assert len(wire.calls("GET", "/records")) == 3


def test_page_size_outside_5_to_1000_is_refused_before_sending(caspio):
    with make_client(caspio) as client:
        for size in (4, 1001):
            with pytest.raises(ValueError):
                next(client.iter_records("anything", page_size=size))
        assert client.calls_made == 0


def test_select_where_and_count(caspio):
    with make_client(caspio) as client:
        table = new_table(client, [row(i, name="O'Brien" if i % 3 == 0 else "Zoë") for i in range(12)])
        wire = Wire().attach(client)
        picked = [r for p in client.iter_records(table, select=["row_key", "name"],
                                                 where=f"name = {quote_literal(chr(79) + chr(39) + 'Brien')}")
                  for r in p]
        assert {r["row_key"] for r in picked} == {f"k{i:05d}" for i in range(0, 12, 3)}
        assert set(picked[0]) == {"row_key", "name"} | ({"PK_ID"} & set(picked[0]))
        unicode = [r for p in client.iter_records(table, where=f"name = {quote_literal('Zoë')}") for r in p]
        assert len(unicode) == 8
        assert client.count_records(table) == 12
        assert len(wire.calls("GET", "/records")) == 3  # the count is one call


def test_a_uri_over_2047_characters_is_refused_before_sending(caspio):
    with make_client(caspio) as client:
        table = new_table(client)
        sent = client.calls_made
        where = "row_key IN (" + ",".join(quote_literal(f"{i:032x}") for i in range(80)) + ")"
        with pytest.raises(CaspioError) as info:
            next(client.iter_records(table, where=where))
        assert info.value.code == "UriTooLong" and info.value.table == table
        assert client.calls_made == sent


# --- writes ---------------------------------------------------------------------------------------------
def test_v3_inserts_post_one_object_each_in_parallel_bounded_by_concurrency(tmp_path):
    with caspio_server(tmp_path, latency_seconds=0.05) as srv, make_client(srv, concurrency=3) as client:
        table = new_table(client)
        wire = Wire().attach(client)
        result = client.insert_many(table, [row(i) for i in range(12)])
        assert result.inserted == 12 and result.failed == []
        posts = wire.calls("POST", "/records")
        assert len(posts) == 12 and all(isinstance(p.body, dict) for p in posts)
        assert 2 <= wire.max_in_flight <= 3
        assert posts[0].body["day"].endswith("T00:00:00") and isinstance(posts[0].body["amount"], float | int)
        assert client.count_records(table) == 12


def test_refused_rows_are_reported_by_index_and_never_quote_a_value(caspio):
    with make_client(caspio) as client:
        table = new_table(client, [row(0)])
        rows = [row(1), row(0, name=SECRET_VALUE), row(2, nickname=SECRET_VALUE),
                row(3, name=SECRET_VALUE + "x" * 300), row(4, visits=SECRET_VALUE), row(5)]
        result = client.insert_many(table, rows)
        assert result.inserted == 2
        codes = {i: code for i, code, _ in result.failed}
        assert codes == {1: "SqlServerError", 2: "FieldNotFound", 3: "InvalidInputValue", 4: "InvalidInputValue"}
        assert result.duplicates == [1]
        messages = " ".join(m for _, _, m in result.failed)
        assert SECRET_VALUE not in messages and "Jane" not in messages
        assert "nickname" in messages and "name" in messages  # names, not values
        assert {r["row_key"] for r in all_rows(client, table)} == {"k00000", "k00001", "k00005"}


def test_single_insert_errors_name_table_and_field_and_carry_caspio_ids(caspio):
    with make_client(caspio) as client:
        table = new_table(client)
        with pytest.raises(CaspioError) as info:
            client.insert(table, {"row_key": "a", "nickname": SECRET_VALUE})
        err = info.value
        assert (err.status, err.code, err.table, err.field) == (404, "FieldNotFound", table, "nickname")
        assert err.caspio_request_id and err.request_id and err.caspio_request_id in str(err)
        assert SECRET_VALUE not in str(err) and SECRET_VALUE not in repr(err.__dict__)
        with pytest.raises(CaspioError) as info:
            client.insert("no_such_table", {"a": 1})
        assert (info.value.status, info.value.code, info.value.table) == (404, "ObjectNotFound", "no_such_table")
        assert client.describe_table("no_such_table") is None


def test_insert_into_a_post_only_accepts_objects_and_the_client_never_sends_arrays(caspio):
    # the quirk itself (array POST => 400 IncorrectBodyParameter), then the client respecting it
    with make_client(caspio) as client:
        table = new_table(client)
        token = client.auth.token()
        r = httpx.post(f"{caspio.v3}/tables/{table}/records", json=[encode_record(row(1), table)],
                       headers={"Authorization": f"Bearer {token}"}, timeout=10)
        assert r.status_code == 400 and r.json()["Code"] == "IncorrectBodyParameter"
        wire = Wire().attach(client)
        client.insert(table, row(1))
        assert isinstance(wire.calls("POST", "/records")[0].body, dict)


def test_500_invalid_input_is_a_row_error_not_retried(tmp_path):
    with caspio_server(tmp_path, invalid_input_status=500) as srv, make_client(srv) as client:
        table = new_table(client)
        wire = Wire().attach(client)
        result = client.insert_many(table, [row(1, visits="many")])
        assert result.failed[0][1] == "InvalidInputValue"
        assert len(wire.calls("POST", "/records")) == 1


def test_update_and_delete_by_where_return_records_affected(caspio):
    with make_client(caspio) as client:
        table = new_table(client, [row(i) for i in range(6)])
        assert client.update_where(table, "visits >= 3", {"name": "late", "active": True}) == 3
        assert client.update_where(table, "visits > 100", {"name": "none"}) == 0
        assert client.delete_where(table, "visits < 2") == 2
        left = all_rows(client, table)
        assert sorted(r["name"] for r in left) == ["late", "late", "late", "n2"]
        for bad in ("", "  "):
            with pytest.raises(ValueError):
                client.delete_where(table, bad)
            with pytest.raises(ValueError):
                client.update_where(table, bad, {"name": "x"})


def test_keyed_updates_escape_quotes_and_report_missing_keys(caspio):
    keys = ["O'Brien", "it''s", "Zoë", "x' OR '1'='1", "plain"]
    with make_client(caspio, concurrency=3) as client:
        table = new_table(client, [row(i, row_key=k) for i, k in enumerate(keys)] + [row(9)])
        missing: list = []
        affected = client.update_many(table, "row_key", [{"row_key": k, "name": f"u{i}"} for i, k in enumerate(keys)]
                                      + [{"row_key": "gone", "name": "x"}], missing=missing)
        assert affected == 5 and missing == ["gone"]
        by_key = {r["row_key"]: r["name"] for r in all_rows(client, table)}
        assert by_key == {**{k: f"u{i}" for i, k in enumerate(keys)}, "k00009": "n9"}
        # the injection attempt deleted nothing else either
        assert client.delete_keys(table, "row_key", ["x' OR '1'='1", "O'Brien"]) == 2
        assert client.count_records(table) == 4


def test_long_in_lists_are_split_to_stay_within_2047_characters(caspio):
    keys = [f"{i:032x}" for i in range(300)]
    with make_client(caspio) as client:
        table = new_table(client, [row(i, row_key=k) for i, k in enumerate(keys)])
        # the quirk: one DELETE with every key is a 414
        token = client.auth.token()
        clause = "row_key IN (" + ",".join(quote_literal(k) for k in keys[:250]) + ")"
        r = httpx.delete(f"{caspio.v3}/tables/{table}/records", params={"q.where": clause},
                         headers={"Authorization": f"Bearer {token}"}, timeout=10)
        assert r.status_code == 414
        wire = Wire().attach(client)
        assert client.delete_keys(table, "row_key", keys[:250]) == 250
        deletes = wire.calls("DELETE", "/records")
        assert len(deletes) > 3 and all(d.uri_length <= MAX_URI for d in deletes)
        assert max(d.uri_length for d in deletes) > MAX_URI - 60  # packed, not one key per call
        assert sorted(r["row_key"] for r in all_rows(client, table)) == keys[250:]


def test_in_clauses_pack_by_encoded_length():
    values = [f"v{i}'é" for i in range(400)]
    clauses = in_clauses("row_key", values, 500, prefix_length=100)
    encoded = [len(str(httpx.QueryParams({"q.where": c}))) - len("q.where=") for c in clauses]
    assert all(100 + n <= 500 for n in encoded) and min(encoded[:-1]) > 500 - 100 - 30
    assert [v for c in clauses for v in c[len("row_key IN ("):-1].split(",")] == \
        [quote_literal(v) for v in values]
    with pytest.raises(ValueError) as info:
        in_clauses("row_key", ["x" * 600], 500)
    assert "xxxx" not in str(info.value)


def test_values_are_encoded_the_way_caspio_takes_them():
    assert encode_value(dt.datetime(2026, 1, 2, 3, 4, 5, 999)) == "2026-01-02T03:04:05"
    aware = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.timezone(dt.timedelta(hours=-5)))
    assert encode_value(aware) == "2026-01-02T08:04:05"
    assert encode_value(dt.date(2026, 1, 2)) == "2026-01-02T00:00:00"
    assert encode_value(Decimal("12.00")) == 12 and encode_value(Decimal("12.34")) == 12.34
    assert encode_value(float("nan")) is None and encode_value(True) is True
    assert encode_value(dt.time(8, 30)) == "08:30:00"
    assert encode_value(uuid.UUID(int=1)) == "00000000-0000-0000-0000-000000000001"
    with pytest.raises(TypeError, match="ap_t, field f"):
        encode_record({"f": object()}, "ap_t")


def test_quote_literal():
    assert quote_literal("O'Brien") == "'O''Brien'"
    assert quote_literal("Zoë") == "N'Zoë'"
    assert quote_literal(12) == "12" and quote_literal(True) == "1" and quote_literal(None) == "NULL"
    assert quote_literal(Decimal("1.50")) == "1.50"
    assert quote_literal(dt.date(2026, 1, 2)) == "'2026-01-02'"
    assert quote_literal(dt.datetime(2026, 1, 2, 3, 4, 5)) == "'2026-01-02T03:04:05'"
    with pytest.raises(ValueError):
        quote_literal(float("nan"))


# --- retries, budget, audit -------------------------------------------------------------------------
def test_429_and_5xx_are_retried_and_every_attempt_is_counted(caspio):
    with make_client(caspio) as client:
        table = new_table(client)
        before = client.calls_made
        client.call_records()
        caspio.faults.set("throttle", 2)
        caspio.faults.set("server_error", 2, arg=503)
        client.insert(table, row(1))
        assert [r.status for r in client.call_records()] == [429, 429, 503, 503, 201]
        assert client.calls_made == before + 5
        assert client.count_records(table) == 1


def test_a_5xx_storm_exhausts_retries_with_a_transient_error(caspio):
    with make_client(caspio, retry=RetryPolicy(max_attempts=3, backoff_base=0.01, backoff_max=0.02)) as client:
        table = new_table(client)
        caspio.faults.set("server_error", 10)
        with pytest.raises(CaspioRetryExhausted) as info:
            client.insert(table, row(1))
        assert info.value.transient and info.value.status == 500 and info.value.table == table
        assert info.value.code == "InternalError"


def test_a_write_answered_500_after_it_landed_comes_back_as_a_duplicate(caspio):
    with make_client(caspio, concurrency=1) as client:
        table = new_table(client)
        caspio.faults.set("error_after_write", 1)
        result = client.insert_many(table, [row(1), row(2)])
        assert result.inserted == 1 and result.duplicates == [0]
        assert client.count_records(table) == 2  # no duplicate row in Caspio


def test_the_call_that_would_exceed_the_budget_is_not_sent(caspio):
    with make_client(caspio, budget=3) as client:
        wire = Wire().attach(client)
        client.list_tables()
        client.list_tables()
        with pytest.raises(CaspioBudgetExceeded) as info:
            client.list_tables()
        assert (info.value.calls_made, info.value.budget) == (3, 3)
        assert "3 call(s) made, budget 3" in str(info.value)
        assert len(wire.sent) == 3 and client.calls_made == 3


def test_a_batch_stopped_by_the_budget_reports_what_landed(caspio):
    with make_client(caspio) as setup:
        table = new_table(setup)
    with make_client(caspio, budget=5, concurrency=1) as client:
        with pytest.raises(CaspioBudgetExceeded) as info:
            client.insert_many(table, [row(i) for i in range(10)])
        partial = info.value.partial
        assert partial.inserted == 4 and info.value.table == table
        assert [i for i, code, _ in partial.failed if code == "NotAttempted"] == list(range(5, 10))
    with make_client(caspio) as check:
        assert check.count_records(table) == 4


def test_v4_bulk_inserts_1000_rows_a_call_and_reads_207_row_by_row(caspio):
    with make_client(caspio, api_version="v4") as client:
        table = new_table(client)
        rows = [row(i) for i in range(1500)]
        rows[7] = row(7, visits=SECRET_VALUE)
        rows[1203] = row(1203, nickname="x")
        wire = Wire().attach(client)
        result = client.insert_many(table, rows)
        bulk = wire.calls("POST", "/records/bulk")
        assert [len(b.body) for b in bulk] == [1000, 500]
        assert all("/integrations/rest/v4/" in b.path for b in bulk)
        assert result.inserted == 1498
        assert [(i, code) for i, code, _ in result.failed] == [(7, "InvalidInputValue"), (1203, "FieldNotFound")]
        assert SECRET_VALUE not in " ".join(m for _, _, m in result.failed)
        assert client.count_records(table) == 1498


def test_call_records_feed_the_audit_table_without_values(caspio, tmp_path):
    with make_client(caspio) as client:
        table = new_table(client, [row(1, row_key="a-secret-key")])
        client.delete_keys(table, "row_key", ["a-secret-key"])
        records = client.call_records()
        assert client.call_records() == []  # drained
    con = duckdb.connect(str(tmp_path / "warehouse.duckdb"))
    ensure_tables(con)
    rows = [{**r.to_dict(), "ts": dt.datetime.fromisoformat(r.ts)} for r in records]
    assert record_api_calls(con, rows, "run-1") == len(records)
    got = con.execute("SELECT system, method, path_template, status FROM audit.api_calls").fetchall()
    assert {s for s, *_ in got} == {"caspio"}
    assert ("caspio", "DELETE", f"/caspio/integrations/rest/v3/tables/{table}/records", 200) in got
    assert not any("secret" in p or "?" in p for _, _, p, _ in got)


def test_from_settings_reads_the_caspio_variables(caspio):
    settings = Settings.from_env({"CASPIO_BASE_URL": caspio.base_url, "CASPIO_API_VERSION": "v4",
                                  "CASPIO_CONCURRENCY": "6", "CASPIO_REQUESTS_PER_SECOND": "50",
                                  "CASPIO_CALL_BUDGET": "7"})
    with CaspioClient.from_settings(settings) as client:
        assert (client.api_version, client.concurrency, client.budget) == ("v4", 6, 7)
        assert client.list_tables() is not None and client.budget_left == 5
