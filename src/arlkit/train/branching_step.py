"""Branched rollouts in the RL step (METHODS.md §5): APPO and ARPO trees grown from a step's initial rollouts,
and APPO's credit.

After the initial rollouts finish, a plan (rollout/branching.py) names branch points; each branch is a new
Episode that keeps its parent's ids up to the point exactly as generated (`Episode.branch` for APPO,
`Episode.resume_turn` for ARPO: the env state is restored from the parent's checkpoint, no tool is re-run)
and resumes the same multi-turn tool loop through the same runner. The prefix is never sampled again: the
runner's decode steps start after it. The parent's own KV cache was freed when it finished, so the branches
of one parent share one prefill: each names the sibling with the longest prefix before it as its donor and
copies the shared positions from that sibling's cache (`EngineStats.copied_tokens`).

Credit. APPO (arXiv 2606.12384): initial and branch rollouts are GRPO-normalised in separate groups, branch
rows take no loss, the mean advantage of a rollout's branches is added on its prefix, token rewards are
scaled by M_t, and the update scales advantages by the procedure-level factor (`FutureKLShaper`). ARPO
(arXiv 2507.19849): every rollout, branches included, trains in its prompt's group with the configured
advantage — the paper's soft advantage attribution (a prefix shared by k rollouts takes the loss of each).
"""

from __future__ import annotations

import itertools
import random
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import torch

from arlkit.algos.appo import dual_group_advantages, reward_scaling
from arlkit.algos.tao import tool_filter_all_failed
from arlkit.config import BranchingConfig
from arlkit.rollout.branching import BranchPoint, appo_plan, arpo_plan
from arlkit.rollout.engine import Episode, as_runner
from arlkit.train.filters import Filtered
from arlkit.train.shapers import FutureKLShaper, Shaper
from arlkit.trajectory import GENERATED_ROLES, Trajectory, loss_mask_from_roles

if TYPE_CHECKING:
    from arlkit.train.setup import Setup
    from arlkit.train.update import UpdateBatch


@dataclass(frozen=True)
class Tree:
    """A step's rollouts with their branches: each initial rollout is followed by its branches, whose
    `parent` is the parent's index in `trajectories` (what `arlkit inspect` draws as a tree)."""

    trajectories: list[Trajectory]
    is_branch: list[bool]
    scores: list[float]  # per row: the branch point's score (APPO's BS_t, ARPO's ΔH); 0 for initial rows
    filtered: Filtered  # every row with its loss weight: APPO branch rows 0, ARPO branches their parent's
    stats: dict[str, float]  # full metric names


def branch_episode(parent: Episode, point: BranchPoint, mode: str) -> Episode:
    """APPO keeps c_≤pos and regenerates the rest of that turn; ARPO regenerates the turn after a tool
    response from its start."""
    return parent.branch(point.pos) if mode == "appo" else parent.resume_turn(point.turn)


def share_branch_prefill(branches: Sequence[Episode]) -> list[Episode]:
    """Branches of one parent share their prefixes: sorted by prefix length (longest first), each names the
    sibling before it as its donor, whose prefix contains its own up to the shorter branch point — so a
    caching runner prefills the longest prefix once per parent and copies the rest. Returns the branches in
    the order to run them (a donor before its recipients: a runner copies only from a resident donor)."""
    by_parent: dict[int, list[Episode]] = defaultdict(list)
    for b in branches:
        by_parent[id(b.donor)].append(b)
    for sibs in by_parent.values():
        sibs.sort(key=lambda e: -len(e.context_ids()))
        for prev, cur in itertools.pairwise(sibs):
            cur.donor, cur.donor_len = prev, len(cur.context_ids())
    return [b for sibs in by_parent.values() for b in sibs]


def _plan(s: Setup, trajs: list[Trajectory], step: int) -> tuple[list[BranchPoint], bool]:
    """Branch points (each repeated `per_point` times) and whether APPO's Ω was degenerate."""
    cfg = s.cfg.branching
    k = cfg.branches_per_point
    if cfg.mode == "appo":
        # the rollouts were sampled by the weights about to be trained (π_cur = π_rollout): Ω ≡ 1, and
        # appo_plan falls back to entropy alone, as METHODS.md §5 prescribes
        points, scores = appo_plan(
            trajs,
            s.policy.tokenizer,
            cfg.branches // k,
            omega_gamma=cfg.omega_gamma,
            omega_clip=cfg.omega_clip,
        )
        return [p for p in points for _ in range(k)], scores.omega_degenerate
    rng = random.Random(s.cfg.train.seed * 1_000_003 + step)  # ARPO's U ~ Uniform(0, 1), reproducible
    plan = arpo_plan(
        trajs,
        cfg.branches,
        rng,
        k=cfg.arpo_k,
        p=cfg.arpo_p,
        w=cfg.arpo_w,
        beam=k,
        reading=cfg.arpo_reading,
        vocab_size=len(s.policy.tokenizer.get_vocab()),
    )
    return plan, False


def new_tokens(traj: Trajectory) -> int:
    """Generated tokens a rollout sampled itself: after its branch point (all of them for an initial one)."""
    start = 0 if traj.branch_pos is None else traj.branch_pos + 1
    return sum(1 for r in traj.roles[start:] if r in GENERATED_ROLES)


