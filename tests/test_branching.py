"""Branch planning for APPO and ARPO on hand-built trajectories with known entropies and logprobs."""

from __future__ import annotations

import math
import random

import torch

from arlkit.rollout.branching import allowed_positions, appo_plan, arpo_plan, first_tokens_entropy
from arlkit.trajectory import Role, Trajectory

R, A, OBS, P = Role.REASONING, Role.ACTION, Role.OBSERVATION, Role.PROMPT


def _traj(tokenizer, words: list[str], roles: list[Role], entropies: list[float], group: int = 0,
           calls: tuple[int, ...] = ()) -> Trajectory:  # fmt: skip
    """A trajectory whose token k is the single id of words[k] (turns split at observations)."""
    t = Trajectory(group_id=group)
    ids = [tokenizer.convert_tokens_to_ids(w) for w in words]
    i = 0
    while i < len(ids):
        if roles[i] in (P, OBS):
            t.extend_context([ids[i]], roles[i])
            i += 1
            continue
        j = i
        while j < len(ids) and roles[j] not in (P, OBS):
            j += 1
        t.add_turn(ids[i:j], roles[i:j], [-1.0] * (j - i), entropies[i:j])
        if len(t.turns) - 1 in calls:
            t.set_turn_outcome([object()], 0.0)
        i = j
    return t


def test_allowed_positions_skip_punctuation_and_turn_ends(tokenizer):
    # "Ġ," is a comma token, "<|im_end|>" ends the turn: neither may be a branch point
    t = _traj(
        tokenizer, ["<|im_start|>", "Ġborn", ",", "Ġworks", "<|im_end|>"], [P, R, R, R, R], [0, 1, 1, 1, 1]
    )
    assert allowed_positions(t, tokenizer) == [False, True, False, True, False]


def test_appo_plan_degenerate_omega_picks_top_entropy_per_group(tokenizer):
    words = ["<|im_start|>", "Ġborn", "Ġworks", "Ġcity", "Ġcountry", "<|im_end|>"]
    roles = [P, R, R, R, R, R]
    a = _traj(tokenizer, words, roles, [0, 0.1, 3.0, 0.2, 2.0, 5.0], group=7)
    b = _traj(tokenizer, words, roles, [0, 2.5, 0.1, 0.1, 0.1, 9.0], group=7)
    c = _traj(tokenizer, words, roles, [0, 1.0, 0.1, 0.1, 0.1, 0.0], group=8)
    plan, scores = appo_plan([a, b, c], tokenizer, budget=2)
    assert scores.omega_degenerate  # no current logprobs: Ω ≡ 1, entropy alone
    # group 7: z(H) within each rollout over its 5 generated tokens (the turn end counts in the z-score but
    # is not a candidate): a's mean is 2.06, so only position 2 (3.0) qualifies; b's is 2.36: only 1 (2.5)
    by_group = [(p.parent, p.pos) for p in plan]
    assert by_group[:2] == sorted(by_group[:2], key=lambda x: -float(scores.score[x[0], x[1]]))
    assert set(by_group[:2]) == {(0, 2), (1, 1)} and by_group[2] == (2, 1)
    assert all(p.turn == 0 for p in plan)


def test_appo_plan_with_current_logprobs_needs_positive_omega(tokenizer):
    words = ["<|im_start|>", "Ġborn", "Ġworks", "Ġcity", "Ġcountry", "<|im_end|>"]
    t = _traj(tokenizer, words, [P, R, R, R, R, R], [0, 0.1, 3.0, 0.2, 2.9, 0.0])
    # Δ = cur - rollout (rollout logprob -1 everywhere) = -0.2 at position 2: suffix sums -0.2, -0.2, 0, 0, 0
    # over positions 1..5 -> Ω = 0.819, 0.819, 1, 1, 1 -> z(Ω) > 0 at 3, 4, 5
    cur = torch.tensor([[0.0, -1.0, -1.2, -1.0, -1.0, -1.0]])
    plan, scores = appo_plan([t], tokenizer, budget=3, current_logprobs=cur)
    assert not scores.omega_degenerate
    # z(H) > 0 at 2 (H 3.0) and 4 (H 2.9): the policy drifted away at 2, so only 4 qualifies
    assert [(p.parent, p.pos) for p in plan] == [(0, 4)]


def test_arpo_plan_branches_when_entropy_rises_after_a_tool_response(tokenizer):
    words = ["<|im_start|>", "Ġborn", "Ġworks", "<|im_end|>", "Ġcity", "Ġcountry", "Ġborn"]
    roles = [P, R, A, OBS, R, R, R]
    # turn 0 (a call): H_initial = mean(1, 1) = 1; turn 1 after the response: mean(3, 3) = 3 -> ΔH = 2
    hot = _traj(tokenizer, words, roles, [0, 1, 1, 0, 3, 3, 3], calls=(0,))
    calm = _traj(tokenizer, words, roles, [0, 1, 1, 0, 0.2, 0.2, 0.2], calls=(0,))  # ΔH = -0.8
    assert math.isclose(first_tokens_entropy(hot, 1, 2), 3.0)
    # U - 0.2·2 <= 0.5 for any U < 0.9; U - 0.2·(-0.8) <= 0.5 only for U <= 0.34
    rng_vals = [0.85, 0.6]
    rng = random.Random()
    rng.random = lambda: rng_vals.pop(0)  # type: ignore[method-assign]
    plan = arpo_plan([hot, calm], budget=8, rng=rng, k=2, beam=2)
    assert [(p.parent, p.turn, p.pos) for p in plan] == [
        (0, 1, 3),
        (0, 1, 3),
    ]  # resumes after the observation
    assert math.isclose(plan[0].score, 2.0)
    # the budget caps the branches of a prompt
    rng2 = random.Random(0)
    assert len(arpo_plan([hot] * 5, budget=3, rng=rng2, k=2, beam=2, p=1.0)) == 3
