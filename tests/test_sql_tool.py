"""The read-only `sql` tool (refuses every write, ATTACH and PRAGMA change; stops runaway queries; limits
rows and characters) and execution-accuracy scoring."""

from __future__ import annotations

import hashlib
import sqlite3
import time
from pathlib import Path

import pytest

from arlkit.envs.sql import SQLScorer, execution_scores, has_order_by, rows_f1, strip_sql
from arlkit.errors import ArlkitError
from arlkit.tools.sql import SQLTool, run_query


@pytest.fixture()
def db(tmp_path: Path) -> Path:
    path = tmp_path / "shop.sqlite"
    conn = sqlite3.connect(path)
    conn.executescript(
        "CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT, n INTEGER);"
        "INSERT INTO t VALUES (1, 'a', 3), (2, 'b', 1), (3, 'c', 2), (4, 'd', 2);"
        "CREATE INDEX t_n ON t(n);"
    )
    conn.commit()
    conn.close()
    return path


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# Every statement that could change the database, its file, the connection or the host.
ATTACKS = [
    "INSERT INTO t VALUES (9, 'x', 0)",
    "UPDATE t SET n = 0",
    "DELETE FROM t",
    "REPLACE INTO t VALUES (1, 'z', 9)",
    "DROP TABLE t",
    "DROP INDEX t_n",
    "CREATE TABLE u (x)",
    "CREATE TEMP TABLE u (x)",
    "CREATE INDEX i2 ON t(name)",
    "CREATE VIEW v AS SELECT 1",
    "CREATE TRIGGER tr AFTER INSERT ON t BEGIN DELETE FROM t; END",
    "ALTER TABLE t ADD COLUMN y",
    "ALTER TABLE t RENAME TO t2",
    "ATTACH DATABASE '{other}' AS other",
    "ATTACH DATABASE ':memory:' AS mem",
    "DETACH DATABASE main",
    "PRAGMA journal_mode = WAL",
    "PRAGMA writable_schema = ON",
    "PRAGMA user_version = 7",
    "PRAGMA foreign_keys = OFF",
    "PRAGMA query_only = 0",
    "VACUUM",
    "VACUUM INTO '{other}'",
    "REINDEX",
    "ANALYZE",
    "BEGIN IMMEDIATE",
    "SAVEPOINT s1",
    "SELECT load_extension('/tmp/evil.so')",
    "SELECT fts3_tokenizer('simple')",
    "CREATE VIRTUAL TABLE f USING fts4(x)",
    "WITH x AS (SELECT 1) INSERT INTO t SELECT 8, 'y', 1 FROM x",
]


@pytest.mark.parametrize("statement", ATTACKS)
def test_sql_tool_refuses_every_write_attach_and_pragma_change(
    db: Path, tmp_path: Path, statement: str
) -> None:
    before = _digest(db)
    other = tmp_path / "other.sqlite"
    result = SQLTool(db)(query=statement.format(other=other))
    assert not result.ok and result.text.startswith("Error:"), (statement, result)
    assert _digest(db) == before  # the file is byte-for-byte unchanged
    assert not other.exists()  # nothing was written elsewhere either
    assert sorted(SQLTool(db)(query="SELECT name FROM t").text.splitlines()) == ["a", "b", "c", "d", "name"]


def test_catalogue_is_long_enough() -> None:
    assert len(ATTACKS) >= 15


def test_sql_tool_reads_schema_pragmas_and_formats_rows(db: Path) -> None:
    tool = SQLTool(db, max_rows=2)
    assert tool(query="SELECT id, name FROM t ORDER BY id").text == (
        "id | name\n1 | a\n2 | b\n... (only the first 2 rows are shown)"
    )
    assert tool(query="SELECT * FROM t WHERE id = 99").text == "(no rows)"
    info = tool(query="PRAGMA table_info(t)")  # a read-only pragma stays allowed
    assert info.ok and "name" in info.text
    assert "CREATE TABLE t" in SQLTool(db)(query="SELECT sql FROM sqlite_master WHERE name = 't'").text
    cut = SQLTool(db, max_chars=10)(query="SELECT name, n FROM t ORDER BY id")
    assert cut.text == "name | n\na\n... (cut at 10 characters)"  # the first 10 characters, then the note
    bad = tool(query="SELECT nope FROM t")
    assert not bad.ok and "no such column: nope" in bad.text
    two = tool(query="SELECT 1; SELECT 2")
    assert not two.ok and "one statement" in two.text