def grow_tree(s: Setup, episodes: Sequence[Episode], filtered: Filtered | None, step: int) -> Tree:
    """Plan branch points on the step's (kept) initial rollouts, run the branches, and assemble the tree.

    `episodes`: every finished initial episode of the step (its sampled tokens count in the budget);
    `filtered`: TAO-RL's verdict, whose kept trajectories are the ones branched (None: all of them).
    """
    cfg = s.cfg.branching
    trajs = filtered.trajectories if filtered else [e.traj for e in episodes]
    weights = filtered.loss_weights if filtered else [1.0] * len(trajs)
    by_traj = {id(e.traj): e for e in episodes}
    parents = [by_traj[id(t)] for t in trajs]
    t0 = time.perf_counter()
    plan, degenerate = _plan(s, trajs, step) if trajs else ([], False)
    branches = [branch_episode(parents[p.parent], p, cfg.mode) for p in plan]
    runner = as_runner(s.generator)
    if branches:
        runner.run(share_branch_prefill(branches), branches[0].params)
    kids: dict[int, list[tuple[Episode, BranchPoint]]] = defaultdict(list)
    for b, p in zip(branches, plan, strict=True):
        kids[p.parent].append((b, p))
    rank = {g: i for i, g in enumerate(dict.fromkeys(t.group_id for t in trajs))}
    # (trajectory, is_branch, score, loss weight) per row; per prompt, rollouts with branches first, so the
    # first rows (the samples the loop writes) show a tree
    rows: list[tuple[Trajectory, bool, float, float]] = []
    for i in sorted(range(len(trajs)), key=lambda i: (rank[trajs[i].group_id], not kids[i], i)):
        idx = len(rows)
        rows.append((trajs[i], False, 0.0, weights[i]))
        for b, p in kids[i]:
            b.traj.parent = idx
            rows.append((b.traj, True, p.score, 0.0 if cfg.mode == "appo" else _weight(s, b.traj)))
    stats = _stats(cfg, episodes, [b.traj for b in branches], plan, degenerate, runner)
    stats["timing_s/branch"] = time.perf_counter() - t0
    out, is_branch, scores, row_w = (list(col) for col in zip(*rows, strict=True)) if rows else ([],) * 4
    base_stats = filtered.stats if filtered else {}
    return Tree(out, is_branch, scores, Filtered(out, row_w, base_stats), stats)


def _weight(s: Setup, traj: Trajectory) -> float:
    """An ARPO branch's loss weight: TAO-RL's per-trajectory tool filter on its own calls, when configured
    (APPO branch rows take no loss at all)."""
    tao = s.cfg.tao
    if not (tao.enabled and tao.tool_filter == "all_failed_trajectory"):
        return 1.0
    calls, ok = traj.tool_calls
    w = tool_filter_all_failed(torch.tensor([calls]), torch.tensor([ok]), strength=tao.tool_filter_strength)
    return float(w[0])


def _stats(
    cfg: BranchingConfig,
    episodes: Sequence[Episode],
    branches: list[Trajectory],
    plan: list[BranchPoint],
    degenerate: bool,
    runner: object,
) -> dict[str, float]:
    branch_new = sum(new_tokens(t) for t in branches)
    stats = {
        "branch/points": float(len({(p.parent, p.pos) for p in plan})),
        "branch/rollouts": float(len(branches)),
        "branch/sampled_tokens": float(branch_new),
        "rollout/sampled_tokens": float(sum(e.traj.n_generated for e in episodes) + branch_new),
    }
    if branches:
        n = len(branches)
        stats["branch/reward"] = sum(t.total_reward for t in branches) / n
        stats["branch/em"] = sum(t.metadata.get("metrics", {}).get("em", 0.0) for t in branches) / n
        stats["branch/prefix_tokens"] = sum(t.branch_pos + 1 for t in branches) / n
    engine = getattr(runner, "stats", None)
    if engine is not None and branches:  # what the branches cost the engine: prefixes copied, not decoded
        stats["branch/prefill_tokens"] = float(engine.prefill_tokens)
        stats["branch/copied_tokens"] = float(engine.copied_tokens)
        stats["branch/decode_tokens"] = float(engine.decode_tokens)
    if cfg.mode == "appo":
        stats["appo/omega_degenerate"] = float(degenerate)
    return stats


def branch_advantages(cfg: BranchingConfig, data: UpdateBatch, tree: Tree) -> UpdateBatch:
    """APPO's credit (dual-group GRPO advantages, branch-to-prefix credit, reward scaling M_t) in place of the
    configured advantage; ARPO keeps the configured advantage over every row of a prompt's group.

    APPO's scores are the episodes' token rewards (outcome and process rewards) scaled by M_t; penalties the
    `algo` section adds to rewards (DAPO's overlong penalty, a KL penalty in the reward) are not part of them.
    """
    if cfg.mode != "appo":
        return data
    b = data.batch
    is_branch = torch.tensor(tree.is_branch)
    parent = torch.tensor(
        [t.parent if br else -1 for t, br in zip(tree.trajectories, is_branch, strict=True)]
    )
    pos = torch.tensor(
        [t.branch_pos if br else -1 for t, br in zip(tree.trajectories, is_branch, strict=True)]
    )
    points = [
        (int(parent[i]), int(pos[i]), tree.scores[i]) for i in range(len(tree.trajectories)) if is_branch[i]
    ]
    generated = loss_mask_from_roles(b.roles)  # the advantage's own mask; loss weights apply in the loss
    rewards = reward_scaling(b.token_rewards, generated, points, decay=cfg.reward_decay)
    res = dual_group_advantages(
        rewards.sum(-1),
        b.group_index,
        is_branch,
        parent,
        pos,
        generated,
        population_std=cfg.appo_reading == "code",
    )
    return replace(data, advantages=res.advantages)


def branch_shapers(cfg: BranchingConfig) -> tuple[Shaper, ...]:
    """APPO's procedure-level advantage scaling, applied per micro-batch in the update."""
    if cfg.mode != "appo" or not cfg.future_kl:
        return ()
    code = cfg.appo_reading == "code"
    return (FutureKLShaper(cfg.future_kl_gamma, cfg.future_kl_max, cfg.future_kl_dual_clip, code),)
