"""A read-only SQLite `sql` tool: what a model sends can read a database, never change or escape it.

Four layers, each enough on its own for a different attack:
- the database is opened through the URI `mode=ro`, so SQLite itself refuses to write the file;
- an authorizer allows only reading (SELECT, reading columns, recursive CTEs, plain functions and a short list
  of schema pragmas) and denies everything else: INSERT/UPDATE/DELETE, DDL, ATTACH/DETACH, transactions,
  pragma changes, `load_extension` and `fts3_tokenizer`;
- a progress handler interrupts a statement that runs past the time limit (a runaway recursive CTE or cross
  join), and SQLite's length limit stops `zeroblob`/`randomblob` memory bombs;
- at most `max_rows` rows are fetched and the observation is cut at `max_chars` characters.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from arlkit.errors import ArlkitError
from arlkit.tools.base import ToolResult

__all__ = ["QueryResult", "SQLTool", "format_result", "open_readonly", "run_query"]

READ_ONLY_PRAGMAS = frozenset(
    {"table_info", "table_xinfo", "table_list", "index_list", "index_info", "index_xinfo", "foreign_key_list"}
)
DENIED_FUNCTIONS = frozenset({"load_extension", "fts3_tokenizer", "readfile", "writefile", "edit"})
MAX_VALUE_BYTES = 1_000_000  # SQLITE_LIMIT_LENGTH: largest string or blob a query may build
_PROGRESS_OPS = 1000  # virtual-machine instructions between two deadline checks
_DESCRIPTION = "Run one read-only SQL query (SQLite) on the database and return the rows."


class SQLTimeout(sqlite3.OperationalError):
    """The statement ran past the time limit and was interrupted."""


def _authorizer(
    action: int, arg1: str | None, arg2: str | None, _db: str | None, _trigger: str | None
) -> int:
    if action in (sqlite3.SQLITE_SELECT, sqlite3.SQLITE_READ, sqlite3.SQLITE_RECURSIVE):
        return sqlite3.SQLITE_OK
    if action == sqlite3.SQLITE_FUNCTION:  # arg2 is the function's name
        return sqlite3.SQLITE_DENY if (arg2 or "").lower() in DENIED_FUNCTIONS else sqlite3.SQLITE_OK
    if action == sqlite3.SQLITE_PRAGMA:  # these pragmas only read the schema, whatever their argument
        return sqlite3.SQLITE_OK if (arg1 or "").lower() in READ_ONLY_PRAGMAS else sqlite3.SQLITE_DENY
    return sqlite3.SQLITE_DENY


def open_readonly(db_path: str | Path) -> sqlite3.Connection:
    """A read-only connection with the authorizer and length limits set (no time limit yet).

    Raises:
        ArlkitError: the database file does not exist.
    """
    path = Path(db_path)
    if not path.is_file():
        raise ArlkitError(f"SQLite database {str(path)!r} does not exist")
    conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, check_same_thread=False)
    conn.set_authorizer(_authorizer)
    if hasattr(conn, "setlimit"):  # Python >= 3.11
        conn.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, MAX_VALUE_BYTES)
        conn.setlimit(sqlite3.SQLITE_LIMIT_ATTACHED, 0)
    return conn


@dataclass(frozen=True)
class QueryResult:
    columns: tuple[str, ...]
    rows: list[tuple[Any, ...]]
    truncated: bool  # more rows existed than were fetched


def run_query(db_path: str | Path, sql: str, time_limit_s: float = 2.0, max_rows: int = 50) -> QueryResult:
    """Run one statement read-only under a time limit; fetch at most `max_rows` rows.

    Raises:
        sqlite3.Error: the statement is invalid, not authorized, or interrupted (SQLTimeout).
        ArlkitError: the database file does not exist.
    """
    conn = open_readonly(db_path)
    deadline = time.monotonic() + time_limit_s
    conn.set_progress_handler(lambda: int(time.monotonic() > deadline), _PROGRESS_OPS)
    try:
        cur = conn.execute(sql)
        rows = cur.fetchmany(max_rows + 1)
        columns = tuple(d[0] for d in cur.description or ())
    except sqlite3.OperationalError as exc:
        if time.monotonic() > deadline and "interrupt" in str(exc):
            raise SQLTimeout(f"query stopped after the {time_limit_s:g} s time limit") from None
        raise
    finally:
        conn.close()
    return QueryResult(columns, rows[:max_rows], len(rows) > max_rows)


def format_result(result: QueryResult, max_chars: int = 2000) -> str:
    """Header line, then one line per row, cells joined by ` | `; cut at `max_chars` with a note."""
    if not result.rows:
        return "(no rows)"
    lines = [" | ".join(result.columns)]
    lines += [" | ".join("NULL" if v is None else str(v) for v in row) for row in result.rows]
    if result.truncated:
        lines.append(f"... (only the first {len(result.rows)} rows are shown)")
    text = "\n".join(lines)
    return text if len(text) <= max_chars else text[:max_chars] + f"\n... (cut at {max_chars} characters)"


class SQLTool:
    """The `sql` :class:`~arlkit.tools.base.Tool` over one SQLite file; row-bound when `db_path` is None.

    A row-bound tool reads the database of the episode's row (`row["db_path"]`, as NL2SQL data sets give one
    database per question); ToolEnv calls :meth:`bind_row` at every reset.
    """

    def __init__(
        self,
        db_path: str | Path | None = None,
        time_limit_s: float = 2.0,
        max_rows: int = 50,
        max_chars: int = 2000,
        name: str = "sql",
        description: str = _DESCRIPTION,
    ) -> None:
        if time_limit_s <= 0 or max_rows < 1 or max_chars < 1:
            raise ArlkitError(
                f"SQLTool: time_limit_s, max_rows and max_chars must be > 0, got {time_limit_s}, {max_rows}, "
                f"{max_chars}"
            )
        self.db_path = None if db_path is None else Path(db_path)
        self.time_limit_s, self.max_rows, self.max_chars = time_limit_s, max_rows, max_chars
        self.name, self.description = name, description
        self.parameters: dict = {
            "type": "object",
            "properties": {"query": {"type": "string", "description": "One SQLite SELECT statement."}},
            "required": ["query"],
        }

    def bind_row(self, row: dict) -> None:
        if row.get("db_path"):
            self.db_path = Path(row["db_path"])

    def __call__(self, query: str) -> ToolResult:
        if self.db_path is None:
            raise ArlkitError("SQLTool has no database: give db_path or rows with a 'db_path'")
        if not query.strip():
            return ToolResult("Error: the query was empty; write one SELECT statement.", ok=False)
        try:
            result = run_query(self.db_path, query, self.time_limit_s, self.max_rows)
        except (sqlite3.Error, sqlite3.Warning) as exc:
            return ToolResult(f"Error: {_explain(exc)}", ok=False)
        return ToolResult(format_result(result, self.max_chars))

    def __repr__(self) -> str:
        return f"SQLTool(db_path={str(self.db_path)!r})"


def _explain(exc: Exception) -> str:
    msg = str(exc)
    if "not authorized" in msg:
        return "not authorized: the database is read-only; only SELECT queries are allowed."
    return msg
