"""The `arlkit` command: demo, train, sft, eval, passk, cea, inspect, convert."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from arlkit.config import Config, check_repeated_overrides, load_config
from arlkit.errors import ArlkitError


def _quiet_transformers() -> None:
    """Our own progress bars say what is happening; transformers' per-shard bars only add noise."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


app = typer.Typer(add_completion=False, no_args_is_help=True, help="RL for tool-using LLM agents.")
console = Console()

DEMO_CONFIG = Path(__file__).parent / "demo.yaml"
SUMMARY_ROWS = (
    ("em", "EM"),
    ("f1", "F1"),
    ("tool_calls", "tool calls / episode"),
    ("turns", "turns / episode"),
    ("format_error_rate", "format-error rate"),
)


def _load(config: Path | None, overrides: list[str] | None) -> Config:
    """The config of a command line: a YAML file (or the defaults) and overrides, none of them given twice."""
    check_repeated_overrides(overrides or [])
    return load_config(config, overrides or [])


def _fail(e: ArlkitError) -> None:
    # escaped: a message may hold square brackets (`pip install 'arlkit[wandb]'`) that rich would take as markup
    console.print(f"[bold red]error:[/] {escape(str(e))}")
    raise typer.Exit(2)


def summary_table(summary: dict, em_label: str = "EM", stage: str = "RL") -> Table:
    """Before/after table; `em_label` names what the task's `em` is (e.g. execution accuracy for NL2SQL)."""
    table = Table(title=f"held-out questions: {summary['n_eval']} · {stage} steps: {summary['steps']}")
    table.add_column("metric")
    table.add_column("base", justify="right")
    table.add_column(f"after {stage}", justify="right")
    base, final = summary.get("base", {}), summary.get("final", {})
    rows = [(k, em_label if k == "em" else label) for k, label in SUMMARY_ROWS]
    keys = [*rows, *((k, k) for k in sorted(final) if k.startswith("em/"))]
    for key, label in keys:
        if key in final:
            table.add_row(label, f"{base.get(key, float('nan')):.3f}", f"{final[key]:.3f}")
    return table


def _run(cfg: Config, resume: bool = False, overwrite: bool = False) -> dict:
    from arlkit.train.loop import train

    _quiet_transformers()
    from arlkit.tasks import em_label

    summary = train(cfg, console, resume=resume, overwrite=overwrite)
    if summary.get("rank", 0):  # one table per job, not per process
        return summary
    console.print(summary_table(summary, em_label(cfg.task.name)))
    console.print(f"wall time {summary['seconds']:.0f} s · summary: {summary['run_dir']}/summary.json")
    return summary


@app.command()
def demo(overrides: Annotated[list[str] | None, typer.Argument(help="key=value overrides")] = None) -> None:
    """Build the tiny base if needed, evaluate it, train it with GRPO, evaluate again, print before/after.
    A rerun replaces the previous demo's run folder (runs/demo)."""
    try:
        _run(_load(DEMO_CONFIG, overrides), overwrite=True)
    except ArlkitError as e:
        _fail(e)


@app.command()
def train(
    config: Annotated[Path, typer.Argument(help="YAML config (see configs/)")],
    overrides: Annotated[list[str] | None, typer.Argument(help="dotted key=value overrides")] = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="continue from the newest complete checkpoint in train.run_dir")
    ] = False,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="delete the run train.run_dir holds (logs, checkpoints) first")
    ] = False,
) -> None:
    """Train with a YAML config plus dotted overrides, e.g. `algo.lr=1e-5 train.steps=50`. A train.run_dir
    that holds a run already is refused without --resume or --overwrite."""
    try:
        _run(_load(config, overrides), resume, overwrite)
    except ArlkitError as e:
        _fail(e)


