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

from arlkit.models.forward import TokenStats


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
) -> TokenStats:
    """`token_logprobs` computed on packed rows: the same (B, T) outputs, token-aligned (entry t is about
    token t predicted from c_<t; entry 0 and padding are 0), for fewer forward tokens."""
    lay = pack(input_ids, attention_mask)
    logits = model(input_ids=lay.input_ids, position_ids=lay.position_ids, use_cache=False).logits
    logits = logits[:, :-1].float()  # (R, W-1, V): position t predicts packed position t+1
    if temperature > 0 and temperature != 1.0:
        logits = logits / temperature
    logp_all = F.log_softmax(logits, dim=-1)
    nxt = logp_all.gather(-1, lay.input_ids[:, 1:, None]).squeeze(-1)  # (R, W-1); wrong at sequence ends
    stats = [nxt]
    if with_entropy:
        stats.append(-(logp_all.exp() * logp_all).sum(-1))
    aligned = []
    for x in stats:
        at_pos = lay.unpack(F.pad(x, (0, 1)))  # (B, T): entry t predicts token t+1 (garbage at each end)
        shifted = F.pad(at_pos[:, :-1], (1, 0))  # entry t is about token t; a sequence's end falls on padding
        aligned.append(shifted * attention_mask)
    return TokenStats(logprobs=aligned[0], entropies=aligned[1] if with_entropy else None)


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
