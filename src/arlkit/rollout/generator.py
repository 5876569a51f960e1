"""Token-in/token-out generators (DESIGN.md "Generators").

`generate(prompts, params)` takes token ids and returns the ids it sampled, with their logprobs and entropies
under the sampling distribution. It never re-tokenises. The `hf` backend runs a plain batched decode loop over
a transformers causal LM with a KV cache within one call (each turn re-prefills its context; issue 4 adds
cross-turn cache reuse).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import torch
import torch.nn.functional as F

from arlkit.errors import ArlkitError
from arlkit.models.cache_api import returned_cache, with_cache

if TYPE_CHECKING:
    from arlkit.rollout.spans import SpanScanner


@dataclass(frozen=True)
class SamplingParams:
    """How to sample one turn. temperature 0 means greedy. A turn ends after a stop id, or after the id that
    completes the closing tool-call delimiter in its text when `spans` is given (rollout/spans.py)."""

    max_new_tokens: int = 64
    temperature: float = 1.0
    top_p: float = 1.0
    stop_token_ids: tuple[int, ...] = ()
    spans: SpanScanner | None = None


@dataclass(frozen=True)
class Generation:
    ids: list[int]
    logprobs: list[float]  # log π(c_t | c_<t) under the temperature-scaled distribution
    entropies: list[float]
    finish_reason: str  # "stop" (a stop id or a closed tool call was generated, and kept) or "length"
    version: int | None = None  # the weights version that sampled it, if a shared server says (version_gate)


class Generator(Protocol):
    def generate(self, prompts: Sequence[Sequence[int]], params: SamplingParams) -> list[Generation]: ...


# else argmax picks an arbitrary token and `draw` an index past the vocabulary (an IndexError steps later)
NONFINITE_LOGITS = (
    "the policy's next-token logits are NaN or infinite: its weights have diverged (a too-high algo.lr) or "
    "the model files hold non-finite values"
)


def sample_next(
    logits: torch.Tensor, temperature: float, top_p: float, gen: torch.Generator | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sample one token per row. logits: (B, V) -> ids (B,), logprobs (B,), entropies (B,).

    The recorded logprob and entropy are those of the temperature-scaled distribution before top-p
    truncation, the same distribution the trainer recomputes (verl and vLLM do the same).

    Raises:
        ArlkitError: a row of NaN or +inf logits (diverged weights): it has no distribution to sample from.
    """
    logits = logits.float()
    if torch.isnan(logits).any() or torch.isposinf(logits).any():  # -inf is a masked token, not a fault
        raise ArlkitError(NONFINITE_LOGITS)
    if temperature <= 0:
        logp = F.log_softmax(logits, dim=-1)
        ids = logits.argmax(-1)
    else:
        logp = F.log_softmax(logits / temperature, dim=-1)
        probs = logp.exp()
        if top_p < 1.0:
            sorted_p, order = probs.sort(-1, descending=True)
            keep = sorted_p.cumsum(-1) - sorted_p < top_p  # always keeps the top token
            ids = order.gather(-1, draw(sorted_p * keep, gen)[:, None]).squeeze(-1)
        else:
            ids = draw(probs, gen)
    entropy = -(logp.exp() * logp).sum(-1)
    return ids, logp.gather(-1, ids[:, None]).squeeze(-1), entropy


def draw(weights: torch.Tensor, gen: torch.Generator | None) -> torch.Tensor:
    """One index per row of `weights` (B, V) (non-negative, any positive sum), with probability ∝ weight.

    Inverse CDF: the first index whose running sum exceeds u ~ U[0, total). The same distribution as
    `torch.multinomial(weights, 1)`, which on CPU took 1.5 ms for 64 rows × 1,024 ids and 0.26 s for
    64 × 151,936 (Qwen2's vocabulary) against 0.09 ms and 42 ms for this. A zero weight is never drawn: its
    running sum equals its predecessor's, so it is never the first to exceed u.
    """
    cdf = weights.cumsum(-1)
    total = cdf[:, -1:]
    u = torch.rand(total.shape, generator=gen, device=weights.device, dtype=weights.dtype) * total
    u = torch.minimum(u, torch.nextafter(total, torch.zeros_like(total)))  # u < total: an index exists
    return torch.searchsorted(cdf, u, right=True).squeeze(-1)


