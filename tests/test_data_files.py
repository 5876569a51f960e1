"""Loaders for the public data formats (HotpotQA, 2WikiMultihopQA, MuSiQue, JSONL, Parquet, Spider, BIRD),
written as small fixture files in the exact official schemas; both retrieval settings; and a short rollout
plus one training step of the tiny fixture model on each format."""

from __future__ import annotations

import json
import math
import sqlite3
from pathlib import Path

import pytest
from rich.console import Console

from arlkit.config import load_config
from arlkit.data.nl2sql_files import load_nl2sql, load_tables, schema_text
from arlkit.data.qa_files import load_corpus, load_qa_file
from arlkit.errors import ArlkitError
from arlkit.tasks import NL2SQLFilesTask, QAFilesTask
from arlkit.train.loop import setup, train_step

# Facts of a tiny world: person -> (company, city of birth)
PEOPLE = {
    "Ana Berg": ("Zentek", "Lorvik"),
    "Boris Lind": ("Voxdyne", "Dalmor"),
    "Cara Holm": ("Quorcorp", "Kestin"),
    "Dov Falk": ("Marotek", "Fenby"),
}


def _hotpot_records(two_wiki: bool = False) -> list[dict]:
    out = []
    for i, (person, (org, city)) in enumerate(PEOPLE.items()):
        record = {
            "_id": f"5a8b57f25542995d1e6f13{i:02d}",
            "question": f"Where was the founder of {org} born?",
            "answer": city,
            "type": "bridge" if not two_wiki else "compositional",
            "level": "medium",
            "supporting_facts": [[org, 0], [person, 1]],
            "context": [
                [org, [f"{org} is a company.", f" It was founded by {person}."]],
                [person, [f"{person} is an engineer.", f" {person} was born in {city}."]],
                ["Distractor", ["Nothing to see here."]],
            ],
        }
        if two_wiki:
            record["evidences"] = [[org, "founded by", person], [person, "place of birth", city]]
        out.append(record)
    return out


def _musique_records() -> list[dict]:
    out = []
    for i, (person, (org, city)) in enumerate(PEOPLE.items()):
        out.append(
            {
                "id": f"2hop__{i}_{i + 10}",
                "question": f"Where was the founder of {org} born?",
                "answer": city,
                "answer_aliases": [f"{city} town"],
                "answerable": True,
                "paragraphs": [
                    {
                        "idx": 0,
                        "title": org,
                        "paragraph_text": f"{org} was founded by {person}.",
                        "is_supporting": True,
                    },
                    {
                        "idx": 1,
                        "title": person,
                        "paragraph_text": f"{person} was born in {city}.",
                        "is_supporting": True,
                    },
                    {"idx": 2, "title": "Other", "paragraph_text": "Unrelated text.", "is_supporting": False},
                ],
                "question_decomposition": [
                    {
                        "id": 1,
                        "question": f"{org} >> founded by",
                        "answer": person,
                        "paragraph_support_idx": 0,
                    },
                    {"id": 2, "question": "#1 >> place of birth", "answer": city, "paragraph_support_idx": 1},
                ],
            }
        )
    out.append({**out[0], "id": "2hop__unanswerable", "answerable": False})  # skipped by the loader
    return out


def _generic_records() -> list[dict]:
    return [
        {"id": f"g{i}", "question": f"Where was {p} born?", "answers": [c, f"{c} City"]}
        for i, (p, (_, c)) in enumerate(PEOPLE.items())
    ]


@pytest.fixture(scope="module")
def qa_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("qa")
    (d / "hotpot.json").write_text(json.dumps(_hotpot_records()))
    (d / "2wiki.json").write_text(json.dumps(_hotpot_records(two_wiki=True)))
    (d / "musique.jsonl").write_text("\n".join(json.dumps(r) for r in _musique_records()) + "\n")
    (d / "generic.jsonl").write_text("\n".join(json.dumps(r) for r in _generic_records()) + "\n")
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(_generic_records()), d / "generic.parquet")
    corpus = [{"title": p, "text": f"{p} was born in {c}."} for p, (_, c) in PEOPLE.items()]
    (d / "corpus.jsonl").write_text("\n".join(json.dumps(r) for r in corpus) + "\n")
    return d


def test_hotpotqa_rows(qa_dir) -> None:
    rows = load_qa_file(qa_dir / "hotpot.json")
    assert len(rows) == 4
    r = rows[0]
    assert r["id"] == "5a8b57f25542995d1e6f1300" and r["answer"] == "Lorvik" and r["kind"] == "bridge"
    # sentences are joined as written (HotpotQA keeps the leading space of every sentence after the first)
    assert r["paragraphs"][1] == ["Ana Berg", "Ana Berg is an engineer. Ana Berg was born in Lorvik."]
    assert r["support_titles"] == ["Zentek", "Ana Berg"] and r["level"] == "medium"
    assert "evidences" not in r


