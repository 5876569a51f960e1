"""A byte-level BPE tokenizer for the tiny policy, trained with `tokenizers`, that reloads as Qwen2Tokenizer.

Pitfall (DESIGN.md): for `model_type: qwen2`, `AutoTokenizer.from_pretrained` builds `Qwen2Tokenizer` and
replaces the pre-tokenizer stored in tokenizer.json with Qwen2's. We therefore train with exactly Qwen2's
pre-tokenisation (its split regex, then byte-level without prefix space) and NFC normalisation, so the
reloaded tokenizer gives the same ids; tests check it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import AddedToken, PreTrainedTokenizerBase
from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX, Qwen2Tokenizer

from arlkit.models.chat_template import CHAT_TEMPLATE, DELIMITER_TOKENS, TURN_TOKENS


def _qwen2_pipeline(tok: Tokenizer) -> None:
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()


def train_tokenizer(
    corpus: Iterable[str],
    vocab_size: int = 1024,
    extra_delimiters: Sequence[str] = (),
    delimiters: Sequence[str] = DELIMITER_TOKENS,
    chat_template: str = CHAT_TEMPLATE,
) -> PreTrainedTokenizerBase:
    """Train a byte-level BPE on `corpus` and wrap it as a Qwen2Tokenizer with ChatML tokens and template.

    `delimiters` + `extra_delimiters` (a task's own tool tags, e.g. `<sql>`) become single non-special added
    tokens, as Qwen2.5 adds `<tool_call>`; a Qwen2.5-like test tokenizer passes Qwen's own list and template.
    """
    bpe = Tokenizer(models.BPE())
    _qwen2_pipeline(bpe)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(TURN_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(corpus, trainer=trainer)
    state = bpe.model
    vocab = bpe.get_vocab()
    merges = _merges(bpe)
    tok = Qwen2Tokenizer(
        vocab=vocab,
        merges=merges,
        unk_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
    )
    del state
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>"]})
    added = [*delimiters, *(t for t in extra_delimiters if t not in delimiters)]
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in added])
    tok.chat_template = chat_template
    tok.model_max_length = 4096
    return tok


def _merges(bpe: Tokenizer) -> list[tuple[str, str]]:
    import json

    model = json.loads(bpe.to_str())["model"]
    return [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model["merges"]]
