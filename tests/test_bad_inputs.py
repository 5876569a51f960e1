"""Bad inputs get one clear message naming the field or path (tests/bad_inputs.py holds the catalogue).

A representative subset runs for real in subprocesses (config, registry name, missing file, model path,
episode limit, run folder, command line, model output); every case must be in docs/bad_inputs.md, and the
subset's messages must equal the table's, so the document cannot drift from the code.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from bad_inputs import CASES, DOC, prepare, run_case, table_row


def doc_cases() -> set[tuple[str, str]]:
    """(area, bad input) of each row of the markdown table."""
    rows = [line for line in DOC.read_text().splitlines() if line.startswith("| ")]
    return {tuple(line[2:].split(" | ")[:2]) for line in rows[2:]}  # after the header and the rule


@pytest.fixture(scope="module")
def scratch(tiny, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("bad_inputs")
    prepare(root, tiny.model_dir)
    return root


def test_every_case_is_in_the_doc() -> None:
    assert doc_cases() == {(c.area, c.what) for c in CASES}
    assert len(CASES) >= 40


@pytest.mark.parametrize("case", [c for c in CASES if c.in_test], ids=lambda c: c.what.replace(" ", "_"))
def test_bad_input_gets_one_clear_message(case, scratch) -> None:
    outcome = run_case(case, scratch)
    assert outcome.code == (0 if case.observation else 2), outcome
    assert not outcome.traceback, outcome
    assert case.expect in outcome.message
    assert table_row(case, outcome) in DOC.read_text().splitlines()  # the table shows this very message


def test_local_model_paths_fail_fast_naming_the_path(tmp_path) -> None:
    """Where transformers would answer a local typo with a hub error ("Repo id must be in the form …")."""
    from arlkit.errors import ArlkitError
    from arlkit.models.loading import check_local_path
    from arlkit.train.run_dir import RunDir

    (tmp_path / "f").write_text("x")
    (tmp_path / "empty").mkdir()
    cases = [
        (tmp_path / "missing", None, "does not exist"),
        (tmp_path / "f", None, "is a file"),
        (tmp_path / "empty", "config.json", "holds no config.json"),
    ]
    for path, needs, words in cases:
        with pytest.raises(ArlkitError, match=words) as e:
            check_local_path(path, needs=needs)
        assert f"model.path {str(path)!r}" in str(e.value)
    check_local_path("Qwen/Qwen2.5-3B-Instruct", needs="config.json")  # a hub id: left to transformers
    check_local_path(tmp_path / "empty")  # a tokenizer folder needs no config.json
    with pytest.raises(ArlkitError, match=r"train.run_dir .* is a file"):
        RunDir(tmp_path / "f", tensorboard=False)