def test_runaway_query_is_stopped_by_the_time_limit(db: Path) -> None:
    tool = SQLTool(db, time_limit_s=0.3)
    start = time.perf_counter()
    # an endless recursive CTE: without the progress handler this never returns
    result = tool(
        query="WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT max(x) FROM c"
    )
    elapsed = time.perf_counter() - start
    assert not result.ok and "time limit" in result.text
    assert elapsed < 3.0  # stopped near 0.3 s, not run to the end
    # a huge cross join is stopped the same way
    cross = tool(query="SELECT count(*) FROM t a, t b, t c, t d, t e, t f, t g, t h, t i, t j, t k, t l, t m")
    assert not cross.ok and "time limit" in cross.text
    # a memory bomb hits SQLite's length limit
    blob = tool(query="SELECT length(zeroblob(2000000000))")
    assert not blob.ok and "too big" in blob.text


def test_row_bound_tool_and_missing_database(db: Path, tmp_path: Path) -> None:
    tool = SQLTool()
    tool.bind_row({"db_path": str(db)})
    assert tool(query="SELECT count(*) FROM t").text == "count(*)\n4"
    with pytest.raises(ArlkitError, match="does not exist"):
        run_query(tmp_path / "missing.sqlite", "SELECT 1")


def test_order_by_detection_ignores_string_literals() -> None:
    assert has_order_by("SELECT a FROM t ORDER BY a")
    assert has_order_by("select a from t order\n  by a desc")
    assert not has_order_by("SELECT a FROM t WHERE b = 'order by x'")
    assert not has_order_by("SELECT recorder, bylaw FROM t")
    assert strip_sql("```sql\nSELECT 1;\n```") == "SELECT 1"


def test_rows_f1_by_hand() -> None:
    # pred {(1,), (2,), (2,)} vs gold {(2,), (3,)}: overlap 1 (one (2,)); P = 1/3, R = 1/2, F1 = 2PR/(P+R) = 0.4
    assert rows_f1([(1,), (2,), (2,)], [(2,), (3,)]) == pytest.approx(0.4)
    assert rows_f1([], []) == 1.0 and rows_f1([(1,)], []) == 0.0


def test_execution_accuracy_multiset_unless_gold_orders(db: Path) -> None:
    gold = "SELECT name FROM t WHERE n = 2"  # c, d (no ORDER BY: any order, duplicates count)
    assert execution_scores("SELECT name FROM t WHERE n = 2 ORDER BY name DESC", gold, str(db))["em"] == 1.0
    assert execution_scores("SELECT name FROM t WHERE n >= 2", gold, str(db)) == {
        "em": 0.0,
        # pred a, c, d vs gold c, d: P = 2/3, R = 1, F1 = 2 * (2/3) / (5/3) = 0.8
        "f1": pytest.approx(0.8),
        "sql_ok": 1.0,
    }
    # a multiset: one row twice is not the same result as two distinct rows
    dup = execution_scores("SELECT 'c' UNION ALL SELECT 'c'", gold, str(db))
    assert dup["em"] == 0.0 and dup["f1"] == pytest.approx(0.5)  # P = 1/2, R = 1/2
    ordered = "SELECT name FROM t ORDER BY n, id"  # b, c, d, a: order matters now
    assert execution_scores("SELECT name FROM t ORDER BY n, id", ordered, str(db))["em"] == 1.0
    assert execution_scores("SELECT name FROM t ORDER BY id", ordered, str(db))["em"] == 0.0
    assert execution_scores("DELETE FROM t", gold, str(db)) == {"em": 0.0, "f1": 0.0, "sql_ok": 0.0}
    assert execution_scores(None, gold, str(db))["em"] == 0.0
    with pytest.raises(ArlkitError, match="gold query"):
        execution_scores("SELECT 1", "SELECT nope FROM t", str(db))


def test_sql_scorer_prompt_shows_schema_and_evidence(db: Path) -> None:
    row = {"question": "How many?", "query": "SELECT 1", "db_path": str(db), "schema": "CREATE TABLE t (x);"}
    assert SQLScorer().prompt(row) == "How many?"
    shown = SQLScorer(show_schema=True).prompt({**row, "evidence": "x is a count"})
    assert shown == "Database schema:\nCREATE TABLE t (x);\n\nQuestion: How many?\nHint: x is a count"
    with pytest.raises(ArlkitError, match="lacks"):
        SQLScorer().prompt({"question": "q"})
