"""Loaders for multi-hop QA files in their official public schemas, into arlkit's plain row dicts.

- HotpotQA (arXiv 1809.09600): a JSON list of {_id, question, answer, type, level, supporting_facts:
  [[title, sentence_id]], context: [[title, [sentences]]]}.
- 2WikiMultihopQA (arXiv 2011.01060): HotpotQA's schema plus `evidences` ([subject, relation, object]).
- MuSiQue (arXiv 2108.00573): JSONL of {id, question, answer, answer_aliases, answerable, paragraphs:
  [{idx, title, paragraph_text, is_supporting}], question_decomposition}; unanswerable rows are skipped.
- Generic JSONL or Parquet (or a JSON list) of {question, answer | answers}, optionally with `id` and
  `paragraphs` ([title, text] pairs or {title, text} objects).
A row is {id, question, answer, answers?, answer_aliases?, paragraphs: [[title, text]], support_titles, kind}.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from arlkit.errors import ArlkitError

FORMATS = ("hotpotqa", "2wiki", "musique", "jsonl", "parquet")


def read_records(path: str | Path) -> list[dict]:
    """The records of a JSON list, JSONL or Parquet file.

    Raises:
        ArlkitError: missing file, a file with no records, text that is not UTF-8 (with the line), invalid
            JSON (with the line), Parquet without pyarrow, non-object records.
    """
    p = Path(path)
    if not p.is_file():
        raise ArlkitError(f"data file {str(p)!r} does not exist")
    if p.suffix == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise ArlkitError("reading Parquet needs pyarrow: pip install 'arlkit[parquet]'") from None
        records = pq.read_table(p).to_pylist()
    elif p.suffix == ".jsonl":
        records = []
        for n, line in enumerate(_text(p).splitlines(), 1):
            if line.strip():
                records.append(_json(line, f"{p}:{n}"))
    else:
        text = _text(p)
        records = _json(text, str(p)) if text.strip() else []
        records = records if isinstance(records, list) else [records]
    if not records:  # else a split of no rows fails much later, as a division by zero
        raise ArlkitError(f"data file {str(p)!r} holds no records")
    bad = next((i for i, r in enumerate(records) if not isinstance(r, dict)), None)
    if bad is not None:
        raise ArlkitError(f"{p}: record {bad} is not a JSON object")
    return records


def _text(path: Path) -> str:
    """The file as UTF-8 text (JSON's own encoding); other encodings fail naming the first bad byte's line."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise ArlkitError(
            f"data file {str(path)!r} is not UTF-8: byte {data[e.start]:#04x} on line {line} (e.g. Latin-1 "
            f"text); convert it, e.g. `iconv -f latin1 -t utf-8 {path.name} > utf8_{path.name}`"
        ) from None


