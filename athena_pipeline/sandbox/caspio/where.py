"""The T-SQL subset of Caspio's ``q.where``, ``q.select``, ``q.orderBy`` and ``q.groupBy``.

Why a parser and not string pasting: the clauses come from the client and end up in a SQLite
query. Each one is tokenised and parsed into a small tree, column names are resolved against
the table's real fields, and the tree is compiled to SQL in which *every* literal is a ``?``
parameter and every identifier a validated, quoted field name. What the grammar does not
cover is refused with 400 ``IncorrectQueryParameter``, as Caspio refuses what SQL Server
cannot parse; a clause that parses but names an unknown column gets ``SqlServerError``
("Invalid column name"), as SQL Server would.

Where grammar (keywords case-insensitive)::

    expr      := and_expr (OR and_expr)*
    and_expr  := not_expr (AND not_expr)*
    not_expr  := NOT not_expr | predicate
    predicate := '(' expr ')'
               | operand ( ('=' | '<>' | '!=' | '<' | '>' | '<=' | '>=') operand
                         | [NOT] LIKE literal [ESCAPE literal]
                         | [NOT] IN '(' operand (',' operand)* ')'
                         | [NOT] BETWEEN operand AND operand
                         | IS [NOT] NULL )
    operand   := column | [bracketed] | "quoted" | 'string' | N'string' | [-+]number | NULL

Literals are converted to the column's type the way SQL Server converts them: a date string
compared with a Date/Time field is parsed (``'2024-05-01'`` equals ``2024-05-01T00:00:00``),
Yes/No compares with ``1``/``0``, a numeric string with a number field is a number; a
conversion that fails is a ``SqlServerError``. Text comparisons are case-insensitive (SQL
Server's default collation; the store declares text columns ``COLLATE NOCASE``). ``LIKE`` knows
``%``, ``_`` and T-SQL's ``[set]``/``[^set]`` classes.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from athena_pipeline.sandbox.caspio.errors import CaspioApiError, bad_query, sql_error
from athena_pipeline.sandbox.caspio.schema import (
    DATE_TYPES,
    NUMERIC_TYPES,
    PK_ID,
    parse_datetime,
)

MAX_DEPTH = 64
AGGREGATES = ("COUNT", "SUM", "MIN", "MAX", "AVG")

_TOKEN_RE = re.compile(r"""
    (?P<ws>\s+)
  | (?P<str>[Nn]?'(?:[^']|'')*')
  | (?P<num>(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)
  | (?P<bracket>\[[^\]]+\])
  | (?P<dquote>"[^"]+")
  | (?P<ident>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<op><=|>=|<>|!=|=|<|>|\(|\)|,|\*|-|\+)
