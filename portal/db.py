"""The database toolbox: what services and tasks share to write SQL that runs the same on
SQLite and PostgreSQL, and in bulk."""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    ColumnElement,
    SQLColumnExpression,
    Table,
    any_,
    bindparam,
    func,
    insert,
    select,
    text,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.dialects.postgresql import Insert as PgInsert
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import Insert as SqliteInsert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import CursorResult, Result

from .extensions import db

# The monthly partitions of the tables partitioned on PostgreSQL (portal/services/retention):
# the models describe the partitioned parent only.
PARTITIONED = ("usage_daily", "ledger_entries")
PARTITION_NAME = re.compile(rf"^({'|'.join(PARTITIONED)})_(y\d{{4}}m\d{{2}}|default)$")


def not_a_partition(name: str | None, type_: str, _parents: object) -> bool:
    """Alembic's ``include_name``: compare (and autogenerate) the parents, not partitions."""
    return not (type_ == "table" and name is not None and PARTITION_NAME.match(name))


def dialect_insert(table: Table) -> PgInsert | SqliteInsert:
    """INSERT with the dialect's ``on_conflict_do_nothing`` / ``on_conflict_do_update``."""
    return (pg_insert if db.engine.dialect.name == "postgresql" else sqlite_insert)(table)


def plan_per_value() -> None:
    """PostgreSQL's own choice of plan, for the rest of this transaction, where the web
    server's connections keep one generic plan per prepared statement
    (DATABASE_GENERIC_PLANS): for statements across all accounts whose filters (a status, a
    date range) match a share of the rows that depends on the value."""
    db.session.execute(text("SELECT set_config('plan_cache_mode', 'auto', true)"))


def rowcount(result: Result[Any]) -> int:
    """The rows an UPDATE, DELETE or INSERT matched. ``Session.execute`` is typed to return a
    plain Result; a DML statement's is a CursorResult, which counts them."""
    if not isinstance(result, CursorResult):
        raise TypeError(f"not the result of a DML statement: {type(result).__name__}")
    return result.rowcount


def ids_in(column: SQLColumnExpression[int], ids: Sequence[int]) -> ColumnElement[bool]:
    """``column IN ids``; on PostgreSQL as one array parameter (``= ANY``), not a parameter per
    id to render, send and plan (a bulk job's thousand accounts)."""
    if db.engine.dialect.name == "postgresql":
        return column == any_(bindparam(None, list(ids), type_=ARRAY(BigInteger)))
    return column.in_(ids)


def allocate_ids(table: Table, count: int) -> list[int]:
    """``count`` new ids for ``table``, ascending, to insert rows with (bulk_insert). On
    PostgreSQL from the table's id sequence; on SQLite after the largest id, which is safe
    because every SQLite transaction holds the write lock from its start."""
    if count <= 0:
        return []
    if db.engine.dialect.name == "postgresql":
        return sorted(
            db.session.scalars(
                text(
                    f"SELECT nextval(pg_get_serial_sequence('{table.name}', 'id')) "
                    "FROM generate_series(1, :n)"
                ),
                {"n": count},
            )
        )
    db.session.flush()
    last: int = db.session.execute(select(func.coalesce(func.max(table.c.id), 0))).scalar_one()
    return list(range(last + 1, last + count + 1))


def bulk_insert(table: Table, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """Insert many rows (tuples in ``columns`` order) in the session's transaction: COPY on
    PostgreSQL, an executemany elsewhere. Columns left out take their defaults. (A row holds
    whatever its columns store, hence ``Any``.)"""
    if not rows:
        return
    if db.engine.dialect.name != "postgresql":
        db.session.execute(insert(table), [dict(zip(columns, row, strict=False)) for row in rows])
        return
    db.session.flush()  # the rows may refer to objects still pending in the session
    as_json = [n for n, c in enumerate(columns) if isinstance(table.c[c].type, JSON)]
    connection = db.session.connection().connection.driver_connection
    assert connection is not None  # psycopg's connection under the pool's wrapper
    with (
        connection.cursor() as cursor,
        cursor.copy(f"COPY {table.name} ({', '.join(columns)}) FROM STDIN") as copy,
    ):
        copy.set_types(_copy_types(table, tuple(columns)))
        for row in rows:
            if as_json:
                values = list(row)
                for n in as_json:
                    values[n] = None if values[n] is None else _compact_json(values[n])
                row = tuple(values)
            copy.write_row(row)


@functools.lru_cache(maxsize=64)
def _copy_types(table: Table, columns: tuple[str, ...]) -> list[str]:
    """Each column's PostgreSQL type, so that COPY dumps values by it rather than by looking
    up each value's Python type; JSON columns get the text it was encoded to."""
    return [
        "text"
        if isinstance(table.c[c].type, JSON)
        else table.c[c].type.compile(dialect=_POSTGRESQL).split("(")[0].lower()
        for c in columns
    ]


_POSTGRESQL = postgresql.dialect()
# PostgreSQL's json keeps the text as given: without spaces after the separators, a smaller
# document to parse, compress and write to the WAL.
_compact_json = json.JSONEncoder(separators=(",", ":")).encode


@dataclass(frozen=True)
class Page:
    items: list
    page: int
    per_page: int
    total: int

    @property
    def pages(self) -> int:
        return max(1, -(-self.total // self.per_page))

    @property
    def has_next(self) -> bool:
        return self.page < self.pages

    @property
    def has_prev(self) -> bool:
        return self.page > 1


@dataclass(frozen=True)
class Window:
    """One page of a list that is not counted on each view (a count reads every row): it
    knows only whether another page follows."""

    items: list
    page: int
    per_page: int
    has_next: bool
    pages: None = None  # for the pager: not counted

    @property
    def has_prev(self) -> bool:
        return self.page > 1
