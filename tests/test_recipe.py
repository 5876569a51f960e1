"""`arlkit recipe`: an SFT stage, then RL from its checkpoint, with one summary of both."""

from __future__ import annotations

import json
import math

from conftest import tiny_run_overrides
from rich.console import Console

from arlkit.config import load_config
from arlkit.train.recipe import run_recipe


def test_recipe_runs_sft_then_rl_from_its_checkpoint(tiny, tmp_path) -> None:
    extra = [
        "task.n_eval=4",
        "sft.n_demos=8",
        "sft.batch_size=4",
        "sft.steps=2",
        "sft.micro_batch_tokens=512",
    ]
    extra += ["sft.strategy_mix={none: 0.5, all_hops: 0.5}", "model.lora.rank=4"]
    cfg = load_config(None, tiny_run_overrides(tiny.model_dir, tmp_path / "recipe", *extra))
    summary = run_recipe(cfg, Console(quiet=True))
    root = tmp_path / "recipe"
    assert json.loads((root / "recipe.json").read_text()) == summary
    # SFT trained in full (sft.lora false), RL with LoRA on the SFT checkpoint
    sft_cfg = (root / "sft" / "config.yaml").read_text()
    assert "lora: null" in sft_cfg
    assert (root / "sft" / "checkpoints" / "final" / "model.safetensors").is_file()
    adapter = json.loads((root / "rl" / "checkpoints" / "final" / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == str(root.resolve() / "sft" / "checkpoints" / "final")
    assert set(summary["em"]) == {"base", "sft", "rl"} and all(0 <= v <= 1 for v in summary["em"].values())
    rl = summary["rl"]
    assert rl["steps"] == 2 and math.isclose(
        rl["s_per_step"], rl["rollout_s"] + rl["prepare_s"] + rl["update_s"]
    )
    assert summary["sft"]["peak_rss_gb"] > 0 and rl["peak_rss_gb"] > 0
    # the RL stage evaluated no base of its own: its starting point is the SFT stage's final evaluation
    rl_metrics = [json.loads(line) for line in (root / "rl" / "metrics.jsonl").read_text().splitlines()]
    assert not [m for m in rl_metrics if m["step"] == 0 and "eval/em" in m]