@app.command("sft")
def sft_cmd(
    config: Annotated[Path, typer.Argument(help="YAML config (see configs/analyses/sft_toywiki.yaml)")],
    overrides: Annotated[list[str] | None, typer.Argument(help="dotted key=value overrides")] = None,
) -> None:
    """Fine-tune model.path on your own OpenAI-format conversations (sft.data, a JSONL file) or on scripted
    expert demonstrations (sft.strategy, e.g. all_hops) of the task."""
    from arlkit.train.sft_run import run_sft

    _quiet_transformers()
    try:
        summary = run_sft(_load(config, overrides), console)
    except ArlkitError as e:
        _fail(e)
    console.print(summary_table(summary, stage="SFT"))
    console.print(
        f"wall time {summary['seconds']:.0f} s · checkpoint: {summary['run_dir']}/checkpoints/final"
    )


@app.command()
def recipe(
    config: Annotated[Path, typer.Argument(help="YAML config (see configs/smollm2_toywiki.yaml)")],
    overrides: Annotated[list[str] | None, typer.Argument(help="dotted key=value overrides")] = None,
) -> None:
    """SFT warm start on mixed demonstrations, then RL from its checkpoint; held-out EM of base, SFT and RL."""
    from arlkit.train.recipe import run_recipe

    _quiet_transformers()
    try:
        summary = run_recipe(_load(config, overrides), console)
    except ArlkitError as e:
        _fail(e)
    console.print(recipe_table(summary))
    console.print(f"wall time {summary['seconds']:.0f} s · summary: {summary['run_dir']}/recipe.json")


def recipe_table(summary: dict) -> Table:
    em, rl = summary["em"], summary["rl"]
    table = Table(title=f"held-out EM ({summary['n_eval']} questions, greedy) and cost")
    for col in ("stage", "EM", "steps", "wall s", "s/step (rollout + prepare + update)", "gen tok/s"):
        table.add_column(col)
    table.add_row("base", f"{em['base']:.3f}", "", "", "", "")
    sft = summary["sft"]
    table.add_row("SFT", f"{em['sft']:.3f}", str(sft["steps"]), f"{sft['seconds']:.0f}", "", "")
    split = f"{rl.get('s_per_step', float('nan')):.1f} ({rl.get('rollout_s', 0):.1f} + {rl.get('prepare_s', 0):.1f} + {rl.get('update_s', 0):.1f})"
    table.add_row(
        "RL",
        f"{em['rl']:.3f}",
        str(rl["steps"]),
        f"{rl['seconds']:.0f}",
        split,
        f"{rl.get('gen_tokens_per_s', 0):.0f}",
    )
    table.caption = f"peak RSS: SFT {sft['peak_rss_gb']:.2f} GB, RL {rl['peak_rss_gb']:.2f} GB · total {summary['seconds']:.0f} s"
    return table


@app.command()
def passk(
    config: Annotated[Path, typer.Argument(help="YAML config (see configs/analyses/passk_toywiki.yaml)")],
    overrides: Annotated[
        list[str] | None,
        typer.Argument(help="dotted overrides, e.g. passk.policies.rl=runs/x/checkpoints/final"),
    ] = None,
) -> None:
    """PASS@(k,T) of the policies in passk.policies: curves, boundaries, exclusive solves, efficiency."""
    from arlkit.eval.passk_run import run_passk

    _quiet_transformers()
    try:
        cfg = _load(config, overrides)
        result = run_passk(cfg, console)
    except ArlkitError as e:
        _fail(e)
    console.print(passk_table(result))
    console.print(f"wall time {result['seconds']:.0f} s · report: {cfg.train.run_dir}/report.md")


def passk_table(result: dict) -> Table:
    """PASS@1 → PASS@n and the boundary size per policy and cap."""
    table = Table(title=f"PASS@(k,T): {result['n_questions']} questions, n = {result['n']}")
    table.add_column("policy")
    for t in result["caps"]:
        table.add_column(f"T={t}  @1→@{result['n']}  |B|", justify="right")
    for p in result["policies"]:
        cells = []
        for t in result["caps"]:
            cap = result["by_cap"][str(t)]
            curve = cap["pass_at_k"][p]
            cells.append(f"{curve[0]:.2f}→{curve[-1]:.2f}  {cap['boundary'][p]}")
        table.add_row(p, *cells)
    return table


