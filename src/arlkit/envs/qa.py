"""Multi-hop QA: SQuAD answer normalisation, EM/F1, process rewards and a QA ToolEnv factory."""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from arlkit.envs.tool_env import ToolEnv, env_with_instructions
from arlkit.errors import ArlkitError

if TYPE_CHECKING:
    from arlkit.tools.base import Tool

__all__ = [
    "QA_SYSTEM_PROMPT",
    "QAScorer",
    "exact_match",
    "gold_retrieval_reward",
    "make_qa_env",
    "normalize_answer",
    "token_f1",
    "tool_success_reward",
]

QA_SYSTEM_PROMPT = (
    "Answer the user's question. Use the tools to look up facts you are not sure about; questions may "
    "need several lookups. Keep the final answer short (a name, a date, a number, a few words)."
)

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = set(string.punctuation)


def normalize_answer(s: str) -> str:
    """SQuAD normalisation: lowercase, drop punctuation and articles, collapse whitespace."""
    s = "".join(ch for ch in s.lower() if ch not in _PUNCT)
    return " ".join(_ARTICLES.sub(" ", s).split())


def _gold_list(golds: str | Sequence[str]) -> list[str]:
    return [golds] if isinstance(golds, str) else [str(g) for g in golds]


def exact_match(pred: str | None, golds: str | Sequence[str]) -> float:
    """1.0 if the normalised prediction equals any normalised gold answer."""
    if pred is None:
        return 0.0
    p = normalize_answer(pred)
    return float(any(p == normalize_answer(g) for g in _gold_list(golds)))


def _f1(pred_tokens: list[str], gold_tokens: list[str]) -> float:
    if not pred_tokens or not gold_tokens:
        return float(pred_tokens == gold_tokens)  # SQuAD v2: both empty counts as a match
    same = sum((Counter(pred_tokens) & Counter(gold_tokens)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred_tokens), same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def token_f1(pred: str | None, golds: str | Sequence[str]) -> float:
    """Best SQuAD token F1 of the prediction over the gold answers."""
    if pred is None:
        return 0.0
    p = normalize_answer(pred).split()
    return max((_f1(p, normalize_answer(g).split()) for g in _gold_list(golds)), default=0.0)


class QAScorer:
    """Prompt = the row's ``question``; gold answers = ``answer`` plus ``answers``/``answer_aliases``."""

    def __init__(self, prompt_template: str = "{question}") -> None:
        self.prompt_template = prompt_template

    @staticmethod
    def golds(row: dict) -> list[str]:
        golds: list[str] = []
        for key in ("answer", "answers", "answer_aliases"):
            value = row.get(key)
            if value is None:
                continue
            golds += _gold_list(value) if isinstance(value, (str, list, tuple)) else [str(value)]
        if not golds:
            raise ArlkitError(f"QA row has no gold answer: give it an 'answer' field (keys: {sorted(row)})")
        return golds

    def prompt(self, row: dict) -> str:
        if not isinstance(row.get("question"), str):
            raise ArlkitError(f"QA row needs a 'question' string (keys: {sorted(row)})")
        self.golds(row)  # fail at reset, not after a whole episode
        return self.prompt_template.format(question=row["question"])

    def score(self, answer: str | None, row: dict) -> dict[str, float]:
        golds = self.golds(row)
        return {"em": exact_match(answer, golds), "f1": token_f1(answer, golds)}


def gold_retrieval_reward(bonus: float) -> Callable[[dict, Any, str], float]:
    """Process reward (Agent-R1 arXiv 2511.14460): `bonus` for a successful call whose observation contains
    a gold supporting document, recognised by its ``Title:`` line. Gold titles come from the row's
    ``support_titles`` (or ``hops`` in toywiki)."""

    def reward(row: dict, record: Any, text: str) -> float:
        titles = row.get("support_titles") or row.get("hops") or []
        return bonus if record.ok and any(f"{t}:" in text for t in titles) else 0.0

    return reward


def tool_success_reward(bonus: float) -> Callable[[dict, Any, str], float]:
    """Process reward: `bonus` for every tool call that ran successfully."""
    return lambda row, record, text: bonus if record.ok else 0.0


def make_qa_env(tools: Sequence[Tool], fmt: Any = "hermes", max_turns: int = 4, **kw: Any) -> ToolEnv:
    """A :class:`ToolEnv` scored with :class:`QAScorer`.

    Without a ``system_prompt`` keyword the system message is :data:`QA_SYSTEM_PROMPT` followed by
    the format's instructions; ``system_prompt=None`` means no system message.
    """
    scorer = kw.pop("scorer", None) or QAScorer()
    return env_with_instructions(tools, scorer, QA_SYSTEM_PROMPT, fmt=fmt, max_turns=max_turns, **kw)
