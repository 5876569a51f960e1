"""The open task API: a user's task named by import path or entry point, validated by its own config model,
run by the `arlkit` command (with --resume) and by `arlkit.train(...)`; named reward components and a
scorer's own metrics in metrics.jsonl; examples/ run as a user runs them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import run_cli
from rich.console import Console

import arlkit
from arlkit.config import load_config
from arlkit.errors import ArlkitError
from arlkit.rollout.metrics import episode_metrics
from arlkit.tasks import build_task, resolve
from arlkit.train.sft_run import demonstrations
from arlkit.trajectory import Role, Trajectory

ROOT = Path(__file__).parents[1]
EXAMPLE = "examples.letter_count:LetterCount"
SMALL = ["task.n_eval=2", "rollout.n=2", "rollout.prompts_per_step=2", "rollout.max_new_tokens=12"]


@pytest.fixture(autouse=True)
def _repo_root_importable(monkeypatch) -> None:
    monkeypatch.chdir(ROOT)  # where the example's import path starts, as for a user in the repository


def test_a_task_section_is_validated_by_the_tasks_own_model() -> None:
    cfg = load_config(None, [f"task.name={EXAMPLE}", "task.brevity_weight=0.5", "task.max_turns=2"])
    assert cfg.task.brevity_weight == 0.5 and cfg.model_dump()["task"]["brevity_weight"] == 0.5
    with pytest.raises(ArlkitError, match=r"'task\.brevity_weigt'.*did you mean 'task\.brevity_weight'"):
        load_config(None, [f"task.name={EXAMPLE}", "task.brevity_weigt=1"])
    with pytest.raises(ArlkitError, match=r"'task\.n_people'.*a field of task 'toywiki'"):
        load_config(None, [f"task.name={EXAMPLE}", "task.n_people=10"])
    with pytest.raises(ArlkitError, match=r"task\.brevity_weight.*got 'x'"):
        load_config(None, [f"task.name={EXAMPLE}", "task.brevity_weight=x"])
    with pytest.raises(ArlkitError, match=r"module 'examples\.missing' does not import"):
        load_config(None, ["task.name=examples.missing:Task"])
    with pytest.raises(ArlkitError, match="has no attribute 'Nope'"):
        load_config(None, ["task.name=examples.letter_count:Nope"])
    with pytest.raises(ArlkitError, match="needs a `config_model`"):
        load_config(None, ["task.name=examples.letter_count:LetterScorer"])


def test_an_entry_point_names_a_task(monkeypatch) -> None:
    found = SimpleNamespace(name="letters", value=EXAMPLE)
    monkeypatch.setattr(resolve, "entry_points", lambda group: [found] if group == "arlkit.tasks" else [])
    cfg = load_config(None, ["task.name=letters", "task.brevity_weight=0.2"])
    assert type(build_task(cfg.task)).__name__ == "LetterCount"
    with pytest.raises(ArlkitError, match=r"valid: .*toywiki, verifiers, letters; or an import path"):
        load_config(None, ["task.name=chess"])


def test_reward_components_are_weighted_and_logged_with_the_scorers_metrics() -> None:
    task = build_task(load_config(None, [f"task.name={EXAMPLE}", "task.brevity_weight=0.25"]).task)
    env = task.make_env()
    row = task.rows("train", 1)[0]
    env.reset(row)
    env.step("<answer>99</answer>")  # wrong but short: 1.0 * em 0 + 0.25 * short 1
    result = env.result()
    assert result.reward == 0.25
    assert result.metrics["reward/em"] == 0.0 and result.metrics["reward/short"] == 1.0
    trajs = []
    for short in (1.0, 0.0):  # the scorer's own metric reaches the logged means as env/<name>
        t = Trajectory(reward=0.0)
        t.extend_context([1], Role.PROMPT)
        t.metadata = {"metrics": {"em": 0.0, "short": short, "reward/short": short}}
        trajs.append(t)
    m = episode_metrics(trajs)
    assert m["env/short"] == 0.5 and m["reward/short"] == 0.5 and "env/em" not in m


def test_sft_says_what_a_task_without_demonstrations_must_provide() -> None:
    cfg = load_config(None, [f"task.name={EXAMPLE}"])
    s = SimpleNamespace(cfg=cfg, task=build_task(cfg.task))
    with pytest.raises(ArlkitError, match=r"`demo_strategies`.*`demo_actions\(row, strategy\)`"):
        demonstrations(s)  # type: ignore[arg-type]


def test_the_example_trains_by_the_command_line_and_resumes(tiny, tmp_path) -> None:
    run = tmp_path / "run"
    common = [
        f"model.path={tiny.sft_dir}",
        f"train.run_dir={run}",
        "train.device=cpu",
        "train.save_every=1",
        *SMALL,
    ]
    proc = run_cli("train", "examples/letter_count.yaml", *common, "train.steps=2", cache=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    logged = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    step = next(m for m in logged if "rollout/reward" in m)
    assert {"rollout/env/short", "rollout/reward/em", "rollout/reward/short"} <= set(step)
    assert f"name: {EXAMPLE}" in (run / "config.yaml").read_text()
    proc = run_cli(
        "train", "examples/letter_count.yaml", *common, "train.steps=3", "--resume", cache=tmp_path
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert json.loads((run / "summary.json").read_text())["steps"] == 3


class EchoConfig(arlkit.TaskConfig):
    word: str = "kiwi"


class EchoTask:
    """A task defined where a notebook would define it: handed to arlkit.train, not named in a config. It
    scripts a demonstration (one strategy), so `arlkit sft` can warm-start a policy on it."""

    config_model = EchoConfig
    demo_strategies = ("echo",)

    def demo_actions(self, row: dict, strategy: str) -> list[str]:
        return [f"<answer> {row['answer']}</answer>"]

    def __init__(self, config: EchoConfig):
        self.config = config

    def rows(self, split: str, n: int, seed: int = 0) -> list[dict]:
        return [
            {"id": i, "question": f"Say {self.config.word}.", "answer": self.config.word} for i in range(n)
        ]

    def make_env(self) -> arlkit.ToolEnv:
        from examples.letter_count import LetterScorer  # any scorer; only the API's plumbing is under test

        class Echo(LetterScorer):
            def prompt(self, row: dict) -> str:
                return row["question"]

        return arlkit.ToolEnv([], Echo(), max_turns=1)


def test_the_python_api_trains_a_task_class(tiny, tmp_path) -> None:
    data = {"model": {"path": str(tiny.sft_dir)}, "task": {"word": "fig"}, "train": {"device": "cpu"}}
    overrides = [*SMALL, "train.steps=1", f"train.run_dir={tmp_path / 'run'}"]
    summary = arlkit.train(data, task=EchoTask, overrides=overrides, console=Console(quiet=True))
    assert summary["steps"] == 1
    saved = (tmp_path / "run" / "config.yaml").read_text()
    assert "EchoTask" in saved and "word: fig" in saved


def test_sft_runs_a_task_that_scripts_demonstrations(tiny, tmp_path) -> None:
    data = {"model": {"path": str(tiny.sft_dir)}, "task": {"word": "fig"}, "train": {"device": "cpu"}}
    run = tmp_path / "sft"
    overrides = [*SMALL, "sft.strategy=echo", "sft.n_demos=4", "sft.steps=2", "sft.batch_size=2"]
    summary = arlkit.sft(
        data, task=EchoTask, overrides=[*overrides, f"train.run_dir={run}"], console=Console(quiet=True)
    )
    assert summary["steps"] == 2 and summary["n_demos"] == 4 and summary["final_loss"] > 0
    assert (run / "checkpoints" / "final" / "config.json").is_file()


def test_eval_runs_a_users_task_by_the_command_line(tiny, tmp_path) -> None:
    out = tmp_path / "metrics.json"
    args = ["--config", "examples/letter_count.yaml", "--model", str(tiny.sft_dir), "--out", str(out)]
    proc = run_cli("eval", *args, "task.n_eval=2", "train.device=cpu", cache=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    metrics = json.loads(out.read_text())
    assert "env/short" in metrics and "reward/em" in metrics  # the scorer's own metric, the components


def test_a_users_task_runs_in_a_two_process_launch(tiny, tmp_path) -> None:
    """Every rank of `torchrun -m arlkit train` finds the task by its import path, as one process does."""
    run = tmp_path / "run"
    args = ["examples/letter_count.yaml", f"model.path={tiny.sft_dir}", f"train.run_dir={run}"]
    args += ["train.device=cpu", "train.steps=1", *SMALL]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ARLKIT_CACHE": str(tmp_path), "NO_COLOR": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    proc = subprocess.run(
        [*cmd, "-m", "arlkit", "train", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert json.loads((run / "summary.json").read_text())["steps"] == 1


def test_passk_and_cea_run_a_users_task_by_the_command_line(tiny, tmp_path) -> None:
    """The analyses find a user's task the same way train and eval do (examples/letter_count.py)."""
    common = [
        f"model.path={tiny.sft_dir}",
        "train.device=cpu",
        "rollout.max_new_tokens=16",
        "train.n_samples=1",
    ]
    passk = [
        f"train.run_dir={tmp_path / 'passk'}",
        f"passk.policies.random={tiny.model_dir}",
        f"passk.policies.sft={tiny.sft_dir}",
        "passk.n=2",
        "passk.caps=[0, 1]",
        "passk.n_questions=2",
        "passk.questions_per_batch=2",
    ]
    proc = run_cli("passk", "examples/letter_count.yaml", *common, *passk, cache=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    res = json.loads((tmp_path / "passk" / "passk.json").read_text())
    assert set(res["counts"]) == {"random", "sft"}
    cea = [
        f"train.run_dir={tmp_path / 'cea'}",
        f"cea.reas={tiny.model_dir}",
        f"cea.tool={tiny.sft_dir}",
        f"cea.unified={tiny.sft_dir}",
        "cea.n=2",
        "cea.n_questions=2",
        "cea.questions_per_batch=2",
        "cea.grad_rollouts=4",
        "cea.grad_group=2",
    ]
    proc = run_cli("cea", "examples/letter_count.yaml", *common, *cea, cache=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (tmp_path / "cea" / "cea.json").exists()
