"""LLM-as-judge: a scorer whose metrics add a model's verdict on the answer (`judge`), so a task can weigh it
as a named reward component (`reward_weights={"judge": 1.0}`, logged as `reward/judge`).

The judge is any chat function (messages in, reply text out): a hosted model behind an API, or a local
Hugging Face model (`models/judge.py hf_judge`). Text only, like every env: the model lives behind the function.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from arlkit.envs.tool_env import Scorer

__all__ = ["DEFAULT_TEMPLATE", "JudgeScorer", "verdict"]

ChatFn = Callable[[list[dict]], str]
DEFAULT_TEMPLATE = (
    "Question: {question}\nReference answer: {gold}\nCandidate answer: {answer}\n"
    "Is the candidate answer correct? Reply yes or no."
)


def verdict(reply: str) -> float:
    """1.0 when the judge's reply opens with "yes" (case and leading punctuation ignored), else 0.0."""
    return float(reply.strip().lstrip("\"'*.:- ").lower().startswith("yes"))


class JudgeScorer:
    """`scorer` (its prompt and metrics) plus `judge`, the verdict of `chat` on the template filled with the
    row's `question`, its gold `answer` and the episode's answer; an episode without an answer is not judged
    (verdict 0)."""

    def __init__(self, scorer: Scorer, chat: ChatFn, template: str = DEFAULT_TEMPLATE):
        self.scorer, self.chat, self.template = scorer, chat, template

    def prompt(self, row: dict) -> str:
        return self.scorer.prompt(row)

    def score(self, answer: str | None, row: dict) -> dict[str, Any]:
        scores = dict(self.scorer.score(answer, row))
        if answer is None:
            return {**scores, "judge": 0.0}
        question = row.get("question", self.scorer.prompt(row))
        text = self.template.format(question=question, gold=row.get("answer", ""), answer=answer)
        return {**scores, "judge": verdict(self.chat([{"role": "user", "content": text}]))}