def test_2wiki_and_musique_rows(qa_dir) -> None:
    wiki = load_qa_file(qa_dir / "2wiki.json")
    assert wiki[1]["evidences"] == [
        ["Voxdyne", "founded by", "Boris Lind"],
        ["Boris Lind", "place of birth", "Dalmor"],
    ]
    assert wiki[1]["kind"] == "compositional"
    mus = load_qa_file(qa_dir / "musique.jsonl")
    assert len(mus) == 4  # the unanswerable record is left out
    assert mus[0]["answer_aliases"] == ["Lorvik town"] and mus[0]["kind"] == "2hop"
    assert mus[0]["support_titles"] == ["Zentek", "Ana Berg"] and len(mus[0]["paragraphs"]) == 3


@pytest.mark.parametrize("name", ["generic.jsonl", "generic.parquet"])
def test_generic_rows(qa_dir, name) -> None:
    rows = load_qa_file(qa_dir / name)
    assert [r["id"] for r in rows] == ["g0", "g1", "g2", "g3"]
    assert rows[0]["answer"] == "Lorvik" and rows[0]["answers"] == ["Lorvik", "Lorvik City"]
    assert rows[0]["paragraphs"] == []


def test_bad_files_name_the_problem(tmp_path) -> None:
    with pytest.raises(ArlkitError, match="does not exist"):
        load_qa_file(tmp_path / "nope.json")
    (tmp_path / "bad.jsonl").write_text('{"question": "q", "answer": "a"}\n{oops\n')
    with pytest.raises(ArlkitError, match=r"bad\.jsonl:2 is not valid JSON"):
        load_qa_file(tmp_path / "bad.jsonl")
    (tmp_path / "h.json").write_text(
        json.dumps([{k: v for k, v in _hotpot_records()[0].items() if k != "answer"}])
    )
    with pytest.raises(ArlkitError, match=r"record 0 \(hotpotqa\): missing field\(s\) \['answer'\]"):
        load_qa_file(tmp_path / "h.json")
    (tmp_path / "g.jsonl").write_text('{"question": "q"}\n')
    with pytest.raises(ArlkitError, match="'answer' or 'answers'"):
        load_qa_file(tmp_path / "g.jsonl")


def test_distractor_search_sees_only_the_rows_own_paragraphs(qa_dir) -> None:
    task = QAFilesTask(eval_file=str(qa_dir / "hotpot.json"), top_k=1)
    rows = task.rows("heldout", 10)
    assert len(rows) == 4
    env = task.make_env()
    for row in rows[:2]:
        person = row["support_titles"][1]
        env.reset(row)
        step = env.step(
            f'<tool_call>{{"name": "search", "arguments": {{"query": "{person} born"}}}}</tool_call>'
        )
        text = step.observations[0]["content"]
        assert text.startswith(f"(1) {person}: ") and row["answer"] in text
    env.reset(rows[0])  # another question's person is not in this question's paragraphs
    other = rows[1]["support_titles"][1]
    step = env.step(f'<tool_call>{{"name": "search", "arguments": {{"query": "{other}"}}}}</tool_call>')
    assert other not in step.observations[0]["content"]


def test_corpus_index_is_saved_and_reused(qa_dir, tmp_path, monkeypatch) -> None:
    kw = {
        "eval_file": str(qa_dir / "hotpot.json"),
        "retrieval": "corpus",
        "index_dir": str(tmp_path),
        "top_k": 2,
    }
    first = QAFilesTask(**kw).corpus_search
    # 4 questions × 3 paragraphs, "Distractor" repeated 4 times: 4 + 4 + 1 = 9 distinct paragraphs
    assert len(first) == 9
    (folder,) = tmp_path.iterdir()
    assert folder.name.startswith("bm25-") and (folder / "docs.jsonl").is_file()

    import bm25s

    def no_indexing(*a, **k):
        raise AssertionError("the saved index should have been loaded, not rebuilt")

    monkeypatch.setattr(bm25s.BM25, "index", no_indexing)
    second = QAFilesTask(**kw).corpus_search
    for query in ("Ana Berg born", "founded by Cara Holm", "Voxdyne"):
        assert second.retrieve(query) == first.retrieve(query)
    # a user's corpus file, {title, text} or {contents} with the title on the first line
    own = QAFilesTask(**{**kw, "corpus_file": str(qa_dir / "corpus.jsonl")})
    assert len(own.corpus) == 4 and own.corpus[0] == ("Ana Berg", "Ana Berg was born in Lorvik.")
    (tmp_path / "flash.jsonl").write_text(
        json.dumps({"id": "0", "contents": '"Ana Berg"\nBorn in Lorvik.'}) + "\n"
    )
    assert load_corpus(tmp_path / "flash.jsonl") == [("Ana Berg", "Born in Lorvik.")]


