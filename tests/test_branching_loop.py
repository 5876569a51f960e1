"""APPO and ARPO branching in the real loop on the tiny fixture model: branches share their parent's prefix ids
exactly, the engine never samples a prefix again (decode steps = newly sampled tokens; sibling prefixes are
copied, not prefilled), the tree is written for `arlkit inspect`, APPO's credit in the loop equals an
independent computation on the same rows, and whole steps run with finite losses."""

from __future__ import annotations

import json
import math
import statistics

import pytest
import torch
from conftest import tiny_run_overrides
from rich.console import Console

from arlkit.config import load_config
from arlkit.errors import ArlkitError
from arlkit.rollout.continuous import ContinuousEngine
from arlkit.train.branching_step import branch_advantages, grow_tree, new_tokens
from arlkit.train.loop import collect, setup, train_step
from arlkit.train.update import UpdateBatch
from arlkit.trajectory import GENERATED_ROLES, collate

ALWAYS_ARPO = ("branching.arpo_p=1.0", "branching.arpo_w=0.0")  # U − 0·ΔH ≤ 1: every eligible turn branches


def _setup(tiny, tmp_path, *extra: str):
    cfg = load_config(
        None, tiny_run_overrides(tiny.sft_dir, tmp_path / "run", "train.seed=3", "rollout.n=4", *extra)
    )
    return setup(cfg, Console(quiet=True))


def _check_tree(tree, mode: str) -> None:
    """Every branch keeps its parent's ids, roles and recorded logprobs up to branch_pos, verbatim."""
    rows = tree.trajectories
    branches = [(i, t) for i, (t, b) in enumerate(zip(rows, tree.is_branch, strict=True)) if b]
    assert branches
    for i, b in branches:
        parent = rows[b.parent]
        assert b.parent < i and not tree.is_branch[b.parent] and parent.group_id == b.group_id
        n = b.branch_pos + 1
        assert b.token_ids[:n] == parent.token_ids[:n] and b.roles[:n] == parent.roles[:n]
        lp, parent_lp = torch.tensor(b.logprobs[:n]), torch.tensor(parent.logprobs[:n])
        assert torch.equal(lp.isnan(), parent_lp.isnan()) and torch.equal(
            lp.nan_to_num(), parent_lp.nan_to_num()
        )
        assert b.metadata.get("finish_reason")  # ran to the end through the tool loop
        if mode == "appo":  # the last shared token is a generated token of the parent, not a turn's last
            assert parent.roles[b.branch_pos] in GENERATED_ROLES
            assert b.branch_pos + 1 < parent.turns[parent.turn[b.branch_pos]].end
        else:  # ARPO: the branch regenerates a whole turn that follows a tool response
            k = next(k for k, rec in enumerate(parent.turns) if rec.start == n)
            assert k >= 1 and parent.turns[k - 1].calls


@pytest.mark.parametrize("mode,extra", [("appo", ()), ("arpo", ALWAYS_ARPO)], ids=["appo", "arpo"])
def test_branches_share_the_prefix_and_are_not_resampled(tiny, tmp_path, mode, extra) -> None:
    s = _setup(tiny, tmp_path, f"branching.mode={mode}", "branching.branches=4", *extra)
    assert isinstance(s.generator, ContinuousEngine)
    got = collect(s)
    tree = grow_tree(s, got.episodes, None, step=1)
    _check_tree(tree, mode)
    branches = [t for t, b in zip(tree.trajectories, tree.is_branch, strict=True) if b]
    groups = {t.group_id for t in got.trajectories}
    per_group = {g: sum(1 for t in branches if t.group_id == g) for g in groups}
    assert all(n <= 4 for n in per_group.values())  # the per-prompt budget
    if mode == "appo":  # top-B points per prompt, one rollout each (plenty of candidates on real rollouts)
        assert list(per_group.values()) == [4] * len(groups)
        assert tree.stats["appo/omega_degenerate"] == 1.0  # one policy snapshot: entropy alone, said so
    # the engine's counts for the branch run: every decode step sampled a token after a branch point, so
    # no prefix token was sampled again ...
    st = s.generator.stats
    new = sum(new_tokens(t) for t in branches)
    assert st.decode_tokens == new == tree.stats["branch/sampled_tokens"]
    assert new < sum(t.n_generated for t in branches)
    # ... every fed position was prefilled, copied from a sibling's cache or decoded, exactly once ...
    assert st.prefill_tokens + st.copied_tokens + st.decode_tokens == sum(len(t) - 1 for t in branches)
    # ... and a parent's branches prefill its prefix once: sorted longest first, each later sibling copies
    # all of its own context but the last id (the decode step feeds it) from the sibling before it
    by_parent: dict[int, list[int]] = {}
    for t in branches:
        by_parent.setdefault(t.parent, []).append(t.branch_pos)
    copied = sum(sum(sorted(ps, reverse=True)[1:]) for ps in by_parent.values())
    assert st.copied_tokens == copied > 0
    assert tree.stats["rollout/sampled_tokens"] == sum(t.n_generated for t in got.trajectories) + new


