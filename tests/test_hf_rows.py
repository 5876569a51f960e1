"""Any task's rows from Hugging Face `datasets` (task.dataset) with the real package: JSONL, CSV and Parquet
files, a save_to_disk folder, a column mapping, and the errors of a missing split, column or Hub id offline."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import huggingface_hub
import pytest

from arlkit.config import load_config
from arlkit.errors import ArlkitError
from arlkit.tasks import build_task

EXAMPLE = "task.name=examples.letter_count:LetterCount"


@pytest.fixture(autouse=True)
def _isolated(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("ARLKIT_CACHE", str(tmp_path / "cache"))  # datasets' arrow cache goes there
    # offline, as CI is: read at import time, so set on the loaded modules (else a Hub id waits for a timeout)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.chdir(Path(__file__).parents[1])  # where the example's import path starts


RECORDS = [{"w": w, "l": w[0], "n": str(w.count(w[0]))} for w in ("banana", "coffee", "assess", "pepper")]
COLUMNS = "{word: w, letter: l, answer: n}"


def _task(*overrides: str):
    return build_task(load_config(None, [EXAMPLE, *overrides]).task)


@pytest.mark.parametrize("fmt", ["json", "csv", "parquet"])
def test_rows_from_data_files_with_a_column_mapping(tmp_path, fmt) -> None:
    path = tmp_path / f"rows.{fmt}"
    ds = datasets.Dataset.from_list(RECORDS)
    {"json": ds.to_json, "csv": ds.to_csv, "parquet": ds.to_parquet}[fmt](str(path))
    task = _task(
        f"task.dataset.path={fmt}",
        f"task.dataset.data_files={{train: {path}, test: {path}}}",
        f"task.dataset.columns={COLUMNS}",
    )
    rows = task.rows("train", 10, seed=3)
    assert len(rows) == 4 and rows == task.rows("train", 10, seed=3)  # at most n, shuffled by seed
    assert {(r["word"], r["letter"], str(r["answer"])) for r in rows} == {
        (r["w"], r["l"], r["n"]) for r in RECORDS
    }
    assert len(task.rows("heldout", 2)) == 2  # "heldout" reads the dataset's "test"
    env = task.make_env()  # the task's own env reads the mapped rows
    env.reset(rows[0])
    env.step(f"<answer>{rows[0]['answer']}</answer>")
    # CSV infers the column "n" as integers, which the example's scorer (text == row["answer"]) never equals
    assert env.result().metrics["em"] == float(fmt != "csv")


def test_rows_from_a_save_to_disk_folder(tmp_path) -> None:
    folder = tmp_path / "saved"
    data = datasets.Dataset.from_list(RECORDS)
    datasets.DatasetDict({"dev": data, "validation": data.select([0])}).save_to_disk(str(folder))
    task = _task(
        f"task.dataset.path={folder}",
        f"task.dataset.columns={COLUMNS}",
        "task.dataset.splits={heldout: validation}",
    )
    assert [r["word"] for r in task.rows("heldout", 5)] == ["banana"]
    with pytest.raises(
        ArlkitError, match=r"no split 'train'.*\['dev', 'validation'\].*task\.dataset\.splits"
    ):
        task.rows("train", 5)


def test_bad_datasets_say_what_is_wrong(tmp_path) -> None:
    path = tmp_path / "rows.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in RECORDS))
    task = _task(
        "task.dataset.path=json",
        f"task.dataset.data_files={{train: {path}}}",
        "task.dataset.columns={word: wrd}",
    )
    with pytest.raises(ArlkitError, match=r"task\.dataset\.columns: \['wrd'\] are not columns"):
        task.rows("train", 2)
    with pytest.raises(ArlkitError, match=r"cannot load 'someone/no-such-set'.*needs network access"):
        _task("task.dataset.path=someone/no-such-set")
    with pytest.raises(ArlkitError, match=r"task\.dataset\.pth"):
        _task("task.dataset.pth=json")
