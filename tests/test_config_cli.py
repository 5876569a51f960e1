"""Config loading (validation errors name the field) and the `arlkit` command in a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from arlkit.config import Config, load_config
from arlkit.errors import ArlkitError


def test_defaults_and_yaml_merge(tmp_path) -> None:
    assert load_config() == Config()
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump({"algo": {"lr": 3.0e-5}, "rollout": {"n": 4}}))
    cfg = load_config(p, ["rollout.n=2"])  # overrides win over the file
    assert cfg.algo.lr == 3e-5 and cfg.rollout.n == 2
    assert cfg.rollout.prompts_per_step == Config().rollout.prompts_per_step  # untouched defaults stay
    assert load_config(Path(__file__).parents[1] / "src" / "arlkit" / "demo.yaml").model.path == "tiny"


def test_overrides_parse_numbers_bools_null_and_lists() -> None:
    cfg = load_config(
        None,
        [
            "train.steps=7",
            "rollout.temperature=0.5",
            "algo.lr=2e-5",  # YAML 1.1 reads this as a string; validation still makes it a float
            "algo.norm_by_std=false",
            "model.gradient_checkpointing=true",
            "algo.dual_clip=3",
            "train.threads=null",
            "model.lora.rank=8",
            "model.lora.target_modules=[q_proj, v_proj]",
            "train.run_dir=runs/a=b",  # only the first '=' splits
        ],
    )
    assert cfg.train.steps == 7 and isinstance(cfg.train.steps, int)
    assert cfg.rollout.temperature == 0.5
    assert cfg.algo.lr == 2e-5 and isinstance(cfg.algo.lr, float)
    assert cfg.algo.norm_by_std is False and cfg.model.gradient_checkpointing is True
    assert cfg.algo.dual_clip == 3.0
    assert cfg.train.threads is None
    assert cfg.model.lora is not None and cfg.model.lora.rank == 8 and cfg.model.lora.alpha == 32
    assert cfg.model.lora.target_modules == ["q_proj", "v_proj"]
    assert cfg.train.run_dir == "runs/a=b"
    assert load_config(None, ["algo.dual_clip=null"]).algo.dual_clip is None
    assert load_config(None, ["algo.dual_clip="]).algo.dual_clip is None  # empty value is null


@pytest.mark.parametrize(
    ("overrides", "names"),
    [
        (["algo.lr=-1"], ["algo.lr", "greater than 0", "-1"]),
        (["algo.lrr=1"], ["algo.lrr", "unknown"]),
        (["bogus.x=1"], ["bogus"]),
        (["rollout.n=many"], ["rollout.n", "many"]),  # wrong type
        (["train.steps=1.5"], ["train.steps"]),  # a float for an int
        (["model.dtype=float64"], ["model.dtype"]),  # not one of the literals
        (["rollout.top_p=1.5", "task.n_people=3"], ["rollout.top_p", "task.n_people"]),  # every error listed
        (["algo.clip_low"], ["algo.clip_low", "section.field=value"]),  # no '='
        (["algo.lr.x=1"], ["algo.lr"]),  # a field used as a section
        (["algo.advantage=grpoo"], ["algo.advantage", "'grpoo'", "valid:", "grpo,"]),  # checked at load time
        (["algo.kl_estimator=k4"], ["algo.kl_estimator", "valid: k1, k2, k3"]),
    ],
)
def test_bad_overrides_name_the_field(overrides, names) -> None:
    with pytest.raises(ArlkitError) as e:
        load_config(None, overrides)
    for n in names:
        assert n in str(e.value), (n, str(e.value))


def test_bad_files_name_the_path(tmp_path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ArlkitError, match="does not exist") as e:
        load_config(missing)
    assert str(missing) in str(e.value)

    bad = tmp_path / "bad.yaml"
    bad.write_text("algo:\n  lr: [1, 2\n")
    with pytest.raises(ArlkitError, match="not valid YAML") as e:
        load_config(bad)
    assert str(bad) in str(e.value)

    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("just a string\n")
    with pytest.raises(ArlkitError, match="mapping") as e:
        load_config(scalar)
    assert str(scalar) in str(e.value)

    wrong = tmp_path / "wrong.yaml"
    wrong.write_text("rollout:\n  n: 0\ntrain:\n  stepz: 3\n")
    with pytest.raises(ArlkitError) as e:
        load_config(wrong)
    assert "rollout.n" in str(e.value) and "train.stepz" in str(e.value)


def test_configs_are_frozen() -> None:
    cfg = load_config()
    with pytest.raises(Exception):  # noqa: B017 - pydantic's frozen error type is an implementation detail
        cfg.algo.lr = 1.0  # type: ignore[misc]


# ---------------------------------------------------------------------------------------------
# The command line
# ---------------------------------------------------------------------------------------------


def _arlkit(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "ARLKIT_CACHE": str(cwd / "cache"), "COLUMNS": "200", "NO_COLOR": "1"}
    return subprocess.run(
        [sys.executable, "-m", "arlkit", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


def test_cli_train_one_step(tiny, tmp_path) -> None:
    cfg = {
        "model": {"path": str(tiny.sft_dir)},
        "task": {"n_people": 120, "max_turns": 2, "n_eval": 2},
        "rollout": {"n": 2, "prompts_per_step": 1, "max_new_tokens": 8},
        "train": {"steps": 1, "device": "cpu", "run_dir": str(tmp_path / "run")},
    }
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    proc = _arlkit("train", str(path), "train.n_samples=1", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["steps"] == 1 and summary["n_eval"] == 2
    assert "em" in summary["base"] and "em" in summary["final"]
    assert (tmp_path / "run" / "checkpoints" / "final" / "config.json").is_file()
    assert "summary.json" in proc.stdout


@pytest.mark.parametrize(
    ("extra", "field"),
    [(["algo.lr=-1"], "algo.lr"), (["algo.lrr=1"], "algo.lrr"), (["model.dtype=float64"], "model.dtype")],
)
def test_cli_bad_field_exits_2_without_traceback(tmp_path, extra, field) -> None:
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump({"train": {"steps": 1}}))
    proc = _arlkit("train", str(path), *extra, cwd=tmp_path)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out
    assert field in out
    assert "Traceback" not in out
    assert not (tmp_path / "runs").exists()  # nothing was started


def test_cli_missing_config_file_exits_2(tmp_path) -> None:
    proc = _arlkit("train", str(tmp_path / "missing.yaml"), cwd=tmp_path)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out
    assert "missing.yaml" in out and "Traceback" not in out


def test_include_merges_section_by_section_and_the_includer_wins(tmp_path) -> None:
    (tmp_path / "base.yaml").write_text(
        yaml.safe_dump({"algo": {"lr": 1e-3, "clip_low": 0.1}, "rollout": {"n": 3}})
    )
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "top.yaml").write_text("include: ../base.yaml\nalgo:\n  lr: 2.0e-3\n")
    cfg = load_config(tmp_path / "sub" / "top.yaml", ["rollout.n=5"])
    assert (cfg.algo.lr, cfg.algo.clip_low, cfg.rollout.n) == (2e-3, 0.1, 5)
    (tmp_path / "loop.yaml").write_text("include: loop.yaml\n")
    with pytest.raises(ArlkitError, match="includes itself"):
        load_config(tmp_path / "loop.yaml")
    (tmp_path / "dangling.yaml").write_text("include: nowhere.yaml\n")
    with pytest.raises(ArlkitError, match=r"nowhere\.yaml"):
        load_config(tmp_path / "dangling.yaml")


@pytest.mark.parametrize(
    "path",
    sorted(
        p
        for p in (Path(__file__).parents[1] / "configs").rglob("*.yaml")
        if p.parent.name != "accelerate"  # accelerate's launcher configs (tests/test_distributed.py)
    ),
    ids=lambda p: p.name,
)
def test_every_shipped_config_loads(path) -> None:
    cfg = load_config(path)
    assert cfg.algo.advantage and cfg.model.path


def test_rollout_correction_auto_follows_the_sampler() -> None:
    """METHODS.md §9: TIS whenever the sampler is vLLM or bf16, nothing for the own fp32 engine; a choice in
    the config wins."""
    assert load_config().algo.rollout_correction == "none"
    assert load_config(None, ["rollout.backend=vllm"]).algo.rollout_correction == "tis"
    assert load_config(None, ["rollout.dtype=bfloat16"]).algo.rollout_correction == "tis"
    assert (
        load_config(
            None, ["rollout.dtype=bfloat16", "algo.rollout_correction=icepop"]
        ).algo.rollout_correction
        == "icepop"
    )
