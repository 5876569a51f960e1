"""The authors'-code readings of APPO, ARPO and TAO-RL (issue 20, "Methods") against the authors' formulas,
computed independently on the same inputs. Each `_authors_*` function is written here from the released code
(AMAP-ML/APPO `core_algos.compute_policy_loss_future_kl` and `ray_trainer.compute_appo_advantage`;
dongguanting/ARPO `vllm_rollout_with_tools.py`; WhyNot22222/TAO-RL `dp_actor.py` and `tao_rl_ray_trainer.py`),
not imported: none of them is a dependency."""

from __future__ import annotations

import math
import random
from collections import Counter, defaultdict

import pytest
import torch

from arlkit.algos.appo import dual_group_advantages, future_kl_scaling
from arlkit.algos.tao import entropy_shaping
from arlkit.config import TaoConfig, load_config
from arlkit.errors import ArlkitError
from arlkit.rollout.branching import arpo_plan, segment_entropy
from arlkit.train.filters import tao_filter
from arlkit.trajectory import Role, Trajectory, TurnRecord

# ---------------------------------------------------------------- APPO future KL (FIPO), the code's order


def _authors_future_kl(old_lp, lp, adv, mask, *, decay_rate=64.0, clip_c=3.0, safety=6.0, eps=0.2):
    """compute_policy_loss_future_kl with APPO's script settings (future_kl_clip_high_only, weight 1): the
    weighted advantages and the rows kept by its sequence filter."""
    nkl = torch.clamp(lp - old_lp, min=-20.0, max=20.0)
    ratio = torch.exp(nkl)
    part = (nkl <= math.log(clip_c)).float()
    kl_resp = nkl * mask * part
    gamma = 2.0 ** (-1.0 / decay_rate)
    L = lp.shape[1]
    dist = torch.arange(L)[None, :] - torch.arange(L)[:, None]  # (L, L): j − i
    decay = gamma ** dist.clamp(min=0).float() * (dist >= 0).float()
    future = kl_resp @ decay.t()
    w = torch.clamp(torch.exp(future), min=1.0, max=1.0 + eps)
    w = torch.where((adv < 0) & (ratio > safety), torch.clamp(w, min=0.8, max=1.0), w)
    wadv = adv * (1.0 + w)
    pg1 = -wadv * ratio
    pg2 = -wadv * torch.clamp(ratio, 1 - 0.2, 1 + 0.28)
    clip1 = torch.maximum(pg1, pg2)
    pg3 = -wadv * clip_c
    lower = (adv < 0) & (clip1 > pg3) & mask.bool()
    return wadv, lower.sum(1) <= 1


def _future_kl_inputs(seed: int):
    g = torch.Generator().manual_seed(seed)
    B, T = 6, 24
    old = -torch.rand(B, T, generator=g) * 3
    lp = old + torch.randn(B, T, generator=g) * 0.8  # ratios from ~0.1 to ~10: every rule fires
    lp[0, 3], lp[1, 5] = old[0, 3] + 2.5, old[1, 5] + 2.2  # ratio ≈ 12 and 9 on rows with A < 0
    lp[0, 7] = old[0, 7] + 1.95  # ratio ≈ 7, between the safety threshold and the exclusion
    adv = torch.randn(B, 1, generator=g).expand(B, T).clone()
    adv[0], adv[1] = -1.0, -0.5
    return old, lp, adv, torch.ones(B, T)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_future_kl_code_order_matches_the_authors(seed):
    old, lp, adv, mask = _future_kl_inputs(seed)
    ours = future_kl_scaling(adv, lp, old, mask, gamma=2 ** (-1 / 64), neg_after_clip=True)
    wadv, keep = _authors_future_kl(old, lp, adv, mask)
    assert (ours.advantages - wadv).abs().max() < 1e-5
    assert torch.equal(ours.row_keep, keep)
    big_neg = (adv < 0) & ((lp - old).exp() > 6)
    assert big_neg.any() and torch.all(ours.f[big_neg] == 1.0)  # the code's f ≡ 1 there


def test_future_kl_paper_order_differs_only_on_big_ratio_negative_tokens():
    old, lp, adv, mask = _future_kl_inputs(0)
    paper = future_kl_scaling(adv, lp, old, mask)
    code = future_kl_scaling(adv, lp, old, mask, neg_after_clip=True)
    big_neg = (adv < 0) & ((lp - old).exp() > 6)
    assert torch.equal(paper.f[~big_neg], code.f[~big_neg])
    assert torch.all(paper.f[big_neg] <= 1.0) and torch.all(paper.f[big_neg] >= 0.8)
    assert (paper.f[big_neg] < 1.0).any()  # the paper's reading can scale them below 1


# ---------------------------------------------------------------- APPO dual-group credit, population std


