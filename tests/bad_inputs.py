"""The catalogue of bad inputs a user (or a model) can give arlkit, and the message each one gets.

Every case is run for real in a subprocess, in a scratch folder prepared by :func:`prepare`: `arlkit …`
commands, or a Python snippet for library-level inputs (tool definitions, data rows) and for model output
(tool calls, whose "error" is the observation the model sees). `tests/test_bad_inputs.py` runs a
representative subset and checks docs/bad_inputs.md is current; this script runs them all and writes it:

    .venv/bin/python tests/bad_inputs.py        # rewrites docs/bad_inputs.md (a few minutes on 2 cores)
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "bad_inputs.md"


PYTHON = "python -c "


@dataclass(frozen=True)
class Case:
    area: str
    what: str
    command: str  # `arlkit …` words run in the scratch folder, or PYTHON + a snippet (see RUNNER)
    expect: str  # the field, path or value the message must name
    observation: bool = False  # model output: exit 0, the message is the observation the model sees
    in_test: bool = False  # run by tests/test_bad_inputs.py too
    label: str = ""  # what the table shows instead of the command (model output: the action)

    @property
    def code(self) -> str | None:
        return self.command[len(PYTHON) :] if self.command.startswith(PYTHON) else None

    @property
    def shown(self) -> str:
        """The command as a user would type it (bash's $'…' quoting keeps a snippet on one line)."""
        if self.label:
            return self.label
        if self.code is None:
            return self.command
        quoted = self.code.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n")
        return f"{PYTHON}$'{quoted}'"


# A snippet runs under this wrapper: an ArlkitError (the one type for user errors) is printed as
# `error: Type: message` with exit code 2, anything else escapes as a traceback.
RUNNER = (
    "import sys\nfrom arlkit.errors import ArlkitError\ntry:\n    exec(compile(sys.argv[1], '<case>', 'exec'), {})\n"
    "except ArlkitError as e:\n    print(f'error: {type(e).__name__}: {e}')\n    raise SystemExit(2)\n"
)


def _py(code: str) -> str:
    return PYTHON + textwrap.dedent(code).strip()


_ENV = "from arlkit.envs import make_qa_env\nfrom arlkit.tools import calculator, tool\n"
_STEP = (
    "env = make_qa_env([{tool}], tool_timeout_s=0.2, system_prompt=None)\n"
    "env.reset({{'question': 'q', 'answer': 'a'}})\n"
    "print(env.step({action}).observations[0]['content'])"
)


def model_output(
    what: str, action: str, expect: str, tool: str = "calculator", prelude: str = "", **kw: Any
) -> Case:
    """What ToolEnv (tool timeout 0.2 s) answers to one model action; ``expression``: the action is a
    Python expression (for actions too long to show)."""
    expression = kw.pop("expression", False)
    step = _STEP.format(tool=tool, action=action if expression else repr(action))
    shown = f"model writes `{action if expression else repr(action)}`" + (
        f" (tool `{tool}`)" if tool != "calculator" else ""
    )
    return Case(
        "model output", what, PYTHON + _ENV + prelude + step, expect, observation=True, label=shown, **kw
    )


CASES: list[Case] = [
    # config: files, fields, values
    Case(
        "config", "unknown field in the file", "arlkit train unknown_field.yaml", "train.stepz", in_test=True
    ),
    Case("config", "unknown section", "arlkit train cfg.yaml bogus.x=1", "bogus"),
    Case("config", "misspelt field", "arlkit train cfg.yaml algo.lrr=1e-4", "algo.lrr"),
    Case("config", "wrong type", "arlkit train cfg.yaml rollout.n=many", "rollout.n", in_test=True),
    Case("config", "float for an integer", "arlkit train cfg.yaml train.steps=1.5", "train.steps"),
    Case("config", "value out of range", "arlkit train cfg.yaml algo.lr=-1", "algo.lr"),
    Case("config", "not one of the choices", "arlkit train cfg.yaml model.dtype=float64", "model.dtype"),
    Case(
        "config",
        "several bad values at once (all listed)",
        "arlkit train cfg.yaml rollout.top_p=1.5 task.n_people=3",
        "task.n_people",
    ),
    Case(
        "config",
        "unknown advantage estimator",
        "arlkit train cfg.yaml algo.advantage=grpoo",
        "algo.advantage",
        in_test=True,
    ),
    Case("config", "unknown KL estimator", "arlkit train cfg.yaml algo.kl_estimator=k4", "algo.kl_estimator"),
    Case("config", "override without '='", "arlkit train cfg.yaml algo.lr", "algo.lr"),
    Case("config", "a field used as a section", "arlkit train cfg.yaml algo.lr.x=1", "algo.lr"),
    Case("config", "a section given a scalar", "arlkit train scalar_section.yaml", "algo"),
    Case("config", "LoRA rank 0", "arlkit train cfg.yaml model.lora.rank=0", "model.lora.rank"),
    Case("config", "config file missing", "arlkit train nope.yaml", "nope.yaml", in_test=True),
    Case("config", "include of a missing file", "arlkit train include_missing.yaml", "nope_base.yaml"),
    Case("config", "a file that includes itself", "arlkit train self_include.yaml", "self_include.yaml"),
    Case(
        "config",
        "advantage that needs a critic, none set",
        "arlkit train cfg.yaml algo.advantage=gae",
        "critic.kind",
    ),
    Case(
        "config",
        "LoRA and role routing together",
        "arlkit train cfg.yaml model.lora.rank=8 model.routing.kind=dart",
        "model.lora",
    ),
    Case("config", "config file not YAML", "arlkit train bad.yaml", "bad.yaml"),
    Case("config", "config file not a mapping", "arlkit train scalar.yaml", "scalar.yaml"),
    Case("config", "CUDA asked for, none present", "arlkit train cfg.yaml train.device=cuda", "train.device"),
    # the model path
    Case(
        "model",
        "local path that does not exist",
        "arlkit train cfg.yaml model.path=./no_such_model",
        "no_such_model",
        in_test=True,
    ),
    Case("model", "empty folder", "arlkit train cfg.yaml model.path=empty_dir", "config.json"),
    Case("model", "a file, not a folder", "arlkit train cfg.yaml model.path=afile", "afile"),
    Case(
        "model",
        "config.json that is not JSON",
        "arlkit train cfg.yaml model.path=broken_model",
        "broken_model",
    ),
    Case(
        "model",
        "config and tokenizer but no weights",
        "arlkit train cfg.yaml model.path=no_weights",
        "no_weights",
    ),
    Case(
        "model",
        "Hugging Face id that cannot be fetched (offline)",
        "arlkit train cfg.yaml model.path=no-such-org/no-such-model",
        "no-such-org/no-such-model",
    ),
    Case(
        "model",
        "eval of a checkpoint that does not exist",
        "arlkit eval --model ./missing_ckpt",
        "missing_ckpt",
    ),
    # data and rollout limits
    Case(
        "data",
        "prompt longer than the episode limit",
        "arlkit train cfg.yaml rollout.max_length=17",
        "rollout.max_length",
        in_test=True,
    ),
    Case(
        "data",
        "world too small for a split",
        "arlkit train cfg.yaml task.n_people=11 task.heldout_frac=0.95",
        "n_people",
    ),
    Case(
        "data",
        "QA row without a question",
        _py("from arlkit.envs import QAScorer; QAScorer().prompt({'answer': 'Oslo'})"),
        "question",
    ),
    Case(
        "data",
        "QA row without a gold answer",
        _py("from arlkit.envs import QAScorer; QAScorer().prompt({'question': 'Where?'})"),
        "answer",
    ),
    # run folders
    Case(
        "run folder", "train.run_dir is a file", "arlkit train cfg.yaml train.run_dir=afile", "train.run_dir"
    ),
    Case(
        "run folder", "inspect a folder that does not exist", "arlkit inspect no_run", "no_run", in_test=True
    ),
    Case("run folder", "inspect a folder without samples", "arlkit inspect empty_dir", "samples.jsonl"),
    Case(
        "run folder",
        "--resume without a checkpoint",
        "arlkit train cfg.yaml train.run_dir=runs/fresh --resume",
        "train.save_every",
        in_test=True,
    ),
    Case(
        "config",
        "W&B logging without wandb installed",
        "arlkit train cfg.yaml train.wandb=true",
        "train.wandb",
    ),
    # the command line
    Case("CLI", "unknown command", "arlkit trian cfg.yaml", "trian", in_test=True),
    Case("CLI", "missing argument", "arlkit train", "config"),
    Case("CLI", "bad option value", "arlkit inspect empty_dir --limit 0", "--limit"),
    # tool definitions (library use)
    Case(
        "tool definition",
        "@tool function without a docstring",
        _py("from arlkit.tools import tool\n@tool\ndef f(x: int) -> str:\n    return ''"),
        "docstring",
    ),
    Case(
        "tool definition",
        "parameter without a type hint",
        _py("from arlkit.tools import tool\n@tool\ndef f(x) -> str:\n    '''F.'''\n    return ''"),
        "'x'",
    ),
    Case(
        "tool definition",
        "unsupported type hint",
        _py("from arlkit.tools import tool\n@tool\ndef f(x: set) -> str:\n    '''F.'''\n    return ''"),
        "'x'",
    ),
    Case(
        "tool definition",
        "two tools with one name",
        _py(_ENV + "make_qa_env([calculator, calculator])"),
        "calculator",
    ),
    Case("tool definition", "unknown call format", _py(_ENV + "make_qa_env([calculator], fmt='xml')"), "xml"),
    Case(
        "tool definition",
        "non-positive tool timeout",
        _py(_ENV + "make_qa_env([calculator], tool_timeout_s=0)"),
        "tool_timeout_s",
    ),
    # model output: never an error, always an observation
    model_output(
        "unknown tool",
        '<tool_call>{"name": "serch", "arguments": {"query": "x"}}</tool_call>',
        "serch",
        in_test=True,
    ),
    model_output(
        "argument of the wrong type",
        '<tool_call>{"name": "calculator", "arguments": {"expression": 3}}</tool_call>',
        "expression",
    ),
    model_output(
        "missing argument", '<tool_call>{"name": "calculator", "arguments": {}}</tool_call>', "expression"
    ),
    model_output(
        "malformed JSON", '<tool_call>{"name": "calculator", "arguments": {</tool_call>', "invalid JSON"
    ),
    model_output(
        "JSON nested past the decoder's limit",
        """'<tool_call>{"name": "calculator", "arguments": ' + '[' * 3000 + '}</tool_call>'""",
        "nested too deeply",
        expression=True,
    ),
    model_output("unclosed call", '<tool_call>{"name": "calculator"', "unclosed"),
    model_output(
        "a tool that raises",
        '<tool_call>{"name": "boom", "arguments": {"x": 1}}</tool_call>',
        "kaput",
        tool="boom",
        prelude='@tool\ndef boom(x: int) -> str:\n    """Raises."""\n    raise ValueError("kaput")\n',
    ),
    model_output(
        "a tool that hangs past the timeout",
        '<tool_call>{"name": "slow", "arguments": {"x": 1}}</tool_call>',
        "timed out",
        tool="slow",
        prelude='import time\n@tool\ndef slow(x: int) -> str:\n    """Sleeps."""\n    time.sleep(5)\n    return ""\n',
    ),
]


# ---------------------------------------------------------------------------------------------
# Running the cases
# ---------------------------------------------------------------------------------------------


def prepare(root: Path, model_dir: Path) -> None:
    """The scratch folder: configs, a loadable tiny model (copied to `tiny_model`) and folders that are not
    models; relative paths keep the messages the same wherever the folder is."""
    shutil.copytree(model_dir, root / "tiny_model", dirs_exist_ok=True)
    base = {
        "model": {"path": "tiny_model"},
        "task": {"n_people": 120, "n_eval": 2},
        "rollout": {"n": 2, "prompts_per_step": 1, "max_new_tokens": 8},
        "train": {"steps": 1, "device": "cpu", "run_dir": "runs/x"},
    }
    (root / "cfg.yaml").write_text(yaml.safe_dump(base))
    (root / "unknown_field.yaml").write_text(yaml.safe_dump({**base, "train": {"stepz": 3}}))
    (root / "scalar_section.yaml").write_text(yaml.safe_dump({**base, "algo": 5}))
    (root / "bad.yaml").write_text("algo:\n  lr: [1, 2\n")
    (root / "include_missing.yaml").write_text("include: nope_base.yaml\n")
    (root / "self_include.yaml").write_text("include: self_include.yaml\n")
    (root / "scalar.yaml").write_text("just a string\n")
    (root / "afile").write_text("not a folder\n")
    (root / "empty_dir").mkdir(exist_ok=True)
    (root / "broken_model").mkdir(exist_ok=True)
    (root / "broken_model" / "config.json").write_text("not json {")
    no_weights = root / "no_weights"
    no_weights.mkdir(exist_ok=True)
    for f in model_dir.iterdir():
        if not f.name.endswith((".safetensors", ".bin")):
            (no_weights / f.name).write_bytes(f.read_bytes())


def _argv(case: Case) -> list[str]:
    if case.code is not None:
        return [sys.executable, "-c", RUNNER, case.code]
    return [sys.executable, "-m", "arlkit", *shlex.split(case.command)[1:]]


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def message(output: str) -> str:
    """The message a user reads: after `error:`, inside typer's error box, or the whole output."""
    text = _ANSI.sub("", output)
    if "error:" in text:
        text = text[text.index("error:") + len("error:") :]
    elif "─ Error ─" in text:
        box = text[text.index("─ Error ─") :].splitlines()[1:]
        text = " ".join(line.strip("│ ") for line in box if line.startswith("│"))
    return " ".join(text.split())


@dataclass(frozen=True)
class Outcome:
    code: int
    message: str
    traceback: bool


def run_case(case: Case, root: Path) -> Outcome:
    env = {
        **os.environ,
        "COLUMNS": "300",  # rich wraps at the terminal width: one message, one line
        "NO_COLOR": "1",
        "HF_HUB_OFFLINE": "1",  # no network here; offline makes the hub case fail fast and the same everywhere
        "ARLKIT_CACHE": str(root / "cache"),
        "PYTHONWARNINGS": "ignore",
    }
    proc = subprocess.run(_argv(case), cwd=root, env=env, capture_output=True, text=True, timeout=600)
    out = proc.stdout + proc.stderr
    text = message(proc.stdout if case.observation else out)
    text = text.replace(str(root.resolve()) + os.sep, "")  # absolute scratch paths vary from run to run
    return Outcome(proc.returncode, text, "Traceback" in out)


def table_row(case: Case, outcome: Outcome) -> str:
    shown = case.shown if case.label else f"`{case.shown}`"
    # a code span, or renderers would take <tool_call> in a message for an HTML tag and hide it
    text = (
        f"`{outcome.message}`" if "<" in outcome.message and "`" not in outcome.message else outcome.message
    )
    cells = [case.area, case.what, shown, str(outcome.code), text]
    return "| " + " | ".join(c.replace("|", "\\|").replace("\n", " ") for c in cells) + " |"


def write_doc(results: list[tuple[Case, Outcome]]) -> str:
    lines = [
        "# Bad inputs and the messages they get",
        "",
        "Generated by `.venv/bin/python tests/bad_inputs.py` from real runs (do not edit by hand); "
        "`tests/test_bad_inputs.py` re-runs the cases marked in `tests/bad_inputs.py` and checks this table.",
        "Each command runs in a scratch folder holding `cfg.yaml` (a valid small config whose `model.path` is "
        "`tiny_model`, a tiny saved model), the broken files and folders the cases name, with `HF_HUB_OFFLINE=1`.",
        "Exit code 2 is a user error (one message, no traceback); for model output the episode goes on and "
        "the message is the observation the model sees (exit code 0): those cases run `ToolEnv.step` on the "
        "action shown, with the `calculator` tool (or the tool named) and a 0.2 s tool timeout.",
        "Python snippets run with an `ArlkitError` caught and printed as `error: Type: message`.",
        "",
        "| area | bad input | command | exit | message |",
        "| --- | --- | --- | --- | --- |",
        *(table_row(c, o) for c, o in results),
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    import tempfile

    from arlkit.models.tiny import build_tokenizer, new_model

    sys.path.insert(0, str(REPO / "tests"))
    from conftest import tiny_recipe

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        recipe = tiny_recipe()
        tok = build_tokenizer(recipe)
        new_model(recipe, tok).save_pretrained(root / "build")
        tok.save_pretrained(root / "build")
        prepare(root, root / "build")
        results = []
        for case in CASES:
            outcome = run_case(case, root)
            print(f"{outcome.code}  {case.what}: {outcome.message[:150]}", flush=True)
            results.append((case, outcome))
    wrong = [
        f"{c.what}: {o}"
        for c, o in results
        if o.traceback or o.code != (0 if c.observation else 2) or c.expect not in o.message
    ]
    if wrong:  # a case that no longer gets its clear message is a bug to fix, not a row to publish
        raise SystemExit("cases without their clear message:\n" + "\n".join(wrong))
    DOC.parent.mkdir(exist_ok=True)
    DOC.write_text(write_doc(results))
    print(f"wrote {DOC}")


if __name__ == "__main__":
    main()