def _json(text: str, where: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ArlkitError(f"{where} is not valid JSON: {e.msg} (line {e.lineno}, column {e.colno})") from None


def detect_format(path: str | Path, records: list[dict]) -> str:
    """The format of a file from its suffix and its first record's keys."""
    if Path(path).suffix == ".parquet":
        return "parquet"
    first = records[0] if records else {}
    if (
        "question_decomposition" in first
        or "paragraph_text" in json.dumps(first.get("paragraphs", ""))[:2000]
    ):
        return "musique"
    if "context" in first and "supporting_facts" in first:
        return "2wiki" if "evidences" in first else "hotpotqa"
    return "jsonl"


def _need(record: dict, keys: Iterable[str], where: str) -> None:
    missing = [k for k in keys if k not in record]
    if missing:
        raise ArlkitError(f"{where}: missing field(s) {missing} (has: {sorted(record)})")


def _hotpot_row(r: dict, where: str) -> dict:
    _need(r, ("_id", "question", "answer", "context", "supporting_facts"), where)
    paragraphs = [[title, "".join(sentences)] for title, sentences in r["context"]]
    row = {
        "id": r["_id"],
        "question": r["question"],
        "answer": r["answer"],
        "paragraphs": paragraphs,
        "support_titles": list(dict.fromkeys(t for t, _ in r["supporting_facts"])),
        "kind": r.get("type"),
        "level": r.get("level"),
    }
    if "evidences" in r:
        row["evidences"] = r["evidences"]
    return row


def _musique_row(r: dict, where: str) -> dict | None:
    _need(r, ("id", "question", "answer", "paragraphs"), where)
    if r.get("answerable") is False:
        return None
    for j, p in enumerate(r["paragraphs"]):
        _need(p, ("title", "paragraph_text"), f"{where} paragraphs[{j}]")
    return {
        "id": r["id"],
        "question": r["question"],
        "answer": r["answer"],
        "answer_aliases": list(r.get("answer_aliases") or []),
        "paragraphs": [[p["title"], p["paragraph_text"]] for p in r["paragraphs"]],
        "support_titles": [p["title"] for p in r["paragraphs"] if p.get("is_supporting")],
        "kind": f"{len(r.get('question_decomposition') or [])}hop",
    }


def _generic_row(r: dict, where: str, index: int) -> dict:
    _need(r, ("question",), where)
    if "answer" not in r and "answers" not in r:
        raise ArlkitError(f"{where}: needs an 'answer' or 'answers' field (has: {sorted(r)})")
    row = {k: r[k] for k in ("question", "answer", "answers", "answer_aliases") if k in r}
    if "answers" in row:
        row["answers"] = [str(a) for a in row["answers"]]
        row.setdefault("answer", row["answers"][0] if row["answers"] else "")
    row["id"] = str(r.get("id", index))
    paragraphs = r.get("paragraphs") or []
    for j, p in enumerate(paragraphs):
        if isinstance(p, dict):
            _need(p, ("title", "text"), f"{where} paragraphs[{j}]")
    row["paragraphs"] = [[p["title"], p["text"]] if isinstance(p, dict) else list(p) for p in paragraphs]
    row["support_titles"] = list(r.get("support_titles") or [])
    row["kind"] = r.get("type") or r.get("kind")
    return row


def load_qa_file(path: str | Path, fmt: str = "auto") -> list[dict]:
    """Rows of a QA file in one of FORMATS ("auto": detected from suffix and keys).

    Raises:
        ArlkitError: the file is missing, malformed, or a record lacks a field its format needs.
    """
    if fmt != "auto" and fmt not in FORMATS:
        raise ArlkitError(f"unknown QA format {fmt!r}; valid: auto, {', '.join(FORMATS)}")
    records = read_records(path)
    fmt = detect_format(path, records) if fmt == "auto" else fmt
    build: Callable[[dict, str, int], dict | None] = {
        "hotpotqa": lambda r, w, i: _hotpot_row(r, w),
        "2wiki": lambda r, w, i: _hotpot_row(r, w),
        "musique": lambda r, w, i: _musique_row(r, w),
    }.get(fmt, _generic_row)
    rows = [build(r, f"{path} record {i} ({fmt})", i) for i, r in enumerate(records)]
    kept = [r for r in rows if r is not None]
    if not kept:
        raise ArlkitError(f"data file {str(path)!r}: all {len(rows)} records are unanswerable (MuSiQue)")
    return kept


def load_corpus(path: str | Path) -> list[tuple[str, str]]:
    """(title, text) documents of a JSONL corpus: {title, text} objects, or {contents} with the title on
    the first line (the FlashRAG/Search-R1 wiki dumps)."""
    docs = []
    for i, r in enumerate(read_records(path)):
        if "text" in r:
            docs.append((str(r.get("title", "")), str(r["text"])))
        elif "contents" in r:
            title, _, text = str(r["contents"]).partition("\n")
            docs.append((title.strip('"'), text))
        else:
            raise ArlkitError(f"{path} record {i}: a corpus document needs 'text' or 'contents'")
    return docs
