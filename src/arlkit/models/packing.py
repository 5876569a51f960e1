"""Padding-free training forwards: sequences packed into rows, positions restarting at 0 for each sequence.

A right-padded batch of B sequences (longest T) spends B × T tokens of compute; RL trajectories vary a lot in
length (one turn or four, short or long observations), so much of that is padding. Packing places the
sequences end to end in rows of width T (first-fit decreasing) and passes position_ids that restart per
sequence and no attention mask: transformers then builds a block-diagonal causal mask from the positions
(sdpa, eager) or uses its variable-length kernel (flash-attention), so no token sees another sequence.
Outputs are unpacked to the padded layout, so `packed_token_logprobs` is a drop-in for `token_logprobs`.

Micro-batches are sized by a token budget (`plan_micro_batches`), which is what bounds activation memory,
rather than by a row count alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from arlkit.models.forward import TokenStats, shift_values, token_logprobs
from arlkit.models.head import DEFAULT_CHUNK, next_token_stats
from arlkit.models.routing import routing


@dataclass(frozen=True)
class PackedLayout:
    """Where the real tokens of a (B, T) right-padded batch sit in R packed rows of width W.

    `src` and `dst` are flat indices of the same N real tokens: into the padded (B*T) and packed (R*W) layouts.
    """

    input_ids: torch.Tensor  # (R, W) long, pad_id after the last sequence of a row
    position_ids: torch.Tensor  # (R, W) long, 0.. within each sequence (and within the row's tail)
    src: torch.Tensor  # (N,) long
    dst: torch.Tensor  # (N,) long
    batch_shape: tuple[int, int]  # (B, T)

    def unpack(self, packed: torch.Tensor) -> torch.Tensor:
        """(R, W, ...) per packed position -> (B, T, ...) per padded position, zero on padding."""
        R, W = self.input_ids.shape
        flat = packed.reshape(R * W, *packed.shape[2:])
        out = flat.new_zeros((self.batch_shape[0] * self.batch_shape[1], *packed.shape[2:]))
        out[self.src] = flat[self.dst]
        return out.reshape(*self.batch_shape, *packed.shape[2:])

    def pack_like(self, padded: torch.Tensor, fill: int = 0) -> torch.Tensor:
        """(B, T) per padded position -> (R, W) per packed position (`fill` where no token is): the inverse."""
        out = padded.new_full(self.input_ids.shape, fill).reshape(-1)
        out[self.dst] = padded.reshape(-1)[self.src]
        return out.reshape(self.input_ids.shape)


def first_fit_rows(lengths: Sequence[int], width: int) -> list[list[int]]:
    """Sequence indices per row: longest first, each into the first row it fits (first-fit decreasing)."""
    rows: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        r = next((r for r, free in enumerate(room) if free >= lengths[i]), None)
        if r is None:
            rows.append([])
            room.append(width)
            r = len(rows) - 1
        rows[r].append(i)
        room[r] -= lengths[i]
    return rows


def pack(input_ids: torch.Tensor, attention_mask: torch.Tensor, pad_id: int = 0) -> PackedLayout:
    """Pack a right-padded batch (B, T) into rows of width T. attention_mask: 1 on real tokens, a prefix."""
    B, T = input_ids.shape
    lengths = attention_mask.sum(-1).tolist()
    rows = first_fit_rows(lengths, T)
    ids = torch.full((len(rows), T), pad_id, dtype=input_ids.dtype, device=input_ids.device)
    pos = torch.zeros((len(rows), T), dtype=torch.long, device=input_ids.device)
    src, dst = [], []
    for r, seqs in enumerate(rows):
        off = 0
        for b in seqs:
            n = lengths[b]
            ids[r, off : off + n] = input_ids[b, :n]
            pos[r, off : off + n] = torch.arange(n)
            src.append(torch.arange(n) + b * T)
            dst.append(torch.arange(n) + r * T + off)
            off += n
        pos[r, off:] = torch.arange(T - off)  # the tail is a sequence of its own: it sees nobody else
    dev = input_ids.device
    return PackedLayout(ids, pos, torch.cat(src).to(dev), torch.cat(dst).to(dev), (B, T))


def packed_token_logprobs(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    temperature: float = 1.0,
    with_entropy: bool = False,
    with_hidden: bool = False,
    routes: torch.Tensor | None = None,
    chunk: int | None = DEFAULT_CHUNK,
) -> TokenStats:
    """`token_logprobs` computed on packed rows: the same (B, T) outputs, token-aligned (entry t is about
    token t predicted from c_<t; entry 0 and padding are 0), for fewer forward tokens. `hidden` is per
    position, as `token_logprobs` gives it; `routes` (B, T) are packed alongside the ids; `chunk`: tokens per
    output-head chunk (models/head.py), None: full logits at once."""
    lay = pack(input_ids, attention_mask)
    with routing(model, None if routes is None else lay.pack_like(routes.to(input_ids.device))):
        out = next_token_stats(
            model,
            lay.input_ids,
            temperature,
            with_entropy,
            with_hidden,
            chunk,
            position_ids=lay.position_ids,
        )
    # (R, W-1): position t predicts packed position t+1; wrong at sequence ends, which unpack onto padding
    stats = [out.logprobs] if out.entropies is None else [out.logprobs, out.entropies]
    aligned = []
    for x in stats:
        at_pos = lay.unpack(F.pad(x, (0, 1)))  # (B, T): entry t predicts token t+1 (garbage at each end)
        shifted = F.pad(at_pos[:, :-1], (1, 0))  # entry t is about token t; a sequence's end falls on padding
        aligned.append(shifted * attention_mask)
    hidden = None if out.hidden is None else lay.unpack(out.hidden)
    return TokenStats(aligned[0], aligned[1] if with_entropy else None, hidden)


def plan_micro_batches(
    lengths: Sequence[int], max_tokens: int, max_rows: int, packed: bool
) -> list[list[int]]:
    """Split sequence indices into micro-batches of at most `max_rows` sequences and `max_tokens` tokens.

    Tokens are what a forward computes: the sum of lengths when packed, rows × the longest when padded. Longest
    first, so a padded micro-batch holds similar lengths (length bucketing). A sequence longer than the budget
    gets a micro-batch of its own.
    """
    out: list[list[int]] = []
    cur: list[int] = []
    used = 0
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        cost = used + lengths[i] if packed else (len(cur) + 1) * lengths[cur[0] if cur else i]
        if cur and (cost > max_tokens or len(cur) == max_rows):
            out.append(cur)
            cur, used = [], 0
        cur.append(i)
        used += lengths[i]
    return [*out, cur] if cur else out


@dataclass(frozen=True)
class MicroBatching:
    """How the trainer cuts a batch into forwards: at most `rows` sequences and `tokens` forward tokens each
    (`plan_micro_batches`), computed packed or padded. The one place the update's forwards go through."""

    rows: int
    tokens: int | None = None  # None: `rows` sequences per forward, in batch order
    packed: bool = False
    chunk: int | None = DEFAULT_CHUNK  # tokens per output-head chunk (models/head.py); None: full logits

    def split(self, index: torch.Tensor, attention_mask: torch.Tensor) -> list[torch.Tensor]:
        """Micro-batches of the batch rows `index` (B',) long; attention_mask: the whole batch's (B, T)."""
        if self.tokens is None:
            return list(index.split(self.rows))  # rows only, in the given order
        lengths = attention_mask[index].sum(-1).tolist()
        return [index[plan] for plan in plan_micro_batches(lengths, self.tokens, self.rows, self.packed)]

    def token_stats(
        self,
        model: torch.nn.Module,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        temperature: float = 1.0,
        with_entropy: bool = False,
        with_hidden: bool = False,
        routes: torch.Tensor | None = None,
    ) -> TokenStats:
        fn = packed_token_logprobs if self.packed else token_logprobs
        return fn(
            model, input_ids, attention_mask, temperature, with_entropy, with_hidden, routes, self.chunk
        )

    def critic_values(self, critic: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        """(B, T) aligned values of a separate critic (`SeparateCritic`: a token-classification model)."""
        if not self.packed:
            return critic(input_ids, attention_mask)
        lay = pack(input_ids, attention_mask)
        out = critic.model(input_ids=lay.input_ids, position_ids=lay.position_ids, use_cache=False)
        return shift_values(lay.unpack(out.logits.float().squeeze(-1)))