@app.command()
def cea(
    config: Annotated[Path, typer.Argument(help="YAML config (see configs/analyses/cea_toywiki.yaml)")],
    overrides: Annotated[list[str] | None, typer.Argument(help="dotted key=value overrides")] = None,
) -> None:
    """Capability Effect Attribution: Reas/Tool/Unified models, hybrids, λ per question, gradient angles."""
    from arlkit.eval.cea_run import run_cea

    _quiet_transformers()
    try:
        cfg = _load(config, overrides)
        result = run_cea(cfg, console)
    except ArlkitError as e:
        _fail(e)
    console.print_json(json.dumps(result["summary"]))
    console.print(f"wall time {result['seconds']:.0f} s · report: {cfg.train.run_dir}/report.md")


@app.command("eval")
def eval_cmd(
    config: Annotated[Path | None, typer.Option(help="YAML config; defaults otherwise")] = None,
    model: Annotated[
        str | None, typer.Option(help="checkpoint folder or HF model id (overrides model.path)")
    ] = None,
    overrides: Annotated[list[str] | None, typer.Argument(help="dotted key=value overrides")] = None,
    out: Annotated[Path | None, typer.Option(help="also write the metrics as JSON to this file")] = None,
) -> None:
    """Evaluate a policy on held-out questions and print the metrics as JSON. The episodes are kept in a run
    folder only when the command line names one (train.run_dir=…, a new folder): the train.run_dir of a YAML
    config is its training run's, whose config.yaml and logs an evaluation must not write over."""
    from arlkit.train.loop import run_eval, setup

    _quiet_transformers()
    try:
        extra = [f"model.path={model}"] if model else []
        check_repeated_overrides([*(overrides or []), *extra])  # --model and model.path= conflict
        cfg = load_config(config, [*(overrides or []), *extra, "train.steps=0"])
        keep = any(o.split("=", 1)[0].strip() == "train.run_dir" for o in overrides or [])
        # updates nothing: no optimiser, KL reference, critic
        s = setup(cfg, console, for_training=False, run_mode="new" if keep else None)
        metrics = run_eval(s, 0, "eval")
    except ArlkitError as e:
        _fail(e)
    if out is not None:
        out.write_text(json.dumps(metrics, indent=2))
    console.print_json(json.dumps(metrics))


@app.command("inspect")
def inspect_cmd(
    run: Annotated[Path, typer.Argument(help="run folder (holds samples.jsonl and eval_*.jsonl)")],
    out: Annotated[Path | None, typer.Option(help="HTML file to write; default RUN/inspect.html")] = None,
    limit: Annotated[int, typer.Option(min=1, help="at most this many trajectories per sample file")] = 64,
    tokenizer: Annotated[
        str | None, typer.Option(help="tokenizer (path or HF id) for samples stored without per-token text")
    ] = None,
) -> None:
    """Write one self-contained HTML page of the run's sample trajectories: tokens coloured by role,
    entropy/advantage shading, tool calls and observations, rewards, branch trees."""
    from arlkit.viewer import write_page

    try:
        if tokenizer:
            from arlkit.models.loading import load_tokenizer

            _quiet_transformers()
            path = write_page(run, out, limit, load_tokenizer(tokenizer, field="--tokenizer"))
        else:
            path = write_page(run, out, limit)
    except ArlkitError as e:
        _fail(e)
    console.print(f"wrote {path}")


@app.command()
def convert(
    src: Annotated[
        str, typer.Argument(help="a .gguf file, a folder holding one (with --gguf-file), or smollm2")
    ],
    dst: Annotated[Path, typer.Argument(help="the folder to write; must be new or empty")],
    gguf_file: Annotated[str | None, typer.Option(help="the .gguf file inside the folder SRC")] = None,
) -> None:
    """Convert a GGUF checkpoint (llama.cpp's format) to a plain Hugging Face folder: float32 safetensors
    weights, config and tokenizer, which any Hugging Face tool loads with from_pretrained."""
    from arlkit.models.gguf import convert as convert_gguf

    _quiet_transformers()
    try:
        out = convert_gguf(src, dst, gguf_file)
    except ArlkitError as e:
        _fail(e)
    console.print(f"wrote {out}")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
