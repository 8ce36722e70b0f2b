"""Data View: the sources (sandbox DuckDB file, Snowflake through fakesnow) and the raw loader.

A real sandbox world is generated once per module and moved 60 days forward with
``advance_world``; the file before and after the advance are two states of the "share". The
Snowflake path runs the real snowflake-connector-python against fakesnow's server on loopback.
"""

from __future__ import annotations

import datetime as dt
import shutil
from collections.abc import Iterator
from pathlib import Path

import duckdb
import pyarrow as pa
import pytest

from athena_pipeline.athena.dataview import (
    DataViewSource,
    DataViewTableMissing,
    DuckDBDataViewSource,
    SnowflakeDataViewSource,
    build_select,
    source_from_settings,
)
from athena_pipeline.athena.dataview_catalog import CATALOG
from athena_pipeline.settings import Settings
from athena_pipeline.warehouse.audit import get_watermark
from athena_pipeline.warehouse.connection import connect
from athena_pipeline.warehouse.dataview_loader import DataViewSchemaError, load_dataview_batches

ADVANCE_DAYS = 60


@pytest.fixture(scope="module")
def worlds(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A generated world's Data View before and after advancing it, and the two world clocks."""
    from athena_pipeline.sandbox.advance import advance_world
    from athena_pipeline.sandbox.generate import generate_world
    from athena_pipeline.sandbox.world import World, WorldOptions

    root = tmp_path_factory.mktemp("dataview")
    world = generate_world(root / "world", WorldOptions(providers=1, patients=300))
    before = root / "before.duckdb"
    shutil.copy(world.dataview_path, before)
    advance_world(world.root, ADVANCE_DAYS)
    after_world = World.load(world.root)
    # Window ends: one second after each world clock (LASTUPDATED <= clock, windows are half-open).
    return {"before": before, "after": world.dataview_path, "root": root,
            "t0": world.clock + dt.timedelta(seconds=1), "t1": after_world.clock + dt.timedelta(seconds=1)}


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "warehouse.duckdb"


def table_state(con: duckdb.DuckDBPyConnection, table: str, *, epoch_is_null: bool = False) -> tuple:
    """(rows, hash of every upstream column): the raw table's content without load bookkeeping.

    ``epoch_is_null`` reads TIMESTAMP 1970-01-01 as NULL: fakesnow encodes NULL timestamps as
    epoch 0 (its Arrow struct has no validity mask); the sandbox has no real 1970 timestamps.
    """
    cols = con.execute(
        "SELECT column_name, data_type FROM duckdb_columns() WHERE schema_name = 'raw_dataview' AND table_name = ? "
        "AND column_name NOT IN ('_loaded_at', '_run_id') ORDER BY column_name", [table.lower()]).fetchall()

    def value(c: str, t: str) -> str:
        if epoch_is_null and t == "TIMESTAMP":
            return f"CAST(nullif(\"{c}\", TIMESTAMP '1970-01-01') AS VARCHAR)"
        return f'CAST("{c}" AS VARCHAR)'
    expr = ", ".join(value(c, t) for c, t in cols)
    return con.execute(f'SELECT count(*), coalesce(bit_xor(hash({expr})), 0) FROM raw_dataview."{table.lower()}"'
                       ).fetchone()


def upstream_state(path: Path, table: str, columns: list[str]) -> tuple:
    con = duckdb.connect(str(path), read_only=True)
    try:
        expr = ", ".join(f'CAST("{c}" AS VARCHAR)' for c in sorted(columns))
        return con.execute(f'SELECT count(*), coalesce(bit_xor(hash({expr})), 0) FROM ATHENAONE."{table}"').fetchone()
    finally:
        con.close()


# --- the DuckDB source ------------------------------------------------------------------------
def test_the_duckdb_source_is_a_dataview_source_and_windows_are_half_open(worlds: dict) -> None:
    t0, t1 = worlds["t0"], worlds["t1"]
    with DuckDBDataViewSource(worlds["after"]) as src:
        assert isinstance(src, DataViewSource)
        cols = dict(src.columns("claim"))
        assert cols["CLAIMID"] == "BIGINT" and cols["LASTUPDATED"] == "TIMESTAMP"
        batches = list(src.fetch("CLAIM", start=t0, end=t1, batch_size=25))
        assert batches and all(b.num_rows <= 25 for b in batches)
        stamps = pa.concat_arrays([b.column("LASTUPDATED") for b in batches]).to_pylist()
        assert all(t0 <= s < t1 for s in stamps)
        # Aware datetimes are compared in UTC: the same window expressed at UTC+02:00.
        plus2 = dt.timezone(dt.timedelta(hours=2))
        same = sum(b.num_rows for b in src.fetch("CLAIM", start=t0.replace(tzinfo=dt.UTC).astimezone(plus2),
                                                 end=t1.replace(tzinfo=dt.UTC).astimezone(plus2)))
        assert same == len(stamps)
        with pytest.raises(ValueError, match="empty window"):
            list(src.fetch("CLAIM", start=t1, end=t0))


def test_incremental_windows_bring_only_new_and_changed_rows_including_soft_deletes(worlds: dict, db: Path) -> None:
    t0, t1 = worlds["t0"], worlds["t1"]
    totals = {"inserted": 0, "updated": 0, "soft_deleted": 0}
    with connect(db) as con:
        with DuckDBDataViewSource(worlds["before"]) as before:
            for entry in CATALOG:
                r = load_dataview_batches(con, entry.name, before.fetch(entry.name, end=t0),
                                          window=(None, t0), run_id="full")
                assert r.updated == 0 and r.inserted == r.received
        assert get_watermark(con, "dataview", "claim") == t0.replace(tzinfo=dt.UTC)
        first_appointments = table_state(con, "APPOINTMENT")

        with DuckDBDataViewSource(worlds["after"]) as after:
            for entry in CATALOG:
                start = get_watermark(con, "dataview", entry.name.lower())
                assert start == t0.replace(tzinfo=dt.UTC)
                r = load_dataview_batches(con, entry.name, after.fetch(entry.name, start=start, end=t1),
                                          window=(start, t1), run_id="incr")
                # Expectations straight from the two files: keys new in the window, keys whose row moved.
                key = " AND ".join(f'a."{k}" = b."{k}"' for k in entry.key_columns)
                ddb = duckdb.connect()
                ddb.execute(f"ATTACH '{worlds['before']}' AS b0 (READ_ONLY)")
                ddb.execute(f"ATTACH '{worlds['after']}' AS a0 (READ_ONLY)")
                new, changed = ddb.execute(f"""
                    SELECT count(*) FILTER (WHERE b."{entry.primary_key[0]}" IS NULL),
                           count(*) FILTER (WHERE b."{entry.primary_key[0]}" IS NOT NULL)
                    FROM a0.ATHENAONE."{entry.name}" a LEFT JOIN b0.ATHENAONE."{entry.name}" b ON {key}
                    WHERE a.LASTUPDATED >= ? AND a.LASTUPDATED < ?""", [t0, t1]).fetchone()
                ddb.close()
                assert (r.inserted, r.updated + r.unchanged) == (new, changed), entry.name
                assert r.received == new + changed
                for k in totals:
                    totals[k] += getattr(r, k)
                # After the window the raw table holds exactly what the share holds.
                columns = [c for c, _ in after.columns(entry.name)]
                assert table_state(con, entry.name) == upstream_state(worlds["after"], entry.name, columns), entry.name
        assert totals["inserted"] > 0 and totals["updated"] > 0
        # The advance soft-deleted an appointment: it arrives with the window and is stored, not dropped.
        assert totals["soft_deleted"] >= 1
        deleted = con.execute("""SELECT count(*) FROM raw_dataview.appointment
                                 WHERE DELETEDDATETIME >= ? AND _run_id = 'incr'""", [t0]).fetchone()[0]
        assert deleted >= 1
        assert table_state(con, "APPOINTMENT") != first_appointments
        assert get_watermark(con, "dataview", "appointment") == t1.replace(tzinfo=dt.UTC)


def test_a_full_refresh_twice_changes_nothing_the_second_time(worlds: dict, db: Path) -> None:
    with connect(db) as con, DuckDBDataViewSource(worlds["after"]) as src:
        first = load_dataview_batches(con, "TRANSACTION", src.fetch("TRANSACTION", batch_size=1000),
                                      window=(None, None), run_id="r1")
        state = table_state(con, "TRANSACTION")
        again = load_dataview_batches(con, "TRANSACTION", src.fetch("TRANSACTION", batch_size=1000),
                                      window=(None, None), run_id="r2")
        assert first.inserted == first.received > 1000
        assert (again.inserted, again.updated, again.unchanged) == (0, 0, first.received)
        assert table_state(con, "TRANSACTION") == state
        # With no window end the watermark is the newest LASTUPDATED loaded.
        newest = con.execute("SELECT max(LASTUPDATED) FROM raw_dataview.transaction").fetchone()[0]
        assert first.watermark == newest.replace(tzinfo=dt.UTC)
        assert con.execute("SELECT count(*) FROM raw_dataview.transaction WHERE _run_id = 'r2'").fetchone()[0] == 0


def two_practice_share(tmp_path: Path, source: Path) -> Path:
    """A share holding two practices: the world's PATIENT rows as context 195900 and again as 2."""
    path = tmp_path / "share.duckdb"
    con = duckdb.connect(str(path))
    con.execute(f"ATTACH '{source}' AS w (READ_ONLY)")
    con.execute("CREATE SCHEMA ATHENAONE")
    con.execute("""CREATE TABLE ATHENAONE.PATIENT AS
                   SELECT * FROM w.ATHENAONE.PATIENT
                   UNION ALL SELECT * REPLACE (2 AS CONTEXTID, 'Other practice' AS CONTEXTNAME) FROM w.ATHENAONE.PATIENT""")
    con.close()
    return path


def test_contextid_filters_one_practice_of_a_shared_table(worlds: dict, tmp_path: Path, db: Path) -> None:
    share = two_practice_share(tmp_path, worlds["after"])
    with DuckDBDataViewSource(share) as src, connect(db) as con:
        total = sum(b.num_rows for b in src.fetch("PATIENT"))
        only2 = list(src.fetch("PATIENT", context_ids=[2]))
        assert sum(b.num_rows for b in only2) * 2 == total
        assert set(pa.concat_arrays([b.column("CONTEXTID") for b in only2]).to_pylist()) == {2}
        assert list(src.fetch("PATIENT", context_ids=[999])) == []
        # The same PATIENTID in two practices is two rows: the key includes CONTEXTID.
        r = load_dataview_batches(con, "PATIENT", src.fetch("PATIENT", context_ids=[195900, 2]),
                                  window=(None, None), run_id="r")
        assert r.inserted == total
        assert con.execute("SELECT count(DISTINCT PATIENTID) * 2 FROM raw_dataview.patient").fetchone()[0] == total


def test_table_names_go_through_the_remap_hook(worlds: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               db: Path) -> None:
    share = tmp_path / "renamed.duckdb"
    con = duckdb.connect(str(share))
    con.execute(f"ATTACH '{worlds['after']}' AS w (READ_ONLY)")
    con.execute("CREATE SCHEMA ATHENAONE")
    con.execute("CREATE TABLE ATHENAONE.ERA_RECORD AS SELECT * FROM w.ATHENAONE.ERARECORD")
    con.close()
    monkeypatch.setenv("DATAVIEW_TABLE_MAP", '{"ERARECORD": "ERA_RECORD"}')
    sql, _ = build_select("athenahealth", "athenaone", "erarecord", start=None, end=None, context_ids=None)
    assert sql == 'SELECT * FROM "ATHENAHEALTH"."ATHENAONE"."ERA_RECORD"'
    with DuckDBDataViewSource(share) as src, connect(db) as c:
        r = load_dataview_batches(c, "ERARECORD", src.fetch("ERARECORD"), window=(None, None), run_id="r")
        assert r.inserted > 0
        assert c.execute("SELECT count(*) FROM raw_dataview.erarecord").fetchone()[0] == r.inserted
        monkeypatch.delenv("DATAVIEW_TABLE_MAP")
        with pytest.raises(DataViewTableMissing, match="ERARECORD"):
            list(src.fetch("ERARECORD"))


# --- loader rules on hand-made batches --------------------------------------------------------------
def provider_batch(rows: list[tuple[int, str, str | None, dt.datetime]], **extra: list) -> pa.RecordBatch:
    data = {"CONTEXTID": pa.array([195900] * len(rows), pa.int64()),
            "PROVIDERID": pa.array([r[0] for r in rows], pa.int64()),
            "PROVIDERLASTNAME": pa.array([r[1] for r in rows], pa.string()),
            "DELETEDDATETIME": pa.array([r[2] and dt.datetime.fromisoformat(r[2]) for r in rows], pa.timestamp("us")),
            "LASTUPDATED": pa.array([r[3] for r in rows], pa.timestamp("us"))}
    for name, values in extra.items():
        data[name] = values
    return pa.RecordBatch.from_pydict(data)


D1, D2, D3 = dt.datetime(2026, 1, 1), dt.datetime(2026, 2, 1), dt.datetime(2026, 3, 1)


def test_newest_lastupdated_wins_and_duplicates_keep_the_latest(db: Path) -> None:
    with connect(db) as con:
        load_dataview_batches(con, "PROVIDER", [provider_batch([(1, "Ames", None, D2), (2, "Bell", None, D2)])],
                              window=(None, D2), run_id="r1")
        r = load_dataview_batches(con, "PROVIDER", [
            provider_batch([(1, "Older", None, D1), (2, "Bell", None, D2), (3, "Cole", None, D1)]),
            provider_batch([(3, "Cole-2", None, D1), (4, "Dunn", "2026-03-01 00:00:00", D3)]),
        ], window=(D1, D3), run_id="r2")
        assert (r.received, r.inserted, r.updated, r.unchanged, r.older, r.duplicates, r.soft_deleted) == (
            5, 2, 0, 1, 1, 1, 1)
        assert con.execute("SELECT PROVIDERID, PROVIDERLASTNAME, DELETEDDATETIME IS NOT NULL, _run_id "
                           "FROM raw_dataview.provider ORDER BY 1").fetchall() == [
            (1, "Ames", False, "r1"), (2, "Bell", False, "r1"), (3, "Cole-2", False, "r2"), (4, "Dunn", True, "r2")]
        # Same LASTUPDATED, different values: the later load wins.
        r = load_dataview_batches(con, "PROVIDER", [provider_batch([(2, "Bell-Smith", None, D2)])],
                                  window=(D2, D3), run_id="r3")
        assert r.updated == 1
        assert con.execute("SELECT PROVIDERLASTNAME FROM raw_dataview.provider WHERE PROVIDERID = 2").fetchone() == (
            "Bell-Smith",)


def test_a_new_upstream_column_is_added_to_the_raw_table(db: Path) -> None:
    with connect(db) as con:
        load_dataview_batches(con, "PROVIDER", [provider_batch([(1, "Ames", None, D1)])], window=(None, D2),
                              run_id="r1")
        r = load_dataview_batches(con, "PROVIDER", [provider_batch(
            [(2, "Bell", None, D2)], SPECIALTYCODE=pa.array(["207Q00000X"]), PANELSIZE=pa.array([1650], pa.int32()))],
            window=(D2, D3), run_id="r2")
        assert r.columns_added == ["SPECIALTYCODE", "PANELSIZE"] and r.inserted == 1
        assert con.execute("SELECT PROVIDERID, SPECIALTYCODE, PANELSIZE FROM raw_dataview.provider ORDER BY 1"
                           ).fetchall() == [(1, None, None), (2, "207Q00000X", 1650)]
        # A later batch without the new column, or with a narrower integer type, still loads.
        r = load_dataview_batches(con, "PROVIDER", [provider_batch(
            [(3, "Cole", None, D3)], PANELSIZE=pa.array([12], pa.int8()))], window=(D3, None), run_id="r3")
        assert r.inserted == 1 and r.columns_added == []


def test_an_incompatible_type_change_is_refused_and_nothing_is_written(db: Path) -> None:
    with connect(db) as con:
        load_dataview_batches(con, "PROVIDER", [provider_batch([(1, "Ames", None, D1)])], window=(None, D2),
                              run_id="r1")
        before = (table_state(con, "PROVIDER"), get_watermark(con, "dataview", "provider"))
        bad = provider_batch([(2, "Bell", None, D2)])
        bad = bad.set_column(bad.schema.get_field_index("LASTUPDATED"), "LASTUPDATED", pa.array(["2026-02-01"]))
        with pytest.raises(DataViewSchemaError, match=r"raw_dataview\.provider\.LASTUPDATED: upstream type changed "
                                                       r"from TIMESTAMP to VARCHAR"):
            load_dataview_batches(con, "PROVIDER", [bad], window=(D2, D3), run_id="r2")
        no_key = provider_batch([(2, "Bell", None, D2)]).drop_columns(["PROVIDERID"])
        with pytest.raises(DataViewSchemaError, match="no PROVIDERID column"):
            load_dataview_batches(con, "PROVIDER", [no_key], window=(D2, D3), run_id="r2")
        assert (table_state(con, "PROVIDER"), get_watermark(con, "dataview", "provider")) == before
        assert con.execute("SELECT count(*) FROM duckdb_tables() WHERE database_name = 'temp'").fetchone()[0] == 0


def test_an_empty_window_records_the_watermark_only(db: Path) -> None:
    with connect(db) as con:
        r = load_dataview_batches(con, "CLAIM", iter(()), window=(D1, D2), run_id="r1")
        assert (r.received, r.inserted, r.watermark) == (0, 0, D2.replace(tzinfo=dt.UTC))
        assert con.execute("SELECT count(*) FROM duckdb_tables() WHERE schema_name = 'raw_dataview'").fetchone() == (0,)


def test_source_from_settings_picks_the_configured_source(worlds: dict) -> None:
    src = source_from_settings(Settings(dataview_kind="duckdb", dataview_duckdb_path=worlds["after"]))
    try:
        assert isinstance(src, DuckDBDataViewSource)
        assert sum(b.num_rows for b in src.fetch("PROVIDER")) == 1
    finally:
        src.close()
    with pytest.raises(ValueError, match="SNOWFLAKE_ACCOUNT and SNOWFLAKE_USER"):
        source_from_settings(Settings(dataview_kind="snowflake"))
    with pytest.raises(FileNotFoundError, match="DATAVIEW_DUCKDB_PATH"):
        source_from_settings(Settings(dataview_kind="duckdb", dataview_duckdb_path=Path("/nonexistent.duckdb")))


# --- the Snowflake source, against fakesnow's server ------------------------------------------------
try:
    import fakesnow

    _fakesnow_server = fakesnow.server  # the function; importing fakesnow.server (the module) shadows it
except ImportError:  # the dev extra is not installed
    _fakesnow_server = None
needs_fakesnow = pytest.mark.skipif(_fakesnow_server is None, reason="fakesnow is not installed (dev extra)")


@pytest.fixture(scope="module")
def snowflake_share(worlds: dict) -> Iterator[dict]:
    """fakesnow's HTTP server on loopback holding ATHENAHEALTH.ATHENAONE.{CLAIM,PATIENT} from the world."""
    import sys

    import snowflake.connector

    with _fakesnow_server() as params:
        setup = snowflake.connector.connect(**params)
        setup.cursor().execute("CREATE DATABASE IF NOT EXISTS ATHENAHEALTH")
        setup.cursor().execute("CREATE SCHEMA IF NOT EXISTS ATHENAHEALTH.ATHENAONE")
        # Seed the fake account straight from the sandbox file (test set-up only; the code under test
        # goes through the connector and the server).
        duck = sys.modules["fakesnow.server"].shared_fs.duck_conn
        duck.execute(f"ATTACH '{worlds['after']}' AS sandbox_world (READ_ONLY)")
        for name in ("CLAIM", "PATIENT"):
            duck.execute(f"CREATE OR REPLACE TABLE ATHENAHEALTH.ATHENAONE.{name} AS "
                         f"SELECT * FROM sandbox_world.ATHENAONE.{name}")
        duck.execute("DETACH sandbox_world")
        setup.close()
        yield params


@needs_fakesnow
def test_snowflake_source_matches_the_duckdb_source(worlds: dict, snowflake_share: dict, tmp_path: Path) -> None:
    t0, t1 = worlds["t0"], worlds["t1"]
    with SnowflakeDataViewSource(snowflake_share, "athenahealth", "athenaone") as snow, \
            DuckDBDataViewSource(worlds["after"]) as local:
        assert [c for c, _ in snow.columns("CLAIM")] == [c for c, _ in local.columns("CLAIM")]
        batches = list(snow.fetch("CLAIM", start=t0, end=t1, context_ids=[195900], batch_size=40))
        expected = sum(b.num_rows for b in local.fetch("CLAIM", start=t0, end=t1))
        assert expected > 40 and sum(b.num_rows for b in batches) == expected
        assert all(b.num_rows <= 40 for b in batches)
        schema = batches[0].schema
        assert all(b.schema == schema for b in batches)
        assert schema.field("CLAIMID").type == pa.int64()
        assert schema.field("PRIMARYOUTSTANDING").type == pa.decimal128(12, 2)
        assert schema.field("LASTUPDATED").type == pa.timestamp("us")
        assert list(snow.fetch("CLAIM", context_ids=[1])) == []
        with pytest.raises(DataViewTableMissing):
            snow.columns("ERAKICK")

        # Loaded through the same loader, both sources give the same raw table.
        with connect(tmp_path / "snow.duckdb") as con:
            load_dataview_batches(con, "CLAIM", snow.fetch("CLAIM", batch_size=500), window=(None, t1), run_id="s")
            snow_state = table_state(con, "CLAIM", epoch_is_null=True)
        with connect(tmp_path / "local.duckdb") as con:
            load_dataview_batches(con, "CLAIM", local.fetch("CLAIM", batch_size=500), window=(None, t1), run_id="l")
            assert table_state(con, "CLAIM") == snow_state