def _authors_appo_advantage(scores, uid, kind, branch_meta, mask):
    """compute_appo_advantage: groups keyed (uid, kind), population std, 1e-6; branch credit on the parent's
    prefix [0, split] averaged over the branches covering each position."""
    B, T = mask.shape
    base = torch.zeros(B)
    groups = defaultdict(list)
    for i in range(B):
        groups[(uid[i], kind[i])].append(i)
    for idx in groups.values():
        s = scores[idx]
        std = s.std(correction=0) if len(idx) > 1 else torch.tensor(0.0)
        for i in idx:
            base[i] = (scores[i] - s.mean()) / (std + 1e-6)
    adv = torch.zeros(B, T)
    init = torch.tensor([k == "init" for k in kind])
    adv[init] = base[init][:, None] * mask[init]
    aux_sum, aux_n = torch.zeros(B, T), torch.zeros(B, T)
    for orig, row, split in branch_meta:
        end = min(split + 1, T)
        aux_sum[orig, :end] += base[row] * mask[orig, :end]
        aux_n[orig, :end] += mask[orig, :end]
    adv = torch.where(aux_n > 0, adv + aux_sum / aux_n.clamp(min=1.0), adv)
    return adv * mask


@pytest.mark.parametrize("seed", [0, 1])
def test_dual_group_population_std_matches_the_authors(seed):
    g = torch.Generator().manual_seed(seed)
    # 2 prompts × (8 initial + 4 branches); each branch's parent is an initial rollout of its prompt
    groups = torch.tensor([0] * 12 + [1] * 12)
    is_branch = torch.tensor(([False] * 8 + [True] * 4) * 2)
    B, T = len(groups), 15
    mask = (torch.rand(B, T, generator=g) > 0.3).float()  # observation holes
    scores = torch.randint(0, 2, (B,), generator=g).float() + torch.rand(B, generator=g) * 0.1
    parent = torch.full((B,), -1)
    pos = torch.full((B,), -1)
    for b in is_branch.nonzero().flatten().tolist():
        base = 0 if b < 12 else 12
        parent[b] = base + int(torch.randint(0, 8, (1,), generator=g))
        pos[b] = int(torch.randint(1, T - 1, (1,), generator=g))
    ours = dual_group_advantages(scores, groups, is_branch, parent, pos, mask, population_std=True)
    kind = ["branch" if x else "init" for x in is_branch.tolist()]
    meta = [(int(parent[b]), b, int(pos[b])) for b in is_branch.nonzero().flatten().tolist()]
    theirs = _authors_appo_advantage(scores, groups.tolist(), kind, meta, mask)
    assert (ours.advantages - theirs).abs().max() < 1e-5
    # the default (unbiased, GRPO's std) is √(7/8) of it on rows without credit at n = 8
    unbiased = dual_group_advantages(scores, groups, is_branch, parent, pos, mask)
    plain = [i for i in range(8) if i not in parent.tolist()]
    ratio = unbiased.advantages[plain].sum() / ours.advantages[plain].sum()
    assert float(ratio) == pytest.approx(math.sqrt(7 / 8), rel=1e-4)


# ---------------------------------------------------------------- ARPO: entropy of the calling segment, one per point

V = 50  # vocabulary of the synthetic distributions


def _top10_logprobs(g: torch.Generator) -> list[float]:
    """vLLM's logprobs=10 for one token: the 10 largest log-probabilities of a random distribution."""
    logp = torch.log_softmax(torch.randn(V, generator=g) * 2, -1)
    return logp.topk(10).values.tolist()


def _authors_calc_entropy(logprobs: list[float]) -> float:
    return -sum(math.exp(lp) * lp for lp in logprobs)


def _rollout(g: torch.Generator, group: int, turn_lengths: list[int], calls: list[bool]):
    """A trajectory whose per-token entropy is the top-10 −Σ p·log p of each sampled token, with the
    authors' per-segment logprob lists (first ≤ 20 tokens) alongside."""
    t = Trajectory(group_id=group)
    t.extend_context([1, 2], Role.PROMPT)
    segments = []
    for n, call in zip(turn_lengths, calls, strict=True):
        lps = [_top10_logprobs(g) for _ in range(n)]
        ent = [_authors_calc_entropy(x) for x in lps]
        t.add_turn([5] * n, [Role.REASONING] * n, [-1.0] * n, ent)
        t.set_turn_outcome(["call"] if call else [], 0.0)
        segments.append([lp for x in lps[:20] for lp in x])
        if call:
            t.extend_context([7, 7, 7], Role.OBSERVATION)
    return t, segments


