"""A minimal read-only HTML view of the emulator's tables, so a person can see what was published.

Every value, name and label goes through ``html.escape``: the rows are whatever clients wrote
(a published table could hold ``<script>``), and this page must never run it.
"""

from __future__ import annotations

import html
import json
from typing import Any

from athena_pipeline.sandbox.caspio.store import CaspioStore, ReadQuery

PAGE_SIZE = 100

_STYLE = """<style>
body{font-family:system-ui,sans-serif;margin:1.5rem;color:#222}
table{border-collapse:collapse;font-size:.85rem}
td,th{border:1px solid #ccc;padding:.2rem .45rem;text-align:left;vertical-align:top}
th{background:#f3f3f3}
.muted{color:#777}
</style>"""


def _e(value: Any) -> str:
    if value is None:
        return '<span class="muted">null</span>'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, dict)):
        value = json.dumps(value)
    return html.escape(str(value), quote=True)


def _page(title: str, body: str) -> str:
    return (f"<!doctype html><html><head><meta charset=\"utf-8\"><title>{html.escape(title)}"
            f"</title>{_STYLE}</head><body>{body}</body></html>")


def index_page(store: CaspioStore, base: str) -> str:
    """The list of tables with their row and field counts."""
    rows = []
    for info in store.tables():
        href = f"{base}/tables/{html.escape(info.name, quote=True)}"
        rows.append(f"<tr><td><a href=\"{href}\">{_e(info.name)}</a></td>"
                    f"<td>{store.row_count(info)}</td><td>{len(info.fields)}</td>"
                    f"<td>{_e(info.note)}</td></tr>")
    table = ("<table><tr><th>Table</th><th>Rows</th><th>Fields</th><th>Note</th></tr>"
             + "".join(rows) + "</table>") if rows else "<p class=\"muted\">No tables yet.</p>"
    return _page("Caspio emulator", "<h1>Caspio emulator: tables</h1>" + table
                 + f"<p class=\"muted\">Read-only view. Stats: <a href=\"{base}/stats\">JSON</a>.</p>")


def table_page(store: CaspioStore, base: str, name: str, page: int) -> str:
    """One table: its fields, then its rows in PK_ID order, ``PAGE_SIZE`` per page."""
    info = store.table(name)
    total = store.row_count(info)
    pages = max(1, -(-total // PAGE_SIZE))
    page = min(max(1, page), pages)
    rows = store.select(info.name, ReadQuery(limit=PAGE_SIZE, offset=(page - 1) * PAGE_SIZE))
    fields = "".join(
        f"<tr><td>{_e(f.name)}</td><td>{_e(f.type)}</td><td>{'yes' if f.enforces_unique else ''}</td>"
        f"<td>{_e(f.label)}</td><td>{_e(f.description)}</td></tr>" for f in info.fields)
    columns = ["PK_ID"] + [f.name for f in info.fields if f.type != "PASSWORD"]
    head = "".join(f"<th>{_e(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{_e(r.get(c))}</td>" for c in columns) + "</tr>"
                   for r in rows)
    href = f"{base}/tables/{html.escape(info.name, quote=True)}"
    nav = []
    if page > 1:
        nav.append(f"<a href=\"{href}?page={page - 1}\">previous</a>")
    if page < pages:
        nav.append(f"<a href=\"{href}?page={page + 1}\">next</a>")
    return _page(
        f"Caspio table {info.name}",
        f"<p><a href=\"{base}/\">all tables</a></p><h1>{_e(info.name)}</h1>"
        f"<p>{_e(info.note)}</p><h2>Fields</h2><table><tr><th>Name</th><th>Type</th>"
        f"<th>Unique</th><th>Label</th><th>Description</th></tr>{fields}</table>"
        f"<h2>Rows ({total}, page {page} of {pages})</h2><p>{' | '.join(nav)}</p>"
        f"<table><tr>{head}</tr>{body}</table>")
