"""Read-back reconciliation: what Caspio actually holds, compared with the mart and the stored state.

Why: the keyed diff trusts ``publish.caspio_state`` to say what Caspio holds. People edit Caspio by
hand (the Datasheet, a DataPage, a script), delete rows, add rows; a warehouse can be rebuilt from
scratch while the Caspio table lives on. Reconciliation reads the whole table back (one call per
1,000 rows, far cheaper than writing), hashes it with the same SQL as the mart
(:mod:`athena_pipeline.caspio.diff`), and diffs the mart against *that* instead of the stored state.
What differs between the read-back and the stored state is the drift it reports:

* ``missing``: rows the state says Caspio holds, but Caspio does not (deleted by hand);
* ``edited``: rows Caspio holds with other values than were published (edited by hand);
* ``stray``: rows Caspio holds that were never published (added by hand, a lost state, a row with
  no or a duplicate row key).

All of it runs in an in-memory DuckDB: the warehouse is not open while Caspio is read.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import duckdb
import pyarrow as pa

from athena_pipeline.caspio.diff import (
    ARROW_TYPES,
    PublishedField,
    checksum,
    diff_sql,
    fetch_arrow,
    hash_payload,
    register_arrow,
)

PK_ID = "PK_ID"


def rows_to_arrow(pages: Iterable[Sequence[dict]], fields: Sequence[PublishedField], key_field: str) -> pa.Table:
    """Caspio's JSON rows (``PK_ID``, the key and the fields) as a payload-shaped Arrow table.

    A column whose values do not fit the expected Arrow type (a Yes/No sent as 0/1, a number as
    text) is kept as text: the canonical SQL casts it anyway. Field names match case-insensitively
    (Caspio's field names are).
    """
    rows = [row for page in pages for row in page]
    names = [PK_ID, key_field] + [f.name for f in fields]
    types = [pa.int64(), pa.string()] + [ARROW_TYPES[f.caspio_type] for f in fields]
    lookup: dict[str, str] = {}
    if rows:
        lookup = {k.lower(): k for k in rows[0]}
    arrays = []
    for name, arrow_type in zip(names, types, strict=True):
        actual = lookup.get(name.lower(), name)
        values = [row.get(actual) for row in rows]
        try:
            arrays.append(pa.array(values, type=arrow_type))
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError, OverflowError):
            arrays.append(pa.array([None if v is None else str(v) for v in values], type=pa.string()))
    return pa.table(arrays, names=names)


@dataclass
class ReconcilePlan:
    """What to write so Caspio equals the mart, judged from a read-back, and the drift found."""

    inserts: pa.Table        # payload rows (key, row_hash, fields) Caspio lacks
    updates: pa.Table        # payload rows Caspio holds with other values
    deletes: list[str]       # row keys Caspio holds that the mart does not
    stray_pk_ids: list[int]  # rows with no row key, or a second row with the same key
    verified: pa.Table       # (row_key, row_hash) Caspio already holds right, but the state did not say so
    forget: list[str]        # state keys neither Caspio nor the mart has: drop from the state
    caspio_rows: int
    missing: int             # drift: state says present, Caspio lacks
    edited: int              # drift: Caspio's values differ from the published ones
    stray: int               # drift: rows Caspio has that were never published (incl. keyless, duplicates)
    caspio_checksum: str

    @property
    def drift(self) -> dict[str, int]:
        return {"missing": self.missing, "edited": self.edited, "stray": self.stray}


def plan_reconcile(mart: pa.Table, caspio: pa.Table, state: pa.Table, fields: Sequence[PublishedField],
                   key_field: str) -> ReconcilePlan:
    """Diff ``mart`` (payload rows with ``row_hash``, key column named ``row_key``) against ``caspio``
    (:func:`rows_to_arrow`), and ``caspio`` against ``state`` (``row_key, row_hash``) for the drift."""
    with duckdb.connect() as con:
        con.execute("SET TimeZone = 'UTC'")
        register_arrow(con, "mart_arrow", mart)
        key = '"' + key_field.replace('"', '""') + '"'
        # the diff SQL speaks of row_key; the payload rows keep the Caspio key field's name
        con.execute(f"CREATE TEMP VIEW mart_in AS SELECT * RENAME ({key} AS row_key) FROM mart_arrow"
                    if key_field != "row_key" else "CREATE TEMP VIEW mart_in AS SELECT * FROM mart_arrow")
        register_arrow(con, "caspio_in", caspio)
        register_arrow(con, "state_in", state)
        hash_payload(con, "caspio_in", fields, key_field, "caspio_all")
        # one row per key (the lowest PK_ID); the others, and keyless rows, are strays to delete
        con.execute("""CREATE TEMP TABLE caspio_rows AS
            SELECT pk_id, row_key, row_hash FROM caspio_all WHERE row_key IS NOT NULL AND row_key <> ''
            QUALIFY row_number() OVER (PARTITION BY row_key ORDER BY pk_id) = 1""")
        stray_pk = [r[0] for r in con.execute(
            "SELECT pk_id FROM caspio_all ANTI JOIN caspio_rows USING (pk_id) ORDER BY pk_id").fetchall()]
        sets = diff_sql("mart_in", "caspio_rows")
        back = f"SELECT * RENAME (row_key AS {key}) FROM " if key_field != "row_key" else "SELECT * FROM "
        inserts = fetch_arrow(con, back + f"({sets['inserts']}) ORDER BY 1")
        updates = fetch_arrow(con, back + f"({sets['updates']}) ORDER BY 1")
        deletes = [r[0] for r in con.execute(sets["deletes"] + " ORDER BY 1").fetchall()]
        verified = fetch_arrow(con, f"""SELECT u.row_key, u.row_hash FROM ({sets['unchanged']}) u
            ANTI JOIN state_in s ON s.row_key = u.row_key AND s.row_hash = u.row_hash""")
        forget = [r[0] for r in con.execute("""SELECT s.row_key FROM state_in s
            WHERE s.row_key NOT IN (SELECT row_key FROM caspio_rows)
              AND s.row_key NOT IN (SELECT row_key FROM mart_in)""").fetchall()]
        missing, edited, stray = con.execute("""SELECT
            (SELECT count(*) FROM state_in s ANTI JOIN caspio_rows c ON c.row_key = s.row_key),
            (SELECT count(*) FROM state_in s JOIN caspio_rows c ON c.row_key = s.row_key
                WHERE c.row_hash <> s.row_hash),
            (SELECT count(*) FROM caspio_rows c ANTI JOIN state_in s ON s.row_key = c.row_key)""").fetchall()[0]
        _, caspio_sum = checksum(con, "caspio_rows")
        total = con.execute("SELECT count(*) FROM caspio_all").fetchall()[0][0]
    return ReconcilePlan(inserts=inserts, updates=updates, deletes=deletes, stray_pk_ids=stray_pk,
                         verified=verified, forget=forget, caspio_rows=int(total), missing=int(missing),
                         edited=int(edited), stray=int(stray) + len(stray_pk), caspio_checksum=caspio_sum)


def caspio_content(caspio: pa.Table, fields: Sequence[PublishedField], key_field: str) -> tuple[int, int, str]:
    """(rows, duplicate-or-keyless rows, checksum) of a read-back, to compare with the mart's checksum."""
    with duckdb.connect() as con:
        con.execute("SET TimeZone = 'UTC'")
        register_arrow(con, "caspio_in", caspio)
        hash_payload(con, "caspio_in", fields, key_field, "caspio_all")
        total, good = con.execute(
            "SELECT count(*), count(DISTINCT row_key) FILTER (WHERE row_key <> '') FROM caspio_all").fetchall()[0]
        con.execute("CREATE TEMP TABLE caspio_rows AS SELECT row_key, min(row_hash) AS row_hash "
                    "FROM caspio_all WHERE row_key <> '' GROUP BY row_key")
        _, digest = checksum(con, "caspio_rows")
    return int(total), int(total) - int(good), digest