def test_dense_search_exact_top_k() -> None:
    from arlkit.tools.dense import DenseSearch

    # a bag-of-letters encoder: each text is its vector of letter counts a..z
    def encode(texts):
        return [[t.lower().count(chr(97 + i)) for i in range(26)] for t in texts]

    docs = [("aaa", "aaa"), ("bbb", "bbb"), ("ab", "ab")]
    search = DenseSearch(docs, encode, top_k=2)
    # query "a": cosine with "aaa aaa" = 1, with "ab ab" = 1/sqrt(2), with "bbb bbb" = 0
    assert search.retrieve("a") == [0, 2]
    assert search(query="b").text.startswith("(1) bbb: bbb\n(2) ab: ab")


# ---------------------------------------------------------------------------------------------
# Spider / BIRD
# ---------------------------------------------------------------------------------------------

TABLES = {
    "db_id": "shop",
    "table_names_original": ["customers", "orders"],
    "table_names": ["customers", "orders"],
    "column_names_original": [
        [-1, "*"],
        [0, "id"],
        [0, "name"],
        [1, "id"],
        [1, "customer_id"],
        [1, "amount"],
    ],
    "column_names": [[-1, "*"], [0, "id"], [0, "name"], [1, "id"], [1, "customer id"], [1, "amount"]],
    "column_types": ["text", "number", "text", "number", "number", "number"],
    "primary_keys": [1, 3],
    "foreign_keys": [[4, 1]],
}
QUESTIONS = [
    ("How many customers are there?", "SELECT count(*) FROM customers"),
    ("What is the total amount of all orders?", "SELECT sum(amount) FROM orders"),
    ("List the names of customers in alphabetical order.", "SELECT name FROM customers ORDER BY name"),
    ("Which customer placed the largest order?", "SELECT T1.name FROM customers AS T1 JOIN orders AS T2 "
     "ON T1.id = T2.customer_id ORDER BY T2.amount DESC LIMIT 1"),
]  # fmt: skip


def _write_db(path: Path) -> None:
    path.parent.mkdir(parents=True)
    conn = sqlite3.connect(path)
    conn.executescript(
        "CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT);"
        "CREATE TABLE orders (id INTEGER PRIMARY KEY, customer_id INTEGER REFERENCES customers(id), amount REAL);"
        "INSERT INTO customers VALUES (1, 'Ana'), (2, 'Boris'), (3, 'Cara');"
        "INSERT INTO orders VALUES (1, 1, 10.5), (2, 1, 3), (3, 3, 42);"
    )
    conn.commit()
    conn.close()


@pytest.fixture(scope="module")
def spider_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("spider")
    (d / "tables.json").write_text(json.dumps([TABLES]))
    records = [{"db_id": "shop", "question": q, "query": s, "question_toks": q.split()} for q, s in QUESTIONS]
    (d / "train.json").write_text(json.dumps(records))
    (d / "dev.json").write_text(json.dumps(records[:2]))
    _write_db(d / "database" / "shop" / "shop.sqlite")
    return d


@pytest.fixture(scope="module")
def bird_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("bird")
    (d / "dev_tables.json").write_text(json.dumps([TABLES]))
    records = [
        {"question_id": i, "db_id": "shop", "question": q, "evidence": "amount is in euros", "SQL": s,
         "difficulty": "simple"}
        for i, (q, s) in enumerate(QUESTIONS)
    ]  # fmt: skip
    (d / "train.json").write_text(json.dumps(records))
    (d / "dev.json").write_text(json.dumps(records))
    _write_db(d / "dev_databases" / "shop" / "shop.sqlite")
    return d


def test_spider_schema_and_rows(spider_dir) -> None:
    assert schema_text(TABLES) == (
        "CREATE TABLE customers (id number PRIMARY KEY, name text);\n"
        "CREATE TABLE orders (id number PRIMARY KEY, customer_id number, amount number);\n"
        "-- orders.customer_id references customers.id"
    )
    tables = load_tables(spider_dir / "tables.json")
    rows = load_nl2sql(spider_dir, "dev.json", tables)
    assert [r["query"] for r in rows] == [s for _, s in QUESTIONS[:2]]
    assert rows[0]["db_path"] == str(spider_dir / "database" / "shop" / "shop.sqlite")
    assert rows[0]["schema"] == schema_text(TABLES) and "evidence" not in rows[0]
    with pytest.raises(ArlkitError, match="does not exist"):
        load_nl2sql(spider_dir, "dev.json", tables, db_dir="elsewhere")