class HFGenerator:
    """Batched sampling from a transformers causal LM: left-padded prefill, then one token per step.

    Rows are processed in chunks of at most `max_batch` prompts, sorted by length to limit padding.
    """

    def __init__(self, model: torch.nn.Module, pad_id: int, max_batch: int = 256, seed: int = 0):
        self.model = model
        self.pad_id = pad_id
        self.max_batch = max_batch
        # on the model's device: sampling draws its uniforms where the probabilities are
        self.rng = torch.Generator(device=self.device).manual_seed(seed)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.no_grad()
    def generate(self, prompts: Sequence[Sequence[int]], params: SamplingParams) -> list[Generation]:
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        out: list[Generation | None] = [None] * len(prompts)
        was_training = self.model.training
        self.model.eval()
        try:
            for s in range(0, len(order), self.max_batch):
                chunk = order[s : s + self.max_batch]
                for i, g in zip(
                    chunk, self._generate_chunk([prompts[i] for i in chunk], params), strict=True
                ):
                    out[i] = g
        finally:
            self.model.train(was_training)
        return out  # type: ignore[return-value]

    def _generate_chunk(self, prompts: list[Sequence[int]], params: SamplingParams) -> list[Generation]:
        dev, B = self.device, len(prompts)
        width = max(len(p) for p in prompts)
        ids = torch.full((B, width), self.pad_id, dtype=torch.long)
        attn = torch.zeros((B, width), dtype=torch.long)
        for i, p in enumerate(prompts):  # left padding keeps every row's next token in the last column
            ids[i, width - len(p) :] = torch.tensor(list(p), dtype=torch.long)
            attn[i, width - len(p) :] = 1
        ids, attn = ids.to(dev), attn.to(dev)
        pos = (attn.cumsum(-1) - 1).clamp(min=0)
        stop = torch.tensor(sorted(set(params.stop_token_ids)) or [-1], device=dev)
        new_ids, new_lp, new_ent = [], [], []
        done = torch.zeros(B, dtype=torch.bool, device=dev)
        lengths = torch.zeros(B, dtype=torch.long, device=dev)
        turns = [params.spans.turn() for _ in range(B)] if params.spans is not None else None
        out = self.model(input_ids=ids, attention_mask=attn, position_ids=pos, use_cache=True)
        for _ in range(params.max_new_tokens):
            tok, lp, ent = sample_next(out.logits[:, -1, :], params.temperature, params.top_p, self.rng)
            tok = torch.where(done, torch.full_like(tok, self.pad_id), tok)
            new_ids.append(tok)
            new_lp.append(lp)
            new_ent.append(ent)
            lengths += (~done).long()
            done = done | torch.isin(tok, stop) | _closed_calls(turns, tok, done)
            if bool(done.all()):
                break
            attn = torch.cat([attn, torch.ones((B, 1), dtype=attn.dtype, device=dev)], dim=1)
            pos = pos[:, -1:] + 1
            out = self.model(
                input_ids=tok[:, None],
                attention_mask=attn,
                position_ids=pos,
                **with_cache(returned_cache(out)),
                use_cache=True,
            )
        gen_ids = torch.stack(new_ids, 1).cpu()  # (B, n_new)
        gen_lp, gen_ent = torch.stack(new_lp, 1).cpu(), torch.stack(new_ent, 1).cpu()
        done, lengths = done.cpu(), lengths.cpu()
        return [
            Generation(
                ids=gen_ids[i, : lengths[i]].tolist(),
                logprobs=gen_lp[i, : lengths[i]].tolist(),
                entropies=gen_ent[i, : lengths[i]].tolist(),
                finish_reason="stop" if done[i] else "length",
            )
            for i in range(B)
        ]


def _closed_calls(turns: list | None, tok: torch.Tensor, done: torch.Tensor) -> torch.Tensor:
    """(B,) rows whose turn text closed a tool call with this step's ids `tok` (B,); rows already done are
    skipped. All False without span scanning."""
    closed = torch.zeros_like(done)
    if turns is None:
        return closed
    for b, (t, d) in enumerate(zip(tok.tolist(), done.tolist(), strict=True)):
        if not d:
            turns[b].push(t)
            closed[b] = turns[b].closed_call
    return closed


class GenerateBaseline:
    """Each call runs `model.generate` on the whole left-padded context: what most RL frameworks do every turn.

    The benchmarks' baseline and a reference for the engine's greedy ids. Logprobs and entropies come from the
    raw logits `generate` returns, under `sample_next`'s convention; sampling adds no top-k (top_k=0).
    """

    def __init__(self, model: torch.nn.Module, pad_id: int):
        self.model, self.pad_id = model, pad_id

    @torch.no_grad()
    def generate(self, prompts: Sequence[Sequence[int]], params: SamplingParams) -> list[Generation]:
        dev, width = next(self.model.parameters()).device, max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)
        attn = torch.zeros_like(ids)
        for i, p in enumerate(prompts):
            ids[i, width - len(p) :], attn[i, width - len(p) :] = torch.tensor(list(p)), 1
        greedy = params.temperature <= 0
        out = self.model.generate(
            input_ids=ids.to(dev),
            attention_mask=attn.to(dev),
            do_sample=not greedy,
            temperature=None if greedy else params.temperature,
            top_p=None if greedy else params.top_p,
            top_k=None if greedy else 0,
            max_new_tokens=params.max_new_tokens,
            eos_token_id=list(params.stop_token_ids) or None,
            pad_token_id=self.pad_id,
            output_logits=True,
            return_dict_in_generate=True,
            **_stop_strings(params),
        )
        new = out.sequences[:, width:].cpu()  # (B, n_new)
        logits = torch.stack(out.logits, 1).float().cpu()  # (B, n_new, V)
        logp = F.log_softmax(logits if greedy else logits / params.temperature, dim=-1)
        lp = logp.gather(-1, new[..., None]).squeeze(-1)
        ent = -(logp.exp() * logp).sum(-1)
        gens = []
        for i, row in enumerate(new.tolist()):
            end = turn_end(row, params)
            n = end or len(row)
            gens.append(
                Generation(row[:n], lp[i, :n].tolist(), ent[i, :n].tolist(), "stop" if end else "length")
            )
        return gens


def turn_end(ids: Sequence[int], params: SamplingParams) -> int | None:
    """1 + the index of the id that ends the turn (a stop id, or the id whose text closes a tool call when
    `params.spans` is given), or None when none of `ids` does."""
    stops = set(params.stop_token_ids)
    turn = params.spans.turn() if params.spans is not None else None
    for j, t in enumerate(ids):
        if turn is not None:
            turn.push(t)
        if t in stops or (turn is not None and turn.closed_call):
            return j + 1
    return None


def _stop_strings(params: SamplingParams) -> dict:
    """`generate` keyword arguments that stop a row once its text closes a tool call."""
    if params.spans is None:
        return {}
    return {"stop_strings": [params.spans.tags.call_close], "tokenizer": params.spans.tokenizer}
