"""Chat-template rendering for rollouts: prompt ids and prefix-preserving observation ids.

Generated ids are kept as generated. Observation ids are the template's tokens for the text the template
appends after the generated text: we render the whole conversation, check that it starts with the text we
already hold (prompt + decoded generations + earlier observations), and tokenise only the new suffix.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from transformers import PreTrainedTokenizerBase

from arlkit.errors import ArlkitError


@dataclass(frozen=True)
class Segment:
    ids: list[int]
    text: str


class ChatFormatter:
    """Renders conversations with the tokenizer's chat template and the episode's tool schemas."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, tools: Sequence[dict] | None = None):
        if not getattr(tokenizer, "chat_template", None):
            raise ArlkitError("the tokenizer has no chat_template; set one or use a chat/instruct model")
        self.tokenizer = tokenizer
        self.tools = list(tools) if tools else None

    def render(self, messages: Sequence[dict[str, Any]], add_generation_prompt: bool) -> str:
        return self.tokenizer.apply_chat_template(
            list(messages), tools=self.tools, tokenize=False, add_generation_prompt=add_generation_prompt
        )

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False)

    def prompt(self, messages: Sequence[dict[str, Any]]) -> Segment:
        text = self.render(messages, add_generation_prompt=True)
        return Segment(self.encode(text), text)

    def continuation(self, context_text: str, messages: Sequence[dict[str, Any]]) -> Segment:
        """Ids of what the template appends to `context_text` to render `messages` + generation prompt.

        Raises:
            ArlkitError: the template is not prefix-preserving for this conversation.
        """
        full = self.render(messages, add_generation_prompt=True)
        if not full.startswith(context_text):
            raise ArlkitError(
                "the chat template is not prefix-preserving: rendering the conversation changed text that was "
                "already generated. Use a template that renders assistant content verbatim."
            )
        text = full[len(context_text) :]
        return Segment(self.encode(text), text)