""", re.VERBOSE)

_KEYWORDS = {"AND", "OR", "NOT", "IN", "LIKE", "BETWEEN", "IS", "NULL", "ESCAPE", "AS", "ASC",
             "DESC", "DISTINCT"}


@dataclass(frozen=True)
class Token:
    kind: str  # str, num, ident, kw, op, end
    value: Any
    pos: int


def tokenize(text: str, what: str) -> list[Token]:
    tokens: list[Token] = []
    pos = 0
    while pos < len(text):
        m = _TOKEN_RE.match(text, pos)
        if m is None:
            raise bad_query(f"Cannot parse {what}: unexpected character at position {pos + 1}.")
        kind = m.lastgroup
        raw = m.group()
        if kind == "str":
            body = raw[1:] if raw[0] in "Nn" else raw
            tokens.append(Token("str", body[1:-1].replace("''", "'"), pos))
        elif kind == "num":
            tokens.append(Token("num", float(raw) if any(c in raw for c in ".eE") else int(raw), pos))
        elif kind in ("bracket", "dquote"):
            tokens.append(Token("ident", raw[1:-1], pos))
        elif kind == "ident":
            upper = raw.upper()
            tokens.append(Token("kw", upper, pos) if upper in _KEYWORDS else Token("ident", raw, pos))
        elif kind == "op":
            tokens.append(Token("op", raw, pos))
        pos = m.end()
    tokens.append(Token("end", None, len(text)))
    return tokens


# --- tree ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Col:
    name: str


@dataclass(frozen=True)
class Lit:
    value: Any  # str, int, float or None (NULL)


@dataclass(frozen=True)
class Cmp:
    op: str
    left: Col | Lit
    right: Col | Lit


@dataclass(frozen=True)
class Like:
    expr: Col | Lit
    pattern: str
    escape: str | None
    negated: bool


@dataclass(frozen=True)
class In:
    expr: Col | Lit
    items: tuple[Col | Lit, ...]
    negated: bool


@dataclass(frozen=True)
class Between:
    expr: Col | Lit
    low: Col | Lit
    high: Col | Lit
    negated: bool


@dataclass(frozen=True)
class IsNull:
    expr: Col | Lit
    negated: bool


@dataclass(frozen=True)
class BoolOp:
    op: str  # AND / OR
    parts: tuple[Any, ...]


@dataclass(frozen=True)
class Not:
    expr: Any


class _Parser:
    def __init__(self, text: str, what: str) -> None:
        self.what = what
        self.source = text
        self.tokens = tokenize(text, what)
        self.i = 0

    def peek(self, offset: int = 0) -> Token:
        return self.tokens[min(self.i + offset, len(self.tokens) - 1)]

    def next(self) -> Token:
        tok = self.peek()
        self.i += 1
        return tok

    def fail(self, tok: Token | None = None) -> CaspioApiError:
        tok = tok or self.peek()
        shown = "end of input" if tok.kind == "end" else f"position {tok.pos + 1}"
        return bad_query(f"Cannot parse {self.what}: unexpected token at {shown}.")

    def is_kw(self, *words: str) -> bool:
        t = self.peek()
        return t.kind == "kw" and t.value in words

    def is_op(self, *ops: str) -> bool:
        t = self.peek()
        return t.kind == "op" and t.value in ops

    def expect_kw(self, word: str) -> None:
        if not self.is_kw(word):
            raise self.fail()
        self.i += 1

    def expect_op(self, op: str) -> None:
        if not self.is_op(op):
            raise self.fail()
        self.i += 1

    # where
    def expr(self, depth: int = 0) -> Any:
        if depth > MAX_DEPTH:
            raise bad_query(f"Cannot parse {self.what}: nested too deeply.")
        parts = [self.and_expr(depth)]
        while self.is_kw("OR"):
            self.i += 1
            parts.append(self.and_expr(depth))
        return parts[0] if len(parts) == 1 else BoolOp("OR", tuple(parts))

    def and_expr(self, depth: int) -> Any:
        parts = [self.not_expr(depth)]
        while self.is_kw("AND"):
            self.i += 1
            parts.append(self.not_expr(depth))
        return parts[0] if len(parts) == 1 else BoolOp("AND", tuple(parts))

    def not_expr(self, depth: int) -> Any:
        if self.is_kw("NOT"):
            self.i += 1
            if depth > MAX_DEPTH:
                raise bad_query(f"Cannot parse {self.what}: nested too deeply.")
            return Not(self.not_expr(depth + 1))
        return self.predicate(depth)

    def predicate(self, depth: int) -> Any:
        if self.is_op("("):
            # '(' starts a nested condition; T-SQL has no row values, so no ambiguity here
            self.i += 1
            inner = self.expr(depth + 1)
            self.expect_op(")")
            return inner
        left = self.operand()
        tok = self.peek()
        if tok.kind == "op" and tok.value in ("=", "<>", "!=", "<", ">", "<=", ">="):
            self.i += 1
            return Cmp("<>" if tok.value == "!=" else tok.value, left, self.operand())
        negated = False
        if self.is_kw("NOT"):
            self.i += 1
            negated = True
            if not self.is_kw("LIKE", "IN", "BETWEEN"):
                raise self.fail()
        if self.is_kw("LIKE"):
            self.i += 1
            pattern = self.next()
            if pattern.kind != "str":
                raise self.fail(pattern)
            escape = None
            if self.is_kw("ESCAPE"):
                self.i += 1
                esc = self.next()
                if esc.kind != "str" or len(esc.value) != 1:
                    raise self.fail(esc)
                escape = esc.value
            return Like(left, pattern.value, escape, negated)
        if self.is_kw("IN"):
            self.i += 1
            self.expect_op("(")
            items = [self.operand()]
            while self.is_op(","):
                self.i += 1
                items.append(self.operand())
            self.expect_op(")")
            return In(left, tuple(items), negated)
        if self.is_kw("BETWEEN"):
            self.i += 1
            low = self.operand()
            self.expect_kw("AND")
            return Between(left, low, self.operand(), negated)
        if self.is_kw("IS") and not negated:
            self.i += 1
            neg = False
            if self.is_kw("NOT"):
                self.i += 1
                neg = True
            self.expect_kw("NULL")
            return IsNull(left, neg)
        raise self.fail()

    def operand(self) -> Col | Lit:
        tok = self.next()
        if tok.kind == "ident":
            if self.is_op("("):  # a function call: not in the subset
                raise bad_query(f"Cannot parse {self.what}: functions are not supported "
                                f"(at position {tok.pos + 1}).")
            return Col(tok.value)
        if tok.kind in ("str", "num"):
            return Lit(tok.value)
        if tok.kind == "kw" and tok.value == "NULL":
            return Lit(None)
        if tok.kind == "op" and tok.value in ("-", "+"):
            num = self.next()
            if num.kind != "num":
                raise self.fail(num)
            return Lit(-num.value if tok.value == "-" else num.value)
        raise self.fail(tok)

    def finish(self) -> None:
        if self.peek().kind != "end":
            raise self.fail()


def parse_where(text: str) -> Any:
    """The tree of a where clause; 400 IncorrectQueryParameter when it is outside the subset."""
    if not text.strip():
        raise bad_query("q.where is empty.")
    p = _Parser(text, "q.where")
    tree = p.expr()
    p.finish()
    return tree


# --- select / orderBy / groupBy ------------------------------------------------------------------
@dataclass(frozen=True)
class SelectItem:
    """``*``, a column, or an aggregate over a column or ``*``; with an optional alias."""

    column: str | None  # None with agg COUNT = COUNT(*); None without agg = '*'
    agg: str | None = None
    distinct: bool = False
    alias: str | None = None
    text: str = ""

    @property
    def star(self) -> bool:
        return self.column is None and self.agg is None


def _item(p: _Parser, allow_alias: bool) -> SelectItem:
    start = p.peek().pos
    tok = p.next()
    if tok.kind == "op" and tok.value == "*":
        item = SelectItem(None)
    elif tok.kind == "ident" and p.is_op("("):
        fn = tok.value.upper()
        if fn not in AGGREGATES:
            raise bad_query(f"Cannot parse {p.what}: function '{tok.value}' is not supported.")
        p.i += 1
        distinct = False
        if p.is_kw("DISTINCT"):
            p.i += 1
            distinct = True
        arg = p.next()
        if arg.kind == "op" and arg.value == "*" and fn == "COUNT" and not distinct:
            column = None
        elif arg.kind == "ident":
            column = arg.value
        else:
            raise p.fail(arg)
        p.expect_op(")")
        item = SelectItem(column, fn, distinct)
    elif tok.kind == "ident":
        item = SelectItem(tok.value)
    else:
        raise p.fail(tok)
    end = p.peek().pos
    alias = None
    if allow_alias and not item.star:
        if p.is_kw("AS"):
            p.i += 1
            a = p.next()
            if a.kind not in ("ident", "str"):
                raise p.fail(a)
            alias = a.value
        elif p.peek().kind == "ident":
            alias = p.next().value
    return SelectItem(item.column, item.agg, item.distinct, alias, p.source[start:end].strip())


def _list(text: str, what: str, allow_alias: bool, allow_dir: bool
          ) -> list[tuple[SelectItem, bool]]:
    p = _Parser(text, what)
    out: list[tuple[SelectItem, bool]] = []
    while True:
        item = _item(p, allow_alias)
        desc = False
        if allow_dir and p.is_kw("ASC", "DESC"):
            desc = p.next().value == "DESC"
        out.append((item, desc))
        if p.is_op(","):
            p.i += 1
            continue
        p.finish()
        return out


def parse_select(text: str) -> list[SelectItem]:
    if not text.strip():
        raise bad_query("q.select is empty.")
    return [item for item, _ in _list(text, "q.select", True, False)]


def parse_order_by(text: str) -> list[tuple[SelectItem, bool]]:
    """(item, descending) pairs."""
    if not text.strip():
        raise bad_query("q.orderBy is empty.")
    items = _list(text, "q.orderBy", False, True)
    if any(i.star for i, _ in items):
        raise bad_query("Cannot parse q.orderBy: '*' is not allowed.")
    return items


def parse_group_by(text: str) -> list[str]:
    if not text.strip():
        raise bad_query("q.groupBy is empty.")
    items = _list(text, "q.groupBy", False, False)
    if any(i.agg or i.star for i, _ in items):
        raise bad_query("Cannot parse q.groupBy: only field names are allowed.")
    return [i.column for i, _ in items if i.column]


# --- compiling ----------------------------------------------------------------------------------
def quote(name: str) -> str:
    """A validated field name as a SQLite identifier (names never contain quotes)."""
    return '"' + name.replace('"', '""') + '"'


class Columns:
    """Case-insensitive field lookup for one table: name -> (canonical name, type)."""

    def __init__(self, types: Mapping[str, str], pk_type: str = "PK_ID") -> None:
        self._by_lower = {name.lower(): (name, ftype) for name, ftype in types.items()}
        self._by_lower.setdefault(PK_ID.lower(), (PK_ID, pk_type))

    def get(self, name: str) -> tuple[str, str] | None:
        return self._by_lower.get(name.lower())

    def resolve(self, name: str, status: int = 400) -> tuple[str, str]:
        found = self.get(name)
        if found is None:
            raise sql_error(f"Invalid column name '{name}'.", status)
        return found


def _conversion_error(target: str) -> CaspioApiError:
    return sql_error(f"Conversion failed when converting a character string to data type {target}.")


def coerce_literal(value: Any, ftype: str) -> Any:
    """A where-clause literal converted to the type of the column it is compared with."""
    if value is None:
        return None
    if ftype in DATE_TYPES:
        parsed = parse_datetime(value) if isinstance(value, str) else None
        if parsed is None:
            raise sql_error("Conversion failed when converting date and/or time from character string.")
        return parsed
    if ftype == "YES/NO":
        if isinstance(value, str):
            value = {"true": 1, "false": 0, "1": 1, "0": 0}.get(value.strip().lower())
            if value is None:
                raise _conversion_error("bit")
            return value
        return 1 if value else 0  # SQL Server: any non-zero number is bit 1
    if ftype in NUMERIC_TYPES or ftype == "PK_ID":
        if isinstance(value, str):
            try:
                return int(value.strip())
            except ValueError:
                try:
                    return float(value.strip())
                except ValueError:
                    raise _conversion_error("int" if ftype in ("INTEGER", "PK_ID", "AUTONUMBER")
                                            else "numeric") from None
        return value
    if isinstance(value, (int, float)):  # text column vs number: compare as the text of it
        return str(value)
    return value


def like_regex(pattern: str, escape: str | None) -> re.Pattern[str]:
    """T-SQL LIKE pattern (``%``, ``_``, ``[set]``, ``[^set]``) as a case-insensitive regex."""
    out, i = [], 0
    while i < len(pattern):
        c = pattern[i]
        if escape is not None and c == escape and i + 1 < len(pattern):
            out.append(re.escape(pattern[i + 1]))
            i += 2
            continue
        if c == "%":
            out.append(".*")
        elif c == "_":
            out.append(".")
        elif c == "[":
            close = pattern.find("]", i + 2)
            if close == -1:
                out.append(re.escape(c))
            else:
                body = pattern[i + 1:close]
                neg = body.startswith("^")
                if neg:
                    body = body[1:]
                chars = "".join(re.escape(ch) if ch != "-" else "-" for ch in body)
                out.append(f"[{'^' if neg else ''}{chars}]")
                i = close
        else:
            out.append(re.escape(c))
        i += 1
    return re.compile("".join(out), re.IGNORECASE | re.DOTALL)


class Compiler:
    """Compiles parsed clauses against one table's :class:`Columns` into SQL + parameters."""

    def __init__(self, columns: Columns) -> None:
        self.columns = columns
        self.params: list[Any] = []

    def _operand(self, node: Col | Lit, other_type: str | None) -> str:
        if isinstance(node, Col):
            name, _ = self.columns.resolve(node.name)
            return quote(name)
        value = node.value if other_type is None else coerce_literal(node.value, other_type)
        if value is None:
            return "NULL"
        self.params.append(value)
        return "?"

    def _type(self, node: Col | Lit) -> str | None:
        if isinstance(node, Col):
            return self.columns.resolve(node.name)[1]
        return None

    def where(self, node: Any) -> str:
        if isinstance(node, BoolOp):
            return "(" + f" {node.op} ".join(self.where(p) for p in node.parts) + ")"
        if isinstance(node, Not):
            return f"(NOT {self.where(node.expr)})"
        if isinstance(node, Cmp):
            lt, rt = self._type(node.left), self._type(node.right)
            left = self._operand(node.left, rt)
            right = self._operand(node.right, lt)
            return f"({left} {'<>' if node.op == '<>' else node.op} {right})"
        if isinstance(node, IsNull):
            return f"({self._operand(node.expr, None)} IS {'NOT ' if node.negated else ''}NULL)"
        if isinstance(node, In):
            t = self._type(node.expr)
            left = self._operand(node.expr, None)
            items = ", ".join(self._operand(i, t) for i in node.items)
            return f"({left} {'NOT ' if node.negated else ''}IN ({items}))"
        if isinstance(node, Between):
            t = self._type(node.expr)
            left = self._operand(node.expr, None)
            low, high = self._operand(node.low, t), self._operand(node.high, t)
            return f"({left} {'NOT ' if node.negated else ''}BETWEEN {low} AND {high})"
        if isinstance(node, Like):
            left = self._operand(node.expr, None)
            neg = "NOT " if node.negated else ""
            if "[" in node.pattern:
                self.params += [node.pattern, node.escape]
                return f"({neg}caspio_like({left}, ?, ?))"
            self.params.append(node.pattern)
            if node.escape is not None:
                self.params.append(node.escape)
                return f"({left} {neg}LIKE ? ESCAPE ?)"
            return f"({left} {neg}LIKE ?)"
        raise TypeError(f"unexpected node {node!r}")
