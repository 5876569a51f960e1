"""Checkpoint chains SFT → RL → eval → resume (issue 16): each stage loads exactly the policy the previous one
saved, for LoRA and full fine-tuning checkpoints in every pairing, from relative paths given in one working
directory and reloaded from another; `arlkit eval` builds no optimiser; an RL run started from an SFT
checkpoint resumes exactly.

"Exactly" is checked three ways at every stage: the reloaded weights equal, bit for bit, those of the in-memory
policy at save time (a LoRA policy merged the way a reload merges it); greedy continuations of a few fixed
prompts are the same; and the next stage's greedy evaluation (its `eval_base.jsonl`, or `arlkit eval`'s) holds
the same token ids as the previous stage's final one.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from conftest import tiny_run_overrides
from rich.console import Console

import arlkit.train.loop as loop
import arlkit.train.sft_run as sft_run
from arlkit.config import load_config
from arlkit.models.loading import load_policy
from arlkit.tasks import ToyWikiTask
from arlkit.train.checkpoint import save_checkpoint
from arlkit.train.setup import absolute_model_path

GREEDY_TOKENS = 12

# `arlkit eval` in a subprocess with every torch optimiser refused: evaluation must build none
_NO_OPTIMISER_CLI = """
import sys
import torch
def refuse(self, *args, **kwargs):
    raise RuntimeError("arlkit eval built an optimiser")
torch.optim.Optimizer.__init__ = refuse
from arlkit.cli import app
sys.argv = ["arlkit", *{argv!r}]
app()
"""


def prompts(task: ToyWikiTask) -> list[str]:
    return [row["question"] for row in task.rows("heldout", 3, seed=5)]


@torch.no_grad()
def greedy(model: torch.nn.Module, tokenizer, questions: list[str]) -> list[list[int]]:
    """The greedy continuation (GREEDY_TOKENS ids) of each question as a chat's user turn."""
    was_training = model.training
    model.eval()
    out = []
    for q in questions:
        ids = tokenizer.apply_chat_template(
            [{"role": "user", "content": q}],
            add_generation_prompt=True,
            return_tensors="pt",
            return_dict=True,
        )["input_ids"]
        gen = model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            do_sample=False,
            max_new_tokens=GREEDY_TOKENS,
            pad_token_id=tokenizer.pad_token_id,
        )
        out.append(gen[0, ids.shape[1] :].tolist())
    model.train(was_training)
    return out


def fingerprint(model: torch.nn.Module) -> dict[str, str]:
    """A digest of each weight's bytes, so that a real model's weights compare exactly without copies."""
    out = {}
    for k, v in model.state_dict().items():
        data = v.detach().cpu().contiguous().view(torch.uint8).numpy()
        out[k] = f"{v.dtype} {tuple(v.shape)} {hashlib.sha256(data).hexdigest()}"
    return out


def merged_weights(model: torch.nn.Module) -> dict[str, str]:
    """The policy's weights as a reload gives them (LoRA adapters merged, on a copy), fingerprinted."""
    if hasattr(model, "merge_and_unload"):
        model = copy.deepcopy(model).merge_and_unload()
    return fingerprint(model)


def capture_saves(monkeypatch, module, questions: list[str], into: dict) -> None:
    """Record the in-memory policy (merged weights, greedy outputs) whenever `module` saves `final`."""

    def save(s, name, *args, **kwargs):
        if name == "final":
            into["weights"] = merged_weights(s.policy.model)
            into["greedy"] = greedy(s.policy.model, s.policy.tokenizer, questions)
        return save_checkpoint(s, name, *args, **kwargs)

    monkeypatch.setattr(module, "save_checkpoint", save)


def assert_reloads_as_saved(path: str, saved: dict, questions: list[str]) -> None:
    """Load the checkpoint at `path` into a fresh model: the same weights, bit for bit, and greedy outputs."""
    policy = load_policy(path)
    weights = fingerprint(policy.model)
    assert weights.keys() == saved["weights"].keys()
    changed = [k for k, v in weights.items() if v != saved["weights"][k]]
    assert not changed, f"{path}: reloaded weights differ from the saved policy's: {changed[:5]}"
    assert greedy(policy.model, policy.tokenizer, questions) == saved["greedy"]


def moved(before: dict[str, str], after: dict[str, str]) -> bool:
    return any(v != before[k] for k, v in after.items())


def eval_ids(run_dir: Path, name: str) -> list[list[int]]:
    rows = (run_dir / f"eval_{name}.jsonl").read_text().splitlines()
    return [json.loads(r)["token_ids"] for r in rows]