def test_arpo_code_reading_matches_the_authors_branch_rule():
    g = torch.Generator().manual_seed(0)
    shapes = [
        ([25, 12, 30, 8], [True, True, True, False]),
        ([5, 40, 9], [True, True, False]),
        ([18], [False]),
    ]
    trajs, segs = [], []
    for i in range(6):
        lengths, calls = shapes[i % 3]
        t, s = _rollout(g, i // 3, lengths, calls)
        trajs.append(t)
        segs.append(s)
    for t, s in zip(trajs, segs, strict=True):  # the entropy of each segment, as the authors compute it
        for j, seg in enumerate(s):
            ours = segment_entropy(t, j, 20, V)
            assert abs(ours - _authors_calc_entropy(seg) / math.log(V)) < 1e-5

    draws = random.Random(7)
    ours = arpo_plan(trajs, 100, draws, k=20, p=0.5, w=0.2, beam=1, reading="code", vocab_size=V)
    # the authors' rule, with the same uniform draws in the same order: after segment j made a call, one
    # branch (beam_size − 1 = 1) when clamp(U − w·(H_j − H_0), 0, 1) ≤ p; it resumes at segment j + 1
    draws = random.Random(7)
    fired = []
    for i, (t, s) in enumerate(zip(trajs, segs, strict=True)):
        h = [_authors_calc_entropy(seg) / math.log(V) for seg in s]
        for j in range(len(s) - 1):
            if not t.turns[j].calls:
                continue
            prob = min(1.0, max(0.0, draws.random() - 0.2 * (h[j] - h[0])))
            if prob <= 0.5:
                fired.append((i, j + 1))
    assert fired and sorted((p.parent, p.turn) for p in ours) == sorted(fired)
    assert max(Counter((p.parent, p.turn) for p in ours).values()) == 1


def test_arpo_reading_sets_rollouts_per_point():
    paper = load_config(None, ["branching.mode=arpo"]).branching
    code = load_config(None, ["branching.mode=arpo", "branching.arpo_reading=code"]).branching
    assert (paper.branches_per_point, code.branches_per_point) == (2, 1)
    override = load_config(
        None, ["branching.mode=arpo", "branching.arpo_reading=code", "branching.per_point=3"]
    )
    assert override.branching.branches_per_point == 3


# ---------------------------------------------------------------- TAO-RL: shaping fallback, overlong, refill


def _authors_shaping(adv, entropy, response_mask, post_tool_mask, coeff):
    """dp_actor.py, AEPO branch with tool_aware_only: post-tool tokens, or every token when the micro-batch
    has none; population std of the valid entropies (+1e-8)."""
    ce = post_tool_mask * response_mask
    if ce.sum() == 0:
        ce = response_mask
    valid = entropy[response_mask.bool()]
    mean = valid.mean()
    std = valid.std(unbiased=False) if valid.numel() > 1 else torch.tensor(1.0)
    z = (entropy - mean) / (std + 1e-8)
    out = adv.clone()
    out[ce.bool()] = adv[ce.bool()] * (1.0 + coeff * z[ce.bool()])
    return out


@pytest.mark.parametrize("with_post_tool", [False, True])
def test_tao_shaping_fallback_matches_the_authors(with_post_tool):
    g = torch.Generator().manual_seed(3)
    B, T = 4, 12
    mask = (torch.rand(B, T, generator=g) > 0.3).float()
    adv = torch.randn(B, 1, generator=g).expand(B, T) * mask
    ent = torch.rand(B, T, generator=g) * 3
    post = torch.zeros(B, T)
    if with_post_tool:
        post[1:3, 6:] = 1.0
    ours = entropy_shaping(adv, ent, mask, post * mask, alpha=0.5, fallback_all=True)
    theirs = _authors_shaping(adv, ent, mask, post, 0.5)
    assert ((ours - theirs) * mask).abs().max() < 1e-5
    paper = entropy_shaping(adv, ent, mask, post * mask, alpha=0.5)
    assert torch.equal(paper, adv) != with_post_tool  # the paper shapes nothing without post-tool tokens


def _traj(group: int, reward: float, overlong: bool) -> Trajectory:
    t = Trajectory(group_id=group, reward=float(reward))
    t.extend_context([1], Role.PROMPT)
    t.add_turn([5, 6], [Role.REASONING] * 2, [-1.0, -1.0], finish_reason="length" if overlong else "stop")
    return t


def _authors_released_rules(trajs: list[Trajectory], want: int, min_valid: int):
    """tao_rl_ray_trainer.py with rejection_sample and remove_clip: groups with reward std < 1e-3, all
    overlong, or fewer than min_valid not overlong are dropped; overlong rows of kept groups are masked out;
    the batch is repeated 1 + (want − 1)//k times (each copy new groups) and `want` groups are kept."""
    by = defaultdict(list)
    for t in trajs:
        by[t.group_id].append(t)
    kept = []
    for g, ts in by.items():
        r = torch.tensor([t.reward for t in ts])
        n_over = sum(t.overlong for t in ts)
        if r.std().item() < 1e-3 or n_over == len(ts) or len(ts) - n_over < min_valid:
            continue
        kept.append(g)
    replicas = 1 + (want - 1) // len(kept)
    copies = [g for _ in range(replicas) for g in kept][:want]  # which copies survive is random there
    masked = {g: [t.overlong for t in by[g]] for g in kept}
    return Counter(copies), masked


def test_tao_code_reading_zeroes_overlong_and_refills_like_the_authors():
    rows = []
    for g, rewards, over in [
        (0, [1, 0, 1, 0, 1], [False, True, False, False, False]),  # kept, one overlong row
        (1, [1, 1, 1, 1, 1], [False] * 5),  # rewards all equal: dropped
        (2, [0, 1, 0, 0, 0], [True, True, False, False, True]),  # 2 valid < 4: dropped
        (3, [0, 1, 1, 0, 0], [False] * 5),  # kept
        (4, [1, 0, 0, 0, 1], [True] * 5),  # all overlong (std > 0): dropped
    ]:
        rows += [_traj(g, r, o) for r, o in zip(rewards, over, strict=True)]
    cfg = TaoConfig(enabled=True, tool_filter="none", reading="code")
    out = tao_filter(rows, cfg)
    counts, masked = _authors_released_rules(rows, want=5, min_valid=4)
    # each kept group appears ⌊5/2⌋ or ⌈5/2⌉ times, as a group of its own
    source = {id(r.token_ids): r.group_id for r in rows}  # a copy shares its original's token list
    origin = {t.group_id: source[id(t.token_ids)] for t in out.trajectories}
    ours = Counter(origin.values())
    assert sum(ours.values()) == sum(counts.values()) == 5
    assert sorted(ours.values()) == sorted(counts.values()) and set(ours) == set(counts)
    for t, w in zip(out.trajectories, out.loss_weights, strict=True):
        assert w == (0.0 if t.overlong else 1.0)
    assert sum(masked[0]) == 1 and out.stats["zeroed_overlong"] == 1.0 and out.stats["repeated_groups"] == 3.0
    paper = tao_filter(rows, TaoConfig(enabled=True, tool_filter="none"))
    assert len({t.group_id for t in paper.trajectories}) == 2 and all(w == 1.0 for w in paper.loss_weights)


def test_tao_code_reading_refuses_what_cannot_follow_copied_groups():
    with pytest.raises(ArlkitError, match=r"tao\.reading"):
        load_config(None, ["tao.enabled=true", "tao.reading=code", "branching.mode=arpo"])
    with pytest.raises(ArlkitError, match=r"tao\.reading"):
        load_config(None, ["tao.enabled=true", "tao.reading=code", "algo.advantage=remax"])


def test_readings_default_to_the_paper():
    cfg = load_config(None, [])
    assert (cfg.branching.appo_reading, cfg.branching.arpo_reading, cfg.tao.reading) == ("paper",) * 3


def test_turn_record_is_what_the_synthetic_rollouts_use():
    t, _ = _rollout(torch.Generator().manual_seed(0), 0, [3, 2], [True, False])
    assert t.turns[0] == TurnRecord(start=2, end=5, calls=("call",))


@pytest.mark.parametrize(
    "extra",
    [
        ("branching.mode=appo", "branching.branches=2", "branching.appo_reading=code"),
        (
            "branching.mode=arpo",
            "branching.branches=4",
            "branching.arpo_reading=code",
            "branching.arpo_p=1.0",
        ),
        ("tao.enabled=true", "tao.reading=code", "tao.tool_filter=none", "tao.min_valid=1", "tao.alpha=0.5"),
    ],
    ids=["appo", "arpo", "tao"],
)
def test_code_readings_train_a_step_on_the_tiny_model(tiny, tmp_path, extra):
    from conftest import tiny_run_overrides
    from rich.console import Console

    from arlkit.train.loop import setup, train_step

    overrides = tiny_run_overrides(tiny.sft_dir, tmp_path / "run", "train.seed=3", "rollout.n=4", *extra)
    s = setup(load_config(None, overrides), Console(quiet=True))
    m = train_step(s, 1)
    assert not {k: v for k, v in m.items() if isinstance(v, float) and not math.isfinite(v)}
    if "branching.mode=appo" in extra:
        assert "appo/future_kl_f_mean" in m and m["branch/rollouts"] > 0
    elif "branching.mode=arpo" in extra:  # one rollout per fired point (beam_size − 1)
        assert m["branch/rollouts"] == m["branch/points"] > 0
    else:
        assert m["tao/groups_kept"] + m["tao/repeated_groups"] == m["tao/groups_in"]
