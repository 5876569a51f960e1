"""Loaders for NL2SQL data in the Spider/BIRD layout.

    <root>/tables.json                       [{db_id, table_names_original, column_names_original:
                                               [[table_index, name]], column_types, primary_keys,
                                               foreign_keys: [[column, column]]}]
    <root>/train.json, <root>/dev.json        [{db_id, question, query}] (Spider; arXiv 1809.08887)
                                              [{db_id, question, SQL, evidence}] (BIRD; arXiv 2305.03111)
    <root>/<db_dir>/<db_id>/<db_id>.sqlite    one database per db_id

A row is {id, question, query, db_id, db_path, schema, evidence?, answer (= query, for reports)}.
"""

from __future__ import annotations

from pathlib import Path

from arlkit.data.qa_files import read_records
from arlkit.errors import ArlkitError


def _flat(keys: list) -> list[int]:
    """Column indices of `primary_keys` (Spider: ints; BIRD: ints or lists for composite keys)."""
    out: list[int] = []
    for k in keys:
        out += k if isinstance(k, list) else [k]
    return out


def check_schema(db: dict, where: str) -> None:
    """Refuse a tables.json entry whose lists disagree (a hand-edited or truncated file), naming the field.

    Raises:
        ArlkitError: column_types of another length than column_names_original, or a column's table index, a
            primary key or a foreign key that points past its list.
    """
    n_tables, n_cols = len(db["table_names_original"]), len(db["column_names_original"])
    types = db.get("column_types")
    if types and len(types) != n_cols:
        raise ArlkitError(
            f"{where}: column_types has {len(types)} entries for {n_cols} column_names_original; give one "
            "type per column"
        )
    for i, (t, name) in enumerate(db["column_names_original"]):
        if not -1 <= t < n_tables:
            raise ArlkitError(
                f"{where}: column_names_original[{i}] ({name!r}) names table {t}; there are {n_tables} tables"
            )
    for field, keys in (
        ("primary_keys", _flat(db.get("primary_keys") or [])),
        ("foreign_keys", _flat(db.get("foreign_keys") or [])),
    ):
        bad = [k for k in keys if not 0 <= k < n_cols]
        if bad:
            raise ArlkitError(
                f"{where}: {field} refers to column(s) {bad}; column_names_original has {n_cols} (0..{n_cols - 1})"
            )


def schema_text(db: dict) -> str:
    """One `CREATE TABLE` line per table with column types and primary keys, then the foreign keys (of an
    entry `check_schema` accepts)."""
    tables = db["table_names_original"]
    columns = db["column_names_original"]
    types = db.get("column_types") or ["text"] * len(columns)
    primary = set(_flat(db.get("primary_keys") or []))
    by_table: dict[int, list[str]] = {i: [] for i in range(len(tables))}
    for i, ((t, name), kind) in enumerate(zip(columns, types, strict=True)):
        if t >= 0:  # column 0 is Spider's "*"
            by_table[t].append(f"{name} {kind}" + (" PRIMARY KEY" if i in primary else ""))
    lines = [f"CREATE TABLE {tables[t]} ({', '.join(cols)});" for t, cols in by_table.items()]
    for a, b in db.get("foreign_keys") or []:
        (ta, ca), (tb, cb) = columns[a], columns[b]
        lines.append(f"-- {tables[ta]}.{ca} references {tables[tb]}.{cb}")
    return "\n".join(lines)


def load_tables(path: str | Path) -> dict[str, str]:
    """db_id -> schema text, from a tables.json.

    Raises:
        ArlkitError: missing file or a database entry without the Spider fields, or whose lists disagree.
    """
    out = {}
    for i, db in enumerate(read_records(path)):
        missing = [k for k in ("db_id", "table_names_original", "column_names_original") if k not in db]
        if missing:
            raise ArlkitError(f"{path} entry {i}: missing field(s) {missing}")
        check_schema(db, f"{path} entry {i} (db_id {db['db_id']!r})")
        out[db["db_id"]] = schema_text(db)
    return out


def load_nl2sql(root: str | Path, file: str, tables: dict[str, str], db_dir: str = "database") -> list[dict]:
    """Rows of one Spider/BIRD question file; each names its SQLite file, which must exist.

    Raises:
        ArlkitError: missing file, a record without db_id/question/query (or SQL), an unknown db_id, or a
            missing database file.
    """
    root = Path(root)
    rows = []
    for i, r in enumerate(read_records(root / file)):
        where = f"{root / file} record {i}"
        gold = r.get("query", r.get("SQL"))
        if "db_id" not in r or "question" not in r or gold is None:
            raise ArlkitError(
                f"{where}: needs db_id, question and query (Spider) or SQL (BIRD); has {sorted(r)}"
            )
        db_id = r["db_id"]
        db_path = root / db_dir / db_id / f"{db_id}.sqlite"
        if db_id not in tables:
            raise ArlkitError(f"{where}: db_id {db_id!r} is not in the tables file")
        if not db_path.is_file():
            raise ArlkitError(
                f"{where}: database {str(db_path)!r} does not exist (task.db_dir is {db_dir!r})"
            )
        row = {
            "id": str(r.get("question_id", f"{Path(file).stem}-{i}")),
            "question": r["question"],
            "query": gold,
            "answer": gold,
            "db_id": db_id,
            "db_path": str(db_path),
            "schema": tables[db_id],
            "kind": r.get("difficulty"),
        }
        if r.get("evidence"):
            row["evidence"] = r["evidence"]
        rows.append(row)
    return rows
