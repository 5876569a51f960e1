"""The task registry and the toy tasks toysql and math_python: config sections, splits, gold answers,
demonstration strategies, the tiny recipe per task, and a short training run on each."""

from __future__ import annotations

import dataclasses
import math
import sqlite3
import typing

import pytest
from rich.console import Console

from arlkit.config import load_config
from arlkit.data.mathword import TEMPLATES as MATH_TEMPLATES
from arlkit.data.toysql import TEMPLATES
from arlkit.envs.math import answers_match, parse_number
from arlkit.errors import ArlkitError
from arlkit.models.tiny import TinyRecipe, build_tokenizer, demo_trajectory
from arlkit.tasks import RUN_FIELDS, TASKS, MathPythonTask, ToySQLTask, ToyTask, ToyWikiTask, build_task
from arlkit.train.loop import setup, train_step
from arlkit.train.setup import resolve_model_path
from arlkit.trajectory import Role


@pytest.fixture(scope="module")
def sql_task(tmp_path_factory) -> ToySQLTask:
    return ToySQLTask(n_customers=60)


def _run(env, actions: list[str]) -> dict:
    for a in actions:
        if env.step(a).done:
            break
    return env.result().metrics


# ---------------------------------------------------------------------------------------------
# Registry and config
# ---------------------------------------------------------------------------------------------


DATACLASS_TASKS = ("toywiki", "toysql", "math_python", "qa_files", "nl2sql_files")


def test_every_config_section_maps_onto_its_task_class() -> None:
    assert sorted([*DATACLASS_TASKS, "gymnasium", "verifiers"]) == TASKS.names()
    for name in DATACLASS_TASKS:
        task_cls = TASKS.get(name)
        section = task_cls.config_model
        assert section.model_fields["name"].annotation == typing.Literal[name]
        task_fields = {f.name for f in dataclasses.fields(task_cls)}
        assert set(section.model_fields) - set(RUN_FIELDS) <= task_fields, name


def test_task_sections_reject_other_tasks_fields_by_name() -> None:
    with pytest.raises(ArlkitError, match=r"unknown config field 'task\.n_people'.*field of task 'toywiki'"):
        load_config(None, ["task.name=toysql", "task.n_people=100"])
    with pytest.raises(ArlkitError, match=r"'task\.n_custmers'.*did you mean 'task\.n_customers'"):
        load_config(None, ["task.name=toysql", "task.n_custmers=100"])
    with pytest.raises(ArlkitError, match="gymnasium, math_python, nl2sql_files, qa_files, toysql, toywiki"):
        load_config(None, ["task.name=chess"])
    with pytest.raises(ArlkitError, match=r"task\.eval_file"):
        load_config(None, ["task.name=qa_files"])
    with pytest.raises(ArlkitError, match=r"task\.dense_model"):
        load_config(None, ["task.name=qa_files", "task.eval_file=x.json", "task.retriever=dense"])
    cfg = load_config(None, ["task.name=toysql", "task.n_customers=60"])
    assert build_task(cfg.task) == ToySQLTask(n_customers=60, max_turns=3)
    assert build_task(load_config(None, []).task) == ToyWikiTask()  # no name: the embedded default


def test_tiny_base_needs_a_toy_task(tmp_path) -> None:
    cfg = load_config(None, ["task.name=qa_files", f"task.eval_file={tmp_path / 'x.json'}"])
    with pytest.raises(ArlkitError, match=r"model\.path 'tiny' needs a toy task"):
        resolve_model_path(cfg, build_task(cfg.task), Console(quiet=True))


def test_tiny_recipe_keys() -> None:
    # the already-built toywiki base must be found again: its key may never change by accident
    assert TinyRecipe().key() == "cbab34a892e9"
    assert TinyRecipe.for_task(ToyWikiTask()).key() == "cbab34a892e9"
    assert TinyRecipe.for_task(ToyWikiTask(process_reward="tool_success")).key() == "cbab34a892e9"
    sql = TinyRecipe.for_task(ToySQLTask())
    assert sql.hidden_size == 128 and sql.sft.steps == 1500  # the task's own overrides
    assert len({sql.key(), TinyRecipe.for_task(MathPythonTask()).key(), TinyRecipe().key()}) == 3
    assert all(isinstance(t, ToyTask) for t in (ToyWikiTask(), ToySQLTask(), MathPythonTask()))
    with pytest.raises(ArlkitError, match="one weight per strategy"):
        build_tokenizer(dataclasses.replace(sql, strategy_mix=(0.5, 0.5)))


# ---------------------------------------------------------------------------------------------
# toysql
# ---------------------------------------------------------------------------------------------


def test_toysql_splits_are_disjoint_and_ids_are_not_guessable(sql_task) -> None:
    shop = sql_task.shop
    held = {c.name for c in shop.pool("heldout")}
    assert len(held) == 12  # round(60 * 0.2)
    for split in ("train", "sft", "rl"):
        assert not held & {r["customer"] for r in sql_task.rows(split, 200, seed=1)}, split
    assert not {c.name for c in shop.pool("sft")} & {c.name for c in shop.pool("rl")}
    ids = [c.id for c in shop.customers]
    assert len(set(ids)) == 60 and ids != sorted(ids)  # a shuffled, sparse permutation
    assert sql_task.rows("rl", 5, seed=3) == sql_task.rows("rl", 5, seed=3)