def comparable(run_dir: Path) -> list[dict]:
    """metrics.jsonl without wall-clock figures (timings and throughputs differ run to run by nature)."""
    rows = map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
    return [{k: v for k, v in r.items() if not k.startswith(("timing_s/", "perf/"))} for r in rows]


def adapter_base(checkpoint: Path) -> str:
    return json.loads((checkpoint / "adapter_config.json").read_text())["base_model_name_or_path"]


def run_chain(
    start: Path,
    common: list[str],
    sft_kind: str,
    rl_kind: str,
    root: Path,
    monkeypatch,
    questions: list[str],
    cli_eval: bool,
    rl_must_move: bool = True,
) -> dict[str, float]:
    """SFT of `start` → RL of the SFT checkpoint → `arlkit eval` of the RL checkpoint → resume of the RL run.

    `common`: the task, rollout and train overrides of every stage (no model.path, no run_dir). SFT and RL
    run in `root/a`, naming their models by paths relative to it; everything after runs in `root/b`.
    Returns the seconds each stage took.
    """
    a, b = root.resolve() / "a", root.resolve() / "b"
    a.mkdir()
    b.mkdir()
    lora = {"lora": ["model.lora.rank=4", "model.lora.alpha=8"], "full": []}
    seconds: dict[str, float] = {}
    quiet = Console(quiet=True)

    # SFT, in a, from a relative path
    monkeypatch.chdir(a)
    sft_dir, sft_saved = a / "sft", {}
    capture_saves(monkeypatch, sft_run, questions, sft_saved)
    t = time.perf_counter()
    sft_run.run_sft(
        load_config(
            None,
            [
                *common,
                f"model.path={os.path.relpath(start, a)}",
                f"train.run_dir={sft_dir}",
                "train.eval_base=false",
                *lora[sft_kind],
            ],
        ),
        quiet,
    )
    seconds["sft"] = time.perf_counter() - t
    sft_ckpt = sft_dir / "checkpoints" / "final"
    start_abs = str(start.resolve())
    assert yaml.safe_load((sft_dir / "config.yaml").read_text())["model"]["path"] == start_abs
    if sft_kind == "lora":
        assert adapter_base(sft_ckpt) == start_abs
    # the chain is only tested if each stage changed the policy (the reload looked like the first base)
    assert moved(fingerprint(load_policy(start).model), sft_saved["weights"]), "SFT moved nothing"

    # RL, in a, from the SFT checkpoint by a relative path; step checkpoints for the resume below
    rl_dir, rl_saved = a / "rl", {}
    capture_saves(monkeypatch, loop, questions, rl_saved)
    rl_cfg = load_config(
        None,
        [
            *common,
            "model.path=sft/checkpoints/final",
            f"train.run_dir={rl_dir}",
            "train.save_every=1",
            "train.keep_checkpoints=2",
            *lora[rl_kind],
        ],
    )
    t = time.perf_counter()
    summary = loop.train(rl_cfg, quiet)
    seconds["rl"] = time.perf_counter() - t
    rl_ckpt = rl_dir / "checkpoints" / "final"
    assert yaml.safe_load((rl_dir / "config.yaml").read_text())["model"]["path"] == str(sft_ckpt)
    if rl_kind == "lora":  # the chain's link: the RL adapters name the SFT checkpoint, not the first base
        assert adapter_base(rl_ckpt) == str(sft_ckpt)
    # RL's base evaluation ran the SFT checkpoint as loaded: the same greedy episodes as SFT's final one
    assert eval_ids(rl_dir, "base") == eval_ids(sft_dir, "final")
    # GRPO moves nothing when every group's rewards are equal (a real model's 4 short episodes may all fail)
    assert moved(sft_saved["weights"], rl_saved["weights"]) or not rl_must_move, "RL moved nothing"

    # every checkpoint reloads from another working directory, by relative paths
    monkeypatch.chdir(b)
    assert_reloads_as_saved(os.path.relpath(sft_ckpt, b), sft_saved, questions)
    assert_reloads_as_saved(os.path.relpath(rl_ckpt, b), rl_saved, questions)

    if cli_eval:  # `arlkit eval` of the RL checkpoint, with no model.lora: what the issue saw crash
        argv = [
            "eval",
            "--model",
            os.path.relpath(rl_ckpt, b),
            "--out",
            "metrics.json",
            *common,
            "train.run_dir=eval",
        ]
        env = {**os.environ, "OMP_NUM_THREADS": "1", "NO_COLOR": "1", "COLUMNS": "300"}
        t = time.perf_counter()
        out = subprocess.run(
            [sys.executable, "-c", _NO_OPTIMISER_CLI.format(argv=argv)],
            cwd=b,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        seconds["eval"] = time.perf_counter() - t
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
        assert eval_ids(b / "eval", "eval") == eval_ids(rl_dir, "final")
        assert json.loads((b / "metrics.json").read_text()) == summary["final"]

    # resume, in b, from the step-1 checkpoint of the RL run: the same log, evaluation and final weights
    want_log, want_final = comparable(rl_dir), eval_ids(rl_dir, "final")
    for gone in ("summary.json", "checkpoints/final", "checkpoints/step_2"):
        shutil.rmtree(rl_dir / gone) if (rl_dir / gone).is_dir() else (rl_dir / gone).unlink()
    resumed_saved: dict = {}
    capture_saves(monkeypatch, loop, questions, resumed_saved)
    console = Console(record=True, width=300)
    t = time.perf_counter()
    loop.train(load_config(os.path.relpath(rl_dir / "config.yaml", b)), console, resume=True)
    seconds["resume"] = time.perf_counter() - t
    text = console.export_text()
    assert "resumed from" in text and "step_1" in text and "changed settings" not in text, text
    assert comparable(rl_dir) == want_log
    assert eval_ids(rl_dir, "final") == want_final
    assert resumed_saved["weights"] == rl_saved["weights"]
    assert resumed_saved["greedy"] == rl_saved["greedy"]
    assert_reloads_as_saved(str(rl_ckpt), rl_saved, questions)
    if rl_kind == "lora":
        assert adapter_base(rl_ckpt) == str(sft_ckpt)
    return seconds


def _tiny_common(tiny) -> list[str]:
    """tiny_run_overrides' task, rollout and train settings (2 RL steps), and a short SFT."""
    sft = ["sft.n_demos=4", "sft.batch_size=4", "sft.steps=8", "sft.lr=1e-2", "sft.warmup=0"]
    extra = ["algo.lr=5e-3", "train.seed=3", "task.n_eval=4", "train.threads=1", "train.n_samples=4", *sft]
    overrides = tiny_run_overrides(tiny.sft_dir, Path("run"), *extra)
    # one value per key (the later wins): the `arlkit eval` command line refuses an override given twice
    overrides = list({o.split("=", 1)[0]: o for o in overrides}.values())
    return [o for o in overrides if not o.startswith(("model.path=", "train.run_dir="))]


@pytest.mark.parametrize(
    ("sft_kind", "rl_kind", "cli_eval"),
    [("lora", "lora", True), ("full", "full", True), ("full", "lora", False), ("lora", "full", False)],
    ids=["lora_lora", "full_full", "full_lora", "lora_full"],
)
def test_chain_on_the_tiny_model(tiny, tmp_path, monkeypatch, sft_kind, rl_kind, cli_eval) -> None:
    run_chain(
        tiny.sft_dir,
        _tiny_common(tiny),
        sft_kind,
        rl_kind,
        tmp_path,
        monkeypatch,
        prompts(tiny.task),
        cli_eval,
    )


def test_absolute_model_path(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "tiny").mkdir()  # a folder named like the alias does not shadow it
    assert absolute_model_path("ckpt") == str(tmp_path.resolve() / "ckpt")
    assert absolute_model_path("./ckpt/../ckpt") == str(tmp_path.resolve() / "ckpt")
    assert absolute_model_path("tiny") == "tiny"
    assert absolute_model_path("Qwen/Qwen2.5-3B-Instruct") == "Qwen/Qwen2.5-3B-Instruct"  # a hub id
    assert absolute_model_path("./missing") == "./missing"  # loading reports it as the user typed it


def test_chain_on_smollm2(smollm2_dir, tmp_path, monkeypatch) -> None:
    """The LoRA chain on a real model (SmolLM2-135M): 2 SFT steps, 2 RL steps of 4 one-turn episodes."""
    task = ToyWikiTask(n_people=120, max_turns=1, fmt="hermes")
    common = [
        "task.n_people=120",
        "task.max_turns=1",  # one turn of 12 tokens: the chain, not the agent, is under test
        "task.fmt=hermes",
        "task.n_eval=2",
        "rollout.n=4",
        "rollout.prompts_per_step=1",
        "rollout.max_new_tokens=12",
        "train.steps=2",
        "train.device=cpu",
        "train.threads=1",  # two threads per process on shared cores made decode steps 100x slower
        "train.seed=3",
        "train.n_samples=2",
        "algo.lr=1e-3",
        "sft.n_demos=2",
        "sft.batch_size=2",
        "sft.steps=2",
        "sft.lr=1e-3",
        "sft.warmup=0",
    ]
    seconds = run_chain(
        smollm2_dir, common, "lora", "lora", tmp_path, monkeypatch, prompts(task), True, False
    )
    print(f"SmolLM2-135M chain, seconds per stage: {seconds}")
