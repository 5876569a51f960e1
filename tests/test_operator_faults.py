"""Operator faults (issue 20): what an operator gets wrong or what the machine does to a run, each answered with
one clear message that names the thing, and nothing lost: bad numbers and repeated keys in a config, broken
data files, a corrupt or unwritable checkpoint, a run folder that already holds a run, diverged weights."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from arlkit.config import load_config
from arlkit.errors import ArlkitError


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["algo.lr=inf"], "config field 'algo.lr': Input should be a finite number (got 'inf')"),
        (["critic.vf_coef=.nan"], "config field 'critic.vf_coef': Input should be a finite number"),
        (
            ["sft.strategy_mix={a: .inf}"],
            "config field 'sft.strategy_mix.a': Input should be a finite number",
        ),
        (
            ["task.name=foo"],
            "config field 'task.name': unknown task 'foo'; valid: gymnasium, math_python, nl2sql_files, "
            "qa_files, toysql, toywiki",
        ),
    ],
    ids=["inf_lr", "nan_coef", "inf_in_dict", "unknown_task"],
)
def test_bad_config_values_name_the_field(overrides, message) -> None:
    with pytest.raises(ArlkitError) as e:
        load_config(None, overrides)
    assert message in str(e.value)
    assert "pydantic" not in str(e.value) and "_task_name" not in str(e.value)


def _cli(*argv: str, cwd=None) -> subprocess.CompletedProcess:
    env = {**os.environ, "NO_COLOR": "1", "COLUMNS": "400", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "arlkit", *argv]
    return subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=300)


def test_a_command_line_that_repeats_an_override_is_refused(tmp_path) -> None:
    out = _cli("train", "configs/grpo_toywiki.yaml", "algo.lr=1e-3", "train.steps=2", "algo.lr=2e-3")
    assert out.returncode == 2, out.stdout + out.stderr
    assert (
        "error: override 'algo.lr' is given twice ('algo.lr=1e-3' and 'algo.lr=2e-3'); give it once"
        in out.stdout
    )
    assert "Traceback" not in out.stderr


def test_duplicate_yaml_keys_name_the_key_and_lines(tmp_path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("algo:\n  lr: 1e-3\n  epochs: 2\n  lr: 2e-3\n")
    with pytest.raises(ArlkitError, match=r"sets key 'lr' twice \(lines 2 and 4\); keep one"):
        load_config(path)
    path.write_text("algo:\n  lr: 1e-3\ntrain:\n  steps: 2\nalgo:\n  epochs: 2\n")  # a whole section twice
    with pytest.raises(ArlkitError, match=r"c\.yaml' sets key 'algo' twice \(lines 1 and 5\)"):
        load_config(path)


def test_toywiki_takes_show_tool_schemas() -> None:
    from arlkit.tasks import build_task

    cfg = load_config(None, ["task.show_tool_schemas=true"])
    assert build_task(cfg.task).show_tool_schemas is True


def _spider_db(**change) -> dict:
    db = {
        "db_id": "shop",
        "table_names_original": ["customer", "orders"],
        "column_names_original": [[-1, "*"], [0, "id"], [0, "name"], [1, "id"], [1, "customer_id"]],
        "column_types": ["text", "number", "text", "number", "number"],
        "primary_keys": [1, 3],
        "foreign_keys": [[4, 1]],
    }
    return db | change


@pytest.mark.parametrize(
    ("write", "message"),
    [
        (lambda p: p.write_text(""), "data file '{p}' holds no records"),
        (lambda p: p.write_text("\n\n"), "data file '{p}' holds no records"),
        (
            lambda p: p.write_bytes(
                b'{"question": "q", "answer": "a"}\n{"question": "caf\xe9?", "answer": "b"}\n'
            ),
            "data file '{p}' is not UTF-8: byte 0xe9 on line 2 (e.g. Latin-1 text); convert it",
        ),
        (
            lambda p: p.write_text(
                '{"id": "m1", "question": "q", "answer": "a", "question_decomposition": [],'
                ' "paragraphs": [{"title": "A", "paragraph_text": "x"}, {"title": "B", "text": "y"}]}\n'
            ),
            "{p} record 0 (musique) paragraphs[1]: missing field(s) ['paragraph_text'] (has: ['text', 'title'])",
        ),
    ],
    ids=["empty", "blank_lines", "latin1", "musique_paragraph_text"],
)
def test_broken_qa_files_name_the_file_row_and_field(tmp_path, write, message) -> None:
    from arlkit.data.qa_files import load_qa_file

    path = tmp_path / "data.jsonl"
    write(path)
    with pytest.raises(ArlkitError) as e:
        load_qa_file(path)
    assert message.format(p=path) in str(e.value)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"column_types": ["text", "number", "text"]},
            "column_types has 3 entries for 5 column_names_original",
        ),
        (
            {"foreign_keys": [[4, 9]]},
            "foreign_keys refers to column(s) [9]; column_names_original has 5 (0..4)",
        ),
        (
            {"column_names_original": [[-1, "*"], [0, "id"], [0, "name"], [1, "id"], [2, "customer_id"]]},
            "column_names_original[4] ('customer_id') names table 2; there are 2 tables",
        ),
    ],
    ids=["short_column_types", "foreign_key_out_of_range", "table_out_of_range"],
)
def test_broken_spider_tables_name_the_entry_and_field(tmp_path, change, message) -> None:
    import json

    from arlkit.data.nl2sql_files import load_tables

    path = tmp_path / "tables.json"
    path.write_text(json.dumps([_spider_db(), _spider_db(**change)]))
    with pytest.raises(ArlkitError) as e:
        load_tables(path)
    assert f"{path} entry 1 (db_id 'shop'): {message}" in str(e.value)
    path.write_text(json.dumps([_spider_db()]))
    assert "-- orders.customer_id references customer.id" in load_tables(path)["shop"]


def _setup(tiny, run_dir, *extra: str):
    from conftest import tiny_run_overrides
    from rich.console import Console

    from arlkit.train.loop import setup

    cfg = load_config(None, tiny_run_overrides(tiny.sft_dir, run_dir, "task.n_eval=0", *extra))
    return setup(cfg, Console(quiet=True))


def _console():
    import io

    from rich.console import Console

    return Console(file=io.StringIO(), width=400, no_color=True)


@pytest.mark.parametrize("damage", ["empty", "truncated"])
def test_resume_skips_a_corrupt_newest_checkpoint_and_says_so(tiny, tmp_path, damage) -> None:
    from arlkit.train.checkpoint import STATE_FILE, resume_run, save_checkpoint
    from arlkit.train.guards import TrainState

    s = _setup(tiny, tmp_path / "run", "train.save_every=1")
    for step in (1, 2):
        save_checkpoint(s, f"step_{step}", TrainState(step=step))
    ckpts = s.run.path / "checkpoints"
    state = ckpts / "step_2" / STATE_FILE
    state.write_bytes(b"" if damage == "empty" else state.read_bytes()[:4000])  # a crash mid-copy
    console = _console()
    assert resume_run(_setup(tiny, tmp_path / "run", "train.save_every=1"), console).step == 1
    out = console.file.getvalue()
    error = "EOFError: Ran out of input" if damage == "empty" else "RuntimeError: PytorchStreamReader failed"
    assert f"warning: {state} does not load ({error}" in out
    assert "moved to corrupt-step_2, trying the previous checkpoint" in out
    assert "resuming from the newest intact checkpoint, step_1" in out
    assert sorted(p.name for p in ckpts.iterdir()) == ["corrupt-step_2", "step_1"]  # nothing deleted

    (ckpts / "step_1" / STATE_FILE).write_bytes(b"")  # no intact one left: say so, name each
    with pytest.raises(
        ArlkitError, match=r"no checkpoint in .* loads: step_1 \(EOFError: Ran out of input\)"
    ):
        resume_run(_setup(tiny, tmp_path / "run"), _console())


def test_disk_full_while_checkpointing_names_the_folder_and_keeps_the_previous(
    tiny, tmp_path, monkeypatch
) -> None:
    import errno

    import torch

    from arlkit.train import checkpoint
    from arlkit.train.guards import TrainState

    s = _setup(tiny, tmp_path / "run")
    checkpoint.save_checkpoint(s, "step_1", TrainState(step=1))
    before = {p.name: p.stat().st_size for p in (s.run.path / "checkpoints" / "step_1").iterdir()}

    def full(obj, f, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(ArlkitError) as e:
        checkpoint.save_checkpoint(s, "step_2", TrainState(step=2))
    ckpts = s.run.path / "checkpoints"
    assert f"could not write checkpoint 'step_2' to {ckpts}: the disk is full (" in str(e.value)
    assert "The previous checkpoints are intact (step_1); free space" in str(e.value)
    assert sorted(p.name for p in ckpts.iterdir()) == ["step_1"]  # the partial copy is gone, step_1 untouched
    assert {p.name: p.stat().st_size for p in (ckpts / "step_1").iterdir()} == before


def _tiny_cfg(tiny, run_dir, *extra: str):
    from conftest import tiny_run_overrides

    return load_config(
        None, tiny_run_overrides(tiny.sft_dir, run_dir, "task.n_eval=0", "train.steps=1", *extra)
    )


def test_a_run_folder_that_holds_a_run_is_refused_without_resume_or_overwrite(tiny, tmp_path) -> None:
    import json

    from arlkit.train.loop import train

    run = tmp_path / "run"
    cfg = _tiny_cfg(tiny, run)
    train(cfg, _console())
    with pytest.raises(ArlkitError) as e:
        train(cfg, _console())  # before: appended to metrics.jsonl (steps [1, 1]) and replaced final
    assert str(e.value) == (
        f"train.run_dir {str(run)!r} already holds a run (metrics.jsonl up to step 1; checkpoints final; "
        "summary.json): continue it with --resume, replace it with --overwrite (deletes its logs and "
        "checkpoints), or give another train.run_dir"
    )
    (run / "notes.txt").write_text("mine")  # a file the user keeps in the folder survives --overwrite
    console = _console()
    train(cfg, console, overwrite=True)
    assert (
        "--overwrite: deleted the previous run's checkpoints, config.yaml, curves.png, metrics.jsonl, "
        f"samples.jsonl, summary.json, tensorboard in {run}"
    ) in console.file.getvalue()
    assert [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [1]
    assert (run / "notes.txt").read_text() == "mine"
    with pytest.raises(
        ArlkitError, match=r"--resume continues the run in train\.run_dir, --overwrite deletes it"
    ):
        train(cfg, _console(), resume=True, overwrite=True)


def test_a_run_folder_in_use_by_another_process_is_refused(tmp_path) -> None:
    from arlkit.train.run_dir import RunDir

    run = tmp_path / "run"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\nfrom pathlib import Path\nfrom arlkit.train.run_dir import RunDir\n"
            f"RunDir({str(run)!r}, tensorboard=False)\nprint('locked', flush=True)\ntime.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(ArlkitError) as e:
            RunDir(run, tensorboard=False)
        assert (
            f"train.run_dir {str(run)!r} is in use by another arlkit process (pid {holder.pid}; lock "
            in str(e.value)
        )
        assert "Wait for it to end, or give this run another train.run_dir" in str(e.value)
    finally:
        holder.kill()
        holder.wait()
    RunDir(run, tensorboard=False).close()  # the kernel dropped the dead process's lock


def test_the_cli_refuses_a_held_run_folder_before_loading_the_model(tmp_path) -> None:
    run = tmp_path / "run"
    (run / "checkpoints" / "step_4").mkdir(parents=True)
    (run / "metrics.jsonl").write_text('{"step": 0}\n{"step": 1}\n')
    out = _cli("train", "configs/grpo_toywiki.yaml", "model.path=/nonexistent", f"train.run_dir={run}")
    assert out.returncode == 2, out.stdout + out.stderr
    assert (
        "already holds a run (metrics.jsonl up to step 1; checkpoints step_4): continue it with --resume"
        in out.stdout
    )
    assert "Traceback" not in out.stderr


def test_an_update_that_leaves_non_finite_weights_stops_the_run_naming_the_step(
    tiny, tmp_path, monkeypatch
) -> None:
    """An optimiser step that overflows a weight while loss and gradient norm were finite (the skip guard
    cannot see it). Before: the run went on, or saved the inf weights as `final` and ended rc 0."""
    import json

    import torch

    from arlkit.train import loop

    real, calls = loop.update, []

    def overflowing(policy, *args, **kwargs):
        out = real(policy, *args, **kwargs)
        calls.append(1)
        if len(calls) == 2:  # step 2's update: one weight overflows to inf
            with torch.no_grad():
                dict(policy.model.named_parameters())["model.norm.weight"][0] = float("inf")
        return out

    monkeypatch.setattr(loop, "update", overflowing)
    run = tmp_path / "run"
    cfg = _tiny_cfg(tiny, run, "train.steps=3", "train.save_every=1")
    with pytest.raises(ArlkitError) as e:
        loop.train(cfg, _console())
    assert str(e.value) == (
        "training stopped at step 2: its optimiser step left non-finite weights (model.norm.weight and 0 more "
        "tensors), which no later step can repair. Lower algo.lr (0.0001) or algo.grad_clip; the newest "
        f"checkpoint, {run / 'checkpoints' / 'step_1'}, holds the weights of an earlier step: continue with "
        "--resume"
    )
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]  # the step's metrics are logged before the stop
    assert not (run / "checkpoints" / "step_2").exists()


def test_diverged_but_finite_weights_stop_at_the_next_rollout_naming_the_step(tiny, tmp_path) -> None:
    """lr 1e37 is finite, so the config takes it; AdamW's first step moves each weight by about 10·lr (finite
    in float32), and the next forward's logits are NaN. Before: `draw` returned an index past the vocabulary and
    the run died with an IndexError from torch at step 2."""
    from arlkit.train.loop import train

    cfg = _tiny_cfg(tiny, tmp_path / "run", "algo.lr=1e37", "train.steps=2")
    with pytest.raises(ArlkitError) as e:
        train(cfg, _console())
    assert str(e.value) == (
        "training stopped at step 2: the policy's next-token logits are NaN or infinite: its weights have "
        "diverged (a too-high algo.lr) or the model files hold non-finite values"
    )


def test_nonfinite_parameters_names_each_bad_tensor() -> None:
    import torch

    from arlkit.train.guards import nonfinite_parameters

    a, b = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    b.requires_grad_(False)  # frozen weights are not the update's doing
    with torch.no_grad():
        a.bias[1] = float("nan")
        b.weight[0, 0] = float("inf")
    assert nonfinite_parameters([a, None, b]) == ["bias"]


def test_eval_of_an_eval_only_config_writes_no_run_folder_unless_asked(tiny, tmp_path) -> None:
    """`task.train_file` unset is documented as "evaluation only": arlkit eval must not ask the task for a
    train split, nor create runs/default unasked, nor write over a training run's folder."""
    import json

    import yaml

    rows = [{"question": f"Who is {n}?", "answer": n, "paragraphs": [[n, f"{n} is {n}."]]} for n in "ab"]
    (tmp_path / "dev.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = {
        "model": {"path": str(tiny.model_dir)},
        "task": {"name": "qa_files", "eval_file": "dev.jsonl", "n_eval": 2, "max_turns": 2},
        "rollout": {"max_new_tokens": 8},
        "train": {
            "device": "cpu",
            "run_dir": "runs/trained",
        },  # a training run's folder, as in its config.yaml
    }
    (tmp_path / "eval.yaml").write_text(yaml.safe_dump(cfg))
    out = _cli("eval", "--config", "eval.yaml", "--out", "m.json", cwd=tmp_path)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert json.loads((tmp_path / "m.json").read_text())["n"] == 2
    assert not (tmp_path / "runs").exists()  # neither runs/default nor the YAML's training folder

    out = _cli(
        "eval", "--config", "eval.yaml", "train.run_dir=ev", cwd=tmp_path
    )  # asked: a folder of its own
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert (tmp_path / "ev" / "config.yaml").is_file() and (tmp_path / "ev" / "eval_eval.jsonl").is_file()
    out = _cli("eval", "--config", "eval.yaml", "train.run_dir=ev", cwd=tmp_path)  # its config.yaml is kept
    assert (
        out.returncode == 2
        and "train.run_dir 'ev' already holds a run (metrics.jsonl up to step 0)" in out.stdout
    )