def test_appo_credit_in_the_loop_matches_a_hand_computation(tiny, tmp_path) -> None:
    s = _setup(tiny, tmp_path, "branching.mode=appo", "branching.branches=3")
    tree = grow_tree(s, collect(s).episodes, None, step=1)
    rows = tree.trajectories
    batch = collate(rows, s.policy.tokenizer.pad_token_id)
    data = branch_advantages(s.cfg.branching, UpdateBatch(batch, torch.zeros_like(batch.loss_mask)), tree)
    eps = 1e-6

    def grpo(i: int, branch: bool) -> float:  # GRPO within (prompt, initial-or-branch)
        peers = [
            t.total_reward
            for t, b in zip(rows, tree.is_branch, strict=True)
            if t.group_id == rows[i].group_id and b == branch
        ]
        sd = statistics.stdev(peers) if len(peers) > 1 else 0.0
        return (rows[i].total_reward - statistics.mean(peers)) / (sd + eps)

    for i, t in enumerate(rows):
        adv = data.advantages[i]
        gen = [p for p, r in enumerate(t.roles) if r in GENERATED_ROLES]
        if tree.is_branch[i]:
            assert not adv.any()  # branch rows carry no advantage (and take no loss)
            continue
        kids = [j for j, b in enumerate(rows) if tree.is_branch[j] and b.parent == i]
        for p in gen:
            covering = [grpo(j, True) for j in kids if rows[j].branch_pos >= p]
            want = grpo(i, False) + (statistics.mean(covering) if covering else 0.0)
            assert adv[p].item() == pytest.approx(want, abs=1e-4), (i, p)
        assert not adv[[p for p in range(len(adv)) if p not in set(gen)]].any()
    assert tree.filtered.loss_weights == [0.0 if b else 1.0 for b in tree.is_branch]


@pytest.mark.parametrize(
    "mode,extra",
    [("appo", ()), ("arpo", (*ALWAYS_ARPO, "tao.tool_filter=all_failed_trajectory"))],
    ids=["appo", "arpo"],
)
def test_branching_train_steps_run_finite_and_write_the_tree(tiny, tmp_path, mode, extra) -> None:
    s = _setup(
        tiny, tmp_path, f"branching.mode={mode}", "branching.branches=2", "tao.enabled=true",
        "tao.group_filter=false", "tao.tool_filter=none", "train.n_samples=12", *extra,
    )  # fmt: skip
    before = {k: v.detach().clone() for k, v in s.policy.model.named_parameters()}
    for step in (1, 2):
        m = train_step(s, step)
        bad = {k: v for k, v in m.items() if isinstance(v, float) and not math.isfinite(v)}
        assert not bad, bad
        assert m["branch/rollouts"] > 0 and "tao/shaped_token_share" in m  # TAO-RL composes with branching
        assert m["rollout/sampled_tokens"] > m["branch/sampled_tokens"] > 0
        if mode == "appo":
            assert m["appo/omega_degenerate"] == 1.0 and "appo/future_kl_f_mean" in m
    assert any(not torch.equal(before[k], v) for k, v in s.policy.model.named_parameters())
    rows = [json.loads(x) for x in (s.run.path / "samples.jsonl").read_text().splitlines()]
    kids = [r for r in rows if r["parent"] is not None]
    assert kids  # the written samples hold a tree: each branch's parent is a row of the same step
    for r in kids:
        parent = next(p for p in rows if p["step"] == r["step"] and p["index"] == r["parent"])
        assert r["token_ids"][: r["branch_pos"] + 1] == parent["token_ids"][: r["branch_pos"] + 1]


def test_branching_config_checks_and_budget_stop(tiny, tmp_path) -> None:
    with pytest.raises(ArlkitError, match=r"algo.advantage.*'appo'"):
        load_config(None, ["branching.mode=appo", "algo.advantage=rloo"])
    with pytest.raises(ArlkitError, match=r"branching\.mode"):
        load_config(None, ["branching.mode=tree"])
    cfg = load_config(None, ["branching.mode=arpo"])
    assert (
        cfg.branching.branches_per_point == 2
        and load_config(None, ["branching.mode=appo"]).branching.branches_per_point == 1
    )


def test_sampled_token_budget_stops_the_run(tiny, tmp_path) -> None:
    """`train.sampled_token_budget` ends the run after the step that spends it (equal generation budgets)."""
    from arlkit.train.loop import train

    cfg = load_config(
        None,
        tiny_run_overrides(
            tiny.sft_dir, tmp_path / "run", "train.steps=5", "train.sampled_token_budget=1", "task.n_eval=0",
            "train.n_samples=0", "branching.mode=appo", "branching.branches=2",
        ),
    )  # fmt: skip
    summary = train(cfg, Console(quiet=True))
    records = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "rollout/sampled_tokens" in r]
    assert summary["steps"] == 1 and len(steps) == 1
    assert summary["sampled_tokens"] == steps[0]["rollout/sampled_tokens"] > 0


def test_tao_appo_and_dart_compose_in_one_step(tiny, tmp_path) -> None:
    """The three methods in one run: DART's routed engine generates initial rollouts and APPO branches, TAO-RL
    filters and shapes, APPO credits; only DART's adapters move."""
    s = _setup(
        tiny, tmp_path, "model.routing.kind=dart", "algo.lr=1e-2", "branching.mode=appo", "branching.branches=2",
        "tao.enabled=true", "tao.group_filter=false", "tao.tool_filter=none", "tao.alpha=0.5",
    )  # fmt: skip
    before = {k: v.detach().clone() for k, v in s.policy.model.named_parameters()}
    m = train_step(s, 1)
    assert all(math.isfinite(v) for v in m.values() if isinstance(v, float))
    assert m["branch/rollouts"] > 0 and m["appo/omega_degenerate"] == 1.0 and "tao/mean_abs_shift" in m
    moved = {k for k, v in s.policy.model.named_parameters() if not torch.equal(before[k], v)}
    assert moved and all(".lora_" in k for k in moved)
