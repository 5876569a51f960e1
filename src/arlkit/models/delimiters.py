"""Adding the tool-call and answer delimiters to a pretrained tokenizer as single tokens.

A pretrained BPE splits `<search>` into `<` `search` `>` and merges its first characters with the text before
it (`.<`). arlkit's roles and stops are exact either way (rollout/spans.py reads them from text), but one id
per delimiter makes the decision to act a single, learnable choice, keeps demonstrations and rollouts on the
same ids around a tag, and is how Qwen2.5 ships `<tool_call>`. Off by default (`model.add_delimiter_tokens`):
it changes the vocabulary, so checkpoints carry the grown tokenizer and embeddings.

Initialisation: each new row (input embedding, and output row when the head is not tied) is the mean of the
rows of the ids the tokenizer split the delimiter into before, so the model starts from what the tag already
meant to it rather than from noise (the "average of the sub-word embeddings" rule; Hewitt, 2021, "Initializing
New Word Embeddings for Pretrained Language Models", argues for means over random vectors).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import PreTrainedTokenizerBase

from arlkit.models.chat_template import DELIMITER_TOKENS


def split_delimiters(
    tokenizer: PreTrainedTokenizerBase, delimiters: Sequence[str] = DELIMITER_TOKENS
) -> dict:
    """{delimiter: the ids it encodes to} for the delimiters this tokenizer splits into several ids."""
    out = {}
    for d in delimiters:
        ids = tokenizer.encode(d, add_special_tokens=False)
        if len(ids) != 1:
            out[d] = ids
    return out


@torch.no_grad()
def add_delimiter_tokens(
    model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, delimiters: Sequence[str] = DELIMITER_TOKENS
) -> list[int]:
    """Add each delimiter the tokenizer splits as one (non-special) token, grow the embeddings and initialise
    the new rows as described above. Returns the new ids (none when every delimiter is one id already, so a
    checkpoint saved after this reloads unchanged)."""
    split = split_delimiters(tokenizer, delimiters)
    if not split:
        return []
    tokenizer.add_tokens(list(split), special_tokens=False)
    old = model.get_input_embeddings().weight.shape[0]
    if len(tokenizer) > old:
        model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    emb = model.get_input_embeddings().weight
    head = model.get_output_embeddings()
    untied = head is not None and head.weight.data_ptr() != emb.data_ptr()
    new_ids = []
    for d, pieces in split.items():
        i = tokenizer.convert_tokens_to_ids(d)
        emb[i] = emb[pieces].mean(0)
        if untied:
            head.weight[i] = head.weight[pieces].mean(0)
        new_ids.append(i)
    return new_ids
