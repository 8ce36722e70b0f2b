"""Caspio table specs from marts (types, names, dbt docs, row key) and schema creation/evolution
against the Caspio emulator: missing tables created, missing fields added, incompatible changes
refused with an error naming table, field and the fix, and nothing ever dropped."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import duckdb
import pytest

from athena_pipeline.caspio import (
    CaspioClient,
    FieldSpec,
    SchemaConflict,
    TableSpec,
    duckdb_to_caspio,
    ensure_table,
    load_mart_docs,
    row_key_sql,
    table_spec_for_mart,
)
from athena_pipeline.caspio.specs import (
    ColumnDoc,
    MartDoc,
    caspio_name,
    caspio_table_name,
    field_name_problem,
    is_money_column,
)
from athena_pipeline.sandbox.caspio.server import RunningCaspio
from tests.caspio import Wire, caspio_server, make_client

MART_YAML = """
version: 2
models:
  - name: clinic_month
    description: >
      Visits and money per clinic and month.
      Grain: one row per clinic and month.
    meta:
      grain: [clinic_id, month]
    columns:
      - name: clinic_id
        description: The clinic.
      - name: month
        description: First day of the month.
      - name: clinic_name
        description: Clinic name as shown to patients.
        meta: {label: Clinic}
      - name: visits
        description: Completed visits.
      - name: charges_amount
        description: Gross charges.
      - name: collection_rate
        description: Collections / charges.
      - name: avg_cost
        description: Average cost, stored as a number on purpose.
        meta: {caspio_type: NUMBER}
      - name: notes
        description: Free text.
      - name: is_open
        description: Open on the last day of the month.
      - name: closed_at
      - name: select
        description: A column named like a SQL keyword.
  - name: no_grain
    columns:
      - name: a
