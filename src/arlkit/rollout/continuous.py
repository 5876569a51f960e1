"""The continuous-batching rollout engine: each episode's KV cache is kept across its turns (issue 4).

A fixed pool of S slots (rollout/kv_cache.py) holds one episode each. One engine step:
1. admits waiting episodes into free slots; an episode whose donor is resident copies the donor's cached
   prefix instead of prefilling it (the n samples of a GRPO group share one prompt prefill; forks and branches
   share their parent's context);
2. prefills each row's uncached ids except the last: a new prompt, or the observation appended after a tool
   call, never the history;
3. runs one batched decode step over all rows, each at its own position, then samples, applies top-p and
   detects stops on tensors. The logprob and entropy of each sampled id come from this same step (no extra
   pass), under `sample_next`'s convention.
A row that stops (a stop id, its turn budget, the episode's length budget) hands its turn to `Episode.advance`,
which steps the env: the episode stays in its slot (only the new observation is prefilled next step) or frees
the slot for the next waiting episode (continuous batching).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from arlkit.errors import ArlkitError
from arlkit.models.cache_api import with_cache
from arlkit.models.routing import is_routed, route_of_role, routing
from arlkit.rollout.cuda_graph import StaticDecoder
from arlkit.rollout.engine import Episode, RolloutParams, SpawnFn, advance_all, sampling_params
from arlkit.rollout.generator import SamplingParams, sample_next
from arlkit.rollout.kv_cache import Layout, SlotCache, model_dims, window_mask
from arlkit.rollout.spans import TurnText

DECODE_MODES = ("dynamic", "static", "cuda_graph")


@dataclass
class EngineStats:
    """Token counts of the last run: what the model computed, and what it did not have to."""

    prefill_tokens: int = 0  # ids prefilled (prompts, observations)
    prefill_padded: int = 0  # the same with the padding of their forwards
    decode_tokens: int = 0  # ids fed by decode steps (one per resident episode per step)
    copied_tokens: int = 0  # positions copied from donors instead of prefilled
    steps: int = 0  # decode steps
    # wall seconds in model forwards (on a GPU, synchronised after each); the rest of a run is sampling,
    # bookkeeping and the env
    prefill_s: float = 0.0
    decode_s: float = 0.0


@dataclass
class _Slot:
    """One resident episode. Invariant between steps: ids[:n_cached] are in the cache, n_cached < len(ids)."""

    ep: Episode
    ids: list[int]  # the episode's context, then this turn's generated ids
    n_cached: int
    budget: int  # ids this turn may generate
    donor: Episode | None = None  # a pending prefix copy
    gen_ids: list[int] = field(default_factory=list)
    gen_lp: list[float] = field(default_factory=list)
    gen_ent: list[float] = field(default_factory=list)
    roles: list[int] | None = None  # routed policies: the role of each of `ids`, then of the next id
    turn: TurnText | None = None  # this turn's text so far: the next id's role, whether a call closed


def _new_slot(ep: Episode, n_cached: int, donor: Episode | None, routed: bool) -> _Slot:
    ids = ep.context_ids()
    turn = ep.spans.turn(ep.partial.ids)
    roles = None
    if routed:  # a role depends on the ids before it only: the next id's is known before it is sampled
        roles = [*ep.traj.roles, *(int(r) for r in ep.spans.roles(ep.partial.ids)), int(turn.role)]
    return _Slot(ep, ids, n_cached, ep.turn_budget(), donor, roles=roles, turn=turn)


class ContinuousEngine:
    """EpisodeRunner over a transformers causal LM (or a peft wrapper of one) with per-episode KV caches.

    max_slots: episodes resident at once, i.e. rows per decode forward. prefill_tokens: padded tokens per
    prefill forward (bounds activation memory). The cache (per layer: slots × positions × kv heads × head
    dim) is allocated on first use, kept for later runs, and grows its positions by doubling as episodes
    lengthen, up to max_length + 1, so short episodes do not pay for the longest possible one.
    decode: "dynamic" (rows and key window sized to the live episodes), "static" (all slots, all positions:
    fixed shapes) or "cuda_graph" (static, captured once and replayed; GPU only, see rollout/cuda_graph.py).
    answer_adapter: for a role-routed policy (models/routing.py), which adapter computes ANSWER tokens.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        pad_id: int,
        max_slots: int = 64,
        seed: int = 0,
        prefill_tokens: int = 8192,
        decode: str = "dynamic",
        answer_adapter: str = "reasoning",
    ):
        if decode not in DECODE_MODES:
            raise ArlkitError(f"engine decode mode {decode!r} is not one of {', '.join(DECODE_MODES)}")
        self.decode_mode = decode
        # a role-routed policy (DART, 2-Agent): each position runs the adapter of the next token's role
        self.routed, self.answer_adapter = is_routed(model), answer_adapter
        self.static: StaticDecoder | None = None
        self.model, self.pad_id = model, pad_id
        self.max_slots, self.prefill_tokens = max_slots, prefill_tokens
        self.n_layers, self.n_kv_heads, self.head_dim = model_dims(model)
        emb = model.get_input_embeddings().weight
        self.device, self.dtype = emb.device, emb.dtype
        self.rng = torch.Generator(device=self.device).manual_seed(seed)
        self.cache: SlotCache | None = None
        self.stats = EngineStats()

    @torch.no_grad()
    def run(
        self, episodes: Sequence[Episode], params: RolloutParams, spawn: SpawnFn | None = None
    ) -> list[Episode]:
        out = list(episodes)
        waiting = deque(e for e in out if not e.done)
        self.stats = EngineStats()
        if not waiting:
            return out
        sampling = sampling_params(params, waiting[0])
        stop_ids = torch.tensor(sorted(set(sampling.stop_token_ids)) or [-1], device=self.device)
        n_slots = min(self.max_slots, len(waiting))
        self._ensure_cache(n_slots, params.max_length + 1)
        if self.static is not None:  # fixed shapes: every slot of the (possibly larger, reused) pool is a row
            n_slots = self.cache.n_slots
        slots: list[_Slot | None] = [None] * n_slots
        was_training = self.model.training
        self.model.eval()
        try:
            while waiting or any(s is not None for s in slots):
                self._admit(slots, waiting)
                self._ensure_positions(slots, params.max_length + 1)
                self._prefill(slots)
                ended = self._decode(slots, sampling, stop_ids)
                # the envs of turns that ended together step at once (their tool calls overlap)
                advance_all(
                    [(slots[i].ep, slots[i].gen_ids, slots[i].gen_lp, slots[i].gen_ent, r) for i, r in ended]
                )
                for i, _ in ended:
                    forks = self._end_turn(slots, i, spawn)
                    waiting.extendleft(reversed(forks))  # first, while their donor is resident
                    out += forks
                if not waiting:
                    self._compact(slots)
        finally:
            self.model.train(was_training)
        return out

    def _ensure_cache(self, n_slots: int, limit: int) -> None:
        c = self.cache
        if (
            c is None
            or c.n_slots < n_slots
            or c.keys[0].dtype != self.dtype
            or c.keys[0].device != self.device
        ):
            self.cache = self.static = None  # free the old pool (and its graph) before allocating the new one
            self.cache = SlotCache(
                self.n_layers,
                n_slots,
                min(limit, 257),
                self.n_kv_heads,
                self.head_dim,
                self.dtype,
                self.device,
            )
            self._new_static_decoder()

    def _ensure_positions(self, slots: list[_Slot | None], limit: int) -> None:
        """Room for every resident episode to finish its turn, plus a scratch position for idle rows."""
        need = max((len(s.ids) + s.budget + 1 for s in slots if s is not None), default=0)
        if need > self.cache.max_len:
            self.cache.grow(min(limit, max(need, 2 * self.cache.max_len)))
            self._new_static_decoder()  # its buffers and graph are sized to the old pool

    def _new_static_decoder(self) -> None:
        if self.decode_mode != "dynamic":
            self.static = StaticDecoder(self.model, self.cache, capture=self.decode_mode == "cuda_graph")

    def _compact(self, slots: list[_Slot | None]) -> None:
        """Move the highest resident episodes down into free slots, so that the decode rows are a prefix of
        the pool, read through a view: no idle rows computed, no windows gathered (the tail of a run)."""
        while True:
            live = [i for i, s in enumerate(slots) if s is not None]
            free = [i for i, s in enumerate(slots[: live[-1]] if live else []) if s is None]
            if not free:
                return
            src, dst = live[-1], free[0]
            self.cache.copy_prefix(src, dst, slots[src].n_cached)
            slots[dst], slots[src] = slots[src], None

    def _admit(self, slots: list[_Slot | None], waiting: deque[Episode]) -> None:
        resident = {id(s.ep) for s in slots if s is not None}
        for i in range(len(slots)):
            while slots[i] is None and waiting:
                ep = waiting.popleft()
                if ep.turn_budget() <= 0:
                    ep.finish("context_length")  # a prompt that leaves no room to generate
                    continue
                donor = ep.donor if ep.donor is not None and id(ep.donor) in resident else None
                slots[i] = _new_slot(ep, 0, donor, self.routed)
                resident.add(id(ep))

    def _prefill(self, slots: list[_Slot | None]) -> None:
        """Cache every row's ids but the last. Rows waiting for a donor go after the donors' own prefill."""
        self._prefill_rows(slots, [i for i, s in enumerate(slots) if s and not s.donor and _uncached(s)])
        self._copy_from_donors(slots)
        self._prefill_rows(slots, [i for i, s in enumerate(slots) if s and _uncached(s)])

    def _copy_from_donors(self, slots: list[_Slot | None]) -> None:
        where = {id(s.ep): i for i, s in enumerate(slots) if s is not None}
        pending = [i for i, s in enumerate(slots) if s is not None and s.donor is not None]
        while pending:  # a donor may itself wait for a copy (a fork of a fork): copy in dependency order
            ready = [i for i in pending if slots[where[id(slots[i].donor)]].donor is None]
            for i in ready or pending:  # donors are admitted before their recipients: no cycles
                s = slots[i]
                j = where[id(s.donor)]
                n = _shared_prefix(
                    s.ids, slots[j].ids, min(slots[j].n_cached, s.ep.donor_len, len(s.ids) - 1)
                )
                self.cache.copy_prefix(j, i, n)
                self.stats.copied_tokens += n
                s.n_cached, s.donor = n, None
            pending = [i for i in pending if slots[i].donor is not None]

    def _prefill_rows(self, slots: list[_Slot | None], rows: list[int]) -> None:
        rows = sorted(rows, key=lambda i: -_uncached(slots[i]))  # similar lengths share a forward
        while rows:
            width = _uncached(slots[rows[0]])
            n = max(1, min(len(rows), self.prefill_tokens // width))
            self._prefill_group(slots, rows[:n], width)
            rows = rows[n:]

    def _prefill_group(self, slots: list[_Slot | None], rows: list[int], width: int) -> None:
        B = len(rows)
        self.stats.prefill_tokens += sum(_uncached(slots[i]) for i in rows)
        self.stats.prefill_padded += B * width
        ids = torch.full((B, width), self.pad_id, dtype=torch.long)
        valid = torch.zeros((B, width), dtype=torch.bool)
        start = torch.tensor([slots[i].n_cached for i in rows])
        for b, i in enumerate(rows):
            s = slots[i]
            new = s.ids[s.n_cached : len(s.ids) - 1]
            ids[b, : len(new)] = torch.tensor(new)
            valid[b, : len(new)] = True
        pos = start[:, None] + torch.arange(width)[None, :]  # (B, width)
        slot_t = torch.tensor(rows)
        dev = self.device
        layout = Layout(
            slots=slot_t.to(dev),
            write_slot=slot_t[:, None].expand(B, width)[valid].to(dev),
            write_pos=pos[valid].to(dev),
            valid=valid.to(dev),
            kv_len=max(len(slots[i].ids) - 1 for i in rows),
            rows_are_prefix=False,
        )
        routes = None
        if self.routed:  # position p computes the logits of id p + 1
            routes = torch.zeros((B, width), dtype=torch.long)
            for b, i in enumerate(rows):
                s = slots[i]
                nxt = s.roles[s.n_cached + 1 : len(s.ids)]
                routes[b, : len(nxt)] = torch.tensor([route_of_role(r, self.answer_adapter) for r in nxt])
        start = time.perf_counter()
        self._forward(ids.to(dev), pos.to(dev), layout, routes)
        self.stats.prefill_s += self._elapsed(start)
        for i in rows:
            slots[i].n_cached = len(slots[i].ids) - 1

    def _forward(
        self, ids: torch.Tensor, pos: torch.Tensor, layout: Layout, routes: torch.Tensor | None
    ) -> torch.Tensor:
        """One model forward over the pool; returns the last position's logits (B, V)."""
        self.cache.bind(layout)
        with routing(self.model, None if routes is None else routes.to(ids.device)):
            out = self.model(
                input_ids=ids,
                position_ids=pos,
                attention_mask=window_mask(pos, layout.kv_len, self.dtype),
                **with_cache(self.cache),
                use_cache=True,
                logits_to_keep=1,
            )
        return out.logits[:, -1]

    def _decode(
        self, slots: list[_Slot | None], sampling: SamplingParams, stop_ids: torch.Tensor
    ) -> list[tuple[int, str]]:
        """One token for every resident episode; returns (slot, finish reason) of the rows whose turn ended."""
        live = [i for i, s in enumerate(slots) if s is not None]
        if not live:
            return []
        # live rows are slots 0..n-1 (admission fills the lowest free slots, `_compact` closes holes), read
        # through a view; otherwise their windows are gathered. The static step runs every slot.
        rows = list(range(len(slots))) if self.static is not None else live
        self.stats.decode_tokens += len(live)
        self.stats.steps += 1
        start = time.perf_counter()
        logits = self._decode_logits(slots, rows)
        self.stats.decode_s += self._elapsed(start)
        tok, lp, ent = sample_next(logits, sampling.temperature, sampling.top_p, self.rng)
        left = [slots[i].budget - len(slots[i].gen_ids) if slots[i] else 1 for i in rows]
        stopped = torch.isin(tok, stop_ids)
        ended = stopped | (torch.tensor(left, device=self.device) <= 1)  # this id took the turn's last place
        tok_l, lp_l, ent_l, stop_l, end_l = (x.tolist() for x in (tok, lp, ent, stopped, ended))
        finished = []
        for b, i in enumerate(rows):
            s = slots[i]
            if s is None:
                continue
            s.ids.append(tok_l[b])
            s.n_cached += 1
            s.gen_ids.append(tok_l[b])
            s.gen_lp.append(lp_l[b])
            s.gen_ent.append(ent_l[b])
            s.turn.push(tok_l[b])
            if s.roles is not None:
                s.roles.append(int(s.turn.role))  # the next id's role
            if stop_l[b] or s.turn.closed_call:
                finished.append((i, "stop"))
            elif end_l[b]:
                finished.append((i, "length"))
        return finished

    def _elapsed(self, start: float) -> float:
        if self.device.type == "cuda":  # the step's .tolist() waits for the GPU anyway: this costs nothing
            torch.cuda.synchronize(self.device)
        return time.perf_counter() - start

    def _decode_logits(self, slots: list[_Slot | None], rows: list[int]) -> torch.Tensor:
        """Logits (B, V) of the next id of each row: its last id, fed at its own position. Idle rows (static
        step only) feed a pad id at position 0 and write to the scratch position."""
        ids = [slots[i].ids[-1] if slots[i] else self.pad_id for i in rows]
        pos = [slots[i].n_cached if slots[i] else 0 for i in rows]
        write = [slots[i].n_cached if slots[i] else self.cache.max_len - 1 for i in rows]
        routes = None
        if self.routed:
            nxt = [slots[i].roles[-1] if slots[i] else 0 for i in rows]
            routes = torch.tensor([[route_of_role(r, self.answer_adapter)] for r in nxt])  # (B, 1)
        if self.static is not None:
            return self.static(ids, pos, write, routes)
        dev = self.device
        slot_t = torch.tensor(rows, device=dev)
        prefix = rows[-1] == len(rows) - 1
        layout = Layout(slot_t, slot_t, torch.tensor(write, device=dev), None, max(pos) + 1, prefix)
        pos_t = torch.tensor(pos, device=dev)[:, None]  # (B, 1)
        return self._forward(torch.tensor(ids, device=dev)[:, None], pos_t, layout, routes)

    def _end_turn(self, slots: list[_Slot | None], i: int, spawn: SpawnFn | None) -> list[Episode]:
        """After the env stepped (`advance_all`): keep the slot for the next turn or free it. Returns spawned
        episodes."""
        s = slots[i]
        ep = s.ep
        if ep.done:
            slots[i] = None
            return []
        ids = ep.context_ids()
        assert ids[: s.n_cached] == s.ids[: s.n_cached], "an episode's context changed under its cache"
        slots[i] = _new_slot(ep, s.n_cached, None, self.routed)
        return spawn(ep) if spawn is not None else []


def _uncached(s: _Slot) -> int:
    """Ids to prefill: all uncached ids but the last, which the decode step feeds."""
    return len(s.ids) - 1 - s.n_cached


def _shared_prefix(a: list[int], b: list[int], n: int) -> int:
    """Length of the common prefix of a and b, at most n."""
    if a[:n] == b[:n]:
        return n
    k = 0
    while k < n and a[k] == b[k]:
        k += 1
    return k
