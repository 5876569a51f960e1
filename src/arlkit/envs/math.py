"""Math answers: exact comparison of numbers with sympy, and a scorer for math word problems.

A final answer matches when it and a gold answer are the same rational number (``0.5``, ``1/2`` and
``\\frac{1}{2}`` all match), else when their normalised text is equal. Numbers are parsed with
``sympy.Rational`` from a cleaned string, never with ``sympify``/``eval`` (model output is untrusted). For
math `em` is answer accuracy and `f1` equals it: a number is right or wrong, there is no partial credit.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import sympy

from arlkit.envs.qa import normalize_answer
from arlkit.envs.tool_env import ToolEnv, env_with_instructions
from arlkit.errors import ArlkitError
from arlkit.tools.base import Tool

__all__ = ["MathScorer", "answers_match", "make_math_env", "parse_number"]

_BOXED = re.compile(r"\\boxed\{(.*)\}")
_FRAC = re.compile(r"\\[dt]?frac\{([^{}]*)\}\{([^{}]*)\}")
_NUMBER = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?(/[+-]?\d+)?$")


def parse_number(text: str) -> sympy.Rational | None:
    """The exact rational value of a plain numeric answer, or None if it is not one.

    Accepts thousands separators, a leading ``$``, a trailing ``.`` or ``%`` sign (kept as written: 50% is 50),
    ``\\boxed{}``, ``\\frac{a}{b}`` and ``a/b``.
    """
    s = text.strip()
    boxed = _BOXED.search(s)
    s = boxed.group(1) if boxed else s
    s = _FRAC.sub(r"(\1)/(\2)", s).replace("(", "").replace(")", "")
    s = re.sub(r"(?<=\d),(?=\d{3}\b)", "", s).replace(" ", "").lstrip("$").rstrip(".%")
    if not _NUMBER.match(s):
        return None
    try:
        return sympy.Rational(s)
    except (TypeError, ValueError, ZeroDivisionError):
        return None


def answers_match(pred: str | None, golds: str | Sequence[str]) -> bool:
    """True if `pred` equals any gold answer as a number, or, for non-numbers, as normalised text."""
    if pred is None:
        return False
    golds = [golds] if isinstance(golds, str) else list(golds)
    value = parse_number(pred)
    for gold in golds:
        gold_value = parse_number(str(gold))
        if value is not None and gold_value is not None:
            if value == gold_value:
                return True
        elif normalize_answer(pred) == normalize_answer(str(gold)):
            return True
    return False


class MathScorer:
    """Prompt = the row's `question`; `em` = `f1` = answer accuracy against `answer` (or `answers`)."""

    def prompt(self, row: dict) -> str:
        if not isinstance(row.get("question"), str) or row.get("answer") is None:
            raise ArlkitError(f"math row needs a 'question' string and an 'answer' (keys: {sorted(row)})")
        return row["question"]

    def score(self, answer: str | None, row: dict) -> dict[str, float]:
        golds = row.get("answers") or [str(row["answer"])]
        ok = float(answers_match(answer, golds))
        return {"em": ok, "f1": ok}


MATH_SYSTEM_PROMPT = (
    "Solve the problem. You can run Python with the python tool to compute exactly. Write the final number "
    "between <answer> and </answer>."
)


def make_math_env(tools: Sequence[Tool], **kw: Any) -> ToolEnv:
    """A :class:`ToolEnv` scored by answer accuracy; `system_prompt` defaults to MATH_SYSTEM_PROMPT plus the
    format's instructions (`system_prompt=None`: no system message)."""
    return env_with_instructions(tools, MathScorer(), MATH_SYSTEM_PROMPT, **kw)