"""


@pytest.fixture
def warehouse(tmp_path: Path) -> Iterator[duckdb.DuckDBPyConnection]:
    con = duckdb.connect(str(tmp_path / "warehouse.duckdb"))
    con.execute("CREATE SCHEMA marts")
    con.execute("""
        CREATE TABLE marts.clinic_month AS
        SELECT * FROM (VALUES
            (1, DATE '2026-01-01', 'North', 10, 1234.50::DECIMAL(18,2), 0.91::DOUBLE, 12.5::DECIMAL(10,2),
             repeat('n', 300), true, TIMESTAMP '2026-01-31 17:00:00', 'x'),
            (1, DATE '2026-02-01', 'North', 12, 99.99::DECIMAL(18,2), NULL, 13.0::DECIMAL(10,2),
             'short', false, NULL, 'y'),
            (2, DATE '2026-01-01', NULL, 0, 0::DECIMAL(18,2), NULL, NULL, NULL, NULL, NULL, NULL)
        ) t(clinic_id, month, clinic_name, visits, charges_amount, collection_rate, avg_cost, notes,
            is_open, closed_at, "select")""")
    con.execute("CREATE TABLE marts.no_grain AS SELECT 1 AS a")
    yield con
    con.close()


@pytest.fixture
def docs(tmp_path: Path):
    folder = tmp_path / "marts" / "ops"
    folder.mkdir(parents=True)
    (folder / "_ops__models.yml").write_text(MART_YAML)
    return load_mart_docs(tmp_path / "marts")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningCaspio]:
    with caspio_server(tmp_path_factory.mktemp("caspio-specs")) as srv:
        yield srv


@pytest.fixture
def client(server: RunningCaspio) -> Iterator[CaspioClient]:
    server.faults.reset()
    with make_client(server) as c:
        yield c


_n = iter(range(10_000))


def prefix() -> str:
    return f"p{next(_n)}_"


# --- types and names ---------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype, max_len, column, expected", [
    ("VARCHAR", 12, "payer_name", "STRING"),
    ("VARCHAR", 255, "payer_name", "STRING"),
    ("VARCHAR", 256, "notes", "TEXT"),
    ("VARCHAR", None, "empty", "STRING"),
    ("BIGINT", None, "claim_count", "INTEGER"),
    ("INTEGER", None, "bucket_order", "INTEGER"),
    ("DECIMAL(38,2)", None, "open_balance", "CURRENCY"),
    ("DECIMAL(38,2)", None, "charges_submitted", "CURRENCY"),
    ("DECIMAL(38,2)", None, "denial_write_offs", "CURRENCY"),
    ("DECIMAL(38,2)", None, "denied_amount_initial", "CURRENCY"),
    ("DECIMAL(18,4)", None, "days_in_ar", "NUMBER"),
    ("DOUBLE", None, "initial_denial_rate_dollars", "NUMBER"),
    ("DECIMAL(9,4)", None, "payment_rate", "NUMBER"),
    ("DATE", None, "as_of_date", "DATE/TIME"),
    ("TIMESTAMP", None, "loaded_at", "DATE/TIME"),
    ("TIMESTAMP WITH TIME ZONE", None, "loaded_at", "DATE/TIME"),
    ("BOOLEAN", None, "is_over_90", "YES/NO"),
])
def test_duckdb_types_map_to_caspio_tokens(dtype, max_len, column, expected):
    assert duckdb_to_caspio(dtype, max_len, column=column) == expected


def test_currency_can_be_forced_or_refused_and_nested_types_are_rejected():
    assert duckdb_to_caspio("DECIMAL(10,2)", column="score", currency=True) == "CURRENCY"
    assert duckdb_to_caspio("DECIMAL(10,2)", column="open_balance", currency=False) == "NUMBER"
    assert is_money_column("patient_paid") and not is_money_column("collection_rate")
    for bad in ("INTEGER[]", "STRUCT(a INTEGER)", "BLOB", "MAP(VARCHAR, INTEGER)"):
        with pytest.raises(ValueError, match="no Caspio type"):
            duckdb_to_caspio(bad, column="c")


def test_names_are_made_valid_for_caspio_and_stay_distinct():
    raw = ["select", "PK_ID", "1st_visit", "visits per day", "a" * 40, "a" * 39 + "b", "ok_name"]
    made = [caspio_name(r) for r in raw]
    assert all(field_name_problem(m) is None for m in made), made
    assert len(set(made)) == len(made)
    assert made[-1] == "ok_name" and made[0] == "select_" and made[2] == "f_1st_visit"
    assert caspio_name("a" * 40) == caspio_name("a" * 40)  # deterministic
    assert caspio_table_name("ap_", "denials_by_payer_month") == "ap_denials_by_payer_month"
    assert len(caspio_table_name("ap_", "x" * 60)) == 32
    with pytest.raises(ValueError):
        FieldSpec("TEXT(255)", "STRING")
    with pytest.raises(ValueError):
        FieldSpec("ok", "TEXT(255)")


# --- a mart's spec -----------------------------------------------------------------------------------------
def test_table_spec_for_mart_takes_types_from_data_and_docs_from_yaml(warehouse, docs):
    spec = table_spec_for_mart(warehouse, "clinic_month", docs, "ap_")
    assert spec.name == "ap_clinic_month" and spec.key == "row_key"
    assert spec.grain == ("clinic_id", "month") and spec.mart == "clinic_month"
    types = {f.name: f.type for f in spec.fields}
    assert types == {"row_key": "STRING", "clinic_id": "INTEGER", "month": "DATE/TIME", "clinic_name": "STRING",
                     "visits": "INTEGER", "charges_amount": "CURRENCY", "collection_rate": "NUMBER",
                     "avg_cost": "NUMBER", "notes": "TEXT", "is_open": "YES/NO", "closed_at": "DATE/TIME",
                     "select_": "STRING"}
    assert spec.fields[0].name == "row_key"
    key = spec.field("row_key")
    assert key.unique and "clinic_id, month" in key.description
    assert not any(f.unique for f in spec.fields if f.name != "row_key")
    name = spec.field("clinic_name")
    assert (name.label, name.description, name.length, name.source) == ("Clinic", "Clinic name as shown to patients.", 5, "clinic_name")
    assert spec.field("charges_amount").label == "Charges amount"
    assert spec.field("select_").source == "select"
    assert spec.description.startswith("Visits and money per clinic and month.")
    assert spec.column_map["select"] == "select_"


def test_a_column_marked_caspio_publish_false_stays_out_of_caspio(warehouse):
    """A column the same on every row and new every day (as_of_date) would rewrite every Caspio row
    nightly; ``meta.caspio_publish: false`` keeps it in the warehouse and out of the table."""
    warehouse.execute("CREATE TABLE marts.daily AS SELECT * FROM (VALUES (1, DATE '2026-11-24', 5)) t(k, as_of_date, n)")
    cols = {"as_of_date": ColumnDoc("The as-of date.", {"caspio_publish": False})}
    spec = table_spec_for_mart(warehouse, "daily", {"daily": MartDoc("daily", grain=("k",), columns=cols)}, "ap_")
    assert [f.name for f in spec.fields] == ["row_key", "k", "n"]
    assert "as_of_date" not in [d[0] for d in warehouse.execute(spec.source_sql()).description]
    cols = {"as_of_date": ColumnDoc(None, {"caspio_publish": "no"})}
    with pytest.raises(ValueError, match=r"daily\.as_of_date: meta.caspio_publish must be true or false"):
        table_spec_for_mart(warehouse, "daily", {"daily": MartDoc("daily", grain=("k",), columns=cols)}, "ap_")


def test_integers_beyond_32_bits_become_number(warehouse):
    warehouse.execute("CREATE TABLE marts.big AS SELECT * FROM (VALUES (1, 5, 3000000000)) t(k, small, big)")
    spec = table_spec_for_mart(warehouse, "big", {"big": MartDoc("big", grain=("k",))}, "ap_")
    assert (spec.field("small").type, spec.field("big").type) == ("INTEGER", "NUMBER")


def test_the_row_key_is_a_stable_md5_of_the_grain(warehouse, docs):
    spec = table_spec_for_mart(warehouse, "clinic_month", docs, "ap_")
    rows = warehouse.execute(spec.source_sql()).fetchall()
    keys = [r[0] for r in rows]
    assert len(set(keys)) == 3 and all(re.fullmatch(r"[0-9a-f]{32}", k) for k in keys)
    assert keys == [r[0] for r in warehouse.execute(spec.source_sql()).fetchall()]
    # NULLs and separators cannot make two different grains collide
    pairs = warehouse.execute(f"""
        SELECT {row_key_sql(['a', 'b'])} FROM (VALUES ('x', NULL), (NULL, 'x'), ('x', ''), ('', 'x'),
                                                     ('x|', ''), ('x', '|')) t(a, b)""").fetchall()
    assert len({p[0] for p in pairs}) == 6


def test_a_mart_without_grain_or_table_is_refused(warehouse, docs):
    with pytest.raises(ValueError, match="meta.grain"):
        table_spec_for_mart(warehouse, "no_grain", docs, "ap_")
    with pytest.raises(ValueError, match="does not exist"):
        table_spec_for_mart(warehouse, "nope", docs, "ap_")


def test_the_repository_marts_are_documented_with_a_grain():
    docs = load_mart_docs()  # dbt_project/models/marts/**/*.yml
    assert {"denials_by_payer_month", "ar_aging"} <= set(docs)
    for name, doc in docs.items():
        assert doc.grain, f"mart {name} declares no grain (meta.grain)"
        assert set(doc.grain) <= set(doc.columns), f"mart {name}: grain columns are not documented"
        assert doc.description
        # a value that changes every day on every row would make each nightly publish rewrite the
        # whole table: as_of_date is published once per table (mart_status), never per row
        if name != "mart_status" and "as_of_date" in doc.columns:
            assert doc.columns["as_of_date"].meta.get("caspio_publish") is False, name
            assert "as_of_date" not in doc.grain, name


def test_docs_can_come_from_a_dbt_manifest(tmp_path, warehouse):
    manifest = {"nodes": {
        "model.p.clinic_month": {"resource_type": "model", "name": "clinic_month", "description": "From the manifest.",
                                 "config": {"meta": {"grain": ["clinic_id", "month"]}},
                                 "columns": {"visits": {"description": "Visits (manifest).", "meta": {}}}},
        "test.p.x": {"resource_type": "test", "name": "x"}}}
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps(manifest))
    spec = table_spec_for_mart(warehouse, "clinic_month", path, "m_")
    assert spec.description == "From the manifest." and spec.field("visits").description == "Visits (manifest)."
    assert spec.name == "m_clinic_month"


# --- making Caspio match -----------------------------------------------------------------------------------
def test_a_missing_table_is_created_and_a_second_run_changes_nothing(client, warehouse, docs):
    spec = table_spec_for_mart(warehouse, "clinic_month", docs, prefix())
    change = ensure_table(client, spec)
    assert change.created and set(change.added) == {f.name for f in spec.fields}
    fields = {f.name: f for f in client.describe_table(spec.name)}
    assert {n: f.type for n, f in fields.items()} == {f.name: f.type for f in spec.fields}
    assert fields["row_key"].unique and fields["clinic_name"].label == "Clinic"
    assert fields["visits"].description == "Completed visits."
    wire = Wire().attach(client)
    again = ensure_table(client, spec)
    assert not again.changed
    assert [s.method for s in wire.sent] == ["GET"]  # one read, no writes


def test_published_rows_round_trip_through_the_spec(client, warehouse, docs):
    spec = table_spec_for_mart(warehouse, "clinic_month", docs, prefix())
    ensure_table(client, spec)
    cur = warehouse.execute(spec.source_sql())
    names = [d[0] for d in cur.description]
    rows = [dict(zip(names, r, strict=True)) for r in cur.fetchall()]
    assert client.insert_many(spec.name, rows).failed == []
    back = {r["row_key"]: r for page in client.iter_records(spec.name) for r in page}
    first = next(r for r in rows if r["clinic_id"] == 1 and r["visits"] == 10)
    got = back[first["row_key"]]
    assert (got["month"], got["charges_amount"], got["is_open"], got["notes"]) == \
        ("2026-01-01T00:00:00", 1234.5, True, "n" * 300)
    assert got["closed_at"] == "2026-01-31T17:00:00" and got["select_"] == "x"


def test_new_mart_columns_are_added_and_nothing_is_dropped(client, warehouse, docs):
    p = prefix()
    spec = table_spec_for_mart(warehouse, "clinic_month", docs, p)
    old = TableSpec(spec.name, spec.key, spec.fields[:4], mart=spec.mart, grain=spec.grain)
    old = TableSpec(spec.name, spec.key, (*old.fields, FieldSpec("retired_column", "STRING")),
                    mart=spec.mart, grain=spec.grain)
    ensure_table(client, old)
    client.insert(spec.name, {"row_key": "r1", "retired_column": "kept"})
    change = ensure_table(client, spec)
    assert not change.created and set(change.added) == {f.name for f in spec.fields[4:]}
    names = {f.name for f in client.describe_table(spec.name)}
    assert names == {f.name for f in spec.fields} | {"retired_column"}
    assert [r["retired_column"] for page in client.iter_records(spec.name) for r in page] == ["kept"]


def test_a_type_change_stops_with_table_field_and_what_to_do(client, warehouse, docs):
    spec = table_spec_for_mart(warehouse, "clinic_month", docs, prefix())
    changed = tuple(FieldSpec(f.name, "INTEGER", source=f.source) if f.name == "clinic_name" else f
                    for f in spec.fields)
    ensure_table(client, TableSpec(spec.name, spec.key, changed, mart=spec.mart, grain=spec.grain))
    client.insert(spec.name, {"row_key": "r1", "clinic_name": 7})
    with pytest.raises(SchemaConflict) as info:
        ensure_table(client, spec)
    err = info.value
    assert (err.table, err.field) == (spec.name, "clinic_name")
    assert spec.name in str(err) and "clinic_name" in str(err) and "INTEGER" in str(err) and "STRING" in str(err)
    assert "CASPIO_TABLE_PREFIX" in str(err)
    assert {f.name: f.type for f in client.describe_table(spec.name)}["clinic_name"] == "INTEGER"
    assert client.count_records(spec.name) == 1


def test_text_that_outgrew_255_characters_says_how_to_widen(client):
    p = prefix()
    ensure_table(client, TableSpec(f"{p}t", "row_key", (FieldSpec("row_key", "STRING", unique=True),
                                                       FieldSpec("notes", "STRING"))))
    with pytest.raises(SchemaConflict, match=r"Text \(64000\)") as info:
        ensure_table(client, TableSpec(f"{p}t", "row_key", (FieldSpec("row_key", "STRING", unique=True),
                                                           FieldSpec("notes", "TEXT"))))
    assert info.value.field == "notes"
    # the other way round is fine: TEXT holds what STRING would, NUMBER holds INTEGER
    ensure_table(client, TableSpec(f"{p}u", "row_key", (FieldSpec("row_key", "STRING", unique=True),
                                                       FieldSpec("notes", "TEXT"), FieldSpec("n", "NUMBER"))))
    assert not ensure_table(client, TableSpec(f"{p}u", "row_key", (
        FieldSpec("row_key", "STRING", unique=True), FieldSpec("notes", "STRING"),
        FieldSpec("n", "INTEGER")))).changed


def test_key_changes_are_conflicts(client, warehouse, docs):
    spec = table_spec_for_mart(warehouse, "clinic_month", docs, prefix())
    # the key field exists but is not unique
    plain = tuple(FieldSpec(f.name, f.type, description=f.description, source=f.source) for f in spec.fields)
    client.create_table(spec.name, plain)
    with pytest.raises(SchemaConflict, match="not unique") as info:
        ensure_table(client, spec)
    assert info.value.field == "row_key"

    # the grain changed (the key's description records the old one)
    other = table_spec_for_mart(warehouse, "clinic_month", docs, prefix())
    ensure_table(client, other)
    regrained = TableSpec(other.name, other.key, tuple(
        FieldSpec("row_key", "STRING", unique=True, description="Unique row key: md5 of the mart's grain "
                  "(clinic_id, month, visits).") if f.name == "row_key" else f for f in other.fields),
        mart=other.mart, grain=("clinic_id", "month", "visits"))
    with pytest.raises(SchemaConflict, match="grain") as info:
        ensure_table(client, regrained)
    assert info.value.field == "row_key"


def test_a_table_without_the_key_gets_it_only_while_empty(client):
    p = prefix()
    base = (FieldSpec("name", "STRING"),)
    full = TableSpec(f"{p}t", "row_key", (FieldSpec("row_key", "STRING", unique=True), *base))
    client.create_table(f"{p}t", base)
    assert ensure_table(client, full).added == ("row_key",)

    client.create_table(f"{p}v", base)
    client.insert(f"{p}v", {"name": "someone's row"})
    full_v = TableSpec(f"{p}v", "row_key", full.fields)
    with pytest.raises(SchemaConflict, match="no unique key field row_key"):
        ensure_table(client, full_v)
    assert {f.name for f in client.describe_table(f"{p}v")} == {"name"}


def test_another_unique_field_is_a_conflict(client):
    p = prefix()
    client.create_table(f"{p}t", (FieldSpec("row_key", "STRING", unique=True), FieldSpec("old_key", "STRING", unique=True)))
    with pytest.raises(SchemaConflict, match="old_key") as info:
        ensure_table(client, TableSpec(f"{p}t", "row_key", (FieldSpec("row_key", "STRING", unique=True),)))
    assert info.value.field == "old_key"