def test_toysql_gold_sql_matches_the_database(sql_task) -> None:
    conn = sqlite3.connect(sql_task.db_path)
    for row in sql_task.rows("heldout", 30, seed=2):
        by_name = conn.execute(row["query"]).fetchall()
        by_id = conn.execute(row["query_by_id"]).fetchall()
        assert sorted(by_name) == sorted(by_id) and by_name, row
        if row["kind"] == "orders":  # counted independently of the template
            n = sum(1 for o in sql_task.shop.orders if o[1] == row["customer_id"])
            assert by_name == [(n,)]
    conn.close()


def test_toysql_strategies_memory_fails_on_unseen_customers(sql_task) -> None:
    rows = sql_task.rows("heldout", 40, seed=4)
    fake_id = max(c.id for c in sql_task.shop.customers) + 1  # an id the base could only have made up
    for row in rows:
        for strategy in ("lookup", "join"):
            metrics = _run(_env(sql_task, row), sql_task.demo_actions(row, strategy))
            assert metrics["em"] == 1.0 and metrics["f1"] == 1.0, (strategy, row)
        guess = sql_task.demo_actions(row, "guess")[0].replace(f"= {row['customer_id']}", f"= {fake_id}")
        assert _run(_env(sql_task, row), [guess])["em"] == 0.0
    env = _env(sql_task, rows[0])
    obs = env.step(sql_task.demo_actions(rows[0], "lookup")[0]).observations[0]["content"]
    assert obs == f"id\n{rows[0]['customer_id']}"  # the id the model copies into its final query


def _env(task, row):
    env = task.make_env()
    env.reset(row)
    return env


def test_toysql_demo_tokens_and_roles(sql_task) -> None:
    recipe = dataclasses.replace(TinyRecipe.for_task(sql_task), vocab_size=400, n_demos=40)
    tok = build_tokenizer(recipe)
    assert len(tok.encode("<sql>", add_special_tokens=False)) == 1  # the task's delimiter is one token
    row = sql_task.rows("sft", 1, seed=5)[0]
    traj = demo_trajectory(sql_task, tok, row, "lookup")
    assert traj.reward == 1.0 and traj.n_turns == 2
    first = traj.turns[0]
    ids, roles = traj.token_ids[first.start : first.end], traj.roles[first.start : first.end]
    action = tok.decode([i for i, r in zip(ids, roles, strict=True) if r == Role.ACTION])
    assert action == f" SELECT id FROM customers WHERE name = '{row['customer']}'</sql>"


# ---------------------------------------------------------------------------------------------
# math_python
# ---------------------------------------------------------------------------------------------


def test_math_problems_splits_and_answers() -> None:
    task = MathPythonTask()
    held = {r["question"] for r in task.rows("heldout", 300)}
    train_q = {r["question"] for r in task.rows("train", 300)}
    assert len(held) > 250 and not held & train_q
    row = next(r for r in task.rows("sft", 50) if r["kind"] == "buy_give")
    x, y, z = (int(n) for n in row["expression"].replace("+", " ").replace("-", " ").split())
    assert row["answer"] == str(x + y - z) and row["first_step"] == f"{x} + {y}"
    share = next(r for r in task.rows("sft", 50) if r["kind"] == "share_bonus")
    assert "." not in share["answer"]  # shares are whole numbers


def test_math_answer_checking_by_hand() -> None:
    assert parse_number("1,234") == 1234 and parse_number("\\frac{3}{4}") == parse_number("0.75")
    assert (
        answers_match("66", "66")
        and answers_match(" 66.0 ", ["65", "66"])
        and answers_match("$1,000", "1000")
    )
    assert not answers_match("65", "66") and not answers_match(None, "1") and not answers_match("x", "66")
    assert answers_match("Paris", "paris")  # non-numbers: normalised text


def test_math_strategies_with_the_python_tool() -> None:
    task = MathPythonTask(time_limit_s=3.0)
    row = task.rows("heldout", 1, seed=3)[0]
    metrics = _run(_env(task, row), task.demo_actions(row, "python"))
    assert metrics["em"] == 1.0 and metrics["f1"] == 1.0 and metrics["n_calls"] == 1.0
    step = _env(task, row).step(task.demo_actions(row, "first_step")[0])
    # the tool printed the first step's value, computed independently here
    x, op, y = row["first_step"].split()
    value = {"+": int(x) + int(y), "*": int(x) * int(y), "//": int(x) // int(y)}[op]
    assert step.observations[0]["content"] == f"{value}\n"
    wrong = task.demo_actions(row, "mental")[0].replace(f" {row['answer']}<", f" {int(row['answer']) + 1}<")
    assert _run(_env(task, row), [wrong])["em"] == 0.0


# ---------------------------------------------------------------------------------------------
# A short run on each toy task with the tiny fixture model
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["toysql", "math_python"])
def test_short_rollout_and_training_step_on_toy_tasks(tiny, tmp_path, name) -> None:
    extra = ["task.n_customers=60"] if name == "toysql" else ["task.time_limit_s=3"]
    overrides = [
        f"task.name={name}",
        *extra,
        f"model.path={tiny.sft_dir}",
        "task.max_turns=2",
        "task.n_eval=2",
        "rollout.n=2",
        "rollout.prompts_per_step=2",
        "rollout.max_new_tokens=12",
        "train.steps=1",
        "train.device=cpu",
        f"train.run_dir={tmp_path / 'run'}",
    ]
    s = setup(load_config(None, overrides), Console(quiet=True))
    assert {r["kind"] for r in s.train_rows} <= set(TEMPLATES) | set(MATH_TEMPLATES)
    metrics = train_step(s, 1)
    assert math.isfinite(metrics["actor/pg_loss"]) and metrics["rollout/reward"] <= 1.0
    assert 0.0 <= metrics["rollout/em"] <= 1.0