def test_bird_rows_and_env_scores_execution(bird_dir) -> None:
    task = NL2SQLFilesTask(root=str(bird_dir), db_dir="dev_databases", tables_file="dev_tables.json")
    rows = task.rows("heldout", 10)
    assert len(rows) == 4 and rows[0]["evidence"] == "amount is in euros"
    row = next(r for r in rows if "ORDER BY name" in r["query"])
    env = task.make_env()
    messages = env.reset(row)
    assert (
        "CREATE TABLE orders" in messages[-1]["content"]
        and "Hint: amount is in euros" in messages[-1]["content"]
    )
    step = env.step(
        '<tool_call>{"name": "sql", "arguments": {"query": "SELECT name FROM customers"}}</tool_call>'
    )
    assert step.observations[0]["content"] == "name\nAna\nBoris\nCara"  # the row's own database
    env.step("<answer>SELECT name FROM customers ORDER BY name ASC</answer>")
    assert env.result().metrics["em"] == 1.0
    env.reset(row)  # the gold orders by name: the same rows in another order are wrong
    env.step("<answer>SELECT name FROM customers ORDER BY id DESC</answer>")
    assert env.result().metrics["em"] == 0.0 and env.result().metrics["f1"] == 1.0


# ---------------------------------------------------------------------------------------------
# A short rollout and one training step on every format
# ---------------------------------------------------------------------------------------------


def _qa_task(qa_dir: Path, name: str, retrieval: str = "distractor") -> list[str]:
    return [
        "task.name=qa_files",
        f"task.train_file={qa_dir / name}",
        f"task.eval_file={qa_dir / name}",
        f"task.retrieval={retrieval}",
        *([f"task.corpus_file={qa_dir / 'corpus.jsonl'}"] if retrieval == "corpus" else []),
    ]


def _nl2sql_task(root: Path, bird: bool) -> list[str]:
    extra = ["task.db_dir=dev_databases", "task.tables_file=dev_tables.json"] if bird else []
    return ["task.name=nl2sql_files", f"task.root={root}", *extra]


RUNS = {
    "hotpotqa": lambda q, s, b: _qa_task(q, "hotpot.json"),
    "2wiki": lambda q, s, b: _qa_task(q, "2wiki.json"),
    "musique": lambda q, s, b: _qa_task(q, "musique.jsonl"),
    "jsonl_corpus": lambda q, s, b: _qa_task(q, "generic.jsonl", "corpus"),
    "parquet_corpus": lambda q, s, b: _qa_task(q, "generic.parquet", "corpus"),
    "spider": lambda q, s, b: _nl2sql_task(s, bird=False),
    "bird": lambda q, s, b: _nl2sql_task(b, bird=True),
}


@pytest.mark.parametrize("fmt", list(RUNS))
def test_short_rollout_and_training_step_on_each_format(
    tiny, qa_dir, spider_dir, bird_dir, tmp_path, fmt
) -> None:
    overrides = [
        *RUNS[fmt](qa_dir, spider_dir, bird_dir),
        f"model.path={tiny.sft_dir}",
        "task.max_turns=2",
        "task.n_eval=2",
        "rollout.n=2",
        "rollout.prompts_per_step=2",
        "rollout.max_new_tokens=12",
        "train.steps=1",
        "train.device=cpu",
        f"train.run_dir={tmp_path / 'run'}",
        f"task.index_dir={tmp_path / 'index'}" if fmt.endswith("corpus") else "train.n_samples=8",
    ]
    s = setup(load_config(None, overrides), Console(quiet=True))
    assert len(s.eval_rows) == 2 and s.train_rows  # the format's rows, through the task
    metrics = train_step(s, 1)  # 2 prompts × 2 rollouts, then one policy update
    assert math.isfinite(metrics["actor/pg_loss"]) and math.isfinite(metrics["actor/grad_norm"])
    assert 0.0 <= metrics["rollout/em"] <= 1.0 and metrics["rollout/turns"] >= 1.0
    samples = [json.loads(line) for line in (tmp_path / "run" / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 4
    known = ["Where was", *(q for q, _ in QUESTIONS)]  # every fixture question starts one of these
    assert all(s["text"].startswith("<|im_start|>") and any(k in s["text"] for k in known) for s in samples)
