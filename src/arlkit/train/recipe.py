"""`arlkit recipe`: an SFT warm start, then RL from its checkpoint, in one command with one table.

The cold start R1-style recipes use: supervised fine-tuning on scripted demonstrations that mix strategies
(`sft.strategy_mix`, imperfect on purpose so RL has behaviours to reweight), then GRPO on the SFT checkpoint.
Both stages are the ordinary `arlkit sft` and `arlkit train` runs, in `<train.run_dir>/sft` and `/rl`; the
SFT stage fine-tunes in full unless `sft.lora` is set (then with `model.lora`'s settings), the RL stage with
`model.lora` as configured. Held-out EM is measured three times on the same questions: the base (before SFT),
SFT (after it; also the RL stage's starting point) and RL.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from typing import Any

from rich.console import Console

from arlkit.config import Config, _deep_merge
from arlkit.errors import ArlkitError
from arlkit.train.memory import peak_rss_mb, reset_peak_rss


def stage_config(cfg: Config, patch: dict[str, Any]) -> Config:
    """`cfg` with the sections of `patch` merged in, validated again."""
    return Config.model_validate(_deep_merge(cfg.model_dump(), patch))


def run_recipe(cfg: Config, console: Console | None = None) -> dict[str, Any]:
    """SFT then RL as `cfg` says; returns the summary also written to `<run_dir>/recipe.json`."""
    from arlkit.train.loop import train
    from arlkit.train.run_dir import RunDir, held_run
    from arlkit.train.sft_run import run_sft

    console = console or Console()
    root = Path(cfg.train.run_dir).expanduser().resolve()
    held = {stage: held_run(root / stage) for stage in ("sft", "rl") if (root / stage).is_dir()}
    if any(held.values()):  # found before the SFT stage spends its minutes, not after
        found = "; ".join(f"{stage}/: {', '.join(h)}" for stage, h in held.items() if h)
        raise ArlkitError(f"train.run_dir {str(root)!r} already holds a recipe run ({found}); give another")
    t0 = time.perf_counter()
    sft_patch: dict[str, Any] = {"train": {"run_dir": str(root / "sft"), "eval_base": True}}
    if not cfg.sft.lora:
        sft_patch["model"] = {"lora": None}
    sft_summary = run_sft(stage_config(cfg, sft_patch), console)
    sft_peak = reset_peak_rss() / 1024
    t1 = time.perf_counter()
    rl_cfg = stage_config(
        cfg,
        {
            "model": {"path": str(root / "sft" / "checkpoints" / "final"), "gguf_file": None},
            "train": {"run_dir": str(root / "rl"), "eval_base": False},
        },
    )
    rl_summary = train(rl_cfg, console)
    t2 = time.perf_counter()
    steps = [r for r in RunDir(rl_cfg.train.run_dir).read_metrics() if "timing_s/update" in r]
    summary = {
        "em": {
            "base": sft_summary["base"].get("em"),
            "sft": sft_summary["final"].get("em"),
            "rl": rl_summary["final"].get("em"),
        },
        "n_eval": rl_summary["n_eval"],
        "sft": {
            "steps": sft_summary["steps"],
            "seconds": t1 - t0,
            "final_loss": sft_summary["final_loss"],
            "peak_rss_gb": sft_peak,
        },
        "rl": {
            "steps": rl_summary["steps"],
            "seconds": t2 - t1,
            "peak_rss_gb": peak_rss_mb() / 1024,
            **_step_figures(steps),
        },
        "seconds": t2 - t0,
        "run_dir": str(root),
    }
    (root / "recipe.json").write_text(json.dumps(summary, indent=2))
    return summary


def _step_figures(rows: list[dict]) -> dict[str, float]:
    """Medians over the RL steps: seconds per step and its split, generated tokens per second."""
    if not rows:
        return {}

    def med(key: str) -> float:
        return statistics.median(r.get(key, float("nan")) for r in rows)

    split = {k: med(f"timing_s/{k}") for k in ("rollout", "prepare", "update")}
    return {
        "s_per_step": sum(split.values()),
        **{f"{k}_s": v for k, v in split.items()},
        "gen_tokens_per_s": med("perf/gen_tokens_per_s"),
        "update_tokens_per_s": med("perf/update_tokens_per_s"),
        "logprob_diff": med("rollout/logprob_diff"),
    }
