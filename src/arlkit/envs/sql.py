"""NL2SQL scoring: execution accuracy of the SQL in the final answer, and an env factory.

The final answer is a SQL query. It is executed read-only (tools/sql.py) and its result compared with the
gold query's result: equal as multisets of rows, and equal as lists only when the gold query has ORDER BY
(the execution-accuracy convention of Spider, arXiv 1809.08887, and BIRD, arXiv 2305.03111). So for NL2SQL
`em` is execution accuracy, and `f1` its partial-credit analogue: the F1 between the two multisets of rows.
"""

from __future__ import annotations

import re
import sqlite3
from collections import Counter
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

from arlkit.envs.tool_env import ToolEnv, env_with_instructions
from arlkit.errors import ArlkitError
from arlkit.tools.base import Tool
from arlkit.tools.sql import run_query

__all__ = ["SQLScorer", "execution_scores", "has_order_by", "make_sql_env", "rows_f1", "strip_sql"]

MAX_COMPARED_ROWS = 10_000  # rows fetched from each query when comparing results
_STRING = re.compile(r"'(?:[^']|'')*'|\"(?:[^\"]|\"\")*\"")
_ORDER_BY = re.compile(r"\border\s+by\b", re.IGNORECASE)
_FENCE = re.compile(r"^```(?:sql)?\s*|\s*```$", re.IGNORECASE)


def has_order_by(sql: str) -> bool:
    """True if the query has ORDER BY outside string literals."""
    return bool(_ORDER_BY.search(_STRING.sub("''", sql)))


def strip_sql(text: str) -> str:
    """The query in an answer: Markdown fences, surrounding space and one trailing ';' removed."""
    return _FENCE.sub("", text.strip()).strip().removesuffix(";").strip()


def rows_f1(pred: Sequence[tuple], gold: Sequence[tuple]) -> float:
    """F1 between two multisets of rows (both empty: 1.0)."""
    if not pred or not gold:
        return float(not pred and not gold)
    same = sum((Counter(pred) & Counter(gold)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(gold)
    return 2 * precision * recall / (precision + recall)


@lru_cache(maxsize=8192)
def _gold_rows(db_path: str, sql: str, time_limit_s: float) -> tuple[tuple, ...]:
    try:
        return tuple(run_query(db_path, sql, time_limit_s, MAX_COMPARED_ROWS).rows)
    except (sqlite3.Error, sqlite3.Warning) as exc:
        raise ArlkitError(f"gold query {sql!r} fails on {db_path!r}: {exc}") from None


def execution_scores(pred_sql: str | None, gold_sql: str, db_path: str, time_limit_s: float = 2.0) -> dict:
    """{"em": execution accuracy (0/1), "f1": row-multiset F1, "sql_ok": the prediction ran}.

    Raises:
        ArlkitError: the gold query itself fails (a data problem, not the model's).
    """
    gold = _gold_rows(str(db_path), gold_sql, time_limit_s)
    if not pred_sql or not strip_sql(pred_sql):
        return {"em": 0.0, "f1": 0.0, "sql_ok": 0.0}
    try:
        pred = run_query(db_path, strip_sql(pred_sql), time_limit_s, MAX_COMPARED_ROWS).rows
    except (sqlite3.Error, sqlite3.Warning):
        return {"em": 0.0, "f1": 0.0, "sql_ok": 0.0}
    same = list(pred) == list(gold) if has_order_by(gold_sql) else Counter(pred) == Counter(gold)
    return {"em": float(same), "f1": rows_f1(pred, gold), "sql_ok": 1.0}


class SQLScorer:
    """Prompt = the question (plus BIRD's `evidence` and the schema when shown); score = execution accuracy.

    Rows carry `question`, the gold `query` and the `db_path` of their database, and for `show_schema` a
    `schema` text.
    """

    def __init__(self, show_schema: bool = False, time_limit_s: float = 2.0) -> None:
        self.show_schema, self.time_limit_s = show_schema, time_limit_s

    def prompt(self, row: dict) -> str:
        missing = [k for k in ("question", "query", "db_path") if not row.get(k)]
        if missing:
            raise ArlkitError(f"NL2SQL row lacks {missing} (keys: {sorted(row)})")
        text = row["question"]
        if row.get("evidence"):
            text += f"\nHint: {row['evidence']}"
        if self.show_schema:
            text = f"Database schema:\n{row.get('schema', '')}\n\nQuestion: {text}"
        return text

    def score(self, answer: str | None, row: dict) -> dict[str, float]:
        return execution_scores(answer, row["query"], row["db_path"], self.time_limit_s)


SQL_SYSTEM_PROMPT = (
    "Answer the user's question about the SQLite database with one SQL query. Use the sql tool to look at "
    "tables and values first when you are unsure. Write the final query between <answer> and </answer>."
)


def make_sql_env(tools: Sequence[Tool], scorer: SQLScorer, **kw: Any) -> ToolEnv:
    """A :class:`ToolEnv` scored by execution accuracy; `system_prompt` defaults to SQL_SYSTEM_PROMPT plus the
    format's instructions (`system_prompt=None`: no system message)."""
    return env_with_instructions(tools, scorer, SQL_SYSTEM_PROMPT, **kw)
