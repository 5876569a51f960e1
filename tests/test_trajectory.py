"""Token roles (METHODS.md §1), Trajectory bookkeeping and collate, on hand-built ids and real episodes."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from arlkit.envs.tool_env import PARSE_ERROR_NAME
from arlkit.models.tiny import demo_trajectory
from arlkit.rollout.engine import Episode, RolloutParams
from arlkit.rollout.spans import SpanScanner, SpanTags
from arlkit.trajectory import (
    PAD_ROLE,
    Role,
    Trajectory,
    TurnRecord,
    collate,
)

P, R, A, OBS, ANS = Role.PROMPT, Role.REASONING, Role.ACTION, Role.OBSERVATION, Role.ANSWER


class _Pieces:
    """A stand-in tokenizer that decodes each id to a fixed piece of text."""

    def __init__(self, pieces: dict[int, str]):
        self.pieces = pieces

    def decode(self, ids: list[int], **_: object) -> str:
        return "".join(self.pieces[i] for i in ids)


TAGS = SpanTags(call_open="<c>", call_close="</c>", answer_open="<a>", answer_close="</a>")
# One id per delimiter: <c>=10 </c>=11 <a>=12 </a>=13; words 1..7.
ONE = SpanScanner(
    _Pieces({10: "<c>", 11: "</c>", 12: "<a>", 13: "</a>"} | {i: f"w{i}" for i in range(1, 8)}), TAGS
)
# Each delimiter split in two ids (<c>=10 20, </c>=11 21, <a>=12 22, </a>=13 23), and ids that merge a
# delimiter's first characters with the text before it (30 = "w.<"), or its last with the text after (31 = ">w").
TWO = SpanScanner(
    _Pieces(
        {10: "<", 20: "c>", 11: "</", 21: "c>", 12: "<", 22: "a>", 13: "</", 23: "a>", 30: "w.<", 31: ">w"}
        | {i: f"w{i}" for i in range(1, 8)}
        | {24: "c", 25: "a"}
    ),
    TAGS,
)


# ---------------------------------------------------------------------------------------------
# Roles from text on hand-built ids
# ---------------------------------------------------------------------------------------------


def test_roles_single_token_delimiters() -> None:
    ids = [1, 2, 10, 3, 4, 11, 5, 12, 6, 13, 7]
    # reasoning "1 2", the opening <c> (the decision to act) is still REASONING, the call's content
    # and its closing </c> are ACTION, then reasoning "5", <a> is REASONING, "6 </a>" ANSWER.
    expected = [R, R, R, A, A, A, R, R, ANS, ANS, R]
    assert ONE.roles(ids) == expected


def test_roles_multi_token_delimiters_change_after_last_token() -> None:
    ids = [1, 10, 20, 3, 11, 21, 4, 12, 22, 5, 13, 23, 6]
    expected = [R, R, R, A, A, A, R, R, R, ANS, ANS, ANS, R]
    assert TWO.roles(ids) == expected


def test_roles_follow_text_when_a_delimiter_merges_with_its_neighbours() -> None:
    # "w.<" "c>" opens the call (its first id carries text before the tag); "</" "c" ">w" closes it inside an
    # id that carries text after the tag: the id after it is REASONING again.
    ids = [30, 20, 3, 11, 24, 31, 4]
    assert TWO.roles(ids) == [R, R, A, A, A, A, R]
    turn = TWO.turn(ids[:5])
    assert not turn.closed_call
    turn.push(31)
    assert turn.closed_call  # the turn ends on ">w", the id that completes "</c>"


def test_roles_partial_or_misplaced_delimiters() -> None:
    # "<" not followed by "c>" is not an opening; a close while reasoning changes nothing.
    assert TWO.roles([10, 3, 20, 11, 21, 13, 23]) == [R] * 7
    # <a> inside a tool call does not open an answer; only </c> ends the call.
    assert ONE.roles([10, 12, 6, 13, 11, 7]) == [R, A, A, A, A, R]
    # An unclosed call stays ACTION to the end; an empty sequence has no roles.
    assert ONE.roles([10, 3, 4]) == [R, A, A]
    assert ONE.roles([]) == []


def test_roles_depend_on_prefix_only() -> None:
    """ℓ(t) depends on c_<t: the roles of a prefix are the prefix of the roles."""
    ids = [1, 10, 20, 3, 11, 21, 4, 12, 22, 5, 13, 23, 6, 30, 20, 7, 11, 24, 31]
    full = TWO.roles(ids)
    for t in range(len(ids) + 1):
        assert TWO.roles(ids[:t]) == full[:t]
        assert TWO.turn(ids[:t]).role == (full[t] if t < len(ids) else R)


# ---------------------------------------------------------------------------------------------
# Real multi-turn demonstrations
# ---------------------------------------------------------------------------------------------


def _runs(roles: list[int]) -> list[int]:
    return [k for k, _ in itertools.groupby(roles)]


def test_two_hop_demo_roles_turns_and_mask(task, tokenizer, rows_by_kind) -> None:
    row = rows_by_kind["2hop"][0]
    traj = demo_trajectory(task, tokenizer, row, "all_hops")
    # 2 hops searched, then the answer: 3 turns, episode ended by the answer with the right reward.
    assert traj.n_turns == 3
    assert traj.metadata["finish_reason"] == "answer"
    assert traj.reward == 1.0  # EM 1 with valid format (Agent-R1 reward)
    # Prompt, then per call turn REASONING ("I need X.<tool_call>") and ACTION ("{...}</tool_call>"), the
    # observation, and in the answer turn REASONING ("So the answer is<answer>"), ANSWER (" X</answer>") and
    # the closing <|im_end|> back in REASONING.
    assert _runs(traj.roles) == [P, R, A, OBS, R, A, OBS, R, ANS, R]
    assert (
        len(traj.roles) == len(traj.token_ids) == len(traj.logprobs) == len(traj.turn) == len(traj.entropies)
    )

    call_open = tokenizer.convert_tokens_to_ids("<tool_call>")
    call_close = tokenizer.convert_tokens_to_ids("</tool_call>")
    answer_open = tokenizer.convert_tokens_to_ids("<answer>")
    eos = tokenizer.eos_token_id
    for rec in traj.turns:
        ids, roles = traj.token_ids[rec.start : rec.end], traj.roles[rec.start : rec.end]
        for i, r in zip(ids, roles, strict=True):
            if i == call_open:
                assert r == R
            if i == call_close:
                assert r == A
            if i == answer_open:
                assert r == R
        # each turn starts in reasoning; call turns stop at </tool_call>, the answer turn at <|im_end|>
        assert roles[0] == R
    assert [traj.token_ids[t.end - 1] for t in traj.turns] == [call_close, call_close, eos]

    answer_ids = [i for i, r in zip(traj.token_ids, traj.roles, strict=True) if r == ANS]
    assert tokenizer.decode(answer_ids) == f" {row['answer']}</answer>"
    # Roles outside the turns are PROMPT (before the first turn) and OBSERVATION (between turns).
    first = traj.turns[0].start
    assert set(traj.roles[:first]) == {P}
    for a, b in itertools.pairwise(traj.turns):
        assert set(traj.roles[a.end : b.start]) == {OBS}
        assert tokenizer.decode(traj.token_ids[a.end : b.start]).startswith("<|im_end|>\n<|im_start|>user\n")

    # turn indices: prompt 0, turn k and the observation after it k; never decreasing
    assert traj.turn == sorted(traj.turn)
    for k, rec in enumerate(traj.turns):
        assert set(traj.turn[rec.start : rec.end]) == {k}
    assert traj.turn[0] == 0 and traj.turn[-1] == 2

    batch = collate([traj], tokenizer.pad_token_id)
    gen = torch.tensor([r in (R, A, ANS) for r in traj.roles], dtype=torch.float32)
    assert torch.equal(batch.loss_mask[0], gen)
    assert int(batch.loss_mask.sum()) == traj.n_generated == sum(t.end - t.start for t in traj.turns)
    assert torch.equal(batch.roles[0], torch.tensor(traj.roles))
    assert torch.equal(batch.turn[0], torch.tensor(traj.turn))


def test_three_hop_demo_stops_at_turn_budget(task, tokenizer, rows_by_kind) -> None:
    """max_turns=3 and a 3-hop question: three calls, no room for the answer."""
    row = rows_by_kind["3hop"][0]
    traj = demo_trajectory(task, tokenizer, row, "all_hops")
    assert traj.n_turns == 3
    assert traj.metadata["finish_reason"] == "max_turns"
    # no answer, valid syntax: r = (0 + 1) / 2 - 1
    assert traj.reward == -0.5
    assert _runs(traj.roles) == [P, R, A, OBS, R, A, OBS, R, A]
    assert all(c.ok and c.name == "search" for t in traj.turns for c in t.calls)
    assert [t.calls[0].arguments["query"].strip() for t in traj.turns] == row["hops"]


def test_token_rewards_step_and_final(task, tokenizer, rows_by_kind) -> None:
    a = demo_trajectory(task, tokenizer, rows_by_kind["2hop"][0], "all_hops")
    b = demo_trajectory(task, tokenizer, rows_by_kind["1hop"][0], "none")
    a.turns = [TurnRecord(t.start, t.end, t.calls, reward=0.1 * (k + 1)) for k, t in enumerate(a.turns)]
    a.reward, b.reward = 1.0, -0.5
    a.group_id, b.group_id = 7, 3
    batch = collate([a, b], tokenizer.pad_token_id)
    rew = batch.token_rewards
    # a: step rewards 0.1, 0.2 on the last ids of turns 0 and 1; turn 2's 0.3 and the final 1.0 share the
    # last generated token (the answer turn's <|im_end|>): 1.3 there. Zero elsewhere.
    ends = [t.end - 1 for t in a.turns]
    expected = torch.zeros(batch.input_ids.shape[1])
    expected[ends[0]], expected[ends[1]], expected[ends[2]] = 0.1, 0.2, 1.3
    assert torch.allclose(rew[0], expected)
    assert ends[2] == max(i for i, r in enumerate(a.roles) if r in (R, A, ANS))
    # b: one answer turn, final reward only, on its last generated token
    assert rew[1].nonzero().flatten().tolist() == [b.turns[-1].end - 1]
    assert rew[1, b.turns[-1].end - 1].item() == -0.5
    assert torch.allclose(batch.scores, torch.tensor([1.6, -0.5]))
    # padding: b is shorter; pad id, role PAD_ROLE, no attention, no loss, no reward
    L = len(b)
    assert len(a) > L
    assert (batch.input_ids[1, L:] == tokenizer.pad_token_id).all()
    assert (batch.roles[1, L:] == PAD_ROLE).all()
    assert batch.attention_mask[1, :L].all() and not batch.attention_mask[1, L:].any()
    assert not batch.loss_mask[1, L:].any() and not rew[1, L:].any()
    # group ids become dense indices in order of first appearance
    assert batch.group_index.tolist() == [0, 1]
    # rollout logprobs: NaN (not generated / unknown) become 0
    assert not torch.isnan(batch.rollout_logprobs).any()


def test_collate_dense_groups_and_logprobs() -> None:
    def traj(gid: int, lp: float) -> Trajectory:
        t = Trajectory(group_id=gid)
        t.extend_context([1, 2], Role.PROMPT)
        t.add_turn([3, 4], [R, R], [lp, lp])
        return t

    batch = collate([traj(5, -0.1), traj(9, -0.2), traj(5, -0.3)], pad_id=0)
    assert batch.group_index.tolist() == [0, 1, 0]
    assert torch.allclose(batch.rollout_logprobs[:, 2:], torch.tensor([[-0.1] * 2, [-0.2] * 2, [-0.3] * 2]))
    assert not batch.rollout_logprobs[:, :2].any()
    with pytest.raises(ValueError):
        collate([], pad_id=0)
    with pytest.raises(ValueError):
        Trajectory().add_turn([1, 2], [R], [0.0, 0.0])


# ---------------------------------------------------------------------------------------------
# A malformed tool call inside an episode
# ---------------------------------------------------------------------------------------------


def test_malformed_call_gives_error_observation_and_continues(task, tokenizer, rows_by_kind) -> None:
    row = rows_by_kind["1hop"][0]
    ep = Episode(
        task.make_env(), tokenizer, row, group_id=0, params=RolloutParams(max_turns=3, max_length=4096)
    )
    bad = 'I need X.<tool_call>{"name": "search", "arguments": {"query": </tool_call>'
    ep.advance(tokenizer.encode(bad, add_special_tokens=False))
    traj = ep.traj
    assert not ep.done and traj.n_turns == 1
    (rec,) = traj.turns[0].calls
    assert rec.ok is False and rec.name == PARSE_ERROR_NAME
    assert "malformed tool call" in rec.error and "invalid JSON" in rec.error
    obs = traj.token_ids[traj.turns[0].end :]
    obs_text = tokenizer.decode(obs)
    assert "<tool_response>\nError: malformed tool call #1: invalid JSON" in obs_text
    assert obs_text.endswith("<|im_start|>assistant\n")
    assert set(traj.roles[traj.turns[0].end :]) == {OBS}
    # the turn keeps the env's message as the tool wrote it; the ids wrap it in the template's markers
    (message,) = traj.turns[0].observation
    assert message.startswith("Error: malformed tool call #1: invalid JSON") and message in obs_text
    assert "<|im_start|>" not in message and traj.to_dict()["turns"][0]["observation"] == [message]
    assert all(math.isnan(x) for x in traj.logprobs[traj.turns[0].end :])
    assert collate([traj], tokenizer.pad_token_id).loss_mask[0, traj.turns[0].end :].sum() == 0

    # The episode continues: the model can still answer, correctly, but the syntax error costs the reward:
    # answer_ok=1, tool_syntax_ok=0, so r = (1 + 0) / 2 - 1 = -0.5 despite EM 1.
    for text in task.demo_actions(row, "none"):
        ids = [*tokenizer.encode(text, add_special_tokens=False), tokenizer.eos_token_id]
        ep.advance(ids)
    assert ep.done and traj.n_turns == 2
    assert traj.turns[1].observation == ()  # the answer ended the episode: no observation followed
    assert traj.metadata["metrics"]["em"] == 1.0
    assert traj.metadata["metrics"]["tool_syntax_ok"] == 0.0
    assert traj.reward == -0.5
    assert _runs(traj.roles) == [P, R, A, OBS, R, ANS, R]
